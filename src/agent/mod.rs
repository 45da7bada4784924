//! Agents: whatever answers a member's message. The trait is the whole contract between the gateway
//! and an agent backend; `build` turns configuration into one.
//!
//! Must never: send to WeCom itself (the worker does), see messages that are not chat turns, or pass
//! the gateway's secrets to an agent.

pub mod command;
pub mod config;
pub mod echo;
pub mod http;
pub mod openai;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::config::{AgentConfig, AgentKind};
use crate::inbox::History;
use crate::message::{Event, InboundMessage, MessageKind};

pub use echo::EchoAgent;

/// One member's message, as an agent sees it.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    /// Name of the app the member wrote to.
    pub app: &'a str,
    pub corp_id: &'a str,
    pub user_id: &'a str,
    /// `corp_id:user_id`: the key for per-user state such as conversation history.
    pub user_key: &'a str,
    pub message: &'a InboundMessage,
}

impl Turn<'_> {
    /// The turn as the JSON document the http and command agents receive.
    pub fn to_json(&self) -> Value {
        let m = self.message;
        let mut doc = json!({
            "app": self.app,
            "corp_id": self.corp_id,
            "user_id": self.user_id,
            // App callbacks are one-to-one chats; the field is there for group sources.
            "chat_id": Value::Null,
            "msg_type": m.msg_type,
            "message_id": m.msg_id,
            "create_time": m.create_time,
            "text": match &m.kind {
                MessageKind::Text { content } => content.clone(),
                _ => m.describe(),
            },
            "raw": m.raw,
        });
        let extra = match &m.kind {
            MessageKind::Image { pic_url, media_id } => {
                json!({ "media_id": media_id, "pic_url": pic_url })
            }
            MessageKind::Voice { media_id, format } => {
                json!({ "media_id": media_id, "format": format })
            }
            MessageKind::Video {
                media_id,
                thumb_media_id,
            } => {
                json!({ "media_id": media_id, "thumb_media_id": thumb_media_id })
            }
            MessageKind::File {
                media_id,
                file_name,
            } => json!({ "media_id": media_id, "file_name": file_name }),
            MessageKind::Location {
                latitude,
                longitude,
                scale,
                label,
            } => {
                json!({ "location": { "latitude": latitude, "longitude": longitude, "scale": scale, "label": label } })
            }
            MessageKind::Link {
                title,
                description,
                url,
                pic_url,
            } => {
                json!({ "link": { "title": title, "description": description, "url": url, "pic_url": pic_url } })
            }
            MessageKind::Event(Event::Click { key }) => {
                json!({ "event": "click", "event_key": key })
            }
            _ => json!({}),
        };
        if let (Some(doc), Value::Object(extra)) = (doc.as_object_mut(), extra) {
            doc.extend(extra);
        }
        doc
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("agent timed out after {0} s")]
    Timeout(u64),
    #[error("agent failed: {0}")]
    Failed(String),
}

#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str;
    /// The replies to this turn, each sent as its own message, in order; empty for no reply.
    /// May take minutes.
    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<String>, AgentError>;
}

/// The agent a configuration describes. `store` keeps per-user state (conversation history).
pub fn build(config: &AgentConfig, store: Arc<dyn History>) -> Result<Arc<dyn Agent>, String> {
    Ok(match &config.kind {
        AgentKind::Echo => Arc::new(EchoAgent {
            delay: Duration::from_millis(config.delay_ms),
        }),
        AgentKind::Http(c) => Arc::new(http::HttpAgent::new(c.clone())?),
        AgentKind::Command(c) => Arc::new(command::CommandAgent::new(c.clone())),
        AgentKind::Openai(c) => Arc::new(openai::OpenAiAgent::new(c.clone(), store)?),
    })
}
