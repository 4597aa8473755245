//! Keeps the credentials in step while ComfyUI runs: file events (debounced) trigger a new
//! reconciliation with the running token as a candidate, so a broken PASSWORD is healed in place
//! and only a real token change asks for a restart. Our own writes cause events too; they
//! reconcile to "nothing to do", which is why no restart can come from them.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use crate::credentials::{self, Failure, Mode, Settings};
use crate::watch::Watcher;

/// One save is one reaction: wait this long after the last event...
const QUIET: Duration = Duration::from_millis(75);
/// ...but never longer than this after the first.
const MAX_WAIT: Duration = Duration::from_millis(500);
/// Another comfy-init holds the lock (a `rotate`, a `sync`): look again this soon, never waiting
/// for it inside the loop.
const RETRY: Duration = Duration::from_millis(100);

pub struct Guard {
    settings: Settings,
    watcher: Watcher,
    /// The token the current child was started with.
    token: String,
    /// (first event, last event) of a burst not yet acted on.
    burst: Option<(Instant, Instant)>,
    /// A reconciliation that could not complete, to try again at this time.
    retry_at: Option<Instant>,
    /// `login/GUEST_MODE` was there when last looked at (the start warns of it already).
    guest_mode: bool,
}

impl Guard {
    pub fn new(settings: Settings, token: String) -> nix::Result<Guard> {
        let watcher = Watcher::new(settings.watch_targets())?;
        let guest_mode = credentials::guest_mode_risk(&settings).is_some();
        Ok(Guard { settings, watcher, token, burst: None, retry_at: None, guest_mode })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.watcher.fd()
    }

    pub fn on_readable(&mut self, now: Instant) {
        if self.watcher.drain() {
            let first = self.burst.map(|(first, _)| first).unwrap_or(now);
            self.burst = Some((first, now));
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        let settled = self.burst.map(|(first, last)| (last + QUIET).min(first + MAX_WAIT));
        settled.into_iter().chain(self.retry_at).min()
    }

    /// The burst of events has settled: time to act.
    pub fn due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|at| now >= at)
    }

    /// Guest mode switched on while ComfyUI runs: say it once (ComfyUI-Login reads the file at
    /// every login, so it takes effect at once).
    fn watch_guest_mode(&mut self) {
        let risk = credentials::guest_mode_risk(&self.settings);
        if let (Some(risk), false) = (&risk, self.guest_mode) {
            log::warn!("{risk}");
        }
        self.guest_mode = risk.is_some();
    }

    /// Cheap (no bcrypt): is the configured password known not to be the running token's? Then
    /// the token will change, and ComfyUI can start stopping before the new hash is computed.
    pub fn token_known_stale(&self) -> bool {
        credentials::known_stale(&self.settings, &self.token)
    }

    /// Reconciles. True when the child must restart to pick up a new token.
    pub fn reconcile(&mut self) -> bool {
        self.burst = None;
        self.retry_at = None;
        self.watch_guest_mode();
        match credentials::reconcile(&self.settings, Some(&self.token), Mode::NoWait) {
            Ok(out) => {
                credentials::log_outcome(&out);
                if out.token == self.token {
                    return false;
                }
                self.token = out.token;
                true
            }
            Err(Failure::Refused(e)) => {
                log::error!("{e}; ComfyUI keeps running with its current token");
                false
            }
            Err(e @ (Failure::Busy | Failure::Changed)) => {
                log::debug!("{e}: trying again in {RETRY:?}");
                self.retry_at = Some(Instant::now() + RETRY);
                false
            }
        }
    }
}
