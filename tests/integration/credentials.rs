//! Credentials as an operator meets them: the files after `sync`, `token` and `run`, the seed
//! report repaired, every refusal leaving the files untouched, and crashes mid-write.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use crate::util::*;

const SEED_TOKEN: &str = "$2b$12$NErya5UooY9bJnscVc/ec.hpVDX.nYM86/88bXIkF/hh2VeKRvU5ka";

fn read(path: &std::path::Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

fn mtime(path: &std::path::Path) -> SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

/// (hash, username) from PASSWORD, asserting the exact `hash\nusername` format.
fn password_file(ws: &Workspace) -> (String, String) {
    let text = read(&ws.password_file());
    let (hash, user) = text.split_once('\n').unwrap_or_else(|| panic!("PASSWORD not hash\\nusername: {text:?}"));
    assert_eq!(hash.len(), 60, "{text:?}");
    assert!(!user.contains('\n') && !text.contains('\r'), "{text:?}");
    (hash.to_string(), user.to_string())
}

fn dotenv(ws: &Workspace) -> std::collections::HashMap<String, String> {
    dotenvy::from_path_iter(ws.env_file()).unwrap().map(|r| r.unwrap()).collect()
}

#[test]
fn first_start_generates_announces_once_then_changes_nothing() {
    let ws = Workspace::new("first");
    let (code, out, err) = ws.cli(&["sync"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("password:"), "no announcement: {err}");
    let values = dotenv(&ws);
    let password = &values["COMFYUI_PASSWORD"];
    assert!(err.contains(password.as_str()));
    let (hash, user) = password_file(&ws);
    assert_eq!(user, "admin");
    assert!(bcrypt::verify(password, &hash).unwrap());
    assert!(hash.starts_with("$2b$12$"));
    assert_eq!(values["COMFYUI_BEARER_TOKEN"], hash);
    assert_eq!(fs::metadata(ws.password_file()).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(out.contains("changed:"), "{out}");

    let before = (read(&ws.env_file()), read(&ws.password_file()), mtime(&ws.env_file()), mtime(&ws.password_file()));
    std::thread::sleep(Duration::from_millis(20));
    let (code, out, err) = ws.cli(&["sync"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing to change"), "{out}");
    assert!(!err.contains(password.as_str()) && !out.contains(password.as_str()), "password printed again");
    let after = (read(&ws.env_file()), read(&ws.password_file()), mtime(&ws.env_file()), mtime(&ws.password_file()));
    assert_eq!(before, after, "second sync rewrote a file");
    assert_eq!(ws.token(), hash);
}

#[test]
fn changing_the_password_rehashes_updates_the_token_and_ends_sessions() {
    let ws = Workspace::new("change");
    write(&ws.env_file(), "# mine\nCOMFYUI_PASSWORD=first-pass\nKEEP=me\n");
    assert_eq!(ws.cli(&["sync"]).0, 0);
    let (old_hash, _) = password_file(&ws);
    let secret_key = ws.comfyui().join("custom_nodes/ComfyUI-Login/.secret-key.txt");
    fs::create_dir_all(secret_key.parent().unwrap()).unwrap();
    write(&secret_key, "key");

    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=second-pass");
    let (code, _, err) = ws.cli(&["sync"]);
    assert_eq!(code, 0, "{err}");
    let (new_hash, _) = password_file(&ws);
    assert_ne!(new_hash, old_hash);
    assert!(bcrypt::verify("second-pass", &new_hash).unwrap());
    assert_eq!(dotenv(&ws)["COMFYUI_BEARER_TOKEN"], new_hash);
    assert_eq!(dotenv(&ws)["KEEP"], "me");
    assert!(!secret_key.exists(), ".secret-key.txt survived a password change");
    assert!(!err.contains("second-pass"), "plaintext password in the log: {err}");
}

#[test]
fn a_pinned_token_that_verifies_is_used_as_is() {
    let ws = Workspace::new("pinned");
    let pinned = bcrypt::hash("pinned-pass", 12).unwrap();
    write(&ws.env_file(), &format!("COMFYUI_PASSWORD=pinned-pass\nCOMFYUI_BEARER_TOKEN='{pinned}'\n"));
    let before = read(&ws.env_file());
    assert_eq!(ws.cli(&["sync"]).0, 0);
    assert_eq!(password_file(&ws).0, pinned);
    assert_eq!(read(&ws.env_file()), before, ".env rewritten although it was right");
}

#[test]
fn the_seed_report_env_is_repaired() {
    let ws = Workspace::new("seed");
    let seed = format!("COMFYUI_BEARER_TOKEN={SEED_TOKEN}\nCOMFYUI_USERNAME=admin\nCOMFYUI_PASSWORD=rZDS3XQa/8!v9L\n");
    write(&ws.env_file(), &seed);
    let (code, _, err) = ws.cli(&["sync"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("61 characters"), "the warning should say what was wrong: {err}");
    let (hash, user) = password_file(&ws);
    assert_eq!(user, "admin");
    assert!(bcrypt::verify("rZDS3XQa/8!v9L", &hash).unwrap());
    let text = read(&ws.env_file());
    let want = format!("COMFYUI_BEARER_TOKEN='{hash}'\nCOMFYUI_USERNAME=admin\nCOMFYUI_PASSWORD=rZDS3XQa/8!v9L\n");
    assert_eq!(text, want);
    assert_eq!(dotenv(&ws)["COMFYUI_BEARER_TOKEN"], hash);
}

#[test]
fn precedence_secret_file_then_env_file_then_environment_with_a_warning() {
    let ws = Workspace::new("prec");
    let secret = ws.dir.join("secret");
    write(&secret, "from-secret\n");
    write(&ws.env_file(), "COMFYUI_PASSWORD=from-env-file\n");
    let ws = ws.set("COMFYUI_PASSWORD", "from-environment").set("COMFYUI_PASSWORD_FILE", &secret);
    let (code, _, err) = ws.cli(&["sync"]);
    assert_eq!(code, 0, "{err}");
    assert!(bcrypt::verify("from-secret", &password_file(&ws).0).unwrap());
    assert!(err.contains("differs"), "no warning on disagreeing sources: {err}");
    assert!(!err.contains("from-env-file") && !err.contains("from-environment"), "{err}");

    let mut ws = ws;
    ws.extra_env.remove("COMFYUI_PASSWORD_FILE");
    assert_eq!(ws.cli(&["sync"]).0, 0);
    assert!(bcrypt::verify("from-env-file", &password_file(&ws).0).unwrap());

    fs::remove_file(ws.env_file()).unwrap();
    assert_eq!(ws.cli(&["sync"]).0, 0);
    assert!(bcrypt::verify("from-environment", &password_file(&ws).0).unwrap());
}

/// A refusal: non-zero exit, the message names `phrase` and `source`, no file changed.
fn assert_refused(ws: &Workspace, phrases: &[&str]) {
    let before = (read(&ws.env_file()), read(&ws.password_file()));
    let (code, _, err) = ws.cli(&["sync"]);
    assert_eq!(code, 78, "{err}");
    for p in phrases {
        assert!(err.contains(p), "missing {p:?} in: {err}");
    }
    assert_eq!((read(&ws.env_file()), read(&ws.password_file())), before, "a refused sync changed a file");
}

/// A workspace already in sync, so that a refusal has files to leave alone.
fn synced(tag: &str) -> Workspace {
    let ws = Workspace::new(tag);
    write(&ws.env_file(), "COMFYUI_PASSWORD=good-pass\n");
    assert_eq!(ws.cli(&["sync"]).0, 0);
    ws
}

#[test]
fn bad_passwords_are_refused_naming_the_source_and_the_rule() {
    let ws = synced("badpw");
    let env_file = ws.env_file().display().to_string();
    ws.edit_env("COMFYUI_PASSWORD", &format!("COMFYUI_PASSWORD={}", "a".repeat(73)));
    assert_refused(&ws, &[&env_file, "72 bytes"]);
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=' leading'");
    assert_refused(&ws, &[&env_file, "whitespace"]);
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=''");
    assert_refused(&ws, &[&env_file, "empty"]);
    let secret = ws.dir.join("secret");
    write(&secret, "two\nlines\n");
    let ws = ws.set("COMFYUI_PASSWORD_FILE", &secret);
    assert_refused(&ws, &["COMFYUI_PASSWORD_FILE", "line break"]);
}

#[test]
fn an_unparseable_env_line_is_refused_with_file_and_line() {
    let ws = synced("badline");
    let mut text = read(&ws.env_file());
    text.push_str("# fine\nBROKEN=two words\n");
    write(&ws.env_file(), &text);
    assert_refused(&ws, &[&ws.env_file().display().to_string(), "line 4", "BROKEN=two words"]);
}

#[test]
fn a_password_file_that_is_a_folder_or_an_outside_symlink_is_refused() {
    let ws = synced("pwdir");
    fs::remove_file(ws.password_file()).unwrap();
    fs::create_dir(ws.password_file()).unwrap();
    assert_refused(&ws, &["PASSWORD", "folder"]);
    fs::remove_dir(ws.password_file()).unwrap();
    let outside = ws.dir.join("elsewhere");
    write(&outside, "x");
    std::os::unix::fs::symlink(&outside, ws.password_file()).unwrap();
    assert_refused(&ws, &["PASSWORD", "outside the login folder"]);
    assert_eq!(read(&outside), "x");
}

#[test]
fn a_missing_comfyui_folder_fails_closed() {
    let ws = Workspace::new("nodir");
    let nope = ws.dir.join("nope");
    let ws = ws.set("COMFYUI_DIR", &nope);
    let (code, _, err) = ws.cli(&["sync"]);
    assert_eq!(code, 78);
    assert!(err.contains("COMFYUI_DIR") && err.contains("COMFY_INIT_AUTH=off"), "{err}");
}

#[test]
fn run_never_starts_comfyui_without_a_valid_password_file() {
    if !can_be_pid1("run_never_starts_comfyui_without_a_valid_password_file") {
        return;
    }
    let ws = synced("runrefuse");
    ws.edit_env("COMFYUI_PASSWORD", &format!("COMFYUI_PASSWORD={}", "b".repeat(80)));
    let (code, _, err) = ws.launch().output(Duration::from_secs(20));
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("ComfyUI not started"), "{err}");
    assert_eq!(ws.starts(), 0, "the stand-in ran");
}

#[test]
fn a_read_only_filesystem_is_refused() {
    if !can_be_pid1("a_read_only_filesystem_is_refused") {
        return;
    }
    let ws = Workspace::new("ro");
    write(&ws.env_file(), "COMFYUI_PASSWORD=ro-pass\n");
    let dir = ws.dir.path().display().to_string();
    // A private mount namespace with the workspace bound read-only.
    let script = format!("mount --bind {dir} {dir} && mount -o remount,bind,ro {dir} && exec \"$0\" sync");
    let mut cmd = std::process::Command::new("unshare");
    scrub_env(&mut cmd);
    let out = cmd.args(["--mount", "sh", "-c", &script]).arg(bin()).envs(ws.env()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("read-only"), "{err}");
    assert!(!ws.password_file().exists());
}

#[test]
fn run_serves_the_token_that_comfy_init_token_prints() {
    if !can_be_pid1("run_serves_the_token_that_comfy_init_token_prints") {
        return;
    }
    let ws = Workspace::new("serve");
    let init = ws.launch().start();
    assert!(init.until(Duration::from_secs(20), || ws.status(None) == 401), "{}", init.stderr());
    let token = ws.token();
    assert_eq!(ws.status(Some(&token)), 200);
    assert_eq!(ws.status(Some("$2b$12$wrongwrongwrongwrongwrongwrongwrongwrongwrongwrongwrong")), 401);
    assert!(init.stderr().contains("password:"), "first start announces the password");
}

#[test]
fn a_crash_at_any_point_of_a_sync_leaves_old_or_new_content() {
    let ws = synced("crash");
    let mut rng_state = std::process::id() as u64;
    let mut next = || {
        rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng_state >> 33) as u64
    };
    let mut passwords = vec!["good-pass".to_string()];
    for round in 0..12 {
        let new = format!("pass-{round}");
        ws.edit_env("COMFYUI_PASSWORD", &format!("COMFYUI_PASSWORD={new}"));
        passwords.push(new);
        // Each write pauses 150 ms before its rename and between files: kill anywhere in there.
        let mut cmd = std::process::Command::new(bin());
        scrub_env(&mut cmd);
        let mut child = cmd
            .arg("sync")
            .envs(ws.env())
            .env("COMFY_INIT_TEST_PAUSE_MS", "150")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(next() % 900));
        let _ = child.kill();
        let _ = child.wait();
        // Whatever happened: PASSWORD is complete and holds the hash of a password we set,
        // the .env parses, and its token (if any) is a complete hash.
        let (hash, _) = password_file(&ws);
        // A kill before PASSWORD's rename leaves an older one: any password we set, never a mix.
        assert!(passwords.iter().rev().any(|p| bcrypt::verify(p, &hash).unwrap()), "round {round}");
        let values = dotenv(&ws);
        assert_eq!(values["COMFYUI_PASSWORD"], passwords[passwords.len() - 1]);
        if let Some(t) = values.get("COMFYUI_BEARER_TOKEN") {
            assert_eq!(t.len(), 60);
        }
    }
    // And the next full sync converges, sweeping the temp files killed writes left.
    assert_eq!(ws.cli(&["sync"]).0, 0);
    let mut login: Vec<_> =
        fs::read_dir(ws.password_file().parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    login.sort();
    assert_eq!(login, vec!["PASSWORD"], "the lock is the folder itself: no file of its own");
    let (hash, _) = password_file(&ws);
    assert!(bcrypt::verify(passwords.last().unwrap(), &hash).unwrap());
    assert_eq!(dotenv(&ws)["COMFYUI_BEARER_TOKEN"], hash);
}

#[test]
fn with_puid_the_child_runs_as_that_user_and_owns_password() {
    if !can_be_pid1("with_puid_the_child_runs_as_that_user_and_owns_password") {
        return;
    }
    let ws = Workspace::new("puid").set("PUID", "65534").set("PGID", "65534");
    let mut launch = ws.launch();
    let password = ws.password_file().display().to_string();
    launch.args =
        vec!["run".into(), "--".into(), "sh".into(), "-c".into(), format!("id -u; id -g; head -c 4 {password}")];
    let (code, out, err) = launch.output(Duration::from_secs(20));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "65534\n65534\n$2b$", "the child could not read PASSWORD as its user: {err}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(ws.password_file()).unwrap().uid(), 65534);
}

#[test]
fn with_puid_a_folder_owned_by_someone_else_stops_with_the_chown_to_run() {
    if !can_be_pid1("with_puid_a_folder_owned_by_someone_else_stops_with_the_chown_to_run") {
        return;
    }
    // COMFY_INIT_CHOWN=off: the folder is not given to PUID (the default, see hardening.rs).
    let ws = Workspace::new("puidown").set("PUID", "65534").set("COMFY_INIT_CHOWN", "off");
    fs::create_dir_all(ws.comfyui().join("output")).unwrap(); // owned by root
    let (code, _, err) = ws.launch().output(Duration::from_secs(20));
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("chown -R 65534:65534"), "{err}");
    assert_eq!(ws.starts(), 0);
}

#[test]
fn sync_dry_run_says_what_it_would_change_and_writes_nothing() {
    let ws = Workspace::new("dry");
    write(&ws.env_file(), "COMFYUI_PASSWORD=dry-pass\n");
    let (code, out, err) = ws.cli(&["sync", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would change:") && out.contains("PASSWORD"), "{out}");
    assert!(!out.contains("dry-pass") && !err.contains("dry-pass"));
    assert_eq!(read(&ws.env_file()), "COMFYUI_PASSWORD=dry-pass\n");
    assert!(!ws.comfyui().join("login").exists(), "a dry run created login/");
}

#[test]
fn with_puid_comfyui_login_can_write_its_key_and_missing_folders_are_made_for_that_user() {
    // The image's node folder belongs to its build user (1000); PUID=1001 (Unraid's 99, ...) could
    // not write the node's cookie key: the node failed to import and ComfyUI served WITHOUT auth.
    // And a ComfyUI folder of root's with no temp/: ComfyUI could not make it and died.
    if !can_be_pid1("with_puid_comfyui_login_can_write_its_key_and_missing_folders_are_made_for_that_user") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let ws = Workspace::new("chown-node").set("PUID", "1001").set("PGID", "1001");
    let ws = ws.set("FAKE_COMFYUI_EVENTS", ""); // the workspace is root's: no event log
    write(&ws.env_file(), "COMFYUI_PASSWORD=node-pass\n");
    let node = ws.comfyui().join("custom_nodes/comfyui-login");
    fs::create_dir_all(&node).unwrap();
    write(&node.join("password.py"), "secret_key_path = os.path.join(node_dir, '.secret-key.txt')\n");
    std::os::unix::fs::chown(&node, Some(1000), Some(1000)).unwrap();
    assert!(!ws.comfyui().join("temp").exists());
    let init = ws.launch().start();
    // 401: ComfyUI-Login imported and enforces auth (200 would be a ComfyUI without it).
    assert!(init.until(Duration::from_secs(20), || ws.status(None) == 401), "{}", init.stderr());
    let owner = |p: &std::path::Path| fs::symlink_metadata(p).map(|m| m.uid()).unwrap_or(u32::MAX);
    assert_eq!(owner(&node), 1001, "{}", init.stderr());
    assert_eq!(owner(&node.join(".secret-key.txt")), 1001, "the node wrote its key as PUID");
    assert_eq!(owner(&ws.comfyui().join("temp")), 1001, "{}", init.stderr());
    assert!(init.stderr().contains("temp: created, owned by 1001:1001"), "{}", init.stderr());
    let token = ws.token();
    assert_eq!(ws.status(Some(&token)), 200);
}

#[test]
fn with_puid_root_owned_folders_are_given_to_that_user_without_following_links_or_touching_models() {
    if !can_be_pid1("with_puid_root_owned_folders_are_given_to_that_user_without_following_links_or_touching_models") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let owner = |p: &std::path::Path| fs::symlink_metadata(p).unwrap().uid();
    for (mode, inside) in [("on", 0), ("recursive", 1000)] {
        // What Docker leaves for a new bind mount: folders (and files) owned by root.
        let ws = Workspace::new("chown").set("PUID", "1000").set("PGID", "1000").set("COMFY_INIT_CHOWN", mode);
        let ws = ws.set("FAKE_COMFYUI_EVENTS", ""); // the workspace is root's: no event log
        write(&ws.env_file(), "COMFYUI_PASSWORD=chown-pass\n");
        // ComfyUI-Login's folder is its user's, as the image makes it (it writes its key there).
        let node = ws.comfyui().join("custom_nodes/ComfyUI-Login");
        fs::create_dir_all(&node).unwrap();
        std::os::unix::fs::chown(&node, Some(1000), Some(1000)).unwrap();
        let output = ws.comfyui().join("output");
        fs::create_dir_all(output.join("old")).unwrap();
        write(&output.join("old/image.png"), "png");
        let outside = ws.dir.join("outside.txt");
        write(&outside, "not ComfyUI's");
        std::os::unix::fs::symlink(&outside, output.join("link")).unwrap();
        fs::create_dir_all(ws.comfyui().join("models/checkpoints")).unwrap();
        let init = ws.launch().start();
        assert!(init.until(Duration::from_secs(20), || ws.status(None) == 401), "{mode}: {}", init.stderr());
        assert_eq!(owner(&output), 1000, "{mode}");
        assert_eq!(owner(&output.join("old/image.png")), inside, "{mode}");
        assert_eq!(owner(&output.join("link")), inside, "{mode}: the link itself");
        assert_eq!(owner(&outside), 0, "{mode}: a symlink was followed out");
        assert_eq!(owner(&ws.comfyui().join("models")), 0, "{mode}: models was touched");
        assert!(init.stderr().contains("now owned by 1000:1000"), "{}", init.stderr());
        assert_eq!(fs::metadata(ws.password_file()).unwrap().uid(), 1000);
    }
}

// ------------------------------------------- PASSWORD first, `.env` best-effort ---

/// Runs `comfy-init ARGS` in a private mount namespace once the shell commands `mounts` ran
/// there (what Docker's volumes do, without Docker): (exit code, stdout, stderr).
fn with_mounts(ws: &Workspace, mounts: &str, args: &[&str]) -> (i32, String, String) {
    let script = format!("{mounts} && exec \"$0\" \"$@\"");
    let mut cmd = std::process::Command::new("unshare");
    scrub_env(&mut cmd);
    let out = cmd
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(bin())
        .args(args)
        .envs(ws.env())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// `mount --bind FROM TO`, quoted for `sh -c`.
fn bind(from: &std::path::Path, to: &std::path::Path) -> String {
    format!("mount --bind '{}' '{}'", from.display(), to.display())
}

/// `mount --bind PATH PATH` made read-only (a `:ro` volume).
fn read_only(path: &std::path::Path) -> String {
    let p = path.display();
    format!("mount --bind '{p}' '{p}' && mount -o remount,bind,ro '{p}'")
}

/// A workspace whose `.env` will be a single-file bind mount of `host.env` (Docker's
/// `-v ./host.env:/config/.env`): the file it hides is an empty one.
fn single_file_env(tag: &str, content: &str) -> (Workspace, std::path::PathBuf) {
    let ws = Workspace::new(tag);
    let host = ws.dir.join("host.env");
    write(&host, content);
    write(&ws.env_file(), "");
    (ws, host)
}

fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().ino()
}

/// The `.comfy-init-*.tmp` files a write left in `dir`.
fn temp_files(dir: &std::path::Path) -> Vec<String> {
    let names = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
    names.filter(|n| n.contains(".comfy-init-")).collect()
}

#[test]
fn a_single_file_bind_mounted_env_is_written_in_place_after_password() {
    root_only!("a_single_file_bind_mounted_env_is_written_in_place_after_password");
    // An old, longer token value: the in-place write must cut the file to the new length.
    let before = format!("# host file\nCOMFYUI_PASSWORD=bind-pass\nCOMFYUI_BEARER_TOKEN='{SEED_TOKEN}-and-more'\n");
    let (ws, host) = single_file_env("bind-sync", &before);
    let ino = inode(&host);
    let (code, out, err) = with_mounts(&ws, &bind(&host, &ws.env_file()), &["sync"]);
    assert_eq!(code, 0, "a single-file bind mount of .env failed the sync: {out}{err}");
    let (hash, _) = password_file(&ws);
    assert!(bcrypt::verify("bind-pass", &hash).unwrap());
    let want = format!("# host file\nCOMFYUI_PASSWORD=bind-pass\nCOMFYUI_BEARER_TOKEN='{hash}'\n");
    assert_eq!(read(&host), want, "not written in place, whole: {err}");
    assert_eq!(inode(&host), ino, "the host file was replaced, not written in place");
    assert_eq!(read(&ws.env_file()), "", "written beside the mount instead of into it");
    assert!(err.contains(&format!("{} is a single-file bind mount", ws.env_file().display())), "{err}");
    assert!(err.contains("mount the folder"), "no advice: {err}");
    assert!(out.contains("COMFYUI_BEARER_TOKEN updated"), "{out}");
    assert!(temp_files(ws.dir.path()).is_empty(), "temp file left: {:?}", temp_files(ws.dir.path()));

    // In sync now: nothing written, nothing said.
    let (code, out, err) = with_mounts(&ws, &bind(&host, &ws.env_file()), &["sync"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing to change") && !err.contains("bind mount"), "{out}{err}");

    // Read-only (`-v ./host.env:/config/.env:ro`): neither rename nor in-place write can work.
    // PASSWORD still gets the new password; .env keeps its text; a warning; exit 0.
    write(&host, "COMFYUI_PASSWORD=bind-pass-2\n");
    let mounts = format!("{} && mount -o remount,bind,ro '{}'", bind(&host, &ws.env_file()), ws.env_file().display());
    let (code, out, err) = with_mounts(&ws, &mounts, &["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(bcrypt::verify("bind-pass-2", &password_file(&ws).0).unwrap());
    assert_eq!(read(&host), "COMFYUI_PASSWORD=bind-pass-2\n");
    assert!(err.contains("single-file bind mount") && err.contains("read-only"), "{err}");
    assert!(err.contains("COMFYUI_BEARER_TOKEN not written back"), "{err}");
}

#[test]
fn a_single_file_bind_mounted_env_starts_comfyui_with_a_valid_password() {
    root_only!("a_single_file_bind_mounted_env_starts_comfyui_with_a_valid_password");
    // No password anywhere: one is generated, and must end up in the host's file.
    let (ws, host) = single_file_env("bind-run", "# mine\n");
    let mounts = format!("{} && exec \"$@\"", bind(&host, &ws.env_file()));
    let prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", &mounts, "sh"];
    let init = ws.launch().prefix(&prefix).start();
    assert!(init.until(Duration::from_secs(20), || ws.status(None) == 401), "{}", init.stderr());
    let token = ws.token();
    assert_eq!(ws.status(Some(&token)), 200, "{}", init.stderr());
    let values: std::collections::HashMap<String, String> =
        dotenvy::from_path_iter(&host).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(values["COMFYUI_BEARER_TOKEN"], token, "{}", init.stderr());
    assert!(bcrypt::verify(&values["COMFYUI_PASSWORD"], &token).unwrap(), "the stored password is not the token's");
    assert!(read(&host).starts_with("# mine\n"));
    let err = init.stderr();
    assert_eq!(err.matches("is a single-file bind mount").count(), 1, "said once: {err}");
    assert!(err.contains(&format!("It is stored in {}", ws.env_file().display())), "{err}");
}

/// A workspace whose `.env` lives in `config/`, a folder of its own that can be mounted
/// read-only without `login/`.
fn env_in_config_folder(tag: &str, content: Option<&str>) -> (Workspace, std::path::PathBuf) {
    let ws = Workspace::new(tag);
    let config = ws.dir.join("config");
    fs::create_dir_all(&config).unwrap();
    if let Some(text) = content {
        write(&config.join(".env"), text);
    }
    let ws = ws.set("COMFY_INIT_ENV_FILE", config.join(".env"));
    (ws, config)
}

#[test]
fn a_read_only_env_folder_gets_password_written_a_warning_and_comfyui_started() {
    root_only!("a_read_only_env_folder_gets_password_written_a_warning_and_comfyui_started");
    let (ws, config) = env_in_config_folder("ro-env", Some("COMFYUI_PASSWORD=ro-env-pass\n"));
    let env = config.join(".env");
    let (code, out, err) = with_mounts(&ws, &read_only(&config), &["sync"]);
    assert_eq!(code, 0, "a read-only .env failed the sync: {out}{err}");
    assert!(bcrypt::verify("ro-env-pass", &password_file(&ws).0).unwrap());
    assert_eq!(read(&env), "COMFYUI_PASSWORD=ro-env-pass\n");
    let warning =
        err.lines().find(|l| l.contains("COMFYUI_BEARER_TOKEN not written back")).unwrap_or_else(|| panic!("{err}"));
    assert!(warning.contains(&env.display().to_string()) && warning.contains("read-only"), "{warning}");
    assert!(warning.contains("WARN"), "not a warning: {warning}");
    assert!(!out.contains(".env: COMFYUI_BEARER_TOKEN updated"), "a write that failed is said done: {out}");

    // As PID 1, with a new password: ComfyUI starts and answers the new token.
    write(&env, "COMFYUI_PASSWORD=ro-env-pass-2\n");
    let mounts = format!("{} && exec \"$@\"", read_only(&config));
    let prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", &mounts, "sh"];
    let init = ws.launch().prefix(&prefix).start();
    assert!(init.until(Duration::from_secs(20), || ws.status(None) == 401), "{}", init.stderr());
    let token = ws.token();
    assert!(bcrypt::verify("ro-env-pass-2", &token).unwrap());
    assert_eq!(ws.status(Some(&token)), 200, "{}", init.stderr());
    assert_eq!(read(&env), "COMFYUI_PASSWORD=ro-env-pass-2\n");
}

#[test]
fn a_generated_password_that_env_cannot_store_is_announced_once_and_kept() {
    root_only!("a_generated_password_that_env_cannot_store_is_announced_once_and_kept");
    let (ws, config) = env_in_config_folder("ro-gen", Some("KEEP=me\n"));
    let (code, out, err) = with_mounts(&ws, &read_only(&config), &["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("could NOT be stored"), "{err}");
    let password = err
        .lines()
        .find_map(|l| l.split_once("password: ").map(|(_, p)| p.trim().to_string()))
        .unwrap_or_else(|| panic!("no announcement: {err}"));
    let (hash, _) = password_file(&ws);
    assert!(bcrypt::verify(&password, &hash).unwrap(), "the announced password is not PASSWORD's");
    assert_eq!(read(&config.join(".env")), "KEEP=me\n");
    // The next pass keeps that password (nothing else configures one): no second one generated.
    let (code, out, err) = with_mounts(&ws, &read_only(&config), &["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(password_file(&ws).0, hash, "the announced password was replaced: {err}");
    assert!(!err.contains("password: "), "a second announcement: {err}");
}

#[test]
fn a_read_only_login_folder_never_lets_env_advertise_a_token_password_lacks() {
    root_only!("a_read_only_login_folder_never_lets_env_advertise_a_token_password_lacks");
    let ws = synced("ro-login-change");
    let password_before = read(&ws.password_file());
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=cannot-be-written");
    let env_before = read(&ws.env_file());
    let login = ws.password_file().parent().unwrap().to_path_buf();
    let (code, out, err) = with_mounts(&ws, &read_only(&login), &["sync"]);
    assert_eq!(code, 78, "{out}{err}");
    assert!(err.contains(&format!("cannot write {}", ws.password_file().display())), "{err}");
    assert!(err.contains("read-only"), "{err}");
    assert_eq!(read(&ws.password_file()), password_before);
    assert_eq!(read(&ws.env_file()), env_before, ".env advertises a token PASSWORD does not hold");
    // ComfyUI cannot get a valid PASSWORD for the new password: it is not started.
    let mounts = format!("{} && exec \"$@\"", read_only(&login));
    let prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", &mounts, "sh"];
    let (code, _, err) = ws.launch().prefix(&prefix).output(Duration::from_secs(20));
    assert_eq!(code, 78, "{err}");
    assert!(err.contains(&ws.password_file().display().to_string()), "{err}");
    assert_eq!(ws.starts(), 0, "the stand-in ran");
    assert_eq!(read(&ws.env_file()), env_before);
}

#[test]
fn rotate_refuses_a_read_only_single_file_env_before_writing_anything() {
    root_only!("rotate_refuses_a_read_only_single_file_env_before_writing_anything");
    let (ws, host) = single_file_env("bind-rotate", "COMFYUI_PASSWORD=rotate-pass\n");
    assert_eq!(with_mounts(&ws, &bind(&host, &ws.env_file()), &["sync"]).0, 0);
    let (password_before, env_before) = (read(&ws.password_file()), read(&host));
    let mounts = format!("{} && mount -o remount,bind,ro '{}'", bind(&host, &ws.env_file()), ws.env_file().display());
    let (code, out, err) = with_mounts(&ws, &mounts, &["rotate"]);
    assert_eq!(code, 78, "{out}{err}");
    assert!(err.contains("read-only"), "{err}");
    assert!(!err.contains("password: "), "a password announced that nothing holds: {err}");
    assert_eq!((read(&ws.password_file()), read(&host)), (password_before, env_before));
}

#[test]
fn a_password_generated_before_a_concurrent_save_of_env_is_stored_not_lost() {
    // PASSWORD is written first: a save of .env between PASSWORD and .env makes the sync start
    // over, and the password it generated (whose hash PASSWORD now holds) must still reach .env.
    let ws = Workspace::new("carried");
    write(&ws.env_file(), "# mine\n");
    let mut cmd = std::process::Command::new(bin());
    scrub_env(&mut cmd);
    let child = cmd
        .arg("sync")
        .envs(ws.env())
        .env("COMFY_INIT_TEST_PAUSE_MS", "400")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), &mut || ws.password_file().exists()), "PASSWORD never written");
    // Within the pause between PASSWORD and .env: an editor's save.
    ws.edit_env("NOTE", "NOTE=saved-meanwhile");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("starting over"), "the save did not land between the writes: {err}");
    let values = dotenv(&ws);
    assert_eq!(values["NOTE"], "saved-meanwhile", "the save was lost");
    let (hash, _) = password_file(&ws);
    let password = values.get("COMFYUI_PASSWORD").unwrap_or_else(|| panic!("the generated password was lost: {err}"));
    assert!(bcrypt::verify(password, &hash).unwrap());
    assert_eq!(values["COMFYUI_BEARER_TOKEN"], hash);
    assert!(err.contains(&format!("password: {password}")) && err.contains("It is stored in"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("PASSWORD: written"), "an earlier pass's write unsaid");
}

#[test]
fn a_new_password_that_cannot_be_written_leaves_comfyui_running_untouched() {
    // Issue 23: ComfyUI was stopped as soon as the new password was known to differ, before
    // PASSWORD was written; when the write then failed, the log said "ComfyUI keeps running"
    // while it was being restarted. Now nothing is acted on before PASSWORD holds the new token.
    root_only!("a_new_password_that_cannot_be_written_leaves_comfyui_running_untouched");
    let ws = Workspace::new("ro-login-run").set("COMFY_INIT_COMPANION", "off");
    let login = ws.comfyui().join("login");
    fs::create_dir_all(&login).unwrap();
    let hash = bcrypt::hash("first-pass", 4).unwrap();
    write(&ws.password_file(), &format!("{hash}\nadmin"));
    write(&ws.env_file(), "COMFYUI_PASSWORD=first-pass\n");
    let mounts = format!("{} && exec \"$@\"", read_only(&login));
    let prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c", &mounts, "sh"];
    let init = ws.launch().prefix(&prefix).env("FAKE_COMFYUI_START_DELAY", "0.3").start();
    assert!(init.until(Duration::from_secs(20), || ws.status(Some(&hash)) == 200), "{}", init.stderr());
    let pid = ws.comfyui_pid(&hash).unwrap();
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=second-pass");
    let said = init.until(Duration::from_secs(20), || init.stderr().contains("keeps running with its current token"));
    assert!(said, "{}", init.stderr());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ws.comfyui_pid(&hash), Some(pid), "ComfyUI was stopped or restarted: {}", init.stderr());
    assert_eq!(ws.starts(), 1, "{}", init.stderr());
    assert!(init.stderr().contains("login/PASSWORD"), "the failed write is named: {}", init.stderr());
}
