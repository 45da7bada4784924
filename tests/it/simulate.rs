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
    let out = simulate(dir.path(), &["--user", "zhangsan", "what", "now"], &extra)
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
    assert!(
        stdout.contains("HTTP 200: accepted (200); whether the member is allowed is decided by the gateway's allowlist"),
        "{stdout}"
    );
    assert!(out.status.success(), "{stdout}");
    assert_eq!(fake.wait_for_sends(1).await[0].content(), "over the tunnel");
    // A token that differs from the gateway's: what the console would see.
    let out = run(
        vec!["--url".into(), url.clone(), "hi".into()],
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
    assert_eq!(out.status.code(), Some(1), "a 4xx is a failure: {stdout}");
    // A member the gateway (and the local configuration) refuses: the 200 does not say the
    // message goes to the agent, and the exit code says the member is refused.
    let lisi = |extra: &str| {
        let mut args = vec![
            "--url".to_owned(),
            url.clone(),
            "--user".into(),
            "lisi".into(),
        ];
        args.extend([extra.to_owned(), "let me in".into()]);
        args.retain(|a| !a.is_empty());
        args
    };
    let out = run(lisi(""), vec![]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("HTTP 200: accepted (200); whether the member is allowed is decided by the gateway's allowlist"),
        "{stdout}"
    );
    assert!(!stdout.contains("goes to the agent"), "{stdout}");
    assert!(
        stdout.contains("The local configuration's allowlist refuses \"lisi\"")
            && stdout.contains("allowed_users")
            && stdout.contains("allow_all_users: true"),
        "{stdout}"
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    // --allow-anyone skips the local check; the gateway still drops the message.
    let out = run(lisi("--allow-anyone"), vec![]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("decided by the gateway's allowlist") && !stdout.contains("refuses"),
        "{stdout}"
    );
    gw.wait_for_log(&["not on the allowlist", "lisi"]).await;
    assert_eq!(fake.sends().len(), 1, "nothing reaches lisi");
    // A 5xx: a server in place of the gateway that answers 503.
    let router = Router::new().fallback(|| async { axum::http::StatusCode::SERVICE_UNAVAILABLE });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let busy = format!("http://{}/wecom/callback", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let out = run(
        vec![
            "--url".into(),
            busy,
            "--user".into(),
            "zhangsan".into(),
            "hi".into(),
        ],
        vec![],
    )
    .output()
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("HTTP 503: try later"), "{stdout}");
    assert_eq!(out.status.code(), Some(1), "a 5xx is a failure: {stdout}");
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
        &[
            "--user",
            "zhangsan",
            "--interactive",
            "--image",
            photo.to_str().unwrap(),
        ],
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

#[tokio::test]
async fn simulate_applies_the_allowlist_and_says_how_to_allow_a_refused_member() {
    let dir = tempfile::tempdir().unwrap();
    // gateway_env allows zhangsan only.
    let out = simulate(dir.path(), &["--user", "lisi", "hello"], &[])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("\"lisi\" is not on the allowlist")
            && stderr.contains("add \"lisi\" to allowed_users")
            && stderr.contains("allowed_users: [\"*\"]")
            && stderr.contains("allow_all_users: true")
            && stderr.contains("--allow-anyone"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing goes to WeCom for a refused member"
    );

    // --allow-anyone keeps the old behaviour on request.
    let out = simulate(
        dir.path(),
        &["--allow-anyone", "--user", "lisi", "hello"],
        &[],
    )
    .output()
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = printed(&out.stdout);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["touser"], "lisi");

    // Allowed through the configuration ("*" allows everyone).
    let out = simulate(
        dir.path(),
        &["--user", "lisi", "hello"],
        &[("WECOM_CALLBACK_ALLOWED_USERS", "*")],
    )
    .output()
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(printed(&out.stdout).len(), 1);
}

#[tokio::test]
async fn simulate_exits_non_zero_when_the_agent_fails() {
    let dir = tempfile::tempdir().unwrap();
    // An http agent at an address nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let agent = format!("http://{}/turn", listener.local_addr().unwrap());
    drop(listener);
    let extra = [
        ("WECOM_CALLBACK_AGENT__KIND", "http"),
        ("WECOM_CALLBACK_AGENT__URL", agent.as_str()),
    ];
    let out = simulate(
        dir.path(),
        &["--user", "zhangsan", "anyone", "there?"],
        &extra,
    )
    .output()
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the agent failed"), "{stderr}");
    // The member still got the failure message, as in production.
    assert_eq!(printed(&out.stdout).len(), 1);
}

#[tokio::test]
async fn simulate_logs_warnings_only_unless_verbose() {
    let dir = tempfile::tempdir().unwrap();
    let quiet = simulate(dir.path(), &["--user", "zhangsan", "hi"], &[])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert!(quiet.status.success());
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(!stderr.contains("listening on"), "{stderr}");
    let verbose = simulate(dir.path(), &["-v", "--user", "zhangsan", "hi"], &[])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert!(verbose.status.success());
    let stderr = String::from_utf8_lossy(&verbose.stderr);
    assert!(stderr.contains("listening on"), "{stderr}");
}

#[tokio::test]
async fn simulate_aibot_prints_the_streamed_reply_frames() {
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        ("WECOM_CALLBACK_AIBOT_ID", "aib-sim"),
        ("WECOM_CALLBACK_AIBOT_SECRET", "never-printed-secret"),
    ];
    let out = simulate(
        dir.path(),
        &["--aibot", "aibot", "--user", "zhangsan", "你好"],
        &extra,
    )
    .output()
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let frames = printed(&out.stdout);
    let last = frames.last().expect("frames printed");
    assert_eq!(last["cmd"], "aibot_respond_msg");
    assert_eq!(last["body"]["stream"]["finish"], true);
    assert_eq!(last["body"]["stream"]["content"], "你好");
    assert_eq!(
        frames[0]["body"]["stream"]["content"], "思考中…",
        "the placeholder first"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("never-printed-secret") && !stderr.contains("never-printed-secret"));

    // A member the bot's allowlist refuses is refused here too.
    let out = simulate(
        dir.path(),
        &["--aibot", "aibot", "--user", "wangwu", "hi"],
        &extra,
    )
    .output()
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not on the allowlist"));
    // And a bot that is not configured is named.
    let out = simulate(dir.path(), &["--aibot", "nope", "hi"], &extra)
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no AI bot named \"nope\""));
}
