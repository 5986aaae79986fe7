//! Reading a request: its status page by page, and the output CSV.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use super::{App, ServiceError};
use crate::domain::{ImageStatus, ProductRecord, RequestRecord, results_key};
use crate::ports::{Download, PortError};

pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1000;

/// Lambda's limit on a synchronous response (6 MB), which bounds every
/// answer of the API on AWS, with a margin for the invocation envelope.
pub const RESPONSE_LIMIT_BYTES: usize = 6_000_000;

/// The bytes a page's products may take. The rest of the response limit
/// is left to the request's own fields (webhook URL, output CSV URL,
/// cursor: a few KiB) and to one product larger than the budget, which is
/// still answered alone.
pub const PAGE_BUDGET_BYTES: usize = 4 << 20;

/// Products read from the store per call while filling a page: a page
/// that the byte budget ends early reads little more than it answers.
const READ_CHUNK: u32 = 100;

/// How one page is bounded: at most `limit` products, and products whose
/// sizes (by `measure`: the bytes a product adds to the answer as sent)
/// add up to at most `budget` bytes, but never fewer than one product.
#[derive(Clone, Copy)]
pub struct PageBounds {
    pub limit: u32,
    pub budget: usize,
    pub measure: fn(&ProductRecord, &[Option<String>]) -> usize,
}

/// One page of a request's status.
pub struct StatusPage {
    pub request: RequestRecord,
    /// Products of this page, each image with its output URL when it succeeded.
    pub products: Vec<(ProductRecord, Vec<Option<String>>)>,
    pub output_csv_url: Option<String>,
    pub next_cursor: Option<String>,
}

/// Parses `?limit=`: a positive integer, clamped to [`MAX_PAGE`].
pub fn parse_limit(raw: Option<&str>) -> Result<u32, ServiceError> {
    match raw {
        None => Ok(DEFAULT_PAGE),
        Some(s) => {
            let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            match s.parse::<u64>() {
                Ok(n) if digits && n >= 1 => Ok(n.min(u64::from(MAX_PAGE)) as u32),
                // Too many digits for u64 is still a positive integer above the cap.
                Err(_) if digits && s.bytes().any(|b| b != b'0') => Ok(MAX_PAGE),
                _ => Err(ServiceError::InvalidRequest(format!(
                    "limit must be a positive integer, got {s:?}"
                ))),
            }
        }
    }
}

/// Cursors name the request they were issued for and the last position
/// served, so one cannot be replayed against another request.
fn encode_cursor(id: Uuid, last_position: u32) -> String {
    URL_SAFE_NO_PAD.encode(format!("{id}:{last_position}"))
}

fn decode_cursor(id: Uuid, cursor: &str) -> Result<u32, ServiceError> {
    let invalid = || {
        ServiceError::InvalidRequest(
            "cursor was not issued for this request; use next_cursor from a previous page".into(),
        )
    };
    let raw = URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .map_err(|_| invalid())?;
    let text = String::from_utf8(raw).map_err(|_| invalid())?;
    let (cursor_id, position) = text.split_once(':').ok_or_else(invalid)?;
    if Uuid::parse_str(cursor_id).ok() != Some(id) {
        return Err(invalid());
    }
    position.parse().map_err(|_| invalid())
}

/// The request, when `caller` may read it: a request made by a client is
/// that client's alone; one made without a client (the S3 drop, an open
/// API, or before clients existed) is readable by any caller the API
/// admits. Another client's request is "not found", exactly as a missing
/// one, so its existence does not show.
async fn load(app: &App, caller: Option<&str>, id: Uuid) -> Result<RequestRecord, ServiceError> {
    let request = app
        .store
        .get_request(id)
        .await?
        .ok_or(ServiceError::NotFound)?;
    match request.client_id.as_deref() {
        Some(owner) if Some(owner) != caller => Err(ServiceError::NotFound),
        _ => Ok(request),
    }
}

/// The URL of each image of `product`: `None` where it has no output.
pub(super) async fn output_urls(
    app: &App,
    product: &ProductRecord,
) -> Result<Vec<Option<String>>, PortError> {
    let mut urls = Vec::with_capacity(product.images.len());
    for image in &product.images {
        urls.push(match (&image.status, &image.output_key) {
            (ImageStatus::Succeeded, Some(key)) => Some(app.objects.url(key).await?),
            _ => None,
        });
    }
    Ok(urls)
}

pub async fn status(
    app: &App,
    caller: Option<&str>,
    id: Uuid,
    bounds: PageBounds,
    cursor: Option<&str>,
) -> Result<StatusPage, ServiceError> {
    let request = load(app, caller, id).await?;
    let mut after = cursor.map(|c| decode_cursor(id, c)).transpose()?;
    if after.is_some_and(|a| a >= request.product_count) {
        return Err(ServiceError::InvalidRequest(
            "cursor is past the end of this request".into(),
        ));
    }
    let limit = bounds.limit.max(1) as usize;
    let mut page: Vec<(ProductRecord, Vec<Option<String>>)> = Vec::new();
    let mut used = 0usize;
    // Whether a product follows the last one on the page.
    let more = 'fill: loop {
        // One more than the page can take tells whether the page is the last.
        let want = (limit - page.len() + 1).min(READ_CHUNK as usize) as u32;
        let products = app.store.list_products(id, after, want).await?;
        let exhausted = products.len() < want as usize;
        for product in products {
            if page.len() == limit {
                break 'fill true;
            }
            let urls = output_urls(app, &product).await?;
            let size = (bounds.measure)(&product, &urls);
            if !page.is_empty() && used + size > bounds.budget {
                break 'fill true;
            }
            used += size;
            after = Some(product.position);
            page.push((product, urls));
        }
        if exhausted {
            break false;
        }
    };
    let next_cursor = match (more, page.last()) {
        (true, Some((last, _))) => Some(encode_cursor(id, last.position)),
        _ => None,
    };
    let output_csv_url = match request.terminal {
        Some(_) => Some(app.objects.url(&results_key(id)).await?),
        None => None,
    };
    Ok(StatusPage {
        request,
        products: page,
        output_csv_url,
        next_cursor,
    })
}

/// The stored output CSV of a terminal request (`results/{id}.csv`, the
/// document `output_csv_url` names): a redirect to it where the store
/// offers one, so that a CSV of any size never passes through the
/// function, else its bytes.
pub async fn output_csv(
    app: &App,
    caller: Option<&str>,
    id: Uuid,
) -> Result<Download, ServiceError> {
    let request = load(app, caller, id).await?;
    if request.terminal.is_none() {
        return Err(ServiceError::NotReady);
    }
    let key = results_key(id);
    if let Some(download) = app.objects.download(&key).await? {
        return Ok(download);
    }
    // Completion writes the CSV before the request turns terminal, so it
    // is missing only if it was removed since. Built again it is the same
    // document (its URLs do not change); answered directly, without
    // rewriting it, as the reading side has no write permission.
    tracing::warn!(request_id = %id, key, "stored output CSV missing; answering one built afresh");
    Ok(Download::Body {
        bytes: super::results::build(app, id, request.product_count)
            .await?
            .into(),
        content_type: "text/csv; charset=utf-8".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_clamps_and_rejects() {
        assert_eq!(parse_limit(None).unwrap(), 100);
        assert_eq!(parse_limit(Some("5")).unwrap(), 5);
        assert_eq!(parse_limit(Some("5000")).unwrap(), 1000);
        assert_eq!(parse_limit(Some("99999999999999999999")).unwrap(), 1000);
        for bad in ["0", "000", "-1", "+5", "abc", "", " 5", "1.5"] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cursors_round_trip_and_are_bound_to_their_request() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let c = encode_cursor(a, 41);
        assert_eq!(decode_cursor(a, &c).unwrap(), 41);
        assert!(decode_cursor(b, &c).is_err());
        for bad in ["", "abc", "!!!", &URL_SAFE_NO_PAD.encode(format!("{a}:x"))] {
            assert!(decode_cursor(a, bad).is_err(), "{bad:?}");
        }
    }
}
