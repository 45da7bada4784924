//! The inbox: decrypted callbacks waiting for an agent.
//!
//! Owns: the hand-off between the HTTP handler (which pushes and answers WeCom) and the worker pool
//! (which takes jobs), the guarantee that one user's messages are handed out in arrival order and never
//! two at once, and the bound on how much waits.
//!
//! Must never: block the handler for longer than a push needs, or hand out a duplicate it recognised.
//! Backends (memory now, a durable store later) implement [`Inbox`]; handlers and workers see only it.

pub mod memory;

use async_trait::async_trait;

use crate::message::InboundMessage;

pub use memory::MemoryInbox;

/// A message to be queued: which app it came through and whose turn it is.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Name of the app the user wrote to; the reply leaves through it.
    pub app: String,
    /// `corp_id:user_id`: the unit of ordering.
    pub user_key: String,
    /// The callback's identity across WeCom's retries (`InboundMessage::dedup_key`).
    pub dedup_key: String,
    pub message: InboundMessage,
}

/// A queued message handed to a worker.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: u64,
    pub app: String,
    pub user_key: String,
    pub message: InboundMessage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Already seen: a retry by WeCom. Acknowledge it, do nothing more.
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    #[error("inbox is full ({capacity} messages waiting)")]
    Full { capacity: usize },
    #[error("inbox is closed: the gateway is shutting down")]
    Closed,
    #[error("inbox storage failed: {0}")]
    Storage(String),
}

#[async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// Queue a message, or report it as a duplicate. May wait briefly for room.
    async fn push(&self, job: NewJob) -> Result<Pushed, InboxError>;
    /// The next job whose user has nothing in progress; waits for one. `None` once closed and empty.
    async fn next(&self) -> Option<Job>;
    /// The job is finished (replied, failed or skipped): free its user for their next message.
    async fn finish(&self, job: &Job);
    /// Refuse further pushes; `next` drains what is left and then returns `None`.
    fn close(&self);
    /// Messages queued or in progress.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
