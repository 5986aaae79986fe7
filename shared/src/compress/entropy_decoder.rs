//! The entropy decoding of JPEGs read whole (progressive files, and
//! sequential ones read for their coefficients), in place of libjpeg's
//! (`jdphuff.c`, `jdhuff.c`). Progressive decoding took a third of the
//! engine's time on the benchmark corpus, most of it in refinement scans,
//! where libjpeg visits every coefficient of the band one at a time,
//! reading a bit and branching twice for each. Here a block's non-zero
//! coefficients are a 64-bit mask in zig-zag order: a run of zeros is found
//! by counting bits instead of stepping through them, and the correction
//! bits are applied once per block to the set bits only. Huffman codes are
//! looked up ten bits at a time from a 64-bit bit buffer; a one-component
//! scan is decoded a block row at a time, end-of-band runs skipped whole.
//!
//! Sequential files took libjpeg-turbo's careful decoder (`decode_mcu_slow`)
//! a quarter of their time: its fast one reads a corrupt code as a zero
//! without a warning, so the engine never lets it run (see `libjpeg.rs`).
//! Here a code and the value bits after it are decoded with one lookup
//! when both are in the next ten bits (`Table::combined`), and a row of
//! MCUs is decoded in one call.
//!
//! libjpeg still drives the file (`entropy_decoder_shim.c`): markers, each
//! scan's checks against the progression so far (its own decoder's
//! `start_pass`), the walk over the image and restart markers. This module
//! decodes the data between them with libjpeg's exact semantics, reading
//! ahead exactly as far — including what it does with corrupt data, so
//! that the two decoders agree on every file (tested on real and crafted
//! files and on thousands of corrupted ones).

use std::ffi::{c_int, c_uint};

use mozjpeg_sys::{JBLOCKROW, JHUFF_TBL, jpeg_decompress_struct};

use super::huffman::nonzero_zigzag;
use super::libjpeg;

/// Bits of the bit stream a Huffman code is looked up by at once; longer
/// codes (rare: they are the rarest symbols) take a slower path.
const LOOKAHEAD: u32 = 10;

/// `IMGPROC_RAN_OUT` and `IMGPROC_BAD_CODE` of the shim.
const RAN_OUT: c_int = 1;
const BAD_CODE: c_int = 2;

/// libjpeg's `jpeg_natural_order`: the block position of each zig-zag
/// index, with 16 extra entries so that a corrupt run past the end lands
/// on the last coefficient, as in libjpeg. In bytes, to stay small in the
/// cache; read through `natural`.
const NATURAL: [u8; 80] = {
    let mut table = [63; 80];
    let mut z = 0;
    while z < 64 {
        table[z] = super::huffman::ZIGZAG[z] as u8;
        z += 1;
    }
    table
};

/// The block position of zig-zag index `k` (up to 79, see `NATURAL`).
#[inline(always)]
fn natural(k: usize) -> usize {
    // Every entry is below 64; saying so spares the block's bounds check.
    usize::from(NATURAL[k]) & 63
}

/// A scan as the shim describes it (`imgproc_scan` there).
#[repr(C)]
pub struct Scan {
    progressive: c_int,
    ss: c_int,
    se: c_int,
    ah: c_int,
    al: c_int,
    blocks_in_mcu: c_int,
    component: [c_int; MAX_BLOCKS_IN_MCU],
    table: [*const JHUFF_TBL; MAX_BLOCKS_IN_MCU],
    ac_table: [*const JHUFF_TBL; MAX_BLOCKS_IN_MCU],
    /// Per block of an MCU: how many blocks its component's row advances
    /// from one MCU to the next (the component's MCU width).
    step: [c_int; MAX_BLOCKS_IN_MCU],
    unread_marker: *mut c_int,
}

/// `D_MAX_BLOCKS_IN_MCU` of `jpeglib.h`.
const MAX_BLOCKS_IN_MCU: usize = 10;

/// A Huffman table, decoded.
#[derive(Clone, Copy)]
struct Table {
    /// By the next `LOOKAHEAD` bits: the code's length × 256 + its symbol;
    /// 0 when the code is longer.
    fast: [u16; 1 << LOOKAHEAD],
    /// The largest code of each length (`maxcode` of `jdhuff.c`), −1 for
    /// none.
    max_code: [i32; 17],
    /// What turns a code of each length into an index into `symbols`.
    offset: [i32; 17],
    symbols: [u8; 256],
    /// For a sequential scan, by the next `LOOKAHEAD` bits: a code and the
    /// value bits after it, when both are among those bits (most of a
    /// photograph's coefficients), decoded at once. See `Coefficient`.
    combined: [u32; 1 << LOOKAHEAD],
}

/// An entry of `Table::combined`: bits 0–6 the bits it takes (`ABSENT`
/// when the code or its value is longer than the lookup, or is a run of 16
/// zeros: those take the symbol-by-symbol path), bit 7 an end of block,
/// bits 8–11 the zeros before the coefficient, bits 16–31 its value.
#[derive(Clone, Copy)]
struct Coefficient(u32);

impl Coefficient {
    const ABSENT: Coefficient = Coefficient(0x7F);
    const END: u32 = 0x80;

    fn new(length: u32, run: u32, value: i32) -> Coefficient {
        Coefficient(length | run << 8 | u32::from(value as i16 as u16) << 16)
    }

    #[inline(always)]
    fn length(self) -> u32 {
        self.0 & 0x7F
    }

    /// Whether the lookup decoded the code (and its value).
    #[inline(always)]
    fn is_present(self) -> bool {
        self.length() != Coefficient::ABSENT.length()
    }

    #[inline(always)]
    fn is_end(self) -> bool {
        self.0 & Self::END != 0
    }

    #[inline(always)]
    fn run(self) -> usize {
        (self.0 >> 8 & 15) as usize
    }

    #[inline(always)]
    fn value(self) -> i16 {
        (self.0 >> 16) as i16
    }
}

impl Table {
    const EMPTY: Table = Table {
        fast: [0; 1 << LOOKAHEAD],
        max_code: [-1; 17],
        offset: [0; 17],
        symbols: [0; 256],
        combined: [Coefficient::ABSENT.0; 1 << LOOKAHEAD],
    };

    /// As libjpeg's `jpeg_make_d_derived_tbl`, which has already accepted
    /// the same table for this scan; the checks are repeated so that this
    /// code stands on its own.
    fn new(table: &JHUFF_TBL, dc: bool) -> Result<Table, &'static str> {
        let bad = "Bogus Huffman table definition";
        let mut t = Table::EMPTY;
        let mut lengths = [0u8; 257];
        let mut count = 0usize;
        for length in 1..=16u8 {
            let n = usize::from(table.bits[usize::from(length)]);
            if count + n > 256 {
                return Err(bad);
            }
            lengths[count..count + n].fill(length);
            count += n;
        }
        let mut codes = [0u32; 256];
        let mut code = 0u32;
        let mut size = u32::from(lengths[0]);
        let mut p = 0;
        while p < count {
            while p < count && u32::from(lengths[p]) == size {
                codes[p] = code;
                code += 1;
                p += 1;
            }
            if code >= 1 << size {
                return Err(bad);
            }
            code <<= 1;
            size += 1;
        }
        let mut p = 0usize;
        for length in 1..=16usize {
            let n = usize::from(table.bits[length]);
            if n > 0 {
                t.offset[length] = p as i32 - codes[p] as i32;
                p += n;
                t.max_code[length] = codes[p - 1] as i32;
            }
        }
        t.symbols = table.huffval;
        for p in 0..count {
            let length = u32::from(lengths[p]);
            if dc && table.huffval[p] > 15 {
                return Err(bad);
            }
            if length <= LOOKAHEAD {
                let first = (codes[p] << (LOOKAHEAD - length)) as usize;
                let entry = (length as u16) << 8 | u16::from(table.huffval[p]);
                t.fast[first..first + (1 << (LOOKAHEAD - length))].fill(entry);
            }
        }
        Ok(t)
    }

    /// Fills `combined` for a sequential scan's DC (`dc`) or AC table.
    fn combine(&mut self, dc: bool) {
        for (bits, entry) in self.combined.iter_mut().enumerate() {
            *entry = Coefficient::ABSENT.0;
            let fast = self.fast[bits];
            if fast == 0 {
                continue; // a code longer than the lookup
            }
            let (length, symbol) = (u32::from(fast >> 8), fast as u8);
            let (run, size) = if dc {
                (0, u32::from(symbol))
            } else {
                (u32::from(symbol >> 4), u32::from(symbol & 15))
            };
            if !dc && size == 0 {
                // An end of block, or a run of 16 zeros (left to the
                // symbol-by-symbol path: it writes nothing).
                if run != 15 {
                    *entry = length | Coefficient::END;
                }
            } else if length + size <= LOOKAHEAD {
                let value = (bits as u32 >> (LOOKAHEAD - length - size)) & ((1 << size) - 1);
                let value = if size == 0 { 0 } else { extend(value, size) };
                *entry = Coefficient::new(length + size, run, value).0;
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A sequential scan: each block's DC difference and all its AC
    /// coefficients at once.
    Sequential,
    DcFirst,
    DcRefine,
    AcFirst,
    AcRefine,
}

/// The decoder between MCUs: the scan, its tables and the bits read ahead.
/// Lives in libjpeg's image pool (allocated by the shim, so it holds
/// nothing that needs dropping).
pub struct State {
    tables: [Table; 8],
    /// Per block of an MCU: its tables (the AC one only in a sequential
    /// scan) and its component's place in the scan.
    block_table: [u8; MAX_BLOCKS_IN_MCU],
    block_ac_table: [u8; MAX_BLOCKS_IN_MCU],
    block_component: [u8; MAX_BLOCKS_IN_MCU],
    block_step: [usize; MAX_BLOCKS_IN_MCU],
    blocks: usize,
    kind: Kind,
    ss: usize,
    se: usize,
    al: u32,
    eob_run: u32,
    last_dc: [i32; 4],
    bits: u64,
    count: u32,
    /// The input from where libjpeg's source stood when the scan (or the
    /// restart interval) began, and how much of it has been read since:
    /// libjpeg's source is moved on only when libjpeg reads from it next
    /// (`imgproc_scan_sync`), not after every MCU.
    input: *const u8,
    input_len: usize,
    at: usize,
    unread_marker: *mut c_int,
}

impl State {
    /// Takes up the input where libjpeg's source stands.
    ///
    /// # Safety
    /// As `libjpeg::unread_input`; the input outlives the decompressor.
    unsafe fn rest_from(&mut self, cinfo: &jpeg_decompress_struct) {
        // SAFETY: the caller's promises.
        let input = unsafe { libjpeg::unread_input(cinfo) };
        self.input = input.as_ptr();
        self.input_len = input.len();
        self.at = 0;
    }
}

/// How many bytes the shim allocates for a `State`.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn imgproc_scan_state_size() -> usize {
    // libjpeg's pools align to `double`, which covers every field here.
    const { assert!(std::mem::align_of::<State>() <= std::mem::align_of::<f64>()) };
    std::mem::size_of::<State>()
}

/// Starts a scan: libjpeg has accepted its parameters and tables, and its
/// source stands at the scan's data.
///
/// # Safety
/// `state` points at `imgproc_scan_state_size()` bytes aligned as `double`
/// (initialised or not); `scan` describes the current scan of `cinfo`, which
/// was made by `libjpeg::Decompress::new`; the table pointers live until
/// the scan ends.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn imgproc_scan_start(
    state: *mut State,
    scan: &Scan,
    cinfo: &jpeg_decompress_struct,
) {
    let kind = match (scan.progressive != 0, scan.ss == 0, scan.ah == 0) {
        (false, _, _) => Kind::Sequential,
        (true, true, true) => Kind::DcFirst,
        (true, true, false) => Kind::DcRefine,
        (true, false, true) => Kind::AcFirst,
        (true, false, false) => Kind::AcRefine,
    };
    let blocks = usize::try_from(scan.blocks_in_mcu).unwrap_or(0);
    let in_range = |v: c_int, max: c_int| (0..=max).contains(&v);
    // A sequential scan's band and point transform are not used (libjpeg
    // only warns when they are not the whole block, and decodes it whole).
    let band_in_range = kind == Kind::Sequential
        || (in_range(scan.ss, 63) && in_range(scan.se, 63) && in_range(scan.al, 13));
    if blocks > MAX_BLOCKS_IN_MCU
        || !band_in_range
        || scan.component[..blocks].iter().any(|&c| !in_range(c, 3))
    {
        // libjpeg's own checks (jdinput.c, jdphuff.c) refuse such scans first.
        libjpeg::fail("Invalid scan parameters");
    }
    let mut tables = [Table::EMPTY; 8];
    // Each distinct table once: (its source, whether it is a DC table).
    let mut sources: [(*const JHUFF_TBL, bool); 8] = [(std::ptr::null(), false); 8];
    let mut used = 0;
    let mut table_for = |source: *const JHUFF_TBL, dc: bool| -> u8 {
        if let Some(i) = sources[..used].iter().position(|&s| s == (source, dc)) {
            return i as u8;
        }
        // SAFETY: the caller guarantees the table pointers; libjpeg has
        // checked that each is present.
        let Some(table) = (unsafe { source.as_ref() }) else {
            libjpeg::fail("Huffman table not defined");
        };
        if used == tables.len() {
            libjpeg::fail("Invalid scan parameters");
        }
        let mut decoded = Table::new(table, dc).unwrap_or_else(|message| libjpeg::fail(message));
        if kind == Kind::Sequential {
            decoded.combine(dc);
        }
        tables[used] = decoded;
        sources[used] = (source, dc);
        used += 1;
        used as u8 - 1
    };
    let mut block_table = [0u8; MAX_BLOCKS_IN_MCU];
    let mut block_ac_table = [0u8; MAX_BLOCKS_IN_MCU];
    let mut block_component = [0u8; MAX_BLOCKS_IN_MCU];
    let mut block_step = [0usize; MAX_BLOCKS_IN_MCU];
    for b in 0..blocks {
        block_component[b] = scan.component[b] as u8;
        block_step[b] = usize::try_from(scan.step[b]).unwrap_or(0);
        match kind {
            Kind::DcRefine => {}
            Kind::Sequential => {
                block_table[b] = table_for(scan.table[b], true);
                block_ac_table[b] = table_for(scan.ac_table[b], false);
            }
            _ => block_table[b] = table_for(scan.table[b], kind == Kind::DcFirst),
        }
    }
    // SAFETY: the caller guarantees room and alignment; `write` does not
    // read what was there.
    unsafe {
        state.write(State {
            tables,
            block_table,
            block_ac_table,
            block_component,
            block_step,
            blocks,
            kind,
            ss: scan.ss as usize,
            se: scan.se as usize,
            al: scan.al as u32,
            eob_run: 0,
            last_dc: [0; 4],
            bits: 0,
            count: 0,
            input: std::ptr::null(),
            input_len: 0,
            at: 0,
            unread_marker: scan.unread_marker,
        });
        (*state).rest_from(cinfo);
    };
}

/// Moves libjpeg's source past what has been read, before libjpeg reads
/// from it (a restart marker, or the markers after the scan's last MCU).
///
/// # Safety
/// `state` was started by `imgproc_scan_start` for `cinfo`.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn imgproc_scan_sync(
    state: &mut State,
    cinfo: &mut jpeg_decompress_struct,
) {
    // SAFETY: `at` bytes of the input taken up were read, and libjpeg has
    // not moved its source since (it moves it only through this decoder
    // while the scan's MCUs are read).
    unsafe {
        libjpeg::consume_input(cinfo, state.at);
        state.rest_from(cinfo);
    }
}

/// Empties the bit buffer and returns the whole bytes it held: at a restart
/// marker they were not data.
///
/// # Safety
/// `state` was started by `imgproc_scan_start`.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn imgproc_scan_discard(state: &mut State) -> c_uint {
    let bytes = state.count / 8;
    state.bits = 0;
    state.count = 0;
    bytes
}

/// After libjpeg has read a restart marker: predictions and end-of-band
/// runs start afresh, and the data after the marker.
///
/// # Safety
/// `state` was started by `imgproc_scan_start` for `cinfo`.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn imgproc_scan_restart(
    state: &mut State,
    cinfo: &jpeg_decompress_struct,
) {
    state.last_dc = [0; 4];
    state.eob_run = 0;
    // SAFETY: the caller's promise.
    unsafe { state.rest_from(cinfo) };
}

/// Decodes `count` MCUs of a one-component scan: a run of consecutive
/// blocks of a block row, with no restart marker among them, which hold
/// what earlier scans decoded (zeros at first). Stops after an MCU that
/// ran out of data. Returns `RAN_OUT` and/or `BAD_CODE` for the shim to
/// warn about.
///
/// # Safety
/// `state` was started by `imgproc_scan_start` for the decompressor's
/// current scan, which has one component; `blocks` points at `count`
/// distinct blocks.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn imgproc_scan_decode_row(
    state: &mut State,
    blocks: *mut [i16; 64],
    count: usize,
) -> c_int {
    // SAFETY: the caller guarantees the blocks.
    let blocks = unsafe { std::slice::from_raw_parts_mut(blocks, count) };
    // SAFETY: the reader lives for this call only.
    let mut reader = unsafe { state.reader() };
    match state.kind {
        Kind::Sequential | Kind::DcFirst | Kind::DcRefine => {
            for block in blocks {
                let block: *mut [i16; 64] = block;
                // SAFETY: one block per MCU, from the slice.
                unsafe { mcu_of_blocks(state, &mut reader, |_| block) };
                if reader.status & RAN_OUT != 0 {
                    break;
                }
            }
        }
        Kind::AcFirst => {
            let mut i = 0;
            while i < blocks.len() && reader.status & RAN_OUT == 0 {
                if state.eob_run > 0 {
                    // Blocks of zeros in an end-of-band run: nothing to read.
                    let skip = (state.eob_run as usize).min(blocks.len() - i);
                    state.eob_run -= skip as u32;
                    i += skip;
                } else {
                    first_ac(state, &mut reader, &mut blocks[i]);
                    i += 1;
                }
            }
        }
        Kind::AcRefine => {
            #[cfg(target_arch = "x86_64")]
            if fast_bit_deposit() && !portable_forced() {
                // SAFETY: the CPU has the features (`fast_bit_deposit`).
                unsafe { refine_blocks_bmi2(state, &mut reader, blocks) };
                return finish(state, reader);
            }
            refine_blocks::<false>(state, &mut reader, blocks)
        }
    }
    finish(state, reader)
}

/// Decodes `count` consecutive MCUs of an interleaved scan (sequential,
/// or a progressive DC scan), with no restart marker among them: `first`
/// holds the first MCU's blocks, and each block of the next MCU lies its
/// component's MCU width further along its row. Returns as
/// `imgproc_scan_decode_row`.
///
/// # Safety
/// As `imgproc_scan_decode_row`, for `count` MCUs of `blocks_in_MCU`
/// distinct blocks each, which lie within their rows.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn imgproc_scan_decode_mcus(
    state: &mut State,
    first: *const JBLOCKROW,
    count: usize,
) -> c_int {
    if matches!(state.kind, Kind::AcFirst | Kind::AcRefine) {
        libjpeg::fail("Invalid scan parameters");
    }
    let mut blocks = [std::ptr::null_mut::<[i16; 64]>(); MAX_BLOCKS_IN_MCU];
    for (b, block) in blocks.iter_mut().enumerate().take(state.blocks) {
        // SAFETY: the caller guarantees `blocks` pointers.
        *block = unsafe { *first.add(b) }.cast();
    }
    // SAFETY: the reader lives for this call only.
    let mut reader = unsafe { state.reader() };
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("bmi2") && !portable_forced() {
        // SAFETY: the CPU has BMI2; the caller's promises.
        unsafe { interleaved_mcus_bmi2(state, &mut reader, &mut blocks, count) };
        return finish(state, reader);
    }
    // SAFETY: the caller's promises.
    unsafe { interleaved_mcus(state, &mut reader, &mut blocks, count) };
    finish(state, reader)
}

/// `imgproc_scan_decode_mcus`'s loop, from the first MCU's `blocks`.
///
/// # Safety
/// As `imgproc_scan_decode_mcus`.
#[inline(always)]
unsafe fn interleaved_mcus(
    state: &mut State,
    reader: &mut Reader,
    blocks: &mut [*mut [i16; 64]; MAX_BLOCKS_IN_MCU],
    count: usize,
) {
    for _ in 0..count {
        if state.kind == Kind::Sequential {
            for b in 0..state.blocks {
                // SAFETY: the caller guarantees that each MCU's blocks are
                // distinct and valid.
                sequential_block(state, reader, b, unsafe { &mut *blocks[b] });
            }
        } else {
            // A DC scan touches one coefficient a block, across several
            // arrays at once: the blocks a few MCUs ahead are fetched early
            // (a hint: past a row's end it reads nothing).
            #[cfg(target_arch = "x86_64")]
            for (block, step) in blocks.iter().zip(state.block_step).take(state.blocks) {
                let ahead = block.wrapping_add(4 * step);
                // SAFETY: prefetching reads no memory; any address will do.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        ahead.cast(),
                    )
                };
            }
            // SAFETY: the caller guarantees that each MCU's blocks are
            // distinct and valid.
            unsafe { mcu_of_blocks(state, reader, |b| blocks[b]) };
        }
        for (block, step) in blocks.iter_mut().zip(state.block_step).take(state.blocks) {
            // The next MCU's blocks lie a step along their rows (one past
            // the end after the last: not dereferenced).
            *block = block.wrapping_add(step);
        }
        if reader.status & RAN_OUT != 0 {
            break;
        }
    }
}

/// `interleaved_mcus` where the CPU has BMI2, whose shifts by a register
/// (`shlx`) are one cycle without flags: each code's shift is on the
/// decoder's critical path.
///
/// # Safety
/// As `interleaved_mcus`; the CPU has BMI2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2")]
unsafe fn interleaved_mcus_bmi2(
    state: &mut State,
    reader: &mut Reader,
    blocks: &mut [*mut [i16; 64]; MAX_BLOCKS_IN_MCU],
    count: usize,
) {
    // SAFETY: the caller's promises.
    unsafe { interleaved_mcus(state, reader, blocks, count) }
}

impl State {
    /// The bit stream where the last MCU left it.
    ///
    /// # Safety
    /// The reader is dropped before the decompressor, whose input it reads.
    unsafe fn reader<'a>(&self) -> Reader<'a> {
        // SAFETY: `input_len` bytes from `input` were the input unread when
        // they were taken up (`rest_from`); the caller keeps the input alive.
        let input = unsafe { std::slice::from_raw_parts(self.input, self.input_len) };
        Reader {
            bits: self.bits,
            count: self.count,
            input,
            at: self.at,
            // SAFETY: the shim points it at the decompressor's `unread_marker`.
            marker: unsafe { *self.unread_marker } != 0,
            met: 0,
            status: 0,
        }
    }
}

/// One MCU of a sequential scan or a DC scan: first (differences) or
/// refinement (one bit each).
///
/// # Safety
/// `block(b)` for each of the MCU's blocks is a distinct, valid block.
#[inline(always)]
unsafe fn mcu_of_blocks(
    state: &mut State,
    reader: &mut Reader,
    block: impl Fn(usize) -> *mut [i16; 64],
) {
    if state.kind == Kind::Sequential {
        for b in 0..state.blocks {
            // SAFETY: the caller's promise.
            sequential_block(state, reader, b, unsafe { &mut *block(b) });
        }
    } else if state.kind == Kind::DcFirst {
        // SAFETY: the caller's promise.
        unsafe { first_dc(state, reader, block) };
    } else {
        let p1 = 1i16 << state.al;
        for b in 0..state.blocks {
            if reader.take(1) != 0 {
                // SAFETY: the caller's promise.
                unsafe { (*block(b))[0] |= p1 };
            }
        }
    }
}

/// Refinement scans' blocks, stopping after one that ran out of data.
#[inline(always)]
fn refine_blocks<const PDEP: bool>(
    state: &mut State,
    reader: &mut Reader,
    blocks: &mut [[i16; 64]],
) {
    for block in blocks {
        refine_ac::<PDEP>(state, reader, block);
        if reader.status & RAN_OUT != 0 {
            break;
        }
    }
}

/// Keeps the reader's position for the next MCU; the status for the shim.
fn finish(state: &mut State, reader: Reader) -> c_int {
    state.bits = reader.bits;
    state.count = reader.count;
    state.at = reader.at;
    if reader.met != 0 {
        // SAFETY: the shim points it at the decompressor's `unread_marker`;
        // the marker met is left for libjpeg's reader.
        unsafe { *state.unread_marker = c_int::from(reader.met) };
    }
    reader.status
}

/// Whether the CPU has BMI2's bit deposit (`pdep`) and does it in a few
/// cycles, with `popcnt` (which baseline x86-64 lacks: counting bits is a
/// dozen instructions there). AMD's processors before Zen 3 have `pdep` in
/// microcode, slower than the loop it replaces.
#[cfg(target_arch = "x86_64")]
fn fast_bit_deposit() -> bool {
    use std::sync::OnceLock;
    static FAST: OnceLock<bool> = OnceLock::new();
    *FAST.get_or_init(|| {
        if !(std::arch::is_x86_feature_detected!("bmi2")
            && std::arch::is_x86_feature_detected!("popcnt"))
        {
            return false;
        }
        let leaf0 = std::arch::x86_64::__cpuid(0);
        let vendor = [leaf0.ebx, leaf0.edx, leaf0.ecx];
        let signature = std::arch::x86_64::__cpuid(1).eax;
        let amd = vendor == [0x6874_7541, 0x6974_6e65, 0x444d_4163]; // "AuthenticAMD"
        let family = ((signature >> 8) & 0xF) + ((signature >> 20) & 0xFF);
        !(amd && family < 0x19)
    })
}

/// `refine_blocks` with `pdep` and `popcnt`.
///
/// # Safety
/// The CPU has BMI1, BMI2 and POPCNT (`fast_bit_deposit`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi1,bmi2,popcnt")]
unsafe fn refine_blocks_bmi2(state: &mut State, reader: &mut Reader, blocks: &mut [[i16; 64]]) {
    refine_blocks::<true>(state, reader, blocks)
}

/// Where the `n`-th (from 0) set bit of `x` is, if it has that many.
#[inline(always)]
fn nth_set_bit<const PDEP: bool>(mut x: u64, n: u32) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if PDEP {
        // SAFETY: `PDEP` is true only inside functions compiled with BMI2
        // (`refine_blocks_bmi2`, and a test's), called only when the CPU
        // has it.
        let bit = unsafe { std::arch::x86_64::_pdep_u64(1 << n, x) };
        return (bit != 0).then(|| bit.trailing_zeros() as usize);
    }
    for _ in 0..n {
        x &= x.wrapping_sub(1);
    }
    (x != 0).then(|| x.trailing_zeros() as usize)
}

/// Block `b` of a sequential scan's MCU, as `decode_mcu_slow` of
/// libjpeg-turbo's `jdhuff.c`: the DC difference from the last DC of its
/// component, then runs of zeros and values up to the end of the block
/// (whatever the scan's band says: libjpeg only warns about a sequential
/// scan that names another). A code whose value bits are in the buffer
/// with it is decoded with them in one lookup (`Table::combined`); the
/// buffer is topped up exactly where libjpeg tops its own up, so that both
/// read the same bytes (`Reader::symbol`).
#[inline(always)]
fn sequential_block(state: &mut State, reader: &mut Reader, b: usize, block: &mut [i16; 64]) {
    let dc_table = &state.tables[usize::from(state.block_table[b])];
    let ac_table = &state.tables[usize::from(state.block_ac_table[b])];
    let mut window = Window::new(reader);
    let entry = window.coefficient(dc_table);
    let difference = if entry.is_present() {
        i32::from(entry.value())
    } else {
        window.slowly(|reader| {
            let size = u32::from(reader.symbol(dc_table));
            reader.value(size)
        })
    };
    let last = &mut state.last_dc[usize::from(state.block_component[b])];
    // libjpeg-turbo adds without an overflow check (on purpose, for
    // malformed files that repeat the largest difference): it wraps.
    *last = last.wrapping_add(difference);
    block[0] = *last as i16;
    let mut k = 1;
    while k < 64 {
        let entry = window.coefficient(ac_table);
        let (run, value) = if entry.is_present() {
            if entry.is_end() {
                break;
            }
            (entry.run(), entry.value())
        } else {
            let symbol = window.slowly(|reader| reader.symbol(ac_table));
            let (run, size) = (usize::from(symbol >> 4), u32::from(symbol & 15));
            if size == 0 {
                if run != 15 {
                    break;
                }
                // Sixteen zeros: nothing written.
                k += 16;
                continue;
            }
            (run, window.slowly(|reader| reader.value(size)) as i16)
        };
        k += run;
        block[natural(k)] = value;
        k += 1;
    }
    window.close();
}

/// A reader's bit buffer held in locals through a sequential block (the
/// reader itself stays in memory: its slow paths take it by reference),
/// written back around those paths and at the end (`close`).
struct Window<'r, 'a> {
    reader: &'r mut Reader<'a>,
    bits: u64,
    count: u32,
}

impl<'r, 'a> Window<'r, 'a> {
    #[inline(always)]
    fn new(reader: &'r mut Reader<'a>) -> Self {
        let (bits, count) = (reader.bits, reader.count);
        Window {
            reader,
            bits,
            count,
        }
    }

    /// The next code and its value bits when the buffer holds both and
    /// they are short enough for `Table::combined`; else `ABSENT`, nothing
    /// read, for `slowly`. Tops the buffer up as `Reader::symbol` does;
    /// libjpeg tops up for the value bits only when it holds fewer than
    /// they need, which a combined entry never does.
    #[inline(always)]
    fn coefficient(&mut self, table: &Table) -> Coefficient {
        if self.count < 8 {
            self.slowly(Reader::fill);
        }
        let entry = Coefficient(table.combined[(self.bits >> (64 - LOOKAHEAD)) as usize]);
        let length = entry.length();
        if length > self.count {
            return Coefficient::ABSENT;
        }
        self.bits <<= length;
        self.count -= length;
        entry
    }

    /// `f` on the reader, with the buffer written back before and taken
    /// up again after.
    #[inline(always)]
    fn slowly<T>(&mut self, f: impl FnOnce(&mut Reader<'a>) -> T) -> T {
        (self.reader.bits, self.reader.count) = (self.bits, self.count);
        let result = f(self.reader);
        (self.bits, self.count) = (self.reader.bits, self.reader.count);
        result
    }

    #[inline(always)]
    fn close(self) {
        (self.reader.bits, self.reader.count) = (self.bits, self.count);
    }
}

/// A DC first scan's MCU: each block's difference from the last DC of its
/// component, scaled down by the scan's point transform.
///
/// # Safety
/// As `dc_mcu`.
#[inline(always)]
unsafe fn first_dc(
    state: &mut State,
    reader: &mut Reader,
    block: impl Fn(usize) -> *mut [i16; 64],
) {
    for b in 0..state.blocks {
        let table = &state.tables[usize::from(state.block_table[b])];
        let size = u32::from(reader.symbol(table));
        let difference = reader.value(size);
        let last = &mut state.last_dc[usize::from(state.block_component[b])];
        let Some(dc) = last.checked_add(difference) else {
            libjpeg::fail("DCT coefficient out of range");
        };
        *last = dc;
        // SAFETY: the caller's promise.
        unsafe { (*block(b))[0] = ((dc as u32) << state.al) as i16 };
    }
}

/// An AC first scan's MCU (one block, not in an end-of-band run): runs of
/// zeros and values, as in a sequential scan, within the scan's band.
#[inline(always)]
fn first_ac(state: &mut State, reader: &mut Reader, block: &mut [i16; 64]) {
    let table = &state.tables[0];
    let mut k = state.ss;
    while k <= state.se {
        let symbol = reader.symbol(table);
        let (run, size) = (usize::from(symbol >> 4), u32::from(symbol & 15));
        if size != 0 {
            k += run;
            let value = reader.value(size);
            block[natural(k)] = ((value as u32) << state.al) as i16;
        } else if run == 15 {
            k += 15;
        } else {
            state.eob_run = (1 << run) - 1;
            if run > 0 {
                state.eob_run += reader.take(run as u32);
            }
            break;
        }
        k += 1;
    }
}

/// An AC refinement scan's MCU (one block), as `decode_mcu_AC_refine` of
/// `jdphuff.c`: each symbol says how many of the band's still-zero
/// coefficients to pass and whether the next one becomes ±1 at this bit;
/// every already non-zero coefficient passed (and all the rest of the
/// band after an end-of-band) takes one correction bit.
#[inline(always)]
fn refine_ac<const PDEP: bool>(state: &mut State, reader: &mut Reader, block: &mut [i16; 64]) {
    let (ss, se) = (state.ss, state.se);
    let p1 = 1i32 << state.al;
    let band = (u64::MAX >> (63 - se)) & (u64::MAX << ss);
    let mut nonzero = nonzero_zigzag(block) & band;
    // Correction bits are applied once the block's bits are read (a single
    // loop, instead of one per symbol): the bits in order, last in the low
    // bits, and the coefficients they belong to. Nothing read in between
    // depends on them: they never make a coefficient zero or non-zero.
    let mut corrections = Corrections::default();
    let mut k = ss;
    if state.eob_run == 0 {
        let table = &state.tables[0];
        while k <= se {
            let symbol = reader.symbol(table);
            let (run, size) = (u32::from(symbol >> 4), symbol & 15);
            let mut value = 0;
            if size != 0 {
                if size != 1 {
                    reader.status |= BAD_CODE;
                }
                value = if reader.take(1) != 0 { p1 } else { -p1 };
            } else if run != 15 {
                state.eob_run = 1 << run;
                if run > 0 {
                    state.eob_run += reader.take(run);
                }
                break;
            }
            // Pass `run` zeros (15 and one more for a ZRL) and the non-zero
            // coefficients among them, stopping at the next zero; past the
            // band's end when there are not that many (corrupt data).
            let ahead = band & (u64::MAX << k);
            let Some(zero) = nth_set_bit::<PDEP>(!nonzero & ahead, run) else {
                corrections.read(reader, nonzero & ahead);
                k = se + 1;
                if value != 0 {
                    // Where libjpeg writes it (past the band; the last
                    // coefficient at the very end), after the corrections.
                    corrections.apply(block, p1);
                    block[natural(k)] = value as i16;
                }
                break;
            };
            k = zero;
            corrections.read(reader, nonzero & ahead & ((1 << k) - 1));
            if value != 0 {
                block[natural(k)] = value as i16;
                nonzero |= 1 << k;
            }
            k += 1;
        }
    }
    if state.eob_run > 0 {
        if k <= se {
            corrections.read(reader, nonzero & (u64::MAX << k));
        }
        state.eob_run -= 1;
    }
    corrections.apply(block, p1);
}

/// Correction bits of a refinement scan, read but not yet applied.
#[derive(Default)]
struct Corrections {
    /// The bits in the order read, the last in the low bits.
    bits: u64,
    /// The coefficients they belong to (zig-zag order), in the same order.
    of: u64,
}

impl Corrections {
    /// Reads one bit for each coefficient in `mask` (which come after
    /// those read before).
    #[inline(always)]
    fn read(&mut self, reader: &mut Reader, mask: u64) {
        // No test for n = 0: reading no bits is harmless, and the test
        // would be a branch no predictor gets right.
        let n = mask.count_ones();
        let bits = if n <= 32 {
            u64::from(reader.take_bitwise(n))
        } else {
            let high = u64::from(reader.take_bitwise(32));
            high << (n - 32) | u64::from(reader.take_bitwise(n - 32))
        };
        // At most 63 bits in all: one per coefficient of the band.
        self.bits = self.bits << n | bits;
        self.of |= mask;
    }

    /// A 1 moves its coefficient one step of this scan's bit away from
    /// zero, unless that bit is set already.
    #[inline(always)]
    fn apply(&mut self, block: &mut [i16; 64], p1: i32) {
        let mut left = self.of.count_ones();
        while self.of != 0 {
            left -= 1;
            let z = self.of.trailing_zeros() as usize;
            self.of &= self.of - 1;
            let c = i32::from(block[natural(z)]);
            let grow = (self.bits >> left) & 1 != 0 && c & p1 == 0;
            let step = if c >= 0 { p1 } else { -p1 };
            block[natural(z)] = (c + if grow { step } else { 0 }) as i16;
        }
        self.bits = 0;
    }
}

/// `HUFF_EXTEND`: the `size`-bit value `bits` as a signed difference.
#[inline(always)]
fn extend(bits: u32, size: u32) -> i32 {
    let bits = bits as i32;
    // Without a branch: the sign is a coin toss no predictor gets right.
    // All ones when the top bit of the value is clear (a negative value).
    let negative = (bits - (1 << (size - 1))) >> 31;
    bits + (negative & (1 - (1 << size)))
}

/// The bit stream of one call: the bits left over from the one before, and
/// the input after them.
struct Reader<'a> {
    /// Unread bits at the top; below `count` all zero.
    bits: u64,
    count: u32,
    input: &'a [u8],
    /// Bytes of `input` moved into `bits`.
    at: usize,
    /// A marker ends the data: no more bytes (zeros stand in, as in libjpeg).
    marker: bool,
    /// The code of the marker met in this MCU's data (its two bytes read).
    met: u8,
    status: c_int,
}

impl Reader<'_> {
    /// Tops the buffer up to at least 57 bits, or to the marker that ends
    /// the data.
    #[inline(always)]
    fn fill(&mut self) {
        if self.count <= 56 && !self.marker {
            self.refill();
        }
    }

    #[inline(never)]
    fn refill(&mut self) {
        while self.count <= 56 && !self.marker {
            // Eight bytes without an 0xFF among them (nearly always): as
            // many as fit, at once.
            if let Some(word) = self.input.get(self.at..self.at + 8) {
                let word = u64::from_be_bytes(word.try_into().unwrap_or_default());
                let ff = (!word).wrapping_sub(0x0101_0101_0101_0101) & word & 0x8080_8080_8080_8080;
                if ff == 0 {
                    let n = (64 - self.count) / 8;
                    let shift = 64 - 8 * n;
                    self.bits |= (word >> shift << shift) >> self.count;
                    self.count += 8 * n;
                    self.at += n as usize;
                    return;
                }
            }
            let byte = self.next_byte();
            let byte = if byte == 0xFF {
                // Stuffed 0xFF 0x00 is a data byte 0xFF; any 0xFF fill bytes
                // before a marker are skipped, as libjpeg does.
                let mut code = self.next_byte();
                while code == 0xFF {
                    code = self.next_byte();
                }
                if code != 0 {
                    self.marker = true;
                    self.met = code;
                    return;
                }
                0xFF
            } else {
                byte
            };
            self.bits |= u64::from(byte) << (56 - self.count);
            self.count += 8;
        }
    }

    fn next_byte(&mut self) -> u8 {
        let Some(&byte) = self.input.get(self.at) else {
            libjpeg::premature_end()
        };
        self.at += 1;
        byte
    }

    /// Takes `n` bits (0 to 32), topping the buffer up first if it holds
    /// fewer, as libjpeg's `GET_BITS(n)` does. Past a marker, the missing
    /// bits are zeros and the MCU is marked as having run out.
    #[inline(always)]
    fn take(&mut self, n: u32) -> u32 {
        if self.count < n {
            self.fill();
            if self.count < n {
                self.status |= RAN_OUT;
                self.count = n;
            }
        }
        // Two shifts, so that n = 0 gives 0.
        let value = (self.bits >> 1 >> (63 - n)) as u32;
        self.bits <<= n;
        self.count -= n;
        value
    }

    /// A coefficient's value (or DC difference) of `size` bits, as a
    /// signed number (`HUFF_EXTEND` after `GET_BITS`); 0 for size 0.
    #[inline(always)]
    fn value(&mut self, size: u32) -> i32 {
        if size == 0 {
            0
        } else {
            extend(self.take(size), size)
        }
    }

    /// `n` bits (0 to 32) read as libjpeg reads them one at a time: the
    /// buffer is topped up only when it is empty.
    #[inline(always)]
    fn take_bitwise(&mut self, n: u32) -> u32 {
        let have = self.count;
        if have >= n || have == 0 {
            return self.take(n);
        }
        let high = self.take(have);
        high << (n - have) | self.take(n - have)
    }

    /// Decodes one Huffman symbol; a bit pattern that is no code reads as
    /// 0 (libjpeg's choice) and is reported.
    ///
    /// The buffer is topped up exactly when libjpeg's `HUFF_DECODE` tops
    /// its own up (fewer than 8 bits; for a longer code, fewer than 9, then
    /// empty), so that both have read the same bytes after every symbol and
    /// count the same bytes left over at a restart marker or after a scan.
    #[inline(always)]
    fn symbol(&mut self, table: &Table) -> u8 {
        if self.count < 8 {
            self.fill();
        }
        // The bits below `count` are zeros, but an entry no longer than
        // `count` was found by real bits alone (a prefix code).
        let entry = table.fast[(self.bits >> (64 - LOOKAHEAD)) as usize];
        let length = u32::from(entry >> 8);
        if entry != 0 && length <= self.count {
            self.take(length);
            return entry as u8;
        }
        self.long_symbol(table)
    }

    /// libjpeg's `jpeg_huff_decode`, bit by bit: from 9 bits (1 when a
    /// marker left fewer than 8).
    #[inline(never)]
    fn long_symbol(&mut self, table: &Table) -> u8 {
        let mut length = if self.count < 8 { 1 } else { 9 };
        let mut code = self.take(length) as i32;
        // No code is longer than 16 bits; like libjpeg, a 17th bit is read
        // before giving up.
        while length <= 16 && code > table.max_code[length as usize] {
            code = code << 1 | self.take(1) as i32;
            length += 1;
        }
        if length > 16 {
            self.status |= BAD_CODE;
            return 0;
        }
        let index = (code + table.offset[length as usize]) as usize & 0xFF;
        table.symbols[index]
    }
}

/// Whether a test has asked for the portable paths (the only ones on
/// other architectures): refinement scans without `pdep`, interleaved
/// scans without BMI2.
#[cfg(all(not(test), target_arch = "x86_64"))]
#[inline(always)]
fn portable_forced() -> bool {
    false
}

#[cfg(all(test, target_arch = "x86_64"))]
fn portable_forced() -> bool {
    tests::PORTABLE.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use mozjpeg_sys::{jpeg_read_coefficients, jpeg_start_decompress};

    use super::*;
    use crate::compress::libjpeg::{Decompress, Limits, encode_with_scans, guarded};
    use crate::compress::tests::{Rng, encode_jpeg, photo, progressive_grey};
    use crate::compress::transcode::block_row;

    /// Set by `the_portable_path_decodes_as_libjpeg`: the decoder takes
    /// the paths of CPUs without (fast) BMI2. Both paths give the same
    /// coefficients, so other tests running meanwhile are unaffected.
    pub(super) static PORTABLE: AtomicBool = AtomicBool::new(false);

    /// Each component's blocks, row by row.
    type Coefficients = Vec<Vec<[i16; 64]>>;

    /// Every component's blocks as `jpeg_read_coefficients` leaves them,
    /// read with the engine's decoder (`own`) or libjpeg's, and whether the
    /// engine's was used.
    fn coefficients(input: &[u8], own: bool) -> (Result<Coefficients, String>, bool) {
        let (mut decompress, _) = match Decompress::new(input, 256 << 20, Limits::NONE) {
            Ok(opened) => opened,
            Err(e) => return (Err(e), false),
        };
        if !own {
            decompress.keep_libjpeg_entropy_decoder();
        }
        let read = guarded(|| {
            // SAFETY: the header has been read; each component's array is
            // read row by row within its size in blocks, as libjpeg reports it.
            unsafe {
                let cinfo = decompress.raw();
                let arrays = jpeg_read_coefficients(cinfo);
                let components =
                    std::slice::from_raw_parts(cinfo.comp_info, cinfo.num_components as usize);
                let mut all = Vec::new();
                for (ci, c) in components.iter().enumerate() {
                    let mut blocks = Vec::new();
                    for row in 0..c.height_in_blocks {
                        let row = block_row(&mut cinfo.common, *arrays.add(ci), row, false)?;
                        let width = c.width_in_blocks as usize;
                        blocks.extend_from_slice(std::slice::from_raw_parts(row, width));
                    }
                    all.push(blocks);
                }
                Ok(all)
            }
        })
        .and_then(|read| read);
        let used = decompress.used_own_entropy_decoder();
        (read, used)
    }

    /// The engine's decoder reads `input` and gets libjpeg's coefficients.
    fn decodes_as_libjpeg(name: &str, input: &[u8]) {
        let (own, used) = coefficients(input, true);
        let (theirs, _) = coefficients(input, false);
        assert!(used, "{name}: the engine's decoder was used");
        let own = own.unwrap_or_else(|e| panic!("{name}: {e}"));
        let theirs = theirs.unwrap_or_else(|e| panic!("{name}: libjpeg: {e}"));
        assert!(
            own.iter().flatten().flatten().filter(|&&c| c != 0).count() > 1000,
            "{name}: a picture, not zeros"
        );
        assert!(own == theirs, "{name}: coefficients differ from libjpeg's");
    }

    /// `photo` decoded to `channels` samples per pixel, cropped to
    /// `width × height` from the top left.
    fn pixels(name: &str, channels: u8, width: u32, height: u32) -> Vec<u8> {
        let image = crate::compress::tests::decode(&photo(name));
        let image = image.crop_imm(0, 0, width, height);
        match channels {
            1 => image.to_luma8().into_raw(),
            _ => image.to_rgb8().into_raw(),
        }
    }

    #[test]
    fn progressive_files_decode_to_libjpegs_coefficients() {
        decodes_as_libjpeg(
            "mountain-meadow-progressive.jpg",
            &photo("mountain-meadow-progressive.jpg"),
        );
        // libjpeg's standard script: interleaved DC scans, spectral bands,
        // successive approximation (first and refinement scans of DC and AC),
        // with and without restart markers, in whole and partial MCUs.
        for (width, height) in [(600, 400), (301, 193)] {
            for channels in [3, 1] {
                let picture = pixels("coffee.jpg", channels, width, height);
                for quality in [92, 35] {
                    for restart in [0, 1, 7] {
                        let jpeg = encode_with_scans(
                            &picture,
                            (width, height, channels),
                            quality,
                            None,
                            restart,
                        )
                        .expect("encodes");
                        decodes_as_libjpeg(
                            &format!("{width}×{height}×{channels} q{quality} restart {restart}"),
                            &jpeg,
                        );
                    }
                }
            }
        }
        // One coefficient a scan, then refined: bands of one, and refinement
        // scans where nearly every block is in an end-of-band run.
        let most = crate::compress::libjpeg::MAX_SCANS as usize;
        decodes_as_libjpeg(
            "scans of one coefficient",
            &progressive_grey(160, 120, most),
        );
    }

    #[test]
    fn long_end_of_band_runs_decode_to_libjpegs_coefficients() {
        // 1024×1024 of nearly flat grey: AC scans whose 16,384 blocks are
        // nearly all in end-of-band runs (up to 32,767 blocks each).
        let (width, height) = (1024u32, 1024u32);
        let grey: Vec<u8> = (0..width * height)
            .map(|i| 120 + u8::from(i % 7919 == 0) * 60)
            .collect();
        let jpeg = encode_with_scans(&grey, (width, height, 1), 95, None, 0).expect("encodes");
        decodes_as_libjpeg("near-flat grey", &jpeg);
    }

    #[test]
    fn decoding_to_pixels_gives_libjpegs_pixels() {
        let picture = pixels("coffee.jpg", 3, 301, 193);
        let restarts = encode_with_scans(&picture, (301, 193, 3), 90, None, 3).expect("encodes");
        for input in [photo("mountain-meadow-progressive.jpg"), restarts] {
            // The pixel path (`jpeg_start_decompress`) takes the engine's
            // decoder too, or the comparison below would be libjpeg's with
            // itself.
            let (mut decompress, _) =
                Decompress::new(&input, 256 << 20, Limits::NONE).expect("header");
            // SAFETY: the header has been read.
            guarded(|| unsafe { jpeg_start_decompress(decompress.raw()) }).expect("starts");
            assert!(decompress.used_own_entropy_decoder());

            let decode = |own: bool| {
                let (mut decompress, _) =
                    Decompress::new(&input, 256 << 20, Limits::NONE).expect("header");
                if !own {
                    decompress.keep_libjpeg_entropy_decoder();
                }
                decompress.pixels().expect("decodes").data
            };
            assert!(decode(true) == decode(false));
        }
    }

    /// A sequential script: all components in one scan, or one scan each.
    fn sequential(interleaved: bool) -> Vec<mozjpeg_sys::jpeg_scan_info> {
        let whole = |components: &[i32]| mozjpeg_sys::jpeg_scan_info {
            comps_in_scan: components.len() as i32,
            component_index: std::array::from_fn(|i| components.get(i).copied().unwrap_or(0)),
            Ss: 0,
            Se: 63,
            Ah: 0,
            Al: 0,
        };
        if interleaved {
            vec![whole(&[0, 1, 2])]
        } else {
            vec![whole(&[0]), whole(&[1]), whole(&[2])]
        }
    }

    #[test]
    fn sequential_files_decode_to_libjpegs_coefficients() {
        for name in ["coffee.jpg", "astronaut-portrait-exif6.jpg"] {
            decodes_as_libjpeg(name, &photo(name));
        }
        let picture = pixels("coffee.jpg", 3, 301, 193);
        for interleaved in [true, false] {
            for restart in [0, 5] {
                let jpeg = encode_with_scans(
                    &picture,
                    (301, 193, 3),
                    75,
                    Some(&sequential(interleaved)),
                    restart,
                )
                .expect("encodes");
                decodes_as_libjpeg(
                    &format!("interleaved {interleaved}, restart {restart}"),
                    &jpeg,
                );
            }
        }
        let grey = pixels("coffee.jpg", 1, 301, 193);
        let script = [mozjpeg_sys::jpeg_scan_info {
            comps_in_scan: 1,
            ..sequential(true)[0]
        }];
        let jpeg = encode_with_scans(&grey, (301, 193, 1), 75, Some(&script), 0).expect("encodes");
        decodes_as_libjpeg("grey", &jpeg);
        // Every chroma layout (MCUs one to four blocks wide), and qualities
        // whose values are mostly too long for the one-lookup path (100)
        // or nearly all short (10).
        use jpeg_encoder::{ColorType, SamplingFactor};
        for sampling in [
            SamplingFactor::R_4_4_4,
            SamplingFactor::R_4_2_2,
            SamplingFactor::R_4_4_0,
            SamplingFactor::R_4_1_1,
        ] {
            for quality in [100, 10] {
                let jpeg = encode_jpeg(&picture, (301, 193), ColorType::Rgb, sampling, quality);
                decodes_as_libjpeg(&format!("{sampling:?} q{quality}"), &jpeg);
            }
        }
    }

    #[test]
    fn sequential_files_decoded_to_pixels_keep_libjpegs_decoder() {
        // Decoding to pixels goes an MCU at a time, not through the
        // whole-image buffer this decoder works in.
        let input = photo("coffee.jpg");
        let (mut decompress, _) = Decompress::new(&input, 256 << 20, Limits::NONE).expect("header");
        // SAFETY: the header has been read.
        let pixels = guarded(|| unsafe {
            mozjpeg_sys::jpeg_start_decompress(decompress.raw());
        });
        assert!(pixels.is_ok());
        assert!(!decompress.used_own_entropy_decoder());
    }

    /// Corrupted files: the engine's decoder fails where libjpeg's does (a
    /// corrupt-data warning fails the image) and decodes the same
    /// coefficients where libjpeg's decodes.
    #[test]
    fn corrupt_files_fail_or_decode_as_with_libjpeg() {
        let picture = pixels("coffee.jpg", 3, 96, 64);
        let sources = [
            encode_with_scans(&picture, (96, 64, 3), 80, None, 0).expect("encodes"),
            encode_with_scans(&picture, (96, 64, 3), 80, None, 2).expect("encodes"),
            encode_with_scans(&picture, (96, 64, 3), 80, Some(&sequential(true)), 0)
                .expect("encodes"),
            encode_with_scans(&picture, (96, 64, 3), 80, Some(&sequential(true)), 2)
                .expect("encodes"),
            encode_with_scans(&picture, (96, 64, 3), 80, Some(&sequential(false)), 3)
                .expect("encodes"),
        ];
        // Past the first scan header, so that most cases reach the data.
        let first_scan = |jpeg: &[u8]| {
            jpeg.windows(2)
                .position(|w| w == [0xFF, 0xDA])
                .expect("a scan")
        };
        let sources = sources.map(|jpeg| (first_scan(&jpeg), jpeg));
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut failed, mut decoded) = (0, 0);
        for round in 0..5000 {
            let (first_scan, source) = &sources[round % sources.len()];
            let first_scan = *first_scan;
            let mut bytes = source.clone();
            let at = first_scan + (rng.next() as usize % (bytes.len() - first_scan));
            match rng.next() % 4 {
                0 => bytes[at] = rng.next() as u8,
                1 => bytes[at] ^= 1 << (rng.next() % 8),
                2 => bytes.truncate(at),
                _ => {
                    bytes.insert(at, rng.next() as u8);
                }
            }
            let (own, _) = coefficients(&bytes, true);
            let (theirs, _) = coefficients(&bytes, false);
            match (&own, &theirs) {
                (Ok(a), Ok(b)) => {
                    assert!(a == b, "case {round}: both decode, differently");
                    decoded += 1;
                }
                (Err(_), Err(_)) => failed += 1,
                _ => panic!(
                    "case {round} (byte {at}): engine {:?}, libjpeg {:?}",
                    own.as_ref().err(),
                    theirs.as_ref().err()
                ),
            }
        }
        // Both kinds of outcome occurred, or the test would prove little.
        assert!(
            failed > 100 && decoded > 100,
            "{failed} failed, {decoded} decoded"
        );
    }

    #[test]
    fn the_portable_path_decodes_as_libjpeg() {
        /// Back to the CPU's own path when the test ends, failed or not.
        struct Portable;
        impl Drop for Portable {
            fn drop(&mut self) {
                PORTABLE.store(false, Ordering::Relaxed);
            }
        }
        PORTABLE.store(true, Ordering::Relaxed);
        let _portable = Portable;
        let picture = pixels("coffee.jpg", 3, 600, 400);
        let jpeg = encode_with_scans(&picture, (600, 400, 3), 92, None, 0).expect("encodes");
        decodes_as_libjpeg("portable path", &jpeg);
        decodes_as_libjpeg("portable path, 100 scans", &progressive_grey(160, 120, 100));
        for name in ["coffee.jpg", "astronaut-portrait-exif6.jpg"] {
            decodes_as_libjpeg(&format!("portable path, {name}"), &photo(name));
        }
    }

    #[test]
    fn the_nth_set_bit_is_found_with_and_without_pdep() {
        let naive = |x: u64, n: u32| (0..64).filter(|&i| x >> i & 1 == 1).nth(n as usize);
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for round in 0..20_000 {
            let x = match round % 3 {
                0 => rng.next(),
                1 => rng.next() & rng.next() & rng.next(),
                _ => !(rng.next() & rng.next()),
            };
            let n = (rng.next() % 20) as u32;
            let expected = naive(x, n);
            // The portable path: what CPUs without fast BMI2 run.
            assert_eq!(nth_set_bit::<false>(x, n), expected, "{x:#x}, {n}");
            #[cfg(target_arch = "x86_64")]
            if fast_bit_deposit() {
                #[target_feature(enable = "bmi2")]
                fn with_pdep(x: u64, n: u32) -> Option<usize> {
                    nth_set_bit::<true>(x, n)
                }
                // SAFETY: the CPU has BMI2 (`fast_bit_deposit`).
                assert_eq!(unsafe { with_pdep(x, n) }, expected, "{x:#x}, {n}");
            }
        }
    }

    #[test]
    fn tables_are_built_as_libjpeg_builds_them() {
        // One code of length 1, one of 2, one of 3: 0, 10, 110 (111 is none:
        // libjpeg allows no all-ones code).
        // SAFETY: all-zero is a valid JHUFF_TBL (counts, symbols and a flag).
        let mut table: JHUFF_TBL = unsafe { std::mem::zeroed() };
        table.bits[1] = 1;
        table.bits[2] = 1;
        table.bits[3] = 1;
        table.huffval[..3].copy_from_slice(&[5, 6, 7]);
        let t = Table::new(&table, true).expect("valid");
        assert_eq!(t.fast[0], 1 << 8 | 5);
        assert_eq!(t.fast[(1 << (LOOKAHEAD - 1)) - 1], 1 << 8 | 5);
        assert_eq!(t.fast[0b10 << (LOOKAHEAD - 2)], 2 << 8 | 6);
        assert_eq!(t.fast[0b110 << (LOOKAHEAD - 3)], 3 << 8 | 7);
        assert_eq!(t.fast[(1 << LOOKAHEAD) - 1], 0, "no code");
        table.bits[3] = 2;
        assert!(Table::new(&table, false).is_err(), "an all-ones code");
        table.bits[3] = 1;
        // Three codes of length 1 cannot exist; DC symbols above 15 neither.
        table.bits[1] = 3;
        assert!(Table::new(&table, false).is_err());
        table.bits[1] = 1;
        table.huffval[0] = 16;
        assert!(Table::new(&table, true).is_err());
        assert!(Table::new(&table, false).is_ok());
    }
}
