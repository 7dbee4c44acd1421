//! The AUTH exchange on the wire (RFC 4954): challenges and responses read
//! under the command deadline, then the credentials' check by
//! [`super::auth::Accounts`].

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::session::Session;
use super::settings::ServerConfig;
use super::wire::{Clock, Expiry, Io, fill, flush, send};
use crate::smtp::reply::Reply;

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
pub(super) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
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
