//! The HTTP surface: routes, shared state, body limit and request tracing.
//!
//! Must never: answer 5xx for a client's mistake, or log query strings (the span records method and
//! path only).

pub mod api;
pub mod callback;
pub mod health;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

use secrecy::SecretString;

use crate::app::Apps;
use crate::config::Allowlist;
use crate::inbox::Inbox;
use crate::outbound::Dispatcher;

/// What every handler can see.
#[derive(Clone)]
pub struct AppState {
    pub apps: Apps,
    pub inbox: Arc<dyn Inbox>,
    pub allowlist: Arc<Allowlist>,
    pub dispatcher: Arc<Dispatcher>,
    /// Bearer tokens for /api; empty means the API is off.
    pub api_tokens: Arc<Vec<SecretString>>,
}

pub fn router(state: AppState, callback_path: &str, max_body_bytes: usize) -> Router {
    let trace = TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
        tracing::info_span!("http", method = %req.method(), path = %req.uri().path())
    });
    let mut router = Router::new()
        .route(
            callback_path,
            get(callback::verify_url).post(callback::receive),
        )
        .route("/health", get(health::health));
    if !state.api_tokens.is_empty() {
        router = router.nest("/api/v1", api::routes(state.clone()));
    }
    router
        .with_state(state)
        // tower-http enforces the limit (413), including for bodies without Content-Length.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(max_body_bytes))
        .layer(trace)
}
