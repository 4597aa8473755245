//! comfy-init: parse the command line, set up logging, dispatch, map errors to exit codes.
//! Nothing else lives here.

// The C `main` below replaces std's start-up (issue 17: a fifth of a spawn's instructions).
#![cfg_attr(not(test), no_main)]

// Without std's start-up, `std::env::args` is filled only by glibc, which hands argv to std
// through .init_array. Elsewhere (musl) it would be empty, and `healthcheck` would become `run`.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
compile_error!("comfy-init's own C main needs glibc (target *-linux-gnu): std gets argv from glibc's .init_array");

use comfy_init::cli::{self, Command, Topic};
use comfy_init::{companion, config, credentials, error, gpu, health, instances, logging, privileges, supervisor};
use config::Settings;
use error::{Error, EXIT_CONFIG, EXIT_USAGE};
use supervisor::child::ChildSpec;
use supervisor::signals::Signals;
use supervisor::Supervisor;

/// The process entry point, without std's `lang_start`: that spends about 94k instructions (a
/// fifth of a `comfy-init run -- /bin/true`) in `pthread_getattr_np` parsing /proc/self/maps,
/// only to place the main thread's stack-overflow message. std still has argv (glibc hands it
/// to std through .init_array). What `lang_start` did that matters is done here: SIGPIPE
/// ignored (a closed pipe is an error, not a death), stdin/stdout/stderr open; stdout is flushed
/// by the commands that print (`entry`), not by `run`, whose output is the log on stderr.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    prepare_process();
    libc::c_int::from(entry())
}

/// Under `cargo test` the test harness is the entry point; this `main` keeps the commands
/// reachable, as the ordinary `main` of a test build is.
#[cfg(test)]
fn main() {
    let _ = entry();
}

#[cfg(not(test))]
fn prepare_process() {
    for fd in 0..3 {
        // SAFETY: fcntl and open on the standard descriptors; an open file takes the lowest free
        // descriptor, which is `fd` when it was closed.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) == -1 && *libc::__errno_location() == libc::EBADF {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            }
        }
    }
    // SAFETY: setting a disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// The command line, dispatched; comfy-init's exit code.
fn entry() -> u8 {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let command = match cli::parse(args) {
        Ok(command) => command,
        Err(err) if cli::is_help_request(&err) => Command::Help(err.topic),
        Err(err) => {
            eprintln!("comfy-init: {}", err.message);
            // Docker reads 2 from a healthcheck as "reserved": unhealthy is 1.
            return if err.topic == Topic::Healthcheck { 1 } else { EXIT_USAGE };
        }
    };
    let code = match command {
        Command::Run { command, comfyui_args } => return run(command, comfyui_args) as u8,
        Command::Help(topic) => {
            print!("{}", topic.help());
            0
        }
        Command::Version => {
            println!("comfy-init {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Command::Gpu { json } => gpu_report(json),
        Command::Sync { dry_run } => sync(dry_run),
        Command::Token => token(),
        Command::Rotate => rotate(),
        Command::ApiKey(command) => apikey(command),
        Command::Provision { check, manifest } => provision(check, manifest),
        Command::Healthcheck { ready, instance } => {
            let scope = instance.map_or(health::Scope::All, health::Scope::Instance);
            health::command(Settings::from_env(), ready, Some(scope))
        }
        Command::Prefix { name, command } => supervisor::hooks::prefix(&name, &command),
        Command::CredentialService => {
            logging::init();
            match Settings::from_env() {
                Ok(s) => supervisor::guard::serve(s.credentials),
                Err(e) => {
                    log::error!("credential service: {e}");
                    EXIT_CONFIG
                }
            }
        }
        Command::ProbeAlive => health::watchdog_probe(Settings::from_env()),
        Command::ProbeDrain => {
            logging::init();
            health::probe_drain(Settings::from_env())
        }
        Command::ProbeReload => {
            // PID 1 hands the probe the two tokens in its environment, never on a command line.
            let token = |name| std::env::var(name).unwrap_or_default();
            let (old, new) = (token(supervisor::PROBE_OLD), token(supervisor::PROBE_NEW));
            health::prove_reload(Settings::from_env(), &old, &new)
        }
    };
    // std's own start-up would flush at exit; without it, a `print!` left in the buffer is lost.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    code
}

/// `comfy-init gpu [--json]`: the report and the verdict, 0 when the policy is met, 1 otherwise.
fn gpu_report(json: bool) -> u8 {
    logging::init();
    match Settings::from_env() {
        Ok(settings) => gpu::command(&settings.gpu, json) as u8,
        Err(e) => {
            eprintln!("comfy-init: {e}");
            1
        }
    }
}

/// `comfy-init sync [--dry-run]`: reconcile once, print what changed (never a secret).
fn sync(dry_run: bool) -> u8 {
    logging::init();
    let mode = if dry_run { credentials::Mode::DryRun } else { credentials::Mode::Wait };
    let result = Settings::from_env()
        .map_err(Error::from)
        .and_then(|s| credentials::reconcile(&s.credentials, None, mode).map_err(Error::from));
    match result {
        Ok(out) => {
            let verb = if dry_run { "would change" } else { "changed" };
            if out.changes.is_empty() {
                println!("in sync: nothing to change");
            }
            for change in &out.changes {
                println!("{verb}: {change}");
            }
            if !dry_run {
                credentials::announce(&out);
            }
            0
        }
        Err(e) => {
            log::error!("{e}");
            EXIT_CONFIG
        }
    }
}

/// `comfy-init token`: the bearer token alone on stdout, for `$(comfy-init token)`.
fn token() -> u8 {
    let result = Settings::from_env()
        .map_err(Error::from)
        .and_then(|s| Ok((credentials::current_token(&s.credentials)?, s.password_token)));
    match result {
        Ok((token, true)) => {
            println!("{token}");
            0
        }
        Ok((token, false)) => {
            println!("{token}");
            eprintln!(
                "comfy-init: COMFY_INIT_PASSWORD_TOKEN=off: ComfyUI refuses this token from API clients; \
                 give each client an API key (comfy-init apikey add NAME)"
            );
            0
        }
        Err(e) => {
            eprintln!("comfy-init: {e}");
            1
        }
    }
}

/// `comfy-init apikey ...`: the key printed once (add), the keys without them (list), revoke.
fn apikey(command: cli::ApiKeyCommand) -> u8 {
    use credentials::api_keys;
    logging::init();
    let settings = match Settings::from_env() {
        Ok(s) => s.credentials,
        Err(e) => {
            eprintln!("comfy-init: {e}");
            return EXIT_CONFIG;
        }
    };
    let result = match command {
        cli::ApiKeyCommand::Add { name, expires, read_only } => expires
            .as_deref()
            .map(api_keys::parse_lifetime)
            .transpose()
            .and_then(|lifetime| api_keys::add(&settings, &name, lifetime, read_only))
            .map(|key| println!("{key}")),
        cli::ApiKeyCommand::List => api_keys::list(&settings).map(|ours| {
            let theirs = api_keys::listed_by_operator(&settings).unwrap_or_else(|e| {
                eprintln!("comfy-init: COMFYUI_API_KEYS_FILE not listed: {e}");
                Vec::new()
            });
            let used = api_keys::last_used(&settings);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            if ours.is_empty() && theirs.is_empty() {
                println!("no API keys (comfy-init apikey add NAME makes one)");
            }
            for (key, from) in
                ours.iter().map(|k| (k, "")).chain(theirs.iter().map(|k| (k, "  (COMFYUI_API_KEYS_FILE)")))
            {
                println!("{}{from}", api_keys::describe(key, now, used.get(&key.name).copied()));
            }
        }),
        cli::ApiKeyCommand::Revoke { name } => {
            api_keys::revoke(&settings, &name).map(|()| println!("revoked: {name} (refused within a second)"))
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("comfy-init: {e}");
            EXIT_CONFIG
        }
    }
}

/// `comfy-init provision [--check] [--manifest PATH]`: the manifest's models and nodes.
fn provision(check: bool, manifest: Option<std::path::PathBuf>) -> u8 {
    match Settings::from_env() {
        Ok(settings) => {
            // Root never does ComfyUI's user's work in ComfyUI's user's folders: run by hand as
            // root (`docker exec`) with PUID set, it becomes PUID:PGID first, as the hook runs.
            if let Some((uid, gid)) = settings.owner.filter(|_| nix::unistd::geteuid().is_root()) {
                if let Err(e) = become_user(uid, gid) {
                    eprintln!("comfy-init provision: cannot become PUID:PGID {uid}:{gid} ({e}); nothing was done");
                    return 1;
                }
            }
            let mut settings = settings.provision;
            if let Some(path) = manifest {
                settings.manifest = path;
            }
            comfy_init::provision::command(&settings, check)
        }
        Err(e) => {
            eprintln!("comfy-init provision: {e}");
            EXIT_CONFIG
        }
    }
}

/// This process, for good, as `uid`:`gid` with no supplementary group (one thread: before any).
fn become_user(uid: u32, gid: u32) -> nix::Result<()> {
    use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
    setgroups(&[])?;
    setgid(Gid::from_raw(gid))?;
    setuid(Uid::from_raw(uid))
}

/// `comfy-init rotate`: new random password; a running supervisor restarts ComfyUI.
fn rotate() -> u8 {
    logging::init();
    let result = Settings::from_env()
        .map_err(Error::from)
        .and_then(|s| credentials::rotate(&s.credentials).map_err(Error::from));
    match result {
        Ok(out) => {
            for change in &out.changes {
                println!("changed: {change}");
            }
            credentials::announce(&out);
            0
        }
        Err(e) => {
            log::error!("{e}");
            EXIT_CONFIG
        }
    }
}

/// `comfy-init run`: signals first (before any thread exists: NVML may start some), then the
/// preparation, then the loop.
fn run(command: Vec<std::ffi::OsString>, comfyui_args: Vec<std::ffi::OsString>) -> i32 {
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("comfy-init: {}", Error::System { about: "set up signal handling", source: e });
            return 1;
        }
    };
    logging::init();
    let started = prepare(command, comfyui_args).and_then(|p| Supervisor::start(p, signals).map_err(Error::Spawn));
    match started {
        Ok(supervisor) => supervisor.run(),
        Err(e @ Error::Stopped { .. }) => {
            log::info!("{e}");
            i32::from(e.exit_code())
        }
        Err(e) => {
            log::error!("{e}");
            i32::from(e.exit_code())
        }
    }
}

/// Everything before the supervisor starts: settings, GPU preflight, the pre-start hooks' list,
/// folders and privileges, the companion node. The credentials are the credential service's
/// (its first reconciliation runs under the supervisor, where a stop is answered at once).
/// Err: nothing was started.
fn prepare(
    command: Vec<std::ffi::OsString>,
    comfyui_args: Vec<std::ffi::OsString>,
) -> Result<supervisor::Start, Error> {
    let settings = Settings::from_env()?;
    let hooks = supervisor::hooks::list(&settings.pre_start).map_err(Error::Hooks)?;
    // NVML is asked by a process of its own (gpu::helper): nothing foreign runs in PID 1. A stop
    // request interrupts its waits; it is answered before the check's verdict.
    let for_child = gpu::preflight(&settings.gpu);
    stop_if_asked("the GPU check")?;
    let for_child = for_child.map_err(Error::Gpu)?;

    // ComfyUI (or the given command) is the one child that takes the terminal.
    let mut spec = ChildSpec { terminal: true, ..ChildSpec::default() };
    if let Some(devices) = for_child.visible_devices {
        spec.env_set.push(("CUDA_VISIBLE_DEVICES".into(), devices.into()));
    }
    if let Some(owner) = settings.owner {
        // Hooks install things, often into custom_nodes/: it must be theirs too.
        // ComfyUI-Login writes its cookie key in its own folder: that folder must be the user's.
        let login_nodes: Vec<_> = settings
            .credentials
            .session_key_paths()
            .iter()
            .filter_map(|key| key.parent().map(std::path::Path::to_path_buf))
            .collect();
        let changed =
            privileges::prepare_folders(&settings.comfyui.dir, owner, settings.chown, !hooks.is_empty(), &login_nodes)
                .map_err(Error::Ownership)?;
        for change in changed {
            log::info!("ownership: {change}");
        }
        spec.user = Some(owner);
    }
    let (mut companion, mut reload) = (false, false);
    if settings.auth {
        companion = companion_installed(&settings);
        reload = companion && settings.on_token_change == config::OnTokenChange::Reload;
        check_guest_mode(&settings, !companion)?;
    } else {
        log::warn!("COMFY_INIT_AUTH=off: credentials are not managed; ComfyUI runs unprotected unless you protect it");
    }
    if let Some(digest) = own_key(&settings, companion)? {
        spec.env_set.push((supervisor::self_key::ENV_DIGEST.into(), digest.into()));
    }
    // The plaintext password is ours; the child and its custom nodes do not need it.
    spec.env_remove.push(credentials::KEY_PASSWORD.into());
    let instances = if !for_child.instances.is_empty() {
        several_instances(&settings, &spec, &command, &comfyui_args, &for_child.instances)?
    } else {
        if command.is_empty() {
            spec.argv = settings.comfyui.default_command();
            spec.argv.extend(comfyui_args);
            spec.cwd = Some(settings.comfyui.dir.clone());
        } else {
            spec.argv = command;
        }
        if let Err(why) = instances::publish(&settings.run_dir, &[]) {
            log::warn!("{}: {why}", settings.run_dir.display());
        }
        vec![supervisor::InstanceSpec { spec, port: settings.comfyui.port, label: None }]
    };
    Ok(supervisor::Start {
        instances,
        run_dir: settings.run_dir,
        auth: settings.auth,
        companion,
        reload,
        hooks,
        settings: settings.supervisor,
    })
}

/// COMFY_INIT_INSTANCES: one ComfyUI per card (issue 26), its user folder made (as PUID where
/// PUID could redirect it), the list published for the healthcheck.
fn several_instances(
    settings: &Settings,
    spec: &ChildSpec,
    command: &[std::ffi::OsString],
    comfyui_args: &[std::ffi::OsString],
    cards: &[gpu::InstanceCard],
) -> Result<Vec<supervisor::InstanceSpec>, Error> {
    let config = |message: String| Error::Config(config::ConfigError(message));
    if !command.is_empty() {
        return Err(config(
            "COMFY_INIT_INSTANCES needs comfy-init to start ComfyUI itself (no command after `run`): it gives each \
             instance its port and folders; pass ComfyUI's flags in COMFYUI_ARGS"
                .into(),
        ));
    }
    let specs = instances::specs(spec, &settings.comfyui, comfyui_args, cards).map_err(config)?;
    for i in 1..specs.len() {
        let Some(dir) = instances::user_dir(&settings.comfyui, i) else { continue };
        let made = privileges::as_puid_where_exposed(&dir, settings.owner, || std::fs::create_dir_all(&dir));
        made.map_err(|e| {
            config(format!(
                "{}: cannot make instance {i}'s user folder ({e}): make `user` writable by ComfyUI's user",
                dir.display()
            ))
        })?;
    }
    let published: Vec<_> = specs
        .iter()
        .enumerate()
        .map(|(index, s)| instances::Published { index, port: s.port, label: s.label.clone().unwrap_or_default() })
        .collect();
    instances::publish(&settings.run_dir, &published).map_err(|why| {
        config(format!(
            "{}: cannot publish the instances for the healthcheck ({why}): set COMFY_INIT_RUN_DIR to a folder of \
             comfy-init's user that no one else can write",
            settings.run_dir.display()
        ))
    })?;
    Ok(specs)
}

/// comfy-init's own key, by which the companion knows comfy-init's requests (the healthcheck's
/// refusals are not logged; under COMFY_INIT_PASSWORD_TOKEN=off only they may use the token): its
/// digest, for ComfyUI. None: no companion. Err: the token is off but would stay an API
/// credential, or comfy-init could not keep its key; nothing is started.
fn own_key(settings: &Settings, companion: bool) -> Result<Option<String>, Error> {
    let off = "COMFY_INIT_PASSWORD_TOKEN=off";
    let config = |message: String| Error::Config(config::ConfigError(message));
    if !settings.password_token && (!settings.auth || !companion) {
        return Err(config(format!(
            "{off} needs COMFY_INIT_AUTH=on and comfy-init's companion node installed (COMFY_INIT_COMPANION=on, \
             custom_nodes writable by root): without it ComfyUI-Login accepts its token anyway"
        )));
    }
    if !companion {
        return Ok(None);
    }
    match supervisor::self_key::publish(&settings.run_dir) {
        Ok(digest) => Ok(Some(digest)),
        Err(why) if settings.password_token => {
            log::warn!(
                "{}: cannot keep comfy-init's own key ({why}): the healthcheck's refusals will be logged",
                settings.run_dir.display()
            );
            Ok(None)
        }
        Err(why) => Err(config(format!(
            "{off}: cannot keep comfy-init's own key in {} ({why}): set COMFY_INIT_RUN_DIR to a folder of \
             comfy-init's user that no one else can write",
            settings.run_dir.display()
        ))),
    }
}

/// Err(Stopped) when a stop request is waiting: start-up goes no further.
fn stop_if_asked(during: &'static str) -> Result<(), Error> {
    match supervisor::signals::stop_pending() {
        Some(signo) => Err(Error::Stopped { signo, during }),
        None => Ok(()),
    }
}

/// The companion node, installed so that the token stays out of ComfyUI's log, a new token can be
/// reloaded without a restart, and ComfyUI-Login's open doors are closed. Not installed
/// (COMFY_INIT_COMPANION=off, a read-only custom_nodes): ComfyUI still starts, the log says what
/// stays open, and the healthcheck, which proves the doors closed, reports it unhealthy.
fn companion_installed(settings: &Settings) -> bool {
    const OPEN: &str = "ComfyUI-Login's doors stay open (anyone can read, write, move and delete user \
                        files through paths ending in .js, and wrong logins are neither throttled nor \
                        kept off ComfyUI's event loop), the healthcheck reports that as unhealthy, and a \
                        new password restarts ComfyUI";
    if !settings.companion {
        log::warn!("COMFY_INIT_COMPANION=off: {OPEN}");
        return false;
    }
    match companion::install(&settings.comfyui.dir) {
        Ok(dir) => {
            log::debug!("companion node installed in {}", dir.display());
            true
        }
        Err(e) => {
            log::warn!("{e}: the companion node is not installed, so {OPEN}");
            false
        }
    }
}

/// ComfyUI-Login's guest mode: said loudly, or refused under `COMFY_INIT_GUEST_MODE=refuse`.
fn check_guest_mode(settings: &Settings, token_logged: bool) -> Result<(), Error> {
    let Some(risk) = credentials::guest_mode_risk(&settings.credentials, token_logged) else { return Ok(()) };
    match settings.guest_mode {
        config::GuestMode::Warn => {
            log::warn!("{risk} (COMFY_INIT_GUEST_MODE=refuse makes this a refusal)");
            Ok(())
        }
        config::GuestMode::Refuse => Err(Error::Credentials(format!(
            "{risk}; ComfyUI not started (COMFY_INIT_GUEST_MODE=refuse; =warn starts with a warning)"
        ))),
    }
}
