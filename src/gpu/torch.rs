//! Which PyTorch ComfyUI will import, and which GPUs it has kernels for, without importing it
//! (importing torch costs seconds). `find` asks ComfyUI's Python where the `torch` package is
//! (`importlib.util.find_spec`, no import) and reads `torch/version.py`; `kernels` and `covers`
//! are pure: PyTorch's published support matrix and CUDA's compatibility rule.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fsutil::{self, Links};

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

impl Torch {
    /// Its kernels, when the support matrix knows its build; None for a CPU-only or ROCm build
    /// too (see `cuda`).
    pub fn kernels(&self) -> Option<Kernels> {
        kernels(major_minor(&self.version)?, self.cuda.as_deref()?)
    }

    /// `sm_50 sm_60 ...` (+ `compute_120` for PTX), as `torch.cuda.get_arch_list()` names them.
    pub fn arch_list(&self) -> Option<Vec<String>> {
        let k = self.kernels()?;
        let mut list: Vec<String> = k.sm.iter().map(|sm| format!("sm_{sm}")).collect();
        list.extend(k.ptx.map(|p| format!("compute_{p}")));
        Some(list)
    }
}

/// Whether the PyTorch found runs on a card of compute capability `cc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    Covered,
    /// No kernel for it (or no CUDA at all: a CPU-only or ROCm build).
    NotCovered,
    /// The build, the torch or the card's capability is not known.
    Unknown,
}

pub fn coverage(found: Option<&Found>, cc: Option<(i32, i32)>) -> Coverage {
    let (Some(Found::Torch(t)), Some(cc)) = (found, cc) else { return Coverage::Unknown };
    if t.cuda.is_none() {
        return Coverage::NotCovered;
    }
    match t.kernels() {
        Some(k) if covers(k, cc) => Coverage::Covered,
        Some(_) => Coverage::NotCovered,
        None => Coverage::Unknown,
    }
}

/// The kernels one PyTorch build ships: compute capabilities as major*10+minor, and the
/// capability it also ships PTX for (JIT-compiled on any newer card).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    pub sm: &'static [u32],
    pub ptx: Option<u32>,
}

const PRE_BLACKWELL: &[u32] = &[50, 60, 70, 75, 80, 86, 90];

/// PyTorch's published support matrix for its Linux x86_64 wheels (pytorch/pytorch RELEASE.md,
/// issues #172352, #157517, #190385; see ../shared/FACTS.md). `(major, minor)` of torch, and the
/// CUDA build. None: a combination this table does not know, never guessed.
pub fn kernels(torch: (u32, u32), cuda: &str) -> Option<Kernels> {
    let k = |sm, ptx| Some(Kernels { sm, ptx });
    match (torch, cuda) {
        ((2, 4..=6), "12.1" | "12.4") => k(PRE_BLACKWELL, None),
        ((2, 8), "12.6") => k(PRE_BLACKWELL, None),
        ((2, 8), "12.8") => k(&[70, 75, 80, 86, 90, 100, 120], None),
        ((2, m), "12.6") if m >= 10 => k(PRE_BLACKWELL, None),
        ((2, m), "12.8") if m >= 10 => k(&[75, 80, 86, 90, 100, 120], None),
        ((2, m), "13.0") if m >= 10 => k(&[75, 80, 86, 90, 100, 120], Some(120)),
        _ => None,
    }
}

/// CUDA's rule: a cubin for sm_XY runs on sm_XZ with Z >= Y of the same major; PTX for a
/// capability is JIT-compiled for any card at least that capable.
pub fn covers(kernels: Kernels, cc: (i32, i32)) -> bool {
    let Ok(card) = u32::try_from(cc.0 * 10 + cc.1) else { return false };
    let cubin = kernels.sm.iter().any(|&sm| sm / 10 == card / 10 && sm % 10 <= card % 10);
    cubin || kernels.ptx.is_some_and(|ptx| ptx <= card)
}

/// `2.8.0+cu128` -> (2, 8).
pub fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split(['.', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The wheel index a fix needs, in words: which index, which driver, which base image.
pub fn advice_for(cc: (i32, i32)) -> String {
    if cc.0 >= 10 {
        "install a PyTorch built for CUDA 12.8 or newer (pip install --upgrade torch torchvision \
         torchaudio --index-url https://download.pytorch.org/whl/cu128): it needs a host driver >= 570 \
         and an image based on nvidia/cuda:12.8 (this project's docker/Dockerfile by default: \
         BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04, TORCH_INDEX_URL=.../cu128)"
            .into()
    } else if cc.0 < 7 || cc == (7, 0) {
        "install a PyTorch built for CUDA 12.6 (pip install --upgrade torch torchvision torchaudio \
         --index-url https://download.pytorch.org/whl/cu126), the last builds with kernels for this \
         card: it needs a host driver >= 560"
            .into()
    } else {
        "install a PyTorch built for CUDA 12.8 (…/whl/cu128, driver >= 570) or 12.6 (…/whl/cu126, \
         driver >= 560)"
            .into()
    }
}

// ------------------------------------------------------------------------- I/O ---

/// How long ComfyUI's Python may take to say where torch is (its start-up, no import of torch).
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks `python` (ComfyUI's interpreter, run in ComfyUI's folder) where `torch` is, then reads
/// its version.py. Never imports torch.
pub fn find(python: &str, comfyui_dir: &Path) -> Found {
    const ASK: &str = "import importlib.util as u\n\
                       s = u.find_spec('torch')\n\
                       print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')";
    // ComfyUI's environment (PYTHONPATH, a venv) decides what it imports: not isolated (-I).
    let mut cmd = Command::new(python);
    cmd.args(["-c", ASK]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    if comfyui_dir.is_dir() {
        cmd.current_dir(comfyui_dir); // main.py's folder is first on ComfyUI's sys.path
    }
    let child = cmd.spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Found::Unknown(format!("cannot run {python} to find torch: {e}")),
    };
    let deadline = Instant::now() + ASK_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Found::Unknown(format!("{python} did not say where torch is within {ASK_TIMEOUT:?}"));
            }
        }
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.by_ref().take(4096).read_to_string(&mut out);
    }
    match out.trim() {
        "" => Found::Missing { python: python.to_string() },
        dir => read_version(Path::new(dir)),
    }
}

/// `torch/version.py`, read (bounded) and parsed, not run.
pub fn read_version(dir: &Path) -> Found {
    let path = dir.join("version.py");
    let text = match fsutil::read_bounded(&path, 64 * 1024, Links::Follow) {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(None) => return Found::Unknown(format!("{} is missing", path.display())),
        Err(e) => return Found::Unknown(e),
    };
    match parse_version(&text) {
        Some((version, cuda, hip)) => Found::Torch(Torch { dir: dir.to_path_buf(), version, cuda, hip }),
        None => Found::Unknown(format!("{} has no __version__", path.display())),
    }
}

/// (`__version__`, `cuda`, `hip`) from the text of version.py: `name = 'value'`, or
/// `name: Optional[str] = None`.
pub fn parse_version(text: &str) -> Option<(String, Option<String>, Option<String>)> {
    let value = |name: &str| -> Option<Option<String>> {
        let line = text.lines().find(|l| {
            let l = l.trim_start();
            l.strip_prefix(name).is_some_and(|rest| rest.trim_start().starts_with([':', '=']))
        })?;
        let v = line.split_once('=')?.1.trim();
        // A quoted string; `None`, or anything that is not a plain string, is no value.
        Some(v.strip_prefix(['\'', '"']).and_then(|v| v.strip_suffix(['\'', '"'])).map(str::to_string))
    };
    let version = value("__version__")??;
    Some((version, value("cuda").flatten(), value("hip").flatten()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_py_is_read_as_pytorch_writes_it() {
        let text = "__version__ = '2.8.0+cu128'\ndebug = False\ncuda: Optional[str] = '12.8'\n\
                    git_version = 'abc'\nhip: Optional[str] = None\nxpu: Optional[str] = None\n";
        assert_eq!(parse_version(text), Some(("2.8.0+cu128".into(), Some("12.8".into()), None)));
        let cpu = "__version__ = '2.8.0+cpu'\ncuda: Optional[str] = None\nhip: Optional[str] = None\n";
        assert_eq!(parse_version(cpu), Some(("2.8.0+cpu".into(), None, None)));
        let rocm = "__version__ = \"2.8.0+rocm6.3\"\ncuda = None\nhip = \"6.3.42131\"\n";
        assert_eq!(parse_version(rocm), Some(("2.8.0+rocm6.3".into(), None, Some("6.3.42131".into()))));
        assert_eq!(parse_version("cuda = '12.8'\n"), None);
        assert_eq!(major_minor("2.10.1+cu130"), Some((2, 10)));
        assert_eq!(major_minor("nonsense"), None);
    }

    #[test]
    fn kernels_follow_the_support_matrix_and_cudas_compatibility_rule() {
        let cu124 = kernels((2, 6), "12.4").unwrap();
        let cu128 = kernels((2, 8), "12.8").unwrap();
        let cu126 = kernels((2, 8), "12.6").unwrap();
        assert!(!covers(cu124, (12, 0)), "RTX 5090 needs cu128");
        assert!(covers(cu128, (12, 0)));
        assert!(covers(cu124, (8, 9)), "sm_86 kernels run on an 8.9 RTX 4090");
        assert!(!covers(cu128, (6, 1)), "cu128 dropped Pascal");
        assert!(covers(cu126, (6, 1)), "sm_60 kernels run on a 6.1 GTX 1080");
        assert!(!covers(kernels((2, 10), "12.8").unwrap(), (7, 0)), "2.10's cu128 dropped Volta");
        let cu130 = kernels((2, 10), "13.0").unwrap();
        assert!(covers(cu130, (12, 1)), "PTX for 12.0 JIT-compiles on newer cards");
        assert!(covers(cu128, (12, 1)), "a cubin for 12.0 runs on a 12.1 card");
        assert_eq!(kernels((2, 12), "14.0"), None, "an unknown build is not guessed");
        assert_eq!(kernels((2, 9), "12.8"), None);
    }

    #[test]
    fn the_advice_names_the_wheel_index_and_the_driver() {
        let blackwell = advice_for((12, 0));
        assert!(blackwell.contains("cu128") && blackwell.contains(">= 570"), "{blackwell}");
        let pascal = advice_for((6, 1));
        assert!(pascal.contains("cu126") && pascal.contains(">= 560"), "{pascal}");
    }
}
