//! PUID/PGID: ComfyUI runs as that user. comfy-init stays root to write the credential files
//! (owned by that user), but the folders ComfyUI itself writes must already belong to it: a
//! silent permission error deep in ComfyUI is worse than a clear stop with the fix.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The folders of ComfyUI that its user writes to (login/PASSWORD is ours: we chown it).
const WRITABLE: &[&str] = &["output", "input", "user", "temp"];

pub fn check_ownership(comfyui_dir: &Path, (uid, gid): (u32, u32)) -> Result<(), String> {
    for name in WRITABLE {
        let dir = comfyui_dir.join(name);
        let Ok(meta) = std::fs::metadata(&dir) else { continue };
        if meta.uid() != uid {
            return Err(format!(
                "{} belongs to uid {}, but ComfyUI runs as PUID={uid}: run on the host \
                 `chown -R {uid}:{gid} <the folder mounted at {}>` (or inside: `chown -R {uid}:{gid} {}`)",
                dir.display(),
                meta.uid(),
                dir.display(),
                dir.display()
            ));
        }
    }
    Ok(())
}
