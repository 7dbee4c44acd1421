//! The SMTP server: its settings, listeners, connection limits, and for each
//! connection the connector choice and STARTTLS around the I/O loop of
//! [`super::connection`].
//!
//! After `220 Ready to start TLS` every octet the client sent before the
//! handshake is discarded (CVE-2011-0411). Every wait has a deadline: the
//! command and data timeouts, a minimum data rate, and a limit on the whole
//! session (Exchange's ConnectionTimeout).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::connection::{self, Clock, Io, Outcome};
use super::metrics::SessionOutcome;
use super::session::{Action, Session, SessionConfig};
use crate::certs::certificate_subject;
use crate::inbound::policy::{self, Inbound, TlsState};
use crate::inbound::tls::ClientTrust;
use crate::queue::spool::{Spool, TlsInfo};
use crate::smtp::data::DataConfig;
use crate::smtp::header::{self, Policy};
use crate::smtp::reply::Reply;

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

/// Everything the server needs.
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

/// Binds the configured listening addresses.
pub async fn bind(addrs: &[std::net::SocketAddr]) -> Result<Vec<TcpListener>, SetupError> {
    let mut out = Vec::new();
    for &addr in addrs {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(|source| SetupError::Bind { addr, source })?;
        sock.set_reuseaddr(true)
            .map_err(|source| SetupError::Bind { addr, source })?;
        // A reload may put 0.0.0.0:25 in place of 192.0.2.10:25 (or the
        // reverse): the new socket is bound while the old one still
        // listens, which only SO_REUSEPORT on both allows.
        sock.set_reuseport(true)
            .map_err(|source| SetupError::Bind { addr, source })?;
        if addr.is_ipv6() {
            // [::]:25 and 0.0.0.0:25 side by side.
            let _ = socket2::SockRef::from(&sock).set_only_v6(true);
        }
        sock.bind(addr)
            .map_err(|source| SetupError::Bind { addr, source })?;
        out.push(
            sock.listen(1024)
                .map_err(|source| SetupError::Bind { addr, source })?,
        );
    }
    Ok(out)
}

/// Counts connections, in total and per source network.
#[derive(Default)]
struct Limits {
    total: AtomicU32,
    per_source: Mutex<HashMap<IpNet, u32>>,
}

struct Slot {
    limits: Arc<Limits>,
    source: IpNet,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
        let mut m = self
            .limits
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.source);
            }
        }
    }
}

/// The source network an address counts against: its /32 (IPv4) or /64
/// (IPv6) by default, so one IPv6 network cannot take every slot.
fn source_of(ip: IpAddr, (v4, v6): (u8, u8)) -> IpNet {
    let len = if ip.is_ipv4() { v4 } else { v6 };
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

impl Limits {
    fn take(self: &Arc<Self>, source: IpNet, max_total: u32, max_source: u32) -> Option<Slot> {
        let mut m = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(source).or_insert(0);
        if *n >= max_source || self.total.load(Ordering::Relaxed) >= max_total {
            if *n == 0 {
                m.remove(&source);
            }
            return None;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            limits: self.clone(),
            source,
        })
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// SMTP relay (port 25): inbound connectors by source.
    Smtp,
    /// Submission with STARTTLS (port 587): SMTP AUTH before MAIL.
    Submission,
    /// Submission with implicit TLS (port 465, RFC 8314).
    SubmissionTls,
}

/// The configuration in force; a reload or a new Exchange Online list
/// publishes another, and each new connection takes the one current when it
/// arrives (sessions keep theirs to the end).
pub type Current = tokio::sync::watch::Receiver<Arc<ServerConfig>>;

/// The connection limits every listener shares.
#[derive(Default)]
pub struct ConnectionLimits(Arc<Limits>);

impl ConnectionLimits {
    /// Connections open now.
    pub fn open(&self) -> u32 {
        self.0.total.load(Ordering::Relaxed)
    }
}

/// Accepts connections on `listener` until the task is aborted (a reload
/// that drops the address): open sessions go on to their end.
pub fn spawn_listener(
    listener: TcpListener,
    mode: Mode,
    current: Current,
    limits: &ConnectionLimits,
) -> tokio::task::JoinHandle<()> {
    let limits = limits.0.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let cfg = current.borrow().clone();
            let limits = limits.clone();
            tokio::spawn(async move {
                let ip = canonical_ip(peer.ip());
                let source = source_of(ip, cfg.source_prefix);
                match limits.take(source, cfg.max_connections, cfg.max_connections_per_source) {
                    Some(slot) => {
                        let metrics = cfg.metrics.clone();
                        metrics.open(1);
                        let (connector, outcome) = handle(stream, ip, mode, cfg).await;
                        metrics.open(-1);
                        metrics.session(&connector, outcome);
                        drop(slot);
                    }
                    None => {
                        cfg.metrics.refused("connection_limit");
                        cfg.metrics.session("", SessionOutcome::refused);
                        let mut s = stream;
                        let r = Reply::new(
                            421,
                            (4, 7, 0),
                            &format!(
                                "{} Too many connections, try again later",
                                cfg.session.hostname
                            ),
                        );
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            s.write_all(&r.to_bytes()),
                        )
                        .await;
                        tracing::info!(%ip, %source, "connection refused: limit reached");
                    }
                }
            });
        }
    })
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One connection; its connector's name and how it ended.
async fn handle(
    tcp: TcpStream,
    ip: IpAddr,
    mode: Mode,
    cfg: Arc<ServerConfig>,
) -> (String, SessionOutcome) {
    let mut io = Io::new(cfg.command_line_limit);
    let (connector, early) = session(tcp, ip, mode, &cfg, &mut io).await;
    // How the protocol ended wins over a failed last write (a client that
    // sends QUIT and goes away at once).
    let outcome = io.end.or(early).unwrap_or(SessionOutcome::disconnected);
    (connector, outcome)
}

/// The TLS handshake on `tcp` and what it established (the client's chain
/// judged by `conn`'s trust); the outcome when it failed.
async fn accept_tls(
    tcp: TcpStream,
    ip: IpAddr,
    cfg: &ServerConfig,
    conn: Option<&Connector>,
    clock: &Clock,
) -> Result<
    (
        tokio_rustls::server::TlsStream<TcpStream>,
        TlsState,
        TlsInfo,
    ),
    SessionOutcome,
> {
    let Some(tls) = cfg.tls.clone() else {
        return Err(SessionOutcome::closed);
    };
    let until = clock.command_deadline();
    let accepted = tokio::time::timeout_at(until, TlsAcceptor::from(tls).accept(tcp)).await;
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%ip, error = %e, "TLS handshake failed");
            return Err(SessionOutcome::tls_failed);
        }
        Err(_) => {
            tracing::info!(%ip, "TLS handshake timed out");
            return Err(SessionOutcome::tls_failed);
        }
    };
    let (state, info) = {
        let (_, c) = stream.get_ref();
        let chain: Vec<_> = c
            .peer_certificates()
            .map(|p| p.to_vec())
            .unwrap_or_default();
        let mut state = TlsState {
            active: true,
            ..TlsState::default()
        };
        let (mut client_cert, mut client_cert_purpose) = (None, None);
        if !chain.is_empty() {
            let subject = certificate_subject(&chain[0]);
            match conn.and_then(|c| c.trust.as_ref()) {
                Some(trust) => match trust.verify(&chain) {
                    Ok(v) => {
                        state.verified_names = v.names;
                        client_cert = Some(subject);
                        client_cert_purpose = Some(v.purpose.to_string());
                    }
                    Err(e) => state.verify_error = Some(e),
                },
                None => client_cert = Some(format!("{subject} (not verified)")),
            }
        }
        let info = TlsInfo {
            version: c
                .protocol_version()
                .map_or("TLS".into(), |v| format!("{v:?}").replace('_', ".")),
            cipher: c
                .negotiated_cipher_suite()
                .map_or(String::new(), |s| format!("{:?}", s.suite())),
            client_cert,
            client_cert_purpose,
        };
        (state, info)
    };
    tracing::info!(%ip, version = %info.version, cipher = %info.cipher, client_cert = ?info.client_cert, purpose = ?info.client_cert_purpose, verify_error = ?state.verify_error, "TLS established");
    cfg.metrics.tls(&info.version);
    Ok((stream, state, info))
}

/// The submission connector: any source the gate lets in, mail relayed for
/// an authenticated device (one for the process: it never changes).
fn submission_connector() -> Arc<Inbound> {
    static CONNECTOR: std::sync::LazyLock<Arc<Inbound>> = std::sync::LazyLock::new(|| {
        Arc::new(Inbound {
            name: "submission".into(),
            sources: Vec::new(),
            require_tls: false,
            client_cert_names: Vec::new(),
            sender_domains: Vec::new(),
            recipient_domains: vec![crate::address::DomainPattern::Any],
            relay: true,
            trusted_headers: false,
            tenants: None,
        })
    });
    CONNECTOR.clone()
}

async fn session(
    mut tcp: TcpStream,
    ip: IpAddr,
    mode: Mode,
    cfg: &Arc<ServerConfig>,
    io: &mut Io,
) -> (String, Option<SessionOutcome>) {
    let clock = Clock::start(cfg).for_peer(ip);
    let conn = match mode {
        Mode::Smtp => policy::select_index(cfg.connectors.iter().map(|c| &*c.policy), ip)
            .and_then(|i| cfg.connectors.get(i)),
        Mode::Submission | Mode::SubmissionTls => None,
    };
    let mut session = match (mode, &cfg.accounts) {
        (Mode::Smtp, _) => Session::new(cfg.session.clone(), conn.map(|c| c.policy.clone()), ip),
        (_, Some(accounts)) => Session::new(cfg.session.clone(), Some(submission_connector()), ip)
            .with_submission(super::session::Submission {
                plaintext_auth: cfg
                    .submission
                    .plaintext_auth_sources
                    .iter()
                    .any(|n| n.contains(&ip)),
                guard: accounts.guard.clone(),
                rate_per_hour: cfg.submission.rate_per_hour,
            }),
        // A submission listener without accounts (cannot happen: both come
        // from [submission]): refuse.
        (_, None) => Session::new(cfg.session.clone(), None, ip),
    };
    let name = session.connector_name().to_string();
    tracing::debug!(%ip, connector = %name, ?mode, "connection");
    if mode == Mode::SubmissionTls {
        // RFC 8314: TLS from the first byte, then the greeting.
        let (mut stream, state, info) = match accept_tls(tcp, ip, cfg, conn, &clock).await {
            Ok(t) => t,
            Err(outcome) => return (name, Some(outcome)),
        };
        session.tls_established(info, state);
        match session.greeting() {
            Action::Reply(r) => r.write_to(io.out()),
            _ => return (name, Some(SessionOutcome::refused)),
        }
        let r = connection::run(&mut stream, &mut session, io, cfg, &clock).await;
        let _ = tokio::time::timeout_at(Instant::now() + Duration::from_secs(5), stream.shutdown())
            .await;
        io.discard().await;
        return (name, r.is_err().then_some(SessionOutcome::error));
    }
    match session.greeting() {
        Action::Close(r) => {
            tracing::info!(%ip, "connection refused: no inbound connector matches");
            cfg.metrics.reply(&r);
            let _ = tokio::time::timeout(cfg.command_timeout, tcp.write_all(&r.to_bytes())).await;
            return (name, Some(SessionOutcome::refused));
        }
        Action::Reply(r) => r.write_to(io.out()),
        _ => return (name, Some(SessionOutcome::closed)),
    }
    match connection::run(&mut tcp, &mut session, io, cfg, &clock).await {
        Ok(Outcome::StartTls) => {}
        Ok(Outcome::Closed) => {
            io.discard().await;
            return (name, None);
        }
        Err(_) => {
            io.discard().await;
            return (name, Some(SessionOutcome::error));
        }
    }
    let (mut stream, state, info) = match accept_tls(tcp, ip, cfg, conn, &clock).await {
        Ok(t) => t,
        Err(outcome) => return (name, Some(outcome)),
    };
    session.tls_established(info, state);
    let r = connection::run(&mut stream, &mut session, io, cfg, &clock).await;
    let _ =
        tokio::time::timeout_at(Instant::now() + Duration::from_secs(5), stream.shutdown()).await;
    io.discard().await;
    (name, r.is_err().then_some(SessionOutcome::error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_networks() {
        let p = (32, 64);
        let a = source_of("2001:db8:1:2::1".parse().unwrap(), p);
        let b = source_of("2001:db8:1:2:ffff::9".parse().unwrap(), p);
        let c = source_of("2001:db8:1:3::1".parse().unwrap(), p);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let v4 = source_of("192.0.2.7".parse().unwrap(), p);
        assert_eq!(v4.to_string(), "192.0.2.7/32");
        let wide = source_of("192.0.2.7".parse().unwrap(), (24, 48));
        assert_eq!(wide.to_string(), "192.0.2.0/24");
    }

    #[test]
    fn limits_count_per_network() {
        let limits = Arc::new(Limits::default());
        let net = source_of("2001:db8::1".parse().unwrap(), (32, 64));
        let a = limits.take(net, 10, 2).unwrap();
        let _b = limits.take(net, 10, 2).unwrap();
        assert!(limits.take(net, 10, 2).is_none());
        drop(a);
        assert!(limits.take(net, 10, 2).is_some());
    }
}
