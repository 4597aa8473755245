//! Fidelity to the real ComfyUI-Login, through the stand-in that behaves like it (see the
//! docstring of tests/fixtures/fake_comfyui.py): session cookies keyed by the node's own folder,
//! the CORS origin rule, guest mode. These run without root: comfy-init supervises as a child
//! subreaper.

use std::fs;
use std::time::Duration;

use crate::util::*;

const LONG: Duration = Duration::from_secs(20);

/// What makes a folder ComfyUI-Login for comfy-init and for the stand-in: a `password.py` that
/// keeps its session key in its own folder (the real node's line, no more).
fn install_login_node(ws: &Workspace, folder: &str) {
    let dir = ws.comfyui().join("custom_nodes").join(folder);
    fs::create_dir_all(&dir).unwrap();
    write(&dir.join("password.py"), "secret_key_path = os.path.join(node_dir, '.secret-key.txt')\n");
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).timeout(Duration::from_secs(3)).build()
}

/// GET `path` with a cookie, as an API client would (no text/html in Accept): the status.
fn get_with_cookie(ws: &Workspace, path: &str, cookie: &str) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}{path}", ws.port);
    match agent().get(&url).set("Cookie", cookie).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

fn serving(ws: &Workspace, launch: Launch) -> Running {
    let init = launch.not_pid1().start();
    assert!(init.until(LONG, || ws.status(None) == 401), "ComfyUI never came up: {}", init.stderr());
    init
}

fn healthcheck(ws: &Workspace, extra: &[(&str, &str)]) -> Output {
    let env = ws.env().into_iter().chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    comfy_init(&["healthcheck"], env, LONG)
}

#[test]
fn a_password_change_ends_cookie_sessions_whatever_the_node_folder_is_called() {
    let ws = Workspace::new("fid-sessions");
    install_login_node(&ws, "comfyui-login");
    write(&ws.env_file(), "COMFYUI_PASSWORD=first-pass\n");
    let init = serving(&ws, ws.launch().env("FAKE_COMFYUI_START_DELAY", "0.3"));
    let key = ws.comfyui().join("custom_nodes/comfyui-login/.secret-key.txt");
    assert!(key.exists(), "the stand-in keeps its key in its own folder");
    let cookie = session(ws.port, &[("username", "admin"), ("password", "first-pass")]);
    assert_eq!(get_with_cookie(&ws, "/system_stats", &cookie).0, 200);

    // A restart alone keeps sessions (the key file stays): ComfyUI-Manager's restart button.
    let token = ws.token();
    let old_pid = ws.comfyui_pid(&token).unwrap();
    let url = format!("http://127.0.0.1:{}/manager/reboot", ws.port);
    agent().post(&url).set("Cookie", &cookie).call().expect("reboot");
    assert!(init.until(LONG, || ws.comfyui_pid(&token).is_some_and(|p| p != old_pid)), "{}", init.stderr());
    assert_eq!(get_with_cookie(&ws, "/system_stats", &cookie).0, 200, "a plain restart logged the user out");

    // A new password ends them: the key in comfyui-login/ is deleted before the restart.
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=second-pass");
    let restarted = || {
        let t = ws.token();
        bcrypt::verify("second-pass", &t).unwrap_or(false) && ws.status(Some(&t)) == 200
    };
    assert!(init.until(LONG, restarted), "{}", init.stderr());
    assert!(init.stderr().contains(&format!("{}: deleted (old browser sessions end)", key.display())));
    assert_eq!(get_with_cookie(&ws, "/system_stats", &cookie).0, 401, "the old cookie still works");
}

#[test]
fn the_healthcheck_sends_the_cors_origin_comfyui_was_given() {
    let ws = Workspace::new("fid-cors").set("COMFYUI_ARGS", "--enable-cors-header https://app.example.com");
    write(&ws.env_file(), "COMFYUI_PASSWORD=cors-pass\n");
    let _init = serving(&ws, ws.launch());
    // The node's rule: without that Origin, even the right token is refused.
    assert_eq!(ws.status(Some(&ws.token())), 401);
    let check = healthcheck(&ws, &[]);
    assert_eq!(check.code, Some(0), "{check:?}");
    assert!(check.line().starts_with("healthy:") && check.line().contains("auth enforced"), "{check:?}");
}

#[test]
fn with_a_cors_origin_a_comfyui_without_auth_is_still_unhealthy() {
    let ws = Workspace::new("fid-cors-off")
        .set("COMFYUI_ARGS", "--enable-cors-header https://app.example.com")
        .set("FAKE_COMFYUI_NO_AUTH", "1");
    write(&ws.env_file(), "COMFYUI_PASSWORD=cors-pass\n");
    let init = ws.launch().not_pid1().start();
    assert!(init.until(LONG, || ws.status(None) == 200), "{}", init.stderr());
    let check = healthcheck(&ws, &[]);
    assert_eq!(check.code, Some(1), "{check:?}");
    assert!(check.line().contains("authentication is not enforced"), "{check:?}");
}

/// Without the companion node (it redacts the token, see reload.rs) the token is in the log.
#[test]
fn guest_mode_is_said_at_start_and_in_the_healthcheck_and_its_token_leak_is_real() {
    let ws = Workspace::new("fid-guest").set("COMFY_INIT_COMPANION", "off");
    write(&ws.env_file(), "COMFYUI_PASSWORD=guest-pass\n");
    let guest_file = ws.comfyui().join("login/GUEST_MODE");
    fs::create_dir_all(guest_file.parent().unwrap()).unwrap();
    write(&guest_file, "");
    let init = serving(&ws, ws.launch());
    let err = init.stderr();
    assert!(err.contains(&format!("{} exists: ComfyUI-Login's guest mode is on", guest_file.display())), "{err}");
    assert!(err.contains("/internal/logs") && err.contains("Remove"), "{err}");

    // Without the companion the node's `.js` door is open too: that is the healthcheck's verdict.
    let check = healthcheck(&ws, &[]);
    assert_eq!(check.code, Some(1), "{check:?}");
    assert!(check.line().contains("not enforced on user files"), "{check:?}");

    // What the warning is about: an anonymous guest reads the admin token from the log.
    let cookie = session(ws.port, &[("username", ""), ("password", ""), ("guest_mode", "1")]);
    let (status, logs) = get_with_cookie(&ws, "/internal/logs", &cookie);
    assert_eq!(status, 200);
    assert!(logs.contains(&format!("use token={}", ws.token())), "{logs}");
}

#[test]
fn with_the_companion_a_guest_finds_no_token_in_the_log_and_the_warning_says_less() {
    let ws = Workspace::new("fid-guest-redacted");
    write(&ws.env_file(), "COMFYUI_PASSWORD=guest-pass\n");
    let guest_file = ws.comfyui().join("login/GUEST_MODE");
    fs::create_dir_all(guest_file.parent().unwrap()).unwrap();
    write(&guest_file, "");
    let init = serving(&ws, ws.launch());
    assert!(init.stderr().contains("guest mode is on") && !init.stderr().contains("/internal/logs"));
    let check = healthcheck(&ws, &[]);
    assert!(check.line().contains("WARNING guest mode on (login/GUEST_MODE): anyone can run prompts"));
    assert!(!check.line().contains("read the token"), "{check:?}");
    let cookie = session(ws.port, &[("username", ""), ("password", ""), ("guest_mode", "1")]);
    let (_, logs) = get_with_cookie(&ws, "/internal/logs", &cookie);
    assert!(!logs.contains(&ws.token()) && logs.contains("token=<token redacted by comfy-init>"), "{logs}");
}

#[test]
fn guest_mode_refused_stops_the_start_naming_the_file() {
    let ws = Workspace::new("fid-guest-refuse").set("COMFY_INIT_GUEST_MODE", "refuse");
    write(&ws.env_file(), "COMFYUI_PASSWORD=guest-pass\n");
    let guest_file = ws.comfyui().join("login/GUEST_MODE");
    fs::create_dir_all(guest_file.parent().unwrap()).unwrap();
    write(&guest_file, "");
    let (code, _, err) = ws.launch().not_pid1().output(LONG);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains(&guest_file.display().to_string()) && err.contains("ComfyUI not started"), "{err}");
    assert_eq!(ws.starts(), 0, "the stand-in ran");
    let check = healthcheck(&ws, &[]);
    assert_eq!(check.code, Some(1), "{check:?}");
    assert!(check.line().contains("guest mode is on"), "{check:?}");
}

#[test]
fn the_websocket_needs_the_token_like_every_other_route() {
    let ws = Workspace::new("fid-ws");
    write(&ws.env_file(), "COMFYUI_PASSWORD=ws-pass\n");
    let _init = serving(&ws, ws.launch());
    let url = format!("http://127.0.0.1:{}/ws", ws.port);
    // (status, Sec-WebSocket-Accept) of a websocket upgrade request.
    let upgrade = |url: &str| {
        let answer = agent()
            .get(url)
            .set("Connection", "Upgrade")
            .set("Upgrade", "websocket")
            .set("Sec-WebSocket-Version", "13")
            .set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .call();
        match answer {
            Ok(r) => (r.status(), r.header("Sec-WebSocket-Accept").map(String::from)),
            Err(ureq::Error::Status(code, _)) => (code, None),
            Err(e) => panic!("GET /ws: {e}"),
        }
    };
    assert_eq!(upgrade(&url).0, 401);
    let (status, accept) = upgrade(&format!("{url}?token={}", ws.token()));
    assert_eq!(status, 101);
    assert_eq!(accept.as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
}

#[test]
fn flags_after_the_image_name_reach_comfyuis_command_line() {
    let ws = Workspace::new("fid-flags");
    write(&ws.env_file(), "COMFYUI_PASSWORD=flags-pass\n");
    let mut launch = ws.launch();
    launch.args = ["--cpu", "--preview-method", "auto"].map(String::from).to_vec();
    let _init = serving(&ws, launch);
    let (_, body) = ws.get(Some(&ws.token()));
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    let argv: Vec<&str> = stats["system"]["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let port = ws.port.to_string();
    assert_eq!(argv[1..], ["--listen", "0.0.0.0", "--port", &port, "--cpu", "--preview-method", "auto"], "{argv:?}");
}

#[test]
fn a_cors_origin_given_after_the_image_name_reaches_the_healthcheck_too() {
    root_only!("a_cors_origin_given_after_the_image_name_reaches_the_healthcheck_too");
    let ws = Workspace::new("fid-cors-flag");
    write(&ws.env_file(), "COMFYUI_PASSWORD=cors-pass\n");
    let mut launch = ws.launch();
    launch.args = ["--enable-cors-header", "https://app.example.com"].map(String::from).to_vec();
    let init = launch.start();
    assert!(init.until(LONG, || ws.status(None) == 401), "{}", init.stderr());
    // The healthcheck as Docker runs it: inside the container, where PID 1 is comfy-init.
    let mut cmd = std::process::Command::new("nsenter");
    scrub_env(&mut cmd);
    let pid = init.init_pid().to_string();
    let out = cmd
        .args(["--target", &pid, "--pid", "--mount", "--"])
        .arg(bin())
        .arg("healthcheck")
        .envs(ws.env())
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{line}");
    assert!(line.starts_with("healthy:"), "{line}");
}
