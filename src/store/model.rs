//! What the store keeps and what each backend must do: jobs, reply chunks, deliveries, routes,
//! history and received media, one trait per concern; [`Store`] is all of them from one backend.
//!
//! Must never: name a backend (they implement these traits; this file knows none of them).

use async_trait::async_trait;
use serde::Serialize;

use crate::conversation::{Channel, Push, Streamed, Target};
use crate::message::InboundMessage;
use crate::wecom::AppMessage;

/// A message to be queued: which app it came through and whose turn it is.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Where the member wrote (the app, by name); the reply leaves the same way.
    pub channel: Channel,
    /// `corp_id:user_id`: the unit of ordering.
    pub user_key: String,
    /// The callback's identity across WeCom's retries (`InboundMessage::dedup_key`).
    pub dedup_key: String,
    /// What the channel received (a self-built app: the decrypted XML): what is stored, and read
    /// into the job's message by [`Channel::received`] when it is handed out.
    pub payload: String,
}

/// How far the sending of one reply chunk got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// Never handed to WeCom.
    Unsent,
    /// Handed to WeCom, and no answer recorded: it may have been delivered.
    Started,
    /// WeCom accepted it.
    Sent,
}

/// One message of a recorded reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub seq: usize,
    pub message: AppMessage,
    pub state: ChunkState,
}

impl Chunk {
    /// How a durable store keeps a chunk's message: text as its content alone (as before other
    /// kinds existed), any other kind as JSON beside a short description.
    pub(crate) fn to_columns(message: &AppMessage) -> (String, Option<String>) {
        match message {
            AppMessage::Text { content } => (content.clone(), None),
            other => (
                format!("[{}]", other.msgtype()),
                serde_json::to_string(other).ok(),
            ),
        }
    }

    /// The message back from its stored columns.
    pub(crate) fn from_columns(content: String, message: Option<String>) -> AppMessage {
        let parsed = message.and_then(|json| serde_json::from_str(&json).ok());
        parsed.unwrap_or(AppMessage::Text { content })
    }
}

/// A queued message handed to a worker.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: u64,
    /// Where the member wrote; the reply leaves the same way.
    pub channel: Channel,
    pub user_key: String,
    pub message: InboundMessage,
    /// 1 on the first try; more when a previous process died while handling it.
    pub attempts: u32,
    /// The reply already recorded by an earlier try: send its unsent chunks, do not ask the agent again.
    pub reply: Option<Vec<Chunk>>,
    /// The msgid of the `ack_after` receipt an earlier try sent, to withdraw once the reply is out
    /// (`ack_recall`).
    pub receipt: Option<String>,
    /// How far an earlier try streamed the reply (an AI bot's bubble).
    pub stream: Option<Streamed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Already seen: a retry by WeCom. Acknowledge it, do nothing more.
    Duplicate,
}

/// A push (notification or API message) stored for delivery: one WeCom message each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    pub id: i64,
    pub push: Push,
    /// A previous process began sending it and did not record the outcome: it may have arrived.
    pub started: bool,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Queued,
    Sent,
    Failed,
}

impl DeliveryState {
    /// The state a finished delivery is stored with: failed if it carries a failure, else sent.
    pub fn finished(failure: Option<&Failure>) -> Self {
        if failure.is_some() {
            DeliveryState::Failed
        } else {
            DeliveryState::Sent
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Sent => "sent",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Queued, Self::Sent, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// What became of a delivery, for the status API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryStatus {
    pub id: i64,
    pub target: Target,
    pub state: DeliveryState,
    pub attempts: u32,
    pub error: Option<String>,
    /// The delivery a failed one was retried as (`delivery-9`), once it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retried_as: Option<String>,
}

impl DeliveryStatus {
    /// A stored row as the durable backends keep it: the target as JSON, the state as text.
    pub fn from_columns(
        id: i64,
        target: &str,
        state: &str,
        (attempts, error): (u32, Option<String>),
        retried_as: Option<i64>,
    ) -> Result<Self, StoreError> {
        let target: Target = serde_json::from_str(target).map_err(|e| {
            StoreError::failed(format!("delivery {id} has an unreadable target"), e)
        })?;
        let state = DeliveryState::parse(state).ok_or_else(|| {
            StoreError::found(format!("delivery {id} has an unknown state {state:?}"))
        })?;
        Ok(DeliveryStatus {
            id,
            target,
            state,
            attempts,
            error,
            retried_as: retried_as.map(|n| format!("delivery-{n}")),
        })
    }
}

/// Who said a line of a conversation, as chat-completion APIs name the roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::User, Self::Assistant]
            .into_iter()
            .find(|r| r.as_str() == text)
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub role: Role,
    pub content: String,
}

/// Why a job or a delivery failed for good, as facts the store keeps in columns of their own
/// (nothing is parsed back out of the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What the operator reads (`wecom-gateway failed`, `/api/v1/failed`).
    pub reason: String,
    /// The agent's reply was recorded, and WeCom refused a piece of it: a retry resends what is
    /// left of the recorded reply instead of asking the agent again.
    pub send_failed: bool,
    /// WeCom's errcode, when WeCom is who refused.
    pub errcode: Option<i64>,
}

impl Failure {
    /// WeCom refused a piece of a recorded reply (see [`Failure::send_failed`]).
    pub fn send_failed(reason: impl Into<String>, errcode: Option<i64>) -> Self {
        Failure {
            reason: reason.into(),
            send_failed: true,
            errcode,
        }
    }

    /// A failure WeCom answered with `errcode` (a push it refused, say).
    pub fn wecom(reason: impl Into<String>, errcode: Option<i64>) -> Self {
        Failure {
            errcode,
            ..Failure::from(reason.into())
        }
    }
}

/// Any other failure (the agent failed or timed out, nothing to send it through): no errcode, and
/// a retry asks the agent again.
impl From<String> for Failure {
    fn from(reason: String) -> Self {
        Failure {
            reason,
            send_failed: false,
            errcode: None,
        }
    }
}

impl From<&str> for Failure {
    fn from(reason: &str) -> Self {
        Failure::from(reason.to_owned())
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Replied in full, or nothing to reply.
    Done,
    /// Gave up; the failure is kept with the message.
    Failed(Failure),
    /// Cut short by the gateway stopping: a durable backend takes it up again at the next start.
    Interrupted,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store is full ({capacity} messages waiting)")]
    Full { capacity: usize },
    /// No room for new work: `max_store_mb` reached, or the disk is full.
    #[error("message store is full: {0}")]
    StoreFull(String),
    /// No room, as [`StoreError::StoreFull`], and the store logs it itself (`refusals.rs`: the
    /// first refusal, one line a minute, and when writes succeed again): callers answer 503 or try
    /// again without logging it.
    #[error("message store is full: {0}")]
    NoRoom(String),
    #[error("store is closed: the gateway is shutting down")]
    Closed,
    /// The store's server cannot be reached (a PostgreSQL store that is down): try later.
    #[error("message store is unreachable: {0}")]
    Unavailable(#[source] Cause),
    #[error("message store failed: {0}")]
    Storage(#[source] Cause),
}

impl StoreError {
    /// Whether the store logged this already, so a caller must not log it again (a full disk
    /// refuses every write, and a line per refusal floods the log).
    pub fn logged_by_store(&self) -> bool {
        matches!(self, StoreError::NoRoom(_))
    }

    /// A failure of the backend (`e`), doing what `context` says.
    pub fn failed(
        context: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Storage(Cause::new(Some(context.into()), e))
    }
    /// Something the store found wrong in what it holds (an unreadable row, a size that differs).
    pub fn found(what: impl Into<String>) -> Self {
        StoreError::Storage(Cause::new(None, Found(what.into())))
    }
}

/// Why a store operation failed: the backend's own error (kept for `source()`), and what the
/// store was doing.
#[derive(Debug, Clone)]
pub struct Cause {
    context: Option<String>,
    error: std::sync::Arc<dyn std::error::Error + Send + Sync>,
}

impl Cause {
    pub fn new(context: Option<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Cause {
            context,
            error: std::sync::Arc::new(e),
        }
    }
    /// The backend's error, if it is a `T`.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.error.downcast_ref::<T>()
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.context {
            Some(context) => write!(f, "{context}: {}", self.error),
            None => write!(f, "{}", self.error),
        }
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

/// What the store found wrong in its own records.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Found(String);

/// The job queue: acknowledged messages in per-user lanes, dedup of WeCom's retries, and retention.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Record a message (durably, for a durable backend) or report it as a duplicate.
    async fn push(&self, job: NewJob) -> Result<Pushed, StoreError>;
    /// The next job whose user has nothing in progress; waits for one. `None` once closed.
    async fn next(&self) -> Option<Job>;
    /// The job is over: record it and free its user for their next message. A durable backend
    /// keeps trying to record it while the store refuses writes (until the store closes).
    async fn finish(&self, job: &Job, outcome: Outcome);
    /// Delete finished messages (and so their dedup keys) received before `cutoff_ms` (Unix ms).
    async fn prune(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let _ = cutoff_ms;
        Ok(0)
    }
    /// Keep the in-memory window filled from the backlog until the store closes. The application
    /// runs it beside the workers; a backend without a backlog returns at once.
    async fn feed(&self) {}
    /// Refuse further pushes and stop handing out jobs (a memory backend drains first).
    fn close(&self);
    /// Messages in memory: waiting in the window or in progress.
    fn len(&self) -> usize;
    /// Whether the store takes writes now (for `/ready`): a durable backend writes something.
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The outbox: a job's reply items, recorded before any is sent, and how far each got.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Record the reply, already split, before any chunk is sent.
    async fn record_reply(&self, job: &Job, chunks: &[AppMessage]) -> Result<(), StoreError>;
    /// Chunk `seq` was uploaded: `message` now carries its media_id, reused if it is sent again.
    async fn record_upload(
        &self,
        job: &Job,
        seq: usize,
        message: &AppMessage,
    ) -> Result<(), StoreError>;
    /// Stamp chunk `seq` of the job's reply with how far it got, now: `Started` or `Sent`
    /// (`Unsent` is where every chunk begins; there is nothing to stamp).
    async fn mark_chunk(&self, job: &Job, seq: usize, state: ChunkState) -> Result<(), StoreError>;
    /// Chunk `seq` of the job's reply is about to be handed to WeCom.
    async fn mark_started(&self, job: &Job, seq: usize) -> Result<(), StoreError> {
        self.mark_chunk(job, seq, ChunkState::Started).await
    }
    /// WeCom accepted chunk `seq` of the job's reply.
    async fn mark_sent(&self, job: &Job, seq: usize) -> Result<(), StoreError> {
        self.mark_chunk(job, seq, ChunkState::Sent).await
    }
    /// The receipt sent while the agent worked has this msgid, withdrawn once the reply is out. A
    /// backend that keeps nothing across restarts may ignore it.
    async fn record_receipt(&self, job: &Job, msgid: &str) -> Result<(), StoreError> {
        let _ = (job, msgid);
        Ok(())
    }
    /// How far the reply has streamed, now. A backend that keeps nothing across restarts may
    /// ignore it.
    async fn record_stream(&self, job: &Job, streamed: &Streamed) -> Result<(), StoreError> {
        let _ = (job, streamed);
        Ok(())
    }
    /// The stored message `dedup_key` names, if stored: how far its reply has streamed (as
    /// recorded by whichever process handles it). URL mode answers WeCom's polls from it when
    /// the bubble is not this process's own. A backend that keeps nothing says None.
    async fn streamed(&self, dedup_key: &str) -> Result<Option<Option<Streamed>>, StoreError> {
        let _ = dedup_key;
        Ok(None)
    }
}

/// Which app each user last wrote through (recorded with each pushed message).
#[async_trait]
pub trait Routes: Send + Sync + 'static {
    /// The app `user_key` last wrote through.
    async fn route(&self, user_key: &str) -> Result<Option<String>, StoreError>;
}

/// Pushes (robot notifications, API messages) stored until delivered.
#[async_trait]
pub trait Deliveries: Send + Sync + 'static {
    /// Store pushes for delivery, in order, before they are acknowledged; returns their ids.
    async fn add_deliveries(&self, items: Vec<Push>) -> Result<Vec<i64>, StoreError>;
    /// Deliveries not yet sent or failed (after a restart), in id order.
    async fn queued_deliveries(&self) -> Result<Vec<StoredDelivery>, StoreError>;
    /// A delivery is about to be handed to WeCom.
    async fn start_delivery(&self, id: i64) -> Result<(), StoreError>;
    /// A delivery is over: sent (`failure` None) or failed.
    async fn finish_delivery(
        &self,
        id: i64,
        attempts: u32,
        failure: Option<Failure>,
    ) -> Result<(), StoreError>;
    async fn delivery(&self, id: i64) -> Result<Option<DeliveryStatus>, StoreError>;
}

/// Each user's conversation, for agents that send it with every turn.
#[async_trait]
pub trait History: Send + Sync + 'static {
    /// The last `max` entries of `user_key`'s conversation, oldest first.
    async fn history(&self, user_key: &str, max: usize) -> Result<Vec<HistoryEntry>, StoreError>;
    /// Add to `user_key`'s conversation, keeping only the last `keep` entries.
    async fn append_history(
        &self,
        user_key: &str,
        entries: Vec<HistoryEntry>,
        keep: usize,
    ) -> Result<(), StoreError>;
    async fn clear_history(&self, user_key: &str) -> Result<(), StoreError>;
}

/// Work that failed for good, for `wecom-gateway failed` and `GET /api/v1/failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedItem {
    /// `job-12` (a member's message) or `delivery-7` (a push).
    pub id: String,
    pub app: Option<String>,
    /// `corp_id:user_id`, or the push's target.
    pub member: String,
    pub error: String,
    /// WeCom's errcode, when WeCom refused it (a column of its own, not read from `error`).
    pub errcode: Option<i64>,
    /// When it failed, Unix ms.
    pub at_ms: i64,
}

/// What became of a request to retry a failed delivery (one store operation: checked, copied and
/// marked in one transaction, so two retries at once push it once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryRetry {
    /// Stored again as this new delivery, to be handed to a delivery queue.
    Queued(Box<StoredDelivery>),
    /// No such failed delivery, or it was retried already.
    NotFound,
    /// A push to departments, tags or @all, and the caller may not broadcast: nothing changed.
    NeedsBroadcast,
}

/// Failed work, listed and queued again (the rules are in `rules.rs`). Retrying a job makes a new
/// job that carries the old one's recorded reply when WeCom refused a piece of it, so the agent is
/// not asked again; retrying a delivery makes a new delivery. The old one is marked as retried,
/// in the same transaction, so it is retried once however many ask at once.
#[async_trait]
pub trait Failures: Send + Sync + 'static {
    /// The most recent failures, newest first, not yet retried.
    async fn failed(&self, limit: usize) -> Result<Vec<FailedItem>, StoreError> {
        let _ = limit;
        Ok(Vec::new())
    }
    /// Queue failed job `id` again; the new job's id, or None if there is no such failed job.
    async fn retry_job(&self, id: i64) -> Result<Option<i64>, StoreError> {
        let _ = id;
        Ok(None)
    }
    /// Store failed delivery `id` again as a new delivery and mark it retried, in one transaction;
    /// a broadcast only if `may_broadcast`.
    async fn retry_delivery(
        &self,
        id: i64,
        may_broadcast: bool,
    ) -> Result<DeliveryRetry, StoreError> {
        let _ = (id, may_broadcast);
        Ok(DeliveryRetry::NotFound)
    }
}

impl FailedItem {
    /// As reported (CLI and API): with WeCom's errcode, and what to check.
    pub fn report(&self) -> serde_json::Value {
        let errcode = self.errcode;
        let hint = errcode.and_then(crate::wecom::error::hint);
        serde_json::json!({
            "id": self.id, "app": self.app, "member": self.member, "error": self.error,
            "errcode": errcode, "hint": hint, "at_ms": self.at_ms,
        })
    }
}

/// Which failed work an id names: `job-12` or `delivery-7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedId {
    Job(i64),
    Delivery(i64),
}

/// Text that names no failed item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a failed item's id: they look like job-12 or delivery-7")]
pub struct NotAFailedId(String);

impl FailedId {
    pub fn parse(text: &str) -> Result<Self, NotAFailedId> {
        let bad = || NotAFailedId(text.to_owned());
        let (kind, n) = text.trim().split_once('-').ok_or_else(bad)?;
        let n: i64 = n.parse().map_err(|_| bad())?;
        match kind {
            "job" => Ok(FailedId::Job(n)),
            "delivery" => Ok(FailedId::Delivery(n)),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for FailedId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailedId::Job(n) => write!(f, "job-{n}"),
            FailedId::Delivery(n) => write!(f, "delivery-{n}"),
        }
    }
}

/// A file a member sent (image, voice, video, file), downloaded from WeCom and kept under
/// `data_dir/media/` by its content hash. The record is what the store keeps about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRecord {
    /// The SHA-256 of the bytes, in hex: the file's identity and its name on disk.
    pub sha256: String,
    /// `image`, `voice`, `video` or `file`: the message type it came in.
    pub kind: String,
    pub content_type: String,
    pub size: u64,
    /// The name WeCom gave it (`Content-Disposition`), if any.
    pub file_name: Option<String>,
}

/// Received media: what is known of each file, and the key that signs the links to them.
#[async_trait]
pub trait Media: Send + Sync + 'static {
    /// Record (or refresh, for the retention clock) a received file. `bytes` is given to a backend
    /// that [`Media::keeps_media_bytes`], so every replica can serve the file.
    async fn put_media(
        &self,
        record: &MediaRecord,
        bytes: Option<Vec<u8>>,
    ) -> Result<(), StoreError>;
    async fn media(&self, sha256: &str) -> Result<Option<MediaRecord>, StoreError>;
    /// Whether the store keeps the bytes themselves (a store shared by replicas does).
    fn keeps_media_bytes(&self) -> bool {
        false
    }
    /// The bytes, from a backend that keeps them.
    async fn media_bytes(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = sha256;
        Ok(None)
    }
    /// The key that signs media links: made once, then kept by the store, so links stay valid
    /// across restarts and between replicas.
    async fn media_key(&self) -> Result<Vec<u8>, StoreError>;
}

/// A fresh random key for signing media links.
pub(crate) fn new_media_key() -> Vec<u8> {
    use rand::RngCore;
    let mut key = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    key
}

/// Which replica holds each AI bot's long connection: WeCom keeps one connection per bot and drops
/// the older when a second subscribes, so two replicas connecting at once would take turns
/// kicking each other.
pub trait BotLeases: Send + Sync + 'static {
    /// Hold the lease of AI bot `name` (WeCom's `bot_id`) for as long as this process can,
    /// taking it whenever it is free: the receiver says whether this process holds it now. While
    /// held, this process also takes the bot's jobs (only the holder can reply). A backend that
    /// serves one process holds it at once, for good.
    fn hold_bot(&self, name: &str, bot_id: &str) -> tokio::sync::watch::Receiver<bool> {
        let _ = (name, bot_id);
        let (tx, rx) = tokio::sync::watch::channel(true);
        // Held for good: the value never changes, and the receiver still reads it.
        drop(tx);
        rx
    }
}

/// A whole store: every concern above, from one backend. Handlers and workers hold this; a part
/// that needs one concern only takes that trait (`Arc<dyn History>` upcasts from `Arc<dyn Store>`).
pub trait Store:
    Queue + Outbox + Routes + Deliveries + History + Media + Failures + BotLeases
{
}
impl<T: Queue + Outbox + Routes + Deliveries + History + Media + Failures + BotLeases> Store for T {}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
