//! Agent backends end to end against real local processes: an HTTP agent server, a child process,
//! and a fake OpenAI-compatible server; plus the receipt and failure messages.

use base64::Engine as _;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::model::{self, delta, ModelStub, DONE};
use crate::support::*;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use secrecy::SecretString;
use serde_json::{json, Value};
use wecom_gateway::config::{
    AgentConfig, AgentKind, CommandAgentConfig, Config, HttpAgentConfig, OpenAiConfig,
};

/// Requests a local server received: headers and JSON body, in order.
type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;
type Answer = fn(usize, &Value) -> (StatusCode, Value);

/// A local HTTP server: records each request and answers with `answer(n, body)` (n from 1).
struct Server {
    url: String,
    seen: Seen,
}

async fn serve(path: &str, answer: Answer) -> Server {
    let seen: Seen = Arc::default();
    let state = (seen.clone(), answer);
    let router = Router::new()
        .route(
            path,
            post(
                |State((seen, answer)): State<(Seen, Answer)>,
                 headers: HeaderMap,
                 Json(body): Json<Value>| async move {
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push((headers, body.clone()));
                        seen.len()
                    };
                    let (status, reply) = answer(n, &body);
                    (status, Json(reply))
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Server {
        url: format!("http://{addr}"),
        seen,
    }
}

impl Server {
    fn seen(&self) -> Vec<(HeaderMap, Value)> {
        self.seen.lock().unwrap().clone()
    }
}

fn with_agent(fake: &FakeWecom, kind: AgentKind) -> Config {
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.agent = AgentConfig {
        kind,
        ..AgentConfig::default()
    };
    cfg
}

fn http_agent(url: String) -> AgentKind {
    AgentKind::Http(HttpAgentConfig {
        url,
        timeout: Duration::from_secs(10),
        retries: 0,
        headers: vec![(
            "Authorization".into(),
            SecretString::from("Bearer agent-secret"),
        )],
    })
}

#[tokio::test]
async fn http_agent_gets_the_turn_as_json_and_its_reply_goes_back() {
    let fake = FakeWecom::start().await;
    let agent = serve("/chat", |n, body| match n {
        1 => (
            StatusCode::OK,
            json!({"reply": format!("http says: {}", body["text"].as_str().unwrap_or(""))}),
        ),
        2 => (
            StatusCode::OK,
            json!({"replies": ["first of two", "second of two"]}),
        ),
        // Accepted: the agent would answer later through /api/v1/send.
        3 => (StatusCode::ACCEPTED, json!({})),
        _ => (StatusCode::OK, json!({"reply": "after the 202"})),
    })
    .await;
    let app = TestApp::spawn(with_agent(&fake, http_agent(format!("{}/chat", agent.url)))).await;

    app.send_text(&APP_A, "zhangsan", "你好", 101).await;
    let image = format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>zhangsan</FromUserName><CreateTime>1700000001</CreateTime><MsgType>image</MsgType><PicUrl>https://example.com/p.jpg</PicUrl><MediaId>media-42</MediaId><MsgId>102</MsgId><AgentID>1000002</AgentID></xml>",
        APP_A.corp_id
    );
    let (q, b) = APP_A.callback(&image);
    assert_eq!(app.post_callback(&q, b).await.status(), 200);
    app.send_text(&APP_A, "zhangsan", "later please", 103).await;
    app.send_text(&APP_A, "zhangsan", "marker", 104).await;

    // One user's messages are handled in order, so the last reply comes after the 202 was handled.
    let sends = fake.wait_for_sends(4).await;
    let contents: Vec<&str> = sends.iter().map(|s| s.content()).collect();
    assert_eq!(
        contents,
        vec![
            "http says: 你好",
            "first of two",
            "second of two",
            "after the 202"
        ]
    );
    app.stop().await;
    assert_eq!(fake.sends().len(), 4, "the 202 produced no message");

    let seen = agent.seen();
    assert_eq!(seen.len(), 4);
    let (headers, first) = &seen[0];
    assert_eq!(headers["authorization"], "Bearer agent-secret");
    assert_eq!(first["app"], "alpha");
    assert_eq!(
        first["channel"], "app",
        "the kind of channel the member wrote through"
    );
    assert_eq!(first["corp_id"], APP_A.corp_id);
    assert_eq!(first["user_id"], "zhangsan");
    assert_eq!(first["msg_type"], "text");
    assert_eq!(first["text"], "你好");
    assert_eq!(first["message_id"], "101");
    assert!(first["chat_id"].is_null());
    assert_eq!(first["raw"]["Content"], "你好");
    let (_, image) = &seen[1];
    assert_eq!(
        (
            image["msg_type"].as_str(),
            image["media_id"].as_str(),
            image["pic_url"].as_str()
        ),
        (
            Some("image"),
            Some("media-42"),
            Some("https://example.com/p.jpg")
        )
    );
}

#[tokio::test]
async fn a_failing_agent_gives_the_user_the_failure_message() {
    let fake = FakeWecom::start().await;
    let agent = serve("/chat", |_, _| {
        (StatusCode::INTERNAL_SERVER_ERROR, json!({"detail": "boom"}))
    })
    .await;
    let mut cfg = with_agent(&fake, http_agent(format!("{}/chat", agent.url)));
    cfg.agent.failure_message = "出错了 (custom)".into();
    let app = TestApp::spawn(cfg).await;
    app.send_text(&APP_A, "zhangsan", "hello?", 1).await;
    let sends = fake.wait_for_sends(1).await;
    assert_eq!(sends[0].content(), "出错了 (custom)");
    app.stop().await;
    assert_eq!(fake.sends().len(), 1, "exactly one failure message");
}

fn script(dir: &std::path::Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/usr/bin/env python3\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn command_agent(program: String, timeout: Duration) -> AgentKind {
    AgentKind::Command(CommandAgentConfig {
        program,
        args: vec!["--greeting".into(), "hi, there".into()],
        timeout,
        env: vec![("AGENT_MOOD".into(), "cheerful".into())],
        working_dir: None,
    })
}

#[tokio::test]
async fn command_agent_runs_a_real_program_per_message() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let program = script(
        dir.path(),
        "agent.py",
        r#"import json, os, sys
turn = json.load(sys.stdin)
leaked = "CARGO_MANIFEST_DIR" in os.environ
print(f"{sys.argv[2]} {turn['user_id']}: you said {turn['text']} ({os.environ.get('AGENT_MOOD')}, leaked={leaked})")
print("a diagnostic line", file=sys.stderr)
"#,
    );
    let app = TestApp::spawn(with_agent(
        &fake,
        command_agent(program, Duration::from_secs(20)),
    ))
    .await;
    // Shell metacharacters in the text stay text: no shell is involved.
    app.send_text(&APP_A, "lisi", "$(rm -rf /); `id` && echo pwned", 1)
        .await;
    let sends = fake.wait_for_sends(1).await;
    assert_eq!(
        sends[0].content(),
        "hi, there lisi: you said $(rm -rf /); `id` && echo pwned (cheerful, leaked=False)"
    );
    app.stop().await;
}

#[tokio::test]
async fn command_agent_failures_and_timeouts_reach_the_user_and_the_process_is_killed() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let program = script(
        dir.path(),
        "slow.py",
        &format!(
            r#"import json, os, sys, time
turn = json.load(sys.stdin)
if turn["text"] == "crash":
    print("something broke", file=sys.stderr)
    sys.exit(3)
open({pid:?}, "w").write(str(os.getpid()))
time.sleep(600)
"#,
            pid = pid_file.display().to_string()
        ),
    );
    // Long enough for Python to start and write its PID file on a busy machine.
    let mut cfg = with_agent(&fake, command_agent(program, Duration::from_secs(3)));
    cfg.workers = 1;
    cfg.agent.failure_message = "agent failed".into();
    let app = TestApp::spawn(cfg).await;
    app.send_text(&APP_A, "lisi", "crash", 1).await;
    app.send_text(&APP_A, "lisi", "hang", 2).await;
    let sends = fake.wait_for_sends(2).await;
    assert_eq!(sends[0].content(), "agent failed", "non-zero exit");
    assert_eq!(sends[1].content(), "agent failed", "timeout");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the timed-out program {pid} is still running"
    );
    app.stop().await;
}

fn openai(url: String) -> AgentKind {
    AgentKind::Openai(OpenAiConfig {
        base_url: format!("{url}/v1"),
        model: "test-model".into(),
        api_key: Some(SecretString::from("sk-test-key")),
        system_prompt: Some("You are helpful.".into()),
        temperature: Some(0.2),
        max_tokens: Some(256),
        timeout: Duration::from_secs(10),
        history_turns: 10,
        history_chars: 16_000,
        vision: false,
    })
}

#[tokio::test]
async fn openai_agent_keeps_per_user_history_and_reset_clears_it() {
    let fake = FakeWecom::start().await;
    let model = serve("/v1/chat/completions", |n, _| {
        (StatusCode::OK, json!({"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer {n}")}, "finish_reason": "stop"}]}))
    })
    .await;
    let mut cfg = with_agent(&fake, openai(model.url.clone()));
    cfg.workers = 1;
    let app = TestApp::spawn(cfg).await;

    // One at a time, each after the previous answer, so the model's numbering is predictable.
    let turns = [
        ("alice", "hello"),
        ("alice", "and then?"),
        ("bob", "hi"),
        ("alice", "/reset"),
        ("alice", "again"),
        ("alice", "/help"),
    ];
    for (i, (user, text)) in turns.iter().enumerate() {
        app.send_text(&APP_A, user, text, i as u64 + 1).await;
        fake.wait_for_sends(i + 1).await;
    }
    let sends = fake.sends();
    let contents: Vec<(&str, &str)> = sends.iter().map(|s| (s.touser(), s.content())).collect();
    assert_eq!(
        contents,
        vec![
            ("alice", "answer 1"),
            ("alice", "answer 2"),
            ("bob", "answer 3"),
            ("alice", wecom_gateway::agent::openai::RESET_DONE),
            ("alice", "answer 4"),
            ("alice", wecom_gateway::agent::openai::HELP),
        ]
    );
    let seen = model.seen();
    assert_eq!(seen.len(), 4, "/reset and /help do not reach the model");
    let messages = |i: usize| -> Vec<(String, String)> {
        seen[i].1["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap().to_owned(),
                    m["content"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let pair = |r: &str, c: &str| (r.to_owned(), c.to_owned());
    for (headers, body) in &seen {
        assert_eq!(headers["authorization"], "Bearer sk-test-key");
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["temperature"], 0.2);
        assert_eq!(body["max_tokens"], 256);
        // Asked to stream; this server answers whole JSON anyway, which is read as it is.
        assert_eq!(body["stream"], true);
    }
    let system = pair("system", "You are helpful.");
    assert_eq!(messages(0), vec![system.clone(), pair("user", "hello")]);
    assert_eq!(
        messages(1),
        vec![
            system.clone(),
            pair("user", "hello"),
            pair("assistant", "answer 1"),
            pair("user", "and then?")
        ],
        "the first turn is carried into the second"
    );
    assert_eq!(
        messages(2),
        vec![system.clone(), pair("user", "hi")],
        "bob's history is his own"
    );
    assert_eq!(
        messages(3),
        vec![system, pair("user", "again")],
        "/reset emptied alice's history"
    );
    app.stop().await;
}

#[tokio::test]
async fn openai_reads_a_streamed_answer_whole_and_keeps_it_in_history() {
    let fake = FakeWecom::start().await;
    let model = ModelStub::start(|n, _| match n {
        1 => model::Answer::Stream(vec![
            delta("Hel"),
            delta("lo, "),
            delta("alice"),
            DONE.into(),
        ]),
        _ => model::Answer::Json("whole".into()),
    })
    .await;
    let app = TestApp::spawn(with_agent(
        &fake,
        openai(model.url.trim_end_matches("/v1").to_owned()),
    ))
    .await;
    app.send_text(&APP_A, "alice", "hi", 1).await;
    fake.wait_for_sends(1).await;
    app.send_text(&APP_A, "alice", "and?", 2).await;
    let sends = fake.wait_for_sends(2).await;
    app.stop().await;
    let contents: Vec<&str> = sends.iter().map(|s| s.content()).collect();
    assert_eq!(contents, ["Hello, alice", "whole"]);
    let calls = model.calls();
    assert_eq!(calls[0].1["stream"], true);
    let history: Vec<&str> = (calls[1].1["messages"].as_array().unwrap().iter())
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["You are helpful.", "hi", "Hello, alice", "and?"]);
}

#[tokio::test]
async fn an_image_in_a_model_answer_is_sent_as_an_image_and_kept_short_in_history() {
    let fake = FakeWecom::start().await;
    let model = serve("/v1/chat/completions", |n, _| {
        let png = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\n-a-plot");
        let content = match n {
            1 => format!("The plot: ![plot](data:image/png;base64,{png})"),
            _ => "ok".to_owned(),
        };
        (
            StatusCode::OK,
            json!({"choices": [{"message": {"role": "assistant", "content": content}}]}),
        )
    })
    .await;
    let app = TestApp::spawn(with_agent(&fake, openai(model.url.clone()))).await;
    app.send_text(&APP_A, "alice", "plot it", 1).await;
    let sends = fake.wait_for_sends(2).await;
    app.send_text(&APP_A, "alice", "thanks", 2).await;
    fake.wait_for_sends(3).await;
    assert_eq!(sends[0].content(), "The plot:");
    assert_eq!(sends[1].body["msgtype"], "image");
    assert_eq!(fake.uploads()[0].bytes, b"\x89PNG\r\n\x1a\n-a-plot");
    let history = &model.seen()[1].1["messages"];
    assert_eq!(
        history[2],
        json!({"role": "assistant", "content": "The plot:\n\n[image]"}),
        "the history keeps the text, not the base64: {history}"
    );
    app.stop().await;
}

#[tokio::test]
async fn openai_history_survives_a_restart_and_non_text_is_described() {
    let fake = FakeWecom::start().await;
    let model = serve("/v1/chat/completions", |n, _| {
        (StatusCode::OK, json!({"choices": [{"message": {"role": "assistant", "content": format!("answer {n}")}}]}))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = with_agent(&fake, openai(model.url.clone()));
    cfg.data_dir = dir.path().to_path_buf();
    let app = TestApp::spawn(cfg.clone()).await;
    app.send_text(&APP_A, "carol", "remember me", 1).await;
    fake.wait_for_sends(1).await;
    app.stop().await;

    let app = TestApp::spawn(cfg).await;
    let location = format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>carol</FromUserName><CreateTime>1700000002</CreateTime><MsgType>location</MsgType><Location_X>23.1</Location_X><Location_Y>113.3</Location_Y><Scale>15</Scale><Label>广州塔</Label><MsgId>2</MsgId><AgentID>1000002</AgentID></xml>",
        APP_A.corp_id
    );
    let (q, b) = APP_A.callback(&location);
    assert_eq!(app.post_callback(&q, b).await.status(), 200);
    fake.wait_for_sends(2).await;
    let seen = model.seen();
    let last: Vec<&str> = seen[1].1["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        last,
        vec![
            "You are helpful.",
            "remember me",
            "answer 1",
            "[location] 广州塔 (23.1, 113.3)"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn openai_sees_images_with_vision_and_text_files_inline() {
    let fake = FakeWecom::start().await;
    let photo = b"\xff\xd8\xff\xe0photo".to_vec();
    fake.add_media("img", "image/jpeg", None, &photo);
    fake.add_media(
        "notes",
        "text/plain",
        Some("notes.txt"),
        "第一行\nline 2".as_bytes(),
    );
    fake.add_media("big", "text/plain", Some("big.txt"), &vec![b'x'; 2000]);
    let model = serve("/v1/chat/completions", |n, _| {
        (StatusCode::OK, json!({"choices": [{"message": {"role": "assistant", "content": format!("answer {n}")}}]}))
    })
    .await;
    let mut kind = openai(model.url.clone());
    if let AgentKind::Openai(c) = &mut kind {
        c.vision = true;
        c.system_prompt = None;
    }
    let mut cfg = with_agent(&fake, kind);
    cfg.media.inline_text_bytes = 1024;
    let app = TestApp::spawn(cfg).await;
    for (n, (kind, id)) in [("image", "img"), ("file", "notes"), ("file", "big")]
        .into_iter()
        .enumerate()
    {
        let (q, b) = APP_A.callback(&APP_A.media_xml("dave", kind, id, n as u64 + 1));
        assert_eq!(app.post_callback(&q, b).await.status(), 200);
        fake.wait_for_sends(n + 1).await;
    }
    let seen = model.seen();
    let last =
        |i: usize| seen[i].1["messages"].as_array().unwrap().last().unwrap()["content"].clone();
    let data_url = format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&photo)
    );
    assert_eq!(
        last(0),
        json!([
            {"type": "text", "text": "[image] https://wework.qpic.cn/x"},
            {"type": "image_url", "image_url": {"url": data_url}},
        ]),
        "the image as an image part"
    );
    assert_eq!(
        last(1),
        json!("[file] callback-name.bin\n\n--- notes.txt ---\n第一行\nline 2"),
        "a small text file inline"
    );
    assert_eq!(
        last(2),
        json!("[file] callback-name.bin"),
        "a text file over media.inline_text_bytes is only described"
    );
    // History keeps the description, not the bytes.
    let history = seen[2].1["messages"].as_array().unwrap();
    assert_eq!(history[0]["content"], "[image] https://wework.qpic.cn/x");
    app.stop().await;
}

#[tokio::test]
async fn a_slow_agent_triggers_one_receipt_a_fast_one_none() {
    let fake = FakeWecom::start().await;
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.agent = AgentConfig {
        delay_ms: 800,
        ack_after: Some(Duration::from_millis(50)),
        ..AgentConfig::default()
    };
    let app = TestApp::spawn(cfg.clone()).await;
    app.send_text(&APP_A, "zhangsan", "take your time", 1).await;
    let sends = fake.wait_for_sends(2).await;
    let contents: Vec<&str> = sends.iter().map(|s| s.content()).collect();
    assert_eq!(contents, vec!["收到，正在处理…", "take your time"]);
    app.stop().await;
    assert_eq!(fake.sends().len(), 2, "one receipt only");

    let fake = FakeWecom::start().await;
    cfg.api_base_url = fake.base_url();
    cfg.agent = AgentConfig {
        delay_ms: 0,
        ack_after: Some(Duration::from_secs(5)),
        ..AgentConfig::default()
    };
    let app = TestApp::spawn(cfg).await;
    app.send_text(&APP_A, "zhangsan", "quick one", 2).await;
    fake.wait_for_sends(1).await;
    app.stop().await;
    let contents: Vec<String> = fake
        .sends()
        .iter()
        .map(|s| s.content().to_owned())
        .collect();
    assert_eq!(contents, vec!["quick one"], "no receipt for a fast answer");
}

#[tokio::test]
async fn ack_recall_withdraws_the_receipt_once_the_reply_is_out() {
    let fake = FakeWecom::start().await;
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.agent = AgentConfig {
        delay_ms: 300,
        ack_after: Some(Duration::from_millis(20)),
        ack_recall: true,
        ..AgentConfig::default()
    };
    let app = TestApp::spawn(cfg.clone()).await;
    app.send_text(&APP_A, "zhangsan", "slow one", 1).await;
    let recalled = fake.wait_for_recalls(1).await;
    let sends = fake.sends();
    let contents: Vec<&str> = sends.iter().map(|s| s.content()).collect();
    assert_eq!(
        contents,
        vec!["收到，正在处理…", "slow one"],
        "the reply went out first"
    );
    assert_eq!(
        recalled,
        vec!["m1"],
        "the receipt's msgid, the first message sent"
    );
    app.stop().await;

    // Without ack_recall the receipt stays.
    let fake = FakeWecom::start().await;
    cfg.api_base_url = fake.base_url();
    cfg.agent.ack_recall = false;
    let app = TestApp::spawn(cfg).await;
    app.send_text(&APP_A, "zhangsan", "slow two", 2).await;
    fake.wait_for_sends(2).await;
    app.stop().await;
    assert!(fake.recalls().is_empty(), "nothing withdrawn");
}

#[tokio::test]
async fn a_command_agent_that_writes_a_lot_is_read_to_the_end_and_answers_in_time() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    // 200 KB of diagnostics (far past what is kept for the log), then the reply.
    let program = script(
        dir.path(),
        "chatty.py",
        r#"import json, sys
turn = json.load(sys.stdin)
for i in range(2000):
    print("diagnostic line %04d " % i + "." * 80, file=sys.stderr)
sys.stderr.flush()
print("answer to " + turn["text"])
"#,
    );
    let mut cfg = with_agent(&fake, command_agent(program, Duration::from_secs(20)));
    cfg.agent.failure_message = "agent failed".into();
    let app = TestApp::spawn(cfg).await;
    app.send_text(&APP_A, "lisi", "the question", 1).await;
    let sends = fake.wait_for_sends(1).await;
    assert_eq!(sends[0].content(), "answer to the question");
    app.stop().await;
}
