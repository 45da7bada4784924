//! Access-token cache for one app: one valid token at a time, refreshed before it expires, with a
//! single-flight guard so a burst of sends causes one gettoken call.
//!
//! Must never: expose the token in `Debug` or logs.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::ApiError;

/// Refresh this long before WeCom's stated expiry, so a token never dies mid-request.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

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
}

impl TokenCache {
    /// The cached token, or a new one from `fetch` (which yields the token and its `expires_in`).
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<AccessToken, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(String, u64), ApiError>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(cached) = slot.as_ref() {
            if Instant::now() < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
        let (value, expires_in) = fetch().await?;
        let lifetime = Duration::from_secs(expires_in);
        // Short-lived tokens (tests, proxies) still get half their life rather than none.
        let usable = lifetime.saturating_sub(REFRESH_MARGIN).max(lifetime / 2);
        let token = AccessToken::new(value);
        *slot = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + usable,
        });
        Ok(token)
    }

    /// Forget `stale` if it is still the cached token (another task may already have replaced it).
    pub async fn invalidate(&self, stale: &AccessToken) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|c| &c.token == stale) {
            *slot = None;
        }
    }
}
