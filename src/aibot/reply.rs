//! An AI bot's reply to one message: the stream bubble that shows the answer while the agent
//! writes, finished with the whole answer, and what does not fit or comes too late sent as
//! messages of their own (`aibot_send_msg`; in URL mode, once, to the `response_url`). How far it got is recorded as it goes, so that after
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
use super::polls::{Polls, Shown};
use super::stored::ReplyTo;
use crate::conversation::Streamed;
use crate::store::{now_ms, Job, Outbox};

/// How long a command waits for the bot to be connected before it counts as failed.
pub const WAIT_CONNECTED: Duration = Duration::from_secs(30);

/// What of `text` (an answer being written) the bubble shows: from its first words, and up to
/// a markdown image, which the finished answer sends as an image of its own.
fn visible(text: &str) -> &str {
    let text = text.trim_start();
    match text.find("![") {
        Some(at) => &text[..at],
        None => text,
    }
}

/// How many bytes `a` and `b` begin with alike, at a character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((at, _), _)| at)
}

/// Why part of a reply did not reach WeCom.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Link(#[from] LinkError),
    /// URL mode: the callback's `response_url` refused the message, or could not be reached.
    #[error("response_url: {0}")]
    ResponseUrl(String),
    /// URL mode: no `response_url`, or it was used already (WeCom takes one message on it).
    #[error("no response_url left to send it to")]
    NoResponseUrl,
    /// URL mode cannot send this kind of message after the passive reply.
    #[error("URL mode sends only text and cards after the reply's bubble")]
    NotInUrlMode,
    /// Another replica holds the bot now: the job goes back for it.
    #[error("another replica holds the AI bot now")]
    Standby,
}

impl SendError {
    pub fn errcode(&self) -> Option<i64> {
        match self {
            SendError::Link(e) => e.errcode(),
            _ => None,
        }
    }
}

/// Why a reply could not be delivered in full.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {error}")]
pub struct NotDelivered {
    pub what: &'static str,
    pub error: SendError,
}

/// How a bot's replies reach WeCom.
#[derive(Clone, Copy)]
pub enum Way<'a> {
    /// The long connection: frames answer the callback's `req_id`; later messages are
    /// `aibot_send_msg`.
    Link(&'a Link),
    /// URL mode: WeCom polls for the bubble; one later message may go to the `response_url`.
    Polled {
        polls: &'a Polls,
        http: &'a reqwest::Client,
    },
}

/// One reply's bubble and what follows it.
pub struct Bubble<'a> {
    way: Way<'a>,
    /// The bot's name, for the log.
    name: &'a str,
    outbox: &'a dyn Outbox,
    job: &'a Job,
    to: &'a ReplyTo,
    streamed: Streamed,
    stream_for: Duration,
    /// WeCom no longer takes frames for the bubble (its req_id, or its time, is over).
    closed: bool,
    /// An earlier try began the bubble.
    resumed: bool,
}

impl<'a> Bubble<'a> {
    /// The bubble of `job`'s reply: the one an earlier try began, or a new one.
    pub fn new(
        way: Way<'a>,
        name: &'a str,
        outbox: &'a dyn Outbox,
        job: &'a Job,
        to: &'a ReplyTo,
        stream_for: Duration,
    ) -> Self {
        // URL mode's bubble was opened by the passive reply to the callback, with its own id.
        let streamed = job.stream.clone().unwrap_or_else(|| Streamed {
            id: (to.stream_id.clone()).unwrap_or_else(|| {
                format!("s{}_{}", job.id, hex::encode(rand::random::<[u8; 6]>()))
            }),
            started_ms: to
                .received_ms
                .filter(|_| to.stream_id.is_some())
                .unwrap_or(0),
            shown: String::new(),
            finished: false,
            delivered: 0,
            response_url_used: false,
            placeholder: false,
        });
        let closed = streamed.finished || matches!(way, Way::Link(_)) && to.req_id.is_none();
        Bubble {
            resumed: job.stream.is_some(),
            way,
            name,
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
        self.resumed
    }

    /// Whether the member sees the bubble (it has had a frame, or URL mode's passive answer).
    pub fn on_screen(&self) -> bool {
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
        let text = frame::clamp(visible(text), MAX_STREAM_BYTES);
        if text.trim().is_empty() || text == self.streamed.shown {
            return;
        }
        let _ = self.frame(text, false).await;
    }

    /// Show the placeholder: not part of the answer, so never counted as seen of it.
    pub async fn placeholder(&mut self, text: &str) {
        if !self.closed && !text.trim().is_empty() && self.frame(text, false).await.is_ok() {
            self.streamed.placeholder = true;
        }
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
        tracing::info!(job = self.job.id, aibot = %self.name, "the reply's stream reached aibot.stream_secs: finished with what it shows; the rest follows as a message");
        let _ = self.frame(shown, true).await;
        self.closed = true;
    }

    /// One frame to the bubble. Recorded before it is sent: once written to the connection it
    /// has almost surely reached the member, so after a crash the record says what they see
    /// (a record made after WeCom's answer would miss a frame the crash caught in flight, and
    /// the rest sent later would repeat it). A frame WeCom refuses is taken back out.
    async fn frame(&mut self, content: &str, finish: bool) -> Result<(), LinkError> {
        let before = self.streamed.clone();
        if self.streamed.started_ms == 0 {
            self.streamed.started_ms = now_ms();
        }
        self.streamed.shown = content.to_owned();
        self.streamed.placeholder = false;
        self.streamed.finished |= finish;
        if matches!(self.way, Way::Link(_)) {
            self.record().await;
        }
        let sent = match self.way {
            // Recorded below in either case: another process answers its polls from the store.
            Way::Polled { polls, .. } => match polls.set(&self.streamed.id, content, finish) {
                Shown::Here | Shown::NotHere => Ok(Value::Null),
                Shown::Abandoned => Err(LinkError::Refused {
                    errcode: frame::STREAM_EXPIRED,
                    errmsg: "WeCom stopped polling the bubble (it was polled before it was stored)"
                        .into(),
                }),
            },
            Way::Link(link) => match self.to.req_id.as_deref() {
                None => Err(LinkError::NotConnected),
                Some(req_id) => {
                    let body = frame::stream(&self.streamed.id, content, finish);
                    link.request(frame::RESPOND, req_id, Some(&body), WAIT_CONNECTED)
                        .await
                }
            },
        };
        let result = match &sent {
            Ok(_) => "ok",
            Err(LinkError::Timeout) => "no_answer",
            Err(_) => "refused",
        };
        let labels = [("aibot", self.name), ("result", result)];
        crate::metrics::count(crate::metrics::AIBOT_FRAMES, &labels);
        match sent {
            Ok(_) => {
                self.closed |= finish;
                if matches!(self.way, Way::Polled { .. }) {
                    self.record().await;
                }
                Ok(())
            }
            // No answer: WeCom may have taken it, and the record says so; the next snapshot
            // replaces it anyway.
            Err(LinkError::Timeout) => Err(LinkError::Timeout),
            Err(e) => {
                // The callback's req_id is over (another connection's, or expired), the
                // stream's 6 minutes are over, or it cannot be sent now: what follows goes as
                // messages, which need no req_id.
                tracing::warn!(job = self.job.id, aibot = %self.name, errcode = e.errcode(), error = %e, "the reply's stream cannot be updated; the rest of the answer goes as a message");
                self.closed = true;
                // A frame WeCom refused, or that never left, is not on screen; one written to a
                // connection that then closed may be, and stays counted.
                if matches!(e, LinkError::Refused { .. } | LinkError::NotConnected) {
                    self.streamed = Streamed {
                        started_ms: self.streamed.started_ms,
                        ..before
                    };
                }
                self.record().await;
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
        if self.streamed.delivered == 0 && !self.streamed.placeholder {
            // What the bubble shows of this answer: all it shows when the answer begins with it;
            // else, streamed by this try (the finished answer reads a little differently: trimmed,
            // images taken out), as far as the two agree; streamed by an earlier try, nothing (it
            // was another answer, and this one is sent whole).
            let shown = &self.streamed.shown;
            self.streamed.delivered = match full.starts_with(shown.as_str()) {
                true => shown.len(),
                false if !self.resumed => common_prefix(full, shown),
                false => 0,
            };
        }
        let rest = full.get(self.streamed.delivered..).unwrap_or("");
        if rest.trim().is_empty() {
            return Ok(());
        }
        let mut at = self.streamed.delivered;
        for piece in frame::pieces(rest, MAX_STREAM_BYTES) {
            self.message(&frame::markdown(piece), "the rest of the answer")
                .await?;
            at += piece.len();
            self.streamed.delivered = at;
            self.record().await;
        }
        tracing::info!(job = self.job.id, aibot = %self.name, "the rest of the answer was sent as a message of its own");
        Ok(())
    }

    /// A message of its own: `aibot_send_msg` with a new req_id to the chat, or in URL mode
    /// the one message the `response_url` takes.
    pub async fn message(
        &mut self,
        message: &Value,
        what: &'static str,
    ) -> Result<(), NotDelivered> {
        let failed = |error: SendError| NotDelivered { what, error };
        match self.way {
            Way::Link(link) => {
                let (chat, group) = self.to.chat();
                let body = frame::send_to(chat, group, message);
                let mut tries = 0;
                let sent = loop {
                    let req_id = format!("send_{}", hex::encode(rand::random::<[u8; 8]>()));
                    let sent =
                        (link.request(frame::SEND, &req_id, Some(&body), WAIT_CONNECTED)).await;
                    tries += 1;
                    // Not sent (the connection is down, or went before it was written): sent
                    // again once the bot is connected; a message WeCom may have taken (no
                    // answer) is not, lest it show twice.
                    match sent {
                        Err(LinkError::NotConnected) if tries < 3 => {}
                        other => break other,
                    }
                    if !link.ready().await {
                        return Err(failed(SendError::Standby));
                    }
                };
                match (sent, self.to.req_id.as_deref()) {
                    (Ok(_), _) => Ok(()),
                    // Whether a group takes a pushed message is disputed (WeCom's doc says yes,
                    // others found no): refused there, it goes as one more reply to the member's
                    // message, which a group does take while the req_id lasts.
                    (Err(LinkError::Refused { errcode, .. }), Some(req_id))
                        if group && errcode != frame::NOT_SUBSCRIBED =>
                    {
                        tracing::info!(aibot = %self.name, errcode, "a pushed message to the group was refused: sent as a reply to the member's message instead");
                        link.request(frame::RESPOND, req_id, Some(message), WAIT_CONNECTED)
                            .await
                            .map(|_| ())
                            .map_err(|e| failed(e.into()))
                    }
                    (Err(e), _) => Err(failed(e.into())),
                }
            }
            Way::Polled { http, .. } => {
                let url = (self.to.response_url.as_deref())
                    .filter(|_| !self.streamed.response_url_used)
                    .ok_or(failed(SendError::NoResponseUrl))?;
                // Used once, whatever WeCom answers: a second POST is not shown.
                self.streamed.response_url_used = true;
                self.record().await;
                let answer = http.post(url).json(message).send().await;
                let answer = answer
                    .map_err(|e| failed(SendError::ResponseUrl(e.without_url().to_string())))?;
                let doc: Value = answer.json().await.unwrap_or(Value::Null);
                match doc["errcode"].as_i64().unwrap_or(0) {
                    0 => Ok(()),
                    code => Err(failed(SendError::ResponseUrl(format!(
                        "errcode {code}, {}",
                        doc["errmsg"].as_str().unwrap_or("")
                    )))),
                }
            }
        }
    }

    /// An answer to an event's callback (`cmd`: the card update to a click), with its req_id.
    pub async fn respond(
        &self,
        cmd: &str,
        body: &Value,
        what: &'static str,
    ) -> Result<(), NotDelivered> {
        let (Way::Link(link), Some(req_id)) = (self.way, self.to.req_id.as_deref()) else {
            return Err(NotDelivered {
                what,
                error: SendError::NotInUrlMode,
            });
        };
        link.request(cmd, req_id, Some(body), WAIT_CONNECTED)
            .await
            .map(|_| ())
            .map_err(|e| NotDelivered {
                what,
                error: e.into(),
            })
    }

    /// A reply of another kind (an image, a file, a card) to the same callback, or as a message
    /// of its own when its req_id is over.
    pub async fn reply(&mut self, body: &Value, what: &'static str) -> Result<(), NotDelivered> {
        if let (Way::Link(link), Some(req_id)) = (self.way, self.to.req_id.as_deref()) {
            let sent = link
                .request(frame::RESPOND, req_id, Some(body), WAIT_CONNECTED)
                .await;
            match sent {
                Ok(_) => return Ok(()),
                Err(LinkError::Refused { errcode, .. })
                    if errcode == frame::INVALID_REQ_ID || errcode == frame::STREAM_EXPIRED => {}
                Err(e) => {
                    return Err(NotDelivered {
                        what,
                        error: e.into(),
                    })
                }
            }
        }
        self.message(body, what).await
    }
}
