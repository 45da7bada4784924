//! The in-memory window of jobs ready for workers: per-user FIFO, never two jobs of one user at once.
//! Both backends use it; the durable one keeps only a bounded slice of its backlog here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use super::model::Job;

#[derive(Default)]
struct Scheduler {
    /// Waiting jobs per user, in arrival order.
    queues: HashMap<String, VecDeque<Job>>,
    /// Users with waiting jobs and nothing in progress, in the order they became ready.
    ready: VecDeque<String>,
    /// Users with a job in progress.
    busy: HashSet<String>,
    waiting: usize,
    closed: bool,
}

/// What `Window::next` does once the window is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnClose {
    /// Hand out what is still waiting, then stop (nothing else holds it).
    Drain,
    /// Stop handing out at once; what waits stays in the durable store for the next start.
    Stop,
}

pub struct Window {
    state: Mutex<Scheduler>,
    /// Signalled when a job becomes ready, a job finishes, or the window closes.
    changed: Notify,
    on_close: OnClose,
}

impl Window {
    pub fn new(on_close: OnClose) -> Self {
        Window {
            state: Mutex::new(Scheduler::default()),
            changed: Notify::new(),
            on_close,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Scheduler> {
        // The scheduler's invariants hold between statements, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a job behind the user's earlier ones.
    pub fn add(&self, job: Job) {
        let mut s = self.lock();
        let user = job.user_key.clone();
        let queue = s.queues.entry(user.clone()).or_default();
        queue.push_back(job);
        let first = queue.len() == 1;
        s.waiting += 1;
        if first && !s.busy.contains(&user) {
            s.ready.push_back(user);
            drop(s);
            self.changed.notify_waiters();
        }
    }

    fn try_take(&self) -> Result<Option<Job>, ()> {
        let mut s = self.lock();
        if s.closed && (self.on_close == OnClose::Stop || s.waiting == 0) {
            return Err(());
        }
        while let Some(user) = s.ready.pop_front() {
            let Some(queue) = s.queues.get_mut(&user) else {
                continue;
            };
            let Some(job) = queue.pop_front() else {
                continue;
            };
            if queue.is_empty() {
                s.queues.remove(&user);
            }
            s.waiting -= 1;
            s.busy.insert(user);
            return Ok(Some(job));
        }
        Ok(None)
    }

    /// The next ready job; waits for one. `None` once closed (see [`OnClose`]).
    pub async fn next(&self) -> Option<Job> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_take() {
                Ok(Some(job)) => return Some(job),
                Err(()) => return None,
                Ok(None) => notified.await,
            }
        }
    }

    /// A job handed out could not be started after all: it goes back to the front of its user's
    /// queue, ahead of their later messages.
    pub fn put_back(&self, job: Job) {
        let mut s = self.lock();
        let user = job.user_key.clone();
        // The user was busy with this very job, so they are not in `ready` yet.
        s.busy.remove(&user);
        s.queues.entry(user.clone()).or_default().push_front(job);
        s.waiting += 1;
        s.ready.push_back(user);
        drop(s);
        self.changed.notify_waiters();
    }

    /// The user's job is finished: their next one, if any, becomes ready.
    pub fn release(&self, user_key: &str) {
        let mut s = self.lock();
        s.busy.remove(user_key);
        if s.queues.get(user_key).is_some_and(|q| !q.is_empty()) {
            s.ready.push_back(user_key.to_owned());
        }
        drop(s);
        self.changed.notify_waiters();
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
    }

    /// Jobs waiting in the window (not in progress).
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Jobs in progress.
    pub fn in_progress(&self) -> usize {
        self.lock().busy.len()
    }
}
