//! What an operator sees in the real binary's log: a warning for a mistyped agent_id, log lines a
//! member cannot forge, and a stop that says what is left instead of waiting silently.

use crate::support::process::*;
use crate::support::*;
use tokio::process::Command;

fn serve(fake: &FakeWecom, dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve");
    gateway_env(&mut cmd, &fake.base_url(), dir);
    cmd
}

async fn post(gw: &Gateway, query: &str, body: String) -> u16 {
    reqwest::Client::new()
        .post(gw.callback_url(query))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_callback_for_another_agent_id_is_accepted_and_warned_about_once() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&mut serve(&fake, dir.path())).await;
    for n in 1..=2u64 {
        let e = APP_A.crypt().encrypt_msg(
            &APP_A.text_xml("zhangsan", &format!("hi {n}"), n),
            &now_secs().to_string(),
            "nonce",
            [n as u8; 16],
        );
        let query = format!(
            "msg_signature={}&timestamp={}&nonce={}",
            e.msg_signature, e.timestamp, e.nonce
        );
        // The envelope names AgentID 999; the configured app (whose token and key open it) is 1000002.
        let status = post(&gw, &query, e.to_callback_xml(APP_A.corp_id, "999")).await;
        assert_eq!(status, 200);
    }
    fake.wait_for_sends(2).await;
    let log = gw.terminate().await;
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("\"999\""))
        .collect();
    assert_eq!(warnings.len(), 1, "warned once:\n{log}");
    assert!(
        warnings[0].contains("1000002") && warnings[0].contains("agent_id"),
        "{}",
        warnings[0]
    );
}

#[tokio::test]
async fn a_user_id_with_newlines_and_escapes_cannot_forge_log_lines() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&mut serve(&fake, dir.path())).await;
    let forged = "2026-11-23T00:00:00.000000Z  INFO wecom_gateway: all good";
    let user = format!("mallory\n{forged}\u{1b}[2K\r");
    let (q, body) = APP_A.callback(&APP_A.text_xml(&user, "hi", 1));
    // Not on the allowlist: acknowledged, and the refusal is logged with the UserID.
    assert_eq!(post(&gw, &q, body).await, 200);
    gw.wait_for_log(&["not on the allowlist"]).await;
    let log = gw.terminate().await;
    assert!(
        !log.lines().any(|l| l.starts_with("2026-11-23T00:00:00")),
        "a forged line:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}') && !log.contains('\r'),
        "raw control characters:\n{log}"
    );
    assert!(
        log.contains(r"mallory\n2026-11-23"),
        "the UserID, escaped:\n{log}"
    );
}

/// Client text with a newline, a forged log line after it and a terminal escape: through the push
/// API, the robot API and the Alertmanager receiver (with a valid token), refused with 4xx, and
/// logged only escaped.
#[tokio::test]
async fn pushed_text_with_newlines_and_escapes_cannot_forge_log_lines() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "bots:\n  - name: ops\n    webhook_url: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=robot-key-ops\napi:\n  tokens: [t0ken]\n",
    )
    .unwrap();
    let mut cmd = serve(&fake, dir.path());
    cmd.arg("--config").arg(&config);
    let gw = Gateway::start(&mut cmd).await;
    let forged = |n: u32| format!("1999-12-31T23:59:5{n}.000000Z ERROR wecom_gateway: forged {n}");
    let evil = |n: u32| format!("x\n{}\u{1b}[31m\r", forged(n));
    let http = reqwest::Client::new();
    let post = |path: &str, body: String| {
        http.post(format!("http://{}/api/v1/{path}", gw.addr))
            .bearer_auth("t0ken")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let requests = [
        // The push API: a corp part that is not the app's.
        (
            "send",
            serde_json::json!({"touser": format!("{}:bob", evil(1)), "text": "hi"}),
        ),
        // The robot API: a field it does not know, and an item of a type it does not know.
        (
            "notify/ops",
            serde_json::json!({"subject": "s", evil(2): 1}),
        ),
        (
            "notify/ops",
            serde_json::json!({"messages": [{"msgtype": evil(3)}]}),
        ),
        // A robot name that is not configured, through either robot endpoint.
        (
            &*format!("notify/{}", urlencode(&evil(4))),
            serde_json::json!({"subject": "s"}),
        ),
        // The Alertmanager receiver: a field of the wrong type, and a robot it does not know.
        ("alertmanager/ops", serde_json::json!({"alerts": evil(5)})),
        (
            &*format!("alertmanager/{}", urlencode(&evil(6))),
            serde_json::json!({"alerts": [{"status": "firing"}]}),
        ),
    ];
    for (path, body) in &requests {
        let resp = post(path, body.to_string()).await.unwrap();
        let status = resp.status().as_u16();
        assert!((400..500).contains(&status), "{path}: {status}");
    }
    let log = gw.terminate().await;
    let rejected = log
        .lines()
        .filter(|l| l.contains("api request rejected"))
        .count();
    assert_eq!(rejected, requests.len(), "each refusal is logged:\n{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("1999-12-31")),
        "a forged line:\n{log}"
    );
    for n in 1..=6 {
        let escaped = format!(r"x\n{}\u{{1b}}[31m\r", forged(n));
        assert!(log.contains(&escaped), "request {n}, escaped:\n{log}");
    }
    assert!(
        !log.contains('\u{1b}') && !log.contains('\r'),
        "raw control characters:\n{log}"
    );
}

/// `text` with every byte that is not unreserved percent-encoded (for a path segment).
fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn a_stop_with_robot_messages_held_by_the_rate_limit_says_so_and_does_not_wait() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    // One robot message an hour, and a grace period longer than the test waits for the stop.
    std::fs::write(
        &config,
        "bots:\n  - name: ops\n    webhook_url: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=robot-key-ops\napi:\n  tokens: [t0ken]\nlimits:\n  bot: [1/1h]\nshutdown_grace_secs: 600\n",
    )
    .unwrap();
    let start = || {
        let mut cmd = serve(&fake, dir.path());
        cmd.arg("--config").arg(&config);
        cmd
    };
    let gw = Gateway::start(&mut start()).await;
    let http = reqwest::Client::new();
    for n in 1..=3 {
        let resp = http
            .post(format!("http://{}/api/v1/notify/ops", gw.addr))
            .bearer_auth("t0ken")
            .json(&serde_json::json!({"subject": format!("alert {n}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    fake.wait_for_robot(1).await;
    gw.wait_for_log(&["waiting for the rate window"]).await;
    // The other two wait an hour for the robot's window: the stop must not wait for them
    // (`terminate` fails if the process is not gone well within the 600 s grace period).
    let log = gw.terminate().await;
    assert!(
        log.contains("left=2") && log.contains("delivered after the next start"),
        "the log says what is left:\n{log}"
    );
    assert_eq!(fake.robot_messages().len(), 1);

    // After the restart they go out, in order.
    let gw = Gateway::start(&mut start()).await;
    let sent = fake.wait_for_robot(2).await;
    let texts: Vec<&str> = sent
        .iter()
        .map(|m| m.body["text"]["content"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(texts, vec!["[INFO] alert 1", "[INFO] alert 2"]);
    gw.kill9().await;
}

#[tokio::test]
async fn during_a_key_rotation_both_sets_verify_and_the_log_says_which() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = serve(&fake, dir.path());
    // The console still signs with the old token and key while the new ones are configured.
    cmd.env("WECOM_CALLBACK_PREVIOUS_TOKEN", APP_B.token)
        .env("WECOM_CALLBACK_PREVIOUS_ENCODING_AES_KEY", APP_B.aes_key);
    let gw = Gateway::start(&mut cmd).await;
    let old =
        wecom_gateway::crypto::MsgCrypt::new(APP_B.token, APP_B.aes_key, APP_A.corp_id).unwrap();
    let stranger =
        wecom_gateway::crypto::MsgCrypt::new("someone-else", APP_B.aes_key, APP_A.corp_id).unwrap();
    let signed = |crypt: &wecom_gateway::crypto::MsgCrypt, n: u64| {
        let xml = APP_A.text_xml("zhangsan", &format!("rotation {n}"), n);
        let e = crypt.encrypt_msg(&xml, &now_secs().to_string(), "nonce", [n as u8; 16]);
        let query = format!(
            "msg_signature={}&timestamp={}&nonce=nonce",
            e.msg_signature, e.timestamp
        );
        (query, e.to_callback_xml(APP_A.corp_id, "1000002"))
    };
    for (crypt, n, status) in [
        (&old, 1, 200),
        (&APP_A.crypt(), 2, 200),
        (&stranger, 3, 403),
    ] {
        let (query, body) = signed(crypt, n);
        assert_eq!(post(&gw, &query, body).await, status, "callback {n}");
    }
    fake.wait_for_sends(2).await;
    let text = reqwest::get(gw.metrics_url())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for set in ["previous", "current"] {
        let line =
            format!("wecom_gateway_callback_key_set_total{{app=\"default\",set=\"{set}\"}} 1");
        assert!(text.contains(&line), "no {line:?} in {text}");
    }
    let log = gw.terminate().await;
    for said in [
        "a callback verified with the previous token/key",
        "a callback verified with the new token/key",
        "previous_token: callbacks signed with the previous set are accepted too",
    ] {
        assert!(log.contains(said), "no {said:?} in {log}");
    }
}

#[tokio::test]
async fn start_up_says_what_to_paste_and_robot_only_mode_starts() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&mut serve(&fake, dir.path())).await;
    let port = gw.addr.rsplit(':').next().unwrap().to_owned();
    let log = gw.terminate().await;
    let said = format!("set the URL to http://<this server's public address>:{port}/wecom/callback (the gateway serves plain HTTP; https:// only through a TLS proxy or tunnel in front of it)");
    assert!(log.contains(&said), "no {said:?} in {log}");

    // No app at all: group robots and the push API still run.
    let config = dir.path().join("robots.yaml");
    std::fs::write(
        &config,
        "bots:\n  - name: ops\n    webhook_url: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=robot-key-1\n",
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"]).arg(&config);
    bare_env(&mut cmd, &fake.base_url(), &dir.path().join("robots"));
    cmd.env("WECOM_CALLBACK_API_TOKENS", "robots-token");
    let gw = Gateway::start(&mut cmd).await;
    let answer = reqwest::Client::new()
        .post(format!("http://{}/api/v1/notify/ops", gw.addr))
        .bearer_auth("robots-token")
        .json(&serde_json::json!({"subject": "disk full", "body": "on node-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    fake.wait_for_robot(1).await;
    let log = gw.terminate().await;
    assert!(
        log.contains("serving group robots and the push API only"),
        "{log}"
    );
}

#[tokio::test]
async fn a_port_in_use_is_one_clear_line_naming_the_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = serve(&fake, dir.path());
    cmd.env("WECOM_CALLBACK_PORT", &port);
    let out = cmd.output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        line.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(line.contains("`port` / WECOM_CALLBACK_PORT"), "{stderr}");
}

/// The error line of a gateway started with `agent: {kind: KIND}` on a port already taken.
async fn port_taken_error(agent_kind: &str) -> String {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        format!("agent:\n  kind: {agent_kind}\n  base_url: http://127.0.0.1:9/v1\n  model: m\n"),
    )
    .unwrap();
    let mut cmd = serve(&fake, &dir.path().join("data"));
    cmd.arg("--config").arg(&file);
    cmd.env("WECOM_CALLBACK_PORT", port.to_string());
    let out = cmd.output().await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        line.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    line.to_owned()
}

#[tokio::test]
async fn with_hermes_a_port_in_use_names_hermes_own_wecom_listener_and_the_env_fix() {
    let line = port_taken_error("hermes").await;
    assert!(
        line.contains("Hermes's own wecom_callback listener"),
        "{line}"
    );
    assert!(
        line.contains("WECOM_CALLBACK_CORP_ID and WECOM_CALLBACK_CORP_SECRET"),
        "{line}"
    );
    assert!(
        line.contains("move the WECOM_CALLBACK_* lines out of Hermes's .env into the gateway's own .env (or --env-file)"),
        "{line}"
    );
    assert!(line.contains("`port` / WECOM_CALLBACK_PORT"), "{line}");
    // Another agent: the plain advice, no word of Hermes.
    let line = port_taken_error("openai").await;
    assert!(line.contains("another process uses this port"), "{line}");
    assert!(!line.to_lowercase().contains("hermes"), "{line}");
}

#[tokio::test]
async fn check_config_fails_on_an_agent_that_would_fail_at_its_first_message() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("check-config")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WECOM_CALLBACK_DATA_DIR", dir.path())
            .env("WECOM_CALLBACK_CORP_ID", APP_A.corp_id)
            .env("WECOM_CALLBACK_CORP_SECRET", APP_A.secret)
            .env("WECOM_CALLBACK_AGENT_ID", "1000002")
            .env("WECOM_CALLBACK_TOKEN", APP_A.token)
            .env("WECOM_CALLBACK_ENCODING_AES_KEY", APP_A.aes_key);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = run(&[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("member: [30/1m, 1000/1h]"),
        "limits as written: {text}"
    );
    assert!(text.contains("nobody may talk to the agent"), "{text}");
    let (ok, text) = run(&[
        ("WECOM_CALLBACK_AGENT__KIND", "openai"),
        (
            "WECOM_CALLBACK_AGENT__BASE_URL",
            "https://api.openai.com/v1",
        ),
        ("WECOM_CALLBACK_AGENT__MODEL", "gpt-4o-mini"),
    ]);
    assert!(
        !ok && text.contains("agent: kind openai has no API key"),
        "{text}"
    );
    let (ok, text) = run(&[
        ("WECOM_CALLBACK_AGENT__KIND", "openai"),
        (
            "WECOM_CALLBACK_AGENT__BASE_URL",
            "http://127.0.0.1:11434/v1",
        ),
        ("WECOM_CALLBACK_AGENT__MODEL", "qwen2.5:7b"),
    ]);
    assert!(ok, "a local model needs no key: {text}");
    let script = dir.path().join("agent.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let (ok, text) = run(&[
        ("WECOM_CALLBACK_AGENT__KIND", "command"),
        ("WECOM_CALLBACK_AGENT__PROGRAM", script.to_str().unwrap()),
    ]);
    assert!(!ok && text.contains("is not executable"), "{text}");
    let (ok, text) = run(&[("WECOM_CALLBACK_ALLOWED_USER", "alice")]);
    assert!(ok, "{text}");
    assert!(
        text.contains("did you mean WECOM_CALLBACK_ALLOWED_USERS?"),
        "a misspelt variable: {text}"
    );
}

#[tokio::test]
async fn metrics_count_every_callback_result_and_ready_reports_token_trouble_as_a_warning() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&mut serve(&fake, dir.path())).await;
    gw.wait_for_log(&["metrics on http://"]).await;
    let metrics_url = gw.metrics_url();
    let http = reqwest::Client::new();
    // ok, then the same callback again (duplicate), and one from a member not on the allowlist.
    let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "counted", 1));
    assert_eq!(post(&gw, &q, body.clone()).await, 200);
    assert_eq!(post(&gw, &q, body).await, 200);
    let (q, body) = APP_A.callback(&APP_A.text_xml("stranger", "hi", 2));
    assert_eq!(post(&gw, &q, body).await, 200);
    // A signature that matches nothing; a signed ciphertext that does not decrypt; no query.
    let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "x", 3));
    let forged = q.replacen("msg_signature=", "msg_signature=0", 1);
    assert_eq!(post(&gw, &forged, body.clone()).await, 403);
    let ts = now_secs().to_string();
    let garbage = "bm90IGEgY2lwaGVydGV4dA==";
    let sig = APP_A.crypt().sign(&ts, "n", garbage);
    let envelope = format!("<xml><ToUserName><![CDATA[{}]]></ToUserName><Encrypt><![CDATA[{garbage}]]></Encrypt></xml>", APP_A.corp_id);
    let q = format!("msg_signature={sig}&timestamp={ts}&nonce=n");
    assert_eq!(post(&gw, &q, envelope).await, 400);
    assert_eq!(post(&gw, "", body).await, 400);
    // Over max_body_bytes; and a callback signed an hour ago.
    let huge = "x".repeat(70_000);
    assert_eq!(post(&gw, "a=b", huge).await, 413);
    let old = (now_secs() - 3600).to_string();
    let e = APP_A
        .crypt()
        .encrypt_msg(&APP_A.text_xml("zhangsan", "old", 4), &old, "n", [4; 16]);
    let q = format!("msg_signature={}&timestamp={old}&nonce=n", e.msg_signature);
    let replayed = e.to_callback_xml(APP_A.corp_id, "1000002");
    assert_eq!(post(&gw, &q, replayed).await, 403);
    fake.wait_for_sends(1).await;
    // Counted once WeCom's answer is back, which the log says.
    gw.wait_for_log(&["reply sent"]).await;

    let text = http
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for result in [
        "ok",
        "duplicate",
        "denied",
        "bad_signature",
        "decrypt_error",
        "malformed",
        "too_large",
        "replayed",
    ] {
        let line = format!("wecom_gateway_callbacks_total{{result=\"{result}\"}} 1\n");
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }
    for present in [
        "# TYPE wecom_gateway_ack_seconds histogram",
        "wecom_gateway_wecom_calls_total{call=\"message_send\",errcode=\"0\"} 1",
        "wecom_gateway_token_fetches_total{app=\"default\",result=\"ok\"} 1",
        "wecom_gateway_agent_seconds_count{agent=\"echo\",channel=\"app\"} 1",
        "# TYPE wecom_gateway_inbox_in_progress gauge",
    ] {
        assert!(text.contains(present), "no {present:?} in:\n{text}");
    }

    // WeCom refusing the secret is a warning in /ready, never a reason to leave the balancer.
    gw.terminate().await;
    let mut cmd = serve(&fake, dir.path());
    cmd.env("WECOM_CALLBACK_CORP_SECRET", "wrong-secret");
    let gw = Gateway::start(&mut cmd).await;
    let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "no token", 5));
    assert_eq!(post(&gw, &q, body).await, 200);
    gw.wait_for_log(&["40001"]).await;
    let ready = http
        .get(format!("http://{}/ready", gw.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    let warnings = body["warnings"].to_string();
    assert!(warnings.contains("cannot get an access token"), "{body}");
    assert!(!warnings.contains("wrong-secret"), "{body}");
    gw.terminate().await;
}

#[tokio::test]
async fn json_logs_carry_the_same_fields_one_object_per_line() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    for var in ["WECOM_CALLBACK_LOG_FORMAT", "LOG_FORMAT"] {
        let mut cmd = serve(&fake, dir.path());
        cmd.env(var, "json").env("RUST_LOG", "info");
        let gw = Gateway::start(&mut cmd).await;
        let log = gw.terminate().await;
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{var}: {e}: {l}")))
            .collect();
        let listening = lines
            .iter()
            .find(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("listening on"))
            })
            .expect("the listening line");
        assert_eq!(listening["level"], "INFO");
        assert_eq!(listening["workers"], 64, "fields as fields: {listening}");
        assert!(listening["local_addr"].is_string(), "{listening}");
    }
}

#[tokio::test]
async fn failed_lists_what_failed_and_retry_queues_it_again_beside_the_running_gateway() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&mut serve(&fake, dir.path())).await;
    fake.script([
        serde_json::json!({"errcode": 81013, "errmsg": "user & party & tag all invalid"}),
    ]);
    let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "first", 1));
    assert_eq!(post(&gw, &q, body).await, 200);
    // The member's next message is answered only once the first has been settled.
    let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "second", 2));
    assert_eq!(post(&gw, &q, body).await, 200);
    fake.wait_for_sends(1).await;
    let admin = |args: &[&str]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WECOM_CALLBACK_DATA_DIR", dir.path())
            .env("WECOM_CALLBACK_CORP_ID", APP_A.corp_id)
            .env("WECOM_CALLBACK_CORP_SECRET", APP_A.secret)
            .env("WECOM_CALLBACK_AGENT_ID", "1000002")
            .env("WECOM_CALLBACK_TOKEN", APP_A.token)
            .env("WECOM_CALLBACK_ENCODING_AES_KEY", APP_A.aes_key);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let listed = admin(&["failed"]);
    assert!(
        listed
            .contains("job-1  app=default  member=\"ww1436e0e65a779aee:zhangsan\"  errcode=81013"),
        "{listed}"
    );
    assert!(listed.contains("check: no valid recipient"), "{listed}");
    let retried = admin(&["retry", "--all-failed"]);
    assert!(retried.contains("job-1 queued again as job-3"), "{retried}");
    // The running gateway takes it up by itself and resends the recorded reply.
    let sends = fake.wait_for_sends(2).await;
    assert_eq!(sends[1].content(), "first");
    assert!(admin(&["failed"]).contains("nothing failed"));
    gw.terminate().await;
}

/// Ask the gateway to read its configuration again.
fn sighup(gw: &Gateway) {
    let pid = gw.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
}

fn app_yaml(spec: &AppSpec) -> String {
    format!(
        "  - name: {}\n    corp_id: {}\n    corp_secret: {}\n    agent_id: {}\n    token: {}\n    encoding_aes_key: {}\n",
        spec.name, spec.corp_id, spec.secret, spec.agent_id, spec.token, spec.aes_key
    )
}

#[tokio::test]
async fn sighup_adds_an_app_and_refuses_a_broken_file_keeping_the_running_one() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    let write = |apps: &[&AppSpec], tokens: &str| {
        let list: String = apps.iter().map(|a| app_yaml(a)).collect();
        let text = format!("allowed_users: [zhangsan]\napi:\n  tokens: [{tokens}]\napps:\n{list}");
        std::fs::write(&file, text).unwrap();
    };
    write(&[&APP_A], "");
    let dotenv = dir.path().join(".env");
    std::fs::write(&dotenv, "WECOM_CALLBACK_ALLOWED_USERS=zhangsan\n").unwrap();
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .args(["serve", "--config"])
        .arg(&file);
    bare_env(&mut cmd, &fake.base_url(), &dir.path().join("data"));
    let gw = Gateway::start(&mut cmd).await;
    let hup = || sighup(&gw);
    let (q, body) = APP_B.callback(&APP_B.text_xml("zhangsan", "to beta", 1));
    assert_eq!(
        post(&gw, &q, body.clone()).await,
        403,
        "beta is not configured yet"
    );

    let push = |gw: &Gateway| {
        reqwest::Client::new()
            .post(format!("http://{}/api/v1/send", gw.addr))
            .bearer_auth("reloaded-token")
            .json(&serde_json::json!({"app": "alpha", "touser": "lisi", "text": "pushed"}))
            .send()
    };
    assert_eq!(push(&gw).await.unwrap().status(), 404, "the API is off");
    write(&[&APP_A, &APP_B], "reloaded-token");
    // .env is read again too: lisi may now talk to the agent.
    std::fs::write(&dotenv, "WECOM_CALLBACK_ALLOWED_USERS=zhangsan,lisi\n").unwrap();
    hup();
    gw.wait_for_log(&["configuration reloaded", "beta"]).await;
    let (q, body) = APP_B.callback(&APP_B.text_xml("zhangsan", "to beta", 2));
    assert_eq!(post(&gw, &q, body).await, 200);
    let sends = fake.wait_for_sends(1).await;
    assert_eq!((sends[0].agentid(), sends[0].content()), (218, "to beta"));
    assert_eq!(
        push(&gw).await.unwrap().status(),
        202,
        "the API is on, with the new token"
    );
    fake.wait_for_sends(2).await;
    let (q, body) = APP_A.callback(&APP_A.text_xml("lisi", "hello from lisi", 3));
    assert_eq!(post(&gw, &q, body).await, 200);
    let sends = fake.wait_for_sends(3).await;
    assert_eq!(
        sends[2].content(),
        "hello from lisi",
        "allowed by the reloaded .env"
    );

    std::fs::write(&file, "apps:\n  - name: broken\n    corp_id: ww1\n").unwrap();
    hup();
    gw.wait_for_log(&[
        "configuration not reloaded, the running one is kept",
        "apps[0].corp_secret: is required",
    ])
    .await;
    let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "still here", 4));
    assert_eq!(post(&gw, &q, body).await, 200);
    let sends = fake.wait_for_sends(4).await;
    assert_eq!(sends[3].content(), "still here");
    gw.terminate().await;
}

/// Every setting a reload does not apply, with a value before and one after.
const RESTART_ONLY: &[(&str, &str, &str)] = &[
    ("host", "127.0.0.1", "127.0.0.2"),
    ("port", "0", "1"),
    ("path", "/wecom/callback", "/wecom/other"),
    ("store", "sqlite", "memory"),
    ("data_dir", "DATA", "DATA/other"),
    ("workers", "4", "5"),
    ("api_base_url", "API", "http://127.0.0.1:9"),
    ("metrics_listen", "127.0.0.1:0", "off"),
    ("shutdown_grace_secs", "30", "31"),
    ("http_timeout_secs", "10", "11"),
    ("max_store_mb", "0", "100"),
    ("min_free_mb", "64", "65"),
    ("lease_secs", "30", "31"),
    ("log_format", "text", "json"),
    ("queue_capacity", "1024", "1000"),
    ("max_body_bytes", "65536", "65000"),
    ("replay_window", "300", "301"),
    ("retention_days", "7", "8"),
    ("limits.member", "[30/1m]", "[31/1m]"),
    ("limits.bot", "20/1m", "21/1m"),
    ("retry.max_attempts", "8", "9"),
    ("retry.base_ms", "1000", "1001"),
    ("retry.max_ms", "60000", "60001"),
    ("media.agent_dirs", "[]", "[DATA]"),
    ("media.max_bytes", "20971520", "20971521"),
    (
        "media.public_url",
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
    ),
    ("media.inline_text_bytes", "65536", "65537"),
    ("media.url_expires_secs", "3600", "3601"),
    ("aibots", "[]", "[{name: b, bot_id: b1, secret: s}]"),
    ("aibot.ws_url", "ws://127.0.0.1:1", "ws://127.0.0.1:2"),
    ("aibot.placeholder", "a", "b"),
    ("aibot.update_ms", "500", "501"),
    ("aibot.stream_secs", "300", "301"),
];

/// The table above is the library's own list of the keys a reload does not apply: a key added
/// later as taking effect at the next start fails here until the reload test changes it too.
#[test]
fn the_reload_test_covers_every_key_a_reload_does_not_apply() {
    use wecom_gateway::config::{keys, Reload};
    let library: std::collections::BTreeSet<&str> = keys()
        .filter(|(_, reload)| *reload == Reload::Restart)
        .map(|(name, _)| name)
        .collect();
    let tested = RESTART_ONLY.iter().map(|s| s.0).collect();
    assert_eq!(library, tested);
}

#[tokio::test]
async fn a_reload_names_every_setting_it_does_not_apply() {
    let fake = FakeWecom::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    let data = dir.path().join("data").display().to_string();
    let write = |pick: fn(&(&str, &str, &str)) -> String| {
        // Dotted keys (`retry.base_ms`) go under their section, one mapping per section.
        let mut sections = std::collections::BTreeMap::<&str, String>::new();
        for s in RESTART_ONLY {
            let value = pick(s)
                .replace("DATA", &data)
                .replace("API", &fake.base_url());
            let (section, key) = s.0.split_once('.').unwrap_or(("", s.0));
            let indent = if section.is_empty() { "" } else { "  " };
            let lines = sections.entry(section).or_default();
            lines.push_str(&format!("{indent}{key}: {value}\n"));
        }
        let settings: String = sections
            .iter()
            .map(|(section, lines)| match *section {
                "" => lines.clone(),
                section => format!("{section}:\n{lines}"),
            })
            .collect();
        let text = format!(
            "{settings}allowed_users: [zhangsan]\napps:\n{}",
            app_yaml(&APP_A)
        );
        std::fs::write(&file, text).unwrap();
    };
    write(|s| s.1.to_owned());
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .args(["serve", "--config"])
        .arg(&file)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "debug");
    let gw = Gateway::start(&mut cmd).await;
    write(|s| s.2.to_owned());
    sighup(&gw);
    gw.wait_for_log(&["configuration reloaded"]).await;
    for (key, _, _) in RESTART_ONLY {
        gw.wait_for_log(&[&format!("{key} changed: it takes effect at the next start")])
            .await;
    }
    // And the running gateway still answers where it started.
    let (q, body) = APP_A.callback(&APP_A.text_xml("zhangsan", "still here", 1));
    assert_eq!(post(&gw, &q, body).await, 200);
    fake.wait_for_sends(1).await;
    gw.terminate().await;
}
