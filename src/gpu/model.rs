//! What the probe found: plain data, no I/O. `probe` fills it, `evaluate` judges it, `report`
//! shows it; none of them needs another's code to read it.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub const ENV_POLICY: &str = "COMFY_INIT_GPU";
pub const ENV_MIN_VRAM: &str = "COMFY_INIT_MIN_VRAM_GB";
pub const ENV_NVML_LIB: &str = "COMFY_INIT_NVML_LIB";
pub const ENV_TIMEOUT: &str = "COMFY_INIT_GPU_TIMEOUT";
pub const ENV_CUDA_VERSION: &str = "CUDA_VERSION";

/// How long NVML may take by default (`COMFY_INIT_GPU_TIMEOUT`). `nvmlInit` without persistence
/// mode wakes every GPU, about a second each on large boxes; a driver that has not answered in
/// this time is hung.
pub const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuPolicy {
    Require,
    Warn,
    Off,
}

impl GpuPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            GpuPolicy::Require => "require",
            GpuPolicy::Warn => "warn",
            GpuPolicy::Off => "off",
        }
    }

    /// `require` | `warn` | `off`, case-insensitive, surrounding blanks ignored.
    pub fn parse(s: &str) -> Option<GpuPolicy> {
        match s.trim().to_ascii_lowercase().as_str() {
            "require" => Some(GpuPolicy::Require),
            "warn" => Some(GpuPolicy::Warn),
            "off" => Some(GpuPolicy::Off),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct GpuSettings {
    pub policy: GpuPolicy,
    pub min_vram_gb: Option<f64>,
    /// `COMFY_INIT_GPU_TIMEOUT`: how long NVML may take to answer the preflight.
    pub timeout: Duration,
    pub nvml_lib: Option<PathBuf>,
    pub image_cuda_version: Option<String>,
    /// `NVIDIA_VISIBLE_DEVICES`, shown in the report (the NVIDIA runtime acts on it, not us).
    pub visible_devices: Option<String>,
    /// How to ask which PyTorch ComfyUI will import. None: PyTorch is not looked at (the
    /// healthcheck, unit tests).
    pub torch_probe: Option<TorchProbe>,
    /// `COMFY_INIT_GPU_SELECT`: the card(s) ComfyUI gets (CUDA_VISIBLE_DEVICES) and the verdict
    /// judges.
    pub select: Option<Select>,
    /// `COMFY_INIT_INSTANCES`: one ComfyUI, or one per card.
    pub instances: Instances,
}

/// `COMFY_INIT_INSTANCES` (issue 26).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Instances {
    /// One ComfyUI (the default).
    #[default]
    One,
    /// One per usable card: RTX, kernels for it in the installed PyTorch, enough VRAM.
    PerGpu,
    /// One per card named (indexes or UUIDs), in that order.
    Cards(Vec<Select>),
}

impl Instances {
    pub fn parse(value: &str) -> Option<Instances> {
        match value.trim() {
            "1" => Some(Instances::One),
            "per-gpu" => Some(Instances::PerGpu),
            // A bare index is ambiguous: "2" reads like a count, but would be card 2 alone.
            list if !list.contains(',') && !list.starts_with("GPU-") && !list.starts_with("MIG-") => None,
            list => {
                let cards: Option<Vec<Select>> =
                    list.split(',').map(|c| Select::parse(c).filter(|s| *s != Select::Best)).collect();
                cards.filter(|c| !c.is_empty()).map(Instances::Cards)
            }
        }
    }
}

/// ComfyUI's interpreter, asked where `torch` is (`gpu::torch::find`), the way ComfyUI runs:
/// its user, its folder, the part of its environment that decides what Python imports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TorchProbe {
    /// `COMFYUI_PYTHON` (default `python3`, looked up in `PATH`).
    pub python: String,
    /// ComfyUI's folder, the probe's working directory (main.py's folder is first on its path).
    pub dir: PathBuf,
    /// `PUID`/`PGID`: whom the probe runs as when comfy-init is root (the interpreter's venv may
    /// belong to that user: its `.pth` files must never run as root). None: as ourselves.
    pub user: Option<(u32, u32)>,
    /// The probe's whole environment, from `gpu::torch::PROBE_ENV` only: never a credential.
    pub env: Vec<(String, String)>,
}

/// `COMFY_INIT_GPU_SELECT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Select {
    Index(u32),
    /// `GPU-...` (or `MIG-...`), as NVML reports it.
    Uuid(String),
    /// The covered card with the most free VRAM.
    Best,
}

/// As it is written in `COMFY_INIT_GPU_SELECT`.
impl fmt::Display for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Select::Index(i) => write!(f, "{i}"),
            Select::Uuid(u) => f.write_str(u),
            Select::Best => f.write_str("best"),
        }
    }
}

impl Select {
    pub fn parse(value: &str) -> Option<Select> {
        let v = value.trim();
        if v.eq_ignore_ascii_case("best") {
            Some(Select::Best)
        } else if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            v.parse().ok().map(Select::Index)
        } else if v.starts_with("GPU-") || v.starts_with("MIG-") {
            Some(Select::Uuid(v.to_string()))
        } else {
            None
        }
    }
}

impl Default for GpuSettings {
    fn default() -> Self {
        GpuSettings {
            policy: GpuPolicy::Require,
            min_vram_gb: None,
            timeout: TIMEOUT,
            nvml_lib: None,
            image_cuda_version: None,
            visible_devices: None,
            torch_probe: None,
            select: None,
            instances: Instances::One,
        }
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Where in the probe a failure happened; the same NVML error means different things at
/// different stages (`Unknown` at init is the lost device cgroup, elsewhere it is just unknown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    Init,
    DeviceCount,
    Handle(u32),
    Query { index: u32, what: String },
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
    /// `comfy-init-nvml`, which asks NVML for comfy-init, could not be run (`missing`) or gave no
    /// answer (a timeout, a crash, a garbled reply: `detail` says which).
    Helper { path: String, detail: String, missing: bool },
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
    pub cuda_driver_version_source: Option<String>,
    pub device_count: Option<u32>,
    pub gpus: Vec<GpuInfo>,
    /// Devices whose handle could not be obtained (`Stage::Handle`).
    pub device_errors: Vec<ProbeError>,
    /// `NVIDIA_VISIBLE_DEVICES` as this process sees it, for the advice.
    pub visible_devices: Option<String>,
    /// The PyTorch ComfyUI will import (None: not looked at).
    pub torch: Option<Found>,
    /// The cards COMFY_INIT_GPU_SELECT chose (None: every card); the verdict judges only these.
    pub selected: Option<Vec<u32>>,
}

/// What `torch/version.py` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torch {
    /// Where the package is.
    pub dir: PathBuf,
    /// `__version__`, e.g. `2.8.0+cu128`.
    pub version: String,
    /// `cuda`: the CUDA version it was built for (`12.8`); None for a CPU-only or ROCm build.
    pub cuda: Option<String>,
    /// `hip`: the ROCm version of a ROCm build.
    pub hip: Option<String>,
}

/// What the probe found of PyTorch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Torch(Torch),
    /// The interpreter answered: no `torch` to import.
    Missing {
        python: String,
    },
    /// The question could not be asked or answered (no interpreter, a timeout, an unreadable
    /// version.py): why.
    Unknown(String),
}

pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_versions_come_from_nvml_as_major_times_1000_plus_minor_times_10() {
        assert_eq!(CudaVersion::from_nvml(12040), Some(CudaVersion { major: 12, minor: 4 }));
        assert_eq!(CudaVersion::from_nvml(12080), Some(CudaVersion { major: 12, minor: 8 }));
        assert_eq!(CudaVersion::from_nvml(13000), Some(CudaVersion { major: 13, minor: 0 }));
        assert_eq!(CudaVersion::from_nvml(0), None);
        assert_eq!(CudaVersion::from_nvml(-5), None);
        assert_eq!(CudaVersion::from_nvml(12040).map(|v| v.to_string()).as_deref(), Some("12.4"));
    }

    #[test]
    fn cuda_versions_parse_from_image_variables() {
        assert_eq!(CudaVersion::parse("12.8.1"), Some(CudaVersion { major: 12, minor: 8 }));
        assert_eq!(CudaVersion::parse(" 12.4 "), Some(CudaVersion { major: 12, minor: 4 }));
        assert_eq!(CudaVersion::parse("13"), Some(CudaVersion { major: 13, minor: 0 }));
        assert_eq!(CudaVersion::parse("v12.6.3"), Some(CudaVersion { major: 12, minor: 6 }));
        assert_eq!(CudaVersion::parse("twelve"), None);
        assert_eq!(CudaVersion::parse(""), None);
        assert_eq!(CudaVersion::parse("12.x"), None);
    }
}
