//! WeCom API errors and the meaning of errcodes: the one place that decides, per call, which codes
//! mean a stale token, which are worth retrying, and what an operator should do about the rest.
//!
//! The same errcode means different things on different calls: 40001 from `gettoken` is a wrong
//! corp_secret (retrying cannot heal it), while 40001 from `message/send` is an access token WeCom no
//! longer accepts (fetch a new one and try again). So every error carries the [`Call`] that answered.
//! Facts: docs/wecom-protocol.md §4.
//!
//! Must never: put a URL, token or secret into an error's text.

/// Which WeCom endpoint answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `cgi-bin/gettoken`: authenticated by corp id and secret.
    GetToken,
    /// Any call authenticated by an access token (`message/send`, `media/get`, ...).
    WithToken,
    /// A group robot's `webhook/send`: authenticated by the key in its URL.
    Webhook,
}

/// A failed WeCom API call. Display never includes URLs, tokens or secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request never left: WeCom (or the proxy) could not be reached.
    #[error("cannot connect to WeCom: {0}")]
    Connect(String),
    /// The request may have reached WeCom, but no answer came back (timeout, connection lost).
    #[error("request to WeCom failed: {0}")]
    Transport(String),
    #[error("WeCom answered HTTP {status}")]
    Http { status: u16 },
    #[error("WeCom's answer could not be read: {0}")]
    Decode(String),
    /// The store shared by replicas (tokens, rate windows) failed; nothing was sent.
    #[error("shared store failed: {0}")]
    Shared(String),
    /// The answer is one the gateway will not take (a file over `media.max_bytes`, or one it
    /// cannot write to disk); asking again would not change it.
    #[error("{0}")]
    Refused(String),
    #[error("WeCom errcode {errcode}: {errmsg}{}", hint_suffix(*.call, *.errcode))]
    WeCom {
        call: Call,
        errcode: i64,
        errmsg: String,
    },
}

/// How to treat an errcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrcodeClass {
    /// The access token is invalid or expired: drop it, fetch a new one, try once more.
    StaleToken,
    /// Busy or throttled: worth trying again later.
    Transient,
    /// Will not heal by retrying (wrong secret, bad user, no permission, untrusted IP, ...).
    Permanent,
}

use ErrcodeClass::{Permanent, StaleToken, Transient};

/// One errcode the gateway knows: its class on each call, and what to check.
struct Errcode {
    code: i64,
    on_gettoken: ErrcodeClass,
    with_token: ErrcodeClass,
    hint: &'static str,
}

const fn row(
    code: i64,
    on_gettoken: ErrcodeClass,
    with_token: ErrcodeClass,
    hint: &'static str,
) -> Errcode {
    Errcode {
        code,
        on_gettoken,
        with_token,
        hint,
    }
}

/// Every errcode the gateway names. Codes not listed are permanent on every call.
const ERRCODES: &[Errcode] = &[
    row(-1, Transient, Transient, "WeCom is busy; the call can be retried"),
    row(40001, Permanent, StaleToken, "on gettoken: corp_secret is wrong, copy the app's Secret again from the WeCom admin console; on other calls: the access token is no longer valid and the gateway fetches a new one"),
    row(40091, Permanent, Permanent, "corp_secret is wrong: copy the app's Secret again from the WeCom admin console"),
    row(40013, Permanent, Permanent, "corp_id is wrong: use the CorpID from 我的企业 > 企业信息"),
    row(40014, StaleToken, StaleToken, "the access token is invalid; the gateway fetches a new one"),
    row(42001, StaleToken, StaleToken, "the access token expired; the gateway fetches a new one"),
    row(41001, StaleToken, StaleToken, "the access token is missing; the gateway fetches a new one"),
    row(40056, Permanent, Permanent, "agent_id is wrong: use the AgentId shown on the app's page"),
    row(45009, Transient, Transient, "WeCom rate limit reached; slow down and retry"),
    row(45033, Transient, Transient, "WeCom's concurrency limit reached; retry later"),
    row(48002, Permanent, Permanent, "the app has no permission for this API"),
    row(50003, Permanent, Permanent, "the app is disabled in the admin console"),
    row(60011, Permanent, Permanent, "the user is outside the app's visible range (可见范围)"),
    row(60020, Permanent, Permanent, "this server's public IP is not in the app's trusted IPs: add it under 企业可信IP on the app's page"),
    row(81013, Permanent, Permanent, "no valid recipient: the UserID does not exist or is outside the app's visible range"),
    row(93000, Permanent, Permanent, "the robot's webhook URL is invalid or the robot was removed from the group: copy the webhook URL again from the group's robot settings"),
    row(40007, Permanent, Permanent, "invalid media_id: WeCom keeps a member's media for 3 days, and only the app it was sent to can fetch it"),
    row(40058, Permanent, Permanent, "a field is too long or invalid (markdown at most 4096 bytes, text 2048)"),
    row(44004, Permanent, Permanent, "the message content is empty"),
];

fn lookup(errcode: i64) -> Option<&'static Errcode> {
    ERRCODES.iter().find(|e| e.code == errcode)
}

/// What an errcode from `call` means. A robot webhook has no token, so nothing there is stale.
pub fn classify(call: Call, errcode: i64) -> ErrcodeClass {
    let Some(known) = lookup(errcode) else {
        return Permanent;
    };
    match (call, known.with_token) {
        (Call::GetToken, _) => known.on_gettoken,
        (Call::Webhook, StaleToken) => Permanent,
        (_, class) => class,
    }
}

/// What an operator should check for the errcodes people actually hit.
pub fn hint(errcode: i64) -> Option<&'static str> {
    lookup(errcode).map(|e| e.hint)
}

fn hint_suffix(call: Call, errcode: i64) -> String {
    // 40001 has two meanings; name the one that applies.
    let hint = match (call, errcode) {
        (Call::GetToken, 40001) => {
            Some("corp_secret is wrong: copy the app's Secret again from the WeCom admin console")
        }
        (_, 40001) => Some("the access token is no longer valid; the gateway fetches a new one"),
        _ => hint(errcode),
    };
    hint.map(|h| format!(" (hint: {h})")).unwrap_or_default()
}

impl ApiError {
    /// Worth trying again later? Failures to connect or to get an answer, HTTP 5xx and 429,
    /// unreadable answers (a proxy's error page) and the transient errcodes. A stale token that
    /// survived the client's own refresh-and-retry is retried too. Everything else will not heal.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Connect(_)
            | ApiError::Transport(_)
            | ApiError::Decode(_)
            | ApiError::Shared(_) => true,
            ApiError::Http { status } => *status >= 500 || *status == 429,
            ApiError::Refused(_) => false,
            ApiError::WeCom { call, errcode, .. } => {
                matches!(classify(*call, *errcode), Transient | StaleToken)
            }
        }
    }

    /// The access token used was rejected: drop it and try once more with a new one.
    pub fn is_stale_token(&self) -> bool {
        matches!(self, ApiError::WeCom { call, errcode, .. } if classify(*call, *errcode) == StaleToken)
    }

    /// Did the request perhaps reach WeCom and do its work, with the answer lost on the way back?
    /// Then sending it again could deliver it twice. Only a clear answer (an errcode, a 4xx) or a
    /// connection that never opened rules that out.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            ApiError::Transport(_) | ApiError::Decode(_) => true,
            ApiError::Http { status } => *status >= 500,
            ApiError::Connect(_)
            | ApiError::Shared(_)
            | ApiError::Refused(_)
            | ApiError::WeCom { .. } => false,
        }
    }

    pub fn errcode(&self) -> Option<i64> {
        match self {
            ApiError::WeCom { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        // Strip the URL: it carries the access token or the corp secret.
        let e = e.without_url();
        // The cause chain says what actually failed (connection refused, DNS, TLS); it has no URL.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        if e.is_connect() {
            ApiError::Connect(text)
        } else if e.is_timeout() {
            ApiError::Transport(format!("timed out ({text})"))
        } else if e.is_decode() {
            ApiError::Decode(text)
        } else {
            ApiError::Transport(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every errcode the gateway names, and what it must mean on each call.
    #[test]
    fn every_named_errcode_is_classified_per_call() {
        // (errcode, gettoken, token calls, robot webhook)
        let table = [
            (-1, Transient, Transient, Transient),
            (40001, Permanent, StaleToken, Permanent),
            (40091, Permanent, Permanent, Permanent),
            (40013, Permanent, Permanent, Permanent),
            (40014, StaleToken, StaleToken, Permanent),
            (42001, StaleToken, StaleToken, Permanent),
            (41001, StaleToken, StaleToken, Permanent),
            (40056, Permanent, Permanent, Permanent),
            (45009, Transient, Transient, Transient),
            (45033, Transient, Transient, Transient),
            (48002, Permanent, Permanent, Permanent),
            (50003, Permanent, Permanent, Permanent),
            (60011, Permanent, Permanent, Permanent),
            (60020, Permanent, Permanent, Permanent),
            (81013, Permanent, Permanent, Permanent),
            (93000, Permanent, Permanent, Permanent),
            (40007, Permanent, Permanent, Permanent),
            (40058, Permanent, Permanent, Permanent),
            (44004, Permanent, Permanent, Permanent),
            (12345, Permanent, Permanent, Permanent),
        ];
        assert_eq!(
            table.len(),
            ERRCODES.len() + 1,
            "the table covers every named errcode"
        );
        for (code, gettoken, with_token, webhook) in table {
            assert_eq!(
                classify(Call::GetToken, code),
                gettoken,
                "{code} on gettoken"
            );
            assert_eq!(
                classify(Call::WithToken, code),
                with_token,
                "{code} with a token"
            );
            assert_eq!(
                classify(Call::Webhook, code),
                webhook,
                "{code} on a webhook"
            );
            if code != 12345 {
                assert!(hint(code).is_some(), "{code} has a hint");
            }
        }
    }

    #[test]
    fn a_wrong_secret_is_not_retried_and_a_stale_token_is() {
        let err = |call, errcode| ApiError::WeCom {
            call,
            errcode,
            errmsg: String::new(),
        };
        let wrong_secret = err(Call::GetToken, 40001);
        assert!(!wrong_secret.is_retryable() && !wrong_secret.is_stale_token());
        assert!(wrong_secret.to_string().contains("corp_secret is wrong"));
        let stale = err(Call::WithToken, 40001);
        assert!(stale.is_retryable() && stale.is_stale_token());
        assert!(stale.to_string().contains("access token"));
        assert!(err(Call::WithToken, 45009).is_retryable());
        assert!(!err(Call::WithToken, 81013).is_retryable());
    }

    #[test]
    fn only_lost_answers_have_an_unknown_outcome() {
        assert!(ApiError::Transport("timed out".into()).outcome_unknown());
        assert!(ApiError::Http { status: 502 }.outcome_unknown());
        assert!(!ApiError::Connect("refused".into()).outcome_unknown());
        assert!(!ApiError::Http { status: 429 }.outcome_unknown());
        assert!(!ApiError::WeCom {
            call: Call::WithToken,
            errcode: -1,
            errmsg: String::new()
        }
        .outcome_unknown());
    }
}
