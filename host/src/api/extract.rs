//! Extractors: JSON bodies and query strings with rejections in our error format, and
//! who is calling.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use common::wire::ErrorCode;

use super::error::ApiError;

/// `axum::Json`, but with rejections in our error format.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

/// `axum::extract::Query`, but with rejections in our error format (`bad_request`).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError::new(ErrorCode::BadRequest, rejection.body_text())),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ErrorCode::PayloadTooLarge
    } else {
        ErrorCode::BadRequest
    };
    ApiError::new(code, rejection.body_text())
}

/// Who is calling, from the Unix socket's peer credentials (SO_PEERCRED): the
/// process that opened the connection, as the kernel saw it then.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller {
    /// The peer's user id.
    pub uid: Option<u32>,
    /// The peer's (primary) group id.
    pub gid: Option<u32>,
    /// The peer's process id.
    pub pid: Option<i32>,
}

impl Caller {
    pub fn of(stream: &tokio::net::UnixStream) -> Caller {
        match stream.peer_cred() {
            Ok(cred) => Caller {
                uid: Some(cred.uid()),
                gid: Some(cred.gid()),
                pid: cred.pid(),
            },
            Err(_) => Caller::default(),
        }
    }
}
