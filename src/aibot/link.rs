//! One AI bot's long connection to WeCom: connect, subscribe, keep it alive with pings, read what
//! WeCom pushes, and carry the gateway's commands, each matched to its answer by `req_id`. It
//! reconnects after a drop with backoff and jitter, slowly after WeCom refuses the subscription
//! (a wrong Secret must not become a storm of attempts), and after a kick (another connection
//! subscribed with the same bot) only after a long pause, saying why each time.
//!
//! Must never: log the Secret, reconnect in a tight loop, or hold a command's caller past its
//! timeout. What a push means is for `receive.rs`; this file only hands pushes on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use super::frame::{self, Incoming};
use crate::retry::RetryPolicy;

/// How long a command waits for its answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// WeCom asks for a ping every 30 s; two unanswered mean the connection is dead.
const PING_EVERY: Duration = Duration::from_secs(30);
const MISSED_PINGS: u32 = 2;
/// A connection that lived this long starts the backoff over when it drops.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Where the connection stands (for `/ready` and the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not connected yet, or connecting again after a drop.
    Connecting,
    /// Subscribed: commands go out. Each connection has a number of its own.
    Connected { connection: u64 },
    /// WeCom refused the subscription (wrong bot_id or Secret?); tried again slowly.
    Refused { errcode: i64, errmsg: String },
    /// Another connection subscribed with this bot and WeCom dropped this one.
    Kicked,
    /// Another replica holds this bot's connection.
    Standby,
}

impl State {
    /// A line for `/ready`'s warnings, when the bot is not connected.
    pub fn warning(&self, name: &str) -> Option<String> {
        match self {
            State::Connected { .. } | State::Standby => None,
            State::Connecting => Some(format!("AI bot {name:?} is not connected to WeCom yet")),
            State::Refused { errcode, errmsg } => Some(format!(
                "AI bot {name:?}: WeCom refused the subscription (errcode {errcode}, {errmsg}): check its bot_id and secret"
            )),
            State::Kicked => Some(format!(
                "AI bot {name:?} was disconnected because another connection subscribed with the same bot (a second gateway, replica or tool using its Secret?)"
            )),
        }
    }
}

/// A command that did not get a good answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the bot is not connected to WeCom")]
    NotConnected,
    #[error("the connection closed before WeCom answered")]
    Closed,
    #[error("WeCom did not answer within {} s", ANSWER_WITHIN.as_secs())]
    Timeout,
    #[error("WeCom refused it: errcode {errcode}, {errmsg}")]
    Refused { errcode: i64, errmsg: String },
}

impl LinkError {
    pub fn errcode(&self) -> Option<i64> {
        match self {
            LinkError::Refused { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }
}

/// Something WeCom pushed to the bot, with the connection it came on.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub cmd: String,
    pub req_id: String,
    pub body: Value,
    pub connection: u64,
}

type Pending = HashMap<String, oneshot::Sender<(i64, String, Value)>>;

/// The handle the rest of the gateway holds: send a command, see the state.
pub struct Link {
    pub name: String,
    state: watch::Sender<State>,
    writer: Mutex<Option<(u64, mpsc::UnboundedSender<Message>)>>,
    pending: Mutex<Pending>,
    connections: AtomicU64,
}

impl Link {
    pub fn new(name: &str) -> Arc<Link> {
        Arc::new(Link {
            name: name.to_owned(),
            state: watch::Sender::new(State::Connecting),
            writer: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            connections: AtomicU64::new(0),
        })
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Watch the state change.
    pub fn watch(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }

    /// The connection commands go out on now, if any.
    pub fn connection(&self) -> Option<u64> {
        match *self.state.borrow() {
            State::Connected { connection } => Some(connection),
            _ => None,
        }
    }

    /// Wait up to `wait` for the bot to be connected; its connection number.
    pub async fn connected(&self, wait: Duration) -> Option<u64> {
        let mut rx = self.state.subscribe();
        let found = tokio::time::timeout(wait, async {
            loop {
                if let State::Connected { connection } = *rx.borrow_and_update() {
                    return Some(connection);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        });
        found.await.ok().flatten()
    }

    /// Wait until the bot is connected (true), or another replica holds it (false).
    pub async fn ready(&self) -> bool {
        let mut rx = self.state.subscribe();
        loop {
            match *rx.borrow_and_update() {
                State::Connected { .. } => return true,
                State::Standby => return false,
                _ => {}
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Send `cmd` with `req_id` and wait for WeCom's answer: its body when errcode is 0. Only one
    /// command per `req_id` may wait at a time (a reply's frames go one after another).
    pub async fn request(
        &self,
        cmd: &str,
        req_id: &str,
        body: Option<&Value>,
        wait_connected: Duration,
    ) -> Result<Value, LinkError> {
        self.connected(wait_connected)
            .await
            .ok_or(LinkError::NotConnected)?;
        let (tx, rx) = oneshot::channel();
        let writer = lock(&self.writer).clone();
        let Some((_, writer)) = writer else {
            return Err(LinkError::NotConnected);
        };
        lock(&self.pending).insert(req_id.to_owned(), tx);
        let text = frame::command(cmd, req_id, body);
        if writer.send(Message::text(text)).is_err() {
            lock(&self.pending).remove(req_id);
            return Err(LinkError::Closed);
        }
        let answer = tokio::time::timeout(ANSWER_WITHIN, rx).await;
        lock(&self.pending).remove(req_id);
        match answer {
            Err(_) => Err(LinkError::Timeout),
            Ok(Err(_)) => Err(LinkError::Closed),
            Ok(Ok((0, _, body))) => Ok(body),
            Ok(Ok((errcode, errmsg, _))) => {
                if errcode == frame::NOT_SUBSCRIBED {
                    // WeCom no longer counts this connection as subscribed (it was taken over,
                    // or lost on WeCom's side): close it, so the bot connects and subscribes
                    // again.
                    tracing::warn!(aibot = %self.name, "WeCom says the connection is not subscribed (846609): connecting again");
                    let _ = writer.send(Message::Close(None));
                }
                Err(LinkError::Refused { errcode, errmsg })
            }
        }
    }

    fn answered(&self, req_id: &str, answer: (i64, String, Value)) {
        if let Some(tx) = lock(&self.pending).remove(req_id) {
            let _ = tx.send(answer);
        }
    }

    /// The connection is gone: every waiting command learns it now.
    fn closed(&self, next: State) {
        // The state first: a command sent meanwhile waits for the next connection instead of
        // finding no writer under a state that still says connected.
        self.state.send_replace(next);
        *lock(&self.writer) = None;
        lock(&self.pending).clear();
    }

    /// Another replica holds the bot: this one waits.
    pub fn standby(&self) {
        self.closed(State::Standby);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one connection ended with, and so how long to wait before the next.
enum Ended {
    /// Dropped, failed to connect, or went silent: back off and try again.
    Dropped(String),
    /// WeCom refused the subscription.
    Refused { errcode: i64, errmsg: String },
    /// Another connection took the bot.
    Kicked,
}

/// The bot's id and Secret, and where to connect.
pub struct Credentials {
    pub ws_url: String,
    pub bot_id: String,
    pub secret: SecretString,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("ws_url", &self.ws_url)
            .field("bot_id", &self.bot_id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// Keep the bot connected until `held` says the lease is lost (or forever): each connection's
/// pushes go to `pushes`. Returns when the lease is lost, after closing the connection.
pub async fn run(
    link: Arc<Link>,
    creds: &Credentials,
    pushes: mpsc::Sender<Pushed>,
    mut held: watch::Receiver<bool>,
) {
    let drops = RetryPolicy {
        max_attempts: u32::MAX,
        base: Duration::from_secs(1),
        max: Duration::from_secs(30),
    };
    let refusals = RetryPolicy {
        max_attempts: u32::MAX,
        base: Duration::from_secs(60),
        max: Duration::from_secs(600),
    };
    let (mut dropped, mut refused) = (0u32, 0u32);
    loop {
        if !*held.borrow() {
            link.standby();
            return;
        }
        let started = tokio::time::Instant::now();
        let ended = tokio::select! {
            ended = connection(&link, creds, &pushes) => ended,
            () = lost(&mut held) => {
                tracing::warn!(aibot = %link.name, "this replica no longer holds the AI bot's lease: closing its connection");
                link.standby();
                return;
            }
        };
        if started.elapsed() > STABLE_AFTER {
            dropped = 0;
        }
        if !matches!(ended, Ended::Refused { .. }) {
            refused = 0;
        }
        let wait = match ended {
            Ended::Dropped(why) => {
                dropped += 1;
                let wait = drops.delay(dropped);
                tracing::warn!(aibot = %link.name, wait_ms = wait.as_millis() as u64, "AI bot's connection to WeCom lost: {why}; connecting again");
                link.closed(State::Connecting);
                wait
            }
            Ended::Refused { errcode, errmsg } => {
                refused += 1;
                let wait = refusals.delay(refused);
                tracing::error!(aibot = %link.name, errcode, errmsg = %errmsg, wait_s = wait.as_secs(), "WeCom refused the AI bot's subscription: check its bot_id and secret (the Secret shown with the Bot ID under API mode, long connection); trying again slowly");
                link.closed(State::Refused { errcode, errmsg });
                wait
            }
            Ended::Kicked => {
                // Connecting again at once would kick the other connection, which would kick
                // this one: two gateways would take turns forever.
                let wait = refusals.max;
                tracing::error!(aibot = %link.name, wait_s = wait.as_secs(), "WeCom disconnected the AI bot: another connection subscribed with the same bot (a second gateway, replica or tool using its Secret?); connecting again later");
                link.closed(State::Kicked);
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = lost(&mut held) => {
                link.standby();
                return;
            }
        }
    }
}

/// Resolves when the lease is lost; never, for a lease held for good (its sender is gone).
async fn lost(held: &mut watch::Receiver<bool>) {
    if held.wait_for(|h| !*h).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One connection, from connect to its end.
async fn connection(link: &Link, creds: &Credentials, pushes: &mpsc::Sender<Pushed>) -> Ended {
    // Small frames that wait for an answer: without TCP_NODELAY each would wait out a delayed ACK.
    let connect = tokio_tungstenite::connect_async_with_config(creds.ws_url.as_str(), None, true);
    let ws = match tokio::time::timeout(ANSWER_WITHIN, connect).await {
        Err(_) => return Ended::Dropped(format!("cannot connect to {}: timed out", creds.ws_url)),
        Ok(Err(e)) => return Ended::Dropped(format!("cannot connect to {}: {e}", creds.ws_url)),
        Ok(Ok((ws, _))) => ws,
    };
    let (mut sink, mut stream) = ws.split();
    let req_id = format!(
        "{}_{}",
        frame::SUBSCRIBE,
        hex::encode(rand::random::<[u8; 8]>())
    );
    let body = frame::subscribe(&creds.bot_id, creds.secret.expose_secret());
    let subscribe = frame::command(frame::SUBSCRIBE, &req_id, Some(&body));
    if let Err(e) = sink.send(Message::text(subscribe)).await {
        return Ended::Dropped(format!("cannot subscribe: {e}"));
    }
    // The subscription's answer comes first; anything else before it is not for us yet.
    let answer = tokio::time::timeout(ANSWER_WITHIN, async {
        while let Some(message) = stream.next().await {
            let Ok(Message::Text(text)) = message else {
                if message.is_err() {
                    return None;
                }
                continue;
            };
            if let Ok(Incoming::Answer {
                req_id: r,
                errcode,
                errmsg,
                ..
            }) = Incoming::parse(&text)
            {
                if r == req_id {
                    return Some((errcode, errmsg));
                }
            }
        }
        None
    });
    match answer.await {
        Err(_) => return Ended::Dropped("WeCom did not answer the subscription".into()),
        Ok(None) => return Ended::Dropped("closed before the subscription was answered".into()),
        Ok(Some((0, _))) => {}
        Ok(Some((errcode, errmsg))) => return Ended::Refused { errcode, errmsg },
    }
    let connection = link.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let (tx, mut outgoing) = mpsc::unbounded_channel::<Message>();
    *lock(&link.writer) = Some((connection, tx));
    link.state.send_replace(State::Connected { connection });
    tracing::info!(aibot = %link.name, connection, "AI bot {:?} connected to WeCom", link.name);

    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    // After a stall, one tick, not a burst of them: the answers have had no chance to come.
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unanswered = 0u32;
    let mut ping_id = String::new();
    loop {
        tokio::select! {
            message = stream.next() => {
                let text = match message {
                    None => return Ended::Dropped("WeCom closed the connection".into()),
                    Some(Err(e)) => return Ended::Dropped(e.to_string()),
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) => return Ended::Dropped("WeCom closed the connection".into()),
                    // tungstenite answers WebSocket pings itself.
                    Some(Ok(_)) => continue,
                };
                // Anything WeCom sends shows the connection alive.
                unanswered = 0;
                match Incoming::parse(&text) {
                    Err(e) => tracing::warn!(aibot = %link.name, error = %e, "a frame from WeCom that is not understood; ignored"),
                    Ok(Incoming::Answer { req_id, errcode, errmsg, body }) => {
                        if req_id != ping_id {
                            link.answered(&req_id, (errcode, errmsg, body));
                        }
                    }
                    Ok(Incoming::Push { cmd, req_id, body }) => {
                        let kicked = body["event"]["eventtype"] == "disconnected_event";
                        if kicked {
                            let _ = sink.close().await;
                            return Ended::Kicked;
                        }
                        let pushed = Pushed { cmd, req_id, body, connection };
                        if pushes.send(pushed).await.is_err() {
                            return Ended::Dropped("the gateway is stopping".into());
                        }
                    }
                }
            }
            Some(out) = outgoing.recv() => {
                let closing = matches!(out, Message::Close(_));
                if let Err(e) = sink.send(out).await {
                    return Ended::Dropped(format!("cannot send: {e}"));
                }
                if closing {
                    return Ended::Dropped("WeCom no longer counts it as subscribed (846609)".into());
                }
            }
            _ = ping.tick() => {
                if unanswered >= MISSED_PINGS {
                    return Ended::Dropped(format!("{MISSED_PINGS} pings went unanswered"));
                }
                unanswered += 1;
                ping_id = format!("ping_{}", hex::encode(rand::random::<[u8; 8]>()));
                let ping = frame::command(frame::PING, &ping_id, None);
                if let Err(e) = sink.send(Message::text(ping)).await {
                    return Ended::Dropped(format!("cannot send a ping: {e}"));
                }
            }
        }
    }
}
