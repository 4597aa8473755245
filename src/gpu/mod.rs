//! GPU preflight: is there a usable NVIDIA (RTX) GPU before ComfyUI starts?
//!
//! * [`probe`] does the I/O through NVML (nvml-wrapper 0.13), after pre-checking the library
//!   with `dlopen`/`dlsym` so that no library can make PID 1 panic.
//! * [`evaluate`] is pure: it turns a [`GpuReport`] and the [`GpuSettings`] into a [`Verdict`]
//!   (findings with severity, message and advice).
//! * [`model`] is the data the probe fills; [`report`] renders it as text, JSON and log lines.
//!
//! Settings (read in `config.rs`): `COMFY_INIT_GPU` = `require` (default) | `warn` | `off`,
//! `COMFY_INIT_MIN_VRAM_GB` (GiB, compared with the total VRAM, 1 % tolerance),
//! `COMFY_INIT_NVML_LIB` (library path), `CUDA_VERSION` (set by nvidia/cuda images; compared with
//! the driver's CUDA version).

pub mod evaluate;
pub mod model;
pub mod probe;
pub mod report;

pub use evaluate::{evaluate, Severity, Verdict};
pub use model::{GpuPolicy, GpuReport, GpuSettings, NvmlFailure, ProbeError, Stage};

pub const ENV_POLICY: &str = "COMFY_INIT_GPU";
pub const ENV_MIN_VRAM: &str = "COMFY_INIT_MIN_VRAM_GB";
pub const ENV_NVML_LIB: &str = "COMFY_INIT_NVML_LIB";
pub const ENV_CUDA_VERSION: &str = "CUDA_VERSION";

/// Probes NVML and evaluates the result.
pub fn check(settings: &GpuSettings) -> (GpuReport, Verdict) {
    let report = probe::probe(settings);
    let verdict = evaluate(&report, settings);
    (report, verdict)
}

fn log_verdict(report: &GpuReport, verdict: &Verdict, settings: &GpuSettings) {
    for line in report::report_lines(report, settings) {
        log::info!("gpu: {line}");
    }
    for f in &verdict.findings {
        let text = if f.advice.is_empty() { f.message.clone() } else { format!("{} -> {}", f.message, f.advice) };
        match (f.severity, settings.policy) {
            (Severity::Error, GpuPolicy::Require) => log::error!("gpu: {text}"),
            (Severity::Error, _) | (Severity::Warning, _) => log::warn!("gpu: {text}"),
            (Severity::Info, _) => log::info!("gpu: {text}"),
        }
    }
    if verdict.ok {
        log::info!("gpu: {}", verdict.verdict_line());
    } else {
        log::error!("gpu: {}", verdict.verdict_line());
    }
}

/// Preflight for `run`: logs the report (log::info!, each problem as log::warn!/log::error! with its advice);
/// Ok(()) when the policy is met (always Ok for Off without touching NVML; Warn always Ok), Err(one-line summary) otherwise.
pub fn preflight(settings: &GpuSettings) -> Result<(), String> {
    if settings.policy == GpuPolicy::Off {
        log::info!("gpu: check skipped ({ENV_POLICY}=off)");
        return Ok(());
    }
    let (report, verdict) = check(settings);
    log_verdict(&report, &verdict, settings);
    if verdict.ok {
        Ok(())
    } else {
        Err(format!("{}; set {ENV_POLICY}=warn to start anyway", verdict.summary()))
    }
}

/// `comfy-init gpu [--json]`: prints the report (text, or one JSON object) to stdout, returns the exit code 0/1.
/// The probe runs under every policy (also `off`: the user asked for the report); the exit code
/// follows the policy.
pub fn command(settings: &GpuSettings, json: bool) -> i32 {
    let (report, verdict) = check(settings);
    if json {
        println!("{}", report::json(&report, &verdict, settings));
    } else {
        print!("{}", report::text(&report, &verdict, settings));
    }
    if verdict.ok {
        0
    } else {
        1
    }
}

/// For the healthcheck: can NVML still be initialised and each device opened? Ok(name of GPU 0) or Err(problem + advice, one line).
/// Under `off` it answers Ok without touching NVML; `warn` is not special here (the caller decides).
pub fn check_alive(settings: &GpuSettings) -> Result<String, String> {
    if settings.policy == GpuPolicy::Off {
        return Ok(format!("GPU check off ({ENV_POLICY}=off)"));
    }
    probe::alive(settings).map_err(|e| {
        let (_, message, advice) = evaluate::describe(&e);
        let message = match &e {
            ProbeError::Nvml { stage: Stage::DeviceCount, failure: NvmlFailure::Other, .. } => {
                "no GPU is visible in the container".to_string()
            }
            _ => message,
        };
        let advice = match &e {
            ProbeError::Nvml { stage: Stage::DeviceCount, failure: NvmlFailure::Other, .. } => {
                "check NVIDIA_VISIBLE_DEVICES (use `all`) and `--gpus all`".to_string()
            }
            _ => advice,
        };
        format!("{message}: {advice}").replace('\n', " ")
    })
}

#[cfg(test)]
mod tests {
    use super::model::{CudaVersion, GpuInfo};
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn off_never_touches_nvml() {
        let s = GpuSettings {
            policy: GpuPolicy::Off,
            nvml_lib: Some(PathBuf::from("/nonexistent/libnvidia-ml.so.1")),
            ..GpuSettings::default()
        };
        assert_eq!(preflight(&s), Ok(()));
        assert!(check_alive(&s).is_ok());
    }

    #[test]
    fn missing_library_under_each_policy() {
        let mut s =
            GpuSettings { nvml_lib: Some(PathBuf::from("/nonexistent/libnvidia-ml.so.1")), ..GpuSettings::default() };
        let e = preflight(&s).unwrap_err();
        assert!(e.contains("--gpus all") && !e.contains('\n'), "{e}");
        let e = check_alive(&s).unwrap_err();
        assert!(e.contains("--gpus all") && !e.contains('\n'), "{e}");
        s.policy = GpuPolicy::Warn;
        assert_eq!(preflight(&s), Ok(()));
    }

    #[test]
    fn json_shape_for_a_failure() {
        let s = GpuSettings {
            nvml_lib: Some(PathBuf::from("/nonexistent/libnvidia-ml.so.1")),
            image_cuda_version: Some("12.8.1".into()),
            ..GpuSettings::default()
        };
        let (r, v) = check(&s);
        let j = report::json(&r, &v, &s);
        assert_eq!(j["ok"], false);
        assert_eq!(j["policy"], "require");
        assert_eq!(j["image_cuda_version"], "12.8.1");
        assert!(j["driver_version"].is_null());
        assert!(j["gpus"].as_array().is_some_and(|a| a.is_empty()));
        assert_eq!(j["findings"][0]["severity"], "error");
        assert_eq!(j["findings"][0]["code"], "library_missing");
    }

    #[test]
    fn json_and_text_for_a_healthy_gpu() {
        let s = GpuSettings::default();
        let r = GpuReport {
            library: Some("libnvidia-ml.so.1".into()),
            driver_version: Some("550.54.14".into()),
            cuda_driver_version: Some(CudaVersion { major: 12, minor: 4 }),
            cuda_driver_version_source: Some("v2"),
            device_count: Some(1),
            gpus: vec![GpuInfo {
                index: 0,
                name: Some("NVIDIA GeForce RTX 3090".into()),
                brand: Some("GeForce".into()),
                vram_total_bytes: Some(24 << 30),
                vram_free_bytes: Some(20 << 30),
                compute_capability: Some((8, 6)),
                uuid: Some("GPU-1".into()),
                temperature_c: Some(45),
                power_w: None,
                utilization_percent: Some(3),
                mig_mode: Some(false),
                problems: vec![],
            }],
            ..GpuReport::default()
        };
        let v = evaluate(&r, &s);
        let j = report::json(&r, &v, &s);
        assert_eq!(j["ok"], true);
        assert_eq!(j["cuda_driver_version"], "12.4");
        let g = &j["gpus"][0];
        assert_eq!(g["compute_capability"], "8.6");
        assert_eq!(g["rtx"], true);
        assert_eq!(g["vram_total_bytes"], 24u64 << 30);
        assert_eq!(g["temperature_c"], 45);
        assert_eq!(g["mig_mode"], "disabled");
        assert!(g.get("power_w").is_none());
        let t = report::text(&r, &v, &s);
        assert!(t.contains("GPU 0: NVIDIA GeForce RTX 3090"), "{t}");
        assert!(t.contains("24.0 GiB total"), "{t}");
        assert!(t.contains("Verdict: OK"), "{t}");
    }
}
