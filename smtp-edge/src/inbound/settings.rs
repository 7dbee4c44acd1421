//! What one connection's session needs, built from the configuration: the
//! connectors with their trust, TLS, the message and header limits, the
//! timeouts, the spool, the device accounts, the metrics and the queue's
//! slot. [`super::server`] hands it to every connection it accepts;
//! [`super::connection`] and the modules under it read it and never look
//! at the listeners.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::session::SessionConfig;
use crate::inbound::policy::Inbound;
use crate::inbound::tls::ClientTrust;
use crate::queue::spool::Spool;
use crate::smtp::data::DataConfig;
use crate::smtp::header::{self, Policy};

/// One inbound connector with the trust for its client certificates.
#[derive(Clone)]
pub struct Connector {
    /// Policy (its sources include the Exchange Online list in force when
    /// the connector names `exchange-online`).
    pub policy: Arc<Inbound>,
    /// Trust (when the connector checks client certificates).
    pub trust: Option<ClientTrust>,
    /// The sources written in the configuration.
    configured_sources: Vec<IpNet>,
    /// Whether `exchange-online` is among them.
    exchange_online: bool,
}

impl Connector {
    fn with_exchange(&self, exchange: &[IpNet]) -> Connector {
        let mut policy = (*self.policy).clone();
        policy.sources = self.configured_sources.clone();
        if self.exchange_online {
            policy.sources.extend_from_slice(exchange);
        }
        Connector {
            policy: Arc::new(policy),
            ..self.clone()
        }
    }
}

/// Everything the server and each of its sessions need.
#[derive(Clone)]
pub struct ServerConfig {
    /// Session settings.
    pub session: Arc<SessionConfig>,
    /// Connectors.
    pub connectors: Vec<Connector>,
    /// TLS, when configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Message content policy.
    pub data: DataConfig,
    /// Header fields untrusted connectors may not bring in.
    pub headers: Arc<Policy>,
    /// Header line and `Received:` limits.
    pub header_limits: header::Limits,
    /// Octets per command line.
    pub command_line_limit: usize,
    /// Connections in total.
    pub max_connections: u32,
    /// Connections per source network.
    pub max_connections_per_source: u32,
    /// Prefix lengths that make one source for the per-source limit (IPv4,
    /// IPv6).
    pub source_prefix: (u8, u8),
    /// Waiting for a command.
    pub command_timeout: Duration,
    /// Waiting for message data.
    pub data_timeout: Duration,
    /// The whole session.
    pub session_timeout: Duration,
    /// Octets per second a client must average in DATA/BDAT (0: no minimum).
    pub min_data_rate: u64,
    /// Where accepted messages go.
    pub spool: Arc<Spool>,
    /// Verifies DKIM for connectors with tenants (built when one has).
    pub authenticator: Option<crate::inbound::tenant::verify::Authenticator>,
    /// Device accounts for the submission listeners (when configured).
    pub accounts: Option<super::auth::Accounts>,
    /// `[submission]`.
    pub submission: crate::config::submission::Submission,
    /// The receiving side's metrics (shared by every configuration).
    pub metrics: super::metrics::SmtpMetrics,
    /// Told about each accepted message: the queue manager, once it runs
    /// (one slot shared by every configuration, so a session that began
    /// before the queue started still hands its messages over).
    pub queue: Arc<crate::queue::QueueSlot>,
}

/// Errors setting the server up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Certificate, key or trust problems.
    #[error(transparent)]
    Tls(#[from] crate::inbound::tls::TlsError),
    /// The spool directory.
    #[error(transparent)]
    Spool(#[from] crate::queue::spool::SpoolError),
    /// A header pattern.
    #[error("smtp.strip_headers: {0}")]
    Headers(String),
    /// The resolver for the tenant check's DKIM keys.
    #[error("tenant check: {0}")]
    Resolver(#[from] crate::resolve::ResolveError),
    /// A listening address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

impl ServerConfig {
    /// Opens the spool once at start, removing what a crash left in `tmp/`
    /// (never acknowledged). A reload keeps the open spool.
    pub fn open_spool(c: &crate::config::smtp::Smtp) -> Result<Arc<Spool>, SetupError> {
        let (spool, removed) = Spool::open(&c.raw.spool_dir, c.raw.fsync)?;
        if removed > 0 {
            tracing::warn!(
                removed,
                "removed unacknowledged partial messages from the spool"
            );
        }
        Ok(Arc::new(spool))
    }

    /// Builds the server from the configuration: loads the certificate and
    /// key and each connector's trust; `exchange` is the Exchange Online list
    /// in force, for connectors with the `exchange-online` source.
    pub fn from_config(
        c: &crate::config::smtp::Smtp,
        submission: &crate::config::submission::Submission,
        dns: &crate::config::dns::Dns,
        spool: Arc<Spool>,
        exchange: &[IpNet],
    ) -> Result<ServerConfig, SetupError> {
        // DKIM keys are asked through [dns], as delivery asks: all lookups of
        // one message within two query timeouts.
        let authenticator = if c.connectors.iter().any(|ic| ic.policy.tenants.is_some()) {
            let resolver = crate::resolve::Resolver::new(dns)?;
            Some(crate::inbound::tenant::verify::Authenticator::new(
                &resolver,
                Duration::from_secs(dns.timeout_seconds.max(1) * 2),
            ))
        } else {
            None
        };
        let tls = match &c.raw.tls {
            Some(t) => Some(crate::inbound::tls::server_config(&t.certificate, &t.key)?),
            None => None,
        };
        let mut connectors = Vec::new();
        for ic in &c.connectors {
            let trust = if ic.policy.client_cert_names.is_empty() {
                None
            } else {
                Some(ClientTrust::new(&ic.trust)?)
            };
            let c = Connector {
                policy: Arc::new(ic.policy.clone()),
                trust,
                configured_sources: ic.policy.sources.clone(),
                exchange_online: ic.exchange_online,
            };
            connectors.push(c.with_exchange(exchange));
        }
        let r = &c.raw;
        Ok(ServerConfig {
            session: Arc::new(SessionConfig {
                hostname: c.hostname.clone(),
                accepted: c.accepted.clone(),
                max_message_size: r.max_message_size,
                max_recipients: r.max_recipients as usize,
                max_errors: r.max_errors,
                tls_available: tls.is_some(),
                spool: spool.health().clone(),
            }),
            connectors,
            tls,
            data: DataConfig {
                bare_line_endings: r.bare_line_endings,
                nul: crate::smtp::data::NulBytes::Reject,
                max_size: r.max_message_size,
                max_line: r.text_line_limit,
            },
            headers: Arc::new(
                Policy::new(
                    &r.strip_headers
                        .iter()
                        .map(|p| p.get_ref().clone())
                        .collect::<Vec<_>>(),
                )
                .map_err(SetupError::Headers)?
                .with_authserv_id(&c.hostname),
            ),
            header_limits: header::Limits {
                max_line: r.text_line_limit,
                max_received: r.max_received_headers,
                max_header: r.max_header_size,
            },
            command_line_limit: r.command_line_limit,
            max_connections: r.max_connections,
            max_connections_per_source: r.max_connections_per_source,
            source_prefix: (r.per_source_prefix_v4, r.per_source_prefix_v6),
            command_timeout: Duration::from_secs(r.timeouts.command),
            data_timeout: Duration::from_secs(r.timeouts.data_block),
            session_timeout: Duration::from_secs(r.timeouts.session),
            min_data_rate: r.min_data_rate,
            spool,
            authenticator,
            accounts: None,
            submission: submission.clone(),
            metrics: super::metrics::SmtpMetrics::default(),
            queue: Arc::default(),
        })
    }
}

impl ServerConfig {
    /// The same server with another Exchange Online list in force (what the
    /// ranges updater publishes; nothing is read from disk).
    pub fn with_exchange(&self, exchange: &[IpNet]) -> ServerConfig {
        ServerConfig {
            connectors: self
                .connectors
                .iter()
                .map(|c| c.with_exchange(exchange))
                .collect(),
            ..self.clone()
        }
    }
}
