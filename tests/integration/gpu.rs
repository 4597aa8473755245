//! `comfy-init gpu [--json]` and the `run` preflight against a fake NVML
//! (tests/fixtures/fake_nvml.c, built once per test run by `util::nvml_fixtures`).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::util::{can_be_pid1, comfy_init, fake_torch, nvml_fixtures, Launch, Output as Out, TempDir};

/// A PyTorch 2.8 built for CUDA 12.8 (kernels for compute capability 7.0 to 12.0), the default
/// under every test here: each fake card is covered unless a test says otherwise.
fn default_torch() -> &'static str {
    static SITE: std::sync::OnceLock<TempDir> = std::sync::OnceLock::new();
    SITE.get_or_init(|| fake_torch("2.8.0+cu128", Some("12.8"), None)).path().to_str().unwrap()
}

/// Runs comfy-init with a clean GPU environment (COMFY_INIT_NVML_LIB = `lib`, the default torch on
/// PYTHONPATH) plus `env`.
fn comfy(args: &[&str], lib: Option<&Path>, env: &[(&str, &str)]) -> Out {
    let lib = lib.map(|l| ("COMFY_INIT_NVML_LIB", l.to_str().unwrap()));
    let base = [("PYTHONPATH", default_torch()), ("COMFYUI_PYTHON", "python3")];
    let env = base.into_iter().chain(lib).chain(env.iter().copied());
    comfy_init(args, env, Duration::from_secs(60))
}

fn gpu(lib: &Path, env: &[(&str, &str)]) -> Out {
    let out = comfy(&["gpu"], Some(lib), env);
    out.assert_no_panic();
    out
}

fn gpu_json(lib: &Path, env: &[(&str, &str)]) -> Value {
    let out = comfy(&["gpu", "--json"], Some(lib), env);
    out.assert_no_panic();
    let j = out.json();
    let expected = if j["ok"] == Value::Bool(true) { 0 } else { 1 };
    assert_eq!(out.code, Some(expected), "exit code must follow \"ok\":\n{}", out.stdout);
    j
}

/// `comfy-init gpu` under every policy: `require` (explicit and as the default) gives
/// `require_code`, `warn` and `off` always 0. Under require and warn the report must hold
/// each phrase. Returns the require run.
fn under_each_policy(lib: &Path, env: &[(&str, &str)], require_code: i32, phrases: &[&str]) -> Out {
    let default = gpu(lib, env);
    assert_eq!(default.code, Some(require_code), "default policy (require):\n{}", default.all());
    for (policy, code) in [("require", require_code), ("warn", 0), ("off", 0)] {
        let mut e = env.to_vec();
        e.push(("COMFY_INIT_GPU", policy));
        let out = gpu(lib, &e);
        assert_eq!(out.code, Some(code), "COMFY_INIT_GPU={policy}:\n{}", out.all());
        if policy != "off" {
            for p in phrases {
                assert!(out.stdout.contains(p), "COMFY_INIT_GPU={policy}: {p:?} missing from:\n{}", out.stdout);
            }
        }
    }
    default
}

const GIB: u64 = 1024 * 1024 * 1024;

fn codes(j: &Value) -> Vec<String> {
    j["findings"]
        .as_array()
        .expect("findings array")
        .iter()
        .map(|f| f["code"].as_str().unwrap_or("").to_string())
        .collect()
}

fn assert_json_shape(j: &Value) {
    for key in ["driver_version", "cuda_driver_version", "image_cuda_version", "gpus", "findings", "policy", "ok"] {
        assert!(j.get(key).is_some(), "JSON lacks {key}: {j}");
    }
    assert!(j["ok"].is_boolean());
    assert!(j["policy"].is_string());
    for g in j["gpus"].as_array().expect("gpus array") {
        for key in
            ["index", "name", "brand", "rtx", "vram_total_bytes", "vram_free_bytes", "compute_capability", "uuid"]
        {
            assert!(g.get(key).is_some(), "GPU entry lacks {key}: {g}");
        }
    }
    for f in j["findings"].as_array().expect("findings array") {
        assert!(matches!(f["severity"].as_str(), Some("error" | "warning" | "info")), "{f}");
        assert!(f["message"].is_string() && f["advice"].is_string(), "{f}");
    }
}

// ---- healthy hosts ---------------------------------------------------------------------

#[test]
fn gpu_one_rtx_3090() {
    let f = nvml_fixtures();
    let out = under_each_policy(&f.full, &[], 0, &["NVIDIA GeForce RTX 3090", "550.54.14", "12.4", "8.6"]);
    assert!(out.stdout.contains("Verdict: OK"), "{}", out.stdout);

    let j = gpu_json(&f.full, &[]);
    assert_json_shape(&j);
    assert_eq!(j["ok"], true);
    assert_eq!(j["policy"], "require");
    assert_eq!(j["driver_version"], "550.54.14");
    assert_eq!(j["cuda_driver_version"], "12.4");
    assert_eq!(j["image_cuda_version"], Value::Null);
    assert_eq!(j["findings"].as_array().map(Vec::len), Some(0), "{j}");
    let gpus = j["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 1);
    let g = &gpus[0];
    assert_eq!(g["index"], 0);
    assert_eq!(g["name"], "NVIDIA GeForce RTX 3090");
    assert_eq!(g["brand"], "GeForce");
    assert_eq!(g["rtx"], true);
    assert_eq!(g["compute_capability"], "8.6");
    assert_eq!(g["vram_total_bytes"].as_u64(), Some(24 * GIB));
    let free = g["vram_free_bytes"].as_u64().unwrap();
    assert!(free > 0 && free < 24 * GIB);
    assert!(g["uuid"].as_str().unwrap().starts_with("GPU-"));
    assert_eq!(g["temperature_c"], 45);
    assert_eq!(g["power_w"], 120.5);
    assert_eq!(g["utilization_percent"], 3);
    assert_eq!(g["mig_mode"], "disabled");
}

#[test]
fn gpu_two_gpus() {
    let f = nvml_fixtures();
    let env = [("FAKE_NVML_GPUS", "NVIDIA GeForce RTX 3090:24:8.6;NVIDIA GeForce RTX 4090:24:8.9")];
    under_each_policy(&f.full, &env, 0, &["GPU 0: NVIDIA GeForce RTX 3090", "GPU 1: NVIDIA GeForce RTX 4090"]);
    let j = gpu_json(&f.full, &env);
    let gpus = j["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[1]["index"], 1);
    assert_eq!(gpus[1]["compute_capability"], "8.9");
    assert_ne!(gpus[0]["uuid"], gpus[1]["uuid"]);
}

#[test]
fn gpu_calls_shutdown_once() {
    let f = nvml_fixtures();
    let log = f.dir.join(format!("calls-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let out = gpu(&f.full, &[("FAKE_NVML_LOG", log.to_str().unwrap())]);
    assert_eq!(out.code, Some(0));
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_eq!(calls.lines().filter(|l| *l == "nvmlInit_v2").count(), 1, "{calls}");
    assert_eq!(calls.lines().filter(|l| *l == "nvmlShutdown").count(), 1, "{calls}");
    assert_eq!(calls.lines().last(), Some("nvmlShutdown"), "{calls}");
}

#[test]
fn gpu_optional_metrics_unavailable_are_not_fatal() {
    let f = nvml_fixtures();
    let env = [("FAKE_NVML_METRICS", "not_supported")];
    under_each_policy(&f.full, &env, 0, &["NVIDIA GeForce RTX 3090"]);
    let j = gpu_json(&f.full, &env);
    assert_eq!(j["ok"], true);
    let g = &j["gpus"][0];
    for key in ["temperature_c", "power_w", "utilization_percent", "mig_mode"] {
        assert!(g.get(key).is_none(), "{key} should be left out: {g}");
    }
    assert_eq!(codes(&j), Vec::<String>::new());
}

#[test]
fn gpu_mig_memory_no_permission_is_not_fatal() {
    let f = nvml_fixtures();
    let env = [("FAKE_NVML_MEMORY", "no_permission"), ("FAKE_NVML_MIG", "1"), ("COMFY_INIT_MIN_VRAM_GB", "8")];
    under_each_policy(&f.full, &env, 0, &["MIG"]);
    let j = gpu_json(&f.full, &env);
    assert_eq!(j["gpus"][0]["vram_total_bytes"], Value::Null);
    assert_eq!(j["gpus"][0]["mig_mode"], "enabled");
    let c = codes(&j);
    assert!(c.contains(&"vram_unknown".to_string()) && c.contains(&"mig_enabled".to_string()), "{c:?}");
}

#[test]
fn gpu_cuda_version_falls_back_to_v1() {
    let f = nvml_fixtures();
    let env = [("FAKE_NVML_CUDA_V2_FAIL", "1"), ("FAKE_NVML_CUDA", "12080")];
    let out = under_each_policy(&f.full, &env, 0, &["12.8"]);
    assert!(out.stdout.contains("v1"), "{}", out.stdout);
    let j = gpu_json(&f.full, &env);
    assert_eq!(j["cuda_driver_version"], "12.8");
    assert_eq!(j["cuda_driver_version_source"], "v1");
}

#[test]
fn gpu_old_driver_without_v2_symbols() {
    let f = nvml_fixtures();
    let j = gpu_json(&f.old_driver, &[("FAKE_NVML_CUDA", "12020")]);
    assert_eq!(j["ok"], true, "{j}");
    assert_eq!(j["cuda_driver_version"], "12.2");
    assert_eq!(j["cuda_driver_version_source"], "v1");
    assert_eq!(j["gpus"][0]["vram_total_bytes"].as_u64(), Some(24 * GIB), "memory via the v1 call");
}

#[test]
fn gpu_cuda_both_calls_fail_is_not_fatal() {
    let f = nvml_fixtures();
    let env = [("FAKE_NVML_CUDA_V2_FAIL", "1"), ("FAKE_NVML_CUDA_V1_FAIL", "1"), ("CUDA_VERSION", "12.8.1")];
    under_each_policy(&f.full, &env, 0, &["could not be read"]);
    let j = gpu_json(&f.full, &env);
    assert_eq!(j["cuda_driver_version"], Value::Null);
}

// ---- failure modes ---------------------------------------------------------------------

#[test]
fn gpu_no_devices() {
    let f = nvml_fixtures();
    let env = [("FAKE_NVML_GPUS", ""), ("NVIDIA_VISIBLE_DEVICES", "void")];
    under_each_policy(&f.full, &env, 1, &["NVIDIA_VISIBLE_DEVICES", "void", "--gpus all"]);
    let j = gpu_json(&f.full, &env);
    assert_json_shape(&j);
    assert_eq!(j["ok"], false);
    assert_eq!(j["gpus"].as_array().map(Vec::len), Some(0));
    assert_eq!(codes(&j), vec!["no_devices"]);
}

#[test]
fn gpu_init_driver_not_loaded() {
    let f = nvml_fixtures();
    let env = [("FAKE_NVML_INIT", "driver_not_loaded")];
    under_each_policy(&f.full, &env, 1, &["driver is not loaded", "nvidia-smi"]);
    let j = gpu_json(&f.full, &env);
    assert_eq!(codes(&j), vec!["driver_not_loaded"]);
    assert_eq!(j["findings"][0]["severity"], "error");
    assert_eq!(j["driver_version"], Value::Null);
}

#[test]
fn gpu_init_version_mismatch() {
    let f = nvml_fixtures();
    let env = [("FAKE_NVML_INIT", "lib_rm_version_mismatch")];
    under_each_policy(&f.full, &env, 1, &["version mismatch", "reboot the host", "Do not ship driver libraries"]);
    assert_eq!(codes(&gpu_json(&f.full, &env)), vec!["driver_version_mismatch"]);
}

#[test]
fn gpu_init_unknown_means_lost_device_access() {
    let f = nvml_fixtures();
    let env = [("FAKE_NVML_INIT", "unknown")];
    under_each_policy(&f.full, &env, 1, &["recreate the container", "systemctl daemon-reload"]);
    assert_eq!(codes(&gpu_json(&f.full, &env)), vec!["lost_device_access"]);
}

#[test]
fn gpu_init_no_permission() {
    let f = nvml_fixtures();
    let env = [("FAKE_NVML_INIT", "no_permission")];
    under_each_policy(&f.full, &env, 1, &["no permission", "--gpus all", "/dev/nvidia"]);
    assert_eq!(codes(&gpu_json(&f.full, &env)), vec!["no_permission"]);
}

#[test]
fn gpu_lost_on_handle() {
    let f = nvml_fixtures();
    let env = [("FAKE_NVML_HANDLE", "gpu_lost")];
    under_each_policy(&f.full, &env, 1, &["Xid 79", "reboot"]);
    let j = gpu_json(&f.full, &env);
    assert_eq!(codes(&j), vec!["gpu_lost"]);
    assert_eq!(j["gpus"].as_array().map(Vec::len), Some(0));
}

#[test]
fn gpu_lost_on_one_of_two() {
    let f = nvml_fixtures();
    let env = [
        ("FAKE_NVML_GPUS", "NVIDIA GeForce RTX 3090:24:8.6;NVIDIA GeForce RTX 3090:24:8.6"),
        ("FAKE_NVML_HANDLE", "gpu_lost"),
        ("FAKE_NVML_HANDLE_INDEX", "1"),
    ];
    under_each_policy(&f.full, &env, 1, &["GPU 1", "Xid 79", "reboot"]);
    let j = gpu_json(&f.full, &env);
    assert_eq!(j["gpus"].as_array().map(Vec::len), Some(1));
    assert_eq!(codes(&j), vec!["gpu_lost"]);
}

#[test]
fn gpu_too_little_vram() {
    let f = nvml_fixtures();
    let env = [("COMFY_INIT_MIN_VRAM_GB", "32")];
    under_each_policy(&f.full, &env, 1, &["COMFY_INIT_MIN_VRAM_GB=32", "24.00 GiB"]);
    assert_eq!(codes(&gpu_json(&f.full, &env)), vec!["vram_too_small"]);
    // exactly enough
    under_each_policy(&f.full, &[("COMFY_INIT_MIN_VRAM_GB", "24")], 0, &[]);
    // one of two large enough: a warning only
    let env = [
        ("FAKE_NVML_GPUS", "NVIDIA GeForce RTX 3060:12:8.6;NVIDIA GeForce RTX 4090:24:8.9"),
        ("COMFY_INIT_MIN_VRAM_GB", "16"),
    ];
    under_each_policy(&f.full, &env, 0, &["GPU 0", "--cuda-device"]);
}

#[test]
fn gpu_not_rtx_is_a_warning() {
    let f = nvml_fixtures();
    let env = [("FAKE_NVML_GPUS", "Tesla T4:16:7.5")];
    under_each_policy(&f.full, &env, 0, &["Tesla T4", "not an RTX card"]);
    let j = gpu_json(&f.full, &env);
    assert_eq!(j["ok"], true);
    assert_eq!(j["gpus"][0]["rtx"], false);
    assert_eq!(j["gpus"][0]["brand"], "Tesla");
    assert_eq!(codes(&j), vec!["not_rtx"]);
    assert_eq!(j["findings"][0]["severity"], "warning");
}

#[test]
fn gpu_rtx_brand_without_rtx_in_name() {
    let f = nvml_fixtures();
    let env = [("FAKE_NVML_GPUS", "NVIDIA Graphics Device:32:12.0"), ("FAKE_NVML_BRAND", "geforce_rtx")];
    let j = gpu_json(&f.full, &env);
    assert_eq!(j["gpus"][0]["rtx"], true);
    assert_eq!(j["gpus"][0]["brand"], "GeForceRTX");
}

#[test]
fn gpu_driver_too_old_for_image_cuda_minor() {
    let f = nvml_fixtures();
    // driver 550 = CUDA 12.4; image CUDA 12.8 wants 570
    let env = [("CUDA_VERSION", "12.8.1")];
    under_each_policy(&f.full, &env, 0, &["12.8", "12.4", "570"]);
    let j = gpu_json(&f.full, &env);
    assert_eq!(j["image_cuda_version"], "12.8.1");
    assert_eq!(codes(&j), vec!["driver_older_than_image_cuda"]);
    assert_eq!(j["findings"][0]["severity"], "warning");
}

#[test]
fn gpu_driver_too_old_for_image_cuda_major() {
    let f = nvml_fixtures();
    let env = [("CUDA_VERSION", "13.0.1")];
    under_each_policy(&f.full, &env, 1, &["13.0", "12.4", "580"]);
    assert_eq!(codes(&gpu_json(&f.full, &env)), vec!["driver_too_old"]);
    // a new enough driver
    let env = [("CUDA_VERSION", "13.0.1"), ("FAKE_NVML_DRIVER", "580.65.06"), ("FAKE_NVML_CUDA", "13000")];
    under_each_policy(&f.full, &env, 0, &[]);
}

#[test]
fn gpu_library_is_a_text_file() {
    let f = nvml_fixtures();
    under_each_policy(&f.text_file, &[], 1, &["not a loadable NVML library", "COMFY_INIT_NVML_LIB"]);
    let j = gpu_json(&f.text_file, &[]);
    assert_json_shape(&j);
    assert_eq!(codes(&j), vec!["library_invalid"]);
}

#[test]
fn gpu_library_missing() {
    let f = nvml_fixtures();
    let missing = f.dir.join("does-not-exist/libnvidia-ml.so.1");
    under_each_policy(
        &missing,
        &[],
        1,
        &["--gpus all", "NVIDIA Container Toolkit", "NVIDIA_DRIVER_CAPABILITIES", "utility"],
    );
    let j = gpu_json(&missing, &[]);
    assert_json_shape(&j);
    assert_eq!(j["ok"], false);
    assert_eq!(codes(&j), vec!["library_missing"]);
    assert!(j["findings"][0]["advice"].as_str().unwrap().contains("--gpus all"));
}

#[test]
fn gpu_library_without_nvml_shutdown_does_not_panic() {
    let f = nvml_fixtures();
    under_each_policy(&f.no_shutdown, &[], 1, &["nvmlShutdown"]);
    assert_eq!(codes(&gpu_json(&f.no_shutdown, &[])), vec!["library_incomplete"]);
}

/// Why the probe checks the symbols before nvml-wrapper loads a library: its own Drop panics on
/// a library without nvmlShutdown. When that stops being true, the guard in probe.rs may go.
#[test]
fn nvml_wrapper_itself_still_panics_on_a_library_without_nvml_shutdown() {
    let lib = nvml_fixtures().no_shutdown.clone();
    let upstream = std::panic::catch_unwind(move || {
        drop(nvml_wrapper::Nvml::builder().lib_path(lib.as_os_str()).init());
    });
    assert!(upstream.is_err(), "nvml-wrapper's Drop no longer panics; the guard may be simplified");
}

#[test]
fn gpu_library_that_is_not_nvml() {
    // a real shared library without any NVML symbol
    let out = under_each_policy(Path::new("libc.so.6"), &[], 1, &["nvmlInit_v2"]);
    out.assert_no_panic();
}

#[test]
fn gpu_invalid_policy_is_refused() {
    let f = nvml_fixtures();
    let out = comfy(&["gpu"], Some(&f.full), &[("COMFY_INIT_GPU", "maybe")]);
    out.assert_no_panic();
    assert_ne!(out.code, Some(0), "{}", out.all());
    assert!(out.all().contains("COMFY_INIT_GPU"), "{}", out.all());
    let out = comfy(&["gpu"], Some(&f.full), &[("COMFY_INIT_MIN_VRAM_GB", "lots")]);
    assert_ne!(out.code, Some(0), "{}", out.all());
    assert!(out.all().contains("COMFY_INIT_MIN_VRAM_GB"), "{}", out.all());
}

// ---- `comfy-init run` preflight ----------------------------------------------------------

/// `comfy-init run -- sh -c 'touch MARKER'`: (exit code, whether the command ran).
fn run_with(lib: &Path, env: &[(&str, &str)], tag: &str) -> (Out, bool) {
    let f = nvml_fixtures();
    let marker = f.dir.join(format!("ran-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let script = format!("touch '{}'", marker.display());
    let mut e = env.to_vec();
    e.push(("COMFY_INIT_AUTH", "off"));
    let out = comfy(&["run", "--", "/bin/sh", "-c", &script], Some(lib), &e);
    out.assert_no_panic();
    let ran = marker.exists();
    let _ = std::fs::remove_file(&marker);
    (out, ran)
}

#[test]
fn run_true_passes_preflight() {
    let f = nvml_fixtures();
    let mut e = vec![("COMFY_INIT_AUTH", "off")];
    let out = comfy(&["run", "--", "/bin/true"], Some(&f.full), &e);
    out.assert_no_panic();
    assert_eq!(out.code, Some(0), "{}", out.all());
    e.push(("COMFY_INIT_GPU", "require"));
    let out = comfy(&["run", "--", "/bin/true"], Some(&f.full), &e);
    assert_eq!(out.code, Some(0), "{}", out.all());
}

#[test]
fn run_require_refuses_to_start_without_gpu() {
    let f = nvml_fixtures();
    for (tag, lib, env, phrase) in [
        ("missing", f.dir.join("nope/libnvidia-ml.so.1"), vec![], "--gpus all"),
        ("unknown", f.full.clone(), vec![("FAKE_NVML_INIT", "unknown")], "recreate the container"),
        ("lost", f.full.clone(), vec![("FAKE_NVML_HANDLE", "gpu_lost")], "Xid 79"),
        ("nodev", f.full.clone(), vec![("FAKE_NVML_GPUS", "")], "NVIDIA_VISIBLE_DEVICES"),
        ("noshutdown", f.no_shutdown.clone(), vec![], "nvmlShutdown"),
    ] {
        let (out, ran) = run_with(&lib, &env, tag);
        assert_eq!(out.code, Some(69), "{tag}:\n{}", out.all());
        assert!(!ran, "{tag}: the command must not start when the preflight fails");
        assert!(out.all().contains(phrase), "{tag}: {phrase:?} missing from:\n{}", out.all());
    }
}

#[test]
fn run_warn_starts_anyway() {
    let f = nvml_fixtures();
    let (out, ran) = run_with(&f.full, &[("COMFY_INIT_GPU", "warn"), ("FAKE_NVML_INIT", "driver_not_loaded")], "warn");
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(ran);
    assert!(out.all().contains("driver is not loaded"), "the problem is still logged:\n{}", out.all());
}

#[test]
fn run_off_skips_the_check() {
    let f = nvml_fixtures();
    let missing = f.dir.join("nope/libnvidia-ml.so.1");
    let (out, ran) = run_with(&missing, &[("COMFY_INIT_GPU", "off")], "off");
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(ran);
}

// ---- PyTorch against the card (a fake torch/version.py in a temporary site-packages) -------

/// `gpu --json` and `run -- sh` (require, auth off) with these cards and this torch: the JSON,
/// the run's output, and what CUDA_VISIBLE_DEVICES the child saw (None: the command did not run).
fn with_torch(cards: &str, torch: &TempDir, extra: &[(&str, &str)]) -> (Value, Out, Option<String>) {
    let f = nvml_fixtures();
    let site = torch.path().to_str().unwrap();
    let mut env = vec![("FAKE_NVML_GPUS", cards), ("FAKE_NVML_DRIVER", "570.86"), ("FAKE_NVML_CUDA", "12080")];
    env.push(("PYTHONPATH", site));
    env.extend_from_slice(extra);
    let j = gpu_json(&f.full, &env);
    let seen = torch.join("child-saw");
    let _ = std::fs::remove_file(&seen);
    let script = format!("printf '%s' \"${{CUDA_VISIBLE_DEVICES-unset}}\" > '{}'", seen.display());
    env.push(("COMFY_INIT_AUTH", "off"));
    let out = comfy(&["run", "--", "/bin/sh", "-c", &script], Some(&f.full), &env);
    out.assert_no_panic();
    let saw = std::fs::read_to_string(&seen).ok();
    (j, out, saw)
}

#[test]
fn a_cuda_13_torch_on_a_cuda_12_driver_is_refused_naming_the_driver_and_a_cu128_wheel() {
    // PyPI's default torch is a CUDA 13 build (2.15.0+cu132 when this was written): on a driver
    // for CUDA 12 it sees no GPU at all, whatever its kernels.
    let torch = fake_torch("2.15.0+cu132", Some("13.2"), None);
    let (j, out, saw) = with_torch("NVIDIA GeForce RTX 4090:24:8.9", &torch, &[]);
    assert!(codes(&j).contains(&"driver_too_old_for_torch".to_string()), "{j}");
    assert_eq!(out.code, Some(69), "{}", out.all());
    assert!(saw.is_none(), "ComfyUI's command ran");
    for phrase in ["needs CUDA 13.2", "supports CUDA 12.8 at most", ">= 580", "whl/cu128", "would see no GPU"] {
        assert!(out.stderr.contains(phrase), "missing {phrase}: {}", out.stderr);
    }
    // The same build on a CUDA 13 driver: no driver finding (the table may not know the build).
    let (j, _, _) = with_torch("NVIDIA GeForce RTX 4090:24:8.9", &torch, &[("FAKE_NVML_CUDA", "13000")]);
    assert!(!codes(&j).contains(&"driver_too_old_for_torch".to_string()), "{j}");
}

#[test]
fn rtx_5090_with_a_cu124_torch_is_refused_naming_cu128_and_driver_570() {
    let torch = fake_torch("2.6.0+cu124", Some("12.4"), None);
    let (j, out, saw) = with_torch("NVIDIA GeForce RTX 5090:32:12.0", &torch, &[]);
    assert_eq!(codes(&j), vec!["torch_no_kernels"], "{j}");
    assert_eq!(j["gpus"][0]["torch_covered"], false);
    assert_eq!(j["torch"]["arch_list"][0], "sm_50");
    assert_eq!(out.code, Some(69), "{}", out.all());
    assert!(saw.is_none(), "ComfyUI's command ran");
    for phrase in ["no kernel image is available", "cu128", ">= 570", "nvidia/cuda:12.8"] {
        assert!(out.stderr.contains(phrase), "missing {phrase}: {}", out.stderr);
    }
    assert_eq!(out.stderr.matches("pip install").count(), 1, "the advice is printed once:\n{}", out.stderr);
}

#[test]
fn rtx_5090_with_a_cu128_torch_is_ok() {
    let torch = fake_torch("2.8.0+cu128", Some("12.8"), None);
    let (j, out, saw) = with_torch("NVIDIA GeForce RTX 5090:32:12.0", &torch, &[]);
    assert_eq!(j["ok"], true, "{j}");
    assert_eq!(j["gpus"][0]["torch_covered"], true);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(saw.as_deref(), Some("unset"), "nothing selected: CUDA_VISIBLE_DEVICES untouched");
}

#[test]
fn gtx_1080_with_a_cu128_torch_is_refused_naming_cu126() {
    let torch = fake_torch("2.8.0+cu128", Some("12.8"), None);
    let (j, out, _) = with_torch("NVIDIA GeForce GTX 1080:8:6.1", &torch, &[]);
    assert!(codes(&j).contains(&"torch_no_kernels".to_string()), "{j}");
    assert_eq!(out.code, Some(69), "{}", out.all());
    assert!(out.stderr.contains("cu126") && out.stderr.contains(">= 560"), "{}", out.stderr);
}

#[test]
fn rtx_4090_with_a_cu124_torch_is_ok_sm86_kernels_run_on_89() {
    let torch = fake_torch("2.6.0+cu124", Some("12.4"), None);
    let (j, out, _) = with_torch("NVIDIA GeForce RTX 4090:24:8.9", &torch, &[]);
    assert_eq!(j["gpus"][0]["torch_covered"], true, "{j}");
    assert_eq!(out.code, Some(0), "{}", out.all());
}

#[test]
fn a_cpu_only_torch_on_a_gpu_host_is_refused() {
    let torch = fake_torch("2.8.0+cpu", None, None);
    let (j, out, _) = with_torch("NVIDIA GeForce RTX 3090:24:8.6", &torch, &[]);
    assert_eq!(codes(&j), vec!["torch_cpu_only"], "{j}");
    assert_eq!(j["torch"]["cuda"], Value::Null);
    assert_eq!(out.code, Some(69), "{}", out.all());
    assert!(out.stderr.contains("CPU-only build"), "{}", out.stderr);
}

#[test]
fn no_torch_or_an_unknown_build_is_a_warning_never_a_guess() {
    let empty = TempDir::new("no-torch");
    let (j, out, _) = with_torch("NVIDIA GeForce RTX 3090:24:8.6", &empty, &[]);
    assert_eq!(codes(&j), vec!["torch_missing"], "{j}");
    assert_eq!(j["findings"][0]["severity"], "warning");
    assert_eq!(out.code, Some(0), "{}", out.all());

    // On a driver that runs CUDA 14 (on a CUDA 12 one it is refused for the driver instead).
    let future = fake_torch("2.12.0+cu140", Some("14.0"), None);
    let (j, out, _) = with_torch("NVIDIA GeForce RTX 3090:24:8.6", &future, &[("FAKE_NVML_CUDA", "14000")]);
    assert_eq!(codes(&j), vec!["torch_build_unknown"], "{j}");
    assert_eq!(j["gpus"][0]["torch_covered"], Value::Null);
    assert_eq!(out.code, Some(0), "{}", out.all());
}

#[test]
fn a_selected_card_is_the_one_the_child_sees_and_the_only_one_judged() {
    // Card 0 has no kernels in this torch; card 1 has.
    let torch = fake_torch("2.8.0+cu128", Some("12.8"), None);
    let cards = "NVIDIA GeForce GTX 1080:8:6.1;NVIDIA GeForce RTX 4090:24:8.9";
    let (j, out, _) = with_torch(cards, &torch, &[]);
    assert_eq!(out.code, Some(69), "both cards judged: {}", out.all());
    let uuid = j["gpus"][1]["uuid"].as_str().unwrap().to_string();

    let (j, out, saw) = with_torch(cards, &torch, &[("COMFY_INIT_GPU_SELECT", "1")]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(saw.as_deref(), Some(uuid.as_str()), "CUDA_VISIBLE_DEVICES");
    assert_eq!((j["gpus"][0]["selected"].clone(), j["gpus"][1]["selected"].clone()), (false.into(), true.into()));

    // `best`: the most free VRAM among the covered cards (the 4090 here).
    let (_, out, saw) = with_torch(cards, &torch, &[("COMFY_INIT_GPU_SELECT", "best")]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert_eq!(saw.as_deref(), Some(uuid.as_str()));

    // A card that is not there: a refusal naming the ones that are.
    let (_, out, saw) = with_torch(cards, &torch, &[("COMFY_INIT_GPU_SELECT", "GPU-nope")]);
    assert_eq!(out.code, Some(69), "{}", out.all());
    assert!(saw.is_none());
    assert!(out.stderr.contains("names no usable GPU here: 0 (NVIDIA GeForce GTX 1080"), "{}", out.stderr);
}

// ---- The PyTorch probe runs ComfyUI's Python as ComfyUI's user (issue 22) ---------------------

/// What the probe may see of comfy-init's environment (src/gpu/torch.rs PROBE_ENV), plus the
/// PYTHONDONTWRITEBYTECODE it sets.
const PROBE_ENV: &[&str] = &[
    "PATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONUSERBASE",
    "PYTHONPLATLIBDIR",
    "PYTHONNOUSERSITE",
    "VIRTUAL_ENV",
    "LD_LIBRARY_PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "PYTHONDONTWRITEBYTECODE",
];

/// A Python 3 that `uid` may run (a pyenv under /root is root's only), or None, said why.
fn python_runnable_by(uid: u32, test: &str) -> Option<&'static str> {
    use std::os::unix::process::CommandExt;
    let found = ["/usr/bin/python3", "/usr/local/bin/python3", "python3"].into_iter().find(|python| {
        let mut cmd = std::process::Command::new(python);
        cmd.args(["-c", "pass"]).uid(uid).gid(uid).current_dir("/");
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    });
    if found.is_none() {
        assert!(!crate::util::mandatory(), "{test}: no python3 that uid {uid} can run");
        eprintln!("SKIPPED {test}: no python3 that uid {uid} can run");
    }
    found
}

/// A venv (no pip) made by `python`, whose site-packages holds a `.pth` file that, at each start
/// of its Python, writes into `marks` (world-writable) `marker-UID`: the groups, the environment
/// and the process group it ran with. It also holds a sitecustomize.py, which Python imports at
/// each start (and would cache as bytecode beside it). Returns the interpreter and site-packages.
fn venv_that_reports(python: &str, tmp: &TempDir, marks: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let venv = tmp.join("venv");
    let made = std::process::Command::new(python).args(["-m", "venv", "--without-pip"]).arg(&venv).status();
    assert!(made.is_ok_and(|s| s.success()), "{python} -m venv --without-pip failed");
    let lib = std::fs::read_dir(venv.join("lib")).unwrap().next().unwrap().unwrap().path();
    let site = lib.join("site-packages");
    let pth = format!(
        "import os, json; open('{}/marker-%d' % os.getuid(), 'w').write(json.dumps({{'gid': os.getgid(), \
         'groups': os.getgroups(), 'password': os.environ.get('COMFYUI_PASSWORD'), 'env': sorted(os.environ), \
         'own_group': os.getpgrp() == os.getpid()}}))\n",
        marks.display()
    );
    std::fs::write(site.join("comfy-init-test.pth"), pth).unwrap();
    std::fs::write(site.join("sitecustomize.py"), "customized = True\n").unwrap();
    std::fs::create_dir_all(marks).unwrap();
    std::fs::set_permissions(marks, std::fs::Permissions::from_mode(0o777)).unwrap();
    (venv.join("bin/python"), site)
}

/// `comfy-init gpu --json` (the default fake card and torch) with `env`, started with the
/// supplementary groups `groups` (root's own, which the probe must not keep).
fn gpu_json_in_groups(env: &[(&str, &str)], groups: &[libc::gid_t]) -> Value {
    use std::os::unix::process::CommandExt;
    let f = nvml_fixtures();
    let mut cmd = std::process::Command::new(crate::util::bin());
    crate::util::scrub_env(&mut cmd);
    cmd.args(["gpu", "--json"]).env("COMFY_INIT_NVML_LIB", &f.full).env("PYTHONPATH", default_torch());
    cmd.envs(env.iter().copied()).stdin(std::process::Stdio::null());
    let groups = groups.to_vec();
    // SAFETY: setgroups is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || match libc::setgroups(groups.len(), groups.as_ptr()) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    let out = cmd.output().expect("run comfy-init gpu --json");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && out.status.code().is_some(), "{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stderr}"))
}

fn marker(marks: &Path, uid: u32) -> Option<Value> {
    let text = std::fs::read_to_string(marks.join(format!("marker-{uid}"))).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("marker-{uid} ({e}): {text}")))
}

fn assert_clean(seen: &Value, who: &str) {
    assert_eq!(seen["password"], Value::Null, "{who}: the probe saw COMFYUI_PASSWORD: {seen}");
    for name in seen["env"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        assert!(PROBE_ENV.contains(&name), "{who}: {name} reached the probe: {seen}");
    }
    assert!(seen["env"].as_array().unwrap().contains(&"PYTHONDONTWRITEBYTECODE".into()), "{who}: {seen}");
    assert_eq!(seen["own_group"], true, "{who}: the probe has a process group of its own: {seen}");
}

/// PUID set: the interpreter's `.pth` files (the venv may be the user's) run as PUID:PGID, with
/// none of root's groups and none of root's environment; torch is still found.
#[test]
fn the_torch_probe_runs_as_puid_without_roots_groups_or_secrets() {
    root_only!("the_torch_probe_runs_as_puid_without_roots_groups_or_secrets");
    let Some(base) = python_runnable_by(65534, "the_torch_probe_runs_as_puid_without_roots_groups_or_secrets") else {
        return;
    };
    let tmp = TempDir::new("probe-as-puid");
    let marks = tmp.join("marks");
    let (python, site) = venv_that_reports(base, &tmp, &marks);
    let env = [
        ("COMFYUI_PYTHON", python.to_str().unwrap()),
        ("PUID", "65534"),
        ("PGID", "65534"),
        ("COMFYUI_PASSWORD", "secret-in-env"),
        ("COMFY_INIT_AUTH", "off"),
        ("HOME", "/root"),
    ];
    let j = gpu_json_in_groups(&env, &[0, 4242]);
    assert_eq!(j["torch"]["found"], true, "torch found as PUID: {j}");
    assert!(marker(&marks, 0).is_none(), "the venv's .pth ran as root");
    let seen = marker(&marks, 65534).unwrap_or_else(|| panic!("the probe did not run as 65534: {j}"));
    assert_eq!(seen["gid"], 65534, "{seen}");
    assert_eq!(seen["groups"], serde_json::json!([]), "root's supplementary groups were kept: {seen}");
    assert_clean(&seen, "as PUID");
    assert!(!site.join("__pycache__").exists(), "bytecode written");
}

/// Without PUID the probe runs as comfy-init (root), as ComfyUI will, but still with a clean
/// environment, and leaves no bytecode behind in the interpreter's tree.
#[test]
fn without_puid_the_torch_probe_runs_as_root_with_a_clean_environment() {
    root_only!("without_puid_the_torch_probe_runs_as_root_with_a_clean_environment");
    let tmp = TempDir::new("probe-as-root");
    let marks = tmp.join("marks");
    let (python, site) = venv_that_reports("python3", &tmp, &marks);
    let env = [("COMFYUI_PYTHON", python.to_str().unwrap()), ("COMFYUI_PASSWORD", "secret-in-env")];
    let j = gpu_json_in_groups(&env, &[0, 4242]);
    assert_eq!(j["torch"]["found"], true, "{j}");
    assert_eq!(j["torch"]["version"], "2.8.0+cu128", "{j}");
    let seen = marker(&marks, 0).unwrap_or_else(|| panic!("the probe did not run: {j}"));
    assert_eq!(seen["groups"], serde_json::json!([0, 4242]), "as comfy-init itself: {seen}");
    assert_clean(&seen, "as root");
    assert!(!site.join("__pycache__").exists(), "the probe left root-owned bytecode in site-packages");
}

/// A probe that floods its stdout (1 MB) is cut off at once, as root and as PUID: the answer is
/// "unknown", well before the 10 s timeout, and never a hang on a full pipe.
#[test]
fn a_torch_probe_that_floods_its_stdout_is_unknown_at_once() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("probe-flood");
    let python = tmp.join("python");
    std::fs::write(&python, "#!/bin/sh\nhead -c 1000000 /dev/zero | tr '\\0' a\n").unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = nvml_fixtures();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let as_puid: &[(&str, &str)] = if root { &[("PUID", "65534"), ("PGID", "65534")] } else { &[] };
    for extra in [&[][..], as_puid] {
        let mut env = vec![("COMFYUI_PYTHON", python.to_str().unwrap())];
        env.extend_from_slice(extra);
        let out = comfy(&["gpu", "--json"], Some(&f.full), &env);
        out.assert_no_panic();
        assert!(out.took < Duration::from_secs(5), "{extra:?}: took {:?}", out.took);
        let j = out.json();
        assert_eq!(j["torch"]["found"], Value::Null, "{extra:?}: {j}");
        assert!(j["torch"]["why"].as_str().unwrap_or_default().contains("more than 4096 bytes"), "{j}");
        assert!(codes(&j).contains(&"torch_unknown".to_string()), "{extra:?}: {j}");
    }
}

// ---- NVML in a process of its own, comfy-init-nvml (issue 17) --------------------------------

/// The library is loaded, used and shut down, but never in PID 1: the helper did it, and PID 1
/// maps neither it nor, in the shipped (static) binary, the dynamic loader or a shared libc.
#[test]
fn pid1_never_maps_the_nvidia_library_its_helper_process_loads_it() {
    if !crate::util::can_be_pid1("pid1_never_maps_the_nvidia_library_its_helper_process_loads_it") {
        return;
    }
    let f = nvml_fixtures();
    let calls = TempDir::new("nvml-calls");
    let log = calls.join("calls");
    let running = Launch::init(&["sleep", "30"])
        .env("COMFY_INIT_GPU", "require")
        .env("COMFY_INIT_NVML_LIB", &f.full)
        .env("PYTHONPATH", default_torch())
        .env("FAKE_NVML_LOG", &log)
        .start();
    let pid = running.init_pid();
    assert!(
        running.until(Duration::from_secs(20), || running.stderr().contains("started sleep")),
        "the preflight passes and the child starts:\n{}",
        running.stderr()
    );
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(!maps.contains("nvidia-ml"), "PID 1 maps the NVIDIA library:\n{maps}");
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(calls.contains("nvmlInit_v2") && calls.contains("nvmlShutdown"), "the helper asked NVML: {calls}");
    if crate::util::testing_the_shipped_binary() {
        for shared in ["ld-linux", "libc.so", "libgcc_s"] {
            assert!(!maps.contains(shared), "the shipped comfy-init is static, yet maps {shared}:\n{maps}");
        }
    }
}

/// The NVIDIA library hangs in nvmlInit: PID 1 is not stuck with it. The helper is killed at
/// COMFY_INIT_GPU_TIMEOUT, the report names the hang and what to do, and under `warn` ComfyUI
/// starts anyway; no helper is left behind.
#[test]
fn a_hung_nvml_is_killed_at_the_timeout_and_reported() {
    let f = nvml_fixtures();
    let env = [("FAKE_NVML_HANG", "1"), ("COMFY_INIT_GPU_TIMEOUT", "1s")];
    let started = std::time::Instant::now();
    let j = gpu_json(&f.full, &env);
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert_eq!(codes(&j)[0], "nvml_helper_failed", "{j}");
    let message = j["findings"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("did not answer within 1s") && message.contains("COMFY_INIT_GPU_TIMEOUT"), "{j}");
    assert!(j["findings"][0]["advice"].as_str().unwrap_or_default().contains("nvidia-smi"), "{j}");
    let (out, ran) = run_with(&f.full, &[env[0], env[1], ("COMFY_INIT_GPU", "warn")], "hang-warn");
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(ran, "under warn the command starts after the timeout");
    let (out, ran) = run_with(&f.full, &env, "hang-require");
    assert_eq!((out.code, ran), (Some(69), false), "{}", out.all());
    let helpers = std::process::Command::new("pgrep").args(["-f", "comfy-init-nvml probe"]).output();
    if let Ok(p) = helpers {
        assert!(String::from_utf8_lossy(&p.stdout).trim().is_empty(), "a hung helper was left running");
    }
}

/// A crash inside the NVIDIA library kills the helper, not comfy-init: a finding with the signal.
#[test]
fn a_crash_inside_nvml_is_a_finding_not_a_dead_init() {
    let f = nvml_fixtures();
    let j = gpu_json(&f.full, &[("FAKE_NVML_CRASH", "1")]);
    assert_eq!(codes(&j)[0], "nvml_helper_failed", "{j}");
    assert!(j["findings"][0]["message"].as_str().unwrap_or_default().contains("killed by signal 11"), "{j}");
    let (out, ran) = run_with(&f.full, &[("FAKE_NVML_CRASH", "1"), ("COMFY_INIT_GPU", "warn")], "crash-warn");
    assert_eq!((out.code, ran), (Some(0), true), "{}", out.all());
}

/// comfy-init copied alone, without comfy-init-nvml: the GPU check says which file is missing,
/// where it was looked for and what to do; COMFY_INIT_NVML_HELPER names another place.
#[test]
fn comfy_init_copied_without_its_helper_says_what_is_missing() {
    let alone = TempDir::new("alone");
    let copy = alone.join("comfy-init");
    std::fs::copy(crate::util::bin(), &copy).unwrap();
    let f = nvml_fixtures();
    let out = std::process::Command::new(&copy)
        .args(["gpu", "--json"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("COMFY_INIT_NVML_LIB", &f.full)
        .output()
        .unwrap();
    let j: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(codes(&j)[0], "nvml_helper_missing", "{j}");
    let message = j["findings"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&alone.join("comfy-init-nvml").display().to_string()), "names where: {message}");
    assert!(j["findings"][0]["advice"].as_str().unwrap_or_default().contains("side by side"), "{j}");

    let helper = crate::util::bin().with_file_name("comfy-init-nvml");
    let out = std::process::Command::new(&copy)
        .args(["gpu", "--json"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("COMFY_INIT_NVML_LIB", &f.full)
        .env("COMFY_INIT_NVML_HELPER", &helper)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let (out, ran) = run_with(&f.full, &[("COMFY_INIT_NVML_HELPER", "/nonexistent/comfy-init-nvml")], "no-helper");
    assert_eq!((out.code, ran), (Some(69), false), "{}", out.all());
    assert!(
        out.all().contains("/nonexistent/comfy-init-nvml (from COMFY_INIT_NVML_HELPER): no such file"),
        "{}",
        out.all()
    );
}

/// A helper that answers nonsense, or floods its pipe, is refused with what it did; the flood is
/// cut at 1 MiB and killed at once, not waited for until the timeout.
#[test]
fn a_helper_that_answers_nonsense_or_floods_its_pipe_is_refused() {
    let dir = TempDir::new("helpers");
    let f = nvml_fixtures();
    for (name, script, phrase) in [
        ("nonsense", "#!/bin/sh\necho 'Segmentation fault'\n", "answered nonsense"),
        ("flood", "#!/bin/sh\nexec yes\n", "answered more than 1024 KiB"),
    ] {
        let helper = dir.join(name);
        std::fs::write(&helper, script).unwrap();
        std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let started = std::time::Instant::now();
        let j = gpu_json(&f.full, &[("COMFY_INIT_NVML_HELPER", helper.to_str().unwrap())]);
        assert!(started.elapsed() < Duration::from_secs(10), "{name}: took {:?}", started.elapsed());
        assert_eq!(codes(&j)[0], "nvml_helper_failed", "{name}: {j}");
        assert!(j["findings"][0]["message"].as_str().unwrap_or_default().contains(phrase), "{name}: {j}");
    }
}
