//! Reliable outbound delivery: every message to WeCom goes through here.
//!
//! Owns: WeCom's rate limits (per app member; per group robot), retries with backoff for failures
//! that heal, the per-recipient lock that keeps one reply's chunks together, and the queue of pushes
//! from the API (`dispatch`).
//!
//! Must never: drop a message to stay under a limit (it waits instead), retry a failure that will
//! not heal, or log a webhook key or access token.

pub mod dispatch;
pub mod ratelimit;
pub mod retry;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::app::App;
use crate::bots::Bot;
use crate::wecom::{ApiError, AppMessage, BotMessage, SendReceipt, WecomClient};
use ratelimit::{Limit, RateLimiter};
use retry::RetryPolicy;

pub use dispatch::Dispatcher;

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

pub struct Outbound {
    client: WecomClient,
    retry: RetryPolicy,
    members: RateLimiter,
    robots: RateLimiter,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn client(&self) -> &WecomClient {
        &self.client
    }

    /// The rate-limit and ordering key of one member of one app. UserIDs are case-insensitive.
    pub fn member_key(app: &App, user: &str) -> String {
        format!("app:{}:{}", app.config.name, user.to_lowercase())
    }

    pub fn robot_key(bot: &Bot) -> String {
        format!("bot:{}", bot.name)
    }

    /// Hold this while sending a sequence that must not be interleaved (the chunks of one reply,
    /// a robot's queue): other senders to the same recipient wait.
    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(key.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Send one app message to one member within the member's limits, retrying what heals.
    /// Returns WeCom's receipt and the attempts it took.
    pub async fn send_app(
        &self,
        app: &App,
        user: &str,
        message: &AppMessage,
    ) -> Result<(SendReceipt, u32), Failure> {
        let key = Self::member_key(app, user);
        self.with_retry(&self.members, &key, || {
            self.client.send_app(app, user, message)
        })
        .await
    }

    /// Send one message to a group robot within its limit, retrying what heals. Returns the
    /// attempts it took.
    pub async fn send_bot(&self, bot: &Bot, message: &BotMessage) -> Result<u32, Failure> {
        let key = Self::robot_key(bot);
        self.with_retry(&self.robots, &key, || {
            self.client.send_bot(bot.key(), message)
        })
        .await
        .map(|((), attempts)| attempts)
    }

    async fn with_retry<T, F, Fut>(
        &self,
        limiter: &RateLimiter,
        key: &str,
        send: F,
    ) -> Result<(T, u32), Failure>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let waited = limiter.until_ready(key).await;
            if waited.as_millis() >= 1000 {
                tracing::info!(
                    recipient = key,
                    waited_ms = waited.as_millis() as u64,
                    "held back to stay within WeCom's rate limit"
                );
            }
            let result = send().await;
            // Whatever WeCom answered counts toward its limit; a request that never arrived does not.
            if !matches!(&result, Err(ApiError::Transport(_))) {
                limiter.sent(key);
            }
            match result {
                Ok(value) => return Ok((value, attempt)),
                Err(error) if error.is_retryable() && attempt < self.retry.max_attempts => {
                    let delay = self.retry.delay(attempt);
                    tracing::warn!(recipient = key, attempt, retry_in_ms = delay.as_millis() as u64, errcode = error.errcode(), error = %error, "send failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    if error.errcode() == Some(60020) {
                        tracing::error!(recipient = key, "WeCom refused this server's IP (60020): add the gateway's public IP under the app's 企业可信IP (trusted IPs) in the admin console");
                    }
                    return Err(Failure {
                        attempts: attempt,
                        error,
                    });
                }
            }
        }
    }
}
