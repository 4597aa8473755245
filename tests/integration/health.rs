//! `comfy-init healthcheck` against the stand-in ComfyUI (tests/fixtures/fake_comfyui.py) and
//! against tiny servers of our own for the misbehaving cases.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::Duration;

use crate::util::*;

/// Two hashes of bcrypt's shape: the stand-in compares strings, it never verifies them.
const HASH_A: &str = "$2b$12$abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0";
const HASH_B: &str = "$2b$12$abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ1";

/// A ComfyUI folder with the stand-in as main.py, and the stand-in running on a free port.
struct Comfy {
    dir: TempDir,
    port: u16,
    child: Child,
}

impl Comfy {
    /// `password`: the content of login/PASSWORD at start (None: no file).
    fn start(password: Option<&str>, knobs: &[(&str, &str)]) -> Comfy {
        let dir = TempDir::new("health");
        let root = dir.join("ComfyUI");
        std::fs::create_dir_all(root.join("login")).unwrap();
        std::fs::copy(fixtures().join("fake_comfyui.py"), root.join("main.py")).unwrap();
        if let Some(p) = password {
            write(&root.join("login/PASSWORD"), p);
        }
        install_companion(&root);
        let port = free_port();
        let child = Command::new("python3")
            .arg(root.join("main.py"))
            .args(["--listen", "127.0.0.1", "--port", &port.to_string()])
            .envs(knobs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the health tests need python3 for the stand-in ComfyUI");
        let mut comfy = Comfy { dir, port, child };
        let up = wait_until(Duration::from_secs(10), &mut || TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "the stand-in ComfyUI did not listen on {port}");
        assert!(comfy.child.try_wait().unwrap().is_none(), "the stand-in exited");
        comfy
    }

    fn password_file(&self) -> PathBuf {
        self.dir.join("ComfyUI/login/PASSWORD")
    }

    fn healthcheck(&self, env: &[(&str, &str)]) -> Check {
        healthcheck(self.dir.path(), self.port, env)
    }
}

/// The companion node, as comfy-init installs it at start: it closes ComfyUI-Login's `.js` door,
/// which the healthcheck proves closed (tests/integration/doors.rs shows it open without).
fn install_companion(root: &Path) {
    let to = root.join("custom_nodes/comfy-init-companion");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("companion")).unwrap() {
        let from = entry.unwrap().path();
        if from.extension().is_some_and(|e| e == "py") {
            std::fs::copy(&from, to.join(from.file_name().unwrap())).unwrap();
        }
    }
}

impl Drop for Comfy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Check = Output;

/// Runs `comfy-init healthcheck` with only the environment given (GPU off unless overridden).
fn healthcheck(dir: &Path, port: u16, env: &[(&str, &str)]) -> Check {
    healthcheck_args(dir, port, &["healthcheck"], env)
}

fn healthcheck_args(dir: &Path, port: u16, args: &[&str], env: &[(&str, &str)]) -> Check {
    let (comfyui, env_file, port) = (dir.join("ComfyUI"), dir.join(".env"), port.to_string());
    let base = [
        ("COMFYUI_DIR", comfyui.to_str().unwrap()),
        ("COMFYUI_PORT", port.as_str()),
        ("COMFY_INIT_ENV_FILE", env_file.to_str().unwrap()),
        ("COMFY_INIT_GPU", "off"),
    ];
    let check = comfy_init(args, base.into_iter().chain(env.iter().copied()), Duration::from_secs(20));
    assert!(check.stdout.len() < 4096, "{check:?}");
    for hash in [HASH_A, HASH_B] {
        assert!(!check.stdout.contains(hash) && !check.stderr.contains(hash), "token printed: {check:?}");
    }
    check
}

fn assert_unhealthy(check: &Check, phrase: &str) {
    assert_eq!(check.code, Some(1), "{check:?}");
    assert!(check.line().starts_with("UNHEALTHY: "), "{check:?}");
    assert!(check.line().contains(phrase), "wanted '{phrase}': {check:?}");
    assert_eq!(check.stdout.lines().count(), 1, "{check:?}");
}

fn logged_in() -> String {
    format!("{HASH_A}\nadmin")
}

#[test]
fn healthy_names_version_and_device() {
    let comfy = Comfy::start(Some(&logged_in()), &[]);
    let check = comfy.healthcheck(&[]);
    assert_eq!(check.code, Some(0), "{check:?}");
    let line = check.line();
    assert!(line.starts_with("healthy: ComfyUI 0.3.0-standin"), "{line}");
    assert!(line.contains("device cpu (stand-in)"), "{line}");
    assert!(line.contains("auth enforced"), "{line}");
    assert_eq!(check.stdout.lines().count(), 1);
}

#[test]
fn auth_off_skips_the_token_and_says_so() {
    let comfy = Comfy::start(None, &[("FAKE_COMFYUI_NO_AUTH", "1")]);
    let check = comfy.healthcheck(&[("COMFY_INIT_AUTH", "off")]);
    assert_eq!(check.code, Some(0), "{check:?}");
    assert!(check.line().contains("auth not checked (COMFY_INIT_AUTH=off)"), "{check:?}");
}

#[test]
fn not_listening() {
    let dir = TempDir::new("health");
    std::fs::create_dir_all(dir.join("ComfyUI/login")).unwrap();
    write(&dir.join("ComfyUI/login/PASSWORD"), &logged_in());
    let check = healthcheck(dir.path(), free_port(), &[]);
    assert_unhealthy(&check, "not listening");
}

/// A server that accepts and then does `serve` with each connection, forever.
fn tiny_server(serve: fn(TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
    port
}

fn deadline_case(serve: fn(TcpStream)) -> Check {
    let dir = TempDir::new("health");
    std::fs::create_dir_all(dir.join("ComfyUI/login")).unwrap();
    write(&dir.join("ComfyUI/login/PASSWORD"), &logged_in());
    let port = tiny_server(serve);
    let check = healthcheck(dir.path(), port, &[("COMFY_INIT_HEALTH_TIMEOUT", "1s")]);
    assert_unhealthy(&check, "timeout");
    assert!(check.took < Duration::from_millis(1500), "took {:?}", check.took);
    assert!(check.took >= Duration::from_millis(900), "took {:?}", check.took);
    check
}

#[test]
fn a_server_that_never_answers_times_out_within_the_deadline() {
    deadline_case(|mut s| {
        let mut buf = [0u8; 4096];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
}

#[test]
fn a_trickling_server_cannot_stretch_the_deadline() {
    deadline_case(|mut s| {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n";
        let _ = s.write_all(head.as_bytes());
        // One byte every 100 ms: each read succeeds, the answer never completes.
        while s.write_all(b" ").is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

#[test]
fn token_out_of_sync_is_a_401_for_our_token() {
    let comfy = Comfy::start(Some(&logged_in()), &[]);
    // ComfyUI-Login read HASH_A at start; the file now holds another token.
    write(&comfy.password_file(), &format!("{HASH_B}\nadmin"));
    let check = comfy.healthcheck(&[]);
    assert_unhealthy(&check, "token out of sync");
    assert!(check.line().contains("comfy-init sync"), "{check:?}");
}

#[test]
fn comfyui_without_the_login_node_is_not_enforcing_auth() {
    let comfy = Comfy::start(None, &[("FAKE_COMFYUI_NO_AUTH", "1")]);
    write(&comfy.password_file(), &logged_in());
    let check = comfy.healthcheck(&[]);
    assert_unhealthy(&check, "authentication is not enforced");
    assert!(check.line().contains("answered 200 without a token"), "{check:?}");
}

#[test]
fn empty_password_file_opens_the_empty_token_bypass() {
    // Like ComfyUI-Login after the /login truncation bug: PASSWORD is 0 bytes, the token is "",
    // and `?token=` (empty) gets in. Without a token of ours the healthcheck still finds the
    // open door, and says why it had no token.
    let comfy = Comfy::start(Some(""), &[]);
    let check = comfy.healthcheck(&[]);
    assert_unhealthy(&check, "authentication is not enforced");
    assert!(check.line().contains("with an empty ?token="), "{check:?}");
    assert!(check.line().contains("is empty"), "{check:?}");
}

#[test]
fn a_server_that_takes_any_bearer_token_is_not_enforcing_auth() {
    // 401 without a token and with an empty one, 200 to ANY Bearer value: it checks nothing.
    let port = tiny_server(|mut s| {
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        let request = String::from_utf8_lossy(&buf[..n]);
        let answer = if request.contains("Authorization: Bearer ") {
            let body = r#"{"system": {"comfyui_version": "0.3.40"}, "devices": []}"#;
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        } else {
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_string()
        };
        let _ = s.write_all(answer.as_bytes());
    });
    let dir = TempDir::new("health");
    std::fs::create_dir_all(dir.join("ComfyUI/login")).unwrap();
    write(&dir.join("ComfyUI/login/PASSWORD"), &logged_in());
    let check = healthcheck(dir.path(), port, &[]);
    assert_unhealthy(&check, "authentication is not enforced: /system_stats answered 200 with a wrong token");
}

#[test]
fn server_error() {
    let comfy = Comfy::start(Some(&logged_in()), &[("FAKE_COMFYUI_STATUS", "500")]);
    assert_unhealthy(&comfy.healthcheck(&[]), "ComfyUI answered 500");
}

#[test]
fn malformed_json() {
    let comfy = Comfy::start(Some(&logged_in()), &[("FAKE_COMFYUI_BAD_JSON", "1")]);
    assert_unhealthy(&comfy.healthcheck(&[]), "without ComfyUI's JSON");
}

// ------------------------------------------------------------------------ GPU ---

fn fake_nvml() -> &'static Path {
    &nvml_fixtures().full
}

#[test]
fn gpu_lost_under_require() {
    let comfy = Comfy::start(Some(&logged_in()), &[]);
    let lib = fake_nvml().to_str().unwrap();
    let gpu = [("COMFY_INIT_GPU", "require"), ("COMFY_INIT_NVML_LIB", lib)];
    let check = comfy.healthcheck(&gpu);
    assert_eq!(check.code, Some(0), "{check:?}");
    assert!(check.line().contains("NVML opens NVIDIA GeForce RTX 3090"), "{check:?}");

    let lost = [gpu[0], gpu[1], ("FAKE_NVML_HANDLE", "gpu_lost")];
    assert_unhealthy(&comfy.healthcheck(&lost), "GPU lost");
    // `warn` does not make the healthcheck fail on the GPU.
    let warn = [("COMFY_INIT_GPU", "warn"), gpu[1], lost[2]];
    assert_eq!(comfy.healthcheck(&warn).code, Some(0));
}

// ------------------------------------------------------ arguments and config ---

#[test]
fn bad_arguments_exit_1_not_2() {
    let dir = TempDir::new("health");
    let check = healthcheck_args(dir.path(), free_port(), &["healthcheck", "--bogus"], &[]);
    assert_eq!(check.code, Some(1), "{check:?}");
    assert!(check.stderr.contains("--bogus"), "{check:?}");
}

#[test]
fn bad_configuration_exits_1() {
    let dir = TempDir::new("health");
    for (var, value) in [
        ("COMFYUI_PORT", "99999"),
        ("COMFY_INIT_HEALTH_TIMEOUT", "soon"),
        ("COMFY_INIT_AUTH", "maybe"),
        ("COMFY_INIT_GPU", "sometimes"),
    ] {
        let check = healthcheck(dir.path(), 8188, &[(var, value)]);
        assert_unhealthy(&check, "bad configuration");
        assert!(check.line().contains(var), "{check:?}");
    }
}
