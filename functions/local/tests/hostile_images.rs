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
use imgproc::compress::{Settings, compress};
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
    max_pixels: 100_000_000,
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
    assert!(
        Path::new(GNU_TIME).exists(),
        "{GNU_TIME} is missing: apt-get install time"
    );
    let report = out.with_extension("maxrss");
    let status = Command::new(GNU_TIME)
        .args(["-f", "%M", "-o"])
        .arg(&report)
        .arg(env!("CARGO_BIN_EXE_imgproc-local"))
        .args([
            "compress",
            "--threads",
            "1",
            "--max-pixels",
            &max_pixels.to_string(),
            "--out",
        ])
        .arg(out)
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("GNU time runs");
    let report = std::fs::read_to_string(&report).expect("GNU time's report");
    // The last line: earlier ones may say how the command exited.
    let kib: u64 = report
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("maximum RSS in KiB");
    (status.success(), kib * 1024)
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
