//! What the probe found (plain data, no I/O) and how it is shown: text, JSON, log lines.

use std::fmt;

use serde_json::{json, Value};

use super::evaluate::{is_rtx, Severity, Verdict};
use super::GpuSettings;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Where in the probe a failure happened; the same NVML error means different things at
/// different stages (`Unknown` at init is the lost device cgroup, elsewhere it is just unknown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    Init,
    DeviceCount,
    Handle(u32),
    Query { index: u32, what: &'static str },
}

/// NVML's answer, reduced to what the advice table distinguishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NvmlFailure {
    DriverNotLoaded,
    LibRmVersionMismatch,
    Unknown,
    NoPermission,
    GpuLost,
    OperatingSystem,
    ResetRequired,
    InsufficientPower,
    NotSupported,
    Uninitialized,
    LibraryNotFound,
    SymbolMissing,
    Other,
}

/// Everything that can go wrong while probing.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeError {
    /// No NVML library found. `requested` is `COMFY_INIT_NVML_LIB` when set.
    LibraryMissing { requested: Option<String>, tried: Vec<String> },
    /// A file was found but `dlopen` refused it (not a library, wrong architecture, ...).
    LibraryInvalid { path: String, detail: String, overridden: bool },
    /// The library loads but lacks symbols we need (calling them would fail or panic).
    SymbolsMissing { path: String, symbols: Vec<String> },
    /// An NVML call failed.
    Nvml { stage: Stage, failure: NvmlFailure, detail: String },
}

/// A CUDA version as NVML reports it (12040 = 12.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CudaVersion {
    pub major: u32,
    pub minor: u32,
}

impl CudaVersion {
    /// From NVML's integer form (1000 * major + 10 * minor); `None` for nonsense.
    pub fn from_nvml(v: i32) -> Option<CudaVersion> {
        if v <= 0 {
            return None;
        }
        let v = v as u32;
        Some(CudaVersion { major: v / 1000, minor: (v % 1000) / 10 })
    }

    /// From a version string such as `CUDA_VERSION=12.8.1` (or `12.8`, `12`).
    pub fn parse(s: &str) -> Option<CudaVersion> {
        let s = s.trim();
        let s = s.strip_prefix('v').unwrap_or(s);
        let mut parts = s.split('.');
        let major = parts.next()?.trim().parse::<u32>().ok()?;
        let minor = match parts.next() {
            Some(m) => m.trim().parse::<u32>().ok()?,
            None => 0,
        };
        if major == 0 {
            return None;
        }
        Some(CudaVersion { major, minor })
    }
}

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// One GPU that could be opened.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuInfo {
    pub index: u32,
    pub name: Option<String>,
    /// nvml-wrapper's `Brand` variant name, e.g. `GeForce`, `NvidiaRTX`.
    pub brand: Option<String>,
    pub vram_total_bytes: Option<u64>,
    pub vram_free_bytes: Option<u64>,
    pub compute_capability: Option<(i32, i32)>,
    pub uuid: Option<String>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    pub utilization_percent: Option<u32>,
    /// Current MIG mode (true = enabled).
    pub mig_mode: Option<bool>,
    /// Failed essential queries, and any query that found the GPU lost.
    pub problems: Vec<ProbeError>,
}

impl GpuInfo {
    pub fn new(index: u32) -> GpuInfo {
        GpuInfo { index, ..GpuInfo::default() }
    }

    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or("(name unknown)")
    }

    pub fn is_lost(&self) -> bool {
        self.problems.iter().any(|p| matches!(p, ProbeError::Nvml { failure: NvmlFailure::GpuLost, .. }))
    }

    pub fn compute_capability_string(&self) -> Option<String> {
        self.compute_capability.map(|(a, b)| format!("{a}.{b}"))
    }
}

/// The result of one probe.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuReport {
    /// The library that was loaded (a path, or the bare `libnvidia-ml.so.1`).
    pub library: Option<String>,
    /// Loading, init or the device count failed: nothing below is known.
    pub fatal: Option<ProbeError>,
    pub driver_version: Option<String>,
    pub cuda_driver_version: Option<CudaVersion>,
    /// Which NVML call answered the CUDA version: "v2" or "v1" (fallback).
    pub cuda_driver_version_source: Option<&'static str>,
    pub device_count: Option<u32>,
    pub gpus: Vec<GpuInfo>,
    /// Devices whose handle could not be obtained (`Stage::Handle`).
    pub device_errors: Vec<ProbeError>,
    /// `NVIDIA_VISIBLE_DEVICES` as this process sees it, for the advice.
    pub visible_devices: Option<String>,
}

pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

fn gpu_lines(g: &GpuInfo) -> Vec<String> {
    let mut lines = vec![format!("GPU {}: {}", g.index, g.display_name())];
    let mut l = Vec::new();
    l.push(format!("brand {}", g.brand.as_deref().unwrap_or("unknown")));
    l.push(format!("RTX: {}", if is_rtx(g) { "yes" } else { "no" }));
    l.push(format!("compute capability {}", g.compute_capability_string().unwrap_or_else(|| "unknown".into())));
    lines.push(format!("  {}", l.join(", ")));
    let vram = match (g.vram_total_bytes, g.vram_free_bytes) {
        (Some(t), Some(f)) => format!("{:.1} GiB total, {:.1} GiB free", gib(t), gib(f)),
        (Some(t), None) => format!("{:.1} GiB total", gib(t)),
        _ => "unknown".into(),
    };
    lines.push(format!("  VRAM: {vram}"));
    if let Some(uuid) = &g.uuid {
        lines.push(format!("  UUID: {uuid}"));
    }
    let mut m = Vec::new();
    if let Some(t) = g.temperature_c {
        m.push(format!("temperature {t} °C"));
    }
    if let Some(p) = g.power_w {
        m.push(format!("power {p:.1} W"));
    }
    if let Some(u) = g.utilization_percent {
        m.push(format!("utilisation {u} %"));
    }
    if let Some(mig) = g.mig_mode {
        m.push(format!("MIG {}", if mig { "enabled" } else { "disabled" }));
    }
    if !m.is_empty() {
        lines.push(format!("  {}", m.join(", ")));
    }
    lines
}

/// The report without findings, one line per item (used for text output and the log).
pub fn report_lines(report: &GpuReport, settings: &GpuSettings) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(lib) = &report.library {
        lines.push(format!("NVML library: {lib}"));
    }
    if report.fatal.is_none() {
        let driver = report.driver_version.as_deref().unwrap_or("unknown");
        let cuda = match (&report.cuda_driver_version, report.cuda_driver_version_source) {
            (Some(v), Some("v1")) => format!("{v} (from the v1 NVML call)"),
            (Some(v), _) => v.to_string(),
            (None, _) => "unknown".into(),
        };
        lines.push(format!("Driver: {driver}, driver CUDA version: {cuda}"));
    }
    if let Some(img) = &settings.image_cuda_version {
        lines.push(format!("Image CUDA_VERSION: {img}"));
    }
    if let Some(n) = report.device_count {
        lines.push(format!("Visible GPUs: {n}"));
    }
    for g in &report.gpus {
        lines.extend(gpu_lines(g));
    }
    lines
}

/// Human-readable report and verdict, for `comfy-init gpu`.
pub fn text(report: &GpuReport, verdict: &Verdict, settings: &GpuSettings) -> String {
    let mut out = String::new();
    for line in report_lines(report, settings) {
        out.push_str(&line);
        out.push('\n');
    }
    for f in &verdict.findings {
        let tag = match f.severity {
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Info => "INFO",
        };
        out.push_str(&format!("{tag}: {}\n", f.message));
        if !f.advice.is_empty() {
            out.push_str(&format!("  advice: {}\n", f.advice));
        }
    }
    out.push_str(&verdict.verdict_line());
    out.push('\n');
    out
}

/// One JSON object, for `comfy-init gpu --json`.
pub fn json(report: &GpuReport, verdict: &Verdict, settings: &GpuSettings) -> Value {
    let gpus: Vec<Value> = report
        .gpus
        .iter()
        .map(|g| {
            let mut o = json!({
                "index": g.index,
                "name": g.name,
                "brand": g.brand,
                "rtx": is_rtx(g),
                "vram_total_bytes": g.vram_total_bytes,
                "vram_free_bytes": g.vram_free_bytes,
                "compute_capability": g.compute_capability_string(),
                "uuid": g.uuid,
            });
            if let Some(map) = o.as_object_mut() {
                if let Some(t) = g.temperature_c {
                    map.insert("temperature_c".into(), json!(t));
                }
                if let Some(p) = g.power_w {
                    map.insert("power_w".into(), json!(p));
                }
                if let Some(u) = g.utilization_percent {
                    map.insert("utilization_percent".into(), json!(u));
                }
                if let Some(m) = g.mig_mode {
                    map.insert("mig_mode".into(), json!(if m { "enabled" } else { "disabled" }));
                }
            }
            o
        })
        .collect();
    let findings: Vec<Value> = verdict
        .findings
        .iter()
        .map(|f| {
            json!({
                "severity": f.severity.as_str(),
                "code": f.code,
                "message": f.message,
                "advice": f.advice,
            })
        })
        .collect();
    json!({
        "policy": settings.policy.as_str(),
        "ok": verdict.ok,
        "library": report.library,
        "driver_version": report.driver_version,
        "cuda_driver_version": report.cuda_driver_version.map(|v| v.to_string()),
        "cuda_driver_version_source": report.cuda_driver_version_source,
        "image_cuda_version": settings.image_cuda_version,
        "min_vram_gb": settings.min_vram_gb,
        "device_count": report.device_count,
        "gpus": gpus,
        "findings": findings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_version_from_nvml() {
        assert_eq!(CudaVersion::from_nvml(12040), Some(CudaVersion { major: 12, minor: 4 }));
        assert_eq!(CudaVersion::from_nvml(12080), Some(CudaVersion { major: 12, minor: 8 }));
        assert_eq!(CudaVersion::from_nvml(13000), Some(CudaVersion { major: 13, minor: 0 }));
        assert_eq!(CudaVersion::from_nvml(0), None);
        assert_eq!(CudaVersion::from_nvml(-5), None);
        assert_eq!(CudaVersion::from_nvml(12040).map(|v| v.to_string()).as_deref(), Some("12.4"));
    }

    #[test]
    fn cuda_version_parse() {
        assert_eq!(CudaVersion::parse("12.8.1"), Some(CudaVersion { major: 12, minor: 8 }));
        assert_eq!(CudaVersion::parse(" 12.4 "), Some(CudaVersion { major: 12, minor: 4 }));
        assert_eq!(CudaVersion::parse("13"), Some(CudaVersion { major: 13, minor: 0 }));
        assert_eq!(CudaVersion::parse("v12.6.3"), Some(CudaVersion { major: 12, minor: 6 }));
        assert_eq!(CudaVersion::parse("twelve"), None);
        assert_eq!(CudaVersion::parse(""), None);
        assert_eq!(CudaVersion::parse("12.x"), None);
    }
}
