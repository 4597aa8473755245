//! inotify on the PARENT folders of the files that hold credentials: atomic renames, editors'
//! swap files and Kubernetes' `..data` symlink swap all show up as events in the folder, where a
//! watch on the file itself would stay pinned to a dead inode. A folder that is deleted or
//! replaced is watched again as soon as it exists; meanwhile its nearest ancestor is watched.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// A folder and the names in it that matter (empty: every name).
#[derive(Debug, Clone)]
pub struct Target {
    pub dir: PathBuf,
    pub names: Vec<OsString>,
}

pub struct Watcher {
    inotify: Inotify,
    targets: Vec<Target>,
    /// What each live watch stands for: the target's folder itself, or an ancestor standing in
    /// for a folder that does not exist (yet).
    watches: HashMap<WatchDescriptor, (usize, bool)>,
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
        let mut w = Watcher { inotify, targets, watches: HashMap::new() };
        w.ensure_watches();
        Ok(w)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Reads every pending event; true when one of them may change a credential.
    pub fn drain(&mut self) -> bool {
        let mut relevant = false;
        let mut rewatch = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for event in events {
                let Some(&(index, is_target)) = self.watches.get(&event.wd) else { continue };
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
                if !is_target {
                    rewatch = true; // something appeared on the way to a missing folder
                    continue;
                }
                let names = &self.targets[index].names;
                if names.is_empty() || event.name.as_ref().map(|n| names.contains(n)).unwrap_or(true) {
                    relevant = true;
                }
            }
        }
        if rewatch {
            relevant |= self.ensure_watches();
        }
        relevant
    }

    /// Watches every target folder, or the nearest existing ancestor of a missing one. Returns
    /// true when a target folder came (back) into view.
    fn ensure_watches(&mut self) -> bool {
        let mut appeared = false;
        for (index, target) in self.targets.iter().enumerate() {
            let live = self.watches.values().any(|&(i, is_target)| i == index && is_target);
            if live {
                continue;
            }
            // Drop a stand-in watch for this target before trying the real folder again.
            let stale: Vec<WatchDescriptor> =
                self.watches.iter().filter(|(_, &(i, _))| i == index).map(|(wd, _)| *wd).collect();
            for wd in stale {
                self.watches.remove(&wd);
            }
            match self.inotify.add_watch(&target.dir, DIR_EVENTS) {
                Ok(wd) => {
                    self.watches.insert(wd, (index, true));
                    appeared = true;
                    log::debug!("watching {}", target.dir.display());
                }
                Err(_) => {
                    if let Some(ancestor) = nearest_existing_ancestor(&target.dir) {
                        if let Ok(wd) = self.inotify.add_watch(&ancestor, DIR_EVENTS) {
                            // Several targets may share an ancestor: the first one keeps it.
                            self.watches.entry(wd).or_insert((index, false));
                        }
                    }
                    log::debug!("{} does not exist: waiting for it", target.dir.display());
                }
            }
        }
        appeared
    }
}

fn nearest_existing_ancestor(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().skip(1).find(|a| a.is_dir()).map(Path::to_path_buf)
}
