//! Integration tests: each drives the built comfy-init binary the way a user meets it.

/// Skips a test that needs root and a PID namespace, saying why (unless CI makes it mandatory):
/// see `util::can_be_pid1`. Defined before the modules that use it.
macro_rules! root_only {
    ($name:literal) => {
        if !can_be_pid1($name) {
            return;
        }
    };
}

mod apikeys;
mod credentials;
mod doors;
mod fidelity;
mod gpu;
mod hardening;
mod health;
mod hooks;
mod instances;
mod lifecycle;
mod packaging;
mod pid1;
mod privileges;
mod provision;
mod reload;
mod supervise;
mod util;
