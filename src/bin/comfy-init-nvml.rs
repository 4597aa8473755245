//! `comfy-init-nvml MODE [LIBRARY]`: asks the NVIDIA library for comfy-init, in a process of its
//! own and linked dynamically (why: src/gpu/helper.rs). Not a command for people: comfy-init
//! runs it for `comfy-init gpu`, the preflight and the healthcheck.
//!
//! * `probe`: everything NVML says of the driver and each GPU, for the report.
//! * `alive`: can NVML be initialised and each GPU opened (the healthcheck's light check).
//!
//! LIBRARY is COMFY_INIT_NVML_LIB when set. One JSON object on stdout (src/gpu/wire.rs), exit 0;
//! a failure of NVML is an answer too. Exit 2: a wrong command line. Log lines go to stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use comfy_init::gpu::{probe, wire, GpuSettings};

fn main() -> ExitCode {
    comfy_init::logging::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = GpuSettings { nvml_lib: args.get(1).map(PathBuf::from), ..GpuSettings::default() };
    let answer = match (args.first().map(String::as_str), args.len()) {
        (Some("probe"), 1 | 2) => wire::encode_report(&probe::probe(&settings)),
        (Some("alive"), 1 | 2) => wire::encode_alive(&probe::alive(&settings)),
        _ => {
            eprintln!("usage: comfy-init-nvml probe|alive [LIBRARY]  (run by comfy-init, not by hand)");
            return ExitCode::from(2);
        }
    };
    println!("{answer}");
    ExitCode::SUCCESS
}
