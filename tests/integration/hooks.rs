//! Pre-start hooks (COMFY_INIT_PRE_START): run in name order after the credentials and before
//! ComfyUI, once per start, as ComfyUI's user, output prefixed by their name; children of PID 1,
//! stopped within the grace; a failing one stops the start (or not, with
//! COMFY_INIT_PRE_START_FAILURE=warn).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::util::*;

const LONG: Duration = Duration::from_secs(20);

/// A workspace with these hooks (name, shell script) in `hooks/`, set as COMFY_INIT_PRE_START.
fn with_hooks(tag: &str, scripts: &[(&str, &str)]) -> Workspace {
    let ws = Workspace::new(tag);
    write(&ws.env_file(), "COMFYUI_PASSWORD=hook-pass\n");
    let dir = ws.dir.join("hooks");
    fs::create_dir_all(&dir).unwrap();
    for (name, script) in scripts {
        let path = dir.join(name);
        write(&path, &format!("#!/bin/sh\n{script}\n"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    ws.set("COMFY_INIT_PRE_START", &dir).set("FAKE_COMFYUI_START_DELAY", "0.3")
}

#[test]
fn hooks_run_in_name_order_before_comfyui_once_as_its_user_with_their_output_prefixed() {
    root_only!("hooks_run_in_name_order_before_comfyui_once_as_its_user_with_their_output_prefixed");
    let marker = std::env::temp_dir().join(format!("comfy-init-hook-order-{}", std::process::id()));
    let _ = fs::remove_file(&marker);
    let ws = with_hooks(
        "hooks-order",
        &[
            ("20-second", &format!("echo second $(id -u) >> {}", marker.display())),
            ("10-first", &format!("echo first $(id -u) >> {}; echo hello from the hook", marker.display())),
            ("README", "not a hook"),
        ],
    )
    .set("COMFY_INIT_ON_TOKEN_CHANGE", "restart");
    // A README beside the hooks is not executable, so not a hook.
    fs::set_permissions(ws.dir.join("hooks/README"), fs::Permissions::from_mode(0o644)).unwrap();
    // Hooks write as root here (no PUID), see the PUID test below.
    let (init, start_seen) = {
        let init = ws.launch().start();
        let up = init.until(LONG, || ws.status(None) == 401);
        (init, up)
    };
    assert!(start_seen, "{}", init.stderr());
    assert_eq!(fs::read_to_string(&marker).unwrap(), "first 0\nsecond 0\n", "order");
    assert!(init.stdout().contains("[pre-start 10-first] hello from the hook"), "{}", init.stdout());
    let err = init.stderr();
    let first_done = err.find("pre-start hook 20-second done").expect("hooks logged");
    let started = err.find("started python3").expect("ComfyUI started");
    assert!(first_done < started, "ComfyUI started before the hooks were done:\n{err}");
    // A restart for a new token runs no hook again.
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=hook-pass-2");
    assert!(init.until(LONG, || ws.starts() == 2), "{}", init.stderr());
    assert_eq!(fs::read_to_string(&marker).unwrap().lines().count(), 2, "hooks ran again");
    let _ = fs::remove_file(&marker);
}

#[test]
fn hooks_run_as_puid_who_gets_custom_nodes() {
    root_only!("hooks_run_as_puid_who_gets_custom_nodes");
    let out = std::env::temp_dir().join(format!("comfy-init-hook-uid-{}", std::process::id()));
    let _ = fs::remove_file(&out);
    let ws = with_hooks("hooks-puid", &[("10-id", &format!("id -u > {}", out.display()))])
        .set("PUID", "65534")
        .set("FAKE_COMFYUI_EVENTS", "");
    // Hooks install things into custom_nodes/: with hooks, it is given to PUID too.
    let nodes = ws.comfyui().join("custom_nodes");
    fs::create_dir_all(&nodes).unwrap();
    let mut launch = ws.launch();
    launch.args = ["run", "--", "true"].map(String::from).to_vec();
    let (code, _, err) = launch.output(LONG);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read_to_string(&out).unwrap().trim(), "65534");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&nodes).unwrap().uid(), 65534, "custom_nodes/ not given to PUID");
    let _ = fs::remove_file(&out);
}

#[test]
fn a_failing_hook_stops_the_start_with_its_name_and_status_unless_told_to_go_on() {
    root_only!("a_failing_hook_stops_the_start_with_its_name_and_status_unless_told_to_go_on");
    let ws = with_hooks("hooks-fail", &[("10-broken", "echo cannot do it; exit 3")]);
    let (code, out, err) = ws.launch().output(LONG);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("pre-start hook 10-broken failed (exit code 3): ComfyUI not started"), "{err}");
    assert!(out.contains("[pre-start 10-broken] cannot do it"), "{out}");
    assert_eq!(ws.starts(), 0, "ComfyUI started");

    let ws = ws.set("COMFY_INIT_PRE_START_FAILURE", "warn");
    let init = ws.launch().start();
    assert!(init.until(LONG, || ws.status(None) == 401), "{}", init.stderr());
    assert!(init.stderr().contains("pre-start hook 10-broken failed (exit code 3): going on"));
}

#[test]
fn a_stop_during_a_long_hook_ends_it_within_the_grace() {
    root_only!("a_stop_during_a_long_hook_ends_it_within_the_grace");
    let ws = with_hooks("hooks-stop", &[("10-pip-install", "echo installing; sleep 60")])
        .set("COMFY_INIT_STOP_TIMEOUT", "2s");
    let mut init = ws.launch().start();
    assert!(init.until(LONG, || init.stdout().contains("[pre-start 10-pip-install] installing")), "{}", init.stderr());
    let asked = Instant::now();
    init.signal(libc::SIGTERM);
    let code = init.wait(Duration::from_secs(3));
    assert!(code.is_some(), "not stopped within the grace + 1 s: {}", init.stderr());
    eprintln!("stopped {:?} after SIGTERM, exit {code:?}", asked.elapsed());
    assert_eq!(ws.starts(), 0, "ComfyUI started after the stop");
}

#[test]
fn what_a_hook_leaves_running_is_stopped_when_it_is_done() {
    root_only!("what_a_hook_leaves_running_is_stopped_when_it_is_done");
    let ws = with_hooks("hooks-leftover", &[("10-background", "sleep 60 &")]);
    let init = ws.launch().start();
    assert!(init.until(LONG, || ws.status(None) == 401), "{}", init.stderr());
    // Orphaned when the hook exits, the sleep comes to PID 1; it must not live its 60 s.
    let sleeping = || {
        children_of(init.init_pid())
            .iter()
            .any(|p| fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap_or_default().starts_with(b"sleep"))
    };
    assert!(init.until(Duration::from_secs(5), || !sleeping()), "the hook's background sleep outlived it");
}
