//! In-memory store: bounded, with a bounded memory of recent dedup keys. Lost on restart: use it for
//! tests and throw-away setups; the SQLite store is the default.
//!
//! Owns: the bounded queue and its dedup memory, routes, history, deliveries and media records
//! for as long as the process lives. Keeps no failures (nothing to list or retry) and no replies.
//!
//! Must never: grow without bound (a full store refuses pushes after `push_wait`), or restate a
//! rule `rules.rs` holds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use super::model::{
    ChunkState, Deliveries, DeliveryState, DeliveryStatus, Failure, History, HistoryEntry, Job,
    Media, MediaRecord, NewJob, Outbox, Outcome, Pushed, Queue, Routes, StoreError, StoredDelivery,
};
use super::schedule::{OnClose, Window};

/// Nothing failed is kept to list or retry: the list is empty, and nothing is found to retry.
impl super::model::Failures for MemoryStore {}

/// One process: it holds every AI bot.
impl super::model::BotLeases for MemoryStore {}
use crate::conversation::Push;
use crate::wecom::AppMessage;

/// How many recent dedup keys are remembered. WeCom retries within seconds, so this is plenty.
const DEDUP_MEMORY: usize = 100_000;

#[derive(Default)]
struct Seen {
    keys: HashSet<String>,
    order: VecDeque<String>,
    routes: HashMap<String, String>,
    history: HashMap<String, VecDeque<HistoryEntry>>,
    deliveries: std::collections::BTreeMap<i64, (StoredDelivery, DeliveryStatus)>,
    next_id: u64,
    closed: bool,
    /// Received media records, the oldest forgotten beyond DEDUP_MEMORY.
    media: HashMap<String, MediaRecord>,
    media_order: VecDeque<String>,
}

pub struct MemoryStore {
    seen: Mutex<Seen>,
    window: Window,
    capacity: usize,
    /// One permit per free slot; a push takes one, `finish` returns it.
    room: Arc<Semaphore>,
    /// How long a push waits for room before giving up (WeCom waits 5 s in all).
    push_wait: Duration,
    /// Signs media links for as long as the process lives.
    media_key: Vec<u8>,
}

impl MemoryStore {
    pub fn new(capacity: usize, push_wait: Duration) -> Self {
        MemoryStore {
            seen: Mutex::new(Seen::default()),
            window: Window::new(OnClose::Drain),
            capacity,
            room: Arc::new(Semaphore::new(capacity)),
            push_wait,
            media_key: super::model::new_media_key(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Queue for MemoryStore {
    async fn push(&self, new: NewJob) -> Result<Pushed, StoreError> {
        let message = (new.channel.received(&new.payload))
            .map_err(|e| StoreError::failed("message cannot be parsed", e))?;
        {
            let seen = self.lock();
            if seen.closed {
                return Err(StoreError::Closed);
            }
            if seen.keys.contains(&new.dedup_key) {
                return Ok(Pushed::Duplicate);
            }
        }
        let permit = tokio::time::timeout(self.push_wait, self.room.clone().acquire_owned())
            .await
            .map_err(|_| StoreError::Full {
                capacity: self.capacity,
            })?
            .map_err(|_| StoreError::Closed)?;
        let job = {
            let mut seen = self.lock();
            // Checked again: a concurrent copy may have been queued while this one waited for room.
            if seen.closed {
                return Err(StoreError::Closed);
            }
            if !seen.keys.insert(new.dedup_key.clone()) {
                return Ok(Pushed::Duplicate);
            }
            if seen.order.len() >= DEDUP_MEMORY {
                if let Some(old) = seen.order.pop_front() {
                    seen.keys.remove(&old);
                }
            }
            seen.order.push_back(new.dedup_key);
            if let Some(app) = new.channel.route() {
                seen.routes.insert(new.user_key.clone(), app.to_owned());
            }
            seen.next_id += 1;
            Job {
                id: seen.next_id,
                channel: new.channel,
                user_key: new.user_key,
                message,
                attempts: 1,
                reply: None,
                receipt: None,
                stream: None,
            }
        };
        permit.forget();
        self.window.add(job);
        Ok(Pushed::Queued)
    }

    async fn next(&self) -> Option<Job> {
        self.window.next().await
    }

    async fn finish(&self, job: &Job, _outcome: Outcome) {
        self.window.release(&job.user_key);
        self.room.add_permits(1);
    }

    fn close(&self) {
        self.lock().closed = true;
        self.window.close();
    }

    fn len(&self) -> usize {
        self.window.waiting() + self.window.in_progress()
    }
}

#[async_trait]
impl Outbox for MemoryStore {
    async fn record_reply(&self, _job: &Job, _chunks: &[AppMessage]) -> Result<(), StoreError> {
        Ok(())
    }

    async fn record_upload(&self, _: &Job, _: usize, _: &AppMessage) -> Result<(), StoreError> {
        Ok(())
    }

    async fn mark_chunk(&self, _: &Job, _: usize, _: ChunkState) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl Routes for MemoryStore {
    async fn route(&self, user_key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().routes.get(user_key).cloned())
    }
}

#[async_trait]
impl Deliveries for MemoryStore {
    async fn add_deliveries(&self, items: Vec<Push>) -> Result<Vec<i64>, StoreError> {
        let mut seen = self.lock();
        let mut ids = Vec::new();
        for push in items {
            seen.next_id += 1;
            let id = seen.next_id as i64;
            let status = DeliveryStatus {
                id,
                target: push.target(),
                state: DeliveryState::Queued,
                attempts: 0,
                error: None,
                retried_as: None,
            };
            let stored = StoredDelivery {
                id,
                push,
                started: false,
            };
            seen.deliveries.insert(id, (stored, status));
            ids.push(id);
        }
        Ok(ids)
    }

    async fn queued_deliveries(&self) -> Result<Vec<StoredDelivery>, StoreError> {
        Ok(self
            .lock()
            .deliveries
            .values()
            .filter(|(_, s)| s.state == DeliveryState::Queued)
            .map(|(d, _)| d.clone())
            .collect())
    }

    async fn start_delivery(&self, id: i64) -> Result<(), StoreError> {
        if let Some((stored, _)) = self.lock().deliveries.get_mut(&id) {
            stored.started = true;
        }
        Ok(())
    }

    async fn finish_delivery(
        &self,
        id: i64,
        attempts: u32,
        failure: Option<Failure>,
    ) -> Result<(), StoreError> {
        if let Some((_, status)) = self.lock().deliveries.get_mut(&id) {
            status.state = DeliveryState::finished(failure.as_ref());
            status.attempts = attempts;
            status.error = failure.map(|f| f.reason);
        }
        Ok(())
    }

    async fn delivery(&self, id: i64) -> Result<Option<DeliveryStatus>, StoreError> {
        Ok(self.lock().deliveries.get(&id).map(|(_, s)| s.clone()))
    }
}

#[async_trait]
impl History for MemoryStore {
    async fn history(&self, user_key: &str, max: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let seen = self.lock();
        let entries = seen.history.get(user_key);
        Ok(entries
            .map(|h| {
                h.iter()
                    .skip(h.len().saturating_sub(max))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn append_history(
        &self,
        user_key: &str,
        entries: Vec<HistoryEntry>,
        keep: usize,
    ) -> Result<(), StoreError> {
        let mut seen = self.lock();
        let h = seen.history.entry(user_key.to_owned()).or_default();
        h.extend(entries);
        while h.len() > keep {
            h.pop_front();
        }
        Ok(())
    }

    async fn clear_history(&self, user_key: &str) -> Result<(), StoreError> {
        self.lock().history.remove(user_key);
        Ok(())
    }
}

#[async_trait]
impl Media for MemoryStore {
    async fn put_media(
        &self,
        record: &MediaRecord,
        _bytes: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let mut seen = self.lock();
        let mut record = record.clone();
        let old = seen.media.get(&record.sha256);
        // As the durable stores do: a name once known is kept.
        record.file_name = record.file_name.or(old.and_then(|o| o.file_name.clone()));
        let sha256 = record.sha256.clone();
        let new = seen.media.insert(sha256.clone(), record).is_none();
        if new {
            seen.media_order.push_back(sha256);
            if seen.media_order.len() > DEDUP_MEMORY {
                if let Some(old) = seen.media_order.pop_front() {
                    seen.media.remove(&old);
                }
            }
        }
        Ok(())
    }

    async fn media(&self, sha256: &str) -> Result<Option<MediaRecord>, StoreError> {
        Ok(self.lock().media.get(sha256).cloned())
    }

    async fn media_key(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self.media_key.clone())
    }
}
