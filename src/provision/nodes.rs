//! Custom nodes checked out at their pin with git: cloned shallow where the server allows (a full
//! fetch where a commit cannot be fetched alone), left alone when already at the pin, moved to a
//! new pin only when the work tree holds no local change. A new clone is made under a hidden
//! name and renamed into `custom_nodes/` once checked out: ComfyUI never imports half a node.
//! A move is marked in the node's git folder (`comfy-init-moving`, the target commit) until its
//! checkout is done: a start after one cut off (`docker stop`, a crash) finishes it. git runs as
//! PUID, in PUID's own folder: no privilege is crossed, whatever a node's `.git/` holds. Hooks
//! and fsmonitor are off so that a checkout does the checkout and nothing else.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::manifest::{Node, Pin};

/// Written into a node's `.git/` once its requirements are installed for a commit: a start
/// after a failed `pip install` installs them again, a start after a good one does not.
const REQUIREMENTS_MARK: &str = "comfy-init-requirements";
/// Written into a node's git folder, holding the target commit, before a checkout that moves the
/// node; removed once it is done. Found at a start: that checkout was cut off, and is finished.
const MOVING_MARK: &str = "comfy-init-moving";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot run git ({0}): install it (apt-get install git) or drop the [[node]] entries")]
    NoGit(std::io::Error),
    #[error("node {name}: {}", what)]
    Refused { name: String, what: String },
    #[error("node {name} ({url}): git {step} failed: {output}")]
    Git { name: String, url: String, step: String, output: String },
    #[error("node {name}: cannot {op} {}: {source}", path.display())]
    Io { name: String, op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("node {name}: installing {} failed ({status}): fix it or set requirements = false", path.display())]
    Requirements { name: String, path: PathBuf, status: String },
}

/// What a node needs, seen without the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Clone,
    /// At the pin already; `requirements`: they still need installing.
    Keep {
        commit: String,
        requirements: bool,
    },
    /// At another commit (`to`: the pin's commit when known locally).
    Move {
        from: String,
        to: Option<String>,
    },
    /// A move to `to` was cut off: finish it (then see again what the node needs).
    Finish {
        to: String,
    },
}

impl Plan {
    pub fn describe(&self, node: &Node) -> String {
        let pin = match &node.pin {
            Pin::Commit(c) => short(c).to_string(),
            Pin::Tag(t) => format!("tag {t}"),
        };
        match self {
            Plan::Clone => format!("will clone {} at {pin}", shown_url(&node.git)),
            Plan::Keep { commit, requirements: false } => format!("at {}", short(commit)),
            Plan::Keep { commit, requirements: true } => format!("at {}, requirements to install", short(commit)),
            Plan::Finish { to } => format!("a move to {} was cut off: will finish it", short(to)),
            Plan::Move { from, to } => {
                format!(
                    "will move from {} to {}",
                    short(from),
                    to.as_deref().map_or(pin.clone(), |c| short(c).to_string())
                )
            }
        }
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// The repository's address without credentials or a query.
pub use super::manifest::shown_url;

/// What `node` needs, looking only at `custom_nodes/<name>`.
pub fn plan(custom_nodes: &Path, node: &Node) -> Result<Plan, NodeError> {
    let dir = custom_nodes.join(&node.name);
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Plan::Clone),
        Err(source) => return Err(NodeError::Io { name: node.name.clone(), op: "look at", path: dir, source }),
        Ok(m) if !m.is_dir() => return Err(refused(node, format!("{} is not a folder: remove it", dir.display()))),
        Ok(_) => {}
    }
    if !dir.join(".git").exists() {
        let what =
            format!("{} is there but is not a git checkout: remove it to let provisioning clone it", dir.display());
        return Err(refused(node, what));
    }
    let git_dir = git_dir(node, &dir)?;
    if let Some(to) = read_mark(&git_dir.join(MOVING_MARK)) {
        if !is_commit_id(&to) {
            let mark = git_dir.join(MOVING_MARK);
            return Err(refused(node, format!("{} holds no commit id: remove it", mark.display())));
        }
        return Ok(Plan::Finish { to });
    }
    let head = git(node, &dir, "rev-parse", &["rev-parse", "HEAD"])?;
    let want = match &node.pin {
        Pin::Commit(c) => Some(c.clone()),
        Pin::Tag(t) => {
            git(node, &dir, "rev-parse", &["rev-parse", "-q", "--verify", &format!("refs/tags/{t}^{{commit}}")]).ok()
        }
    };
    if want.as_deref() == Some(head.as_str()) {
        let requirements = wants_requirements(&dir, node)
            && read_mark(&git_dir.join(REQUIREMENTS_MARK)).as_deref() != Some(head.as_str());
        return Ok(Plan::Keep { commit: head, requirements });
    }
    Ok(Plan::Move { from: head, to: want })
}

/// Carries out `plan`; the node's commit.
pub fn apply(custom_nodes: &Path, node: &Node, plan: &Plan, python: &str) -> Result<String, NodeError> {
    let dir = custom_nodes.join(&node.name);
    let commit = match plan {
        Plan::Keep { commit, requirements: false } => return Ok(commit.clone()),
        Plan::Keep { commit, requirements: true } => commit.clone(),
        Plan::Clone => clone(custom_nodes, node)?,
        Plan::Finish { to } => {
            finish_move(node, &dir, to)?;
            println!("node {}: finished the move to {} that was cut off", node.name, short(to));
            let next = self::plan(custom_nodes, node)?;
            return apply(custom_nodes, node, &next, python);
        }
        Plan::Move { .. } => {
            let changes = git(node, &dir, "status", &["status", "--porcelain", "--untracked-files=no"])?;
            if !changes.is_empty() {
                let what = format!(
                    "{} has local changes (git status shows them): commit or stash them, or remove the [[node]] \
                     entry; nothing was changed",
                    dir.display()
                );
                return Err(refused(node, what));
            }
            let commit = fetch(node, &dir)?;
            let mark = git_dir(node, &dir)?.join(MOVING_MARK);
            write_mark(node, &mark, &commit)?;
            git(node, &dir, "checkout", &["checkout", "-q", "--detach", &commit])?;
            remove_mark(node, &mark)?;
            commit
        }
    };
    if wants_requirements(&dir, node) {
        install_requirements(node, &dir, python)?;
        write_mark(node, &git_dir(node, &dir)?.join(REQUIREMENTS_MARK), &commit)?;
    }
    Ok(commit)
}

/// The checkout that a cut-off move left half done, done again: the user made no edit (a move
/// starts only from a clean work tree), so what differs from `to` is ours. git's own lock, left
/// by the git that was killed, goes first.
fn finish_move(node: &Node, dir: &Path, to: &str) -> Result<(), NodeError> {
    let git_dir = git_dir(node, dir)?;
    let lock = git_dir.join("index.lock");
    if lock.exists() {
        std::fs::remove_file(&lock).map_err(|source| NodeError::Io {
            name: node.name.clone(),
            op: "remove the stale lock",
            path: lock.clone(),
            source,
        })?;
    }
    git(node, dir, "checkout", &["checkout", "-q", "-f", "--detach", to])?;
    remove_mark(node, &git_dir.join(MOVING_MARK))
}

/// The node's git folder, as git finds it (a `.git` that is a `gitdir:` file included).
fn git_dir(node: &Node, dir: &Path) -> Result<PathBuf, NodeError> {
    Ok(dir.join(git(node, dir, "rev-parse", &["rev-parse", "--git-dir"])?))
}

fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn write_mark(node: &Node, mark: &Path, commit: &str) -> Result<(), NodeError> {
    std::fs::write(mark, format!("{commit}\n")).map_err(|source| NodeError::Io {
        name: node.name.clone(),
        op: "write",
        path: mark.to_path_buf(),
        source,
    })
}

fn remove_mark(node: &Node, mark: &Path) -> Result<(), NodeError> {
    match std::fs::remove_file(mark) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(NodeError::Io { name: node.name.clone(), op: "remove", path: mark.to_path_buf(), source: e })
        }
        _ => Ok(()),
    }
}

fn refused(node: &Node, what: String) -> NodeError {
    NodeError::Refused { name: node.name.clone(), what }
}

fn wants_requirements(dir: &Path, node: &Node) -> bool {
    node.requirements && dir.join("requirements.txt").is_file()
}

/// A mark's commit, when the mark is there.
fn read_mark(path: &Path) -> Option<String> {
    let bytes = crate::fsutil::read_bounded(path, 256, crate::fsutil::Links::Refuse);
    bytes.ok().flatten().map(|b| String::from_utf8_lossy(&b).trim().to_string())
}

/// A fresh checkout under a hidden name, renamed into place once at the pin.
fn clone(custom_nodes: &Path, node: &Node) -> Result<String, NodeError> {
    let io = |op, path: &Path, source| NodeError::Io { name: node.name.clone(), op, path: path.to_path_buf(), source };
    std::fs::create_dir_all(custom_nodes).map_err(|e| io("create", custom_nodes, e))?;
    let tmp = custom_nodes.join(format!(".{}.comfy-init-clone", node.name));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io("remove the unfinished clone", &tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| io("create", &tmp, e))?;
    git(node, &tmp, "init", &["init", "-q"])?;
    git(node, &tmp, "remote add", &["remote", "add", "origin", &node.git])?;
    let commit = fetch(node, &tmp)?;
    git(node, &tmp, "checkout", &["checkout", "-q", "--detach", &commit])?;
    let dest = custom_nodes.join(&node.name);
    std::fs::rename(&tmp, &dest).map_err(|e| io("rename into place", &dest, e))?;
    Ok(commit)
}

/// Fetches the pin into `repo`, shallow first; the commit it names.
fn fetch(node: &Node, repo: &Path) -> Result<String, NodeError> {
    let url = node.git.as_str();
    match &node.pin {
        Pin::Commit(c) => {
            // Servers that refuse a commit that no branch or tag names alone get a full fetch.
            if git(node, repo, "fetch", &["fetch", "-q", "--depth", "1", url, c]).is_err() {
                let all = ["fetch", "-q", "--tags", url, "+refs/heads/*:refs/remotes/origin/*"];
                git(node, repo, "fetch", &all)?;
            }
            git(node, repo, "rev-parse", &["rev-parse", "-q", "--verify", &format!("{c}^{{commit}}")])
                .map_err(|_| refused(node, format!("commit {c} is not in {}: check the ref", shown_url(url))))
        }
        Pin::Tag(t) => {
            let refspec = format!("+refs/tags/{t}:refs/tags/{t}");
            git(node, repo, "fetch", &["fetch", "-q", "--depth", "1", url, &refspec]).map_err(|e| match e {
                NodeError::Git { output, .. } if output.contains("couldn't find remote ref") => refused(
                    node,
                    format!(
                        "{} has no tag '{t}' (a branch is not a pin): give a tag or a full commit id",
                        shown_url(url)
                    ),
                ),
                other => other,
            })?;
            git(node, repo, "rev-parse", &["rev-parse", "-q", "--verify", &format!("refs/tags/{t}^{{commit}}")])
        }
    }
}

/// `git ARGS` in `repo`: its trimmed stdout, or its output as the error.
fn git(node: &Node, repo: &Path, step: &str, args: &[&str]) -> Result<String, NodeError> {
    let out = Command::new("git")
        .args(["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "advice.detachedHead=false"])
        .args(args)
        .current_dir(repo)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(NodeError::NoGit)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let output = String::from_utf8_lossy(&out.stderr).trim().replace(&node.git, &shown_url(&node.git));
    Err(NodeError::Git { name: node.name.clone(), url: shown_url(&node.git), step: step.to_string(), output })
}

/// `python -m pip install -r requirements.txt`, as the pre-start hook for custom nodes does.
fn install_requirements(node: &Node, dir: &Path, python: &str) -> Result<(), NodeError> {
    let file = dir.join("requirements.txt");
    println!("node {}: installing {}", node.name, file.display());
    let status = Command::new(python)
        .args(["-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check", "-r"])
        .arg(&file)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| NodeError::Requirements { name: node.name.clone(), path: file.clone(), status: e.to_string() })?;
    if !status.success() {
        return Err(NodeError::Requirements { name: node.name.clone(), path: file, status: status.to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_credentials() {
        assert_eq!(shown_url("https://user:ghp_SECRET@github.com/o/r.git"), "https://github.com/o/r.git");
        assert_eq!(shown_url("https://github.com/o/r?x=1"), "https://github.com/o/r");
        assert_eq!(shown_url("file:///tmp/repo"), "file:///tmp/repo");
        assert_eq!(shown_url("git@github.com:o/r.git"), "git@github.com:o/r.git");
    }
}
