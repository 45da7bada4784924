//! The worker pool: takes jobs from the inbox, asks the agent, and sends the reply through the app
//! the member wrote to, split into pieces WeCom accepts, in order.
//!
//! Must never: run a job whose user already has one in progress (the inbox guarantees it), or let one
//! failed job stop the pool.

use std::sync::Arc;

use crate::agent::{Agent, Turn};
use crate::app::Apps;
use crate::inbox::{Inbox, Job};
use crate::wecom::{split_utf8, WecomClient, TEXT_MAX_BYTES};

#[derive(Clone)]
pub struct Worker {
    pub inbox: Arc<dyn Inbox>,
    pub agent: Arc<dyn Agent>,
    pub client: WecomClient,
    pub apps: Apps,
}

impl Worker {
    /// Take and handle jobs until the inbox is closed and drained.
    pub async fn run(self) {
        while let Some(job) = self.inbox.next().await {
            self.handle(&job).await;
            self.inbox.finish(&job).await;
        }
    }

    async fn handle(&self, job: &Job) {
        let msg = &job.message;
        if !msg.is_chat_turn() {
            tracing::debug!(job = job.id, user = %job.user_key, msg_type = %msg.msg_type, "not a chat turn; no reply");
            return;
        }
        let Some(app) = self.apps.by_name(&job.app) else {
            tracing::error!(job = job.id, app = %job.app, "job names an app that is not configured; dropped");
            return;
        };
        let turn = Turn {
            app: &app.config.name,
            corp_id: &app.config.corp_id,
            user_id: &msg.from_user_name,
            user_key: &job.user_key,
            message: msg,
        };
        let reply = match self.agent.reply(turn).await {
            Ok(Some(reply)) if !reply.trim().is_empty() => reply,
            Ok(_) => {
                tracing::debug!(job = job.id, user = %job.user_key, "agent gave no reply");
                return;
            }
            Err(e) => {
                tracing::error!(job = job.id, user = %job.user_key, agent = self.agent.name(), error = %e, "agent failed");
                return;
            }
        };
        let pieces = split_utf8(&reply, TEXT_MAX_BYTES);
        let total = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            match self.client.send_text(app, &msg.from_user_name, piece).await {
                Ok(receipt) => {
                    if !receipt.invalid_users.is_empty() {
                        tracing::warn!(job = job.id, app = %app.config.name, invalid_users = ?receipt.invalid_users, "WeCom could not deliver to some recipients");
                    }
                }
                Err(e) => {
                    // Later pieces are not sent: a reply with a hole in the middle reads worse than
                    // one that stops.
                    tracing::error!(job = job.id, app = %app.config.name, user = %job.user_key, piece = i + 1, of = total, errcode = e.errcode(), error = %e, "message/send failed");
                    return;
                }
            }
        }
        tracing::info!(job = job.id, app = %app.config.name, user = %job.user_key, pieces = total, "reply sent");
    }
}
