//! Media members send (image, voice, video, file): fetched from WeCom before the agent is asked,
//! kept under `data_dir/media/` by content hash, recorded in the store, and offered to the agent
//! by path and by a signed, expiring link the gateway serves (`link.rs`).
//!
//! Owns: media/get (through the app the message came in on, retried as sends are), streaming
//! to disk within `media.max_bytes`, the files' names on disk, the links, and the retention of the
//! files. A download that fails for good becomes `media_error`: the agent is asked all the same.
//!
//! Must never: download on the callback's request path (the worker calls this), hold a whole
//! large file in memory (except to hand it to a store shared by replicas, within the cap), use
//! WeCom's file name as a path, or serve a file without a valid link.

mod aibot;
pub mod link;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;

use crate::app::App;
use crate::conversation::{Fetched, MediaInfo};
use crate::message::{InboundMessage, MessageKind};
use crate::outbound::{Outbound, Undelivered};
use crate::store::{MediaRecord, Store, StoreError};
use crate::wecom::ApiError;

/// The directory under `data_dir` that holds received media.
pub const MEDIA_DIR: &str = "media";
/// How long one media/get may take in all: files run to 20 MiB, longer than an API call's timeout.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// A partial download left by a crash is deleted after this long.
const PART_MAX_AGE: Duration = Duration::from_secs(86_400);

/// Received media: the directory, the store's records, and the links.
pub struct Received {
    dir: PathBuf,
    store: Arc<dyn Store>,
    max_bytes: u64,
    public_url: String,
    expires: Duration,
    key: OnceCell<Vec<u8>>,
    /// Downloads an AI bot's files, which WeCom serves by URL.
    http: reqwest::Client,
    /// AI bots' files fetched as soon as their message was stored, by URL, until the worker
    /// takes them (`aibot.rs`).
    early: Early,
}

/// AI bots' files fetched early, by URL, with when (see `aibot.rs`).
#[derive(Default)]
struct Early(std::sync::Mutex<std::collections::HashMap<String, (Fetched, std::time::Instant)>>);

impl Early {
    fn map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (Fetched, std::time::Instant)>>
    {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("dir", &self.dir)
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// The message's media: its kind, WeCom's media_id, and the file name the callback gave.
fn media_of(message: &InboundMessage) -> Option<(&'static str, &str, Option<&str>)> {
    match &message.kind {
        MessageKind::Image { media_id, .. } => Some(("image", media_id, None)),
        MessageKind::Voice { media_id, .. } => Some(("voice", media_id, None)),
        MessageKind::Video { media_id, .. } => Some(("video", media_id, None)),
        MessageKind::File {
            media_id,
            file_name,
        } => Some(("file", media_id, Some(file_name.as_str()))),
        _ => None,
    }
}

/// The file's name on disk: its hash, with an extension tools recognise, taken from its name or
/// its content type and reduced to letters and digits (never a path).
pub fn disk_name(record: &MediaRecord) -> String {
    let from_name = (record.file_name.as_deref())
        .and_then(|n| n.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase());
    let from_type = match record.content_type.as_str() {
        "image/jpeg" => Some("jpg"),
        "image/png" => Some("png"),
        "image/gif" => Some("gif"),
        "audio/amr" | "voice/amr" => Some("amr"),
        "video/mp4" => Some("mp4"),
        _ => None,
    };
    let ext = from_name
        .filter(|e| (1..=8).contains(&e.len()) && e.bytes().all(|b| b.is_ascii_alphanumeric()))
        .or(from_type.map(str::to_owned));
    match ext {
        Some(ext) => format!("{}.{ext}", record.sha256),
        None => record.sha256.clone(),
    }
}

/// The file name in a `Content-Disposition` header (`filename="…"`, or RFC 5987's
/// `filename*=UTF-8''…`), percent-decoded, without any directory part.
fn disposition_file_name(header: &str) -> Option<String> {
    let mut plain = None;
    for part in header.split(';').map(str::trim) {
        if let Some(v) = part.strip_prefix("filename*=") {
            let v = v.split_once("''").map_or(v, |(_, v)| v);
            plain = Some(v.trim_matches('"').to_owned());
            break;
        }
        if let Some(v) = part.strip_prefix("filename=") {
            plain = Some(v.trim_matches('"').to_owned());
        }
    }
    let raw = plain?;
    let decoded = percent_encoding::percent_decode_str(&raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .unwrap_or(raw);
    let name = decoded.rsplit(['/', '\\']).next().unwrap_or("").trim();
    Some(name.to_owned()).filter(|n| !n.is_empty() && !n.chars().any(char::is_control))
}

fn unix_now() -> u64 {
    crate::outbound::upload::unix_now().max(0) as u64
}

impl Received {
    /// `data_dir` holds the files (made absolute, since agents get the paths); `public_url` is
    /// where agents reach the gateway.
    pub fn new(
        data_dir: &Path,
        store: Arc<dyn Store>,
        max_bytes: u64,
        public_url: String,
        expires: Duration,
    ) -> Self {
        let dir = std::path::absolute(data_dir.join(MEDIA_DIR))
            .unwrap_or_else(|_| data_dir.join(MEDIA_DIR));
        Received {
            dir,
            store,
            max_bytes,
            public_url,
            expires,
            key: OnceCell::new(),
            http: reqwest::Client::builder()
                .timeout(DOWNLOAD_TIMEOUT)
                .build()
                .unwrap_or_default(),
            early: Early::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key that signs links, read from the store once.
    pub async fn key(&self) -> Result<&[u8], StoreError> {
        let key = self.key.get_or_try_init(|| self.store.media_key()).await?;
        Ok(key.as_slice())
    }

    /// A link to the file that works for `media.url_expires_secs`.
    async fn link(&self, sha256: &str) -> Result<String, StoreError> {
        let expires = unix_now() + self.expires.as_secs();
        let sig = link::sign(self.key().await?, sha256, expires);
        let base = &self.public_url;
        Ok(format!(
            "{base}/api/v1/media/{sha256}?expires={expires}&sig={sig}"
        ))
    }

    /// Fetch the message's media, if it has any, through `app`. Never fails: what went wrong is
    /// in the answer's `error`. `None` once the gateway is stopping (the job is taken up again).
    pub async fn fetch(
        &self,
        outbound: &Outbound,
        app: &App,
        message: &InboundMessage,
    ) -> Option<Option<Fetched>> {
        let Some((kind, media_id, callback_name)) = media_of(message) else {
            return Some(None);
        };
        let info = MediaInfo {
            kind: kind.to_owned(),
            content_type: None,
            size: None,
            file_name: callback_name.filter(|n| !n.is_empty()).map(str::to_owned),
            sha256: None,
            path: None,
            url: None,
        };
        let failed = |info, error: String| {
            Some(Some(Fetched {
                info,
                error: Some(error),
            }))
        };
        if media_id.is_empty() {
            return failed(info, "the message carries no MediaId".into());
        }
        let who = &app.config.name;
        let saved = outbound
            .call_with_retry(who, "media/get", || async {
                let response = outbound.client().get_media(app, media_id, DOWNLOAD_TIMEOUT);
                self.save(response.await?, kind, info.file_name.as_deref())
                    .await
            })
            .await;
        let (record, part) = match saved {
            Ok(saved) => saved,
            Err(Undelivered::Stopped) => return None,
            Err(Undelivered::Failed(f)) => {
                let why = format!("media/get: {f}");
                tracing::warn!(app = %app.config.name, user = ?message.from_user_name, kind, error = %why, "cannot fetch the member's {kind}; the agent is told (media_error)");
                return failed(info, why);
            }
        };
        Some(Some(self.keep(record, part, info).await))
    }

    /// A fetched file (`part`, described by `record`) kept: recorded in the store, named by its
    /// hash, and offered by path and link. `info` is what is said when it cannot be kept.
    async fn keep(&self, record: MediaRecord, part: PathBuf, info: MediaInfo) -> Fetched {
        let kind = record.kind.clone();
        // A store shared by replicas keeps the bytes too, so any replica can serve the file.
        let bytes = match self.store.keeps_media_bytes() {
            true => tokio::fs::read(&part).await.ok(),
            false => None,
        };
        let stored = match self.store.put_media(&record, bytes).await {
            // The record as kept (an earlier name of the same bytes is kept): the file is named
            // after it, so the link and the path find the same file.
            Ok(()) => self
                .store
                .media(&record.sha256)
                .await
                .map(|r| r.unwrap_or(record.clone())),
            Err(e) => Err(e),
        };
        let (record, url) = match stored {
            Ok(stored) => {
                let url = self.link(&stored.sha256).await;
                (stored, url.map_err(|e| e.to_string()))
            }
            Err(e) => (record, Err(e.to_string())),
        };
        let url = url
            .map_err(|e| tracing::warn!(error = %e, "cannot record a received file; the agent gets its path but no link"))
            .ok();
        let path = self.dir.join(disk_name(&record));
        if let Err(e) = tokio::fs::rename(&part, &path).await {
            let _ = tokio::fs::remove_file(&part).await;
            let why = format!("cannot keep the file under {}: {e}", self.dir.display());
            tracing::warn!(kind, error = %why, "cannot keep the member's {kind}; the agent is told (media_error)");
            return Fetched {
                info,
                error: Some(why),
            };
        }
        tracing::debug!(kind, size = record.size, "fetched the member's {kind}");
        Fetched {
            info: MediaInfo {
                kind: record.kind,
                content_type: Some(record.content_type),
                size: Some(record.size),
                file_name: record.file_name,
                sha256: Some(record.sha256),
                path: Some(path),
                url,
            },
            error: None,
        }
    }

    /// Stream media/get's answer to a partial file (`.part-…`, renamed by the caller once the
    /// record is kept), within `max_bytes`. The name is WeCom's (`Content-Disposition`), else the
    /// callback's. A download cut short by a stop leaves its partial file to `prune`.
    async fn save(
        &self,
        mut response: reqwest::Response,
        kind: &str,
        callback_name: Option<&str>,
    ) -> Result<(MediaRecord, PathBuf), ApiError> {
        let max = self.max_bytes;
        let too_large = || {
            ApiError::Refused(format!(
                "the file is larger than media.max_bytes ({max} bytes)"
            ))
        };
        if response.content_length().is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let header = |name| {
            let value = response.headers().get(name)?;
            value.to_str().ok().map(str::to_owned)
        };
        let content_type = header(reqwest::header::CONTENT_TYPE)
            .and_then(|t| t.split(';').next().map(|t| t.trim().to_ascii_lowercase()))
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "application/octet-stream".into());
        let file_name = header(reqwest::header::CONTENT_DISPOSITION)
            .and_then(|h| disposition_file_name(&h))
            .or(callback_name.map(str::to_owned));
        let disk = |e: std::io::Error| {
            ApiError::Refused(format!("cannot write under {}: {e}", self.dir.display()))
        };
        tokio::fs::create_dir_all(&self.dir).await.map_err(disk)?;
        let part = self
            .dir
            .join(format!(".part-{}", hex::encode(rand::random::<[u8; 8]>())));
        let written = async {
            let mut file = tokio::fs::File::create(&part).await.map_err(disk)?;
            let (mut hash, mut size) = (Sha256::new(), 0u64);
            while let Some(chunk) = response.chunk().await.map_err(ApiError::from_reqwest)? {
                size += chunk.len() as u64;
                if size > max {
                    return Err(too_large());
                }
                hash.update(&chunk);
                file.write_all(&chunk).await.map_err(disk)?;
            }
            // On disk before it is named: a crash never leaves a short file under a hash name.
            file.sync_all().await.map_err(disk)?;
            Ok((hex::encode(hash.finalize()), size))
        }
        .await;
        let (sha256, size) = match written {
            Ok(done) => done,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        };
        let record = MediaRecord {
            sha256,
            kind: kind.to_owned(),
            content_type,
            size,
            file_name,
        };
        Ok((record, part))
    }

    /// A received file's record and bytes, for the link that names it: from this replica's disk,
    /// or from a store that keeps the bytes (then kept on disk too). `None` if not kept (any more).
    pub async fn open(
        &self,
        sha256: &str,
    ) -> Result<Option<(MediaRecord, tokio::fs::File)>, StoreError> {
        let Some(record) = self.store.media(sha256).await? else {
            return Ok(None);
        };
        let path = self.dir.join(disk_name(&record));
        if let Ok(file) = tokio::fs::File::open(&path).await {
            // Only whole: the size is what the answer promises.
            if file.metadata().await.is_ok_and(|m| m.len() == record.size) {
                return Ok(Some((record, file)));
            }
        }
        let Some(bytes) = self.store.media_bytes(sha256).await? else {
            return Ok(None);
        };
        if bytes.len() as u64 != record.size {
            return Err(StoreError::found(format!(
                "received file {sha256} has {} bytes in the store, not {}",
                bytes.len(),
                record.size
            )));
        }
        // Written aside and renamed, so a concurrent request never reads a half-written file.
        let part = self
            .dir
            .join(format!(".part-{}", hex::encode(rand::random::<[u8; 8]>())));
        let stored = async {
            tokio::fs::create_dir_all(&self.dir).await?;
            tokio::fs::write(&part, &bytes).await?;
            tokio::fs::rename(&part, &path).await?;
            tokio::fs::File::open(&path).await
        };
        let file = stored.await.map_err(|e| {
            let context = format!("cannot keep a received file under {}", self.dir.display());
            StoreError::failed(context, e)
        });
        if file.is_err() {
            let _ = tokio::fs::remove_file(&part).await;
        }
        Ok(Some((record, file?)))
    }

    /// Delete files older than `max_age` (the store retention), and partial downloads a crash
    /// left behind. Returns how many went.
    pub async fn prune(&self, max_age: Duration) -> usize {
        let Ok(mut entries) = tokio::fs::read_dir(&self.dir).await else {
            return 0;
        };
        let now = SystemTime::now();
        let mut deleted = 0;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let Ok(meta) = entry.metadata().await else {
                continue;
            };
            let age = (meta.modified().ok()).and_then(|m| now.duration_since(m).ok());
            let part = entry.file_name().to_string_lossy().starts_with(".part-");
            let limit = if part {
                PART_MAX_AGE.min(max_age)
            } else {
                max_age
            };
            if meta.is_file()
                && age.is_some_and(|a| a > limit)
                && tokio::fs::remove_file(entry.path()).await.is_ok()
            {
                deleted += 1;
            }
        }
        deleted
    }

    /// Check a link and say how long it still works.
    pub async fn verify(
        &self,
        sha256: &str,
        expires: u64,
        sig: &str,
    ) -> Result<Result<u64, link::LinkError>, StoreError> {
        let now = unix_now();
        let checked = link::verify(self.key().await?, sha256, expires, sig, now);
        Ok(checked.map(|()| expires - now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_name_comes_from_content_disposition_without_directories() {
        let name = |h| disposition_file_name(h);
        assert_eq!(name("attachment; filename=\"a.jpg\""), Some("a.jpg".into()));
        assert_eq!(
            name("attachment; filename=\"%E6%8A%A5%E5%91%8A.pdf\""),
            Some("报告.pdf".into())
        );
        assert_eq!(
            name("attachment; filename=\"x.bin\"; filename*=UTF-8''%E6%8A%A5.pdf"),
            Some("报.pdf".into())
        );
        assert_eq!(
            name("attachment; filename=\"../../etc/passwd\""),
            Some("passwd".into())
        );
        assert_eq!(name("attachment"), None);
        assert_eq!(name("attachment; filename=\"\""), None);
    }

    #[test]
    fn a_file_on_disk_is_named_by_its_hash_with_a_plain_extension() {
        let record = |name: Option<&str>, content_type: &str| MediaRecord {
            sha256: "ab".into(),
            kind: "file".into(),
            content_type: content_type.into(),
            size: 1,
            file_name: name.map(Into::into),
        };
        assert_eq!(disk_name(&record(None, "image/jpeg")), "ab.jpg");
        assert_eq!(
            disk_name(&record(Some("r.PDF"), "application/octet-stream")),
            "ab.pdf"
        );
        assert_eq!(disk_name(&record(Some("x./../y"), "image/png")), "ab.png");
        assert_eq!(disk_name(&record(Some("noext"), "application/x")), "ab");
    }
}
