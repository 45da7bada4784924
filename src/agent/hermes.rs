//! The hermes agent: Hermes Agent's OpenAI-compatible API server, which keeps each conversation
//! (and its memory and tools) itself. Only the new message is sent, with `X-Hermes-Session-Id`
//! naming the member's session, so Hermes threads every WeCom member separately, and
//! `X-Hermes-Session-Key` naming the member, so Hermes's long-term memory outlives sessions.
//!
//! Owns: the session id of each member (derived from the app and `corp_id:user_id` until `/reset`
//! starts a new one or Hermes answers with another, after compressing the session into a new one;
//! kept in the store so it survives restarts and is shared by replicas), and the member's session
//! key (derived from the same, never changed).
//!
//! Must never: log or echo the API key, or send one member's session id or key with another's
//! message.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::answer_text;
use super::openai::{api_client, api_lines, chat_completion, HELP, RESET_DONE};
use super::turn::{Agent, AgentError, SetupError, Turn};
use crate::message::MessageKind;
use crate::store::{History, HistoryEntry, Role};
use crate::wecom::AppMessage;

/// Where Hermes's API server listens by default.
pub const DEFAULT_BASE_URL: &str = "http://127.0.0.1:8642/v1";
/// The variable Hermes keeps its API server key in.
pub const DEFAULT_API_KEY_ENV: &str = "API_SERVER_KEY";
/// Hermes turns take minutes: tools, browsing, sub-agents.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_ACK_AFTER: Duration = Duration::from_secs(10);
const SESSION_HEADER: &str = "X-Hermes-Session-Id";
const SESSION_KEY_HEADER: &str = "X-Hermes-Session-Key";
/// Hermes refuses longer session headers; a longer id in its answer is not one to send back.
const SESSION_HEADER_MAX: usize = 256;

/// Hermes's API server.
#[derive(Debug, Clone)]
pub struct HermesConfig {
    /// Up to and including `/v1`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<SecretString>,
    pub timeout: Duration,
}

impl HermesConfig {
    /// check-config's lines: whether there is an API key, never the key.
    pub(crate) fn shown(&self) -> Vec<String> {
        let key = self.api_key.as_ref();
        api_lines(&self.base_url, &self.model, key, self.timeout)
    }
}

pub struct HermesAgent {
    http: reqwest::Client,
    config: HermesConfig,
    store: Arc<dyn History>,
    /// An answer's images by path are sent from these (`media.agent_dirs`).
    agent_dirs: Vec<PathBuf>,
}

/// One member of one app: two apps of one corp are two conversations.
fn member(app: &str, user_key: &str) -> String {
    format!("{app}/{user_key}")
}

/// Where a member's current session id is kept (one entry, in the conversation store).
fn stored_session(member: &str) -> String {
    format!("hermes-session:{member}")
}

/// `wecom-` and 32 hex digits of a hash of `what`: stable, a valid header value whatever the app
/// and member are called, and naming no one.
fn derived(what: &str) -> String {
    let hash = hex::encode(Sha256::digest(what.as_bytes()));
    format!("wecom-{}", &hash[..32])
}

/// The member's session key: the same for every session of theirs, so a Hermes memory provider
/// keeps what it learns across `/reset` and compression.
fn session_key(member: &str) -> String {
    derived(&format!("memory:{member}"))
}

impl HermesAgent {
    pub fn new(
        config: HermesConfig,
        store: Arc<dyn History>,
        agent_dirs: Vec<PathBuf>,
    ) -> Result<Self, SetupError> {
        let http = api_client(config.timeout)?;
        Ok(HermesAgent {
            http,
            config,
            store,
            agent_dirs,
        })
    }

    fn storage(e: impl std::fmt::Display) -> AgentError {
        AgentError::Failed(format!("hermes session: {e}"))
    }

    /// The member's session: the one last kept (by `/reset`, or from Hermes's answer), else one
    /// derived from who they are.
    async fn session(&self, member: &str) -> Result<String, AgentError> {
        let stored = self.store.history(&stored_session(member), 1).await;
        let stored = stored.map_err(Self::storage)?.pop().map(|e| e.content);
        Ok(stored.unwrap_or_else(|| derived(member)))
    }

    /// Use `id` for the member's next turns.
    async fn keep_session(&self, member: &str, id: String) -> Result<(), AgentError> {
        let entry = HistoryEntry {
            role: Role::Assistant,
            content: id,
        };
        self.store
            .append_history(&stored_session(member), vec![entry], 1)
            .await
            .map_err(Self::storage)
    }
}

/// The session Hermes says it used, when it is not the one asked for (it compressed that one into
/// a new session) and is one that can be sent back.
fn rotated(headers: &reqwest::header::HeaderMap, sent: &str) -> Option<String> {
    let id = headers.get(SESSION_HEADER)?.to_str().ok()?.trim();
    let usable = !id.is_empty() && id.len() <= SESSION_HEADER_MAX;
    (usable && id != sent).then(|| id.to_owned())
}

#[async_trait]
impl Agent for HermesAgent {
    fn name(&self) -> &str {
        "hermes"
    }

    /// Hermes sees a card click as `[card click] KEY`; other events mean nothing to it.
    fn takes_event(&self, event: &str) -> bool {
        event == "template_card_event"
    }

    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
        let member = member(turn.channel.name(), turn.user_key);
        let mut text = match &turn.message.kind {
            MessageKind::Text { content } => content.clone(),
            _ => turn.message.describe(),
        };
        match text.trim() {
            "/reset" | "/new" => {
                let id = format!("wecom-{}", hex::encode(rand::random::<[u8; 16]>()));
                self.keep_session(&member, id).await?;
                return Ok(vec![AppMessage::text(RESET_DONE)]);
            }
            "/help" => return Ok(vec![AppMessage::text(HELP)]),
            _ => {}
        }
        // Hermes runs tools on the gateway's host or reaches it by URL: tell it where the file is.
        if let Some(media) = turn.media.filter(|m| m.error.is_none()).map(|m| &m.info) {
            if let Some(path) = &media.path {
                text.push_str(&format!("\n(file: {})", path.display()));
            }
            if let Some(url) = &media.url {
                text.push_str(&format!("\n(url: {url})"));
            }
        }
        let session = self.session(&member).await?;
        let body = json!({
            "model": self.config.model,
            "messages": [{ "role": "user", "content": text }],
        });
        let url = format!("{}/chat/completions", self.config.base_url);
        let key = self.config.api_key.as_ref();
        let headers = [
            (SESSION_HEADER, session.clone()),
            (SESSION_KEY_HEADER, session_key(&member)),
        ];
        let timeout = self.config.timeout;
        let answer = chat_completion(
            &self.http,
            &url,
            key,
            &body,
            &headers,
            timeout,
            turn.partial,
        )
        .await?;
        if let Some(id) = rotated(&answer.headers, &session) {
            // Hermes has answered: the member gets it even if the new id cannot be kept (the next
            // turn then goes to the old id, as before a rotation).
            if let Err(e) = self.keep_session(&member, id).await {
                tracing::warn!(error = %e, "cannot keep the session id Hermes moved to");
            }
        }
        Ok(answer_text::messages(&answer.text, &self.agent_dirs))
    }
}
