//! The configuration the queue runs under: connectors, client identities,
//! `[queue]` settings, DNS and the sessions kept between deliveries, made
//! by the daemon from the file and swapped whole on reload. Read by the
//! manager ([`super::manager`]) and by each delivery attempt
//! ([`super::attempt`]).

use std::sync::Arc;

use crate::address::DomainPattern;
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
