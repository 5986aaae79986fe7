//! PNG inputs, read with the `png` crate directly rather than through
//! `image`, for two reasons of memory. 16-bit samples are narrowed to 8
//! bits while decoding (`STRIP_16`), so a 16-bit RGBA picture costs 4
//! bytes a pixel, not 8 plus a converted copy. And a picture that needs no
//! turning and is not interlaced — nearly all of them — streams row by row
//! from the PNG decoder through flattening into the JPEG encoder, never
//! held whole: only the encoder's coefficient buffers grow with its size.

use std::io::Cursor;
use std::time::{Duration, Instant};

use image::metadata::Orientation;
use image::{DynamicImage, GrayAlphaImage, GrayImage, RgbImage, RgbaImage};

use super::pixels::{flat_channels, flatten_row};
use super::{CompressError, Read, Settings, libjpeg, memory};

/// Metadata chunks (text, ICC profile, EXIF) the decoder may hold.
const METADATA_LIMIT: usize = 16 << 20;

pub struct Opened<'a> {
    reader: png::Reader<Cursor<&'a [u8]>>,
    width: u32,
    height: u32,
    /// Samples per pixel as decoded: 1 to 4, 8 bits each.
    channels: u8,
    orientation: Orientation,
    icc: Option<Vec<u8>>,
}

/// Reads everything up to the pixel data and checks the pixel cap.
pub fn open<'a>(input: &'a [u8], settings: &Settings) -> Result<Opened<'a>, CompressError> {
    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(input),
        png::Limits {
            bytes: METADATA_LIMIT,
        },
    );
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let reader = decoder.read_info().map_err(decode_error)?;
    let (width, height) = reader.info().size();
    settings.check_pixels(width, height)?;
    let channels = match reader.output_color_type().0 {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        // `EXPAND` turns a palette into RGB or RGBA.
        png::ColorType::Rgba | png::ColorType::Indexed => 4,
    };
    let info = reader.info();
    let orientation = info
        .exif_metadata
        .as_deref()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let icc = info.icc_profile.as_deref().map(<[u8]>::to_vec);
    Ok(Opened {
        reader,
        width,
        height,
        channels,
        orientation,
        icc,
    })
}

impl Opened<'_> {
    pub fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn streams(&self) -> bool {
        !self.reader.info().interlaced && self.orientation == Orientation::NoTransforms
    }

    /// Memory this picture needs, from its header.
    pub fn need(&self, input_len: usize) -> u64 {
        let (w, h) = (self.width, self.height);
        let flat = flat_channels(self.channels);
        let peak = if self.streams() {
            // The decoder's two raw rows (up to 8 bytes a pixel before
            // narrowing) and one band of 16 flattened rows.
            memory::encoder_bytes(w, h, flat) + u64::from(w) * (2 * 8 + 16 * 3)
        } else {
            memory::pixel_path_bytes(
                w,
                h,
                memory::pixels(w, h) * u64::from(self.channels),
                flat,
                self.orientation != Orientation::NoTransforms,
            )
        };
        peak + memory::output_bytes(w, h, input_len) + memory::FIXED_BYTES
    }

    pub fn read(
        mut self,
        settings: &Settings,
        limits: libjpeg::Limits,
    ) -> Result<Read, CompressError> {
        if !self.streams() {
            let (orientation, icc) = (self.orientation, self.icc.take());
            return self.decode_whole().map(|image| Read::Pixels {
                image,
                orientation,
                icc,
            });
        }
        let (channels, flat) = (self.channels, flat_channels(self.channels));
        let icc = super::icc::worth_keeping(self.icc.as_deref());
        let mut decoding = Duration::ZERO;
        let mut failure = None;
        let mut rows = 0u32;
        let encoded = libjpeg::encode_rows(
            self.width,
            self.height,
            flat,
            settings.quality,
            icc,
            limits,
            |out| {
                rows = rows.wrapping_add(1);
                if rows.is_multiple_of(64)
                    && let Some(deadline) = limits.deadline
                    && deadline.passed()
                {
                    let e = CompressError::Decode(deadline.message());
                    let text = e.to_string();
                    failure = Some(e);
                    return Err(text);
                }
                let started = Instant::now();
                let row = match self.reader.next_row() {
                    Ok(Some(row)) => row,
                    other => {
                        let e = match other {
                            Err(e) => decode_error(e),
                            _ => CompressError::Decode(
                                "the PNG data ends before its last row".into(),
                            ),
                        };
                        let text = e.to_string();
                        failure = Some(e);
                        return Err(text);
                    }
                };
                flatten_row(row.data(), channels, out);
                decoding += started.elapsed();
                Ok(())
            },
        );
        match (encoded, failure) {
            (Ok(bytes), _) => Ok(Read::Encoded { bytes, decoding }),
            (Err(_), Some(decode)) => Err(decode),
            (Err(e), None) => Err(super::encoding_failed(e)),
        }
    }

    fn decode_whole(&mut self) -> Result<DynamicImage, CompressError> {
        let size = self
            .reader
            .output_buffer_size()
            .ok_or_else(|| CompressError::Decode("the PNG is too large to decode".into()))?;
        let mut data = vec![0u8; size];
        self.reader.next_frame(&mut data).map_err(decode_error)?;
        let (w, h) = (self.width, self.height);
        let bad_size =
            || CompressError::Decode("decoded data does not match the image size".into());
        Ok(match self.channels {
            1 => DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, data).ok_or_else(bad_size)?),
            2 => DynamicImage::ImageLumaA8(
                GrayAlphaImage::from_raw(w, h, data).ok_or_else(bad_size)?,
            ),
            3 => DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, data).ok_or_else(bad_size)?),
            _ => DynamicImage::ImageRgba8(RgbaImage::from_raw(w, h, data).ok_or_else(bad_size)?),
        })
    }
}

fn decode_error(e: png::DecodingError) -> CompressError {
    match e {
        png::DecodingError::LimitsExceeded => {
            CompressError::Decode("the PNG needs more memory than allowed".into())
        }
        other => CompressError::Decode(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_of(
        width: u32,
        height: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, width, height);
            encoder.set_color(color);
            encoder.set_depth(depth);
            let mut writer = encoder.write_header().expect("PNG header");
            writer.write_image_data(data).expect("PNG data");
        }
        out
    }

    const SETTINGS: Settings = super::super::tests::SETTINGS;

    /// 16-bit samples whose high bytes are an 8-bit picture and whose low
    /// bytes are noise: narrowing must give exactly the 8-bit picture.
    #[test]
    fn sixteen_bit_samples_are_narrowed_to_their_high_byte() {
        let (w, h) = (37u32, 23u32);
        let rgba8: Vec<u8> = (0..w * h * 4).map(|i| (i * 151 % 256) as u8).collect();
        let rgba16: Vec<u8> = rgba8
            .iter()
            .enumerate()
            .flat_map(|(i, &v)| [v, (i * 89 % 256) as u8])
            .collect();
        let eight = png_of(w, h, png::ColorType::Rgba, png::BitDepth::Eight, &rgba8);
        let sixteen = png_of(w, h, png::ColorType::Rgba, png::BitDepth::Sixteen, &rgba16);

        let whole = |bytes: &[u8]| {
            let mut opened = open(bytes, &SETTINGS).expect("opens");
            assert_eq!((opened.channels, opened.dimensions()), (4, (w, h)));
            opened
                .decode_whole()
                .expect("decodes")
                .into_rgba8()
                .into_raw()
        };
        assert_eq!(whole(&sixteen), rgba8);
        assert_eq!(whole(&eight), rgba8);

        // Streamed into the encoder, both give the same JPEG, byte for byte.
        let streamed = |bytes: &[u8]| match open(bytes, &SETTINGS)
            .and_then(|o| o.read(&SETTINGS, libjpeg::Limits::NONE))
        {
            Ok(Read::Encoded { bytes, .. }) => bytes,
            Ok(Read::Pixels { .. }) => panic!("a plain PNG streams"),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(streamed(&sixteen), streamed(&eight));
    }

    #[test]
    fn a_16_bit_rgba_picture_costs_what_its_8_bit_form_needs() {
        let data = vec![0u8; 8 * 8 * 8];
        let png = png_of(8, 8, png::ColorType::Rgba, png::BitDepth::Sixteen, &data);
        let opened = open(&png, &SETTINGS).expect("opens");
        assert_eq!(opened.channels, 4, "RGBA, 8 bits a sample");
        // The header of a 10,000² 16-bit RGBA PNG, priced without decoding.
        let mut big = png;
        big[16..20].copy_from_slice(&10_000u32.to_be_bytes());
        big[20..24].copy_from_slice(&10_000u32.to_be_bytes());
        let crc = super::super::tests::crc32(&big[12..29]);
        big[29..33].copy_from_slice(&crc.to_be_bytes());
        let opened = open(&big, &SETTINGS).expect("the header opens");
        let need = opened.need(big.len());
        // Streamed: the encoder's two buffers of 3 bytes a pixel and the
        // output's room, below the 800 MB of its 16-bit samples alone.
        assert!((600_000_000..720_000_000).contains(&need), "{need} bytes");
    }
}
