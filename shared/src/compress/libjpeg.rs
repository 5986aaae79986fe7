//! A small safe layer over libjpeg-turbo's API, as built by `mozjpeg-sys`
//! and used here in its libjpeg-turbo profile (`JCP_FASTEST`: baseline,
//! Annex K tables, no trellis): reading a JPEG's header, decoding it to
//! pixels, encoding pixels, and the owning types the DCT-domain transcoder
//! (`transcode.rs`) works on.
//!
//! # Why this is sound
//!
//! * **Ownership.** libjpeg keeps pointers into four things for as long as
//!   a codec lives: the codec struct itself, its error manager, its
//!   destination manager and its progress monitor. Each is allocated once by
//!   `Box`, turned into a raw pointer at once (`Box::leak`), reached only
//!   through that pointer, and freed in `Drop` by `Box::from_raw` after
//!   `jpeg_destroy_*`. No `Box` or `&mut` to them is ever moved or kept
//!   while libjpeg holds its pointer, so moving the Rust owner invalidates
//!   nothing, and every pointer handed to libjpeg carries the provenance of
//!   the whole allocation (the destination manager's callbacks get back a
//!   pointer to the whole `VecDestination`, not to its first field).
//! * **Errors.** libjpeg reports a fatal error through `error_exit`, which
//!   must not return. Ours unwinds: the C library is compiled with
//!   `-fexceptions` (`mozjpeg-sys`'s `unwinding` feature), the callbacks
//!   and the library's functions are declared `extern "C-unwind"`, and every
//!   entry point runs libjpeg inside `guarded`, which turns the unwind back
//!   into an `Err`. libjpeg's own memory lives in pools that
//!   `jpeg_destroy_*` frees, so an unwind leaks nothing. Under
//!   `panic = "abort"` the unwind would abort the process instead, so that
//!   configuration does not compile.
//! * **Buffers.** Every buffer libjpeg writes into is sized from libjpeg's
//!   own figures (`output_width × output_components` per row,
//!   `JMSG_LENGTH_MAX` for a message); every buffer it reads from outlives
//!   the codec (`Decompress<'a>` borrows its input).
//! * **Layouts.** The structs come from `mozjpeg-sys`, whose tests check
//!   them against the C headers. The one struct that binding gets wrong,
//!   `jpeg_transform_info`, is never declared in Rust: a C shim built
//!   against `transupp.h` allocates it (see `transcode.rs`).

#[cfg(panic = "abort")]
compile_error!(
    "imgproc's libjpeg layer turns libjpeg's fatal errors into Rust unwinds; \
     with panic = \"abort\" every corrupt image would abort the process"
);

use std::ffi::{c_char, c_int, c_long, c_uint};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::ptr::{self, NonNull};

use mozjpeg_sys::{
    J_COLOR_SPACE, J_INT_PARAM, JCP_FASTEST, JWRN_BOGUS_PROGRESSION, JWRN_EXTRANEOUS_DATA,
    JWRN_HIT_MARKER, JWRN_HUFF_BAD_CODE, JWRN_JPEG_EOF, JWRN_MUST_RESYNC, jpeg_c_set_int_param,
    jpeg_common_struct, jpeg_compress_struct, jpeg_create_compress, jpeg_create_decompress,
    jpeg_decompress_struct, jpeg_destination_mgr, jpeg_destroy_compress, jpeg_destroy_decompress,
    jpeg_error_mgr, jpeg_finish_compress, jpeg_finish_decompress, jpeg_progress_mgr,
    jpeg_read_header, jpeg_read_scanlines, jpeg_resync_to_restart, jpeg_save_markers,
    jpeg_set_defaults, jpeg_set_quality, jpeg_source_mgr, jpeg_start_compress,
    jpeg_start_decompress, jpeg_std_error, jpeg_write_icc_profile, jpeg_write_raw_data,
    jpeg_write_scanlines,
};

use super::cpu::CpuDeadline;

/// A fatal libjpeg error, carried by the unwind from `error_exit`.
struct Fatal(String);

/// Runs `f`, turning a libjpeg error into `Err(message)`. Any other panic is
/// a bug and keeps unwinding.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| match payload.downcast::<Fatal>() {
        Ok(fatal) => fatal.0,
        Err(other) => resume_unwind(other),
    })
}

/// Fails the libjpeg call in progress with `message`, as libjpeg's own
/// errors do: for Rust code that libjpeg calls back (its methods replaced
/// by ours), inside `guarded`.
pub(super) fn fail(message: &str) -> ! {
    resume_unwind(Box::new(Fatal(message.to_string())))
}

/// `JMSG_LENGTH_MAX` of `jerror.h`: the buffer `format_message` fills.
const JMSG_LENGTH_MAX: usize = 200;

/// `format_message` as C declares it: the binding's type says `&[u8; 80]`,
/// shorter than what the function writes and shared where it is written.
type FormatMessage = unsafe extern "C-unwind" fn(*mut jpeg_common_struct, *mut c_char);

/// The text of the message whose code and parameters are in `cinfo.err`.
///
/// # Safety
/// `cinfo.err` points at an error manager set up by `jpeg_std_error`.
unsafe fn message(cinfo: &mut jpeg_common_struct) -> String {
    let mut buffer = [0u8; JMSG_LENGTH_MAX];
    // SAFETY: the caller guarantees `err`. `format_message` is libjpeg's own
    // (`jpeg_std_error` installed it): it takes `(j_common_ptr, char *)` and
    // writes at most `JMSG_LENGTH_MAX` bytes, NUL included (`snprintf`).
    // Calling it through `FormatMessage` is calling it with its C signature:
    // thin pointers are ABI-compatible whatever they point to.
    unsafe {
        if let Some(format) = (*cinfo.err).format_message {
            let format: FormatMessage = std::mem::transmute(format);
            format(cinfo, buffer.as_mut_ptr().cast());
        }
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

/// libjpeg's fatal-error hook: unwinds to the nearest `guarded`.
///
/// # Safety
/// Called by libjpeg only, with the codec whose error manager this is.
unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    // SAFETY: libjpeg calls this with a codec set up by `ErrorManager`.
    let text = unsafe { message(cinfo) };
    resume_unwind(Box::new(Fatal(text)))
}

/// Warnings that mean picture data was lost: libjpeg goes on and fills
/// what it could not decode with grey or zeros, which must never pass for
/// a converted image. A premature end of the file or of a scan's data, a
/// corrupt Huffman code, a lost restart marker, and a progression that
/// repeats or skips refinements (also how a file of thousands of scans
/// makes the decoder redo its work) fail the image instead. The rest —
/// odd JFIF versions or ICC chunks, sequential scans with odd parameters —
/// leave the picture whole and stay warnings.
const FATAL_WARNINGS: [c_int; 5] = [
    JWRN_JPEG_EOF,
    JWRN_HIT_MARKER,
    JWRN_HUFF_BAD_CODE,
    JWRN_MUST_RESYNC,
    JWRN_BOGUS_PROGRESSION,
];

/// Bytes the decoder may find unread after a scan's data. libjpeg-turbo's
/// fast Huffman decoder reads a corrupt code as a zero without a warning,
/// so corrupt data shows as a decoder out of step with the data: it runs
/// out early (`JWRN_HIT_MARKER`) or stops with data left over
/// (`JWRN_EXTRANEOUS_DATA`). A byte or two of padding before the
/// end-of-image marker is common from some encoders and harmless; more is
/// corruption. Between header segments, stray bytes are harmless.
const MAX_PADDING_AFTER_SCAN: c_int = 16;

/// `DSTATE_INHEADER` of `jpegint.h`: reading the header, no scan yet.
const DSTATE_INHEADER: c_int = 201;

/// libjpeg's warning and trace hook: see `FATAL_WARNINGS`.
///
/// # Safety
/// Called by libjpeg only, with the codec whose error manager this is.
unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    if level >= 0 {
        return;
    }
    // SAFETY: `err` was set by `ErrorManager::new` and outlives the codec;
    // for `JWRN_EXTRANEOUS_DATA` libjpeg sets the first integer parameter
    // to the count of bytes skipped.
    let (code, skipped) = unsafe {
        let err = &mut *cinfo.err;
        err.num_warnings += 1;
        (err.msg_code, (*err.msg_parm.i())[0])
    };
    let after_a_scan = cinfo.is_decompressor != 0 && cinfo.global_state > DSTATE_INHEADER;
    if FATAL_WARNINGS.contains(&code)
        || (code == JWRN_EXTRANEOUS_DATA && after_a_scan && skipped > MAX_PADDING_AFTER_SCAN)
    {
        // SAFETY: as above.
        let text = unsafe { message(cinfo) };
        resume_unwind(Box::new(Fatal(text)))
    }
}

/// What one image may cost libjpeg, checked as it works.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Scans a JPEG may have; a decoder redoes work for each, so a file of
    /// thousands of tiny scans would take minutes.
    pub max_scans: u32,
    pub deadline: Option<CpuDeadline>,
}

impl Limits {
    /// No deadline, and the engine's scan limit.
    pub const NONE: Limits = Limits {
        max_scans: MAX_SCANS,
        deadline: None,
    };
}

/// The most scans a JPEG may have. Encoders write 1 (baseline) to about a
/// dozen (libjpeg's and mozjpeg's progressive scripts, Photoshop's 3–5
/// "progressive scans"); nothing real comes near 100.
pub const MAX_SCANS: u32 = 100;

/// libjpeg's progress monitor, with the image's limits. `mgr` comes first:
/// libjpeg holds a pointer to the whole, made by `Box::leak`.
#[repr(C)]
struct Progress {
    mgr: jpeg_progress_mgr,
    limits: Limits,
    calls: u32,
    /// Whether the entropy decoder has been chosen (see `progress_monitor`),
    /// and whether it is the engine's.
    decoder_chosen: bool,
    own_decoder: bool,
}

/// `DSTATE_PRELOAD` and `DSTATE_RDCOEFS` of `jpegint.h`: a decompressor
/// whose modules exist, reading a multi-scan file in
/// `jpeg_start_decompress` or the coefficients in `jpeg_read_coefficients`.
const DSTATE_PRELOAD: c_int = 203;
const DSTATE_RDCOEFS: c_int = 209;

unsafe extern "C-unwind" {
    /// `entropy_decoder_shim.c`: puts the engine's Huffman decoder
    /// (`entropy_decoder.rs`) in place of libjpeg's where it can.
    fn imgproc_use_own_entropy_decoder(cinfo: *mut jpeg_decompress_struct) -> c_int;
}

/// The monitor's type as C declares it (`void (*)(j_common_ptr)`); the
/// binding's says `&mut jpeg_common_struct`, a reference too narrow to
/// reach the decompressor's fields behind the common ones.
type ProgressMonitor = unsafe extern "C-unwind" fn(*mut jpeg_common_struct);

/// Called by libjpeg at least once per row of MCUs of every pass and scan,
/// decoding and encoding: where a scan limit and a deadline can stop it.
/// Its first call while a decompressor reads a file's data comes after
/// libjpeg has set up its modules and before it reads any scan's data: where
/// a progressive file's entropy decoder is replaced by the engine's.
///
/// # Safety
/// Called by libjpeg only, with a codec whose `progress` is a `Progress`.
unsafe extern "C-unwind" fn progress_monitor(cinfo: *mut jpeg_common_struct) {
    // SAFETY: `progress` was set to a live `Progress` (see `Progress::new`),
    // which nothing else references while libjpeg runs. `cinfo` is the
    // pointer libjpeg was given to the whole codec struct, so for a
    // decompressor it reaches the decompressor's own fields.
    let (progress, scan, reading_data) = unsafe {
        let progress = &mut *(*cinfo).progress.cast::<Progress>();
        let decompressing = (*cinfo).is_decompressor != 0;
        let scan = if decompressing {
            (*cinfo.cast::<jpeg_decompress_struct>()).input_scan_number
        } else {
            0
        };
        let state = (*cinfo).global_state;
        let reading_data = decompressing && (state == DSTATE_PRELOAD || state == DSTATE_RDCOEFS);
        (progress, scan, reading_data)
    };
    if reading_data && !progress.decoder_chosen {
        progress.decoder_chosen = true;
        // SAFETY: a decompressor (checked above) whose modules exist and
        // which has read no scan data yet (the states checked are set just
        // before the first `consume_input`, and this is the first call in
        // them); `Decompress::new` made it, so its source is a
        // `SliceSource`, as the engine's decoder requires.
        progress.own_decoder = unsafe { imgproc_use_own_entropy_decoder(cinfo.cast()) } != 0;
    }
    if i64::from(scan) > i64::from(progress.limits.max_scans) {
        resume_unwind(Box::new(Fatal(format!(
            "the JPEG has more than {} scans",
            progress.limits.max_scans
        ))))
    }
    progress.calls = progress.calls.wrapping_add(1);
    // The thread's CPU clock is a system call: read it every 16th time.
    if progress.calls.is_multiple_of(16)
        && let Some(deadline) = progress.limits.deadline
        && deadline.passed()
    {
        resume_unwind(Box::new(Fatal(deadline.message())))
    }
}

impl Progress {
    fn new(limits: Limits) -> NonNull<Self> {
        // SAFETY: the binding's hook type and `ProgressMonitor` differ only
        // in the pointer's type: the same C signature.
        let monitor = unsafe {
            std::mem::transmute::<
                ProgressMonitor,
                unsafe extern "C-unwind" fn(&mut jpeg_common_struct),
            >(progress_monitor)
        };
        NonNull::from(Box::leak(Box::new(Self {
            mgr: jpeg_progress_mgr {
                progress_monitor: Some(monitor),
                pass_counter: 0,
                pass_limit: 0,
                completed_passes: 0,
                total_passes: 0,
            },
            limits,
            calls: 0,
            decoder_chosen: false,
            own_decoder: false,
        })))
    }
}

/// An error manager with our hooks, owned through a raw pointer because
/// libjpeg keeps one (`cinfo.err`) for the codec's whole life.
struct ErrorManager(NonNull<jpeg_error_mgr>);

impl ErrorManager {
    fn new() -> Self {
        // SAFETY: an all-zero `jpeg_error_mgr` (null hooks, zero counters) is
        // what `jpeg_std_error` expects to fill; it fills every field.
        let err = NonNull::from(Box::leak(Box::new(unsafe {
            std::mem::zeroed::<jpeg_error_mgr>()
        })));
        // SAFETY: `err` is a valid, exclusive allocation; no reference to it
        // outlives this block.
        unsafe {
            let e = &mut *err.as_ptr();
            jpeg_std_error(e);
            e.error_exit = Some(error_exit);
            e.emit_message = Some(emit_message);
        }
        Self(err)
    }
}

impl Drop for ErrorManager {
    fn drop(&mut self) {
        // SAFETY: allocated by `Box` in `new`; the codec that pointed at it
        // has been destroyed (codecs hold their `ErrorManager` in a field
        // declared after the codec pointer and destroy it in their `Drop`).
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// A zeroed codec struct on the heap, owned through a raw pointer.
///
/// # Safety
/// All-zero must be a valid value of `T` (true of libjpeg's codec structs:
/// null pointers and hooks, zero numbers, and enums whose zero is a variant).
unsafe fn zeroed_box<T>() -> NonNull<T> {
    // SAFETY: the caller guarantees all-zero is a valid `T`.
    NonNull::from(Box::leak(Box::new(unsafe { std::mem::zeroed::<T>() })))
}

/// libjpeg's source manager over the input in memory, handed out a slice
/// of at most `SOURCE_CHUNK` bytes at a time. libjpeg-turbo's fast Huffman
/// decoder, which it uses while 512 bytes per block of an MCU are buffered,
/// decodes a corrupt code as a zero without a warning; with less buffered
/// it takes the careful decoder, which warns (and the warning fails the
/// image). `jpeg_mem_src` would offer the whole input at once.
#[repr(C)]
struct SliceSource {
    mgr: jpeg_source_mgr,
    rest: *const u8,
    rest_len: usize,
}

/// Below the fast decoder's threshold for any MCU (512 bytes a block).
const SOURCE_CHUNK: usize = 256;

impl SliceSource {
    fn new(input: &[u8]) -> Self {
        Self {
            mgr: jpeg_source_mgr {
                next_input_byte: ptr::null(),
                bytes_in_buffer: 0,
                init_source: Some(Self::init),
                fill_input_buffer: Some(Self::fill),
                skip_input_data: Some(Self::skip),
                resync_to_restart: Some(jpeg_resync_to_restart),
                term_source: Some(Self::term),
            },
            rest: input.as_ptr(),
            rest_len: input.len(),
        }
    }

    /// # Safety
    /// `cinfo.src` was set by `Decompress::new` to a live `SliceSource`
    /// that nothing else references during the call.
    unsafe fn from_cinfo(cinfo: &mut jpeg_decompress_struct) -> &mut Self {
        // SAFETY: `src` was made from a pointer to the whole `SliceSource`
        // (`#[repr(C)]`, the manager first).
        unsafe { &mut *cinfo.src.cast::<Self>() }
    }

    /// # Safety
    /// Called by libjpeg only, on a decompressor made by `Decompress::new`.
    unsafe extern "C-unwind" fn init(_cinfo: &mut jpeg_decompress_struct) {}

    /// # Safety
    /// As `init`.
    unsafe extern "C-unwind" fn term(_cinfo: &mut jpeg_decompress_struct) {}

    /// The next chunk of the input. Running out of input is an error:
    /// libjpeg's own memory source would insert an end-of-image marker,
    /// warn, and leave the rest of the picture grey.
    ///
    /// # Safety
    /// As `init`.
    unsafe extern "C-unwind" fn fill(cinfo: &mut jpeg_decompress_struct) -> mozjpeg_sys::boolean {
        // SAFETY: see `from_cinfo`; `rest` points at `rest_len` bytes of the
        // input, which outlives the decompressor (`Decompress<'a>`).
        let this = unsafe { Self::from_cinfo(cinfo) };
        if this.rest_len == 0 {
            premature_end()
        }
        let n = this.rest_len.min(SOURCE_CHUNK);
        this.mgr.next_input_byte = this.rest;
        this.mgr.bytes_in_buffer = n;
        // SAFETY: `n ≤ rest_len`: within the input.
        this.rest = unsafe { this.rest.add(n) };
        this.rest_len -= n;
        1
    }

    /// # Safety
    /// As `init`.
    unsafe extern "C-unwind" fn skip(cinfo: &mut jpeg_decompress_struct, num_bytes: c_long) {
        let mut left = usize::try_from(num_bytes).unwrap_or(0);
        // SAFETY: see `from_cinfo`; the buffer's bytes and `rest` are
        // consecutive parts of the input.
        unsafe {
            while left > 0 {
                if Self::from_cinfo(cinfo).mgr.bytes_in_buffer == 0 {
                    Self::fill(cinfo);
                }
                let this = Self::from_cinfo(cinfo);
                let step = left.min(this.mgr.bytes_in_buffer);
                this.mgr.next_input_byte = this.mgr.next_input_byte.add(step);
                this.mgr.bytes_in_buffer -= step;
                left -= step;
            }
        }
    }
}

/// Fails the decoding of an input that ends before its end-of-image marker.
pub(super) fn premature_end() -> ! {
    fail("Premature end of JPEG file")
}

/// The input libjpeg has not read yet, in one piece (the source's buffer
/// and what follows it are consecutive parts of the input): for the
/// engine's own entropy decoder, which reads it directly and then says how
/// much it took (`consume_input`).
///
/// # Safety
/// `cinfo` was made by `Decompress::new`, so its source is a `SliceSource`.
/// The bytes belong to the input, which outlives the decompressor: the
/// slice must not outlive the decompressor. It is the *unread* part only
/// until libjpeg reads from its source again or `consume_input` is called;
/// the engine's decoder holds it across libjpeg's calls of the decoder
/// within a scan, during which libjpeg does not read its source.
pub(super) unsafe fn unread_input<'a>(cinfo: &jpeg_decompress_struct) -> &'a [u8] {
    // SAFETY: the caller guarantees the source; `rest` points at `rest_len`
    // bytes of the input, and the buffer (once filled) ends where `rest`
    // starts (`SliceSource::fill`, `skip`).
    unsafe {
        let this = &*cinfo.src.cast::<SliceSource>();
        let start = if this.mgr.next_input_byte.is_null() {
            this.rest
        } else {
            this.mgr.next_input_byte
        };
        let len = this.mgr.bytes_in_buffer + this.rest_len;
        std::slice::from_raw_parts(start, len)
    }
}

/// Marks the first `n` bytes of `unread_input` as read; libjpeg goes on
/// after them, a chunk at a time as before.
///
/// # Safety
/// As `unread_input`; `n` is at most the length of that slice.
pub(super) unsafe fn consume_input(cinfo: &mut jpeg_decompress_struct, n: usize) {
    // SAFETY: as `unread_input`; the new position and chunk stay within it.
    unsafe {
        let unread = unread_input(cinfo);
        let left = unread.len() - n;
        let chunk = left.min(SOURCE_CHUNK);
        let this = SliceSource::from_cinfo(cinfo);
        this.mgr.next_input_byte = unread.as_ptr().add(n);
        this.mgr.bytes_in_buffer = chunk;
        this.rest = this.mgr.next_input_byte.add(chunk);
        this.rest_len = left - chunk;
    }
}

const APP1: c_int = 0xE1;
const APP2: c_int = 0xE2;

/// What the header says, before any pixel is decoded.
#[derive(Debug, Clone)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    pub color_space: J_COLOR_SPACE,
    /// (horizontal, vertical) sampling factor of each component.
    pub sampling: Vec<(u8, u8)>,
    /// The EXIF block without its `Exif\0\0` prefix.
    pub exif: Option<Vec<u8>>,
    pub icc: Option<Vec<u8>>,
}

impl Header {
    /// YCbCr with chroma halved both ways, the layout a quality-50 JPEG gets.
    pub fn is_ycbcr_420(&self) -> bool {
        self.is_ycbcr(&[(2, 2), (1, 1), (1, 1)])
    }

    pub fn is_ycbcr(&self, sampling: &[(u8, u8)]) -> bool {
        self.color_space == J_COLOR_SPACE::JCS_YCbCr && self.sampling == sampling
    }

    pub fn is_grayscale(&self) -> bool {
        self.color_space == J_COLOR_SPACE::JCS_GRAYSCALE && self.sampling.len() == 1
    }
}

/// A JPEG being read from memory.
pub struct Decompress<'a> {
    cinfo: NonNull<jpeg_decompress_struct>,
    // Pointed at by `cinfo.common.progress`.
    progress: NonNull<Progress>,
    // Pointed at by `cinfo.common.err`; dropped after the codec is destroyed.
    _err: ErrorManager,
    // Pointed at by `cinfo.src`; it points into the input, borrowed for 'a.
    source: NonNull<SliceSource>,
    _input: PhantomData<&'a [u8]>,
}

impl Drop for Decompress<'_> {
    fn drop(&mut self) {
        // SAFETY: `cinfo` came from `zeroed_box` and is not referenced
        // elsewhere. `jpeg_destroy_decompress` is safe in every state,
        // including before `jpeg_create_decompress` finished (it checks
        // `mem` for null); afterwards nothing points at the struct.
        unsafe {
            jpeg_destroy_decompress(&mut *self.cinfo.as_ptr());
            drop(Box::from_raw(self.cinfo.as_ptr()));
            drop(Box::from_raw(self.progress.as_ptr()));
            drop(Box::from_raw(self.source.as_ptr()));
        }
    }
}

/// Decoded samples: 1 (grey), 3 (RGB) or 4 (CMYK as stored) per pixel.
pub struct Pixels {
    pub data: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub color_space: J_COLOR_SPACE,
}

impl<'a> Decompress<'a> {
    /// Reads the header of `input`. libjpeg's own allocations are capped at
    /// `max_memory` bytes, and its work by `limits`.
    pub fn new(
        input: &'a [u8],
        max_memory: usize,
        limits: Limits,
    ) -> Result<(Self, Header), String> {
        let err = ErrorManager::new();
        let progress = Progress::new(limits);
        // SAFETY: all-zero is a valid, not yet created, decompress struct.
        let cinfo = unsafe { zeroed_box::<jpeg_decompress_struct>() };
        // SAFETY: `cinfo` is valid and exclusive here.
        unsafe { (*cinfo.as_ptr()).common.err = err.0.as_ptr() };
        let source = NonNull::from(Box::leak(Box::new(SliceSource::new(input))));
        let mut this = Self {
            cinfo,
            progress,
            source,
            _err: err,
            _input: PhantomData,
        };
        let header = guarded(|| {
            // SAFETY: the struct is created before any other call; `input`
            // outlives `this` ('a); markers are saved into libjpeg's pools.
            unsafe {
                let progress = this.progress.as_ptr().cast();
                let source = this.source.as_ptr().cast::<jpeg_source_mgr>();
                let cinfo = this.raw();
                jpeg_create_decompress(cinfo);
                // After creation, which zeroes all but `err`: a pointer to
                // the whole `Progress`, whose first field is the manager.
                cinfo.common.progress = progress;
                (*cinfo.common.mem).max_memory_to_use = to_c_long(max_memory);
                // A pointer to the whole `SliceSource`, the manager first.
                cinfo.src = source;
                jpeg_save_markers(cinfo, APP1, 0xFFFF);
                jpeg_save_markers(cinfo, APP2, 0xFFFF);
                jpeg_read_header(cinfo, 1);
                read_header(cinfo)
            }
        })?;
        Ok((this, header))
    }

    /// The codec, for one call into libjpeg.
    ///
    /// # Safety
    /// The reference must not outlive the call it is made for, nor coexist
    /// with another reference to the struct.
    pub(super) unsafe fn raw(&mut self) -> &mut jpeg_decompress_struct {
        // SAFETY: `cinfo` is a live allocation owned by `self`; `&mut self`
        // and the caller's promise make the reference exclusive.
        unsafe { &mut *self.cinfo.as_ptr() }
    }

    /// Caps libjpeg's own allocations from here on.
    pub fn set_memory_budget(&mut self, bytes: usize) {
        // SAFETY: `mem` was set up by `jpeg_create_decompress` in `new`.
        unsafe { (*self.raw().common.mem).max_memory_to_use = to_c_long(bytes) };
    }

    /// Keeps libjpeg's own progressive Huffman decoder for this file, to
    /// compare the engine's with.
    #[cfg(test)]
    pub(super) fn keep_libjpeg_entropy_decoder(&mut self) {
        // SAFETY: `progress` is owned by `self`; no libjpeg call is running.
        unsafe { (*self.progress.as_ptr()).decoder_chosen = true };
    }

    /// Whether the engine's progressive Huffman decoder read this file.
    #[cfg(test)]
    pub(super) fn used_own_entropy_decoder(&self) -> bool {
        // SAFETY: as `keep_libjpeg_entropy_decoder`.
        unsafe { (*self.progress.as_ptr()).own_decoder }
    }

    /// Decodes to pixels: grey stays grey, CMYK stays CMYK, the rest is RGB.
    pub fn pixels(mut self) -> Result<Pixels, String> {
        guarded(|| {
            // SAFETY: the header has been read (`new`). Each row pointer
            // handed to `jpeg_read_scanlines` points at `output_width ×
            // output_components` bytes of `data`, which has a row for every
            // scanline below `output_height`, and libjpeg writes no more.
            unsafe {
                let cinfo = self.raw();
                cinfo.out_color_space = match cinfo.jpeg_color_space {
                    J_COLOR_SPACE::JCS_GRAYSCALE => J_COLOR_SPACE::JCS_GRAYSCALE,
                    J_COLOR_SPACE::JCS_CMYK | J_COLOR_SPACE::JCS_YCCK => J_COLOR_SPACE::JCS_CMYK,
                    _ => J_COLOR_SPACE::JCS_RGB,
                };
                jpeg_start_decompress(cinfo);
                let stride = cinfo.output_width as usize * cinfo.output_components as usize;
                let height = cinfo.output_height as usize;
                // Large zeroed allocations come straight from the kernel: no
                // cost for zeroing pages that the decoder then overwrites.
                let mut data = vec![0u8; stride * height];
                let band = cinfo.rec_outbuf_height.max(1) as usize;
                let mut rows: Vec<*mut u8> = Vec::with_capacity(band);
                while (cinfo.output_scanline as usize) < height {
                    let first = cinfo.output_scanline as usize;
                    let count = band.min(height - first);
                    rows.clear();
                    rows.extend(
                        data[first * stride..]
                            .chunks_exact_mut(stride)
                            .take(count)
                            .map(<[u8]>::as_mut_ptr),
                    );
                    jpeg_read_scanlines(cinfo, rows.as_mut_ptr(), count as c_uint);
                }
                // Before finishing, which frees the component records.
                every_component_has_data(cinfo)?;
                jpeg_finish_decompress(cinfo);
                Ok(Pixels {
                    data,
                    width: cinfo.output_width,
                    height: cinfo.output_height,
                    color_space: cinfo.out_color_space,
                })
            }
        })?
    }
}

/// The quantisation table of each component, which libjpeg latches when
/// the component first appears in a scan: a component no scan carried has
/// none, and its samples would silently come out flat grey. An error then.
///
/// # Safety
/// The decompressor has read its coefficients or its scanlines, and not
/// yet finished (`jpeg_finish_decompress` frees the component records).
pub(super) unsafe fn every_component_has_data(
    cinfo: &jpeg_decompress_struct,
) -> Result<Vec<[u16; 64]>, String> {
    (0..cinfo.num_components.clamp(0, 4) as usize)
        .map(|ci| {
            // SAFETY: `comp_info` holds `num_components` entries; a latched
            // table lives in libjpeg's pools as long as the decompressor.
            let table = unsafe { (*cinfo.comp_info.add(ci)).quant_table };
            if table.is_null() {
                Err(format!(
                    "component {} of the JPEG has no data in any scan",
                    ci + 1
                ))
            } else {
                // SAFETY: as above.
                Ok(unsafe { (*table).quantval })
            }
        })
        .collect()
}

fn to_c_long(n: usize) -> c_long {
    n.try_into().unwrap_or(c_long::MAX)
}

/// # Safety
/// `jpeg_read_header` has returned for `cinfo`.
unsafe fn read_header(cinfo: &mut jpeg_decompress_struct) -> Header {
    let components = cinfo.num_components.max(0) as usize;
    let sampling = (0..components)
        .map(|i| {
            // SAFETY: `comp_info` holds `num_components` entries after the header.
            let c = unsafe { &*cinfo.comp_info.add(i) };
            (c.h_samp_factor as u8, c.v_samp_factor as u8)
        })
        .collect();
    let mut exif = None;
    let mut icc_chunks: Vec<(u8, u8, &[u8])> = Vec::new();
    let mut marker = cinfo.marker_list;
    while !marker.is_null() {
        // SAFETY: a linked list in libjpeg's pools, alive as long as `cinfo`;
        // each node's `data` holds `data_length` bytes.
        let (m, data) = unsafe {
            let m = &*marker;
            let data = if m.data.is_null() {
                &[][..]
            } else {
                std::slice::from_raw_parts(m.data, m.data_length as usize)
            };
            (m, data)
        };
        if c_int::from(m.marker) == APP1 {
            if let (None, Some(rest)) = (&exif, data.strip_prefix(b"Exif\0\0")) {
                exif = Some(rest.to_vec());
            }
        } else if c_int::from(m.marker) == APP2
            && let Some([seq, count, rest @ ..]) = data.strip_prefix(b"ICC_PROFILE\0")
        {
            icc_chunks.push((*seq, *count, rest));
        }
        marker = m.next;
    }
    Header {
        width: cinfo.image_width,
        height: cinfo.image_height,
        color_space: cinfo.jpeg_color_space,
        sampling,
        exif,
        icc: assemble_icc(icc_chunks),
    }
}

/// An ICC profile split over APP2 markers, put back together; a set with a
/// missing, repeated or inconsistent chunk is dropped.
fn assemble_icc(mut chunks: Vec<(u8, u8, &[u8])>) -> Option<Vec<u8>> {
    let count = chunks.first()?.1;
    if count == 0 || chunks.len() != usize::from(count) || chunks.iter().any(|c| c.1 != count) {
        return None;
    }
    chunks.sort_by_key(|c| c.0);
    if chunks
        .iter()
        .enumerate()
        .any(|(i, c)| usize::from(c.0) != i + 1)
    {
        return None;
    }
    Some(chunks.iter().flat_map(|c| c.2.iter().copied()).collect())
}

/// A JPEG being written into memory.
pub(super) struct Compress {
    cinfo: NonNull<jpeg_compress_struct>,
    // Pointed at by `cinfo.dest`.
    dest: NonNull<VecDestination>,
    // Pointed at by `cinfo.common.progress`.
    progress: NonNull<Progress>,
    // Pointed at by `cinfo.common.err`; dropped after the codec is destroyed.
    _err: ErrorManager,
}

impl Drop for Compress {
    fn drop(&mut self) {
        // SAFETY: both came from `Box` in `new` and are referenced nowhere
        // else; `jpeg_destroy_compress` is safe in every state and leaves no
        // pointer to either behind.
        unsafe {
            jpeg_destroy_compress(&mut *self.cinfo.as_ptr());
            drop(Box::from_raw(self.cinfo.as_ptr()));
            drop(Box::from_raw(self.dest.as_ptr()));
            drop(Box::from_raw(self.progress.as_ptr()));
        }
    }
}

impl Compress {
    /// A compressor in libjpeg-turbo's profile, writing to a `Vec`, its
    /// work bounded by `limits`.
    pub(super) fn new(limits: Limits) -> Result<Self, String> {
        let err = ErrorManager::new();
        let progress = Progress::new(limits);
        // SAFETY: all-zero is a valid, not yet created, compress struct.
        let cinfo = unsafe { zeroed_box::<jpeg_compress_struct>() };
        let dest = NonNull::from(Box::leak(Box::new(VecDestination::new())));
        // SAFETY: `cinfo` is valid and exclusive here.
        unsafe { (*cinfo.as_ptr()).common.err = err.0.as_ptr() };
        let mut this = Self {
            cinfo,
            dest,
            progress,
            _err: err,
        };
        guarded(|| {
            // SAFETY: created before any other call. `dest` is a
            // `#[repr(C)]` struct whose first field is the manager, so the
            // pointer to the whole is also one to the manager, and the
            // callbacks can cast it back with its full provenance.
            unsafe {
                let dest = this.dest.as_ptr().cast::<jpeg_destination_mgr>();
                let progress = this.progress.as_ptr().cast();
                let cinfo = this.raw();
                jpeg_create_compress(cinfo);
                // After creation, which zeroes all but `err`.
                cinfo.common.progress = progress;
                // Must precede `jpeg_set_defaults`: it picks the defaults.
                jpeg_c_set_int_param(
                    cinfo,
                    J_INT_PARAM::JINT_COMPRESS_PROFILE,
                    JCP_FASTEST as c_int,
                );
                cinfo.dest = dest;
            }
        })?;
        Ok(this)
    }

    /// The codec, for one call into libjpeg.
    ///
    /// # Safety
    /// As `Decompress::raw`.
    pub(super) unsafe fn raw(&mut self) -> &mut jpeg_compress_struct {
        // SAFETY: as `Decompress::raw`.
        unsafe { &mut *self.cinfo.as_ptr() }
    }

    /// What libjpeg wrote, once `jpeg_finish_compress` has returned.
    pub(super) fn into_bytes(self) -> Vec<u8> {
        // SAFETY: libjpeg is done with the destination (no call is in
        // progress: `self` is owned here), so this is the only reference.
        unsafe { std::mem::take(&mut (*self.dest.as_ptr()).out) }
    }
}

/// Encodes 8-bit grey (1 sample per pixel) or RGB (3) pixels as a baseline
/// JPEG: 4:2:0, optimised Huffman tables, the colour profile if any.
pub fn encode(
    pixels: &[u8],
    width: u32,
    height: u32,
    channels: u8,
    quality: u8,
    icc: Option<&[u8]>,
    limits: Limits,
) -> Result<Vec<u8>, String> {
    let stride = width as usize * usize::from(channels);
    if !matches!(channels, 1 | 3) || pixels.len() != stride * height as usize {
        return Err(format!(
            "{} bytes are not {width}×{height} pixels of {channels} samples",
            pixels.len()
        ));
    }
    let mut rows = pixels.chunks_exact(stride.max(1));
    encode_rows(width, height, channels, quality, icc, limits, |out| {
        out.copy_from_slice(rows.next().ok_or("fewer rows than the height")?);
        Ok(())
    })
}

/// Like `encode`, with the rows asked of `fill` one at a time, top to
/// bottom, so that the picture need never be held whole: `fill` writes one
/// row of `width × channels` samples; its error stops the encoding and is
/// returned.
pub fn encode_rows(
    width: u32,
    height: u32,
    channels: u8,
    quality: u8,
    icc: Option<&[u8]>,
    limits: Limits,
    mut fill: impl FnMut(&mut [u8]) -> Result<(), String>,
) -> Result<Vec<u8>, String> {
    if !matches!(channels, 1 | 3) || width == 0 || height == 0 {
        return Err(format!(
            "cannot encode {width}×{height} pixels of {channels} samples"
        ));
    }
    const BAND: usize = 16;
    let stride = width as usize * usize::from(channels);
    let mut band = vec![0u8; stride * BAND.min(height as usize)];
    let mut c = Compress::new(limits)?;
    guarded(|| {
        // SAFETY: each row pointer handed to `jpeg_write_scanlines` points
        // at `stride` bytes of `band`, as many as libjpeg reads per row.
        unsafe {
            let cinfo = c.raw();
            set_up(cinfo, width, height, Input::of_channels(channels), quality);
            jpeg_start_compress(cinfo, 1);
            write_icc(cinfo, icc);
            let mut rows: Vec<*const u8> = Vec::with_capacity(BAND);
            while (cinfo.next_scanline as usize) < height as usize {
                let count = BAND.min(height as usize - cinfo.next_scanline as usize);
                for row in band.chunks_exact_mut(stride).take(count) {
                    fill(row)?;
                }
                rows.clear();
                rows.extend(band.chunks_exact(stride).take(count).map(<[u8]>::as_ptr));
                jpeg_write_scanlines(cinfo, rows.as_ptr(), count as c_uint);
            }
            jpeg_finish_compress(cinfo);
            Ok::<_, String>(())
        }
    })??;
    Ok(c.into_bytes())
}

/// A picture as full-range (JFIF) YCbCr 4:2:0 planes, laid out for
/// libjpeg's raw-data input, which reads whole blocks: each plane's rows
/// are padded to a multiple of 8 samples and its row count to a whole
/// number of 16-row luma bands, the padding repeating the picture's edge
/// (`pad_edges`), as libjpeg's own downsampler pads.
pub struct Ycbcr420 {
    width: u32,
    height: u32,
    /// Luma, then Cb and Cr.
    pub planes: [Plane; 3],
}

pub struct Plane {
    pub samples: Vec<u8>,
    /// Samples per row, padding included.
    pub stride: usize,
    /// The picture's columns and rows in this plane, padding excluded.
    pub width: usize,
    pub height: usize,
}

impl Ycbcr420 {
    /// Each plane's columns and rows of picture, stride and rows in all,
    /// for a `width × height` picture.
    fn layout(width: u32, height: u32) -> [[usize; 4]; 3] {
        let (w, h) = (width as usize, height as usize);
        let bands = h.div_ceil(16);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let stride = |columns: usize| columns.div_ceil(8) * 8;
        [
            [w, h, stride(w), bands * 16],
            [cw, ch, stride(cw), bands * 8],
            [cw, ch, stride(cw), bands * 8],
        ]
    }

    /// Zeroed planes for a `width × height` picture.
    pub fn new(width: u32, height: u32) -> Self {
        let planes = Self::layout(width, height).map(|[width, height, stride, rows]| Plane {
            samples: vec![0; stride * rows],
            stride,
            width,
            height,
        });
        Self {
            width,
            height,
            planes,
        }
    }

    /// Bytes the planes of a `width × height` picture take.
    pub fn bytes(width: u32, height: u32) -> u64 {
        Self::layout(width, height)
            .iter()
            .map(|&[_, _, stride, rows]| (stride * rows) as u64)
            .sum()
    }

    /// Repeats each plane's last column into its padding columns, then its
    /// last row into its padding rows.
    pub fn pad_edges(&mut self) {
        for plane in &mut self.planes {
            let (stride, width, height) = (plane.stride, plane.width, plane.height);
            if width == 0 || height == 0 {
                continue;
            }
            for row in plane.samples.chunks_exact_mut(stride).take(height) {
                let edge = row[width - 1];
                row[width..].fill(edge);
            }
            let (picture, padding) = plane.samples.split_at_mut(stride * height);
            let last = &picture[stride * (height - 1)..];
            for row in padding.chunks_exact_mut(stride) {
                row.copy_from_slice(last);
            }
        }
    }
}

/// Encodes YCbCr 4:2:0 planes as they are (no colour conversion, no
/// downsampling): otherwise as `encode`.
pub fn encode_ycbcr_420(
    picture: &Ycbcr420,
    quality: u8,
    icc: Option<&[u8]>,
    limits: Limits,
) -> Result<Vec<u8>, String> {
    let (width, height) = (picture.width, picture.height);
    if width == 0 || height == 0 {
        return Err(format!("cannot encode {width}×{height} pixels"));
    }
    let mut c = Compress::new(limits)?;
    guarded(|| {
        // SAFETY: raw-data input reads, per call, one band of 16 luma rows
        // and 8 rows of each chroma plane, each of at most the component's
        // blocks × 8 samples; every row pointer handed over points at a row
        // of `stride` (the blocks × 8) samples inside its plane, whose row
        // count `Ycbcr420::new` rounded up to whole bands.
        unsafe {
            let cinfo = c.raw();
            set_up(cinfo, width, height, Input::Ycbcr420, quality);
            jpeg_start_compress(cinfo, 1);
            write_icc(cinfo, icc);
            let mut rows: [Vec<*const u8>; 3] = Default::default();
            let mut band = 0;
            while (cinfo.next_scanline as usize) < height as usize {
                for ((rows, plane), count) in rows.iter_mut().zip(&picture.planes).zip([16, 8, 8]) {
                    rows.clear();
                    rows.extend(
                        plane
                            .samples
                            .chunks_exact(plane.stride)
                            .skip(band * count)
                            .take(count)
                            .map(<[u8]>::as_ptr),
                    );
                    if rows.len() != count {
                        return Err("the planes end before the picture".to_string());
                    }
                }
                let mut image = [rows[0].as_ptr(), rows[1].as_ptr(), rows[2].as_ptr()];
                jpeg_write_raw_data(cinfo, image.as_mut_ptr().cast(), 16);
                band += 1;
            }
            jpeg_finish_compress(cinfo);
            Ok::<_, String>(())
        }
    })??;
    Ok(c.into_bytes())
}

/// What the encoder is given.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Input {
    Grey,
    /// Converted to YCbCr and downsampled to 4:2:0 by libjpeg.
    Rgb,
    /// 4:2:0 planes written as they are (`raw_data_in`).
    Ycbcr420,
}

impl Input {
    fn of_channels(channels: u8) -> Self {
        if channels == 1 { Self::Grey } else { Self::Rgb }
    }
}

/// The encoder's parameters for `input` of `width × height` at `quality`,
/// Huffman tables optimised; colour is stored as 4:2:0 YCbCr.
///
/// # Safety
/// `cinfo` was made by `Compress::new`.
unsafe fn set_up(
    cinfo: &mut jpeg_compress_struct,
    width: u32,
    height: u32,
    input: Input,
    quality: u8,
) {
    cinfo.image_width = width;
    cinfo.image_height = height;
    (cinfo.input_components, cinfo.in_color_space) = match input {
        Input::Grey => (1, J_COLOR_SPACE::JCS_GRAYSCALE),
        Input::Rgb => (3, J_COLOR_SPACE::JCS_RGB),
        Input::Ycbcr420 => (3, J_COLOR_SPACE::JCS_YCbCr),
    };
    let channels = cinfo.input_components;
    // SAFETY: `comp_info` has 3 entries after `jpeg_set_defaults` for
    // three-component (RGB or YCbCr) input.
    unsafe {
        jpeg_set_defaults(cinfo);
        jpeg_set_quality(cinfo, c_int::from(quality), 1);
        cinfo.optimize_coding = 1;
        cinfo.raw_data_in = c_int::from(input == Input::Ycbcr420);
        if channels == 3 {
            let comps = std::slice::from_raw_parts_mut(cinfo.comp_info, 3);
            (comps[0].h_samp_factor, comps[0].v_samp_factor) = (2, 2);
            for chroma in &mut comps[1..] {
                (chroma.h_samp_factor, chroma.v_samp_factor) = (1, 1);
            }
        }
    }
}

/// A greyscale JPEG with the given scan script, as a test input: libjpeg
/// checks the script is a valid progression. (mozjpeg's encoder keeps
/// per-scan state in arrays of 64: no more scans than that.)
#[cfg(test)]
pub(super) fn encode_grey_with_scans(
    grey: &[u8],
    width: u32,
    height: u32,
    scans: &[mozjpeg_sys::jpeg_scan_info],
) -> Result<Vec<u8>, String> {
    encode_with_scans(grey, (width, height, 1), 90, Some(scans), 0)
}

/// A JPEG as a test input: grey or RGB `pixels` (`channels` 1 or 3,
/// colour as 4:2:0), with the scan script given (at most 64 scans;
/// sequential if every scan is whole) or libjpeg's standard progressive
/// one, and a restart marker every `restart_interval` MCUs (0: none).
#[cfg(test)]
pub(super) fn encode_with_scans(
    pixels: &[u8],
    (width, height, channels): (u32, u32, u8),
    quality: u8,
    scans: Option<&[mozjpeg_sys::jpeg_scan_info]>,
    restart_interval: u32,
) -> Result<Vec<u8>, String> {
    let stride = width as usize * usize::from(channels);
    if !matches!(channels, 1 | 3)
        || pixels.len() != stride * height as usize
        || scans.is_some_and(|s| s.len() > 64)
    {
        return Err("not a picture of that size, or over 64 scans".into());
    }
    let mut c = Compress::new(Limits::NONE)?;
    guarded(|| {
        // SAFETY: `scans` outlives the compression; each row pointer points
        // at `stride` bytes of `pixels`.
        unsafe {
            let cinfo = c.raw();
            set_up(cinfo, width, height, Input::of_channels(channels), quality);
            cinfo.restart_interval = restart_interval;
            match scans {
                Some(scans) => {
                    cinfo.scan_info = scans.as_ptr();
                    cinfo.num_scans = scans.len() as c_int;
                }
                None => mozjpeg_sys::jpeg_simple_progression(cinfo),
            }
            jpeg_start_compress(cinfo, 1);
            for row in pixels.chunks_exact(stride) {
                jpeg_write_scanlines(cinfo, &row.as_ptr(), 1);
            }
            jpeg_finish_compress(cinfo);
        }
    })?;
    Ok(c.into_bytes())
}

/// Writes `icc` as APP2 markers.
///
/// # Safety
/// `jpeg_start_compress` or `jpeg_write_coefficients` has been called, and
/// no scanline or coefficient written yet.
pub(super) unsafe fn write_icc(cinfo: &mut jpeg_compress_struct, icc: Option<&[u8]>) {
    if let Some(icc) = icc {
        // SAFETY: libjpeg reads `icc.len()` bytes, within the slice.
        unsafe { jpeg_write_icc_profile(cinfo, icc.as_ptr(), icc.len() as c_uint) };
    }
}

/// The most the output buffer grows by at a time, hence the most it holds
/// beyond what libjpeg wrote (see `memory::output_bytes`).
pub const OUTPUT_GROWTH: usize = 8 << 20;

/// libjpeg's destination manager over a growing `Vec`. `mgr` comes first so
/// that the pointer libjpeg holds, made from a pointer to the whole, can be
/// turned back into one.
#[repr(C)]
struct VecDestination {
    mgr: jpeg_destination_mgr,
    out: Vec<u8>,
}

impl VecDestination {
    fn new() -> Self {
        Self {
            mgr: jpeg_destination_mgr {
                next_output_byte: ptr::null_mut(),
                free_in_buffer: 0,
                init_destination: Some(Self::init),
                empty_output_buffer: Some(Self::grow),
                term_destination: Some(Self::term),
            },
            out: Vec::new(),
        }
    }

    /// The `Vec`'s spare capacity becomes libjpeg's buffer.
    fn expose_spare(&mut self) {
        let spare = self.out.spare_capacity_mut();
        self.mgr.free_in_buffer = spare.len();
        self.mgr.next_output_byte = spare.as_mut_ptr().cast();
    }

    /// # Safety
    /// `cinfo.dest` was set by `Compress::new` to a live `VecDestination`
    /// that nothing else references during the call.
    unsafe fn from_cinfo(cinfo: &mut jpeg_compress_struct) -> &mut Self {
        // SAFETY: `dest` was made from a pointer to the whole
        // `VecDestination` (`#[repr(C)]`, the manager first), so casting it
        // back is in bounds and carries the whole allocation's provenance.
        unsafe { &mut *cinfo.dest.cast::<Self>() }
    }

    /// # Safety
    /// Called by libjpeg only, on a compressor made by `Compress::new`.
    unsafe extern "C-unwind" fn init(cinfo: &mut jpeg_compress_struct) {
        // SAFETY: see `from_cinfo`; libjpeg calls one hook at a time.
        let this = unsafe { Self::from_cinfo(cinfo) };
        this.out.clear();
        this.out.reserve(64 * 1024);
        this.expose_spare();
    }

    /// libjpeg filled everything it was given: keep it, offer more.
    ///
    /// # Safety
    /// As `init`.
    unsafe extern "C-unwind" fn grow(cinfo: &mut jpeg_compress_struct) -> mozjpeg_sys::boolean {
        // SAFETY: see `from_cinfo`.
        let this = unsafe { Self::from_cinfo(cinfo) };
        let full = this.out.capacity();
        // SAFETY: libjpeg calls this when it has written every byte of the
        // spare capacity it was given (`free_in_buffer` reached zero).
        unsafe { this.out.set_len(full) };
        // Doubling, but never by more than `OUTPUT_GROWTH`: large buffers
        // are moved by remapping pages, not copied, so the steps cost little.
        this.out.reserve_exact(full.clamp(64 * 1024, OUTPUT_GROWTH));
        this.expose_spare();
        1
    }

    /// # Safety
    /// As `init`.
    unsafe extern "C-unwind" fn term(cinfo: &mut jpeg_compress_struct) {
        // SAFETY: see `from_cinfo`.
        let this = unsafe { Self::from_cinfo(cinfo) };
        let written = this.out.spare_capacity_mut().len() - this.mgr.free_in_buffer;
        // SAFETY: libjpeg wrote the first `written` bytes of the spare
        // capacity it was last given, which started at `len`.
        unsafe { this.out.set_len(this.out.len() + written) };
    }
}

/// Whether libjpeg-turbo's SIMD code is in the binary and usable on this
/// CPU (false when it was built without nasm on x86-64).
pub fn simd_enabled() -> bool {
    // libjpeg-turbo's internal SIMD dispatch: the SIMD build answers from
    // the CPU's features, the build without SIMD (`jsimd_none.c`) always 0.
    unsafe extern "C" {
        fn jsimd_can_rgb_ycc() -> c_int;
    }
    // SAFETY: takes nothing, reads the CPU's features once, returns 0 or 1.
    unsafe { jsimd_can_rgb_ycc() != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "calls into libjpeg (C)")]
    fn simd_is_on_unless_the_build_went_without_nasm() {
        // shared/build.rs stops a build without nasm on x86 unless told to
        // go on, and says which it was.
        assert_eq!(simd_enabled(), env!("IMGPROC_SIMD_EXPECTED") == "1");
    }

    #[test]
    fn icc_chunks_are_reassembled_in_order_or_dropped() {
        let chunks = vec![(2, 2, &b"world"[..]), (1, 2, &b"hello "[..])];
        assert_eq!(assemble_icc(chunks).as_deref(), Some(&b"hello world"[..]));
        assert_eq!(assemble_icc(vec![(1, 2, &b"half"[..])]), None);
        assert_eq!(
            assemble_icc(vec![(1, 2, &b"a"[..]), (1, 2, &b"b"[..])]),
            None
        );
        assert_eq!(assemble_icc(vec![]), None);
    }

    #[test]
    #[cfg_attr(miri, ignore = "calls into libjpeg (C)")]
    fn garbage_is_an_error_not_a_crash() {
        let err =
            Decompress::new(b"\xFF\xD8\xFF\xE0 not really a jpeg", 1 << 20, Limits::NONE).err();
        assert!(err.is_some());
    }

    #[test]
    #[cfg_attr(miri, ignore = "calls into libjpeg (C)")]
    fn messages_are_whole_and_errors_come_back_as_values() {
        // A premature end of data is a warning in libjpeg, an error here;
        // its text is longer than the 80 bytes the binding's type claims.
        let rgb: Vec<u8> = (0..64 * 64 * 3).map(|i| (i * 7919 % 251) as u8).collect();
        let full = encode(&rgb, 64, 64, 3, 90, None, Limits::NONE).expect("encodes");
        let truncated = &full[..full.len() * 2 / 3];
        let (decompress, header) =
            Decompress::new(truncated, 1 << 20, Limits::NONE).expect("header reads");
        assert_eq!((header.width, header.height), (64, 64));
        let err = decompress.pixels().err().expect("truncated data fails");
        assert!(err.contains("Premature end of JPEG file"), "{err}");
    }

    /// The destination manager's hooks, driven as libjpeg drives them
    /// (pure Rust, so Miri checks the pointer handling).
    #[test]
    fn the_destination_collects_every_byte_written() {
        let dest = NonNull::from(Box::leak(Box::new(VecDestination::new())));
        // SAFETY: a zeroed compress struct is valid; only `dest` is used.
        let mut cinfo = unsafe { std::mem::zeroed::<jpeg_compress_struct>() };
        cinfo.dest = dest.as_ptr().cast();
        let mut written = Vec::new();
        // SAFETY: the hooks are called in libjpeg's order, each writing no
        // more than `free_in_buffer` bytes at `next_output_byte`.
        unsafe {
            VecDestination::init(&mut cinfo);
            for round in 0..3u8 {
                let mgr = &mut *cinfo.dest;
                let n = if round < 2 { mgr.free_in_buffer } else { 1000 };
                for i in 0..n {
                    let byte = (i % 251) as u8 ^ round;
                    *mgr.next_output_byte = byte;
                    mgr.next_output_byte = mgr.next_output_byte.add(1);
                    mgr.free_in_buffer -= 1;
                    written.push(byte);
                }
                if round < 2 {
                    assert_eq!(VecDestination::grow(&mut cinfo), 1);
                }
            }
            VecDestination::term(&mut cinfo);
            let out = std::mem::take(&mut (*dest.as_ptr()).out);
            drop(Box::from_raw(dest.as_ptr()));
            assert_eq!(out.len(), written.len());
            assert!(out == written, "the bytes come back in order");
        }
    }
}
