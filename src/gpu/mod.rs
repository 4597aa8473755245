//! GPU preflight: is there a usable NVIDIA (RTX) GPU before ComfyUI starts?
//!
//! * [`probe`] does the I/O through NVML (nvml-wrapper 0.13), after pre-checking the library
//!   with `dlopen`/`dlsym` so that no library can make it panic. It runs only in the helper
//!   process `comfy-init-nvml`; [`helper`] runs that and [`wire`] carries its answer back.
//! * [`evaluate`] is pure: it turns a [`GpuReport`] and the [`GpuSettings`] into a [`Verdict`]
//!   (findings with severity, message and advice).
//! * [`model`] is the data the probe fills; [`report`] renders it as text, JSON and log lines.
//!
//! Settings (read in `config.rs`): `COMFY_INIT_GPU` = `require` (default) | `warn` | `off`,
//! `COMFY_INIT_MIN_VRAM_GB` (GiB, compared with the total VRAM, 1 % tolerance),
//! `COMFY_INIT_NVML_LIB` (library path), `COMFY_INIT_GPU_TIMEOUT` (how long NVML may take,
//! default 30 s), `CUDA_VERSION` (set by nvidia/cuda images; compared with the driver's CUDA
//! version).

pub mod evaluate;
pub mod helper;
pub mod model;
pub mod probe;
pub mod report;
pub mod torch;
pub mod wire;

pub use evaluate::Card;
pub use evaluate::{evaluate, Severity, Verdict};
pub use model::{GpuPolicy, GpuReport, GpuSettings, Instances, NvmlFailure, ProbeError, Select, Stage, TorchProbe};
pub use model::{ENV_CUDA_VERSION, ENV_MIN_VRAM, ENV_NVML_LIB, ENV_POLICY, ENV_TIMEOUT};

/// Why the preflight refuses to start ComfyUI: one short line (the details were just logged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreflightError {
    #[error("COMFY_INIT_GPU_SELECT=best needs the GPU check: set {ENV_POLICY}=warn or require")]
    BestNeedsCheck,
    #[error(transparent)]
    Select(#[from] evaluate::NoSuchGpu),
    /// The verdict failed under `require`.
    #[error("the GPU check failed (see above); set {ENV_POLICY}=warn to start anyway")]
    Failed,
    #[error("COMFY_INIT_INSTANCES=per-gpu needs the GPU check to find the cards: set {ENV_POLICY}=warn or require")]
    PerGpuNeedsCheck,
    #[error("COMFY_INIT_INSTANCES=per-gpu: no card can run a ComfyUI (see above why each is left out)")]
    NoCardForAnInstance,
}

/// The healthcheck's light check failed: its line, problem and advice (see [`check_alive`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", alive_problem(.0))]
pub struct NotAlive(pub ProbeError);

/// What the preflight decided for the child.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ForChild {
    /// `CUDA_VISIBLE_DEVICES` for ComfyUI, from COMFY_INIT_GPU_SELECT.
    pub visible_devices: Option<String>,
    /// COMFY_INIT_INSTANCES other than 1: one ComfyUI per card, in order (empty: one ComfyUI).
    pub instances: Vec<InstanceCard>,
}

/// The card of one ComfyUI instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceCard {
    /// Its `CUDA_VISIBLE_DEVICES`: the UUID where known (CUDA's own order of indexes may differ
    /// from NVML's), else the index.
    pub visible: String,
    /// For the log and the healthcheck: `GPU 1 (NVIDIA GeForce RTX 4090, GPU-...)`.
    pub label: String,
}

impl From<&Card> for InstanceCard {
    fn from(c: &Card) -> InstanceCard {
        InstanceCard { visible: c.uuid.clone().unwrap_or_else(|| c.index.to_string()), label: format!("GPU {c}") }
    }
}

/// How NVML is asked: [`helper::probe`] everywhere but in unit tests, which call [`probe::probe`]
/// in their own (dynamically linked) process.
type Probe = fn(&GpuSettings) -> GpuReport;

/// Probes NVML and the PyTorch ComfyUI will import, applies COMFY_INIT_GPU_SELECT, evaluates.
pub fn check(settings: &GpuSettings) -> (GpuReport, Verdict) {
    check_with(settings, helper::probe)
}

fn check_with(settings: &GpuSettings, probe: Probe) -> (GpuReport, Verdict) {
    let mut report = probe(settings);
    if report.fatal.is_none() {
        if let Some(probe) = &settings.torch_probe {
            report.torch = Some(torch::find(probe));
        }
    }
    report.selected = evaluate::select(&report, settings).ok().flatten().map(|(indices, _)| indices);
    if settings.instances != Instances::One {
        // The verdict judges the cards that get a ComfyUI, not those left out.
        report.selected =
            evaluate::instance_cards(&report, settings).ok().map(|(cards, _)| cards.iter().map(|c| c.index).collect());
    }
    let verdict = evaluate(&report, settings);
    (report, verdict)
}

fn log_verdict(report: &GpuReport, verdict: &Verdict, settings: &GpuSettings) {
    for line in report::report_lines(report, settings) {
        log::info!("gpu: {line}");
    }
    for f in &verdict.findings {
        let level = match (f.severity, settings.policy) {
            (Severity::Error, GpuPolicy::Require) => log::Level::Error,
            (Severity::Error, _) | (Severity::Warning, _) => log::Level::Warn,
            (Severity::Info, _) => log::Level::Info,
        };
        // One block a finding: what is wrong, then what to do, wrapped to read.
        log::log!(level, "gpu: {}", f.message);
        for line in report::wrap(&f.advice, 96) {
            log::log!(level, "gpu:     {line}");
        }
    }
    let level = if verdict.ok { log::Level::Info } else { log::Level::Error };
    log::log!(level, "gpu: {}", verdict.verdict_line());
}

/// Preflight for `run`: logs the report (each problem once, with what to do). Ok: the policy is
/// met (always under warn; off touches nothing), with what the child gets. Err: one short line
/// (the details were just logged).
pub fn preflight(settings: &GpuSettings) -> Result<ForChild, PreflightError> {
    preflight_with(settings, helper::probe)
}

fn preflight_with(settings: &GpuSettings, probe: Probe) -> Result<ForChild, PreflightError> {
    if settings.policy == GpuPolicy::Off {
        log::info!("gpu: check skipped ({ENV_POLICY}=off)");
        let named = |s: &Select| InstanceCard { visible: s.to_string(), label: format!("GPU {s}") };
        return match (&settings.select, &settings.instances) {
            (_, Instances::PerGpu) => Err(PreflightError::PerGpuNeedsCheck),
            (_, Instances::Cards(list)) => {
                Ok(ForChild { instances: list.iter().map(named).collect(), ..ForChild::default() })
            }
            (None, Instances::One) => Ok(ForChild::default()),
            (Some(Select::Index(i)), _) => Ok(ForChild { visible_devices: Some(i.to_string()), ..ForChild::default() }),
            (Some(Select::Uuid(u)), _) => Ok(ForChild { visible_devices: Some(u.clone()), ..ForChild::default() }),
            (Some(Select::Best), _) => Err(PreflightError::BestNeedsCheck),
        };
    }
    let (report, verdict) = check_with(settings, probe);
    log_verdict(&report, &verdict, settings);
    let selected = match evaluate::select(&report, settings) {
        Ok(selected) => selected,
        Err(refusal) if report.fatal.is_none() => return Err(refusal.into()),
        Err(_) => None, // no card is known at all: the verdict above says why
    };
    let instances = instance_cards(&report, settings)?;
    if !verdict.ok {
        return Err(PreflightError::Failed);
    }
    let visible_devices = selected.map(|(_, value)| value);
    if let Some(v) = &visible_devices {
        log::info!("gpu: ComfyUI gets CUDA_VISIBLE_DEVICES={v} (COMFY_INIT_GPU_SELECT)");
    }
    Ok(ForChild { visible_devices, instances })
}

/// COMFY_INIT_INSTANCES: the cards that get a ComfyUI, each said in the log with those left out.
fn instance_cards(report: &GpuReport, settings: &GpuSettings) -> Result<Vec<InstanceCard>, PreflightError> {
    if settings.instances == Instances::One {
        return Ok(Vec::new());
    }
    let (cards, left_out) = match evaluate::instance_cards(report, settings) {
        Ok(found) => found,
        Err(refusal) if report.fatal.is_none() => return Err(refusal.into()),
        Err(_) => return Err(PreflightError::Failed), // no card is known at all: the verdict says why
    };
    for (card, why) in &left_out {
        log::warn!("gpu: GPU {card} gets no ComfyUI: {why}");
    }
    if cards.is_empty() {
        return Err(if report.fatal.is_some() { PreflightError::Failed } else { PreflightError::NoCardForAnInstance });
    }
    let instances: Vec<InstanceCard> = cards.iter().map(InstanceCard::from).collect();
    for (i, card) in instances.iter().enumerate() {
        log::info!("gpu: instance {i} runs on {}", card.label);
    }
    Ok(instances)
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

/// For the healthcheck: can NVML still be initialised and each device opened? Ok(name of GPU 0)
/// or Err(what failed; shown as problem + advice, one line). Under `off` it answers Ok without
/// touching NVML; `warn` is not special here (the caller decides).
pub fn check_alive(settings: &GpuSettings, deadline: std::time::Instant) -> Result<String, NotAlive> {
    if settings.policy == GpuPolicy::Off {
        return Ok(format!("GPU check off ({ENV_POLICY}=off)"));
    }
    let timeout = deadline.saturating_duration_since(std::time::Instant::now());
    helper::alive(settings, timeout).map_err(NotAlive)
}

/// The healthcheck's one line for a failed light check: problem and advice.
fn alive_problem(e: &ProbeError) -> String {
    let (message, advice) = match e {
        ProbeError::Nvml { stage: Stage::DeviceCount, failure: NvmlFailure::Other, .. } => (
            "no GPU is visible in the container".to_string(),
            "check NVIDIA_VISIBLE_DEVICES (use `all`) and `--gpus all`".to_string(),
        ),
        _ => {
            let (_, message, advice) = evaluate::describe(e);
            (message, advice)
        }
    };
    format!("{message}: {advice}").replace('\n', " ")
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
        assert_eq!(preflight(&s), Ok(ForChild::default()));
        assert!(check_alive(&s, std::time::Instant::now()).is_ok());
    }

    #[test]
    fn missing_library_under_each_policy() {
        let mut s =
            GpuSettings { nvml_lib: Some(PathBuf::from("/nonexistent/libnvidia-ml.so.1")), ..GpuSettings::default() };
        // The advice is logged once, with the report; the error only says where to look.
        let e = preflight_with(&s, probe::probe).unwrap_err().to_string();
        assert!(e.contains("see above") && e.contains("COMFY_INIT_GPU=warn") && !e.contains('\n'), "{e}");
        let e = NotAlive(probe::alive(&s).unwrap_err()).to_string();
        assert!(e.contains("--gpus all") && !e.contains('\n'), "{e}");
        s.policy = GpuPolicy::Warn;
        assert_eq!(preflight_with(&s, probe::probe), Ok(ForChild::default()));
    }

    #[test]
    fn json_shape_for_a_failure() {
        let s = GpuSettings {
            nvml_lib: Some(PathBuf::from("/nonexistent/libnvidia-ml.so.1")),
            image_cuda_version: Some("12.8.1".into()),
            ..GpuSettings::default()
        };
        let (r, v) = check_with(&s, probe::probe);
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
            cuda_driver_version_source: Some("v2".into()),
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
