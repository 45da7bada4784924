//! Pushes from the API and alerting: stored before they are acknowledged, then delivered one target
//! at a time, in order (one queue per robot, one per app member), through `Outbound`.
//!
//! Owns: how a delivery's target and message are written to the store, and resuming stored
//! deliveries after a restart.
//!
//! Must never: acknowledge a push it has not stored, or send two messages to one target at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::Outbound;
use crate::app::Apps;
use crate::bots::Bot;
use crate::inbox::{Inbox, InboxError, StoredDelivery};
use crate::wecom::{AppMessage, BotMessage};

/// Where a delivery goes. Its JSON form is the store's `target` column and the queue's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    App { app: String, user: String },
    Bot { bot: String },
}

impl Target {
    fn key(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Robots by name.
pub type Bots = Arc<HashMap<String, Bot>>;

pub struct Dispatcher {
    outbound: Arc<Outbound>,
    store: Arc<dyn Inbox>,
    apps: Apps,
    bots: Bots,
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<StoredDelivery>>>,
    tasks: Mutex<JoinSet<()>>,
    closed: Arc<AtomicBool>,
}

impl Dispatcher {
    pub fn new(outbound: Arc<Outbound>, store: Arc<dyn Inbox>, apps: Apps, bots: Bots) -> Self {
        Dispatcher {
            outbound,
            store,
            apps,
            bots,
            queues: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn bots(&self) -> &Bots {
        &self.bots
    }

    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    /// Store app messages (already split) for one member, then queue them. Returns their ids.
    pub async fn submit_app(
        &self,
        app: &str,
        user: &str,
        pieces: Vec<AppMessage>,
    ) -> Result<Vec<i64>, InboxError> {
        let target = Target::App {
            app: app.into(),
            user: user.into(),
        };
        self.submit(&target, &pieces).await
    }

    /// Store robot messages (already split), then queue them. Returns their ids.
    pub async fn submit_bot(
        &self,
        bot: &str,
        pieces: Vec<BotMessage>,
    ) -> Result<Vec<i64>, InboxError> {
        self.submit(&Target::Bot { bot: bot.into() }, &pieces).await
    }

    async fn submit<T: Serialize>(
        &self,
        target: &Target,
        pieces: &[T],
    ) -> Result<Vec<i64>, InboxError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(InboxError::Closed);
        }
        let key = target.key();
        let payloads = pieces
            .iter()
            .map(|p| {
                serde_json::to_string(p)
                    .map_err(|e| InboxError::Storage(format!("cannot encode a message: {e}")))
            })
            .collect::<Result<Vec<String>, _>>()?;
        let items: Vec<(String, String)> =
            payloads.iter().map(|p| (key.clone(), p.clone())).collect();
        let ids = self.store.add_deliveries(items).await?;
        for (id, payload) in ids.iter().zip(payloads) {
            self.enqueue(StoredDelivery {
                id: *id,
                target: key.clone(),
                payload,
            });
        }
        Ok(ids)
    }

    /// Queue what a previous process stored but did not deliver. Call once at start.
    pub async fn resume(&self) -> Result<usize, InboxError> {
        let pending = self.store.queued_deliveries().await?;
        let n = pending.len();
        for d in pending {
            self.enqueue(d);
        }
        Ok(n)
    }

    fn enqueue(&self, delivery: StoredDelivery) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let tx = queues.entry(delivery.target.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let worker = QueueWorker {
                outbound: self.outbound.clone(),
                store: self.store.clone(),
                apps: self.apps.clone(),
                bots: self.bots.clone(),
                closed: self.closed.clone(),
            };
            self.tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .spawn(worker.run(rx));
            tx
        });
        // The receiver lives as long as its task, which ends only after `close`.
        let _ = tx.send(delivery);
    }

    /// Stop taking pushes; let deliveries in progress finish for up to `grace`. Whatever is still
    /// queued stays in the store for the next start.
    pub async fn close(&self, grace: Duration) {
        self.closed.store(true, Ordering::SeqCst);
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tasks.shutdown().await;
        }
    }
}

struct QueueWorker {
    outbound: Arc<Outbound>,
    store: Arc<dyn Inbox>,
    apps: Apps,
    bots: Bots,
    closed: Arc<AtomicBool>,
}

impl QueueWorker {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<StoredDelivery>) {
        while let Some(delivery) = rx.recv().await {
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let id = delivery.id;
            let (attempts, error) = self.deliver(delivery).await;
            if let Err(e) = self.store.finish_delivery(id, attempts, error).await {
                tracing::error!(delivery = id, error = %e, "cannot record the delivery's outcome; it will be sent again at the next start");
            }
        }
    }

    /// Returns the attempts made and the error, if it failed for good.
    async fn deliver(&self, d: StoredDelivery) -> (u32, Option<String>) {
        let fail = |why: String| {
            tracing::error!(delivery = d.id, target = %d.target, "delivery failed: {why}");
            (0, Some(why))
        };
        let target: Target = match serde_json::from_str(&d.target) {
            Ok(t) => t,
            Err(e) => return fail(format!("stored target cannot be read: {e}")),
        };
        let result = match &target {
            Target::App { app, user } => {
                let Some(app) = self.apps.by_name(app) else {
                    return fail(format!("app {app:?} is not configured"));
                };
                let message: AppMessage = match serde_json::from_str(&d.payload) {
                    Ok(m) => m,
                    Err(e) => return fail(format!("stored message cannot be read: {e}")),
                };
                let _turn = self.outbound.lock(&Outbound::member_key(app, user)).await;
                self.outbound.send_app(app, user, &message).await.map(|(receipt, attempts)| {
                    if !receipt.invalid_users.is_empty() {
                        tracing::warn!(delivery = d.id, invalid_users = ?receipt.invalid_users, "WeCom could not deliver to some recipients");
                    }
                    attempts
                })
            }
            Target::Bot { bot } => {
                let Some(bot) = self.bots.get(bot) else {
                    return fail(format!("robot {bot:?} is not configured"));
                };
                let message: BotMessage = match serde_json::from_str(&d.payload) {
                    Ok(m) => m,
                    Err(e) => return fail(format!("stored message cannot be read: {e}")),
                };
                self.outbound.send_bot(bot, &message).await
            }
        };
        match result {
            Ok(attempts) => {
                tracing::info!(delivery = d.id, target = %d.target, attempts, "delivered");
                (attempts, None)
            }
            Err(failure) => {
                tracing::error!(delivery = d.id, target = %d.target, errcode = failure.error.errcode(), error = %failure, "delivery failed");
                (failure.attempts, Some(failure.to_string()))
            }
        }
    }
}
