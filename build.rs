//! Links the unwinder statically (issue 17). std asks for `-lgcc_s` although a release build
//! aborts on panic: loading libgcc_s.so.1 and binding its symbols was a tenth of PID 1's start-up
//! (callgrind: 26k of 332k instructions) and 230 KiB of its resident memory. A folder holding
//! GCC's static unwinder under that name, searched first, makes the linker take it instead,
//! as `gcc -static-libgcc` does for C. No C compiler or no libgcc_eh.a: the usual dynamic link.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let Ok(out) = Command::new(&cc).arg("-print-file-name=libgcc_eh.a").output() else { return };
    let eh = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !eh.is_absolute() || !eh.is_file() {
        return; // a bare name back means GCC does not have it
    }
    let dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("static-unwinder");
    let link = dir.join("libgcc_s.a");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::remove_file(&link);
    if std::os::unix::fs::symlink(&eh, &link).is_ok() {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
}
