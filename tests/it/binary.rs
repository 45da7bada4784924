//! The real `wecom-gateway` binary as a child process: CLI, start-up from the environment alone,
//! graceful SIGTERM, and logs that never contain a secret.

use crate::support::process::*;
use crate::support::*;
use tokio::process::Command;

#[tokio::test]
async fn serves_from_env_alone_stops_on_sigterm_and_never_logs_secrets() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve");
    gateway_env(&mut cmd, &fake.base_url(), dir.path());
    let gw = Gateway::start(&mut cmd).await;
    let addr = gw.addr.clone();
    let http = reqwest::Client::new();
    let url = |q: &str| gw.callback_url(q);

    // A reply goes out; then the token is revoked so the 40014 refresh path runs (and logs).
    let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "hello", 1));
    assert_eq!(
        http.post(url(&q)).body(body).send().await.unwrap().status(),
        200
    );
    fake.wait_for_sends(1).await;
    fake.revoke_tokens();
    let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "again", 2));
    assert_eq!(
        http.post(url(&q)).body(body).send().await.unwrap().status(),
        200
    );
    let sends = fake.wait_for_sends(2).await;
    // A permanent error from WeCom is logged, not counted as sent.
    fake.script([
        serde_json::json!({"errcode": 60020, "errmsg": "not allow to access from your ip"}),
    ]);
    let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "third", 3));
    assert_eq!(
        http.post(url(&q)).body(body).send().await.unwrap().status(),
        200
    );

    // Rejected callbacks: forged signature, not-allowed user.
    let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "x", 4));
    let forged = q.replacen("msg_signature=", "msg_signature=f", 1);
    assert_eq!(
        http.post(url(&forged))
            .body(body)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let (q, body) = APP_A.callback(&APP_A.text_xml("stranger", "x", 5));
    assert_eq!(
        http.post(url(&q)).body(body).send().await.unwrap().status(),
        200
    );

    // The health probe used by the Docker HEALTHCHECK.
    let out = Command::new(BIN)
        .args(["health", "--url", &format!("http://{addr}/health")])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The 60020 failure and the refusals are logged (a graceful stop would leave a message that
    // is still queued for the next start, so wait for the worker to have handled it).
    gw.wait_for_log(&["message/send failed", "60020"]).await;
    gw.wait_for_log(&["not on the allowlist"]).await;

    // SIGTERM: a clean, successful exit.
    let text = gw.terminate().await;
    assert!(text.contains("SIGTERM received"), "{text}");
    assert!(
        text.contains("check=\"signature\"") || text.contains("check=signature"),
        "{text}"
    );
    assert!(
        text.contains("60020") && text.contains("企业可信IP"),
        "the 60020 hint is logged:\n{text}"
    );
    assert!(text.contains("not on the allowlist"), "{text}");
    let mut secrets = vec![
        APP_A.secret.to_owned(),
        APP_A.token.to_owned(),
        APP_A.aes_key.to_owned(),
    ];
    secrets.extend(sends.iter().map(|s| s.access_token.clone()));
    for secret in secrets {
        assert!(
            !text.contains(&secret),
            "log contains secret {secret:?}:\n{text}"
        );
    }
}

#[tokio::test]
async fn help_for_every_subcommand() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["check-config", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().await.unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{args:?}: {text}");
    }
}

#[tokio::test]
async fn check_config_reports_all_errors_and_accepts_the_example() {
    let out = Command::new(BIN)
        .arg("check-config")
        .env_clear()
        .env("WECOM_CALLBACK_CORP_ID", "ww1")
        .env("WECOM_CALLBACK_AGENT_ID", "x1")
        .env("WECOM_CALLBACK_ENCODING_AES_KEY", "short")
        .env("WECOM_CALLBACK_PORT", "http")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for field in [
        "corp_secret: is required",
        "agent_id: must be the numeric AgentId",
        "encoding_aes_key: must be 43 characters, got 5",
        "token: is required",
        "port: must be a whole number",
    ] {
        assert!(err.contains(field), "missing {field:?} in {err}");
    }

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml.example");
    let out = Command::new(BIN)
        .args(["check-config", "--config", example])
        .env_clear()
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        printed,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("configuration is valid"));
    assert!(printed.contains("corp_secret: '****'"), "{printed}");
    // Copied as is, the example still holds its secret's placeholder: named by its key, and the
    // only warning (its numbers are all for keys that take numbers).
    let warnings: Vec<&str> = (printed.lines())
        .filter(|l| l.starts_with("# warning:"))
        .collect();
    assert_eq!(
        warnings,
        ["# warning: corp_secret: still holds the example's placeholder: put in your own value"],
        "{printed}"
    );
    assert!(
        !printed.contains("replace-with-your-app-secret"),
        "{printed}"
    );
}

#[tokio::test]
async fn health_probe_fails_when_nothing_listens() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let out = Command::new(BIN)
        .args(["health", "--url", &format!("http://{addr}/health")])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn robot_keys_and_api_tokens_never_reach_logs_or_output() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let good_key = "robot-key-ab12cd34-5678";
    let removed_key = "removed-robot-key-ffee99";
    let api_token = "api-token-9f8e7d6c";
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "bots:\n  - name: ops\n    webhook_url: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={good_key}\n  - name: old\n    webhook_url: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={removed_key}\n    secret: SECabc\napi:\n  tokens: [{api_token}]\n"
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg("--config").arg(&config);
        gateway_env(&mut cmd, &fake.base_url(), dir.path());
        cmd
    };

    // bot test: accepted, and a removed robot's errcode with a hint (no retry: one call).
    let ok = cli(&["bot", "test", "ops"]).output().await.unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("accepted by WeCom (errcode 0)"));
    assert_eq!(
        fake.wait_for_robot(1).await[0].body["text"]["content"],
        "[INFO] wecom-gateway test"
    );
    let calls = fake.calls();
    let bad = cli(&["bot", "test", "old"]).output().await.unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let bad_err = String::from_utf8_lossy(&bad.stderr).to_string();
    assert!(
        bad_err.contains("93000") && bad_err.contains("removed from the group"),
        "{bad_err}"
    );
    assert_eq!(fake.calls(), calls + 1, "93000 is not retried");
    let printed = cli(&["check-config"]).output().await.unwrap();
    let printed_out = String::from_utf8_lossy(&printed.stdout).to_string();
    assert!(printed_out.contains("key=****"), "{printed_out}");
    assert!(
        printed_out.contains("secret: WeCom group robots have no signing secret"),
        "{printed_out}"
    );

    // The service: one push that works, one to the removed robot, one with a wrong token.
    let mut cmd = cli(&["serve"]);
    let gw = Gateway::start(&mut cmd).await;
    let http = reqwest::Client::new();
    let notify = |bot: &str, token: &str| {
        http.post(format!("http://{}/api/v1/notify/{bot}", gw.addr))
            .bearer_auth(token)
            .json(&serde_json::json!({"subject": "disk full", "severity": "critical"}))
            .send()
    };
    assert_eq!(notify("ops", api_token).await.unwrap().status(), 202);
    assert_eq!(notify("old", api_token).await.unwrap().status(), 202);
    assert_eq!(notify("ops", "not-the-token").await.unwrap().status(), 401);
    fake.wait_for_robot(2).await;
    gw.wait_for_log(&["delivery failed", "93000"]).await;
    let log = gw.terminate().await;

    let all = [
        log,
        bad_err,
        printed_out,
        String::from_utf8_lossy(&ok.stdout).to_string(),
        String::from_utf8_lossy(&ok.stderr).to_string(),
    ]
    .join("\n");
    for secret in [
        good_key,
        removed_key,
        api_token,
        APP_A.secret,
        APP_A.token,
        APP_A.aes_key,
    ] {
        assert!(!all.contains(secret), "{secret:?} leaked:\n{all}");
    }
}
