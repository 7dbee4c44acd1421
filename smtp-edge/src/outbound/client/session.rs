//! One delivery to one next hop: connect, greet, TLS, the transaction, the
//! content, the results.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::conn::{Conn, QUIT_WAIT, Stream};
use super::content::Content;
use super::data::{DATA_CHUNK, DataEncoder};
use super::envelope::{Transaction, envelope_lines};
use super::error::{DeliveryError, Stage, check_data, check_mail, check_rcpt};
use super::outcome::{Outcome, TlsSession, finish, results};
use super::reply::{Extensions, Reply};
use super::settings::ClientSettings;
use crate::outbound::routing::TlsLevel;

/// The longest wait for the reply to RSET on a kept session (Postfix's
/// `smtp_rset_timeout`; capped by [`ClientSettings::timeouts`]' command
/// limit): a dead session costs at most this before a new connection.
pub const RSET_WAIT: Duration = Duration::from_secs(20);

/// Delivers one message to one next hop at `addr` on a session of its own:
/// [`Session::open`], [`Session::send`], QUIT. `host` is the next hop's name
/// as routed (smart host or MX host name, or the address as text): the
/// certificate name under domain validation without
/// [`ClientSettings::tls_name`], and the SNI. See the module documentation
/// for what is sent and what the results mean. Under
/// [`TlsLevel::Opportunistic`] a failed handshake is tried again in clear
/// ([`Session::open`]).
pub async fn deliver(
    addr: SocketAddr,
    host: &str,
    settings: &ClientSettings,
    txn: &Transaction<'_>,
    content: &Content,
) -> Result<Outcome, DeliveryError> {
    let mut session = Session::open(addr, host, settings).await?;
    let result = session.send(txn, content).await;
    session.end(result.as_ref().err()).await;
    result
}

/// An SMTP session with a next hop, greeted, EHLO said and TLS negotiated
/// as the connector's level asks: ready for transactions, one after the
/// other (the queue keeps one open for a moment after a delivery, for the
/// next message to the same next hop, as Postfix's connection cache does).
pub struct Session {
    conn: Conn,
    ext: Extensions,
    tls: Option<TlsSession>,
    addr: SocketAddr,
    opened: Instant,
    /// Between transactions, in step with the server: the last one ended
    /// with the reply that ends it, and nothing was left unread.
    clean: bool,
}

impl Session {
    /// Connects to `addr`, reads the greeting, says EHLO and negotiates TLS.
    ///
    /// Under [`TlsLevel::Opportunistic`], a TLS handshake that fails (or
    /// times out, or cannot be set up) is tried again at once on a new
    /// connection without TLS, as Exchange and Postfix do (with a log
    /// line); stricter levels never fall back.
    pub async fn open(
        addr: SocketAddr,
        host: &str,
        settings: &ClientSettings,
    ) -> Result<Session, DeliveryError> {
        let first = Session::open_once(addr, host, settings).await;
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
        match first {
            Err(e) if settings.tls == TlsLevel::Opportunistic && tls_failed(&e) => {
                tracing::info!(%host, %addr, error = %e, "TLS handshake failed; opportunistic TLS, trying again without TLS");
                let clear = ClientSettings {
                    tls: TlsLevel::None,
                    ..settings.clone()
                };
                Session::open_once(addr, host, &clear).await
            }
            other => other,
        }
    }

    async fn open_once(
        addr: SocketAddr,
        host: &str,
        settings: &ClientSettings,
    ) -> Result<Session, DeliveryError> {
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
            closing: false,
        };
        match greet(&mut conn, host, settings).await {
            Ok((ext, tls)) => Ok(Session {
                conn,
                ext,
                tls,
                addr,
                opened: Instant::now(),
                clean: true,
            }),
            Err(e) => {
                close_after(&mut conn, Some(&e)).await;
                Err(e)
            }
        }
    }

    /// The address it is connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How long ago it was opened.
    pub fn age(&self) -> std::time::Duration {
        self.opened.elapsed()
    }

    /// Whether another transaction may follow on it: still connected, in
    /// step with the server, and the server did not say it is closing
    /// (421).
    pub fn reusable(&self) -> bool {
        self.clean && !self.conn.closing && !matches!(self.conn.stream, Stream::Closed)
    }

    /// RSET before a transaction on a session that already had one (and
    /// waited): `true` when the server answers 250, so the session is known
    /// to be alive and the next transaction starts from a clean state. A
    /// session that sent anything while it waited (a 421 at its idle
    /// timeout, a stray reply) or closed is not used: every later reply
    /// could be one step behind. A session that fails is closed; nothing
    /// was sent for any message. RSET waits at most [`RSET_WAIT`](super::RSET_WAIT).
    pub async fn reset(&mut self) -> bool {
        let ok = self.reusable() && self.conn.buf.is_empty() && self.quiet().await && {
            let limit = self.conn.timeouts.command.min(RSET_WAIT);
            matches!(
                self.conn.command("RSET", Stage::Rset, limit).await,
                Ok(r) if r.code == 250
            )
        };
        if !ok {
            self.clean = false;
            self.conn.close().await;
        }
        ok
    }

    /// Whether the server has sent nothing (and not closed) since the last
    /// reply: one read that must find nothing to read. Over TLS, records
    /// without application data (session tickets) are taken in by the TLS
    /// layer and do not count.
    async fn quiet(&mut self) -> bool {
        let mut probe = [0u8; 512];
        match tokio::time::timeout(Duration::ZERO, self.conn.read_some(&mut probe)).await {
            // Nothing to read yet.
            Err(_) => true,
            Ok(Ok(n)) => {
                if n > 0 {
                    tracing::debug!(addr = %self.addr, bytes = n, "kept session: the server sent something while it waited; not used");
                }
                false
            }
            Ok(Err(_)) => false,
        }
    }

    /// Ends the session after `error` (the result of the last transaction,
    /// if it failed): QUIT when the server is still in step, else the
    /// connection is just closed.
    pub async fn end(mut self, error: Option<&DeliveryError>) {
        if self.reusable() && error.is_none() {
            self.conn.quit().await;
        } else {
            close_after(&mut self.conn, error).await;
        }
    }

    /// One transaction: MAIL, RCPT, DATA and the content; the recipients'
    /// results. See the module documentation. Afterwards
    /// [`Session::reusable`] tells whether another may follow.
    pub async fn send(
        &mut self,
        txn: &Transaction<'_>,
        content: &Content,
    ) -> Result<Outcome, DeliveryError> {
        if !self.reusable() {
            return Err(DeliveryError::Local(
                "internal error: a transaction on a session that cannot take one".into(),
            ));
        }
        self.clean = false;
        let (tls, ext) = (self.tls.clone(), self.ext.clone());
        let mut clean = false;
        let result = transaction(&mut self.conn, txn, content, tls, ext, &mut clean).await;
        self.clean = clean;
        result
    }
}

/// Closes the connection after a failed step: QUIT when the server may
/// still read it (a refusal), a plain close when the connection is broken,
/// out of step or the handshake failed.
async fn close_after(conn: &mut Conn, error: Option<&DeliveryError>) {
    match error {
        Some(
            DeliveryError::Timeout { .. }
            | DeliveryError::Connection { .. }
            | DeliveryError::Protocol { .. }
            | DeliveryError::TlsHandshake(_)
            | DeliveryError::Certificate { .. },
        ) => conn.close().await,
        _ if matches!(conn.stream, Stream::Closed) => {}
        _ => conn.quit().await,
    }
}

/// The greeting, EHLO (HELO), STARTTLS at the connector's level and EHLO
/// again: the extensions in force and the TLS session.
async fn greet(
    conn: &mut Conn,
    host: &str,
    settings: &ClientSettings,
) -> Result<(Extensions, Option<TlsSession>), DeliveryError> {
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
    Ok((ext, tls))
}

/// One transaction on `conn`. `clean` is set when the connection is still
/// in step afterwards (between transactions, nothing left unread): where
/// the session used to QUIT, it now stops in step and lets the owner decide.
async fn transaction(
    conn: &mut Conn,
    txn: &Transaction<'_>,
    content: &Content,
    tls: Option<TlsSession>,
    ext: Extensions,
    clean: &mut bool,
) -> Result<Outcome, DeliveryError> {
    let t = conn.timeouts;
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
                *clean = conn.buf.is_empty();
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
                *clean = conn.buf.is_empty();
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
            DeliveryError::Refused { .. } => *clean = conn.buf.is_empty(),
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
    // More than the one reply to the dot (an LMTP-like server answering per
    // recipient, say) would put every later reply one step behind.
    *clean = conn.buf.is_empty();
    Ok(finish(&rcpt_replies, Some(&final_reply), tls, ext))
}
