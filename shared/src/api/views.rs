//! JSON bodies of the API, exactly as the OpenAPI document describes them.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{
    ImageError, ImageRecord, ProductRecord, Progress, RequestStatus, WebhookState,
};
use crate::services::status::StatusPage;
use crate::services::submit::Accepted;

pub fn status_url(id: Uuid) -> String {
    format!("/v1/requests/{id}")
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Serialize)]
pub struct SubmitView {
    pub request_id: Uuid,
    pub status: RequestStatus,
    pub products: u32,
    pub images: u32,
    pub status_url: String,
    pub warnings: Vec<String>,
}

impl From<Accepted> for SubmitView {
    fn from(a: Accepted) -> Self {
        Self {
            request_id: a.request_id,
            status: RequestStatus::Pending,
            products: a.products,
            images: a.images,
            status_url: status_url(a.request_id),
            warnings: a.warnings,
        }
    }
}

#[derive(Serialize)]
pub struct ProgressView {
    pub total: u32,
    /// Images queued for processing so far (below `total` while the
    /// request's fan-out runs).
    pub queued: u32,
    pub succeeded: u32,
    pub failed: u32,
    pub pending: u32,
    pub percent: f64,
}

impl ProgressView {
    pub fn new(p: Progress, queued: u32) -> Self {
        Self {
            total: p.total,
            queued: queued.min(p.total),
            succeeded: p.succeeded,
            failed: p.failed,
            pending: p.pending(),
            percent: p.percent(),
        }
    }
}

#[derive(Serialize)]
pub struct ImageView<'a> {
    pub input_url: &'a str,
    pub status: &'static str,
    pub output_url: Option<&'a str>,
    pub input_bytes: Option<u64>,
    pub output_bytes: Option<u64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub original_kept: bool,
    pub error: Option<&'a ImageError>,
}

impl<'a> ImageView<'a> {
    fn new(image: &'a ImageRecord, output_url: Option<&'a str>) -> Self {
        Self {
            input_url: &image.input_url,
            status: image.status.as_str(),
            output_url,
            input_bytes: image.input_bytes,
            output_bytes: image.output_bytes,
            width: image.width,
            height: image.height,
            original_kept: image.original_kept,
            error: image.error.as_ref(),
        }
    }
}

#[derive(Serialize)]
pub struct ProductView<'a> {
    pub serial_number: u64,
    pub product_name: &'a str,
    pub images: Vec<ImageView<'a>>,
}

impl<'a> ProductView<'a> {
    fn new(product: &'a ProductRecord, urls: &'a [Option<String>]) -> Self {
        Self {
            serial_number: product.serial_number,
            product_name: &product.product_name,
            images: product
                .images
                .iter()
                .enumerate()
                .map(|(i, img)| ImageView::new(img, urls.get(i).and_then(|u| u.as_deref())))
                .collect(),
        }
    }
}

/// The bytes `product` adds to a status answer as it leaves a Lambda
/// function: its JSON, embedded in the invocation's response as a string,
/// where every `"` and `\` gains an escaping backslash. A page's byte
/// budget is counted in these (`services::status::PageBounds`).
pub fn product_wire_len(product: &ProductRecord, urls: &[Option<String>]) -> usize {
    let json = serde_json::to_vec(&ProductView::new(product, urls)).unwrap_or_default();
    let escapes = json.iter().filter(|&&b| b == b'"' || b == b'\\').count();
    // The comma between products.
    json.len() + escapes + 1
}

#[derive(Serialize)]
pub struct StatusView<'a> {
    pub request_id: Uuid,
    pub status: RequestStatus,
    pub created_at: String,
    pub updated_at: String,
    pub completed_at: Option<String>,
    pub progress: ProgressView,
    pub webhook: Option<&'a WebhookState>,
    pub output_csv_url: Option<&'a str>,
    pub products: Vec<ProductView<'a>>,
    pub next_cursor: Option<&'a str>,
}

impl<'a> StatusView<'a> {
    pub fn new(page: &'a StatusPage) -> Self {
        let r = &page.request;
        Self {
            request_id: r.id,
            status: r.status(),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
            completed_at: r.completed_at.map(rfc3339),
            progress: ProgressView::new(r.progress, r.queued),
            webhook: r.webhook.as_ref(),
            output_csv_url: page.output_csv_url.as_deref(),
            products: page
                .products
                .iter()
                .map(|(p, urls)| ProductView::new(p, urls))
                .collect(),
            next_cursor: page.next_cursor.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MAX_BASE_URL_CHARS, MAX_IMAGES_PER_ROW_LIMIT};
    use crate::domain::ErrorCode;
    use crate::domain::csv_input::MAX_URL_CHARS;
    use crate::domain::{ImageStatus, ProductRecord};
    use crate::services::status::RESPONSE_LIMIT_BYTES;

    /// A product never splits across pages, so the largest one a row can
    /// hold must fit one answer: every image with the longest input URL of
    /// characters that grow most on the wire (4-byte UTF-8, or a `"` that
    /// is escaped twice), the longest output URL, and an error.
    #[test]
    fn the_largest_product_fits_one_answer() {
        let base = format!("https://{}/", "b".repeat(MAX_BASE_URL_CHARS - 10));
        let worst = |i: usize| -> ImageRecord {
            let fill = if i.is_multiple_of(2) { "😀" } else { "\"" };
            let mut image = ImageRecord::pending(
                i as u32 + 1,
                format!("https://e.com/{}", fill.repeat(MAX_URL_CHARS - 14)),
            );
            image.status = ImageStatus::Failed;
            image.input_bytes = Some(u64::MAX);
            image.output_key = Some(format!("processed/{}/{}/{}.jpg", Uuid::nil(), u64::MAX, i));
            image.error = Some(ImageError::new(ErrorCode::FetchFailed, "e".repeat(1000)));
            image
        };
        let product = ProductRecord {
            position: 0,
            serial_number: u64::MAX,
            product_name: "\"".repeat(256),
            images: (0..MAX_IMAGES_PER_ROW_LIMIT).map(worst).collect(),
        };
        let urls: Vec<Option<String>> = product
            .images
            .iter()
            .map(|i| i.output_key.as_ref().map(|k| format!("{base}{k}")))
            .collect();
        let size = product_wire_len(&product, &urls);
        assert!(
            size < RESPONSE_LIMIT_BYTES - 64 * 1024,
            "{size} bytes leave too little room under {RESPONSE_LIMIT_BYTES}"
        );
    }
}
