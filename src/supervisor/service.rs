//! The credential service, seen from PID 1 (issue 23): `comfy-init __credentials`, a child of its
//! own that makes login/PASSWORD valid before anything else starts (the first reconciliation),
//! then watches the credential files, hashes, takes the lock and writes, and tells PID 1 what
//! came of it in lines on its fd 3 (s6's notification fd): `token <T>` once PASSWORD holds a
//! token T, the first time and at every change. A first reconciliation that fails is said in the
//! log and ends the service with 78 before any token: PID 1 then starts nothing. Later, nothing
//! is acted on before a token: a change that fails (a read-only `login/`) leaves ComfyUI running
//! untouched, as the log says. PID 1 reads those lines when the pipe turns readable (SIGIO, like
//! any file event), and never waits on a file, a lock or bcrypt itself. A service that dies once
//! ComfyUI runs is started again after a doubling delay; ComfyUI keeps its token meanwhile.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::child::{self, ChildSpec};
use super::signals;

/// The running token, in the service's environment (root's child: never on a command line);
/// absent at the first start, when there is none yet.
pub const ENV_TOKEN: &str = "COMFY_INIT_RUNNING_TOKEN";
/// The hidden command that runs the service.
pub const COMMAND: &str = crate::cli::CREDENTIAL_SERVICE;

/// What the service said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Token(String),
}

/// The longest line PID 1 keeps: a token is 60 bytes; anything longer is not the service's.
const MAX_LINE: usize = 4096;
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(30);
/// A service that ran this long without dying starts its next delay afresh.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

pub struct CredentialService {
    spec: ChildSpec,
    pid: Option<i32>,
    pipe: Option<File>,
    line: Vec<u8>,
    started: Instant,
    restart_at: Option<Instant>,
    delay: Duration,
}

impl CredentialService {
    /// How the service is started: this binary, as root, in its own group, without the terminal.
    fn new() -> std::io::Result<CredentialService> {
        let me = std::env::current_exe()?;
        let spec = ChildSpec { argv: vec![me.into(), COMMAND.into()], ..ChildSpec::default() };
        let now = Instant::now();
        Ok(CredentialService {
            spec,
            pid: None,
            pipe: None,
            line: Vec::new(),
            started: now,
            restart_at: None,
            delay: FIRST_DELAY,
        })
    }

    /// The first start, before ComfyUI's: the first reconciliation. Err: nothing can start.
    pub fn start_first(now: Instant) -> Result<CredentialService, child::SpawnError> {
        let failed = |source| child::SpawnError { program: format!("comfy-init {COMMAND}"), source };
        let mut service = CredentialService::new().map_err(failed)?;
        service.start(None, now).map_err(failed)?;
        Ok(service)
    }

    /// Starts it, with the token ComfyUI runs with (None: the first start). Err: said by the
    /// caller; a restart is tried again later.
    fn start(&mut self, token: Option<&str>, now: Instant) -> std::io::Result<()> {
        let (read, write) = pipe()?;
        let mut spec = self.spec.clone();
        if let Some(token) = token {
            spec.env_set.push((ENV_TOKEN.into(), token.into()));
        }
        spec.notify_fd = Some(write.as_raw_fd());
        let started = child::spawn(&spec).map_err(std::io::Error::other)?;
        drop(write); // ours closed: the service's exit is the pipe's end
        signals::signal_when_readable(read.as_fd())?;
        log::debug!("credential service started (pid {})", started.pid);
        self.pid = Some(started.pid);
        self.pipe = Some(File::from(read));
        self.line.clear();
        self.started = now;
        self.restart_at = None;
        Ok(())
    }

    pub fn is(&self, pid: i32) -> bool {
        self.pid == Some(pid)
    }

    /// It died (reaped): started again after a delay that doubles while it keeps dying.
    pub fn on_exit(&mut self, status: &dyn std::fmt::Display, now: Instant) {
        if now.saturating_duration_since(self.started) >= HEALTHY_AFTER {
            self.delay = FIRST_DELAY;
        }
        log::warn!(
            "the credential service exited ({status}): ComfyUI keeps its token; starting it again in {:?}",
            self.delay
        );
        self.pid = None;
        self.restart_at = Some(now + self.delay);
        self.delay = (self.delay * 2).min(MAX_DELAY);
    }

    /// When the loop must wake up to start it again.
    pub fn deadline(&self) -> Option<Instant> {
        self.restart_at
    }

    /// Starts it again once its delay is over, with the token ComfyUI runs with.
    pub fn on_tick(&mut self, token: &str, now: Instant) {
        if self.restart_at.is_some_and(|at| now >= at) {
            match self.start(Some(token), now) {
                Ok(()) => log::info!("credential service started again"),
                Err(e) => {
                    log::error!("cannot start the credential service again ({e}): trying again in {:?}", self.delay);
                    self.restart_at = Some(now + self.delay);
                }
            }
        }
    }

    /// Whatever complete lines the pipe holds now (never waits: the pipe is non-blocking).
    pub fn messages(&mut self) -> Vec<Message> {
        let Some(pipe) = &mut self.pipe else { return Vec::new() };
        let mut chunk = [0u8; 1024];
        let mut out = Vec::new();
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => {
                    self.pipe = None; // the service is gone; its exit is reaped on its own
                    break;
                }
                Ok(n) => {
                    for &byte in &chunk[..n] {
                        if byte != b'\n' {
                            if self.line.len() < MAX_LINE {
                                self.line.push(byte);
                            }
                            continue;
                        }
                        let line = std::mem::take(&mut self.line);
                        match parse(&line) {
                            Some(message) => out.push(message),
                            None => log::warn!("the credential service said something unknown ({} bytes)", line.len()),
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break, // WouldBlock: all read
            }
        }
        out
    }

    /// At our exit: as PID 1 the kernel ends it anyway; as a subreaper, we must.
    pub fn stop(&self) {
        if let Some(pid) = self.pid {
            // SAFETY: a signal to our own child, not reaped yet (its pid is still its own).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// One line of the service, or None.
pub fn parse(line: &[u8]) -> Option<Message> {
    let line = std::str::from_utf8(line).ok()?;
    match line.split_once(' ') {
        Some(("token", token)) if !token.is_empty() && token.is_ascii() && !token.contains(' ') => {
            Some(Message::Token(token.to_string()))
        }
        _ => None,
    }
}

/// A pipe: the read end non-blocking, both close-on-exec (the service gets its end as fd 3).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made for us and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(read.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(read.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Ok((read, write))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_two_messages_are_understood() {
        let token = "$2b$12$abcdefghijklmnopqrstuuJq8f1V1cQ0M7b0f2i3O0yC6m5Yx5v1e";
        assert_eq!(parse(format!("token {token}").as_bytes()), Some(Message::Token(token.into())));
        for junk in [&b""[..], b"token ", b"token a b", b"stale", b"tok", b"token \xff", b"hello world"] {
            assert_eq!(parse(junk), None, "{junk:?}");
        }
    }
}
