//! TEMPORARY: chunked upload lands with the media module.

use serde_json::Value;

use super::link::Link;
use crate::outbound::Outbound;
use crate::wecom::AppMessage;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UploadError(String);

pub async fn attach(
    _link: &Link,
    message: &AppMessage,
    _outbound: &Outbound,
) -> Result<Value, UploadError> {
    Err(UploadError(format!(
        "cannot send {} yet",
        message.msgtype()
    )))
}
