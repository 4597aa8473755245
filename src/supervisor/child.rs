//! Starting the child in its own process group, and signalling that group.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use super::state::Child;
use super::vfork::{self, Stage};

/// What to run and how.
#[derive(Debug, Clone, Default)]
pub struct ChildSpec {
    pub argv: Vec<OsString>,
    pub env_set: Vec<(String, OsString)>,
    pub env_remove: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// PUID/PGID: the child runs as this user.
    pub user: Option<(u32, u32)>,
    /// Its group becomes the terminal's foreground (`docker run -it`): ComfyUI only. A hook or a
    /// probe that took it would leave Ctrl-C to nobody once it exits.
    pub terminal: bool,
    /// Given to the child as its fd 3 (the credential service's messages to PID 1).
    pub notify_fd: Option<i32>,
}

/// The program could not be started: 127 when it does not exist, 126 otherwise (shell rules).
#[derive(Debug, thiserror::Error)]
#[error("cannot run '{program}': {source} ({})", self.hint())]
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

    /// What to check.
    fn hint(&self) -> &'static str {
        match self.exit_code() {
            127 => "check the command and PATH",
            _ => "check that it is an executable file (chmod +x) and its interpreter exists",
        }
    }
}

/// Starts the child in a new process group with a clean signal state (vfork.rs says how). Never
/// waits on it: the reaper collects its status with everyone else's.
pub fn spawn(spec: &ChildSpec) -> Result<Child, SpawnError> {
    let request = vfork::Request {
        argv: &spec.argv,
        env_set: &spec.env_set,
        env_remove: &spec.env_remove,
        cwd: spec.cwd.as_ref(),
        user: spec.user,
        terminal: spec.terminal,
        notify_fd: spec.notify_fd,
    };
    let failed = |source| SpawnError {
        program: spec.argv.first().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
        source,
    };
    let job = vfork::Job::new(&request).map_err(failed)?;
    match job.spawn() {
        Ok(pid) => Ok(Child { pid, started: Instant::now() }),
        Err((stage, e)) => Err(failed(match (stage, &spec.cwd, spec.user) {
            (Stage::EnterFolder, Some(dir), _) => {
                std::io::Error::new(e.kind(), format!("cannot enter {}: {e}", dir.display()))
            }
            (Stage::SetUser, _, Some((uid, gid))) => {
                std::io::Error::new(e.kind(), format!("cannot become {uid}:{gid}: {e}"))
            }
            (Stage::NewGroup, ..) => std::io::Error::new(e.kind(), format!("cannot make its process group: {e}")),
            _ => e,
        })),
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
/// What is left of a process group, for the log: `pid 12 (python3) state D (uninterruptible
/// sleep: a hung device or filesystem call)`, from /proc (procfs files: no one can swap them).
pub fn describe_group(pgid: i32) -> String {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) != Some(pgid) {
            continue;
        }
        let state = fields.first().copied().unwrap_or("?");
        let why = match state {
            "D" => " (uninterruptible sleep: a hung device or filesystem call)",
            "Z" => " (a zombie: its parent has not reaped it)",
            _ => "",
        };
        members.push(format!("pid {pid} ({}) state {state}{why}", &stat[open + 1..close]));
    }
    if members.is_empty() {
        "no member found".into()
    } else {
        members.join(", ")
    }
}

pub fn group_alive(pgid: i32) -> bool {
    match signal_group(pgid, 0) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}
