//! One delivery to one next hop: connect, greet, TLS, the transaction, the
//! content, the results.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::conn::{Conn, QUIT_WAIT, Stream};
use super::content::Content;
use super::data::{DATA_CHUNK, DataEncoder};
use super::envelope::{Transaction, envelope_lines};
use super::error::{DeliveryError, Stage, check_data, check_mail, check_rcpt};
use super::outcome::{Outcome, TlsSession, finish, results};
use super::reply::{Extensions, Reply};
use super::settings::ClientSettings;
use crate::routing::TlsLevel;

/// Delivers one message to one next hop at `addr`. `host` is the next hop's
/// name as routed (smart host or MX host name, or the address as text): the
/// certificate name under domain validation without
/// [`ClientSettings::tls_name`], and the SNI. See the module documentation
/// for what is sent and what the results mean.
///
/// Under [`TlsLevel::Opportunistic`], a TLS handshake that fails (or times
/// out, or cannot be set up) is tried again at once on a new connection
/// without TLS, as Exchange and Postfix do (with a log line); stricter
/// levels never fall back.
pub async fn deliver(
    addr: SocketAddr,
    host: &str,
    settings: &ClientSettings,
    txn: &Transaction<'_>,
    content: &Content,
) -> Result<Outcome, DeliveryError> {
    let first = deliver_once(addr, host, settings, txn, content).await;
    let tls_failed = |e: &DeliveryError| {
        matches!(
            e,
            DeliveryError::TlsHandshake(_)
                | DeliveryError::Settings(_)
                | DeliveryError::Timeout {
                    stage: Stage::TlsHandshake
                }
        )
    };
    match &first {
        Err(e) if settings.tls == TlsLevel::Opportunistic && tls_failed(e) => {
            tracing::info!(%host, %addr, error = %e, "TLS handshake failed; opportunistic TLS, trying again without TLS");
            let clear = ClientSettings {
                tls: TlsLevel::None,
                ..settings.clone()
            };
            deliver_once(addr, host, &clear, txn, content).await
        }
        _ => first,
    }
}

async fn deliver_once(
    addr: SocketAddr,
    host: &str,
    settings: &ClientSettings,
    txn: &Transaction<'_>,
    content: &Content,
) -> Result<Outcome, DeliveryError> {
    let t = settings.timeouts;
    let tcp = tokio::time::timeout(t.connect, TcpStream::connect(addr))
        .await
        .map_err(|_| DeliveryError::Timeout {
            stage: Stage::Connect,
        })?
        .map_err(|source| DeliveryError::Connect { addr, source })?;
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn {
        stream: Stream::Plain(tcp),
        buf: Vec::new(),
        timeouts: t,
    };
    let result = session(&mut conn, host, settings, txn, content).await;
    match &result {
        // The connection was already closed, or must be closed without QUIT.
        Ok(_) => {}
        Err(
            DeliveryError::Timeout { .. }
            | DeliveryError::Connection { .. }
            | DeliveryError::Protocol { .. }
            | DeliveryError::TlsHandshake(_)
            | DeliveryError::Certificate { .. },
        ) => conn.close().await,
        Err(_) => conn.quit().await,
    }
    result
}

pub(super) async fn session(
    conn: &mut Conn,
    host: &str,
    settings: &ClientSettings,
    txn: &Transaction<'_>,
    content: &Content,
) -> Result<Outcome, DeliveryError> {
    let t = settings.timeouts;
    let greeting = conn.reply(Stage::Greeting, t.greeting).await?;
    if !greeting.is_positive() {
        return Err(DeliveryError::Refused {
            stage: Stage::Greeting,
            reply: greeting,
        });
    }
    let mut ext = conn.hello(&settings.ehlo_name).await?;
    let mut tls = None;
    if settings.tls != TlsLevel::None {
        if ext.starttls {
            let reply = conn.command("STARTTLS", Stage::StartTls, t.command).await?;
            if reply.code == 220 {
                tls = Some(conn.start_tls(settings, host).await?);
                tracing::debug!(%host, level = %settings.tls, version = ?tls.as_ref().map(|s| &s.version), "TLS to the next hop");
                ext = conn.hello(&settings.ehlo_name).await?;
            } else if settings.tls.requires_tls() {
                return Err(DeliveryError::StartTlsRefused {
                    level: settings.tls,
                    reply,
                });
            } else if !(reply.is_transient() || reply.is_permanent()) {
                return Err(DeliveryError::Protocol {
                    stage: Stage::StartTls,
                    message: format!("unexpected reply {reply}"),
                });
            }
        } else if settings.tls.requires_tls() {
            return Err(DeliveryError::TlsNotOffered {
                level: settings.tls,
            });
        }
    }

    let (mail, rcpts) = envelope_lines(txn, &ext, &content.facts())?;
    let n = rcpts.len();
    let mut rcpt_replies: Vec<Option<Reply>> = vec![None; n];

    // MAIL, RCPT, DATA: in one write with PIPELINING, else one by one.
    // Errors before the RCPT replies apply to all recipients (Err); later
    // ones go into the Outcome.
    let data_reply = if ext.pipelining {
        let mut batch = String::with_capacity(mail.len() + 2 + n * 40 + 6);
        batch.push_str(&mail);
        batch.push_str("\r\n");
        for r in &rcpts {
            batch.push_str(r);
            batch.push_str("\r\n");
        }
        batch.push_str("DATA\r\n");
        conn.send(batch.as_bytes(), Stage::Mail, t.mail).await?;
        let mail_reply = conn.reply(Stage::Mail, t.mail).await?;
        if let Err(e) = check_mail(mail_reply) {
            // The RCPTs and DATA were answered (refused) after a refused
            // MAIL: read those replies (within one bound) so a 354 is
            // noticed, then QUIT, or close when anything is amiss.
            let rest = async {
                for _ in 0..n {
                    conn.reply(Stage::Rcpt, t.rcpt).await?;
                }
                conn.reply(Stage::Data, t.data_init).await
            };
            match tokio::time::timeout(t.command.min(QUIT_WAIT), rest).await {
                Ok(Ok(r)) if r.code != 354 => {}
                _ => conn.close().await,
            }
            return Err(e);
        }
        let mut failure = None;
        for slot in rcpt_replies.iter_mut() {
            match conn.reply(Stage::Rcpt, t.rcpt).await.and_then(check_rcpt) {
                Ok(r) => *slot = Some(r),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let reply = match failure {
            Some(e) => Err(e),
            None => conn.reply(Stage::Data, t.data_init).await,
        };
        let accepted = rcpt_replies
            .iter()
            .any(|r| r.as_ref().is_some_and(Reply::is_positive));
        match reply {
            Ok(r) if r.code == 354 && !accepted => {
                // No recipient, yet a 354: close without a final dot.
                conn.close().await;
                return Ok(finish(&rcpt_replies, None, tls, ext));
            }
            Ok(_) if !accepted => {
                conn.quit().await;
                return Ok(finish(&rcpt_replies, None, tls, ext));
            }
            other => other,
        }
    } else {
        check_mail(conn.command(&mail, Stage::Mail, t.mail).await?)?;
        let mut failure = None;
        for (slot, line) in rcpt_replies.iter_mut().zip(&rcpts) {
            match conn
                .command(line, Stage::Rcpt, t.rcpt)
                .await
                .and_then(check_rcpt)
            {
                Ok(r) => *slot = Some(r),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let accepted = rcpt_replies
            .iter()
            .any(|r| r.as_ref().is_some_and(Reply::is_positive));
        match failure {
            Some(e) => Err(e),
            None if !accepted => {
                conn.quit().await;
                return Ok(finish(&rcpt_replies, None, tls, ext));
            }
            None => conn.command("DATA", Stage::Data, t.data_init).await,
        }
    };

    let outcome_err = |conn_err: DeliveryError,
                       rcpt_replies: &[Option<Reply>],
                       tls: Option<TlsSession>,
                       ext: Extensions| {
        Outcome {
            per_recipient: results(rcpt_replies, Err(&conn_err)),
            failure: Some(conn_err),
            tls,
            extensions: ext,
        }
    };

    if let Err(e) = data_reply.and_then(check_data) {
        match &e {
            DeliveryError::Refused { .. } => conn.quit().await,
            _ => conn.close().await,
        }
        return Ok(outcome_err(e, &rcpt_replies, tls, ext));
    }

    // The content, read a chunk at a time, each write within the data-block
    // limit. A local read error leaves the server without a final dot: it
    // discards what it got.
    let mut encoder = DataEncoder::new();
    let mut out = Vec::with_capacity(DATA_CHUNK + DATA_CHUNK / 2 + 8);
    let mut reader = match content.reader().await {
        Ok(r) => r,
        Err(e) => {
            conn.close().await;
            let e = DeliveryError::Local(format!("cannot read the message: {e}"));
            return Ok(outcome_err(e, &rcpt_replies, tls, ext));
        }
    };
    loop {
        let chunk = match reader.next().await {
            Ok(c) => c,
            Err(e) => {
                conn.close().await;
                let e = DeliveryError::Local(format!("cannot read the message: {e}"));
                return Ok(outcome_err(e, &rcpt_replies, tls, ext));
            }
        };
        out.clear();
        if chunk.is_empty() {
            encoder.finish(&mut out);
        } else {
            encoder.feed(&chunk, &mut out);
        }
        if let Err(e) = conn.send(&out, Stage::Content, t.data_block).await {
            conn.close().await;
            return Ok(outcome_err(e, &rcpt_replies, tls, ext));
        }
        if chunk.is_empty() {
            break;
        }
    }
    let end = conn.reply(Stage::DataEnd, t.data_end).await;
    let final_reply = match end {
        Ok(r) if r.is_positive() || r.is_transient() || r.is_permanent() => r,
        Ok(r) => {
            conn.close().await;
            let e = DeliveryError::Protocol {
                stage: Stage::DataEnd,
                message: format!("unexpected reply {r}"),
            };
            return Ok(outcome_err(e, &rcpt_replies, tls, ext));
        }
        Err(e) => {
            conn.close().await;
            return Ok(outcome_err(e, &rcpt_replies, tls, ext));
        }
    };
    conn.quit().await;
    Ok(finish(&rcpt_replies, Some(&final_reply), tls, ext))
}
