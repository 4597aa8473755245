//! The companion's status (`GET /comfy-init/status`, issue 24): whether ComfyUI drains, which
//! custom nodes failed to import, how many prompts run and wait. Read by the drain probe and by
//! `healthcheck --ready` (both in `health`).

/// The token the drain probe asks with, in its environment (never on a command line).
pub const ENV_TOKEN: &str = "COMFY_INIT_PROBE_TOKEN";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub draining: bool,
    pub import_failed: Vec<String>,
    pub running: u64,
    pub pending: u64,
}

impl Status {
    /// `{"companion": 1, "draining": b, "import_failed": [..], "queue_running": n,
    /// "queue_pending": n}`; None: not that shape.
    pub fn parse(body: &str) -> Option<Status> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        v.get("companion")?;
        Some(Status {
            draining: v.get("draining")?.as_bool()?,
            import_failed: v
                .get("import_failed")?
                .as_array()?
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect(),
            running: v.get("queue_running")?.as_u64()?,
            pending: v.get("queue_pending")?.as_u64()?,
        })
    }

    /// Nothing runs and nothing waits: a stop loses no prompt.
    pub fn idle(&self) -> bool {
        self.running == 0 && self.pending == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_companions_status_is_read_whole_or_not_at_all() {
        let body =
            r#"{"companion": 1, "draining": true, "import_failed": ["A"], "queue_running": 1, "queue_pending": 2}"#;
        let s = Status::parse(body).unwrap();
        assert_eq!(s, Status { draining: true, import_failed: vec!["A".into()], running: 1, pending: 2 });
        assert!(!s.idle());
        let idle = r#"{"companion": 1, "draining": true, "import_failed": [], "queue_running": 0, "queue_pending": 0}"#;
        assert!(Status::parse(idle).unwrap().idle());
        for junk in ["", "{}", "[]", r#"{"draining": true}"#, r#"{"companion": 1, "draining": "yes"}"#, "<html>"] {
            assert_eq!(Status::parse(junk), None, "{junk:?}");
        }
    }
}
