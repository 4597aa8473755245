//! Integration tests: each drives the built comfy-init binary the way a user meets it.

mod credentials;
mod fidelity;
mod gpu;
mod hardening;
mod health;
mod hooks;
mod pid1;
mod reload;
mod supervise;
mod util;
