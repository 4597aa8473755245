//! comfy-init's own failures. Each knows its exit code (sysexits.h where one fits, the shell's
//! 126/127 for a command that cannot run); `main.rs` prints it and exits with that code. The
//! messages are complete: what is wrong, where, and what to do.

use crate::config::ConfigError;
use crate::credentials::{Failure, NoToken};
use crate::gpu::PreflightError;
use crate::privileges::ChownError;
use crate::supervisor::child::SpawnError;
use crate::supervisor::hooks::ListError;

pub const EXIT_USAGE: u8 = 2;
pub const EXIT_CONFIG: u8 = 78;
pub const EXIT_GPU: u8 = 69;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that cannot work: the variable, the value and what is accepted.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// COMFY_INIT_PRE_START names a folder that cannot be read.
    #[error(transparent)]
    Hooks(#[from] ListError),
    /// A folder ComfyUI's user cannot be given: the path, and the command that fixes it.
    #[error(transparent)]
    Ownership(#[from] ChownError),
    /// Credentials refused at start-up: the source and the rule; nothing was written. A line
    /// for the operator that `prepare` (main.rs) composes of the refusal and of what it means
    /// there (ComfyUI not started), or of the guest mode's risk and the setting that refuses it.
    #[error("{0}")]
    Credentials(String),
    /// `sync` or `rotate` did not complete.
    #[error(transparent)]
    Reconcile(#[from] Failure),
    /// `token`: PASSWORD holds none.
    #[error(transparent)]
    NoToken(#[from] NoToken),
    /// The GPU preflight failed under `COMFY_INIT_GPU=require`.
    #[error(transparent)]
    Gpu(#[from] PreflightError),
    /// The command could not be started.
    #[error(transparent)]
    Spawn(SpawnError),
    /// Something comfy-init needs from the kernel failed: what it was setting up, and why.
    #[error("cannot {about}: {source}")]
    System { about: &'static str, source: std::io::Error },
    /// Asked to stop (`docker stop`, Ctrl-C) during start-up: ComfyUI was not started.
    #[error(
        "{} during {during}: stopping at once, ComfyUI not started",
        crate::supervisor::signals::signal_name(*signo)
    )]
    Stopped { signo: i32, during: &'static str },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_)
            | Error::Hooks(_)
            | Error::Ownership(_)
            | Error::Credentials(_)
            | Error::Reconcile(_)
            | Error::NoToken(_) => EXIT_CONFIG,
            Error::Gpu(_) => EXIT_GPU,
            Error::Spawn(e) => e.exit_code() as u8,
            Error::System { .. } => 1,
            // As if the child had died of it: 143 for SIGTERM, 130 for SIGINT.
            Error::Stopped { signo, .. } => (128 + signo) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_exit_code() {
        assert_eq!(Error::Config(ConfigError("x".into())).exit_code(), 78);
        assert_eq!(Error::Credentials("x".into()).exit_code(), 78);
        assert_eq!(Error::Gpu(PreflightError::Failed).exit_code(), 69);
        let missing = SpawnError { program: "nope".into(), source: std::io::ErrorKind::NotFound.into() };
        assert_eq!(Error::Spawn(missing).exit_code(), 127);
        let denied = SpawnError { program: "x".into(), source: std::io::ErrorKind::PermissionDenied.into() };
        assert_eq!(Error::Spawn(denied).exit_code(), 126);
        let e = Error::System { about: "set up signal handling", source: std::io::ErrorKind::Other.into() };
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().starts_with("cannot set up signal handling: "));
    }
}
