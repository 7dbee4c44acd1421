//! One connection's wire: its input and output buffers, the clock with the
//! deadlines that bound every wait, reading more input under a deadline and
//! sending the gathered replies. [`super::connection`] runs the command loop
//! on it, [`super::transaction`] reads message data, [`super::authenticate`]
//! the AUTH exchange.
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

use super::intake::Intake;
use super::metrics::SessionOutcome;
use super::settings::ServerConfig;
use crate::smtp::command::LineSplitter;
use crate::smtp::data::BdatReader;
use crate::smtp::reply::Reply;

/// Octets read at a time.
const READ_CHUNK: usize = 16 * 1024;
/// How long the 421 of an expired deadline may take to go out.
const LAST_WORD: Duration = Duration::from_secs(5);

/// Which limit ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
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
    pub(super) command: Duration,
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
pub(super) struct DataDeadline {
    pub(super) at: Instant,
    cap: Duration,
    rate: u64,
}

impl DataDeadline {
    pub(super) fn new(clock: &Clock) -> Self {
        DataDeadline {
            at: Instant::now() + clock.data,
            cap: clock.data,
            rate: clock.min_rate,
        }
    }

    pub(super) fn got(&mut self, n: usize) {
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
    pub(super) inbuf: Vec<u8>,
    pub(super) start: usize,
    pub(super) out: Vec<u8>,
    /// The data reader's output for one read, handed to the intake.
    pub(super) scratch: Vec<u8>,
    pub(super) splitter: LineSplitter,
    pub(super) bdat: Option<Bdat>,
    /// Why the session ended, once it has (for the metrics).
    pub end: Option<SessionOutcome>,
}

/// A BDAT message in progress: its reader, where it goes (none when the
/// transaction was refused) and its data deadline.
pub(super) struct Bdat {
    pub(super) reader: BdatReader,
    pub(super) message: Option<Intake>,
    pub(super) deadline: DataDeadline,
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

    /// Drops a BDAT message left unfinished, without waiting.
    pub(super) fn drop_bdat(&mut self) {
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
pub(super) async fn fill<S: AsyncRead + AsyncWrite + Unpin>(
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
pub(super) async fn flush<S: AsyncWrite + Unpin>(
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
pub(super) fn send(cfg: &ServerConfig, io: &mut Io, r: &Reply) {
    cfg.metrics.reply(r);
    r.write_to(&mut io.out);
}
