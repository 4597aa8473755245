//! Signals as events: every signal is blocked and read from a signalfd, so the one event loop
//! sees them as readable data next to inotify. Nothing runs in signal-handler context.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// A signal taken from the signalfd.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub signo: i32,
    /// Who sent it (0 for the kernel).
    pub sender: i32,
}

pub struct Signals {
    fd: SignalFd,
    /// Our pid, to tell our own SIGPIPEs from others'.
    me: i32,
}

impl Signals {
    /// Resets every disposition to default (a signal we inherited as ignored would never reach
    /// the signalfd), blocks every signal and opens the signalfd. Call before any thread exists:
    /// threads inherit the mask, so none of them can take a signal meant for the loop.
    pub fn install() -> nix::Result<Signals> {
        reset_dispositions();
        let all = SigSet::all();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&all), None)?;
        let fd = SignalFd::with_flags(&all, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd, me: std::process::id() as i32 })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Everything pending, in arrival order. SIGPIPE raised by our own writes is dropped: it is
    /// ours, not the operator's. One read takes up to 16 at a time, and a short read means
    /// nothing is left (no second read to hear EAGAIN: the stop path is measured, issue 17).
    pub fn drain(&mut self) -> Vec<Received> {
        const BATCH: usize = 16;
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        let mut out = Vec::new();
        loop {
            // SAFETY: signalfd_siginfo is plain data; zeroed is a valid value.
            let mut buf: [libc::signalfd_siginfo; BATCH] = unsafe { std::mem::zeroed() };
            // SAFETY: read into a buffer of exactly that many bytes; the fd is non-blocking.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), BATCH * size) };
            if n <= 0 {
                return out; // EAGAIN: nothing pending (EINTR cannot happen: every signal is blocked)
            }
            let count = n as usize / size;
            for info in &buf[..count] {
                let received = Received { signo: info.ssi_signo as i32, sender: info.ssi_pid as i32 };
                if received.signo == libc::SIGPIPE && received.sender == self.me {
                    continue;
                }
                out.push(received);
            }
            if count < BATCH {
                return out;
            }
        }
    }
}

/// SIGTERM, SIGINT and SIGQUIT ask us to stop: the child gets the configured stop signal.
pub fn is_stop_request(signo: i32) -> bool {
    matches!(signo, libc::SIGTERM | libc::SIGINT | libc::SIGQUIT)
}

/// Every other catchable signal goes to the child's process group as is.
pub fn is_forwardable(signo: i32) -> bool {
    !matches!(signo, libc::SIGCHLD | libc::SIGKILL | libc::SIGSTOP)
}

/// Every disposition back to the default. Children inherit ours (vfork.rs resets none, to stay
/// cheap); no foreign code runs in this process later (NVML has a process of its own).
pub fn reset_dispositions() {
    for signo in 1..=libc::SIGRTMAX() {
        if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL has no handler to run.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signo, &action, std::ptr::null_mut()) != 0 {
                // glibc keeps 32 and 33 for itself and refuses them, but a parent may have left
                // them ignored: ask the kernel directly.
                set_default_raw(signo);
            }
        }
    }
}

/// The kernel's own `struct sigaction` (x86_64 and aarch64 layout): handler, flags, restorer, mask.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

fn set_default_raw(signo: i32) {
    let action = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
    // SAFETY: rt_sigaction with a valid struct and the kernel's sigset size (8 bytes).
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            signo,
            &action as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        );
    }
}

/// `SIGINT`, `INT`, `int`, `2`, `SIGRTMIN+3`.
pub fn parse_signal(value: &str) -> Option<i32> {
    let v = value.trim().to_ascii_uppercase();
    if let Ok(n) = v.parse::<i32>() {
        return (1..=libc::SIGRTMAX()).contains(&n).then_some(n);
    }
    let name = v.strip_prefix("SIG").unwrap_or(&v);
    if let Some(offset) = name.strip_prefix("RTMIN+") {
        // Digits only: `+-100` or an offset past SIGRTMAX is no signal (and must not overflow).
        if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n = offset.parse::<i32>().ok()?.checked_add(libc::SIGRTMIN())?;
        return (n <= libc::SIGRTMAX()).then_some(n);
    }
    SIGNAL_NAMES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// The name of a signal for log lines: `SIGINT`, `SIGRTMIN+2`.
pub fn signal_name(sig: i32) -> String {
    if let Some((name, _)) = SIGNAL_NAMES.iter().find(|(_, s)| *s == sig) {
        return format!("SIG{name}");
    }
    if sig >= libc::SIGRTMIN() && sig <= libc::SIGRTMAX() {
        return format!("SIGRTMIN+{}", sig - libc::SIGRTMIN());
    }
    format!("signal {sig}")
}

const SIGNAL_NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_and_numbers_parse_and_print() {
        assert_eq!(parse_signal("SIGINT"), Some(libc::SIGINT));
        assert_eq!(parse_signal("term"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGRTMIN+2"), Some(libc::SIGRTMIN() + 2));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("0"), None);
        for bad in ["SIGRTMIN+-100", "SIGRTMIN+2147483647", "RTMIN+", "RTMIN+99", "-2", "SIGRTMIN+ 1"] {
            assert_eq!(parse_signal(bad), None, "{bad}");
        }
        assert_eq!(parse_signal("SIGRTMIN+0"), Some(libc::SIGRTMIN()));
        assert_eq!(parse_signal(&format!("SIGRTMIN+{}", libc::SIGRTMAX() - libc::SIGRTMIN())), Some(libc::SIGRTMAX()));
        assert_eq!(signal_name(libc::SIGUSR2), "SIGUSR2");
        assert_eq!(signal_name(libc::SIGRTMIN() + 1), "SIGRTMIN+1");
    }
}
