//! Starting a program the way glibc's posix_spawn does, `clone(CLONE_VM | CLONE_VFORK)`, with the
//! preparation between clone and exec our own (issue 17).
//!
//! Why not std's `Command`: its `pre_exec` forces a full fork (our page tables copied, then
//! thrown away by exec) and an exec-error socketpair; the child then makes dozens of syscalls.
//! Why not `posix_spawn`: glibc's helper leaves its internal signals 32 and 33 ignored in the
//! child, and a child must start with nothing ignored.
//!
//! The child shares our memory and runs while we are suspended (the kernel wakes us when it execs
//! or exits), so everything it needs is prepared here first: it allocates nothing, takes no lock,
//! calls no glibc wrapper that keeps state, only raw syscalls. Its one write to our memory is the
//! failure report, read after it is gone. Signal handlers are not shared (no CLONE_SIGHAND), and
//! PID 1 has none anyway: every signal is blocked and taken with sigtimedwait.

use std::ffi::{c_char, c_int, c_void, CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// Where a child finds its notification descriptor (`Request::notify_fd`).
pub const NOTIFY_FD: c_int = 3;

/// What could not be done in the child, and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    SetUser,
    EnterFolder,
    NewGroup,
    Exec,
}

/// Everything the child reads: C strings and pointer arrays, built before the clone.
pub struct Job {
    /// Where to look for the program, in PATH order (one entry when it names a path).
    candidates: Vec<CString>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    /// Room for `/bin/sh PATH ARGS...` when a file without a `#!` line is run (as execvp does).
    script_argv: Vec<*const c_char>,
    cwd: Option<CString>,
    user: Option<(u32, u32)>,
    terminal: bool,
    notify_fd: Option<c_int>,
    /// Owners of the bytes the pointer arrays point into.
    _strings: Vec<CString>,
    failure: Option<(Stage, c_int)>,
}

/// What to start: the program (looked up in PATH without a `/`), its arguments, the environment
/// changes, its folder and user.
pub struct Request<'a> {
    pub argv: &'a [OsString],
    pub env_set: &'a [(String, OsString)],
    pub env_remove: &'a [String],
    pub cwd: Option<&'a PathBuf>,
    pub user: Option<(u32, u32)>,
    /// Take the terminal's foreground for the child's group.
    pub terminal: bool,
    /// A descriptor the child gets as its fd 3 (s6's notification fd: a service's messages).
    pub notify_fd: Option<c_int>,
}

impl Job {
    pub fn new(request: &Request) -> std::io::Result<Job> {
        let mut strings = Vec::new();
        let mut argv = Vec::with_capacity(request.argv.len() + 1);
        for arg in request.argv {
            let arg = c_string(arg.as_bytes())?;
            argv.push(arg.as_ptr());
            strings.push(arg);
        }
        argv.push(std::ptr::null());
        let mut envp = inherited_env(request);
        for (name, value) in request.env_set {
            let mut entry = Vec::with_capacity(name.len() + 1 + value.len());
            entry.extend_from_slice(name.as_bytes());
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            let entry = c_string(&entry)?;
            envp.push(entry.as_ptr());
            strings.push(entry);
        }
        envp.push(std::ptr::null());
        let program = request.argv.first().map(|p| p.as_bytes()).unwrap_or_default();
        let path = request.env_set.iter().rev().find(|(n, _)| n == "PATH").map(|(_, v)| v.clone());
        let candidates = candidates(program, path.or_else(|| std::env::var_os("PATH")))?;
        let cwd = request.cwd.map(|d| c_string(d.as_os_str().as_bytes())).transpose()?;
        Ok(Job {
            candidates,
            script_argv: vec![std::ptr::null(); argv.len() + 1],
            argv,
            envp,
            cwd,
            user: request.user,
            terminal: request.terminal,
            notify_fd: request.notify_fd,
            _strings: strings,
            failure: None,
        })
    }

    /// Starts the child; its pid once it runs the program, or the stage that failed and why.
    pub fn spawn(mut self) -> Result<i32, (Stage, std::io::Error)> {
        const STACK: usize = 32 * 1024;
        // The child's stack: never read by us, so never initialised (untouched pages cost nothing).
        let mut stack: Vec<u8> = Vec::with_capacity(STACK);
        // SAFETY: the pointer is inside (one past the end of) the allocation; aligned down to 16 as
        // the ABI wants at a call.
        let top = unsafe { stack.as_mut_ptr().add(STACK) } as usize & !15;
        let job: *mut Job = &mut self;
        // SAFETY: CLONE_VFORK suspends this thread until the child has exec'd or exited, so the
        // stack and the job outlive its use of them; child_main only makes raw syscalls (see the
        // module comment). SIGCHLD: the child is reaped like any other.
        let pid = unsafe {
            libc::clone(child_main, top as *mut c_void, libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD, job.cast())
        };
        drop(stack);
        if pid < 0 {
            return Err((Stage::Exec, std::io::Error::last_os_error()));
        }
        match self.failure {
            None => Ok(pid),
            Some((stage, errno)) => {
                // It has exited: collect it here, it is no child of the supervisor's.
                // SAFETY: plain syscall with a pointer to a local.
                unsafe { libc::waitpid(pid, &mut 0, 0) };
                Err((stage, std::io::Error::from_raw_os_error(errno)))
            }
        }
    }
}

/// Our environment minus what the request removes or sets, as pointers into `environ` itself
/// (nothing copied: the child execs before anything can change it).
fn inherited_env(request: &Request) -> Vec<*const c_char> {
    extern "C" {
        static environ: *const *const c_char;
    }
    let dropped = |name: &[u8]| {
        request.env_remove.iter().any(|n| n.as_bytes() == name)
            || request.env_set.iter().any(|(n, _)| n.as_bytes() == name)
    };
    let mut envp = Vec::with_capacity(64);
    // SAFETY: `environ` is the NULL-terminated array of NUL-terminated strings glibc keeps; PID 1
    // is single-threaded and nothing here changes the environment.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let bytes = std::ffi::CStr::from_ptr(*entry).to_bytes();
            let name = bytes.split(|&b| b == b'=').next().unwrap_or_default();
            if !dropped(name) {
                envp.push(*entry);
            }
            entry = entry.add(1);
        }
    }
    envp
}

/// execvp's search: a name with a `/` as is, otherwise each PATH entry (empty = current folder;
/// no PATH = `/bin:/usr/bin`, glibc's default).
fn candidates(program: &[u8], path: Option<OsString>) -> std::io::Result<Vec<CString>> {
    if program.is_empty() || program.contains(&b'/') {
        return Ok(vec![c_string(program)?]);
    }
    let path = path.map(OsString::into_vec).unwrap_or_else(|| b"/bin:/usr/bin".to_vec());
    let mut out = Vec::new();
    for dir in path.split(|&b| b == b':') {
        let mut full = Vec::with_capacity(dir.len() + 1 + program.len());
        full.extend_from_slice(if dir.is_empty() { b"." } else { dir });
        full.push(b'/');
        full.extend_from_slice(program);
        out.push(c_string(&full)?);
    }
    Ok(out)
}

fn c_string(bytes: &[u8]) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        let shown = String::from_utf8_lossy(bytes);
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("'{shown}' contains a NUL byte"))
    })
}

/// Raw syscall, its result or the errno: the child may not go through glibc's wrappers.
fn sys(result: libc::c_long) -> Result<libc::c_long, c_int> {
    if result == -1 {
        // SAFETY: errno of this thread (the child shares our TLS; we are suspended meanwhile).
        Err(unsafe { *libc::__errno_location() })
    } else {
        Ok(result)
    }
}

/// The child: user, folder, its own process group (and the terminal's foreground, if asked), an
/// empty signal mask, exec. Failure: recorded in the job, exit 127.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's Job, alive and untouched while the parent is suspended.
    let job = unsafe { &mut *arg.cast::<Job>() };
    // SAFETY: raw syscalls with pointers into the job and to locals.
    let outcome = unsafe { prepare(job) }.and_then(|()| unsafe { exec(job) });
    if let Err(failure) = outcome {
        job.failure = Some(failure);
    }
    127
}

/// SAFETY: in the child only (see child_main).
unsafe fn prepare(job: &Job) -> Result<(), (Stage, c_int)> {
    if let Some((uid, gid)) = job.user {
        let at = |e| (Stage::SetUser, e);
        // No supplementary groups of ours for the child (std's Command does the same as root).
        if libc::syscall(libc::SYS_getuid) == 0 {
            sys(libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>())).map_err(at)?;
        }
        sys(libc::syscall(libc::SYS_setgid, gid)).map_err(at)?;
        sys(libc::syscall(libc::SYS_setuid, uid)).map_err(at)?;
    }
    if let Some(dir) = &job.cwd {
        sys(libc::syscall(libc::SYS_chdir, dir.as_ptr())).map_err(|e| (Stage::EnterFolder, e))?;
    }
    sys(libc::syscall(libc::SYS_setpgid, 0, 0)).map_err(|e| (Stage::NewGroup, e))?;
    // A terminal (docker run -it) goes to ComfyUI's group, and only to it. Every signal is blocked
    // (inherited from PID 1), so the SIGTTOU that tcsetpgrp raises from a background group cannot
    // stop us.
    if let Some(fd) = job.notify_fd {
        // dup3 clears close-on-exec on the copy: fd 3 survives the exec, the original does not.
        let kept = if fd == NOTIFY_FD {
            libc::syscall(libc::SYS_fcntl, fd, libc::F_SETFD, 0)
        } else {
            libc::syscall(libc::SYS_dup3, fd, NOTIFY_FD, 0)
        };
        sys(kept).map_err(|e| (Stage::Exec, e))?;
    }
    let mut termios: libc::termios = std::mem::zeroed();
    if job.terminal && libc::syscall(libc::SYS_ioctl, libc::STDIN_FILENO, libc::TCGETS, &mut termios) == 0 {
        let me: libc::pid_t = libc::syscall(libc::SYS_getpid) as libc::pid_t;
        libc::syscall(libc::SYS_ioctl, libc::STDIN_FILENO, libc::TIOCSPGRP, &me);
    }
    // Dispositions are already the defaults: PID 1 reset them all at start and never sets one
    // (handlers would be reset by exec anyway; an ignored signal would not). The mask is emptied.
    let empty: u64 = 0;
    sys(libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &empty, std::ptr::null_mut::<u64>(), 8usize))
        .map_err(|e| (Stage::Exec, e))?;
    Ok(())
}

/// execvp: each candidate in turn; a file without a `#!` line runs under /bin/sh; EACCES wins
/// over a later ENOENT (glibc's rules). Returns only on failure.
/// SAFETY: in the child only (see child_main).
unsafe fn exec(job: &mut Job) -> Result<(), (Stage, c_int)> {
    let mut eacces = false;
    let mut last = libc::ENOENT;
    for path in &job.candidates {
        // execve returns only when it failed.
        libc::syscall(libc::SYS_execve, path.as_ptr(), job.argv.as_ptr(), job.envp.as_ptr());
        let errno = *libc::__errno_location();
        match errno {
            libc::ENOEXEC if job.argv.len() > 1 => {
                let script = &mut job.script_argv;
                script[0] = c"/bin/sh".as_ptr();
                script[1] = path.as_ptr();
                script[2..].copy_from_slice(&job.argv[1..]);
                libc::syscall(libc::SYS_execve, script[0], script.as_ptr(), job.envp.as_ptr());
                return Err((Stage::Exec, libc::ENOEXEC));
            }
            libc::EACCES => eacces = true,
            libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT => {}
            other => return Err((Stage::Exec, other)),
        }
        last = errno;
    }
    Err((Stage::Exec, if eacces { libc::EACCES } else { last }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(c: &[CString]) -> Vec<String> {
        c.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn candidates_follow_execvp() {
        let path = |p: &str| Some(OsString::from(p));
        assert_eq!(shown(&candidates(b"python3", path("/a:/b")).unwrap()), ["/a/python3", "/b/python3"]);
        // An empty PATH entry is the current folder; a name with a slash is never searched.
        assert_eq!(shown(&candidates(b"x", path("/a::")).unwrap()), ["/a/x", "./x", "./x"]);
        assert_eq!(shown(&candidates(b"./run.sh", path("/a")).unwrap()), ["./run.sh"]);
        assert_eq!(shown(&candidates(b"true", None).unwrap()), ["/bin/true", "/usr/bin/true"]);
        assert!(candidates(b"a\0b", None).is_err());
    }

    #[test]
    fn the_environment_drops_what_is_removed_or_set_again() {
        let argv = [OsString::from("/bin/true")];
        let set = [("COMFY_INIT_TEST_SET".to_string(), OsString::from("new"))];
        let remove = ["PATH".to_string()];
        let request = Request {
            argv: &argv,
            env_set: &set,
            env_remove: &remove,
            cwd: None,
            user: None,
            terminal: false,
            notify_fd: None,
        };
        let job = Job::new(&request).unwrap();
        let env: Vec<String> = job.envp[..job.envp.len() - 1]
            .iter()
            // SAFETY: the entries point into `environ` or the job's own strings, alive here.
            .map(|&p| unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned())
            .collect();
        assert!(!env.iter().any(|e| e.starts_with("PATH=")), "{env:?}");
        assert_eq!(env.iter().filter(|e| e.starts_with("COMFY_INIT_TEST_SET=")).count(), 1);
        assert_eq!(env.last().map(String::as_str), Some("COMFY_INIT_TEST_SET=new"));
        assert!(job.envp.last().unwrap().is_null() && job.argv.last().unwrap().is_null());
    }
}
