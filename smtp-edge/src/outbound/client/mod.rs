//! The SMTP client: one connection to one next hop, one transaction.
//!
//! [`deliver`] connects, reads the greeting, says EHLO (HELO when EHLO is
//! refused with 5xx), negotiates STARTTLS at the connector's
//! [`TlsLevel`](crate::outbound::routing::TlsLevel), sends MAIL, RCPT and DATA (in one write when the server
//! offers PIPELINING, RFC 2920) and the content, and returns a result per
//! recipient ([`Outcome`]). It never retries and never tries another host:
//! [`DeliveryError::next_host_may_help`] and the per-recipient results tell
//! the queue what to do.
//!
//! # Results
//!
//! - `Err(DeliveryError)`: nothing was handed over and the error applies to
//!   every recipient alike — no connection, greeting/EHLO/MAIL refused, TLS
//!   required and not possible, the message cannot be sent to this server
//!   (too large, 8-bit, UTF-8), timeouts and protocol errors before any
//!   recipient was answered. [`DeliveryError::is_permanent`] tells a bounce
//!   from a retry, [`DeliveryError::status`] gives the enhanced status code.
//! - `Ok(Outcome)`: the recipients were answered. A recipient refused at
//!   RCPT keeps that reply (4xx transient, 5xx permanent); the accepted ones
//!   get the reply to the final dot (or to DATA when DATA was refused). When
//!   the session broke after the RCPT replies (DATA refused, a timeout, a
//!   lost connection), [`Outcome::failure`] says what happened and the
//!   accepted recipients carry it as their result (transient unless the
//!   server refused DATA with 5xx).
//!
//! A timeout or a lost connection while waiting for the reply to the final
//! dot is reported as transient: the server may have taken the message, and
//! a retry may deliver it twice (RFC 1047); losing it would be worse.
//!
//! # TLS levels (Exchange's names)
//!
//! | level                    | STARTTLS                 | certificate                                  |
//! |--------------------------|--------------------------|----------------------------------------------|
//! | `none`                   | never                    | —                                            |
//! | `opportunistic`          | when offered             | not checked                                  |
//! | `encryption-only`        | required                 | not checked                                  |
//! | `certificate-validation` | required                 | chain verified against [`ClientSettings::roots`], valid now |
//! | `domain-validation`      | required                 | as above, and a name matches [`ClientSettings::tls_name`] (else the next hop's host name) |
//!
//! TLS 1.2 and 1.3 only. The handshake signature is always verified. Under
//! `opportunistic`, a server that refuses STARTTLS (4xx/5xx) gets the mail in
//! clear, as RFC 3207 allows; a handshake that fails is reported as a
//! transient [`DeliveryError::TlsHandshake`] instead of silently continuing
//! in clear on a new connection as Exchange does: the queue retries, and may
//! choose to retry with [`TlsLevel::None`](crate::outbound::routing::TlsLevel::None) to match Exchange. Required TLS
//! that cannot be had (not offered, refused, handshake or certificate
//! failure) is transient too, as in Exchange (the message waits in the queue
//! until the next hop is fixed or the message expires).
//!
//! The configured client certificate ([`ClientSettings::client_cert`]) is
//! presented when the server asks for one (Exchange Online's
//! certificate-based inbound connectors do).
//!
//! After the 220 to STARTTLS, bytes that the server sent beyond that reply
//! (response injection, CVE-2021-38371 class) abort the session before the
//! handshake: [`DeliveryError::Protocol`] at [`Stage::StartTls`], transient.
//! After TLS, EHLO is sent again and only the new extension list is used.
//!
//! ## Certificate names under `domain-validation`
//!
//! `tls_name` (Exchange's `TlsDomain`, else the recipient domain, see
//! [`crate::outbound::routing::Outbound::tls_name`]) is matched against the
//! certificate's subjectAltName entries (the common name is not used, as in
//! every current TLS library):
//!
//! - `mail.contoso.com` matches the DNS name `mail.contoso.com`, and a
//!   wildcard certificate name `*.contoso.com` (one whole leftmost label,
//!   RFC 6125 §6.4.3); an IP address matches an IP address entry.
//! - `*.contoso.com` matches any DNS name below contoso.com
//!   (`mail.contoso.com`, `a.b.contoso.com`, `*.contoso.com`), not
//!   contoso.com itself, as Exchange's wildcard `TlsDomain`.
//!
//! # What is sent
//!
//! - `MAIL FROM:<…>` with `SIZE=` (the content length with CRLF line ends,
//!   when the server announces SIZE), `BODY=8BITMIME` (when the content has
//!   8-bit bytes or the envelope says 8BITMIME/BINARYMIME, and the server
//!   announces 8BITMIME), `SMTPUTF8` (when the envelope asked for it, or the
//!   envelope addresses are not ASCII, and the server announces it),
//!   `RET=`/`ENVID=` (only when the server announces DSN). `RCPT TO:<…>`
//!   with `NOTIFY=`/`ORCPT=` only when the server announces DSN. Parameter
//!   values are sent as stored in the spool (already xtext).
//! - Permanent failures before MAIL, without sending the message: larger
//!   than the server's SIZE (5.3.4); 8-bit content to a server without
//!   8BITMIME (5.6.3: no conversion to quoted-printable is done); non-ASCII
//!   addresses, or UTF-8 in the header section of a message sent with
//!   SMTPUTF8, to a server without SMTPUTF8 (5.6.7: no downgrade is done).
//!   A message that only claims 8BITMIME/SMTPUTF8 but is ASCII goes to such
//!   servers without the parameter.
//! - BINARYMIME content (taken with BDAT) is sent with DATA as 8BITMIME:
//!   CHUNKING is never used.
//! - The content goes with DATA, dot-stuffed, and with CRLF as the only
//!   line end: a bare LF and a bare CR each become CRLF ([`DataEncoder`]).
//!   Whatever the receiving side let through, the next hop sees exactly one
//!   message: `\r\n.\r\r\n`, `\r\r\n.\r\n` or a lone CR cannot end it early.
//!   A missing final CRLF is added before `.\r\n`.
//! - No recipient accepted: no data; QUIT. If a pipelined DATA was answered
//!   354 anyway, the connection is closed without the final dot (so the
//!   server cannot take an empty message).
//!
//! # Limits
//!
//! Every wait is bounded ([`Timeouts`], RFC 5321 §4.5.3.2 defaults). A reply
//! is at most [`MAX_REPLY_BYTES`] octets and [`MAX_REPLY_LINES`] lines; its
//! lines must all carry the same code. Lines ending in a bare LF are
//! accepted from servers (many clients do); reply text is kept as (lossy)
//! UTF-8 with control characters replaced by spaces.

mod conn;
mod content;
mod data;
mod envelope;
mod error;
mod outcome;
mod probe;
mod reply;
mod session;
mod settings;
mod timeouts;
mod tls;
mod tls_configs;

pub use content::{Content, ContentFacts};
pub use data::DataEncoder;
pub use envelope::Transaction;
pub use error::{DeliveryError, Stage};
pub use outcome::{Disposition, Outcome, RcptResult, TlsSession};
pub use probe::{Notice, Step, probe};
pub use reply::{Extensions, MAX_REPLY_BYTES, MAX_REPLY_LINES, Reply, Status, parse_reply};
pub use session::{RSET_WAIT, Session, deliver};
pub use settings::{ClientIdentity, ClientSettings, system_roots};
pub use timeouts::Timeouts;
pub use tls_configs::TlsConfigs;
