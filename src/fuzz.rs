//! Property tests over every parser of outside input: `.env` text, PASSWORD bytes, hash shapes,
//! passwords, settings values, the command line, server answers, the provisioning manifest and
//! cache, API key files and lifetimes, and URLs (as shown, and compared by origin). The property
//! is the one PID 1 lives by: any bytes give an answer or a refusal, never a panic (a panic is an
//! abort of PID 1, and of the container). Where a parser has a stronger contract it is checked
//! too.
//!
//! Inputs are random byte strings built from fragments that matter to these formats (bcrypt
//! prefixes, quotes, `$`, line ends, multi-byte and invalid UTF-8) and raw random bytes.
//! `COMFY_INIT_FUZZ_CASES` sets the cases per parser: a short run in `make test`, millions in
//! `make fuzz`. A failure prints the input, and the seed to replay it (`COMFY_INIT_FUZZ_SEED`).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config;
use crate::credentials::{self, dotenv_edit, password_file, plan, token};
use crate::supervisor::signals::{parse_signal, signal_name};

const FRAGMENTS: &[&[u8]] = &[
    b"$2b$",
    b"$2a$",
    b"$2y$",
    b"$2x$",
    b"12$",
    b"04$",
    b"31$",
    b"99$",
    b"$",
    b"'",
    b"\"",
    b"\\",
    b"=",
    b"#",
    b" ",
    b"\t",
    b"\n",
    b"\r\n",
    b"\r",
    b"\0",
    b"export ",
    b"COMFYUI_PASSWORD",
    b"COMFYUI_BEARER_TOKEN",
    b"COMFYUI_USERNAME",
    b"OTHER",
    b"\xc3\xa9",
    b"\xe6\x97\xa5",
    b"\xf0\x9f\x94\x91",
    b"\xff",
    b"\xc3",
    b"\xe6\x97",
    b"${",
    b"}",
    b"$VAR",
    b"admin",
    b"abcdefghijklmnopqrstuv",
    b"./",
    b"SIGRTMIN+",
    b"RTMIN+",
    b"-",
    b"+",
    b"ms",
    b"s",
    b"m",
    b"0",
    b"9",
    b"2147483647",
    b"4294967295",
    b"18446744073709551616",
    b".",
    b"e9",
    b"inf",
    b"NaN",
    b"SIG",
    b"INT",
    b"on",
    b"off",
    b"--",
    b"-h",
    b"--json",
    b"--dry-run",
    b"run",
    b"sync",
    b"{",
    b"[",
    b"\"system\":",
    b"null",
    b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
];

fn cases() -> usize {
    std::env::var("COMFY_INIT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

fn rng(target: &str) -> (StdRng, u64) {
    let seed = std::env::var("COMFY_INIT_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    let salt = target.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    (StdRng::seed_from_u64(seed ^ salt), seed)
}

fn bytes(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.random_range(0..24) {
        if rng.random_bool(0.7) {
            out.extend_from_slice(FRAGMENTS[rng.random_range(0..FRAGMENTS.len())]);
        } else {
            for _ in 0..rng.random_range(1..4) {
                out.push(rng.random());
            }
        }
    }
    out
}

fn text(rng: &mut StdRng) -> String {
    String::from_utf8_lossy(&bytes(rng)).into_owned()
}

/// A `.env`-shaped text: assignments (bare, quoted, exported, of our keys or others), comments,
/// blank lines and now and then a line of anything, with LF or CRLF.
fn env_lines(rng: &mut StdRng) -> Vec<u8> {
    const KEYS: &[&str] = &["COMFYUI_PASSWORD", "COMFYUI_BEARER_TOKEN", "COMFYUI_USERNAME", "OTHER", "HF_HOME"];
    let newline: &[u8] = if rng.random_bool(0.3) { b"\r\n" } else { b"\n" };
    let mut out = Vec::new();
    for _ in 0..rng.random_range(0..8) {
        let key = KEYS[rng.random_range(0..KEYS.len())];
        let word: String = text(rng).chars().filter(|c| c.is_ascii_alphanumeric() || "$/._-{}".contains(*c)).collect();
        let quoted: String = text(rng).chars().filter(|c| !"'\"\\\r\n".contains(*c)).collect();
        let line = match rng.random_range(0..7) {
            0 => format!("{key}={word}"),
            1 => format!("{key}='{quoted}'"),
            2 => format!("{key}=\"{quoted}\""),
            3 => format!("export {key}={word}"),
            4 => format!("# {quoted}"),
            5 => String::new(),
            _ => text(rng),
        };
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(newline);
    }
    out
}

/// Runs `check` over random inputs; a panic names the seed that replays it.
fn property(target: &str, mut check: impl FnMut(&mut StdRng)) {
    let (mut rng, seed) = rng(target);
    for case in 0..cases() {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&mut rng)));
        if result.is_err() {
            panic!("{target}: case {case} failed; replay with COMFY_INIT_FUZZ_SEED={seed}");
        }
    }
}

#[test]
fn fuzz_env_files_parse_or_are_refused_and_edits_are_exact() {
    let path = std::path::Path::new("/x/.env");
    let (mut parsed, mut edited) = (0, 0);
    property("env", |rng| {
        // Half raw bytes, half line-structured files, so that edits are exercised, not only refusals.
        let input = if rng.random_bool(0.5) { bytes(rng) } else { env_lines(rng) };
        let Ok(env) = dotenv_edit::EnvFile::parse(path, &input) else { return };
        parsed += 1;
        for key in [credentials::KEY_PASSWORD, credentials::KEY_TOKEN, credentials::KEY_USERNAME, "OTHER"] {
            let _ = (env.get(key), env.raw(key));
        }
        // An edit is exact or refused: never a file that reads back differently.
        let value = text(rng).replace(['\n', '\r', '\0'], "");
        if let Ok(new) = dotenv_edit::set_checked(path, &env.text, credentials::KEY_TOKEN, &value) {
            let values = dotenv_edit::parse(&new).expect("an accepted edit parses");
            assert_eq!(values.get(credentials::KEY_TOKEN).map(String::as_str), Some(value.as_str()), "{new:?}");
            edited += 1;
        }
    });
    // The property must have been exercised, not only refused.
    assert!(parsed > cases() / 10 && edited > cases() / 20, "parsed {parsed}, edited {edited} of {}", cases());
}

#[test]
fn fuzz_password_files_and_hash_shapes() {
    let mut hashes = 0;
    property("password", |rng| {
        let mut input = bytes(rng);
        if rng.random_bool(0.3) {
            // Near-hashes: 60 bytes with a prefix, so the deeper checks are reached.
            let mut near = b"$2b$12$".to_vec();
            near.extend(std::iter::repeat_n(b'A', 53));
            let at = rng.random_range(0..near.len());
            let with: Vec<u8> = bytes(rng).into_iter().take(3).collect();
            near.splice(at..(at + with.len()).min(near.len()), with);
            input = [near, b"\n".to_vec(), input].concat();
        }
        if let plan::FileState::Hash { hash, .. } = password_file::parse(&input) {
            assert_eq!(token::check_shape(&hash), Ok(()));
            hashes += 1;
        }
        let s = String::from_utf8_lossy(&input);
        let _ = (token::check_shape(&s), token::cost(&s), token::too_costly(&s));
        let _ = token::validate_password(&s);
        let _ = crate::health::wrong_token(&s);
    });
    assert!(hashes > 0, "no input ever parsed as a hash: the deeper checks were never reached");
}

/// Every variable comfy-init reads.
const VARIABLES: &[&str] = &[
    "COMFY_INIT_GUEST_MODE",
    "COMFY_INIT_COMPANION",
    "COMFY_INIT_ON_TOKEN_CHANGE",
    "COMFY_INIT_GPU_SELECT",
    "COMFY_INIT_CHOWN",
    "NVIDIA_VISIBLE_DEVICES",
    "COMFYUI_DIR",
    "COMFYUI_PORT",
    "COMFYUI_ARGS",
    "CLI_ARGS",
    "COMFYUI_PYTHON",
    "COMFY_INIT_ENV_FILE",
    "COMFYUI_USERNAME",
    "COMFYUI_PASSWORD",
    "COMFYUI_PASSWORD_FILE",
    "COMFYUI_BEARER_TOKEN",
    "COMFY_INIT_AUTH",
    "COMFY_INIT_GPU",
    "COMFY_INIT_MIN_VRAM_GB",
    "COMFY_INIT_NVML_LIB",
    "CUDA_VERSION",
    "COMFY_INIT_STOP_SIGNAL",
    "COMFY_INIT_STOP_TIMEOUT",
    "COMFY_INIT_RESTART",
    "COMFY_INIT_HEALTH_TIMEOUT",
    "PUID",
    "PGID",
];

#[test]
fn fuzz_settings_values() {
    property("settings", |rng| {
        let value = text(rng);
        let _ = config::parse_duration("X", &value);
        if let Some(sig) = parse_signal(&value) {
            assert!((1..=libc::SIGRTMAX()).contains(&sig), "{value:?} -> {sig}");
            let _ = signal_name(sig);
        }
        // Each variable unset or random: the whole environment is read in one place.
        let mut env = std::collections::HashMap::new();
        for name in VARIABLES {
            if rng.random_bool(0.3) {
                env.insert(*name, text(rng));
            }
        }
        let get = |name: &str| env.get(name).cloned();
        if let Ok(s) = config::Settings::from_lookup(&get) {
            assert!((1..=libc::SIGRTMAX()).contains(&s.supervisor.stop_signal));
            assert!(s.owner.is_none_or(|(u, g)| u != u32::MAX && g != u32::MAX));
            assert!(!s.health_timeout.is_zero() && s.comfyui.port != 0);
        }
    });
}

#[test]
fn fuzz_command_lines() {
    use std::os::unix::ffi::OsStringExt;
    property("cli", |rng| {
        let args = (0..rng.random_range(0..5)).map(|_| std::ffi::OsString::from_vec(bytes(rng))).collect();
        let _ = crate::cli::parse(args);
    });
}

#[test]
fn fuzz_server_answers() {
    use crate::health::{judge_refusal, judge_stats, Reply, Request};
    property("health", |rng| {
        let reply = Reply::Answer { status: rng.random_range(0..700), body: text(rng) };
        let _ = judge_stats(&reply, Request::Anonymous);
        let _ = judge_refusal(&reply, Request::EmptyToken);
    });
}

#[test]
fn fuzz_the_credential_plan() {
    property("plan", |rng| {
        let pick = |rng: &mut StdRng| rng.random_bool(0.5).then(|| text(rng));
        let file = match rng.random_range(0..4) {
            0 => plan::FileState::Missing,
            1 => plan::FileState::Empty,
            2 => plan::FileState::Malformed(text(rng)),
            _ => plan::FileState::Hash { hash: text(rng), username: text(rng), exact: rng.random() },
        };
        let (password, pinned, running) = (pick(rng), pick(rng), pick(rng));
        let verdict: bool = rng.random();
        let inputs = plan::Inputs {
            file: &file,
            password: password.as_deref(),
            username: "admin",
            pinned: pinned.as_deref(),
            running: running.as_deref(),
        };
        let _ = plan::plan(&inputs, &|_, _| verdict, &token::check_shape);
    });
}

/// A manifest-shaped text: `[[model]]` and `[[node]]` tables with their keys, values mostly of
/// the kinds the checks look at (`..`, absolute paths, hidden names, queries, credentials,
/// http://, our own variables), now and then anything, and stray lines.
fn manifest_text(rng: &mut StdRng) -> String {
    const MODEL: &[(&str, &[&str])] = &[
        (
            "url",
            &[
                "https://h.co/a/x.safetensors",
                "http://127.0.0.1:8/x.bin",
                "http://h.co/x.bin",
                "https://h.co/x?token=1",
                "https://u:p@h.co/x.bin",
                "file:///etc/passwd",
                "https://h.co/",
            ],
        ),
        ("dir", &["checkpoints", "loras/sd15", "..", "../../etc", "/etc", "a//b", "./x", ""]),
        ("file", &["x.bin", ".hidden", "a/b.bin", "..", "", "x y.bin"]),
        ("sha256", &["0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "ABCDEF", ""]),
        ("auth_env", &["HF_TOKEN", "COMFYUI_PASSWORD", "1X", ""]),
    ];
    const NODE: &[(&str, &[&str])] = &[
        (
            "git",
            &["https://github.com/a/b", "https://u:p@h.co/a/b", "file:///srv/node", "ext::sh -c x", "-upload-pack=x"],
        ),
        ("ref", &["v1", "main", "0123456789abcdef0123456789abcdef01234567", "-x", ""]),
        ("name", &["Node", ".git", "..", "a/b", ""]),
        ("requirements", &["true", "false"]),
    ];
    let mut out = String::new();
    for _ in 0..rng.random_range(0..4) {
        let (section, keys) = match rng.random_range(0..20) {
            0..=9 => ("model", MODEL),
            10..=18 => ("node", NODE),
            _ => ("other", NODE),
        };
        out.push_str(&format!("[[{section}]]\n"));
        for (key, values) in keys {
            if rng.random_bool(0.05) {
                continue;
            }
            // The first value is a good one: most tables are valid but for one value.
            let value = match rng.random_range(0..10) {
                0 => text(rng),
                1..=8 => values[0].to_string(),
                _ => values[rng.random_range(0..values.len())].to_string(),
            };
            if matches!(value.as_str(), "true" | "false") {
                out.push_str(&format!("{key} = {value}\n"));
            } else {
                out.push_str(&format!("{key} = \"{}\"\n", value.replace('\\', "\\\\").replace('"', "\\\"")));
            }
        }
        if rng.random_bool(0.05) {
            out.push_str(&text(rng));
            out.push('\n');
        }
    }
    out
}

#[test]
fn fuzz_the_provisioning_manifest_and_what_servers_and_users_write() {
    use crate::credentials::api_keys;
    use crate::provision::{cache, manifest, redirect};
    use std::path::{Component, Path};
    let path = Path::new("/config/provision.toml");
    let plain = |name: &str| !name.is_empty() && !name.starts_with('.') && !name.contains('/');
    let (mut models, mut nodes) = (0, 0);
    property("manifest", |rng| {
        let text = if rng.random_bool(0.8) { manifest_text(rng) } else { text(rng) };
        match manifest::parse(path, &text) {
            // What leaves the parser is safe to join under ComfyUI's folders.
            Ok(m) => {
                models += m.models.len();
                nodes += m.nodes.len();
                for model in &m.models {
                    assert!(model.dir.components().all(|c| matches!(c, Component::Normal(_))), "{model:?}");
                    assert!(plain(&model.file), "{model:?}");
                    assert!(!model.url.chars().any(char::is_control), "{model:?}");
                }
                for node in &m.nodes {
                    assert!(plain(&node.name), "{node:?}");
                }
            }
            Err(e) => assert!(e.to_string().starts_with("/config/provision.toml"), "{e}"),
        }
    });
    // The property must have been exercised, not only refused.
    assert!(models > cases() / 20 && nodes > cases() / 20, "{models} models and {nodes} nodes accepted");
    property("urls", |rng| {
        let (a, b) = (text(rng), text(rng));
        let shown = manifest::shown_url(&a);
        assert!(!shown.contains(['?', '#']), "{a:?} shown as {shown:?}");
        assert_eq!(redirect::same_origin(&a, &a), redirect::origin(&a).is_some(), "{a:?}");
        assert_eq!(redirect::same_origin(&a, &b), redirect::same_origin(&b, &a), "{a:?} {b:?}");
    });
    property("user files", |rng| {
        let raw = bytes(rng);
        let _ = cache::parse(&raw);
        let text = String::from_utf8_lossy(&raw);
        let (keys, _) = api_keys::parse_lines(&text);
        assert!(keys.len() <= text.lines().count());
        let _ = api_keys::parse_lifetime(&text);
    });
}
