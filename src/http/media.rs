//! `GET /api/v1/media/{sha256}?expires=…&sig=…`: the files members sent, for agents that run on
//! another host than the gateway. The link's signature is the whole authorisation, so it works
//! whether or not API tokens are configured.
//!
//! Must never: serve a file without a valid, unexpired signature, or let a browser treat a
//! member's file as a page of this origin (it is sent as an attachment, never sniffed).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::api::ApiFailure;
use super::error::HttpError;
use super::state::AppState;

pub(super) async fn serve(
    State(state): State<AppState>,
    Path(sha256): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiFailure> {
    let forbidden = |why: &str| ApiFailure(HttpError::Forbidden(why.to_owned()));
    let not_kept = "no such file: it was never received here, or the retention period deleted it";
    // Files are named by their SHA-256: nothing else is looked up at all.
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(ApiFailure(HttpError::NotFound(not_kept.into())));
    }
    let (Some(expires), Some(sig)) = (query.get("expires"), query.get("sig")) else {
        return Err(forbidden(
            "a media link needs its expires and sig parameters",
        ));
    };
    let expires: u64 = expires
        .parse()
        .map_err(|_| forbidden("the link's expires is not a time"))?;
    let left = state.received.verify(&sha256, expires, sig).await?;
    let left = left.map_err(|e| forbidden(&e.to_string()))?;
    let Some((record, file)) = state.received.open(&sha256).await? else {
        return Err(ApiFailure(HttpError::NotFound(not_kept.into())));
    };
    // A content type WeCom gave that is not a valid header value is served as bytes.
    let content_type = Some(record.content_type.as_str())
        .filter(|t| HeaderValue::from_str(t).is_ok())
        .unwrap_or("application/octet-stream");
    let name = record.file_name.as_deref().unwrap_or(&record.sha256);
    let encoded = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    let headers = [
        (header::CONTENT_TYPE, content_type.to_owned()),
        (header::CONTENT_LENGTH, record.size.to_string()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename*=UTF-8''{encoded}"),
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        (header::CACHE_CONTROL, format!("private, max-age={left}")),
    ];
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((headers, body).into_response())
}
