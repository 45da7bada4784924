//! Configuration loading: defaults < config.yaml < environment, the nested legacy layout, every
//! error at once with its field, and secrets kept out of Debug and printed config.

use std::io::Write as _;
use std::time::Duration;

use wecom_gateway::config::{AgentKind, Config};

const KEY_A: &str = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt";
const KEY_B: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn single_app_env() -> Vec<(String, String)> {
    env(&[
        ("WECOM_CALLBACK_CORP_ID", "wx5823bf96d3bd56c7"),
        ("WECOM_CALLBACK_CORP_SECRET", "s3cr3t-corp-value"),
        ("WECOM_CALLBACK_AGENT_ID", "218"),
        ("WECOM_CALLBACK_TOKEN", "QDG6eK"),
        ("WECOM_CALLBACK_ENCODING_AES_KEY", KEY_B),
        ("UNRELATED", "ignored"),
    ])
}

fn yaml(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn environment_alone_is_enough_and_defaults_apply() {
    let (c, loaded) = Config::load(None, single_app_env()).unwrap();
    assert!(loaded.config_file.is_none());
    assert_eq!(c.host.to_string(), "0.0.0.0");
    assert_eq!(c.port, 8645);
    assert_eq!(c.path, "/wecom/callback");
    assert_eq!(c.api_base_url, "https://qyapi.weixin.qq.com");
    assert_eq!(c.apps.len(), 1);
    let app = &c.apps[0];
    // Legacy wx corp id and a six-character token are what WeCom's own vectors use: valid.
    assert_eq!(
        (app.name.as_str(), app.corp_id.as_str(), app.agent_id),
        ("default", "wx5823bf96d3bd56c7", 218)
    );
    assert_eq!(app.token(), "QDG6eK");
    assert!(!c.allowlist.allow_all);
    assert!(
        !c.allowlist.allows("wx5823bf96d3bd56c7", "anyone"),
        "deny by default"
    );
}

#[test]
fn every_documented_env_var_is_read() {
    let mut e = single_app_env();
    e.extend(env(&[
        ("WECOM_CALLBACK_HOST", "127.0.0.1"),
        ("WECOM_CALLBACK_PORT", "9000"),
        ("WECOM_CALLBACK_PATH", "/hook"),
        (
            "WECOM_CALLBACK_ALLOWED_USERS",
            "alice, wx5823bf96d3bd56c7:Bob ,",
        ),
        ("WECOM_CALLBACK_ALLOW_ALL_USERS", "false"),
        ("WECOM_CALLBACK_API_BASE_URL", "http://127.0.0.1:1234/"),
        ("WECOM_CALLBACK_TOKEN", "0123"),
    ]));
    let (c, _) = Config::load(None, e).unwrap();
    assert_eq!(c.host.to_string(), "127.0.0.1");
    assert_eq!(c.port, 9000);
    assert_eq!(c.path, "/hook");
    assert_eq!(c.api_base_url, "http://127.0.0.1:1234");
    assert_eq!(c.allowlist.users, vec!["alice", "wx5823bf96d3bd56c7:Bob"]);
    assert!(
        c.allowlist.allows("anycorp", "ALICE"),
        "user ids compare case-insensitively"
    );
    assert!(c.allowlist.allows("wx5823bf96d3bd56c7", "bob"));
    assert!(!c.allowlist.allows("othercorp", "bob"), "corp-scoped entry");
    assert_eq!(
        c.apps[0].token(),
        "0123",
        "an env value stays text: the leading zero survives"
    );
}

#[test]
fn yaml_apps_list_and_env_overrides() {
    let f = yaml(&format!(
        "port: 7000\nallow_all_users: true\napps:\n  - name: sales\n    corp_id: ww1436e0e65a779aee\n    corp_secret: one\n    agent_id: 1000002\n    token: hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo\n    encoding_aes_key: {KEY_A}\n  - name: ops\n    corp_id: wx5823bf96d3bd56c7\n    corp_secret: two\n    agent_id: '218'\n    token: 123456\n    encoding_aes_key: {KEY_B}\n"
    ));
    let (c, loaded) =
        Config::load(Some(f.path()), env(&[("WECOM_CALLBACK_PORT", "7001")])).unwrap();
    assert_eq!(loaded.config_file.as_deref(), Some(f.path()));
    assert_eq!(c.port, 7001, "environment beats the file");
    assert!(c.allowlist.allow_all);
    let names: Vec<&str> = c.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, vec!["sales", "ops"]);
    assert_eq!(c.apps[1].agent_id, 218);
    assert_eq!(
        c.apps[1].token(),
        "123456",
        "a numeric YAML token is read as text"
    );
}

#[test]
fn config_path_from_env_and_apps_win_over_single_app_keys() {
    let f = yaml(&format!(
        "apps:\n  - name: only\n    corp_id: ww1\n    corp_secret: x\n    agent_id: 1\n    token: t\n    encoding_aes_key: {KEY_A}\n"
    ));
    let mut e = single_app_env();
    e.push((
        "WECOM_CALLBACK_CONFIG".into(),
        f.path().display().to_string(),
    ));
    let (c, loaded) = Config::load(None, e).unwrap();
    assert_eq!(c.apps.len(), 1);
    assert_eq!(c.apps[0].name, "only");
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("single-app keys")),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn nested_platforms_layout_is_accepted() {
    let f = yaml(&format!(
        "platforms:\n  wecom_callback:\n    enabled: true\n    extra:\n      corp_id: ww1436e0e65a779aee\n      corp_secret: nested-secret\n      agent_id: 1000002\n      token: tok\n      encoding_aes_key: {KEY_A}\n      port: 8700\n      allowed_users: [alice, bob]\n"
    ));
    let (c, _) = Config::load(Some(f.path()), Vec::new()).unwrap();
    assert_eq!(c.port, 8700);
    assert_eq!(c.apps[0].corp_id, "ww1436e0e65a779aee");
    assert_eq!(c.allowlist.users, vec!["alice", "bob"]);
}

#[test]
fn every_problem_is_reported_at_once_naming_the_field() {
    let f = yaml(&format!(
        "port: 99999\nhost: example\npath: nope\napi_base_url: ftp://x\nallow_all_users: maybe\napps:\n  - name: a\n    corp_id: ww1\n    corp_secret: x\n    agent_id: abc\n    token: t\n    encoding_aes_key: {KEY_A}\n  - name: a\n    corp_id: ww2\n    corp_secret: ''\n    agent_id: 2\n    token: t\n    encoding_aes_key: {}\n  - corp_id: ww3\n    corp_secret: x\n    agent_id: 3\n    encoding_aes_key: 'has spaces and is the right length of 43 ch'\n",
        &KEY_A[..42]
    ));
    let err = Config::load(Some(f.path()), Vec::new()).unwrap_err();
    let text = err.to_string();
    for expected in [
        "port: must be a whole number from 0 to 65535, got \"99999\"",
        "host: must be an IP address",
        "path: must start with /",
        "api_base_url: must be an http:// or https:// URL",
        "allow_all_users: must be true or false",
        "apps[0].agent_id: must be the numeric AgentId, got \"abc\"",
        "apps[1].corp_secret: must not be empty",
        "apps[1].encoding_aes_key: must be 43 characters, got 42",
        "apps[2].name: is required",
        "apps[2].token: is required",
        "apps[2].encoding_aes_key: must contain only the characters A-Z, a-z and 0-9",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(err.0.len() >= 11, "{text}");
}

#[test]
fn duplicate_names_and_apps_are_errors() {
    let app = |name: &str| {
        format!("  - name: {name}\n    corp_id: ww1\n    corp_secret: x\n    agent_id: 5\n    token: t\n    encoding_aes_key: {KEY_A}\n")
    };
    let f = yaml(&format!("apps:\n{}{}", app("same"), app("same")));
    let text = Config::load(Some(f.path()), Vec::new())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("apps[1].name: \"same\" is already used by apps[0]"),
        "{text}"
    );
    assert!(
        text.contains("apps[1].agent_id: corp ww1 agent 5 is already configured as apps[0]"),
        "{text}"
    );
}

#[test]
fn no_app_at_all_explains_what_to_set() {
    let text = Config::load(None, Vec::new()).unwrap_err().to_string();
    assert!(text.contains("WECOM_CALLBACK_CORP_ID"), "{text}");
}

#[test]
fn missing_file_and_bad_yaml_are_clear_errors() {
    let text = Config::load(
        Some(std::path::Path::new("/nonexistent/config.yaml")),
        Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(text.contains("/nonexistent/config.yaml"), "{text}");
    let f = yaml("port: [unclosed\n");
    let text = Config::load(Some(f.path()), Vec::new())
        .unwrap_err()
        .to_string();
    assert!(text.contains(&f.path().display().to_string()), "{text}");
}

#[test]
fn unknown_keys_are_warned_about() {
    let mut e = single_app_env();
    e.push(("WECOM_CALLBACK_PROT".into(), "1".into()));
    let (_, loaded) = Config::load(None, e).unwrap();
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("prot: unknown key")),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn secrets_never_show_in_debug_or_printed_config() {
    let (c, _) = Config::load(None, single_app_env()).unwrap();
    let debug = format!("{c:?}");
    let printed = c.redacted();
    for secret in ["s3cr3t-corp-value", "QDG6eK", KEY_B] {
        assert!(!debug.contains(secret), "Debug leaks {secret}: {debug}");
        assert!(
            !printed.contains(secret),
            "printed config leaks {secret}: {printed}"
        );
    }
    assert!(
        printed.contains("wx5823bf96d3bd56c7"),
        "non-secret fields are shown"
    );
    // A command agent's environment values (an API key for the script) stay hidden too.
    let mut env = single_app_env();
    env.push(("WECOM_CALLBACK_AGENT__KIND".into(), "command".into()));
    env.push(("WECOM_CALLBACK_AGENT__PROGRAM".into(), "/bin/cat".into()));
    env.push((
        "WECOM_CALLBACK_AGENT__ENV__SCRIPT_KEY".into(),
        "sk-script-secret".into(),
    ));
    let (with_agent, _) = Config::load(None, env).unwrap();
    let debug = format!("{with_agent:?}");
    assert!(
        debug.contains("script_key") && !debug.contains("sk-script-secret"),
        "{debug}"
    );
    let app = wecom_gateway::app::App::new(c.apps[0].clone(), None).unwrap();
    let debug = format!("{app:?}");
    for secret in ["s3cr3t-corp-value", "QDG6eK", KEY_B] {
        assert!(!debug.contains(secret), "App Debug leaks {secret}: {debug}");
    }
}

#[test]
fn robots_api_tokens_limits_and_retry() {
    let f = yaml(
        "bots:\n  - name: ops\n    webhook_url: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k-123\n    secret: SECxyz\nlimits:\n  bot: 5/10s\n  member: [10/1m, 100/1h]\nretry:\n  max_attempts: 3\n  base_ms: 50\n",
    );
    let mut e = single_app_env();
    e.push(("WECOM_CALLBACK_API_TOKENS".into(), "tok-a, tok-b".into()));
    let (c, loaded) = Config::load(Some(f.path()), e).unwrap();
    assert_eq!(c.bots.len(), 1);
    assert_eq!(c.bots[0].key(), "k-123");
    assert_eq!(c.api_tokens.len(), 2);
    assert_eq!(c.bot_limits.len(), 1);
    assert_eq!(c.bot_limits[0].window, std::time::Duration::from_secs(10));
    assert_eq!(c.member_limits.len(), 2);
    assert_eq!(c.retry.max_attempts, 3);
    assert!(
        loaded.warnings.iter().any(|w| w.contains("bots[0].secret")),
        "{:?}",
        loaded.warnings
    );
    let shown = format!("{}{c:?}", c.redacted());
    assert!(
        !shown.contains("k-123") && !shown.contains("tok-a"),
        "{shown}"
    );
    // Defaults are WeCom's own limits.
    let (d, _) = Config::load(None, single_app_env()).unwrap();
    assert_eq!(
        (
            d.member_limits[0].count,
            d.member_limits[1].count,
            d.bot_limits[0].count
        ),
        (30, 1000, 20)
    );
    assert!(d.api_tokens.is_empty());
}

#[test]
fn api_tokens_may_carry_the_broadcast_scope_and_agents_ack_recall() {
    let f = yaml(concat!(
        "api:\n  tokens:\n    - plain-token\n    - {token: wide-token, scopes: [broadcast]}\n",
        "agent:\n  ack_after: 2\n  ack_recall: true\n",
    ));
    let (c, _) = Config::load(Some(f.path()), single_app_env()).unwrap();
    let scopes: Vec<bool> = c.api_tokens.iter().map(|t| t.broadcast).collect();
    assert_eq!(scopes, vec![false, true]);
    assert!(c.agent.ack_recall);
    let shown = format!("{}{c:?}", c.redacted());
    assert!(
        shown.contains("tokens: 2 configured, 1 with scope broadcast"),
        "{shown}"
    );
    assert!(
        !shown.contains("wide-token") && !shown.contains("plain-token"),
        "{shown}"
    );

    let f = yaml("api:\n  tokens:\n    - {token: t, scopes: [everything], scope: x}\n    - {scopes: [broadcast]}\n    - [nested]\n");
    let text = Config::load(Some(f.path()), single_app_env())
        .unwrap_err()
        .to_string();
    for expected in [
        "api.tokens[0].scopes[0]: must be broadcast, the only scope, got \"everything\"",
        "api.tokens[1].token: is required",
        "api.tokens[2]: expected a text value, got a list",
        "warning: api.tokens[0].scope: unknown key, ignored",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn a_previous_token_and_key_are_kept_for_a_rotation_and_checked() {
    let mut e = single_app_env();
    e.extend(env(&[
        ("WECOM_CALLBACK_PREVIOUS_TOKEN", "OLDTOKEN"),
        (
            "WECOM_CALLBACK_PREVIOUS_ENCODING_AES_KEY",
            "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C",
        ),
    ]));
    let (c, loaded) = Config::load(None, e).unwrap();
    assert!(c.apps[0].previous_token.is_some() && c.apps[0].previous_encoding_aes_key.is_some());
    assert!(
        loaded.warnings.iter().any(|w| w.contains("remove previous_token and previous_encoding_aes_key once the admin console uses the new values")),
        "{:?}",
        loaded.warnings
    );
    let shown = format!("{}{:?}", c.redacted(), c.apps[0]);
    assert!(
        shown.contains("previous_encoding_aes_key: '****'"),
        "{shown}"
    );
    assert!(
        !shown.contains("OLDTOKEN") && !shown.contains("jWmYm7qr5n"),
        "{shown}"
    );

    let mut e = single_app_env();
    e.push((
        "WECOM_CALLBACK_PREVIOUS_ENCODING_AES_KEY".into(),
        "short".into(),
    ));
    let text = Config::load(None, e).unwrap_err().to_string();
    assert!(
        text.contains("previous_encoding_aes_key: must be 43 characters, got 5 (from WECOM_CALLBACK_PREVIOUS_ENCODING_AES_KEY)"),
        "{text}"
    );
}

#[test]
fn hermes_drop_in_allowlists_name_and_agent_defaults() {
    let load = |extra: &[(&str, &str)]| {
        let mut e = single_app_env();
        e.retain(|(k, _)| !k.contains("ALLOW"));
        e.extend(env(extra));
        Config::load(None, e).unwrap().0
    };
    let c = load(&[("WECOM_CALLBACK_ALLOWED_USERS", "*")]);
    assert!(
        c.allowlist.allow_all && c.allowlist.users.is_empty(),
        "* is everyone"
    );
    let c = load(&[("GATEWAY_ALLOWED_USERS", "alice, bob")]);
    assert_eq!(
        c.allowlist.users,
        vec!["alice", "bob"],
        "Hermes's gateway-wide fallback"
    );
    let c = load(&[("GATEWAY_ALLOW_ALL_USERS", "true")]);
    assert!(c.allowlist.allow_all);
    let c = load(&[
        ("WECOM_CALLBACK_ALLOWED_USERS", "carol"),
        ("GATEWAY_ALLOWED_USERS", "alice"),
    ]);
    assert_eq!(
        c.allowlist.users,
        vec!["carol"],
        "the gateway's own key wins"
    );
    assert_eq!(c.workers, 64, "agent calls wait on the network");
    assert_eq!(c.apps[0].name, "default");
    let c = load(&[("WECOM_CALLBACK_NAME", "hermes-wecom")]);
    assert_eq!(c.apps[0].name, "hermes-wecom", "a single app's extra.name");

    let c = load(&[
        ("WECOM_CALLBACK_AGENT__KIND", "hermes"),
        ("API_SERVER_KEY", "k"),
    ]);
    let AgentKind::Hermes(hermes) = &c.agent.kind else {
        panic!("a hermes agent")
    };
    assert_eq!(hermes.base_url, "http://127.0.0.1:8642/v1");
    assert_eq!(
        hermes.timeout,
        Duration::from_secs(1800),
        "Hermes turns take minutes"
    );
    assert!(hermes.api_key.is_some(), "from API_SERVER_KEY");
    assert_eq!(c.agent.ack_after, Some(Duration::from_secs(10)));
    let c = load(&[
        ("WECOM_CALLBACK_AGENT__KIND", "hermes"),
        ("WECOM_CALLBACK_AGENT__ACK_AFTER", "0"),
    ]);
    assert_eq!(c.agent.ack_after, None, "0 turns the receipt off");

    let mut e = single_app_env();
    e.push(("GATEWAY_ALLOW_ALL_USERS".into(), "perhaps".into()));
    let text = Config::load(None, e).unwrap_err().to_string();
    assert!(
        text.contains("GATEWAY_ALLOW_ALL_USERS: must be true or false"),
        "{text}"
    );
}

#[test]
fn bad_robot_urls_and_limits_are_named_without_echoing_the_url() {
    let f = yaml(
        "bots:\n  - name: a\n    webhook_url: https://example.com/hook?token=SECRETX\n  - webhook_url: nonsense-SECRETY\nlimits:\n  bot: 20 per minute\n",
    );
    let text = Config::load(Some(f.path()), single_app_env())
        .unwrap_err()
        .to_string();
    assert!(text.contains("bots[0].webhook_url: has no key="), "{text}");
    assert!(text.contains("bots[1].name: is required"), "{text}");
    assert!(
        text.contains("bots[1].webhook_url: must be the robot's webhook URL"),
        "{text}"
    );
    assert!(
        text.contains("limits.bot[0]: expected COUNT/DURATION"),
        "{text}"
    );
    assert!(
        !text.contains("SECRETX") && !text.contains("SECRETY"),
        "{text}"
    );
}

#[test]
fn agent_sections_per_kind_and_per_app() {
    use wecom_gateway::config::AgentKind;
    let f = yaml(&format!(
        "agent:\n  kind: openai\n  base_url: http://localhost:11434/v1/\n  model: qwen2.5:7b\n  api_key_env: MY_LLM_KEY\n  temperature: 0.3\n  ack_after: 2.5\n  ack_message: 稍等\napps:\n  - name: a\n    corp_id: ww1\n    corp_secret: x\n    agent_id: 1\n    token: t\n    encoding_aes_key: {KEY_A}\n  - name: b\n    corp_id: ww1\n    corp_secret: x\n    agent_id: 2\n    token: t\n    encoding_aes_key: {KEY_A}\n    agent:\n      kind: http\n      url: http://127.0.0.1:9000/chat\n      headers:\n        Authorization: Bearer hdr-secret-1\n"
    ));
    let e = vec![("MY_LLM_KEY".to_string(), "llm-secret-2".to_string())];
    let (c, _) = Config::load(Some(f.path()), e).unwrap();
    let AgentKind::Openai(o) = &c.agent.kind else {
        panic!("openai expected")
    };
    assert_eq!(o.base_url, "http://localhost:11434/v1");
    assert_eq!(o.model, "qwen2.5:7b");
    assert!(o.api_key.is_some());
    assert_eq!(
        c.agent.ack_after,
        Some(std::time::Duration::from_millis(2500))
    );
    assert!(c.apps[0].agent.is_none());
    let b = c.apps[1].agent.as_ref().expect("app b's own agent");
    assert!(matches!(b.kind, AgentKind::Http(_)));
    assert_eq!(
        b.ack_message, "稍等",
        "chat settings are inherited from the agent: section"
    );
    let shown = format!("{}{c:?}", c.redacted());
    assert!(
        !shown.contains("hdr-secret-1") && !shown.contains("llm-secret-2"),
        "{shown}"
    );
    assert!(
        shown.contains("kind: openai") && shown.contains("kind: http"),
        "{shown}"
    );
}

#[test]
fn agent_errors_name_their_fields() {
    let f = yaml("agent:\n  kind: openai\n  api_key_env: NOT_SET_ANYWHERE\n  temperature: hot\n");
    let text = Config::load(Some(f.path()), single_app_env())
        .unwrap_err()
        .to_string();
    for expected in [
        "agent.base_url: is required",
        "agent.model: is required",
        "agent.api_key_env: the environment variable NOT_SET_ANYWHERE is not set",
        "agent.temperature: must be a number from 0 to 2",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }
    let f = yaml("agent:\n  kind: telepathy\n");
    let text = Config::load(Some(f.path()), single_app_env())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("agent.kind: must be echo, http, command, openai or hermes"),
        "{text}"
    );
    let f = yaml("agent:\n  kind: command\n  timeout_secs: 0\n");
    let text = Config::load(Some(f.path()), single_app_env())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("agent.program: is required") && text.contains("agent.timeout_secs"),
        "{text}"
    );
    let mut e = single_app_env();
    e.push(("WECOM_CALLBACK_AGENT__KIND".into(), "http".into()));
    e.push((
        "WECOM_CALLBACK_AGENT__URL".into(),
        "http://127.0.0.1:1/x".into(),
    ));
    let (c, _) = Config::load(None, e).unwrap();
    assert!(
        matches!(c.agent.kind, wecom_gateway::config::AgentKind::Http(_)),
        "nested env keys"
    );
}

/// `check-config` output, every line of it: scripts and the README rely on its shape.
#[test]
fn printed_config_format_is_stable() {
    let f = yaml(&format!(
        "allowed_users: [alice]\nbots:\n  - name: ops\n    webhook_url: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k-1\napi:\n  tokens: [t1]\nlimits:\n  bot: 5/10s\nagent:\n  kind: command\n  program: /bin/cat\n  args: [-u]\n  env:\n    A: b\n  working_dir: /tmp\n  ack_after: 1.5\napps:\n  - name: a\n    corp_id: ww1\n    corp_secret: x\n    agent_id: 1\n    token: t\n    encoding_aes_key: {KEY_A}\n    agent:\n      kind: http\n      url: http://127.0.0.1:9/x\n      headers:\n        X-Key: v\n  - name: b\n    corp_id: ww1\n    corp_secret: x\n    agent_id: 2\n    token: t\n    encoding_aes_key: {KEY_A}\n    agent:\n      kind: openai\n      base_url: http://127.0.0.1:9/v1\n      model: m\n  - name: c\n    corp_id: ww1\n    corp_secret: x\n    agent_id: 3\n    token: t\n    encoding_aes_key: {KEY_A}\n    agent:\n      delay_ms: 5\n"
    ));
    let (c, _) = Config::load(Some(f.path()), Vec::new()).unwrap();
    assert_eq!(
        c.redacted(),
        concat!(
            "host: 0.0.0.0\n",
            "port: 8645\n",
            "path: /wecom/callback\n",
            "metrics_listen: 127.0.0.1:9645\n",
            "log_format: text\n",
            "api_base_url: https://qyapi.weixin.qq.com\n",
            "allow_all_users: false\n",
            "allowed_users: [\"alice\"]\n",
            "workers: 64\n",
            "queue_capacity: 1024\n",
            "max_body_bytes: 65536\n",
            "shutdown_grace_secs: 30\n",
            "replay_window: 300\n",
            "http_timeout_secs: 10\n",
            "store: sqlite\n",
            "data_dir: ./data\n",
            "retention_days: 7\n",
            "max_store_mb: 0\n",
            "min_free_mb: 64\n",
            "lease_secs: 30\n",
            "agent:\n",
            "  kind: command\n",
            "  program: /bin/cat\n",
            "  args: [\"-u\"]\n",
            "  timeout_secs: 120\n",
            "  env: [\"A\"] (values hidden)\n",
            "  working_dir: /tmp\n",
            "  ack_after: 1.5\n",
            "  events: [\"template_card_event\"]\n",
            "api:\n",
            "  tokens: 1 configured\n",
            "limits:\n",
            "  member: [30/1m, 1000/1h]\n",
            "  bot: [5/10s]\n",
            "retry:\n",
            "  max_attempts: 8\n",
            "  base_ms: 1000\n",
            "  max_ms: 60000\n",
            "media:\n",
            "  agent_dirs: []\n",
            "  max_bytes: 20971520\n",
            "  public_url: (the listener)\n",
            "  inline_text_bytes: 65536\n",
            "  url_expires_secs: 3600\n",
            "bots:\n",
            "  - name: ops\n",
            "    webhook_url: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=****\n",
            "apps:\n",
            "  - name: a\n",
            "    corp_id: ww1\n",
            "    agent_id: 1\n",
            "    corp_secret: '****'\n",
            "    token: '****'\n",
            "    encoding_aes_key: '****'\n",
            "    agent:\n",
            "      kind: http\n",
            "      url: http://127.0.0.1:9/x\n",
            "      timeout_secs: 120\n",
            "      retries: 2\n",
            "      headers.X-Key: '****'\n",
            "      ack_after: 1.5\n",
            "      events: [\"template_card_event\"]\n",
            "  - name: b\n",
            "    corp_id: ww1\n",
            "    agent_id: 2\n",
            "    corp_secret: '****'\n",
            "    token: '****'\n",
            "    encoding_aes_key: '****'\n",
            "    agent:\n",
            "      kind: openai\n",
            "      base_url: http://127.0.0.1:9/v1\n",
            "      model: m\n",
            "      api_key: none\n",
            "      timeout_secs: 120\n",
            "      history_turns: 10\n",
            "      history_chars: 16000\n",
            "      vision: false\n",
            "      ack_after: 1.5\n",
            "      events: [\"template_card_event\"]\n",
            "  - name: c\n",
            "    corp_id: ww1\n",
            "    agent_id: 3\n",
            "    corp_secret: '****'\n",
            "    token: '****'\n",
            "    encoding_aes_key: '****'\n",
            "    agent:\n",
            "      kind: echo\n",
            "      delay_ms: 5\n",
            "      ack_after: 1.5\n",
            "      events: [\"template_card_event\"]\n",
            "aibots: []\n",
            "aibot:\n",
            "  ws_url: wss://openws.work.weixin.qq.com\n",
            "  placeholder: \"思考中…\"\n",
            "  update_ms: 500\n",
            "  stream_secs: 300\n",
        )
    );
    let (d, _) = Config::load(None, single_app_env()).unwrap();
    assert_eq!(
        d.redacted(),
        concat!(
            "host: 0.0.0.0\n",
            "port: 8645\n",
            "path: /wecom/callback\n",
            "metrics_listen: 127.0.0.1:9645\n",
            "log_format: text\n",
            "api_base_url: https://qyapi.weixin.qq.com\n",
            "allow_all_users: false\n",
            "allowed_users: []\n",
            "workers: 64\n",
            "queue_capacity: 1024\n",
            "max_body_bytes: 65536\n",
            "shutdown_grace_secs: 30\n",
            "replay_window: 300\n",
            "http_timeout_secs: 10\n",
            "store: sqlite\n",
            "data_dir: ./data\n",
            "retention_days: 7\n",
            "max_store_mb: 0\n",
            "min_free_mb: 64\n",
            "lease_secs: 30\n",
            "agent:\n",
            "  kind: echo\n",
            "  delay_ms: 0\n",
            "  ack_after: off\n",
            "  events: [\"template_card_event\"]\n",
            "api:\n",
            "  tokens: 0 configured (the /api endpoints are off)\n",
            "limits:\n",
            "  member: [30/1m, 1000/1h]\n",
            "  bot: [20/1m]\n",
            "retry:\n",
            "  max_attempts: 8\n",
            "  base_ms: 1000\n",
            "  max_ms: 60000\n",
            "media:\n",
            "  agent_dirs: []\n",
            "  max_bytes: 20971520\n",
            "  public_url: (the listener)\n",
            "  inline_text_bytes: 65536\n",
            "  url_expires_secs: 3600\n",
            "bots:\n",
            "apps:\n",
            "  - name: default\n",
            "    corp_id: wx5823bf96d3bd56c7\n",
            "    agent_id: 218\n",
            "    corp_secret: '****'\n",
            "    token: '****'\n",
            "    encoding_aes_key: '****'\n",
            "aibots: []\n",
            "aibot:\n",
            "  ws_url: wss://openws.work.weixin.qq.com\n",
            "  placeholder: \"思考中…\"\n",
            "  update_ms: 500\n",
            "  stream_secs: 300\n",
        )
    );
}

#[test]
fn errors_from_the_environment_name_the_variable() {
    let mut e = single_app_env();
    e.extend(env(&[
        ("WECOM_CALLBACK_PORT", "abc"),
        ("WECOM_CALLBACK_AGENT__KIND", "http"),
        ("WECOM_CALLBACK_AGENT__URL", "http://127.0.0.1:1/x"),
        ("WECOM_CALLBACK_AGENT__TIMEOUT_SECS", "0"),
        ("WECOM_CALLBACK_LIMITS__BOT", "20/1m, 20 a minute"),
        ("WECOM_CALLBACK_ALLOWED_USERS", "alice, :bob"),
    ]));
    // The same mistake in the file names only the field.
    let f = yaml("workers: 0\n");
    let text = Config::load(Some(f.path()), e).unwrap_err().to_string();
    for expected in [
        "port: must be a whole number from 0 to 65535, got \"abc\" (from WECOM_CALLBACK_PORT)",
        "agent.timeout_secs: must be a whole number from 1 to 86400, got \"0\" (from WECOM_CALLBACK_AGENT__TIMEOUT_SECS)",
        "limits.bot[1]: expected COUNT/DURATION such as 20/1m, got \"20 a minute\" (from WECOM_CALLBACK_LIMITS__BOT)",
        "allowed_users[1]: must be user or corp_id:user, got \":bob\" (from WECOM_CALLBACK_ALLOWED_USERS)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let workers = text.lines().find(|l| l.contains("workers:")).unwrap();
    assert!(!workers.contains("WECOM_CALLBACK"), "{workers}");
}

#[test]
fn warnings_are_shown_with_the_errors() {
    let f = yaml("prot: 9000\nagent:\n  kind: http\n  foo: 1\n");
    let err = Config::load(Some(f.path()), single_app_env()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("agent.url: is required"), "{text}");
    for warning in [
        "warning: prot: unknown key, ignored; did you mean port?",
        "warning: agent.foo: unknown key, ignored",
    ] {
        assert!(
            err.0.iter().any(|l| l == warning),
            "missing {warning:?} in:\n{text}"
        );
    }
}

#[test]
fn environment_beats_the_nested_layout_and_stays_text() {
    let f = yaml(&format!(
        "platforms:\n  wecom_callback:\n    extra:\n      corp_id: ww1\n      corp_secret: s\n      agent_id: 7\n      token: from-file\n      encoding_aes_key: {KEY_A}\n      port: 8700\n"
    ));
    let e = env(&[
        ("WECOM_CALLBACK_PORT", "8701"),
        ("WECOM_CALLBACK_TOKEN", "000123"),
        ("WECOM_CALLBACK_AGENT_ID", "0218"),
        ("WECOM_CALLBACK_ALLOWED_USERS", "zhangsan"),
    ]);
    let (c, loaded) = Config::load(Some(f.path()), e).unwrap();
    assert_eq!(c.port, 8701);
    assert_eq!(c.apps[0].token(), "000123");
    assert_eq!(c.apps[0].agent_id, 218);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn wrong_shapes_are_named_without_echoing_values() {
    let f = yaml(
        "agent: http\nbots: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=SECRETZ\napi: [x]\nretry:\n  max_attempts: [1, 2]\nlimits:\n  bot: 1/99999999999999999h\napps:\n  - just-a-name\n",
    );
    let text = Config::load(Some(f.path()), Vec::new())
        .unwrap_err()
        .to_string();
    for expected in [
        "agent: must be a mapping such as {kind: echo}, got a text value",
        "bots: must be a list, got a text value",
        "api: must be a mapping, got a list",
        "retry.max_attempts: expected a text value, got a list",
        "limits.bot[0]: duration is too long",
        "apps[0]: must be a mapping, got a text value",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("SECRETZ"), "{text}");
}

#[test]
fn media_agent_dirs_from_the_file_or_the_environment() {
    let f = yaml("media:\n  agent_dirs: [/srv/agent/out, /tmp/x]\n  agentdirs: 1\n");
    let (c, loaded) = Config::load(Some(f.path()), single_app_env()).unwrap();
    let dirs = |c: &Config| c.media.agent_dirs.clone();
    assert_eq!(
        dirs(&c),
        vec![
            std::path::PathBuf::from("/srv/agent/out"),
            std::path::PathBuf::from("/tmp/x")
        ]
    );
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("media.agentdirs: unknown key")),
        "{:?}",
        loaded.warnings
    );
    let mut e = single_app_env();
    e.push(("WECOM_CALLBACK_MEDIA__AGENT_DIRS".into(), "/a, /b".into()));
    let (c, _) = Config::load(None, e).unwrap();
    assert_eq!(dirs(&c), vec![std::path::PathBuf::from("/a"), "/b".into()]);
    let (c, _) = Config::load(None, single_app_env()).unwrap();
    assert!(dirs(&c).is_empty(), "no directory by default");
}

#[test]
fn media_limits_links_and_vision() {
    let (c, _) = Config::load(None, single_app_env()).unwrap();
    assert_eq!(c.media.max_bytes, 20 << 20, "WeCom's own file limit");
    assert_eq!(c.media.public_url, None, "the listener's address");
    assert_eq!(c.media.inline_text_bytes, 64 << 10);
    assert_eq!(c.media.url_expires, Duration::from_secs(3600));
    let f = yaml(concat!(
        "media:\n  max_bytes: 1048576\n  public_url: https://gw.example.com/\n",
        "  inline_text_bytes: 0\n  url_expires_secs: 600\n",
        "agent:\n  kind: openai\n  base_url: http://127.0.0.1:9/v1\n  model: m\n  vision: true\n",
    ));
    let (c, _) = Config::load(Some(f.path()), single_app_env()).unwrap();
    assert_eq!(c.media.max_bytes, 1 << 20);
    assert_eq!(
        c.media.public_url.as_deref(),
        Some("https://gw.example.com")
    );
    assert_eq!(c.media.inline_text_bytes, 0);
    assert_eq!(c.media.url_expires, Duration::from_secs(600));
    let AgentKind::Openai(openai) = &c.agent.kind else {
        panic!("an openai agent")
    };
    assert!(openai.vision);

    let mut e = single_app_env();
    e.extend(env(&[
        ("WECOM_CALLBACK_MEDIA__MAX_BYTES", "0"),
        ("WECOM_CALLBACK_MEDIA__PUBLIC_URL", "gw.example.com"),
        ("WECOM_CALLBACK_MEDIA__URL_EXPIRES_SECS", "5"),
        ("WECOM_CALLBACK_AGENT__KIND", "openai"),
        ("WECOM_CALLBACK_AGENT__BASE_URL", "http://127.0.0.1:9/v1"),
        ("WECOM_CALLBACK_AGENT__MODEL", "m"),
        ("WECOM_CALLBACK_AGENT__VISION", "maybe"),
    ]));
    let text = Config::load(None, e).unwrap_err().to_string();
    for expected in [
        "media.max_bytes: must be a whole number from 1 to 1073741824, got \"0\" (from WECOM_CALLBACK_MEDIA__MAX_BYTES)",
        "media.public_url: must be an http:// or https:// URL, got \"gw.example.com\" (from WECOM_CALLBACK_MEDIA__PUBLIC_URL)",
        "media.url_expires_secs: must be a whole number from 60 to 604800, got \"5\" (from WECOM_CALLBACK_MEDIA__URL_EXPIRES_SECS)",
        "agent.vision: must be true or false, got \"maybe\" (from WECOM_CALLBACK_AGENT__VISION)",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn agent_events_all_none_or_a_list() {
    use wecom_gateway::agent::Events;
    let load = |value: &str| {
        let mut e = single_app_env();
        e.push(("WECOM_CALLBACK_AGENT__EVENTS".into(), value.into()));
        Config::load(None, e).unwrap().0.agent.events
    };
    assert_eq!(load("all"), Events::All);
    assert_eq!(load("none"), Events::Only(vec![]));
    let list = load("template_card_event, enter_agent");
    assert!(list.allows("enter_agent") && !list.allows("change_contact"));
    let (c, _) = Config::load(None, single_app_env()).unwrap();
    assert!(c.agent.events.allows("template_card_event"));
    assert!(
        !c.agent.events.allows("enter_agent"),
        "card clicks only, by default"
    );
}

#[test]
fn a_store_url_never_shows_its_password_in_either_place_it_may_be_given() {
    use wecom_gateway::config::PostgresUrl;
    for (given, shown) in [
        (
            "postgres://gw:s3cret@db:5432/gw",
            "postgres://gw:****@db:5432/gw",
        ),
        (
            "postgres://gw@db/gw?sslmode=disable&password=s3cret",
            "postgres://gw@db/gw?sslmode=disable&password=****",
        ),
    ] {
        let url = PostgresUrl::parse(given).unwrap();
        assert_eq!(url.redacted(), shown);
        assert!(!format!("{url} {url:?}").contains("s3cret"), "{url:?}");
    }
    // Refused for another option: the error shows the URL, its password hidden.
    let refused = PostgresUrl::parse("postgres://gw@db/gw?password=s3cret&connect_timeout=x");
    let why = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(why.contains("password=****"), "{why}");
    assert!(!why.contains("s3cret"), "{why}");
}

const PLACEHOLDER: &str = "still holds the example's placeholder: put in your own value";
const QUOTE_IT: &str = "is a YAML number where text belongs, which YAML may have changed (0x1F is read as 31, 1.50 as 1.5): put the value in quotes (\"0x1F\")";

/// `deploy/env.example` used as the environment, its optional lines uncommented: each key still
/// holding a placeholder is named with its variable, the value never (the store URL gets the
/// password as docker-compose.yml puts it there).
#[test]
fn the_env_example_placeholders_are_named_by_key() {
    let example = include_str!("../../deploy/env.example");
    let mut e: Vec<(String, String)> = (example.lines())
        .filter_map(|l| l.trim_start_matches("# ").split_once('='))
        .filter(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let password = e
        .iter()
        .find(|(k, _)| k == "POSTGRES_PASSWORD")
        .unwrap()
        .1
        .clone();
    e.push((
        "WECOM_CALLBACK_STORE".into(),
        format!("postgres://gateway:{password}@postgres:5432/gateway"),
    ));
    // The example's AES key cannot start (43 characters), so its warnings come with the errors.
    let err = Config::load(None, e).unwrap_err();
    for field in [
        "CORP_ID",
        "CORP_SECRET",
        "TOKEN",
        "ENCODING_AES_KEY",
        "STORE",
    ] {
        let key = field.to_ascii_lowercase();
        let line = format!("warning: {key}: {PLACEHOLDER} (from WECOM_CALLBACK_{field})");
        assert!(err.0.contains(&line), "missing {line:?} in {:?}", err.0);
    }
    for line in [
        format!("warning: api_tokens: {PLACEHOLDER} (from WECOM_CALLBACK_API_TOKENS)"),
        format!("warning: OPENAI_API_KEY: {PLACEHOLDER}"),
    ] {
        assert!(err.0.contains(&line), "missing {line:?} in {:?}", err.0);
    }
    assert!(!err.to_string().contains("change-me"), "{err}");
}

/// An `apps:` entry and the push API's tokens, as the example's commented blocks have them.
#[test]
fn placeholders_in_apps_and_api_tokens_are_named() {
    let f = yaml(&format!(
        "apps:\n  - name: a\n    corp_id: ww1\n    corp_secret: replace-me\n    agent_id: 1\n    token: t\n    encoding_aes_key: {KEY_A}\napi:\n  tokens:\n    - replace-with-a-long-random-token\n    - {{token: another-long-random-token, scopes: [broadcast]}}\nallowed_users: [zhangsan]\n"
    ));
    let (_, loaded) = Config::load(Some(f.path()), Vec::new()).unwrap();
    for field in [
        "apps[0].corp_secret",
        "api.tokens[0]",
        "api.tokens[1].token",
    ] {
        let line = format!("{field}: {PLACEHOLDER}");
        assert!(
            loaded.warnings.contains(&line),
            "missing {line:?} in {:?}",
            loaded.warnings
        );
    }
}

/// `token: 0x1F` is the number 31 to YAML (`1.50` is 1.5): check-config says to quote it. From
/// the environment, or quoted, it stays text and nothing is said. `0123` stays text in this YAML
/// (a leading zero is not a number), so it needs no warning either.
#[test]
fn a_yaml_number_for_a_text_key_is_warned_about_and_quoting_silences_it() {
    let app = |token: &str| {
        format!("corp_id: ww1\ncorp_secret: s\nagent_id: 218\ntoken: {token}\nencoding_aes_key: {KEY_A}\nallowed_users: [zhangsan]\n")
    };
    for (given, read) in [("0x1F", "31"), ("1.50", "1.5")] {
        let f = yaml(&app(given));
        let (c, loaded) = Config::load(Some(f.path()), Vec::new()).unwrap();
        assert_eq!(c.apps[0].token(), read, "what YAML makes of {given}");
        assert_eq!(loaded.warnings, [format!("token: {QUOTE_IT}")]);
    }

    for quiet in ["\"0x1F\"", "'1.50'", "0123"] {
        let f = yaml(&app(quiet));
        let (c, loaded) = Config::load(Some(f.path()), Vec::new()).unwrap();
        assert_eq!(c.apps[0].token(), quiet.trim_matches(['"', '\'']));
        assert!(loaded.warnings.is_empty(), "{quiet}: {:?}", loaded.warnings);
    }

    let f = yaml(&app("from-file"));
    let e = env(&[("WECOM_CALLBACK_TOKEN", "0x1F")]);
    let (c, loaded) = Config::load(Some(f.path()), e).unwrap();
    assert_eq!(c.apps[0].token(), "0x1F");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);

    // A list of text is read the same way (a UserID may be digits).
    let f = yaml("allowed_users: [zhangsan, 1e3]\nbots: [{name: ops, webhook_url: 'https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k'}]\n");
    let (_, loaded) = Config::load(Some(f.path()), Vec::new()).unwrap();
    let line = format!("allowed_users[1]: {QUOTE_IT}");
    assert!(loaded.warnings.contains(&line), "{:?}", loaded.warnings);
}

#[test]
fn ai_bots_from_the_environment_or_a_list_with_their_secrets_hidden() {
    // One bot from the environment is enough to run: no self-built app needed.
    let e = env(&[
        ("WECOM_CALLBACK_AIBOT_ID", "aibXYZ"),
        ("WECOM_CALLBACK_AIBOT_SECRET", "bot-secret-value-9"),
        ("WECOM_CALLBACK_ALLOWED_USERS", "zhangsan"),
    ]);
    let (c, loaded) = Config::load(None, e).unwrap();
    assert!(
        c.apps.is_empty() && loaded.warnings.is_empty(),
        "{:?}",
        loaded.warnings
    );
    assert_eq!(c.aibots.len(), 1);
    let bot = &c.aibots[0];
    assert_eq!(
        (bot.name.as_str(), bot.bot_id.as_str()),
        ("aibot", "aibXYZ")
    );
    assert!(bot.allowlist.allows("", "zhangsan") && !bot.allowlist.allows("", "lisi"));
    assert!(
        !bot.chats.allows("wrk1"),
        "no group until allowed_chats names it"
    );
    assert_eq!(c.aibot.ws_url, "wss://openws.work.weixin.qq.com");
    assert_eq!(c.aibot.stream_for, Duration::from_secs(300));
    let (debug, printed) = (format!("{c:?}"), c.redacted());
    for shown in [&debug, &printed] {
        assert!(!shown.contains("bot-secret-value-9"), "{shown}");
    }
    assert!(
        printed.contains("aibXYZ") && printed.contains("long connection"),
        "{printed}"
    );

    // A list: each bot's own allowlist and groups, URL mode, the shared settings.
    let f = yaml(&format!(
        "aibots:\n  - name: helper\n    bot_id: aib1\n    secret: s1\n    allowed_users: ['*']\n    allowed_chats: [wrkA]\n    group_session: chat\n  - name: url\n    bot_id: aib2\n    token: tok\n    encoding_aes_key: {KEY_A}\naibot:\n  ws_url: ws://127.0.0.1:7000\n  placeholder: 'off'\n  update_ms: 250\n  stream_secs: 120\n"
    ));
    let (c, _) = Config::load(Some(f.path()), vec![]).unwrap();
    let names: Vec<&str> = c.aibots.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["helper", "url"]);
    assert!(c.aibots[0].allowlist.allow_all && c.aibots[0].chats.allows("wrkA"));
    assert_eq!(
        c.aibots[0].group_session,
        wecom_gateway::aibot::settings::GroupSession::Chat
    );
    assert!(matches!(
        c.aibots[1].mode,
        wecom_gateway::aibot::settings::Mode::Callback { .. }
    ));
    assert_eq!(c.aibot.placeholder, "", "off: no placeholder");
    assert_eq!(c.aibot.update_every, Duration::from_millis(250));
    assert!(!c.redacted().contains(KEY_A) && !format!("{c:?}").contains(KEY_A));
}

#[test]
fn ai_bot_mistakes_are_all_named_at_once() {
    let f = yaml(
        "aibots:\n  - name: x\n    bot_id: aib0\n  - name: a\n    bot_id: aib1\n    secret: s\n    token: t\n  - name: a\n    bot_id: aib1\n    secret: s\n  - name: a\n    bot_id: aib1\n    secret: s\n  - name: c\n    bot_id: aib3\n    token: t\n    group_session: everyone\naibot:\n  ws_url: https://example.com\n  stream_secs: 400\n",
    );
    let text = Config::load(Some(f.path()), vec![])
        .unwrap_err()
        .to_string();
    for field in [
        "aibots[0].secret: is required",
        "aibots[1].secret: is set with token",
        "aibots[3].name: \"a\" is already used by aibots[2]",
        "aibots[3].bot_id: \"aib1\" is already used by aibots[2]",
        "aibots[4].encoding_aes_key: is required with token",
        "aibots[4].group_session: must be member or chat",
        "aibot.ws_url: must be a ws:// or wss:// URL",
        "aibot.stream_secs: must be a whole number from 10 to 350",
    ] {
        assert!(text.contains(field), "missing {field:?} in:\n{text}");
    }
    assert!(
        !text.contains("aibots[2].bot_id"),
        "a bot with errors is not compared: {text}"
    );
}
