//! The format of an image, from its first bytes (never from its name or
//! `Content-Type`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Jpeg,
    Png,
    Gif,
    WebP,
    /// An image format the service does not convert.
    Unsupported(&'static str),
    NotAnImage,
}

pub fn sniff(bytes: &[u8]) -> Sniffed {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Sniffed::Jpeg,
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Sniffed::Png,
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Sniffed::Gif,
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => Sniffed::WebP,
        [b'B', b'M', ..] => Sniffed::Unsupported("BMP"),
        [b'I', b'I', 0x2A, 0x00, ..] | [b'M', b'M', 0x00, 0x2A, ..] => Sniffed::Unsupported("TIFF"),
        [0x00, 0x00, 0x01, 0x00, ..] => Sniffed::Unsupported("ICO"),
        [0x00, 0x00, 0x00, 0x0C, b'J', b'X', b'L', b' ', ..] | [0xFF, 0x0A, ..] => {
            Sniffed::Unsupported("JPEG XL")
        }
        [b'8', b'B', b'P', b'S', ..] => Sniffed::Unsupported("PSD"),
        [b'q', b'o', b'i', b'f', ..] => Sniffed::Unsupported("QOI"),
        [_, _, _, _, b'f', b't', b'y', b'p', brand @ ..] if brand.len() >= 4 => match &brand[..4] {
            b"avif" | b"avis" => Sniffed::Unsupported("AVIF"),
            b"heic" | b"heix" | b"mif1" | b"msf1" | b"hevc" => Sniffed::Unsupported("HEIF"),
            _ => Sniffed::NotAnImage,
        },
        _ if looks_like_svg(bytes) => Sniffed::Unsupported("SVG"),
        _ => Sniffed::NotAnImage,
    }
}

fn looks_like_svg(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(512)];
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    text.contains("<svg")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_formats_by_their_magic_bytes() {
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0\x00\x10JFIF"), Sniffed::Jpeg);
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Sniffed::Png);
        assert_eq!(sniff(b"GIF89a\x01\x00"), Sniffed::Gif);
        assert_eq!(sniff(b"GIF87a\x01\x00"), Sniffed::Gif);
        assert_eq!(sniff(b"RIFF\x24\0\0\0WEBPVP8 "), Sniffed::WebP);
        assert_eq!(sniff(b"BM\x36\0\0\0"), Sniffed::Unsupported("BMP"));
        assert_eq!(sniff(b"II*\0\x08\0\0\0"), Sniffed::Unsupported("TIFF"));
        assert_eq!(
            sniff(b"\0\0\0\x1cftypavif\0\0"),
            Sniffed::Unsupported("AVIF")
        );
        assert_eq!(
            sniff(b"\0\0\0\x18ftypheic\0\0"),
            Sniffed::Unsupported("HEIF")
        );
        assert_eq!(
            sniff(b"<?xml version=\"1.0\"?><svg xmlns="),
            Sniffed::Unsupported("SVG")
        );
    }

    #[test]
    fn anything_else_is_not_an_image() {
        for body in [
            &b""[..],
            b"\xFF",
            b"\xFF\xD8",
            b"<!doctype html><html><body>Not found</body></html>",
            b"RIFF\x24\0\0\0WAVEfmt ",
            b"{\"error\":1}",
            b"\0\0\0\x18ftypisom",
        ] {
            assert_eq!(
                sniff(body),
                Sniffed::NotAnImage,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
