//! Which PyTorch ComfyUI will import, and which GPUs it has kernels for, without importing it
//! (importing torch costs seconds). `find` asks ComfyUI's Python where the `torch` package is
//! (`importlib.util.find_spec`, no import) and reads `torch/version.py`; `kernels` and `covers`
//! are pure: PyTorch's published support matrix and CUDA's compatibility rule.

use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use super::model::{Found, Torch, TorchProbe};
use crate::fsutil::{self, Links};

impl Torch {
    /// Its kernels, when the support matrix knows its build; None for a CPU-only or ROCm build
    /// too (see `cuda`).
    pub fn kernels(&self) -> Option<Kernels> {
        kernels(major_minor(&self.version)?, self.cuda.as_deref()?)
    }

    /// `sm_50 sm_60 ...` (+ `compute_120` for PTX), as `torch.cuda.get_arch_list()` names them.
    pub fn arch_list(&self) -> Option<Vec<String>> {
        let k = self.kernels()?;
        let mut list: Vec<String> = k.sm.iter().map(|sm| format!("sm_{sm}")).collect();
        list.extend(k.ptx.map(|p| format!("compute_{p}")));
        Some(list)
    }
}

/// Whether the PyTorch found runs on a card of compute capability `cc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    Covered,
    /// No kernel for it (or no CUDA at all: a CPU-only or ROCm build).
    NotCovered,
    /// The build, the torch or the card's capability is not known.
    Unknown,
}

pub fn coverage(found: Option<&Found>, cc: Option<(i32, i32)>) -> Coverage {
    let (Some(Found::Torch(t)), Some(cc)) = (found, cc) else { return Coverage::Unknown };
    if t.cuda.is_none() {
        return Coverage::NotCovered;
    }
    match t.kernels() {
        Some(k) if covers(k, cc) => Coverage::Covered,
        Some(_) => Coverage::NotCovered,
        None => Coverage::Unknown,
    }
}

/// The kernels one PyTorch build ships: compute capabilities as major*10+minor, and the
/// capability it also ships PTX for (JIT-compiled on any newer card).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    pub sm: &'static [u32],
    pub ptx: Option<u32>,
}

const PRE_BLACKWELL: &[u32] = &[50, 60, 70, 75, 80, 86, 90];

/// PyTorch's published support matrix for its Linux x86_64 wheels (pytorch/pytorch RELEASE.md,
/// issues #172352, #157517, #190385; see ../shared/FACTS.md). `(major, minor)` of torch, and the
/// CUDA build. None: a combination this table does not know, never guessed.
pub fn kernels(torch: (u32, u32), cuda: &str) -> Option<Kernels> {
    let k = |sm, ptx| Some(Kernels { sm, ptx });
    match (torch, cuda) {
        ((2, 4..=6), "12.1" | "12.4") => k(PRE_BLACKWELL, None),
        ((2, 8), "12.6") => k(PRE_BLACKWELL, None),
        ((2, 8), "12.8") => k(&[70, 75, 80, 86, 90, 100, 120], None),
        ((2, m), "12.6") if m >= 10 => k(PRE_BLACKWELL, None),
        ((2, m), "12.8") if m >= 10 => k(&[75, 80, 86, 90, 100, 120], None),
        ((2, m), "13.0") if m >= 10 => k(&[75, 80, 86, 90, 100, 120], Some(120)),
        _ => None,
    }
}

/// CUDA's rule: a cubin for sm_XY runs on sm_XZ with Z >= Y of the same major; PTX for a
/// capability is JIT-compiled for any card at least that capable.
pub fn covers(kernels: Kernels, cc: (i32, i32)) -> bool {
    let Ok(card) = u32::try_from(cc.0 * 10 + cc.1) else { return false };
    let cubin = kernels.sm.iter().any(|&sm| sm / 10 == card / 10 && sm % 10 <= card % 10);
    cubin || kernels.ptx.is_some_and(|ptx| ptx <= card)
}

/// `2.8.0+cu128` -> (2, 8).
pub fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split(['.', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The wheel index a fix needs, in words: which index, which driver, which base image.
pub fn advice_for(cc: (i32, i32)) -> String {
    if cc.0 >= 10 {
        "install a PyTorch built for CUDA 12.8 or newer (pip install --upgrade torch torchvision \
         torchaudio --index-url https://download.pytorch.org/whl/cu128): it needs a host driver >= 570 \
         and an image based on nvidia/cuda:12.8 (this project's docker/Dockerfile by default: \
         BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04, TORCH_INDEX_URL=.../cu128)"
            .into()
    } else if cc.0 < 7 || cc == (7, 0) {
        "install a PyTorch built for CUDA 12.6 (pip install --upgrade torch torchvision torchaudio \
         --index-url https://download.pytorch.org/whl/cu126), the last builds with kernels for this \
         card: it needs a host driver >= 560"
            .into()
    } else {
        "install a PyTorch built for CUDA 12.8 (…/whl/cu128, driver >= 570) or 12.6 (…/whl/cu126, \
         driver >= 560)"
            .into()
    }
}

// ------------------------------------------------------------------------- I/O ---

/// How long ComfyUI's Python may take to say where torch is (its start-up, no import of torch).
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// The most the probe may print: one folder. More is not an answer (and is not read).
const MAX_ANSWER: usize = 4096;

/// The only variables the probe gets (issue 22): those that decide which Python runs and what it
/// imports, as ComfyUI would see them. Never a credential (COMFYUI_PASSWORD, tokens) nor
/// anything else of root's environment. Not HOME: root's HOME would point the user site
/// (`~/.local`) at root's home; unset, Python takes the running user's home from the password
/// database.
pub const PROBE_ENV: &[&str] = &[
    "PATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONUSERBASE",
    "PYTHONPLATLIBDIR",
    "PYTHONNOUSERSITE",
    "VIRTUAL_ENV",
    "LD_LIBRARY_PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
];

/// PATH when the environment has none (to find a bare `python3`).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Asks ComfyUI's interpreter, run in ComfyUI's folder, where `torch` is, then reads its
/// version.py. Never imports torch.
///
/// The interpreter, its venv and their `.pth` files or `sitecustomize.py` may belong to ComfyUI's
/// user: whatever they run, runs as that user (`probe.user`, when we are root), in a process
/// group of its own (no terminal, killed whole), with `probe.env` only and no bytecode written.
pub fn find(probe: &TorchProbe) -> Found {
    // SAFETY: geteuid cannot fail.
    let as_user = probe.user.filter(|_| unsafe { libc::geteuid() } == 0);
    match where_is_torch(probe, as_user) {
        Ok(None) => Found::Missing { python: probe.python.clone() },
        Ok(Some(dir)) => {
            // A folder the probe (PUID) named: read as PUID wherever PUID could redirect it.
            let dir = probe.dir.join(dir); // an absolute folder stays as it is
            crate::privileges::as_puid_where_exposed(&dir.join("version.py"), probe.user, || read_version(&dir))
        }
        Err(e) => Found::Unknown(e.to_string()),
    }
}

/// ComfyUI's interpreter, set up to say where `torch` is (see [`find`]): `probe.env` only, as
/// `as_user` when given, in ComfyUI's folder, in a process group of its own.
fn question(probe: &TorchProbe, as_user: Option<(u32, u32)>) -> Command {
    const ASK: &str = "import importlib.util as u\n\
                       s = u.find_spec('torch')\n\
                       print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')";
    // ComfyUI's environment (PYTHONPATH, a venv) decides what it imports: not isolated (-I).
    let mut cmd = Command::new(&probe.python);
    cmd.args(["-c", ASK]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    cmd.env_clear();
    // The allowlist is applied here too: whatever filled `env`, nothing else gets through.
    cmd.envs(probe.env.iter().filter(|(name, _)| PROBE_ENV.contains(&name.as_str())).map(|(n, v)| (n, v)));
    if !probe.env.iter().any(|(name, _)| name == "PATH") {
        cmd.env("PATH", DEFAULT_PATH); // the program is looked up in the child's PATH
    }
    cmd.env("PYTHONDONTWRITEBYTECODE", "1"); // no __pycache__ of ours left in ComfyUI's tree
    cmd.process_group(0);
    if let Some((uid, gid)) = as_user {
        // std sets the group, then drops every supplementary group (setgroups(0), as we name
        // none), then the user, before exec; the integration tests check all three.
        cmd.uid(uid).gid(gid);
    }
    if probe.dir.is_dir() {
        cmd.current_dir(&probe.dir); // main.py's folder is first on ComfyUI's sys.path
    }
    cmd
}

/// Asks the [`question`]: the folder `torch` is in, None when the interpreter has no `torch`.
/// Err: why there is no answer. Nothing the interpreter started outlives the question.
fn where_is_torch(probe: &TorchProbe, as_user: Option<(u32, u32)>) -> Result<Option<String>, Unanswered> {
    let (python, who) = (probe.python.clone(), As(as_user));
    let mut child = match question(probe, as_user).spawn() {
        Ok(c) => c,
        Err(source) => return Err(Unanswered::Spawn { python, who, source }),
    };
    let answer = ask(&mut child);
    // Its group (the leader not reaped yet, so the id is still its own): nothing it started
    // outlives the question.
    // SAFETY: a signal to the process group the child leads.
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    let status = child.wait();
    let out = answer.map_err(|asked| match asked {
        Asked::Timeout => Unanswered::Timeout { python: python.clone() },
        Asked::TooLong => Unanswered::TooLong { python: python.clone() },
        Asked::Stopped(signo) => Unanswered::Stopped(signo),
    })?;
    match status {
        Ok(s) if s.success() => {}
        Ok(status) => return Err(Unanswered::Failed { python, who, status }),
        Err(source) => return Err(Unanswered::Wait { python, who, source }),
    }
    let dir = String::from_utf8_lossy(&out).trim().to_string();
    Ok((!dir.is_empty()).then_some(dir))
}

/// Why the interpreter did not say where `torch` is: the report says it as what was not checked.
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    #[error("cannot run {python}{who} to find torch: {source}")]
    Spawn { python: String, who: As, source: std::io::Error },
    #[error("{python} did not say where torch is within {ASK_TIMEOUT:?}")]
    Timeout { python: String },
    #[error("{python} printed more than {MAX_ANSWER} bytes, not where torch is")]
    TooLong { python: String },
    /// PID 1 was asked to stop meanwhile: the signal.
    #[error("not asked: {} came first", crate::supervisor::signals::signal_name(*.0))]
    Stopped(i32),
    /// It exited, or was killed, without success.
    #[error("{python}{who} {} before saying where torch is", how(status))]
    Failed { python: String, who: As, status: std::process::ExitStatus },
    #[error("{python}{who} could not be waited for: {source}")]
    Wait { python: String, who: As, source: std::io::Error },
}

/// Whom the interpreter ran as, in a message: ` as 1000:1000`, or nothing (as ourselves).
#[derive(Debug)]
struct As(Option<(u32, u32)>);

impl std::fmt::Display for As {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((uid, gid)) => write!(f, " as {uid}:{gid}"),
            None => Ok(()),
        }
    }
}

/// How an unsuccessful process ended, in words.
fn how(status: &std::process::ExitStatus) -> String {
    match std::os::unix::process::ExitStatusExt::signal(status) {
        Some(sig) => format!("was killed by signal {sig}"),
        None => format!("exited with status {}", status.code().unwrap_or(-1)),
    }
}

enum Asked {
    Timeout,
    TooLong,
    /// PID 1 was asked to stop meanwhile.
    Stopped(i32),
}

/// What the child printed before it exited (not reaped: `waitid` with WNOWAIT), read as it comes
/// so that it never blocks on a full pipe, and bounded: more than MAX_ANSWER bytes is not an
/// answer. A descendant that keeps the pipe open after the child exited is not waited for.
fn ask(child: &mut Child) -> Result<Vec<u8>, Asked> {
    let deadline = Instant::now() + ASK_TIMEOUT;
    let mut out = Vec::new();
    let mut pipe = child.stdout.take();
    if let Some(p) = &pipe {
        // SAFETY: fcntl on a descriptor we own.
        let nonblocking = unsafe {
            let flags = libc::fcntl(p.as_raw_fd(), libc::F_GETFL);
            flags >= 0 && libc::fcntl(p.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        if !nonblocking {
            pipe = None; // cannot happen on a fresh pipe; unread, it cannot block us either
        }
    }
    loop {
        if let Some(p) = pipe.as_mut() {
            if !drain(p, &mut out) {
                pipe = None; // EOF
            }
        }
        if out.len() > MAX_ANSWER {
            return Err(Asked::TooLong);
        }
        if exited(child.id()) {
            // Whatever it wrote before exiting is in the pipe now.
            if let Some(p) = pipe.as_mut() {
                drain(p, &mut out);
            }
            return if out.len() > MAX_ANSWER { Err(Asked::TooLong) } else { Ok(out) };
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Asked::Timeout);
        }
        if let Some(signo) = crate::supervisor::signals::stop_pending() {
            return Err(Asked::Stopped(signo));
        }
        let wait = left.min(Duration::from_millis(5));
        match &pipe {
            Some(p) => {
                let mut pfd = libc::pollfd { fd: p.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd for a descriptor we own.
                unsafe { libc::poll(&mut pfd, 1, wait.as_millis().max(1) as libc::c_int) };
            }
            None => std::thread::sleep(wait),
        }
    }
}

/// Reads what the non-blocking pipe holds into `out`, stopping past MAX_ANSWER. False at EOF (or
/// an error: nothing more will be read).
fn drain(pipe: &mut ChildStdout, out: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    while out.len() <= MAX_ANSWER {
        match pipe.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

/// Whether the child has exited, leaving it a zombie (its pid, and so its process group id, is
/// not reused until `wait`). An error (nothing to wait for) counts as exited: `wait` says more.
fn exited(pid: u32) -> bool {
    // SAFETY: siginfo_t is plain data; waitid writes it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: waitid on our own child, into a valid siginfo_t.
    match unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) } {
        // SAFETY: si_pid is valid after waitid filled it (0 while the child runs).
        0 => (unsafe { info.si_pid() }) != 0,
        _ => std::io::Error::last_os_error().kind() != ErrorKind::Interrupted,
    }
}

/// `torch/version.py`, read (bounded) and parsed, not run.
///
/// `dir` is what the probe printed: ComfyUI's user may choose it, and we may be root. Reading it
/// is still safe: the file is opened with O_NONBLOCK and O_NOFOLLOW (Links::Refuse: a symlink to
/// a root-only file is refused, not followed), checked with fstat on the open file (a FIFO, a
/// device or a folder is refused, and never read, so nothing can block us), and read up to 64 KiB
/// (a bigger file is refused). Its content is only parsed for three quoted values, never run.
/// The folders above it may be PUID's too: `find` reads it with PUID's filesystem identity
/// wherever PUID could change where the path leads (privileges::as_puid_where_exposed).
pub fn read_version(dir: &Path) -> Found {
    let path = dir.join("version.py");
    let text = match fsutil::read_bounded(&path, 64 * 1024, Links::Refuse) {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(None) => return Found::Unknown(format!("{} is missing", path.display())),
        Err(e) => return Found::Unknown(e.to_string()),
    };
    match parse_version(&text) {
        Some((version, cuda, hip)) => Found::Torch(Torch { dir: dir.to_path_buf(), version, cuda, hip }),
        None => Found::Unknown(format!("{} has no __version__", path.display())),
    }
}

/// (`__version__`, `cuda`, `hip`) from the text of version.py: `name = 'value'`, or
/// `name: Optional[str] = None`.
pub fn parse_version(text: &str) -> Option<(String, Option<String>, Option<String>)> {
    let value = |name: &str| -> Option<Option<String>> {
        let line = text.lines().find(|l| {
            let l = l.trim_start();
            l.strip_prefix(name).is_some_and(|rest| rest.trim_start().starts_with([':', '=']))
        })?;
        let v = line.split_once('=')?.1.trim();
        // A quoted string; `None`, or anything that is not a plain string, is no value.
        Some(v.strip_prefix(['\'', '"']).and_then(|v| v.strip_suffix(['\'', '"'])).map(str::to_string))
    };
    let version = value("__version__")??;
    Some((version, value("cuda").flatten(), value("hip").flatten()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn version_py_is_read_as_pytorch_writes_it() {
        let text = "__version__ = '2.8.0+cu128'\ndebug = False\ncuda: Optional[str] = '12.8'\n\
                    git_version = 'abc'\nhip: Optional[str] = None\nxpu: Optional[str] = None\n";
        assert_eq!(parse_version(text), Some(("2.8.0+cu128".into(), Some("12.8".into()), None)));
        let cpu = "__version__ = '2.8.0+cpu'\ncuda: Optional[str] = None\nhip: Optional[str] = None\n";
        assert_eq!(parse_version(cpu), Some(("2.8.0+cpu".into(), None, None)));
        let rocm = "__version__ = \"2.8.0+rocm6.3\"\ncuda = None\nhip = \"6.3.42131\"\n";
        assert_eq!(parse_version(rocm), Some(("2.8.0+rocm6.3".into(), None, Some("6.3.42131".into()))));
        assert_eq!(parse_version("cuda = '12.8'\n"), None);
        assert_eq!(major_minor("2.10.1+cu130"), Some((2, 10)));
        assert_eq!(major_minor("nonsense"), None);
    }

    #[test]
    fn kernels_follow_the_support_matrix_and_cudas_compatibility_rule() {
        let cu124 = kernels((2, 6), "12.4").unwrap();
        let cu128 = kernels((2, 8), "12.8").unwrap();
        let cu126 = kernels((2, 8), "12.6").unwrap();
        assert!(!covers(cu124, (12, 0)), "RTX 5090 needs cu128");
        assert!(covers(cu128, (12, 0)));
        assert!(covers(cu124, (8, 9)), "sm_86 kernels run on an 8.9 RTX 4090");
        assert!(!covers(cu128, (6, 1)), "cu128 dropped Pascal");
        assert!(covers(cu126, (6, 1)), "sm_60 kernels run on a 6.1 GTX 1080");
        assert!(!covers(kernels((2, 10), "12.8").unwrap(), (7, 0)), "2.10's cu128 dropped Volta");
        let cu130 = kernels((2, 10), "13.0").unwrap();
        assert!(covers(cu130, (12, 1)), "PTX for 12.0 JIT-compiles on newer cards");
        assert!(covers(cu128, (12, 1)), "a cubin for 12.0 runs on a 12.1 card");
        assert_eq!(kernels((2, 12), "14.0"), None, "an unknown build is not guessed");
        assert_eq!(kernels((2, 9), "12.8"), None);
    }

    /// A fake interpreter: a shell script in a folder of its own (removed by the caller).
    fn fake_python(tag: &str, script: &str) -> (PathBuf, TorchProbe) {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("comfy-init-torch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let python = dir.join("python");
        std::fs::write(&python, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = vec![
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("COMFYUI_PASSWORD".to_string(), "leaked".to_string()), // never in `env`, refused anyway
        ];
        let probe = TorchProbe { python: python.to_str().unwrap().into(), dir: dir.clone(), user: None, env };
        (dir, probe)
    }

    #[test]
    fn the_probe_gets_only_the_allowed_environment_and_its_own_process_group() {
        let script = "d=$(dirname \"$0\"); env > \"$d/env\"; cut -d' ' -f5 /proc/$$/stat > \"$d/pgid\"";
        let (dir, probe) = fake_python("env", script);
        let found = find(&probe);
        let env = std::fs::read_to_string(dir.join("env")).unwrap();
        let pgid = std::fs::read_to_string(dir.join("pgid")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(found, Found::Missing { .. }), "{found:?}");
        assert!(!env.contains("leaked"), "{env}");
        for line in env.lines() {
            let name = line.split('=').next().unwrap();
            // sh itself sets PWD (and some shells SHLVL, _).
            let expected =
                PROBE_ENV.contains(&name) || ["PYTHONDONTWRITEBYTECODE", "PWD", "SHLVL", "_"].contains(&name);
            assert!(expected, "{name} in the probe's environment:\n{env}");
        }
        assert!(env.contains("PYTHONDONTWRITEBYTECODE=1\n"), "{env}");
        // SAFETY: getpgrp cannot fail.
        let ours = unsafe { libc::getpgrp() };
        assert_ne!(pgid.trim().parse::<i32>().unwrap(), ours, "the probe is in a process group of its own");
    }

    #[test]
    fn a_probe_that_prints_too_much_or_lingers_never_holds_us() {
        let started = Instant::now();
        let (dir, probe) = fake_python("flood", "head -c 1000000 /dev/zero | tr '\\0' a; sleep 30");
        let found = find(&probe);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(&found, Found::Unknown(why) if why.contains("more than 4096 bytes")), "{found:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

        // It exits, but something it started keeps the pipe open: not waited for, and killed.
        let started = Instant::now();
        let (dir, probe) = fake_python("linger", "sleep 30 & echo $! > \"$(dirname \"$0\")/bg\"; echo");
        let found = find(&probe);
        let bg: i32 = std::fs::read_to_string(dir.join("bg")).unwrap().trim().parse().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(found, Found::Missing { .. }), "{found:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        // Killed: gone, or a zombie until whoever it was reparented to reaps it.
        let dead = || {
            std::fs::read_to_string(format!("/proc/{bg}/stat"))
                .map_or(true, |s| s.contains(") Z ") || s.contains(") X "))
        };
        let until = Instant::now() + Duration::from_secs(2);
        while !dead() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(dead(), "what the probe started outlived it");
    }

    #[test]
    fn a_probe_that_fails_is_unknown_not_a_missing_torch() {
        let (dir, probe) = fake_python("fails", "exit 3");
        let found = find(&probe);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(&found, Found::Unknown(why) if why.contains("exited with status 3")), "{found:?}");
        let missing = TorchProbe { python: "/nonexistent/python".into(), dir: "/".into(), user: None, env: vec![] };
        assert!(matches!(find(&missing), Found::Unknown(why) if why.contains("cannot run")));
    }

    #[test]
    fn version_py_is_never_read_through_a_symlink() {
        let dir = std::env::temp_dir().join(format!("comfy-init-torch-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("real.py"), "__version__ = '2.8.0+cu128'\n").unwrap();
        std::os::unix::fs::symlink(dir.join("real.py"), dir.join("version.py")).unwrap();
        let found = read_version(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(&found, Found::Unknown(why) if why.contains("symlink")), "{found:?}");
    }

    #[test]
    fn the_advice_names_the_wheel_index_and_the_driver() {
        let blackwell = advice_for((12, 0));
        assert!(blackwell.contains("cu128") && blackwell.contains(">= 570"), "{blackwell}");
        let pascal = advice_for((6, 1));
        assert!(pascal.contains("cu126") && pascal.contains(">= 560"), "{pascal}");
    }
}
