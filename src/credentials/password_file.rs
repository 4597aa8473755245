//! ComfyUI-Login's `login/PASSWORD`: `hash\nusername`, LF only, no trailing newline, mode 0600.

use std::path::{Path, PathBuf};

use super::plan::FileState;
use super::token::check_shape;
use crate::fsutil::{self, NewFileAttrs};

pub fn path(comfyui_dir: &Path) -> PathBuf {
    comfyui_dir.join("login").join("PASSWORD")
}

/// What PASSWORD holds. Err when it is something we must not touch: a folder, or a symlink
/// leading outside the login folder.
pub fn read(file: &Path) -> Result<FileState, String> {
    let meta = match std::fs::symlink_metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileState::Missing),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    if meta.file_type().is_symlink() {
        let login = file.parent().and_then(|d| d.canonicalize().ok());
        let target = file.canonicalize().ok();
        match (login, target) {
            (Some(login), Some(target)) if target.parent() == Some(login.as_path()) => {}
            (_, target) => {
                return Err(format!(
                    "{} is a symlink to {} outside the login folder: replace it with a regular file \
                     (or remove it to have it created)",
                    file.display(),
                    target.map(|t| t.display().to_string()).unwrap_or_else(|| "a missing file".into())
                ))
            }
        }
    }
    if std::fs::metadata(file).map(|m| m.is_dir()).unwrap_or(false) {
        return Err(format!("{} is a folder: remove it, comfy-init will create the file", file.display()));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    Ok(parse(&String::from_utf8_lossy(&bytes)))
}

/// The file's content as ComfyUI-Login would take it, judged strictly.
pub fn parse(text: &str) -> FileState {
    if text.trim().is_empty() {
        return FileState::Empty;
    }
    let mut lines = text.split('\n');
    let hash_line = lines.next().unwrap_or("");
    let hash = hash_line.trim();
    if let Err(why) = check_shape(hash) {
        return FileState::Malformed(format!("the hash is {why}"));
    }
    let username = lines.next().map(str::trim).unwrap_or("");
    if username.is_empty() {
        return FileState::Malformed("no username line".into());
    }
    let exact = text == format!("{hash}\n{username}");
    FileState::Hash { hash: hash.into(), username: username.into(), exact }
}

/// Writes `hash\nusername` atomically, mode 0600, owned by `owner` when given.
pub fn write(file: &Path, hash: &str, username: &str, owner: Option<(u32, u32)>) -> Result<(), String> {
    let login = file.parent().unwrap_or(Path::new("."));
    if !login.exists() {
        std::fs::create_dir_all(login).map_err(|e| fsutil::explain_write_error(login, &e))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(login, Some(uid), Some(gid))
                .map_err(|e| fsutil::explain_write_error(login, &e))?;
        }
    }
    let attrs = NewFileAttrs { mode: 0o600, owner, force: true };
    fsutil::write_atomic(file, format!("{hash}\n{username}").as_bytes(), attrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "$2b$12$abcdefghijklmnopqrstuuJq8f1V1cQ0M7b0f2i3O0yC6m5Yx5v1e";

    #[test]
    fn parses_like_comfyui_login_but_strictly() {
        assert_eq!(parse(""), FileState::Empty);
        assert_eq!(parse("\n"), FileState::Empty);
        assert_eq!(
            parse(&format!("{H}\nadmin")),
            FileState::Hash { hash: H.into(), username: "admin".into(), exact: true }
        );
        assert_eq!(
            parse(&format!("{H}\r\nadmin\r\n")),
            FileState::Hash { hash: H.into(), username: "admin".into(), exact: false }
        );
        assert!(matches!(parse(H), FileState::Malformed(w) if w.contains("username")));
        assert!(matches!(parse("$2b$12$short\nadmin"), FileState::Malformed(w) if w.contains("characters")));
    }
}
