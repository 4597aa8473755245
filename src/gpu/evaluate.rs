//! Pure evaluation of a [`GpuReport`] against the [`GpuSettings`]: findings and the verdict.
//! No I/O here; everything is unit-tested below.

use super::model::{gib, CudaVersion, GpuInfo, GpuReport, NvmlFailure, ProbeError, Stage};
use super::model::{Found, GpuPolicy, GpuSettings, Instances, Select, Torch};
use super::torch::{self, Coverage};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One problem (or note) with what to do about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    /// Stable machine-readable name, e.g. `library_missing`, `gpu_lost`.
    pub code: &'static str,
    pub message: String,
    pub advice: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub policy: GpuPolicy,
    pub findings: Vec<Finding>,
    /// Whether the policy is met: `require` and no error; `warn` and `off` always.
    pub ok: bool,
}

impl Verdict {
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Error)
    }

    #[cfg(test)]
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// One line: the first error with its advice (and how many more there are).
    #[cfg(test)]
    pub fn summary(&self) -> String {
        let mut errors = self.errors();
        match errors.next() {
            None => "GPU check passed".into(),
            Some(first) => {
                let more = errors.count();
                let mut s = format!("GPU check failed: {}", first.message);
                if !first.advice.is_empty() {
                    s.push_str(&format!(" ({})", first.advice));
                }
                if more > 0 {
                    s.push_str(&format!(" [and {more} more problem(s)]"));
                }
                s
            }
        }
    }

    pub fn verdict_line(&self) -> String {
        let errors = self.errors().count();
        let warnings = self.findings.iter().filter(|f| f.severity == Severity::Warning).count();
        let policy = self.policy.as_str();
        match (self.ok, errors) {
            (false, _) => format!(
                "Verdict: FAILED (COMFY_INIT_GPU={policy}): {errors} error(s), {warnings} warning(s); \
                 set COMFY_INIT_GPU=warn to start ComfyUI anyway"
            ),
            (true, 0) => format!("Verdict: OK (COMFY_INIT_GPU={policy}), {warnings} warning(s)"),
            (true, _) => format!(
                "Verdict: the GPU check FAILED with {errors} error(s) and {warnings} warning(s), not \
                 enforced (COMFY_INIT_GPU={policy}): ComfyUI starts anyway"
            ),
        }
    }
}

/// COMFY_INIT_GPU_SELECT names no usable card: what it says, and the cards there are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={select} names no usable GPU here: {}", Cards(cards))]
pub struct NoSuchGpu {
    /// COMFY_INIT_GPU_SELECT or COMFY_INIT_INSTANCES.
    pub variable: &'static str,
    pub select: Select,
    pub cards: Vec<Card>,
}

/// A usable card, as a refused selection lists it: `0 (NVIDIA GeForce RTX 4090, GPU-...)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    pub index: u32,
    pub name: String,
    pub uuid: Option<String>,
}

impl std::fmt::Display for Card {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {})", self.index, self.name, self.uuid.as_deref().unwrap_or("no UUID"))
    }
}

/// The cards, `; `-separated, or that there are none.
struct Cards<'a>(&'a [Card]);

impl std::fmt::Display for Cards<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no GPU is visible");
        }
        for (i, card) in self.0.iter().enumerate() {
            write!(f, "{}{card}", if i == 0 { "" } else { "; " })?;
        }
        Ok(())
    }
}

/// COMFY_INIT_GPU_SELECT resolved against the cards found: (their indices, the value for
/// CUDA_VISIBLE_DEVICES: the UUID, else the index). Ok(None): no selection. Err: a refusal naming
/// the cards there are.
pub fn select(report: &GpuReport, settings: &GpuSettings) -> Result<Option<(Vec<u32>, String)>, NoSuchGpu> {
    let Some(select) = &settings.select else { return Ok(None) };
    let usable: Vec<&GpuInfo> = report.gpus.iter().filter(|g| !g.is_lost()).collect();
    let chosen = match select {
        Select::Index(i) => usable.iter().find(|g| g.index == *i).copied(),
        Select::Uuid(u) => usable.iter().find(|g| g.uuid.as_deref() == Some(u)).copied(),
        Select::Best => {
            let covered: Vec<&GpuInfo> = usable
                .iter()
                .filter(|g| torch::coverage(report.torch.as_ref(), g.compute_capability) != Coverage::NotCovered)
                .copied()
                .collect();
            let pool = if covered.is_empty() { &usable } else { &covered };
            pool.iter().max_by_key(|g| (g.vram_free_bytes.unwrap_or(0), std::cmp::Reverse(g.index))).copied()
        }
    };
    match chosen {
        Some(g) => Ok(Some((vec![g.index], g.uuid.clone().unwrap_or_else(|| g.index.to_string())))),
        None => {
            let card = |g: &&GpuInfo| Card { index: g.index, name: g.display_name().to_string(), uuid: g.uuid.clone() };
            Err(NoSuchGpu {
                variable: "COMFY_INIT_GPU_SELECT",
                select: select.clone(),
                cards: usable.iter().map(card).collect(),
            })
        }
    }
}

/// The cards that get a ComfyUI, and those left out with why.
pub type InstanceCards = (Vec<Card>, Vec<(Card, String)>);

/// The cards of `COMFY_INIT_INSTANCES` (issue 26), one ComfyUI each, and the cards left out with
/// why. `per-gpu`: every card that is not lost, is an RTX card, has kernels in the installed
/// PyTorch (unknown counts as yes: the verdict says so) and has `COMFY_INIT_MIN_VRAM_GB`. A list:
/// the cards named, in that order, each present (the verdict judges them). Err: a card named is
/// not here.
pub fn instance_cards(report: &GpuReport, settings: &GpuSettings) -> Result<InstanceCards, NoSuchGpu> {
    let card = |g: &GpuInfo| Card { index: g.index, name: g.display_name().to_string(), uuid: g.uuid.clone() };
    let present: Vec<&GpuInfo> = report.gpus.iter().filter(|g| !g.is_lost()).collect();
    let names = |select: &Select| NoSuchGpu {
        variable: "COMFY_INIT_INSTANCES",
        select: select.clone(),
        cards: present.iter().map(|g| card(g)).collect(),
    };
    let list = match &settings.instances {
        Instances::One => return Ok((Vec::new(), Vec::new())),
        Instances::Cards(list) => list,
        Instances::PerGpu => {
            let (mut usable, mut left_out) = (Vec::new(), Vec::new());
            for g in &report.gpus {
                match unusable_for_an_instance(report, settings, g) {
                    None => usable.push(card(g)),
                    Some(why) => left_out.push((card(g), why)),
                }
            }
            return Ok((usable, left_out));
        }
    };
    let mut cards = Vec::new();
    for select in list {
        let found = present.iter().find(|g| match select {
            Select::Index(i) => g.index == *i,
            Select::Uuid(u) => g.uuid.as_deref() == Some(u),
            Select::Best => false,
        });
        match found {
            Some(g) if !cards.iter().any(|c: &Card| c.index == g.index) => cards.push(card(g)),
            Some(_) => {}
            None => return Err(names(select)),
        }
    }
    Ok((cards, Vec::new()))
}

/// Why `per-gpu` gives this card no ComfyUI (None: it gets one).
fn unusable_for_an_instance(report: &GpuReport, settings: &GpuSettings, g: &GpuInfo) -> Option<String> {
    if g.is_lost() {
        return Some("it has fallen off the bus (NVML: GPU lost)".into());
    }
    if !is_rtx(g) {
        return Some("it is not an RTX card".into());
    }
    if torch::coverage(report.torch.as_ref(), g.compute_capability) == Coverage::NotCovered {
        let cc = g.compute_capability_string().unwrap_or_else(|| "?".into());
        return Some(format!("the installed PyTorch has no kernels for its compute capability {cc}"));
    }
    match (settings.min_vram_gb, g.vram_total_bytes) {
        (Some(min), Some(total)) if gib(total) < min * (1.0 - VRAM_TOLERANCE) => {
            Some(format!("{:.1} GiB of VRAM, under COMFY_INIT_MIN_VRAM_GB={min}", gib(total)))
        }
        _ => None,
    }
}

/// The PyTorch ComfyUI will import, against the cards it will use: the "no kernel image is
/// available" failure is caught here, before ComfyUI starts, not at the first prompt.
fn check_torch(found: Option<&Found>, usable: &[&GpuInfo], findings: &mut Vec<Finding>) {
    let Some(found) = found else { return };
    let mut add = |severity, code, message: String, advice: String| {
        findings.push(Finding { severity, code, message, advice });
    };
    let t = match found {
        Found::Torch(t) => t,
        Found::Missing { python } => {
            return add(
                Severity::Warning,
                "torch_missing",
                format!("{python} has no PyTorch: ComfyUI cannot start without it"),
                "install PyTorch into ComfyUI's Python (pip install torch torchvision torchaudio \
                 --index-url https://download.pytorch.org/whl/cu128)"
                    .into(),
            )
        }
        Found::Unknown(why) => {
            return add(
                Severity::Warning,
                "torch_unknown",
                format!("{why}: PyTorch not checked against the GPU"),
                String::new(),
            )
        }
    };
    let Some(first) = usable.first() else { return };
    let first_cc = first.compute_capability.unwrap_or((8, 6));
    if t.hip.is_some() {
        return add(
            Severity::Error,
            "torch_rocm",
            format!("PyTorch {} is a ROCm (AMD) build: it cannot use an NVIDIA GPU", t.version),
            torch::advice_for(first_cc),
        );
    }
    let Some(cuda) = &t.cuda else {
        return add(
            Severity::Error,
            "torch_cpu_only",
            format!("PyTorch {} is a CPU-only build: ComfyUI would run on the CPU and leave the GPU idle", t.version),
            torch::advice_for(first_cc),
        );
    };
    for g in usable {
        findings.extend(card_finding(found, t, cuda, g));
    }
}

/// Whether this PyTorch build has kernels for this card: an error when not, a warning when the
/// build is not in the table.
fn card_finding(found: &Found, t: &Torch, cuda: &str, g: &GpuInfo) -> Option<Finding> {
    let cc = g.compute_capability?;
    let card = format!("GPU {} ({}, compute capability {}.{})", g.index, g.display_name(), cc.0, cc.1);
    match torch::coverage(Some(found), Some(cc)) {
        Coverage::Covered => None,
        Coverage::NotCovered => Some(Finding {
            severity: Severity::Error,
            code: "torch_no_kernels",
            message: format!(
                "PyTorch {} (CUDA {cuda}) has no kernels for {card}: every prompt would fail with \
                 'no kernel image is available for execution on the device'",
                t.version
            ),
            advice: torch::advice_for(cc),
        }),
        Coverage::Unknown => Some(Finding {
            severity: Severity::Warning,
            code: "torch_build_unknown",
            message: format!(
                "PyTorch {} (CUDA {cuda}) is not in comfy-init's table of PyTorch builds: whether it \
                 has kernels for {card} is not known",
                t.version
            ),
            advice: format!("if ComfyUI fails with 'no kernel image is available': {}", torch::advice_for(cc)),
        }),
    }
}

/// Brands that NVML itself calls RTX.
const RTX_BRANDS: &[&str] = &["GeForceRTX", "QuadroRTX", "NvidiaRTX", "TitanRTX"];

/// An RTX card: the name says RTX ("NVIDIA GeForce RTX 3090", "NVIDIA RTX A6000", "Quadro RTX
/// 4000") or NVML's brand is an RTX brand, and the compute capability (when known) is >= 7.5.
pub fn is_rtx(g: &GpuInfo) -> bool {
    let by_name = g.name.as_deref().is_some_and(|n| n.to_ascii_uppercase().contains("RTX"));
    let by_brand = g.brand.as_deref().is_some_and(|b| RTX_BRANDS.contains(&b));
    let cc_ok = g.compute_capability.is_none_or(|cc| cc >= (7, 5));
    (by_name || by_brand) && cc_ok
}

/// Minimum Linux driver for each CUDA toolkit release (CUDA release notes, "CUDA Toolkit and
/// Corresponding Driver Versions").
const CUDA_TOOLKIT_DRIVERS: &[(u32, u32, &str)] = &[
    (11, 8, "520.61.05"),
    (12, 0, "525.60.13"),
    (12, 1, "530.30.02"),
    (12, 2, "535.54.03"),
    (12, 3, "545.23.06"),
    (12, 4, "550.54.14"),
    (12, 5, "555.42.02"),
    (12, 6, "560.28.03"),
    (12, 8, "570.26"),
    (12, 9, "575.51.03"),
    (13, 0, "580.65.06"),
];

/// Minimum driver for any release of a CUDA major version (minor-version compatibility).
const CUDA_MAJOR_DRIVERS: &[(u32, &str)] = &[(11, "450.80.02"), (12, "525.60.13"), (13, "580.65.06")];

/// The driver a CUDA version needs: exact table entry, else the next known release of the same
/// major (conservative). `None` when the version is newer than the table.
pub fn driver_for_cuda(v: CudaVersion) -> Option<&'static str> {
    CUDA_TOOLKIT_DRIVERS.iter().find(|(maj, min, _)| *maj == v.major && *min >= v.minor).map(|(_, _, d)| *d)
}

/// The driver any release of a CUDA major needs.
pub fn driver_for_cuda_major(major: u32) -> Option<&'static str> {
    CUDA_MAJOR_DRIVERS.iter().find(|(m, _)| *m == major).map(|(_, d)| *d)
}

/// "570 or newer (>= 570.26)" from "570.26".
fn driver_phrase(full: &str) -> String {
    let branch = full.split('.').next().unwrap_or(full);
    format!("{branch} or newer (>= {full})")
}

const ADVICE_CONTAINER_GPU: &str = "start the container with GPU access: `docker run --gpus all` \
(compose: `deploy.resources.reservations.devices` with `capabilities: [gpu]`) on a host with the \
NVIDIA driver and the NVIDIA Container Toolkit installed; NVIDIA_DRIVER_CAPABILITIES must include \
`utility` (e.g. `compute,utility` or `all`), otherwise libnvidia-ml is not mounted";

/// The advice table: what each probe failure means and what to do about it.
/// Returns (code, message, advice). A message table: one arm per kind of failure, each holding
/// its whole text.
pub fn describe(err: &ProbeError) -> (&'static str, String, String) {
    match err {
        ProbeError::LibraryMissing { requested: Some(path), .. } => (
            "library_missing",
            format!("COMFY_INIT_NVML_LIB={path}: no such file, NVML cannot be loaded"),
            format!("unset COMFY_INIT_NVML_LIB or point it at the host's libnvidia-ml.so.1; {ADVICE_CONTAINER_GPU}"),
        ),
        ProbeError::LibraryMissing { requested: None, tried } => (
            "library_missing",
            format!(
                "NVML library libnvidia-ml.so.1 not found (looked in the loader path and {})",
                folders(tried).join(", ")
            ),
            ADVICE_CONTAINER_GPU.to_string(),
        ),
        ProbeError::LibraryInvalid { path, detail, overridden } => (
            "library_invalid",
            format!("{path} is not a loadable NVML library: {detail}"),
            if *overridden {
                "point COMFY_INIT_NVML_LIB at the host's libnvidia-ml.so.1 (mounted by the NVIDIA \
                 Container Toolkit) or unset it"
                    .to_string()
            } else {
                "the file is damaged or built for another architecture; do not ship driver libraries \
                 in the image, let the NVIDIA Container Toolkit mount the host's (`--gpus all`)"
                    .to_string()
            },
        ),
        ProbeError::SymbolsMissing { path, symbols } => (
            "library_incomplete",
            format!("{path} lacks the NVML function(s) {}", symbols.join(", ")),
            "this is not the driver's libnvidia-ml.so.1 (a stub or a very old driver): use the \
             library the NVIDIA Container Toolkit mounts (`--gpus all`) and do not put a stub \
             (e.g. CUDA's lib64/stubs) on the library path"
                .to_string(),
        ),
        ProbeError::Nvml { stage, failure, detail } => describe_nvml(stage, failure, detail),
        ProbeError::Helper { path, detail, missing: true } => (
            "nvml_helper_missing",
            format!("the GPU check cannot run: {path} {detail}"),
            "comfy-init-nvml is part of comfy-init (it loads the NVIDIA library, which the \
             statically linked comfy-init cannot): install both files of one build side by side \
             (e.g. /usr/local/bin), or set COMFY_INIT_NVML_HELPER to its path; \
             COMFY_INIT_GPU=off skips the check"
                .to_string(),
        ),
        ProbeError::Helper { path, detail, missing: false } => (
            "nvml_helper_failed",
            format!("the GPU check failed: {path} {detail}"),
            "a hang or crash inside NVML is the driver's: run `nvidia-smi` on the host (a hung \
             `nvidia-smi` means the driver needs a reset or a reboot) and enable persistence mode \
             (`nvidia-smi -pm 1`); a version mismatch: install comfy-init and comfy-init-nvml from \
             one build; RUST_LOG=debug shows what the helper did"
                .to_string(),
        ),
    }
}

/// The folders of the paths tried, each once, in order.
fn folders(tried: &[String]) -> Vec<&str> {
    let mut dirs: Vec<&str> = Vec::new();
    for (dir, _) in tried.iter().filter_map(|t| t.rsplit_once('/')) {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// What the probe was doing at `stage` ("opening GPU 1"), and which GPU that concerns ("GPU 1",
/// or "a GPU" before any is known), in words.
fn stage_words(stage: &Stage) -> (String, String) {
    let at = match stage {
        Stage::Init => "initialising NVML".to_string(),
        Stage::DeviceCount => "counting GPUs".to_string(),
        Stage::Handle(i) => format!("opening GPU {i}"),
        Stage::Query { index, what } => format!("reading the {what} of GPU {index}"),
    };
    let gpu = match stage {
        Stage::Handle(i) | Stage::Query { index: i, .. } => format!("GPU {i}"),
        _ => "a GPU".to_string(),
    };
    (at, gpu)
}

/// [`describe`] for an NVML error: the same message table, one arm per NVML failure (and stage,
/// where the stage changes what it means), each holding its whole text. Longer than 60 lines by
/// nature and read best in one piece: issue 23 exempts tables from the 60-line limit.
fn describe_nvml(stage: &Stage, failure: &NvmlFailure, detail: &str) -> (&'static str, String, String) {
    let (at, gpu) = stage_words(stage);
    match (stage, failure) {
        (_, NvmlFailure::DriverNotLoaded) => (
            "driver_not_loaded",
            format!("NVIDIA driver is not loaded (NVML: {detail})"),
            "install the NVIDIA driver on the host and check that `nvidia-smi` works there \
             (WSL2: install the Windows NVIDIA driver); then recreate the container"
                .to_string(),
        ),
        (_, NvmlFailure::LibRmVersionMismatch) => (
            "driver_version_mismatch",
            format!("driver/library version mismatch while {at} (NVML: {detail})"),
            "the host's NVIDIA kernel module and libnvidia-ml differ, usually after a driver \
             upgrade without reboot: reboot the host. Do not ship driver libraries (libnvidia-ml, \
             libcuda) in the image; the NVIDIA Container Toolkit mounts the matching ones"
                .to_string(),
        ),
        (Stage::Init, NvmlFailure::Unknown) => (
            "lost_device_access",
            format!("NVML failed with an unknown error while initialising (NVML: {detail})"),
            "in a container that worked before this means it lost access to /dev/nvidia*, \
             typically after the host ran `systemctl daemon-reload` (NVIDIA/nvidia-container-toolkit#48): \
             recreate the container (`docker compose up -d --force-recreate`); to prevent it, use \
             CDI or pass the /dev/nvidia* devices explicitly"
                .to_string(),
        ),
        (_, NvmlFailure::GpuLost) => (
            "gpu_lost",
            format!("{gpu} has fallen off the bus (NVML: GPU is lost, kernel log: Xid 79) while {at}"),
            "reboot the host; if it happens again check the power supply, cooling and PCIe seating \
             (`dmesg | grep -i xid` on the host)"
                .to_string(),
        ),
        (Stage::Init, NvmlFailure::NoPermission) => (
            "no_permission",
            format!("NVML has no permission to talk to the driver (NVML: {detail})"),
            "the container cannot open /dev/nvidiactl or /dev/nvidia*: start it with `--gpus all` \
             (mounting the libraries is not enough), check the device permissions for the container \
             user, and with rootless Docker/Podman use CDI (`--device nvidia.com/gpu=all`)"
                .to_string(),
        ),
        (_, NvmlFailure::OperatingSystem) => (
            "blocked_by_cgroup",
            format!("access to {gpu} is blocked by the operating system/cgroups while {at}"),
            "the container lost its device cgroup access (e.g. after `systemctl daemon-reload` on \
             the host): recreate the container"
                .to_string(),
        ),
        (_, NvmlFailure::ResetRequired) => (
            "gpu_reset_required",
            format!("{gpu} needs a reset while {at}"),
            "reset the GPU on the host (`nvidia-smi -r`) or reboot the host".to_string(),
        ),
        (_, NvmlFailure::InsufficientPower) => (
            "gpu_insufficient_power",
            format!("{gpu}'s external power cables are not properly attached"),
            "check the GPU's power connectors and power supply on the host".to_string(),
        ),
        (_, NvmlFailure::SymbolMissing) => (
            "library_incomplete",
            format!("the NVML library lacks a function needed for {at}: {detail}"),
            "use the driver's libnvidia-ml.so.1 mounted by the NVIDIA Container Toolkit (`--gpus all`)".to_string(),
        ),
        (_, NvmlFailure::LibraryNotFound) => (
            "library_missing",
            format!("a library NVML needs is missing while {at}: {detail}"),
            ADVICE_CONTAINER_GPU.to_string(),
        ),
        (Stage::Handle(_), NvmlFailure::NoPermission) => (
            "gpu_no_permission",
            format!("no permission to open {gpu}"),
            "the container may not use this GPU: check NVIDIA_VISIBLE_DEVICES / `--gpus` and the \
             device permissions"
                .to_string(),
        ),
        _ => (
            "nvml_error",
            format!("NVML error while {at}: {detail}"),
            "check that `nvidia-smi` works on the host and in the container".to_string(),
        ),
    }
}

fn finding(severity: Severity, err: &ProbeError) -> Finding {
    let (code, message, advice) = describe(err);
    Finding { severity, code, message, advice }
}

/// The fraction below the minimum that still passes: NVML reports a little less than the nominal
/// size (a 24 GB RTX 4090 shows 23.99 GiB).
const VRAM_TOLERANCE: f64 = 0.01;

/// Evaluates what the probe found against the settings. Pure.
pub fn evaluate(report: &GpuReport, settings: &GpuSettings) -> Verdict {
    let mut findings = Vec::new();
    if let Some(err) = &report.fatal {
        findings.push(finding(Severity::Error, err));
    } else {
        evaluate_devices(report, settings, &mut findings);
    }
    let ok = match settings.policy {
        GpuPolicy::Require => !findings.iter().any(|f| f.severity == Severity::Error),
        GpuPolicy::Warn | GpuPolicy::Off => true,
    };
    Verdict { policy: settings.policy, findings, ok }
}

fn evaluate_devices(report: &GpuReport, settings: &GpuSettings, findings: &mut Vec<Finding>) {
    // COMFY_INIT_GPU_SELECT: only the chosen cards are judged.
    let chosen = |g: &&GpuInfo| report.selected.as_ref().is_none_or(|s| s.contains(&g.index));
    let usable: Vec<&GpuInfo> = report.gpus.iter().filter(|g| !g.is_lost()).filter(chosen).collect();
    if let Err(why) = select(report, settings) {
        findings.push(Finding {
            severity: Severity::Error,
            code: "select_invalid",
            message: why.to_string(),
            advice: String::new(),
        });
    }
    check_torch(report.torch.as_ref(), &usable, findings);
    check_torch_driver(report, findings);

    if report.device_count == Some(0) {
        let seen = match report.visible_devices.as_deref() {
            Some(v) => format!("NVIDIA_VISIBLE_DEVICES={v}"),
            None => "NVIDIA_VISIBLE_DEVICES is not set".to_string(),
        };
        findings.push(Finding {
            severity: Severity::Error,
            code: "no_devices",
            message: format!("NVML works but no GPU is visible in the container ({seen})"),
            advice: "set NVIDIA_VISIBLE_DEVICES=all (or valid GPU indexes/UUIDs; `void` and `none` \
                     hide every GPU) and start the container with `--gpus all`"
                .to_string(),
        });
    }

    for err in &report.device_errors {
        let severity = match err {
            ProbeError::Nvml { failure: NvmlFailure::GpuLost, .. } => Severity::Error,
            _ if usable.is_empty() => Severity::Error,
            _ => Severity::Warning,
        };
        findings.push(finding(severity, err));
    }

    for g in &report.gpus {
        for p in &g.problems {
            let severity = match p {
                ProbeError::Nvml { failure: NvmlFailure::GpuLost, .. } => Severity::Error,
                _ => Severity::Warning,
            };
            findings.push(finding(severity, p));
        }
    }

    check_vram(&usable, settings, findings);
    check_rtx(&usable, findings);
    check_cuda(report, &usable, settings, findings);
}

fn check_vram(usable: &[&GpuInfo], settings: &GpuSettings, findings: &mut Vec<Finding>) {
    let Some(min) = settings.min_vram_gb else {
        return;
    };
    if usable.is_empty() {
        return;
    }
    let known: Vec<(&GpuInfo, f64)> = usable.iter().filter_map(|g| g.vram_total_bytes.map(|b| (*g, gib(b)))).collect();
    if known.is_empty() {
        findings.push(Finding {
            severity: Severity::Warning,
            code: "vram_unknown",
            message: format!("VRAM could not be read, COMFY_INIT_MIN_VRAM_GB={min} not checked"),
            advice: "NVML cannot report memory under MIG or for some vGPU/WSL2 setups; check \
                     `nvidia-smi` on the host"
                .to_string(),
        });
        return;
    }
    let meets = |v: f64| v >= min * (1.0 - VRAM_TOLERANCE);
    let any_meets = known.iter().any(|(_, v)| meets(*v));
    for (g, v) in &known {
        if meets(*v) {
            continue;
        }
        let (severity, advice) = if any_meets {
            (
                Severity::Warning,
                "another GPU is large enough: make ComfyUI use it (`--cuda-device N` or \
                 NVIDIA_VISIBLE_DEVICES)"
                    .to_string(),
            )
        } else {
            (
                Severity::Error,
                format!(
                    "use a GPU with at least {min} GiB VRAM, lower COMFY_INIT_MIN_VRAM_GB, or start \
                     ComfyUI with --lowvram/--novram"
                ),
            )
        };
        findings.push(Finding {
            severity,
            code: "vram_too_small",
            message: format!(
                "GPU {} ({}) has {:.2} GiB VRAM, less than COMFY_INIT_MIN_VRAM_GB={min}",
                g.index,
                g.display_name(),
                v
            ),
            advice,
        });
    }
}

fn check_rtx(usable: &[&GpuInfo], findings: &mut Vec<Finding>) {
    for g in usable {
        if g.mig_mode == Some(true) {
            findings.push(Finding {
                severity: Severity::Info,
                code: "mig_enabled",
                message: format!("GPU {} ({}) is in MIG mode", g.index, g.display_name()),
                advice: "ComfyUI sees only the MIG instance(s) given to the container, not the whole \
                         GPU; NVML may not report its memory"
                    .to_string(),
            });
        }
        if is_rtx(g) {
            continue;
        }
        let name = g.display_name();
        let (message, advice) = if name == "NVIDIA Graphics Device" {
            (
                format!("GPU {} is not known to the host driver by name (\"{name}\")", g.index),
                "the card is newer than the driver: update the host NVIDIA driver".to_string(),
            )
        } else {
            let cc = g.compute_capability_string().unwrap_or_else(|| "unknown".into());
            (
                format!("GPU {} ({name}, compute capability {cc}) is not an RTX card", g.index),
                "ComfyUI still runs, but this image is tuned for RTX GPUs (compute capability >= 7.5, \
                 tensor cores); expect lower speed or unsupported features"
                    .to_string(),
            )
        };
        findings.push(Finding { severity: Severity::Warning, code: "not_rtx", message, advice });
    }
}

fn check_cuda(report: &GpuReport, usable: &[&GpuInfo], settings: &GpuSettings, findings: &mut Vec<Finding>) {
    let Some(raw) = settings.image_cuda_version.as_deref() else {
        return;
    };
    let Some(image) = CudaVersion::parse(raw) else {
        findings.push(Finding {
            severity: Severity::Warning,
            code: "image_cuda_version_invalid",
            message: format!("CUDA_VERSION={raw} is not a version, not compared with the driver"),
            advice: "set CUDA_VERSION like 12.8.1 (nvidia/cuda images do this)".to_string(),
        });
        return;
    };

    check_blackwell_cuda(usable, image, raw, findings);
    check_driver_for_image(report, image, raw, findings);
}

/// RTX 50-series (Blackwell, compute capability 12.0) needs CUDA 12.8+.
fn check_blackwell_cuda(usable: &[&GpuInfo], image: CudaVersion, raw: &str, findings: &mut Vec<Finding>) {
    for g in usable {
        if g.compute_capability.is_some_and(|cc| cc.0 >= 12) && image < (CudaVersion { major: 12, minor: 8 }) {
            findings.push(Finding {
                severity: Severity::Warning,
                code: "gpu_needs_newer_cuda",
                message: format!(
                    "GPU {} ({}) has compute capability {}, which needs CUDA 12.8 or newer; the image has CUDA {raw}",
                    g.index,
                    g.display_name(),
                    g.compute_capability_string().unwrap_or_default()
                ),
                advice: "use an image with CUDA >= 12.8 and PyTorch cu128 (or newer) wheels".to_string(),
            });
        }
    }
}

/// The host driver must support the image's CUDA: an older major cannot run it at all, an older
/// minor mostly can (minor-version compatibility).
fn check_driver_for_image(report: &GpuReport, image: CudaVersion, raw: &str, findings: &mut Vec<Finding>) {
    let Some(driver) = report.cuda_driver_version else {
        findings.push(Finding {
            severity: Severity::Warning,
            code: "driver_cuda_version_unknown",
            message: format!("the driver's CUDA version could not be read, image CUDA {raw} not checked"),
            advice: "check `nvidia-smi` on the host (the top line shows the CUDA version)".to_string(),
        });
        return;
    };
    let subject = NeedsCuda {
        version: image,
        needs: format!("the image needs CUDA {image} (CUDA_VERSION={raw})"),
        consequence: "",
        instead: format!("use an image built for CUDA {}.x", driver.major),
        code: "driver_too_old",
        older_minor: Some((
            format!("the image was built for CUDA {image} (CUDA_VERSION={raw})"),
            "driver_older_than_image_cuda",
        )),
    };
    findings.extend(check_driver_supports(report, driver, &subject));
}

/// The PyTorch ComfyUI imports brings its own CUDA runtime, which the host driver must run too:
/// a cu130+ wheel (PyPI's default torch is one) on a CUDA 12 driver sees no GPU at all
/// (`torch.cuda.is_available()` is False) and ComfyUI fails at start, whatever the image says.
fn check_torch_driver(report: &GpuReport, findings: &mut Vec<Finding>) {
    let Some(Found::Torch(t)) = &report.torch else { return };
    let (Some(built), Some(driver)) = (t.cuda.as_deref().and_then(CudaVersion::parse), report.cuda_driver_version)
    else {
        return; // a CPU or ROCm build is judged by check_torch; an unknown driver, by check_cuda
    };
    let wheel = match driver.major {
        11 => "cu118",
        12 => "cu128",
        _ => "cu130",
    };
    let subject = NeedsCuda {
        version: built,
        needs: format!("PyTorch {} needs CUDA {built}", t.version),
        consequence: ": it would see no GPU (torch.cuda.is_available() is False) and ComfyUI would not start",
        instead: format!(
            "install a PyTorch built for CUDA {}.x (pip install --force-reinstall torch torchvision torchaudio \
             --index-url https://download.pytorch.org/whl/{wheel})",
            driver.major
        ),
        code: "driver_too_old_for_torch",
        // An older minor runs (minor-version compatibility), and the image check already says it.
        older_minor: None,
    };
    findings.extend(check_driver_supports(report, driver, &subject));
}

/// Something that needs a CUDA version from the driver (the image, the PyTorch build), in words.
struct NeedsCuda {
    version: CudaVersion,
    needs: String,
    /// What an older major means, after the facts.
    consequence: &'static str,
    /// The other way out, besides a newer driver.
    instead: String,
    /// The error's code, for a driver of an older CUDA major.
    code: &'static str,
    /// For a driver of the same major but an older minor: the warning's subject and code (None:
    /// no finding).
    older_minor: Option<(String, &'static str)>,
}

fn check_driver_supports(report: &GpuReport, driver: CudaVersion, subject: &NeedsCuda) -> Option<Finding> {
    let needed = subject.version;
    if driver >= needed {
        return None;
    }
    let driver_name = report.driver_version.as_deref().unwrap_or("of unknown version");
    if driver.major < needed.major {
        let need = driver_for_cuda_major(needed.major)
            .map(driver_phrase)
            .unwrap_or_else(|| format!("one that supports CUDA {}.x", needed.major));
        return Some(Finding {
            severity: Severity::Error,
            code: subject.code,
            message: format!(
                "{} but the host driver {driver_name} supports CUDA {driver} at most{}",
                subject.needs, subject.consequence
            ),
            advice: format!("update the host NVIDIA driver to {need}, or {}", subject.instead),
        });
    }
    let (built, code) = subject.older_minor.as_ref()?;
    let need = driver_for_cuda(needed).map(driver_phrase).unwrap_or_else(|| format!("one that supports CUDA {needed}"));
    Some(Finding {
        severity: Severity::Warning,
        code,
        message: format!("{built} but the host driver {driver_name} supports CUDA {driver}"),
        advice: format!(
            "update the host NVIDIA driver to {need}. CUDA minor-version compatibility lets most \
             {}.x programs run on any driver >= {}, but PTX JIT and new GPUs need the matching driver",
            needed.major,
            driver_for_cuda_major(needed.major).unwrap_or("the major's minimum")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    fn settings(policy: GpuPolicy) -> GpuSettings {
        GpuSettings { policy, ..GpuSettings::default() }
    }

    fn gpu(index: u32, name: &str, brand: &str, vram_gib: f64, cc: (i32, i32)) -> GpuInfo {
        GpuInfo {
            index,
            name: Some(name.into()),
            brand: Some(brand.into()),
            vram_total_bytes: Some((vram_gib * GIB as f64) as u64),
            vram_free_bytes: Some((vram_gib * 0.9 * GIB as f64) as u64),
            compute_capability: Some(cc),
            uuid: Some(format!("GPU-{index}")),
            ..GpuInfo::default()
        }
    }

    fn healthy(gpus: Vec<GpuInfo>) -> GpuReport {
        GpuReport {
            library: Some("libnvidia-ml.so.1".into()),
            driver_version: Some("550.54.14".into()),
            cuda_driver_version: Some(CudaVersion { major: 12, minor: 4 }),
            cuda_driver_version_source: Some("v2".into()),
            device_count: Some(gpus.len() as u32),
            gpus,
            ..GpuReport::default()
        }
    }

    fn rtx3090() -> GpuInfo {
        gpu(0, "NVIDIA GeForce RTX 3090", "GeForce", 24.0, (8, 6))
    }

    fn codes(v: &Verdict) -> Vec<&'static str> {
        v.findings.iter().map(|f| f.code).collect()
    }

    fn fatal(err: ProbeError) -> GpuReport {
        GpuReport { fatal: Some(err), ..GpuReport::default() }
    }

    fn init_failure(failure: NvmlFailure) -> GpuReport {
        fatal(ProbeError::Nvml { stage: Stage::Init, failure, detail: "x".into() })
    }

    #[test]
    fn healthy_rtx_passes_every_policy() {
        for p in [GpuPolicy::Require, GpuPolicy::Warn, GpuPolicy::Off] {
            let v = evaluate(&healthy(vec![rtx3090()]), &settings(p));
            assert!(v.ok, "{p:?}");
            assert!(v.findings.is_empty(), "{:?}", v.findings);
        }
    }

    #[test]
    fn per_gpu_leaves_out_each_card_that_cannot_run_a_comfyui_and_says_why() {
        let cards = vec![
            gpu(0, "NVIDIA GeForce RTX 4090", "GeForce", 24.0, (8, 9)),
            gpu(1, "NVIDIA GeForce RTX 3060", "GeForce", 12.0, (8, 6)),
            gpu(2, "Tesla T4", "Tesla", 16.0, (7, 5)),
            gpu(3, "NVIDIA GeForce RTX 3090", "GeForce", 24.0, (8, 6)),
        ];
        let s = GpuSettings { instances: Instances::PerGpu, min_vram_gb: Some(16.0), ..GpuSettings::default() };
        let (usable, left_out) = instance_cards(&healthy(cards.clone()), &s).unwrap();
        assert_eq!(usable.iter().map(|c| c.index).collect::<Vec<_>>(), [0, 3]);
        let why: Vec<_> = left_out.iter().map(|(c, why)| format!("{}: {why}", c.index)).collect();
        assert_eq!(why, ["1: 12.0 GiB of VRAM, under COMFY_INIT_MIN_VRAM_GB=16", "2: it is not an RTX card"]);
        let listed =
            GpuSettings { instances: Instances::Cards(vec![Select::Index(3), Select::Uuid("GPU-1".into())]), ..s };
        let (usable, _) = instance_cards(&healthy(cards.clone()), &listed).unwrap();
        assert_eq!(usable.iter().map(|c| c.index).collect::<Vec<_>>(), [3, 1], "a list keeps its order");
        let missing = GpuSettings { instances: Instances::Cards(vec![Select::Index(7)]), ..GpuSettings::default() };
        let err = instance_cards(&healthy(cards), &missing).unwrap_err().to_string();
        assert!(
            err.contains("COMFY_INIT_INSTANCES=7 names no usable GPU here")
                && err.contains("3 (NVIDIA GeForce RTX 3090, GPU-3)"),
            "{err}"
        );
        assert_eq!(
            Instances::parse("0,GPU-x"),
            Some(Instances::Cards(vec![Select::Index(0), Select::Uuid("GPU-x".into())]))
        );
        assert_eq!(Instances::parse("best"), None);
        assert_eq!(Instances::parse("per-gpu"), Some(Instances::PerGpu));
    }

    #[test]
    fn rtx_cards_are_told_by_name_or_brand() {
        assert!(is_rtx(&rtx3090()));
        assert!(is_rtx(&gpu(0, "NVIDIA RTX A6000", "NvidiaRTX", 48.0, (8, 6))));
        assert!(is_rtx(&gpu(0, "Quadro RTX 4000", "QuadroRTX", 8.0, (7, 5))));
        assert!(is_rtx(&gpu(0, "NVIDIA GeForce RTX 5090", "GeForce", 32.0, (12, 0))));
        // brand alone
        assert!(is_rtx(&gpu(0, "NVIDIA Graphics Device", "GeForceRTX", 16.0, (12, 0))));
        assert!(!is_rtx(&gpu(0, "Tesla T4", "Tesla", 16.0, (7, 5))));
        assert!(!is_rtx(&gpu(0, "NVIDIA GeForce GTX 1080", "GeForce", 8.0, (6, 1))));
        // a name saying RTX with a pre-Turing compute capability is not believed
        assert!(!is_rtx(&gpu(0, "RTX fake", "GeForce", 8.0, (6, 1))));
        let mut unknown_cc = rtx3090();
        unknown_cc.compute_capability = None;
        assert!(is_rtx(&unknown_cc));
    }

    #[test]
    fn non_rtx_is_a_warning_only() {
        let r = healthy(vec![gpu(0, "Tesla T4", "Tesla", 16.0, (7, 5))]);
        let v = evaluate(&r, &settings(GpuPolicy::Require));
        assert!(v.ok);
        assert_eq!(codes(&v), vec!["not_rtx"]);
        assert_eq!(v.findings[0].severity, Severity::Warning);
        assert!(v.findings[0].message.contains("Tesla T4"));
    }

    #[test]
    fn unknown_new_card_says_update_driver() {
        let r = healthy(vec![gpu(0, "NVIDIA Graphics Device", "GeForce", 16.0, (12, 0))]);
        let v = evaluate(&r, &settings(GpuPolicy::Require));
        assert!(v.ok);
        assert!(v.findings[0].advice.contains("update the host NVIDIA driver"));
    }

    #[test]
    fn each_init_failure_has_its_own_advice() {
        let cases = [
            (NvmlFailure::DriverNotLoaded, "driver_not_loaded", "nvidia-smi"),
            (NvmlFailure::LibRmVersionMismatch, "driver_version_mismatch", "reboot the host"),
            (NvmlFailure::Unknown, "lost_device_access", "recreate the container"),
            (NvmlFailure::NoPermission, "no_permission", "--gpus all"),
            (NvmlFailure::GpuLost, "gpu_lost", "reboot the host"),
        ];
        for (failure, code, phrase) in cases {
            let r = init_failure(failure.clone());
            let v = evaluate(&r, &settings(GpuPolicy::Require));
            assert!(!v.ok, "{failure:?}");
            assert_eq!(codes(&v), vec![code]);
            assert!(v.findings[0].advice.contains(phrase), "{failure:?}: {}", v.findings[0].advice);
            assert!(v.summary().contains(phrase), "{}", v.summary());
            assert!(evaluate(&r, &settings(GpuPolicy::Warn)).ok);
            assert!(evaluate(&r, &settings(GpuPolicy::Off)).ok);
        }
        let mismatch = describe(&ProbeError::Nvml {
            stage: Stage::Init,
            failure: NvmlFailure::LibRmVersionMismatch,
            detail: String::new(),
        });
        assert!(mismatch.2.contains("Do not ship driver libraries"));
        let lost = describe(&ProbeError::Nvml {
            stage: Stage::Handle(1),
            failure: NvmlFailure::GpuLost,
            detail: String::new(),
        });
        assert!(lost.1.contains("Xid 79") && lost.1.contains("GPU 1"), "{}", lost.1);
    }

    #[test]
    fn unknown_outside_init_is_generic() {
        let (code, _, _) = describe(&ProbeError::Nvml {
            stage: Stage::Query { index: 0, what: "name".into() },
            failure: NvmlFailure::Unknown,
            detail: "unknown".into(),
        });
        assert_eq!(code, "nvml_error");
    }

    #[test]
    fn a_missing_library_says_how_to_give_the_container_the_gpu() {
        let r = fatal(ProbeError::LibraryMissing {
            requested: None,
            tried: vec!["libnvidia-ml.so.1".into(), "/usr/lib64/libnvidia-ml.so.1".into()],
        });
        let v = evaluate(&r, &settings(GpuPolicy::Require));
        assert!(!v.ok);
        let f = &v.findings[0];
        assert_eq!(f.code, "library_missing");
        assert!(f.message.contains("/usr/lib64"), "{}", f.message);
        assert!(!f.message.contains("/usr/lib64/libnvidia-ml.so.1"), "{}", f.message);
        assert!(f.advice.contains("--gpus all"));
        assert!(f.advice.contains("NVIDIA Container Toolkit"));
        assert!(f.advice.contains("utility"));
        let r = fatal(ProbeError::LibraryMissing { requested: Some("/nope.so".into()), tried: vec![] });
        let f = &evaluate(&r, &settings(GpuPolicy::Require)).findings[0];
        assert!(f.message.contains("COMFY_INIT_NVML_LIB=/nope.so"));
        assert!(f.advice.contains("--gpus all"));
    }

    #[test]
    fn no_devices_names_visible_devices() {
        let mut r = healthy(vec![]);
        r.visible_devices = Some("void".into());
        let v = evaluate(&r, &settings(GpuPolicy::Require));
        assert!(!v.ok);
        assert_eq!(codes(&v), vec!["no_devices"]);
        assert!(v.findings[0].message.contains("NVIDIA_VISIBLE_DEVICES=void"));
        assert!(v.findings[0].advice.contains("NVIDIA_VISIBLE_DEVICES=all"));
        assert!(evaluate(&r, &settings(GpuPolicy::Warn)).ok);
    }

    #[test]
    fn lost_gpu_on_handle_fails_even_with_another_gpu() {
        let mut r = healthy(vec![rtx3090()]);
        r.device_count = Some(2);
        r.device_errors.push(ProbeError::Nvml {
            stage: Stage::Handle(1),
            failure: NvmlFailure::GpuLost,
            detail: "GPU is lost".into(),
        });
        let v = evaluate(&r, &settings(GpuPolicy::Require));
        assert!(!v.ok);
        assert_eq!(codes(&v), vec!["gpu_lost"]);
        assert!(v.findings[0].advice.contains("reboot"));
    }

    #[test]
    fn other_handle_error_is_a_warning_when_another_gpu_works() {
        let mut r = healthy(vec![rtx3090()]);
        r.device_count = Some(2);
        let err = ProbeError::Nvml {
            stage: Stage::Handle(1),
            failure: NvmlFailure::NoPermission,
            detail: "Insufficient Permissions".into(),
        };
        r.device_errors.push(err.clone());
        let v = evaluate(&r, &settings(GpuPolicy::Require));
        assert!(v.ok);
        assert_eq!(v.findings[0].severity, Severity::Warning);
        // ... and an error when it was the only one
        let mut r = healthy(vec![]);
        r.device_count = Some(1);
        r.device_errors.push(err);
        assert!(!evaluate(&r, &settings(GpuPolicy::Require)).ok);
    }

    #[test]
    fn gpu_lost_during_a_query_fails() {
        let mut g = rtx3090();
        g.problems.push(ProbeError::Nvml {
            stage: Stage::Query { index: 0, what: "memory".into() },
            failure: NvmlFailure::GpuLost,
            detail: "GPU is lost".into(),
        });
        let v = evaluate(&healthy(vec![g]), &settings(GpuPolicy::Require));
        assert!(!v.ok);
        assert!(v.findings[0].message.contains("Xid 79"));
    }

    #[test]
    fn too_little_vram_is_judged_against_the_minimum() {
        let mut s = settings(GpuPolicy::Require);
        s.min_vram_gb = Some(32.0);
        let v = evaluate(&healthy(vec![rtx3090()]), &s);
        assert!(!v.ok);
        assert_eq!(codes(&v), vec!["vram_too_small"]);
        assert!(v.findings[0].message.contains("24.00 GiB"), "{}", v.findings[0].message);
        s.min_vram_gb = Some(24.0);
        assert!(evaluate(&healthy(vec![rtx3090()]), &s).ok);
        // a 4090 reports 24564 MiB: still "24 GB"
        let mut g = gpu(0, "NVIDIA GeForce RTX 4090", "GeForce", 0.0, (8, 9));
        g.vram_total_bytes = Some(24564 * 1024 * 1024);
        assert!(evaluate(&healthy(vec![g]), &s).ok);
        // one of two large enough: warning for the small one
        s.min_vram_gb = Some(16.0);
        let r = healthy(vec![
            gpu(0, "NVIDIA GeForce RTX 3060", "GeForce", 12.0, (8, 6)),
            gpu(1, "NVIDIA GeForce RTX 4090", "GeForce", 24.0, (8, 9)),
        ]);
        let v = evaluate(&r, &s);
        assert!(v.ok);
        assert_eq!(v.findings[0].severity, Severity::Warning);
        assert!(v.findings[0].message.contains("GPU 0"));
        // under warn: reported but ok
        s.policy = GpuPolicy::Warn;
        s.min_vram_gb = Some(80.0);
        let v = evaluate(&healthy(vec![rtx3090()]), &s);
        assert!(v.ok && v.has_errors());
    }

    #[test]
    fn vram_unknown_is_not_fatal() {
        let mut g = rtx3090();
        g.vram_total_bytes = None;
        g.vram_free_bytes = None;
        g.problems.push(ProbeError::Nvml {
            stage: Stage::Query { index: 0, what: "memory".into() },
            failure: NvmlFailure::NoPermission,
            detail: "Insufficient Permissions".into(),
        });
        let mut s = settings(GpuPolicy::Require);
        s.min_vram_gb = Some(8.0);
        let v = evaluate(&healthy(vec![g]), &s);
        assert!(v.ok, "{:?}", v.findings);
        assert_eq!(codes(&v), vec!["nvml_error", "vram_unknown"]);
    }

    #[test]
    fn driver_minimums_follow_the_cuda_table() {
        let v = |major, minor| CudaVersion { major, minor };
        assert_eq!(driver_for_cuda(v(12, 4)), Some("550.54.14"));
        assert_eq!(driver_for_cuda(v(12, 8)), Some("570.26"));
        assert_eq!(driver_for_cuda(v(12, 0)), Some("525.60.13"));
        assert_eq!(driver_for_cuda(v(12, 7)), Some("570.26"));
        assert_eq!(driver_for_cuda(v(13, 0)), Some("580.65.06"));
        assert_eq!(driver_for_cuda(v(12, 99)), None);
        assert_eq!(driver_for_cuda_major(12), Some("525.60.13"));
        assert_eq!(driver_for_cuda_major(13), Some("580.65.06"));
        assert_eq!(driver_phrase("570.26"), "570 or newer (>= 570.26)");
    }

    #[test]
    fn image_cuda_newer_minor_is_a_warning_naming_the_driver() {
        let mut s = settings(GpuPolicy::Require);
        s.image_cuda_version = Some("12.8.1".into());
        let v = evaluate(&healthy(vec![rtx3090()]), &s);
        assert!(v.ok);
        assert_eq!(codes(&v), vec!["driver_older_than_image_cuda"]);
        let f = &v.findings[0];
        assert!(f.message.contains("12.8") && f.message.contains("12.4"), "{}", f.message);
        assert!(f.advice.contains("570"), "{}", f.advice);
    }

    #[test]
    fn image_cuda_newer_major_is_an_error() {
        let mut s = settings(GpuPolicy::Require);
        s.image_cuda_version = Some("13.0.0".into());
        let v = evaluate(&healthy(vec![rtx3090()]), &s);
        assert!(!v.ok);
        assert_eq!(codes(&v), vec!["driver_too_old"]);
        assert!(v.findings[0].advice.contains("580"));
        s.policy = GpuPolicy::Warn;
        assert!(evaluate(&healthy(vec![rtx3090()]), &s).ok);
    }

    #[test]
    fn image_cuda_older_or_equal_is_fine() {
        let mut s = settings(GpuPolicy::Require);
        for img in ["12.4.1", "12.1", "11.8.0"] {
            s.image_cuda_version = Some(img.into());
            let v = evaluate(&healthy(vec![rtx3090()]), &s);
            assert!(v.ok && v.findings.is_empty(), "{img}: {:?}", v.findings);
        }
    }

    #[test]
    fn image_cuda_unparseable_or_driver_unknown_warns() {
        let mut s = settings(GpuPolicy::Require);
        s.image_cuda_version = Some("latest".into());
        let v = evaluate(&healthy(vec![rtx3090()]), &s);
        assert!(v.ok);
        assert_eq!(codes(&v), vec!["image_cuda_version_invalid"]);
        s.image_cuda_version = Some("12.8.1".into());
        let mut r = healthy(vec![rtx3090()]);
        r.cuda_driver_version = None;
        let v = evaluate(&r, &s);
        assert!(v.ok);
        assert_eq!(codes(&v), vec!["driver_cuda_version_unknown"]);
    }

    #[test]
    fn blackwell_needs_cuda_12_8() {
        let mut s = settings(GpuPolicy::Require);
        s.image_cuda_version = Some("12.4.1".into());
        let mut r = healthy(vec![gpu(0, "NVIDIA GeForce RTX 5090", "GeForce", 32.0, (12, 0))]);
        r.cuda_driver_version = Some(CudaVersion { major: 12, minor: 8 });
        let v = evaluate(&r, &s);
        assert!(v.ok);
        assert_eq!(codes(&v), vec!["gpu_needs_newer_cuda"]);
        assert!(v.findings[0].advice.contains("cu128"));
    }

    #[test]
    fn summary_and_verdict_line() {
        let r = init_failure(NvmlFailure::DriverNotLoaded);
        let v = evaluate(&r, &settings(GpuPolicy::Require));
        assert!(v.summary().starts_with("GPU check failed: NVIDIA driver is not loaded"));
        assert!(!v.summary().contains('\n'));
        assert!(v.verdict_line().contains("FAILED"));
        let v = evaluate(&r, &settings(GpuPolicy::Warn));
        assert!(v.verdict_line().contains("not enforced"));
        let v = evaluate(&healthy(vec![rtx3090()]), &settings(GpuPolicy::Require));
        assert_eq!(v.summary(), "GPU check passed");
    }
}
