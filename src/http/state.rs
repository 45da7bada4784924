//! What every HTTP handler can see: the apps, the store, the allowlist, the dispatcher, the API
//! tokens and the memory of recent callbacks.
//!
//! Must never: print a token.

use std::sync::Arc;

use super::retries::Recent;
use crate::allowlist::Allowlist;
use crate::api_token::ApiToken;
use crate::app::{App, Apps};
use crate::dispatch::Dispatcher;
use crate::live::Live;
use crate::received::Received;
use crate::store::Store;

/// What every handler can see. Shared behind one `Arc`: axum clones the state for every request,
/// and one reference count is cheaper than one per field.
pub type AppState = Arc<Handlers>;

/// The fields of [`AppState`].
pub struct Handlers {
    pub apps: Apps,
    pub store: Arc<dyn Store>,
    pub allowlist: Live<Allowlist>,
    pub dispatcher: Arc<Dispatcher>,
    /// Bearer tokens for /api; empty means the API is off.
    pub api_tokens: Live<Vec<ApiToken>>,
    /// Envelope AgentIDs already warned about.
    pub agent_ids: Arc<AgentIds>,
    /// The files members sent, served by signed links.
    pub received: Arc<Received>,
    /// Callbacks signed further than this from now are refused (zero: no window).
    pub replay_window: std::time::Duration,
    /// Callbacks this process stored, so WeCom's retries of them skip the store.
    pub recent: Recent,
    /// The AI bots: their connections' state for `/ready`, and URL mode's callbacks.
    pub aibots: crate::aibot::Bots,
}

/// Envelope AgentIDs seen that are not the AgentId of the app whose token and key opened the
/// callback. The signature proves which app it is, so the callback is accepted, but a mismatch
/// usually means a mistyped `agent_id`: warned about once per app and AgentID.
#[derive(Default)]
pub struct AgentIds(std::sync::Mutex<std::collections::HashSet<(String, String)>>);

/// Warnings are remembered for at most this many distinct AgentIDs.
const AGENT_ID_MEMORY: usize = 1000;

impl AgentIds {
    pub(super) fn check(&self, app: &App, seen: &str) {
        let seen = seen.trim();
        if seen == app.config.agent_id.to_string() {
            return;
        }
        let mut warned = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if warned.len() >= AGENT_ID_MEMORY
            || !warned.insert((app.config.name.clone(), seen.to_owned()))
        {
            return;
        }
        tracing::warn!(app = %app.config.name, configured_agent_id = app.config.agent_id, callback_agent_id = ?seen,
            "a callback for AgentID {seen:?} was opened with app {:?}'s token and key, whose agent_id is {}: accepted; check the app's agent_id in the configuration (this warning is shown once)",
            app.config.name, app.config.agent_id);
    }
}
