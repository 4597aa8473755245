//! The credential decision, pure: what PASSWORD must hold given what is on disk and what is
//! configured. Every row of the table has a unit test; the I/O lives in `mod.rs`.

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

/// Where the token comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The hash already in PASSWORD.
    Keep,
    /// COMFYUI_BEARER_TOKEN: it verifies the password.
    Pinned,
    /// The running child's token: PASSWORD broke under it and is healed without a restart.
    Running,
    /// A new bcrypt hash of the configured password.
    HashPassword,
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
    check_shape: &dyn Fn(&str) -> Result<(), String>,
) -> Plan {
    let mut warnings = Vec::new();
    if let (FileState::Hash { hash, username, exact }, Some(p)) = (i.file, i.password) {
        if verifies(p, hash) {
            return Plan {
                choice: Choice::Keep,
                write_file: !exact || username != i.username,
                drop_sessions: false,
                warnings,
            };
        }
    }
    if let (FileState::Hash { username, exact, .. }, None) = (i.file, i.password) {
        return Plan {
            choice: Choice::Keep,
            write_file: !exact || username != i.username,
            drop_sessions: false,
            warnings,
        };
    }
    // From here PASSWORD is unusable, or holds the hash of another password.
    match i.file {
        FileState::Empty => warnings.push(
            "login/PASSWORD is empty (ComfyUI-Login truncates it on a login without a username): \
             ComfyUI would accept an empty token; rewriting it"
                .into(),
        ),
        FileState::Malformed(why) => warnings.push(format!("login/PASSWORD is malformed ({why}): rewriting it")),
        FileState::Missing | FileState::Hash { .. } => {}
    }
    let running_ok = |p: Option<&str>| match (i.running, p) {
        (Some(r), Some(p)) => verifies(p, r),
        (Some(r), None) => check_shape(r).is_ok(),
        (None, _) => false,
    };
    let choice = if running_ok(i.password) {
        Choice::Running
    } else if let Some(p) = i.password {
        match i.pinned.map(|t| (t, check_shape(t))) {
            Some((t, Ok(()))) if verifies(p, t) => Choice::Pinned,
            Some((t, Ok(()))) => {
                // Our own token from before a password change is stale, not suspicious.
                let ours = matches!(i.file, FileState::Hash { hash, .. } if hash == t);
                if !ours {
                    warnings.push("COMFYUI_BEARER_TOKEN does not match the password: replacing it".into());
                }
                Choice::HashPassword
            }
            Some((_, Err(why))) => {
                warnings.push(format!("COMFYUI_BEARER_TOKEN is malformed ({why}): replacing it"));
                Choice::HashPassword
            }
            None => Choice::HashPassword,
        }
    } else {
        Choice::Generate
    };
    let new_password = matches!(choice, Choice::Pinned | Choice::HashPassword | Choice::Generate);
    Plan { choice, write_file: true, drop_sessions: new_password && !matches!(i.file, FileState::Missing), warnings }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A fake bcrypt: the hash of P is "H(P)"; well-formed means it starts with "H(".
    fn verifies(p: &str, h: &str) -> bool {
        h == format!("H({p})")
    }
    fn shape(h: &str) -> Result<(), String> {
        if h.starts_with("H(") {
            Ok(())
        } else {
            Err("not a hash".into())
        }
    }
    fn hash(h: &str, user: &str) -> FileState {
        FileState::Hash { hash: h.into(), username: user.into(), exact: true }
    }
    fn run(file: FileState, password: Option<&str>, pinned: Option<&str>, running: Option<&str>) -> Plan {
        plan(&Inputs { file: &file, password, username: "admin", pinned, running }, &verifies, &shape)
    }

    #[test]
    fn hash_verifies_password_keep() {
        let p = run(hash("H(pw)", "admin"), Some("pw"), None, None);
        assert_eq!((p.choice, p.write_file, p.drop_sessions), (Choice::Keep, false, false));
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn hash_verifies_but_username_or_format_differs_keep_and_rewrite() {
        let p = run(hash("H(pw)", "bob"), Some("pw"), None, None);
        assert_eq!((p.choice, p.write_file), (Choice::Keep, true));
        let crlf = FileState::Hash { hash: "H(pw)".into(), username: "admin".into(), exact: false };
        let p = run(crlf, Some("pw"), None, None);
        assert_eq!((p.choice, p.write_file), (Choice::Keep, true));
    }

    #[test]
    fn hash_verifies_even_if_pinned_differs_keep() {
        let p = run(hash("H(pw)", "admin"), Some("pw"), Some("H(other)"), None);
        assert_eq!(p.choice, Choice::Keep);
    }

    #[test]
    fn password_changed_new_hash_and_sessions_dropped() {
        let p = run(hash("H(old)", "admin"), Some("new"), None, None);
        assert_eq!((p.choice, p.write_file, p.drop_sessions), (Choice::HashPassword, true, true));
    }

    #[test]
    fn password_changed_pinned_token_verifies_used() {
        let p = run(hash("H(old)", "admin"), Some("new"), Some("H(new)"), None);
        assert_eq!((p.choice, p.drop_sessions), (Choice::Pinned, true));
    }

    #[test]
    fn password_changed_running_token_is_not_reused() {
        // The running child has the old token: it must restart with a new one.
        let p = run(hash("H(old)", "admin"), Some("new"), None, Some("H(old)"));
        assert_eq!(p.choice, Choice::HashPassword);
    }

    #[test]
    fn missing_file_with_password_hashes_it_no_sessions_to_drop() {
        let p = run(FileState::Missing, Some("pw"), None, None);
        assert_eq!((p.choice, p.write_file, p.drop_sessions), (Choice::HashPassword, true, false));
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn missing_file_pinned_token_verifies_used_as_is() {
        let p = run(FileState::Missing, Some("pw"), Some("H(pw)"), None);
        assert_eq!(p.choice, Choice::Pinned);
    }

    #[test]
    fn pinned_token_malformed_or_wrong_is_replaced_with_a_warning() {
        let p = run(FileState::Missing, Some("pw"), Some("$2b$12$mangled"), None);
        assert_eq!(p.choice, Choice::HashPassword);
        assert!(p.warnings[0].contains("malformed (not a hash)"), "{:?}", p.warnings);
        let p = run(FileState::Missing, Some("pw"), Some("H(other)"), None);
        assert_eq!(p.choice, Choice::HashPassword);
        assert!(p.warnings[0].contains("does not match"), "{:?}", p.warnings);
    }

    #[test]
    fn empty_or_malformed_file_with_password_rehashed_with_warning() {
        for file in [FileState::Empty, FileState::Malformed("61 characters".into())] {
            let p = run(file, Some("pw"), None, None);
            assert_eq!((p.choice, p.write_file, p.drop_sessions), (Choice::HashPassword, true, true));
            assert_eq!(p.warnings.len(), 1);
        }
    }

    #[test]
    fn empty_file_while_running_healed_with_the_running_token() {
        let p = run(FileState::Empty, Some("pw"), None, Some("H(pw)"));
        assert_eq!((p.choice, p.write_file, p.drop_sessions), (Choice::Running, true, false));
        assert!(p.warnings[0].contains("empty"));
        // With no configured password (it was generated): the running token still heals.
        let p = run(FileState::Malformed("truncated".into()), None, None, Some("H(gen)"));
        assert_eq!(p.choice, Choice::Running);
    }

    #[test]
    fn running_token_not_matching_the_password_is_not_reused() {
        let p = run(FileState::Empty, Some("new"), None, Some("H(old)"));
        assert_eq!(p.choice, Choice::HashPassword);
    }

    #[test]
    fn foreign_hash_while_running_restored_when_the_password_is_unchanged() {
        let p = run(hash("H(other)", "admin"), Some("pw"), None, Some("H(pw)"));
        assert_eq!((p.choice, p.drop_sessions), (Choice::Running, false));
    }

    #[test]
    fn valid_hash_no_password_keep() {
        let p = run(hash("H(x)", "admin"), None, None, None);
        assert_eq!((p.choice, p.write_file), (Choice::Keep, false));
    }

    #[test]
    fn nothing_anywhere_generate() {
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
