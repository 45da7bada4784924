//! How an AI bot's message is stored and read back: the pushed frame's `req_id` and connection
//! beside WeCom's JSON body, as the job's payload; read back as the message the worker and the
//! agents know (`InboundMessage`), with what the reply needs in its raw fields.
//!
//! Owns: the payload's shape, the raw field names the reply reads, and the dedup key of an AI
//! bot's message (bot + msgid). Must never: do I/O.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::inbound::{Content, Inbound};
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
    let stored: Value = serde_json::from_str(payload).map_err(|e| MessageError::Invalid {
        field: "payload",
        reason: e.to_string(),
    })?;
    let inbound = Inbound::parse(&stored["body"]).map_err(|e| MessageError::Invalid {
        field: "body",
        reason: e.to_string(),
    })?;
    let mut raw = BTreeMap::new();
    if let Some(req_id) = stored[REQ_ID].as_str() {
        raw.insert(REQ_ID.to_owned(), req_id.to_owned());
    }
    if let Some(n) = stored[CONNECTION].as_u64() {
        raw.insert(CONNECTION.to_owned(), n.to_string());
    }
    if let Some(id) = stored[STREAM_ID].as_str() {
        raw.insert(STREAM_ID.to_owned(), id.to_owned());
    }
    if let Some(ms) = stored[RECEIVED_MS].as_i64() {
        raw.insert(RECEIVED_MS.to_owned(), ms.to_string());
    }
    if let Some(chat) = &inbound.chat_id {
        raw.insert(CHAT_ID.to_owned(), chat.clone());
    }
    if let Some(url) = &inbound.response_url {
        raw.insert(RESPONSE_URL.to_owned(), url.clone());
    }
    let kind = match &inbound.content {
        Content::Image { url, aeskey } => {
            raw.insert(MEDIA_URL.to_owned(), url.clone());
            if let Some(key) = aeskey {
                raw.insert(MEDIA_AESKEY.to_owned(), key.clone());
            }
            MessageKind::Image {
                pic_url: url.clone(),
                media_id: String::new(),
            }
        }
        Content::File {
            url,
            aeskey,
            file_name,
        } => {
            raw.insert(MEDIA_URL.to_owned(), url.clone());
            if let Some(key) = aeskey {
                raw.insert(MEDIA_AESKEY.to_owned(), key.clone());
            }
            MessageKind::File {
                media_id: String::new(),
                file_name: file_name.clone().unwrap_or_default(),
            }
        }
        Content::Event { event_type, event } => MessageKind::Event(match event_type.as_str() {
            "template_card_event" => {
                let card = &event["template_card_event"];
                let text = |k: &str| card[k].as_str().unwrap_or("").to_owned();
                Event::TemplateCard {
                    event_key: text("event_key"),
                    task_id: text("task_id"),
                    card_type: text("card_type"),
                    response_code: String::new(),
                }
            }
            other => Event::Other {
                event: other.to_owned(),
                event_key: None,
            },
        }),
        _ => MessageKind::Text {
            content: inbound.text_for_agent(),
        },
    };
    Ok(InboundMessage {
        to_user_name: inbound.bot_id.clone(),
        from_user_name: inbound.user_id.clone(),
        create_time: inbound.create_time.unwrap_or(0),
        agent_id: None,
        msg_id: Some(inbound.msgid.clone()),
        msg_type: inbound.msgtype.clone(),
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
