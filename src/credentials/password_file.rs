//! ComfyUI-Login's `login/PASSWORD`: `hash\nusername`, LF only, no trailing newline, mode 0600.

use std::path::{Path, PathBuf};

use super::plan::FileState;
use super::token::check_shape;
use crate::fsutil::{self, IoError, Links, NewFileAttrs, ReadError, Unreadable};

pub fn path(comfyui_dir: &Path) -> PathBuf {
    comfyui_dir.join("login").join("PASSWORD")
}

/// PASSWORD holds a hash and a username: a few hundred bytes. More is not ours to read.
pub const CAP: u64 = 4096;

/// Why PASSWORD was not read: the OS failed (errno and path kept), or it is something we must
/// not touch or read. Either way the message ends with what to do.
#[derive(Debug, thiserror::Error)]
pub enum ReadFailure {
    #[error("cannot read {}: {}: remove it, comfy-init will create the file", .0.path.display(), .0.source)]
    Io(#[source] IoError),
    #[error("{0}: remove it, comfy-init will create the file")]
    Refused(#[source] Refusal),
}

/// What PASSWORD is when it is nothing we read: a folder, a FIFO, a device, a huge file, or a
/// symlink leading outside the login folder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Unreadable(Unreadable),
    /// A symlink inside the login folder, to something unreadable.
    #[error("{} -> {target}", link.display())]
    Through {
        link: PathBuf,
        #[source]
        target: Unreadable,
    },
    /// `target`: None when the link leads nowhere.
    #[error("{} is a symlink to {} outside the login folder", link.display(),
        target.as_ref().map_or_else(|| "a missing file".into(), |t| t.display().to_string()))]
    Outside { link: PathBuf, target: Option<PathBuf> },
}

/// What PASSWORD holds. Err when it is something we must not touch or read: a folder, a FIFO,
/// a device, a huge file, or a symlink leading outside the login folder.
pub fn read(file: &Path) -> Result<FileState, ReadFailure> {
    Ok(match read_raw(file)? {
        None => FileState::Missing,
        Some(bytes) => parse(&bytes),
    })
}

/// PASSWORD's bytes, read safely (see [`fsutil::read_bounded`]). A symlink is accepted when it
/// stays inside the login folder (a Kubernetes Secret mounted there is `PASSWORD ->
/// ..data/PASSWORD`); its resolved target is then opened without following links again.
pub fn read_raw(file: &Path) -> Result<Option<Vec<u8>>, ReadFailure> {
    let is_link = std::fs::symlink_metadata(file).is_ok_and(|m| m.file_type().is_symlink());
    let read = |path: &Path, refused: &dyn Fn(Unreadable) -> Refusal| {
        fsutil::read_bounded(path, CAP, Links::Refuse).map_err(|e| match e {
            ReadError::Io(e) => ReadFailure::Io(e),
            ReadError::Refused(why) => ReadFailure::Refused(refused(why)),
        })
    };
    if !is_link {
        return read(file, &Refusal::Unreadable);
    }
    let login = file.parent().and_then(|d| d.canonicalize().ok());
    let target = file.canonicalize().ok();
    match (login, target) {
        (Some(login), Some(target)) if target.starts_with(&login) => {
            read(&target, &|why| Refusal::Through { link: file.to_path_buf(), target: why })
        }
        (_, target) => Err(ReadFailure::Refused(Refusal::Outside { link: file.to_path_buf(), target })),
    }
}

/// The file's content as ComfyUI-Login would take it, judged strictly. Any bytes are accepted:
/// a file is never trusted to be UTF-8. A file holding only a hash (older ComfyUI-Login) is a
/// `Hash` with an empty username: its login is kept and the username line added.
pub fn parse(bytes: &[u8]) -> FileState {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return FileState::Empty;
    }
    let (hash_line, rest) = match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &b""[..]),
    };
    let Ok(hash) = std::str::from_utf8(hash_line.trim_ascii()) else {
        return FileState::Malformed("the hash line is not text (not UTF-8)".into());
    };
    if let Err(why) = check_shape(hash) {
        return FileState::Malformed(format!("the hash is {why}"));
    }
    let username_line = rest.split(|&b| b == b'\n').next().unwrap_or(b"");
    let Ok(username) = std::str::from_utf8(username_line.trim_ascii()) else {
        return FileState::Malformed("the username line is not text (not UTF-8)".into());
    };
    let exact = !username.is_empty() && bytes == format!("{hash}\n{username}").as_bytes();
    FileState::Hash { hash: hash.into(), username: username.into(), exact }
}

/// Writes `hash\nusername` atomically, mode 0600, owned by `owner` when given.
/// `still_wanted`: see [`fsutil::write_atomic_checked`]. I/O errors keep their errno and path.
pub fn write<E: From<IoError>>(
    file: &Path,
    hash: &str,
    username: &str,
    owner: Option<(u32, u32)>,
    still_wanted: impl FnOnce() -> Result<(), E>,
) -> Result<(), E> {
    create_login_dir(file.parent().unwrap_or(Path::new(".")), owner)?;
    let attrs = NewFileAttrs { mode: 0o600, owner, force: true };
    fsutil::write_atomic_checked(file, content(hash, username).as_bytes(), attrs, still_wanted)
}

/// What PASSWORD holds once written: exactly the bytes [`write`] puts there.
pub fn content(hash: &str, username: &str) -> String {
    format!("{hash}\n{username}")
}

/// The login folder, created (owned by `owner`: ComfyUI-Login writes there too) when missing.
pub fn create_login_dir(login: &Path, owner: Option<(u32, u32)>) -> Result<(), IoError> {
    if login.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(login).map_err(|e| IoError::write(login, e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(login, Some(uid), Some(gid)).map_err(|e| IoError::write(login, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "$2b$12$abcdefghijklmnopqrstuuJq8f1V1cQ0M7b0f2i3O0yC6m5Yx5v1e";

    #[test]
    fn parses_like_comfyui_login_but_strictly() {
        let parse = |s: &str| parse(s.as_bytes());
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
        // Older files hold the hash alone: still a login, with no username.
        assert_eq!(parse(H), FileState::Hash { hash: H.into(), username: "".into(), exact: false });
        assert_eq!(parse(&format!("{H}\n")), FileState::Hash { hash: H.into(), username: "".into(), exact: false });
        assert!(matches!(parse("$2b$12$short\nadmin"), FileState::Malformed(w) if w.contains("characters")));
    }

    #[test]
    fn bytes_that_are_not_text_are_malformed_not_a_panic() {
        assert!(matches!(super::parse(b"\xff\xfe$2b$\nadmin"), FileState::Malformed(w) if w.contains("UTF-8")));
        let utf8 = format!("$2b\u{e9}{}\nadmin", "A".repeat(55));
        assert!(matches!(super::parse(utf8.as_bytes()), FileState::Malformed(_)));
        let mut bad_user = format!("{H}\n").into_bytes();
        bad_user.push(0xff);
        assert!(matches!(super::parse(&bad_user), FileState::Malformed(w) if w.contains("username")));
    }
}
