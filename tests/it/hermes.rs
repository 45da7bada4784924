//! A Hermes user switching over: the `.env` and `config.yaml` Hermes's wecom_callback used start
//! the real binary unchanged, and the hermes agent talks to Hermes's API server (a local stand-in
//! here) with one message per call and a session per WeCom member.

use base64::Engine as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::model::{delta, Answer, ModelStub, DONE};
use crate::support::process::*;
use crate::support::*;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::process::Command;
use wecom_gateway::config::{AgentConfig, AgentKind, HermesConfig};

type Calls = Arc<Mutex<Vec<(HeaderMap, Value)>>>;
/// The stand-in's answer to call `n` (from 1) with this text: the content, and the session id it
/// names in `X-Hermes-Session-Id` (Hermes names the one it used: by default the one asked for).
type Script = fn(usize, &str) -> (String, Option<String>);

/// Hermes's API server, as far as the gateway uses it: `/v1/chat/completions`, answering
/// `hermes N: <the message>`.
async fn hermes_stand_in() -> (String, Calls) {
    hermes_answering(|n, text| (format!("hermes {n}: {text}"), None)).await
}

async fn hermes_answering(script: Script) -> (String, Calls) {
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let router = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap, Json(body): Json<Value>| async move {
            let n = {
                let mut calls = seen.lock().unwrap();
                calls.push((headers.clone(), body.clone()));
                calls.len()
            };
            let text = body["messages"][0]["content"].as_str().unwrap_or("").to_owned();
            let (content, session) = script(n, &text);
            let asked = headers.get("x-hermes-session-id").cloned();
            let mut answer = HeaderMap::new();
            if let Some(id) = session.map(|s| s.parse().unwrap()).or(asked) {
                answer.insert("x-hermes-session-id", id);
            }
            (answer, Json(json!({"choices": [{"message": {"role": "assistant", "content": content}}]})))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/v1"), calls)
}

/// A gateway whose agent is hermes at `url`.
fn hermes_config(fake: &FakeWecom, url: String) -> wecom_gateway::config::Config {
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.allowlist.allow_all = true;
    cfg.agent = AgentConfig {
        kind: AgentKind::Hermes(HermesConfig {
            base_url: url,
            model: "hermes-agent".into(),
            api_key: Some(SecretString::from("hermes-key")),
            timeout: Duration::from_secs(10),
        }),
        ..AgentConfig::default()
    };
    cfg
}

fn session_of(call: &(HeaderMap, Value)) -> String {
    call.0["x-hermes-session-id"].to_str().unwrap().to_owned()
}

fn key_of(call: &(HeaderMap, Value)) -> String {
    call.0["x-hermes-session-key"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_hermes_agent_sends_one_message_per_call_with_a_session_per_member() {
    let fake = FakeWecom::start().await;
    let (url, calls) = hermes_stand_in().await;
    let gw = TestApp::spawn(hermes_config(&fake, url)).await;
    let turns = [
        ("zhangsan", "first"),
        ("zhangsan", "second"),
        ("lisi", "hello"),
        ("zhangsan", "/reset"),
        ("zhangsan", "again"),
    ];
    for (n, (user, text)) in turns.iter().enumerate() {
        gw.send_text(&APP_A, user, text, n as u64 + 1).await;
        fake.wait_for_sends(n + 1).await;
    }
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 4, "/reset is answered by the gateway");
    for (headers, body) in &calls {
        assert_eq!(
            body["messages"].as_array().unwrap().len(),
            1,
            "only the new message: {body}"
        );
        assert_eq!(headers["authorization"], "Bearer hermes-key");
    }
    let sessions: Vec<String> = calls.iter().map(session_of).collect();
    assert_eq!(sessions[0], sessions[1], "one member, one session");
    assert_ne!(sessions[0], sessions[2], "another member, another session");
    assert_ne!(sessions[3], sessions[0], "/reset starts a new session");
    assert!(
        sessions.iter().all(|s| s.starts_with("wecom-")),
        "{sessions:?}"
    );
    // The session key names the member for Hermes's long-term memory: /reset keeps it.
    let keys: Vec<String> = calls.iter().map(key_of).collect();
    assert_eq!(keys[0], keys[1]);
    assert_eq!(keys[3], keys[0], "/reset keeps the member's session key");
    assert_ne!(keys[2], keys[0], "another member, another key");
    assert!(!sessions.contains(&keys[0]), "a key is not a session id");
    let replies: Vec<String> = fake
        .sends()
        .iter()
        .map(|s| s.content().to_owned())
        .collect();
    assert_eq!(replies[1], "hermes 2: second");
    assert!(replies[3].contains("Conversation cleared"), "{replies:?}");
    gw.stop().await;
}

#[tokio::test]
async fn a_session_hermes_compressed_into_a_new_one_is_continued() {
    let fake = FakeWecom::start().await;
    // Hermes compresses the session during the first turn and answers with the new id.
    let (url, calls) = hermes_answering(|n, text| {
        let compressed = (n == 1).then(|| "compressed-session-2".to_owned());
        (format!("hermes {n}: {text}"), compressed)
    })
    .await;
    let gw = TestApp::spawn(hermes_config(&fake, url)).await;
    for (n, text) in ["a long one", "next", "and next"].iter().enumerate() {
        gw.send_text(&APP_A, "zhangsan", text, n as u64 + 1).await;
        fake.wait_for_sends(n + 1).await;
    }
    let calls = calls.lock().unwrap().clone();
    let sessions: Vec<String> = calls.iter().map(session_of).collect();
    assert_ne!(sessions[0], "compressed-session-2");
    assert_eq!(
        sessions[1..],
        ["compressed-session-2", "compressed-session-2"],
        "the turns after carry the session Hermes named"
    );
    let keys: Vec<String> = calls.iter().map(key_of).collect();
    assert!(keys.iter().all(|k| *k == keys[0]), "one key: {keys:?}");
    gw.stop().await;
}

const CHART: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR-a-chart-hermes-drew";

#[tokio::test]
async fn an_image_in_a_hermes_answer_is_sent_as_an_image() {
    let fake = FakeWecom::start().await;
    // What Hermes's API server answers when a tool made an image: a markdown data URL.
    let (url, _calls) = hermes_answering(|_, _| {
        let png = base64::engine::general_purpose::STANDARD.encode(CHART);
        let content = format!(
            "Here is the chart:\n\n![image](data:image/png;base64,{png})\n\nAnything else?"
        );
        (content, None)
    })
    .await;
    let gw = TestApp::spawn(hermes_config(&fake, url)).await;
    gw.send_text(&APP_A, "zhangsan", "draw the chart", 1).await;
    let sends = fake.wait_for_sends(3).await;
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 1, "one image uploaded");
    assert_eq!(uploads[0].kind, "image");
    assert_eq!(uploads[0].bytes, CHART, "the image's exact bytes");
    let sent: Vec<(&str, Value)> = sends
        .iter()
        .map(|s| {
            let t = s.body["msgtype"].as_str().unwrap_or("");
            (t, s.body[t].clone())
        })
        .collect();
    assert_eq!(
        sent,
        vec![
            ("text", json!({"content": "Here is the chart:"})),
            ("image", json!({"media_id": uploads[0].media_id})),
            ("text", json!({"content": "Anything else?"})),
        ],
        "text, the image in its place, text; no base64 as text"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_hermes_env_file_and_config_start_the_binary_unchanged() {
    let fake = FakeWecom::start().await;
    let (url, calls) = hermes_stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    // Hermes's layout: the platform's keys under platforms.wecom_callback.extra.
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "platforms:\n  wecom_callback:\n    enabled: true\n    extra:\n      name: hermes-wecom\n      host: 127.0.0.1\n      port: 8645\nagent:\n  kind: hermes\n  base_url: {url}\n"
        ),
    )
    .unwrap();
    // The .env the Hermes page says to write, secrets included.
    std::fs::write(
        dir.path().join(".env"),
        format!(
            "# Hermes\nWECOM_CALLBACK_CORP_ID={}\nWECOM_CALLBACK_CORP_SECRET={}\nWECOM_CALLBACK_AGENT_ID={}\nWECOM_CALLBACK_TOKEN={}\nWECOM_CALLBACK_ENCODING_AES_KEY={}\nWECOM_CALLBACK_ALLOWED_USERS=*\nWECOM_CALLBACK_PORT=8645\nAPI_SERVER_KEY=key-from-dotenv\nWECOM_CALLBACK_API_BASE_URL={}\n",
            APP_A.corp_id, APP_A.secret, APP_A.agent_id, APP_A.token, APP_A.aes_key, fake.base_url()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .args(["serve", "--config", "config.yaml"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("WECOM_CALLBACK_DATA_DIR", dir.path().join("data"))
        // The environment beats .env (which says 8645).
        .env("WECOM_CALLBACK_PORT", "0")
        .env("WECOM_CALLBACK_METRICS_LISTEN", "off");
    let gw = Gateway::start(&mut cmd).await;
    // `*`: anyone may talk to the agent.
    let (q, body) = APP_A.callback(&APP_A.text_xml("anyone", "hi hermes", 1));
    let status = reqwest::Client::new()
        .post(gw.callback_url(&q))
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let sends = fake.wait_for_sends(1).await;
    assert_eq!(sends[0].content(), "hermes 1: hi hermes");
    let call = calls.lock().unwrap()[0].clone();
    assert_eq!(
        call.0["authorization"], "Bearer key-from-dotenv",
        "api_key_env found in .env"
    );
    let log = gw.terminate().await;
    assert!(log.contains("hermes-wecom"), "the app's extra.name: {log}");
    assert!(log.contains("read variables from .env"), "{log}");
    assert!(
        !log.contains("key-from-dotenv") && !log.contains(APP_A.secret),
        "{log}"
    );
}

#[tokio::test]
async fn env_file_is_read_and_a_bad_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let vars = format!(
        "WECOM_CALLBACK_CORP_ID={}\nWECOM_CALLBACK_CORP_SECRET=s3cret-value\nWECOM_CALLBACK_AGENT_ID=7\nWECOM_CALLBACK_TOKEN=tok\nWECOM_CALLBACK_ENCODING_AES_KEY={}\nGATEWAY_ALLOWED_USERS=alice,bob\n",
        APP_A.corp_id, APP_A.aes_key
    );
    std::fs::write(dir.path().join("prod.env"), vars).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .current_dir(dir.path())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .unwrap()
    };
    let out = run(&["--env-file", "prod.env", "check-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("agent_id: 7"), "{stdout}");
    assert!(
        stdout.contains("allowed_users: [\"alice\", \"bob\"]"),
        "GATEWAY_ALLOWED_USERS: {stdout}"
    );
    assert!(!stdout.contains("s3cret-value"), "{stdout}");

    std::fs::write(
        dir.path().join(".env"),
        "GOOD=1\nthis line has no equals sign\n",
    )
    .unwrap();
    let out = run(&["check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(".env, line 2: expected KEY=VALUE"),
        "{stderr}"
    );
    let out = run(&["--env-file", "missing.env", "check-config"]);
    assert!(!out.status.success(), "an --env-file named must exist");
}

fn hermes_agent(url: String, timeout: Duration) -> AgentConfig {
    AgentConfig {
        kind: AgentKind::Hermes(HermesConfig {
            base_url: url,
            model: "hermes-agent".into(),
            api_key: Some(SecretString::from("hermes-key")),
            timeout,
        }),
        failure_message: "gave up".into(),
        ..AgentConfig::default()
    }
}

#[tokio::test]
async fn a_streamed_hermes_answer_reaches_the_member_as_one_reply() {
    let fake = FakeWecom::start().await;
    let line = delta(" streamed");
    let (head, tail) = line.split_at(line.len() / 2);
    let pieces = vec![
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n".to_owned(),
        // Hermes's tool progress: a named event, not part of the answer.
        "event: hermes.tool.progress\ndata: {\"tool\":\"terminal\",\"status\":\"running\"}\n\n"
            .into(),
        ": keep-alive\n\n".into(),
        delta("你好，"),
        // One event split across two writes.
        head.into(),
        tail.into(),
        delta(" answer"),
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n".into(),
        DONE.into(),
    ];
    let model = ModelStub::start(move |_, _| Answer::Stream(pieces.clone())).await;
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.allowlist.allow_all = true;
    cfg.agent = hermes_agent(model.url.clone(), Duration::from_secs(10));
    let gw = TestApp::spawn(cfg).await;
    gw.send_text(&APP_A, "zhangsan", "stream it", 1).await;
    let sends = fake.wait_for_sends(1).await;
    gw.stop().await;
    assert_eq!(sends.len(), 1, "one reply: {sends:?}");
    assert_eq!(sends[0].content(), "你好， streamed answer");
    let calls = model.calls();
    assert_eq!(calls[0].1["stream"], true, "{}", calls[0].1);
    assert!(calls[0].0.contains_key("x-hermes-session-id"));
}

/// Hermes stops a streamed run when its client goes away; without a stream it cannot tell and
/// finishes the turn into the session.
#[tokio::test]
async fn a_turn_the_gateway_gives_up_on_is_dropped_so_hermes_stops_it() {
    let fake = FakeWecom::start().await;
    let model = ModelStub::start(|_, _| Answer::Stall(delta("thinking"))).await;
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.allowlist.allow_all = true;
    cfg.agent = hermes_agent(model.url.clone(), Duration::from_secs(1));
    let gw = TestApp::spawn(cfg).await;
    gw.send_text(&APP_A, "zhangsan", "a long task", 1).await;
    let sends = fake.wait_for_sends(1).await;
    assert_eq!(sends[0].content(), "gave up");
    let calls = model.calls();
    assert_eq!(
        calls[0].1["stream"], true,
        "only a streamed run is stopped: {}",
        calls[0].1
    );
    model.wait_for_closed(1).await;
    gw.stop().await;
}

#[tokio::test]
async fn an_error_or_a_broken_stream_gives_the_failure_message_and_names_it() {
    let fake = FakeWecom::start().await;
    let model = ModelStub::start(|n, _| match n {
        1 => Answer::Stream(vec![
            delta("half an answer"),
            "data: {\"error\":{\"message\":\"model overloaded\",\"type\":\"server_error\"}}\n\n"
                .into(),
        ]),
        2 => Answer::Stream(vec![delta("cut off")]),
        3 => Answer::Stream(vec![
            delta("fine"),
            "data: {\"choices\": [\n\n".into(),
            DONE.into(),
        ]),
        // A runaway: more than the gateway keeps of an answer (16 MiB), never ending.
        4 => Answer::Stream(vec![delta(&"x".repeat(1 << 20)); 17]),
        _ => Answer::Stream(vec![delta("whole"), DONE.into()]),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.yaml"),
        format!(
            "agent:\n  kind: hermes\n  base_url: {}\n  api_key: hermes-key\n  failure_message: gave up\n",
            model.url
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    gateway_env(&mut cmd, &fake.base_url(), &dir.path().join("data"));
    cmd.current_dir(dir.path())
        .args(["serve", "--config", "config.yaml"]);
    let gw = Gateway::start(&mut cmd).await;
    for n in 1..=5 {
        let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", &format!("turn {n}"), n));
        let status = reqwest::Client::new()
            .post(gw.callback_url(&q))
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
        fake.wait_for_sends(n as usize).await;
    }
    let contents: Vec<String> = fake
        .sends()
        .iter()
        .map(|s| s.content().to_owned())
        .collect();
    assert_eq!(
        contents,
        ["gave up", "gave up", "gave up", "gave up", "whole"]
    );
    let log = gw.terminate().await;
    for why in [
        "the stream carried an error: model overloaded",
        "the stream ended before data: [DONE]",
        "line 3 of the stream is broken",
        "the streamed answer is over 16777216 bytes",
    ] {
        assert!(log.contains(why), "{why}: {log}");
    }
}
