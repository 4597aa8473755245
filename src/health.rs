//! `comfy-init healthcheck`: the Docker HEALTHCHECK target (the image has no curl).
//!
//! GET /system_stats on 127.0.0.1:$COMFYUI_PORT with the bearer token, then the same request
//! without a token, with an empty `?token=` and with a well-formed wrong token must be refused
//! (401: a server that takes any token enforces nothing), then a random `/userdata/<name>.js`
//! without a token must be refused too (ComfyUI-Login exempts every `.js` path: a 404 means
//! ComfyUI's user-data handler ran, so anyone can read, write and delete user files), then, under
//! `COMFY_INIT_GPU=require`, NVML must still open the devices. One line on stdout starting
//! `healthy:` or `UNHEALTHY:`; exit 0 or 1, never 2 (Docker reserves it).
//!
//! [`evaluate`] decides from what the requests answered ([`Reply`]) and is pure: the requests are
//! passed in as a function, so the whole sequence is unit-tested without a network. [`command`]
//! does the I/O and owns the deadline.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use std::path::Path;

use crate::config::{self, ConfigError, GuestMode, Settings, ENV_HEALTH_TIMEOUT as ENV_TIMEOUT};
use crate::credentials::{self, api_keys};
use crate::fsutil::Links;
use crate::gpu::{self, GpuPolicy};
use crate::queue;
/// Docker keeps 4096 bytes of probe output; stay well under it.
const MAX_LINE: usize = 1000;

/// What one request came back with, reduced to what the verdict needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An HTTP answer. The body is read only for 200.
    Answer { status: u16, body: String },
    /// Connection refused (or otherwise not established): nothing listens.
    NotListening(String),
    /// The deadline passed before a complete answer.
    Timeout,
    /// Anything else on the wire: reset, garbage instead of HTTP.
    Failed(String),
}

/// The three requests the healthcheck makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    Bearer(&'a str),
    Anonymous,
    EmptyToken,
    /// A well-formed bcrypt hash that is not ours.
    WrongBearer(&'a str),
    /// GET /userdata/<random>.js without a token: ComfyUI-Login's suffix exemption.
    UserFile,
    /// GET /comfy-init/status (the companion's: draining, import failures, queue), with our token.
    Status(Option<&'a str>),
    /// `Bearer cik_` and something that is not a key: the companion must refuse it.
    MalformedKey,
    /// A well-formed API key that no one was given.
    UnknownKey,
    /// Our token without comfy-init's own key: refused under COMFY_INIT_PASSWORD_TOKEN=off.
    TokenAlone(&'a str),
    /// Our token with a key that is not comfy-init's: refused the same.
    TokenWrongKey(&'a str),
    /// Our token as `?token=`, without comfy-init's own key: refused the same.
    TokenQuery(&'a str),
}

impl Request<'_> {
    fn describe(self) -> &'static str {
        match self {
            Request::Bearer(_) => "with our token",
            Request::Anonymous => "without a token",
            Request::EmptyToken => "with an empty ?token=",
            Request::WrongBearer(_) => "with a wrong token",
            Request::UserFile => "for a user file through a .js path, without a token",
            Request::Status(_) => "for the companion's status",
            Request::MalformedKey => "with a malformed API key",
            Request::UnknownKey => "with an unknown API key",
            Request::TokenAlone(_) => "with the password's token under COMFY_INIT_PASSWORD_TOKEN=off",
            Request::TokenWrongKey(_) => "with the password's token and a wrong comfy-init key",
            Request::TokenQuery(_) => "with the password's token as ?token= under COMFY_INIT_PASSWORD_TOKEN=off",
        }
    }
}

/// What the healthcheck knows about authentication before asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// COMFY_INIT_AUTH=off: no token, no enforcement check.
    Off,
    Token(String),
    /// COMFY_INIT_PASSWORD_TOKEN=off: the token, which only comfy-init's own requests may use.
    KeysOnly(String),
    /// PASSWORD missing, empty or malformed: why, with the repair.
    Unreadable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Config(String),
    NotListening,
    Timeout,
    /// 401 to our token: ComfyUI-Login read another PASSWORD at its start.
    TokenRejected,
    /// 401 while COMFY_INIT_AUTH=off: ComfyUI-Login is there but we have no token.
    AuthRequiredButOff,
    NoToken(String),
    ServerError(u16),
    Unexpected {
        status: u16,
        request: &'static str,
    },
    BadJson(String),
    /// 200 to a request without a valid token; with why we had no token, if we had none.
    AuthNotEnforced {
        request: &'static str,
        token_problem: Option<String>,
    },
    Transport(String),
    /// A user file through a `.js` path reached ComfyUI's handler without a token.
    UserFilesOpen(u16),
    /// 200 to an API key that no one holds: the request.
    KeyNotChecked(&'static str),
    /// 200 to the password's token alone under COMFY_INIT_PASSWORD_TOKEN=off.
    TokenNotOff,
    GpuLost(String),
    /// `login/GUEST_MODE` exists under COMFY_INIT_GUEST_MODE=refuse.
    GuestModeRefused(String),
    /// Alive, but no traffic should come (`--ready`): why.
    NotReady(String),
    /// One of several instances failed: which (its port and card), and how.
    Instance {
        about: String,
        port: u16,
        problem: Box<Problem>,
    },
}

/// Where and how long: only for the wording of the line.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub port: u16,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthy {
    pub version: String,
    pub device: Option<String>,
    pub auth_checked: bool,
    /// COMFY_INIT_PASSWORD_TOKEN=off, and the token alone was refused.
    pub token_off: bool,
    pub gpu: Option<String>,
    /// `login/GUEST_MODE` exists (and COMFY_INIT_GUEST_MODE=warn lets it be).
    pub guest_mode: bool,
    /// ComfyUI's log holds the token (no companion node redacts it): a guest can read it.
    pub token_logged: bool,
    /// `--ready`: what readiness proved.
    pub ready: Option<String>,
    /// Several instances: the summary that stands for "ComfyUI answers on ...".
    pub instances: Option<String>,
}

impl Problem {
    pub fn line(&self, t: Target) -> String {
        let addr = format!("127.0.0.1:{}", t.port);
        let why = match self {
            Problem::NotReady(why) => return format!("NOT READY: {why}"),
            Problem::Instance { about, port, problem } => {
                let inner = problem.line(Target { port: *port, ..t });
                return match inner.split_once(": ") {
                    Some((verdict, why)) => format!("{verdict}: {about}: {why}"),
                    None => format!("UNHEALTHY: {about}: {inner}"),
                };
            }
            Problem::Config(e) => format!("bad configuration: {e}"),
            Problem::NotListening => format!(
                "not listening: nothing accepts connections on {addr} (ComfyUI is starting, \
                 crashed, or listens elsewhere: check COMFYUI_PORT)"
            ),
            Problem::Timeout => format!(
                "timeout: no complete answer from {addr} within {} ({ENV_TIMEOUT}); ComfyUI is hung or overloaded",
                secs(t.timeout)
            ),
            Problem::TokenRejected => "token out of sync: ComfyUI answers 401 to the token in \
                login/PASSWORD (ComfyUI-Login reads it only at start); restart ComfyUI (comfy-init's \
                supervisor restarts it when PASSWORD changes) and, if PASSWORD was edited by hand, \
                run 'comfy-init sync'"
                .to_string(),
            Problem::AuthRequiredButOff => "ComfyUI answers 401 but COMFY_INIT_AUTH=off gives the \
                healthcheck no token: set COMFY_INIT_AUTH=on, or remove ComfyUI-Login"
                .to_string(),
            Problem::NoToken(why) => format!("no token to check with: {why}"),
            Problem::ServerError(s) => {
                format!("ComfyUI answered {s} on /system_stats: it is broken, see its log")
            }
            Problem::Unexpected { status, request } => {
                format!("unexpected answer {status} to /system_stats {request} (is ComfyUI on {addr}?)")
            }
            Problem::BadJson(e) => {
                format!("/system_stats answered 200 without ComfyUI's JSON (no 'system' object: {e})")
            }
            Problem::AuthNotEnforced { request, token_problem: Some(why) } => format!(
                "authentication is not enforced: /system_stats answered 200 {request}, the \
                 empty-token bypass of ComfyUI-Login is open because {why}"
            ),
            Problem::AuthNotEnforced { request, token_problem: None } => format!(
                "authentication is not enforced: /system_stats answered 200 {request} \
                 (ComfyUI-Login is missing or failed to load, or login/PASSWORD was empty when \
                 ComfyUI started: the empty-token bypass); run 'comfy-init sync' and restart"
            ),
            Problem::Transport(e) => format!("request to {addr} failed: {e}"),
            Problem::UserFilesOpen(status) => format!(
                "authentication is not enforced on user files: GET /userdata/<random>.js without a \
                 token reached ComfyUI's user-data API (it answered {status}, not 401): ComfyUI-Login \
                 lets every path ending in .js through, so anyone can read, write, move and delete \
                 workflows and settings; comfy-init's companion node closes that door: keep \
                 COMFY_INIT_COMPANION=on and custom_nodes writable by root, then restart"
            ),
            Problem::KeyNotChecked(request) => format!(
                "API keys are not checked: /system_stats answered 200 {request}: comfy-init's companion \
                 node checks them; keep COMFY_INIT_COMPANION=on and custom_nodes writable by root, then restart"
            ),
            Problem::TokenNotOff => "COMFY_INIT_PASSWORD_TOKEN=off, but /system_stats answered 200 to the \
                password's token alone: the companion node that refuses it is not in place (custom_nodes \
                not writable by root?); restart"
                .to_string(),
            Problem::GpuLost(e) => format!("GPU lost: ComfyUI answers but NVML fails: {e}"),
            Problem::GuestModeRefused(file) => format!(
                "guest mode is on ({file} exists) and COMFY_INIT_GUEST_MODE=refuse: anyone can run \
                 prompts without a password; remove the file"
            ),
        };
        format!("UNHEALTHY: {why}")
    }
}

impl Healthy {
    pub fn line(&self, t: Target) -> String {
        let mut line = match &self.instances {
            Some(summary) => format!("healthy: {summary} (ComfyUI {})", self.version),
            None => format!("healthy: ComfyUI {} answers on 127.0.0.1:{}", self.version, t.port),
        };
        if let Some(ready) = &self.ready {
            line = format!("{ready}; {line}");
        }
        if let Some(d) = &self.device {
            line += &format!(", device {d}");
        }
        line += if self.auth_checked {
            "; auth enforced (401 without a token, with an empty ?token=, with a wrong token, with a \
             malformed and an unknown API key, and for a user file through a .js path)"
        } else {
            "; auth not checked (COMFY_INIT_AUTH=off)"
        };
        if self.token_off {
            line += "; the password's token is refused (COMFY_INIT_PASSWORD_TOKEN=off)";
        }
        if let Some(g) = &self.gpu {
            line += &format!("; NVML opens {g}");
        }
        if self.guest_mode {
            line += "; WARNING guest mode on (login/GUEST_MODE): anyone can run prompts";
            if self.token_logged {
                line += " and read the token from /internal/logs";
            }
        }
        line
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// Transport outcomes are judged the same way for every request.
fn transport(reply: &Reply) -> Option<Problem> {
    match reply {
        Reply::Answer { .. } => None,
        Reply::NotListening(_) => Some(Problem::NotListening),
        Reply::Timeout => Some(Problem::Timeout),
        Reply::Failed(e) => Some(Problem::Transport(e.clone())),
    }
}

/// The main request: 200 with a `system` object, or why not.
pub fn judge_stats(reply: &Reply, request: Request) -> Result<Healthy, Problem> {
    if let Some(p) = transport(reply) {
        return Err(p);
    }
    let Reply::Answer { status, body } = reply else {
        return Err(Problem::Transport("no answer".into()));
    };
    match (*status, request) {
        (200, _) => {}
        (401, Request::Bearer(_)) => return Err(Problem::TokenRejected),
        (401, _) => return Err(Problem::AuthRequiredButOff),
        (s @ 500..=599, _) => return Err(Problem::ServerError(s)),
        (s, r) => return Err(Problem::Unexpected { status: s, request: r.describe() }),
    }
    let json: Value = serde_json::from_str(body).map_err(|e| Problem::BadJson(e.to_string()))?;
    let system = json
        .get("system")
        .filter(|s| s.is_object())
        .ok_or_else(|| Problem::BadJson("valid JSON, but no 'system' object".into()))?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(printable);
    Ok(Healthy {
        version: text(system.get("comfyui_version")).unwrap_or_else(|| "(version unknown)".into()),
        device: text(json.pointer("/devices/0/name")),
        auth_checked: false,
        token_off: false,
        gpu: None,
        guest_mode: false,
        token_logged: false,
        ready: None,
        instances: None,
    })
}

/// A request without a valid token: refused is right, 200 means anyone gets in.
pub fn judge_refusal(reply: &Reply, request: Request) -> Result<(), Problem> {
    if let Some(p) = transport(reply) {
        return Err(p);
    }
    match reply {
        // ComfyUI-Login: 401 for API clients, 302 to /login for browsers.
        Reply::Answer { status: 401 | 302, .. } => Ok(()),
        Reply::Answer { status: 200..=299, .. } => Err(match request {
            Request::MalformedKey | Request::UnknownKey => Problem::KeyNotChecked(request.describe()),
            Request::TokenAlone(_) | Request::TokenWrongKey(_) | Request::TokenQuery(_) => Problem::TokenNotOff,
            _ => Problem::AuthNotEnforced { request: request.describe(), token_problem: None },
        }),
        Reply::Answer { status, .. } => Err(Problem::Unexpected { status: *status, request: request.describe() }),
        _ => Err(Problem::Transport("no answer".into())),
    }
}

/// A user file asked for through a `.js` path without a token: refused is right; 404 (the
/// handler looked for the file) or a 2xx (it found one) means the door is open.
pub fn judge_user_file(reply: &Reply) -> Result<(), Problem> {
    match reply {
        Reply::Answer { status: status @ (404 | 200..=299), .. } => Err(Problem::UserFilesOpen(*status)),
        _ => judge_refusal(reply, Request::UserFile),
    }
}

/// The whole check, I/O passed in: `fetch` makes one request, `gpu` (None unless the policy is
/// `require`) asks NVML.
pub fn evaluate(
    auth: &Auth,
    fetch: &mut dyn FnMut(Request) -> Reply,
    gpu: Option<&dyn Fn() -> Result<String, gpu::NotAlive>>,
) -> Result<Healthy, Problem> {
    fn refusals(fetch: &mut dyn FnMut(Request) -> Reply, wrong: Option<&str>) -> Result<(), Problem> {
        let wrong = wrong.map(Request::WrongBearer);
        let keys = [Request::MalformedKey, Request::UnknownKey];
        for r in [Request::Anonymous, Request::EmptyToken].into_iter().chain(wrong).chain(keys) {
            judge_refusal(&fetch(r), r)?;
        }
        judge_user_file(&fetch(Request::UserFile))
    }
    let mut healthy = match auth {
        Auth::Off => judge_stats(&fetch(Request::Anonymous), Request::Anonymous)?,
        Auth::Token(token) | Auth::KeysOnly(token) => {
            let r = Request::Bearer(token);
            let mut h = judge_stats(&fetch(r), r)?;
            refusals(fetch, Some(&wrong_token(token)))?;
            if let Auth::KeysOnly(_) = auth {
                for r in [Request::TokenAlone(token), Request::TokenWrongKey(token), Request::TokenQuery(token)] {
                    judge_refusal(&fetch(r), r)?;
                }
                h.token_off = true;
            }
            h.auth_checked = true;
            h
        }
        // Without a token the open door is still worth naming: it is the worse news.
        Auth::Unreadable(why) => {
            return Err(match refusals(fetch, None) {
                Ok(()) => Problem::NoToken(why.clone()),
                Err(Problem::AuthNotEnforced { request, .. }) => {
                    Problem::AuthNotEnforced { request, token_problem: Some(why.clone()) }
                }
                Err(p) => p,
            });
        }
    };
    if let Some(check) = gpu {
        healthy.gpu = Some(check().map_err(|e| Problem::GpuLost(one_line(&e.to_string())))?);
    }
    Ok(healthy)
}

/// A token in a URL's query: bcrypt's `$` and `/` (and anything else) encoded.
fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Our token with its last character changed: well-formed, the same length, and wrong. A server
/// that accepts it compares nothing (or only a prefix).
pub fn wrong_token(ours: &str) -> String {
    let mut wrong = ours.as_bytes().to_vec();
    match wrong.last_mut() {
        Some(last) => *last = if *last == b'.' { b'/' } else { b'.' },
        None => return "$2b$12$".to_string() + &".".repeat(53),
    }
    String::from_utf8_lossy(&wrong).into_owned()
}

/// Multi-line text made fit for the one line.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Server-supplied text: one line, and short.
fn printable(s: &str) -> String {
    clip(&one_line(s), 200)
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

// ------------------------------------------------------------------------- I/O ---

/// The token to check with, read only once the deadline is armed: PASSWORD may be anything the
/// unprivileged child put there.
fn auth(settings: &Settings) -> Auth {
    if !settings.auth {
        return Auth::Off;
    }
    match credentials::current_token(&settings.credentials) {
        Ok(t) if settings.password_token => Auth::Token(t),
        Ok(t) => Auth::KeysOnly(t),
        Err(e) => Auth::Unreadable(e.to_string()),
    }
}

impl Auth {
    fn token(&self) -> Option<&str> {
        match self {
            Auth::Token(t) | Auth::KeysOnly(t) => Some(t),
            Auth::Off | Auth::Unreadable(_) => None,
        }
    }
}

/// Set once a line is out: main and watchdog print at most one between them.
static REPORTED: Mutex<bool> = Mutex::new(false);
/// What the main thread is waiting on, for the watchdog's line.
static STAGE: AtomicU8 = AtomicU8::new(STAGE_HTTP);
const STAGE_HTTP: u8 = 0;
const STAGE_GPU: u8 = 1;

fn print_once(line: &str) -> bool {
    let mut done = REPORTED.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return false;
    }
    *done = true;
    emit(&clip(line, MAX_LINE));
    true
}

/// Run by PID 1's watchdog (`__probe-alive`): one log line when unhealthy, nothing otherwise.
static AS_WATCHDOG: AtomicBool = AtomicBool::new(false);
/// Set by PID 1 while ComfyUI has not passed a first check yet: the probe says nothing at all.
pub const ENV_PROBE_QUIET: &str = "COMFY_INIT_PROBE_QUIET";

/// The verdict's line: on stdout for Docker, or for the watchdog in the log, failures only.
fn emit(line: &str) {
    if !AS_WATCHDOG.load(Ordering::SeqCst) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    } else if !line.starts_with("healthy") && std::env::var_os(ENV_PROBE_QUIET).is_none() {
        eprintln!("[comfy-init] WARN  watchdog: {line}");
    }
}

/// `comfy-init __probe-alive`: the liveness check for PID 1's watchdog (COMFY_INIT_WATCHDOG).
pub fn watchdog_probe(settings: Result<Settings, ConfigError>) -> u8 {
    AS_WATCHDOG.store(true, Ordering::SeqCst);
    // PID 1 gave it the port of the one instance it watches.
    command(settings, false, Some(Scope::ThisPort))
}

/// Which ComfyUI the healthcheck asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every instance PID 1 published (one: COMFYUI_PORT).
    All,
    /// Instance N of those PID 1 published.
    Instance(usize),
    /// COMFYUI_PORT alone (the watchdog's probe of one instance).
    ThisPort,
}

/// The per-request timeouts already end at the deadline; this covers whatever they cannot
/// (a server trickling bytes into a slow body, an NVML call that hangs). Exiting from a thread
/// is fine here: the healthcheck is a short-lived process, not PID 1.
fn arm_watchdog(deadline: Instant, target: Target) {
    std::thread::spawn(move || {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        let mut done = REPORTED.lock().unwrap_or_else(|p| p.into_inner());
        if *done {
            return;
        }
        *done = true;
        let mut line = Problem::Timeout.line(target);
        if STAGE.load(Ordering::SeqCst) == STAGE_GPU {
            line = format!(
                "UNHEALTHY: timeout: NVML did not answer within {} ({ENV_TIMEOUT}): the GPU is likely lost",
                secs(target.timeout)
            );
        }
        emit(&line);
        // Exit while holding the lock, so the main thread can never print or return 0 after us.
        std::process::exit(1);
    });
}

/// How comfy-init's own requests reach ComfyUI: its port, the `--enable-cors-header` origin sent
/// with every request (ComfyUI-Login only looks at tokens on requests that carry it), and under
/// COMFY_INIT_PASSWORD_TOKEN=off the key that lets them use the token.
struct Client {
    agent: ureq::Agent,
    port: u16,
    origin: Option<String>,
    self_key: Option<String>,
}

impl Client {
    fn new(s: &Settings) -> Client {
        Client {
            agent: ureq::AgentBuilder::new()
                .redirects(0) // a 302 to /login is an answer, not somewhere to go
                .user_agent(concat!("comfy-init-healthcheck/", env!("CARGO_PKG_VERSION")))
                .build(),
            port: s.comfyui.port,
            origin: origin(s),
            self_key: crate::supervisor::self_key::read(&s.run_dir),
        }
    }

    /// One GET, answered by `deadline`.
    fn fetch(&self, deadline: Instant, request: Request) -> Reply {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Reply::Timeout;
        }
        let path = match request {
            Request::EmptyToken => "/system_stats?token=".to_string(),
            // Random: no file planted under a known name can answer for it.
            Request::UserFile => format!("/userdata/comfy-init-probe-{:016x}.js", rand::random::<u64>()),
            Request::Status(_) => "/comfy-init/status".to_string(),
            Request::TokenQuery(token) => format!("/system_stats?token={}", percent_encoded(token)),
            _ => "/system_stats".to_string(),
        };
        let mut req = self.agent.get(&format!("http://127.0.0.1:{}{path}", self.port)).timeout(left);
        let bearer = match request {
            Request::Bearer(token) | Request::WrongBearer(token) | Request::Status(Some(token)) => {
                Some(token.to_string())
            }
            Request::TokenAlone(token) | Request::TokenWrongKey(token) => Some(token.to_string()),
            // The prefix, then what no key is: the companion must see a key and refuse it.
            Request::MalformedKey => Some(format!("{}{}", api_keys::PREFIX, "z".repeat(64))),
            Request::UnknownKey => Some(api_keys::generate()),
            _ => None,
        };
        if let Some(bearer) = bearer {
            req = req.set("Authorization", &format!("Bearer {bearer}"));
        }
        match request {
            Request::TokenAlone(_) | Request::TokenQuery(_) => {}
            Request::TokenWrongKey(_) => req = req.set(crate::supervisor::self_key::HEADER, &api_keys::generate()),
            _ => {
                if let Some(key) = &self.self_key {
                    req = req.set(crate::supervisor::self_key::HEADER, key);
                }
            }
        }
        if let Some(origin) = &self.origin {
            req = req.set("Origin", origin);
        }
        let response = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(status, _)) => return Reply::Answer { status, body: String::new() },
            Err(ureq::Error::Transport(t)) => return transport_reply(&t),
        };
        let status = response.status();
        if status != 200 {
            return Reply::Answer { status, body: String::new() };
        }
        match response.into_string() {
            Ok(body) => Reply::Answer { status, body },
            Err(e) if timed_out(&e) => Reply::Timeout,
            Err(e) => Reply::Failed(format!("reading the answer: {e}")),
        }
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
}

fn transport_reply(t: &ureq::Transport) -> Reply {
    let mut source = std::error::Error::source(t);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>().is_some_and(timed_out) {
            return Reply::Timeout;
        }
        source = e.source();
    }
    match t.kind() {
        ureq::ErrorKind::ConnectionFailed => Reply::NotListening(t.to_string()),
        _ => Reply::Failed(printable(&t.to_string())),
    }
}

/// How long the reload probe looks for its proof (PID 1 restarts ComfyUI a little after).
/// 4 s: two instances reloading at once on a loaded 2-core machine did not answer within 2 s, and a
/// needless restart drops ComfyUI's queue and models; a failed reload costs 2 s more.
const PROOF_WINDOW: Duration = Duration::from_secs(4);

/// `comfy-init __probe-reload`, started by PID 1 right after it asked the companion to reload a
/// new token: exit 0 as soon as the new token answers 200 AND the old one is refused, 1 when that
/// is not seen within [`PROOF_WINDOW`]. A child of its own, so that PID 1's loop never waits on
/// HTTP. Says nothing of the tokens.
pub fn prove_reload(settings: Result<Settings, ConfigError>, old: &str, new: &str) -> u8 {
    let Ok(s) = settings else { return 1 };
    let deadline = Instant::now() + PROOF_WINDOW;
    let client = Client::new(&s);
    let ask = |r: Request| client.fetch(deadline, r);
    let status = |reply: Reply| match reply {
        Reply::Answer { status, .. } => status.to_string(),
        other => format!("{other:?}"),
    };
    loop {
        let new_answer = status(ask(Request::Bearer(new)));
        let old_answer = status(ask(Request::WrongBearer(old)));
        if new_answer == "200" && (old_answer == "401" || old_answer == "302") {
            return 0;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "[comfy-init] reload not proven within {}: the new token got {new_answer}, the old one {old_answer}",
                secs(PROOF_WINDOW)
            );
            return 1;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The requests (with the CORS origin when one is configured), the GPU under `require`, and
/// guest mode: healthy with a warning, or refused under COMFY_INIT_GUEST_MODE=refuse.
fn check(s: &Settings, auth: &Auth, deadline: Instant) -> Result<Healthy, Problem> {
    let token_logged = !credentials::token_redacted(&s.credentials);
    let guest_mode = s.auth && credentials::guest_mode_risk(&s.credentials, token_logged).is_some();
    if guest_mode && s.guest_mode == GuestMode::Refuse {
        return Err(Problem::GuestModeRefused(s.credentials.guest_mode_path().display().to_string()));
    }
    let client = Client::new(s);
    if matches!(auth, Auth::KeysOnly(_)) && client.self_key.is_none() {
        return Err(Problem::Config(format!(
            "COMFY_INIT_PASSWORD_TOKEN=off and comfy-init's own key is not readable in {}: run the healthcheck as \
             comfy-init's user, with the COMFY_INIT_RUN_DIR that PID 1 has",
            s.run_dir.display()
        )));
    }
    let mut http = |r: Request| client.fetch(deadline, r);
    let gpu_settings = s.gpu.clone();
    let gpu_check = move || {
        STAGE.store(STAGE_GPU, Ordering::SeqCst);
        gpu::check_alive(&gpu_settings, deadline)
    };
    let gpu: Option<&dyn Fn() -> Result<String, gpu::NotAlive>> =
        (s.gpu.policy == GpuPolicy::Require).then_some(&gpu_check);
    evaluate(auth, &mut http, gpu).map(|h| Healthy { guest_mode, token_logged, ..h })
}

/// The `--enable-cors-header` origin ComfyUI runs with: from COMFYUI_ARGS, or from the flags
/// given to PID 1.
fn origin(s: &Settings) -> Option<String> {
    config::cors_origin(&[s.comfyui.args.clone(), pid1_comfyui_flags()].concat())
}

/// The ComfyUI flags PID 1 was given (`docker run IMAGE --enable-cors-header ORIGIN`), when PID 1
/// is comfy-init: they are not in our environment, but ComfyUI-Login acts on them.
fn pid1_comfyui_flags() -> Vec<String> {
    use std::os::unix::ffi::OsStringExt;
    let Ok(Some(raw)) = crate::fsutil::read_bounded(Path::new("/proc/1/cmdline"), 1 << 16, Links::Follow) else {
        return Vec::new();
    };
    let mut args = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| std::ffi::OsString::from_vec(a.to_vec()));
    let is_us = args.next().is_some_and(|a| Path::new(&a).file_name().is_some_and(|n| n == "comfy-init"));
    match crate::cli::parse(args.collect()) {
        Ok(crate::cli::Command::Run { command, comfyui_args }) if is_us && command.is_empty() => {
            comfyui_args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
        }
        _ => Vec::new(),
    }
}

/// Readiness (`--ready`) is liveness, and more: PID 1's phase is `running` (looked at first: not
/// running, no request is needed), and the companion says what [`judge_status`] wants.
fn check_ready(s: &Settings, auth: &Auth, deadline: Instant, phase: Option<&str>) -> Result<Healthy, Problem> {
    judge_phase(phase)?;
    let healthy = check(s, auth, deadline)?;
    let status = Client::new(s).fetch(deadline, Request::Status(auth.token()));
    let note = judge_status(&status, s.max_queue)?;
    Ok(Healthy { ready: Some(note), ..healthy })
}

/// What `healthcheck [--ready] [--instance N]` checks: the one ComfyUI, or the instances PID 1
/// published.
fn judge_scope(
    s: &Settings,
    auth: &Auth,
    deadline: Instant,
    ready: bool,
    published: &[crate::instances::Published],
    scope: Option<Scope>,
) -> Result<Healthy, Problem> {
    match (published.is_empty(), scope) {
        (true, Some(Scope::Instance(n))) if n > 0 => {
            Err(Problem::Config(format!("there is no instance {n}: comfy-init runs one ComfyUI here")))
        }
        (true, _) if ready => check_ready(s, auth, deadline, crate::supervisor::phase::read(&s.run_dir).as_deref()),
        (true, _) => check(s, auth, deadline),
        (false, scope) => check_instances(s, auth, deadline, ready, published, scope),
    }
}

/// Several ComfyUI (COMFY_INIT_INSTANCES): each one as if it were the only one, on its port, with
/// its slot of the phase; the first that fails is named with its port and card.
fn check_instances(
    s: &Settings,
    auth: &Auth,
    deadline: Instant,
    ready: bool,
    published: &[crate::instances::Published],
    scope: Option<Scope>,
) -> Result<Healthy, Problem> {
    let chosen: Vec<_> = match scope {
        Some(Scope::Instance(n)) => published.iter().filter(|p| p.index == n).collect(),
        _ => published.iter().collect(),
    };
    let mut ports: Vec<u16> = published.iter().map(|p| p.port).collect();
    ports.sort_unstable();
    if ports.windows(2).any(|w| w[0] == w[1]) {
        return Err(Problem::Config("the instances comfy-init published share a port: restart the container".into()));
    }
    if chosen.is_empty() {
        return Err(Problem::Config(format!(
            "there is no such instance: comfy-init runs {} (--instance 0 to {})",
            published.len(),
            published.len() - 1
        )));
    }
    let phases = crate::supervisor::phase::read_all(&s.run_dir).unwrap_or_default();
    let mut first: Option<Healthy> = None;
    for p in &chosen {
        let mut one = Settings { comfyui: config::ComfyUi { port: p.port, ..s.comfyui.clone() }, ..s.clone() };
        // NVML is asked once, below, for the whole box: a lost card must not fail every instance.
        one.gpu.policy = GpuPolicy::Warn;
        let result = match ready {
            true => check_ready(&one, auth, deadline, phases.get(p.index).map(String::as_str)),
            false => check(&one, auth, deadline),
        };
        let healthy = result.map_err(|problem| Problem::Instance {
            about: format!("instance {} ({}) on 127.0.0.1:{}", p.index, p.label, p.port),
            port: p.port,
            problem: Box::new(problem),
        })?;
        first.get_or_insert(healthy);
    }
    let mut gpu = None;
    // The box as a whole: NVML once. One instance's readiness: its ComfyUI alone.
    if s.gpu.policy == GpuPolicy::Require && !matches!(scope, Some(Scope::Instance(_))) {
        STAGE.store(STAGE_GPU, Ordering::SeqCst);
        // NVML's own line names the card that is lost.
        gpu = Some(gpu::check_alive(&s.gpu, deadline).map_err(|e| Problem::GpuLost(one_line(&e.to_string())))?);
    }
    let each: Vec<String> =
        chosen.iter().map(|p| format!("#{} on 127.0.0.1:{} ({})", p.index, p.port, p.label)).collect();
    let what = if ready { "ready" } else { "answer" };
    let summary = format!("{} of {} ComfyUI instances {what}: {}", chosen.len(), published.len(), each.join(", "));
    let first = first.ok_or_else(|| Problem::Config("no instance was checked".into()))?;
    Ok(Healthy { instances: Some(summary), device: None, gpu: gpu.or(first.gpu.clone()), ..first })
}

/// Only a ComfyUI that comfy-init runs untouched gets traffic.
pub fn judge_phase(phase: Option<&str>) -> Result<(), Problem> {
    match phase {
        Some("running") => Ok(()),
        Some(phase) => Err(Problem::NotReady(match phase {
            "starting" => "ComfyUI is starting".into(),
            "reloading" => "ComfyUI is taking a new token".into(),
            "restarting" => "ComfyUI is restarting".into(),
            "draining" => "ComfyUI is draining: it refuses new prompts while it stops".into(),
            "stopping" => "ComfyUI is stopping".into(),
            "stopped" => "ComfyUI has stopped".into(),
            other => format!("comfy-init's phase is {other}"),
        })),
        None => Err(Problem::NotReady(
            "no phase published by comfy-init (is it PID 1 here, with the same COMFY_INIT_RUN_DIR?)".into(),
        )),
    }
}

/// The companion's status: no drain, no custom node that failed to import, no more waiting
/// prompts than `max_queue`. No companion (404): ready, with what stays unknown said. Ok: what
/// was proven, for the line.
pub fn judge_status(status: &Reply, max_queue: Option<usize>) -> Result<String, Problem> {
    let body = match status {
        Reply::Answer { status: 200, body } => body,
        Reply::Answer { status: 404, .. } => {
            return Ok("ready (no companion node: custom-node import failures and drain unknown)".into())
        }
        other => return Err(Problem::NotReady(format!("the companion's status could not be read ({other:?})"))),
    };
    let Some(status) = queue::Status::parse(body) else {
        return Err(Problem::NotReady("the companion's status is not what comfy-init's companion writes".into()));
    };
    if status.draining {
        return Err(Problem::NotReady("ComfyUI is draining: it refuses new prompts while it stops".into()));
    }
    if !status.import_failed.is_empty() {
        let names = clip(&printable(&status.import_failed.join(", ")), 300);
        return Err(Problem::NotReady(format!(
            "custom nodes failed to import: {names} (see ComfyUI's log for IMPORT FAILED; fix or remove them)"
        )));
    }
    if let Some(max) = max_queue.filter(|max| status.pending > *max as u64) {
        return Err(Problem::NotReady(format!(
            "{} prompts wait, more than COMFY_INIT_MAX_QUEUE={max}",
            status.pending
        )));
    }
    // Only what was seen: ComfyUI logs its IMPORT FAILED summary at INFO (--verbose WARNING hides it).
    Ok(format!("ready: no custom node reported IMPORT FAILED, {} prompts waiting", status.pending))
}

/// How often the drain probe looks at the companion's status.
const DRAIN_EVERY: Duration = Duration::from_millis(200);
/// ComfyUI not answering this many times in a row: it will not finish anything.
const DRAIN_GIVE_UP_AFTER: u32 = 5;

/// `comfy-init __probe-drain`, started by PID 1 once it sent the companion the drain signal (a
/// child of its own: PID 1's loop never waits on HTTP). Reads the companion's status: says in
/// the log once the companion refuses new prompts (the signal is handled in ComfyUI's own time),
/// and exits 0 once no prompt runs or waits (a prompt taken just before the drain is not lost
/// either), 1 when ComfyUI stops answering or answers something else, 2 at the drain timeout
/// (PID 1 stops ComfyUI then anyway).
pub fn probe_drain(settings: Result<Settings, ConfigError>) -> u8 {
    let Ok(s) = settings else { return 1 };
    let token = std::env::var(queue::ENV_TOKEN).ok();
    let deadline = Instant::now() + s.supervisor.drain_timeout;
    let client = Client::new(&s);
    let (mut silent, mut said) = (0, false);
    while Instant::now() < deadline {
        let soon = (Instant::now() + Duration::from_secs(2)).min(deadline);
        let reply = client.fetch(soon, Request::Status(token.as_deref()));
        match reply {
            Reply::Answer { status: 200, body } => {
                let Some(status) = queue::Status::parse(&body) else { return 1 };
                silent = 0;
                if status.draining && !said {
                    log::info!(
                        "draining: ComfyUI refuses new prompts (503); waiting for {} running and {} waiting",
                        status.running,
                        status.pending
                    );
                    said = true;
                }
                if status.draining && status.idle() {
                    return 0;
                }
            }
            Reply::Answer { .. } => return 1,
            _ => {
                silent += 1;
                if silent >= DRAIN_GIVE_UP_AFTER {
                    return 1;
                }
            }
        }
        std::thread::sleep(DRAIN_EVERY);
    }
    2
}

/// `comfy-init healthcheck [--ready] [--instance N]`: prints one line, returns 0 (healthy, or
/// ready) or 1.
pub fn command(settings: Result<Settings, ConfigError>, ready: bool, scope: Option<Scope>) -> u8 {
    let started = Instant::now();
    // Exit 0 or 1, whatever happens: a bug must read "unhealthy", never Docker's reserved 2 or an
    // abort's 134. The message is not printed: it could hold what a file contained.
    std::panic::set_hook(Box::new(|_| {
        print_once("UNHEALTHY: internal error in comfy-init healthcheck (a bug: please report it)");
        std::process::exit(1);
    }));
    let s = match settings {
        Ok(s) => s,
        Err(e) => {
            let t = Target { port: 0, timeout: Duration::from_secs(5) };
            print_once(&Problem::Config(one_line(&e.0)).line(t));
            return 1;
        }
    };
    let target = Target { port: s.comfyui.port, timeout: s.health_timeout };
    // Armed before any file is read.
    let deadline = started + target.timeout;
    arm_watchdog(deadline, target);
    let mut s = s;
    let auth = auth(&s);
    let result = match crate::instances::read(&s.run_dir) {
        Err(why) => Err(Problem::Config(format!("cannot read the instances comfy-init published: {why}"))),
        Ok(published) => match scope {
            // The watchdog's probe of one instance of several: its port only, and not the GPU
            // (a card lost is its own instance's failure, not every instance's).
            Some(Scope::ThisPort) => {
                if published.len() > 1 {
                    s.gpu.policy = GpuPolicy::Warn;
                }
                check(&s, &auth, deadline)
            }
            _ => judge_scope(&s, &auth, deadline, ready, &published, scope),
        },
    };
    let (code, mut line) = match result {
        Ok(h) => (0, h.line(target)),
        Err(p) => (1, p.line(target)),
    };
    // Belt and braces: no path above prints the token, and none ever may.
    if let Some(token) = auth.token() {
        line = line.replace(token, "<token>");
    }
    if print_once(&line) {
        code
    } else {
        1 // the watchdog already reported a timeout (and is exiting 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{NvmlFailure, ProbeError, Stage};

    const T: Target = Target { port: 8188, timeout: Duration::from_secs(5) };
    const STATS: &str = r#"{"system": {"comfyui_version": "0.3.40", "os": "posix"},
        "devices": [{"name": "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync"}]}"#;

    fn ok(body: &str) -> Reply {
        Reply::Answer { status: 200, body: body.into() }
    }

    fn status(s: u16) -> Reply {
        Reply::Answer { status: s, body: String::new() }
    }

    /// A server answering by request kind; records what was asked.
    fn run(
        auth: &Auth,
        answer: impl Fn(Request) -> Reply,
        gpu: Option<&dyn Fn() -> Result<String, gpu::NotAlive>>,
    ) -> (Result<Healthy, Problem>, Vec<String>) {
        let mut asked = Vec::new();
        let mut fetch = |r: Request| {
            asked.push(r.describe().to_string());
            answer(r)
        };
        let result = evaluate(auth, &mut fetch, gpu);
        (result, asked)
    }

    fn protected(r: Request) -> Reply {
        match r {
            Request::Bearer("tok") => ok(STATS),
            _ => status(401),
        }
    }

    fn not_enforced(request: &'static str, token_problem: Option<String>) -> Problem {
        Problem::AuthNotEnforced { request, token_problem }
    }

    fn token() -> Auth {
        Auth::Token("tok".into())
    }

    #[test]
    fn healthy_with_auth_enforced() {
        let (result, asked) = run(&token(), protected, None);
        let h = result.unwrap();
        assert_eq!(h.version, "0.3.40");
        assert_eq!(h.device.as_deref(), Some("cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync"));
        assert!(h.auth_checked);
        assert_eq!(
            asked,
            [
                "with our token",
                "without a token",
                "with an empty ?token=",
                "with a wrong token",
                "with a malformed API key",
                "with an unknown API key",
                "for a user file through a .js path, without a token"
            ]
        );
        let line = h.line(T);
        assert!(line.starts_with("healthy: ComfyUI 0.3.40 answers on 127.0.0.1:8188"));
        assert!(line.contains("auth enforced") && line.contains("a malformed and an unknown API key"), "{line}");
        assert!(!line.contains("COMFY_INIT_PASSWORD_TOKEN"), "{line}");
    }

    #[test]
    fn an_api_key_no_one_holds_must_be_refused() {
        for (kind, describe) in
            [(Request::MalformedKey, "with a malformed API key"), (Request::UnknownKey, "with an unknown API key")]
        {
            let takes_it = |r: Request| if r == kind { ok(STATS) } else { protected(r) };
            let (result, _) = run(&token(), takes_it, None);
            let p = result.unwrap_err();
            assert_eq!(p, Problem::KeyNotChecked(describe));
            assert!(p.line(T).contains("API keys are not checked"), "{}", p.line(T));
        }
    }

    #[test]
    fn with_the_password_token_off_the_token_alone_must_be_refused() {
        let keys_only = Auth::KeysOnly("tok".into());
        let (result, asked) = run(&keys_only, protected, None);
        let line = result.unwrap().line(T);
        assert_eq!(
            asked[asked.len() - 3..],
            [
                "with the password's token under COMFY_INIT_PASSWORD_TOKEN=off",
                "with the password's token and a wrong comfy-init key",
                "with the password's token as ?token= under COMFY_INIT_PASSWORD_TOKEN=off"
            ]
        );
        assert!(line.contains("the password's token is refused (COMFY_INIT_PASSWORD_TOKEN=off)"), "{line}");
        for leak in [Request::TokenAlone("tok"), Request::TokenWrongKey("tok"), Request::TokenQuery("tok")] {
            let token_works =
                |r: Request| if r == Request::Bearer("tok") || r == leak { ok(STATS) } else { status(401) };
            let (result, _) = run(&keys_only, token_works, None);
            assert_eq!(result, Err(Problem::TokenNotOff), "{leak:?}");
        }
    }

    #[test]
    fn auth_off_makes_one_anonymous_request() {
        let (result, asked) = run(&Auth::Off, |_| ok(STATS), None);
        let line = result.unwrap().line(T);
        assert_eq!(asked, ["without a token"]);
        assert!(line.contains("auth not checked (COMFY_INIT_AUTH=off)"), "{line}");
        let (result, _) = run(&Auth::Off, protected, None);
        assert_eq!(result, Err(Problem::AuthRequiredButOff));
    }

    #[test]
    fn open_door_is_reported_whichever_request_gets_in() {
        let (result, _) = run(&token(), |_| ok(STATS), None);
        assert_eq!(result, Err(not_enforced("without a token", None)));
        let bypass = |r: Request| match r {
            Request::Anonymous => status(401),
            _ => ok(STATS),
        };
        let (result, _) = run(&token(), bypass, None);
        let p = result.unwrap_err();
        assert_eq!(p, not_enforced("with an empty ?token=", None));
        assert!(p.line(T).starts_with("UNHEALTHY: authentication is not enforced"));
    }

    #[test]
    fn a_server_that_takes_any_token_is_not_enforcing_auth() {
        let any_bearer = |r: Request| match r {
            Request::Bearer(_) | Request::WrongBearer(_) => ok(STATS),
            _ => status(401),
        };
        let (result, _) = run(&token(), any_bearer, None);
        assert_eq!(result, Err(not_enforced("with a wrong token", None)));
        let ours = "$2b$12$abcdefghijklmnopqrstuuJq8f1V1cQ0M7b0f2i3O0yC6m5Yx5v1e";
        let wrong = wrong_token(ours);
        assert_eq!(wrong.len(), 60);
        assert_ne!(wrong, ours);
        assert_eq!(crate::credentials::token::check_shape(&wrong), Ok(()));
        assert_ne!(wrong_token(&wrong), wrong);
    }

    #[test]
    fn unreadable_token_still_checks_the_door() {
        let auth = Auth::Unreadable("login/PASSWORD is empty".into());
        let bypass = |r: Request| match r {
            Request::EmptyToken => ok(STATS),
            _ => status(401),
        };
        let (result, asked) = run(&auth, bypass, None);
        let p = result.unwrap_err();
        let why = Some("login/PASSWORD is empty".to_string());
        assert_eq!(p, not_enforced("with an empty ?token=", why));
        assert_eq!(asked, ["without a token", "with an empty ?token="], "stops at the first open door");
        let line = p.line(T);
        assert!(line.starts_with("UNHEALTHY: authentication is not enforced"), "{line}");
        assert!(line.contains("because login/PASSWORD is empty"), "{line}");
        let (result, _) = run(&auth, protected, None);
        let line = result.unwrap_err().line(T);
        assert_eq!(line, "UNHEALTHY: no token to check with: login/PASSWORD is empty");
        let (result, _) = run(&auth, |_| Reply::NotListening("refused".into()), None);
        assert_eq!(result, Err(Problem::NotListening));
    }

    #[test]
    fn each_failure_of_the_main_request() {
        let cases: Vec<(Reply, Problem, &str)> = vec![
            (Reply::NotListening("refused".into()), Problem::NotListening, "UNHEALTHY: not listening"),
            (Reply::Timeout, Problem::Timeout, "UNHEALTHY: timeout"),
            (status(401), Problem::TokenRejected, "UNHEALTHY: token out of sync"),
            (status(500), Problem::ServerError(500), "UNHEALTHY: ComfyUI answered 500"),
            (
                status(404),
                Problem::Unexpected { status: 404, request: "with our token" },
                "UNHEALTHY: unexpected answer 404",
            ),
            (
                ok(r#"{"system": {"os": "#),
                Problem::BadJson("EOF while parsing a value at line 1 column 18".into()),
                "UNHEALTHY: /system_stats answered 200 without ComfyUI's JSON",
            ),
            (
                ok(r#"{"devices": []}"#),
                Problem::BadJson("valid JSON, but no 'system' object".into()),
                "UNHEALTHY: /system_stats answered 200 without",
            ),
            (
                Reply::Failed("connection reset".into()),
                Problem::Transport("connection reset".into()),
                "UNHEALTHY: request to 127.0.0.1:8188 failed: connection reset",
            ),
        ];
        for (reply, problem, start) in cases {
            let (result, asked) = run(&token(), |_| reply.clone(), None);
            assert_eq!(result, Err(problem.clone()), "{reply:?}");
            assert_eq!(asked.len(), 1, "stops at the first failure");
            let line = problem.line(T);
            assert!(line.starts_with(start), "{line}");
        }
        assert!(Problem::TokenRejected.line(T).contains("comfy-init sync"));
    }

    #[test]
    fn a_user_file_reached_through_a_js_path_is_an_open_door() {
        for open in [404, 200, 204] {
            let door = |r: Request| match r {
                Request::UserFile => status(open),
                r => protected(r),
            };
            let (result, _) = run(&token(), door, None);
            let line = result.unwrap_err().line(T);
            assert!(line.starts_with("UNHEALTHY: authentication is not enforced on user files"), "{line}");
            assert!(line.contains(&format!("answered {open}")) && line.contains("COMFY_INIT_COMPANION"), "{line}");
            // Without a token to check with, the open door is still the news.
            let (result, _) = run(&Auth::Unreadable("PASSWORD is empty".into()), door, None);
            assert_eq!(result, Err(Problem::UserFilesOpen(open)));
        }
        assert_eq!(judge_user_file(&status(302)), Ok(()), "a browser's redirect to /login is a refusal");
        assert_eq!(
            judge_user_file(&status(500)),
            Err(Problem::Unexpected { status: 500, request: "for a user file through a .js path, without a token" })
        );
    }

    #[test]
    fn a_redirect_to_login_is_a_refusal() {
        assert_eq!(judge_refusal(&status(302), Request::Anonymous), Ok(()));
        assert_eq!(
            judge_refusal(&status(500), Request::EmptyToken),
            Err(Problem::Unexpected { status: 500, request: "with an empty ?token=" })
        );
    }

    #[test]
    fn minimal_stats_and_hostile_strings() {
        let h = judge_stats(&ok(r#"{"system": {}}"#), Request::Anonymous).unwrap();
        assert_eq!(h.version, "(version unknown)");
        assert_eq!(h.device, None);
        let long = "x".repeat(5000);
        let body = format!(r#"{{"system": {{"comfyui_version": "a\nb{long}"}}}}"#);
        let h = judge_stats(&ok(&body), Request::Anonymous).unwrap();
        assert!(!h.version.contains('\n'));
        assert!(h.line(T).len() < 400);
    }

    #[test]
    fn gpu_is_asked_last_and_only_when_given() {
        let alive = || Ok("NVIDIA GeForce RTX 4090".to_string());
        let (result, _) = run(&token(), protected, Some(&alive));
        let line = result.unwrap().line(T);
        assert!(line.ends_with("; NVML opens NVIDIA GeForce RTX 4090"), "{line}");
        let fell_off = ProbeError::Nvml { stage: Stage::Init, failure: NvmlFailure::GpuLost, detail: "lost".into() };
        let lost = || Err(gpu::NotAlive(fell_off.clone()));
        let (result, _) = run(&token(), protected, Some(&lost));
        let line = result.unwrap_err().line(T);
        assert!(line.starts_with("UNHEALTHY: GPU lost"), "{line}");
        assert!(!line.contains('\n'));
        // ComfyUI down: the GPU is not asked, the HTTP problem is reported.
        let never = || -> Result<String, gpu::NotAlive> { panic!("asked the GPU") };
        let (result, _) = run(&token(), |_| Reply::Timeout, Some(&never));
        assert_eq!(result, Err(Problem::Timeout));
    }

    #[test]
    fn lines_stay_short() {
        let p = Problem::Config("y".repeat(10_000));
        assert!(clip(&p.line(T), MAX_LINE).len() <= MAX_LINE + 3);
        assert_eq!(clip("héllo", 2), "h...");
    }

    #[test]
    fn ready_only_while_running_with_every_node_imported_no_drain_and_a_short_queue() {
        assert!(judge_phase(Some("running")).is_ok());
        for phase in ["starting", "reloading", "restarting", "draining", "stopping", "stopped"] {
            let line = judge_phase(Some(phase)).unwrap_err().line(T);
            assert!(line.starts_with("NOT READY: ComfyUI "), "{line}");
        }
        assert!(judge_phase(None).unwrap_err().line(T).contains("no phase published"));
        let companion = |draining: bool, failed: &str, pending: u64| {
            ok(&format!(
                r#"{{"companion": 1, "draining": {draining}, "import_failed": [{failed}], "queue_running": 1, "queue_pending": {pending}}}"#
            ))
        };
        assert!(judge_status(&companion(false, "", 3), None).unwrap().starts_with("ready"));
        assert!(judge_status(&companion(false, "", 3), Some(3)).is_ok());
        let full = judge_status(&companion(false, "", 4), Some(3)).unwrap_err().line(T);
        assert!(full.contains("4 prompts wait, more than COMFY_INIT_MAX_QUEUE=3"), "{full}");
        let broken = judge_status(&companion(false, r#""ComfyUI-Broken", "x\u001b""#, 0), None).unwrap_err().line(T);
        assert!(
            broken.contains("custom nodes failed to import: ComfyUI-Broken") && !broken.contains('\u{1b}'),
            "{broken}"
        );
        assert!(judge_status(&companion(true, "", 0), None).unwrap_err().line(T).contains("draining"));
        assert!(judge_status(&status(404), None).unwrap().contains("no companion"));
        assert!(judge_status(&ok("<html>"), None).is_err());
        assert!(judge_status(&status(401), None).is_err());
    }
}
