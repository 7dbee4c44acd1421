//! The I/O loop of one connection around [`Session`]: commands, pipelined
//! replies, message data streamed to the spool ([`super::transaction`]), the
//! AUTH exchange ([`super::authenticate`]), and the hand-off to the server
//! when STARTTLS is accepted.
//!
//! Replies to pipelined commands are batched and flushed before the loop
//! waits for input (RFC 2920). A message is acknowledged with 250 only after
//! the spool has it on disk. Every wait is bounded by the deadlines of
//! [`super::wire`].

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::authenticate;
use super::metrics::SessionOutcome;
use super::session::{Action, Session};
use super::settings::ServerConfig;
use super::transaction::{read_bdat, read_data};
use super::wire::{Expiry, fill, flush, send};

pub use super::wire::{Clock, Io};

/// Replies gathered beyond this are sent at once, even in the middle of a
/// pipelined batch (a client that sends without reading is held up, not
/// buffered for).
const MAX_PENDING_REPLIES: usize = 16 * 1024;

/// How [`run`] ended.
pub enum Outcome {
    /// The session is over.
    Closed,
    /// Start TLS now.
    StartTls,
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
                    let Some(reply) =
                        authenticate::exchange(stream, session, io, cfg, clock, start).await
                    else {
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
