//! `POST /v1/requests`: raw `text/csv` or `multipart/form-data`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::{ApiError, Caller, query_param, views};
use crate::services::App;
use crate::services::submit::{RequestId, Submission, submit};

/// Room for multipart boundaries, part headers and the webhook field on top
/// of the CSV itself.
const MULTIPART_OVERHEAD: usize = 64 * 1024;

enum Kind {
    Csv,
    Multipart,
}

fn kind_of(request: &Request) -> Result<Kind, ApiError> {
    let Some(raw) = request.headers().get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type is required: send the CSV as text/csv or as multipart/form-data with a file field".into(),
        ));
    };
    let essence = raw
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "text/csv" | "application/csv" => Ok(Kind::Csv),
        "multipart/form-data" => Ok(Kind::Multipart),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {other:?} is not accepted: send text/csv or multipart/form-data"
        ))),
    }
}

/// Reads the whole body, refusing more than `limit` bytes (while reading,
/// whatever Content-Length claimed).
async fn read_body(body: Body, limit: usize, reported_limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = e
            .into_inner()
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some();
        if too_large {
            ApiError::PayloadTooLarge(reported_limit)
        } else {
            ApiError::InvalidRequest("the request body could not be read".into())
        }
    })
}

pub(super) async fn create_request(
    State(app): State<Arc<App>>,
    Extension(Caller(client)): Extension<Caller>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let limit = app.config.max_upload_bytes;
    let kind = kind_of(&request)?;
    let body_limit = match kind {
        Kind::Csv => limit,
        Kind::Multipart => limit + MULTIPART_OVERHEAD,
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > body_limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let idempotency_key = match request.headers().get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::InvalidRequest("Idempotency-Key must be printable ASCII".into())
                })?
                .to_owned(),
        ),
    };
    let query_webhook = query_param(query.as_deref(), "webhook_url").filter(|w| !w.is_empty());

    let (csv, form_webhook) = match kind {
        Kind::Csv => (read_body(request.into_body(), limit, limit).await?, None),
        Kind::Multipart => {
            let (parts, body) = request.into_parts();
            let bytes = read_body(body, body_limit, limit).await?;
            read_form(Request::from_parts(parts, Body::from(bytes)), limit).await?
        }
    };
    let webhook_url = match (form_webhook, query_webhook) {
        (Some(f), Some(q)) if f != q => {
            return Err(ApiError::InvalidRequest(
                "webhook_url was given twice with different values (form field and query); give it once".into(),
            ));
        }
        (f, q) => f.or(q),
    };

    let accepted = submit(
        &app,
        Submission {
            csv: &csv,
            webhook_url,
            id: idempotency_key.map_or(RequestId::Random, RequestId::IdempotencyKey),
            client,
        },
    )
    .await?;
    let view = views::SubmitView::from(accepted);
    // A path of ASCII and a UUID: always a valid header value.
    let location = HeaderValue::try_from(view.status_url.as_str())
        .unwrap_or(HeaderValue::from_static("/v1/requests"));
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

/// The `file` part (required) and the `webhook_url` part (optional).
async fn read_form(request: Request, limit: usize) -> Result<(Bytes, Option<String>), ApiError> {
    let bad =
        |why: String| ApiError::InvalidRequest(format!("the multipart form is malformed: {why}"));
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| bad(e.body_text()))?;
    let mut file = None;
    let mut webhook = None;
    while let Some(field) = form.next_field().await.map_err(|e| bad(e.body_text()))? {
        match field.name() {
            Some("file") => {
                if file.is_some() {
                    return Err(ApiError::InvalidRequest(
                        "send exactly one file field".into(),
                    ));
                }
                let bytes = field.bytes().await.map_err(|e| bad(e.body_text()))?;
                if bytes.len() > limit {
                    return Err(ApiError::PayloadTooLarge(limit));
                }
                file = Some(bytes);
            }
            Some("webhook_url") => {
                let text = field.text().await.map_err(|e| bad(e.body_text()))?;
                webhook = Some(text.trim().to_owned()).filter(|t| !t.is_empty());
            }
            _ => {}
        }
    }
    let file = file.ok_or_else(|| {
        ApiError::InvalidRequest("the form has no file field: attach the CSV as \"file\"".into())
    })?;
    Ok((file, webhook))
}
