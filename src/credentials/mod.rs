//! Credentials: make `login/PASSWORD`, the `.env` file and the token API clients use agree
//! before ComfyUI starts, and again whenever one of them changes. `plan` decides, this module
//! gathers the inputs and carries the plan out.

pub mod api_keys;
pub mod dotenv_edit;
pub mod password_file;
pub mod plan;
pub mod token;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::fsutil::{self, IoError, Links, NewFileAttrs, ReadError, Unreadable};
use crate::privileges::as_puid_where_exposed;
use dotenv_edit::{EnvError, EnvFile};
use plan::{Choice, FileState, Inputs};
use token::{HashError, PasswordRule};

pub const KEY_PASSWORD: &str = "COMFYUI_PASSWORD";
pub const KEY_USERNAME: &str = "COMFYUI_USERNAME";
pub const KEY_TOKEN: &str = "COMFYUI_BEARER_TOKEN";

/// Where the credentials live and what the environment says of them (built in `config.rs`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub comfyui_dir: PathBuf,
    pub env_file: PathBuf,
    pub password_file: Option<PathBuf>,
    /// The process environment's values (frozen at container creation).
    pub env_password: Option<String>,
    pub env_username: Option<String>,
    pub env_token: Option<String>,
    /// `COMFYUI_API_KEYS_FILE`: the operator's read-only list of API keys (a Kubernetes Secret).
    pub api_keys_file: Option<PathBuf>,
    /// PUID/PGID: owner of what we create.
    pub owner: Option<(u32, u32)>,
}

impl Settings {
    pub fn password_path(&self) -> PathBuf {
        password_file::path(&self.comfyui_dir)
    }

    /// ComfyUI-Login's keys for session cookies: `.secret-key.txt` in the node's OWN folder,
    /// whatever it is called (`ComfyUI-Login` from git, `comfyui-login` from ComfyUI-Manager and
    /// the registry). The node is known by what it is: a `password.py` that keeps its key in
    /// that file. Every copy found counts (a fork beside the original); none found: the git name.
    pub fn session_key_paths(&self) -> Vec<PathBuf> {
        let nodes = self.comfyui_dir.join("custom_nodes");
        let mut keys: Vec<PathBuf> = std::fs::read_dir(&nodes)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.')) // .disabled
            .map(|entry| entry.path())
            .filter(|dir| is_login_node(dir))
            .map(|dir| dir.join(".secret-key.txt"))
            .collect();
        keys.sort();
        if keys.is_empty() {
            keys.push(nodes.join("ComfyUI-Login/.secret-key.txt"));
        }
        keys
    }

    /// `login/GUEST_MODE`: its presence turns ComfyUI-Login's guest mode on.
    pub fn guest_mode_path(&self) -> PathBuf {
        self.password_path().with_file_name("GUEST_MODE")
    }

    /// The folders (and names in them) whose changes can change the token. A secret folder is
    /// watched whole: Kubernetes swaps its `..data` symlink, not the file.
    pub fn watch_targets(&self) -> Vec<crate::watch::Target> {
        use crate::watch::Target;
        let named = |path: &Path| Target {
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            names: path.file_name().map(|n| vec![n.to_os_string()]).unwrap_or_default(),
        };
        let login = Target {
            dir: self.password_path().parent().unwrap_or(Path::new(".")).to_path_buf(),
            names: vec!["PASSWORD".into(), "GUEST_MODE".into()],
        };
        let mut targets = vec![login, named(&self.env_file)];
        // A .env that is a symlink is edited at its target: watch there too.
        let env_target = fsutil::write_target(&self.env_file);
        if env_target != self.env_file {
            targets.push(named(&env_target));
        }
        if let Some(secret) = &self.password_file {
            targets.push(Target { dir: secret.parent().unwrap_or(Path::new(".")).to_path_buf(), names: vec![] });
        }
        targets
    }
}

/// Whether `dir` holds ComfyUI-Login (or a fork): its `password.py` keeps the session key in
/// `.secret-key.txt`. Read safely: a custom node folder is anyone's.
fn is_login_node(dir: &Path) -> bool {
    matches!(
        fsutil::read_bounded(&dir.join("password.py"), 1 << 20, Links::Refuse),
        Ok(Some(code)) if code.windows(16).any(|w| w == b".secret-key.txt\"" || w == b".secret-key.txt'")
    )
}

/// Guest mode on: what anyone can do, and how to turn it off. `token_logged`: ComfyUI's log
/// still holds the token (no companion node redacts it), which a guest can read.
pub fn guest_mode_risk(s: &Settings, token_logged: bool) -> Option<String> {
    let path = s.guest_mode_path();
    std::fs::symlink_metadata(&path).ok()?;
    let logs = if token_logged {
        ", and read every GET route, /internal/logs included, which holds ComfyUI-Login's \
         'For direct API calls, use token=...' line: the admin bearer token"
    } else {
        " and read every GET route"
    };
    Some(format!(
        "{} exists: ComfyUI-Login's guest mode is on. Anyone who reaches the login page can enter \
         as a guest without a password, run prompts, upload images{logs}. Remove {} to turn guest \
         mode off",
        path.display(),
        path.display()
    ))
}

/// Whether the companion node that keeps the token out of ComfyUI's log is in place.
pub fn token_redacted(s: &Settings) -> bool {
    s.comfyui_dir.join("custom_nodes").join(crate::companion::FOLDER).join("prestartup_script.py").is_file()
}

/// A `.env` or a secret file holds a few lines; a megabyte is already absurd.
pub const ENV_CAP: u64 = 1 << 20;

/// Why a reconciliation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Refused by a rule, with the source and the rule named: nothing written.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The system failed a read or a write that had to succeed (PASSWORD, the lock, the files
    /// the decision is made from): the path and the OS error, errno kept. Not a policy: the same
    /// pass may succeed once the disk, the mount or the permission is fixed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Another comfy-init holds the lock and we were asked not to wait (PID 1's loop).
    #[error("another comfy-init is writing the credentials")]
    Busy,
    /// A file changed between our read and our write: we wrote no further, try again.
    #[error("the credential files changed while comfy-init was writing them")]
    Changed,
}

/// PASSWORD unreadable: an OS error stays an OS error (said as [`IoError`] says it), what we
/// refuse to read is a refusal.
impl From<password_file::ReadFailure> for Failure {
    fn from(e: password_file::ReadFailure) -> Failure {
        match e {
            password_file::ReadFailure::Io(e) => Failure::Io(e),
            password_file::ReadFailure::Refused(why) => Failure::Refused(Refusal::PasswordFile(why)),
        }
    }
}

/// What a reconciliation refuses, and why: each names the file or variable, the rule, and what
/// to do. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}: COMFY_INIT_ENV_FILE must name a text file (put one there, or point the variable at yours)")]
    EnvFileUnreadable(#[source] Unreadable),
    #[error(transparent)]
    EnvFile(#[from] EnvError),
    #[error("COMFYUI_PASSWORD_FILE: {} does not exist: mount the secret there or unset the variable", .0.display())]
    SecretMissing(PathBuf),
    #[error("COMFYUI_PASSWORD_FILE: {0}: mount the secret there or unset the variable")]
    SecretUnreadable(#[source] Unreadable),
    #[error("COMFYUI_PASSWORD_FILE={} is not UTF-8 text: write the password as UTF-8", .0.display())]
    SecretNotUtf8(PathBuf),
    #[error("{0}: remove it, comfy-init will create the file")]
    PasswordFile(#[source] password_file::Refusal),
    #[error("the password from {from} {rule}")]
    Password {
        from: PasswordSource,
        #[source]
        rule: PasswordRule,
    },
    #[error("{KEY_USERNAME} is not a usable username: set one without surrounding spaces or line breaks")]
    Username,
    /// bcrypt failed (or was handed a password it cannot take).
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(
        "COMFYUI_DIR={} is not a folder: mount ComfyUI there or point COMFYUI_DIR at it \
         (COMFY_INIT_AUTH=off runs without ComfyUI-Login, unprotected)",
        .0.display()
    )]
    NoComfyUi(PathBuf),
    #[error(
        "{} or {} kept changing while comfy-init was writing them, for {MAX_BUSY:?}: stop whatever \
         rewrites them and try again",
        env_file.display(),
        password.display()
    )]
    KeptChanging { env_file: PathBuf, password: PathBuf },
    /// `rotate` with COMFYUI_PASSWORD_FILE set.
    #[error("the password comes from COMFYUI_PASSWORD_FILE ({}): change that secret instead", .0.display())]
    PasswordFromSecret(PathBuf),
    /// `rotate` where `.env` cannot be written.
    #[error("{} is not writable: rotate needs to store the new password there", .0.display())]
    EnvNotWritable(PathBuf),
}

/// Where a configured password comes from, as messages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    Secret(PathBuf),
    EnvFile(PathBuf),
    Environment,
}

impl std::fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordSource::Secret(path) => write!(f, "COMFYUI_PASSWORD_FILE ({})", path.display()),
            PasswordSource::EnvFile(path) => write!(f, "{KEY_PASSWORD} in {}", path.display()),
            PasswordSource::Environment => write!(f, "the environment variable {KEY_PASSWORD}"),
        }
    }
}

/// How a reconciliation may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decide and describe; write nothing, lock nothing.
    DryRun,
    /// One-shot commands and the start: wait for the lock, start over on concurrent edits.
    Wait,
    /// PID 1's loop: never sleep. A held lock or a concurrent edit is reported for a retry.
    NoWait,
}

/// The bytes a reconciliation decides from: compared again just before each write, so that a
/// save made while we were hashing is never overwritten with what we read before it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    env: Option<Vec<u8>>,
    password: Option<Vec<u8>>,
    secret: Option<Vec<u8>>,
}

impl Snapshot {
    fn read(s: &Settings) -> Result<Snapshot, Failure> {
        // As PUID where PUID could have redirected them (privileges::as_puid_where_exposed).
        let env = as_puid_where_exposed(&s.env_file, s.owner, || read_env(&s.env_file))?;
        let password =
            as_puid_where_exposed(&s.password_path(), s.owner, || password_file::read_raw(&s.password_path()))?;
        let secret = match &s.password_file {
            None => None,
            Some(path) => Some(read_secret_file(path)?),
        };
        Ok(Snapshot { env, password, secret })
    }
}

/// The `.env` file's bytes; Ok(None) when there is none.
fn read_env(path: &Path) -> Result<Option<Vec<u8>>, Failure> {
    fsutil::read_bounded(path, ENV_CAP, Links::Follow).map_err(|e| match e {
        ReadError::Refused(why) => Refusal::EnvFileUnreadable(why).into(),
        ReadError::Io(e) => Failure::Io(e),
    })
}

/// The bytes of COMFYUI_PASSWORD_FILE, which must exist.
fn read_secret_file(path: &Path) -> Result<Vec<u8>, Failure> {
    match fsutil::read_bounded(path, ENV_CAP, Links::Follow) {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(Refusal::SecretMissing(path.to_path_buf()).into()),
        Err(ReadError::Refused(why)) => Err(Refusal::SecretUnreadable(why).into()),
        Err(ReadError::Io(e)) => Err(Failure::Io(e)),
    }
}

/// The configured values after precedence: secret file, then `.env`, then the environment.
struct Sources {
    password: Option<String>,
    username: String,
    pinned: Option<String>,
    env: Option<EnvFile>,
}

fn gather(s: &Settings, snap: &Snapshot, warnings: &mut Vec<String>) -> Result<Sources, Refusal> {
    let env = match &snap.env {
        None => None,
        Some(bytes) => Some(EnvFile::parse(&s.env_file, bytes)?),
    };
    let env_file_name = s.env_file.display().to_string();
    let mut env_value = |key: &str| -> Option<String> {
        let (value, warning) = env_value(env.as_ref()?, key, &env_file_name);
        warnings.extend(warning);
        value
    };
    let secret = match (&snap.secret, &s.password_file) {
        (Some(bytes), Some(path)) => Some(read_secret(path, bytes)?),
        _ => None,
    };
    let from_env = env_value(KEY_PASSWORD);
    let username = env_value(KEY_USERNAME);
    let pinned = env_value(KEY_TOKEN);
    let mut candidates: Vec<(String, PasswordSource)> = Vec::new();
    if let (Some(v), Some(p)) = (secret, &s.password_file) {
        candidates.push((v, PasswordSource::Secret(p.clone())));
    }
    if let Some(v) = from_env {
        candidates.push((v, PasswordSource::EnvFile(s.env_file.clone())));
    }
    if let Some(v) = &s.env_password {
        candidates.push((v.clone(), PasswordSource::Environment));
    }
    let password = candidates.first().cloned();
    if let Some((chosen, from)) = &password {
        for (other, other_from) in &candidates[1..] {
            if other != chosen {
                warnings.push(format!("the password from {other_from} differs from the one in {from}; using {from}"));
            }
        }
        token::validate_password(chosen).map_err(|rule| Refusal::Password { from: from.clone(), rule })?;
    }
    let username = username.or_else(|| s.env_username.clone()).unwrap_or_else(|| "admin".into());
    if username.is_empty() || username.trim() != username || username.contains(['\n', '\r', '\0']) {
        return Err(Refusal::Username);
    }
    let pinned = pinned.or_else(|| s.env_token.clone());
    Ok(Sources { password: password.map(|(v, _)| v), username, pinned, env })
}

/// A value from `.env`, and a warning when it is an unquoted one holding `$`: dotenvy expands
/// `$NAME` there, docker compose v1 does not. What was written is what was meant (and what the
/// user types at the login page, or what a bcrypt hash is), so it is taken as written.
fn env_value(env: &EnvFile, key: &str, file_name: &str) -> (Option<String>, Option<String>) {
    let Some(value) = env.get(key) else { return (None, None) };
    match env.raw(key) {
        Some(raw) if raw.contains('$') && raw != value && is_plain_word(raw) => {
            let warning = format!(
                "{key} in {file_name} is not quoted and holds '$', which dotenvy expands and docker \
                 compose may not: comfy-init takes it as written; write it in single quotes \
                 ({key}='...') so that every reader agrees"
            );
            (Some(raw.to_string()), Some(warning))
        }
        _ => (Some(value.to_string()), None),
    }
}

/// An unquoted value that is one word: safe to take literally.
fn is_plain_word(raw: &str) -> bool {
    !raw.is_empty() && !raw.contains(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '\\' | '#'))
}

/// A `_FILE` secret: one trailing newline is not part of the password (`echo pw > file`).
fn read_secret(path: &Path, bytes: &[u8]) -> Result<String, Refusal> {
    let text = std::str::from_utf8(bytes).map_err(|_| Refusal::SecretNotUtf8(path.to_path_buf()))?;
    let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(text);
    Ok(text.to_string())
}

/// Fail closed: no ComfyUI folder, no ComfyUI started unprotected by accident.
fn require_comfyui_dir(s: &Settings) -> Result<(), Refusal> {
    if s.comfyui_dir.is_dir() {
        return Ok(());
    }
    Err(Refusal::NoComfyUi(s.comfyui_dir.clone()))
}

/// What a reconciliation did (or, dry, would do). No secret in `changes`.
#[derive(Debug, Default)]
pub struct Outcome {
    pub token: String,
    pub username: String,
    pub changes: Vec<String>,
    /// A password we generated: announce it once.
    pub generated: Option<String>,
    /// Where the generated password was stored, if it could be.
    pub stored_in: Option<PathBuf>,
}

/// What one pass decided, from one snapshot: the writes still to be done, each with the line
/// that says it in the log (added to the outcome once it is done; dry, as what would be).
struct Decision {
    out: Outcome,
    warnings: Vec<String>,
    /// PASSWORD must be written: what that changes.
    password_change: Option<String>,
    /// Session keys to delete: the password changed and old browser sessions must end.
    session_keys: Vec<PathBuf>,
    /// The new `.env` text, where it must change, and what that changes.
    env_text: Option<String>,
    env_changes: Vec<String>,
    /// The new password exists only in this pass's writes while another source configures a
    /// different one (`rotate` over a `.env` or environment password): unless `.env` takes it,
    /// the next pass goes back to that one. Its `.env` write is then required, not best-effort.
    env_required: bool,
}

impl Decision {
    fn writes(&self) -> bool {
        self.password_change.is_some() || !self.session_keys.is_empty() || self.env_text.is_some()
    }

    /// Every change this decision makes, in the order `apply` makes them.
    fn planned(&self) -> Vec<String> {
        let keys = self.session_keys.iter().map(|k| session_key_change(k));
        self.password_change.iter().cloned().chain(keys).chain(self.env_changes.iter().cloned()).collect()
    }
}

fn session_key_change(key: &Path) -> String {
    format!("{}: deleted (old browser sessions end)", key.display())
}

/// A password generated by a pass that then had to start over, and the hash it wrote for it.
struct Generated {
    password: String,
    token: String,
}

/// A concurrent edit makes a pass start over: one-shot commands keep starting over while the
/// files keep changing (each pass may cost a bcrypt hash, longer than the gap between two quick
/// saves), but not forever.
const MAX_BUSY: std::time::Duration = std::time::Duration::from_secs(60);

/// Reconciles. `running`: the token of the running ComfyUI (supervisor). Optimistic: decide (and
/// hash) from a snapshot without the lock; take the lock only when something must be written; just
/// before each write, read the files again and start over when one changed. A dry run computes
/// the real hash (to know what would change) and writes nothing, not even the lock.
pub fn reconcile(s: &Settings, running: Option<&str>, mode: Mode) -> Result<Outcome, Failure> {
    reconcile_with(s, running, mode, None)
}

/// `new_password`: rotate, i.e. store this password in `.env` whatever it holds now.
fn reconcile_with(
    s: &Settings,
    running: Option<&str>,
    mode: Mode,
    new_password: Option<&str>,
) -> Result<Outcome, Failure> {
    require_comfyui_dir(s)?;
    // Taken at the first write and kept: a pass that starts over runs under it, so another
    // comfy-init cannot make it start over again.
    let mut lock: Option<Lock> = None;
    // PASSWORD is written before `.env`: a pass that generated a password, wrote its hash and
    // then had to start over (a save of `.env`) left the password nowhere else. The next pass
    // must still store it (or announce it), or nobody would ever know it.
    let mut carried: Option<Generated> = None;
    // What the passes that then had to start over did write.
    let mut done: Vec<String> = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < MAX_BUSY {
        let snap = Snapshot::read(s)?;
        let mut d = decide(s, &snap, running, new_password, carried.as_ref())?;
        if mode == Mode::DryRun || !d.writes() {
            done.extend(d.planned());
            d.out.changes = done;
            return Ok(finish(d));
        }
        if lock.is_none() {
            lock = Some(Lock::acquire(s, mode == Mode::Wait)?);
        }
        match apply(s, &snap, &d, &mut done) {
            Ok(env_written) => {
                if env_written && d.out.generated.is_some() {
                    d.out.stored_in = Some(s.env_file.clone());
                }
                d.out.changes = done;
                return Ok(finish(d));
            }
            Err(Failure::Changed) if mode == Mode::Wait => {
                log::debug!("a credential file changed while comfy-init was writing: starting over");
                if let Some(password) = d.out.generated.take() {
                    carried = Some(Generated { password, token: d.out.token });
                }
                std::thread::sleep(SETTLE / 4);
            }
            Err(e) => return Err(e),
        }
    }
    Err(Refusal::KeptChanging { env_file: s.env_file.clone(), password: s.password_path() }.into())
}

fn finish(d: Decision) -> Outcome {
    for w in &d.warnings {
        log::warn!("{w}");
    }
    d.out
}

/// One pass, pure but for bcrypt: what the files must become, given what they are now.
/// `new_password`: a password just generated by `rotate`, to store instead of the configured one.
/// `carried`: a password an earlier pass generated and wrote into PASSWORD (see `reconcile_with`).
fn decide(
    s: &Settings,
    snap: &Snapshot,
    running: Option<&str>,
    new_password: Option<&str>,
    carried: Option<&Generated>,
) -> Result<Decision, Refusal> {
    let mut warnings = Vec::new();
    let mut sources = gather(s, snap, &mut warnings)?;
    let configured = sources.password.clone();
    if let Some(p) = new_password {
        sources.password = Some(p.to_string());
    }
    let file = snap.password.as_deref().map(password_file::parse).unwrap_or(FileState::Missing);
    warnings.extend(too_costly_warning(&file, sources.password.is_some()));
    let inputs = Inputs {
        file: &file,
        password: sources.password.as_deref(),
        username: &sources.username,
        pinned: sources.pinned.as_deref(),
        running,
    };
    // A password just generated matches no hash but ours: no bcrypt needed to know it.
    let verifies: &dyn Fn(&str, &str) -> bool =
        if new_password.is_some() { &token::known_match } else { &token::verifies };
    let plan = plan::plan(&inputs, verifies, &token::check_shape);
    warnings.extend(plan.warnings.iter().cloned());

    let (token, why, generated) = token_for(plan.choice)?;
    // PASSWORD still holds the hash of the password an earlier pass generated, and nothing
    // configures another: that password is still the one to store.
    let carried = carried.filter(|c| sources.password.is_none() && c.token == token).map(|c| c.password.clone());
    let generated = new_password.map(String::from).or(generated).or(carried);
    let (env_text, env_changes) = env_text(s, &sources.env, &token, generated.as_deref())?;
    let file_differs = !matches!(&file, FileState::Hash { hash, username, exact: true } if *hash == token && *username == sources.username);
    let password_change =
        (plan.write_file && file_differs).then(|| format!("{}: written ({why})", s.password_path().display()));
    let session_keys: Vec<PathBuf> = match plan.drop_sessions {
        true => s.session_key_paths().into_iter().filter(|k| k.exists()).collect(),
        false => Vec::new(),
    };
    let env_required = new_password.is_some() && configured.is_some() && configured.as_deref() != new_password;
    let out = Outcome { token, username: sources.username, generated, ..Outcome::default() };
    Ok(Decision { out, warnings, password_change, session_keys, env_text, env_changes, env_required })
}

/// A hash too costly to check (see `token::MAX_VERIFY_COST`) is replaced when a password is
/// configured: say so.
fn too_costly_warning(file: &FileState, password_configured: bool) -> Option<String> {
    let FileState::Hash { hash, .. } = file else { return None };
    (password_configured && token::too_costly(hash)).then(|| {
        format!(
            "login/PASSWORD holds a hash of cost {} (above {}): too slow to check at every start and \
             every web login; replacing it with a cost-{} hash",
            token::cost(hash).unwrap_or(0),
            token::MAX_VERIFY_COST,
            token::COST
        )
    })
}

/// The token the plan chose, why (for the log), and the password generated for it, if any.
fn token_for(choice: Choice) -> Result<(String, &'static str, Option<String>), HashError> {
    Ok(match choice {
        Choice::Keep(hash) => (hash, "kept", None),
        Choice::Pinned(token) => (token, "from COMFYUI_BEARER_TOKEN", None),
        Choice::Running(token) => (token, "restored from the running ComfyUI", None),
        Choice::HashPassword(password) => (token::hash_once(&password)?, "new hash of the configured password", None),
        Choice::Generate => {
            let password = token::generate_password();
            (token::hash(&password)?, "new password generated", Some(password))
        }
    })
}

/// The new `.env` text when it must change, and what that changes (for the log).
fn env_text(
    s: &Settings,
    env: &Option<EnvFile>,
    token: &str,
    generated: Option<&str>,
) -> Result<(Option<String>, Vec<String>), EnvError> {
    let Some(text) = env_update(&s.env_file, env, token, generated)? else { return Ok((None, Vec::new())) };
    let mut changes = vec![format!("{}: {KEY_TOKEN} updated", s.env_file.display())];
    if generated.is_some() {
        let had_one = env.as_ref().is_some_and(|e| e.get(KEY_PASSWORD).is_some());
        let what = if had_one { "replaced by a new random password" } else { "generated" };
        changes.push(format!("{}: {KEY_PASSWORD} {what}", s.env_file.display()));
    }
    Ok((Some(text), changes))
}

/// A `.env` modified this recently may be in the middle of a save: an editor that saves in
/// place truncates the file, then writes it, and a reader between the two sees it empty. Writing
/// then would orphan the inode the editor is about to fill, and lose its save; deciding from it
/// would write a PASSWORD for a password half typed.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

fn settled(path: &Path) -> Result<(), Failure> {
    let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified()) else { return Ok(()) };
    match std::time::SystemTime::now().duration_since(modified) {
        Ok(age) if age < SETTLE => Err(Failure::Changed),
        _ => Ok(()), // settled, or stamped in the future (a clock skew must not stall us)
    }
}

/// Asked before each write, and again just before its rename: the files still hold what the
/// decision was made from (`expected`), and `.env` was not saved in the last [`SETTLE`].
/// Err(Changed): write no further, start over from the new content.
fn unchanged(s: &Settings, expected: &Snapshot) -> Result<(), Failure> {
    as_puid_where_exposed(&s.env_file, s.owner, || settled(&fsutil::write_target(&s.env_file)))?;
    if Snapshot::read(s)? == *expected {
        Ok(())
    } else {
        Err(Failure::Changed)
    }
}

/// Carries a decision out, under the lock, in the order that never lets a file advertise a
/// token PASSWORD does not hold: PASSWORD first (what ComfyUI-Login reads), then the session keys
/// (the new password is in force: old browser sessions end), then `.env`, best-effort (see
/// [`write_env`]). Each change made is added to `done`. Before each write, and again once the new
/// content is written and synced, just before its rename, the files are read again: if one is
/// not what the decision was made from (a user's save, an editor's rename), nothing more is
/// written and the caller starts over from the new content; a `.env` saved in the last
/// [`SETTLE`] is left to settle first. What remains is the window between that read and the
/// rename, a few microseconds: a save landing exactly there is overwritten (no lock can stop an
/// editor that does not take it). Ok(true): `.env` holds what the decision wanted.
fn apply(s: &Settings, snap: &Snapshot, d: &Decision, done: &mut Vec<String>) -> Result<bool, Failure> {
    let mut expected = snap.clone();
    // Every read, write and delete below runs as PUID where PUID could have redirected it (a
    // symlink it left, a folder it may swap): root never writes where the ComfyUI user points it.
    if let Some(change) = &d.password_change {
        let path = s.password_path();
        unchanged(s, &expected)?;
        as_puid_where_exposed(&path, s.owner, || {
            password_file::write(&path, &d.out.token, &d.out.username, s.owner, || unchanged(s, &expected))
        })?;
        expected.password = Some(password_file::content(&d.out.token, &d.out.username).into_bytes());
        done.push(change.clone());
        crate::test_hook::pause("between PASSWORD and .env");
    }
    // The new PASSWORD is in place: a key that cannot be deleted (a read-only custom_nodes) only
    // means old browser sessions live on. Said, not fatal: ComfyUI must still get the new token.
    for key in &d.session_keys {
        match as_puid_where_exposed(key, s.owner, || std::fs::remove_file(key)) {
            Ok(()) => done.push(session_key_change(key)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("{}; old browser sessions stay logged in", fsutil::explain_write_error(key, &e)),
        }
    }
    match &d.env_text {
        None => Ok(true),
        Some(text) => write_env(s, &expected, text, d, done),
    }
}

/// A step of the `.env` write: the write itself failed (best-effort), or the check before it
/// said to stop (a concurrent edit: start over).
enum EnvStep {
    Write(IoError),
    Check(Failure),
}

impl From<IoError> for EnvStep {
    fn from(e: IoError) -> EnvStep {
        EnvStep::Write(e)
    }
}

/// `.env` gets the token (and a generated password) after PASSWORD holds it: a `.env` that
/// cannot be written only lacks the new token (or advertises an older one, which ComfyUI no
/// longer takes), said in a warning naming the file, the error and what to do; the
/// reconciliation goes on. A single-file bind mount of `.env` (Docker's `-v ./my.env:/config/.env`:
/// the rename over it answers EBUSY, it is a mount point) is written in place instead, after the
/// same check. Ok(false): not written. Err: start over (Changed), or `.env` had to take the new
/// password ([`Decision::env_required`]).
fn write_env(
    s: &Settings,
    expected: &Snapshot,
    text: &str,
    d: &Decision,
    done: &mut Vec<String>,
) -> Result<bool, Failure> {
    let still_wanted = || unchanged(s, expected).map_err(EnvStep::Check);
    let written = as_puid_where_exposed(&s.env_file, s.owner, || {
        // Through a symlink to its target: the link stays, the target gets the token.
        let target = fsutil::write_target(&s.env_file);
        still_wanted()?;
        let attrs = NewFileAttrs { mode: 0o600, owner: s.owner, force: false };
        match fsutil::write_atomic_checked(&target, text.as_bytes(), attrs, still_wanted) {
            Err(EnvStep::Write(e)) if fsutil::is_mount_point_error(&e) => {
                say_single_file_bind_mount(&s.env_file, &e);
                fsutil::write_in_place_checked(&target, text.as_bytes(), still_wanted)
            }
            other => other,
        }
    });
    let e = match written {
        Ok(()) => {
            done.extend(d.env_changes.iter().cloned());
            return Ok(true);
        }
        Err(EnvStep::Check(stop)) => return Err(stop),
        Err(EnvStep::Write(e)) => e,
    };
    if d.env_required {
        log::warn!(
            "the new password could not be stored in {}, which configures another one: PASSWORD goes \
             back to that one at the next reconciliation",
            s.env_file.display()
        );
        return Err(Failure::Io(e));
    }
    let then = match d.out.generated {
        Some(_) => "the generated password is shown below, only once: note it",
        None => "ComfyUI takes the new token all the same: get it with 'comfy-init token'",
    };
    let link = match e.path != s.env_file {
        true => format!(" ({} leads there)", s.env_file.display()),
        false => String::new(),
    };
    let message = format!("{e}{link}; {KEY_TOKEN} not written back ({then})");
    // Nothing at all where `.env` would be (not even a dangling link): it advertises nothing
    // stale, and many never mount one; no need to warn.
    let present = as_puid_where_exposed(&s.env_file, s.owner, || std::fs::symlink_metadata(&s.env_file).is_ok());
    if expected.env.is_some() || present {
        log::warn!("{message}");
    } else {
        log::info!("{message}");
    }
    Ok(false)
}

/// Said once per process: the rename over `.env` answered EBUSY (or EXDEV), so `.env` is a
/// mount point of its own, a single-file bind mount.
fn say_single_file_bind_mount(env_file: &Path, e: &IoError) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    log::warn!(
        "{} is a single-file bind mount (replacing it answered: {}): comfy-init writes it in place. \
         An editor on the host that saves by replacing the file is never seen inside the container: \
         mount the folder that holds it instead (docker run -v ./config:/config, not -v ./my.env:/config/.env)",
        env_file.display(),
        e.source
    );
}

/// The new `.env` text when it must change: the token (and a generated password) written back.
fn env_update(
    path: &Path,
    env: &Option<EnvFile>,
    token: &str,
    generated: Option<&str>,
) -> Result<Option<String>, EnvError> {
    let text = env.as_ref().map(|e| e.text.clone()).unwrap_or_default();
    let current = env.as_ref().and_then(|e| e.get(KEY_TOKEN));
    let quoted_ok = env.as_ref().and_then(|e| e.raw(KEY_TOKEN)).map(|r| r.starts_with('\'')).unwrap_or(false);
    let mut new = text.clone();
    if current != Some(token) || !quoted_ok {
        new = dotenv_edit::set_checked(path, &new, KEY_TOKEN, token)?;
    }
    if let Some(password) = generated {
        new = dotenv_edit::set_checked(path, &new, KEY_PASSWORD, password)?;
    }
    Ok((new != text).then_some(new))
}

/// For the supervisor's log: what changed, and the announcement of a generated password.
pub fn log_outcome(out: &Outcome) {
    for change in &out.changes {
        log::info!("credentials: {change}");
    }
    announce(out);
}

/// The one-time announcement of a generated password (the only time a secret is logged).
pub fn announce(out: &Outcome) {
    let Some(password) = &out.generated else {
        return;
    };
    let stored = match &out.stored_in {
        Some(path) => format!("It is stored in {path} as {KEY_PASSWORD}.", path = path.display()),
        None => format!(
            "It could NOT be stored (the .env file could not be written, see above): note it now, it \
             is shown only once. To choose your own, set {KEY_PASSWORD} (or COMFYUI_PASSWORD_FILE) and \
             restart."
        ),
    };
    log::warn!("====================== new ComfyUI login ======================");
    log::warn!("  username: {}", out.username);
    log::warn!("  password: {password}");
    log::warn!("  token:    {}", out.token);
    log::warn!("  {stored}");
    log::warn!("===============================================================");
}

/// Why PASSWORD holds no token: each says how to get one.
#[derive(Debug, thiserror::Error)]
pub enum NoToken {
    #[error(transparent)]
    Unreadable(#[from] password_file::ReadFailure),
    #[error("{} does not exist yet: run 'comfy-init sync' or start the container", .0.display())]
    Missing(PathBuf),
    #[error("{} is empty: run 'comfy-init sync' to repair it", .0.display())]
    Empty(PathBuf),
    /// `why`: what is wrong with it (see [`FileState::Malformed`]).
    #[error("{} is malformed ({why}): run 'comfy-init sync' to repair it", path.display())]
    Malformed { path: PathBuf, why: String },
}

/// The token ComfyUI uses: the hash in PASSWORD. Err when there is none yet.
pub fn current_token(s: &Settings) -> Result<String, NoToken> {
    let path = s.password_path();
    match password_file::read(&path)? {
        FileState::Hash { hash, .. } => Ok(hash),
        FileState::Missing => Err(NoToken::Missing(path)),
        FileState::Empty => Err(NoToken::Empty(path)),
        FileState::Malformed(why) => Err(NoToken::Malformed { path, why }),
    }
}

/// `comfy-init rotate`: a new random password into `.env` and PASSWORD, by a normal
/// reconciliation that stores it: every other byte of `.env` kept, and a concurrent edit never
/// lost (the pass starts over from it).
pub fn rotate(s: &Settings) -> Result<Outcome, Failure> {
    if let Some(p) = &s.password_file {
        return Err(Refusal::PasswordFromSecret(p.clone()).into());
    }
    require_comfyui_dir(s)?;
    env_writable(s)?;
    let password = token::generate_password();
    reconcile_with(s, None, Mode::Wait, Some(&password))
}

/// Whether `.env` can take a new password, asked before anything is written: its folder must
/// be writable, and the file itself (where there is one) open for writing, since a read-only
/// single-file bind mount sits in a writable folder.
fn env_writable(s: &Settings) -> Result<(), Failure> {
    as_puid_where_exposed(&s.env_file, s.owner, || {
        let target = fsutil::write_target(&s.env_file);
        if !fsutil::dir_writable(target.parent().unwrap_or(Path::new("."))) {
            return Err(Refusal::EnvNotWritable(s.env_file.clone()).into());
        }
        let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        match std::fs::OpenOptions::new().write(true).custom_flags(flags).open(&target) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Failure::Io(IoError::write(&target, e))),
        }
    })
}

/// Serialises writers across processes: without it, `comfy-init rotate` and the running
/// supervisor (woken by rotate's own .env write) would both write, and one token would silently
/// replace the other. An flock on the login folder itself: it needs no file of its own, so a
/// read-only login/ (a Kubernetes Secret) can still be locked; released on drop, and by the
/// kernel if we die. Taken only when something must be written.
struct Lock(#[allow(dead_code)] std::fs::File);

impl Lock {
    /// `wait`: block until the lock is free, saying so once (one-shot commands, the start).
    /// Otherwise Err(Busy) at once: PID 1's loop never sleeps on it.
    fn acquire(s: &Settings, wait: bool) -> Result<Lock, Failure> {
        let login = s.password_path().parent().unwrap_or(Path::new(".")).to_path_buf();
        password_file::create_login_dir(&login, s.owner)?;
        let mut said = false;
        loop {
            let (file, path) = open_lock_target(&login)?;
            if try_flock(&file, &path)? {
                if same_file(&file, &path) {
                    return Ok(Lock(file));
                }
                continue; // login/ was replaced while we locked the old one
            }
            if !wait {
                return Err(Failure::Busy);
            }
            if !said {
                log::info!("waiting for another comfy-init that is writing the credentials ({})", login.display());
                said = true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// The login folder, or (where the filesystem cannot flock a folder opened read-only: NFS emulates
/// flock with write locks) a lock file in it.
fn open_lock_target(login: &Path) -> Result<(std::fs::File, PathBuf), IoError> {
    let folder = fsutil::open_dir(login).map_err(|e| IoError::new("lock", login, e))?;
    if flock_supported(&folder) {
        return Ok((folder, login.to_path_buf()));
    }
    let path = login.join(".comfy-init.lock");
    // Non-blocking, no symlink: a FIFO or a link planted there is an error, not a hang.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| IoError::write(&path, e))?;
    Ok((file, path))
}

/// Whether an flock on this descriptor can work at all (probed with a shared lock, released).
fn flock_supported(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    let err = std::io::Error::last_os_error().raw_os_error();
    if rc == 0 {
        // SAFETY: as above. Dropping our shared lock; the exclusive one is asked for next.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return true;
    }
    err == Some(libc::EWOULDBLOCK)
}

/// Ok(true): locked; Ok(false): held by someone else.
fn try_flock(file: &std::fs::File, what: &Path) -> Result<bool, IoError> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => Ok(false),
        _ => Err(IoError::new("lock", what, e)),
    }
}

/// The locked descriptor is still what `path` names (not a folder or file since replaced).
fn same_file(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}
