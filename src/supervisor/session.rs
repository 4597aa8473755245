//! The markers a child leaves for us when it exits. ComfyUI-Manager's restart button (both
//! `/manager/reboot` and v2's `/v2/manager/reboot`): with `__COMFY_CLI_SESSION__` set, the
//! Manager writes `<session>.reboot` and exits 0 instead of re-executing itself in place. The
//! companion writes `<session>.fatal` when ComfyUI dies of something a restart cannot cure (issue
//! 24): one line, `assets <kind>`, `port <n>` or `module <name>`. We give the child a session
//! path of ours and read those markers when it exits.

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
        std::fs::remove_file(self.marker(".reboot")).is_ok()
    }

    /// Why the child can never start as it is, when the companion saw it; the marker is consumed.
    /// The child's user may write there (a temporary folder): read without following a link,
    /// bounded, and only a known cause in a known shape is believed.
    pub fn take_fatal(&self) -> Option<Fatal> {
        let path = self.marker(".fatal");
        let content = crate::fsutil::read_bounded(&path, 256, crate::fsutil::Links::Refuse).ok().flatten();
        let _ = std::fs::remove_file(&path);
        Fatal::parse(std::str::from_utf8(&content?).ok()?)
    }

    fn marker(&self, suffix: &str) -> PathBuf {
        let mut marker = self.base.clone().into_os_string();
        marker.push(suffix);
        PathBuf::from(marker)
    }
}

/// What keeps ComfyUI from ever starting as it is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fatal {
    /// Newer ComfyUI's `ASSETS_STARTUP_FAILED: <kind>`: its assets database (`user/comfyui.db`)
    /// cannot be opened.
    Assets(String),
    /// The port is taken (EADDRINUSE).
    Port(u16),
    /// A Python module it imports is not installed.
    Module(String),
}

impl Fatal {
    pub fn parse(line: &str) -> Option<Fatal> {
        let word = |s: &str| {
            let ok = !s.is_empty() && s.len() <= 100;
            (ok && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')).then(|| s.to_string())
        };
        match line.trim_end_matches('\n').split_once(' ')? {
            ("assets", kind) => word(kind).map(Fatal::Assets),
            ("port", port) => port.parse().ok().map(Fatal::Port),
            ("module", name) => word(name).map(Fatal::Module),
            _ => None,
        }
    }
}

/// One line: what happened and what to do.
impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const DISABLE: &str = "or start it without the assets system (--disable-assets in COMFYUI_ARGS)";
        f.write_str("ComfyUI can never start as it is: ")?;
        match self {
            Fatal::Assets(kind) => match kind.as_str() {
                "in_use" => write!(
                    f,
                    "another ComfyUI is already using its assets database (user/comfyui.db, ASSETS_STARTUP_FAILED: \
                     in_use): stop the other one, give this one its own user folder (--user-directory) or \
                     database (--database-url), {DISABLE}"
                ),
                "not_writable" => write!(
                    f,
                    "its assets database user/comfyui.db is not writable by ComfyUI's user (ASSETS_STARTUP_FAILED: \
                     not_writable; a file left owned by root after a PUID change?): give it to PUID:PGID, {DISABLE}"
                ),
                "corrupt" => write!(
                    f,
                    "its assets database user/comfyui.db is corrupt (ASSETS_STARTUP_FAILED: corrupt): move it \
                     aside (ComfyUI makes a new one), {DISABLE}"
                ),
                "missing_packages" => write!(
                    f,
                    "its assets system needs Python packages that are not installed (ASSETS_STARTUP_FAILED: \
                     missing_packages): install ComfyUI's requirements.txt in its Python, {DISABLE}"
                ),
                other => write!(
                    f,
                    "its assets database user/comfyui.db cannot be opened (ASSETS_STARTUP_FAILED: {other}): \
                     see ComfyUI's message above, {DISABLE}"
                ),
            },
            Fatal::Port(port) => write!(
                f,
                "port {port} is already in use (another ComfyUI or service in this network namespace): stop it, \
                 or set COMFYUI_PORT to a free port"
            ),
            Fatal::Module(name) => write!(
                f,
                "the Python module '{name}' is not installed in the Python that runs it: install it there \
                 (for torch, the wheel that fits the GPU: `comfy-init gpu` says which), or point COMFYUI_PYTHON \
                 at the right environment"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_causes_in_their_shape_are_believed() {
        assert_eq!(Fatal::parse("assets in_use\n"), Some(Fatal::Assets("in_use".into())));
        assert_eq!(Fatal::parse("port 8188"), Some(Fatal::Port(8188)));
        assert_eq!(Fatal::parse("module torch"), Some(Fatal::Module("torch".into())));
        assert_eq!(Fatal::parse("module yaml.cyaml"), Some(Fatal::Module("yaml.cyaml".into())));
        for junk in ["", "assets", "assets ", "port 99999", "port x", "module a b", "module \x1b[2J", "root:x:0:0"] {
            assert_eq!(Fatal::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn each_cause_names_the_fix() {
        assert!(Fatal::Assets("in_use".into()).to_string().contains("--disable-assets"));
        assert!(Fatal::Assets("in_use".into()).to_string().contains("--user-directory"));
        assert!(Fatal::Assets("not_writable".into()).to_string().contains("PUID:PGID"));
        assert!(Fatal::Port(8188).to_string().contains("COMFYUI_PORT"));
        assert!(Fatal::Module("torch".into()).to_string().contains("comfy-init gpu"));
    }

    #[test]
    fn the_marker_is_read_once_and_a_link_is_not_followed() {
        let session = Session::new();
        std::fs::write(session.marker(".fatal"), "port 8188\n").unwrap();
        assert_eq!(session.take_fatal(), Some(Fatal::Port(8188)));
        assert_eq!(session.take_fatal(), None, "consumed");
        let target = session.marker(".target");
        std::fs::write(&target, "port 1\n").unwrap();
        std::os::unix::fs::symlink(&target, session.marker(".fatal")).unwrap();
        assert_eq!(session.take_fatal(), None, "followed a link");
        std::fs::remove_file(target).unwrap();
    }
}
