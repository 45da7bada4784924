//! The values the layers hand one another: where a conversation happens (its [`Channel`]), what a
//! member sent as the agent gets it (a received file's description), and what the gateway sends
//! out (a push and its target). The receiving side (http), the store, the worker, the agents and
//! outbound all speak these.
//!
//! Must never: import any of those layers (it sits below them all, beside `wecom`'s payload
//! types, which are the reply items themselves), or do I/O.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::message::{InboundMessage, MessageError};
use crate::wecom::payload::{AppMessage, BotMessage, Recipients};

/// Where a conversation happens, and so how what a member sent is read and how the reply leaves:
/// a value every job carries. Today one kind, the self-built app (自建应用) the member wrote to;
/// WeCom's AI bot (智能机器人) is to be the second, beside it in the same store, lanes and agents.
/// The store keeps a channel in two columns: `channel` (the kind) and `app` (the name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    /// A self-built app, by its configured name: encrypted XML callbacks in, message/send out.
    App(String),
    /// An AI bot (智能机器人), by its configured name: JSON over a long connection (or URL
    /// callbacks) in, streamed replies out.
    AiBot(String),
}

/// The stored kind of [`Channel::App`].
const APP: &str = "app";
/// The stored kind of [`Channel::AiBot`].
const AIBOT: &str = "aibot";

impl Channel {
    /// Every kind this version knows, as stored. Replicas of different versions share a
    /// PostgreSQL store during an upgrade; each takes only jobs of kinds it knows.
    pub const KINDS: &'static [&'static str] = &[APP, AIBOT];

    /// The kind as stored (`channel` column).
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::App(_) => APP,
            Channel::AiBot(_) => AIBOT,
        }
    }

    /// The configured name of the app (or, later, bot) within its kind (`app` column).
    pub fn name(&self) -> &str {
        match self {
            Channel::App(name) | Channel::AiBot(name) => name,
        }
    }

    /// The app a push to this member leaves through from now on (the store's `routes`): the app
    /// they last wrote to.
    pub fn route(&self) -> Option<&str> {
        match self {
            Channel::App(name) => Some(name),
            // A push to a member goes through an app; an AI bot's conversation is not one.
            Channel::AiBot(_) => None,
        }
    }

    /// Read back what [`Channel::kind`] and [`Channel::name`] wrote.
    pub fn from_columns(kind: &str, name: String) -> Result<Channel, UnknownChannel> {
        match kind {
            APP => Ok(Channel::App(name)),
            AIBOT => Ok(Channel::AiBot(name)),
            other => Err(UnknownChannel(other.to_owned())),
        }
    }

    /// A stored message of this channel, as the worker and the agents get it. Each kind stores
    /// what it received in its own form: a self-built app, the decrypted callback XML.
    pub fn received(&self, payload: &str) -> Result<InboundMessage, MessageError> {
        match self {
            Channel::App(_) => InboundMessage::parse(payload),
            Channel::AiBot(_) => crate::aibot::stored::read(payload),
        }
    }
}

/// How far a reply has streamed into an AI bot's bubble: recorded as it goes, so that after a
/// restart the gateway finishes the same bubble, or sends only what the member has not seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streamed {
    /// The bubble's id (`stream.id`), chosen by the gateway.
    pub id: String,
    /// When its first frame went out, Unix ms: WeCom takes updates for 6 minutes from then.
    pub started_ms: i64,
    /// What WeCom last accepted for it: what the member sees.
    pub shown: String,
    /// The bubble is finished: what follows goes as messages of their own.
    pub finished: bool,
    /// How much of the whole answer was delivered, in bytes: by the bubble, then by messages
    /// after it.
    pub delivered: usize,
    /// URL mode: the callback's `response_url` was used (WeCom takes one message on it).
    #[serde(default)]
    pub response_url_used: bool,
    /// What the bubble shows is the placeholder, not part of the answer.
    #[serde(default)]
    pub placeholder: bool,
}

impl Streamed {
    /// The `stream` column.
    pub fn to_column(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Read back what [`Streamed::to_column`] wrote; an unreadable value is no progress.
    pub fn from_column(text: Option<String>) -> Option<Streamed> {
        serde_json::from_str(&text?).ok()
    }
}

/// A stored job whose channel this version does not know (written by a newer one).
#[derive(Debug, thiserror::Error)]
#[error("channel {0:?} is not one this wecom-gateway knows: run the same version as the gateway that stored it")]
pub struct UnknownChannel(String);

/// What the agent is told about a received file (`media` in its JSON). After a failed download
/// only `kind` and the callback's `file_name` are known; `media_error` says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MediaInfo {
    pub kind: String,
    pub content_type: Option<String>,
    pub size: Option<u64>,
    pub file_name: Option<String>,
    pub sha256: Option<String>,
    /// Absolute, on the gateway's host.
    pub path: Option<PathBuf>,
    pub url: Option<String>,
}

/// A received file as the agent gets it: its description, and why it could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub info: MediaInfo,
    pub error: Option<String>,
}

/// Whether `path` names a file inside one of `dirs` (`media.agent_dirs`) by its name alone: absolute,
/// with `..` and `.` resolved without touching the filesystem. The one judgment by name: agents
/// use it to tell a file they may send from a path that is only text, and outbound uses it before
/// it looks at the file (then judges again where the file really is, with symlinks followed).
pub fn names_a_file_within(path: &Path, dirs: &[PathBuf]) -> bool {
    if !path.is_absolute() {
        return false;
    }
    let mut resolved = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                resolved.pop();
            }
            Component::CurDir => {}
            other => resolved.push(other),
        }
    }
    dirs.iter().any(|dir| resolved.starts_with(dir))
}

/// Where a delivery goes. Its JSON form is the store's `target` column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    /// One member, through an app.
    App {
        app: String,
        user: String,
    },
    /// Members, departments and tags at once (`@all`: everyone who can see the app).
    Broadcast {
        app: String,
        touser: String,
        toparty: String,
        totag: String,
    },
    /// A group chat the app created (appchat/send).
    Chat {
        app: String,
        chatid: String,
    },
    Bot {
        bot: String,
    },
}

/// One WeCom message to one target: the unit a push is stored and delivered as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    App {
        app: String,
        to: Recipients,
        message: AppMessage,
    },
    Bot {
        bot: String,
        message: BotMessage,
    },
}

impl Push {
    pub fn target(&self) -> Target {
        match self {
            Push::App { app, to, .. } => {
                let app = app.clone();
                match to.clone() {
                    Recipients::Member(user) => Target::App { app, user },
                    Recipients::Many {
                        touser,
                        toparty,
                        totag,
                    } => Target::Broadcast {
                        app,
                        touser,
                        toparty,
                        totag,
                    },
                    Recipients::Chat(chatid) => Target::Chat { app, chatid },
                }
            }
            Push::Bot { bot, .. } => Target::Bot { bot: bot.clone() },
        }
    }

    /// The (target, message) JSON columns a store keeps.
    pub fn to_columns(&self) -> Result<(String, String), serde_json::Error> {
        let message = match self {
            Push::App { message, .. } => serde_json::to_string(message),
            Push::Bot { message, .. } => serde_json::to_string(message),
        }?;
        Ok((serde_json::to_string(&self.target())?, message))
    }

    /// Read back what [`Push::to_columns`] wrote.
    pub fn from_columns(target: &str, message: &str) -> Result<Push, Unreadable> {
        let target: Target = serde_json::from_str(target).map_err(Unreadable::Target)?;
        let unreadable = Unreadable::Message;
        let (app, to) = match target {
            Target::App { app, user } => (app, Recipients::Member(user)),
            Target::Broadcast {
                app,
                touser,
                toparty,
                totag,
            } => (
                app,
                Recipients::Many {
                    touser,
                    toparty,
                    totag,
                },
            ),
            Target::Chat { app, chatid } => (app, Recipients::Chat(chatid)),
            Target::Bot { bot } => {
                let message = serde_json::from_str(message).map_err(unreadable)?;
                return Ok(Push::Bot { bot, message });
            }
        };
        let message = serde_json::from_str(message).map_err(unreadable)?;
        Ok(Push::App { app, to, message })
    }
}

/// A stored push that cannot be read back (written by a newer version, or damaged).
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("stored target cannot be read: {0}")]
    Target(serde_json::Error),
    #[error("stored message cannot be read: {0}")]
    Message(serde_json::Error),
}
