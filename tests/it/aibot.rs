//! WeCom AI bots (智能机器人) over the long connection, against the test double of WeCom's
//! endpoint (`support::aibot`): subscribing and reconnecting, streamed replies that grow while
//! the agent writes, groups and mentions, the allowlists, and what the member sees when the
//! bubble cannot be finished.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;
use wecom_gateway::agent::{Agent, AgentError, Turn};
use wecom_gateway::aibot::settings::{AiBotConfig, Chats, GroupSession, Mode};
use wecom_gateway::config::{Allowlist, Config};
use wecom_gateway::wecom::AppMessage;

use crate::support::aibot::*;
use crate::support::*;

pub const BOT_ID: &str = "aib-test-1";
pub const SECRET: &str = "aibot-secret-value-1";

/// A bot on `fake`, open to everyone and every group, with an in-process config.
pub fn aibot_config(fake: &FakeAiBot) -> Config {
    fake.add_bot(BOT_ID, SECRET);
    let mut config = config(&[], "http://127.0.0.1:9");
    config.aibots.push(AiBotConfig {
        name: "helper".into(),
        bot_id: BOT_ID.into(),
        mode: Mode::LongConnection {
            secret: SECRET.into(),
        },
        allowlist: Allowlist {
            allow_all: true,
            users: vec![],
        },
        chats: Chats {
            all: true,
            ids: vec![],
        },
        group_session: GroupSession::Member,
        welcome: Some("你好，我是助手".into()),
        agent: None,
    });
    config.aibot.ws_url = fake.url();
    config.aibot.update_every = Duration::from_millis(50);
    config
}

/// An agent that writes its answer in pieces, each only once the test lets it (a permit per
/// piece): the test sees each update before the next piece exists.
pub struct Writing {
    pub pieces: Vec<String>,
    pub gate: Arc<Semaphore>,
}

#[async_trait]
impl Agent for Writing {
    fn name(&self) -> &str {
        "writing"
    }
    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
        for piece in &self.pieces {
            self.gate
                .acquire()
                .await
                .map_err(|e| AgentError::Failed(e.to_string()))?
                .forget();
            if let Some(partial) = turn.partial {
                partial.push(piece);
            }
        }
        Ok(vec![AppMessage::text(self.pieces.concat())])
    }
}

#[tokio::test]
async fn a_message_gets_a_streamed_reply_that_grows_while_the_agent_writes() {
    let fake = FakeAiBot::start().await;
    let gate = Arc::new(Semaphore::new(0));
    let pieces: Vec<String> = ["第一段。", "第二段。", "第三段。"]
        .map(String::from)
        .to_vec();
    let agent = Writing {
        pieces: pieces.clone(),
        gate: gate.clone(),
    };
    let app = TestApp::spawn_with_agent(aibot_config(&fake), Arc::new(agent)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;

    let sent = fake.inject_text(BOT_ID, "zhangsan", "写三段").await;
    // The placeholder at once, then each piece as it is written: the bubble grows.
    let mut expected = vec!["思考中…".to_owned()];
    wait_for_updates(&fake, &sent.req_id, &expected).await;
    let mut so_far = String::new();
    for piece in &pieces {
        gate.add_permits(1);
        so_far.push_str(piece);
        expected.push(so_far.clone());
        wait_for_updates(&fake, &sent.req_id, &expected).await;
    }
    let bubble = fake.wait_for_finished(&sent.req_id).await;
    assert_eq!(bubble.content, pieces.concat());
    assert_eq!(fake.bubbles(&sent.req_id).len(), 1, "one bubble");
    let finishes = fake
        .replies(&sent.req_id)
        .iter()
        .filter(|r| r["stream"]["finish"] == true)
        .count();
    assert_eq!(finishes, 1, "finished once");
    assert!(
        fake.pushed("zhangsan").is_empty(),
        "nothing sent beside the bubble"
    );
    // Counted by bot (other tests' bots count too: only that these are counted is asserted).
    let metrics = wecom_gateway::metrics::render();
    for line in [
        "wecom_gateway_aibot_messages_total{aibot=\"helper\",result=\"queued\"}",
        "wecom_gateway_aibot_frames_total{aibot=\"helper\",result=\"ok\"}",
        "wecom_gateway_agent_seconds_count{agent=\"writing\",channel=\"aibot\"}",
    ] {
        assert!(metrics.contains(line), "no {line} in:\n{metrics}");
    }
    app.stop().await;
}

/// Wait until the bubble's accepted updates are `expected` (in order, the last the newest).
async fn wait_for_updates(fake: &FakeAiBot, req_id: &str, expected: &[String]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // Counted first: a frame that lands after the check below is waited for, not missed.
        let seen = fake.frames().len();
        let updates = fake.stream_updates(req_id);
        if updates.last() == expected.last() {
            // Every update is one the member was meant to see, in order.
            let mut want = expected.iter();
            for update in &updates {
                assert!(
                    want.any(|w| w == update),
                    "unexpected update {update:?}; expected {expected:?}, got {updates:?}"
                );
            }
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("updates {updates:?}, waiting for {expected:?}");
        }
        fake.wait_for_frames(seen + 1, |_| true).await;
    }
}

/// Answers every message with the same text.
pub struct Says(pub String);

#[async_trait]
impl Agent for Says {
    fn name(&self) -> &str {
        "says"
    }
    async fn reply(&self, _: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
        Ok(vec![AppMessage::text(self.0.clone())])
    }
}

/// Echoes what the member wrote, with whom and where: `user@chat: text`.
pub struct Echo;

#[async_trait]
impl Agent for Echo {
    fn name(&self) -> &str {
        "echo-where"
    }
    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
        let text = match &turn.message.kind {
            wecom_gateway::message::MessageKind::Text { content } => content.clone(),
            _ => turn.message.describe(),
        };
        let chat = turn.chat_id.unwrap_or("-");
        Ok(vec![AppMessage::text(format!(
            "{}@{chat}: {text}",
            turn.user_id
        ))])
    }
}

#[tokio::test]
async fn in_a_group_only_a_mention_reaches_the_agent_and_the_answer_goes_to_the_group() {
    let fake = FakeAiBot::start().await;
    let mut config = aibot_config(&fake);
    config.aibots[0].chats = Chats {
        all: false,
        ids: vec!["wrkGroup1".into()],
    };
    let app = TestApp::spawn_with_agent(config, Arc::new(Echo)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;

    let unmentioned = fake
        .inject_group_text(BOT_ID, "wrkGroup1", "lisi", "大家好")
        .await;
    let other_group = fake
        .inject_group_text(BOT_ID, "wrkOther", "lisi", "@助手 在吗")
        .await;
    let mentioned = fake
        .inject_group_text(BOT_ID, "wrkGroup1", "lisi", "@助手 今天开会吗")
        .await;
    let bubble = fake.wait_for_finished(&mentioned.req_id).await;
    assert_eq!(
        bubble.content, "lisi@wrkGroup1: 今天开会吗",
        "the mention is removed, the chat named"
    );
    // Received in order on one connection: the two before it were decided first.
    assert!(
        fake.replies(&unmentioned.req_id).is_empty(),
        "not mentioned: ignored"
    );
    assert!(
        fake.replies(&other_group.req_id).is_empty(),
        "a group not in allowed_chats: ignored"
    );
    app.stop().await;
}

#[tokio::test]
async fn members_not_on_the_bots_allowlist_are_not_answered() {
    let fake = FakeAiBot::start().await;
    let mut config = aibot_config(&fake);
    config.aibots[0].allowlist = Allowlist {
        allow_all: false,
        users: vec!["zhangsan".into()],
    };
    let app = TestApp::spawn_with_agent(config, Arc::new(Echo)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let refused = fake.inject_text(BOT_ID, "wangwu", "hi").await;
    let allowed = fake.inject_text(BOT_ID, "zhangsan", "hi").await;
    assert_eq!(
        fake.wait_for_finished(&allowed.req_id).await.content,
        "zhangsan@-: hi"
    );
    assert!(fake.replies(&refused.req_id).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_message_wecom_sends_twice_is_answered_once_and_opening_the_chat_gets_the_welcome() {
    let fake = FakeAiBot::start().await;
    let app = TestApp::spawn_with_agent(aibot_config(&fake), Arc::new(Echo)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let opened = fake.inject_enter_chat(BOT_ID, "zhangsan").await;
    let first = fake.inject_text(BOT_ID, "zhangsan", "once").await;
    let again = fake.inject_again(&first).await;
    let after = fake.inject_text(BOT_ID, "zhangsan", "after").await;
    fake.wait_for_finished(&after.req_id).await;
    assert_eq!(
        fake.wait_for_finished(&first.req_id).await.content,
        "zhangsan@-: once"
    );
    assert!(
        fake.replies(&again.req_id).is_empty(),
        "the second push of a msgid is not answered"
    );
    let welcome = fake.replies(&opened.req_id);
    assert_eq!(welcome.len(), 1, "{welcome:?}");
    assert_eq!(welcome[0]["text"]["content"], "你好，我是助手");
    app.stop().await;
}

#[tokio::test]
async fn after_a_dropped_connection_the_bot_subscribes_again_and_answers() {
    let fake = FakeAiBot::start().await;
    let app = TestApp::spawn_with_agent(aibot_config(&fake), Arc::new(Echo)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    fake.drop_connection(BOT_ID);
    fake.wait_for_subscribed(BOT_ID, 2).await;
    let sent = fake.inject_text(BOT_ID, "zhangsan", "back?").await;
    assert_eq!(
        fake.wait_for_finished(&sent.req_id).await.content,
        "zhangsan@-: back?"
    );
    let subscribes: Vec<_> = fake
        .frames()
        .into_iter()
        .filter(|f| f.cmd() == "aibot_subscribe")
        .collect();
    assert_eq!(subscribes.len(), 2);
    assert!(subscribes
        .iter()
        .all(|f| f.body()["secret"] == SECRET && f.body()["bot_id"] == BOT_ID));
    app.stop().await;
}

#[tokio::test]
async fn when_the_callbacks_req_id_is_refused_the_answer_goes_as_a_message() {
    let fake = FakeAiBot::start().await;
    let mut config = aibot_config(&fake);
    config.aibot.placeholder = String::new();
    let app = TestApp::spawn_with_agent(config, Arc::new(Echo)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    fake.refuse_next("aibot_respond_msg", ERR_INVALID_REQ_ID, 1);
    let sent = fake.inject_text(BOT_ID, "zhangsan", "hello").await;
    let pushed = fake.wait_for_pushed("zhangsan", 1).await;
    assert_eq!(pushed, vec!["zhangsan@-: hello".to_owned()]);
    assert!(fake.bubble(&sent.req_id).is_none(), "no bubble was shown");
    app.stop().await;
}

#[tokio::test]
async fn an_answer_longer_than_a_bubble_finishes_it_full_and_sends_the_rest_once() {
    let fake = FakeAiBot::start().await;
    let long = format!("{}\n{}", "长".repeat(6000), "尾".repeat(2000));
    let app = TestApp::spawn_with_agent(aibot_config(&fake), Arc::new(Says(long.clone()))).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let sent = fake.inject_text(BOT_ID, "zhangsan", "long please").await;
    let bubble = fake.wait_for_finished(&sent.req_id).await;
    assert!(bubble.content.len() <= 20480, "{}", bubble.content.len());
    let pushed = fake.wait_for_pushed("zhangsan", 1).await;
    assert_eq!(
        format!("{}{}", bubble.content, pushed.concat()),
        long,
        "every byte once"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_agent_that_fails_leaves_the_failure_message_in_the_bubble() {
    let fake = FakeAiBot::start().await;
    struct Failing;
    #[async_trait]
    impl Agent for Failing {
        fn name(&self) -> &str {
            "failing"
        }
        async fn reply(&self, _: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
            Err(AgentError::Failed("model down".into()))
        }
    }
    let config = aibot_config(&fake);
    let sorry = config.agent.failure_message.clone();
    let app = TestApp::spawn_with_agent(config, Arc::new(Failing)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let sent = fake.inject_text(BOT_ID, "zhangsan", "hi").await;
    assert_eq!(fake.wait_for_finished(&sent.req_id).await.content, sorry);
    app.stop().await;
}

mod url_mode {
    use super::*;
    use serde_json::{json, Value};
    use wecom_gateway::aibot::callback_body::{CallbackBody, PassiveReply};
    use wecom_gateway::crypto::MsgCrypt;

    const TOKEN: &str = "aibot-url-token";
    const KEY: &str = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt";

    fn url_config() -> Config {
        let mut config = config(&[], "http://127.0.0.1:9");
        config.aibots.push(AiBotConfig {
            name: "urlbot".into(),
            bot_id: "aib-url".into(),
            mode: Mode::Callback {
                token: TOKEN.into(),
                encoding_aes_key: KEY.into(),
            },
            allowlist: Allowlist {
                allow_all: true,
                users: vec![],
            },
            chats: Chats::default(),
            group_session: GroupSession::Member,
            welcome: None,
            agent: None,
        });
        config
    }

    fn crypt() -> MsgCrypt {
        MsgCrypt::new(TOKEN, KEY, "").unwrap()
    }

    /// WeCom's POST of `body` (encrypted and signed); the decrypted passive answer, if any.
    async fn post(app: &TestApp, body: &Value) -> (u16, Option<Value>) {
        let (ts, nonce) = (now_secs().to_string(), "nonce-1".to_owned());
        let sealed = crypt().encrypt_msg(&body.to_string(), &ts, &nonce, rand::random());
        let envelope = CallbackBody {
            encrypt: sealed.encrypt.clone(),
        }
        .to_json();
        let url = app.url(&format!(
            "/wecom/aibot/urlbot?msg_signature={}&timestamp={ts}&nonce={nonce}",
            sealed.msg_signature
        ));
        let resp = app.http.post(url).body(envelope).send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        if text.is_empty() {
            return (status, None);
        }
        let reply: PassiveReply = serde_json::from_str(&text).unwrap();
        let plain = reply
            .open(&crypt())
            .expect("a passive answer signed and sealed with the bot's token and key");
        (status, Some(serde_json::from_slice(&plain).unwrap()))
    }

    #[tokio::test]
    async fn a_posted_message_is_answered_with_a_bubble_that_polls_show_growing_until_finished() {
        let gate = Arc::new(Semaphore::new(0));
        let pieces: Vec<String> = ["一、", "二、", "三。"].map(String::from).to_vec();
        let agent = Writing {
            pieces: pieces.clone(),
            gate: gate.clone(),
        };
        let app = TestApp::spawn_with_agent(url_config(), Arc::new(agent)).await;
        let message = json!({"msgid": "m-1", "aibotid": "aib-url", "chattype": "single",
            "from": {"userid": "zhangsan"}, "msgtype": "text", "text": {"content": "数一数"},
            "response_url": "http://127.0.0.1:9/response"});
        let (status, answer) = post(&app, &message).await;
        assert_eq!(status, 200);
        let answer = answer.expect("a passive answer");
        assert_eq!(answer["msgtype"], "stream");
        assert_eq!(answer["stream"]["finish"], false);
        assert_eq!(answer["stream"]["content"], "思考中…");
        let id = answer["stream"]["id"].as_str().unwrap().to_owned();
        // WeCom's retry of the same callback gets the same bubble.
        let (_, again) = post(&app, &message).await;
        assert_eq!(again.unwrap()["stream"]["id"], id.as_str());

        let poll = json!({"msgid": "m-poll", "aibotid": "aib-url", "chattype": "single",
            "from": {"userid": "zhangsan"}, "msgtype": "stream", "stream": {"id": id}});
        let mut so_far = String::new();
        for piece in &pieces {
            gate.add_permits(1);
            so_far.push_str(piece);
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                let (_, shown) = post(&app, &poll).await;
                let shown = shown.unwrap();
                if shown["stream"]["content"] == so_far.as_str() {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{shown} while waiting for {so_far}"
                );
                // WeCom's own polling cadence, much shortened.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let shown = finished(&app, &id).await;
        assert_eq!(shown["stream"]["content"], pieces.concat());
        // A bubble this process does not know is finished empty, so WeCom stops polling.
        let unknown = json!({"msgid": "m-poll2", "aibotid": "aib-url", "chattype": "single",
            "from": {"userid": "zhangsan"}, "msgtype": "stream", "stream": {"id": "s-unknown"}});
        let (_, shown) = post(&app, &unknown).await;
        assert_eq!(
            shown.unwrap()["stream"],
            json!({"id": "s-unknown", "finish": true, "content": ""})
        );
        app.stop().await;
    }

    /// WeCom's polls of bubble `id` until it is finished (at WeCom's cadence, much shortened):
    /// what it shows then.
    async fn finished(app: &TestApp, id: &str) -> Value {
        let poll = json!({"msgid": "m-poll", "aibotid": "aib-url", "chattype": "single",
            "from": {"userid": "zhangsan"}, "msgtype": "stream", "stream": {"id": id}});
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let shown = post(app, &poll).await.1.unwrap();
            if shown["stream"]["finish"] == true {
                return shown;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never finished: {shown}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_members_file_is_opened_with_the_bots_encoding_aes_key() {
        use sha2::Digest;
        let sealed = wecom_gateway::crypto::AesKey::from_base64(KEY)
            .unwrap()
            .encrypt_padded(PNG);
        let router =
            axum::Router::new().route("/f", axum::routing::get(move || async move { sealed }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let app = TestApp::spawn_with_agent(url_config(), Arc::new(Files)).await;
        let image = json!({"msgid": "m-img", "aibotid": "aib-url", "chattype": "single",
            "from": {"userid": "zhangsan"}, "msgtype": "image", "image": {"url": format!("http://{addr}/f")}});
        let (_, answer) = post(&app, &image).await;
        let id = answer.unwrap()["stream"]["id"].as_str().unwrap().to_owned();
        let shown = finished(&app, &id).await;
        let sha = hex::encode(sha2::Sha256::digest(PNG));
        assert_eq!(
            shown["stream"]["content"],
            format!("{} bytes {sha}", PNG.len()).as_str()
        );
        app.stop().await;
    }

    #[tokio::test]
    async fn the_url_check_answers_the_echostr_and_bad_signatures_are_refused() {
        let app = TestApp::spawn_with_agent(url_config(), Arc::new(Echo)).await;
        let (ts, nonce) = (now_secs().to_string(), "n2".to_owned());
        let echostr = crypt().encrypt(b"1288432023552776189", rand::random());
        let sig = crypt().sign(&ts, &nonce, &echostr);
        let q = |sig: &str| {
            let e =
                percent_encoding::utf8_percent_encode(&echostr, percent_encoding::NON_ALPHANUMERIC);
            format!(
                "/wecom/aibot/urlbot?msg_signature={sig}&timestamp={ts}&nonce={nonce}&echostr={e}"
            )
        };
        let resp = app.http.get(app.url(&q(&sig))).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), "1288432023552776189");
        let resp = app.http.get(app.url(&q("0000"))).send().await.unwrap();
        assert_eq!(resp.status(), 403);
        let resp = app
            .http
            .get(app.url("/wecom/aibot/nobody?msg_signature=a&timestamp=1&nonce=1&echostr=x"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        let resp = app
            .http
            .post(app.url(&q(&sig)))
            .body("not json")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        app.stop().await;
    }

    #[tokio::test]
    async fn what_does_not_fit_the_bubble_goes_once_to_the_response_url() {
        let (response_url, mut rx) = response_url().await;
        let app = TestApp::spawn_with_agent(url_config(), Arc::new(Says("长".repeat(8000)))).await;
        let message = json!({"msgid": "m-long", "aibotid": "aib-url", "chattype": "single",
            "from": {"userid": "zhangsan"}, "msgtype": "text", "text": {"content": "long"},
            "response_url": response_url});
        let (_, answer) = post(&app, &message).await;
        assert_eq!(answer.unwrap()["stream"]["finish"], false);
        let sent = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sent["msgtype"], "markdown");
        let rest = sent["markdown"]["content"].as_str().unwrap();
        assert_eq!(
            rest.len() + 20478,
            8000 * 3,
            "the bubble's 20,478 bytes (6,826 characters), then the rest"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn not_subscribed_846609_makes_the_bot_subscribe_again_and_the_answer_still_arrives() {
    let fake = FakeAiBot::start().await;
    let mut config = aibot_config(&fake);
    config.aibot.placeholder = String::new();
    let app = TestApp::spawn_with_agent(config, Arc::new(Echo)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    fake.refuse_next("aibot_respond_msg", ERR_NOT_SUBSCRIBED, 1);
    fake.inject_text(BOT_ID, "zhangsan", "still there?").await;
    fake.wait_for_subscribed(BOT_ID, 2).await;
    let pushed = fake.wait_for_pushed("zhangsan", 1).await;
    assert_eq!(pushed, vec!["zhangsan@-: still there?".to_owned()]);
    app.stop().await;
}

/// Answers with what it got: the file's size and hash (and, asked for a picture, a PNG).
pub struct Files;

pub const PNG: &[u8] = &[
    0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0x0D, b'I', b'H', b'D', b'R', 0, 0, 0,
    1, 0, 0, 0, 1, 8, 6, 0, 0, 0, 0x1F, 0x15, 0xC4, 0x89, 0, 0, 0, 0x0D, b'I', b'D', b'A', b'T',
    0x78, 0x9C, 0x63, 0, 1, 0, 0, 5, 0, 1, 0x0D, 0x0A, 0x2D, 0xB4, 0, 0, 0, 0, b'I', b'E', b'N',
    b'D', 0xAE, 0x42, 0x60, 0x82,
];

#[async_trait]
impl Agent for Files {
    fn name(&self) -> &str {
        "files"
    }
    fn takes_event(&self, _: &str) -> bool {
        true
    }
    async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
        use base64::Engine as _;
        use wecom_gateway::message::{Event, MessageKind};
        if let MessageKind::Event(Event::TemplateCard {
            event_key, task_id, ..
        }) = &turn.message.kind
        {
            let card = serde_json::json!({"card_type": "text_notice", "task_id": task_id, "main_title": {"title": format!("chose {event_key}")}});
            return Ok(vec![AppMessage::UpdateCard { update_card: card }]);
        }
        if let Some(media) = turn.media {
            let path = media
                .info
                .path
                .as_ref()
                .ok_or_else(|| AgentError::Failed(format!("no file: {:?}", media.error)))?;
            let bytes = std::fs::read(path).map_err(|e| AgentError::Failed(e.to_string()))?;
            let sha = media.info.sha256.clone().unwrap_or_default();
            return Ok(vec![AppMessage::text(format!(
                "{} bytes {sha}",
                bytes.len()
            ))]);
        }
        let image = wecom_gateway::wecom::payload::Media {
            base64: Some(base64::engine::general_purpose::STANDARD.encode(PNG)),
            ..Default::default()
        };
        Ok(vec![
            AppMessage::text("here it is"),
            AppMessage::Image(image),
        ])
    }
}

#[tokio::test]
async fn a_members_image_is_decrypted_for_the_agent_and_the_agents_image_is_uploaded_and_sent() {
    use sha2::Digest;
    let fake = FakeAiBot::start().await;
    let app = TestApp::spawn_with_agent(aibot_config(&fake), Arc::new(Files)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    // Both forms of the file's key WeCom may send: 43 characters, or 44 with the padding.
    for (url, aeskey) in [
        fake.serve_encrypted(PNG),
        fake.serve_encrypted_padded_key(PNG),
    ] {
        let sent = fake.inject_image(BOT_ID, "zhangsan", &url, &aeskey).await;
        let sha = hex::encode(sha2::Sha256::digest(PNG));
        assert_eq!(
            fake.wait_for_finished(&sent.req_id).await.content,
            format!("{} bytes {sha}", PNG.len())
        );
    }

    let sent = fake
        .inject_text(BOT_ID, "zhangsan", "a picture please")
        .await;
    let uploads = fake.wait_for_uploads(1).await;
    assert_eq!(
        (uploads[0].kind.as_str(), uploads[0].bytes.as_slice()),
        ("image", PNG)
    );
    let image = fake
        .wait_for(|f| f.cmd() == "aibot_respond_msg" && f.body()["msgtype"] == "image")
        .await;
    assert_eq!(
        image.req_id(),
        sent.req_id,
        "the image answers the same message"
    );
    assert_eq!(
        image.body()["image"]["media_id"],
        uploads[0].media_id.as_str()
    );
    assert_eq!(fake.bubble(&sent.req_id).unwrap().content, "here it is");
    app.stop().await;
}

#[tokio::test]
async fn a_click_on_a_card_gets_the_agents_card_update() {
    let fake = FakeAiBot::start().await;
    let app = TestApp::spawn_with_agent(aibot_config(&fake), Arc::new(Files)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let body = serde_json::json!({"chattype": "single", "from": {"userid": "zhangsan"}, "msgtype": "event",
        "event": {"eventtype": "template_card_event", "template_card_event": {"card_type": "button_interaction", "event_key": "yes", "task_id": "t-1"}}});
    let clicked = fake.inject_full(BOT_ID, "aibot_event_callback", body).await;
    let update = fake
        .wait_for(|f| f.cmd() == "aibot_respond_update_msg")
        .await;
    assert_eq!(update.req_id(), clicked.req_id);
    assert_eq!(update.body()["response_type"], "update_template_card");
    assert_eq!(
        update.body()["template_card"]["main_title"]["title"],
        "chose yes"
    );
    assert_eq!(update.body()["template_card"]["task_id"], "t-1");
    assert!(
        fake.replies(&clicked.req_id)
            .iter()
            .all(|r| r.get("stream").is_none()),
        "no stream answers a click"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_http_agent_gets_the_group_chat_and_who_spoke_and_streams_as_ndjson() {
    use axum::response::IntoResponse;
    use wecom_gateway::config::{AgentKind, HttpAgentConfig};
    let (turns_tx, mut turns) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let router = axum::Router::new().route(
        "/turn",
        axum::routing::post(move |axum::Json(turn): axum::Json<serde_json::Value>| {
            let tx = turns_tx.clone();
            async move {
                let _ = tx.send(turn);
                let lines = "{\"delta\":\"会议\"}\n{\"delta\":\"在三点\"}\n";
                (
                    [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
                    lines,
                )
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let fake = FakeAiBot::start().await;
    let mut config = aibot_config(&fake);
    config.agent.kind = AgentKind::Http(HttpAgentConfig {
        url: format!("http://{addr}/turn"),
        timeout: Duration::from_secs(10),
        retries: 0,
        headers: vec![],
    });
    config.aibots[0].group_session = GroupSession::Chat;
    let app = TestApp::spawn(config).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let sent = fake
        .inject_group_text(BOT_ID, "wrkTeam", "lisi", "@助手 几点开会？")
        .await;
    assert_eq!(
        fake.wait_for_finished(&sent.req_id).await.content,
        "会议在三点"
    );
    let turn = turns.recv().await.unwrap();
    assert_eq!(turn["channel"], "aibot");
    assert_eq!(turn["app"], "helper");
    assert_eq!(turn["chat_id"], "wrkTeam");
    assert_eq!(turn["chat_type"], "group");
    assert_eq!(turn["user_id"], "lisi");
    assert_eq!(turn["text"], "几点开会？");
    app.stop().await;
}

#[tokio::test]
async fn in_a_group_what_does_not_fit_the_bubble_is_pushed_or_if_refused_replied() {
    let fake = FakeAiBot::start().await;
    let long = "群".repeat(8000);
    let app = TestApp::spawn_with_agent(aibot_config(&fake), Arc::new(Says(long.clone()))).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    // WeCom takes a push to the group: the rest is pushed to the chat.
    let first = fake
        .inject_group_text(BOT_ID, "wrkA", "lisi", "@助手 长文")
        .await;
    let bubble = fake.wait_for_finished(&first.req_id).await;
    let pushed = fake.wait_for_pushed("wrkA", 1).await;
    assert_eq!(format!("{}{}", bubble.content, pushed.concat()), long);
    // WeCom refuses pushes to groups: the rest goes as one more reply to the message.
    fake.refuse_next("aibot_send_msg", ERR_INVALID_PARAM, 1);
    let second = fake
        .inject_group_text(BOT_ID, "wrkA", "lisi", "@助手 再来")
        .await;
    let markdown = fake
        .wait_for(|f| f.req_id() == second.req_id && f.body()["msgtype"] == "markdown")
        .await;
    let bubble = fake.wait_for_finished(&second.req_id).await;
    let rest = markdown.body()["markdown"]["content"].as_str().unwrap();
    assert_eq!(format!("{}{rest}", bubble.content), long);
    assert_eq!(
        fake.pushed("wrkA").len(),
        1,
        "the refused push was not counted"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_members_file_is_fetched_when_it_arrives_not_when_its_turn_comes() {
    use sha2::Digest;
    /// Holds the member's lane on its first message until the test lets it go; then as `Files`.
    struct Busy(Arc<Semaphore>);
    #[async_trait]
    impl Agent for Busy {
        fn name(&self) -> &str {
            "busy"
        }
        async fn reply(&self, turn: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
            if turn.media.is_none() {
                self.0
                    .acquire()
                    .await
                    .map_err(|e| AgentError::Failed(e.to_string()))?
                    .forget();
                return Ok(vec![AppMessage::text("done")]);
            }
            Files.reply(turn).await
        }
    }
    let fake = FakeAiBot::start().await;
    let gate = Arc::new(Semaphore::new(0));
    let app = TestApp::spawn_with_agent(aibot_config(&fake), Arc::new(Busy(gate.clone()))).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let first = fake.inject_text(BOT_ID, "zhangsan", "a long task").await;
    let (url, aeskey) = fake.serve_encrypted(PNG);
    let image = fake.inject_image(BOT_ID, "zhangsan", &url, &aeskey).await;
    // The first turn still runs, and the image's link (valid for minutes) is already used.
    fake.wait_until_true(|f| f.media_gets() == 1, "the image fetched on arrival")
        .await;
    assert!(
        !fake.bubble(&first.req_id).is_some_and(|b| b.finished),
        "the first turn still runs"
    );
    gate.add_permits(1);
    let sha = hex::encode(sha2::Sha256::digest(PNG));
    assert_eq!(
        fake.wait_for_finished(&image.req_id).await.content,
        format!("{} bytes {sha}", PNG.len())
    );
    assert_eq!(fake.media_gets(), 1, "fetched once");
    app.stop().await;
}

#[tokio::test]
async fn a_turn_longer_than_stream_secs_finishes_its_bubble_in_time_and_sends_the_rest_once() {
    let fake = FakeAiBot::start().await;
    let gate = Arc::new(Semaphore::new(0));
    let pieces: Vec<String> = ["前五分钟写的，", "之后写的。"].map(String::from).to_vec();
    let agent = Writing {
        pieces: pieces.clone(),
        gate: gate.clone(),
    };
    let mut config = aibot_config(&fake);
    // WeCom's 6 minutes, shortened: the bubble is finished 1 s after its first frame.
    config.aibot.stream_for = Duration::from_secs(1);
    let app = TestApp::spawn_with_agent(config, Arc::new(agent)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let sent = fake.inject_text(BOT_ID, "zhangsan", "慢慢写").await;
    gate.add_permits(1);
    let bubble = fake.wait_for_finished(&sent.req_id).await;
    assert_eq!(
        bubble.content, pieces[0],
        "finished in time with what it showed"
    );
    gate.add_permits(1);
    let pushed = fake.wait_for_pushed("zhangsan", 1).await;
    assert_eq!(pushed, vec![pieces[1].clone()], "the rest, once");
    assert_eq!(fake.bubbles(&sent.req_id).len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn reset_clears_the_members_conversation_and_a_card_goes_out_as_a_card() {
    use crate::support::model::{delta, Answer, ModelStub, DONE};
    use wecom_gateway::config::{AgentKind, OpenAiConfig};
    let model = ModelStub::start(|_, _| Answer::Stream(vec![delta("好"), DONE.to_owned()])).await;
    let fake = FakeAiBot::start().await;
    let mut config = aibot_config(&fake);
    config.agent.kind = AgentKind::Openai(OpenAiConfig {
        base_url: model.url.clone(),
        model: "m".into(),
        api_key: None,
        system_prompt: None,
        temperature: None,
        max_tokens: None,
        timeout: Duration::from_secs(10),
        history_turns: 10,
        history_chars: 16_000,
        vision: false,
    });
    let app = TestApp::spawn(config).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let first = fake.inject_text(BOT_ID, "zhangsan", "记住 42").await;
    assert_eq!(fake.wait_for_finished(&first.req_id).await.content, "好");
    let reset = fake.inject_text(BOT_ID, "zhangsan", "/reset").await;
    let done = wecom_gateway::agent::openai::RESET_DONE;
    assert_eq!(fake.wait_for_finished(&reset.req_id).await.content, done);
    let after = fake.inject_text(BOT_ID, "zhangsan", "还记得吗").await;
    fake.wait_for_finished(&after.req_id).await;
    let calls = model.calls();
    let last = &calls.last().unwrap().1["messages"];
    assert_eq!(
        last.as_array().unwrap().len(),
        1,
        "the history was cleared: {last}"
    );
    app.stop().await;

    // A card the agent answers with goes out as a template card reply to the same message.
    struct Card;
    #[async_trait]
    impl Agent for Card {
        fn name(&self) -> &str {
            "card"
        }
        async fn reply(&self, _: Turn<'_>) -> Result<Vec<AppMessage>, AgentError> {
            let template_card = serde_json::json!({"card_type": "button_interaction", "task_id": "t-9", "main_title": {"title": "选一个"}});
            Ok(vec![
                AppMessage::text("请选择："),
                AppMessage::TemplateCard { template_card },
            ])
        }
    }
    let fake = FakeAiBot::start().await;
    let app = TestApp::spawn_with_agent(aibot_config(&fake), Arc::new(Card)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let sent = fake.inject_text(BOT_ID, "zhangsan", "给我选项").await;
    let card = fake
        .wait_for(|f| f.req_id() == sent.req_id && f.body()["msgtype"] == "template_card")
        .await;
    assert_eq!(card.body()["template_card"]["task_id"], "t-9");
    assert_eq!(
        fake.wait_for_finished(&sent.req_id).await.content,
        "请选择："
    );
    app.stop().await;
}
