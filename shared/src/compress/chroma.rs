//! Halving chroma resolution without leaving the DCT domain.
//!
//! Two neighbouring 8×8 blocks stand for 16 samples along one axis; the
//! 4:2:0 output wants their pairwise averages, 8 samples, as one block.
//! Inverse DCT, averaging and forward DCT are all linear, so along that axis
//! they collapse into one 8×16 matrix applied to the 16 coefficients, and
//! the other axis is left alone. That is libjpeg's box downsampling, exactly,
//! at a fraction of the cost of going through pixels.

use std::sync::OnceLock;

/// Coefficients of one block in natural (row-major) order, dequantised.
pub type Block = [f32; 64];

/// `M[v][k]`: output frequency `v` from input frequency `k` of the first
/// block (`k < 8`) or the second (`k ≥ 8`).
struct Halving([[f32; 16]; 8]);

fn halving() -> &'static Halving {
    static MATRIX: OnceLock<Halving> = OnceLock::new();
    MATRIX.get_or_init(|| {
        // Orthonormal 8-point DCT-II: D[u][x]; its inverse is its transpose.
        let d = |u: usize, x: usize| {
            let c = if u == 0 {
                std::f64::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            0.5 * c * ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos()
        };
        let mut m = [[0f32; 16]; 8];
        for (v, row) in m.iter_mut().enumerate() {
            for (k, cell) in row.iter_mut().enumerate() {
                let (half, freq) = (k / 8, k % 8);
                // Output sample y (of 8) averages input samples 2y and 2y+1
                // (of 16); samples 8·half.. come from block `half`.
                let mut sum = 0.0;
                for y in 0..8 {
                    for s in [2 * y, 2 * y + 1] {
                        if s / 8 == half {
                            sum += d(v, y) * 0.5 * d(freq, s % 8);
                        }
                    }
                }
                *cell = sum as f32;
            }
        }
        Halving(m)
    })
}

/// The even output frequency that input frequency `k` reaches (the even
/// rows of `M` have one or two entries); frequency 4 averages to zero in
/// every pair of samples and reaches nothing, odd ones or even.
const EVEN_TAP: [Option<usize>; 8] = [
    Some(0),
    Some(2),
    Some(4),
    Some(6),
    None,
    Some(6),
    Some(4),
    Some(2),
];

/// Bit `r` set where row `r` of a block of quantised coefficients holds a
/// non-zero one: which rows the halving must read.
#[inline(always)]
pub fn nonzero_rows(block: &[i16; 64]) -> u8 {
    block.chunks_exact(8).enumerate().fold(0, |mask, (r, row)| {
        let any = row.iter().fold(0, |a, &c| a | c) != 0;
        mask | (u8::from(any) << r)
    })
}

/// One block from two stacked ones (`top` over `bottom`), half the height,
/// a row of 8 coefficients at a time (8 lanes), with the rows the result
/// may hold. Halving is symmetric about the middle of the 16 samples:
/// mirroring them maps the first block onto the second and negates the odd
/// frequencies of both, so `M[v][8 + k] = (−1)^(v+k) · M[v][k]`. Output
/// frequency `v` therefore needs only the sum of the two blocks' frequency
/// `k` (when `v + k` is even) or their difference (when odd), and only the
/// first half of `M`. `rows` has bit `k` set where row `k` of either block may be
/// non-zero; the others are taken as zero and skipped (most of them, in
/// chroma).
#[inline(always)]
pub fn halve_vertically(top: &Block, bottom: &Block, rows: u8) -> (Block, u8) {
    let m = &halving().0;
    let mut out = [0f32; 64];
    let mut out_rows = 0u8;
    for (k, even) in EVEN_TAP.iter().enumerate() {
        let Some(even) = *even else { continue };
        if rows & (1 << k) == 0 {
            continue;
        }
        let (a, b) = (&top[k * 8..k * 8 + 8], &bottom[k * 8..k * 8 + 8]);
        let sum: [f32; 8] = std::array::from_fn(|x| a[x] + b[x]);
        let difference: [f32; 8] = std::array::from_fn(|x| a[x] - b[x]);
        // v + k even: the sum; odd: the difference.
        let (for_even, for_odd) = if k % 2 == 0 {
            (&sum, &difference)
        } else {
            (&difference, &sum)
        };
        let mut add = |v: usize, from: &[f32; 8]| {
            let weight = m[v][k];
            for (o, s) in out[v * 8..v * 8 + 8].iter_mut().zip(from) {
                *o += weight * s;
            }
        };
        add(even, for_even);
        for v in [1, 3, 5, 7] {
            add(v, for_odd);
        }
        out_rows |= 1 << even | 0b1010_1010;
    }
    (out, out_rows)
}

/// One block from two side by side (`left`, `right`), half the width: each
/// coefficient adds its column of the matrix to its row. `rows` as for
/// `halve_vertically`.
#[inline(always)]
pub fn halve_horizontally(left: &Block, right: &Block, rows: u8) -> Block {
    let t = &transposed().0;
    let mut out = [0f32; 64];
    for (v, row) in out.chunks_exact_mut(8).enumerate() {
        if rows & (1 << v) == 0 {
            continue;
        }
        let (a, b) = (&left[v * 8..v * 8 + 8], &right[v * 8..v * 8 + 8]);
        // Every coefficient of the row, zero or not: a branch per
        // coefficient costs more than the product in dense chroma.
        // Frequency 4 averages to zero (see `EVEN_TAP`).
        for (k, (&a, &b)) in a.iter().zip(b).enumerate() {
            if k == 4 {
                continue;
            }
            for ((o, wa), wb) in row.iter_mut().zip(&t[k]).zip(&t[8 + k]) {
                *o += a * wa + b * wb;
            }
        }
    }
    out
}

/// `M` transposed: `T[k][u] = M[u][k]`, for row-wise accumulation.
struct Transposed([[f32; 8]; 16]);

fn transposed() -> &'static Transposed {
    static MATRIX: OnceLock<Transposed> = OnceLock::new();
    MATRIX.get_or_init(|| {
        let m = &halving().0;
        Transposed(std::array::from_fn(|k| std::array::from_fn(|u| m[u][k])))
    })
}

#[inline(always)]
pub fn dequantise(coefficients: &[i16; 64], table: &[u16; 64]) -> Block {
    std::array::from_fn(|k| f32::from(coefficients[k]) * f32::from(table[k]))
}

/// Rounds to the nearest step (a half away from zero), as libjpeg's
/// quantiser does, given the steps' reciprocals: a multiplication, not a
/// division, per coefficient.
#[inline(always)]
pub fn quantise(block: &Block, reciprocal: &[f32; 64]) -> [i16; 64] {
    std::array::from_fn(|k| {
        let x = block[k] * reciprocal[k];
        // Truncation after adding a half: no libm call, vectorises.
        let r = (x.abs() + 0.5) as i32;
        (if x < 0.0 { -r } else { r }) as i16
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DCT of an 8×8 sample block, straight from the definition.
    fn fdct(samples: &[[f64; 8]; 8]) -> Block {
        let d = |u: usize, x: usize| {
            let c = if u == 0 {
                std::f64::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            0.5 * c * ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos()
        };
        std::array::from_fn(|i| {
            let (v, u) = (i / 8, i % 8);
            let mut sum = 0.0;
            for (y, row) in samples.iter().enumerate() {
                for (x, s) in row.iter().enumerate() {
                    sum += d(v, y) * d(u, x) * s;
                }
            }
            sum as f32
        })
    }

    /// A deterministic, textured 16×16 patch of samples.
    fn patch() -> [[f64; 16]; 16] {
        let mut state = 0x2545_F491u32;
        std::array::from_fn(|y| {
            std::array::from_fn(|x| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (x * 7 + y * 3) as f64 + f64::from(state % 64) - 128.0
            })
        })
    }

    fn block_of(p: &[[f64; 16]; 16], y0: usize, x0: usize) -> [[f64; 8]; 8] {
        std::array::from_fn(|y| std::array::from_fn(|x| p[y0 + y][x0 + x]))
    }

    fn assert_close(a: &Block, b: &Block) {
        for k in 0..64 {
            assert!(
                (a[k] - b[k]).abs() < 1e-2,
                "coefficient {k}: {} vs {}",
                a[k],
                b[k]
            );
        }
    }

    #[test]
    fn halving_the_height_equals_averaging_pixel_rows() {
        let p = patch();
        let expected: [[f64; 8]; 8] =
            std::array::from_fn(|y| std::array::from_fn(|x| (p[2 * y][x] + p[2 * y + 1][x]) / 2.0));
        let (got, _) =
            halve_vertically(&fdct(&block_of(&p, 0, 0)), &fdct(&block_of(&p, 8, 0)), 0xFF);
        assert_close(&got, &fdct(&expected));
    }

    #[test]
    fn halving_the_width_equals_averaging_pixel_columns() {
        let p = patch();
        let expected: [[f64; 8]; 8] =
            std::array::from_fn(|y| std::array::from_fn(|x| (p[y][2 * x] + p[y][2 * x + 1]) / 2.0));
        let got = halve_horizontally(&fdct(&block_of(&p, 0, 0)), &fdct(&block_of(&p, 0, 8)), 0xFF);
        assert_close(&got, &fdct(&expected));
    }

    /// 4:4:4 as the transcoder halves it: each column of blocks halved
    /// vertically, then the two results horizontally.
    #[test]
    fn halving_both_ways_equals_averaging_two_by_two_pixels() {
        let p = patch();
        let expected: [[f64; 8]; 8] = std::array::from_fn(|y| {
            std::array::from_fn(|x| {
                (p[2 * y][2 * x]
                    + p[2 * y][2 * x + 1]
                    + p[2 * y + 1][2 * x]
                    + p[2 * y + 1][2 * x + 1])
                    / 4.0
            })
        });
        let block = |y0, x0| fdct(&block_of(&p, y0, x0));
        let (left, left_rows) = halve_vertically(&block(0, 0), &block(8, 0), 0xFF);
        let (right, right_rows) = halve_vertically(&block(0, 8), &block(8, 8), 0xFF);
        let got = halve_horizontally(&left, &right, left_rows | right_rows);
        assert_close(&got, &fdct(&expected));
    }

    /// The folded products are the full matrix's: its mirror symmetry and
    /// its zeros hold, and on sparse blocks (rows skipped by their mask)
    /// both give the same coefficients, the skipped rows' outputs zero.
    #[test]
    fn folded_halving_is_the_whole_matrix() {
        let m = &halving().0;
        for (v, row) in m.iter().enumerate() {
            for k in 0..8 {
                let sign = if (v + k) % 2 == 0 { 1.0 } else { -1.0 };
                assert!(
                    (row[8 + k] - sign * row[k]).abs() < 1e-6,
                    "M[{v}][{}]",
                    8 + k
                );
                let reached = k != 4 && (v % 2 == 1 || EVEN_TAP[k] == Some(v));
                assert!(reached || row[k].abs() < 1e-6, "M[{v}][{k}] = {}", row[k]);
            }
        }
        let mut rng = crate::compress::tests::Rng(0x51_7cc1_b727_220a);
        for _ in 0..200 {
            let mut sparse = || -> [i16; 64] {
                let rows = rng.next();
                std::array::from_fn(|i| {
                    let r = rng.next();
                    if rows >> (i / 8) & 1 == 1 && r.is_multiple_of(3) {
                        (r >> 32) as i16 % 200
                    } else {
                        0
                    }
                })
            };
            let (top, bottom) = (sparse(), sparse());
            let rows = nonzero_rows(&top) | nonzero_rows(&bottom);
            let steps = [3u16; 64];
            let (a, b) = (dequantise(&top, &steps), dequantise(&bottom, &steps));
            let (got, out_rows) = halve_vertically(&a, &b, rows);
            for (v, weights) in m.iter().enumerate() {
                for u in 0..8 {
                    let want: f32 = (0..16)
                        .map(|k| {
                            let src = if k < 8 { &a } else { &b };
                            weights[k] * src[(k % 8) * 8 + u]
                        })
                        .sum();
                    let i = v * 8 + u;
                    assert!((got[i] - want).abs() < 1e-2, "{i}: {} vs {want}", got[i]);
                    assert!(out_rows >> v & 1 == 1 || got[i] == 0.0, "row {v}");
                }
            }
        }
    }

    #[test]
    fn quantising_rounds_to_the_nearest_step() {
        let mut block = [0f32; 64];
        (block[0], block[1], block[2]) = (104.9, -15.0, 14.9);
        let q = quantise(&block, &[0.1; 64]);
        assert_eq!(&q[..3], &[10, -2, 1]);
        assert_eq!(dequantise(&q, &[10; 64])[0], 100.0);
    }
}
