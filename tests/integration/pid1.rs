//! comfy-init as PID 1 (and as a plain child under another init): exit statuses, signal
//! forwarding, reaping, graceful stop, clean signal state for the child.

use std::time::{Duration, Instant};

use crate::util::*;

const LONG: Duration = Duration::from_secs(20);

#[test]
fn exit_codes_pass_through() {
    if !can_be_pid1("exit_codes_pass_through") {
        return;
    }
    for code in [0, 1, 2, 32, 64, 127, 254, 255] {
        let (got, _, err) = Launch::sh(&format!("exit {code}")).output(LONG);
        assert_eq!(got, code, "child exit {code}; stderr:\n{err}");
    }
}

#[test]
fn death_by_signal_gives_128_plus_n() {
    if !can_be_pid1("death_by_signal_gives_128_plus_n") {
        return;
    }
    for (name, n) in [("TERM", 15), ("HUP", 1), ("QUIT", 3), ("KILL", 9), ("USR2", 12)] {
        let (got, _, err) = Launch::sh(&format!("kill -{name} $$")).output(LONG);
        assert_eq!(got, 128 + n, "child killed by SIG{name}; stderr:\n{err}");
    }
}

fn read_report(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
}

#[test]
fn every_forwardable_signal_reaches_the_child() {
    if !can_be_pid1("every_forwardable_signal_reaches_the_child") {
        return;
    }
    let dir = TempDir::new("signals");
    let report = dir.join("report");
    let reporter = fixtures().join("signal_reporter.py");
    let init = Launch::init(&["python3", reporter.to_str().unwrap(), report.to_str().unwrap()]).start();
    assert!(init.until(LONG, || read_report(&report).iter().any(|l| l.starts_with("ready"))), "{}", init.stderr());

    let stop_requests = [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT];
    let unforwardable = [libc::SIGKILL, libc::SIGSTOP, libc::SIGCHLD];
    let mut sent = 0;
    for signo in (1..32).chain(libc::SIGRTMIN()..=libc::SIGRTMAX()) {
        if stop_requests.contains(&signo) || unforwardable.contains(&signo) {
            continue;
        }
        let before = read_report(&report).len();
        init.signal(signo);
        // One at a time: standard signals sent back to back may merge.
        let arrived = init.until(Duration::from_secs(5), || read_report(&report).len() > before);
        assert!(
            arrived,
            "signal {signo} did not reach the child; report: {:?}\n{}",
            read_report(&report),
            init.stderr()
        );
        sent += 1;
    }
    assert_eq!(read_report(&report).len(), sent + 1, "{:?}", read_report(&report));
}

#[test]
fn sigterm_becomes_the_stop_signal_and_a_clean_exit_is_0() {
    if !can_be_pid1("sigterm_becomes_the_stop_signal_and_a_clean_exit_is_0") {
        return;
    }
    let dir = TempDir::new("stop");
    let report = dir.join("report");
    let reporter = fixtures().join("signal_reporter.py");
    let mut init = Launch::init(&["python3", reporter.to_str().unwrap(), report.to_str().unwrap()]).start();
    assert!(init.until(LONG, || !read_report(&report).is_empty()));
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0), "{}", init.stderr());
    assert_eq!(read_report(&report).last().map(String::as_str), Some("SIGINT"));
}

#[test]
fn a_child_ignoring_the_stop_signal_is_killed_after_the_timeout() {
    if !can_be_pid1("a_child_ignoring_the_stop_signal_is_killed_after_the_timeout") {
        return;
    }
    let mut init = Launch::sh("trap '' INT; echo up; sleep 100").env("COMFY_INIT_STOP_TIMEOUT", "1500ms").start();
    assert!(init.until(LONG, || init.stderr().contains("started")));
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    init.signal(libc::SIGTERM);
    let code = init.wait(LONG);
    let took = t0.elapsed();
    assert_eq!(code, Some(137), "{}", init.stderr());
    assert!(took >= Duration::from_millis(1500), "killed too early: {took:?}");
    assert!(took < Duration::from_millis(2500), "stop took {took:?}, over timeout + 1 s");
}

#[test]
fn a_grandchild_ignoring_the_stop_signal_is_killed_before_we_exit() {
    if !can_be_pid1("a_grandchild_ignoring_the_stop_signal_is_killed_before_we_exit") {
        return;
    }
    // The main child exits on SIGINT at once; its grandchild ignores SIGINT and SIGTERM.
    let script = "trap 'exit 0' INT; (trap '' INT TERM; exec sleep 100) & while :; do sleep 0.05; done";
    let mut init = Launch::sh(script).env("COMFY_INIT_STOP_TIMEOUT", "1s").start();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0), "{}", init.stderr());
    assert!(t0.elapsed() >= Duration::from_secs(1), "exited before the grandchild's SIGKILL: {:?}", t0.elapsed());
    assert!(init.stderr().contains("SIGKILL"), "{}", init.stderr());
}

#[test]
fn leftovers_of_the_group_get_sigterm_once_the_child_is_gone() {
    if !can_be_pid1("leftovers_of_the_group_get_sigterm_once_the_child_is_gone") {
        return;
    }
    // A background job of a shell starts with SIGINT ignored: it must not cost the whole grace.
    let script = "trap 'exit 0' INT; sleep 100 & while :; do sleep 0.05; done";
    let mut init = Launch::sh(script).env("COMFY_INIT_STOP_TIMEOUT", "5s").start();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0), "{}", init.stderr());
    assert!(t0.elapsed() < Duration::from_secs(2), "waited {:?} for a leftover", t0.elapsed());
}

#[test]
fn not_pid1_the_grandchild_is_gone_when_we_exit() {
    // Without a PID namespace nothing kills leftovers for us: this proves we waited for them.
    let dir = TempDir::new("gc");
    let pidfile = dir.join("gc.pid");
    let script = format!(
        "trap 'exit 0' INT; (trap '' INT TERM; exec sh -c 'echo $$ > {}; exec sleep 100') & while :; do sleep 0.05; done",
        pidfile.display()
    );
    let mut init = Launch::sh(&script).not_pid1().env("COMFY_INIT_STOP_TIMEOUT", "1s").start();
    assert!(init.until(LONG, || std::fs::read_to_string(&pidfile).map(|s| !s.trim().is_empty()).unwrap_or(false)));
    let grandchild: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(pid_exists(grandchild));
    init.signal(libc::SIGTERM);
    assert_eq!(init.wait(LONG), Some(0), "{}", init.stderr());
    assert!(!pid_exists(grandchild), "grandchild {grandchild} outlived comfy-init");
}

/// 100 processes whose parent exits at once: they become our orphans.
const ORPHANS: &str = "sh -c 'for i in $(seq 100); do sleep 0.3 & done; exit 0'; echo spawned; sleep 100";

#[test]
fn hundred_orphans_are_reaped_while_the_child_runs() {
    if !can_be_pid1("hundred_orphans_are_reaped_while_the_child_runs") {
        return;
    }
    let mut init = Launch::sh(ORPHANS).start();
    let pid = init.init_pid();
    assert!(init.until(LONG, || zombies_and_orphans(pid).1 > 50), "orphans never came to us");
    // Only the main child is left, and no zombie.
    let clean = init.until(LONG, || zombies_and_orphans(pid) == (0, 1));
    assert!(clean, "left: {:?}", children_of(pid));
    init.signal(libc::SIGTERM);
    assert!(init.wait(LONG).is_some());
}

#[test]
fn not_pid1_orphans_are_still_reaped_without_warning() {
    let mut init = Launch::sh(ORPHANS).not_pid1().env("RUST_LOG", "info").start();
    let pid = init.init_pid();
    assert!(init.until(LONG, || zombies_and_orphans(pid).1 > 50), "orphans never came to us: not a subreaper?");
    let clean = init.until(LONG, || zombies_and_orphans(pid) == (0, 1));
    assert!(clean, "left: {:?}", children_of(pid));
    init.signal(libc::SIGTERM);
    assert!(init.wait(LONG).is_some());
    // Nothing to warn about: being a subreaper is the normal way under `docker run --init`.
    let err = init.stderr();
    let complaints: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .filter(|l| !l.contains("COMFY_INIT_AUTH=off"))
        .collect();
    assert!(complaints.is_empty(), "{err}");
}

#[test]
fn the_child_starts_with_no_blocked_or_ignored_signals() {
    if !can_be_pid1("the_child_starts_with_no_blocked_or_ignored_signals") {
        return;
    }
    // Start comfy-init with SIGINT ignored and SIGUSR1 blocked, as a careless parent might.
    let wrapper = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); \
                   signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1}); os.execvp(sys.argv[1], sys.argv[1:])";
    let (code, out, err) =
        Launch::sh("grep -E '^Sig(Blk|Ign)' /proc/self/status").prefix(&["python3", "-c", wrapper]).output(LONG);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
    assert!(out.contains("SigIgn:\t0000000000000000"), "{out}");
}

#[test]
fn a_missing_program_exits_127_and_names_it() {
    if !can_be_pid1("a_missing_program_exits_127_and_names_it") {
        return;
    }
    let (code, _, err) = Launch::init(&["no-such-program-xyz"]).output(LONG);
    assert_eq!(code, 127);
    assert!(err.contains("no-such-program-xyz"), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("cannot run")).count(), 1, "{err}");
}

#[test]
fn a_file_that_is_not_executable_exits_126() {
    let dir = TempDir::new("noexec");
    let script = dir.join("script.sh");
    write(&script, "#!/bin/sh\nexit 0\n");
    let (code, _, err) = Launch::init(&[script.to_str().unwrap()]).not_pid1().output(LONG);
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("script.sh"), "{err}");
}

#[test]
fn the_program_is_looked_up_in_path_like_execvp() {
    // The spawn is comfy-init's own (clone + exec, issue 17), so execvp's rules are checked here:
    // PATH in order, a non-executable match skipped for a later executable one, a file without a
    // `#!` line run by /bin/sh, arguments and environment passed, and only PATH dirs searched.
    let dir = TempDir::new("path");
    let (first, second) = (dir.join("first"), dir.join("second"));
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    write(&first.join("greet"), "#!/bin/sh\necho wrong one\n");
    write(&second.join("greet"), "echo \"hello $1 $GREETING\"\nexit 7\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(second.join("greet"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}:/usr/bin:/bin", first.display(), second.display());
    let (code, out, err) =
        Launch::init(&["greet", "world"]).env("PATH", &path).env("GREETING", "again").not_pid1().output(LONG);
    assert_eq!((code, out.trim()), (7, "hello world again"), "{err}");
    // Only the non-executable one: EACCES wins over the ENOENT of the later folders (126, not 127).
    std::fs::remove_file(second.join("greet")).unwrap();
    let (code, _, err) = Launch::init(&["greet"]).env("PATH", &path).not_pid1().output(LONG);
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("cannot run 'greet': Permission denied"), "{err}");
}

#[test]
fn with_a_terminal_the_child_gets_the_foreground() {
    // `docker run -it`: the child's own process group must own the terminal, or reading from it
    // stops the child (SIGTTIN). script(1) gives comfy-init a pseudo-terminal.
    let me = bin().display().to_string();
    let inner = format!("{me} run -- sh -c 'ps -o pgid=,tpgid= -p $$'");
    let out = std::process::Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .env("COMFY_INIT_GPU", "off")
        .env("COMFY_INIT_AUTH", "off")
        .env("COMFY_INIT_RESTART", "never")
        .output()
        .expect("script(1) from util-linux");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| {
        l.split_whitespace().count() == 2 && l.trim().chars().all(|c| c.is_ascii_digit() || c.is_whitespace())
    });
    let ids: Vec<&str> = line.unwrap_or_else(|| panic!("no pgid/tpgid line in {text:?}")).split_whitespace().collect();
    assert_eq!(ids[0], ids[1], "the child's group is not the terminal's foreground group: {text}");
    assert_eq!(out.status.code(), Some(0), "{text}");
}

#[test]
fn a_group_member_that_cannot_die_holds_pid1_no_longer_than_sigkill_plus_3_s() {
    // Z stays in ComfyUI's process group after SIGKILL: a zombie whose parent P left the group
    // and never reaps it (a process in uninterruptible sleep stays the same way). Before, PID 1
    // waited for the group without limit; docker stop then ended in Docker's own SIGKILL.
    if !can_be_pid1("a_group_member_that_cannot_die_holds_pid1_no_longer_than_sigkill_plus_3_s") {
        return;
    }
    let stuck = r#"
import os, signal, time
group = os.getpgrp()
if os.fork() == 0:  # P: leaves the group, puts Z in it, never reaps it
    os.setpgid(0, 0)
    if os.fork() == 0:
        os.setpgid(0, group)
        signal.pause()
    time.sleep(1000)
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main child needs the SIGKILL too
print("ready", flush=True)
signal.pause()
"#;
    let mut init = Launch::init(&["python3", "-c", stuck])
        .env("COMFY_INIT_STOP_TIMEOUT", "1s")
        .env("COMFY_INIT_STOP_SIGNAL", "SIGINT")
        .start();
    assert!(init.until(LONG, || init.stdout().contains("ready")), "{}", init.stderr());
    std::thread::sleep(Duration::from_millis(300));
    init.signal(libc::SIGTERM);
    let code = init.wait(LONG);
    let err = init.stderr();
    assert_eq!(code, Some(137), "PID 1 did not go on without the group: {err}");
    assert!(err.contains("outlived SIGKILL by 3s, going on without it"), "{err}");
    assert!(err.contains("state Z (a zombie: its parent has not reaped it)"), "the stuck member is named: {err}");
}

#[test]
fn sigterm_during_a_hung_gpu_check_stops_at_once_without_starting_comfyui() {
    // docker stop while NVML hangs (COMFY_INIT_GPU_TIMEOUT 30 s): answered at once, not after the
    // timeout, and ComfyUI is not started only to be stopped.
    if !can_be_pid1("sigterm_during_a_hung_gpu_check_stops_at_once_without_starting_comfyui") {
        return;
    }
    let f = nvml_fixtures();
    let dir = TempDir::new("stop-gpu");
    let marker = dir.join("comfyui-started");
    let mut init = Launch::init(&["touch", marker.to_str().unwrap()])
        .env("COMFY_INIT_GPU", "require")
        .env("COMFY_INIT_NVML_LIB", &f.full)
        .env("FAKE_NVML_HANG", "1")
        .env("COMFY_INIT_GPU_TIMEOUT", "30s")
        .start();
    let hung = init.until(LONG, || {
        std::process::Command::new("pgrep")
            .args(["-f", "comfy-init-nvml probe"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty())
    });
    assert!(hung, "the NVML helper never ran: {}", init.stderr());
    let t0 = std::time::Instant::now();
    init.signal(libc::SIGTERM);
    let code = init.wait(LONG);
    eprintln!("SIGTERM during the GPU check -> exit in {:?}", t0.elapsed());
    let err = init.stderr();
    assert_eq!(code, Some(143), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10), "waited for the GPU timeout: {err}");
    assert!(err.contains("SIGTERM during the GPU check: stopping at once, ComfyUI not started"), "{err}");
    assert!(!marker.exists(), "ComfyUI was started: {err}");
}
