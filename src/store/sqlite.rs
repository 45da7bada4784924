//! Durable store and outbox in one SQLite file (WAL, synchronous=FULL) under the data directory.
//!
//! Owns: the schema and its migrations, the states of a message (queued -> processing -> done /
//! failed), dedup keys (the store's UNIQUE column), recorded reply chunks, user -> app routes,
//! recovery of work a dead process left behind, and retention.
//!
//! Every statement runs on one writer thread. Writes that arrive together are committed together
//! (group commit: one fsync for the batch), and a caller hears back only after its commit, so a
//! `Queued` answer means the message is on disk. Reads run after the batch's commit, so they never
//! see a write that might still roll back. Only a bounded window of the backlog is in memory.
//!
//! A write that fails (a full disk, say) fails only the operations it belongs to, and everything
//! resumes by itself once writes succeed again: a job that cannot be marked as started goes back to
//! the front of its user's queue, and the end of a job is recorded as soon as the store takes it.
//! `max_store_mb` and `min_free_mb` (`room.rs`) limit new work only (new messages and pushes);
//! finishing acknowledged work is never refused.
//!
//! Must never: answer a push before its commit, run two gateways on one data directory (a lock
//! file prevents it), block the async runtime on disk I/O, or restate a rule of `rules.rs`
//! (finishing, failures, retries): this file holds its SQL and transactions only.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{oneshot, Notify};

use super::model::{
    now_ms, Cause, Chunk, ChunkState, Deliveries, DeliveryRetry, DeliveryState, DeliveryStatus,
    FailedItem, Failure, Failures, History, HistoryEntry, Job, Media, MediaRecord, NewJob, Outbox,
    Outcome, Pushed, Queue, Role, Routes, StoreError, StoredDelivery,
};
use super::refusals::Refusals;
use super::room::{Limited, Room};
use super::rules::{self, RetryCheck};
use super::schedule::{OnClose, Window};
use crate::conversation::{Push, Streamed};
use crate::wecom::AppMessage;

pub const DB_FILE: &str = "wecom-gateway.db";
const LOCK_FILE: &str = "wecom-gateway.lock";
/// Most operations committed in one transaction.
const MAX_BATCH: usize = 512;
/// A message whose handling was cut short this many times (the process died each time) is given up.
pub const MAX_ATTEMPTS: u32 = 5;
/// Finished rows deleted per transaction while pruning, so pushes are never held up for long.
const PRUNE_BATCH: usize = 1000;
/// How long to wait before trying again a write the store refused (a full disk, say).
const WRITE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: inbox (with the dedup key), outbox chunks, user routes.
    "CREATE TABLE inbox (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        dedup_key   TEXT    NOT NULL UNIQUE,
        app         TEXT    NOT NULL,
        user_key    TEXT    NOT NULL,
        payload     TEXT    NOT NULL,
        state       TEXT    NOT NULL CHECK (state IN ('queued', 'processing', 'done', 'failed')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        error       TEXT,
        received_at INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    CREATE INDEX inbox_queued ON inbox (state, id);
    CREATE INDEX inbox_finished ON inbox (state, updated_at);
    CREATE TABLE outbox (
        inbox_id INTEGER NOT NULL REFERENCES inbox (id) ON DELETE CASCADE,
        seq      INTEGER NOT NULL,
        content  TEXT    NOT NULL,
        sent_at  INTEGER,
        PRIMARY KEY (inbox_id, seq)
    );
    CREATE TABLE routes (
        user_key   TEXT PRIMARY KEY,
        app        TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );",
    // 2: pushes from the API and alerting, one WeCom message per row, delivered in id order.
    "CREATE TABLE deliveries (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        target     TEXT    NOT NULL,
        payload    TEXT    NOT NULL,
        state      TEXT    NOT NULL CHECK (state IN ('queued', 'sent', 'failed')),
        attempts   INTEGER NOT NULL DEFAULT 0,
        error      TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX deliveries_queued ON deliveries (state, id);
    CREATE INDEX deliveries_finished ON deliveries (state, updated_at);",
    // 3: conversation history for agents that keep one (openai), per corp_id:user_id.
    "CREATE TABLE history (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        user_key   TEXT    NOT NULL,
        role       TEXT    NOT NULL,
        content    TEXT    NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX history_user ON history (user_key, id);",
    // 4: when a reply chunk's or a push's send began, so a restart knows it may have arrived.
    "ALTER TABLE outbox ADD COLUMN started_at INTEGER;
    ALTER TABLE deliveries ADD COLUMN started_at INTEGER;",
    // 5: a reply chunk other than text (image, card...) as JSON, with its media_id once uploaded.
    "ALTER TABLE outbox ADD COLUMN message TEXT;",
    // 6: media members sent (the bytes are files under data_dir/media/), and the key that signs
    // the links agents fetch them by.
    "CREATE TABLE media (
        sha256       TEXT    PRIMARY KEY,
        kind         TEXT    NOT NULL,
        content_type TEXT    NOT NULL,
        size         INTEGER NOT NULL,
        file_name    TEXT,
        updated_at   INTEGER NOT NULL
    );
    CREATE INDEX media_updated ON media (updated_at);
    CREATE TABLE keys (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );",
    // 7: the msgid of the receipt sent while the agent worked, withdrawn once the reply is out.
    "ALTER TABLE inbox ADD COLUMN receipt TEXT;",
    // 8: a failure's facts in columns of their own, no longer prefixes of its error text: which
    // job or delivery it was retried as ("retried as job-7: "), whether WeCom refused a piece of
    // a recorded reply ("piece 2 of 3: ..."), and WeCom's errcode ("WeCom errcode 81013").
    // Rows of earlier versions are moved over, so an upgraded store lists and retries the same.
    "ALTER TABLE inbox ADD COLUMN retried_as INTEGER;
    ALTER TABLE inbox ADD COLUMN send_failed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE inbox ADD COLUMN errcode INTEGER;
    ALTER TABLE deliveries ADD COLUMN retried_as INTEGER;
    ALTER TABLE deliveries ADD COLUMN errcode INTEGER;
    UPDATE inbox SET retried_as = CAST(substr(error, 16) AS INTEGER),
        error = NULLIF(substr(error, instr(error, ': ') + 2), '')
    WHERE substr(error, 1, 15) = 'retried as job-';
    UPDATE deliveries SET retried_as = CAST(substr(error, 21) AS INTEGER),
        error = NULLIF(substr(error, instr(error, ': ') + 2), '')
    WHERE substr(error, 1, 20) = 'retried as delivery-';
    UPDATE inbox SET send_failed = 1 WHERE state = 'failed' AND substr(error, 1, 6) = 'piece ';
    UPDATE inbox SET errcode = CAST(substr(error, instr(error, 'WeCom errcode ') + 14) AS INTEGER)
    WHERE instr(error, 'WeCom errcode ') > 0
      AND (substr(error, instr(error, 'WeCom errcode ') + 14, 1) GLOB '[0-9]'
           OR substr(error, instr(error, 'WeCom errcode ') + 14, 2) GLOB '-[0-9]');
    UPDATE deliveries SET errcode = CAST(substr(error, instr(error, 'WeCom errcode ') + 14) AS INTEGER)
    WHERE instr(error, 'WeCom errcode ') > 0
      AND (substr(error, instr(error, 'WeCom errcode ') + 14, 1) GLOB '[0-9]'
           OR substr(error, instr(error, 'WeCom errcode ') + 14, 2) GLOB '-[0-9]');",
    // 9: the channel a job came through (its kind; `app` holds the name), so a second kind of
    // channel can share the queue. Every earlier job came through a self-built app.
    "ALTER TABLE inbox ADD COLUMN channel TEXT NOT NULL DEFAULT 'app';",
    // 10: how far a reply streamed into an AI bot's bubble (JSON), so a restart finishes it.
    "ALTER TABLE inbox ADD COLUMN stream TEXT;",
];

fn storage(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Storage(Cause::new(None, e))
}

/// A full disk, or a limit of `room.rs` (`max_store_mb`, `min_free_mb`), is "no room for new
/// work" (try later, logged by the store's [`RefusalLog`]); anything else is a failed write.
fn store_error(e: rusqlite::Error) -> StoreError {
    match no_room(&e) {
        Some(_) => StoreError::NoRoom(e.to_string()),
        None => storage(e),
    }
}

/// Why there was no room for a write, if that is what `e` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoRoom {
    /// The disk itself is full: every write is refused.
    Disk,
    /// A limit on new work (`room.rs`): finishing work is still written.
    Limit,
}

fn no_room(e: &rusqlite::Error) -> Option<NoRoom> {
    if let rusqlite::Error::ToSqlConversionFailure(inner) = e {
        return inner.is::<Limited>().then_some(NoRoom::Limit);
    }
    (e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)).then_some(NoRoom::Disk)
}

/// The store's refusals for lack of room, as the log tells them (`refusals.rs`): a full disk
/// refuses every write and ends when one succeeds; a limit refuses new work and ends when new
/// work fits again.
#[derive(Debug)]
struct RefusalLog {
    disk: Refusals,
    cap: Refusals,
}

impl RefusalLog {
    fn new() -> Self {
        RefusalLog {
            disk: Refusals::new("refuses writes", "takes writes again")
                .meaning("accepted work waits for room too"),
            cap: Refusals::new("refuses new work", "takes new work again")
                .meaning("accepted work goes on"),
        }
    }

    /// The outcome of a write: refused for lack of room, or done.
    fn saw(&self, refused: Option<(NoRoom, &dyn std::fmt::Display)>) {
        match refused {
            Some((NoRoom::Disk, why)) => self.disk.refused(why),
            Some((NoRoom::Limit, why)) => self.cap.refused(why),
            None => self.disk.cleared(),
        }
    }
}

// ---------------------------------------------------------------- the writer thread

/// A statement batch waiting for the writer thread.
trait Pending: Send {
    fn is_read(&self) -> bool;
    /// Run against the connection; false if it failed. May run again if its transaction was lost.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Tell the caller, once the outcome of the commit is known (and `room`, for a write).
    fn complete(self: Box<Self>, commit_error: Option<StoreError>, room: &RefusalLog);
}

struct Call<F, R> {
    f: F,
    read: bool,
    result: Option<rusqlite::Result<R>>,
    tx: oneshot::Sender<Result<R, StoreError>>,
}

impl<F, R> Pending for Call<F, R>
where
    F: Fn(&Connection) -> rusqlite::Result<R> + Send,
    R: Send,
{
    fn is_read(&self) -> bool {
        self.read
    }

    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.f)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn complete(self: Box<Self>, commit_error: Option<StoreError>, room: &RefusalLog) {
        let write = !self.read;
        let outcome = match (self.result, commit_error) {
            (Some(Err(e)), _) => {
                if let Some(why) = no_room(&e).filter(|_| write) {
                    room.saw(Some((why, &e)));
                }
                Err(store_error(e))
            }
            (_, Some(e)) => {
                if write && e.logged_by_store() {
                    room.saw(Some((NoRoom::Disk, &e)));
                }
                Err(e)
            }
            (Some(Ok(value)), None) => {
                if write {
                    room.saw(None);
                }
                Ok(value)
            }
            (None, None) => Err(StoreError::found("statement was not run")),
        };
        let _ = self.tx.send(outcome);
    }
}

/// Handle to the writer thread. Dropping the last handle ends the thread.
#[derive(Clone)]
struct Db {
    ops: mpsc::Sender<Box<dyn Pending>>,
    /// What the writer found of the room: it hears every write's outcome.
    refusals: Arc<RefusalLog>,
}

impl Db {
    fn spawn(conn: Connection) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Box<dyn Pending>>();
        let refusals = Arc::new(RefusalLog::new());
        let writer_room = refusals.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, &writer_room))
            .map_err(storage)?;
        Ok(Db { ops: tx, refusals })
    }

    async fn call<R, F>(&self, read: bool, f: F) -> Result<R, StoreError>
    where
        F: Fn(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op = Box::new(Call {
            f,
            read,
            result: None,
            tx,
        });
        self.ops
            .send(op)
            .map_err(|_| StoreError::found("the store's writer thread has stopped"))?;
        rx.await
            .map_err(|_| StoreError::found("the store's writer thread has stopped"))?
    }

    async fn write<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: Fn(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.call(false, f).await
    }

    async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: Fn(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.call(true, f).await
    }
}

/// Run one of the writer's own statements (BEGIN, COMMIT, ROLLBACK), prepared once: they run for
/// every batch, and parsing them each time showed in the profile.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn sql_error(conn: &Connection, sql: &str) -> Option<StoreError> {
    exec(conn, sql).err().map(store_error)
}

/// Run the writes of one batch in one transaction. Optimistic: no savepoint per write (they cost
/// two statements and a statement journal each). If any write fails, or SQLite rolled the whole
/// transaction back on its own (it may, on a full disk or an I/O error), the batch is undone and
/// the caller runs each write again alone, so one failing write never takes the others with it.
fn run_batch(conn: &Connection, writes: &mut [Box<dyn Pending>]) -> Result<(), StoreError> {
    if let Some(e) = sql_error(conn, "BEGIN IMMEDIATE") {
        return Err(e);
    }
    for op in writes.iter_mut() {
        if !op.run(conn) {
            if !conn.is_autocommit() {
                let _ = exec(conn, "ROLLBACK");
            }
            return Err(StoreError::found("a write of the batch failed"));
        }
    }
    match sql_error(conn, "COMMIT") {
        None => Ok(()),
        Some(e) => {
            if !conn.is_autocommit() {
                let _ = exec(conn, "ROLLBACK");
            }
            Err(e)
        }
    }
}

/// One write in a transaction of its own: its outcome is its own, whatever the others do.
fn run_alone(conn: &Connection, op: &mut Box<dyn Pending>) -> Option<StoreError> {
    if let Some(e) = sql_error(conn, "BEGIN IMMEDIATE") {
        return Some(e);
    }
    if !op.run(conn) {
        // The op's own error is its outcome; SQLite may already have rolled back.
        if !conn.is_autocommit() {
            let _ = exec(conn, "ROLLBACK");
        }
        return None;
    }
    if conn.is_autocommit() {
        return Some(StoreError::found("the transaction was rolled back"));
    }
    let failed = sql_error(conn, "COMMIT");
    if failed.is_some() && !conn.is_autocommit() {
        let _ = exec(conn, "ROLLBACK");
    }
    failed
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Box<dyn Pending>>, room: &RefusalLog) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let (mut writes, reads): (Vec<_>, Vec<_>) = batch.into_iter().partition(|op| !op.is_read());
        if !writes.is_empty() {
            match run_batch(&conn, &mut writes) {
                Ok(()) => writes.into_iter().for_each(|op| op.complete(None, room)),
                // Nothing of the batch stands. Run each write again on its own, so only the
                // ones the store really refuses fail, and each caller hears its own outcome.
                Err(_) if writes.len() > 1 => {
                    for mut op in writes {
                        let error = run_alone(&conn, &mut op);
                        op.complete(error, room);
                    }
                }
                Err(e) => writes
                    .into_iter()
                    .for_each(|op| op.complete(Some(e.clone()), room)),
            }
        }
        for mut op in reads {
            op.run(&conn);
            op.complete(None, room);
        }
    }
}

/// Room for new work (`room`), as a value: a refusal by a limit is the write's answer, not a
/// failed write, so the writes batched with it still commit. (A failed write undoes its batch and
/// every write in it runs again alone, an fsync each: just when the disk is nearly full and
/// accepted work needs it most.) The refusal is told to the log here, as a failed write would be;
/// room found again ends a refusal by a limit.
fn room_for_new_work(
    c: &Connection,
    room: &Room,
    refusals: &RefusalLog,
) -> rusqlite::Result<Result<(), rusqlite::Error>> {
    match room.check(c) {
        Ok(()) => {
            refusals.cap.cleared();
            Ok(Ok(()))
        }
        Err(e) if no_room(&e) == Some(NoRoom::Limit) => {
            refusals.saw(Some((NoRoom::Limit, &e)));
            Ok(Err(e))
        }
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------- opening and recovery

/// What start-up found in the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Messages a previous process left queued or in progress, taken up again.
    pub resumed: usize,
    /// Messages given up because the process died while handling them `MAX_ATTEMPTS` times.
    pub given_up: usize,
}

/// Counts of messages by state, for operators and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub queued: usize,
    pub processing: usize,
    pub done: usize,
    pub failed: usize,
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // WAL for concurrent readers and cheap commits; FULL so a commit survives power loss too.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: usize =
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn recover(conn: &Connection) -> rusqlite::Result<Recovered> {
    let now = now_ms();
    let doomed: Vec<(i64, i64)> = conn
        .prepare(
            "SELECT id, attempts FROM inbox
             WHERE state IN ('queued', 'processing') AND attempts >= ?1",
        )?
        .query_map([MAX_ATTEMPTS], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, attempts) in &doomed {
        let failure = Failure::from(rules::gave_up(*attempts));
        finish_row(conn, *id, "failed", Some(&failure))?;
    }
    let given_up = doomed.len();
    conn.execute(
        "UPDATE inbox SET state = 'queued', updated_at = ?1 WHERE state = 'processing'",
        params![now],
    )?;
    let resumed: i64 = conn.query_row(
        "SELECT COUNT(*) FROM inbox WHERE state = 'queued' AND attempts > 0",
        [],
        |r| r.get(0),
    )?;
    Ok(Recovered {
        resumed: resumed as usize,
        given_up,
    })
}

// ---------------------------------------------------------------- the store

pub struct SqliteStore {
    db: Db,
    /// `max_store_mb` and `min_free_mb`: new work is refused beyond them.
    room: Arc<Room>,
    window: Window,
    /// Most jobs held in memory at once; the rest wait on disk.
    capacity: usize,
    /// Wakes the loader: something was queued, a slot in the window freed up, or the store closed.
    loader: Notify,
    closed: AtomicBool,
    path: PathBuf,
    recovered: Recovered,
    // Held for the life of the store: the OS releases it even on kill -9.
    _lock: Option<File>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

struct Row {
    id: i64,
    channel: String,
    app: String,
    user_key: String,
    payload: String,
    attempts: u32,
    reply: Option<Vec<Chunk>>,
    receipt: Option<String>,
    stream: Option<String>,
}

/// Create `data_dir` if needed and lock it for this process, for as long as the returned file is
/// held (the OS releases it even on kill -9): two gateways on one directory would answer twice.
pub fn lock_data_dir(data_dir: &Path) -> Result<File, StoreError> {
    let shown = data_dir.display();
    std::fs::create_dir_all(data_dir)
        .map_err(|e| StoreError::failed(format!("cannot create data_dir {shown}"), e))?;
    let lock = File::create(data_dir.join(LOCK_FILE))
        .map_err(|e| StoreError::failed(format!("cannot write in data_dir {shown}"), e))?;
    lock.try_lock().map_err(|_| {
        StoreError::found(format!(
            "data_dir {shown} is in use by another wecom-gateway process; give each instance its own data_dir"
        ))
    })?;
    Ok(lock)
}

impl SqliteStore {
    /// Open (creating if needed) the store in `data_dir`, migrate it, and take over what a previous
    /// process left unfinished. Queued messages reach workers once [`Store::feed`] runs.
    pub fn open(data_dir: &Path, capacity: usize, room: Room) -> Result<Arc<Self>, StoreError> {
        let lock = lock_data_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let mut conn = open_connection(&path)
            .map_err(|e| StoreError::failed(format!("cannot open {}", path.display()), e))?;
        migrate(&mut conn)
            .map_err(|e| StoreError::failed(format!("cannot migrate {}", path.display()), e))?;
        let recovered = recover(&conn)
            .map_err(|e| StoreError::failed(format!("cannot recover {}", path.display()), e))?;
        Ok(Arc::new(SqliteStore {
            db: Db::spawn(conn)?,
            room: Arc::new(room),
            window: Window::new(OnClose::Stop),
            capacity,
            loader: Notify::new(),
            closed: AtomicBool::new(false),
            path,
            recovered,
            _lock: Some(lock),
        }))
    }

    /// The store of `data_dir` for the admin commands (`failed`, `retry`), beside a gateway that
    /// may be running on it: no lock taken, and nothing recovered (that is the gateway's).
    pub fn open_beside(data_dir: &Path) -> Result<Arc<Self>, StoreError> {
        let path = data_dir.join(DB_FILE);
        if !path.is_file() {
            return Err(StoreError::found(format!(
                "no message store at {}",
                path.display()
            )));
        }
        let conn = open_connection(&path)
            .map_err(|e| StoreError::failed(format!("cannot open {}", path.display()), e))?;
        // Never migrate under a running gateway: only the same schema version is used.
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| StoreError::failed(format!("cannot read {}", path.display()), e))?;
        if version != MIGRATIONS.len() as i64 {
            return Err(StoreError::found(format!(
                "{} has schema version {version}, this wecom-gateway uses {}: run the same version as the gateway",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        Ok(Arc::new(SqliteStore {
            db: Db::spawn(conn)?,
            room: Arc::default(),
            window: Window::new(OnClose::Stop),
            capacity: 0,
            loader: Notify::new(),
            closed: AtomicBool::new(false),
            path,
            recovered: Recovered::default(),
            _lock: None,
        }))
    }

    pub fn recovered(&self) -> Recovered {
        self.recovered
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Messages by state.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare("SELECT state, COUNT(*) FROM inbox GROUP BY state")?;
                let mut counts = Counts::default();
                let rows = stmt.query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize))
                })?;
                for row in rows {
                    let (state, n) = row?;
                    match state.as_str() {
                        "queued" => counts.queued = n,
                        "processing" => counts.processing = n,
                        "done" => counts.done = n,
                        _ => counts.failed = n,
                    }
                }
                Ok(counts)
            })
            .await
    }

    /// Messages that were given up, oldest first, with why: `(id, error)`.
    pub async fn failures(&self) -> Result<Vec<(i64, String)>, StoreError> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT id, COALESCE(error, '') FROM inbox WHERE state = 'failed' ORDER BY id",
                )?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })
            .await
    }

    /// Keep the window topped up from disk, in arrival (id) order, until the store closes.
    async fn load_loop(&self) {
        let mut cursor: i64 = 0;
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let room = self.capacity.saturating_sub(self.window.waiting());
            if room > 0 {
                match self.db.read(move |c| load_queued(c, cursor, room)).await {
                    Ok(rows) => {
                        let full = rows.len() == room;
                        for row in rows {
                            cursor = row.id;
                            self.admit(row).await;
                        }
                        if full {
                            continue;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot load queued messages; retrying in 1 s");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            // Also now and then: work another process queued (`wecom-gateway retry`) shows up.
            tokio::select! {
                () = self.loader.notified() => {}
                () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            }
        }
    }

    /// Turn a stored row back into a job, or fail it if it can no longer be read.
    async fn admit(&self, row: Row) {
        match rules::stored_message(&row.channel, row.app, &row.payload) {
            Ok((channel, message)) => self.window.add(Job {
                id: row.id as u64,
                channel,
                user_key: row.user_key,
                message,
                attempts: row.attempts,
                reply: row.reply,
                receipt: row.receipt,
                stream: Streamed::from_column(row.stream),
            }),
            Err(failure) => {
                tracing::error!(id = row.id, "{}; marked failed", failure.reason);
                let id = row.id;
                let _ = self
                    .db
                    .write(move |c| finish_row(c, id, "failed", Some(&failure)))
                    .await;
            }
        }
    }
}

fn load_queued(c: &Connection, after: i64, limit: usize) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, channel, app, user_key, payload, attempts, receipt, stream FROM inbox
         WHERE state = 'queued' AND id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let mut rows = stmt
        .query_map(params![after, limit as i64], |r| {
            Ok(Row {
                id: r.get(0)?,
                channel: r.get(1)?,
                app: r.get(2)?,
                user_key: r.get(3)?,
                payload: r.get(4)?,
                attempts: r.get(5)?,
                reply: None,
                receipt: r.get(6)?,
                stream: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // Only a message handled before (by a process that died) can have a recorded reply.
    for row in rows.iter_mut().filter(|r| r.attempts > 0) {
        let mut stmt = c.prepare_cached(
            "SELECT seq, content, sent_at IS NOT NULL, started_at IS NOT NULL, message
             FROM outbox WHERE inbox_id = ?1 ORDER BY seq",
        )?;
        let chunks = stmt
            .query_map([row.id], |r| {
                let state = match (r.get(2)?, r.get(3)?) {
                    (true, _) => ChunkState::Sent,
                    (false, true) => ChunkState::Started,
                    (false, false) => ChunkState::Unsent,
                };
                Ok(Chunk {
                    seq: r.get::<_, i64>(0)? as usize,
                    message: Chunk::from_columns(r.get(1)?, r.get(4)?),
                    state,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if !chunks.is_empty() {
            row.reply = Some(chunks);
        }
    }
    Ok(rows)
}

fn finish_row(
    c: &Connection,
    id: i64,
    state: &str,
    failure: Option<&Failure>,
) -> rusqlite::Result<()> {
    let (error, send_failed, errcode) = rules::failure_columns(failure);
    c.prepare_cached(
        "UPDATE inbox SET state = ?2, error = ?3, send_failed = ?4, errcode = ?5, updated_at = ?6
         WHERE id = ?1",
    )?
    .execute(params![id, state, error, send_failed, errcode, now_ms()])?;
    Ok(())
}

#[async_trait]
impl Queue for SqliteStore {
    async fn push(&self, new: NewJob) -> Result<Pushed, StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let NewJob {
            channel,
            user_key,
            dedup_key,
            payload,
        } = new;
        let (room, refusals) = (self.room.clone(), self.db.refusals.clone());
        let inserted = self
            .db
            .write(move |c| {
                let now = now_ms();
                // A retry of a stored message is answered as a duplicate, never refused; looked
                // up only when there is no room (otherwise the insert itself finds it).
                if let Err(refused) = room_for_new_work(c, &room, &refusals)? {
                    let known = c
                        .prepare_cached("SELECT 1 FROM inbox WHERE dedup_key = ?1")?
                        .exists([&dedup_key])?;
                    return Ok(if known { Ok(false) } else { Err(refused) });
                }
                let inserted = c
                    .prepare_cached(
                        "INSERT INTO inbox (dedup_key, channel, app, user_key, payload, state, received_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?6) ON CONFLICT (dedup_key) DO NOTHING",
                    )?
                    .execute(params![dedup_key, channel.kind(), channel.name(), user_key, payload, now])?;
                if let Some(app) = channel.route().filter(|_| inserted == 1) {
                    // A route that did not change is not rewritten (updated_at: when it was set).
                    c.prepare_cached(
                        "INSERT INTO routes (user_key, app, updated_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT (user_key) DO UPDATE SET app = excluded.app, updated_at = excluded.updated_at
                         WHERE routes.app <> excluded.app",
                    )?
                    .execute(params![user_key, app, now])?;
                }
                Ok(Ok(inserted == 1))
            })
            .await?
            .map_err(store_error)?;
        if inserted {
            self.loader.notify_one();
            Ok(Pushed::Queued)
        } else {
            Ok(Pushed::Duplicate)
        }
    }

    async fn next(&self) -> Option<Job> {
        loop {
            let mut job = self.window.next().await?;
            self.loader.notify_one();
            let id = job.id as i64;
            let begun = self
                .db
                .write(move |c| {
                    c.prepare_cached(
                        "UPDATE inbox SET state = 'processing', attempts = attempts + 1, updated_at = ?2
                         WHERE id = ?1 AND state = 'queued'",
                    )?
                    .execute(params![id, now_ms()])
                })
                .await;
            match begun {
                Ok(1) => {
                    job.attempts += 1;
                    return Some(job);
                }
                Ok(_) => {
                    // No longer queued (finished by an earlier try); nothing to do.
                    self.window.release(&job.user_key);
                }
                Err(e) => {
                    // Not handled unrecorded: it goes back to the front of its user's queue, and
                    // this worker waits a moment before taking work again.
                    if !e.logged_by_store() {
                        tracing::error!(id, error = %e, "cannot mark message as processing; trying again shortly");
                    }
                    self.window.put_back(job);
                    tokio::time::sleep(WRITE_RETRY).await;
                }
            }
        }
    }

    async fn finish(&self, job: &Job, outcome: Outcome) {
        let id = job.id as i64;
        // Interrupted: left 'processing', and recovery at the next start queues it again.
        if let Some((state, failure)) = rules::finished(outcome) {
            let failure = Arc::new(failure);
            let unrecorded = "it stays 'processing' and is taken up again at the next start";
            rules::record_until_closed(id, &self.closed, unrecorded, || {
                let failure = failure.clone();
                self.db
                    .write(move |c| finish_row(c, id, state, failure.as_ref().as_ref()))
            })
            .await;
        }
        self.window.release(&job.user_key);
    }

    async fn prune(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self
                .db
                .write(move |c| {
                    let store = c
                        .prepare_cached(
                            "DELETE FROM inbox WHERE id IN (
                                 SELECT id FROM inbox WHERE state IN ('done', 'failed') AND updated_at < ?1 LIMIT ?2)",
                        )?
                        .execute(params![cutoff_ms, PRUNE_BATCH as i64])?;
                    let deliveries = c
                        .prepare_cached(
                            "DELETE FROM deliveries WHERE id IN (
                                 SELECT id FROM deliveries WHERE state IN ('sent', 'failed') AND updated_at < ?1 LIMIT ?2)",
                        )?
                        .execute(params![cutoff_ms, PRUNE_BATCH as i64])?;
                    let media = c
                        .prepare_cached(
                            "DELETE FROM media WHERE sha256 IN (
                                 SELECT sha256 FROM media WHERE updated_at < ?1 LIMIT ?2)",
                        )?
                        .execute(params![cutoff_ms, PRUNE_BATCH as i64])?;
                    Ok((store, deliveries, media))
                })
                .await?;
            total += n.0 + n.1 + n.2;
            if n.0 < PRUNE_BATCH && n.1 < PRUNE_BATCH && n.2 < PRUNE_BATCH {
                return Ok(total);
            }
        }
    }

    async fn feed(&self) {
        self.load_loop().await
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.window.close();
        self.loader.notify_one();
    }

    fn len(&self) -> usize {
        self.window.waiting() + self.window.in_progress()
    }

    async fn ready(&self) -> Result<(), StoreError> {
        // A real write, committed: a read-only or full disk fails it.
        self.db
            .write(|c| {
                c.prepare_cached("INSERT OR REPLACE INTO keys (name, value) VALUES ('ready', ?1)")?
                    .execute([now_ms().to_le_bytes().to_vec()])?;
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn record_reply(&self, job: &Job, chunks: &[AppMessage]) -> Result<(), StoreError> {
        let id = job.id as i64;
        let chunks: Vec<_> = chunks.iter().map(Chunk::to_columns).collect();
        self.db
            .write(move |c| {
                let mut stmt = c.prepare_cached(
                    "INSERT INTO outbox (inbox_id, seq, content, message) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (inbox_id, seq) DO NOTHING",
                )?;
                for (seq, (content, message)) in chunks.iter().enumerate() {
                    stmt.execute(params![id, seq as i64, content, message])?;
                }
                Ok(())
            })
            .await
    }

    async fn record_upload(
        &self,
        job: &Job,
        seq: usize,
        message: &AppMessage,
    ) -> Result<(), StoreError> {
        let (id, (_, message)) = (job.id as i64, Chunk::to_columns(message));
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE outbox SET message = ?3 WHERE inbox_id = ?1 AND seq = ?2",
                )?
                .execute(params![id, seq as i64, message])?;
                Ok(())
            })
            .await
    }

    async fn mark_chunk(&self, job: &Job, seq: usize, state: ChunkState) -> Result<(), StoreError> {
        let Some(column) = rules::chunk_stamp(state) else {
            return Ok(());
        };
        let sql = format!("UPDATE outbox SET {column} = ?3 WHERE inbox_id = ?1 AND seq = ?2");
        let id = job.id as i64;
        self.db
            .write(move |c| {
                c.prepare_cached(&sql)?
                    .execute(params![id, seq as i64, now_ms()])?;
                Ok(())
            })
            .await
    }

    async fn record_receipt(&self, job: &Job, msgid: &str) -> Result<(), StoreError> {
        let (id, msgid) = (job.id as i64, msgid.to_owned());
        self.db
            .write(move |c| {
                c.prepare_cached("UPDATE inbox SET receipt = ?2 WHERE id = ?1")?
                    .execute(params![id, msgid])?;
                Ok(())
            })
            .await
    }

    async fn record_stream(&self, job: &Job, streamed: &Streamed) -> Result<(), StoreError> {
        let (id, column) = (job.id as i64, streamed.to_column());
        self.db
            .write(move |c| {
                c.prepare_cached("UPDATE inbox SET stream = ?2 WHERE id = ?1")?
                    .execute(params![id, column])?;
                Ok(())
            })
            .await
    }

    async fn streamed(&self, dedup_key: &str) -> Result<Option<Option<Streamed>>, StoreError> {
        let key = dedup_key.to_owned();
        self.db
            .read(move |c| {
                c.prepare_cached("SELECT stream FROM inbox WHERE dedup_key = ?1")?
                    .query_row([&key], |r| r.get::<_, Option<String>>(0))
                    .optional()
            })
            .await
            .map(|row| row.map(Streamed::from_column))
    }
}

#[async_trait]
impl Routes for SqliteStore {
    async fn route(&self, user_key: &str) -> Result<Option<String>, StoreError> {
        let user_key = user_key.to_owned();
        self.db
            .read(move |c| {
                c.query_row(
                    "SELECT app FROM routes WHERE user_key = ?1",
                    [&user_key],
                    |r| r.get(0),
                )
                .optional()
            })
            .await
    }
}

#[async_trait]
impl Deliveries for SqliteStore {
    async fn add_deliveries(&self, items: Vec<Push>) -> Result<Vec<i64>, StoreError> {
        let rows = rules::push_columns(&items)?;
        let (room, refusals) = (self.room.clone(), self.db.refusals.clone());
        self.db
            .write(move |c| {
                if let Err(refused) = room_for_new_work(c, &room, &refusals)? {
                    return Ok(Err(refused));
                }
                let now = now_ms();
                let mut stmt = c.prepare_cached(
                    "INSERT INTO deliveries (target, payload, state, created_at, updated_at)
                     VALUES (?1, ?2, 'queued', ?3, ?3)",
                )?;
                let mut ids = Vec::with_capacity(rows.len());
                for (target, payload) in &rows {
                    stmt.execute(params![target, payload, now])?;
                    ids.push(c.last_insert_rowid());
                }
                Ok(Ok(ids))
            })
            .await?
            .map_err(store_error)
    }

    async fn queued_deliveries(&self) -> Result<Vec<StoredDelivery>, StoreError> {
        let rows = self
            .db
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT id, target, payload, started_at IS NOT NULL FROM deliveries
                     WHERE state = 'queued' ORDER BY id",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, bool>(3)?,
                    ))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rules::readable_deliveries(self, rows).await
    }

    async fn start_delivery(&self, id: i64) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                c.prepare_cached("UPDATE deliveries SET started_at = ?2 WHERE id = ?1")?
                    .execute(params![id, now_ms()])?;
                Ok(())
            })
            .await
    }

    async fn finish_delivery(
        &self,
        id: i64,
        attempts: u32,
        failure: Option<Failure>,
    ) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                let state = DeliveryState::finished(failure.as_ref()).as_str();
                let (error, _, errcode) = rules::failure_columns(failure.as_ref());
                c.prepare_cached(
                    "UPDATE deliveries SET state = ?2, attempts = ?3, error = ?4, errcode = ?5,
                         updated_at = ?6
                     WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    state,
                    attempts,
                    error,
                    errcode,
                    now_ms()
                ])?;
                Ok(())
            })
            .await
    }

    async fn delivery(&self, id: i64) -> Result<Option<DeliveryStatus>, StoreError> {
        let row = self
            .db
            .read(move |c| {
                c.query_row(
                    "SELECT id, target, state, attempts, error, retried_as FROM deliveries WHERE id = ?1",
                    [id],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, u32>(3)?,
                            r.get::<_, Option<String>>(4)?,
                            r.get::<_, Option<i64>>(5)?,
                        ))
                    },
                )
                .optional()
            })
            .await?;
        let Some((id, target, state, attempts, error, retried_as)) = row else {
            return Ok(None);
        };
        DeliveryStatus::from_columns(id, &target, &state, (attempts, error), retried_as).map(Some)
    }
}

#[async_trait]
impl History for SqliteStore {
    async fn history(&self, user_key: &str, max: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let user_key = user_key.to_owned();
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT role, content FROM (
                         SELECT id, role, content FROM history WHERE user_key = ?1 ORDER BY id DESC LIMIT ?2)
                     ORDER BY id",
                )?;
                let rows = stmt.query_map(params![user_key, max as i64], |r| {
                    let role: String = r.get(0)?;
                    // An unknown role can only come from a newer version; read it as the user's.
                    let role = Role::parse(&role).unwrap_or(Role::User);
                    Ok(HistoryEntry { role, content: r.get(1)? })
                })?;
                rows.collect()
            })
            .await
    }

    async fn append_history(
        &self,
        user_key: &str,
        entries: Vec<HistoryEntry>,
        keep: usize,
    ) -> Result<(), StoreError> {
        let user_key = user_key.to_owned();
        self.db
            .write(move |c| {
                let now = now_ms();
                let mut insert = c.prepare_cached(
                    "INSERT INTO history (user_key, role, content, created_at) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for e in &entries {
                    insert.execute(params![user_key, e.role.as_str(), e.content, now])?;
                }
                c.prepare_cached(
                    "DELETE FROM history WHERE user_key = ?1 AND id NOT IN (
                         SELECT id FROM history WHERE user_key = ?1 ORDER BY id DESC LIMIT ?2)",
                )?
                .execute(params![user_key, keep as i64])?;
                Ok(())
            })
            .await
    }

    async fn clear_history(&self, user_key: &str) -> Result<(), StoreError> {
        let user_key = user_key.to_owned();
        self.db
            .write(move |c| {
                c.prepare_cached("DELETE FROM history WHERE user_key = ?1")?
                    .execute([&user_key])?;
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl Media for SqliteStore {
    async fn put_media(
        &self,
        record: &MediaRecord,
        _bytes: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let r = record.clone();
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO media (sha256, kind, content_type, size, file_name, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (sha256) DO UPDATE SET kind = ?2, content_type = ?3,
                         file_name = COALESCE(?5, file_name), updated_at = ?6",
                )?
                .execute(params![
                    r.sha256,
                    r.kind,
                    r.content_type,
                    r.size as i64,
                    r.file_name,
                    now_ms()
                ])?;
                Ok(())
            })
            .await
    }

    async fn media(&self, sha256: &str) -> Result<Option<MediaRecord>, StoreError> {
        let sha256 = sha256.to_owned();
        self.db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT kind, content_type, size, file_name FROM media WHERE sha256 = ?1",
                )?
                .query_row([&sha256], |r| {
                    Ok(MediaRecord {
                        sha256: sha256.clone(),
                        kind: r.get(0)?,
                        content_type: r.get(1)?,
                        size: r.get::<_, i64>(2)?.max(0) as u64,
                        file_name: r.get(3)?,
                    })
                })
                .optional()
            })
            .await
    }

    async fn media_key(&self) -> Result<Vec<u8>, StoreError> {
        let fresh = super::model::new_media_key();
        self.db
            .write(move |c| {
                c.prepare_cached("INSERT OR IGNORE INTO keys (name, value) VALUES ('media', ?1)")?
                    .execute([&fresh])?;
                c.prepare_cached("SELECT value FROM keys WHERE name = 'media'")?
                    .query_row([], |r| r.get(0))
            })
            .await
    }
}

/// One process per data_dir (it is locked): it holds every AI bot.
impl super::model::BotLeases for SqliteStore {}

#[async_trait]
impl Failures for SqliteStore {
    async fn failed(&self, limit: usize) -> Result<Vec<FailedItem>, StoreError> {
        let (jobs, deliveries) = self
            .db
            .read(move |c| {
                let mut jobs = c.prepare_cached(
                    "SELECT id, app, user_key, error, errcode, updated_at FROM inbox
                     WHERE state = 'failed' AND retried_as IS NULL
                     ORDER BY updated_at DESC LIMIT ?1",
                )?;
                let jobs = jobs
                    .query_map([limit as i64], |r| {
                        let (id, app, user, error) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                        Ok(rules::failed_job(
                            id,
                            app,
                            user,
                            error,
                            r.get(4)?,
                            r.get(5)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let mut pushes = c.prepare_cached(
                    "SELECT id, target, error, errcode, updated_at FROM deliveries
                     WHERE state = 'failed' AND retried_as IS NULL
                     ORDER BY updated_at DESC LIMIT ?1",
                )?;
                let pushes = pushes
                    .query_map([limit as i64], |r| {
                        let (id, target) = (r.get(0)?, r.get::<_, String>(1)?);
                        Ok(rules::failed_delivery(
                            id,
                            &target,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok((jobs, pushes))
            })
            .await?;
        Ok(rules::newest_failures(jobs, deliveries, limit))
    }

    /// One write on the writer thread (BEGIN IMMEDIATE, which an admin command beside the
    /// gateway takes too): checked, copied and marked with no other write in between.
    async fn retry_job(&self, id: i64) -> Result<Option<i64>, StoreError> {
        let retried = self
            .db
            .write(move |c| {
                let now = now_ms();
                let old = c
                    .prepare_cached(
                        "SELECT dedup_key, channel, app, user_key, payload, send_failed FROM inbox
                         WHERE id = ?1 AND state = 'failed' AND retried_as IS NULL",
                    )?
                    .query_row([id], |r| {
                        let text = |i| r.get::<_, String>(i);
                        let columns = (text(0)?, text(1)?, text(2)?, text(3)?, text(4)?);
                        Ok((columns, r.get::<_, bool>(5)?))
                    })
                    .optional()?;
                let Some(((dedup_key, channel, app, user_key, payload), send_failed)) = old else {
                    return Ok(None);
                };
                let retry = rules::job_retry(&dedup_key, send_failed, now);
                c.prepare_cached(
                    "INSERT INTO inbox (dedup_key, channel, app, user_key, payload, state, attempts, received_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7, ?7)",
                )?
                .execute(params![retry.dedup_key, channel, app, user_key, payload, retry.attempts, now])?;
                let new = c.last_insert_rowid();
                if retry.copy_reply {
                    c.prepare_cached(
                        "INSERT INTO outbox (inbox_id, seq, content, sent_at, started_at, message)
                         SELECT ?1, seq, content, sent_at, started_at, message FROM outbox WHERE inbox_id = ?2",
                    )?
                    .execute(params![new, id])?;
                }
                c.prepare_cached("UPDATE inbox SET retried_as = ?2, updated_at = ?3 WHERE id = ?1")?
                    .execute(params![id, new, now])?;
                Ok(Some(new))
            })
            .await?;
        if retried.is_some() {
            self.loader.notify_one();
        }
        Ok(retried)
    }

    async fn retry_delivery(
        &self,
        id: i64,
        may_broadcast: bool,
    ) -> Result<DeliveryRetry, StoreError> {
        let (room, refusals) = (self.room.clone(), self.db.refusals.clone());
        self.db
            .write(move |c| {
                let row = c
                    .prepare_cached(
                        "SELECT target, payload FROM deliveries
                         WHERE id = ?1 AND state = 'failed' AND retried_as IS NULL",
                    )?
                    .query_row([id], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                    })
                    .optional()?;
                let Some((target, payload)) = row else {
                    return Ok(Ok(DeliveryRetry::NotFound));
                };
                let push = match rules::delivery_retry(id, &target, &payload, may_broadcast) {
                    Ok(RetryCheck::Retry(push)) => push,
                    Ok(RetryCheck::Answer(answer)) => return Ok(Ok(answer)),
                    Err(e) => return Ok(Err(e)),
                };
                if let Err(refused) = room_for_new_work(c, &room, &refusals)? {
                    return Ok(Err(store_error(refused)));
                }
                let now = now_ms();
                c.prepare_cached(
                    "INSERT INTO deliveries (target, payload, state, created_at, updated_at)
                     VALUES (?1, ?2, 'queued', ?3, ?3)",
                )?
                .execute(params![target, payload, now])?;
                let new = c.last_insert_rowid();
                c.prepare_cached(
                    "UPDATE deliveries SET retried_as = ?2, updated_at = ?3 WHERE id = ?1",
                )?
                .execute(params![id, new, now])?;
                Ok(Ok(rules::delivery_retried(new, push)))
            })
            .await?
    }
}
