//! End to end over HTTP: the gateway on 127.0.0.1:0 against a fake WeCom API on 127.0.0.1:0.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use tokio::sync::Semaphore;
use wecom_gateway::config::Allowlist;

#[tokio::test]
async fn text_message_gets_a_reply_through_message_send() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(config(&[APP_A], &fake.base_url())).await;

    app.send_text(&APP_A, "zhangsan", "你好, gateway", 1).await;

    let sends = fake.wait_for_sends(1).await;
    assert_eq!(sends.len(), 1);
    let sent = &sends[0];
    assert_eq!(sent.access_token, "tok-alpha-secret-value-1");
    assert_eq!(sent.agentid(), 1000002);
    assert_eq!(sent.touser(), "zhangsan");
    assert_eq!(sent.body["msgtype"], "text");
    assert_eq!(sent.content(), "你好, gateway");
    app.stop().await;
}

#[tokio::test]
async fn official_post_vector_is_accepted_and_answered() {
    let fake = FakeWecom::start().await;
    let mut cfg = config(&[APP_A, APP_B], &fake.base_url());
    // The published vectors were signed in 2014: only without a replay window.
    cfg.replay_window = Duration::ZERO;
    let app = TestApp::spawn(cfg).await;
    // Set B's published callback, byte for byte.
    let query = "msg_signature=477715d11cdb4164915debcba66cb864d751f3e6&timestamp=1409659813&nonce=1372623149";
    let body = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA[RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izoun1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUax5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==]]></Encrypt><AgentID><![CDATA[218]]></AgentID></xml>";
    let resp = app.post_callback(query, body.to_string()).await;
    assert_eq!(resp.status(), 200);
    let sends = fake.wait_for_sends(1).await;
    assert_eq!(sends[0].touser(), "mycreate");
    assert_eq!(sends[0].content(), "hello");
    assert_eq!(sends[0].agentid(), 218);
    app.stop().await;
}

#[tokio::test]
async fn url_verification_with_official_vectors() {
    let fake = FakeWecom::start().await;
    let mut cfg = config(&[APP_A, APP_B], &fake.base_url());
    cfg.replay_window = Duration::ZERO;
    let app = TestApp::spawn(cfg).await;

    // Set B exactly as the official sample's request line shows it: %2F, %2B and %3D in echostr.
    let resp = app
        .http
        .get(app.url("/wecom/callback?msg_signature=5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3&timestamp=1409659589&nonce=263014780&echostr=P9nAzCzyDtyTWESHep1vC5X9xho%2FqYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp%2B4RPcs8TgAE7OaBO%2BFZXvnaqQ%3D%3D"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.bytes().await.unwrap().as_ref(),
        b"1616140317555161061",
        "bare plaintext: no quotes, newline or BOM"
    );

    // Set A's echostr (it holds both + and /), fully percent-encoded.
    let echostr =
        "fsi1xnbH4yQh0+PJxcOdhhK6TDXkjMyhEPA7xB2TGz6b+g7xyAbEkRxN/3cNXW9qdqjnoVzEtpbhnFyq6SVHyA==";
    let encoded = utf8_percent_encode(echostr, NON_ALPHANUMERIC).to_string();
    let url = format!("/wecom/callback?msg_signature=012bc692d0a58dd4b10f8dfe5c4ac00ae211ebeb&timestamp=1476416373&nonce=47744683&echostr={encoded}");
    let resp = app.http.get(app.url(&url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "1288432023552776189");

    // A literal + (not encoded) must stay +, not become a space.
    let url = format!(
        "/wecom/callback?msg_signature=012bc692d0a58dd4b10f8dfe5c4ac00ae211ebeb&timestamp=1476416373&nonce=47744683&echostr={}",
        echostr.replace('/', "%2F").replace('=', "%3D")
    );
    let resp = app.http.get(app.url(&url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "1288432023552776189");

    // Double-encoded echostr is decoded once only, so it no longer matches the signature.
    let double = utf8_percent_encode(&encoded, NON_ALPHANUMERIC).to_string();
    let url = format!("/wecom/callback?msg_signature=012bc692d0a58dd4b10f8dfe5c4ac00ae211ebeb&timestamp=1476416373&nonce=47744683&echostr={double}");
    assert_eq!(
        app.http.get(app.url(&url)).send().await.unwrap().status(),
        403
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_answers() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(config(&[APP_A], &fake.base_url())).await;
    let (query, body) = APP_A.callback(&APP_A.text_xml("u", "hi", 9));

    // WeCom reads only the status: every refusal has an empty body (the log says why).
    async fn refused(resp: reqwest::Response) -> u16 {
        let status = resp.status().as_u16();
        assert_eq!(
            resp.text().await.unwrap(),
            "",
            "an error answer's body is empty"
        );
        status
    }

    // Wrong signature: 403.
    let forged = query.replacen("msg_signature=", "msg_signature=0", 1);
    let resp = app.post_callback(&forged, body.clone()).await;
    assert_eq!(refused(resp).await, 403);

    // Missing query parameters: 400.
    let resp = app.post_callback("timestamp=1&nonce=2", body.clone()).await;
    assert_eq!(refused(resp).await, 400);

    // Malformed XML and missing Encrypt: 400.
    assert_eq!(
        app.post_callback(&query, "<xml><Encrypt>".into())
            .await
            .status(),
        400
    );
    assert_eq!(
        app.post_callback(&query, "<xml><ToUserName>x</ToUserName></xml>".into())
            .await
            .status(),
        400
    );
    assert_eq!(
        app.post_callback(&query, "\u{0}\u{ff}garbage".into())
            .await
            .status(),
        400
    );

    // Correctly signed but not decryptable: 400.
    let crypt = APP_A.crypt();
    let junk = "QUJDREVGR0hJSktMTU5PUA==";
    let sig = crypt.sign("1", "2", junk);
    let resp = app
        .post_callback(
            &format!("msg_signature={sig}&timestamp=1&nonce=2"),
            format!("<xml><Encrypt>{junk}</Encrypt></xml>"),
        )
        .await;
    assert_eq!(resp.status(), 400);

    // Signed and encrypted by the right token and key but for another corp id: 400.
    let other_corp =
        wecom_gateway::crypto::MsgCrypt::new(APP_A.token, APP_A.aes_key, "wwsomeoneelse").unwrap();
    let e = other_corp.encrypt_msg(&APP_A.text_xml("u", "hi", 10), "1", "2", [1; 16]);
    let resp = app
        .post_callback(
            &format!("msg_signature={}&timestamp=1&nonce=2", e.msg_signature),
            e.to_callback_xml(APP_A.corp_id, "1000002"),
        )
        .await;
    assert_eq!(refused(resp).await, 400);

    // Decrypts, but the message inside is not a WeCom message: 400.
    let (q, b) = APP_A.callback("<xml><MsgType>text</MsgType></xml>");
    assert_eq!(app.post_callback(&q, b).await.status(), 400);

    // Body over the limit: 413.
    let resp = app.post_callback(&query, "x".repeat(65 * 1024)).await;
    assert_eq!(refused(resp).await, 413);

    // GET without echostr: 400.
    let resp = app
        .http
        .get(app.url("/wecom/callback?msg_signature=a&timestamp=1&nonce=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Nothing of the above reached the agent.
    app.send_text(&APP_A, "u", "after the bad ones", 11).await;
    let sends = fake.wait_for_sends(1).await;
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].content(), "after the bad ones");
    app.stop().await;
}

#[tokio::test]
async fn health_answers_ok() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(config(&[APP_A], &fake.base_url())).await;
    let resp = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "ok"}));
    app.stop().await;
}

#[tokio::test]
async fn a_hundred_concurrent_messages_one_gettoken_every_reply() {
    let fake = FakeWecom::start().await;
    let app = Arc::new(TestApp::spawn(config(&[APP_A], &fake.base_url())).await);
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.send_text(
                &APP_A,
                &format!("user{i}"),
                &format!("message {i}"),
                1000 + i,
            )
            .await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sends = fake.wait_for_sends(100).await;
    assert_eq!(sends.len(), 100);
    assert_eq!(fake.gettoken_calls(), 1, "single-flight token fetch");
    let mut contents: Vec<String> = sends
        .iter()
        .map(|s| format!("{}={}", s.touser(), s.content()))
        .collect();
    contents.sort();
    let mut expected: Vec<String> = (0..100).map(|i| format!("user{i}=message {i}")).collect();
    expected.sort();
    assert_eq!(contents, expected);
    Arc::try_unwrap(app).ok().expect("sole owner").stop().await;
}

#[tokio::test]
async fn two_apps_on_one_port_reply_through_their_own_app() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(config(&[APP_A, APP_B], &fake.base_url())).await;
    app.send_text(&APP_A, "alice", "to alpha", 1).await;
    app.send_text(&APP_B, "bob", "to beta", 1).await;
    let sends = fake.wait_for_sends(2).await;
    let alice = sends
        .iter()
        .find(|s| s.touser() == "alice")
        .expect("alice's reply");
    let bob = sends
        .iter()
        .find(|s| s.touser() == "bob")
        .expect("bob's reply");
    assert_eq!((alice.agentid(), alice.content()), (1000002, "to alpha"));
    assert!(
        alice.access_token.starts_with("tok-alpha-secret-value-"),
        "{}",
        alice.access_token
    );
    assert_eq!((bob.agentid(), bob.content()), (218, "to beta"));
    assert!(
        bob.access_token.starts_with("tok-beta-secret-value-"),
        "{}",
        bob.access_token
    );
    assert_eq!(fake.gettoken_calls(), 2, "one token per app");
    app.stop().await;
}

#[tokio::test]
async fn long_chinese_reply_arrives_in_ordered_chunks() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(config(&[APP_A], &fake.base_url())).await;
    // 5000 bytes of three-byte characters with a line break at byte 1801 and four ASCII bytes.
    let mut text = "企".repeat(600);
    text.push('\n');
    text.push_str(&"业微信".repeat(355));
    text.push_str("okok");
    assert_eq!(text.len(), 5000);
    app.send_text(&APP_A, "zhangsan", &text, 77).await;
    let sends = fake.wait_for_sends(3).await;
    let chunks: Vec<&str> = sends.iter().map(|s| s.content()).collect();
    assert!(chunks.len() >= 3, "{}", chunks.len());
    for c in &chunks {
        assert!(c.len() <= 2048, "chunk of {} bytes", c.len());
    }
    // `content()` is a &str, so no chunk holds a broken character; together they are the reply.
    assert_eq!(chunks.concat(), text);
    assert_eq!(
        chunks[0],
        format!("{}\n", "企".repeat(600)),
        "first chunk ends at the line break"
    );
    app.stop().await;
}

#[tokio::test]
async fn unlisted_user_gets_no_agent_call_and_no_reply() {
    let fake = FakeWecom::start().await;
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.workers = 1;
    cfg.allowlist = Allowlist {
        allow_all: false,
        users: vec!["ww1436e0e65a779aee:boss".into(), "Friend".into()],
    };
    let agent = Arc::new(Recording::default());
    let app = TestApp::spawn_with_agent(cfg, agent.clone()).await;

    // Acknowledged all the same, so WeCom does not retry.
    app.send_text(&APP_A, "stranger", "let me in", 1).await;
    app.send_text(&APP_A, "boss", "first", 2).await;
    app.send_text(&APP_A, "friend", "second", 3).await;
    let sends = fake.wait_for_sends(2).await;
    let to: Vec<&str> = sends.iter().map(|s| s.touser()).collect();
    assert_eq!(
        to,
        vec!["boss", "friend"],
        "one worker: the stranger's turn would have come first"
    );
    assert_eq!(agent.seen(), vec!["boss", "friend"]);
    app.stop().await;
}

#[tokio::test]
async fn acknowledgement_does_not_wait_for_the_agent_and_one_user_is_served_in_order() {
    let fake = FakeWecom::start().await;
    let gate = Arc::new(Semaphore::new(0));
    let agent = Arc::new(Gated { gate: gate.clone() });
    let app = TestApp::spawn_with_agent(config(&[APP_A], &fake.base_url()), agent).await;

    // The agent is blocked, yet every callback is acknowledged.
    for i in 1..=5u64 {
        app.send_text(&APP_A, "zhangsan", &format!("turn {i}"), i)
            .await;
    }
    assert!(fake.sends().is_empty());
    gate.add_permits(5);
    let sends = fake.wait_for_sends(5).await;
    let order: Vec<&str> = sends.iter().map(|s| s.content()).collect();
    assert_eq!(
        order,
        vec!["turn 1", "turn 2", "turn 3", "turn 4", "turn 5"]
    );
    app.stop().await;
}

#[tokio::test]
async fn lifecycle_events_do_not_reach_the_agent() {
    let fake = FakeWecom::start().await;
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.workers = 1;
    let agent = Arc::new(Recording::default());
    let app = TestApp::spawn_with_agent(cfg, agent.clone()).await;
    for event in ["subscribe", "enter_agent", "unsubscribe"] {
        let xml = format!("<xml><ToUserName>{}</ToUserName><FromUserName>u1</FromUserName><CreateTime>1700000000</CreateTime><MsgType>event</MsgType><Event>{event}</Event><AgentID>1000002</AgentID></xml>", APP_A.corp_id);
        let (q, b) = APP_A.callback(&xml);
        assert_eq!(app.post_callback(&q, b).await.status(), 200);
    }
    app.send_text(&APP_A, "u2", "hello", 5).await;
    fake.wait_for_sends(1).await;
    assert_eq!(agent.seen(), vec!["u2"]);
    app.stop().await;
}

#[tokio::test]
async fn revoked_token_is_fetched_again_and_the_send_retried_once() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(config(&[APP_A], &fake.base_url())).await;
    app.send_text(&APP_A, "u", "one", 1).await;
    fake.wait_for_sends(1).await;
    fake.revoke_tokens();
    app.send_text(&APP_A, "u", "two", 2).await;
    let sends = fake.wait_for_sends(2).await;
    assert_eq!(sends[1].content(), "two");
    assert_eq!(sends[1].access_token, "tok-alpha-secret-value-2");
    assert_eq!(fake.gettoken_calls(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_callback_signed_outside_the_replay_window_is_refused() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(config(&[APP_A], &fake.base_url())).await;
    let crypt = APP_A.crypt();
    let post = |age: i64, msg_id: u64| {
        let ts = (now_secs() as i64 - age).to_string();
        let xml = APP_A.text_xml("zhangsan", &format!("aged {age}"), msg_id);
        let e = crypt.encrypt_msg(&xml, &ts, "77", [7; 16]);
        let query = format!("msg_signature={}&timestamp={ts}&nonce=77", e.msg_signature);
        (query, e.to_callback_xml(APP_A.corp_id, "1000002"))
    };
    // 299 s old (or ahead) is within the default 300 s; 301 s is not, either way.
    for (age, msg_id, status) in [(299, 1, 200), (-299, 2, 200), (301, 3, 403), (-301, 4, 403)] {
        let (q, body) = post(age, msg_id);
        assert_eq!(
            app.post_callback(&q, body).await.status(),
            status,
            "{age} s"
        );
    }
    let sends = fake.wait_for_sends(2).await;
    let mut got: Vec<&str> = sends.iter().map(|s| s.content()).collect();
    got.sort_unstable();
    assert_eq!(got, vec!["aged -299", "aged 299"]);
    // The URL check too: the console's Save button signs the time it sends.
    let echo = |age: i64| {
        let ts = (now_secs() as i64 - age).to_string();
        let echostr = crypt.encrypt(b"echo-1", [9; 16]);
        let sig = crypt.sign(&ts, "5", &echostr);
        let echostr = utf8_percent_encode(&echostr, NON_ALPHANUMERIC);
        format!("/wecom/callback?msg_signature={sig}&timestamp={ts}&nonce=5&echostr={echostr}")
    };
    let get = |url: String| app.http.get(app.url(&url)).send();
    assert_eq!(get(echo(10)).await.unwrap().status(), 200);
    assert_eq!(get(echo(301)).await.unwrap().status(), 403);
    app.stop().await;

    // replay_window: 0 turns the check off.
    let fake = FakeWecom::start().await;
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.replay_window = Duration::ZERO;
    let app = TestApp::spawn(cfg).await;
    let (q, body) = post(2 * 86_400, 5);
    assert_eq!(app.post_callback(&q, body).await.status(), 200);
    fake.wait_for_sends(1).await;
    app.stop().await;
}

#[tokio::test]
async fn retries_of_a_stored_callback_are_answered_once_however_they_are_signed() {
    let fake = FakeWecom::start().await;
    let app = TestApp::spawn(config(&[APP_A], &fake.base_url())).await;
    let crypt = APP_A.crypt();
    let xml = APP_A.text_xml("zhangsan", "only once", 41);
    let signed = |nonce: &str, iv: u8| {
        let ts = now_secs().to_string();
        let e = crypt.encrypt_msg(&xml, &ts, nonce, [iv; 16]);
        let query = format!(
            "msg_signature={}&timestamp={ts}&nonce={nonce}",
            e.msg_signature
        );
        (query, e.to_callback_xml(APP_A.corp_id, "1000002"))
    };
    let (query, body) = signed("1", 1);
    assert_eq!(app.post_callback(&query, body.clone()).await.status(), 200);
    // Repeated byte for byte (answered from what the gateway remembers having stored) ...
    assert_eq!(app.post_callback(&query, body.clone()).await.status(), 200);
    // ... but never on the strength of a signature it did not check.
    let forged = query.replacen("nonce=1", "nonce=2", 1);
    assert_eq!(app.post_callback(&forged, body).await.status(), 403);
    // Signed again with another nonce and ciphertext: known by its MsgId.
    let (query, body) = signed("3", 3);
    assert_eq!(app.post_callback(&query, body).await.status(), 200);
    // The member's next message is answered after the first (one lane per member), so two
    // replies in all means the retries reached no agent.
    app.send_text(&APP_A, "zhangsan", "next", 42).await;
    let sends = fake.wait_for_sends(2).await;
    let got: Vec<&str> = sends.iter().map(|s| s.content()).collect();
    assert_eq!(got, vec!["only once", "next"]);
    app.stop().await;
}
