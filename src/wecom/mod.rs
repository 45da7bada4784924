//! WeCom server API: access tokens, message/send, and what WeCom's errcodes mean.
//!
//! Owns: every call to qyapi.weixin.qq.com (or the configured `api_base_url`).
//!
//! Must never: put an access token, corp secret or full request URL into a log line or an error
//! (reqwest errors are stripped of their URL), or treat an HTTP 200 with a non-zero errcode as success.

pub mod client;
pub mod error;
pub mod media;
pub mod payload;
pub mod split;
pub mod token;

pub use client::{SendReceipt, WecomClient};
pub use error::{ApiError, ErrcodeClass};
pub use payload::{AppMessage, BotMessage, PayloadError, Recipients, TextCard};
pub use split::{split_utf8, TEXT_MAX_BYTES};
