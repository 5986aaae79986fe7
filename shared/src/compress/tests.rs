use super::*;
use image::{GenericImageView, Rgba, RgbaImage};

const SETTINGS: Settings = Settings { quality: 50, max_pixels: 100_000_000 };

fn photo(name: &str) -> Vec<u8> {
    let path = format!("{}/../examples/photos/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Decodes with the engine's own decoders (the `image` crate's JPEG
/// decoder mis-decodes some valid baseline files).
fn decode(bytes: &[u8]) -> DynamicImage {
    match sniff(bytes) {
        Sniffed::Jpeg => jpeg::decode(bytes, u64::MAX).expect("JPEG decodes").image,
        _ => image::load_from_memory(bytes).expect("image decodes"),
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Peak signal-to-noise ratio of two same-sized images, over RGB.
fn psnr(a: &DynamicImage, b: &DynamicImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let (a, b) = (a.to_rgb8(), b.to_rgb8());
    let mse = a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum::<f64>()
        / a.as_raw().len() as f64;
    10.0 * (255.0 * 255.0 / mse.max(1e-9)).log10()
}

fn has_marker_payload(jpeg: &[u8], needle: &[u8]) -> bool {
    jpeg.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_photo_becomes_a_smaller_jpeg_of_the_same_size() {
    for name in ["coffee.jpg", "mountain-meadow-progressive.jpg", "chelsea-cat.png", "paint-brushes.webp", "rocket-launch.gif"] {
        let input = photo(name);
        let out = compress(&input, &SETTINGS).unwrap_or_else(|e| panic!("{name}: {e}"));
        let original = decode(&input);
        let result = decode(&out.bytes);
        assert_eq!(sniff(&out.bytes), Sniffed::Jpeg, "{name}");
        assert_eq!((out.width, out.height), original.dimensions(), "{name}");
        assert_eq!(result.dimensions(), original.dimensions(), "{name}");
        assert!(out.bytes.len() < input.len(), "{name}: {} ≥ {}", out.bytes.len(), input.len());
        let quality = psnr(&original, &result);
        assert!(quality > 26.0, "{name}: PSNR {quality:.1} dB");
    }
}

#[test]
fn quality_is_honoured() {
    let input = photo("chelsea-cat.png");
    let low = compress(&input, &Settings { quality: 20, ..SETTINGS }).unwrap();
    let mid = compress(&input, &SETTINGS).unwrap();
    let high = compress(&input, &Settings { quality: 90, ..SETTINGS }).unwrap();
    assert!(low.bytes.len() < mid.bytes.len() && mid.bytes.len() < high.bytes.len());
    let original = decode(&input);
    assert!(psnr(&original, &decode(&low.bytes)) < psnr(&original, &decode(&high.bytes)));
}

#[test]
fn exif_orientation_is_applied_and_dimensions_swap() {
    let input = photo("astronaut-portrait-exif6.jpg");
    let stored = decode(&input);
    assert_eq!(stored.dimensions(), (512, 384), "the file stores the pixels sideways");
    let out = compress(&input, &SETTINGS).unwrap();
    assert_eq!((out.width, out.height), (384, 512));
    let result = decode(&out.bytes);
    assert_eq!(result.dimensions(), (384, 512));
    // The output is the stored image turned 90° clockwise, with no tag left to turn it again.
    assert!(psnr(&stored.rotate90(), &result) > 26.0);
    assert!(!has_marker_payload(&out.bytes, b"Exif\0\0"), "EXIF is dropped");
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
    DynamicImage::ImageRgba8(img).write_to(&mut Cursor::new(&mut png), ImageFormat::Png).unwrap();
    let out = decode(&compress(&png, &SETTINGS).unwrap().bytes).to_rgb8();
    let p = out.get_pixel(w / 8, h / 2).0;
    assert!(p.iter().all(|&c| c >= 250), "transparent becomes white, got {p:?}");
}

#[test]
fn metadata_is_dropped_but_the_colour_profile_is_kept() {
    // A photo carrying a colour profile, EXIF and a comment-like APP segment.
    let rgb = decode(&photo("coffee.jpg")).to_rgb8();
    let icc: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let mut input = Vec::new();
    let mut enc = Encoder::new(&mut input, 95);
    enc.add_icc_profile(&icc).unwrap();
    enc.add_app_segment(1, b"Exif\0\0MM\0\x2a\0\0\0\x08\0\0".to_vec()).unwrap();
    enc.add_app_segment(13, b"Photoshop 3.0\0secret caption".to_vec()).unwrap();
    enc.encode(rgb.as_raw(), rgb.width() as u16, rgb.height() as u16, ColorType::Rgb).unwrap();

    let out = compress(&input, &SETTINGS).unwrap();
    assert!(!out.original_kept);
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(&out.bytes));
    decoder.decode().unwrap();
    assert_eq!(decoder.icc_profile(), Some(icc));
    assert!(decoder.exif_data().is_none());
    assert!(!has_marker_payload(&out.bytes, b"secret caption"));
    assert!(!has_marker_payload(&out.bytes, b"http://ns.adobe.com/xap"), "no XMP");
}

#[test]
fn a_jpeg_that_would_grow_is_kept_as_it_was() {
    // A photo already compressed harder than quality 50 grows when re-encoded.
    let small = compress(&photo("chelsea-cat.png"), &Settings { quality: 10, ..SETTINGS }).unwrap();
    let out = compress(&small.bytes, &SETTINGS).unwrap();
    assert!(out.original_kept);
    assert_eq!(out.bytes, small.bytes);
    assert_eq!((out.width, out.height), (451, 300));
}

#[test]
fn our_own_output_decodes_correctly() {
    // Baseline 4:2:0 JPEGs with components in separate scans (what optimised
    // Huffman tables produce here) must decode to the right pixels.
    let input = photo("chelsea-cat.png");
    let original = decode(&input);
    let first = compress(&input, &Settings { quality: 95, ..SETTINGS }).unwrap();
    let scans = first.bytes.windows(2).filter(|w| w == &[0xFF, 0xDA]).count();
    assert!(scans >= 3, "the first pass writes one scan per component ({scans} found)");
    let second = compress(&first.bytes, &Settings { quality: 95, ..SETTINGS }).unwrap();
    let quality = psnr(&original, &decode(&second.bytes));
    assert!(quality > 30.0, "PSNR {quality:.1} dB after a second pass");
}

#[test]
fn truncated_images_fail() {
    for name in ["coffee.jpg", "mountain-meadow-progressive.jpg", "chelsea-cat.png", "rocket-launch.gif", "paint-brushes.webp"] {
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
    DynamicImage::ImageLuma8(img).write_to(&mut Cursor::new(&mut png), ImageFormat::Png).unwrap();
    png[16..20].copy_from_slice(&30_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&30_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let err = compress(&png, &SETTINGS).unwrap_err();
    assert!(matches!(err, CompressError::TooManyPixels { width: 30_000, height: 30_000, .. }), "{err}");

    let err = compress(&photo("coffee.jpg"), &Settings { max_pixels: 1000, ..SETTINGS }).unwrap_err();
    assert_eq!(err.code(), ErrorCode::TooManyPixels);
}

#[test]
fn bodies_that_are_not_images() {
    assert_eq!(compress(b"", &SETTINGS).unwrap_err(), CompressError::NotAnImage);
    assert_eq!(compress(b"<html><body>404</body></html>", &SETTINGS).unwrap_err(), CompressError::NotAnImage);
    assert_eq!(compress(b"BM\x36\0\0\0\0\0", &SETTINGS).unwrap_err().code(), ErrorCode::UnsupportedFormat);
    assert_eq!(compress(b"\xFF\xD8\xFF\xE0garbage\xFF\xDA\x00\xFF\xD9", &SETTINGS).unwrap_err().code(), ErrorCode::DecodeFailed);
}

#[tokio::test]
async fn the_engine_runs_off_the_runtime() {
    let engine = Engine::new(SETTINGS, 2);
    let out = engine.compress(bytes::Bytes::from(photo("coffee.jpg"))).await.unwrap();
    assert_eq!((out.width, out.height), (600, 400));
}
