//! `GET /health`: liveness for Docker (always `{"status":"ok"}` while the process serves).
//! `GET /ready`: readiness for load balancers: 200 when the store takes writes, else 503, with the
//! checks in the body. WeCom's own trouble (no access token: WeCom down, 60020, a wrong secret) is
//! reported as a warning and never fails readiness: that would take every replica out of the load
//! balancer at once and turn a WeCom outage into refused callbacks.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::state::AppState;

pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = state.store.ready().await;
    let mut warnings: Vec<String> = (state.apps.iter())
        .filter_map(|app| {
            let problem = app.tokens.problem()?;
            // On a public port: the errcode and what to check, not WeCom's message (60020's
            // names this server's IP).
            let why = match problem.errcode() {
                Some(code) => match crate::wecom::error::hint(code) {
                    Some(hint) => format!("WeCom errcode {code} ({hint})"),
                    None => format!("WeCom errcode {code}"),
                },
                None => "WeCom could not be reached".to_owned(),
            };
            Some(format!(
                "app {:?} cannot get an access token: {why}",
                app.config.name
            ))
        })
        .collect();
    warnings.extend(state.aibots.warnings());
    let (status, ready) = match &store {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready"),
    };
    if let Err(e) = &store {
        tracing::warn!(error = %e, "not ready: the store does not take writes");
    }
    let body = json!({
        "status": ready,
        "checks": [{ "name": "store", "ok": store.is_ok(), "error": store.err().map(|e| e.to_string()) }],
        "warnings": warnings,
    });
    (status, Json(body))
}
