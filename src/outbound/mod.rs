//! Reliable outbound delivery: every message to WeCom goes through here.
//!
//! Owns: WeCom's rate limits (per app member; per group robot), retries with backoff for failures
//! that heal, the per-recipient lock that keeps one reply's chunks together, and the queue of pushes
//! from the API (`dispatch`).
//!
//! Must never: drop a message to stay under a limit (it waits instead), retry a failure that will
//! not heal, or log a webhook key or access token.

pub mod upload;

pub use upload::Unsendable;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::sync::{Notify, OwnedMutexGuard};
use tokio::time::Instant;

use crate::app::App;
use crate::bots::Bot;
use crate::ratelimit::{Limit, RateLimiter};
use crate::ratelimit::{Reserved, SharedWindows};
use crate::retry::RetryPolicy;
use crate::wecom::client::Upload;
use crate::wecom::media::MediaType;
use crate::wecom::payload::{Media, BOT_IMAGE_MAX_BYTES};
use crate::wecom::{ApiError, AppMessage, BotMessage, Recipients, SendReceipt, WecomClient};
use base64::Engine as _;
use md5::Digest as _;

/// The limits WeCom enforces (and silently drops over): 30 a minute and 1000 an hour to one member
/// from one app, 20 a minute per group robot.
pub fn default_member_limits() -> Vec<Limit> {
    vec![
        Limit {
            count: 30,
            window: std::time::Duration::from_secs(60),
        },
        Limit {
            count: 1000,
            window: std::time::Duration::from_secs(3600),
        },
    ]
}

pub fn default_bot_limits() -> Vec<Limit> {
    vec![Limit {
        count: 20,
        window: std::time::Duration::from_secs(60),
    }]
}

/// A send that failed for good, with what WeCom said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub attempts: u32,
    pub error: ApiError,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (after {} attempt(s))", self.error, self.attempts)
    }
}

/// Why a message did not go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undelivered {
    Failed(Failure),
    /// The gateway is stopping, and the recipient's rate window (or the next retry) opens only
    /// after the grace period: the message stays stored for the next start.
    Stopped,
}

/// Why a media item did not get its media_id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAttached {
    /// Its file cannot be sent: not allowed, unreadable, or outside WeCom's rules.
    #[error("{0}")]
    Unsendable(#[from] Unsendable),
    /// WeCom refused the upload (`call`), for good.
    #[error("{call}: {failure}")]
    Refused {
        call: &'static str,
        failure: Failure,
    },
    /// The gateway is stopping: the item stays for the next start.
    #[error("the gateway is stopping")]
    Stopped,
}

impl NotAttached {
    /// WeCom's errcode, when WeCom refused.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            NotAttached::Refused { failure, .. } => failure.error.errcode(),
            _ => None,
        }
    }
}

/// One attempt's failure, inside the retry loop.
enum Tried {
    Api(ApiError),
    Stopped,
}

pub struct Outbound {
    client: WecomClient,
    retry: RetryPolicy,
    members: RateLimiter,
    robots: RateLimiter,
    locks: Locks,
    /// Set when the gateway stops: no send waits past it.
    deadline: Mutex<Option<Instant>>,
    stopping: Notify,
    /// Windows shared with other replicas, kept besides this process's own.
    shared: Option<Arc<dyn SharedWindows>>,
    /// Where a media message's `path` may point (`media.agent_dirs`).
    agent_dirs: Vec<PathBuf>,
}

type Locks = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// Held while sending to one recipient; the recipient's entry goes when nobody holds or waits.
pub struct RecipientGuard {
    guard: Option<OwnedMutexGuard<()>>,
    key: String,
    locks: Locks,
}

impl Drop for RecipientGuard {
    fn drop(&mut self) {
        // Release first, then drop the entry if the map holds the only handle: a waiter holds one
        // too, and new lockers clone it under the same map lock, so no one can be left out.
        self.guard.take();
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

/// Per-recipient state the sender holds: it shrinks back to nothing when the recipients go idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tracked {
    pub member_windows: usize,
    pub robot_windows: usize,
    pub locks: usize,
}

impl Outbound {
    pub fn new(
        client: WecomClient,
        retry: RetryPolicy,
        member_limits: Vec<Limit>,
        bot_limits: Vec<Limit>,
    ) -> Self {
        Outbound {
            client,
            retry,
            members: RateLimiter::new(member_limits),
            robots: RateLimiter::new(bot_limits),
            locks: Arc::default(),
            deadline: Mutex::new(None),
            stopping: Notify::new(),
            shared: None,
            agent_dirs: Vec::new(),
        }
    }

    /// Keep the rate windows together with other replicas through `windows` as well.
    /// Let media messages name files under these directories (none by default).
    /// Where a media message's `path` may point (`media.agent_dirs`).
    pub fn agent_dirs(&self) -> &[PathBuf] {
        &self.agent_dirs
    }

    pub fn with_agent_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.agent_dirs = dirs;
        self
    }

    pub fn with_shared_windows(mut self, windows: Arc<dyn SharedWindows>) -> Self {
        self.shared = Some(windows);
        self
    }

    /// The gateway is stopping: from now on, a send that would have to wait past `deadline` (for
    /// a rate window or a retry) gives up at once, and the message stays stored.
    pub fn stop_by(&self, deadline: Instant) {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        self.stopping.notify_waiters();
    }

    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until `key` may send, or `Err` once that would be past the stop deadline.
    async fn until_ready(&self, limiter: &RateLimiter, key: &str) -> Result<Duration, Tried> {
        let start = Instant::now();
        loop {
            let stopping = self.stopping.notified();
            tokio::pin!(stopping);
            stopping.as_mut().enable();
            let Some(at) = limiter.ready_at(key).filter(|at| *at > Instant::now()) else {
                return Ok(start.elapsed());
            };
            if self.deadline().is_some_and(|d| at > d) {
                return Err(Tried::Stopped);
            }
            let wait_ms = at.saturating_duration_since(Instant::now()).as_millis() as u64;
            tracing::debug!(recipient = key, wait_ms, "waiting for the rate window");
            crate::metrics::count(crate::metrics::RATE_LIMIT_WAITS, &[]);
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = stopping => {}
            }
        }
    }

    /// Hold a place in the shared windows (other replicas' sends count too), waiting for one, or
    /// `Err` once that would be past the stop deadline.
    async fn reserve_shared(
        &self,
        windows: &dyn SharedWindows,
        limits: &[Limit],
        key: &str,
    ) -> Result<i64, Tried> {
        loop {
            let stopping = self.stopping.notified();
            tokio::pin!(stopping);
            stopping.as_mut().enable();
            let wait = match windows.reserve(key, limits).await.map_err(Tried::Api)? {
                Reserved::Now(id) => return Ok(id),
                Reserved::Wait(wait) => wait,
            };
            let at = Instant::now() + wait;
            if self.deadline().is_some_and(|d| at > d) {
                return Err(Tried::Stopped);
            }
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                () = stopping => {}
            }
        }
    }

    /// The rate-limit and ordering key of one member of one app. UserIDs are case-insensitive.
    pub fn member_key(app: &App, user: &str) -> String {
        format!("app:{}:{}", app.config.name, user.to_lowercase())
    }

    /// The rate window and lock of a send: the member's own; one shared by all of an app's
    /// broadcasts (to departments, tags or several members at once); or the group chat's.
    pub fn recipients_key(app: &App, to: &Recipients) -> String {
        match to {
            Recipients::Member(user) => Self::member_key(app, user),
            Recipients::Many { .. } => format!("app:{}:@broadcast", app.config.name),
            Recipients::Chat(chatid) => format!("app:{}:@chat:{chatid}", app.config.name),
        }
    }

    pub fn robot_key(bot: &Bot) -> String {
        format!("bot:{}", bot.name)
    }

    /// Hold this while sending a sequence that must not be interleaved (the chunks of one reply,
    /// a robot's queue): other senders to the same recipient wait.
    pub async fn lock(&self, key: &str) -> RecipientGuard {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(key.to_owned()).or_default().clone()
        };
        RecipientGuard {
            guard: Some(lock.lock_owned().await),
            key: key.to_owned(),
            locks: self.locks.clone(),
        }
    }

    pub fn tracked(&self) -> Tracked {
        Tracked {
            member_windows: self.members.tracked(),
            robot_windows: self.robots.tracked(),
            locks: self.locks.lock().unwrap_or_else(|p| p.into_inner()).len(),
        }
    }

    /// Send one app message to one member within the member's limits, retrying what heals.
    /// `resend`: an earlier attempt may have been delivered (its outcome is unknown), so WeCom's
    /// duplicate check is asked for; a retry after a lost answer asks for it too.
    /// Returns WeCom's receipt and the attempts it took.
    pub async fn send_app(
        &self,
        app: &App,
        to: &Recipients,
        message: &AppMessage,
        resend: bool,
    ) -> Result<(SendReceipt, u32), Undelivered> {
        let key = Self::recipients_key(app, to);
        self.with_retry(&self.members, &key, resend, |resend| {
            self.client.send_app(app, to, message, resend)
        })
        .await
    }

    /// Withdraw a message the app sent (the `ack_after` receipt, once the reply is out).
    pub async fn recall(&self, app: &App, msgid: &str) -> Result<(), Undelivered> {
        self.call_with_retry(&app.config.name, "message/recall", || {
            self.client.recall(app, msgid)
        })
        .await
    }

    /// Give a media message its media_id: the one it carries while fresh, else its file is read
    /// (see [`upload::load`]) and uploaded. `Ok(true)`: uploaded now, for the caller to record.
    pub async fn attach_media(
        &self,
        app: &App,
        message: &mut AppMessage,
    ) -> Result<bool, NotAttached> {
        let (Some(kind), Some(media)) = (message.media_type(), message.media_mut()) else {
            return Ok(false);
        };
        let upload = |file: Upload| async move { self.upload_app(app, kind, &file).await };
        self.ensure_uploaded(media, kind, "media/upload", upload)
            .await
    }

    /// The one way a file gets its media_id: kept while fresh, else the file is loaded and given
    /// to `upload`. `Ok(true)` when it was uploaded now.
    async fn ensure_uploaded<F, Fut>(
        &self,
        media: &mut Media,
        kind: MediaType,
        call: &'static str,
        upload: F,
    ) -> Result<bool, NotAttached>
    where
        F: FnOnce(Upload) -> Fut,
        Fut: std::future::Future<Output = Result<String, Undelivered>>,
    {
        let now = upload::unix_now();
        if upload::reusable(media, now) {
            return Ok(false);
        }
        let file = upload::load(media, kind, &self.agent_dirs).await?;
        let bytes = file.bytes.len();
        match upload(file).await {
            Ok(id) => (media.media_id, media.uploaded_at) = (Some(id), Some(now)),
            Err(Undelivered::Stopped) => return Err(NotAttached::Stopped),
            Err(Undelivered::Failed(failure)) => {
                return Err(NotAttached::Refused { call, failure })
            }
        }
        tracing::debug!(call, kind = kind.as_str(), bytes, "uploaded");
        Ok(true)
    }

    /// A robot message from an item of the flat schema (`AppMessage::from_item`): an image is
    /// read now and carried inline (base64 and md5, at most 2 MB); a file is checked now and
    /// uploaded with the robot's upload_media when delivered.
    pub async fn bot_message(&self, item: AppMessage) -> Result<BotMessage, Unsendable> {
        Ok(match item {
            AppMessage::Text { content } => BotMessage::Text {
                content,
                mentioned_list: Vec::new(),
                mentioned_mobile_list: Vec::new(),
            },
            AppMessage::Markdown { content } => BotMessage::Markdown { content },
            AppMessage::News { articles } => BotMessage::News { articles },
            AppMessage::TemplateCard { template_card } => {
                BotMessage::TemplateCard { template_card }
            }
            AppMessage::Image(media) => {
                let file = upload::load(&media, MediaType::Image, &self.agent_dirs).await?;
                if file.bytes.len() > BOT_IMAGE_MAX_BYTES {
                    let got = file.bytes.len();
                    return Err(format!(
                        "a robot's image is at most {BOT_IMAGE_MAX_BYTES} bytes, got {got}"
                    )
                    .into());
                }
                BotMessage::Image {
                    base64: base64::engine::general_purpose::STANDARD.encode(&file.bytes),
                    md5: format!("{:x}", md5::Md5::digest(&file.bytes)),
                }
            }
            AppMessage::File(media) => {
                upload::load(&media, MediaType::File, &self.agent_dirs).await?;
                BotMessage::File(media)
            }
            other => return Err(format!("a group robot cannot send {}", other.msgtype()).into()),
        })
    }

    /// Give a robot's file message its media_id (uploaded with the robot's key) unless it carries
    /// a fresh one.
    pub async fn attach_bot_media(
        &self,
        bot: &Bot,
        message: &mut BotMessage,
    ) -> Result<(), NotAttached> {
        let BotMessage::File(media) = message else {
            return Ok(());
        };
        let who = format!("robot {}", bot.name);
        let upload = |file: Upload| async move {
            let call = || self.client.upload_bot_media(bot.key(), &file);
            self.call_with_retry(&who, "webhook/upload_media", call)
                .await
        };
        let kind = MediaType::File;
        self.ensure_uploaded(media, kind, "webhook/upload_media", upload)
            .await
            .map(drop)
    }

    /// Whether a media message's file can be sent (readable, allowed, within WeCom's limits),
    /// without uploading it: for the push API, which answers 400 before storing a bad request.
    pub async fn check_media(&self, message: &AppMessage) -> Result<(), Unsendable> {
        match (message.media_type(), message.media()) {
            (Some(kind), Some(media)) => {
                upload::load(media, kind, &self.agent_dirs).await.map(drop)
            }
            _ => Ok(()),
        }
    }

    /// Upload a file for an app message, retrying what heals. WeCom's media_id for it.
    pub async fn upload_app(
        &self,
        app: &App,
        kind: MediaType,
        file: &Upload,
    ) -> Result<String, Undelivered> {
        self.call_with_retry(&app.config.name, "media/upload", || {
            self.client.upload_media(app, kind, file)
        })
        .await
    }

    /// Change a card the member clicked (update_template_card with the click's response code):
    /// `card` is the agent's `update_card` object, e.g. `{"button": {"replace_name": "已处理"}}`.
    pub async fn update_card(
        &self,
        app: &App,
        user: &str,
        response_code: &str,
        card: &serde_json::Value,
    ) -> Result<(), Undelivered> {
        // The card's own fields (`button`, `template_card`...); who sees the change is the
        // gateway's to say: the member who clicked, never a party, tag or everyone.
        let mut body = match card {
            serde_json::Value::Object(fields) => fields.clone(),
            _ => serde_json::Map::new(),
        };
        for addressing in [
            "userids",
            "partyids",
            "tagids",
            "atall",
            "agentid",
            "response_code",
        ] {
            body.remove(addressing);
        }
        body.insert("userids".into(), serde_json::json!([user]));
        body.insert("agentid".into(), serde_json::json!(app.config.agent_id));
        body.insert("response_code".into(), serde_json::json!(response_code));
        let body = serde_json::Value::Object(body);
        let path = "/cgi-bin/message/update_template_card";
        self.call_with_retry(&app.config.name, "update_template_card", || {
            self.client.post_json(app, path, &body)
        })
        .await
        .map(drop)
    }

    /// The WeCom API client, for calls that are not sends (media/get).
    pub(crate) fn client(&self) -> &WecomClient {
        &self.client
    }

    /// A call outside the members' rate windows (uploads, downloads, card updates), retried as
    /// sends are.
    pub(crate) async fn call_with_retry<T, F, Fut>(
        &self,
        who: &str,
        what: &str,
        call: F,
    ) -> Result<T, Undelivered>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let stopped = AtomicBool::new(false);
        let (result, attempts) = self
            .retry
            .run(
                |_| call(),
                ApiError::is_retryable,
                |error, attempt, delay| {
                    if self.deadline().is_some_and(|d| Instant::now() + delay > d) {
                        stopped.store(true, Ordering::Relaxed);
                        return false;
                    }
                    tracing::warn!(sender = who, attempt, retry_in_ms = delay.as_millis() as u64, errcode = error.errcode(), error = %error, "{what} failed; retrying");
                    true
                },
            )
            .await;
        match result {
            Ok(value) => Ok(value),
            Err(_) if stopped.load(Ordering::Relaxed) => Err(Undelivered::Stopped),
            Err(error) => Err(Undelivered::Failed(Failure { attempts, error })),
        }
    }

    /// Send one message to a group robot within its limit, retrying what heals. Returns the
    /// attempts it took. (Robots have no duplicate check to ask for.)
    pub async fn send_bot(&self, bot: &Bot, message: &BotMessage) -> Result<u32, Undelivered> {
        let key = Self::robot_key(bot);
        self.with_retry(&self.robots, &key, false, |_| {
            self.client.send_bot(bot.key(), message)
        })
        .await
        .map(|((), attempts)| attempts)
    }

    async fn with_retry<T, F, Fut>(
        &self,
        limiter: &RateLimiter,
        key: &str,
        resend: bool,
        send: F,
    ) -> Result<(T, u32), Undelivered>
    where
        F: Fn(bool) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        // Atomics only because the future must be Send; nothing else touches them.
        let resend = AtomicBool::new(resend);
        let stopped = AtomicBool::new(false);
        let (result, attempts) = self
            .retry
            .run(
                |_| {
                    let (send, resend) = (&send, &resend);
                    async move {
                        let start = Instant::now();
                        self.until_ready(limiter, key).await?;
                        let place = match &self.shared {
                            Some(w) => Some(self.reserve_shared(&**w, limiter.limits(), key).await?),
                            None => None,
                        };
                        let waited = start.elapsed();
                        if waited.as_millis() >= 1000 {
                            tracing::info!(
                                recipient = key,
                                waited_ms = waited.as_millis() as u64,
                                "held back to stay within WeCom's rate limit"
                            );
                        }
                        let result = send(resend.load(Ordering::Relaxed)).await;
                        let call = if key.starts_with("bot:") { "robot" } else { "message_send" };
                        let code = match &result {
                            Ok(_) => "0".to_owned(),
                            Err(e) => e.errcode().map_or_else(|| "none".to_owned(), |c| c.to_string()),
                        };
                        crate::metrics::count(
                            crate::metrics::WECOM_CALLS,
                            &[("call", call), ("errcode", &code)],
                        );
                        // Whatever reached WeCom counts toward its limit; a connection that never
                        // opened does not.
                        let counted = !matches!(&result, Err(ApiError::Connect(_)));
                        if counted {
                            limiter.sent(key);
                        }
                        if let (Some(w), Some(id)) = (&self.shared, place) {
                            w.settle(id, counted).await;
                        }
                        result.map_err(Tried::Api)
                    }
                },
                |tried| matches!(tried, Tried::Api(e) if e.is_retryable()),
                |tried, attempt, delay| {
                    let Tried::Api(error) = tried else {
                        return false;
                    };
                    if error.outcome_unknown() {
                        resend.store(true, Ordering::Relaxed);
                    }
                    if self.deadline().is_some_and(|d| Instant::now() + delay > d) {
                        stopped.store(true, Ordering::Relaxed);
                        return false;
                    }
                    tracing::warn!(recipient = key, attempt, retry_in_ms = delay.as_millis() as u64, errcode = error.errcode(), error = %error, "send failed; retrying");
                    crate::metrics::count(crate::metrics::RETRIES, &[]);
                    true
                },
            )
            .await;
        match result {
            Ok(value) => Ok((value, attempts)),
            Err(Tried::Stopped) => Err(Undelivered::Stopped),
            Err(Tried::Api(_)) if stopped.load(Ordering::Relaxed) => Err(Undelivered::Stopped),
            Err(Tried::Api(error)) => {
                if error.errcode() == Some(60020) {
                    tracing::error!(recipient = key, "WeCom refused this server's IP (60020): add the gateway's public IP under the app's 企业可信IP (trusted IPs) in the admin console");
                }
                Err(Undelivered::Failed(Failure { attempts, error }))
            }
        }
    }
}
