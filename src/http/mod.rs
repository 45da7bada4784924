//! The HTTP surface: routes, shared state, body limit and request tracing.
//!
//! Must never: answer 5xx for a client's mistake, or log query strings (the span records method and
//! path only).

pub mod aibot;
pub mod api;
pub mod callback;
pub mod error;
pub mod health;
pub mod media;
pub mod retries;
pub mod state;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::get;
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

pub use state::{AppState, Handlers};

pub fn router(state: AppState, callback_path: &str, max_body_bytes: usize) -> Router {
    let trace = TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
        tracing::info_span!("http", method = %req.method(), path = ?req.uri().path())
    });
    // tower-http enforces the body limit (413), including for bodies without Content-Length; the
    // error-shaping layer sits outside it, so its 413 is shaped like every other error.
    let limit = || RequestBodyLimitLayer::new(max_body_bytes);
    let mut router = Router::new()
        .route(
            callback_path,
            get(callback::verify_url).post(callback::receive),
        )
        .route(
            "/wecom/aibot/{name}",
            get(aibot::verify_url).post(aibot::receive),
        )
        .layer(limit())
        .layer(middleware::map_response(callback::count_too_large))
        .layer(middleware::map_response(error::empty_errors))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route(
            "/api/v1/media/{sha256}",
            get(media::serve).layer(middleware::map_response(error::json_errors)),
        );
    // Always routed: tokens may arrive with a reload; without any, every request gets 404.
    let api = api::routes(state.clone())
        .layer(limit())
        .layer(middleware::map_response(error::json_errors));
    router = router.nest("/api/v1", api);
    router
        .with_state(state)
        .layer(DefaultBodyLimit::disable())
        .layer(trace)
}
