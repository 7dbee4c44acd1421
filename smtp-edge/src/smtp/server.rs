//! The SMTP server: listeners, connection limits, the I/O loop around
//! [`Session`], STARTTLS, and handing complete messages to the spool.
//!
//! Replies to pipelined commands are batched and flushed before the server
//! waits for input (RFC 2920). After `220 Ready to start TLS` every octet the
//! client sent before the handshake is discarded (CVE-2011-0411). A message is
//! acknowledged with 250 only after the spool has it on disk.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::command::LineSplitter;
use super::data::{BdatReader, DataConfig, DataReader};
use super::reply::Reply;
use super::session::{Action, Session, SessionConfig};
use crate::policy::{self, Inbound, TlsState, is_exchange_internal};
use crate::spool::{self, Spool, TlsInfo};
use crate::tls::{ClientTrust, certificate_subject};

/// One inbound connector with the trust for its client certificates.
pub struct Connector {
    /// Policy.
    pub policy: Arc<Inbound>,
    /// Trust (when the connector checks client certificates).
    pub trust: Option<ClientTrust>,
}

/// Everything the server needs.
pub struct ServerConfig {
    /// Session settings.
    pub session: Arc<SessionConfig>,
    /// Connectors.
    pub connectors: Vec<Connector>,
    /// TLS, when configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Message content policy.
    pub data: DataConfig,
    /// Octets per command line.
    pub command_line_limit: usize,
    /// Connections in total.
    pub max_connections: u32,
    /// Connections per source address.
    pub max_connections_per_source: u32,
    /// Received headers above which a message is a loop.
    pub max_received_headers: u32,
    /// Waiting for a command.
    pub command_timeout: Duration,
    /// Waiting for message data.
    pub data_timeout: Duration,
    /// Where accepted messages go.
    pub spool: Arc<Spool>,
    /// Woken after each accepted message (the queue manager).
    pub wake: Option<Arc<tokio::sync::Notify>>,
}

/// Errors setting the server up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Certificate, key or trust problems.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The spool directory.
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
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
    /// key and each connector's trust.
    pub fn from_config(
        c: &crate::config::smtp::Smtp,
        spool: Arc<Spool>,
    ) -> Result<ServerConfig, SetupError> {
        let tls = match &c.raw.tls {
            Some(t) => Some(crate::tls::server_config(&t.certificate, &t.key)?),
            None => None,
        };
        let mut connectors = Vec::new();
        for ic in &c.connectors {
            let trust = if ic.policy.client_cert_names.is_empty() {
                None
            } else {
                Some(ClientTrust::new(&ic.trust)?)
            };
            connectors.push(Connector {
                policy: Arc::new(ic.policy.clone()),
                trust,
            });
        }
        Ok(ServerConfig {
            session: Arc::new(SessionConfig {
                hostname: c.hostname.clone(),
                accepted: c.accepted.clone(),
                max_message_size: c.raw.max_message_size,
                max_recipients: c.raw.max_recipients as usize,
                max_errors: c.raw.max_errors,
                tls_available: tls.is_some(),
            }),
            connectors,
            tls,
            data: DataConfig {
                bare_line_endings: c.raw.bare_line_endings,
                nul: super::data::NulBytes::Reject,
                max_size: c.raw.max_message_size,
                max_line: c.raw.text_line_limit,
            },
            command_line_limit: c.raw.command_line_limit,
            max_connections: c.raw.max_connections,
            max_connections_per_source: c.raw.max_connections_per_source,
            max_received_headers: c.raw.max_received_headers,
            command_timeout: Duration::from_secs(c.raw.timeouts.command),
            data_timeout: Duration::from_secs(c.raw.timeouts.data_block),
            spool,
            wake: None,
        })
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

/// Counts connections, in total and per source.
#[derive(Default)]
struct Limits {
    total: AtomicU32,
    per_source: Mutex<HashMap<IpAddr, u32>>,
}

struct Slot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
        let mut m = self
            .limits
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Limits {
    fn take(self: &Arc<Self>, ip: IpAddr, max_total: u32, max_source: u32) -> Option<Slot> {
        let mut m = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max_source || self.total.load(Ordering::Relaxed) >= max_total {
            if *n == 0 {
                m.remove(&ip);
            }
            return None;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            limits: self.clone(),
            ip,
        })
    }
}

/// The configuration in force; a reload swaps it, and each new connection
/// takes the one current when it arrives.
pub type Shared = Arc<std::sync::RwLock<Arc<ServerConfig>>>;

/// Accepts connections on `listeners` until the task is dropped.
pub async fn serve(listeners: Vec<TcpListener>, shared: Shared) {
    let limits = Arc::new(Limits::default());
    let mut tasks = Vec::new();
    for l in listeners {
        let (shared, limits) = (shared.clone(), limits.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = l.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let cfg = shared.read().unwrap_or_else(|p| p.into_inner()).clone();
                let limits = limits.clone();
                tokio::spawn(async move {
                    let ip = canonical_ip(peer.ip());
                    match limits.take(ip, cfg.max_connections, cfg.max_connections_per_source) {
                        Some(slot) => {
                            handle(stream, ip, cfg).await;
                            drop(slot);
                        }
                        None => {
                            let mut s = stream;
                            let r = Reply::new(
                                421,
                                (4, 7, 0),
                                &format!(
                                    "{} Too many connections, try again later",
                                    cfg.session.hostname
                                ),
                            );
                            let _ = s.write_all(&r.to_bytes()).await;
                            tracing::info!(%ip, "connection refused: limit reached");
                        }
                    }
                });
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Input and output buffers of a connection.
struct Io {
    inbuf: Vec<u8>,
    start: usize,
    out: Vec<u8>,
    splitter: LineSplitter,
    bdat: Option<(BdatReader, Vec<u8>)>,
}

enum Outcome {
    Closed,
    StartTls,
}

async fn handle(mut tcp: TcpStream, ip: IpAddr, cfg: Arc<ServerConfig>) {
    let conn = policy::select_index(cfg.connectors.iter().map(|c| &*c.policy), ip)
        .and_then(|i| cfg.connectors.get(i));
    let mut session = Session::new(cfg.session.clone(), conn.map(|c| c.policy.clone()), ip);
    tracing::debug!(%ip, connector = session.connector_name(), "connection");
    let mut io = Io {
        inbuf: Vec::with_capacity(1024),
        start: 0,
        out: Vec::with_capacity(512),
        splitter: LineSplitter::new(cfg.command_line_limit),
        bdat: None,
    };
    match session.greeting() {
        Action::Close(r) => {
            tracing::info!(%ip, "connection refused: no inbound connector matches");
            let _ = tcp.write_all(&r.to_bytes()).await;
            return;
        }
        Action::Reply(r) => r.write_to(&mut io.out),
        _ => return,
    }
    match run(&mut tcp, &mut session, &mut io, &cfg).await {
        Ok(Outcome::StartTls) => {}
        Ok(Outcome::Closed) | Err(_) => return,
    }
    let Some(tls) = cfg.tls.clone() else { return };
    let accepted =
        tokio::time::timeout(cfg.command_timeout, TlsAcceptor::from(tls).accept(tcp)).await;
    let mut stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(%ip, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
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
        let mut client_cert = None;
        if !chain.is_empty() {
            let subject = certificate_subject(&chain[0]);
            match conn.and_then(|c| c.trust.as_ref()) {
                Some(trust) => match trust.verify(&chain) {
                    Ok(names) => {
                        state.verified_names = names;
                        client_cert = Some(subject);
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
        };
        (state, info)
    };
    tracing::info!(%ip, version = %info.version, cipher = %info.cipher, client_cert = ?info.client_cert, verify_error = ?state.verify_error, connector = session.connector_name(), "TLS established");
    session.tls_established(info, state);
    let _ = run(&mut stream, &mut session, &mut io, &cfg).await;
    let _ = stream.shutdown().await;
}

/// Reads more input; false on EOF, timeout or error (after saying so).
async fn fill<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    io: &mut Io,
    timeout: Duration,
    host: &str,
) -> bool {
    if io.start > 0 {
        io.inbuf.drain(..io.start);
        io.start = 0;
    }
    let len = io.inbuf.len();
    io.inbuf.resize(len + 16 * 1024, 0);
    match tokio::time::timeout(timeout, stream.read(&mut io.inbuf[len..])).await {
        Ok(Ok(n)) if n > 0 => {
            io.inbuf.truncate(len + n);
            if io.inbuf.capacity() > 256 * 1024 && io.inbuf.len() < 16 * 1024 {
                io.inbuf.shrink_to(64 * 1024);
            }
            true
        }
        Ok(_) => false,
        Err(_) => {
            io.inbuf.truncate(len);
            let _ = stream.write_all(&Reply::timeout(host).to_bytes()).await;
            false
        }
    }
}

async fn flush<S: AsyncWrite + Unpin>(stream: &mut S, io: &mut Io) -> std::io::Result<()> {
    if !io.out.is_empty() {
        stream.write_all(&io.out).await?;
        io.out.clear();
    }
    stream.flush().await
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    io: &mut Io,
    cfg: &ServerConfig,
) -> std::io::Result<Outcome> {
    let host = cfg.session.hostname.clone();
    loop {
        loop {
            let (parsed, used) = io.splitter.next_command(&io.inbuf[io.start..]);
            io.start += used;
            let Some(parsed) = parsed else { break };
            let action = session.command(parsed);
            if !session.bdat_in_progress() {
                // Chunks of a transaction that ended (RSET, EHLO, …).
                io.bdat = None;
            }
            match action {
                Action::Reply(r) => r.write_to(&mut io.out),
                Action::Close(r) => {
                    r.write_to(&mut io.out);
                    flush(stream, io).await?;
                    return Ok(Outcome::Closed);
                }
                Action::StartTls(r) => {
                    r.write_to(&mut io.out);
                    flush(stream, io).await?;
                    // Nothing sent before the handshake may survive it.
                    io.inbuf.clear();
                    io.start = 0;
                    io.splitter.reset();
                    io.bdat = None;
                    return Ok(Outcome::StartTls);
                }
                Action::Data(r) => {
                    r.write_to(&mut io.out);
                    flush(stream, io).await?;
                    let Some(reply) = read_data(stream, session, io, cfg).await else {
                        return Ok(Outcome::Closed);
                    };
                    reply.write_to(&mut io.out);
                }
                Action::Bdat { size, last, refuse } => {
                    let Some(reply) = read_bdat(stream, session, io, cfg, size, last, refuse).await
                    else {
                        return Ok(Outcome::Closed);
                    };
                    let close = reply.code == 421;
                    reply.write_to(&mut io.out);
                    if close {
                        flush(stream, io).await?;
                        return Ok(Outcome::Closed);
                    }
                }
            }
        }
        flush(stream, io).await?;
        if !fill(stream, io, cfg.command_timeout, &host).await {
            return Ok(Outcome::Closed);
        }
    }
}

/// Reads DATA content; `None` when the connection ended.
async fn read_data<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    io: &mut Io,
    cfg: &ServerConfig,
) -> Option<Reply> {
    let mut reader = DataReader::new(cfg.data);
    let mut msg = Vec::new();
    loop {
        let f = reader.feed(&io.inbuf[io.start..], &mut msg);
        io.start += f.consumed;
        if f.end {
            break;
        }
        if !fill(stream, io, cfg.data_timeout, &cfg.session.hostname).await {
            session.end_transaction();
            return None;
        }
    }
    let result = reader.result().map_err(|e| e.reply());
    Some(finish(session, cfg, result.map(|s| s.received_headers), msg).await)
}

/// Reads one BDAT chunk; `None` when the connection ended.
#[allow(clippy::too_many_arguments)]
async fn read_bdat<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    io: &mut Io,
    cfg: &ServerConfig,
    size: u64,
    last: bool,
    refuse: Option<Reply>,
) -> Option<Reply> {
    let binary = session.binary();
    let (mut reader, mut msg) = io
        .bdat
        .take()
        .unwrap_or_else(|| (BdatReader::new(cfg.data, binary), Vec::new()));
    if refuse.is_some() {
        msg.clear();
    }
    reader.start_chunk(size, last);
    loop {
        let f = reader.feed(&io.inbuf[io.start..], &mut msg);
        io.start += f.consumed;
        if f.end {
            break;
        }
        if !fill(stream, io, cfg.data_timeout, &cfg.session.hostname).await {
            session.end_transaction();
            return None;
        }
    }
    if let Some(r) = refuse {
        return Some(r);
    }
    if !last {
        io.bdat = Some((reader, msg));
        return Some(session.chunk_done(size));
    }
    let result = reader.result().map_err(|e| e.reply());
    Some(finish(session, cfg, result.map(|s| s.received_headers), msg).await)
}

/// Ends a transaction: checks, writes the spool, answers.
async fn finish(
    session: &mut Session,
    cfg: &ServerConfig,
    result: Result<u32, Reply>,
    msg: Vec<u8>,
) -> Reply {
    let reply = match result {
        Err(r) => {
            tracing::info!(
                connector = session.connector_name(),
                code = r.code,
                "message refused: {}",
                r.lines.join(" ")
            );
            r
        }
        Ok(hops) if hops > cfg.max_received_headers => {
            tracing::info!(
                connector = session.connector_name(),
                hops,
                "message refused: mail loop"
            );
            Reply::too_many_hops()
        }
        Ok(_) => spool_message(session, cfg, msg).await,
    };
    session.end_transaction();
    reply
}

async fn spool_message(session: &Session, cfg: &ServerConfig, msg: Vec<u8>) -> Reply {
    let id = spool::new_id();
    let now = spool::now();
    let Some(env) = session.envelope(&id, now) else {
        return Reply::bad_sequence("No transaction");
    };
    let received = session.received_header(&id, now);
    let trusted = session.connector().is_some_and(|c| c.trusted_headers);
    let spool = cfg.spool.clone();
    let size = msg.len();
    let env2 = env.clone();
    let written = tokio::task::spawn_blocking(move || -> Result<(), crate::spool::SpoolError> {
        let mut w = spool.create(&env2.id)?;
        w.write_envelope(&env2)?;
        w.write(received.as_bytes())?;
        write_filtered(&mut w, &msg, trusted)?;
        w.commit()
    })
    .await;
    match written {
        Ok(Ok(())) => {
            tracing::info!(
                id = %id,
                connector = %env.connector,
                from = %env.mail_from,
                rcpts = env.recipients.len(),
                size,
                tls = env.tls.is_some(),
                "message accepted"
            );
            if let Some(w) = &cfg.wake {
                w.notify_one();
            }
            Reply::queued(&id)
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "spool write failed; answered 451");
            Reply::local_error()
        }
        Err(e) => {
            tracing::error!(error = %e, "spool task failed; answered 451");
            Reply::local_error()
        }
    }
}

/// Writes the message, leaving out Exchange-internal header fields unless the
/// connector is trusted for them.
fn write_filtered(
    w: &mut spool::SpoolWriter,
    msg: &[u8],
    trusted: bool,
) -> Result<(), spool::SpoolError> {
    if trusted {
        return w.write(msg);
    }
    let header_end = memchr::memmem::find(msg, b"\r\n\r\n").map_or(msg.len(), |p| p + 2);
    let mut pos = 0;
    let mut keep = true;
    while pos < header_end {
        let line_end =
            memchr::memchr(b'\n', &msg[pos..header_end]).map_or(header_end, |p| pos + p + 1);
        let line = &msg[pos..line_end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            keep = !is_exchange_internal(&String::from_utf8_lossy(name));
        }
        if keep {
            w.write(line)?;
        }
        pos = line_end;
    }
    w.write(&msg[header_end..])
}
