//! The format sniffer on arbitrary bytes: never a panic, and a verdict that
//! only depends on the first bytes (a longer tail cannot change it).
#![no_main]

use imgproc::compress::{Sniffed, sniff};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let verdict = sniff(data);
    if data.len() > 512 {
        assert_eq!(sniff(&data[..512]), verdict);
    }
    if matches!(verdict, Sniffed::Jpeg) {
        assert!(data.starts_with(&[0xFF, 0xD8, 0xFF]));
    }
});
