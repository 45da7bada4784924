//! When to try a failed call again: exponential backoff with jitter, a bounded number of attempts.
//! The backoff loop ([`RetryPolicy::run`]) that sends to WeCom and calls to agents go through.
//! Which failures are worth retrying is the caller's to say (for WeCom: `wecom::error`). (Two other
//! loops try again for reasons of their own: a stale access token, once, in `wecom/client.rs`; the
//! end of a job, until recorded, in `store/rules.rs`.)

use std::future::Future;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub max_attempts: u32,
    /// Wait before the second try; doubles each time.
    pub base: Duration,
    /// No wait is longer than this.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed try number `attempt` (1-based): base * 2^(attempt-1), capped, with
    /// "equal jitter" (between half and all of it) so many senders do not retry in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max);
        let half = capped / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// Call `attempt` (given the 1-based attempt number) until it succeeds, fails with an error
    /// `retryable` refuses, or `max_attempts` are used up. Before each retry, `on_retry` hears the
    /// error, the attempt that failed and the wait, and may call the retry off by answering false.
    /// Returns the result and the attempts made.
    pub async fn run<T, E, Fut>(
        &self,
        mut attempt: impl FnMut(u32) -> Fut,
        retryable: impl Fn(&E) -> bool,
        mut on_retry: impl FnMut(&E, u32, Duration) -> bool,
    ) -> (Result<T, E>, u32)
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let mut n = 0;
        loop {
            n += 1;
            match attempt(n).await {
                Err(e) if retryable(&e) && n < self.max_attempts => {
                    let delay = self.delay(n);
                    if !on_retry(&e, n, delay) {
                        return (Err(e), n);
                    }
                    tokio::time::sleep(delay).await;
                }
                result => return (result, n),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn run_stops_at_success_at_a_final_error_or_at_max_attempts() {
        let p = RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(10),
            max: Duration::from_millis(10),
        };
        let (r, n) = p
            .run(
                |n| async move {
                    if n < 3 {
                        Err(n)
                    } else {
                        Ok(n)
                    }
                },
                |_| true,
                |_, _, _| true,
            )
            .await;
        assert_eq!((r, n), (Ok(3), 3));
        let (r, n) = p
            .run(
                |n| async move { Err::<(), _>(n) },
                |e| *e < 2,
                |_, _, _| true,
            )
            .await;
        assert_eq!((r, n), (Err(2), 2), "an error the caller refuses ends it");
        let mut retried = 0;
        let (r, n) = p
            .run(
                |n| async move { Err::<(), _>(n) },
                |_| true,
                |_, _, _| {
                    retried += 1;
                    true
                },
            )
            .await;
        assert_eq!((r, n, retried), (Err(4), 4, 3));
        let (r, n) = p
            .run(
                |n| async move { Err::<(), _>(n) },
                |_| true,
                |_, _, _| false,
            )
            .await;
        assert_eq!((r, n), (Err(1), 1), "the caller may call a retry off");
    }

    #[test]
    fn delays_grow_and_are_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for attempt in 1..=10 {
            let full =
                (Duration::from_millis(100) * 2u32.pow(attempt - 1)).min(Duration::from_secs(1));
            let d = p.delay(attempt);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
    }
}
