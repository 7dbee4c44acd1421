//! The SMTP server: listeners, connection limits, and for each connection
//! the connector choice and the TLS handshakes (STARTTLS and implicit TLS)
//! around the I/O loop of [`super::connection`]. What a session needs is
//! its [`ServerConfig`] ([`super::settings`]).
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
use super::session::{Action, Session};
use crate::certs::certificate_subject;
use crate::inbound::policy::{self, Inbound, TlsState};
use crate::queue::spool::TlsInfo;
use crate::smtp::reply::Reply;

pub use super::settings::{Connector, ServerConfig, SetupError};

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
                header_from: cfg.submission.header_from,
                devices: accounts.store.clone(),
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
