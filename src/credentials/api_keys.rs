//! API keys (issue 25): revocable, per client, independent of the password. `comfy-init apikey
//! add NAME` makes a random key (`cik_` + 64 hex digits: 256 bits, a prefix secret scanners and
//! our log redaction know), prints it once and keeps only its SHA-256 digest in `login/API_KEYS`
//! (a high-entropy key needs no bcrypt; bcrypt would bring back the event-loop stall). The
//! companion reads that file and lets a valid key through as ComfyUI-Login's token; a change to
//! the file applies in place within a second, no restart.
//!
//! One key a line: `<name> <sha256 hex> <created unix s> <expires unix s or -> <rw|ro>`. The
//! companion keeps when each key was last used in `login/API_KEYS.used` (`<name> <unix s>`),
//! written in batches, never on every request; `apikey list` shows it.
//!
//! `COMFYUI_API_KEYS_FILE` names a second list in the same format, the operator's (a Kubernetes
//! Secret): the companion reads it too, `apikey list` shows it, nothing here writes it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{Failure, Lock, Settings};
use crate::fsutil::{self, IoError, Links, NewFileAttrs};
use crate::privileges::as_puid_where_exposed;

pub const PREFIX: &str = "cik_";
/// A key file bigger than this is not ours.
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub name: String,
    pub digest: String,
    pub created: u64,
    pub expires: Option<u64>,
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("'{0}' is not a key name: use 1 to 64 letters, digits, '.', '_' or '-'")]
    BadName(String),
    #[error("an API key named '{0}' exists already: revoke it first, or choose another name")]
    Exists(String),
    #[error("no API key named '{0}' (comfy-init apikey list shows them)")]
    Unknown(String),
    #[error(
        "the API key '{name}' comes from COMFYUI_API_KEYS_FILE ({}), which comfy-init does not write: \
         remove its line there (e.g. from the Kubernetes Secret)",
        file.display()
    )]
    NotOurs { name: String, file: PathBuf },
    #[error("--expires '{0}' is not a lifetime: use days like 90d, or hours like 12h")]
    BadLifetime(String),
    #[error("{0}")]
    Io(#[from] IoError),
    #[error("{0}")]
    Credentials(#[from] Failure),
    #[error("{}: {0}", path.display())]
    Unreadable { path: PathBuf, why: String },
}

impl Key {
    fn line(&self) -> String {
        let expires = self.expires.map_or("-".to_string(), |e| e.to_string());
        let mode = if self.read_only { "ro" } else { "rw" };
        format!("{} {} {} {expires} {mode}", self.name, self.digest, self.created)
    }

    /// One line, as the companion reads it (companion/api_keys.py: the same grammar).
    fn parse(line: &str) -> Option<Key> {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let mut f = line.trim().split(' ');
        let (name, digest, created, expires, mode) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        if f.next().is_some()
            || !valid_name(name)
            || digest.len() != 64
            || !digest.bytes().all(|b| b.is_ascii_hexdigit())
            || !digits(created)
            || !(expires == "-" || digits(expires))
        {
            return None;
        }
        Some(Key {
            name: name.into(),
            digest: digest.to_ascii_lowercase(),
            created: created.parse().ok()?,
            expires: match expires {
                "-" => None,
                e => Some(e.parse().ok()?),
            },
            read_only: match mode {
                "ro" => true,
                "rw" => false,
                _ => return None,
            },
        })
    }

    pub fn expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The keys of a file's text; comments, blank and malformed lines left out.
pub fn parse(text: &str) -> Vec<Key> {
    parse_lines(text).0
}

/// The keys of a file's text, and the numbers of the lines that are not keys (no key is made of
/// them, here or in the companion).
pub fn parse_lines(text: &str) -> (Vec<Key>, Vec<usize>) {
    let (mut keys, mut bad) = (Vec::new(), Vec::new());
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match Key::parse(line) {
            Some(key) => keys.push(key),
            None => bad.push(number + 1),
        }
    }
    (keys, bad)
}

/// `cik_` and 64 lowercase hex digits, what [`generate`] makes.
pub fn well_formed(key: &str) -> bool {
    key.len() == PREFIX.len() + 64
        && key.starts_with(PREFIX)
        && key[PREFIX.len()..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn digest(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A new key: 256 random bits, hex, after the prefix.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    PREFIX.to_string() + &bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
}

/// `90d`, `12h`.
pub fn parse_lifetime(value: &str) -> Result<Duration, KeyError> {
    let bad = || KeyError::BadLifetime(value.to_string());
    let v = value.trim();
    // By the unit's char, not a byte index: `1é` is refused, not a panic.
    let (n, seconds) = match v.strip_suffix('d') {
        Some(n) => (n, 86_400),
        None => (v.strip_suffix('h').ok_or_else(bad)?, 3_600),
    };
    let n: u64 = n.parse().map_err(|_| bad())?;
    match n.checked_mul(seconds) {
        Some(s) if n > 0 => Ok(Duration::from_secs(s)),
        _ => Err(bad()),
    }
}

pub fn path(s: &Settings) -> PathBuf {
    s.password_path().with_file_name("API_KEYS")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The keys in login/API_KEYS (none when it is missing), read as PUID where PUID could swap it.
pub fn list(s: &Settings) -> Result<Vec<Key>, KeyError> {
    read_keys(&path(s), s.owner, Links::Refuse)
}

/// The keys of COMFYUI_API_KEYS_FILE (none when unset or missing). The operator's path: a link
/// there is followed (Kubernetes mounts a Secret's files as links).
pub fn listed_by_operator(s: &Settings) -> Result<Vec<Key>, KeyError> {
    match &s.api_keys_file {
        Some(file) => read_keys(file, s.owner, Links::Follow),
        None => Ok(Vec::new()),
    }
}

fn read_keys(file: &Path, owner: Option<(u32, u32)>, links: Links) -> Result<Vec<Key>, KeyError> {
    match as_puid_where_exposed(file, owner, || fsutil::read_bounded(file, MAX_FILE, links)) {
        Ok(Some(bytes)) => {
            let (keys, bad) = parse_lines(&String::from_utf8_lossy(&bytes));
            if !bad.is_empty() {
                let lines: Vec<String> = bad.iter().take(10).map(usize::to_string).collect();
                log::warn!(
                    "{}: line(s) {} are not API keys and give none (name digest created expires rw|ro)",
                    file.display(),
                    lines.join(", ")
                );
            }
            Ok(keys)
        }
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(KeyError::Unreadable { path: file.to_path_buf(), why: e.to_string() }),
    }
}

/// When each key was last used, as the companion last wrote it (empty when it never did). A
/// bad line is left out: the file only informs.
pub fn last_used(s: &Settings) -> HashMap<String, u64> {
    let file = path(s).with_file_name("API_KEYS.used");
    let read = as_puid_where_exposed(&file, s.owner, || fsutil::read_bounded(&file, MAX_FILE, Links::Refuse));
    let text = match read {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => return HashMap::new(),
    };
    text.lines()
        .filter_map(|line| {
            let (name, when) = line.split_once(' ')?;
            Some((name.to_string(), when.parse().ok()?))
        })
        .collect()
}

fn save(s: &Settings, keys: &[Key]) -> Result<(), KeyError> {
    let file = path(s);
    let text: String = "# comfy-init API keys: name sha256 created expires rw|ro (comfy-init apikey add|list|revoke)\n"
        .to_string()
        + &keys.iter().map(|k| k.line() + "\n").collect::<String>();
    let attrs = NewFileAttrs { mode: 0o600, owner: s.owner, force: false };
    as_puid_where_exposed(&file, s.owner, || {
        fsutil::write_atomic_checked::<IoError>(&file, text.as_bytes(), attrs, || Ok(()))
    })?;
    Ok(())
}

/// `comfy-init apikey add`: the new key (printed once by the caller, never stored).
pub fn add(s: &Settings, name: &str, lifetime: Option<Duration>, read_only: bool) -> Result<String, KeyError> {
    if !valid_name(name) {
        return Err(KeyError::BadName(name.into()));
    }
    let _lock = Lock::acquire(s, true)?;
    let mut keys = list(s)?;
    // "Last used" is kept by name: a name the operator's list has too would be ambiguous.
    let theirs = listed_by_operator(s).unwrap_or_default();
    if keys.iter().chain(&theirs).any(|k| k.name == name) {
        return Err(KeyError::Exists(name.into()));
    }
    let key = generate();
    let created = now();
    keys.push(Key {
        name: name.into(),
        digest: digest(&key),
        created,
        expires: lifetime.map(|l| created.saturating_add(l.as_secs())),
        read_only,
    });
    save(s, &keys)?;
    Ok(key)
}

/// `comfy-init apikey revoke`: the key's line goes; the companion refuses it within a second.
pub fn revoke(s: &Settings, name: &str) -> Result<(), KeyError> {
    let _lock = Lock::acquire(s, true)?;
    let mut keys = list(s)?;
    let before = keys.len();
    keys.retain(|k| k.name != name);
    if keys.len() == before {
        if let Some(file) = s
            .api_keys_file
            .as_ref()
            .filter(|_| listed_by_operator(s).is_ok_and(|theirs| theirs.iter().any(|k| k.name == name)))
        {
            return Err(KeyError::NotOurs { name: name.into(), file: file.clone() });
        }
        return Err(KeyError::Unknown(name.into()));
    }
    save(s, &keys)
}

/// One line a key for `apikey list`: never the key, which is not kept.
pub fn describe(key: &Key, now_s: u64, last_used: Option<u64>) -> String {
    let when = |t: u64| ago(now_s.saturating_sub(t));
    let expires = match key.expires {
        None => "never expires".to_string(),
        Some(_) if key.expired(now_s) => "EXPIRED".to_string(),
        Some(e) => format!("expires in {}d", e.saturating_sub(now_s).div_ceil(86_400)),
    };
    let mode = if key.read_only { "read-only" } else { "read-write" };
    let used = last_used.map_or("never used".to_string(), |t| format!("last used {}", when(t)));
    format!("{}  created {}  {expires}  {used}  {mode}", key.name, when(key.created))
}

/// `3d ago`, `5h ago`, `12m ago`, `just now`.
fn ago(seconds: u64) -> String {
    match seconds {
        0..60 => "just now".into(),
        60..3_600 => format!("{}m ago", seconds / 60),
        3_600..86_400 => format!("{}h ago", seconds / 3_600),
        _ => format!("{}d ago", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_line_is_written_and_read_back_and_malformed_lines_are_left_out() {
        let k = Key { name: "ci".into(), digest: digest("cik_x"), created: 10, expires: Some(20), read_only: true };
        let text =
            format!("# comment\n\n  {}  \nbad line\nname {} 1 - xx\nplus {} +1 - rw\n", k.line(), k.digest, k.digest);
        assert_eq!(parse_lines(&text), (vec![k.clone()], vec![4, 5, 6]));
        assert!(k.expired(20) && !k.expired(19));
        let forever = Key { expires: None, read_only: false, ..k };
        assert_eq!(parse(&forever.line()), vec![forever]);
    }

    #[test]
    fn keys_are_256_random_bits_with_the_prefix_and_digests_are_sha256() {
        let (a, b) = (generate(), generate());
        assert!(a.starts_with(PREFIX) && a.len() == 4 + 64 && a != b);
        assert_eq!(digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn lifetimes_and_names() {
        assert_eq!(parse_lifetime("90d").unwrap(), Duration::from_secs(90 * 86_400));
        assert_eq!(parse_lifetime("12h").unwrap(), Duration::from_secs(12 * 3_600));
        for bad in ["", "d", "0d", "90", "1y", "-1d", "1é", "é", "300000000000000d", "99999999999999999999h"] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
        assert!(valid_name("my-ci.bot_1") && !valid_name("") && !valid_name("a b") && !valid_name(&"x".repeat(65)));
    }

    #[test]
    fn a_key_is_described_without_its_secret_with_its_age_and_last_use() {
        let k =
            Key { name: "ci".into(), digest: digest("cik_x"), created: 0, expires: Some(10 * 86_400), read_only: true };
        let line = describe(&k, 3 * 86_400, Some(3 * 86_400 - 7_200));
        assert_eq!(line, "ci  created 3d ago  expires in 7d  last used 2h ago  read-only");
        assert!(describe(&k, 11 * 86_400, None).contains("EXPIRED  never used"));
        assert_eq!(ago(59), "just now");
        assert_eq!(ago(61), "1m ago");
    }
}
