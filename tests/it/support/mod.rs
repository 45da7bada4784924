//! Shared test helpers: a fake WeCom API on 127.0.0.1:0 and the gateway started in-process on
//! 127.0.0.1:0, plus builders for encrypted callbacks.
#![allow(dead_code)] // each test binary uses a different subset

pub mod aibot;
pub mod model;
pub mod postgres;
pub mod process;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};
use wecom_gateway::agent::{Agent, AgentError, Turn};
use wecom_gateway::config::{AgentConfig, Allowlist, AppConfig, Config, StoreKind};
use wecom_gateway::conversation::Channel;
use wecom_gateway::crypto::MsgCrypt;
use wecom_gateway::message::InboundMessage;
use wecom_gateway::store::NewJob;
use wecom_gateway::wecom::AppMessage;
use wecom_gateway::Application;

/// How long a test waits for something that should happen promptly before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- fake WeCom API

/// One message/send call as the fake received it.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The access token for message/send, the webhook key for robots.
    pub access_token: String,
    pub body: Value,
    pub at: std::time::Instant,
}

impl Sent {
    pub fn touser(&self) -> &str {
        self.body["touser"].as_str().unwrap_or("")
    }
    pub fn content(&self) -> &str {
        self.body["text"]["content"].as_str().unwrap_or("")
    }
    pub fn agentid(&self) -> i64 {
        self.body["agentid"].as_i64().unwrap_or(-1)
    }
}

/// One media/upload call as the fake received it.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// The `type` query parameter.
    pub kind: String,
    pub file_name: String,
    pub content_type: String,
    pub bytes: Vec<u8>,
    /// The media_id the fake answered with.
    pub media_id: String,
}

/// A file a member sent: content type, file name, bytes.
type MemberFile = (String, Option<String>, Vec<u8>);

struct FakeState {
    gettoken_calls: AtomicUsize,
    uploads: Mutex<Vec<Uploaded>>,
    /// update_template_card bodies.
    card_updates: Mutex<Vec<Value>>,
    issued: Mutex<HashSet<String>>,
    sends: Mutex<Vec<Sent>>,
    robot: Mutex<Vec<Sent>>,
    /// message/send and webhook/send requests received, answered or not.
    calls: AtomicUsize,
    /// Answers to use for the next message/send calls, in order, before answering ok.
    scripted: Mutex<VecDeque<Value>>,
    /// Once this many sends were accepted, further sends hang forever and are never recorded.
    hang_from: AtomicUsize,
    /// With `hang_from`: the hanging sends are delivered first, and only their answer is lost.
    deliver_then_hang: std::sync::atomic::AtomicBool,
    /// Answers lost after delivery for the next this-many sends (the request is held until released).
    lose_answers: AtomicUsize,
    hung: AtomicUsize,
    /// Flagged resends that WeCom's duplicate check dropped.
    duplicates_dropped: AtomicUsize,
    /// Files members "sent", by media_id: (content type, file name, bytes), for media/get.
    media: Mutex<HashMap<String, MemberFile>>,
    /// media/get requests received, by media_id.
    media_gets: Mutex<Vec<String>>,
    /// The next this-many media/get calls answer HTTP 502 (a proxy in trouble).
    media_get_failures: AtomicUsize,
    /// msgids withdrawn with message/recall.
    recalls: Mutex<Vec<String>>,
    changed: Notify,
}

impl Default for FakeState {
    fn default() -> Self {
        FakeState {
            gettoken_calls: AtomicUsize::new(0),
            uploads: Mutex::default(),
            card_updates: Mutex::default(),
            issued: Mutex::default(),
            sends: Mutex::default(),
            robot: Mutex::default(),
            calls: AtomicUsize::new(0),
            scripted: Mutex::default(),
            hang_from: AtomicUsize::new(usize::MAX),
            deliver_then_hang: std::sync::atomic::AtomicBool::new(false),
            lose_answers: AtomicUsize::new(0),
            hung: AtomicUsize::new(0),
            duplicates_dropped: AtomicUsize::new(0),
            media: Mutex::default(),
            media_gets: Mutex::default(),
            recalls: Mutex::default(),
            media_get_failures: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }
}

/// A WeCom API stand-in speaking gettoken and message/send JSON. Tokens are `tok-<secret>-<n>`.
pub struct FakeWecom {
    pub addr: SocketAddr,
    state: Arc<FakeState>,
    _shutdown: oneshot::Sender<()>,
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    corpid: String,
    corpsecret: String,
}

#[derive(serde::Deserialize)]
struct SendQuery {
    access_token: Option<String>,
}

#[derive(serde::Deserialize)]
struct WebhookQuery {
    key: Option<String>,
}

/// A scripted answer: a JSON body, or `{"http": 502}` for a bare HTTP error status.
fn scripted(s: &FakeState) -> Option<axum::response::Response> {
    use axum::response::IntoResponse;
    let answer = s.scripted.lock().unwrap().pop_front()?;
    s.changed.notify_waiters();
    Some(match answer.get("http").and_then(Value::as_u64) {
        Some(code) => axum::http::StatusCode::from_u16(code as u16)
            .unwrap()
            .into_response(),
        None => Json(answer).into_response(),
    })
}

async fn webhook_send(
    State(s): State<Arc<FakeState>>,
    Query(q): Query<WebhookQuery>,
    Json(body): Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    s.calls.fetch_add(1, Ordering::SeqCst);
    let key = q.key.unwrap_or_default();
    if !key.starts_with("robot-key-") {
        return Json(json!({"errcode": 93000, "errmsg": "invalid webhook url"})).into_response();
    }
    if let Some(answer) = scripted(&s) {
        return answer;
    }
    s.robot.lock().unwrap().push(Sent {
        access_token: key,
        body,
        at: std::time::Instant::now(),
    });
    s.changed.notify_waiters();
    Json(json!({"errcode": 0, "errmsg": "ok"})).into_response()
}

async fn gettoken(State(s): State<Arc<FakeState>>, Query(q): Query<TokenQuery>) -> Json<Value> {
    let n = s.gettoken_calls.fetch_add(1, Ordering::SeqCst) + 1;
    if q.corpid.is_empty() || q.corpsecret.starts_with("wrong") {
        return Json(json!({"errcode": 40001, "errmsg": "invalid credential"}));
    }
    let token = format!("tok-{}-{n}", q.corpsecret);
    s.issued.lock().unwrap().insert(token.clone());
    s.changed.notify_waiters();
    Json(json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200}))
}

async fn message_send(
    State(s): State<Arc<FakeState>>,
    Query(q): Query<SendQuery>,
    Json(body): Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    s.calls.fetch_add(1, Ordering::SeqCst);
    let token = q.access_token.unwrap_or_default();
    if !s.issued.lock().unwrap().contains(&token) {
        return Json(json!({"errcode": 40014, "errmsg": "invalid access_token"})).into_response();
    }
    if let Some(answer) = scripted(&s) {
        return answer;
    }
    let deliver_then_hang = s.deliver_then_hang.load(Ordering::SeqCst);
    if s.sends.lock().unwrap().len() >= s.hang_from.load(Ordering::SeqCst) {
        if deliver_then_hang {
            // Delivered, and the answer never comes back (the process dies waiting for it).
            s.sends.lock().unwrap().push(Sent {
                access_token: token.clone(),
                body: body.clone(),
                at: std::time::Instant::now(),
            });
        }
        // Otherwise like a request that never reached WeCom: no answer, nothing delivered, ever.
        s.hung.fetch_add(1, Ordering::SeqCst);
        s.changed.notify_waiters();
        std::future::pending::<()>().await;
    }
    let lose_answer = s
        .lose_answers
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    // WeCom's duplicate check: a send flagged with enable_duplicate_check is answered ok and not
    // delivered if an identical message reached the same member within the interval. (Whether
    // WeCom compares with an unflagged original is undocumented; this fake assumes it does.)
    let dropped = {
        let mut sends = s.sends.lock().unwrap();
        let duplicate = body["enable_duplicate_check"] == json!(1) && {
            let interval = body["duplicate_check_interval"].as_u64().unwrap_or(1800);
            let content = message_identity(&body);
            sends.iter().any(|earlier| {
                earlier.at.elapsed() < Duration::from_secs(interval)
                    && message_identity(&earlier.body) == content
            })
        };
        if !duplicate {
            sends.push(Sent {
                access_token: token,
                body,
                at: std::time::Instant::now(),
            });
        }
        duplicate
    };
    if dropped {
        s.duplicates_dropped.fetch_add(1, Ordering::SeqCst);
    }
    s.changed.notify_waiters();
    if dropped {
        return Json(json!({"errcode": 0, "errmsg": "ok", "msgid": "m-dup"})).into_response();
    }
    if lose_answer {
        // Delivered, but the answer is lost on the way back: the caller times out.
        std::future::pending::<()>().await;
    }
    // Each delivered message has its own msgid, as WeCom's do (message/recall takes one).
    let msgid = format!("m{}", s.sends.lock().unwrap().len());
    Json(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid})).into_response()
}

#[derive(serde::Deserialize)]
struct UploadQuery {
    access_token: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl FakeState {
    /// WeCom's answer to a call without a token it issued.
    fn check_token(&self, token: Option<String>) -> Result<(), Json<Value>> {
        match self
            .issued
            .lock()
            .unwrap()
            .contains(&token.unwrap_or_default())
        {
            true => Ok(()),
            false => Err(Json(
                json!({"errcode": 40014, "errmsg": "invalid access_token"}),
            )),
        }
    }
}

#[derive(serde::Deserialize)]
struct MediaGetQuery {
    access_token: Option<String>,
    media_id: Option<String>,
}

/// media/get: the file with its type and name, or WeCom's JSON error (40007 for an unknown id).
async fn media_get(
    State(s): State<Arc<FakeState>>,
    Query(q): Query<MediaGetQuery>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Err(refused) = s.check_token(q.access_token) {
        return refused.into_response();
    }
    let id = q.media_id.unwrap_or_default();
    s.media_gets.lock().unwrap().push(id.clone());
    let failing = s
        .media_get_failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    if failing.is_ok() {
        return axum::http::StatusCode::BAD_GATEWAY.into_response();
    }
    let Some((content_type, name, bytes)) = s.media.lock().unwrap().get(&id).cloned() else {
        return Json(json!({"errcode": 40007, "errmsg": "invalid media_id"})).into_response();
    };
    let name = name.unwrap_or_else(|| format!("{id}.bin"));
    let name = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC);
    let disposition = format!("attachment; filename=\"{name}\"");
    if id.starts_with("stream-") {
        // Chunked, with no Content-Length: the size is known only once it has all arrived.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            bytes.chunks(1024).map(|c| Ok(c.to_vec())).collect();
        let body = axum::body::Body::from_stream(futures::stream::iter(chunks));
        return (
            [
                (axum::http::header::CONTENT_TYPE, content_type),
                (axum::http::header::CONTENT_DISPOSITION, disposition),
            ],
            body,
        )
            .into_response();
    }
    (
        [
            (axum::http::header::CONTENT_TYPE, content_type),
            (axum::http::header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response()
}

async fn message_recall(
    State(s): State<Arc<FakeState>>,
    Query(q): Query<SendQuery>,
    Json(body): Json<Value>,
) -> Json<Value> {
    if let Err(refused) = s.check_token(q.access_token) {
        return refused;
    }
    let msgid = body["msgid"].as_str().unwrap_or_default().to_owned();
    s.recalls.lock().unwrap().push(msgid);
    s.changed.notify_waiters();
    Json(json!({"errcode": 0, "errmsg": "ok"}))
}

async fn media_upload(
    State(s): State<Arc<FakeState>>,
    Query(q): Query<UploadQuery>,
    form: axum::extract::Multipart,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Err(refused) = s.check_token(q.access_token) {
        return refused.into_response();
    }
    if let Some(answer) = scripted(&s) {
        return answer;
    }
    record_upload(&s, q.kind.unwrap_or_default(), form)
        .await
        .into_response()
}

#[derive(serde::Deserialize)]
struct WebhookUploadQuery {
    key: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// A robot's upload_media: authenticated by its key, like webhook/send.
async fn webhook_upload(
    State(s): State<Arc<FakeState>>,
    Query(q): Query<WebhookUploadQuery>,
    form: axum::extract::Multipart,
) -> Json<Value> {
    if !q.key.unwrap_or_default().starts_with("robot-key-") {
        return Json(json!({"errcode": 93000, "errmsg": "invalid webhook url"}));
    }
    record_upload(&s, format!("robot-{}", q.kind.unwrap_or_default()), form).await
}

/// Keep the file of the multipart field `media` and answer with a new media_id.
async fn record_upload(
    s: &FakeState,
    kind: String,
    mut form: axum::extract::Multipart,
) -> Json<Value> {
    while let Ok(Some(field)) = form.next_field().await {
        if field.name() != Some("media") {
            continue;
        }
        let file_name = field.file_name().unwrap_or("").to_owned();
        let content_type = field.content_type().unwrap_or("").to_owned();
        let Ok(bytes) = field.bytes().await else {
            break;
        };
        let mut uploads = s.uploads.lock().unwrap();
        let media_id = format!("MEDIA-{}", uploads.len() + 1);
        uploads.push(Uploaded {
            kind: kind.clone(),
            file_name,
            content_type,
            bytes: bytes.to_vec(),
            media_id: media_id.clone(),
        });
        s.changed.notify_waiters();
        return Json(
            json!({"errcode": 0, "errmsg": "ok", "type": kind, "media_id": media_id, "created_at": "1380000000"}),
        );
    }
    Json(json!({"errcode": 41001, "errmsg": "media field missing"}))
}

async fn update_template_card(
    State(s): State<Arc<FakeState>>,
    Query(q): Query<SendQuery>,
    Json(body): Json<Value>,
) -> Json<Value> {
    if let Err(refused) = s.check_token(q.access_token) {
        return refused;
    }
    s.card_updates.lock().unwrap().push(body);
    s.changed.notify_waiters();
    Json(json!({"errcode": 0, "errmsg": "ok", "invaliduser": []}))
}

/// What makes two message/send requests "the same message" for the duplicate check.
fn message_identity(body: &Value) -> Value {
    let mut body = body.clone();
    if let Some(map) = body.as_object_mut() {
        map.remove("enable_duplicate_check");
        map.remove("duplicate_check_interval");
    }
    body
}

impl FakeWecom {
    pub async fn start() -> Self {
        let state = Arc::new(FakeState::default());
        let router = Router::new()
            .route("/cgi-bin/gettoken", get(gettoken))
            .route("/cgi-bin/message/send", post(message_send))
            .route("/cgi-bin/webhook/send", post(webhook_send))
            .route("/cgi-bin/media/upload", post(media_upload))
            .route("/cgi-bin/media/get", get(media_get))
            .route("/cgi-bin/appchat/send", post(message_send))
            .route("/cgi-bin/message/recall", post(message_recall))
            .route("/cgi-bin/webhook/upload_media", post(webhook_upload))
            .route(
                "/cgi-bin/message/update_template_card",
                post(update_template_card),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        FakeWecom {
            addr,
            state,
            _shutdown: tx,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn wait_for_card_updates(&self, n: usize) -> Vec<Value> {
        let state = self.state.clone();
        let done = move || state.card_updates.lock().unwrap().len() >= n;
        self.wait_until(done, "card updates").await;
        self.state.card_updates.lock().unwrap().clone()
    }

    /// A file a member sent, for media/get to serve under `media_id`.
    pub fn add_media(&self, media_id: &str, content_type: &str, name: Option<&str>, bytes: &[u8]) {
        let file = (
            content_type.to_owned(),
            name.map(str::to_owned),
            bytes.to_vec(),
        );
        self.state
            .media
            .lock()
            .unwrap()
            .insert(media_id.to_owned(), file);
    }

    /// The msgids withdrawn with message/recall, once there are `n`.
    pub async fn wait_for_recalls(&self, n: usize) -> Vec<String> {
        let state = self.state.clone();
        let done = move || state.recalls.lock().unwrap().len() >= n;
        self.wait_until(done, "recalls").await;
        self.state.recalls.lock().unwrap().clone()
    }

    /// The msgids withdrawn with message/recall so far.
    pub fn recalls(&self) -> Vec<String> {
        self.state.recalls.lock().unwrap().clone()
    }

    /// The next `n` media/get calls answer HTTP 502.
    pub fn fail_media_gets(&self, n: usize) {
        self.state.media_get_failures.store(n, Ordering::SeqCst);
    }

    /// The media_ids media/get was asked for, in order.
    pub fn media_gets(&self) -> Vec<String> {
        self.state.media_gets.lock().unwrap().clone()
    }

    pub fn uploads(&self) -> Vec<Uploaded> {
        self.state.uploads.lock().unwrap().clone()
    }

    pub fn gettoken_calls(&self) -> usize {
        self.state.gettoken_calls.load(Ordering::SeqCst)
    }

    pub fn sends(&self) -> Vec<Sent> {
        self.state.sends.lock().unwrap().clone()
    }

    /// Messages the robots accepted.
    pub fn robot_messages(&self) -> Vec<Sent> {
        self.state.robot.lock().unwrap().clone()
    }

    /// Flagged resends dropped by the modelled duplicate check.
    pub fn duplicates_dropped(&self) -> usize {
        self.state.duplicates_dropped.load(Ordering::SeqCst)
    }

    /// message/send and webhook/send requests received, whatever they were answered.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Wait until at least `n` robot messages were accepted.
    pub async fn wait_for_robot(&self, n: usize) -> Vec<Sent> {
        self.wait_until(
            || self.robot_messages().len() >= n,
            &format!("{n} robot messages"),
        )
        .await;
        self.robot_messages()
    }

    /// Wait until the modelled duplicate check has dropped at least `n` resends.
    pub async fn wait_for_duplicates_dropped(&self, n: usize) {
        self.wait_until(
            || self.duplicates_dropped() >= n,
            &format!("{n} duplicates dropped"),
        )
        .await;
    }

    /// Wait until every scripted answer has been used.
    pub async fn wait_for_script_used(&self) {
        self.wait_until(
            || self.state.scripted.lock().unwrap().is_empty(),
            "the scripted answers to be used",
        )
        .await;
    }

    /// Make every token issued so far invalid (as WeCom may do early).
    pub fn revoke_tokens(&self) {
        self.state.issued.lock().unwrap().clear();
    }

    /// Answer the next message/send calls with these bodies (then ok again).
    pub fn script(&self, answers: impl IntoIterator<Item = Value>) {
        self.state.scripted.lock().unwrap().extend(answers);
    }

    /// From now on, once `n` sends in all were accepted, further sends hang and are never recorded.
    pub fn hang_from(&self, n: usize) {
        self.state.hang_from.store(n, Ordering::SeqCst);
    }

    /// Like `hang_from`, but the hanging sends are delivered: only WeCom's answer is lost.
    pub fn deliver_then_hang_from(&self, n: usize) {
        self.state.deliver_then_hang.store(true, Ordering::SeqCst);
        self.hang_from(n);
    }

    /// Deliver the next `n` sends but never answer them (the answer is lost on the network).
    pub fn lose_answers(&self, n: usize) {
        self.state.lose_answers.store(n, Ordering::SeqCst);
    }

    /// Accept sends normally again (requests already hanging stay hung).
    pub fn release(&self) {
        self.state.hang_from.store(usize::MAX, Ordering::SeqCst);
    }

    /// Wait until at least `n` requests are hanging.
    pub async fn wait_for_hung(&self, n: usize) {
        self.wait_until(
            || self.state.hung.load(Ordering::SeqCst) >= n,
            &format!("{n} hung sends"),
        )
        .await;
    }

    /// Wait until `done()` holds, re-checking at every change of the fake; fail after `WAIT`.
    async fn wait_until(&self, done: impl Fn() -> bool, what: &str) {
        self.wait_until_within(done, what, WAIT).await
    }

    async fn wait_until_within(&self, done: impl Fn() -> bool, what: &str, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.state.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let sends = self.sends();
                let last: Vec<&Sent> = sends.iter().rev().take(20).collect();
                panic!(
                    "timed out waiting for {what}; {} sends so far, the last: {last:#?}",
                    sends.len()
                );
            }
        }
    }

    /// Wait until at least `n` messages were accepted, for a load larger than the usual `WAIT` is
    /// meant for.
    pub async fn wait_for_many_sends(&self, n: usize, wait: Duration) -> Vec<Sent> {
        self.wait_until_within(|| self.sends().len() >= n, &format!("{n} sends"), wait)
            .await;
        self.sends()
    }

    /// Wait until at least `n` messages were accepted; fail the test after `WAIT`.
    pub async fn wait_for_sends(&self, n: usize) -> Vec<Sent> {
        self.wait_until(|| self.sends().len() >= n, &format!("{n} sends"))
            .await;
        self.sends()
    }
}

// ---------------------------------------------------------------- apps and callbacks

/// A test app's credentials.
#[derive(Clone)]
pub struct AppSpec {
    pub name: &'static str,
    pub corp_id: &'static str,
    pub secret: &'static str,
    pub agent_id: u64,
    pub token: &'static str,
    pub aes_key: &'static str,
}

pub const APP_A: AppSpec = AppSpec {
    name: "alpha",
    corp_id: "ww1436e0e65a779aee",
    secret: "alpha-secret-value",
    agent_id: 1000002,
    token: "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo",
    aes_key: "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt",
};

pub const APP_B: AppSpec = AppSpec {
    name: "beta",
    corp_id: "wx5823bf96d3bd56c7",
    secret: "beta-secret-value",
    agent_id: 218,
    token: "QDG6eK",
    aes_key: "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
};

impl AppSpec {
    pub fn app_config(&self) -> AppConfig {
        AppConfig {
            name: self.name.into(),
            corp_id: self.corp_id.into(),
            corp_secret: self.secret.into(),
            agent_id: self.agent_id,
            token: self.token.into(),
            encoding_aes_key: self.aes_key.into(),
            previous_token: None,
            previous_encoding_aes_key: None,
            agent: None,
        }
    }

    pub fn crypt(&self) -> MsgCrypt {
        MsgCrypt::new(self.token, self.aes_key, self.corp_id).unwrap()
    }

    /// Encrypt `xml` into a POST callback: (query string, body).
    pub fn callback(&self, xml: &str) -> (String, String) {
        let nonce = format!("{}", rand_u32());
        let e = self
            .crypt()
            .encrypt_msg(xml, &now_secs().to_string(), &nonce, rand_bytes());
        let query = format!(
            "msg_signature={}&timestamp={}&nonce={}",
            e.msg_signature, e.timestamp, e.nonce
        );
        (
            query,
            e.to_callback_xml(self.corp_id, &self.agent_id.to_string()),
        )
    }

    pub fn text_xml(&self, user: &str, content: &str, msg_id: u64) -> String {
        format!(
            "<xml><ToUserName><![CDATA[{}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId><AgentID>{}</AgentID></xml>",
            self.corp_id, self.agent_id
        )
    }
}

impl AppSpec {
    /// A member's image, voice, video or file message (`kind`), carrying `media_id`.
    pub fn media_xml(&self, user: &str, kind: &str, media_id: &str, msg_id: u64) -> String {
        let extra = match kind {
            "image" => "<PicUrl><![CDATA[https://wework.qpic.cn/x]]></PicUrl>".to_owned(),
            "voice" => "<Format><![CDATA[amr]]></Format>".to_owned(),
            "video" => "<ThumbMediaId><![CDATA[thumb]]></ThumbMediaId>".to_owned(),
            _ => "<FileName><![CDATA[callback-name.bin]]></FileName>".to_owned(),
        };
        format!(
            "<xml><ToUserName><![CDATA[{}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[{kind}]]></MsgType><MediaId><![CDATA[{media_id}]]></MediaId>{extra}<MsgId>{msg_id}</MsgId><AgentID>{}</AgentID></xml>",
            self.corp_id, self.agent_id
        )
    }
}

/// The clock as callbacks carry it: WeCom signs the time it sends.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rand_u32() -> u32 {
    rand::random()
}

fn rand_bytes() -> [u8; 16] {
    rand::random()
}

pub fn config(apps: &[AppSpec], api_base_url: &str) -> Config {
    Config {
        host: "127.0.0.1".parse().unwrap(),
        port: 0,
        path: "/wecom/callback".into(),
        apps: apps.iter().map(AppSpec::app_config).collect(),
        allowlist: Allowlist {
            allow_all: true,
            users: vec![],
        },
        api_base_url: api_base_url.into(),
        workers: 4,
        queue_capacity: 1024,
        max_body_bytes: 64 * 1024,
        shutdown_grace_secs: 5,
        metrics_listen: None,
        log_format: Default::default(),
        replay_window: Duration::from_secs(300),
        http_timeout_secs: 5,
        store: StoreKind::Sqlite,
        // Empty: `TestApp::spawn` gives the app a temporary directory of its own.
        data_dir: std::path::PathBuf::new(),
        retention_days: 7,
        max_store_mb: 0,
        min_free_mb: 64,
        lease_secs: 30,
        agent: AgentConfig::default(),
        bots: vec![],
        api_tokens: vec![],
        member_limits: wecom_gateway::outbound::default_member_limits(),
        bot_limits: wecom_gateway::outbound::default_bot_limits(),
        // Fast retries: tests script failures and should not wait seconds for them.
        retry: wecom_gateway::retry::RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        },
        media: Default::default(),
        aibots: vec![],
        aibot: Default::default(),
    }
}

// ---------------------------------------------------------------- the gateway under test

/// An empty `data_dir` gets a fresh temporary directory, owned by the `TestApp` (every store
/// keeps received media there).
fn with_data_dir(mut config: Config) -> (Config, Option<tempfile::TempDir>) {
    if config.data_dir.as_os_str().is_empty() {
        let dir = tempfile::tempdir().expect("temp dir");
        config.data_dir = dir.path().to_path_buf();
        (config, Some(dir))
    } else {
        (config, None)
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    _data_dir: Option<tempfile::TempDir>,
}

impl TestApp {
    pub async fn spawn(config: Config) -> Self {
        let (config, dir) = with_data_dir(config);
        Self::start(Application::build(config).await.expect("build"), dir).await
    }

    pub async fn spawn_with_agent(config: Config, agent: Arc<dyn Agent>) -> Self {
        let (config, dir) = with_data_dir(config);
        let app = Application::build_with_agent(config, agent)
            .await
            .expect("build");
        Self::start(app, dir).await
    }

    async fn start(app: Application, dir: Option<tempfile::TempDir>) -> Self {
        let addr = app.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            app.run_until(async {
                let _ = rx.await;
            })
            .await
            .expect("run");
        });
        TestApp {
            addr,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            handle: Some(handle),
            _data_dir: dir,
        }
    }

    /// Stop the gateway abruptly, as a crash would: no graceful shutdown, nothing finished.
    pub async fn crash(mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
            let _ = h.await;
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub async fn post_callback(&self, query: &str, body: String) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/wecom/callback?{query}")))
            .body(body)
            .send()
            .await
            .expect("POST callback")
    }

    /// Post a text message from `user` through `app` and assert it was acknowledged.
    pub async fn send_text(&self, app: &AppSpec, user: &str, content: &str, msg_id: u64) {
        let (q, body) = app.callback(&app.text_xml(user, content, msg_id));
        let resp = self.post_callback(&q, body).await;
        assert_eq!(resp.status(), 200, "callback for {user} not acknowledged");
        assert_eq!(
            resp.text().await.unwrap(),
            "",
            "callback answer must be empty"
        );
    }

    /// Stop the gateway gracefully and wait for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(WAIT, h)
                .await
                .expect("graceful stop in time")
                .expect("run task");
        }
    }
}

// ---------------------------------------------------------------- agents

/// Records whom it was asked about and echoes the text (or a description of anything else).
#[derive(Default)]
pub struct Recording(Mutex<Vec<String>>);

impl Recording {
    pub fn seen(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[async_trait]
impl Agent for Recording {
    fn name(&self) -> &str {
        "recording"
    }
    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
        self.0.lock().unwrap().push(turn.user_id.to_owned());
        Ok(vec![AppMessage::text(match &turn.message.kind {
            wecom_gateway::message::MessageKind::Text { content } => content.clone(),
            _ => turn.message.describe(),
        })])
    }
}

/// Waits for a permit per turn before echoing: a stand-in for a slow agent.
pub struct Gated {
    pub gate: Arc<tokio::sync::Semaphore>,
}

#[async_trait]
impl Agent for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
        self.gate
            .acquire()
            .await
            .map_err(|e| AgentError::Failed(e.to_string()))?
            .forget();
        Ok(vec![AppMessage::text(turn.message.describe())])
    }
}

/// A text message from `user` (corp ww1, agent 5) as the store receives it, for store tests.
pub fn job(user: &str, msg_id: u64, app: &str) -> NewJob {
    let xml = format!(
        "<xml><ToUserName>ww1</ToUserName><FromUserName>{user}</FromUserName><CreateTime>1700000000</CreateTime><MsgType>text</MsgType><Content>hi {msg_id}</Content><MsgId>{msg_id}</MsgId><AgentID>5</AgentID></xml>"
    );
    let message = InboundMessage::parse(&xml).unwrap();
    NewJob {
        channel: Channel::App(app.into()),
        user_key: format!("ww1:{user}"),
        dedup_key: message.dedup_key("ww1", 5),
        payload: xml,
    }
}
