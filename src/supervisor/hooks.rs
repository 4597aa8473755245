//! Pre-start hooks: the executables in COMFY_INIT_PRE_START (default `/config/pre-start.d`; several
//! folders separated by ':', a later folder's hook replacing an earlier one of the same name), run
//! in name order before ComfyUI, once per container start (a token-change restart runs none),
//! as ComfyUI's user. Each is a child of PID 1 in its own process group, like ComfyUI: reaped,
//! stopped within the grace by `docker stop`. Its output reaches the log line by line, prefixed
//! by its name, through `comfy-init __prefix` (a small parent in the hook's group).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::child::ChildSpec;
use crate::cli::PREFIX;

/// The hooks' folder exists but cannot be listed.
#[derive(Debug, thiserror::Error)]
#[error("COMFY_INIT_PRE_START={}: cannot read it ({source})", dir.display())]
pub struct ListError {
    pub dir: PathBuf,
    pub source: std::io::Error,
}

/// comfy-init cannot name itself to run a hook under `__prefix`.
#[derive(Debug, thiserror::Error)]
#[error("cannot find comfy-init's own path: {0}")]
pub struct NoSelf(#[source] std::io::Error);

/// The executables in `dirs`, in name order. A hook in a later folder replaces one of the same
/// name in an earlier folder: the image's own hooks come first, the user's (in /config) can
/// replace them.
pub fn list(dirs: &[PathBuf]) -> Result<Vec<PathBuf>, ListError> {
    let mut by_name = std::collections::BTreeMap::new();
    for dir in dirs {
        for hook in list_one(dir)? {
            by_name.insert(name(&hook), hook);
        }
    }
    Ok(by_name.into_values().collect())
}

/// The executables in `dir`, in name order; none when the folder does not exist. Hidden files,
/// folders and files without an execute bit are left out (a README can sit beside the hooks).
fn list_one(dir: &Path) -> Result<Vec<PathBuf>, ListError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ListError { dir: dir.to_path_buf(), source }),
    };
    let mut hooks: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .collect();
    hooks.sort();
    Ok(hooks)
}

pub fn name(hook: &Path) -> String {
    hook.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// How hook `hook` is started: like ComfyUI (its user, folder, environment), under `__prefix`.
pub fn spec(hook: &Path, comfyui: &ChildSpec) -> Result<ChildSpec, NoSelf> {
    let me = std::env::current_exe().map_err(NoSelf)?;
    let argv = vec![me.into(), PREFIX.into(), name(hook).into(), hook.into()];
    Ok(ChildSpec { argv, terminal: false, ..comfyui.clone() })
}

/// `comfy-init __prefix NAME COMMAND...`: runs COMMAND with its stdout and stderr into one pipe,
/// writes each line to our stdout as `[pre-start NAME] line`, and exits with its status (128+N
/// for a signal). It shares the hook's process group, so a stop reaches both.
pub fn prefix(name: &str, command: &[OsString]) -> u8 {
    let tag = format!("[pre-start {name}]");
    let Some((program, args)) = command.split_first() else { return 2 };
    let (read, write) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{tag} cannot make a pipe: {e}");
            return 1;
        }
    };
    let spawned = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(write.try_clone().map(std::process::Stdio::from).unwrap_or_else(|_| std::process::Stdio::null()))
        .stderr(write)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            println!("{tag} cannot run {}: {e}", program.to_string_lossy());
            return if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
        }
    };
    // Lines until the hook itself exits: what it left in the background may hold the pipe open
    // for as long as it lives (PID 1 stops those), so EOF is not awaited.
    let mut printer = Printer { tag, pending: Vec::new() };
    let mut read = read;
    let mut drained = 0;
    loop {
        let exited = child.try_wait().ok().flatten();
        let mut fds = [nix::poll::PollFd::new(read.as_fd(), nix::poll::PollFlags::POLLIN)];
        let timeout = if exited.is_some() { 0u16 } else { 50 };
        let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(timeout)).unwrap_or(0) > 0;
        let mut buf = [0u8; 8192];
        let n = if ready { read.read(&mut buf).unwrap_or(0) } else { 0 };
        printer.feed(&buf[..n]);
        if let Some(status) = exited {
            drained += 1;
            // What was written before the exit, and no more than that much from a chatty leftover.
            if n == 0 || drained > 64 {
                printer.flush();
                use std::os::unix::process::ExitStatusExt;
                return status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)) as u8;
            }
        } else if ready && n == 0 {
            // EOF while the hook runs (it closed its output): just wait for it.
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Writes complete lines with the hook's tag; a last line without its newline at the end.
struct Printer {
    tag: String,
    pending: Vec<u8>,
}

impl Printer {
    fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            self.write(&line[..line.len() - 1]);
        }
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.write(&line);
        }
    }

    fn write(&self, line: &[u8]) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(format!("{} ", self.tag).as_bytes());
        let _ = out.write_all(line);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_are_the_executables_in_name_order() {
        let dir = std::env::temp_dir().join(format!("hooks-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a-folder")).unwrap();
        for (name, mode) in [("20-b", 0o755), ("10-a", 0o700), ("README", 0o644), (".hidden", 0o755)] {
            std::fs::write(dir.join(name), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let names: Vec<String> = list(std::slice::from_ref(&dir)).unwrap().iter().map(|p| name(p)).collect();
        assert_eq!(names, ["10-a", "20-b"]);
        assert_eq!(list(&[dir.join("missing")]).unwrap(), Vec::<PathBuf>::new());
        // A second folder: merged in name order, its 20-b replacing the first one's.
        let user = dir.join("a-folder");
        for name in ["20-b", "15-c"] {
            std::fs::write(user.join(name), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(user.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let merged = list(&[dir.clone(), user.clone()]).unwrap();
        assert_eq!(merged, [dir.join("10-a"), user.join("15-c"), user.join("20-b")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
