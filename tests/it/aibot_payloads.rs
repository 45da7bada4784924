//! AI bots' pure protocol pieces through the library API: the URL-mode envelope and passive reply,
//! inbound bodies, the agent's text, media decryption and the upload plan.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};
use wecom_gateway::aibot::callback_body::{BodyError, CallbackBody, PassiveReply};
use wecom_gateway::aibot::inbound::{
    strip_mention, CardEvent, ChatType, Content, Event, FeedbackEvent, Inbound, InboundError,
    MediaRef, MixedItem, SelectedItem,
};
use wecom_gateway::aibot::media::{
    decrypt_media, finish_body, read_finish_answer, upload_chunks, MediaError, MediaType, Uploaded,
    CHUNK_BYTES, MAX_CHUNKS,
};
use wecom_gateway::crypto::MsgCrypt;

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture JSON")
}

fn set_a() -> Value {
    fixture("official_vectors.json")["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "A")
        .unwrap()
        .clone()
}

fn bot_crypt() -> MsgCrypt {
    let set = set_a();
    MsgCrypt::new(
        set["token"].as_str().unwrap(),
        set["encoding_aes_key"].as_str().unwrap(),
        "",
    )
    .unwrap()
}

// ---- the URL-mode envelope and passive reply ----

#[test]
fn the_official_json_callback_opens_with_an_empty_receive_id() {
    let set = set_a();
    let v = &set["decrypt_json"];
    let body = json!({ "encrypt": v["encrypt"] }).to_string();
    let parsed = CallbackBody::parse(body.as_bytes()).unwrap();
    let c = bot_crypt();
    c.verify(
        v["msg_signature"].as_str().unwrap(),
        v["timestamp"].as_str().unwrap(),
        v["nonce"].as_str().unwrap(),
        &parsed.encrypt,
    )
    .unwrap();
    assert_eq!(
        c.decrypt(&parsed.encrypt).unwrap(),
        v["plaintext"].as_str().unwrap().as_bytes()
    );
}

#[test]
fn the_body_accepts_either_spelling_and_names_the_field_it_lacks() {
    let e = "QUJD";
    for body in [
        json!({ "encrypt": e }),
        json!({ "Encrypt": e }),
        json!({ "encrypt": e, "tousername": "x" }),
    ] {
        let parsed = CallbackBody::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.encrypt, e);
        assert_eq!(
            CallbackBody::parse(parsed.to_json().as_bytes()).unwrap(),
            parsed
        );
    }
    for (body, want) in [
        (json!({}).to_string(), BodyError::Missing("encrypt")),
        (
            json!({ "encrypt": "  " }).to_string(),
            BodyError::Missing("encrypt"),
        ),
        (
            json!({ "encrypt": 5 }).to_string(),
            BodyError::NotAString("encrypt"),
        ),
    ] {
        let err = CallbackBody::parse(body.as_bytes()).unwrap_err();
        assert_eq!(err, want, "{body}");
        assert!(err.to_string().contains("encrypt"), "{err}");
    }
    for body in ["", "not json", "[1]", "\"encrypt\""] {
        assert!(matches!(
            CallbackBody::parse(body.as_bytes()),
            Err(BodyError::NotJson(_))
        ));
    }
}

#[test]
fn a_passive_reply_round_trips_and_carries_the_four_fields() {
    let c = bot_crypt();
    let plain = r#"{"msgtype":"stream","stream":{"id":"s1","finish":false,"content":"思考中…"}}"#;
    let reply = PassiveReply::build(&c, plain, "1700000000", "nonce-1", [5; 16]);
    let sent: Value = serde_json::from_str(&reply.to_json()).unwrap();
    let mut keys: Vec<&str> = sent
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["encrypt", "msgsignature", "nonce", "timestamp"]);
    assert_eq!(sent["timestamp"], "1700000000");
    assert_eq!(sent["nonce"], "nonce-1");
    let back: PassiveReply = serde_json::from_value(sent).unwrap();
    assert_eq!(back.open(&c).unwrap(), plain.as_bytes());
    // Tampering with the signed fields is caught.
    let mut forged = back.clone();
    forged.timestamp = "1700000001".into();
    assert_eq!(forged.open(&c).unwrap_err().code(), -40001);
    // Another bot's key cannot open it.
    let other = MsgCrypt::new("t", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "").unwrap();
    assert!(back.open(&other).is_err());
}

// ---- inbound bodies ----

fn parse(v: Value) -> Result<Inbound, InboundError> {
    Inbound::parse(v.to_string().as_bytes())
}

fn msg(msgtype: &str, part: Value) -> Value {
    let mut v = json!({
        "msgid": "m-1", "aibotid": "bot-1", "chattype": "single",
        "from": { "userid": "zhangsan" }, "msgtype": msgtype,
    });
    v[msgtype] = part;
    v
}

#[test]
fn a_group_text_is_read_with_its_chat_and_sender() {
    let m = parse(json!({
        "msgid": "CAIQ16HMjQYY", "aibotid": "AIBOTID", "chatid": "CHATID", "chattype": "group",
        "from": { "userid": "USERID" }, "response_url": "https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=RC",
        "msgtype": "text", "text": { "content": "@RobotA hello robot" }, "extra": { "ignored": true }
    }))
    .unwrap();
    assert_eq!(m.msgid, "CAIQ16HMjQYY");
    assert_eq!(m.aibotid.as_deref(), Some("AIBOTID"));
    assert_eq!(m.chattype, ChatType::Group);
    assert_eq!(m.chattype.as_str(), "group");
    assert_eq!(m.chatid.as_deref(), Some("CHATID"));
    assert_eq!(m.from.as_ref().unwrap().userid, "USERID");
    assert_eq!(m.content, Content::Text("@RobotA hello robot".into()));
    assert!(m.response_url.unwrap().contains("response_code=RC"));
    assert_eq!(m.create_time, None);
    assert_eq!(m.quote, None);
}

#[test]
fn media_voice_and_stream_messages_are_typed() {
    let image = parse(msg("image", json!({ "url": "https://u/1", "aeskey": "k" }))).unwrap();
    assert_eq!(
        image.content,
        Content::Image(MediaRef {
            url: "https://u/1".into(),
            aeskey: Some("k".into()),
            filename: None
        })
    );
    assert_eq!(image.text_for_agent(), "[image]");
    // URL mode: no aeskey.
    let file = parse(msg(
        "file",
        json!({ "url": "https://u/2", "filename": "a.pdf" }),
    ))
    .unwrap();
    assert_eq!(
        file.content,
        Content::File(MediaRef {
            url: "https://u/2".into(),
            aeskey: None,
            filename: Some("a.pdf".into())
        })
    );
    assert_eq!(file.text_for_agent(), "[file: a.pdf]");
    let video = parse(msg("video", json!({ "url": "https://u/3" }))).unwrap();
    assert!(matches!(video.content, Content::Video(ref m) if m.url == "https://u/3"));
    let voice = parse(msg("voice", json!({ "content": "转写的文字" }))).unwrap();
    assert_eq!(voice.content, Content::Voice("转写的文字".into()));
    assert_eq!(voice.text_for_agent(), "转写的文字");
    let refresh = parse(msg("stream", json!({ "id": "STREAMID" }))).unwrap();
    assert_eq!(
        refresh.content,
        Content::StreamRefresh {
            id: "STREAMID".into()
        }
    );
    assert_eq!(refresh.text_for_agent(), "");
}

#[test]
fn mixed_messages_read_as_text_with_image_markers() {
    let m = parse(msg(
        "mixed",
        json!({ "msg_item": [
            { "msgtype": "text", "text": { "content": "@RobotA look" } },
            { "msgtype": "image", "image": { "url": "https://u/img" } },
            { "msgtype": "sticker", "sticker": {} },
            { "msgtype": "text", "text": { "content": "what is it?" } }
        ] }),
    ))
    .unwrap();
    let Content::Mixed(items) = &m.content else {
        panic!("{:?}", m.content)
    };
    assert_eq!(items.len(), 4);
    assert_eq!(items[0], MixedItem::Text("@RobotA look".into()));
    assert!(matches!(&items[1], MixedItem::Image(i) if i.url == "https://u/img"));
    assert!(matches!(&items[2], MixedItem::Other { msgtype, .. } if msgtype == "sticker"));
    assert_eq!(m.text_for_agent(), "@RobotA look\n[image]\nwhat is it?");
}

#[test]
fn a_quote_comes_first_as_quoted_lines() {
    let mut v = msg("text", json!({ "content": "and this?" }));
    v["quote"] = json!({ "msgtype": "text", "text": { "content": "line one\nline two" } });
    let m = parse(v).unwrap();
    assert_eq!(m.quote, Some(Content::Text("line one\nline two".into())));
    assert_eq!(m.text_for_agent(), "> line one\n> line two\nand this?");
    // A quote of a kind that cannot be read is kept, not fatal.
    let mut v = msg("text", json!({ "content": "hm" }));
    v["quote"] = json!({ "msgtype": "image", "image": {} });
    let m = parse(v).unwrap();
    assert!(matches!(m.quote, Some(Content::Other { ref msgtype, .. }) if msgtype == "image"));
    assert_eq!(m.text_for_agent(), "hm");
}

fn event(eventtype: &str, own: Value) -> Value {
    let mut e = json!({ "eventtype": eventtype });
    e[eventtype] = own;
    let mut v = msg("event", e);
    v["create_time"] = json!(1700000000);
    v
}

#[test]
fn events_are_typed_with_their_own_objects() {
    let enter = parse(event("enter_chat", json!({}))).unwrap();
    assert_eq!(enter.content, Content::Event(Event::EnterChat));
    assert_eq!(enter.create_time, Some(1700000000));
    let card = parse(event(
        "template_card_event",
        json!({
            "card_type": "vote_interaction", "event_key": "submit", "task_id": "T1",
            "selected_items": { "selected_item": [
                { "question_key": "q1", "option_ids": { "option_id": ["o1", "o2"] } }
            ] }
        }),
    ))
    .unwrap();
    assert_eq!(
        card.content,
        Content::Event(Event::TemplateCard(CardEvent {
            card_type: Some("vote_interaction".into()),
            event_key: Some("submit".into()),
            task_id: Some("T1".into()),
            selected_items: vec![SelectedItem {
                question_key: "q1".into(),
                option_ids: vec!["o1".into(), "o2".into()]
            }],
        }))
    );
    let feedback = parse(event(
        "feedback_event",
        json!({ "id": "FB1", "type": 2, "content": "wrong", "inaccurate_reason_list": [2, 4] }),
    ))
    .unwrap();
    assert_eq!(
        feedback.content,
        Content::Event(Event::Feedback(FeedbackEvent {
            id: Some("FB1".into()),
            kind: Some(2),
            content: Some("wrong".into()),
            inaccurate_reasons: vec![2, 4],
        }))
    );
    // A kick notice carries no sender and no chat type.
    let kicked = parse(json!({
        "msgid": "m-9", "create_time": "1700000001", "aibotid": "bot-1", "msgtype": "event",
        "event": { "eventtype": "disconnected_event" }
    }))
    .unwrap();
    assert_eq!(kicked.content, Content::Event(Event::Disconnected));
    assert_eq!(kicked.from, None);
    assert_eq!(kicked.chattype, ChatType::Single);
    assert_eq!(kicked.create_time, Some(1700000001));
}

#[test]
fn unknown_types_and_events_are_kept_with_their_json() {
    let m = parse(msg("appmsg", json!({ "title": "t" }))).unwrap();
    match m.content {
        Content::Other { msgtype, raw } => {
            assert_eq!(msgtype, "appmsg");
            assert_eq!(raw["appmsg"]["title"], "t");
        }
        other => panic!("{other:?}"),
    }
    let e = parse(event("new_event", json!({ "x": 1 }))).unwrap();
    assert_eq!(
        e.content,
        Content::Event(Event::Other {
            eventtype: "new_event".into(),
            raw: json!({ "x": 1 })
        })
    );
    // Ids sent as numbers are kept as their digits.
    let mut v = msg("text", json!({ "content": "x" }));
    v["msgid"] = json!(4561255354251345929u64);
    assert_eq!(parse(v).unwrap().msgid, "4561255354251345929");
}

#[test]
fn missing_required_fields_are_named() {
    let cases = [
        (
            json!({ "msgtype": "text", "from": { "userid": "u" }, "text": { "content": "x" } }),
            "msgid",
        ),
        (
            json!({ "msgid": "1", "from": { "userid": "u" } }),
            "msgtype",
        ),
        (
            json!({ "msgid": "1", "msgtype": "text", "text": { "content": "x" } }),
            "from.userid",
        ),
        (
            json!({ "msgid": "1", "msgtype": "text", "from": {}, "text": { "content": "x" } }),
            "from.userid",
        ),
        (msg("text", json!({})), "text.content"),
        (msg("image", json!({ "aeskey": "k" })), "image.url"),
        (msg("stream", json!({})), "stream.id"),
        (msg("event", json!({})), "event.eventtype"),
        (msg("mixed", json!({})), "mixed.msg_item"),
        (
            msg(
                "mixed",
                json!({ "msg_item": [{ "msgtype": "image", "image": {} }] }),
            ),
            "mixed.msg_item[].image.url",
        ),
    ];
    for (body, field) in cases {
        let err = parse(body.clone()).unwrap_err();
        assert!(
            matches!(err, InboundError::Missing(f) if f == field),
            "{body}: {err}"
        );
        assert!(err.to_string().contains(field), "{err}");
    }
    let mut v = msg("text", json!({ "content": "x" }));
    v["chattype"] = json!("channel");
    let err = parse(v).unwrap_err();
    assert!(
        matches!(
            err,
            InboundError::Invalid {
                field: "chattype",
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        Inbound::parse(b"{not json"),
        Err(InboundError::NotJson(_))
    ));
}

#[test]
fn mentions_are_stripped_by_name_anywhere_or_else_at_the_start() {
    assert_eq!(strip_mention("@项目助手 你好", Some("项目助手")), "你好");
    assert_eq!(strip_mention("hello@项目助手 ", Some("项目助手")), "hello");
    assert_eq!(strip_mention("@Other hi", Some("项目助手")), "@Other hi");
    assert_eq!(strip_mention("  @RobotA   hi there ", None), "hi there");
    assert_eq!(strip_mention("@RobotA", None), "");
    assert_eq!(strip_mention("hi @RobotA", None), "hi @RobotA");
    assert_eq!(strip_mention(" plain ", Some("")), "plain");
}

// ---- media ----

#[test]
fn media_decrypts_independently_made_vectors_with_either_key_form() {
    let v = fixture("aibot/media_vectors.json");
    let key = v["aeskey"].as_str().unwrap();
    assert_eq!(key.len(), 43);
    for file in v["files"].as_array().unwrap() {
        let ct = STANDARD
            .decode(file["ciphertext_base64"].as_str().unwrap())
            .unwrap();
        let want = STANDARD
            .decode(file["plaintext_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(decrypt_media(key, &ct).unwrap(), want);
        assert_eq!(decrypt_media(&format!("{key}="), &ct).unwrap(), want);
    }
}

#[test]
fn bad_media_keys_and_ciphertexts_are_errors() {
    let v = fixture("aibot/media_vectors.json");
    let key = v["aeskey"].as_str().unwrap();
    let ct = STANDARD
        .decode(v["files"][0]["ciphertext_base64"].as_str().unwrap())
        .unwrap();
    for bad in [
        &key[..42],
        "",
        &format!("{key}=="),
        &format!("{}!", &key[..42]),
    ] {
        let err = decrypt_media(bad, &ct).unwrap_err();
        assert!(matches!(err, MediaError::Key(_)), "{bad:?}: {err}");
        assert!(err.to_string().contains("aeskey"), "{err}");
    }
    for cut in [0, 15, 17] {
        assert!(matches!(
            decrypt_media(key, &ct[..cut]),
            Err(MediaError::Decrypt(_))
        ));
    }
    // Another key garbles the last block, so its padding is out of range (or, rarely, the
    // bytes differ).
    let other = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt";
    let want = STANDARD
        .decode(v["files"][0]["plaintext_base64"].as_str().unwrap())
        .unwrap();
    assert_ne!(decrypt_media(other, &ct).ok(), Some(want));
    // The key is never shown in an error.
    let err = decrypt_media(&key[..42], &ct).unwrap_err();
    assert!(!format!("{err} {err:?}").contains(&key[..20]), "{err:?}");
}

#[test]
fn uploads_are_cut_into_512_kib_chunks_from_index_0() {
    let bytes: Vec<u8> = (0..CHUNK_BYTES * 2 + 1).map(|i| (i % 251) as u8).collect();
    let plan = upload_chunks(&bytes).unwrap();
    assert_eq!(plan.total_size(), bytes.len());
    assert_eq!(plan.total_chunks(), 3);
    let mut joined = Vec::new();
    for i in 0..3 {
        joined.extend(STANDARD.decode(plan.chunk_base64(i).unwrap()).unwrap());
    }
    assert_eq!(joined, bytes);
    assert_eq!(
        STANDARD
            .decode(plan.chunk_base64(2).unwrap())
            .unwrap()
            .len(),
        1
    );
    assert_eq!(plan.chunk_base64(3), None);
    assert_eq!(
        plan.init_body(MediaType::File, "a.bin"),
        json!({ "type": "file", "filename": "a.bin", "total_size": bytes.len(),
                "total_chunks": 3, "md5": plan.md5 })
    );
    let chunk = plan.chunk_body("UP1", 0).unwrap();
    assert_eq!(chunk["upload_id"], "UP1");
    assert_eq!(chunk["chunk_index"], 0);
    assert_eq!(chunk["base64_data"], plan.chunk_base64(0).unwrap().as_str());
    assert_eq!(plan.chunk_body("UP1", 3), None);
    assert_eq!(finish_body("UP1"), json!({ "upload_id": "UP1" }));

    let small = upload_chunks(b"hello").unwrap();
    assert_eq!(small.md5, "5d41402abc4b2a76b9719d911017c592");
    assert_eq!(small.total_chunks(), 1);
    assert_eq!(MediaType::Image.as_str(), "image");
}

#[test]
fn uploads_over_100_chunks_or_empty_are_refused() {
    let max = vec![0u8; CHUNK_BYTES * MAX_CHUNKS];
    assert_eq!(upload_chunks(&max).unwrap().total_chunks(), 100);
    let over = vec![0u8; CHUNK_BYTES * MAX_CHUNKS + 1];
    let err = upload_chunks(&over).unwrap_err();
    assert_eq!(err, MediaError::TooLarge { size: over.len() });
    assert!(err.to_string().contains("at most 100 chunks"), "{err}");
    assert_eq!(upload_chunks(b"").unwrap_err(), MediaError::Empty);
}

#[test]
fn the_finish_answer_gives_the_media_id() {
    let want = |created_at: Option<&str>| Uploaded {
        media_id: "MID".into(),
        created_at: created_at.map(str::to_owned),
        media_type: Some("file".into()),
    };
    assert_eq!(
        read_finish_answer(
            &json!({ "type": "file", "media_id": "MID", "created_at": "1380000000" })
        )
        .unwrap(),
        want(Some("1380000000"))
    );
    assert_eq!(
        read_finish_answer(&json!({ "type": "file", "media_id": "MID", "created_at": 1380000000 }))
            .unwrap(),
        want(Some("1380000000"))
    );
    assert_eq!(
        read_finish_answer(&json!({ "type": "file", "media_id": "MID" })).unwrap(),
        want(None)
    );
    let err = read_finish_answer(&json!({ "created_at": "1" })).unwrap_err();
    assert_eq!(err, MediaError::Missing("media_id"));
    assert!(err.to_string().contains("media_id"));
}
