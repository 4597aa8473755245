//! comfy-init's own key (issue 25): comfy-init's own requests (the healthcheck, the reload and
//! drain probes) show it in [`HEADER`], so that the companion knows them: it does not log the
//! healthcheck's refusals, and under `COMFY_INIT_PASSWORD_TOKEN=off` (API keys the only API
//! credential) only they may still use the password's token. PID 1 makes a new one at each
//! container start and keeps it in `<COMFY_INIT_RUN_DIR>/key` (mode 0600, in a folder only
//! comfy-init's user writes: with PUID, ComfyUI's user can neither read nor plant it; a container
//! run as one user gives ComfyUI that user too, and it controls ComfyUI anyway); ComfyUI gets
//! only its SHA-256, in [`ENV_DIGEST`].

use std::io::Write;
use std::path::Path;

use crate::credentials::api_keys;
use crate::fsutil::{self, Links};

pub const HEADER: &str = "X-Comfy-Init-Key";
pub const ENV_DIGEST: &str = "COMFY_INIT_SELF_KEY_SHA256";
const FILE: &str = "key";

/// A new key written to `dir/key` (a temporary file made 0600, then renamed over it: a reader
/// sees the old key or the new one); its digest, for ComfyUI's environment.
pub fn publish(dir: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let key = api_keys::generate();
    let mut file = super::phase::open_in(dir, c"key.tmp", 0o600)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.set_len(0))
        .and_then(|()| file.write_all(key.as_bytes()))
        .and_then(|()| std::fs::rename(dir.join("key.tmp"), dir.join(FILE)))
        .map_err(|e| e.to_string())?;
    Ok(api_keys::digest(&key))
}

/// The key PID 1 published in `dir` (None: none, or not a key).
pub fn read(dir: &Path) -> Option<String> {
    let raw = fsutil::read_bounded(&dir.join(FILE), 128, Links::Refuse).ok()??;
    let key = String::from_utf8(raw).ok()?;
    api_keys::well_formed(&key).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_key_is_read_back_and_only_its_digest_leaves() {
        let dir = std::env::temp_dir().join(format!("comfy-init-self-key-{}", std::process::id()));
        let digest = publish(&dir).unwrap();
        let key = read(&dir).expect("the key is read back");
        assert_eq!(api_keys::digest(&key), digest);
        assert_ne!(publish(&dir).unwrap(), digest, "a new key at each start");
        std::fs::write(dir.join(FILE), "not a key").unwrap();
        assert_eq!(read(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
