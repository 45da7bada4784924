//! WeCom callback payloads: the encrypted envelope and the typed, decrypted inbound message.
//!
//! Owns: the field names of WeCom's XML, which message types and events exist, which of them are chat
//! turns for an agent, and the dedup key of a callback (the one place that decides it).
//!
//! Must never: fail on a MsgType or Event it does not know (they are kept, with their raw fields), or
//! expand XML entities (see `xml`).

use std::collections::BTreeMap;

use crate::xml::parse_fields;

/// Why a callback payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("malformed XML: {0}")]
    Xml(#[from] crate::xml::XmlError),
    #[error("required field {0} is missing or empty")]
    Missing(&'static str),
    #[error("field {field} has an invalid value: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// The outer XML of a POST callback: which corp/app it is for and the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub to_user_name: Option<String>,
    pub agent_id: Option<String>,
    pub encrypt: String,
}

impl Envelope {
    pub fn parse(body: &str) -> Result<Self, MessageError> {
        let fields = parse_fields(body).map_err(MessageError::Xml)?;
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Ok(Envelope {
            to_user_name: get("ToUserName"),
            agent_id: get("AgentID"),
            encrypt: get("Encrypt").ok_or(MessageError::Missing("Encrypt"))?,
        })
    }
}

/// A decrypted callback: common header fields plus the typed body.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundMessage {
    /// The corp id (ToUserName).
    pub to_user_name: String,
    /// The member's UserID (`sys` for some system events).
    pub from_user_name: String,
    pub create_time: i64,
    pub agent_id: Option<u64>,
    /// MsgId, kept as text: it is a 64-bit id and only ever compared.
    pub msg_id: Option<String>,
    pub msg_type: String,
    pub kind: MessageKind,
    /// Every field as received, for agents that want more than the typed view.
    pub raw: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MessageKind {
    Text {
        content: String,
    },
    Image {
        pic_url: String,
        media_id: String,
    },
    Voice {
        media_id: String,
        format: String,
    },
    Video {
        media_id: String,
        thumb_media_id: String,
    },
    Location {
        latitude: f64,
        longitude: f64,
        scale: Option<u32>,
        label: String,
    },
    Link {
        title: String,
        description: String,
        url: String,
        pic_url: String,
    },
    File {
        media_id: String,
        file_name: String,
    },
    Event(Event),
    /// A MsgType this gateway does not model; `InboundMessage::raw` has its fields.
    Other,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Subscribe,
    Unsubscribe,
    EnterAgent,
    /// Menu click, with the menu's key.
    Click {
        key: String,
    },
    /// Menu link opened, with its URL.
    View {
        url: String,
    },
    /// A click on a template card this app sent (`template_card_event`): answer it with
    /// update_template_card and `response_code` to change the card.
    TemplateCard {
        event_key: String,
        task_id: String,
        card_type: String,
        response_code: String,
    },
    /// Periodic location report.
    Location {
        latitude: f64,
        longitude: f64,
        precision: Option<f64>,
    },
    /// Any other event, with its name as received and its EventKey if present.
    Other {
        event: String,
        event_key: Option<String>,
    },
}

impl InboundMessage {
    /// Parse decrypted callback XML.
    pub fn parse(xml: &str) -> Result<Self, MessageError> {
        let fields = parse_fields(xml).map_err(MessageError::Xml)?;
        let mut raw = BTreeMap::new();
        for (name, value) in fields {
            // A repeated element keeps its first value; WeCom does not repeat top-level fields.
            raw.entry(name).or_insert(value);
        }
        let text = |name: &str| {
            raw.get(name)
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let required = |name: &'static str| {
            raw.get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or(MessageError::Missing(name))
        };

        let to_user_name = required("ToUserName")?;
        let from_user_name = required("FromUserName")?;
        let msg_type = required("MsgType")?;
        let create_time = parse_num::<i64>("CreateTime", &required("CreateTime")?)?;
        let agent_id = match raw
            .get("AgentID")
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
        {
            Some(v) => Some(parse_num::<u64>("AgentID", v)?),
            None => None,
        };
        let msg_id = raw
            .get("MsgId")
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());

        let kind = match msg_type.to_ascii_lowercase().as_str() {
            // Content is kept exactly: leading spaces or newlines may matter to the agent.
            "text" => MessageKind::Text {
                content: raw.get("Content").cloned().unwrap_or_default(),
            },
            "image" => MessageKind::Image {
                pic_url: text("PicUrl"),
                media_id: text("MediaId"),
            },
            "voice" => MessageKind::Voice {
                media_id: text("MediaId"),
                format: text("Format"),
            },
            "video" => MessageKind::Video {
                media_id: text("MediaId"),
                thumb_media_id: text("ThumbMediaId"),
            },
            "location" => MessageKind::Location {
                latitude: parse_num("Location_X", &required("Location_X")?)?,
                longitude: parse_num("Location_Y", &required("Location_Y")?)?,
                scale: opt_num("Scale", &text("Scale"))?,
                label: text("Label"),
            },
            "link" => MessageKind::Link {
                title: text("Title"),
                description: text("Description"),
                url: text("Url"),
                pic_url: text("PicUrl"),
            },
            "file" => MessageKind::File {
                media_id: text("MediaId"),
                file_name: [text("FileName"), text("Title")]
                    .into_iter()
                    .find(|s| !s.is_empty())
                    .unwrap_or_default(),
            },
            "event" => MessageKind::Event(parse_event(&raw)?),
            _ => MessageKind::Other,
        };

        Ok(InboundMessage {
            to_user_name,
            from_user_name,
            create_time,
            agent_id,
            msg_id,
            msg_type,
            kind,
            raw,
        })
    }

    /// Is this something a person said to the app (and so a turn for the agent)? Lifecycle and
    /// passive events (subscribe, unsubscribe, enter_agent, location reports, link views) and system
    /// events are not: replying to them would talk at people who did not ask.
    pub fn is_chat_turn(&self) -> bool {
        match &self.kind {
            MessageKind::Event(Event::Click { .. }) => true,
            MessageKind::Event(_) => false,
            _ => true,
        }
    }

    /// The key that identifies one callback across WeCom's retries: MsgId for messages; for events
    /// (which have none) sender, time, event name, key and change type, so two distinct events in the
    /// same second stay distinct. corp and agent come from the app the callback was addressed to.
    pub fn dedup_key(&self, corp_id: &str, agent_id: u64) -> String {
        match &self.msg_id {
            Some(id) => format!("{corp_id}:{agent_id}:msg:{id}"),
            None => {
                let get = |k: &str| self.raw.get(k).map(String::as_str).unwrap_or("");
                let key = format!(
                    "{corp_id}:{agent_id}:event:{}:{}:{}:{}:{}",
                    self.from_user_name,
                    self.create_time,
                    get("Event"),
                    get("EventKey"),
                    get("ChangeType"),
                );
                // Card clicks: the same button on two cards in one second are two clicks.
                match self.raw.get("TaskId") {
                    Some(task) => format!("{key}:{task}"),
                    None => key,
                }
            }
        }
    }

    /// A one-line description of a non-text message, for agents that only take text.
    pub fn describe(&self) -> String {
        match &self.kind {
            MessageKind::Text { content } => content.clone(),
            MessageKind::Image { pic_url, .. } => format!("[image] {pic_url}"),
            MessageKind::Voice { format, .. } => format!("[voice message, format {format}]"),
            MessageKind::Video { .. } => "[video]".to_owned(),
            MessageKind::Location {
                latitude,
                longitude,
                label,
                ..
            } => format!("[location] {label} ({latitude}, {longitude})"),
            MessageKind::Link { title, url, .. } => format!("[link] {title} {url}"),
            MessageKind::File { file_name, .. } => format!("[file] {file_name}"),
            MessageKind::Event(Event::Click { key }) => format!("[menu click] {key}"),
            MessageKind::Event(Event::TemplateCard { event_key, .. }) => {
                format!("[card click] {event_key}")
            }
            MessageKind::Event(e) => format!("[event] {}", e.name()),
            MessageKind::Other => format!("[{} message]", self.msg_type),
        }
    }
}

impl Event {
    /// The event's name as WeCom spells it.
    pub fn name(&self) -> &str {
        match self {
            Event::Subscribe => "subscribe",
            Event::Unsubscribe => "unsubscribe",
            Event::EnterAgent => "enter_agent",
            Event::Click { .. } => "click",
            Event::TemplateCard { .. } => "template_card_event",
            Event::View { .. } => "view",
            Event::Location { .. } => "LOCATION",
            Event::Other { event, .. } => event,
        }
    }
}

fn parse_event(raw: &BTreeMap<String, String>) -> Result<Event, MessageError> {
    let event = raw
        .get("Event")
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or(MessageError::Missing("Event"))?;
    let key = raw.get("EventKey").map(|v| v.trim().to_owned());
    let text = |name: &str| {
        raw.get(name)
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    // WeCom spells menu events in lower case and LOCATION in upper case; match either way.
    Ok(match event.to_ascii_lowercase().as_str() {
        "subscribe" => Event::Subscribe,
        "unsubscribe" => Event::Unsubscribe,
        "enter_agent" => Event::EnterAgent,
        "click" => Event::Click {
            key: key.unwrap_or_default(),
        },
        "template_card_event" => Event::TemplateCard {
            event_key: key.unwrap_or_default(),
            task_id: text("TaskId"),
            card_type: text("CardType"),
            response_code: text("ResponseCode"),
        },
        "view" => Event::View {
            url: key.unwrap_or_default(),
        },
        "location" => Event::Location {
            latitude: parse_num("Latitude", &text("Latitude"))?,
            longitude: parse_num("Longitude", &text("Longitude"))?,
            precision: opt_num("Precision", &text("Precision"))?,
        },
        _ => Event::Other {
            event,
            event_key: key,
        },
    })
}

fn parse_num<T: std::str::FromStr>(field: &'static str, value: &str) -> Result<T, MessageError> {
    value.trim().parse().map_err(|_| MessageError::Invalid {
        field,
        reason: format!("expected a number, got {:?}", truncate(value, 32)),
    })
}

fn opt_num<T: std::str::FromStr>(
    field: &'static str,
    value: &str,
) -> Result<Option<T>, MessageError> {
    if value.trim().is_empty() {
        Ok(None)
    } else {
        parse_num(field, value).map(Some)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
