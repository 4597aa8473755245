//! The root/PUID boundary (security issue 22): comfy-init runs as root and gives ComfyUI's folders
//! to PUID, who owns them and may plant anything there between two starts or during one. Root
//! must never change or write anything outside ComfyUI's folders through what PUID planted: a
//! symlink in place of a folder, a folder swapped for a symlink while it is walked, a hard link
//! to a root file, a symlink in place of the companion's folder.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::util::*;

const LONG: Duration = Duration::from_secs(20);

/// ComfyUI's user in these tests.
const PUID: &str = "65534";

/// A workspace whose ComfyUI runs as PUID, with a password (so the stand-in answers 401 once it
/// serves) and a root-owned folder outside ComfyUI holding a root-owned file: the victim.
fn with_victim(tag: &str, chown: Option<&str>) -> (Workspace, PathBuf) {
    let ws = Workspace::new(tag).set("PUID", PUID).set("PGID", PUID);
    let ws = ws.set("FAKE_COMFYUI_EVENTS", ""); // the workspace is root's: no event log
    let ws = match chown {
        Some(mode) => ws.set("COMFY_INIT_CHOWN", mode),
        None => ws,
    };
    write(&ws.env_file(), "COMFYUI_PASSWORD=boundary-pass\n");
    // ComfyUI-Login's folder, root's: comfy-init gives it to PUID, and the node writes its key.
    fs::create_dir_all(ws.comfyui().join("custom_nodes/ComfyUI-Login")).unwrap();
    let victim = ws.dir.join("victim");
    fs::create_dir_all(&victim).unwrap();
    write(&victim.join("file"), "root's");
    (ws, victim)
}

fn owner(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).uid()
}

/// Starts comfy-init and waits until the stand-in serves (401: with auth), so that every root
/// step before ComfyUI (folders, companion) is done.
fn serving(ws: &Workspace) -> Running {
    let init = ws.launch().start();
    assert!(init.until(LONG, || ws.status(None) == 401), "ComfyUI did not serve: {}", init.stderr());
    init
}

#[test]
fn a_folder_replaced_by_a_symlink_gives_nothing_outside_comfyui() {
    root_only!("a_folder_replaced_by_a_symlink_gives_nothing_outside_comfyui");
    for chown in [None, Some("recursive")] {
        let (ws, victim) = with_victim("link-temp", chown);
        // PUID owned ComfyUI's temp/ at the last start and left this in its place.
        std::os::unix::fs::symlink(&victim, ws.comfyui().join("temp")).unwrap();
        let init = serving(&ws);
        let err = init.stderr();
        assert_eq!(owner(&victim), 0, "{chown:?}: the symlink's target was given to PUID:\n{err}");
        assert_eq!(owner(&victim.join("file")), 0, "{chown:?}: a file behind the symlink was given:\n{err}");
        let said = format!("{} is a symlink; not followed, not changed", ws.comfyui().join("temp").display());
        assert!(err.contains(&said), "{chown:?}: the log does not name the symlink:\n{err}");
    }
}

/// `output/d00`..`output/d63`, each with 40 files and a folder holding 5 more: about 3000 entries.
fn tree(output: &Path) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = (0..64).map(|i| output.join(format!("d{i:02}"))).collect();
    for dir in &dirs {
        fs::create_dir_all(dir.join("sub")).unwrap();
        for f in 0..40 {
            write(&dir.join(format!("f{f}")), "x");
        }
        for f in 0..5 {
            write(&dir.join(format!("sub/g{f}")), "x");
        }
    }
    dirs
}

/// Until `stop`: each of `dirs` exchanged with a symlink to `victim` (`renameat2` with
/// `RENAME_EXCHANGE`: one atomic step, so the name flips between folder and symlink as fast as
/// the kernel allows), over and over: what PUID can do to its own folders while root walks them.
fn swap_until(stop: &AtomicBool, dirs: &[PathBuf], victim: &Path) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
    let pairs: Vec<(CString, CString)> = dirs
        .iter()
        .map(|dir| {
            let link = dir.with_extension("link");
            std::os::unix::fs::symlink(victim, &link).unwrap();
            (c(dir), c(&link))
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        for (dir, link) in &pairs {
            // SAFETY: plain syscall on NUL-terminated paths.
            let rc = unsafe {
                libc::renameat2(libc::AT_FDCWD, dir.as_ptr(), libc::AT_FDCWD, link.as_ptr(), libc::RENAME_EXCHANGE)
            };
            if rc != 0 {
                eprintln!("renameat2 {dir:?}: {}", std::io::Error::last_os_error());
                return;
            }
        }
    }
}

#[test]
fn a_folder_swapped_for_a_symlink_during_the_recursive_walk_gives_nothing_outside_comfyui() {
    root_only!("a_folder_swapped_for_a_symlink_during_the_recursive_walk_gives_nothing_outside_comfyui");
    // The old walk (a check by path, then every step inside by path) gave a victim's file away
    // at the first start in each of 4 runs against it; five starts give the race its chances.
    for start in 0..5 {
        let (ws, victim) = with_victim("swap", Some("recursive"));
        let dirs = tree(&ws.comfyui().join("output"));
        // The victim holds the names the walk meets in each of those folders: a walk that goes by
        // path and meets the symlink midway changes the victim's files of those names.
        for f in 0..40 {
            write(&victim.join(format!("f{f}")), "root's");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let racers: Vec<_> = (0..8)
            .map(|t| {
                let (stop, victim) = (stop.clone(), victim.clone());
                let mine: Vec<PathBuf> = dirs.iter().skip(t).step_by(8).cloned().collect();
                thread::spawn(move || swap_until(&stop, &mine, &victim))
            })
            .collect();
        // Served, or stopped: the old walk could also fail on a vanished name and stop the start.
        let mut init = ws.launch().start();
        let served = wait_until(LONG, &mut || ws.status(None) == 401 || init.wait(Duration::ZERO).is_some());
        stop.store(true, Ordering::Relaxed);
        racers.into_iter().for_each(|r| r.join().unwrap());
        let err = init.stderr();
        assert_eq!(owner(&victim), 0, "start {start}: the victim folder was given to PUID:\n{err}");
        for entry in fs::read_dir(&victim).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(owner(&path), 0, "start {start}: {} was given to PUID:\n{err}", path.display());
        }
        assert!(served && ws.status(None) == 401, "start {start}: ComfyUI did not serve:\n{err}");
        assert!(err.contains("entries inside now owned by 65534:65534"), "start {start}: no walk:\n{err}");
    }
}

#[test]
fn a_hard_link_to_a_root_file_is_not_given_to_puid() {
    root_only!("a_hard_link_to_a_root_file_is_not_given_to_puid");
    let (ws, victim) = with_victim("hardlink", Some("recursive"));
    let output = ws.comfyui().join("output");
    fs::create_dir_all(output.join("old")).unwrap();
    write(&output.join("old/image.png"), "png");
    let link = output.join("old/shadow");
    fs::hard_link(victim.join("file"), &link).unwrap();
    let init = serving(&ws);
    let err = init.stderr();
    assert_eq!(owner(&victim.join("file")), 0, "a hard link to a root file was given to PUID:\n{err}");
    assert_eq!(owner(&output.join("old/image.png")), 65534, "the rest of the tree is PUID's:\n{err}");
    assert!(err.contains(&format!("{} has other hard links", link.display())), "not said:\n{err}");
}

#[test]
fn a_companion_folder_replaced_by_a_symlink_is_not_written_through() {
    root_only!("a_companion_folder_replaced_by_a_symlink_is_not_written_through");
    let (ws, victim) = with_victim("companion-link", None);
    let nodes = ws.comfyui().join("custom_nodes");
    let folder = nodes.join("comfy-init-companion");
    std::os::unix::fs::symlink(&victim, &folder).unwrap();
    let init = serving(&ws);
    let err = init.stderr();
    let written: Vec<_> = fs::read_dir(&victim).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(written, ["file"], "root wrote through the symlink:\n{err}");
    assert!(err.contains(&format!("{} is a symlink", folder.display())), "the symlink is not named:\n{err}");
    assert!(err.contains("the companion node is not installed"), "not said:\n{err}");
}

/// The `.env`'s folder given to PUID, as a host folder of the user's mounted at /config is.
fn env_folder_of_puid(ws: &Workspace) -> PathBuf {
    let config = ws.dir.join("config");
    fs::create_dir_all(&config).unwrap();
    std::os::unix::fs::chown(&config, Some(65534), Some(65534)).unwrap();
    config.join(".env")
}

#[test]
fn a_dotenv_symlink_left_by_puid_never_makes_root_create_or_read_a_file_there() {
    root_only!("a_dotenv_symlink_left_by_puid_never_makes_root_create_or_read_a_file_there");
    let (ws, victim) = with_victim("link-env", None);
    let env = env_folder_of_puid(&ws);
    // What PUID leaves in its own config folder: .env pointing where root loads libraries from.
    let preload = victim.join("ld.so.preload");
    std::os::unix::fs::symlink(&preload, &env).unwrap();
    let ws = ws.set("COMFY_INIT_ENV_FILE", &env).set("COMFYUI_PASSWORD", "boundary-pass");
    let (code, out, err) = ws.cli(&["sync"]);
    assert!(!preload.exists(), "root created {} (exit {code}): {out}{err}", preload.display());
    // PASSWORD first; the .env write-back is best-effort: refused as PUID, said, not fatal.
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("ld.so.preload") && err.contains("ermission denied"), "the warning names the file: {err}");
    // Nor is a root-only file read through such a link.
    fs::write(&preload, "COMFYUI_PASSWORD=root-secret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&preload, fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, err) = ws.cli(&["sync", "--dry-run"]);
    assert_ne!(code, 0, "root read a file it had to be pointed at: {out}{err}");
    assert!(err.contains("ermission denied"), "{err}");
    assert_eq!(fs::read_to_string(&preload).unwrap(), "COMFYUI_PASSWORD=root-secret\n");
}

#[test]
fn a_dotenv_in_a_folder_of_puid_is_still_written_and_a_root_folder_keeps_working_as_root() {
    root_only!("a_dotenv_in_a_folder_of_puid_is_still_written_and_a_root_folder_keeps_working_as_root");
    let (ws, _victim) = with_victim("env-puid", None);
    let env = env_folder_of_puid(&ws);
    write(&env, "COMFYUI_PASSWORD=boundary-pass\n");
    std::os::unix::fs::chown(&env, Some(65534), Some(65534)).unwrap();
    let ws = ws.set("COMFY_INIT_ENV_FILE", &env);
    let (code, out, err) = ws.cli(&["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(fs::read_to_string(&env).unwrap().contains("COMFYUI_BEARER_TOKEN="), "token not written back");
    assert_eq!(owner(&env), 65534);
    // The workspace's own .env (root's folder, root's file): written by root as before.
    let (ws2, _) = with_victim("env-root", None);
    let (code, out, err) = ws2.cli(&["sync"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(fs::read_to_string(ws2.env_file()).unwrap().contains("COMFYUI_BEARER_TOKEN="));
}

#[test]
fn a_login_folder_swapped_for_a_symlink_in_a_comfyui_folder_of_puid_gets_no_password() {
    root_only!("a_login_folder_swapped_for_a_symlink_in_a_comfyui_folder_of_puid_gets_no_password");
    let (ws, victim) = with_victim("link-login", None);
    // ComfyUI's folder is PUID's (a bind mount of the user's own ComfyUI): it may replace login/.
    std::os::unix::fs::chown(ws.comfyui(), Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::symlink(&victim, ws.comfyui().join("login")).unwrap();
    let (code, out, err) = ws.cli(&["sync"]);
    assert!(!victim.join("PASSWORD").exists(), "root wrote PASSWORD through PUID's link (exit {code}): {out}{err}");
    assert_eq!(owner(&victim), 0);
    assert_ne!(code, 0, "{out}{err}");
}

/// `comfy-init provision` run by hand as root (`docker exec`) with PUID set becomes PUID first: a
/// symlink PUID planted in place of `custom_nodes` leads root nowhere.
#[test]
fn provision_run_as_root_with_puid_set_acts_as_puid() {
    root_only!("provision_run_as_root_with_puid_set_acts_as_puid");
    if !std::process::Command::new("git").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return eprintln!("skipped: no git");
    }
    let (ws, victim) = with_victim("prov-root", None);
    let repo = ws.dir.join("repo");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").arg("-C").arg(&repo).args(args).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    fs::create_dir_all(&repo).unwrap();
    git(&["init", "-q"]);
    write(&repo.join("__init__.py"), "NODE_CLASS_MAPPINGS = {}\n");
    git(&["add", "."]);
    git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one"]);
    git(&["tag", "v1"]);
    // PUID's custom_nodes is a symlink to root's folder.
    fs::remove_dir_all(ws.comfyui().join("custom_nodes")).unwrap();
    std::os::unix::fs::symlink(&victim, ws.comfyui().join("custom_nodes")).unwrap();
    let manifest = ws.dir.join("provision.toml");
    write(
        &manifest,
        &format!(
            "[[node]]\ngit = \"file://{}\"\nref = \"v1\"\nname = \"Planted\"\nrequirements = false\n",
            repo.display()
        ),
    );
    let env = ws.env().into_iter().chain([("COMFY_INIT_PROVISION".to_string(), manifest.display().to_string())]);
    let out = comfy_init(&["provision"], env, LONG);
    assert_ne!(out.status(), 0, "provisioned through the symlink as root: {}", out.all());
    assert!(out.all().contains("Permission denied"), "{}", out.all()); // PUID's, not root's, reach
    assert!(!victim.join("Planted").exists(), "root cloned into the folder PUID's symlink points at");
    assert_eq!(fs::read_dir(&victim).unwrap().count(), 1, "something was written into root's folder");
}
