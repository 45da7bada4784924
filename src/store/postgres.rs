//! The store on PostgreSQL, shared by several replicas of the gateway: queue, outbox, routes,
//! history and deliveries, plus the access tokens and rate windows the replicas share.
//!
//! Owns: the PostgreSQL schema and its migrations (run at start, under an advisory lock, so
//! replicas starting together migrate once), replicas taking jobs with `FOR UPDATE SKIP LOCKED`
//! while keeping each user's lane (arrival order, one at a time, across all replicas), leases
//! (a replica renews what it holds; a job or delivery whose lease lapsed is taken over), group
//! commit of acknowledgements, and what an unreachable server means (503: WeCom retries).
//!
//! Must never: answer a push before its commit, show the connection password (see
//! [`PostgresUrl`]), let two replicas hold one user's lane at once, or restate a rule of
//! `rules.rs` (finishing, failures, retries): this file holds its SQL and transactions only.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::model::{
    now_ms, Cause, Chunk, ChunkState, Deliveries, DeliveryRetry, DeliveryState, DeliveryStatus,
    FailedItem, Failure, Failures, History, HistoryEntry, Job, Media, MediaRecord, NewJob, Outbox,
    Outcome, Pushed, Queue, Role, Routes, StoreError, StoredDelivery,
};
use super::rules::{self, RetryCheck};
use crate::conversation::{Channel, Push, Streamed};
use crate::ratelimit::Limit;
use crate::ratelimit::{Reserved, SharedWindows};
use crate::wecom::token::{Fetch, SharedTokens};
use crate::wecom::{ApiError, AppMessage};

/// Schema versions, applied in order; `wecom_gateway_schema` records how many ran.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE inbox (
        id          BIGSERIAL PRIMARY KEY,
        dedup_key   TEXT   NOT NULL UNIQUE,
        app         TEXT   NOT NULL,
        user_key    TEXT   NOT NULL,
        payload     TEXT   NOT NULL,
        state       TEXT   NOT NULL CHECK (state IN ('queued', 'processing', 'done', 'failed')),
        attempts    INT    NOT NULL DEFAULT 0,
        error       TEXT,
        lease_owner TEXT,
        lease_until BIGINT,
        received_at BIGINT NOT NULL,
        updated_at  BIGINT NOT NULL
    );
    CREATE INDEX inbox_open ON inbox (id) WHERE state IN ('queued', 'processing');
    CREATE INDEX inbox_lane ON inbox (user_key, id) WHERE state IN ('queued', 'processing');
    CREATE INDEX inbox_finished ON inbox (updated_at) WHERE state IN ('done', 'failed');
    CREATE TABLE outbox (
        inbox_id   BIGINT NOT NULL REFERENCES inbox (id) ON DELETE CASCADE,
        seq        INT    NOT NULL,
        content    TEXT   NOT NULL,
        started_at BIGINT,
        sent_at    BIGINT,
        PRIMARY KEY (inbox_id, seq)
    );
    CREATE TABLE routes (
        user_key   TEXT PRIMARY KEY,
        app        TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE TABLE deliveries (
        id          BIGSERIAL PRIMARY KEY,
        target      TEXT   NOT NULL,
        payload     TEXT   NOT NULL,
        state       TEXT   NOT NULL CHECK (state IN ('queued', 'sent', 'failed')),
        attempts    INT    NOT NULL DEFAULT 0,
        error       TEXT,
        started_at  BIGINT,
        lease_owner TEXT,
        lease_until BIGINT,
        created_at  BIGINT NOT NULL,
        updated_at  BIGINT NOT NULL
    );
    CREATE INDEX deliveries_queued ON deliveries (id) WHERE state = 'queued';
    CREATE INDEX deliveries_finished ON deliveries (updated_at) WHERE state IN ('sent', 'failed');
    CREATE TABLE history (
        id         BIGSERIAL PRIMARY KEY,
        user_key   TEXT   NOT NULL,
        role       TEXT   NOT NULL,
        content    TEXT   NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX history_user ON history (user_key, id);
    CREATE TABLE tokens (
        app        TEXT   PRIMARY KEY,
        token      TEXT   NOT NULL,
        refresh_at BIGINT NOT NULL
    );
    CREATE TABLE rate_events (
        id    BIGSERIAL PRIMARY KEY,
        key   TEXT   NOT NULL,
        at_ms BIGINT NOT NULL
    );
    CREATE INDEX rate_events_key ON rate_events (key, at_ms);
",
    "
    -- 2: a reply chunk other than text (image, card...) as JSON, with its media_id once uploaded.
    ALTER TABLE outbox ADD COLUMN message TEXT;
",
    "
    -- 3: media members sent, bytes included so any replica can serve and send them (each also
    -- keeps a copy under its data_dir/media/), and the key that signs the links to them.
    CREATE TABLE media (
        sha256       TEXT   PRIMARY KEY,
        kind         TEXT   NOT NULL,
        content_type TEXT   NOT NULL,
        size         BIGINT NOT NULL,
        file_name    TEXT,
        bytes        BYTEA,
        updated_at   BIGINT NOT NULL
    );
    CREATE INDEX media_updated ON media (updated_at);
    CREATE TABLE keys (
        name  TEXT  PRIMARY KEY,
        value BYTEA NOT NULL
    );
",
    "
    -- 4: the msgid of the receipt sent while the agent worked, withdrawn once the reply is out.
    ALTER TABLE inbox ADD COLUMN receipt TEXT;
",
    "
    -- 5: a failure's facts in columns of their own, no longer prefixes of its error text: which
    -- job or delivery it was retried as ('retried as job-7: '), whether WeCom refused a piece of
    -- a recorded reply ('piece 2 of 3: ...'), and WeCom's errcode ('WeCom errcode 81013').
    -- Rows of earlier versions are moved over, so an upgraded store lists and retries the same.
    ALTER TABLE inbox ADD COLUMN retried_as BIGINT,
        ADD COLUMN send_failed BOOLEAN NOT NULL DEFAULT FALSE,
        ADD COLUMN errcode BIGINT;
    ALTER TABLE deliveries ADD COLUMN retried_as BIGINT, ADD COLUMN errcode BIGINT;
    UPDATE inbox SET retried_as = substring(error from '^retried as job-([0-9]+): ')::bigint,
        error = NULLIF(substring(error from '^retried as job-[0-9]+: (.*)$'), '')
    WHERE error ~ '^retried as job-[0-9]+: ';
    UPDATE deliveries SET retried_as = substring(error from '^retried as delivery-([0-9]+): ')::bigint,
        error = NULLIF(substring(error from '^retried as delivery-[0-9]+: (.*)$'), '')
    WHERE error ~ '^retried as delivery-[0-9]+: ';
    UPDATE inbox SET send_failed = TRUE WHERE state = 'failed' AND error LIKE 'piece %';
    UPDATE inbox SET errcode = substring(error from 'WeCom errcode (-?[0-9]+)')::bigint
    WHERE error ~ 'WeCom errcode -?[0-9]';
    UPDATE deliveries SET errcode = substring(error from 'WeCom errcode (-?[0-9]+)')::bigint
    WHERE error ~ 'WeCom errcode -?[0-9]';
",
    "
    -- 6: the channel a job came through (its kind; `app` holds the name), so a second kind of
    -- channel can share the queue. Every earlier job came through a self-built app.
    ALTER TABLE inbox ADD COLUMN channel TEXT NOT NULL DEFAULT 'app';
",
    "
    -- 7: how far a reply streamed into an AI bot's bubble (JSON), so a restart finishes it.
    ALTER TABLE inbox ADD COLUMN stream TEXT;
",
];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;
/// Advisory-lock key under which migrations run ("wecomgw" in ASCII).
const MIGRATION_LOCK: i64 = 0x0077_6563_6f6d_6777;
/// A message whose handling was cut short this many times (its replica died each time) is given up.
pub const MAX_ATTEMPTS: i32 = 5;
/// Most acknowledgements committed in one transaction.
const MAX_BATCH: usize = 512;
/// Connections per replica. Pushes share one writer; workers and the API use the rest.
const POOL_SIZE: usize = 16;
/// How long a caller waits for a connection before the store counts as unreachable. WeCom waits
/// 5 s for an answer in all, so a callback must hear "try later" well before that.
const CONNECT_WAIT: Duration = Duration::from_secs(2);
/// How often an idle worker looks for work that other replicas queued or let go.
const POLL: Duration = Duration::from_millis(200);
/// How long to wait before trying again after the server failed.
const RETRY: Duration = Duration::from_secs(1);
/// Finished rows deleted per statement while pruning.
const PRUNE_BATCH: i64 = 1000;

/// Why a `store` value names no store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadStore {
    #[error("must be sqlite, memory or a postgres:// URL")]
    Kind,
    /// The URL as shown, its password hidden.
    #[error("is not a valid PostgreSQL URL (expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE), got {0}")]
    Url(String),
}

/// A `postgres://` URL. Its password is a secret: `Display` and `Debug` show `****` instead.
#[derive(Clone)]
pub struct PostgresUrl(SecretString);

impl PostgresUrl {
    pub fn parse(text: &str) -> Result<Self, BadStore> {
        let lower = text.to_ascii_lowercase();
        if !(lower.starts_with("postgres://") || lower.starts_with("postgresql://")) {
            return Err(BadStore::Kind);
        }
        match tokio_postgres::Config::from_str(text) {
            Ok(_) => Ok(PostgresUrl(SecretString::from(text))),
            // The parser's message may quote the URL, password included: say only where to look.
            Err(_) => Err(BadStore::Url(
                PostgresUrl(SecretString::from(text)).redacted(),
            )),
        }
    }

    /// The URL with its password replaced by `****`, whether it is given before the host or as
    /// a `password=` parameter.
    pub fn redacted(&self) -> String {
        let text = self.0.expose_secret();
        match url::Url::parse(text) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("****"));
                }
                let hidden = |(k, v): (std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)| {
                    let v = if k.eq_ignore_ascii_case("password") {
                        "****".into()
                    } else {
                        v
                    };
                    (k.into_owned(), v.into_owned())
                };
                let pairs: Vec<(String, String)> = url.query_pairs().map(hidden).collect();
                if pairs
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("password"))
                {
                    url.query_pairs_mut().clear().extend_pairs(pairs);
                }
                url.to_string()
            }
            // Unparseable by `url` (several hosts, say): hide everything after the scheme.
            Err(_) => "postgres://****".into(),
        }
    }

    fn config(&self) -> Result<tokio_postgres::Config, StoreError> {
        let mut config = tokio_postgres::Config::from_str(self.0.expose_secret())
            // Not the parser's error: it may quote part of the URL, password included.
            .map_err(|_| StoreError::found(format!("invalid store URL {self}")))?;
        if config.get_password().is_none() {
            if let Ok(password) = std::env::var("PGPASSWORD") {
                config.password(password);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_WAIT);
        }
        config.application_name("wecom-gateway");
        Ok(config)
    }
}

impl std::fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresUrl({})", self.redacted())
    }
}

/// What a failure of the server means to a caller: unreachable (try later), no room, or a fault.
fn pg_error(e: tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        return StoreError::Unavailable(Cause::new(None, e));
    };
    let code = db.code();
    if *code == SqlState::DISK_FULL || *code == SqlState::OUT_OF_MEMORY {
        StoreError::StoreFull(format!("{}: {}", code.code(), db.message()))
    } else if code.code().starts_with("08")
        || code.code().starts_with("57P")
        || *code == SqlState::TOO_MANY_CONNECTIONS
        || *code == SqlState::CANNOT_CONNECT_NOW
    {
        StoreError::Unavailable(Cause::new(None, e))
    } else {
        StoreError::Storage(Cause::new(None, e))
    }
}

/// A serialization failure or deadlock (SQLSTATE class 40): the transaction may simply run again.
fn is_conflict(cause: &Cause) -> bool {
    let code = cause
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code());
    code.is_some_and(|c| c.code().starts_with("40"))
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        other => StoreError::Unavailable(Cause::new(None, other)),
    }
}

type Client = deadpool_postgres::Object;

/// How often a replica tries for a free AI-bot lease, and checks that it still holds its own.
const BOT_LEASE_CHECK: Duration = Duration::from_secs(2);

/// Check the server and the schema version, for `check-config`: the version found, or why not.
pub async fn check(url: &PostgresUrl) -> Result<i32, StoreError> {
    let (client, connection) = url.config()?.connect(NoTls).await.map_err(pg_error)?;
    let task = tokio::spawn(connection);
    let found = client
        .query_opt(
            "SELECT version FROM wecom_gateway_schema WHERE to_regclass('wecom_gateway_schema') IS NOT NULL",
            &[],
        )
        .await;
    task.abort();
    match found {
        Ok(row) => Ok(row.map_or(0, |r| r.get(0))),
        // No schema table yet: a new database, migrated at the first start.
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(0),
        Err(e) => Err(pg_error(e)),
    }
}

// ---------------------------------------------------------------- acknowledgements, grouped

struct PushRequest {
    job: NewJob,
    answer: oneshot::Sender<Result<Pushed, StoreError>>,
}

/// Commit every push waiting at once in one transaction: one round of fsync for the group.
async fn push_writer(pool: Pool, mut rx: mpsc::Receiver<PushRequest>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let jobs: Vec<&NewJob> = batch.iter().map(|r| &r.job).collect();
        let mut result = insert_jobs(&pool, &jobs).await;
        // Two replicas inserting the same retried keys in opposite orders can deadlock; the
        // server breaks it by failing one, which simply runs again.
        for _ in 0..3 {
            match &result {
                Err(StoreError::Storage(cause)) if is_conflict(cause) => {
                    result = insert_jobs(&pool, &jobs).await
                }
                _ => break,
            }
        }
        match result {
            Ok(mut inserted) => {
                for request in batch.drain(..) {
                    // The first of a key's pushes in the batch is the one inserted.
                    let fresh = inserted.remove(&request.job.dedup_key);
                    let pushed = if fresh {
                        Pushed::Queued
                    } else {
                        Pushed::Duplicate
                    };
                    let _ = request.answer.send(Ok(pushed));
                }
            }
            Err(e) => {
                for request in batch.drain(..) {
                    let _ = request.answer.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Insert the jobs (in arrival order, so ids follow it) and their users' routes; the dedup keys
/// that were new. A key seen twice in one batch is new only once.
async fn insert_jobs(pool: &Pool, jobs: &[&NewJob]) -> Result<HashSet<String>, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg_error)?;
    let column = |f: fn(&NewJob) -> &str| jobs.iter().map(|j| f(j)).collect::<Vec<_>>();
    let (keys, apps) = (column(|j| &j.dedup_key), column(|j| j.channel.name()));
    let (users, payloads) = (column(|j| &j.user_key), column(|j| &j.payload));
    let kinds = column(|j| j.channel.kind());
    let now = now_ms();
    // Prepared once per connection: a plain `query(&str)` costs one more round trip (and a parse)
    // on every batch, on the path every acknowledgement waits for.
    let insert = tx
        .prepare_cached(
            "INSERT INTO inbox (dedup_key, channel, app, user_key, payload, state, received_at, updated_at)
             SELECT k, c, a, u, p, 'queued', $5, $5
             FROM UNNEST($1::text[], $6::text[], $2::text[], $3::text[], $4::text[])
                  WITH ORDINALITY AS t(k, c, a, u, p, n)
             ORDER BY n
             ON CONFLICT (dedup_key) DO NOTHING RETURNING dedup_key",
        )
        .await
        .map_err(pg_error)?;
    let rows = tx
        .query(&insert, &[&keys, &apps, &users, &payloads, &now, &kinds])
        .await
        .map_err(pg_error)?;
    let inserted: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    // The last app each user wrote through, from the jobs in arrival order (RETURNING follows
    // no order); rows locked in user order, so replicas never wait on each other in a circle.
    let mut routes: Vec<(String, String)> = Vec::new();
    for job in jobs
        .iter()
        .rev()
        .filter(|j| inserted.contains(&j.dedup_key))
    {
        let Some(app) = job.channel.route() else {
            continue;
        };
        if !routes.iter().any(|(u, _)| *u == job.user_key) {
            routes.push((job.user_key.clone(), app.to_owned()));
        }
    }
    routes.sort();
    if !routes.is_empty() {
        let (users, apps): (Vec<String>, Vec<String>) = routes.into_iter().unzip();
        let upsert = tx
            .prepare_cached(
                "INSERT INTO routes (user_key, app, updated_at)
                 SELECT u, a, $3 FROM UNNEST($1::text[], $2::text[]) AS t(u, a)
                 ON CONFLICT (user_key) DO UPDATE SET app = excluded.app, updated_at = excluded.updated_at",
            )
            .await
            .map_err(pg_error)?;
        tx.execute(&upsert, &[&users, &apps, &now])
            .await
            .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(inserted)
}

// ---------------------------------------------------------------- the store

pub struct PostgresStore {
    pool: Pool,
    url: PostgresUrl,
    /// This replica's name in leases: unique per process start.
    me: String,
    lease: Duration,
    pushes: mpsc::Sender<PushRequest>,
    /// Jobs this replica holds, whose leases it renews.
    held: Mutex<HashSet<i64>>,
    /// Wakes idle workers: something was queued here, or a lane was freed here.
    wake: Notify,
    /// Held by the worker looking for the next job (see `next`).
    looking: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    /// The AI bots that need a lease (by name: those on a long connection), and whether this
    /// replica holds each: it takes their jobs only while it does. A bot without a lease (URL
    /// mode) has its jobs taken by any replica.
    bots: Arc<Mutex<HashMap<String, bool>>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .field("me", &self.me)
            .finish()
    }
}

impl PostgresStore {
    /// Connect, and migrate the schema if this replica is the first of a newer version.
    /// `lease`: how long a job held by a replica that stopped renewing it waits to be taken over.
    pub async fn open(url: &PostgresUrl, lease: Duration) -> Result<Arc<Self>, StoreError> {
        let manager = Manager::from_config(
            url.config()?,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_WAIT))
            .create_timeout(Some(CONNECT_WAIT))
            .recycle_timeout(Some(CONNECT_WAIT))
            .build()
            .map_err(|e| StoreError::failed("cannot set up the store", e))?;
        let mut client = pool.get().await.map_err(pool_error)?;
        migrate(&mut client).await.map_err(pg_error)?;
        drop(client);
        let (pushes, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(push_writer(pool.clone(), rx));
        let me = format!(
            "{}-{}-{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "replica".into()),
            std::process::id(),
            rand::random::<u32>()
        );
        Ok(Arc::new(PostgresStore {
            pool,
            url: url.clone(),
            me,
            lease,
            pushes,
            held: Mutex::new(HashSet::new()),
            bots: Arc::new(Mutex::new(HashMap::new())),
            wake: Notify::new(),
            looking: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
        }))
    }

    pub fn url(&self) -> &PostgresUrl {
        &self.url
    }

    async fn client(&self) -> Result<Client, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bots whose jobs another replica takes: leased, and not held here.
    fn bots_elsewhere(&self) -> Vec<String> {
        let bots = self.bots.lock().unwrap_or_else(|p| p.into_inner());
        (bots.iter())
            .filter(|(_, held)| !**held)
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn lease_until(&self) -> i64 {
        now_ms() + self.lease.as_millis() as i64
    }

    /// Take the oldest job whose lane is free across all replicas, if any. A lapsed lease of this
    /// replica's own means only that its renewals failed while its worker still has the job: it
    /// is never taken from itself.
    async fn take(&self) -> Result<Option<Job>, StoreError> {
        let client = self.client().await?;
        let now = now_ms();
        let row = client
            .query_opt(
                "UPDATE inbox SET state = 'processing', attempts = attempts + 1,
                     lease_owner = $1, lease_until = $2, updated_at = $3
                 WHERE id = (
                     SELECT i.id FROM inbox i
                     WHERE (i.state = 'queued' OR (i.state = 'processing' AND i.lease_until < $3
                                                   AND i.lease_owner <> $1))
                       AND i.channel = ANY($4)
                       AND NOT (i.channel = 'aibot' AND i.app = ANY($5))
                       AND NOT EXISTS (
                           SELECT 1 FROM inbox p
                           WHERE p.user_key = i.user_key AND p.id < i.id
                             AND p.state IN ('queued', 'processing'))
                     ORDER BY i.id LIMIT 1
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, channel, app, user_key, payload, attempts, receipt, stream",
                &[
                    &self.me,
                    &self.lease_until(),
                    &now,
                    &Channel::KINDS,
                    &self.bots_elsewhere(),
                ],
            )
            .await
            .map_err(pg_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: i64 = row.get(0);
        self.held().insert(id);
        let attempts: i32 = row.get(5);
        let (channel, message) = match rules::stored_message(row.get(1), row.get(2), row.get(4)) {
            Ok(read) => read,
            Err(failure) => {
                tracing::error!(id, "{}; marked failed", failure.reason);
                self.finish_row(id, "failed", Some(&failure)).await?;
                return Ok(None);
            }
        };
        let mut job = Job {
            id: id as u64,
            channel,
            user_key: row.get(3),
            message,
            attempts: attempts.max(1) as u32,
            reply: None,
            receipt: row.get(6),
            stream: Streamed::from_column(row.get(7)),
        };
        if attempts > MAX_ATTEMPTS {
            let error = rules::gave_up(i64::from(attempts - 1));
            tracing::warn!(id, "{error}");
            self.finish_row(id, "failed", Some(&error.into())).await?;
            return Ok(None);
        }
        if attempts > 1 {
            let chunks = client
                .query(
                    "SELECT seq, content, sent_at IS NOT NULL, started_at IS NOT NULL, message
                     FROM outbox WHERE inbox_id = $1 ORDER BY seq",
                    &[&id],
                )
                .await
                .map_err(pg_error)?;
            let chunks: Vec<Chunk> = chunks
                .iter()
                .map(|r| Chunk {
                    seq: r.get::<_, i32>(0) as usize,
                    message: Chunk::from_columns(r.get(1), r.get(4)),
                    state: match (r.get(2), r.get(3)) {
                        (true, _) => ChunkState::Sent,
                        (false, true) => ChunkState::Started,
                        (false, false) => ChunkState::Unsent,
                    },
                })
                .collect();
            job.reply = Some(chunks).filter(|c| !c.is_empty());
        }
        Ok(Some(job))
    }

    async fn finish_row(
        &self,
        id: i64,
        state: &str,
        failure: Option<&Failure>,
    ) -> Result<(), StoreError> {
        let (error, send_failed, errcode) = rules::failure_columns(failure);
        let client = self.client().await?;
        client
            .execute(
                "UPDATE inbox SET state = $2, error = $3, send_failed = $4, errcode = $5,
                     updated_at = $6, lease_owner = NULL, lease_until = NULL
                 WHERE id = $1",
                &[&id, &state, &error, &send_failed, &errcode, &now_ms()],
            )
            .await
            .map_err(pg_error)?;
        self.held().remove(&id);
        self.wake.notify_waiters();
        Ok(())
    }

    /// Give a job back to the queue at once (the gateway is stopping), keeping its attempts.
    async fn release_row(&self, id: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE inbox SET state = 'queued', lease_owner = NULL, lease_until = NULL,
                     updated_at = $2
                 WHERE id = $1 AND state = 'processing' AND lease_owner = $3",
                &[&id, &now_ms(), &self.me],
            )
            .await
            .map_err(pg_error)?;
        self.held().remove(&id);
        Ok(())
    }

    /// Renew the leases of what this replica holds (jobs in progress, its deliveries).
    async fn renew(&self) -> Result<(), StoreError> {
        let held: Vec<i64> = self.held().iter().copied().collect();
        let client = self.client().await?;
        let until = self.lease_until();
        client
            .execute(
                "UPDATE inbox SET lease_until = $2
                 WHERE id = ANY($1) AND state = 'processing' AND lease_owner = $3",
                &[&held, &until, &self.me],
            )
            .await
            .map_err(pg_error)?;
        client
            .execute(
                "UPDATE deliveries SET lease_until = $1 WHERE state = 'queued' AND lease_owner = $2",
                &[&until, &self.me],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }
}

async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // Replicas starting together: the first migrates, the others wait here and find it done.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS wecom_gateway_schema (version INT NOT NULL)")
        .await?;
    let version: i32 = tx
        .query_opt("SELECT version FROM wecom_gateway_schema", &[])
        .await?
        .map_or(0, |r| r.get(0));
    for migration in MIGRATIONS.iter().skip(version.max(0) as usize) {
        tx.batch_execute(migration).await?;
    }
    if version == 0 {
        tx.execute(
            "INSERT INTO wecom_gateway_schema (version) VALUES ($1)",
            &[&SCHEMA_VERSION],
        )
        .await?;
    } else if version < SCHEMA_VERSION {
        tx.execute(
            "UPDATE wecom_gateway_schema SET version = $1",
            &[&SCHEMA_VERSION],
        )
        .await?;
    }
    tx.commit().await
}

#[async_trait]
impl Queue for PostgresStore {
    async fn push(&self, job: NewJob) -> Result<Pushed, StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let (answer, heard) = oneshot::channel();
        self.pushes
            .send(PushRequest { job, answer })
            .await
            .map_err(|_| StoreError::Closed)?;
        let pushed = heard.await.map_err(|_| StoreError::Closed)??;
        if pushed == Pushed::Queued {
            self.wake.notify_waiters();
        }
        Ok(pushed)
    }

    async fn next(&self) -> Option<Job> {
        // One worker of this replica looks for work at a time; the others wait their turn here.
        // Idle, that is one query per POLL however many workers there are, and many workers
        // never crowd the acknowledgements' writer out of the connection pool.
        let _looking = self.looking.lock().await;
        loop {
            // Registered before looking, so a push in between is not missed.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            let pause = match self.take().await {
                Ok(Some(job)) => return Some(job),
                Ok(None) => POLL,
                Err(e) => {
                    tracing::error!(error = %e, "cannot take work from the store; trying again shortly");
                    RETRY
                }
            };
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn finish(&self, job: &Job, outcome: Outcome) {
        let id = job.id as i64;
        let Some((state, failure)) = rules::finished(outcome) else {
            // Handed back now rather than when the lease lapses; if even that fails, the
            // lease lapses and another replica takes it.
            if let Err(e) = self.release_row(id).await {
                tracing::warn!(id, error = %e, "cannot hand a message back; another replica takes it over once its lease lapses");
            }
            return;
        };
        // The lane stays held (the lease is renewed) until the end is recorded.
        let unrecorded = "it is taken up again once its lease lapses";
        let recorded = rules::record_until_closed(id, &self.closed, unrecorded, || {
            self.finish_row(id, state, failure.as_ref())
        })
        .await;
        if !recorded {
            self.held().remove(&id);
        }
    }

    async fn prune(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let mut total = 0;
        for sql in [
            "DELETE FROM inbox WHERE id IN (SELECT id FROM inbox
                 WHERE state IN ('done', 'failed') AND updated_at < $1 LIMIT $2)",
            "DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries
                 WHERE state IN ('sent', 'failed') AND updated_at < $1 LIMIT $2)",
            "DELETE FROM media WHERE sha256 IN (SELECT sha256 FROM media
                 WHERE updated_at < $1 LIMIT $2)",
        ] {
            loop {
                let n = client
                    .execute(sql, &[&cutoff_ms, &PRUNE_BATCH])
                    .await
                    .map_err(pg_error)?;
                total += n as usize;
                if n < PRUNE_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Renew this replica's leases until the store closes.
    async fn feed(&self) {
        let every = self.lease / 3;
        while !self.closed.load(Ordering::SeqCst) {
            if let Err(e) = self.renew().await {
                tracing::error!(error = %e, "cannot renew leases; if this lasts, other replicas take this one's work over");
            }
            // `wake` also fires on every acknowledged push: renewing then would add one durable
            // commit (an fsync) per acknowledged batch. Woken early only to stop.
            let due = tokio::time::Instant::now() + every;
            while !self.closed.load(Ordering::SeqCst) {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => break,
                    () = self.wake.notified() => {}
                }
            }
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    fn len(&self) -> usize {
        self.held().len()
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        // A write, as on SQLite: a read-only server (a standby) is not ready.
        client
            .execute(
                "INSERT INTO keys (name, value) VALUES ('ready', $1)
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                &[&now_ms().to_le_bytes().to_vec()],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }
}

#[async_trait]
impl Outbox for PostgresStore {
    async fn record_reply(&self, job: &Job, chunks: &[AppMessage]) -> Result<(), StoreError> {
        let client = self.client().await?;
        let seqs: Vec<i32> = (0..chunks.len() as i32).collect();
        let (contents, messages): (Vec<String>, Vec<Option<String>>) =
            chunks.iter().map(Chunk::to_columns).unzip();
        client
            .execute(
                "INSERT INTO outbox (inbox_id, seq, content, message)
                 SELECT $1, s, c, m FROM UNNEST($2::int[], $3::text[], $4::text[]) AS t(s, c, m)
                 ON CONFLICT (inbox_id, seq) DO NOTHING",
                &[&(job.id as i64), &seqs, &contents, &messages],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn record_upload(
        &self,
        job: &Job,
        seq: usize,
        message: &AppMessage,
    ) -> Result<(), StoreError> {
        let (_, message) = Chunk::to_columns(message);
        let client = self.client().await?;
        client
            .execute(
                "UPDATE outbox SET message = $3 WHERE inbox_id = $1 AND seq = $2",
                &[&(job.id as i64), &(seq as i32), &message],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn mark_chunk(&self, job: &Job, seq: usize, state: ChunkState) -> Result<(), StoreError> {
        let Some(column) = rules::chunk_stamp(state) else {
            return Ok(());
        };
        let sql = format!("UPDATE outbox SET {column} = $3 WHERE inbox_id = $1 AND seq = $2");
        let client = self.client().await?;
        client
            .execute(&sql, &[&(job.id as i64), &(seq as i32), &now_ms()])
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn record_receipt(&self, job: &Job, msgid: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE inbox SET receipt = $2 WHERE id = $1",
                &[&(job.id as i64), &msgid],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn streamed(&self, dedup_key: &str) -> Result<Option<Option<Streamed>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT stream FROM inbox WHERE dedup_key = $1",
                &[&dedup_key],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.map(|r| Streamed::from_column(r.get(0))))
    }

    async fn record_stream(&self, job: &Job, streamed: &Streamed) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE inbox SET stream = $2 WHERE id = $1",
                &[&(job.id as i64), &streamed.to_column()],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }
}

#[async_trait]
impl Routes for PostgresStore {
    async fn route(&self, user_key: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT app FROM routes WHERE user_key = $1", &[&user_key])
            .await
            .map_err(pg_error)?;
        Ok(row.map(|r| r.get(0)))
    }
}

#[async_trait]
impl Deliveries for PostgresStore {
    async fn add_deliveries(&self, items: Vec<Push>) -> Result<Vec<i64>, StoreError> {
        let rows = rules::push_columns(&items)?;
        let (targets, payloads): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
        let client = self.client().await?;
        let now = now_ms();
        let ids = client
            .query(
                "INSERT INTO deliveries (target, payload, state, lease_owner, lease_until, created_at, updated_at)
                 SELECT t, p, 'queued', $3, $4, $5, $5
                 FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS x(t, p, n) ORDER BY n
                 RETURNING id",
                &[&targets, &payloads, &self.me, &self.lease_until(), &now],
            )
            .await
            .map_err(pg_error)?;
        let mut ids: Vec<i64> = ids.iter().map(|r| r.get(0)).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Deliveries nobody is working on: left by a replica that stopped (its lease lapsed).
    /// They become this replica's. Its own are already in its queues, whatever their lease says.
    async fn queued_deliveries(&self) -> Result<Vec<StoredDelivery>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "UPDATE deliveries SET lease_owner = $1, lease_until = $2
                 WHERE id IN (SELECT id FROM deliveries
                     WHERE state = 'queued' AND (lease_until IS NULL OR lease_until < $3)
                       AND lease_owner IS DISTINCT FROM $1
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, target, payload, started_at IS NOT NULL",
                &[&self.me, &self.lease_until(), &now_ms()],
            )
            .await
            .map_err(pg_error)?;
        let mut rows: Vec<(i64, String, String, bool)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        // RETURNING follows no order: deliveries go out in id order.
        rows.sort_by_key(|r| r.0);
        rules::readable_deliveries(self, rows).await
    }

    async fn start_delivery(&self, id: i64) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE deliveries SET started_at = $2 WHERE id = $1",
                &[&id, &now_ms()],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn finish_delivery(
        &self,
        id: i64,
        attempts: u32,
        failure: Option<Failure>,
    ) -> Result<(), StoreError> {
        let state = DeliveryState::finished(failure.as_ref()).as_str();
        let (error, _, errcode) = rules::failure_columns(failure.as_ref());
        let client = self.client().await?;
        client
            .execute(
                "UPDATE deliveries SET state = $2, attempts = $3, error = $4, errcode = $5,
                     updated_at = $6, lease_owner = NULL, lease_until = NULL
                 WHERE id = $1",
                &[&id, &state, &(attempts as i32), &error, &errcode, &now_ms()],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn delivery(&self, id: i64) -> Result<Option<DeliveryStatus>, StoreError> {
        let client = self.client().await?;
        let Some(row) = client
            .query_opt(
                "SELECT target, state, attempts, error, retried_as FROM deliveries WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(pg_error)?
        else {
            return Ok(None);
        };
        let attempts = row.get::<_, i32>(2) as u32;
        let (outcome, retried_as) = ((attempts, row.get(3)), row.get(4));
        DeliveryStatus::from_columns(id, row.get(0), row.get(1), outcome, retried_as).map(Some)
    }
}

#[async_trait]
impl History for PostgresStore {
    async fn history(&self, user_key: &str, max: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT role, content FROM (
                     SELECT id, role, content FROM history WHERE user_key = $1
                     ORDER BY id DESC LIMIT $2) recent
                 ORDER BY id",
                &[&user_key, &(max as i64)],
            )
            .await
            .map_err(pg_error)?;
        Ok(rows
            .iter()
            .map(|r| HistoryEntry {
                // An unknown role can only come from a newer version; read it as the user's.
                role: Role::parse(r.get(0)).unwrap_or(Role::User),
                content: r.get(1),
            })
            .collect())
    }

    async fn append_history(
        &self,
        user_key: &str,
        entries: Vec<HistoryEntry>,
        keep: usize,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let roles: Vec<&str> = entries.iter().map(|e| e.role.as_str()).collect();
        let contents: Vec<&str> = entries.iter().map(|e| e.content.as_str()).collect();
        tx.execute(
            "INSERT INTO history (user_key, role, content, created_at)
             SELECT $1, r, c, $4 FROM UNNEST($2::text[], $3::text[]) WITH ORDINALITY AS t(r, c, n)
             ORDER BY n",
            &[&user_key, &roles, &contents, &now_ms()],
        )
        .await
        .map_err(pg_error)?;
        tx.execute(
            "DELETE FROM history WHERE user_key = $1 AND id NOT IN (
                 SELECT id FROM history WHERE user_key = $1 ORDER BY id DESC LIMIT $2)",
            &[&user_key, &(keep as i64)],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)
    }

    async fn clear_history(&self, user_key: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM history WHERE user_key = $1", &[&user_key])
            .await
            .map_err(pg_error)?;
        Ok(())
    }
}

// ---------------------------------------------------------------- shared tokens and windows

fn shared_error(e: StoreError) -> ApiError {
    ApiError::Shared(e.to_string())
}

#[async_trait]
impl Media for PostgresStore {
    async fn put_media(
        &self,
        record: &MediaRecord,
        bytes: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let r = record;
        client
            .execute(
                "INSERT INTO media (sha256, kind, content_type, size, file_name, bytes, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (sha256) DO UPDATE SET kind = $2, content_type = $3,
                     file_name = COALESCE($5, media.file_name),
                     bytes = COALESCE(media.bytes, $6), updated_at = $7",
                &[
                    &r.sha256,
                    &r.kind,
                    &r.content_type,
                    &(r.size as i64),
                    &r.file_name,
                    &bytes,
                    &now_ms(),
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn media(&self, sha256: &str) -> Result<Option<MediaRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT kind, content_type, size, file_name FROM media WHERE sha256 = $1",
                &[&sha256],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.map(|r| MediaRecord {
            sha256: sha256.to_owned(),
            kind: r.get(0),
            content_type: r.get(1),
            size: r.get::<_, i64>(2).max(0) as u64,
            file_name: r.get(3),
        }))
    }

    fn keeps_media_bytes(&self) -> bool {
        true
    }

    async fn media_bytes(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT bytes FROM media WHERE sha256 = $1", &[&sha256])
            .await
            .map_err(pg_error)?;
        Ok(row.and_then(|r| r.get(0)))
    }

    async fn media_key(&self) -> Result<Vec<u8>, StoreError> {
        let client = self.client().await?;
        // Replicas starting together: one insert wins, all read the same key.
        client
            .execute(
                "INSERT INTO keys (name, value) VALUES ('media', $1) ON CONFLICT (name) DO NOTHING",
                &[&super::model::new_media_key()],
            )
            .await
            .map_err(pg_error)?;
        let row = client
            .query_one("SELECT value FROM keys WHERE name = 'media'", &[])
            .await
            .map_err(pg_error)?;
        Ok(row.get(0))
    }
}

#[async_trait]
impl SharedTokens for PostgresStore {
    async fn token(
        &self,
        app: &str,
        stale: Option<String>,
        fetch: Fetch<'_>,
    ) -> Result<(String, Duration), ApiError> {
        let pg = |e| shared_error(pg_error(e));
        let mut client = self.client().await.map_err(shared_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        // Held until commit: the other replicas wanting this app's token wait, then read it.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('token:' || $1))",
            &[&app],
        )
        .await
        .map_err(pg)?;
        let now = now_ms();
        let row = tx
            .query_opt(
                "SELECT token, refresh_at FROM tokens WHERE app = $1",
                &[&app],
            )
            .await
            .map_err(pg)?;
        if let Some(row) = row {
            let (token, refresh_at): (String, i64) = (row.get(0), row.get(1));
            if refresh_at > now && stale.as_deref() != Some(token.as_str()) {
                tx.commit().await.map_err(pg)?;
                return Ok((token, Duration::from_millis((refresh_at - now) as u64)));
            }
        }
        let (token, usable_secs) = fetch.await?;
        let refresh_at = now_ms().saturating_add((usable_secs as i64).saturating_mul(1000));
        tx.execute(
            "INSERT INTO tokens (app, token, refresh_at) VALUES ($1, $2, $3)
             ON CONFLICT (app) DO UPDATE SET token = excluded.token, refresh_at = excluded.refresh_at",
            &[&app, &token, &refresh_at],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok((token, Duration::from_secs(usable_secs)))
    }
}

#[async_trait]
impl SharedWindows for PostgresStore {
    async fn reserve(&self, key: &str, limits: &[Limit]) -> Result<Reserved, ApiError> {
        let pg = |e| shared_error(pg_error(e));
        let mut client = self.client().await.map_err(shared_error)?;
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('rate:' || $1))",
            &[&key],
        )
        .await
        .map_err(pg)?;
        let now = now_ms();
        let mut wait = 0i64;
        for limit in limits {
            let window = limit.window.as_millis().min(i64::MAX as u128) as i64;
            // The count-th most recent send inside the window, if the window is full.
            let oldest = tx
                .query_opt(
                    "SELECT at_ms FROM rate_events WHERE key = $1 AND at_ms > $2
                     ORDER BY at_ms DESC OFFSET $3 LIMIT 1",
                    &[&key, &now.saturating_sub(window), &(limit.count as i64 - 1)],
                )
                .await
                .map_err(pg)?;
            if let Some(row) = oldest {
                let at: i64 = row.get(0);
                wait = wait.max(at.saturating_add(window).saturating_sub(now) + 1);
            }
        }
        // Sends older than the longest window no longer count for anything.
        let longest = limits.iter().map(|l| l.window).max().unwrap_or_default();
        let expired = now.saturating_sub(longest.as_millis().min(i64::MAX as u128) as i64);
        tx.execute(
            "DELETE FROM rate_events WHERE key = $1 AND at_ms < $2",
            &[&key, &expired],
        )
        .await
        .map_err(pg)?;
        if wait > 0 {
            tx.commit().await.map_err(pg)?;
            return Ok(Reserved::Wait(Duration::from_millis(wait as u64)));
        }
        let row = tx
            .query_one(
                "INSERT INTO rate_events (key, at_ms) VALUES ($1, $2) RETURNING id",
                &[&key, &now],
            )
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(Reserved::Now(row.get(0)))
    }

    async fn settle(&self, id: i64, counted: bool) {
        let result = async {
            let client = self.client().await?;
            let sql = if counted {
                "UPDATE rate_events SET at_ms = $2 WHERE id = $1"
            } else {
                "DELETE FROM rate_events WHERE id = $1 AND $2 > 0"
            };
            client
                .execute(sql, &[&id, &now_ms()])
                .await
                .map_err(pg_error)
        }
        .await;
        if let Err(e) = result {
            // The reservation stays at its start time: at worst the window looks a little freer.
            tracing::warn!(error = %e, "cannot record a send in the shared rate window");
        }
    }
}

/// A session-level advisory lock per bot, on a connection of its own taken out of the pool: held
/// while that session lives, so it is released when the replica dies, and another replica, which
/// keeps trying, takes it over within [`BOT_LEASE_CHECK`].
impl super::model::BotLeases for PostgresStore {
    fn hold_bot(&self, name: &str, bot_id: &str) -> tokio::sync::watch::Receiver<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        // Known as leased before this returns: no job of it is taken here until it is held.
        (self.bots.lock().unwrap_or_else(|p| p.into_inner())).insert(name.to_owned(), false);
        let (pool, bots) = (self.pool.clone(), self.bots.clone());
        let (name, key) = (name.to_owned(), format!("aibot:{bot_id}"));
        tokio::spawn(async move {
            let set = |held: bool| {
                let mut bots = bots.lock().unwrap_or_else(|p| p.into_inner());
                bots.insert(name.clone(), held);
            };
            while !tx.is_closed() {
                // Out of the pool: dropped, its session ends and the lock with it.
                let client = match pool.get().await {
                    Ok(client) => deadpool_postgres::Object::take(client),
                    Err(_) => {
                        tokio::time::sleep(BOT_LEASE_CHECK).await;
                        continue;
                    }
                };
                let locked = client
                    .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])
                    .await
                    .map(|row| row.get::<_, bool>(0));
                if let Ok(true) = locked {
                    set(true);
                    tx.send_replace(true);
                    // A check that does not come back in time (a half-open connection) counts as
                    // the lock lost: the database may have ended the session and another
                    // replica taken the bot.
                    let alive =
                        || tokio::time::timeout(BOT_LEASE_CHECK, client.simple_query("SELECT 1"));
                    while !tx.is_closed() && matches!(alive().await, Ok(Ok(_))) {
                        tokio::time::sleep(BOT_LEASE_CHECK).await;
                    }
                    set(false);
                    tx.send_replace(false);
                }
                drop(client);
                if !tx.is_closed() {
                    tokio::time::sleep(BOT_LEASE_CHECK).await;
                }
            }
        });
        rx
    }
}

#[async_trait]
impl Failures for PostgresStore {
    async fn failed(&self, limit: usize) -> Result<Vec<FailedItem>, StoreError> {
        let client = self.client().await?;
        let most = limit as i64;
        let jobs = client
            .query(
                "SELECT id, app, user_key, error, errcode, updated_at FROM inbox
                 WHERE state = 'failed' AND retried_as IS NULL
                 ORDER BY updated_at DESC LIMIT $1",
                &[&most],
            )
            .await
            .map_err(pg_error)?;
        let jobs = (jobs.iter())
            .map(|r| rules::failed_job(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
            .collect();
        let pushes = client
            .query(
                "SELECT id, target, error, errcode, updated_at FROM deliveries
                 WHERE state = 'failed' AND retried_as IS NULL
                 ORDER BY updated_at DESC LIMIT $1",
                &[&most],
            )
            .await
            .map_err(pg_error)?;
        let pushes = (pushes.iter())
            .map(|r| rules::failed_delivery(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect();
        Ok(rules::newest_failures(jobs, pushes, limit))
    }

    /// Under the old row's lock (`FOR UPDATE`): of two retries at once (CLI and API, two
    /// replicas), the second waits, then finds it retried.
    async fn retry_job(&self, id: i64) -> Result<Option<i64>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let now = now_ms();
        let old = tx
            .query_opt(
                "SELECT dedup_key, channel, app, user_key, payload, send_failed FROM inbox
                 WHERE id = $1 AND state = 'failed' AND retried_as IS NULL FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(pg_error)?;
        let Some(old) = old else {
            return Ok(None);
        };
        let retry = rules::job_retry(old.get(0), old.get(5), now);
        let text = |i| old.get::<_, String>(i);
        let row = tx
            .query_one(
                "INSERT INTO inbox (dedup_key, channel, app, user_key, payload, state, attempts, received_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $7) RETURNING id",
                &[
                    &retry.dedup_key,
                    &text(1),
                    &text(2),
                    &text(3),
                    &text(4),
                    &retry.attempts,
                    &now,
                ],
            )
            .await
            .map_err(pg_error)?;
        let new: i64 = row.get(0);
        if retry.copy_reply {
            tx.execute(
                "INSERT INTO outbox (inbox_id, seq, content, sent_at, started_at, message)
                 SELECT $1, seq, content, sent_at, started_at, message FROM outbox WHERE inbox_id = $2",
                &[&new, &id],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.execute(
            "UPDATE inbox SET retried_as = $2, updated_at = $3 WHERE id = $1",
            &[&id, &new, &now],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        self.wake.notify_waiters();
        Ok(Some(new))
    }

    /// As `retry_job`, under the old row's lock. The new delivery is leased to this replica,
    /// whose dispatcher sends it; if nothing here sends it, another replica takes it once the
    /// lease lapses.
    async fn retry_delivery(
        &self,
        id: i64,
        may_broadcast: bool,
    ) -> Result<DeliveryRetry, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let row = tx
            .query_opt(
                "SELECT target, payload FROM deliveries
                 WHERE id = $1 AND state = 'failed' AND retried_as IS NULL FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(pg_error)?;
        let Some(row) = row else {
            return Ok(DeliveryRetry::NotFound);
        };
        let (target, payload): (String, String) = (row.get(0), row.get(1));
        let push = match rules::delivery_retry(id, &target, &payload, may_broadcast)? {
            RetryCheck::Retry(push) => push,
            RetryCheck::Answer(answer) => return Ok(answer),
        };
        let now = now_ms();
        let row = tx
            .query_one(
                "INSERT INTO deliveries (target, payload, state, lease_owner, lease_until, created_at, updated_at)
                 VALUES ($1, $2, 'queued', $3, $4, $5, $5) RETURNING id",
                &[&target, &payload, &self.me, &self.lease_until(), &now],
            )
            .await
            .map_err(pg_error)?;
        let new: i64 = row.get(0);
        tx.execute(
            "UPDATE deliveries SET retried_as = $2, updated_at = $3 WHERE id = $1",
            &[&id, &new, &now],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(rules::delivery_retried(new, push))
    }
}
