//! URL mode's bubbles: WeCom polls the gateway for a stream's content (stream refresh callbacks)
//! instead of being sent it. The worker writes each bubble's latest content here; the callback
//! handler answers each poll from it. Kept in this process's memory: a poll for a bubble this
//! process does not know (after a restart, or on another replica) is answered finished, so WeCom
//! stops polling, and the worker sends the answer to the callback's `response_url` instead.
//!
//! Must never: grow without bound (bubbles are forgotten some minutes after WeCom stops polling).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// WeCom polls a bubble for 6 minutes after the member's message; kept a little longer.
const KEEP: Duration = Duration::from_secs(10 * 60);

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

    /// Show `content` in bubble `id`, finished or not. False when WeCom does not poll this
    /// process for it: a bubble another process opened (a replica, or this one before a restart),
    /// or one WeCom stopped polling (see [`Polls::poll`]); the content must go another way.
    pub fn set(&self, id: &str, content: &str, finished: bool) -> bool {
        let mut map = self.map();
        let now = Instant::now();
        map.retain(|_, (_, at)| now.duration_since(*at) < KEEP);
        if map.get(id).is_none_or(|(p, _)| p.abandoned) {
            return false;
        }
        let polled = Polled {
            content: content.to_owned(),
            finished,
            abandoned: false,
        };
        let at = map.get(id).map_or(now, |(_, at)| *at);
        map.insert(id.to_owned(), (polled, at));
        true
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
