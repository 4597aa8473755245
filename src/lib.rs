//! comfy-init's library: everything but the entry points. `comfy-init` (src/main.rs) is PID 1
//! and the commands; `comfy-init-nvml` (src/bin/comfy-init-nvml.rs) is the one part that loads
//! the NVIDIA library, in a process of its own (see `gpu::helper` for why).

pub mod cli;
pub mod companion;
pub mod config;
pub mod credentials;
pub mod error;
pub mod fsutil;
#[cfg(test)]
mod fuzz;
pub mod gpu;
pub mod health;
pub mod instances;
pub mod logging;
pub mod privileges;
pub mod provision;
pub mod queue;
pub mod supervisor;
mod test_hook;
pub mod watch;
