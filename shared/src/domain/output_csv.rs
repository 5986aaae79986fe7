//! The output CSV: the input columns plus `Output Image Urls`.

use super::model::{ImageStatus, ProductRecord};

pub const HEADER: [&str; 4] = [
    "S. No.",
    "Product Name",
    "Input Image Urls",
    "Output Image Urls",
];

/// Writes products in input order; one output entry per input URL, empty
/// where the image failed. `output_url` maps a stored key to its public URL.
pub struct OutputCsv {
    writer: csv::Writer<Vec<u8>>,
}

impl Default for OutputCsv {
    fn default() -> Self {
        Self::new()
    }
}

impl OutputCsv {
    pub fn new() -> Self {
        let mut csv = Self::continuation();
        // Writing to a Vec cannot fail.
        let _ = csv.writer.write_record(HEADER);
        csv
    }

    /// Rows that follow others already written: no header. The bytes of
    /// `new()` followed by those of continuations form one CSV.
    pub fn continuation() -> Self {
        let writer = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(Vec::new());
        Self { writer }
    }

    pub fn push(&mut self, product: &ProductRecord, output_urls: &[Option<String>]) {
        let inputs: Vec<&str> = product
            .images
            .iter()
            .map(|i| i.input_url.as_str())
            .collect();
        let outputs: Vec<&str> = product
            .images
            .iter()
            .zip(output_urls)
            .map(|(img, url)| match (img.status, url) {
                (ImageStatus::Succeeded, Some(u)) => u.as_str(),
                _ => "",
            })
            .collect();
        let _ = self.writer.write_record([
            product.serial_number.to_string().as_str(),
            product.product_name.as_str(),
            inputs.join(",").as_str(),
            outputs.join(",").as_str(),
        ]);
    }

    pub fn finish(self) -> Vec<u8> {
        self.writer.into_inner().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{ErrorCode, ImageError, ImageRecord};

    #[test]
    fn lists_one_output_per_input_and_leaves_failures_empty() {
        let mut ok = ImageRecord::pending(1, "https://e.com/a.jpg".into());
        ok.status = ImageStatus::Succeeded;
        let mut bad = ImageRecord::pending(2, "https://e.com/b.png".into());
        bad.status = ImageStatus::Failed;
        bad.error = Some(ImageError::new(ErrorCode::HttpStatus, "404"));
        let mut ok2 = ImageRecord::pending(3, "https://e.com/c.gif".into());
        ok2.status = ImageStatus::Succeeded;
        let product = ProductRecord {
            position: 0,
            serial_number: 1,
            product_name: "Shoe, red".into(),
            images: vec![ok, bad, ok2],
        };
        let mut out = OutputCsv::new();
        out.push(
            &product,
            &[
                Some("https://o/1.jpg".into()),
                None,
                Some("https://o/3.jpg".into()),
            ],
        );
        let text = String::from_utf8(out.finish()).unwrap();
        assert_eq!(
            text,
            "S. No.,Product Name,Input Image Urls,Output Image Urls\r\n\
             1,\"Shoe, red\",\"https://e.com/a.jpg,https://e.com/b.png,https://e.com/c.gif\",\"https://o/1.jpg,,https://o/3.jpg\"\r\n"
        );
    }
}
