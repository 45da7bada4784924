//! The store's refusals for lack of room (a full disk, `max_store_mb`), logged without flooding:
//! the first refusal at ERROR, then, while refusals go on, one line a minute with their count, and
//! one line when the condition clears. A full disk refuses every write, and every worker retries
//! its write each second: one line per refusal was thousands a minute.
//!
//! A nearly full disk takes some writes and refuses others (SQLite reuses pages it already has),
//! so one write that succeeds does not end the condition: it ends at a write that succeeds
//! [`SETTLE`] after the last refusal. Until then a refusal belongs to the same episode.
//!
//! Owns: that rule (when a line is due, and what it counts). The backend says when a write was
//! refused and when one succeeded; callers that get [`StoreError::NoRoom`](super::StoreError) do not
//! log it themselves.
//!
//! Must never: log a line per refusal, or hold its lock while logging.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition that lasts is logged again, with the count since the last line.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// How long after the last refusal a write must succeed for the condition to be over.
pub const SETTLE: Duration = Duration::from_secs(5);

/// One condition of refusals (a full disk, say), and what the log calls it.
#[derive(Debug)]
pub struct Refusals {
    /// What the store does while the condition lasts: "refuses writes".
    refuses: &'static str,
    /// What that means for work already accepted, said on the first line.
    meaning: &'static str,
    /// What it does again once it clears: "takes writes again".
    again: &'static str,
    every: Duration,
    state: Mutex<Option<Episode>>,
}

/// The line a refusal calls for.
enum Line {
    First,
    Summary(Episode),
    None,
}

/// The refusals since the condition began.
#[derive(Debug, Clone, Copy)]
struct Episode {
    began: Instant,
    last_line: Instant,
    last_refusal: Instant,
    total: u64,
    /// Refused since the last line.
    since_line: u64,
}

impl Refusals {
    pub fn new(refuses: &'static str, again: &'static str) -> Self {
        Self::every(refuses, again, SUMMARY_EVERY)
    }

    fn every(refuses: &'static str, again: &'static str, every: Duration) -> Self {
        Refusals {
            refuses,
            meaning: "",
            again,
            every,
            state: Mutex::new(None),
        }
    }

    /// What the condition means for work already accepted ("accepted work waits"), for the
    /// first line.
    pub fn meaning(self, meaning: &'static str) -> Self {
        Refusals { meaning, ..self }
    }

    /// A write was refused for `reason`: logged if it is the first, or a minute passed since the
    /// last line.
    pub fn refused(&self, reason: &dyn std::fmt::Display) {
        let now = Instant::now();
        let line = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match &mut *state {
                None => {
                    *state = Some(Episode {
                        began: now,
                        last_line: now,
                        last_refusal: now,
                        total: 1,
                        since_line: 0,
                    });
                    Line::First
                }
                Some(episode) => {
                    episode.last_refusal = now;
                    episode.total += 1;
                    episode.since_line += 1;
                    if now.duration_since(episode.last_line) < self.every {
                        Line::None
                    } else {
                        let summary = Line::Summary(*episode);
                        (episode.last_line, episode.since_line) = (now, 0);
                        summary
                    }
                }
            }
        };
        let (refuses, meaning) = (self.refuses, self.meaning);
        let meaning = if meaning.is_empty() {
            String::new()
        } else {
            format!("; {meaning}")
        };
        match line {
            Line::None => {}
            Line::First => tracing::error!(
                "the message store {refuses}: {reason}; new callbacks and pushes get 503{meaning} (further refusals are counted, one line a minute)"
            ),
            Line::Summary(e) => {
                let secs = now.duration_since(e.last_line).as_secs();
                tracing::error!(
                    refused = e.since_line,
                    total = e.total,
                    "the message store still {refuses}: {} refused in the last {secs} s ({} since it began): {reason}",
                    e.since_line,
                    e.total
                )
            }
        }
    }

    /// A write that this condition would refuse succeeded: the condition is over, if it was on and
    /// nothing was refused for [`SETTLE`].
    pub fn cleared(&self) {
        let now = Instant::now();
        let episode = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let settled =
                (state.as_ref()).is_some_and(|e| now.duration_since(e.last_refusal) >= SETTLE);
            if settled {
                state.take()
            } else {
                None
            }
        };
        if let Some(e) = episode {
            let secs = now.duration_since(e.began).as_secs();
            tracing::info!(
                refused = e.total,
                "the message store {} ({} refused over {secs} s)",
                self.again,
                e.total
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::logging::Capture;

    /// The paused clock moves only when told: the minute is the clock's, not a sleep's.
    #[tokio::test(start_paused = true)]
    async fn the_first_refusal_a_line_a_minute_and_the_recovery() {
        let out = Capture::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let disk = Refusals::new("refuses writes", "takes writes again");
        let full = "database or disk is full";
        // 3,700 refusals in the first minute: one line.
        for _ in 0..3700 {
            disk.refused(&full);
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(
            out.lines().len(),
            1,
            "{:?}",
            &out.lines()[..2.min(out.lines().len())]
        );
        assert!(out.lines()[0].contains("ERROR") && out.lines()[0].contains(full));
        // 37 s passed; at 60 s the next refusal brings the count.
        tokio::time::advance(Duration::from_secs(23)).await;
        disk.refused(&full);
        let lines = out.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[1].contains(
                "still refuses writes: 3700 refused in the last 60 s (3701 since it began)"
            ),
            "{}",
            lines[1]
        );
        // Within the next minute: nothing more.
        tokio::time::advance(Duration::from_secs(30)).await;
        disk.refused(&full);
        assert_eq!(out.lines().len(), 2);
        // A write that succeeds between refusals does not end it (a nearly full disk).
        disk.cleared();
        tokio::time::advance(Duration::from_secs(1)).await;
        disk.refused(&full);
        disk.cleared();
        assert_eq!(out.lines().len(), 2);
        // Writes succeed again, SETTLE after the last refusal: one line, once.
        tokio::time::advance(SETTLE).await;
        disk.cleared();
        disk.cleared();
        let lines = out.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[2].contains("INFO")
                && lines[2].contains("takes writes again (3703 refused over 96 s)"),
            "{}",
            lines[2]
        );
        // A new episode starts with a first line again.
        disk.refused(&full);
        assert_eq!(out.lines().len(), 4);
        assert!(out.lines()[3].contains("further refusals are counted"));
    }

    #[test]
    fn clearing_without_refusals_logs_nothing() {
        let out = Capture::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            Refusals::every("refuses writes", "takes writes again", Duration::ZERO).cleared();
        });
        assert!(out.lines().is_empty());
    }
}
