//! `wecom-gateway simulate`: the real binary plays a member against itself (a stand-in for WeCom,
//! a memory store) and prints what would go to WeCom; with --url it checks a running gateway.

use crate::support::process::*;
use crate::support::*;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::process::Command;

fn simulate(dir: &std::path::Path, args: &[&str], extra: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("simulate").args(args);
    // The production settings a newcomer has: the real API base URL and a SQLite store, which
    // simulate must not use.
    gateway_env(&mut cmd, "https://qyapi.weixin.qq.com", dir);
    cmd.env("RUST_LOG", "warn");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

fn printed(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test]
async fn simulate_prints_the_echo_reply_and_an_http_agent_s_reply() {
    let dir = tempfile::tempdir().unwrap();
    let out = simulate(dir.path(), &["--user", "zhangsan", "你好", "gateway"], &[])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = printed(&out.stdout);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["touser"], "zhangsan");
    assert_eq!(sent[0]["text"]["content"], "你好 gateway");
    assert_eq!(sent[0]["agentid"], 1000002);
    assert!(
        !dir.path().join("wecom-gateway.db").exists(),
        "the configured store is never touched"
    );

    // An http agent answering with two messages.
    let router = Router::new().route(
        "/turn",
        post(|Json(turn): Json<Value>| async move {
            Json(json!({"messages": [
                {"msgtype": "text", "content": format!("you said {}", turn["text"].as_str().unwrap_or(""))},
                {"msgtype": "markdown", "content": "**done**"},
            ]}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let agent = format!("http://{}/turn", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let extra = [
        ("WECOM_CALLBACK_AGENT__KIND", "http"),
        ("WECOM_CALLBACK_AGENT__URL", agent.as_str()),
    ];
    let out = simulate(dir.path(), &["what", "now"], &extra)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = printed(&out.stdout);
    let kinds: Vec<(&str, &str)> = sent
        .iter()
        .map(|m| {
            let t = m["msgtype"].as_str().unwrap();
            (t, m[t]["content"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        kinds,
        vec![("text", "you said what now"), ("markdown", "**done**")]
    );
}

#[tokio::test]
async fn simulate_url_checks_a_running_gateway_and_says_what_its_answer_means() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve");
    gateway_env(&mut cmd, &fake.base_url(), dir.path());
    let gw = Gateway::start(&mut cmd).await;
    let url = gw.callback_url("").trim_end_matches('?').to_owned();
    let other = tempfile::tempdir().unwrap();
    let run = |args: Vec<String>, extra: Vec<(&'static str, &'static str)>| {
        let mut cmd = simulate(other.path(), &[], &extra);
        cmd.args(args);
        cmd
    };
    let out = run(vec!["--url".into(), url.clone(), "--verify".into()], vec![])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("HTTP 200: the URL check passes"),
        "{stdout}"
    );
    let args = vec![
        "--url".into(),
        url.clone(),
        "--user".into(),
        "zhangsan".into(),
        "over".into(),
        "the".into(),
        "tunnel".into(),
    ];
    let out = run(args, vec![]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("HTTP 200: accepted"), "{stdout}");
    assert_eq!(fake.wait_for_sends(1).await[0].content(), "over the tunnel");
    // A token that differs from the gateway's: what the console would see.
    let out = run(
        vec!["--url".into(), url, "hi".into()],
        vec![("WECOM_CALLBACK_TOKEN", "not-the-token")],
    )
    .output()
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("HTTP 403: refused: the signature does not match"),
        "{stdout}"
    );
    gw.terminate().await;
}

#[tokio::test]
async fn simulate_keeps_a_conversation_open_and_sends_an_image() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("photo.jpg");
    std::fs::write(&photo, b"\xff\xd8\xff\xe0 a photo").unwrap();
    let mut cmd = simulate(
        dir.path(),
        &["--interactive", "--image", photo.to_str().unwrap()],
        &[],
    );
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all("first\nsecond\n".as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = printed(&out.stdout);
    let texts: Vec<&str> = sent
        .iter()
        .map(|m| m["text"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert!(texts[0].contains("[image]"), "the photo first: {texts:?}");
    assert_eq!(
        &texts[1..],
        ["first", "second"],
        "one reply per line, in order"
    );
}
