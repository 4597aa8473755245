//! A pause the crash tests use to SIGKILL comfy-init between the steps of a write.
//! `COMFY_INIT_TEST_PAUSE_MS` unset (always, outside tests): does nothing.

use std::sync::OnceLock;
use std::time::Duration;

pub fn pause(_step: &str) {
    static PAUSE: OnceLock<Option<Duration>> = OnceLock::new();
    let pause =
        PAUSE.get_or_init(|| std::env::var("COMFY_INIT_TEST_PAUSE_MS").ok()?.parse().ok().map(Duration::from_millis));
    if let Some(d) = pause {
        std::thread::sleep(*d);
    }
}
