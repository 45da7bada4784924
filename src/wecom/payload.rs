//! Outbound message bodies and WeCom's limits on them, enforced before anything is sent.
//!
//! Owns: the app-message types (text, markdown, textcard) and the group-robot types (text with
//! mentions, markdown), their JSON, and how an oversize message is split (text, markdown) or refused
//! (textcard, which cannot be split).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

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

/// A message an app sends to members (message/send).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msgtype", rename_all = "lowercase")]
pub enum AppMessage {
    Text { content: String },
    Markdown { content: String },
    Textcard(TextCard),
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
#[serde(tag = "msgtype", rename_all = "lowercase")]
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
}

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
        }
    }

    /// The message/send body for one member. `resend`: an earlier attempt may have been delivered,
    /// so WeCom is asked to drop this one if an identical message reached the member within
    /// [`DUPLICATE_CHECK_INTERVAL_SECS`]. First attempts never ask: the same answer twice a minute
    /// apart is legitimate.
    pub fn body(&self, touser: &str, agent_id: u64, resend: bool) -> Value {
        let (kind, inner) = match self {
            AppMessage::Text { content } => ("text", json!({ "content": content })),
            AppMessage::Markdown { content } => ("markdown", json!({ "content": content })),
            AppMessage::Textcard(card) => ("textcard", json!(card)),
        };
        let mut body = json!({ "touser": touser, "msgtype": kind, "agentid": agent_id });
        body[kind] = inner;
        if resend {
            body["enable_duplicate_check"] = json!(1);
            body["duplicate_check_interval"] = json!(DUPLICATE_CHECK_INTERVAL_SECS);
        }
        body
    }
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
        .body("zhangsan", 7, false);
        assert_eq!(
            body,
            json!({"touser": "zhangsan", "msgtype": "markdown", "agentid": 7, "markdown": {"content": "**hi**"}})
        );
        let resent = AppMessage::Text {
            content: "x".into(),
        }
        .body("u", 1, true);
        assert_eq!(resent["enable_duplicate_check"], json!(1));
        assert_eq!(resent["duplicate_check_interval"], json!(14_400));
        let card = AppMessage::Textcard(TextCard {
            title: "t".into(),
            description: "d".into(),
            url: "https://x".into(),
            btntxt: None,
        });
        assert_eq!(
            card.body("u", 1, false)["textcard"],
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
