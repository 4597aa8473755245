//! The production lifecycle (issue 24): a stop lets the running prompt finish while new ones are
//! refused, readiness is not liveness, and a start that can never work is not retried.

use std::fs;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::util::*;

const LONG: Duration = Duration::from_secs(20);

/// A workspace with a password, whose stops drain for up to 30 s.
fn draining_workspace(tag: &str) -> Workspace {
    let ws = Workspace::new(tag).set("COMFY_INIT_DRAIN_TIMEOUT", "30s");
    write(&ws.env_file(), "COMFYUI_PASSWORD=drain-pass\n");
    ws
}

/// Waits until ComfyUI answers its token and the companion announced itself; returns the token.
fn serving(ws: &Workspace, init: &Running) -> String {
    let mut token = String::new();
    let up = init.until(LONG, || {
        let (code, out, _) = ws.cli(&["token"]);
        token = out.trim().to_string();
        code == 0 && ws.status(Some(&token)) == 200 && ws.cli(&["healthcheck", "--ready"]).0 == 0
    });
    assert!(up, "ComfyUI never became ready: {}", init.stderr());
    token
}

/// POST /prompt with a stand-in prompt that runs `seconds`: (status, prompt_id).
fn queue_prompt(ws: &Workspace, token: &str, seconds: f64) -> (u16, String) {
    let body = serde_json::json!({
        "prompt": {"1": {"class_type": "StandinSleep", "inputs": {"seconds": seconds}}},
        "client_id": "lifecycle-test"
    });
    let request = ureq::post(&format!("http://127.0.0.1:{}/prompt", ws.port))
        .set("Authorization", &format!("Bearer {token}"))
        .set("Content-Type", "application/json")
        .timeout(Duration::from_secs(5));
    match request.send_string(&body.to_string()) {
        Ok(r) => {
            let v: serde_json::Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
            (200, v["prompt_id"].as_str().unwrap_or_default().to_string())
        }
        Err(ureq::Error::Status(code, _)) => (code, String::new()),
        Err(e) => panic!("POST /prompt: {e}"),
    }
}

fn events(ws: &Workspace) -> String {
    fs::read_to_string(ws.events_file()).unwrap_or_default()
}

fn running_prompt(ws: &Workspace, init: &Running, id: &str) {
    let started = init.until(LONG, || events(ws).contains(&format!("prompt_started {id}")));
    assert!(started, "the prompt never started: {}", events(ws));
}

#[test]
fn a_stop_during_a_prompt_lets_the_queue_finish_and_refuses_new_prompts_meanwhile() {
    root_only!("a_stop_during_a_prompt_lets_the_queue_finish_and_refuses_new_prompts_meanwhile");
    let ws = draining_workspace("lc-drain");
    let mut init = ws.launch().start();
    let token = serving(&ws, &init);
    let (code, id) = queue_prompt(&ws, &token, 3.0);
    assert_eq!(code, 200);
    running_prompt(&ws, &init, &id);
    // Taken before the stop, waiting behind it: not lost either.
    let (_, waiting) = queue_prompt(&ws, &token, 0.5);
    let asked = Instant::now();
    init.signal(libc::SIGTERM);
    let draining = init.until(LONG, || init.stderr().contains("draining: ComfyUI refuses new prompts (503)"));
    assert!(draining, "{}", init.stderr());
    assert_eq!(queue_prompt(&ws, &token, 0.0).0, 503, "a new prompt was taken while draining");
    let (ready, line, _) = ws.cli(&["healthcheck", "--ready"]);
    assert_ne!(ready, 0, "ready while draining: {line}");
    assert_eq!(init.wait(LONG), Some(0), "{}", init.stderr());
    eprintln!("SIGTERM during a 3 s prompt -> exit in {:?}", asked.elapsed());
    let log = events(&ws);
    assert!(log.contains(&format!("prompt_done {id}")), "the running prompt was dropped: {log}");
    assert!(log.contains(&format!("prompt_done {waiting}")), "the waiting prompt was dropped: {log}");
    assert!(!log.contains("prompt_dropped"), "{log}");
}

#[test]
fn a_second_stop_during_a_drain_stops_at_once() {
    root_only!("a_second_stop_during_a_drain_stops_at_once");
    let ws = draining_workspace("lc-twice");
    let mut init = ws.launch().start();
    let token = serving(&ws, &init);
    let (_, id) = queue_prompt(&ws, &token, 60.0);
    running_prompt(&ws, &init, &id);
    init.signal(libc::SIGTERM);
    assert!(init.until(LONG, || init.stderr().contains("draining: ComfyUI refuses")), "{}", init.stderr());
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0), "{}", init.stderr());
    assert!(init.stderr().contains("second stop request: not waiting for the queue"), "{}", init.stderr());
    assert!(events(&ws).contains(&format!("prompt_dropped {id}")), "{}", events(&ws));
}

#[test]
fn without_a_drain_timeout_a_stop_drops_the_running_prompt_as_before() {
    root_only!("without_a_drain_timeout_a_stop_drops_the_running_prompt_as_before");
    let ws = Workspace::new("lc-nodrain");
    write(&ws.env_file(), "COMFYUI_PASSWORD=drain-pass\n");
    let mut init = ws.launch().start();
    let token = serving(&ws, &init);
    let (_, id) = queue_prompt(&ws, &token, 60.0);
    running_prompt(&ws, &init, &id);
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0), "{}", init.stderr());
    assert!(!init.stderr().contains("draining"), "{}", init.stderr());
    assert!(events(&ws).contains(&format!("prompt_dropped {id}")), "{}", events(&ws));
}

#[test]
fn readiness_is_not_liveness() {
    root_only!("readiness_is_not_liveness");
    let ws = Workspace::new("lc-ready").set("FAKE_COMFYUI_START_DELAY", "2");
    write(&ws.env_file(), "COMFYUI_PASSWORD=ready-pass\n");
    // A custom node that cannot import: ComfyUI runs, but should get no traffic.
    let broken = ws.comfyui().join("custom_nodes/ComfyUI-Broken");
    fs::create_dir_all(&broken).unwrap();
    write(&broken.join("__init__.py"), "raise ImportError('no module named nonexistent_dependency')\n");
    let init = ws.launch().start();
    let starting =
        init.until(LONG, || ws.cli(&["healthcheck", "--ready"]).1.contains("NOT READY: ComfyUI is starting"));
    assert!(starting, "never seen starting: {}", init.stderr());
    let alive = init.until(LONG, || ws.cli(&["healthcheck"]).0 == 0);
    assert!(alive, "{}", init.stderr());
    let (code, line, _) = ws.cli(&["healthcheck", "--ready"]);
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("NOT READY: custom nodes failed to import: ComfyUI-Broken"), "{line}");
    fs::remove_dir_all(&broken).unwrap();
}

#[test]
fn ready_when_running_and_its_line_says_what_it_proved() {
    root_only!("ready_when_running_and_its_line_says_what_it_proved");
    let ws = Workspace::new("lc-ready-ok").set("COMFY_INIT_MAX_QUEUE", "0");
    write(&ws.env_file(), "COMFYUI_PASSWORD=ready-pass\n");
    let init = ws.launch().start();
    let token = serving(&ws, &init);
    let (code, line, _) = ws.cli(&["healthcheck", "--ready"]);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("ready: no custom node reported IMPORT FAILED, 0 prompts waiting; healthy"), "{line}");
    // One running and one waiting: more than COMFY_INIT_MAX_QUEUE=0 wait.
    let (_, first) = queue_prompt(&ws, &token, 30.0);
    running_prompt(&ws, &init, &first);
    queue_prompt(&ws, &token, 0.0);
    let (code, line, _) = ws.cli(&["healthcheck", "--ready"]);
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("1 prompts wait, more than COMFY_INIT_MAX_QUEUE=0"), "{line}");
    assert_eq!(ws.cli(&["healthcheck"]).0, 0, "liveness does not care about the queue");
}

/// How many times comfy-init started the stand-in.
fn starts(init: &Running) -> usize {
    init.stderr().lines().filter(|l| l.contains("INFO  started ")).count()
}

#[test]
fn an_assets_database_in_use_ends_the_start_with_one_line_and_no_restart_loop() {
    root_only!("an_assets_database_in_use_ends_the_start_with_one_line_and_no_restart_loop");
    let ws = Workspace::new("lc-assets").set("FAKE_COMFYUI_ASSETS_FAIL", "in_use");
    write(&ws.env_file(), "COMFYUI_PASSWORD=assets-pass\n");
    let mut init = ws.launch().start();
    assert_eq!(init.wait(LONG), Some(1), "{}", init.stderr());
    let err = init.stderr();
    assert!(err.contains("another ComfyUI is already using its assets database"), "{err}");
    assert!(err.contains("--disable-assets") && err.contains("--user-directory"), "{err}");
    assert_eq!(starts(&init), 1, "restarted: {err}");
}

#[test]
fn a_taken_port_ends_the_start_with_one_line_and_no_restart_loop() {
    root_only!("a_taken_port_ends_the_start_with_one_line_and_no_restart_loop");
    let ws = Workspace::new("lc-port");
    write(&ws.env_file(), "COMFYUI_PASSWORD=port-pass\n");
    let _taken = TcpListener::bind(("127.0.0.1", ws.port)).unwrap();
    let mut init = ws.launch().start();
    assert_eq!(init.wait(LONG), Some(1), "{}", init.stderr());
    let err = init.stderr();
    assert!(err.contains(&format!("port {} is already in use", ws.port)) && err.contains("COMFYUI_PORT"), "{err}");
    assert_eq!(starts(&init), 1, "restarted: {err}");
}

#[test]
fn the_watchdog_restarts_a_comfyui_that_stops_answering() {
    root_only!("the_watchdog_restarts_a_comfyui_that_stops_answering");
    let ws = Workspace::new("lc-watchdog")
        .set("COMFY_INIT_WATCHDOG", "1s")
        .set("COMFY_INIT_WATCHDOG_FAILURES", "2")
        .set("COMFY_INIT_HEALTH_TIMEOUT", "1s")
        .set("COMFY_INIT_STOP_TIMEOUT", "1s");
    write(&ws.env_file(), "COMFYUI_PASSWORD=watch-pass\n");
    let init = ws.launch().start();
    let token = serving(&ws, &init);
    let before = ws.comfyui_pid(&token).unwrap();
    // Its pid outside the namespace: PID 1's child that runs main.py.
    let is_comfyui =
        |pid: i32| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.windows(7).any(|w| w == b"main.py"));
    let hung = children_of(init.init_pid()).into_iter().map(|p| p.pid).find(|p| is_comfyui(*p)).unwrap();
    // Let the watchdog see it alive at least once (it arms on a first success), then freeze it:
    // a deadlocked node or a wedged CUDA call looks the same from outside.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!init.stderr().contains("watchdog:"), "a healthy ComfyUI was reported: {}", init.stderr());
    // SAFETY: a signal to the stand-in this test's comfy-init started.
    unsafe { libc::kill(hung, libc::SIGSTOP) };
    let restarted = init.until(LONG, || ws.comfyui_pid(&token).is_some_and(|pid| pid != before));
    let err = init.stderr();
    assert!(restarted, "not restarted: {err}");
    assert!(err.contains("WARN  watchdog: UNHEALTHY: timeout"), "the probe's reason is not in the log: {err}");
    assert!(err.contains("watchdog: ComfyUI failed its liveness check (1 of 2 in a row)"), "{err}");
    assert!(err.contains("failed 2 liveness checks in a row: restarting it"), "{err}");
    assert!(!err.contains("healthy: ComfyUI"), "a healthy check was logged: {err}");
}

#[test]
fn the_manager_v2_restart_restarts_comfyui_at_once() {
    // ComfyUI-Manager as a pip package (`--enable-manager`): POST /v2/manager/reboot writes the
    // same `<session>.reboot` marker and exits 0.
    root_only!("the_manager_v2_restart_restarts_comfyui_at_once");
    let ws = Workspace::new("lc-reboot-v2");
    let tmp = ws.dir.join("tmp"); // the session's folder: not shared with parallel tests
    fs::create_dir(&tmp).unwrap();
    write(&ws.env_file(), "COMFYUI_PASSWORD=reboot-pass\n");
    let init = ws.launch().env("TMPDIR", &tmp).start();
    let token = serving(&ws, &init);
    let before = ws.comfyui_pid(&token).unwrap();
    let url = format!("http://127.0.0.1:{}/v2/manager/reboot", ws.port);
    let answer = ureq::post(&url).set("Authorization", &format!("Bearer {token}")).call();
    assert_eq!(answer.map(|r| r.status()).ok(), Some(200));
    let back = init.until(LONG, || ws.comfyui_pid(&token).is_some_and(|pid| pid != before));
    let err = init.stderr();
    assert!(back && err.contains("asked for a restart"), "{err}");
    assert!(!err.contains("restarting in"), "a backoff delay for a Manager restart: {err}");
}

#[test]
fn a_comfyui_that_handles_sigterm_stops_cleanly_with_it() {
    // Newer ComfyUI turns SIGTERM into its clean stop (stop_on_sigterm): COMFY_INIT_STOP_SIGNAL=
    // SIGTERM then stops it as cleanly as SIGINT does the older ones.
    root_only!("a_comfyui_that_handles_sigterm_stops_cleanly_with_it");
    let ws =
        Workspace::new("lc-sigterm").set("FAKE_COMFYUI_SIGTERM", "interrupt").set("COMFY_INIT_STOP_SIGNAL", "SIGTERM");
    write(&ws.env_file(), "COMFYUI_PASSWORD=term-pass\n");
    let mut init = ws.launch().start();
    serving(&ws, &init);
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0), "{}", init.stderr());
    assert!(init.stderr().contains("exited: exit code 0"), "{}", init.stderr());
}

#[test]
fn not_ready_while_a_new_token_is_taken_and_while_a_fallback_restart_runs() {
    root_only!("not_ready_while_a_new_token_is_taken_and_while_a_fallback_restart_runs");
    // A companion that cannot reload (the reload is not proven within 3 s: restart) and a slow
    // clean stop (2 s), so both phases last long enough to be seen from outside.
    let ws =
        Workspace::new("lc-ready-restart").set("FAKE_COMFYUI_IGNORE_RELOAD", "1").set("FAKE_COMFYUI_STOP_DELAY", "2");
    write(&ws.env_file(), "COMFYUI_PASSWORD=first-pass\n");
    let init = ws.launch().start();
    serving(&ws, &init);
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=second-pass");
    let mut seen = Vec::new();
    let done = init.until(LONG, || {
        let line = ws.cli(&["healthcheck", "--ready"]).1;
        for phase in ["taking a new token", "restarting"] {
            if line.contains(&format!("NOT READY: ComfyUI is {phase}")) && !seen.contains(&phase) {
                seen.push(phase);
            }
        }
        seen.len() == 2
    });
    assert!(done, "seen {seen:?}: {}", init.stderr());
    // And ready again once the new ComfyUI runs.
    serving(&ws, &init);
}
