//! PID 1's resident code, trimmed once the child runs (issue 17). Start-up (settings, GPU,
//! credentials, the first spawn) touches about 1 MB of this binary's code and read-only data,
//! which would otherwise stay mapped for the container's life: dropping it took the static
//! binary's idle VmRSS from 1.8 MB to 1.1-1.6 MB (0.8-1.2x tini).
//!
//! `MADV_DONTNEED` on our own read-only segments drops those mappings; the page cache keeps the
//! pages, and what the loop runs later is mapped again on its first use (64 KiB a fault), from
//! the file, as after any eviction under memory pressure (the kernel may drop clean text pages
//! at any time, so this adds no new way to fail). Only segments without write permission are
//! touched: their content is the file's (no text relocations), unlike RELRO data, which the
//! loader relocated in memory.

/// Drops the mappings of this executable's read-only segments. Errors are ignored: it only
/// saves memory.
pub fn release_startup_pages() {
    // SAFETY: dl_iterate_phdr with a callback that only reads the headers it is given and makes
    // madvise calls on page ranges inside the main program's non-writable PT_LOAD segments.
    unsafe {
        libc::dl_iterate_phdr(Some(release_readonly_segments), std::ptr::null_mut());
    }
}

unsafe extern "C" fn release_readonly_segments(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    _data: *mut libc::c_void,
) -> libc::c_int {
    let info = &*info;
    let page = libc::sysconf(libc::_SC_PAGESIZE).max(4096) as usize;
    let headers = std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum));
    for header in headers.iter().filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_W == 0) {
        let start = info.dlpi_addr as usize + header.p_vaddr as usize;
        let end = start + header.p_memsz as usize;
        // Whole pages inside the segment only: a page shared with a writable neighbour is kept.
        let (first, last) = (start.div_ceil(page) * page, end / page * page);
        if last > first {
            libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_DONTNEED);
        }
    }
    1 // the first object is the main program: stop there
}
