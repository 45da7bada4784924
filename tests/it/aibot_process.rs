//! AI bots with the real binary: kill -9 in the middle of a streamed reply (whether or not WeCom
//! still takes the callback's req_id on the new connection), a refused subscription, a kick by a
//! second connection, and two replicas on PostgreSQL holding one connection between them.

use std::sync::Arc;

use serde_json::Value;
use tokio::process::Command;
use tokio::sync::Semaphore;

use crate::aibot::{BOT_ID, SECRET};
use crate::support::aibot::*;
use crate::support::model::{delta, Answer, ModelStub, DONE};
use crate::support::postgres::Postgres;
use crate::support::process::*;

/// A gateway with one AI bot (from the environment, as a single-bot setup would be) and the
/// openai agent on `model`: no self-built app at all.
fn serve(fake: &FakeAiBot, model: &str, dir: &std::path::Path, extra: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve");
    bare_env(&mut cmd, "http://127.0.0.1:9", dir);
    cmd.env("WECOM_CALLBACK_AIBOT_ID", BOT_ID)
        .env("WECOM_CALLBACK_AIBOT_SECRET", SECRET)
        .env("WECOM_CALLBACK_AIBOT__WS_URL", fake.url())
        .env("WECOM_CALLBACK_AIBOT__UPDATE_MS", "50")
        .env("WECOM_CALLBACK_ALLOW_ALL_USERS", "true")
        .env("WECOM_CALLBACK_AGENT__KIND", "openai")
        .env("WECOM_CALLBACK_AGENT__BASE_URL", model)
        .env("WECOM_CALLBACK_AGENT__MODEL", "test-model")
        .env("WECOM_CALLBACK_AGENT__API_KEY", "sk-test");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

const PIECES: [&str; 4] = [
    "春眠不觉晓，",
    "处处闻啼鸟。",
    "夜来风雨声，",
    "花落知多少。",
];

fn whole() -> String {
    PIECES.concat()
}

/// The first call streams a piece per permit (the test kills the gateway halfway); every later
/// call streams the whole poem at once.
async fn poet(gate: Arc<Semaphore>) -> ModelStub {
    ModelStub::start(move |n, _| {
        let mut pieces: Vec<String> = PIECES.iter().map(|p| delta(p)).collect();
        pieces.push(DONE.to_owned());
        match n {
            1 => Answer::Gated(pieces, gate.clone()),
            _ => Answer::Stream(pieces),
        }
    })
    .await
}

/// What the member saw of the answer to `req_id`: the bubble's text, then what was sent after.
fn seen(fake: &FakeAiBot, req_id: &str, user: &str) -> String {
    let bubble = fake.bubble(req_id).map(|b| b.content).unwrap_or_default();
    format!("{bubble}{}", fake.pushed(user).concat())
}

/// A gateway killed with half the poem in the member's bubble, and started again on the same
/// store; WeCom takes the old req_id on the new connection, or not (`req_ids_survive`).
async fn killed_mid_stream_and_restarted(
    req_ids_survive: bool,
) -> (
    FakeAiBot,
    Injected,
    String,
    Gateway,
    ModelStub,
    tempfile::TempDir,
) {
    let fake = FakeAiBot::start().await;
    fake.add_bot(BOT_ID, SECRET);
    fake.req_ids_survive_reconnect(req_ids_survive);
    let gate = Arc::new(Semaphore::new(0));
    let model = poet(gate.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&mut serve(&fake, &model.url, dir.path(), &[])).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let sent = fake.inject_text(BOT_ID, "zhangsan", "背一首诗").await;
    gate.add_permits(2);
    let half = format!("{}{}", PIECES[0], PIECES[1]);
    fake.wait_for(|f| f.body()["stream"]["content"] == half.as_str())
        .await;
    // Half the poem is on the member's screen: the process dies.
    gw.kill9().await;
    fake.wait_for_disconnected(BOT_ID).await;
    let gw = Gateway::start(&mut serve(&fake, &model.url, dir.path(), &[])).await;
    (fake, sent, half, gw, model, dir)
}

#[tokio::test]
async fn kill_9_mid_stream_then_the_same_bubble_is_finished_when_wecom_still_takes_its_req_id() {
    let (fake, sent, half, gw, _model, _dir) = killed_mid_stream_and_restarted(true).await;
    assert!(fake.stream_updates(&sent.req_id).contains(&half));
    let bubble = fake.wait_for_finished(&sent.req_id).await;
    assert_eq!(bubble.content, whole());
    assert_eq!(
        fake.bubbles(&sent.req_id).len(),
        1,
        "the same bubble, finished"
    );
    assert!(fake.pushed("zhangsan").is_empty(), "nothing sent twice");
    assert_eq!(seen(&fake, &sent.req_id, "zhangsan"), whole());
    gw.wait_for_log(&["the agent is asked again"]).await;
    gw.terminate().await;
}

#[tokio::test]
async fn kill_9_mid_stream_then_the_rest_is_sent_once_when_wecom_no_longer_takes_its_req_id() {
    let (fake, sent, half, gw, _model, _dir) = killed_mid_stream_and_restarted(false).await;
    let pushed = fake.wait_for_pushed("zhangsan", 1).await;
    // The member keeps the half they saw; the rest comes once, as a message.
    assert_eq!(pushed, vec![format!("{}{}", PIECES[2], PIECES[3])]);
    assert_eq!(fake.bubble(&sent.req_id).map(|b| b.content), Some(half));
    assert_eq!(seen(&fake, &sent.req_id, "zhangsan"), whole());
    gw.wait_for_log(&["the rest of the answer was sent as a message"])
        .await;
    gw.terminate().await;
}

#[tokio::test]
async fn a_refused_subscription_is_reported_and_not_retried_in_a_storm() {
    let fake = FakeAiBot::start().await;
    fake.add_bot(BOT_ID, "the-real-secret");
    let model = poet(Arc::new(Semaphore::new(0))).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&mut serve(&fake, &model.url, dir.path(), &[])).await;
    gw.wait_for_log(&[
        "refused the AI bot's subscription",
        "check its bot_id and secret",
    ])
    .await;
    let ready: Value = reqwest::get(format!("http://{}/ready", gw.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let warnings = ready["warnings"].to_string();
    assert!(warnings.contains("refused the subscription"), "{ready}");
    // The next try waits a minute or more (with jitter, at least half of it).
    let log = gw.log();
    let wait: u64 = log
        .lines()
        .find(|l| l.contains("refused the AI bot's subscription"))
        .and_then(|l| l.split("wait_s=").nth(1))
        .and_then(|w| w.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|w| w.parse().ok())
        .expect("the log says how long it waits");
    assert!(wait >= 30, "{wait}");
    assert_eq!(fake.subscribes(BOT_ID), 1);
    assert!(
        !log.contains(SECRET) && !log.contains("the-real-secret"),
        "no secret in the log"
    );
    gw.terminate().await;
}

#[tokio::test]
async fn a_kick_by_another_connection_is_reported_and_not_fought() {
    let fake = FakeAiBot::start().await;
    fake.add_bot(BOT_ID, SECRET);
    let model = poet(Arc::new(Semaphore::new(0))).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&mut serve(&fake, &model.url, dir.path(), &[])).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    fake.kick(BOT_ID);
    gw.wait_for_log(&["another connection subscribed with the same bot"])
        .await;
    let ready: Value = reqwest::get(format!("http://{}/ready", gw.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ready["warnings"].to_string().contains("another connection"),
        "{ready}"
    );
    assert_eq!(
        fake.subscribes(BOT_ID),
        1,
        "it does not subscribe again at once"
    );
    gw.terminate().await;
}

/// Two replicas on `pg` with the bot: the first holds its connection, the second waits.
async fn two_replicas(
    fake: &FakeAiBot,
    model: &str,
    pg: &Postgres,
) -> (Gateway, Gateway, Vec<tempfile::TempDir>) {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let url = pg.url();
    let env = [
        ("WECOM_CALLBACK_STORE", url.as_str()),
        ("WECOM_CALLBACK_LEASE_SECS", "5"),
    ];
    let first = Gateway::start(&mut serve(fake, model, dirs[0].path(), &env)).await;
    fake.wait_for_subscribed(BOT_ID, 1).await;
    let second = Gateway::start(&mut serve(fake, model, dirs[1].path(), &env)).await;
    second
        .wait_for_log(&["another replica holds the AI bot's connection"])
        .await;
    (first, second, dirs)
}

#[tokio::test]
async fn two_replicas_hold_one_connection_and_the_other_takes_over_when_it_dies() {
    let Some(pg) = Postgres::start().await else {
        return;
    };
    let fake = FakeAiBot::start().await;
    fake.add_bot(BOT_ID, SECRET);
    let model = ModelStub::start(|_, _| Answer::Stream(vec![delta("好的"), DONE.to_owned()])).await;
    let (first, second, _dirs) = two_replicas(&fake, &model.url, &pg).await;
    let sent = fake.inject_text(BOT_ID, "zhangsan", "在吗").await;
    assert_eq!(fake.wait_for_finished(&sent.req_id).await.content, "好的");
    assert_eq!(fake.subscribes(BOT_ID), 1, "one connection between them");

    first.kill9().await;
    fake.wait_for_subscribed(BOT_ID, 2).await;
    let sent = fake.inject_text(BOT_ID, "zhangsan", "还在吗").await;
    assert_eq!(fake.wait_for_finished(&sent.req_id).await.content, "好的");
    let sockets: Vec<usize> = fake
        .frames()
        .iter()
        .filter(|f| f.cmd() == "aibot_subscribe")
        .map(|f| f.socket)
        .collect();
    assert_eq!(
        sockets.len(),
        2,
        "the survivor subscribed once, after the holder died"
    );
    second.terminate().await;
}

/// URL mode: one bot from the environment, with the openai agent on `model`.
const URL_KEY: &str = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt";

fn url_serve(model: &str, dir: &std::path::Path, extra: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve");
    bare_env(&mut cmd, "http://127.0.0.1:9", dir);
    cmd.env("WECOM_CALLBACK_AIBOT_ID", "aib-url")
        .env("WECOM_CALLBACK_AIBOT_TOKEN", "url-token")
        .env("WECOM_CALLBACK_AIBOT_ENCODING_AES_KEY", URL_KEY)
        .env("WECOM_CALLBACK_ALLOW_ALL_USERS", "true")
        .env("WECOM_CALLBACK_AGENT__KIND", "openai")
        .env("WECOM_CALLBACK_AGENT__BASE_URL", model)
        .env("WECOM_CALLBACK_AGENT__MODEL", "m")
        .env("WECOM_CALLBACK_AGENT__API_KEY", "sk-test");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

/// WeCom's POST of `body` to `gw`'s URL-mode bot; the passive answer, opened.
async fn url_post(gw: &Gateway, body: &Value) -> Value {
    use wecom_gateway::aibot::callback_body::{CallbackBody, PassiveReply};
    let crypt = wecom_gateway::crypto::MsgCrypt::new("url-token", URL_KEY, "").unwrap();
    let ts = crate::support::now_secs().to_string();
    let sealed = crypt.encrypt_msg(&body.to_string(), &ts, "n", rand::random());
    let url = format!(
        "http://{}/wecom/aibot/aibot?msg_signature={}&timestamp={ts}&nonce=n",
        gw.addr, sealed.msg_signature
    );
    let envelope = CallbackBody {
        encrypt: sealed.encrypt,
    }
    .to_json();
    let reply: PassiveReply = reqwest::Client::new()
        .post(url)
        .body(envelope)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    serde_json::from_slice(&reply.open(&crypt).unwrap()).unwrap()
}

/// WeCom's polls of bubble `id` at `gw` (at its cadence, much shortened) until it is finished.
async fn url_poll_until_finished(gw: &Gateway, id: &str) -> Value {
    let poll = serde_json::json!({"msgid": "m-poll", "aibotid": "aib-url", "chattype": "single",
        "from": {"userid": "zhangsan"}, "msgtype": "stream", "stream": {"id": id}});
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    loop {
        let shown = url_post(gw, &poll).await;
        if shown["stream"]["finish"] == true {
            return shown;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never finished: {shown}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn in_url_mode_after_a_kill_9_the_restarted_gateway_answers_wecoms_polls_from_the_store() {
    use serde_json::json;
    let (response_url, mut rx) = response_url().await;
    let model = poet(Arc::new(Semaphore::new(0))).await;
    let dir = tempfile::tempdir().unwrap();
    let serve = || url_serve(&model.url, dir.path(), &[]);
    let gw = Gateway::start(&mut serve()).await;
    let message = json!({"msgid": "m-restart", "aibotid": "aib-url", "chattype": "single",
        "from": {"userid": "zhangsan"}, "msgtype": "text", "text": {"content": "背一首诗"},
        "response_url": response_url});
    let answer = url_post(&gw, &message).await;
    let id = answer["stream"]["id"].as_str().unwrap().to_owned();
    // The model is asked (and never answers): the process dies mid-turn.
    model.wait_for_calls(1).await;
    gw.kill9().await;

    let gw = Gateway::start(&mut serve()).await;
    // WeCom goes on polling: the new process did not open the bubble, and answers from the
    // store what the agent, asked again, writes.
    let shown = url_poll_until_finished(&gw, &id).await;
    assert_eq!(shown["stream"]["content"], whole());
    gw.terminate().await;
    assert!(rx.try_recv().is_err(), "nothing more at the response_url");
}

#[tokio::test]
async fn in_url_mode_two_replicas_answer_wecoms_polls_whichever_takes_the_message() {
    use serde_json::json;
    let Some(pg) = Postgres::start().await else {
        return;
    };
    let (response_url, mut rx) = response_url().await;
    let model = ModelStub::start(|_, _| Answer::Stream(vec![delta("好的"), DONE.to_owned()])).await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let env = [("WECOM_CALLBACK_STORE", pg.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Gateway::start(&mut url_serve(&model.url, dirs[0].path(), &env)).await;
    let b = Gateway::start(&mut url_serve(&model.url, dirs[1].path(), &env)).await;
    // WeCom reaches the URL through a balancer: each message lands on one replica, and its
    // polls on another, while either replica's worker may take it.
    let mut bubbles = Vec::new();
    for n in 0..8 {
        let (to, polled) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let message = json!({"msgid": format!("m-{n}"), "aibotid": "aib-url", "chattype": "single",
            "from": {"userid": format!("user{n}")}, "msgtype": "text", "text": {"content": "在吗"},
            "response_url": response_url});
        let answer = url_post(to, &message).await;
        bubbles.push((polled, answer["stream"]["id"].as_str().unwrap().to_owned()));
    }
    for (gw, id) in &bubbles {
        let shown = url_poll_until_finished(gw, id).await;
        assert_eq!(shown["stream"]["content"], "好的", "{id}");
    }
    assert_eq!(model.calls().len(), 8, "each message answered once");
    a.terminate().await;
    b.terminate().await;
    assert!(rx.try_recv().is_err(), "every answer reached its bubble");
}

#[tokio::test]
async fn when_the_replica_holding_the_bot_dies_mid_stream_the_other_takes_over_and_finishes_it() {
    let Some(pg) = Postgres::start().await else {
        return;
    };
    let fake = FakeAiBot::start().await;
    fake.add_bot(BOT_ID, SECRET);
    fake.req_ids_survive_reconnect(false);
    let gate = Arc::new(Semaphore::new(0));
    let model = poet(gate.clone()).await;
    let (holder, other, _dirs) = two_replicas(&fake, &model.url, &pg).await;
    let sent = fake.inject_text(BOT_ID, "zhangsan", "背一首诗").await;
    gate.add_permits(2);
    let half = format!("{}{}", PIECES[0], PIECES[1]);
    fake.wait_for(|f| f.body()["stream"]["content"] == half.as_str())
        .await;
    holder.kill9().await;
    // The other replica takes the bot, then (once the job's lease lapses) the message: the
    // member keeps the half they saw, and gets the rest once.
    fake.wait_for_subscribed(BOT_ID, 2).await;
    let pushed = fake.wait_for_pushed("zhangsan", 1).await;
    assert_eq!(pushed, vec![format!("{}{}", PIECES[2], PIECES[3])]);
    assert_eq!(seen(&fake, &sent.req_id, "zhangsan"), whole());
    other.terminate().await;
}
