//! Hostile images, generated here from the example photographs and small
//! encoders: decompression bombs, truncated files, a 2,000-frame GIF, CMYK
//! and progressive JPEGs, 16-bit and palette PNGs, empty and HTML bodies, and
//! an endless body. Each converts or fails as SPEC §3 says — through the
//! library's public entry point, the `imgproc-local compress` CLI and the
//! HTTP service — and peak memory (VmHWM / `ru_maxrss` of a child process)
//! stays bounded.

#[path = "../../../shared/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use common::{ImageServer, csv_of, is_terminal, photos_dir};
use imgproc::compress::{DEFAULT_RDO_LAMBDA, Settings, compress};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

/// What SPEC §3 says must happen to an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Converts { width: u32, height: u32 },
    Fails(&'static str),
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

fn photo(name: &str) -> Vec<u8> {
    std::fs::read(photos_dir().join(name)).expect("example photo")
}

/// A PNG of `width`×`height` 1-bit grey zeros, streamed row by row: a real
/// decompression bomb (a few kilobytes per 100 megapixels), never held in
/// memory whole.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::One);
        encoder.set_compression(png::Compression::Balanced);
        let mut writer = encoder.write_header().expect("PNG header");
        let mut stream = writer.stream_writer().expect("PNG stream");
        let row = vec![0u8; width.div_ceil(8) as usize];
        for _ in 0..height {
            stream.write_all(&row).expect("PNG row");
        }
        stream.finish().expect("PNG end");
    }
    out
}

fn png_of(
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    palette: Option<Vec<u8>>,
    data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        if let Some(p) = palette {
            encoder.set_palette(p);
        }
        let mut writer = encoder.write_header().expect("PNG header");
        writer.write_image_data(data).expect("PNG data");
        writer.finish().expect("PNG end");
    }
    out
}

/// A valid 16×16 JPEG whose frame header then claims `width`×`height`.
fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let mut out = Vec::new();
    let pixels = vec![128u8; 16 * 16 * 3];
    jpeg_encoder::Encoder::new(&mut out, 75)
        .encode(&pixels, 16, 16, jpeg_encoder::ColorType::Rgb)
        .expect("JPEG");
    let sof = out
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline frame header");
    // FFC0, length (2), precision (1), height (2), width (2).
    out[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    out[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    out
}

/// Left half full cyan, right half paper white, as Adobe CMYK.
fn cmyk_jpeg(width: u16, height: u16) -> Vec<u8> {
    let mut cmyk = Vec::with_capacity(width as usize * height as usize * 4);
    for _ in 0..height {
        for x in 0..width {
            cmyk.extend_from_slice(if x < width / 2 {
                &[255, 0, 0, 0]
            } else {
                &[0, 0, 0, 0]
            });
        }
    }
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(&cmyk, width, height, jpeg_encoder::ColorType::Cmyk)
        .expect("CMYK JPEG");
    out
}

fn progressive_jpeg(width: u16, height: u16) -> Vec<u8> {
    let rgb: Vec<u8> = (0..height as u32)
        .flat_map(|y| {
            (0..width as u32).flat_map(move |x| {
                [
                    (x * 255 / width as u32) as u8,
                    (y * 255 / height as u32) as u8,
                    90,
                ]
            })
        })
        .collect();
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, 92);
    encoder.set_progressive(true);
    encoder
        .encode(&rgb, width, height, jpeg_encoder::ColorType::Rgb)
        .expect("progressive JPEG");
    out
}

/// `frames` frames of `size`×`size`: tiny on disk, large if every frame were decoded.
fn many_frame_gif(size: u16, frames: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let palette = [255, 0, 0, 0, 0, 255];
        let mut encoder = gif::Encoder::new(&mut out, size, size, &palette).expect("GIF");
        encoder
            .set_repeat(gif::Repeat::Infinite)
            .expect("GIF repeat");
        for i in 0..frames {
            let indices = vec![(i % 2) as u8; size as usize * size as usize];
            let frame = gif::Frame {
                width: size,
                height: size,
                buffer: std::borrow::Cow::Owned(indices),
                delay: 1,
                ..gif::Frame::default()
            };
            encoder.write_frame(&frame).expect("GIF frame");
        }
    }
    out
}

fn dims(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(bytes).expect("a decodable example");
    (img.width(), img.height())
}

fn cases() -> Vec<Case> {
    let coffee = photo("coffee.jpg");
    let cat = photo("chelsea-cat.png");
    let progressive = photo("mountain-meadow-progressive.jpg");
    let (pw, ph) = dims(&progressive);
    let rgb16: Vec<u8> = (0..48u32)
        .flat_map(|y| {
            (0..64u32).flat_map(move |x| [(x * 1000) as u16, (y * 1300) as u16, 30_000u16])
        })
        .flat_map(u16::to_be_bytes)
        .collect();
    let indexed: Vec<u8> = (0..48u32)
        .flat_map(|y| (0..64u32).map(move |x| ((x / 16 + y / 12) % 4) as u8))
        .collect();
    vec![
        Case {
            name: "png-bomb-30000x30000.png",
            bytes: png_bomb(30_000, 30_000),
            expect: Expect::Fails("too_many_pixels"),
        },
        Case {
            name: "jpeg-bomb-30000x30000.jpg",
            bytes: jpeg_claiming(30_000, 30_000),
            expect: Expect::Fails("too_many_pixels"),
        },
        Case {
            name: "truncated.jpg",
            bytes: coffee[..coffee.len() * 6 / 10].to_vec(),
            expect: Expect::Fails("decode_failed"),
        },
        Case {
            name: "truncated.png",
            bytes: cat[..cat.len() * 6 / 10].to_vec(),
            expect: Expect::Fails("decode_failed"),
        },
        Case {
            name: "frames-2000.gif",
            bytes: many_frame_gif(256, 2000),
            expect: Expect::Converts {
                width: 256,
                height: 256,
            },
        },
        Case {
            name: "cmyk.jpg",
            bytes: cmyk_jpeg(64, 32),
            expect: Expect::Converts {
                width: 64,
                height: 32,
            },
        },
        Case {
            name: "progressive-photo.jpg",
            bytes: progressive,
            expect: Expect::Converts {
                width: pw,
                height: ph,
            },
        },
        Case {
            name: "progressive-generated.jpg",
            bytes: progressive_jpeg(320, 200),
            expect: Expect::Converts {
                width: 320,
                height: 200,
            },
        },
        Case {
            name: "rgb-16-bit.png",
            bytes: png_of(
                64,
                48,
                png::ColorType::Rgb,
                png::BitDepth::Sixteen,
                None,
                &rgb16,
            ),
            expect: Expect::Converts {
                width: 64,
                height: 48,
            },
        },
        Case {
            name: "palette.png",
            bytes: png_of(
                64,
                48,
                png::ColorType::Indexed,
                png::BitDepth::Eight,
                Some(vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 250]),
                &indexed,
            ),
            expect: Expect::Converts {
                width: 64,
                height: 48,
            },
        },
        Case {
            name: "empty.jpg",
            bytes: Vec::new(),
            expect: Expect::Fails("not_an_image"),
        },
        Case {
            name: "page.jpg",
            bytes: b"<!doctype html><html><body>Not found</body></html>".to_vec(),
            expect: Expect::Fails("not_an_image"),
        },
    ]
}

const SETTINGS: Settings = Settings {
    quality: 50,
    rdo_lambda: DEFAULT_RDO_LAMBDA,
    max_pixels: 100_000_000,
    max_decode_bytes: 1 << 30,
    max_cpu_time: std::time::Duration::from_secs(60),
};

fn outcome(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), &'static str> {
    compress(bytes, &SETTINGS)
        .map(|c| (c.width, c.height, c.bytes))
        .map_err(|e| e.code().as_str())
}

#[test]
fn each_hostile_image_converts_or_fails_as_the_contract_says() {
    for case in cases() {
        let started = Instant::now();
        let got = outcome(&case.bytes);
        let took = started.elapsed();
        match (case.expect, &got) {
            (Expect::Converts { width, height }, Ok((w, h, jpeg))) => {
                assert_eq!((*w, *h), (width, height), "{}", case.name);
                assert_eq!(
                    dims(jpeg),
                    (width, height),
                    "{}: the output is a JPEG of those dimensions",
                    case.name
                );
            }
            (Expect::Fails(code), Err(got_code)) => assert_eq!(*got_code, code, "{}", case.name),
            (expect, got) => {
                panic!(
                    "{}: expected {expect:?}, got {:?}",
                    case.name,
                    got.as_ref().map(|(w, h, _)| (w, h))
                )
            }
        }
        eprintln!(
            "{:<28} {:>9} bytes  {:?} in {took:?}",
            case.name,
            case.bytes.len(),
            case.expect
        );
    }
}

/// The output's pixels through `jpeg-decoder`, which agrees with libjpeg.
fn reference_rgb(jpeg: &[u8]) -> (usize, Vec<u8>) {
    let mut decoder = jpeg_decoder::Decoder::new(jpeg);
    let pixels = decoder.decode().expect("the output decodes");
    let info = decoder.info().expect("frame info");
    assert_eq!(
        info.pixel_format,
        jpeg_decoder::PixelFormat::RGB24,
        "a colour output"
    );
    (info.width as usize, pixels)
}

fn pixel(width: usize, rgb: &[u8], x: usize, y: usize) -> [u8; 3] {
    let i = (y * width + x) * 3;
    [rgb[i], rgb[i + 1], rgb[i + 2]]
}

#[test]
fn cmyk_colours_come_out_right() {
    let (_, _, jpeg) = outcome(&cmyk_jpeg(64, 32)).expect("CMYK converts");
    let (width, rgb) = reference_rgb(&jpeg);
    let cyan = pixel(width, &rgb, 8, 16);
    let white = pixel(width, &rgb, 56, 16);
    assert!(
        cyan[0] < 80 && cyan[1] > 170 && cyan[2] > 170,
        "full cyan ink is cyan on screen, got {cyan:?}"
    );
    assert!(
        white.iter().all(|&c| c > 230),
        "no ink is white, got {white:?}"
    );
}

/// Half cyan, half white, as an RGB PNG.
fn cyan_and_white_png() -> Vec<u8> {
    let rgb: Vec<u8> = (0..32 * 64)
        .flat_map(|i| {
            if i % 64 < 32 {
                [0u8, 255, 255]
            } else {
                [255, 255, 255]
            }
        })
        .collect();
    png_of(
        64,
        32,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        None,
        &rgb,
    )
}

#[test]
fn outputs_decode_to_the_same_colours_in_independent_decoders() {
    let (_, _, jpeg) = outcome(&cyan_and_white_png()).expect("converts");
    let (width, reference) = reference_rgb(&jpeg);
    let other = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
        .expect("decodes")
        .to_rgb8();
    for (x, y) in [(8, 16), (56, 16)] {
        let a = pixel(width, &reference, x, y);
        let b = other.get_pixel(x as u32, y as u32).0;
        assert!(
            a.iter().zip(b).all(|(p, q)| p.abs_diff(q) <= 8),
            "({x},{y}): jpeg-decoder {a:?}, image {b:?}"
        );
    }
}

/// GNU time (Debian package `time`): it reports the peak memory of the one
/// process it starts. (`wait4` here would not do: a child spawned from this
/// large test process is charged the parent's pages it shared before `exec`.)
const GNU_TIME: &str = "/usr/bin/time";

/// Runs `imgproc-local compress` on one file; whether it succeeded and its peak RSS.
fn cli_peak(file: &Path, out: &Path, max_pixels: u64) -> (bool, u64) {
    cli_peak_with(
        &[file],
        out,
        &["--threads", "1", "--max-pixels", &max_pixels.to_string()],
    )
}

/// Runs `imgproc-local compress` with `args` on `files`; whether every file
/// converted and the process's peak RSS.
fn cli_peak_with(files: &[&Path], out: &Path, args: &[&str]) -> (bool, u64) {
    let (ok, peak, _) = cli_run(files, out, args);
    (ok, peak)
}

/// `cli_peak_with`, with what the command printed.
fn cli_run(files: &[&Path], out: &Path, args: &[&str]) -> (bool, u64, String) {
    assert!(
        Path::new(GNU_TIME).exists(),
        "{GNU_TIME} is missing: apt-get install time"
    );
    let report = out.with_extension("maxrss");
    let output = Command::new(GNU_TIME)
        .args(["-f", "%M", "-o"])
        .arg(&report)
        .arg(env!("CARGO_BIN_EXE_imgproc-local"))
        .arg("compress")
        .args(args)
        .arg("--out")
        .arg(out)
        .args(files)
        .stderr(Stdio::null())
        .output()
        .expect("GNU time runs");
    let report = std::fs::read_to_string(&report).expect("GNU time's report");
    // The last line: earlier ones may say how the command exited.
    let kib: u64 = report
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("maximum RSS in KiB");
    (
        output.status.success(),
        kib * 1024,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// A textured `width`×`height` RGB picture: gradients and noise, so that
/// every block has coefficients to code.
fn textured_rgb(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x2545_F491u32;
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state % 48) as u8;
            data.extend_from_slice(&[
                ((x * 255 / width) as u8).saturating_add(noise),
                ((y * 255 / height) as u8).saturating_add(noise / 2),
                (((x + y) % 256) as u8).wrapping_add(noise),
            ]);
        }
    }
    data
}

/// An APP1 segment with EXIF orientation 6 (turn 90° clockwise).
fn exif_orientation_6() -> Vec<u8> {
    let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01".to_vec();
    exif.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0]);
    exif.extend_from_slice(&[0, 0, 0, 0]);
    exif
}

/// The same picture in every layout the engine prices differently.
fn layouts(width: u32, height: u32) -> Vec<(String, Vec<u8>)> {
    use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
    let rgb = textured_rgb(width, height);
    let jpeg =
        |data: &[u8], color: ColorType, sampling: SamplingFactor, progressive: bool, exif: bool| {
            let mut out = Vec::new();
            let mut enc = Encoder::new(&mut out, 90);
            enc.set_sampling_factor(sampling);
            enc.set_progressive(progressive);
            if exif {
                enc.add_app_segment(1, exif_orientation_6()).expect("EXIF");
            }
            enc.encode(data, width as u16, height as u16, color)
                .expect("JPEG");
            out
        };
    let grey: Vec<u8> = rgb.chunks_exact(3).map(|p| p[1]).collect();
    let cmyk: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 200])
        .collect();
    let rgba: Vec<u8> = rgb
        .chunks_exact(3)
        .enumerate()
        .flat_map(|(i, p)| [p[0], p[1], p[2], (i % 256) as u8])
        .collect();
    let mut webp = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
        .encode(&rgba, width, height, image::ExtendedColorType::Rgba8)
        .expect("WebP");
    // Lossy, from libwebp at its defaults (quality 75): opaque, which the
    // engine writes from its YCbCr planes, and with alpha, which it decodes
    // to RGBA.
    let lossy = |with_alpha: bool| {
        let (w, h) = (width as i32, height as i32);
        let mut out: *mut u8 = std::ptr::null_mut();
        // SAFETY: the pixels are `w × h` of 3 or 4 bytes at that stride;
        // `out` is libwebp's, copied, then freed once.
        unsafe {
            let len = if with_alpha {
                libwebp_sys::WebPEncodeRGBA(rgba.as_ptr(), w, h, 4 * w, 75.0, &mut out)
            } else {
                libwebp_sys::WebPEncodeRGB(rgb.as_ptr(), w, h, 3 * w, 75.0, &mut out)
            };
            assert!(len > 0 && !out.is_null(), "libwebp encodes");
            let bytes = std::slice::from_raw_parts(out, len).to_vec();
            libwebp_sys::WebPFree(out.cast());
            bytes
        }
    };
    let mut gif = Vec::new();
    {
        let palette: Vec<u8> = (0..=255u8).flat_map(|i| [i, 255 - i, i / 2]).collect();
        let mut encoder =
            gif::Encoder::new(&mut gif, width as u16, height as u16, &palette).expect("GIF");
        let indices: Vec<u8> = rgb.chunks_exact(3).map(|p| p[0]).collect();
        let frame = gif::Frame {
            width: width as u16,
            height: height as u16,
            buffer: std::borrow::Cow::Owned(indices),
            ..gif::Frame::default()
        };
        encoder.write_frame(&frame).expect("GIF frame");
    }
    vec![
        (
            "4:2:0".into(),
            jpeg(&rgb, ColorType::Rgb, SamplingFactor::R_4_2_0, false, false),
        ),
        (
            "4:2:0 progressive".into(),
            jpeg(&rgb, ColorType::Rgb, SamplingFactor::R_4_2_0, true, false),
        ),
        (
            "4:2:0 turned".into(),
            jpeg(&rgb, ColorType::Rgb, SamplingFactor::R_4_2_0, false, true),
        ),
        (
            "4:2:2".into(),
            jpeg(&rgb, ColorType::Rgb, SamplingFactor::R_4_2_2, false, false),
        ),
        (
            "4:4:4 progressive".into(),
            jpeg(&rgb, ColorType::Rgb, SamplingFactor::R_4_4_4, true, false),
        ),
        (
            "4:4:4 turned".into(),
            jpeg(&rgb, ColorType::Rgb, SamplingFactor::R_4_4_4, false, true),
        ),
        (
            "grey".into(),
            jpeg(
                &grey,
                ColorType::Luma,
                SamplingFactor::R_4_4_4,
                false,
                false,
            ),
        ),
        (
            "CMYK".into(),
            jpeg(
                &cmyk,
                ColorType::Cmyk,
                SamplingFactor::R_4_4_4,
                false,
                false,
            ),
        ),
        (
            "RGBA PNG".into(),
            png_of(
                width,
                height,
                png::ColorType::Rgba,
                png::BitDepth::Eight,
                None,
                &rgba,
            ),
        ),
        ("WebP lossless".into(), webp),
        ("WebP lossy".into(), lossy(false)),
        ("WebP lossy alpha".into(), lossy(true)),
        ("GIF".into(), gif),
    ]
}

#[test]
fn the_decode_memory_priced_from_the_header_bounds_the_peak() {
    // 3001×2001: partial MCUs at the edges, and a turn that cannot be done
    // on whole blocks, which falls back to pixels.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (_, baseline) = cli_peak(&photos_dir().join("coffee.jpg"), &out, 100_000_000);
    let mut rows = Vec::new();
    for (name, bytes) in layouts(3001, 2001) {
        let file = dir.path().join("input");
        std::fs::write(&file, &bytes).unwrap();
        // Refused under 16 MiB, the error says what it needs…
        let (ok, _, printed) = cli_run(&[&file], &out, &["--max-decode-memory-mb", "16"]);
        assert!(!ok, "{name}: refused under 16 MiB");
        let need_mib: u64 = printed
            .split("needs ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no need in {printed:?}"));
        // …and with exactly that budget it converts, within it.
        let budget = need_mib.to_string();
        let (ok, peak, printed) = cli_run(&[&file], &out, &["--max-decode-memory-mb", &budget]);
        assert!(ok, "{name}: {printed}");
        rows.push(format!(
            "{name:<18} {:>5} KiB  needs {need_mib:>4} MiB, peak {:>4} MiB above the baseline",
            bytes.len() / 1024,
            peak.saturating_sub(baseline) / MIB
        ));
        assert!(
            peak <= baseline + need_mib * MIB,
            "{name}: peak {} MiB, baseline {} MiB, priced {need_mib} MiB",
            peak / MIB,
            baseline / MIB
        );
    }
    eprintln!(
        "3001×2001 (6 MP), baseline {} MiB:\n  {}",
        baseline / MIB,
        rows.join("\n  ")
    );
}

/// A decode-memory bomb within the pixel cap: 10,000×10,000 16-bit RGBA,
/// one half-transparent colour, about 1 MB on disk and 800 MB as decoded
/// 16-bit samples. Streamed row by row, never held whole.
fn rgba16_bomb() -> Vec<u8> {
    const SIDE: u32 = 10_000;
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, SIDE, SIDE);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Sixteen);
        encoder.set_compression(png::Compression::Balanced);
        let mut writer = encoder.write_header().expect("PNG header");
        let mut stream = writer.stream_writer().expect("PNG stream");
        let pixel = [0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC, 0x80, 0x00];
        let row: Vec<u8> = pixel
            .iter()
            .copied()
            .cycle()
            .take(8 * SIDE as usize)
            .collect();
        for _ in 0..SIDE {
            stream.write_all(&row).expect("PNG row");
        }
        stream.finish().expect("PNG end");
    }
    out
}

#[test]
fn a_decode_memory_bomb_is_refused_or_admitted_alone() {
    let bomb = rgba16_bomb();
    assert!(bomb.len() < 2 << 20, "{} bytes on disk", bomb.len());

    // Priced from its header and refused before decoding under a small budget…
    let small = Settings {
        max_decode_bytes: 256 * MIB,
        ..SETTINGS
    };
    let started = Instant::now();
    let err = compress(&bomb, &small).expect_err("refused under 256 MiB");
    assert_eq!(err.code().as_str(), "too_many_pixels", "{err}");
    assert!(err.to_string().contains("MiB"), "{err}");
    eprintln!("refused in {:?}: {err}", started.elapsed());

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (first, second) = (dir.path().join("bomb-1.png"), dir.path().join("bomb-2.png"));
    std::fs::write(&first, &bomb).unwrap();
    std::fs::write(&second, &bomb).unwrap();
    let (_, baseline) = cli_peak(&photos_dir().join("coffee.jpg"), &out, 100_000_000);
    let (ok, refused) = cli_peak_with(&[&first], &out, &["--max-decode-memory-mb", "256"]);
    assert!(!ok, "refused under 256 MiB");
    assert!(
        refused < baseline + 16 * MIB,
        "refused before decoding: {} MiB",
        refused / MIB
    );

    // …and admitted under a budget that fits it, within that budget. Two of
    // them on two threads each need more than half of it, so they run one
    // after the other: both in flight at once would hold about twice the
    // memory of one, well over the budget.
    const BUDGET_MIB: u64 = 700;
    let budget = BUDGET_MIB.to_string();
    let (ok, alone) = cli_peak_with(&[&first], &out, &["--max-decode-memory-mb", &budget]);
    assert!(ok, "admitted under {BUDGET_MIB} MiB");
    assert!(alone < BUDGET_MIB * MIB, "peak {} MiB", alone / MIB);
    let (ok, two) = cli_peak_with(
        &[&first, &second],
        &out,
        &["--threads", "2", "--max-decode-memory-mb", &budget],
    );
    assert!(ok, "both converted");
    assert!(two < BUDGET_MIB * MIB, "peak {} MiB for two", two / MIB);
    let jpeg = std::fs::read(out.join("bomb-1.jpg")).unwrap();
    let header =
        image::ImageReader::with_format(std::io::Cursor::new(&jpeg), image::ImageFormat::Jpeg);
    assert_eq!(header.into_dimensions().unwrap(), (10_000, 10_000));
    eprintln!(
        "10,000² RGBA16 PNG ({} KiB): refused under 256 MiB with a peak of {} MiB; \
         under {BUDGET_MIB} MiB converted with a peak of {} MiB alone and {} MiB for two \
         on two threads (baseline {} MiB)",
        bomb.len() / 1024,
        refused / MIB,
        alone / MIB,
        two / MIB,
        baseline / MIB
    );
}

#[test]
fn peak_memory_of_the_cli_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (_, baseline) = cli_peak(&photos_dir().join("coffee.jpg"), &out, 100_000_000);
    let mut rows = Vec::new();
    for case in cases() {
        let file = dir.path().join(case.name);
        std::fs::write(&file, &case.bytes).unwrap();
        let (ok, peak) = cli_peak(&file, &out, 100_000_000);
        assert_eq!(
            ok,
            matches!(case.expect, Expect::Converts { .. }),
            "{}",
            case.name
        );
        // Nothing here may cost more than a few small frames: a refused bomb
        // is refused before decoding, and a GIF is decoded to its first frame.
        assert!(
            peak < baseline + 32 * MIB,
            "{}: peak {} MiB (baseline {} MiB)",
            case.name,
            peak / MIB,
            baseline / MIB
        );
        rows.push(format!("{}: {} MiB", case.name, peak / MIB));
    }
    // A real bomb under the pixel cap: 6000×6000 from a few kilobytes. It
    // converts, and memory follows the pixel count, which MAX_PIXELS bounds.
    let bomb = png_bomb(6000, 6000);
    let file = dir.path().join("png-bomb-6000x6000.png");
    std::fs::write(&file, &bomb).unwrap();
    let (ok, peak) = cli_peak(&file, &out, 100_000_000);
    assert!(ok, "36 MP under a 100 MP cap converts");
    let pixels = 6000 * 6000;
    assert!(
        peak < baseline + pixels * 6,
        "peak {} MiB for 36 MP",
        peak / MIB
    );
    rows.push(format!(
        "png-bomb-6000x6000.png ({} KiB, 36 MP): {} MiB",
        bomb.len() / 1024,
        peak / MIB
    ));
    let (ok, capped) = cli_peak(&file, &out, 10_000_000);
    assert!(!ok, "the same bomb over a 10 MP cap is refused");
    assert!(
        capped < baseline + 16 * MIB,
        "refused before decoding: {} MiB",
        capped / MIB
    );
    rows.push(format!(
        "png-bomb-6000x6000.png with a 10 MP cap: {} MiB",
        capped / MIB
    ));
    eprintln!(
        "peak RSS of `imgproc-local compress` (baseline, coffee.jpg: {} MiB):\n  {}",
        baseline / MIB,
        rows.join("\n  ")
    );
}

/// VmHWM (peak resident memory) of a running process.
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_service_records_each_outcome_and_its_memory_stays_bounded() {
    let files: Arc<HashMap<String, Vec<u8>>> = Arc::new(
        cases()
            .into_iter()
            .map(|c| (c.name.to_owned(), c.bytes))
            .collect(),
    );
    let hostile = Router::new()
        .route(
            "/h/{name}",
            get(
                |State(files): State<Arc<HashMap<String, Vec<u8>>>>,
                 UrlPath(name): UrlPath<String>| async move {
                    match files.get(&name) {
                        // A generic type: the service must sniff the bytes.
                        Some(b) => (
                            [(header::CONTENT_TYPE, "application/octet-stream")],
                            b.clone(),
                        )
                            .into_response(),
                        None => StatusCode::NOT_FOUND.into_response(),
                    }
                },
            ),
        )
        .with_state(files.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, hostile).await });
    // Its /endless body has no Content-Length and never ends.
    let images = ImageServer::start().await;

    let data = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = Command::new(env!("CARGO_BIN_EXE_imgproc-local"))
        .args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data.path())
        .env("ALLOW_PRIVATE_NETWORKS", "true")
        .env("MAX_ATTEMPTS", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("imgproc-local starts");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    common::wait_healthy(&client, &base).await;
    let idle = vm_hwm(server.id());

    let expected: Vec<(String, Expect)> = cases()
        .into_iter()
        .map(|c| (format!("http://{host}/h/{}", c.name), c.expect))
        .chain([(images.url("/endless"), Expect::Fails("too_large"))])
        .collect();
    let rows: Vec<(u64, &str, Vec<String>)> = expected
        .iter()
        .enumerate()
        .map(|(i, (u, _))| (i as u64 + 1, "P", vec![u.clone()]))
        .collect();
    let accepted =
        common::post_csv(client.post(format!("{base}/v1/requests")), csv_of(&rows)).await;
    let id = accepted["request_id"]
        .as_str()
        .expect("accepted")
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status: Value = loop {
        let s: Value = client
            .get(format!("{base}/v1/requests/{id}?limit=1000"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if is_terminal(&s) {
            break s;
        }
        assert!(Instant::now() < deadline, "not done: {}", s["progress"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let peak = vm_hwm(server.id());
    server.kill().ok();
    server.wait().ok();

    assert_eq!(status["status"], "completed_with_errors");
    for (product, (url, expect)) in status["products"].as_array().unwrap().iter().zip(&expected) {
        let image = &product["images"][0];
        match expect {
            Expect::Converts { width, height } => {
                assert_eq!(image["status"], "succeeded", "{url}: {image:#}");
                assert_eq!(
                    (image["width"].as_u64(), image["height"].as_u64()),
                    (Some(*width as u64), Some(*height as u64)),
                    "{url}"
                );
            }
            Expect::Fails(code) => assert_eq!(image["error"]["code"], *code, "{url}: {image:#}"),
        }
    }
    // The endless body is held up to MAX_DOWNLOAD_BYTES (25 MiB) at most.
    eprintln!(
        "imgproc-local serve: VmHWM {} MiB idle, {} MiB after {} hostile inputs",
        idle / MIB,
        peak / MIB,
        expected.len()
    );
    assert!(
        peak < idle + 96 * MIB,
        "peak {} MiB (idle {} MiB)",
        peak / MIB,
        idle / MIB
    );
}
