//! WeCom AI bots (智能机器人): a second kind of channel beside the self-built app. WeCom reaches a
//! bot over a long connection the gateway opens (`link.rs`), or posts to a URL; what arrives is
//! stored like an app's callbacks (`receive.rs`, `stored.rs`), and replies stream into a bubble
//! as the agent writes (`reply.rs`).
//!
//! This file holds the configured bots at run time. Must never: show a bot's Secret.

pub mod callback_body;
pub mod frame;
pub mod inbound;
pub mod link;
pub mod media;
pub mod polls;
pub mod receive;
pub mod reply;
pub mod settings;
pub mod stored;
pub mod upload;

use std::collections::HashMap;
use std::sync::Arc;

use self::link::Link;
use self::settings::{AiBotConfig, AiBotSettings};

/// One configured AI bot and its connection.
pub struct Bot {
    pub config: AiBotConfig,
    pub settings: AiBotSettings,
    pub link: Arc<Link>,
    /// URL mode's bubbles, as WeCom polls them.
    pub polls: polls::Polls,
    /// URL mode: posts to a callback's `response_url`.
    pub http: reqwest::Client,
    /// Fetches a member's file as soon as the message is stored: WeCom's link to it lasts
    /// minutes, and the message may wait longer for its turn.
    pub received: Arc<crate::received::Received>,
}

impl Bot {
    /// The key that opens a member's file in URL mode (the long connection gives one per file).
    pub fn url_mode_key(&self) -> Option<&secrecy::SecretString> {
        match &self.config.mode {
            settings::Mode::Callback {
                encoding_aes_key, ..
            } => Some(encoding_aes_key),
            settings::Mode::LongConnection { .. } => None,
        }
    }
}

/// The configured AI bots, by name.
#[derive(Clone, Default)]
pub struct Bots(Arc<HashMap<String, Arc<Bot>>>);

impl Bots {
    pub fn new(
        configs: &[AiBotConfig],
        settings: &AiBotSettings,
        received: Arc<crate::received::Received>,
    ) -> Bots {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let bots = configs.iter().map(|config| {
            let bot = Bot {
                config: config.clone(),
                settings: settings.clone(),
                link: Link::new(&config.name),
                polls: polls::Polls::default(),
                http: http.clone(),
                received: received.clone(),
            };
            (config.name.clone(), Arc::new(bot))
        });
        Bots(Arc::new(bots.collect()))
    }

    pub fn get(&self, name: &str) -> Option<Arc<Bot>> {
        self.0.get(name).cloned()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Bot>> {
        self.0.values()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A line for each long-connection bot that is not connected, for `/ready`.
    pub fn warnings(&self) -> Vec<String> {
        let mut lines: Vec<String> = (self.0.values())
            .filter(|b| matches!(b.config.mode, settings::Mode::LongConnection { .. }))
            .filter_map(|b| b.link.state().warning(&b.config.name))
            .collect();
        lines.sort();
        lines
    }
}
