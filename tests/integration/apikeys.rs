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
    let digest = {
        use std::process::Command;
        let out = Command::new("python3")
            .args(["-c", &format!("import hashlib; print(hashlib.sha256(b'{expired}').hexdigest())")])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
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
