//! I/O through NVML: find and pre-check the library, initialise it, read each GPU.
//!
//! No code path here may panic: PID 1 must survive any library. nvml-wrapper 0.13 looks
//! symbols up lazily and reports missing ones as errors, except in `Drop for Nvml`, which
//! calls `nvmlShutdown` through an `expect`. So every library is first opened with
//! `dlopen`/`dlsym` and refused when it lacks a symbol in [`REQUIRED_SYMBOLS`], and the
//! `Nvml` value lives in a [`Session`] that never lets that `Drop` run without `nvmlShutdown`.

use std::ffi::{CStr, CString, OsStr};
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::path::Path;

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::error::{nvml_try, NvmlError};
use nvml_wrapper::{Device, Nvml};

use super::model::GpuSettings;
use super::model::{CudaVersion, GpuInfo, GpuReport, NvmlFailure, ProbeError, Stage};

/// The name the driver installs and the NVIDIA Container Toolkit mounts.
pub const LIB_NAME: &str = "libnvidia-ml.so.1";

/// Where the library is looked for when the loader's own search does not find it.
pub const FALLBACK_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
    "/usr/lib/wsl/lib",
];

/// Symbols a library must export before it is handed to nvml-wrapper. `nvmlShutdown` is
/// called from `Drop` through an `expect`; the others are needed for any answer at all.
pub const REQUIRED_SYMBOLS: &[&str] =
    &["nvmlInit_v2", "nvmlShutdown", "nvmlDeviceGetCount_v2", "nvmlDeviceGetHandleByIndex_v2"];

/// The libraries to try, in order.
pub fn candidates(override_path: Option<&Path>) -> Vec<String> {
    if let Some(p) = override_path {
        return vec![p.to_string_lossy().into_owned()];
    }
    let mut list = vec![LIB_NAME.to_string()];
    for dir in FALLBACK_DIRS {
        list.push(format!("{dir}/{LIB_NAME}"));
        list.push(format!("{dir}/libnvidia-ml.so"));
    }
    list
}

/// Why a candidate was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precheck {
    NotFound(String),
    Invalid(String),
    MissingSymbols(Vec<String>),
}

fn dlerror_string() -> String {
    // SAFETY: dlerror returns NULL or a pointer to a NUL-terminated string owned by libc,
    // valid until the next dl* call on this thread; we copy it at once.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown dlopen error".to_string()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// Opens `candidate` with `dlopen(RTLD_LAZY | RTLD_LOCAL)` (the flags libloading uses), checks
/// [`REQUIRED_SYMBOLS`] with `dlsym`, and closes it again.
pub fn precheck(candidate: &str) -> Result<(), Precheck> {
    let has_slash = candidate.contains('/');
    if has_slash && !Path::new(candidate).exists() {
        return Err(Precheck::NotFound(format!("{candidate}: no such file")));
    }
    let c_path = CString::new(candidate).map_err(|_| Precheck::Invalid("the path contains a NUL byte".to_string()))?;
    // SAFETY: c_path is a valid C string. Loading runs the library's initialisers, which is
    // what nvml-wrapper would do next anyway.
    let handle = unsafe {
        libc::dlerror();
        libc::dlopen(c_path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL)
    };
    if handle.is_null() {
        let msg = dlerror_string();
        // A bare name that the loader cannot find is "not found"; anything else was found
        // but refused (not an ELF file, wrong architecture, unreadable, ...).
        if !has_slash && msg.contains("No such file") {
            return Err(Precheck::NotFound(msg));
        }
        return Err(Precheck::Invalid(msg));
    }
    let mut missing = Vec::new();
    for sym in REQUIRED_SYMBOLS {
        let Ok(c_sym) = CString::new(*sym) else {
            continue;
        };
        // SAFETY: handle came from a successful dlopen and is closed only below.
        let p = unsafe { libc::dlsym(handle, c_sym.as_ptr()) };
        if p.is_null() {
            missing.push((*sym).to_string());
        }
    }
    // SAFETY: handle is valid and not used after this.
    unsafe {
        libc::dlclose(handle);
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Precheck::MissingSymbols(missing))
    }
}

/// Finds the first candidate that passes [`precheck`].
pub fn locate(settings: &GpuSettings) -> Result<String, ProbeError> {
    let overridden = settings.nvml_lib.is_some();
    let list = candidates(settings.nvml_lib.as_deref());
    let mut refused: Option<ProbeError> = None;
    let mut tried = Vec::new();
    for cand in list {
        // Fallback folders: only files that exist are worth a dlopen.
        if !overridden && cand.contains('/') && !Path::new(&cand).exists() {
            tried.push(cand);
            continue;
        }
        match precheck(&cand) {
            Ok(()) => return Ok(cand),
            Err(Precheck::NotFound(_)) => {}
            Err(Precheck::Invalid(detail)) => {
                refused.get_or_insert(ProbeError::LibraryInvalid { path: cand.clone(), detail, overridden });
            }
            Err(Precheck::MissingSymbols(symbols)) => {
                refused.get_or_insert(ProbeError::SymbolsMissing { path: cand.clone(), symbols });
            }
        }
        tried.push(cand);
    }
    Err(refused.unwrap_or_else(|| ProbeError::LibraryMissing {
        requested: settings.nvml_lib.as_ref().map(|p| p.to_string_lossy().into_owned()),
        tried,
    }))
}

/// nvml-wrapper's error, reduced for the advice table.
pub fn failure_of(e: &NvmlError) -> NvmlFailure {
    match e {
        NvmlError::DriverNotLoaded => NvmlFailure::DriverNotLoaded,
        NvmlError::LibRmVersionMismatch => NvmlFailure::LibRmVersionMismatch,
        NvmlError::Unknown => NvmlFailure::Unknown,
        NvmlError::NoPermission => NvmlFailure::NoPermission,
        NvmlError::GpuLost => NvmlFailure::GpuLost,
        NvmlError::OperatingSystem => NvmlFailure::OperatingSystem,
        NvmlError::ResetRequired => NvmlFailure::ResetRequired,
        NvmlError::InsufficientPower => NvmlFailure::InsufficientPower,
        NvmlError::NotSupported => NvmlFailure::NotSupported,
        NvmlError::Uninitialized => NvmlFailure::Uninitialized,
        NvmlError::LibloadingError(_) | NvmlError::LibraryNotFound => NvmlFailure::LibraryNotFound,
        NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound => NvmlFailure::SymbolMissing,
        _ => NvmlFailure::Other,
    }
}

fn nvml_error(stage: Stage, e: &NvmlError) -> ProbeError {
    ProbeError::Nvml { stage, failure: failure_of(e), detail: e.to_string() }
}

/// An initialised NVML that shuts down cleanly and can never reach the panicking
/// `nvmlShutdown().expect(..)` in nvml-wrapper's `Drop`.
pub struct Session {
    nvml: ManuallyDrop<Nvml>,
}

impl Session {
    /// Loads `library` (which must have passed [`precheck`]) and calls `nvmlInit_v2`.
    pub fn open(library: &str) -> Result<Session, NvmlError> {
        let nvml = Nvml::builder().lib_path(OsStr::new(library)).init()?;
        Ok(Session { nvml: ManuallyDrop::new(nvml) })
    }
}

impl Deref for Session {
    type Target = Nvml;
    fn deref(&self) -> &Nvml {
        &self.nvml
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.nvml.lib().nvmlShutdown.is_ok() {
            // SAFETY: taken exactly once, here; self.nvml is not touched afterwards.
            let nvml = unsafe { ManuallyDrop::take(&mut self.nvml) };
            if let Err(e) = nvml.shutdown() {
                log::debug!("nvmlShutdown failed: {e}");
            }
        }
        // Otherwise leak it on purpose: dropping it would panic. (Unreachable after
        // precheck, kept as a second line of defence.)
    }
}

/// Layout of NVML's `nvmlMemory_t` (v1).
#[repr(C)]
struct MemoryV1 {
    total: u64,
    free: u64,
    used: u64,
}

/// `nvmlDeviceGetMemoryInfo` (v1), for drivers without the `_v2` call nvml-wrapper uses.
fn memory_v1(nvml: &Nvml, device: &Device<'_>) -> Result<(u64, u64), NvmlError> {
    let sym = nvml.lib().nvmlDeviceGetMemoryInfo.as_ref().map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
    let mut mem = MemoryV1 { total: 0, free: 0, used: 0 };
    // SAFETY: `sym` is nvmlDeviceGetMemoryInfo(nvmlDevice_t, nvmlMemory_t *); MemoryV1 has
    // nvmlMemory_t's layout; the handle belongs to this NVML session.
    let rc = unsafe { sym(device.handle(), (&mut mem as *mut MemoryV1).cast()) };
    nvml_try(rc)?;
    Ok((mem.total, mem.free))
}

/// The driver's CUDA version: `nvmlSystemGetCudaDriverVersion_v2`, else the v1 call.
fn cuda_driver_version(nvml: &Nvml) -> Option<(i32, &'static str)> {
    match nvml.sys_cuda_driver_version() {
        Ok(v) => return Some((v, "v2")),
        Err(e) => log::debug!("nvmlSystemGetCudaDriverVersion_v2: {e}; trying v1"),
    }
    let sym = nvml.lib().nvmlSystemGetCudaDriverVersion.as_ref().ok()?;
    let mut v: libc::c_int = 0;
    // SAFETY: `sym` is nvmlSystemGetCudaDriverVersion(int *).
    let rc = unsafe { sym(&mut v) };
    match nvml_try(rc) {
        Ok(()) => Some((v, "v1")),
        Err(e) => {
            log::debug!("nvmlSystemGetCudaDriverVersion: {e}");
            None
        }
    }
}

/// Records a failed query: essential ones always, optional metrics only when the GPU is lost.
fn keep<T>(info: &mut GpuInfo, what: &'static str, essential: bool, r: Result<T, NvmlError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            let failure = failure_of(&e);
            if essential || failure == NvmlFailure::GpuLost {
                info.problems.push(nvml_error(Stage::Query { index: info.index, what: what.to_string() }, &e));
            } else {
                log::debug!("GPU {}: {what} not available: {e}", info.index);
            }
            None
        }
    }
}

fn read_device(nvml: &Nvml, index: u32, device: &Device<'_>) -> GpuInfo {
    let mut g = GpuInfo::new(index);
    g.name = keep(&mut g, "name", true, device.name());
    g.brand = keep(&mut g, "brand", false, device.brand()).map(|b| format!("{b:?}"));
    let memory = match device.memory_info() {
        Ok(m) => Ok((m.total, m.free)),
        Err(NvmlError::GpuLost) => Err(NvmlError::GpuLost),
        Err(e) => {
            log::debug!("GPU {index}: nvmlDeviceGetMemoryInfo_v2: {e}; trying v1");
            memory_v1(nvml, device)
        }
    };
    if let Some((total, free)) = keep(&mut g, "memory", true, memory) {
        g.vram_total_bytes = Some(total);
        g.vram_free_bytes = Some(free);
    }
    g.compute_capability =
        keep(&mut g, "compute capability", true, device.cuda_compute_capability()).map(|cc| (cc.major, cc.minor));
    g.uuid = keep(&mut g, "UUID", false, device.uuid());
    g.temperature_c = keep(&mut g, "temperature", false, device.temperature(TemperatureSensor::Gpu));
    g.power_w = keep(&mut g, "power", false, device.power_usage()).map(|mw| f64::from(mw) / 1000.0);
    g.utilization_percent = keep(&mut g, "utilisation", false, device.utilization_rates()).map(|u| u.gpu);
    g.mig_mode = keep(&mut g, "MIG mode", false, device.mig_mode()).map(|m| m.current != 0);
    g
}

/// The full probe for the report.
pub fn probe(settings: &GpuSettings) -> GpuReport {
    let mut report = GpuReport { visible_devices: settings.visible_devices.clone(), ..GpuReport::default() };
    let library = match locate(settings) {
        Ok(l) => l,
        Err(e) => {
            report.fatal = Some(e);
            return report;
        }
    };
    report.library = Some(library.clone());
    let nvml = match Session::open(&library) {
        Ok(s) => s,
        Err(e) => {
            report.fatal = Some(nvml_error(Stage::Init, &e));
            return report;
        }
    };
    report.driver_version = nvml.sys_driver_version().ok();
    if let Some((v, source)) = cuda_driver_version(&nvml) {
        report.cuda_driver_version = CudaVersion::from_nvml(v);
        report.cuda_driver_version_source = report.cuda_driver_version.map(|_| source.to_string());
    }
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => {
            report.fatal = Some(nvml_error(Stage::DeviceCount, &e));
            return report;
        }
    };
    report.device_count = Some(count);
    for index in 0..count {
        match nvml.device_by_index(index) {
            Ok(device) => report.gpus.push(read_device(&nvml, index, &device)),
            Err(e) => report.device_errors.push(nvml_error(Stage::Handle(index), &e)),
        }
    }
    report
}

/// The light check for the healthcheck: init, count, open every device. Ok(name of GPU 0).
pub fn alive(settings: &GpuSettings) -> Result<String, ProbeError> {
    let library = locate(settings)?;
    let nvml = Session::open(&library).map_err(|e| nvml_error(Stage::Init, &e))?;
    let count = nvml.device_count().map_err(|e| nvml_error(Stage::DeviceCount, &e))?;
    let mut first = None;
    for index in 0..count {
        let device = nvml.device_by_index(index).map_err(|e| nvml_error(Stage::Handle(index), &e))?;
        if index == 0 {
            let name = device.name().map_err(|e| nvml_error(Stage::Query { index, what: "name".into() }, &e))?;
            first = Some(name);
        }
    }
    first.ok_or(ProbeError::Nvml {
        stage: Stage::DeviceCount,
        failure: NvmlFailure::Other,
        detail: "no GPU visible".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn candidates_default_and_override() {
        let c = candidates(None);
        assert_eq!(c[0], "libnvidia-ml.so.1");
        for dir in ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/nvidia/lib64", "/usr/lib/wsl/lib"] {
            assert!(c.contains(&format!("{dir}/libnvidia-ml.so.1")), "{dir}");
        }
        let p = PathBuf::from("/opt/x/libnvidia-ml.so.1");
        assert_eq!(candidates(Some(&p)), vec!["/opt/x/libnvidia-ml.so.1".to_string()]);
    }

    #[test]
    fn a_missing_library_is_seen_before_nvml_loads_it() {
        assert!(matches!(precheck("/nonexistent/libnvidia-ml.so.1"), Err(Precheck::NotFound(_))));
        assert!(matches!(precheck("libcomfy-init-does-not-exist.so.9"), Err(Precheck::NotFound(_))));
    }

    #[test]
    fn precheck_text_file_is_invalid() {
        let dir = std::env::temp_dir().join(format!("comfy-init-gpu-precheck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("libnvidia-ml.so.1");
        std::fs::write(&f, "this is not an ELF file\n").unwrap();
        let r = precheck(f.to_str().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        match r {
            Err(Precheck::Invalid(msg)) => assert!(!msg.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn precheck_library_without_nvml_symbols() {
        // libc loads fine but is no NVML
        match precheck("libc.so.6") {
            Err(Precheck::MissingSymbols(s)) => {
                assert!(s.contains(&"nvmlInit_v2".to_string()));
                assert!(s.contains(&"nvmlShutdown".to_string()));
            }
            other => panic!("{other:?}"),
        }
    }

    fn override_settings(p: &Path) -> GpuSettings {
        GpuSettings { nvml_lib: Some(p.to_path_buf()), ..GpuSettings::default() }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("comfy-init-gpu-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn locate_override_reports_each_case() {
        let missing = Path::new("/nonexistent/libnvidia-ml.so.1");
        assert!(matches!(
            locate(&override_settings(missing)),
            Err(ProbeError::LibraryMissing { requested: Some(_), .. })
        ));
        assert!(matches!(locate(&override_settings(Path::new("libc.so.6"))), Err(ProbeError::SymbolsMissing { .. })));
        let dir = temp_dir("locate");
        let text = dir.join("libnvidia-ml.so.1");
        std::fs::write(&text, "not a library").unwrap();
        let r = locate(&override_settings(&text));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(r, Err(ProbeError::LibraryInvalid { overridden: true, .. })), "{r:?}");
    }

    #[test]
    fn nvml_failures_map_to_what_to_do() {
        assert_eq!(failure_of(&NvmlError::GpuLost), NvmlFailure::GpuLost);
        assert_eq!(failure_of(&NvmlError::Unknown), NvmlFailure::Unknown);
        assert_eq!(failure_of(&NvmlError::FailedToLoadSymbol("x".into())), NvmlFailure::SymbolMissing);
        assert_eq!(failure_of(&NvmlError::InvalidArg), NvmlFailure::Other);
    }
}
