//! The hermes agent: Hermes Agent's OpenAI-compatible API server, which keeps each conversation
//! (and its memory and tools) itself. Only the new message is sent, with `X-Hermes-Session-Id`
//! naming the member's session, so Hermes threads every WeCom member separately.
//!
//! Owns: the session id of each member (stable, derived from `corp_id:user_id`, until `/reset`
//! starts a new one, kept in the store so it survives restarts and is shared by replicas).
//!
//! Must never: log or echo the API key, or send one member's session id with another's message.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::json;
use sha2::{Digest, Sha256};

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
}

/// Where a member's current session id is kept (one entry, in the conversation store).
fn session_key(user_key: &str) -> String {
    format!("hermes-session:{user_key}")
}

impl HermesAgent {
    pub fn new(config: HermesConfig, store: Arc<dyn History>) -> Result<Self, SetupError> {
        let http = api_client(config.timeout)?;
        Ok(HermesAgent {
            http,
            config,
            store,
        })
    }

    fn storage(e: impl std::fmt::Display) -> AgentError {
        AgentError::Failed(format!("hermes session: {e}"))
    }

    /// The member's session: the one `/reset` last started, else one derived from who they are.
    /// Per app and member: two apps of one corp are two conversations.
    async fn session(&self, app: &str, user_key: &str) -> Result<String, AgentError> {
        let key = format!("{app}/{user_key}");
        let stored = self.store.history(&session_key(&key), 1).await;
        let stored = stored.map_err(Self::storage)?.pop().map(|e| e.content);
        Ok(stored.unwrap_or_else(|| {
            let hash = hex::encode(Sha256::digest(key.as_bytes()));
            format!("wecom-{}", &hash[..32])
        }))
    }

    async fn new_session(&self, app: &str, user_key: &str) -> Result<(), AgentError> {
        let user_key = &format!("{app}/{user_key}");
        let id = format!("wecom-{}", hex::encode(rand::random::<[u8; 16]>()));
        let entry = HistoryEntry {
            role: Role::Assistant,
            content: id,
        };
        let key = session_key(user_key);
        self.store
            .append_history(&key, vec![entry], 1)
            .await
            .map_err(Self::storage)
    }
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
        let mut text = match &turn.message.kind {
            MessageKind::Text { content } => content.clone(),
            _ => turn.message.describe(),
        };
        match text.trim() {
            "/reset" | "/new" => {
                self.new_session(turn.channel.name(), turn.user_key).await?;
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
        let session = self.session(turn.channel.name(), turn.user_key).await?;
        let body = json!({
            "model": self.config.model,
            "messages": [{ "role": "user", "content": text }],
        });
        let url = format!("{}/chat/completions", self.config.base_url);
        let key = self.config.api_key.as_ref();
        let headers = [(SESSION_HEADER, session)];
        let answer =
            chat_completion(&self.http, &url, key, &body, &headers, self.config.timeout).await?;
        Ok(match answer.is_empty() {
            true => Vec::new(),
            false => vec![AppMessage::text(answer)],
        })
    }
}
