//! A bearer token for the push API (`/api/v1`), and what it may do. Here, below both configuration
//! (which reads tokens) and `http` (which checks them), so neither has to import the other.
//!
//! Must never: show the token (it is a `SecretString`; `Debug` hides it).

use secrecy::SecretString;

/// A bearer token for /api/v1, and what it may do beyond sending to members one by one.
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub token: SecretString,
    /// May address departments, tags and `@all` (`scopes: [broadcast]`).
    pub broadcast: bool,
}

impl From<SecretString> for ApiToken {
    fn from(token: SecretString) -> Self {
        ApiToken {
            token,
            broadcast: false,
        }
    }
}
