//! ComfyUI-Manager's restart button: with `__COMFY_CLI_SESSION__` set, the Manager writes
//! `<session>.reboot` and exits 0 instead of re-executing itself in place. We give the child a
//! session path of ours and read that marker when it exits.

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

pub const ENV: &str = "__COMFY_CLI_SESSION__";

pub struct Session {
    base: PathBuf,
}

impl Session {
    /// A private folder for the marker, writable by the child's user. Its name is random: our
    /// pid is 1 in every container, and containers may share a /tmp.
    pub fn create(owner: Option<(u32, u32)>) -> std::io::Result<Session> {
        let mut template = std::env::temp_dir().join("comfy-init-XXXXXX").into_os_string().into_vec();
        template.push(0);
        // SAFETY: a NUL-terminated buffer that mkdtemp fills in place.
        let made = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
        if made.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        template.pop();
        let dir = PathBuf::from(std::ffi::OsString::from_vec(template));
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        Ok(Session { base: dir.join("comfyui") })
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

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(dir) = self.base.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
