//! The worker pool: takes jobs from the inbox, asks the agent, records the reply, and sends it
//! through the app the member wrote to, split into pieces WeCom accepts, in order.
//!
//! Must never: ask the agent again for a message whose reply is already recorded, send a chunk
//! before the reply is recorded (when the store works), or let one failed job stop the pool.

use std::sync::Arc;

use crate::agent::{Agent, Turn};
use crate::app::Apps;
use crate::inbox::{Chunk, Inbox, Job, Outcome};
use crate::outbound::Outbound;
use crate::wecom::{split_utf8, AppMessage, TEXT_MAX_BYTES};

#[derive(Clone)]
pub struct Worker {
    pub inbox: Arc<dyn Inbox>,
    pub agent: Arc<dyn Agent>,
    pub outbound: Arc<Outbound>,
    pub apps: Apps,
}

impl Worker {
    /// Take and handle jobs until the inbox closes.
    pub async fn run(self) {
        while let Some(job) = self.inbox.next().await {
            let outcome = self.handle(&job).await;
            self.inbox.finish(&job, outcome).await;
        }
    }

    async fn handle(&self, job: &Job) -> Outcome {
        let msg = &job.message;
        if !msg.is_chat_turn() {
            tracing::debug!(job = job.id, user = %job.user_key, msg_type = %msg.msg_type, "not a chat turn; no reply");
            return Outcome::Done;
        }
        let Some(app) = self.apps.by_name(&job.app) else {
            let error = format!("app {:?} is no longer configured", job.app);
            tracing::error!(job = job.id, user = %job.user_key, "{error}; message dropped");
            return Outcome::Failed(error);
        };
        let chunks = match &job.reply {
            Some(recorded) => {
                let left = recorded.iter().filter(|c| !c.sent).count();
                tracing::info!(job = job.id, user = %job.user_key, attempt = job.attempts, left, "resuming a recorded reply");
                recorded.clone()
            }
            None => {
                tracing::debug!(job = job.id, user = %job.user_key, attempt = job.attempts, "asking the agent");
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
                        return Outcome::Done;
                    }
                    Err(e) => {
                        tracing::error!(job = job.id, user = %job.user_key, agent = self.agent.name(), error = %e, "agent failed");
                        return Outcome::Failed(e.to_string());
                    }
                };
                let pieces = split_utf8(&reply, TEXT_MAX_BYTES);
                if let Err(e) = self.inbox.record_reply(job, &pieces).await {
                    // Deliver anyway: a lost answer is worse than a rare double after a crash.
                    tracing::error!(job = job.id, error = %e, "cannot record the reply; sending it unrecorded");
                }
                pieces
                    .into_iter()
                    .enumerate()
                    .map(|(seq, content)| Chunk {
                        seq,
                        content: content.to_owned(),
                        sent: false,
                    })
                    .collect::<Vec<_>>()
            }
        };
        let total = chunks.len();
        // One reply at a time per member: pushes to the same member wait until this one is out.
        let _turn = self
            .outbound
            .lock(&Outbound::member_key(app, &msg.from_user_name))
            .await;
        for chunk in chunks.iter().filter(|c| !c.sent) {
            let message = AppMessage::Text {
                content: chunk.content.clone(),
            };
            match self
                .outbound
                .send_app(app, &msg.from_user_name, &message)
                .await
            {
                Ok((receipt, _attempts)) => {
                    if !receipt.invalid_users.is_empty() {
                        tracing::warn!(job = job.id, app = %app.config.name, invalid_users = ?receipt.invalid_users, "WeCom could not deliver to some recipients");
                    }
                    if let Err(e) = self.inbox.mark_sent(job, chunk.seq).await {
                        tracing::error!(job = job.id, seq = chunk.seq, error = %e, "cannot record a sent chunk");
                    }
                }
                Err(failure) => {
                    // Later pieces are not sent: a reply with a hole in the middle reads worse than
                    // one that stops.
                    tracing::error!(job = job.id, app = %app.config.name, user = %job.user_key, piece = chunk.seq + 1, of = total, errcode = failure.error.errcode(), error = %failure, "message/send failed");
                    return Outcome::Failed(format!(
                        "piece {} of {total}: {failure}",
                        chunk.seq + 1
                    ));
                }
            }
        }
        tracing::info!(job = job.id, app = %app.config.name, user = %job.user_key, pieces = total, "reply sent");
        Outcome::Done
    }
}
