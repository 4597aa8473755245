//! Credentials: make `login/PASSWORD`, the `.env` file and the token API clients use agree
//! before ComfyUI starts, and again whenever one of them changes. `plan` decides, this module
//! gathers the inputs and carries the plan out.

pub mod dotenv_edit;
pub mod password_file;
pub mod plan;
pub mod token;

use std::path::{Path, PathBuf};

use crate::config::{ConfigError, Lookup};
use crate::fsutil::{self, NewFileAttrs};
use dotenv_edit::EnvFile;
use plan::{Choice, FileState, Inputs};

pub const KEY_PASSWORD: &str = "COMFYUI_PASSWORD";
pub const KEY_USERNAME: &str = "COMFYUI_USERNAME";
pub const KEY_TOKEN: &str = "COMFYUI_BEARER_TOKEN";

#[derive(Debug, Clone)]
pub struct Settings {
    pub comfyui_dir: PathBuf,
    pub env_file: PathBuf,
    pub password_file: Option<PathBuf>,
    /// The process environment's values (frozen at container creation).
    pub env_password: Option<String>,
    pub env_username: Option<String>,
    pub env_token: Option<String>,
    /// PUID/PGID: owner of what we create.
    pub owner: Option<(u32, u32)>,
}

/// `COMFY_INIT_AUTH`: true = manage credentials (default), false = plain init.
pub fn auth_enabled(get: Lookup) -> Result<bool, ConfigError> {
    match get("COMFY_INIT_AUTH").as_deref() {
        None | Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(v) => Err(ConfigError(format!("COMFY_INIT_AUTH='{v}' is not valid: use on or off"))),
    }
}

/// PUID/PGID as a (uid, gid) pair; PGID defaults to PUID.
pub fn owner(get: Lookup) -> Result<Option<(u32, u32)>, ConfigError> {
    let num = |name: &str| -> Result<Option<u32>, ConfigError> {
        get(name)
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| ConfigError(format!("{name}='{v}' is not a numeric id: use e.g. {name}=1000")))
            })
            .transpose()
    };
    match (num("PUID")?, num("PGID")?) {
        (Some(u), g) => Ok(Some((u, g.unwrap_or(u)))),
        (None, Some(_)) => Err(ConfigError("PGID is set without PUID: set both (e.g. PUID=1000 PGID=1000)".into())),
        (None, None) => Ok(None),
    }
}

impl Settings {
    pub fn from_lookup(get: Lookup) -> Result<Settings, ConfigError> {
        Ok(Settings {
            comfyui_dir: crate::config::comfyui_dir(get),
            env_file: get("COMFY_INIT_ENV_FILE").map(PathBuf::from).unwrap_or_else(|| "/workspace/.env".into()),
            password_file: get("COMFYUI_PASSWORD_FILE").map(PathBuf::from),
            env_password: get(KEY_PASSWORD),
            env_username: get(KEY_USERNAME),
            env_token: get(KEY_TOKEN),
            owner: owner(get)?,
        })
    }

    pub fn password_path(&self) -> PathBuf {
        password_file::path(&self.comfyui_dir)
    }

    /// ComfyUI-Login's key for session cookies.
    pub fn session_key_path(&self) -> PathBuf {
        self.comfyui_dir.join("custom_nodes/ComfyUI-Login/.secret-key.txt")
    }

    /// The folders (and names in them) whose changes can change the token. A secret folder is
    /// watched whole: Kubernetes swaps its `..data` symlink, not the file.
    pub fn watch_targets(&self) -> Vec<crate::watch::Target> {
        use crate::watch::Target;
        let named = |path: &Path| Target {
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            names: path.file_name().map(|n| vec![n.to_os_string()]).unwrap_or_default(),
        };
        let mut targets = vec![named(&self.password_path()), named(&self.env_file)];
        if let Some(secret) = &self.password_file {
            targets.push(Target { dir: secret.parent().unwrap_or(Path::new(".")).to_path_buf(), names: vec![] });
        }
        targets
    }
}

/// The configured values after precedence: secret file, then `.env`, then the environment.
struct Sources {
    password: Option<String>,
    username: String,
    pinned: Option<String>,
    env: Option<EnvFile>,
}

fn gather(s: &Settings, warnings: &mut Vec<String>) -> Result<Sources, String> {
    let env = EnvFile::read(&s.env_file)?;
    let env_value = |key: &str| env.as_ref().and_then(|e| e.get(key)).map(String::from);
    let secret = match &s.password_file {
        None => None,
        Some(path) => Some(read_secret(path)?),
    };
    let env_file_name = s.env_file.display().to_string();
    let mut candidates: Vec<(String, String)> = Vec::new();
    if let (Some(v), Some(p)) = (secret, &s.password_file) {
        candidates.push((v, format!("COMFYUI_PASSWORD_FILE ({})", p.display())));
    }
    if let Some(v) = env_value(KEY_PASSWORD) {
        candidates.push((v, format!("{KEY_PASSWORD} in {env_file_name}")));
    }
    if let Some(v) = &s.env_password {
        candidates.push((v.clone(), format!("the environment variable {KEY_PASSWORD}")));
    }
    let password = candidates.first().cloned();
    if let Some((chosen, from)) = &password {
        for (other, other_from) in &candidates[1..] {
            if other != chosen {
                warnings.push(format!("the password from {other_from} differs from the one in {from}; using {from}"));
            }
        }
        token::validate_password(chosen, from)?;
    }
    let username = env_value(KEY_USERNAME).or_else(|| s.env_username.clone()).unwrap_or_else(|| "admin".into());
    if username.is_empty() || username.trim() != username || username.contains(['\n', '\r', '\0']) {
        return Err(format!(
            "{KEY_USERNAME}='{username}' is not a usable username: no surrounding spaces or line breaks"
        ));
    }
    let mut pinned = env_value(KEY_TOKEN).or_else(|| s.env_token.clone());
    if let (Some(raw), Some(_)) = (env.as_ref().and_then(|e| e.raw(KEY_TOKEN)), &pinned) {
        if raw.starts_with('$') {
            warnings.push(format!(
                "{KEY_TOKEN} in {env_file_name} is not quoted: '$' expansion mangles a bcrypt hash; \
                 comfy-init writes it single-quoted"
            ));
            pinned = Some(raw.to_string()); // judge what was meant, not what expansion left
        }
    }
    Ok(Sources { password: password.map(|(v, _)| v), username, pinned, env })
}

/// A `_FILE` secret: one trailing newline is not part of the password (`echo pw > file`).
fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "COMFYUI_PASSWORD_FILE={} cannot be read ({e}): mount the secret there or unset the variable",
            path.display()
        )
    })?;
    let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    Ok(text.to_string())
}

/// Cheap (no bcrypt, no write): whether the configured password is known, from bcrypt answers
/// already computed, not to match `running`. False when unknown or invalid: `reconcile` decides.
pub fn known_stale(s: &Settings, running: &str) -> bool {
    match gather(s, &mut Vec::new()) {
        Ok(Sources { password: Some(p), .. }) => token::known_mismatch(&p, running),
        _ => false,
    }
}

/// Fail closed: no ComfyUI folder, no ComfyUI started unprotected by accident.
fn require_comfyui_dir(s: &Settings) -> Result<(), String> {
    if s.comfyui_dir.is_dir() {
        return Ok(());
    }
    Err(format!(
        "COMFYUI_DIR={} is not a folder: mount ComfyUI there or point COMFYUI_DIR at it \
         (COMFY_INIT_AUTH=off runs without ComfyUI-Login, unprotected)",
        s.comfyui_dir.display()
    ))
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

/// Reconciles once. `running`: the token of the running ComfyUI (supervisor). `dry_run`: decide
/// and describe (a new hash is still computed, to know what would change), write nothing.
/// Err: a refusal with the source and the rule; nothing written.
pub fn reconcile(s: &Settings, running: Option<&str>, dry_run: bool) -> Result<Outcome, String> {
    // A dry run writes nothing, not even the lock file.
    let _lock = if dry_run { None } else { Some(Lock::acquire(s)?) };
    reconcile_locked(s, running, dry_run)
}

fn reconcile_locked(s: &Settings, running: Option<&str>, dry_run: bool) -> Result<Outcome, String> {
    require_comfyui_dir(s)?;
    let mut warnings = Vec::new();
    let sources = gather(s, &mut warnings)?;
    let file_path = s.password_path();
    let file = password_file::read(&file_path)?;
    let inputs = Inputs {
        file: &file,
        password: sources.password.as_deref(),
        username: &sources.username,
        pinned: sources.pinned.as_deref(),
        running,
    };
    let plan = plan::plan(&inputs, &token::verifies, &token::check_shape);
    warnings.extend(plan.warnings.iter().cloned());
    for w in &warnings {
        log::warn!("{w}");
    }

    let mut out = Outcome { username: sources.username.clone(), ..Outcome::default() };
    let (token, why) = match plan.choice {
        Choice::Keep => match &file {
            FileState::Hash { hash, .. } => (hash.clone(), "kept"),
            _ => unreachable!("plan keeps only a file that holds a hash"),
        },
        Choice::Pinned => (sources.pinned.clone().unwrap_or_default(), "from COMFYUI_BEARER_TOKEN"),
        Choice::Running => (running.unwrap_or_default().to_string(), "restored from the running ComfyUI"),
        Choice::HashPassword => {
            (token::hash(sources.password.as_deref().unwrap_or_default())?, "new hash of the configured password")
        }
        Choice::Generate => {
            let password = token::generate_password();
            let hash = token::hash(&password)?;
            out.generated = Some(password);
            (hash, "new password generated")
        }
    };

    // The .env first: once it holds the (new) password and token, a crash before PASSWORD is
    // written still ends in the same token on the next start (the pinned token verifies).
    if let Some(text) = env_update(&sources.env, &token, out.generated.as_deref()) {
        let env_dir = s.env_file.parent().unwrap_or(Path::new("."));
        if fsutil::dir_writable(env_dir) {
            if !dry_run {
                let attrs = NewFileAttrs { mode: 0o600, owner: s.owner, force: false };
                fsutil::write_atomic(&s.env_file, text.as_bytes(), attrs)?;
                crate::test_hook::pause("between .env and PASSWORD");
            }
            out.changes.push(format!("{}: {KEY_TOKEN} updated", s.env_file.display()));
            if out.generated.is_some() {
                out.changes.push(format!("{}: {KEY_PASSWORD} generated", s.env_file.display()));
                out.stored_in = Some(s.env_file.clone());
            }
        } else {
            log::info!(
                "{} is not writable: {KEY_TOKEN} not written back (get the token with 'comfy-init token')",
                s.env_file.display()
            );
        }
    }

    let file_differs = !matches!(&file, FileState::Hash { hash, username, exact: true } if *hash == token && *username == sources.username);
    if plan.write_file && file_differs {
        if !dry_run {
            password_file::write(&file_path, &token, &sources.username, s.owner)?;
        }
        out.changes.push(format!("{}: written ({why})", file_path.display()));
    }
    if plan.drop_sessions && s.session_key_path().exists() {
        if !dry_run {
            std::fs::remove_file(s.session_key_path())
                .map_err(|e| fsutil::explain_write_error(&s.session_key_path(), &e))?;
        }
        out.changes.push(format!("{}: deleted (old browser sessions end)", s.session_key_path().display()));
    }
    out.token = token;
    Ok(out)
}

/// The new `.env` text when it must change: the token (and a generated password) written back.
fn env_update(env: &Option<EnvFile>, token: &str, generated: Option<&str>) -> Option<String> {
    let text = env.as_ref().map(|e| e.text.clone()).unwrap_or_default();
    let current = env.as_ref().and_then(|e| e.get(KEY_TOKEN));
    let quoted_ok = env.as_ref().and_then(|e| e.raw(KEY_TOKEN)).map(|r| r.starts_with('\'')).unwrap_or(false);
    let mut new = text.clone();
    if current != Some(token) || !quoted_ok {
        new = dotenv_edit::set(&new, KEY_TOKEN, token);
    }
    if let Some(password) = generated {
        new = dotenv_edit::set(&new, KEY_PASSWORD, password);
    }
    (new != text).then_some(new)
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
            "It could NOT be stored (the .env file is not writable): note it now, it is shown only \
             once. To choose your own, set {KEY_PASSWORD} (or COMFYUI_PASSWORD_FILE) and restart."
        ),
    };
    log::warn!("====================== new ComfyUI login ======================");
    log::warn!("  username: {}", out.username);
    log::warn!("  password: {password}");
    log::warn!("  token:    {}", out.token);
    log::warn!("  {stored}");
    log::warn!("===============================================================");
}

/// The token ComfyUI uses: the hash in PASSWORD. Err when there is none yet.
pub fn current_token(s: &Settings) -> Result<String, String> {
    match password_file::read(&s.password_path())? {
        FileState::Hash { hash, .. } => Ok(hash),
        FileState::Missing => Err(format!(
            "{} does not exist yet: run 'comfy-init sync' or start the container",
            s.password_path().display()
        )),
        FileState::Empty => {
            Err(format!("{} is empty: run 'comfy-init sync' to repair it", s.password_path().display()))
        }
        FileState::Malformed(why) => {
            Err(format!("{} is malformed ({why}): run 'comfy-init sync' to repair it", s.password_path().display()))
        }
    }
}

/// `comfy-init rotate`: a new random password into `.env`, then a normal reconciliation.
pub fn rotate(s: &Settings) -> Result<Outcome, String> {
    let _lock = Lock::acquire(s)?;
    if let Some(p) = &s.password_file {
        return Err(format!(
            "the password comes from COMFYUI_PASSWORD_FILE ({}): change that secret instead",
            p.display()
        ));
    }
    let env = EnvFile::read(&s.env_file)?;
    let env_dir = s.env_file.parent().unwrap_or(Path::new("."));
    if !fsutil::dir_writable(env_dir) {
        return Err(format!("{} is not writable: rotate needs to store the new password there", s.env_file.display()));
    }
    let password = token::generate_password();
    let text = env.map(|e| e.text).unwrap_or_default();
    let attrs = NewFileAttrs { mode: 0o600, owner: s.owner, force: false };
    fsutil::write_atomic(&s.env_file, dotenv_edit::set(&text, KEY_PASSWORD, &password).as_bytes(), attrs)?;
    let mut out = reconcile_locked(s, None, false)?;
    out.generated = Some(password);
    out.stored_in = Some(s.env_file.clone());
    Ok(out)
}

/// Serialises reconciliations across processes: without it, `comfy-init rotate` and the running
/// supervisor (woken by rotate's own .env write) would both hash and write, and one token would
/// silently replace the other. An flock on `login/.comfy-init.lock`, released on drop (and by
/// the kernel if we die). Waits at most 10 s: a stuck holder must not freeze PID 1's loop.
struct Lock(#[allow(dead_code)] std::fs::File);

impl Lock {
    fn acquire(s: &Settings) -> Result<Lock, String> {
        use std::os::fd::AsRawFd;
        require_comfyui_dir(s)?;
        let login = s.comfyui_dir.join("login");
        std::fs::create_dir_all(&login).map_err(|e| fsutil::explain_write_error(&login, &e))?;
        let path = login.join(".comfy-init.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| fsutil::explain_write_error(&path, &e))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // SAFETY: flock on a descriptor we own.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            if std::time::Instant::now() >= deadline {
                log::warn!("{} is held by another comfy-init for 10 s: going on without it", path.display());
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(Lock(file))
    }
}
