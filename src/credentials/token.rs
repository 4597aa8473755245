//! The API token IS the bcrypt hash ComfyUI-Login keeps in PASSWORD. Hashes are checked for
//! shape before anything trusts them: a `$`-expanded or truncated one must be replaced, not used.

use std::sync::Mutex;

use rand::Rng;

/// bcrypt cost for new hashes: what ComfyUI-Login's own `bcrypt.gensalt()` uses.
pub const COST: u32 = 12;

const BCRYPT_ALPHABET: &str = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Why a string is not a bcrypt hash ComfyUI-Login can use, or Ok.
pub fn check_shape(hash: &str) -> Result<(), String> {
    if hash.len() != 60 {
        let hint = if hash.len() < 60 && !hash.starts_with("$2") {
            " (a '$' expansion in an unquoted .env value eats the start)"
        } else {
            ""
        };
        return Err(format!("{} characters long, a bcrypt hash has 60{hint}", hash.chars().count()));
    }
    let (prefix, rest) = hash.split_at(4);
    if !matches!(prefix, "$2b$" | "$2a$" | "$2y$") {
        return Err(format!("prefix '{prefix}' is not a bcrypt prefix ($2b$)"));
    }
    let cost = rest.get(..2).and_then(|c| c.parse::<u32>().ok());
    match cost {
        Some(c) if (10..=31).contains(&c) && rest.as_bytes()[2] == b'$' => {}
        _ => return Err(format!("cost '{}' is not a bcrypt cost from 10 to 31", rest.get(..2).unwrap_or(""))),
    }
    if !rest[3..].chars().all(|c| BCRYPT_ALPHABET.contains(c)) {
        return Err("has characters outside bcrypt's alphabet".into());
    }
    Ok(())
}

/// Does `password` match this well-formed hash? bcrypt takes a quarter of a second at cost 12,
/// and one reconciliation asks the same question up to three times (the file's hash, the running
/// token, the pinned token are often one hash), then again after our own writes: the last few
/// answers, failures included, are remembered.
pub fn verifies(password: &str, hash: &str) -> bool {
    if check_shape(hash).is_err() {
        return false;
    }
    if let Some(known) = remembered(password, hash) {
        return known;
    }
    let ok = bcrypt::non_truncating_verify(password, hash).unwrap_or(false);
    remember(password, hash, ok);
    ok
}

/// True only when the answer is already known to be "no" (no bcrypt run).
pub fn known_mismatch(password: &str, hash: &str) -> bool {
    remembered(password, hash) == Some(false)
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

/// A fresh `$2b$12$` hash. The password was validated (at most 72 bytes, no NUL) beforehand.
pub fn hash(password: &str) -> Result<String, String> {
    let hash = bcrypt::non_truncating_hash(password, COST).map_err(|e| format!("cannot hash the password: {e}"))?;
    remember(password, &hash, true);
    Ok(hash)
}

/// A strong random password: 24 characters from 62 (about 143 bits), safe in any quoting.
pub fn generate_password() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..24).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}

/// The rules ComfyUI-Login's Python bcrypt imposes, plus what breaks its file format. `source`
/// names where the password came from, for the message.
pub fn validate_password(password: &str, source: &str) -> Result<(), String> {
    let rule = if password.is_empty() {
        Some("is empty: set a password, or remove it to have one generated")
    } else if password.len() > 72 {
        Some("is longer than 72 bytes, bcrypt's limit: use a shorter password")
    } else if password.contains('\0') {
        Some("contains a NUL byte, which bcrypt refuses")
    } else if password.contains('\n') || password.contains('\r') {
        Some("contains a line break, which the PASSWORD file cannot hold")
    } else if password.trim() != password {
        Some("starts or ends with whitespace, which ComfyUI-Login's login form strips: remove it")
    } else {
        None
    };
    match rule {
        Some(rule) => Err(format!("the password from {source} {rule}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let good = hash("pw").unwrap();
        assert!(good.starts_with("$2b$12$"));
        assert_eq!(check_shape(&good), Ok(()));
        // The seed report's token: 61 characters.
        let seed = "$2b$12$NErya5UooY9bJnscVc/ec.hpVDX.nYM86/88bXIkF/hh2VeKRvU5ka";
        assert!(check_shape(seed).unwrap_err().contains("61 characters"));
        // What dotenvy leaves of an unquoted hash.
        assert!(check_shape("/ec.hpVDX.nYM86/88bXIkF/hh2VeKRvU5ka").unwrap_err().contains("'$' expansion"));
        let wrong_prefix = format!("$3x${}", &good[4..]);
        assert!(check_shape(&wrong_prefix).unwrap_err().contains("prefix"));
        let low_cost = format!("$2b$04{}", &good[6..]);
        assert!(check_shape(&low_cost).unwrap_err().contains("cost"));
    }

    #[test]
    fn verification() {
        let h = hash("s3cret $ ' \" # ! \\ é").unwrap();
        assert!(verifies("s3cret $ ' \" # ! \\ é", &h));
        assert!(!verifies("other", &h));
        assert!(!verifies("s3cret", "garbage"));
    }

    #[test]
    fn a_hash_known_to_match_one_password_is_known_not_to_match_another() {
        let h = hash("known-one").unwrap();
        assert!(known_mismatch("another", &h));
        assert!(!known_mismatch("known-one", &h));
        assert!(!known_mismatch("anything", "$2b$12$neverseenneverseenneverseenneverseenneverseenneverse"));
        assert!(!verifies("another", &h));
    }

    #[test]
    fn password_rules() {
        assert!(validate_password("fine pass", "X").is_ok());
        for (bad, phrase) in [
            ("", "empty"),
            (&"a".repeat(73) as &str, "72 bytes"),
            ("a\0b", "NUL"),
            ("a\nb", "line break"),
            ("a\rb", "line break"),
            (" lead", "whitespace"),
            ("trail ", "whitespace"),
        ] {
            let err = validate_password(bad, "COMFYUI_PASSWORD in /x/.env").unwrap_err();
            assert!(err.contains(phrase) && err.contains("/x/.env"), "{err}");
        }
        assert!(validate_password(&"é".repeat(36), "X").is_ok()); // 72 bytes exactly
    }

    #[test]
    fn generated_passwords_are_valid_and_differ() {
        let a = generate_password();
        assert_eq!(a.len(), 24);
        assert!(validate_password(&a, "generated").is_ok());
        assert_ne!(a, generate_password());
    }
}
