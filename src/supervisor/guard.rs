//! Keeps the credentials in step while ComfyUI runs: file events (debounced) trigger a new
//! reconciliation with the running token as a candidate, so a broken PASSWORD is healed in place
//! and only a real token change asks for a restart. Our own writes cause events too; they
//! reconcile to "nothing to do", which is why no restart can come from them.
//!
//! It runs in the credential service (`comfy-init __credentials`, [`serve`]), a child of PID 1:
//! bcrypt, the lock and the writes never run in PID 1's loop (issue 23). What it decides reaches
//! PID 1 as lines on fd 3 (supervisor::service).

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};
use std::time::{Duration, Instant};

use crate::credentials::{self, Failure, Mode, Settings};
use crate::error::EXIT_CONFIG;
use crate::watch::{Activity, Watcher};

/// A write still in progress (no rename, no close yet) is one reaction: wait this long after the
/// last event...
const QUIET: Duration = Duration::from_millis(75);
/// ...but never longer than this after the first.
const MAX_WAIT: Duration = Duration::from_millis(500);
/// Another comfy-init holds the lock (a `rotate`, a `sync`): look again this soon, never waiting
/// for it inside the loop.
const RETRY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
struct Burst {
    first: Instant,
    last: Instant,
    /// The last batch ended a save: no need to wait for quiet.
    saved: bool,
}

pub struct Guard {
    settings: Settings,
    watcher: Watcher,
    /// The token the current child was started with.
    token: String,
    /// A burst of events not yet acted on.
    burst: Option<Burst>,
    /// A reconciliation that could not complete, to try again at this time.
    retry_at: Option<Instant>,
    /// `login/GUEST_MODE` was there when last looked at (the start warns of it already).
    guest_mode: bool,
}

impl Guard {
    fn new(settings: Settings, watcher: Watcher, token: String) -> Guard {
        let guest_mode = std::fs::symlink_metadata(settings.guest_mode_path()).is_ok();
        Guard { settings, watcher, token, burst: None, retry_at: None, guest_mode }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.watcher.fd()
    }

    pub fn on_readable(&mut self, now: Instant) {
        let first = self.burst.map(|b| b.first).unwrap_or(now);
        match self.watcher.drain() {
            Activity::None => {}
            Activity::Changing => self.burst = Some(Burst { first, last: now, saved: false }),
            // A save that ended needs no quiet period: act on it now.
            Activity::Saved => self.burst = Some(Burst { first, last: now, saved: true }),
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        let settled = self.burst.map(|b| if b.saved { b.last } else { (b.last + QUIET).min(b.first + MAX_WAIT) });
        settled.into_iter().chain(self.retry_at).min()
    }

    /// The burst of events has settled: time to act.
    pub fn due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|at| now >= at)
    }

    /// Guest mode switched on while ComfyUI runs: say it once (ComfyUI-Login reads the file at
    /// every login, so it takes effect at once).
    fn watch_guest_mode(&mut self) {
        let risk = credentials::guest_mode_risk(&self.settings, !credentials::token_redacted(&self.settings));
        if let (Some(risk), false) = (&risk, self.guest_mode) {
            log::warn!("{risk}");
        }
        self.guest_mode = risk.is_some();
    }

    /// Reconciles. Some((old, new)) when the token changed: the child must pick up `new`.
    pub fn reconcile(&mut self) -> Option<(String, String)> {
        self.burst = None;
        self.retry_at = None;
        self.watch_guest_mode();
        match credentials::reconcile(&self.settings, Some(&self.token), Mode::NoWait) {
            Ok(out) => {
                credentials::log_outcome(&out);
                if out.token == self.token {
                    return None;
                }
                let old = std::mem::replace(&mut self.token, out.token);
                Some((old, self.token.clone()))
            }
            Err(e @ (Failure::Refused(_) | Failure::Io(_))) => {
                log::error!("{e}; ComfyUI keeps running with its current token");
                None
            }
            Err(e @ (Failure::Busy | Failure::Changed)) => {
                log::debug!("{e}: trying again in {RETRY:?}");
                self.retry_at = Some(Instant::now() + RETRY);
                None
            }
        }
    }
}

/// `comfy-init __credentials`: at the first start (no running token in its environment), makes
/// login/PASSWORD valid and tells PID 1 `token <T>`, or says why it cannot and exits 78 (PID 1
/// then starts nothing); then watches the credential files until PID 1 goes away, and tells it
/// `token <T>` on fd 3 (see supervisor::service) once PASSWORD holds a new token. Exits 1 when
/// it cannot watch or cannot be heard; PID 1 starts it again.
pub fn serve(settings: Settings) -> u8 {
    // SAFETY: fd 3 is the notification pipe PID 1 gave us (vfork::NOTIFY_FD); we own it now.
    let notify = unsafe { std::fs::File::from_raw_fd(super::vfork::NOTIFY_FD) };
    let tell = |line: String| writeln!(&notify, "{line}").is_ok();
    // Watching starts before the first look, so that no edit falls between the two.
    let watcher = Watcher::new(settings.watch_targets());
    let token = match std::env::var(super::service::ENV_TOKEN) {
        Ok(running) => running,
        Err(_) => match first_reconciliation(&settings) {
            Ok(token) if tell(format!("token {token}")) => token,
            Ok(_) => return 0, // PID 1 is gone
            Err(code) => return code,
        },
    };
    let mut guard = match watcher {
        Ok(watcher) => Guard::new(settings, watcher, token),
        Err(e) => {
            log::error!("cannot watch the credential files ({e}): a new password needs a restart of the container");
            return 1;
        }
    };
    guard.on_readable(Instant::now()); // events from before we watched: look once
    loop {
        let now = Instant::now();
        if guard.due(now) {
            if let Some((_old, new)) = guard.reconcile() {
                if !tell(format!("token {new}")) {
                    return 0; // PID 1 is gone
                }
            }
        }
        let timeout = guard.deadline().map_or(-1, |at| {
            let ms = at.saturating_duration_since(Instant::now()).as_millis() + 1;
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        });
        // The pipe to PID 1 too: its write end reports POLLERR once nobody reads (PID 1 died
        // without killing us, as a SIGKILLed subreaper does): then we go too.
        let mut fds = [
            libc::pollfd { fd: guard.fd().as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: notify.as_raw_fd(), events: 0, revents: 0 },
        ];
        // SAFETY: two valid pollfds for descriptors we own.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) } > 0 {
            if fds[1].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                return 0;
            }
            if fds[0].revents != 0 {
                guard.on_readable(Instant::now());
            }
        }
    }
}

/// The reconciliation before the first start: the token ComfyUI starts with, or (said here,
/// where the reason is known) the exit code that ends the start: ComfyUI never runs without a
/// valid login/PASSWORD. A lock held by a `rotate` or `sync` is waited for: PID 1 is not.
fn first_reconciliation(settings: &Settings) -> Result<String, u8> {
    match credentials::reconcile(settings, None, Mode::Wait) {
        Ok(out) => {
            credentials::log_outcome(&out);
            Ok(out.token)
        }
        Err(e) => {
            log::error!("{e}; ComfyUI not started: it never runs without a valid login/PASSWORD");
            Err(EXIT_CONFIG)
        }
    }
}
