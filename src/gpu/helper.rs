//! NVML is asked by a helper process, `comfy-init-nvml`, never inside comfy-init.
//!
//! Why a second process (issue 17):
//! * comfy-init is linked statically, so that PID 1 starts without the dynamic loader (a spawn
//!   at or under tini's cost). A statically linked glibc can `dlopen` only libraries built
//!   against that very glibc; the host's `libnvidia-ml.so.1`, mounted by the NVIDIA Container
//!   Toolkit, is not. The helper is linked dynamically, so NVML loads with the image's own libc,
//!   exactly as it did when comfy-init itself was dynamic.
//! * PID 1 stays clean: NVML's threads and signal handlers, a crash inside the driver library,
//!   or an `nvmlInit` that hangs on a wedged GPU, stay in a process that comfy-init times out,
//!   kills and reaps. The check turns into a finding with advice, never a dead or stuck PID 1.
//!
//! The helper is found beside comfy-init (both ship together), else `COMFY_INIT_NVML_HELPER`,
//! else on PATH. It answers with one JSON object (`wire`); its log lines share our stderr.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::model::{GpuReport, GpuSettings, ProbeError, ENV_TIMEOUT};
use super::wire;

pub const HELPER_NAME: &str = "comfy-init-nvml";
pub const ENV_HELPER: &str = "COMFY_INIT_NVML_HELPER";

/// An answer longer than this is not one (a report is about 1 KiB a GPU).
const MAX_ANSWER: usize = 1 << 20;

/// The full probe, by the helper. Every failure to get an answer is the report's `fatal`.
pub fn probe(settings: &GpuSettings) -> GpuReport {
    let answer = ask("probe", settings, settings.timeout)
        .and_then(|text| wire::decode_report(&text).map_err(|e| helper_error(format!("answered nonsense: {e}"))));
    let mut report = answer.unwrap_or_else(|fatal| GpuReport { fatal: Some(fatal), ..GpuReport::default() });
    report.visible_devices = settings.visible_devices.clone();
    report
}

/// The healthcheck's light check, by the helper: Ok(name of GPU 0).
pub fn alive(settings: &GpuSettings, timeout: Duration) -> Result<String, ProbeError> {
    let text = ask("alive", settings, timeout)?;
    wire::decode_alive(&text).unwrap_or_else(|e| Err(helper_error(format!("answered nonsense: {e}"))))
}

fn helper_error(detail: String) -> ProbeError {
    ProbeError::Helper { path: helper_path(), detail, missing: false }
}

fn beside_this_executable() -> Option<PathBuf> {
    std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join(HELPER_NAME)))
}

/// `COMFY_INIT_NVML_HELPER`, else the helper beside this executable, else the bare name (PATH).
pub fn helper_path() -> String {
    if let Some(p) = std::env::var_os(ENV_HELPER).filter(|p| !p.is_empty()) {
        return p.to_string_lossy().into_owned();
    }
    match beside_this_executable() {
        Some(path) if path.is_file() => path.to_string_lossy().into_owned(),
        _ => HELPER_NAME.to_string(),
    }
}

/// Runs `comfy-init-nvml MODE [LIBRARY]` and returns its stdout once it exited 0 in time.
fn ask(mode: &str, settings: &GpuSettings, timeout: Duration) -> Result<String, ProbeError> {
    let path = helper_path();
    let mut cmd = Command::new(&path);
    cmd.arg(mode).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    // The driver's library runs there: it has no use for the credentials.
    for secret in [crate::credentials::KEY_PASSWORD, crate::credentials::KEY_TOKEN] {
        cmd.env_remove(secret);
    }
    if let Some(lib) = &settings.nvml_lib {
        cmd.arg(lib);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let detail = if std::env::var_os(ENV_HELPER).is_some_and(|p| !p.is_empty()) {
                format!("(from {ENV_HELPER}): no such file")
            } else {
                let beside = beside_this_executable().unwrap_or_else(|| PathBuf::from(HELPER_NAME));
                format!("not found: neither beside comfy-init ({}) nor on PATH", beside.display())
            };
            return Err(ProbeError::Helper { path, detail, missing: true });
        }
        Err(e) => return Err(ProbeError::Helper { path, detail: format!("cannot be run: {e}"), missing: true }),
    };
    let deadline = Instant::now() + timeout;
    let read = match child.stdout.take() {
        Some(stdout) => read_until(stdout, deadline).map_err(|e| e.unwrap_or_else(|| hung(timeout))),
        None => Err("has no stdout".to_string()), // cannot happen: it is piped above
    };
    let answer = match read {
        Ok(answer) => answer,
        Err(detail) => {
            // It may be blocked writing to a pipe nobody reads any more: no use waiting.
            let _ = child.kill();
            let _ = child.wait();
            return Err(ProbeError::Helper { path, detail, missing: false });
        }
    };
    // EOF: it is exiting (it prints once NVML is shut down); a hang in its exit is a hang too.
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            _ => break None,
        }
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(ProbeError::Helper { path, detail: hung(timeout), missing: false });
    };
    if !status.success() {
        let detail = match std::os::unix::process::ExitStatusExt::signal(&status) {
            Some(sig) => format!("was killed by signal {sig} inside NVML"),
            None => format!("exited with status {}", status.code().unwrap_or(-1)),
        };
        return Err(ProbeError::Helper { path, detail, missing: false });
    }
    Ok(answer)
}

/// How often a wait of start-up looks for a stop request.
const STOP_CHECK: Duration = Duration::from_millis(20);

fn hung(timeout: Duration) -> String {
    format!("did not answer within {timeout:?} (killed; {ENV_TIMEOUT} allows more): NVML hangs")
}

/// The pipe's content up to EOF, within the deadline and MAX_ANSWER. Err(None): the deadline
/// passed; Err(Some(why)): anything else.
fn read_until(mut pipe: std::process::ChildStdout, deadline: Instant) -> Result<String, Option<String>> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // In slices: a stop request during start-up must not wait out a hung driver.
        let ms = libc::c_int::try_from(left.min(STOP_CHECK).as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for a descriptor we own.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if let Some(signo) = crate::supervisor::signals::stop_pending() {
            return Err(Some(format!("interrupted by {}", crate::supervisor::signals::signal_name(signo))));
        }
        if ready == 0 && left <= STOP_CHECK {
            return Err(None);
        }
        if ready == 0 {
            continue;
        }
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Some(format!("cannot be read: {}", std::io::Error::last_os_error())));
        }
        match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if out.len() + n <= MAX_ANSWER => out.extend_from_slice(&chunk[..n]),
            Ok(_) => return Err(Some(format!("answered more than {} KiB", MAX_ANSWER / 1024))),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Some(format!("cannot be read: {e}"))),
        }
    }
    String::from_utf8(out).map_err(|_| Some("answered with bytes that are not text".into()))
}
