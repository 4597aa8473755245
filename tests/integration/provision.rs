//! Provisioning (issue 27): the image's hook `docker/pre-start.d/20-provision` runs
//! `comfy-init provision` under comfy-init as PID 1, against a loopback HTTP server
//! (tests/fixtures/range_server.py: ranges, a slow route, a failing one, one that wants a token)
//! and a local git repository. Every request the server answers is in its log, so "fetches
//! nothing" is counted, not assumed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

const LONG: Duration = Duration::from_secs(60);
const TOKEN: &str = "hf_SeCrEt_TOKEN_4711";

/// aria2c, curl (which follows a tokened download's redirects) and git are what provisioning
/// runs: without them the test is skipped, saying why (unless CI makes it mandatory).
fn tools_present(test: &str) -> bool {
    let missing: Vec<&str> = ["aria2c", "curl", "git"]
        .into_iter()
        .filter(|t| !Command::new(t).arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let reason = format!("{} not installed (apt-get install aria2 curl git)", missing.join(" and "));
    if mandatory() {
        panic!("{test}: {reason}, and COMFY_INIT_TESTS_MANDATORY=1");
    }
    eprintln!("SKIPPED {test}: {reason}");
    false
}

macro_rules! provision_test {
    ($name:literal) => {
        root_only!($name);
        if !tools_present($name) {
            return;
        }
    };
}

/// The loopback file server, killed on drop.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl Server {
    /// Serves `files` (name, content) at `rate` bytes/s on its /slow/ route.
    fn start(files: &[(&str, &[u8])], rate: u32) -> Server {
        let dir = TempDir::new("range-server");
        fs::create_dir_all(dir.join("root")).unwrap();
        for (name, content) in files {
            fs::write(dir.join("root").join(name), content).unwrap();
        }
        let (port_file, log) = (dir.join("port"), dir.join("requests.log"));
        fs::write(&log, "").unwrap();
        let child = Command::new("python3")
            .arg(fixtures().join("range_server.py"))
            .args([dir.join("root"), port_file.clone(), log.clone()])
            .env("RANGE_SERVER_RATE", rate.to_string())
            .env("RANGE_SERVER_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .spawn()
            .expect("python3 for the range server");
        assert!(wait_until(Duration::from_secs(10), &mut || port_file.exists()), "range server did not start");
        let port = fs::read_to_string(&port_file).unwrap().trim().parse().unwrap();
        Server { child, port, log, _dir: dir }
    }

    fn url(&self, route: &str, name: &str) -> String {
        format!("http://127.0.0.1:{}/{route}/{name}", self.port)
    }

    /// The requests answered so far, one JSON object each.
    fn requests(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A git repository with two commits, tagged v1 and v2; (its folder, commit 1, commit 2).
fn node_repo() -> (TempDir, String, String) {
    let dir = TempDir::new("node-repo");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    fs::write(dir.join("__init__.py"), "NODE_CLASS_MAPPINGS = {}\n").unwrap();
    fs::write(dir.join("requirements.txt"), "some-package==1.0\n").unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "one"]);
    git(&["tag", "v1"]);
    let one = git(&["rev-parse", "HEAD"]);
    fs::write(dir.join("__init__.py"), "NODE_CLASS_MAPPINGS = {'two': 2}\n").unwrap();
    git(&["commit", "-q", "-am", "two"]);
    git(&["tag", "v2"]);
    let two = git(&["rev-parse", "HEAD"]);
    (dir, one, two)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ n as u64;
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    bytes
}

/// A workspace whose pre-start folder holds the image's real 20-provision hook, with comfy-init
/// on PATH (the hook execs it), the manifest at `provision.toml`, and a fake Python that
/// records the pip command lines it is given.
struct Setup {
    ws: Workspace,
    manifest: PathBuf,
    pip_log: PathBuf,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let ws = Workspace::new(tag);
        let hooks = ws.dir.join("hooks");
        let bin_dir = ws.dir.join("bin");
        fs::create_dir_all(&hooks).unwrap();
        fs::create_dir_all(&bin_dir).unwrap();
        let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/pre-start.d/20-provision");
        fs::copy(&hook, hooks.join("20-provision")).unwrap();
        std::os::unix::fs::symlink(bin(), bin_dir.join("comfy-init")).unwrap();
        let pip_log = ws.dir.join("pip.log");
        let python = bin_dir.join("fake-python");
        write(&python, &format!("#!/bin/sh\necho \"$@\" >> {}\n", pip_log.display()));
        fs::set_permissions(&python, fs::Permissions::from_mode(0o755)).unwrap();
        let manifest = ws.dir.join("provision.toml");
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
        let ws = ws
            .set("COMFY_INIT_PRE_START", &hooks)
            .set("COMFY_INIT_PROVISION", &manifest)
            .set("COMFY_INIT_AUTH", "off")
            .set("COMFY_INIT_RESTART", "never")
            .set("COMFYUI_PYTHON", &python)
            .set("PATH", path);
        Setup { ws, manifest, pip_log }
    }

    fn models(&self) -> PathBuf {
        self.ws.comfyui().join("models")
    }

    /// comfy-init as PID 1 with `run -- true`: the hooks, then a command that exits at once.
    fn launch(&self) -> Launch {
        let mut launch = self.ws.launch();
        launch.args = ["run", "--", "true"].map(String::from).to_vec();
        launch
    }

    fn start_once(&self) -> (i32, String, String) {
        self.launch().output(LONG)
    }

    fn head(&self, node: &str) -> String {
        let out = Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(self.ws.comfyui().join("custom_nodes").join(node))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn model(url: &str, file: &str, sha: Option<&str>, auth_env: Option<&str>) -> String {
    let mut s = format!("[[model]]\nurl = \"{url}\"\ndir = \"checkpoints\"\nfile = \"{file}\"\n");
    if let Some(sha) = sha {
        s.push_str(&format!("sha256 = \"{sha}\"\n"));
    }
    if let Some(var) = auth_env {
        s.push_str(&format!("auth_env = \"{var}\"\n"));
    }
    s + "\n"
}

fn node(repo: &Path, pin: &str) -> String {
    format!("[[node]]\ngit = \"file://{}\"\nref = \"{pin}\"\nname = \"TestNode\"\n\n", repo.display())
}

/// The seconds `comfy-init provision` says it took: "provisioned: ... in 0.01 s".
fn provision_seconds(out: &str) -> f64 {
    let line = out.lines().rev().find(|l| l.contains("provisioned:")).unwrap_or_else(|| panic!("no summary:\n{out}"));
    line.rsplit(" in ").next().unwrap().trim_end_matches(" s").parse().unwrap()
}

#[test]
fn first_start_downloads_and_verifies_second_start_fetches_nothing() {
    provision_test!("first_start_downloads_and_verifies_second_start_fetches_nothing");
    let (a, b) = (random_bytes(1_500_000), random_bytes(300_000));
    let server = Server::start(&[("a.safetensors", &a), ("b.safetensors", &b)], 1 << 30);
    let (repo, one, _) = node_repo();
    let s = Setup::new("provision-first").set_token();
    let text = model(&server.url("files", "a.safetensors"), "a.safetensors", Some(&sha256(&a)), None)
        + &model(
            &format!("{}?token=QUERYSECRET", server.url("auth", "b.safetensors")),
            "b.safetensors",
            Some(&sha256(&b)),
            Some("TEST_HF_TOKEN"),
        )
        + &node(repo.path(), &one);
    write(&s.manifest, &text);

    let (code, out, err) = s.start_once();
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(fs::read(s.models().join("checkpoints/a.safetensors")).unwrap(), a);
    assert_eq!(fs::read(s.models().join("checkpoints/b.safetensors")).unwrap(), b);
    assert!(out.contains("[pre-start 20-provision] models/checkpoints/a.safetensors: downloaded"), "{out}");
    assert_eq!(s.head("TestNode"), one, "the node is not at its pinned commit");
    let pip = fs::read_to_string(&s.pip_log).unwrap();
    assert!(
        pip.contains("-m pip install --no-cache-dir --disable-pip-version-check -r")
            && pip.contains("TestNode/requirements.txt"),
        "{pip}"
    );
    // The server logs a request once its answer is sent, a moment after aria2c has it all: wait
    // for both bodies before counting what the first start asked for.
    let sent = |path: &str| -> u64 {
        server.requests().iter().filter(|r| r["path"] == path).map(|r| r["bytes"].as_u64().unwrap_or(0)).sum()
    };
    let all_sent = wait_until(Duration::from_secs(5), &mut || {
        sent("/files/a.safetensors") >= a.len() as u64 && sent("/auth/b.safetensors") >= b.len() as u64
    });
    let requests = server.requests();
    assert!(all_sent, "{requests:?}");
    assert!(requests.iter().any(|r| r["path"] == "/auth/b.safetensors" && r["auth_ok"] == true), "{requests:?}");
    for secret in [TOKEN, "QUERYSECRET"] {
        assert!(!out.contains(secret) && !err.contains(secret), "{secret} in the log:\n{out}\n{err}");
    }
    let first = provision_seconds(&out);

    let (code, out, err) = s.start_once();
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(server.requests().len(), requests.len(), "the second start fetched: {:?}", server.requests());
    assert!(out.contains("models/checkpoints/a.safetensors: present, verified (cache)"), "{out}");
    assert!(out.contains(&format!("node TestNode: at {}", &one[..12])), "{out}");
    assert_eq!(fs::read_to_string(&s.pip_log).unwrap(), pip, "requirements installed again");
    let second = provision_seconds(&out);
    eprintln!("provisioning: first start {first:.2} s, second start {second:.2} s, 0 requests");
    assert!(second < 1.0, "second start took {second} s");
}

impl Setup {
    fn set_token(mut self) -> Setup {
        self.ws = self.ws.set("TEST_HF_TOKEN", TOKEN);
        self
    }
}

#[test]
fn the_token_goes_to_the_manifests_host_only_never_where_a_redirect_leads() {
    // Hugging Face and Civitai send a download on to their storage (a signed URL on another
    // host); aria2c alone would send the token there too.
    provision_test!("the_token_goes_to_the_manifests_host_only_never_where_a_redirect_leads");
    let (a, b) = (random_bytes(600_000), random_bytes(300_000));
    let server = Server::start(&[("a.safetensors", &a), ("b.safetensors", &b)], 1 << 30);
    let s = Setup::new("provision-redirect").set_token();
    let text = model(&server.url("away", "a.safetensors"), "a.safetensors", Some(&sha256(&a)), Some("TEST_HF_TOKEN"))
        + &model(&server.url("hop", "b.safetensors"), "b.safetensors", Some(&sha256(&b)), Some("TEST_HF_TOKEN"));
    write(&s.manifest, &text);
    let (code, out, err) = s.start_once();
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(fs::read(s.models().join("checkpoints/a.safetensors")).unwrap(), a);
    assert_eq!(fs::read(s.models().join("checkpoints/b.safetensors")).unwrap(), b);
    // aria2c's request is logged once its body is sent, a moment after aria2c has it all.
    let body_sent = || {
        let requests = server.requests();
        let elsewhere = requests.iter().filter(|r| r["host"] == "127.0.0.2");
        elsewhere.map(|r| r["bytes"].as_u64().unwrap_or(0)).sum::<u64>() >= a.len() as u64
    };
    assert!(wait_until(Duration::from_secs(5), &mut || body_sent()), "{:?}", server.requests());
    let requests = server.requests();
    let elsewhere: Vec<_> = requests.iter().filter(|r| r["host"] == "127.0.0.2").collect();
    assert!(elsewhere.iter().any(|r| r["path"] == "/files/a.safetensors" && r["status"] == 206), "{requests:?}");
    assert!(elsewhere.iter().all(|r| r["auth_sent"] == false), "the token reached the other host: {requests:?}");
    // A redirect on the manifest's own host keeps the token (its /auth/ route wants it).
    assert!(requests.iter().any(|r| r["path"] == "/auth/b.safetensors" && r["auth_ok"] == true), "{requests:?}");
    let said = format!(
        "models/checkpoints/a.safetensors: the server sends the download on to http://127.0.0.2:{}/files/a.safetensors \
         (another host): the token goes to the manifest's host only",
        server.port
    );
    assert!(out.contains(&said), "{out}");
    for secret in [TOKEN, "SIGNED"] {
        assert!(!out.contains(secret) && !err.contains(secret), "{secret} in the log:\n{out}\n{err}");
    }

    // A wrong token: refused where it was given, and nothing goes on anywhere.
    fs::remove_file(s.models().join("checkpoints/a.safetensors")).unwrap();
    let before = server.requests().len();
    let s = Setup { ws: s.ws.set("TEST_HF_TOKEN", "hf_wrong"), ..s };
    let (code, out, _) = s.start_once();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("model a.safetensors (http://127.0.0.1:") && out.contains("HTTP 401"), "{out}");
    let after = server.requests();
    assert!(after[before..].iter().all(|r| r["host"] == "127.0.0.1" && r["status"] == 401), "{after:?}");
}

#[test]
fn a_wrong_hash_fails_naming_the_model_and_leaves_no_file() {
    provision_test!("a_wrong_hash_fails_naming_the_model_and_leaves_no_file");
    let a = random_bytes(200_000);
    let server = Server::start(&[("a.safetensors", &a)], 1 << 30);
    let s = Setup::new("provision-hash");
    write(&s.manifest, &model(&server.url("files", "a.safetensors"), "a.safetensors", Some(&"0".repeat(64)), None));
    let (code, out, err) = s.start_once();
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("model a.safetensors (http://127.0.0.1:"), "{out}");
    assert!(out.contains("does not match the manifest's sha256; it was deleted"), "{out}");
    assert!(err.contains("pre-start hook 20-provision failed (exit code 1): ComfyUI not started"), "{err}");
    let left: Vec<_> = fs::read_dir(s.models().join("checkpoints")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_failing_server_or_a_missing_token_fails_naming_the_model() {
    provision_test!("a_failing_server_or_a_missing_token_fails_naming_the_model");
    let a = random_bytes(400_000);
    let server = Server::start(&[("a.safetensors", &a)], 1 << 30);
    let s = Setup::new("provision-fail");
    write(&s.manifest, &model(&server.url("error", "a.safetensors"), "a.safetensors", Some(&sha256(&a)), None));
    let (code, out, err) = s.start_once();
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("model a.safetensors (http://127.0.0.1:") && out.contains("the download failed"), "{out}");
    assert!(!s.models().join("checkpoints/a.safetensors").exists());

    // The connection dropped in the middle of the body: what arrived is kept for the next start.
    write(&s.manifest, &model(&server.url("fail", "a.safetensors"), "a.safetensors", Some(&sha256(&a)), None));
    let (code, out, err) = s.start_once();
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(!s.models().join("checkpoints/a.safetensors").exists(), "an unverified file was renamed into place");

    // auth_env names a variable that is not set: said, with the variable, before any request.
    let before = server.requests().len();
    write(&s.manifest, &model(&server.url("auth", "a.safetensors"), "a.safetensors", None, Some("TEST_HF_TOKEN")));
    let (code, out, _) = s.start_once();
    assert_eq!(code, 78, "{out}");
    assert!(out.contains("model a.safetensors: auth_env TEST_HF_TOKEN is not set"), "{out}");
    assert_eq!(server.requests().len(), before);

    // A bad manifest names the file and the line.
    write(&s.manifest, "[[model]]\nurl = \"http://h/x.bin\"\ndir = \"../../etc\"\n");
    let (code, out, _) = s.start_once();
    assert_eq!(code, 78, "{out}");
    assert!(out.contains(&format!("{}:3: dir '../../etc'", s.manifest.display())), "{out}");
}

#[test]
fn a_stop_during_a_download_ends_within_the_grace_and_the_next_start_resumes() {
    provision_test!("a_stop_during_a_download_ends_within_the_grace_and_the_next_start_resumes");
    let a = random_bytes(3_000_000);
    let server = Server::start(&[("a.safetensors", &a)], 1_000_000);
    let s = Setup::new("provision-resume");
    let s = Setup { ws: s.ws.set("COMFY_INIT_STOP_TIMEOUT", "3s").set("COMFY_INIT_PROVISION_PROGRESS", "1s"), ..s };
    write(&s.manifest, &model(&server.url("slow", "a.safetensors"), "a.safetensors", Some(&sha256(&a)), None));
    let checkpoints = s.models().join("checkpoints");
    let mut init = s.launch().start();
    let size = || partial_in(&checkpoints, "a.safetensors").and_then(|p| fs::metadata(p).ok()).map_or(0, |m| m.len());
    assert!(init.until(Duration::from_secs(20), || size() > 500_000), "no download under way: {}", init.stdout());
    let asked = Instant::now();
    init.signal(libc::SIGTERM);
    let code = init.wait(Duration::from_secs(4));
    let took = asked.elapsed();
    assert!(code.is_some(), "not stopped within the grace + 1 s:\n{}\n{}", init.stdout(), init.stderr());
    eprintln!("stopped {took:?} after SIGTERM, exit {code:?}, {} bytes kept", size());
    assert!(size() > 0, "the partial download was not kept");
    assert!(!s.models().join("checkpoints/a.safetensors").exists(), "an unverified file was renamed into place");
    let first = server.requests().len();
    let check = comfy_init(&["provision", "--check"], s.ws.env(), LONG);
    assert!(check.stdout.contains(", resuming at "), "{}", check.stdout);

    let (code, out, err) = s.start_once();
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(fs::read(s.models().join("checkpoints/a.safetensors")).unwrap(), a);
    let ranged = || {
        server.requests()[first..].iter().any(|r| {
            r["range"]
                .as_str()
                .and_then(|r| r.strip_prefix("bytes=")?.split('-').next()?.parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    };
    // The server logs a request once its answer is sent, which may be a moment after aria2c has
    // what it needs (and the first start's cut request is logged late too).
    let resumed = wait_until(Duration::from_secs(5), &mut || ranged());
    assert!(resumed, "no ranged request in the second start: {:?}", &server.requests()[first..]);
    assert!(out.contains("a.safetensors: ") && out.contains(" of "), "no progress line:\n{out}");
}

#[test]
fn a_pinned_node_moves_to_a_new_pin_and_local_changes_are_never_lost() {
    provision_test!("a_pinned_node_moves_to_a_new_pin_and_local_changes_are_never_lost");
    let (repo, one, two) = node_repo();
    let s = Setup::new("provision-node");
    write(&s.manifest, &node(repo.path(), "v1"));
    let (code, out, err) = s.start_once();
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(s.head("TestNode"), one);

    write(&s.manifest, &node(repo.path(), &two));
    let check = comfy_init(&["provision", "--check"], s.ws.env(), LONG);
    assert_eq!(check.code, Some(0), "{}", check.all());
    assert!(check.stdout.contains(&format!("will move from {} to {}", &one[..12], &two[..12])), "{}", check.stdout);
    let (code, out, err) = s.start_once();
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(s.head("TestNode"), two);

    // A user's edit in the node: moving it elsewhere is refused, the edit stays.
    let init_py = s.ws.comfyui().join("custom_nodes/TestNode/__init__.py");
    write(&init_py, "# my local fix\n");
    write(&s.manifest, &node(repo.path(), "v1"));
    let (code, out, _) = s.start_once();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("node TestNode:") && out.contains("has local changes"), "{out}");
    assert_eq!(fs::read_to_string(&init_py).unwrap(), "# my local fix\n");
}

#[test]
fn check_says_what_would_be_done_without_the_network() {
    provision_test!("check_says_what_would_be_done_without_the_network");
    let a = random_bytes(100_000);
    let server = Server::start(&[("a.safetensors", &a)], 1 << 30);
    let (repo, one, _) = node_repo();
    let s = Setup::new("provision-check");
    write(
        &s.manifest,
        &(model(&server.url("files", "a.safetensors"), "a.safetensors", Some(&sha256(&a)), None)
            + &node(repo.path(), &one)),
    );
    let out = comfy_init(&["provision", "--check"], s.ws.env(), LONG);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(
        out.stdout.contains("models/checkpoints/a.safetensors: will download from http://127.0.0.1:"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("node TestNode: will clone file://"), "{}", out.stdout);
    assert!(server.requests().is_empty(), "--check used the network");
    assert!(!s.ws.comfyui().join("custom_nodes/TestNode").exists());

    // Without a manifest the hook says so and the start goes on.
    fs::remove_file(&s.manifest).unwrap();
    let (code, out, err) = s.start_once();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("[pre-start 20-provision] no provisioning manifest at"), "{out}");
}

#[test]
fn a_model_rewritten_in_place_with_its_mtime_put_back_is_hashed_and_downloaded_again() {
    provision_test!("a_model_rewritten_in_place_with_its_mtime_put_back_is_hashed_and_downloaded_again");
    let a = random_bytes(400_000);
    let server = Server::start(&[("a.safetensors", &a)], 1 << 30);
    let s = Setup::new("provision-inplace");
    write(&s.manifest, &model(&server.url("files", "a.safetensors"), "a.safetensors", Some(&sha256(&a)), None));
    let (code, out, err) = s.start_once();
    assert_eq!(code, 0, "{out}\n{err}");
    let path = s.models().join("checkpoints/a.safetensors");
    let before = fs::metadata(&path).unwrap();
    let first = server.requests().len();

    // Same size, same inode, the old mtime put back (`touch -r`): only the ctime moved.
    std::thread::sleep(Duration::from_millis(20));
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(1000)).unwrap();
        file.write_all(&[0u8; 4096]).unwrap();
    }
    filetime_back(&path, &before);
    let after = fs::metadata(&path).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (after.len(), after.ino(), after.mtime(), after.mtime_nsec()),
        (before.len(), before.ino(), before.mtime(), before.mtime_nsec())
    );

    let (code, out, err) = s.start_once();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("models/checkpoints/a.safetensors: present but its sha256 is not the manifest's: downloading"),
        "the rewritten file was not hashed again:\n{out}"
    );
    assert_eq!(fs::read(&path).unwrap(), a, "the manifest's file was not put back");
    let downloaded = wait_until(Duration::from_secs(5), &mut || server.requests().len() > first);
    assert!(downloaded, "nothing downloaded: {:?}", server.requests());
}

/// Puts `path`'s mtime back to the one in `before`, as `touch -r` does.
fn filetime_back(path: &Path, before: &fs::Metadata) {
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_modified(before.modified().unwrap()).unwrap();
}

/// The partial download of `file` in `dir` (`.FILE.KEY.part`), when there is one.
fn partial_in(dir: &Path, file: &str) -> Option<PathBuf> {
    let prefix = format!(".{file}.");
    fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        name.starts_with(&prefix) && name.ends_with(".part")
    })
}

#[test]
fn a_partial_without_its_control_file_or_from_another_url_is_never_resumed() {
    provision_test!("a_partial_without_its_control_file_or_from_another_url_is_never_resumed");
    let a = random_bytes(3_000_000);
    let server = Server::start(&[("a.safetensors", &a)], 1_000_000);
    let s = Setup::new("provision-partial");
    let s = Setup { ws: s.ws.set("COMFY_INIT_STOP_TIMEOUT", "3s"), ..s };
    let checkpoints = s.models().join("checkpoints");
    // A download cut off by a stop: its partial and control file are kept.
    write(&s.manifest, &model(&server.url("slow", "a.safetensors"), "a.safetensors", Some(&sha256(&a)), None));
    let mut init = s.launch().start();
    let size = || partial_in(&checkpoints, "a.safetensors").and_then(|p| fs::metadata(p).ok()).map_or(0, |m| m.len());
    assert!(init.until(Duration::from_secs(20), || size() > 500_000), "no download under way: {}", init.stdout());
    init.signal(libc::SIGTERM);
    assert!(init.wait(Duration::from_secs(4)).is_some(), "not stopped");
    let partial = partial_in(&checkpoints, "a.safetensors").unwrap();
    let mut control = partial.clone().into_os_string();
    control.push(".aria2");
    assert!(Path::new(&control).exists(), "no control file beside {}", partial.display());

    // Its control file lost: --check does not promise a resume, and the start downloads from 0.
    fs::remove_file(&control).unwrap();
    let check = comfy_init(&["provision", "--check"], s.ws.env(), LONG);
    assert_eq!(check.code, Some(0), "{}", check.all());
    assert!(!check.stdout.contains("resuming"), "{}", check.stdout);
    let first = server.requests().len();
    write(&s.manifest, &model(&server.url("files", "a.safetensors"), "a.safetensors", Some(&sha256(&a)), None));
    // Another URL: another partial name, so nothing to resume either.
    let check = comfy_init(&["provision", "--check"], s.ws.env(), LONG);
    assert!(!check.stdout.contains("resuming"), "{}", check.stdout);
    write(&s.manifest, &model(&server.url("slow", "a.safetensors"), "a.safetensors", Some(&sha256(&a)), None));
    let (code, out, err) = s.start_once();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("a partial download without aria2c's control file cannot be resumed"), "{out}");
    assert_eq!(fs::read(checkpoints.join("a.safetensors")).unwrap(), a);
    // The slow route logs its request a moment after its last byte (the throttle's last sleep).
    let downloaded = wait_until(Duration::from_secs(5), &mut || server.requests().len() > first);
    assert!(downloaded, "nothing downloaded: {:?}", server.requests());
    let left: Vec<_> = fs::read_dir(&checkpoints).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("a.safetensors")]);

    // A partial of another URL (its name has another key), control file and all: deleted.
    let stale = checkpoints.join(".a.safetensors.0123abcd.part");
    write(&stale, "old bytes");
    write(&checkpoints.join(".a.safetensors.0123abcd.part.aria2"), "old control");
    fs::remove_file(checkpoints.join("a.safetensors")).unwrap();
    let (code, out, err) = s.start_once();
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(fs::read(checkpoints.join("a.safetensors")).unwrap(), a);
    let left: Vec<_> = fs::read_dir(&checkpoints).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("a.safetensors")]);
}

#[test]
fn a_failure_on_a_later_model_keeps_what_was_verified_before_it() {
    provision_test!("a_failure_on_a_later_model_keeps_what_was_verified_before_it");
    let (a, b) = (random_bytes(300_000), random_bytes(100_000));
    let server = Server::start(&[("a.safetensors", &a), ("b.safetensors", &b)], 1 << 30);
    let s = Setup::new("provision-later");
    write(
        &s.manifest,
        &(model(&server.url("files", "a.safetensors"), "a.safetensors", Some(&sha256(&a)), None)
            + &model(&server.url("error", "b.safetensors"), "b.safetensors", Some(&sha256(&b)), None)),
    );
    let (code, out, err) = s.start_once();
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("model b.safetensors (http://127.0.0.1:") && out.contains("the download failed"), "{out}");
    let check = comfy_init(&["provision", "--check"], s.ws.env(), LONG);
    assert!(check.stdout.contains("models/checkpoints/a.safetensors: present, verified (cache)"), "{}", check.stdout);
}

#[test]
fn a_node_move_cut_off_is_finished_at_the_next_start() {
    provision_test!("a_node_move_cut_off_is_finished_at_the_next_start");
    let (repo, one, two) = node_repo();
    let s = Setup::new("provision-moving");
    write(&s.manifest, &node(repo.path(), "v1"));
    let (code, out, err) = s.start_once();
    assert_eq!(code, 0, "{out}\n{err}");
    let dir = s.ws.comfyui().join("custom_nodes/TestNode");
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).current_dir(&dir).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Its git folder elsewhere, `.git` a `gitdir:` file (as `git init --separate-git-dir` makes).
    let git_dir = s.ws.dir.join("TestNode.git");
    fs::rename(dir.join(".git"), &git_dir).unwrap();
    write(&dir.join(".git"), &format!("gitdir: {}\n", git_dir.display()));
    assert_eq!(git(&["rev-parse", "HEAD"]), one);

    // What a move from v1 to v2 killed in its checkout leaves: v2 fetched, HEAD still at v1, the
    // work tree half v2, git's index.lock, and comfy-init's mark naming v2.
    git(&["fetch", "-q", &format!("file://{}", repo.path().display()), "+refs/tags/v2:refs/tags/v2"]);
    write(&dir.join("__init__.py"), "NODE_CLASS_MAPPINGS = {'two': 2}\n");
    write(&git_dir.join("index.lock"), "");
    write(&git_dir.join("comfy-init-moving"), &format!("{two}\n"));
    write(&s.manifest, &node(repo.path(), &two));

    let check = comfy_init(&["provision", "--check"], s.ws.env(), LONG);
    assert_eq!(check.code, Some(0), "{}", check.all());
    assert!(
        check.stdout.contains(&format!("a move to {} was cut off: will finish it", &two[..12])),
        "{}",
        check.stdout
    );
    let (code, out, err) = s.start_once();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("node TestNode: finished the move to {}", &two[..12])), "{out}");
    assert_eq!(s.head("TestNode"), two);
    assert_eq!(git(&["status", "--porcelain"]), "", "the work tree is not v2's");
    assert!(!git_dir.join("index.lock").exists() && !git_dir.join("comfy-init-moving").exists());
    // The requirements mark is in the git folder too: the next start installs nothing again.
    assert_eq!(fs::read_to_string(git_dir.join("comfy-init-requirements")).unwrap().trim(), two);
    let pip = fs::read_to_string(&s.pip_log).unwrap();
    let (code, out, err) = s.start_once();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("node TestNode: at {}", &two[..12])), "{out}");
    assert_eq!(fs::read_to_string(&s.pip_log).unwrap(), pip, "requirements installed again");

    // A plain move also leaves no mark behind.
    write(&s.manifest, &node(repo.path(), "v1"));
    let (code, out, err) = s.start_once();
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(s.head("TestNode"), one);
    assert!(!git_dir.join("comfy-init-moving").exists());
}
