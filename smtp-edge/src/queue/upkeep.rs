//! The manager's upkeep: reads the queue from disk at start (quarantining
//! what cannot be used), writes where a message stands after an attempt,
//! and, in its own task, saves frozen messages again and probes a full
//! spool.
//!
//! All file I/O runs off the async workers. When a state cannot be written
//! (a full or read-only disk) the message is frozen — not tried again until
//! its state can be saved, retried every few seconds — instead of being
//! delivered again and again to recipients already delivered; the spool's
//! [`crate::queue::spool::Health`] makes the receiving side answer `452 4.3.1`
//! meanwhile.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use super::config::QueueConfig;
use super::index::Index;
use super::manager::{
    Manager, QueueError, QueueHandle, QueueSlot, REPORT_RETRY, blocking, summary,
};
use super::metrics::QueueMetrics;
use super::state::MessageState;
use super::store::Store;
use crate::queue::spool::{self, Envelope, Spool};

/// How often frozen messages and a full spool are looked at again.
const MAINTENANCE: Duration = Duration::from_secs(5);

impl Manager {
    /// Reads the queue from disk (quarantining what cannot be used) and
    /// starts the manager. The receiving side's `slot` gets the handle
    /// before the spool is read, so a message accepted meanwhile is either
    /// read from disk or announced (a message both read and announced is
    /// queued once).
    pub async fn start(
        spool: Arc<Spool>,
        cfg: QueueConfig,
        slot: &QueueSlot,
        metrics: QueueMetrics,
    ) -> Result<Arc<Manager>, QueueError> {
        let store = Store::new(spool).map_err(|e| QueueError::Io(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        slot.set(Some(QueueHandle(tx)));
        match Self::load(store, cfg, rx, metrics).await {
            Ok(m) => Ok(m),
            Err(e) => {
                slot.set(None);
                Err(e)
            }
        }
    }

    async fn load(
        store: Store,
        cfg: QueueConfig,
        rx: mpsc::UnboundedReceiver<Envelope>,
        metrics: QueueMetrics,
    ) -> Result<Arc<Manager>, QueueError> {
        let started = Instant::now();
        let s2 = store.clone();
        let scan = blocking(move || s2.scan())
            .await
            .ok_or_else(|| QueueError::Io("queue scan failed".into()))?
            .map_err(|e| QueueError::Io(e.to_string()))?;
        let mut index = Index::new();
        for l in scan.loaded {
            index.insert(summary(&l.envelope), l.state);
        }
        for (id, reason) in &scan.corrupt {
            index.add_corrupt(id, reason);
        }
        tracing::info!(
            messages = index.len(),
            corrupt = scan.corrupt.len(),
            leftovers_removed = scan.removed,
            seconds = started.elapsed().as_secs_f64(),
            "queue loaded"
        );
        let m = Arc::new(Manager {
            store,
            cfg: RwLock::new(Arc::new(cfg)),
            index: Mutex::new(index),
            wake: Notify::new(),
            metrics,
        });
        tokio::spawn(m.clone().run(rx));
        tokio::spawn(m.clone().maintenance());
        Ok(m)
    }

    /// Moves an unusable message to `corrupt/` and lists it there.
    pub(super) async fn quarantine(&self, id: &str, reason: &str) {
        tracing::error!(id, %reason, "unusable queued message quarantined in corrupt/");
        let (store, id2, r2) = (self.store.clone(), id.to_string(), reason.to_string());
        blocking(move || store.quarantine(&id2, &r2)).await;
        self.index().add_corrupt(id, reason);
    }

    /// Writes where the message stands: removes it when it is done, saves
    /// its state otherwise. A write that fails freezes it (with why).
    pub(super) async fn persist(
        &self,
        mut st: MessageState,
    ) -> (Option<MessageState>, Option<String>) {
        let done = st.pending().is_empty();
        if done && !st.has_unreported() {
            let (store, id) = (self.store.clone(), st.id.clone());
            return match blocking(move || store.remove(&id)).await {
                Some(Ok(())) => {
                    tracing::info!(id = %st.id, "message done");
                    (None, None)
                }
                Some(Err(e)) => {
                    tracing::error!(id = %st.id, error = %e, "cannot remove a finished message; frozen until it can be");
                    let why = format!("cannot remove: {e}");
                    (Some(st), Some(why))
                }
                None => (Some(st), Some("cannot remove".into())),
            };
        }
        if done {
            // Only a DSN is missing: try again soon, not on the schedule.
            st.next_attempt = spool::now() + REPORT_RETRY;
        }
        let store = self.store.clone();
        let copy = st.clone();
        match blocking(move || store.save(&copy)).await {
            Some(Ok(())) => {
                if !done {
                    tracing::info!(
                        id = %st.id,
                        pending = st.pending().len(),
                        retry_in = st.next_attempt.saturating_sub(spool::now()),
                        "delivery deferred"
                    );
                }
                (Some(st), None)
            }
            Some(Err(e)) => {
                tracing::error!(id = %st.id, error = %e, "cannot save queue state; the message is frozen (not tried again) until it can be");
                (Some(st), Some(format!("cannot save state: {e}")))
            }
            None => (Some(st), Some("cannot save state".into())),
        }
    }

    /// Frozen messages are saved (or removed) again when the disk allows,
    /// a few at a time; a full spool is probed so the receiving side takes
    /// mail again when it can. Its own task: the dispatcher never waits on
    /// it.
    async fn maintenance(self: Arc<Self>) {
        const BATCH: usize = 64;
        let mut tick = tokio::time::interval(MAINTENANCE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let spool = self.store.spool().clone();
            if spool.health().is_full() {
                let writable = blocking(move || spool.probe().is_ok()).await == Some(true);
                if !writable {
                    continue;
                }
            }
            let frozen = self.index().frozen();
            for id in frozen.into_iter().take(BATCH) {
                let Some(st) = self.index().take(&id) else {
                    continue;
                };
                let (state, frozen) = self.persist(st).await;
                let thawed = frozen.is_none();
                {
                    let mut ix = self.index();
                    match state {
                        None => ix.remove_busy(&id),
                        Some(st) => ix.settle(&id, st, frozen),
                    }
                }
                if thawed {
                    tracing::info!(%id, "queue state written again; message thawed");
                    self.wake.notify_one();
                } else {
                    break;
                }
            }
        }
    }
}
