//! JPEG inputs, read with libjpeg-turbo.
//!
//! A colour 4:2:0 or greyscale JPEG — nearly every photograph — is
//! re-compressed in the DCT domain: its coefficients are requantised to the
//! target tables and re-entropy-coded, with no inverse or forward DCT, no
//! colour conversion and no chroma resampling, and the EXIF orientation is
//! applied exactly on whole blocks. That is several times faster than
//! decoding and re-encoding, and loses less. Anything else (4:4:4 or 4:2:2
//! chroma, CMYK, a rotation that would cut through a partial block) is
//! decoded to pixels for the common path.

use std::time::Duration;

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, RgbImage};
use mozjpeg_sys::{J_COLOR_SPACE, JXFORM_CODE};

use super::{CompressError, Settings, libjpeg, memory, transcode};

pub enum Read {
    /// Already compressed, upright; `reading` is the time spent before writing began.
    Transcoded {
        bytes: Vec<u8>,
        width: u32,
        height: u32,
        rotated: bool,
        reading: Duration,
    },
    /// Decoded pixels, still in stored orientation.
    Pixels {
        image: DynamicImage,
        orientation: Orientation,
        icc: Option<Vec<u8>>,
    },
}

/// libjpeg's own allocations, beyond what the pixel cap already bounds
/// (the cap is checked on the header before anything is allocated).
fn memory_budget(pixels: u64) -> usize {
    // Whole-image coefficient buffers (progressive input, optimised Huffman
    // output) take 2 bytes per sample; 3 full-size components at most.
    usize::try_from(pixels.saturating_mul(8))
        .unwrap_or(usize::MAX)
        .max(64 << 20)
}

/// A JPEG whose header has been read, not yet its data.
pub struct Opened<'a> {
    decompress: libjpeg::Decompress<'a>,
    header: libjpeg::Header,
    orientation: Orientation,
    /// How chroma changes in the DCT domain; `None`: through pixels.
    plan: Option<transcode::Chroma>,
}

/// Reads the header and checks the pixel cap.
pub fn open<'a>(
    input: &'a [u8],
    settings: &Settings,
    limits: libjpeg::Limits,
) -> Result<Opened<'a>, CompressError> {
    let (mut decompress, header) =
        libjpeg::Decompress::new(input, 64 << 20, limits).map_err(CompressError::Decode)?;
    let pixels = settings.check_pixels(header.width, header.height)?;
    decompress.set_memory_budget(memory_budget(pixels));
    let orientation = header
        .exif
        .as_deref()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let plan = if header.is_ycbcr_420() || header.is_grayscale() {
        Some(transcode::Chroma::Keep)
    } else if header.is_ycbcr(&[(2, 1), (1, 1), (1, 1)]) {
        Some(transcode::Chroma::HalveHeight)
    } else if header.is_ycbcr(&[(1, 1), (1, 1), (1, 1)]) {
        Some(transcode::Chroma::HalveBoth)
    } else {
        None
    };
    Ok(Opened {
        decompress,
        header,
        orientation,
        plan,
    })
}

impl<'a> Opened<'a> {
    pub fn dimensions(&self) -> (u32, u32) {
        (self.header.width, self.header.height)
    }

    /// Memory this picture needs, from its header: the source's
    /// coefficients in the DCT domain, with a second set when turning
    /// (libjpeg's transform workspace) or the new 4:2:0 chroma when halving
    /// it; through pixels, the larger of what the pixel path holds.
    /// A turn that cannot be done on whole blocks falls back to pixels, so
    /// both are priced then.
    pub fn need(&self, input_len: usize) -> u64 {
        let (w, h) = self.dimensions();
        let source = memory::jpeg_coefficient_bytes(w, h, &self.header.sampling);
        let turning = self.orientation != Orientation::NoTransforms;
        let transcode = match self.plan {
            Some(transcode::Chroma::Keep) if turning => 2 * source,
            Some(transcode::Chroma::Keep) => source,
            Some(_) => source + memory::halving_bytes(w, h, &self.header.sampling),
            None => 0,
        };
        let through_pixels = if self.plan.is_none() || turning {
            let grey = self.header.color_space == J_COLOR_SPACE::JCS_GRAYSCALE;
            let cmyk = matches!(
                self.header.color_space,
                J_COLOR_SPACE::JCS_CMYK | J_COLOR_SPACE::JCS_YCCK
            );
            let decoded_channels: u64 = if grey {
                1
            } else if cmyk {
                4
            } else {
                3
            };
            // While decoding, a progressive source's coefficients stay
            // beside the pixels; CMYK becomes RGB in place.
            let decoded = source + memory::pixels(w, h) * decoded_channels;
            memory::pixel_path_bytes(w, h, decoded, if grey { 1 } else { 3 }, turning)
        } else {
            0
        };
        transcode.max(through_pixels) + memory::output_bytes(w, h, input_len) + memory::FIXED_BYTES
    }

    pub fn read(self, settings: &Settings, limits: libjpeg::Limits) -> Result<Read, CompressError> {
        let Self {
            decompress,
            header,
            orientation,
            plan,
        } = self;
        let decompress = if let Some(chroma) = plan {
            let icc = super::icc::worth_keeping(header.icc.as_deref());
            match transcode::transcode(
                decompress,
                settings.quality,
                chroma,
                transform(orientation),
                icc,
                f32::from(settings.rdo_lambda),
                limits,
            ) {
                Ok(Ok((bytes, reading))) => {
                    let swapped = matches!(
                        orientation,
                        Orientation::Rotate90
                            | Orientation::Rotate270
                            | Orientation::Rotate90FlipH
                            | Orientation::Rotate270FlipH
                    );
                    let (width, height) = if swapped {
                        (header.height, header.width)
                    } else {
                        (header.width, header.height)
                    };
                    return Ok(Read::Transcoded {
                        bytes,
                        width,
                        height,
                        rotated: orientation != Orientation::NoTransforms,
                        reading,
                    });
                }
                Ok(Err(untouched)) => untouched,
                Err(e) => return Err(CompressError::Decode(e)),
            }
        } else {
            decompress
        };

        let decoded = decompress.pixels().map_err(CompressError::Decode)?;
        let bad_size =
            || CompressError::Decode("decoded data does not match the image size".into());
        let (w, h) = (decoded.width, decoded.height);
        let image = match decoded.color_space {
            J_COLOR_SPACE::JCS_GRAYSCALE => DynamicImage::ImageLuma8(
                GrayImage::from_raw(w, h, decoded.data).ok_or_else(bad_size)?,
            ),
            J_COLOR_SPACE::JCS_CMYK => {
                let mut data = decoded.data;
                cmyk_to_rgb_in_place(&mut data);
                DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, data).ok_or_else(bad_size)?)
            }
            _ => DynamicImage::ImageRgb8(
                RgbImage::from_raw(w, h, decoded.data).ok_or_else(bad_size)?,
            ),
        };
        Ok(Read::Pixels {
            image,
            orientation,
            icc: header.icc,
        })
    }
}

/// The lossless transform that makes a picture with this EXIF orientation upright.
fn transform(orientation: Orientation) -> JXFORM_CODE {
    use mozjpeg_sys::*;
    match orientation {
        Orientation::NoTransforms => JXFORM_CODE_JXFORM_NONE,
        Orientation::FlipHorizontal => JXFORM_CODE_JXFORM_FLIP_H,
        Orientation::Rotate180 => JXFORM_CODE_JXFORM_ROT_180,
        Orientation::FlipVertical => JXFORM_CODE_JXFORM_FLIP_V,
        Orientation::Rotate90FlipH => JXFORM_CODE_JXFORM_TRANSPOSE,
        Orientation::Rotate90 => JXFORM_CODE_JXFORM_ROT_90,
        Orientation::Rotate270FlipH => JXFORM_CODE_JXFORM_TRANSVERSE,
        Orientation::Rotate270 => JXFORM_CODE_JXFORM_ROT_270,
    }
}

/// CMYK as Adobe applications store it in JPEG (inverted: 255 is no ink),
/// converted naively — without a CMYK profile there is nothing better — in
/// place: each RGB pixel is written before the CMYK one it came from is
/// passed, and the spare quarter of the buffer is handed back.
fn cmyk_to_rgb_in_place(data: &mut Vec<u8>) {
    let count = data.len() / 4;
    for i in 0..count {
        let k = u16::from(data[4 * i + 3]);
        for c in 0..3 {
            data[3 * i + c] = ((u16::from(data[4 * i + c]) * k + 127) / 255) as u8;
        }
    }
    data.truncate(3 * count);
    data.shrink_to_fit();
}
