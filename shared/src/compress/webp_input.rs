//! WebP inputs, decoded by libwebp, the format's reference decoder (with
//! its SSE2 and NEON code). libwebp's demuxer reads the container first:
//! the canvas size, checked against the pixel cap before anything is
//! decoded, the EXIF orientation and the colour profile.
//!
//! A lossy picture without alpha that needs no turning — what photographs
//! saved as WebP nearly all are — never becomes RGB: VP8 stores YCbCr 4:2:0,
//! the layout the JPEG is written in, so libwebp's planes go to the encoder
//! as they are, moved from the studio range VP8 uses to JPEG's full range.
//! That skips libwebp's chroma upsampling and colour conversion and
//! libjpeg's colour conversion and downsampling, and the output's chroma is
//! the source's own rather than a box-filtered copy of its upsampled form.
//! Everything else — alpha, lossless, animations (their first frame, as
//! libwebp's animation decoder composes it on the canvas), pictures to be
//! turned — is decoded to RGB or RGBA and takes the pixel path.

use std::ffi::c_int;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::time::Instant;

use image::metadata::Orientation;
use image::{DynamicImage, RgbImage, RgbaImage};
use libwebp_sys as webp;

use super::libjpeg::{self, Ycbcr420};
use super::{CompressError, Read, Settings, icc, memory, pixels::flat_channels};

pub struct Opened<'a> {
    input: &'a [u8],
    width: u32,
    height: u32,
    alpha: bool,
    animated: bool,
    /// A VP8 (lossy) bitstream, not VP8L.
    lossy: bool,
    orientation: Orientation,
    icc: Option<Vec<u8>>,
}

/// Reads the container and checks the pixel cap; decodes nothing.
pub fn open<'a>(input: &'a [u8], settings: &Settings) -> Result<Opened<'a>, CompressError> {
    let demuxer = Demuxer::new(input).ok_or_else(|| {
        CompressError::Decode("the WebP container is malformed or truncated".into())
    })?;
    let (width, height) = (
        demuxer.get(webp::WebPFormatFeature::WEBP_FF_CANVAS_WIDTH),
        demuxer.get(webp::WebPFormatFeature::WEBP_FF_CANVAS_HEIGHT),
    );
    settings.check_pixels(width, height)?;
    let flags = demuxer.get(webp::WebPFormatFeature::WEBP_FF_FORMAT_FLAGS);
    let has = |flag: webp::WebPFeatureFlags| flags & flag as u32 != 0;
    // SAFETY: all-zero is a valid struct for libwebp to fill.
    let mut features: webp::WebPBitstreamFeatures = unsafe { std::mem::zeroed() };
    // SAFETY: reads the input's headers only, within its length.
    let status = unsafe { webp::WebPGetFeatures(input.as_ptr(), input.len(), &mut features) };
    if status != webp::VP8StatusCode::VP8_STATUS_OK {
        return Err(status_error(status));
    }
    let orientation = demuxer
        .chunk(b"EXIF")
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    Ok(Opened {
        input,
        width,
        height,
        alpha: has(webp::WebPFeatureFlags::ALPHA_FLAG),
        animated: has(webp::WebPFeatureFlags::ANIMATION_FLAG),
        // `format`: 1 lossy, 2 lossless, 0 mixed (animations).
        lossy: features.format == 1,
        orientation,
        icc: demuxer.chunk(b"ICCP").map(<[u8]>::to_vec),
    })
}

impl Opened<'_> {
    pub fn dimensions(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Samples per pixel as decoded: RGB, or RGBA where there is alpha
    /// (every animation: its canvas may be transparent between frames).
    fn channels(&self) -> u8 {
        if self.alpha || self.animated { 4 } else { 3 }
    }

    /// Whether the picture goes to the encoder as YCbCr planes.
    fn as_planes(&self) -> bool {
        self.lossy && !self.alpha && !self.animated && self.orientation == Orientation::NoTransforms
    }

    /// Memory this picture needs, from its container.
    pub fn need(&self, input_len: usize) -> u64 {
        let (w, h) = (self.width, self.height);
        let tail = memory::output_bytes(w, h, input_len) + memory::FIXED_BYTES;
        if self.as_planes() {
            // The planes and the encoder's buffers; libwebp's own rows
            // (about 40 samples a column) and per-macroblock state.
            return Ycbcr420::bytes(w, h)
                + memory::encoder_bytes(w, h, 3)
                + u64::from(w) * 64
                + tail;
        }
        let pixels = memory::pixels(w, h);
        let output = pixels * u64::from(self.channels());
        // Beside the output, a lossless bitstream is decoded into 4 bytes a
        // pixel of its own, a lossy one's alpha plane takes 1; an animation
        // decoder holds two canvases of 4 (the frame and the one before)
        // until the first frame is copied out, and decodes the frame
        // (lossless: 4 more) meanwhile.
        let decoded = if self.animated {
            output + pixels * 12
        } else {
            output + pixels * 4
        };
        memory::pixel_path_bytes(
            w,
            h,
            decoded,
            flat_channels(self.channels()),
            self.orientation != Orientation::NoTransforms,
        ) + tail
    }

    /// The JPEG, or the picture in stored orientation (RGB, or RGBA with
    /// alpha) for the pixel path.
    pub fn read(self, settings: &Settings, limits: libjpeg::Limits) -> Result<Read, CompressError> {
        if !self.as_planes() {
            let image = if self.animated {
                self.first_frame()?
            } else {
                self.still()?
            };
            return Ok(Read::Pixels {
                image,
                orientation: self.orientation,
                icc: self.icc,
            });
        }
        let started = Instant::now();
        let picture = self.planes()?;
        let decoding = started.elapsed();
        let icc = icc::worth_keeping(self.icc.as_deref());
        let bytes = libjpeg::encode_ycbcr_420(&picture, settings.quality, icc, limits)
            .map_err(super::encoding_failed)?;
        Ok(Read::Encoded { bytes, decoding })
    }

    /// A lossy bitstream's planes, as JPEG takes them.
    fn planes(&self) -> Result<Ycbcr420, CompressError> {
        let mut picture = Ycbcr420::new(self.width, self.height);
        let [y, u, v] = &mut picture.planes;
        let stride = |plane: &libjpeg::Plane| {
            c_int::try_from(plane.stride).map_err(|_| too_wide(self.width))
        };
        let planes = webp::WebPYUVABuffer {
            y: y.samples.as_mut_ptr(),
            u: u.samples.as_mut_ptr(),
            v: v.samples.as_mut_ptr(),
            a: std::ptr::null_mut(),
            y_stride: stride(y)?,
            u_stride: stride(u)?,
            v_stride: stride(v)?,
            a_stride: 0,
            y_size: y.samples.len(),
            u_size: u.samples.len(),
            v_size: v.samples.len(),
            a_size: 0,
        };
        // SAFETY: the three planes are ours, of the sizes and strides given,
        // and live through the call; libwebp writes the picture's rows and
        // columns only (the planes' padding is ours).
        unsafe {
            self.decode_into(|output| {
                output.colorspace = webp::WEBP_CSP_MODE::MODE_YUV;
                output.u.YUVA = planes;
            })?;
        }
        let [y, u, v] = &mut picture.planes;
        to_full_range(&mut y.samples, Range::Luma);
        to_full_range(&mut u.samples, Range::Chroma);
        to_full_range(&mut v.samples, Range::Chroma);
        picture.pad_edges();
        Ok(picture)
    }

    /// libwebp's decoder, on this thread, into memory of ours that `output`
    /// describes (its colour space and buffers).
    ///
    /// # Safety
    /// The buffers `output` names are valid for writes of the sizes it
    /// gives, for the whole call. libwebp checks those sizes and strides
    /// against the bitstream's dimensions before it writes (`CheckDecBuffer`).
    unsafe fn decode_into(
        &self,
        output: impl FnOnce(&mut webp::WebPDecBuffer),
    ) -> Result<(), CompressError> {
        let mut config = webp::WebPDecoderConfig::new()
            .map_err(|()| CompressError::Decode("libwebp refused its own version".into()))?;
        output(&mut config.output);
        config.output.is_external_memory = 1;
        // SAFETY: `input` is read-only and outlives the call; the output
        // buffers are the caller's promise; `config` was initialised by
        // libwebp for this version of its ABI.
        let status =
            unsafe { webp::WebPDecode(self.input.as_ptr(), self.input.len(), &mut config) };
        // SAFETY: `config.output` was set up by `WebPDecode`; with external
        // memory this frees nothing of ours, only what libwebp kept.
        unsafe { webp::WebPFreeDecBuffer(&mut config.output) };
        if status != webp::VP8StatusCode::VP8_STATUS_OK {
            return Err(status_error(status));
        }
        let decoded = (config.input.width, config.input.height);
        if decoded != (self.width as c_int, self.height as c_int) {
            return Err(CompressError::Decode(format!(
                "the WebP bitstream is {}×{}, its container says {}×{}",
                decoded.0, decoded.1, self.width, self.height
            )));
        }
        Ok(())
    }

    fn still(&self) -> Result<DynamicImage, CompressError> {
        let channels = usize::from(self.channels());
        let (width, height) = (self.width as usize, self.height as usize);
        let stride = width * channels;
        let mut pixels = vec![0u8; stride * height];
        let buffer = webp::WebPRGBABuffer {
            rgba: pixels.as_mut_ptr(),
            // At most 16,383 pixels of 4 bytes: the format's widest row.
            stride: c_int::try_from(stride).map_err(|_| too_wide(self.width))?,
            size: pixels.len(),
        };
        // SAFETY: `pixels` is ours, `stride × height` bytes, and lives
        // through the call.
        unsafe {
            self.decode_into(|output| {
                output.colorspace = if channels == 4 {
                    webp::WEBP_CSP_MODE::MODE_RGBA
                } else {
                    webp::WEBP_CSP_MODE::MODE_RGB
                };
                output.u.RGBA = buffer;
            })?;
        }
        image_from(pixels, self.width, self.height, channels)
    }

    fn first_frame(&self) -> Result<DynamicImage, CompressError> {
        let failed = || CompressError::Decode("the WebP animation's first frame is corrupt".into());
        let mut decoder = AnimationDecoder::new(self.input).ok_or_else(failed)?;
        let canvas = decoder.first_frame().ok_or_else(failed)?;
        let len = self.width as usize * self.height as usize * 4;
        if canvas.len() != len {
            return Err(failed());
        }
        image_from(canvas.to_vec(), self.width, self.height, 4)
    }
}

fn image_from(
    pixels: Vec<u8>,
    width: u32,
    height: u32,
    channels: usize,
) -> Result<DynamicImage, CompressError> {
    if channels == 4 {
        RgbaImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgba8)
    } else {
        RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8)
    }
    .ok_or_else(|| CompressError::Decode("decoded data does not match the image size".into()))
}

#[derive(Clone, Copy)]
enum Range {
    Luma,
    Chroma,
}

/// VP8 stores BT.601 YCbCr in studio range (luma 16–235, chroma 16–240
/// about 128), JPEG (JFIF) in full range, with the same matrix otherwise:
/// one affine map per plane makes a JPEG decoder's colours those of
/// libwebp's own YUV-to-RGB conversion. The factors are libwebp's, in 14-bit
/// fixed point: 19077 (1.164, luma), and chroma 1.596 / 1.402 (Cr) =
/// 2.018 / 1.772 (Cb) = 1.1384, 18651. Samples out of range are clamped, as
/// libwebp clamps the RGB it computes.
fn to_full_range(samples: &mut [u8], range: Range) {
    let (offset, factor, centre) = match range {
        Range::Luma => (16, 19077, 0),
        Range::Chroma => (128, 18651, 128),
    };
    for s in samples {
        let v = ((i32::from(*s) - offset) * factor + (1 << 13)) >> 14;
        *s = (v + centre).clamp(0, 255) as u8;
    }
}

fn too_wide(width: u32) -> CompressError {
    CompressError::Decode(format!("a WebP picture {width} pixels wide cannot exist"))
}

fn status_error(status: webp::VP8StatusCode) -> CompressError {
    use webp::VP8StatusCode as S;
    CompressError::Decode(
        match status {
            S::VP8_STATUS_NOT_ENOUGH_DATA | S::VP8_STATUS_SUSPENDED => "the WebP data is truncated",
            S::VP8_STATUS_UNSUPPORTED_FEATURE => {
                "the WebP file uses a feature libwebp does not decode"
            }
            S::VP8_STATUS_OUT_OF_MEMORY => "libwebp ran out of memory decoding the WebP",
            _ => "the WebP data is corrupt",
        }
        .into(),
    )
}

/// libwebp's demuxer over an input it borrows (its chunks point into it).
struct Demuxer<'a> {
    raw: NonNull<webp::WebPDemuxer>,
    input: PhantomData<&'a [u8]>,
}

impl<'a> Demuxer<'a> {
    /// `None` for anything but a complete, well-formed WebP file.
    fn new(input: &'a [u8]) -> Option<Self> {
        let data = webp::WebPData {
            bytes: input.as_ptr(),
            size: input.len(),
        };
        // SAFETY: `data` describes `input`, which the demuxer keeps pointers
        // into and which outlives it (`'a`); `data` itself is read during
        // the call only. Partial files are refused (`allow_partial` 0).
        let raw = unsafe {
            webp::WebPDemuxInternal(
                &data,
                0,
                std::ptr::null_mut(),
                webp::WEBP_DEMUX_ABI_VERSION as c_int,
            )
        };
        NonNull::new(raw).map(|raw| Self {
            raw,
            input: PhantomData,
        })
    }

    fn get(&self, feature: webp::WebPFormatFeature) -> u32 {
        // SAFETY: `raw` is a live demuxer.
        unsafe { webp::WebPDemuxGetI(self.raw.as_ptr(), feature) }
    }

    /// The first chunk named `fourcc`, if any.
    fn chunk(&self, fourcc: &[u8; 4]) -> Option<&'a [u8]> {
        let mut fourcc_z = [0u8; 5];
        fourcc_z[..4].copy_from_slice(fourcc);
        // SAFETY: all-zero is the iterator's state before `GetChunk`.
        let mut iter: webp::WebPChunkIterator = unsafe { std::mem::zeroed() };
        // SAFETY: `raw` is a live demuxer and `fourcc_z` a NUL-terminated
        // four-character code; the iterator is released below.
        let found = unsafe {
            webp::WebPDemuxGetChunk(self.raw.as_ptr(), fourcc_z.as_ptr().cast(), 1, &mut iter)
        } != 0;
        let chunk = found.then(|| {
            // SAFETY: a found chunk's payload lies inside the input the
            // demuxer was made over, which lives for `'a`.
            unsafe { std::slice::from_raw_parts(iter.chunk.bytes, iter.chunk.size) }
        });
        // SAFETY: `iter` came from `WebPDemuxGetChunk`; releasing it frees
        // nothing the slice points at.
        unsafe { webp::WebPDemuxReleaseChunkIterator(&mut iter) };
        chunk
    }
}

impl Drop for Demuxer<'_> {
    fn drop(&mut self) {
        // SAFETY: made by `WebPDemuxInternal`, deleted once.
        unsafe { webp::WebPDemuxDelete(self.raw.as_ptr()) };
    }
}

/// libwebp's animation decoder, RGBA, on the calling thread.
struct AnimationDecoder<'a> {
    raw: NonNull<webp::WebPAnimDecoder>,
    input: PhantomData<&'a [u8]>,
}

impl<'a> AnimationDecoder<'a> {
    fn new(input: &'a [u8]) -> Option<Self> {
        // SAFETY: all-zero is a valid options struct, which `Init` fills.
        let mut options: webp::WebPAnimDecoderOptions = unsafe { std::mem::zeroed() };
        // SAFETY: `options` is a valid struct to fill.
        if unsafe { webp::WebPAnimDecoderOptionsInit(&mut options) } == 0 {
            return None;
        }
        options.color_mode = webp::WEBP_CSP_MODE::MODE_RGBA;
        options.use_threads = 0;
        let data = webp::WebPData {
            bytes: input.as_ptr(),
            size: input.len(),
        };
        // SAFETY: as `Demuxer::new`: the decoder keeps pointers into
        // `input`, which outlives it.
        let raw = unsafe { webp::WebPAnimDecoderNew(&data, &options) };
        NonNull::new(raw).map(|raw| Self {
            raw,
            input: PhantomData,
        })
    }

    /// The canvas after the first frame, `width × height × 4` bytes, which
    /// the decoder owns (and overwrites at its next frame: hence `&mut`).
    fn first_frame(&mut self) -> Option<&[u8]> {
        // SAFETY: all-zero is a valid info struct to fill.
        let mut info: webp::WebPAnimInfo = unsafe { std::mem::zeroed() };
        let mut canvas: *mut u8 = std::ptr::null_mut();
        let mut timestamp: c_int = 0;
        // SAFETY: `raw` is a live decoder; the out-parameters are valid.
        let ok = unsafe {
            webp::WebPAnimDecoderGetInfo(self.raw.as_ptr(), &mut info) != 0
                && webp::WebPAnimDecoderGetNext(self.raw.as_ptr(), &mut canvas, &mut timestamp) != 0
        };
        if !ok || canvas.is_null() {
            return None;
        }
        let len = info.canvas_width as usize * info.canvas_height as usize * 4;
        // SAFETY: after a successful `GetNext` the canvas is `width ×
        // height` RGBA pixels owned by the decoder, valid until its next
        // call or deletion, which the borrow of `self` rules out.
        Some(unsafe { std::slice::from_raw_parts(canvas, len) })
    }
}

impl Drop for AnimationDecoder<'_> {
    fn drop(&mut self) {
        // SAFETY: made by `WebPAnimDecoderNew`, deleted once.
        unsafe { webp::WebPAnimDecoderDelete(self.raw.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::c_int;

    use image::{GenericImageView, RgbImage, RgbaImage};
    use image_webp::{ColorType, WebPEncoder};
    use libwebp_sys as webp;

    use super::super::tests::{SETTINGS, decode, photo, psnr};
    use super::super::{CompressError, Sniffed, compress, libjpeg, sniff};
    use crate::domain::ErrorCode;

    /// A photograph's top-left corner, `width × height`, as RGBA with a
    /// fully transparent strip down the left quarter and a half-transparent
    /// band across the bottom.
    fn photo_with_alpha(width: u32, height: u32) -> RgbaImage {
        let base = decode(&photo("coffee.jpg")).to_rgba8();
        RgbaImage::from_fn(width, height, |x, y| {
            let mut p = *base.get_pixel(x, y);
            p.0[3] = if x < width / 4 {
                0
            } else if y >= height * 3 / 4 {
                128
            } else {
                255
            };
            p
        })
    }

    fn opaque(rgba: &RgbaImage) -> RgbImage {
        image::DynamicImage::ImageRgba8(RgbaImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            let mut p = *rgba.get_pixel(x, y);
            p.0[3] = 255;
            p
        }))
        .to_rgb8()
    }

    /// Lossy WebP from libwebp's encoder at quality 90; alpha, if any, in
    /// an `ALPH` chunk (a `VP8X` file).
    fn libwebp_lossy(rgba: &RgbaImage, keep_alpha: bool) -> Vec<u8> {
        let (w, h) = (rgba.width() as c_int, rgba.height() as c_int);
        let mut out: *mut u8 = std::ptr::null_mut();
        // SAFETY: the pixels are `w × h × 4` bytes at a stride of `4w`, or
        // `3w` for the RGB copy; `out` is libwebp's, copied and freed below.
        unsafe {
            let len = if keep_alpha {
                webp::WebPEncodeRGBA(rgba.as_raw().as_ptr(), w, h, 4 * w, 90.0, &mut out)
            } else {
                let rgb = opaque(rgba);
                webp::WebPEncodeRGB(rgb.as_raw().as_ptr(), w, h, 3 * w, 90.0, &mut out)
            };
            assert!(len > 0 && !out.is_null(), "libwebp encodes");
            let bytes = std::slice::from_raw_parts(out, len).to_vec();
            webp::WebPFree(out.cast());
            bytes
        }
    }

    /// Lossless WebP from `image-webp`'s encoder (independent of libwebp),
    /// with the given EXIF and ICC chunks.
    fn lossless(rgba: &RgbaImage, exif: Option<&[u8]>, icc: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = WebPEncoder::new(&mut out);
        if let Some(exif) = exif {
            encoder.set_exif_metadata(exif.to_vec());
        }
        if let Some(icc) = icc {
            encoder.set_icc_profile(icc.to_vec());
        }
        encoder
            .encode(rgba.as_raw(), rgba.width(), rgba.height(), ColorType::Rgba8)
            .expect("image-webp encodes");
        out
    }

    /// An animation of the given frames, 100 ms each, lossless, from
    /// libwebp's animation encoder.
    fn animation(frames: &[RgbaImage]) -> Vec<u8> {
        let (w, h) = (frames[0].width() as c_int, frames[0].height() as c_int);
        // SAFETY: each struct is initialised by libwebp before use; every
        // picture imports `w × h × 4` bytes at a stride of `4w` and is freed
        // after being added; the assembled data is copied, then freed.
        unsafe {
            let mut options: webp::WebPAnimEncoderOptions = std::mem::zeroed();
            assert_ne!(
                webp::WebPAnimEncoderOptionsInitInternal(
                    &mut options,
                    webp::WEBP_MUX_ABI_VERSION as c_int
                ),
                0
            );
            let encoder = webp::WebPAnimEncoderNewInternal(
                w,
                h,
                &options,
                webp::WEBP_MUX_ABI_VERSION as c_int,
            );
            assert!(!encoder.is_null());
            let mut config = webp::WebPConfig::new().expect("config");
            // Lossless, transparent pixels' colour kept (`exact`).
            (config.lossless, config.exact) = (1, 1);
            let mut timestamp = 0;
            for frame in frames {
                let mut picture = webp::WebPPicture::new().expect("picture");
                (picture.width, picture.height, picture.use_argb) = (w, h, 1);
                assert_ne!(
                    webp::WebPPictureImportRGBA(&mut picture, frame.as_raw().as_ptr(), 4 * w),
                    0
                );
                assert_ne!(
                    webp::WebPAnimEncoderAdd(encoder, &mut picture, timestamp, &config),
                    0
                );
                webp::WebPPictureFree(&mut picture);
                timestamp += 100;
            }
            webp::WebPAnimEncoderAdd(encoder, std::ptr::null_mut(), timestamp, std::ptr::null());
            let mut data = webp::WebPData::default();
            assert_ne!(webp::WebPAnimEncoderAssemble(encoder, &mut data), 0);
            let bytes = std::slice::from_raw_parts(data.bytes, data.size).to_vec();
            webp::WebPDataClear(&mut data);
            webp::WebPAnimEncoderDelete(encoder);
            bytes
        }
    }

    /// The picture as the pixel path gets it: RGB, or RGBA with alpha.
    fn read(input: &[u8]) -> image::DynamicImage {
        super::open(input, &SETTINGS)
            .and_then(|opened| {
                if opened.animated {
                    opened.first_frame()
                } else {
                    opened.still()
                }
            })
            .unwrap_or_else(|e| panic!("libwebp decodes: {e}"))
    }

    #[test]
    fn libwebp_decodes_what_image_webp_decodes() {
        // Lossy (the bundled photo, and libwebp's own with alpha) and
        // lossless (image-webp's): both decoders give the same samples,
        // RGBA where there is alpha.
        let with_alpha = photo_with_alpha(240, 160);
        for (name, input) in [
            ("paint-brushes.webp", photo("paint-brushes.webp")),
            ("lossy with alpha", libwebp_lossy(&with_alpha, true)),
            ("lossy", libwebp_lossy(&with_alpha, false)),
            ("lossless with alpha", lossless(&with_alpha, None, None)),
        ] {
            let ours = read(&input);
            let theirs = image::load_from_memory(&input).expect("image-webp decodes");
            assert_eq!(ours.color(), theirs.color(), "{name}");
            assert_eq!(ours.dimensions(), theirs.dimensions(), "{name}");
            assert!(
                ours.as_bytes() == theirs.as_bytes(),
                "{name}: samples differ"
            );
        }
        assert!(
            read(&lossless(&with_alpha, None, None)).as_bytes() == with_alpha.as_raw().as_slice()
        );
    }

    #[test]
    fn a_lossy_picture_goes_to_the_encoder_as_planes_at_the_pixel_paths_quality() {
        // The bundled photo, and an odd size (padding in both planes).
        let odd = image::DynamicImage::ImageRgb8(opaque(&photo_with_alpha(241, 163))).to_rgba8();
        for (name, input) in [
            ("paint-brushes.webp", photo("paint-brushes.webp")),
            ("241×163", libwebp_lossy(&odd, false)),
        ] {
            assert!(
                super::open(&input, &SETTINGS).unwrap().as_planes(),
                "{name}"
            );
            let source = read(&input);
            let (w, h) = source.dimensions();
            let planes = decode(&compress(&input, &SETTINGS).unwrap().bytes);
            assert_eq!(planes.dimensions(), (w, h), "{name}");
            // The pixel path on libwebp's RGB, for comparison.
            let pixels =
                libjpeg::encode(source.as_bytes(), w, h, 3, 50, None, libjpeg::Limits::NONE)
                    .unwrap();
            let (by_planes, by_pixels) = (psnr(&source, &planes), psnr(&source, &decode(&pixels)));
            eprintln!("{name}: planes {by_planes:.2} dB, pixels {by_pixels:.2} dB");
            assert!(by_planes > 30.0, "{name}: {by_planes:.2} dB");
            assert!(
                by_planes >= by_pixels - 0.05,
                "{name}: {by_planes:.2} < {by_pixels:.2} dB"
            );
        }
    }

    #[test]
    fn planes_keep_libwebps_colours() {
        // Flat patches of saturated and extreme colours: a JPEG decoder's
        // colours are libwebp's (a missing or wrong range map is off by
        // 10–40 on most of them).
        let colours: [[u8; 3]; 8] = [
            [255, 255, 255],
            [0, 0, 0],
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [255, 255, 0],
            [40, 200, 220],
            [128, 128, 128],
        ];
        let rgba = RgbaImage::from_fn(8 * 32, 32, |x, _| {
            let [r, g, b] = colours[(x / 32) as usize];
            image::Rgba([r, g, b, 255])
        });
        let input = libwebp_lossy(&rgba, false);
        assert!(super::open(&input, &SETTINGS).unwrap().as_planes());
        let source = read(&input).to_rgb8();
        let out = decode(&compress(&input, &SETTINGS).unwrap().bytes).to_rgb8();
        for i in 0..8 {
            let (x, y) = (i * 32 + 16, 16);
            let (ours, libwebps) = (out.get_pixel(x, y).0, source.get_pixel(x, y).0);
            for k in 0..3 {
                assert!(
                    (i32::from(ours[k]) - i32::from(libwebps[k])).abs() <= 4,
                    "patch {i}: {ours:?} against libwebp's {libwebps:?}"
                );
            }
        }
    }

    #[test]
    fn the_range_map_spans_jpegs_range() {
        let mut luma = [0, 16, 125, 235, 255];
        super::to_full_range(&mut luma, super::Range::Luma);
        assert_eq!(luma, [0, 0, 127, 255, 255]);
        let mut chroma = [0, 16, 128, 240, 255];
        super::to_full_range(&mut chroma, super::Range::Chroma);
        assert_eq!(chroma, [0, 1, 128, 255, 255]);
    }

    #[test]
    fn a_webp_with_alpha_is_flattened_onto_white() {
        let source = photo_with_alpha(240, 160);
        for (name, input) in [
            ("lossy", libwebp_lossy(&source, true)),
            ("lossless", lossless(&source, None, None)),
        ] {
            let out = decode(&compress(&input, &SETTINGS).unwrap().bytes).to_rgb8();
            assert_eq!(out.dimensions(), (240, 160), "{name}");
            let clear = out.get_pixel(20, 80).0;
            assert!(
                clear.iter().all(|&c| c >= 250),
                "{name}: transparent → {clear:?}"
            );
            // Half transparent: half way between the photo and white.
            let (p, s) = (out.get_pixel(160, 150).0, source.get_pixel(160, 150).0);
            for k in 0..3 {
                let expected = (i32::from(s[k]) + 255) / 2;
                assert!(
                    (i32::from(p[k]) - expected).abs() < 24,
                    "{name}: {p:?} vs {s:?}"
                );
            }
        }
    }

    /// A big-endian TIFF header with one IFD entry: orientation `value`.
    fn exif_orientation(value: u8) -> Vec<u8> {
        let mut exif = b"MM\0\x2a\0\0\0\x08\0\x01".to_vec();
        exif.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, value, 0, 0]);
        exif.extend_from_slice(&[0, 0, 0, 0]);
        exif
    }

    #[test]
    fn a_webp_is_turned_by_its_exif_orientation() {
        let source = opaque(&photo_with_alpha(240, 160));
        let rgba = image::DynamicImage::ImageRgb8(source.clone()).to_rgba8();
        let input = lossless(&rgba, Some(&exif_orientation(6)), None);
        let out = compress(&input, &SETTINGS).unwrap();
        assert_eq!((out.width, out.height), (160, 240));
        let turned = image::DynamicImage::ImageRgb8(source).rotate90();
        let result = decode(&out.bytes);
        assert_eq!(result.dimensions(), (160, 240));
        assert!(
            psnr(&turned, &result) > 30.0,
            "the output is the stored picture turned 90° clockwise"
        );
    }

    #[test]
    fn a_webp_colour_profile_is_kept() {
        let rgba = photo_with_alpha(64, 48);
        let icc: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let out = compress(&lossless(&rgba, None, Some(&icc)), &SETTINGS).unwrap();
        let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(&out.bytes));
        decoder.decode().unwrap();
        assert_eq!(decoder.icc_profile(), Some(icc));
        assert!(decoder.exif_data().is_none());

        let none = compress(&lossless(&rgba, None, None), &SETTINGS).unwrap();
        let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(&none.bytes));
        decoder.decode().unwrap();
        assert_eq!(decoder.icc_profile(), None);
    }

    /// `simple` (a `RIFF…WEBPVP8 ` file) in the extended container, with
    /// an ICC profile chunk.
    fn with_profile(simple: &[u8], (width, height): (u32, u32), icc: &[u8]) -> Vec<u8> {
        let chunk = |fourcc: &[u8; 4], payload: &[u8]| {
            let mut c = fourcc.to_vec();
            c.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            c.extend_from_slice(payload);
            if payload.len() % 2 == 1 {
                c.push(0);
            }
            c
        };
        let mut vp8x = vec![0x20, 0, 0, 0]; // ICC profile present
        vp8x.extend_from_slice(&(width - 1).to_le_bytes()[..3]);
        vp8x.extend_from_slice(&(height - 1).to_le_bytes()[..3]);
        let mut body = b"WEBP".to_vec();
        body.extend(chunk(b"VP8X", &vp8x));
        body.extend(chunk(b"ICCP", icc));
        body.extend_from_slice(&simple[12..]);
        let mut file = b"RIFF".to_vec();
        file.extend_from_slice(&(body.len() as u32).to_le_bytes());
        file.extend(body);
        file
    }

    #[test]
    fn a_lossy_webp_keeps_its_colour_profile_unless_plain_srgb() {
        // The planes path writes the profile itself.
        let rgba = image::DynamicImage::ImageRgb8(opaque(&photo_with_alpha(64, 48))).to_rgba8();
        let simple = libwebp_lossy(&rgba, false);
        let own: Vec<u8> = (0..3001u32).map(|i| (i % 251) as u8).collect();
        let srgb = crate::compress::icc::tests::plain_srgb();
        for (icc, kept) in [(own.clone(), Some(own)), (srgb, None)] {
            let input = with_profile(&simple, (64, 48), &icc);
            assert!(super::open(&input, &SETTINGS).unwrap().as_planes());
            let out = compress(&input, &SETTINGS).unwrap();
            let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(&out.bytes));
            decoder.decode().unwrap();
            assert_eq!(decoder.icc_profile(), kept);
        }
    }

    #[test]
    fn an_animated_webp_gives_its_first_frame() {
        let first = photo_with_alpha(120, 80);
        let second = RgbaImage::from_pixel(120, 80, image::Rgba([0, 0, 255, 255]));
        let input = animation(&[first.clone(), second]);
        assert_eq!(sniff(&input), Sniffed::WebP);
        // The canvas as libwebp composes it: the frame itself (lossless),
        // transparent where the frame is.
        assert!(read(&input).as_bytes() == first.as_raw().as_slice());
        let out = decode(&compress(&input, &SETTINGS).unwrap().bytes).to_rgb8();
        assert_eq!(out.dimensions(), (120, 80));
        let clear = out.get_pixel(10, 40).0;
        assert!(
            clear.iter().all(|&c| c >= 250),
            "transparent → white, got {clear:?}"
        );
        let (p, s) = (out.get_pixel(80, 30).0, first.get_pixel(80, 30).0);
        assert!(
            (0..3).all(|k| (i32::from(p[k]) - i32::from(s[k])).abs() < 24),
            "the first frame's photo, not the second's blue: {p:?} vs {s:?}"
        );
    }

    #[test]
    fn a_webp_over_the_pixel_cap_is_refused_before_decoding() {
        let settings = super::super::Settings {
            max_pixels: 800 * 629 - 1,
            ..SETTINGS
        };
        let err = compress(&photo("paint-brushes.webp"), &settings).unwrap_err();
        assert!(
            matches!(
                err,
                CompressError::TooManyPixels {
                    width: 800,
                    height: 629,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn corrupt_webps_fail_with_decode_failed_and_never_crash() {
        // Bytes set, flipped, inserted and cut in every kind of file, the
        // container's headers included: each is compressed or refused as
        // undecodable, never a panic or another error.
        let rgba = photo_with_alpha(96, 64);
        let sources = [
            libwebp_lossy(&rgba, true),
            libwebp_lossy(&rgba, false),
            lossless(&rgba, Some(&exif_orientation(3)), Some(&[7u8; 200])),
            animation(&[rgba.clone(), photo_with_alpha(96, 64)]),
        ];
        let mut rng = super::super::tests::Rng(0x5eed_cafe);
        let (mut failed, mut passed) = (0, 0);
        for source in &sources {
            for _ in 0..250 {
                let mut data = source.clone();
                let at = (rng.next() % data.len() as u64) as usize;
                match rng.next() % 4 {
                    0 => data[at] = rng.next() as u8,
                    1 => data[at] ^= 1 << (rng.next() % 8),
                    2 => data.insert(at, rng.next() as u8),
                    _ => data.truncate(at),
                }
                match compress(&data, &SETTINGS) {
                    Ok(out) => {
                        assert_eq!(sniff(&out.bytes), Sniffed::Jpeg);
                        passed += 1;
                    }
                    Err(e) => {
                        assert!(
                            matches!(e.code(), ErrorCode::DecodeFailed | ErrorCode::NotAnImage),
                            "{e}"
                        );
                        failed += 1;
                    }
                }
            }
        }
        // Both outcomes occur: the mutations reach the decoders, not only
        // the container's checks.
        assert!(
            failed > 100 && passed > 100,
            "{failed} failed, {passed} passed"
        );
    }
}
