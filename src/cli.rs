//! Command line -> `Command`. Hand-written: six subcommands do not need a parser crate, and the
//! healthcheck must control its own exit code on bad arguments (Docker reserves 2).

use std::ffi::OsString;

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Supervise COMMAND (empty: start ComfyUI).
    Run {
        command: Vec<OsString>,
    },
    Healthcheck,
    Gpu {
        json: bool,
    },
    Sync {
        dry_run: bool,
    },
    Token,
    Rotate,
    /// Internal: the child PID 1 starts to prove a reload (see `supervisor::start_reload`).
    ProbeReload,
    Help(Topic),
    Version,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Topic {
    Main,
    Run,
    Healthcheck,
    Gpu,
    Sync,
    Token,
    Rotate,
}

/// A usage error, with the subcommand it belongs to (the healthcheck maps it to exit 1).
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError {
    pub topic: Topic,
    pub message: String,
}

/// The hidden subcommand of the reload probe: not for users, so not in --help.
pub const PROBE_RELOAD: &str = "__probe-reload";

pub fn parse(args: Vec<OsString>) -> Result<Command, UsageError> {
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        return Ok(Command::Run { command: Vec::new() });
    };
    let rest: Vec<OsString> = args.collect();
    match first.to_str() {
        Some("-h" | "--help" | "help") => Ok(Command::Help(Topic::Main)),
        Some("-V" | "--version") => Ok(Command::Version),
        Some("--") => Ok(Command::Run { command: rest }),
        Some("run") => parse_run(rest),
        Some("healthcheck") => flags(Topic::Healthcheck, rest, &[]).map(|_| Command::Healthcheck),
        Some("gpu") => flags(Topic::Gpu, rest, &["--json"]).map(|f| Command::Gpu { json: !f.is_empty() }),
        Some("sync") => flags(Topic::Sync, rest, &["--dry-run"]).map(|f| Command::Sync { dry_run: !f.is_empty() }),
        Some("token") => flags(Topic::Token, rest, &[]).map(|_| Command::Token),
        Some("rotate") => flags(Topic::Rotate, rest, &[]).map(|_| Command::Rotate),
        Some(PROBE_RELOAD) if rest.is_empty() => Ok(Command::ProbeReload),
        Some(s) if s.starts_with('-') => {
            Err(UsageError { topic: Topic::Main, message: format!("unknown option '{s}' (see 'comfy-init --help')") })
        }
        // `docker run IMAGE python main.py --cpu`: a bare command is run like `run -- ...`.
        _ => Ok(Command::Run { command: std::iter::once(first).chain(rest).collect() }),
    }
}

fn parse_run(rest: Vec<OsString>) -> Result<Command, UsageError> {
    match rest.first().and_then(|a| a.to_str()) {
        Some("-h" | "--help") => Ok(Command::Help(Topic::Run)),
        Some("--") => Ok(Command::Run { command: rest[1..].to_vec() }),
        Some(s) if s.starts_with('-') => Err(UsageError {
            topic: Topic::Run,
            message: format!("unknown option '{s}' for 'run' (put the command after '--')"),
        }),
        _ => Ok(Command::Run { command: rest }),
    }
}

/// Accepts only the given flags (and --help); returns the flags seen.
fn flags(topic: Topic, rest: Vec<OsString>, allowed: &[&str]) -> Result<Vec<String>, UsageError> {
    let mut seen = Vec::new();
    for arg in rest {
        let arg = arg.to_string_lossy().into_owned();
        if arg == "-h" || arg == "--help" {
            return Err(UsageError { topic, message: String::new() });
        }
        if !allowed.contains(&arg.as_str()) {
            return Err(UsageError {
                topic,
                message: format!("unexpected argument '{arg}' (see 'comfy-init {} --help')", topic.name()),
            });
        }
        seen.push(arg);
    }
    Ok(seen)
}

impl Topic {
    pub fn name(self) -> &'static str {
        match self {
            Topic::Main => "",
            Topic::Run => "run",
            Topic::Healthcheck => "healthcheck",
            Topic::Gpu => "gpu",
            Topic::Sync => "sync",
            Topic::Token => "token",
            Topic::Rotate => "rotate",
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            Topic::Main => HELP_MAIN,
            Topic::Run => HELP_RUN,
            Topic::Healthcheck => HELP_HEALTHCHECK,
            Topic::Gpu => HELP_GPU,
            Topic::Sync => HELP_SYNC,
            Topic::Token => HELP_TOKEN,
            Topic::Rotate => HELP_ROTATE,
        }
    }
}

/// `--help` after a subcommand comes back as a UsageError with an empty message.
pub fn is_help_request(err: &UsageError) -> bool {
    err.message.is_empty()
}

const HELP_MAIN: &str = "\
comfy-init: PID 1 for ComfyUI containers

Usage:
  comfy-init [run] [-- COMMAND ARGS...]  supervise COMMAND (default: ComfyUI) as PID 1
  comfy-init healthcheck                 Docker HEALTHCHECK: exit 0 healthy, 1 unhealthy
  comfy-init gpu [--json]                GPU report and verdict through NVML
  comfy-init sync [--dry-run]            reconcile .env and login/PASSWORD once
  comfy-init token                       print the API bearer token
  comfy-init rotate                      set a new random password
  comfy-init --help | --version

Every subcommand takes --help. Settings come from the environment; see README.md.
";

const HELP_RUN: &str = "\
Usage: comfy-init [run] [-- COMMAND ARGS...]

Runs COMMAND (default: python main.py --listen 0.0.0.0 --port $COMFYUI_PORT in $COMFYUI_DIR)
in its own process group: reaps every zombie, forwards signals to the group, and on
SIGTERM/SIGINT/SIGQUIT sends $COMFY_INIT_STOP_SIGNAL (SIGINT), waits $COMFY_INIT_STOP_TIMEOUT
(8s), then SIGKILLs the group. Exits with the child's status (128+N for signal N).

Settings: COMFY_INIT_STOP_SIGNAL, COMFY_INIT_STOP_TIMEOUT, COMFY_INIT_RESTART,
COMFY_INIT_AUTH, COMFY_INIT_GPU, COMFYUI_DIR, COMFYUI_PORT, COMFYUI_ARGS, RUST_LOG.
";

const HELP_HEALTHCHECK: &str = "\
Usage: comfy-init healthcheck

Docker HEALTHCHECK target. GETs /system_stats on 127.0.0.1:$COMFYUI_PORT with the bearer token,
then checks that requests without a token are refused. Prints one line; exits 0 (healthy) or
1 (unhealthy), never anything else. Deadline: $COMFY_INIT_HEALTH_TIMEOUT (5s).
";

const HELP_GPU: &str = "\
Usage: comfy-init gpu [--json]

Reports the GPUs NVML sees and checks them against $COMFY_INIT_GPU (require|warn|off) and
$COMFY_INIT_MIN_VRAM_GB. Exits 0 when the policy is met, 1 otherwise.
";

const HELP_SYNC: &str = "\
Usage: comfy-init sync [--dry-run]

Makes login/PASSWORD and the .env file agree once, prints what changed (never a secret).
--dry-run prints the plan and writes nothing.
";

const HELP_TOKEN: &str = "\
Usage: comfy-init token

Prints the API bearer token (the hash in login/PASSWORD) and nothing else:
  curl -H \"Authorization: Bearer $(comfy-init token)\" http://127.0.0.1:8188/system_stats
";

const HELP_ROTATE: &str = "\
Usage: comfy-init rotate

Generates a new random password, writes it to the .env file and login/PASSWORD, and prints
it once. A running comfy-init notices and restarts ComfyUI with the new token.
";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from).collect())
    }

    #[test]
    fn no_arguments_runs_comfyui() {
        assert_eq!(parse_strs(&[]), Ok(Command::Run { command: vec![] }));
    }

    #[test]
    fn command_after_double_dash() {
        let want = Command::Run { command: vec!["sleep".into(), "1".into()] };
        assert_eq!(parse_strs(&["--", "sleep", "1"]), Ok(want));
        let want = Command::Run { command: vec!["sleep".into(), "--".into()] };
        assert_eq!(parse_strs(&["run", "--", "sleep", "--"]), Ok(want));
    }

    #[test]
    fn bare_command_is_run() {
        let want = Command::Run { command: vec!["python".into(), "main.py".into()] };
        assert_eq!(parse_strs(&["python", "main.py"]), Ok(want));
    }

    #[test]
    fn each_subcommand_takes_only_its_own_flags() {
        assert_eq!(parse_strs(&["gpu", "--json"]), Ok(Command::Gpu { json: true }));
        assert_eq!(parse_strs(&["sync", "--dry-run"]), Ok(Command::Sync { dry_run: true }));
        assert_eq!(parse_strs(&["healthcheck"]), Ok(Command::Healthcheck));
        let err = parse_strs(&["healthcheck", "--nope"]).unwrap_err();
        assert_eq!(err.topic, Topic::Healthcheck);
        assert!(err.message.contains("--nope"));
        assert!(is_help_request(&parse_strs(&["token", "--help"]).unwrap_err()));
    }
}
