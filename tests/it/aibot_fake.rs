//! The AI-bot endpoint double itself, checked through a plain WebSocket client: the gateway's
//! AI-bot tests rely on it enforcing WeCom's rules, so each rule it claims is exercised here.

use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::aibot::{Bubble, FakeAiBot};
use crate::support::WAIT;

const BOT: &str = "bot-1";
const SECRET: &str = "bot-1-secret";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A bare client: sends JSON frames, reads the next one.
struct Client {
    ws: Ws,
    n: usize,
}

impl Client {
    async fn connect(fake: &FakeAiBot) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(fake.url()).await.unwrap();
        Client { ws, n: 0 }
    }

    /// Connect and subscribe as `BOT`, checking it was accepted.
    async fn subscribed(fake: &FakeAiBot) -> Client {
        let mut c = Client::connect(fake).await;
        let answer = c.subscribe(BOT, SECRET).await;
        assert_eq!(answer["errcode"], 0, "{answer}");
        c
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    /// The next text frame; None when the socket closed.
    async fn recv(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time");
            match msg {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Send `cmd` with a fresh req_id (or `req_id`) and return the fake's answer to it.
    async fn call(&mut self, cmd: &str, req_id: Option<&str>, body: Value) -> Value {
        self.n += 1;
        let req_id = req_id.map_or_else(|| format!("{cmd}_{}", self.n), str::to_owned);
        self.send(json!({"cmd": cmd, "headers": {"req_id": req_id}, "body": body}))
            .await;
        let answer = self.recv().await.expect("an answer, not a close");
        assert_eq!(answer["headers"]["req_id"], req_id.as_str(), "{answer}");
        assert!(
            answer.get("cmd").is_none(),
            "answers carry no cmd: {answer}"
        );
        answer
    }

    async fn subscribe(&mut self, bot: &str, secret: &str) -> Value {
        self.call(
            "aibot_subscribe",
            None,
            json!({"bot_id": bot, "secret": secret}),
        )
        .await
    }

    async fn stream(&mut self, req_id: &str, id: &str, content: &str, finish: bool) -> i64 {
        let body = json!({"msgtype": "stream",
            "stream": {"id": id, "finish": finish, "content": content}});
        let answer = self.call("aibot_respond_msg", Some(req_id), body).await;
        answer["errcode"].as_i64().unwrap()
    }
}

async fn fake() -> FakeAiBot {
    let fake = FakeAiBot::start().await;
    fake.add_bot(BOT, SECRET);
    fake
}

#[tokio::test]
async fn subscribe_with_the_right_secret_is_accepted_and_a_wrong_one_refused_and_closed() {
    let fake = fake().await;
    let mut good = Client::connect(&fake).await;
    assert_eq!(good.subscribe(BOT, SECRET).await["errcode"], 0);
    fake.wait_for_subscribed(BOT, 1).await;
    assert!(fake.connected(BOT));
    let pong = good.call("ping", None, Value::Null).await;
    assert_eq!(pong["errcode"], 0);
    assert_eq!(fake.pings(), 1);

    let mut bad = Client::connect(&fake).await;
    let refused = bad.subscribe(BOT, "wrong").await;
    assert_eq!(refused["errcode"], 40001);
    assert_eq!(refused["errmsg"], "invalid secret");
    assert_eq!(
        bad.recv().await,
        None,
        "the socket is closed after a bad secret"
    );
    assert_eq!(fake.subscribes(BOT), 2);

    // With the switch, the socket stays open and is still not subscribed.
    fake.keep_open_on_bad_secret(true);
    fake.bad_secret_errcode(93000);
    let mut open = Client::connect(&fake).await;
    assert_eq!(open.subscribe(BOT, "wrong").await["errcode"], 93000);
    let send = json!({"chatid": "u1", "chat_type": 1, "msgtype": "markdown",
        "markdown": {"content": "hi"}});
    assert_eq!(
        open.call("aibot_send_msg", None, send).await["errcode"],
        846609
    );
    // The refused subscribes kicked nobody.
    assert!(fake.connected(BOT));
}

#[tokio::test]
async fn commands_before_subscribing_are_refused_as_not_subscribed() {
    let fake = fake().await;
    let mut c = Client::connect(&fake).await;
    assert_eq!(c.call("ping", None, Value::Null).await["errcode"], 846609);
    let send = json!({"chatid": "u1", "chat_type": 1, "msgtype": "markdown",
        "markdown": {"content": "hi"}});
    let answer = c.call("aibot_send_msg", None, send.clone()).await;
    assert_eq!(answer["errcode"], 846609);
    assert_eq!(answer["errmsg"], "aibot websocket not subscribed");
    assert!(fake.pushed("u1").is_empty());

    assert_eq!(c.subscribe(BOT, SECRET).await["errcode"], 0);
    assert_eq!(c.call("aibot_send_msg", None, send).await["errcode"], 0);
    assert_eq!(fake.pushed("u1"), vec!["hi".to_owned()]);
    let text = json!({"chatid": "u1", "chat_type": 1, "msgtype": "text", "text": {"content": "x"}});
    assert_eq!(c.call("aibot_send_msg", None, text).await["errcode"], 40008);
    let frames = fake.frames();
    assert_eq!(frames.len(), 4, "pings are not recorded as frames");
    assert_eq!(
        frames.iter().map(|f| f.errcode).collect::<Vec<_>>(),
        [846609, 0, 0, 40008]
    );
}

#[tokio::test]
async fn a_second_subscribe_kicks_the_first_socket() {
    let fake = fake().await;
    let mut first = Client::subscribed(&fake).await;
    let mut second = Client::subscribed(&fake).await;
    let event = first.recv().await.expect("the kick event");
    assert_eq!(event["cmd"], "aibot_event_callback");
    assert_eq!(event["body"]["event"]["eventtype"], "disconnected_event");
    assert_eq!(event["body"]["aibotid"], BOT);
    assert_eq!(first.recv().await, None, "the kicked socket is closed");
    fake.wait_for_subscribed(BOT, 2).await;
    assert!(fake.connected(BOT));

    // Pushes now go to the second socket.
    let injected = fake.inject_text(BOT, "alice", "hello").await;
    let cb = second.recv().await.unwrap();
    assert_eq!(cb["cmd"], "aibot_msg_callback");
    assert_eq!(cb["headers"]["req_id"], injected.req_id.as_str());
    assert_eq!(cb["body"]["msgid"], injected.msgid.as_str());
    assert_eq!(cb["body"]["from"]["userid"], "alice");
    assert_eq!(cb["body"]["text"]["content"], "hello");

    // The fake's own kick and abrupt drop.
    fake.kick(BOT);
    let event = second.recv().await.unwrap();
    assert_eq!(event["body"]["event"]["eventtype"], "disconnected_event");
    assert_eq!(second.recv().await, None);
    assert!(!fake.connected(BOT));
    let mut third = Client::subscribed(&fake).await;
    fake.drop_connection(BOT);
    assert_eq!(third.recv().await, None);
    fake.wait_for_disconnected(BOT).await;
}

#[tokio::test]
async fn stream_frames_after_the_deadline_or_after_finish_are_refused() {
    let fake = fake().await;
    let mut c = Client::subscribed(&fake).await;
    let injected = fake.inject_text(BOT, "alice", "hi").await;
    let req_id = c.recv().await.unwrap()["headers"]["req_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(req_id, injected.req_id);

    assert_eq!(c.stream(&req_id, "s1", "思考中…", false).await, 0);
    assert_eq!(c.stream(&req_id, "s1", "Hello", false).await, 0);
    // 5 minutes in: still open. Past 6 minutes from the first frame: expired.
    fake.age_streams(Duration::from_secs(5 * 60));
    assert_eq!(c.stream(&req_id, "s1", "Hello wor", false).await, 0);
    fake.age_streams(Duration::from_secs(61));
    let expired = c
        .call(
            "aibot_respond_msg",
            Some(&req_id),
            json!({"msgtype": "stream", "stream": {"id": "s1", "finish": true, "content": "Hello world"}}),
        )
        .await;
    assert_eq!(expired["errcode"], 846608);
    assert_eq!(expired["errmsg"], "stream message update expired");

    // A new stream id on the same req_id opens a new bubble; nothing after its finish.
    assert_eq!(c.stream(&req_id, "s2", "rest", true).await, 0);
    assert_eq!(c.stream(&req_id, "s2", "rest, again", true).await, 846608);
    // Over-long content and text replies are refused; an unknown req_id too.
    let long = "字".repeat(20480 / 3 + 1);
    assert_eq!(c.stream(&req_id, "s3", &long, false).await, 40058);
    let text = json!({"msgtype": "text", "text": {"content": "x"}});
    assert_eq!(
        c.call("aibot_respond_msg", Some(&req_id), text).await["errcode"],
        40008
    );
    assert_eq!(c.stream("no-such-req", "s4", "x", false).await, 846605);

    assert_eq!(
        fake.stream_updates(&req_id),
        ["思考中…", "Hello", "Hello wor", "rest"]
    );
    assert_eq!(
        fake.bubbles(&req_id),
        [
            Bubble {
                stream_id: "s1".into(),
                content: "Hello wor".into(),
                finished: false
            },
            Bubble {
                stream_id: "s2".into(),
                content: "rest".into(),
                finished: true
            }
        ]
    );
    assert_eq!(fake.wait_for_finished(&req_id).await.content, "rest");
}

#[tokio::test]
async fn a_callback_req_id_survives_a_reconnect_unless_switched_off() {
    for survive in [true, false] {
        let fake = fake().await;
        fake.req_ids_survive_reconnect(survive);
        let mut first = Client::subscribed(&fake).await;
        let injected = fake.inject_text(BOT, "alice", "hi").await;
        first.recv().await.unwrap();
        fake.drop_connection(BOT);
        assert_eq!(first.recv().await, None);

        let mut second = Client::subscribed(&fake).await;
        let answer = second.stream(&injected.req_id, "s1", "late", true).await;
        assert_eq!(
            answer,
            if survive { 0 } else { 846605 },
            "survive={survive}"
        );
        let frame = fake.wait_for(|f| f.cmd() == "aibot_respond_msg").await;
        assert_eq!(frame.socket, 2);
        assert_eq!(frame.req_id(), injected.req_id);
        assert_eq!(fake.bubble(&injected.req_id).is_some(), survive);

        // The duplicate callback: same msgid, new req_id, valid on the new socket.
        let again = fake.inject_again(&injected).await;
        let cb = second.recv().await.unwrap();
        assert_eq!(cb["body"]["msgid"], injected.msgid.as_str());
        assert_ne!(again.req_id, injected.req_id);
        assert_eq!(second.stream(&again.req_id, "s1", "ok", true).await, 0);
    }
}

#[tokio::test]
async fn uploads_in_chunks_and_encrypted_media_round_trip() {
    let fake = fake().await;
    let mut c = Client::subscribed(&fake).await;
    let bytes: Vec<u8> = (0..1500u32).map(|i| (i % 251) as u8).collect();
    let md5 = {
        use md5::Digest as _;
        format!("{:x}", md5::Md5::digest(&bytes))
    };
    let init = c
        .call(
            "aibot_upload_media_init",
            None,
            json!({"type": "file", "filename": "a.bin", "total_size": 1500, "total_chunks": 2, "md5": md5}),
        )
        .await;
    assert_eq!(init["errcode"], 0);
    let upload_id = init["body"]["upload_id"].as_str().unwrap().to_owned();
    let b64 = base64::engine::general_purpose::STANDARD;
    // Out of order and 0-based, as the official SDK sends them.
    for (index, part) in [(1, &bytes[1000..]), (0, &bytes[..1000])] {
        let chunk =
            json!({"upload_id": upload_id, "chunk_index": index, "base64_data": b64.encode(part)});
        assert_eq!(
            c.call("aibot_upload_media_chunk", None, chunk).await["errcode"],
            0
        );
    }
    let done = c
        .call(
            "aibot_upload_media_finish",
            None,
            json!({"upload_id": upload_id}),
        )
        .await;
    assert_eq!(done["errcode"], 0, "{done}");
    assert_eq!(done["body"]["type"], "file");
    assert!(done["body"]["created_at"].is_string());
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].bytes, bytes);
    assert_eq!(uploads[0].filename, "a.bin");
    assert_eq!(done["body"]["media_id"], uploads[0].media_id.as_str());

    for (url, aeskey) in [
        fake.serve_encrypted(&bytes),
        fake.serve_encrypted_padded_key(&bytes),
    ] {
        let cipher = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
        assert_eq!(cipher.len() % 32, 0);
        let key = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(aeskey.trim_end_matches('='))
            .unwrap();
        assert_eq!(key.len(), 32);
        let mut buf = cipher.to_vec();
        use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, KeyIvInit};
        let plain = cbc::Decryptor::<aes::Aes256>::new(key[..].into(), key[..16].into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .unwrap();
        let pad = *plain.last().unwrap() as usize;
        assert!((1..=32).contains(&pad));
        assert_eq!(&plain[..plain.len() - pad], &bytes[..]);
    }
    let (_, unpadded) = fake.serve_encrypted(b"x");
    assert_eq!(unpadded.len(), 43);
    let (_, padded) = fake.serve_encrypted_padded_key(b"x");
    assert_eq!(padded.len(), 44);
    assert_eq!(fake.media_gets(), 2);
}
