//! How a probe's result and its verdict are shown: text, JSON, log lines.

use serde_json::{json, Value};

use super::evaluate::{is_rtx, Severity, Verdict};
use super::model::GpuSettings;
use super::model::{gib, Found, GpuInfo, GpuReport};
use super::torch::{self, Coverage};

/// `text` cut into lines of at most `width` characters, at spaces.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

fn torch_line(found: &Found) -> String {
    match found {
        Found::Torch(t) => {
            let build = match (&t.cuda, &t.hip) {
                (Some(c), _) => format!("CUDA {c}"),
                (None, Some(h)) => format!("ROCm {h}"),
                (None, None) => "CPU only".into(),
            };
            let arch = t.arch_list().map(|a| a.join(" ")).unwrap_or_else(|| "not in comfy-init's table".into());
            format!("PyTorch: {} ({build}) in {}; kernels: {arch}", t.version, t.dir.display())
        }
        Found::Missing { python } => format!("PyTorch: none for {python}"),
        Found::Unknown(why) => format!("PyTorch: unknown ({why})"),
    }
}

fn coverage_word(report: &GpuReport, g: &GpuInfo) -> Option<&'static str> {
    report.torch.as_ref()?;
    Some(match torch::coverage(report.torch.as_ref(), g.compute_capability) {
        Coverage::Covered => "covered",
        Coverage::NotCovered => "NOT covered",
        Coverage::Unknown => "unknown",
    })
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
        let cuda = match (&report.cuda_driver_version, report.cuda_driver_version_source.as_deref()) {
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
    if let Some(found) = &report.torch {
        lines.push(torch_line(found));
    }
    for g in &report.gpus {
        lines.extend(gpu_lines(g));
        if let Some(word) = coverage_word(report, g) {
            lines.push(format!("  PyTorch kernels for it: {word}"));
        }
        if report.selected.as_ref().is_some_and(|s| s.contains(&g.index)) {
            lines.push(match settings.instances {
                super::Instances::One => "  selected (COMFY_INIT_GPU_SELECT): ComfyUI gets this card only".into(),
                _ => "  selected (COMFY_INIT_INSTANCES): a ComfyUI of its own runs on it".into(),
            });
        }
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
        for line in wrap(&f.advice, 96) {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out.push_str(&verdict.verdict_line());
    out.push('\n');
    out
}

/// One JSON object, for `comfy-init gpu --json`.
pub fn json(report: &GpuReport, verdict: &Verdict, settings: &GpuSettings) -> Value {
    let gpus: Vec<Value> = report.gpus.iter().map(|g| gpu_json(report, g)).collect();
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
        "torch": report.torch.as_ref().map(torch_json),
        "gpus": gpus,
        "findings": findings,
    })
}

fn gpu_json(report: &GpuReport, g: &GpuInfo) -> Value {
    let mut o = json!({
        "index": g.index,
        "name": g.name,
        "brand": g.brand,
        "rtx": is_rtx(g),
        "vram_total_bytes": g.vram_total_bytes,
        "vram_free_bytes": g.vram_free_bytes,
        "compute_capability": g.compute_capability_string(),
        "uuid": g.uuid,
        "torch_covered": match torch::coverage(report.torch.as_ref(), g.compute_capability) {
            Coverage::Covered => json!(true),
            Coverage::NotCovered => json!(false),
            Coverage::Unknown => Value::Null,
        },
        "selected": report.selected.as_ref().map(|s| s.contains(&g.index)),
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
}

fn torch_json(found: &Found) -> Value {
    match found {
        Found::Torch(t) => json!({
            "found": true,
            "dir": t.dir.display().to_string(),
            "version": t.version,
            "cuda": t.cuda,
            "hip": t.hip,
            "arch_list": t.arch_list(),
        }),
        Found::Missing { python } => json!({ "found": false, "python": python }),
        Found::Unknown(why) => json!({ "found": null, "why": why }),
    }
}
