//! Log lines go to stderr with a `[comfy-init]` prefix so they stand out from ComfyUI's own output.

use std::io::Write;

/// Sets up env_logger: `RUST_LOG` picks the level (default `info`).
pub fn init() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| writeln!(buf, "[comfy-init] {:<5} {}", record.level(), record.args()))
        .init();
}
