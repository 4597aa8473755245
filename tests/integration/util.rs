//! Test harness: start the built binary (as PID 1 in a fresh PID namespace, or as a plain child),
//! signal it, wait for it, read what it printed. Kept small so each test reads as a behaviour.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The comfy-init under test: `COMFY_INIT_BIN` (what `make test` builds and ships, with
/// comfy-init-nvml beside it), else cargo's build of this package.
pub fn bin() -> PathBuf {
    shipped_binary().unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_comfy-init")))
}

fn shipped_binary() -> Option<PathBuf> {
    std::env::var_os("COMFY_INIT_BIN").filter(|p| !p.is_empty()).map(PathBuf::from)
}

/// True when the binary under test is the shipped, statically linked one.
pub fn testing_the_shipped_binary() -> bool {
    shipped_binary().is_some()
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// True when CI demands that tests needing root or Docker run instead of skipping.
pub fn mandatory() -> bool {
    std::env::var("COMFY_INIT_TESTS_MANDATORY").map(|v| v == "1").unwrap_or(false)
}

/// Root and `unshare` are needed to run comfy-init as PID 1 of a fresh PID namespace. Elsewhere
/// the test is skipped with a printed reason, unless CI made it mandatory.
pub fn can_be_pid1(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let unshare = Path::new("/usr/bin/unshare").exists() || Path::new("/bin/unshare").exists();
    if root && unshare {
        return true;
    }
    let reason = if root { "unshare(1) is not installed" } else { "it needs root (unshare --pid)" };
    if mandatory() {
        panic!("{test}: {reason}, and COMFY_INIT_TESTS_MANDATORY=1");
    }
    eprintln!("SKIPPED {test}: {reason}");
    false
}

/// A temporary folder removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "comfy-init-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// How to start comfy-init.
pub struct Launch {
    pub args: Vec<String>,
    pub env: HashMap<String, String>,
    pub pid1: bool,
    /// A wrapper that runs first (e.g. to start us with signals ignored).
    pub prefix: Vec<String>,
}

impl Launch {
    /// `comfy-init run -- CMD...` with GPU and credentials off and no restarts: plain init mode.
    pub fn init(cmd: &[&str]) -> Launch {
        let mut args = vec!["run".to_string(), "--".to_string()];
        args.extend(cmd.iter().map(|s| s.to_string()));
        let mut env = HashMap::new();
        env.insert("COMFY_INIT_GPU".into(), "off".into());
        env.insert("COMFY_INIT_AUTH".into(), "off".into());
        env.insert("COMFY_INIT_RESTART".into(), "never".into());
        env.insert("RUST_LOG".into(), "debug".into());
        Launch { args, env, pid1: true, prefix: vec![] }
    }

    pub fn sh(script: &str) -> Launch {
        Launch::init(&["sh", "-c", script])
    }

    pub fn env(mut self, k: &str, v: impl AsRef<OsStr>) -> Launch {
        self.env.insert(k.into(), v.as_ref().to_string_lossy().into_owned());
        self
    }

    pub fn not_pid1(mut self) -> Launch {
        self.pid1 = false;
        self
    }

    pub fn prefix(mut self, p: &[&str]) -> Launch {
        self.prefix = p.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn start(self) -> Running {
        let dir = TempDir::new("out");
        let mut argv: Vec<String> = self.prefix.clone();
        if self.pid1 {
            argv.extend(["unshare", "--pid", "--fork", "--mount-proc"].map(String::from));
        }
        argv.push(bin().to_string_lossy().into_owned());
        argv.extend(self.args);
        let mut cmd = Command::new(&argv[0]);
        scrub_env(&mut cmd);
        cmd.args(&argv[1..])
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("stdout")).unwrap())
            .stderr(fs::File::create(dir.join("stderr")).unwrap());
        let child = cmd.spawn().expect("start comfy-init");
        Running { child, pid1: self.pid1, out: dir }
    }

    /// Starts, waits up to `limit`, returns (exit code, stdout, stderr).
    pub fn output(self, limit: Duration) -> (i32, String, String) {
        let mut r = self.start();
        let code = r.wait(limit).unwrap_or_else(|| panic!("comfy-init did not exit within {limit:?}: {}", r.stderr()));
        (code, r.stdout(), r.stderr())
    }
}

pub struct Running {
    child: std::process::Child,
    pid1: bool,
    out: TempDir,
}

impl Running {
    /// comfy-init's pid as the host sees it (the PID 1 of the namespace, or the process itself).
    pub fn init_pid(&self) -> i32 {
        let outer = self.child.id() as i32;
        if !self.pid1 {
            return outer;
        }
        // `unshare --fork` does not forward signals: find its child, the namespace's PID 1.
        let path = format!("/proc/{outer}/task/{outer}/children");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(s) = fs::read_to_string(&path) {
                if let Some(pid) = s.split_whitespace().next() {
                    return pid.parse().unwrap();
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no PID 1 under unshare {outer}");
    }

    pub fn signal(&self, signo: i32) {
        // SAFETY: plain syscall.
        let rc = unsafe { libc::kill(self.init_pid(), signo) };
        assert_eq!(rc, 0, "kill({signo}) failed");
    }

    /// The exit code, or None if still running after `limit`. A death by signal N reads 128+N.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(self.out.join("stdout")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.out.join("stderr")).unwrap_or_default()
    }

    /// Waits until `cond` holds, up to `limit`.
    pub fn until(&self, limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
        wait_until(limit, &mut cond)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            if self.pid1 {
                // SAFETY: plain syscall; killing PID 1 of the namespace ends everything in it.
                unsafe { libc::kill(self.init_pid(), libc::SIGKILL) };
            } else {
                // Outside a namespace a SIGKILL would orphan comfy-init's child (ComfyUI runs in
                // its own process group) and leave it running after the test: ask comfy-init to
                // stop, as `docker stop` does, and let it stop its group (its grace is 8 s).
                // SAFETY: plain syscall on our own child.
                unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
                let _ = self.wait(Duration::from_secs(12));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn wait_until(limit: Duration, cond: &mut dyn FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A process as /proc/PID/stat tells it.
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
}

pub fn proc_stat(pid: i32) -> Option<Proc> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    let mut f = after.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some(Proc { pid, state, ppid })
}

/// Every process whose parent is `ppid`, as the host sees them.
pub fn children_of(ppid: i32) -> Vec<Proc> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .filter(|p| p.ppid == ppid)
        .collect()
}

/// Whether `pid` is comfy-init's credential service (a child of PID 1 for its whole life).
pub fn is_credential_service(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.windows(13).any(|w| w == b"__credentials"))
}

/// (zombies among `init_pid`'s children, all its children but the credential service).
pub fn zombies_and_orphans(init_pid: i32) -> (usize, usize) {
    let kids: Vec<Proc> = children_of(init_pid).into_iter().filter(|p| !is_credential_service(p.pid)).collect();
    let zombies = kids.iter().filter(|p| p.state == 'Z').count();
    (zombies, kids.len())
}

/// Makes five orphans inside the PID namespace whose init is `init_pid` (host pid): a shell
/// entered into it starts short sleeps and exits, so they are reparented to that init.
pub fn make_orphans_under(init_pid: i32) {
    let status = Command::new("nsenter")
        .args(["--target", &init_pid.to_string(), "--pid", "--", "sh", "-c", "for i in 1 2 3 4 5; do sleep 0.2 & done"])
        .status()
        .expect("nsenter (util-linux)");
    assert!(status.success(), "nsenter failed");
}

pub fn pid_exists(pid: i32) -> bool {
    proc_stat(pid).map(|p| p.state != 'Z' && p.state != 'X').unwrap_or(false)
}

pub fn write(path: &Path, content: &str) {
    fs::write(path, content).unwrap()
}

/// Our settings (and the GPU's) from the developer's shell must not leak into a test.
pub fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("COMFY")
            || k.starts_with("FAKE_")
            || k.starts_with("NVIDIA_")
            || ["PUID", "PGID", "CUDA_VERSION", "RUST_LOG", "CLI_ARGS"].contains(&k.as_str())
        {
            cmd.env_remove(k);
        }
    }
}

/// What a finished comfy-init command did.
#[derive(Debug)]
pub struct Output {
    /// The exit code; None when a signal ended it.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Output {
    /// The code, or 128+N for a death by signal N (an abort reads 134), as a shell shows it.
    pub fn status(&self) -> i32 {
        self.code.unwrap_or_else(|| 128 + self.signal.unwrap_or(0))
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// The one line a healthcheck prints.
    pub fn line(&self) -> &str {
        self.stdout.trim_end()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{}", self.stdout))
    }

    pub fn assert_no_panic(&self) {
        assert!(!self.stderr.contains("panicked"), "comfy-init panicked:\n{}", self.stderr);
        assert_ne!(self.code, Some(101), "comfy-init panicked:\n{}", self.stderr);
        assert!(self.code.is_some(), "comfy-init died from a signal:\n{}", self.stderr);
    }
}

/// Runs `comfy-init ARGS` to completion, with our variables scrubbed from the environment and
/// `env` set. A command still running after `limit` is killed and the test fails: it hung.
pub fn comfy_init<K, V>(args: &[&str], env: impl IntoIterator<Item = (K, V)>, limit: Duration) -> Output
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    use std::os::unix::process::ExitStatusExt;
    let mut cmd = Command::new(bin());
    scrub_env(&mut cmd);
    cmd.args(args).envs(env).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let child = cmd.spawn().expect("start comfy-init");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let Ok(out) = rx.recv_timeout(limit) else {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("comfy-init {args:?} hung for {limit:?}");
    };
    let out = out.expect("collect comfy-init's output");
    Output {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

/// A site-packages folder holding a fake `torch` package: an empty `__init__.py` and the
/// `version.py` PyTorch writes (`cuda`/`hip` None when not given). Put it on PYTHONPATH.
pub fn fake_torch(version: &str, cuda: Option<&str>, hip: Option<&str>) -> TempDir {
    let site = TempDir::new("torch");
    let torch = site.join("torch");
    fs::create_dir_all(&torch).unwrap();
    fs::write(torch.join("__init__.py"), "").unwrap();
    let quoted = |v: Option<&str>| v.map(|v| format!("'{v}'")).unwrap_or_else(|| "None".into());
    let text = format!(
        "__version__ = '{version}'\ndebug = False\ncuda: Optional[str] = {}\ngit_version = 'fake'\nhip: Optional[str] = {}\n",
        quoted(cuda),
        quoted(hip)
    );
    fs::write(torch.join("version.py"), text).unwrap();
    site
}

/// The fake NVML libraries (tests/fixtures/fake_nvml.c), built once per test run with the
/// system C compiler, for the GPU and healthcheck tests.
pub struct NvmlFixtures {
    /// Every symbol.
    pub full: PathBuf,
    /// Without nvmlShutdown (nvml-wrapper's Drop would panic on it).
    pub no_shutdown: PathBuf,
    /// Without nvmlDeviceGetMemoryInfo_v2 and nvmlSystemGetCudaDriverVersion_v2 (old driver).
    pub old_driver: PathBuf,
    /// A text file named like the library.
    pub text_file: PathBuf,
    pub dir: PathBuf,
}

fn compile_nvml(dir: &Path, name: &str, defines: &[&str]) -> PathBuf {
    let src = fixtures().join("fake_nvml.c");
    let out = dir.join(name);
    // Build under a private name, then rename: concurrent test runs never see half a file.
    let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&tmp)
        .arg(&src)
        .args(defines)
        .status()
        .expect("the GPU tests need a C compiler (`cc`) to build tests/fixtures/fake_nvml.c");
    assert!(status.success(), "building {name} from fake_nvml.c failed");
    fs::rename(&tmp, &out).unwrap();
    out
}

pub fn nvml_fixtures() -> &'static NvmlFixtures {
    static F: std::sync::OnceLock<NvmlFixtures> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fake-nvml");
        fs::create_dir_all(&dir).unwrap();
        let text_file = dir.join("not-a-library.so.1");
        fs::write(&text_file, "this is a text file, not libnvidia-ml\n").unwrap();
        NvmlFixtures {
            full: compile_nvml(&dir, "libnvidia-ml-fake.so", &[]),
            no_shutdown: compile_nvml(&dir, "libnvidia-ml-noshutdown.so", &["-DFAKE_NVML_NO_SHUTDOWN"]),
            old_driver: compile_nvml(
                &dir,
                "libnvidia-ml-old.so",
                &["-DFAKE_NVML_NO_MEMORY_V2", "-DFAKE_NVML_NO_CUDA_V2"],
            ),
            text_file,
            dir,
        }
    })
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A workspace's ports: four in a row, as instance i listens on port + i. Handed out once in a
/// test run, below the kernel's ephemeral range (32768-60999 by default), from which
/// `free_port` and every client connection take theirs: two free ports from there are often
/// neighbours, so port + 1 of one workspace was another's port (a CI run saw it). Each block is
/// checked free where the stand-in binds (all addresses).
pub fn free_port_block() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const FIRST: usize = 20_000;
    const BLOCKS: usize = 3_000; // up to port 31999
                                 // Another test run at the same time (another clean clone) starts elsewhere.
    let start = std::process::id() as usize % BLOCKS;
    for _ in 0..BLOCKS {
        let base = (FIRST + 4 * ((start + NEXT.fetch_add(1, Ordering::Relaxed)) % BLOCKS)) as u16;
        if (base..base + 4).all(|p| std::net::TcpListener::bind(("0.0.0.0", p)).is_ok()) {
            return base;
        }
    }
    panic!("no four free ports in a row between {FIRST} and {}", FIRST + 4 * BLOCKS);
}

/// A temporary ComfyUI workspace: `ComfyUI/` holding the stand-in as `main.py`, a `.env` beside
/// it, a free port. The settings comfy-init reads point there.
pub struct Workspace {
    pub dir: TempDir,
    pub port: u16,
    pub extra_env: HashMap<String, String>,
}

impl Workspace {
    pub fn new(tag: &str) -> Workspace {
        let dir = TempDir::new(tag);
        fs::create_dir_all(dir.join("ComfyUI")).unwrap();
        fs::copy(fixtures().join("fake_comfyui.py"), dir.join("ComfyUI/main.py")).unwrap();
        Workspace { dir, port: free_port_block(), extra_env: HashMap::new() }
    }

    pub fn comfyui(&self) -> PathBuf {
        self.dir.join("ComfyUI")
    }
    pub fn env_file(&self) -> PathBuf {
        self.dir.join(".env")
    }
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("ComfyUI/login/PASSWORD")
    }
    pub fn events_file(&self) -> PathBuf {
        self.dir.join("events")
    }
    /// COMFY_INIT_RUN_DIR: where PID 1 publishes its phase (one a workspace).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    pub fn set(mut self, k: &str, v: impl AsRef<OsStr>) -> Workspace {
        self.extra_env.insert(k.into(), v.as_ref().to_string_lossy().into_owned());
        self
    }

    pub fn env(&self) -> HashMap<String, String> {
        let mut env = HashMap::new();
        env.insert("COMFYUI_DIR".into(), self.comfyui().to_string_lossy().into_owned());
        env.insert("COMFY_INIT_ENV_FILE".into(), self.env_file().to_string_lossy().into_owned());
        env.insert("COMFYUI_PORT".into(), self.port.to_string());
        env.insert("COMFY_INIT_GPU".into(), "off".into());
        env.insert("FAKE_COMFYUI_EVENTS".into(), self.events_file().to_string_lossy().into_owned());
        env.insert("COMFY_INIT_RUN_DIR".into(), self.run_dir().to_string_lossy().into_owned());
        env.insert("RUST_LOG".into(), "debug".into());
        env.extend(self.extra_env.clone());
        env
    }

    /// `comfy-init ARGS` (sync, token, rotate...) run to completion: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        self.cli_within(args, Duration::from_secs(60))
    }

    /// Like `cli`, but a command still running after `limit` is killed and the test fails: it
    /// hung. A death by signal N reads 128+N (an abort is 134).
    pub fn cli_within(&self, args: &[&str], limit: Duration) -> (i32, String, String) {
        let out = comfy_init(args, self.env(), limit);
        (out.status(), out.stdout, out.stderr)
    }

    /// `comfy-init run` (ComfyUI = the stand-in) as PID 1 of a fresh PID namespace.
    pub fn launch(&self) -> Launch {
        Launch { args: vec!["run".into()], env: self.env(), pid1: true, prefix: vec![] }
    }

    pub fn token(&self) -> String {
        let (code, out, err) = self.cli(&["token"]);
        assert_eq!(code, 0, "comfy-init token failed: {err}");
        out.trim().to_string()
    }

    /// GET /system_stats with this bearer token (None: no header): the HTTP status, 0 when
    /// nothing answers.
    pub fn status(&self, token: Option<&str>) -> u16 {
        self.get(token).0
    }

    /// (status, body) of GET /system_stats.
    pub fn get(&self, token: Option<&str>) -> (u16, String) {
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(3)).build();
        let mut req = agent.get(&format!("http://127.0.0.1:{}/system_stats", self.port));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        match req.call() {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    /// The stand-in's pid, from its /system_stats answer.
    pub fn comfyui_pid(&self, token: &str) -> Option<i64> {
        let (code, body) = self.get(Some(token));
        if code != 200 {
            return None;
        }
        serde_json::from_str::<serde_json::Value>(&body).ok()?["standin"]["pid"].as_i64()
    }

    /// How many times the stand-in started, from its event log.
    pub fn starts(&self) -> usize {
        fs::read_to_string(self.events_file()).unwrap_or_default().lines().filter(|l| l.starts_with("start ")).count()
    }

    /// Replaces `KEY=...` in .env (or appends), the way an editor saves: temp file + rename.
    pub fn edit_env(&self, key: &str, line: &str) {
        let text = fs::read_to_string(self.env_file()).unwrap_or_default();
        let mut lines: Vec<String> =
            text.lines().filter(|l| !l.starts_with(&format!("{key}="))).map(String::from).collect();
        lines.push(line.to_string());
        let tmp = self.dir.join(".env.swp");
        fs::write(&tmp, lines.join("\n") + "\n").unwrap();
        fs::rename(&tmp, self.env_file()).unwrap();
    }
}

/// POST /login on `port` with `form`, as a browser would: where it redirects to, and the session
/// cookie (`AIOHTTP_SESSION=...`) if one was set.
pub fn post_login(port: u16, form: &[(&str, &str)]) -> (String, Option<String>) {
    let agent = ureq::AgentBuilder::new().redirects(0).timeout(Duration::from_secs(5)).build();
    let answer = agent.post(&format!("http://127.0.0.1:{port}/login")).send_form(form).expect("POST /login");
    let cookie = answer.header("Set-Cookie").map(|c| c.split(';').next().unwrap_or_default().to_string());
    (answer.header("Location").unwrap_or_default().to_string(), cookie)
}

/// A web session on `port` for `form`, which must log in.
pub fn session(port: u16, form: &[(&str, &str)]) -> String {
    let (location, cookie) = post_login(port, form);
    assert_eq!(location, "/", "login refused");
    cookie.expect("a session cookie")
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
