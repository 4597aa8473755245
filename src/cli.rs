//! Command line -> `Command`. Hand-written: six subcommands do not need a parser crate, and the
//! healthcheck must control its own exit code on bad arguments (Docker reserves 2).

use std::ffi::OsString;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Supervise COMMAND (empty: start ComfyUI, with `comfyui_args` appended to its command line).
    Run {
        command: Vec<OsString>,
        comfyui_args: Vec<OsString>,
    },
    /// `--ready`: readiness (traffic), not only liveness.
    /// `--instance N`: only that ComfyUI of several (COMFY_INIT_INSTANCES).
    Healthcheck {
        ready: bool,
        instance: Option<usize>,
    },
    Gpu {
        json: bool,
    },
    Sync {
        dry_run: bool,
    },
    Token,
    Rotate,
    /// `comfy-init apikey add|list|revoke`.
    ApiKey(ApiKeyCommand),
    /// `comfy-init provision [--check] [--manifest PATH]`.
    Provision {
        check: bool,
        manifest: Option<std::path::PathBuf>,
    },
    /// Internal: the child PID 1 starts to prove a reload (see `supervisor::start_reload`).
    ProbeReload,
    /// PID 1's probe that watches ComfyUI's queue while it drains (hidden).
    ProbeDrain,
    /// PID 1's watchdog: the liveness check, silent when healthy (hidden).
    ProbeAlive,
    /// Internal: the credential service PID 1 starts and supervises (`supervisor::service`).
    CredentialService,
    /// Internal: runs a pre-start hook, its output prefixed by its name.
    Prefix {
        name: String,
        command: Vec<OsString>,
    },
    Help(Topic),
    Version,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Topic {
    Main,
    ApiKey,
    Run,
    Healthcheck,
    Gpu,
    Sync,
    Token,
    Rotate,
    Provision,
}

/// `comfy-init apikey ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyCommand {
    Add { name: String, expires: Option<String>, read_only: bool },
    List,
    Revoke { name: String },
}

fn parse_apikey(rest: Vec<OsString>) -> Result<ApiKeyCommand, UsageError> {
    let usage = |message: &str| UsageError { topic: Topic::ApiKey, message: message.to_string() };
    let args: Vec<String> = rest.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return Err(usage(""));
    }
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["list"] => Ok(ApiKeyCommand::List),
        ["revoke", name] => Ok(ApiKeyCommand::Revoke { name: name.to_string() }),
        ["add", name, flags @ ..] if !name.starts_with('-') => {
            let (mut expires, mut read_only, mut flags) = (None, false, flags.iter());
            while let Some(flag) = flags.next() {
                match *flag {
                    "--read-only" => read_only = true,
                    "--expires" => {
                        expires =
                            Some(flags.next().ok_or_else(|| usage("--expires needs a lifetime, like 90d"))?.to_string())
                    }
                    other => {
                        return Err(usage(&format!("unexpected argument '{other}' (see 'comfy-init apikey --help')")))
                    }
                }
            }
            Ok(ApiKeyCommand::Add { name: name.to_string(), expires, read_only })
        }
        _ => Err(usage("use: comfy-init apikey add NAME [--expires 90d] [--read-only] | list | revoke NAME")),
    }
}

fn parse_provision(rest: Vec<OsString>) -> Result<Command, UsageError> {
    let usage = |message: String| UsageError { topic: Topic::Provision, message };
    let (mut check, mut manifest, mut args) = (false, None, rest.into_iter());
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-h" | "--help") => return Err(usage(String::new())),
            Some("--check" | "--dry-run") => check = true,
            Some("--manifest") => {
                manifest = Some(args.next().ok_or_else(|| usage("--manifest needs a path".into()))?.into())
            }
            _ => {
                let arg = arg.to_string_lossy();
                return Err(usage(format!("unexpected argument '{arg}' (see 'comfy-init provision --help')")));
            }
        }
    }
    Ok(Command::Provision { check, manifest })
}

/// A usage error, with the subcommand it belongs to (the healthcheck maps it to exit 1).
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError {
    pub topic: Topic,
    pub message: String,
}

// The hidden subcommands comfy-init runs itself with: not for users, so not in --help. Named
// here, where they are parsed; the supervisor, which spawns them, takes the names from here.

/// The reload probe.
pub const PROBE_RELOAD: &str = "__probe-reload";
/// The probe that watches the queue while ComfyUI drains.
pub const PROBE_DRAIN: &str = "__probe-drain";
/// The watchdog's liveness probe.
pub const PROBE_ALIVE: &str = "__probe-alive";
/// The credential service.
pub const CREDENTIAL_SERVICE: &str = "__credentials";
/// A pre-start hook under the prefixer of its output: `__prefix NAME COMMAND...`.
pub const PREFIX: &str = "__prefix";

pub fn parse(args: Vec<OsString>) -> Result<Command, UsageError> {
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        return Ok(Command::Run { command: Vec::new(), comfyui_args: Vec::new() });
    };
    let rest: Vec<OsString> = args.collect();
    match first.to_str() {
        Some("-h" | "--help" | "help") => Ok(Command::Help(Topic::Main)),
        Some("-V" | "--version") => Ok(Command::Version),
        Some("--") => Ok(Command::Run { command: rest, comfyui_args: Vec::new() }),
        Some("run") => parse_run(rest),
        Some("healthcheck") => parse_healthcheck(rest),
        Some("gpu") => flags(Topic::Gpu, rest, &["--json"]).map(|f| Command::Gpu { json: !f.is_empty() }),
        Some("sync") => flags(Topic::Sync, rest, &["--dry-run"]).map(|f| Command::Sync { dry_run: !f.is_empty() }),
        Some("token") => flags(Topic::Token, rest, &[]).map(|_| Command::Token),
        Some("rotate") => flags(Topic::Rotate, rest, &[]).map(|_| Command::Rotate),
        Some("apikey") => parse_apikey(rest).map(Command::ApiKey),
        Some("provision") => parse_provision(rest),
        Some(PROBE_RELOAD) if rest.is_empty() => Ok(Command::ProbeReload),
        Some(PROBE_DRAIN) if rest.is_empty() => Ok(Command::ProbeDrain),
        Some(PROBE_ALIVE) if rest.is_empty() => Ok(Command::ProbeAlive),
        Some(CREDENTIAL_SERVICE) if rest.is_empty() => Ok(Command::CredentialService),
        Some(PREFIX) if rest.len() >= 2 => {
            Ok(Command::Prefix { name: rest[0].to_string_lossy().into_owned(), command: rest[1..].to_vec() })
        }
        // `docker run IMAGE --cpu --preview-method auto`: flags that are not ours go to ComfyUI.
        Some(s) if s.starts_with('-') => comfyui_flags(Topic::Main, std::iter::once(first).chain(rest).collect()),
        // `docker run IMAGE python main.py --cpu`: a bare command is run like `run -- ...`.
        _ => Ok(Command::Run { command: std::iter::once(first).chain(rest).collect(), comfyui_args: Vec::new() }),
    }
}

fn parse_run(rest: Vec<OsString>) -> Result<Command, UsageError> {
    match rest.first().and_then(|a| a.to_str()) {
        Some("-h" | "--help") => Ok(Command::Help(Topic::Run)),
        Some("--") => Ok(Command::Run { command: rest[1..].to_vec(), comfyui_args: Vec::new() }),
        Some(s) if s.starts_with('-') => comfyui_flags(Topic::Run, rest),
        _ => Ok(Command::Run { command: rest, comfyui_args: Vec::new() }),
    }
}

/// Flags for ComfyUI's own command line. A `--` among them would also name another command to
/// run, which has no ComfyUI to give them to: refused, saying where they go.
fn comfyui_flags(topic: Topic, args: Vec<OsString>) -> Result<Command, UsageError> {
    if args.iter().any(|a| a == "--") {
        return Err(UsageError {
            topic,
            message: "flags before '--' go to ComfyUI, but '--' runs another command instead: put them \
                      after that command"
                .into(),
        });
    }
    Ok(Command::Run { command: Vec::new(), comfyui_args: args })
}

/// Accepts only the given flags (and --help); returns the flags seen.
/// `healthcheck [--ready] [--instance N]`.
fn parse_healthcheck(rest: Vec<OsString>) -> Result<Command, UsageError> {
    let mut rest = rest.into_iter();
    let (mut ready, mut instance, mut others) = (false, None, Vec::new());
    while let Some(arg) = rest.next() {
        match arg.to_str() {
            Some("--ready") => ready = true,
            Some("--instance") => {
                let n = rest.next().and_then(|n| n.to_str().and_then(|n| n.parse().ok()));
                instance = Some(n.ok_or_else(|| UsageError {
                    topic: Topic::Healthcheck,
                    message: "--instance needs a number: 0 for the first ComfyUI, 1 for the second...".into(),
                })?);
            }
            _ => others.push(arg),
        }
    }
    flags(Topic::Healthcheck, others, &[])?;
    Ok(Command::Healthcheck { ready, instance })
}

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
            Topic::ApiKey => "apikey",
            Topic::Gpu => "gpu",
            Topic::Sync => "sync",
            Topic::Token => "token",
            Topic::Rotate => "rotate",
            Topic::Provision => "provision",
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            Topic::Main => HELP_MAIN,
            Topic::Run => HELP_RUN,
            Topic::Healthcheck => HELP_HEALTHCHECK,
            Topic::ApiKey => HELP_APIKEY,
            Topic::Gpu => HELP_GPU,
            Topic::Sync => HELP_SYNC,
            Topic::Token => HELP_TOKEN,
            Topic::Rotate => HELP_ROTATE,
            Topic::Provision => HELP_PROVISION,
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
  comfy-init [run] [COMFYUI FLAGS...]    start ComfyUI as PID 1; flags that are not comfy-init's
                                         own go to ComfyUI: docker run IMAGE --cpu --preview-method auto
  comfy-init [run] -- COMMAND ARGS...    supervise COMMAND instead of ComfyUI
  comfy-init healthcheck                 Docker HEALTHCHECK: exit 0 healthy, 1 unhealthy
  comfy-init gpu [--json]                GPU and PyTorch report and verdict
  comfy-init sync [--dry-run]            reconcile .env and login/PASSWORD once
  comfy-init token                       print the API bearer token
  comfy-init rotate                      set a new random password
  comfy-init apikey add NAME [--expires 90d] [--read-only] | list | revoke NAME
                                         API keys apart from the password (printed once)
  comfy-init provision [--check] [--manifest PATH]
                                         models and custom nodes from a manifest (pre-start hook)
  comfy-init --help | --version          (every subcommand takes --help)

Settings (environment; an invalid value stops comfy-init naming the variable):
  ComfyUI
    COMFYUI_DIR=/workspace/ComfyUI       ComfyUI's folder (main.py, login/PASSWORD)
    COMFYUI_PORT=8188                    port ComfyUI listens on; the healthcheck asks 127.0.0.1:PORT
    COMFYUI_ARGS (or CLI_ARGS)           extra flags for ComfyUI, split on whitespace
    COMFYUI_PYTHON=python3               ComfyUI's interpreter
  Login (ComfyUI-Login)
    COMFYUI_PASSWORD                     the password; COMFYUI_PASSWORD_FILE: a secret file holding it
                                         (precedence: the file, then .env, then the environment)
    COMFYUI_USERNAME=admin               the username
    COMFYUI_BEARER_TOKEN                 written back for API clients; reused when it verifies
    COMFY_INIT_ENV_FILE=/workspace/.env  the live .env (mount its folder, not the file)
    COMFY_INIT_AUTH=on                   off: no credential handling (ComfyUI unprotected)
    COMFY_INIT_GUEST_MODE=warn           login/GUEST_MODE: warn, or refuse to start
    COMFY_INIT_COMPANION=on              the node that reloads a new token in place, hides it in logs
    COMFY_INIT_ON_TOKEN_CHANGE=reload    reload (restart as the fallback) or restart
  GPU
    COMFY_INIT_GPU=require               require (no usable GPU: exit 69), warn, off
    COMFY_INIT_MIN_VRAM_GB               minimum total VRAM
    COMFY_INIT_GPU_SELECT                a card index, UUID or best: ComfyUI's CUDA_VISIBLE_DEVICES
    COMFY_INIT_NVML_LIB                  path of libnvidia-ml.so.1
    COMFY_INIT_GPU_TIMEOUT=30s           how long NVML may take (a hung driver is killed)
    COMFY_INIT_NVML_HELPER               path of comfy-init-nvml (default: beside comfy-init)
    CUDA_VERSION                         the image's CUDA (nvidia/cuda images set it)
  Process
    PUID, PGID                           run ComfyUI as this user; what we create is theirs
    COMFY_INIT_CHOWN=on                  give output/ input/ user/ temp/ login/ to PUID (recursive, off)
    COMFY_INIT_PRE_START=/config/pre-start.d  executables run before ComfyUI, in name order, once
    COMFY_INIT_PRE_START_FAILURE=stop    a failing hook stops the start; warn goes on
    COMFY_INIT_PROVISION=/config/provision.toml  the manifest of `comfy-init provision`
    COMFY_INIT_PROVISION_PROGRESS=10s    time between two progress lines of a download
    COMFY_INIT_STOP_SIGNAL=SIGINT        sent to ComfyUI's group on stop (its clean stop)
    COMFY_INIT_STOP_TIMEOUT=8s           grace before SIGKILL (keep it under Docker's 10 s)
    COMFY_INIT_RESTART=on-failure        on-failure, always, never
    COMFY_INIT_HEALTH_TIMEOUT=5s         deadline of the whole healthcheck
    RUST_LOG=info                        log level (debug shows every signal and file event)

Exit codes: the child's (128+N: killed by signal N; 137: SIGKILLed after the grace),
126/127 command not executable/not found, 2 bad command line, 69 GPU preflight failed,
78 bad configuration or refused credentials; healthcheck 0/1; gpu 0 policy met, 1 not.
";

const HELP_RUN: &str = "\
Usage: comfy-init [run] [COMFYUI FLAGS...]
       comfy-init [run] -- COMMAND ARGS...

Checks the GPU and PyTorch, makes the credentials agree, then runs ComfyUI
($COMFYUI_PYTHON $COMFYUI_DIR/main.py --listen 0.0.0.0 --port $COMFYUI_PORT $COMFYUI_ARGS, then
the COMFYUI FLAGS given here), or COMMAND, in its own process group: reaps every zombie, forwards
signals to the group, applies a new password (in place, or by a restart), restarts after crashes
($COMFY_INIT_RESTART, default on-failure: 1 s doubling to 30 s, 5 failures in 5 min and it gives
up). On SIGTERM/SIGINT/SIGQUIT it sends $COMFY_INIT_STOP_SIGNAL (SIGINT), waits
$COMFY_INIT_STOP_TIMEOUT (8s), then SIGKILLs the group, and exits with the child's status (128+N
for signal N). `comfy-init --help` lists every setting and exit code.
";

const HELP_HEALTHCHECK: &str = "\
Usage: comfy-init healthcheck [--ready] [--instance N]

Docker HEALTHCHECK target (liveness). GETs /system_stats on 127.0.0.1:$COMFYUI_PORT with the
bearer token, then checks that requests without a token are refused. Prints one line; exits 0
(healthy) or 1 (unhealthy), never anything else. Deadline: $COMFY_INIT_HEALTH_TIMEOUT (5s).

--ready (readiness: send traffic?): also fails while comfy-init starts, reloads, restarts,
drains or stops ComfyUI, while a custom node failed to import, and while more prompts wait
than $COMFY_INIT_MAX_QUEUE.

With several ComfyUI instances (COMFY_INIT_INSTANCES) every one is checked, and the line names
the first that fails with its port and card; --instance N checks only instance N (a load
balancer's readiness per port).
";

const HELP_APIKEY: &str = "\
Usage: comfy-init apikey add NAME [--expires 90d|12h] [--read-only]
       comfy-init apikey list
       comfy-init apikey revoke NAME

API keys for ComfyUI's API, apart from the password: each client its own, revocable alone, kept
across password changes. `add` prints the new key once (cik_ + 64 hex digits); only its SHA-256
digest is kept, in login/API_KEYS. Clients send it as `Authorization: Bearer KEY` (websockets:
?token=KEY). A read-only key gets GET and the websocket only. A change applies within a second,
without a restart. `list` never shows a key.
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

const HELP_PROVISION: &str = "\
Usage: comfy-init provision [--check] [--manifest PATH]

Brings the models and custom nodes the manifest names ($COMFY_INIT_PROVISION, default
/config/provision.toml; TOML): models downloaded by aria2c into $COMFYUI_DIR/models/DIR/FILE
(resumed, and renamed into place only once complete and, when the manifest gives a sha256,
verified against it; those already verified cost a stat, through
models/.comfy-init-provision.json), custom nodes checked out with
git at their pinned commit or tag into $COMFYUI_DIR/custom_nodes/NAME, their requirements.txt
installed with $COMFYUI_PYTHON -m pip. The image's pre-start hook 20-provision runs it at each
container start when the manifest exists.

--check (or --dry-run) says what would be done, without the network, writing nothing.
Exit codes: 0 done (or checked), 1 a download, a hash or a node failed, 78 the manifest cannot
be used (the message names the file, the line and the key).
";

const HELP_ROTATE: &str = "\
Usage: comfy-init rotate

Generates a new random password, writes it to the .env file (replacing COMFYUI_PASSWORD) and its
hash to login/PASSWORD, and prints it once. A running comfy-init applies the new token.
";

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from).collect())
    }

    #[test]
    fn no_arguments_runs_comfyui() {
        assert_eq!(parse_strs(&[]), Ok(Command::Run { command: vec![], comfyui_args: vec![] }));
    }

    #[test]
    fn command_after_double_dash() {
        let want = Command::Run { command: vec!["sleep".into(), "1".into()], comfyui_args: vec![] };
        assert_eq!(parse_strs(&["--", "sleep", "1"]), Ok(want));
        let want = Command::Run { command: vec!["sleep".into(), "--".into()], comfyui_args: vec![] };
        assert_eq!(parse_strs(&["run", "--", "sleep", "--"]), Ok(want));
    }

    #[test]
    fn bare_command_is_run() {
        let want = Command::Run { command: vec!["python".into(), "main.py".into()], comfyui_args: vec![] };
        assert_eq!(parse_strs(&["python", "main.py"]), Ok(want));
    }

    #[test]
    fn flags_that_are_not_ours_go_to_comfyui() {
        let flags = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let want = Command::Run { command: vec![], comfyui_args: flags(&["--cpu", "--preview-method", "auto"]) };
        assert_eq!(parse_strs(&["--cpu", "--preview-method", "auto"]), Ok(want.clone()));
        assert_eq!(parse_strs(&["run", "--cpu", "--preview-method", "auto"]), Ok(want));
        assert_eq!(parse_strs(&["--help"]), Ok(Command::Help(Topic::Main)));
        assert_eq!(parse_strs(&["--version"]), Ok(Command::Version));
        assert!(parse_strs(&["--cpu", "--", "python"]).unwrap_err().message.contains("after that command"));
    }

    #[test]
    fn apikey_subcommands() {
        let add = |name: &str, expires: Option<&str>, read_only| {
            Ok(Command::ApiKey(ApiKeyCommand::Add { name: name.into(), expires: expires.map(Into::into), read_only }))
        };
        assert_eq!(parse_strs(&["apikey", "add", "ci"]), add("ci", None, false));
        assert_eq!(
            parse_strs(&["apikey", "add", "ci", "--expires", "90d", "--read-only"]),
            add("ci", Some("90d"), true)
        );
        assert_eq!(parse_strs(&["apikey", "list"]), Ok(Command::ApiKey(ApiKeyCommand::List)));
        assert_eq!(
            parse_strs(&["apikey", "revoke", "ci"]),
            Ok(Command::ApiKey(ApiKeyCommand::Revoke { name: "ci".into() }))
        );
        for bad in [
            &["apikey"][..],
            &["apikey", "add"],
            &["apikey", "add", "--read-only"],
            &["apikey", "add", "x", "--expires"],
        ] {
            assert!(parse_strs(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_help_is_complete_without_the_readme() {
        assert!(!HELP_MAIN.contains("README"));
        for setting in [
            "PUID",
            "PGID",
            "COMFYUI_PASSWORD",
            "COMFYUI_PASSWORD_FILE",
            "COMFY_INIT_GPU_SELECT",
            "COMFY_INIT_STOP_TIMEOUT",
        ] {
            assert!(HELP_MAIN.contains(setting), "{setting}");
        }
        for code in ["126/127", " 2 ", "69", "78"] {
            assert!(HELP_MAIN.contains(code), "{code}");
        }
    }

    #[test]
    fn each_subcommand_takes_only_its_own_flags() {
        assert_eq!(parse_strs(&["gpu", "--json"]), Ok(Command::Gpu { json: true }));
        assert_eq!(parse_strs(&["sync", "--dry-run"]), Ok(Command::Sync { dry_run: true }));
        assert_eq!(parse_strs(&["healthcheck"]), Ok(Command::Healthcheck { ready: false, instance: None }));
        assert_eq!(parse_strs(&["healthcheck", "--ready"]), Ok(Command::Healthcheck { ready: true, instance: None }));
        assert_eq!(
            parse_strs(&["healthcheck", "--instance", "2", "--ready"]),
            Ok(Command::Healthcheck { ready: true, instance: Some(2) })
        );
        assert!(parse_strs(&["healthcheck", "--instance", "x"]).is_err());
        let err = parse_strs(&["healthcheck", "--nope"]).unwrap_err();
        assert_eq!(err.topic, Topic::Healthcheck);
        assert!(err.message.contains("--nope"));
        assert!(is_help_request(&parse_strs(&["token", "--help"]).unwrap_err()));
        assert_eq!(parse_strs(&["provision"]), Ok(Command::Provision { check: false, manifest: None }));
        assert_eq!(
            parse_strs(&["provision", "--check", "--manifest", "/m.toml"]),
            Ok(Command::Provision { check: true, manifest: Some("/m.toml".into()) })
        );
        assert!(parse_strs(&["provision", "--manifest"]).is_err());
        assert!(parse_strs(&["provision", "--nope"]).unwrap_err().message.contains("--nope"));
    }
}
