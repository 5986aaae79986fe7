//! The format sniffer on arbitrary bytes: never a panic, and a verdict that
//! only depends on the first bytes (a longer tail cannot change it).
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The service's own sniffer, the very file `imgproc::compress::sniff` is.
#[path = "../../shared/src/compress/sniff.rs"]
#[allow(dead_code)]
mod sniff;

use sniff::{Sniffed, sniff};

fuzz_target!(|data: &[u8]| {
    let verdict = sniff(data);
    if data.len() > 512 {
        assert_eq!(sniff(&data[..512]), verdict);
    }
    if matches!(verdict, Sniffed::Jpeg) {
        assert!(data.starts_with(&[0xFF, 0xD8, 0xFF]));
    }
});
