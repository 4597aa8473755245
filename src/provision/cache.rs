//! What is known about the models already present, so that a start with 10 GB of verified
//! models hashes nothing: `models/.comfy-init-provision.json` maps each model's path (relative
//! to `models/`) to the size, mtime, ctime (ns) and inode it had when its sha256 was computed or
//! verified. A file that still has all four is taken as verified without reading it. The ctime
//! is what catches a file rewritten in place with its mtime put back (`touch -r`, `cp -p`,
//! `rsync --inplace -t`): no program can set it back. The cache is only a shortcut: lost or
//! corrupt, it is rebuilt by hashing once.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::fsutil::{self, Links};

pub const FILE: &str = ".comfy-init-provision.json";
/// A cache bigger than this is not ours: ignored (and rewritten).
const CAP: u64 = 16 << 20;

/// The identity of a file on disk, as far as the cache cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub mtime_ns: i128,
    /// The inode's last change (contents or metadata), which userspace cannot set.
    pub ctime_ns: i128,
    pub inode: u64,
}

impl Stat {
    pub fn of(meta: &std::fs::Metadata) -> Stat {
        Stat {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            inode: meta.ino(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub stat: Stat,
    pub sha256: String,
}

#[derive(Debug, Default)]
pub struct Cache {
    pub entries: BTreeMap<String, Entry>,
}

/// What to do about one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Present, and the cache says it has the manifest's sha256: nothing to read.
    Verified,
    /// Present, the manifest gives a sha256, the cache does not know this file: hash it once.
    Hash,
    /// Present, no sha256 in the manifest: kept as it is (said to be unverified).
    KeepUnverified,
    /// Missing or empty: download.
    Download,
}

/// The decision for one model, from what is on disk (`stat`: None when there is no regular
/// file), what the manifest wants and what the cache remembers. Pure.
pub fn decide(expected: Option<&str>, stat: Option<Stat>, cached: Option<&Entry>) -> Action {
    let Some(stat) = stat.filter(|s| s.size > 0) else { return Action::Download };
    let Some(expected) = expected else { return Action::KeepUnverified };
    match cached {
        Some(entry) if entry.stat == stat && entry.sha256 == expected => Action::Verified,
        _ => Action::Hash,
    }
}

impl Cache {
    /// The cache in `models/`; an empty one when it is missing, unreadable or not ours (said
    /// once: the models are then hashed again, nothing worse). Never read through a symlink.
    pub fn load(models: &Path) -> Cache {
        let path = models.join(FILE);
        let bytes = match fsutil::read_bounded(&path, CAP, Links::Refuse) {
            Ok(Some(b)) => b,
            Ok(None) => return Cache::default(),
            Err(e) => {
                println!("{e}: the models present are hashed again");
                return Cache::default();
            }
        };
        match parse(&bytes) {
            Some(cache) => cache,
            None => {
                println!(
                    "{} is not a cache comfy-init wrote: ignored, the models present are hashed again",
                    path.display()
                );
                Cache::default()
            }
        }
    }

    /// Written atomically (temp file, rename, folder synced) by folder descriptor: a symlink
    /// planted in its place is replaced, never written through.
    pub fn save(&self, models: &Path) -> Result<(), fsutil::IoError> {
        let dir = fsutil::open_dir(models).map_err(|e| fsutil::IoError::write(models, e))?;
        fsutil::write_atomic_at(&dir, models, FILE, self.to_json().as_bytes(), 0o644)
    }

    fn to_json(&self) -> String {
        let files: serde_json::Map<String, serde_json::Value> = self
            .entries
            .iter()
            .map(|(path, e)| {
                let value = serde_json::json!({
                    "size": e.stat.size,
                    "mtime_ns": e.stat.mtime_ns.to_string(),
                    "ctime_ns": e.stat.ctime_ns.to_string(),
                    "inode": e.stat.inode,
                    "sha256": e.sha256,
                });
                (path.clone(), value)
            })
            .collect();
        serde_json::json!({ "version": 1, "files": files }).to_string()
    }
}

pub(crate) fn parse(bytes: &[u8]) -> Option<Cache> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if value.get("version")?.as_u64()? != 1 {
        return None;
    }
    let mut entries = BTreeMap::new();
    for (path, e) in value.get("files")?.as_object()? {
        // An entry written before the ctime was kept: dropped, so that file is hashed once more.
        let Some(ctime_ns) = e.get("ctime_ns") else { continue };
        let stat = Stat {
            size: e.get("size")?.as_u64()?,
            mtime_ns: e.get("mtime_ns")?.as_str()?.parse().ok()?,
            ctime_ns: ctime_ns.as_str()?.parse().ok()?,
            inode: e.get("inode")?.as_u64()?,
        };
        let sha256 = e.get("sha256")?.as_str()?.to_string();
        entries.insert(path.clone(), Entry { stat, sha256 });
    }
    Some(Cache { entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "aa00000000000000000000000000000000000000000000000000000000000000";
    const OTHER: &str = "bb00000000000000000000000000000000000000000000000000000000000000";
    const STAT: Stat =
        Stat { size: 10, mtime_ns: 1_700_000_000_123_456_789, ctime_ns: 1_700_000_001_000_000_007, inode: 42 };

    #[test]
    fn a_file_the_cache_knows_unchanged_is_not_hashed() {
        let entry = Entry { stat: STAT, sha256: SHA.into() };
        assert_eq!(decide(Some(SHA), Some(STAT), Some(&entry)), Action::Verified);
    }

    #[test]
    fn any_change_of_size_mtime_ctime_inode_or_expected_hash_means_hashing_again() {
        let entry = Entry { stat: STAT, sha256: SHA.into() };
        for stat in [
            Stat { size: 11, ..STAT },
            Stat { mtime_ns: STAT.mtime_ns + 1, ..STAT },
            Stat { ctime_ns: STAT.ctime_ns + 1, ..STAT },
            Stat { inode: 43, ..STAT },
        ] {
            assert_eq!(decide(Some(SHA), Some(stat), Some(&entry)), Action::Hash, "{stat:?}");
        }
        assert_eq!(decide(Some(OTHER), Some(STAT), Some(&entry)), Action::Hash);
        assert_eq!(decide(Some(SHA), Some(STAT), None), Action::Hash);
    }

    #[test]
    fn missing_or_empty_files_are_downloaded_and_unpinned_ones_kept() {
        assert_eq!(decide(Some(SHA), None, None), Action::Download);
        assert_eq!(decide(None, None, None), Action::Download);
        assert_eq!(decide(Some(SHA), Some(Stat { size: 0, ..STAT }), None), Action::Download);
        assert_eq!(decide(None, Some(STAT), None), Action::KeepUnverified);
    }

    #[test]
    fn the_cache_reads_back_what_it_wrote_and_ignores_what_is_not_it() {
        let mut cache = Cache::default();
        cache.entries.insert("checkpoints/x.safetensors".into(), Entry { stat: STAT, sha256: SHA.into() });
        let back = parse(cache.to_json().as_bytes()).unwrap();
        assert_eq!(back.entries, cache.entries);
        for junk in [
            &b""[..],
            b"[]",
            b"{\"version\":2,\"files\":{}}",
            b"{\"version\":1,\"files\":{\"a\":{\"size\":-1,\"ctime_ns\":\"1\"}}}",
        ] {
            assert!(parse(junk).is_none(), "{}", String::from_utf8_lossy(junk));
        }
    }

    #[test]
    fn a_file_rewritten_in_place_with_its_mtime_put_back_is_hashed_again() {
        let dir = std::env::temp_dir().join(format!("comfy-init-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.bin");
        std::fs::write(&path, b"the verified bytes").unwrap();
        let before = Stat::of(&std::fs::metadata(&path).unwrap());
        let entry = Entry { stat: before, sha256: SHA.into() };
        assert_eq!(decide(Some(SHA), Some(before), Some(&entry)), Action::Verified);
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        {
            use std::io::{Seek, Write};
            let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.seek(std::io::SeekFrom::Start(4)).unwrap();
            file.write_all(b"XXXXXXXX").unwrap();
            file.set_modified(mtime).unwrap(); // what `touch -r` and `cp -p` do
        }
        let after = Stat::of(&std::fs::metadata(&path).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((after.size, after.mtime_ns, after.inode), (before.size, before.mtime_ns, before.inode));
        assert_ne!(after.ctime_ns, before.ctime_ns);
        assert_eq!(decide(Some(SHA), Some(after), Some(&entry)), Action::Hash);
    }

    #[test]
    fn an_entry_without_ctime_is_dropped_and_its_file_hashed_once() {
        let old = br#"{"version":1,"files":{"c/a.bin":{"size":10,"mtime_ns":"5","inode":42,"sha256":"aa"},
            "c/b.bin":{"size":10,"mtime_ns":"5","ctime_ns":"6","inode":43,"sha256":"bb"}}}"#;
        let cache = parse(old).unwrap();
        assert_eq!(cache.entries.keys().collect::<Vec<_>>(), ["c/b.bin"]);
        assert_eq!(cache.entries["c/b.bin"].stat, Stat { size: 10, mtime_ns: 5, ctime_ns: 6, inode: 43 });
    }
}
