//! What only the SQLite inbox does, through its library API (tests/store_suite.rs covers what
//! every backend does): durability across reopen, one gateway per data_dir, a bounded window of
//! the backlog, and giving up on a message that kills the process every time.

use std::path::Path;
use std::sync::Arc;

use crate::support::job;
use wecom_gateway::inbox::sqlite::{Counts, MAX_ATTEMPTS};
use wecom_gateway::inbox::{Outcome, Pushed, Queue, Routes, SqliteInbox};

/// Open, run the feeder while `f` uses the inbox, then close and release everything.
async fn with_inbox<T>(dir: &Path, f: impl AsyncFnOnce(&Arc<SqliteInbox>) -> T) -> T {
    let inbox = SqliteInbox::open(dir, 16, None).expect("open");
    let feeder = {
        let inbox = inbox.clone();
        tokio::spawn(async move { inbox.feed().await })
    };
    let out = f(&inbox).await;
    inbox.close();
    feeder.await.unwrap();
    out
}

#[tokio::test]
async fn messages_routes_and_dedup_keys_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    with_inbox(dir.path(), async |inbox| {
        assert_eq!(
            inbox.push(job("alice", 1, "sales")).await.unwrap(),
            Pushed::Queued
        );
        assert_eq!(
            inbox.push(job("alice", 1, "sales")).await.unwrap(),
            Pushed::Duplicate
        );
        assert_eq!(
            inbox.push(job("alice", 2, "ops")).await.unwrap(),
            Pushed::Queued
        );
    })
    .await;
    with_inbox(dir.path(), async |inbox| {
        assert_eq!(
            inbox.push(job("alice", 1, "sales")).await.unwrap(),
            Pushed::Duplicate
        );
        assert_eq!(
            inbox.route("ww1:alice").await.unwrap().as_deref(),
            Some("ops"),
            "last app written through"
        );
        assert_eq!(inbox.route("ww1:nobody").await.unwrap(), None);
        let first = inbox.next().await.expect("queued message");
        assert_eq!(first.message.msg_id.as_deref(), Some("1"), "arrival order");
        assert_eq!(first.attempts, 1);
        inbox.finish(&first, Outcome::Done).await;
        let second = inbox.next().await.expect("second message");
        assert_eq!(second.message.msg_id.as_deref(), Some("2"));
        inbox.finish(&second, Outcome::Failed("test".into())).await;
        assert_eq!(
            inbox.counts().await.unwrap(),
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
async fn a_message_that_kills_the_process_every_time_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    with_inbox(dir.path(), async |inbox| {
        inbox.push(job("carol", 9, "sales")).await.unwrap();
    })
    .await;
    for _ in 0..MAX_ATTEMPTS {
        with_inbox(dir.path(), async |inbox| {
            inbox.next().await.expect("taken up again");
        })
        .await;
    }
    let inbox = SqliteInbox::open(dir.path(), 16, None).unwrap();
    assert_eq!(inbox.recovered().given_up, 1);
    assert_eq!(inbox.counts().await.unwrap().failed, 1);
}

#[tokio::test]
async fn one_data_dir_serves_one_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let first = SqliteInbox::open(dir.path(), 16, None).unwrap();
    let err = SqliteInbox::open(dir.path(), 16, None).unwrap_err();
    assert!(
        err.to_string().contains("in use by another wecom-gateway"),
        "{err}"
    );
    drop(first);
    SqliteInbox::open(dir.path(), 16, None).expect("free again once the first is gone");
}

#[tokio::test]
async fn only_a_window_of_the_backlog_is_held_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    with_inbox(dir.path(), async |inbox| {
        for i in 0..200 {
            inbox
                .push(job(&format!("user{i}"), i, "sales"))
                .await
                .unwrap();
        }
        // Take one job to be sure the feeder has run; the window never exceeds its capacity (16).
        let j = inbox.next().await.unwrap();
        assert!(inbox.len() <= 16 + 1, "{} jobs in memory", inbox.len());
        assert_eq!(inbox.counts().await.unwrap().queued, 199);
        inbox.finish(&j, Outcome::Done).await;
    })
    .await;
}
