//! comfy-init: parse the command line, set up logging, dispatch. Nothing else lives here.

mod cli;
mod config;
mod logging;
mod supervisor;

use std::process::ExitCode;

use cli::{Command, Topic};
use config::{process_env, RunSettings};
use supervisor::child::ChildSpec;
use supervisor::signals::Signals;
use supervisor::Supervisor;

/// comfy-init's own failures, distinct from the child's statuses where we can (sysexits.h).
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let command = match cli::parse(args) {
        Ok(command) => command,
        Err(err) if cli::is_help_request(&err) => Command::Help(err.topic),
        Err(err) => {
            eprintln!("comfy-init: {}", err.message);
            // Docker reads 2 from a healthcheck as "reserved": unhealthy is 1.
            return ExitCode::from(if err.topic == Topic::Healthcheck {
                1
            } else {
                EXIT_USAGE
            });
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
        other => {
            eprintln!("comfy-init: '{other:?}' is not available in this build");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// `comfy-init run`: signals first (before any thread exists), then settings, then supervise.
fn run(command: Vec<std::ffi::OsString>) -> i32 {
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("comfy-init: cannot set up signal handling: {e}");
            return 1;
        }
    };
    logging::init();
    let settings = match RunSettings::from_lookup(&process_env) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return EXIT_CONFIG as i32;
        }
    };
    let mut spec = ChildSpec::default();
    if command.is_empty() {
        spec.argv = settings.default_command();
        spec.cwd = Some(settings.comfyui_dir.clone());
    } else {
        spec.argv = command;
    }
    match Supervisor::start(settings, spec, signals) {
        Ok(supervisor) => supervisor.run(),
        Err(e) => {
            log::error!("{e}");
            e.exit_code()
        }
    }
}
