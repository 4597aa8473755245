//! comfy-init's own key, for `COMFY_INIT_PASSWORD_TOKEN=off` (issue 25): API keys are then the
//! only API credential, and the companion refuses the password's token, except on comfy-init's
//! own requests (the healthcheck, the reload and drain probes), which show this key in
//! [`HEADER`]. PID 1 makes a new one at each container start and keeps it in
//! `<COMFY_INIT_RUN_DIR>/key` (mode 0600, a folder only root writes: ComfyUI's user can neither
//! read nor plant it); ComfyUI gets only its SHA-256, in [`ENV_DIGEST`].

use std::io::Write;
use std::path::Path;

use crate::credentials::api_keys;
use crate::fsutil::{self, Links};

pub const HEADER: &str = "X-Comfy-Init-Key";
pub const ENV_DIGEST: &str = "COMFY_INIT_SELF_KEY_SHA256";
const FILE: &str = "key";

/// A new key written to `dir/key`; its digest, for ComfyUI's environment.
pub fn publish(dir: &Path) -> Result<String, String> {
    let key = api_keys::generate();
    let mut file = super::phase::open_in(dir, c"key", 0o600)?;
    // A key file left by an earlier start (made 0600 then) is replaced whole.
    file.set_len(0).and_then(|()| file.write_all(key.as_bytes())).map_err(|e| e.to_string())?;
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
