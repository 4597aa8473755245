//! The API token IS the bcrypt hash ComfyUI-Login keeps in PASSWORD. Hashes are checked for
//! shape before anything trusts them: a `$`-expanded or truncated one must be replaced, not used.

use std::sync::Mutex;

use rand::Rng;

/// bcrypt cost for new hashes: what ComfyUI-Login's own `bcrypt.gensalt()` uses.
pub const COST: u32 = 12;

const BCRYPT_ALPHABET: &[u8] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// bcrypt's own limits on the cost.
const MIN_COST: u32 = 4;
const MAX_COST: u32 = 31;
/// The highest cost we verify: each step doubles the time (cost 12: a quarter of a second), and
/// the check runs inside PID 1's loop. A cost-31 hash would take days: such a hash is kept when
/// no password is configured, and replaced (with a warning) when one is.
pub const MAX_VERIFY_COST: u32 = 14;

/// Why a value is not a bcrypt hash ComfyUI-Login can use. Said after "the hash is" or inside
/// "malformed (...)"; never quotes the value (it may be a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// `ascii`: every byte is ASCII (the length is then in characters). `eaten`: shorter and
    /// without the `$2` prefix, as a `$` expansion leaves it.
    #[error("{len} {} long, a bcrypt hash has 60{}",
        if *ascii { "characters" } else { "bytes, not all ASCII," },
        if *eaten { " (a '$' expansion in an unquoted .env value eats the start)" } else { "" })]
    Length { len: usize, ascii: bool, eaten: bool },
    #[error("not starting with a bcrypt prefix ($2b$, $2a$ or $2y$)")]
    Prefix,
    #[error("without a bcrypt cost from {MIN_COST:02} to {MAX_COST} after the prefix")]
    Cost,
    #[error("has characters outside bcrypt's alphabet")]
    Alphabet,
}

/// Why a value is not a bcrypt hash ComfyUI-Login can use, or Ok. Works on bytes: the value may
/// come from any file or variable.
pub fn check_shape(hash: &str) -> Result<(), ShapeError> {
    let b = hash.as_bytes();
    if b.len() != 60 {
        let eaten = b.len() < 60 && !b.starts_with(b"$2");
        return Err(ShapeError::Length { len: b.len(), ascii: hash.is_ascii(), eaten });
    }
    if !matches!(&b[..4], b"$2b$" | b"$2a$" | b"$2y$") {
        return Err(ShapeError::Prefix);
    }
    if cost(hash).is_none() || b[6] != b'$' {
        return Err(ShapeError::Cost);
    }
    if !b[7..].iter().all(|c| BCRYPT_ALPHABET.contains(c)) {
        return Err(ShapeError::Alphabet);
    }
    Ok(())
}

/// The cost of a `$2?$NN$...` value, when it has a valid one.
pub fn cost(hash: &str) -> Option<u32> {
    let digits = hash.as_bytes().get(4..6)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let cost = u32::from(digits[0] - b'0') * 10 + u32::from(digits[1] - b'0');
    (MIN_COST..=MAX_COST).contains(&cost).then_some(cost)
}

/// A well-formed hash too costly to verify in PID 1 (see [`MAX_VERIFY_COST`]).
pub fn too_costly(hash: &str) -> bool {
    check_shape(hash).is_ok() && cost(hash).is_some_and(|c| c > MAX_VERIFY_COST)
}

/// Does `password` match this well-formed hash? bcrypt takes a quarter of a second at cost 12,
/// and one reconciliation asks the same question up to three times (the file's hash, the running
/// token, the pinned token are often one hash), then again after our own writes: the last few
/// answers, failures included, are remembered.
pub fn verifies(password: &str, hash: &str) -> bool {
    if check_shape(hash).is_err() || too_costly(hash) || !fits_bcrypt(password) {
        return false;
    }
    if let Some(known) = remembered(password, hash) {
        return known;
    }
    // The truncating verify: the password fits bcrypt's 72 bytes (checked above), and the crate's
    // `non_truncating_*` counts the C string's NUL and refuses exactly 72.
    let ok = bcrypt::verify(password, hash).unwrap_or(false);
    remember(password, hash, ok);
    ok
}

/// True only when the answer is already known to be "yes" (no bcrypt run): for a password just
/// generated, no hash but one made here can match, so no other needs checking.
pub fn known_match(password: &str, hash: &str) -> bool {
    remembered(password, hash) == Some(true)
}

/// (password, hash, verifies), most recent last.
static ANSWERS: Mutex<Vec<(String, String, bool)>> = Mutex::new(Vec::new());

/// A remembered answer. A hash known to match one password cannot match another (passwords are
/// at most 72 bytes, so bcrypt's truncation cannot make two of them equal): that answer is free
/// too, and it is the common case of a password change.
fn remembered(password: &str, hash: &str) -> Option<bool> {
    let answers = ANSWERS.lock().unwrap_or_else(|e| e.into_inner());
    let same_hash = answers.iter().rev().filter(|(_, h, _)| h == hash);
    for (p, _, ok) in same_hash {
        if p == password {
            return Some(*ok);
        }
        if *ok {
            return Some(false);
        }
    }
    None
}

fn remember(password: &str, hash: &str, ok: bool) {
    let mut answers = ANSWERS.lock().unwrap_or_else(|e| e.into_inner());
    if answers.len() >= 8 {
        answers.remove(0);
    }
    answers.push((password.to_string(), hash.to_string(), ok));
}

/// What bcrypt can take whole: at most 72 bytes, no NUL (Python's bcrypt, which ComfyUI-Login
/// uses, has the same rule).
fn fits_bcrypt(password: &str) -> bool {
    password.len() <= MAX_PASSWORD_BYTES && !password.contains('\0')
}

pub const MAX_PASSWORD_BYTES: usize = 72;

/// Why no hash was made.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("cannot hash the password: it is longer than 72 bytes or holds a NUL byte")]
    Unfit,
    #[error("cannot hash the password: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
}

/// A `$2b$12$` hash of `password`: one made earlier in this process if there is one (a pass
/// that starts over after a concurrent edit needs no second quarter-second), else a fresh one.
pub fn hash_once(password: &str) -> Result<String, HashError> {
    let answers = ANSWERS.lock().unwrap_or_else(|e| e.into_inner());
    let earlier = answers.iter().rev().find(|(p, h, ok)| *ok && p == password && cost(h) == Some(COST));
    if let Some((_, h, _)) = earlier {
        return Ok(h.clone());
    }
    drop(answers);
    hash(password)
}

/// A fresh `$2b$12$` hash. The password was validated (at most 72 bytes, no NUL) beforehand.
pub fn hash(password: &str) -> Result<String, HashError> {
    if !fits_bcrypt(password) {
        return Err(HashError::Unfit);
    }
    let hash = bcrypt::hash(password, COST)?;
    remember(password, &hash, true);
    Ok(hash)
}

/// A strong random password: 24 characters from 62 (about 143 bits), safe in any quoting.
pub fn generate_password() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..24).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}

/// A rule of ComfyUI-Login's Python bcrypt, or of its file format, that a password breaks. Said
/// after "the password from <where>" (the caller knows where it came from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordRule {
    #[error("is empty: set a password, or remove it to have one generated")]
    Empty,
    #[error("is longer than 72 bytes, bcrypt's limit: use a shorter password")]
    TooLong,
    #[error("contains a NUL byte, which bcrypt refuses")]
    Nul,
    #[error("contains a line break, which the PASSWORD file cannot hold")]
    LineBreak,
    #[error("starts or ends with whitespace, which ComfyUI-Login's login form strips: remove it")]
    Whitespace,
}

/// The rules ComfyUI-Login's Python bcrypt imposes, plus what breaks its file format.
pub fn validate_password(password: &str) -> Result<(), PasswordRule> {
    if password.is_empty() {
        Err(PasswordRule::Empty)
    } else if password.len() > MAX_PASSWORD_BYTES {
        Err(PasswordRule::TooLong)
    } else if password.contains('\0') {
        Err(PasswordRule::Nul)
    } else if password.contains('\n') || password.contains('\r') {
        Err(PasswordRule::LineBreak)
    } else if password.trim() != password {
        Err(PasswordRule::Whitespace)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_shapes_are_checked_without_trusting_the_bytes() {
        let good = hash("pw").unwrap();
        assert!(good.starts_with("$2b$12$"));
        assert_eq!(check_shape(&good), Ok(()));
        // The seed report's token: 61 characters.
        let seed = "$2b$12$NErya5UooY9bJnscVc/ec.hpVDX.nYM86/88bXIkF/hh2VeKRvU5ka";
        assert!(check_shape(seed).unwrap_err().to_string().contains("61 characters"));
        // What dotenvy leaves of an unquoted hash.
        assert!(check_shape("/ec.hpVDX.nYM86/88bXIkF/hh2VeKRvU5ka").unwrap_err().to_string().contains("'$' expansion"));
        let wrong_prefix = format!("$3x${}", &good[4..]);
        assert!(check_shape(&wrong_prefix).unwrap_err().to_string().contains("prefix"));
        // Every cost bcrypt allows is a valid shape; outside 04-31 is not.
        assert_eq!(check_shape(&format!("$2b$04{}", &good[6..])), Ok(()));
        assert_eq!(check_shape(&format!("$2y$31{}", &good[6..])), Ok(()));
        for bad in ["03", "32", "99", "1a", "+1"] {
            assert!(
                check_shape(&format!("$2b${bad}{}", &good[6..])).unwrap_err().to_string().contains("cost"),
                "{bad}"
            );
        }
        // A multi-byte character where the prefix ends: a refusal, not a panic.
        let utf8 = format!("$2b\u{e9}{}", "A".repeat(55));
        assert_eq!(utf8.len(), 60);
        assert!(check_shape(&utf8).unwrap_err().to_string().contains("prefix"));
        assert!(check_shape(&format!("$2b$1\u{e9}{}", "A".repeat(53))).is_err());
    }

    #[test]
    fn a_72_byte_password_is_hashed_and_verified_as_bcrypt_does() {
        let p = "x".repeat(72);
        assert!(validate_password(&p).is_ok());
        let h = hash(&p).unwrap();
        assert!(verifies(&p, &h));
        assert!(!verifies(&"x".repeat(71), &h));
        // 73 bytes never reach bcrypt (it would silently drop the last one).
        assert!(hash(&"x".repeat(73)).is_err());
        assert!(!verifies(&"x".repeat(73), &h));
    }

    #[test]
    fn a_hash_too_costly_to_check_in_pid1_is_never_verified() {
        let good = hash("pw").unwrap();
        let costly = format!("$2b$31{}", &good[6..]);
        assert!(too_costly(&costly));
        let started = std::time::Instant::now();
        assert!(!verifies("pw", &costly));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(!too_costly(&good));
    }

    #[test]
    fn a_hash_verifies_its_password_and_no_other() {
        let h = hash("s3cret $ ' \" # ! \\ é").unwrap();
        assert!(verifies("s3cret $ ' \" # ! \\ é", &h));
        assert!(!verifies("other", &h));
        assert!(!verifies("s3cret", "garbage"));
    }

    #[test]
    fn a_hash_known_to_match_one_password_is_known_not_to_match_another() {
        let h = hash("known-one").unwrap();
        assert_eq!(remembered("another", &h), Some(false));
        assert_eq!(remembered("known-one", &h), Some(true));
        assert_eq!(remembered("anything", "$2b$12$neverseenneverseenneverseenneverseenneverseenneverse"), None);
        assert!(!verifies("another", &h));
    }

    #[test]
    fn passwords_that_break_bcrypt_or_the_file_format_are_refused() {
        assert!(validate_password("fine pass").is_ok());
        for (bad, phrase) in [
            ("", "empty"),
            (&"a".repeat(73) as &str, "72 bytes"),
            ("a\0b", "NUL"),
            ("a\nb", "line break"),
            ("a\rb", "line break"),
            (" lead", "whitespace"),
            ("trail ", "whitespace"),
        ] {
            let err = validate_password(bad).unwrap_err().to_string();
            assert!(err.contains(phrase), "{err}");
        }
        assert!(validate_password(&"é".repeat(36)).is_ok()); // 72 bytes exactly
    }

    #[test]
    fn generated_passwords_are_valid_and_differ() {
        let a = generate_password();
        assert_eq!(a.len(), 24);
        assert!(validate_password(&a).is_ok());
        assert_ne!(a, generate_password());
    }
}
