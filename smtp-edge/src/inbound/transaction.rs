//! The end of a transaction: DATA or BDAT chunks read from the wire into a
//! new message ([`Intake`]), then the data's verdict, the spool's, and the
//! final reply (250 only once the spool has the message on disk).

use tokio::io::{AsyncRead, AsyncWrite};

use super::checked::TenantCheck;
use super::intake::Intake;
use super::session::Session;
use super::settings::ServerConfig;
use super::wire::{Bdat, Clock, DataDeadline, Expiry, Io, fill, flush};
use crate::queue::spool;
use crate::smtp::data::{BdatReader, DataError, DataReader, DataStats};
use crate::smtp::reply::Reply;

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
    let intake = Intake::new(
        cfg.spool.clone(),
        cfg.headers.clone(),
        connector.trusted_headers && tenant.is_none(),
        cfg.header_limits,
        envelope,
        session.trace(now),
        tenant,
    );
    Some(match session.send_as() {
        Some(check) => intake.with_send_as(check),
        None => intake,
    })
}

/// Reads DATA content into the spool; `None` when the connection ended.
pub(super) async fn read_data<S: AsyncRead + AsyncWrite + Unpin>(
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
pub(super) async fn read_bdat<S: AsyncRead + AsyncWrite + Unpin>(
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
                        auth_as = %v.auth_as.join(","),
                        "tenant check: {}",
                        v.reason
                    );
                }
                if let (Some(device), Some(m)) = (session.device(), &c.send_as) {
                    // `header_from = "log"`: relayed, but worth knowing.
                    tracing::warn!(device = %device.name, field = m.field, from_header = %m.address, "the From field is not one of the device's senders");
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
                        auth_as = %v.auth_as.join(","),
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
