//! The supervisor's shell: one single-threaded loop that sleeps in `sigtimedwait` until a
//! signal, a message of the credential service (SIGIO from its pipe) or the machine's next
//! deadline, turns what it saw into events for the pure state machine (`state.rs`) and carries
//! out the effects it returns: signalling the child's group, starting the child, exiting. Every
//! SIGCHLD reaps every zombie. No file is read, no lock taken, no bcrypt run here: the credential
//! service (`service.rs`, running `guard.rs`) does that in a process of its own.

pub mod child;
pub mod guard;
pub mod hooks;
pub mod idle;
pub mod phase;
pub mod policy;
pub mod reaper;
pub mod self_key;
pub mod service;
pub mod session;
pub mod signals;
pub mod state;
pub mod vfork;

use std::time::Instant;

use crate::companion;
use child::ChildSpec;
use service::{CredentialService, Message};
use session::Session;
use signals::{signal_name, Received, Signals};
use state::{Effect, Event, Exited, Machine, State};

pub use state::Settings;

/// The tokens the reload probe compares (in its environment, never on a command line).
pub const PROBE_OLD: &str = "COMFY_INIT_PROBE_OLD_TOKEN";
pub const PROBE_NEW: &str = "COMFY_INIT_PROBE_NEW_TOKEN";

/// What the supervisor starts with, prepared by `main` (nothing of it started yet).
pub struct Start {
    pub settings: Settings,
    /// ComfyUI (or the given command); with COMFY_INIT_INSTANCES, one per card.
    pub instances: Vec<InstanceSpec>,
    /// Where the phase is published (`healthcheck --ready`).
    pub run_dir: std::path::PathBuf,
    /// Credentials are managed: the credential service makes them valid before anything starts,
    /// and keeps them in step from then on.
    pub auth: bool,
    /// The companion node is installed: it can drain, and says why a start failed for good.
    pub companion: bool,
    /// A new token may be reloaded in place (by the companion).
    pub reload: bool,
    /// The pre-start hooks of this start, in order.
    pub hooks: Vec<std::path::PathBuf>,
}

/// One ComfyUI: how it is started, where it listens, and (one of several) its card.
#[derive(Debug)]
pub struct InstanceSpec {
    pub spec: ChildSpec,
    pub port: u16,
    /// `GPU 1 (NVIDIA GeForce RTX 4090, GPU-...)` when there are several: their log lines say it.
    pub label: Option<String>,
}

/// One supervised ComfyUI: its own process group, restart policy, companion and session.
struct Instance {
    spec: ChildSpec,
    port: u16,
    /// `instance 1 (GPU 1 ...): `, the start of its log lines; empty when it is the only one.
    prefix: String,
    session: Session,
    machine: Machine,
}

pub struct Supervisor {
    signals: Signals,
    /// The token ComfyUI runs with (None: not known yet, or COMFY_INIT_AUTH=off), and the
    /// service that makes and keeps the credentials valid (None with COMFY_INIT_AUTH=off).
    token: Option<String>,
    service: Option<CredentialService>,
    instances: Vec<Instance>,
    /// The instances after the first wait for its pre-start hooks (run once, by the first).
    others_waiting: bool,
    /// The companion node runs in ComfyUI: it announces itself ready, can drain, and says why a
    /// start failed for good.
    companion: bool,
    /// A new token may be reloaded in place by the companion (else: restart).
    reload: bool,
    /// The last token change: (old, new), for the probe that proves a reload.
    change: Option<(String, String)>,
    /// The pre-start hooks of this start.
    hooks: Vec<std::path::PathBuf>,
    /// The service's pipe may hold unread messages (SIGIO came, or we just started).
    files_ready: bool,
    /// The phase `healthcheck --ready` reads, one slot an instance, published at every change.
    phase: phase::Publisher,
    /// comfy-init's exit code: that of the first instance that ended with a non-zero one.
    exit_code: Option<i32>,
}

impl Supervisor {
    /// Becomes a child subreaper when we are not PID 1 (`docker run --init`), so orphans still
    /// come to us, and starts the credential service (`auth`), which makes login/PASSWORD valid
    /// first; the pre-start hooks and the children follow through the machines, like every later
    /// start. Err: the service could not be started (nothing else was).
    pub fn start(start: Start, signals: Signals) -> Result<Supervisor, child::SpawnError> {
        let Start { settings, instances, run_dir, auth, companion, reload, hooks } = start;
        if std::process::id() != 1 {
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                log::warn!(
                    "cannot become a child subreaper ({e}): orphans of the child will not be reaped by comfy-init"
                );
            }
        }
        let service = match auth {
            true => Some(CredentialService::start_first(Instant::now())?),
            false => None,
        };
        let count = instances.len();
        let instances: Vec<Instance> = instances
            .into_iter()
            .enumerate()
            .map(|(i, InstanceSpec { mut spec, port, label })| {
                let session = Session::new();
                spec.env_set.push((session::ENV.into(), session.path().into()));
                if companion {
                    spec.env_set.push((companion::ENV_SESSION.into(), session.path().into()));
                }
                // The hooks run once, before the first instance.
                let names = if i == 0 { hooks.iter().map(|h| hooks::name(h)).collect() } else { Vec::new() };
                let prefix = label.map(|l| format!("instance {i} ({l}): ")).unwrap_or_default();
                Instance { spec, port, prefix, session, machine: Machine::new(settings, names) }
            })
            .collect();
        let mut supervisor = Supervisor {
            signals,
            token: None,
            service,
            instances,
            others_waiting: count > 1,
            companion,
            reload,
            change: None,
            hooks,
            // Whatever the service said before its pipe was set to signal us is read at once.
            files_ready: true,
            phase: phase::Publisher::new(&run_dir, count),
            exit_code: None,
        };
        for i in 0..count {
            supervisor.phase.publish(i, supervisor.instances[i].machine.phase());
        }
        if !auth {
            supervisor.feed(0, Event::CredentialsReady);
        }
        Ok(supervisor)
    }

    /// The loop. Returns the exit code for comfy-init.
    pub fn run(mut self) -> i32 {
        idle::release_startup_text();
        loop {
            if self.instances.iter().all(|i| matches!(i.machine.state(), State::Done(_))) {
                for i in 0..self.instances.len() {
                    self.forget_companion(i);
                }
                if let Some(service) = &self.service {
                    service.stop();
                }
                let code = self.exit_code.unwrap_or(0);
                // The kernel closes our descriptors at exit; closing them ourselves costs a syscall.
                std::mem::forget(self);
                return code;
            }
            let received = self.wait_for_event();
            // Every exit (ours and the orphans', whose exit signal the kernel makes SIGCHLD when
            // it hands them to us) leaves a SIGCHLD pending, so another signal has nothing to
            // reap; a deadline's wake-up reaps anyway, as a safety net.
            let mut reap = received.is_none();
            match received {
                Some(Received { file_ready: true, .. }) => self.files_ready = true,
                Some(Received { signo: libc::SIGCHLD, .. }) => reap = true,
                Some(Received { signo, .. }) => self.on_signal(signo),
                None => {}
            }
            if reap {
                let (reaped, none_left) = reaper::reap_all();
                for (pid, status) in reaped {
                    self.on_reaped(pid, status, none_left);
                }
            }
            self.on_service(Instant::now());
            for i in 0..self.instances.len() {
                if let Some(pgid) = self.instances[i].machine.awaited_group() {
                    if !child::group_alive(pgid) {
                        self.feed(i, Event::GroupGone);
                    }
                }
                self.feed(i, Event::Tick);
            }
        }
    }

    /// Sleeps until a signal (a file event is one too) or the next deadline; no deadline, no
    /// wake-up. None: it woke for the deadline.
    fn wait_for_event(&self) -> Option<Received> {
        let now = Instant::now();
        let files = self.service.as_ref().and_then(CredentialService::deadline);
        let machines = self.instances.iter().filter_map(|i| i.machine.deadline(now));
        let timeout = machines.chain(files).min().map(|at| {
            // A millisecond late rather than a hair early: waking before the deadline would spin.
            at.saturating_duration_since(now) + std::time::Duration::from_millis(1)
        });
        self.signals.wait(timeout)
    }

    /// A stop or a forwarded signal reaches every instance at once: one grace for all.
    fn on_signal(&mut self, signo: i32) {
        if signals::is_stop_request(signo) {
            self.others_waiting = false; // they are told themselves, now
        }
        for i in 0..self.instances.len() {
            if signals::is_stop_request(signo) {
                self.feed(i, Event::StopRequested(signo));
            } else if signals::is_forwardable(signo) {
                self.feed(i, Event::Forward(signo));
            }
        }
        // SIGCHLD: the reaper runs after every wake-up anyway.
    }

    /// What the machine needs to know of a reaped process it awaits (an orphan is only logged):
    /// for the main child (ComfyUI, or the pre-start hook that runs), whether its group lives on;
    /// for ComfyUI, whether it asked ComfyUI-Manager's restart.
    /// `none_left`: the reaper found no child at all, so the group is gone too (its members are
    /// our descendants, and every descendant of ours is our child or a child's descendant).
    fn on_reaped(&mut self, pid: i32, status: reaper::ExitStatus, none_left: bool) {
        if self.service.as_ref().is_some_and(|s| s.is(pid)) {
            return self.on_service_exit(status);
        }
        let Some(i) = self.instances.iter().position(|i| i.machine.awaits(pid)) else {
            log::debug!("reaped orphan pid {pid}: {status}");
            return;
        };
        let instance = &self.instances[i];
        let (main, comfyui) = match instance.machine.state() {
            State::Running(c)
            | State::Stopping { child: c, .. }
            | State::Reloading { child: c, .. }
            | State::Draining { child: c, .. } => (c.pid == pid, c.pid == pid),
            State::PreStart { hook, .. } => (hook.pid == pid, false),
            _ => (false, false),
        };
        // The Manager writes its marker, then exits 0: any other end is no restart request.
        let reboot = comfyui && status.success() && instance.session.take_reboot_request();
        // The companion's word on why ComfyUI died, when it can never start as it is.
        let fatal = comfyui
            && !status.success()
            && instance.session.take_fatal().inspect(|cause| log::error!("{}{cause}", instance.prefix)).is_some();
        let group_alive = main && !none_left && child::group_alive(pid);
        self.feed(i, Event::Reaped { pid, exited: Exited { status, reboot, fatal }, group_alive });
    }

    /// What the credential service said: `token T`, PASSWORD holds T. The first is the start's
    /// go-ahead; a new one later is reloaded by each instance's companion or restarts it. Nothing
    /// is stopped before PASSWORD holds the new token (issue 23: an early stop could not be
    /// rolled back when the write then failed).
    fn on_service(&mut self, now: Instant) {
        let Some(service) = self.service.as_mut() else { return };
        service.on_tick(self.token.as_deref().unwrap_or_default(), now);
        if !std::mem::take(&mut self.files_ready) {
            return;
        }
        for Message::Token(new) in service.messages() {
            match self.token.replace(new.clone()) {
                None => self.feed(0, Event::CredentialsReady),
                Some(old) if old != new => {
                    self.change = Some((old, new));
                    for i in 0..self.instances.len() {
                        let companion = self.ready_companion(i).filter(|_| self.reload);
                        self.feed(i, Event::TokenChanged { companion });
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// The service ended. Before its first token, the start ends with it (it said why); after,
    /// it is started again after a delay and ComfyUI keeps its token meanwhile.
    fn on_service_exit(&mut self, status: reaper::ExitStatus) {
        // What it said before it went comes first (a token written just before an exit).
        self.files_ready = true;
        self.on_service(Instant::now());
        match (&self.token, self.service.as_mut()) {
            (None, _) => {
                for i in 0..self.instances.len() {
                    self.feed(i, Event::CredentialsFailed(status));
                }
            }
            (Some(_), Some(service)) => service.on_exit(&status, Instant::now()),
            (Some(_), None) => {}
        }
    }

    /// Removes the companion's ready file (written only when it runs: no syscall otherwise).
    fn forget_companion(&self, i: usize) {
        if self.companion {
            let _ = std::fs::remove_file(companion::ready_file(self.instances[i].session.path()));
        }
    }

    /// The companion of an instance's running (or draining) child, when it announced itself ready.
    fn ready_companion(&self, i: usize) -> Option<i32> {
        let instance = &self.instances[i];
        match instance.machine.state() {
            State::Running(child) | State::Draining { child, .. } if self.companion => {
                companion::ready(instance.session.path(), child.pid)
            }
            _ => None,
        }
    }

    /// A probe of ours (`comfy-init __probe-*`) for an instance: it asks that instance's port.
    fn probe(&self, i: usize, command: &str) -> Option<ChildSpec> {
        let me = std::env::current_exe().ok()?;
        let instance = &self.instances[i];
        let mut env_set = vec![("COMFYUI_PORT".into(), instance.port.to_string().into())];
        if !instance.prefix.is_empty() {
            env_set.push((crate::logging::ENV_PREFIX.into(), instance.prefix.clone().into()));
        }
        Some(ChildSpec { argv: vec![me.into(), command.into()], env_set, ..ChildSpec::default() })
    }

    /// Asks the companion to refuse new prompts and starts the probe that watches the queue until
    /// the running prompt is done: a short child of ours, so that no HTTP request blocks this loop.
    fn start_drain(&self, i: usize) -> Event {
        let prefix = &self.instances[i].prefix;
        let Some(companion) = self.ready_companion(i) else {
            log::info!("{prefix}no companion ready to refuse new prompts: stopping without a drain");
            return Event::DrainFailed;
        };
        if let Err(e) = send_to_companion(companion, companion::drain_signal()) {
            log::warn!("{prefix}{e}");
            return Event::DrainFailed;
        }
        let Some(mut probe) = self.probe(i, crate::cli::PROBE_DRAIN) else { return Event::DrainFailed };
        if let Some(token) = &self.token {
            probe.env_set.push((crate::queue::ENV_TOKEN.into(), token.into()));
        }
        match child::spawn(&probe) {
            Ok(p) => {
                log::info!("{prefix}asking ComfyUI to drain: new prompts refused, the queue waited for");
                Event::DrainStarted(p.pid)
            }
            Err(e) => {
                log::warn!("{prefix}cannot start the drain probe: {e}");
                Event::DrainFailed
            }
        }
    }

    /// Asks the companion to reload and starts the probe that proves it from outside: a short
    /// child of ours (reaped like any other), so that no HTTP request ever blocks this loop.
    fn start_reload(&self, i: usize, companion: i32) -> Event {
        let prefix = &self.instances[i].prefix;
        let Some((old, new)) = &self.change else { return Event::ReloadFailed };
        if let Err(e) = send_to_companion(companion, companion::reload_signal()) {
            log::warn!("{prefix}{e}");
            return Event::ReloadFailed;
        }
        let Some(mut probe) = self.probe(i, crate::cli::PROBE_RELOAD) else { return Event::ReloadFailed };
        probe.env_set.extend([(PROBE_OLD.into(), old.into()), (PROBE_NEW.into(), new.into())]);
        match child::spawn(&probe) {
            Ok(p) => Event::ProbeStarted(p.pid),
            Err(e) => {
                log::warn!("{prefix}cannot start the reload probe: {e}");
                Event::ReloadFailed
            }
        }
    }

    /// The watchdog's liveness probe: `comfy-init __probe-alive`, a short child of ours (the
    /// healthcheck, silent when healthy, and silent altogether until ComfyUI passed a first
    /// check: a start is no failure), so that no HTTP request blocks this loop.
    fn start_watchdog(&self, i: usize, armed: bool) -> Option<Event> {
        let mut probe = self.probe(i, crate::cli::PROBE_ALIVE)?;
        if !armed {
            probe.env_set.push((crate::health::ENV_PROBE_QUIET.into(), "1".into()));
        }
        match child::spawn(&probe) {
            Ok(p) => Some(Event::WatchdogStarted(p.pid)),
            Err(e) => {
                log::warn!("{}watchdog: cannot start the liveness probe: {e}", self.instances[i].prefix);
                None
            }
        }
    }

    /// One event into an instance's machine, its effects carried out (a spawn's outcome goes
    /// back in), its phase published. The other instances start once the first has run the
    /// pre-start hooks; when it ends before that, they end too.
    fn feed(&mut self, i: usize, event: Event) {
        self.carry_out(i, event);
        let machine = &self.instances[i].machine;
        match machine.state() {
            State::Done(code) => {
                if code != 0 && self.exit_code.is_none() {
                    self.exit_code = Some(code);
                }
                // One of several ended for good while the others run: say so to `--ready`.
                if self.instances.len() > 1 {
                    self.phase.publish(i, "stopped");
                }
            }
            // At the end there is no one to tell: "stopping" was said, and the exit follows.
            _ => self.phase.publish(i, machine.phase()),
        }
        if i == 0 && self.others_waiting {
            let first = &self.instances[0].machine;
            let go = if first.started() {
                Some(Event::CredentialsReady)
            } else if let State::Done(_) = first.state() {
                log::info!("the first instance ended before it started ComfyUI: the others are not started");
                Some(Event::Abandoned)
            } else {
                None
            };
            if let Some(event) = go {
                self.others_waiting = false;
                for other in 1..self.instances.len() {
                    self.feed(other, event);
                }
            }
        }
    }

    fn carry_out(&mut self, i: usize, event: Event) {
        let mut pending = vec![event];
        while let Some(event) = pending.pop() {
            for effect in self.instances[i].machine.step(event, Instant::now()) {
                let prefix = &self.instances[i].prefix;
                match effect {
                    Effect::SignalGroup { pgid, signo } => send(pgid, signo),
                    Effect::Spawn => pending.push(self.spawn(i)),
                    Effect::SpawnHook { index } => {
                        pending.push(match spawn_hook(&self.hooks[index], &self.instances[i].spec) {
                            Ok(hook) => Event::HookStarted(hook),
                            Err(e) => {
                                log::error!("{e}");
                                Event::HookFailed(e.exit_code())
                            }
                        })
                    }
                    Effect::StartReload { companion } => pending.push(self.start_reload(i, companion)),
                    Effect::StartDrain => pending.push(self.start_drain(i)),
                    Effect::StartWatchdog { armed } => {
                        if let Some(event) = self.start_watchdog(i, armed) {
                            pending.push(event);
                        }
                    }
                    Effect::Abandon { pgid } => log::error!(
                        "{prefix}process group {pgid} outlived SIGKILL by {:?}, going on without it: {}",
                        state::ABANDON_AFTER,
                        child::describe_group(pgid)
                    ),
                    Effect::Exit(code) => log::debug!("{prefix}exiting with {code}"),
                    Effect::Log(level, message) => log::log!(level, "{prefix}{message}"),
                }
            }
        }
    }

    fn spawn(&self, i: usize) -> Event {
        // A ready file of the previous child must not vouch for the next one.
        self.forget_companion(i);
        let Instance { spec, prefix, .. } = &self.instances[i];
        match child::spawn(spec) {
            Ok(child) => {
                log::info!("{prefix}started {} (pid {})", spec.argv[0].to_string_lossy(), child.pid);
                Event::Spawned(child)
            }
            Err(e) => {
                log::error!("{prefix}{e}");
                Event::SpawnFailed(e.exit_code())
            }
        }
    }
}

/// Starts a pre-start hook like ComfyUI (its user, folder, environment), its output prefixed.
fn spawn_hook(hook: &std::path::Path, comfyui: &ChildSpec) -> Result<state::Child, child::SpawnError> {
    let spec = hooks::spec(hook, comfyui)
        .map_err(|e| child::SpawnError { program: hook.display().to_string(), source: std::io::Error::other(e) })?;
    let started = child::spawn(&spec)?;
    log::info!("pre-start hook {} started (pid {})", hooks::name(hook), started.pid);
    Ok(started)
}

/// A real-time signal to the companion (the pid was just read from its ready file and found in
/// the current child's process group). Err: the line to log.
fn send_to_companion(companion: i32, signo: i32) -> Result<(), String> {
    // SAFETY: plain syscall; a real-time signal is not in nix's Signal enum.
    match unsafe { libc::kill(companion, signo) } {
        0 => Ok(()),
        _ => Err(format!(
            "cannot send {} to the companion (pid {companion}): {}",
            signal_name(signo),
            std::io::Error::last_os_error()
        )),
    }
}

/// Sends a signal to a process group; failure is logged, never fatal.
fn send(pgid: i32, signo: i32) {
    if let Err(e) = child::signal_group(pgid, signo) {
        if e.raw_os_error() == Some(libc::ESRCH) {
            log::debug!("{} not delivered: process group {pgid} is gone", signal_name(signo));
        } else {
            log::warn!("cannot send {} to process group {pgid}: {e}", signal_name(signo));
        }
    }
}
