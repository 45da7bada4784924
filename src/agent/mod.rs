//! Agents: whatever answers a member's message. The trait is the whole contract between the gateway
//! and an agent backend; `build` turns configuration into one.
//!
//! Must never: send to WeCom itself (the worker does), see messages that are not chat turns, or pass
//! the gateway's secrets to an agent.

pub mod command;
pub mod echo;
pub mod hermes;
pub mod http;
pub mod openai;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::inbox::History;
use crate::message::{Event, InboundMessage, MessageKind};
use crate::received::Fetched;
use crate::wecom::AppMessage;

pub use command::CommandAgentConfig;
pub use echo::EchoAgent;
pub use hermes::HermesConfig;
pub use http::HttpAgentConfig;
pub use openai::OpenAiConfig;

pub const DEFAULT_ACK_MESSAGE: &str = "收到，正在处理…";
pub const DEFAULT_FAILURE_MESSAGE: &str = "抱歉，处理这条消息时出错了，请稍后再试。";
/// Which agent answers, and how the chat feels around it.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub kind: AgentKind,
    /// echo only: wait this long before answering (simulates a slow agent).
    pub delay_ms: u64,
    /// Send `ack_message` once if the agent has not answered after this long.
    pub ack_after: Option<Duration>,
    pub ack_message: String,
    /// Withdraw the receipt (message/recall) once the reply is out.
    pub ack_recall: bool,
    /// Sent instead of silence when the agent fails or times out.
    pub failure_message: String,
    /// Which events (besides menu clicks, always) reach the agent.
    pub events: Events,
}

/// `agent.events`: `all`, `none`, or a list of event names as WeCom spells them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Events {
    All,
    Only(Vec<String>),
}

impl Default for Events {
    /// Clicks on the cards the agent sent: the answer to a card it asked.
    fn default() -> Self {
        Events::Only(vec!["template_card_event".into()])
    }
}

impl Events {
    pub fn allows(&self, event: &str) -> bool {
        match self {
            Events::All => true,
            Events::Only(names) => names.iter().any(|n| n.eq_ignore_ascii_case(event)),
        }
    }
}

impl std::fmt::Display for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Events::All => f.write_str("all"),
            Events::Only(names) if names.is_empty() => f.write_str("none"),
            Events::Only(names) => write!(f, "{names:?}"),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            kind: AgentKind::Echo,
            delay_ms: 0,
            ack_after: None,
            ack_message: DEFAULT_ACK_MESSAGE.into(),
            ack_recall: false,
            failure_message: DEFAULT_FAILURE_MESSAGE.into(),
            events: Events::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum AgentKind {
    Echo,
    Http(HttpAgentConfig),
    Command(CommandAgentConfig),
    Openai(OpenAiConfig),
    Hermes(HermesConfig),
}

impl AgentConfig {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            AgentKind::Echo => "echo",
            AgentKind::Http(_) => "http",
            AgentKind::Command(_) => "command",
            AgentKind::Openai(_) => "openai",
            AgentKind::Hermes(_) => "hermes",
        }
    }

    /// What would make this agent fail at its first message, found before it starts (for
    /// `check-config`): an openai agent with no key for a model API that is not on this network,
    /// a command whose program is not an executable file.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match &self.kind {
            AgentKind::Openai(c) if c.api_key.is_none() && !is_local(&c.base_url) => {
                problems.push(format!(
                    "kind openai has no API key for {}: set api_key, or api_key_env to a variable that is set (default OPENAI_API_KEY)",
                    c.base_url
                ))
            }
            AgentKind::Command(c) => {
                if let Err(why) = command::executable(&c.program, c.working_dir.as_deref()) {
                    problems.push(format!("program {:?}: {why}", c.program));
                }
            }
            _ => {}
        }
        problems
    }

    /// check-config's YAML lines for this agent (indented by `indent`), secrets hidden.
    pub fn redacted(&self, indent: &str) -> String {
        let mut lines = vec![format!("kind: {}", self.kind_name())];
        match &self.kind {
            AgentKind::Echo => lines.push(format!("delay_ms: {}", self.delay_ms)),
            AgentKind::Http(c) => lines.extend(c.shown()),
            AgentKind::Command(c) => lines.extend(c.shown()),
            AgentKind::Openai(c) => lines.extend(c.shown()),
            AgentKind::Hermes(c) => lines.extend(c.shown()),
        }
        let ack_after = self.ack_after.map(|d| d.as_secs_f64().to_string());
        lines.push(format!(
            "ack_after: {}",
            ack_after.as_deref().unwrap_or("off")
        ));
        if self.ack_recall {
            lines.push("ack_recall: true".into());
        }
        lines.push(format!("events: {}", self.events));
        lines
            .iter()
            .map(|line| format!("{indent}{line}\n"))
            .collect()
    }
}

/// A model API on this machine or a private network (Ollama, vLLM) may need no key.
fn is_local(base_url: &str) -> bool {
    let Some(host) = url::Url::parse(base_url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
    else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback(),
        Err(_) => host == "localhost" || !host.contains('.') || host.ends_with(".local"),
    }
}

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
    /// The file an image, voice, video or file message carried, as fetched from WeCom.
    pub media: Option<&'a Fetched>,
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
            MessageKind::Event(Event::TemplateCard {
                event_key,
                task_id,
                card_type,
                response_code,
            }) => json!({
                "event": "template_card_event", "event_key": event_key, "task_id": task_id,
                "card_type": card_type, "response_code": response_code,
            }),
            MessageKind::Event(other) => {
                json!({ "event": other.name(), "event_key": m.raw.get("EventKey") })
            }
            _ => json!({}),
        };
        if let (Some(doc), Value::Object(extra)) = (doc.as_object_mut(), extra) {
            doc.extend(extra);
        }
        if let Some(fetched) = self.media {
            doc["media"] = json!(fetched.info);
            doc["media_error"] = json!(fetched.error);
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
    /// Whether this kind of agent can answer the event (`agent.events` chooses among these).
    fn takes_event(&self, _event: &str) -> bool {
        true
    }
    /// The replies to this turn, each sent as its own message (text split at WeCom's limit), in
    /// order; empty for no reply. May take minutes.
    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError>;
}

/// Whether `doc` is an answer document: an object with `messages`, `replies`, `reply` or
/// `update_card`.
pub(crate) fn is_answer(doc: &Value) -> bool {
    let keys = ["messages", "replies", "reply", "update_card"];
    keys.iter().any(|k| doc.get(k).is_some())
}

/// An answer document: `{"messages": [items]}` (see `AppMessage::from_item`),
/// `{"replies": ["...", ...]}` or `{"reply": "..."}`; null or empty means no reply. A card click's
/// answer may add `{"update_card": {...}}`, sent first. An item the agent got wrong fails the
/// whole answer, naming it: the member gets the failure message.
pub(crate) fn answer_from(doc: &Value) -> Result<Vec<AppMessage>, AgentError> {
    let failed = |why: String| AgentError::Failed(format!("agent's answer: {why}"));
    let update = doc.get("update_card").filter(|v| !v.is_null()).cloned();
    let mut answer: Vec<AppMessage> = (update.into_iter())
        .map(|update_card| AppMessage::UpdateCard { update_card })
        .collect();
    if let Some(items) = doc.get("messages").filter(|v| !v.is_null()) {
        let items = items
            .as_array()
            .ok_or_else(|| failed("\"messages\" must be a list".into()))?;
        for (i, item) in items.iter().enumerate() {
            answer.push(
                AppMessage::from_item(item).map_err(|e| failed(format!("messages[{i}].{e}")))?,
            );
        }
    } else if let Some(list) = doc.get("replies").and_then(Value::as_array) {
        let texts = list
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.trim().is_empty());
        answer.extend(texts.map(AppMessage::text));
    } else {
        match doc.get("reply") {
            Some(Value::String(s)) if !s.trim().is_empty() => answer.push(AppMessage::text(s)),
            Some(Value::String(_)) | Some(Value::Null) => {}
            None if !answer.is_empty() => {}
            _ => return Err(failed(
                "has none of \"messages\" (a list), \"reply\" (a string), \"replies\" (a list of strings) or \"update_card\"".into(),
            )),
        }
    }
    Ok(answer)
}

/// The agent a configuration describes. `store` keeps per-user state (conversation history).
/// `inline_text_bytes` is `media.inline_text_bytes`, for agents that read received text files.
pub fn build(
    config: &AgentConfig,
    store: Arc<dyn History>,
    inline_text_bytes: u64,
) -> Result<Arc<dyn Agent>, String> {
    Ok(match &config.kind {
        AgentKind::Echo => Arc::new(EchoAgent {
            delay: Duration::from_millis(config.delay_ms),
        }),
        AgentKind::Http(c) => Arc::new(http::HttpAgent::new(c.clone())?),
        AgentKind::Command(c) => Arc::new(command::CommandAgent::new(c.clone())),
        AgentKind::Openai(c) => Arc::new(openai::OpenAiAgent::new(
            c.clone(),
            store,
            inline_text_bytes,
        )?),
        AgentKind::Hermes(c) => Arc::new(hermes::HermesAgent::new(c.clone(), store)?),
    })
}
