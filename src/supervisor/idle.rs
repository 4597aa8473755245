//! Start-up is over: the code that ran only for it (settings, the GPU check, the companion's
//! install, logging's set-up) need not stay in PID 1's resident set for the container's life.
//! comfy-init is linked statically, so its code is its own file-backed pages, not a libc shared
//! with every other process as tini's is: left mapped, about 1.4 MiB of it counts in its RSS
//! while it sleeps (issue 23: 1.6x tini's). Unmapping the text drops those pages from our page
//! tables (the page cache keeps them); what the loop runs comes back on its first use, a few
//! minor faults, once.

use std::os::raw::c_void;

/// Unmaps this binary's text (the executable mapping this function lives in). Text is never
/// written (no text relocations), so nothing is lost: a later access reads the file again. On any
/// doubt (no /proc, an unexpected line) it does nothing.
pub fn release_startup_text() {
    let here = release_startup_text as fn() as usize;
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return };
    let Some((start, end)) = maps.lines().find_map(|line| text_containing(line, here)) else { return };
    // SAFETY: [start, end) is a whole mapping of ours, read and execute only, backed by the file:
    // MADV_DONTNEED only drops its pages from our page tables; every later access faults them
    // back in from the page cache with the same content.
    unsafe { libc::madvise(start as *mut c_void, end - start, libc::MADV_DONTNEED) };
}

/// The range of a `/proc/self/maps` line that is a private read+execute file mapping holding
/// `address`.
fn text_containing(line: &str, address: usize) -> Option<(usize, usize)> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let (start, end) = (usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?);
    let perms = fields.next()?;
    (perms == "r-xp" && (start..end).contains(&address) && fields.nth(3).is_some()).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executable_file_mapping_that_holds_the_address_is_chosen() {
        let text = "55d0c0a00000-55d0c0b5a000 r-xp 00012000 fd:01 1234   /usr/local/bin/comfy-init";
        assert_eq!(text_containing(text, 0x55d0c0a00010), Some((0x55d0c0a00000, 0x55d0c0b5a000)));
        assert_eq!(text_containing(text, 0x55d0c0b5a000), None, "end is outside");
        let rodata = "55d0c0b5a000-55d0c0bb9000 r--p 0016c000 fd:01 1234   /usr/local/bin/comfy-init";
        assert_eq!(text_containing(rodata, 0x55d0c0b5a010), None, "not text");
        let written = "55d0c0a00000-55d0c0b5a000 rwxp 00000000 00:00 0";
        assert_eq!(text_containing(written, 0x55d0c0a00010), None);
        assert_eq!(text_containing("garbage", 1), None);
    }

    #[test]
    fn releasing_the_text_leaves_the_program_running() {
        release_startup_text();
        assert_eq!(text_containing("1000-2000 r-xp 0 0:0 1 /x", 0x1800), Some((0x1000, 0x2000)));
    }
}
