//! The one place where errors become HTTP answers (SPEC §2, Errors).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::csv_input::Issue;
use crate::services::ServiceError;

#[derive(Debug)]
pub enum ApiError {
    Service(ServiceError),
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge(usize),
    UnsupportedMediaType(String),
    InvalidRequest(String),
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        Self::Service(e)
    }
}

impl ApiError {
    fn parts(self) -> (StatusCode, &'static str, String, Vec<Issue>) {
        match self {
            Self::Service(ServiceError::InvalidCsv(issues)) => {
                let message = invalid_csv_message(issues.len());
                (StatusCode::BAD_REQUEST, "invalid_csv", message, issues)
            }
            Self::Service(ServiceError::InvalidRequest(m)) | Self::InvalidRequest(m) => {
                (StatusCode::BAD_REQUEST, "invalid_request", m, vec![])
            }
            Self::Service(ServiceError::NotFound) | Self::NotFound => {
                (StatusCode::NOT_FOUND, "not_found", "no such resource".into(), vec![])
            }
            Self::Service(ServiceError::NotReady) => (
                StatusCode::CONFLICT,
                "not_ready",
                "the request is still being processed; the output CSV is ready once its status is terminal".into(),
                vec![],
            ),
            Self::Service(ServiceError::Conflict(m)) => (StatusCode::CONFLICT, "conflict", m, vec![]),
            Self::Service(ServiceError::Backend(e)) => {
                // Logged here, never shown: a 500 does not leak internals.
                tracing::error!(error = %e, "backend failure");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "an internal error occurred; try again".into(), vec![])
            }
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid API token is required: send Authorization: Bearer <token>".into(),
                vec![],
            ),
            Self::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "this method is not allowed here".into(), vec![])
            }
            Self::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the upload is larger than {limit} bytes; split the CSV or use the S3 drop"),
                vec![],
            ),
            Self::UnsupportedMediaType(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", m, vec![]),
        }
    }
}

/// The message of an invalid-CSV answer, over HTTP and in the report of a
/// rejected S3 drop alike.
pub fn invalid_csv_message(problems: usize) -> String {
    format!(
        "the CSV is invalid: {problems} problem{} found, listed in details; nothing was stored",
        if problems == 1 { "" } else { "s" }
    )
}

/// The shape of every error a client reads (SPEC §2, Errors).
pub fn error_body(code: &str, message: &str, details: &[Issue]) -> serde_json::Value {
    json!({"error": {"code": code, "message": message, "details": details}})
}

/// The error body for a status and code, for errors raised outside handlers.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(error_body(code, message, &[]))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = matches!(self, Self::Unauthorized);
        let (status, code, message, details) = self.parts();
        let mut response = (status, Json(error_body(code, &message, &details))).into_response();
        if unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
