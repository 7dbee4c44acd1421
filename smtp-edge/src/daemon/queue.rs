//! The queue service: starts the queue manager once there are outbound
//! connectors (at start or at the reload that adds the first), hands it each
//! reloaded configuration (connectors, `[queue]`, `[dns]`, client
//! certificates read again), and answers the queue commands without
//! touching the gate. While no manager runs, the messages accepted into the
//! spool wait there for an outbound connector: the service counts them
//! (status and the `waiting_for_connector` state of the queue metric).

use std::sync::{Arc, Mutex};

use serde_json::json;

use super::DaemonError;
use crate::config::Config;
use crate::ops::control::Request;
use crate::queue::QueueSlot;
use crate::queue::index::Counts;
use crate::queue::manager::{Manager, ManagerSlot, QueueConfig, QueueError};
use crate::queue::metrics::{QueueCounts, QueueMetrics};
use crate::queue::spool::Spool;

/// The queue's configuration from the file (see [`QueueConfig::load`]).
pub fn queue_config(config: &Config) -> Result<QueueConfig, DaemonError> {
    QueueConfig::load(config).map_err(|e| DaemonError::Queue(e.to_string()))
}

/// The queue of a running daemon (none before the first outbound
/// connector).
pub struct QueueService {
    manager: ManagerSlot,
    size: QueueSize,
    metrics: QueueMetrics,
}

/// Where the queue's size is read: the manager's counts, or while none runs
/// the complete messages in the spool, waiting for an outbound connector.
/// Blocking (a directory read): called off the async workers.
#[derive(Clone, Default)]
pub struct QueueSize {
    manager: ManagerSlot,
    spool: Arc<Mutex<Option<Arc<Spool>>>>,
}

impl QueueCounts for QueueSize {
    fn counts(&self) -> Counts {
        let manager = self
            .manager
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(m) = manager {
            return m.counts();
        }
        let spool = self.spool.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let waiting = spool.map_or(0, |s| {
            s.count().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the spool cannot be counted");
                0
            })
        });
        Counts {
            waiting_for_connector: waiting,
            ..Counts::default()
        }
    }
}

const NOT_RUNNING: &str =
    "the queue is not running: it needs [smtp] enabled and at least one [[outbound_connectors]]";

impl QueueService {
    /// The service, its metrics registered in `registry`.
    pub fn new(registry: &mut prometheus_client::registry::Registry) -> QueueService {
        let size = QueueSize::default();
        QueueService {
            metrics: QueueMetrics::register(registry, size.clone()),
            manager: size.manager.clone(),
            size,
        }
    }

    /// The spool the receiving side writes: counted while no manager runs.
    pub fn watch_spool(&self, spool: &Arc<Spool>) {
        *self.size.spool.lock().unwrap_or_else(|p| p.into_inner()) = Some(spool.clone());
    }

    fn manager(&self) -> Option<Arc<Manager>> {
        self.manager
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Messages by state; while the queue does not run, those waiting in
    /// the spool for an outbound connector.
    pub async fn counts(&self) -> Counts {
        let size = self.size.clone();
        tokio::task::spawn_blocking(move || size.counts())
            .await
            .unwrap_or_default()
    }

    /// Whether the manager runs.
    pub fn running(&self) -> bool {
        self.manager().is_some()
    }

    /// Puts `cfg` in force: the running manager takes it (attempts under
    /// way keep theirs), or the manager starts when there is none and `cfg`
    /// has connectors.
    pub async fn apply(
        &self,
        cfg: QueueConfig,
        spool: &Arc<Spool>,
        slot: &QueueSlot,
    ) -> Result<(), DaemonError> {
        if let Some(m) = self.manager() {
            m.reconfigure(cfg);
            return Ok(());
        }
        if cfg.connectors.is_empty() {
            return Ok(());
        }
        let connectors = cfg.connectors.len();
        let m = Manager::start(spool.clone(), cfg, slot, self.metrics.clone())
            .await
            .map_err(|e| DaemonError::Queue(e.to_string()))?;
        *self.manager.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
        tracing::info!(connectors, "queue running");
        Ok(())
    }

    /// Answers a queue command.
    pub async fn handle(&self, req: Request) -> Result<serde_json::Value, String> {
        let q = self.manager().ok_or(NOT_RUNNING)?;
        let done = |r: Result<(), QueueError>| {
            r.map(|()| json!({ "ok": true })).map_err(|e| e.to_string())
        };
        // The manager's commands do blocking file work.
        tokio::task::spawn_blocking(move || match req {
            Request::QueueList => serde_json::to_value(q.list()).map_err(|e| e.to_string()),
            Request::QueueShow { id } => q
                .show(&id)
                .map(|(l, headers)| json!({ "message": l, "headers": headers }))
                .map_err(|e| e.to_string()),
            Request::QueueFlush { id } => q
                .flush(id.as_deref())
                .map(|n| json!({ "flushed": n }))
                .map_err(|e| e.to_string()),
            Request::QueueHold { id } => done(q.hold(&id, true)),
            Request::QueueRelease { id } => done(q.hold(&id, false)),
            Request::QueueDelete { id } => done(q.delete(&id)),
            Request::QueueBounce { id } => done(q.bounce(&id)),
            _ => Err("not a queue command".into()),
        })
        .await
        .unwrap_or_else(|e| Err(format!("internal error: {e}")))
    }
}
