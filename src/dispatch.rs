//! Pushes from the API and alerting: stored before they are acknowledged, then delivered one target
//! at a time, in order (one queue per robot, one per app member), through `Outbound`.
//!
//! Owns: the per-target queues (which end as soon as they are empty, so idle targets cost
//! nothing), resuming stored deliveries after a restart, and retrying a failed one. What a push
//! is ([`Push`]: a target and its message) is defined in `conversation`.
//!
//! Must never: acknowledge a push it has not stored, or send two messages to one target at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::task::JoinSet;

use crate::app::Apps;
use crate::bots::Bot;
use crate::conversation::{Push, Target};
use crate::outbound::{NotAttached, Outbound, Undelivered};
use crate::store::{Deliveries, DeliveryRetry, Failure, StoreError, StoredDelivery};

/// Robots by name, replaced by a reload.
pub type Bots = crate::live::Live<HashMap<String, Bot>>;

type Queues = Arc<Mutex<HashMap<Target, mpsc::UnboundedSender<StoredDelivery>>>>;

pub struct Dispatcher {
    outbound: Arc<Outbound>,
    store: Arc<dyn Deliveries>,
    apps: Apps,
    bots: Bots,
    queues: Queues,
    tasks: Mutex<JoinSet<()>>,
    closed: Arc<AtomicBool>,
}

impl Dispatcher {
    pub fn new(
        outbound: Arc<Outbound>,
        store: Arc<dyn Deliveries>,
        apps: Apps,
        bots: Bots,
    ) -> Self {
        Dispatcher {
            outbound,
            store,
            apps,
            bots,
            queues: Arc::default(),
            tasks: Mutex::new(JoinSet::new()),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The robots configured now.
    pub fn bots(&self) -> Arc<HashMap<String, Bot>> {
        self.bots.get()
    }

    /// Robots from now on (a reload).
    pub fn set_bots(&self, bots: HashMap<String, Bot>) {
        self.bots.set(bots);
    }

    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    pub fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    /// Store pushes (already split), in order, then queue them. Returns their ids.
    pub async fn submit(&self, pushes: Vec<Push>) -> Result<Vec<i64>, StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let ids = self.store.add_deliveries(pushes.clone()).await?;
        for (id, push) in ids.iter().zip(pushes) {
            self.enqueue(StoredDelivery {
                id: *id,
                push,
                started: false,
            });
        }
        Ok(ids)
    }

    /// Queue what a previous process stored but did not deliver. Call once at start.
    pub async fn resume(&self) -> Result<usize, StoreError> {
        let pending = self.store.queued_deliveries().await?;
        let n = pending.len();
        for d in pending {
            self.enqueue(d);
        }
        Ok(n)
    }

    /// Targets with a queue (deliveries waiting or in progress).
    pub fn active_targets(&self) -> usize {
        self.queues.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn enqueue(&self, delivery: StoredDelivery) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let target = delivery.push.target();
        // Sent under the map's lock: a queue worker drops its entry under the same lock, only
        // when its channel is empty, so a delivery never lands in a queue nobody reads.
        let delivery = match queues.get(&target) {
            Some(tx) => match tx.send(delivery) {
                Ok(()) => return,
                Err(closed) => closed.0,
            },
            None => delivery,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(delivery);
        queues.insert(target.clone(), tx);
        let worker = QueueWorker {
            target,
            outbound: self.outbound.clone(),
            store: self.store.clone(),
            apps: self.apps.clone(),
            bots: self.bots.clone(),
            closed: self.closed.clone(),
            queues: self.queues.clone(),
        };
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        // Reap queues that ended, so the set holds only live ones.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(worker.run(rx));
    }

    /// Stop taking pushes; let deliveries in progress finish for up to `grace`. Whatever is still
    /// queued stays in the store for the next start. Returns how many deliveries were left.
    pub async fn close(&self, grace: Duration) -> usize {
        self.closed.store(true, Ordering::SeqCst);
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let waiting = |queues: &Queues| -> Vec<Target> {
            queues
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect()
        };
        let pending = waiting(&self.queues);
        if !pending.is_empty() {
            tracing::info!(targets = ?pending, "shutting down: letting deliveries in progress finish");
        }
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tasks.shutdown().await;
        }
        let left = waiting(&self.queues);
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.clear();
        left.len()
    }
}

struct QueueWorker {
    target: Target,
    outbound: Arc<Outbound>,
    store: Arc<dyn Deliveries>,
    apps: Apps,
    bots: Bots,
    closed: Arc<AtomicBool>,
    queues: Queues,
}

impl QueueWorker {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<StoredDelivery>) {
        loop {
            let delivery = match rx.try_recv() {
                Ok(d) => d,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                    let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
                    match rx.try_recv() {
                        Ok(d) => d,
                        Err(_) => {
                            // Idle: the queue ends, and its target costs nothing until the next push.
                            queues.remove(&self.target);
                            return;
                        }
                    }
                }
            };
            if self.closed.load(Ordering::SeqCst) {
                // Left queued in the store for the next start.
                return;
            }
            let id = delivery.id;
            let Some((attempts, error)) = self.deliver(delivery).await else {
                let left = rx.len() + 1;
                tracing::info!(to = ?self.target, left, "shutting down: WeCom's rate limit holds this target's next message past the grace period; {left} message(s) stay stored and are delivered after the next start");
                return;
            };
            if let Err(e) = self.store.finish_delivery(id, attempts, error).await {
                if !e.logged_by_store() {
                    tracing::error!(delivery = id, error = %e, "cannot record the delivery's outcome; it will be sent again at the next start");
                }
            }
        }
    }

    /// Returns the attempts made and the error, if it failed for good; `None` if the gateway is
    /// stopping and the delivery stays stored for the next start.
    async fn deliver(&self, d: StoredDelivery) -> Option<(u32, Option<Failure>)> {
        let fail = |why: String, errcode: Option<i64>| {
            tracing::error!(delivery = d.id, to = ?self.target, errcode, "delivery failed: {why}");
            Some((0, Some(Failure::wecom(why, errcode))))
        };
        if let Err(e) = self.store.start_delivery(d.id).await {
            // Send anyway: a lost notification is worse than a rare double after a crash.
            if !e.logged_by_store() {
                tracing::warn!(delivery = d.id, error = %e, "cannot record that the delivery started");
            }
        }
        let result = match &d.push {
            Push::App { app, to, message } => {
                let Some(app) = self.apps.by_name(app) else {
                    return fail(format!("app {app:?} is not configured"), None);
                };
                let app: &crate::app::App = &app;
                let _turn = self.outbound.lock(&Outbound::recipients_key(app, to)).await;
                // A file is uploaded first. A push keeps no media_id: after a crash it is
                // uploaded again, and a resend under a new media_id escapes WeCom's duplicate
                // check (docs/sending.md says so).
                let mut message = message.clone();
                match self.outbound.attach_media(app, &mut message).await {
                    Ok(_) => {}
                    Err(NotAttached::Stopped) => return None,
                    Err(e) => return fail(e.to_string(), e.errcode()),
                }
                self.outbound.send_app(app, to, &message, d.started).await.map(|(receipt, attempts)| {
                    if !receipt.invalid_users.is_empty() {
                        tracing::warn!(delivery = d.id, invalid_users = ?receipt.invalid_users, "WeCom could not deliver to some recipients");
                    }
                    attempts
                })
            }
            Push::Bot { bot, message } => {
                let Some(bot) = self.bots.get().get(bot).cloned() else {
                    return fail(format!("robot {bot:?} is not configured"), None);
                };
                let bot = &bot;
                let mut message = message.clone();
                match self.outbound.attach_bot_media(bot, &mut message).await {
                    Ok(()) => {}
                    Err(NotAttached::Stopped) => return None,
                    Err(e) => return fail(e.to_string(), e.errcode()),
                }
                self.outbound.send_bot(bot, &message).await
            }
        };
        match result {
            Ok(attempts) => {
                tracing::info!(delivery = d.id, to = ?self.target, attempts, "delivered");
                Some((attempts, None))
            }
            Err(Undelivered::Failed(failure)) => {
                tracing::error!(delivery = d.id, to = ?self.target, errcode = failure.error.errcode(), error = %failure, "delivery failed");
                let stored = Failure::wecom(failure.to_string(), failure.error.errcode());
                Some((failure.attempts, Some(stored)))
            }
            Err(Undelivered::Stopped) => None,
        }
    }
}

/// What became of a request to queue failed work again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retried {
    /// Queued as this new job or delivery.
    Queued(String),
    /// No such failure, or it was retried already.
    NotFound,
    /// A push to departments, tags or @all, and the caller may not broadcast.
    NeedsBroadcast,
}

/// Queue failed work again: a job as a new job (see `Failures::retry_job`), a delivery as a new
/// delivery (`Failures::retry_delivery`: stored and the old one marked in one transaction, so two
/// retries at once push once), sent now through `dispatcher` when the gateway runs in this
/// process; else taken up by the gateway at its next start, or by a replica within `lease_secs`.
pub async fn retry(
    store: &dyn crate::store::Store,
    dispatcher: Option<&Dispatcher>,
    which: crate::store::FailedId,
    may_broadcast: bool,
) -> Result<Retried, StoreError> {
    use crate::store::FailedId;
    match which {
        FailedId::Job(id) => Ok(match store.retry_job(id).await? {
            Some(new) => Retried::Queued(format!("job-{new}")),
            None => Retried::NotFound,
        }),
        FailedId::Delivery(id) => Ok(match store.retry_delivery(id, may_broadcast).await? {
            DeliveryRetry::Queued(delivery) => {
                let new = delivery.id;
                if let Some(d) = dispatcher {
                    d.enqueue(*delivery);
                }
                Retried::Queued(format!("delivery-{new}"))
            }
            DeliveryRetry::NotFound => Retried::NotFound,
            DeliveryRetry::NeedsBroadcast => Retried::NeedsBroadcast,
        }),
    }
}
