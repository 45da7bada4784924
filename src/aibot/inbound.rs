//! A message or event an AI bot receives: the decrypted body of `aibot_msg_callback` and
//! `aibot_event_callback` (the long connection), which is also the JSON of a URL-mode callback.
//!
//! Owns: the field names of that JSON, which message types and events exist, how a group's
//! `@mention` is taken out of the text, and the text an agent is given for a message.
//!
//! Must never: fail on a msgtype or eventtype it does not know (they are kept with their raw JSON),
//! or on fields it does not know; do I/O or log.

use serde_json::{Map, Value};

/// Why an inbound body could not be read. Fields are named by their JSON path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    #[error("the body is not a JSON object: {0}")]
    NotJson(String),
    #[error("required field {0} is missing or empty")]
    Missing(&'static str),
    #[error("field {field} has an invalid value: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// A single chat with the bot, or a group where the bot was @mentioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatType {
    Single,
    Group,
}

impl ChatType {
    /// As WeCom and the agent JSON spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatType::Single => "single",
            ChatType::Group => "group",
        }
    }
}

/// Who spoke. `corpid` is sent only for bots used across corps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub userid: String,
    pub corpid: Option<String>,
}

/// A file WeCom holds for a few minutes: download `url`, then decrypt with `aeskey` (long
/// connection) or the bot's EncodingAESKey (URL mode, where `aeskey` is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    pub url: String,
    pub aeskey: Option<String>,
    pub filename: Option<String>,
}

/// One part of a `mixed` message.
#[derive(Debug, Clone, PartialEq)]
pub enum MixedItem {
    Text(String),
    Image(MediaRef),
    Other { msgtype: String, raw: Value },
}

/// The options a member chose on a card, per question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedItem {
    pub question_key: String,
    pub option_ids: Vec<String>,
}

/// A click on a template card the bot sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardEvent {
    pub card_type: Option<String>,
    pub event_key: Option<String>,
    pub task_id: Option<String>,
    pub selected_items: Vec<SelectedItem>,
}

/// A member's rating of a reply that carried a feedback id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackEvent {
    pub id: Option<String>,
    /// WeCom's `type`: 1 accurate, 2 inaccurate, 3 cancelled.
    pub kind: Option<i64>,
    pub content: Option<String>,
    pub inaccurate_reasons: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The member opened the single chat (first time that day): a welcome may be sent.
    EnterChat,
    TemplateCard(CardEvent),
    Feedback(FeedbackEvent),
    /// Another connection subscribed as this bot and took over (long connection only).
    Disconnected,
    Other {
        eventtype: String,
        raw: Value,
    },
}

/// What was sent, by msgtype.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    Text(String),
    Image(MediaRef),
    Mixed(Vec<MixedItem>),
    /// WeCom's transcript of a voice message (no audio is sent).
    Voice(String),
    File(MediaRef),
    Video(MediaRef),
    /// URL mode: WeCom asks for the current state of the stream it was answered with.
    StreamRefresh {
        id: String,
    },
    Event(Event),
    Other {
        msgtype: String,
        raw: Value,
    },
}

/// A decrypted inbound body.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// Unique per callback; WeCom may deliver one twice, so it is the dedup key.
    pub msgid: String,
    pub aibotid: Option<String>,
    pub chattype: ChatType,
    /// The group, in group chats only.
    pub chatid: Option<String>,
    /// Absent only from `disconnected_event`.
    pub from: Option<Sender>,
    pub content: Content,
    /// The message the member quoted, if any.
    pub quote: Option<Content>,
    pub response_url: Option<String>,
    pub create_time: Option<i64>,
}

impl Inbound {
    pub fn parse(body: &[u8]) -> Result<Self, InboundError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| InboundError::NotJson(e.to_string()))?;
        Self::from_value(&value)
    }

    pub fn from_value(value: &Value) -> Result<Self, InboundError> {
        let body = value
            .as_object()
            .ok_or_else(|| InboundError::NotJson("not an object".into()))?;
        let msgid = id(body, "msgid").ok_or(InboundError::Missing("msgid"))?;
        let msgtype = id(body, "msgtype").ok_or(InboundError::Missing("msgtype"))?;
        let content = Content::parse(&msgtype, body)?;
        let from = match body.get("from").and_then(Value::as_object) {
            Some(from) => id(from, "userid").map(|userid| Sender {
                userid,
                corpid: id(from, "corpid"),
            }),
            None => None,
        };
        if from.is_none() && content != Content::Event(Event::Disconnected) {
            return Err(InboundError::Missing("from.userid"));
        }
        let chatid = id(body, "chatid");
        let chattype = match body.get("chattype").and_then(Value::as_str) {
            Some("single") => ChatType::Single,
            Some("group") => ChatType::Group,
            // Not sent (a kick notice): only groups have a chat id.
            None if chatid.is_some() => ChatType::Group,
            None => ChatType::Single,
            Some(other) => {
                return Err(InboundError::Invalid {
                    field: "chattype",
                    reason: format!("{other:?} is neither single nor group"),
                })
            }
        };
        // A quote WeCom cannot describe is kept raw rather than failing the whole message.
        let quote = body.get("quote").and_then(Value::as_object).map(|q| {
            let kind = id(q, "msgtype").unwrap_or_default();
            Content::parse(&kind, q).unwrap_or_else(|_| Content::Other {
                msgtype: kind,
                raw: Value::Object(q.clone()),
            })
        });
        Ok(Inbound {
            msgid,
            aibotid: id(body, "aibotid"),
            chattype,
            chatid,
            from,
            content,
            quote,
            response_url: id(body, "response_url"),
            create_time: body.get("create_time").and_then(number),
        })
    }

    /// The text an agent is given: the message's text (a lone image or file as a marker), with a
    /// quoted message first as `> ` lines.
    pub fn text_for_agent(&self) -> String {
        let own = self.content.text();
        let quoted = self.quote.as_ref().map(Content::text).unwrap_or_default();
        if quoted.is_empty() {
            return own;
        }
        let mut out: Vec<String> = quoted.lines().map(|l| format!("> {l}")).collect();
        if !own.is_empty() {
            out.push(own);
        }
        out.join("\n")
    }
}

impl Content {
    /// `body` holds `msgtype` and the object named after it.
    fn parse(msgtype: &str, body: &Map<String, Value>) -> Result<Self, InboundError> {
        let part = |name: &'static str| {
            body.get(msgtype)
                .and_then(Value::as_object)
                .ok_or(InboundError::Missing(name))
        };
        Ok(match msgtype {
            "text" => Content::Text(text(part("text")?, "text.content")?),
            "voice" => Content::Voice(text(part("voice")?, "voice.content")?),
            "image" => Content::Image(media(part("image")?, "image.url")?),
            "file" => Content::File(media(part("file")?, "file.url")?),
            "video" => Content::Video(media(part("video")?, "video.url")?),
            "mixed" => Content::Mixed(mixed(part("mixed")?)?),
            "stream" => Content::StreamRefresh {
                id: id(part("stream")?, "id").ok_or(InboundError::Missing("stream.id"))?,
            },
            "event" => Content::Event(event(part("event")?)?),
            other => Content::Other {
                msgtype: other.to_owned(),
                raw: Value::Object(body.clone()),
            },
        })
    }

    /// What an agent reads of this content alone.
    fn text(&self) -> String {
        match self {
            Content::Text(t) | Content::Voice(t) => t.clone(),
            Content::Image(_) => IMAGE.to_owned(),
            Content::File(f) => match &f.filename {
                Some(name) => format!("[file: {name}]"),
                None => "[file]".to_owned(),
            },
            Content::Video(_) => "[video]".to_owned(),
            Content::Mixed(items) => items
                .iter()
                .filter_map(|item| match item {
                    MixedItem::Text(t) if !t.trim().is_empty() => Some(t.as_str()),
                    MixedItem::Text(_) | MixedItem::Other { .. } => None,
                    MixedItem::Image(_) => Some(IMAGE),
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Content::StreamRefresh { .. } | Content::Event(_) | Content::Other { .. } => {
                String::new()
            }
        }
    }
}

/// How an image in the middle of a message reads to an agent.
const IMAGE: &str = "[image]";

/// A non-empty id; WeCom sends some ids as numbers, which are kept as their digits.
fn id(object: &Map<String, Value>, key: &str) -> Option<String> {
    object.get(key).and_then(id_text)
}

fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A text that must be present but may be empty (a silent voice message has an empty transcript).
fn text(object: &Map<String, Value>, name: &'static str) -> Result<String, InboundError> {
    match object.get("content") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(InboundError::Invalid {
            field: name,
            reason: "not a string".into(),
        }),
        None => Err(InboundError::Missing(name)),
    }
}

fn media(object: &Map<String, Value>, url: &'static str) -> Result<MediaRef, InboundError> {
    Ok(MediaRef {
        url: id(object, "url").ok_or(InboundError::Missing(url))?,
        aeskey: id(object, "aeskey"),
        filename: id(object, "filename").or_else(|| id(object, "name")),
    })
}

fn mixed(object: &Map<String, Value>) -> Result<Vec<MixedItem>, InboundError> {
    let items = object
        .get("msg_item")
        .and_then(Value::as_array)
        .ok_or(InboundError::Missing("mixed.msg_item"))?;
    items
        .iter()
        .map(|item| {
            let item = item.as_object().ok_or(InboundError::Invalid {
                field: "mixed.msg_item",
                reason: "an item is not an object".into(),
            })?;
            let kind =
                id(item, "msgtype").ok_or(InboundError::Missing("mixed.msg_item[].msgtype"))?;
            let part = |name: &'static str| {
                item.get(kind.as_str())
                    .and_then(Value::as_object)
                    .ok_or(InboundError::Missing(name))
            };
            Ok(match kind.as_str() {
                "text" => MixedItem::Text(text(
                    part("mixed.msg_item[].text")?,
                    "mixed.msg_item[].text.content",
                )?),
                "image" => MixedItem::Image(media(
                    part("mixed.msg_item[].image")?,
                    "mixed.msg_item[].image.url",
                )?),
                _ => MixedItem::Other {
                    msgtype: kind.clone(),
                    raw: Value::Object(item.clone()),
                },
            })
        })
        .collect()
}

fn event(object: &Map<String, Value>) -> Result<Event, InboundError> {
    let eventtype = id(object, "eventtype").ok_or(InboundError::Missing("event.eventtype"))?;
    let own = object.get(eventtype.as_str());
    let empty = Map::new();
    let payload = own.and_then(Value::as_object).unwrap_or(&empty);
    Ok(match eventtype.as_str() {
        "enter_chat" => Event::EnterChat,
        "disconnected_event" => Event::Disconnected,
        "template_card_event" => Event::TemplateCard(CardEvent {
            card_type: id(payload, "card_type"),
            event_key: id(payload, "event_key"),
            task_id: id(payload, "task_id"),
            selected_items: selected_items(payload),
        }),
        "feedback_event" => Event::Feedback(FeedbackEvent {
            id: id(payload, "id"),
            kind: payload.get("type").and_then(number),
            content: id(payload, "content"),
            inaccurate_reasons: payload
                .get("inaccurate_reason_list")
                .and_then(Value::as_array)
                .map(|list| list.iter().filter_map(number).collect())
                .unwrap_or_default(),
        }),
        _ => Event::Other {
            eventtype: eventtype.clone(),
            raw: own.cloned().unwrap_or(Value::Null),
        },
    })
}

/// `selected_items.selected_item[]`, each `{question_key, option_ids.option_id[]}`; what is not
/// in that shape is left out.
fn selected_items(card: &Map<String, Value>) -> Vec<SelectedItem> {
    let list = card
        .get("selected_items")
        .and_then(|s| s.get("selected_item"))
        .and_then(Value::as_array);
    list.into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .filter_map(|item| {
            Some(SelectedItem {
                question_key: id(item, "question_key")?,
                option_ids: item
                    .get("option_ids")
                    .and_then(|o| o.get("option_id"))
                    .and_then(Value::as_array)
                    .map(|ids| ids.iter().filter_map(id_text).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// A number, or a string of digits (WeCom is not consistent about which).
fn number(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Take the bot's `@mention` out of a group message: `@<name>` wherever it is when the bot's name
/// is known, else one leading `@word`. WeCom keeps the mention in the text, anywhere in it.
pub fn strip_mention(text: &str, bot_name: Option<&str>) -> String {
    match bot_name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(name) => text.replace(&format!("@{name}"), "").trim().to_owned(),
        None => {
            let text = text.trim();
            match text.strip_prefix('@') {
                Some(rest) => rest
                    .find(char::is_whitespace)
                    .map_or("", |at| &rest[at..])
                    .trim()
                    .to_owned(),
                None => text.to_owned(),
            }
        }
    }
}
