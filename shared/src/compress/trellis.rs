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
//! non-zero count: a few entries at quality 50. A step towards zero is
//! weighed only where it shortens the magnitude (from 2, 4, 8, …): the rate
//! depends on the bit length alone, so elsewhere it only adds error. And a
//! coefficient whose zeroing would add more error than the most bits it
//! could save is never jumped over, which cuts the programme into short
//! independent stretches on detailed blocks (noisy photographs at high
//! source quality keep dozens of non-zero coefficients per block).

use super::huffman::{ZIGZAG, count_coefficient, nonzero_zigzag};
use std::ffi::c_long;

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

    /// The most bits zeroing one coefficient can save, magnitude bits
    /// aside. Between the coefficients before and after it, its own symbol
    /// goes (at most the longest code) and the next symbol's run grows
    /// (at least the shortest code instead of at most the longest; the
    /// ZRLs of the merged run are at least those of the two runs). When it
    /// was the last, the symbol and up to three ZRLs go, and the end of
    /// block is written either way.
    fn most_saved(&self) -> f32 {
        // Symbols of 8-bit data: sizes 1 to 10.
        let coded =
            |&(s, &b): &(usize, &u8)| (1..=10).contains(&(s & 0x0F)).then_some(f32::from(b));
        let longest = self
            .bits
            .iter()
            .enumerate()
            .filter_map(|e| coded(&e))
            .fold(0.0, f32::max);
        let shortest = self
            .bits
            .iter()
            .enumerate()
            .filter_map(|e| coded(&e))
            .fold(f32::INFINITY, f32::min);
        (2.0 * longest - shortest).max(3.0 * self.symbol(ZRL) + longest)
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

/// The optimiser for one λ and one table's rates: `λ·R` of every symbol
/// the block can need is looked up, not computed, and the working space
/// lives here between blocks, so that a block with nothing to choose costs
/// little more than finding its non-zero coefficients.
pub struct Trellis {
    /// `λ·R` of a non-zero coefficient of bit length `size` after `run`
    /// zeros: the ZRL symbols, the run/size symbol and the magnitude bits.
    weighted: [[f32; 17]; 64],
    lambda: f32,
    /// `λ·R` of the end-of-block symbol.
    eob: f32,
    /// `λ·R` of the most a coefficient's symbol (not its magnitude bits)
    /// can save the block by being zeroed (see `optimise`).
    barrier: f32,
    // Per non-zero coefficient of the block, in zig-zag order: its index,
    // whether zeroing it can never pay, its candidates (value, distortion),
    // and the running sum of the distortions of zeroing the ones before it.
    pos: [u8; 64],
    kept: [bool; 64],
    candidates: [[(i16, f32); 2]; 64],
    count: [u8; 64],
    zeroed: [f32; 65],
    // The dynamic programme: least cost with entry `i - 1` the last
    // non-zero coefficient, the entry before that on the best path, and
    // the value it takes.
    best: [f32; 65],
    from: [u8; 65],
    value: [i16; 65],
    /// How often each AC symbol (`run << 4 | size`, ZRL, end of block)
    /// occurs in the blocks optimised so far, as the encoder will write
    /// them: the counts of the output's optimal Huffman table, taken here
    /// where each block's final coefficients are known anyway. In
    /// libjpeg's counter type, as wide as the counts of the largest image
    /// the pixel limit admits can need (4 GP: over 2^32 symbols).
    symbols: [c_long; 256],
    /// The DC coefficient of each block optimised so far, in order: what
    /// the output's DC table is counted from, without reading the blocks
    /// again.
    dc: Vec<i16>,
    /// Whether some chosen value needs more than baseline JPEG's AC bits.
    out_of_range: bool,
}

impl Trellis {
    /// `None` at λ ≤ 0: plain rounding, nothing to optimise.
    pub fn new(lambda: f32, rate: &RateModel) -> Option<Box<Self>> {
        if lambda.is_nan() || lambda <= 0.0 {
            return None;
        }
        Some(Box::new(Self {
            weighted: std::array::from_fn(|run| {
                std::array::from_fn(|size| lambda * rate.coefficient(run, size as u32))
            }),
            lambda,
            eob: lambda * rate.symbol(EOB),
            barrier: lambda * rate.most_saved(),
            pos: [0; 64],
            kept: [false; 64],
            candidates: [[(0, 0.0); 2]; 64],
            count: [0; 64],
            zeroed: [0.0; 65],
            best: [0.0; 65],
            from: [0; 65],
            value: [0; 65],
            symbols: [0; 256],
            dc: Vec::new(),
            out_of_range: false,
        }))
    }

    /// The AC symbols and the DC coefficients of every block optimised
    /// since the trellis was made (see `symbols` and `dc`), or why they
    /// cannot be coded.
    pub fn tally(&self) -> Result<(&[c_long; 256], &[i16]), String> {
        if self.out_of_range {
            return Err("a DCT coefficient is out of range".into());
        }
        Ok((&self.symbols, &self.dc))
    }

    /// Re-chooses the AC coefficients of `quantised` (natural order, plain
    /// rounding to `step` of the coefficients `source(k)` gives, dequantised,
    /// by natural position) to minimise `cost`.
    #[inline]
    pub fn optimise(
        &mut self,
        quantised: &mut [i16; 64],
        step: &[u16; 64],
        source: impl Fn(usize) -> f32,
    ) {
        self.dc.push(quantised[0]);
        let mut rest = nonzero_zigzag(quantised) & !1;
        if rest == 0 {
            self.symbols[EOB] += 1;
            return;
        }
        let mut n = 0;
        while rest != 0 {
            let z = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            let k = ZIGZAG[z];
            let (r, s, q) = (quantised[k], source(k), f32::from(step[k]));
            let e = f32::from(r) * q - s;
            self.pos[n] = z as u8;
            self.zeroed[n + 1] = self.zeroed[n] + s * s;
            self.candidates[n][0] = (r, e * e);
            // Zeroing a coefficient saves at most its magnitude bits and
            // `barrier`: where that is worth less than the error it adds,
            // some optimal path keeps it, and no path need jump over it.
            let size = bit_length(i32::from(r)) as f32;
            self.kept[n] = s * s - e * e >= self.barrier + self.lambda * size;
            // One step towards zero codes fewer magnitude bits only from a
            // power of two; otherwise it costs the same bits for more error.
            // (From ±1 it is zero, which the programme weighs anyway.)
            let a = r.unsigned_abs();
            self.count[n] = if a > 1 && a.is_power_of_two() {
                let v = r - r.signum();
                let e = f32::from(v) * q - s;
                self.candidates[n][1] = (v, e * e);
                2
            } else {
                1
            };
            n += 1;
        }
        self.best[0] = 0.0;
        // The first entry a path may come from: after the last kept one.
        let mut first = 0;
        for i in 0..n {
            let z = usize::from(self.pos[i]);
            let mut best = (f32::INFINITY, 0u8, 0i16);
            for p in first..=i {
                let prev_z = if p == 0 {
                    0
                } else {
                    usize::from(self.pos[p - 1])
                };
                let rates = &self.weighted[z - prev_z - 1];
                let base = self.best[p] + (self.zeroed[i] - self.zeroed[p]);
                for &(v, d) in &self.candidates[i][..usize::from(self.count[i])] {
                    let c = base + d + rates[bit_length(i32::from(v)) as usize];
                    if c < best.0 {
                        best = (c, p as u8, v);
                    }
                }
            }
            (self.best[i + 1], self.from[i + 1], self.value[i + 1]) = best;
            if self.kept[i] {
                first = i + 1;
            }
        }
        // The block ends after entry `last` (0: no AC coefficient at all).
        let mut end = (f32::INFINITY, 0usize);
        for p in first..=n {
            let last_z = if p == 0 {
                0
            } else {
                usize::from(self.pos[p - 1])
            };
            let eob = if last_z < 63 { self.eob } else { 0.0 };
            let c = self.best[p] + (self.zeroed[n] - self.zeroed[p]) + eob;
            if c < end.0 {
                end = (c, p);
            }
        }
        for &z in &self.pos[..n] {
            quantised[ZIGZAG[usize::from(z)]] = 0;
        }
        let mut p = end.1;
        if p == 0 || self.pos[p - 1] < 63 {
            self.symbols[EOB] += 1;
        }
        while p > 0 {
            let z = usize::from(self.pos[p - 1]);
            let v = self.value[p];
            quantised[ZIGZAG[z]] = v;
            p = usize::from(self.from[p]);
            let prev_z = if p == 0 {
                0
            } else {
                usize::from(self.pos[p - 1])
            };
            let size = bit_length(i32::from(v));
            self.out_of_range |= !count_coefficient(&mut self.symbols, z - prev_z - 1, size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::tests::Rng;

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

    fn optimise(
        source: &[f32; 64],
        quantised: &mut [i16; 64],
        step: &[u16; 64],
        lambda: f32,
        rate: &RateModel,
    ) {
        if let Some(mut t) = Trellis::new(lambda, rate) {
            t.optimise(quantised, step, |k| source[k]);
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
            for lambda in [
                f32::from(crate::compress::DEFAULT_RDO_LAMBDA),
                1.0,
                30.0,
                1000.0,
            ] {
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

    /// Exact, including the shortcuts (candidates dominated by rounding,
    /// coefficients kept because zeroing them cannot pay): the same cost as
    /// an exhaustive search, over λ from barely any rate weight to much,
    /// and steps from fine to coarse.
    #[test]
    fn optimising_finds_the_exhaustive_optimum() {
        let rate = standard_luma();
        let mut rng = Rng(12345);
        for trial in 0..600 {
            let step: [u16; 64] = std::array::from_fn(|k| 6 + (trial % 5) as u16 * 4 + k as u16);
            // At most seven non-zero coefficients, up to ±8 steps: 3^7
            // choices, enumerable.
            let mut source = [0f32; 64];
            for _ in 0..7 {
                let z = 1 + (rng.next() % 63) as usize;
                let k = ZIGZAG[z];
                source[k] = (rng.unit() * 2.0 - 1.0) * 8.0 * f32::from(step[k]);
            }
            let plain = round(&source, &step);
            let nz: Vec<usize> = (1..64).filter(|&k| plain[k] != 0).collect();
            for lambda in [
                1.0,
                f32::from(crate::compress::DEFAULT_RDO_LAMBDA),
                40.0,
                400.0,
            ] {
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
                    (got - best).abs() <= 1e-4 * best.max(1.0),
                    "trial {trial}, λ {lambda}: {got} vs exhaustive {best}"
                );
            }
        }
    }
}
