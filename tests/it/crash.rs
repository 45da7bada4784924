//! Nothing lost, nothing twice, with the real binary: kill -9 mid-reply and restart, memory under a
//! large backlog, and a store that cannot take more.

use crate::support::process::*;
use crate::support::*;
use futures::StreamExt;
use tokio::process::Command;

fn serve(fake: &FakeWecom, dir: &std::path::Path, extra: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve");
    gateway_env(&mut cmd, &fake.base_url(), dir);
    cmd.env("WECOM_CALLBACK_ALLOW_ALL_USERS", "true");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

/// The reply text for message `n`: about 5.4 KB, so three chunks, tagged so it can be recognised.
fn long_text(n: u64) -> String {
    format!("[{n}]{}", "企".repeat(1800))
}

#[tokio::test]
async fn kill_9_mid_reply_then_restart_every_message_answered_exactly_once() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("WECOM_CALLBACK_WORKERS", "2"),
        ("WECOM_CALLBACK_AGENT__DELAY_MS", "100"),
    ];
    // After five chunks, WeCom delivers what it gets but its answers never come back: the
    // process dies knowing it handed those chunks over, not knowing they arrived.
    fake.deliver_then_hang_from(5);
    let gw = Gateway::start(&mut serve(&fake, dir.path(), &env)).await;
    let http = reqwest::Client::new();
    let users = ["u1", "u2", "u3"];
    for n in 1..=6u64 {
        let user = users[(n as usize - 1) % 3];
        let (q, body) = APP_A.callback(&APP_A.text_xml(user, &long_text(n), n));
        assert_eq!(
            http.post(gw.callback_url(&q))
                .body(body)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // Both workers are stuck mid-reply (chunks recorded, some sent): kill -9 now.
    fake.wait_for_hung(2).await;
    let first_log = gw.kill9().await;
    assert_eq!(
        fake.sends().len(),
        7,
        "five answered and two delivered unanswered"
    );

    fake.release();
    let gw = Gateway::start(&mut serve(&fake, dir.path(), &env)).await;
    fake.wait_for_sends(18).await;
    let log = gw.terminate().await;

    // The two chunks whose outcome was unknown were sent again with WeCom's duplicate check,
    // which dropped them: exactly 18 chunks delivered, and each user's, in order, spell their
    // two replies.
    let sends = fake.sends();
    assert_eq!(
        fake.duplicates_dropped(),
        2,
        "the resends asked for the duplicate check"
    );
    assert_eq!(sends.len(), 18, "no chunk twice");
    let flagged = sends
        .iter()
        .filter(|s| s.body.get("enable_duplicate_check").is_some())
        .count();
    assert_eq!(
        flagged, 0,
        "first attempts never ask for the duplicate check"
    );
    for (i, user) in users.iter().enumerate() {
        let got: String = sends
            .iter()
            .filter(|s| s.touser() == *user)
            .map(|s| s.content())
            .collect();
        let n = i as u64 + 1;
        assert_eq!(
            got,
            format!("{}{}", long_text(n), long_text(n + 3)),
            "{user}'s replies"
        );
    }
    for s in &sends {
        assert!(s.content().len() <= 2048);
    }
    // The interrupted replies were resumed from the outbox, not asked of the agent again.
    let resumed: Vec<String> = log
        .lines()
        .filter(|l| l.contains("resuming a recorded reply"))
        .filter_map(|l| {
            l.split("job=")
                .nth(1)?
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(resumed.len(), 2, "two replies were cut short:\n{log}");
    for job in &resumed {
        let asked = log
            .lines()
            .any(|l| l.contains("asking the agent") && l.contains(&format!("job={job} ")));
        assert!(!asked, "agent asked again for job {job}:\n{log}");
        assert!(
            first_log.contains(&format!("job={job} ")),
            "job {job} began before the kill"
        );
    }
}

#[tokio::test]
async fn ten_thousand_queued_messages_keep_memory_flat() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The agent never answers in time: everything queues up.
    let env = [
        ("WECOM_CALLBACK_WORKERS", "1"),
        ("WECOM_CALLBACK_AGENT__DELAY_MS", "3600000"),
        ("RUST_LOG", "info"),
    ];
    let gw = Gateway::start(&mut serve(&fake, dir.path(), &env)).await;
    let http = reqwest::Client::new();
    let post_range = |range: std::ops::Range<u64>| {
        let (http, gw) = (&http, &gw);
        futures::stream::iter(range)
            .map(move |n| async move {
                let (q, body) = APP_A.callback(&APP_A.text_xml(
                    &format!("user{}", n % 500),
                    &format!("message number {n}"),
                    n,
                ));
                http.post(gw.callback_url(&q))
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
    };
    let statuses = post_range(0..1_000).await;
    assert!(statuses.iter().all(|s| *s == 200));
    let rss_1k = gw.rss_kib();
    let statuses = post_range(1_000..10_000).await;
    assert!(statuses.iter().all(|s| *s == 200));
    let rss_10k = gw.rss_kib();
    eprintln!("RSS with 1,000 queued: {rss_1k} KiB; with 10,000 queued: {rss_10k} KiB");
    // Nine thousand more messages (about 3 MB of XML) may not show up in memory.
    assert!(
        rss_10k < rss_1k + 16 * 1024,
        "RSS grew from {rss_1k} KiB to {rss_10k} KiB"
    );
    gw.kill9().await;
}

/// Post message `n` (a text of about 400 bytes, from one of a few users); returns its text and the
/// answer's status. A refusal must have an empty body.
async fn post_numbered(gw: &Gateway, http: &reqwest::Client, n: u64) -> (String, u16) {
    let text = format!("[{n}]{}", "x".repeat(400));
    let (q, body) = APP_A.callback(&APP_A.text_xml(&format!("u{}", n % 50), &text, n));
    let resp = http
        .post(gw.callback_url(&q))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    if status != 200 {
        assert_eq!(
            resp.text().await.unwrap(),
            "",
            "a refusal has an empty body"
        );
    }
    (text, status)
}

/// Every acknowledged text was answered (echoed back), each exactly once.
async fn assert_each_answered_once(fake: &FakeWecom, mut accepted: Vec<String>) {
    let sends = fake.wait_for_sends(accepted.len()).await;
    let mut replied: Vec<String> = sends.iter().map(|s| s.content().to_owned()).collect();
    replied.sort();
    accepted.sort();
    assert_eq!(
        replied, accepted,
        "every acknowledged message answered once"
    );
}

/// Post callbacks until the gateway refuses one; returns the texts it acknowledged and the
/// refusal's status.
async fn fill_until_refused(gw: &Gateway, limit: u64) -> (Vec<String>, u16) {
    let http = reqwest::Client::new();
    let mut accepted = Vec::new();
    for n in 0..limit {
        match post_numbered(gw, &http, n).await {
            (text, 200) => accepted.push(text),
            (_, status) => return (accepted, status),
        }
    }
    panic!("nothing was refused in {limit} callbacks");
}

#[tokio::test]
async fn at_max_store_mb_new_callbacks_get_503_and_every_acknowledged_one_is_answered() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A slow-ish agent, so a backlog of acknowledged messages waits when the cap is reached.
    let env = [
        ("WECOM_CALLBACK_MAX_STORE_MB", "1"),
        ("WECOM_CALLBACK_WORKERS", "8"),
        ("WECOM_CALLBACK_AGENT__DELAY_MS", "20"),
        ("WECOM_CALLBACK_API_TOKENS", "t0ken"),
    ];
    let gw = Gateway::start(&mut serve(&fake, dir.path(), &env)).await;
    let (accepted, status) = fill_until_refused(&gw, 20_000).await;
    assert_eq!(status, 503, "a full store means: try later");
    // Every new callback is refused while the cap holds, and logged once, not once each.
    let http = reqwest::Client::new();
    for n in 50_000..50_040 {
        assert_eq!(post_numbered(&gw, &http, n).await.1, 503);
    }
    assert!(
        accepted.len() > 100,
        "{} accepted before the cap",
        accepted.len()
    );
    // The cap limits new work only: the backlog is handled, replies recorded, jobs finished.
    let sends = fake.wait_for_sends(accepted.len()).await;
    let mut replied: Vec<String> = sends.iter().map(|s| s.content().to_owned()).collect();
    replied.sort();
    let mut expected = accepted.clone();
    expected.sort();
    assert_eq!(
        replied, expected,
        "every acknowledged message answered once"
    );
    let log = gw.kill9().await;
    let refusals: Vec<&str> = (log.lines())
        .filter(|l| l.contains("max_store_mb") || l.contains("not accepted"))
        .collect();
    assert_eq!(refusals.len(), 1, "41 refusals, one line:\n{refusals:#?}");
    assert!(
        refusals[0].contains("ERROR") && refusals[0].contains("refuses new work"),
        "the log says why: {}",
        refusals[0]
    );
}

#[tokio::test]
async fn an_unusable_data_dir_stops_start_up_with_a_clear_error() {
    let fake = FakeWecom::start().await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let out = serve(&fake, file.path(), &[]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data_dir") && err.contains(&file.path().display().to_string()),
        "{err}"
    );
}

/// A small tmpfs the test mounts (as root), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fill the filesystem holding `path` with a file until it has no space left.
fn fill(path: &std::path::Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 16 * 1024];
    while f.write_all(&block).and_then(|()| f.sync_data()).is_ok() {}
}

#[tokio::test]
async fn a_full_disk_refuses_new_callbacks_and_everything_resumes_when_space_returns() {
    let Some(disk) = SmallDisk::mount("4m") else {
        eprintln!(
            "SKIPPED a_full_disk_refuses_new_callbacks_and_everything_resumes_when_space_returns: \
             it mounts a small tmpfs, which needs root (the max_store_mb test covers the rest)"
        );
        return;
    };
    let fake = FakeWecom::start().await;
    let data = disk.path().join("data");
    // The reserve off: this is about the disk itself running out.
    let env = [
        ("WECOM_CALLBACK_WORKERS", "4"),
        ("WECOM_CALLBACK_MIN_FREE_MB", "0"),
    ];
    let gw = Gateway::start(&mut serve(&fake, &data, &env)).await;
    let http = reqwest::Client::new();
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut send = async |n: u64| match post_numbered(&gw, &http, n).await {
        (text, 200) => accepted.push(text),
        (_, 500 | 503) => refused += 1,
        (_, other) => panic!("unexpected status {other}"),
    };
    for n in 0..20 {
        send(n).await;
    }
    // The disk fills up while callbacks keep coming.
    let filler = disk.path().join("filler");
    fill(&filler);
    for n in 20..300 {
        send(n).await;
    }
    // Space returns; no restart.
    std::fs::remove_file(&filler).unwrap();
    for n in 300..320 {
        send(n).await;
    }
    assert!(refused > 0, "the full disk refused some callbacks");
    let tail = &accepted[accepted.len() - 20..];
    assert!(
        tail.iter().all(|t| t.starts_with("[3")),
        "every callback after space returned was acknowledged"
    );
    // Every acknowledged message is answered, once, without a restart.
    assert_each_answered_once(&fake, accepted).await;
    // The refusals (callbacks, and the workers' writes retried each second) are one line, and
    // one more says when writes succeeded again.
    // (Writes end the condition once none was refused for a few seconds: /ready writes.)
    let ready = format!("http://{}/ready", gw.addr);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !gw.log().contains("takes writes again") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery line:\n{}",
            gw.log()
        );
        http.get(&ready).send().await.unwrap();
        let settled = gw.wait_for_log(&["takes writes again"]);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(500), settled).await;
    }
    let log = gw.kill9().await;
    let full: Vec<&str> = (log.lines())
        .filter(|l| l.contains("disk is full") || l.contains("not accepted"))
        .collect();
    assert_eq!(full.len(), 1, "{refused} refusals, one line:\n{full:#?}");
    assert!(
        full[0].contains("ERROR") && full[0].contains("refuses writes"),
        "{}",
        full[0]
    );
    let again: Vec<&str> = (log.lines())
        .filter(|l| l.contains("takes writes again"))
        .collect();
    assert_eq!(again.len(), 1, "{again:#?}");
    assert!(again[0].contains("refused"), "with the count: {}", again[0]);
}

#[tokio::test]
async fn ready_turns_503_while_the_data_dir_takes_no_writes_and_health_stays_ok() {
    let Some(disk) = SmallDisk::mount("8m") else {
        eprintln!(
            "skipped: ready_turns_503_while_the_data_dir_takes_no_writes: it mounts a small tmpfs, which needs root"
        );
        return;
    };
    let fake = FakeWecom::start().await;
    let env = [("WECOM_CALLBACK_MIN_FREE_MB", "0")];
    let gw = Gateway::start(&mut serve(&fake, disk.path(), &env)).await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("http://{}{path}", gw.addr)).send();
    let ready = get("/ready").await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        body["checks"][0],
        serde_json::json!({"name": "store", "ok": true, "error": null})
    );
    // The data directory stops taking writes: here because its disk is full (a read-only
    // remount is refused while the store has its files open, so fullness stands in for it).
    let filler = disk.path().join("filler");
    fill(&filler);
    let ready = get("/ready").await.unwrap();
    assert_eq!(ready.status(), 503, "the store cannot write");
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not ready");
    assert_eq!(body["checks"][0]["ok"], false);
    // A callback the store cannot take: 503 (WeCom retries), counted as store_error.
    let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "no room", 1));
    let refused = http
        .post(gw.callback_url(&q))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let text = http
        .get(gw.metrics_url())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("wecom_gateway_callbacks_total{result=\"store_error\"} 1"),
        "{text}"
    );
    let health = get("/health").await.unwrap();
    assert_eq!(health.status(), 200, "liveness is not readiness");
    assert_eq!(health.text().await.unwrap(), r#"{"status":"ok"}"#);
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        get("/ready").await.unwrap().status(),
        200,
        "ready again, no restart"
    );
    gw.terminate().await;
}

const MIB: u64 = 1024 * 1024;

/// Write a file at `path` until the filesystem holding it has about `leave` bytes free.
fn fill_to(path: &std::path::Path, leave: u64) {
    use std::io::Write as _;
    let dir = path.parent().unwrap();
    let free = |s: rustix::fs::StatVfs| s.f_bavail * s.f_frsize;
    let size = free(rustix::fs::statvfs(dir).unwrap()) - leave;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    let mut written = 0;
    while written < size {
        let n = block.len().min((size - written) as usize);
        f.write_all(&block[..n]).unwrap();
        written += n as u64;
    }
    f.sync_all().unwrap();
    let left = free(rustix::fs::statvfs(dir).unwrap());
    assert!(left <= leave + MIB, "{left} bytes still free");
}

#[tokio::test]
async fn below_min_free_mb_new_work_gets_503_and_every_acknowledged_message_is_answered() {
    use std::sync::Arc;
    let Some(disk) = SmallDisk::mount("64m") else {
        eprintln!(
            "SKIPPED below_min_free_mb_new_work_gets_503_and_every_acknowledged_message_is_answered: \
             it mounts a small tmpfs, which needs root"
        );
        return;
    };
    let fake = FakeWecom::start().await;
    let mut cfg = config(&[APP_A], &fake.base_url());
    cfg.data_dir = disk.path().join("data");
    cfg.min_free_mb = 32;
    cfg.api_tokens = vec![secrecy::SecretString::from("api-token").into()];
    // The agent answers only when the test says: acknowledged work waits, unfinished.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let app = TestApp::spawn_with_agent(cfg, Arc::new(Gated { gate: gate.clone() })).await;
    let mut n = 0u64;
    let mut post = async || {
        n += 1;
        // One member each: WeCom's per-member limit is not what is tested.
        let text = format!("[{n}] hello");
        let (q, body) = APP_A.callback(&APP_A.text_xml(&format!("u{n}"), &text, n));
        (text, app.post_callback(&q, body).await.status().as_u16())
    };
    let mut accepted = Vec::new();
    for _ in 0..20 {
        let (text, status) = post().await;
        assert_eq!(status, 200);
        accepted.push(text);
    }
    // The disk fills to 16 MiB free: room left for the work accepted, but under the 32 MiB
    // reserve. Free space is measured afresh within a tenth of a second, so at most that long's
    // callbacks are still taken (each a few KB: the disk itself cannot fill in 1000 of them).
    let filler = disk.path().join("filler");
    fill_to(&filler, 16 * MIB);
    let mut refused = false;
    for _ in 0..1000 {
        match post().await {
            (text, 200) => accepted.push(text),
            (_, status) => {
                assert_eq!(status, 503, "no room for new work: WeCom tries later");
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "callbacks were still taken below min_free_mb");
    for _ in 0..5 {
        assert_eq!(post().await.1, 503, "new callbacks keep getting 503");
    }
    let push = app
        .http
        .post(app.url("/api/v1/send"))
        .bearer_auth("api-token")
        .json(&serde_json::json!({"touser": "zhangsan", "text": "a push"}))
        .send()
        .await
        .unwrap();
    assert_eq!(push.status(), 503, "pushes too");
    let error: serde_json::Value = push.json().await.unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("min_free_mb (32 MiB)"),
        "the answer says why: {error}"
    );
    // Everything acknowledged is answered below the reserve, without a restart: each reply is
    // recorded, sent and its job finished.
    gate.add_permits(1 << 20);
    assert_each_answered_once(&fake, accepted.clone()).await;
    // Space returns: new callbacks are taken again (once free space is measured again).
    std::fs::remove_file(&filler).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match post().await {
            (text, 200) => {
                accepted.push(text);
                break;
            }
            (_, status) => assert_eq!(status, 503),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "callbacks still refused with space free again"
        );
    }
    for _ in 0..5 {
        let (text, status) = post().await;
        assert_eq!(status, 200, "taken again");
        accepted.push(text);
    }
    assert_each_answered_once(&fake, accepted).await;
    app.stop().await;
}
