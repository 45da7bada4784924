//! An AI bot's reply to one message: the stream bubble that shows the answer while the agent
//! writes, finished with the whole answer, and what does not fit or comes too late sent as
//! messages of their own (`aibot_send_msg`). How far it got is recorded as it goes, so that after
//! a restart or a lost connection the member sees the rest once: the same bubble finished if
//! WeCom still takes its `req_id`, else the part they have not seen, as a message.
//!
//! Owns: the bubble's rules (cumulative content within 20,480 bytes, finished within
//! `aibot.stream_secs` of its first frame, never an empty finish), and which refusals end the
//! bubble for good. Must never: send a stream frame after its bubble was finished, or send the
//! part of an answer the member has already seen again.

use std::time::Duration;

use serde_json::Value;

use super::frame::{self, MAX_STREAM_BYTES};
use super::link::{Link, LinkError};
use super::stored::ReplyTo;
use crate::conversation::Streamed;
use crate::store::{now_ms, Job, Outbox};

/// How long a command waits for the bot to be connected before it counts as failed.
pub const WAIT_CONNECTED: Duration = Duration::from_secs(30);

/// Why a reply could not be delivered in full.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {error}")]
pub struct NotDelivered {
    pub what: &'static str,
    pub error: LinkError,
}

/// One reply's bubble and what follows it.
pub struct Bubble<'a> {
    link: &'a Link,
    outbox: &'a dyn Outbox,
    job: &'a Job,
    to: &'a ReplyTo,
    streamed: Streamed,
    stream_for: Duration,
    /// WeCom no longer takes frames for the bubble (its req_id, or its time, is over).
    closed: bool,
}

impl<'a> Bubble<'a> {
    /// The bubble of `job`'s reply: the one an earlier try began, or a new one.
    pub fn new(
        link: &'a Link,
        outbox: &'a dyn Outbox,
        job: &'a Job,
        to: &'a ReplyTo,
        stream_for: Duration,
    ) -> Self {
        let streamed = job.stream.clone().unwrap_or_else(|| Streamed {
            id: format!("s{}_{}", job.id, hex::encode(rand::random::<[u8; 6]>())),
            started_ms: 0,
            shown: String::new(),
            finished: false,
            delivered: 0,
        });
        let closed = streamed.finished || to.req_id.is_none();
        Bubble {
            link,
            outbox,
            job,
            to,
            streamed,
            stream_for,
            closed,
        }
    }

    /// Whether an earlier try began this bubble.
    pub fn resumed(&self) -> bool {
        self.streamed.started_ms > 0
    }

    /// Whether frames may still go to the bubble.
    pub fn open(&self) -> bool {
        !self.closed
    }

    fn expired(&self) -> bool {
        self.streamed.started_ms > 0
            && now_ms() - self.streamed.started_ms >= self.stream_for.as_millis() as i64
    }

    /// Show `text` (the answer so far) in the bubble, cut to WeCom's limit. A bubble past its
    /// time is finished with what it shows; one WeCom refuses is given up, and what follows goes
    /// as messages.
    pub async fn show(&mut self, text: &str) {
        if self.closed {
            return;
        }
        if self.expired() {
            self.close_in_time().await;
            return;
        }
        let text = frame::clamp(text, MAX_STREAM_BYTES);
        if text.trim().is_empty() || text == self.streamed.shown {
            return;
        }
        let _ = self.frame(text, false).await;
    }

    /// Finish a bubble whose time is up with what it shows, so WeCom does not show its own
    /// fallback text; the rest of the answer follows as messages.
    pub async fn close_in_time(&mut self) {
        if self.closed {
            return;
        }
        let shown = self.streamed.shown.clone();
        let shown = if shown.trim().is_empty() {
            "…"
        } else {
            &shown
        };
        tracing::info!(job = self.job.id, aibot = %self.link.name, "the reply's stream reached aibot.stream_secs: finished with what it shows; the rest follows as a message");
        let _ = self.frame(&shown.to_owned(), true).await;
        self.closed = true;
    }

    /// One frame to the bubble, recorded once WeCom took it.
    async fn frame(&mut self, content: &str, finish: bool) -> Result<(), LinkError> {
        let Some(req_id) = self.to.req_id.as_deref() else {
            self.closed = true;
            return Err(LinkError::NotConnected);
        };
        let body = frame::stream(&self.streamed.id, content, finish);
        let first = self.streamed.started_ms == 0;
        if first {
            self.streamed.started_ms = now_ms();
        }
        match (self.link)
            .request(frame::RESPOND, req_id, Some(&body), WAIT_CONNECTED)
            .await
        {
            Ok(_) => {
                self.streamed.shown = content.to_owned();
                self.streamed.finished |= finish;
                self.closed |= finish;
                self.record().await;
                Ok(())
            }
            Err(e) => {
                // The callback's req_id is over (another connection's, or expired), the
                // stream's 6 minutes are over, or it cannot be sent now: what follows goes as
                // messages, which need no req_id. A frame WeCom may have taken (no answer) is
                // not sent again: the next snapshot replaces it anyway.
                if !matches!(e, LinkError::Timeout) {
                    tracing::warn!(job = self.job.id, aibot = %self.link.name, errcode = e.errcode(), error = %e, "the reply's stream cannot be updated; the rest of the answer goes as a message");
                    self.closed = true;
                }
                if first {
                    self.record().await;
                }
                Err(e)
            }
        }
    }

    async fn record(&self) {
        if let Err(e) = self.outbox.record_stream(self.job, &self.streamed).await {
            if !e.logged_by_store() {
                tracing::warn!(job = self.job.id, error = %e, "cannot record how far the reply streamed");
            }
        }
    }

    /// The whole answer is `full`: finish the bubble with it (as much as fits) and send what the
    /// member has not seen as messages. A member who saw part of another answer (an earlier
    /// try's, cut short) gets this one whole.
    pub async fn finish(&mut self, full: &str) -> Result<(), NotDelivered> {
        if !self.closed && self.expired() {
            self.close_in_time().await;
        }
        if !self.closed {
            let head = frame::clamp(full, MAX_STREAM_BYTES);
            let head = if head.trim().is_empty() { "…" } else { head };
            if self.frame(head, true).await.is_ok() {
                self.streamed.delivered = head.len().min(full.len());
                self.record().await;
            }
        }
        if self.streamed.delivered == 0 {
            let shown = &self.streamed.shown;
            let seen = !shown.is_empty() && full.starts_with(shown.as_str());
            self.streamed.delivered = if seen { shown.len() } else { 0 };
        }
        let rest = full.get(self.streamed.delivered..).unwrap_or("");
        if rest.trim().is_empty() {
            return Ok(());
        }
        let (chat, group) = self.to.chat();
        let mut at = self.streamed.delivered;
        for piece in frame::pieces(rest, MAX_STREAM_BYTES) {
            let body = frame::send_to(chat, group, &frame::markdown(piece));
            self.send(&body, "aibot_send_msg").await?;
            at += piece.len();
            self.streamed.delivered = at;
            self.record().await;
        }
        tracing::info!(job = self.job.id, aibot = %self.link.name, "the rest of the answer was sent as a message of its own");
        Ok(())
    }

    /// A message of its own (`aibot_send_msg`), with a new req_id.
    pub async fn send(&self, body: &Value, what: &'static str) -> Result<(), NotDelivered> {
        let req_id = format!("send_{}", hex::encode(rand::random::<[u8; 8]>()));
        self.link
            .request(frame::SEND, &req_id, Some(body), WAIT_CONNECTED)
            .await
            .map(|_| ())
            .map_err(|error| NotDelivered { what, error })
    }

    /// An answer to an event's callback (`cmd`: the card update to a click), with its req_id.
    pub async fn respond(
        &self,
        cmd: &str,
        body: &Value,
        what: &'static str,
    ) -> Result<(), NotDelivered> {
        let Some(req_id) = self.to.req_id.as_deref() else {
            return Ok(());
        };
        (self.link)
            .request(cmd, req_id, Some(body), WAIT_CONNECTED)
            .await
            .map(|_| ())
            .map_err(|error| NotDelivered { what, error })
    }

    /// A reply of another kind (an image, a file, a card) to the same callback, or as a message
    /// of its own when its req_id is over.
    pub async fn reply(&self, body: &Value, what: &'static str) -> Result<(), NotDelivered> {
        if let Some(req_id) = self.to.req_id.as_deref() {
            let sent = (self.link)
                .request(frame::RESPOND, req_id, Some(body), WAIT_CONNECTED)
                .await;
            match sent {
                Ok(_) => return Ok(()),
                Err(LinkError::Refused { errcode, .. })
                    if errcode == frame::INVALID_REQ_ID || errcode == frame::STREAM_EXPIRED => {}
                Err(error) => return Err(NotDelivered { what, error }),
            }
        }
        let (chat, group) = self.to.chat();
        self.send(&frame::send_to(chat, group, body), what).await
    }
}
