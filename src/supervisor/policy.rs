//! When the child exits on its own: restart it, and after how long, or give up. A pure state
//! machine over (exit status, uptime, clock); the event loop owns the clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::reaper::ExitStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartMode {
    /// Restart after a failure (non-zero exit or death by signal); a clean exit 0 stops us.
    OnFailure,
    /// Restart after any exit.
    Always,
    /// Never restart: exit with the child's status.
    Never,
}

impl std::fmt::Display for RestartMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RestartMode::OnFailure => "on-failure",
            RestartMode::Always => "always",
            RestartMode::Never => "never",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    RestartNow,
    RestartAfter(Duration),
    /// Exit with this code; `gave_up` when the crash-loop limit was hit.
    Exit {
        code: i32,
        gave_up: bool,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// An uptime this long proves the child healthy again: the delay starts over.
    pub healthy_after: Duration,
    /// This many failures within `window` and we give up.
    pub max_failures: usize,
    pub window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            healthy_after: Duration::from_secs(60),
            max_failures: 5,
            window: Duration::from_secs(300),
        }
    }
}

#[derive(Debug)]
pub struct RestartPolicy {
    mode: RestartMode,
    limits: Limits,
    next_delay: Duration,
    failures: VecDeque<Instant>,
}

impl RestartPolicy {
    pub fn new(mode: RestartMode, limits: Limits) -> Self {
        RestartPolicy { mode, limits, next_delay: limits.first_delay, failures: VecDeque::new() }
    }

    /// The child exited by itself after `uptime`. `reboot_requested`: it left ComfyUI-Manager's
    /// restart marker.
    pub fn on_exit(&mut self, status: ExitStatus, uptime: Duration, reboot_requested: bool, now: Instant) -> Decision {
        if uptime >= self.limits.healthy_after {
            self.next_delay = self.limits.first_delay;
        }
        if reboot_requested && status.success() {
            return Decision::RestartNow;
        }
        let failed = !status.success();
        let restart = match self.mode {
            RestartMode::Never => false,
            RestartMode::OnFailure => failed,
            RestartMode::Always => true,
        };
        if !restart {
            return Decision::Exit { code: status.code(), gave_up: false };
        }
        if failed {
            self.failures.push_back(now);
            while let Some(&first) = self.failures.front() {
                if now.duration_since(first) > self.limits.window {
                    self.failures.pop_front();
                } else {
                    break;
                }
            }
            if self.failures.len() >= self.limits.max_failures {
                return Decision::Exit { code: status.code(), gave_up: true };
            }
        }
        let delay = self.next_delay;
        self.next_delay = (delay * 2).min(self.limits.max_delay);
        Decision::RestartAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: ExitStatus = ExitStatus::Code(1);
    const CLEAN: ExitStatus = ExitStatus::Code(0);
    const SEGV: ExitStatus = ExitStatus::Signal(libc::SIGSEGV);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A fake clock: a start instant moved forward by hand.
    struct Clock(Instant);
    impl Clock {
        fn advance(&mut self, d: Duration) -> Instant {
            self.0 += d;
            self.0
        }
    }

    #[test]
    fn on_failure_backs_off_doubling_then_gives_up() {
        let mut p = RestartPolicy::new(RestartMode::OnFailure, Limits::default());
        let mut clock = Clock(Instant::now());
        let mut delays = vec![];
        loop {
            let now = clock.advance(Duration::from_millis(10));
            match p.on_exit(FAIL, Duration::from_millis(10), false, now) {
                Decision::RestartAfter(d) => {
                    delays.push(d);
                    clock.advance(d);
                }
                Decision::Exit { code, gave_up } => {
                    assert_eq!((code, gave_up), (1, true));
                    break;
                }
                Decision::RestartNow => panic!("no reboot was requested"),
            }
        }
        assert_eq!(delays, vec![secs(1), secs(2), secs(4), secs(8)]);
    }

    #[test]
    fn delay_is_capped_at_thirty_seconds() {
        let limits = Limits { max_failures: 100, ..Limits::default() };
        let mut p = RestartPolicy::new(RestartMode::OnFailure, limits);
        let mut clock = Clock(Instant::now());
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            if let Decision::RestartAfter(d) = p.on_exit(SEGV, Duration::ZERO, false, clock.advance(secs(1))) {
                last = d;
            }
        }
        assert_eq!(last, secs(30));
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let mut p = RestartPolicy::new(RestartMode::OnFailure, Limits::default());
        let mut clock = Clock(Instant::now());
        for _ in 0..20 {
            // One failure every two minutes: never five within five minutes.
            let d = p.on_exit(FAIL, secs(1), false, clock.advance(secs(120)));
            assert!(matches!(d, Decision::RestartAfter(_)), "{d:?}");
        }
    }

    #[test]
    fn a_minute_of_uptime_resets_the_delay() {
        let mut p = RestartPolicy::new(RestartMode::OnFailure, Limits::default());
        let mut clock = Clock(Instant::now());
        assert_eq!(p.on_exit(FAIL, secs(1), false, clock.advance(secs(1))), Decision::RestartAfter(secs(1)));
        assert_eq!(p.on_exit(FAIL, secs(1), false, clock.advance(secs(1))), Decision::RestartAfter(secs(2)));
        assert_eq!(p.on_exit(FAIL, secs(61), false, clock.advance(secs(61))), Decision::RestartAfter(secs(1)));
    }

    #[test]
    fn clean_exit_depends_on_mode() {
        let now = Instant::now();
        let exit0 = Decision::Exit { code: 0, gave_up: false };
        assert_eq!(
            RestartPolicy::new(RestartMode::OnFailure, Limits::default()).on_exit(CLEAN, secs(5), false, now),
            exit0
        );
        assert_eq!(
            RestartPolicy::new(RestartMode::Never, Limits::default()).on_exit(CLEAN, secs(5), false, now),
            exit0
        );
        assert_eq!(
            RestartPolicy::new(RestartMode::Always, Limits::default()).on_exit(CLEAN, secs(5), false, now),
            Decision::RestartAfter(secs(1))
        );
    }

    #[test]
    fn never_passes_failures_through() {
        let mut p = RestartPolicy::new(RestartMode::Never, Limits::default());
        assert_eq!(p.on_exit(SEGV, secs(1), false, Instant::now()), Decision::Exit { code: 139, gave_up: false });
    }

    #[test]
    fn manager_reboot_restarts_at_once_in_every_mode() {
        for mode in [RestartMode::OnFailure, RestartMode::Always, RestartMode::Never] {
            let mut p = RestartPolicy::new(mode, Limits::default());
            assert_eq!(p.on_exit(CLEAN, secs(1), true, Instant::now()), Decision::RestartNow);
        }
        // A marker left by a crashing child is no restart request.
        let mut p = RestartPolicy::new(RestartMode::Never, Limits::default());
        assert!(matches!(p.on_exit(FAIL, secs(1), true, Instant::now()), Decision::Exit { .. }));
    }
}
