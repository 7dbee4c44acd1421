//! The header section of an incoming message, judged as it streams to the
//! spool: the header firewall, trace checks and loop detection. Pure: bytes
//! in, bytes out, no I/O.
//!
//! # Lines as any downstream parser could see them
//!
//! Exchange, Postfix, mail-parser and the delivery encoder disagree on what
//! ends a line: some take only CRLF, some LF, the encoder turns a bare CR
//! into CRLF. So the filter takes the widest view: CR, LF and CRLF each end a
//! header line, and the header section ends at the first empty line in that
//! sense. Every header line it keeps is written with CRLF, so what leaves the
//! host has exactly the header lines the filter judged, whatever the reader
//! after it takes for a line end. The body passes through unchanged.
//!
//! # What is judged
//!
//! - A field whose name matches the [`Policy`] (the Exchange-internal
//!   families, plus configured patterns) is removed, with its continuation
//!   lines, unless the connector is trusted for them. Names are compared
//!   without case and without white space before the colon (`Name :` is the
//!   same field to lenient parsers, RFC 5322 obs-field).
//! - A message whose first line is a continuation (starts with space or tab)
//!   is refused: it would fold into our own `Received:` field
//!   ([`HeaderError::LeadingContinuation`], 554 5.6.0).
//! - `Received:` fields are counted; above the limit the message is a loop
//!   ([`HeaderError::TooManyHops`], 554 5.4.14).
//! - A header line longer than the limit is refused
//!   ([`HeaderError::LineTooLong`]); that bounds what the filter buffers
//!   (one line). The data reader already enforces the same limit.
//!
//! This is a streaming scanner written here rather than a MIME crate
//! (mail-parser) because it must judge a message that is never whole in
//! memory, and must see lines the way the *least* strict reader would.

use std::sync::Arc;

use bytes::BufMut;
use memchr::memchr2;

use super::authres;
use super::reply::Reply;

/// Exchange-internal header families: trusted only from a connector with
/// `trusted_headers = true` (a `*` at the end means "and every name that
/// starts so").
/// `X-MS-Exchange-*` covers the Organization, Forest, CrossPremises,
/// CrossTenant, Transport, AntiSpam and Processed families, and fields such
/// as ExternalOriginalInternetSender and SkipListedInternetSender that
/// change how Exchange judges a message: none of them is any sender's to set.
pub const EXCHANGE_INTERNAL: &[&str] = &[
    "X-MS-Exchange-*",
    "X-OriginatorOrg",
    "X-Forefront-Antispam-Report*",
    "X-Microsoft-Antispam*",
    "X-EOPAttributedMessage",
    "X-EOPTenantAttributedMessage",
];

/// One header name pattern: an exact name or a prefix (`Name*`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct NamePattern {
    /// Lower case.
    text: String,
    prefix: bool,
}

/// Which header fields untrusted connectors may not bring in, and whose
/// Authentication-Results fields no sender may bring in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    patterns: Vec<NamePattern>,
    /// This host's authserv-id (its name, lower case): an incoming
    /// `Authentication-Results` field claiming it is a forgery and removed
    /// from every message, trusted or not (RFC 8601 §5).
    authserv_id: Option<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new(&[]).unwrap_or(Policy {
            patterns: Vec::new(),
            authserv_id: None,
        })
    }
}

/// Whether `b` may appear in a field name (RFC 5322 ftext).
fn is_ftext(b: u8) -> bool {
    (33..=126).contains(&b) && b != b':'
}

impl Policy {
    /// The Exchange-internal families plus `extra` patterns (`X-Name` or
    /// `X-Prefix-*`); an error names a pattern that is not a field name.
    pub fn new(extra: &[String]) -> Result<Policy, String> {
        let mut patterns = Vec::new();
        for p in EXCHANGE_INTERNAL
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
        {
            let (name, prefix) = match p.strip_suffix('*') {
                Some(n) => (n, true),
                None => (p, false),
            };
            if name.is_empty() || !name.bytes().all(is_ftext) || name.contains('*') {
                return Err(format!(
                    "`{p}` is not a header field name or `Name-prefix*` pattern"
                ));
            }
            patterns.push(NamePattern {
                text: name.to_ascii_lowercase(),
                prefix,
            });
        }
        Ok(Policy {
            patterns,
            authserv_id: None,
        })
    }

    /// The same policy, removing `Authentication-Results` fields that claim
    /// to be `host`'s.
    pub fn with_authserv_id(mut self, host: &str) -> Policy {
        self.authserv_id = Some(host.trim_end_matches('.').to_ascii_lowercase());
        self
    }

    /// Whether a field `name: value…` (its first line) is an
    /// `Authentication-Results` field claiming this host's authserv-id, read
    /// as RFC 8601 §2.2 defines it ([`authres`]: CFWS before it, a token or
    /// quoted-string, any case, a trailing dot). A first line that ends
    /// before the authserv-id does (folded onto the next, or inside a
    /// comment or quoted string) counts as claiming it: it cannot be told
    /// apart here, and dropping a result field costs nothing.
    pub fn forged_result(&self, name: &[u8], value: &[u8]) -> bool {
        let Some(own) = &self.authserv_id else {
            return false;
        };
        name.trim_ascii()
            .eq_ignore_ascii_case(b"authentication-results")
            && authres::claims(value, own)
    }

    /// Whether a field of this name is removed from untrusted messages.
    pub fn strips(&self, name: &[u8]) -> bool {
        let name = name.trim_ascii();
        self.patterns.iter().any(|p| {
            let t = p.text.as_bytes();
            if p.prefix {
                name.len() >= t.len() && name[..t.len()].eq_ignore_ascii_case(t)
            } else {
                name.eq_ignore_ascii_case(t)
            }
        })
    }
}

/// Why the header section refuses the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The first line is a continuation: it would fold into our trace field.
    #[error("the message starts with a continuation line")]
    LeadingContinuation,
    /// A header line over the limit.
    #[error("header line longer than {limit} octets")]
    LineTooLong {
        /// The limit, line end included.
        limit: usize,
    },
    /// More `Received:` fields than allowed: a mail loop.
    #[error("more than {limit} Received header fields")]
    TooManyHops {
        /// The limit.
        limit: u32,
    },
    /// The header section is larger than allowed.
    #[error("header section larger than {limit} octets")]
    HeaderTooLarge {
        /// The limit, line ends included.
        limit: usize,
    },
}

impl HeaderError {
    /// The reply to the end of the data.
    pub fn reply(&self) -> Reply {
        match self {
            HeaderError::LeadingContinuation => Reply::new(
                554,
                (5, 6, 0),
                "Message rejected: the first header line is a continuation line",
            ),
            HeaderError::LineTooLong { limit } => Reply::new(
                554,
                (5, 6, 0),
                &format!("Message rejected: header line longer than {limit} octets"),
            ),
            HeaderError::TooManyHops { .. } => Reply::too_many_hops(),
            HeaderError::HeaderTooLarge { limit } => Reply::new(
                552,
                (5, 3, 4),
                &format!("Message rejected: header section larger than {limit} octets"),
            ),
        }
    }
}

/// Where the body begins in a message the filter wrote: every header line
/// it keeps ends with CRLF, so the first empty line ends the section (none:
/// all of it is header).
pub fn body_offset(written: &[u8]) -> usize {
    if written.starts_with(b"\r\n") {
        2
    } else {
        memchr::memmem::find(written, b"\r\n\r\n").map_or(written.len(), |i| i + 4)
    }
}

/// Settings of one [`HeaderFilter`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest header line, line end included.
    pub max_line: usize,
    /// The most `Received:` fields.
    pub max_received: u32,
    /// The largest header section, line ends included (Exchange's
    /// MaxHeaderSize is 256 KB).
    pub max_header: usize,
}

/// What the header section held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderStats {
    /// `Received:` fields.
    pub received: u32,
    /// Fields removed.
    pub removed: u32,
}

/// The streaming header judge for one message. Feed it the message as the
/// data reader produces it, in pieces of any size; the output does not
/// depend on where the pieces are cut.
#[derive(Debug)]
pub struct HeaderFilter {
    policy: Arc<Policy>,
    trusted: bool,
    limits: Limits,
    /// The header section has ended: everything passes through.
    body: bool,
    /// The current line, without its end.
    line: Vec<u8>,
    /// The last byte was a CR (its line has ended; an LF after it belongs
    /// to the same line end).
    cr: bool,
    /// Whether the current field (for its continuation lines) is kept.
    keep: bool,
    /// No line has ended yet.
    first: bool,
    /// Octets of the header section so far.
    size: usize,
    stats: HeaderStats,
    error: Option<HeaderError>,
    /// The first From field's first line, as kept (for a log line about
    /// authenticated senders).
    from: Option<Vec<u8>>,
}

impl HeaderFilter {
    /// A filter for one message; `trusted` keeps every field.
    pub fn new(policy: Arc<Policy>, trusted: bool, limits: Limits) -> Self {
        HeaderFilter {
            policy,
            trusted,
            limits,
            body: false,
            line: Vec::new(),
            cr: false,
            keep: true,
            first: true,
            size: 0,
            stats: HeaderStats::default(),
            error: None,
            from: None,
        }
    }

    /// The first From field's first line (`From: …`), once seen.
    pub fn from_field(&self) -> Option<&[u8]> {
        self.from.as_deref()
    }

    /// The first error, if any (nothing more is written after it).
    pub fn error(&self) -> Option<HeaderError> {
        self.error
    }

    /// Judges `input`, appending what is kept to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut impl BufMut) {
        while !input.is_empty() && self.error.is_none() {
            if self.cr {
                // The LF of a CRLF whose line already ended.
                self.cr = false;
                if input[0] == b'\n' {
                    input = &input[1..];
                }
                continue;
            }
            if self.body {
                out.put_slice(input);
                return;
            }
            match memchr2(b'\r', b'\n', input) {
                None => {
                    self.push(input);
                    return;
                }
                Some(j) => {
                    self.push(&input[..j]);
                    self.cr = input[j] == b'\r';
                    input = &input[j + 1..];
                    self.end_line(out);
                }
            }
        }
    }

    /// The end of the message: judges a last line without a line end.
    pub fn finish(&mut self, out: &mut impl BufMut) -> Result<HeaderStats, HeaderError> {
        if !self.body && self.error.is_none() && !self.line.is_empty() {
            self.end_line(out);
        }
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.stats),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.line.len() + bytes.len() + 2 > self.limits.max_line {
            self.error = Some(HeaderError::LineTooLong {
                limit: self.limits.max_line,
            });
            self.line = Vec::new();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    /// A header line ended (its content is in `self.line`).
    fn end_line(&mut self, out: &mut impl BufMut) {
        if self.error.is_some() {
            return;
        }
        let first = std::mem::replace(&mut self.first, false);
        self.size += self.line.len() + 2;
        if self.size > self.limits.max_header {
            self.error = Some(HeaderError::HeaderTooLarge {
                limit: self.limits.max_header,
            });
            self.line = Vec::new();
            return;
        }
        if self.line.is_empty() {
            out.put_slice(b"\r\n");
            self.body = true;
            self.line = Vec::new();
            return;
        }
        if matches!(self.line[0], b' ' | b'\t') {
            if first {
                self.error = Some(HeaderError::LeadingContinuation);
                return;
            }
        } else {
            let (name, colon) = match memchr::memchr(b':', &self.line) {
                Some(i) => (&self.line[..i], true),
                None => (&self.line[..], false),
            };
            self.keep = (self.trusted || !self.policy.strips(name))
                && !(colon
                    && self
                        .policy
                        .forged_result(name, &self.line[name.len() + 1..]));
            if !self.keep {
                self.stats.removed += 1;
            }
            if colon && self.from.is_none() && name.trim_ascii().eq_ignore_ascii_case(b"from") {
                self.from = Some(self.line.clone());
            }
            if colon && name.trim_ascii().eq_ignore_ascii_case(b"received") {
                self.stats.received += 1;
                if self.stats.received > self.limits.max_received {
                    self.error = Some(HeaderError::TooManyHops {
                        limit: self.limits.max_received,
                    });
                    return;
                }
            }
        }
        if self.keep {
            out.put_slice(&self.line);
            out.put_slice(b"\r\n");
        }
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_line: 1000,
        max_received: 50,
        max_header: 256 * 1024,
    };

    fn filter_split(
        input: &[u8],
        trusted: bool,
        piece: usize,
    ) -> (Vec<u8>, Result<HeaderStats, HeaderError>) {
        let policy = Arc::new(Policy::new(&["X-Extra".into(), "X-Corp-*".into()]).unwrap());
        let mut f = HeaderFilter::new(policy, trusted, LIMITS);
        let mut out = Vec::new();
        for chunk in input.chunks(piece.max(1)) {
            f.feed(chunk, &mut out);
        }
        let r = f.finish(&mut out);
        (out, r)
    }

    fn filter(input: &[u8], trusted: bool) -> (Vec<u8>, Result<HeaderStats, HeaderError>) {
        let whole = filter_split(input, trusted, usize::MAX);
        for piece in [1, 2, 3, 7] {
            assert_eq!(filter_split(input, trusted, piece), whole, "piece {piece}");
        }
        whole
    }

    fn out(input: &[u8]) -> String {
        let (o, r) = filter(input, false);
        assert!(r.is_ok(), "{r:?}");
        String::from_utf8(o).unwrap()
    }

    #[test]
    fn every_family_in_every_case_and_fold_is_removed() {
        let names = [
            "X-MS-Exchange-Organization-AuthAs",
            "x-ms-exchange-forest-rulesexecuted",
            "X-MS-EXCHANGE-CROSSPREMISES-AuthSource",
            "X-MS-Exchange-CrossTenant-Id",
            "X-MS-Exchange-Transport-CrossTenantHeadersStamped",
            "X-MS-Exchange-AntiSpam-MessageData-0",
            "X-MS-Exchange-ExternalOriginalInternetSender",
            "x-originatororg",
            "X-Forefront-Antispam-Report-Untrusted",
            "X-Microsoft-Antispam-Mailbox-Delivery",
            "X-EOPAttributedMessage",
            "X-EOPTenantAttributedMessage",
            "X-Extra",
            "X-Corp-Anything",
        ];
        for name in names {
            for end in ["\r\n", "\n", "\r"] {
                let msg = format!(
                    "Subject: a{end}{name}: v{end} folded{end}\tmore{end}{name} : w{end}To: b{end}{end}body{end}"
                );
                let o = out(msg.as_bytes());
                assert_eq!(
                    o,
                    format!("Subject: a\r\nTo: b\r\n\r\nbody{end}"),
                    "{name} {end:?}"
                );
            }
        }
        // Near misses stay.
        let o = out(b"X-MS-Has-Attach: yes\r\nX-Extras: 1\r\nX-MS-Exchangex: 2\r\nX-MS-Exchange-SkipListedInternetSender: 3\r\n\r\n");
        assert_eq!(
            o,
            "X-MS-Has-Attach: yes\r\nX-Extras: 1\r\nX-MS-Exchangex: 2\r\n\r\n"
        );
    }

    #[test]
    fn the_reproduced_injection_is_closed() {
        // A bare CR ends the Subject line for the encoder downstream: the
        // field after it is judged as a field.
        let msg = b"Subject: x\rX-MS-Exchange-Organization-AuthAs: Internal\r\nX-MS-Exchange-Organization-SCL: -1\r\n\r\nb\r\n";
        assert_eq!(out(msg), "Subject: x\r\n\r\nb\r\n");
        // CR CR LF is two line ends: an empty line ends the header section.
        assert_eq!(out(b"A: 1\r\r\nB: 2\r\n"), "A: 1\r\n\r\nB: 2\r\n");
    }

    #[test]
    fn trusted_connectors_keep_everything_with_crlf() {
        let (o, r) = filter(
            b"X-MS-Exchange-Organization-AuthAs: Internal\nA: b\r\n\r\n",
            true,
        );
        assert_eq!(
            o,
            b"X-MS-Exchange-Organization-AuthAs: Internal\r\nA: b\r\n\r\n"
        );
        assert_eq!(
            r,
            Ok(HeaderStats {
                received: 0,
                removed: 0
            })
        );
    }

    #[test]
    fn leading_continuation_is_refused() {
        for msg in [&b" by mx.example.test with ESMTPSA\r\n\r\n"[..], b"\tx\r\n"] {
            let (_, r) = filter(msg, false);
            assert_eq!(r, Err(HeaderError::LeadingContinuation));
            assert_eq!(HeaderError::LeadingContinuation.reply().code, 554);
        }
        // A continuation later is fine; an empty message too.
        assert!(filter(b"A: 1\r\n 2\r\n\r\n", false).1.is_ok());
        assert_eq!(filter(b"", false), (Vec::new(), Ok(HeaderStats::default())));
    }

    #[test]
    fn received_fields_are_counted_in_the_header_section_only() {
        let input = b"Received: from a\r\n\tby b\r\nRECEIVED : from c\r\nX-Received: no\r\n\
received:x\r\nReceivedX: no\r\nSubject: Received: no\r\n\r\nReceived: body\r\n";
        assert_eq!(filter(input, false).1.map(|s| s.received), Ok(3));
        assert_eq!(
            filter(b"\r\nReceived: x\r\n", false).1.map(|s| s.received),
            Ok(0)
        );
        let many = "Received: x\r\n".repeat(51);
        assert_eq!(
            filter(many.as_bytes(), false).1,
            Err(HeaderError::TooManyHops { limit: 50 })
        );
    }

    #[test]
    fn long_header_lines_are_refused_body_lines_pass() {
        let long = format!("X: {}\r\n\r\n", "a".repeat(1000));
        assert_eq!(
            filter(long.as_bytes(), false).1,
            Err(HeaderError::LineTooLong { limit: 1000 })
        );
        let body = format!("X: 1\r\n\r\n{}\r\n", "a".repeat(5000));
        assert!(filter(body.as_bytes(), false).1.is_ok());
    }

    #[test]
    fn a_last_line_without_end_is_judged() {
        assert_eq!(out(b"A: 1\r\nX-OriginatorOrg: x"), "A: 1\r\n");
        assert_eq!(out(b"A: 1"), "A: 1\r\n");
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(Policy::new(&["X Bad".into()]).is_err());
        assert!(Policy::new(&["*".into()]).is_err());
        assert!(Policy::new(&["X-*-Y".into()]).is_err());
        assert!(Policy::new(&["X-Good-*".into()]).is_ok());
    }

    #[test]
    fn forged_results_of_this_host_go_from_every_message() {
        let policy = Arc::new(Policy::default().with_authserv_id("Edge.Contoso.com"));
        let msg = b"Authentication-Results: edge.contoso.com; x-ms365-tenant=allowed\r\n\
Authentication-Results:\r\n edge.contoso.com; dkim=pass\r\n\
Authentication-Results: mx.microsoft.com; dkim=pass\r\n\
authentication-results : EDGE.CONTOSO.COM;spf=pass\r\n\
Subject: x\r\n\r\nAuthentication-Results: edge.contoso.com; body\r\n";
        for trusted in [false, true] {
            let mut f = HeaderFilter::new(policy.clone(), trusted, LIMITS);
            let mut out = Vec::new();
            f.feed(msg, &mut out);
            let stats = f.finish(&mut out).expect("no error");
            assert_eq!(
                String::from_utf8_lossy(&out),
                "Authentication-Results: mx.microsoft.com; dkim=pass\r\nSubject: x\r\n\r\nAuthentication-Results: edge.contoso.com; body\r\n"
            );
            assert_eq!(stats.removed, 3);
        }
    }

    #[test]
    fn forged_results_in_every_rfc_8601_form_go() {
        let policy = Arc::new(Policy::default().with_authserv_id("edge.test"));
        let forged = [
            "Authentication-Results: (note) edge.test; x-ms365-tenant=allowed",
            "Authentication-Results: \"edge.test\"; dkim=pass",
            "Authentication-Results: edge.test.; dkim=pass",
            "Authentication-Results:\tEDGE.Test ;dkim=pass",
            "Authentication-Results:(a (nested \\) one) \"Edge\\.Test.\" 1; none",
            "Authentication-Results: edge.test(c);spf=pass",
            "Authentication-Results: (comment folded",
            "Authentication-Results: \"quoted folded",
        ];
        let kept = "Authentication-Results: (edge.test) mx.example; dkim=pass";
        for line in forged {
            let msg = format!("{line}\r\n more; x\r\n{kept}\r\nSubject: s\r\n\r\nbody\r\n");
            for trusted in [false, true] {
                let mut f = HeaderFilter::new(policy.clone(), trusted, LIMITS);
                let mut out = Vec::new();
                f.feed(msg.as_bytes(), &mut out);
                let stats = f.finish(&mut out).expect("no error");
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    format!("{kept}\r\nSubject: s\r\n\r\nbody\r\n"),
                    "{line}"
                );
                assert_eq!(stats.removed, 1, "{line}");
            }
        }
    }

    #[test]
    fn the_header_section_is_bounded() {
        let limits = Limits {
            max_header: 100,
            ..LIMITS
        };
        let mut f = HeaderFilter::new(Arc::new(Policy::default()), false, limits);
        let mut out = Vec::new();
        for i in 0..10 {
            f.feed(format!("X-Field-{i}: 0123456789\r\n").as_bytes(), &mut out);
        }
        assert_eq!(f.error(), Some(HeaderError::HeaderTooLarge { limit: 100 }));
        assert_eq!(f.error().map(|e| e.reply().code), Some(552));
        // A large body is not a large header section.
        let mut f = HeaderFilter::new(Arc::new(Policy::default()), false, limits);
        let mut out = Vec::new();
        f.feed(b"Subject: x\r\n\r\n", &mut out);
        f.feed(&[b'a'; 10_000], &mut out);
        assert!(f.finish(&mut out).is_ok());
    }
}
