//! Property tests over every parser of outside input: `.env` text, PASSWORD bytes, hash shapes,
//! passwords, settings values, the command line and server answers. The property is the one PID 1
//! lives by: any bytes give an answer or a refusal, never a panic (a panic is an abort of PID 1,
//! and of the container). Where a parser has a stronger contract it is checked too.
//!
//! Inputs are random byte strings built from fragments that matter to these formats (bcrypt
//! prefixes, quotes, `$`, line ends, multi-byte and invalid UTF-8) and raw random bytes.
//! `COMFY_INIT_FUZZ_CASES` sets the cases per parser: a short run in `make test`, millions in
//! `make fuzz`. A failure prints the input, and the seed to replay it (`COMFY_INIT_FUZZ_SEED`).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config;
use crate::credentials::{self, dotenv_edit, password_file, plan, token};

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
    property("env", |rng| {
        let input = bytes(rng);
        let Ok(env) = dotenv_edit::EnvFile::parse(path, &input) else { return };
        for key in [credentials::KEY_PASSWORD, credentials::KEY_TOKEN, credentials::KEY_USERNAME, "OTHER"] {
            let _ = (env.get(key), env.raw(key));
        }
        // An edit is exact or refused: never a file that reads back differently.
        let value = text(rng).replace(['\n', '\r', '\0'], "");
        if let Ok(new) = dotenv_edit::set_checked(path, &env.text, credentials::KEY_TOKEN, &value) {
            let values = dotenv_edit::parse(&new).expect("an accepted edit parses");
            assert_eq!(values.get(credentials::KEY_TOKEN).map(String::as_str), Some(value.as_str()), "{new:?}");
        }
    });
}

#[test]
fn fuzz_password_files_and_hash_shapes() {
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
        }
        let s = String::from_utf8_lossy(&input);
        let _ = (token::check_shape(&s), token::cost(&s), token::too_costly(&s));
        let _ = token::validate_password(&s, "X");
        let _ = crate::health::wrong_token(&s);
    });
}

#[test]
fn fuzz_settings_values() {
    property("settings", |rng| {
        let value = text(rng);
        let _ = config::parse_duration("X", &value);
        if let Some(sig) = config::parse_signal(&value) {
            assert!((1..=libc::SIGRTMAX()).contains(&sig), "{value:?} -> {sig}");
            let _ = config::signal_name(sig);
        }
        let get = |_: &str| Some(value.clone());
        let _ = config::RunSettings::from_lookup(&get);
        let _ = config::comfyui_port(&get);
        if let Ok(Some((uid, gid))) = credentials::owner(&get) {
            assert!(uid != u32::MAX && gid != u32::MAX);
        }
        let _ = credentials::auth_enabled(&get);
        let _ = credentials::Settings::from_lookup(&get);
        let _ = crate::gpu::GpuSettings::from_lookup(&get);
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
