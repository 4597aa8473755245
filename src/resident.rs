//! PID 1's resident code, trimmed before the child starts (issue 17). Start-up (settings, GPU,
//! credentials) touches about 1 MB of this binary's code and read-only data, which would
//! otherwise stay mapped for the container's life.
//!
//! `MADV_DONTNEED` on our own read-only segments drops those mappings; the page cache keeps the
//! pages, and what runs later is mapped again on its first use, from the file, as after any
//! eviction under memory pressure (the kernel may drop clean text pages at any time, so this
//! adds no new way to fail). Only segments without write permission are touched: their content
//! is the file's (no text relocations), unlike RELRO data, which the loader relocated in memory.
//!
//! The hot text is kept: scripts/build.sh lays out the functions that PID 1 runs after start-up
//! (scripts/hot-text.txt: the loop, a forwarded signal, a reap, a stop, the exit) together,
//! between the two markers below. Those pages stay mapped, so an event maps nothing back: a
//! fault maps 64 KiB around it (fault-around), and the scattered functions of a stop used to cost
//! six such faults, and their pages made the exit unmap more. A build without that order (cargo
//! alone, or a linker other than lld) leaves the markers side by side: nothing beyond their page
//! is kept, and the loop's code is mapped back on use, as before.

use std::ops::Range;

/// The first function of the hot text (scripts/build.sh). Its body differs from the end marker's
/// so that no optimisation folds the two into one address.
#[no_mangle]
#[inline(never)]
pub extern "C" fn comfy_init_hot_text_begin() -> u32 {
    0x686f74
}

/// The last function of the hot text.
#[no_mangle]
#[inline(never)]
pub extern "C" fn comfy_init_hot_text_end() -> u32 {
    0x656e64
}

/// More than the hot text can be: markers this far apart were not laid out by the order.
const MAX_HOT_TEXT: usize = 512 * 1024;

/// What the release keeps, besides whole pages shared with a writable segment.
struct Kept {
    /// The hot text (empty when it was not laid out).
    hot: Range<usize>,
    /// From here to the end of its segment: `_fini` and what the linker puts after .text (glibc's
    /// `.iplt`, the stubs through which a static binary calls memcpy and the like), which the
    /// exit and every log line run and no symbol order can move.
    tail: usize,
}

extern "C" {
    /// The C runtime's (crti.o) finaliser, which exit calls.
    fn _fini();
}

/// Drops the mappings of this executable's read-only segments, except the hot text and the
/// tail, whose pages are mapped now instead (nothing that PID 1 does later then waits for a
/// fault). Errors are ignored: it only saves memory and faults.
pub fn release_startup_pages() {
    let kept = Kept { hot: hot_text(page_size()), tail: _fini as *const () as usize };
    // SAFETY: dl_iterate_phdr with a callback that only reads the headers it is given and the
    // `Kept` passed by pointer (alive for the call), makes madvise calls on page ranges inside
    // the main program's non-writable PT_LOAD segments, and reads a byte of the pages it keeps.
    unsafe {
        libc::dl_iterate_phdr(Some(release_readonly_segments), (&kept as *const Kept).cast_mut().cast());
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize
}

/// The whole pages from the begin marker to the end marker; empty when they were not laid out.
fn hot_text(page: usize) -> Range<usize> {
    let begin = comfy_init_hot_text_begin as *const () as usize;
    let end = comfy_init_hot_text_end as *const () as usize + 16; // the end marker's own bytes
    if end <= begin || end - begin > MAX_HOT_TEXT {
        return 0..0;
    }
    begin / page * page..end.div_ceil(page) * page
}

/// `range` without both `holes` (empty, overlapping or outside it): what is left, in order.
fn without(range: Range<usize>, holes: [Range<usize>; 2]) -> [Range<usize>; 3] {
    let [first, second] = if holes[0].start <= holes[1].start { holes } else { [holes[1].clone(), holes[0].clone()] };
    let clamped = |start: usize, end: usize| {
        let start = start.clamp(range.start, range.end);
        start..end.clamp(start, range.end)
    };
    [clamped(range.start, first.start), clamped(first.end, second.start), clamped(first.end.max(second.end), range.end)]
}

unsafe extern "C" fn release_readonly_segments(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    kept: *mut libc::c_void,
) -> libc::c_int {
    let info = &*info;
    let kept = &*(kept as *const Kept);
    let page = page_size();
    let headers = std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum));
    for header in headers.iter().filter(|h| h.p_type == libc::PT_LOAD && h.p_flags & libc::PF_W == 0) {
        let start = info.dlpi_addr as usize + header.p_vaddr as usize;
        let end = start + header.p_memsz as usize;
        // Whole pages inside the segment only: a page shared with a writable neighbour is kept.
        let first = start.div_ceil(page) * page;
        let last = (end / page * page).max(first);
        let tail = if (start..end).contains(&kept.tail) { kept.tail / page * page..end } else { 0..0 };
        for part in without(first..last, [kept.hot.clone(), tail.clone()]) {
            if !part.is_empty() {
                libc::madvise(part.start as *mut libc::c_void, part.len(), libc::MADV_DONTNEED);
            }
        }
        for page in kept.hot.clone().chain(tail).step_by(page).filter(|p| (start..end).contains(p)) {
            // A read of a code byte has no effect but to map its page.
            std::ptr::read_volatile(page as *const u8);
        }
    }
    1 // the first object is the main program: stop there
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_split_a_range_and_holes_outside_or_empty_leave_it_whole() {
        let none = 0..0;
        assert_eq!(without(0..100, [20..30, none.clone()]), [0..0, 0..20, 30..100]);
        assert_eq!(without(0..100, [none.clone(), 20..30]), [0..0, 0..20, 30..100]);
        assert_eq!(without(0..100, [60..70, 20..30]), [0..20, 30..60, 70..100]);
        assert_eq!(without(10..100, [none.clone(), none.clone()]), [10..10, 10..10, 10..100]);
        assert_eq!(without(0..100, [200..300, none.clone()]), [0..0, 0..100, 100..100]);
        assert_eq!(without(50..100, [0..60, 90..100]), [50..50, 60..90, 100..100]);
        // overlapping holes: the inner one must not give back what the outer one took
        assert_eq!(without(0..100, [10..50, 20..30]), [0..10, 50..50, 50..100]);
        assert_eq!(without(50..100, [0..200, 60..70]), [50..50, 100..100, 100..100]);
        for parts in [without(0..100, [10..50, 20..30]), without(5..10, [0..200, 300..400])] {
            assert!(parts.iter().all(|p| p.start <= p.end), "{parts:?}");
        }
    }
}
