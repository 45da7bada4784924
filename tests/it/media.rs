//! Rich replies end to end: an agent answers with images, files, markdown and cards; the gateway
//! uploads the files to the fake WeCom (media/upload), sends each message in order, refuses what
//! WeCom would refuse (or what the agent may not read) with the failure message in its place, and
//! after a kill -9 between upload and send sends the message exactly once without re-asking.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::process::*;
use crate::support::*;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use wecom_gateway::config::{AgentConfig, AgentKind, Config, HttpAgentConfig};

const FAILURE: &str = "抱歉，处理这条消息时出错了，请稍后再试。";

fn png(tag: u8) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(std::iter::repeat_n(tag, 64));
    bytes
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn wrapped(text: &str) -> String {
    let lines: Vec<String> = text
        .as_bytes()
        .chunks(76)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    lines.join("\n")
}

/// A local http agent answering the n-th turn (from 0) with `answers[n]`.
async fn agent(answers: Vec<Value>) -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let (turns, answers) = (seen.clone(), Arc::new(answers));
    let router = Router::new().route(
        "/turn",
        post(move |Json(turn): Json<Value>| async move {
            let n = {
                let mut turns = turns.lock().unwrap();
                turns.push(turn);
                turns.len() - 1
            };
            Json(answers.get(n).cloned().unwrap_or(json!({"reply": null})))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}/turn"), seen)
}

fn with_http_agent(fake: &FakeWecom, url: String) -> Config {
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.agent = AgentConfig {
        kind: AgentKind::Http(HttpAgentConfig {
            url,
            timeout: Duration::from_secs(10),
            retries: 0,
            headers: vec![],
        }),
        ..AgentConfig::default()
    };
    cfg
}

#[tokio::test]
async fn an_agent_answers_with_an_image_a_file_and_markdown() {
    let fake = FakeWecom::start().await;
    let report = "季度报告\n".repeat(20).into_bytes();
    let (url, turns) = agent(vec![json!({"messages": [
        {"msgtype": "image", "base64": b64(&png(7))},
        // Wrapped at 76 columns, as `base64` writes it.
        {"msgtype": "file", "base64": wrapped(&b64(&report)), "file_name": "报告.txt"},
        {"msgtype": "markdown", "content": "**done**"},
    ]})])
    .await;
    let gw = TestApp::spawn(with_http_agent(&fake, url)).await;
    gw.send_text(&APP_A, "zhangsan", "send me the report", 1)
        .await;
    let sends = fake.wait_for_sends(3).await;
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 2, "one upload per file");
    assert_eq!(
        (uploads[0].kind.as_str(), uploads[0].content_type.as_str()),
        ("image", "image/png")
    );
    assert_eq!(uploads[0].bytes, png(7), "the exact image bytes");
    assert_eq!(uploads[0].file_name, "image.png", "a default name");
    assert_eq!(uploads[1].kind, "file");
    assert_eq!(uploads[1].bytes, report, "the exact file bytes");
    assert_eq!(uploads[1].file_name, "报告.txt");
    let kinds: Vec<(&str, Value)> = sends
        .iter()
        .map(|s| {
            let t = s.body["msgtype"].as_str().unwrap_or("");
            (t, s.body[t].clone())
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("image", json!({"media_id": uploads[0].media_id})),
            ("file", json!({"media_id": uploads[1].media_id})),
            ("markdown", json!({"content": "**done**"})),
        ],
        "three message/send calls, in order, with the returned media_ids"
    );
    assert_eq!(turns.lock().unwrap().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn cards_and_news_go_out_as_wecom_defines_them() {
    let fake = FakeWecom::start().await;
    let card =
        json!({"card_type": "text_notice", "main_title": {"title": "审批"}, "task_id": "t-1"});
    let (url, _) = agent(vec![json!({"messages": [
        {"msgtype": "textcard", "title": "Build", "description": "green", "url": "https://ci.example/1", "btntxt": "详情"},
        {"msgtype": "news", "articles": [{"title": "Release", "url": "https://example.com/r", "picurl": "https://example.com/p.png"}]},
        {"msgtype": "template_card", "template_card": card},
    ]})])
    .await;
    let gw = TestApp::spawn(with_http_agent(&fake, url)).await;
    gw.send_text(&APP_A, "zhangsan", "status?", 1).await;
    let sends = fake.wait_for_sends(3).await;
    assert_eq!(sends[0].body["textcard"]["btntxt"], "详情");
    assert_eq!(
        sends[1].body["news"]["articles"][0]["picurl"],
        "https://example.com/p.png"
    );
    assert_eq!(sends[2].body["msgtype"], "template_card");
    assert_eq!(sends[2].body["template_card"], card, "passed through");
    gw.stop().await;
}

#[tokio::test]
async fn a_file_wecom_or_the_operator_would_refuse_gives_the_failure_message_and_the_rest_goes_out()
{
    let fake = FakeWecom::start().await;
    let allowed = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(allowed.path().join("chart.png"), png(1)).unwrap();
    std::fs::write(outside.path().join("secret.png"), png(2)).unwrap();
    // A link inside the allowed directory to a file outside it: refused like the file itself.
    std::os::unix::fs::symlink(
        outside.path().join("secret.png"),
        allowed.path().join("link.png"),
    )
    .unwrap();
    let inside = |name: &str| allowed.path().join(name).display().to_string();
    let dotdot = format!(
        "{}/../{}/secret.png",
        allowed.path().display(),
        outside.path().file_name().unwrap().to_string_lossy()
    );
    let big_voice = [b"#!AMR\n".as_slice(), &vec![0u8; 2 * 1024 * 1024]].concat();
    let (url, _) = agent(vec![
        json!({"messages": [
            {"msgtype": "text", "content": "before"},
            {"msgtype": "image", "path": outside.path().join("secret.png")},
            {"msgtype": "image", "path": inside("link.png")},
            {"msgtype": "image", "path": dotdot},
            {"msgtype": "voice", "base64": b64(&big_voice)},
            {"msgtype": "image", "base64": b64(b"GIF89a not a png")},
            {"msgtype": "image", "path": inside("chart.png")},
            {"msgtype": "text", "content": "after"},
        ]}),
        // WeCom's own nested shape is refused as a whole: the agent has a bug to fix.
        json!({"messages": [{"msgtype": "text", "text": {"content": "nested"}}]}),
    ])
    .await;
    let mut cfg = with_http_agent(&fake, url);
    cfg.media.agent_dirs = vec![allowed.path().to_path_buf()];
    let gw = TestApp::spawn(cfg).await;
    gw.send_text(&APP_A, "zhangsan", "go", 1).await;
    let sends = fake.wait_for_sends(4).await;
    let shown: Vec<String> = sends
        .iter()
        .map(|s| match s.body["msgtype"].as_str() {
            Some("text") => s.content().to_owned(),
            other => format!("{other:?}"),
        })
        .collect();
    // Five refused items, one failure message: the member is told once per reply.
    assert_eq!(shown, ["before", FAILURE, "Some(\"image\")", "after"]);
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 1, "only the allowed, valid file is uploaded");
    assert_eq!(uploads[0].bytes, png(1));
    assert_eq!(uploads[0].file_name, "chart.png");

    gw.send_text(&APP_A, "zhangsan", "again", 2).await;
    let sends = fake.wait_for_sends(5).await;
    assert_eq!(sends[4].content(), FAILURE);
    gw.stop().await;
}

/// WeCom refusing an upload fails the job like a refused send does: listed with WeCom's errcode
/// (so its hint shows), while the member gets the failure message in the image's place.
#[tokio::test]
async fn an_upload_wecom_refuses_is_listed_with_its_errcode() {
    let fake = FakeWecom::start().await;
    let (url, _) = agent(vec![
        json!({"messages": [{"msgtype": "image", "base64": b64(&png(3))}]}),
        json!({"reply": "second"}),
    ])
    .await;
    let mut cfg = with_http_agent(&fake, url);
    cfg.api_tokens = vec![secrecy::SecretString::from("api-token").into()];
    let gw = TestApp::spawn(cfg).await;
    fake.script([json!({"errcode": 40005, "errmsg": "invalid file type"})]);
    gw.send_text(&APP_A, "zhangsan", "a picture, please", 1)
        .await;
    // The member's next message is handled once the first is finished (one at a time).
    gw.send_text(&APP_A, "zhangsan", "and then?", 2).await;
    let sends = fake.wait_for_sends(2).await;
    assert_eq!(sends[0].content(), FAILURE);
    assert_eq!(sends[1].content(), "second");
    let response = (gw.http.get(gw.url("/api/v1/failed")))
        .bearer_auth("api-token")
        .send()
        .await
        .unwrap();
    let list: Value = response.json().await.unwrap();
    let failed = list["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{list}");
    assert_eq!(failed[0]["errcode"], 40005, "{list}");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("media/upload: WeCom errcode 40005"),
        "{list}"
    );
    gw.stop().await;
}

/// kill -9 after the upload and before the send: after the restart the image goes out exactly once,
/// with the recorded media_id (no second upload), and the agent is not asked again.
#[tokio::test]
async fn kill_9_between_upload_and_send_sends_the_image_once() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let asked = dir.path().join("asked");
    let script = dir.path().join("agent.sh");
    let answer = json!({"messages": [{"msgtype": "image", "base64": b64(&png(9))}]});
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat > /dev/null\necho turn >> '{}'\nprintf '%s' '{answer}'\n",
            asked.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let serve = || {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg("serve");
        gateway_env(&mut cmd, &fake.base_url(), &data);
        cmd.env("WECOM_CALLBACK_AGENT__KIND", "command")
            .env("WECOM_CALLBACK_AGENT__PROGRAM", &script);
        cmd
    };
    // Every message/send hangs unanswered and undelivered: the process dies waiting.
    fake.hang_from(0);
    let gw = Gateway::start(&mut serve()).await;
    let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "a picture please", 1));
    let http = reqwest::Client::new();
    let status = http.post(gw.callback_url(&q)).body(body).send().await;
    assert_eq!(status.unwrap().status(), 200);
    fake.wait_for_hung(1).await;
    assert_eq!(fake.uploads().len(), 1);
    gw.kill9().await;

    fake.release();
    let gw = Gateway::start(&mut serve()).await;
    let sends = fake.wait_for_sends(1).await;
    let log = gw.terminate().await;
    assert_eq!(sends.len(), 1, "exactly one image message");
    assert_eq!(
        sends[0].body["image"]["media_id"],
        fake.uploads()[0].media_id
    );
    assert_eq!(
        fake.uploads().len(),
        1,
        "the recorded media_id was reused:\n{log}"
    );
    let turns = std::fs::read_to_string(&asked).unwrap();
    assert_eq!(turns.lines().count(), 1, "the agent was asked once");
    assert!(log.contains("resuming a recorded reply"), "{log}");
}

/// The push API takes the same items: files are checked before anything is stored (400 naming
/// the item), then uploaded and sent in order.
#[tokio::test]
async fn the_push_api_sends_the_same_items() {
    let fake = FakeWecom::start().await;
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.api_tokens = vec![secrecy::SecretString::from("api-token").into()];
    let gw = TestApp::spawn(cfg).await;
    let send = |body: Value| {
        gw.http
            .post(gw.url("/api/v1/send"))
            .bearer_auth("api-token")
            .json(&body)
            .send()
    };
    let answer = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap_or(Value::Null))
    };
    let (status, body) = answer(
        send(json!({"touser": "zhangsan", "messages": [
            {"msgtype": "image", "base64": b64(&png(3))},
            {"msgtype": "markdown", "content": "**chart above**"},
        ]}))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let sends = fake.wait_for_sends(2).await;
    assert_eq!(fake.uploads()[0].bytes, png(3));
    assert_eq!(
        sends[0].body["image"]["media_id"],
        fake.uploads()[0].media_id
    );
    assert_eq!(sends[1].body["markdown"]["content"], "**chart above**");

    for (item, named) in [
        (
            json!({"msgtype": "text", "text": {"content": "x"}}),
            "messages[0].msgtype: \"text\" is given in WeCom's nested shape",
        ),
        (
            json!({"msgtype": "image", "path": "/etc/passwd"}),
            "messages[0].image: \"/etc/passwd\" is refused",
        ),
        (
            json!({"msgtype": "image", "base64": b64(b"GIF89a not a png")}),
            "messages[0].image: WeCom takes image only as JPG or PNG",
        ),
    ] {
        let (status, body) = answer(
            send(json!({"touser": "zhangsan", "messages": [item]}))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.starts_with(named), "{error}");
    }
    assert_eq!(fake.sends().len(), 2, "nothing stored for the bad requests");
    gw.stop().await;
}

fn card_click_xml(user: &str, key: &str, task: &str, code: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{corp}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>1700000100</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[template_card_event]]></Event><EventKey><![CDATA[{key}]]></EventKey><TaskId><![CDATA[{task}]]></TaskId><CardType><![CDATA[button_interaction]]></CardType><ResponseCode><![CDATA[{code}]]></ResponseCode><AgentID>{agent}</AgentID></xml>",
        corp = APP_A.corp_id,
        agent = APP_A.agent_id,
    )
}

fn enter_agent_xml(user: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{corp}]]></ToUserName><FromUserName><![CDATA[{user}]]></FromUserName><CreateTime>1700000200</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[enter_agent]]></Event><EventKey><![CDATA[]]></EventKey><AgentID>{agent}</AgentID></xml>",
        corp = APP_A.corp_id,
        agent = APP_A.agent_id,
    )
}

async fn post_event(gw: &TestApp, xml: &str) {
    let (q, body) = APP_A.callback(xml);
    assert_eq!(gw.post_callback(&q, body).await.status(), 200);
}

/// A click on a card reaches the http agent with its fields; the answer's `update_card` goes to
/// update_template_card with the click's ResponseCode, then its messages to the member. Events
/// the agent did not ask for (`agent.events`, default: card clicks) never reach it.
#[tokio::test]
async fn a_card_click_reaches_the_agent_and_its_update_changes_the_card() {
    let fake = FakeWecom::start().await;
    let (url, turns) = agent(vec![
        json!({"update_card": {"button": {"replace_name": "已批准"}},
               "messages": [{"msgtype": "text", "content": "approved"}]}),
        json!({"reply": "welcome"}),
    ])
    .await;
    let gw = TestApp::spawn(with_http_agent(&fake, url.clone())).await;
    post_event(&gw, &enter_agent_xml("zhangsan")).await;
    post_event(
        &gw,
        &card_click_xml("zhangsan", "approve", "task-7", "RC-123"),
    )
    .await;
    let updates = fake.wait_for_card_updates(1).await;
    assert_eq!(
        updates[0],
        json!({"userids": ["zhangsan"], "agentid": APP_A.agent_id, "response_code": "RC-123",
               "button": {"replace_name": "已批准"}})
    );
    let sends = fake.wait_for_sends(1).await;
    assert_eq!(sends[0].content(), "approved");
    {
        let turns = turns.lock().unwrap();
        assert_eq!(turns.len(), 1, "enter_agent is not sent by default");
        let t = &turns[0];
        assert_eq!(
            (t["event"].as_str(), t["event_key"].as_str()),
            (Some("template_card_event"), Some("approve"))
        );
        assert_eq!(
            (t["task_id"].as_str(), t["card_type"].as_str()),
            (Some("task-7"), Some("button_interaction"))
        );
        assert_eq!(t["response_code"], "RC-123");
        assert_eq!(t["raw"]["TaskId"], "task-7");
    }
    gw.stop().await;

    // With `events: all`, entering the app reaches the agent too.
    let mut cfg = with_http_agent(&fake, url);
    cfg.agent.events = wecom_gateway::agent::Events::All;
    let gw = TestApp::spawn(cfg).await;
    post_event(&gw, &enter_agent_xml("lisi")).await;
    let sends = fake.wait_for_sends(2).await;
    assert_eq!(sends[1].content(), "welcome");
    assert_eq!(turns.lock().unwrap()[1]["event"], "enter_agent");
    gw.stop().await;
}

/// A group robot takes an image (inline: base64 and its md5), a file (uploaded with the robot's
/// upload_media), news and a template card; what a robot cannot send is a 400 naming the item.
#[tokio::test]
async fn a_robot_sends_an_image_a_file_news_and_a_card() {
    use md5::Digest as _;
    let fake = FakeWecom::start().await;
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.api_tokens = vec![secrecy::SecretString::from("api-token").into()];
    cfg.bots = vec![wecom_gateway::bots::Bot::new(
        "ops",
        secrecy::SecretString::from("robot-key-ops"),
    )];
    let gw = TestApp::spawn(cfg).await;
    let (http, url) = (gw.http.clone(), gw.url("/api/v1/notify/ops"));
    let notify = |body: Value| {
        let request = http.post(&url).bearer_auth("api-token").json(&body).send();
        async move {
            let r = request.await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let log = b"2026-11-23 disk full on node-01\n".repeat(10);
    let card = json!({"card_type": "text_notice", "main_title": {"title": "磁盘告警"}});
    let (status, body) = notify(json!({"messages": [
        {"msgtype": "image", "base64": b64(&png(5))},
        {"msgtype": "file", "base64": b64(&log), "file_name": "node-01.log"},
        {"msgtype": "news", "articles": [{"title": "Runbook", "url": "https://wiki.example/disk"}]},
        {"msgtype": "template_card", "template_card": card},
    ]}))
    .await;
    assert_eq!(status, 202, "{body}");
    let sent = fake.wait_for_robot(4).await;
    let md5 = format!("{:x}", md5::Md5::digest(png(5)));
    assert_eq!(
        sent[0].body,
        json!({"msgtype": "image", "image": {"base64": b64(&png(5)), "md5": md5}})
    );
    let uploads = fake.uploads();
    assert_eq!(
        (uploads[0].kind.as_str(), uploads[0].file_name.as_str()),
        ("robot-file", "node-01.log")
    );
    assert_eq!(uploads[0].bytes, log);
    assert_eq!(
        sent[1].body,
        json!({"msgtype": "file", "file": {"media_id": uploads[0].media_id}})
    );
    assert_eq!(sent[2].body["news"]["articles"][0]["title"], "Runbook");
    assert_eq!(sent[3].body["template_card"], card);

    let (status, body) =
        notify(json!({"messages": [{"msgtype": "voice", "base64": b64(b"#!AMR\n12345")}]})).await;
    assert_eq!(status, 400);
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("messages[0].voice: a group robot cannot send voice"),
        "{error}"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------- media members send

fn jpeg(len: usize) -> Vec<u8> {
    let mut bytes = b"\xff\xd8\xff\xe0".to_vec();
    bytes.extend((0..len).map(|i| (i % 251) as u8));
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Post a member's media message and wait until the agent has answered it.
async fn send_media(gw: &TestApp, fake: &FakeWecom, kind: &str, media_id: &str, msg_id: u64) {
    let (q, body) = APP_A.callback(&APP_A.media_xml("zhangsan", kind, media_id, msg_id));
    assert_eq!(gw.post_callback(&q, body).await.status(), 200);
    fake.wait_for_sends(1).await;
}

#[tokio::test]
async fn an_image_reaches_the_agent_as_a_path_and_a_signed_link_to_the_same_bytes() {
    let fake = FakeWecom::start().await;
    let photo = jpeg(300_000);
    fake.add_media("img-1", "image/jpeg", None, &photo);
    let (url, turns) = agent(vec![json!({"reply": "nice photo"})]).await;
    let cfg = with_http_agent(&fake, url);
    assert!(cfg.api_tokens.is_empty(), "links work without API tokens");
    let gw = TestApp::spawn(cfg).await;
    send_media(&gw, &fake, "image", "img-1", 1).await;
    let turn = turns.lock().unwrap()[0].clone();
    let media = &turn["media"];
    let hash = sha256_hex(&photo);
    assert_eq!(media["kind"], "image");
    assert_eq!(media["content_type"], "image/jpeg");
    assert_eq!(media["size"], photo.len());
    assert_eq!(media["sha256"], hash.as_str());
    assert_eq!(turn["media_error"], Value::Null);
    assert_eq!(turn["media_id"], "img-1", "today's fields stay");
    let path = media["path"].as_str().unwrap();
    assert!(std::path::Path::new(path).is_absolute(), "{path}");
    let on_disk = std::fs::read(path).unwrap();
    assert_eq!(
        sha256_hex(&on_disk),
        hash,
        "the file at path is what WeCom served"
    );

    let link = media["url"].as_str().unwrap().to_owned();
    assert!(
        link.starts_with(&format!(
            "http://127.0.0.1:{}/api/v1/media/{hash}?expires=",
            gw.addr.port()
        )),
        "{link}"
    );
    let got = reqwest::get(&link).await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.headers()["content-type"], "image/jpeg");
    assert_eq!(got.headers()["x-content-type-options"], "nosniff");
    assert_eq!(
        sha256_hex(&got.bytes().await.unwrap()),
        hash,
        "the link serves the same bytes"
    );

    // A link is only as good as its signature and its expiry.
    let (base, _) = link.split_once("&sig=").unwrap();
    for (bad, why) in [
        (format!("{base}&sig=00"), "signature is wrong"),
        (
            link.replacen("expires=", "expires=9", 1),
            "signature is wrong",
        ),
        (base.to_owned(), "needs its expires and sig"),
    ] {
        let answer = reqwest::get(&bad).await.unwrap();
        assert_eq!(answer.status(), 403, "{bad}");
        let body: Value = answer.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(why), "{body}");
    }
    assert_eq!(fake.media_gets(), vec!["img-1"]);
    gw.stop().await;
}

#[tokio::test]
async fn a_file_keeps_its_name_and_a_refused_media_id_still_reaches_the_agent() {
    let fake = FakeWecom::start().await;
    let report = "列1,列2\n1,2\n".as_bytes().to_vec();
    fake.add_media(
        "file-1",
        "application/octet-stream",
        Some("报告.csv"),
        &report,
    );
    let (url, turns) = agent(vec![
        json!({"reply": "read it"}),
        json!({"reply": "lost it"}),
    ])
    .await;
    let mut cfg = with_http_agent(&fake, url);
    // With the push API on, links still need no token.
    cfg.api_tokens = vec![secrecy::SecretString::from("api-token").into()];
    let gw = TestApp::spawn(cfg).await;
    // A 502 on the way is retried, as sends are.
    fake.fail_media_gets(1);
    send_media(&gw, &fake, "file", "file-1", 1).await;
    // WeCom keeps media 3 days: an unknown media_id is errcode 40007, which no retry heals.
    let (q, body) = APP_A.callback(&APP_A.media_xml("zhangsan", "file", "expired-1", 2));
    assert_eq!(gw.post_callback(&q, body).await.status(), 200);
    fake.wait_for_sends(2).await;
    let turns = turns.lock().unwrap().clone();

    let file = &turns[0]["media"];
    assert_eq!(
        file["file_name"], "报告.csv",
        "the name from Content-Disposition"
    );
    assert!(file["path"].as_str().unwrap().ends_with(".csv"), "{file}");
    assert_eq!(
        std::fs::read(file["path"].as_str().unwrap()).unwrap(),
        report
    );
    let served = reqwest::get(file["url"].as_str().unwrap()).await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()["content-disposition"],
        "attachment; filename*=UTF-8''%E6%8A%A5%E5%91%8A%2Ecsv"
    );
    assert_eq!(served.bytes().await.unwrap(), report);

    let lost = &turns[1];
    assert_eq!(lost["media"]["kind"], "file");
    assert_eq!(
        lost["media"]["file_name"], "callback-name.bin",
        "the callback's name"
    );
    assert_eq!(lost["media"]["path"], Value::Null);
    assert_eq!(lost["media"]["url"], Value::Null);
    let error = lost["media_error"].as_str().unwrap();
    assert!(
        error.contains("40007") && error.contains("invalid media_id"),
        "{error}"
    );
    assert_eq!(
        fake.media_gets(),
        vec!["file-1", "file-1", "expired-1"],
        "a 502 is retried, 40007 is not"
    );
    assert_eq!(
        fake.sends()[1].content(),
        "lost it",
        "the message was not dropped"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_file_over_media_max_bytes_is_not_kept_and_the_agent_is_told() {
    let fake = FakeWecom::start().await;
    fake.add_media("big-1", "video/mp4", None, &vec![7u8; 5000]);
    // The same, streamed without a Content-Length: cut off at the cap while it arrives.
    fake.add_media("stream-big", "video/mp4", None, &vec![7u8; 5000]);
    let answers = vec![json!({"reply": "too big"}), json!({"reply": "too big"})];
    let (url, turns) = agent(answers).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = with_http_agent(&fake, url);
    cfg.media.max_bytes = 4096;
    cfg.data_dir = dir.path().to_path_buf();
    let gw = TestApp::spawn(cfg).await;
    send_media(&gw, &fake, "video", "big-1", 1).await;
    let (q, body) = APP_A.callback(&APP_A.media_xml("zhangsan", "video", "stream-big", 2));
    assert_eq!(gw.post_callback(&q, body).await.status(), 200);
    fake.wait_for_sends(2).await;
    for turn in turns.lock().unwrap().iter() {
        let error = turn["media_error"].as_str().unwrap();
        let cap = "larger than media.max_bytes (4096 bytes)";
        assert!(error.contains(cap), "{error}");
    }
    let gets = fake.media_gets().len();
    assert_eq!(gets, 2, "a file too large is not fetched again");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("media"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing of it is kept: {left:?}");
    gw.stop().await;
}

#[tokio::test]
async fn with_postgresql_a_replica_without_the_file_serves_its_link() {
    let Some(pg) = crate::support::postgres::Postgres::start().await else {
        return;
    };
    let fake = FakeWecom::start().await;
    let photo = jpeg(5000);
    fake.add_media("img-r", "image/jpeg", None, &photo);
    let (url, turns) = agent(vec![json!({"reply": "seen"})]).await;
    let url_pg = wecom_gateway::config::PostgresUrl::parse(&pg.url()).unwrap();
    let store = wecom_gateway::config::StoreKind::Postgres(url_pg);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let replica = |dir: &tempfile::TempDir| {
        let mut cfg = with_http_agent(&fake, url.clone());
        cfg.store = store.clone();
        cfg.data_dir = dir.path().to_path_buf();
        cfg
    };
    let a = TestApp::spawn(replica(&dir_a)).await;
    let b = TestApp::spawn(replica(&dir_b)).await;
    send_media(&a, &fake, "image", "img-r", 1).await;
    let link = turns.lock().unwrap()[0]["media"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    // Either replica may have taken the job: ask the other, which never downloaded the file.
    let (ports, dirs) = ([a.addr.port(), b.addr.port()], [&dir_a, &dir_b]);
    let fetched_by = usize::from(link.contains(&format!(":{}/", ports[1])));
    let other = 1 - fetched_by;
    let other_media = dirs[other].path().join("media");
    let count = |dir: &std::path::Path| std::fs::read_dir(dir).map_or(0, |d| d.count());
    assert_eq!(count(&other_media), 0, "the other replica has no copy yet");
    let elsewhere = link.replace(
        &format!(":{}/", ports[fetched_by]),
        &format!(":{}/", ports[other]),
    );
    assert_ne!(elsewhere, link);
    let served = reqwest::get(&elsewhere).await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.bytes().await.unwrap(),
        photo,
        "from the database's copy"
    );
    assert_eq!(count(&other_media), 1, "and kept on its disk from then on");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn received_files_older_than_the_retention_go_and_partial_downloads_too() {
    use wecom_gateway::received::Received;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(wecom_gateway::store::MemoryStore::new(
        8,
        Duration::from_secs(1),
    ));
    let received = Received::new(
        dir.path(),
        store,
        1 << 20,
        "http://127.0.0.1:1".into(),
        Duration::from_secs(3600),
    );
    let media = received.dir().to_path_buf();
    std::fs::create_dir_all(&media).unwrap();
    let aged = |name: &str, age: Duration| {
        let file = std::fs::File::create(media.join(name)).unwrap();
        file.set_modified(std::time::SystemTime::now() - age)
            .unwrap();
    };
    let day = Duration::from_secs(86_400);
    aged("old.jpg", 8 * day);
    aged("recent.jpg", 2 * day);
    aged(".part-old", 2 * day);
    aged(".part-fresh", Duration::from_secs(60));
    assert_eq!(received.prune(7 * day).await, 2);
    let mut left: Vec<String> = std::fs::read_dir(&media)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec![".part-fresh", "recent.jpg"]);
}
