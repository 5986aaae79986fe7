//! JPEG decoding with `jpeg-decoder`, which decodes every baseline and
//! progressive layout correctly — including baseline 4:2:0 files whose
//! components sit in separate scans, which the `image` crate's current JPEG
//! decoder gets wrong.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, ImageBuffer, Luma, RgbImage};
use jpeg_decoder::{Decoder, PixelFormat};

use super::CompressError;

pub struct DecodedJpeg {
    pub image: DynamicImage,
    pub orientation: Orientation,
    pub icc: Option<Vec<u8>>,
}

/// Reads the header, refuses images over `max_pixels`, then decodes.
pub fn decode(input: &[u8], max_pixels: u64) -> Result<DecodedJpeg, CompressError> {
    let mut decoder = Decoder::new(Cursor::new(input));
    decoder.read_info().map_err(|e| CompressError::Decode(e.to_string()))?;
    let info = decoder.info().ok_or_else(|| CompressError::Decode("no frame header".into()))?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(CompressError::TooManyPixels { width, height, pixels, limit: max_pixels });
    }
    decoder.set_max_decoding_buffer_size(usize::try_from(pixels.saturating_mul(4)).unwrap_or(usize::MAX));
    let data = decoder.decode().map_err(|e| CompressError::Decode(e.to_string()))?;
    let bad_size = || CompressError::Decode("decoded data does not match the image size".into());
    let image = match info.pixel_format {
        PixelFormat::L8 => DynamicImage::ImageLuma8(GrayImage::from_raw(width, height, data).ok_or_else(bad_size)?),
        PixelFormat::L16 => {
            let samples = data.chunks_exact(2).map(|c| u16::from_ne_bytes([c[0], c[1]])).collect();
            DynamicImage::ImageLuma16(ImageBuffer::<Luma<u16>, _>::from_raw(width, height, samples).ok_or_else(bad_size)?)
        }
        PixelFormat::RGB24 => DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, data).ok_or_else(bad_size)?),
        PixelFormat::CMYK32 => DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, cmyk_to_rgb(&data)).ok_or_else(bad_size)?),
    };
    let orientation = decoder
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    Ok(DecodedJpeg { image, orientation, icc: decoder.icc_profile() })
}

/// The decoder hands out Adobe-style inverted CMYK; this is the usual
/// naive conversion (without a CMYK profile there is nothing better).
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let k = 255 - u16::from(px[3]);
        for &c in &px[..3] {
            rgb.push((((255 - u16::from(c)) * k) / 255) as u8);
        }
    }
    rgb
}
