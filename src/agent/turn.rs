//! The contract between the gateway and an agent backend: the turn an agent is given, the
//! [`Agent`] trait, its errors, and the answer document the http and command agents return.
//!
//! Must never: send to WeCom (the worker does), or carry the gateway's secrets into a turn.

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::conversation::Channel;
use crate::conversation::Fetched;
use crate::message::{Event, InboundMessage, MessageKind};
use crate::wecom::AppMessage;

/// One member's message, as an agent sees it.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    /// Where the member wrote (the app, by name); per-member state such as a session is kept per
    /// channel and member.
    pub channel: &'a Channel,
    pub corp_id: &'a str,
    pub user_id: &'a str,
    /// `corp_id:user_id`: the key for per-user state such as conversation history.
    pub user_key: &'a str,
    pub message: &'a InboundMessage,
    /// The file an image, voice, video or file message carried, as fetched from WeCom.
    pub media: Option<&'a Fetched>,
    /// The group chat the message was written in (an AI bot's group); `None` in a one-to-one chat.
    pub chat_id: Option<&'a str>,
    /// Where a streaming agent shows its answer while it writes, when the channel can show it
    /// (an AI bot); `None` when only the whole answer is sent.
    pub partial: Option<&'a Partial>,
}

/// The answer so far, as a streaming agent writes it: the channel shows it while the agent works
/// (an AI bot's stream bubble). The text is cumulative; the finished answer is still what
/// [`Agent::reply`] returns. Showing is cheap and never waits: a reader that falls behind sees
/// only the latest text.
#[derive(Debug, Clone)]
pub struct Partial(tokio::sync::watch::Sender<String>);

impl Partial {
    /// A new, empty answer and the reader that watches it.
    pub fn new() -> (Partial, tokio::sync::watch::Receiver<String>) {
        let (tx, rx) = tokio::sync::watch::channel(String::new());
        (Partial(tx), rx)
    }

    /// More text written after what was shown.
    pub fn push(&self, more: &str) {
        if !more.is_empty() {
            self.0.send_modify(|text| text.push_str(more));
        }
    }

    /// The whole answer so far, replacing what was shown.
    pub fn set(&self, so_far: &str) {
        self.0.send_if_modified(|text| {
            let changed = text != so_far;
            if changed {
                so_far.clone_into(text);
            }
            changed
        });
    }
}

impl Turn<'_> {
    /// The turn as the JSON document the http and command agents receive.
    pub fn to_json(&self) -> Value {
        let m = self.message;
        let mut doc = json!({
            "app": self.channel.name(),
            "channel": self.channel.kind(),
            "corp_id": self.corp_id,
            "user_id": self.user_id,
            // A self-built app's callbacks are one-to-one chats; an AI bot's may be a group's.
            "chat_id": self.chat_id,
            "chat_type": if self.chat_id.is_some() { "group" } else { "single" },
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

/// Why an agent could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("agent.headers: {0:?} is not a valid header name")]
    HeaderName(String),
    #[error("agent.headers.{0}: the value is not a valid header value")]
    HeaderValue(String),
    #[error("agent: cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}
