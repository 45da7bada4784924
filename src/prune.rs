//! Retention: finished messages and received media files older than `retention_days` are
//! deleted, at start and then hourly.
//!
//! Must never: run on the request path, or hold the store for long (each batch is a short
//! transaction of its own).

use std::sync::Arc;
use std::time::Duration;

use crate::received::Received;
use crate::store::{self, Store};

/// Delete finished messages older than the retention period: at start and then hourly. Runs off the
/// request path; each batch is a short transaction of its own.
pub(crate) async fn prune_loop(
    store: Arc<dyn Store>,
    received: Arc<Received>,
    retention_days: u64,
) {
    let retention = Duration::from_secs(retention_days * 86_400);
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        match store
            .prune(store::now_ms() - retention.as_millis() as i64)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, retention_days, "pruned finished messages"),
            Err(e) => tracing::error!(error = %e, "pruning finished messages failed"),
        }
        match received.prune(retention).await {
            0 => {}
            n => tracing::info!(deleted = n, retention_days, "pruned received media files"),
        }
    }
}
