//! In-memory inbox: bounded, per-user FIFO, with a bounded memory of recent dedup keys.
//! Lost on restart; a durable backend replaces it where that matters.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, Semaphore};

use super::{Inbox, InboxError, Job, NewJob, Pushed};

/// How many recent dedup keys are remembered. WeCom retries within seconds, so this is plenty.
const DEDUP_MEMORY: usize = 100_000;

#[derive(Default)]
struct State {
    /// Waiting jobs per user, in arrival order.
    queues: HashMap<String, VecDeque<Job>>,
    /// Users with waiting jobs and nothing in progress, in the order they became ready.
    ready: VecDeque<String>,
    /// Users with a job in progress.
    busy: HashSet<String>,
    len: usize,
    next_id: u64,
    closed: bool,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
}

pub struct MemoryInbox {
    state: Mutex<State>,
    capacity: usize,
    /// One permit per free slot; a push takes one, `finish` returns it.
    room: Arc<Semaphore>,
    /// Signalled when a job becomes ready or the inbox closes.
    available: Notify,
    /// How long a push waits for room before giving up (WeCom waits 5 s in all).
    push_wait: Duration,
}

impl MemoryInbox {
    pub fn new(capacity: usize, push_wait: Duration) -> Self {
        MemoryInbox {
            state: Mutex::new(State::default()),
            capacity,
            room: Arc::new(Semaphore::new(capacity)),
            available: Notify::new(),
            push_wait,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queues half-updated in a way that matters
        // more than stopping the service would, so recover the guard.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remember(state: &mut State, key: String) {
        if state.seen_order.len() >= DEDUP_MEMORY {
            if let Some(old) = state.seen_order.pop_front() {
                state.seen.remove(&old);
            }
        }
        state.seen.insert(key.clone());
        state.seen_order.push_back(key);
    }

    fn try_take(&self) -> Result<Option<Job>, ()> {
        let mut state = self.lock();
        while let Some(user) = state.ready.pop_front() {
            let Some(queue) = state.queues.get_mut(&user) else {
                continue;
            };
            let Some(job) = queue.pop_front() else {
                continue;
            };
            if queue.is_empty() {
                state.queues.remove(&user);
            }
            state.busy.insert(user);
            return Ok(Some(job));
        }
        if state.closed && state.len == 0 {
            return Err(());
        }
        Ok(None)
    }
}

#[async_trait]
impl Inbox for MemoryInbox {
    async fn push(&self, new: NewJob) -> Result<Pushed, InboxError> {
        {
            let state = self.lock();
            if state.closed {
                return Err(InboxError::Closed);
            }
            if state.seen.contains(&new.dedup_key) {
                return Ok(Pushed::Duplicate);
            }
        }
        let permit = tokio::time::timeout(self.push_wait, self.room.clone().acquire_owned())
            .await
            .map_err(|_| InboxError::Full {
                capacity: self.capacity,
            })?
            .map_err(|_| InboxError::Closed)?;
        let mut state = self.lock();
        // Checked again: a concurrent copy may have been queued while this one waited for room.
        if state.closed {
            return Err(InboxError::Closed);
        }
        if state.seen.contains(&new.dedup_key) {
            return Ok(Pushed::Duplicate);
        }
        permit.forget();
        state.next_id += 1;
        let job = Job {
            id: state.next_id,
            app: new.app,
            user_key: new.user_key.clone(),
            message: new.message,
        };
        Self::remember(&mut state, new.dedup_key);
        state.len += 1;
        let queue = state.queues.entry(new.user_key.clone()).or_default();
        queue.push_back(job);
        let first_waiting = queue.len() == 1;
        if first_waiting && !state.busy.contains(&new.user_key) {
            state.ready.push_back(new.user_key);
            drop(state);
            self.available.notify_one();
        }
        Ok(Pushed::Queued)
    }

    async fn next(&self) -> Option<Job> {
        loop {
            let notified = self.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_take() {
                Ok(Some(job)) => return Some(job),
                Err(()) => return None,
                Ok(None) => notified.await,
            }
        }
    }

    async fn finish(&self, job: &Job) {
        let mut state = self.lock();
        state.busy.remove(&job.user_key);
        state.len = state.len.saturating_sub(1);
        let more = state
            .queues
            .get(&job.user_key)
            .is_some_and(|q| !q.is_empty());
        if more {
            state.ready.push_back(job.user_key.clone());
        }
        let drained = state.closed && state.len == 0;
        drop(state);
        self.room.add_permits(1);
        if drained {
            self.available.notify_waiters();
        } else if more {
            self.available.notify_one();
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.available.notify_waiters();
    }

    fn len(&self) -> usize {
        self.lock().len
    }
}
