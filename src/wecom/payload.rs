//! Outbound message bodies and WeCom's limits on them, enforced before anything is sent.
//!
//! Owns: the app-message types (text, markdown, textcard, news, template card, image, voice, video,
//! file) and the group-robot types (text with mentions, markdown), their JSON, and how an oversize
//! message is split (text, markdown) or refused (the rest, which cannot be split).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::media::MediaType;
use super::split::{split_utf8, TEXT_MAX_BYTES};

/// App markdown (message/send) is at most 2048 bytes.
pub const APP_MARKDOWN_MAX_BYTES: usize = 2048;
/// Group-robot markdown is at most 4096 bytes; robot text shares the 2048-byte text limit.
pub const BOT_MARKDOWN_MAX_BYTES: usize = 4096;
/// textcard limits (message/send): title 128 characters, description 512, url 2048 bytes,
/// button text 4 characters.
pub const TEXTCARD_TITLE_MAX_CHARS: usize = 128;
pub const TEXTCARD_DESCRIPTION_MAX_CHARS: usize = 512;
pub const TEXTCARD_URL_MAX_BYTES: usize = 2048;
pub const TEXTCARD_BTNTXT_MAX_CHARS: usize = 4;

/// How far back WeCom looks for an identical message when a send asks it to drop duplicates: its
/// maximum, 4 hours (docs/wecom-protocol.md §4.2).
pub const DUPLICATE_CHECK_INTERVAL_SECS: u64 = 14_400;

/// At most this many articles in one `news` message.
pub const NEWS_MAX_ARTICLES: usize = 8;

/// Who an app message goes to: one member (the usual case, within that member's rate window),
/// several at once by UserID, department or tag (`@all` for everyone in the app's visible range),
/// or a group chat the app created (`appchat/send`).
/// (Stored as a delivery's `Target`, not as itself.)
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Recipients {
    Member(String),
    /// `|`-separated lists, as WeCom takes them; empty when not used.
    Many {
        touser: String,
        toparty: String,
        totag: String,
    },
    Chat(String),
}

impl Recipients {
    /// The WeCom call that sends to them.
    pub fn path(&self) -> &'static str {
        match self {
            Recipients::Chat(_) => "/cgi-bin/appchat/send",
            _ => "/cgi-bin/message/send",
        }
    }
}

/// A message an app sends to members (message/send), in this project's flat form: what agents
/// answer with, what the push API takes and what the outbox records. Only a template card keeps
/// WeCom's own nested shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msgtype", rename_all = "snake_case")]
pub enum AppMessage {
    Text {
        content: String,
    },
    Markdown {
        content: String,
    },
    Textcard(TextCard),
    News {
        articles: Vec<Article>,
    },
    TemplateCard {
        template_card: Value,
    },
    Image(Media),
    Voice(Media),
    Video(Media),
    File(Media),
    /// Not a message/send message: an agent's answer to a click on a card
    /// (`template_card_event`), sent with update_template_card and the click's response code.
    UpdateCard {
        update_card: Value,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Article {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picurl: Option<String>,
}

/// A file to send: where its bytes come from (`path` or `base64`), and, once uploaded, WeCom's
/// `media_id` for it and when it was uploaded (a media_id is valid for 3 days).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// Video only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Video only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextCard {
    pub title: String,
    pub description: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub btntxt: Option<String>,
}

/// A message to a group robot (webhook/send).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msgtype", rename_all = "snake_case")]
pub enum BotMessage {
    Text {
        content: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentioned_list: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentioned_mobile_list: Vec<String>,
    },
    Markdown {
        content: String,
    },
    /// A JPG or PNG of at most 2 MB, carried in the message itself.
    Image {
        base64: String,
        md5: String,
    },
    /// Uploaded with the robot's upload_media when it is delivered.
    File(Media),
    News {
        articles: Vec<Article>,
    },
    TemplateCard {
        template_card: Value,
    },
}

/// A robot's image is sent inline, at most 2 MB.
pub const BOT_IMAGE_MAX_BYTES: usize = 2 * 1024 * 1024;

/// Why a message cannot be sent as given; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct PayloadError {
    pub field: &'static str,
    pub reason: String,
}

fn too_long(field: &'static str, max: usize, unit: &str, got: usize) -> PayloadError {
    PayloadError {
        field,
        reason: format!("at most {max} {unit}, got {got}"),
    }
}

fn pieces(content: &str, max: usize, field: &'static str) -> Result<Vec<String>, PayloadError> {
    if content.trim().is_empty() {
        return Err(PayloadError {
            field,
            reason: "must not be empty".into(),
        });
    }
    Ok(split_utf8(content, max)
        .into_iter()
        .map(str::to_owned)
        .collect())
}

impl AppMessage {
    /// Check the limits and split text and markdown into pieces WeCom accepts, in order.
    pub fn into_pieces(self) -> Result<Vec<AppMessage>, PayloadError> {
        match self {
            AppMessage::Text { content } => Ok(pieces(&content, TEXT_MAX_BYTES, "text")?
                .into_iter()
                .map(|content| AppMessage::Text { content })
                .collect()),
            AppMessage::Markdown { content } => {
                Ok(pieces(&content, APP_MARKDOWN_MAX_BYTES, "markdown")?
                    .into_iter()
                    .map(|content| AppMessage::Markdown { content })
                    .collect())
            }
            AppMessage::Textcard(card) => {
                card.check()?;
                Ok(vec![AppMessage::Textcard(card)])
            }
            AppMessage::News { articles } => {
                check_news(&articles)?;
                Ok(vec![AppMessage::News { articles }])
            }
            AppMessage::TemplateCard { template_card } => {
                if template_card
                    .get("card_type")
                    .and_then(Value::as_str)
                    .is_none()
                {
                    let reason = "must be WeCom's template card object, with its card_type".into();
                    return Err(PayloadError {
                        field: "template_card",
                        reason,
                    });
                }
                Ok(vec![AppMessage::TemplateCard { template_card }])
            }
            AppMessage::UpdateCard { update_card } if update_card.is_object() => {
                Ok(vec![AppMessage::UpdateCard { update_card }])
            }
            AppMessage::UpdateCard { .. } => Err(PayloadError {
                field: "update_card",
                reason: "must be an object, e.g. {\"button\": {\"replace_name\": \"已处理\"}}"
                    .into(),
            }),
            media => match media.media() {
                Some(m) if m.path.is_some() != m.base64.is_some() => Ok(vec![media]),
                _ => Err(PayloadError {
                    field: media.msgtype(),
                    reason: "needs either path or base64 (one of them)".into(),
                }),
            },
        }
    }

    pub fn text(content: impl Into<String>) -> Self {
        AppMessage::Text {
            content: content.into(),
        }
    }

    /// One item of an agent's `messages` list (or the push API's). WeCom's own nested shape
    /// (`{"msgtype": "text", "text": {...}}`) is refused with the flat form to use instead; an
    /// agent cannot set the upload record (`media_id`, `uploaded_at`).
    pub fn from_item(item: &Value) -> Result<AppMessage, PayloadError> {
        let err = |reason: String| PayloadError {
            field: "msgtype",
            reason,
        };
        let Some(msgtype) = item.get("msgtype").and_then(Value::as_str) else {
            return Err(err("is required: text, markdown, image, voice, video, file, textcard, news or template_card".into()));
        };
        if msgtype == "update_card" {
            return Err(err("update_card is not a message: give it beside \"messages\", as {\"update_card\": {...}}".into()));
        }
        if msgtype != "template_card" && item.get(msgtype).is_some_and(Value::is_object) {
            return Err(err(format!(
                "{msgtype:?} is given in WeCom's nested shape; this gateway takes the flat form, e.g. {{\"msgtype\": \"text\", \"content\": \"...\"}} or {{\"msgtype\": \"image\", \"base64\": \"...\"}}"
            )));
        }
        let mut message: AppMessage = serde_json::from_value(item.clone())
            .map_err(|e| err(format!("{msgtype:?} item is not valid: {e}")))?;
        if let Some(m) = message.media_mut() {
            (m.media_id, m.uploaded_at) = (None, None);
        }
        Ok(message)
    }

    /// WeCom's name for this message type.
    pub fn msgtype(&self) -> &'static str {
        match self {
            AppMessage::Text { .. } => "text",
            AppMessage::Markdown { .. } => "markdown",
            AppMessage::Textcard(_) => "textcard",
            AppMessage::News { .. } => "news",
            AppMessage::TemplateCard { .. } => "template_card",
            AppMessage::Image(_) => "image",
            AppMessage::Voice(_) => "voice",
            AppMessage::Video(_) => "video",
            AppMessage::File(_) => "file",
            AppMessage::UpdateCard { .. } => "update_card",
        }
    }

    /// The media/upload type of an image, voice, video or file message.
    pub fn media_type(&self) -> Option<MediaType> {
        match self {
            AppMessage::Image(_) => Some(MediaType::Image),
            AppMessage::Voice(_) => Some(MediaType::Voice),
            AppMessage::Video(_) => Some(MediaType::Video),
            AppMessage::File(_) => Some(MediaType::File),
            _ => None,
        }
    }

    /// The file of an image, voice, video or file message.
    pub fn media(&self) -> Option<&Media> {
        match self {
            AppMessage::Image(m)
            | AppMessage::Voice(m)
            | AppMessage::Video(m)
            | AppMessage::File(m) => Some(m),
            _ => None,
        }
    }

    pub fn media_mut(&mut self) -> Option<&mut Media> {
        match self {
            AppMessage::Image(m)
            | AppMessage::Voice(m)
            | AppMessage::Video(m)
            | AppMessage::File(m) => Some(m),
            _ => None,
        }
    }

    /// The message/send body for one member. `resend`: an earlier attempt may have been delivered,
    /// so WeCom is asked to drop this one if an identical message reached the member within
    /// [`DUPLICATE_CHECK_INTERVAL_SECS`]. First attempts never ask: the same answer twice a minute
    /// apart is legitimate.
    pub fn body(&self, to: &Recipients, agent_id: u64, resend: bool) -> Value {
        let inner = match self {
            AppMessage::Text { content } | AppMessage::Markdown { content } => {
                json!({ "content": content })
            }
            AppMessage::Textcard(card) => json!(card),
            AppMessage::News { articles } => json!({ "articles": articles }),
            AppMessage::TemplateCard { template_card } => template_card.clone(),
            AppMessage::Video(m) => {
                let mut video = json!({ "media_id": m.media_id });
                if let Some(title) = &m.title {
                    video["title"] = json!(title);
                }
                if let Some(description) = &m.description {
                    video["description"] = json!(description);
                }
                video
            }
            AppMessage::Image(m) | AppMessage::Voice(m) | AppMessage::File(m) => {
                json!({ "media_id": m.media_id })
            }
            AppMessage::UpdateCard { update_card } => update_card.clone(),
        };
        let kind = self.msgtype();
        let mut body = match to {
            Recipients::Member(user) => json!({ "touser": user, "agentid": agent_id }),
            Recipients::Many {
                touser,
                toparty,
                totag,
            } => {
                let mut body = json!({ "agentid": agent_id });
                for (field, value) in [("touser", touser), ("toparty", toparty), ("totag", totag)] {
                    if !value.is_empty() {
                        body[field] = json!(value);
                    }
                }
                body
            }
            // A group chat the app created: no agentid, and no duplicate check to ask for.
            Recipients::Chat(chatid) => json!({ "chatid": chatid }),
        };
        body["msgtype"] = json!(kind);
        body[kind] = inner;
        if resend && !matches!(to, Recipients::Chat(_)) {
            body["enable_duplicate_check"] = json!(1);
            body["duplicate_check_interval"] = json!(DUPLICATE_CHECK_INTERVAL_SECS);
        }
        body
    }
}

fn check_news(articles: &[Article]) -> Result<(), PayloadError> {
    let field = "news.articles";
    if articles.is_empty() || articles.len() > NEWS_MAX_ARTICLES {
        let reason = format!(
            "must hold 1 to {NEWS_MAX_ARTICLES} articles, got {}",
            articles.len()
        );
        return Err(PayloadError { field, reason });
    }
    if articles
        .iter()
        .any(|a| a.title.trim().is_empty() || a.url.trim().is_empty())
    {
        let reason = "each article needs a title and a url".into();
        return Err(PayloadError { field, reason });
    }
    Ok(())
}

impl TextCard {
    fn check(&self) -> Result<(), PayloadError> {
        let chars = |s: &str| s.chars().count();
        if self.title.trim().is_empty() {
            return Err(PayloadError {
                field: "textcard.title",
                reason: "must not be empty".into(),
            });
        }
        if chars(&self.title) > TEXTCARD_TITLE_MAX_CHARS {
            return Err(too_long(
                "textcard.title",
                TEXTCARD_TITLE_MAX_CHARS,
                "characters",
                chars(&self.title),
            ));
        }
        if chars(&self.description) > TEXTCARD_DESCRIPTION_MAX_CHARS {
            return Err(too_long(
                "textcard.description",
                TEXTCARD_DESCRIPTION_MAX_CHARS,
                "characters",
                chars(&self.description),
            ));
        }
        if self.url.trim().is_empty() {
            return Err(PayloadError {
                field: "textcard.url",
                reason: "is required".into(),
            });
        }
        if self.url.len() > TEXTCARD_URL_MAX_BYTES {
            return Err(too_long(
                "textcard.url",
                TEXTCARD_URL_MAX_BYTES,
                "bytes",
                self.url.len(),
            ));
        }
        if let Some(b) = &self.btntxt {
            if chars(b) > TEXTCARD_BTNTXT_MAX_CHARS {
                return Err(too_long(
                    "textcard.btntxt",
                    TEXTCARD_BTNTXT_MAX_CHARS,
                    "characters",
                    chars(b),
                ));
            }
        }
        Ok(())
    }
}

impl BotMessage {
    /// Split text (2048 bytes) and markdown (4096 bytes) into pieces; mentions go with the first
    /// piece only, so people are notified once.
    pub fn into_pieces(self) -> Result<Vec<BotMessage>, PayloadError> {
        match self {
            BotMessage::Text {
                content,
                mentioned_list,
                mentioned_mobile_list,
            } => {
                let mut out = Vec::new();
                for (i, content) in pieces(&content, TEXT_MAX_BYTES, "text")?
                    .into_iter()
                    .enumerate()
                {
                    let first = i == 0;
                    out.push(BotMessage::Text {
                        content,
                        mentioned_list: if first {
                            mentioned_list.clone()
                        } else {
                            Vec::new()
                        },
                        mentioned_mobile_list: if first {
                            mentioned_mobile_list.clone()
                        } else {
                            Vec::new()
                        },
                    });
                }
                Ok(out)
            }
            BotMessage::Markdown { content } => {
                Ok(pieces(&content, BOT_MARKDOWN_MAX_BYTES, "markdown")?
                    .into_iter()
                    .map(|content| BotMessage::Markdown { content })
                    .collect())
            }
            BotMessage::News { articles } => {
                check_news(&articles)?;
                Ok(vec![BotMessage::News { articles }])
            }
            other => Ok(vec![other]),
        }
    }

    /// The webhook/send body.
    pub fn body(&self) -> Value {
        match self {
            BotMessage::Text {
                content,
                mentioned_list,
                mentioned_mobile_list,
            } => {
                let mut text = json!({ "content": content });
                if !mentioned_list.is_empty() {
                    text["mentioned_list"] = json!(mentioned_list);
                }
                if !mentioned_mobile_list.is_empty() {
                    text["mentioned_mobile_list"] = json!(mentioned_mobile_list);
                }
                json!({ "msgtype": "text", "text": text })
            }
            BotMessage::Markdown { content } => {
                json!({ "msgtype": "markdown", "markdown": { "content": content } })
            }
            BotMessage::Image { base64, md5 } => {
                json!({ "msgtype": "image", "image": { "base64": base64, "md5": md5 } })
            }
            BotMessage::File(m) => {
                json!({ "msgtype": "file", "file": { "media_id": m.media_id } })
            }
            BotMessage::News { articles } => {
                json!({ "msgtype": "news", "news": { "articles": articles } })
            }
            BotMessage::TemplateCard { template_card } => {
                json!({ "msgtype": "template_card", "template_card": template_card })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_bodies_have_wecom_shape() {
        let body = AppMessage::Markdown {
            content: "**hi**".into(),
        }
        .body(&Recipients::Member("zhangsan".into()), 7, false);
        assert_eq!(
            body,
            json!({"touser": "zhangsan", "msgtype": "markdown", "agentid": 7, "markdown": {"content": "**hi**"}})
        );
        let resent = AppMessage::Text {
            content: "x".into(),
        }
        .body(&Recipients::Member("u".into()), 1, true);
        assert_eq!(resent["enable_duplicate_check"], json!(1));
        assert_eq!(resent["duplicate_check_interval"], json!(14_400));
        let card = AppMessage::Textcard(TextCard {
            title: "t".into(),
            description: "d".into(),
            url: "https://x".into(),
            btntxt: None,
        });
        assert_eq!(
            card.body(&Recipients::Member("u".into()), 1, false)["textcard"],
            json!({"title": "t", "description": "d", "url": "https://x"})
        );
    }

    #[test]
    fn limits_are_enforced_before_sending() {
        let long = AppMessage::Markdown {
            content: "字".repeat(1000),
        }
        .into_pieces()
        .unwrap();
        assert_eq!(long.len(), 2);
        let card = |title: String, btntxt: Option<String>| {
            AppMessage::Textcard(TextCard {
                title,
                description: "d".into(),
                url: "https://x".into(),
                btntxt,
            })
            .into_pieces()
        };
        assert_eq!(card("标".repeat(128), None).unwrap().len(), 1);
        assert_eq!(
            card("标".repeat(129), None).unwrap_err().field,
            "textcard.title"
        );
        assert_eq!(
            card("t".into(), Some("详情详情详".into()))
                .unwrap_err()
                .field,
            "textcard.btntxt"
        );
        assert_eq!(
            AppMessage::Text {
                content: "  ".into()
            }
            .into_pieces()
            .unwrap_err()
            .field,
            "text"
        );
        let bot = BotMessage::Markdown {
            content: "x".repeat(5000),
        }
        .into_pieces()
        .unwrap();
        assert_eq!(bot.len(), 2);
    }

    #[test]
    fn agent_items_are_read_in_the_flat_form_only() {
        let item = |v: Value| AppMessage::from_item(&v);
        assert_eq!(
            item(json!({"msgtype": "markdown", "content": "**x**"})),
            Ok(AppMessage::Markdown {
                content: "**x**".into()
            })
        );
        let nested = item(json!({"msgtype": "text", "text": {"content": "x"}})).unwrap_err();
        assert!(nested.reason.contains("nested shape"), "{nested}");
        assert!(item(json!({"msgtype": "update_card", "update_card": {}})).is_err());
        assert!(item(json!({"content": "no msgtype"})).is_err());
        // An agent cannot claim an upload: the gateway uploads, and records the media_id itself.
        let image = item(json!({"msgtype": "image", "base64": "AAAA", "media_id": "forged"}));
        assert_eq!(
            image.unwrap().media().and_then(|m| m.media_id.clone()),
            None
        );
        let both = item(json!({"msgtype": "file", "base64": "AAAA", "path": "/x"})).unwrap();
        assert_eq!(both.into_pieces().unwrap_err().field, "file");
        let card = item(json!({"msgtype": "template_card", "template_card": {"x": 1}})).unwrap();
        assert_eq!(card.into_pieces().unwrap_err().field, "template_card");
        let article = json!({"title": "t", "url": "https://x"});
        let news = |n: usize| AppMessage::News {
            articles: vec![serde_json::from_value(article.clone()).unwrap(); n],
        };
        assert!(news(8).into_pieces().is_ok());
        assert_eq!(news(9).into_pieces().unwrap_err().field, "news.articles");
        assert_eq!(news(0).into_pieces().unwrap_err().field, "news.articles");
    }

    #[test]
    fn mentions_only_on_the_first_piece() {
        let pieces = BotMessage::Text {
            content: "a".repeat(3000),
            mentioned_list: vec!["@all".into()],
            mentioned_mobile_list: vec![],
        }
        .into_pieces()
        .unwrap();
        assert_eq!(pieces[0].body()["text"]["mentioned_list"], json!(["@all"]));
        assert!(pieces[1].body()["text"].get("mentioned_list").is_none());
    }
}
