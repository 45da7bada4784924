//! WXBizMsgCrypt compatibility: the official vectors, a round-trip property, and damaged input.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use proptest::prelude::*;
use serde_json::Value;
use wecom_gateway::crypto::{signature, CryptoError, MsgCrypt};
use wecom_gateway::message::Envelope;

fn vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/official_vectors.json"
    ))
    .expect("fixture file");
    let doc: Value = serde_json::from_str(&text).expect("fixture JSON");
    doc["sets"].as_array().expect("sets").clone()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_else(|| panic!("fixture field {path:?}"))
}

fn crypt(set: &Value) -> MsgCrypt {
    MsgCrypt::new(
        s(set, &["token"]),
        s(set, &["encoding_aes_key"]),
        s(set, &["corp_id"]),
    )
    .expect("valid key")
}

fn named(name: &str) -> Value {
    vectors()
        .into_iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("set {name}"))
}

fn set_b() -> (MsgCrypt, Value) {
    let set = named("B");
    (crypt(&set), set)
}

#[test]
fn official_url_verification_vectors() {
    for set in vectors() {
        let v = &set["verify_url"];
        let plain = crypt(&set)
            .verify_url(
                s(v, &["msg_signature"]),
                s(v, &["timestamp"]),
                s(v, &["nonce"]),
                s(v, &["echostr"]),
            )
            .unwrap_or_else(|e| panic!("set {}: {e}", set["name"]));
        assert_eq!(plain, s(v, &["plaintext"]), "set {}", set["name"]);
    }
}

#[test]
fn official_decrypt_vectors() {
    for set in vectors() {
        let v = &set["decrypt"];
        let envelope = Envelope::parse(s(v, &["body"])).expect("envelope");
        assert_eq!(
            envelope.to_user_name.as_deref(),
            Some(s(&set, &["corp_id"]))
        );
        let c = crypt(&set);
        c.verify(
            s(v, &["msg_signature"]),
            s(v, &["timestamp"]),
            s(v, &["nonce"]),
            &envelope.encrypt,
        )
        .expect("signature");
        let plain = c.decrypt(&envelope.encrypt).expect("decrypt");
        assert_eq!(
            String::from_utf8(plain).unwrap(),
            s(v, &["plaintext"]),
            "set {}",
            set["name"]
        );
    }
}

#[test]
fn signature_matches_the_official_vector_and_ignores_hex_case() {
    let (c, set) = set_b();
    let v = &set["verify_url"];
    let sig = signature(
        s(&set, &["token"]),
        s(v, &["timestamp"]),
        s(v, &["nonce"]),
        s(v, &["echostr"]),
    );
    assert_eq!(sig, s(v, &["msg_signature"]));
    c.verify(
        &sig.to_uppercase(),
        s(v, &["timestamp"]),
        s(v, &["nonce"]),
        s(v, &["echostr"]),
    )
    .expect("upper-case hex");
}

#[test]
fn non_canonical_keys_are_accepted_and_bad_keys_rejected() {
    // Both official keys have non-zero trailing bits; a strict base64 decoder refuses them.
    for set in vectors() {
        assert!(MsgCrypt::new("t", s(&set, &["encoding_aes_key"]), "c").is_ok());
    }
    let short = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2";
    let err = MsgCrypt::new("t", short, "c").unwrap_err();
    assert_eq!(err.code(), -40004);
    assert!(
        err.to_string().contains("must be 43 characters, got 42"),
        "{err}"
    );
    let bad_char = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2+";
    assert_eq!(
        MsgCrypt::new("t", bad_char, "c").unwrap_err().code(),
        -40004
    );
}

#[test]
fn wrong_signature_is_rejected() {
    let (c, set) = set_b();
    let v = &set["verify_url"];
    let err = c
        .verify_url(
            "0000000000000000000000000000000000000000",
            s(v, &["timestamp"]),
            s(v, &["nonce"]),
            s(v, &["echostr"]),
        )
        .unwrap_err();
    assert_eq!(err, CryptoError::ValidateSignature);
    assert_eq!(err.code(), -40001);
    // A changed timestamp, nonce or token invalidates the signature too.
    let err = c
        .verify_url(
            s(v, &["msg_signature"]),
            "1409659590",
            s(v, &["nonce"]),
            s(v, &["echostr"]),
        )
        .unwrap_err();
    assert_eq!(err.code(), -40001);
    let other = MsgCrypt::new(
        "QDG6eL",
        s(&set, &["encoding_aes_key"]),
        s(&set, &["corp_id"]),
    )
    .unwrap();
    assert_eq!(
        other
            .verify(
                s(v, &["msg_signature"]),
                s(v, &["timestamp"]),
                s(v, &["nonce"]),
                s(v, &["echostr"])
            )
            .unwrap_err()
            .code(),
        -40001
    );
}

#[test]
fn wrong_corp_id_is_rejected() {
    let (_, set) = set_b();
    let c = MsgCrypt::new(
        s(&set, &["token"]),
        s(&set, &["encoding_aes_key"]),
        "wx0000000000000000",
    )
    .unwrap();
    let err = c.decrypt(s(&set, &["verify_url", "echostr"])).unwrap_err();
    assert_eq!(err, CryptoError::ValidateCorpId);
    assert_eq!(err.code(), -40005);
}

#[test]
fn bad_base64_is_rejected() {
    let (c, _) = set_b();
    for bad in ["not base64!!", "QUJD*", "===="] {
        assert_eq!(c.decrypt(bad).unwrap_err().code(), -40010, "{bad}");
    }
}

#[test]
fn truncated_or_misaligned_ciphertext_is_rejected() {
    let (c, set) = set_b();
    let ct = STANDARD
        .decode(s(&set, &["verify_url", "echostr"]))
        .unwrap();
    for len in [0, 1, 15, 17, 31, 33, 47] {
        let cut = STANDARD.encode(&ct[..len.min(ct.len())]);
        let err = c.decrypt(&cut).unwrap_err();
        assert_eq!(err.code(), -40007, "len {len}: {err}");
    }
    // Cut at a block boundary: decrypts, but the last block is no longer valid padding or header.
    let cut = STANDARD.encode(&ct[..32]);
    let err = c.decrypt(&cut).unwrap_err();
    assert!(matches!(err.code(), -40007 | -40008 | -40005), "{err}");
}

#[test]
fn re_signed_tampered_ciphertext_is_rejected() {
    // An attacker without the key who flips a byte and re-signs with a leaked token still fails:
    // the plaintext frame no longer checks out.
    let (c, set) = set_b();
    let v = &set["decrypt"];
    let encrypt = Envelope::parse(s(v, &["body"])).unwrap().encrypt;
    let mut ct = STANDARD.decode(&encrypt).unwrap();
    for i in [0usize, 20, ct.len() - 17, ct.len() - 1] {
        let mut damaged = ct.clone();
        damaged[i] ^= 0x5a;
        let tampered = STANDARD.encode(&damaged);
        let sig = c.sign(s(v, &["timestamp"]), s(v, &["nonce"]), &tampered);
        c.verify(&sig, s(v, &["timestamp"]), s(v, &["nonce"]), &tampered)
            .expect("re-signed");
        match c.decrypt(&tampered) {
            Err(e) => assert!(
                [-40005, -40007, -40008].contains(&e.code()),
                "byte {i}: {e}"
            ),
            // Flipping a byte of the random prefix's block garbles only that block and the next
            // block's matching byte: the frame can survive, but never as the original message.
            Ok(plain) => assert_ne!(plain, s(v, &["plaintext"]).as_bytes(), "byte {i}"),
        }
    }
    ct.truncate(ct.len() - 32);
    assert!(c.decrypt(&STANDARD.encode(&ct)).is_err());
}

#[test]
fn bad_padding_is_rejected() {
    let (c, _) = set_b();
    // Encrypt frames by hand with a pad byte of 0 and of 33: both out of 1..=32.
    for pad in [0u8, 33, 200] {
        let ct = encrypt_raw(&c, &[pad; 32]);
        let err = c.decrypt(&ct).unwrap_err();
        assert_eq!(err.code(), -40007, "pad {pad}: {err}");
    }
}

#[test]
fn msg_len_beyond_the_buffer_is_rejected() {
    let (c, _) = set_b();
    let mut frame = vec![b'r'; 16];
    frame.extend_from_slice(&10_000u32.to_be_bytes());
    frame.extend_from_slice(b"short");
    let pad = 32 - frame.len() % 32;
    frame.extend(std::iter::repeat_n(pad as u8, pad));
    assert_eq!(
        c.decrypt(&encrypt_raw(&c, &frame)).unwrap_err().code(),
        -40008
    );
}

#[test]
fn missing_encrypt_is_rejected() {
    let err = Envelope::parse("<xml><ToUserName>x</ToUserName></xml>").unwrap_err();
    assert!(err.to_string().contains("Encrypt"), "{err}");
    assert!(Envelope::parse("<xml><Encrypt></Encrypt></xml>").is_err());
    assert!(Envelope::parse("not xml").is_err());
}

#[test]
fn pad_of_a_whole_block_round_trips() {
    // 16 + 4 + 8 + 4 = 32: already aligned, so WeCom's rule appends a full 32-byte pad.
    let c = MsgCrypt::new("t", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "corp").unwrap();
    let ct = c.encrypt(b"12345678", [7; 16]);
    assert_eq!(STANDARD.decode(&ct).unwrap().len(), 64);
    assert_eq!(c.decrypt(&ct).unwrap(), b"12345678");
}

/// AES-256-CBC over a hand-made frame (key set B, IV = first 16 key bytes, no padding), so tests can
/// build frames the gateway's own encrypt never would.
fn encrypt_raw(_c: &MsgCrypt, frame: &[u8]) -> String {
    use aes::cipher::{block_padding::NoPadding, BlockEncryptMut, KeyIvInit};
    let key = raw_key();
    let mut buf = frame.to_vec();
    let len = buf.len();
    let ct = cbc::Encryptor::<aes::Aes256>::new(&key.into(), (&key[..16]).into())
        .encrypt_padded_mut::<NoPadding>(&mut buf, len)
        .unwrap()
        .to_vec();
    STANDARD.encode(ct)
}

fn raw_key() -> [u8; 32] {
    use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    engine
        .decode("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C=")
        .unwrap()
        .try_into()
        .unwrap()
}

proptest! {
    #[test]
    fn encrypt_then_decrypt_round_trips(msg in "\\PC{0,600}", random in any::<[u8; 16]>(), corp in "[a-z0-9]{1,20}") {
        let c = MsgCrypt::new("token", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", &corp).unwrap();
        let ct = c.encrypt(msg.as_bytes(), random);
        prop_assert_eq!(STANDARD.decode(&ct).unwrap().len() % 32, 0);
        prop_assert_eq!(c.decrypt(&ct).unwrap(), msg.as_bytes());
        let e = c.encrypt_msg(&msg, "1700000000", "nonce", random);
        prop_assert!(c.verify(&e.msg_signature, "1700000000", "nonce", &e.encrypt).is_ok());
    }

    #[test]
    fn arbitrary_input_never_panics(input in "\\PC{0,200}", sig in "[0-9a-f]{0,40}") {
        let c = MsgCrypt::new("token", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "corp").unwrap();
        let _ = c.decrypt(&input);
        let _ = c.verify_url(&sig, "1", "2", &input);
        let _ = Envelope::parse(&input);
        let _ = wecom_gateway::message::InboundMessage::parse(&input);
    }

    #[test]
    fn arbitrary_ciphertext_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let c = MsgCrypt::new("token", "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", "corp").unwrap();
        let _ = c.decrypt(&STANDARD.encode(&bytes));
    }
}

/// Check the signature of a JSON-format vector and decrypt it.
fn open_json(c: &MsgCrypt, v: &Value) -> Result<Vec<u8>, CryptoError> {
    c.verify(
        s(v, &["msg_signature"]),
        s(v, &["timestamp"]),
        s(v, &["nonce"]),
        s(v, &["encrypt"]),
    )?;
    c.decrypt(s(v, &["encrypt"]))
}

#[test]
fn official_json_vectors_decrypt_with_the_corp_id() {
    for set in vectors() {
        let v = &set["decrypt_json"];
        let plain = open_json(&crypt(&set), v).expect("decrypt");
        assert_eq!(
            plain,
            s(v, &["plaintext"]).as_bytes(),
            "set {}",
            set["name"]
        );
    }
}

#[test]
fn an_empty_receive_id_accepts_any_trailing_id() {
    // AI bots are configured with an empty receive id; the published JSON frame carries a corp id.
    let set = named("A");
    let v = &set["decrypt_json"];
    let bot = MsgCrypt::new(s(&set, &["token"]), s(&set, &["encoding_aes_key"]), "").unwrap();
    assert_eq!(
        open_json(&bot, v).expect("non-empty trailing id"),
        s(v, &["plaintext"]).as_bytes()
    );
    // A frame whose trailing id is empty, as the bot's own encrypt writes it.
    let body = r#"{"msgid":"m1","msgtype":"text","text":{"content":"hi"}}"#;
    let empty_trailer = bot.encrypt(body.as_bytes(), [3; 16]);
    assert_eq!(bot.decrypt(&empty_trailer).unwrap(), body.as_bytes());
    // URL verification goes through the same check.
    let echo = bot.encrypt_msg("4242", "1700000000", "n", [1; 16]);
    assert_eq!(
        bot.verify_url(&echo.msg_signature, "1700000000", "n", &echo.encrypt)
            .unwrap(),
        "4242"
    );
}

#[test]
fn a_configured_receive_id_is_still_checked_exactly() {
    let set = named("A");
    let (token, key) = (s(&set, &["token"]), s(&set, &["encoding_aes_key"]));
    let encrypt = s(&set, &["decrypt_json", "encrypt"]);
    let other = MsgCrypt::new(token, key, "ww0000000000000000").unwrap();
    assert_eq!(
        other.decrypt(encrypt).unwrap_err(),
        CryptoError::ValidateCorpId
    );
    // A frame with an empty trailing id does not pass for an app with a corp id.
    let bot = MsgCrypt::new(token, key, "").unwrap();
    let app = crypt(&set);
    let ct = bot.encrypt(b"<xml/>", [9; 16]);
    assert_eq!(app.decrypt(&ct).unwrap_err(), CryptoError::ValidateCorpId);
}
