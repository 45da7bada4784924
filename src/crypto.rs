//! WXBizMsgCrypt: WeCom's callback signature and AES-256-CBC message encryption.
//!
//! Owns: the EncodingAESKey, the msg_signature rule, encrypt/decrypt of the `random ‖ msg_len ‖ msg ‖
//! receiveid` frame, and the official error codes (-40001 ... -40011).
//!
//! Must never: do I/O, log, block, or be async. Every function here is pure (randomness is passed in), so
//! it can be tested with the official vectors and fuzzed without a runtime. Secrets never reach `Debug`.
//!
//! Compatibility choices (see docs/wecom-protocol.md §2.9): the key is decoded with trailing bits allowed
//! (the console produces non-canonical base64), padding is PKCS#7 over 32-byte blocks (pad 1..=32), the
//! receive id must match exactly when one is configured, and signatures are compared in constant time.
//! An empty configured receive id (AI bots' URL mode) accepts any trailing id, as WeCom's own Node SDK
//! does: WeCom documents the id as empty for bots but does not say what it puts in the frame.
//!
//! The same key decoding and cipher serve AI bots' media files (`AesKey::from_base64`,
//! `AesKey::decrypt_padded`), so there is one decoder and one unpadding rule.

use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::Engine as _;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// WeCom pads to a multiple of 32 bytes, not the AES block size.
const PAD_BLOCK: usize = 32;
/// 16 random bytes, then a 4-byte big-endian message length.
const RANDOM_LEN: usize = 16;
const HEADER_LEN: usize = RANDOM_LEN + 4;
/// Length of an EncodingAESKey as the WeCom console shows it.
pub const ENCODING_AES_KEY_LEN: usize = 43;

/// The console may hand out keys whose last character carries non-zero trailing bits.
const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Failures, each mapped to the code the official SDKs use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("msg_signature does not match (-40001)")]
    ValidateSignature,
    #[error("EncodingAESKey is invalid (-40004): {0}")]
    IllegalAesKey(String),
    #[error("receive id in the message does not match the configured corp id (-40005)")]
    ValidateCorpId,
    #[error("AES decryption failed (-40007): {0}")]
    DecryptAes(&'static str),
    #[error("decrypted buffer is malformed (-40008): {0}")]
    IllegalBuffer(&'static str),
    #[error("ciphertext is not valid base64 (-40010)")]
    DecodeBase64,
}

impl CryptoError {
    /// The WXBizMsgCrypt error code of the official SDKs.
    pub fn code(&self) -> i32 {
        match self {
            CryptoError::ValidateSignature => -40001,
            CryptoError::IllegalAesKey(_) => -40004,
            CryptoError::ValidateCorpId => -40005,
            CryptoError::DecryptAes(_) => -40007,
            CryptoError::IllegalBuffer(_) => -40008,
            CryptoError::DecodeBase64 => -40010,
        }
    }
}

/// The 32-byte AES key behind an EncodingAESKey. `Debug` never shows it.
#[derive(Clone)]
pub struct AesKey([u8; 32]);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesKey([redacted])")
    }
}

impl AesKey {
    /// Decode the 43-character EncodingAESKey from the WeCom console: `base64(key + "=")`.
    pub fn from_encoding_aes_key(encoding_aes_key: &str) -> Result<Self, CryptoError> {
        let len = encoding_aes_key.chars().count();
        if len != ENCODING_AES_KEY_LEN {
            return Err(CryptoError::IllegalAesKey(format!(
                "must be {ENCODING_AES_KEY_LEN} characters, got {len}"
            )));
        }
        if !encoding_aes_key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CryptoError::IllegalAesKey(
                "must contain only the characters A-Z, a-z and 0-9".into(),
            ));
        }
        Self::decode(encoding_aes_key)
    }

    /// Decode a key given as base64 with or without its one `=` (43 or 44 characters): AI bots'
    /// per-file `aeskey` comes unpadded in some answers, padded in others.
    pub fn from_base64(key: &str) -> Result<Self, CryptoError> {
        let unpadded = key.strip_suffix('=').unwrap_or(key);
        let len = unpadded.chars().count();
        if len != ENCODING_AES_KEY_LEN {
            return Err(CryptoError::IllegalAesKey(format!(
                "must be {ENCODING_AES_KEY_LEN} characters (44 with a trailing =), got {}",
                key.chars().count()
            )));
        }
        // A key made from random bytes uses all of base64's alphabet, `+` and `/` too.
        if !unpadded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        {
            return Err(CryptoError::IllegalAesKey(
                "must contain only base64 characters (A-Z, a-z, 0-9, + and /)".into(),
            ));
        }
        Self::decode(unpadded)
    }

    /// The one decoder behind both forms: 43 base64 characters, trailing bits allowed.
    fn decode(unpadded: &str) -> Result<Self, CryptoError> {
        let mut padded = String::with_capacity(ENCODING_AES_KEY_LEN + 1);
        padded.push_str(unpadded);
        padded.push('=');
        let bytes = KEY_ENGINE
            .decode(padded)
            .map_err(|_| CryptoError::IllegalAesKey("is not base64".into()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::IllegalAesKey("does not decode to 32 bytes".into()))?;
        Ok(AesKey(key))
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.0[..16]);
        iv
    }

    /// AES-256-CBC (IV = the key's first 16 bytes) and WeCom's PKCS#7 over 32-byte blocks, checked.
    pub fn decrypt_padded(&self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
            return Err(CryptoError::DecryptAes(
                "ciphertext length is not a non-zero multiple of 16",
            ));
        }
        let mut buf = ciphertext.to_vec();
        let plain_len = Aes256CbcDec::new(&self.0.into(), &self.iv().into())
            .decrypt_padded_mut::<NoPadding>(&mut buf)
            .map_err(|_| CryptoError::DecryptAes("block decryption failed"))?
            .len();
        let pad = usize::from(
            *buf[..plain_len]
                .last()
                .ok_or(CryptoError::DecryptAes("empty"))?,
        );
        if !(1..=PAD_BLOCK).contains(&pad) || pad > plain_len {
            return Err(CryptoError::DecryptAes(
                "PKCS#7 pad value out of range 1..=32",
            ));
        }
        buf.truncate(plain_len - pad);
        Ok(buf)
    }

    /// The inverse of `decrypt_padded`: pads `plain` to a multiple of 32 (a whole block when already
    /// aligned) and encrypts it.
    pub fn encrypt_padded(&self, plain: &[u8]) -> Vec<u8> {
        let pad = PAD_BLOCK - plain.len() % PAD_BLOCK;
        let mut buf = Vec::with_capacity(plain.len() + pad);
        buf.extend_from_slice(plain);
        buf.resize(plain.len() + pad, pad as u8);
        let len = buf.len();
        Aes256CbcEnc::new(&self.0.into(), &self.iv().into())
            .encrypt_padded_mut::<NoPadding>(&mut buf, len)
            .map(<[u8]>::to_vec)
            // Unreachable: the buffer is a multiple of 32 bytes, so no padding is needed.
            .unwrap_or_default()
    }
}

/// `sha1(sort([token, timestamp, nonce, encrypt]).concat())` as lowercase hex.
pub fn signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    hex::encode(digest(token, timestamp, nonce, encrypt))
}

/// SHA-1 over the four parts in sorted order, as bytes.
fn digest(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> [u8; 20] {
    let mut parts = [token, timestamp, nonce, encrypt];
    parts.sort_unstable();
    let mut hasher = Sha1::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// Check a received msg_signature in constant time. Case-insensitive on the hex digits.
pub fn verify_signature(
    token: &str,
    timestamp: &str,
    nonce: &str,
    encrypt: &str,
    msg_signature: &str,
) -> Result<(), CryptoError> {
    // Compared as bytes: hex digits of either case decode alike, and nothing is allocated.
    let mut received = [0u8; 20];
    if hex::decode_to_slice(msg_signature, &mut received).is_err() {
        return Err(CryptoError::ValidateSignature);
    }
    let expected = digest(token, timestamp, nonce, encrypt);
    if expected.ct_eq(&received).into() {
        Ok(())
    } else {
        Err(CryptoError::ValidateSignature)
    }
}

/// One app's crypto parameters: token, AES key and receive id (the corp id for self-built apps, empty
/// for AI bots).
#[derive(Clone)]
pub struct MsgCrypt {
    token: String,
    key: AesKey,
    receive_id: String,
}

impl std::fmt::Debug for MsgCrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgCrypt")
            .field("token", &"[redacted]")
            .field("key", &self.key)
            .field("receive_id", &self.receive_id)
            .finish()
    }
}

impl MsgCrypt {
    pub fn new(token: &str, encoding_aes_key: &str, receive_id: &str) -> Result<Self, CryptoError> {
        Ok(MsgCrypt {
            token: token.to_owned(),
            key: AesKey::from_encoding_aes_key(encoding_aes_key)?,
            receive_id: receive_id.to_owned(),
        })
    }

    /// Does `msg_signature` sign `encrypt` under this app's token?
    pub fn verify(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
    ) -> Result<(), CryptoError> {
        verify_signature(&self.token, timestamp, nonce, encrypt, msg_signature)
    }

    pub fn sign(&self, timestamp: &str, nonce: &str, encrypt: &str) -> String {
        signature(&self.token, timestamp, nonce, encrypt)
    }

    /// URL verification: check the signature over the (already percent-decoded) echostr and return
    /// the plaintext WeCom expects back.
    pub fn verify_url(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        echostr: &str,
    ) -> Result<String, CryptoError> {
        self.verify(msg_signature, timestamp, nonce, echostr)?;
        let plain = self.decrypt(echostr)?;
        String::from_utf8(plain).map_err(|_| CryptoError::IllegalBuffer("echostr is not UTF-8"))
    }

    /// Decrypt the base64 `Encrypt` text (signature already checked) into the message bytes.
    pub fn decrypt(&self, encrypt: &str) -> Result<Vec<u8>, CryptoError> {
        let ct = STANDARD
            .decode(encrypt.trim())
            .map_err(|_| CryptoError::DecodeBase64)?;
        let body = self.key.decrypt_padded(&ct)?;
        if body.len() < HEADER_LEN {
            return Err(CryptoError::IllegalBuffer(
                "shorter than the 20-byte header",
            ));
        }
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(&body[RANDOM_LEN..HEADER_LEN]);
        let msg_len = u32::from_be_bytes(len_bytes) as usize;
        let rest = &body[HEADER_LEN..];
        if msg_len > rest.len() {
            return Err(CryptoError::IllegalBuffer("msg_len exceeds the buffer"));
        }
        let (msg, receive_id) = rest.split_at(msg_len);
        // No receive id configured (an AI bot): whatever WeCom put there is not checked.
        if self.receive_id.is_empty() || bool::from(receive_id.ct_eq(self.receive_id.as_bytes())) {
            Ok(msg.to_vec())
        } else {
            Err(CryptoError::ValidateCorpId)
        }
    }

    /// Encrypt `msg` into base64 `Encrypt` text. `random` is the 16-byte prefix; the caller supplies
    /// it so this stays pure (the gateway uses a CSPRNG, tests use fixed bytes).
    pub fn encrypt(&self, msg: &[u8], random: [u8; 16]) -> String {
        let mut frame = Vec::with_capacity(HEADER_LEN + msg.len() + self.receive_id.len());
        frame.extend_from_slice(&random);
        // A message over 4 GiB cannot arrive here: HTTP bodies are limited far below that.
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(msg);
        frame.extend_from_slice(self.receive_id.as_bytes());
        STANDARD.encode(self.key.encrypt_padded(&frame))
    }

    /// Build the encrypted XML envelope WeCom sends .
    pub fn encrypt_msg(
        &self,
        msg: &str,
        timestamp: &str,
        nonce: &str,
        random: [u8; 16],
    ) -> EncryptedMsg {
        let encrypt = self.encrypt(msg.as_bytes(), random);
        let msg_signature = self.sign(timestamp, nonce, &encrypt);
        EncryptedMsg {
            encrypt,
            msg_signature,
            timestamp: timestamp.to_owned(),
            nonce: nonce.to_owned(),
        }
    }
}

/// An encrypted message with its signature, ready to be put in XML or a query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedMsg {
    pub encrypt: String,
    pub msg_signature: String,
    pub timestamp: String,
    pub nonce: String,
}

impl EncryptedMsg {
    /// The callback envelope WeCom POSTs to the gateway (used by the simulator and tests).
    pub fn to_callback_xml(&self, to_user_name: &str, agent_id: &str) -> String {
        format!(
            "<xml><ToUserName><![CDATA[{to_user_name}]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt><AgentID><![CDATA[{agent_id}]]></AgentID></xml>",
            self.encrypt
        )
    }
}
