//! The store: acknowledged callbacks waiting for, or being handled by, the agent, and the replies
//! recorded for them (the outbox).
//!
//! Owns: the hand-off between the HTTP handler (which pushes and answers WeCom) and the worker pool
//! (which takes jobs); the guarantee that one user's messages are handed out in arrival order and
//! never two at once; dedup of WeCom's retries; and the record of which reply chunks were sent.
//!
//! Must never: answer `Queued` for a message it has not recorded, or hand out a duplicate it
//! recognised. Each concern has its own trait; [`Store`] is all of them from one backend.

pub mod memory;
pub mod model;
pub mod postgres;
pub mod refusals;
mod room;
mod rules;
pub mod schedule;
pub mod sqlite;

pub use memory::MemoryStore;
pub use model::*;
pub use postgres::{BadStore, PostgresStore, PostgresUrl};
pub use room::Room;
pub use sqlite::SqliteStore;

/// Where acknowledged messages are kept until answered.
#[derive(Debug, Clone)]
pub enum StoreKind {
    /// SQLite file under `data_dir`: survives restarts and crashes (the default).
    Sqlite,
    /// In memory only: lost on restart. For tests and throw-away setups.
    Memory,
    /// A PostgreSQL database shared by several replicas.
    Postgres(PostgresUrl),
}

impl StoreKind {
    /// `sqlite`, `memory` or a `postgres://` URL.
    pub(crate) fn parse(text: &str) -> Result<Self, BadStore> {
        match text.to_ascii_lowercase().as_str() {
            "sqlite" => Ok(StoreKind::Sqlite),
            "memory" => Ok(StoreKind::Memory),
            _ => PostgresUrl::parse(text).map(StoreKind::Postgres),
        }
    }
}
