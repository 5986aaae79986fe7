//! A validated request's rows as one stored document: JSON lines, one
//! product per line in input order, cut into segments of a bounded number
//! of products and images. A small index (first product, byte offset and
//! first image ordinal of every segment) lets a reader fetch just the
//! segments it needs with a ranged read, so storing a request is one write
//! however many images it has, and no reader ever loads the whole document
//! to show one page.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ImageJob;
use super::csv_input::ParsedProduct;

/// A segment closes once it holds this many images (a single product with
/// more images stays whole) …
pub const SEGMENT_IMAGES: u32 = 500;
/// … or this many products.
pub const SEGMENT_PRODUCTS: u32 = 500;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub position: u32,
    pub serial_number: u64,
    pub product_name: String,
    /// Ordinal of the row's first image in the request.
    pub first_ordinal: u32,
    pub urls: Vec<String>,
}

impl Row {
    /// One job per image of the row, in order.
    pub fn jobs(&self, request_id: Uuid, total: u32) -> impl Iterator<Item = ImageJob> + '_ {
        self.urls.iter().enumerate().map(move |(i, url)| ImageJob {
            request_id,
            product: self.position,
            serial_number: self.serial_number,
            image: i as u32 + 1,
            input_url: url.clone(),
            ordinal: self.first_ordinal + i as u32,
            total,
            host_wait: None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub first_product: u32,
    pub offset: u64,
    pub first_ordinal: u32,
}

/// The encoded document and its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowsDocument {
    pub bytes: Vec<u8>,
    pub index: Vec<Segment>,
}

pub fn encode(products: &[ParsedProduct]) -> RowsDocument {
    let mut bytes = Vec::new();
    let mut index = Vec::new();
    let (mut ordinal, mut seg_images, mut seg_products) = (0u32, 0u32, 0u32);
    for (position, p) in products.iter().enumerate() {
        let images = p.urls.len() as u32;
        let full = seg_products >= SEGMENT_PRODUCTS || seg_images + images > SEGMENT_IMAGES;
        if index.is_empty() || (seg_products > 0 && full) {
            index.push(Segment {
                first_product: position as u32,
                offset: bytes.len() as u64,
                first_ordinal: ordinal,
            });
            (seg_images, seg_products) = (0, 0);
        }
        let row = Row {
            position: position as u32,
            serial_number: p.serial_number,
            product_name: p.product_name.clone(),
            first_ordinal: ordinal,
            urls: p.urls.clone(),
        };
        // Serialising plain strings and numbers cannot fail.
        if let Ok(line) = serde_json::to_vec(&row) {
            bytes.extend_from_slice(&line);
        }
        bytes.push(b'\n');
        ordinal += images;
        seg_images += images;
        seg_products += 1;
    }
    RowsDocument { bytes, index }
}

/// `first_product:offset:first_ordinal` per segment, `;`-separated: compact
/// enough to sit on the request's own record.
pub fn encode_index(index: &[Segment]) -> String {
    index
        .iter()
        .map(|s| format!("{}:{}:{}", s.first_product, s.offset, s.first_ordinal))
        .collect::<Vec<_>>()
        .join(";")
}

pub fn decode_index(raw: &str) -> Option<Vec<Segment>> {
    if raw.is_empty() {
        return Some(Vec::new());
    }
    raw.split(';')
        .map(|part| {
            let mut it = part.split(':').map(str::parse::<u64>);
            let (Some(Ok(p)), Some(Ok(o)), Some(Ok(n)), None) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                return None;
            };
            Some(Segment {
                first_product: u32::try_from(p).ok()?,
                offset: o,
                first_ordinal: u32::try_from(n).ok()?,
            })
        })
        .collect()
}

/// Which segments hold products `from..` (up to `want` of them): the byte
/// range to read, `[start, end)` of a document `len` bytes long, and the
/// first product that range starts with. Callers check `from` against the
/// request's product count; the rows read are filtered by position.
pub fn range_for(index: &[Segment], len: u64, from: u32, want: u32) -> Option<(u64, u64, u32)> {
    let first = index
        .partition_point(|s| s.first_product <= from)
        .checked_sub(1)?;
    let until = from.saturating_add(want.max(1));
    let last = index.partition_point(|s| s.first_product < until);
    let end = index.get(last).map_or(len, |s| s.offset);
    let start = index[first].offset;
    (start < end).then_some((start, end, index[first].first_product))
}

/// The index of the segment that starts at product `position`, if one does.
pub fn segment_starting_at(index: &[Segment], position: u32) -> Option<usize> {
    index.iter().position(|s| s.first_product == position)
}

/// Rows of a byte range read by [`range_for`].
pub fn decode_rows(bytes: &[u8]) -> Result<Vec<Row>, String> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).map_err(|e| format!("stored row: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(serial: u64, images: usize) -> ParsedProduct {
        ParsedProduct {
            line: serial + 1,
            serial_number: serial,
            product_name: format!("P{serial}"),
            urls: (0..images)
                .map(|i| format!("https://h.example/{serial}/{i}.jpg"))
                .collect(),
        }
    }

    #[test]
    fn segments_are_bounded_and_every_range_reads_back_its_rows() {
        // 700 products of 1 image, then 3 of 300 images, then 10 of 2.
        let mut products: Vec<_> = (0..700).map(|i| product(i, 1)).collect();
        products.extend((700..703).map(|i| product(i, 300)));
        products.extend((703..713).map(|i| product(i, 2)));
        let doc = encode(&products);
        assert_eq!(
            decode_index(&encode_index(&doc.index)),
            Some(doc.index.clone())
        );
        for pair in doc.index.windows(2) {
            let rows =
                decode_rows(&doc.bytes[pair[0].offset as usize..pair[1].offset as usize]).unwrap();
            let images: usize = rows.iter().map(|r| r.urls.len()).sum();
            assert!(rows.len() as u32 <= SEGMENT_PRODUCTS);
            assert!(images as u32 <= SEGMENT_IMAGES || rows.len() == 1);
        }
        let len = doc.bytes.len() as u64;
        for (from, want) in [(0, 1), (499, 3), (500, 100), (699, 2), (701, 1), (712, 100)] {
            let (start, end, first) = range_for(&doc.index, len, from, want).unwrap();
            let rows = decode_rows(&doc.bytes[start as usize..end as usize]).unwrap();
            assert_eq!(rows[0].position, first);
            let wanted: Vec<u32> = rows
                .iter()
                .map(|r| r.position)
                .filter(|p| (from..from + want).contains(p))
                .collect();
            let expected: Vec<u32> = (from..(from + want).min(713)).collect();
            assert_eq!(wanted, expected, "from {from} want {want}");
        }
        // Past the last product: the last segment, holding none of the rows asked for.
        let (start, end, _) = range_for(&doc.index, len, 713, 1).unwrap();
        let rows = decode_rows(&doc.bytes[start as usize..end as usize]).unwrap();
        assert!(rows.iter().all(|r| r.position < 713));
        assert_eq!(range_for(&[], 0, 0, 1), None);
        // Ordinals run on across rows and segments.
        let all = decode_rows(&doc.bytes).unwrap();
        let ordinals: Vec<u32> = all
            .iter()
            .flat_map(|r| r.jobs(Uuid::nil(), 1620).map(|j| j.ordinal))
            .collect();
        assert_eq!(ordinals, (0..1620).collect::<Vec<_>>());
    }

    #[test]
    fn a_bad_index_is_refused() {
        for bad in ["1:2", "1:2:3:4", "a:b:c", "1:2:3;x", "99999999999:0:0"] {
            assert_eq!(decode_index(bad), None, "{bad}");
        }
    }
}
