//! The configuration the queue runs under: connectors, client identities,
//! `[queue]` settings, DNS and the sessions kept between deliveries, built
//! from the file's sections ([`QueueConfig::load`]) and swapped whole on
//! reload. Read by the
//! manager ([`super::manager`]) and by each delivery attempt
//! ([`super::attempt`]).

use std::sync::Arc;

use crate::address::DomainPattern;
use crate::config::Config;
use crate::config::outbound::Queue as QueueSettings;
use crate::outbound::client::ClientIdentity;
use crate::outbound::routing::Outbound;
use crate::resolve::Resolver;

/// Everything the manager needs; swapped whole on reload.
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
    /// Trusted roots for certificate validation, by connector position.
    pub roots: Vec<Arc<rustls::RootCertStore>>,
    /// TLS configurations kept per next hop, by connector position.
    pub tls_configs: Vec<Arc<crate::outbound::client::TlsConfigs>>,
    /// DNS.
    pub resolver: Resolver,
    /// Sessions kept open between deliveries (this configuration's).
    pub sessions: Arc<super::sessions::Sessions>,
}

/// Why the queue's configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum QueueSetupError {
    /// A client certificate, key or CA file.
    #[error(transparent)]
    Certificate(#[from] crate::certs::CertError),
    /// A CA file's certificate that is not a usable trust anchor.
    #[error("{path}: {message}")]
    Trust {
        /// The CA file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The resolver (`[dns]`).
    #[error(transparent)]
    Resolver(#[from] crate::resolve::ResolveError),
}

impl QueueConfig {
    /// The queue's configuration from the file: client certificates and CA
    /// files loaded (once per reload), the resolver made.
    pub fn load(config: &Config) -> Result<QueueConfig, QueueSetupError> {
        let mut identities = Vec::new();
        for c in &config.outbound {
            identities.push(match &c.client_cert {
                Some(cc) => Some(Arc::new(ClientIdentity::load(cc)?)),
                None => None,
            });
        }
        let resolver = Resolver::new(&config.dns)?;
        let system = crate::outbound::client::system_roots();
        let mut roots = Vec::new();
        for c in &config.outbound {
            roots.push(match &c.tls_trust {
                None => system.clone(),
                Some(path) => {
                    let mut store = rustls::RootCertStore::empty();
                    for cert in crate::certs::load_chain(path)? {
                        store.add(cert).map_err(|e| QueueSetupError::Trust {
                            path: path.display().to_string(),
                            message: e.to_string(),
                        })?;
                    }
                    Arc::new(store)
                }
            });
        }
        Ok(QueueConfig {
            connectors: config.outbound.clone(),
            identities,
            accepted: config.smtp.accepted.clone(),
            settings: config.queue.clone(),
            hostname: config.smtp.hostname.clone(),
            tls_configs: config.outbound.iter().map(|_| Arc::default()).collect(),
            roots,
            resolver,
            sessions: Arc::new(super::sessions::Sessions::new(
                std::time::Duration::from_secs(config.queue.session_cache_time),
                config.queue.max_concurrency as usize,
            )),
        })
    }
}
