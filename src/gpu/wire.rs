//! What `comfy-init-nvml` tells `comfy-init`: the probe's findings as one JSON object on its
//! stdout. Both sides are this file, so the two can only disagree across versions, and a
//! version mismatch reads as an error naming the helper, never as a wrong answer.
//!
//! `{"version": 1, "report": {...}}` for `probe`, `{"version": 1, "alive": "<GPU 0>"}` or
//! `{"version": 1, "error": {...}}` for `alive`. Only what NVML filled travels: the PyTorch
//! probe, the selection and `NVIDIA_VISIBLE_DEVICES` are comfy-init's own.

use serde_json::{json, Map, Value};

use super::model::{CudaVersion, GpuInfo, GpuReport, NvmlFailure, ProbeError, Stage};

const VERSION: u64 = 1;

/// What is wrong with an answer: said after "answered nonsense: ".
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not JSON ({0})")]
    NotJson(#[source] serde_json::Error),
    #[error("not a JSON object")]
    NotObject,
    #[error("answer version {0:?}, this comfy-init reads {VERSION} (copy both files of one build)")]
    Version(Option<u64>),
    #[error("no \"report\" object")]
    NoReport,
    #[error("neither \"alive\" nor \"error\"")]
    NoAnswer,
    #[error("{0} is not a small number")]
    NotSmallNumber(Value),
    #[error("{0}")]
    OutOfRange(#[from] std::num::TryFromIntError),
    #[error("a GPU is not an object")]
    GpuNotObject,
    #[error("a GPU without an index")]
    GpuWithoutIndex,
    #[error("compute_capability is not two numbers")]
    ComputeCapability,
    #[error("an error is not an object")]
    ErrorNotObject,
    #[error("an error without \"{0}\"")]
    ErrorWithout(&'static str),
    #[error("an NVML error without a stage")]
    NoStage,
    #[error("a stage without an index")]
    StageWithoutIndex,
    #[error("unknown stage {0:?}")]
    UnknownStage(Option<String>),
    #[error("unknown error kind {0:?}")]
    UnknownKind(Option<String>),
}

/// The probe's part of `report`, for the helper's stdout.
pub fn encode_report(report: &GpuReport) -> String {
    let cuda = report.cuda_driver_version.map(|v| json!([v.major, v.minor]));
    let body = json!({
        "library": report.library,
        "fatal": report.fatal.as_ref().map(encode_error),
        "driver_version": report.driver_version,
        "cuda_driver_version": cuda,
        "cuda_driver_version_source": report.cuda_driver_version_source,
        "device_count": report.device_count,
        "gpus": report.gpus.iter().map(encode_gpu).collect::<Vec<_>>(),
        "device_errors": report.device_errors.iter().map(encode_error).collect::<Vec<_>>(),
    });
    json!({ "version": VERSION, "report": body }).to_string()
}

/// The answer of `alive`: the name of GPU 0, or what failed.
pub fn encode_alive(result: &Result<String, ProbeError>) -> String {
    match result {
        Ok(name) => json!({ "version": VERSION, "alive": name }),
        Err(e) => json!({ "version": VERSION, "error": encode_error(e) }),
    }
    .to_string()
}

/// The helper's stdout back into a report (its probe part). Err: what is wrong with the text.
pub fn decode_report(text: &str) -> Result<GpuReport, DecodeError> {
    let body = envelope(text)?;
    let r = body.get("report").and_then(Value::as_object).ok_or(DecodeError::NoReport)?;
    let list = |key: &str| r.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    Ok(GpuReport {
        library: string(r, "library"),
        fatal: match r.get("fatal") {
            None | Some(Value::Null) => None,
            Some(e) => Some(decode_error(e)?),
        },
        driver_version: string(r, "driver_version"),
        cuda_driver_version: match r.get("cuda_driver_version").and_then(Value::as_array) {
            Some(v) if v.len() == 2 => Some(CudaVersion { major: number(&v[0])?, minor: number(&v[1])? }),
            _ => None,
        },
        cuda_driver_version_source: string(r, "cuda_driver_version_source"),
        device_count: r.get("device_count").and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok()),
        gpus: list("gpus").iter().map(decode_gpu).collect::<Result<_, _>>()?,
        device_errors: list("device_errors").iter().map(decode_error).collect::<Result<_, _>>()?,
        ..GpuReport::default()
    })
}

/// The answer of `alive`, back. The outer Err: the text itself is wrong.
pub fn decode_alive(text: &str) -> Result<Result<String, ProbeError>, DecodeError> {
    let body = envelope(text)?;
    match (body.get("alive").and_then(Value::as_str), body.get("error")) {
        (Some(name), _) => Ok(Ok(name.to_string())),
        (None, Some(e)) => Ok(Err(decode_error(e)?)),
        (None, None) => Err(DecodeError::NoAnswer),
    }
}

fn envelope(text: &str) -> Result<Map<String, Value>, DecodeError> {
    let value: Value = serde_json::from_str(text.trim()).map_err(DecodeError::NotJson)?;
    let Value::Object(body) = value else { return Err(DecodeError::NotObject) };
    match body.get("version").and_then(Value::as_u64) {
        Some(VERSION) => Ok(body),
        other => Err(DecodeError::Version(other)),
    }
}

fn string(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key).and_then(Value::as_str).map(str::to_string)
}

fn number(v: &Value) -> Result<u32, DecodeError> {
    v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| DecodeError::NotSmallNumber(v.clone()))
}

fn encode_gpu(g: &GpuInfo) -> Value {
    json!({
        "index": g.index,
        "name": g.name,
        "brand": g.brand,
        "vram_total_bytes": g.vram_total_bytes,
        "vram_free_bytes": g.vram_free_bytes,
        "compute_capability": g.compute_capability.map(|(a, b)| json!([a, b])),
        "uuid": g.uuid,
        "temperature_c": g.temperature_c,
        "power_w": g.power_w,
        "utilization_percent": g.utilization_percent,
        "mig_mode": g.mig_mode,
        "problems": g.problems.iter().map(encode_error).collect::<Vec<_>>(),
    })
}

fn decode_gpu(v: &Value) -> Result<GpuInfo, DecodeError> {
    let g = v.as_object().ok_or(DecodeError::GpuNotObject)?;
    let small = |key: &str| g.get(key).and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok());
    let compute_capability = match g.get("compute_capability").and_then(Value::as_array) {
        Some(cc) if cc.len() == 2 => match (cc[0].as_i64(), cc[1].as_i64()) {
            (Some(a), Some(b)) => Some((i32::try_from(a)?, i32::try_from(b)?)),
            _ => return Err(DecodeError::ComputeCapability),
        },
        _ => None,
    };
    let problems = g.get("problems").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    Ok(GpuInfo {
        index: small("index").ok_or(DecodeError::GpuWithoutIndex)?,
        name: string(g, "name"),
        brand: string(g, "brand"),
        vram_total_bytes: g.get("vram_total_bytes").and_then(Value::as_u64),
        vram_free_bytes: g.get("vram_free_bytes").and_then(Value::as_u64),
        compute_capability,
        uuid: string(g, "uuid"),
        temperature_c: small("temperature_c"),
        power_w: g.get("power_w").and_then(Value::as_f64),
        utilization_percent: small("utilization_percent"),
        mig_mode: g.get("mig_mode").and_then(Value::as_bool),
        problems: problems.iter().map(decode_error).collect::<Result<_, _>>()?,
    })
}

/// Every NVML failure and its name on the wire.
const FAILURES: [(NvmlFailure, &str); 13] = [
    (NvmlFailure::DriverNotLoaded, "driver_not_loaded"),
    (NvmlFailure::LibRmVersionMismatch, "lib_rm_version_mismatch"),
    (NvmlFailure::Unknown, "unknown"),
    (NvmlFailure::NoPermission, "no_permission"),
    (NvmlFailure::GpuLost, "gpu_lost"),
    (NvmlFailure::OperatingSystem, "operating_system"),
    (NvmlFailure::ResetRequired, "reset_required"),
    (NvmlFailure::InsufficientPower, "insufficient_power"),
    (NvmlFailure::NotSupported, "not_supported"),
    (NvmlFailure::Uninitialized, "uninitialized"),
    (NvmlFailure::LibraryNotFound, "library_not_found"),
    (NvmlFailure::SymbolMissing, "symbol_missing"),
    (NvmlFailure::Other, "other"),
];

fn encode_error(e: &ProbeError) -> Value {
    match e {
        ProbeError::LibraryMissing { requested, tried } => {
            json!({ "kind": "library_missing", "requested": requested, "tried": tried })
        }
        ProbeError::LibraryInvalid { path, detail, overridden } => {
            json!({ "kind": "library_invalid", "path": path, "detail": detail, "overridden": overridden })
        }
        ProbeError::SymbolsMissing { path, symbols } => {
            json!({ "kind": "symbols_missing", "path": path, "symbols": symbols })
        }
        ProbeError::Nvml { stage, failure, detail } => {
            let stage = match stage {
                Stage::Init => json!({ "at": "init" }),
                Stage::DeviceCount => json!({ "at": "device_count" }),
                Stage::Handle(index) => json!({ "at": "handle", "index": index }),
                Stage::Query { index, what } => json!({ "at": "query", "index": index, "what": what }),
            };
            let failure = FAILURES.iter().find(|(f, _)| f == failure).map_or("other", |(_, name)| name);
            json!({ "kind": "nvml", "stage": stage, "failure": failure, "detail": detail })
        }
        ProbeError::Helper { path, detail, missing } => {
            json!({ "kind": "helper", "path": path, "detail": detail, "missing": missing })
        }
    }
}

fn decode_error(v: &Value) -> Result<ProbeError, DecodeError> {
    let e = v.as_object().ok_or(DecodeError::ErrorNotObject)?;
    let text = |key: &'static str| string(e, key).ok_or(DecodeError::ErrorWithout(key));
    let texts = |key: &str| -> Vec<String> {
        e.get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    };
    match e.get("kind").and_then(Value::as_str) {
        Some("library_missing") => {
            Ok(ProbeError::LibraryMissing { requested: string(e, "requested"), tried: texts("tried") })
        }
        Some("library_invalid") => Ok(ProbeError::LibraryInvalid {
            path: text("path")?,
            detail: text("detail")?,
            overridden: e.get("overridden").and_then(Value::as_bool).unwrap_or(false),
        }),
        Some("symbols_missing") => Ok(ProbeError::SymbolsMissing { path: text("path")?, symbols: texts("symbols") }),
        Some("nvml") => {
            let s = e.get("stage").and_then(Value::as_object).ok_or(DecodeError::NoStage)?;
            let index = || s.get("index").ok_or(DecodeError::StageWithoutIndex).and_then(number);
            let stage = match s.get("at").and_then(Value::as_str) {
                Some("init") => Stage::Init,
                Some("device_count") => Stage::DeviceCount,
                Some("handle") => Stage::Handle(index()?),
                Some("query") => Stage::Query { index: index()?, what: string(s, "what").unwrap_or_default() },
                other => return Err(DecodeError::UnknownStage(other.map(str::to_string))),
            };
            let name = e.get("failure").and_then(Value::as_str).unwrap_or("other");
            let failure = FAILURES.iter().find(|(_, n)| *n == name).map_or(NvmlFailure::Other, |(f, _)| f.clone());
            Ok(ProbeError::Nvml { stage, failure, detail: text("detail")? })
        }
        Some("helper") => Ok(ProbeError::Helper {
            path: text("path")?,
            detail: text("detail")?,
            missing: e.get("missing").and_then(Value::as_bool).unwrap_or(false),
        }),
        other => Err(DecodeError::UnknownKind(other.map(str::to_string))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nvml(stage: Stage, failure: NvmlFailure) -> ProbeError {
        ProbeError::Nvml { stage, failure, detail: "as NVML said it".into() }
    }

    #[test]
    fn a_full_report_comes_back_as_it_went() {
        let report = GpuReport {
            library: Some("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1".into()),
            fatal: None,
            driver_version: Some("570.86.10".into()),
            cuda_driver_version: Some(CudaVersion { major: 12, minor: 8 }),
            cuda_driver_version_source: Some("v1".into()),
            device_count: Some(2),
            gpus: vec![
                GpuInfo {
                    index: 0,
                    name: Some("NVIDIA GeForce RTX 5090".into()),
                    brand: Some("GeForceRTX".into()),
                    vram_total_bytes: Some(32 << 30),
                    vram_free_bytes: Some(31 << 30),
                    compute_capability: Some((12, 0)),
                    uuid: Some("GPU-5090".into()),
                    temperature_c: Some(41),
                    power_w: Some(28.5),
                    utilization_percent: Some(0),
                    mig_mode: Some(false),
                    problems: vec![nvml(Stage::Query { index: 0, what: "temperature".into() }, NvmlFailure::GpuLost)],
                },
                GpuInfo::new(1),
            ],
            device_errors: vec![nvml(Stage::Handle(1), NvmlFailure::NoPermission)],
            ..GpuReport::default()
        };
        assert_eq!(decode_report(&encode_report(&report)).unwrap(), report);
    }

    #[test]
    fn every_failure_and_error_kind_comes_back() {
        let mut errors = vec![
            ProbeError::LibraryMissing {
                requested: Some("/x/libnvidia-ml.so.1".into()),
                tried: vec!["a".into(), "b".into()],
            },
            ProbeError::LibraryMissing { requested: None, tried: vec![] },
            ProbeError::LibraryInvalid { path: "/x".into(), detail: "not ELF".into(), overridden: true },
            ProbeError::SymbolsMissing { path: "/x".into(), symbols: vec!["nvmlInit_v2".into()] },
            nvml(Stage::Init, NvmlFailure::Other),
            nvml(Stage::DeviceCount, NvmlFailure::Other),
            ProbeError::Helper { path: "/bin/comfy-init-nvml".into(), detail: "timed out".into(), missing: false },
        ];
        errors.extend(FAILURES.iter().map(|(f, _)| nvml(Stage::Init, f.clone())));
        for e in errors {
            let report = GpuReport { fatal: Some(e.clone()), ..GpuReport::default() };
            assert_eq!(decode_report(&encode_report(&report)).unwrap().fatal, Some(e.clone()));
            assert_eq!(decode_alive(&encode_alive(&Err(e.clone()))).unwrap(), Err(e));
        }
        assert_eq!(decode_alive(&encode_alive(&Ok("RTX 4090".into()))).unwrap(), Ok("RTX 4090".into()));
    }

    #[test]
    fn a_wrong_answer_is_an_error_never_a_report() {
        for text in ["", "Segmentation fault", "[]", "{}", r#"{"version":2,"report":{}}"#, r#"{"version":1}"#] {
            assert!(decode_report(text).is_err(), "{text}");
            assert!(decode_alive(text).is_err(), "{text}");
        }
        let e = decode_report(r#"{"version":2,"report":{}}"#).unwrap_err();
        assert_eq!(e.to_string(), "answer version Some(2), this comfy-init reads 1 (copy both files of one build)");
        let e = decode_report(r#"{"version":1,"report":{"fatal":{"kind":"nvml","stage":{"at":"handle"}}}}"#);
        assert_eq!(e.unwrap_err().to_string(), "a stage without an index");
        assert!(decode_report(r#"{"version":1,"report":{"fatal":{"kind":"meteor"}}}"#).is_err());
        assert!(decode_report(r#"{"version":1,"report":{"gpus":[{"name":"no index"}]}}"#).is_err());
    }
}
