//! Settings from the environment, validated once. Every error names the variable, the value and
//! what would be accepted.

use std::path::PathBuf;
use std::time::Duration;

use crate::supervisor::policy::RestartMode;

/// A configuration error: the message is complete and meant for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How settings are looked up: the process environment in production, a map in tests.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// What the supervisor needs.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    pub restart: RestartMode,
    pub comfyui_dir: PathBuf,
    pub comfyui_port: u16,
    pub comfyui_args: Vec<String>,
    pub python: String,
}

impl RunSettings {
    pub fn from_lookup(get: Lookup) -> Result<RunSettings, ConfigError> {
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
        Ok(RunSettings {
            stop_signal,
            stop_timeout,
            restart,
            comfyui_dir: comfyui_dir(get),
            comfyui_port: comfyui_port(get)?,
            comfyui_args: get("COMFYUI_ARGS")
                .or_else(|| get("CLI_ARGS"))
                .map(|v| v.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            python: get("COMFYUI_PYTHON").unwrap_or_else(|| "python3".into()),
        })
    }

    /// The command run when none is given: ComfyUI's main.py, listening on all interfaces.
    pub fn default_command(&self) -> Vec<std::ffi::OsString> {
        let mut cmd: Vec<std::ffi::OsString> = vec![
            self.python.clone().into(),
            self.comfyui_dir.join("main.py").into(),
            "--listen".into(),
            "0.0.0.0".into(),
            "--port".into(),
            self.comfyui_port.to_string().into(),
        ];
        cmd.extend(self.comfyui_args.iter().map(Into::into));
        cmd
    }
}

pub fn comfyui_dir(get: Lookup) -> PathBuf {
    get("COMFYUI_DIR").map(PathBuf::from).unwrap_or_else(|| "/workspace/ComfyUI".into())
}

pub fn comfyui_port(get: Lookup) -> Result<u16, ConfigError> {
    match get("COMFYUI_PORT") {
        None => Ok(8188),
        Some(v) => {
            v.trim().parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                ConfigError(format!("COMFYUI_PORT='{v}' is not a TCP port: use a number from 1 to 65535"))
            })
        }
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

/// `SIGINT`, `INT`, `int`, `2`, `SIGRTMIN+3`.
pub fn parse_signal(value: &str) -> Option<i32> {
    let v = value.trim().to_ascii_uppercase();
    if let Ok(n) = v.parse::<i32>() {
        return (1..=libc::SIGRTMAX()).contains(&n).then_some(n);
    }
    let name = v.strip_prefix("SIG").unwrap_or(&v);
    if let Some(offset) = name.strip_prefix("RTMIN+") {
        // Digits only: `+-100` or an offset past SIGRTMAX is no signal (and must not overflow).
        if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n = offset.parse::<i32>().ok()?.checked_add(libc::SIGRTMIN())?;
        return (n <= libc::SIGRTMAX()).then_some(n);
    }
    SIGNAL_NAMES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// The name of a signal for log lines: `SIGINT`, `SIGRTMIN+2`.
pub fn signal_name(sig: i32) -> String {
    if let Some((name, _)) = SIGNAL_NAMES.iter().find(|(_, s)| *s == sig) {
        return format!("SIG{name}");
    }
    if sig >= libc::SIGRTMIN() && sig <= libc::SIGRTMAX() {
        return format!("SIGRTMIN+{}", sig - libc::SIGRTMIN());
    }
    format!("signal {sig}")
}

const SIGNAL_NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
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

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGINT"), Some(libc::SIGINT));
        assert_eq!(parse_signal("term"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGRTMIN+2"), Some(libc::SIGRTMIN() + 2));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("0"), None);
        for bad in ["SIGRTMIN+-100", "SIGRTMIN+2147483647", "RTMIN+", "RTMIN+99", "-2", "SIGRTMIN+ 1"] {
            assert_eq!(parse_signal(bad), None, "{bad}");
        }
        assert_eq!(parse_signal("SIGRTMIN+0"), Some(libc::SIGRTMIN()));
        assert_eq!(parse_signal(&format!("SIGRTMIN+{}", libc::SIGRTMAX() - libc::SIGRTMIN())), Some(libc::SIGRTMAX()));
        assert_eq!(signal_name(libc::SIGUSR2), "SIGUSR2");
        assert_eq!(signal_name(libc::SIGRTMIN() + 1), "SIGRTMIN+1");
    }

    #[test]
    fn run_settings_name_the_variable() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let s = RunSettings::from_lookup(&env(&[])).unwrap();
        assert_eq!(s.stop_signal, libc::SIGINT);
        assert_eq!(s.stop_timeout, Duration::from_secs(8));
        let err = RunSettings::from_lookup(&env(&[("COMFY_INIT_RESTART", "sometimes")])).unwrap_err();
        assert!(err.0.contains("COMFY_INIT_RESTART='sometimes'"));
        let err = RunSettings::from_lookup(&env(&[("COMFYUI_PORT", "99999")])).unwrap_err();
        assert!(err.0.contains("COMFYUI_PORT"));
    }
}
