//! What an AI bot receives, taken in: each message or event WeCom pushes is checked (the bot it
//! names, the member and group allowlists, an @-mention in a group) and stored before anything
//! else is done with it; a welcome is sent when a member opens the chat. Both ways in (the long
//! connection and the URL callback) come through [`take`].
//!
//! Must never: pass on a message that is not stored, or log a message's text.

use std::sync::Arc;

use serde_json::{json, Value};

use super::frame;
use super::inbound::{Content, Event, Inbound};
use super::link::Pushed;
use super::settings::GroupSession;
use super::stored;
use super::Bot;
use crate::conversation::Channel;
use crate::store::{NewJob, Pushed as Queued, Store, StoreError};

/// What became of one pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Stored: the agent answers it.
    Queued,
    /// Seen before (WeCom pushed it twice).
    Duplicate,
    /// Not for the agent: a member or group not allowed, a group message without a mention, or
    /// something that is not a message.
    Ignored,
}

impl Taken {
    fn label(self) -> &'static str {
        match self {
            Taken::Queued => "queued",
            Taken::Duplicate => "duplicate",
            Taken::Ignored => "ignored",
        }
    }
}

/// Why a pushed message could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum NotTaken {
    #[error("not a message WeCom's AI bot sends: {0}")]
    Unreadable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Take what the long connection hands on, one after another, until it stops.
pub async fn run(
    bot: Arc<Bot>,
    store: Arc<dyn Store>,
    mut pushes: tokio::sync::mpsc::Receiver<Pushed>,
) {
    while let Some(pushed) = pushes.recv().await {
        if pushed.cmd != frame::MESSAGE_CALLBACK && pushed.cmd != frame::EVENT_CALLBACK {
            tracing::debug!(aibot = %bot.config.name, cmd = %pushed.cmd, "a frame from WeCom this gateway does not use; ignored");
            continue;
        }
        let arrival = Arrival::Pushed {
            req_id: &pushed.req_id,
            connection: pushed.connection,
        };
        match take(&bot, &*store, &pushed.body, arrival).await {
            Ok(_) => {}
            Err(NotTaken::Unreadable(why)) => {
                tracing::warn!(aibot = %bot.config.name, error = %why, "a message from WeCom that cannot be read; ignored");
            }
            Err(NotTaken::Store(e)) => {
                // Over the long connection nothing is acknowledged, and WeCom does not send it
                // again: the member is told, so the message is not silently lost.
                if !e.logged_by_store() {
                    tracing::error!(aibot = %bot.config.name, error = %e, "cannot store a message; the member is told to send it again");
                }
                let body = frame::stream(
                    &format!("busy_{}", hex::encode(rand::random::<[u8; 6]>())),
                    "The gateway cannot take messages right now; please send it again in a moment.",
                    true,
                );
                // Beside the reading: the connection's reader must not wait for an answer it reads.
                let (bot, req_id) = (bot.clone(), pushed.req_id.clone());
                tokio::spawn(async move {
                    let wait = std::time::Duration::from_secs(5);
                    let _ = (bot.link)
                        .request(frame::RESPOND, &req_id, Some(&body), wait)
                        .await;
                });
            }
        }
    }
}

/// How a message came, and so how its reply goes.
#[derive(Debug, Clone, Copy)]
pub enum Arrival<'a> {
    /// Pushed over the long connection: the reply answers `req_id`.
    Pushed { req_id: &'a str, connection: u64 },
    /// Posted to the URL: the passive answer opened bubble `stream_id`, which WeCom polls.
    Posted { stream_id: &'a str },
}

/// Check and store one message or event (`body`, as WeCom sent it).
pub async fn take(
    bot: &Bot,
    store: &dyn Store,
    body: &Value,
    arrival: Arrival<'_>,
) -> Result<Taken, NotTaken> {
    let taken = check_and_store(bot, store, body, arrival).await;
    let result = match &taken {
        Ok(t) => t.label(),
        Err(NotTaken::Unreadable(_)) => "unreadable",
        Err(NotTaken::Store(_)) => "store_failed",
    };
    crate::metrics::count(
        crate::metrics::AIBOT_MESSAGES,
        &[("aibot", &bot.config.name), ("result", result)],
    );
    taken
}

async fn check_and_store(
    bot: &Bot,
    store: &dyn Store,
    body: &Value,
    arrival: Arrival<'_>,
) -> Result<Taken, NotTaken> {
    let name = &bot.config.name;
    let inbound = Inbound::from_value(body).map_err(|e| NotTaken::Unreadable(e.to_string()))?;
    if let Some(id) = inbound
        .aibotid
        .as_deref()
        .filter(|id| *id != bot.config.bot_id)
    {
        tracing::warn!(aibot = %name, aibotid = ?id, "a message for another bot id than this bot's bot_id; ignored (check aibots[].bot_id)");
        return Ok(Taken::Ignored);
    }
    let user = inbound
        .from
        .as_ref()
        .map(|f| f.userid.as_str())
        .unwrap_or("");
    if let Some(chat) = &inbound.chatid {
        // WeCom pushes only messages that mention the bot; one without a mention is not for it.
        let text = matches!(inbound.content, Content::Text(_) | Content::Mixed(_));
        if text && !inbound.text_for_agent().contains('@') {
            tracing::debug!(aibot = %name, chat = ?chat, "a group message that does not mention the bot; ignored");
            return Ok(Taken::Ignored);
        }
        if !bot.config.chats.allows(chat) {
            tracing::warn!(aibot = %name, chat = ?chat, user = ?user, "a message from a group chat that is not in allowed_chats: not passed to the agent (add the chat id to aibots[].allowed_chats, or * for every group)");
            return Ok(Taken::Ignored);
        }
    }
    if user.is_empty() {
        tracing::debug!(aibot = %name, "a message from no member (a notice); ignored");
        return Ok(Taken::Ignored);
    }
    if !bot.config.allowlist.allows("", user) {
        tracing::warn!(aibot = %name, user = ?user, "message from a user who is not on the bot's allowlist: not passed to the agent");
        return Ok(Taken::Ignored);
    }
    let user_key = session_key(
        &bot.config.bot_id,
        inbound.chatid.as_deref(),
        user,
        bot.config.group_session,
    );
    let job = NewJob {
        channel: Channel::AiBot(name.clone()),
        user_key: user_key.clone(),
        dedup_key: stored::dedup_key(&bot.config.bot_id, &inbound.msgid),
        payload: match arrival {
            Arrival::Pushed { req_id, connection } => {
                stored::payload(Some(req_id), Some(connection), body)
            }
            Arrival::Posted { stream_id } => {
                stored::polled_payload(stream_id, crate::store::now_ms(), body)
            }
        },
    };
    let stored_payload = job.payload.clone();
    let queued = store.push(job).await?;
    // A member's file is fetched now: WeCom's link to it lasts minutes, the turn may come later.
    if queued == Queued::Queued && matches!(inbound.content, Content::Image(_) | Content::File(_)) {
        if let Ok(message) = stored::read(&stored_payload) {
            let key = bot.url_mode_key().cloned();
            bot.received.fetch_aibot_early(message, key);
        }
    }
    // Stored first, then the welcome, beside the reading (WeCom takes it within 5 s).
    if let (Content::Event(Event::EnterChat), Arrival::Pushed { req_id, .. }, Queued::Queued) =
        (&inbound.content, arrival, queued)
    {
        welcome(bot, req_id);
    }
    match queued {
        Queued::Queued => {
            tracing::debug!(aibot = %name, user = ?user_key, "AI bot message queued");
            Ok(Taken::Queued)
        }
        Queued::Duplicate => {
            tracing::debug!(aibot = %name, user = ?user_key, "a message WeCom sent again; ignored");
            Ok(Taken::Duplicate)
        }
    }
}

/// Whose conversation a message continues (the lane and the history): the member's with the
/// bot, or in a group the member's there (or the group's, with `group_session: chat`).
pub fn session_key(
    bot_id: &str,
    chat_id: Option<&str>,
    user_id: &str,
    scope: GroupSession,
) -> String {
    match (chat_id, scope) {
        (None, _) => format!("aibot:{bot_id}:{user_id}"),
        (Some(chat), GroupSession::Member) => format!("aibot:{bot_id}:{chat}:{user_id}"),
        (Some(chat), GroupSession::Chat) => format!("aibot:{bot_id}:{chat}"),
    }
}

/// The welcome a member gets on opening the chat (`enter_chat`), sent beside the reading.
fn welcome(bot: &Bot, req_id: &str) {
    let Some(text) = bot.config.welcome.clone() else {
        return;
    };
    let (link, name, req_id) = (bot.link.clone(), bot.config.name.clone(), req_id.to_owned());
    tokio::spawn(async move {
        let body = json!({ "msgtype": "text", "text": { "content": text } });
        let wait = std::time::Duration::from_secs(4);
        if let Err(e) = link
            .request(frame::RESPOND_WELCOME, &req_id, Some(&body), wait)
            .await
        {
            tracing::warn!(aibot = %name, errcode = e.errcode(), error = %e, "cannot send the welcome message");
        }
    });
}
