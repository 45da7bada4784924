//! What the HTTP surface answers when it cannot do what was asked: the one place that decides each
//! status code, for the callback and the push API alike.
//!
//! - the client's mistake → 4xx, with the reason;
//! - no room, busy, shutting down, or the store unreachable → 503: try later (WeCom retries);
//! - a write that failed → 500.
//!
//! The API answers `{"error": reason}`; the callback answers with an empty body (WeCom reads only
//! the status) and the reason goes to the log, except no room in the store, which the store logs
//! itself without a line per refusal (`store/refusals.rs`).
//!
//! Must never: put a secret in a reason, or answer 5xx for the client's mistake.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token (Authorization: Bearer <token>)")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is ambiguous as given (a bare UserID known in two corps).
    #[error("{0}")]
    Conflict(String),
    #[error("this endpoint does not take that method")]
    MethodNotAllowed,
    #[error("the request body is larger than max_body_bytes")]
    TooLarge,
    #[error("{0}")]
    Unavailable(String),
    /// No room in the store: 503, and not logged here (the store logs it without flooding).
    #[error("{0}")]
    NoRoom(String),
    #[error("{0}")]
    Internal(String),
}

impl HttpError {
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HttpError::Unauthorized => StatusCode::UNAUTHORIZED,
            HttpError::Forbidden(_) => StatusCode::FORBIDDEN,
            HttpError::NotFound(_) => StatusCode::NOT_FOUND,
            HttpError::Conflict(_) => StatusCode::CONFLICT,
            HttpError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::Unavailable(_) | HttpError::NoRoom(_) => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error as the push API answers it: JSON, and a challenge on 401.
    pub fn json_response(&self) -> Response {
        let mut response =
            (self.status(), Json(json!({ "error": self.to_string() }))).into_response();
        if *self == HttpError::Unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }

    /// Log it at the level it deserves: the server's trouble is an error, the client's a notice.
    pub fn log(&self, surface: &str, check: &str) {
        if let HttpError::NoRoom(_) = self {
            return;
        }
        let status = self.status().as_u16();
        if self.status().is_server_error() {
            tracing::error!(check, status, "{surface} not accepted: {self}");
        } else {
            tracing::warn!(check, status, "{surface} rejected: {self}");
        }
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Full { .. }
            | StoreError::StoreFull(_)
            | StoreError::Closed
            | StoreError::Unavailable(_) => HttpError::Unavailable(e.to_string()),
            StoreError::NoRoom(_) => HttpError::NoRoom(e.to_string()),
            StoreError::Storage(_) => HttpError::Internal(e.to_string()),
        }
    }
}

/// The status of an error response made outside the handlers (the body-size limit, an unknown
/// route or method), as the [`HttpError`] it stands for.
pub fn from_status(status: StatusCode) -> Option<HttpError> {
    Some(match status {
        StatusCode::PAYLOAD_TOO_LARGE => HttpError::TooLarge,
        StatusCode::NOT_FOUND => HttpError::NotFound("no such endpoint".into()),
        StatusCode::METHOD_NOT_ALLOWED => HttpError::MethodNotAllowed,
        s if s.is_client_error() => {
            HttpError::BadRequest(s.canonical_reason().unwrap_or("bad request").to_owned())
        }
        s if s.is_server_error() => {
            HttpError::Internal(s.canonical_reason().unwrap_or("internal error").to_owned())
        }
        _ => return None,
    })
}

/// Middleware for /api: every error answer is JSON, including those made by layers.
pub async fn json_errors(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    match from_status(response.status()) {
        Some(error) if !is_json => error.json_response(),
        _ => response,
    }
}

/// Middleware for the callback: error answers have an empty body, whoever made them.
pub async fn empty_errors(response: Response) -> Response {
    if response.status().is_client_error() || response.status().is_server_error() {
        let (mut parts, _) = response.into_parts();
        parts.headers.remove(header::CONTENT_TYPE);
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::empty());
    }
    response
}
