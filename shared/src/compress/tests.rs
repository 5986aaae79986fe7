use super::*;
use image::{GenericImageView, Rgba, RgbaImage};
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

pub(crate) const SETTINGS: Settings = Settings {
    quality: 50,
    rdo_lambda: DEFAULT_RDO_LAMBDA,
    max_pixels: 100_000_000,
    max_decode_bytes: 1 << 30,
    max_cpu_time: std::time::Duration::from_secs(60),
};

/// A small deterministic generator (xorshift) for the engine's randomised
/// tests, so that failures reproduce.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

pub(super) fn photo(name: &str) -> Vec<u8> {
    let path = format!("{}/../examples/photos/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Decodes with a decoder independent of the engine: `jpeg-decoder` for
/// JPEG (the `image` crate's JPEG decoder mis-decodes some valid baseline
/// files), the `image` crate for the rest.
pub(super) fn decode(bytes: &[u8]) -> DynamicImage {
    match sniff(bytes) {
        Sniffed::Jpeg => {
            let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
            let data = decoder.decode().expect("JPEG decodes");
            let info = decoder.info().expect("JPEG header");
            let (w, h) = (u32::from(info.width), u32::from(info.height));
            match info.pixel_format {
                jpeg_decoder::PixelFormat::L8 => {
                    DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, data).unwrap())
                }
                jpeg_decoder::PixelFormat::RGB24 => {
                    DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, data).unwrap())
                }
                other => panic!("test inputs are grey or RGB, not {other:?}"),
            }
        }
        _ => image::load_from_memory(bytes).expect("image decodes"),
    }
}

/// `pixels` (`width` × `height`, of `color`) as a baseline JPEG from
/// `jpeg-encoder`, with the given chroma sampling.
pub(super) fn encode_jpeg(
    pixels: &[u8],
    (width, height): (u32, u32),
    color: ColorType,
    sampling: SamplingFactor,
    quality: u8,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = Encoder::new(&mut out, quality);
    enc.set_sampling_factor(sampling);
    enc.encode(pixels, width as u16, height as u16, color)
        .unwrap();
    out
}

/// Encodes with `jpeg-encoder`, which writes baseline 4:2:0 with one scan
/// per component when its Huffman tables are optimised.
fn encode_separate_scans(rgb: &image::RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = Encoder::new(&mut out, quality);
    enc.set_sampling_factor(SamplingFactor::R_4_2_0);
    enc.set_optimized_huffman_tables(true);
    enc.encode(
        rgb.as_raw(),
        rgb.width() as u16,
        rgb.height() as u16,
        ColorType::Rgb,
    )
    .unwrap();
    out
}

pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Peak signal-to-noise ratio of two same-sized images, over RGB.
pub(super) fn psnr(a: &DynamicImage, b: &DynamicImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let (a, b) = (a.to_rgb8(), b.to_rgb8());
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.as_raw().len() as f64;
    10.0 * (255.0 * 255.0 / mse.max(1e-9)).log10()
}

fn has_marker_payload(jpeg: &[u8], needle: &[u8]) -> bool {
    jpeg.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_photo_becomes_a_smaller_jpeg_of_the_same_size() {
    for name in [
        "coffee.jpg",
        "mountain-meadow-progressive.jpg",
        "chelsea-cat.png",
        "paint-brushes.webp",
        "rocket-launch.gif",
    ] {
        let input = photo(name);
        let out = compress(&input, &SETTINGS).unwrap_or_else(|e| panic!("{name}: {e}"));
        let original = decode(&input);
        let result = decode(&out.bytes);
        assert_eq!(sniff(&out.bytes), Sniffed::Jpeg, "{name}");
        assert_eq!((out.width, out.height), original.dimensions(), "{name}");
        assert_eq!(result.dimensions(), original.dimensions(), "{name}");
        assert!(
            out.bytes.len() < input.len(),
            "{name}: {} ≥ {}",
            out.bytes.len(),
            input.len()
        );
        let quality = psnr(&original, &result);
        assert!(quality > 26.0, "{name}: PSNR {quality:.1} dB");
    }
}

#[test]
fn quality_is_honoured() {
    let input = photo("chelsea-cat.png");
    let low = compress(
        &input,
        &Settings {
            quality: 20,
            ..SETTINGS
        },
    )
    .unwrap();
    let mid = compress(&input, &SETTINGS).unwrap();
    let high = compress(
        &input,
        &Settings {
            quality: 90,
            ..SETTINGS
        },
    )
    .unwrap();
    assert!(low.bytes.len() < mid.bytes.len() && mid.bytes.len() < high.bytes.len());
    let original = decode(&input);
    assert!(psnr(&original, &decode(&low.bytes)) < psnr(&original, &decode(&high.bytes)));
}

#[test]
fn exif_orientation_is_applied_and_dimensions_swap() {
    let input = photo("astronaut-portrait-exif6.jpg");
    let stored = decode(&input);
    assert_eq!(
        stored.dimensions(),
        (512, 384),
        "the file stores the pixels sideways"
    );
    let out = compress(&input, &SETTINGS).unwrap();
    assert_eq!((out.width, out.height), (384, 512));
    let result = decode(&out.bytes);
    assert_eq!(result.dimensions(), (384, 512));
    // The output is the stored image turned 90° clockwise, with no tag left to turn it again.
    assert!(psnr(&stored.rotate90(), &result) > 26.0);
    assert!(
        !has_marker_payload(&out.bytes, b"Exif\0\0"),
        "EXIF is dropped"
    );
}

#[test]
fn alpha_is_flattened_onto_white() {
    let base = decode(&photo("coffee.jpg")).to_rgba8();
    let (w, h) = base.dimensions();
    let mut img = RgbaImage::from_fn(w, h, |x, y| {
        let mut p = *base.get_pixel(x, y);
        if x < w / 4 {
            p.0[3] = 0; // fully transparent strip on the left
        }
        p
    });
    img.put_pixel(w - 1, h - 1, Rgba([0, 0, 0, 128]));
    let mut png = Vec::new();
    DynamicImage::ImageRgba8(img)
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .unwrap();
    let out = decode(&compress(&png, &SETTINGS).unwrap().bytes).to_rgb8();
    let p = out.get_pixel(w / 8, h / 2).0;
    assert!(
        p.iter().all(|&c| c >= 250),
        "transparent becomes white, got {p:?}"
    );
}

#[test]
fn metadata_is_dropped_but_the_colour_profile_is_kept() {
    // A photo carrying a colour profile, EXIF and a comment-like APP segment.
    let rgb = decode(&photo("coffee.jpg")).to_rgb8();
    let icc: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let mut input = Vec::new();
    let mut enc = Encoder::new(&mut input, 95);
    enc.add_icc_profile(&icc).unwrap();
    enc.add_app_segment(1, b"Exif\0\0MM\0\x2a\0\0\0\x08\0\0".to_vec())
        .unwrap();
    enc.add_app_segment(13, b"Photoshop 3.0\0secret caption".to_vec())
        .unwrap();
    enc.encode(
        rgb.as_raw(),
        rgb.width() as u16,
        rgb.height() as u16,
        ColorType::Rgb,
    )
    .unwrap();

    let out = compress(&input, &SETTINGS).unwrap();
    assert!(!out.original_kept);
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(&out.bytes));
    decoder.decode().unwrap();
    assert_eq!(decoder.icc_profile(), Some(icc));
    assert!(decoder.exif_data().is_none());
    assert!(!has_marker_payload(&out.bytes, b"secret caption"));
    assert!(
        !has_marker_payload(&out.bytes, b"http://ns.adobe.com/xap"),
        "no XMP"
    );
}

#[test]
fn a_jpeg_that_would_grow_is_kept_as_it_was() {
    // A photo already compressed harder than quality 50 grows when re-encoded.
    let small = compress(
        &photo("chelsea-cat.png"),
        &Settings {
            quality: 10,
            ..SETTINGS
        },
    )
    .unwrap();
    let out = compress(&small.bytes, &SETTINGS).unwrap();
    assert!(out.original_kept);
    assert_eq!(out.bytes, small.bytes);
    assert_eq!((out.width, out.height), (451, 300));
}

#[test]
fn baseline_420_with_components_in_separate_scans_is_read_correctly() {
    // The layout one popular Rust decoder gets wrong.
    let original = decode(&photo("chelsea-cat.png"));
    let input = encode_separate_scans(&original.to_rgb8(), 95);
    let scans = input.windows(2).filter(|w| w == &[0xFF, 0xDA]).count();
    assert!(scans >= 3, "one scan per component ({scans} found)");
    let out = compress(
        &input,
        &Settings {
            quality: 95,
            ..SETTINGS
        },
    )
    .unwrap();
    let quality = psnr(&original, &decode(&out.bytes));
    assert!(quality > 30.0, "PSNR {quality:.1} dB");
}

#[test]
fn truncated_images_fail() {
    for name in [
        "coffee.jpg",
        "mountain-meadow-progressive.jpg",
        "chelsea-cat.png",
        "rocket-launch.gif",
        "paint-brushes.webp",
    ] {
        let input = photo(name);
        let cut = &input[..input.len() * 2 / 3];
        let err = compress(cut, &SETTINGS).expect_err(name);
        assert_eq!(err.code(), ErrorCode::DecodeFailed, "{name}: {err}");
    }
}

#[test]
fn too_many_pixels_are_refused_before_decoding() {
    // A valid PNG header that claims 30000×30000 with almost no data behind it.
    let mut png = Vec::new();
    let img = image::GrayImage::new(1, 1);
    DynamicImage::ImageLuma8(img)
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .unwrap();
    png[16..20].copy_from_slice(&30_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&30_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let err = compress(&png, &SETTINGS).unwrap_err();
    assert!(
        matches!(
            err,
            CompressError::TooManyPixels {
                width: 30_000,
                height: 30_000,
                ..
            }
        ),
        "{err}"
    );

    let err = compress(
        &photo("coffee.jpg"),
        &Settings {
            max_pixels: 1000,
            ..SETTINGS
        },
    )
    .unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooManyPixels);
}

#[test]
fn every_format_is_priced_before_decoding() {
    // No image fits in 1 MiB: each is refused from its header, with the
    // pixel-cap error code.
    let tiny = Settings {
        max_decode_bytes: 1 << 20,
        ..SETTINGS
    };
    for name in [
        "coffee.jpg",
        "mountain-meadow-progressive.jpg",
        "astronaut-portrait-exif6.jpg",
        "chelsea-cat.png",
        "paint-brushes.webp",
        "rocket-launch.gif",
    ] {
        let err = compress(&photo(name), &tiny).unwrap_err();
        assert!(
            matches!(err, CompressError::TooMuchMemory { need, limit: 1_048_576, .. } if need > 1 << 20),
            "{name}: {err}"
        );
        assert_eq!(err.code(), ErrorCode::TooManyPixels, "{name}");
        // …and each fits in the default budget.
        compress(&photo(name), &SETTINGS).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn bodies_that_are_not_images() {
    assert_eq!(
        compress(b"", &SETTINGS).unwrap_err(),
        CompressError::NotAnImage
    );
    assert_eq!(
        compress(b"<html><body>404</body></html>", &SETTINGS).unwrap_err(),
        CompressError::NotAnImage
    );
    assert_eq!(
        compress(b"BM\x36\0\0\0\0\0", &SETTINGS).unwrap_err().code(),
        ErrorCode::UnsupportedFormat
    );
    assert_eq!(
        compress(b"\xFF\xD8\xFF\xE0garbage\xFF\xDA\x00\xFF\xD9", &SETTINGS)
            .unwrap_err()
            .code(),
        ErrorCode::DecodeFailed
    );
}

#[tokio::test]
async fn the_engine_runs_off_the_runtime() {
    let engine = Engine::new(SETTINGS, 2);
    let out = engine
        .compress(bytes::Bytes::from(photo("coffee.jpg")))
        .await
        .unwrap();
    assert_eq!((out.width, out.height), (600, 400));
}

/// libjpeg-turbo's `djpeg` (Debian: libjpeg-turbo-progs), the reference
/// decoder. Panics on any warning, so a file it only half understands fails.
fn djpeg(jpeg: &[u8]) -> DynamicImage {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("djpeg")
        .arg("-pnm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("djpeg runs (install libjpeg-turbo-progs; .ci/run does)");
    let mut stdin = child.stdin.take().unwrap();
    let input = jpeg.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "djpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_pnm(&out.stdout)
}

/// Binary PGM (P5) or PPM (P6) with 8-bit samples, as djpeg writes them.
fn parse_pnm(data: &[u8]) -> DynamicImage {
    let mut fields = Vec::new();
    let mut pos = 0;
    while fields.len() < 4 {
        while data[pos].is_ascii_whitespace() {
            pos += 1;
        }
        let start = pos;
        while !data[pos].is_ascii_whitespace() {
            pos += 1;
        }
        fields.push(std::str::from_utf8(&data[start..pos]).unwrap().to_string());
    }
    let pixels = data[pos + 1..].to_vec();
    let (w, h): (u32, u32) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    assert_eq!(fields[3], "255");
    match fields[0].as_str() {
        "P5" => DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, pixels).unwrap()),
        "P6" => DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, pixels).unwrap()),
        other => panic!("unexpected PNM type {other}"),
    }
}

/// Every layout the engine handles differently: DCT-domain (4:2:0, grey,
/// rotated on whole blocks or not, progressive, separate scans) and pixels
/// (4:4:4, 4:2:2, non-JPEG).
fn jpeg_inputs() -> Vec<(String, Vec<u8>)> {
    let chelsea = decode(&photo("chelsea-cat.png")).to_rgb8();
    let encode = |color: ColorType, data: &[u8], sampling: SamplingFactor, quality: u8| {
        encode_jpeg(data, chelsea.dimensions(), color, sampling, quality)
    };
    let grey = DynamicImage::ImageRgb8(chelsea.clone()).to_luma8();
    vec![
        ("coffee.jpg".into(), photo("coffee.jpg")),
        (
            "mountain-meadow-progressive.jpg".into(),
            photo("mountain-meadow-progressive.jpg"),
        ),
        (
            "astronaut-portrait-exif6.jpg".into(),
            photo("astronaut-portrait-exif6.jpg"),
        ),
        (
            "separate scans 4:2:0".into(),
            encode_separate_scans(&chelsea, 90),
        ),
        (
            "4:4:4".into(),
            encode(
                ColorType::Rgb,
                chelsea.as_raw(),
                SamplingFactor::R_4_4_4,
                90,
            ),
        ),
        (
            "4:2:2".into(),
            encode(
                ColorType::Rgb,
                chelsea.as_raw(),
                SamplingFactor::R_4_2_2,
                90,
            ),
        ),
        (
            "greyscale".into(),
            encode(ColorType::Luma, grey.as_raw(), SamplingFactor::R_4_4_4, 90),
        ),
        (
            "already below quality 50".into(),
            encode(
                ColorType::Rgb,
                chelsea.as_raw(),
                SamplingFactor::R_4_2_0,
                30,
            ),
        ),
    ]
}

/// The stated bound: at quality 50, the output decoded by libjpeg-turbo is
/// within 30 dB PSNR of libjpeg-turbo's decode of the input, made upright.
const MIN_PSNR_VS_REFERENCE: f64 = 30.0;

#[test]
fn outputs_decode_with_libjpeg_turbo_and_match_its_decode_of_the_input() {
    for (name, input) in jpeg_inputs() {
        let out = compress(&input, &SETTINGS).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut reference = djpeg(&input);
        if name.contains("exif6") {
            reference = reference.rotate90();
        }
        let result = djpeg(&out.bytes);
        assert!(
            out.bytes.len() <= input.len(),
            "{name}: {} → {} bytes",
            input.len(),
            out.bytes.len()
        );
        assert_eq!(result.dimensions(), reference.dimensions(), "{name}");
        assert_eq!(result.dimensions(), (out.width, out.height), "{name}");
        let quality = psnr(&reference, &result);
        assert!(
            quality >= MIN_PSNR_VS_REFERENCE,
            "{name}: PSNR {quality:.1} dB"
        );
        eprintln!(
            "{name}: {} → {} bytes, PSNR {quality:.1} dB",
            input.len(),
            out.bytes.len()
        );
    }
    for name in [
        "chelsea-cat.png",
        "dandelions-vignette.png",
        "paint-brushes.webp",
        "rocket-launch.gif",
    ] {
        let input = photo(name);
        let out = compress(&input, &SETTINGS).unwrap();
        assert!(out.bytes.len() <= input.len(), "{name}");
        assert_eq!(
            djpeg(&out.bytes).dimensions(),
            (out.width, out.height),
            "{name}"
        );
    }
}

/// The requantisation's rate–distortion optimisation, against plain
/// rounding (λ = 0) on the same inputs: fewer bytes in total at the
/// default λ, and at least 3 % fewer at λ = 15 (where the benchmark
/// corpus saves 13 %), every output still within the stated PSNR bound of
/// the input's decode and decodable by libjpeg-turbo.
#[test]
fn rate_distortion_optimisation_saves_bytes_within_the_quality_bound() {
    let with = |rdo_lambda: u16, input: &[u8]| {
        compress(
            input,
            &Settings {
                rdo_lambda,
                ..SETTINGS
            },
        )
        .unwrap()
    };
    let (mut plain_total, mut rdo_total, mut smaller_total) = (0, 0, 0);
    for (name, input) in jpeg_inputs() {
        let plain = with(0, &input);
        let rdo = with(DEFAULT_RDO_LAMBDA, &input);
        let smaller = with(15, &input);
        let mut reference = djpeg(&input);
        if name.contains("exif6") {
            reference = reference.rotate90();
        }
        let quality = psnr(&reference, &djpeg(&rdo.bytes));
        assert!(
            quality >= MIN_PSNR_VS_REFERENCE,
            "{name}: PSNR {quality:.1} dB"
        );
        let smaller_quality = psnr(&reference, &djpeg(&smaller.bytes));
        assert!(
            smaller_quality >= MIN_PSNR_VS_REFERENCE,
            "{name}: PSNR {smaller_quality:.1} dB at λ 15"
        );
        eprintln!(
            "{name}: plain {} bytes, RDO {} bytes, PSNR {quality:.1} dB (plain {:.1})",
            plain.bytes.len(),
            rdo.bytes.len(),
            psnr(&reference, &djpeg(&plain.bytes))
        );
        plain_total += plain.bytes.len();
        rdo_total += rdo.bytes.len();
        smaller_total += smaller.bytes.len();
    }
    assert!(
        rdo_total < plain_total,
        "RDO {rdo_total} bytes vs plain {plain_total}"
    );
    assert!(
        smaller_total * 100 < plain_total * 97,
        "RDO at λ 15 {smaller_total} bytes vs plain {plain_total}"
    );
}

#[test]
fn the_engine_decodes_jpeg_like_libjpeg_turbo() {
    // What the pixel path starts from must be libjpeg-turbo's pixels (same
    // IDCT, same upsampling), bit for bit, in every layout.
    for (name, input) in jpeg_inputs() {
        let (decompress, _) =
            libjpeg::Decompress::new(&input, 1 << 28, libjpeg::Limits::NONE).unwrap();
        let pixels = decompress.pixels().unwrap();
        let reference = djpeg(&input);
        assert_eq!(
            (pixels.width, pixels.height),
            reference.dimensions(),
            "{name}"
        );
        assert_eq!(&pixels.data, reference.as_bytes(), "{name}");
    }
}

#[test]
fn huffman_tables_from_our_counts_are_libjpegs_own() {
    // The symbol counts behind the optimal tables are gathered by
    // `huffman::count_scan`, not libjpeg: the files must come out byte for
    // byte as when libjpeg gathers them, in every layout and at sizes
    // that leave padding blocks at the right and bottom edges (193 rows:
    // an odd number of block rows, which the halving paths hand to the
    // encoder as the output's luma, read two block rows at a time).
    let chelsea = decode(&photo("chelsea-cat.png")).to_rgb8();
    let mut inputs = jpeg_inputs();
    for height in [203, 193] {
        let odd = image::imageops::crop_imm(&chelsea, 3, 5, 301, height).to_image();
        for (sampling, label) in [
            (SamplingFactor::R_4_2_0, "4:2:0"),
            (SamplingFactor::R_4_2_2, "4:2:2"),
            (SamplingFactor::R_4_4_4, "4:4:4"),
        ] {
            let out = encode_jpeg(odd.as_raw(), odd.dimensions(), ColorType::Rgb, sampling, 90);
            inputs.push((format!("301×{height} {label}"), out));
        }
        // jpeg-encoder's own choice at quality 90: no subsampling.
        let grey = DynamicImage::ImageRgb8(odd.clone()).to_luma8();
        let out = encode_jpeg(
            grey.as_raw(),
            grey.dimensions(),
            ColorType::Luma,
            SamplingFactor::R_4_4_4,
            90,
        );
        inputs.push((format!("301×{height} greyscale"), out));
    }

    let with = |libjpeg_gathers: bool, rdo_lambda: u16, input: &[u8]| {
        transcode::LIBJPEG_GATHERS.with(|g| g.set(libjpeg_gathers));
        let settings = Settings {
            rdo_lambda,
            ..SETTINGS
        };
        let out = compress(input, &settings);
        transcode::LIBJPEG_GATHERS.with(|g| g.set(false));
        out
    };
    // With the trellis, its counts of the AC symbols it chose are used
    // (the turned input excepted); without it, all are counted afterwards.
    for rdo_lambda in [DEFAULT_RDO_LAMBDA, 0] {
        for (name, input) in &inputs {
            let name = format!("{name}, λ {rdo_lambda}");
            let ours = with(false, rdo_lambda, input).unwrap_or_else(|e| panic!("{name}: {e}"));
            let theirs = with(true, rdo_lambda, input).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                !ours.original_kept,
                "{name}: the output must be re-encoded to compare anything"
            );
            assert!(
                ours.bytes == theirs.bytes,
                "{name}: {} bytes, libjpeg's own tables give {}",
                ours.bytes.len(),
                theirs.bytes.len()
            );
        }
    }
}

/// Where a JPEG's entropy-coded data starts and ends: after the last
/// start-of-scan header, up to the end-of-image marker.
fn last_scan_data(jpeg: &[u8]) -> std::ops::Range<usize> {
    let sos = jpeg
        .windows(2)
        .rposition(|w| w == [0xFF, 0xDA])
        .expect("a scan");
    let header = usize::from(u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]));
    let eoi = jpeg.len() - 2;
    assert_eq!(&jpeg[eoi..], &[0xFF, 0xD9]);
    sos + 2 + header..eoi
}

fn decode_failure(input: &[u8], settings: &Settings) -> String {
    match compress(input, settings) {
        Ok(out) => panic!("converted ({} bytes)", out.bytes.len()),
        Err(e) => {
            assert_eq!(e.code(), ErrorCode::DecodeFailed, "{e}");
            e.to_string()
        }
    }
}

#[test]
fn corrupt_scan_data_fails_instead_of_passing_grey_blocks() {
    let inputs = [
        ("baseline 4:2:0 (DCT path)", photo("coffee.jpg")),
        (
            "progressive (DCT path)",
            photo("mountain-meadow-progressive.jpg"),
        ),
        ("4:4:4 (halving path)", jpeg_inputs().swap_remove(4).1),
    ];
    for (name, input) in inputs {
        let data = last_scan_data(&input);
        // A run of 1 bits is never a Huffman code (JPEG reserves the
        // all-ones code). libjpeg warns "bad Huffman code" where it decodes
        // slowly; its fast decoder reads a zero, falls out of step and ends
        // with data left over ("extraneous bytes") or missing.
        let mut bad_code = input.clone();
        let middle = data.start + data.len() / 2;
        for pair in bad_code[middle..middle + 64].chunks_exact_mut(2) {
            pair.copy_from_slice(&[0xFF, 0x00]);
        }
        let err = decode_failure(&bad_code, &SETTINGS);
        assert!(err.contains("Corrupt JPEG data"), "{name}: {err}");
        eprintln!("{name}, bad code: {err}");

        // The scan's data cut short, the file still closed by an end-of-image
        // marker: libjpeg hits the marker mid-scan and fills the rest grey.
        let mut cut = input[..middle].to_vec();
        cut.extend_from_slice(&[0xFF, 0xD9]);
        let err = decode_failure(&cut, &SETTINGS);
        assert!(
            err.contains("premature end of data segment"),
            "{name}: {err}"
        );
        // The pixel path reads it with the same rules.
        assert!(stages::jpeg_pixels(&cut).is_err(), "{name}");
        assert!(stages::jpeg_pixels(&bad_code).is_err(), "{name}");
        eprintln!("{name}, cut short: {err}");

        // A byte of padding before the end-of-image marker is harmless.
        let mut padded = input[..input.len() - 2].to_vec();
        padded.extend_from_slice(&[0x00, 0xFF, 0xD9]);
        compress(&padded, &SETTINGS).unwrap_or_else(|e| panic!("{name}, padded: {e}"));
    }
}

fn scan(ss: i32, se: i32, ah: i32, al: i32) -> mozjpeg_sys::jpeg_scan_info {
    mozjpeg_sys::jpeg_scan_info {
        comps_in_scan: 1,
        component_index: [0; 4],
        Ss: ss,
        Se: se,
        Ah: ah,
        Al: al,
    }
}

/// A JPEG cut at its scans: the bytes up to the end of the frame header,
/// then each scan with the tables written before it (from the end of the
/// previous scan's data to the end of its own).
fn split_scans(jpeg: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let (mut at, mut chunk_start, mut prefix_end) = (2, 0, 0);
    let mut scans = Vec::new();
    while jpeg[at + 1] != 0xD9 {
        assert_eq!(jpeg[at], 0xFF, "a marker at {at}");
        let marker = jpeg[at + 1];
        let end = at + 2 + usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        if (0xC0..=0xC2).contains(&marker) {
            (prefix_end, chunk_start) = (end, end);
            at = end;
        } else if marker == 0xDA {
            // Entropy-coded data runs to the next marker that is neither a
            // stuffed byte nor a restart marker.
            let mut data_end = end;
            while !(jpeg[data_end] == 0xFF
                && jpeg[data_end + 1] != 0
                && !(0xD0..=0xD7).contains(&jpeg[data_end + 1]))
            {
                data_end += 1;
            }
            scans.push(jpeg[chunk_start..data_end].to_vec());
            (chunk_start, at) = (data_end, data_end);
        } else {
            at = end;
        }
    }
    (jpeg[..prefix_end].to_vec(), scans)
}

/// A valid progressive greyscale JPEG of `count` scans (up to 187): its DC,
/// then each AC coefficient on its own, first to within 4 steps, then
/// refined twice. libjpeg's encoder (mozjpeg's) writes at most 64 scans, so
/// the file is spliced from three encodes of the same picture whose
/// decoder state agrees where they are joined.
pub(super) fn progressive_grey(width: u32, height: u32, count: usize) -> Vec<u8> {
    let grey = textured_grey(width, height);
    let encode = |scans: Vec<mozjpeg_sys::jpeg_scan_info>| {
        assert!(scans.len() <= 64);
        split_scans(
            &libjpeg::encode_grey_with_scans(&grey, width, height, &scans).expect("valid scans"),
        )
    };
    let mut first = vec![scan(0, 0, 0, 0)];
    first.extend((1..=63).map(|k| scan(k, k, 0, 2)));
    let mut second = vec![scan(0, 0, 0, 0), scan(1, 63, 0, 2)];
    second.extend((1..=62).map(|k| scan(k, k, 2, 1)));
    let mut third = vec![scan(0, 0, 0, 0), scan(1, 63, 0, 2), scan(1, 63, 2, 1)];
    third.extend((1..=61).map(|k| scan(k, k, 1, 0)));
    let (mut out, scans) = encode(first);
    let refined = encode(second).1.into_iter().skip(2);
    let finer = encode(third).1.into_iter().skip(3);
    let all: Vec<Vec<u8>> = scans.into_iter().chain(refined).chain(finer).collect();
    assert!(count <= all.len(), "at most {} scans", all.len());
    for chunk in &all[..count] {
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

fn textured_grey(width: u32, height: u32) -> Vec<u8> {
    (0..width * height)
        .map(|i| ((i % width) * 3 + (i / width) * 5 + (u64::from(i) * 7919 % 61) as u32) as u8)
        .collect()
}

#[test]
fn a_jpeg_of_too_many_scans_fails_at_once() {
    let (w, h) = (64, 48);
    // The splice decodes like one file, as djpeg sees it too.
    let whole = progressive_grey(w, h, 187);
    assert_eq!(djpeg(&whole).dimensions(), (w, h));

    let at_limit = progressive_grey(w, h, libjpeg::MAX_SCANS as usize);
    let out = compress(&at_limit, &SETTINGS).expect("100 scans are allowed");
    assert_eq!((out.width, out.height), (w, h));
    let over = progressive_grey(w, h, libjpeg::MAX_SCANS as usize + 1);
    let err = decode_failure(&over, &SETTINGS);
    assert!(err.contains("more than 100 scans"), "{err}");
    assert!(stages::jpeg_pixels(&over).is_err(), "the pixel path too");
    let err = decode_failure(&whole, &SETTINGS);
    assert!(err.contains("more than 100 scans"), "{err}");

    // A scan repeated a thousand times (a cheap way to make a file of
    // thousands of scans): an inconsistent progression, refused at the
    // first repeat.
    let first_pass = progressive_grey(w, h, 64);
    let (prefix, scans) = split_scans(&first_pass);
    let mut repeated = prefix;
    for chunk in scans.iter().chain(std::iter::repeat_n(&scans[63], 1000)) {
        repeated.extend_from_slice(chunk);
    }
    repeated.extend_from_slice(&[0xFF, 0xD9]);
    let started = Instant::now();
    let err = decode_failure(&repeated, &SETTINGS);
    assert!(err.contains("Inconsistent progression"), "{err}");
    eprintln!(
        "{} bytes, 1,064 scans: {err} in {:?}",
        repeated.len(),
        started.elapsed()
    );
}

#[test]
fn an_image_past_its_cpu_deadline_fails() {
    // 100 scans of a 1,024² picture: well over a millisecond of decoding.
    let grey = textured_grey(1024, 1024);
    let slow = progressive_grey(1024, 1024, 100);
    let tight = Settings {
        max_cpu_time: std::time::Duration::from_millis(1),
        ..SETTINGS
    };
    let err = decode_failure(&slow, &tight);
    assert!(err.contains("took more than 1ms of CPU time"), "{err}");
    compress(&slow, &SETTINGS).expect("converts with the default limit");

    // A streamed PNG stops too, between rows.
    let mut png = Vec::new();
    DynamicImage::ImageLuma8(image::GrayImage::from_raw(1024, 1024, grey).unwrap())
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .unwrap();
    let err = decode_failure(&png, &tight);
    assert!(err.contains("of CPU time"), "{err}");
}

#[test]
fn a_jpeg_missing_a_component_fails() {
    // One scan per component, the last (Cr) dropped: libjpeg would decode
    // it with flat chroma and no warning. (Found by the `compress` fuzz
    // target as a null quantisation table.)
    let chelsea = decode(&photo("chelsea-cat.png")).to_rgb8();
    let input = encode_separate_scans(&chelsea, 90);
    let (prefix, scans) = split_scans(&input);
    assert_eq!(scans.len(), 3);
    let mut missing = prefix;
    for chunk in &scans[..2] {
        missing.extend_from_slice(chunk);
    }
    missing.extend_from_slice(&[0xFF, 0xD9]);
    let err = decode_failure(&missing, &SETTINGS);
    assert!(err.contains("component 3 of the JPEG has no data"), "{err}");
    assert!(stages::jpeg_pixels(&missing).is_err(), "the pixel path too");
}
