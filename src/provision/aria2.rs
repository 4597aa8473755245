//! One model downloaded by aria2c: resumed where a previous start left it (aria2c's control
//! file), with parallel connections, checked against the manifest's sha256 by aria2c itself,
//! synced and renamed to its final name only once aria2c reports it complete (and verified, when
//! the manifest gives a sha256), so ComfyUI never lists half a model. The partial file's name
//! holds a hash of the URL and the sha256: a changed source never resumes an old partial. aria2c takes its work on stdin (`--input-file=-`): the URL (its query may hold a token)
//! and the auth header never reach an argv, which anyone can read in /proc. Its output is read
//! line by line, its progress summaries turned into one line each, and every line is cleaned of
//! the token and of URL queries before it is shown.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::manifest::{shown_url, Model};

/// aria2c's exit code for a checksum that does not match.
const CHECKSUM_MISMATCH: i32 = 32;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("cannot run aria2c ({0}): install it (apt-get install aria2) or drop the [[model]] entries")]
    NoAria2(std::io::Error),
    #[error(
        "model {file} ({url}): the download does not match the manifest's sha256; it was deleted. Check the \
         sha256 (sha256sum of a good copy) or the url"
    )]
    Mismatch { file: String, url: String },
    #[error("model {file} ({url}): the download failed ({why}); what arrived is kept and resumed at the next start")]
    Failed { file: String, url: String, why: String },
    #[error("model {file}: cannot {op} {}: {source}", path.display())]
    Io { file: String, op: &'static str, path: PathBuf, source: std::io::Error },
}

/// Where a model's partial download lives: a hidden name beside the final one (ComfyUI lists
/// neither hidden files nor unknown extensions), `.FILE.KEY.part`, KEY being 8 hex digits of the
/// SHA-256 of the URL and the expected sha256, and aria2c's control file beside it.
pub fn partial_path(dest_dir: &Path, model: &Model) -> PathBuf {
    use sha2::{Digest, Sha256};
    let source = format!("{}\n{}", model.url, model.sha256.as_deref().unwrap_or(""));
    let key: String = Sha256::digest(source.as_bytes())[..4].iter().map(|b| format!("{b:02x}")).collect();
    dest_dir.join(format!(".{}.{key}.part", model.file))
}

pub fn control_path(partial: &Path) -> PathBuf {
    let mut name = partial.as_os_str().to_owned();
    name.push(".aria2");
    PathBuf::from(name)
}

/// The bytes a download would resume from: only a partial with aria2c's control file beside it
/// can be resumed (see `clear_partials`).
pub fn resumable(partial: &Path) -> Option<u64> {
    if !control_path(partial).is_file() {
        return None;
    }
    std::fs::metadata(partial).ok().map(|m| m.len()).filter(|&n| n > 0)
}

/// Whether `name` is one of the partial files of `file` (any key, or the older `.FILE.part`),
/// or the control file of one.
fn partial_of(name: &str, file: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|n| n.strip_prefix(file)) else { return false };
    let rest = rest.strip_suffix(".aria2").unwrap_or(rest);
    let Some(key) = rest.strip_suffix(".part") else { return false };
    key.is_empty() || key.strip_prefix('.').is_some_and(|k| k.len() == 8 && k.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Before aria2c runs: the partials of this model from another source are deleted (they can
/// never be resumed), and so is our partial when its control file is gone. aria2c would resume
/// such a file from its apparent size, but with `--split` it is written in several places at
/// once and holds holes: the result would be a wrong file.
fn clear_partials(model: &Model, dest_dir: &Path, partial: &Path) -> Result<(), DownloadError> {
    let io =
        |op, path: &Path, source| DownloadError::Io { file: model.file.clone(), op, path: path.to_path_buf(), source };
    let control = control_path(partial);
    let entries = std::fs::read_dir(dest_dir).map_err(|e| io("list", dest_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io("list", dest_dir, e))?;
        let path = entry.path();
        let ours = path == partial || path == control;
        if !ours && entry.file_name().to_str().is_some_and(|n| partial_of(n, &model.file)) {
            std::fs::remove_file(&path).map_err(|e| io("delete the stale partial download", &path, e))?;
        }
    }
    if partial.exists() && !control.exists() {
        println!(
            "{}: a partial download without aria2c's control file cannot be resumed: downloading from the start",
            model.file
        );
        std::fs::remove_file(partial).map_err(|e| io("delete", partial, e))?;
    }
    Ok(())
}

/// How a download is run.
pub struct Options<'a> {
    /// Where the download starts: the manifest's URL, or where its redirects end (`redirect`).
    pub url: &'a str,
    /// The Bearer token, already read from the model's `auth_env`, when it goes to `url`.
    pub token: Option<&'a str>,
    /// Seconds between two progress lines.
    pub progress_every: u32,
}

/// Downloads `model` into `dest_dir/<file>`. Ok: the file is there, complete, verified when the
/// manifest gives a sha256. A mismatch deletes what was downloaded; any other failure keeps it
/// for the next start to resume.
pub fn fetch(model: &Model, dest_dir: &Path, opts: &Options) -> Result<(), DownloadError> {
    let partial = partial_path(dest_dir, model);
    let url = shown_url(&model.url);
    let io =
        |op, path: &Path, source| DownloadError::Io { file: model.file.clone(), op, path: path.to_path_buf(), source };
    clear_partials(model, dest_dir, &partial)?;
    let outcome = run_aria2c(model, dest_dir, &partial, opts).map_err(DownloadError::NoAria2)?;
    match outcome {
        Ok(()) => {}
        Err(Some(CHECKSUM_MISMATCH)) => {
            let _ = std::fs::remove_file(control_path(&partial));
            std::fs::remove_file(&partial).map_err(|e| io("delete", &partial, e))?;
            return Err(DownloadError::Mismatch { file: model.file.clone(), url });
        }
        Err(code) => {
            let why = code.map_or_else(|| "aria2c was stopped by a signal".into(), describe_exit);
            return Err(DownloadError::Failed { file: model.file.clone(), url, why });
        }
    }
    // On disk before it has its name: a crash after the rename must not leave a named model
    // whose blocks never reached the disk.
    std::fs::File::open(&partial).and_then(|f| f.sync_all()).map_err(|e| io("sync", &partial, e))?;
    let dest = dest_dir.join(&model.file);
    std::fs::rename(&partial, &dest).map_err(|e| io("rename into place", &dest, e))?;
    let _ = std::fs::remove_file(control_path(&partial));
    crate::fsutil::open_dir(dest_dir).and_then(|d| d.sync_all()).map_err(|e| io("sync", dest_dir, e))
}

/// The input aria2c reads on stdin: the URL, then its options indented (aria2c's input-file
/// format). Nothing here is ever shown.
fn input(model: &Model, url: &str, dest_dir: &Path, partial: &Path, token: Option<&str>) -> String {
    let mut text = format!("{url}\n dir={}\n", dest_dir.display());
    let name = partial.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    text.push_str(&format!(" out={name}\n"));
    if let Some(sha) = &model.sha256 {
        text.push_str(&format!(" checksum=sha-256={sha}\n"));
    }
    if let Some(token) = token {
        text.push_str(&format!(" header=Authorization: Bearer {token}\n"));
    }
    text
}

/// Runs aria2c to its end. Err: it could not start; Ok(Err(code)): it failed with `code`
/// (None: killed by a signal).
fn run_aria2c(
    model: &Model,
    dest_dir: &Path,
    partial: &Path,
    opts: &Options,
) -> std::io::Result<Result<(), Option<i32>>> {
    let (read, write) = std::io::pipe()?;
    let mut child = {
        let mut cmd = Command::new("aria2c");
        cmd.args(arguments(opts.progress_every))
            .stdin(Stdio::piped())
            .stdout(Stdio::from(write.try_clone()?))
            .stderr(Stdio::from(write));
        cmd.spawn()?
        // `cmd` (and its copies of the pipe's write end) is dropped here: EOF comes when aria2c exits.
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means aria2c is gone already: its status says why.
        let _ = stdin.write_all(input(model, opts.url, dest_dir, partial, opts.token).as_bytes());
    }
    let clean = Cleaner { token: opts.token };
    for line in BufReader::new(read).split(b'\n').map_while(Result::ok) {
        let line = clean.line(&String::from_utf8_lossy(&line));
        if let Some(p) = parse_progress(&line) {
            println!("{}: {}", model.file, p.describe());
        } else if !is_noise(&line) {
            println!("{}: aria2c: {}", model.file, line.trim());
        }
    }
    let status = child.wait()?;
    Ok(if status.success() { Ok(()) } else { Err(status.code()) })
}

fn arguments(progress_every: u32) -> Vec<String> {
    let mut args: Vec<String> = [
        "--no-conf=true",
        "--input-file=-",
        "--continue=true",
        // A server that cannot resume: start again from zero instead of failing.
        "--always-resume=false",
        "--auto-file-renaming=false",
        // No preallocation. A resume needs the control file: with --split the file is written in
        // several places at once, so without it aria2c would trust the file's apparent size and
        // make a wrong file; `clear_partials` deletes a partial whose control file is gone.
        "--file-allocation=none",
        "--max-connection-per-server=4",
        "--split=4",
        "--min-split-size=20M",
        "--max-tries=3",
        "--retry-wait=2",
        "--connect-timeout=30",
        "--timeout=60",
        "--show-console-readout=false",
        "--console-log-level=warn",
        "--download-result=hide",
        "--enable-color=false",
        "--follow-torrent=false",
        "--follow-metalink=false",
    ]
    .map(String::from)
    .to_vec();
    args.push(format!("--summary-interval={progress_every}"));
    // curl's, where it followed the redirects (`redirect`): a server answers both alike.
    args.push(format!("--user-agent={}", super::redirect::USER_AGENT));
    // Should comfy-init be killed outright, aria2c stops too instead of downloading on alone.
    args.push(format!("--stop-with-process={}", std::process::id()));
    args
}

/// What aria2c's exit code means (its manual, "EXIT STATUS").
fn describe_exit(code: i32) -> String {
    let what = match code {
        1 => "an unknown error",
        2 => "a time-out",
        3 => "the file was not found (404)",
        6 => "a network problem",
        7 => "stopped before the end",
        9 => "not enough disk space",
        13 | 12 => "the file already exists",
        19 => "the name could not be resolved",
        22 => "the server's answer could not be read (401/403: check the token)",
        24 => "the server refused the authorization: check the token and auth_env",
        _ => "see the aria2c lines above",
    };
    format!("aria2c exit code {code}: {what}")
}

/// The token and URL queries, taken out of every line aria2c prints.
struct Cleaner<'a> {
    token: Option<&'a str>,
}

impl Cleaner<'_> {
    fn line(&self, line: &str) -> String {
        let mut line = line.to_string();
        if let Some(token) = self.token.filter(|t| !t.is_empty()) {
            line = line.replace(token, "***");
        }
        strip_queries(&line)
    }
}

/// Every URL in `line` (from `http` up to the next blank) as `shown_url` shows it: no query,
/// no credentials.
fn strip_queries(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find("http") {
        let (before, url_on) = rest.split_at(start);
        out.push_str(before);
        let end = url_on.find(char::is_whitespace).unwrap_or(url_on.len());
        out.push_str(&shown_url(&url_on[..end]));
        rest = &url_on[end..];
    }
    out.push_str(rest);
    out
}

/// The frames and hints around aria2c's summaries: not worth a log line each.
fn is_noise(line: &str) -> bool {
    let line = line.trim();
    line.is_empty()
        || line.starts_with("***")
        || line.starts_with("===")
        || line.starts_with("---")
        || line.starts_with("FILE:")
        || line.starts_with("aria2 will resume")
        || line.starts_with("If there are any errors")
}

/// One progress summary: `[#7cf4c2 480KiB/2.8MiB(16%) CN:1 DL:485KiB ETA:5s]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Progress {
    pub done: String,
    pub total: String,
    pub percent: Option<String>,
    pub rate: Option<String>,
    pub eta: Option<String>,
}

impl Progress {
    fn describe(&self) -> String {
        let mut s = format!("{} of {}", self.done, self.total);
        if let Some(p) = &self.percent {
            s.push_str(&format!(" ({p})"));
        }
        if let Some(r) = &self.rate {
            s.push_str(&format!(", {r}/s"));
        }
        if let Some(e) = &self.eta {
            s.push_str(&format!(", {e} left"));
        }
        s
    }
}

pub fn parse_progress(line: &str) -> Option<Progress> {
    let inner = line.trim().strip_prefix("[#")?.strip_suffix(']')?;
    let mut words = inner.split_whitespace();
    let _gid = words.next()?;
    let amounts = words.next()?;
    let (amounts, percent) = match amounts.split_once('(') {
        Some((a, p)) => (a, Some(p.trim_end_matches(')').to_string())),
        None => (amounts, None),
    };
    let (done, total) = amounts.split_once('/')?;
    let (mut rate, mut eta) = (None, None);
    for word in words {
        if let Some(r) = word.strip_prefix("DL:") {
            rate = Some(r.to_string());
        } else if let Some(e) = word.strip_prefix("ETA:") {
            eta = Some(e.to_string());
        }
    }
    Some(Progress { done: done.into(), total: total.into(), percent, rate, eta })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_summaries_become_one_line() {
        let p = parse_progress("[#7cf4c2 480KiB/2.8MiB(16%) CN:1 DL:485KiB ETA:5s]").unwrap();
        assert_eq!(p.describe(), "480KiB of 2.8MiB (16%), 485KiB/s, 5s left");
        let p = parse_progress("[#2089b0 0B/0B CN:1 DL:0B]").unwrap();
        assert_eq!(p.describe(), "0B of 0B, 0B/s");
        assert_eq!(parse_progress("FILE: /x/.a.part"), None);
        assert_eq!(parse_progress("[#abc]"), None);
        assert_eq!(parse_progress(""), None);
    }

    #[test]
    fn no_line_shown_holds_the_token_or_a_query() {
        let clean = Cleaner { token: Some("hf_SECRET") };
        let line = "Exception: errorCode=24 URI=https://h.co/a.bin?token=abc Authorization: Bearer hf_SECRET end";
        let shown = clean.line(line);
        assert_eq!(shown, "Exception: errorCode=24 URI=https://h.co/a.bin Authorization: Bearer *** end");
        assert_eq!(strip_queries("http://a/b?x http://c/d?y"), "http://a/b http://c/d");
        assert_eq!(strip_queries("no url here"), "no url here");
    }

    #[test]
    fn the_token_and_the_url_go_on_stdin_not_on_the_command_line() {
        let model = Model {
            url: "https://h/x.bin?token=q".into(),
            dir: "checkpoints".into(),
            file: "x.bin".into(),
            sha256: Some("ab".repeat(32)),
            auth_env: Some("HF_TOKEN".into()),
            line: 1,
        };
        let dest = Path::new("/m/checkpoints");
        let partial = partial_path(dest, &model);
        let name = partial.file_name().unwrap().to_str().unwrap().to_string();
        let text = input(&model, &model.url, dest, &partial, Some("hf_SECRET"));
        assert_eq!(
            text,
            format!(
                "https://h/x.bin?token=q\n dir=/m/checkpoints\n out={name}\n checksum=sha-256={}\n header=Authorization: \
                 Bearer hf_SECRET\n",
                "ab".repeat(32)
            )
        );
        let args = arguments(10).join(" ");
        assert!(!args.contains("hf_SECRET") && !args.contains("h/x.bin"), "{args}");
        assert!(args.contains("--input-file=-") && args.contains("--summary-interval=10"), "{args}");
    }

    #[test]
    fn a_partial_is_named_by_its_source_and_others_are_recognised() {
        let model = Model {
            url: "https://h/x.bin".into(),
            dir: "c".into(),
            file: "x.bin".into(),
            sha256: None,
            auth_env: None,
            line: 1,
        };
        let dest = Path::new("/m/c");
        let name = |m: &Model| partial_path(dest, m).file_name().unwrap().to_str().unwrap().to_string();
        let first = name(&model);
        assert!(first.starts_with(".x.bin.") && first.ends_with(".part") && first.len() == ".x.bin.".len() + 13);
        assert_eq!(name(&model), first, "not stable");
        assert_ne!(name(&Model { url: "https://h/y/x.bin".into(), ..model.clone() }), first);
        assert_ne!(name(&Model { sha256: Some("ab".repeat(32)), ..model.clone() }), first);
        for n in [first.as_str(), ".x.bin.part", ".x.bin.0123abcd.part.aria2", ".x.bin.part.aria2"] {
            assert!(partial_of(n, "x.bin"), "{n}");
        }
        for n in ["x.bin", ".x.bin", ".x.bin.0123abcd.part.tmp", ".x.bin.y.0123abcd.part", ".x.binz.part", ".y.part"] {
            assert!(!partial_of(n, "x.bin"), "{n}");
        }
    }
}
