//! PID 1's phase, published for `comfy-init healthcheck --ready` (issue 24): a load balancer or
//! Kubernetes sends no traffic while ComfyUI starts, reloads, restarts, drains or stops. One
//! word in `<COMFY_INIT_RUN_DIR>/phase`, replaced atomically when it changes (a rename in a
//! root-owned folder on a tmpfs: no wait). Only root writes there: ComfyUI's user cannot claim
//! readiness.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

pub const FILE: &str = "phase";

pub struct Publisher {
    /// None: the folder could not be made ours; readiness then stays unproven (said once).
    dir: Option<PathBuf>,
    last: &'static str,
}

impl Publisher {
    /// The folder is created (0755) when missing; one that is a link or not ours is not used.
    pub fn new(dir: &Path) -> Publisher {
        let _ = std::fs::DirBuilder::new().mode(0o755).recursive(true).create(dir);
        let ours = std::fs::symlink_metadata(dir).is_ok_and(|m| {
            // SAFETY: geteuid cannot fail.
            m.is_dir() && m.uid() == unsafe { libc::geteuid() } && m.mode() & 0o022 == 0
        });
        if !ours {
            log::warn!(
                "{} is not a folder of ours that only we can write: the phase is not published, so \
                 `healthcheck --ready` never says ready (set COMFY_INIT_RUN_DIR to such a folder)",
                dir.display()
            );
        }
        Publisher { dir: ours.then(|| dir.to_path_buf()), last: "" }
    }

    /// Writes the phase when it changed. A failure is logged, never fatal.
    pub fn publish(&mut self, phase: &'static str) {
        let Some(dir) = self.dir.as_ref().filter(|_| phase != self.last) else { return };
        let (tmp, path) = (dir.join(".phase.tmp"), dir.join(FILE));
        match std::fs::write(&tmp, phase).and_then(|()| std::fs::rename(&tmp, &path)) {
            Ok(()) => self.last = phase,
            Err(e) => log::warn!("cannot publish the phase in {}: {e}", path.display()),
        }
    }
}

/// The phase PID 1 published in `dir` (None: none, or not a plain short file).
pub fn read(dir: &Path) -> Option<String> {
    let raw = crate::fsutil::read_bounded(&dir.join(FILE), 32, crate::fsutil::Links::Refuse).ok()??;
    let word = String::from_utf8(raw).ok()?;
    word.chars().all(|c| c.is_ascii_lowercase()).then_some(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_is_written_when_it_changes_and_read_back() {
        let dir = std::env::temp_dir().join(format!("comfy-init-phase-{}", std::process::id()));
        let mut publisher = Publisher::new(&dir);
        assert_eq!(read(&dir), None);
        publisher.publish("starting");
        assert_eq!(read(&dir).as_deref(), Some("starting"));
        publisher.publish("running");
        assert_eq!(read(&dir).as_deref(), Some("running"));
        std::fs::write(dir.join(FILE), "running\nready").unwrap();
        assert_eq!(read(&dir), None, "only one word is believed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
