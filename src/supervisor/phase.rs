//! PID 1's phase, published for `comfy-init healthcheck --ready` (issue 24): a load balancer or
//! Kubernetes sends no traffic while ComfyUI starts, reloads, restarts, drains or stops. One
//! word in `<COMFY_INIT_RUN_DIR>/phase`, a folder only root writes: ComfyUI's user cannot claim
//! readiness.
//!
//! With several ComfyUI instances (COMFY_INIT_INSTANCES) instance i's word is at offset i x WIDTH.
//!
//! The file is opened once and each change is one `pwrite` of a fixed-width word at its offset: a
//! rename per change cost 0.3-0.6 ms on the container's overlay filesystem (measured: it tripled
//! the stop latency of `make bench`). A reader that catches a write half done sees no word it
//! knows, which reads "not ready" for one probe.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

pub const FILE: &str = "phase";
/// Every word padded to this width: a shorter one leaves nothing of a longer one behind.
const WIDTH: usize = 12;

pub struct Publisher {
    /// None: the folder could not be made ours; readiness then stays unproven (said once).
    file: Option<File>,
    /// What each slot says now.
    last: Vec<&'static str>,
}

impl Publisher {
    /// The folder is created (0755) when missing; one that is a link, not ours or writable by
    /// others is not used.
    pub fn new(dir: &Path, instances: usize) -> Publisher {
        let file = match open(dir).and_then(|f| fit(f, instances.max(1))) {
            Ok(file) => Some(file),
            Err(why) => {
                log::warn!(
                    "{}: {why}: the phase is not published, so `healthcheck --ready` never says ready \
                     (set COMFY_INIT_RUN_DIR to a folder of comfy-init's user that no one else can write)",
                    dir.display()
                );
                None
            }
        };
        Publisher { file, last: vec![""; instances.max(1)] }
    }

    /// Writes instance `slot`'s phase when it changed. A failure is logged, never fatal.
    pub fn publish(&mut self, slot: usize, phase: &'static str) {
        let Some(file) = self.file.as_ref().filter(|_| self.last.get(slot).is_some_and(|l| *l != phase)) else {
            return;
        };
        let word = format!("{phase:<WIDTH$}");
        let offset = (slot * WIDTH) as libc::off_t;
        // SAFETY: pwrite from a buffer we own into a descriptor we own.
        let written = unsafe { libc::pwrite(file.as_raw_fd(), word.as_ptr().cast(), word.len(), offset) };
        match usize::try_from(written) {
            Ok(n) if n == word.len() => self.last[slot] = phase,
            _ => log::warn!("cannot publish the phase: {}", std::io::Error::last_os_error()),
        }
    }
}

/// A longer file of an earlier start (more instances) must not leave slots behind. Shortened only
/// when longer: a truncation to 0 then a write allocates the block again, which cost 0.3 ms per
/// start on the overlay filesystem (the bench's spawn row).
fn fit(file: File, instances: usize) -> Result<File, String> {
    let size = (instances * WIDTH) as u64;
    match file.metadata() {
        Ok(m) if m.len() > size => file.set_len(size).map(|()| file).map_err(|e| e.to_string()),
        Ok(_) => Ok(file),
        Err(e) => Err(e.to_string()),
    }
}

/// `dir/phase`, opened for writing: `dir` made if missing, never through a link, ours alone.
fn open(dir: &Path) -> Result<File, String> {
    open_in(dir, c"phase", 0o644)
}

/// `dir/name`, opened for writing (created with `mode`): `dir` made if missing, never through a
/// link, a folder only we can write.
pub fn open_in(dir: &Path, name: &std::ffi::CStr, mode: libc::c_uint) -> Result<File, String> {
    let made = std::fs::DirBuilder::new().mode(0o755).recursive(true).create(dir);
    // Never through a link in its place (a folder someone else could swap); a folder that cannot
    // be made says why (EACCES), not what follows from it (ENOENT).
    let folder = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| made.err().unwrap_or(e).to_string())?;
    let meta = folder.metadata().map_err(|e| e.to_string())?;
    // SAFETY: geteuid cannot fail.
    if meta.uid() != unsafe { libc::geteuid() } || meta.mode() & 0o022 != 0 {
        return Err("not a folder of ours that only we can write".into());
    }
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: openat relative to a directory descriptor we own, with a NUL-terminated name.
    let fd = unsafe { libc::openat(folder.as_raw_fd(), name.as_ptr(), flags, mode) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: the descriptor was just opened and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(file),
        _ => Err(format!("{} is not a plain file", name.to_string_lossy())),
    }
}

/// The most instances a phase file is read for.
const MAX_SLOTS: usize = 64;

/// The phase PID 1 published in `dir` for the first (or only) instance (None: none, or not a
/// short word).
pub fn read(dir: &Path) -> Option<String> {
    read_all(dir)?.into_iter().next()
}

/// Every instance's phase (None: no file, or a slot that is not one short word).
pub fn read_all(dir: &Path) -> Option<Vec<String>> {
    let raw = crate::fsutil::read_bounded(&dir.join(FILE), (MAX_SLOTS * WIDTH) as u64, crate::fsutil::Links::Refuse)
        .ok()??;
    let text = String::from_utf8(raw).ok()?;
    let words: Option<Vec<String>> = text
        .as_bytes()
        .chunks(WIDTH)
        .map(|slot| {
            let word = std::str::from_utf8(slot).ok()?.trim_end();
            (!word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase())).then(|| word.to_string())
        })
        .collect();
    words.filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_is_written_when_it_changes_and_read_back() {
        let dir = std::env::temp_dir().join(format!("comfy-init-phase-{}", std::process::id()));
        let mut publisher = Publisher::new(&dir, 2);
        assert_eq!(read(&dir), None, "nothing published yet");
        publisher.publish(0, "restarting");
        assert_eq!(read(&dir).as_deref(), Some("restarting"));
        publisher.publish(0, "running");
        assert_eq!(read(&dir).as_deref(), Some("running"), "nothing of a longer word is left");
        publisher.publish(1, "draining");
        assert_eq!(read_all(&dir), Some(vec!["running".to_string(), "draining".to_string()]));
        Publisher::new(&dir, 1).publish(0, "starting");
        assert_eq!(read_all(&dir), Some(vec!["starting".to_string()]), "an earlier start's slots are gone");
        std::fs::write(dir.join(FILE), "running\nready").unwrap();
        assert_eq!(read(&dir), None, "only one word is believed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_in_the_folders_place_is_not_followed() {
        let base = std::env::temp_dir().join(format!("comfy-init-phase-link-{}", std::process::id()));
        let target = base.join("target");
        std::fs::create_dir_all(&target).unwrap();
        std::os::unix::fs::symlink(&target, base.join("run")).unwrap();
        Publisher::new(&base.join("run"), 1).publish(0, "running");
        assert!(!target.join(FILE).exists(), "written through the link");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_folder_others_may_write_is_not_used() {
        let dir = std::env::temp_dir().join(format!("comfy-init-phase-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let mut publisher = Publisher::new(&dir, 1);
        publisher.publish(0, "running");
        assert_eq!(read(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
