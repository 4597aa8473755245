//! `comfy-init provision [--check] [--manifest PATH]`: brings the models and custom nodes a
//! manifest names (see `manifest`) before ComfyUI starts. Run by the pre-start hook
//! `docker/pre-start.d/20-provision`, so as PUID, in the hook's process group: a `docker stop`
//! reaches it and its aria2c and git children at once. What is already there and verified costs
//! a `stat` per model (`cache`); a model is renamed to its name only once complete, and
//! verified when the manifest gives its sha256 (`aria2`);
//! nodes are checked out at their pin (`nodes`). `--check` says what would be done, without the
//! network and without writing anything.

pub mod aria2;
pub mod cache;
pub mod manifest;
pub mod nodes;
pub mod redirect;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cache::{Action, Cache, Entry, Stat};
use manifest::{Manifest, Model};

/// What provisioning takes from the settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `COMFY_INIT_PROVISION`: the manifest.
    pub manifest: PathBuf,
    /// `COMFY_INIT_PROVISION_PROGRESS`: seconds between two progress lines of a download.
    pub progress_every: u32,
    pub comfyui_dir: PathBuf,
    /// ComfyUI's Python, which installs the nodes' requirements.
    pub python: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error("cannot read the manifest {}: {source}", path.display())]
    Read { path: PathBuf, source: crate::fsutil::ReadError },
    #[error("no manifest at {}: write one (see README, Provisioning) or set COMFY_INIT_PROVISION", .0.display())]
    Missing(PathBuf),
    #[error(transparent)]
    Download(#[from] aria2::DownloadError),
    #[error(transparent)]
    Node(#[from] nodes::NodeError),
    #[error("model {file} ({url}): {source}")]
    Redirect { file: String, url: String, source: redirect::RedirectError },
    #[error(
        "model {file}: auth_env {var} is not set (or empty): pass the token in that variable (docker run -e {var}), \
         or drop auth_env"
    )]
    NoToken { file: String, var: String },
    #[error("model {file}: {var} holds a line break or a control character: give the token alone")]
    BadToken { file: String, var: String },
    #[error("model {file}: {} is {what}, not a file: remove it", path.display())]
    NotAFile { file: String, path: PathBuf, what: &'static str },
    #[error("model {file}: cannot {op} {}: {source}", path.display())]
    Io { file: String, op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot write the provisioning cache: {0}")]
    Cache(#[from] crate::fsutil::IoError),
}

impl Error {
    /// 78 for a manifest that cannot be used (as any bad configuration), 1 for work that failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Manifest(_)
            | Error::Read { .. }
            | Error::Missing(_)
            | Error::NoToken { .. }
            | Error::BadToken { .. } => crate::error::EXIT_CONFIG,
            _ => 1,
        }
    }
}

/// Reads the manifest (at most 1 MiB, not a FIFO or a device).
pub fn load(path: &Path) -> Result<Manifest, Error> {
    let bytes = crate::fsutil::read_bounded(path, 1 << 20, crate::fsutil::Links::Follow)
        .map_err(|source| Error::Read { path: path.to_path_buf(), source })?
        .ok_or_else(|| Error::Missing(path.to_path_buf()))?;
    Ok(manifest::parse(path, &String::from_utf8_lossy(&bytes))?)
}

/// The whole command: the manifest's nodes, then its models.
pub fn run(settings: &Settings, check: bool) -> Result<(), Error> {
    let started = Instant::now();
    let manifest = load(&settings.manifest)?;
    let custom_nodes = settings.comfyui_dir.join("custom_nodes");
    for node in &manifest.nodes {
        let plan = nodes::plan(&custom_nodes, node)?;
        println!("node {}: {}", node.name, plan.describe(node));
        if !check {
            let commit = nodes::apply(&custom_nodes, node, &plan, &settings.python)?;
            if !matches!(plan, nodes::Plan::Keep { requirements: false, .. }) {
                println!("node {}: at {commit}", node.name);
            }
        }
    }
    let models = settings.comfyui_dir.join("models");
    let mut cache = Cache::load(&models);
    let mut changed = false;
    let mut outcome = Ok(());
    for model in &manifest.models {
        match provision_model(settings, &models, model, &mut cache, check) {
            Ok(c) => changed |= c,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    if !check {
        // Saved on failure too: the models verified before it are not hashed again.
        let wanted: std::collections::HashSet<String> = manifest.models.iter().map(key).collect();
        let before = cache.entries.len();
        cache.entries.retain(|k, _| wanted.contains(k));
        if changed || before != cache.entries.len() {
            let saved = cache.save(&models);
            outcome = outcome.and(saved.map_err(Error::from));
        }
    }
    outcome?;
    let verb = if check { "checked" } else { "provisioned" };
    println!(
        "{verb}: {} model(s), {} node(s) in {:.2} s",
        manifest.models.len(),
        manifest.nodes.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The cache's key for a model: its path under `models/`.
fn key(model: &Model) -> String {
    model.dir.join(&model.file).to_string_lossy().into_owned()
}

/// One model: checked, hashed once, or downloaded. Ok(true): the cache changed.
fn provision_model(
    settings: &Settings,
    models: &Path,
    model: &Model,
    cache: &mut Cache,
    check: bool,
) -> Result<bool, Error> {
    let dest_dir = models.join(&model.dir);
    let path = dest_dir.join(&model.file);
    let name = format!("models/{}", key(model));
    let stat = regular_file(model, &path)?;
    let action = cache::decide(model.sha256.as_deref(), stat, cache.entries.get(&key(model)));
    match action {
        Action::Verified => {
            println!("{name}: present, verified (cache)");
            return Ok(false);
        }
        Action::KeepUnverified => {
            println!("{name}: present, not verified: the manifest gives no sha256 (add sha256 = \"...\" to check it)");
            return Ok(false);
        }
        Action::Hash if check => {
            println!("{name}: present, will hash");
            return Ok(false);
        }
        Action::Hash => {
            let (Some(stat), Some(expected)) = (stat, model.sha256.as_deref()) else { return Ok(false) };
            let took = Instant::now();
            let actual = sha256_of(&path).map_err(|e| io(model, "read", &path, e))?;
            let still = regular_file(model, &path)?;
            if actual == expected && still == Some(stat) {
                println!("{name}: present, verified (hashed in {:.1} s)", took.elapsed().as_secs_f64());
                cache.entries.insert(key(model), Entry { stat, sha256: actual });
                return Ok(true);
            }
            println!("{name}: present but its sha256 is not the manifest's: downloading the manifest's file");
        }
        Action::Download if check => {
            let from = match aria2::resumable(&aria2::partial_path(&dest_dir, model)) {
                Some(resume) => format!(", resuming at {resume} bytes"),
                None => String::new(),
            };
            println!("{name}: will download from {} (size unknown until asked){from}", manifest::shown_url(&model.url));
            return Ok(false);
        }
        Action::Download => {}
    }
    download(settings, model, &dest_dir, &path, cache)?;
    Ok(true)
}

fn download(settings: &Settings, model: &Model, dest_dir: &Path, path: &Path, cache: &mut Cache) -> Result<(), Error> {
    let token = token(model)?;
    if model.sha256.is_none() {
        println!("models/{}: no sha256 in the manifest: it will not be verified", key(model));
    }
    println!("models/{}: downloading from {}", key(model), manifest::shown_url(&model.url));
    std::fs::create_dir_all(dest_dir).map_err(|e| io(model, "create", dest_dir, e))?;
    let took = Instant::now();
    let start = match &token {
        Some(token) => redirect::start_of(&model.url, token).map_err(|source| Error::Redirect {
            file: model.file.clone(),
            url: manifest::shown_url(&model.url),
            source,
        })?,
        None => redirect::Start { url: model.url.clone(), with_token: false },
    };
    if let Some(token) = token.as_deref().filter(|_| !start.with_token) {
        println!(
            "models/{}: the server sends the download on to {} (another host): the token goes to the manifest's \
             host only",
            key(model),
            manifest::shown_url(&start.url).replace(token, "***")
        );
    }
    let token = token.as_deref().filter(|_| start.with_token);
    let opts = aria2::Options { url: &start.url, token, progress_every: settings.progress_every };
    aria2::fetch(model, dest_dir, &opts)?;
    let stat = regular_file(model, path)?;
    let size = stat.map_or(0, |s| s.size);
    let verified = if model.sha256.is_some() { "verified" } else { "not verified" };
    println!("models/{}: downloaded, {size} bytes, {verified}, in {:.1} s", key(model), took.elapsed().as_secs_f64());
    if let (Some(stat), Some(sha)) = (stat, &model.sha256) {
        cache.entries.insert(key(model), Entry { stat, sha256: sha.clone() });
    }
    Ok(())
}

/// The model's token from its `auth_env`; never shown.
fn token(model: &Model) -> Result<Option<String>, Error> {
    let Some(var) = &model.auth_env else { return Ok(None) };
    let value = std::env::var(var).unwrap_or_default();
    if value.is_empty() {
        return Err(Error::NoToken { file: model.file.clone(), var: var.clone() });
    }
    if value.chars().any(char::is_control) {
        return Err(Error::BadToken { file: model.file.clone(), var: var.clone() });
    }
    Ok(Some(value))
}

/// The file's identity when a regular file is there (through a symlink: a model may live in a
/// shared store); None when nothing is.
fn regular_file(model: &Model, path: &Path) -> Result<Option<Stat>, Error> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Some(Stat::of(&m))),
        Ok(m) => {
            let what = if m.is_dir() { "a folder" } else { "not a regular file" };
            Err(Error::NotAFile { file: model.file.clone(), path: path.to_path_buf(), what })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(model, "look at", path, e)),
    }
}

fn io(model: &Model, op: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io { file: model.file.clone(), op, path: path.to_path_buf(), source }
}

/// The sha256 of a file, read in 1 MiB blocks, as lowercase hex.
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `comfy-init provision`: the report on stdout, the failure on stderr; the exit code.
pub fn command(settings: &Settings, check: bool) -> u8 {
    match run(settings, check) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("comfy-init provision: {e}");
            e.exit_code()
        }
    }
}
