//! Access-token cache for one app: one valid token at a time, refreshed before it expires, with a
//! single-flight guard so a burst of sends causes one gettoken call.
//!
//! Must never: expose the token in `Debug` or logs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::error::ApiError;

// ---- Shared by replicas ----
//
// One process keeps its token in memory. A store shared by replicas (PostgreSQL) implements
// `SharedTokens`, so that N replicas fetch one token per app. It never hands a token to logs
// or errors.

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

/// Refresh this long before WeCom's stated expiry, so a token never dies mid-request.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// WeCom issues tokens for 7200 s. A longer `expires_in` (a proxy's, or garbage) is held to a day,
/// so a token is never trusted for ever and the arithmetic below cannot overflow.
const MAX_LIFETIME: Duration = Duration::from_secs(86_400);

/// An access token. Cheap to clone; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(Arc<str>);

impl AccessToken {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        AccessToken(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

struct Cached {
    token: AccessToken,
    refresh_at: Instant,
}

#[derive(Default)]
pub struct TokenCache {
    // Held across the fetch: that is the single-flight guard. Waiters then find the fresh token.
    slot: Mutex<Option<Cached>>,
    /// Replicas share one token per app through this; `key` names the app there.
    shared: Option<(Arc<dyn SharedTokens>, String)>,
    /// The token last rejected, so the shared store replaces it rather than handing it back.
    stale: std::sync::Mutex<Option<String>>,
    /// Why the last gettoken failed, until one succeeds (for `/ready`'s warnings), kept as the
    /// error itself so its errcode is read, not parsed out of text. No secrets: `ApiError`'s
    /// text never carries one.
    problem: std::sync::Mutex<Option<ApiError>>,
}

impl TokenCache {
    /// A cache that takes its tokens from `shared` (under `key`) when its own copy runs out.
    pub fn shared(shared: Arc<dyn SharedTokens>, key: String) -> Self {
        TokenCache {
            shared: Some((shared, key)),
            ..TokenCache::default()
        }
    }
}

impl TokenCache {
    pub fn set_problem(&self, problem: Option<ApiError>) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// Why the last gettoken failed, if the last one did.
    pub fn problem(&self) -> Option<ApiError> {
        self.problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The cached token, or a new one from `fetch` (which yields the token and its `expires_in`).
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<AccessToken, ApiError>
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = Result<(String, u64), ApiError>> + Send,
    {
        let mut slot = self.slot.lock().await;
        if let Some(cached) = slot.as_ref() {
            if Instant::now() < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
        let (value, usable) = match &self.shared {
            Some((shared, key)) => {
                let stale = self.stale.lock().unwrap_or_else(|p| p.into_inner()).take();
                let fetch = Box::pin(async move {
                    let (value, expires_in) = fetch().await?;
                    Ok((value, usable_for(expires_in).as_secs()))
                });
                shared.token(key, stale, fetch).await?
            }
            None => {
                let (value, expires_in) = fetch().await?;
                (value, usable_for(expires_in))
            }
        };
        let token = AccessToken::new(value);
        *slot = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now()
                .checked_add(usable)
                .unwrap_or_else(Instant::now),
        });
        Ok(token)
    }

    /// Forget `stale` if it is still the cached token (another task may already have replaced it).
    pub async fn invalidate(&self, stale: &AccessToken) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|c| &c.token == stale) {
            *slot = None;
            *self.stale.lock().unwrap_or_else(|p| p.into_inner()) = Some(stale.expose().to_owned());
        }
    }
}

/// How long a token that WeCom gave for `expires_in` seconds may be used before refreshing it.
pub fn usable_for(expires_in: u64) -> Duration {
    let lifetime = Duration::from_secs(expires_in).min(MAX_LIFETIME);
    // Short-lived tokens (tests, proxies) still get half their life rather than none.
    lifetime.saturating_sub(REFRESH_MARGIN).max(lifetime / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn any_expires_in_is_safe_and_a_huge_one_is_held_to_a_day() {
        let cache = TokenCache::default();
        for expires_in in [u64::MAX, u64::MAX / 2, 0, 1] {
            let token = cache
                .get(|| async move { Ok((format!("t{expires_in}"), expires_in)) })
                .await
                .unwrap();
            cache.invalidate(&token).await;
        }
        cache
            .get(|| async { Ok(("long".to_owned(), u64::MAX)) })
            .await
            .unwrap();
        let slot = cache.slot.lock().await;
        let left = slot.as_ref().unwrap().refresh_at - Instant::now();
        assert!(left <= MAX_LIFETIME, "{left:?}");
    }
}
