//! TEMPORARY stand-in until the media module lands.

#[derive(Debug, thiserror::Error)]
#[error("cannot decrypt")]
pub struct MediaError;

pub fn decrypt_media(_aeskey: &str, ciphertext: &[u8]) -> Result<Vec<u8>, MediaError> {
    Ok(ciphertext.to_vec())
}
