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
mod huffman;
mod icc;
mod jpeg;
mod libjpeg;
mod sniff;

use std::io::Cursor;
use std::sync::Arc;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use std::time::Instant;

pub use sniff::{Sniffed, sniff};

use crate::domain::ErrorCode;

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub quality: u8,
    pub max_pixels: u64,
}

#[derive(Debug, Clone)]
pub struct Compressed {
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
    #[error("the image cannot be decoded: {0}")]
    Decode(String),
}

impl CompressError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotAnImage => ErrorCode::NotAnImage,
            Self::Unsupported(_) => ErrorCode::UnsupportedFormat,
            Self::TooManyPixels { .. } => ErrorCode::TooManyPixels,
            Self::Decode(_) => ErrorCode::DecodeFailed,
        }
    }
}

/// Compresses one image. CPU-bound: call it off the async runtime.
pub fn compress(input: &[u8], settings: &Settings) -> Result<Compressed, CompressError> {
    let format = match sniff(input) {
        Sniffed::Jpeg => ImageFormat::Jpeg,
        Sniffed::Png => ImageFormat::Png,
        Sniffed::Gif => ImageFormat::Gif,
        Sniffed::WebP => ImageFormat::WebP,
        Sniffed::Unsupported(name) => return Err(CompressError::Unsupported(name)),
        Sniffed::NotAnImage => return Err(CompressError::NotAnImage),
    };
    let started = Instant::now();
    let (mut image, orientation, icc) = if format == ImageFormat::Jpeg {
        if !jpeg_is_complete(input) {
            return Err(CompressError::Decode(
                "the JPEG data is truncated (no end-of-image marker after the last scan)".into(),
            ));
        }
        match jpeg::read(input, settings)? {
            jpeg::Read::Transcoded {
                bytes,
                width,
                height,
                rotated,
                reading,
            } => {
                let timings = StageTimings {
                    decode: reading,
                    encode: started.elapsed().saturating_sub(reading),
                };
                return Ok(keep_smaller(
                    input,
                    Compressed {
                        bytes,
                        width,
                        height,
                        original_kept: false,
                        timings,
                    },
                    rotated,
                ));
            }
            jpeg::Read::Pixels {
                image,
                orientation,
                icc,
            } => (image, orientation, icc),
        }
    } else {
        decode_other(input, format, settings.max_pixels)?
    };
    image.apply_orientation(orientation);
    let icc = icc.filter(|p| !icc::is_plain_srgb(p));

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
    let (data, channels) = flatten(image);
    let decoded = Instant::now();
    let bytes = libjpeg::encode(
        &data,
        width,
        height,
        channels,
        settings.quality,
        icc.as_deref(),
    )
    .map_err(|e| CompressError::Decode(format!("JPEG encoding failed: {e}")))?;
    let timings = StageTimings {
        decode: decoded - started,
        encode: decoded.elapsed(),
    };
    let out = Compressed {
        bytes,
        width,
        height,
        original_kept: false,
        timings,
    };
    if format == ImageFormat::Jpeg {
        return Ok(keep_smaller(
            input,
            out,
            orientation != Orientation::NoTransforms,
        ));
    }
    Ok(out)
}

/// The largest side libjpeg writes.
const JPEG_MAX_DIMENSION: u32 = 65_500;

/// A JPEG input that needed no turning is stored as it was when
/// re-compressing would not make it smaller.
fn keep_smaller(input: &[u8], out: Compressed, turned: bool) -> Compressed {
    if !turned && out.bytes.len() >= input.len() {
        return Compressed {
            bytes: input.to_vec(),
            original_kept: true,
            ..out
        };
    }
    out
}

/// PNG, GIF (first frame) and WebP through the `image` crate, with the
/// pixel cap checked on the header before any pixel is decoded.
fn decode_other(
    input: &[u8],
    format: ImageFormat,
    max_pixels: u64,
) -> Result<(DynamicImage, Orientation, Option<Vec<u8>>), CompressError> {
    let mut reader = ImageReader::with_format(Cursor::new(input), format);
    let mut limits = Limits::default();
    // Room for the largest allowed image at 16 bits per channel with alpha,
    // so that no header can make the decoder allocate more.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(CompressError::TooManyPixels {
            width,
            height,
            pixels,
            limit: max_pixels,
        });
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    Ok((image, orientation, icc))
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

/// 8-bit samples ready for the encoder, with their count per pixel: grey
/// stays grey, alpha is composited onto white, deeper samples are reduced
/// to 8 bits.
fn flatten(image: DynamicImage) -> (Vec<u8>, u8) {
    match image {
        DynamicImage::ImageLuma8(img) => (img.into_raw(), 1),
        DynamicImage::ImageRgb8(img) => (img.into_raw(), 3),
        DynamicImage::ImageLuma16(_) => (image.to_luma8().into_raw(), 1),
        img if !img.color().has_alpha() => (img.to_rgb8().into_raw(), 3),
        DynamicImage::ImageLumaA8(_) | DynamicImage::ImageLumaA16(_) => {
            let la = image.to_luma_alpha8();
            let data = la.pixels().map(|p| over_white(p.0[0], p.0[1])).collect();
            (data, 1)
        }
        img => {
            let rgba = img.into_rgba8();
            let mut data = Vec::with_capacity(rgba.width() as usize * rgba.height() as usize * 3);
            for p in rgba.pixels() {
                let [r, g, b, a] = p.0;
                data.extend_from_slice(&[over_white(r, a), over_white(g, a), over_white(b, a)]);
            }
            (data, 3)
        }
    }
}

fn over_white(c: u8, a: u8) -> u8 {
    let (c, a) = (u32::from(c), u32::from(a));
    ((c * a + 255 * (255 - a) + 127) / 255) as u8
}

/// Runs compression on a bounded number of blocking threads, so CPU work
/// never stalls the async runtime and never oversubscribes the cores.
#[derive(Clone)]
pub struct Engine {
    settings: Settings,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Engine {
    pub fn new(settings: Settings, threads: usize) -> Self {
        Self {
            settings,
            permits: Arc::new(tokio::sync::Semaphore::new(threads.max(1))),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub async fn compress(&self, input: bytes::Bytes) -> Result<Compressed, CompressError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| CompressError::Decode("engine stopped".into()))?;
        let settings = self.settings;
        tokio::task::spawn_blocking(move || compress(&input, &settings))
            .await
            .unwrap_or_else(|e| Err(CompressError::Decode(format!("the decoder crashed: {e}"))))
    }
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
        let (_, header) =
            libjpeg::Decompress::new(input, 1 << 30).map_err(CompressError::Decode)?;
        Ok((header.width, header.height))
    }

    /// A full decode to pixels (what the pixel path starts from).
    pub fn jpeg_pixels(input: &[u8]) -> Result<Vec<u8>, CompressError> {
        let (decompress, _) =
            libjpeg::Decompress::new(input, 1 << 30).map_err(CompressError::Decode)?;
        Ok(decompress.pixels().map_err(CompressError::Decode)?.data)
    }

    /// Encoding 8-bit RGB pixels, 4:2:0 with optimised Huffman tables.
    pub fn encode_rgb(
        rgb: &[u8],
        width: u32,
        height: u32,
        quality: u8,
    ) -> Result<Vec<u8>, CompressError> {
        libjpeg::encode(rgb, width, height, 3, quality, None).map_err(CompressError::Decode)
    }
}

#[cfg(test)]
mod tests;
