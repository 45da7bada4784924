//! What only the SQLite store does, through its library API (tests/store_suite.rs covers what
//! every backend does): durability across reopen, one gateway per data_dir, a bounded window of
//! the backlog, and giving up on a message that kills the process every time.

use std::path::Path;
use std::sync::Arc;

use crate::support::job;
use wecom_gateway::store::sqlite::{Counts, MAX_ATTEMPTS};
use wecom_gateway::store::{Outbox, Outcome, Pushed, Queue, Room, Routes, SqliteStore, StoreError};
use wecom_gateway::wecom::AppMessage;

/// Open, run the feeder while `f` uses the store, then close and release everything.
async fn with_inbox<T>(dir: &Path, f: impl AsyncFnOnce(&Arc<SqliteStore>) -> T) -> T {
    with_room(dir, Room::default(), f).await
}

/// [`with_inbox`] with limits on new work.
async fn with_room<T>(dir: &Path, room: Room, f: impl AsyncFnOnce(&Arc<SqliteStore>) -> T) -> T {
    let store = SqliteStore::open(dir, 16, room).expect("open");
    let feeder = {
        let store = store.clone();
        tokio::spawn(async move { store.feed().await })
    };
    let out = f(&store).await;
    store.close();
    feeder.await.unwrap();
    out
}

#[tokio::test]
async fn messages_routes_and_dedup_keys_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    with_inbox(dir.path(), async |store| {
        assert_eq!(
            store.push(job("alice", 1, "sales")).await.unwrap(),
            Pushed::Queued
        );
        assert_eq!(
            store.push(job("alice", 1, "sales")).await.unwrap(),
            Pushed::Duplicate
        );
        assert_eq!(
            store.push(job("alice", 2, "ops")).await.unwrap(),
            Pushed::Queued
        );
    })
    .await;
    with_inbox(dir.path(), async |store| {
        assert_eq!(
            store.push(job("alice", 1, "sales")).await.unwrap(),
            Pushed::Duplicate
        );
        assert_eq!(
            store.route("ww1:alice").await.unwrap().as_deref(),
            Some("ops"),
            "last app written through"
        );
        assert_eq!(store.route("ww1:nobody").await.unwrap(), None);
        let first = store.next().await.expect("queued message");
        assert_eq!(first.message.msg_id.as_deref(), Some("1"), "arrival order");
        assert_eq!(first.attempts, 1);
        store.finish(&first, Outcome::Done).await;
        let second = store.next().await.expect("second message");
        assert_eq!(second.message.msg_id.as_deref(), Some("2"));
        store.finish(&second, Outcome::Failed("test".into())).await;
        assert_eq!(
            store.counts().await.unwrap(),
            Counts {
                done: 1,
                failed: 1,
                ..Counts::default()
            }
        );
    })
    .await;
}

#[tokio::test]
async fn below_min_free_mb_new_messages_are_refused_and_stored_ones_finish() {
    let dir = tempfile::tempdir().unwrap();
    with_inbox(dir.path(), async |store| {
        store.push(job("alice", 1, "sales")).await.unwrap();
    })
    .await;
    // A reserve larger than any disk: the filesystem is always "below" it.
    let room = Room::new(0, 1 << 30, dir.path());
    with_room(dir.path(), room, async |store| {
        assert_eq!(
            store.push(job("alice", 1, "sales")).await.unwrap(),
            Pushed::Duplicate,
            "a retry of a stored message is acknowledged, never refused"
        );
        let err = store.push(job("bob", 2, "sales")).await.unwrap_err();
        assert!(matches!(err, StoreError::NoRoom(_)), "{err:?}");
        assert!(err.to_string().contains("min_free_mb"), "{err}");
        let first = store.next().await.expect("the stored message");
        store
            .record_reply(&first, &[AppMessage::text("hi")])
            .await
            .expect("a reply is recorded below the reserve");
        store.finish(&first, Outcome::Done).await;
        assert_eq!(
            store.counts().await.unwrap(),
            Counts {
                done: 1,
                ..Counts::default()
            }
        );
    })
    .await;
}

#[tokio::test]
async fn a_message_that_kills_the_process_every_time_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    with_inbox(dir.path(), async |store| {
        store.push(job("carol", 9, "sales")).await.unwrap();
    })
    .await;
    for _ in 0..MAX_ATTEMPTS {
        with_inbox(dir.path(), async |store| {
            store.next().await.expect("taken up again");
        })
        .await;
    }
    let store = SqliteStore::open(dir.path(), 16, Room::default()).unwrap();
    assert_eq!(store.recovered().given_up, 1);
    assert_eq!(store.counts().await.unwrap().failed, 1);
}

#[tokio::test]
async fn one_data_dir_serves_one_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let first = SqliteStore::open(dir.path(), 16, Room::default()).unwrap();
    let err = SqliteStore::open(dir.path(), 16, Room::default()).unwrap_err();
    assert!(
        err.to_string().contains("in use by another wecom-gateway"),
        "{err}"
    );
    drop(first);
    SqliteStore::open(dir.path(), 16, Room::default()).expect("free again once the first is gone");
}

#[tokio::test]
async fn only_a_window_of_the_backlog_is_held_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    with_inbox(dir.path(), async |store| {
        for i in 0..200 {
            store
                .push(job(&format!("user{i}"), i, "sales"))
                .await
                .unwrap();
        }
        // Take one job to be sure the feeder has run; the window never exceeds its capacity (16).
        let j = store.next().await.unwrap();
        assert!(store.len() <= 16 + 1, "{} jobs in memory", store.len());
        assert_eq!(store.counts().await.unwrap().queued, 199);
        store.finish(&j, Outcome::Done).await;
    })
    .await;
}
