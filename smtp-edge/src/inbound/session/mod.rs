//! The SMTP session state machine: commands in, actions out. No network or
//! spool I/O: the connection ([`super::connection`]) reads and writes, the
//! server ([`super::server`]) runs TLS, [`super::transaction`] spools; this
//! decides. The one read is the device list's at MAIL on submission
//! listeners (a small file), so a removed device or a new password ends
//! what an open session may do.
//! MAIL, RCPT and the envelope they build are in `session/envelope.rs`.
//!
//! Order of checks for a transaction, each refusal logged with the connector:
//! connection → connector by source (none: 554 5.7.1); MAIL → EHLO first, TLS
//! and client certificate as the connector requires (530 5.7.0, 550 5.7.1),
//! SIZE, parameters, sender domain; RCPT → recipient count (452 4.5.3), relay
//! rules (550 5.7.1); DATA/BDAT → at least one recipient.

use std::net::IpAddr;
use std::sync::Arc;

use crate::address::DomainPattern;
use crate::inbound::policy::{Inbound, TlsState};
use crate::queue::spool::{Recipient, TlsInfo};
use crate::smtp::command::{Body, Command, CommandError, Ret};
use crate::smtp::reply::Reply;
use crate::smtp::sasl;
use crate::smtp::trace::Trace;

mod envelope;

/// Settings a session needs (from `[smtp]`).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Host name for the banner, EHLO and Received.
    pub hostname: String,
    /// Accepted domains.
    pub accepted: Vec<DomainPattern>,
    /// Largest message.
    pub max_message_size: u64,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Protocol errors before disconnect.
    pub max_errors: u32,
    /// STARTTLS is offered.
    pub tls_available: bool,
    /// Whether the spool takes mail (MAIL is answered 452 4.3.1 while not).
    pub spool: Arc<crate::queue::spool::Health>,
}

/// What the server must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send the reply, read the next command.
    Reply(Reply),
    /// Send the reply and close the connection.
    Close(Reply),
    /// Send the reply (220), then run the TLS handshake; discard any input
    /// pipelined before it (CVE-2011-0411).
    StartTls(Reply),
    /// Send the reply (354), then read message data until `<CRLF>.<CRLF>`.
    Data(Reply),
    /// Run the AUTH exchange (RFC 4954), then tell the session
    /// ([`Session::authenticated`]).
    Auth(sasl::Start),
    /// Read `size` octets of a BDAT chunk (no reply before it). With
    /// `refuse`, the chunk is read and thrown away, then the reply is sent:
    /// its octets must never be taken for commands.
    Bdat {
        /// Chunk size.
        size: u64,
        /// Last chunk.
        last: bool,
        /// The refusal to send after discarding the chunk.
        refuse: Option<Reply>,
    },
}

/// A transaction in progress.
#[derive(Debug, Clone, Default)]
struct Transaction {
    mail_from: String,
    body: Option<Body>,
    smtputf8: bool,
    ret: Option<Ret>,
    envid: Option<String>,
    recipients: Vec<Recipient>,
    bdat: bool,
}

/// A session on a submission listener (587 or 465): SMTP AUTH is required
/// before MAIL, and an authenticated device may relay.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The client may AUTH without TLS (a legacy device's source).
    pub plaintext_auth: bool,
    /// Message rates.
    pub guard: Arc<crate::inbound::submission::guard::Guard>,
    /// Messages per hour of a device without its own rate.
    pub rate_per_hour: u32,
    /// From and Sender fields that are not the device's: refused or logged.
    pub header_from: crate::inbound::submission::send_as::HeaderFrom,
    /// The device accounts, read again at each MAIL.
    pub devices: crate::inbound::submission::devices::Store,
}

/// One SMTP session.
#[derive(Debug)]
pub struct Session {
    cfg: Arc<SessionConfig>,
    connector: Option<Arc<Inbound>>,
    peer: IpAddr,
    helo: Option<String>,
    esmtp: bool,
    tls: TlsState,
    tls_info: Option<TlsInfo>,
    txn: Option<Transaction>,
    errors: u32,
    submission: Option<Submission>,
    /// The device the client authenticated as.
    auth: Option<crate::inbound::submission::devices::Device>,
}

impl Session {
    /// A session for a connection from `peer` handled by `connector` (`None`:
    /// no connector matches and the connection is refused).
    pub fn new(cfg: Arc<SessionConfig>, connector: Option<Arc<Inbound>>, peer: IpAddr) -> Self {
        Session {
            cfg,
            connector,
            peer,
            helo: None,
            esmtp: false,
            tls: TlsState::default(),
            tls_info: None,
            txn: None,
            errors: 0,
            submission: None,
            auth: None,
        }
    }

    /// The same session on a submission listener.
    pub fn with_submission(mut self, submission: Submission) -> Self {
        self.submission = Some(submission);
        self
    }

    /// Whether this is a submission session.
    pub fn is_submission(&self) -> bool {
        self.submission.is_some()
    }

    /// Whether AUTH is offered now: on submission listeners, after TLS (or
    /// from a legacy source allowed plain text).
    pub fn auth_offered(&self) -> bool {
        self.submission
            .as_ref()
            .is_some_and(|s| self.tls.active || s.plaintext_auth)
    }

    /// The client is `device` from now on (the AUTH exchange succeeded).
    pub fn authenticated(&mut self, device: crate::inbound::submission::devices::Device) {
        self.auth = Some(device);
    }

    /// The device the client authenticated as.
    pub fn device(&self) -> Option<&crate::inbound::submission::devices::Device> {
        self.auth.as_ref()
    }

    /// The send-as check of the device the client authenticated as (none
    /// when it may use any sender, or before AUTH).
    pub fn send_as(&self) -> Option<crate::inbound::submission::send_as::SendAs> {
        let sub = self.submission.as_ref()?;
        let device = self.auth.as_ref().filter(|d| !d.senders.is_empty())?;
        Some(crate::inbound::submission::send_as::SendAs {
            device: device.clone(),
            mode: sub.header_from,
        })
    }

    /// The client's address.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// The connector's name (for logs), or "none".
    pub fn connector_name(&self) -> &str {
        self.connector
            .as_deref()
            .map_or("none", |c| c.name.as_str())
    }

    /// The connector, if any.
    pub fn connector(&self) -> Option<&Inbound> {
        self.connector.as_deref()
    }

    /// The first thing the server says.
    pub fn greeting(&self) -> Action {
        match &self.connector {
            Some(_) => Action::Reply(Reply::greeting(&self.cfg.hostname, "ESMTP smtp-edge")),
            None => Action::Close(Reply::new(
                554,
                (5, 7, 1),
                "No inbound connector accepts mail from your address",
            )),
        }
    }

    /// Whether the session is encrypted.
    pub fn tls_active(&self) -> bool {
        self.tls.active
    }

    /// The TLS handshake finished: a new session starts (RFC 3207 §4.2: the
    /// client must EHLO again, anything before is forgotten).
    pub fn tls_established(&mut self, info: TlsInfo, state: TlsState) {
        self.tls = state;
        self.tls_info = Some(info);
        self.helo = None;
        self.esmtp = false;
        self.txn = None;
        self.auth = None;
    }

    fn error(&mut self, reply: Reply) -> Action {
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            return Action::Close(Reply::new(
                421,
                (4, 7, 0),
                &format!("{} Too many errors, closing connection", self.cfg.hostname),
            ));
        }
        Action::Reply(reply)
    }

    fn ehlo_reply(&self) -> Reply {
        let mut kw = vec![
            "PIPELINING".to_string(),
            format!("SIZE {}", self.cfg.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if self.cfg.tls_available && !self.tls.active {
            kw.push("STARTTLS".into());
        }
        if self.auth_offered() {
            kw.push(format!("AUTH {}", sasl::OFFERED));
        }
        Reply::ehlo(
            &self.cfg.hostname,
            &format!("Hello {}", self.helo.as_deref().unwrap_or("")),
            &kw,
        )
    }

    /// Handles one parsed command (or its parse error).
    pub fn command(&mut self, parsed: Result<Command, CommandError>) -> Action {
        let cmd = match parsed {
            Ok(c) => c,
            // Whatever follows is chunk data of unknown length.
            Err(CommandError::BadChunk) => {
                tracing::info!(connector = self.connector_name(), peer = %self.peer, "unusable BDAT command; closing the session");
                return Action::Close(CommandError::BadChunk.reply());
            }
            Err(e) => return self.error(e.reply()),
        };
        let Some(connector) = self.connector.clone() else {
            return Action::Close(Reply::new(
                554,
                (5, 7, 1),
                "No inbound connector accepts mail from your address",
            ));
        };
        match cmd {
            // Only a domain or an address literal (RFC 5321 §4.1.1.1): the
            // name goes into our Received field.
            Command::Ehlo(h) | Command::Helo(h) if h.host.is_none() => self.error(Reply::new(
                501,
                (5, 5, 4),
                "Syntax: EHLO domain or address literal",
            )),
            Command::Ehlo(h) => {
                self.helo = Some(h.raw);
                self.esmtp = true;
                self.txn = None;
                Action::Reply(self.ehlo_reply())
            }
            Command::Helo(h) => {
                self.helo = Some(h.raw);
                self.esmtp = false;
                self.txn = None;
                Action::Reply(Reply::helo(&self.cfg.hostname))
            }
            Command::Mail { from, params } => self.mail(&connector, from, params),
            Command::Rcpt { to, params } => self.rcpt(&connector, to, params),
            Command::Data => match &self.txn {
                None => self.error(Reply::bad_sequence("Send MAIL first")),
                Some(t) if t.recipients.is_empty() => {
                    self.error(Reply::new(554, (5, 5, 1), "No valid recipients"))
                }
                Some(t) if t.bdat => self.error(Reply::bad_sequence("DATA after BDAT")),
                Some(_) => Action::Data(Reply::start_data()),
            },
            // A chunk larger than any message we take: reading it to stay in
            // step could take gigabytes, so the session ends instead.
            Command::Bdat { size, .. } if size > self.cfg.max_message_size => {
                Action::Close(Reply::new(
                    552,
                    (5, 3, 4),
                    "Chunk larger than the message size limit, closing connection",
                ))
            }
            Command::Bdat { size, last } => {
                let refusal = match self.txn.as_mut() {
                    None => Some(Reply::bad_sequence("Send MAIL first")),
                    Some(t) if t.recipients.is_empty() => {
                        Some(Reply::new(554, (5, 5, 1), "No valid recipients"))
                    }
                    Some(t) => {
                        t.bdat = true;
                        None
                    }
                };
                let refuse = match refusal {
                    Some(r) => match self.error(r) {
                        Action::Reply(r) | Action::Close(r) => Some(r),
                        _ => None,
                    },
                    None => None,
                };
                Action::Bdat { size, last, refuse }
            }
            Command::Rset => {
                self.txn = None;
                Action::Reply(Reply::ok())
            }
            Command::Noop => Action::Reply(Reply::ok()),
            Command::Quit => Action::Close(Reply::closing(&self.cfg.hostname)),
            Command::Vrfy(_) => Action::Reply(Reply::cannot_vrfy()),
            Command::Expn(_) => Action::Reply(Reply::not_implemented()),
            Command::Help(_) => Action::Reply(Reply::help()),
            Command::StartTls => {
                if !self.cfg.tls_available {
                    self.error(Reply::not_implemented())
                } else if self.tls.active {
                    self.error(Reply::bad_sequence("TLS already active"))
                } else {
                    Action::StartTls(Reply::ready_tls())
                }
            }
            Command::Auth(args) => {
                if self.submission.is_none() {
                    return self.error(Reply::unrecognized());
                }
                if self.auth.is_some() {
                    return self.error(Reply::bad_sequence("Already authenticated"));
                }
                if self.txn.is_some() {
                    return self.error(Reply::bad_sequence(
                        "AUTH not permitted during a mail transaction",
                    ));
                }
                if !self.esmtp {
                    return self.error(Reply::bad_sequence("Send EHLO first"));
                }
                if !self.auth_offered() {
                    return Action::Reply(Reply::new(
                        538,
                        (5, 7, 11),
                        "Encryption required for requested authentication mechanism",
                    ));
                }
                match sasl::parse_start(&args) {
                    Ok(start) => Action::Auth(start),
                    Err(r) => self.error(r),
                }
            }
            Command::Unknown(_) => self.error(Reply::unrecognized()),
        }
    }

    /// A BDAT chunk was read; the reply unless it was the last one.
    pub fn chunk_done(&self, size: u64) -> Reply {
        Reply::chunk_ok(size)
    }

    /// Whether the current transaction has taken BDAT chunks. The server
    /// keeps chunks only while this holds: RSET, EHLO, HELO and STARTTLS end
    /// the transaction, and its chunks must not reach the next message.
    pub fn bdat_in_progress(&self) -> bool {
        self.txn.as_ref().is_some_and(|t| t.bdat)
    }

    /// The transaction ended (accepted or refused): a new one may start.
    pub fn end_transaction(&mut self) {
        self.txn = None;
    }

    /// The facts for our `Received:` field of the current transaction.
    pub fn trace(&self, now: u64) -> Trace {
        let ip = match self.peer {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => format!("IPv6:{a}"),
            },
        };
        Trace {
            helo: self.helo.clone(),
            ip,
            hostname: self.cfg.hostname.clone(),
            esmtp: self.esmtp,
            tls: self.tls_info.clone(),
            connector: self.connector_name().to_string(),
            recipient: self
                .txn
                .as_ref()
                .filter(|t| t.recipients.len() == 1)
                .map(|t| t.recipients[0].address.clone()),
            auth: self.auth.as_ref().map(|d| d.name.clone()),
            at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tls: bool) -> Arc<SessionConfig> {
        Arc::new(SessionConfig {
            hostname: "edge.contoso.com".into(),
            accepted: vec![DomainPattern::parse("contoso.com").unwrap()],
            max_message_size: 1000,
            max_recipients: 2,
            max_errors: 3,
            tls_available: tls,
            spool: Arc::default(),
        })
    }

    fn inbound(require_tls: bool, relay: bool) -> Arc<Inbound> {
        Arc::new(Inbound {
            name: "test".into(),
            sources: vec![],
            require_tls,
            client_cert_names: vec![],
            sender_domains: vec![],
            recipient_domains: vec![DomainPattern::Accepted],
            relay,
            trusted_headers: false,
            tenants: None,
        })
    }

    fn run(s: &mut Session, line: &str) -> Action {
        s.command(Command::parse(format!("{line}\r\n").as_bytes()))
    }

    fn code(a: &Action) -> u16 {
        match a {
            Action::Reply(r) | Action::Close(r) | Action::StartTls(r) | Action::Data(r) => r.code,
            Action::Bdat { .. } | Action::Auth(_) => 0,
        }
    }

    fn peer() -> IpAddr {
        "192.0.2.1".parse().unwrap()
    }

    #[test]
    fn a_normal_transaction() {
        let mut s = Session::new(cfg(true), Some(inbound(false, false)), peer());
        assert_eq!(code(&s.greeting()), 220);
        let ehlo = run(&mut s, "EHLO client.example");
        let Action::Reply(r) = &ehlo else { panic!() };
        let text = String::from_utf8(r.to_bytes()).unwrap();
        for kw in [
            "PIPELINING",
            "SIZE 1000",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "STARTTLS",
        ] {
            assert!(text.contains(kw), "{text}");
        }
        assert_eq!(
            code(&run(&mut s, "MAIL FROM:<a@fabrikam.com> SIZE=100")),
            250
        );
        assert_eq!(
            code(&run(
                &mut s,
                "RCPT TO:<b@contoso.com> NOTIFY=SUCCESS,FAILURE"
            )),
            250
        );
        assert_eq!(code(&run(&mut s, "DATA")), 354);
        let env = s.envelope(0).unwrap();
        assert_eq!(env.mail_from, "a@fabrikam.com");
        assert_eq!(env.recipients[0].notify.as_deref(), Some("SUCCESS,FAILURE"));
        let received = s.trace(0).render("ID1");
        assert!(received.starts_with("Received: from client.example ([192.0.2.1])\r\n\tby edge.contoso.com (smtp-edge) with ESMTP"), "{received}");
        assert!(
            received.ends_with("Thu, 01 Jan 1970 00:00:00 +0000\r\n"),
            "{received}"
        );
        s.end_transaction();
        assert_eq!(code(&run(&mut s, "QUIT")), 221);
    }

    #[test]
    fn sequence_and_limits() {
        let mut s = Session::new(cfg(false), Some(inbound(false, false)), peer());
        assert_eq!(code(&run(&mut s, "MAIL FROM:<a@b.example>")), 503);
        run(&mut s, "EHLO c");
        assert_eq!(code(&run(&mut s, "RCPT TO:<b@contoso.com>")), 503);
        assert_eq!(code(&run(&mut s, "MAIL FROM:<a@b.example> SIZE=5000")), 552);
        assert_eq!(code(&run(&mut s, "RSET")), 250);
        assert!(
            matches!(run(&mut s, "MAIL FROM:<a@b.example> FOO=1"), Action::Close(r) if r.code == 421),
            "the third error closes"
        );
    }

    #[test]
    fn recipients_limit_and_relay() {
        let mut s = Session::new(cfg(false), Some(inbound(false, false)), peer());
        run(&mut s, "EHLO c");
        run(&mut s, "MAIL FROM:<>");
        assert_eq!(code(&run(&mut s, "RCPT TO:<x@fabrikam.com>")), 550);
        assert_eq!(code(&run(&mut s, "RCPT TO:<x@contoso.com>")), 250);
        assert_eq!(code(&run(&mut s, "RCPT TO:<Postmaster>")), 250);
        assert_eq!(code(&run(&mut s, "RCPT TO:<y@contoso.com>")), 452);
        assert_eq!(
            code(&run(&mut s, "RCPT TO:<@relay.example:x@contoso.com>")),
            452
        );
    }

    #[test]
    fn tls_required_and_reset_by_starttls() {
        let mut s = Session::new(cfg(true), Some(inbound(true, false)), peer());
        run(&mut s, "EHLO c");
        assert_eq!(code(&run(&mut s, "MAIL FROM:<a@b.example>")), 530);
        assert!(matches!(run(&mut s, "STARTTLS"), Action::StartTls(_)));
        s.tls_established(
            TlsInfo::default(),
            TlsState {
                active: true,
                ..TlsState::default()
            },
        );
        assert_eq!(
            code(&run(&mut s, "MAIL FROM:<a@b.example>")),
            503,
            "EHLO again after TLS"
        );
        let Action::Reply(r) = run(&mut s, "EHLO c") else {
            panic!()
        };
        assert!(
            !String::from_utf8(r.to_bytes())
                .unwrap()
                .contains("STARTTLS")
        );
        assert_eq!(code(&run(&mut s, "MAIL FROM:<a@b.example>")), 250);
        assert_eq!(code(&run(&mut s, "STARTTLS")), 503);
    }

    #[test]
    fn no_connector_refuses_the_connection() {
        let mut s = Session::new(cfg(false), None, peer());
        assert!(matches!(s.greeting(), Action::Close(r) if r.code == 554));
        assert!(matches!(run(&mut s, "EHLO c"), Action::Close(_)));
    }

    #[test]
    fn a_removed_or_changed_device_must_authenticate_again_at_the_next_mail() {
        use crate::inbound::submission::{devices::Store, guard::Guard};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.add("printer", &[], None, None).unwrap();
        store
            .add("scanner", &["contoso.com".into()], None, None)
            .unwrap();
        let session = |device: &str| {
            let mut s = Session::new(cfg(false), Some(inbound(false, true)), peer())
                .with_submission(Submission {
                    plaintext_auth: true,
                    guard: Arc::new(Guard::new(Default::default())),
                    rate_per_hour: 100,
                    header_from: Default::default(),
                    devices: store.clone(),
                });
            run(&mut s, "EHLO c");
            s.authenticated(store.find(device).unwrap().unwrap());
            s
        };
        let (mut printer, mut scanner) = (session("printer"), session("scanner"));
        assert_eq!(code(&run(&mut printer, "MAIL FROM:<a@contoso.com>")), 250);
        assert_eq!(code(&run(&mut printer, "RSET")), 250);
        store.remove("printer").unwrap();
        assert_eq!(code(&run(&mut printer, "MAIL FROM:<a@contoso.com>")), 530);
        assert!(printer.device().is_none(), "AUTH again");
        assert_eq!(code(&run(&mut printer, "MAIL FROM:<a@contoso.com>")), 530);
        store.passwd("scanner").unwrap();
        assert_eq!(code(&run(&mut scanner, "MAIL FROM:<a@contoso.com>")), 530);
        // A session authenticated after the change goes on.
        let mut again = session("scanner");
        assert_eq!(code(&run(&mut again, "MAIL FROM:<a@contoso.com>")), 250);
    }
}
