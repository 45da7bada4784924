//! The allowlist: who may talk to the agent, and how an entry is written.
//!
//! Must never: match a user of one corp by an entry scoped to another corp.

/// Who may talk to the agent. Entries are `user` (any corp) or `corp_id:user`, compared
/// case-insensitively because WeCom UserIDs are.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    pub allow_all: bool,
    pub users: Vec<String>,
}

impl Allowlist {
    pub fn allows(&self, corp_id: &str, user_id: &str) -> bool {
        self.allow_all
            || self.users.iter().any(|entry| match entry.split_once(':') {
                Some((corp, user)) => {
                    corp.eq_ignore_ascii_case(corp_id) && user.eq_ignore_ascii_case(user_id)
                }
                None => entry.eq_ignore_ascii_case(user_id),
            })
    }
}

/// An allowlist entry that is neither `user` nor `corp_id:user`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be user or corp_id:user, got {0:?}")]
pub struct InvalidEntry(pub String);

impl Allowlist {
    /// One entry as configured: `user` or `corp_id:user`.
    pub(crate) fn entry(text: &str) -> Result<String, InvalidEntry> {
        match text.split(':').count() > 2 || text.starts_with(':') || text.ends_with(':') {
            true => Err(InvalidEntry(text.to_owned())),
            false => Ok(text.to_owned()),
        }
    }
}
