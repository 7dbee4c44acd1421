//! The receiving service: the spool, the listeners and the server
//! configuration every new connection takes. A reload binds new addresses
//! before anything changes, stops accepting on removed ones (their sessions
//! finish) and publishes a configuration rebuilt from the file (certificates
//! and keys read again); a new Exchange Online list republishes the
//! inbound connectors' sources.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::DaemonError;
use crate::config::Config;
use crate::inbound::server::{self, ConnectionLimits, Mode, ServerConfig};
use crate::inbound::submission::guard::Guard;
use crate::queue::QueueSlot;
use crate::queue::spool::Spool;

/// A configuration ready to be put in force.
pub struct Prepared {
    server: ServerConfig,
    guard: crate::inbound::submission::guard::Settings,
    new_listeners: Vec<(SocketAddr, Mode, TcpListener)>,
    removed: Vec<SocketAddr>,
}

/// The receiving side of a running daemon.
pub struct Receiver {
    spool: Arc<Spool>,
    current: watch::Sender<Arc<ServerConfig>>,
    listeners: Mutex<BTreeMap<SocketAddr, (Mode, JoinHandle<()>)>>,
    limits: ConnectionLimits,
    /// AUTH failure counts and rates: kept across reloads.
    guard: Arc<Guard>,
}

/// Every address the configuration listens on, with its mode.
fn wanted(config: &Config) -> Vec<(SocketAddr, Mode)> {
    let mut out: Vec<(SocketAddr, Mode)> = config
        .smtp
        .listen
        .iter()
        .map(|a| (*a, Mode::Smtp))
        .collect();
    out.extend(
        config
            .submission
            .listen
            .iter()
            .map(|a| (*a, Mode::Submission)),
    );
    out.extend(
        config
            .submission
            .listen_tls
            .iter()
            .map(|a| (*a, Mode::SubmissionTls)),
    );
    out
}

/// The server for `config`, with the accounts of its state directory.
fn build(
    config: &Config,
    spool: Arc<Spool>,
    exchange: &[IpNet],
    guard: &Arc<Guard>,
) -> Result<ServerConfig, server::SetupError> {
    let mut cfg = ServerConfig::from_config(
        &config.smtp,
        &config.submission,
        &config.dns,
        spool,
        exchange,
    )?;
    if config.submission.enabled() {
        cfg.accounts = Some(crate::inbound::auth::Accounts {
            store: crate::inbound::submission::devices::Store::new(&config.daemon.state_dir),
            guard: guard.clone(),
        });
    }
    Ok(cfg)
}

impl Receiver {
    /// Opens the spool, builds the server, binds every address and starts
    /// accepting.
    pub async fn start(
        config: &Config,
        exchange: &[IpNet],
        metrics: crate::inbound::metrics::SmtpMetrics,
    ) -> Result<Receiver, DaemonError> {
        let smtp = &config.smtp;
        let spool = ServerConfig::open_spool(smtp)?;
        let guard = Arc::new(Guard::new(config.submission.guard));
        let mut cfg = build(config, spool.clone(), exchange, &guard)?;
        cfg.metrics = metrics;
        let addrs = wanted(config);
        let bound = server::bind(&addrs.iter().map(|(a, _)| *a).collect::<Vec<_>>()).await?;
        let (current, _) = watch::channel(Arc::new(cfg));
        let r = Receiver {
            spool,
            current,
            listeners: Mutex::new(BTreeMap::new()),
            limits: ConnectionLimits::default(),
            guard,
        };
        {
            let mut map = r.listeners();
            for ((addr, mode), l) in addrs.iter().zip(bound) {
                map.insert(
                    *addr,
                    (
                        *mode,
                        server::spawn_listener(l, *mode, r.current.subscribe(), &r.limits),
                    ),
                );
            }
        }
        tracing::info!(listen = ?smtp.listen, hostname = %smtp.hostname, "SMTP listening");
        if config.submission.enabled() {
            tracing::info!(
                starttls = ?config.submission.listen,
                implicit_tls = ?config.submission.listen_tls,
                "submission (SMTP AUTH) listening"
            );
            let store = crate::inbound::submission::devices::Store::new(&config.daemon.state_dir);
            match store.load() {
                Ok(d) if d.is_empty() => {
                    tracing::warn!(file = %store.path().display(), "no device accounts yet (smtp-edge device add)")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(
                    "device accounts: {e}; every AUTH is answered 454 until it is fixed"
                ),
            }
            for n in &config.submission.plaintext_auth_sources {
                tracing::warn!(source = %n, "SMTP AUTH without TLS is allowed from this source (legacy devices)");
            }
        }
        Ok(r)
    }

    fn listeners(&self) -> std::sync::MutexGuard<'_, BTreeMap<SocketAddr, (Mode, JoinHandle<()>)>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The spool (the queue works on it).
    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Where accepted messages are announced to the queue.
    pub fn queue_slot(&self) -> Arc<QueueSlot> {
        self.current.borrow().queue.clone()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u32 {
        self.limits.open()
    }

    /// The addresses listened on.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners().keys().copied().collect()
    }

    /// The inbound connectors in force: name and sources.
    pub fn connectors(&self) -> Vec<(String, usize, bool)> {
        self.current
            .borrow()
            .connectors
            .iter()
            .map(|c| {
                (
                    c.policy.name.clone(),
                    c.policy.sources.len(),
                    c.trust.is_some(),
                )
            })
            .collect()
    }

    /// Builds the server for `config` and binds the addresses not yet
    /// listened on (or listened on in another mode); nothing is in force
    /// until [`Receiver::commit`].
    pub async fn prepare(&self, config: &Config, exchange: &[IpNet]) -> Result<Prepared, String> {
        let mut server =
            build(config, self.spool.clone(), exchange, &self.guard).map_err(|e| e.to_string())?;
        // One queue slot and one set of metrics for the life of the process.
        server.queue = self.queue_slot();
        server.metrics = self.current.borrow().metrics.clone();
        let running: Vec<(SocketAddr, Mode)> = self
            .listeners()
            .iter()
            .map(|(a, (m, _))| (*a, *m))
            .collect();
        let wanted = wanted(config);
        let mut new_listeners = Vec::new();
        for (addr, mode) in wanted.iter().filter(|w| !running.contains(w)) {
            let mut l = server::bind(std::slice::from_ref(addr))
                .await
                .map_err(|e| e.to_string())?;
            if let Some(l) = l.pop() {
                new_listeners.push((*addr, *mode, l));
            }
        }
        let removed = running
            .into_iter()
            .filter(|r| !wanted.contains(r))
            .map(|(a, _)| a)
            .collect();
        Ok(Prepared {
            server,
            guard: config.submission.guard,
            new_listeners,
            removed,
        })
    }

    /// Puts a prepared configuration in force.
    pub fn commit(&self, p: Prepared) {
        self.guard.configure(p.guard);
        self.current.send_replace(Arc::new(p.server));
        let mut map = self.listeners();
        for addr in p.removed {
            if let Some((_, task)) = map.remove(&addr) {
                task.abort();
                tracing::info!(%addr, "SMTP no longer listening (removed by reload); open sessions finish");
            }
        }
        for (addr, mode, l) in p.new_listeners {
            tracing::info!(%addr, ?mode, "SMTP listening (added by reload)");
            if let Some((_, old)) = map.insert(
                addr,
                (
                    mode,
                    server::spawn_listener(l, mode, self.current.subscribe(), &self.limits),
                ),
            ) {
                old.abort();
            }
        }
    }

    /// Republishes the configuration in force with another Exchange Online
    /// list.
    pub fn set_exchange(&self, exchange: &[IpNet]) {
        let next = self.current.borrow().with_exchange(exchange);
        self.current.send_replace(Arc::new(next));
    }

    /// Stops accepting everywhere (shutdown).
    pub fn stop(&self) {
        for (_, (_, task)) in std::mem::take(&mut *self.listeners()) {
            task.abort();
        }
    }
}
