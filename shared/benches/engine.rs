//! The engine's stages on real photographs: `cargo bench -p imgproc-shared`.
//!
//! Inputs are the bundled example photos, plus the same photograph written
//! in the three chroma layouts a JPEG can have, so that each path of the
//! engine is timed: DCT-domain re-compression of 4:2:0, 4:2:2 and 4:4:4,
//! lossless turning, and the pixel path (decode, encode) of PNG and WebP.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use imgproc::compress::{DEFAULT_RDO_LAMBDA, Settings, compress, sniff, stages};
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

const SETTINGS: Settings = Settings {
    quality: 50,
    rdo_lambda: DEFAULT_RDO_LAMBDA,
    max_pixels: 100_000_000,
    max_decode_bytes: 1 << 30,
    max_cpu_time: std::time::Duration::from_secs(60),
};

fn photo(name: &str) -> Vec<u8> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "examples", "photos", name]
        .iter()
        .collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The cat photograph as a JPEG in the given chroma layout, quality 90.
fn layout(sampling: SamplingFactor) -> (Vec<u8>, Vec<u8>, u32, u32) {
    let rgb = image::load_from_memory(&photo("chelsea-cat.png"))
        .expect("PNG decodes")
        .to_rgb8();
    let (w, h) = rgb.dimensions();
    let mut out = Vec::new();
    let mut enc = Encoder::new(&mut out, 90);
    enc.set_sampling_factor(sampling);
    enc.encode(rgb.as_raw(), w as u16, h as u16, ColorType::Rgb)
        .expect("encodes");
    (out, rgb.into_raw(), w, h)
}

fn stages_bench(c: &mut Criterion) {
    let (j420, rgb, w, h) = layout(SamplingFactor::R_4_2_0);
    let (j422, ..) = layout(SamplingFactor::R_4_2_2);
    let (j444, ..) = layout(SamplingFactor::R_4_4_4);
    let mut g = c.benchmark_group("stages");
    g.throughput(Throughput::Elements(u64::from(w * h)));
    g.bench_function("sniff", |b| b.iter(|| sniff(black_box(&j420))));
    g.bench_function("jpeg header", |b| {
        b.iter(|| stages::jpeg_header(black_box(&j420)).expect("header"))
    });
    g.bench_function("jpeg decode to pixels 4:2:0", |b| {
        b.iter(|| stages::jpeg_pixels(black_box(&j420)).expect("decodes"))
    });
    g.bench_function("jpeg encode pixels 4:2:0", |b| {
        b.iter(|| stages::encode_rgb(black_box(&rgb), w, h, 50).expect("encodes"))
    });
    for (name, input) in [("4:2:0", &j420), ("4:2:2", &j422), ("4:4:4", &j444)] {
        g.bench_function(format!("dct transcode {name}"), |b| {
            b.iter(|| compress(black_box(input), &SETTINGS).expect("compresses"))
        });
    }
    g.finish();
}

fn photos_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("compress");
    for name in [
        "coffee.jpg",
        "mountain-meadow-progressive.jpg",
        "astronaut-portrait-exif6.jpg",
        "chelsea-cat.png",
        "paint-brushes.webp",
    ] {
        let input = photo(name);
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| compress(black_box(&input), &SETTINGS).expect("compresses"))
        });
    }
    g.finish();
}

criterion_group!(benches, stages_bench, photos_bench);
criterion_main!(benches);
