//! ComfyUI-Manager's restart button: with `__COMFY_CLI_SESSION__` set, the Manager writes
//! `<session>.reboot` and exits 0 instead of re-executing itself in place. We give the child a
//! session path of ours and read that marker when it exits.

use std::path::{Path, PathBuf};

pub const ENV: &str = "__COMFY_CLI_SESSION__";

pub struct Session {
    base: PathBuf,
}

impl Session {
    /// A private folder for the marker, writable by the child's user.
    pub fn create(owner: Option<(u32, u32)>) -> std::io::Result<Session> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!("comfy-init-{}", std::process::id()));
        if !dir.is_dir() {
            std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        let session = Session { base: dir.join("comfyui") };
        session.take_reboot_request(); // a stale marker from an earlier life means nothing
        Ok(session)
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
