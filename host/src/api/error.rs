//! The API's error type: a [`WireError`] rendered as the JSON error body with the
//! code's HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::wire::{ErrorCode, WireError};
use serde_json::json;

/// An API error.
#[derive(Debug)]
pub struct ApiError(pub WireError);

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(WireError::new(code, message))
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({"error": {"code": self.0.code, "message": self.0.message}});
        (status, axum::Json(body)).into_response()
    }
}
