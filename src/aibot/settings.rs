//! What an AI bot (智能机器人) is configured as: its credentials and way in, who may talk to it,
//! and the settings all bots share. The configuration builds these; the connection, the callback
//! and the worker read them.
//!
//! Must never: show a secret in `Debug` (the long connection's secret, the callback's token and
//! EncodingAESKey are `SecretString`s).

use std::time::Duration;

use secrecy::SecretString;

use crate::agent::AgentConfig;
use crate::allowlist::Allowlist;

/// How WeCom reaches a bot.
#[derive(Debug, Clone)]
pub enum Mode {
    /// The gateway connects out (长连接) with the bot's Secret: no public URL needed.
    LongConnection { secret: SecretString },
    /// WeCom posts encrypted JSON to `/wecom/aibot/{name}` (URL mode), signed with the token.
    Callback {
        token: SecretString,
        encoding_aes_key: SecretString,
    },
}

/// Which group chats a bot answers in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chats {
    /// `*`: every group the bot is in.
    pub all: bool,
    pub ids: Vec<String>,
}

impl Chats {
    pub fn allows(&self, chat_id: &str) -> bool {
        self.all || self.ids.iter().any(|id| id == chat_id)
    }
}

/// Whose conversation a group message continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSession {
    /// One per chat and member: each member has their own thread with the agent in a group.
    Member,
    /// One per chat: the whole group shares it.
    Chat,
}

/// One AI bot.
#[derive(Debug, Clone)]
pub struct AiBotConfig {
    /// The name the gateway knows it by (logs, metrics, `simulate --aibot`).
    pub name: String,
    /// WeCom's Bot ID (`aibotid` in what it sends).
    pub bot_id: String,
    pub mode: Mode,
    /// Who may talk to it, in single and group chats alike.
    pub allowlist: Allowlist,
    pub chats: Chats,
    pub group_session: GroupSession,
    /// Sent when a member opens the chat with the bot (`enter_chat`), if set.
    pub welcome: Option<String>,
    /// Its own agent, overriding the `agent:` section.
    pub agent: Option<AgentConfig>,
}

/// `aibot:`: what every AI bot shares.
#[derive(Debug, Clone)]
pub struct AiBotSettings {
    /// WeCom's long-connection endpoint (a test double's, or a proxy's).
    pub ws_url: String,
    /// Shown in the reply's bubble at once, until the agent's first words; empty: none.
    pub placeholder: String,
    /// At most one stream update per conversation this often.
    pub update_every: Duration,
    /// A stream is finished this long after its first frame (WeCom refuses updates after 6
    /// minutes); what the agent writes later is sent as a message of its own.
    pub stream_for: Duration,
}
