//! The frames of WeCom's AI-bot long connection, as JSON text: commands the gateway sends, and
//! what WeCom sends back (answers, which carry no `cmd` and are matched by `req_id`; and pushes,
//! which do). Also the errcodes the gateway acts on and the stream's size limit.
//!
//! Must never: do I/O, log, or hold state; every function here is pure.

use serde_json::{json, Value};

/// `aibot_respond_msg` with a `req_id` WeCom no longer knows (another connection's, or too old).
pub const INVALID_REQ_ID: i64 = 846605;
/// A stream frame more than 6 minutes after the stream's first.
pub const STREAM_EXPIRED: i64 = 846608;
/// A command on a connection that is not subscribed (or was kicked).
pub const NOT_SUBSCRIBED: i64 = 846609;
/// A message type WeCom does not take there (`text` outside the welcome reply).
pub const INVALID_MESSAGE_TYPE: i64 = 40008;
/// A stream's content: at most this many bytes of UTF-8.
pub const MAX_STREAM_BYTES: usize = 20480;

pub const SUBSCRIBE: &str = "aibot_subscribe";
pub const PING: &str = "ping";
pub const RESPOND: &str = "aibot_respond_msg";
pub const RESPOND_WELCOME: &str = "aibot_respond_welcome_msg";
pub const RESPOND_UPDATE: &str = "aibot_respond_update_msg";
pub const SEND: &str = "aibot_send_msg";
pub const MESSAGE_CALLBACK: &str = "aibot_msg_callback";
pub const EVENT_CALLBACK: &str = "aibot_event_callback";
pub const UPLOAD_INIT: &str = "aibot_upload_media_init";
pub const UPLOAD_CHUNK: &str = "aibot_upload_media_chunk";
pub const UPLOAD_FINISH: &str = "aibot_upload_media_finish";

/// A command as sent: `{cmd, headers: {req_id}, body}` (no body for a ping).
pub fn command(cmd: &str, req_id: &str, body: Option<&Value>) -> String {
    let mut frame = json!({ "cmd": cmd, "headers": { "req_id": req_id } });
    if let Some(body) = body {
        frame["body"] = body.clone();
    }
    frame.to_string()
}

/// What WeCom sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The answer to a command the gateway sent with `req_id`.
    Answer {
        req_id: String,
        errcode: i64,
        errmsg: String,
        body: Value,
    },
    /// A message or event for the bot (`aibot_msg_callback`, `aibot_event_callback`...).
    Push {
        cmd: String,
        req_id: String,
        body: Value,
    },
}

/// A frame that is not WeCom's JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("no headers.req_id")]
    NoReqId,
}

impl Incoming {
    pub fn parse(text: &str) -> Result<Incoming, FrameError> {
        let mut frame: Value =
            serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
        let req_id = match &frame["headers"]["req_id"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(FrameError::NoReqId),
        };
        let body = frame
            .get_mut("body")
            .map(Value::take)
            .unwrap_or(Value::Null);
        match frame.get("cmd").and_then(Value::as_str) {
            Some(cmd) if !cmd.is_empty() => Ok(Incoming::Push {
                cmd: cmd.to_owned(),
                req_id,
                body,
            }),
            _ => Ok(Incoming::Answer {
                req_id,
                errcode: frame["errcode"].as_i64().unwrap_or(0),
                errmsg: frame["errmsg"].as_str().unwrap_or("").to_owned(),
                body,
            }),
        }
    }
}

/// The subscribe body: the bot's id and Secret.
pub fn subscribe(bot_id: &str, secret: &str) -> Value {
    json!({ "bot_id": bot_id, "secret": secret })
}

/// A stream frame: the whole text so far (`content` replaces what the bubble showed).
pub fn stream(id: &str, content: &str, finish: bool) -> Value {
    json!({ "msgtype": "stream", "stream": { "id": id, "finish": finish, "content": content } })
}

/// A markdown message (a push, or a reply that is not a stream).
pub fn markdown(content: &str) -> Value {
    json!({ "msgtype": "markdown", "markdown": { "content": content } })
}

/// A pushed message's body: to a member (`chat_type` 1, `chatid` their userid) or a group (2).
pub fn send_to(chat: &str, group: bool, message: &Value) -> Value {
    let mut body = message.clone();
    body["chatid"] = json!(chat);
    body["chat_type"] = json!(if group { 2 } else { 1 });
    body
}

/// The longest prefix of `text` within `max` bytes, cut at a character boundary.
pub fn clamp(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` in pieces of at most `max` bytes, cut at line ends where one is near (else at a
/// character boundary): a long answer as several messages.
pub fn pieces(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let head = clamp(rest, max);
        let cut = match head.rfind('\n') {
            Some(i) if i > max / 2 => i + 1,
            _ => head.len(),
        };
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.trim().is_empty() {
        out.push(rest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_have_no_cmd_and_pushes_do() {
        let answer = Incoming::parse(r#"{"headers":{"req_id":"r1"},"errcode":846608,"errmsg":"stream message update expired"}"#).unwrap();
        assert!(
            matches!(answer, Incoming::Answer { errcode: 846608, ref req_id, .. } if req_id == "r1")
        );
        let push = Incoming::parse(
            r#"{"cmd":"aibot_msg_callback","headers":{"req_id":"s1"},"body":{"msgid":"m"}}"#,
        )
        .unwrap();
        assert!(
            matches!(push, Incoming::Push { ref cmd, ref body, .. } if cmd == MESSAGE_CALLBACK && body["msgid"] == "m")
        );
        assert_eq!(Incoming::parse("{}"), Err(FrameError::NoReqId));
        assert!(matches!(
            Incoming::parse("nope"),
            Err(FrameError::NotJson(_))
        ));
    }

    #[test]
    fn clamping_never_cuts_a_character() {
        let text = "企业微信".repeat(3);
        for max in 0..text.len() + 2 {
            let kept = clamp(&text, max);
            assert!(kept.len() <= max && text.starts_with(kept));
        }
        let long = format!("{}\n{}", "a".repeat(15), "企".repeat(10));
        let parts = pieces(&long, 20);
        assert_eq!(parts.concat(), long);
        assert!(parts.iter().all(|p| p.len() <= 20));
        assert_eq!(parts[0], format!("{}\n", "a".repeat(15)));
    }
}
