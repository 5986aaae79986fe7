//! `GET /files/{key}`: the lasting URL of every stored output (processed
//! images and result CSVs). Output URLs carry no signature: each request
//! here is answered afresh, by a short-lived presigned redirect on S3 or
//! the file itself locally, so a link works for as long as the object is
//! kept, whatever happened to the credentials that served it before.
//!
//! No token is needed, like `/health`: keys hold the request's random
//! UUID, and browsers load these images with plain `<img>` tags.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ApiError;
use crate::ports::Download;
use crate::services::{App, ServiceError};

/// The only objects the route hands out; uploads, drops and rejection
/// reports stay private.
const SERVED_PREFIXES: [&str; 2] = ["processed/", "results/"];

/// S3's own limit on a key's length.
const MAX_KEY_BYTES: usize = 1024;

pub(super) fn routes() -> Router<Arc<App>> {
    Router::new().route("/files/{*key}", get(get_file))
}

/// True for a key under a served prefix made only of plain segments: no
/// `.`/`..`, empty segments, backslashes or control characters, so the
/// same key means the same object on S3 and on a filesystem.
pub fn servable(key: &str) -> bool {
    key.len() <= MAX_KEY_BYTES
        && SERVED_PREFIXES.iter().any(|p| key.starts_with(p))
        && key
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && !key.contains('\\')
        && !key.chars().any(char::is_control)
}

/// The name a browser saves a CSV key under (`results/{id}.csv` gives
/// `imgproc-{id}.csv`, as the web page names it), when the key is plain
/// enough for a `Content-Disposition` header: result CSVs are saved, not
/// shown, when a browser follows their link.
pub fn csv_file_name(key: &str) -> Option<String> {
    let name = key.rsplit('/').next()?;
    let stem = name.strip_suffix(".csv")?;
    (!stem.is_empty() && stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .then(|| format!("imgproc-{stem}.csv"))
}

/// `attachment; filename="…"` for a CSV key.
pub(super) fn csv_disposition(key: &str) -> Option<HeaderValue> {
    csv_file_name(key)
        .and_then(|name| HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")).ok())
}

async fn get_file(
    State(app): State<Arc<App>>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Ok(Path(key)) = key else {
        return Err(ApiError::NotFound);
    };
    if !servable(&key) {
        return Err(ApiError::NotFound);
    }
    match app
        .objects
        .download(&key)
        .await
        .map_err(ServiceError::from)?
    {
        Some(download) => Ok(answer(download, csv_disposition(&key))),
        None => Err(ApiError::NotFound),
    }
}

/// The answer for a download: `302` to a presigned URL (never cached, as
/// the URL expires), or `200` with the bytes; `disposition` names the file
/// a browser saves.
pub(super) fn answer(download: Download, disposition: Option<HeaderValue>) -> Response {
    match download {
        Download::Redirect(url) => match HeaderValue::from_str(&url) {
            Ok(location) => (
                StatusCode::FOUND,
                [
                    (header::LOCATION, location),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                ],
            )
                .into_response(),
            Err(_) => {
                tracing::error!("presigned URL is not a valid header value");
                super::error::error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "an internal error occurred; try again",
                )
            }
        },
        Download::Body {
            bytes,
            content_type,
        } => {
            let content_type = HeaderValue::from_str(&content_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            let mut response = (
                [
                    (header::CONTENT_TYPE, content_type),
                    // Served from the API's origin: never as anything else.
                    (
                        header::X_CONTENT_TYPE_OPTIONS,
                        HeaderValue::from_static("nosniff"),
                    ),
                ],
                bytes,
            )
                .into_response();
            if let Some(d) = disposition {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, d);
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_keys_under_the_output_prefixes_are_served() {
        for good in [
            "processed/6d1f0c4e-8f7a-4b8e-9a63-2d8f3b1c0e55/10/1.jpg",
            "results/6d1f0c4e-8f7a-4b8e-9a63-2d8f3b1c0e55.csv",
        ] {
            assert!(servable(good), "{good}");
        }
        let long = format!("processed/{}", "a".repeat(MAX_KEY_BYTES));
        for bad in [
            "",
            "processed",
            "processed/",
            "incoming/upload.csv",
            "rejected/incoming/upload.csv.json",
            "requests/x/rows.jsonl",
            "processed/../incoming/a.csv",
            "processed/./a.jpg",
            "processed//a.jpg",
            "results/a.csv/",
            "processed\\..\\incoming\\a.csv",
            "processed/a\u{0}.jpg",
            "/processed/a.jpg",
            long.as_str(),
        ] {
            assert!(!servable(bad), "{bad:?}");
        }
        assert_eq!(
            csv_file_name("results/6d1f0c4e-8f7a-4b8e-9a63-2d8f3b1c0e55.csv").as_deref(),
            Some("imgproc-6d1f0c4e-8f7a-4b8e-9a63-2d8f3b1c0e55.csv")
        );
        for other in [
            "processed/a/1/1.jpg",
            "results/.csv",
            "results/a\"b.csv",
            "results/x",
        ] {
            assert_eq!(csv_file_name(other), None, "{other}");
        }
    }
}
