//! WeCom API errors and the meaning of errcodes: the one place that decides which codes mean a stale
//! token, which are worth retrying, and what an operator should do about the rest.

/// A failed WeCom API call. Display never includes URLs, tokens or secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("request to WeCom failed: {0}")]
    Transport(String),
    #[error("WeCom answered HTTP {status}")]
    Http { status: u16 },
    #[error("WeCom's answer could not be read: {0}")]
    Decode(String),
    #[error("WeCom errcode {errcode}: {errmsg}{}", hint_suffix(*.errcode))]
    WeCom { errcode: i64, errmsg: String },
}

fn hint_suffix(errcode: i64) -> String {
    hint(errcode)
        .map(|h| format!(" (hint: {h})"))
        .unwrap_or_default()
}

/// How to treat an errcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrcodeClass {
    Ok,
    /// The access token is invalid or expired: drop it, fetch a new one, try once more.
    StaleToken,
    /// Busy or throttled: worth trying again later.
    Transient,
    /// Will not heal by retrying (bad user, no permission, untrusted IP, ...).
    Permanent,
}

/// errcodes that mean "this access token is no good": invalid credential, invalid token, expired token.
pub const STALE_TOKEN_ERRCODES: [i64; 3] = [40001, 40014, 42001];
/// errcodes that mean "try again later": system busy, rate limit, concurrency limit.
pub const TRANSIENT_ERRCODES: [i64; 3] = [-1, 45009, 45033];

pub fn classify(errcode: i64) -> ErrcodeClass {
    if errcode == 0 {
        ErrcodeClass::Ok
    } else if STALE_TOKEN_ERRCODES.contains(&errcode) {
        ErrcodeClass::StaleToken
    } else if TRANSIENT_ERRCODES.contains(&errcode) {
        ErrcodeClass::Transient
    } else {
        ErrcodeClass::Permanent
    }
}

/// What an operator should check for the errcodes people actually hit.
pub fn hint(errcode: i64) -> Option<&'static str> {
    Some(match errcode {
        -1 => "WeCom is busy; the call can be retried",
        40001 | 40091 => "corp_secret is wrong: copy the app's Secret again from the WeCom admin console",
        40013 => "corp_id is wrong: use the CorpID from 我的企业 > 企业信息",
        40014 | 42001 => "the access token is invalid or expired; the gateway fetches a new one",
        40056 => "agent_id is wrong: use the AgentId shown on the app's page",
        41001 => "the access token is missing",
        45009 | 45033 => "WeCom rate limit reached; slow down and retry",
        48002 => "the app has no permission for this API",
        50003 => "the app is disabled in the admin console",
        60011 => "the user is outside the app's visible range (可见范围)",
        60020 => "this server's public IP is not in the app's trusted IPs: add it under 企业可信IP on the app's page",
        81013 => "no valid recipient: the UserID does not exist or is outside the app's visible range",
        93000 => "the robot's webhook URL is invalid or the robot was removed from the group: copy the webhook URL again from the group's robot settings",
        40058 => "a field is too long or invalid (markdown at most 4096 bytes, text 2048)",
        44004 => "the message content is empty",
        _ => return None,
    })
}

impl ApiError {
    /// Worth trying again later? Transport failures, timeouts, HTTP 5xx and 429, unreadable answers
    /// (a proxy's error page) and the transient errcodes. A stale token that survived the client's
    /// own refresh-and-retry is treated as transient too. Everything else will not heal.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Transport(_) | ApiError::Decode(_) => true,
            ApiError::Http { status } => *status >= 500 || *status == 429,
            ApiError::WeCom { errcode, .. } => {
                matches!(
                    classify(*errcode),
                    ErrcodeClass::Transient | ErrcodeClass::StaleToken
                )
            }
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
        if e.is_timeout() {
            ApiError::Transport(format!("timed out ({text})"))
        } else if e.is_decode() {
            ApiError::Decode(text)
        } else {
            ApiError::Transport(text)
        }
    }
}
