//! Log lines go to stderr with a `[comfy-init]` prefix so they stand out from ComfyUI's own output.

use std::io::Write;

/// What PID 1 gives the probe it starts for one of several ComfyUI (`instance 1 (GPU 1 (...)): `),
/// so that the probe's lines say which one they are about, as PID 1's own lines do.
pub const ENV_PREFIX: &str = "COMFY_INIT_LOG_PREFIX";

/// Sets up env_logger: `RUST_LOG` picks the level (default `info`).
pub fn init() {
    let prefix = std::env::var(ENV_PREFIX).unwrap_or_default();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| writeln!(buf, "[comfy-init] {:<5} {prefix}{}", record.level(), record.args()))
        .init();
}
