//! Rate–distortion-optimised quantisation of one block's AC coefficients
//! (trellis quantisation, after mozjpeg's `jcdctmgr.c`), in the DCT domain.
//!
//! Plain rounding picks, for every coefficient, the step nearest to the
//! source: the least distortion, whatever it costs to code. Here each
//! coefficient that rounds to a non-zero value may instead take one step
//! towards zero or become zero, and the block may end earlier, whichever
//! minimises `D + λ·R` over the whole block: `D` the squared error against
//! the source's dequantised coefficients, `R` the bits of the Huffman
//! symbols and magnitude bits the encoder will write. The choices interact
//! only through the zero runs between non-zero coefficients, so a dynamic
//! programme over the positions of the non-zero coefficients (the last
//! non-zero position is the state) finds the optimum exactly; plain
//! rounding is one of the paths it weighs, so it never does worse for the
//! model. The DC coefficient is left as rounded: it is predicted from the
//! previous block, and its error shows as a flat shift of the whole block.
//!
//! Coefficients that already round to zero stay zero (raising them never
//! lowers both terms), which keeps the programme as small as the block's
//! non-zero count: a few entries at quality 50.

use super::huffman::ZIGZAG;

/// Code lengths of the AC symbols (`run << 4 | size`) of one Huffman table.
#[derive(Debug, Clone)]
pub struct RateModel {
    bits: [u8; 256],
}

/// Length charged for a symbol the table cannot code: large enough that no
/// path uses it when another exists.
const MISSING: u8 = 32;
const EOB: usize = 0x00;
const ZRL: usize = 0xF0;

impl RateModel {
    /// From a table in JPEG's form: `counts[l]` codes of length `l`
    /// (1..=16), `values` the symbols in code order.
    pub fn from_table(counts: &[u8; 17], values: &[u8; 256]) -> Self {
        let mut bits = [MISSING; 256];
        let mut next = 0usize;
        for (len, &n) in counts.iter().enumerate().skip(1) {
            for _ in 0..n {
                if let Some(&symbol) = values.get(next) {
                    bits[usize::from(symbol)] = len as u8;
                }
                next += 1;
            }
        }
        Self { bits }
    }

    fn symbol(&self, symbol: usize) -> f32 {
        f32::from(self.bits[symbol & 0xFF])
    }

    /// Bits of a non-zero coefficient of bit length `size` after `run`
    /// zeros: any ZRL symbols, the run/size symbol and the magnitude bits.
    fn coefficient(&self, run: usize, size: u32) -> f32 {
        (run / 16) as f32 * self.symbol(ZRL)
            + self.symbol((run % 16) << 4 | size as usize)
            + size as f32
    }
}

fn bit_length(v: i32) -> u32 {
    32 - v.unsigned_abs().leading_zeros()
}

/// `D + λ·R` of a block's AC coefficients (`quantised`, natural order)
/// against `source` (dequantised, natural order) with steps `step`: the
/// quantity `optimise` minimises, computed directly (to check it).
#[cfg(test)]
pub fn cost(
    source: &[f32; 64],
    quantised: &[i16; 64],
    step: &[u16; 64],
    lambda: f32,
    rate: &RateModel,
) -> f32 {
    let mut d = 0.0;
    let mut r = 0.0;
    let mut run = 0;
    for &k in &ZIGZAG[1..] {
        let v = i32::from(quantised[k]);
        let e = v as f32 * f32::from(step[k]) - source[k];
        d += e * e;
        if v == 0 {
            run += 1;
        } else {
            r += rate.coefficient(run, bit_length(v));
            run = 0;
        }
    }
    if run > 0 {
        r += rate.symbol(EOB);
    }
    d + lambda * r
}

/// Re-chooses the AC coefficients of `quantised` (natural order, plain
/// rounding of `source` to `step`) to minimise `cost`. No-op at λ = 0.
pub fn optimise(
    source: &[f32; 64],
    quantised: &mut [i16; 64],
    step: &[u16; 64],
    lambda: f32,
    rate: &RateModel,
) {
    if lambda <= 0.0 {
        return;
    }
    // Zig-zag positions of the non-zero coefficients.
    let mut pos = [0u8; 63];
    let mut n = 0;
    for (z, &k) in ZIGZAG.iter().enumerate().skip(1) {
        if quantised[k] != 0 {
            pos[n] = z as u8;
            n += 1;
        }
    }
    if n == 0 {
        return;
    }
    // Per non-zero position: the distortion of zero, and up to two
    // non-zero candidates with their distortion.
    let mut zero = [0f32; 63];
    let mut cands = [[(0i16, 0f32); 2]; 63];
    let mut ncands = [0u8; 63];
    for i in 0..n {
        let k = ZIGZAG[usize::from(pos[i])];
        let (s, q) = (source[k], f32::from(step[k]));
        zero[i] = s * s;
        let r = quantised[k];
        let mut m = 0;
        for v in [r, r - r.signum()] {
            if v != 0 && (m == 0 || cands[i][0].0 != v) {
                let e = f32::from(v) * q - s;
                cands[i][m] = (v, e * e);
                m += 1;
            }
        }
        ncands[i] = m as u8;
    }
    // zsum[i]: distortion of zeroing positions 0..i of the list.
    let mut zsum = [0f32; 64];
    for i in 0..n {
        zsum[i + 1] = zsum[i] + zero[i];
    }
    // best[i + 1]: least cost of coding up to and including list entry i,
    // non-zero, as the last non-zero so far; best[0] the start (DC).
    let mut best = [f32::INFINITY; 64];
    let mut from = [0u8; 64];
    let mut value = [0i16; 64];
    best[0] = 0.0;
    for i in 0..n {
        let z = usize::from(pos[i]);
        for p in 0..=i {
            if !best[p].is_finite() {
                continue;
            }
            let prev_z = if p == 0 { 0 } else { usize::from(pos[p - 1]) };
            let run = z - prev_z - 1;
            let base = best[p] + (zsum[i] - zsum[p]);
            for &(v, d) in &cands[i][..usize::from(ncands[i])] {
                let c = base + d + lambda * rate.coefficient(run, bit_length(i32::from(v)));
                if c < best[i + 1] {
                    best[i + 1] = c;
                    from[i + 1] = p as u8;
                    value[i + 1] = v;
                }
            }
        }
    }
    // The block ends after entry `last` (0: no AC coefficient at all).
    let mut end = (f32::INFINITY, 0usize);
    for p in 0..=n {
        if !best[p].is_finite() {
            continue;
        }
        let last_z = if p == 0 { 0 } else { usize::from(pos[p - 1]) };
        let eob = if last_z < 63 {
            lambda * rate.symbol(EOB)
        } else {
            0.0
        };
        let c = best[p] + (zsum[n] - zsum[p]) + eob;
        if c < end.0 {
            end = (c, p);
        }
    }
    for i in 0..n {
        quantised[ZIGZAG[usize::from(pos[i])]] = 0;
    }
    let mut p = end.1;
    while p > 0 {
        quantised[ZIGZAG[usize::from(pos[p - 1])]] = value[p];
        p = usize::from(from[p]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The standard luminance AC table of the JPEG specification (K.5).
    fn standard_luma() -> RateModel {
        let counts = [0u8, 0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
        let order: [u8; 162] = [
            0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51,
            0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1,
            0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18,
            0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39,
            0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57,
            0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75,
            0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92,
            0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
            0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
            0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8,
            0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2,
            0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
        ];
        let mut values = [0u8; 256];
        values[..162].copy_from_slice(&order);
        RateModel::from_table(&counts, &values)
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    fn round(source: &[f32; 64], step: &[u16; 64]) -> [i16; 64] {
        std::array::from_fn(|k| (source[k] / f32::from(step[k])).round() as i16)
    }

    #[test]
    fn the_table_gives_the_standard_code_lengths() {
        let m = standard_luma();
        assert_eq!(m.symbol(0x01), 2.0);
        assert_eq!(m.symbol(EOB), 4.0);
        assert_eq!(m.symbol(ZRL), 11.0);
        assert_eq!(m.symbol(0xfa), 16.0);
        // A run of 20 then a ±1: one ZRL, then symbol 0x41 (6 bits), 1 bit.
        assert_eq!(m.coefficient(20, 1), 11.0 + 6.0 + 1.0);
    }

    /// The property the design rests on: for the λ the engine uses (and
    /// others), the optimised block never costs more than plain rounding,
    /// and is the cheapest of every choice an exhaustive search can try on
    /// blocks small enough to enumerate.
    #[test]
    fn optimising_never_costs_more_than_rounding() {
        let rate = standard_luma();
        let step: [u16; 64] = std::array::from_fn(|k| 8 + 2 * k as u16);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut improved = 0;
        for trial in 0..4000 {
            // Sparse blocks with a decaying spectrum, like photographs.
            let source: [f32; 64] = std::array::from_fn(|k| {
                let keep = rng.unit() < 0.35;
                let scale = 400.0 / (1.0 + k as f32);
                if keep {
                    (rng.unit() * 2.0 - 1.0) * scale * f32::from(step[k]) / 8.0
                } else {
                    0.0
                }
            });
            let plain = round(&source, &step);
            for lambda in [super::super::transcode::DEFAULT_LAMBDA, 1.0, 30.0, 1000.0] {
                let mut opt = plain;
                optimise(&source, &mut opt, &step, lambda, &rate);
                let (c_plain, c_opt) = (
                    cost(&source, &plain, &step, lambda, &rate),
                    cost(&source, &opt, &step, lambda, &rate),
                );
                assert!(
                    c_opt <= c_plain * (1.0 + 1e-5) + 1e-3,
                    "trial {trial}, λ {lambda}: {c_opt} > {c_plain}\n{plain:?}\n{opt:?}"
                );
                assert_eq!(opt[0], plain[0], "the DC is kept");
                for k in 1..64 {
                    let (p, o) = (plain[k], opt[k]);
                    assert!(
                        o == 0 || o == p || o == p - p.signum(),
                        "position {k}: {p} became {o}"
                    );
                }
                improved += usize::from(c_opt < c_plain * (1.0 - 1e-4));
            }
        }
        assert!(
            improved > 1000,
            "the optimisation changed too few blocks: {improved}"
        );
    }

    #[test]
    fn optimising_finds_the_exhaustive_optimum() {
        let rate = standard_luma();
        let step = [16u16; 64];
        let mut rng = Rng(12345);
        for _ in 0..300 {
            // At most five non-zero coefficients: 3^5 choices, enumerable.
            let mut source = [0f32; 64];
            for _ in 0..5 {
                let z = 1 + (rng.next() % 63) as usize;
                source[ZIGZAG[z]] = (rng.unit() * 2.0 - 1.0) * 60.0;
            }
            let plain = round(&source, &step);
            let nz: Vec<usize> = (1..64).filter(|&k| plain[k] != 0).collect();
            let lambda = 40.0;
            let mut best = f32::INFINITY;
            for choice in 0..3usize.pow(nz.len() as u32) {
                let mut b = plain;
                let mut c = choice;
                for &k in &nz {
                    b[k] = match c % 3 {
                        0 => plain[k],
                        1 => plain[k] - plain[k].signum(),
                        _ => 0,
                    };
                    c /= 3;
                }
                best = best.min(cost(&source, &b, &step, lambda, &rate));
            }
            let mut opt = plain;
            optimise(&source, &mut opt, &step, lambda, &rate);
            let got = cost(&source, &opt, &step, lambda, &rate);
            assert!(
                (got - best).abs() <= 1e-3 * best.max(1.0),
                "{got} vs exhaustive {best}"
            );
        }
    }
}
