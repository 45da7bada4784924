//! The bytes of a file an app message carries: read from `path` (only inside `media.agent_dirs`)
//! or decoded from `base64`, and held to WeCom's upload rules before anything is uploaded.
//!
//! Must never: read a file outside the allowed directories (the path is judged by name, then
//! canonicalised and judged again, so `..` and symlinks cannot leave them), tell anything about
//! files outside them, or read more than WeCom's limit for the type.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use tokio::io::AsyncReadExt;

use crate::conversation::names_a_file_within;
use crate::wecom::client::Upload;
use crate::wecom::media::{MediaRefused, MediaType};
use crate::wecom::payload::Media;

/// Why an item's file cannot be sent: not allowed, not readable, or refused by WeCom's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsendable(String);

impl From<String> for Unsendable {
    fn from(reason: String) -> Self {
        Unsendable(reason)
    }
}

impl From<&str> for Unsendable {
    fn from(reason: &str) -> Self {
        Unsendable(reason.to_owned())
    }
}

impl From<MediaRefused> for Unsendable {
    fn from(e: MediaRefused) -> Self {
        Unsendable(e.to_string())
    }
}

/// A media_id is reused for a resend while younger than this: WeCom keeps uploads for 3 days,
/// and an hour's margin keeps a slow resend from using one that just expired.
const MEDIA_ID_REUSE_SECS: i64 = 3 * 86_400 - 3600;

/// Whether `media` carries a media_id that is still good at `now` (unix seconds).
pub fn reusable(media: &Media, now: i64) -> bool {
    let fresh = |at: i64| now.saturating_sub(at) < MEDIA_ID_REUSE_SECS;
    media.media_id.is_some() && media.uploaded_at.is_some_and(fresh)
}

pub fn unix_now() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| d.as_secs() as i64)
}

/// The file to upload for `media`, or why it cannot be sent (for the log; the member gets the
/// failure message).
pub async fn load(
    media: &Media,
    kind: MediaType,
    agent_dirs: &[PathBuf],
) -> Result<Upload, Unsendable> {
    let (bytes, name) = match (&media.path, &media.base64) {
        (Some(path), _) => (
            read_allowed(Path::new(path), kind, agent_dirs).await?,
            file_name(path),
        ),
        (None, Some(text)) => (decode(text, kind)?, None),
        (None, None) => return Err("the item has neither path nor base64".into()),
    };
    let content_type = kind.check(&bytes)?;
    let file_name = (media.file_name.clone().filter(|n| !n.trim().is_empty()))
        .or(name)
        .unwrap_or_else(|| kind.default_file_name().to_owned());
    Ok(Upload {
        bytes,
        file_name,
        content_type,
    })
}

async fn read_allowed(
    path: &Path,
    kind: MediaType,
    dirs: &[PathBuf],
) -> Result<Vec<u8>, Unsendable> {
    let outside = || {
        match dirs.is_empty() {
        true => format!("{path:?} is refused: no directory is allowed (set media.agent_dirs to let agents send files by path; base64 always works)"),
        false => format!("{path:?} is outside media.agent_dirs"),
    }
    };
    // Judged by its name first, so that nothing about files elsewhere (whether they exist) is
    // told; then by where it really is, with symlinks followed.
    let roots = roots(dirs).await;
    if !names_a_file_within(path, &roots) {
        return Err(outside().into());
    }
    let cannot = |e: std::io::Error| format!("cannot read {path:?}: {e}");
    let real = tokio::fs::canonicalize(path).await.map_err(cannot)?;
    if !names_a_file_within(&real, &roots) {
        return Err(outside().into());
    }
    // Opened once: the size is the opened file's, and no more than the limit is read.
    let file = tokio::fs::File::open(&real).await.map_err(cannot)?;
    let meta = file.metadata().await.map_err(cannot)?;
    if !meta.is_file() {
        return Err(format!("{path:?} is not a regular file").into());
    }
    kind.check_size(meta.len())?;
    let mut bytes = Vec::new();
    let limit = kind.max_bytes() as u64 + 1;
    file.take(limit)
        .read_to_end(&mut bytes)
        .await
        .map_err(cannot)?;
    kind.check_size(bytes.len() as u64)?;
    Ok(bytes)
}

/// The allowed directories, each as given and as it really is (symlinks resolved), looked up
/// once per file.
async fn roots(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut roots = dirs.to_vec();
    for dir in dirs {
        roots.extend(tokio::fs::canonicalize(dir).await.ok());
    }
    roots
}

/// Standard base64, optionally as a data URL (`data:image/png;base64,...`).
fn decode(text: &str, kind: MediaType) -> Result<Vec<u8>, Unsendable> {
    // Wrapped base64 (as `base64` and most libraries write it by default) is fine too.
    let text: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let text = match text.strip_prefix("data:") {
        Some(url) => url.split_once(',').map_or(url, |(_, data)| data),
        None => &text,
    };
    // Refused before decoding: a base64 text this long cannot be within the limit.
    let decoded_at_least = (text.len() as u64 / 4 * 3).saturating_sub(2);
    if decoded_at_least > kind.max_bytes() as u64 {
        kind.check_size(decoded_at_least)?;
    }
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("base64 is not valid: {e}").into())
}

fn file_name(path: &str) -> Option<String> {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}
