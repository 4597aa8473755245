//! The doors ComfyUI-Login leaves open, closed by the companion node, as an anonymous visitor and
//! as an API client meet them (comfy-init as PID 1 over the stand-in, which reproduces the real
//! node's suffix exemption, its bcrypt inside the event loop and its 500, FACTS.md). Each test
//! also shows the door open with `COMFY_INIT_COMPANION=off`: it fails without the fix.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::util::*;

const LONG: Duration = Duration::from_secs(20);

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).timeout(Duration::from_secs(10)).build()
}

/// `METHOD path` with an optional bearer token and body: (status, body, Retry-After).
fn ask(ws: &Workspace, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String, Option<String>) {
    let mut req = agent().request(method, &format!("http://127.0.0.1:{}{path}", ws.port));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let answer = if method == "POST" { req.send_string(body) } else { req.call() };
    let (status, r) = match answer {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(code, r)) => (code, r),
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let retry = r.header("Retry-After").map(String::from);
    (status, r.into_string().unwrap_or_default(), retry)
}

fn status(ws: &Workspace, method: &str, path: &str, token: Option<&str>) -> u16 {
    ask(ws, method, path, token, "").0
}

/// PID 1 over the stand-in with a password; serving, with the token.
fn serving(ws: &Workspace, companion: bool) -> (Running, String) {
    write(&ws.env_file(), "COMFYUI_PASSWORD=door-pass\n");
    let launch = ws.launch().env("COMFY_INIT_COMPANION", if companion { "on" } else { "off" });
    let init = launch.env("FAKE_COMFYUI_START_DELAY", "0.3").start();
    assert!(init.until(LONG, || ws.status(None) == 401), "ComfyUI never came up: {}", init.stderr());
    let token = ws.token();
    (init, token)
}

/// The user's files: a private workflow and a `.js` file, as ComfyUI keeps them.
fn user_files(ws: &Workspace) -> (PathBuf, PathBuf) {
    let user = ws.comfyui().join("user/default");
    fs::create_dir_all(user.join("workflows")).unwrap();
    let secret = user.join("workflows/secret.json");
    write(&secret, "{\"private\": true}");
    let script = user.join("x.js");
    write(&script, "// the user's");
    (secret, script)
}

#[test]
fn anonymous_read_write_move_and_delete_of_user_files_are_refused_and_nothing_changes() {
    root_only!("anonymous_read_write_move_and_delete_of_user_files_are_refused_and_nothing_changes");
    let ws = Workspace::new("doors");
    let (secret, script) = user_files(&ws);
    let user = ws.comfyui().join("user/default");
    let (init, token) = serving(&ws, true);
    for api in ["", "/api"] {
        let (code, _, _) = ask(&ws, "POST", &format!("{api}/userdata/evil.js"), None, "alert(1)");
        assert_eq!(code, 401, "{api}: anonymous write");
        let code = status(&ws, "POST", &format!("{api}/userdata/workflows%2Fsecret.json/move/stolen.js"), None);
        assert_eq!(code, 401, "{api}: anonymous move");
        assert_eq!(status(&ws, "GET", &format!("{api}/userdata/x.js"), None), 401, "{api}: anonymous read");
        assert_eq!(status(&ws, "GET", &format!("{api}/userdata/stolen.js"), None), 401, "{api}: anonymous read");
        assert_eq!(status(&ws, "DELETE", &format!("{api}/userdata/x.js"), None), 401, "{api}: anonymous delete");
    }
    assert!(!user.join("evil.js").exists() && !user.join("stolen.js").exists(), "a file was written");
    assert_eq!(fs::read_to_string(&secret).unwrap(), "{\"private\": true}", "the workflow moved");
    assert_eq!(fs::read_to_string(&script).unwrap(), "// the user's", "x.js was deleted");
    // What the door is for still opens: the frontend's files, the login page.
    assert_eq!(status(&ws, "GET", "/scripts/app.js", None), 200);
    assert_eq!(status(&ws, "GET", "/login", None), 200);
    // With the token, the user-data API works as before.
    assert_eq!(ask(&ws, "POST", "/userdata/mine.js", Some(&token), "ok").0, 200);
    assert_eq!(fs::read_to_string(user.join("mine.js")).unwrap(), "ok");
    assert_eq!(ask(&ws, "GET", "/api/userdata/x.js", Some(&token), "").1, "// the user's");
    assert_eq!(status(&ws, "POST", "/userdata/workflows%2Fsecret.json/move/moved.js", Some(&token)), 200);
    assert!(user.join("moved.js").exists() && !secret.exists());
    assert_eq!(status(&ws, "DELETE", "/userdata/moved.js", Some(&token)), 204);
    assert!(!user.join("moved.js").exists());
    let log = init.stdout() + &init.stderr();
    assert!(log.contains("refused POST /userdata/evil.js from 127.0.0.1"), "{log}");
    assert!(!log.contains(&token), "the token reached the log");
}

#[test]
fn without_the_companion_user_files_are_open_and_the_healthcheck_says_so() {
    root_only!("without_the_companion_user_files_are_open_and_the_healthcheck_says_so");
    let ws = Workspace::new("doors-open");
    let (secret, _) = user_files(&ws);
    let (init, _token) = serving(&ws, false);
    // The stand-in is the real node: its suffix exemption lets anyone in.
    assert_eq!(status(&ws, "POST", "/userdata/workflows%2Fsecret.json/move/stolen.js", None), 200);
    assert_eq!(ask(&ws, "GET", "/userdata/stolen.js", None, "").1, "{\"private\": true}");
    assert!(!secret.exists());
    let out = comfy_init(&["healthcheck"], ws.env(), LONG);
    assert_eq!(out.status(), 1, "{}", out.all());
    assert!(out.line().contains("UNHEALTHY: authentication is not enforced on user files"), "{}", out.line());
    assert!(out.line().contains("answered 404"), "{}", out.line());
    assert!(init.stderr().contains("COMFY_INIT_COMPANION=off"), "{}", init.stderr());

    let ws = Workspace::new("doors-closed");
    let (_init, _token) = serving(&ws, true);
    let out = comfy_init(&["healthcheck"], ws.env(), LONG);
    assert_eq!(out.status(), 0, "{}", out.all());
    assert!(out.line().contains("for a user file through a .js path"), "{}", out.line());
}

#[test]
fn a_malformed_authorization_header_gets_401_not_500() {
    root_only!("a_malformed_authorization_header_gets_401_not_500");
    for (companion, want) in [(false, 500), (true, 401)] {
        let ws = Workspace::new("doors-header");
        let (_init, token) = serving(&ws, companion);
        for header in ["Bearer a b", "Bearer ", "Bearer", &format!("Bearer {token} extra")] {
            let url = format!("http://127.0.0.1:{}/system_stats", ws.port);
            let code = match agent().get(&url).set("Authorization", header).call() {
                Ok(r) => r.status(),
                Err(ureq::Error::Status(code, _)) => code,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(code, want, "companion {companion}: {header:?}");
        }
        assert_eq!(ws.status(Some(&token)), 200);
    }
}

/// Wrong logins from `threads` clients for `flood`, while an API client asks /system_stats with
/// the token: (answers to the logins by status, the API's latencies in ms).
fn wrong_login_flood(ws: &Workspace, token: &str, threads: usize, flood: Duration) -> (Vec<u16>, Vec<f64>) {
    let url = format!("http://127.0.0.1:{}/login", ws.port);
    let end = Instant::now() + flood;
    let guessers: Vec<_> = (0..threads)
        .map(|t| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut codes = Vec::new();
                for i in 0.. {
                    if Instant::now() >= end {
                        break;
                    }
                    let guess = format!("guess-{t}-{i}");
                    let code = match agent().post(&url).send_form(&[("username", "admin"), ("password", &guess)]) {
                        Ok(r) => r.status(),
                        Err(ureq::Error::Status(code, r)) => {
                            assert!(code != 429 || r.header("Retry-After").is_some(), "429 without Retry-After");
                            code
                        }
                        Err(e) => panic!("{e}"),
                    };
                    codes.push(code);
                }
                codes
            })
        })
        .collect();
    let mut latencies = Vec::new();
    while Instant::now() < end {
        let t0 = Instant::now();
        assert_eq!(ws.status(Some(token)), 200);
        latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(20));
    }
    let codes = guessers.into_iter().flat_map(|g| g.join().unwrap()).collect();
    (codes, latencies)
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[test]
fn a_wrong_login_flood_is_answered_429_without_bcrypt_while_the_api_keeps_serving() {
    root_only!("a_wrong_login_flood_is_answered_429_without_bcrypt_while_the_api_keeps_serving");
    let count = |codes: &[u16], c: u16| codes.iter().filter(|x| **x == c).count();
    // Without the companion: every guess is checked, in the event loop (the stand-in's real bug).
    let ws = Workspace::new("doors-flood-open");
    let (_init, token) = serving(&ws, false);
    let (codes, open) = wrong_login_flood(&ws, &token, 4, Duration::from_secs(3));
    // Every guess checked (a 302 each, none throttled), more than the companion's 5 free ones;
    // how many fit in 3 s depends on the machine's load.
    assert_eq!(count(&codes, 429), 0);
    assert!(count(&codes, 302) == codes.len() && codes.len() > 5, "the bare node checks every guess: {codes:?}");

    let ws = Workspace::new("doors-flood");
    let (init, token) = serving(&ws, true);
    let (codes, closed) = wrong_login_flood(&ws, &token, 4, Duration::from_secs(3));
    // 5 free guesses, then one after 1 s and one after 2 more: bcrypt ran at most 7 times.
    assert!(count(&codes, 302) <= 7, "guesses were checked without limit: {}", count(&codes, 302));
    assert!(count(&codes, 429) > 0, "{codes:?}");
    assert_eq!(codes.len(), count(&codes, 302) + count(&codes, 429), "{codes:?}");
    // The right password from the same address is throttled too: no guessing around it.
    let url = format!("http://127.0.0.1:{}/login", ws.port);
    // The flood may end just as the next guess comes due: wrong guesses until one is refused with
    // a wait of 2 s or more left, so that the right password follows well inside that wait.
    let throttled =
        (0..6).any(|_| match agent().post(&url).send_form(&[("username", "admin"), ("password", "still-wrong")]) {
            Err(ureq::Error::Status(429, r)) => r.header("Retry-After").and_then(|v| v.parse::<u64>().ok()) >= Some(2),
            _ => false,
        });
    assert!(throttled, "wrong guesses after the flood were never throttled");
    let right = agent().post(&url).send_form(&[("username", "admin"), ("password", "door-pass")]);
    assert!(
        matches!(right, Err(ureq::Error::Status(429, _))),
        "a throttled address logged in: {:?} {}",
        right.as_ref().map(|r| r.status()).map_err(|e| e.to_string()),
        init.stderr()
    );
    eprintln!(
        "authenticated /system_stats p50 during a 4-thread wrong-login flood: {:.1} ms without the companion, \
         {:.1} ms with it ({} guesses answered 429)",
        p50(open),
        p50(closed),
        count(&codes, 429)
    );
    let log = init.stdout() + &init.stderr();
    assert!(log.contains("refused POST /login from 127.0.0.1: wrong password (1 from this address)"), "{log}");
    assert!(log.contains("next guess allowed in"), "{log}");
    assert!(log.lines().filter(|l| l.contains("refused POST /login")).count() < 10, "a flood floods the log: {log}");
    assert!(!log.contains("guess-"), "a password reached the log");
}

#[test]
fn a_huge_login_form_and_a_forged_log_line_are_refused_and_a_bad_cookie_is_no_session() {
    root_only!("a_huge_login_form_and_a_forged_log_line_are_refused_and_a_bad_cookie_is_no_session");
    let ws = Workspace::new("doors-hostile");
    let (init, token) = serving(&ws, true);
    let url = format!("http://127.0.0.1:{}/login", ws.port);
    let big = format!("username=admin&password={}", "x".repeat(1 << 20));
    let code = match agent().post(&url).set("Content-Type", "application/x-www-form-urlencoded").send_string(&big) {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(code, 413, "a 1 MiB login form was parsed");
    assert_eq!(status(&ws, "POST", "/a%0AFORGED%20LINE%0Ab.js", None), 401);
    let bad_cookie = agent()
        .get(&format!("http://127.0.0.1:{}/userdata/x.js", ws.port))
        .set("Cookie", "AIOHTTP_SESSION=%FF%FE")
        .call();
    assert!(matches!(bad_cookie, Err(ureq::Error::Status(401, _))), "{bad_cookie:?}");
    assert_eq!(ws.status(Some(&token)), 200);
    let log = init.stdout();
    assert!(log.contains("refused POST /a?FORGED LINE?b.js"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("FORGED")), "a request forged a log line: {log}");
}
