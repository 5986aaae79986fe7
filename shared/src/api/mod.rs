//! The HTTP API (SPEC §2): one axum `Router`, served by `lambda_http` on
//! AWS and by `axum::serve` locally.

pub mod error;
pub mod files;
pub mod page;
mod submit;
pub mod views;

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::domain::results_key;
use crate::services::{App, status};
pub use error::ApiError;
use views::StatusView;

/// The whole API. `App` carries the adapters; no route is written twice.
pub fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route("/v1/requests", post(submit::create_request))
        .route("/v1/requests/{id}", get(get_status))
        .route("/v1/requests/{id}/output.csv", get(get_output_csv))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token));
    Router::new()
        .merge(v1)
        .merge(page::routes())
        .merge(files::routes())
        .route("/health", get(health))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // Upload limits are enforced by the submit handler itself, with the
        // contract's error body.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            error::error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "an internal error occurred; try again",
            )
        }))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(app)
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `Authorization: Bearer <token>` on every `/v1` route when a token is set.
/// Digests are compared in constant time, so neither content nor length leaks.
async fn require_token(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Some(token) = &app.config.api_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or("");
        let ok: bool = Sha256::digest(given.as_bytes())
            .ct_eq(&Sha256::digest(token.expose().as_bytes()))
            .into();
        if !ok || given.is_empty() {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

fn request_id(path: Result<Path<String>, PathRejection>) -> Result<Uuid, ApiError> {
    let Path(raw) = path.map_err(|_| ApiError::NotFound)?;
    Uuid::parse_str(&raw).map_err(|_| ApiError::NotFound)
}

/// Query parameters by name (the first of repeated ones).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn get_status(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = request_id(path)?;
    let limit = status::parse_limit(query_param(query.as_deref(), "limit").as_deref())?;
    let cursor = query_param(query.as_deref(), "cursor");
    let bounds = status::PageBounds {
        limit,
        budget: status::PAGE_BUDGET_BYTES,
        measure: views::product_wire_len,
    };
    let page = status::status(&app, id, bounds, cursor.as_deref()).await?;
    Ok(Json(StatusView::new(&page)).into_response())
}

/// The stored output CSV: on S3 a redirect to it (any size, never through
/// the function), locally its bytes.
async fn get_output_csv(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = request_id(path)?;
    let download = status::output_csv(&app, id).await?;
    let disposition =
        files::csv_disposition(&results_key(id)).unwrap_or(HeaderValue::from_static("attachment"));
    Ok(files::answer(download, Some(disposition)))
}
