//! Starting the child in its own process group, and signalling that group.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Instant;

use super::signals;
use super::state::Child;

/// What to run and how.
#[derive(Debug, Clone, Default)]
pub struct ChildSpec {
    pub argv: Vec<OsString>,
    pub env_set: Vec<(String, OsString)>,
    pub env_remove: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// PUID/PGID: the child runs as this user.
    pub user: Option<(u32, u32)>,
}

/// The program could not be started: 127 when it does not exist, 126 otherwise (shell rules).
#[derive(Debug)]
pub struct SpawnError {
    pub program: String,
    pub source: std::io::Error,
}

impl SpawnError {
    pub fn exit_code(&self) -> i32 {
        if self.source.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        }
    }
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hint = match self.exit_code() {
            127 => "check the command and PATH",
            _ => "check that it is an executable file (chmod +x) and its interpreter exists",
        };
        write!(f, "cannot run '{}': {} ({hint})", self.program, self.source)
    }
}

/// Starts the child in a new process group with a clean signal state. Never waits on it: the
/// reaper collects its status with everyone else's.
pub fn spawn(spec: &ChildSpec) -> Result<Child, SpawnError> {
    let program = spec.argv.first().cloned().unwrap_or_default();
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&spec.argv[1..]).process_group(0);
    for name in &spec.env_remove {
        cmd.env_remove(name);
    }
    for (name, value) in &spec.env_set {
        cmd.env(name, value);
    }
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    if let Some((uid, gid)) = spec.user {
        // std drops supplementary groups (setgroups(0)) when root changes uid.
        cmd.uid(uid).gid(gid);
    }
    // Code between fork and exec keeps std off posix_spawn, which would be faster (vfork) but
    // leaves glibc's internal signals 32 and 33 ignored in the child (its spawn helper does so
    // on purpose): a child must start with nothing ignored.
    // SAFETY: prepare_child only makes async-signal-safe calls.
    unsafe {
        cmd.pre_exec(signals::prepare_child);
    }
    match cmd.spawn() {
        // Dropping std's Child neither waits nor kills: the pid is all we keep.
        Ok(child) => Ok(Child { pid: child.id() as i32, started: Instant::now() }),
        Err(source) => Err(SpawnError { program: program.to_string_lossy().into_owned(), source }),
    }
}

/// Sends `signo` to every process of the group led by `pgid`.
pub fn signal_group(pgid: i32, signo: i32) -> std::io::Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::kill(-pgid, signo) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether any process of the group still exists (EPERM means it exists but is not ours to signal).
pub fn group_alive(pgid: i32) -> bool {
    match signal_group(pgid, 0) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}
