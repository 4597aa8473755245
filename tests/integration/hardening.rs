//! Hardening: nothing on disk can kill, freeze or fool PID 1, and no user edit is lost. Each
//! poison is what a hostile user, or a buggy ComfyUI running as PUID (it owns `login/`), can put
//! in place; after it PID 1 must still serve, reap and stop on time, and the one-shot commands
//! must refuse at once, naming the file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

const GOOD: &str = "good-pass";
/// The stop grace the poisoned PID 1 runs with: SIGTERM must end it within this + 1 s.
const GRACE: Duration = Duration::from_secs(2);
const LONG: Duration = Duration::from_secs(20);

/// A token whose 4th byte falls inside a multi-byte character: 60 bytes, `$2b\u{e9}` + 55 × A.
fn utf8_token() -> String {
    let t = format!("$2b\u{e9}{}", "A".repeat(55));
    assert_eq!(t.len(), 60);
    t
}

fn mkfifo(path: &Path) {
    let _ = fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    assert!(fs::metadata(path).unwrap().file_type().is_fifo());
}

/// A 4 GiB sparse file swapped in for `path` (it costs no disk).
fn huge_sparse(path: &Path) {
    let tmp = path.with_extension("huge");
    fs::File::create(&tmp).unwrap().set_len(4 << 30).unwrap();
    fs::rename(&tmp, path).unwrap();
}

fn synced(tag: &str) -> Workspace {
    let ws = Workspace::new(tag);
    write(&ws.env_file(), &format!("COMFYUI_PASSWORD={GOOD}\n"));
    let (code, _, err) = ws.cli(&["sync"]);
    assert_eq!(code, 0, "{err}");
    ws
}

/// PID 1 over the stand-in, serving; with its token.
fn serving(ws: &Workspace) -> (Running, String) {
    let init = ws.launch().env("COMFY_INIT_STOP_TIMEOUT", format!("{}s", GRACE.as_secs())).start();
    assert!(init.until(LONG, || ws.status(None) == 401), "ComfyUI never came up: {}", init.stderr());
    let token = ws.token();
    assert_eq!(ws.status(Some(&token)), 200);
    (init, token)
}

/// After a poison: PID 1 alive, ComfyUI still serving its token, orphans still reaped, and
/// SIGTERM ends it all within the grace + 1 s, with ComfyUI's clean status.
fn assert_pid1_unharmed(ws: &Workspace, mut init: Running, token: &str) {
    std::thread::sleep(Duration::from_millis(800)); // the debounce and a reconciliation
    let pid = init.init_pid();
    assert!(pid_exists(pid), "PID 1 died: {}", init.stderr());
    assert_eq!(ws.status(Some(token)), 200, "ComfyUI lost: {}", init.stderr());
    make_orphans_under(pid);
    assert!(init.until(LONG, || zombies_and_orphans(pid) == (0, 1)), "not reaping: {:?}", children_of(pid));
    let asked = Instant::now();
    init.signal(libc::SIGTERM);
    let code = init.wait(GRACE + Duration::from_secs(1));
    assert_eq!(code, Some(0), "not stopped within grace + 1 s: {}", init.stderr());
    eprintln!("stopped {:?} after SIGTERM", asked.elapsed());
    let err = init.stderr();
    assert!(!err.contains("panicked"), "{err}");
}

// ------------------------------------------------------------ poisons under PID 1 ---

/// What PID 1 must show after a poison, before the common checks.
enum After<'a> {
    /// A refusal in its log naming the file and what it is: `<file> is <what>`.
    Refused(&'a Path, &'a str),
    /// PASSWORD written back from the running token.
    PasswordHealed,
    /// The token in `.env` written back whole.
    EnvTokenRepaired,
}

/// Runs PID 1 over `ws`, applies `poison` while ComfyUI serves, waits for `after`, then checks
/// that PID 1 is unharmed.
fn poison_pid1(ws: &Workspace, poison: impl FnOnce(), after: After) {
    let (init, token) = serving(ws);
    poison();
    let seen = || match &after {
        After::Refused(file, what) => init.stderr().contains(&format!("{} is {what}", file.display())),
        After::PasswordHealed => {
            fs::read_to_string(ws.password_file()).unwrap_or_default() == format!("{token}\nadmin")
        }
        After::EnvTokenRepaired => dotenvy::from_path_iter(ws.env_file())
            .map(|it| it.flatten().any(|(k, v)| k == "COMFYUI_BEARER_TOKEN" && v == token))
            .unwrap_or(false),
    };
    assert!(init.until(LONG, seen), "{}", init.stderr());
    assert_pid1_unharmed(ws, init, &token);
}

#[test]
fn pid1_heals_a_password_token_cut_inside_a_utf8_character() {
    root_only!("pid1_heals_a_password_token_cut_inside_a_utf8_character");
    let ws = synced("p-utf8");
    poison_pid1(&ws, || write(&ws.password_file(), &format!("{}\nadmin", utf8_token())), After::PasswordHealed);
}

#[test]
fn pid1_survives_a_bearer_token_cut_inside_a_utf8_character_in_env() {
    root_only!("pid1_survives_a_bearer_token_cut_inside_a_utf8_character_in_env");
    let ws = synced("e-utf8");
    let poison = || ws.edit_env("COMFYUI_BEARER_TOKEN", &format!("COMFYUI_BEARER_TOKEN='{}'", utf8_token()));
    poison_pid1(&ws, poison, After::EnvTokenRepaired);
}

#[test]
fn pid1_refuses_a_fifo_password_file_without_blocking() {
    root_only!("pid1_refuses_a_fifo_password_file_without_blocking");
    let ws = synced("p-fifo");
    let file = ws.password_file();
    poison_pid1(&ws, || mkfifo(&file), After::Refused(&file, "a named pipe (FIFO)"));
}

#[test]
fn pid1_refuses_a_fifo_env_file_without_blocking() {
    root_only!("pid1_refuses_a_fifo_env_file_without_blocking");
    let ws = synced("e-fifo");
    let file = ws.env_file();
    poison_pid1(&ws, || mkfifo(&file), After::Refused(&file, "a named pipe (FIFO)"));
}

#[test]
fn pid1_refuses_a_fifo_secret_file_without_blocking() {
    root_only!("pid1_refuses_a_fifo_secret_file_without_blocking");
    let ws = Workspace::new("s-fifo");
    let secret = ws.dir.join("secrets/password");
    fs::create_dir_all(secret.parent().unwrap()).unwrap();
    write(&secret, &format!("{GOOD}\n"));
    let ws = ws.set("COMFYUI_PASSWORD_FILE", &secret);
    poison_pid1(&ws, || mkfifo(&secret), After::Refused(&secret, "a named pipe (FIFO)"));
}

#[test]
fn pid1_does_not_read_a_4gb_password_file() {
    root_only!("pid1_does_not_read_a_4gb_password_file");
    let ws = synced("p-huge");
    let file = ws.password_file();
    poison_pid1(&ws, || huge_sparse(&file), After::Refused(&file, "4294967296 bytes"));
}

#[test]
fn pid1_heals_a_truncated_password_file() {
    root_only!("pid1_heals_a_truncated_password_file");
    let ws = synced("p-trunc");
    let truncate = || drop(fs::OpenOptions::new().write(true).truncate(true).open(ws.password_file()).unwrap());
    poison_pid1(&ws, truncate, After::PasswordHealed);
}

// --------------------------------------------------------- poisons, one-shot commands ---

/// `sync` refuses with 78 and `phrases`, at once, changing nothing.
fn assert_sync_refuses(ws: &Workspace, phrases: &[&str]) {
    let (code, _, err) = ws.cli_within(&["sync"], Duration::from_secs(5));
    assert_eq!(code, 78, "{err}");
    for p in phrases {
        assert!(err.contains(p), "missing {p:?} in: {err}");
    }
}

fn assert_token_fails(ws: &Workspace, phrases: &[&str]) {
    let (code, out, err) = ws.cli_within(&["token"], Duration::from_secs(5));
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    for p in phrases {
        assert!(err.contains(p), "missing {p:?} in: {err}");
    }
}

/// The healthcheck answers 1 within its deadline (2 s here), whatever PASSWORD is.
fn assert_unhealthy_in_time(ws: &Workspace) {
    let env = ws.env().into_iter().chain([("COMFY_INIT_HEALTH_TIMEOUT".to_string(), "2s".to_string())]);
    let out = comfy_init(&["healthcheck"], env, Duration::from_secs(20));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.line().starts_with("UNHEALTHY: "), "{out:?}");
    assert!(out.took < Duration::from_secs(3), "took {:?}: {out:?}", out.took);
}

#[test]
fn a_fifo_password_file_is_refused_at_once_by_every_command() {
    let ws = synced("c-pfifo");
    mkfifo(&ws.password_file());
    let file = ws.password_file().display().to_string();
    assert_sync_refuses(&ws, &[&file, "named pipe (FIFO)"]);
    assert_token_fails(&ws, &[&file, "named pipe (FIFO)"]);
    assert_unhealthy_in_time(&ws);
    assert!(fs::metadata(ws.password_file()).unwrap().file_type().is_fifo(), "the FIFO was replaced");
}

#[test]
fn a_fifo_env_or_secret_file_is_refused_at_once() {
    let ws = synced("c-efifo");
    mkfifo(&ws.env_file());
    assert_sync_refuses(&ws, &[&ws.env_file().display().to_string(), "named pipe (FIFO)", "COMFY_INIT_ENV_FILE"]);
    let (code, _, err) = ws.cli_within(&["rotate"], Duration::from_secs(5));
    assert_eq!(code, 78, "{err}");

    let ws = synced("c-sfifo");
    let secret = ws.dir.join("secret");
    mkfifo(&secret);
    let ws = ws.set("COMFYUI_PASSWORD_FILE", &secret);
    assert_sync_refuses(&ws, &["COMFYUI_PASSWORD_FILE", &secret.display().to_string(), "named pipe (FIFO)"]);
}

#[test]
fn a_device_or_a_huge_file_is_refused_unread() {
    let ws = synced("c-huge");
    huge_sparse(&ws.password_file());
    let file = ws.password_file().display().to_string();
    assert_sync_refuses(&ws, &[&file, "4294967296 bytes"]);
    assert_token_fails(&ws, &[&file, "4294967296 bytes"]);
    assert_unhealthy_in_time(&ws);

    let ws = synced("c-dev");
    let ws = ws.set("COMFY_INIT_ENV_FILE", "/dev/zero");
    assert_sync_refuses(&ws, &["/dev/zero is a character device"]);
}

#[test]
fn tokens_that_are_not_ascii_are_refused_or_repaired_never_a_panic() {
    let ws = synced("c-utf8");
    let file = ws.password_file().display().to_string();
    for poison in [format!("{}\nadmin", utf8_token()).into_bytes(), b"\xff\xfe$2b$12$\nadmin".to_vec()] {
        fs::write(ws.password_file(), &poison).unwrap();
        assert_token_fails(&ws, &[&file, "malformed"]);
        assert_unhealthy_in_time(&ws);
        let (code, _, err) = ws.cli_within(&["sync"], Duration::from_secs(10));
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("malformed"), "{err}");
        assert_eq!(ws.cli(&["token"]).0, 0);
    }
    // In .env too (with no PASSWORD, so that it is judged): a warning, the token written back whole.
    fs::remove_file(ws.password_file()).unwrap();
    ws.edit_env("COMFYUI_BEARER_TOKEN", &format!("COMFYUI_BEARER_TOKEN='{}'", utf8_token()));
    let (code, _, err) = ws.cli_within(&["sync"], Duration::from_secs(10));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("COMFYUI_BEARER_TOKEN is malformed"), "{err}");
    assert!(!err.contains(&utf8_token()), "the bad value was printed: {err}");
    let hash = ws.token();
    assert!(fs::read_to_string(ws.env_file()).unwrap().contains(&format!("COMFYUI_BEARER_TOKEN='{hash}'")));
}

// ------------------------------------------------------------------ lost updates ---

/// An editor saving `.env` `saves` times, alternately in place and by temp + rename, pausing a
/// random 0-300 ms between saves while comfy-init reconciles. Before each save it reads the
/// file and checks that its previous save is still there: a reconciliation that wrote back what
/// it read before that save would have lost it. Returns the last password saved.
fn edit_concurrently(ws: &Workspace, saves: usize) -> String {
    let mut seed = u64::from(std::process::id());
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        seed >> 33
    };
    let mut last = String::new();
    for i in 0..saves {
        let text = fs::read_to_string(ws.env_file()).unwrap_or_else(|e| panic!("read .env: {e}"));
        if i > 0 {
            assert!(text.contains(&format!("NOTE=save-{}\n", i - 1)), "save {} lost; .env is now:\n{text}", i - 1);
            assert!(text.contains(&format!("COMFYUI_PASSWORD={last}\n")), "password of save {} lost:\n{text}", i - 1);
        }
        let mine = |l: &&str| l.starts_with("NOTE=") || l.starts_with("COMFYUI_PASSWORD=") || l.starts_with("# edited");
        let kept: Vec<&str> = text.lines().filter(|l| !mine(l) && !l.is_empty()).collect();
        last = format!("pass-{i}");
        let new: String =
            ["# edited by hand".to_string(), format!("NOTE=save-{i}"), format!("COMFYUI_PASSWORD={last}")]
                .into_iter()
                .chain(kept.iter().map(|l| l.to_string()))
                .map(|l| l + "\n")
                .collect();
        if i % 2 == 0 {
            let mut f = fs::OpenOptions::new().write(true).truncate(true).create(true).open(ws.env_file()).unwrap();
            f.write_all(new.as_bytes()).unwrap();
        } else {
            let tmp = ws.dir.join(".env.editor-tmp");
            fs::write(&tmp, &new).unwrap();
            fs::rename(&tmp, ws.env_file()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(next() % 300));
    }
    last
}

#[test]
fn no_save_is_lost_to_a_running_supervisor_and_comfyui_ends_on_the_last_password() {
    root_only!("no_save_is_lost_to_a_running_supervisor_and_comfyui_ends_on_the_last_password");
    let ws = synced("lost-run");
    let (init, _) = serving(&ws);
    let last = edit_concurrently(&ws, 60);
    let on_last = || {
        let t = ws.token();
        bcrypt::verify(&last, &t).unwrap_or(false) && ws.status(Some(&t)) == 200
    };
    assert!(init.until(LONG, on_last), "ComfyUI did not end on {last}: {}", init.stderr());
    let text = fs::read_to_string(ws.env_file()).unwrap();
    assert!(text.contains("NOTE=save-59\n") && text.contains(&format!("COMFYUI_PASSWORD={last}\n")), "{text}");
}

#[test]
fn no_save_is_lost_to_concurrent_syncs() {
    let ws = synced("lost-sync");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let syncs = {
        let (stop, env) = (stop.clone(), ws.env());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut cmd = std::process::Command::new(bin());
                scrub_env(&mut cmd);
                let out = cmd.arg("sync").envs(&env).output().unwrap();
                assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
                runs += 1;
            }
            runs
        })
    };
    let last = edit_concurrently(&ws, 60);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = syncs.join().expect("a sync failed");
    eprintln!("{runs} syncs ran during the 60 saves");
    assert_eq!(ws.cli(&["sync"]).0, 0);
    assert!(bcrypt::verify(&last, &ws.token()).unwrap());
}

// --------------------------------------------------------------------- the lock ---

#[test]
fn forty_concurrent_rotations_all_succeed_and_agree() {
    let ws = synced("rotate40");
    let env = ws.env();
    let started = Instant::now();
    let children: Vec<_> = (0..40)
        .map(|_| {
            let mut cmd = std::process::Command::new(bin());
            scrub_env(&mut cmd);
            cmd.arg("rotate").envs(&env).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    }
    eprintln!("40 rotations took {:?}", started.elapsed());
    let values: std::collections::HashMap<String, String> =
        dotenvy::from_path_iter(ws.env_file()).unwrap().map(|r| r.unwrap()).collect();
    let hash = ws.token();
    assert_eq!(values["COMFYUI_BEARER_TOKEN"], hash);
    assert!(bcrypt::verify(&values["COMFYUI_PASSWORD"], &hash).unwrap());
    assert_eq!(ws.cli(&["sync"]).1.trim(), "in sync: nothing to change");
    let left: Vec<_> = fs::read_dir(ws.dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")), "temp files left: {left:?}");
}

// ---------------------------------------------------------- items 6 to 13 of #11 ---

#[test]
fn a_72_byte_password_is_accepted_and_73_refused() {
    let ws = Workspace::new("len72");
    let p72 = "\u{e9}".repeat(36);
    assert_eq!(p72.len(), 72);
    write(&ws.env_file(), &format!("COMFYUI_PASSWORD='{p72}'\n"));
    let (code, _, err) = ws.cli(&["sync"]);
    assert_eq!(code, 0, "{err}");
    let hash = ws.token();
    assert!(bcrypt::verify(&p72, &hash).unwrap());
    // The stand-in checks passwords with libxcrypt's bcrypt, as ComfyUI-Login's Python bcrypt does.
    let check = "import crypt,sys; h=sys.argv[2]; print(crypt.crypt(sys.argv[1], h) == h)";
    let out = std::process::Command::new("python3").args(["-W", "ignore", "-c", check, &p72, &hash]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.trim() == "True" || !out.status.success(), "libxcrypt disagrees: {said}");
    ws.edit_env("COMFYUI_PASSWORD", &format!("COMFYUI_PASSWORD='{p72}x'"));
    let (code, _, err) = ws.cli(&["sync"]);
    assert_eq!(code, 78);
    assert!(err.contains("longer than 72 bytes"), "{err}");
}

#[test]
fn valid_logins_are_kept_hash_only_files_and_low_costs() {
    // A hash-only PASSWORD (older ComfyUI-Login) that verifies: same token, username added.
    let ws = Workspace::new("hashonly");
    let hash = bcrypt::hash(GOOD, 12).unwrap();
    fs::create_dir_all(ws.password_file().parent().unwrap()).unwrap();
    write(&ws.password_file(), &hash);
    write(&ws.env_file(), &format!("COMFYUI_PASSWORD={GOOD}\n"));
    assert_eq!(ws.cli(&["sync"]).0, 0);
    assert_eq!(fs::read_to_string(ws.password_file()).unwrap(), format!("{hash}\nadmin"));

    // No password configured: a hash-only file and a valid cost-4 hash are the user's login.
    for (tag, content) in [("hashonly-nopw", hash.clone()), ("cost4", format!("{}\nme", bcrypt::hash("x", 4).unwrap()))]
    {
        let ws = Workspace::new(tag);
        fs::create_dir_all(ws.password_file().parent().unwrap()).unwrap();
        write(&ws.password_file(), &content);
        let (code, _, err) = ws.cli(&["sync"]);
        assert_eq!(code, 0, "{err}");
        assert!(!err.contains("password:"), "a password was generated: {err}");
        let kept = content.lines().next().unwrap();
        assert_eq!(ws.token(), kept);
        assert!(fs::read_to_string(ws.password_file()).unwrap().starts_with(&format!("{kept}\n")));
    }
}

#[test]
fn an_env_file_that_is_a_symlink_is_written_through_to_its_target() {
    let ws = Workspace::new("envlink");
    let real = ws.dir.join("config/real.env");
    fs::create_dir_all(real.parent().unwrap()).unwrap();
    write(&real, &format!("# mine\nCOMFYUI_PASSWORD={GOOD}\n"));
    std::os::unix::fs::symlink("config/real.env", ws.env_file()).unwrap();
    let (code, _, err) = ws.cli(&["sync"]);
    assert_eq!(code, 0, "{err}");
    assert!(fs::symlink_metadata(ws.env_file()).unwrap().file_type().is_symlink(), "the link was replaced");
    let hash = ws.token();
    assert_eq!(
        fs::read_to_string(&real).unwrap(),
        format!("# mine\nCOMFYUI_PASSWORD={GOOD}\nCOMFYUI_BEARER_TOKEN='{hash}'\n")
    );
}

#[test]
fn pid1_sees_an_edit_of_the_env_file_symlink_target() {
    root_only!("pid1_sees_an_edit_of_the_env_file_symlink_target");
    let ws = Workspace::new("envlink-run");
    let real = ws.dir.join("config/real.env");
    fs::create_dir_all(real.parent().unwrap()).unwrap();
    write(&real, &format!("COMFYUI_PASSWORD={GOOD}\n"));
    std::os::unix::fs::symlink(&real, ws.env_file()).unwrap();
    let (init, _) = serving(&ws);
    let tmp = real.with_extension("swp");
    write(&tmp, "COMFYUI_PASSWORD=changed-at-target\n");
    fs::rename(&tmp, &real).unwrap();
    let on_new = || {
        let t = ws.token();
        bcrypt::verify("changed-at-target", &t).unwrap_or(false) && ws.status(Some(&t)) == 200
    };
    assert!(init.until(LONG, on_new), "{}", init.stderr());
    assert!(fs::symlink_metadata(ws.env_file()).unwrap().file_type().is_symlink());
}

#[test]
fn settings_that_cannot_work_are_refused_naming_the_variable() {
    for (var, value) in [
        ("COMFY_INIT_STOP_SIGNAL", "SIGRTMIN+-100"),
        ("COMFY_INIT_STOP_SIGNAL", "SIGRTMIN+2147483647"),
        ("PUID", "4294967295"),
        ("PGID", "4294967295"),
    ] {
        let launch = Launch::init(&["true"]).not_pid1().env(var, value);
        let launch = if var == "PGID" { launch.env("PUID", "1000") } else { launch };
        let (code, _, err) = launch.output(Duration::from_secs(10));
        assert_eq!(code, 78, "{var}={value}: {err}");
        assert!(err.contains(&format!("{var}='{value}'")), "{err}");
    }
}

#[test]
fn pid1_heals_password_when_env_file_lives_in_the_login_folder() {
    root_only!("pid1_heals_password_when_env_file_lives_in_the_login_folder");
    let ws = Workspace::new("envinlogin");
    let env_file = ws.comfyui().join("login/.env");
    fs::create_dir_all(env_file.parent().unwrap()).unwrap();
    write(&env_file, &format!("COMFYUI_PASSWORD={GOOD}\n"));
    let ws = ws.set("COMFY_INIT_ENV_FILE", &env_file);
    let (init, token) = serving(&ws);
    fs::write(ws.password_file(), "").unwrap();
    let healed = || fs::read_to_string(ws.password_file()).unwrap_or_default() == format!("{token}\nadmin");
    assert!(init.until(LONG, healed), "PASSWORD not healed: {}", init.stderr());
    // And the .env in the same folder is still watched.
    let tmp = env_file.with_extension("swp");
    write(&tmp, "COMFYUI_PASSWORD=second-pass\n");
    fs::rename(&tmp, &env_file).unwrap();
    let on_new = || bcrypt::verify("second-pass", &ws.token()).unwrap_or(false);
    assert!(init.until(LONG, on_new), "{}", init.stderr());
}

#[test]
fn an_unquoted_dollar_in_the_password_is_warned_about_and_taken_as_written() {
    let ws = Workspace::new("dollar");
    write(&ws.env_file(), "COMFYUI_PASSWORD=pw$VAR\n");
    let (code, _, err) = ws.cli(&["sync"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("COMFYUI_PASSWORD") && err.contains("not quoted") && err.contains("single quotes"), "{err}");
    assert!(!err.contains("pw$VAR"), "the password was printed: {err}");
    assert!(bcrypt::verify("pw$VAR", &ws.token()).unwrap());
}

#[test]
fn a_read_only_login_folder_that_already_verifies_starts() {
    root_only!("a_read_only_login_folder_that_already_verifies_starts");
    let ws = synced("rologin");
    let before = fs::read_to_string(ws.password_file()).unwrap();
    // The token is missing from .env: the one thing to write is outside login/.
    ws.edit_env("COMFYUI_BEARER_TOKEN", "# no token");
    let login = ws.password_file().parent().unwrap().display().to_string();
    let script = format!("mount --bind {login} {login} && mount -o remount,bind,ro {login} && exec \"$0\" sync");
    let mut cmd = std::process::Command::new("unshare");
    scrub_env(&mut cmd);
    let out = cmd.args(["--mount", "sh", "-c", &script]).arg(bin()).envs(ws.env()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(fs::read_to_string(ws.password_file()).unwrap(), before);
    assert!(fs::read_to_string(ws.env_file()).unwrap().contains("COMFYUI_BEARER_TOKEN='$2b$12$"));
    let entries: Vec<_> = fs::read_dir(&login).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("PASSWORD")]);
}

/// Holds comfy-init's lock (an flock on the login folder) like another comfy-init would, as long
/// as the descriptor is open.
struct HeldLock {
    _dir: fs::File,
}

impl HeldLock {
    fn take(ws: &Workspace) -> HeldLock {
        use std::os::fd::AsRawFd;
        let dir = fs::File::open(ws.password_file().parent().unwrap()).unwrap();
        // SAFETY: flock on a descriptor we own.
        assert_eq!(unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
        HeldLock { _dir: dir }
    }
}

#[test]
fn pid1_never_waits_for_the_lock_and_applies_the_change_once_it_is_free() {
    root_only!("pid1_never_waits_for_the_lock_and_applies_the_change_once_it_is_free");
    let ws = synced("lock-run");
    let (init, token) = serving(&ws);
    let held = HeldLock::take(&ws);
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=while-locked");
    std::thread::sleep(Duration::from_millis(1500));
    // The loop is not stuck on the lock: it reaps, and nothing was written under the held lock.
    let pid = init.init_pid();
    make_orphans_under(pid);
    assert!(init.until(LONG, || zombies_and_orphans(pid) == (0, 1)), "not reaping while the lock is held");
    assert_eq!(ws.token(), token, "PASSWORD written while another comfy-init held the lock");
    drop(held);
    let on_new = || {
        let t = ws.token();
        bcrypt::verify("while-locked", &t).unwrap_or(false) && ws.status(Some(&t)) == 200
    };
    assert!(init.until(LONG, on_new), "{}", init.stderr());
    let t = ws.token();
    assert_pid1_unharmed(&ws, init, &t);
}

#[test]
fn sync_waits_for_the_lock_saying_so_once_and_never_goes_on_without_it() {
    let ws = synced("lock-sync");
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=after-the-wait");
    let held = HeldLock::take(&ws);
    let mut cmd = std::process::Command::new(bin());
    scrub_env(&mut cmd);
    let child = cmd.arg("sync").envs(ws.env()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!bcrypt::verify("after-the-wait", &ws.token()).unwrap(), "sync wrote without the lock");
    drop(held);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.matches("waiting for another comfy-init").count(), 1, "{err}");
    assert!(bcrypt::verify("after-the-wait", &ws.token()).unwrap());
}
