//! Settings from the environment, validated once. Every error names the variable, the value and
//! what would be accepted.

use std::path::PathBuf;
use std::time::Duration;

use crate::credentials;
use crate::gpu::{GpuPolicy, GpuSettings};
use crate::privileges::Chown;
use crate::supervisor::{self, policy::RestartMode, signals::parse_signal};

/// A configuration error: the message is complete and meant for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// How settings are looked up: the process environment in production, a map in tests.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Everything comfy-init takes from the environment, read and validated once, in one place.
/// The other modules take their part of it and read no variable themselves.
#[derive(Debug, Clone)]
pub struct Settings {
    pub comfyui: ComfyUi,
    pub supervisor: supervisor::Settings,
    /// `COMFY_INIT_AUTH`: manage ComfyUI-Login's credentials (default) or be a plain init.
    pub auth: bool,
    pub credentials: credentials::Settings,
    /// `COMFY_INIT_GUEST_MODE`: what a `login/GUEST_MODE` file gets, a warning or a refusal.
    pub guest_mode: GuestMode,
    /// `COMFY_INIT_COMPANION`: install the companion node (default on).
    pub companion: bool,
    /// `COMFY_INIT_PASSWORD_TOKEN`: ComfyUI-Login's token (the password's hash) is an API
    /// credential (default on); off: API keys are the only one.
    pub password_token: bool,
    /// `COMFY_INIT_ON_TOKEN_CHANGE`: a new token is reloaded in place (default, restart as the
    /// fallback) or always restarts ComfyUI.
    pub on_token_change: OnTokenChange,
    pub gpu: GpuSettings,
    /// `COMFY_INIT_HEALTH_TIMEOUT`: the hard deadline of the whole healthcheck.
    pub health_timeout: Duration,
    /// `PUID`/`PGID`: ComfyUI runs as this user, and owns what we create.
    pub owner: Option<(u32, u32)>,
    /// `COMFY_INIT_CHOWN`: how ComfyUI's folders are given to PUID:PGID.
    pub chown: Chown,
    /// `COMFY_INIT_PRE_START`: the folders of executables run before ComfyUI (once a start),
    /// separated by ':' like PATH (the image ships its own hooks in a folder before the user's).
    pub pre_start: Vec<PathBuf>,
    /// `COMFY_INIT_PROVISION` and `COMFY_INIT_PROVISION_PROGRESS`: `comfy-init provision`.
    pub provision: crate::provision::Settings,
    /// `COMFY_INIT_RUN_DIR`: where PID 1 publishes its phase for `healthcheck --ready`.
    pub run_dir: PathBuf,
    /// `COMFY_INIT_MAX_QUEUE`: `healthcheck --ready` fails while more prompts wait than this.
    pub max_queue: Option<usize>,
}

/// ComfyUI-Login's guest mode (a `login/GUEST_MODE` file) lets anyone in without a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMode {
    /// Start, with a warning at start and in the healthcheck's line (default).
    Warn,
    /// Do not start ComfyUI while the file exists; the healthcheck says unhealthy.
    Refuse,
}

/// What a new token does to the running ComfyUI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTokenChange {
    /// Through the companion node, proven from outside; a restart when that cannot be done.
    Reload,
    Restart,
}

/// Where ComfyUI is and how it is started when no command is given.
#[derive(Debug, Clone)]
pub struct ComfyUi {
    pub dir: PathBuf,
    pub port: u16,
    pub args: Vec<String>,
    pub python: String,
}

impl Settings {
    pub fn from_lookup(get: Lookup) -> Result<Settings, ConfigError> {
        let owner = owner(get)?;
        Ok(Settings {
            comfyui: ComfyUi {
                dir: comfyui_dir(get),
                port: comfyui_port(get)?,
                args: get("COMFYUI_ARGS")
                    .or_else(|| get("CLI_ARGS"))
                    .map(|v| v.split_whitespace().map(String::from).collect())
                    .unwrap_or_default(),
                python: get("COMFYUI_PYTHON").unwrap_or_else(|| "python3".into()),
            },
            supervisor: supervisor_settings(get)?,
            auth: auth_enabled(get)?,
            credentials: credential_settings(get, owner),
            guest_mode: guest_mode(get)?,
            companion: on_off(get, "COMFY_INIT_COMPANION")?,
            password_token: on_off(get, "COMFY_INIT_PASSWORD_TOKEN")?,
            on_token_change: on_token_change(get)?,
            gpu: gpu_settings(get, owner)?,
            health_timeout: health_timeout(get)?,
            owner,
            pre_start: get("COMFY_INIT_PRE_START")
                .unwrap_or_else(|| "/config/pre-start.d".into())
                .split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .collect(),
            provision: provision_settings(get)?,
            run_dir: get("COMFY_INIT_RUN_DIR").map(PathBuf::from).unwrap_or_else(default_run_dir),
            max_queue: match get("COMFY_INIT_MAX_QUEUE") {
                None => None,
                Some(v) => Some(v.trim().parse().map_err(|_| {
                    ConfigError(format!("COMFY_INIT_MAX_QUEUE='{v}' is not a number of prompts (0 or more)"))
                })?),
            },
            chown: match get("COMFY_INIT_CHOWN").as_deref() {
                None | Some("on") => Chown::Folders,
                Some("recursive") => Chown::Recursive,
                Some("off") => Chown::Off,
                Some(v) => {
                    return Err(ConfigError(format!(
                        "COMFY_INIT_CHOWN='{v}' is not valid: use on (the folders ComfyUI writes), recursive \
                         (and their content) or off"
                    )))
                }
            },
        })
    }

    /// From the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_lookup(&process_env)
    }
}

impl ComfyUi {
    /// The command run when none is given: ComfyUI's main.py, listening on all interfaces.
    pub fn default_command(&self) -> Vec<std::ffi::OsString> {
        let mut cmd: Vec<std::ffi::OsString> = vec![
            self.python.clone().into(),
            self.dir.join("main.py").into(),
            "--listen".into(),
            "0.0.0.0".into(),
            "--port".into(),
            self.port.to_string().into(),
        ];
        cmd.extend(self.args.iter().map(Into::into));
        cmd
    }
}

/// The origin of `--enable-cors-header` among ComfyUI's flags (bare: `*`), in any spelling:
/// ComfyUI-Login then only looks at tokens on requests that carry it.
pub fn cors_origin(args: &[String]) -> Option<String> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if let Some(value) = arg.strip_prefix("--enable-cors-header=") {
            return Some(value.to_string());
        }
        if arg == "--enable-cors-header" {
            let value = args.next().filter(|v| !v.starts_with('-'));
            return Some(value.cloned().unwrap_or_else(|| "*".into()));
        }
    }
    None
}

/// `/run/comfy-init` for root; a container run as one user (`--user 1000:1000`, Kubernetes'
/// `runAsUser`) cannot make that, and gets a folder of its own in the temporary folder (its
/// healthcheck, an exec as the same user, computes the same).
fn default_run_dir() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    match unsafe { libc::geteuid() } {
        0 => "/run/comfy-init".into(),
        uid => std::env::temp_dir().join(format!("comfy-init-{uid}")),
    }
}

fn supervisor_settings(get: Lookup) -> Result<supervisor::Settings, ConfigError> {
    let stop_signal = match get("COMFY_INIT_STOP_SIGNAL") {
        None => libc::SIGINT,
        Some(v) => parse_signal(&v).ok_or_else(|| {
            ConfigError(format!(
                "COMFY_INIT_STOP_SIGNAL='{v}' is not a signal: use a name like SIGINT or SIGTERM, or a number"
            ))
        })?,
    };
    let stop_timeout = match get("COMFY_INIT_STOP_TIMEOUT") {
        None => Duration::from_secs(8),
        Some(v) => parse_duration("COMFY_INIT_STOP_TIMEOUT", &v)?,
    };
    let restart = match get("COMFY_INIT_RESTART").as_deref() {
        None | Some("on-failure") => RestartMode::OnFailure,
        Some("always") => RestartMode::Always,
        Some("never") => RestartMode::Never,
        Some(v) => {
            return Err(ConfigError(format!(
                "COMFY_INIT_RESTART='{v}' is not a restart policy: use on-failure, always or never"
            )))
        }
    };
    let stop_on_hook_failure = match get("COMFY_INIT_PRE_START_FAILURE").as_deref() {
        None | Some("stop") => true,
        Some("warn") => false,
        Some(v) => {
            return Err(ConfigError(format!("COMFY_INIT_PRE_START_FAILURE='{v}' is not valid: use stop or warn")))
        }
    };
    // Off unless asked for: a drain longer than what the engine allows before its own SIGKILL
    // (Docker: 10 s unless `--stop-timeout` / `stop_grace_period`) would lose ComfyUI's clean stop.
    let drain_timeout = match get("COMFY_INIT_DRAIN_TIMEOUT") {
        None => Duration::ZERO,
        Some(v) => parse_duration("COMFY_INIT_DRAIN_TIMEOUT", &v)?,
    };
    // Off unless asked for: each check is a process and a few requests, and Docker or Kubernetes
    // may already act on the healthcheck.
    let watchdog = match get("COMFY_INIT_WATCHDOG") {
        None => None,
        Some(v) => match parse_duration("COMFY_INIT_WATCHDOG", &v)? {
            d if d.is_zero() => None,
            d if d < Duration::from_secs(1) => {
                return Err(ConfigError(format!(
                    "COMFY_INIT_WATCHDOG='{v}' is too often: a liveness check every second at most (e.g. 60s; 0 = off)"
                )))
            }
            d => Some(d),
        },
    };
    let watchdog_failures = match get("COMFY_INIT_WATCHDOG_FAILURES") {
        None => 3,
        Some(v) => v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            ConfigError(format!("COMFY_INIT_WATCHDOG_FAILURES='{v}' is not a count of failures (1 or more)"))
        })?,
    };
    Ok(supervisor::Settings {
        stop_signal,
        stop_timeout,
        restart,
        stop_on_hook_failure,
        drain_timeout,
        watchdog,
        watchdog_failures,
    })
}

fn comfyui_dir(get: Lookup) -> PathBuf {
    get("COMFYUI_DIR").map(PathBuf::from).unwrap_or_else(|| "/workspace/ComfyUI".into())
}

fn comfyui_port(get: Lookup) -> Result<u16, ConfigError> {
    match get("COMFYUI_PORT") {
        None => Ok(8188),
        Some(v) => {
            v.trim().parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                ConfigError(format!("COMFYUI_PORT='{v}' is not a TCP port: use a number from 1 to 65535"))
            })
        }
    }
}

/// `COMFY_INIT_AUTH`: true = manage credentials (default), false = plain init.
fn auth_enabled(get: Lookup) -> Result<bool, ConfigError> {
    on_off(get, "COMFY_INIT_AUTH")
}

/// A switch that is on unless set to `off`.
fn on_off(get: Lookup, var: &str) -> Result<bool, ConfigError> {
    match get(var).as_deref() {
        None | Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(v) => Err(ConfigError(format!("{var}='{v}' is not valid: use on or off"))),
    }
}

fn on_token_change(get: Lookup) -> Result<OnTokenChange, ConfigError> {
    match get("COMFY_INIT_ON_TOKEN_CHANGE").as_deref() {
        None | Some("reload") => Ok(OnTokenChange::Reload),
        Some("restart") => Ok(OnTokenChange::Restart),
        Some(v) => Err(ConfigError(format!(
            "COMFY_INIT_ON_TOKEN_CHANGE='{v}' is not valid: use reload (falls back to a restart) or restart"
        ))),
    }
}

fn guest_mode(get: Lookup) -> Result<GuestMode, ConfigError> {
    match get("COMFY_INIT_GUEST_MODE").as_deref() {
        None | Some("warn") => Ok(GuestMode::Warn),
        Some("refuse") => Ok(GuestMode::Refuse),
        Some(v) => Err(ConfigError(format!("COMFY_INIT_GUEST_MODE='{v}' is not valid: use warn or refuse"))),
    }
}

/// PUID/PGID as a (uid, gid) pair; PGID defaults to PUID. 4294967295 is `(uid_t)-1`, which
/// chown and setuid read as "no change": not an id.
fn owner(get: Lookup) -> Result<Option<(u32, u32)>, ConfigError> {
    let num = |name: &str| -> Result<Option<u32>, ConfigError> {
        get(name)
            .map(|v| {
                v.trim().parse::<u32>().ok().filter(|id| *id != u32::MAX).ok_or_else(|| {
                    ConfigError(format!(
                        "{name}='{v}' is not a usable numeric id: use 0 to 4294967294, e.g. {name}=1000"
                    ))
                })
            })
            .transpose()
    };
    match (num("PUID")?, num("PGID")?) {
        (Some(u), g) => Ok(Some((u, g.unwrap_or(u)))),
        (None, Some(_)) => Err(ConfigError("PGID is set without PUID: set both (e.g. PUID=1000 PGID=1000)".into())),
        (None, None) => Ok(None),
    }
}

fn credential_settings(get: Lookup, owner: Option<(u32, u32)>) -> credentials::Settings {
    credentials::Settings {
        comfyui_dir: comfyui_dir(get),
        env_file: get("COMFY_INIT_ENV_FILE").map(PathBuf::from).unwrap_or_else(|| "/workspace/.env".into()),
        password_file: get("COMFYUI_PASSWORD_FILE").map(PathBuf::from),
        env_password: get(credentials::KEY_PASSWORD),
        env_username: get(credentials::KEY_USERNAME),
        env_token: get(credentials::KEY_TOKEN),
        api_keys_file: get("COMFYUI_API_KEYS_FILE").map(PathBuf::from),
        owner,
    }
}

/// COMFY_INIT_GPU, COMFY_INIT_MIN_VRAM_GB, COMFY_INIT_NVML_LIB, CUDA_VERSION. Blank values mean
/// the default. `owner` (PUID:PGID) is whom the PyTorch probe runs as.
fn gpu_settings(get: Lookup, owner: Option<(u32, u32)>) -> Result<GpuSettings, ConfigError> {
    use crate::gpu::{ENV_CUDA_VERSION, ENV_MIN_VRAM, ENV_NVML_LIB, ENV_POLICY, ENV_TIMEOUT};
    let non_empty = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    let policy = match non_empty(ENV_POLICY) {
        None => GpuPolicy::Require,
        Some(v) => GpuPolicy::parse(&v).ok_or_else(|| {
            ConfigError(format!("{ENV_POLICY}={v:?} is not valid; accepted values: require (default), warn, off"))
        })?,
    };
    let min_vram_gb = match non_empty(ENV_MIN_VRAM) {
        None => None,
        Some(v) => {
            let n = v.trim().parse::<f64>().ok().filter(|n| n.is_finite() && *n >= 0.0).ok_or_else(|| {
                ConfigError(format!(
                    "{ENV_MIN_VRAM}={v:?} is not valid; accepted values: a number of GiB of VRAM (0 or more), \
                     e.g. 8 or 11.5"
                ))
            })?;
            (n > 0.0).then_some(n)
        }
    };
    let timeout = positive_duration(ENV_TIMEOUT, non_empty(ENV_TIMEOUT), crate::gpu::model::TIMEOUT)?;
    let instances = match non_empty("COMFY_INIT_INSTANCES") {
        None => crate::gpu::Instances::One,
        Some(v) => crate::gpu::Instances::parse(&v).ok_or_else(|| {
            ConfigError(format!(
                "COMFY_INIT_INSTANCES='{v}' is not valid: use 1 (one ComfyUI), per-gpu (one per usable card) or a \
                 list of GPU indexes or UUIDs (0,1 or GPU-...,GPU-...); for one ComfyUI on one card, \
                 COMFY_INIT_GPU_SELECT=<index>"
            ))
        })?,
    };
    if instances != crate::gpu::Instances::One && non_empty("COMFY_INIT_GPU_SELECT").is_some() {
        return Err(ConfigError(
            "COMFY_INIT_INSTANCES and COMFY_INIT_GPU_SELECT both choose cards: keep one (a list in \
             COMFY_INIT_INSTANCES runs one ComfyUI on each card named)"
                .into(),
        ));
    }
    Ok(GpuSettings {
        policy,
        min_vram_gb,
        timeout,
        nvml_lib: non_empty(ENV_NVML_LIB).map(|v| PathBuf::from(v.trim())),
        image_cuda_version: non_empty(ENV_CUDA_VERSION).map(|v| v.trim().to_string()),
        visible_devices: get("NVIDIA_VISIBLE_DEVICES"),
        torch_probe: Some(torch_probe(get, owner)),
        instances,
        select: match non_empty("COMFY_INIT_GPU_SELECT") {
            None => None,
            Some(v) => Some(crate::gpu::Select::parse(&v).ok_or_else(|| {
                ConfigError(format!(
                    "COMFY_INIT_GPU_SELECT='{v}' is not valid: use a GPU index (0, 1, ...), its UUID \
                     (GPU-..., see 'comfy-init gpu') or best (the covered card with the most free VRAM)"
                ))
            })?),
        },
    })
}

/// ComfyUI's interpreter, asked as ComfyUI's user with only the variables that decide what it
/// imports (issue 22: never the credentials, never as root when PUID is set).
fn torch_probe(get: Lookup, owner: Option<(u32, u32)>) -> crate::gpu::TorchProbe {
    crate::gpu::TorchProbe {
        python: get("COMFYUI_PYTHON").unwrap_or_else(|| "python3".into()),
        dir: comfyui_dir(get),
        user: owner,
        env: crate::gpu::torch::PROBE_ENV.iter().filter_map(|&name| Some((name.to_string(), get(name)?))).collect(),
    }
}

pub const ENV_HEALTH_TIMEOUT: &str = "COMFY_INIT_HEALTH_TIMEOUT";

fn health_timeout(get: Lookup) -> Result<Duration, ConfigError> {
    positive_duration(ENV_HEALTH_TIMEOUT, get(ENV_HEALTH_TIMEOUT), Duration::from_secs(5))
}

/// `comfy-init provision`'s settings; ComfyUI's folder and Python are the ones it starts with.
fn provision_settings(get: Lookup) -> Result<crate::provision::Settings, ConfigError> {
    let var = "COMFY_INIT_PROVISION_PROGRESS";
    let every = positive_duration(var, get(var), Duration::from_secs(10))?;
    Ok(crate::provision::Settings {
        manifest: get("COMFY_INIT_PROVISION").map(PathBuf::from).unwrap_or_else(|| "/config/provision.toml".into()),
        // aria2c counts its summary interval in whole seconds.
        progress_every: every.as_secs().clamp(1, 3600) as u32,
        comfyui_dir: comfyui_dir(get),
        python: get("COMFYUI_PYTHON").unwrap_or_else(|| "python3".into()),
    })
}

/// A deadline from `var`: `default` when unset, never 0 (a deadline of 0 could never be met).
fn positive_duration(var: &str, value: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    match parse_duration(var, &v)? {
        d if d.is_zero() => Err(ConfigError(format!("{var}='{v}' must be more than 0"))),
        d => Ok(d),
    }
}

/// `8`, `8s`, `1500ms`, `2.5s`, `1m`.
pub fn parse_duration(var: &str, value: &str) -> Result<Duration, ConfigError> {
    let v = value.trim();
    let (number, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else {
        (v, 1.0)
    };
    number
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0 && *n * scale <= 86_400.0)
        .map(|n| Duration::from_secs_f64(n * scale))
        .ok_or_else(|| {
            ConfigError(format!(
                "{var}='{value}' is not a duration: use seconds like 8, 8s, 2.5s, or milliseconds like 1500ms"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_milliseconds_and_minutes() {
        let d = |v| parse_duration("X", v);
        assert_eq!(d("8"), Ok(Duration::from_secs(8)));
        assert_eq!(d("8s"), Ok(Duration::from_secs(8)));
        assert_eq!(d("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(d("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        for bad in ["", "-1", "abc", "8h", "1e9"] {
            let err = d(bad).unwrap_err();
            assert!(err.0.starts_with("X='"), "{err}");
        }
    }

    fn lookup(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn defaults_need_no_variable() {
        let s = Settings::from_lookup(&lookup(&[])).unwrap();
        assert_eq!(s.supervisor.stop_signal, libc::SIGINT);
        assert_eq!(s.supervisor.stop_timeout, Duration::from_secs(8));
        assert_eq!(s.supervisor.restart, RestartMode::OnFailure);
        assert_eq!(s.comfyui.port, 8188);
        assert!(s.auth);
        assert_eq!(s.gpu.policy, GpuPolicy::Require);
        assert_eq!(s.health_timeout, Duration::from_secs(5));
        assert_eq!(s.owner, None);
        assert_eq!(s.credentials.env_file, PathBuf::from("/workspace/.env"));
    }

    #[test]
    fn every_invalid_value_is_refused_naming_the_variable() {
        for (var, value) in [
            ("COMFY_INIT_RESTART", "sometimes"),
            ("COMFYUI_PORT", "99999"),
            ("COMFY_INIT_STOP_SIGNAL", "SIGNOPE"),
            ("COMFY_INIT_STOP_TIMEOUT", "soon"),
            ("COMFY_INIT_AUTH", "maybe"),
            ("COMFY_INIT_GUEST_MODE", "allow"),
            ("COMFY_INIT_COMPANION", "maybe"),
            ("COMFY_INIT_ON_TOKEN_CHANGE", "hot"),
            ("COMFY_INIT_GPU", "sometimes"),
            ("COMFY_INIT_MIN_VRAM_GB", "lots"),
            ("COMFY_INIT_GPU_SELECT", "the big one"),
            ("COMFY_INIT_CHOWN", "yes"),
            ("COMFY_INIT_PRE_START_FAILURE", "ignore"),
            ("COMFY_INIT_HEALTH_TIMEOUT", "0"),
            ("COMFY_INIT_GPU_TIMEOUT", "0"),
            ("COMFY_INIT_GPU_TIMEOUT", "soon"),
            ("PUID", "4294967295"),
            ("PUID", "root"),
        ] {
            let pairs: &'static [(&str, &str)] = Box::leak(Box::new([(var, value)]));
            let err = Settings::from_lookup(&lookup(pairs)).unwrap_err();
            assert!(err.0.contains(var), "{var}={value}: {err}");
        }
        let err = Settings::from_lookup(&lookup(&[("PGID", "10")])).unwrap_err();
        assert!(err.0.contains("PGID is set without PUID"), "{err}");
    }

    #[test]
    fn the_cors_origin_is_read_from_comfyui_args_in_every_spelling() {
        let origin = |args: &'static str| {
            let pairs: &'static [(&str, &str)] = Box::leak(Box::new([("COMFYUI_ARGS", args)]));
            cors_origin(&Settings::from_lookup(&lookup(pairs)).unwrap().comfyui.args)
        };
        assert_eq!(
            origin("--cpu --enable-cors-header https://app.example.com"),
            Some("https://app.example.com".into())
        );
        assert_eq!(origin("--enable-cors-header=https://a.example"), Some("https://a.example".into()));
        assert_eq!(origin("--enable-cors-header --cpu"), Some("*".into()));
        assert_eq!(origin("--enable-cors-header"), Some("*".into()));
        assert_eq!(origin("--cpu"), None);
    }

    #[test]
    fn puid_alone_gives_the_group_too() {
        let s = Settings::from_lookup(&lookup(&[("PUID", "1000")])).unwrap();
        assert_eq!(s.owner, Some((1000, 1000)));
        assert_eq!(s.credentials.owner, Some((1000, 1000)));
    }

    #[test]
    fn the_torch_probe_runs_as_puid_with_only_what_decides_the_imports() {
        let s = Settings::from_lookup(&lookup(&[
            ("PUID", "1000"),
            ("PGID", "100"),
            ("COMFYUI_PYTHON", "/venv/bin/python"),
            ("COMFYUI_PASSWORD", "secret"),
            ("COMFYUI_BEARER_TOKEN", "token"),
            ("HOME", "/root"),
            ("PYTHONPATH", "/site"),
            ("PATH", "/venv/bin:/usr/bin"),
        ]))
        .unwrap();
        let probe = s.gpu.torch_probe.unwrap();
        assert_eq!(probe.python, "/venv/bin/python");
        assert_eq!(probe.user, Some((1000, 100)));
        assert_eq!(probe.dir, s.comfyui.dir);
        let names: Vec<&str> = probe.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["PATH", "PYTHONPATH"], "{probe:?}");
        let probe = Settings::from_lookup(&lookup(&[])).unwrap().gpu.torch_probe.unwrap();
        assert_eq!((probe.python.as_str(), probe.user), ("python3", None));
    }

    #[test]
    fn comfyui_args_split_on_whitespace_and_cli_args_is_an_alias() {
        let s = Settings::from_lookup(&lookup(&[("CLI_ARGS", "--cpu  --preview-method auto")])).unwrap();
        assert_eq!(s.comfyui.args, ["--cpu", "--preview-method", "auto"]);
        let cmd = s.comfyui.default_command();
        assert_eq!(cmd[2..6], ["--listen", "0.0.0.0", "--port", "8188"].map(std::ffi::OsString::from));
    }

    fn gpu(pairs: &[(&str, &str)]) -> Result<GpuSettings, ConfigError> {
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        gpu_settings(&move |k| map.get(k).cloned(), None)
    }

    #[test]
    fn gpu_defaults_and_blank_values_are_the_same() {
        let s = gpu(&[]).unwrap();
        assert_eq!(s.policy, GpuPolicy::Require);
        assert_eq!(s.min_vram_gb, None);
        assert_eq!(s.nvml_lib, None);
        assert_eq!(s.image_cuda_version, None);
        let s = gpu(&[
            (crate::gpu::ENV_POLICY, ""),
            (crate::gpu::ENV_MIN_VRAM, " "),
            (crate::gpu::ENV_NVML_LIB, ""),
            (crate::gpu::ENV_CUDA_VERSION, ""),
        ])
        .unwrap();
        assert_eq!(s.policy, GpuPolicy::Require);
        assert_eq!(s.min_vram_gb, None);
        assert_eq!(s.nvml_lib, None);
    }

    #[test]
    fn gpu_values_are_read_trimmed_and_case_insensitive() {
        let s = gpu(&[
            (crate::gpu::ENV_POLICY, " WARN "),
            (crate::gpu::ENV_MIN_VRAM, "11.5"),
            (crate::gpu::ENV_NVML_LIB, "/opt/lib/libnvidia-ml.so.1"),
            (crate::gpu::ENV_CUDA_VERSION, "12.8.1"),
        ])
        .unwrap();
        assert_eq!(s.policy, GpuPolicy::Warn);
        assert_eq!(s.min_vram_gb, Some(11.5));
        assert_eq!(s.nvml_lib, Some(PathBuf::from("/opt/lib/libnvidia-ml.so.1")));
        assert_eq!(s.image_cuda_version.as_deref(), Some("12.8.1"));
        assert_eq!(gpu(&[(crate::gpu::ENV_POLICY, "off")]).unwrap().policy, GpuPolicy::Off);
        assert_eq!(gpu(&[(crate::gpu::ENV_POLICY, "Require")]).unwrap().policy, GpuPolicy::Require);
        assert_eq!(gpu(&[(crate::gpu::ENV_MIN_VRAM, "0")]).unwrap().min_vram_gb, None);
    }

    #[test]
    fn bad_gpu_values_name_the_variable_the_value_and_the_choices() {
        let e = gpu(&[(crate::gpu::ENV_POLICY, "maybe")]).unwrap_err().0;
        assert!(e.contains("COMFY_INIT_GPU") && e.contains("maybe"), "{e}");
        assert!(e.contains("require") && e.contains("warn") && e.contains("off"), "{e}");
        for bad in ["lots", "-1", "NaN", "inf", "8GB"] {
            let e = gpu(&[(crate::gpu::ENV_MIN_VRAM, bad)]).unwrap_err().0;
            assert!(e.contains("COMFY_INIT_MIN_VRAM_GB") && e.contains(bad), "{e}");
            assert!(e.contains("number"), "{e}");
        }
    }
}
