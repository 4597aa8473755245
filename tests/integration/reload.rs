//! A new token applied in place by the companion node (companion/, installed by comfy-init into
//! custom_nodes/), proven from outside, with today's restart as the fallback. The stand-in runs
//! the companion as ComfyUI would: its prestartup_script.py first, then its __init__.py.

use std::fs;
use std::time::{Duration, Instant};

use crate::util::*;

const LONG: Duration = Duration::from_secs(20);

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).timeout(Duration::from_secs(5)).build()
}

/// POST /login as admin with `password`: where it redirects to, and the session cookie if one
/// was set.
fn web_login(ws: &Workspace, password: &str) -> (String, Option<String>) {
    post_login(ws.port, &[("username", "admin"), ("password", password)])
}

fn status_with_cookie(ws: &Workspace, cookie: &str) -> u16 {
    let url = format!("http://127.0.0.1:{}/system_stats", ws.port);
    match agent().get(&url).set("Cookie", cookie).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    }
}

/// PID 1 over the stand-in (a short start, so restarts are quick to see), serving.
fn serving(ws: &Workspace, extra: &[(&str, &str)]) -> (Running, String) {
    let mut launch = ws.launch().env("FAKE_COMFYUI_START_DELAY", "0.3");
    for (k, v) in extra {
        launch = launch.env(k, v);
    }
    let init = launch.start();
    assert!(init.until(LONG, || ws.status(None) == 401), "ComfyUI never came up: {}", init.stderr());
    let token = ws.token();
    assert_eq!(ws.status(Some(&token)), 200);
    (init, token)
}

/// Waits until `password`'s token is served; returns it and how long that took.
fn new_token_served(ws: &Workspace, init: &Running, password: &str) -> (String, Duration) {
    let t0 = Instant::now();
    let served = init.until(LONG, || {
        let t = ws.token();
        bcrypt::verify(password, &t).unwrap_or(false) && ws.status(Some(&t)) == 200
    });
    assert!(served, "the new token never answered: {}", init.stderr());
    (ws.token(), t0.elapsed())
}

/// What a user sees after a reload: same ComfyUI, new token in, old token and cookie out.
fn assert_reloaded(ws: &Workspace, init: &Running, old: &str, new: &str, pid: i64) {
    assert_eq!(ws.comfyui_pid(new), Some(pid), "ComfyUI was restarted: {}", init.stderr());
    assert_eq!(ws.starts(), 1, "ComfyUI started again");
    assert_eq!(ws.status(Some(old)), 401, "the old token still works");
    // PID 1 logs its proof a moment after the new token answers (its probe follows the reload):
    // the CI run read the log in between.
    let proven = init.until(LONG, || init.stderr().contains("no restart needed"));
    assert!(proven, "the reload was never proven: {}", init.stderr());
}

fn assert_no_token_in(text: &str, tokens: &[&str], what: &str) {
    for t in tokens {
        assert!(!text.contains(t), "the token is in {what}:\n{text}");
    }
}

#[test]
fn a_new_password_in_env_is_reloaded_in_place_sessions_end_and_requests_in_flight_finish() {
    root_only!("a_new_password_in_env_is_reloaded_in_place_sessions_end_and_requests_in_flight_finish");
    let ws = Workspace::new("rl-env");
    write(&ws.env_file(), "COMFYUI_PASSWORD=first-pass\n");
    let (init, old) = serving(&ws, &[]);
    let pid = ws.comfyui_pid(&old).unwrap();
    assert!(ws.comfyui().join("custom_nodes/comfy-init-companion/__init__.py").exists());
    let (_, cookie) = web_login(&ws, "first-pass");
    let cookie = cookie.expect("a session cookie");
    assert_eq!(status_with_cookie(&ws, &cookie), 200);

    // A request in flight across the change.
    let slow_url = format!("http://127.0.0.1:{}/slow?seconds=1.5", ws.port);
    let bearer = format!("Bearer {old}");
    let slow = std::thread::spawn(move || {
        agent().get(&slow_url).set("Authorization", &bearer).call().ok().map(|r| r.status())
    });
    std::thread::sleep(Duration::from_millis(200));

    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=second-pass");
    let (new, took) = new_token_served(&ws, &init, "second-pass");
    eprintln!("save -> new token 200 in {took:?}, same ComfyUI");
    assert_reloaded(&ws, &init, &old, &new, pid);
    assert_eq!(status_with_cookie(&ws, &cookie), 401, "an old browser session survived");
    assert_eq!(web_login(&ws, "first-pass").0, "/login?wrong_password=1", "the old password still logs in");
    assert_eq!(web_login(&ws, "second-pass").0, "/", "the new password does not log in");
    assert_eq!(slow.join().unwrap(), Some(200), "the request in flight was cut");
}

#[test]
fn rotate_and_a_kubernetes_secret_swap_are_reloaded_in_place() {
    root_only!("rotate_and_a_kubernetes_secret_swap_are_reloaded_in_place");
    let ws = Workspace::new("rl-rotate");
    write(&ws.env_file(), "COMFYUI_PASSWORD=first-pass\n");
    let (init, old) = serving(&ws, &[]);
    let pid = ws.comfyui_pid(&old).unwrap();
    let (code, _, err) = ws.cli(&["rotate"]);
    assert_eq!(code, 0, "{err}");
    let password = dotenvy::from_path_iter(ws.env_file())
        .unwrap()
        .flatten()
        .find(|(k, _)| k == "COMFYUI_PASSWORD")
        .map(|(_, v)| v)
        .unwrap();
    let (new, _) = new_token_served(&ws, &init, &password);
    assert_reloaded(&ws, &init, &old, &new, pid);
    drop(init);

    // A Secret volume: the file is a link through `..data`, swapped atomically.
    let ws = Workspace::new("rl-secret");
    let secrets = ws.dir.join("secrets");
    fs::create_dir_all(secrets.join("..v1")).unwrap();
    write(&secrets.join("..v1/password"), "secret-one\n");
    std::os::unix::fs::symlink("..v1", secrets.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/password", secrets.join("password")).unwrap();
    let ws = ws.set("COMFYUI_PASSWORD_FILE", secrets.join("password"));
    let (init, old) = serving(&ws, &[]);
    let pid = ws.comfyui_pid(&old).unwrap();
    fs::create_dir_all(secrets.join("..v2")).unwrap();
    write(&secrets.join("..v2/password"), "secret-two\n");
    std::os::unix::fs::symlink("..v2", secrets.join("..data_tmp")).unwrap();
    fs::rename(secrets.join("..data_tmp"), secrets.join("..data")).unwrap();
    let (new, _) = new_token_served(&ws, &init, "secret-two");
    assert_reloaded(&ws, &init, &old, &new, pid);
}

#[test]
fn a_reload_signal_that_comes_while_comfyui_writes_its_log_is_applied_in_place() {
    // Python runs a signal handler in the main thread, which in ComfyUI is the event loop and is
    // often inside a write to its log, holding a lock that is not reentrant: a handler that logs
    // would wait for itself forever. The stand-in's main thread holds that lock nearly always.
    root_only!("a_reload_signal_that_comes_while_comfyui_writes_its_log_is_applied_in_place");
    let ws = Workspace::new("rl-locked");
    write(&ws.env_file(), "COMFYUI_PASSWORD=first-pass\n");
    let (mut init, old) = serving(&ws, &[("FAKE_COMFYUI_MAIN_THREAD_WRITING", "1")]);
    let pid = ws.comfyui_pid(&old).unwrap();
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=second-pass");
    let (new, took) = new_token_served(&ws, &init, "second-pass");
    eprintln!("reload while the main thread writes its log -> new token 200 in {took:?}");
    assert_reloaded(&ws, &init, &old, &new, pid);
    let said = init.until(LONG, || init.stdout().contains("ComfyUI-Login now uses the new token"));
    assert!(said, "the reload never finished (its log line): {}", init.stdout());
    // The main thread is free: ComfyUI still stops cleanly.
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0), "{}", init.stderr());
    assert!(init.stdout().contains("Stopped server"), "{}", init.stdout());
}

#[test]
fn without_the_companion_a_new_password_restarts_comfyui() {
    root_only!("without_the_companion_a_new_password_restarts_comfyui");
    let ws = Workspace::new("rl-off");
    write(&ws.env_file(), "COMFYUI_PASSWORD=first-pass\n");
    let (init, old) = serving(&ws, &[("COMFY_INIT_COMPANION", "off")]);
    assert!(!ws.comfyui().join("custom_nodes/comfy-init-companion").exists(), "installed anyway");
    let pid = ws.comfyui_pid(&old).unwrap();
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=second-pass");
    let (new, _) = new_token_served(&ws, &init, "second-pass");
    assert_ne!(ws.comfyui_pid(&new), Some(pid), "not restarted");
    let err = init.stderr();
    assert!(err.contains("restarting ComfyUI") && !err.contains("to reload it"), "{err}");
    let events = fs::read_to_string(ws.events_file()).unwrap();
    assert!(!events.contains("signal SIGRTMIN"), "a reload signal was sent: {events}");
}

#[test]
fn a_companion_that_cannot_reload_gets_a_restart_within_the_proof_deadline() {
    root_only!("a_companion_that_cannot_reload_gets_a_restart_within_the_proof_deadline");
    let ws = Workspace::new("rl-ignored");
    write(&ws.env_file(), "COMFYUI_PASSWORD=first-pass\n");
    let (init, old) = serving(&ws, &[("FAKE_COMFYUI_IGNORE_RELOAD", "1")]);
    let pid = ws.comfyui_pid(&old).unwrap();
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=second-pass");
    let (new, took) = new_token_served(&ws, &init, "second-pass");
    eprintln!("unproven reload -> restart -> new token 200 in {took:?}");
    assert_ne!(ws.comfyui_pid(&new), Some(pid), "not restarted");
    // The proof deadline (5 s), the stop (0.3 s), the start (0.3 s), and the debounce and hash;
    // time is printed, not asserted (a loaded machine is slower).
    assert!(init.stderr().contains("reload of the token abandoned"), "{}", init.stderr());
}

#[test]
fn the_token_is_in_no_log_line_at_start_or_after_a_reload() {
    root_only!("the_token_is_in_no_log_line_at_start_or_after_a_reload");
    let ws = Workspace::new("rl-redact");
    write(&ws.env_file(), "COMFYUI_PASSWORD=first-pass\n");
    let (init, old) = serving(&ws, &[]);
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=second-pass");
    let (new, _) = new_token_served(&ws, &init, "second-pass");
    let url = format!("http://127.0.0.1:{}/internal/logs?token={new}", ws.port);
    let logs = agent().get(&url).call().unwrap().into_string().unwrap();
    assert!(logs.contains("For direct API calls, use token=<token redacted by comfy-init>"), "{logs}");
    assert_no_token_in(&logs, &[&old, &new], "/internal/logs");
    assert_no_token_in(&init.stdout(), &[&old, &new], "ComfyUI's output");
    assert_no_token_in(&init.stderr(), &[&old, &new], "comfy-init's log");
}

#[test]
fn a_read_only_custom_nodes_is_a_warning_and_a_new_password_restarts() {
    root_only!("a_read_only_custom_nodes_is_a_warning_and_a_new_password_restarts");
    let ws = Workspace::new("rl-ro");
    write(&ws.env_file(), "COMFYUI_PASSWORD=first-pass\n");
    let nodes = ws.comfyui().join("custom_nodes");
    // ComfyUI-Login with its key already there: on a read-only custom_nodes it could not write one.
    let key = nodes.join("ComfyUI-Login/.secret-key.txt");
    fs::create_dir_all(key.parent().unwrap()).unwrap();
    let now = std::process::Command::new("date").arg("+%Y-%m-%dT%H:%M:%S").output().unwrap().stdout;
    write(&key, &format!("c2VjcmV0LWtleS1mb3ItdGhlLXRlc3Q=,{}", String::from_utf8_lossy(&now).trim()));
    let n = nodes.display();
    // A private mount namespace where custom_nodes is bound read-only, then PID 1 as usual.
    let script = format!("mount --bind {n} {n} && mount -o remount,bind,ro {n} && exec \"$@\"");
    let launch = ws.launch().prefix(&["unshare", "--mount", "sh", "-c", &script, "sh"]);
    let init = launch.env("FAKE_COMFYUI_START_DELAY", "0.3").start();
    assert!(init.until(LONG, || ws.status(None) == 401), "ComfyUI never came up: {}", init.stderr());
    assert!(init.stderr().contains("the companion node is not installed"), "{}", init.stderr());
    let old = ws.token();
    let pid = ws.comfyui_pid(&old).unwrap();
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=second-pass");
    let (new, _) = new_token_served(&ws, &init, "second-pass");
    assert_ne!(ws.comfyui_pid(&new), Some(pid), "not restarted");
    assert!(init.stderr().contains("old browser sessions stay logged in"), "{}", init.stderr());
}

#[test]
fn a_missing_comfyui_folder_still_fails_closed_and_is_not_created() {
    let ws = Workspace::new("rl-nodir");
    let nope = ws.dir.join("nope");
    let ws = ws.set("COMFYUI_DIR", &nope);
    let (code, _, err) = ws.launch().not_pid1().output(LONG);
    assert_eq!(code, 78, "{err}");
    assert!(!nope.exists(), "COMFYUI_DIR was created (by the companion's install?)");
}

/// (process group, the terminal's foreground group) of `pid`, from /proc (fields 5 and 8).
fn groups(pid: i64) -> (i64, i64) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after: Vec<i64> =
        stat[stat.rfind(')').unwrap() + 2..].split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    (after[2], after[5])
}

/// Kills what a test started under script(1) when it ends, passed or failed: comfy-init does
/// not die of the terminal's hangup, and a leftover would keep running.
struct Killed(std::process::Child, Vec<i32>);

impl Drop for Killed {
    fn drop(&mut self) {
        for pid in &self.1 {
            // SAFETY: signals to processes this test started.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn after_a_reload_the_terminal_still_belongs_to_comfyui() {
    // `docker run -it`: the reload probe, a child of its own, must not take the terminal's
    // foreground, or Ctrl-C reaches nobody once it exits. script(1) gives comfy-init a terminal.
    let ws = Workspace::new("rl-tty").set("FAKE_COMFYUI_START_DELAY", "0.3");
    write(&ws.env_file(), "COMFYUI_PASSWORD=first-pass\n");
    let inner = format!("{} run", bin().display());
    let script = std::process::Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .envs(ws.env())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("script(1) from util-linux");
    let mut started = Killed(script, vec![]);
    let served = wait_until(LONG, &mut || ws.status(None) == 401 && ws.comfyui_pid(&ws.token()).is_some());
    assert!(served, "ComfyUI never served");
    let pid = ws.comfyui_pid(&ws.token()).unwrap();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let init: i32 = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().nth(1).unwrap().parse().unwrap();
    started.1 = vec![init, pid as i32];
    let (pgid, foreground) = groups(pid);
    assert_eq!(pgid, foreground, "ComfyUI's group did not get the terminal at start");
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=second-pass");
    let reloaded = wait_until(LONG, &mut || {
        let t = ws.token();
        bcrypt::verify("second-pass", &t).unwrap_or(false) && ws.status(Some(&t)) == 200
    });
    assert!(reloaded, "the new password was never served");
    std::thread::sleep(Duration::from_millis(300)); // the probe has exited
    assert_eq!(ws.comfyui_pid(&ws.token()), Some(pid), "reloaded in place, not restarted");
    assert_eq!(groups(pid), (pgid, pgid), "after the reload the terminal's foreground is not ComfyUI's");
}
