//! Media an AI bot sends (an agent's image or file): read as any outgoing file is (within
//! `media.agent_dirs`, or from base64), uploaded over the long connection in chunks, and sent as
//! a reply carrying the media id.
//!
//! Must never: upload over a connection the bot does not hold, or read a file outside the
//! allowed directories (`outbound::upload::load` judges that).

use serde_json::{json, Value};

use super::frame;
use super::link::{Link, LinkError};
use super::media::{self, MediaError, MediaType};
use super::reply::WAIT_CONNECTED;
use crate::outbound::upload::{self as files, Unsendable};
use crate::outbound::Outbound;
use crate::wecom::media::MediaType as AppMediaType;
use crate::wecom::AppMessage;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Unsendable(#[from] Unsendable),
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error("upload: {0}")]
    Link(#[from] LinkError),
    #[error("URL mode cannot send files: only the long connection uploads them")]
    UrlMode,
    #[error("an AI bot cannot send {0} messages")]
    Kind(&'static str),
}

/// The reply body for a media message: its file uploaded (or its fresh media id reused).
pub async fn attach(
    link: &Link,
    message: &AppMessage,
    outbound: &Outbound,
) -> Result<Value, UploadError> {
    let (kind, media) = match (message.media_type(), message.media()) {
        (Some(kind), Some(media)) => (kind, media),
        _ => return Err(UploadError::Kind(message.msgtype())),
    };
    let media_type = match kind {
        AppMediaType::Image => MediaType::Image,
        AppMediaType::Voice => MediaType::Voice,
        AppMediaType::Video => MediaType::Video,
        AppMediaType::File => MediaType::File,
    };
    let file = files::load(media, kind, outbound.agent_dirs()).await?;
    let plan = media::upload_chunks(&file.bytes)?;
    let request = |cmd: &'static str, body: Value| async move {
        let req_id = format!("{cmd}_{}", hex::encode(rand::random::<[u8; 8]>()));
        link.request(cmd, &req_id, Some(&body), WAIT_CONNECTED)
            .await
    };
    let started = request(
        frame::UPLOAD_INIT,
        plan.init_body(media_type, &file.file_name),
    )
    .await?;
    let upload_id = started["upload_id"]
        .as_str()
        .ok_or(MediaError::Missing("upload_id"))?;
    // One chunk after another: WeCom answers "system error" to many at once.
    for index in 0..plan.total_chunks() {
        if let Some(body) = plan.chunk_body(upload_id, index) {
            request(frame::UPLOAD_CHUNK, body).await?;
        }
    }
    let finished = request(frame::UPLOAD_FINISH, media::finish_body(upload_id)).await?;
    let uploaded = media::read_finish_answer(&finished)?;
    let kind = media_type.as_str();
    Ok(json!({ "msgtype": kind, kind: { "media_id": uploaded.media_id } }))
}
