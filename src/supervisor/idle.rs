//! Start-up is over: the code that ran only for it (settings, the GPU check, the companion's
//! install, logging's set-up) need not stay in PID 1's resident set for the container's life.
//! comfy-init is linked statically, so its code is file-backed pages of its own, not a libc
//! shared with every other process as tini's is: left mapped, about 1.4 MiB of it counts in its
//! RSS while it sleeps (issue 23: 1.6x tini's). Dropping the text from our page tables (the page
//! cache keeps it) leaves what the loop runs to come back on its first use, a few minor faults,
//! once.

/// Drops this binary's read-only start (its headers and relocation tables) and its text from our
/// page tables: one system call, nothing read. Nothing there is ever written (no text
/// relocations; a static PIE relocates only its data, which lies after `etext`), so nothing is
/// lost: a later access reads the file's pages again.
pub fn release_startup_text() {
    extern "C" {
        // Both defined by the linker (GNU ld and lld): where the first segment of the binary
        // starts, and where its text ends.
        static __executable_start: u8;
        static etext: u8;
    }
    // Only the symbols' addresses are taken, never their contents.
    let (start, end) = (&raw const __executable_start as usize, &raw const etext as usize);
    // SAFETY: [start, end) lies in the binary's own read-only mappings (madvise wants the start
    // page-aligned, which the first segment is). MADV_DONTNEED on private file pages that were
    // never written only unmaps them; every later access faults the same content back in.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn releasing_the_text_leaves_the_program_running() {
        super::release_startup_text();
        // Code that ran before runs again (faulted back in from the file).
        assert_eq!(format!("{}", 6 * 7), "42");
        super::release_startup_text();
    }
}
