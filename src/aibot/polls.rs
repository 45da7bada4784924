//! URL mode's bubbles: WeCom polls the gateway for a stream's content (stream refresh callbacks)
//! instead of being sent it. The worker writes each bubble's latest content here; the callback
//! handler answers each poll from it. Kept in this process's memory, for the bubbles this process
//! opened; a poll for another (after a restart, or on another replica) is answered from the
//! store, where every reply's progress is recorded, and one the store does not know either is
//! answered finished, so WeCom stops polling (the answer then goes to the `response_url`).
//!
//! Must never: grow without bound (bubbles are forgotten some minutes after WeCom stops polling).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// WeCom polls a bubble for 6 minutes after the member's message; kept a little longer.
const KEEP: Duration = Duration::from_secs(10 * 60);

/// Where a bubble's content went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// This process answers the bubble's polls: they show it now.
    Here,
    /// Another process opened the bubble (a replica, or this one before a restart): its polls
    /// are answered from the store, where the reply's progress is recorded.
    NotHere,
    /// WeCom was told the bubble is finished and stopped polling it: the content must go
    /// another way.
    Abandoned,
}

/// One bubble as WeCom polls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Polled {
    pub content: String,
    pub finished: bool,
    /// WeCom polled it before this process knew it, was told it is finished, and stopped: what
    /// the worker writes later cannot reach it.
    pub abandoned: bool,
}

#[derive(Default)]
pub struct Polls(Mutex<HashMap<String, (Polled, Instant)>>);

impl Polls {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Polled, Instant)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Show `content` in bubble `id`, finished or not, if this process answers WeCom's polls of
    /// it.
    pub fn set(&self, id: &str, content: &str, finished: bool) -> Shown {
        let mut map = self.map();
        let now = Instant::now();
        map.retain(|_, (_, at)| now.duration_since(*at) < KEEP);
        let at = match map.get(id) {
            None => return Shown::NotHere,
            Some((p, _)) if p.abandoned => return Shown::Abandoned,
            Some((_, at)) => *at,
        };
        let polled = Polled {
            content: content.to_owned(),
            finished,
            abandoned: false,
        };
        map.insert(id.to_owned(), (polled, at));
        Shown::Here
    }

    /// The answer to a poll of bubble `id`: what it shows, or, for one this process does not
    /// know (a restart, another replica), finished and empty, so WeCom stops polling; it is then
    /// remembered as abandoned, and the worker sends the answer to the `response_url`.
    pub fn poll(&self, id: &str) -> Polled {
        if let Some(polled) = self.get(id) {
            return polled;
        }
        let polled = Polled {
            content: String::new(),
            finished: true,
            abandoned: true,
        };
        self.map()
            .insert(id.to_owned(), (polled.clone(), Instant::now()));
        polled
    }

    /// Open bubble `id` with `content` unless it is open already (WeCom's retry of a callback gets
    /// the same bubble, as it stands).
    pub fn open(&self, id: &str, content: &str) -> Polled {
        if let Some(polled) = self.get(id) {
            return polled;
        }
        let polled = Polled {
            content: content.to_owned(),
            finished: false,
            abandoned: false,
        };
        self.map().insert(id.to_owned(), (polled, Instant::now()));
        Polled {
            content: content.to_owned(),
            finished: false,
            abandoned: false,
        }
    }

    pub fn get(&self, id: &str) -> Option<Polled> {
        self.map().get(id).map(|(p, _)| p.clone())
    }
}
