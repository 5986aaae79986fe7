//! The compression engine: bytes in, JPEG bytes out (SPEC §3, steps 3–4).
//!
//! Format from the bytes, the pixel cap checked before decoding, EXIF
//! orientation applied, alpha flattened onto white, metadata dropped except
//! the colour profile (a plain sRGB one goes too: it is the default), JPEG
//! at the configured quality with 4:2:0 chroma and optimised Huffman
//! tables, and never a larger file than a JPEG input that needed no
//! rotation. JPEG inputs are re-compressed in the DCT domain where their
//! layout allows (`jpeg.rs`); everything else goes through pixels.

mod chroma;
mod cpu;
mod entropy_decoder;
mod huffman;
mod icc;
mod jmem;
mod jpeg;
mod libjpeg;
pub mod memory;
mod pixels;
mod png_input;
mod sniff;
mod transcode;
mod trellis;
mod webp_input;

use std::io::Cursor;
use std::sync::Arc;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use std::time::{Duration, Instant};

pub use memory::DecodeMemory;
pub use sniff::{Sniffed, sniff};

use crate::domain::ErrorCode;

/// λ of the requantisation of JPEG inputs (`JPEG_RDO_LAMBDA`), chosen on
/// the benchmark corpus (BENCHMARKS.md, "Rate–distortion-optimised
/// requantisation"): the largest λ whose outputs still score at least
/// Sharp's quality by both DSSIM (mean, and every image within 1.15×) and
/// SSIMULACRA2, saving 7 % of the bytes against plain rounding; λ 8 and
/// above save more and score below Sharp.
pub const DEFAULT_RDO_LAMBDA: u16 = 7;

/// The largest λ accepted. At 30 the outputs are already 13 % worse than
/// Sharp's by DSSIM; far above, the optimisation zeroes nearly every AC
/// coefficient, which no setting of a quality-50 service should ask for.
pub const MAX_RDO_LAMBDA: u16 = 100;

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub quality: u8,
    /// λ of the rate–distortion optimisation of JPEG inputs: the squared
    /// error one more bit is worth (0: plain rounding, the least error).
    pub rdo_lambda: u16,
    pub max_pixels: u64,
    /// Memory one image may need to be decoded and encoded, from its
    /// header (see `memory`); also the budget that the images compressed
    /// at once by one `Engine` share.
    pub max_decode_bytes: u64,
    /// CPU time one image may take to decode and encode (see `cpu`).
    pub max_cpu_time: std::time::Duration,
}

impl Settings {
    /// The pixel cap, checked from the header before anything is decoded:
    /// the image's pixel count, or the error naming its size.
    pub fn check_pixels(&self, width: u32, height: u32) -> Result<u64, CompressError> {
        let pixels = memory::pixels(width, height);
        if pixels > self.max_pixels {
            return Err(CompressError::TooManyPixels {
                width,
                height,
                pixels,
                limit: self.max_pixels,
            });
        }
        Ok(pixels)
    }
}

/// What the engine made of one image.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// Upright dimensions of the output.
    pub width: u32,
    pub height: u32,
    /// The input was stored as it was: re-encoding would not have made it smaller.
    pub original_kept: bool,
    pub timings: StageTimings,
}

/// Where one image's CPU time went, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageTimings {
    /// Reading the input: header, entropy decoding, pixels, orientation.
    pub decode: std::time::Duration,
    /// Writing the JPEG.
    pub encode: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressError {
    #[error("the body is not an image (it does not start like a JPEG, PNG, WebP or GIF file)")]
    NotAnImage,
    #[error("{0} images are not supported; send JPEG, PNG, WebP or GIF")]
    Unsupported(&'static str),
    #[error("the image is {width}×{height} = {pixels} pixels; at most {limit} are allowed")]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error(
        "the {width}×{height} image needs {} MiB to decode; at most {} MiB are allowed",
        need.div_ceil(1 << 20),
        limit >> 20
    )]
    TooMuchMemory {
        width: u32,
        height: u32,
        need: u64,
        limit: u64,
    },
    #[error("the image cannot be decoded: {0}")]
    Decode(String),
}

impl CompressError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotAnImage => ErrorCode::NotAnImage,
            Self::Unsupported(_) => ErrorCode::UnsupportedFormat,
            Self::TooManyPixels { .. } | Self::TooMuchMemory { .. } => ErrorCode::TooManyPixels,
            Self::Decode(_) => ErrorCode::DecodeFailed,
        }
    }
}

/// Compresses one image, alone: its need is checked against
/// `settings.max_decode_bytes`, shared with nothing. CPU-bound: call it off
/// the async runtime.
pub fn compress(input: &[u8], settings: &Settings) -> Result<Encoded, CompressError> {
    compress_within(
        input,
        settings,
        &DecodeMemory::new(settings.max_decode_bytes),
    )
}

/// Compresses one image once `memory` has room for what its header says it
/// needs, blocking until then; an image that needs more than the whole
/// budget fails at once with `TooMuchMemory`. Threads compressing at once
/// share one `DecodeMemory`.
pub fn compress_within(
    input: &[u8],
    settings: &Settings,
    memory: &DecodeMemory,
) -> Result<Encoded, CompressError> {
    let format = match sniff(input) {
        Sniffed::Jpeg => ImageFormat::Jpeg,
        Sniffed::Png => ImageFormat::Png,
        Sniffed::Gif => ImageFormat::Gif,
        Sniffed::WebP => ImageFormat::WebP,
        Sniffed::Unsupported(name) => return Err(CompressError::Unsupported(name)),
        Sniffed::NotAnImage => return Err(CompressError::NotAnImage),
    };
    let started = Instant::now();
    let limits = libjpeg::Limits {
        max_scans: libjpeg::MAX_SCANS,
        deadline: Some(cpu::CpuDeadline::after(settings.max_cpu_time)),
    };
    match format {
        ImageFormat::Jpeg => {
            if !jpeg_is_complete(input) {
                return Err(CompressError::Decode(
                    "the JPEG data is truncated (no end-of-image marker after the last scan)"
                        .into(),
                ));
            }
            let opened = jpeg::open(input, settings, limits)?;
            let _lease = admit(
                memory,
                settings,
                opened.dimensions(),
                opened.need(input.len()),
            )?;
            match opened.read(settings, limits)? {
                jpeg::Read::Transcoded {
                    bytes,
                    width,
                    height,
                    rotated,
                    reading,
                } => {
                    let out = encoded(bytes, (width, height), reading, started);
                    Ok(keep_smaller(input, out, rotated))
                }
                jpeg::Read::Pixels {
                    image,
                    orientation,
                    icc,
                } => {
                    let out = encode_pixels(image, orientation, icc, settings, limits, started)?;
                    Ok(keep_smaller(
                        input,
                        out,
                        orientation != Orientation::NoTransforms,
                    ))
                }
            }
        }
        ImageFormat::Png => {
            let opened = png_input::open(input, settings)?;
            let dimensions = opened.dimensions();
            let _lease = admit(memory, settings, dimensions, opened.need(input.len()))?;
            let read = opened.read(settings, limits)?;
            finish(read, dimensions, settings, limits, started)
        }
        ImageFormat::WebP => {
            let opened = webp_input::open(input, settings)?;
            let dimensions = opened.dimensions();
            let _lease = admit(memory, settings, dimensions, opened.need(input.len()))?;
            let read = opened.read(settings, limits)?;
            finish(read, dimensions, settings, limits, started)
        }
        _ => {
            let mut reader = ImageReader::with_format(Cursor::new(input), format);
            let mut image_limits = Limits::default();
            // Room for the largest allowed image at 16 bits per channel with
            // alpha, so that no header can make the decoder allocate more.
            image_limits.max_alloc = Some(settings.max_pixels.saturating_mul(8).max(64 << 20));
            reader.limits(image_limits);
            let mut decoder = reader.into_decoder().map_err(decode_error)?;
            let (width, height) = decoder.dimensions();
            let pixels = settings.check_pixels(width, height)?;
            let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
            let icc = decoder.icc_profile().ok().flatten();
            let color = decoder.color_type();
            let flat = pixels::flat_channels(color.channel_count());
            // The GIF decoder works on a frame or a canvas of up to 4 bytes
            // a pixel beside its output.
            let decoded = pixels * (u64::from(color.bytes_per_pixel()) + 4);
            let need = memory::pixel_path_bytes(
                width,
                height,
                decoded,
                flat,
                orientation != Orientation::NoTransforms,
            ) + memory::output_bytes(width, height, input.len())
                + memory::FIXED_BYTES;
            let _lease = admit(memory, settings, (width, height), need)?;
            let image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
            encode_pixels(image, orientation, icc, settings, limits, started)
        }
    }
}

/// What a PNG or WebP input made of its picture.
enum Read {
    /// Encoded by the input's own path (a PNG's rows streamed into the
    /// encoder, a lossy WebP's planes); `decoding` is the time its decoder
    /// took.
    Encoded { bytes: Vec<u8>, decoding: Duration },
    /// Decoded whole, in stored orientation, for `encode_pixels`.
    Pixels {
        image: DynamicImage,
        orientation: Orientation,
        icc: Option<Vec<u8>>,
    },
}

/// The end of a PNG's or WebP's way: encoded already, or through pixels.
fn finish(
    read: Read,
    dimensions: (u32, u32),
    settings: &Settings,
    limits: libjpeg::Limits,
    started: Instant,
) -> Result<Encoded, CompressError> {
    match read {
        Read::Encoded { bytes, decoding } => Ok(encoded(bytes, dimensions, decoding, started)),
        Read::Pixels {
            image,
            orientation,
            icc,
        } => encode_pixels(image, orientation, icc, settings, limits, started),
    }
}

/// An output its input's own path encoded, `decoding` of the time since
/// `started` spent reading the input.
fn encoded(
    bytes: Vec<u8>,
    (width, height): (u32, u32),
    decoding: Duration,
    started: Instant,
) -> Encoded {
    Encoded {
        bytes,
        width,
        height,
        original_kept: false,
        timings: StageTimings {
            decode: decoding,
            encode: started.elapsed().saturating_sub(decoding),
        },
    }
}

/// Refuses an image whose need exceeds the budget, else waits for its share.
fn admit<'m>(
    memory: &'m DecodeMemory,
    settings: &Settings,
    (width, height): (u32, u32),
    need: u64,
) -> Result<memory::Lease<'m>, CompressError> {
    let limit = settings.max_decode_bytes.min(memory.capacity_bytes());
    if need > limit {
        return Err(CompressError::TooMuchMemory {
            width,
            height,
            need,
            limit,
        });
    }
    Ok(memory.acquire(need))
}

/// The pixel path's end: flattened to grey or RGB in place, made upright,
/// the colour profile kept unless it is plain sRGB, encoded.
fn encode_pixels(
    image: DynamicImage,
    orientation: Orientation,
    icc: Option<Vec<u8>>,
    settings: &Settings,
    limits: libjpeg::Limits,
    started: Instant,
) -> Result<Encoded, CompressError> {
    let (width, height) = (image.width(), image.height());
    let (data, channels) = pixels::flatten(image);
    let mut image = match channels {
        1 => image::GrayImage::from_raw(width, height, data).map(DynamicImage::ImageLuma8),
        _ => image::RgbImage::from_raw(width, height, data).map(DynamicImage::ImageRgb8),
    }
    .ok_or_else(|| CompressError::Decode("decoded data does not match the image size".into()))?;
    image.apply_orientation(orientation);

    let (width, height) = (image.width(), image.height());
    if width > JPEG_MAX_DIMENSION || height > JPEG_MAX_DIMENSION {
        let pixels = u64::from(width) * u64::from(height);
        return Err(CompressError::TooManyPixels {
            width,
            height,
            pixels,
            limit: settings.max_pixels,
        });
    }
    let decoded = Instant::now();
    let bytes = libjpeg::encode(
        image.as_bytes(),
        width,
        height,
        channels,
        settings.quality,
        icc::worth_keeping(icc.as_deref()),
        limits,
    )
    .map_err(encoding_failed)?;
    let timings = StageTimings {
        decode: decoded - started,
        encode: decoded.elapsed(),
    };
    Ok(Encoded {
        bytes,
        width,
        height,
        original_kept: false,
        timings,
    })
}

/// libjpeg refused to encode what it was given.
fn encoding_failed(e: String) -> CompressError {
    CompressError::Decode(format!("JPEG encoding failed: {e}"))
}

/// The largest side libjpeg writes.
const JPEG_MAX_DIMENSION: u32 = 65_500;

/// A JPEG input that needed no turning is stored as it was when
/// re-compressing would not make it smaller.
fn keep_smaller(input: &[u8], out: Encoded, turned: bool) -> Encoded {
    if !turned && out.bytes.len() >= input.len() {
        return Encoded {
            bytes: input.to_vec(),
            original_kept: true,
            ..out
        };
    }
    out
}

fn decode_error(e: image::ImageError) -> CompressError {
    match e {
        image::ImageError::Unsupported(u) => {
            CompressError::Decode(format!("unsupported variant: {u}"))
        }
        image::ImageError::Limits(l) => {
            CompressError::Decode(format!("the image needs more memory than allowed: {l}"))
        }
        other => CompressError::Decode(other.to_string()),
    }
}

/// A JPEG is complete when an end-of-image marker follows its last
/// start-of-scan. Inside entropy-coded data 0xFF is always stuffed, so the
/// markers cannot be mistaken; an embedded EXIF thumbnail's own markers come
/// before the main image's.
fn jpeg_is_complete(data: &[u8]) -> bool {
    let last = |marker: u8| {
        data.windows(2)
            .rposition(|w| w[0] == 0xFF && w[1] == marker)
    };
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

/// Runs compression on a bounded number of blocking threads, so CPU work
/// never stalls the async runtime and never oversubscribes the cores, and
/// admits images by the memory their decoding needs, so that the images in
/// flight together never exceed `Settings::max_decode_bytes`.
#[derive(Clone)]
pub struct Engine {
    settings: Settings,
    permits: Arc<tokio::sync::Semaphore>,
    memory: Arc<DecodeMemory>,
}

impl Engine {
    pub fn new(settings: Settings, threads: usize) -> Self {
        Self {
            settings,
            permits: Arc::new(tokio::sync::Semaphore::new(threads.max(1))),
            memory: Arc::new(DecodeMemory::new(settings.max_decode_bytes)),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The decode-memory budget the engine's images share.
    pub fn memory(&self) -> &DecodeMemory {
        &self.memory
    }

    pub async fn compress(&self, input: bytes::Bytes) -> Result<Encoded, CompressError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| CompressError::Decode("engine stopped".into()))?;
        let (settings, memory) = (self.settings, self.memory.clone());
        tokio::task::spawn_blocking(move || compress_within(&input, &settings, &memory))
            .await
            .unwrap_or_else(|e| Err(CompressError::Decode(format!("the decoder crashed: {e}"))))
    }
}

/// How the engine was built, for `--version`: whether libjpeg-turbo's
/// SIMD code is in the binary and usable on this CPU.
pub fn build_info() -> String {
    let simd = if libjpeg::simd_enabled() {
        "on"
    } else {
        "off (built without nasm)"
    };
    #[cfg(target_arch = "x86_64")]
    let cpu = if std::arch::is_x86_feature_detected!("avx2") {
        ", AVX2"
    } else {
        ", no AVX2"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let cpu = "";
    format!("libjpeg-turbo SIMD {simd}{cpu}")
}

/// Cores available to this process (1 when unknown).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The engine's steps one at a time, for the stage benchmarks.
#[doc(hidden)]
pub mod stages {
    use super::{CompressError, libjpeg};

    /// Header only: size, layout, markers.
    pub fn jpeg_header(input: &[u8]) -> Result<(u32, u32), CompressError> {
        let (_, header) = libjpeg::Decompress::new(input, 1 << 30, libjpeg::Limits::NONE)
            .map_err(CompressError::Decode)?;
        Ok((header.width, header.height))
    }

    /// A full decode to pixels (what the pixel path starts from).
    pub fn jpeg_pixels(input: &[u8]) -> Result<Vec<u8>, CompressError> {
        let (decompress, _) = libjpeg::Decompress::new(input, 1 << 30, libjpeg::Limits::NONE)
            .map_err(CompressError::Decode)?;
        Ok(decompress.pixels().map_err(CompressError::Decode)?.data)
    }

    /// Encoding 8-bit RGB pixels, 4:2:0 with optimised Huffman tables.
    pub fn encode_rgb(
        rgb: &[u8],
        width: u32,
        height: u32,
        quality: u8,
    ) -> Result<Vec<u8>, CompressError> {
        libjpeg::encode(rgb, width, height, 3, quality, None, libjpeg::Limits::NONE)
            .map_err(CompressError::Decode)
    }
}

#[cfg(test)]
mod tests;
