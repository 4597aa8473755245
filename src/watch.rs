//! inotify on the PARENT folders of the files that hold credentials: atomic renames, editors'
//! swap files and Kubernetes' `..data` symlink swap all show up as events in the folder, where a
//! watch on the file itself would stay pinned to a dead inode. A folder that is deleted or
//! replaced is watched again as soon as it exists; meanwhile its nearest ancestor is watched.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// What a batch of events says about the credential files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    None,
    /// Something changed and may still be changing (a write in progress, a file created).
    Changing,
    /// A save ended: a file renamed into place (editors, Kubernetes' `..data` swap) or closed
    /// after writing. Nothing is left to wait for.
    Saved,
}

/// A folder and the names in it that matter (empty: every name).
#[derive(Debug, Clone)]
pub struct Target {
    pub dir: PathBuf,
    pub names: Vec<OsString>,
}

pub struct Watcher {
    inotify: Inotify,
    /// One per folder: two files in one folder (a `.env` inside `login/`) share a target.
    targets: Vec<Target>,
    /// What each live watch stands for: target folders themselves, or ancestors standing in for
    /// folders that do not exist (yet). inotify gives one descriptor per inode, so one watch can
    /// stand for several targets (a missing `login/` whose stand-in is the `.env`'s folder).
    watches: HashMap<WatchDescriptor, Vec<Role>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Role {
    target: usize,
    /// The target's own folder (true) or a stand-in ancestor (false).
    is_target: bool,
}

const DIR_EVENTS: AddWatchFlags = AddWatchFlags::from_bits_truncate(
    AddWatchFlags::IN_CLOSE_WRITE.bits()
        | AddWatchFlags::IN_MODIFY.bits()
        | AddWatchFlags::IN_ATTRIB.bits()
        | AddWatchFlags::IN_CREATE.bits()
        | AddWatchFlags::IN_DELETE.bits()
        | AddWatchFlags::IN_MOVED_FROM.bits()
        | AddWatchFlags::IN_MOVED_TO.bits()
        | AddWatchFlags::IN_DELETE_SELF.bits()
        | AddWatchFlags::IN_MOVE_SELF.bits()
        | AddWatchFlags::IN_ONLYDIR.bits(),
);

impl Watcher {
    pub fn new(targets: Vec<Target>) -> nix::Result<Watcher> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let mut w = Watcher { inotify, targets: merge(targets), watches: HashMap::new() };
        w.ensure_watches();
        Ok(w)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Reads every pending event: whether one of them may change a credential.
    pub fn drain(&mut self) -> Activity {
        let mut relevant = false;
        let mut complete = false;
        let mut rewatch = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for event in events {
                let Some(roles) = self.watches.get(&event.wd) else { continue };
                if event
                    .mask
                    .intersects(AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF)
                {
                    // The folder went away (or was renamed): watch it anew.
                    self.watches.remove(&event.wd);
                    let _ = self.inotify.rm_watch(event.wd);
                    rewatch = true;
                    relevant = true;
                    continue;
                }
                for role in roles {
                    if !role.is_target {
                        rewatch = true; // something appeared on the way to a missing folder
                        continue;
                    }
                    let names = &self.targets[role.target].names;
                    if names.is_empty() || event.name.as_ref().map(|n| names.contains(n)).unwrap_or(true) {
                        relevant = true;
                        complete |= event.mask.intersects(AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE);
                    }
                }
            }
        }
        if rewatch {
            relevant |= self.ensure_watches();
        }
        match (relevant, complete) {
            (false, _) => Activity::None,
            (true, false) => Activity::Changing,
            (true, true) => Activity::Saved,
        }
    }

    /// Watches every target folder, or the nearest existing ancestor of a missing one. Returns
    /// true when a target folder came (back) into view.
    fn ensure_watches(&mut self) -> bool {
        let mut appeared = false;
        for (index, target) in self.targets.iter().enumerate() {
            let live = self.watches.values().flatten().any(|r| *r == Role { target: index, is_target: true });
            if live {
                continue;
            }
            // Drop this target's stand-in before trying the real folder again; the watch itself
            // goes only when nothing else stands on it.
            let stand_in = Role { target: index, is_target: false };
            for roles in self.watches.values_mut() {
                roles.retain(|r| *r != stand_in);
            }
            let unused: Vec<WatchDescriptor> =
                self.watches.iter().filter(|(_, roles)| roles.is_empty()).map(|(wd, _)| *wd).collect();
            for wd in unused {
                self.watches.remove(&wd);
                let _ = self.inotify.rm_watch(wd);
            }
            let (dir, is_target) = match self.inotify.add_watch(&target.dir, DIR_EVENTS) {
                Ok(wd) => (Some(wd), true),
                Err(_) => {
                    log::debug!("{} does not exist: waiting for it", target.dir.display());
                    let ancestor = nearest_existing_ancestor(&target.dir);
                    (ancestor.and_then(|a| self.inotify.add_watch(&a, DIR_EVENTS).ok()), false)
                }
            };
            if let Some(wd) = dir {
                self.watches.entry(wd).or_default().push(Role { target: index, is_target });
                if is_target {
                    appeared = true;
                    log::debug!("watching {}", target.dir.display());
                }
            }
        }
        appeared
    }
}

/// One target per folder, with the names of all the files that matter in it (none: all).
fn merge(targets: Vec<Target>) -> Vec<Target> {
    let mut merged: Vec<Target> = Vec::new();
    for t in targets {
        match merged.iter_mut().find(|m| m.dir == t.dir) {
            Some(m) if m.names.is_empty() || t.names.is_empty() => m.names.clear(),
            Some(m) => {
                for name in t.names {
                    if !m.names.contains(&name) {
                        m.names.push(name);
                    }
                }
            }
            None => merged.push(t),
        }
    }
    merged
}

fn nearest_existing_ancestor(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().skip(1).find(|a| a.is_dir()).map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(dir: &str, names: &[&str]) -> Target {
        Target { dir: dir.into(), names: names.iter().map(OsString::from).collect() }
    }

    #[test]
    fn files_in_one_folder_share_one_target() {
        let merged = merge(vec![target("/a", &["PASSWORD"]), target("/b", &[".env"]), target("/a", &[".env"])]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].names, vec![OsString::from("PASSWORD"), OsString::from(".env")]);
        let merged = merge(vec![target("/a", &["PASSWORD"]), target("/a", &[])]);
        assert!(merged[0].names.is_empty(), "a whole-folder target takes every name");
    }

    #[test]
    fn two_files_in_one_folder_are_both_seen() {
        let dir = std::env::temp_dir().join(format!("watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.to_str().unwrap();
        let mut w = Watcher::new(vec![target(d, &["PASSWORD"]), target(d, &[".env"])]).unwrap();
        for name in ["PASSWORD", ".env"] {
            std::fs::write(dir.join(name), "x").unwrap();
            assert_eq!(w.drain(), Activity::Saved, "{name} not seen");
        }
        std::fs::write(dir.join("other"), "x").unwrap();
        assert_eq!(w.drain(), Activity::None);
        // Opened for writing and not closed yet: still changing.
        let mut open = std::fs::OpenOptions::new().write(true).open(dir.join(".env")).unwrap();
        std::io::Write::write_all(&mut open, b"y").unwrap();
        assert_eq!(w.drain(), Activity::Changing);
        drop(open);
        assert_eq!(w.drain(), Activity::Saved);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_folder_is_watched_through_an_ancestor_another_target_also_watches() {
        let dir = std::env::temp_dir().join(format!("watch-anc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let login = dir.join("login");
        let mut w = Watcher::new(vec![
            target(dir.to_str().unwrap(), &[".env"]),
            target(login.to_str().unwrap(), &["PASSWORD"]),
        ])
        .unwrap();
        std::fs::create_dir(&login).unwrap();
        w.drain();
        std::fs::write(login.join("PASSWORD"), "x").unwrap();
        assert_ne!(w.drain(), Activity::None, "PASSWORD in a folder created later not seen");
        assert_eq!(w.watches.len(), 2, "the stand-in role is gone, the shared watch kept: {:?}", w.watches);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
