//! Room for new work in the SQLite store: `max_store_mb` (the store's own size) and `min_free_mb`
//! (a reserve of free space on the data directory's filesystem), so that what was acknowledged can
//! always be finished: its replies recorded, its end written.
//!
//! Owns: both limits, how free space is measured (statvfs, remembered for [`FREE_SPACE_TTL`]) and
//! the words that say which limit refused.
//!
//! Must never: be asked about work already accepted (finishing, replies, retries of a stored
//! message are never refused), or run on the async runtime: it reads the database and calls the
//! filesystem, so only the store's writer thread calls it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// How long a measure of free space is trusted. statvfs costs about 2 µs here (ext4 and tmpfs in
/// a VM), a few percent of a stored callback's CPU, and it would run on the single writer thread
/// once per new message; at most ten a second it costs nothing. Within this time at most a few MB
/// more are taken beyond the line: far less than any sensible reserve.
const FREE_SPACE_TTL: Duration = Duration::from_millis(100);

const MIB: u64 = 1024 * 1024;

/// The limits on new work; none by default.
#[derive(Debug, Default)]
pub struct Room {
    /// `max_store_mb` in bytes: pages in use in the store.
    max_store: Option<u64>,
    reserve: Option<Reserve>,
}

/// `min_free_mb`: free space the data directory's filesystem keeps for accepted work.
#[derive(Debug)]
struct Reserve {
    dir: PathBuf,
    min_free: u64,
    /// When free space was last measured, and what it was (`None`: it could not be measured).
    last: Mutex<Option<(Instant, Option<u64>)>>,
}

impl Room {
    /// `max_store_mb` and `min_free_mb` as configured (`0`: that limit is off); free space is
    /// measured on the filesystem holding `data_dir`.
    pub fn new(max_store_mb: u64, min_free_mb: u64, data_dir: &Path) -> Room {
        Room {
            max_store: (max_store_mb > 0).then(|| max_store_mb.saturating_mul(MIB)),
            reserve: (min_free_mb > 0).then(|| Reserve {
                dir: data_dir.to_path_buf(),
                min_free: min_free_mb.saturating_mul(MIB),
                last: Mutex::new(None),
            }),
        }
    }

    /// Refuse new work ([`Limited`]: answered 503, like a full disk) when the store holds
    /// `max_store_mb`, or its filesystem has less than `min_free_mb` free.
    pub fn check(&self, c: &Connection) -> rusqlite::Result<()> {
        if let Some(max) = self.max_store {
            // Pages in use; free pages inside the file are reused before it grows.
            let pages: i64 = c.pragma_query_value(None, "page_count", |r| r.get(0))?;
            let free: i64 = c.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
            let size: i64 = c.pragma_query_value(None, "page_size", |r| r.get(0))?;
            let used = (pages - free).max(0).saturating_mul(size) as u64;
            if used >= max {
                return Err(full(format!(
                    "the store reached max_store_mb ({} MiB); new messages are refused until finished ones are pruned (retention_days) or the limit is raised",
                    max / MIB
                )));
            }
        }
        if let Some(reserve) = &self.reserve {
            let free = reserve.free();
            if let Some(free) = free.filter(|free| *free < reserve.min_free) {
                return Err(full(format!(
                    "data_dir's filesystem has {} MiB free, less than min_free_mb ({} MiB); new messages are refused, so those already accepted can finish, until space is freed",
                    free / MIB,
                    reserve.min_free / MIB
                )));
            }
        }
        Ok(())
    }
}

impl Reserve {
    /// Free space for an unprivileged writer (`f_bavail`: the root-reserved blocks are not ours to
    /// count), measured again once [`FREE_SPACE_TTL`] has passed.
    fn free(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some((at, free)) = *last {
            if now.duration_since(at) < FREE_SPACE_TTL {
                return free;
            }
        }
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(s) => Some(s.f_bavail.saturating_mul(s.f_frsize)),
            Err(e) => {
                // Unknown is not "full": new work goes on (a disk that does fill is still
                // refused by SQLite itself). Said once, not at every message.
                if !matches!(*last, Some((_, None))) {
                    tracing::warn!(dir = %self.dir.display(), "cannot measure the free space of data_dir ({e}); min_free_mb is not applied until it can be");
                }
                None
            }
        };
        *last = Some((now, free));
        free
    }
}

/// New work refused by a limit, and which: an error of its own, so that the store tells a limit
/// (which finishing work is never held to) from a full disk (which refuses every write), and logs
/// each as such. It rides in rusqlite's one variant that carries an error of ours.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Limited(String);

fn full(why: String) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(Limited(why)))
}
