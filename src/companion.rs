//! The companion ComfyUI node (`companion/`, Python, part of this project): it keeps the bearer
//! token out of ComfyUI's log, applies a new token without restarting ComfyUI, and closes the
//! doors ComfyUI-Login leaves open (user files through `.js` paths, unlimited login guesses that
//! stall the server, a 500 for a malformed Authorization header). Embedded in the
//! binary and installed into `custom_nodes/` at every start, so its version always matches ours.
//!
//! The handshake: the companion installs its signal handler, then writes `<session>.companion`
//! holding its pid. comfy-init sends the reload signal only to a pid read from there that belongs
//! to the CURRENT child's process group (an unhandled signal would kill Python), and then proves
//! the reload from outside before it trusts it.

use std::path::{Path, PathBuf};

use crate::fsutil::{self, DirError, IoError, Links};

/// Its folder under `custom_nodes/`.
pub const FOLDER: &str = "comfy-init-companion";
/// The variable that tells the companion where to announce itself.
pub const ENV_SESSION: &str = "COMFY_INIT_COMPANION_SESSION";

const FILES: &[(&str, &str)] = &[
    ("__init__.py", include_str!("../companion/__init__.py")),
    ("prestartup_script.py", include_str!("../companion/prestartup_script.py")),
    ("node.py", include_str!("../companion/node.py")),
    ("lifecycle.py", include_str!("../companion/lifecycle.py")),
    ("doors.py", include_str!("../companion/doors.py")),
    ("api_keys.py", include_str!("../companion/api_keys.py")),
];

/// The reload request: SIGRTMIN+7, never SIGHUP (forwarded from outside, it keeps its meaning
/// for ComfyUI). Python's `signal.SIGRTMIN` is glibc's, as ours.
pub fn reload_signal() -> i32 {
    libc::SIGRTMIN() + 7
}

/// The signal that makes the companion refuse new prompts (issue 24: a drain before a stop).
pub fn drain_signal() -> i32 {
    libc::SIGRTMIN() + 8
}

/// Why the companion could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{} is not a folder", .0.display())]
    NoComfyUi(PathBuf),
    /// A symlink where its folder should be, or a folder that cannot be made or opened.
    #[error(transparent)]
    Folder(#[from] DirError),
    /// A file that cannot be written (a read-only custom_nodes): the path and the errno.
    #[error(transparent)]
    Write(#[from] IoError),
}

/// Writes the companion into `custom_nodes/` where it differs (a file per write, atomically;
/// readable by ComfyUI's user). Err: why it cannot be installed (a read-only custom_nodes, a
/// symlink where its folder should be).
pub fn install(comfyui_dir: &Path) -> Result<PathBuf, InstallError> {
    // Never create ComfyUI's folder: without it, the credentials step must fail closed.
    if !comfyui_dir.is_dir() {
        return Err(InstallError::NoComfyUi(comfyui_dir.to_path_buf()));
    }
    // Root writes here, and custom_nodes may be PUID's (with hooks, or PUID's own mount): a
    // symlink planted as custom_nodes/comfy-init-companion would make root write Python into
    // any folder. So every step goes by descriptor: the configured ComfyUI folder is trusted
    // (the operator's), custom_nodes and our folder are opened in it without following a link,
    // and each file is created and renamed inside our folder's descriptor. Our files stay
    // root's: PUID may delete or replace them in its own folder, but root never writes outside.
    let top = fsutil::open_dir(comfyui_dir).map_err(|e| IoError::write(comfyui_dir, e))?;
    let nodes_path = comfyui_dir.join("custom_nodes");
    let nodes = fsutil::open_dir_at(&top, "custom_nodes", &nodes_path, Some(0o755))?;
    let dir = nodes_path.join(FOLDER);
    let folder = fsutil::open_dir_at(&nodes, FOLDER, &dir, Some(0o755))?;
    for (name, content) in FILES {
        if fsutil::read_at(&folder, name, 1 << 20).as_deref() == Some(content.as_bytes()) {
            continue;
        }
        fsutil::write_atomic_at(&folder, &dir, name, content.as_bytes(), 0o644)?;
    }
    Ok(dir)
}

/// The file the companion writes once its handler is installed.
pub fn ready_file(session: &Path) -> PathBuf {
    let mut path = session.as_os_str().to_owned();
    path.push(".companion");
    PathBuf::from(path)
}

/// The companion's pid, when the ready file names a live process in the process group `pgid`
/// (the current child's: a file left by an earlier child names a process that is gone).
pub fn ready(session: &Path, pgid: i32) -> Option<i32> {
    let bytes = fsutil::read_bounded(&ready_file(session), 32, Links::Refuse).ok()??;
    let pid: i32 = std::str::from_utf8(&bytes).ok()?.trim().parse().ok().filter(|p| *p > 1)?;
    (process_group(pid)? == pgid).then_some(pid)
}

/// The process group of `pid`, from /proc (field 5 of stat, after the command's parentheses).
fn process_group(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    after.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_node_is_the_one_in_the_repository() {
        for (name, content) in FILES {
            let on_disk = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("companion").join(name));
            assert_eq!(on_disk.as_deref().ok(), Some(*content), "{name}");
        }
        assert!(FILES[0].1.contains("SIGRTMIN + 7"), "the Python side must use the same signal");
    }

    #[test]
    fn only_a_process_of_the_current_group_is_ready() {
        let dir = std::env::temp_dir().join(format!("companion-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let session = dir.join("session");
        assert_eq!(ready(&session, 1), None, "no file");
        let me = std::process::id() as i32;
        std::fs::write(ready_file(&session), me.to_string()).unwrap();
        let my_group = process_group(me).unwrap();
        assert_eq!(ready(&session, my_group), Some(me));
        assert_eq!(ready(&session, my_group + 1), None, "another group's child");
        std::fs::write(ready_file(&session), "garbage").unwrap();
        assert_eq!(ready(&session, my_group), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
