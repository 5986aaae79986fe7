//! `imgproc-bench dssim`: how far each compressed output is from its source,
//! by two measures: DSSIM (lower is better) and SSIMULACRA2 (higher is
//! better; 90 is visually lossless, 70 high quality, 50 medium).
//!
//! The reference is the source decoded by an independent decoder
//! (`jpeg-decoder` for JPEG, the `image` crate for the rest), turned upright
//! by its EXIF orientation, with alpha composited onto the background the
//! contender uses. Outputs are matched to sources by file stem. Prints one
//! JSON object: per-image DSSIM and SSIMULACRA2, and their means.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use serde_json::json;

#[derive(Parser)]
#[command(name = "imgproc-bench")]
enum Cli {
    /// DSSIM of every output in OUTPUTS against its source in CORPUS.
    Dssim {
        corpus: PathBuf,
        outputs: PathBuf,
        /// What transparent pixels were composited onto.
        #[arg(long, value_enum, default_value_t = Background::White)]
        background: Background,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Background {
    White,
    Black,
}

fn main() -> anyhow::Result<()> {
    let Cli::Dssim {
        corpus,
        outputs,
        background,
    } = Cli::parse();
    let dssim = dssim_core::Dssim::new();
    let mut per_image = BTreeMap::new();
    let mut per_image_s2 = BTreeMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&corpus)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for source in entries.iter().filter(|p| is_image(p)) {
        let stem = source
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let output = outputs.join(format!("{stem}.jpg"));
        let reference =
            load_upright(source, background).with_context(|| source.display().to_string())?;
        let result =
            load_upright(&output, background).with_context(|| output.display().to_string())?;
        if reference.dimensions() != result.dimensions() {
            bail!(
                "{stem}: {:?} vs {:?}",
                reference.dimensions(),
                result.dimensions()
            );
        }
        let a = to_dssim(&dssim, &reference)?;
        let b = to_dssim(&dssim, &result)?;
        let (value, _) = dssim.compare(&a, b);
        per_image.insert(stem.clone(), f64::from(value));
        let s2 = ssimulacra2::compute_frame_ssimulacra2(to_s2(&reference)?, to_s2(&result)?)
            .with_context(|| format!("{stem}: SSIMULACRA2"))?;
        per_image_s2.insert(stem, s2);
    }
    let mean = per_image.values().sum::<f64>() / per_image.len().max(1) as f64;
    let mean_s2 = per_image_s2.values().sum::<f64>() / per_image_s2.len().max(1) as f64;
    println!(
        "{}",
        json!({
            "images": per_image.len(),
            "mean_dssim": mean,
            "per_image": per_image,
            "mean_ssimulacra2": mean_s2,
            "per_image_ssimulacra2": per_image_s2,
        })
    );
    Ok(())
}

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("jpg" | "jpeg" | "png" | "webp" | "gif")
    )
}

fn to_dssim(
    dssim: &dssim_core::Dssim,
    img: &RgbImage,
) -> anyhow::Result<dssim_core::DssimImage<f32>> {
    let pixels: Vec<rgb::RGB8> = img
        .pixels()
        .map(|p| rgb::RGB8::new(p.0[0], p.0[1], p.0[2]))
        .collect();
    dssim
        .create_image_rgb(&pixels, img.width() as usize, img.height() as usize)
        .context("image too small for DSSIM")
}

/// 8-bit sRGB as SSIMULACRA2 takes it: floats in 0..=1, BT.709 primaries.
fn to_s2(img: &RgbImage) -> anyhow::Result<ssimulacra2::Rgb> {
    let data = img
        .pixels()
        .map(|p| p.0.map(|c| f32::from(c) / 255.0))
        .collect();
    ssimulacra2::Rgb::new(
        data,
        img.width() as usize,
        img.height() as usize,
        ssimulacra2::TransferCharacteristic::SRGB,
        ssimulacra2::ColorPrimaries::BT709,
    )
    .context("SSIMULACRA2 image")
}

fn load_upright(path: &Path, background: Background) -> anyhow::Result<RgbImage> {
    let bytes = std::fs::read(path)?;
    let (image, orientation) = if bytes.starts_with(&[0xFF, 0xD8]) {
        let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(&bytes));
        let data = decoder.decode()?;
        let info = decoder.info().context("no JPEG header")?;
        let (w, h) = (u32::from(info.width), u32::from(info.height));
        let image = match info.pixel_format {
            jpeg_decoder::PixelFormat::L8 => {
                DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, data).context("size")?)
            }
            jpeg_decoder::PixelFormat::RGB24 => {
                DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, data).context("size")?)
            }
            other => bail!("{other:?} JPEG"),
        };
        let orientation = decoder
            .exif_data()
            .and_then(Orientation::from_exif_chunk)
            .unwrap_or(Orientation::NoTransforms);
        (image, orientation)
    } else {
        let mut decoder = ImageReader::new(Cursor::new(&bytes))
            .with_guessed_format()?
            .into_decoder()?;
        let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
        (DynamicImage::from_decoder(decoder)?, orientation)
    };
    let mut image = image;
    image.apply_orientation(orientation);
    if !image.color().has_alpha() {
        return Ok(image.to_rgb8());
    }
    let bg = match background {
        Background::White => 255u32,
        Background::Black => 0,
    };
    let rgba = image.to_rgba8();
    Ok(RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over =
            |c: u8| ((u32::from(c) * u32::from(a) + bg * (255 - u32::from(a)) + 127) / 255) as u8;
        image::Rgb([over(r), over(g), over(b)])
    }))
}
