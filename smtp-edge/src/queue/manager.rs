//! The queue manager: keeps every queued message in memory ([`Index`]),
//! wakes when the earliest is due or a new one arrives, and runs delivery
//! attempts ([`super::attempt`]) within the limits; records their results
//! and sends DSNs ([`super::report`]). A message leaves the spool only when
//! every recipient is delivered or bounced and every bounce is queued; a
//! crash at any point leads at worst to a duplicate.
//!
//! This file is the dispatcher and the manager's public types;
//! [`super::upkeep`] loads the queue at start, writes states (freezing a
//! message whose state cannot be saved) and thaws frozen ones;
//! [`super::commands`] answers the queue commands.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Notify, mpsc};

use super::attempt;
use super::index::{Counts, Dispatch, Entry, Finish, Index, Summary};
use super::metrics::{QueueCounts, QueueMetrics};
use super::report::{self, Plan, Reporting};
use super::state::{MessageState, Rcpt};
use super::store::Store;
use crate::queue::spool::{self, Envelope, SpoolError};

pub use super::config::QueueConfig;

/// How long a message whose DSN could not be queued waits before trying
/// again.
pub(super) const REPORT_RETRY: u64 = 60;
/// The longest sleep without looking at the clock.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// One message as `smtp-edge queue list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// Queue id.
    pub id: String,
    /// Seconds in the queue.
    pub age: u64,
    /// Sender.
    pub sender: String,
    /// Recipients with their state.
    pub recipients: Vec<(String, Rcpt)>,
    /// Next attempt (seconds since the epoch).
    pub next_attempt: u64,
    /// Held by the admin.
    pub held: bool,
    /// Attempts so far.
    pub attempts: u32,
    /// Not tried until its state can be saved (why).
    pub frozen: Option<String>,
    /// Quarantined in `corrupt/` (why): not delivered.
    pub corrupt: Option<String>,
    /// Being delivered right now.
    pub busy: bool,
}

/// Errors of queue commands.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No such message.
    #[error("no message {0} in the queue")]
    NotFound(String),
    /// A delivery is running for it.
    #[error("message {0} is being delivered right now; try again in a moment")]
    Busy(String),
    /// Spool or state I/O.
    #[error("{0}")]
    Io(String),
    /// Not a queue id (ids are lower-case hex).
    #[error("`{0}` is not a queue id")]
    InvalidId(String),
}

/// How the receiving side hands the queue a message it just accepted.
#[derive(Debug, Clone)]
pub struct QueueHandle(pub(super) mpsc::UnboundedSender<Envelope>);

impl QueueHandle {
    /// A message is in the spool (its envelope, id set).
    pub fn arrived(&self, envelope: Envelope) {
        let _ = self.0.send(envelope);
    }
}

/// Where the receiving side finds the queue: empty until the queue runs
/// (without outbound connectors it does not), one slot shared by every
/// server configuration so a session that began before the queue started
/// still hands its messages over.
#[derive(Debug, Default)]
pub struct QueueSlot(std::sync::RwLock<Option<QueueHandle>>);

impl QueueSlot {
    /// Tells the queue about a message, when one runs.
    pub fn arrived(&self, envelope: Envelope) {
        if let Some(q) = &*self.0.read().unwrap_or_else(|p| p.into_inner()) {
            q.arrived(envelope);
        }
    }

    /// Whether a queue takes the messages.
    pub fn is_set(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    pub(super) fn set(&self, handle: Option<QueueHandle>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = handle;
    }
}

/// The manager.
pub struct Manager {
    pub(super) store: Store,
    pub(super) cfg: RwLock<Arc<QueueConfig>>,
    pub(super) index: Mutex<Index>,
    pub(super) wake: Notify,
    pub(super) metrics: QueueMetrics,
}

/// Where the daemon keeps the manager (none until the queue runs); the
/// queue's size metric reads it at each scrape.
pub type ManagerSlot = Arc<Mutex<Option<Arc<Manager>>>>;

impl QueueCounts for ManagerSlot {
    fn counts(&self) -> Counts {
        self.lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|m| m.counts())
            .unwrap_or_default()
    }
}

/// The destinations an attempt holds slots of (those of its dispatch and
/// those it claimed), and the first one it found full.
struct Claims {
    held: Vec<String>,
    claimed: Vec<String>,
    blocked: Option<String>,
}

/// What one attempt did.
struct Attempted {
    state: Option<MessageState>,
    frozen: Option<String>,
    dsn: Option<Envelope>,
    park_on: Option<String>,
}

pub(super) fn summary(env: &Envelope) -> Summary {
    Summary {
        mail_from: env.mail_from.as_str().into(),
        recipients: env
            .recipients
            .iter()
            .map(|r| r.address.as_str().into())
            .collect(),
        notification: env.notification(),
        received_at: env.received_at,
        route: env.route.as_deref().map(Into::into),
    }
}

/// Runs blocking file work off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "queue file task failed");
            None
        }
    }
}

impl Manager {
    /// The configuration in force.
    pub fn config(&self) -> Arc<QueueConfig> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes a new configuration (reload): attempts that run keep theirs,
    /// the next ones use this; the index keeps counting their sessions.
    pub fn reconfigure(&self, cfg: QueueConfig) {
        let old = std::mem::replace(
            &mut *self.cfg.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(cfg),
        );
        // Its sessions were opened under the old settings; none crosses.
        old.sessions.retire();
        self.wake.notify_one();
    }

    pub(super) fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages by state.
    pub fn counts(&self) -> Counts {
        self.index().counts()
    }

    pub(super) async fn run(self: Arc<Self>, mut arrivals: mpsc::UnboundedReceiver<Envelope>) {
        loop {
            self.dispatch();
            let sleep = {
                let ix = self.index();
                let full = ix.running() >= self.config().settings.max_concurrency as usize;
                let now = spool::now();
                match ix.next_due() {
                    // Nothing can start before an attempt ends (it wakes us).
                    _ if full => MAX_SLEEP,
                    None => MAX_SLEEP,
                    // Due times are whole seconds: just after one turns.
                    Some(t) if t > now => {
                        Duration::from_secs(t - now).min(MAX_SLEEP) + Duration::from_millis(5)
                    }
                    Some(_) => Duration::ZERO,
                }
            };
            tokio::select! {
                arrived = arrivals.recv() => {
                    let Some(env) = arrived else { return };
                    let mut ix = self.index();
                    ix.insert(summary(&env), MessageState::new(&env));
                    while let Ok(env) = arrivals.try_recv() {
                        ix.insert(summary(&env), MessageState::new(&env));
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Starts an attempt for every message due, within the limits.
    fn dispatch(self: &Arc<Self>) {
        let cfg = self.config();
        let now = spool::now();
        let started = self.index().take_due(
            now,
            cfg.settings.max_concurrency as usize,
            cfg.settings.max_per_destination,
            |e: &Entry| {
                let pending: Vec<&str> = e
                    .state
                    .pending()
                    .into_iter()
                    .filter_map(|i| e.summary.recipients.get(i).map(|r| &**r))
                    .collect();
                attempt::destinations(&cfg, &pending)
            },
        );
        for d in started {
            let me = self.clone();
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let claims = Arc::new(Mutex::new(Claims {
                    held: d.destinations.clone(),
                    claimed: Vec::new(),
                    blocked: None,
                }));
                let before = me.index().get(&d.id).map(|e| e.state.clone());
                // Run apart: a panic must not leave the message busy and
                // its slots taken for good.
                let (me2, d2, c2) = (me.clone(), d.clone(), claims.clone());
                let run = tokio::spawn(async move { me2.attempt(&cfg, &d2, &c2).await }).await;
                let a = run.unwrap_or_else(|e| {
                    tracing::error!(id = %d.id, error = %e, "delivery attempt failed; the message is frozen");
                    Attempted {
                        state: before,
                        frozen: Some("the delivery attempt failed (see the log)".into()),
                        dsn: None,
                        park_on: None,
                    }
                });
                let held =
                    std::mem::take(&mut claims.lock().unwrap_or_else(|p| p.into_inner()).claimed);
                let max = me.config().settings.max_per_destination;
                let mut ix = me.index();
                if let Some(env) = a.dsn {
                    ix.insert(summary(&env), MessageState::new(&env));
                }
                ix.finish(
                    &d,
                    Finish {
                        state: a.state,
                        frozen: a.frozen,
                        held,
                        park_on: a.park_on,
                    },
                    max,
                );
                drop(ix);
                me.wake.notify_one();
            });
        }
    }

    /// A slot of `key` for an attempt (already held, or claimed now);
    /// `false` when it is full.
    fn claim(&self, claims: &Mutex<Claims>, key: &str) -> bool {
        let mut c = claims.lock().unwrap_or_else(|p| p.into_inner());
        if c.held.iter().any(|k| k == key) {
            return true;
        }
        let max = self.config().settings.max_per_destination;
        if self.index().claim(key, max) {
            c.held.push(key.to_string());
            c.claimed.push(key.to_string());
            true
        } else {
            c.blocked.get_or_insert_with(|| key.to_string());
            false
        }
    }

    /// One attempt: routes, claims the destinations, delivers what it got
    /// slots for, records, reports, persists.
    async fn attempt(&self, cfg: &QueueConfig, d: &Dispatch, claims: &Mutex<Claims>) -> Attempted {
        let id = d.id.to_string();
        let gone = Attempted {
            state: None,
            frozen: None,
            dsn: None,
            park_on: None,
        };
        let Some((mut st, addresses, route)) = self.index().get(&id).map(|e| {
            (
                e.state.clone(),
                e.summary
                    .recipients
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>(),
                e.summary.route.as_deref().map(str::to_string),
            )
        }) else {
            return gone;
        };
        let pending: Vec<(usize, String)> = st
            .pending()
            .into_iter()
            .filter_map(|i| addresses.get(i).map(|a| (i, a.clone())))
            .collect();
        // Next hops first: a full destination costs no file read.
        let (routes, mut outcomes) = attempt::routes(cfg, &pending, route.as_deref()).await;
        for (_, o) in &outcomes {
            // Settled before any next hop: unroutable, null MX, no address.
            self.metrics.outcome("none", o);
        }
        let ready: Vec<attempt::Route> = routes
            .into_iter()
            .filter(|r| self.claim(claims, &r.key))
            .collect();
        let park_on = claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .blocked
            .clone();
        if ready.is_empty() && outcomes.is_empty() && park_on.is_some() && !st.has_unreported() {
            // Its destination is full: it waits in that line, unchanged.
            return Attempted {
                state: Some(st),
                park_on,
                ..gone
            };
        }
        if !ready.is_empty() || (outcomes.is_empty() && park_on.is_none()) || st.has_unreported() {
            let store = self.store.clone();
            let id2 = id.clone();
            let opened = blocking(move || store.open(&id2)).await;
            let (env, content) = match opened {
                Some(Ok(x)) => x,
                Some(Err(SpoolError::Io { source, .. }))
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    tracing::warn!(id, "queued message gone from the spool");
                    let store = self.store.clone();
                    blocking(move || store.remove(&id)).await;
                    return gone;
                }
                Some(Err(e @ SpoolError::Format { .. })) => {
                    self.quarantine(&id, &e.to_string()).await;
                    return gone;
                }
                other => {
                    let why = match other {
                        Some(Err(e)) => e.to_string(),
                        _ => "spool read task failed".into(),
                    };
                    tracing::error!(id, error = %why, "cannot read a queued message; trying again later");
                    st.next_attempt = spool::now() + REPORT_RETRY;
                    return Attempted {
                        state: Some(st),
                        ..gone
                    };
                }
            };
            if !st.fits(&env) {
                self.quarantine(&id, "the state does not fit the envelope")
                    .await;
                return gone;
            }
            for r in &ready {
                let started = Instant::now();
                let got = attempt::deliver_route(cfg, &env, &content, r, &self.metrics).await;
                let name = cfg
                    .connectors
                    .get(r.connector)
                    .map_or("none", |c| c.name.as_str());
                self.metrics
                    .attempt(name, started.elapsed().as_secs_f64(), &got);
                outcomes.extend(got);
            }
            return self.conclude(cfg, &env, st, outcomes, park_on).await;
        }
        // Nothing could go: it waits for its destination (no attempt is
        // counted), or it has only outcomes without a next hop.
        let store = self.store.clone();
        let id2 = id.clone();
        match blocking(move || store.envelope(&id2)).await {
            Some(Ok(env)) if st.fits(&env) => self.conclude(cfg, &env, st, outcomes, park_on).await,
            Some(Ok(_)) => {
                self.quarantine(&id, "the state does not fit the envelope")
                    .await;
                gone
            }
            Some(Err(e @ SpoolError::Format { .. })) => {
                self.quarantine(&id, &e.to_string()).await;
                gone
            }
            _ => {
                st.next_attempt = spool::now() + REPORT_RETRY;
                Attempted {
                    state: Some(st),
                    ..gone
                }
            }
        }
    }

    /// Records outcomes (an attempt counts when there were any), reports
    /// and persists.
    async fn conclude(
        &self,
        cfg: &QueueConfig,
        env: &Envelope,
        mut st: MessageState,
        outcomes: Vec<(usize, super::state::Outcome)>,
        park_on: Option<String>,
    ) -> Attempted {
        let before = st.clone();
        if !outcomes.is_empty() {
            let now = spool::now();
            for (i, o) in outcomes {
                st.record(i, o, now);
            }
            st.after_attempt(now, &cfg.settings.retry_schedule, cfg.settings.max_age);
        }
        let dsn = self.report(cfg, env, &mut st).await;
        if st == before && dsn.is_none() && !st.pending().is_empty() {
            // Nothing happened to it: nothing to write.
            return Attempted {
                state: Some(st),
                frozen: None,
                dsn,
                park_on,
            };
        }
        let (state, frozen) = self.persist(st).await;
        Attempted {
            state,
            frozen,
            dsn,
            park_on,
        }
    }

    /// Sends what DSN is due; marks the recipients reported only once it is
    /// on disk. The DSN's envelope, when one was queued.
    async fn report(
        &self,
        cfg: &QueueConfig,
        env: &Envelope,
        st: &mut MessageState,
    ) -> Option<Envelope> {
        let now = spool::now();
        let unique = spool::new_id();
        let r = Reporting {
            hostname: &cfg.hostname,
            postmaster: &cfg.settings.postmaster,
            delay_notice_after: cfg.settings.delay_notice_after,
            max_age: cfg.settings.max_age,
            now,
            unique: &unique,
        };
        let (statuses, delay) = report::due(st, env, &r);
        if statuses.is_empty() {
            return None;
        }
        let whole = report::wants_whole(env, &statuses);
        let (store, id) = (self.store.clone(), env.id.clone());
        let original = match blocking(move || {
            store.original(&id, whole, crate::queue::dsn::DEFAULT_FULL_LIMIT)
        })
        .await
        {
            Some(Ok(o)) => o,
            _ => Vec::new(),
        };
        match report::plan(env, &statuses, delay, &original, &r) {
            Plan::Nothing => None,
            Plan::Drop { covers, delay, why } => {
                tracing::warn!(id = %env.id, recipients = covers.len(), "{why}");
                st.mark_reported(&covers);
                st.delay_notified |= delay;
                None
            }
            Plan::Send {
                envelope,
                content,
                covers,
                delay,
            } => {
                let store = self.store.clone();
                let to_queue = (*envelope).clone();
                let queued = blocking(move || store.enqueue(to_queue, &content)).await;
                match queued {
                    Some(Ok(dsn_id)) => {
                        tracing::info!(id = %env.id, dsn = %dsn_id, to = %envelope.recipients[0].address, kind = ?envelope.notification, "DSN queued");
                        st.mark_reported(&covers);
                        st.delay_notified |= delay;
                        Some(Envelope {
                            id: dsn_id,
                            ..*envelope
                        })
                    }
                    Some(Err(e)) => {
                        tracing::error!(id = %env.id, error = %e, "cannot queue a DSN; the message stays until it can");
                        None
                    }
                    None => None,
                }
            }
        }
    }
}
