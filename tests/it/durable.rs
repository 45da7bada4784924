//! Nothing lost, nothing twice (in-process): dedup of WeCom's retries, also across a restart, and
//! distinct events in one second kept apart.

use std::sync::Arc;

use crate::support::*;

#[tokio::test]
async fn same_callback_three_times_concurrently_then_after_restart_one_reply() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.data_dir = dir.path().to_path_buf();
    let agent = Arc::new(Recording::default());
    let app = TestApp::spawn_with_agent(cfg.clone(), agent.clone()).await;

    // WeCom's three tries of one callback, all at once.
    let (query, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "only once", 4242));
    let posts = (0..3).map(|_| app.post_callback(&query, body.clone()));
    for resp in futures::future::join_all(posts).await {
        assert_eq!(resp.status(), 200);
    }
    fake.wait_for_sends(1).await;
    app.stop().await;

    // A fourth try after a restart, then a new message from the same user. Their messages are
    // handled in order, so a wrongly queued copy would be answered before the new one.
    let app = TestApp::spawn_with_agent(cfg, agent.clone()).await;
    assert_eq!(app.post_callback(&query, body).await.status(), 200);
    app.send_text(&APP_A, "zhangsan", "something new", 4243)
        .await;
    let sends = fake.wait_for_sends(2).await;
    let contents: Vec<&str> = sends.iter().map(|s| s.content()).collect();
    assert_eq!(contents, vec!["only once", "something new"]);
    assert_eq!(
        agent.seen(),
        vec!["zhangsan", "zhangsan"],
        "one agent call per distinct message"
    );
    app.stop().await;
    assert_eq!(fake.sends().len(), 2);
}

#[tokio::test]
async fn two_different_events_in_the_same_second_both_reach_the_agent() {
    let fake = FakeWecom::start().await;
    let agent = Arc::new(Recording::default());
    let app = TestApp::spawn_with_agent(config(&[APP_A], &fake.base_url()), agent.clone()).await;
    for key in ["MENU_A", "MENU_B"] {
        let xml = format!(
            "<xml><ToUserName>{}</ToUserName><FromUserName>lisi</FromUserName><CreateTime>1700000123</CreateTime><MsgType>event</MsgType><Event>click</Event><EventKey>{key}</EventKey><AgentID>1000002</AgentID></xml>",
            APP_A.corp_id
        );
        let (q, b) = APP_A.callback(&xml);
        assert_eq!(app.post_callback(&q, b).await.status(), 200);
    }
    let sends = fake.wait_for_sends(2).await;
    let contents: Vec<&str> = sends.iter().map(|s| s.content()).collect();
    assert_eq!(contents, vec!["[menu click] MENU_A", "[menu click] MENU_B"]);
    assert_eq!(agent.seen().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn messages_queued_at_a_graceful_stop_are_answered_after_the_restart() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.data_dir = dir.path().to_path_buf();
    cfg.workers = 1;
    // Shorter than the HTTP timeout (5 s): the stop, not a timeout, ends the hung send.
    cfg.shutdown_grace_secs = 1;
    // The first reply hangs in the fake: the worker is stuck, so later messages stay queued.
    fake.hang_from(0);
    let app = TestApp::spawn(cfg.clone()).await;
    for i in 1..=3u64 {
        app.send_text(&APP_A, &format!("u{i}"), &format!("queued {i}"), i)
            .await;
    }
    fake.wait_for_hung(1).await;
    // The grace period runs out on the hung send: it and the queued messages stay in the store.
    app.stop().await;

    fake.release();
    let app = TestApp::spawn(cfg).await;
    let sends = fake.wait_for_sends(3).await;
    let mut contents: Vec<&str> = sends.iter().map(|s| s.content()).collect();
    contents.sort();
    assert_eq!(contents, vec!["queued 1", "queued 2", "queued 3"]);
    app.stop().await;
}
