//! The values the layers hand one another: what a member sent as the agent gets it (a received
//! file's description), and what the gateway sends out (a push and its target). The receiving
//! side (http), the store, the worker, the agents and outbound all speak these.
//!
//! Must never: import any of those layers (it sits below them all, beside `wecom`'s payload
//! types, which are the reply items themselves), or do I/O.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::wecom::payload::{AppMessage, BotMessage, Recipients};

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
