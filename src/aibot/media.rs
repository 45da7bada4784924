//! AI bots' files: decrypting a downloaded file, and planning an upload over the long connection.
//!
//! Owns: the media key's form (base64, with or without its `=`), the upload's limits (512 KiB
//! chunks before base64, at most 100 of them, indexes from 0) and the JSON bodies of the
//! `aibot_upload_media_init`/`_chunk`/`_finish` commands and of the finish answer.
//!
//! Must never: do I/O or log; or decrypt any other way than `crypto` does (it reuses its key
//! decoder and cipher, so the two cannot drift apart).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use md5::{Digest, Md5};
use serde_json::{json, Value};

use crate::crypto::{AesKey, CryptoError};

/// Each chunk's size before base64.
pub const CHUNK_BYTES: usize = 512 * 1024;
/// The most chunks one upload may have.
pub const MAX_CHUNKS: usize = 100;
/// The largest file one upload can carry.
pub const MAX_UPLOAD_BYTES: usize = CHUNK_BYTES * MAX_CHUNKS;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("the media aeskey is invalid: {0}")]
    Key(#[source] CryptoError),
    #[error("cannot decrypt the downloaded file: {0}")]
    Decrypt(#[source] CryptoError),
    #[error("the file is empty")]
    Empty,
    #[error("the file is {size} bytes; an upload is at most {MAX_CHUNKS} chunks of {CHUNK_BYTES} bytes ({MAX_UPLOAD_BYTES} bytes)")]
    TooLarge { size: usize },
    #[error("the upload answer has no {0}")]
    Missing(&'static str),
}

/// Decrypt a file downloaded from an inbound message's `url` with its `aeskey` (the bot's
/// EncodingAESKey in URL mode, where the message carries none).
pub fn decrypt_media(aeskey: &str, ciphertext: &[u8]) -> Result<Vec<u8>, MediaError> {
    let key = AesKey::from_base64(aeskey).map_err(MediaError::Key)?;
    key.decrypt_padded(ciphertext).map_err(MediaError::Decrypt)
}

/// What kind of file is uploaded (the init command's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    File,
    Image,
    Voice,
    Video,
}

impl MediaType {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::File => "file",
            MediaType::Image => "image",
            MediaType::Voice => "voice",
            MediaType::Video => "video",
        }
    }
}

/// A file cut into the chunks one upload sends; each chunk's base64 is made when it is sent.
#[derive(Debug, Clone)]
pub struct UploadPlan<'a> {
    bytes: &'a [u8],
    /// The md5 of the whole file, lowercase hex (WeCom checks it when the upload finishes).
    pub md5: String,
}

/// Plan the upload of `bytes`: refused when empty or over `MAX_UPLOAD_BYTES`.
pub fn upload_chunks(bytes: &[u8]) -> Result<UploadPlan<'_>, MediaError> {
    if bytes.is_empty() {
        return Err(MediaError::Empty);
    }
    if bytes.len() > MAX_UPLOAD_BYTES {
        return Err(MediaError::TooLarge { size: bytes.len() });
    }
    Ok(UploadPlan {
        bytes,
        md5: hex::encode(Md5::digest(bytes)),
    })
}

impl UploadPlan<'_> {
    pub fn total_size(&self) -> usize {
        self.bytes.len()
    }

    pub fn total_chunks(&self) -> usize {
        self.bytes.len().div_ceil(CHUNK_BYTES)
    }

    /// The base64 of chunk `index` (from 0), or None past the last.
    pub fn chunk_base64(&self, index: usize) -> Option<String> {
        self.bytes
            .chunks(CHUNK_BYTES)
            .nth(index)
            .map(|chunk| STANDARD.encode(chunk))
    }

    /// The `aibot_upload_media_init` body.
    pub fn init_body(&self, media_type: MediaType, filename: &str) -> Value {
        json!({
            "type": media_type.as_str(),
            "filename": filename,
            "total_size": self.total_size(),
            "total_chunks": self.total_chunks(),
            "md5": self.md5,
        })
    }

    /// The `aibot_upload_media_chunk` body of chunk `index` (from 0, as WeCom's SDK sends), or
    /// None past the last.
    pub fn chunk_body(&self, upload_id: &str, index: usize) -> Option<Value> {
        let data = self.chunk_base64(index)?;
        Some(json!({
            "upload_id": upload_id,
            "chunk_index": index,
            "base64_data": data,
        }))
    }
}

/// The `aibot_upload_media_finish` body.
pub fn finish_body(upload_id: &str) -> Value {
    json!({ "upload_id": upload_id })
}

/// An upload WeCom accepted. The media id can be sent for 3 days.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub media_id: String,
    /// As WeCom sent it, a string or a number (its example shows a string).
    pub created_at: Option<String>,
    pub media_type: Option<String>,
}

/// Read the body of the answer to `aibot_upload_media_finish`.
pub fn read_finish_answer(body: &Value) -> Result<Uploaded, MediaError> {
    let text = |key: &str| match body.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    Ok(Uploaded {
        media_id: text("media_id").ok_or(MediaError::Missing("media_id"))?,
        created_at: text("created_at"),
        media_type: text("type"),
    })
}
