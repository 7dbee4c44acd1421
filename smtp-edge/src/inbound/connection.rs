//! The I/O loop of one connection around [`Session`]: commands, pipelined
//! replies, message data streamed to the spool ([`Intake`]), and the
//! deadlines that bound every wait.
//!
//! Replies to pipelined commands are batched and flushed before the loop
//! waits for input (RFC 2920). A message is acknowledged with 250 only after
//! the spool has it on disk.
//!
//! # Deadlines
//!
//! - Waiting for a command: `smtp.timeouts.command` of silence.
//! - Message data: a deadline that starts at `smtp.timeouts.data_block` and,
//!   after every read of N octets, moves N / `smtp.min_data_rate` seconds
//!   later, never beyond `data_block` from now (Postfix's
//!   `smtpd_min_data_rate`): a client trickling a byte every few seconds
//!   runs out, one sending at the rate never does.
//! - The whole session: `smtp.timeouts.session` (Exchange's
//!   ConnectionTimeout), whatever the client does.
//!
//! Each ends the session with a 421 and a log line; writes are bounded too,
//! so a client that stops reading cannot hold a session either.

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::checked::TenantCheck;
use super::intake::Intake;
use super::metrics::SessionOutcome;
use super::server::ServerConfig;
use super::session::{Action, Session};
use crate::queue::spool;
use crate::smtp::command::LineSplitter;
use crate::smtp::data::{BdatReader, DataError, DataReader, DataStats};
use crate::smtp::reply::Reply;

/// Octets read at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Replies gathered beyond this are sent at once, even in the middle of a
/// pipelined batch (a client that sends without reading is held up, not
/// buffered for).
const MAX_PENDING_REPLIES: usize = 16 * 1024;
/// How long the 421 of an expired deadline may take to go out.
const LAST_WORD: Duration = Duration::from_secs(5);

/// Which limit ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// No command within the command timeout.
    Command,
    /// Message data too slow (or silent) for the data deadline.
    Data,
    /// The session time limit.
    Session,
}

impl Expiry {
    fn reply(self, host: &str) -> Reply {
        match self {
            Expiry::Command => Reply::timeout(host),
            Expiry::Data => Reply::new(
                421,
                (4, 4, 2),
                &format!("{host} Timeout: message data too slow, closing connection"),
            ),
            Expiry::Session => Reply::new(
                421,
                (4, 4, 2),
                &format!("{host} Session time limit exceeded, closing connection"),
            ),
        }
    }

    fn log(self) -> &'static str {
        match self {
            Expiry::Command => "session closed: no command within smtp.timeouts.command",
            Expiry::Data => {
                "session closed: message data slower than smtp.min_data_rate or silent for smtp.timeouts.data_block"
            }
            Expiry::Session => "session closed: smtp.timeouts.session reached",
        }
    }
}

/// The session's clock: when it must end, and the per-wait limits.
pub struct Clock {
    session_end: Instant,
    command: Duration,
    data: Duration,
    min_rate: u64,
    peer: Option<IpAddr>,
}

impl Clock {
    /// Starts the session's clock now.
    pub fn start(cfg: &ServerConfig) -> Self {
        Clock {
            session_end: Instant::now() + cfg.session_timeout,
            command: cfg.command_timeout,
            data: cfg.data_timeout,
            min_rate: cfg.min_data_rate,
            peer: None,
        }
    }

    /// The same clock, logging `peer`.
    pub fn for_peer(mut self, peer: IpAddr) -> Self {
        self.peer = Some(peer);
        self
    }

    /// The deadline for a command-phase wait (or a handshake).
    pub fn command_deadline(&self) -> Instant {
        (Instant::now() + self.command).min(self.session_end)
    }

    /// A phase deadline, or the session's end if that comes first.
    fn bound(&self, until: Instant, why: Expiry) -> (Instant, Expiry) {
        if self.session_end <= until {
            (self.session_end, Expiry::Session)
        } else {
            (until, why)
        }
    }
}

/// The data deadline: `data_block` at most ahead, moved later by what
/// arrives at the minimum rate. A BDAT transaction keeps one across its
/// chunks: the time between them counts too.
struct DataDeadline {
    at: Instant,
    cap: Duration,
    rate: u64,
}

impl DataDeadline {
    fn new(clock: &Clock) -> Self {
        DataDeadline {
            at: Instant::now() + clock.data,
            cap: clock.data,
            rate: clock.min_rate,
        }
    }

    fn got(&mut self, n: usize) {
        let now = Instant::now();
        let credit = if self.rate == 0 {
            self.cap
        } else {
            Duration::from_secs_f64(n as f64 / self.rate as f64)
        };
        self.at = (self.at + credit).min(now + self.cap);
    }
}

/// Input and output buffers of a connection, and a BDAT message in progress.
pub struct Io {
    inbuf: Vec<u8>,
    start: usize,
    out: Vec<u8>,
    /// The data reader's output for one read, handed to the intake.
    scratch: Vec<u8>,
    splitter: LineSplitter,
    bdat: Option<Bdat>,
    /// Why the session ended, once it has (for the metrics).
    pub end: Option<SessionOutcome>,
}

/// A BDAT message in progress: its reader, where it goes (none when the
/// transaction was refused) and its data deadline.
struct Bdat {
    reader: BdatReader,
    message: Option<Intake>,
    deadline: DataDeadline,
}

/// How [`run`] ended.
pub enum Outcome {
    /// The session is over.
    Closed,
    /// Start TLS now.
    StartTls,
}

impl Io {
    /// Buffers for a connection with this command line limit.
    pub fn new(command_line_limit: usize) -> Self {
        Io {
            inbuf: Vec::with_capacity(1024),
            start: 0,
            out: Vec::with_capacity(512),
            scratch: Vec::new(),
            splitter: LineSplitter::for_commands(command_line_limit),
            bdat: None,
            end: None,
        }
    }

    /// Where replies are gathered before the next flush.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Drops a BDAT message left unfinished.
    pub async fn discard(&mut self) {
        if let Some(Bdat {
            message: Some(m), ..
        }) = self.bdat.take()
        {
            m.discard().await;
        }
    }

    fn drop_bdat(&mut self) {
        if let Some(Bdat {
            message: Some(m), ..
        }) = self.bdat.take()
        {
            tokio::spawn(m.discard());
        }
    }
}

/// Reads more input until `until`; `None` on EOF, error or expiry (after
/// saying 421 and logging why).
async fn fill<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    io: &mut Io,
    clock: &Clock,
    (until, why): (Instant, Expiry),
    host: &str,
) -> Option<usize> {
    if io.start > 0 {
        io.inbuf.drain(..io.start);
        io.start = 0;
    }
    let len = io.inbuf.len();
    io.inbuf.resize(len + READ_CHUNK, 0);
    let (until, why) = clock.bound(until, why);
    match tokio::time::timeout_at(until, stream.read(&mut io.inbuf[len..])).await {
        Ok(Ok(n)) if n > 0 => {
            io.inbuf.truncate(len + n);
            if io.inbuf.capacity() > 256 * 1024 && io.inbuf.len() < READ_CHUNK {
                io.inbuf.shrink_to(4 * READ_CHUNK);
            }
            Some(n)
        }
        Ok(Ok(_)) => {
            io.inbuf.truncate(len);
            io.end.get_or_insert(SessionOutcome::disconnected);
            None
        }
        Ok(Err(_)) => {
            io.inbuf.truncate(len);
            io.end.get_or_insert(SessionOutcome::error);
            None
        }
        Err(_) => {
            io.inbuf.truncate(len);
            io.end.get_or_insert(SessionOutcome::timeout);
            tracing::info!(peer = ?clock.peer, "{}", why.log());
            let _ = tokio::time::timeout(LAST_WORD, stream.write_all(&why.reply(host).to_bytes()))
                .await;
            None
        }
    }
}

/// Sends the gathered replies, within the command timeout (a client that
/// does not read its replies does not keep the session).
async fn flush<S: AsyncWrite + Unpin>(
    stream: &mut S,
    io: &mut Io,
    clock: &Clock,
) -> std::io::Result<()> {
    let until = clock.command_deadline();
    let write = async {
        if !io.out.is_empty() {
            stream.write_all(&io.out).await?;
            io.out.clear();
        }
        stream.flush().await
    };
    tokio::time::timeout_at(until, write)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client not reading"))?
}

/// Gathers a reply for the next flush, counting refusals.
fn send(cfg: &ServerConfig, io: &mut Io, r: &Reply) {
    cfg.metrics.reply(r);
    r.write_to(&mut io.out);
}

/// The command loop, until the session ends or STARTTLS is accepted.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    io: &mut Io,
    cfg: &ServerConfig,
    clock: &Clock,
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
                io.drop_bdat();
            }
            match action {
                Action::Reply(r) => {
                    send(cfg, io, &r);
                    if io.out.len() > MAX_PENDING_REPLIES {
                        flush(stream, io, clock).await?;
                    }
                }
                Action::Close(r) => {
                    send(cfg, io, &r);
                    io.end.get_or_insert(match r.code {
                        221 => SessionOutcome::quit,
                        _ => SessionOutcome::closed,
                    });
                    flush(stream, io, clock).await?;
                    return Ok(Outcome::Closed);
                }
                Action::StartTls(r) => {
                    send(cfg, io, &r);
                    flush(stream, io, clock).await?;
                    // Nothing sent before the handshake may survive it.
                    io.inbuf.clear();
                    io.start = 0;
                    io.splitter.reset();
                    io.drop_bdat();
                    return Ok(Outcome::StartTls);
                }
                Action::Data(r) => {
                    send(cfg, io, &r);
                    flush(stream, io, clock).await?;
                    let Some(reply) = read_data(stream, session, io, cfg, clock).await else {
                        return Ok(Outcome::Closed);
                    };
                    send(cfg, io, &reply);
                }
                Action::Auth(start) => {
                    let Some(reply) = auth(stream, session, io, cfg, clock, start).await else {
                        return Ok(Outcome::Closed);
                    };
                    let close = reply.code == 421 || reply.status == Some((5, 5, 6));
                    send(cfg, io, &reply);
                    if close {
                        io.end.get_or_insert(SessionOutcome::closed);
                        flush(stream, io, clock).await?;
                        return Ok(Outcome::Closed);
                    }
                }
                Action::Bdat { size, last, refuse } => {
                    let Some(reply) =
                        read_bdat(stream, session, io, cfg, clock, (size, last), refuse).await
                    else {
                        return Ok(Outcome::Closed);
                    };
                    let close = reply.code == 421;
                    send(cfg, io, &reply);
                    if close {
                        io.end.get_or_insert(SessionOutcome::closed);
                        flush(stream, io, clock).await?;
                        return Ok(Outcome::Closed);
                    }
                }
            }
        }
        flush(stream, io, clock).await?;
        let mut wait = (Instant::now() + clock.command, Expiry::Command);
        if let Some(b) = &io.bdat
            && b.deadline.at < wait.0
        {
            wait = (b.deadline.at, Expiry::Data);
        }
        if fill(stream, io, clock, wait, &host).await.is_none() {
            return Ok(Outcome::Closed);
        }
    }
}

/// Reads one line of the AUTH exchange (its CRLF removed); `Err` with the
/// reply when it is too long or not text, `None` when the connection ended.
async fn exchange_line<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    io: &mut Io,
    clock: &Clock,
    host: &str,
) -> Option<Result<String, Reply>> {
    loop {
        let pending = &io.inbuf[io.start..];
        if let Some(i) = memchr::memchr(b'\n', pending) {
            let line = pending[..i]
                .strip_suffix(b"\r")
                .unwrap_or(&pending[..i])
                .to_vec();
            io.start += i + 1;
            return Some(
                String::from_utf8(line)
                    .map_err(|_| Reply::new(501, (5, 5, 2), "Cannot decode the response (base64)")),
            );
        }
        if pending.len() >= crate::smtp::sasl::MAX_LINE {
            return Some(Err(Reply::new(
                500,
                (5, 5, 6),
                "Authentication Exchange line is too long",
            )));
        }
        let wait = (Instant::now() + clock.command, Expiry::Command);
        fill(stream, io, clock, wait, host).await?;
    }
}

/// Asks for one response with `challenge` and decodes it.
async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    io: &mut Io,
    cfg: &ServerConfig,
    clock: &Clock,
    challenge: &str,
) -> Option<Result<Vec<u8>, Reply>> {
    send(cfg, io, &crate::smtp::sasl::challenge(challenge));
    flush(stream, io, clock).await.ok()?;
    let line = exchange_line(stream, io, clock, &cfg.session.hostname).await?;
    Some(line.and_then(|l| crate::smtp::sasl::decode(&l)))
}

/// The AUTH exchange (RFC 4954): the responses, then the credentials'
/// check; the reply to send, `None` when the connection ended.
async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    io: &mut Io,
    cfg: &ServerConfig,
    clock: &Clock,
    start: crate::smtp::sasl::Start,
) -> Option<Reply> {
    use crate::smtp::sasl::{self, Mechanism};
    let Some(accounts) = &cfg.accounts else {
        return Some(Reply::not_implemented());
    };
    let initial = match start.initial.as_deref().map(sasl::decode) {
        Some(Err(r)) => return Some(r),
        Some(Ok(v)) => Some(v),
        None => None,
    };
    let creds = match start.mechanism {
        Mechanism::Plain => {
            let response = match initial {
                Some(v) => v,
                None => match respond(stream, io, cfg, clock, "").await? {
                    Ok(v) => v,
                    Err(r) => return Some(r),
                },
            };
            sasl::plain(&response)
        }
        Mechanism::Login => {
            let user = match initial {
                Some(v) => v,
                None => match respond(stream, io, cfg, clock, "Username:").await? {
                    Ok(v) => v,
                    Err(r) => return Some(r),
                },
            };
            let password = match respond(stream, io, cfg, clock, "Password:").await? {
                Ok(v) => v,
                Err(r) => return Some(r),
            };
            sasl::login(&user, &password)
        }
    };
    let creds = match creds {
        Ok(c) => c,
        Err(r) => {
            if r.code == 535 {
                // Counted as any failed attempt from the source.
                let _ = accounts.guard.reserve(session.peer());
                let (delay, _) = accounts.guard.failed(session.peer(), None);
                tokio::time::sleep(delay).await;
                cfg.metrics.auth(super::auth::Attempt::Failure);
            }
            return Some(r);
        }
    };
    if !session.tls_active() {
        tracing::warn!(peer = %session.peer(), "AUTH without TLS from a legacy source (plaintext_auth_sources)");
    }
    let (result, attempt) = accounts.check(session.peer(), creds).await;
    cfg.metrics.auth(attempt);
    Some(match result {
        Ok((device, reply)) => {
            session.authenticated(device);
            reply
        }
        Err(r) => r,
    })
}

/// A new message for the session's transaction.
fn intake(session: &Session, cfg: &ServerConfig) -> Option<Intake> {
    let now = spool::now();
    let envelope = session.envelope(now)?;
    let connector = session.connector()?;
    let tenant = match (&connector.tenants, &cfg.authenticator) {
        (None, _) => None,
        (Some(rule), Some(auth)) => Some(TenantCheck {
            rule: rule.clone(),
            auth: auth.clone(),
            trusted_headers: connector.trusted_headers,
            hostname: cfg.session.hostname.clone(),
            policy: cfg.headers.clone(),
            limits: cfg.header_limits,
        }),
        (Some(_), None) => {
            // ServerConfig::from_config builds the verifier whenever a
            // connector has tenants: never unchecked, never here.
            tracing::error!(connector = %connector.name, "no DKIM verifier for the tenant check");
            return None;
        }
    };
    Some(Intake::new(
        cfg.spool.clone(),
        cfg.headers.clone(),
        connector.trusted_headers && tenant.is_none(),
        cfg.header_limits,
        envelope,
        session.trace(now),
        tenant,
    ))
}

/// Reads DATA content into the spool; `None` when the connection ended.
async fn read_data<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    io: &mut Io,
    cfg: &ServerConfig,
    clock: &Clock,
) -> Option<Reply> {
    let mut reader = DataReader::new(cfg.data);
    let mut message = intake(session, cfg);
    let mut deadline = DataDeadline::new(clock);
    loop {
        let f = reader.feed(&io.inbuf[io.start..], &mut io.scratch);
        io.start += f.consumed;
        if let Some(m) = message.as_mut() {
            m.push(&io.scratch).await;
        }
        io.scratch.clear();
        if f.end {
            break;
        }
        let wait = (deadline.at, Expiry::Data);
        match fill(stream, io, clock, wait, &cfg.session.hostname).await {
            Some(n) => deadline.got(n),
            None => {
                if let Some(m) = message {
                    m.discard().await;
                }
                session.end_transaction();
                return None;
            }
        }
    }
    Some(finish(session, cfg, reader.result(), message).await)
}

/// Sends what replies are pending before waiting for chunk data (allowed at
/// any time with PIPELINING); `false` when the client is gone.
async fn flush_before_wait<S: AsyncWrite + Unpin>(
    stream: &mut S,
    io: &mut Io,
    clock: &Clock,
) -> bool {
    io.out.is_empty() || flush(stream, io, clock).await.is_ok()
}

/// Reads one BDAT chunk; `None` when the connection ended. A refused chunk
/// is read and thrown away as it arrives: its octets are never commands.
async fn read_bdat<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    session: &mut Session,
    io: &mut Io,
    cfg: &ServerConfig,
    clock: &Clock,
    (size, last): (u64, bool),
    refuse: Option<Reply>,
) -> Option<Reply> {
    let mut b = match io.bdat.take() {
        Some(pending) if refuse.is_none() => pending,
        pending => {
            if let Some(Bdat {
                message: Some(m), ..
            }) = pending
            {
                m.discard().await;
            }
            Bdat {
                reader: BdatReader::new(cfg.data),
                message: if refuse.is_none() {
                    intake(session, cfg)
                } else {
                    None
                },
                deadline: DataDeadline::new(clock),
            }
        }
    };
    b.reader.start_chunk(size, last);
    loop {
        let f = b.reader.feed(&io.inbuf[io.start..], &mut io.scratch);
        io.start += f.consumed;
        if let Some(m) = b.message.as_mut() {
            m.push(&io.scratch).await;
        }
        io.scratch.clear();
        if f.end {
            break;
        }
        let wait = (b.deadline.at, Expiry::Data);
        let more = if flush_before_wait(stream, io, clock).await {
            fill(stream, io, clock, wait, &cfg.session.hostname).await
        } else {
            None
        };
        match more {
            Some(n) => b.deadline.got(n),
            None => {
                if let Some(m) = b.message {
                    m.discard().await;
                }
                session.end_transaction();
                return None;
            }
        }
    }
    if let Some(r) = refuse {
        return Some(r);
    }
    if !last {
        io.bdat = Some(b);
        return Some(session.chunk_done(size));
    }
    Some(finish(session, cfg, b.reader.result(), b.message).await)
}

/// Ends a transaction: the data's verdict, then the spool's; answers.
async fn finish(
    session: &mut Session,
    cfg: &ServerConfig,
    result: Result<DataStats, DataError>,
    message: Option<Intake>,
) -> Reply {
    let connector = session.connector_name().to_string();
    let reply = match (result, message) {
        (_, None) => Reply::bad_sequence("No transaction"),
        (Err(e), Some(m)) => {
            m.discard().await;
            let r = e.reply();
            tracing::info!(%connector, code = r.code, "message refused: {e}");
            r
        }
        (Ok(stats), Some(m)) => match m.commit().await {
            Ok(c) => {
                if let Some(v) = &c.tenant {
                    cfg.metrics.tenant(&connector, v.outcome);
                    tracing::info!(
                        %connector,
                        outcome = %v.outcome,
                        tenant = v.tenant.as_deref().unwrap_or("-"),
                        tenant_ids = %v.tenant_ids.join(","),
                        dkim_domains = %v.dkim_domains.join(","),
                        "tenant check: {}",
                        v.reason
                    );
                }
                if let (Some(device), Some(from)) = (session.device(), c.from_header.as_deref())
                    && !device.may_send_as(from)
                {
                    // The envelope sender was the device's; the From field is
                    // the receiving system's business, but worth knowing.
                    tracing::warn!(device = %device.name, from_header = %from, "the From field is not one of the device's senders");
                }
                let env = c.envelope;
                tracing::info!(
                    id = %env.id,
                    %connector,
                    from = %env.mail_from,
                    rcpts = env.recipients.len(),
                    size = stats.size,
                    headers_removed = c.headers.removed,
                    tls = env.tls.is_some(),
                    "message accepted"
                );
                cfg.metrics.accepted(&connector, stats.size);
                let reply = Reply::queued(&env.id);
                cfg.queue.arrived(env);
                reply
            }
            Err(n) if n.tenant.is_some() => {
                if let Some(v) = &n.tenant {
                    cfg.metrics.tenant(&connector, v.outcome);
                    tracing::warn!(
                        %connector,
                        code = n.reply.code,
                        outcome = %v.outcome,
                        tenant_ids = %v.tenant_ids.join(","),
                        dkim_domains = %v.dkim_domains.join(","),
                        "message refused by the tenant check: {}",
                        v.reason
                    );
                }
                n.reply
            }
            Err(n) if n.reply.code >= 500 => {
                tracing::info!(%connector, code = n.reply.code, "message refused: {}", n.reason);
                n.reply
            }
            Err(n) => {
                tracing::error!(%connector, code = n.reply.code, error = %n.reason, "spool write failed");
                n.reply
            }
        },
    };
    session.end_transaction();
    reply
}
