//! The SMTP client: one connection to one next hop, one transaction.
//!
//! [`deliver`] connects, reads the greeting, says EHLO (HELO when EHLO is
//! refused with 5xx), negotiates STARTTLS at the connector's
//! [`TlsLevel`], sends MAIL, RCPT and DATA (in one write when the server
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
//! choose to retry with [`TlsLevel::None`] to match Exchange. Required TLS
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
//! [`crate::routing::Outbound::tls_name`]) is matched against the
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

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use memchr::memchr2;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::routing::{Outbound, TlsLevel};
use crate::spool::{Envelope, Recipient};
use crate::tls::{TlsError, certificate_subject, load_chain, load_key};

/// The largest reply taken from a server (all lines, with line ends).
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// The most lines in one reply.
pub const MAX_REPLY_LINES: usize = 512;

/// How much content is encoded and written at a time.
const DATA_CHUNK: usize = 64 * 1024;

/// The longest wait for the reply to QUIT (capped by
/// [`Timeouts::command`]).
const QUIT_WAIT: Duration = Duration::from_secs(30);

/// An enhanced status code (RFC 3463), e.g. `(5, 1, 1)`.
pub type Status = (u8, u16, u16);

// ---------------------------------------------------------------------------
// Settings

/// Time limits. The defaults are RFC 5321 §4.5.3.2's client timeouts; the
/// connect limit is not in the RFC (one minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// The greeting ("initial 220 message", 5 minutes).
    pub greeting: Duration,
    /// EHLO/HELO, STARTTLS and the TLS handshake, RSET, QUIT (5 minutes).
    pub command: Duration,
    /// The reply to MAIL (5 minutes).
    pub mail: Duration,
    /// The reply to each RCPT (5 minutes).
    pub rcpt: Duration,
    /// The reply to DATA ("DATA initiation", 2 minutes).
    pub data_init: Duration,
    /// Each write of content ("data block", 3 minutes).
    pub data_block: Duration,
    /// The reply to the final dot ("DATA termination", 10 minutes).
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        const MIN: u64 = 60;
        Timeouts {
            connect: Duration::from_secs(MIN),
            greeting: Duration::from_secs(5 * MIN),
            command: Duration::from_secs(5 * MIN),
            mail: Duration::from_secs(5 * MIN),
            rcpt: Duration::from_secs(5 * MIN),
            data_init: Duration::from_secs(2 * MIN),
            data_block: Duration::from_secs(3 * MIN),
            data_end: Duration::from_secs(10 * MIN),
        }
    }
}

impl Timeouts {
    /// The same limit for everything (tests).
    pub fn all(limit: Duration) -> Self {
        Timeouts {
            connect: limit,
            greeting: limit,
            command: limit,
            mail: limit,
            rcpt: limit,
            data_init: limit,
            data_block: limit,
            data_end: limit,
        }
    }
}

/// A client certificate chain (leaf first) and its private key.
#[derive(Debug)]
pub struct ClientIdentity {
    /// Certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for ClientIdentity {
    fn clone(&self) -> Self {
        ClientIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ClientIdentity {
    /// Reads the PEM files of a connector's client certificate.
    pub fn load(cert: &crate::routing::ClientCert) -> Result<Self, TlsError> {
        Ok(ClientIdentity {
            chain: load_chain(&cert.certificate)?,
            key: load_key(&cert.key)?,
        })
    }
}

/// How to talk to one next hop.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The name sent with EHLO/HELO.
    pub ehlo_name: String,
    /// TLS level.
    pub tls: TlsLevel,
    /// Under [`TlsLevel::DomainValidation`], the name the certificate must
    /// match (`mail.contoso.com` or `*.contoso.com`, see the module
    /// documentation); `None`: the next hop's host name as given to
    /// [`deliver`]. Also sent as SNI when it is a plain host name.
    pub tls_name: Option<String>,
    /// Client certificate presented when the server asks for one.
    pub client_cert: Option<Arc<ClientIdentity>>,
    /// Trusted roots for [`TlsLevel::CertificateValidation`] and
    /// [`TlsLevel::DomainValidation`] (see [`system_roots`]).
    pub roots: Arc<RootCertStore>,
    /// Time limits.
    pub timeouts: Timeouts,
}

impl ClientSettings {
    /// Settings with the given EHLO name and TLS level, no TLS name, no
    /// client certificate, no trusted roots and the default time limits.
    pub fn new(ehlo_name: impl Into<String>, tls: TlsLevel) -> Self {
        ClientSettings {
            ehlo_name: ehlo_name.into(),
            tls,
            tls_name: None,
            client_cert: None,
            roots: Arc::new(RootCertStore::empty()),
            timeouts: Timeouts::default(),
        }
    }

    /// Settings for delivering to `recipient_domain` through an outbound
    /// connector: its EHLO name (else `hostname`), TLS level, TLS name
    /// ([`Outbound::tls_name`]) and client certificate (read from its
    /// files), with `roots` as trust.
    pub fn for_connector(
        connector: &Outbound,
        recipient_domain: &str,
        hostname: &str,
        roots: Arc<RootCertStore>,
    ) -> Result<Self, TlsError> {
        let client_cert = match &connector.client_cert {
            Some(c) => Some(Arc::new(ClientIdentity::load(c)?)),
            None => None,
        };
        Ok(ClientSettings {
            ehlo_name: connector
                .ehlo_name
                .clone()
                .unwrap_or_else(|| hostname.to_string()),
            tls: connector.tls,
            tls_name: connector.tls_name(recipient_domain).map(str::to_string),
            client_cert,
            roots,
            timeouts: Timeouts::default(),
        })
    }
}

/// The system's trusted roots (rustls-native-certs); certificates it cannot
/// use are skipped. Load once and share.
pub fn system_roots() -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    Arc::new(roots)
}

/// The envelope of one delivery.
#[derive(Debug, Clone, Copy)]
pub struct Transaction<'a> {
    /// Reverse path, without angle brackets ("" for the null sender).
    pub mail_from: &'a str,
    /// Recipients with their DSN parameters as stored; results refer to
    /// positions in this slice.
    pub recipients: &'a [Recipient],
    /// BODY as stored (`7BIT`, `8BITMIME`, `BINARYMIME`).
    pub body: Option<&'a str>,
    /// The sender asked for SMTPUTF8.
    pub smtputf8: bool,
    /// RET as stored (`FULL`, `HDRS`).
    pub ret: Option<&'a str>,
    /// ENVID as stored (xtext).
    pub envid: Option<&'a str>,
}

impl<'a> Transaction<'a> {
    /// A spooled message's envelope with the recipients of one route.
    pub fn new(envelope: &'a Envelope, recipients: &'a [Recipient]) -> Self {
        Transaction {
            mail_from: &envelope.mail_from,
            recipients,
            body: envelope.body.as_deref(),
            smtputf8: envelope.smtputf8,
            ret: envelope.ret.as_deref(),
            envid: envelope.envid.as_deref(),
        }
    }
}

// ---------------------------------------------------------------------------
// Replies

/// One server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The enhanced status code at the start of the first line, when there
    /// is one whose class matches the code.
    pub enhanced: Option<Status>,
    /// Each line's text after `250-`/`250 ` (control characters replaced by
    /// spaces).
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The enhanced status code, or `class.0.0` from the basic code.
    pub fn status(&self) -> Status {
        self.enhanced.unwrap_or(((self.code / 100) as u8, 0, 0))
    }

    /// The text without the enhanced status code, lines joined with `\n`.
    pub fn text(&self) -> String {
        let prefix = self
            .enhanced
            .map(|(a, b, c)| format!("{a}.{b}.{c}"))
            .unwrap_or_default();
        self.lines
            .iter()
            .map(|l| match l.strip_prefix(prefix.as_str()) {
                Some(rest) if !prefix.is_empty() => rest.trim_start(),
                _ => l.as_str(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The reply as received, one `code text` per line joined with `\n`
    /// (for a DSN's Diagnostic-Code: `smtp; ` + this).
    pub fn diagnostic(&self) -> String {
        self.lines
            .iter()
            .map(|l| {
                if l.is_empty() {
                    self.code.to_string()
                } else {
                    format!("{} {l}", self.code)
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        for (i, l) in self.lines.iter().enumerate() {
            f.write_str(if i == 0 { " " } else { " / " })?;
            f.write_str(l)?;
        }
        Ok(())
    }
}

/// `x.y.z` at the start of `text`, followed by a space or the end, whose
/// class is `class`.
fn parse_enhanced(text: &str, class: u8) -> Option<Status> {
    let word = text.split(' ').next()?;
    let mut parts = word.split('.');
    let (a, b, c) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let digits = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !(digits(a, 1) && digits(b, 3) && digits(c, 3)) {
        return None;
    }
    let a: u8 = a.parse().ok()?;
    (a == class).then_some((a, b.parse().ok()?, c.parse().ok()?))
}

/// One complete reply at the start of `buf` and how many bytes it took;
/// `Ok(None)` when more bytes are needed. Errors: malformed lines, a code
/// that changes between lines, more than [`MAX_REPLY_LINES`] lines or
/// [`MAX_REPLY_BYTES`] bytes.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let mut pos = 0;
    let mut code = None;
    let mut lines = Vec::new();
    loop {
        let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
            return if buf.len() > MAX_REPLY_BYTES {
                Err(format!("reply longer than {MAX_REPLY_BYTES} bytes"))
            } else {
                Ok(None)
            };
        };
        let end = pos + nl + 1;
        if end > MAX_REPLY_BYTES {
            return Err(format!("reply longer than {MAX_REPLY_BYTES} bytes"));
        }
        let raw = &buf[pos..pos + nl];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        pos = end;
        let shown = || String::from_utf8_lossy(&raw[..raw.len().min(80)]).into_owned();
        let valid = raw.len() >= 3
            && (b'2'..=b'5').contains(&raw[0])
            && (b'0'..=b'5').contains(&raw[1])
            && raw[2].is_ascii_digit()
            && matches!(raw.get(3), None | Some(b' ') | Some(b'-'));
        if !valid {
            return Err(format!("malformed reply line {:?}", shown()));
        }
        let c = u16::from(raw[0] - b'0') * 100
            + u16::from(raw[1] - b'0') * 10
            + u16::from(raw[2] - b'0');
        if *code.get_or_insert(c) != c {
            return Err(format!("reply code changes within a reply: {:?}", shown()));
        }
        let text: String = String::from_utf8_lossy(raw.get(4..).unwrap_or_default())
            .chars()
            .map(|ch| if ch.is_control() { ' ' } else { ch })
            .collect();
        lines.push(text);
        if lines.len() > MAX_REPLY_LINES {
            return Err(format!("reply longer than {MAX_REPLY_LINES} lines"));
        }
        if raw.get(3) != Some(&b'-') {
            let class = (c / 100) as u8;
            let enhanced = parse_enhanced(&lines[0], class);
            return Ok(Some((
                Reply {
                    code: c,
                    enhanced,
                    lines,
                },
                pos,
            )));
        }
    }
}

/// What a server announced in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// The session used EHLO (false after falling back to HELO).
    pub esmtp: bool,
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE was announced (RFC 1870).
    pub size: bool,
    /// The SIZE limit, when one above 0 was announced.
    pub size_limit: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// DSN (RFC 3461).
    pub dsn: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// CHUNKING (RFC 3030); never used.
    pub chunking: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced_status_codes: bool,
}

impl Extensions {
    /// The extensions in the lines after the first of an EHLO reply.
    pub fn parse(reply: &Reply) -> Self {
        let mut e = Extensions {
            esmtp: true,
            ..Extensions::default()
        };
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => e.pipelining = true,
                "SIZE" => {
                    e.size = true;
                    e.size_limit = words
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                        .filter(|n| *n > 0);
                }
                "8BITMIME" => e.eight_bit_mime = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "DSN" => e.dsn = true,
                "STARTTLS" => e.starttls = true,
                "CHUNKING" => e.chunking = true,
                "ENHANCEDSTATUSCODES" => e.enhanced_status_codes = true,
                _ => {}
            }
        }
        e
    }
}

// ---------------------------------------------------------------------------
// Content

/// Turns message content into DATA's wire form: CRLF as the only line end
/// (a bare LF, a bare CR, and the CR of a CR CR LF each become CRLF), a `.`
/// added before every line that starts with `.` (RFC 5321 §4.5.2), and at
/// the end a CRLF if the content lacks one, then `.` CRLF.
///
/// Feed the content in pieces of any size; the result does not depend on
/// where they are cut.
#[derive(Debug, Clone)]
pub struct DataEncoder {
    /// Whether dots are stuffed (not when only measuring).
    stuff: bool,
    /// The output is at the start of a line.
    line_start: bool,
    /// The last input byte was a CR whose line end is not written yet.
    cr_pending: bool,
}

impl Default for DataEncoder {
    fn default() -> Self {
        DataEncoder::new()
    }
}

impl DataEncoder {
    /// An encoder at the start of the content.
    pub fn new() -> Self {
        DataEncoder {
            stuff: true,
            line_start: true,
            cr_pending: false,
        }
    }

    /// Appends the wire form of `input` to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while let Some(&first) = input.first() {
            if self.cr_pending {
                self.cr_pending = false;
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
                if first == b'\n' {
                    input = &input[1..];
                    continue;
                }
            }
            let end = memchr2(b'\r', b'\n', input).unwrap_or(input.len());
            if end > 0 {
                if self.stuff && self.line_start && first == b'.' {
                    out.push(b'.');
                }
                out.extend_from_slice(&input[..end]);
                self.line_start = false;
                input = &input[end..];
                continue;
            }
            if first == b'\r' {
                self.cr_pending = true;
            } else {
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
            }
            input = &input[1..];
        }
    }

    /// Ends the content: the pending line end, a CRLF if the content did
    /// not end with one, and (when stuffing) the terminating `.` CRLF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.cr_pending || !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        self.cr_pending = false;
        self.line_start = true;
        if self.stuff {
            out.extend_from_slice(b".\r\n");
        }
    }

    /// The whole wire form of `content`, terminator included.
    pub fn encode(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(content.len() + content.len() / 50 + 8);
        let mut e = DataEncoder::new();
        e.feed(content, &mut out);
        e.finish(&mut out);
        out
    }

    /// The size of `content` with CRLF line ends (and a final CRLF), without
    /// dot-stuffing or terminator: the SIZE= value (RFC 1870).
    pub fn message_size(content: &[u8]) -> u64 {
        let mut e = DataEncoder {
            stuff: false,
            ..DataEncoder::new()
        };
        let mut size = 0u64;
        let mut out = Vec::with_capacity(DATA_CHUNK + DATA_CHUNK / 2);
        for chunk in content.chunks(DATA_CHUNK) {
            out.clear();
            e.feed(chunk, &mut out);
            size += out.len() as u64;
        }
        out.clear();
        e.finish(&mut out);
        size + out.len() as u64
    }
}

/// The header section of a message (up to the first empty line).
fn header_section(content: &[u8]) -> &[u8] {
    let mut start = 0;
    while let Some(nl) = memchr::memchr(b'\n', &content[start..]) {
        let line = &content[start..start + nl];
        if line.is_empty() || line == b"\r" {
            return &content[..start];
        }
        start += nl + 1;
    }
    content
}

// ---------------------------------------------------------------------------
// Errors and results

/// Where in the session something happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// TCP connect.
    Connect,
    /// Waiting for the greeting.
    Greeting,
    /// EHLO.
    Ehlo,
    /// HELO (after EHLO was refused).
    Helo,
    /// STARTTLS and its reply.
    StartTls,
    /// The TLS handshake.
    TlsHandshake,
    /// Checks before MAIL (size, 8-bit, UTF-8, envelope syntax).
    Envelope,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA and its 354.
    Data,
    /// Sending the content.
    Content,
    /// Waiting for the reply to the final dot.
    DataEnd,
    /// QUIT.
    Quit,
}

impl Stage {
    /// Lower-case name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::Helo => "HELO",
            Stage::StartTls => "STARTTLS",
            Stage::TlsHandshake => "TLS handshake",
            Stage::Envelope => "envelope",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::Content => "message content",
            Stage::DataEnd => "end of data",
            Stage::Quit => "QUIT",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a delivery (or, in [`Outcome::failure`], the rest of it) failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No TCP connection: try the next host. Transient (4.4.1).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// The system's error.
        source: io::Error,
    },
    /// No reply (or no progress writing) in time. Transient (4.4.2).
    #[error("timeout at {stage}")]
    Timeout {
        /// What was being waited for.
        stage: Stage,
    },
    /// The connection broke (reset, closed by the server). Transient
    /// (4.4.2).
    #[error("connection lost at {stage}: {source}")]
    Connection {
        /// What was going on.
        stage: Stage,
        /// The system's error.
        source: io::Error,
    },
    /// The server refused the greeting, EHLO/HELO, MAIL or DATA: 4xx
    /// transient, 5xx permanent, for every recipient concerned.
    #[error("{stage} refused: {reply}")]
    Refused {
        /// Which step.
        stage: Stage,
        /// The server's reply.
        reply: Reply,
    },
    /// TLS required, STARTTLS not announced. Transient (4.7.10).
    #[error("TLS is required ({level}) but the server does not offer STARTTLS")]
    TlsNotOffered {
        /// The connector's level.
        level: TlsLevel,
    },
    /// TLS required, STARTTLS refused. Transient (4.7.10).
    #[error("TLS is required ({level}) but STARTTLS was refused: {reply}")]
    StartTlsRefused {
        /// The connector's level.
        level: TlsLevel,
        /// The server's reply.
        reply: Reply,
    },
    /// The handshake failed (for a reason other than the certificate).
    /// Transient (4.7.5).
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(String),
    /// The server's certificate does not satisfy the level. Transient
    /// (4.7.5).
    #[error("server certificate not accepted ({level}): {reason}")]
    Certificate {
        /// The connector's level.
        level: TlsLevel,
        /// Why.
        reason: String,
    },
    /// The server broke the protocol (malformed or oversized reply, an
    /// unexpected code, bytes injected after the 220 to STARTTLS).
    /// Transient (4.5.0).
    #[error("protocol error at {stage}: {message}")]
    Protocol {
        /// Where.
        stage: Stage,
        /// What.
        message: String,
    },
    /// Larger than the server's SIZE limit. Permanent (5.3.4).
    #[error("message size {size} exceeds the server's limit of {limit} octets")]
    TooBig {
        /// The message size (CRLF line ends).
        size: u64,
        /// The server's SIZE.
        limit: u64,
    },
    /// 8-bit content and no 8BITMIME. Permanent (5.6.3).
    #[error("the message has 8-bit content and the server does not support 8BITMIME")]
    EightBitUnsupported,
    /// Non-ASCII addresses or headers and no SMTPUTF8. Permanent (5.6.7).
    #[error("the message needs SMTPUTF8 and the server does not support it")]
    Utf8Unsupported,
    /// An envelope value that cannot be sent (control characters, spaces in
    /// a parameter). Permanent (5.5.4); the receiving side never stores one.
    #[error("invalid envelope: {0}")]
    BadEnvelope(String),
    /// Settings that do not work (a TLS name that is not a name, a client
    /// certificate rustls refuses). Transient (4.3.5): fix and retry.
    #[error("client settings: {0}")]
    Settings(String),
}

impl DeliveryError {
    /// Whether the failure is permanent (bounce) rather than transient
    /// (retry later).
    pub fn is_permanent(&self) -> bool {
        self.status().0 == 5
    }

    /// The enhanced status code for DSNs and logs.
    pub fn status(&self) -> Status {
        match self {
            DeliveryError::Connect { .. } => (4, 4, 1),
            DeliveryError::Timeout { .. } | DeliveryError::Connection { .. } => (4, 4, 2),
            DeliveryError::Refused { reply, .. } => {
                if reply.is_permanent() {
                    reply.status()
                } else {
                    match reply.enhanced {
                        Some(s) if s.0 == 4 => s,
                        _ => (4, 0, 0),
                    }
                }
            }
            DeliveryError::TlsNotOffered { .. } | DeliveryError::StartTlsRefused { .. } => {
                (4, 7, 10)
            }
            DeliveryError::TlsHandshake(_) | DeliveryError::Certificate { .. } => (4, 7, 5),
            DeliveryError::Protocol { .. } => (4, 5, 0),
            DeliveryError::TooBig { .. } => (5, 3, 4),
            DeliveryError::EightBitUnsupported => (5, 6, 3),
            DeliveryError::Utf8Unsupported => (5, 6, 7),
            DeliveryError::BadEnvelope(_) => (5, 5, 4),
            DeliveryError::Settings(_) => (4, 3, 5),
        }
    }

    /// The server's reply, when a reply caused the failure.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            DeliveryError::Refused { reply, .. } | DeliveryError::StartTlsRefused { reply, .. } => {
                Some(reply)
            }
            _ => None,
        }
    }

    /// Whether another host for the same destination (the next MX or smart
    /// host) may do better right away: no connection, a refused greeting or
    /// EHLO/HELO, TLS that could not be had, a timeout or lost connection
    /// before MAIL. Not for failures about the message or its sender.
    pub fn next_host_may_help(&self) -> bool {
        match self {
            DeliveryError::Connect { .. }
            | DeliveryError::TlsNotOffered { .. }
            | DeliveryError::StartTlsRefused { .. }
            | DeliveryError::TlsHandshake(_)
            | DeliveryError::Certificate { .. } => true,
            DeliveryError::Refused { stage, .. } => {
                matches!(stage, Stage::Greeting | Stage::Ehlo | Stage::Helo)
            }
            DeliveryError::Timeout { stage }
            | DeliveryError::Connection { stage, .. }
            | DeliveryError::Protocol { stage, .. } => matches!(
                stage,
                Stage::Connect
                    | Stage::Greeting
                    | Stage::Ehlo
                    | Stage::Helo
                    | Stage::StartTls
                    | Stage::TlsHandshake
            ),
            _ => false,
        }
    }
}

/// What became of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// The server took responsibility (2xx to the final dot).
    Delivered,
    /// Not delivered; retry later.
    Transient,
    /// Not delivered; bounce.
    Permanent,
}

/// The result for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptResult {
    /// Position in [`Transaction::recipients`].
    pub index: usize,
    /// Delivered, transient or permanent failure.
    pub disposition: Disposition,
    /// The server's reply that decided it (RCPT's for a refused recipient,
    /// the final dot's or DATA's for an accepted one); `None` when it was
    /// decided here (see [`Outcome::failure`]).
    pub reply: Option<Reply>,
    /// Enhanced status code (the reply's, else derived).
    pub status: Status,
    /// Human-readable explanation (the reply's text, or the local error).
    pub text: String,
}

impl RcptResult {
    fn from_reply(index: usize, reply: &Reply) -> Self {
        let disposition = if reply.is_positive() {
            Disposition::Delivered
        } else if reply.is_permanent() {
            Disposition::Permanent
        } else {
            Disposition::Transient
        };
        RcptResult {
            index,
            disposition,
            reply: Some(reply.clone()),
            status: reply.status(),
            text: reply.text(),
        }
    }

    fn from_error(index: usize, e: &DeliveryError) -> Self {
        if let Some(reply) = e.reply() {
            return RcptResult::from_reply(index, reply);
        }
        RcptResult {
            index,
            disposition: if e.is_permanent() {
                Disposition::Permanent
            } else {
                Disposition::Transient
            },
            reply: None,
            status: e.status(),
            text: e.to_string(),
        }
    }
}

/// TLS as negotiated with the next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSession {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// Cipher suite name.
    pub cipher: String,
    /// Subject of the server's certificate.
    pub peer_subject: Option<String>,
}

/// The result of a transaction whose recipients were answered.
#[derive(Debug)]
pub struct Outcome {
    /// One result per recipient, in the order of
    /// [`Transaction::recipients`].
    pub per_recipient: Vec<RcptResult>,
    /// What went wrong after the recipients were answered (DATA refused, a
    /// timeout, a lost connection), if anything; the accepted recipients'
    /// results carry it.
    pub failure: Option<DeliveryError>,
    /// TLS, when the session used it.
    pub tls: Option<TlsSession>,
    /// The extensions the server announced (after STARTTLS, the second
    /// list).
    pub extensions: Extensions,
}

impl Outcome {
    /// Whether every recipient was delivered.
    pub fn all_delivered(&self) -> bool {
        self.per_recipient
            .iter()
            .all(|r| r.disposition == Disposition::Delivered)
    }
}

// ---------------------------------------------------------------------------
// Certificate verification

/// The name the certificate must carry under domain validation.
#[derive(Debug, Clone)]
enum ExpectedName {
    /// A host name or IP address (webpki's RFC 6125 matching).
    Exact(ServerName<'static>),
    /// `*.domain`: any DNS name below `domain` (lower case).
    Below(String),
}

#[derive(Debug)]
struct NextHopVerifier {
    level: TlsLevel,
    roots: Arc<RootCertStore>,
    name: Option<ExpectedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

fn cert_error(e: impl Into<rustls::Error>) -> rustls::Error {
    e.into()
}

/// SAN DNS names of a certificate, lower case without a trailing dot.
fn san_dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok((_, x)) = x509_parser::parse_x509_certificate(cert.as_ref())
        && let Ok(Some(san)) = x.subject_alternative_name()
    {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    names
}

/// Whether a certificate DNS name lies below `domain` (for a `*.domain`
/// TLS name): `x.domain`, `a.b.domain`, `*.domain`, `*.x.domain`; a `*` is
/// only allowed as a whole leftmost label.
fn below(name: &str, domain: &str) -> bool {
    let Some(prefix) = name.strip_suffix(domain).and_then(|p| p.strip_suffix('.')) else {
        return false;
    };
    if prefix.is_empty() {
        return false;
    }
    prefix
        .split('.')
        .enumerate()
        .all(|(i, label)| !label.is_empty() && (label == "*" && i == 0 || !label.contains('*')))
}

impl ServerCertVerifier for NextHopVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.level.verifies_certificate() {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match &self.name {
            None => {}
            Some(ExpectedName::Exact(name)) => verify_server_name(&cert, name)?,
            Some(ExpectedName::Below(domain))
                if !san_dns_names(end_entity).iter().any(|n| below(n, domain)) =>
            {
                return Err(cert_error(rustls::CertificateError::NotValidForName));
            }
            Some(ExpectedName::Below(_)) => {}
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn server_name(text: &str) -> Option<ServerName<'static>> {
    let t = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let t = t
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .map(|x| x.strip_prefix("ipv6:").unwrap_or(x).to_string())
        .unwrap_or(t);
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(t).ok()
}

/// The rustls configuration and SNI for a session with `host`.
fn tls_setup(
    settings: &ClientSettings,
    host: &str,
) -> Result<(Arc<ClientConfig>, ServerName<'static>), DeliveryError> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let host_name = server_name(host);
    let name = match (settings.tls, settings.tls_name.as_deref()) {
        (TlsLevel::DomainValidation, Some(n)) => {
            let n = n.trim().trim_end_matches('.').to_ascii_lowercase();
            Some(match n.strip_prefix("*.") {
                Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                    ExpectedName::Below(domain.to_string())
                }
                _ => ExpectedName::Exact(server_name(&n).ok_or_else(|| {
                    DeliveryError::Settings(format!("TLS name `{n}` is not a host name"))
                })?),
            })
        }
        (TlsLevel::DomainValidation, None) => {
            Some(ExpectedName::Exact(host_name.clone().ok_or_else(|| {
                DeliveryError::Settings(format!(
                    "domain validation without a TLS name, and `{host}` is not a host name"
                ))
            })?))
        }
        _ => None,
    };
    // SNI: the exact TLS name, else the host name (no SNI for an address).
    let sni = match &name {
        Some(ExpectedName::Exact(n)) => n.clone(),
        _ => host_name.unwrap_or(ServerName::IpAddress(IpAddr::from([0u8, 0, 0, 0]).into())),
    };
    let verifier = Arc::new(NextHopVerifier {
        level: settings.tls,
        roots: settings.roots.clone(),
        name,
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| DeliveryError::Settings(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &settings.client_cert {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| DeliveryError::Settings(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok((Arc::new(config), sni))
}

/// A readable reason for a certificate rustls refused.
fn describe_certificate(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    match e {
        C::UnknownIssuer => "unknown issuer (the chain does not lead to a trusted CA)".into(),
        C::Expired | C::ExpiredContext { .. } => "certificate expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "certificate not valid yet".into(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "certificate name does not match".into()
        }
        C::BadSignature => "bad signature".into(),
        C::Revoked => "certificate revoked".into(),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "certificate not valid for server authentication".into()
        }
        other => format!("invalid certificate ({other:?})"),
    }
}

// ---------------------------------------------------------------------------
// The connection

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Closed,
}

struct Conn {
    stream: Stream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
    timeouts: Timeouts,
}

impl Conn {
    async fn read_some(&mut self, chunk: &mut [u8]) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Plain(s) => s.read(chunk).await,
            Stream::Tls(s) => s.read(chunk).await,
            Stream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.stream {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Stream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// The next reply, within `limit`.
    async fn reply(&mut self, stage: Stage, limit: Duration) -> Result<Reply, DeliveryError> {
        let read = async {
            let mut chunk = [0u8; 4096];
            loop {
                match parse_reply(&self.buf) {
                    Ok(Some((reply, used))) => {
                        self.buf.drain(..used);
                        return Ok(reply);
                    }
                    Ok(None) => {}
                    Err(message) => return Err(DeliveryError::Protocol { stage, message }),
                }
                let n = self
                    .read_some(&mut chunk)
                    .await
                    .map_err(|source| DeliveryError::Connection { stage, source })?;
                if n == 0 {
                    return Err(DeliveryError::Connection {
                        stage,
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed the connection",
                        ),
                    });
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(limit, read)
            .await
            .map_err(|_| DeliveryError::Timeout { stage })?
    }

    /// Writes `bytes` within `limit`.
    async fn send(
        &mut self,
        bytes: &[u8],
        stage: Stage,
        limit: Duration,
    ) -> Result<(), DeliveryError> {
        tokio::time::timeout(limit, self.write_raw(bytes))
            .await
            .map_err(|_| DeliveryError::Timeout { stage })?
            .map_err(|source| DeliveryError::Connection { stage, source })
    }

    /// Sends one command line and reads its reply.
    async fn command(
        &mut self,
        line: &str,
        stage: Stage,
        limit: Duration,
    ) -> Result<Reply, DeliveryError> {
        self.send(format!("{line}\r\n").as_bytes(), stage, limit)
            .await?;
        self.reply(stage, limit).await
    }

    /// QUIT, waiting briefly for the reply; errors do not matter any more.
    async fn quit(&mut self) {
        let limit = self.timeouts.command.min(QUIT_WAIT);
        if self.send(b"QUIT\r\n", Stage::Quit, limit).await.is_ok() {
            let _ = self.reply(Stage::Quit, limit).await;
        }
        self.close().await;
    }

    async fn close(&mut self) {
        let limit = self.timeouts.command.min(QUIT_WAIT);
        match &mut self.stream {
            Stream::Plain(s) => {
                let _ = tokio::time::timeout(limit, s.shutdown()).await;
            }
            Stream::Tls(s) => {
                let _ = tokio::time::timeout(limit, s.shutdown()).await;
            }
            Stream::Closed => {}
        }
        self.stream = Stream::Closed;
    }

    /// EHLO, or HELO when EHLO is refused with 5xx.
    async fn hello(&mut self, name: &str) -> Result<Extensions, DeliveryError> {
        let limit = self.timeouts.command;
        let reply = self
            .command(&format!("EHLO {name}"), Stage::Ehlo, limit)
            .await?;
        if reply.is_positive() {
            return Ok(Extensions::parse(&reply));
        }
        if !reply.is_permanent() {
            return Err(DeliveryError::Refused {
                stage: Stage::Ehlo,
                reply,
            });
        }
        let reply = self
            .command(&format!("HELO {name}"), Stage::Helo, limit)
            .await?;
        if reply.is_positive() {
            Ok(Extensions::default())
        } else {
            Err(DeliveryError::Refused {
                stage: Stage::Helo,
                reply,
            })
        }
    }

    /// STARTTLS after its 220: refuses a tainted stream, shakes hands.
    async fn start_tls(
        &mut self,
        settings: &ClientSettings,
        host: &str,
    ) -> Result<TlsSession, DeliveryError> {
        let injected = |n: usize| DeliveryError::Protocol {
            stage: Stage::StartTls,
            message: format!(
                "{n} byte(s) received after the 220 to STARTTLS, before the TLS handshake \
                 (response injection); TLS not started on a tainted connection"
            ),
        };
        if !self.buf.is_empty() {
            return Err(injected(self.buf.len()));
        }
        let tcp = match std::mem::replace(&mut self.stream, Stream::Closed) {
            Stream::Plain(tcp) => tcp,
            other => {
                self.stream = other;
                return Err(DeliveryError::Protocol {
                    stage: Stage::StartTls,
                    message: "STARTTLS on a connection that already uses TLS".into(),
                });
            }
        };
        // Bytes that arrived in a later segment but before the handshake:
        // ask the kernel directly (tokio's readiness may lag behind).
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 512];
        match socket2::SockRef::from(&tcp).peek(&mut probe) {
            Ok(0) => {
                return Err(DeliveryError::Connection {
                    stage: Stage::StartTls,
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
            Ok(n) => return Err(injected(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(source) => {
                return Err(DeliveryError::Connection {
                    stage: Stage::StartTls,
                    source,
                });
            }
        }
        let (config, sni) = tls_setup(settings, host)?;
        let connect = TlsConnector::from(config).connect(sni, tcp);
        let tls = tokio::time::timeout(self.timeouts.command, connect)
            .await
            .map_err(|_| DeliveryError::Timeout {
                stage: Stage::TlsHandshake,
            })?
            .map_err(|e| {
                let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                match inner {
                    Some(rustls::Error::InvalidCertificate(c)) => DeliveryError::Certificate {
                        level: settings.tls,
                        reason: describe_certificate(c),
                    },
                    Some(other) => DeliveryError::TlsHandshake(other.to_string()),
                    None => DeliveryError::TlsHandshake(e.to_string()),
                }
            })?;
        let c = tls.get_ref().1;
        let session = TlsSession {
            version: c
                .protocol_version()
                .map_or("TLS".into(), |v| format!("{v:?}").replace('_', ".")),
            cipher: c
                .negotiated_cipher_suite()
                .map_or(String::new(), |s| format!("{:?}", s.suite())),
            peer_subject: c
                .peer_certificates()
                .and_then(|p| p.first())
                .map(certificate_subject),
        };
        self.stream = Stream::Tls(Box::new(tls));
        Ok(session)
    }
}

// ---------------------------------------------------------------------------
// The transaction

/// Checks that an envelope value can go on a command line: no control
/// characters (CR, LF, NUL…), and no space in a parameter value.
fn check_value(what: &str, value: &str, parameter: bool) -> Result<(), DeliveryError> {
    let bad = value
        .chars()
        .any(|c| c.is_control() || (parameter && c == ' '));
    if bad || value.len() > 1000 {
        return Err(DeliveryError::BadEnvelope(format!(
            "{what} {value:?} cannot be sent"
        )));
    }
    Ok(())
}

/// An address between angle brackets (quoted local parts may hold spaces).
fn check_address(what: &str, value: &str) -> Result<(), DeliveryError> {
    check_value(what, value, false)
}

/// The MAIL and RCPT lines, after the checks against the extensions.
fn envelope_lines(
    txn: &Transaction<'_>,
    ext: &Extensions,
    content: &[u8],
) -> Result<(String, Vec<String>), DeliveryError> {
    check_address("sender", txn.mail_from)?;
    for r in txn.recipients {
        check_address("recipient", &r.address)?;
        if let Some(n) = &r.notify {
            check_value("NOTIFY", n, true)?;
        }
        if let Some(o) = &r.orcpt {
            check_value("ORCPT", o, true)?;
        }
    }
    for (what, v) in [("BODY", txn.body), ("RET", txn.ret), ("ENVID", txn.envid)] {
        if let Some(v) = v {
            check_value(what, v, true)?;
        }
    }

    let size = DataEncoder::message_size(content);
    if let Some(limit) = ext.size_limit
        && size > limit
    {
        return Err(DeliveryError::TooBig { size, limit });
    }
    let utf8_addresses =
        !txn.mail_from.is_ascii() || txn.recipients.iter().any(|r| !r.address.is_ascii());
    let needs_utf8 = utf8_addresses || (txn.smtputf8 && !header_section(content).is_ascii());
    if needs_utf8 && !ext.smtputf8 {
        return Err(DeliveryError::Utf8Unsupported);
    }
    let eight_bit = !content.is_ascii();
    if eight_bit && !ext.eight_bit_mime {
        return Err(DeliveryError::EightBitUnsupported);
    }
    let declared_8bit = txn.body.is_some_and(|b| {
        b.eq_ignore_ascii_case("8BITMIME") || b.eq_ignore_ascii_case("BINARYMIME")
    });

    let mut mail = format!("MAIL FROM:<{}>", txn.mail_from);
    if ext.size {
        mail.push_str(&format!(" SIZE={size}"));
    }
    if ext.eight_bit_mime && (eight_bit || declared_8bit) {
        mail.push_str(" BODY=8BITMIME");
    }
    if ext.smtputf8 && (txn.smtputf8 || needs_utf8) {
        mail.push_str(" SMTPUTF8");
    }
    if ext.dsn {
        if let Some(ret) = txn.ret {
            mail.push_str(&format!(" RET={ret}"));
        }
        if let Some(envid) = txn.envid {
            mail.push_str(&format!(" ENVID={envid}"));
        }
    }
    let rcpts = txn
        .recipients
        .iter()
        .map(|r| {
            let mut line = format!("RCPT TO:<{}>", r.address);
            if ext.dsn {
                if let Some(n) = &r.notify {
                    line.push_str(&format!(" NOTIFY={n}"));
                }
                if let Some(o) = &r.orcpt {
                    line.push_str(&format!(" ORCPT={o}"));
                }
            }
            line
        })
        .collect();
    Ok((mail, rcpts))
}

/// Whether MAIL was accepted; a 1xx/3xx reply is a protocol error.
fn check_mail(reply: Reply) -> Result<(), DeliveryError> {
    if reply.is_positive() {
        Ok(())
    } else if reply.is_transient() || reply.is_permanent() {
        Err(DeliveryError::Refused {
            stage: Stage::Mail,
            reply,
        })
    } else {
        Err(DeliveryError::Protocol {
            stage: Stage::Mail,
            message: format!("unexpected reply {reply}"),
        })
    }
}

/// A RCPT reply must be 2xx, 4xx or 5xx.
fn check_rcpt(reply: Reply) -> Result<Reply, DeliveryError> {
    if reply.is_positive() || reply.is_transient() || reply.is_permanent() {
        Ok(reply)
    } else {
        Err(DeliveryError::Protocol {
            stage: Stage::Rcpt,
            message: format!("unexpected reply {reply}"),
        })
    }
}

/// DATA's reply must be 354 to go on.
fn check_data(reply: Reply) -> Result<(), DeliveryError> {
    match reply.code {
        354 => Ok(()),
        400..600 => Err(DeliveryError::Refused {
            stage: Stage::Data,
            reply,
        }),
        _ => Err(DeliveryError::Protocol {
            stage: Stage::Data,
            message: format!("unexpected reply {reply}"),
        }),
    }
}

/// The results: refused recipients keep their RCPT reply; the accepted ones
/// (and any without a reply) get `last`'s.
fn results(rcpt: &[Option<Reply>], last: Result<&Reply, &DeliveryError>) -> Vec<RcptResult> {
    rcpt.iter()
        .enumerate()
        .map(|(i, r)| match r {
            Some(r) if !r.is_positive() => RcptResult::from_reply(i, r),
            _ => match last {
                Ok(reply) => RcptResult::from_reply(i, reply),
                Err(e) => RcptResult::from_error(i, e),
            },
        })
        .collect()
}

/// Delivers one message to one next hop at `addr`. `host` is the next hop's
/// name as routed (smart host or MX host name, or the address as text): the
/// certificate name under domain validation without
/// [`ClientSettings::tls_name`], and the SNI. See the module documentation
/// for what is sent and what the results mean.
pub async fn deliver(
    addr: SocketAddr,
    host: &str,
    settings: &ClientSettings,
    txn: &Transaction<'_>,
    content: &[u8],
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

async fn session(
    conn: &mut Conn,
    host: &str,
    settings: &ClientSettings,
    txn: &Transaction<'_>,
    content: &[u8],
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

    let (mail, rcpts) = envelope_lines(txn, &ext, content)?;
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

    // The content, in chunks, each write within the data-block limit.
    let mut encoder = DataEncoder::new();
    let mut out = Vec::with_capacity(DATA_CHUNK + DATA_CHUNK / 2 + 8);
    for chunk in content.chunks(DATA_CHUNK) {
        out.clear();
        encoder.feed(chunk, &mut out);
        if let Err(e) = conn.send(&out, Stage::Content, t.data_block).await {
            conn.close().await;
            return Ok(outcome_err(e, &rcpt_replies, tls, ext));
        }
    }
    out.clear();
    encoder.finish(&mut out);
    if let Err(e) = conn.send(&out, Stage::Content, t.data_block).await {
        conn.close().await;
        return Ok(outcome_err(e, &rcpt_replies, tls, ext));
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

/// The outcome once the recipients (and, with `last`, the data) were
/// answered.
fn finish(
    rcpt_replies: &[Option<Reply>],
    last: Option<&Reply>,
    tls: Option<TlsSession>,
    ext: Extensions,
) -> Outcome {
    let per_recipient = match last {
        Some(r) => results(rcpt_replies, Ok(r)),
        None => rcpt_replies
            .iter()
            .enumerate()
            .map(|(i, r)| match r {
                Some(r) => RcptResult::from_reply(i, r),
                None => RcptResult::from_error(
                    i,
                    &DeliveryError::Protocol {
                        stage: Stage::Rcpt,
                        message: "no reply".into(),
                    },
                ),
            })
            .collect(),
    };
    Outcome {
        per_recipient,
        failure: None,
        tls,
        extensions: ext,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &[u8]) -> Reply {
        let (r, n) = parse_reply(text).unwrap().unwrap();
        assert_eq!(n, text.len());
        r
    }

    #[test]
    fn parses_single_and_multi_line_replies() {
        let r = reply(b"250 2.1.0 Ok\r\n");
        assert_eq!(r.code, 250);
        assert_eq!(r.enhanced, Some((2, 1, 0)));
        assert_eq!(r.text(), "Ok");
        assert_eq!(r.diagnostic(), "250 2.1.0 Ok");

        let r = reply(b"250-mx.contoso.com Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-STARTTLS\r\n250-DSN\r\n250 SMTPUTF8\r\n");
        assert_eq!(r.lines.len(), 7);
        assert_eq!(r.enhanced, None);
        let e = Extensions::parse(&r);
        assert!(e.pipelining && e.size && e.eight_bit_mime && e.starttls && e.dsn && e.smtputf8);
        assert!(!e.chunking);
        assert_eq!(e.size_limit, Some(1000));
        let e = Extensions::parse(&reply(b"250-x\r\n250-size\r\n250 pipelining\r\n"));
        assert!(e.size && e.pipelining);
        assert_eq!(e.size_limit, None);

        // Code only, bare LF, enhanced code of another class is not one.
        assert_eq!(reply(b"250\r\n").lines, [""]);
        assert_eq!(reply(b"220 hi\n").code, 220);
        assert_eq!(reply(b"550 4.1.1 no\r\n").enhanced, None);
        assert_eq!(reply(b"550 5.1.1\r\n").enhanced, Some((5, 1, 1)));
        assert_eq!(reply(b"451 4.7.1x\r\n").enhanced, None);

        let r = reply(b"550-5.1.1 first\r\n550 5.1.1 second\r\n");
        assert_eq!(r.text(), "first\nsecond");
        assert_eq!(r.diagnostic(), "550 5.1.1 first\n550 5.1.1 second");
        assert_eq!(r.to_string(), "550 5.1.1 first / 5.1.1 second");
    }

    #[test]
    fn incomplete_and_pipelined_replies() {
        assert_eq!(parse_reply(b"").unwrap(), None);
        assert_eq!(parse_reply(b"250-a\r\n250").unwrap(), None);
        let buf = b"250 ok\r\n550 5.1.1 no\r\n354 go";
        let (a, n) = parse_reply(buf).unwrap().unwrap();
        assert_eq!(a.code, 250);
        let (b, m) = parse_reply(&buf[n..]).unwrap().unwrap();
        assert_eq!(b.code, 550);
        assert_eq!(parse_reply(&buf[n + m..]).unwrap(), None);
    }

    #[test]
    fn malformed_and_oversized_replies_are_errors() {
        for bad in [
            &b"hello\r\n"[..],
            b"25\r\n",
            b"250x\r\n",
            b"650 no\r\n",
            b"199 no\r\n",
            b"260 no\r\n",
            b"250-a\r\n251 b\r\n",
        ] {
            assert!(parse_reply(bad).is_err(), "{}", bad.escape_ascii());
        }
        let long = vec![b'a'; MAX_REPLY_BYTES + 10];
        let mut line = b"250 ".to_vec();
        line.extend_from_slice(&long);
        assert!(parse_reply(&line).is_err(), "no line end, too long");
        line.extend_from_slice(b"\r\n");
        assert!(parse_reply(&line).is_err());
        let many = "250-x\r\n".repeat(MAX_REPLY_LINES + 1);
        assert!(parse_reply(many.as_bytes()).is_err());
        let fine = format!("{}250 x\r\n", "250-x\r\n".repeat(MAX_REPLY_LINES - 1));
        assert!(parse_reply(fine.as_bytes()).unwrap().is_some());
        // Control characters in text are replaced.
        assert_eq!(reply(b"250 a\x1bb\r\n").lines, ["a b"]);
    }

    fn encode_in_pieces(content: &[u8], piece: usize) -> Vec<u8> {
        let mut e = DataEncoder::new();
        let mut out = Vec::new();
        for c in content.chunks(piece.max(1)) {
            e.feed(c, &mut out);
        }
        e.finish(&mut out);
        out
    }

    #[test]
    fn dot_stuffing_and_line_ends() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".a\r\n..b\r\n.\r\n", b"..a\r\n...b\r\n..\r\n.\r\n"),
            (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
            (b"a\rb\r", b"a\r\nb\r\n.\r\n"),
            (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
            (b"x.y\r\n", b"x.y\r\n.\r\n"),
            // Smuggling attempts stay content.
            (b"a\r\n.\r\r\nb\r\n", b"a\r\n..\r\n\r\nb\r\n.\r\n"),
            (b"a\r\r\n.\r\nb\r\n", b"a\r\n\r\n..\r\nb\r\n.\r\n"),
            (b"a\n.\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r.\rb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n.\n", b"a\r\n..\r\n.\r\n"),
            (b"\n.", b"\r\n..\r\n.\r\n"),
        ];
        for (input, want) in cases {
            for piece in [1, 2, 3, 7, 1000] {
                let got = encode_in_pieces(input, piece);
                assert_eq!(
                    got.escape_ascii().to_string(),
                    want.escape_ascii().to_string(),
                    "input {} in pieces of {piece}",
                    input.escape_ascii()
                );
            }
            assert_eq!(DataEncoder::encode(input), *want);
        }
    }

    #[test]
    fn encoded_content_has_one_end_and_only_crlf() {
        let mut content = Vec::new();
        for i in 0..4000u32 {
            content.push(b"\r\n.x"[(i.wrapping_mul(2654435761) >> 7) as usize % 4]);
        }
        let out = DataEncoder::encode(&content);
        let body = &out[..out.len() - 3];
        assert!(out.ends_with(b"\r\n.\r\n"));
        for (i, &b) in out.iter().enumerate() {
            match b {
                b'\r' => assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
                b'\n' => assert_eq!(out[i - 1], b'\r', "bare LF at {i}"),
                _ => {}
            }
        }
        assert!(
            !body.windows(5).any(|w| w == b"\r\n.\r\n"),
            "the terminator appears early"
        );
        assert!(!body.starts_with(b".\r\n"));
    }

    #[test]
    fn message_size_counts_crlf_without_stuffing() {
        assert_eq!(DataEncoder::message_size(b""), 0);
        assert_eq!(DataEncoder::message_size(b"a\nb"), 6);
        assert_eq!(DataEncoder::message_size(b".a\r\n"), 4);
        let big = b"line\n".repeat(50_000);
        assert_eq!(DataEncoder::message_size(&big), 6 * 50_000);
    }

    #[test]
    fn header_section_ends_at_the_first_empty_line() {
        assert_eq!(header_section(b"A: b\r\n\r\nbody"), b"A: b\r\n");
        assert_eq!(header_section(b"A: b\n\nbody"), b"A: b\n");
        assert_eq!(header_section(b"A: b\r\n"), b"A: b\r\n");
    }

    #[test]
    fn wildcard_tls_names() {
        assert!(below("mail.contoso.com", "contoso.com"));
        assert!(below("a.b.contoso.com", "contoso.com"));
        assert!(below("*.contoso.com", "contoso.com"));
        assert!(below("*.sales.contoso.com", "contoso.com"));
        assert!(!below("contoso.com", "contoso.com"));
        assert!(!below("evilcontoso.com", "contoso.com"));
        assert!(!below("m*.contoso.com", "contoso.com"));
        assert!(!below("a.*.contoso.com", "contoso.com"));
        assert!(!below(".contoso.com", "contoso.com"));
    }

    fn txn<'a>(from: &'a str, rcpts: &'a [Recipient]) -> Transaction<'a> {
        Transaction {
            mail_from: from,
            recipients: rcpts,
            body: None,
            smtputf8: false,
            ret: Some("HDRS"),
            envid: Some("QQ+2B1"),
        }
    }

    #[test]
    fn envelope_parameters_follow_the_extensions() {
        let rcpts = [Recipient {
            address: "bob@contoso.com".into(),
            orcpt: Some("rfc822;bob@contoso.com".into()),
            notify: Some("SUCCESS,FAILURE".into()),
        }];
        let all = Extensions {
            esmtp: true,
            size: true,
            size_limit: Some(100),
            eight_bit_mime: true,
            smtputf8: true,
            dsn: true,
            ..Extensions::default()
        };
        let t = txn("a@fabrikam.com", &rcpts);
        let (mail, r) = envelope_lines(&t, &all, b"Subject: x\n\nhi\n").unwrap();
        assert_eq!(
            mail,
            "MAIL FROM:<a@fabrikam.com> SIZE=18 RET=HDRS ENVID=QQ+2B1"
        );
        assert_eq!(
            r,
            ["RCPT TO:<bob@contoso.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@contoso.com"]
        );
        let (mail, r) = envelope_lines(&t, &Extensions::default(), b"Subject: x\n\nhi\n").unwrap();
        assert_eq!(mail, "MAIL FROM:<a@fabrikam.com>");
        assert_eq!(r, ["RCPT TO:<bob@contoso.com>"]);
        let (mail, _) = envelope_lines(&t, &all, "Subject: x\n\nhé\n".as_bytes()).unwrap();
        assert!(
            mail.contains(" BODY=8BITMIME") && !mail.contains("SMTPUTF8"),
            "{mail}"
        );

        let e = envelope_lines(&t, &all, &[b'a'; 200]).unwrap_err();
        assert!(matches!(
            e,
            DeliveryError::TooBig {
                size: 202,
                limit: 100
            }
        ));
        assert_eq!(e.status(), (5, 3, 4));
        let e = envelope_lines(&t, &Extensions::default(), "é".as_bytes()).unwrap_err();
        assert!(matches!(e, DeliveryError::EightBitUnsupported));
        assert_eq!(e.status(), (5, 6, 3));
        let u = txn("pelé@fabrikam.com", &rcpts);
        let e = envelope_lines(&u, &Extensions::default(), b"x").unwrap_err();
        assert!(matches!(e, DeliveryError::Utf8Unsupported));
        assert!(e.is_permanent());
        let (mail, _) = envelope_lines(&u, &all, b"x").unwrap();
        assert!(mail.contains(" SMTPUTF8"), "{mail}");

        let null = txn("", &rcpts);
        assert!(
            envelope_lines(&null, &Extensions::default(), b"x")
                .unwrap()
                .0
                .starts_with("MAIL FROM:<>")
        );
        let evil = txn("a@b>\r\nRCPT TO:<x@y", &rcpts);
        assert!(matches!(
            envelope_lines(&evil, &all, b"x"),
            Err(DeliveryError::BadEnvelope(_))
        ));
    }

    #[test]
    fn error_classes() {
        let r = |t: &[u8]| reply(t);
        let refused = |reply| DeliveryError::Refused {
            stage: Stage::Mail,
            reply,
        };
        assert!(!refused(r(b"451 4.3.0 later\r\n")).is_permanent());
        assert!(refused(r(b"550 5.7.1 no\r\n")).is_permanent());
        assert_eq!(refused(r(b"550 no\r\n")).status(), (5, 0, 0));
        assert_eq!(refused(r(b"421 gone\r\n")).status(), (4, 0, 0));
        let tls = DeliveryError::TlsNotOffered {
            level: TlsLevel::EncryptionOnly,
        };
        assert!(!tls.is_permanent() && tls.next_host_may_help());
        assert!(
            !DeliveryError::TooBig { size: 2, limit: 1 }.next_host_may_help()
                && DeliveryError::TooBig { size: 2, limit: 1 }.is_permanent()
        );
    }
}
