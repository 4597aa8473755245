//! Collects every child that has exited: ours and the orphans re-parented to us.

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128+N for death by signal N.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }

    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => {
                write!(f, "{} (status {})", super::signals::signal_name(*s), 128 + s)
            }
        }
    }
}

/// `waitpid(-1, WNOHANG)` until nothing is left to collect. Never blocks. Uses libc directly
/// because a child killed by a real-time signal is a status nix cannot represent. Also true
/// when no child at all is left (ECHILD), running or not.
pub fn reap_all() -> (Vec<(i32, ExitStatus)>, bool) {
    let mut reaped = Vec::new();
    loop {
        let mut raw = 0;
        // SAFETY: plain syscall with a pointer to a local.
        let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
        if pid > 0 {
            if libc::WIFEXITED(raw) {
                reaped.push((pid, ExitStatus::Code(libc::WEXITSTATUS(raw))));
            } else if libc::WIFSIGNALED(raw) {
                reaped.push((pid, ExitStatus::Signal(libc::WTERMSIG(raw))));
            }
            continue;
        }
        if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return (reaped, pid < 0); // 0: children left but none exited; -1/ECHILD: no children at all
    }
}
