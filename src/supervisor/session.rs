//! ComfyUI-Manager's restart button: with `__COMFY_CLI_SESSION__` set, the Manager writes
//! `<session>.reboot` and exits 0 instead of re-executing itself in place. We give the child a
//! session path of ours and read that marker when it exits.

use std::path::{Path, PathBuf};

use rand::Rng;

pub const ENV: &str = "__COMFY_CLI_SESSION__";

pub struct Session {
    base: PathBuf,
}

impl Session {
    /// A session path in the temporary folder, which any user (PUID too) may write. Its name is
    /// random: our pid is 1 in every container, and containers may share a /tmp. Nothing is
    /// created until the Manager writes its marker, so starting and stopping cost nothing.
    /// (No `Default`: every call gives another, random, session.)
    #[allow(clippy::new_without_default)]
    pub fn new() -> Session {
        let name = format!("comfy-init-session-{:016x}", rand::rng().random::<u64>());
        Session { base: std::env::temp_dir().join(name) }
    }

    /// The value for `__COMFY_CLI_SESSION__`.
    pub fn path(&self) -> &Path {
        &self.base
    }

    /// Whether the child asked for a restart; the marker is consumed.
    pub fn take_reboot_request(&self) -> bool {
        let mut marker = self.base.clone().into_os_string();
        marker.push(".reboot");
        std::fs::remove_file(marker).is_ok()
    }
}
