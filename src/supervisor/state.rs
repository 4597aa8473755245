//! The supervisor's decisions, pure: `Machine::step(event, now)` moves the state and says what to
//! do as a list of effects; the loop in `mod.rs` waits, turns what it saw into events and carries
//! the effects out. No system call here and no clock but `now`: every (state, event) pair that
//! can happen is a unit test below (the s6-supervise shape).

use std::time::{Duration, Instant};

use super::policy::{Decision, Limits, RestartMode, RestartPolicy};
use super::reaper::ExitStatus;
use super::signals::signal_name;

/// While a group is being stopped, how often to look whether its last member is gone (a
/// grandchild whose parent is still alive dies without telling us).
pub const GROUP_RECHECK: Duration = Duration::from_millis(50);

/// How long a group may outlive its SIGKILL before the stop goes on without it: a process in
/// uninterruptible sleep (a GPU fallen off the bus, a hung FUSE or NFS call) cannot die until it
/// wakes, and a stop must end within the grace Docker gives. Its pids and states are logged.
pub const ABANDON_AFTER: Duration = Duration::from_secs(3);

/// How long a reload may take to be proven (the probe gives up after 4 s) before ComfyUI is
/// restarted instead.
pub const RELOAD_PROOF: Duration = Duration::from_secs(5);

/// How the child is stopped and restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    pub restart: RestartMode,
    /// A pre-start hook that fails stops the start (else: a warning, and on to the next).
    pub stop_on_hook_failure: bool,
    /// How long a stop or a fallback restart waits for ComfyUI's queue to empty (the running
    /// prompt and those already taken), new prompts refused meanwhile (COMFY_INIT_DRAIN_TIMEOUT;
    /// zero: no drain).
    pub drain_timeout: Duration,
    /// How often the liveness probe runs while ComfyUI runs (COMFY_INIT_WATCHDOG; None: never),
    /// and how many failures in a row restart it (COMFY_INIT_WATCHDOG_FAILURES).
    pub watchdog: Option<Duration>,
    pub watchdog_failures: u32,
}

/// A running child. Its pid is also its process group id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Child {
    pub pid: i32,
    pub started: Instant,
}

/// What happens once the whole process group is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// We were asked to stop: exit with the child's status.
    Exit,
    /// Start a new child at once (the token changed).
    Restart,
    /// The child exited by itself: ask the restart policy.
    AskPolicy,
    /// The watchdog found it hung: ask the restart policy, as for a crash.
    Watchdog,
}

/// How the main child ended, as seen when it was reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    pub status: ExitStatus,
    /// It left ComfyUI-Manager's restart marker.
    pub reboot: bool,
    /// It can never start as it is (the companion saw why: a taken port, a locked assets
    /// database, a missing module; the loop said so): restarting would only loop.
    pub fatal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The credential service makes login/PASSWORD hold a valid token (the first reconciliation:
    /// the lock, bcrypt, the writes, all in its own process). Nothing else starts before it says
    /// so: ComfyUI never runs without a valid PASSWORD.
    Credentials,
    /// Pre-start hook number `index` runs (in its own process group, like ComfyUI).
    PreStart {
        hook: Child,
        index: usize,
    },
    /// A `SpawnHook` effect is being carried out; `HookStarted` or `HookFailed` follows at once.
    SpawningHook {
        index: usize,
    },
    /// A `Spawn` effect is being carried out; `Spawned` or `SpawnFailed` follows at once.
    Spawning,
    Running(Child),
    /// The companion was asked to apply a new token; `probe` proves it (or not) from outside.
    Reloading {
        child: Child,
        probe: Option<i32>,
        until: Instant,
    },
    /// ComfyUI is asked to refuse new prompts and `probe` watches its queue until the running
    /// prompt is done; then the stop (or restart) goes on, at `until` at the latest.
    Draining {
        child: Child,
        then: AfterStop,
        probe: Option<i32>,
        until: Instant,
    },
    /// The group was sent the stop signal; SIGKILL at `kill_at` unless it is gone by then; the
    /// stop goes on without it [`ABANDON_AFTER`] after SIGKILL (`killed_at`).
    Stopping {
        child: Child,
        exited: Option<Exited>,
        then: AfterStop,
        kill_at: Instant,
        killed_at: Option<Instant>,
    },
    Backoff {
        until: Instant,
        last: ExitStatus,
    },
    Done(i32),
}

/// What the loop saw, turned into one thing that happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// PASSWORD holds a valid token (the service's first `token` message), or credentials are
    /// not managed (COMFY_INIT_AUTH=off): the start goes on.
    CredentialsReady,
    /// The credential service ended before PASSWORD held a valid token (it said why in the log).
    CredentialsFailed(ExitStatus),
    Spawned(Child),
    /// The command could not be started: the shell's status (126/127).
    SpawnFailed(i32),
    /// A process was reaped. For the main child, the loop also says whether its process group
    /// still has members and whether it left the restart marker.
    Reaped {
        pid: i32,
        exited: Exited,
        group_alive: bool,
    },
    /// The group the machine waits for has no member left.
    GroupGone,
    /// SIGTERM, SIGINT or SIGQUIT to us.
    StopRequested(i32),
    /// Several ComfyUI: the first ended before it started ComfyUI (its pre-start hooks failed,
    /// say), so this one, waiting for it, ends without starting (and without a stop to report).
    Abandoned,
    /// Any other signal to us, for the child's group.
    Forward(i32),
    /// The credentials now give another token than the child's. `companion`: the pid of a
    /// companion ready in the current child to reload it in place (None: restart).
    TokenChanged {
        companion: Option<i32>,
    },
    /// The probe that proves a reload started.
    ProbeStarted(i32),
    /// The reload could not even be asked for (signal or probe failed).
    ReloadFailed,
    /// The drain was asked for and the probe that watches the queue started.
    DrainStarted(i32),
    /// The drain could not be asked for (no companion ready, the signal or the probe failed).
    DrainFailed,
    /// The watchdog's liveness probe started.
    WatchdogStarted(i32),
    /// A pre-start hook started.
    HookStarted(Child),
    /// A pre-start hook could not be started: the shell's status (126/127).
    HookFailed(i32),
    /// Time passed: a deadline may be due.
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    SignalGroup {
        pgid: i32,
        signo: i32,
    },
    /// Start the child (again).
    Spawn,
    /// Start pre-start hook number `index` (`HookStarted` or `HookFailed` follows at once).
    SpawnHook {
        index: usize,
    },
    /// Send the companion the reload signal and start the probe (`ProbeStarted` or
    /// `ReloadFailed` follows at once).
    StartReload {
        companion: i32,
    },
    /// Start the watchdog's liveness probe (`WatchdogStarted` follows at once when it started);
    /// `armed`: ComfyUI passed one, so a failure counts and is said (before: it is starting).
    StartWatchdog {
        armed: bool,
    },
    /// Ask the companion to refuse new prompts and start the probe that watches the queue
    /// (`DrainStarted` or `DrainFailed` follows at once).
    StartDrain,
    /// The group outlived SIGKILL by [`ABANDON_AFTER`]: name what is left of it, go on without it.
    Abandon {
        pgid: i32,
    },
    Exit(i32),
    Log(log::Level, String),
}

pub struct Machine {
    settings: Settings,
    policy: RestartPolicy,
    state: State,
    /// The pre-start hooks' names, in the order they run (for the log).
    hooks: Vec<String>,
    /// The child was started once: a command that cannot be started at all is not retried.
    started_once: bool,
    watch: Watch,
}

/// The watchdog's state: its next check, its probe, and how many failed in a row since the
/// child first passed one (a ComfyUI still starting fails without counting: it is armed by its
/// first success, as a Kubernetes startup probe arms liveness).
#[derive(Debug, Clone, Copy, Default)]
struct Watch {
    next: Option<Instant>,
    probe: Option<i32>,
    armed: bool,
    failures: u32,
}

impl Machine {
    /// Waiting for the credentials; then the pre-start hooks (by name, in order), then the child.
    pub fn new(settings: Settings, hooks: Vec<String>) -> Machine {
        let policy = RestartPolicy::new(settings.restart, Limits::default());
        Machine { settings, policy, state: State::Credentials, hooks, started_once: false, watch: Watch::default() }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The child was started (once at least): the pre-start hooks are over.
    pub fn started(&self) -> bool {
        self.started_once
    }

    /// The phase readiness is judged by (`healthcheck --ready`): ready only while `running`.
    pub fn phase(&self) -> &'static str {
        match self.state {
            State::Credentials | State::PreStart { .. } | State::SpawningHook { .. } => "starting",
            State::Spawning if !self.started_once => "starting",
            State::Running(_) => "running",
            State::Reloading { .. } => "reloading",
            State::Draining { .. } => "draining",
            State::Stopping { then: AfterStop::Exit, .. } => "stopping",
            State::Stopping { .. } | State::Backoff { .. } | State::Spawning => "restarting",
            State::Done(_) => "stopped",
        }
    }

    /// Whether the end of `pid` is the machine's business: the child, a pre-start hook, the reload
    /// probe. Any other pid reaped is an orphan, of which only the log hears (10,000 of them at
    /// once must cost no more than their `waitpid`s).
    pub fn awaits(&self, pid: i32) -> bool {
        if self.watch.probe == Some(pid) {
            return true;
        }
        match self.state {
            State::PreStart { hook, .. } => hook.pid == pid,
            State::Running(child) | State::Stopping { child, .. } => child.pid == pid,
            State::Reloading { child, probe, .. } | State::Draining { child, probe, .. } => {
                child.pid == pid || probe == Some(pid)
            }
            _ => false,
        }
    }

    /// The group the loop must watch for its last member: the child has exited, its group not.
    pub fn awaited_group(&self) -> Option<i32> {
        match self.state {
            State::Stopping { child, exited: Some(_), .. } => Some(child.pid),
            _ => None,
        }
    }

    /// When the loop must wake up at the latest (None: only for a signal or a file event).
    pub fn deadline(&self, now: Instant) -> Option<Instant> {
        match self.state {
            State::Stopping { kill_at, killed_at, .. } => {
                let next = killed_at.map_or(kill_at, |at| at + ABANDON_AFTER);
                Some((now + GROUP_RECHECK).min(next))
            }
            State::Backoff { until, .. } | State::Reloading { until, .. } | State::Draining { until, .. } => {
                Some(until)
            }
            State::Credentials | State::PreStart { .. } | State::SpawningHook { .. } => None,
            State::Running(_) => self.watch.next,
            State::Spawning | State::Done(_) => None,
        }
    }

    pub fn step(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        match event {
            Event::CredentialsReady => self.on_credentials_ready(&mut fx),
            Event::CredentialsFailed(status) => self.on_credentials_failed(status, &mut fx),
            Event::Spawned(child) => self.on_spawned(child),
            Event::SpawnFailed(code) => self.on_spawn_failed(code, now, &mut fx),
            Event::Reaped { pid, exited, group_alive } => self.on_reaped(pid, exited, group_alive, now, &mut fx),
            Event::GroupGone => self.on_group_gone(now, &mut fx),
            Event::StopRequested(signo) => self.on_stop_request(signo, now, &mut fx),
            Event::Abandoned if self.state == State::Credentials => self.finish(0, &mut fx),
            Event::Abandoned => self.on_stop_request(libc::SIGTERM, now, &mut fx),
            Event::Forward(signo) => self.on_forward(signo, &mut fx),
            Event::TokenChanged { companion } => self.on_token_changed(companion, now, &mut fx),
            Event::ProbeStarted(pid) => self.on_probe_started(pid),
            Event::ReloadFailed => self.restart_after_failed_reload("it could not be asked for", now, &mut fx),
            Event::DrainStarted(pid) => self.on_drain_started(pid),
            Event::WatchdogStarted(pid) => self.watch.probe = Some(pid),
            Event::DrainFailed => self.end_drain("it could not be asked for", now, &mut fx),
            Event::HookStarted(hook) => self.on_hook_started(hook),
            Event::HookFailed(code) => {
                if let State::SpawningHook { index } = self.state {
                    self.after_hook(index, ExitStatus::Code(code), &mut fx);
                }
            }
            Event::Tick => self.on_tick(now, &mut fx),
        }
        fx
    }

    /// The first pre-start hook, or the child when there is none.
    fn on_credentials_ready(&mut self, fx: &mut Vec<Effect>) {
        if self.state != State::Credentials {
            return; // a later token is a TokenChanged
        }
        if self.hooks.is_empty() {
            self.spawn(fx);
        } else {
            self.state = State::SpawningHook { index: 0 };
            fx.push(Effect::SpawnHook { index: 0 });
        }
    }

    fn on_credentials_failed(&mut self, status: ExitStatus, fx: &mut Vec<Effect>) {
        if self.state == State::Credentials {
            fx.push(log(
                log::Level::Error,
                format!(
                    "the credential service ended ({status}) before login/PASSWORD held a valid token: \
                     ComfyUI not started (it never runs without one)"
                ),
            ));
            self.finish(status.code(), fx);
        }
    }

    fn on_spawned(&mut self, child: Child) {
        if self.state == State::Spawning {
            self.state = State::Running(child);
            self.started_once = true;
            // A new child: a probe still running judged the old one.
            self.watch = Watch { next: self.settings.watchdog.map(|every| child.started + every), ..Watch::default() };
        }
    }

    /// A start that failed counts as a crash with the shell's status; the very first one ends it
    /// (a command that is not there will not appear by waiting).
    fn on_spawn_failed(&mut self, code: i32, now: Instant, fx: &mut Vec<Effect>) {
        if self.state == State::Spawning && !self.started_once {
            return self.finish(code, fx);
        }
        if self.state == State::Spawning {
            let never_ran = Child { pid: 0, started: now };
            self.decide(never_ran, Exited { status: ExitStatus::Code(code), reboot: false, fatal: false }, now, fx);
        }
    }

    fn on_reaped(&mut self, pid: i32, exited: Exited, group_alive: bool, now: Instant, fx: &mut Vec<Effect>) {
        if self.watch.probe == Some(pid) {
            self.watch.probe = None;
            return self.on_watchdog_result(exited.status.success(), now, fx);
        }
        if let State::Draining { child, then, probe, .. } = self.state {
            if probe == Some(pid) {
                if let State::Draining { probe, .. } = &mut self.state {
                    *probe = None; // reaped: nothing left to kill
                }
                let why = if exited.status.success() { "the queue is empty" } else { "the queue cannot be read" };
                return self.end_drain(why, now, fx);
            }
            if child.pid == pid {
                // ComfyUI ended by itself while draining: the stop (or restart) it waited for.
                fx.push(log(log::Level::Info, format!("child (pid {pid}) exited: {}", exited.status)));
                return match group_alive {
                    true => self.begin_stop(child, Some(exited), then, now, fx),
                    false => self.after_stop(child, exited, then, now, fx),
                };
            }
        }
        if let State::Reloading { child, probe, .. } = self.state {
            if probe == Some(pid) {
                return self.on_probe_exited(child, exited, now, fx);
            }
            if child.pid == pid {
                self.state = State::Running(child); // ComfyUI died mid-reload: as if running
            }
        }
        match &mut self.state {
            State::PreStart { hook, index } if hook.pid == pid => {
                let (pgid, index) = (hook.pid, *index);
                if group_alive {
                    // What the hook left running in the background has no place once it is done.
                    fx.push(Effect::SignalGroup { pgid, signo: libc::SIGTERM });
                }
                self.after_hook(index, exited.status, fx);
            }
            State::Running(child) if child.pid == pid => {
                let child = *child;
                fx.push(log(log::Level::Info, format!("child (pid {pid}) exited: {}", exited.status)));
                if group_alive {
                    fx.push(log(log::Level::Info, "stopping what is left of its process group".into()));
                    self.begin_stop(child, Some(exited), AfterStop::AskPolicy, now, fx);
                    self.hurry_leftovers(child.pid, fx);
                } else {
                    self.decide(child, exited, now, fx);
                }
            }
            State::Stopping { child, exited: slot, then, .. } if child.pid == pid => {
                let (child, then) = (*child, *then);
                *slot = Some(exited);
                fx.push(log(log::Level::Info, format!("child (pid {pid}) exited: {}", exited.status)));
                if group_alive {
                    self.hurry_leftovers(child.pid, fx);
                } else {
                    self.after_stop(child, exited, then, now, fx);
                }
            }
            _ => {} // an orphan: the loop does not feed those (`awaits`)
        }
    }

    fn on_group_gone(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if let State::Stopping { child, exited: Some(exited), then, .. } = self.state {
            self.after_stop(child, exited, then, now, fx);
        }
    }

    fn on_stop_request(&mut self, signo: i32, now: Instant, fx: &mut Vec<Effect>) {
        fx.push(log(log::Level::Info, format!("received {}: stopping", signal_name(signo))));
        match &mut self.state {
            State::Running(child) => {
                let child = *child;
                self.drain_or_stop(child, AfterStop::Exit, now, fx);
            }
            State::Draining {
                then: then @ (AfterStop::Restart | AfterStop::AskPolicy | AfterStop::Watchdog), ..
            } => {
                *then = AfterStop::Exit; // the drain under way serves the stop too
            }
            State::Draining { .. } => {
                fx.push(log(log::Level::Warn, "second stop request: not waiting for the queue".into()));
                self.end_drain("asked twice", now, fx);
            }
            State::Stopping { child, then, killed_at, .. } => {
                if *then == AfterStop::Exit && killed_at.is_none() {
                    // Asked twice (Ctrl-C Ctrl-C): no more patience.
                    fx.push(log(log::Level::Warn, format!("second stop request: killing process group {}", child.pid)));
                    fx.push(Effect::SignalGroup { pgid: child.pid, signo: libc::SIGKILL });
                    *killed_at = Some(now);
                }
                *then = AfterStop::Exit;
            }
            State::Backoff { last, .. } => {
                let code = last.code();
                self.finish(code, fx);
            }
            State::Credentials => {
                fx.push(log(
                    log::Level::Info,
                    format!("{} during the credentials check: ComfyUI not started", signal_name(signo)),
                ));
                self.finish(128 + signo, fx);
            }
            State::Reloading { child, .. } | State::PreStart { hook: child, .. } => {
                let child = *child;
                self.begin_stop(child, None, AfterStop::Exit, now, fx);
            }
            State::Spawning | State::SpawningHook { .. } | State::Done(_) => {}
        }
    }

    fn on_forward(&mut self, signo: i32, fx: &mut Vec<Effect>) {
        match self.state {
            State::Running(child)
            | State::Stopping { child, .. }
            | State::Reloading { child, .. }
            | State::Draining { child, .. }
            | State::PreStart { hook: child, .. } => fx.push(Effect::SignalGroup { pgid: child.pid, signo }),
            _ => fx.push(log(log::Level::Debug, format!("{} dropped: no child running", signal_name(signo)))),
        }
    }

    fn on_token_changed(&mut self, companion: Option<i32>, now: Instant, fx: &mut Vec<Effect>) {
        match (self.state, companion) {
            (State::Running(child), Some(companion)) => {
                fx.push(log(
                    log::Level::Info,
                    format!("the token changed: asking ComfyUI (pid {}) to reload it, no restart", child.pid),
                ));
                self.state = State::Reloading { child, probe: None, until: now + RELOAD_PROOF };
                fx.push(Effect::StartReload { companion });
            }
            (State::Running(child), None) => {
                fx.push(log(
                    log::Level::Info,
                    format!("the token changed: restarting ComfyUI (pid {}) so that it reads the new one", child.pid),
                ));
                self.begin_stop(child, None, AfterStop::Restart, now, fx);
            }
            (State::Reloading { .. }, _) => {
                self.restart_after_failed_reload("the token changed again meanwhile", now, fx)
            }
            _ => {}
        }
    }

    fn on_hook_started(&mut self, hook: Child) {
        if let State::SpawningHook { index } = self.state {
            self.state = State::PreStart { hook, index };
        }
    }

    /// Hook `index` ended: the next one, ComfyUI, or (it failed and that stops the start) exit.
    fn after_hook(&mut self, index: usize, status: ExitStatus, fx: &mut Vec<Effect>) {
        let name = self.hooks.get(index).cloned().unwrap_or_default();
        if !status.success() {
            if self.settings.stop_on_hook_failure {
                fx.push(log(
                    log::Level::Error,
                    format!(
                        "pre-start hook {name} failed ({status}): ComfyUI not started \
                         (COMFY_INIT_PRE_START_FAILURE=warn goes on after a failed hook)"
                    ),
                ));
                return self.finish(status.code(), fx);
            }
            fx.push(log(log::Level::Warn, format!("pre-start hook {name} failed ({status}): going on")));
        } else {
            fx.push(log(log::Level::Info, format!("pre-start hook {name} done")));
        }
        if index + 1 < self.hooks.len() {
            self.state = State::SpawningHook { index: index + 1 };
            fx.push(Effect::SpawnHook { index: index + 1 });
        } else {
            self.spawn(fx);
        }
    }

    fn on_probe_started(&mut self, pid: i32) {
        if let State::Reloading { probe, .. } = &mut self.state {
            *probe = Some(pid);
        }
    }

    fn on_probe_exited(&mut self, child: Child, exited: Exited, now: Instant, fx: &mut Vec<Effect>) {
        if exited.status.success() {
            fx.push(log(
                log::Level::Info,
                format!("ComfyUI (pid {}) uses the new token; the old one is refused: no restart needed", child.pid),
            ));
            self.state = State::Running(child);
        } else {
            self.restart_after_failed_reload("the new token was not proven in use", now, fx);
        }
    }

    /// The fallback: today's restart.
    fn restart_after_failed_reload(&mut self, why: &str, now: Instant, fx: &mut Vec<Effect>) {
        if let State::Reloading { child, .. } = self.state {
            fx.push(log(log::Level::Warn, format!("reload of the token abandoned ({why}): restarting ComfyUI")));
            self.drain_or_stop(child, AfterStop::Restart, now, fx);
        }
    }

    fn on_tick(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        match &mut self.state {
            State::Stopping { child, kill_at, killed_at: killed_at @ None, .. } if now >= *kill_at => {
                let pgid = child.pid;
                *killed_at = Some(now);
                fx.push(log(
                    log::Level::Warn,
                    format!(
                        "process group {pgid} still running {:?} after {}: sending SIGKILL",
                        self.settings.stop_timeout,
                        signal_name(self.settings.stop_signal)
                    ),
                ));
                fx.push(Effect::SignalGroup { pgid, signo: libc::SIGKILL });
            }
            State::Stopping { child, exited, then, killed_at: Some(at), .. } if now >= *at + ABANDON_AFTER => {
                let (child, then) = (*child, *then);
                // The main child unreaped too: it was SIGKILLed, as far as anyone can tell.
                let exited =
                    exited.unwrap_or(Exited { status: ExitStatus::Signal(libc::SIGKILL), reboot: false, fatal: false });
                fx.push(Effect::Abandon { pgid: child.pid });
                self.after_stop(child, exited, then, now, fx);
            }
            State::Backoff { until, .. } if now >= *until => self.spawn(fx),
            State::Running(_) if self.watch.next.is_some_and(|at| now >= at) => {
                self.watch.next = self.settings.watchdog.map(|every| now + every);
                if self.watch.probe.is_none() {
                    fx.push(Effect::StartWatchdog { armed: self.watch.armed });
                }
            }
            State::Draining { until, .. } if now >= *until => {
                let why = format!("the queue did not empty within {:?}", self.settings.drain_timeout);
                self.end_drain(&why, now, fx)
            }
            State::Reloading { until, .. } if now >= *until => {
                self.restart_after_failed_reload("no proof within the deadline", now, fx)
            }
            _ => {}
        }
    }

    /// The watchdog's probe ended: passed, or one more failure; N in a row restart ComfyUI
    /// (drained when it still answers; counted by the restart policy as a crash).
    fn on_watchdog_result(&mut self, alive: bool, now: Instant, fx: &mut Vec<Effect>) {
        let State::Running(child) = self.state else { return }; // a stop or a restart is under way
        if alive {
            self.watch.armed = true;
            self.watch.failures = 0;
            return;
        }
        if !self.watch.armed {
            return; // still starting: the startup's business, not the watchdog's
        }
        self.watch.failures += 1;
        let (failures, limit) = (self.watch.failures, self.settings.watchdog_failures);
        if failures < limit {
            let message = format!("watchdog: ComfyUI failed its liveness check ({failures} of {limit} in a row)");
            return fx.push(log(log::Level::Warn, message));
        }
        fx.push(log(
            log::Level::Error,
            format!("watchdog: ComfyUI (pid {}) failed {limit} liveness checks in a row: restarting it", child.pid),
        ));
        self.drain_or_stop(child, AfterStop::Watchdog, now, fx);
    }

    /// With a drain timeout: new prompts refused, the queue waited for (StartDrain); else
    /// the stop at once.
    fn drain_or_stop(&mut self, child: Child, then: AfterStop, now: Instant, fx: &mut Vec<Effect>) {
        if self.settings.drain_timeout.is_zero() {
            return self.begin_stop(child, None, then, now, fx);
        }
        let until = now + self.settings.drain_timeout;
        self.state = State::Draining { child, then, probe: None, until };
        fx.push(Effect::StartDrain);
    }

    fn on_drain_started(&mut self, pid: i32) {
        if let State::Draining { probe, .. } = &mut self.state {
            *probe = Some(pid);
        }
    }

    /// The drain is over (`why`): its probe goes, the stop or restart it delayed goes on.
    fn end_drain(&mut self, why: &str, now: Instant, fx: &mut Vec<Effect>) {
        if let State::Draining { child, then, probe, .. } = self.state {
            if let Some(probe) = probe {
                fx.push(Effect::SignalGroup { pgid: probe, signo: libc::SIGKILL });
            }
            fx.push(log(log::Level::Info, format!("drain over ({why}): stopping ComfyUI (pid {})", child.pid)));
            self.begin_stop(child, None, then, now, fx);
        }
    }

    /// Sends the stop signal to the whole group and arms the SIGKILL deadline.
    fn begin_stop(
        &mut self,
        child: Child,
        exited: Option<Exited>,
        then: AfterStop,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let signo = self.settings.stop_signal;
        fx.push(log(log::Level::Debug, format!("sending {} to process group {}", signal_name(signo), child.pid)));
        fx.push(Effect::SignalGroup { pgid: child.pid, signo });
        let kill_at = now + self.settings.stop_timeout;
        self.state = State::Stopping { child, exited, then, kill_at, killed_at: None };
    }

    /// The main child is gone but some of its group lives on (a helper, a shell's background job,
    /// which starts with SIGINT ignored): ComfyUI's clean stop is over, so they get the
    /// conventional SIGTERM at once instead of waiting out the whole grace before SIGKILL.
    fn hurry_leftovers(&self, pgid: i32, fx: &mut Vec<Effect>) {
        if self.settings.stop_signal != libc::SIGTERM {
            fx.push(log(log::Level::Debug, format!("sending SIGTERM to what is left of process group {pgid}")));
            fx.push(Effect::SignalGroup { pgid, signo: libc::SIGTERM });
        }
    }

    /// The whole group is gone.
    fn after_stop(&mut self, child: Child, exited: Exited, then: AfterStop, now: Instant, fx: &mut Vec<Effect>) {
        match then {
            AfterStop::Exit => self.finish(exited.status.code(), fx),
            AfterStop::Restart => self.spawn(fx),
            AfterStop::AskPolicy => self.decide(child, exited, now, fx),
            AfterStop::Watchdog => {
                // A hung ComfyUI is a failure, whatever it exited with once stopped.
                let status = if exited.status.success() { ExitStatus::Code(1) } else { exited.status };
                self.decide(child, Exited { status, reboot: false, fatal: false }, now, fx)
            }
        }
    }

    /// The child ended by itself and its group is gone: restart now, later, or exit.
    fn decide(&mut self, child: Child, exited: Exited, now: Instant, fx: &mut Vec<Effect>) {
        if exited.fatal {
            // The reason and its fix are in the log already (the loop read them).
            fx.push(log(log::Level::Error, format!("not restarting: exiting with {}", exited.status.code())));
            return self.finish(exited.status.code(), fx);
        }
        let uptime = now.saturating_duration_since(child.started);
        match self.policy.on_exit(exited.status, uptime, exited.reboot, now) {
            Decision::RestartNow => {
                fx.push(log(
                    log::Level::Info,
                    "ComfyUI asked for a restart (ComfyUI-Manager): starting it again".into(),
                ));
                self.spawn(fx);
            }
            Decision::RestartAfter(delay) => {
                fx.push(log(
                    log::Level::Warn,
                    format!("restarting in {delay:?} (COMFY_INIT_RESTART={})", self.settings.restart),
                ));
                self.state = State::Backoff { until: now + delay, last: exited.status };
            }
            Decision::Exit { code, gave_up } => {
                if gave_up {
                    fx.push(log(log::Level::Error, format!("the child keeps failing: giving up, exiting with {code}")));
                }
                self.finish(code, fx);
            }
        }
    }

    fn spawn(&mut self, fx: &mut Vec<Effect>) {
        self.state = State::Spawning;
        fx.push(Effect::Spawn);
    }

    fn finish(&mut self, code: i32, fx: &mut Vec<Effect>) {
        self.state = State::Done(code);
        fx.push(Effect::Exit(code));
    }
}

fn log(level: log::Level, message: String) -> Effect {
    Effect::Log(level, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: i32 = 100;
    const GRACE: Duration = Duration::from_secs(8);

    fn settings(restart: RestartMode) -> Settings {
        Settings {
            stop_signal: libc::SIGINT,
            stop_timeout: GRACE,
            restart,
            stop_on_hook_failure: true,
            drain_timeout: Duration::ZERO,
            watchdog: None,
            watchdog_failures: 3,
        }
    }

    /// A machine whose child (pid 100) started at `t0`, with the clock at `t0`.
    fn running(restart: RestartMode) -> (Machine, Instant) {
        let t0 = Instant::now();
        (started(settings(restart), t0), t0)
    }

    /// Through the way every start goes: credentials ready, the child spawned.
    fn started(settings: Settings, t0: Instant) -> Machine {
        let mut m = Machine::new(settings, Vec::new());
        assert_eq!(acts(m.step(Event::CredentialsReady, t0)), [Effect::Spawn]);
        m.step(Event::Spawned(Child { pid: PID, started: t0 }), t0);
        m
    }

    fn exit(code: i32) -> Exited {
        Exited { status: ExitStatus::Code(code), reboot: false, fatal: false }
    }

    fn reaped(code: i32, group_alive: bool) -> Event {
        Event::Reaped { pid: PID, exited: exit(code), group_alive }
    }

    /// The effects that act (logs left out).
    fn acts(fx: Vec<Effect>) -> Vec<Effect> {
        fx.into_iter().filter(|e| !matches!(e, Effect::Log(..))).collect()
    }

    fn signal(signo: i32) -> Effect {
        Effect::SignalGroup { pgid: PID, signo }
    }

    #[test]
    fn an_instance_abandoned_before_its_start_ends_quietly_and_a_started_one_stops() {
        let t0 = Instant::now();
        let mut waiting = Machine::new(settings(RestartMode::OnFailure), Vec::new());
        assert_eq!(waiting.step(Event::Abandoned, t0), [Effect::Exit(0)], "no stop to report, no status of its own");
        let (mut m, t0) = running(RestartMode::OnFailure);
        assert_eq!(acts(m.step(Event::Abandoned, t0)), [signal(libc::SIGINT)]);
    }

    #[test]
    fn stop_request_sends_the_stop_signal_to_the_group_and_exits_with_the_childs_status() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        assert_eq!(acts(m.step(Event::StopRequested(libc::SIGTERM), t0)), [signal(libc::SIGINT)]);
        assert_eq!(m.deadline(t0), Some(t0 + GROUP_RECHECK));
        assert_eq!(acts(m.step(reaped(0, true), t0)), [signal(libc::SIGTERM)], "leftovers get SIGTERM");
        assert_eq!(m.awaited_group(), Some(PID));
        assert_eq!(acts(m.step(Event::GroupGone, t0)), [Effect::Exit(0)]);
        assert_eq!(m.state(), State::Done(0));
    }

    #[test]
    fn a_child_gone_with_its_group_ends_the_stop_at_once() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        m.step(Event::StopRequested(libc::SIGINT), t0);
        assert_eq!(acts(m.step(reaped(130, false), t0)), [Effect::Exit(130)]);
    }

    #[test]
    fn a_group_still_alive_after_the_grace_is_killed_once() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        m.step(Event::StopRequested(libc::SIGTERM), t0);
        assert!(acts(m.step(Event::Tick, t0 + GRACE / 2)).is_empty());
        assert_eq!(acts(m.step(Event::Tick, t0 + GRACE)), [signal(libc::SIGKILL)]);
        assert!(acts(m.step(Event::Tick, t0 + GRACE + ABANDON_AFTER / 2)).is_empty(), "SIGKILL sent twice");
        assert_eq!(m.deadline(t0 + GRACE), Some(t0 + GRACE + GROUP_RECHECK), "keeps looking for the group");
        assert_eq!(
            acts(m.step(
                Event::Reaped {
                    pid: PID,
                    exited: Exited { status: ExitStatus::Signal(9), reboot: false, fatal: false },
                    group_alive: false
                },
                t0 + GRACE
            )),
            [Effect::Exit(137)]
        );
    }

    #[test]
    fn the_kill_deadline_is_the_grace_after_the_stop_began() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        m.step(Event::StopRequested(libc::SIGTERM), t0);
        let just_before = t0 + GRACE - GROUP_RECHECK / 2;
        assert_eq!(m.deadline(just_before), Some(t0 + GRACE));
    }

    #[test]
    fn a_second_stop_request_kills_at_once() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        m.step(Event::StopRequested(libc::SIGINT), t0);
        let fx = m.step(Event::StopRequested(libc::SIGINT), t0);
        assert!(fx.iter().any(|e| matches!(e, Effect::Log(log::Level::Warn, m) if m.contains("second stop request"))));
        assert_eq!(acts(fx), [signal(libc::SIGKILL)]);
        assert!(acts(m.step(Event::StopRequested(libc::SIGINT), t0)).is_empty(), "a third is nothing new");
        assert!(acts(m.step(Event::Tick, t0 + ABANDON_AFTER / 2)).is_empty(), "already killed");
    }

    #[test]
    fn a_stop_during_a_credential_restart_exits_instead_of_restarting() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        assert_eq!(acts(m.step(Event::TokenChanged { companion: None }, t0)), [signal(libc::SIGINT)]);
        // The first stop request during a restart is not a "second" one: no SIGKILL.
        assert!(acts(m.step(Event::StopRequested(libc::SIGTERM), t0)).is_empty());
        assert_eq!(acts(m.step(reaped(0, false), t0)), [Effect::Exit(0)]);
    }

    #[test]
    fn a_token_change_restarts_once_the_group_is_gone() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        m.step(Event::TokenChanged { companion: None }, t0);
        assert!(acts(m.step(Event::TokenChanged { companion: None }, t0)).is_empty(), "a stop is already under way");
        assert_eq!(acts(m.step(reaped(0, true), t0)), [signal(libc::SIGTERM)]);
        assert_eq!(acts(m.step(Event::GroupGone, t0)), [Effect::Spawn]);
        assert_eq!(m.state(), State::Spawning);
        let next = Child { pid: 200, started: t0 };
        assert!(acts(m.step(Event::Spawned(next), t0)).is_empty());
        assert_eq!(m.state(), State::Running(next));
    }

    #[test]
    fn a_crash_waits_in_backoff_then_restarts() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        let fx = m.step(reaped(1, false), t0);
        assert!(fx.iter().any(|e| matches!(e, Effect::Log(log::Level::Warn, m) if m.contains("restarting in 1s"))));
        assert_eq!(m.state(), State::Backoff { until: t0 + Duration::from_secs(1), last: ExitStatus::Code(1) });
        assert_eq!(m.deadline(t0), Some(t0 + Duration::from_secs(1)));
        assert!(acts(m.step(Event::Tick, t0 + Duration::from_millis(999))).is_empty());
        assert_eq!(acts(m.step(Event::Tick, t0 + Duration::from_secs(1))), [Effect::Spawn]);
    }

    #[test]
    fn a_crash_with_leftovers_stops_them_before_asking_the_policy() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        assert_eq!(acts(m.step(reaped(1, true), t0)), [signal(libc::SIGINT), signal(libc::SIGTERM)]);
        assert_eq!(m.awaited_group(), Some(PID));
        assert!(acts(m.step(Event::GroupGone, t0)).is_empty());
        assert!(matches!(m.state(), State::Backoff { .. }));
    }

    #[test]
    fn a_stop_during_backoff_exits_with_the_last_status() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        m.step(reaped(3, false), t0);
        assert_eq!(acts(m.step(Event::StopRequested(libc::SIGTERM), t0)), [Effect::Exit(3)]);
        assert_eq!(m.state(), State::Done(3));
    }

    #[test]
    fn signals_are_forwarded_to_the_group_while_a_child_lives_and_dropped_otherwise() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        assert_eq!(acts(m.step(Event::Forward(libc::SIGUSR1), t0)), [signal(libc::SIGUSR1)]);
        m.step(Event::TokenChanged { companion: None }, t0);
        assert_eq!(acts(m.step(Event::Forward(libc::SIGHUP), t0)), [signal(libc::SIGHUP)]);
        m.step(reaped(1, false), t0);
        assert!(acts(m.step(Event::Forward(libc::SIGUSR1), t0)).is_empty());
    }

    #[test]
    fn a_token_change_outside_running_changes_nothing() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        m.step(reaped(1, false), t0);
        let before = m.state();
        assert!(m.step(Event::TokenChanged { companion: None }, t0).is_empty());
        assert_eq!(m.state(), before);
    }

    #[test]
    fn a_failed_restart_counts_as_a_crash_with_the_shells_status() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        m.step(Event::TokenChanged { companion: None }, t0);
        m.step(reaped(0, false), t0);
        assert_eq!(m.state(), State::Spawning);
        m.step(Event::SpawnFailed(127), t0);
        assert_eq!(m.state(), State::Backoff { until: t0 + Duration::from_secs(1), last: ExitStatus::Code(127) });
    }

    #[test]
    fn never_restarts_exit_with_the_childs_status() {
        let (mut m, t0) = running(RestartMode::Never);
        assert_eq!(acts(m.step(reaped(5, false), t0)), [Effect::Exit(5)]);
    }

    #[test]
    fn the_managers_restart_button_restarts_at_once() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        let exited = Exited { status: ExitStatus::Code(0), reboot: true, fatal: false };
        assert_eq!(acts(m.step(Event::Reaped { pid: PID, exited, group_alive: false }, t0)), [Effect::Spawn]);
    }

    #[test]
    fn five_crashes_in_five_minutes_give_up_with_the_last_status() {
        let (mut m, mut now) = running(RestartMode::OnFailure);
        for round in 0..5 {
            let fx = m.step(reaped(2, false), now);
            if round == 4 {
                assert!(fx.iter().any(|e| matches!(e, Effect::Log(log::Level::Error, m) if m.contains("giving up"))));
                assert_eq!(acts(fx), [Effect::Exit(2)]);
                return;
            }
            let State::Backoff { until, .. } = m.state() else { panic!("no backoff: {:?}", m.state()) };
            now = until;
            m.step(Event::Tick, now);
            m.step(Event::Spawned(Child { pid: PID, started: now }), now);
        }
    }

    #[test]
    fn orphans_are_only_noted() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        let fx = m.step(Event::Reaped { pid: 7, exited: exit(0), group_alive: false }, t0);
        assert!(acts(fx).is_empty());
        assert_eq!(m.state(), State::Running(Child { pid: PID, started: t0 }));
    }

    #[test]
    fn done_ignores_everything() {
        let (mut m, t0) = running(RestartMode::Never);
        m.step(reaped(0, false), t0);
        for event in [
            Event::Tick,
            Event::GroupGone,
            Event::TokenChanged { companion: None },
            Event::StopRequested(libc::SIGTERM),
            Event::Forward(libc::SIGHUP),
            reaped(1, false),
        ] {
            assert!(acts(m.step(event, t0)).is_empty(), "{event:?}");
            assert_eq!(m.state(), State::Done(0));
        }
        assert_eq!(m.deadline(t0), None);
    }

    #[test]
    fn leftovers_that_ignore_sigterm_are_killed_at_the_deadline() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        m.step(reaped(1, true), t0);
        assert!(acts(m.step(Event::Tick, t0 + GRACE / 2)).is_empty());
        assert_eq!(acts(m.step(Event::Tick, t0 + GRACE)), [signal(libc::SIGKILL)]);
        assert!(acts(m.step(Event::GroupGone, t0 + GRACE)).is_empty());
        assert!(matches!(m.state(), State::Backoff { .. }), "{:?}", m.state());
    }

    #[test]
    fn a_group_that_outlives_sigkill_is_left_behind_and_the_stop_goes_on() {
        // docker stop: SIGTERM, the grace, SIGKILL; a process in uninterruptible sleep cannot die.
        let (mut m, t0) = running(RestartMode::OnFailure);
        m.step(Event::StopRequested(libc::SIGTERM), t0);
        assert_eq!(acts(m.step(Event::Tick, t0 + GRACE)), [signal(libc::SIGKILL)]);
        assert_eq!(m.deadline(t0 + GRACE), Some(t0 + GRACE + GROUP_RECHECK));
        assert!(acts(m.step(Event::Tick, t0 + GRACE + ABANDON_AFTER / 2)).is_empty());
        let at = t0 + GRACE + ABANDON_AFTER;
        assert_eq!(m.deadline(at - GROUP_RECHECK / 2), Some(at), "woken at the give-up time");
        // The main child was never reaped: it counts as SIGKILLed.
        assert_eq!(acts(m.step(Event::Tick, at)), [Effect::Abandon { pgid: PID }, Effect::Exit(137)]);

        // Leftovers of a crashed child, restarted without them; the child's own status is kept.
        let (mut m, t0) = running(RestartMode::Always);
        m.step(reaped(3, true), t0);
        m.step(Event::Tick, t0 + GRACE);
        let fx = acts(m.step(Event::Tick, t0 + GRACE + ABANDON_AFTER));
        assert_eq!(fx.first(), Some(&Effect::Abandon { pgid: PID }));
        assert!(matches!(m.state(), State::Backoff { last: ExitStatus::Code(3), .. }), "{:?}", m.state());

        // A second stop request kills at once, and the give-up time counts from then.
        let (mut m, t0) = running(RestartMode::Never);
        m.step(Event::StopRequested(libc::SIGTERM), t0);
        assert_eq!(acts(m.step(Event::StopRequested(libc::SIGTERM), t0)), [signal(libc::SIGKILL)]);
        assert_eq!(acts(m.step(Event::Tick, t0 + ABANDON_AFTER)), [Effect::Abandon { pgid: PID }, Effect::Exit(137)]);
    }

    #[test]
    fn a_stop_while_leftovers_are_stopped_exits_with_the_childs_status() {
        let (mut m, t0) = running(RestartMode::Always);
        m.step(reaped(4, true), t0);
        // Not a "second" request: nothing was asked before, so no SIGKILL yet.
        assert!(acts(m.step(Event::StopRequested(libc::SIGTERM), t0)).is_empty());
        assert_eq!(acts(m.step(Event::GroupGone, t0)), [Effect::Exit(4)]);
    }

    #[test]
    fn time_passing_while_running_changes_nothing() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        assert!(m.step(Event::Tick, t0 + Duration::from_secs(3600)).is_empty());
        assert_eq!(m.state(), State::Running(Child { pid: PID, started: t0 }));
    }

    fn reload_started(m: &mut Machine, t0: Instant) {
        let fx = m.step(Event::TokenChanged { companion: Some(150) }, t0);
        assert_eq!(acts(fx), [Effect::StartReload { companion: 150 }]);
        m.step(Event::ProbeStarted(300), t0);
        assert_eq!(m.deadline(t0), Some(t0 + RELOAD_PROOF));
    }

    #[test]
    fn a_token_change_with_a_ready_companion_is_reloaded_and_proven_without_a_restart() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        reload_started(&mut m, t0);
        let proof = Event::Reaped { pid: 300, exited: exit(0), group_alive: false };
        assert!(acts(m.step(proof, t0)).is_empty(), "no signal, no spawn");
        assert_eq!(m.state(), State::Running(Child { pid: PID, started: t0 }));
    }

    #[test]
    fn an_unproven_reload_falls_back_to_a_restart() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        reload_started(&mut m, t0);
        let no_proof = Event::Reaped { pid: 300, exited: exit(1), group_alive: false };
        assert_eq!(acts(m.step(no_proof, t0)), [signal(libc::SIGINT)]);
        assert_eq!(acts(m.step(reaped(0, false), t0)), [Effect::Spawn]);
    }

    #[test]
    fn a_reload_with_no_proof_by_the_deadline_restarts() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        reload_started(&mut m, t0);
        assert!(acts(m.step(Event::Tick, t0 + RELOAD_PROOF / 2)).is_empty());
        assert_eq!(acts(m.step(Event::Tick, t0 + RELOAD_PROOF)), [signal(libc::SIGINT)]);
        // The probe ending late is only an orphan now.
        let late = Event::Reaped { pid: 300, exited: exit(0), group_alive: false };
        assert!(acts(m.step(late, t0 + RELOAD_PROOF)).is_empty());
    }

    #[test]
    fn a_reload_that_cannot_be_asked_for_restarts_at_once() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        m.step(Event::TokenChanged { companion: Some(150) }, t0);
        assert_eq!(acts(m.step(Event::ReloadFailed, t0)), [signal(libc::SIGINT)]);
    }

    #[test]
    fn during_a_reload_signals_are_forwarded_a_stop_stops_and_a_new_token_restarts() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        reload_started(&mut m, t0);
        assert_eq!(acts(m.step(Event::Forward(libc::SIGHUP), t0)), [signal(libc::SIGHUP)]);
        assert_eq!(acts(m.step(Event::TokenChanged { companion: Some(150) }, t0)), [signal(libc::SIGINT)]);
        let (mut m, t0) = running(RestartMode::OnFailure);
        reload_started(&mut m, t0);
        assert_eq!(acts(m.step(Event::StopRequested(libc::SIGTERM), t0)), [signal(libc::SIGINT)]);
        assert_eq!(acts(m.step(reaped(0, false), t0)), [Effect::Exit(0)]);
    }

    #[test]
    fn comfyui_dying_during_a_reload_is_a_crash_like_any_other() {
        let (mut m, t0) = running(RestartMode::OnFailure);
        reload_started(&mut m, t0);
        m.step(reaped(1, false), t0);
        assert!(matches!(m.state(), State::Backoff { .. }), "{:?}", m.state());
    }

    fn hooks(stop_on_failure: bool) -> (Machine, Instant) {
        let t0 = Instant::now();
        let s = Settings { stop_on_hook_failure: stop_on_failure, ..settings(RestartMode::OnFailure) };
        let names = vec!["10-deps".to_string(), "20-models".to_string()];
        let mut m = Machine::new(s, names);
        assert_eq!(acts(m.step(Event::CredentialsReady, t0)), [Effect::SpawnHook { index: 0 }]);
        m.step(Event::HookStarted(Child { pid: 500, started: t0 }), t0);
        (m, t0)
    }

    fn hook_exit(pid: i32, code: i32) -> Event {
        Event::Reaped { pid, exited: exit(code), group_alive: false }
    }

    #[test]
    fn pre_start_hooks_run_one_after_the_other_then_comfyui() {
        let (mut m, t0) = hooks(true);
        assert_eq!(acts(m.step(hook_exit(500, 0), t0)), [Effect::SpawnHook { index: 1 }]);
        m.step(Event::HookStarted(Child { pid: 501, started: t0 }), t0);
        assert_eq!(m.state(), State::PreStart { hook: Child { pid: 501, started: t0 }, index: 1 });
        assert_eq!(acts(m.step(hook_exit(501, 0), t0)), [Effect::Spawn]);
        m.step(Event::Spawned(Child { pid: PID, started: t0 }), t0);
        assert_eq!(m.state(), State::Running(Child { pid: PID, started: t0 }));
    }

    #[test]
    fn a_failed_hook_stops_the_start_with_its_name_and_status_unless_told_to_go_on() {
        let (mut m, t0) = hooks(true);
        let fx = m.step(hook_exit(500, 3), t0);
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::Log(log::Level::Error, m) if m.contains("10-deps failed (exit code 3)"))));
        assert_eq!(acts(fx), [Effect::Exit(3)]);
        let (mut m, t0) = hooks(false);
        assert_eq!(acts(m.step(hook_exit(500, 3), t0)), [Effect::SpawnHook { index: 1 }]);
        m.step(Event::HookFailed(127), t0);
        assert_eq!(m.state(), State::Spawning, "a hook that cannot start is a failure too");
    }

    #[test]
    fn a_stop_during_a_hook_stops_its_group_within_the_grace() {
        let (mut m, t0) = hooks(true);
        assert_eq!(
            acts(m.step(Event::StopRequested(libc::SIGTERM), t0)),
            [Effect::SignalGroup { pgid: 500, signo: libc::SIGINT }]
        );
        assert_eq!(acts(m.step(Event::Tick, t0 + GRACE)), [Effect::SignalGroup { pgid: 500, signo: libc::SIGKILL }]);
        assert_eq!(
            acts(m.step(
                Event::Reaped {
                    pid: 500,
                    exited: Exited { status: ExitStatus::Signal(9), reboot: false, fatal: false },
                    group_alive: false
                },
                t0 + GRACE
            )),
            [Effect::Exit(137)]
        );
    }

    #[test]
    fn during_a_hook_signals_go_to_it_and_a_token_change_waits_for_comfyui() {
        let (mut m, t0) = hooks(true);
        assert_eq!(
            acts(m.step(Event::Forward(libc::SIGHUP), t0)),
            [Effect::SignalGroup { pgid: 500, signo: libc::SIGHUP }]
        );
        assert!(acts(m.step(Event::TokenChanged { companion: None }, t0)).is_empty());
        assert_eq!(m.deadline(t0), None);
        // What a hook leaves in the background gets SIGTERM when it is done.
        let leftovers = Event::Reaped { pid: 500, exited: exit(0), group_alive: true };
        assert_eq!(
            acts(m.step(leftovers, t0)),
            [Effect::SignalGroup { pgid: 500, signo: libc::SIGTERM }, Effect::SpawnHook { index: 1 }]
        );
    }

    #[test]
    fn the_machine_awaits_its_child_through_a_stop_and_no_orphan() {
        let (mut m, t0) = running(RestartMode::Never);
        assert!(m.awaits(PID) && !m.awaits(PID + 1));
        m.step(Event::StopRequested(libc::SIGTERM), t0);
        assert!(m.awaits(PID) && !m.awaits(PID + 1), "stopping: {:?}", m.state());
        m.step(reaped(0, false), t0);
        assert_eq!(m.state(), State::Done(0));
        assert!(!m.awaits(PID), "done: nothing is awaited");
    }

    #[test]
    fn running_needs_no_wake_up() {
        let (m, t0) = running(RestartMode::OnFailure);
        assert_eq!(m.deadline(t0), None);
        assert_eq!(m.awaited_group(), None);
    }

    #[test]
    fn the_stop_signal_is_the_configured_one_and_sigterm_leftovers_are_not_signalled_twice() {
        let t0 = Instant::now();
        let s = Settings {
            stop_signal: libc::SIGTERM,
            stop_timeout: GRACE,
            restart: RestartMode::Never,
            stop_on_hook_failure: true,
            drain_timeout: Duration::ZERO,
            watchdog: None,
            watchdog_failures: 3,
        };
        let mut m = started(s, t0);
        assert_eq!(acts(m.step(Event::StopRequested(libc::SIGINT), t0)), [signal(libc::SIGTERM)]);
        assert!(acts(m.step(reaped(0, true), t0)).is_empty());
    }

    // The credential service's events, in every state they can meet.

    fn waiting_for_credentials() -> (Machine, Instant) {
        (Machine::new(settings(RestartMode::OnFailure), Vec::new()), Instant::now())
    }

    #[test]
    fn nothing_starts_before_the_credentials_are_ready_and_nothing_wakes_up_meanwhile() {
        let (mut m, t0) = waiting_for_credentials();
        assert_eq!(m.state(), State::Credentials);
        assert_eq!(m.deadline(t0), None);
        assert!(!m.awaits(PID));
        assert!(acts(m.step(Event::Tick, t0)).is_empty());
        assert!(acts(m.step(Event::TokenChanged { companion: None }, t0)).is_empty(), "no child to restart");
        assert!(acts(m.step(Event::Forward(libc::SIGHUP), t0)).is_empty(), "no group to forward to");
        assert_eq!(m.state(), State::Credentials);
        assert_eq!(acts(m.step(Event::CredentialsReady, t0)), [Effect::Spawn]);
        assert_eq!(m.state(), State::Spawning);
    }

    #[test]
    fn a_stop_while_the_credentials_are_checked_exits_at_once_with_128_plus_n() {
        let (mut m, t0) = waiting_for_credentials();
        let fx = m.step(Event::StopRequested(libc::SIGTERM), t0);
        assert!(fx.iter().any(|e| matches!(e, Effect::Log(_, m) if m.contains("ComfyUI not started"))), "{fx:?}");
        assert_eq!(acts(fx), [Effect::Exit(143)]);
        assert!(acts(m.step(Event::CredentialsReady, t0)).is_empty(), "too late: nothing starts");
    }

    #[test]
    fn credentials_refused_end_the_start_with_the_services_status() {
        let (mut m, t0) = waiting_for_credentials();
        let fx = m.step(Event::CredentialsFailed(ExitStatus::Code(78)), t0);
        assert!(fx.iter().any(|e| matches!(e, Effect::Log(log::Level::Error, m) if m.contains("ComfyUI not started"))));
        assert_eq!(acts(fx), [Effect::Exit(78)]);
        let (mut m, t0) = waiting_for_credentials();
        assert_eq!(acts(m.step(Event::CredentialsFailed(ExitStatus::Signal(9)), t0)), [Effect::Exit(137)]);
    }

    #[test]
    fn the_services_events_after_the_start_change_nothing() {
        // Once ComfyUI runs, a new token is a TokenChanged, and a dead service is restarted by its
        // own backoff (service.rs): ComfyUI keeps its token.
        let (mut m, t0) = running(RestartMode::OnFailure);
        assert!(acts(m.step(Event::CredentialsReady, t0)).is_empty());
        assert!(acts(m.step(Event::CredentialsFailed(ExitStatus::Code(1)), t0)).is_empty());
        assert_eq!(m.state(), State::Running(Child { pid: PID, started: t0 }));
        let (mut m, t0) = hooks(true);
        assert!(acts(m.step(Event::CredentialsReady, t0)).is_empty());
        assert!(acts(m.step(Event::CredentialsFailed(ExitStatus::Code(1)), t0)).is_empty());
        assert!(matches!(m.state(), State::PreStart { index: 0, .. }));
    }

    #[test]
    fn a_first_start_that_fails_exits_with_the_shells_status_a_later_one_backs_off() {
        let (mut m, t0) = waiting_for_credentials();
        m.step(Event::CredentialsReady, t0);
        assert_eq!(acts(m.step(Event::SpawnFailed(127), t0)), [Effect::Exit(127)]);
        let (mut m, t0) = running(RestartMode::OnFailure);
        m.step(Event::TokenChanged { companion: None }, t0);
        m.step(reaped(0, false), t0);
        assert_eq!(m.state(), State::Spawning);
        assert!(acts(m.step(Event::SpawnFailed(127), t0)).is_empty());
        assert!(matches!(m.state(), State::Backoff { .. }), "{:?}", m.state());
    }

    #[test]
    fn hooks_run_after_the_credentials_and_a_hook_that_cannot_start_follows_the_hook_policy() {
        let s = Settings { stop_on_hook_failure: true, ..settings(RestartMode::OnFailure) };
        let mut m = Machine::new(s, vec!["10-deps".into()]);
        let t0 = Instant::now();
        assert_eq!(acts(m.step(Event::CredentialsReady, t0)), [Effect::SpawnHook { index: 0 }]);
        assert_eq!(acts(m.step(Event::HookFailed(126), t0)), [Effect::Exit(126)]);
    }

    // Drain (issue 24): a stop, or a fallback restart, waits for the running prompt.

    const DRAIN: Duration = Duration::from_secs(60);
    const PROBE: i32 = 400;

    fn draining(then_stop: bool) -> (Machine, Instant) {
        let t0 = Instant::now();
        let mut m = started(Settings { drain_timeout: DRAIN, ..settings(RestartMode::OnFailure) }, t0);
        let ask = match then_stop {
            true => Event::StopRequested(libc::SIGTERM),
            false => Event::TokenChanged { companion: Some(150) },
        };
        if !then_stop {
            m.step(ask, t0);
            m.step(Event::ProbeStarted(300), t0);
            assert_eq!(acts(m.step(Event::Tick, t0 + RELOAD_PROOF)), [Effect::StartDrain], "a fallback restart drains");
        } else {
            assert_eq!(acts(m.step(ask, t0)), [Effect::StartDrain]);
        }
        assert!(acts(m.step(Event::DrainStarted(PROBE), t0)).is_empty());
        assert!(m.awaits(PROBE) && m.awaits(PID));
        (m, t0)
    }

    fn probe_exit(code: i32) -> Event {
        Event::Reaped { pid: PROBE, exited: exit(code), group_alive: false }
    }

    #[test]
    fn a_stop_with_a_drain_timeout_waits_for_the_running_prompt_then_stops() {
        let (mut m, t0) = draining(true);
        assert!(matches!(m.state(), State::Draining { then: AfterStop::Exit, .. }));
        assert_eq!(m.deadline(t0), Some(t0 + DRAIN));
        assert_eq!(acts(m.step(Event::Forward(libc::SIGHUP), t0)), [signal(libc::SIGHUP)], "still forwarded");
        assert!(acts(m.step(Event::TokenChanged { companion: None }, t0)).is_empty(), "no restart while stopping");
        assert_eq!(acts(m.step(probe_exit(0), t0)), [signal(libc::SIGINT)], "prompt done: the usual stop");
        assert_eq!(acts(m.step(reaped(0, false), t0)), [Effect::Exit(0)]);
    }

    #[test]
    fn a_drain_ends_at_its_timeout_on_a_second_stop_or_when_the_queue_cannot_be_read() {
        let (mut m, t0) = draining(true);
        assert!(acts(m.step(Event::Tick, t0 + DRAIN / 2)).is_empty());
        let fx = m.step(Event::Tick, t0 + DRAIN);
        assert!(fx.iter().any(|e| matches!(e, Effect::Log(_, m) if m.contains("did not empty within"))), "{fx:?}");
        let probe_killed = Effect::SignalGroup { pgid: PROBE, signo: libc::SIGKILL };
        assert_eq!(acts(fx), [probe_killed.clone(), signal(libc::SIGINT)]);

        let (mut m, t0) = draining(true);
        let fx = m.step(Event::StopRequested(libc::SIGINT), t0);
        assert!(fx.iter().any(|e| matches!(e, Effect::Log(_, m) if m.contains("second stop request"))));
        assert_eq!(acts(fx), [probe_killed, signal(libc::SIGINT)]);
        assert!(matches!(m.state(), State::Stopping { then: AfterStop::Exit, .. }));

        let (mut m, t0) = draining(true);
        assert_eq!(acts(m.step(probe_exit(1), t0)), [signal(libc::SIGINT)]);
    }

    #[test]
    fn without_a_companion_the_stop_goes_on_at_once() {
        let t0 = Instant::now();
        let mut m = started(Settings { drain_timeout: DRAIN, ..settings(RestartMode::OnFailure) }, t0);
        assert_eq!(acts(m.step(Event::StopRequested(libc::SIGTERM), t0)), [Effect::StartDrain]);
        assert_eq!(acts(m.step(Event::DrainFailed, t0)), [signal(libc::SIGINT)]);
    }

    #[test]
    fn comfyui_ending_during_a_drain_ends_it() {
        let (mut m, t0) = draining(true);
        assert_eq!(acts(m.step(reaped(0, false), t0)), [Effect::Exit(0)]);
        let (mut m, t0) = draining(true);
        assert_eq!(acts(m.step(reaped(0, true), t0)), [signal(libc::SIGINT)], "its group is stopped");
        assert_eq!(acts(m.step(Event::GroupGone, t0)), [Effect::Exit(0)]);
    }

    #[test]
    fn a_fallback_restart_drains_and_a_stop_meanwhile_turns_it_into_the_stop() {
        let (mut m, t0) = draining(false);
        assert!(matches!(m.state(), State::Draining { then: AfterStop::Restart, .. }));
        assert!(acts(m.step(Event::StopRequested(libc::SIGTERM), t0)).is_empty(), "the drain under way serves");
        assert!(matches!(m.state(), State::Draining { then: AfterStop::Exit, .. }));
        assert_eq!(acts(m.step(probe_exit(0), t0)), [signal(libc::SIGINT)]);
        assert_eq!(acts(m.step(reaped(0, false), t0)), [Effect::Exit(0)]);

        let (mut m, t0) = draining(false);
        assert_eq!(acts(m.step(probe_exit(0), t0)), [signal(libc::SIGINT)]);
        assert_eq!(acts(m.step(reaped(0, false), t0)), [Effect::Spawn], "restarted, not exited");
    }

    // Fatal starts (issue 24): no restart loop.

    #[test]
    fn the_phase_is_running_only_while_comfyui_runs_untouched() {
        let (mut m, t0) = waiting_for_credentials();
        assert_eq!(m.phase(), "starting");
        m.step(Event::CredentialsReady, t0);
        assert_eq!(m.phase(), "starting");
        m.step(Event::Spawned(Child { pid: PID, started: t0 }), t0);
        assert_eq!(m.phase(), "running");
        m.step(Event::TokenChanged { companion: Some(150) }, t0);
        assert_eq!(m.phase(), "reloading");
        m.step(Event::ReloadFailed, t0);
        assert_eq!(m.phase(), "restarting");
        m.step(reaped(0, false), t0);
        assert_eq!(m.phase(), "restarting", "spawning again");
        m.step(Event::Spawned(Child { pid: PID, started: t0 }), t0);
        m.step(Event::StopRequested(libc::SIGTERM), t0);
        assert_eq!(m.phase(), "stopping");
        let (m, _) = draining(true);
        assert_eq!(m.phase(), "draining");
    }

    #[test]
    fn a_child_that_can_never_start_is_not_restarted_whatever_the_policy() {
        for mode in [RestartMode::OnFailure, RestartMode::Always] {
            let (mut m, t0) = running(mode);
            let fatal = Exited { status: ExitStatus::Code(1), reboot: false, fatal: true };
            let fx = m.step(Event::Reaped { pid: PID, exited: fatal, group_alive: false }, t0);
            assert_eq!(acts(fx), [Effect::Exit(1)], "{mode:?}");
        }
    }

    // The watchdog (issue 24): a ComfyUI that stops answering is restarted.

    const EVERY: Duration = Duration::from_secs(60);
    const ALIVE_PROBE: i32 = 700;

    fn watched(restart: RestartMode) -> (Machine, Instant) {
        let t0 = Instant::now();
        let m = started(Settings { watchdog: Some(EVERY), ..settings(restart) }, t0);
        (m, t0)
    }

    /// One round: the deadline passes, the probe starts and ends with `code`.
    fn check(m: &mut Machine, at: Instant, code: i32) -> Vec<Effect> {
        assert_eq!(m.deadline(at), Some(at), "the next check is due at {at:?}");
        assert_eq!(acts(m.step(Event::Tick, at)), [Effect::StartWatchdog { armed: m.watch.armed }]);
        assert!(m.step(Event::WatchdogStarted(ALIVE_PROBE), at).is_empty());
        assert!(m.awaits(ALIVE_PROBE));
        m.step(Event::Reaped { pid: ALIVE_PROBE, exited: exit(code), group_alive: false }, at)
    }

    #[test]
    fn the_watchdog_restarts_comfyui_after_n_failures_in_a_row_once_it_passed_one() {
        let (mut m, t0) = watched(RestartMode::OnFailure);
        assert_eq!(m.deadline(t0), Some(t0 + EVERY));
        // Still starting: failures do not count until a first success.
        assert!(acts(check(&mut m, t0 + EVERY, 1)).is_empty());
        assert!(acts(check(&mut m, t0 + EVERY * 2, 1)).is_empty());
        assert!(acts(check(&mut m, t0 + EVERY * 3, 1)).is_empty());
        assert!(acts(check(&mut m, t0 + EVERY * 4, 0)).is_empty(), "armed");
        let fx = check(&mut m, t0 + EVERY * 5, 1);
        assert!(fx.iter().any(|e| matches!(e, Effect::Log(log::Level::Warn, m) if m.contains("1 of 3"))), "{fx:?}");
        assert!(acts(check(&mut m, t0 + EVERY * 6, 0)).is_empty(), "a success starts the count over");
        assert!(acts(check(&mut m, t0 + EVERY * 7, 1)).is_empty());
        assert!(acts(check(&mut m, t0 + EVERY * 8, 1)).is_empty());
        let at = t0 + EVERY * 9;
        let fx = check(&mut m, at, 1);
        assert!(fx.iter().any(|e| matches!(e, Effect::Log(log::Level::Error, m) if m.contains("restarting it"))));
        assert_eq!(acts(fx), [signal(libc::SIGINT)]);
        assert_eq!(m.phase(), "restarting");
        // Stopped cleanly (exit 0), it is still a failure for the policy: restarted after a delay.
        assert!(acts(m.step(reaped(0, false), at)).is_empty());
        assert!(matches!(m.state(), State::Backoff { last: ExitStatus::Code(1), .. }), "{:?}", m.state());
    }

    #[test]
    fn under_restart_never_a_hung_comfyui_ends_comfy_init_with_a_failure() {
        let (mut m, t0) = watched(RestartMode::Never);
        check(&mut m, t0 + EVERY, 0);
        for i in 2..=4 {
            check(&mut m, t0 + EVERY * i, 1);
        }
        assert_eq!(acts(m.step(reaped(0, false), t0 + EVERY * 4)), [Effect::Exit(1)]);
    }

    #[test]
    fn no_watchdog_no_wake_up_and_a_late_probe_of_an_old_child_is_ignored() {
        let (m, t0) = running(RestartMode::OnFailure);
        assert_eq!(m.deadline(t0), None);
        let (mut m, t0) = watched(RestartMode::OnFailure);
        m.step(Event::Tick, t0 + EVERY);
        m.step(Event::WatchdogStarted(ALIVE_PROBE), t0 + EVERY);
        // The probe is still running when a token change restarts ComfyUI.
        m.step(Event::TokenChanged { companion: None }, t0 + EVERY);
        let fx = m.step(Event::Tick, t0 + EVERY * 2);
        assert!(!fx.iter().any(|e| matches!(e, Effect::StartWatchdog { .. })), "no check while stopping");
        m.step(reaped(0, false), t0 + EVERY);
        m.step(Event::Spawned(Child { pid: PID, started: t0 + EVERY }), t0 + EVERY);
        let late = Event::Reaped { pid: ALIVE_PROBE, exited: exit(1), group_alive: false };
        assert!(acts(m.step(late, t0 + EVERY)).is_empty());
        assert_eq!(m.deadline(t0 + EVERY), Some(t0 + EVERY * 2), "the new child is watched afresh");
    }
}
