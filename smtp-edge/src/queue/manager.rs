//! The queue manager: picks up spooled messages, routes each recipient by
//! outbound connector, delivers through the SMTP client with failover across
//! next hops, records per-recipient results on disk, retries on schedule,
//! and sends DSNs. A message leaves the spool only when every recipient is
//! delivered or bounced; a crash at any point leads at worst to a duplicate.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, Semaphore};

use super::state::{self, MessageState, Next, Outcome, Rcpt};
use crate::config::outbound::Queue as QueueSettings;
use crate::delivery::client::{self, ClientIdentity, ClientSettings, Disposition, Transaction};
use crate::policy::DomainPattern;
use crate::resolve::Resolver;
use crate::routing::{NextHop, Outbound};
use crate::spool::{self, Envelope, Recipient, Spool, Spooled};

/// Everything the manager needs.
pub struct QueueConfig {
    /// Outbound connectors.
    pub connectors: Vec<Outbound>,
    /// Client certificates, loaded once, by connector position.
    pub identities: Vec<Option<Arc<ClientIdentity>>>,
    /// Accepted domains (for `accepted` routing).
    pub accepted: Vec<DomainPattern>,
    /// Retries and limits.
    pub settings: QueueSettings,
    /// This host's name (EHLO default, DSN reporter).
    pub hostname: String,
    /// Trusted roots for certificate validation.
    pub roots: Arc<rustls::RootCertStore>,
    /// DNS.
    pub resolver: Resolver,
    /// Client time limits.
    pub timeouts: client::Timeouts,
}

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
}

/// The manager.
pub struct Manager {
    spool: Arc<Spool>,
    states: PathBuf,
    cfg: Arc<QueueConfig>,
    wake: Arc<Notify>,
    busy: Mutex<HashSet<String>>,
    slots: Arc<Semaphore>,
    per_destination: Mutex<HashMap<String, Arc<Semaphore>>>,
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

/// Refuses anything that is not a queue id before it comes near a path.
fn checked(id: &str) -> Result<&str, QueueError> {
    if spool::valid_id(id) {
        Ok(id)
    } else {
        Err(QueueError::InvalidId(id.chars().take(64).collect()))
    }
}

impl Manager {
    /// A manager over `spool`; `wake` is notified by the receiving side after
    /// each accepted message.
    pub fn new(
        spool: Arc<Spool>,
        cfg: QueueConfig,
        wake: Arc<Notify>,
    ) -> Result<Arc<Manager>, QueueError> {
        let states = spool
            .incoming()
            .parent()
            .unwrap_or(Path::new("."))
            .join("queue");
        crate::fsutil::private_dir(&states)
            .map_err(|e| QueueError::Io(format!("{}: {e}", states.display())))?;
        let slots = Arc::new(Semaphore::new(cfg.settings.max_concurrency as usize));
        Ok(Arc::new(Manager {
            spool,
            states,
            cfg: Arc::new(cfg),
            wake,
            busy: Mutex::new(HashSet::new()),
            slots,
            per_destination: Mutex::new(HashMap::new()),
        }))
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.states.join(format!("{id}.json"))
    }

    fn load_state(&self, msg: &Envelope) -> MessageState {
        state::load(&self.state_path(&msg.id)).unwrap_or_else(|| MessageState::new(msg))
    }

    /// Runs until the task is dropped: a pass over the spool whenever woken,
    /// and at least every second.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.clone().pass();
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Starts a delivery for every message that is due and not in flight.
    fn pass(self: Arc<Self>) {
        let ids = match self.spool.list() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the spool");
                return;
            }
        };
        let now = spool::now();
        let unmark = |id: &str| {
            self.busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
        };
        for id in ids {
            // Checked and marked at once: an admin command (hold, bounce,
            // delete) marks the message the same way while it works on it.
            if !self
                .busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone())
            {
                continue;
            }
            if let Some(st) = state::load(&self.state_path(&id))
                && (st.held || st.next_attempt > now)
            {
                unmark(&id);
                continue;
            }
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                unmark(&id);
                return;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.attempt(&id).await;
                me.busy
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                drop(permit);
            });
        }
    }

    async fn attempt(&self, id: &str) {
        let msg = match self.spool.read(id) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(id, error = %e, "unreadable spool file; left in place");
                return;
            }
        };
        let mut st = self.load_state(&msg.envelope);
        let now = spool::now();
        let pending = st.pending();
        let addresses: Vec<String> = pending
            .iter()
            .map(|&i| msg.envelope.recipients[i].address.clone())
            .collect();
        let split = crate::routing::split(&addresses, &self.cfg.connectors, &self.cfg.accepted);
        for &u in &split.unroutable {
            st.record(
                pending[u],
                Outcome::Failed {
                    remote: None,
                    status: (5, 4, 4),
                    reason: "no outbound connector for this recipient's domain".into(),
                },
                now,
            );
        }
        for route in &split.routes {
            let indices: Vec<usize> = route.recipients.iter().map(|&r| pending[r]).collect();
            let outcomes = self
                .deliver_route(&msg, route.connector, route.domain.as_deref(), &indices)
                .await;
            for (i, o) in outcomes {
                st.record(i, o, spool::now());
            }
        }
        let next = st.after_attempt(
            spool::now(),
            &self.cfg.settings.retry_schedule,
            self.cfg.settings.max_age,
        );
        self.report(&msg, &mut st);
        match next {
            Next::Done => {
                let _ = std::fs::remove_file(self.spool.incoming().join(id));
                let _ = std::fs::remove_file(self.state_path(id));
                tracing::info!(id, "message done");
            }
            Next::RetryAt(t) => {
                if let Err(e) = state::save(&self.state_path(id), &st) {
                    tracing::error!(id, error = %e, "cannot save queue state");
                }
                tracing::info!(
                    id,
                    pending = st.pending().len(),
                    retry_in = t.saturating_sub(spool::now()),
                    "delivery deferred"
                );
            }
        }
    }

    /// Sends the DSNs that are due (failures, delay notice).
    fn report(&self, msg: &Spooled, st: &mut MessageState) {
        let now = spool::now();
        let mut statuses = st.take_failures();
        if st.delay_notice_due(now, self.cfg.settings.delay_notice_after) {
            st.delay_notified = true;
            statuses.extend(st.delays(st.arrived_at + self.cfg.settings.max_age));
        }
        if statuses.is_empty() {
            return;
        }
        let unique = spool::new_id();
        let reporter = crate::dsn::Reporter {
            mta: &self.cfg.hostname,
            now,
            unique: &unique,
            full_limit: crate::dsn::DEFAULT_FULL_LIMIT,
        };
        let to = match crate::dsn::build(&reporter, &msg.envelope, &msg.content, &statuses) {
            Some(dsn) => (dsn.rcpt_to.clone(), dsn.content),
            None if msg.envelope.mail_from.is_empty()
                && !self.cfg.settings.postmaster.is_empty() =>
            {
                // A bounce that bounced: to the postmaster, as a plain report.
                let mut env = msg.envelope.clone();
                env.mail_from = self.cfg.settings.postmaster.clone();
                match crate::dsn::build(&reporter, &env, &msg.content, &statuses) {
                    Some(d) => (d.rcpt_to, d.content),
                    None => return,
                }
            }
            None => {
                if msg.envelope.mail_from.is_empty() {
                    tracing::warn!(id = %msg.envelope.id, "undeliverable bounce dropped (no postmaster configured)");
                }
                return;
            }
        };
        let mut env = Envelope {
            received_at: now,
            mail_from: String::new(),
            recipients: vec![Recipient {
                address: to.0.clone(),
                ..Recipient::default()
            }],
            connector: "dsn".into(),
            helo: self.cfg.hostname.clone(),
            ..Envelope::default()
        };
        let written = self.spool.create().and_then(|mut w| {
            w.write_envelope(&mut env)?;
            w.write(&to.1)?;
            let id = w.id().to_string();
            w.commit().map(|()| id)
        });
        match written {
            Ok(dsn) => {
                tracing::info!(id = %msg.envelope.id, %dsn, to = %to.0, "DSN queued");
                self.wake.notify_one();
            }
            Err(e) => tracing::error!(id = %msg.envelope.id, error = %e, "cannot queue a DSN"),
        }
    }

    fn destination_slots(&self, key: &str) -> Arc<Semaphore> {
        let mut m = self
            .per_destination
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        m.entry(key.to_string())
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    self.cfg.settings.max_per_destination as usize,
                ))
            })
            .clone()
    }

    /// Delivers the recipients `indices` of `msg` through connector `c`,
    /// trying its next hops in order.
    async fn deliver_route(
        &self,
        msg: &Spooled,
        c: usize,
        domain: Option<&str>,
        indices: &[usize],
    ) -> Vec<(usize, Outcome)> {
        let connector = &self.cfg.connectors[c];
        let first_domain = domain
            .map(str::to_string)
            .or_else(|| {
                indices.first().and_then(|&i| {
                    crate::policy::domain_of(&msg.envelope.recipients[i].address)
                        .map(str::to_string)
                })
            })
            .unwrap_or_default();
        let fail_all = |o: Outcome| indices.iter().map(|&i| (i, o.clone())).collect::<Vec<_>>();
        let hops: Vec<(String, Vec<SocketAddr>)> = match &connector.next_hop {
            NextHop::SmartHosts(hosts) => {
                let mut v = Vec::new();
                for h in hosts {
                    match self.cfg.resolver.smart_host(h).await {
                        Ok(addrs) => v.push((h.host.clone(), addrs)),
                        Err(e) => {
                            tracing::info!(host = %h, error = %e, "smart host does not resolve")
                        }
                    }
                }
                v
            }
            NextHop::Mx => match self.cfg.resolver.mx(&first_domain).await {
                Ok(list) => list.into_iter().map(|m| (m.name, m.addrs)).collect(),
                Err(e) => {
                    let o = if e.is_permanent() {
                        Outcome::Failed {
                            remote: None,
                            status: e.status(),
                            reason: e.to_string(),
                        }
                    } else {
                        Outcome::Deferred {
                            remote: None,
                            status: e.status(),
                            reason: e.to_string(),
                        }
                    };
                    return fail_all(o);
                }
            },
        };
        let mut settings = match ClientSettings::for_connector(
            connector,
            &first_domain,
            &self.cfg.hostname,
            self.cfg.roots.clone(),
        ) {
            Ok(s) => s,
            Err(e) => {
                return fail_all(Outcome::Deferred {
                    remote: None,
                    status: (4, 3, 5),
                    reason: e.to_string(),
                });
            }
        };
        settings.client_cert = self.cfg.identities.get(c).cloned().flatten();
        settings.timeouts = self.cfg.timeouts;
        let recipients: Vec<Recipient> = indices
            .iter()
            .map(|&i| msg.envelope.recipients[i].clone())
            .collect();
        let txn = Transaction::new(&msg.envelope, &recipients);
        let mut last = Outcome::Deferred {
            remote: None,
            status: (4, 4, 1),
            reason: format!("no next hop for connector {} answered", connector.name),
        };
        let slots = self.destination_slots(&format!("{}|{first_domain}", connector.name));
        let Ok(_permit) = slots.acquire().await else {
            return fail_all(last);
        };
        for (host, addrs) in hops {
            for addr in addrs {
                match client::deliver(addr, &host, &settings, &txn, &msg.content).await {
                    Ok(outcome) => {
                        let remote = format!("{host} [{}]", addr.ip());
                        tracing::info!(id = %msg.envelope.id, connector = %connector.name, %remote, tls = ?outcome.tls.as_ref().map(|t| &t.version), "delivery attempt");
                        return outcome
                            .per_recipient
                            .iter()
                            .map(|r| {
                                let i = indices[r.index];
                                let o = match r.disposition {
                                    Disposition::Delivered => Outcome::Delivered {
                                        remote: remote.clone(),
                                        reply: r.text.clone(),
                                    },
                                    Disposition::Transient => Outcome::Deferred {
                                        remote: Some(remote.clone()),
                                        status: r.status,
                                        reason: r
                                            .reply
                                            .as_ref()
                                            .map_or(r.text.clone(), |x| x.diagnostic()),
                                    },
                                    Disposition::Permanent => Outcome::Failed {
                                        remote: Some(remote.clone()),
                                        status: r.status,
                                        reason: r
                                            .reply
                                            .as_ref()
                                            .map_or(r.text.clone(), |x| x.diagnostic()),
                                    },
                                };
                                (i, o)
                            })
                            .collect();
                    }
                    Err(e) => {
                        let remote = Some(format!("{host} [{}]", addr.ip()));
                        tracing::info!(id = %msg.envelope.id, connector = %connector.name, %host, %addr, error = %e, "next hop failed");
                        let reason = e.reply().map_or_else(|| e.to_string(), |r| r.diagnostic());
                        last = if e.is_permanent() {
                            Outcome::Failed {
                                remote,
                                status: e.status(),
                                reason,
                            }
                        } else {
                            Outcome::Deferred {
                                remote,
                                status: e.status(),
                                reason,
                            }
                        };
                        if !e.next_host_may_help() {
                            return fail_all(last);
                        }
                    }
                }
            }
        }
        fail_all(last)
    }

    /// `queue list`.
    pub fn list(&self) -> Result<Vec<Listed>, QueueError> {
        let now = spool::now();
        let mut out = Vec::new();
        for id in self
            .spool
            .list()
            .map_err(|e| QueueError::Io(e.to_string()))?
        {
            if let Ok(m) = self.spool.read(&id) {
                let st = self.load_state(&m.envelope);
                out.push(Listed {
                    age: now.saturating_sub(m.envelope.received_at),
                    sender: m.envelope.mail_from.clone(),
                    recipients: m
                        .envelope
                        .recipients
                        .iter()
                        .map(|r| r.address.clone())
                        .zip(st.recipients.iter().cloned())
                        .collect(),
                    next_attempt: st.next_attempt,
                    held: st.held,
                    attempts: st.attempts,
                    id,
                });
            }
        }
        Ok(out)
    }

    /// `queue show ID`: the listing plus the message headers.
    pub fn show(&self, id: &str) -> Result<(Listed, String), QueueError> {
        let id = checked(id)?;
        let listed = self
            .list()?
            .into_iter()
            .find(|l| l.id == id)
            .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
        let m = self
            .spool
            .read(id)
            .map_err(|e| QueueError::Io(e.to_string()))?;
        let end = memchr::memmem::find(&m.content, b"\r\n\r\n").map_or(m.content.len(), |p| p + 2);
        Ok((
            listed,
            String::from_utf8_lossy(&m.content[..end]).into_owned(),
        ))
    }

    /// Marks `id` busy while `f` runs, so no delivery starts meanwhile (a
    /// delivery that loaded the state before an admin change would save the
    /// old state over it); `Busy` when a delivery is running.
    fn exclusive<T>(
        &self,
        id: &str,
        f: impl FnOnce() -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let id = checked(id)?;
        if !self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string())
        {
            return Err(QueueError::Busy(id.to_string()));
        }
        let r = f();
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        r
    }

    fn modify(&self, id: &str, f: impl FnOnce(&mut MessageState)) -> Result<(), QueueError> {
        self.exclusive(id, || {
            let m = self
                .spool
                .read(id)
                .map_err(|_| QueueError::NotFound(id.to_string()))?;
            let mut st = self.load_state(&m.envelope);
            f(&mut st);
            state::save(&self.state_path(id), &st).map_err(|e| QueueError::Io(e.to_string()))
        })?;
        self.wake.notify_one();
        Ok(())
    }

    /// `queue flush [ID]`: retry now.
    pub fn flush(&self, id: Option<&str>) -> Result<usize, QueueError> {
        let ids = match id {
            Some(id) => vec![checked(id)?.to_string()],
            None => self
                .spool
                .list()
                .map_err(|e| QueueError::Io(e.to_string()))?,
        };
        let mut n = 0;
        for id in ids {
            match self.modify(&id, |st| st.next_attempt = 0) {
                Ok(()) => n += 1,
                Err(QueueError::Busy(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// `queue hold ID` / `queue release ID`.
    pub fn hold(&self, id: &str, held: bool) -> Result<(), QueueError> {
        self.modify(id, |st| st.held = held)
    }

    /// `queue bounce ID`: fail every pending recipient now (the sender gets a DSN).
    pub fn bounce(&self, id: &str) -> Result<(), QueueError> {
        self.modify(id, |st| {
            st.bounce_all(spool::now(), "returned to the sender by the administrator");
            st.next_attempt = 0;
        })
    }

    /// `queue delete ID`: remove without telling anyone.
    pub fn delete(&self, id: &str) -> Result<(), QueueError> {
        self.exclusive(id, || {
            std::fs::remove_file(self.spool.incoming().join(id))
                .map_err(|_| QueueError::NotFound(id.to_string()))?;
            let _ = std::fs::remove_file(self.state_path(id));
            Ok(())
        })?;
        tracing::warn!(id, "message deleted by the administrator");
        Ok(())
    }
}
