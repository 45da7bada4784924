//! Callbacks this process has already stored, so that WeCom's retries of them (it retries until it
//! sees a 200 in time, three tries in all, and a retry storm follows every outage) are answered
//! from memory instead of from the store.
//!
//! Owns: two bounded generations of what was stored: verified `msg_signature`s (a retry that
//! repeats the request exactly is known before it is decrypted) and dedup keys (one signed again
//! with a new timestamp or nonce is known once decrypted; whether WeCom re-signs is not
//! documented, so both are kept).
//!
//! Must never: hold anything not yet committed by the store (an entry means "stored", so a hit can
//! only turn a would-be duplicate into a duplicate), or grow without bound. A miss proves nothing:
//! the store's own dedup still decides.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A generation ends when it is this old or this full, and the one before it is dropped: what was
/// stored in the last `GENERATION_AGE` is remembered (WeCom's three tries span about 15 s), unless
/// more than `GENERATION` callbacks a generation arrive, when the store answers the older retries.
/// At most about 15 MiB, and only under full load.
const GENERATION_AGE: Duration = Duration::from_secs(30);
const GENERATION: usize = 65_536;

/// A `msg_signature` is 40 hex digits: SHA-1, kept as its 20 bytes.
type Signature = [u8; 20];

#[derive(Default)]
struct Generation {
    signatures: HashSet<Signature, BuildHasherDefault<SignatureHasher>>,
    keys: HashSet<String>,
}

/// A signature is already a SHA-1 digest, and only signatures that verified with the app's token
/// are stored (no one without the token can choose them), so no keyed hash is needed: its words
/// are folded with one multiply each, which also spreads inputs that are not random.
#[derive(Default)]
struct SignatureHasher(u64);

impl Hasher for SignatureHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(31);
        }
    }
}

impl Generation {
    fn len(&self) -> usize {
        self.signatures.len().max(self.keys.len())
    }
}

struct Generations {
    newer: Generation,
    older: Generation,
    /// When `newer` began.
    since: Instant,
}

/// Recently stored callbacks.
pub struct Recent(Mutex<Generations>);

impl Default for Recent {
    fn default() -> Self {
        Recent(Mutex::new(Generations {
            newer: Generation::default(),
            older: Generation::default(),
            since: Instant::now(),
        }))
    }
}

fn signature(msg_signature: &str) -> Option<Signature> {
    let mut out = [0u8; 20];
    hex::decode_to_slice(msg_signature, &mut out).ok()?;
    Some(out)
}

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Was a callback with this (already verified) signature stored?
    pub fn has_signature(&self, msg_signature: &str) -> bool {
        let Some(sig) = signature(msg_signature) else {
            return false;
        };
        let g = self.lock();
        g.newer.signatures.contains(&sig) || g.older.signatures.contains(&sig)
    }

    /// Was a callback with this dedup key stored?
    pub fn has_key(&self, dedup_key: &str) -> bool {
        let g = self.lock();
        g.newer.keys.contains(dedup_key) || g.older.keys.contains(dedup_key)
    }

    /// The store has committed this callback (or already had it).
    pub fn stored(&self, msg_signature: &str, dedup_key: String) {
        self.stored_at(msg_signature, dedup_key, Instant::now());
    }

    fn stored_at(&self, msg_signature: &str, dedup_key: String, now: Instant) {
        let sig = signature(msg_signature);
        let mut g = self.lock();
        if g.newer.len() >= GENERATION || now.saturating_duration_since(g.since) >= GENERATION_AGE {
            g.older = std::mem::take(&mut g.newer);
            g.since = now;
        }
        if let Some(sig) = sig {
            g.newer.signatures.insert(sig);
        }
        g.newer.keys.insert(dedup_key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "477715d11cdb4164915debcba66cb864d751f3e6";

    #[test]
    fn remembers_what_was_stored_and_forgets_the_oldest_first() {
        let recent = Recent::default();
        assert!(!recent.has_signature(SIG));
        assert!(!recent.has_key("corp:1:msg:1"));
        recent.stored(SIG, "corp:1:msg:1".into());
        assert!(recent.has_signature(SIG));
        assert!(recent.has_signature(&SIG.to_uppercase()));
        assert!(recent.has_key("corp:1:msg:1"));
        assert!(!recent.has_key("corp:1:msg:2"));
        // Not hex: never known, never stored as a signature.
        recent.stored("not-a-signature", "corp:1:msg:x".into());
        assert!(!recent.has_signature("not-a-signature"));
        // Two full generations later, the first entry is gone; the latest ones stay.
        for n in 0..2 * GENERATION {
            recent.stored(&format!("{n:040x}"), format!("k{n}"));
        }
        assert!(!recent.has_key("corp:1:msg:1"));
        assert!(!recent.has_signature(SIG));
        let last = 2 * GENERATION - 1;
        assert!(recent.has_key(&format!("k{last}")));
        assert!(recent.has_signature(&format!("{last:040x}")));
        assert!(recent.has_key(&format!("k{}", last + 1 - GENERATION)));
    }

    #[test]
    fn forgets_by_age_too() {
        let recent = Recent::default();
        let start = Instant::now();
        recent.stored_at(SIG, "a".into(), start);
        let later = start + GENERATION_AGE;
        recent.stored_at(&format!("{:040x}", 1), "b".into(), later);
        // One generation on: still known.
        assert!(recent.has_key("a") && recent.has_signature(SIG));
        recent.stored_at(&format!("{:040x}", 2), "c".into(), later + GENERATION_AGE);
        assert!(!recent.has_key("a") && !recent.has_signature(SIG));
        assert!(recent.has_key("b") && recent.has_key("c"));
    }
}
