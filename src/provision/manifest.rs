//! The provisioning manifest (`COMFY_INIT_PROVISION`, default `/config/provision.toml`): which
//! models go where under `models/`, and which custom nodes at which commit. TOML only, read with
//! toml_edit, whose spans let every error name the line. Everything that comes from the file is
//! checked here, once: what leaves this module is safe to join under ComfyUI's folders.

use std::path::{Component, Path, PathBuf};

use toml_edit::{Document, Item, Table};

/// A model to fetch into `models/<dir>/<file>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub url: String,
    /// Relative to `models/`: plain names only (no `..`, not absolute).
    pub dir: PathBuf,
    /// One plain name, not hidden (our partial downloads are hidden files).
    pub file: String,
    /// Lowercase hex, when the manifest gives one.
    pub sha256: Option<String>,
    /// The variable holding the token for `Authorization: Bearer ...`.
    pub auth_env: Option<String>,
    /// Where the `[[model]]` table starts, for messages.
    pub line: usize,
}

/// A pin: a full commit id, or a tag (a branch moves, so it is no pin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    Commit(String),
    Tag(String),
}

/// A custom node to check out into `custom_nodes/<name>` at `pin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub git: String,
    pub pin: Pin,
    pub name: String,
    pub requirements: bool,
    pub line: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub models: Vec<Model>,
    pub nodes: Vec<Node>,
}

/// A manifest that cannot be used: the file, the line when known, what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ManifestError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// The manifest in `text`, read from `path` (named in errors).
pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
    let at = |line: Option<usize>, message: String| ManifestError { path: path.to_path_buf(), line, message };
    let doc = Document::parse(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        at(line, format!("not valid TOML: {} (YAML is not read: write TOML)", e.message().trim()))
    })?;
    let mut manifest = Manifest::default();
    for (key, item) in doc.as_table().iter() {
        let line = item.span().map(|s| line_of(text, s.start));
        let tables = item
            .as_array_of_tables()
            .ok_or_else(|| at(line, format!("'{key}' must be written [[{key}]] (a list of tables), one per entry")))?;
        for table in tables.iter() {
            let line = line_of(text, table.span().map_or(0, |s| s.start));
            let entry = Entry { table, text, line };
            match key {
                "model" => manifest.models.push(entry.model().map_err(|(l, m)| at(Some(l), m))?),
                "node" => manifest.nodes.push(entry.node().map_err(|(l, m)| at(Some(l), m))?),
                other => return Err(at(Some(line), format!("unknown section [[{other}]]: use [[model]] or [[node]]"))),
            }
        }
    }
    check_unique(&manifest).map_err(|(l, m)| at(Some(l), m))?;
    Ok(manifest)
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// An error inside an entry: (line, message).
type EntryError = (usize, String);

/// One `[[model]]` or `[[node]]` table, read key by key.
struct Entry<'a> {
    table: &'a Table,
    text: &'a str,
    line: usize,
}

impl Entry<'_> {
    fn line_of_key(&self, key: &str) -> usize {
        self.table.get(key).and_then(Item::span).map_or(self.line, |s| line_of(self.text, s.start))
    }

    /// Unknown keys are refused: a typo (`sha265`) must not silently turn a check off.
    fn only_keys(&self, section: &str, known: &[&str]) -> Result<(), EntryError> {
        for (key, _) in self.table.iter() {
            if !known.contains(&key) {
                let list = known.join(", ");
                return Err((
                    self.line_of_key(key),
                    format!("unknown key '{key}' in [[{section}]]: the keys are {list}"),
                ));
            }
        }
        Ok(())
    }

    fn string(&self, section: &str, key: &str) -> Result<Option<String>, EntryError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(item) => match item.as_str() {
                Some(s) => Ok(Some(s.to_string())),
                None => Err((self.line_of_key(key), format!("'{key}' in [[{section}]] must be a string in quotes"))),
            },
        }
    }

    fn required(&self, section: &str, key: &str, what: &str) -> Result<String, EntryError> {
        self.string(section, key)?
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| (self.line, format!("[[{section}]] has no '{key}': give {what}")))
    }

    fn model(&self) -> Result<Model, EntryError> {
        self.only_keys("model", &["url", "dir", "file", "sha256", "auth_env"])?;
        let url = self.required("model", "url", "the http(s) address of the file")?;
        // aria2c reads one URL a line: a line break in it would add options.
        let one_line = !url.chars().any(|c| c.is_control() || c.is_whitespace());
        if !(url.starts_with("https://") || url.starts_with("http://")) || !one_line {
            return Err((
                self.line_of_key("url"),
                format!("url '{}' is not an http:// or https:// address", shown_url(&url)),
            ));
        }
        if userinfo(&url).is_some() {
            return Err((
                self.line_of_key("url"),
                format!(
                    "url '{}' holds credentials (user:password@ before the host): they would reach logs and \
                     process lists; remove them and give the token in a variable named by auth_env",
                    shown_url(&url)
                ),
            ));
        }
        let dir = self.required("model", "dir", "the folder under models/, like \"checkpoints\"")?;
        let dir = relative_dir(&dir).ok_or_else(|| {
            (
                self.line_of_key("dir"),
                format!("dir '{dir}' must be a folder under models/: plain names, no '..', not absolute"),
            )
        })?;
        let file = match self.string("model", "file")? {
            Some(f) => f,
            None => last_segment(&url).ok_or_else(|| {
                (self.line, format!("the url '{}' ends without a file name: give file = \"...\"", shown_url(&url)))
            })?,
        };
        if !plain_name(&file) {
            return Err((
                self.line_of_key("file"),
                format!("file '{file}' must be one plain file name (no '/', not hidden)"),
            ));
        }
        let sha256 = match self.string("model", "sha256")? {
            None => None,
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Some(h.to_ascii_lowercase()),
            Some(h) => {
                return Err((
                    self.line_of_key("sha256"),
                    format!("sha256 '{h}' is not 64 hexadecimal digits (sha256sum prints them)"),
                ))
            }
        };
        let auth_env = self.string("model", "auth_env")?;
        if let Some(name) = &auth_env {
            if !env_name(name) {
                return Err((
                    self.line_of_key("auth_env"),
                    format!("auth_env '{name}' is not a variable name (like HF_TOKEN)"),
                ));
            }
            if name.starts_with("COMFYUI_") || name.starts_with("COMFY_INIT_") {
                return Err((
                    self.line_of_key("auth_env"),
                    format!(
                        "auth_env '{name}': variables named COMFYUI_* and COMFY_INIT_* hold comfy-init's own \
                         settings and secrets (COMFYUI_PASSWORD, COMFYUI_BEARER_TOKEN), never sent to a download \
                         server: put the token in a variable of its own (like HF_TOKEN)"
                    ),
                ));
            }
            if url.starts_with("http://") && !loopback(&url) {
                return Err((
                    self.line_of_key("auth_env"),
                    format!(
                        "auth_env '{name}' with the http:// url '{}': the token would cross the network in clear \
                         text; use the https:// address",
                        shown_url(&url)
                    ),
                ));
            }
        }
        Ok(Model { url, dir, file, sha256, auth_env, line: self.line })
    }

    fn node(&self) -> Result<Node, EntryError> {
        self.only_keys("node", &["git", "ref", "name", "requirements"])?;
        let git = self.required("node", "git", "the repository's address")?;
        if git.starts_with('-') || git.chars().any(char::is_control) {
            return Err((self.line_of_key("git"), format!("git '{}' is not a repository address", shown_url(&git))));
        }
        if userinfo(&git).is_some() {
            return Err((
                self.line_of_key("git"),
                format!(
                    "git '{}' holds credentials (user:token@ before the host): they would reach logs, process \
                     lists and the node's .git/config. Private node repositories are not supported: give a \
                     public address",
                    shown_url(&git)
                ),
            ));
        }
        let pin = self.required("node", "ref", "a commit (all 40 hex digits) or a tag to pin the node to")?;
        let pin = parse_pin(&pin).map_err(|m| (self.line_of_key("ref"), m))?;
        let name = match self.string("node", "name")? {
            Some(n) => n,
            None => repo_name(&git).ok_or_else(|| {
                (self.line, format!("cannot tell a folder name from '{}': give name = \"...\"", shown_url(&git)))
            })?,
        };
        if !plain_name(&name) {
            return Err((
                self.line_of_key("name"),
                format!("name '{name}' must be one plain folder name under custom_nodes/"),
            ));
        }
        let requirements = match self.table.get("requirements") {
            None => true,
            Some(item) => item.as_bool().ok_or_else(|| {
                (self.line_of_key("requirements"), "requirements must be true or false (no quotes)".to_string())
            })?,
        };
        Ok(Node { git, pin, name, requirements, line: self.line })
    }
}

/// A commit id (SHA-1 or SHA-256, full length) or a tag. A short id cannot be fetched from a
/// server and may grow ambiguous: refused, asking for the full one.
fn parse_pin(pin: &str) -> Result<Pin, String> {
    let hex = pin.bytes().all(|b| b.is_ascii_hexdigit());
    if hex && (pin.len() == 40 || pin.len() == 64) {
        return Ok(Pin::Commit(pin.to_ascii_lowercase()));
    }
    if hex && pin.len() >= 7 {
        return Err(format!("ref '{pin}' looks like a short commit id: give all 40 hex digits (git rev-parse {pin})"));
    }
    let bad = pin.starts_with('-')
        || pin.contains("..")
        || pin.bytes().any(|b| b.is_ascii_control() || b" ~^:?*[\\".contains(&b));
    if bad {
        return Err(format!("ref '{pin}' is not a commit id or a tag name"));
    }
    Ok(Pin::Tag(pin.to_string()))
}

/// `dir` as a relative path of plain names, or None.
fn relative_dir(dir: &str) -> Option<PathBuf> {
    if dir.chars().any(char::is_control) {
        return None;
    }
    let path = Path::new(dir.trim_end_matches('/'));
    let plain = path.components().all(|c| matches!(c, Component::Normal(n) if !n.is_empty()));
    (plain && path.components().count() > 0).then(|| path.to_path_buf())
}

/// One name that cannot leave its folder or hide among our partial files.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('/') && !name.chars().any(char::is_control)
}

fn env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The URL without its query string and fragment: a query may hold a token, as Civitai's
/// `?token=` does. For what is shown, use `shown_url`, which also drops credentials.
pub fn strip_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// A URL as it may be shown: without its query, its fragment and any `user:password@` before
/// the host (the manifest refuses those, but a URL printed by aria2c or git may still hold one).
pub fn shown_url(url: &str) -> String {
    let url = strip_query(url);
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let host = authority.rsplit('@').next().unwrap_or(authority);
    format!("{scheme}://{host}{path}")
}

/// The `user[:password]` of a `scheme://user[:password]@host/...` URL, when it has one.
fn userinfo(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority.rsplit_once('@').map(|(user, _)| user)
}

/// Whether an http:// URL names this machine by a loopback address (127.0.0.0/8, [::1],
/// localhost): a token sent there never crosses a network.
fn loopback(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else { return false };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn last_segment(url: &str) -> Option<String> {
    let path = strip_query(url);
    let after_host = path.split_once("://").map_or(path, |(_, rest)| rest);
    let (_, path) = after_host.split_once('/')?;
    path.rsplit('/').next().filter(|s| plain_name(s)).map(String::from)
}

/// `https://github.com/owner/Repo.git` -> `Repo`.
fn repo_name(git: &str) -> Option<String> {
    let last = git.trim_end_matches('/').rsplit(['/', ':']).next()?;
    let name = last.strip_suffix(".git").unwrap_or(last);
    plain_name(name).then(|| name.to_string())
}

/// Two entries for one destination would fight over it.
fn check_unique(manifest: &Manifest) -> Result<(), EntryError> {
    let mut seen = std::collections::HashMap::new();
    for m in &manifest.models {
        let dest = m.dir.join(&m.file);
        if let Some(first) = seen.insert(dest.clone(), m.line) {
            return Err((m.line, format!("models/{} is also given at line {first}: keep one", dest.display())));
        }
    }
    let mut seen = std::collections::HashMap::new();
    for n in &manifest.nodes {
        if let Some(first) = seen.insert(n.name.clone(), n.line) {
            return Err((
                n.line,
                format!("custom_nodes/{} is also given at line {first}: keep one (or set name)", n.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Manifest, ManifestError> {
        parse(Path::new("/config/provision.toml"), text)
    }

    fn error(text: &str) -> String {
        read(text).unwrap_err().to_string()
    }

    #[test]
    fn a_full_manifest_reads() {
        let m = read(
            r#"
[[model]]
url = "https://huggingface.co/org/repo/resolve/main/sd_xl.safetensors?download=true"
dir = "checkpoints"
sha256 = "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
auth_env = "HF_TOKEN"

[[model]]
url = "https://civitai.com/api/download/models/1234?token=x"
dir = "loras/sdxl"
file = "style.safetensors"

[[node]]
git = "https://github.com/owner/ComfyUI-Thing.git"
ref = "0123456789abcdef0123456789abcdef01234567"

[[node]]
git = "https://github.com/owner/other"
ref = "v1.2.0"
name = "Other"
requirements = false
"#,
        )
        .unwrap();
        assert_eq!(m.models.len(), 2);
        assert_eq!(m.models[0].file, "sd_xl.safetensors");
        assert_eq!(m.models[0].dir, PathBuf::from("checkpoints"));
        assert_eq!(
            m.models[0].sha256.as_deref(),
            Some("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
        );
        assert_eq!(m.models[0].auth_env.as_deref(), Some("HF_TOKEN"));
        assert_eq!(m.models[0].line, 2);
        assert_eq!(m.models[1].dir, PathBuf::from("loras/sdxl"));
        assert_eq!(m.nodes[0].name, "ComfyUI-Thing");
        assert_eq!(m.nodes[0].pin, Pin::Commit("0123456789abcdef0123456789abcdef01234567".into()));
        assert!(m.nodes[0].requirements);
        assert_eq!(m.nodes[1].pin, Pin::Tag("v1.2.0".into()));
        assert_eq!((m.nodes[1].name.as_str(), m.nodes[1].requirements), ("Other", false));
        assert_eq!(read("").unwrap(), Manifest::default());
    }

    #[test]
    fn paths_out_of_models_are_refused_with_their_line() {
        for dir in ["../../etc", "/etc", "checkpoints/../..", "", "./x"] {
            let e = error(&format!("[[model]]\nurl = \"https://h/x.bin\"\ndir = \"{dir}\"\n"));
            assert!(e.starts_with("/config/provision.toml:"), "{e}");
            assert!(e.contains("under models/") || e.contains("has no 'dir'"), "{dir}: {e}");
        }
        let e = error("[[model]]\nurl = \"https://h/x.bin\"\ndir = \"checkpoints\"\nfile = \"../x\"\n");
        assert!(e.starts_with("/config/provision.toml:4: file '../x'"), "{e}");
        let e = error("[[model]]\nurl = \"https://h/\"\ndir = \"c\"\n");
        assert!(e.contains("ends without a file name: give file"), "{e}");
        let e = error("[[node]]\ngit = \"https://h/x\"\nref = \"v1\"\nname = \"..\"\n");
        assert!(e.contains(":4: name '..'"), "{e}");
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        let e = error("[[model]]\nurl = \"https://h/x.bin\"\ndir = \"c\"\nsha265 = \"00\"\n");
        assert!(e.starts_with("/config/provision.toml:4: unknown key 'sha265' in [[model]]"), "{e}");
        let e = error("[[model]]\nurl = \"https://h/x.bin\"\ndir = \"c\"\nsha256 = \"abc\"\n");
        assert!(e.starts_with("/config/provision.toml:4: sha256 'abc' is not 64 hexadecimal digits"), "{e}");
        let e = error("\n\n[[node]]\ngit = \"https://h/x\"\n");
        assert!(e.starts_with("/config/provision.toml:3: [[node]] has no 'ref'"), "{e}");
        let e = error("[[node]]\ngit = \"https://h/x\"\nref = \"abc1234\"\n");
        assert!(e.contains(":3: ref 'abc1234' looks like a short commit id"), "{e}");
        let e = error("models:\n  - url: x\n");
        assert!(e.contains("not valid TOML") && e.contains("YAML"), "{e}");
        assert!(e.starts_with("/config/provision.toml:1"), "{e}");
        let e = error("[model]\nurl = \"x\"\n");
        assert!(e.contains("'model' must be written [[model]]"), "{e}");
        let e = error("[[models]]\nurl = \"x\"\n");
        assert!(e.contains(":1: unknown section [[models]]"), "{e}");
        let e = error("[[model]]\nurl = \"https://h/x.bin\\n header=X\"\ndir = \"c\"\n");
        assert!(e.contains(":2: url"), "{e}");
        let e = error("[[model]]\nurl = \"ftp://h/x.bin\"\ndir = \"c\"\n");
        assert!(e.contains(":2: url 'ftp://h/x.bin' is not an http"), "{e}");
        let e = error("[[model]]\nurl = \"https://h/x.bin?token=SECRET\"\ndir = \"c\"\nauth_env = \"1X\"\n");
        assert!(e.contains(":4: auth_env '1X'"), "{e}");
        let e = error("[[node]]\ngit = \"https://h/x\"\nref = \"v1\"\nrequirements = \"yes\"\n");
        assert!(e.contains(":4: requirements must be true or false"), "{e}");
    }

    #[test]
    fn a_url_query_never_reaches_a_message() {
        let e = error("[[model]]\nurl = \"https://h/d?token=SECRET\"\ndir = \"c\"\nfile = \"a/b\"\n");
        assert!(!e.contains("SECRET"), "{e}");
        let e = error("[[model]]\nurl = \"https://h/?token=SECRET\"\ndir = \"c\"\n");
        assert!(!e.contains("SECRET"), "{e}");
        assert_eq!(strip_query("https://h/a.bin?token=x#f"), "https://h/a.bin");
        assert_eq!(shown_url("https://h/a.bin?token=x#f"), "https://h/a.bin");
        assert_eq!(shown_url("https://u:SECRET@h:8080/a@b.bin?q"), "https://h:8080/a@b.bin");
        assert_eq!(shown_url("https://SECRET@h"), "https://h");
        assert_eq!(shown_url("git@github.com:o/r.git"), "git@github.com:o/r.git");
    }

    #[test]
    fn a_token_is_never_sent_in_clear_text_nor_taken_from_comfy_init_secrets() {
        let model = |url: &str, var: &str| {
            format!("[[model]]\nurl = \"{url}\"\ndir = \"c\"\nfile = \"x\"\nauth_env = \"{var}\"\n")
        };
        let e = error(&model("http://example.com/x.bin?token=SECRET", "HF_TOKEN"));
        assert!(e.starts_with("/config/provision.toml:5: auth_env 'HF_TOKEN' with the http:// url"), "{e}");
        assert!(e.contains("clear text") && e.contains("https://") && !e.contains("SECRET"), "{e}");
        for url in ["https://example.com/x", "http://127.0.0.1:8080/x", "http://[::1]/x", "http://localhost/x"] {
            assert!(read(&model(url, "HF_TOKEN")).is_ok(), "{url}");
        }
        assert!(error(&model("http://127.0.0.1.example.com/x", "HF_TOKEN")).contains("clear text"));
        for var in ["COMFYUI_BEARER_TOKEN", "COMFYUI_PASSWORD", "COMFY_INIT_API_KEYS"] {
            let e = error(&model("https://h/x", var));
            assert!(e.starts_with(&format!("/config/provision.toml:5: auth_env '{var}'")), "{e}");
            assert!(e.contains("comfy-init's own"), "{e}");
        }
        assert!(read(&model("https://h/x", "COMFY_TOKEN")).is_ok());
    }

    #[test]
    fn credentials_in_a_url_are_refused_without_being_shown() {
        let e = error("[[model]]\nurl = \"https://user:SECRET@h/x.bin\"\ndir = \"c\"\n");
        assert!(e.starts_with("/config/provision.toml:2: url 'https://h/x.bin' holds credentials"), "{e}");
        assert!(e.contains("auth_env") && !e.contains("SECRET"), "{e}");
        let e = error("[[model]]\nurl = \"https://SECRET@h/x.bin\"\ndir = \"c\"\n");
        assert!(e.contains("holds credentials") && !e.contains("SECRET"), "{e}");
        assert!(read("[[model]]\nurl = \"https://h/a@b.bin\"\ndir = \"c\"\n").is_ok());
        let e = error("[[node]]\ngit = \"https://x:ghp_SECRET@github.com/o/r\"\nref = \"v1\"\n");
        assert!(e.starts_with("/config/provision.toml:2: git 'https://github.com/o/r' holds credentials"), "{e}");
        assert!(e.contains("Private node repositories are not supported") && !e.contains("SECRET"), "{e}");
    }

    #[test]
    fn two_entries_for_one_place_are_refused() {
        let model = "[[model]]\nurl = \"https://h/x.bin\"\ndir = \"c\"\n";
        let e = error(&format!("{model}{model}"));
        assert!(e.contains(":4: models/c/x.bin is also given at line 1"), "{e}");
        let node = "[[node]]\ngit = \"https://h/x.git\"\nref = \"v1\"\n";
        let e = error(&format!("{node}{node}"));
        assert!(e.contains("custom_nodes/x is also given at line 1"), "{e}");
    }
}
