//! Supervision: credential changes while ComfyUI runs (restart on a new token, heal a broken
//! PASSWORD in place, refuse an invalid password), crash restarts with backoff, ComfyUI-Manager's
//! restart, and an idle supervisor that really sleeps.

use std::fs;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant, SystemTime};

use crate::util::*;

const LONG: Duration = Duration::from_secs(20);
/// The stand-in's default SIGINT stop time (FAKE_COMFYUI_STOP_DELAY).
const STOP_TIME: Duration = Duration::from_millis(300);
/// Long enough for a debounced reaction (75 ms + bcrypt) to have happened, if one were coming.
const SETTLE: Duration = Duration::from_secs(1);

/// The token in PASSWORD, or None while there is none yet.
fn try_token(ws: &Workspace) -> Option<String> {
    let (code, out, _) = ws.cli(&["token"]);
    (code == 0).then(|| out.trim().to_string())
}

/// Waits until the stand-in answers 200 to the current token; returns that token.
fn up(ws: &Workspace, init: &Running) -> String {
    let mut token = String::new();
    let ready = init.until(LONG, || try_token(ws).map(|t| token = t).is_some() && ws.status(Some(&token)) == 200);
    assert!(ready, "ComfyUI never answered its token; stderr:\n{}", init.stderr());
    token
}

/// Waits until PASSWORD holds a token other than `old` that the stand-in accepts. Returns it and
/// how long after `t0` the successful check began (a check can take a while: the time it was
/// sent is what counts).
fn new_token_served(ws: &Workspace, init: &Running, old: &str, t0: Instant) -> (String, Duration) {
    let mut served = None;
    let ok = init.until(LONG, || {
        let at = t0.elapsed();
        match try_token(ws).filter(|t| t != old) {
            Some(t) if ws.status(Some(&t)) == 200 => {
                served = Some((t, at));
                true
            }
            _ => false,
        }
    });
    assert!(ok, "no new token served; stderr:\n{}", init.stderr());
    served.unwrap()
}

/// The goal for a credential change is 2 s plus the stand-in's stop time: said, and
/// measured by `make bench` (row 7). Tests never fail on time (a loaded CI machine is slow):
/// this fails only on a change that took so long something must be stuck.
fn assert_in_time(took: Duration, init: &Running) {
    let goal = Duration::from_secs(2) + STOP_TIME;
    eprintln!("new token served after {took:?} (goal {goal:?})");
    assert!(took <= LONG / 2, "new token served after {took:?}; stderr:\n{}", init.stderr());
}

/// How many lines of `text` contain `needle`.
fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// Voluntary context switches of every thread of `pid`.
fn voluntary_switches(pid: i32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.strip_prefix("voluntary_ctxt_switches:").map(|v| v.trim().parse::<u64>().unwrap()))
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Asserts the child was started exactly `n` times, now and after a settle.
/// These tests are about the restart path: a reload by the companion (tests/integration/reload.rs)
/// is the default, the restart its fallback and `COMFY_INIT_ON_TOKEN_CHANGE=restart`.
fn restarting(ws: &Workspace) -> Launch {
    ws.launch().env("COMFY_INIT_ON_TOKEN_CHANGE", "restart")
}

fn assert_starts(ws: &Workspace, init: &Running, n: usize) {
    assert_eq!(ws.starts(), n, "stderr:\n{}", init.stderr());
    std::thread::sleep(SETTLE);
    assert_eq!(ws.starts(), n, "a late restart; stderr:\n{}", init.stderr());
}

// ---- credential changes while running ------------------------------------------------------

#[test]
fn a_new_password_in_env_restarts_comfyui_once_with_the_new_token() {
    if !can_be_pid1("a_new_password_in_env_restarts_comfyui_once_with_the_new_token") {
        return;
    }
    let ws = Workspace::new("sv-edit");
    let init = restarting(&ws).start();
    let old = up(&ws, &init);
    let old_pid = ws.comfyui_pid(&old);

    let t0 = Instant::now();
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD='new-pass-1'");
    let (new, took) = new_token_served(&ws, &init, &old, t0);
    eprintln!("new token served {took:?} after the edit");

    assert!(bcrypt::verify("new-pass-1", &new).unwrap(), "the new token is not the hash of the new password");
    assert_eq!(ws.status(Some(&old)), 401, "the old token still works");
    assert_ne!(ws.comfyui_pid(&new), old_pid, "ComfyUI was not restarted");
    assert_starts(&ws, &init, 2);
    assert_in_time(took, &init);
}

#[test]
fn rotate_from_another_process_restarts_comfyui_once() {
    if !can_be_pid1("rotate_from_another_process_restarts_comfyui_once") {
        return;
    }
    let ws = Workspace::new("sv-rotate");
    let init = restarting(&ws).start();
    let old = up(&ws, &init);
    let old_pid = ws.comfyui_pid(&old);

    let t0 = Instant::now();
    let (code, _, err) = ws.cli(&["rotate"]);
    assert_eq!(code, 0, "rotate failed: {err}");
    let (new, took) = new_token_served(&ws, &init, &old, t0);
    eprintln!("new token served {took:?} after rotate began");

    assert_eq!(ws.status(Some(&old)), 401, "the old token still works");
    assert_ne!(ws.comfyui_pid(&new), old_pid, "ComfyUI was not restarted");
    assert_starts(&ws, &init, 2);
    assert_in_time(took, &init);
}

#[test]
fn a_kubernetes_secret_swap_restarts_comfyui_with_the_new_password() {
    if !can_be_pid1("a_kubernetes_secret_swap_restarts_comfyui_with_the_new_password") {
        return;
    }
    let ws = Workspace::new("sv-k8s");
    let secret = ws.dir.join("secret");
    fs::create_dir_all(secret.join("..2026_01_01")).unwrap();
    write(&secret.join("..2026_01_01/password"), "first-pass\n");
    symlink("..2026_01_01", secret.join("..data")).unwrap();
    symlink("..data/password", secret.join("password")).unwrap();
    let ws = ws.set("COMFYUI_PASSWORD_FILE", secret.join("password"));
    let init = restarting(&ws).start();
    let old = up(&ws, &init);
    assert!(bcrypt::verify("first-pass", &old).unwrap());

    // What the kubelet does: a new timestamped folder, a new link, renamed over `..data`.
    fs::create_dir(secret.join("..2026_01_02")).unwrap();
    write(&secret.join("..2026_01_02/password"), "second-pass\n");
    symlink("..2026_01_02", secret.join("..data_tmp")).unwrap();
    let t0 = Instant::now();
    fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();

    let (new, took) = new_token_served(&ws, &init, &old, t0);
    eprintln!("new token served {took:?} after the swap");
    assert!(bcrypt::verify("second-pass", &new).unwrap(), "the new token is not the hash of the new secret");
    assert_eq!(ws.status(Some(&old)), 401, "the old token still works");
    assert_starts(&ws, &init, 2);
    assert_in_time(took, &init);
}

#[test]
fn a_truncated_password_file_is_restored_at_once_without_restart() {
    if !can_be_pid1("a_truncated_password_file_is_restored_at_once_without_restart") {
        return;
    }
    let ws = Workspace::new("sv-trunc");
    let init = ws.launch().start();
    let token = up(&ws, &init);

    let t0 = Instant::now();
    fs::write(ws.password_file(), "").unwrap();
    let expected = format!("{token}\nadmin");
    let restored =
        init.until(Duration::from_secs(1), || fs::read_to_string(ws.password_file()).ok() == Some(expected.clone()));
    assert!(
        restored,
        "PASSWORD not restored within 1 s: {:?}; stderr:\n{}",
        fs::read_to_string(ws.password_file()),
        init.stderr()
    );
    eprintln!("restored {:?} after the truncation", t0.elapsed());
    assert_eq!(ws.status(Some(&token)), 200);
    assert_starts(&ws, &init, 1);
    let err = init.stderr();
    assert!(err.lines().any(|l| l.contains("WARN") && l.contains("PASSWORD was emptied while ComfyUI runs")), "{err}");
}

#[test]
fn an_invalid_password_in_env_keeps_comfyui_running_and_says_why() {
    if !can_be_pid1("an_invalid_password_in_env_keeps_comfyui_running_and_says_why") {
        return;
    }
    let ws = Workspace::new("sv-invalid");
    let init = ws.launch().start();
    let token = up(&ws, &init);
    let env_file = ws.env_file().display().to_string();

    let too_long = format!("COMFYUI_PASSWORD='{}'", "a".repeat(80));
    for (line, rule) in [(too_long.as_str(), "longer than 72 bytes"), ("COMFYUI_PASSWORD=' lead'", "whitespace")] {
        ws.edit_env("COMFYUI_PASSWORD", line);
        let logged = init.until(LONG, || init.stderr().lines().any(|l| l.contains(rule)));
        assert!(logged, "no log line about '{rule}'; stderr:\n{}", init.stderr());
        let err = init.stderr();
        let why = err.lines().find(|l| l.contains(rule)).unwrap();
        assert!(why.contains("ERROR") && why.contains(&env_file) && why.contains("keeps running"), "{why}");
        assert_starts(&ws, &init, 1);
        assert_eq!(ws.status(Some(&token)), 200, "the running ComfyUI lost its token");
        assert_eq!(try_token(&ws).as_deref(), Some(token.as_str()), "PASSWORD changed");
    }
}

#[test]
fn touching_env_without_a_change_does_not_restart() {
    if !can_be_pid1("touching_env_without_a_change_does_not_restart") {
        return;
    }
    let ws = Workspace::new("sv-touch");
    let init = restarting(&ws).start();
    let token = up(&ws, &init);

    // A touch (mtime only), then the same bytes saved the way editors do (temp + rename).
    let f = fs::File::options().write(true).open(ws.env_file()).unwrap();
    f.set_modified(SystemTime::now()).unwrap();
    drop(f);
    let text = fs::read(ws.env_file()).unwrap();
    let tmp = ws.dir.join(".env.tmp");
    fs::write(&tmp, &text).unwrap();
    fs::rename(&tmp, ws.env_file()).unwrap();

    assert_starts(&ws, &init, 1);
    assert_eq!(ws.status(Some(&token)), 200);
    assert_eq!(try_token(&ws).as_deref(), Some(token.as_str()));

    // The watcher was listening all along: a real change does restart.
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD='after-touch'");
    new_token_served(&ws, &init, &token, Instant::now());
    assert_eq!(ws.starts(), 2, "{}", init.stderr());
}

#[test]
fn sigterm_during_a_credential_restart_exits_without_starting_again() {
    if !can_be_pid1("sigterm_during_a_credential_restart_exits_without_starting_again") {
        return;
    }
    let ws = Workspace::new("sv-stop-restart").set("FAKE_COMFYUI_STOP_DELAY", "1.5");
    let mut init = ws.launch().start();
    up(&ws, &init);

    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD='never-used'");
    assert!(init.until(LONG, || init.stderr().contains("the token changed")), "{}", init.stderr());
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0), "{}", init.stderr());
    assert_eq!(ws.starts(), 1, "a child was started after the stop request; stderr:\n{}", init.stderr());
}

// ---- ComfyUI-Manager's restart --------------------------------------------------------------

#[test]
fn the_manager_restart_button_restarts_comfyui_at_once() {
    if !can_be_pid1("the_manager_restart_button_restarts_comfyui_at_once") {
        return;
    }
    // A private temp folder: the marker's folder is named after comfy-init's pid, which is 1 in
    // every PID namespace, so parallel tests would otherwise share (and clear) one marker.
    let ws = Workspace::new("sv-reboot");
    let tmp = ws.dir.join("tmp");
    fs::create_dir(&tmp).unwrap();
    let init = ws.launch().env("TMPDIR", &tmp).start();
    let token = up(&ws, &init);
    let old_pid = ws.comfyui_pid(&token).unwrap();

    let url = format!("http://127.0.0.1:{}/manager/reboot", ws.port);
    let answer = ureq::post(&url).set("Authorization", &format!("Bearer {token}")).call();
    assert_eq!(answer.map(|r| r.status()).ok(), Some(200));
    let t0 = Instant::now();
    // "At once" is checked below (no backoff delay); tests never fail on time.
    let back = init.until(LONG / 2, || ws.comfyui_pid(&token).is_some_and(|p| p != old_pid));
    assert!(back, "not restarted; stderr:\n{}", init.stderr());
    eprintln!("restarted {:?} after the reboot answer", t0.elapsed());

    let events = fs::read_to_string(ws.events_file()).unwrap();
    assert!(events.contains("reboot marker="), "no session for the Manager: {events}");
    let err = init.stderr();
    assert!(err.contains("asked for a restart"), "{err}");
    assert!(!err.contains("restarting in"), "a backoff delay for a Manager restart:\n{err}");
    // The stand-in logs where it wrote the marker: comfy-init must have consumed it.
    let marker = events.lines().find_map(|l| l.strip_prefix("reboot marker=")).expect("marker path");
    assert!(marker.starts_with(tmp.to_str().unwrap()), "the session is not in our TMPDIR: {marker}");
    assert!(!std::path::Path::new(marker.trim()).exists(), "the marker {marker} was not consumed");
    assert_starts(&ws, &init, 2);
}

// ---- crashes and the restart policy ---------------------------------------------------------

const STARTED_SH: &str = "started sh (pid";

#[test]
fn a_crash_loop_backs_off_doubling_then_gives_up_with_the_childs_status() {
    if !can_be_pid1("a_crash_loop_backs_off_doubling_then_gives_up_with_the_childs_status") {
        return;
    }
    let t0 = Instant::now();
    let (code, _, err) = Launch::sh("exit 1").env("COMFY_INIT_RESTART", "on-failure").output(Duration::from_secs(40));
    let took = t0.elapsed();
    assert_eq!(code, 1, "{err}");
    for delay in ["1s", "2s", "4s", "8s"] {
        assert_eq!(count(&err, &format!("restarting in {delay} ")), 1, "no single {delay} delay:\n{err}");
    }
    assert_eq!(count(&err, "restarting in"), 4, "{err}");
    assert_eq!(count(&err, STARTED_SH), 5, "{err}");
    assert!(err.lines().any(|l| l.contains("ERROR") && l.contains("giving up")), "{err}");
    assert!(took >= Duration::from_secs(15), "the delays were not waited: {took:?}");
}

#[test]
fn a_child_killed_by_sigsegv_is_restarted_on_failure() {
    if !can_be_pid1("a_child_killed_by_sigsegv_is_restarted_on_failure") {
        return;
    }
    let mut init = Launch::sh("kill -SEGV $$").env("COMFY_INIT_RESTART", "on-failure").start();
    // Two crashes, so the second backoff (2 s) is under way.
    let twice = init.until(LONG, || init.stderr().contains("restarting in 2s"));
    assert!(twice, "{}", init.stderr());
    let err = init.stderr();
    assert_eq!(count(&err, STARTED_SH), 2, "{err}");
    assert!(err.contains("SIGSEGV"), "{err}");
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(128 + libc::SIGSEGV), "{}", init.stderr());
}

#[test]
fn sigterm_during_a_backoff_exits_at_once_with_the_last_status() {
    if !can_be_pid1("sigterm_during_a_backoff_exits_at_once_with_the_last_status") {
        return;
    }
    let mut init = Launch::sh("exit 3").env("COMFY_INIT_RESTART", "on-failure").start();
    assert!(init.until(LONG, || init.stderr().contains("restarting in 1s")), "{}", init.stderr());
    let t0 = Instant::now();
    init.signal(libc::SIGTERM);
    let code = init.wait(LONG);
    let took = t0.elapsed();
    assert_eq!(code, Some(3), "{}", init.stderr());
    assert!(took < Duration::from_millis(500), "exit took {took:?}");
    assert_eq!(count(&init.stderr(), STARTED_SH), 1, "{}", init.stderr());
}

#[test]
fn restart_always_restarts_a_clean_exit() {
    if !can_be_pid1("restart_always_restarts_a_clean_exit") {
        return;
    }
    let mut init = Launch::sh("exit 0").env("COMFY_INIT_RESTART", "always").start();
    // Restarted once, exited 0 again, and waiting for the second start: stop it there.
    assert!(init.until(LONG, || init.stderr().contains("restarting in 2s")), "{}", init.stderr());
    let err = init.stderr();
    assert_eq!(count(&err, "restarting in 1s"), 1, "{err}");
    assert_eq!(count(&err, STARTED_SH), 2, "{err}");
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0), "{}", init.stderr());
}

#[test]
fn restart_never_exits_at_once_with_the_crash_status() {
    if !can_be_pid1("restart_never_exits_at_once_with_the_crash_status") {
        return;
    }
    let t0 = Instant::now();
    let (code, _, err) = Launch::sh("kill -SEGV $$").env("COMFY_INIT_RESTART", "never").output(LONG);
    assert_eq!(code, 128 + libc::SIGSEGV, "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(count(&err, STARTED_SH), 1, "{err}");
    assert!(!err.contains("restarting"), "{err}");
}

#[test]
fn on_failure_ends_with_0_after_a_clean_exit_without_marker() {
    if !can_be_pid1("on_failure_ends_with_0_after_a_clean_exit_without_marker") {
        return;
    }
    let (code, _, err) = Launch::sh("exit 0").env("COMFY_INIT_RESTART", "on-failure").output(LONG);
    assert_eq!(code, 0, "{err}");
    assert_eq!(count(&err, STARTED_SH), 1, "{err}");
    assert!(!err.contains("restarting"), "{err}");
}

// ---- idle ---------------------------------------------------------------------------------

#[test]
fn an_idle_supervisor_does_not_wake_up() {
    if !can_be_pid1("an_idle_supervisor_does_not_wake_up") {
        return;
    }
    let ws = Workspace::new("sv-idle");
    let init = ws.launch().start();
    up(&ws, &init);
    std::thread::sleep(SETTLE); // startup events (the stand-in's event log) are behind us
    let pid = init.init_pid();
    let before = voluntary_switches(pid);
    std::thread::sleep(Duration::from_secs(5));
    let after = voluntary_switches(pid);
    assert_eq!(after, before, "comfy-init woke up {} times in 5 s of idleness", after - before);
}

/// The credential service's pid among PID 1's children.
fn service_of(init: &Running) -> Option<i32> {
    children_of(init.init_pid()).into_iter().map(|p| p.pid).find(|p| is_credential_service(*p))
}

#[test]
fn a_killed_credential_service_is_started_again_and_comfyui_keeps_its_token() {
    root_only!("a_killed_credential_service_is_started_again_and_comfyui_keeps_its_token");
    let ws = Workspace::new("sv-service");
    write(&ws.env_file(), "COMFYUI_PASSWORD=first-pass\n");
    let init = ws.launch().env("FAKE_COMFYUI_START_DELAY", "0.3").start();
    let token = up(&ws, &init);
    let pid = ws.comfyui_pid(&token).unwrap();
    let service = service_of(&init).expect("a credential service under PID 1");
    // SAFETY: a signal to the service this test's comfy-init started.
    unsafe { libc::kill(service, libc::SIGKILL) };
    let again = init.until(LONG, || service_of(&init).is_some_and(|s| s != service));
    assert!(again, "the service was not started again: {}", init.stderr());
    assert!(init.stderr().contains("the credential service exited"), "{}", init.stderr());
    assert_eq!(ws.comfyui_pid(&token), Some(pid), "ComfyUI lost its token or was restarted");
    // The new service does the job: a new password is applied.
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=second-pass");
    let (new, _) = new_token_served(&ws, &init, &token, Instant::now());
    assert!(bcrypt::verify("second-pass", &new).unwrap(), "the new token is not the new password's");
}

#[test]
fn sigterm_is_answered_at_once_while_the_credential_service_hashes() {
    // PID 1 runs no bcrypt: while the service checks a new password against a cost-14 hash, a
    // docker stop is answered at once. Before, PID 1 finished the hashes and wrote PASSWORD first.
    root_only!("sigterm_is_answered_at_once_while_the_credential_service_hashes");
    let ws = Workspace::new("sv-busy");
    let slow = bcrypt::hash("first-pass", 14).unwrap();
    fs::create_dir_all(ws.comfyui().join("login")).unwrap();
    write(&ws.password_file(), &format!("{slow}\nadmin"));
    write(&ws.env_file(), "COMFYUI_PASSWORD=first-pass\n");
    let mut init = ws.launch().env("FAKE_COMFYUI_STOP_DELAY", "0").env("FAKE_COMFYUI_START_DELAY", "0.3").start();
    assert_eq!(up(&ws, &init), slow);
    // The service's first look verifies the password against the cost-14 hash (about a second).
    std::thread::sleep(Duration::from_secs(2));
    // A new password: verified against that hash, then hashed anew; a rename is acted on at once.
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=second-pass");
    std::thread::sleep(Duration::from_millis(100));
    let asked = Instant::now();
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0), "{}", init.stderr());
    eprintln!("SIGTERM -> exit in {:?} while the service hashed at cost 14", asked.elapsed());
    let (hash, _) = fs::read_to_string(ws.password_file())
        .unwrap()
        .split_once('\n')
        .map(|(h, u)| (h.to_string(), u.to_string()))
        .unwrap();
    assert_eq!(hash, slow, "PID 1 waited for the hash and the write before stopping: {}", init.stderr());
}

#[test]
fn the_credential_service_goes_when_comfy_init_is_killed() {
    // Not PID 1 (`docker run --init`, or run by hand): a SIGKILLed comfy-init cannot stop its
    // service, and the kernel does not either. It sees its pipe to PID 1 broken and exits.
    let ws = Workspace::new("sv-orphan");
    write(&ws.env_file(), "COMFYUI_PASSWORD=first-pass\n");
    let init = ws.launch().not_pid1().env("FAKE_COMFYUI_START_DELAY", "0.3").start();
    let token = up(&ws, &init);
    let comfyui = ws.comfyui_pid(&token).unwrap() as i32;
    let service = service_of(&init).expect("a credential service");
    // SAFETY: signals to processes this test started.
    unsafe { libc::kill(init.init_pid(), libc::SIGKILL) };
    let gone = wait_until(LONG, &mut || !pid_exists(service));
    unsafe { libc::kill(comfyui, libc::SIGKILL) };
    assert!(gone, "the credential service outlived comfy-init");
}

#[test]
fn sigterm_while_the_first_reconciliation_hashes_stops_at_once_without_starting_comfyui() {
    // The first reconciliation runs in the credential service too: PID 1 answers a docker stop
    // while it verifies against a cost-14 hash (about a second), and starts nothing.
    root_only!("sigterm_while_the_first_reconciliation_hashes_stops_at_once_without_starting_comfyui");
    let ws = Workspace::new("sv-first");
    let slow = bcrypt::hash("first-pass", 14).unwrap();
    fs::create_dir_all(ws.comfyui().join("login")).unwrap();
    write(&ws.password_file(), &format!("{slow}\nadmin"));
    write(&ws.env_file(), "COMFYUI_PASSWORD=second-pass\n");
    let mut init = ws.launch().start();
    assert!(init.until(LONG, || service_of(&init).is_some()), "no credential service: {}", init.stderr());
    std::thread::sleep(Duration::from_millis(100));
    let asked = Instant::now();
    init.signal(libc::SIGTERM);
    let code = init.wait(LONG);
    eprintln!("SIGTERM -> exit in {:?} while the first reconciliation hashed at cost 14", asked.elapsed());
    let err = init.stderr();
    assert_eq!(code, Some(143), "{err}");
    assert!(err.contains("SIGTERM during the credentials check: ComfyUI not started"), "{err}");
    assert_eq!(ws.starts(), 0, "ComfyUI was started: {err}");
    let hash = fs::read_to_string(ws.password_file()).unwrap();
    assert!(hash.starts_with(&slow), "PID 1 waited for the hash and the write before stopping: {err}");
}
