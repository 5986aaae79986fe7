//! The compression engine on arbitrary bytes: no panic and no crash in the
//! C decoders, only a JPEG or a clean error, every output within the pixel
//! cap and the decode-memory budget, and a kept original the input itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The one item of `imgproc::domain` the engine names: its error codes
/// (the engine maps its errors onto four of them).
mod domain {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ErrorCode {
        NotAnImage,
        UnsupportedFormat,
        TooManyPixels,
        DecodeFailed,
    }
}

/// The service's own engine, the very files `imgproc::compress` is.
#[path = "../../shared/src/compress/mod.rs"]
#[allow(dead_code)]
mod compress;

use compress::{DEFAULT_RDO_LAMBDA, Settings, Sniffed, compress, sniff, stages};

/// Small limits, so that a header claiming a huge picture is refused
/// rather than decoded: 4 MP, 128 MiB, 2 s of CPU.
const SETTINGS: Settings = Settings {
    quality: 50,
    rdo_lambda: DEFAULT_RDO_LAMBDA,
    max_pixels: 1 << 22,
    max_decode_bytes: 128 << 20,
    max_cpu_time: std::time::Duration::from_secs(2),
};

fuzz_target!(|data: &[u8]| {
    match compress(data, &SETTINGS) {
        Ok(out) => {
            assert_eq!(sniff(&out.bytes), Sniffed::Jpeg);
            let pixels = u64::from(out.width) * u64::from(out.height);
            assert!(pixels > 0 && pixels <= SETTINGS.max_pixels, "{pixels} pixels");
            if out.original_kept {
                assert_eq!(out.bytes, data, "a kept original is the input");
            }
            // The output's own header agrees with what the engine reports.
            let header = stages::jpeg_header(&out.bytes).expect("the output reads back");
            assert_eq!(header, (out.width, out.height));
        }
        Err(e) => {
            // Every failure has one of the engine's codes and a message.
            let _ = e.code();
            assert!(!e.to_string().is_empty());
        }
    }
});
