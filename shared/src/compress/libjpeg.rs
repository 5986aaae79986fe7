//! A small safe layer over libjpeg-turbo's API, as built by `mozjpeg-sys`
//! and used here in its libjpeg-turbo profile (`JCP_FASTEST`: baseline,
//! Annex K tables, no trellis). It decodes to pixels, encodes pixels, and
//! reads and writes DCT coefficients, which is what lets a JPEG be
//! re-compressed without a round trip through pixels.
//!
//! libjpeg reports fatal errors through `error_exit`, which must not
//! return. Ours unwinds (the library is compiled with `-fexceptions` for
//! this), and every public entry point catches the unwind and returns an
//! `Err`; the `Drop` impls release libjpeg's memory either way.

use std::cell::UnsafeCell;
use std::ffi::{c_int, c_long, c_uint, c_ulong};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::ptr;
use std::time::{Duration, Instant};

use mozjpeg_sys::{
    J_COLOR_SPACE, J_INT_PARAM, JBLOCK, JCOEF, JCP_FASTEST, JCROP_CODE, JDIMENSION, JHUFF_TBL,
    JWRN_JPEG_EOF, JXFORM_CODE, JXFORM_CODE_JXFORM_NONE, boolean, jpeg_add_quant_table,
    jpeg_alloc_huff_table, jpeg_c_set_int_param, jpeg_common_struct, jpeg_component_info,
    jpeg_compress_struct, jpeg_copy_critical_parameters, jpeg_create_compress,
    jpeg_create_decompress, jpeg_decompress_struct, jpeg_destination_mgr, jpeg_destroy_compress,
    jpeg_destroy_decompress, jpeg_error_mgr, jpeg_finish_compress, jpeg_finish_decompress,
    jpeg_mem_src, jpeg_read_coefficients, jpeg_read_header, jpeg_read_scanlines, jpeg_save_markers,
    jpeg_set_defaults, jpeg_set_quality, jpeg_start_compress, jpeg_start_decompress,
    jpeg_std_error, jpeg_write_coefficients, jpeg_write_icc_profile, jpeg_write_scanlines,
    jvirt_barray_ptr,
};

use super::{chroma, huffman};

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

unsafe fn message(cinfo: &mut jpeg_common_struct) -> String {
    // JMSG_LENGTH_MAX is 200; the binding's parameter type is shorter.
    let buffer = UnsafeCell::new([0u8; 200]);
    // SAFETY: `err` was set up by `new_error_mgr`; `format_message` writes a
    // NUL-terminated string of at most 200 bytes into the buffer.
    unsafe {
        if let Some(format) = (*cinfo.err).format_message {
            format(cinfo, &*(buffer.get() as *const [u8; 80]));
        }
    }
    let bytes = buffer.into_inner();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    let text = unsafe { message(cinfo) };
    resume_unwind(Box::new(Fatal(text)))
}

/// Warnings are silent, except a premature end of data: libjpeg would fill
/// the rest of the picture with grey, and a broken image must fail instead.
unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    if level < 0 {
        // SAFETY: `err` is valid for the life of the struct.
        let code = unsafe {
            (*cinfo.err).num_warnings += 1;
            (*cinfo.err).msg_code
        };
        if code == JWRN_JPEG_EOF as c_int {
            let text = unsafe { message(cinfo) };
            resume_unwind(Box::new(Fatal(text)))
        }
    }
}

fn new_error_mgr() -> Box<jpeg_error_mgr> {
    // SAFETY: an all-zero error manager is what `jpeg_std_error` expects to fill.
    let mut err: Box<jpeg_error_mgr> = Box::new(unsafe { std::mem::zeroed() });
    unsafe { jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    err
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
    cinfo: Box<jpeg_decompress_struct>,
    // Referenced by `cinfo.common.err`; dropped after it.
    _err: Box<jpeg_error_mgr>,
    _input: PhantomData<&'a [u8]>,
}

impl Drop for Decompress<'_> {
    fn drop(&mut self) {
        // SAFETY: safe in every state, including before `jpeg_create_decompress`
        // finished (libjpeg checks `mem` for null).
        unsafe { jpeg_destroy_decompress(&mut self.cinfo) };
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
    /// `max_memory` bytes.
    pub fn new(input: &'a [u8], max_memory: usize) -> Result<(Self, Header), String> {
        let mut err = new_error_mgr();
        // SAFETY: zeroed, then created by `jpeg_create_decompress`; `Drop` copes with both.
        let mut cinfo: Box<jpeg_decompress_struct> = Box::new(unsafe { std::mem::zeroed() });
        cinfo.common.err = &mut *err;
        let mut this = Self {
            cinfo,
            _err: err,
            _input: PhantomData,
        };
        let header = guarded(|| unsafe {
            let cinfo = &mut *this.cinfo;
            jpeg_create_decompress(cinfo);
            (*cinfo.common.mem).max_memory_to_use =
                max_memory.try_into().unwrap_or(std::ffi::c_long::MAX);
            jpeg_mem_src(cinfo, input.as_ptr(), input.len() as c_ulong);
            jpeg_save_markers(cinfo, APP1, 0xFFFF);
            jpeg_save_markers(cinfo, APP2, 0xFFFF);
            jpeg_read_header(cinfo, 1);
            read_header(cinfo)
        })?;
        Ok((this, header))
    }

    /// Caps libjpeg's own allocations from here on.
    pub fn set_memory_budget(&mut self, bytes: usize) {
        // SAFETY: `mem` was set up by `jpeg_create_decompress` in `new`.
        unsafe {
            (*self.cinfo.common.mem).max_memory_to_use =
                bytes.try_into().unwrap_or(std::ffi::c_long::MAX)
        };
    }

    /// Decodes to pixels: grey stays grey, CMYK stays CMYK, the rest is RGB.
    pub fn pixels(mut self) -> Result<Pixels, String> {
        guarded(|| unsafe {
            let cinfo = &mut *self.cinfo;
            cinfo.out_color_space = match cinfo.jpeg_color_space {
                J_COLOR_SPACE::JCS_GRAYSCALE => J_COLOR_SPACE::JCS_GRAYSCALE,
                J_COLOR_SPACE::JCS_CMYK | J_COLOR_SPACE::JCS_YCCK => J_COLOR_SPACE::JCS_CMYK,
                _ => J_COLOR_SPACE::JCS_RGB,
            };
            jpeg_start_decompress(cinfo);
            let stride = cinfo.output_width as usize * cinfo.output_components as usize;
            let height = cinfo.output_height as usize;
            // Large zeroed allocations come straight from the kernel: no cost
            // for zeroing pages that the decoder then overwrites.
            let mut data = vec![0u8; stride * height];
            let mut rows: Vec<*mut u8> =
                Vec::with_capacity(cinfo.rec_outbuf_height.max(1) as usize);
            while (cinfo.output_scanline as usize) < height {
                let first = cinfo.output_scanline as usize;
                let count = (cinfo.rec_outbuf_height.max(1) as usize).min(height - first);
                rows.clear();
                rows.extend((first..first + count).map(|y| data.as_mut_ptr().add(y * stride)));
                jpeg_read_scanlines(cinfo, rows.as_mut_ptr(), count as c_uint);
            }
            jpeg_finish_decompress(cinfo);
            Pixels {
                data,
                width: cinfo.output_width,
                height: cinfo.output_height,
                color_space: cinfo.out_color_space,
            }
        })
    }

    /// Re-compresses without leaving the DCT domain: every coefficient is
    /// requantised to libjpeg's tables at `quality` — or kept at the source's
    /// step where that is already coarser, so nothing is spent on precision
    /// the source never had — chroma is halved to 4:2:0 as `chroma` says,
    /// the picture is turned by `transform`, and the result is entropy-coded
    /// with optimised Huffman tables. `Ok(Err(self))` when `transform` cannot
    /// be done exactly on whole blocks at this size; the caller then decodes
    /// to pixels instead. Turning and halving are not combined.
    pub fn transcode(
        mut self,
        quality: u8,
        chroma: Chroma,
        transform: JXFORM_CODE,
        icc: Option<&[u8]>,
    ) -> Result<Result<(Vec<u8>, Duration), Self>, String> {
        let turning = transform != JXFORM_CODE_JXFORM_NONE;
        if turning && chroma != Chroma::Keep {
            return Ok(Err(self));
        }
        // SAFETY: all-zero is "no crop, no trim" for every field.
        let mut transform_info: TransformInfo = unsafe { std::mem::zeroed() };
        transform_info.transform = transform;
        transform_info.perfect = 1;
        let possible = guarded(|| unsafe {
            jtransform_request_workspace(&mut *self.cinfo, &mut transform_info) != 0
        })?;
        if !possible {
            return Ok(Err(self));
        }
        let mut dst = Compress::new()?;
        let started = Instant::now();
        let reading = guarded(|| unsafe {
            let src = &mut *self.cinfo;
            let dst_info = &mut *dst.cinfo;
            let src_arrays = jpeg_read_coefficients(src);
            jpeg_copy_critical_parameters(src, dst_info);
            // The target tables at this quality, libjpeg's own way.
            jpeg_set_quality(dst_info, c_int::from(quality), 1);
            let target = [
                (*dst_info.quant_tbl_ptrs[0]).quantval,
                (*dst_info.quant_tbl_ptrs[1]).quantval,
            ];
            if chroma != Chroma::Keep {
                let luma = &mut *dst_info.comp_info;
                (luma.h_samp_factor, luma.v_samp_factor) = (2, 2);
            }
            let components = src.num_components as usize;
            let mut slots: Vec<[u16; 64]> = Vec::with_capacity(components);
            let mut tables = Vec::with_capacity(components);
            for ci in 0..components {
                let source = (*(*src.comp_info.add(ci)).quant_table).quantval;
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
                jpeg_add_quant_table(dst_info, slot as c_int, basic.as_ptr(), 100, 1);
                (*dst_info.comp_info.add(ci)).quant_tbl_no = slot as c_int;
                tables.push((source, wanted));
            }
            for (ci, (source, wanted)) in tables.iter().enumerate() {
                if ci == 0 || chroma == Chroma::Keep {
                    let comp = &*src.comp_info.add(ci);
                    requantise_component(src, *src_arrays.add(ci), comp, source, wanted);
                }
            }
            // Optimal Huffman tables, from counts gathered here rather than
            // by libjpeg's slower statistics pass where the layout allows.
            let own_tables = counts_its_own_symbols(dst_info);
            dst_info.optimize_coding = boolean::from(!own_tables);
            let src_common: *mut jpeg_common_struct = &mut src.common;
            let (owner, final_arrays, _halved_arrays) = if turning {
                let dst_arrays =
                    jtransform_adjust_parameters(src, dst_info, src_arrays, &mut transform_info);
                jpeg_write_coefficients(dst_info, dst_arrays);
                write_icc(dst_info, icc);
                jtransform_execute_transform(src, dst_info, src_arrays, &mut transform_info);
                (src_common, dst_arrays as *const _, None)
            } else if chroma == Chroma::Keep {
                jpeg_write_coefficients(dst_info, src_arrays);
                write_icc(dst_info, icc);
                (src_common, src_arrays as *const _, None)
            } else {
                let halved = HalvedArrays::request(src, dst_info);
                // Boxed: the array pointers must stay put until the counting.
                let mut arrays = Box::new(halved.arrays);
                jpeg_write_coefficients(dst_info, arrays.as_mut_ptr());
                halved.fill(src, dst_info, src_arrays, chroma, &tables);
                write_icc(dst_info, icc);
                let dst_common: *mut jpeg_common_struct = &mut dst_info.common;
                (dst_common, arrays.as_ptr(), Some(arrays))
            };
            if own_tables {
                install_optimal_tables(dst_info, owner, final_arrays)?;
            }
            let reading = started.elapsed();
            jpeg_finish_compress(dst_info);
            jpeg_finish_decompress(src);
            Ok::<_, String>(reading)
        })??;
        Ok(Ok((dst.into_bytes(), reading)))
    }
}

/// `jpeg_transform_info` as this libjpeg-turbo's `transupp.h` declares it.
/// The binding's struct lacks the `drop_*` fields, so transupp would write
/// past its end; the functions are declared here again with this one.
#[repr(C)]
struct TransformInfo {
    transform: JXFORM_CODE,
    perfect: boolean,
    trim: boolean,
    force_grayscale: boolean,
    crop: boolean,
    slow_hflip: boolean,
    crop_width: JDIMENSION,
    crop_width_set: JCROP_CODE,
    crop_height: JDIMENSION,
    crop_height_set: JCROP_CODE,
    crop_xoffset: JDIMENSION,
    crop_xoffset_set: JCROP_CODE,
    crop_yoffset: JDIMENSION,
    crop_yoffset_set: JCROP_CODE,
    drop_ptr: *mut jpeg_decompress_struct,
    drop_coef_arrays: *mut jvirt_barray_ptr,
    num_components: c_int,
    workspace_coef_arrays: *mut jvirt_barray_ptr,
    output_width: JDIMENSION,
    output_height: JDIMENSION,
    x_crop_offset: JDIMENSION,
    y_crop_offset: JDIMENSION,
    drop_width: JDIMENSION,
    drop_height: JDIMENSION,
    imcu_sample_width: c_int,
    imcu_sample_height: c_int,
}

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

// libjpeg's Huffman table builder (jchuff.c), exported by the library but
// not declared by the binding.
unsafe extern "C-unwind" {
    fn jpeg_gen_optimal_table(
        cinfo: *mut jpeg_compress_struct,
        table: *mut JHUFF_TBL,
        freq: *mut c_long,
    );
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

/// Optimal Huffman tables for the coefficients in `arrays` (owned by
/// `owner`'s memory manager), installed in `dst` in place of the standard
/// ones, once the arrays hold their final values and before
/// `jpeg_finish_compress` writes them.
unsafe fn install_optimal_tables(
    dst: &mut jpeg_compress_struct,
    owner: *mut jpeg_common_struct,
    arrays: *const jvirt_barray_ptr,
) -> Result<(), String> {
    unsafe {
        let access = (*(*owner).mem)
            .access_virt_barray
            .ok_or("no libjpeg memory manager")?;
        let components: Vec<huffman::Component> = (0..dst.num_components as usize)
            .map(|ci| {
                let c = &*dst.comp_info.add(ci);
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
        // SAFETY: the arrays are realised and wholly in memory (libjpeg's
        // default memory manager keeps no backing store), so a row pointer
        // stays valid while others are taken; rows below `height_in_blocks`
        // hold `width_in_blocks` defined blocks.
        let mut counts = huffman::count_scan(
            &components,
            dst.image_width as usize,
            dst.image_height as usize,
            |ci, r| {
                let rows = access(&mut *owner, *arrays.add(ci), r as JDIMENSION, 1, 0);
                std::slice::from_raw_parts(
                    *rows as *const [JCOEF; 64],
                    components[ci].width_in_blocks,
                )
            },
        )?;
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
                if table.is_null() {
                    *table = jpeg_alloc_huff_table(&mut dst.common);
                }
                let table = *table;
                // Builds the table from the counts and marks it unsent.
                jpeg_gen_optimal_table(dst, table, freq.as_mut_ptr());
            }
        }
        Ok(())
    }
}

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

unsafe fn write_icc(cinfo: &mut jpeg_compress_struct, icc: Option<&[u8]>) {
    if let Some(icc) = icc {
        unsafe { jpeg_write_icc_profile(cinfo, icc.as_ptr(), icc.len() as c_uint) };
    }
}

fn round_up(n: JDIMENSION, multiple: JDIMENSION) -> JDIMENSION {
    n.div_ceil(multiple) * multiple
}

const JPOOL_IMAGE: c_int = 1;

/// The coefficient arrays of a 4:2:0 output made from a 4:2:2 or 4:4:4
/// source, all new: luma is copied because the encoder reads it two block
/// rows at a time, which the source's array (made for one) refuses; chroma
/// has a half or a quarter of the source's blocks.
struct HalvedArrays {
    arrays: [jvirt_barray_ptr; 3],
    chroma_blocks: (JDIMENSION, JDIMENSION),
}

impl HalvedArrays {
    unsafe fn request(src: &jpeg_decompress_struct, dst: &mut jpeg_compress_struct) -> Self {
        unsafe {
            let luma = &*src.comp_info;
            let (wib, hib) = (luma.width_in_blocks, luma.height_in_blocks);
            let request = (*dst.common.mem)
                .request_virt_barray
                .expect("libjpeg memory manager");
            let luma_array = request(
                &mut dst.common,
                JPOOL_IMAGE,
                1,
                round_up(wib, 2),
                round_up(hib, 2),
                2,
            );
            let chroma_blocks = (src.image_width.div_ceil(16), src.image_height.div_ceil(16));
            let mut chroma = || {
                request(
                    &mut dst.common,
                    JPOOL_IMAGE,
                    0,
                    chroma_blocks.0,
                    chroma_blocks.1,
                    1,
                )
            };
            Self {
                arrays: [luma_array, chroma(), chroma()],
                chroma_blocks,
            }
        }
    }

    /// Called after `jpeg_write_coefficients`, which realises the arrays.
    unsafe fn fill(
        &self,
        src: &mut jpeg_decompress_struct,
        dst: &mut jpeg_compress_struct,
        src_arrays: *mut jvirt_barray_ptr,
        chroma: Chroma,
        tables: &[([u16; 64], [u16; 64])],
    ) {
        unsafe {
            let read = (*src.common.mem)
                .access_virt_barray
                .expect("libjpeg memory manager");
            let write = (*dst.common.mem)
                .access_virt_barray
                .expect("libjpeg memory manager");
            let luma = &*src.comp_info;
            for row in 0..luma.height_in_blocks {
                let from = *read(&mut src.common, *src_arrays, row, 1, 0);
                let to = *write(&mut dst.common, self.arrays[0], row, 1, 1);
                ptr::copy_nonoverlapping(from, to, luma.width_in_blocks as usize);
            }
            let (out_w, out_h) = self.chroma_blocks;
            for (ci, (q_in, q_out)) in tables.iter().enumerate().take(3).skip(1) {
                let comp = &*src.comp_info.add(ci);
                let (in_w, in_h) = (comp.width_in_blocks as usize, comp.height_in_blocks);
                let deq = |b: &JBLOCK| chroma::dequantise(b, q_in);
                for row in 0..out_h {
                    let top_row = (2 * row).min(in_h - 1);
                    let bottom_row = (2 * row + 1).min(in_h - 1);
                    let top = std::slice::from_raw_parts(
                        *read(&mut src.common, src_arrays.add(ci).read(), top_row, 1, 0),
                        in_w,
                    );
                    let bottom = std::slice::from_raw_parts(
                        *read(&mut src.common, src_arrays.add(ci).read(), bottom_row, 1, 0),
                        in_w,
                    );
                    let out = std::slice::from_raw_parts_mut(
                        *write(&mut dst.common, self.arrays[ci], row, 1, 1),
                        out_w as usize,
                    );
                    for (col, block) in out.iter_mut().enumerate() {
                        let halved = match chroma {
                            Chroma::HalveHeight => {
                                let c = col.min(in_w - 1);
                                chroma::halve_vertically(&deq(&top[c]), &deq(&bottom[c]))
                            }
                            _ => {
                                let (l, r) = ((2 * col).min(in_w - 1), (2 * col + 1).min(in_w - 1));
                                let upper =
                                    chroma::halve_horizontally(&deq(&top[l]), &deq(&top[r]));
                                let lower =
                                    chroma::halve_horizontally(&deq(&bottom[l]), &deq(&bottom[r]));
                                chroma::halve_vertically(&upper, &lower)
                            }
                        };
                        *block = chroma::quantise(&halved, q_out);
                    }
                }
            }
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
/// division. An exact half rounds towards zero: both neighbours are equally
/// far from the source's value, and zero costs fewer bits. (Rounding it
/// away from zero keeps every ±1 when the step doubles, say from quality 75
/// to 50, and makes the file a fifth larger for nothing.)
unsafe fn requantise_component(
    cinfo: &mut jpeg_decompress_struct,
    array: jvirt_barray_ptr,
    comp: &jpeg_component_info,
    old: &[u16; 64],
    new: &[u16; 64],
) {
    if old == new {
        return;
    }
    let factor = requantise_factors(old, new);
    let access = unsafe { (*cinfo.common.mem).access_virt_barray };
    let Some(access) = access else { return };
    for row in 0..comp.height_in_blocks {
        // SAFETY: rows below `height_in_blocks` and blocks below
        // `width_in_blocks` exist in the array libjpeg allocated.
        unsafe {
            let rows = access(&mut cinfo.common, array, row, 1, 1);
            let blocks = std::slice::from_raw_parts_mut(*rows, comp.width_in_blocks as usize);
            requantise_blocks(blocks, &factor);
        }
    }
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
        // SAFETY: a linked list owned by `cinfo`, alive as long as it is.
        let m = unsafe { &*marker };
        let data = if m.data.is_null() {
            &[][..]
        } else {
            unsafe { std::slice::from_raw_parts(m.data, m.data_length as usize) }
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
struct Compress {
    cinfo: Box<jpeg_compress_struct>,
    dest: Box<VecDestination>,
    _err: Box<jpeg_error_mgr>,
}

impl Drop for Compress {
    fn drop(&mut self) {
        unsafe { jpeg_destroy_compress(&mut self.cinfo) };
    }
}

impl Compress {
    /// A compressor in libjpeg-turbo's profile, writing to a `Vec`.
    fn new() -> Result<Self, String> {
        let mut err = new_error_mgr();
        let mut cinfo: Box<jpeg_compress_struct> = Box::new(unsafe { std::mem::zeroed() });
        cinfo.common.err = &mut *err;
        let dest = Box::new(VecDestination::new());
        let mut this = Self {
            cinfo,
            dest,
            _err: err,
        };
        guarded(|| unsafe {
            let cinfo = &mut *this.cinfo;
            jpeg_create_compress(cinfo);
            // Must precede `jpeg_set_defaults`: it picks the defaults.
            jpeg_c_set_int_param(
                cinfo,
                J_INT_PARAM::JINT_COMPRESS_PROFILE,
                JCP_FASTEST as c_int,
            );
            cinfo.dest = &mut this.dest.mgr;
        })?;
        Ok(this)
    }

    fn into_bytes(mut self) -> Vec<u8> {
        std::mem::take(&mut self.dest.out)
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
) -> Result<Vec<u8>, String> {
    let stride = width as usize * usize::from(channels);
    if !matches!(channels, 1 | 3) || pixels.len() != stride * height as usize {
        return Err(format!(
            "{} bytes are not {width}×{height} pixels of {channels} samples",
            pixels.len()
        ));
    }
    let mut rows = pixels.chunks_exact(stride.max(1));
    encode_rows(width, height, channels, quality, icc, |out| {
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
    mut fill: impl FnMut(&mut [u8]) -> Result<(), String>,
) -> Result<Vec<u8>, String> {
    if !matches!(channels, 1 | 3) || width == 0 || height == 0 {
        return Err(format!(
            "cannot encode {width}×{height} pixels of {channels} samples"
        ));
    }
    let stride = width as usize * usize::from(channels);
    const BAND: usize = 16;
    let mut band = vec![0u8; stride * BAND.min(height as usize)];
    let mut c = Compress::new()?;
    guarded(|| unsafe {
        let cinfo = &mut *c.cinfo;
        cinfo.image_width = width;
        cinfo.image_height = height;
        cinfo.input_components = c_int::from(channels);
        cinfo.in_color_space = if channels == 1 {
            J_COLOR_SPACE::JCS_GRAYSCALE
        } else {
            J_COLOR_SPACE::JCS_RGB
        };
        jpeg_set_defaults(cinfo);
        jpeg_set_quality(cinfo, c_int::from(quality), 1);
        cinfo.optimize_coding = 1;
        if channels == 3 {
            let comps = std::slice::from_raw_parts_mut(cinfo.comp_info, 3);
            comps[0].h_samp_factor = 2;
            comps[0].v_samp_factor = 2;
            for chroma in &mut comps[1..] {
                chroma.h_samp_factor = 1;
                chroma.v_samp_factor = 1;
            }
        }
        jpeg_start_compress(cinfo, 1);
        if let Some(icc) = icc {
            jpeg_write_icc_profile(cinfo, icc.as_ptr(), icc.len() as c_uint);
        }
        let mut rows: Vec<*const u8> = Vec::with_capacity(BAND);
        while (cinfo.next_scanline as usize) < height as usize {
            let first = cinfo.next_scanline as usize;
            let count = BAND.min(height as usize - first);
            for row in band.chunks_exact_mut(stride).take(count) {
                fill(row)?;
            }
            rows.clear();
            rows.extend((0..count).map(|y| band.as_ptr().add(y * stride)));
            jpeg_write_scanlines(cinfo, rows.as_ptr(), count as c_uint);
        }
        jpeg_finish_compress(cinfo);
        Ok::<_, String>(())
    })??;
    Ok(c.into_bytes())
}

/// The most the output buffer grows by at a time, hence the most it holds
/// beyond what libjpeg wrote (see `memory::output_bytes`).
pub const OUTPUT_GROWTH: usize = 8 << 20;

/// libjpeg's destination manager over a growing `Vec`. `mgr` comes first so
/// that the pointer libjpeg hands back is also a pointer to the whole.
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

    unsafe fn from_cinfo(cinfo: &mut jpeg_compress_struct) -> &mut Self {
        // SAFETY: `dest` points at the `mgr` field, the first of a `#[repr(C)]` struct.
        unsafe { &mut *cinfo.dest.cast::<Self>() }
    }

    unsafe extern "C-unwind" fn init(cinfo: &mut jpeg_compress_struct) {
        let this = unsafe { Self::from_cinfo(cinfo) };
        this.out.clear();
        this.out.reserve(64 * 1024);
        this.expose_spare();
    }

    /// libjpeg filled everything it was given: keep it, offer more.
    unsafe extern "C-unwind" fn grow(cinfo: &mut jpeg_compress_struct) -> boolean {
        let this = unsafe { Self::from_cinfo(cinfo) };
        let full = this.out.capacity();
        // SAFETY: libjpeg wrote every byte of the spare capacity it was given.
        unsafe { this.out.set_len(full) };
        // Doubling, but never by more than `OUTPUT_GROWTH`: large buffers
        // are moved by remapping pages, not copied, so the steps cost little.
        this.out.reserve_exact(full.clamp(64 * 1024, OUTPUT_GROWTH));
        this.expose_spare();
        1
    }

    unsafe extern "C-unwind" fn term(cinfo: &mut jpeg_compress_struct) {
        let this = unsafe { Self::from_cinfo(cinfo) };
        let written = this.out.capacity() - this.mgr.free_in_buffer;
        // SAFETY: the first `written` bytes of the buffer were written by libjpeg.
        unsafe { this.out.set_len(written) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_output_step_is_never_finer_than_the_source() {
        let source: [u16; 64] = std::array::from_fn(|k| k as u16 + 1);
        let target = [32u16; 64];
        let out = coarser_of(&source, &target);
        assert!(out.iter().zip(&source).all(|(o, s)| o >= s));
        assert_eq!(out[0], 32);
        assert_eq!(out[63], 64);
    }

    #[test]
    fn garbage_is_an_error_not_a_crash() {
        let err = Decompress::new(b"\xFF\xD8\xFF\xE0 not really a jpeg", 1 << 20).err();
        assert!(err.is_some());
    }
}
