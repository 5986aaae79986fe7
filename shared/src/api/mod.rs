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
use axum::{Extension, Json, Router};
use serde_json::json;
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

/// Who is calling a `/v1` route: the client whose token came with the
/// call, or `None` when the API runs without tokens. Handlers take it
/// from the request's extensions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller(pub Option<String>);

/// `Authorization: Bearer <token>` on every `/v1` route when tokens are
/// set; the matching client becomes the call's [`Caller`]. Tokens are
/// compared in constant time (`Config::client_of_token`) and never logged.
async fn require_token(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let caller = if app.config.clients.is_empty() {
        None
    } else {
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
        match app.config.client_of_token(given) {
            Some(client) if !given.is_empty() => Some(client.to_owned()),
            _ => return ApiError::Unauthorized.into_response(),
        }
    };
    request.extensions_mut().insert(Caller(caller));
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
    Extension(caller): Extension<Caller>,
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
    let page = status::status(&app, caller.0.as_deref(), id, bounds, cursor.as_deref()).await?;
    Ok(Json(StatusView::new(&page)).into_response())
}

/// The stored output CSV: on S3 a redirect to it (any size, never through
/// the function), locally its bytes.
async fn get_output_csv(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = request_id(path)?;
    let download = status::output_csv(&app, caller.0.as_deref(), id).await?;
    let disposition =
        files::csv_disposition(&results_key(id)).unwrap_or(HeaderValue::from_static("attachment"));
    Ok(files::answer(download, Some(disposition)))
}
