//! comfy-init's own failures. Each knows its exit code (sysexits.h where one fits, the shell's
//! 126/127 for a command that cannot run); `main.rs` prints it and exits with that code. The
//! messages are complete: what is wrong, where, and what to do.

use crate::config::ConfigError;
use crate::supervisor::child::SpawnError;

pub const EXIT_USAGE: u8 = 2;
pub const EXIT_CONFIG: u8 = 78;
pub const EXIT_GPU: u8 = 69;

#[derive(Debug)]
pub enum Error {
    /// A setting that cannot work, or a folder ComfyUI's user cannot write: the variable (or
    /// path), the value and what is accepted.
    Config(ConfigError),
    /// Credentials refused: the source and the rule; nothing was written.
    Credentials(String),
    /// The GPU preflight failed under `COMFY_INIT_GPU=require`.
    Gpu(String),
    /// The command could not be started.
    Spawn(SpawnError),
    /// Something comfy-init needs from the kernel failed: what it was setting up, and why.
    System { about: &'static str, source: std::io::Error },
    /// Asked to stop (`docker stop`, Ctrl-C) during start-up: ComfyUI was not started.
    Stopped { signo: i32, during: &'static str },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Credentials(_) => EXIT_CONFIG,
            Error::Gpu(_) => EXIT_GPU,
            Error::Spawn(e) => e.exit_code() as u8,
            Error::System { .. } => 1,
            // As if the child had died of it: 143 for SIGTERM, 130 for SIGINT.
            Error::Stopped { signo, .. } => (128 + signo) as u8,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(e) => write!(f, "{e}"),
            Error::Credentials(why) | Error::Gpu(why) => f.write_str(why),
            Error::Spawn(e) => write!(f, "{e}"),
            Error::System { about, source } => write!(f, "cannot {about}: {source}"),
            Error::Stopped { signo, during } => write!(
                f,
                "{} during {during}: stopping at once, ComfyUI not started",
                crate::supervisor::signals::signal_name(*signo)
            ),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_exit_code() {
        assert_eq!(Error::Config(ConfigError("x".into())).exit_code(), 78);
        assert_eq!(Error::Credentials("x".into()).exit_code(), 78);
        assert_eq!(Error::Gpu("x".into()).exit_code(), 69);
        let missing = SpawnError { program: "nope".into(), source: std::io::ErrorKind::NotFound.into() };
        assert_eq!(Error::Spawn(missing).exit_code(), 127);
        let denied = SpawnError { program: "x".into(), source: std::io::ErrorKind::PermissionDenied.into() };
        assert_eq!(Error::Spawn(denied).exit_code(), 126);
        let e = Error::System { about: "set up signal handling", source: std::io::ErrorKind::Other.into() };
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().starts_with("cannot set up signal handling: "));
    }
}
