//! The store's rules, written once above the backends: how the end of a job is recorded (until it
//! is, or the store closes), what a failure's columns are, how failures are listed (jobs and
//! deliveries merged, newest first, truncated), what retrying makes (resend the recorded reply or
//! ask the agent again; which deliveries may be retried), and what a stored delivery row means.
//! The backends (`memory.rs`, `sqlite.rs`, `postgres.rs`) hold the SQL and the transactions, and
//! call these.
//!
//! Must never: run SQL or name a backend, or read state back out of error text (every fact a rule
//! needs has a column of its own).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::model::{
    ChunkState, Deliveries, DeliveryRetry, FailedItem, Failure, Outcome, StoreError, StoredDelivery,
};
use crate::conversation::{Channel, Push, Target};
use crate::message::InboundMessage;

/// How long to wait before trying again to record the end of a job the store refused (a full
/// disk, an unreachable server).
pub(super) const RECORD_RETRY: Duration = Duration::from_secs(1);

/// How a finished job is stored: its state and its failure. `None` for `Interrupted`: the job is
/// left as it is, for the next start (or another replica) to take up again.
pub(super) fn finished(outcome: Outcome) -> Option<(&'static str, Option<Failure>)> {
    match outcome {
        Outcome::Done => Some(("done", None)),
        Outcome::Failed(failure) => Some(("failed", Some(failure))),
        Outcome::Interrupted => None,
    }
}

/// The columns `error`, `send_failed` and `errcode` of a finished job or delivery.
pub(super) fn failure_columns(failure: Option<&Failure>) -> (Option<&str>, bool, Option<i64>) {
    match failure {
        Some(f) => (Some(f.reason.as_str()), f.send_failed, f.errcode),
        None => (None, false, None),
    }
}

/// The outbox column that records, with the time, that a chunk got as far as `state`: `None` for
/// `Unsent`, where every chunk begins. `sent_at` set means sent whatever `started_at` says.
pub(super) fn chunk_stamp(state: ChunkState) -> Option<&'static str> {
    match state {
        ChunkState::Unsent => None,
        ChunkState::Started => Some("started_at"),
        ChunkState::Sent => Some("sent_at"),
    }
}

/// Record the end of job `id` by running `write` until it succeeds or the store closes. The
/// caller keeps the user's lane busy meanwhile, so their next message waits its turn; once the
/// store takes writes again this goes through on its own. `unrecorded` says what becomes of the
/// job if the store closes first. Returns whether the end was recorded.
pub(super) async fn record_until_closed<F, Fut>(
    id: i64,
    closed: &AtomicBool,
    unrecorded: &str,
    mut write: F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    while let Err(e) = write().await {
        if closed.load(Ordering::SeqCst) {
            tracing::error!(id, error = %e, "cannot record the end of a message; {unrecorded}");
            return false;
        }
        if !e.logged_by_store() {
            tracing::error!(id, error = %e, "cannot record the end of a message; trying again shortly");
        }
        tokio::time::sleep(RECORD_RETRY).await;
    }
    true
}

/// A stored job's channel and message, read back from its columns; the failure to record when
/// they cannot be read (a damaged row, or one a newer version wrote), so it is marked failed.
pub(super) fn stored_message(
    kind: &str,
    name: String,
    payload: &str,
) -> Result<(Channel, InboundMessage), Failure> {
    let unreadable =
        |e: &dyn std::fmt::Display| Failure::from(format!("stored message cannot be parsed: {e}"));
    let channel = Channel::from_columns(kind, name).map_err(|e| unreadable(&e))?;
    let message = channel.received(payload).map_err(|e| unreadable(&e))?;
    Ok((channel, message))
}

/// Why a message is given up: the gateway stopped `times` times while handling it.
pub(super) fn gave_up(times: i64) -> String {
    format!("gave up: the gateway stopped {times} times while handling this message")
}

/// A failed job as listed.
pub(super) fn failed_job(
    id: i64,
    app: String,
    user_key: String,
    error: Option<String>,
    errcode: Option<i64>,
    at_ms: i64,
) -> FailedItem {
    FailedItem {
        id: format!("job-{id}"),
        app: Some(app),
        member: user_key,
        error: error.unwrap_or_default(),
        errcode,
        at_ms,
    }
}

/// A failed delivery as listed: its member is the push's target, as text.
pub(super) fn failed_delivery(
    id: i64,
    target: &str,
    error: Option<String>,
    errcode: Option<i64>,
    at_ms: i64,
) -> FailedItem {
    let target: Option<Target> = serde_json::from_str(target).ok();
    let (app, member) = match target {
        Some(Target::App { app, user }) => (Some(app), user),
        Some(Target::Broadcast { app, .. }) => (Some(app), "(broadcast)".into()),
        Some(Target::Chat { app, chatid }) => (Some(app), format!("chat {chatid}")),
        Some(Target::Bot { bot }) => (None, format!("robot {bot}")),
        None => (None, "(unreadable target)".into()),
    };
    FailedItem {
        id: format!("delivery-{id}"),
        app,
        member,
        error: error.unwrap_or_default(),
        errcode,
        at_ms,
    }
}

/// The `limit` most recent failures, newest first, from failed jobs and failed deliveries (each
/// read newest first, at most `limit`, and not retried yet).
pub(super) fn newest_failures(
    mut jobs: Vec<FailedItem>,
    deliveries: Vec<FailedItem>,
    limit: usize,
) -> Vec<FailedItem> {
    jobs.extend(deliveries);
    jobs.sort_by_key(|i| std::cmp::Reverse(i.at_ms));
    jobs.truncate(limit);
    jobs
}

/// What retrying a failed job makes: a new queued job with its own dedup key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JobRetry {
    pub dedup_key: String,
    /// 1 when the recorded reply is resent: the job is taken up as handled before, so its reply is
    /// read and only its unsent pieces go out. 0 asks the agent again.
    pub attempts: i32,
    /// Copy the old job's recorded reply (and how far each piece got) to the new job.
    pub copy_reply: bool,
}

/// A failed job is retried as a new job; only when WeCom refused a piece of a recorded reply is
/// that reply resent (what was sent stays sent). Any other failure asks the agent again.
pub(super) fn job_retry(dedup_key: &str, send_failed: bool, now_ms: i64) -> JobRetry {
    JobRetry {
        dedup_key: format!("{dedup_key}:retry:{now_ms}"),
        attempts: i32::from(send_failed),
        copy_reply: send_failed,
    }
}

/// What a failed, not yet retried, delivery's stored row allows.
pub(super) enum RetryCheck {
    /// Store this push again as a new delivery, and mark the old one retried.
    Retry(Box<Push>),
    /// Change nothing; this is the answer.
    Answer(DeliveryRetry),
}

/// Whether failed delivery `id` (its stored `target` and `payload`) may be retried: a broadcast
/// only by a caller that may broadcast. A push that cannot be read is an error of the store.
pub(super) fn delivery_retry(
    id: i64,
    target: &str,
    payload: &str,
    may_broadcast: bool,
) -> Result<RetryCheck, StoreError> {
    let push = Push::from_columns(target, payload)
        .map_err(|e| StoreError::failed(format!("delivery {id}"), e))?;
    if matches!(push.target(), Target::Broadcast { .. }) && !may_broadcast {
        return Ok(RetryCheck::Answer(DeliveryRetry::NeedsBroadcast));
    }
    Ok(RetryCheck::Retry(Box::new(push)))
}

/// The answer once the retry of a delivery is stored as delivery `new`.
pub(super) fn delivery_retried(new: i64, push: Box<Push>) -> DeliveryRetry {
    DeliveryRetry::Queued(Box::new(StoredDelivery {
        id: new,
        push: *push,
        started: false,
    }))
}

/// Pushes as a durable store keeps them, `(target, payload)` each; all or nothing.
pub(super) fn push_columns(items: &[Push]) -> Result<Vec<(String, String)>, StoreError> {
    (items.iter())
        .map(Push::to_columns)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::failed("cannot encode a push", e))
}

/// Stored rows `(id, target, payload, started)` as deliveries to resume. A row that cannot be
/// read would fail at every start: it is marked failed, with the reason, and left out.
pub(super) async fn readable_deliveries(
    store: &dyn Deliveries,
    rows: Vec<(i64, String, String, bool)>,
) -> Result<Vec<StoredDelivery>, StoreError> {
    let mut queued = Vec::with_capacity(rows.len());
    for (id, target, payload, started) in rows {
        match Push::from_columns(&target, &payload) {
            Ok(push) => queued.push(StoredDelivery { id, push, started }),
            Err(why) => {
                tracing::error!(delivery = id, "{why}; marked failed");
                let failure = Failure::from(why.to_string());
                store.finish_delivery(id, 0, Some(failure)).await?;
            }
        }
    }
    Ok(queued)
}
