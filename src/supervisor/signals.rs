//! Signals as events: every signal is blocked and taken with `sigtimedwait`, the one place the
//! loop sleeps. File events come the same way: the inotify descriptor raises SIGIO when it turns
//! readable (`signal_when_readable`). One syscall wakes and dequeues, as in tini and dumb-init,
//! where `poll` on a signalfd and inotify, then `read`, took two and a poll table (issue 17:
//! signal forwarding and stop latency). Nothing runs in signal-handler context.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

/// A signal taken from the pending set.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub signo: i32,
    /// SIGIO raised by the kernel for a descriptor of ours that turned readable (not sent by
    /// anyone: those are forwarded like any other signal).
    pub file_ready: bool,
}

pub struct Signals {
    all: libc::sigset_t,
    /// Our pid, to tell our own SIGPIPEs from others'.
    me: i32,
}

impl Signals {
    /// Resets every disposition to default (children inherit ignored ones) and blocks every
    /// signal, so that each stays pending until `wait` takes it. Call before any thread exists:
    /// threads inherit the mask, so none of them can take a signal meant for the loop.
    pub fn install() -> std::io::Result<Signals> {
        reset_dispositions();
        // SAFETY: sigfillset fills the set it is given; sigprocmask reads it.
        let all = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            if libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            all
        };
        Ok(Signals { all, me: std::process::id() as i32 })
    }

    /// Sleeps until a signal is pending or `timeout` passed (None: no timeout), and takes it.
    /// None: the timeout passed (or the wait was interrupted: the caller re-checks its clocks).
    /// SIGPIPE raised by our own writes is not returned: it is ours, not the operator's.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<Received> {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: d.subsec_nanos() as libc::c_long, // below 10^9: fits
        });
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        loop {
            // SAFETY: zeroed siginfo_t is valid; the set and the timespec outlive the call.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let signo = unsafe { libc::sigtimedwait(&self.all, &mut info, ts_ptr) };
            if signo < 0 {
                return None; // EAGAIN: the timeout; EINTR: a stop/continue of this process
            }
            // SAFETY: si_pid is set for every signal sigtimedwait returns (0 from the kernel).
            if signo == libc::SIGPIPE && unsafe { info.si_pid() } == self.me {
                continue;
            }
            // si_code > 0: the kernel's (POLL_IN for O_ASYNC); kill, sigqueue, tkill are <= 0.
            let file_ready = signo == libc::SIGIO && info.si_code > 0;
            return Some(Received { signo, file_ready });
        }
    }
}

/// `F_SETSIG` (fcntl.h, `_GNU_SOURCE`): 10 on x86_64 and aarch64; the libc crate lacks it. Set,
/// the kernel fills in si_code (POLL_IN) and si_fd.
const F_SETSIG: libc::c_int = 10;

/// Makes `fd` raise SIGIO at this process whenever it turns readable (O_ASYNC), so that the loop
/// hears of it in `Signals::wait`. Only for a process whose signals are blocked (`install`):
/// SIGIO's default action is to terminate.
pub fn signal_when_readable(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    unsafe {
        if libc::fcntl(fd, libc::F_SETOWN, libc::getpid()) < 0 || libc::fcntl(fd, F_SETSIG, libc::SIGIO) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A stop request (SIGTERM, SIGINT, SIGQUIT) waiting in PID 1's pending set, left there: start-up
/// (the GPU check, the credentials) looks between its steps and inside its waits, so that a
/// `docker stop` then is answered at once, and ComfyUI is not started only to be stopped. Always
/// None where those signals are not blocked (the commands other than `run`: they just die).
pub fn stop_pending() -> Option<i32> {
    // SAFETY: sigpending fills the set it is given; sigismember reads it.
    unsafe {
        let mut pending: libc::sigset_t = std::mem::zeroed();
        if libc::sigpending(&mut pending) != 0 {
            return None;
        }
        [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT].into_iter().find(|s| libc::sigismember(&pending, *s) == 1)
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
fn reset_dispositions() {
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
