//! The supervisor: one single-threaded loop that sleeps in `poll` until a signal arrives or a
//! deadline passes. It reaps every zombie, forwards signals to the child's process group, stops
//! the group gracefully, and restarts the child when the policy says so.

pub mod child;
pub mod guard;
pub mod policy;
pub mod reaper;
pub mod session;
pub mod signals;

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::config::{signal_name, RunSettings};
use child::{Child, ChildSpec};
use guard::Guard;
use policy::{Decision, Limits, RestartPolicy};
use reaper::ExitStatus;
use session::Session;
use signals::Signals;

/// While a group is being stopped, how often to look whether its last member is gone (a
/// grandchild whose parent is still alive dies without telling us).
const GROUP_RECHECK: Duration = Duration::from_millis(50);

/// What happens once the whole process group is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterStop {
    /// We were asked to stop: exit with the child's status.
    Exit,
    /// Start a new child at once (credentials changed).
    Restart,
    /// The child exited by itself: ask the restart policy.
    AskPolicy,
}

#[derive(Debug)]
enum Phase {
    Running(Child),
    Stopping { child: Child, exited: Option<ExitStatus>, then: AfterStop, kill_at: Instant, killed: bool },
    Backoff { until: Instant, last: ExitStatus },
    Done(i32),
}

pub struct Supervisor {
    settings: RunSettings,
    spec: ChildSpec,
    signals: Signals,
    /// Credentials kept in step (None with COMFY_INIT_AUTH=off).
    guard: Option<Guard>,
    session: Session,
    policy: RestartPolicy,
    phase: Phase,
}

impl Supervisor {
    /// Becomes a child subreaper when we are not PID 1 (`docker run --init`), so orphans still
    /// come to us, and starts the child. Err: the first start failed (exit 126/127).
    pub fn start(
        settings: RunSettings,
        mut spec: ChildSpec,
        signals: Signals,
        guard: Option<Guard>,
    ) -> Result<Supervisor, child::SpawnError> {
        if std::process::id() != 1 {
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                log::warn!(
                    "cannot become a child subreaper ({e}): orphans of the child will not be reaped by comfy-init"
                );
            }
        }
        let session = Session::new();
        spec.env_set.push((session::ENV.into(), session.path().into()));
        let first = child::spawn(&spec)?;
        log::info!("started {} (pid {})", spec.argv[0].to_string_lossy(), first.pid);
        let policy = RestartPolicy::new(settings.restart, Limits::default());
        Ok(Supervisor { settings, spec, signals, guard, session, policy, phase: Phase::Running(first) })
    }

    /// The loop. Returns the exit code for comfy-init.
    pub fn run(mut self) -> i32 {
        loop {
            if let Phase::Done(code) = self.phase {
                return code;
            }
            self.wait_for_event();
            for received in self.signals.drain() {
                self.on_signal(received.signo);
            }
            for (pid, status) in reaper::reap_all() {
                self.on_reaped(pid, status);
            }
            if let Some(guard) = &mut self.guard {
                guard.on_readable(Instant::now());
            }
            self.on_time(Instant::now());
        }
    }

    /// Sleeps until a signal or a file event arrives, or the next deadline; no deadline, no
    /// wake-up.
    fn wait_for_event(&self) {
        let timeout = match self.next_deadline() {
            None => PollTimeout::NONE,
            Some(at) => {
                let ms = at.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128);
                // Round up so we never wake a hair before the deadline and spin.
                PollTimeout::try_from(ms as i32 + 1).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds: Vec<PollFd> = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
        if let Some(guard) = &self.guard {
            let fd: BorrowedFd = guard.fd();
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        if let Err(e) = nix::poll::poll(&mut fds, timeout) {
            if e != nix::errno::Errno::EINTR {
                log::error!("poll failed: {e}");
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let phase = match &self.phase {
            Phase::Stopping { kill_at, killed, .. } => {
                let recheck = Instant::now() + GROUP_RECHECK;
                Some(if *killed { recheck } else { recheck.min(*kill_at) })
            }
            Phase::Backoff { until, .. } => Some(*until),
            Phase::Running(_) | Phase::Done(_) => None,
        };
        let files = self.guard.as_ref().and_then(Guard::deadline);
        phase.into_iter().chain(files).min()
    }

    fn on_signal(&mut self, signo: i32) {
        if signo == libc::SIGCHLD {
            return; // the reaper runs after every wake-up anyway
        }
        if signals::is_stop_request(signo) {
            log::info!("received {}: stopping", signal_name(signo));
            self.request_stop();
            return;
        }
        if !signals::is_forwardable(signo) {
            return;
        }
        match &self.phase {
            Phase::Running(child) | Phase::Stopping { child, .. } => forward(child.pid, signo),
            _ => log::debug!("{} dropped: no child running", signal_name(signo)),
        }
    }

    fn request_stop(&mut self) {
        match &mut self.phase {
            Phase::Running(child) => {
                let child = *child;
                self.begin_stop(child, None, AfterStop::Exit);
            }
            Phase::Stopping { child, then, killed, .. } => {
                if *then == AfterStop::Exit && !*killed {
                    // Asked twice (Ctrl-C Ctrl-C): no more patience.
                    log::warn!("second stop request: killing process group {}", child.pid);
                    forward(child.pid, libc::SIGKILL);
                    *killed = true;
                }
                *then = AfterStop::Exit;
            }
            Phase::Backoff { last, .. } => self.phase = Phase::Done(last.code()),
            Phase::Done(_) => {}
        }
    }

    /// Sends the stop signal to the whole group and arms the SIGKILL deadline.
    fn begin_stop(&mut self, child: Child, exited: Option<ExitStatus>, then: AfterStop) {
        let signo = self.settings.stop_signal;
        log::debug!("sending {} to process group {}", signal_name(signo), child.pid);
        forward(child.pid, signo);
        let kill_at = Instant::now() + self.settings.stop_timeout;
        self.phase = Phase::Stopping { child, exited, then, kill_at, killed: false };
    }

    fn on_reaped(&mut self, pid: i32, status: ExitStatus) {
        match &mut self.phase {
            Phase::Running(child) if child.pid == pid => {
                let child = *child;
                log::info!("child (pid {pid}) exited: {status}");
                if child::group_alive(child.pid) {
                    log::info!("stopping what is left of its process group");
                    self.begin_stop(child, Some(status), AfterStop::AskPolicy);
                    self.hurry_leftovers(child.pid);
                } else {
                    self.decide(child, status);
                }
            }
            Phase::Stopping { child, exited, .. } if child.pid == pid => {
                let pgid = child.pid;
                log::info!("child (pid {pid}) exited: {status}");
                *exited = Some(status);
                if child::group_alive(pgid) {
                    self.hurry_leftovers(pgid);
                }
            }
            _ => log::debug!("reaped orphan pid {pid}: {status}"),
        }
    }

    /// The main child is gone but some of its group lives on (a helper, a shell's background job,
    /// which starts with SIGINT ignored): ComfyUI's clean stop is over, so they get the
    /// conventional SIGTERM at once instead of waiting out the whole grace before SIGKILL.
    fn hurry_leftovers(&self, pgid: i32) {
        if self.settings.stop_signal != libc::SIGTERM {
            log::debug!("sending SIGTERM to what is left of process group {pgid}");
            forward(pgid, libc::SIGTERM);
        }
    }

    fn on_time(&mut self, now: Instant) {
        if self.guard.as_ref().is_some_and(|g| g.due(now)) {
            self.on_credential_files_changed();
        }
        match &mut self.phase {
            Phase::Stopping { child, exited, then, kill_at, killed } => {
                let (child, then) = (*child, *then);
                if let Some(status) = *exited {
                    if !child::group_alive(child.pid) {
                        self.after_stop(child, status, then);
                        return;
                    }
                }
                if !*killed && now >= *kill_at {
                    log::warn!(
                        "process group {} still running {:?} after {}: sending SIGKILL",
                        child.pid,
                        self.settings.stop_timeout,
                        signal_name(self.settings.stop_signal)
                    );
                    forward(child.pid, libc::SIGKILL);
                    *killed = true;
                }
            }
            Phase::Backoff { until, .. } if now >= *until => self.start_child(),
            _ => {}
        }
    }

    /// The credential files changed and settled. When the password is known to be new, ComfyUI
    /// is told to stop first: its stop takes seconds, the new bcrypt hash a quarter of one, and
    /// they overlap. Then the reconciliation decides (and restarts if it was not known before).
    fn on_credential_files_changed(&mut self) {
        if self.guard.as_ref().is_some_and(Guard::token_known_stale) {
            self.restart_for_new_token();
        }
        if self.guard.as_mut().is_some_and(Guard::reconcile) {
            self.restart_for_new_token();
        }
    }

    fn restart_for_new_token(&mut self) {
        if let Phase::Running(child) = self.phase {
            log::info!("the token changed: restarting ComfyUI (pid {}) so that it reads the new one", child.pid);
            self.begin_stop(child, None, AfterStop::Restart);
        }
    }

    fn after_stop(&mut self, child: Child, status: ExitStatus, then: AfterStop) {
        match then {
            AfterStop::Exit => self.phase = Phase::Done(status.code()),
            AfterStop::Restart => self.start_child(),
            AfterStop::AskPolicy => self.decide(child, status),
        }
    }

    /// The child ended by itself and its group is gone: restart now, later, or exit.
    fn decide(&mut self, child: Child, status: ExitStatus) {
        let now = Instant::now();
        let reboot = self.session.take_reboot_request();
        match self.policy.on_exit(status, now.duration_since(child.started), reboot, now) {
            Decision::RestartNow => {
                log::info!("ComfyUI asked for a restart (ComfyUI-Manager): starting it again");
                self.start_child()
            }
            Decision::RestartAfter(delay) => {
                log::warn!("restarting in {delay:?} (COMFY_INIT_RESTART={})", self.settings.restart);
                self.phase = Phase::Backoff { until: now + delay, last: status };
            }
            Decision::Exit { code, gave_up } => {
                if gave_up {
                    log::error!("the child keeps failing: giving up, exiting with {code}");
                }
                self.phase = Phase::Done(code);
            }
        }
    }

    /// (Re)starts the child; a failure to start counts as a crash with the shell's status.
    fn start_child(&mut self) {
        match child::spawn(&self.spec) {
            Ok(child) => {
                log::info!("started {} (pid {})", self.spec.argv[0].to_string_lossy(), child.pid);
                self.phase = Phase::Running(child);
            }
            Err(e) => {
                log::error!("{e}");
                let never_ran = Child { pid: 0, started: Instant::now() };
                self.decide(never_ran, ExitStatus::Code(e.exit_code()));
            }
        }
    }
}

/// Sends a signal to a process group; failure is logged, never fatal.
fn forward(pgid: i32, signo: i32) {
    if let Err(e) = child::signal_group(pgid, signo) {
        if e.raw_os_error() == Some(libc::ESRCH) {
            log::debug!("{} not delivered: process group {pgid} is gone", signal_name(signo));
        } else {
            log::warn!("cannot send {} to process group {pgid}: {e}", signal_name(signo));
        }
    }
}
