//! API keys (issue 25): `comfy-init apikey add|list|revoke`, and the companion letting a valid key
//! through as ComfyUI-Login's token, in place, while ComfyUI runs.

use std::fs;
use std::time::{Duration, Instant};

use crate::util::*;

const LONG: Duration = Duration::from_secs(20);

/// A ComfyUI that answers its password's token; returns the token.
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

fn add_key(ws: &Workspace, args: &[&str]) -> String {
    let mut all = vec!["apikey", "add"];
    all.extend_from_slice(args);
    let (code, out, err) = ws.cli(&all);
    assert_eq!(code, 0, "apikey add: {err}");
    let key = out.trim().to_string();
    assert!(key.starts_with("cik_") && key.len() == 68, "{key}");
    key
}

fn post_prompt(ws: &Workspace, key: &str) -> u16 {
    let body = r#"{"prompt": {"1": {"class_type": "StandinSleep", "inputs": {"seconds": 0}}}}"#;
    let request = ureq::post(&format!("http://127.0.0.1:{}/prompt", ws.port))
        .set("Authorization", &format!("Bearer {key}"))
        .set("Content-Type", "application/json");
    match request.send_string(body) {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(_) => 0,
    }
}

#[test]
fn a_key_works_until_revoked_in_place_and_never_reaches_a_log_or_the_key_file() {
    root_only!("a_key_works_until_revoked_in_place_and_never_reaches_a_log_or_the_key_file");
    let ws = Workspace::new("ak-flow");
    write(&ws.env_file(), "COMFYUI_PASSWORD=key-pass\n");
    let init = ws.launch().start();
    let token = serving(&ws, &init);
    let pid = ws.comfyui_pid(&token).unwrap();
    let key = add_key(&ws, &["ci"]);
    let served = init.until(LONG, || ws.status(Some(&key)) == 200);
    assert!(served, "the new key was never accepted: {}", init.stderr());
    assert_eq!(post_prompt(&ws, &key), 200, "a read-write key posts prompts");
    let (_, list, _) = ws.cli(&["apikey", "list"]);
    assert!(list.contains("ci  created") && list.contains("read-write") && !list.contains(&key), "{list}");
    // "Last used", written by the companion in a batch a few seconds after the use.
    let mut list = String::new();
    let used = init.until(LONG, || {
        list = ws.cli(&["apikey", "list"]).1;
        list.contains("last used just now")
    });
    assert!(used, "the key's use was never recorded: {list}");
    let (_, health, _) = ws.cli(&["healthcheck"]);
    assert!(health.contains("with a malformed and an unknown API key"), "{health}");
    let file = fs::read_to_string(ws.comfyui().join("login/API_KEYS")).unwrap();
    assert!(!file.contains(&key), "the key itself is stored: {file}");
    // Revoked: refused within a second, same ComfyUI.
    let (code, _, err) = ws.cli(&["apikey", "revoke", "ci"]);
    assert_eq!(code, 0, "{err}");
    let t0 = Instant::now();
    assert!(init.until(LONG, || ws.status(Some(&key)) == 401), "a revoked key still works");
    eprintln!("revoke -> 401 in {:?}", t0.elapsed());
    assert_eq!(ws.comfyui_pid(&token), Some(pid), "ComfyUI was restarted");
    let logs = init.stdout() + &init.stderr();
    assert!(!logs.contains(&key), "the key reached a log line");
}

#[test]
fn a_read_only_key_reads_an_expired_or_unknown_key_is_refused_and_a_password_change_keeps_keys() {
    root_only!("a_read_only_key_reads_an_expired_or_unknown_key_is_refused_and_a_password_change_keeps_keys");
    let ws = Workspace::new("ak-kinds");
    write(&ws.env_file(), "COMFYUI_PASSWORD=key-pass\n");
    let init = ws.launch().start();
    serving(&ws, &init);
    let reader = add_key(&ws, &["dashboard", "--read-only"]);
    let writer = add_key(&ws, &["worker", "--expires", "30d"]);
    assert!(init.until(LONG, || ws.status(Some(&reader)) == 200), "{}", init.stderr());
    assert_eq!(post_prompt(&ws, &reader), 401, "a read-only key posted a prompt");
    // An expired key: its line as the CLI would have written it, 1 s of life, long ago.
    let expired = "cik_".to_string() + &"ab".repeat(32);
    let digest = sha256(expired.as_bytes());
    let keys = ws.comfyui().join("login/API_KEYS");
    let mut text = fs::read_to_string(&keys).unwrap();
    text += &format!("old {digest} 1000 1001 rw\n");
    fs::write(&keys, text).unwrap();
    let unknown = "cik_".to_string() + &"cd".repeat(32);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(ws.status(Some(&expired)), 401, "an expired key works");
    assert_eq!(ws.status(Some(&unknown)), 401, "an unknown key works");
    assert_eq!(ws.status(Some("cik_short")), 401, "a malformed key works");
    // A password change (a reload of ComfyUI-Login's token) leaves every key working.
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=other-pass");
    let changed = init.until(LONG, || init.stderr().contains("no restart needed"));
    assert!(changed, "{}", init.stderr());
    assert_eq!(ws.status(Some(&writer)), 200, "the password change broke a key");
    assert_eq!(post_prompt(&ws, &writer), 200);
}

#[test]
fn with_the_password_token_off_only_keys_open_the_api_and_the_healthcheck_proves_it() {
    root_only!("with_the_password_token_off_only_keys_open_the_api_and_the_healthcheck_proves_it");
    let ws = Workspace::new("ak-off").set("COMFY_INIT_PASSWORD_TOKEN", "off");
    write(&ws.env_file(), "COMFYUI_PASSWORD=key-pass\n");
    let init = ws.launch().start();
    let key_file = ws.comfyui().join("login/API_KEYS");
    let up = init.until(LONG, || ws.cli(&["healthcheck", "--ready"]).0 == 0);
    assert!(up, "never ready: {}", init.stderr());
    let (code, health, _) = ws.cli(&["healthcheck"]);
    assert_eq!(code, 0, "{health}");
    assert!(health.contains("the password's token is refused (COMFY_INIT_PASSWORD_TOKEN=off)"), "{health}");
    let (code, token, warning) = ws.cli(&["token"]);
    assert!(code == 0 && warning.contains("refuses this token"), "{warning}");
    let token = token.trim().to_string();
    assert_eq!(ws.status(Some(&token)), 401, "the password's token still opens the API");
    let key = add_key(&ws, &["only"]);
    assert!(init.until(LONG, || ws.status(Some(&key)) == 200), "{}", init.stderr());
    assert!(!fs::read_to_string(&key_file).unwrap().contains(&key));
    // comfy-init's own key is root's, in the run folder; ComfyUI got only its digest.
    let own = fs::read_to_string(ws.run_dir().join("key")).unwrap();
    assert_eq!(
        fs::metadata(ws.run_dir().join("key"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap(),
        0o600
    );
    // A password change is still reloaded in place and proven (by comfy-init's own requests).
    ws.edit_env("COMFYUI_PASSWORD", "COMFYUI_PASSWORD=other-pass");
    let changed = init.until(LONG, || init.stderr().contains("no restart needed"));
    assert!(changed, "{}", init.stderr());
    assert_eq!(ws.status(Some(&key)), 200, "the password change broke the key");
    assert_eq!(ws.status(Some(&ws.token())), 401, "the new token opens the API");
    let logs = init.stdout() + &init.stderr();
    assert!(!logs.contains(&key) && !logs.contains(own.trim()), "a key reached a log line");
}

#[test]
fn an_operators_key_list_swapped_like_a_kubernetes_secret_applies_in_place() {
    root_only!("an_operators_key_list_swapped_like_a_kubernetes_secret_applies_in_place");
    // Kubernetes mounts a Secret as <dir>/API_KEYS -> ..data/API_KEYS, ..data -> ..<timestamp>,
    // and updates it by writing a new timestamped folder and renaming a new ..data link over the old.
    let secret = TempDir::new("ak-secret");
    let version = |n: u32, lines: &str| {
        let dir = secret.join(format!("..2026_12_07_{n}"));
        fs::create_dir_all(&dir).unwrap();
        write(&dir.join("API_KEYS"), lines);
        std::os::unix::fs::symlink(dir.file_name().unwrap(), secret.join("..data_tmp")).unwrap();
        fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    };
    let (first, second) = ("cik_".to_string() + &"1a".repeat(32), "cik_".to_string() + &"2b".repeat(32));
    let line = |name: &str, key: &str| format!("{name} {} 1000 - rw\n", sha256(key.as_bytes()));
    version(1, &line("deploy-a", &first));
    std::os::unix::fs::symlink("..data/API_KEYS", secret.join("API_KEYS")).unwrap();
    let ws = Workspace::new("ak-k8s").set("COMFYUI_API_KEYS_FILE", secret.join("API_KEYS"));
    write(&ws.env_file(), "COMFYUI_PASSWORD=key-pass\n");
    let init = ws.launch().start();
    serving(&ws, &init);
    assert_eq!(ws.status(Some(&first)), 200, "the Secret's key is refused: {}", init.stderr());
    let (_, list, _) = ws.cli(&["apikey", "list"]);
    assert!(list.contains("deploy-a") && list.contains("(COMFYUI_API_KEYS_FILE)"), "{list}");
    let (code, _, err) = ws.cli(&["apikey", "revoke", "deploy-a"]);
    assert!(code != 0 && err.contains("does not write"), "{err}");
    let pid = ws.comfyui_pid(&ws.token());
    version(2, &line("deploy-b", &second));
    let t0 = Instant::now();
    let swapped = init.until(LONG, || ws.status(Some(&first)) == 401 && ws.status(Some(&second)) == 200);
    assert!(swapped, "the new Secret was not applied: {}", init.stderr());
    eprintln!("Secret swapped -> applied in {:?}", t0.elapsed());
    assert_eq!(ws.comfyui_pid(&ws.token()), pid, "ComfyUI was restarted");
}
