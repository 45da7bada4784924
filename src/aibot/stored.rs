//! How an AI bot's message is stored and read back: the pushed frame's `req_id` and connection
//! beside WeCom's JSON body, as the job's payload; read back as the message the worker and the
//! agents know (`InboundMessage`), with what the reply needs in its raw fields.
//!
//! Owns: the payload's shape, the raw field names the reply reads, and the dedup key of an AI
//! bot's message (bot + msgid). Must never: do I/O.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::inbound::{self, strip_mention, Content, Inbound, MediaRef};
use crate::message::{Event, InboundMessage, MessageError, MessageKind};

const REQ_ID: &str = "req_id";
const CONNECTION: &str = "connection";
const CHAT_ID: &str = "chatid";
const RESPONSE_URL: &str = "response_url";
const STREAM_ID: &str = "stream_id";
const RECEIVED_MS: &str = "received_ms";
/// Where an image or file can be downloaded, and the key that opens it.
pub const MEDIA_URL: &str = "url";
pub const MEDIA_AESKEY: &str = "aeskey";

/// The payload stored for a pushed message (the long connection).
pub fn payload(req_id: Option<&str>, connection: Option<u64>, body: &Value) -> String {
    json!({ REQ_ID: req_id, CONNECTION: connection, "body": body }).to_string()
}

/// The payload stored for a URL-mode callback, whose passive answer opened bubble `stream_id`.
pub fn polled_payload(stream_id: &str, received_ms: i64, body: &Value) -> String {
    json!({ STREAM_ID: stream_id, RECEIVED_MS: received_ms, "body": body }).to_string()
}

/// Where an AI bot's reply goes: the callback it answers, and the chat, for messages sent after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// The callback's `req_id`: every frame of the reply carries it. None in URL mode.
    pub req_id: Option<String>,
    /// The connection the callback came on.
    pub connection: Option<u64>,
    /// The group chat, if it was written in one.
    pub chat_id: Option<String>,
    /// Who wrote.
    pub user_id: String,
    /// URL mode's one-off address for a reply after the passive answer.
    pub response_url: Option<String>,
    /// URL mode: the bubble the passive answer opened, and when the callback came (Unix ms).
    pub stream_id: Option<String>,
    pub received_ms: Option<i64>,
}

impl ReplyTo {
    /// The chat a message goes to with `aibot_send_msg`: the group, else the member.
    pub fn chat(&self) -> (&str, bool) {
        match &self.chat_id {
            Some(chat) => (chat, true),
            None => (&self.user_id, false),
        }
    }
}

/// The dedup key: WeCom may push a message twice; its msgid is unique per bot.
pub fn dedup_key(bot_id: &str, msgid: &str) -> String {
    format!("aibot:{bot_id}:{msgid}")
}

/// A stored payload as the message the worker and agents get.
pub fn read(payload: &str) -> Result<InboundMessage, MessageError> {
    let invalid = |field, reason: String| MessageError::Invalid { field, reason };
    let stored: Value =
        serde_json::from_str(payload).map_err(|e| invalid("payload", e.to_string()))?;
    let inbound =
        Inbound::from_value(&stored["body"]).map_err(|e| invalid("body", e.to_string()))?;
    let mut raw = BTreeMap::new();
    let mut keep = |key: &str, value: Option<String>| {
        if let Some(value) = value {
            raw.insert(key.to_owned(), value);
        }
    };
    keep(REQ_ID, stored[REQ_ID].as_str().map(str::to_owned));
    keep(
        CONNECTION,
        stored[CONNECTION].as_u64().map(|n| n.to_string()),
    );
    keep(STREAM_ID, stored[STREAM_ID].as_str().map(str::to_owned));
    keep(
        RECEIVED_MS,
        stored[RECEIVED_MS].as_i64().map(|n| n.to_string()),
    );
    keep(CHAT_ID, inbound.chatid.clone());
    keep(RESPONSE_URL, inbound.response_url.clone());
    let media = |m: &MediaRef, raw: &mut dyn FnMut(&str, Option<String>)| {
        raw(MEDIA_URL, Some(m.url.clone()));
        raw(MEDIA_AESKEY, m.aeskey.clone());
    };
    // In a group, the member's own words without the mention (a quote keeps what it quoted).
    let text = || MessageKind::Text {
        content: match &inbound.chatid {
            None => inbound.text_for_agent(),
            Some(_) => {
                let own = Inbound {
                    quote: None,
                    ..inbound.clone()
                }
                .text_for_agent();
                let own = strip_mention(&own, None);
                let whole = Inbound {
                    content: Content::Text(own),
                    ..inbound.clone()
                };
                whole.text_for_agent()
            }
        },
    };
    let (msg_type, kind) = match &inbound.content {
        Content::Image(m) => {
            media(m, &mut keep);
            (
                "image",
                MessageKind::Image {
                    pic_url: m.url.clone(),
                    media_id: String::new(),
                },
            )
        }
        Content::File(m) => {
            media(m, &mut keep);
            (
                "file",
                MessageKind::File {
                    media_id: String::new(),
                    file_name: m.filename.clone().unwrap_or_default(),
                },
            )
        }
        Content::Event(event) => (
            "event",
            MessageKind::Event(match event {
                inbound::Event::TemplateCard(card) => {
                    let text = |t: &Option<String>| t.clone().unwrap_or_default();
                    Event::TemplateCard {
                        event_key: text(&card.event_key),
                        task_id: text(&card.task_id),
                        card_type: text(&card.card_type),
                        response_code: String::new(),
                    }
                }
                inbound::Event::EnterChat => Event::Other {
                    event: "enter_chat".into(),
                    event_key: None,
                },
                inbound::Event::Feedback(_) => Event::Other {
                    event: "feedback_event".into(),
                    event_key: None,
                },
                inbound::Event::Disconnected => Event::Other {
                    event: "disconnected_event".into(),
                    event_key: None,
                },
                inbound::Event::Other { eventtype, .. } => Event::Other {
                    event: eventtype.clone(),
                    event_key: None,
                },
            }),
        ),
        Content::Voice(_) => ("voice", text()),
        Content::Mixed(_) => ("mixed", text()),
        Content::Video(m) => {
            media(m, &mut keep);
            ("video", text())
        }
        _ => ("text", text()),
    };
    Ok(InboundMessage {
        to_user_name: inbound.aibotid.clone().unwrap_or_default(),
        from_user_name: inbound
            .from
            .as_ref()
            .map(|f| f.userid.clone())
            .unwrap_or_default(),
        create_time: inbound.create_time.unwrap_or(0),
        agent_id: None,
        msg_id: Some(inbound.msgid.clone()),
        msg_type: msg_type.to_owned(),
        kind,
        raw,
    })
}

/// Where the reply to a stored message goes.
pub fn reply_to(message: &InboundMessage) -> ReplyTo {
    let raw = |k: &str| message.raw.get(k).cloned();
    ReplyTo {
        req_id: raw(REQ_ID),
        connection: raw(CONNECTION).and_then(|n| n.parse().ok()),
        chat_id: raw(CHAT_ID),
        user_id: message.from_user_name.clone(),
        response_url: raw(RESPONSE_URL),
        stream_id: raw(STREAM_ID),
        received_ms: raw(RECEIVED_MS).and_then(|n| n.parse().ok()),
    }
}
