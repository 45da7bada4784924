//! A stand-in for WeCom's AI-bot long-connection endpoint: a real WebSocket server on
//! 127.0.0.1:0 speaking the bot frames (subscribe, ping, replies, streams, pushes, media upload),
//! plus an HTTP server on 127.0.0.1:0 serving encrypted inbound media as WeCom's file store does.
//!
//! It enforces the rules WeCom states, and makes the ones nobody knows for sure switchable. It
//! records what the gateway sent and what a member would see; tests wait on its changes (a
//! `Notify`), never on the clock. It must never sleep to synchronise, nor reach the network.
//!
//! Choices where WeCom's behaviour is unknown (each documented where it is made):
//! - a bad `bot_id`/`secret` is answered `bad_secret_errcode` (40001) "invalid secret", then the
//!   socket is closed (`keep_open_on_bad_secret` keeps it open);
//! - invalid parameters (a stream over 20480 bytes, no stream id, a bad upload) get 40058;
//! - a callback's `req_id` stays valid on a later socket of the same bot
//!   (`req_ids_survive_reconnect(false)` makes such a reply 846605);
//! - a duplicate callback (`inject_again`) carries the same msgid under a new req_id.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use aes::cipher::{block_padding::NoPadding, BlockEncryptMut, KeyIvInit};
use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use md5::Digest as _;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_tungstenite::tungstenite::Message;

use super::WAIT;

/// WeCom's limit on a stream's (and a markdown push's) content, in UTF-8 bytes.
pub const MAX_CONTENT_BYTES: usize = 20480;
/// The fake's answer to invalid parameters (over-long content, no stream id, a bad upload).
pub const ERR_INVALID_PARAM: i64 = 40058;
/// `text` where WeCom does not take it (replies and pushes).
pub const ERR_INVALID_MSGTYPE: i64 = 40008;
/// A reply to an unknown, foreign or (with the switch) pre-reconnect callback `req_id`.
pub const ERR_INVALID_REQ_ID: i64 = 846605;
/// A stream frame after its deadline or after its `finish:true`.
pub const ERR_STREAM_EXPIRED: i64 = 846608;
/// Any command but subscribe on a socket that is not (or no longer) subscribed.
pub const ERR_NOT_SUBSCRIBED: i64 = 846609;

/// One frame the gateway sent (pings excepted), with the socket it came on and the fake's answer.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The socket, numbered from 1 in the order the fake accepted them.
    pub socket: usize,
    /// The frame as sent (a JSON string value if it was not JSON).
    pub json: Value,
    /// The errcode the fake answered (or holds, under `hold_answers`).
    pub errcode: i64,
}

impl Frame {
    pub fn cmd(&self) -> &str {
        self.json["cmd"].as_str().unwrap_or("")
    }
    pub fn req_id(&self) -> &str {
        self.json["headers"]["req_id"].as_str().unwrap_or("")
    }
    pub fn body(&self) -> &Value {
        &self.json["body"]
    }
}

/// A callback the fake pushed: its req_id (to reply on) and msgid (for dedup).
#[derive(Debug, Clone)]
pub struct Injected {
    pub bot_id: String,
    pub req_id: String,
    pub msgid: String,
    pub cmd: String,
    pub body: Value,
}

/// What the member sees of one stream id: its latest accepted content.
#[derive(Debug, Clone, PartialEq)]
pub struct Bubble {
    pub stream_id: String,
    pub content: String,
    pub finished: bool,
}

/// A file uploaded over the socket and finished.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// The init's `type`: file, image, voice or video.
    pub kind: String,
    pub filename: String,
    pub bytes: Vec<u8>,
    pub media_id: String,
}

/// What the socket task is told to do.
enum Out {
    Text(String),
    /// Send a close frame, then end.
    Close,
    /// End without a close frame (TCP closed under the client).
    Abort,
}

#[derive(Clone, Copy, PartialEq)]
enum CallbackKind {
    Message,
    EnterChat,
    CardEvent,
    OtherEvent,
}

struct Callback {
    bot: String,
    socket: usize,
    kind: CallbackKind,
}

struct Stream {
    started: Instant,
    finished: bool,
    content: String,
}

struct UploadSession {
    kind: String,
    filename: String,
    total_chunks: usize,
    total_size: Option<u64>,
    md5: Option<String>,
    chunks: BTreeMap<i64, Vec<u8>>,
}

struct Socket {
    tx: mpsc::UnboundedSender<Out>,
    /// The bot this socket is subscribed as; None before subscribe and after a kick.
    bot: Option<String>,
}

struct Inner {
    bots: HashMap<String, String>,
    bad_secret_errcode: i64,
    keep_open_on_bad_secret: bool,
    req_ids_survive_reconnect: bool,
    stream_deadline: Duration,
    silent_pings: bool,
    hold_answers: bool,
    held: Vec<(usize, String)>,
    refusals: HashMap<String, VecDeque<i64>>,
    next_socket: usize,
    next_id: usize,
    sockets: HashMap<usize, Socket>,
    /// The live subscribed socket of each bot.
    current: HashMap<String, usize>,
    attempts: HashMap<String, usize>,
    subscribed: HashMap<String, usize>,
    callbacks: HashMap<String, Callback>,
    /// By (req_id, stream id).
    streams: HashMap<(String, String), Stream>,
    /// Stream ids per req_id in the order they were created.
    stream_order: HashMap<String, Vec<String>>,
    updates: HashMap<String, Vec<String>>,
    replies: HashMap<String, Vec<Value>>,
    pushes: Vec<Value>,
    frames: Vec<Frame>,
    pings: usize,
    sessions: HashMap<String, UploadSession>,
    uploads: Vec<Uploaded>,
    media: HashMap<String, (Vec<u8>, Option<String>)>,
    media_gets: usize,
}

struct Shared {
    inner: Mutex<Inner>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }
}

/// The fake AI-bot endpoint. Dropping it stops both servers' accept loops.
pub struct FakeAiBot {
    pub ws_addr: SocketAddr,
    pub http_addr: SocketAddr,
    shared: Arc<Shared>,
    _shutdown: (oneshot::Sender<()>, oneshot::Sender<()>),
}

fn answer(req_id: &str, errcode: i64, errmsg: &str, body: Option<Value>) -> String {
    let mut a = json!({"headers": {"req_id": req_id}, "errcode": errcode, "errmsg": errmsg});
    if let Some(body) = body {
        a["body"] = body;
    }
    a.to_string()
}

fn errmsg(errcode: i64) -> &'static str {
    match errcode {
        0 => "ok",
        ERR_INVALID_PARAM => "invalid parameter",
        ERR_INVALID_MSGTYPE => "invalid message type",
        ERR_INVALID_REQ_ID => "invalid req_id",
        ERR_STREAM_EXPIRED => "stream message update expired",
        ERR_NOT_SUBSCRIBED => "aibot websocket not subscribed",
        _ => "refused by the fake",
    }
}

impl FakeAiBot {
    /// Start both servers on 127.0.0.1:0. No bot is known until `add_bot`.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                bots: HashMap::new(),
                bad_secret_errcode: 40001,
                keep_open_on_bad_secret: false,
                req_ids_survive_reconnect: true,
                stream_deadline: Duration::from_secs(6 * 60),
                silent_pings: false,
                hold_answers: false,
                held: Vec::new(),
                refusals: HashMap::new(),
                next_socket: 0,
                next_id: 0,
                sockets: HashMap::new(),
                current: HashMap::new(),
                attempts: HashMap::new(),
                subscribed: HashMap::new(),
                callbacks: HashMap::new(),
                streams: HashMap::new(),
                stream_order: HashMap::new(),
                updates: HashMap::new(),
                replies: HashMap::new(),
                pushes: Vec::new(),
                frames: Vec::new(),
                pings: 0,
                sessions: HashMap::new(),
                uploads: Vec::new(),
                media: HashMap::new(),
                media_gets: 0,
            }),
            changed: Notify::new(),
        });

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws_addr = listener.local_addr().unwrap();
        let (ws_tx, mut ws_rx) = oneshot::channel::<()>();
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut ws_rx => return,
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        tokio::spawn(serve_socket(s.clone(), tcp));
                    }
                }
            }
        });

        let router = Router::new()
            .route("/media/{id}", get(media_get))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = listener.local_addr().unwrap();
        let (http_tx, http_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = http_rx.await;
                })
                .await
                .unwrap();
        });
        FakeAiBot {
            ws_addr,
            http_addr,
            shared,
            _shutdown: (ws_tx, http_tx),
        }
    }

    /// The endpoint for `aibot.ws_url`: `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.ws_addr)
    }

    /// Accept subscribes of `bot_id` with this `secret`.
    pub fn add_bot(&self, bot_id: &str, secret: &str) {
        self.shared
            .lock()
            .bots
            .insert(bot_id.to_owned(), secret.to_owned());
    }

    // ------------------------------------------------------------ switches

    /// The errcode a bad bot_id/secret gets (default 40001; WeCom's real one is undocumented).
    pub fn bad_secret_errcode(&self, errcode: i64) {
        self.shared.lock().bad_secret_errcode = errcode;
    }

    /// Keep the socket open after a refused subscribe (default: close it).
    pub fn keep_open_on_bad_secret(&self, keep: bool) {
        self.shared.lock().keep_open_on_bad_secret = keep;
    }

    /// Whether a callback's req_id may be replied to from a later socket of the same bot
    /// (default true; false answers such replies 846605).
    pub fn req_ids_survive_reconnect(&self, survive: bool) {
        self.shared.lock().req_ids_survive_reconnect = survive;
    }

    /// How long after its first frame a stream id takes updates (default 6 minutes).
    pub fn stream_deadline(&self, deadline: Duration) {
        self.shared.lock().stream_deadline = deadline;
    }

    /// Make every open stream `by` older, as if that much time had passed (no sleeping).
    pub fn age_streams(&self, by: Duration) {
        for stream in self.shared.lock().streams.values_mut() {
            // An Instant before the clock's origin cannot exist: then make it as old as possible.
            stream.started = stream.started.checked_sub(by).unwrap_or_else(|| {
                let mut d = by;
                loop {
                    d /= 2;
                    if let Some(t) = stream.started.checked_sub(d) {
                        break t;
                    }
                }
            });
        }
    }

    /// Stop (true) or resume (false) answering pings; they are still counted.
    pub fn silent_pings(&self, silent: bool) {
        self.shared.lock().silent_pings = silent;
    }

    /// Hold every answer (the frames are still processed and recorded) until `release_answers`.
    pub fn hold_answers(&self) {
        self.shared.lock().hold_answers = true;
    }

    /// Send the held answers, in order, and answer at once again.
    pub fn release_answers(&self) {
        let mut inner = self.shared.lock();
        inner.hold_answers = false;
        for (socket, text) in std::mem::take(&mut inner.held) {
            if let Some(s) = inner.sockets.get(&socket) {
                let _ = s.tx.send(Out::Text(text));
            }
        }
    }

    /// Answer the next `n` frames of `cmd` with `errcode` (nothing else done with them).
    pub fn refuse_next(&self, cmd: &str, errcode: i64, n: usize) {
        self.shared
            .lock()
            .refusals
            .entry(cmd.to_owned())
            .or_default()
            .extend(std::iter::repeat_n(errcode, n));
    }

    /// Close the bot's live socket abruptly: no close frame, no event.
    pub fn drop_connection(&self, bot_id: &str) {
        self.end_connection(bot_id, false);
    }

    /// Kick the bot's live socket as a newer connection would: `disconnected_event`, then close.
    pub fn kick(&self, bot_id: &str) {
        self.end_connection(bot_id, true);
    }

    fn end_connection(&self, bot_id: &str, kick: bool) {
        let mut inner = self.shared.lock();
        let Some(socket) = inner.current.remove(bot_id) else {
            panic!("{bot_id} has no live connection to end");
        };
        inner.kick_socket(socket, kick);
        drop(inner);
        self.shared.changed.notify_waiters();
    }

    // ------------------------------------------------------------ connections

    /// Subscribe attempts of `bot_id`, accepted or not.
    pub fn subscribes(&self, bot_id: &str) -> usize {
        self.shared
            .lock()
            .attempts
            .get(bot_id)
            .copied()
            .unwrap_or(0)
    }

    /// Whether `bot_id` has a live subscribed socket.
    pub fn connected(&self, bot_id: &str) -> bool {
        self.shared.lock().current.contains_key(bot_id)
    }

    /// Wait until `bot_id` has subscribed successfully `n` times in all.
    pub async fn wait_for_subscribed(&self, bot_id: &str, n: usize) {
        self.wait_until(
            |i| {
                i.subscribed.get(bot_id).copied().unwrap_or(0) >= n
                    && i.current.contains_key(bot_id)
            },
            &format!("{bot_id} subscribed {n} times"),
        )
        .await;
    }

    /// Wait until `bot_id` has no live socket.
    pub async fn wait_for_disconnected(&self, bot_id: &str) {
        self.wait_until(
            |i| !i.current.contains_key(bot_id),
            &format!("{bot_id} disconnected"),
        )
        .await;
    }

    // ------------------------------------------------------------ callbacks

    /// A member's text in single chat.
    pub async fn inject_text(&self, bot_id: &str, user: &str, text: &str) -> Injected {
        let body = json!({"chattype": "single", "from": {"userid": user},
            "msgtype": "text", "text": {"content": text}});
        self.inject_message(bot_id, body).await
    }

    /// A member's text in group `chatid` (include the `@bot` mention in `text` if it matters).
    pub async fn inject_group_text(
        &self,
        bot_id: &str,
        chatid: &str,
        user: &str,
        text: &str,
    ) -> Injected {
        let body = json!({"chattype": "group", "chatid": chatid, "from": {"userid": user},
            "msgtype": "text", "text": {"content": text}});
        self.inject_message(bot_id, body).await
    }

    /// A member's image in single chat; `url`/`aeskey` from `serve_encrypted`.
    pub async fn inject_image(
        &self,
        bot_id: &str,
        user: &str,
        url: &str,
        aeskey: &str,
    ) -> Injected {
        let body = json!({"chattype": "single", "from": {"userid": user},
            "msgtype": "image", "image": {"url": url, "aeskey": aeskey}});
        self.inject_message(bot_id, body).await
    }

    /// A member's file in single chat; `url`/`aeskey` from `serve_encrypted`.
    pub async fn inject_file(&self, bot_id: &str, user: &str, url: &str, aeskey: &str) -> Injected {
        let body = json!({"chattype": "single", "from": {"userid": user},
            "msgtype": "file", "file": {"url": url, "aeskey": aeskey}});
        self.inject_message(bot_id, body).await
    }

    /// `enter_chat`: a member opened the single chat (answer with `aibot_respond_welcome_msg`).
    pub async fn inject_enter_chat(&self, bot_id: &str, user: &str) -> Injected {
        let body = json!({"chattype": "single", "from": {"userid": user}, "msgtype": "event",
            "event": {"eventtype": "enter_chat"}});
        self.inject_full(bot_id, "aibot_event_callback", body).await
    }

    /// An `aibot_msg_callback` with `body` completed by msgid and aibotid.
    pub async fn inject_message(&self, bot_id: &str, body: Value) -> Injected {
        self.inject_full(bot_id, "aibot_msg_callback", body).await
    }

    /// Any push (`aibot_msg_callback`, `aibot_event_callback`); msgid, aibotid and (for events)
    /// create_time are filled in when `body` lacks them. Returns the req_id.
    pub async fn inject(&self, bot_id: &str, cmd: &str, body: Value) -> String {
        self.inject_full(bot_id, cmd, body).await.req_id
    }

    /// Like `inject`, returning everything about the push.
    pub async fn inject_full(&self, bot_id: &str, cmd: &str, mut body: Value) -> Injected {
        {
            let mut inner = self.shared.lock();
            if body.get("msgid").is_none() {
                body["msgid"] = json!(format!("msg-{}", inner.id()));
            }
        }
        if body.get("aibotid").is_none() {
            body["aibotid"] = json!(bot_id);
        }
        if cmd == "aibot_event_callback" && body.get("create_time").is_none() {
            body["create_time"] = json!(super::now_secs());
        }
        self.push(bot_id, cmd, body).await
    }

    /// WeCom's duplicate callback: the same msgid and body again, under a new req_id.
    pub async fn inject_again(&self, earlier: &Injected) -> Injected {
        self.push(&earlier.bot_id, &earlier.cmd, earlier.body.clone())
            .await
    }

    async fn push(&self, bot_id: &str, cmd: &str, body: Value) -> Injected {
        self.wait_until(
            |i| i.current.contains_key(bot_id),
            &format!("{bot_id} connected, to push {cmd}"),
        )
        .await;
        let mut inner = self.shared.lock();
        let socket = inner.current[bot_id];
        let req_id = format!("cb-{}", inner.id());
        let kind = match (cmd, body["event"]["eventtype"].as_str()) {
            ("aibot_event_callback", Some("enter_chat")) => CallbackKind::EnterChat,
            ("aibot_event_callback", Some("template_card_event")) => CallbackKind::CardEvent,
            ("aibot_event_callback", _) => CallbackKind::OtherEvent,
            _ => CallbackKind::Message,
        };
        inner.callbacks.insert(
            req_id.clone(),
            Callback {
                bot: bot_id.to_owned(),
                socket,
                kind,
            },
        );
        let frame = json!({"cmd": cmd, "headers": {"req_id": req_id}, "body": body});
        let _ = inner.sockets[&socket].tx.send(Out::Text(frame.to_string()));
        Injected {
            bot_id: bot_id.to_owned(),
            req_id,
            msgid: body["msgid"].as_str().unwrap_or("").to_owned(),
            cmd: cmd.to_owned(),
            body,
        }
    }

    // ------------------------------------------------------------ recording

    /// Every frame the gateway sent except pings, in order.
    pub fn frames(&self) -> Vec<Frame> {
        self.shared.lock().frames.clone()
    }

    /// Pings received (answered or not).
    pub fn pings(&self) -> usize {
        self.shared.lock().pings
    }

    /// Wait for `n` pings in all.
    pub async fn wait_for_pings(&self, n: usize) {
        self.wait_until(|i| i.pings >= n, &format!("{n} pings"))
            .await;
    }

    /// Wait for the first frame (pings excepted) matching `pred`, and return it.
    pub async fn wait_for(&self, pred: impl Fn(&Frame) -> bool) -> Frame {
        self.wait_for_frames(1, pred).await.remove(0)
    }

    /// Wait until at least `n` frames match `pred`; return all that do.
    pub async fn wait_for_frames(&self, n: usize, pred: impl Fn(&Frame) -> bool) -> Vec<Frame> {
        self.wait_until(
            |i| i.frames.iter().filter(|f| pred(f)).count() >= n,
            &format!("{n} matching frames"),
        )
        .await;
        self.frames().into_iter().filter(|f| pred(f)).collect()
    }

    /// Every accepted `aibot_respond_msg`/`_welcome_msg`/`_update_msg` body for `req_id`.
    pub fn replies(&self, req_id: &str) -> Vec<Value> {
        self.shared
            .lock()
            .replies
            .get(req_id)
            .cloned()
            .unwrap_or_default()
    }

    /// The bubble of the latest stream id answered to `req_id`, as the member sees it.
    pub fn bubble(&self, req_id: &str) -> Option<Bubble> {
        self.bubbles(req_id).pop()
    }

    /// Every stream id's bubble answered to `req_id`, in the order they were opened.
    pub fn bubbles(&self, req_id: &str) -> Vec<Bubble> {
        self.shared.lock().bubbles(req_id)
    }

    /// Accepted stream contents for `req_id`, in order (every stream id).
    pub fn stream_updates(&self, req_id: &str) -> Vec<String> {
        self.shared
            .lock()
            .updates
            .get(req_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Wait until the latest bubble answered to `req_id` is finished; return it.
    pub async fn wait_for_finished(&self, req_id: &str) -> Bubble {
        self.wait_until(
            |i| i.bubbles(req_id).last().is_some_and(|b| b.finished),
            &format!("a finished bubble for {req_id}"),
        )
        .await;
        self.bubble(req_id).unwrap()
    }

    /// Markdown of the accepted `aibot_send_msg` frames to `chatid` (a userid in single chat).
    pub fn pushed(&self, chatid: &str) -> Vec<String> {
        self.shared
            .lock()
            .pushes
            .iter()
            .filter(|b| b["chatid"] == chatid && b["msgtype"] == "markdown")
            .map(|b| b["markdown"]["content"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// Every accepted `aibot_send_msg` body, whatever its msgtype.
    pub fn pushes(&self) -> Vec<Value> {
        self.shared.lock().pushes.clone()
    }

    /// Wait until `n` markdown pushes to `chatid` were accepted; return them.
    pub async fn wait_for_pushed(&self, chatid: &str, n: usize) -> Vec<String> {
        self.wait_until(
            |i| {
                i.pushes
                    .iter()
                    .filter(|b| b["chatid"] == chatid && b["msgtype"] == "markdown")
                    .count()
                    >= n
            },
            &format!("{n} pushes to {chatid}"),
        )
        .await;
        self.pushed(chatid)
    }

    /// Files uploaded and finished over the socket.
    pub fn uploads(&self) -> Vec<Uploaded> {
        self.shared.lock().uploads.clone()
    }

    /// Wait until `n` uploads were finished; return them all.
    pub async fn wait_for_uploads(&self, n: usize) -> Vec<Uploaded> {
        self.wait_until(|i| i.uploads.len() >= n, &format!("{n} uploads"))
            .await;
        self.uploads()
    }

    /// Wait until `done` holds of the fake's state as the accessors show it.
    pub async fn wait_until_true(&self, done: impl Fn(&Self) -> bool, what: &str) {
        self.wait_for_change(|| done(self), what).await;
    }

    async fn wait_until(&self, done: impl Fn(&Inner) -> bool, what: &str) {
        self.wait_for_change(|| done(&self.shared.lock()), what)
            .await;
    }

    /// Re-check `done` (which must not hold the lock) at every change; fail after `WAIT`.
    async fn wait_for_change(&self, done: impl Fn() -> bool, what: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let inner = self.shared.lock();
                let last: Vec<&Frame> = inner.frames.iter().rev().take(20).collect();
                panic!(
                    "timed out waiting for {what}; live bots {:?}, subscribes {:?}, {} pings, \
                     {} frames, the last: {last:#?}",
                    inner.current,
                    inner.attempts,
                    inner.pings,
                    inner.frames.len()
                );
            }
        }
    }

    // ------------------------------------------------------------ inbound media

    /// Serve `bytes` encrypted as WeCom does; the key is 43 characters, base64 without padding.
    pub fn serve_encrypted(&self, bytes: &[u8]) -> (String, String) {
        self.serve_encrypted_as(bytes, None, false)
    }

    /// Like `serve_encrypted`, with a 44-character padded base64 key.
    pub fn serve_encrypted_padded_key(&self, bytes: &[u8]) -> (String, String) {
        self.serve_encrypted_as(bytes, None, true)
    }

    /// Serve `bytes` at a new URL, AES-256-CBC encrypted (key = base64-decode(aeskey), IV = the
    /// key's first 16 bytes, PKCS#7 padded to a multiple of 32), with `filename` in a
    /// Content-Disposition if given. Returns (url, aeskey).
    pub fn serve_encrypted_as(
        &self,
        bytes: &[u8],
        filename: Option<&str>,
        padded_key: bool,
    ) -> (String, String) {
        let key: [u8; 32] = rand::random();
        let pad = 32 - bytes.len() % 32;
        let mut buf = bytes.to_vec();
        buf.extend(std::iter::repeat_n(pad as u8, pad));
        let len = buf.len();
        let iv: [u8; 16] = key[..16].try_into().unwrap();
        cbc::Encryptor::<aes::Aes256>::new(&key.into(), &iv.into())
            .encrypt_padded_mut::<NoPadding>(&mut buf, len)
            .unwrap();
        let mut aeskey = base64::engine::general_purpose::STANDARD.encode(key);
        if !padded_key {
            aeskey = aeskey.trim_end_matches('=').to_owned();
        }
        let mut inner = self.shared.lock();
        let id = format!("f{}", inner.id());
        inner
            .media
            .insert(id.clone(), (buf, filename.map(str::to_owned)));
        let url = format!(
            "http://{}/media/{id}?sign-type=sha1&q-sign-time=1700000000;1700000300",
            self.http_addr
        );
        (url, aeskey)
    }

    /// Downloads of served media so far.
    pub fn media_gets(&self) -> usize {
        self.shared.lock().media_gets
    }
}

async fn media_get(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let found = {
        let mut inner = s.lock();
        inner.media_gets += 1;
        inner.media.get(&id).cloned()
    };
    s.changed.notify_waiters();
    let Some((bytes, filename)) = found else {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    };
    let mut resp = (
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    )
        .into_response();
    if let Some(name) = filename {
        let encoded =
            percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC);
        let value = format!("attachment; filename*=UTF-8''{encoded}");
        resp.headers_mut().insert(
            axum::http::header::CONTENT_DISPOSITION,
            value.parse().unwrap(),
        );
    }
    resp
}

/// One socket: the handshake, then its frames in and the fake's frames out, until either side ends.
async fn serve_socket(shared: Arc<Shared>, tcp: tokio::net::TcpStream) {
    let _ = tcp.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let socket = {
        let mut inner = shared.lock();
        inner.next_socket += 1;
        let n = inner.next_socket;
        inner.sockets.insert(n, Socket { tx, bot: None });
        n
    };
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Text(text)) => {
                    if ws.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                Some(Out::Close) => {
                    let _ = ws.close(None).await;
                    break;
                }
                Some(Out::Abort) | None => break,
            },
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let now_close = shared.lock().handle(socket, text.as_str());
                    shared.changed.notify_waiters();
                    if now_close {
                        // The answer is already queued ahead of the close.
                        let inner = shared.lock();
                        let _ = inner.sockets[&socket].tx.send(Out::Close);
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let mut inner = shared.lock();
    inner.sockets.remove(&socket);
    inner.current.retain(|_, s| *s != socket);
    drop(inner);
    shared.changed.notify_waiters();
}

impl Inner {
    fn id(&mut self) -> usize {
        self.next_id += 1;
        self.next_id
    }

    fn bubbles(&self, req_id: &str) -> Vec<Bubble> {
        self.stream_order
            .get(req_id)
            .into_iter()
            .flatten()
            .map(|id| {
                let s = &self.streams[&(req_id.to_owned(), id.clone())];
                Bubble {
                    stream_id: id.clone(),
                    content: s.content.clone(),
                    finished: s.finished,
                }
            })
            .collect()
    }

    /// Tell `socket` it was replaced (if `kick`) and end it; it is no longer subscribed.
    fn kick_socket(&mut self, socket: usize, kick: bool) {
        let next = self.id();
        let Some(s) = self.sockets.get_mut(&socket) else {
            return;
        };
        let bot = s.bot.take().unwrap_or_default();
        if kick {
            let event = json!({"cmd": "aibot_event_callback",
                "headers": {"req_id": format!("cb-{next}")},
                "body": {"msgid": format!("msg-{next}"), "create_time": super::now_secs(),
                    "aibotid": bot, "msgtype": "event",
                    "event": {"eventtype": "disconnected_event"}}});
            let _ = s.tx.send(Out::Text(event.to_string()));
            let _ = s.tx.send(Out::Close);
        } else {
            let _ = s.tx.send(Out::Abort);
        }
    }

    /// Process one frame from `socket`: record it, answer it. True: close the socket after.
    fn handle(&mut self, socket: usize, text: &str) -> bool {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            self.frames.push(Frame {
                socket,
                json: Value::String(text.to_owned()),
                errcode: ERR_INVALID_PARAM,
            });
            self.answer(socket, "", ERR_INVALID_PARAM, None);
            return false;
        };
        let cmd = frame["cmd"].as_str().unwrap_or("").to_owned();
        let req_id = frame["headers"]["req_id"].as_str().unwrap_or("").to_owned();
        let subscribed = self.sockets.get(&socket).is_some_and(|s| s.bot.is_some());
        if cmd == "ping" {
            self.pings += 1;
            if !subscribed {
                self.answer(socket, &req_id, ERR_NOT_SUBSCRIBED, None);
            } else if !self.silent_pings {
                self.answer(socket, &req_id, 0, None);
            }
            return false;
        }
        let index = self.frames.len();
        self.frames.push(Frame {
            socket,
            json: frame.clone(),
            errcode: 0,
        });
        let refusal = self.refusals.get_mut(&cmd).and_then(VecDeque::pop_front);
        let (errcode, body, close) = if let Some(errcode) = refusal {
            if cmd == "aibot_subscribe" {
                let bot = frame["body"]["bot_id"].as_str().unwrap_or("").to_owned();
                *self.attempts.entry(bot).or_default() += 1;
            }
            (errcode, None, false)
        } else if cmd == "aibot_subscribe" {
            self.subscribe(socket, &frame["body"])
        } else if !subscribed {
            (ERR_NOT_SUBSCRIBED, None, false)
        } else {
            let (errcode, body) = self.command(socket, &cmd, &req_id, &frame["body"]);
            (errcode, body, false)
        };
        self.frames[index].errcode = errcode;
        let msg = if cmd == "aibot_subscribe" && errcode != 0 && refusal.is_none() {
            "invalid secret"
        } else {
            errmsg(errcode)
        };
        self.send_answer(socket, answer(&req_id, errcode, msg, body));
        close
    }

    fn answer(&mut self, socket: usize, req_id: &str, errcode: i64, body: Option<Value>) {
        self.send_answer(socket, answer(req_id, errcode, errmsg(errcode), body));
    }

    fn send_answer(&mut self, socket: usize, text: String) {
        if self.hold_answers {
            self.held.push((socket, text));
        } else if let Some(s) = self.sockets.get(&socket) {
            let _ = s.tx.send(Out::Text(text));
        }
    }

    /// (errcode, answer body, close the socket after answering).
    fn subscribe(&mut self, socket: usize, body: &Value) -> (i64, Option<Value>, bool) {
        let bot = body["bot_id"].as_str().unwrap_or("").to_owned();
        let secret = body["secret"].as_str().unwrap_or("");
        *self.attempts.entry(bot.clone()).or_default() += 1;
        if self.bots.get(&bot).is_none_or(|s| s != secret) {
            return (self.bad_secret_errcode, None, !self.keep_open_on_bad_secret);
        }
        *self.subscribed.entry(bot.clone()).or_default() += 1;
        if let Some(old) = self.current.insert(bot.clone(), socket) {
            if old != socket {
                self.kick_socket(old, true);
            }
        }
        if let Some(s) = self.sockets.get_mut(&socket) {
            s.bot = Some(bot);
        }
        (0, None, false)
    }

    fn command(
        &mut self,
        socket: usize,
        cmd: &str,
        req_id: &str,
        body: &Value,
    ) -> (i64, Option<Value>) {
        match cmd {
            "aibot_respond_msg" | "aibot_respond_welcome_msg" | "aibot_respond_update_msg" => {
                (self.respond(socket, cmd, req_id, body), None)
            }
            "aibot_send_msg" => (self.send_msg(body), None),
            "aibot_upload_media_init" => self.upload_init(body),
            "aibot_upload_media_chunk" => (self.upload_chunk(body), None),
            "aibot_upload_media_finish" => self.upload_finish(body),
            _ => (ERR_INVALID_PARAM, None),
        }
    }

    fn respond(&mut self, socket: usize, cmd: &str, req_id: &str, body: &Value) -> i64 {
        let bot = self.sockets[&socket].bot.clone().unwrap_or_default();
        let Some(cb) = self.callbacks.get(req_id) else {
            return ERR_INVALID_REQ_ID;
        };
        if cb.bot != bot || (cb.socket != socket && !self.req_ids_survive_reconnect) {
            return ERR_INVALID_REQ_ID;
        }
        let kind = cb.kind;
        let msgtype = body["msgtype"].as_str().unwrap_or("");
        match cmd {
            "aibot_respond_welcome_msg" if kind != CallbackKind::EnterChat => {
                return ERR_INVALID_REQ_ID
            }
            "aibot_respond_update_msg" if kind != CallbackKind::CardEvent => {
                return ERR_INVALID_REQ_ID
            }
            "aibot_respond_msg" if msgtype == "text" => return ERR_INVALID_MSGTYPE,
            // WeCom refuses a stream answer to a card click (or any event) as a bad req_id.
            "aibot_respond_msg" if msgtype == "stream" && kind != CallbackKind::Message => {
                return ERR_INVALID_REQ_ID
            }
            "aibot_respond_msg" if msgtype == "stream" => {
                let errcode = self.stream(req_id, &body["stream"]);
                if errcode != 0 {
                    return errcode;
                }
            }
            _ => {}
        }
        self.replies
            .entry(req_id.to_owned())
            .or_default()
            .push(body.clone());
        0
    }

    fn stream(&mut self, req_id: &str, stream: &Value) -> i64 {
        let Some(id) = stream["id"].as_str().filter(|id| !id.is_empty()) else {
            return ERR_INVALID_PARAM;
        };
        let content = stream["content"].as_str().unwrap_or("");
        if content.len() > MAX_CONTENT_BYTES {
            return ERR_INVALID_PARAM;
        }
        let finish = stream["finish"].as_bool().unwrap_or(false);
        let key = (req_id.to_owned(), id.to_owned());
        match self.streams.get_mut(&key) {
            Some(s) if s.finished || s.started.elapsed() >= self.stream_deadline => {
                return ERR_STREAM_EXPIRED
            }
            Some(s) => {
                s.finished = finish;
                s.content = content.to_owned();
            }
            None => {
                self.streams.insert(
                    key,
                    Stream {
                        started: Instant::now(),
                        finished: finish,
                        content: content.to_owned(),
                    },
                );
                self.stream_order
                    .entry(req_id.to_owned())
                    .or_default()
                    .push(id.to_owned());
            }
        }
        self.updates
            .entry(req_id.to_owned())
            .or_default()
            .push(content.to_owned());
        0
    }

    fn send_msg(&mut self, body: &Value) -> i64 {
        let msgtype = body["msgtype"].as_str().unwrap_or("");
        if msgtype == "text" {
            return ERR_INVALID_MSGTYPE;
        }
        if body["chatid"].as_str().is_none_or(str::is_empty) {
            return ERR_INVALID_PARAM;
        }
        if msgtype == "markdown" {
            let content = body["markdown"]["content"].as_str().unwrap_or("");
            if content.is_empty() || content.len() > MAX_CONTENT_BYTES {
                return ERR_INVALID_PARAM;
            }
        }
        self.pushes.push(body.clone());
        0
    }

    fn upload_init(&mut self, body: &Value) -> (i64, Option<Value>) {
        let total_chunks = body["total_chunks"].as_u64().unwrap_or(0) as usize;
        let (Some(kind), Some(filename)) = (body["type"].as_str(), body["filename"].as_str())
        else {
            return (ERR_INVALID_PARAM, None);
        };
        if !(1..=100).contains(&total_chunks) {
            return (ERR_INVALID_PARAM, None);
        }
        let upload_id = format!("upload-{}", self.id());
        self.sessions.insert(
            upload_id.clone(),
            UploadSession {
                kind: kind.to_owned(),
                filename: filename.to_owned(),
                total_chunks,
                total_size: body["total_size"].as_u64(),
                md5: body["md5"].as_str().map(str::to_lowercase),
                chunks: BTreeMap::new(),
            },
        );
        (0, Some(json!({"upload_id": upload_id})))
    }

    fn upload_chunk(&mut self, body: &Value) -> i64 {
        let Some(session) = body["upload_id"]
            .as_str()
            .and_then(|id| self.sessions.get_mut(id))
        else {
            return ERR_INVALID_PARAM;
        };
        let Some(index) = body["chunk_index"].as_i64() else {
            return ERR_INVALID_PARAM;
        };
        let Some(Ok(bytes)) = body["base64_data"]
            .as_str()
            .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
        else {
            return ERR_INVALID_PARAM;
        };
        if bytes.len() > 512 * 1024 || !(0..=session.total_chunks as i64).contains(&index) {
            return ERR_INVALID_PARAM;
        }
        // A repeated index is ignored, as WeCom documents.
        session.chunks.entry(index).or_insert(bytes);
        0
    }

    fn upload_finish(&mut self, body: &Value) -> (i64, Option<Value>) {
        let Some(id) = body["upload_id"].as_str() else {
            return (ERR_INVALID_PARAM, None);
        };
        let Some(session) = self.sessions.get(id) else {
            return (ERR_INVALID_PARAM, None);
        };
        let n = session.total_chunks as i64;
        let indexes: Vec<i64> = session.chunks.keys().copied().collect();
        // Either base works, as long as one is complete.
        let complete =
            indexes == (0..n).collect::<Vec<_>>() || indexes == (1..=n).collect::<Vec<_>>();
        if !complete {
            return (ERR_INVALID_PARAM, None);
        }
        let bytes: Vec<u8> = session.chunks.values().flatten().copied().collect();
        if session
            .total_size
            .is_some_and(|size| size != bytes.len() as u64)
        {
            return (ERR_INVALID_PARAM, None);
        }
        if let Some(md5) = &session.md5 {
            if *md5 != format!("{:x}", md5::Md5::digest(&bytes)) {
                return (ERR_INVALID_PARAM, None);
            }
        }
        let session = self.sessions.remove(id).unwrap();
        let media_id = format!("aibot-media-{}", self.id());
        self.uploads.push(Uploaded {
            kind: session.kind.clone(),
            filename: session.filename,
            bytes,
            media_id: media_id.clone(),
        });
        (
            0,
            Some(json!({"type": session.kind, "media_id": media_id,
                "created_at": super::now_secs().to_string()})),
        )
    }
}

/// A stand-in for a URL-mode callback's `response_url`: its address, and each JSON body posted
/// to it (answered `errcode: 0`).
pub async fn response_url() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let router = axum::Router::new().route(
        "/response",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                axum::Json(json!({"errcode": 0, "errmsg": "ok"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/response"), rx)
}
