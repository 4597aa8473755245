//! Integration tests: each drives the built comfy-init binary the way a user meets it.

mod gpu;
mod pid1;
mod util;
