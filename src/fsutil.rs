//! Files we write are replaced atomically: a temp file in the same folder, fsync, rename, fsync
//! of the folder. A crash at any moment leaves the old content or the new, never a mix.
//! Files we read may be anything someone else put there: they are read without blocking and
//! without limit only when they are regular files of a sane size.

use std::ffi::CStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Whether the last component of a path we read may be a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    Follow,
    Refuse,
}

/// Why [`read_bounded`] read nothing: the OS failed (errno kept), or what is there is not
/// something we read. Shown as one line naming the file; the caller adds what to do about it
/// (an [`IoError`] taken out of `Io` says it in its own words, see its `Display`).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {}", .0.path.display(), .0.source)]
    Io(#[source] IoError),
    #[error(transparent)]
    Refused(#[from] Unreadable),
}

/// What is there is not something we read: a symlink where none is accepted, not a regular
/// file, or too big.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("{} is a symlink, which is not accepted here", .0.display())]
    Symlink(PathBuf),
    /// `what`: "a folder", "a named pipe (FIFO)"...
    #[error("{} is {what}, not a file", path.display())]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("{} is {size} bytes, more than the {cap} it can sensibly hold, and is not read", path.display())]
    TooBig { path: PathBuf, size: u64, cap: u64 },
}

/// Reads a file that someone else (a user, the unprivileged ComfyUI) may have replaced with
/// anything. Opened with `O_NONBLOCK` (a FIFO cannot hang us: opening one for reading without a
/// writer returns at once, and we never read from it), checked with `fstat` on the open file
/// (no race with a swap), and read up to `cap` bytes: a bigger file is refused, never loaded.
/// Ok(None): the file does not exist.
pub fn read_bounded(path: &Path, cap: u64, links: Links) -> Result<Option<Vec<u8>>, ReadError> {
    let refused = |why: Unreadable| Err(ReadError::Refused(why));
    let failed = |e: io::Error| ReadError::Io(IoError::new("read", path, e));
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) && links == Links::Refuse => {
            return refused(Unreadable::Symlink(path.to_path_buf()))
        }
        // Opening a socket fails with ENXIO.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return refused(Unreadable::NotAFile { path: path.to_path_buf(), what: "a socket" })
        }
        Err(e) => return Err(failed(e)),
    };
    let meta = file.metadata().map_err(failed)?;
    if let Some(what) = not_a_file(meta.file_type()) {
        return refused(Unreadable::NotAFile { path: path.to_path_buf(), what });
    }
    let too_big = |size: u64| Unreadable::TooBig { path: path.to_path_buf(), size, cap };
    if meta.len() > cap {
        return refused(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow after fstat: read one byte past the cap to know.
    file.take(cap + 1).read_to_end(&mut bytes).map_err(failed)?;
    if bytes.len() as u64 > cap {
        return refused(too_big(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

/// What a file that is not a regular file is, in words.
fn not_a_file(kind: fs::FileType) -> Option<&'static str> {
    if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a folder")
    } else if kind.is_fifo() {
        Some("a named pipe (FIFO)")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}

/// Where a write to `path` must go to keep a symlink a symlink: its target (resolved through
/// every link), or `path` itself when it is not a link.
pub fn write_target(path: &Path) -> PathBuf {
    if !fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return path.to_path_buf();
    }
    if let Ok(target) = fs::canonicalize(path) {
        return target;
    }
    // A dangling link: create the file it names.
    match fs::read_link(path) {
        Ok(target) => path.parent().unwrap_or(Path::new(".")).join(target),
        Err(_) => path.to_path_buf(),
    }
}

/// Mode and owner for a file we create. An existing file keeps its own, unless `force`
/// (a secret such as PASSWORD is always 0600).
#[derive(Debug, Clone, Copy)]
pub struct NewFileAttrs {
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
    pub force: bool,
}

/// Replaces `path` with `content`: a temp file beside it, written and synced, then `still_wanted`
/// is asked (the fsync takes milliseconds; a check made before it would leave them open to a
/// user's save), then the rename and a sync of the folder. An Err from `still_wanted` leaves
/// `path` as it is (the temp file removed) and is returned. An existing file keeps its mode and
/// owner unless `attrs.force`; a new one gets `attrs`. I/O errors are typed: the path and the OS
/// error (errno) kept, so that a caller can tell a mount point (the rename answers EBUSY: a
/// single-file bind mount) from a read-only filesystem or a full disk.
pub fn write_atomic_checked<E: From<IoError>>(
    path: &Path,
    content: &[u8],
    attrs: NewFileAttrs,
    still_wanted: impl FnOnce() -> Result<(), E>,
) -> Result<(), E> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (mode, owner) = match fs::metadata(path) {
        Ok(meta) if !attrs.force => (meta.permissions().mode() & 0o7777, Some((meta.uid(), meta.gid()))),
        Ok(meta) => (attrs.mode, attrs.owner.or(Some((meta.uid(), meta.gid())))),
        Err(_) => (attrs.mode, attrs.owner),
    };
    remove_stale_temp_files(dir, &name);
    let tmp = dir.join(format!(".{name}.comfy-init-{}.tmp", std::process::id()));
    let written = (|| -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(content)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        file.sync_all()
    })();
    let abandon = |e: E| {
        let _ = fs::remove_file(&tmp);
        e
    };
    written.map_err(|e| abandon(IoError::write(path, e).into()))?;
    still_wanted().map_err(abandon)?;
    crate::test_hook::pause("before rename");
    fs::rename(&tmp, path).map_err(|e| abandon(IoError::write(path, e).into()))?;
    open_dir(dir).and_then(|d| d.sync_all()).map_err(|e| IoError::write(path, e).into())
}

/// Whether a failed replacement of `path` failed because `path` is a mount point: a single-file
/// bind mount (Docker's `-v ./my.env:/config/.env`) cannot be renamed over (EBUSY; EXDEV where
/// the kernel sees two filesystems). Such a file can only be written in place.
pub fn is_mount_point_error(e: &IoError) -> bool {
    matches!(e.source.raw_os_error(), Some(libc::EBUSY | libc::EXDEV))
}

/// Writes `content` into the existing file `path` in place, for a file that cannot be replaced
/// (a single-file bind mount, see [`is_mount_point_error`]): opened for writing without
/// `O_TRUNC` (and without creating, without following a symlink, without blocking on a FIFO),
/// checked to be a regular file on the open descriptor, then `still_wanted` is asked, and only
/// then the whole content is written from offset 0, the file cut to its length and synced. Not
/// atomic: a crash in the middle can leave a mix of old and new bytes; a reader in the
/// microseconds of the write can see one too. An Err from `still_wanted` writes nothing.
pub fn write_in_place_checked<E: From<IoError>>(
    path: &Path,
    content: &[u8],
    still_wanted: impl FnOnce() -> Result<(), E>,
) -> Result<(), E> {
    use std::os::unix::fs::FileExt;
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    let file = OpenOptions::new().write(true).custom_flags(flags).open(path).map_err(|e| IoError::write(path, e))?;
    let meta = file.metadata().map_err(|e| IoError::write(path, e))?;
    if let Some(what) = not_a_file(meta.file_type()) {
        let e = io::Error::new(io::ErrorKind::InvalidInput, format!("it is {what}, not a file"));
        return Err(IoError::write(path, e).into());
    }
    still_wanted()?;
    let written =
        file.write_all_at(content, 0).and_then(|()| file.set_len(content.len() as u64)).and_then(|()| file.sync_all());
    written.map_err(|e| IoError::write(path, e).into())
}

/// A failed file operation, typed: what was done, on which path, and the OS error with its errno.
/// Shown as one line an operator can act on (see [`explain_write_error`]).
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {}", path.display(), self.meaning())]
pub struct IoError {
    /// "read", "write", "lock", "delete"...: said as "cannot {op} {path}".
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl IoError {
    pub fn new(op: &'static str, path: &Path, source: io::Error) -> IoError {
        IoError { op, path: path.to_path_buf(), source }
    }

    pub fn write(path: &Path, source: io::Error) -> IoError {
        IoError::new("write", path, source)
    }

    /// The errno, when the OS gave one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// What the OS error means here, in words, with what to do where there is something to do.
    fn meaning(&self) -> String {
        match (self.op, self.source.raw_os_error()) {
            ("read", Some(libc::EACCES | libc::EPERM)) => {
                "permission denied: make it readable for comfy-init's user (see PUID/PGID)".to_string()
            }
            ("read" | "lock", _) => self.source.to_string(),
            _ => errno_meaning(&self.source),
        }
    }
}

/// Opens a folder, and only a folder: a FIFO swapped in for it fails (ENOTDIR) instead of
/// blocking the open.
pub fn open_dir(dir: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK | libc::O_CLOEXEC).open(dir)
}

/// A write killed before its rename leaves its temp file behind: sweep those of earlier runs.
fn remove_stale_temp_files(dir: &Path, name: &str) {
    let prefix = format!(".{name}.comfy-init-");
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if file.starts_with(&prefix) && file.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// One line an operator can act on, for a failed write.
pub fn explain_write_error(path: &Path, e: &io::Error) -> String {
    format!("cannot write {}: {}", path.display(), errno_meaning(e))
}

/// What an OS error means for whoever runs the container, and what to do, in words.
pub fn errno_meaning(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EROFS) => {
            "the filesystem is read-only: mount it read-write (drop ':ro' from the volume)".to_string()
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "permission denied: make the folder writable for comfy-init's user (see PUID/PGID)".to_string()
        }
        Some(libc::ENOSPC) => "the disk is full".to_string(),
        Some(libc::EBUSY) => {
            "it is a mount point (a single-file bind mount) and cannot be replaced: mount its folder instead"
                .to_string()
        }
        _ => e.to_string(),
    }
}

/// Whether we may write into `dir` (create and rename files there).
pub fn dir_writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
        && !nix::sys::statvfs::statvfs(dir)
            .map(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
            .unwrap_or(false)
}

/// Why [`open_dir_at`] opened no folder: a symlink was there (said as such), or the OS failed
/// (to make it or to open it: said as a failed write, errno kept).
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{} is a symlink, which comfy-init (root) does not follow", .0.display())]
    Symlink(PathBuf),
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Opens the folder `name` inside the folder `dir` (shown as `path`), made first (mode `create`)
/// when missing, and never through a symlink: root writing into a folder someone else owns must
/// not be sent elsewhere by a link planted there (`O_NOFOLLOW`; with `O_DIRECTORY` a symlink
/// fails with ENOTDIR). Err: one line naming the path; a symlink is said as such.
pub fn open_dir_at(dir: &File, name: &str, path: &Path, create: Option<u32>) -> Result<File, DirError> {
    use nix::sys::stat::{mkdirat, Mode};
    if let Some(mode) = create {
        match mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(mode)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(IoError::write(path, e.into()).into()),
        }
    }
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    open_at(dir, name, flags, 0).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTDIR | libc::ELOOP) if is_symlink_at(dir, name) => DirError::Symlink(path.to_path_buf()),
        _ => IoError::write(path, e).into(),
    })
}

/// Whether `name` inside `dir` is a symlink (looked at, not followed).
pub fn is_symlink_at(dir: &File, name: &str) -> bool {
    let flags = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
    nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name, flags)
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
}

/// `name` inside `dir` when it is a regular file (not a symlink: `O_NOFOLLOW`; checked with
/// `fstat` on the open file) of at most `cap` bytes; None for anything else.
pub fn read_at(dir: &File, name: &str, cap: u64) -> Option<Vec<u8>> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    let file = open_at(dir, name, flags, 0).ok()?;
    let meta = file.metadata().ok().filter(|m| m.is_file() && m.len() <= cap)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 <= cap).then_some(bytes)
}

/// [`write_atomic_checked`] by folder descriptor, for root writing into a folder someone else owns:
/// the temp file is created in `dir` with `O_CREAT|O_EXCL|O_NOFOLLOW` (nothing planted under its
/// name is opened, let alone followed), renamed over `name` with `renameat` (which replaces a
/// symlink there, never writes through it), then `dir` is synced. The file gets `mode` and our
/// owner. `dir_path` is for messages only.
pub fn write_atomic_at(dir: &File, dir_path: &Path, name: &str, content: &[u8], mode: u32) -> Result<(), IoError> {
    let path = dir_path.join(name);
    let tmp = format!(".{name}.comfy-init-{}.tmp", std::process::id());
    remove_stale_temp_files_at(dir, name);
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    let written = open_at(dir, &tmp, flags, 0o600).and_then(|mut file| {
        file.write_all(content)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()
    });
    let fd = Some(dir.as_raw_fd());
    let renamed = written.and_then(|()| nix::fcntl::renameat(fd, tmp.as_str(), fd, name).map_err(io::Error::from));
    if let Err(e) = renamed.and_then(|()| dir.sync_all()) {
        let _ = nix::unistd::unlinkat(fd, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        return Err(IoError::write(&path, e));
    }
    Ok(())
}

/// [`remove_stale_temp_files`] by folder descriptor (`unlinkat` removes a link, never its target).
fn remove_stale_temp_files_at(dir: &File, name: &str) {
    let prefix = format!(".{name}.comfy-init-");
    let Ok(fresh) = open_at(dir, ".", libc::O_RDONLY | libc::O_DIRECTORY, 0) else { return };
    let Ok(mut entries) = Entries::new(fresh.into()) else { return };
    let mut stale = Vec::new();
    while let Some(Ok(file)) = entries.next_name() {
        let file = file.to_bytes();
        if file.starts_with(prefix.as_bytes()) && file.ends_with(b".tmp") {
            stale.push(file.to_vec());
        }
    }
    for file in stale {
        let _ = nix::unistd::unlinkat(Some(dir.as_raw_fd()), file.as_slice(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
}

/// `openat(dir, name, flags | O_CLOEXEC, mode)`, as a File.
fn open_at(dir: &File, name: &str, flags: i32, mode: u32) -> io::Result<File> {
    let flags = nix::fcntl::OFlag::from_bits_retain(flags | libc::O_CLOEXEC);
    let mode = nix::sys::stat::Mode::from_bits_truncate(mode);
    let fd = nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags, mode)?;
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// A folder's entries, read through its descriptor (`fdopendir`, `readdir`), never by path.
/// (nix's `Dir` needs a nix feature this crate does not enable.)
pub struct Entries(std::ptr::NonNull<libc::DIR>);

impl Entries {
    /// Takes `dir`, an open folder, and reads it from where its offset is.
    pub fn new(dir: OwnedFd) -> io::Result<Entries> {
        let raw = dir.into_raw_fd();
        // SAFETY: `raw` is an open folder descriptor we own; on success the stream owns it.
        match std::ptr::NonNull::new(unsafe { libc::fdopendir(raw) }) {
            Some(stream) => Ok(Entries(stream)),
            None => {
                let e = io::Error::last_os_error();
                // SAFETY: fdopendir failed, so `raw` is still ours to close.
                unsafe { libc::close(raw) };
                Err(e)
            }
        }
    }

    /// The folder's descriptor, for `openat` and `fstatat` relative to it.
    pub fn fd(&self) -> RawFd {
        // SAFETY: the stream is open until drop.
        unsafe { libc::dirfd(self.0.as_ptr()) }
    }

    /// The next name (`.` and `..` included); None at the end. Valid until the next call.
    pub fn next_name(&mut self) -> Option<io::Result<&CStr>> {
        // readdir says an error only through errno.
        nix::errno::Errno::clear();
        // SAFETY: the stream is open until drop; one thread reads it (`&mut self`).
        let entry = unsafe { libc::readdir(self.0.as_ptr()) };
        if entry.is_null() {
            return (nix::errno::Errno::last_raw() != 0).then(io::Error::last_os_error).map(Err);
        }
        // SAFETY: readdir returned an entry whose d_name is NUL-terminated; it stays valid until
        // the next readdir or closedir, which the borrow of `self` rules out meanwhile.
        Some(Ok(unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }))
    }
}

impl Drop for Entries {
    fn drop(&mut self) {
        // SAFETY: the stream is open, and closed once, here (closing its descriptor too).
        unsafe { libc::closedir(self.0.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_keeps_mode() {
        let dir = std::env::temp_dir().join(format!("fsutil-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        let attrs = NewFileAttrs { mode: 0o600, owner: None, force: false };
        write_atomic_checked(&file, b"one", attrs, || Ok::<(), IoError>(())).unwrap();
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic_checked(&file, b"two", attrs, || Ok::<(), IoError>(())).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "temp file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_in_place_whole_and_cut_to_length_only_when_still_wanted() {
        let dir = std::env::temp_dir().join(format!("fsutil-inplace-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        fs::write(&file, "a longer old content\n").unwrap();
        let ino = fs::metadata(&file).unwrap().ino();
        let stop = || Err::<(), IoError>(IoError::write(&file, io::Error::from_raw_os_error(libc::EAGAIN)));
        assert!(write_in_place_checked(&file, b"new\n", stop).is_err());
        assert_eq!(fs::read(&file).unwrap(), b"a longer old content\n", "written although not wanted");
        write_in_place_checked::<IoError>(&file, b"new\n", || Ok(())).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"new\n");
        assert_eq!(fs::metadata(&file).unwrap().ino(), ino, "replaced, not written in place");
        // Never created, never a folder or a symlink.
        let missing = write_in_place_checked::<IoError>(&dir.join("missing"), b"x", || Ok(())).unwrap_err();
        assert_eq!(missing.errno(), Some(libc::ENOENT));
        assert!(!dir.join("missing").exists());
        assert!(write_in_place_checked::<IoError>(&dir, b"x", || Ok(())).is_err());
        std::os::unix::fs::symlink(&file, dir.join("link")).unwrap();
        let link = write_in_place_checked::<IoError>(&dir.join("link"), b"x", || Ok(())).unwrap_err();
        assert_eq!(link.errno(), Some(libc::ELOOP));
        assert_eq!(fs::read(&file).unwrap(), b"new\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn io_errors_keep_their_errno_and_say_what_to_do() {
        let path = Path::new("/config/.env");
        let busy = IoError::write(path, io::Error::from_raw_os_error(libc::EBUSY));
        assert!(is_mount_point_error(&busy));
        assert!(is_mount_point_error(&IoError::write(path, io::Error::from_raw_os_error(libc::EXDEV))));
        assert!(busy.to_string().starts_with("cannot write /config/.env: it is a mount point"), "{busy}");
        let ro = IoError::write(path, io::Error::from_raw_os_error(libc::EROFS));
        assert!(!is_mount_point_error(&ro));
        assert_eq!(ro.errno(), Some(libc::EROFS));
        assert_eq!(ro.to_string(), explain_write_error(path, &io::Error::from_raw_os_error(libc::EROFS)));
        let denied = IoError::new("read", path, io::Error::from_raw_os_error(libc::EACCES));
        assert!(denied.to_string().contains("make it readable"), "{denied}");
    }

    #[test]
    fn writes_by_folder_descriptor_never_through_a_symlink() {
        let dir = std::env::temp_dir().join(format!("fsutil-at-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("victim")).unwrap();
        std::os::unix::fs::symlink(dir.join("victim"), dir.join("planted")).unwrap();
        let top = open_dir(&dir).unwrap();
        let err = open_dir_at(&top, "planted", &dir.join("planted"), Some(0o755)).unwrap_err();
        assert!(matches!(&err, DirError::Symlink(p) if *p == dir.join("planted")), "{err}");
        assert!(err.to_string().ends_with("planted is a symlink, which comfy-init (root) does not follow"), "{err}");
        let ours = open_dir_at(&top, "ours", &dir.join("ours"), Some(0o755)).unwrap();
        std::os::unix::fs::symlink(dir.join("victim/file"), dir.join("ours/node.py")).unwrap();
        write_atomic_at(&ours, &dir.join("ours"), "node.py", b"print()", 0o644).unwrap();
        assert!(!dir.join("victim/file").exists(), "written through the symlink");
        assert_eq!(read_at(&ours, "node.py", 100).as_deref(), Some(&b"print()"[..]));
        assert_eq!(fs::metadata(dir.join("ours/node.py")).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(fs::read_dir(dir.join("ours")).unwrap().count(), 1, "temp file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }
}
