//! libjpeg's system-dependent memory functions (`jmemsys.h`), in place of
//! the library's `jmemnobs.c` (whose object the linker then leaves out:
//! every symbol it defines is defined here first).
//!
//! Why: a transcoded photograph holds every DCT coefficient at once, about
//! 2 bytes per coefficient, so a 20-megapixel 4:4:4 JPEG's arrays take
//! 170 MB. `malloc` serves blocks over 32 MB with a fresh `mmap` every
//! time, and the kernel then faults them in 4 KB at a time: a fifth of such
//! an image's time went to page faults. Here large blocks are mapped on 2 MB boundaries and
//! marked for transparent huge pages, so where the kernel allows them
//! (`/sys/kernel/mm/transparent_hugepage/enabled` set to `madvise` or
//! `always`) they fault in 2 MB at a time; where it does not, they behave
//! as `malloc`'s own mappings. Nothing is kept after it is freed: the
//! engine's memory admission (`memory.rs`) counts on that.
//!
//! Everything else is `jmemnobs.c`'s: small blocks from `malloc`, no
//! backing store, the memory limit libjpeg is given enforced the same way.

use std::ffi::{c_long, c_void};
use std::ptr;

use mozjpeg_sys::{JERR_NO_BACKING_STORE, jpeg_common_struct};

const HUGE_PAGE: usize = 2 << 20;

/// Blocks from this size up get their own mapping; smaller ones come from
/// `malloc`, which keeps and reuses them. The size from which glibc's
/// `malloc` maps every block afresh anyway (its largest mmap threshold on
/// 64-bit systems), so that nothing `malloc` would have reused is mapped.
const MAPPED_FROM: usize = 32 << 20;

fn mapped_len(size: usize) -> usize {
    size.div_ceil(HUGE_PAGE) * HUGE_PAGE
}

/// A zeroed mapping of `mapped_len(size)` bytes starting on a 2 MB
/// boundary, marked for huge pages; null when the system refuses it.
fn map(size: usize) -> *mut c_void {
    let len = mapped_len(size);
    let Some(over) = len.checked_add(HUGE_PAGE) else {
        return ptr::null_mut();
    };
    // SAFETY: a new private anonymous mapping; no existing memory is named.
    let raw = unsafe {
        libc::mmap(
            ptr::null_mut(),
            over,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return ptr::null_mut();
    }
    let start = raw as usize;
    let head = start.next_multiple_of(HUGE_PAGE) - start;
    let tail = HUGE_PAGE - head;
    // SAFETY: `raw` maps `over` bytes; the head before the aligned start
    // and the tail after `len` aligned bytes are whole pages of it (mmap
    // returns page-aligned addresses, and HUGE_PAGE is a multiple of the
    // page size), unmapped once each and never handed out.
    unsafe {
        let aligned = raw.cast::<u8>().add(head);
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap(aligned.add(len).cast(), tail);
        }
        // Advice only: refused on kernels without transparent huge pages.
        libc::madvise(aligned.cast(), len, libc::MADV_HUGEPAGE);
        aligned.cast()
    }
}

/// # Safety
/// Called by libjpeg only, as `jmemsys.h` declares it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn jpeg_get_small(
    _cinfo: *mut jpeg_common_struct,
    size: usize,
) -> *mut c_void {
    // SAFETY: plain `malloc`, as `jmemnobs.c`.
    unsafe { libc::malloc(size) }
}

/// # Safety
/// `object` came from `jpeg_get_small` and is freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn jpeg_free_small(
    _cinfo: *mut jpeg_common_struct,
    object: *mut c_void,
    _size: usize,
) {
    // SAFETY: the caller's promise.
    unsafe { libc::free(object) }
}

/// # Safety
/// Called by libjpeg only, as `jmemsys.h` declares it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn jpeg_get_large(
    _cinfo: *mut jpeg_common_struct,
    size: usize,
) -> *mut c_void {
    if size >= MAPPED_FROM {
        map(size)
    } else {
        // SAFETY: plain `malloc`, as `jmemnobs.c`.
        unsafe { libc::malloc(size) }
    }
}

/// # Safety
/// `object` came from `jpeg_get_large` with the same `size` (libjpeg's
/// memory manager frees each large block with the size it asked for), and
/// is freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn jpeg_free_large(
    _cinfo: *mut jpeg_common_struct,
    object: *mut c_void,
    size: usize,
) {
    // SAFETY: the caller's promise: a mapping of `mapped_len(size)` bytes
    // from `map`, or a `malloc` block, by the same size test.
    unsafe {
        if size >= MAPPED_FROM {
            libc::munmap(object, mapped_len(size));
        } else {
            libc::free(object);
        }
    }
}

/// # Safety
/// `cinfo` is a live codec with its memory manager.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn jpeg_mem_available(
    cinfo: *mut jpeg_common_struct,
    _min_bytes_needed: usize,
    max_bytes_needed: usize,
    already_allocated: usize,
) -> usize {
    // SAFETY: the caller's promise.
    let limit = unsafe { (*(*cinfo).mem).max_memory_to_use };
    match usize::try_from(limit) {
        Ok(0) | Err(_) => max_bytes_needed,
        Ok(limit) => limit.saturating_sub(already_allocated),
    }
}

/// There is no backing store: libjpeg's limit is an error, not a spill to
/// disk.
///
/// # Safety
/// `cinfo` is a live codec whose error manager unwinds.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn jpeg_open_backing_store(
    cinfo: *mut jpeg_common_struct,
    _info: *mut c_void,
    _total_bytes_needed: c_long,
) {
    // SAFETY: the caller's promise; `error_exit` does not return.
    unsafe {
        let err = &mut *(*cinfo).err;
        err.msg_code = JERR_NO_BACKING_STORE;
        if let Some(exit) = err.error_exit {
            exit(&mut *cinfo);
        }
    }
}

/// # Safety
/// Called by libjpeg only.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn jpeg_mem_init(_cinfo: *mut jpeg_common_struct) -> c_long {
    0
}

/// # Safety
/// Called by libjpeg only.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn jpeg_mem_term(_cinfo: *mut jpeg_common_struct) {}

#[cfg(test)]
mod tests {
    use super::super::libjpeg::{Decompress, Limits};
    use super::super::transcode::{Chroma, transcode};
    use super::*;

    /// A codec whose arrays exceed the memory it is given fails with
    /// libjpeg's own error (there is no backing store to spill to), and the
    /// same codec with room enough succeeds.
    #[test]
    fn a_codec_over_its_memory_limit_fails_cleanly() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/photos/coffee.jpg");
        let input = std::fs::read(path).expect("example photo");
        for (budget, fits) in [(64 << 10, false), (64 << 20, true)] {
            let (mut codec, header) =
                Decompress::new(&input, 64 << 20, Limits::NONE).expect("header");
            codec.set_memory_budget(budget);
            let chroma = if header.is_ycbcr_420() {
                Chroma::Keep
            } else {
                Chroma::HalveBoth
            };
            let result = transcode(
                codec,
                50,
                chroma,
                0,
                None,
                f32::from(crate::compress::DEFAULT_RDO_LAMBDA),
                Limits::NONE,
            );
            match result {
                Ok(Ok(_)) => assert!(fits, "{budget} bytes sufficed"),
                Ok(Err(_)) => panic!("no transform was asked for"),
                Err(e) => {
                    assert!(!fits, "{budget} bytes: {e}");
                    assert!(e.contains("Backing store not supported"), "{e}");
                }
            }
        }
    }

    /// Blocks on both sides of the mapping threshold are writable from end
    /// to end, large ones start on a huge-page boundary, and each is freed
    /// the way it was allocated.
    #[test]
    fn large_blocks_are_whole_aligned_and_freed() {
        for size in [
            1,
            4096,
            MAPPED_FROM - 1,
            MAPPED_FROM,
            MAPPED_FROM + 1,
            3 * HUGE_PAGE + 17,
        ] {
            // SAFETY: as libjpeg calls them: allocate, use within `size`,
            // free once with the same size. No codec is needed for these.
            unsafe {
                let p = jpeg_get_large(ptr::null_mut(), size).cast::<u8>();
                assert!(!p.is_null(), "{size} bytes");
                if size >= MAPPED_FROM {
                    assert_eq!(p as usize % HUGE_PAGE, 0, "{size} bytes");
                }
                ptr::write_bytes(p, 0xA5, size);
                assert_eq!(*p.add(size - 1), 0xA5);
                jpeg_free_large(ptr::null_mut(), p.cast(), size);
            }
        }
    }
}
