//! The JSON envelope of an AI bot's URL-mode callback and of the passive reply to it.
//!
//! Owns: the field names of the POST body (`encrypt`, or `Encrypt` as some senders spell it) and of
//! the encrypted reply (`encrypt`, `msgsignature`, `timestamp`, `nonce`).
//!
//! Must never: do I/O, log, or make its own randomness (it is passed in, as `MsgCrypt::encrypt`
//! takes it), so the official vectors and a fake WeCom can drive it.

use serde::{Deserialize, Serialize};

use crate::crypto::{CryptoError, MsgCrypt};

/// Why a callback body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not a JSON object: {0}")]
    NotJson(String),
    #[error("required field {0} is missing or empty")]
    Missing(&'static str),
    #[error("field {0} is not a string")]
    NotAString(&'static str),
}

/// The POST body WeCom sends to an AI bot's callback URL: only the ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackBody {
    pub encrypt: String,
}

impl CallbackBody {
    /// Read `{"encrypt": "..."}`; other fields are ignored.
    pub fn parse(body: &[u8]) -> Result<Self, BodyError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
        let object = value
            .as_object()
            .ok_or_else(|| BodyError::NotJson("not an object".into()))?;
        let field = ["encrypt", "Encrypt"]
            .iter()
            .find_map(|name| object.get(*name))
            .ok_or(BodyError::Missing("encrypt"))?;
        let encrypt = field
            .as_str()
            .ok_or(BodyError::NotAString("encrypt"))?
            .trim();
        if encrypt.is_empty() {
            return Err(BodyError::Missing("encrypt"));
        }
        Ok(CallbackBody {
            encrypt: encrypt.to_owned(),
        })
    }

    /// The body as WeCom sends it (for the simulator, a fake WeCom and tests).
    pub fn to_json(&self) -> String {
        serde_json::json!({ "encrypt": self.encrypt }).to_string()
    }
}

/// The encrypted passive reply: the HTTP response body to a callback. The timestamp is a string,
/// as in WeCom's own JSON sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassiveReply {
    pub encrypt: String,
    pub msgsignature: String,
    pub timestamp: String,
    pub nonce: String,
}

impl PassiveReply {
    /// Encrypt and sign `plaintext` (the reply's JSON, e.g. a stream frame) under the bot's crypt.
    pub fn build(
        crypt: &MsgCrypt,
        plaintext: &str,
        timestamp: &str,
        nonce: &str,
        random: [u8; 16],
    ) -> Self {
        let sealed = crypt.encrypt_msg(plaintext, timestamp, nonce, random);
        PassiveReply {
            encrypt: sealed.encrypt,
            msgsignature: sealed.msg_signature,
            timestamp: sealed.timestamp,
            nonce: sealed.nonce,
        }
    }

    /// Check the signature and decrypt, as WeCom does with the reply (for a fake WeCom and tests).
    pub fn open(&self, crypt: &MsgCrypt) -> Result<Vec<u8>, CryptoError> {
        crypt.verify(
            &self.msgsignature,
            &self.timestamp,
            &self.nonce,
            &self.encrypt,
        )?;
        crypt.decrypt(&self.encrypt)
    }

    pub fn to_json(&self) -> String {
        // Serialising four strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}
