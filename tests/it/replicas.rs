//! Several replicas of the real binary on one PostgreSQL: one gateway, nothing lost or doubled,
//! even when a replica is killed mid-load or the database goes away for a while.
//!
//! Needs PostgreSQL (Debian's `postgresql` package); skipped with a notice when it is missing,
//! unless `WECOM_GATEWAY_REQUIRE_POSTGRES=1` (set by CI) makes that a failure.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::postgres::Postgres;
use crate::support::process::*;
use crate::support::*;
use tokio::process::Command;
use wecom_gateway::store::postgres::SCHEMA_VERSION;

const API_TOKEN: &str = "replica-api-token";

/// A replica: the same configuration as its siblings, its own data_dir, the shared store.
fn replica(
    fake: &FakeWecom,
    pg: &Postgres,
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> Command {
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "bots:\n  - name: ops\n    webhook_url: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=robot-key-1\napi:\n  tokens: [{API_TOKEN}]\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").arg("--config").arg(&config);
    gateway_env(&mut cmd, &fake.base_url(), dir);
    cmd.env("WECOM_CALLBACK_ALLOW_ALL_USERS", "true")
        .env("WECOM_CALLBACK_STORE", pg.url())
        .env("WECOM_CALLBACK_LEASE_SECS", "5")
        .env("RUST_LOG", "info");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd
}

async fn post(http: &reqwest::Client, gw: &Gateway, q: &str, body: &str) -> Option<u16> {
    let resp = http
        .post(gw.callback_url(q))
        .body(body.to_owned())
        .send()
        .await;
    resp.ok().map(|r| r.status().as_u16())
}

#[tokio::test]
async fn three_replicas_one_killed_every_message_answered_once_in_order() {
    let Some(pg) = Postgres::start().await else {
        return;
    };
    let fake = FakeWecom::start().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let env = [
        ("WECOM_CALLBACK_WORKERS", "2"),
        ("WECOM_CALLBACK_AGENT__DELAY_MS", "30"),
    ];
    let mut replicas = Vec::new();
    for dir in &dirs {
        replicas.push(Some(
            Gateway::start(&mut replica(&fake, &pg, dir.path(), &env)).await,
        ));
    }
    let http = reqwest::Client::new();
    let users: Vec<String> = (0..20).map(|u| format!("user{u}")).collect();
    let mut accepted: Vec<(String, String)> = Vec::new();
    for n in 1..=240u64 {
        let user = &users[n as usize % users.len()];
        let text = format!("[{n}] from {user}");
        let (q, body) = APP_A.callback(&APP_A.text_xml(user, &text, n));
        // Round-robin, and WeCom's retry of the same callback on the next replica.
        let mut ok = false;
        for r in [n as usize % 3, (n as usize + 1) % 3] {
            if let Some(gw) = &replicas[r] {
                ok |= post(&http, gw, &q, &body).await == Some(200);
            }
        }
        if ok {
            accepted.push((user.clone(), text));
        }
        if n == 80 {
            // Replica 1 dies mid-load, holding jobs (the agent takes 30 ms a message).
            replicas[1].take().unwrap().kill9().await;
        }
    }
    assert_eq!(
        accepted.len(),
        240,
        "one replica of two answered each callback"
    );

    let sends = fake
        .wait_for_many_sends(accepted.len(), Duration::from_secs(120))
        .await;
    let mut got: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in &sends {
        got.entry(s.touser()).or_default().push(s.content());
    }
    for user in &users {
        let want: Vec<&str> = (accepted.iter())
            .filter(|(u, _)| u == user)
            .map(|(_, t)| t.as_str())
            .collect();
        assert_eq!(
            got.get(user.as_str()),
            Some(&want),
            "{user}: each reply once, in order"
        );
    }
    assert_eq!(sends.len(), accepted.len(), "no reply delivered twice");
    assert_eq!(
        fake.gettoken_calls(),
        1,
        "one access token for all replicas"
    );

    // WeCom revokes the token: the first replica to hear it fetches a new one for everyone.
    fake.revoke_tokens();
    for (r, n) in [(0usize, 241u64), (2, 242)] {
        let user = &users[n as usize % users.len()];
        let (q, body) = APP_A.callback(&APP_A.text_xml(user, &format!("[{n}] late"), n));
        let gw = replicas[r].as_ref().unwrap();
        assert_eq!(post(&http, gw, &q, &body).await, Some(200));
        fake.wait_for_sends(accepted.len() + r / 2 + 1).await;
    }
    assert_eq!(fake.gettoken_calls(), 2, "one refresh for all replicas");
    for gw in replicas.into_iter().flatten() {
        gw.terminate().await;
    }
}

#[tokio::test]
async fn replicas_share_a_robot_s_rate_window() {
    let Some(pg) = Postgres::start().await else {
        return;
    };
    let fake = FakeWecom::start().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // WeCom's robot limit is 20 a minute; the same rule, scaled down so the test takes seconds.
    let (count, window) = (4usize, Duration::from_secs(2));
    let env = [("WECOM_CALLBACK_LIMITS__BOT", "4/2s")];
    let mut replicas = Vec::new();
    for dir in &dirs {
        replicas.push(Gateway::start(&mut replica(&fake, &pg, dir.path(), &env)).await);
    }
    let http = reqwest::Client::new();
    let total = 12;
    for n in 0..total {
        let gw = &replicas[n % 3];
        let resp = http
            .post(format!("http://{}/api/v1/notify/ops", gw.addr))
            .bearer_auth(API_TOKEN)
            .json(&serde_json::json!({ "subject": format!("alert {n}"), "body": "disk full" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    }
    let mut at: Vec<_> = fake
        .wait_for_robot(total)
        .await
        .iter()
        .map(|s| s.at)
        .collect();
    at.sort();
    for (i, start) in at.iter().enumerate() {
        let inside = at[i..].iter().filter(|t| **t - *start < window).count();
        assert!(
            inside <= count,
            "{inside} robot messages within {window:?} of one another"
        );
    }
    for gw in replicas {
        gw.terminate().await;
    }
}

#[tokio::test]
async fn while_the_database_is_away_callbacks_get_503_and_it_recovers_by_itself() {
    let Some(pg) = Postgres::start().await else {
        return;
    };
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&mut replica(&fake, &pg, dir.path(), &[])).await;
    let http = reqwest::Client::new();
    let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "before", 1));
    assert_eq!(post(&http, &gw, &q, &body).await, Some(200));
    fake.wait_for_sends(1).await;

    pg.pause().await;
    let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "during", 2));
    let started = std::time::Instant::now();
    assert_eq!(
        post(&http, &gw, &q, &body).await,
        Some(503),
        "try later: WeCom retries"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered before WeCom gives up"
    );

    pg.resume().await;
    // WeCom's retry of the refused callback, once the database is back: accepted and answered.
    let mut status = post(&http, &gw, &q, &body).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while status != Some(200) && std::time::Instant::now() < deadline {
        status = post(&http, &gw, &q, &body).await;
    }
    assert_eq!(status, Some(200));
    let (q3, body3) = APP_A.callback(&APP_A.text_xml("zhangsan", "after", 3));
    assert_eq!(post(&http, &gw, &q3, &body3).await, Some(200));
    let sends = fake.wait_for_sends(3).await;
    let replies: Vec<&str> = sends.iter().map(|s| s.content()).collect();
    assert_eq!(replies, ["before", "during", "after"]);
    let log = gw.terminate().await;
    assert!(
        !log.contains("secret-pw"),
        "the database password is never logged"
    );
}

#[tokio::test]
async fn check_config_reaches_the_database_and_never_shows_its_password() {
    let Some(pg) = Postgres::start().await else {
        return;
    };
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let check = |store: String| {
        let mut cmd = Command::new(BIN);
        cmd.arg("check-config");
        gateway_env(&mut cmd, &fake.base_url(), dir.path());
        cmd.env("WECOM_CALLBACK_STORE", store);
        cmd
    };
    let out = check(pg.url()).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "store: postgres://gateway:****@127.0.0.1:{}/gateway",
            pg.port()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "empty: the schema (version {SCHEMA_VERSION}) is created at the first start"
        )),
        "{stdout}"
    );

    // After a replica has run, the schema is there.
    let gw = Gateway::start(&mut replica(&fake, &pg, dir.path(), &[])).await;
    assert!(!gw.log().contains("secret-pw"));
    // Each replica keeps its own data_dir: a second process on this one is refused.
    let second = replica(&fake, &pg, dir.path(), &[]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr).to_string();
    assert!(!second.status.success());
    assert!(
        stderr.contains("is in use by another wecom-gateway process"),
        "{stderr}"
    );
    gw.terminate().await;
    let out = check(pg.url()).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.contains(&format!(
            "PostgreSQL store reachable; schema version {SCHEMA_VERSION}"
        )),
        "{stdout}"
    );

    // No password in the URL: PGPASSWORD supplies it, as for libpq's tools.
    let mut cmd = check(pg.url().replace(":secret-pw@", "@"));
    let out = cmd.env("PGPASSWORD", "secret-pw").output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A database that is not there: a clear error, the password still hidden.
    let wrong = pg.url().replace(&format!(":{}/", pg.port()), ":1/");
    let out = check(wrong).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "cannot reach the PostgreSQL store postgres://gateway:****@127.0.0.1:1/gateway"
        ),
        "{stderr}"
    );
    // A malformed URL is a config error naming the field, not the password.
    let out = check("postgres://gateway:secret-pw@127.0.0.1:notaport/gateway".into())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        stderr.contains("store: is not a valid PostgreSQL URL"),
        "{stderr}"
    );
    for text in [&stdout, &stderr] {
        assert!(!text.contains("secret-pw"), "{text}");
    }
}
