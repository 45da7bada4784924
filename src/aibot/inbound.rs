//! TEMPORARY stand-in until the typed parser lands.

use serde_json::Value;

#[derive(Debug, Clone)]
pub enum Content {
    Text(String),
    Image {
        url: String,
        aeskey: Option<String>,
    },
    File {
        url: String,
        aeskey: Option<String>,
        file_name: Option<String>,
    },
    Event {
        event_type: String,
        event: Value,
    },
    Other,
}

#[derive(Debug, Clone)]
pub struct Inbound {
    pub msgid: String,
    pub bot_id: String,
    pub chat_id: Option<String>,
    pub user_id: String,
    pub msgtype: String,
    pub content: Content,
    pub response_url: Option<String>,
    pub create_time: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0} is missing")]
pub struct InboundError(&'static str);

impl Inbound {
    pub fn parse(body: &Value) -> Result<Inbound, InboundError> {
        let s = |v: &Value| v.as_str().map(str::to_owned);
        let msgtype = s(&body["msgtype"]).ok_or(InboundError("msgtype"))?;
        let content = match msgtype.as_str() {
            "text" => Content::Text(s(&body["text"]["content"]).unwrap_or_default()),
            "image" => Content::Image {
                url: s(&body["image"]["url"]).unwrap_or_default(),
                aeskey: s(&body["image"]["aeskey"]),
            },
            "event" => Content::Event {
                event_type: s(&body["event"]["eventtype"]).unwrap_or_default(),
                event: body["event"].clone(),
            },
            _ => Content::Other,
        };
        Ok(Inbound {
            msgid: s(&body["msgid"]).ok_or(InboundError("msgid"))?,
            bot_id: s(&body["aibotid"]).unwrap_or_default(),
            chat_id: s(&body["chatid"]),
            user_id: s(&body["from"]["userid"]).unwrap_or_default(),
            msgtype,
            content,
            response_url: s(&body["response_url"]),
            create_time: body["create_time"].as_i64(),
        })
    }

    pub fn text_for_agent(&self) -> String {
        match &self.content {
            Content::Text(t) => t.clone(),
            _ => String::new(),
        }
    }
}

pub fn strip_mention(text: &str, _bot_name: Option<&str>) -> String {
    text.trim().to_owned()
}

impl Inbound {
    pub fn text_for_agent_raw(&self) -> String {
        self.text_for_agent()
    }
}
