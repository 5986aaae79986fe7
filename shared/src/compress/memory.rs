//! Decode memory: what one image needs, read from its header before any
//! pixel is decoded, and the budget that the images compressed at once
//! share.
//!
//! The pixel cap alone does not bound memory: a 10,000×10,000 PNG is within
//! 100 MP and arrives as a 1 MB file, yet decoding it takes hundreds of
//! megabytes, and ten of them in one Lambda batch would take gigabytes. So
//! every image is priced from its header — the decoded form's bytes per
//! pixel (16-bit samples are narrowed to 8 bits while decoding) plus the
//! codecs' working memory, at the stage where the most is held at once — and
//! admitted only when that much of the budget is free. The estimates are
//! upper bounds; `functions/local/tests/hostile_images.rs` measures peak
//! RSS against them.

use std::sync::{Condvar, Mutex, MutexGuard};

const MIB: u64 = 1024 * 1024;

/// libjpeg's pools, Huffman tables, zlib's window, row buffers: what any
/// image costs beyond its pixels and coefficients.
pub const FIXED_BYTES: u64 = 4 * MIB;

/// One 8×8 block of DCT coefficients, as libjpeg stores it (64 × `i16`).
const BLOCK_BYTES: u64 = 128;

/// The source's coefficient arrays, as libjpeg allocates them for a
/// progressive or transcoded read: every component's blocks, padded to
/// whole MCUs. `sampling` is each component's (horizontal, vertical)
/// sampling factor.
pub fn jpeg_coefficient_bytes(width: u32, height: u32, sampling: &[(u8, u8)]) -> u64 {
    let (h_max, v_max) = (largest(sampling, |s| s.0), largest(sampling, |s| s.1));
    sampling
        .iter()
        .map(|&(h, v)| {
            let blocks_w = blocks(width, h, h_max).next_multiple_of(u64::from(h).max(1));
            let blocks_h = blocks(height, v, v_max).next_multiple_of(u64::from(v).max(1));
            blocks_w * blocks_h * BLOCK_BYTES
        })
        .sum()
}

/// What halving a 4:2:2 or 4:4:4 JPEG's chroma adds to its coefficient
/// arrays: the output's two 4:2:0 chroma arrays, and a block row per
/// source component (its arrays are read with an even number of rows, for
/// the encoder, which takes luma two rows at a time).
pub fn halving_bytes(width: u32, height: u32, sampling: &[(u8, u8)]) -> u64 {
    let output = [(2, 2), (1, 1), (1, 1)];
    let chroma = jpeg_coefficient_bytes(width, height, &output)
        - jpeg_coefficient_bytes(width, height, &output[..1]);
    let widest = largest(sampling, |s| s.0);
    let rows: u64 = sampling
        .iter()
        .map(|&(h, _)| blocks(width, h, widest) + 1)
        .sum();
    chroma + rows * BLOCK_BYTES
}

/// The largest sampling factor of any component along one axis (at least 1).
fn largest(sampling: &[(u8, u8)], axis: impl Fn(&(u8, u8)) -> u8) -> u64 {
    sampling
        .iter()
        .map(|s| u64::from(axis(s)))
        .max()
        .unwrap_or(1)
        .max(1)
}

/// The blocks a component of sampling factor `factor` (of the largest,
/// `largest`) spans across `pixels`, before padding to whole MCUs.
fn blocks(pixels: u32, factor: u8, largest: u64) -> u64 {
    (u64::from(pixels) * u64::from(factor).max(1)).div_ceil(8 * largest)
}

/// The encoder's whole-image coefficient buffers: libjpeg keeps one when
/// it optimises Huffman tables, which needs every symbol counted before
/// the first is written, and mozjpeg's encoder allocates a second,
/// unquantised copy beside it (`whole_image_uq` in `jccoefct.c`, for
/// trellis quantisation). Colour is 4:2:0, grey one component.
pub fn encoder_bytes(width: u32, height: u32, channels: u8) -> u64 {
    let one = if channels == 1 {
        jpeg_coefficient_bytes(width, height, &[(1, 1)])
    } else {
        jpeg_coefficient_bytes(width, height, &[(2, 2), (1, 1), (1, 1)])
    };
    2 * one
}

/// Room for the output: a quality-50 JPEG stays well under half a byte per
/// pixel, the buffer grows by at most `OUTPUT_GROWTH` beyond what is
/// written, and the input itself may be copied out as the result when the
/// re-encode is not smaller.
pub fn output_bytes(width: u32, height: u32, input_len: usize) -> u64 {
    pixels(width, height) / 2 + super::libjpeg::OUTPUT_GROWTH as u64 + input_len as u64
}

/// A picture decoded whole, then flattened in place to grey or RGB
/// (`flat_channels`), turned if need be (a turned copy beside the
/// original) and encoded (the encoder's buffer beside the pixels): the
/// most those stages hold at once. `decoded` is what the decoder holds at
/// its peak, its output included.
pub fn pixel_path_bytes(
    width: u32,
    height: u32,
    decoded: u64,
    flat_channels: u8,
    turning: bool,
) -> u64 {
    let flat = pixels(width, height) * u64::from(flat_channels);
    let turned = if turning { 2 * flat } else { 0 };
    decoded
        .max(turned)
        .max(flat + encoder_bytes(width, height, flat_channels))
}

pub fn pixels(width: u32, height: u32) -> u64 {
    u64::from(width) * u64::from(height)
}

/// Memory for decoding, shared by every image compressed at once, counted
/// in MiB. An image waits until its need is free; one that needs more than
/// half of the whole is admitted alone (it takes all of it). Images are
/// admitted in the order they ask, so a large one is never starved by a
/// stream of small ones.
#[derive(Debug)]
pub struct DecodeMemory {
    capacity_mib: u64,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    in_use_mib: u64,
    holders: usize,
    waiting: usize,
    next_ticket: u64,
    serving: u64,
}

/// A share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Lease<'a> {
    memory: &'a DecodeMemory,
    mib: u64,
}

impl DecodeMemory {
    pub fn new(capacity_bytes: u64) -> Self {
        Self {
            capacity_mib: (capacity_bytes / MIB).max(1),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_mib * MIB
    }

    /// Blocks until `need_bytes` (capped at the whole budget) is free, then
    /// holds it until the lease is dropped. Callers refuse an image whose
    /// need exceeds the budget before asking.
    pub fn acquire(&self, need_bytes: u64) -> Lease<'_> {
        let wanted = need_bytes.div_ceil(MIB).max(1);
        let mib = if wanted * 2 > self.capacity_mib {
            self.capacity_mib
        } else {
            wanted
        };
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiting += 1;
        while state.serving != ticket || state.in_use_mib + mib > self.capacity_mib {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.waiting -= 1;
        state.serving += 1;
        state.in_use_mib += mib;
        state.holders += 1;
        drop(state);
        // The next in line may fit beside this one.
        self.changed.notify_all();
        Lease { memory: self, mib }
    }

    /// Images holding a share now.
    pub fn holders(&self) -> usize {
        self.lock().holders
    }

    /// Images waiting for their share.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    pub fn in_use_bytes(&self) -> u64 {
        self.lock().in_use_mib * MIB
    }

    /// The counters stay consistent even if a holder panicked: a lease is
    /// released by `Drop`, which runs during unwinding.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Lease<'_> {
    pub fn bytes(&self) -> u64 {
        self.mib * MIB
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut state = self.memory.lock();
        state.in_use_mib -= self.mib;
        state.holders -= 1;
        drop(state);
        self.memory.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn coefficient_arrays_are_padded_to_whole_mcus() {
        // 4:2:0, 17×9 pixels: MCUs of 16×16, so 2×1 of them. Luma 4×2
        // blocks, each chroma 2×1.
        let bytes = jpeg_coefficient_bytes(17, 9, &[(2, 2), (1, 1), (1, 1)]);
        assert_eq!(bytes, (8 + 2 + 2) * 128);
        // Grey 8×8: one block.
        assert_eq!(jpeg_coefficient_bytes(8, 8, &[(1, 1)]), 128);
        // 4:4:4 at 10,000²: 3 × 1250² blocks, 6 bytes a pixel.
        assert_eq!(
            jpeg_coefficient_bytes(10_000, 10_000, &[(1, 1); 3]),
            3 * 1250 * 1250 * 128
        );
        // The encoder's 4:2:0 buffers are twice 3 bytes a pixel.
        assert_eq!(
            encoder_bytes(10_000, 10_000, 3),
            2 * (1250 * 1250 + 2 * 625 * 625) * 128
        );
        assert_eq!(encoder_bytes(10_000, 10_000, 1), 2 * 1250 * 1250 * 128);
    }

    #[test]
    fn halving_adds_the_output_chroma_and_a_block_row_per_component() {
        // 4:4:4, 33×17 pixels: 5 blocks a row in each component; the
        // 4:2:0 output's chroma is 3×2 blocks each.
        assert_eq!(
            halving_bytes(33, 17, &[(1, 1); 3]),
            (2 * 3 * 2 + 3 * (5 + 1)) * 128
        );
        // 4:2:2 at 10,000²: 1250 luma blocks a row, 625 chroma.
        assert_eq!(
            halving_bytes(10_000, 10_000, &[(2, 1), (1, 1), (1, 1)]),
            (2 * 625 * 625 + 1251 + 2 * 626) * 128
        );
    }

    #[test]
    fn small_needs_share_the_budget() {
        let memory = DecodeMemory::new(100 * MIB);
        let a = memory.acquire(30 * MIB);
        let b = memory.acquire(30 * MIB + 1);
        assert_eq!(b.bytes(), 31 * MIB, "counted in whole MiB, rounded up");
        assert_eq!((memory.holders(), memory.in_use_bytes()), (2, 61 * MIB));
        drop(a);
        drop(b);
        assert_eq!((memory.holders(), memory.in_use_bytes()), (0, 0));
    }

    #[test]
    fn a_need_over_half_the_budget_is_admitted_alone() {
        let memory = Arc::new(DecodeMemory::new(100 * MIB));
        let small = memory.acquire(10 * MIB);
        let big_admitted = Arc::new(AtomicBool::new(false));
        let big = {
            let (memory, admitted) = (memory.clone(), big_admitted.clone());
            std::thread::spawn(move || {
                let lease = memory.acquire(51 * MIB);
                admitted.store(true, Ordering::SeqCst);
                assert_eq!(memory.holders(), 1, "nothing else in flight beside it");
                assert_eq!(lease.bytes(), 100 * MIB, "it holds the whole budget");
                drop(lease);
            })
        };
        // The big one is queued behind the small one it cannot run beside.
        wait_until("the big image waits", || memory.waiting() == 1);
        assert!(!big_admitted.load(Ordering::SeqCst));
        // A small one that asks later waits behind it, though it would fit.
        let later_admitted = Arc::new(AtomicBool::new(false));
        let later = {
            let (memory, admitted) = (memory.clone(), later_admitted.clone());
            std::thread::spawn(move || {
                let _lease = memory.acquire(10 * MIB);
                admitted.store(true, Ordering::SeqCst);
            })
        };
        wait_until("the later image waits too", || memory.waiting() == 2);
        assert!(!later_admitted.load(Ordering::SeqCst));
        drop(small);
        big.join().expect("the big image ran alone");
        later.join().expect("the later image ran after it");
        assert!(big_admitted.load(Ordering::SeqCst) && later_admitted.load(Ordering::SeqCst));
        assert_eq!((memory.holders(), memory.in_use_bytes()), (0, 0));
    }

    #[test]
    fn a_panicking_holder_gives_its_share_back() {
        let memory = Arc::new(DecodeMemory::new(10 * MIB));
        let m = memory.clone();
        let crashed = std::thread::spawn(move || {
            let _lease = m.acquire(8 * MIB);
            panic!("a decoder bug");
        })
        .join();
        assert!(crashed.is_err());
        assert_eq!(memory.in_use_bytes(), 0);
        let _lease = memory.acquire(10 * MIB);
    }
}
