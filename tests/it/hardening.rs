//! Faults found under test, each pinned through the public interface: a wrong secret is not
//! retried, a panicking agent fails its job alone, idle recipients leave no state, a lost answer is
//! resent with WeCom's duplicate check, error answers have one shape.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::{json, Value};
use wecom_gateway::agent::{Agent, AgentError, Turn};
use wecom_gateway::app::Apps;
use wecom_gateway::conversation::Push;
use wecom_gateway::dispatch::Dispatcher;
use wecom_gateway::message::MessageKind;
use wecom_gateway::outbound::{Outbound, Tracked};
use wecom_gateway::ratelimit::Limit;
use wecom_gateway::store::{MemoryStore, Room, SqliteStore};
use wecom_gateway::wecom::{AppMessage, Recipients, WecomClient};

const TOKEN: &str = "api-token-for-tests";

fn with_api(mut cfg: wecom_gateway::config::Config) -> wecom_gateway::config::Config {
    cfg.api_tokens = vec![SecretString::from(TOKEN).into()];
    cfg
}

async fn api(app: &TestApp, method: reqwest::Method, path: &str, body: &str) -> (u16, Value) {
    let resp = app
        .http
        .request(method, app.url(&format!("/api/v1{path}")))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("a JSON body"))
}

/// Poll the delivery's status until it is no longer queued; fail after `WAIT`.
async fn settled(app: &TestApp, id: i64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, status) = api(app, reqwest::Method::GET, &format!("/deliveries/{id}"), "").await;
        if status["state"] != "queued" {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery {id} never settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_wrong_corp_secret_fails_at_once_and_is_not_retried() {
    let fake = FakeWecom::start().await;
    let mut app_spec = APP_A;
    app_spec.secret = "wrong-secret";
    let mut cfg = with_api(config(&[app_spec], &fake.base_url()));
    cfg.retry.max_attempts = 6;
    let app = TestApp::spawn(cfg).await;
    let (status, body) = api(
        &app,
        reqwest::Method::POST,
        "/send",
        r#"{"touser": "zhangsan", "text": "hello"}"#,
    )
    .await;
    assert_eq!(status, 202);
    let failed = settled(&app, body["ids"][0].as_i64().unwrap()).await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(
        failed["attempts"], 1,
        "a wrong secret does not heal: {failed}"
    );
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("40001") && error.contains("corp_secret is wrong"),
        "{error}"
    );
    assert_eq!(fake.gettoken_calls(), 1);
    app.stop().await;
}

/// Panics on "panic"; echoes anything else.
struct Panicky;

#[async_trait]
impl Agent for Panicky {
    fn name(&self) -> &str {
        "panicky"
    }
    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
        match &turn.message.kind {
            MessageKind::Text { content } if content == "panic" => panic!("agent exploded"),
            MessageKind::Text { content } => Ok(vec![AppMessage::text(content)]),
            _ => Ok(vec![]),
        }
    }
}

#[tokio::test]
async fn a_panicking_agent_fails_its_job_alone_and_frees_the_users_lane() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&[APP_A], &fake.base_url());
    // One worker: if a panic took it down, nothing after would be served.
    cfg.workers = 1;
    cfg.data_dir = dir.path().to_path_buf();
    let app = TestApp::spawn_with_agent(cfg, Arc::new(Panicky)).await;
    app.send_text(&APP_A, "lisi", "panic", 1).await;
    app.send_text(&APP_A, "lisi", "after the panic", 2).await;
    app.send_text(&APP_A, "wangwu", "someone else", 3).await;
    let sends = fake.wait_for_sends(2).await;
    // Both served after the panic; which first is up to the one worker (lisi's lane is busy
    // until the panicked job is recorded, so wangwu may go first).
    let mut got: Vec<(&str, &str)> = sends.iter().map(|s| (s.touser(), s.content())).collect();
    got.sort_unstable();
    assert_eq!(
        got,
        vec![("lisi", "after the panic"), ("wangwu", "someone else")]
    );
    app.stop().await;
    let store = SqliteStore::open(dir.path(), 16, Room::default()).unwrap();
    let failures = store.failures().await.unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].1.contains("agent exploded"), "{failures:?}");
}

#[tokio::test]
async fn ten_thousand_distinct_members_leave_no_state_behind() {
    let fake = FakeWecom::start().await;
    let window = Duration::from_millis(200);
    let outbound = Arc::new(Outbound::new(
        WecomClient::new(&fake.base_url(), Duration::from_secs(10)).unwrap(),
        Default::default(),
        vec![Limit { count: 30, window }],
        vec![Limit { count: 20, window }],
    ));
    let apps = Apps::new(&[APP_A.app_config()], None).unwrap();
    let store = Arc::new(MemoryStore::new(16, Duration::from_secs(1)));
    let dispatcher = Dispatcher::new(outbound.clone(), store, apps, Default::default());
    let pushes: Vec<Push> = (0..10_000)
        .map(|n| Push::App {
            app: APP_A.name.into(),
            to: Recipients::Member(format!("member{n}")),
            message: AppMessage::Text {
                content: format!("hello {n}"),
            },
        })
        .collect();
    dispatcher.submit(pushes).await.unwrap();
    // Ten thousand real HTTP requests: more than the usual wait is meant for on a debug build.
    let sends = fake
        .wait_for_many_sends(10_000, Duration::from_secs(120))
        .await;
    assert_eq!(sends.len(), 10_000);
    // Once every queue is empty and every window has passed, nothing is kept for anyone.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (targets, tracked) = (dispatcher.active_targets(), outbound.tracked());
        if targets == 0 && tracked == Tracked::default() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "state left behind: {targets} queues, {tracked:?}"
        );
        tokio::time::sleep(window / 4).await;
    }
}

#[tokio::test]
async fn a_send_whose_answer_was_lost_is_retried_with_the_duplicate_check_and_arrives_once() {
    let fake = FakeWecom::start().await;
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.http_timeout_secs = 1;
    let app = TestApp::spawn(cfg).await;
    // WeCom delivers the reply, but its answer never reaches the gateway.
    fake.lose_answers(1);
    app.send_text(&APP_A, "lisi", "only once, please", 1).await;
    fake.wait_for_duplicates_dropped(1).await;
    let sends = fake.sends();
    assert_eq!(sends.len(), 1, "delivered once");
    assert!(
        sends[0].body.get("enable_duplicate_check").is_none(),
        "first try unflagged"
    );
    app.stop().await;
}

#[tokio::test]
async fn api_errors_are_json_whoever_makes_them() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(with_api(config(&[APP_A], &fake.base_url()))).await;
    // 413 from the body-size layer. Sent whole before the answer is read, as a plain client does
    // (the server answers without reading the body, and may reset a client still writing).
    let big = json!({"touser": "a", "text": "x".repeat(70 * 1024)}).to_string();
    let (status, body) = raw_post(&app, "/api/v1/send", &big).await;
    assert_eq!(status, 413);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("max_body_bytes"),
        "{body}"
    );
    // 404 for an unknown endpoint, 405 for a wrong method, 400 for bad JSON.
    let (status, body) = api(&app, reqwest::Method::POST, "/nowhere", "{}").await;
    assert_eq!((status, body["error"].is_string()), (404, true));
    let (status, body) = api(&app, reqwest::Method::GET, "/send", "").await;
    assert_eq!((status, body["error"].is_string()), (405, true));
    let (status, body) = api(&app, reqwest::Method::POST, "/send", "{").await;
    assert_eq!((status, body["error"].is_string()), (400, true));
    // 401 without a token, with its challenge.
    let resp = app
        .http
        .post(app.url("/api/v1/send"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("bearer token"));
    app.stop().await;
}

/// POST over a bare TCP connection: write the whole request, then read the whole answer.
async fn raw_post(app: &TestApp, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
