//! comfy-init: parse the command line, set up logging, dispatch. Nothing else lives here.

mod cli;
mod config;
mod credentials;
mod fsutil;
#[cfg(test)]
mod fuzz;
mod gpu;
mod health;
mod logging;
mod privileges;
mod supervisor;
mod test_hook;
mod watch;

use std::process::ExitCode;

use cli::{Command, Topic};
use config::{process_env, RunSettings};
use supervisor::child::ChildSpec;
use supervisor::guard::Guard;
use supervisor::signals::Signals;
use supervisor::Supervisor;

/// comfy-init's own failures, distinct from the child's statuses where we can (sysexits.h).
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_CONFIG: u8 = 78;
pub const EXIT_GPU: u8 = 69;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let command = match cli::parse(args) {
        Ok(command) => command,
        Err(err) if cli::is_help_request(&err) => Command::Help(err.topic),
        Err(err) => {
            eprintln!("comfy-init: {}", err.message);
            // Docker reads 2 from a healthcheck as "reserved": unhealthy is 1.
            return ExitCode::from(if err.topic == Topic::Healthcheck { 1 } else { EXIT_USAGE });
        }
    };
    match command {
        Command::Help(topic) => {
            print!("{}", topic.help());
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("comfy-init {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run { command } => ExitCode::from(run(command) as u8),
        Command::Gpu { json } => ExitCode::from(gpu_report(json)),
        Command::Sync { dry_run } => ExitCode::from(sync(dry_run)),
        Command::Token => ExitCode::from(token()),
        Command::Rotate => ExitCode::from(rotate()),
        Command::Healthcheck => ExitCode::from(health::command()),
    }
}

/// `comfy-init gpu [--json]`: the report and the verdict, 0 when the policy is met, 1 otherwise.
fn gpu_report(json: bool) -> u8 {
    logging::init();
    match gpu::GpuSettings::from_lookup(&process_env) {
        Ok(settings) => gpu::command(&settings, json) as u8,
        Err(e) => {
            eprintln!("comfy-init: {e}");
            1
        }
    }
}

fn credential_settings() -> Result<credentials::Settings, String> {
    credentials::Settings::from_lookup(&process_env).map_err(|e| e.to_string())
}

/// `comfy-init sync [--dry-run]`: reconcile once, print what changed (never a secret).
fn sync(dry_run: bool) -> u8 {
    logging::init();
    let mode = if dry_run { credentials::Mode::DryRun } else { credentials::Mode::Wait };
    let result = credential_settings().and_then(|s| credentials::reconcile(&s, None, mode).map_err(|e| e.to_string()));
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
    match credential_settings().and_then(|s| credentials::current_token(&s)) {
        Ok(token) => {
            println!("{token}");
            0
        }
        Err(e) => {
            eprintln!("comfy-init: {e}");
            1
        }
    }
}

/// `comfy-init rotate`: new random password; a running supervisor restarts ComfyUI.
fn rotate() -> u8 {
    logging::init();
    match credential_settings().and_then(|s| credentials::rotate(&s).map_err(|e| e.to_string())) {
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

/// Reconciles before the first start, then watches for changes while ComfyUI runs.
fn prepare_credentials() -> Result<Guard, String> {
    let settings = credential_settings()?;
    let out = credentials::reconcile(&settings, None, credentials::Mode::Wait).map_err(|e| e.to_string())?;
    credentials::log_outcome(&out);
    Guard::new(settings, out.token).map_err(|e| format!("cannot watch the credential files: {e}"))
}

/// `comfy-init run`: signals first (before any thread exists: NVML may start some), then the
/// preparation, then the loop.
fn run(command: Vec<std::ffi::OsString>) -> i32 {
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("comfy-init: cannot set up signal handling: {e}");
            return 1;
        }
    };
    logging::init();
    let (settings, spec, guard) = match prepare(command) {
        Ok(prepared) => prepared,
        Err((message, code)) => {
            log::error!("{message}");
            return code as i32;
        }
    };
    match Supervisor::start(settings, spec, signals, guard) {
        Ok(supervisor) => supervisor.run(),
        Err(e) => {
            log::error!("{e}");
            e.exit_code()
        }
    }
}

/// Everything before the child starts: settings, GPU preflight, privileges, credentials.
/// Err: the message and comfy-init's exit code; ComfyUI was not started.
fn prepare(command: Vec<std::ffi::OsString>) -> Result<(RunSettings, ChildSpec, Option<Guard>), (String, u8)> {
    let config = |e: config::ConfigError| (e.to_string(), EXIT_CONFIG);
    let settings = RunSettings::from_lookup(&process_env).map_err(config)?;
    let gpu = gpu::GpuSettings::from_lookup(&process_env).map_err(|e| (e, EXIT_CONFIG))?;
    gpu::preflight(&gpu).map_err(|e| (e, EXIT_GPU))?;

    let mut spec = ChildSpec::default();
    if let Some(owner) = credentials::owner(&process_env).map_err(config)? {
        privileges::check_ownership(&settings.comfyui_dir, owner).map_err(|e| (e, EXIT_CONFIG))?;
        spec.user = Some(owner);
    }
    let guard = if credentials::auth_enabled(&process_env).map_err(config)? {
        let not_started =
            |e| (format!("{e}; ComfyUI not started: it never runs without a valid login/PASSWORD"), EXIT_CONFIG);
        Some(prepare_credentials().map_err(not_started)?)
    } else {
        log::warn!("COMFY_INIT_AUTH=off: credentials are not managed; ComfyUI runs unprotected unless you protect it");
        None
    };
    // The plaintext password is ours; the child and its custom nodes do not need it.
    spec.env_remove.push(credentials::KEY_PASSWORD.into());
    if command.is_empty() {
        spec.argv = settings.default_command();
        spec.cwd = Some(settings.comfyui_dir.clone());
    } else {
        spec.argv = command;
    }
    Ok((settings, spec, guard))
}
