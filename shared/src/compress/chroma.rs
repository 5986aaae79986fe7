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

/// One block from two stacked ones (`top` over `bottom`), half the height.
/// Rows of zero coefficients (most of them, in chroma) are skipped.
#[inline(always)]
pub fn halve_vertically(top: &Block, bottom: &Block) -> Block {
    let m = &halving().0;
    let mut out = [0f32; 64];
    for k in 0..16 {
        let src = if k < 8 {
            &top[k * 8..k * 8 + 8]
        } else {
            &bottom[(k - 8) * 8..(k - 8) * 8 + 8]
        };
        if src.iter().all(|&x| x == 0.0) {
            continue;
        }
        for v in 0..8 {
            let weight = m[v][k];
            for (o, s) in out[v * 8..v * 8 + 8].iter_mut().zip(src) {
                *o += weight * s;
            }
        }
    }
    out
}

/// One block from two side by side (`left`, `right`), half the width. Each
/// non-zero coefficient adds its column of the matrix to its row.
#[inline(always)]
pub fn halve_horizontally(left: &Block, right: &Block) -> Block {
    let t = &transposed().0;
    let mut out = [0f32; 64];
    for (k0, block) in [(0, left), (8, right)] {
        for (i, &c) in block.iter().enumerate() {
            if c == 0.0 {
                continue;
            }
            let (v, k) = (i / 8, i % 8);
            for (o, w) in out[v * 8..v * 8 + 8].iter_mut().zip(&t[k0 + k]) {
                *o += c * w;
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
        let got = halve_vertically(&fdct(&block_of(&p, 0, 0)), &fdct(&block_of(&p, 8, 0)));
        assert_close(&got, &fdct(&expected));
    }

    #[test]
    fn halving_the_width_equals_averaging_pixel_columns() {
        let p = patch();
        let expected: [[f64; 8]; 8] =
            std::array::from_fn(|y| std::array::from_fn(|x| (p[y][2 * x] + p[y][2 * x + 1]) / 2.0));
        let got = halve_horizontally(&fdct(&block_of(&p, 0, 0)), &fdct(&block_of(&p, 0, 8)));
        assert_close(&got, &fdct(&expected));
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
