//! One set of store tests, each case run once per backend as a test of its own
//! (`store_suite::sqlite::history_keeps_the_last_entries`, ...): memory, SQLite and PostgreSQL (a
//! throwaway server per test; skipped with a notice when PostgreSQL is not installed, unless
//! `WECOM_GATEWAY_REQUIRE_POSTGRES=1` makes that a failure, as in CI). A case that does not apply
//! to a backend says so on stderr ("not applicable to memory: ...") instead of passing silently.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::support::job;
use crate::support::postgres::Postgres;
use wecom_gateway::config::PostgresUrl;
use wecom_gateway::conversation::{Channel, Push, Target};
use wecom_gateway::store::{
    ChunkState, DeliveryRetry, DeliveryState, Failure, HistoryEntry, MediaRecord, MemoryStore,
    Outcome, PostgresStore, Pushed, Role, Room, SqliteStore, Store, StoreError,
};
use wecom_gateway::wecom::payload::Media;
use wecom_gateway::wecom::{AppMessage, BotMessage};

fn content(job: &wecom_gateway::store::Job) -> String {
    job.message.describe()
}

/// Straight to stderr: the test harness hides what a passing test prints with `eprintln!`, and a
/// case (or part of one) that did not run must not read as a plain "ok".
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Where a case's store lives; `open` may be called again to play a new process (or replica)
/// taking over what the previous one left.
enum Backend {
    Memory,
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

/// A store in use, with its background task (window loader or lease renewer).
struct Open {
    store: Arc<dyn Store>,
    feeder: tokio::task::JoinHandle<()>,
}

impl Open {
    /// Stop it as a dying process would leave it: nothing more is recorded.
    async fn close(self) {
        self.store.close();
        self.feeder.await.unwrap();
    }
}

/// PostgreSQL leases in these tests: short, so a takeover happens within the test.
const LEASE: Duration = Duration::from_secs(1);

impl Backend {
    async fn open(&self) -> Open {
        let store: Arc<dyn Store> = match self {
            Backend::Memory => Arc::new(MemoryStore::new(64, Duration::from_secs(1))),
            Backend::Sqlite(dir) => {
                SqliteStore::open(dir.path(), 16, Room::default()).expect("open")
            }
            Backend::Postgres(url) => {
                let url = PostgresUrl::parse(url).expect("url");
                PostgresStore::open(&url, LEASE).await.expect("open")
            }
        };
        let feeder = {
            let store = store.clone();
            tokio::spawn(async move { store.feed().await })
        };
        Open { store, feeder }
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Whether what a store kept outlives it (a new process, a new replica). Memory's does not:
    /// the part of a case after a restart is skipped, and said so.
    fn durable(&self, part: &str) -> bool {
        let durable = !matches!(self, Backend::Memory);
        if !durable {
            say(&format!(
                "not applicable to {}: {part} (it keeps nothing across restarts)",
                self.name()
            ));
        }
        durable
    }
}

/// What a case needs of a backend; a backend without it is reported, not tested.
#[derive(Clone, Copy)]
enum Needs {
    Nothing,
    /// What is kept outlives the process.
    Durable,
    /// Failures are kept, to list and retry.
    Failures,
}

#[derive(Clone, Copy)]
enum Kind {
    Memory,
    Sqlite,
    Postgres,
}

type Case = fn(&Backend) -> Pin<Box<dyn Future<Output = ()> + '_>>;

/// Run `case` on a fresh store of `kind`, or say why it does not apply.
async fn run(kind: Kind, needs: Needs, case: Case) {
    let lacks = match (kind, needs) {
        (Kind::Memory, Needs::Durable) => Some("it keeps nothing across restarts"),
        (Kind::Memory, Needs::Failures) => Some("it keeps no failures to list or retry"),
        _ => None,
    };
    if let Some(why) = lacks {
        return say(&format!("not applicable to memory: {why}"));
    }
    match kind {
        Kind::Memory => case(&Backend::Memory).await,
        Kind::Sqlite => case(&Backend::Sqlite(tempfile::tempdir().unwrap())).await,
        Kind::Postgres => {
            // `start` says why when it skips, or panics when PostgreSQL is required.
            let Some(pg) = Postgres::start().await else {
                return;
            };
            case(&Backend::Postgres(pg.url())).await;
        }
    }
}

/// One module per backend, one test per case in each.
macro_rules! backend {
    ($kind:ident, $module:ident, [$($case:ident: $needs:ident),*]) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $case() {
                    super::run(super::Kind::$kind, super::Needs::$needs, |b| {
                        Box::pin(super::$case(b))
                    })
                    .await;
                }
            )*
        }
    };
}

macro_rules! suite {
    ($($case:ident: $needs:ident),* $(,)?) => {
        backend!(Memory, memory, [$($case: $needs),*]);
        backend!(Sqlite, sqlite, [$($case: $needs),*]);
        backend!(Postgres, postgres, [$($case: $needs),*]);
    };
}

suite!(
    a_retry_is_a_duplicate_and_the_route_follows_the_last_app: Nothing,
    one_user_at_a_time_in_arrival_order: Nothing,
    a_recorded_reply_is_taken_up_with_its_sent_chunks: Durable,
    deliveries_are_kept_in_order_until_finished: Nothing,
    history_keeps_the_last_entries: Nothing,
    retention_prunes_finished_messages_only: Durable,
    a_closed_store_refuses_pushes: Nothing,
    received_media_is_recorded_and_its_key_kept: Nothing,
    a_failed_job_is_listed_and_retried_with_its_recorded_reply: Failures,
    two_retries_of_one_failed_delivery_store_it_once: Failures,
    an_upgraded_store_reads_the_old_error_prefixes_as_columns: Failures,
    a_job_keeps_its_channel_and_an_unknown_one_is_not_handed_out: Failures,
);

/// What the version before failures had columns wrote: a schema without them, and state as
/// prefixes of the error text. Job 1 was refused by WeCom at its second piece (one piece sent),
/// job 2 was retried already; delivery 1 was retried already, delivery 2 refused by WeCom.
const OLD_ROWS: &str = "
    INSERT INTO inbox (id, dedup_key, app, user_key, payload, state, attempts, error, received_at, updated_at)
    VALUES (1, 'k1', 'sales', 'ww1:dora', 'PAYLOAD', 'failed', 1,
            'piece 2 of 2: WeCom errcode 81013: invalid', 10, 20),
           (2, 'k2', 'sales', 'ww1:dora', 'PAYLOAD', 'failed', 1,
            'retried as job-99: agent timed out after 120 s', 10, 30);
    INSERT INTO outbox (inbox_id, seq, content, sent_at) VALUES (1, 0, 'one', 15), (1, 1, 'two', NULL);
    INSERT INTO deliveries (id, target, payload, state, attempts, error, created_at, updated_at)
    VALUES (1, 'TARGET', 'MESSAGE', 'failed', 1, 'retried as delivery-98: WeCom errcode 93000: x', 10, 40),
           (2, 'TARGET', 'MESSAGE', 'failed', 1, 'WeCom errcode 93000: invalid webhook url', 10, 50);
";

impl Backend {
    /// Run `sql` on the store's database directly, as another program (or version) would.
    async fn execute(&self, sql: &str) {
        match self {
            Backend::Memory => unreachable!("memory has no database"),
            Backend::Sqlite(dir) => {
                let c = rusqlite::Connection::open(dir.path().join("wecom-gateway.db")).unwrap();
                c.execute_batch(sql).unwrap();
            }
            Backend::Postgres(url) => {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let task = tokio::spawn(conn);
                client.batch_execute(sql).await.unwrap();
                task.abort();
            }
        }
    }

    /// Put the store back to the schema before failures had columns (and jobs a channel),
    /// holding `OLD_ROWS`.
    async fn downgrade(&self, payload: &str) {
        let (target, message) = bot_push(1).to_columns().unwrap();
        let quote = |t: &str| format!("'{}'", t.replace('\'', "''"));
        let rows = OLD_ROWS
            .replace("'PAYLOAD'", &quote(payload))
            .replace("'TARGET'", &quote(&target))
            .replace("'MESSAGE'", &quote(&message));
        let drop_columns = "
            ALTER TABLE inbox DROP COLUMN retried_as;
            ALTER TABLE inbox DROP COLUMN send_failed;
            ALTER TABLE inbox DROP COLUMN errcode;
            ALTER TABLE deliveries DROP COLUMN retried_as;
            ALTER TABLE deliveries DROP COLUMN errcode;
            ALTER TABLE inbox DROP COLUMN channel;
            ALTER TABLE inbox DROP COLUMN stream;";
        match self {
            Backend::Memory => unreachable!("memory keeps nothing to upgrade"),
            Backend::Sqlite(dir) => {
                let c = rusqlite::Connection::open(dir.path().join("wecom-gateway.db")).unwrap();
                c.execute_batch(drop_columns).unwrap();
                c.execute_batch(&rows).unwrap();
                c.pragma_update(None, "user_version", 7).unwrap();
            }
            Backend::Postgres(url) => {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let task = tokio::spawn(conn);
                client.batch_execute(drop_columns).await.unwrap();
                client.batch_execute(&rows).await.unwrap();
                client
                    .batch_execute(
                        "UPDATE wecom_gateway_schema SET version = 4;
                         SELECT setval('inbox_id_seq', 100); SELECT setval('deliveries_id_seq', 100);",
                    )
                    .await
                    .unwrap();
                task.abort();
            }
        }
    }
}

async fn an_upgraded_store_reads_the_old_error_prefixes_as_columns(b: &Backend) {
    // A store of this version, made old, with what the old version wrote.
    b.open().await.close().await;
    b.downgrade(&job("erin", 1, "sales").payload).await;

    let s = b.open().await;
    let failed = s.store.failed(10).await.unwrap();
    let listed: Vec<(String, String, Option<i64>)> = (failed.iter())
        .map(|f| (f.id.clone(), f.error.clone(), f.errcode))
        .collect();
    assert_eq!(
        listed,
        vec![
            (
                "delivery-2".into(),
                "WeCom errcode 93000: invalid webhook url".into(),
                Some(93000)
            ),
            (
                "job-1".into(),
                "piece 2 of 2: WeCom errcode 81013: invalid".into(),
                Some(81013)
            ),
        ],
        "retried ones are not listed; errcodes are read into their column"
    );
    assert_eq!(s.store.retry_job(2).await.unwrap(), None, "retried already");
    assert_eq!(
        s.store.retry_delivery(1, false).await.unwrap(),
        DeliveryRetry::NotFound
    );
    // The refused send is retried as a resend of its recorded reply, not a new question.
    let new = s.store.retry_job(1).await.unwrap().expect("retried");
    let again = loop {
        let j = s.store.next().await.unwrap();
        if j.id == new as u64 {
            break j;
        }
        s.store.finish(&j, Outcome::Done).await;
    };
    let state: Vec<ChunkState> = (again.reply.clone().expect("the recorded reply"))
        .into_iter()
        .map(|c| c.state)
        .collect();
    assert_eq!(state, vec![ChunkState::Sent, ChunkState::Unsent]);
    assert_eq!(
        again.channel,
        Channel::App("sales".into()),
        "a job an older version stored came through a self-built app"
    );
    s.store.finish(&again, Outcome::Done).await;
    s.close().await;
}

/// Each job carries its channel back out of the store. A stored job whose channel this version
/// does not know (a newer one wrote it) is never handed to a worker: SQLite (one process) marks it
/// failed and names it; PostgreSQL leaves it queued for a replica that knows it (during a rolling
/// upgrade, replicas of two versions share the store).
async fn a_job_keeps_its_channel_and_an_unknown_one_is_not_handed_out(b: &Backend) {
    let s = b.open().await;
    assert_eq!(
        s.store.push(job("frank", 1, "sales")).await.unwrap(),
        Pushed::Queued
    );
    let j = s.store.next().await.unwrap();
    assert_eq!(j.channel, Channel::App("sales".into()));
    s.store.finish(&j, Outcome::Done).await;
    s.close().await;

    let (unknown, known) = (job("grace", 2, "sales"), job("heidi", 3, "sales"));
    let set_kind = "UPDATE inbox SET channel = 'carrier_pigeon' WHERE dedup_key = ";
    let sql = format!("{set_kind}'{}'", unknown.dedup_key.replace('\'', "''"));
    let s = b.open().await;
    s.store.push(unknown).await.unwrap();
    s.close().await;
    b.execute(&sql).await;
    let s = b.open().await;
    s.store.push(known.clone()).await.unwrap();
    let j = s.store.next().await.unwrap();
    assert_eq!(
        j.message.dedup_key("ww1", 5),
        known.dedup_key,
        "only the known one is handed out"
    );
    s.store.finish(&j, Outcome::Done).await;
    let failed = s.store.failed(10).await.unwrap();
    match b {
        Backend::Postgres(_) => assert!(
            failed.is_empty(),
            "left for a replica that knows it: {failed:?}"
        ),
        _ => {
            assert_eq!(failed.len(), 1, "{failed:?}");
            let named = "channel \"carrier_pigeon\" is not one this wecom-gateway knows";
            assert!(failed[0].error.contains(named), "{failed:?}");
        }
    }
    s.close().await;
}

async fn two_retries_of_one_failed_delivery_store_it_once(b: &Backend) {
    let s = b.open().await;
    let store = &s.store;
    let ids = store.add_deliveries(vec![bot_push(1)]).await.unwrap();
    let refused = Failure::wecom("WeCom errcode 93000: invalid webhook url", Some(93000));
    store
        .finish_delivery(ids[0], 1, Some(refused))
        .await
        .unwrap();
    let failed = store.failed(10).await.unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].id, format!("delivery-{}", ids[0]));
    assert_eq!(failed[0].report()["errcode"], 93000);
    // Two operators (or two replicas' APIs) retry it at once: one new delivery.
    let (x, y) = tokio::join!(
        store.retry_delivery(ids[0], false),
        store.retry_delivery(ids[0], false)
    );
    let answers = [x.unwrap(), y.unwrap()];
    let queued: Vec<_> = (answers.iter())
        .filter_map(|a| match a {
            DeliveryRetry::Queued(d) => Some(d.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(queued.len(), 1, "{answers:?}");
    assert!(answers.contains(&DeliveryRetry::NotFound), "{answers:?}");
    assert_eq!(
        (queued[0].push.clone(), queued[0].started),
        (bot_push(1), false)
    );
    let new = store.delivery(queued[0].id).await.unwrap().unwrap();
    assert_eq!(new.state, DeliveryState::Queued);
    let old = store.delivery(ids[0]).await.unwrap().unwrap();
    assert_eq!(old.retried_as, Some(format!("delivery-{}", queued[0].id)));
    assert!(
        store.failed(10).await.unwrap().is_empty(),
        "retried: no longer listed"
    );
    assert_eq!(
        store.retry_delivery(ids[0], false).await.unwrap(),
        DeliveryRetry::NotFound,
        "once"
    );
    s.close().await;
}

async fn a_failed_job_is_listed_and_retried_with_its_recorded_reply(b: &Backend) {
    let s = b.open().await;
    s.store.push(job("dora", 11, "sales")).await.unwrap();
    let j = s.store.next().await.unwrap();
    let reply = [AppMessage::text("one"), AppMessage::text("two")];
    s.store.record_reply(&j, &reply).await.unwrap();
    s.store.mark_started(&j, 0).await.unwrap();
    s.store.mark_sent(&j, 0).await.unwrap();
    s.store
        .finish(
            &j,
            Outcome::Failed(Failure::send_failed(
                "piece 2 of 2: WeCom errcode 81013: invalid",
                Some(81013),
            )),
        )
        .await;
    let failed = s.store.failed(10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, format!("job-{}", j.id));
    assert_eq!(failed[0].report()["errcode"], 81013);
    let new = s
        .store
        .retry_job(j.id as i64)
        .await
        .unwrap()
        .expect("retried");
    assert_eq!(s.store.retry_job(j.id as i64).await.unwrap(), None, "once");
    assert!(s.store.failed(10).await.unwrap().is_empty());
    let again = s.store.next().await.unwrap();
    assert_eq!(again.id, new as u64);
    let state: Vec<(AppMessage, ChunkState)> = (again.reply.clone().expect("the recorded reply"))
        .into_iter()
        .map(|c| (c.message, c.state))
        .collect();
    assert_eq!(
        state,
        vec![
            (AppMessage::text("one"), ChunkState::Sent),
            (AppMessage::text("two"), ChunkState::Unsent)
        ],
        "what was sent stays sent"
    );
    s.store.finish(&again, Outcome::Done).await;
    // An agent that failed: the retry asks it again (no recorded reply is carried over).
    s.store.push(job("dora", 12, "sales")).await.unwrap();
    let j = s.store.next().await.unwrap();
    s.store
        .record_reply(&j, &[AppMessage::text("sorry")])
        .await
        .unwrap();
    s.store.mark_sent(&j, 0).await.unwrap();
    s.store
        .finish(&j, Outcome::Failed("agent timed out after 120 s".into()))
        .await;
    s.store
        .retry_job(j.id as i64)
        .await
        .unwrap()
        .expect("retried");
    let again = s.store.next().await.unwrap();
    assert_eq!(again.reply, None, "the agent is asked again");
    s.store.finish(&again, Outcome::Done).await;
    s.close().await;
}

async fn received_media_is_recorded_and_its_key_kept(b: &Backend) {
    let s = b.open().await;
    let store = &s.store;
    let record = MediaRecord {
        sha256: "ab".repeat(32),
        kind: "file".into(),
        content_type: "application/pdf".into(),
        size: 3,
        file_name: Some("报告.pdf".into()),
    };
    let bytes = store.keeps_media_bytes().then(|| b"pdf".to_vec());
    store.put_media(&record, bytes).await.unwrap();
    assert_eq!(
        store.media(&record.sha256).await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(store.media(&"cd".repeat(32)).await.unwrap(), None);
    // The same bytes again, without a name: the record keeps the name it had.
    let again = MediaRecord {
        file_name: None,
        ..record.clone()
    };
    store.put_media(&again, None).await.unwrap();
    assert_eq!(
        store.media(&record.sha256).await.unwrap(),
        Some(record.clone())
    );
    let stored = store.media_bytes(&record.sha256).await.unwrap();
    let expected = store.keeps_media_bytes().then(|| b"pdf".to_vec());
    assert_eq!(
        stored, expected,
        "a store shared by replicas keeps the bytes"
    );
    let key = store.media_key().await.unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(store.media_key().await.unwrap(), key, "one key, kept");
    s.close().await;
    if b.durable("the key and the record after a restart") {
        // The next process (or another replica) signs with the same key...
        let s = b.open().await;
        assert_eq!(s.store.media_key().await.unwrap(), key);
        // ...and retention forgets the record with the messages.
        assert!(
            s.store
                .prune(wecom_gateway::store::now_ms() + 60_000)
                .await
                .unwrap()
                >= 1
        );
        assert_eq!(s.store.media(&record.sha256).await.unwrap(), None);
        s.close().await;
    }
}

async fn a_retry_is_a_duplicate_and_the_route_follows_the_last_app(b: &Backend) {
    let s = b.open().await;
    let store = &s.store;
    assert_eq!(
        store.push(job("alice", 1, "sales")).await.unwrap(),
        Pushed::Queued
    );
    assert_eq!(
        store.push(job("alice", 1, "sales")).await.unwrap(),
        Pushed::Duplicate
    );
    assert_eq!(
        store.route("ww1:alice").await.unwrap().as_deref(),
        Some("sales")
    );
    assert_eq!(
        store.push(job("alice", 2, "ops")).await.unwrap(),
        Pushed::Queued
    );
    assert_eq!(
        store.route("ww1:alice").await.unwrap().as_deref(),
        Some("ops")
    );
    assert_eq!(store.route("ww1:nobody").await.unwrap(), None);
    // Both pushes at once, as WeCom's retry racing its original: one is queued.
    let (x, y) = tokio::join!(
        store.push(job("carol", 3, "a")),
        store.push(job("carol", 3, "a"))
    );
    let mut got = [x.unwrap(), y.unwrap()];
    got.sort_by_key(|p| *p == Pushed::Duplicate);
    assert_eq!(got, [Pushed::Queued, Pushed::Duplicate]);
    s.close().await;
}

async fn one_user_at_a_time_in_arrival_order(b: &Backend) {
    let s = b.open().await;
    let store = &s.store;
    for (user, id) in [("alice", 1), ("alice", 2), ("bob", 3), ("alice", 4)] {
        store.push(job(user, id, "a")).await.unwrap();
    }
    let first = store.next().await.unwrap();
    assert_eq!(content(&first), "hi 1");
    // alice is busy: bob's message comes next, not alice's second.
    let second = store.next().await.unwrap();
    assert_eq!(content(&second), "hi 3");
    store.finish(&second, Outcome::Done).await;
    store.finish(&first, Outcome::Done).await;
    let third = store.next().await.unwrap();
    assert_eq!(content(&third), "hi 2");
    store
        .finish(&third, Outcome::Failed("agent failed".into()))
        .await;
    let fourth = store.next().await.unwrap();
    assert_eq!(content(&fourth), "hi 4");
    assert_eq!(fourth.attempts, 1);
    store.finish(&fourth, Outcome::Done).await;
    s.close().await;
}

async fn a_recorded_reply_is_taken_up_with_its_sent_chunks(b: &Backend) {
    let s = b.open().await;
    s.store.push(job("bob", 7, "sales")).await.unwrap();
    let j = s.store.next().await.unwrap();
    let image = AppMessage::Image(Media {
        base64: Some("iVBORw0KGgo=".into()),
        ..Media::default()
    });
    let reply = [
        AppMessage::text("one"),
        image.clone(),
        AppMessage::text("three"),
    ];
    s.store.record_reply(&j, &reply).await.unwrap();
    // The image was uploaded before its send began: its media_id is kept for the resend.
    let mut uploaded = image.clone();
    if let Some(m) = uploaded.media_mut() {
        (m.media_id, m.uploaded_at) = (Some("MEDIA-1".into()), Some(1_700_000_000));
    }
    s.store.record_upload(&j, 1, &uploaded).await.unwrap();
    // The receipt sent while the agent worked, to withdraw once the reply is out.
    s.store.record_receipt(&j, "m-receipt").await.unwrap();
    s.store.mark_started(&j, 0).await.unwrap();
    s.store.mark_sent(&j, 0).await.unwrap();
    // The second chunk's send began; its answer never came back. Then the process dies.
    s.store.mark_started(&j, 1).await.unwrap();
    s.close().await;

    let s = b.open().await;
    let j = s.store.next().await.unwrap();
    assert_eq!(j.attempts, 2);
    assert_eq!(j.receipt.as_deref(), Some("m-receipt"));
    let reply = j.reply.clone().expect("recorded reply");
    let state: Vec<(AppMessage, ChunkState)> =
        reply.iter().map(|c| (c.message.clone(), c.state)).collect();
    assert_eq!(
        state,
        vec![
            (AppMessage::text("one"), ChunkState::Sent),
            (uploaded, ChunkState::Started),
            (AppMessage::text("three"), ChunkState::Unsent)
        ]
    );
    s.store.finish(&j, Outcome::Done).await;
    s.close().await;
}

fn bot_push(n: usize) -> Push {
    Push::Bot {
        bot: "ops".into(),
        message: BotMessage::Text {
            content: format!("alert {n}"),
            mentioned_list: vec![],
            mentioned_mobile_list: vec![],
        },
    }
}

async fn deliveries_are_kept_in_order_until_finished(b: &Backend) {
    let s = b.open().await;
    let store = &s.store;
    let ids = store
        .add_deliveries((0..3).map(bot_push).collect())
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let status = store.delivery(ids[0]).await.unwrap().unwrap();
    assert_eq!(status.state, DeliveryState::Queued);
    assert_eq!(status.target, Target::Bot { bot: "ops".into() });
    store.start_delivery(ids[0]).await.unwrap();
    store.finish_delivery(ids[0], 1, None).await.unwrap();
    store.start_delivery(ids[1]).await.unwrap();
    store
        .finish_delivery(ids[1], 3, Some("errcode 93000".into()))
        .await
        .unwrap();
    let sent = store.delivery(ids[0]).await.unwrap().unwrap();
    assert_eq!((sent.state, sent.attempts), (DeliveryState::Sent, 1));
    let failed = store.delivery(ids[1]).await.unwrap().unwrap();
    assert_eq!(failed.state, DeliveryState::Failed);
    assert_eq!(failed.error.as_deref(), Some("errcode 93000"));
    assert_eq!(store.delivery(ids[2] + 1000).await.unwrap(), None);
    s.close().await;
    if b.durable("deliveries left to the next process") {
        // What the previous process left undelivered is handed to the next one.
        // (On PostgreSQL, once the previous replica's lease has lapsed.)
        let s = b.open().await;
        let mut left = s.store.queued_deliveries().await.unwrap();
        let deadline = tokio::time::Instant::now() + LEASE * 10;
        while left.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(LEASE / 10).await;
            left = s.store.queued_deliveries().await.unwrap();
        }
        let left: Vec<(i64, Push)> = left.into_iter().map(|d| (d.id, d.push)).collect();
        assert_eq!(left, vec![(ids[2], bot_push(2))]);
        s.close().await;
    }
}

async fn history_keeps_the_last_entries(b: &Backend) {
    let s = b.open().await;
    let store = &s.store;
    let entry = |role, n: usize| HistoryEntry {
        role,
        content: format!("line {n}"),
    };
    for n in 0..3 {
        let turn = vec![entry(Role::User, n * 2), entry(Role::Assistant, n * 2 + 1)];
        store.append_history("ww1:alice", turn, 4).await.unwrap();
    }
    let kept = store.history("ww1:alice", 10).await.unwrap();
    assert_eq!(
        kept,
        (2..6)
            .map(|n| entry(
                if n % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                },
                n
            ))
            .collect::<Vec<_>>()
    );
    let last = store.history("ww1:alice", 1).await.unwrap();
    assert_eq!(last, vec![entry(Role::Assistant, 5)]);
    assert!(store.history("ww1:bob", 10).await.unwrap().is_empty());
    store.clear_history("ww1:alice").await.unwrap();
    assert!(store.history("ww1:alice", 10).await.unwrap().is_empty());
    s.close().await;
}

async fn retention_prunes_finished_messages_only(b: &Backend) {
    let s = b.open().await;
    let store = &s.store;
    store.push(job("alice", 1, "a")).await.unwrap();
    store.push(job("bob", 2, "a")).await.unwrap();
    let done = store.next().await.unwrap();
    store.finish(&done, Outcome::Done).await;
    // Nothing is old enough yet; then everything finished before "a minute from now" goes.
    assert_eq!(store.prune(0).await.unwrap(), 0);
    let pruned = store
        .prune(wecom_gateway::store::now_ms() + 60_000)
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    // The finished message's key is forgotten; the queued one is still known.
    assert_eq!(
        store.push(job("alice", 1, "a")).await.unwrap(),
        Pushed::Queued
    );
    assert_eq!(
        store.push(job("bob", 2, "a")).await.unwrap(),
        Pushed::Duplicate
    );
    s.close().await;
}

async fn a_closed_store_refuses_pushes(b: &Backend) {
    let s = b.open().await;
    s.store.close();
    let pushed = s.store.push(job("alice", 1, "a")).await;
    assert!(matches!(pushed, Err(StoreError::Closed)), "{pushed:?}");
    assert!(s.store.next().await.is_none());
    s.feeder.await.unwrap();
}
