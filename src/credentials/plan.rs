//! The credential decision, pure: what PASSWORD must hold given what is on disk and what is
//! configured. Every row of the table has a unit test; the I/O lives in `mod.rs`.

use super::token::ShapeError;

/// What `login/PASSWORD` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    Missing,
    Empty,
    /// Nothing usable in it; the reason, for the warning.
    Malformed(String),
    /// A well-formed hash. `exact` is false when the file is not exactly `hash\nusername`.
    Hash {
        hash: String,
        username: String,
        exact: bool,
    },
}

pub struct Inputs<'a> {
    pub file: &'a FileState,
    /// The configured password (already validated), if any.
    pub password: Option<&'a str>,
    pub username: &'a str,
    /// COMFYUI_BEARER_TOKEN, if set.
    pub pinned: Option<&'a str>,
    /// The token the running ComfyUI was started with (supervisor only).
    pub running: Option<&'a str>,
}

/// Where the token comes from, with the token where it is already known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// The hash already in PASSWORD.
    Keep(String),
    /// COMFYUI_BEARER_TOKEN: it verifies the password.
    Pinned(String),
    /// The running child's token: PASSWORD broke under it and is healed without a restart.
    Running(String),
    /// A new bcrypt hash of this configured password.
    HashPassword(String),
    /// No password anywhere and nothing usable: generate one.
    Generate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub choice: Choice,
    /// PASSWORD must be written (even when the token is kept: username or format to fix).
    pub write_file: bool,
    /// The password changed: delete ComfyUI-Login's session key so old browser sessions die.
    pub drop_sessions: bool,
    pub warnings: Vec<String>,
}

/// `verifies(password, hash)`: bcrypt verification, and false for anything not well-formed.
/// `check_shape(hash)`: why a value is not a usable hash.
pub fn plan(
    i: &Inputs,
    verifies: &dyn Fn(&str, &str) -> bool,
    check_shape: &dyn Fn(&str) -> Result<(), ShapeError>,
) -> Plan {
    let mut warnings = Vec::new();
    // A valid hash is kept when it verifies the password, or when no password is configured.
    if let FileState::Hash { hash, username, exact } = i.file {
        if i.password.is_none_or(|p| verifies(p, hash)) {
            let write_file = !exact || username != i.username;
            return Plan { choice: Choice::Keep(hash.clone()), write_file, drop_sessions: false, warnings };
        }
    }
    // From here PASSWORD is unusable, or holds the hash of another password.
    // Say what was seen: an empty file at start is just empty; one emptied under a running
    // ComfyUI is ComfyUI-Login's known truncation.
    match i.file {
        FileState::Empty if i.running.is_some() => warnings.push(
            "login/PASSWORD was emptied while ComfyUI runs (ComfyUI-Login does that when the right \
             password is posted without a username to a file with no username line): its next start \
             would accept an empty token; rewriting it"
                .into(),
        ),
        FileState::Empty => warnings.push(
            "login/PASSWORD is empty: ComfyUI-Login would accept an empty token and let anyone in; \
             rewriting it"
                .into(),
        ),
        FileState::Malformed(why) => warnings.push(format!("login/PASSWORD is malformed ({why}): rewriting it")),
        FileState::Missing | FileState::Hash { .. } => {}
    }
    let choice = replacement(i, verifies, check_shape, &mut warnings);
    let new_password = matches!(choice, Choice::Pinned(_) | Choice::HashPassword(_) | Choice::Generate);
    Plan { choice, write_file: true, drop_sessions: new_password && !matches!(i.file, FileState::Missing), warnings }
}

/// The token for a PASSWORD that is unusable or holds another password's hash: the running
/// child's if it still fits, else the pinned one if it verifies, else a new hash (or password).
fn replacement(
    i: &Inputs,
    verifies: &dyn Fn(&str, &str) -> bool,
    check_shape: &dyn Fn(&str) -> Result<(), ShapeError>,
    warnings: &mut Vec<String>,
) -> Choice {
    let running_ok = |p: Option<&str>| match (i.running, p) {
        (Some(r), Some(p)) => verifies(p, r),
        (Some(r), None) => check_shape(r).is_ok(),
        (None, _) => false,
    };
    if let (true, Some(running)) = (running_ok(i.password), i.running) {
        Choice::Running(running.to_string())
    } else if let Some(p) = i.password {
        let rehash = Choice::HashPassword(p.to_string());
        match i.pinned.map(|t| (t, check_shape(t))) {
            Some((t, Ok(()))) if verifies(p, t) => Choice::Pinned(t.to_string()),
            Some((t, Ok(()))) => {
                // Our own token from before a password change is stale, not suspicious.
                let ours = matches!(i.file, FileState::Hash { hash, .. } if hash == t);
                if !ours {
                    warnings.push("COMFYUI_BEARER_TOKEN does not match the password: replacing it".into());
                }
                rehash
            }
            Some((_, Err(why))) => {
                warnings.push(format!("COMFYUI_BEARER_TOKEN is malformed ({why}): replacing it"));
                rehash
            }
            None => rehash,
        }
    } else {
        Choice::Generate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A fake bcrypt: the hash of P is "H(P)"; well-formed means it starts with "H(".
    fn verifies(p: &str, h: &str) -> bool {
        h == format!("H({p})")
    }
    fn shape(h: &str) -> Result<(), ShapeError> {
        if h.starts_with("H(") {
            Ok(())
        } else {
            Err(ShapeError::Prefix)
        }
    }
    fn hash(h: &str, user: &str) -> FileState {
        FileState::Hash { hash: h.into(), username: user.into(), exact: true }
    }
    fn keep(h: &str) -> Choice {
        Choice::Keep(h.into())
    }
    fn rehash(p: &str) -> Choice {
        Choice::HashPassword(p.into())
    }
    fn running(h: &str) -> Choice {
        Choice::Running(h.into())
    }
    fn run(file: FileState, password: Option<&str>, pinned: Option<&str>, running: Option<&str>) -> Plan {
        plan(&Inputs { file: &file, password, username: "admin", pinned, running }, &verifies, &shape)
    }

    #[test]
    fn a_hash_that_verifies_the_password_is_kept() {
        let p = run(hash("H(pw)", "admin"), Some("pw"), None, None);
        assert_eq!((p.choice, p.write_file, p.drop_sessions), (keep("H(pw)"), false, false));
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn a_verifying_hash_is_kept_and_its_username_or_format_rewritten() {
        let p = run(hash("H(pw)", "bob"), Some("pw"), None, None);
        assert_eq!((p.choice, p.write_file), (keep("H(pw)"), true));
        let crlf = FileState::Hash { hash: "H(pw)".into(), username: "admin".into(), exact: false };
        let p = run(crlf, Some("pw"), None, None);
        assert_eq!((p.choice, p.write_file), (keep("H(pw)"), true));
    }

    #[test]
    fn a_verifying_hash_wins_over_another_pinned_token() {
        let p = run(hash("H(pw)", "admin"), Some("pw"), Some("H(other)"), None);
        assert_eq!(p.choice, keep("H(pw)"));
    }

    #[test]
    fn a_changed_password_gets_a_new_hash_and_ends_sessions() {
        let p = run(hash("H(old)", "admin"), Some("new"), None, None);
        assert_eq!((p.choice, p.write_file, p.drop_sessions), (rehash("new"), true, true));
    }

    #[test]
    fn a_changed_password_uses_a_pinned_token_that_verifies_it() {
        let p = run(hash("H(old)", "admin"), Some("new"), Some("H(new)"), None);
        assert_eq!((p.choice, p.drop_sessions), (Choice::Pinned("H(new)".into()), true));
    }

    #[test]
    fn a_changed_password_never_reuses_the_running_token() {
        // The running child has the old token: it must restart with a new one.
        let p = run(hash("H(old)", "admin"), Some("new"), None, Some("H(old)"));
        assert_eq!(p.choice, rehash("new"));
    }

    #[test]
    fn a_missing_file_is_created_from_the_password_with_no_sessions_to_end() {
        let p = run(FileState::Missing, Some("pw"), None, None);
        assert_eq!((p.choice, p.write_file, p.drop_sessions), (rehash("pw"), true, false));
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn a_missing_file_takes_a_pinned_token_that_verifies() {
        let p = run(FileState::Missing, Some("pw"), Some("H(pw)"), None);
        assert_eq!(p.choice, Choice::Pinned("H(pw)".into()));
    }

    #[test]
    fn pinned_token_malformed_or_wrong_is_replaced_with_a_warning() {
        let p = run(FileState::Missing, Some("pw"), Some("$2b$12$mangled"), None);
        assert_eq!(p.choice, rehash("pw"));
        assert!(p.warnings[0].contains("malformed (not starting with a bcrypt prefix"), "{:?}", p.warnings);
        let p = run(FileState::Missing, Some("pw"), Some("H(other)"), None);
        assert_eq!(p.choice, rehash("pw"));
        assert!(p.warnings[0].contains("does not match"), "{:?}", p.warnings);
    }

    #[test]
    fn an_empty_or_malformed_file_is_rehashed_with_a_warning() {
        for file in [FileState::Empty, FileState::Malformed("61 characters".into())] {
            let p = run(file, Some("pw"), None, None);
            assert_eq!((p.choice, p.write_file, p.drop_sessions), (rehash("pw"), true, true));
            assert_eq!(p.warnings.len(), 1);
        }
    }

    #[test]
    fn an_empty_file_under_a_running_child_is_healed_with_its_token() {
        let p = run(FileState::Empty, Some("pw"), None, Some("H(pw)"));
        assert_eq!((p.choice, p.write_file, p.drop_sessions), (running("H(pw)"), true, false));
        assert!(p.warnings[0].contains("was emptied while ComfyUI runs"), "{:?}", p.warnings);
        let p = run(FileState::Empty, Some("pw"), None, None);
        assert!(p.warnings[0].contains("is empty: ") && !p.warnings[0].contains("username"), "{:?}", p.warnings);
        // With no configured password (it was generated): the running token still heals.
        let p = run(FileState::Malformed("truncated".into()), None, None, Some("H(gen)"));
        assert_eq!(p.choice, running("H(gen)"));
    }

    #[test]
    fn running_token_not_matching_the_password_is_not_reused() {
        let p = run(FileState::Empty, Some("new"), None, Some("H(old)"));
        assert_eq!(p.choice, rehash("new"));
    }

    #[test]
    fn a_foreign_hash_under_a_running_child_is_replaced_by_its_token() {
        let p = run(hash("H(other)", "admin"), Some("pw"), None, Some("H(pw)"));
        assert_eq!((p.choice, p.drop_sessions), (running("H(pw)"), false));
    }

    #[test]
    fn a_valid_hash_with_no_password_configured_is_kept() {
        let p = run(hash("H(x)", "admin"), None, None, None);
        assert_eq!((p.choice, p.write_file), (keep("H(x)"), false));
    }

    #[test]
    fn with_nothing_anywhere_a_password_is_generated() {
        for file in [FileState::Missing, FileState::Empty, FileState::Malformed("x".into())] {
            let dropped = file != FileState::Missing;
            let p = run(file, None, None, None);
            assert_eq!((p.choice, p.write_file, p.drop_sessions), (Choice::Generate, true, dropped));
        }
        // A pinned token alone cannot be trusted: nothing to verify it with.
        let p = run(FileState::Missing, None, Some("H(x)"), None);
        assert_eq!(p.choice, Choice::Generate);
    }
}
