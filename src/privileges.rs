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
//!
//! Every root action here goes by file descriptor (security issue 22). PUID owns these folders
//! and may put anything in them between two starts, or while we walk them: a symlink
//! (`temp -> /etc` would give `/etc` away), a folder swapped for a symlink between a check and a
//! descent, a file swapped for a hard link to a root file (`/etc/shadow`) between a check and a
//! chown. So: ComfyUI's folder is opened once, each child is opened relative to it with
//! `O_NOFOLLOW` (a symlink is refused, never followed), checked with `fstat` on the descriptor
//! and changed with `fchown`/`fchownat(AT_EMPTY_PATH)` on that same descriptor: the inode
//! checked is the inode changed, whatever happens to the names meanwhile. A file with other hard
//! links is never changed (its other name may be anywhere on the filesystem).

use std::ffi::{CStr, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode};
use nix::unistd::{fchown, fchownat, Gid, Uid};
use nix::NixPath;

/// The folders of ComfyUI that its user writes to.
const WRITABLE: &[&str] = &["output", "input", "user", "temp"];

/// How deep the recursive walk goes: each level holds a descriptor open (far below the usual
/// 1024), and a deeper tree is more likely a trap than ComfyUI's output.
const MAX_DEPTH: usize = 64;

/// How many hard-linked files the walk names before it only counts them.
const HARD_LINKS_NAMED: usize = 20;

/// A folder opened by name in another, never through a symlink: `O_NOFOLLOW` refuses a link as
/// the last component, `O_DIRECTORY` anything else that is not a folder (a FIFO cannot block us
/// either: `O_NONBLOCK`).
const FOLDER: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_NONBLOCK);

/// A folder of ComfyUI's that cannot be given to PUID:PGID: whose it is, why not, and the
/// command that fixes it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} belongs to uid {found}, but ComfyUI runs as PUID={uid}, and comfy-init cannot give it to \
     {uid}:{gid} ({why}): run on the host `chown -R {uid}:{gid} <the folder mounted at {}>` (or \
     inside: `chown -R {uid}:{gid} {}`)",
    dir.display(),
    dir.display(),
    dir.display()
)]
pub struct ChownError {
    pub dir: PathBuf,
    /// Its owner.
    pub found: u32,
    pub uid: u32,
    pub gid: u32,
    #[source]
    pub why: Refused,
}

/// Why a folder was not given.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("COMFY_INIT_CHOWN=off")]
    Off,
    /// The folder itself could not be changed: the OS error.
    #[error(transparent)]
    Os(std::io::Error),
    /// `COMFY_INIT_CHOWN=recursive`: something inside could not be read or changed.
    #[error(transparent)]
    Walk(#[from] WalkError),
}

/// What stopped the recursive walk, with the path inside and the OS error.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot chown {}: {source}", path.display())]
    Chown { path: PathBuf, source: std::io::Error },
}

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
) -> Result<Vec<String>, ChownError> {
    let mut changed = Vec::new();
    // The configured path is the operator's, not PUID's: a symlink in it is followed (images
    // often link /ComfyUI somewhere). Everything below is opened relative to this descriptor.
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NONBLOCK;
    let Ok(comfyui) = open_at(libc::AT_FDCWD, comfyui_dir, flags) else { return Ok(changed) };
    let top = comfyui.as_raw_fd(); // held open by `comfyui` until we return
    for name in WRITABLE {
        changed.extend(create_missing(top, name, &comfyui_dir.join(name), owner));
    }
    for name in WRITABLE.iter().copied().chain(custom_nodes.then_some("custom_nodes")) {
        let path = comfyui_dir.join(name);
        if let Some((fd, st)) = open_folder(top, OsStr::new(name), &path) {
            give_folder(&fd, &st, &path, owner, chown, &mut changed)?;
        }
    }
    for node in login_nodes {
        give_login_node(top, comfyui_dir, node, owner, chown, &mut changed)?;
    }
    give_login(top, comfyui_dir, owner, chown, &mut changed);
    if let Some(warning) = models_unreadable(&comfyui_dir.join("models"), owner) {
        log::warn!("{warning}");
    }
    Ok(changed)
}

/// One of ComfyUI's folders (opened as `fd`, found as `st`), given to `owner`, and with
/// `COMFY_INIT_CHOWN=recursive` all it holds.
fn give_folder(
    fd: &OwnedFd,
    st: &FileStat,
    path: &Path,
    owner: (u32, u32),
    chown: Chown,
    changed: &mut Vec<String>,
) -> Result<(), ChownError> {
    let refused =
        |why: Refused| ChownError { dir: path.to_path_buf(), found: st.st_uid, uid: owner.0, gid: owner.1, why };
    if (st.st_uid, st.st_gid) != owner {
        if chown == Chown::Off {
            return Err(refused(Refused::Off));
        }
        // On the descriptor: the folder checked is the folder changed.
        fchown(fd.as_raw_fd(), Some(Uid::from_raw(owner.0)), Some(Gid::from_raw(owner.1)))
            .map_err(|e| refused(Refused::Os(e.into())))?;
        changed.push(format!("{}: now owned by {}:{}", path.display(), owner.0, owner.1));
    }
    if chown == Chown::Recursive {
        let mut walk = Walk { dev: st.st_dev, owner, changed: 0, hard_links: 0 };
        let dir = fd.try_clone().map_err(|e| refused(Refused::Os(e)))?;
        walk.folder(dir, path, 1).map_err(|e| refused(e.into()))?;
        if walk.hard_links > HARD_LINKS_NAMED {
            let more = walk.hard_links - HARD_LINKS_NAMED;
            log::warn!("{}: {more} more files with other hard links left as they are", path.display());
        }
        if walk.changed > 0 {
            let n = walk.changed;
            changed.push(format!("{}: {n} entries inside now owned by {}:{}", path.display(), owner.0, owner.1));
        }
    }
    Ok(())
}

/// A ComfyUI-Login folder (`<comfyui>/custom_nodes/<name>`) and its `.secret-key.txt`. Opened
/// component by component from ComfyUI's folder, none through a symlink: PUID owns
/// `custom_nodes` and could have made any of them a link.
fn give_login_node(
    top: RawFd,
    comfyui_dir: &Path,
    node: &Path,
    owner: (u32, u32),
    chown: Chown,
    changed: &mut Vec<String>,
) -> Result<(), ChownError> {
    let names: Option<Vec<&OsStr>> = node.strip_prefix(comfyui_dir).ok().and_then(|rel| {
        rel.components().map(|c| if let Component::Normal(name) = c { Some(name) } else { None }).collect()
    });
    let Some(names) = names.filter(|n| !n.is_empty()) else {
        log::warn!("{} is not a folder inside {}: not changed", node.display(), comfyui_dir.display());
        return Ok(());
    };
    let mut shown = comfyui_dir.to_path_buf();
    let mut held: Option<(OwnedFd, FileStat)> = None;
    for name in names {
        shown.push(name);
        let parent = held.as_ref().map_or(top, |(fd, _)| fd.as_raw_fd());
        let Some(next) = open_folder(parent, name, &shown) else { return Ok(()) };
        held = Some(next);
    }
    let Some((fd, st)) = held else { return Ok(()) };
    give_folder(&fd, &st, node, owner, chown, changed)?;
    changed.extend(give_file(fd.as_raw_fd(), node, ".secret-key.txt", owner));
    Ok(())
}

/// login/ too, but a read-only one (a Kubernetes Secret holding a ready PASSWORD) is fine: only
/// ComfyUI-Login's first-login write would fail there, and comfy-init writes PASSWORD itself.
fn give_login(top: RawFd, comfyui_dir: &Path, owner: (u32, u32), chown: Chown, changed: &mut Vec<String>) {
    let login = comfyui_dir.join("login");
    let Some((fd, st)) = open_folder(top, OsStr::new("login"), &login) else { return };
    if (st.st_uid, st.st_gid) == owner || chown == Chown::Off {
        return;
    }
    match fchown(fd.as_raw_fd(), Some(Uid::from_raw(owner.0)), Some(Gid::from_raw(owner.1))) {
        Ok(()) => changed.push(format!("{}: now owned by {}:{}", login.display(), owner.0, owner.1)),
        Err(e) => log::warn!("{} stays owned by uid {} ({})", login.display(), st.st_uid, os_error(e)),
    }
}

/// Opens the folder `name` in `dir` (shown as `path`), never through a symlink. None: missing,
/// not a folder, or a symlink (said: PUID may have planted it to make us change its target).
fn open_folder(dir: RawFd, name: &OsStr, path: &Path) -> Option<(OwnedFd, FileStat)> {
    match open_at(dir, name, FOLDER) {
        Ok(fd) => {
            let st = fstat(fd.as_raw_fd()).ok()?;
            Some((fd, st))
        }
        Err(Errno::ENOENT) => None,
        // O_NOFOLLOW|O_DIRECTORY on a symlink fails with ENOTDIR (ELOOP without O_DIRECTORY).
        Err(Errno::ENOTDIR | Errno::ELOOP) => {
            if fstatat(Some(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|st| is(&st, libc::S_IFLNK)) {
                log::warn!("{} is a symlink; not followed, not changed", path.display());
            }
            None
        }
        Err(e) => {
            log::warn!("cannot open {} ({}): not changed", path.display(), os_error(e));
            None
        }
    }
}

/// A folder ComfyUI creates at start, made beforehand for `owner` (ComfyUI, as PUID, cannot
/// create it in a folder of root's). Not made: said, and ComfyUI is left to try.
fn create_missing(dir: RawFd, name: &str, path: &Path, owner: (u32, u32)) -> Option<String> {
    if fstatat(Some(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW) != Err(Errno::ENOENT) {
        return None; // there (a symlink too: the folder step says so), or unknowable
    }
    // mkdirat, then open what is there now without following a link, then fchown that: a
    // folder swapped for a symlink in between fails the open; anything else we change is the
    // folder we opened, inside ComfyUI's folder.
    let made = mkdirat(Some(dir), name, Mode::from_bits_truncate(0o755))
        .and_then(|()| open_at(dir, name, FOLDER))
        .and_then(|fd| fchown(fd.as_raw_fd(), Some(Uid::from_raw(owner.0)), Some(Gid::from_raw(owner.1))));
    match made {
        Ok(()) => Some(format!("{}: created, owned by {}:{}", path.display(), owner.0, owner.1)),
        Err(Errno::EEXIST) => None, // made meanwhile: judged as any existing folder next
        Err(e) => {
            log::warn!(
                "cannot create {} for {}:{} ({}): ComfyUI may fail to create it",
                path.display(),
                owner.0,
                owner.1,
                os_error(e)
            );
            None
        }
    }
}

/// A file the user's ComfyUI rewrites (ComfyUI-Login's key, renewed every 30 days) in the folder
/// `dir` (shown as `dir_path`), given to `owner`: never through a symlink, never when it has
/// other hard links. Failing is said, not fatal: the folder is what matters.
fn give_file(dir: RawFd, dir_path: &Path, name: &str, owner: (u32, u32)) -> Option<String> {
    let path = dir_path.join(name);
    let fd = open_at(dir, name, OFlag::O_PATH | OFlag::O_NOFOLLOW).ok()?;
    let st = fstat(fd.as_raw_fd()).ok().filter(|st| is(st, libc::S_IFREG))?;
    if (st.st_uid, st.st_gid) == owner {
        return None;
    }
    if !sole_link(dir, name, &st) {
        log::warn!("{} has other hard links, or changed: it stays owned by uid {}", path.display(), st.st_uid);
        return None;
    }
    match chown_fd(&fd, owner) {
        Ok(()) => Some(format!("{}: now owned by {}:{}", path.display(), owner.0, owner.1)),
        Err(e) => {
            log::warn!("{} stays owned by uid {} ({})", path.display(), st.st_uid, os_error(e));
            None
        }
    }
}

/// `COMFY_INIT_CHOWN=recursive`: everything below a folder, by descriptor.
struct Walk {
    /// The top folder's filesystem: the walk never leaves it (a mount inside is not ours).
    dev: u64,
    owner: (u32, u32),
    /// Entries given to `owner`.
    changed: usize,
    /// Files left alone because they have other hard links.
    hard_links: usize,
}

impl Walk {
    /// Each entry of the folder `dir` (shown as `path`), at `depth` below the top.
    fn folder(&mut self, dir: OwnedFd, path: &Path, depth: usize) -> Result<(), WalkError> {
        let cannot_read = |source| WalkError::Read { path: path.to_path_buf(), source };
        let mut entries = crate::fsutil::Entries::new(dir).map_err(cannot_read)?;
        let fd = entries.fd();
        while let Some(name) = entries.next_name() {
            let name = name.map_err(cannot_read)?;
            if !matches!(name.to_bytes(), b"." | b"..") {
                self.entry(fd, name, &path.join(OsStr::from_bytes(name.to_bytes())), depth)?;
            }
        }
        Ok(())
    }

    /// One entry: opened as itself (`O_PATH|O_NOFOLLOW` opens a symlink, a FIFO, a device
    /// without following or blocking), then judged by `fstat` on that descriptor.
    fn entry(&mut self, dir: RawFd, name: &CStr, path: &Path, depth: usize) -> Result<(), WalkError> {
        let Ok(fd) = open_at(dir, name, OFlag::O_PATH | OFlag::O_NOFOLLOW) else { return Ok(()) }; // gone
        let Ok(st) = fstat(fd.as_raw_fd()) else { return Ok(()) };
        if st.st_dev != self.dev {
            return Ok(()); // a mount inside (models?): never leave the filesystem
        }
        if is(&st, libc::S_IFDIR) {
            self.subfolder(dir, name, &st, path, depth)
        } else {
            self.leaf(dir, name, &fd, &st, path)
        }
    }

    /// A folder inside: re-opened as a folder (`O_PATH` cannot be read), and walked only when
    /// the folder opened is the one judged: swapped for a symlink or another folder in between,
    /// it is skipped. From here on the walk holds it by descriptor, wherever it is moved.
    fn subfolder(
        &mut self,
        dir: RawFd,
        name: &CStr,
        st: &FileStat,
        path: &Path,
        depth: usize,
    ) -> Result<(), WalkError> {
        if depth >= MAX_DEPTH {
            log::warn!("{} is more than {MAX_DEPTH} folders deep: not walked, not changed", path.display());
            return Ok(());
        }
        let opened = open_at(dir, name, FOLDER).and_then(|fd| fstat(fd.as_raw_fd()).map(|now| (fd, now)));
        let Ok((sub, now)) = opened.map_err(|_| swapped(path)) else { return Ok(()) };
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
            swapped(path);
            return Ok(());
        }
        if (now.st_uid, now.st_gid) != self.owner {
            fchown(sub.as_raw_fd(), Some(Uid::from_raw(self.owner.0)), Some(Gid::from_raw(self.owner.1)))
                .map_err(|e| WalkError::Chown { path: path.to_path_buf(), source: e.into() })?;
            self.changed += 1;
        }
        self.folder(sub, path, depth + 1)
    }

    /// Anything but a folder: a symlink is given as a link (never followed), a file only when
    /// this is its one name (a hard link may be `/etc/shadow`'s inode).
    fn leaf(&mut self, dir: RawFd, name: &CStr, fd: &OwnedFd, st: &FileStat, path: &Path) -> Result<(), WalkError> {
        if (st.st_uid, st.st_gid) == self.owner {
            return Ok(());
        }
        if st.st_nlink > 1 {
            self.hard_links += 1;
            if self.hard_links <= HARD_LINKS_NAMED {
                log::warn!(
                    "{} has other hard links (one may be a file outside ComfyUI's folder): left owned by uid {}",
                    path.display(),
                    st.st_uid
                );
            }
            return Ok(());
        }
        if !sole_link(dir, name, st) {
            swapped(path);
            return Ok(());
        }
        chown_fd(fd, self.owner).map_err(|e| WalkError::Chown { path: path.to_path_buf(), source: e.into() })?;
        self.changed += 1;
        Ok(())
    }
}

/// Whether `name` in `dir` is, right now, the one and only link of the inode `st` describes.
/// The descriptor pins the inode, not its links: PUID could link a root file in, let us open
/// it, and unlink its own name before our `fstat` (which then counts one link: the root file's).
/// Asked by name after the `fstat`: at that moment the only link of the inode is in our folder,
/// so it is not a file of someone else's elsewhere.
fn sole_link<P: ?Sized + NixPath>(dir: RawFd, name: &P, st: &FileStat) -> bool {
    st.st_nlink == 1
        && fstatat(Some(dir), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|now| (now.st_dev, now.st_ino, now.st_nlink) == (st.st_dev, st.st_ino, 1))
}

/// Changes the owner of the inode an `O_PATH|O_NOFOLLOW` descriptor holds (a symlink itself,
/// not its target): the inode checked is the inode changed.
fn chown_fd(fd: &OwnedFd, (uid, gid): (u32, u32)) -> nix::Result<()> {
    let flags = AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW;
    fchownat(Some(fd.as_raw_fd()), "", Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), flags)
}

/// Said when an entry changed between two looks at it: PUID at work, or a coincidence.
fn swapped(path: &Path) {
    log::warn!("{} changed while it was being walked: skipped, not changed", path.display());
}

/// `openat`, close-on-exec, into an owned descriptor.
fn open_at<P: ?Sized + NixPath>(dir: RawFd, name: &P, flags: OFlag) -> nix::Result<OwnedFd> {
    let fd = nix::fcntl::openat(Some(dir), name, flags | OFlag::O_CLOEXEC, Mode::empty())?;
    // SAFETY: openat just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `st` is of the file type `kind` (`libc::S_IFDIR`...).
fn is(st: &FileStat, kind: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == kind
}

/// An errno as the rest of comfy-init words it (as std::io does).
fn os_error(e: Errno) -> String {
    std::io::Error::from(e).to_string()
}

/// `models` must be readable (and searchable) by ComfyUI's user; it is never changed. Opened as
/// a folder, following a symlink (models is often one, to a big mount): only its mode is read,
/// on the descriptor (`fstat`), and nothing is ever done to it.
fn models_unreadable(models: &Path, (uid, gid): (u32, u32)) -> Option<String> {
    let meta = crate::fsutil::open_dir(models).and_then(|dir| dir.metadata()).ok()?;
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

// ------------------------------------------------------- root's file I/O near PUID ---

/// Runs `op`, file I/O on `file` (read, write, unlink), with the ComfyUI user's filesystem
/// identity (`setfsuid`/`setfsgid`) when that user could change where `file` leads: a symlink it
/// may replace, a folder on the way it may swap. Whatever it planted, root then reads and writes
/// only what PUID itself may: a `.env -> /etc/ld.so.preload` left in PUID's config folder fails
/// with EACCES instead of creating a root-loaded file that PUID owns. A path no folder of which
/// PUID can change is left to root (a root-owned `.env` in a root-owned folder). Without
/// `owner`, or when we are not root, `op` runs as it is. The identity is per thread: PID 1's
/// loop has the only one.
pub fn as_puid_where_exposed<T>(file: &Path, owner: Option<(u32, u32)>, op: impl FnOnce() -> T) -> T {
    // SAFETY: geteuid cannot fail.
    let Some((uid, gid)) = owner.filter(|_| unsafe { libc::geteuid() } == 0) else { return op() };
    if !exposed(file, (uid, gid)) {
        return op();
    }
    // setfsuid answers the previous identity whatever happens: read back to know it took.
    let old_gid = nix::unistd::setfsgid(Gid::from_raw(gid));
    let old_uid = nix::unistd::setfsuid(Uid::from_raw(uid));
    let result = op();
    nix::unistd::setfsuid(old_uid);
    nix::unistd::setfsgid(old_gid);
    result
}

/// Whether `owner` could change where `file` leads. Every folder on the way to `file`'s folder,
/// as written and as resolved, is looked at: an entry sits where PUID may replace it when its
/// parent is writable by PUID (in a sticky folder such as /tmp: only PUID's own entries). The
/// folder itself may be PUID's (we only create files in it and rename them over their name,
/// which never follows a link), but a symlink `file` in it leads wherever PUID wants.
pub fn exposed(file: &Path, owner: (u32, u32)) -> bool {
    let Ok(file) = std::path::absolute(file) else { return true };
    let Some(dir) = file.parent() else { return true };
    if folders_exposed(dir, owner) {
        return true;
    }
    match std::fs::symlink_metadata(&file) {
        Ok(link) if link.file_type().is_symlink() => {
            let replaceable = std::fs::symlink_metadata(dir).map_or(true, |d| can_replace(&d, &link, owner));
            // A dangling link leads where nothing is checked: exposed.
            replaceable
                || file.canonicalize().ok().and_then(|t| t.parent().map(|p| folders_exposed(p, owner))) != Some(false)
        }
        _ => false,
    }
}

/// Some folder on the way to `dir` (as written, then as resolved) is one PUID may replace.
fn folders_exposed(dir: &Path, owner: (u32, u32)) -> bool {
    let resolved = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    for path in [dir, resolved.as_path()] {
        let mut parent: Option<std::fs::Metadata> = None;
        let mut ways: Vec<&Path> = path.ancestors().collect();
        ways.reverse();
        for step in ways {
            // A missing folder is made by us, by descriptor or as PUID: nothing to replace yet.
            let Ok(meta) = std::fs::symlink_metadata(step) else { break };
            if parent.as_ref().is_some_and(|p| can_replace(p, &meta, owner)) {
                return true;
            }
            parent = Some(meta);
        }
    }
    false
}

/// Whether `owner` may replace `entry`, found in the folder `parent`.
fn can_replace(parent: &std::fs::Metadata, entry: &std::fs::Metadata, (uid, gid): (u32, u32)) -> bool {
    let mode = parent.mode();
    let writable =
        (parent.uid() == uid && mode & 0o200 != 0) || (parent.gid() == gid && mode & 0o020 != 0) || mode & 0o002 != 0;
    let sticky = mode & libc::S_ISVTX != 0;
    writable && (!sticky || entry.uid() == uid || parent.uid() == uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn root() -> bool {
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipped: changing owners needs root");
        }
        root
    }

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("privileges-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("ComfyUI")).unwrap();
        dir
    }

    fn owner(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().uid()
    }

    #[test]
    fn models_are_judged_readable_by_the_bits_that_apply_to_the_user() {
        let dir = std::env::temp_dir().join(format!("models-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        let me = fs::metadata(&dir).unwrap();
        assert_eq!(models_unreadable(&dir, (me.uid(), me.gid())), None);
        assert!(models_unreadable(&dir, (me.uid() + 12345, me.gid() + 12345)).is_some(), "others have no r-x");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(models_unreadable(&dir, (me.uid() + 12345, me.gid() + 12345)), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_that_is_a_symlink_is_neither_followed_nor_changed() {
        if !root() {
            return;
        }
        let dir = temp("link");
        let (comfyui, victim) = (dir.join("ComfyUI"), dir.join("victim"));
        fs::create_dir_all(&victim).unwrap();
        fs::write(victim.join("file"), "root's").unwrap();
        symlink(&victim, comfyui.join("temp")).unwrap();
        let nodes = comfyui.join("custom_nodes");
        fs::create_dir_all(&nodes).unwrap();
        symlink(&victim, nodes.join("ComfyUI-Login")).unwrap();
        for chown in [Chown::Folders, Chown::Recursive] {
            let login = [nodes.join("ComfyUI-Login")];
            let changed = prepare_folders(&comfyui, (65534, 65534), chown, true, &login).unwrap();
            assert!(changed.iter().all(|c| !c.contains("temp") && !c.contains("Login")), "{changed:?}");
            assert_eq!((owner(&victim), owner(&victim.join("file"))), (0, 0), "{chown:?}");
            assert_eq!(owner(&comfyui.join("output")), 65534, "created for PUID");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recursive_gives_single_files_and_links_as_links_but_not_hard_links() {
        if !root() {
            return;
        }
        let dir = temp("tree");
        let output = dir.join("ComfyUI/output");
        fs::create_dir_all(output.join("a/b")).unwrap();
        fs::write(output.join("a/b/image.png"), "png").unwrap();
        let (outside, shadow) = (dir.join("outside.txt"), dir.join("shadow"));
        fs::write(&outside, "not ComfyUI's").unwrap();
        fs::write(&shadow, "root's").unwrap();
        symlink(&outside, output.join("a/link")).unwrap();
        fs::hard_link(&shadow, output.join("a/hard")).unwrap();
        let changed = prepare_folders(&dir.join("ComfyUI"), (65534, 65534), Chown::Recursive, false, &[]).unwrap();
        assert!(
            changed.iter().any(|c| c.ends_with("output: 4 entries inside now owned by 65534:65534")),
            "{changed:?}"
        );
        for inside in ["a", "a/b", "a/b/image.png", "a/link"] {
            assert_eq!(owner(&output.join(inside)), 65534, "{inside}");
        }
        assert_eq!(owner(&outside), 0, "the link was followed");
        assert_eq!(owner(&shadow), 0, "a hard link was given away");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_login_node_key_is_given_only_when_it_is_its_one_link() {
        if !root() {
            return;
        }
        let dir = temp("key");
        let node = dir.join("ComfyUI/custom_nodes/ComfyUI-Login");
        fs::create_dir_all(&node).unwrap();
        let shadow = dir.join("shadow");
        fs::write(&shadow, "root's").unwrap();
        fs::hard_link(&shadow, node.join(".secret-key.txt")).unwrap();
        let login = [node.clone()];
        prepare_folders(&dir.join("ComfyUI"), (65534, 65534), Chown::Folders, false, &login).unwrap();
        assert_eq!((owner(&node), owner(&shadow)), (65534, 0));
        fs::remove_file(node.join(".secret-key.txt")).unwrap();
        fs::write(node.join(".secret-key.txt"), "key").unwrap();
        let changed = prepare_folders(&dir.join("ComfyUI"), (65534, 65534), Chown::Folders, false, &login).unwrap();
        assert_eq!(owner(&node.join(".secret-key.txt")), 65534, "{changed:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
