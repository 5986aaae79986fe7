//! Which colour profiles are worth carrying into the output.

/// The profile to write into the output: the input's, unless it is plain
/// sRGB (`is_plain_srgb`).
pub fn worth_keeping(profile: Option<&[u8]>) -> Option<&[u8]> {
    profile.filter(|p| !is_plain_srgb(p))
}

/// A profile that only says "this is sRGB" changes nothing — browsers and
/// viewers assume sRGB for an image without one — so it is dropped, which
/// saves about 3 KB per image. Recognised by its header (an RGB display
/// profile) and its description ("sRGB …", as in "sRGB IEC61966-2.1"), in
/// both the ICC v2 (`desc`) and v4 (`mluc`) encodings.
pub fn is_plain_srgb(profile: &[u8]) -> bool {
    if profile.get(12..20) != Some(b"mntrRGB ") {
        return false;
    }
    description(profile).is_some_and(|d| d.starts_with("sRGB"))
}

fn be32(data: &[u8], at: usize) -> Option<usize> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// The profile's description tag as text.
fn description(profile: &[u8]) -> Option<String> {
    let count = be32(profile, 128)?.min(256);
    let (offset, size) = (0..count).find_map(|i| {
        let entry = 132 + i * 12;
        (profile.get(entry..entry + 4)? == b"desc")
            .then(|| Some((be32(profile, entry + 4)?, be32(profile, entry + 8)?)))?
    })?;
    let tag = profile.get(offset..offset.checked_add(size)?)?;
    match tag.get(..4)? {
        b"desc" => {
            let len = be32(tag, 8)?;
            let text = tag.get(12..12usize.checked_add(len)?)?;
            Some(
                String::from_utf8_lossy(text)
                    .trim_end_matches('\0')
                    .to_string(),
            )
        }
        b"mluc" => {
            // The first record: length and offset of UTF-16BE text.
            let (len, at) = (be32(tag, 20)?, be32(tag, 24)?);
            let text = tag.get(at..at.checked_add(len)?)?;
            let units: Vec<u16> = text
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            Some(
                String::from_utf16_lossy(&units)
                    .trim_end_matches('\0')
                    .to_string(),
            )
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plain sRGB display profile as the engine recognises it.
    pub(crate) fn plain_srgb() -> Vec<u8> {
        profile(b"mntrRGB ", &v2_desc("sRGB IEC61966-2.1"))
    }

    /// A minimal profile: header, one `desc` tag of the given type.
    fn profile(class_space: &[u8; 8], tag: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 128];
        p[12..20].copy_from_slice(class_space);
        p.extend_from_slice(&1u32.to_be_bytes());
        p.extend_from_slice(b"desc");
        p.extend_from_slice(&(144u32).to_be_bytes());
        p.extend_from_slice(&(tag.len() as u32).to_be_bytes());
        p.extend_from_slice(tag);
        p
    }

    fn v2_desc(text: &str) -> Vec<u8> {
        let mut t = b"desc\0\0\0\0".to_vec();
        t.extend_from_slice(&(text.len() as u32 + 1).to_be_bytes());
        t.extend_from_slice(text.as_bytes());
        t.push(0);
        t
    }

    fn v4_mluc(text: &str) -> Vec<u8> {
        let utf16: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
        let mut t = b"mluc\0\0\0\0".to_vec();
        t.extend_from_slice(&1u32.to_be_bytes());
        t.extend_from_slice(&12u32.to_be_bytes());
        t.extend_from_slice(b"enUS");
        t.extend_from_slice(&(utf16.len() as u32).to_be_bytes());
        t.extend_from_slice(&28u32.to_be_bytes());
        t.extend_from_slice(&utf16);
        t
    }

    #[test]
    fn srgb_profiles_are_recognised_in_both_encodings() {
        assert!(is_plain_srgb(&profile(
            b"mntrRGB ",
            &v2_desc("sRGB IEC61966-2.1")
        )));
        assert!(is_plain_srgb(&profile(
            b"mntrRGB ",
            &v4_mluc("sRGB built-in")
        )));
    }

    #[test]
    fn other_profiles_are_kept() {
        assert!(!is_plain_srgb(&profile(
            b"mntrRGB ",
            &v2_desc("Adobe RGB (1998)")
        )));
        assert!(!is_plain_srgb(&profile(
            b"mntrRGB ",
            &v4_mluc("Display P3")
        )));
        assert!(!is_plain_srgb(&profile(
            b"prtrCMYK",
            &v2_desc("sRGB lookalike")
        )));
        assert!(!is_plain_srgb(b"short"));
        let mut truncated = profile(b"mntrRGB ", &v2_desc("sRGB IEC61966-2.1"));
        truncated.truncate(150);
        assert!(!is_plain_srgb(&truncated));
    }
}
