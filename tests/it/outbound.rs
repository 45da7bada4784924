//! Reliable outbound against the fake WeCom API: retries, rate limits, robots, the push API.

use std::time::Duration;

use crate::support::*;
use secrecy::SecretString;
use serde_json::{json, Value};
use wecom_gateway::bots::Bot;
use wecom_gateway::ratelimit::Limit;

const TOKEN: &str = "api-token-for-tests";

fn with_api(mut cfg: wecom_gateway::config::Config) -> wecom_gateway::config::Config {
    cfg.api_tokens = vec![SecretString::from(TOKEN).into()];
    cfg.bots = vec![
        Bot::new("ops", SecretString::from("robot-key-ops-0001")),
        Bot::new("removed", SecretString::from("stale-key-0002")),
    ];
    cfg
}

async fn api(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let resp = app
        .http
        .post(app.url(&format!("/api/v1{path}")))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn status_of(app: &TestApp, id: i64) -> Value {
    let resp = app
        .http
        .get(app.url(&format!("/api/v1/deliveries/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn busy_throttled_and_502_answers_are_retried_every_message_once_in_order() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(with_api(config(&[APP_A], &fake.base_url()))).await;

    // App replies: the first three tries meet -1, 45009 and HTTP 502.
    fake.script([
        json!({"errcode": -1, "errmsg": "system busy"}),
        json!({"errcode": 45009, "errmsg": "api freq out of limit"}),
        json!({"http": 502}),
    ]);
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        app.send_text(&APP_A, "zhangsan", text, i as u64 + 1).await;
    }
    let sends = fake.wait_for_sends(3).await;
    let contents: Vec<&str> = sends.iter().map(|s| s.content()).collect();
    assert_eq!(contents, vec!["one", "two", "three"]);

    // Robot pushes: the same trouble.
    fake.script([
        json!({"http": 502}),
        json!({"errcode": 45009, "errmsg": "api freq out of limit"}),
        json!({"errcode": -1}),
    ]);
    for n in 1..=3 {
        let (status, _) = api(
            &app,
            "/notify/ops",
            json!({"subject": format!("alert {n}")}),
        )
        .await;
        assert_eq!(status, 202);
    }
    let robot = fake.wait_for_robot(3).await;
    let texts: Vec<&str> = robot
        .iter()
        .map(|m| m.body["text"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts,
        vec!["[INFO] alert 1", "[INFO] alert 2", "[INFO] alert 3"]
    );
    assert_eq!(fake.calls(), 12, "six failed tries and six deliveries");
    // The status API counts the tries: the first alert failed three times, then went through.
    let first = status_of(&app, 1).await;
    assert_eq!(
        (first["state"].as_str(), first["attempts"].as_u64()),
        (Some("sent"), Some(4))
    );
    app.stop().await;
    assert_eq!(fake.sends().len(), 3);
    assert_eq!(fake.robot_messages().len(), 3);
}

#[tokio::test]
async fn a_burst_of_100_alerts_is_held_to_the_robot_limit_and_nothing_is_dropped() {
    let fake = FakeWecom::start().await;
    let mut cfg = with_api(config(&[APP_A], &fake.base_url()));
    // WeCom's rule is 20 per 60 s; the same rule on a 500 ms window keeps the test short.
    let window = Duration::from_millis(500);
    cfg.bot_limits = vec![Limit { count: 20, window }];
    let app = TestApp::spawn(cfg).await;
    for n in 0..100 {
        let (status, _) = api(
            &app,
            "/notify/ops",
            json!({"severity": "warning", "subject": format!("disk {n}")}),
        )
        .await;
        assert_eq!(status, 202);
    }
    let robot = fake.wait_for_robot(100).await;
    assert_eq!(robot.len(), 100);
    for (n, m) in robot.iter().enumerate() {
        assert_eq!(
            m.body["text"]["content"],
            format!("[WARNING] disk {n}"),
            "in order"
        );
    }
    for i in 20..robot.len() {
        let gap = robot[i].at - robot[i - 20].at;
        assert!(
            gap >= window,
            "messages {} and {i} arrived {gap:?} apart: 21 in one window",
            i - 20
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn errcode_81013_is_not_retried_and_the_failure_is_visible() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(with_api(config(&[APP_A], &fake.base_url()))).await;
    fake.script([json!({"errcode": 81013, "errmsg": "user & party & tag all invalid"})]);
    let (status, first) = api(
        &app,
        "/send",
        json!({"touser": "ghost", "text": "are you there?"}),
    )
    .await;
    assert_eq!(status, 202);
    // A second message to the same member queues behind the first, so once it arrives the first
    // has been settled.
    let (_, second) = api(&app, "/send", json!({"touser": "ghost", "text": "second"})).await;
    fake.wait_for_sends(1).await;
    let failed = status_of(&app, first["ids"][0].as_i64().unwrap()).await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["attempts"], 1, "not retried");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("81013") && error.contains("visible range"),
        "{error}"
    );
    let sent = status_of(&app, second["ids"][0].as_i64().unwrap()).await;
    assert_eq!(sent["state"], "sent");
    assert_eq!(fake.calls(), 2);

    app.stop().await;
}

#[tokio::test]
async fn the_api_checks_tokens_and_bodies() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(with_api(config(&[APP_A], &fake.base_url()))).await;
    let url = app.url("/api/v1/notify/ops");

    let resp = app
        .http
        .post(&url)
        .json(&json!({"subject": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let resp = app
        .http
        .post(&url)
        .bearer_auth("wrong")
        .json(&json!({"subject": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let cases = [
        (
            "/notify/nobody",
            json!({"subject": "x"}),
            404,
            "no robot named \"nobody\"",
        ),
        ("/notify/ops", json!({}), 400, "subject or body is required"),
        (
            "/notify/ops",
            json!({"subjekt": "x"}),
            400,
            "unknown field `subjekt`",
        ),
        (
            "/notify/ops",
            json!({"subject": "x", "format": "html"}),
            400,
            "format: must be text or markdown",
        ),
        (
            "/alertmanager/ops",
            json!({"alerts": []}),
            400,
            "alerts: is empty",
        ),
        (
            "/alertmanager/ops",
            json!({"status": "firing"}),
            400,
            "missing field `alerts`",
        ),
        (
            "/send",
            json!({"touser": "u", "text": "a", "markdown": "b"}),
            400,
            "exactly one of text, markdown, textcard or messages",
        ),
        (
            "/send",
            json!({"touser": "", "text": "a"}),
            400,
            "touser: at least one UserID",
        ),
        (
            "/send",
            json!({"touser": "@all", "text": "a"}),
            403,
            "may not send to departments, tags or @all",
        ),
        (
            "/send",
            json!({"app": "nope", "touser": "u", "text": "a"}),
            404,
            "no app named \"nope\"",
        ),
        (
            "/send",
            json!({"touser": "u", "textcard": {"title": "标".repeat(129), "description": "d", "url": "https://x"}}),
            400,
            "textcard.title: at most 128 characters, got 129",
        ),
        (
            "/send",
            json!({"touser": "u", "textcard": {"title": "t", "description": "d", "url": ""}}),
            400,
            "textcard.url: is required",
        ),
    ];
    for (path, body, want, message) in cases {
        let (status, answer) = api(&app, path, body.clone()).await;
        assert_eq!(status, want, "{path} {body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(message),
            "{path} {body}: {error:?} lacks {message:?}"
        );
    }
    let resp = app
        .http
        .post(&url)
        .bearer_auth(TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = app
        .http
        .get(app.url("/api/v1/deliveries/999"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    app.stop().await;

    // Without tokens the API does not exist.
    let plain = TestApp::spawn(config(&[APP_A], &fake.base_url())).await;
    let resp = plain
        .http
        .post(plain.url("/api/v1/notify/ops"))
        .bearer_auth(TOKEN)
        .json(&json!({"subject": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    plain.stop().await;
    assert!(fake.robot_messages().is_empty() && fake.sends().is_empty());
}

#[tokio::test]
async fn alertmanager_groups_render_the_documented_text() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(with_api(config(&[APP_A], &fake.base_url()))).await;
    let payload = json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"HighLatency\"}",
        "status": "firing",
        "receiver": "wecom",
        "groupLabels": {"alertname": "HighLatency"},
        "commonLabels": {"alertname": "HighLatency", "job": "api", "severity": "critical"},
        "commonAnnotations": {"summary": "p99 latency above 1s"},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {"status": "resolved", "labels": {"alertname": "HighLatency", "job": "api", "severity": "critical", "instance": "node-02"}, "annotations": {}, "startsAt": "2026-11-21T10:00:00Z", "endsAt": "2026-11-21T10:05:00Z"},
            {"status": "firing", "labels": {"alertname": "HighLatency", "job": "api", "severity": "critical", "instance": "node-01"}, "annotations": {"summary": "p99 latency 1.8s"}, "startsAt": "2026-11-21T10:00:00Z"},
            {"status": "firing", "labels": {"alertname": "HighLatency", "job": "api", "severity": "critical", "instance": "node-03"}, "annotations": {}, "startsAt": "2026-11-21T10:01:00Z"}
        ]
    });
    let (status, _) = api(&app, "/alertmanager/ops", payload).await;
    assert_eq!(status, 202);
    let resolved = json!({
        "status": "resolved",
        "groupKey": "{}:{alertname=\"DiskFull\"}",
        "groupLabels": {"alertname": "DiskFull"},
        "commonLabels": {"alertname": "DiskFull", "severity": "warning", "instance": "db-1"},
        "commonAnnotations": {"description": "disk /data above 90%"},
        "alerts": [{"status": "resolved", "labels": {"alertname": "DiskFull", "severity": "warning", "instance": "db-1"}, "annotations": {}}]
    });
    let (status, _) = api(&app, "/alertmanager/ops", resolved).await;
    assert_eq!(status, 202);
    let robot = fake.wait_for_robot(2).await;
    assert_eq!(
        robot[0].body["text"]["content"],
        "[CRITICAL] FIRING: HighLatency (2 firing, 1 resolved)\nFIRING instance=node-01: p99 latency 1.8s\nFIRING instance=node-03: p99 latency above 1s\nRESOLVED instance=node-02: p99 latency above 1s\nsource: alertmanager\ndedupe: {}:{alertname=\"HighLatency\"}"
    );
    assert_eq!(
        robot[1].body["text"]["content"],
        "[RESOLVED] DiskFull (1 resolved)\nRESOLVED: disk /data above 90%\nsource: alertmanager\ndedupe: {}:{alertname=\"DiskFull\"}"
    );
    app.stop().await;
}

#[tokio::test]
async fn app_pushes_markdown_textcard_and_the_users_last_app() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(with_api(config(&[APP_A, APP_B], &fake.base_url()))).await;

    // bob wrote to app beta; a push without `app` follows him there.
    app.send_text(&APP_B, "bob", "hello beta", 1).await;
    fake.wait_for_sends(1).await;
    let (status, answer) = api(
        &app,
        "/send",
        json!({"touser": "bob", "markdown": format!("# 报告\n{}", "行".repeat(700))}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer["ids"].as_array().unwrap().len(),
        2,
        "2100 bytes of markdown: two pieces"
    );
    let (status, _) = api(&app, "/send", json!({"app": "alpha", "touser": ["carol", "dave"], "textcard": {"title": "审批", "description": "<div class=\"gray\">今天</div>", "url": "https://example.com/a", "btntxt": "查看"}})).await;
    assert_eq!(status, 202);
    let sends = fake.wait_for_sends(5).await;
    let markdown: Vec<&Value> = sends
        .iter()
        .filter(|s| s.body["msgtype"] == "markdown")
        .map(|s| &s.body)
        .collect();
    assert_eq!(markdown.len(), 2);
    assert!(markdown
        .iter()
        .all(|b| b["agentid"] == 218 && b["touser"] == "bob"));
    let joined: String = markdown
        .iter()
        .map(|b| b["markdown"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(joined, format!("# 报告\n{}", "行".repeat(700)));
    let cards: Vec<&Value> = sends
        .iter()
        .filter(|s| s.body["msgtype"] == "textcard")
        .map(|s| &s.body)
        .collect();
    assert_eq!(cards.len(), 2);
    assert_eq!(
        cards[0]["textcard"],
        json!({"title": "审批", "description": "<div class=\"gray\">今天</div>", "url": "https://example.com/a", "btntxt": "查看"})
    );
    assert!(cards.iter().all(|c| c["agentid"] == 1000002));

    // Several apps and a user who never wrote: the app must be named.
    let (status, answer) = api(&app, "/send", json!({"touser": "stranger", "text": "hi"})).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("app: required"));
    app.stop().await;
}

#[tokio::test]
async fn accepted_pushes_still_waiting_at_a_stop_are_delivered_after_the_restart() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = with_api(config(&[APP_A], &fake.base_url()));
    cfg.data_dir = dir.path().to_path_buf();
    cfg.shutdown_grace_secs = 1;
    // One message an hour: the second push cannot go out before the stop, whether the queue has
    // started on it (it waits in the limiter) or not; either way it stays stored.
    cfg.bot_limits = vec![Limit {
        count: 1,
        window: Duration::from_secs(3600),
    }];
    let app = TestApp::spawn(cfg.clone()).await;
    for subject in ["first", "second"] {
        let (status, _) = api(&app, "/notify/ops", json!({ "subject": subject })).await;
        assert_eq!(status, 202);
    }
    fake.wait_for_robot(1).await;
    app.stop().await;
    assert_eq!(fake.robot_messages().len(), 1);

    cfg.bot_limits = wecom_gateway::outbound::default_bot_limits();
    let app = TestApp::spawn(cfg).await;
    let robot = fake.wait_for_robot(2).await;
    let texts: Vec<&str> = robot
        .iter()
        .map(|m| m.body["text"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["[INFO] first", "[INFO] second"]);
    assert_eq!(status_of(&app, 2).await["state"], "sent");
    app.stop().await;
}

/// A UserID is only unique within a corp: `corp_id:user_id` picks one, and a bare UserID that has
/// written in two corps is refused with 409 naming both, never guessed.
#[tokio::test]
async fn a_user_in_two_corps_is_addressed_by_corp_or_refused_with_409() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(with_api(config(&[APP_A, APP_B], &fake.base_url()))).await;
    app.send_text(&APP_A, "zhangsan", "to alpha", 1).await;
    app.send_text(&APP_B, "zhangsan", "to beta", 1).await;
    fake.wait_for_sends(2).await;

    let (status, answer) = api(&app, "/send", json!({"touser": "zhangsan", "text": "x"})).await;
    assert_eq!(status, 409, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    for named in [
        "ww1436e0e65a779aee:zhangsan through app alpha",
        "wx5823bf96d3bd56c7:zhangsan through app beta",
    ] {
        assert!(error.contains(named), "{error}");
    }

    let to_beta = json!({"touser": "wx5823bf96d3bd56c7:zhangsan", "text": "only beta"});
    let (status, answer) = api(&app, "/send", to_beta).await;
    assert_eq!(status, 202, "{answer}");
    let sends = fake.wait_for_sends(3).await;
    assert_eq!(
        (sends[2].touser(), sends[2].agentid(), sends[2].content()),
        ("zhangsan", 218, "only beta")
    );

    // A corp that does not match the named app, or that is not configured: 400.
    let wrong = json!({"app": "alpha", "touser": "wx5823bf96d3bd56c7:zhangsan", "text": "x"});
    assert_eq!(api(&app, "/send", wrong).await.0, 400);
    let unknown = json!({"touser": "wwnope:zhangsan", "text": "x"});
    let (status, answer) = api(&app, "/send", unknown).await;
    assert_eq!(status, 400);
    assert!(answer["error"]
        .as_str()
        .unwrap_or_default()
        .contains("no app of corp wwnope"));
    app.stop().await;
}

const BROADCASTER: &str = "api-token-that-may-broadcast";

/// App A with the API on: TOKEN, and BROADCASTER with scope broadcast.
fn with_broadcaster(fake: &FakeWecom) -> wecom_gateway::config::Config {
    let mut cfg = with_api(config(&[APP_A], &fake.base_url()));
    cfg.api_tokens.push(wecom_gateway::config::ApiToken {
        token: SecretString::from(BROADCASTER),
        broadcast: true,
    });
    cfg
}

async fn api_as(app: &TestApp, token: &str, body: Value) -> (u16, Value) {
    let resp = (app.http.post(app.url("/api/v1/send")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn departments_tags_and_all_need_the_broadcast_scope_and_group_chats_take_chatid() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(with_broadcaster(&fake)).await;
    for body in [
        json!({"toparty": "2", "text": "a"}),
        json!({"totag": ["7"], "text": "a"}),
        json!({"touser": "zhangsan|@all", "text": "a"}),
        json!({"touser": "ww1436e0e65a779aee:@ALL", "text": "a"}),
    ] {
        let (status, answer) = api_as(&app, TOKEN, body.clone()).await;
        assert_eq!(status, 403, "{body}: {answer}");
        assert!(answer["error"]
            .as_str()
            .unwrap()
            .contains("scopes: [broadcast]"));
    }
    // Several UserIDs in one list entry would be one message/send to all of them.
    let one_entry = json!({"touser": ["zhangsan|@all"], "text": "a"});
    let (status, answer) = api_as(&app, TOKEN, one_entry).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("holds several UserIDs"));
    let everyone =
        json!({"touser": "lisi", "toparty": "2|3", "totag": ["7"], "markdown": "**all hands**"});
    let (status, answer) = api_as(&app, BROADCASTER, everyone).await;
    assert_eq!(status, 202, "{answer}");
    let sends = fake.wait_for_sends(1).await;
    let body = &sends[0].body;
    assert_eq!(
        (
            &body["touser"],
            &body["toparty"],
            &body["totag"],
            &body["agentid"]
        ),
        (&json!("lisi"), &json!("2|3"), &json!("7"), &json!(1000002)),
        "one message/send for the whole audience: {body}"
    );
    let id = answer["ids"][0].as_i64().unwrap();
    assert_eq!(
        status_of(&app, id).await["target"],
        json!({"kind": "broadcast", "app": "alpha", "touser": "lisi", "toparty": "2|3", "totag": "7"})
    );

    // A group chat the app created: appchat/send, with chatid and no agentid; any token.
    let (status, answer) = api_as(&app, TOKEN, json!({"chatid": "grp-1", "text": "standup"})).await;
    assert_eq!(status, 202, "{answer}");
    let sends = fake.wait_for_sends(2).await;
    assert_eq!(
        sends[1].body,
        json!({"chatid": "grp-1", "msgtype": "text", "text": {"content": "standup"}})
    );
    for (body, why) in [
        (
            json!({"chatid": "grp-1", "touser": "u", "text": "a"}),
            "not both",
        ),
        (
            json!({"chatid": "grp-1", "messages": [{"msgtype": "template_card", "template_card": {"card_type": "text_notice"}}]}),
            "does not take template cards",
        ),
    ] {
        let (status, answer) = api_as(&app, TOKEN, body).await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(why), "{answer}");
    }
    app.stop().await;
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let resp = (app.http.get(app.url(&format!("/api/v1{path}"))))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn failed_work_is_listed_with_its_errcode_and_sent_again_on_retry_without_asking_the_agent() {
    let fake = FakeWecom::start().await;
    let agent = std::sync::Arc::new(Recording::default());
    let app =
        TestApp::spawn_with_agent(with_api(config(&[APP_A], &fake.base_url())), agent.clone())
            .await;
    // The reply to a member's message and a push both meet 81013 (not retried): both fail.
    fake.script([
        json!({"errcode": 81013, "errmsg": "user & party & tag all invalid"}),
        json!({"errcode": 81013, "errmsg": "user & party & tag all invalid"}),
    ]);
    app.send_text(&APP_A, "zhangsan", "first", 1).await;
    let (status, _) = api(&app, "/send", json!({"touser": "lisi", "text": "pushed"})).await;
    assert_eq!(status, 202);
    fake.wait_for_script_used().await;
    // Later work for the same member and target queues behind: once it is out, the first failed.
    app.send_text(&APP_A, "zhangsan", "second", 2).await;
    api(&app, "/send", json!({"touser": "lisi", "text": "after"})).await;
    fake.wait_for_sends(2).await;

    let (status, list) = get(&app, "/failed").await;
    assert_eq!(status, 200);
    let items = list["failed"].as_array().unwrap();
    let ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(items.len(), 2, "{list}");
    let job = items
        .iter()
        .find(|i| i["id"].as_str().unwrap().starts_with("job-"))
        .unwrap();
    assert_eq!(job["member"], "ww1436e0e65a779aee:zhangsan");
    assert_eq!(job["errcode"], 81013);
    assert!(
        job["hint"].as_str().unwrap().contains("visible range"),
        "{job}"
    );
    let push = items
        .iter()
        .find(|i| i["id"].as_str().unwrap().starts_with("delivery-"))
        .unwrap();
    assert_eq!(
        (push["app"].as_str(), push["member"].as_str()),
        (Some("alpha"), Some("lisi"))
    );

    for id in &ids {
        let (status, answer) = api(&app, &format!("/failed/{id}/retry"), json!({})).await;
        assert_eq!(status, 202, "{answer}");
    }
    let sends = fake.wait_for_sends(4).await;
    let mut again: Vec<&str> = sends[2..].iter().map(|s| s.content()).collect();
    again.sort_unstable();
    assert_eq!(
        again,
        vec!["first", "pushed"],
        "the recorded reply and the push, once each"
    );
    assert_eq!(
        agent.seen(),
        vec!["zhangsan", "zhangsan"],
        "the agent is not asked again"
    );
    let (_, list) = get(&app, "/failed").await;
    assert_eq!(
        list["failed"],
        json!([]),
        "retried work is no longer listed"
    );
    let (status, _) = api(&app, &format!("/failed/{}/retry", ids[0]), json!({})).await;
    assert_eq!(status, 404, "a failure is retried once");
    let (status, _) = api(&app, "/failed/nonsense/retry", json!({})).await;
    assert_eq!(status, 400);
    app.stop().await;
}

#[tokio::test]
async fn retrying_a_failed_broadcast_needs_the_broadcast_scope() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(with_broadcaster(&fake)).await;
    fake.script([json!({"errcode": 81013, "errmsg": "user & party & tag all invalid"})]);
    let (status, answer) = api_as(&app, BROADCASTER, json!({"toparty": "9", "text": "all"})).await;
    assert_eq!(status, 202);
    let id = answer["ids"][0].as_i64().unwrap();
    // The next broadcast waits behind it: once it is out, the first has failed.
    api_as(&app, BROADCASTER, json!({"toparty": "9", "text": "next"})).await;
    fake.wait_for_sends(1).await;
    let retry = |token: &'static str| {
        (app.http
            .post(app.url(&format!("/api/v1/failed/delivery-{id}/retry"))))
        .bearer_auth(token)
        .send()
    };
    assert_eq!(
        retry(TOKEN).await.unwrap().status(),
        403,
        "a plain token may not"
    );
    assert_eq!(retry(BROADCASTER).await.unwrap().status(), 202);
    let sends = fake.wait_for_sends(2).await;
    assert_eq!(sends[1].content(), "all");
    app.stop().await;
}
