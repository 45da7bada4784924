//! Signed, expiring links to received media: `/api/v1/media/<sha256>?expires=<unix s>&sig=<hex>`.
//!
//! Owns: what a signature covers (the file's hash and the expiry) and how it is checked
//! (HMAC-SHA-256, compared in constant time). Pure: no I/O, no clock of its own.
//!
//! Must never: accept an expired link, or compare signatures in a way that leaks how much matched.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a link is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link's signature is wrong")]
    BadSignature,
    #[error("the link has expired; ask the gateway for the message again")]
    Expired,
}

fn mac(key: &[u8], sha256: &str, expires: u64) -> HmacSha256 {
    // Any key length is valid for HMAC: this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(sha256.as_bytes());
    mac.update(b"\n");
    mac.update(expires.to_string().as_bytes());
    mac
}

/// The signature of a link to `sha256` that works until `expires` (Unix seconds).
pub fn sign(key: &[u8], sha256: &str, expires: u64) -> String {
    hex::encode(mac(key, sha256, expires).finalize().into_bytes())
}

/// Check a link's signature, then its expiry against `now` (Unix seconds).
pub fn verify(
    key: &[u8],
    sha256: &str,
    expires: u64,
    sig: &str,
    now: u64,
) -> Result<(), LinkError> {
    let sig = hex::decode(sig).map_err(|_| LinkError::BadSignature)?;
    mac(key, sha256, expires)
        .verify_slice(&sig)
        .map_err(|_| LinkError::BadSignature)?;
    if now > expires {
        return Err(LinkError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_works_until_it_expires_and_only_as_signed() {
        let (key, file) = (b"k".repeat(32), "ab".repeat(32));
        let sig = sign(&key, &file, 1_000);
        assert_eq!(verify(&key, &file, 1_000, &sig, 999), Ok(()));
        assert_eq!(verify(&key, &file, 1_000, &sig, 1_000), Ok(()));
        assert_eq!(
            verify(&key, &file, 1_000, &sig, 1_001),
            Err(LinkError::Expired)
        );
        let bad = Err(LinkError::BadSignature);
        assert_eq!(verify(&key, &file, 2_000, &sig, 0), bad, "expiry moved");
        assert_eq!(
            verify(&key, &"cd".repeat(32), 1_000, &sig, 0),
            bad,
            "another file"
        );
        assert_eq!(verify(b"other", &file, 1_000, &sig, 0), bad, "another key");
        assert_eq!(verify(&key, &file, 1_000, "zz", 0), bad, "not hex");
        assert_eq!(verify(&key, &file, 1_000, &sig[..10], 0), bad, "cut short");
    }
}
