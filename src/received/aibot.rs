//! The files an AI bot's members send: WeCom gives a URL (valid for minutes) and, over the long
//! connection, a key per file; the bytes are AES-encrypted. Downloaded, decrypted and then kept
//! as any received file is.
//!
//! Must never: keep more than `media.max_bytes`, or log the file's key.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::Received;
use crate::aibot::stored::{MEDIA_AESKEY, MEDIA_URL};
use crate::conversation::{Fetched, MediaInfo};
use crate::message::{InboundMessage, MessageKind};
use crate::store::MediaRecord;

/// Files fetched early, by URL, with when: kept for the worker at most this long, and at most
/// this many (a worker that never comes for one does not keep it in memory).
const EARLY_FOR: Duration = Duration::from_secs(3600);
const EARLY_MAX: usize = 10_000;

impl Received {
    /// Fetch an AI bot message's file now, beside the caller, for the worker to find when the
    /// message's turn comes: WeCom's link to it lasts minutes, the turn may come later.
    pub fn fetch_aibot_early(
        self: &Arc<Self>,
        message: InboundMessage,
        url_mode_key: Option<SecretString>,
    ) {
        let Some(url) = message.raw.get(MEDIA_URL).cloned() else {
            return;
        };
        let received = self.clone();
        tokio::spawn(async move {
            if let Some(Some(fetched)) = received.fetch_now(&message, url_mode_key.as_ref()).await {
                let mut early = received.early.map();
                let now = Instant::now();
                early.retain(|_, (_, at)| now.duration_since(*at) < EARLY_FOR);
                if early.len() < EARLY_MAX {
                    early.insert(url, (fetched, now));
                }
            }
        });
    }

    /// An AI bot message's file: the one fetched early, else fetched now. Opened with its own
    /// key (the long connection) or `url_mode_key`, the bot's EncodingAESKey. Never fails: what
    /// went wrong is in the answer's `error`. (`Option` twice, as [`Received::fetch`]: `None` is
    /// a stop.)
    pub async fn fetch_aibot(
        &self,
        message: &InboundMessage,
        url_mode_key: Option<&SecretString>,
    ) -> Option<Option<Fetched>> {
        let url = message.raw.get(MEDIA_URL);
        if let Some((fetched, _)) = url.and_then(|url| self.early.map().remove(url)) {
            return Some(Some(fetched));
        }
        self.fetch_now(message, url_mode_key).await
    }

    async fn fetch_now(
        &self,
        message: &InboundMessage,
        url_mode_key: Option<&SecretString>,
    ) -> Option<Option<Fetched>> {
        let (kind, name) = match &message.kind {
            MessageKind::Image { .. } => ("image", None),
            MessageKind::File { file_name, .. } => ("file", Some(file_name.clone())),
            _ => return Some(None),
        };
        let name = name.filter(|n| !n.trim().is_empty());
        let info = MediaInfo {
            kind: kind.to_owned(),
            content_type: None,
            size: None,
            file_name: name.clone(),
            sha256: None,
            path: None,
            url: None,
        };
        let fetched = match self.download(message, url_mode_key).await {
            Ok(bytes) => self.keep_bytes(kind, name, bytes, info.clone()).await,
            Err(why) => Err(why),
        };
        Some(Some(match fetched {
            Ok(fetched) => fetched,
            Err(why) => {
                tracing::warn!(user = ?message.from_user_name, kind, error = %why, "cannot fetch the member's {kind}; the agent is told (media_error)");
                Fetched {
                    info,
                    error: Some(why.to_string()),
                }
            }
        }))
    }

    async fn download(
        &self,
        message: &InboundMessage,
        url_mode_key: Option<&SecretString>,
    ) -> Result<Vec<u8>, NotFetched> {
        let url = message.raw.get(MEDIA_URL).ok_or(NotFetched::NoUrl)?;
        let failed = |e: reqwest::Error| NotFetched::Download(e.without_url());
        let mut response = (self.http.get(url).send().await)
            .and_then(|r| r.error_for_status())
            .map_err(failed)?;
        // The ciphertext is padded to 32 bytes: a little more than the file itself.
        let max = self.max_bytes + 32;
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if (bytes.len() + chunk.len()) as u64 > max {
                return Err(NotFetched::TooLarge(self.max_bytes));
            }
            bytes.extend_from_slice(&chunk);
        }
        let key = match (message.raw.get(MEDIA_AESKEY), url_mode_key) {
            (Some(key), _) => key.as_str(),
            (None, Some(key)) => key.expose_secret(),
            (None, None) => return Err(NotFetched::NoKey),
        };
        Ok(crate::aibot::media::decrypt_media(key, &bytes)?)
    }

    /// Decrypted bytes written as a received file and kept.
    async fn keep_bytes(
        &self,
        kind: &str,
        file_name: Option<String>,
        bytes: Vec<u8>,
        info: MediaInfo,
    ) -> Result<Fetched, NotFetched> {
        let disk = |e: std::io::Error| NotFetched::Disk(self.dir.display().to_string(), e);
        tokio::fs::create_dir_all(&self.dir).await.map_err(disk)?;
        let part: PathBuf = self
            .dir
            .join(format!(".part-{}", hex::encode(rand::random::<[u8; 8]>())));
        tokio::fs::write(&part, &bytes).await.map_err(disk)?;
        let content_type = sniff(&bytes)
            .unwrap_or("application/octet-stream")
            .to_owned();
        let record = MediaRecord {
            sha256: hex::encode(Sha256::digest(&bytes)),
            kind: kind.to_owned(),
            content_type,
            size: bytes.len() as u64,
            file_name,
        };
        Ok(self.keep(record, part, info).await)
    }
}

/// Why a member's file could not be fetched (the agent is told, as `media_error`).
#[derive(Debug, thiserror::Error)]
enum NotFetched {
    #[error("the message carries no url")]
    NoUrl,
    #[error("the message carries no key to open the file")]
    NoKey,
    #[error("cannot download the file: {0}")]
    Download(reqwest::Error),
    #[error("the file is larger than media.max_bytes ({0} bytes)")]
    TooLarge(u64),
    #[error(transparent)]
    Decrypt(#[from] crate::aibot::media::MediaError),
    #[error("cannot write under {0}: {1}")]
    Disk(String, std::io::Error),
}

/// The type of a file by its first bytes, for the common ones a member sends.
fn sniff(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => Some("image/png"),
        [0xFF, 0xD8, 0xFF, ..] => Some("image/jpeg"),
        [b'G', b'I', b'F', b'8', ..] => Some("image/gif"),
        [b'%', b'P', b'D', b'F', ..] => Some("application/pdf"),
        _ => None,
    }
}
