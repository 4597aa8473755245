//! PUID/PGID: ComfyUI runs as that user, so the folders it writes must be its own. Docker creates
//! a new bind mount's folder as root: comfy-init (root) gives ComfyUI's folders to PUID:PGID, the
//! folder itself always, its content with `COMFY_INIT_CHOWN=recursive`, never following a
//! symlink out and never crossing into another filesystem. `models` is never touched (often a
//! huge read-only mount): only checked to be readable. What cannot be fixed (a read-only mount,
//! a rootless engine) stops the start with the exact command to run. With pre-start hooks,
//! `custom_nodes` is one of those folders (hooks install there). A missing one is created for
//! PUID: ComfyUI creates `temp` (and `user`, `input`) at every start, and dies when its own
//! folder is root's. ComfyUI-Login's own folder is given too (the folder itself and its
//! `.secret-key.txt`): the node writes its cookie key there at import, and a node that cannot
//! fails to import, which leaves ComfyUI serving WITHOUT authentication.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The folders of ComfyUI that its user writes to.
const WRITABLE: &[&str] = &["output", "input", "user", "temp"];

/// `COMFY_INIT_CHOWN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chown {
    /// Each folder itself (default).
    Folders,
    /// Each folder and everything in it.
    Recursive,
    /// Nothing: a folder owned by someone else stops the start, with the command to run.
    Off,
}

/// Gives ComfyUI's folders to `owner` (and `custom_nodes`, for pre-start hooks that install
/// there, and each ComfyUI-Login folder in `login_nodes`); returns what changed, for the log.
pub fn prepare_folders(
    comfyui_dir: &Path,
    owner: (u32, u32),
    chown: Chown,
    custom_nodes: bool,
    login_nodes: &[PathBuf],
) -> Result<Vec<String>, String> {
    let mut changed = Vec::new();
    if comfyui_dir.is_dir() {
        for name in WRITABLE {
            changed.extend(create_missing(&comfyui_dir.join(name), owner));
        }
    }
    let names = WRITABLE.iter().copied().chain(custom_nodes.then_some("custom_nodes"));
    let folders = names.map(|name| comfyui_dir.join(name)).chain(login_nodes.iter().cloned());
    for dir in folders {
        let Ok(meta) = std::fs::metadata(&dir) else { continue };
        if !meta.is_dir() {
            continue;
        }
        if (meta.uid(), meta.gid()) != owner {
            if chown == Chown::Off {
                return Err(refusal(&dir, meta.uid(), owner, "COMFY_INIT_CHOWN=off"));
            }
            std::os::unix::fs::chown(&dir, Some(owner.0), Some(owner.1))
                .map_err(|e| refusal(&dir, meta.uid(), owner, &e.to_string()))?;
            changed.push(format!("{}: now owned by {}:{}", dir.display(), owner.0, owner.1));
        }
        if chown == Chown::Recursive {
            let n = chown_tree(&dir, meta.dev(), owner).map_err(|e| refusal(&dir, meta.uid(), owner, &e))?;
            if n > 0 {
                changed.push(format!("{}: {n} entries inside now owned by {}:{}", dir.display(), owner.0, owner.1));
            }
        }
    }
    for key in login_nodes.iter().map(|dir| dir.join(".secret-key.txt")) {
        changed.extend(give_file(&key, owner));
    }
    // login/ too, but a read-only one (a Kubernetes Secret holding a ready PASSWORD) is fine: only
    // ComfyUI-Login's first-login write would fail there, and comfy-init writes PASSWORD itself.
    let login = comfyui_dir.join("login");
    if let Ok(meta) = std::fs::metadata(&login) {
        if meta.is_dir() && (meta.uid(), meta.gid()) != owner && chown != Chown::Off {
            match std::os::unix::fs::chown(&login, Some(owner.0), Some(owner.1)) {
                Ok(()) => changed.push(format!("{}: now owned by {}:{}", login.display(), owner.0, owner.1)),
                Err(e) => log::warn!("{} stays owned by uid {} ({e})", login.display(), meta.uid()),
            }
        }
    }
    if let Some(warning) = models_unreadable(&comfyui_dir.join("models"), owner) {
        log::warn!("{warning}");
    }
    Ok(changed)
}

/// A folder ComfyUI creates at start, made beforehand for `owner` (ComfyUI, as PUID, cannot
/// create it in a folder of root's). Not made: said, and ComfyUI is left to try.
fn create_missing(dir: &Path, owner: (u32, u32)) -> Option<String> {
    if std::fs::symlink_metadata(dir).is_ok() {
        return None;
    }
    let made = std::fs::create_dir(dir).and_then(|()| std::os::unix::fs::chown(dir, Some(owner.0), Some(owner.1)));
    match made {
        Ok(()) => Some(format!("{}: created, owned by {}:{}", dir.display(), owner.0, owner.1)),
        Err(e) => {
            log::warn!(
                "cannot create {} for {}:{} ({e}): ComfyUI may fail to create it",
                dir.display(),
                owner.0,
                owner.1
            );
            None
        }
    }
}

/// A file the user's ComfyUI rewrites (ComfyUI-Login's key, renewed every 30 days), given to
/// `owner`; never through a symlink. Failing is said, not fatal: the folder is what matters.
fn give_file(file: &Path, owner: (u32, u32)) -> Option<String> {
    let meta = std::fs::symlink_metadata(file).ok().filter(|m| m.is_file())?;
    if (meta.uid(), meta.gid()) == owner {
        return None;
    }
    match std::os::unix::fs::lchown(file, Some(owner.0), Some(owner.1)) {
        Ok(()) => Some(format!("{}: now owned by {}:{}", file.display(), owner.0, owner.1)),
        Err(e) => {
            log::warn!("{} stays owned by uid {} ({e})", file.display(), meta.uid());
            None
        }
    }
}

/// Everything below `dir` on the same filesystem, symlinks changed as links (lchown), never
/// followed. Returns how many entries changed owner.
fn chown_tree(dir: &Path, dev: u64, owner: (u32, u32)) -> Result<usize, String> {
    let mut changed = 0;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.dev() != dev {
            continue; // a mount inside (models?): not ours to change
        }
        if (meta.uid(), meta.gid()) != owner {
            std::os::unix::fs::lchown(&path, Some(owner.0), Some(owner.1))
                .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
            changed += 1;
        }
        if meta.is_dir() {
            changed += chown_tree(&path, dev, owner)?;
        }
    }
    Ok(changed)
}

fn refusal(dir: &Path, found: u32, (uid, gid): (u32, u32), why: &str) -> String {
    format!(
        "{} belongs to uid {found}, but ComfyUI runs as PUID={uid}, and comfy-init cannot give it to \
         {uid}:{gid} ({why}): run on the host `chown -R {uid}:{gid} <the folder mounted at {}>` (or \
         inside: `chown -R {uid}:{gid} {}`)",
        dir.display(),
        dir.display(),
        dir.display()
    )
}

/// `models` must be readable (and searchable) by ComfyUI's user; it is never changed.
fn models_unreadable(models: &Path, (uid, gid): (u32, u32)) -> Option<String> {
    let meta = std::fs::metadata(models).ok()?;
    let mode = meta.mode();
    let readable = if meta.uid() == uid {
        mode & 0o500 == 0o500
    } else if meta.gid() == gid {
        mode & 0o050 == 0o050
    } else {
        mode & 0o005 == 0o005
    };
    (!readable).then(|| {
        format!(
            "{} (mode {:o}, owner {}:{}) is not readable by ComfyUI's user {uid}:{gid}: ComfyUI will not \
             see its models; comfy-init does not change it (make it readable on the host, e.g. chmod -R a+rX)",
            models.display(),
            mode & 0o7777,
            meta.uid(),
            meta.gid()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_are_judged_readable_by_the_bits_that_apply_to_the_user() {
        let dir = std::env::temp_dir().join(format!("models-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        let me = std::fs::metadata(&dir).unwrap();
        assert_eq!(models_unreadable(&dir, (me.uid(), me.gid())), None);
        assert!(models_unreadable(&dir, (me.uid() + 12345, me.gid() + 12345)).is_some(), "others have no r-x");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(models_unreadable(&dir, (me.uid() + 12345, me.gid() + 12345)), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
