//! Re-compression without leaving the DCT domain, on libjpeg's coefficient
//! API: every coefficient is requantised to the target tables (or kept at
//! the source's step where that is coarser), 4:2:2 and 4:4:4 chroma is
//! halved to 4:2:0 (`chroma.rs`), the picture is turned on whole blocks by
//! libjpeg-turbo's lossless transforms (`transupp.c`), and the result is
//! entropy-coded with optimal Huffman tables built from symbol counts
//! gathered here (`huffman.rs`).
//!
//! The codecs are `libjpeg::Decompress` and `libjpeg::Compress`, which own
//! libjpeg's structs; everything here borrows them for one call at a time.
//! Coefficient arrays live in libjpeg's pools and are reached only through
//! `access_virt_barray`, one row at a time, within the bounds libjpeg
//! reports (`width_in_blocks`, `height_in_blocks`).

use std::ffi::{c_int, c_long, c_uint};
use std::marker::{PhantomData, PhantomPinned};
use std::ptr::NonNull;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mozjpeg_sys::{
    JBLOCK, JBLOCKARRAY, JCOEF, JDIMENSION, JHUFF_TBL, JXFORM_CODE, JXFORM_CODE_JXFORM_NONE,
    boolean, jpeg_add_quant_table, jpeg_alloc_huff_table, jpeg_common_struct, jpeg_component_info,
    jpeg_compress_struct, jpeg_copy_critical_parameters, jpeg_decompress_struct,
    jpeg_finish_compress, jpeg_finish_decompress, jpeg_read_coefficients, jpeg_set_quality,
    jpeg_write_coefficients, jvirt_barray_ptr,
};

use super::libjpeg::{
    Compress, Decompress, Limits, every_component_has_data, fail, guarded, write_icc,
};
use super::trellis::{RateModel, Trellis};
use super::{chroma, huffman};

/// How chroma resolution changes on the way to 4:2:0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chroma {
    /// Already 4:2:0 (or no chroma at all).
    Keep,
    /// 4:2:2: chroma has full height; halve it.
    HalveHeight,
    /// 4:4:4: halve both ways.
    HalveBoth,
}

/// `jpeg_transform_info` of `transupp.h`, opaque: it is allocated and
/// initialised by the C shim `transupp_shim.c`, compiled against the very
/// header libjpeg-turbo's `transupp.c` was, so Rust never states its
/// layout (the binding's declaration of it lacks the `drop_*` fields, and
/// `transupp.c` would write past its end).
#[repr(C)]
struct TransformInfo {
    _opaque: [u8; 0],
    _not_send_sync_or_unpin: PhantomData<(*mut u8, PhantomPinned)>,
}

// The binding declares these with its short struct; these declarations take
// the opaque one instead. Same symbols, same C signatures (a pointer is a
// pointer), hence the allowed clash.
#[allow(clashing_extern_declarations)]
unsafe extern "C-unwind" {
    fn jtransform_request_workspace(
        src: *mut jpeg_decompress_struct,
        info: *mut TransformInfo,
    ) -> boolean;
    fn jtransform_adjust_parameters(
        src: *mut jpeg_decompress_struct,
        dst: *mut jpeg_compress_struct,
        src_arrays: *mut jvirt_barray_ptr,
        info: *mut TransformInfo,
    ) -> *mut jvirt_barray_ptr;
    fn jtransform_execute_transform(
        src: *mut jpeg_decompress_struct,
        dst: *mut jpeg_compress_struct,
        src_arrays: *mut jvirt_barray_ptr,
        info: *mut TransformInfo,
    );
}

unsafe extern "C" {
    /// A zeroed `jpeg_transform_info` ("no crop, no trim") for `transform`,
    /// exact (`perfect`); null when out of memory.
    fn imgproc_transform_new(transform: JXFORM_CODE) -> *mut TransformInfo;
    fn imgproc_transform_free(info: *mut TransformInfo);
}

/// An owned `jpeg_transform_info`.
struct Transform(NonNull<TransformInfo>);

impl Transform {
    fn new(transform: JXFORM_CODE) -> Result<Self, String> {
        // SAFETY: takes a plain integer, returns a fresh allocation or null.
        let info = unsafe { imgproc_transform_new(transform) };
        NonNull::new(info)
            .map(Self)
            .ok_or_else(|| "out of memory".to_string())
    }
}

impl Drop for Transform {
    fn drop(&mut self) {
        // SAFETY: allocated by `imgproc_transform_new`, freed once; libjpeg
        // keeps no pointer to it beyond the calls it was passed to.
        unsafe { imgproc_transform_free(self.0.as_ptr()) };
    }
}

// libjpeg's Huffman table builder (jchuff.c), exported by the library but
// not declared by the binding: `jpeg_gen_optimal_table(j_compress_ptr,
// JHUFF_TBL *, long freq[])`, `freq` of 257 entries.
unsafe extern "C-unwind" {
    fn jpeg_gen_optimal_table(
        cinfo: *mut jpeg_compress_struct,
        table: *mut JHUFF_TBL,
        freq: *mut c_long,
    );
}

/// `JPOOL_IMAGE` of `jpeglib.h`: freed when the codec finishes or is destroyed.
const JPOOL_IMAGE: c_int = 1;

/// Re-compresses `src` at `quality` without leaving the DCT domain, as the
/// module says, turned by `transform`. `Ok(Err(src))` when `transform`
/// cannot be done exactly on whole blocks at this size; the caller then
/// decodes to pixels instead. Turning and halving are not combined.
/// On success, also the time spent before writing began.
pub fn transcode<'a>(
    mut src: Decompress<'a>,
    quality: u8,
    chroma: Chroma,
    transform: JXFORM_CODE,
    icc: Option<&[u8]>,
    lambda: f32,
    limits: Limits,
) -> Result<Result<(Vec<u8>, Duration), Decompress<'a>>, String> {
    let turning = transform != JXFORM_CODE_JXFORM_NONE;
    if turning && chroma != Chroma::Keep {
        return Ok(Err(src));
    }
    let info = Transform::new(transform)?;
    let possible = guarded(|| {
        // SAFETY: the header has been read; `info` is a live transform info.
        unsafe { jtransform_request_workspace(src.raw(), info.0.as_ptr()) != 0 }
    })?;
    if !possible {
        return Ok(Err(src));
    }
    let mut dst = Compress::new(limits)?;
    let started = Instant::now();
    let reading = guarded(|| {
        // SAFETY: libjpeg's coefficient API in its documented order (read
        // coefficients, copy critical parameters, set tables, write
        // coefficients, finish both). `src` and `dst` are distinct codecs,
        // each borrowed once for the whole block. Arrays and tables are
        // libjpeg's, indexed within the component counts libjpeg reports.
        unsafe {
            let src = src.raw();
            let dst = dst.raw();
            // Halving writes the source's luma array as the output's
            // (see `HalvedArrays`), which the encoder reads in pairs of
            // block rows: the arrays are requested for that.
            let src_arrays = if chroma == Chroma::Keep {
                jpeg_read_coefficients(src)
            } else {
                read_coefficients_for_pairs(src)?
            };
            jpeg_copy_critical_parameters(src, dst);
            // The target tables at this quality, libjpeg's own way.
            jpeg_set_quality(dst, c_int::from(quality), 1);
            let target = [
                (*dst.quant_tbl_ptrs[0]).quantval,
                (*dst.quant_tbl_ptrs[1]).quantval,
            ];
            if chroma != Chroma::Keep {
                let luma = &mut *dst.comp_info;
                (luma.h_samp_factor, luma.v_samp_factor) = (2, 2);
            }
            let sources = every_component_has_data(src)?;
            let mut slots: Vec<[u16; 64]> = Vec::with_capacity(sources.len());
            let mut tables = Vec::with_capacity(sources.len());
            for (ci, &source) in sources.iter().enumerate() {
                let wanted = match (ci, chroma) {
                    (0, _) | (_, Chroma::Keep) => coarser_of(&source, &target[usize::from(ci > 0)]),
                    // Halved chroma is new data: the target's steps.
                    _ => target[1],
                };
                let slot = slots.iter().position(|t| *t == wanted).unwrap_or_else(|| {
                    slots.push(wanted);
                    slots.len() - 1
                });
                let basic: [c_uint; 64] = wanted.map(c_uint::from);
                jpeg_add_quant_table(dst, slot as c_int, basic.as_ptr(), 100, 1);
                (*dst.comp_info.add(ci)).quant_tbl_no = slot as c_int;
                tables.push((source, wanted));
            }
            let mut trellises = standard_rates(dst).map(|rate| Trellis::new(lambda, &rate));
            for (ci, (source, wanted)) in tables.iter().enumerate() {
                if ci == 0 || chroma == Chroma::Keep {
                    let comp = &*src.comp_info.add(ci);
                    let trellis = trellises[usize::from(ci > 0)].as_deref_mut();
                    let array = *src_arrays.add(ci);
                    requantise_component(src, array, comp, source, wanted, trellis)?;
                }
            }
            // Optimal Huffman tables, from counts gathered here rather than
            // by libjpeg's slower statistics pass where the layout allows.
            let own_tables = counts_its_own_symbols(dst);
            dst.optimize_coding = boolean::from(!own_tables);
            let written = if turning {
                let arrays = jtransform_adjust_parameters(src, dst, src_arrays, info.0.as_ptr());
                jpeg_write_coefficients(dst, arrays);
                write_icc(dst, icc);
                jtransform_execute_transform(src, dst, src_arrays, info.0.as_ptr());
                Written::Source(arrays)
            } else if chroma == Chroma::Keep {
                jpeg_write_coefficients(dst, src_arrays);
                write_icc(dst, icc);
                Written::Source(src_arrays)
            } else {
                let halved = HalvedArrays::request(src, dst, src_arrays)?;
                jpeg_write_coefficients(dst, halved.arrays);
                halved.fill(
                    src,
                    dst,
                    src_arrays,
                    chroma,
                    &tables,
                    trellises[1].as_deref_mut(),
                )?;
                write_icc(dst, icc);
                Written::Halved(halved.arrays)
            };
            if own_tables {
                // The trellises have tallied the blocks as they chose them,
                // unless they were turned afterwards (which moves blocks
                // and reorders their coefficients).
                let tallied = match &trellises {
                    [Some(luma), Some(chroma)] if !turning => {
                        Some([luma.tally()?, chroma.tally()?])
                    }
                    _ => None,
                };
                install_optimal_tables(src, dst, written, tallied)?;
            }
            let reading = started.elapsed();
            jpeg_finish_compress(dst);
            jpeg_finish_decompress(src);
            Ok::<_, String>(reading)
        }
    })??;
    Ok(Ok((dst.into_bytes(), reading)))
}

/// The final coefficient arrays, and whose memory manager holds them.
#[derive(Clone, Copy)]
enum Written {
    /// All of them the source's.
    Source(*mut jvirt_barray_ptr),
    /// Luma the source's, halved chroma the destination's.
    Halved(*mut jvirt_barray_ptr),
}

impl Written {
    fn arrays(self) -> *mut jvirt_barray_ptr {
        match self {
            Self::Source(a) | Self::Halved(a) => a,
        }
    }

    fn held_by_source(self, component: usize) -> bool {
        matches!(self, Self::Source(_)) || component == 0
    }
}

type RequestBarray = unsafe extern "C-unwind" fn(
    &mut jpeg_common_struct,
    c_int,
    boolean,
    JDIMENSION,
    JDIMENSION,
    JDIMENSION,
) -> jvirt_barray_ptr;

/// libjpeg's `request_virt_barray` (`jmemmgr.c`: one function, whichever
/// codec's memory manager holds it).
static LIBJPEG_REQUEST: OnceLock<RequestBarray> = OnceLock::new();

/// `jpeg_read_coefficients`, with every coefficient array requested to be
/// readable two block rows at a time, its height rounded up to an even
/// number of rows. The extra row is never read for content: the encoder
/// reads blocks below a component's height from its own dummy blocks, but
/// asks for whole pairs of rows.
///
/// # Safety
/// As `jpeg_read_coefficients`: the header of `src` has been read.
unsafe fn read_coefficients_for_pairs(
    src: &mut jpeg_decompress_struct,
) -> Result<*mut jvirt_barray_ptr, String> {
    // SAFETY: `mem` is set up once the codec is created; the method is put
    // back after the call, and a codec whose call unwinds is not used again.
    unsafe {
        let mem = &mut *src.common.mem;
        let own = mem.request_virt_barray.ok_or("no libjpeg memory manager")?;
        let libjpeg = *LIBJPEG_REQUEST.get_or_init(|| own);
        if libjpeg as usize != own as usize {
            return Err("an unexpected libjpeg memory manager".into());
        }
        mem.request_virt_barray = Some(request_in_pairs);
        let arrays = jpeg_read_coefficients(src);
        (*src.common.mem).request_virt_barray = Some(own);
        Ok(arrays)
    }
}

/// `request_virt_barray` for `read_coefficients_for_pairs`.
///
/// # Safety
/// Called by libjpeg only, as its memory manager's method, once
/// `LIBJPEG_REQUEST` holds the method it stands in for.
unsafe extern "C-unwind" fn request_in_pairs(
    cinfo: &mut jpeg_common_struct,
    pool_id: c_int,
    pre_zero: boolean,
    blocks_per_row: JDIMENSION,
    rows: JDIMENSION,
    max_access: JDIMENSION,
) -> jvirt_barray_ptr {
    match LIBJPEG_REQUEST.get() {
        // SAFETY: libjpeg's own method, with its own codec; more rows and
        // a larger access window are both within its contract.
        Some(request) => unsafe {
            request(
                cinfo,
                pool_id,
                pre_zero,
                blocks_per_row,
                round_up(rows, 2),
                max_access.max(2),
            )
        },
        // Installed only after `LIBJPEG_REQUEST` is set.
        None => fail("libjpeg's array request is unknown"),
    }
}

/// Whether the output is one sequential Huffman-coded scan without restart
/// markers: the layout `huffman::count_scan` counts symbols for.
fn counts_its_own_symbols(dst: &jpeg_compress_struct) -> bool {
    dst.scan_info.is_null()
        && dst.arith_code == 0
        && dst.restart_interval == 0
        && dst.restart_in_rows == 0
        && (1..=4).contains(&dst.num_components)
        && !libjpeg_gathers()
}

#[cfg(not(test))]
fn libjpeg_gathers() -> bool {
    false
}

#[cfg(test)]
fn libjpeg_gathers() -> bool {
    LIBJPEG_GATHERS.with(|g| g.get())
}

#[cfg(test)]
thread_local! {
    /// Lets a test have libjpeg gather the symbols itself, to compare.
    pub(super) static LIBJPEG_GATHERS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The first block of block row `row` of a realised coefficient array.
///
/// # Safety
/// `array` belongs to `owner`'s memory manager and is realised, and `row`
/// is below its height. The row holds the array's width in blocks; it may
/// be read while other rows are taken, and written only through a pointer
/// taken with `writable` set. (libjpeg's default memory manager keeps every
/// array wholly in memory — with no backing store, an array that does not
/// fit is an error — so no row pointer is ever invalidated by another.)
pub(super) unsafe fn block_row(
    owner: &mut jpeg_common_struct,
    array: jvirt_barray_ptr,
    row: JDIMENSION,
    writable: bool,
) -> Result<*mut JBLOCK, String> {
    // SAFETY: the caller's promises.
    unsafe {
        let access = (*owner.mem)
            .access_virt_barray
            .ok_or("no libjpeg memory manager")?;
        let rows: JBLOCKARRAY = access(owner, array, row, 1, boolean::from(writable));
        Ok(*rows)
    }
}

/// Optimal Huffman tables for the final coefficients, installed in `dst`
/// in place of the standard ones, once the arrays hold their final values
/// and before `jpeg_finish_compress` writes them. `tallied`: what the luma
/// and the chroma trellis counted as they chose every real block (the AC
/// symbols, and the DC coefficients in order: luma's, then each chroma
/// component's), so that the blocks need not be read again.
///
/// # Safety
/// `written` names realised arrays of `dst`'s components, held by `src`'s
/// memory manager or by `dst`'s.
unsafe fn install_optimal_tables(
    src: &mut jpeg_decompress_struct,
    dst: &mut jpeg_compress_struct,
    written: Written,
    tallied: Option<[Tally; 2]>,
) -> Result<(), String> {
    let components: Vec<huffman::Component> = (0..dst.num_components.clamp(0, 4) as usize)
        .map(|ci| {
            // SAFETY: `comp_info` holds `num_components` entries.
            let c = unsafe { &*dst.comp_info.add(ci) };
            huffman::Component {
                h_samp: c.h_samp_factor as usize,
                v_samp: c.v_samp_factor as usize,
                width_in_blocks: c.width_in_blocks as usize,
                height_in_blocks: c.height_in_blocks as usize,
                dc_table: c.dc_tbl_no as usize,
                ac_table: c.ac_tbl_no as usize,
            }
        })
        .collect();
    let (image_width, image_height) = (dst.image_width as usize, dst.image_height as usize);
    let mut counts = match tallied.and_then(|t| by_component(&components, t)) {
        Some(Tallied { dc, ac }) => {
            let mut counts =
                huffman::count_scan(&components, image_width, image_height, |ci, r| {
                    let width = components[ci].width_in_blocks;
                    Ok(&dc[ci][r * width..(r + 1) * width])
                })?;
            for (table, symbols) in ac.iter().enumerate() {
                for (count, &n) in counts.ac[table].iter_mut().zip(symbols.iter()) {
                    *count += n;
                }
            }
            counts
        }
        None => {
            let arrays = written.arrays();
            huffman::count_scan(&components, image_width, image_height, |ci, r| {
                let owner = if written.held_by_source(ci) {
                    &mut src.common
                } else {
                    &mut dst.common
                };
                // SAFETY: `count_scan` asks for rows below `height_in_blocks` of
                // components below `num_components`, each `width_in_blocks` long,
                // and only reads them, before anything writes the arrays again.
                unsafe {
                    let first = block_row(owner, *arrays.add(ci), r as JDIMENSION, false)?;
                    Ok(std::slice::from_raw_parts(
                        first,
                        components[ci].width_in_blocks,
                    ))
                }
            })?
        }
    };
    // Components may share a table; each is built once (the builder
    // consumes its counts).
    let mut built = [[false; 4]; 2];
    for c in &components {
        for (dc, n) in [(true, c.dc_table), (false, c.ac_table)] {
            if std::mem::replace(&mut built[usize::from(dc)][n], true) {
                continue;
            }
            let (table, freq) = if dc {
                (&mut dst.dc_huff_tbl_ptrs[n], &mut counts.dc[n])
            } else {
                (&mut dst.ac_huff_tbl_ptrs[n], &mut counts.ac[n])
            };
            // SAFETY: the table is allocated in `dst`'s pools when missing;
            // `freq` has the 257 entries the builder reads and clears.
            unsafe {
                if table.is_null() {
                    *table = jpeg_alloc_huff_table(&mut dst.common);
                }
                let table = *table;
                // Builds the table from the counts and marks it unsent.
                jpeg_gen_optimal_table(dst, table, freq.as_mut_ptr());
            }
        }
    }
    Ok(())
}

/// What one trellis counted (`Trellis::tally`): AC symbols and DC
/// coefficients.
type Tally<'t> = (&'t [c_long; 256], &'t [i16]);

/// The luma and chroma trellises' tallies laid out by component.
struct Tallied<'t> {
    /// Each component's DC coefficients, a row of `width_in_blocks` per
    /// block row.
    dc: Vec<&'t [i16]>,
    /// The AC symbol counts of table 0 (luma) and 1 (chroma).
    ac: [&'t [c_long; 256]; 2],
}

/// The tallies by component, when they cover exactly the components'
/// blocks with tables 0 and 1; `None` when the blocks must be counted
/// instead.
fn by_component<'t>(
    components: &[huffman::Component],
    [(luma_ac, mut luma_dc), (chroma_ac, mut chroma_dc)]: [Tally<'t>; 2],
) -> Option<Tallied<'t>> {
    let mut planes = Vec::with_capacity(components.len());
    for (ci, c) in components.iter().enumerate() {
        if c.ac_table != usize::from(ci > 0) {
            return None;
        }
        let rest = if ci == 0 {
            &mut luma_dc
        } else {
            &mut chroma_dc
        };
        let (plane, after) = rest.split_at_checked(c.width_in_blocks * c.height_in_blocks)?;
        planes.push(plane);
        *rest = after;
    }
    (luma_dc.is_empty() && chroma_dc.is_empty()).then_some(Tallied {
        dc: planes,
        ac: [luma_ac, chroma_ac],
    })
}

fn round_up(n: JDIMENSION, multiple: JDIMENSION) -> JDIMENSION {
    n.div_ceil(multiple) * multiple
}

/// The coefficient arrays of a 4:2:0 output made from a 4:2:2 or 4:4:4
/// source: the source's luma array (read by `read_coefficients_for_pairs`
/// so that the encoder can take it two block rows at a time) and new
/// chroma arrays with a half or a quarter of the source's blocks.
struct HalvedArrays {
    /// Three array pointers in `dst`'s image pool, where libjpeg keeps
    /// reading them until the compression finishes: the first is the
    /// source's (held by `src`'s memory manager, which is finished after
    /// `dst`), the other two `dst`'s.
    arrays: *mut jvirt_barray_ptr,
    chroma_blocks: (JDIMENSION, JDIMENSION),
}

impl HalvedArrays {
    /// # Safety
    /// `src` has read its coefficients (3 components) into `src_arrays`
    /// with `read_coefficients_for_pairs`; `dst` has copied its parameters
    /// and not yet started writing.
    unsafe fn request(
        src: &jpeg_decompress_struct,
        dst: &mut jpeg_compress_struct,
        src_arrays: *mut jvirt_barray_ptr,
    ) -> Result<Self, String> {
        // SAFETY: as promised; the memory manager's functions allocate in
        // `dst`'s pools (or unwind on failure).
        unsafe {
            let mem = &*dst.common.mem;
            let (request, alloc) = mem
                .request_virt_barray
                .zip(mem.alloc_small)
                .ok_or("no libjpeg memory manager")?;
            let arrays = alloc(
                &mut dst.common,
                JPOOL_IMAGE,
                3 * size_of::<jvirt_barray_ptr>(),
            )
            .cast::<jvirt_barray_ptr>();
            let chroma_blocks = (src.image_width.div_ceil(16), src.image_height.div_ceil(16));
            arrays.write(*src_arrays);
            for ci in 1..3 {
                let array = request(
                    &mut dst.common,
                    JPOOL_IMAGE,
                    0,
                    chroma_blocks.0,
                    chroma_blocks.1,
                    1,
                );
                arrays.add(ci).write(array);
            }
            Ok(Self {
                arrays,
                chroma_blocks,
            })
        }
    }

    /// Called after `jpeg_write_coefficients`, which realises the arrays.
    ///
    /// # Safety
    /// As `request`, and `src_arrays` are `src`'s realised coefficient
    /// arrays; `tables` holds the (source, output) steps of 3 components.
    unsafe fn fill(
        &self,
        src: &mut jpeg_decompress_struct,
        dst: &mut jpeg_compress_struct,
        src_arrays: *mut jvirt_barray_ptr,
        chroma: Chroma,
        tables: &[([u16; 64], [u16; 64])],
        mut trellis: Option<&mut Trellis>,
    ) -> Result<(), String> {
        // SAFETY: rows and blocks below each array's dimensions, as the
        // loops bound them; two source rows of a chroma component are read
        // at a time (from the same read-only array) and one output row
        // written, from different arrays and memory managers.
        unsafe {
            let (out_w, out_h) = self.chroma_blocks;
            for (ci, (q_in, q_out)) in tables.iter().enumerate().take(3).skip(1) {
                let comp = &*src.comp_info.add(ci);
                let (in_w, in_h) = (comp.width_in_blocks as usize, comp.height_in_blocks);
                if in_w == 0 || in_h == 0 {
                    return Err("a chroma component has no blocks".into());
                }
                let halving = HalvingTables::new(q_in, q_out);
                let array = *src_arrays.add(ci);
                for row in 0..out_h {
                    let top_row = (2 * row).min(in_h - 1);
                    let bottom_row = (2 * row + 1).min(in_h - 1);
                    // Read-only, possibly the same row twice.
                    let top = block_row(&mut src.common, array, top_row, false)?;
                    let bottom = block_row(&mut src.common, array, bottom_row, false)?;
                    let (top, bottom) = (
                        std::slice::from_raw_parts(top, in_w),
                        std::slice::from_raw_parts(bottom, in_w),
                    );
                    let out = block_row(&mut dst.common, *self.arrays.add(ci), row, true)?;
                    let out = std::slice::from_raw_parts_mut(out, out_w as usize);
                    halve_row(out, top, bottom, chroma, &halving, trellis.as_deref_mut());
                }
            }
            Ok(())
        }
    }
}

/// The steps of one chroma component's halving: the source's, to
/// dequantise, and the reciprocals of the output's, to quantise.
struct HalvingTables<'a> {
    source: &'a [u16; 64],
    output: &'a [u16; 64],
    reciprocal: [f32; 64],
}

impl<'a> HalvingTables<'a> {
    fn new(source: &'a [u16; 64], output: &'a [u16; 64]) -> Self {
        Self {
            source,
            output,
            reciprocal: output.map(|q| 1.0 / f32::from(q.max(1))),
        }
    }
}

/// One block row of halved chroma, `out`, from two source rows (the same
/// one twice at the bottom edge). Every chroma coefficient of a 4:4:4
/// source passes through here, in 8-lane float arithmetic, so the loop is
/// compiled twice: for the baseline CPU and, chosen at run time, for AVX2,
/// which does the 8 lanes in one instruction instead of two. Both give the
/// same bits: no operation is fused or reordered.
fn halve_row(
    out: &mut [JBLOCK],
    top: &[JBLOCK],
    bottom: &[JBLOCK],
    chroma: Chroma,
    tables: &HalvingTables,
    trellis: Option<&mut Trellis>,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has just been checked for AVX2.
        return unsafe { halve_row_avx2(out, top, bottom, chroma, tables, trellis) };
    }
    halve_row_with(out, top, bottom, chroma, tables, trellis);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn halve_row_avx2(
    out: &mut [JBLOCK],
    top: &[JBLOCK],
    bottom: &[JBLOCK],
    chroma: Chroma,
    tables: &HalvingTables,
    trellis: Option<&mut Trellis>,
) {
    halve_row_with(out, top, bottom, chroma, tables, trellis);
}

#[inline(always)]
fn halve_row_with(
    out: &mut [JBLOCK],
    top: &[JBLOCK],
    bottom: &[JBLOCK],
    chroma: Chroma,
    tables: &HalvingTables,
    mut trellis: Option<&mut Trellis>,
) {
    let in_w = top.len().min(bottom.len());
    if in_w == 0 {
        return;
    }
    let deq = |b: &JBLOCK| chroma::dequantise(b, tables.source);
    let pair = |a: &JBLOCK, b: &JBLOCK| {
        let rows = chroma::nonzero_rows(a) | chroma::nonzero_rows(b);
        chroma::halve_vertically(&deq(a), &deq(b), rows)
    };
    for (col, block) in out.iter_mut().enumerate() {
        let halved = match chroma {
            Chroma::HalveHeight => {
                let c = col.min(in_w - 1);
                pair(&top[c], &bottom[c]).0
            }
            _ => {
                let (l, r) = ((2 * col).min(in_w - 1), (2 * col + 1).min(in_w - 1));
                let (left, left_rows) = pair(&top[l], &bottom[l]);
                let (right, right_rows) = pair(&top[r], &bottom[r]);
                chroma::halve_horizontally(&left, &right, left_rows | right_rows)
            }
        };
        *block = chroma::quantise(&halved, &tables.reciprocal);
        if let Some(t) = trellis.as_deref_mut() {
            t.optimise(block, tables.output, |k| halved[k]);
        }
    }
}

/// The output step of each coefficient: the target's, or the source's where
/// that is coarser.
pub fn coarser_of(source: &[u16; 64], target: &[u16; 64]) -> [u16; 64] {
    std::array::from_fn(|k| source[k].max(target[k]))
}

/// Fixed-point factors `old / new` with 16 fractional bits, rounded down.
/// `new ≥ old` (see `coarser_of`), so a factor is at most 1; 1 itself is
/// stored as 65535/65536, which gives the same result for every coefficient
/// up to 2^15 (see `requantise_block`). The error is under 1/30 of a step,
/// only ever towards zero.
fn requantise_factors(old: &[u16; 64], new: &[u16; 64]) -> [u16; 64] {
    std::array::from_fn(|k| {
        let (old, new) = (u32::from(old[k]), u32::from(new[k].max(old[k]).max(1)));
        ((old << 16) / new).min(u32::from(u16::MAX)) as u16
    })
}

/// `c' = round(c · old / new)` for every coefficient of the component's
/// real blocks, with a fixed-point factor per position instead of a
/// division, then the trellis' choices where there is one. An exact half
/// rounds towards zero: both neighbours are equally far from the source's
/// value, and zero costs fewer bits. (Rounding it away from zero keeps
/// every ±1 when the step doubles, say from quality 75 to 50, and makes the
/// file a fifth larger for nothing.)
///
/// # Safety
/// `array` is `cinfo`'s realised coefficient array of component `comp`.
unsafe fn requantise_component(
    cinfo: &mut jpeg_decompress_struct,
    array: jvirt_barray_ptr,
    comp: &jpeg_component_info,
    old: &[u16; 64],
    new: &[u16; 64],
    mut trellis: Option<&mut Trellis>,
) -> Result<(), String> {
    if old == new && trellis.is_none() {
        return Ok(());
    }
    let factor = requantise_factors(old, new);
    let width = comp.width_in_blocks as usize;
    for row in 0..comp.height_in_blocks {
        // SAFETY: rows below `height_in_blocks` of `width_in_blocks` blocks
        // exist in the array libjpeg allocated for this component; one row
        // is borrowed at a time.
        let blocks = unsafe {
            std::slice::from_raw_parts_mut(block_row(&mut cinfo.common, array, row, true)?, width)
        };
        if let Some(t) = trellis.as_deref_mut() {
            // A block at a time, its source kept on the stack: the trellis
            // weighs the requantised block against it.
            for block in blocks.iter_mut() {
                let original = *block;
                requantise_blocks(std::slice::from_mut(block), &factor);
                t.optimise(block, new, |k| f32::from(original[k]) * f32::from(old[k]));
            }
        } else {
            requantise_blocks(blocks, &factor);
        }
    }
    Ok(())
}

/// Code lengths of the standard AC tables (luma, chroma) that
/// `jpeg_copy_critical_parameters` installs: the rates the optimisation
/// weighs. The optimal tables built afterwards are shorter still for the
/// symbols that remain common.
fn standard_rates(dst: &jpeg_compress_struct) -> [RateModel; 2] {
    std::array::from_fn(|t| {
        let table = dst.ac_huff_tbl_ptrs[t];
        if table.is_null() {
            // No table: every symbol costs the same, so only distortion
            // and the count of symbols decide.
            RateModel::from_table(&[0; 17], &[0; 256])
        } else {
            // SAFETY: a non-null table pointer of a live compressor points
            // at a table in its pools.
            let table = unsafe { &*table };
            RateModel::from_table(&table.bits, &table.huffval)
        }
    })
}

/// Every coefficient of a JPEG passes through here once, so the loop is
/// compiled twice: for the baseline CPU and, chosen at run time, for AVX2,
/// which does 16 coefficients per instruction instead of 8.
fn requantise_blocks(blocks: &mut [[JCOEF; 64]], factor: &[u16; 64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has just been checked for AVX2.
        return unsafe { requantise_blocks_avx2(blocks, factor) };
    }
    for block in blocks {
        requantise_block(block, factor);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn requantise_blocks_avx2(blocks: &mut [[JCOEF; 64]], factor: &[u16; 64]) {
    for block in blocks {
        requantise_block(block, factor);
    }
}

/// `round(|c| · f / 2^16)` with an exact half rounded down, from the high
/// and low halves of the 32-bit product: 16-bit lanes throughout, so the
/// compiler can use the CPU's multiply-high instructions.
#[inline(always)]
fn requantise_block(block: &mut [JCOEF; 64], factor: &[u16; 64]) {
    for (c, &f) in block.iter_mut().zip(factor) {
        // |c| ≤ 2^11 for 8-bit data; clamp so that no input can overflow.
        let a = c.unsigned_abs().min(1 << 11);
        let product = u32::from(a) * u32::from(f);
        let (high, low) = ((product >> 16) as u16, product as u16);
        // Adding 2^15 − 1 before the shift carries into the high half
        // exactly when the low half is above 2^15.
        let scaled = (high + u16::from(low > 0x8000)) as JCOEF;
        *c = if *c < 0 { -scaled } else { scaled };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requantising_rounds_to_the_nearest_step() {
        let (mut old, mut new) = ([1u16; 64], [1u16; 64]);
        (old[0], new[0]) = (3, 10);
        let factor = requantise_factors(&old, &new);
        // 7·3 = 21 → 2.1 → 2; −5·3 = −15 → −1.5 → −1 (a half towards zero)
        let mut block = [0 as JCOEF; 64];
        block[0] = 7;
        requantise_block(&mut block, &factor);
        assert_eq!(block[0], 2);
        block[0] = -5;
        requantise_block(&mut block, &factor);
        assert_eq!(block[0], -1);
        block[0] = -6;
        requantise_block(&mut block, &factor);
        assert_eq!(block[0], -2, "−1.8 → −2");
        // The same as the exact rounding of the fixed-point product, for every
        // coefficient and every pair of steps.
        let mut steps: Vec<(u16, u16)> = (1..=255u16)
            .flat_map(|o| [(o, o), (o, o + 1), (o, 2 * o), (o, 255)])
            .collect();
        steps.extend([(1, 1), (3, 10), (50, 51), (1, 255), (254, 255)]);
        for (o, n) in steps {
            let factor = requantise_factors(&[o; 64], &[n.max(o); 64]);
            let exact = (u32::from(o) << 16) / u32::from(n.max(o));
            let mut blocks: Vec<[JCOEF; 64]> = (-2048i32..2048)
                .step_by(64)
                .map(|b| std::array::from_fn(|k| (b + k as i32) as JCOEF))
                .collect();
            let sources = blocks.clone();
            requantise_blocks(&mut blocks, &factor);
            for (c, r) in sources.iter().flatten().zip(blocks.iter().flatten()) {
                let a = u32::from(c.unsigned_abs());
                let want = ((a * exact + (1 << 15) - 1) >> 16) as JCOEF;
                assert_eq!(
                    *r,
                    if *c < 0 { -want } else { want },
                    "{c} with steps {o} → {n}"
                );
            }
        }
        // Equal steps change nothing, at the extremes of the range.
        let mut block: [JCOEF; 64] = std::array::from_fn(|k| if k % 2 == 0 { 2047 } else { -2048 });
        let same = block;
        requantise_block(&mut block, &requantise_factors(&[7; 64], &[7; 64]));
        assert_eq!(block, same);
    }

    /// The AVX2 build of the halving loop (where the CPU has it) writes the
    /// same coefficients as the baseline build, with and without the trellis.
    #[test]
    fn halving_gives_the_same_blocks_on_every_cpu_path() {
        let mut rng = crate::compress::tests::Rng(0x9e37_79b9_7f4a_7c15);
        // Sparse photographic chroma: a few low-frequency coefficients.
        let mut rows: Vec<Vec<JBLOCK>> = (0..2)
            .map(|_| {
                (0..9)
                    .map(|_| {
                        std::array::from_fn(|k| {
                            let r = rng.next();
                            if k < 20 && r.is_multiple_of(3) {
                                ((r >> 40) % 61) as JCOEF - 30
                            } else {
                                0
                            }
                        })
                    })
                    .collect()
            })
            .collect();
        rows[1][4] = [0; 64];
        let (q_in, q_out): ([u16; 64], [u16; 64]) = (
            std::array::from_fn(|k| 3 + k as u16 / 4),
            std::array::from_fn(|k| 17 + k as u16),
        );
        let tables = HalvingTables::new(&q_in, &q_out);
        let rate = RateModel::from_table(&[0; 17], &[0; 256]);
        for chroma in [Chroma::HalveHeight, Chroma::HalveBoth] {
            for lambda in [0.0, f32::from(crate::compress::DEFAULT_RDO_LAMBDA)] {
                let width = if chroma == Chroma::HalveBoth { 5 } else { 9 };
                let (mut plain, mut dispatched) = (vec![[0; 64]; width], vec![[0; 64]; width]);
                let mut t = Trellis::new(lambda, &rate);
                halve_row_with(
                    &mut plain,
                    &rows[0],
                    &rows[1],
                    chroma,
                    &tables,
                    t.as_deref_mut(),
                );
                halve_row(
                    &mut dispatched,
                    &rows[0],
                    &rows[1],
                    chroma,
                    &tables,
                    t.as_deref_mut(),
                );
                assert_eq!(plain, dispatched, "{chroma:?}, λ {lambda}");
                assert!(
                    plain.iter().flatten().any(|&c| c != 0),
                    "the row is not all zero"
                );
            }
        }
    }

    #[test]
    fn the_output_step_is_never_finer_than_the_source() {
        let source: [u16; 64] = std::array::from_fn(|k| k as u16 + 1);
        let target = [32u16; 64];
        let out = coarser_of(&source, &target);
        assert!(out.iter().zip(&source).all(|(o, s)| o >= s));
        assert_eq!(out[0], 32);
        assert_eq!(out[63], 64);
    }
}
