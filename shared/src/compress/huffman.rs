//! Huffman symbol counts of a baseline JPEG scan, gathered from the
//! coefficients the way libjpeg's optimising pass gathers them, so that the
//! optimal tables can be built without that pass. libjpeg's pass visits
//! the 63 AC coefficients of every block one at a time and finds each
//! magnitude's bit length in a loop; it took a sixth of the engine's time on
//! the benchmark corpus. Here a block's non-zero coefficients become a
//! 64-bit mask in zig-zag order, and only the set bits are visited.
//!
//! The counts must match what the encoder will then write symbol for
//! symbol, or a symbol would have no code: the block order, the padding
//! blocks at the right and bottom edges and the DC prediction follow
//! libjpeg's `jctrans.c`, and a test checks that the files come out
//! byte-identical to libjpeg's own optimised ones.

use std::ffi::c_long;

/// Position in the block (row-major) of each zig-zag index.
pub(super) const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// Largest bit length of an AC coefficient (and, plus one, of a DC
/// difference) that 8-bit baseline JPEG can code.
const MAX_COEF_BITS: u32 = 10;

/// One component of the scan, as the compressor sees it.
#[derive(Debug, Clone, Copy)]
pub struct Component {
    pub h_samp: usize,
    pub v_samp: usize,
    pub width_in_blocks: usize,
    pub height_in_blocks: usize,
    pub dc_table: usize,
    pub ac_table: usize,
}

/// Symbol frequencies per table, in the layout `jpeg_gen_optimal_table`
/// takes (257 entries: the last is the reserved code it adds itself).
pub struct Counts {
    pub dc: [[c_long; 257]; 4],
    pub ac: [[c_long; 257]; 4],
}

/// What `count_scan` reads of a block: the whole block, or only its DC
/// coefficient where the caller has counted the AC symbols itself (see
/// `Trellis::tally`).
pub trait Counted {
    fn dc(&self) -> i16;
    /// Counts the block's AC symbols into `ac`, where it has them.
    fn count_ac(&self, ac: &mut [c_long; 257]) -> Result<(), String>;
}

impl Counted for [i16; 64] {
    fn dc(&self) -> i16 {
        self[0]
    }
    fn count_ac(&self, ac: &mut [c_long; 257]) -> Result<(), String> {
        count_ac(self, ac)
    }
}

impl Counted for i16 {
    fn dc(&self) -> i16 {
        *self
    }
    fn count_ac(&self, _: &mut [c_long; 257]) -> Result<(), String> {
        Ok(())
    }
}

/// Counts the symbols of one sequential scan over `components` (all of
/// them interleaved when there are several). `row(ci, r)` gives block row
/// `r` of component `ci` (whole blocks, or their DC coefficients alone),
/// at least `width_in_blocks` long, or the error that stops the count.
/// Padding blocks are counted either way. An error names a coefficient too large for
/// baseline JPEG, as libjpeg would refuse it.
pub fn count_scan<'a, B: Counted + 'a>(
    components: &[Component],
    image_width: usize,
    image_height: usize,
    mut row: impl FnMut(usize, usize) -> Result<&'a [B], String>,
) -> Result<Counts, String> {
    let mut counts = Counts {
        dc: [[0; 257]; 4],
        ac: [[0; 257]; 4],
    };
    if components.len() > 4
        || components
            .iter()
            .any(|c| c.dc_table > 3 || c.ac_table > 3 || c.h_samp == 0 || c.v_samp == 0)
    {
        return Err("unsupported scan layout".into());
    }
    let mut predictions = [0i32; 4];
    if let [c] = components {
        // One component: one block per MCU, real blocks only, row by row.
        for r in 0..c.height_in_blocks {
            let blocks = row(0, r)?;
            let blocks = blocks
                .get(..c.width_in_blocks)
                .ok_or("a block row is short")?;
            for block in blocks {
                count_block(block, &mut predictions[0], &mut counts, c)?;
            }
        }
        return Ok(counts);
    }
    let max_h = components.iter().map(|c| c.h_samp).max().unwrap_or(1);
    let max_v = components.iter().map(|c| c.v_samp).max().unwrap_or(1);
    let mcus_per_row = image_width.div_ceil(8 * max_h);
    let mcu_rows = image_height.div_ceil(8 * max_v);
    let mut rows: Vec<Vec<Option<&'a [B]>>> =
        components.iter().map(|c| vec![None; c.v_samp]).collect();
    for mcu_row in 0..mcu_rows {
        for (ci, c) in components.iter().enumerate() {
            for (y, slot) in rows[ci].iter_mut().enumerate() {
                let r = mcu_row * c.v_samp + y;
                *slot = if r < c.height_in_blocks {
                    let blocks = row(ci, r)?;
                    Some(
                        blocks
                            .get(..c.width_in_blocks)
                            .ok_or("a block row is short")?,
                    )
                } else {
                    None
                };
            }
        }
        for mcu_col in 0..mcus_per_row {
            for (ci, c) in components.iter().enumerate() {
                for block_row in &rows[ci] {
                    for x in 0..c.h_samp {
                        let col = mcu_col * c.h_samp + x;
                        match block_row.filter(|_| col < c.width_in_blocks) {
                            Some(blocks) => {
                                count_block(&blocks[col], &mut predictions[ci], &mut counts, c)?
                            }
                            // A padding block: the DC of the block before it
                            // (the prediction, so a zero difference) and no AC
                            // coefficients, which is one end-of-block.
                            None => {
                                counts.dc[c.dc_table][0] += 1;
                                counts.ac[c.ac_table][0] += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(counts)
}

/// Bit `z` set when the coefficient at zig-zag index `z` of `block`
/// (natural order) is non-zero, so that callers visit only those.
#[inline(always)]
pub(super) fn nonzero_zigzag(block: &[i16; 64]) -> u64 {
    // One byte per coefficient (0 or 1), which vectorises; each row's eight
    // bytes folded into eight bits by one multiplication (each byte's bit
    // lands in the top byte, in order); each row's bits moved to their
    // zig-zag places by a table.
    let flags: [u8; 64] = std::array::from_fn(|k| u8::from(block[k] != 0));
    let mut nonzero = 0u64;
    for (row, chunk) in flags.chunks_exact(8).enumerate() {
        let bytes = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let bits = (bytes.wrapping_mul(0x0102_0408_1020_4080) >> 56) as usize;
        nonzero |= ZIGZAG_BITS[row][bits];
    }
    nonzero
}

/// `ZIGZAG_BITS[row][bits]`: the zig-zag mask of the non-zero coefficients
/// `bits` (bit `i` for column `i`) of block row `row`.
static ZIGZAG_BITS: [[u64; 256]; 8] = {
    let mut index = [0usize; 64];
    let mut z = 0;
    while z < 64 {
        index[ZIGZAG[z]] = z;
        z += 1;
    }
    let mut table = [[0u64; 256]; 8];
    let mut row = 0;
    while row < 8 {
        let mut bits = 0;
        while bits < 256 {
            let mut mask = 0u64;
            let mut col = 0;
            while col < 8 {
                if bits >> col & 1 == 1 {
                    mask |= 1 << index[row * 8 + col];
                }
                col += 1;
            }
            table[row][bits] = mask;
            bits += 1;
        }
        row += 1;
    }
    table
};

#[inline(always)]
fn count_block(
    block: &impl Counted,
    prediction: &mut i32,
    counts: &mut Counts,
    c: &Component,
) -> Result<(), String> {
    let dc = i32::from(block.dc());
    let dc_bits = 32 - (dc - *prediction).unsigned_abs().leading_zeros();
    *prediction = dc;
    if dc_bits > MAX_COEF_BITS + 1 {
        return Err("a DCT coefficient is out of range".into());
    }
    counts.dc[c.dc_table][dc_bits as usize] += 1;
    block.count_ac(&mut counts.ac[c.ac_table])
}

/// Counts the AC symbols (run/size, ZRL, end of block) of one block into
/// `ac`, indexed by symbol.
#[inline(always)]
fn count_ac(block: &[i16; 64], ac: &mut [c_long; 257]) -> Result<(), String> {
    let mut rest = nonzero_zigzag(block) & !1; // the DC coefficient is counted by `count_block`
    let mut last = 0;
    while rest != 0 {
        let k = rest.trailing_zeros() as usize;
        let bits = 16 - block[ZIGZAG[k]].unsigned_abs().leading_zeros();
        if !count_coefficient(ac, k - last - 1, bits) {
            return Err("a DCT coefficient is out of range".into());
        }
        last = k;
        rest &= rest - 1;
    }
    if last < 63 {
        ac[0] += 1;
    }
    Ok(())
}

/// Counts the symbols of a non-zero AC coefficient of bit length `size`
/// after `run` zeros (the ZRLs and the run/size symbol) into `ac`; false,
/// with only the ZRLs counted, when baseline JPEG cannot code the size.
#[inline(always)]
pub(super) fn count_coefficient(ac: &mut [c_long], run: usize, size: u32) -> bool {
    ac[0xF0] += (run / 16) as c_long;
    if size > MAX_COEF_BITS {
        return false;
    }
    ac[(run % 16) << 4 | size as usize] += 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(width_in_blocks: usize, height_in_blocks: usize) -> Component {
        Component {
            h_samp: 1,
            v_samp: 1,
            width_in_blocks,
            height_in_blocks,
            dc_table: 0,
            ac_table: 0,
        }
    }

    #[test]
    fn the_zigzag_mask_marks_exactly_the_non_zero_coefficients() {
        let naive =
            |b: &[i16; 64]| (0..64).fold(0u64, |m, z| m | u64::from(b[ZIGZAG[z]] != 0) << z);
        for z in 0..64 {
            let mut block = [0i16; 64];
            block[ZIGZAG[z]] = if z % 2 == 0 { -1 } else { i16::MIN };
            assert_eq!(nonzero_zigzag(&block), 1 << z, "zig-zag index {z}");
        }
        let mut rng = crate::compress::tests::Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..2000 {
            let block: [i16; 64] = std::array::from_fn(|_| {
                let r = rng.next();
                if r.is_multiple_of(3) {
                    (r >> 32) as i16
                } else {
                    0
                }
            });
            assert_eq!(nonzero_zigzag(&block), naive(&block));
        }
        assert_eq!(nonzero_zigzag(&[0; 64]), 0);
        assert_eq!(nonzero_zigzag(&[7; 64]), u64::MAX);
    }

    #[test]
    fn symbols_of_one_block() {
        let mut block = [0i16; 64];
        block[0] = 5; // DC difference 5: 3 bits
        block[ZIGZAG[1]] = 1; // run 0, 1 bit
        block[ZIGZAG[20]] = -6; // run 18: one ZRL, then run 2, 3 bits
        block[ZIGZAG[63]] = 1024; // run 42: two ZRLs, then run 10, 11 bits: too large
        let rows = [block];
        assert!(count_scan(&[grey(1, 1)], 8, 8, |_, _| Ok(&rows[..])).is_err());
        let rows = [{
            let mut b = block;
            b[ZIGZAG[63]] = 2;
            b
        }];
        let counts = count_scan(&[grey(1, 1)], 8, 8, |_, _| Ok(&rows[..])).expect("in range");
        assert_eq!(counts.dc[0][3], 1);
        assert_eq!(
            (
                counts.ac[0][0x01],
                counts.ac[0][0xF0],
                counts.ac[0][0x23],
                counts.ac[0][0xA2]
            ),
            (1, 3, 1, 1)
        );
        assert_eq!(
            counts.ac[0][0], 0,
            "no end-of-block after the last coefficient"
        );
        assert_eq!(counts.ac[0].iter().sum::<c_long>(), 6);
    }

    #[test]
    fn padding_blocks_at_the_edges_cost_a_zero_difference_and_an_end_of_block() {
        // 24×8 pixels in 4:2:0: luma is 3×1 blocks, MCUs 2×1 of 16×16 pixels.
        let luma = Component {
            h_samp: 2,
            v_samp: 2,
            width_in_blocks: 3,
            height_in_blocks: 1,
            dc_table: 0,
            ac_table: 0,
        };
        let chroma = Component {
            h_samp: 1,
            v_samp: 1,
            width_in_blocks: 2,
            height_in_blocks: 1,
            dc_table: 1,
            ac_table: 1,
        };
        let mut blocks = [[0i16; 64]; 3];
        for (i, b) in blocks.iter_mut().enumerate() {
            b[0] = 10 * (i as i16 + 1);
        }
        let counts =
            count_scan(&[luma, chroma, chroma], 24, 8, |_, _| Ok(&blocks[..])).expect("in range");
        // Luma: 2 MCUs × 4 blocks; 3 real, 5 padding. Real DCs 10, 20, 30
        // differ by 10 each (4 bits); padding repeats the previous DC.
        assert_eq!(counts.dc[0][4], 3);
        assert_eq!(counts.dc[0][0], 5);
        assert_eq!(counts.ac[0][0], 8);
        // Chroma: 2 MCUs × 1 block each, both components real: 10 then 20 (4 bits each).
        assert_eq!(counts.dc[1][4], 4);
        assert_eq!(counts.ac[1][0], 4);
    }
}
