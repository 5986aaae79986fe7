//! 8-bit samples made ready for the encoder: grey stays grey, colour is
//! RGB, and alpha is composited onto white. Done in place (or row by row)
//! so that flattening never holds a second copy of the picture.

use image::DynamicImage;

/// Samples per pixel after flattening: 1 for grey with or without alpha,
/// 3 for colour with or without alpha.
pub fn flat_channels(channels: u8) -> u8 {
    if channels <= 2 { 1 } else { 3 }
}

/// One row of `channels` samples per pixel (1 grey, 2 grey and alpha, 3
/// RGB, 4 RGBA) flattened into `out`, which holds `flat_channels` per pixel.
pub fn flatten_row(row: &[u8], channels: u8, out: &mut [u8]) {
    match channels {
        1 | 3 => out.copy_from_slice(&row[..out.len()]),
        2 => {
            for (o, p) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = over_white(p[0], p[1]);
            }
        }
        _ => {
            for (o, p) in out.chunks_exact_mut(3).zip(row.chunks_exact(4)) {
                let a = p[3];
                o.copy_from_slice(&[
                    over_white(p[0], a),
                    over_white(p[1], a),
                    over_white(p[2], a),
                ]);
            }
        }
    }
}

/// The same on a whole picture, in place: each pixel is written at or
/// before where it was read, then the buffer is cut to the flattened size
/// and its spare memory handed back. Returns the samples per pixel.
fn flatten_in_place(data: &mut Vec<u8>, channels: u8) -> u8 {
    let flat = flat_channels(channels);
    if flat == channels {
        return flat;
    }
    let (c, f) = (usize::from(channels), usize::from(flat));
    let count = data.len() / c;
    for i in 0..count {
        let (from, to) = (i * c, i * f);
        let a = data[from + c - 1];
        for k in 0..f {
            data[to + k] = over_white(data[from + k], a);
        }
    }
    data.truncate(count * f);
    data.shrink_to_fit();
    flat
}

/// A decoded picture as 8-bit grey or RGB samples, with its samples per
/// pixel. 8-bit layouts are flattened in place; deeper ones (which no
/// decoder used here produces) are converted first.
pub fn flatten(image: DynamicImage) -> (Vec<u8>, u8) {
    match image {
        DynamicImage::ImageLuma8(img) => (img.into_raw(), 1),
        DynamicImage::ImageRgb8(img) => (img.into_raw(), 3),
        DynamicImage::ImageLumaA8(img) => {
            let mut data = img.into_raw();
            let c = flatten_in_place(&mut data, 2);
            (data, c)
        }
        DynamicImage::ImageRgba8(img) => {
            let mut data = img.into_raw();
            let c = flatten_in_place(&mut data, 4);
            (data, c)
        }
        img if img.color().has_alpha() => flatten(DynamicImage::ImageRgba8(img.into_rgba8())),
        img if img.color().channel_count() == 1 => (img.into_luma8().into_raw(), 1),
        img => (img.into_rgb8().into_raw(), 3),
    }
}

pub fn over_white(c: u8, a: u8) -> u8 {
    let (c, a) = (u32::from(c), u32::from(a));
    ((c * a + 255 * (255 - a) + 127) / 255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattening_in_place_equals_flattening_row_by_row() {
        let rgba: Vec<u8> = (0..4 * 97).map(|i| (i * 37 % 256) as u8).collect();
        let mut by_row = vec![0u8; 3 * 97];
        flatten_row(&rgba, 4, &mut by_row);
        let (in_place, c) = flatten(DynamicImage::ImageRgba8(
            image::RgbaImage::from_raw(97, 1, rgba).expect("97 pixels"),
        ));
        assert_eq!((c, &in_place), (3, &by_row));

        let la: Vec<u8> = (0..2 * 31).map(|i| (i * 71 % 256) as u8).collect();
        let mut by_row = vec![0u8; 31];
        flatten_row(&la, 2, &mut by_row);
        let (in_place, c) = flatten(DynamicImage::ImageLumaA8(
            image::GrayAlphaImage::from_raw(31, 1, la).expect("31 pixels"),
        ));
        assert_eq!((c, &in_place), (1, &by_row));
    }

    #[test]
    fn alpha_is_composited_onto_white() {
        assert_eq!(over_white(0, 0), 255);
        assert_eq!(over_white(0, 255), 0);
        assert_eq!(over_white(100, 128), 177);
        let mut out = [0u8; 3];
        flatten_row(&[10, 20, 30, 255], 4, &mut out);
        assert_eq!(out, [10, 20, 30]);
    }
}
