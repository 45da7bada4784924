//! Sliding-window rate limits: "at most N in any window of length W", WeCom's own rule for group
//! robots (20 a minute) and for app messages to one member (30 a minute and 1000 an hour).
//!
//! Why not `governor`: its GCRA either admits up to 2N-1 in one window (burst N) or spaces every
//! message W/N apart (burst 1), which would hold the second chunk of a reply back for seconds. This
//! keeps the last N completion times per key: exact, and bursts up to N go out at once.
//!
//! Times are taken when WeCom has answered, so a message cannot arrive inside a window that this
//! side thought was over. Callers serialise sends per key (one reply or queue at a time).
//!
//! Must never: drop a message. A caller over the limit waits for its turn.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::wecom::error::ApiError;

/// At most `count` sends in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub count: usize,
    pub window: Duration,
}

/// Why a limit's text is not `N/DURATION`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLimit {
    #[error("expected COUNT/DURATION such as 20/1m, got {0:?}")]
    Shape(String),
    #[error("count must be a whole number above 0, got {0:?}")]
    Count(String),
    #[error("duration must start with a whole number above 0, got {0:?}")]
    Number(String),
    #[error("duration unit must be ms, s, m or h, got {0:?}")]
    Unit(String),
    #[error("duration is too long, got {0:?}")]
    TooLong(String),
}

impl Limit {
    /// Parse `N/DURATION`, such as `20/1m`, `30/60s`, `1000/1h` or `5/500ms`.
    pub fn parse(text: &str) -> Result<Limit, BadLimit> {
        let (count, window) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| BadLimit::Shape(text.to_owned()))?;
        let count: usize = count
            .trim()
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| BadLimit::Count(count.to_owned()))?;
        let window = window.trim();
        let split = window
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(window.len());
        let (number, unit) = window.split_at(split);
        let number: u64 = (number.parse().ok().filter(|n| *n > 0))
            .ok_or_else(|| BadLimit::Number(window.to_owned()))?;
        let millis_per = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(BadLimit::Unit(window.to_owned())),
        };
        // Checked: the number comes from a config file and must not overflow into a panic.
        let millis = number
            .checked_mul(millis_per)
            .ok_or_else(|| BadLimit::TooLong(window.to_owned()))?;
        Ok(Limit {
            count,
            window: Duration::from_millis(millis),
        })
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // As it is written in the configuration: the largest unit that divides the window.
        let ms = self.window.as_millis();
        let (n, unit) = [(3_600_000, "h"), (60_000, "m"), (1000, "s")]
            .into_iter()
            .find(|(per, _)| ms > 0 && ms.is_multiple_of(*per))
            .map_or((ms, "ms"), |(per, unit)| (ms / per, unit));
        write!(f, "{}/{n}{unit}", self.count)
    }
}

/// One set of limits applied separately to every key (a member of an app, a robot).
pub struct RateLimiter {
    limits: Vec<Limit>,
    /// The longest window: a key whose last send is older than this has no state worth keeping.
    longest: Duration,
    state: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    /// Completion times of recent sends per key, oldest first; only as many as the largest count.
    recent: HashMap<String, VecDeque<Instant>>,
    /// Every recorded send as (key, time), oldest first: tells which keys may have gone idle
    /// without scanning them all.
    expiry: VecDeque<(Instant, String)>,
}

/// `at + d`, or the far future when that is past what `Instant` can hold (a window of centuries
/// from the config): waiting "for ever" is the honest answer there, and it must not panic.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d).unwrap_or_else(far_future)
}

fn far_future() -> Instant {
    // About 30 years: as good as never, and always representable.
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

impl RateLimiter {
    pub fn new(limits: Vec<Limit>) -> Self {
        let longest = limits.iter().map(|l| l.window).max().unwrap_or_default();
        RateLimiter {
            limits,
            longest,
            state: Mutex::new(Windows::default()),
        }
    }

    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.forget_idle(self.longest);
        state
    }

    /// When the next send for `key` may start: the earliest time at which every limit has room.
    pub fn ready_at(&self, key: &str) -> Option<Instant> {
        let state = self.lock();
        let times = state.recent.get(key)?;
        self.limits
            .iter()
            .filter(|l| times.len() >= l.count)
            .map(|l| later(times[times.len() - l.count], l.window))
            .max()
    }

    /// Wait until `key` may send. Returns how long it waited.
    pub async fn until_ready(&self, key: &str) -> Duration {
        let start = Instant::now();
        while let Some(at) = self.ready_at(key).filter(|at| *at > Instant::now()) {
            tokio::time::sleep_until(at).await;
        }
        start.elapsed()
    }

    /// Record that a send for `key` was just answered by WeCom.
    pub fn sent(&self, key: &str) {
        let keep = self.limits.iter().map(|l| l.count).max().unwrap_or(0);
        if keep == 0 {
            return;
        }
        let now = Instant::now();
        let mut state = self.lock();
        let times = state.recent.entry(key.to_owned()).or_default();
        times.push_back(now);
        while times.len() > keep {
            times.pop_front();
        }
        state.expiry.push_back((now, key.to_owned()));
    }

    /// Keys with sends still inside a window.
    pub fn tracked(&self) -> usize {
        self.lock().recent.len()
    }
}

impl Windows {
    /// Drop the keys whose every send has left the longest window: they limit nothing any more.
    fn forget_idle(&mut self, longest: Duration) {
        let now = Instant::now();
        while let Some((at, _)) = self.expiry.front() {
            if later(*at, longest) > now {
                break;
            }
            let Some((_, key)) = self.expiry.pop_front() else {
                break;
            };
            let idle = self
                .recent
                .get(&key)
                .and_then(|t| t.back())
                .is_none_or(|last| later(*last, longest) <= now);
            if idle {
                self.recent.remove(&key);
            }
        }
    }
}

// ---- Shared by replicas ----
//
// One process keeps its windows in memory (`RateLimiter`). A store shared by replicas
// (PostgreSQL) implements `SharedWindows`, so that N replicas together keep WeCom's limits. A
// reservation that cannot be recorded is an error, never permission to send.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_print_as_they_are_written() {
        for text in ["30/1m", "1000/1h", "5/10s", "3/500ms", "2/90s"] {
            assert_eq!(Limit::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn parses_limits() {
        assert_eq!(
            Limit::parse("20/1m").unwrap(),
            Limit {
                count: 20,
                window: Duration::from_secs(60)
            }
        );
        assert_eq!(
            Limit::parse(" 1000/1h ").unwrap().window,
            Duration::from_secs(3600)
        );
        assert_eq!(
            Limit::parse("5/500ms").unwrap().window,
            Duration::from_millis(500)
        );
        for bad in [
            "20",
            "0/1m",
            "x/1m",
            "20/m",
            "20/1d",
            "20/0s",
            "1/99999999999999999h",
            "1/99999999999999999999ms",
        ] {
            assert!(Limit::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_count_in_any_window() {
        let limiter = RateLimiter::new(vec![Limit {
            count: 3,
            window: Duration::from_secs(10),
        }]);
        let mut times = Vec::new();
        for _ in 0..9 {
            limiter.until_ready("k").await;
            limiter.sent("k");
            times.push(Instant::now());
        }
        // The first three go at once, then each waits for the window of the one three back.
        for i in 3..times.len() {
            assert!(
                times[i] - times[i - 3] >= Duration::from_secs(10),
                "send {i}"
            );
        }
        assert!(
            times[2] - times[0] < Duration::from_millis(1),
            "a burst of three is allowed"
        );
        // Another key is not held back.
        assert_eq!(limiter.until_ready("other").await, Duration::ZERO);
        // Once the window has passed, nothing is kept for the key.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(limiter.tracked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_too_long_for_the_clock_waits_instead_of_panicking() {
        let limiter = RateLimiter::new(vec![Limit {
            count: 1,
            window: Duration::MAX,
        }]);
        limiter.until_ready("k").await;
        limiter.sent("k");
        let ready = limiter.ready_at("k").unwrap();
        assert!(ready > Instant::now() + Duration::from_secs(86_400 * 365));
        assert_eq!(limiter.tracked(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn every_limit_applies() {
        let limiter = RateLimiter::new(vec![
            Limit {
                count: 2,
                window: Duration::from_secs(1),
            },
            Limit {
                count: 3,
                window: Duration::from_secs(100),
            },
        ]);
        let start = Instant::now();
        for _ in 0..4 {
            limiter.until_ready("k").await;
            limiter.sent("k");
        }
        // The fourth waits for the 100 s window, not just the 1 s one.
        assert!(Instant::now() - start >= Duration::from_secs(100));
    }
}
