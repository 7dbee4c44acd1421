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
use crate::config::dns::Dns;
use crate::config::smtp::Smtp;
use crate::queue::QueueSlot;
use crate::smtp::server::{self, ConnectionLimits, ServerConfig};
use crate::spool::Spool;

/// A configuration ready to be put in force.
pub struct Prepared {
    server: ServerConfig,
    new_listeners: Vec<(SocketAddr, TcpListener)>,
    removed: Vec<SocketAddr>,
}

/// The receiving side of a running daemon.
pub struct Receiver {
    spool: Arc<Spool>,
    current: watch::Sender<Arc<ServerConfig>>,
    listeners: Mutex<BTreeMap<SocketAddr, JoinHandle<()>>>,
    limits: ConnectionLimits,
}

impl Receiver {
    /// Opens the spool, builds the server, binds every address and starts
    /// accepting.
    pub async fn start(
        smtp: &Smtp,
        dns: &Dns,
        exchange: &[IpNet],
        metrics: crate::smtp::metrics::SmtpMetrics,
    ) -> Result<Receiver, DaemonError> {
        let spool = ServerConfig::open_spool(smtp)?;
        let mut cfg = ServerConfig::from_config(smtp, dns, spool.clone(), exchange)?;
        cfg.metrics = metrics;
        let bound = server::bind(&smtp.listen).await?;
        let (current, _) = watch::channel(Arc::new(cfg));
        let r = Receiver {
            spool,
            current,
            listeners: Mutex::new(BTreeMap::new()),
            limits: ConnectionLimits::default(),
        };
        {
            let mut map = r.listeners();
            for (addr, l) in smtp.listen.iter().zip(bound) {
                map.insert(
                    *addr,
                    server::spawn_listener(l, r.current.subscribe(), &r.limits),
                );
            }
        }
        tracing::info!(listen = ?smtp.listen, hostname = %smtp.hostname, "SMTP listening");
        Ok(r)
    }

    fn listeners(&self) -> std::sync::MutexGuard<'_, BTreeMap<SocketAddr, JoinHandle<()>>> {
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

    /// Builds the server for `smtp` and binds the addresses not yet
    /// listened on; nothing is in force until [`Receiver::commit`].
    pub async fn prepare(
        &self,
        smtp: &Smtp,
        dns: &Dns,
        exchange: &[IpNet],
    ) -> Result<Prepared, String> {
        let mut server = ServerConfig::from_config(smtp, dns, self.spool.clone(), exchange)
            .map_err(|e| e.to_string())?;
        // One queue slot and one set of metrics for the life of the process.
        server.queue = self.queue_slot();
        server.metrics = self.current.borrow().metrics.clone();
        let running: Vec<SocketAddr> = self.listeners().keys().copied().collect();
        let mut new_listeners = Vec::new();
        for addr in smtp.listen.iter().filter(|a| !running.contains(a)) {
            let mut l = server::bind(std::slice::from_ref(addr))
                .await
                .map_err(|e| e.to_string())?;
            if let Some(l) = l.pop() {
                new_listeners.push((*addr, l));
            }
        }
        let removed = running
            .into_iter()
            .filter(|a| !smtp.listen.contains(a))
            .collect();
        Ok(Prepared {
            server,
            new_listeners,
            removed,
        })
    }

    /// Puts a prepared configuration in force.
    pub fn commit(&self, p: Prepared) {
        self.current.send_replace(Arc::new(p.server));
        let mut map = self.listeners();
        for (addr, l) in p.new_listeners {
            tracing::info!(%addr, "SMTP listening (added by reload)");
            map.insert(
                addr,
                server::spawn_listener(l, self.current.subscribe(), &self.limits),
            );
        }
        for addr in p.removed {
            if let Some(task) = map.remove(&addr) {
                task.abort();
                tracing::info!(%addr, "SMTP no longer listening (removed by reload); open sessions finish");
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
        for (_, task) in std::mem::take(&mut *self.listeners()) {
            task.abort();
        }
    }
}
