//! Inbound message parsing: every type in fixtures/messages, events, unknown types, dedup keys.

use wecom_gateway::message::{Event, InboundMessage, MessageKind};

fn fixture(name: &str) -> InboundMessage {
    let path = format!(
        "{}/fixtures/messages/{name}.xml",
        env!("CARGO_MANIFEST_DIR")
    );
    let xml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    InboundMessage::parse(&xml).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn text_keeps_content_exactly_and_header_fields() {
    let m = fixture("text");
    assert_eq!(m.to_user_name, "ww1436e0e65a779aee");
    assert_eq!(m.from_user_name, "zhangsan");
    assert_eq!(m.create_time, 1_700_000_000);
    assert_eq!(m.agent_id, Some(1_000_002));
    assert_eq!(m.msg_id.as_deref(), Some("1234567890123456"));
    assert_eq!(
        m.kind,
        MessageKind::Text {
            content: "你好 <world> & co".into()
        }
    );
    assert!(m.is_chat_turn());
}

#[test]
fn media_and_other_message_types() {
    assert_eq!(
        fixture("image").kind,
        MessageKind::Image {
            pic_url: "https://example.com/pic.jpg".into(),
            media_id: "media_img_1".into()
        }
    );
    assert_eq!(
        fixture("voice").kind,
        MessageKind::Voice {
            media_id: "media_voice_1".into(),
            format: "amr".into()
        }
    );
    assert_eq!(
        fixture("video").kind,
        MessageKind::Video {
            media_id: "media_video_1".into(),
            thumb_media_id: "thumb_1".into()
        }
    );
    assert_eq!(
        fixture("location").kind,
        MessageKind::Location {
            latitude: 23.134521,
            longitude: 113.358803,
            scale: Some(20),
            label: "广州市海珠区".into()
        }
    );
    assert_eq!(
        fixture("link").kind,
        MessageKind::Link {
            title: "A title".into(),
            description: "A description".into(),
            url: "https://example.com/a".into(),
            pic_url: "https://example.com/a.png".into()
        }
    );
    assert_eq!(
        fixture("file").kind,
        MessageKind::File {
            media_id: "media_file_1".into(),
            file_name: "report.pdf".into()
        }
    );
    for name in ["image", "voice", "video", "location", "link", "file"] {
        assert!(fixture(name).is_chat_turn(), "{name}");
    }
}

#[test]
fn events() {
    let cases = [
        ("event_subscribe", Event::Subscribe, false),
        ("event_unsubscribe", Event::Unsubscribe, false),
        ("event_enter_agent", Event::EnterAgent, false),
        (
            "event_click",
            Event::Click {
                key: "MENU_HELP".into(),
            },
            true,
        ),
        (
            "event_view",
            Event::View {
                url: "https://example.com/menu".into(),
            },
            false,
        ),
        (
            "event_location",
            Event::Location {
                latitude: 23.104105,
                longitude: 113.320107,
                precision: Some(65.0),
            },
            false,
        ),
        (
            "event_other",
            Event::Other {
                event: "scancode_push".into(),
                event_key: Some("SCAN_1".into()),
            },
            false,
        ),
    ];
    for (name, event, turn) in cases {
        let m = fixture(name);
        assert_eq!(m.kind, MessageKind::Event(event), "{name}");
        assert_eq!(m.is_chat_turn(), turn, "{name}");
        assert_eq!(m.msg_id, None);
    }
    // The other event keeps its nested raw fields.
    let other = fixture("event_other");
    assert_eq!(
        other.raw.get("ScanCodeInfo.ScanResult").map(String::as_str),
        Some("hello")
    );
}

#[test]
fn event_names_match_case_insensitively() {
    let xml = "<xml><ToUserName>c</ToUserName><FromUserName>u</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>CLICK</Event><EventKey>K</EventKey></xml>";
    assert_eq!(
        InboundMessage::parse(xml).unwrap().kind,
        MessageKind::Event(Event::Click { key: "K".into() })
    );
}

#[test]
fn unknown_msg_type_is_kept_not_an_error() {
    let m = fixture("unknown_type");
    assert_eq!(m.kind, MessageKind::Other);
    assert_eq!(m.msg_type, "miniprogram");
    assert_eq!(m.raw.get("Title").map(String::as_str), Some("mp"));
}

#[test]
fn missing_or_invalid_fields_are_named() {
    let no_from =
        "<xml><ToUserName>c</ToUserName><CreateTime>1</CreateTime><MsgType>text</MsgType></xml>";
    assert!(InboundMessage::parse(no_from)
        .unwrap_err()
        .to_string()
        .contains("FromUserName"));
    let bad_time = "<xml><ToUserName>c</ToUserName><FromUserName>u</FromUserName><CreateTime>soon</CreateTime><MsgType>text</MsgType></xml>";
    assert!(InboundMessage::parse(bad_time)
        .unwrap_err()
        .to_string()
        .contains("CreateTime"));
    let bad_loc = "<xml><ToUserName>c</ToUserName><FromUserName>u</FromUserName><CreateTime>1</CreateTime><MsgType>location</MsgType><Location_X>north</Location_X><Location_Y>1</Location_Y></xml>";
    assert!(InboundMessage::parse(bad_loc)
        .unwrap_err()
        .to_string()
        .contains("Location_X"));
}

#[test]
fn entities_are_not_expanded() {
    let xxe = r#"<!DOCTYPE xml [<!ENTITY e "boom">]><xml><ToUserName>c</ToUserName><FromUserName>u</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>&e;</Content></xml>"#;
    assert!(InboundMessage::parse(xxe).is_err());
}

#[test]
fn dedup_key_uses_msg_id_or_the_event_identity() {
    let text = fixture("text");
    assert_eq!(text.dedup_key("corp", 7), "corp:7:msg:1234567890123456");
    let click = fixture("event_click");
    let view = fixture("event_view");
    // Same user, same second, different events: distinct keys.
    assert_eq!(click.create_time, view.create_time);
    assert_ne!(click.dedup_key("corp", 7), view.dedup_key("corp", 7));
    // The same event in two apps: distinct keys.
    assert_ne!(click.dedup_key("corp", 7), click.dedup_key("corp", 8));
}
