//! State that replicas must share so that several processes behave as one gateway: the access
//! token of each app, and the rate windows of each member and robot.
//!
//! One process (a SQLite or memory store) keeps both in memory (`wecom::token::TokenCache`,
//! `outbound::ratelimit::RateLimiter`) and needs nothing from here. A shared store (PostgreSQL)
//! implements these traits so that N replicas fetch one token per app and together keep WeCom's
//! limits.
//!
//! Must never: hand out a token to logs or errors, or let a failure of the shared store pass as
//! permission to send (a reservation that cannot be recorded is an error, not a yes).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;

use crate::outbound::ratelimit::Limit;
use crate::wecom::ApiError;

/// A gettoken call: the token and WeCom's `expires_in` (seconds).
pub type Fetch<'a> = Pin<Box<dyn Future<Output = Result<(String, u64), ApiError>> + Send + 'a>>;

/// Access tokens shared by replicas: one gettoken per app, whoever needs it first.
#[async_trait]
pub trait SharedTokens: Send + Sync + 'static {
    /// The shared token of `app` and how long it may still be used, unless it is `stale` (it was
    /// just rejected) or about to expire: then `fetch` runs, while every other replica that wants
    /// this app's token waits, and its result is shared.
    async fn token(
        &self,
        app: &str,
        stale: Option<String>,
        fetch: Fetch<'_>,
    ) -> Result<(String, Duration), ApiError>;
}

/// What a reservation in a rate window came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// A place is held (`id`): send now, then [`SharedWindows::settle`] it.
    Now(i64),
    /// Every window is full: try again after this long.
    Wait(Duration),
}

/// Rate windows shared by replicas: together they send at most N in any window.
#[async_trait]
pub trait SharedWindows: Send + Sync + 'static {
    /// Hold a place in each of `key`'s windows now, if all of them have room.
    async fn reserve(&self, key: &str, limits: &[Limit]) -> Result<Reserved, ApiError>;
    /// The send is over. `counted`: it may have reached WeCom, so it counts from now (WeCom
    /// counts a message when it arrives); otherwise the place is given back.
    async fn settle(&self, id: i64, counted: bool);
}
