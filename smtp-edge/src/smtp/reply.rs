//! Server replies (RFC 5321 §4.2) with enhanced status codes (RFC 2034,
//! RFC 3463).
//!
//! A [`Reply`] is a code, an optional enhanced status code and one or more
//! text lines. [`Reply::to_bytes`] renders it on the wire: every line but the
//! last as `250-…`, the last as `250 …`, the enhanced status code at the start
//! of every line's text (RFC 2034 §3), each line ended by CRLF. Control
//! characters in the text (CR, LF, NUL, …) are replaced by spaces when
//! rendering, so text taken from a client can never inject a reply line.

use std::{fmt, io::Write};

/// An enhanced status code `class.subject.detail` (RFC 3463), e.g. `(5, 1, 3)`.
pub type Status = (u8, u16, u16);

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code, put before the text of every line; `None`
    /// for replies that carry none (the greeting, EHLO/HELO, 354).
    pub status: Option<Status>,
    /// The text lines, without line endings. An empty list renders as one
    /// line with no text.
    pub lines: Vec<String>,
}

impl Reply {
    /// A reply with an enhanced status code. `text` may hold several lines
    /// separated by `\n`; each becomes one line of the reply.
    pub fn new(code: u16, status: Status, text: &str) -> Self {
        Reply {
            code,
            status: Some(status),
            lines: split_lines(text),
        }
    }

    /// A reply without an enhanced status code (greeting, EHLO/HELO, 354).
    pub fn plain(code: u16, text: &str) -> Self {
        Reply {
            code,
            status: None,
            lines: split_lines(text),
        }
    }

    /// A reply from its parts.
    pub fn with_lines(code: u16, status: Option<Status>, lines: Vec<String>) -> Self {
        Reply {
            code,
            status,
            lines,
        }
    }

    /// Appends one more line of text.
    pub fn line(mut self, text: impl Into<String>) -> Self {
        self.lines.push(text.into());
        self
    }

    /// 2xx: the command succeeded.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx: go on (354 after DATA).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx: failed, may succeed if tried again.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: failed for good.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The reply as sent on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.wire_len_hint());
        self.write_to(&mut out);
        out
    }

    /// Appends the reply as sent on the wire to `out` (several pipelined
    /// replies can go out in one write).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let code = self.code.min(999);
        let digits = [
            b'0' + (code / 100) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
        ];
        let count = self.lines.len().max(1);
        for i in 0..count {
            out.extend_from_slice(&digits);
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let last = i + 1 == count;
            out.push(if last { b' ' } else { b'-' });
            if let Some((class, subject, detail)) = self.status {
                // Writing to a Vec cannot fail.
                let _ = write!(out, "{class}.{subject}.{detail}");
                if !text.is_empty() {
                    out.push(b' ');
                }
            }
            let start = out.len();
            out.extend_from_slice(text.as_bytes());
            for b in &mut out[start..] {
                if *b < 0x20 || *b == 0x7f {
                    *b = b' ';
                }
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    fn wire_len_hint(&self) -> usize {
        self.lines
            .iter()
            .map(|l| l.len() + 16)
            .sum::<usize>()
            .max(16)
    }

    // --- Common replies -------------------------------------------------

    /// 220 greeting: `220 <host> <text>` (no enhanced status, RFC 2034 §3).
    pub fn greeting(host: &str, text: &str) -> Self {
        Reply::plain(220, &format!("{host} {text}"))
    }

    /// 250 answer to EHLO: the first line greets, the others are the
    /// extension keywords (`PIPELINING`, `SIZE 10240000`, …).
    pub fn ehlo<S: AsRef<str>>(host: &str, greeting: &str, keywords: &[S]) -> Self {
        let mut lines = Vec::with_capacity(keywords.len() + 1);
        lines.push(format!("{host} {greeting}"));
        lines.extend(keywords.iter().map(|k| k.as_ref().to_string()));
        Reply::with_lines(250, None, lines)
    }

    /// 250 answer to HELO.
    pub fn helo(host: &str) -> Self {
        Reply::plain(250, host)
    }

    /// 250 2.0.0 OK (RSET, NOOP, …).
    pub fn ok() -> Self {
        Reply::new(250, (2, 0, 0), "OK")
    }

    /// 250 2.1.0 for an accepted MAIL FROM.
    pub fn sender_ok() -> Self {
        Reply::new(250, (2, 1, 0), "Sender OK")
    }

    /// 250 2.1.5 for an accepted RCPT TO.
    pub fn recipient_ok() -> Self {
        Reply::new(250, (2, 1, 5), "Recipient OK")
    }

    /// 354 after DATA.
    pub fn start_data() -> Self {
        Reply::plain(354, "Start mail input; end with <CRLF>.<CRLF>")
    }

    /// 250 2.0.0 after the message was taken, naming its queue id.
    pub fn queued(id: &str) -> Self {
        Reply::new(250, (2, 0, 0), &format!("OK: queued as {id}"))
    }

    /// 250 2.0.0 for a BDAT chunk that is not the last.
    pub fn chunk_ok(size: u64) -> Self {
        Reply::new(250, (2, 0, 0), &format!("{size} octets received"))
    }

    /// 221 2.0.0 after QUIT.
    pub fn closing(host: &str) -> Self {
        Reply::new(221, (2, 0, 0), &format!("{host} closing connection"))
    }

    /// 220 2.0.0 after STARTTLS.
    pub fn ready_tls() -> Self {
        Reply::new(220, (2, 0, 0), "Ready to start TLS")
    }

    /// 214 2.0.0 answer to HELP.
    pub fn help() -> Self {
        Reply::new(214, (2, 0, 0), "See RFC 5321")
    }

    /// 252 2.5.0: VRFY is not answered, but mail will be tried (RFC 5321 §3.5.3).
    pub fn cannot_vrfy() -> Self {
        Reply::new(
            252,
            (2, 5, 0),
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    /// 421 4.3.2: the server is going away.
    pub fn shutting_down(host: &str) -> Self {
        Reply::new(
            421,
            (4, 3, 2),
            &format!("{host} Service not available, closing transmission channel"),
        )
    }

    /// 421 4.4.2: the client was idle too long.
    pub fn timeout(host: &str) -> Self {
        Reply::new(
            421,
            (4, 4, 2),
            &format!("{host} Timeout, closing connection"),
        )
    }

    /// 451 4.3.0: a local error (spool, …).
    pub fn local_error() -> Self {
        Reply::new(451, (4, 3, 0), "Local error in processing")
    }

    /// 452 4.3.1: out of storage.
    pub fn insufficient_storage() -> Self {
        Reply::new(452, (4, 3, 1), "Insufficient system storage")
    }

    /// 452 4.5.3: too many recipients (RFC 5321 §4.5.3.1.10).
    pub fn too_many_recipients() -> Self {
        Reply::new(452, (4, 5, 3), "Too many recipients")
    }

    /// 500 5.5.1: an unknown command verb.
    pub fn unrecognized() -> Self {
        Reply::new(500, (5, 5, 1), "Command unrecognized")
    }

    /// 502 5.5.1: a known command this server does not implement (EXPN, …).
    pub fn not_implemented() -> Self {
        Reply::new(502, (5, 5, 1), "Command not implemented")
    }

    /// 503 5.5.1: a command out of order.
    pub fn bad_sequence(text: &str) -> Self {
        Reply::new(503, (5, 5, 1), text)
    }

    /// 530 5.7.0: STARTTLS must come first.
    pub fn tls_required() -> Self {
        Reply::new(530, (5, 7, 0), "Must issue a STARTTLS command first")
    }

    /// 552 5.3.4: the message (or the declared SIZE) is over the limit.
    pub fn message_too_big() -> Self {
        Reply::new(
            552,
            (5, 3, 4),
            "Message size exceeds fixed maximum message size",
        )
    }

    /// 553 5.6.7: a UTF-8 address without SMTPUTF8 (RFC 6531 §3.5).
    pub fn utf8_without_smtputf8() -> Self {
        Reply::new(
            553,
            (5, 6, 7),
            "Non-ASCII address requires the SMTPUTF8 parameter",
        )
    }

    /// 554 5.4.14: too many Received: headers, probably a mail loop.
    pub fn too_many_hops() -> Self {
        Reply::new(554, (5, 4, 14), "Hop count exceeded - possible mail loop")
    }

    /// 555 5.5.4: a MAIL/RCPT parameter that is not known or not offered
    /// (RFC 5321 §4.1.1.11).
    pub fn parameter_not_recognized(name: &str) -> Self {
        Reply::new(
            555,
            (5, 5, 4),
            &format!("MAIL FROM/RCPT TO parameter {name} not recognized or not implemented"),
        )
    }
}

impl fmt::Display for Reply {
    /// The reply as text, lines separated by `\n`, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        f.write_str(text.trim_end_matches("\r\n").replace("\r\n", "\n").as_str())
    }
}

fn split_lines(text: &str) -> Vec<String> {
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_status() {
        assert_eq!(Reply::ok().to_bytes(), b"250 2.0.0 OK\r\n");
    }

    #[test]
    fn multi_line_prefixes_status_on_every_line() {
        let r = Reply::new(550, (5, 7, 1), "first\nsecond\nthird");
        assert_eq!(
            r.to_bytes(),
            b"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n"
        );
    }

    #[test]
    fn ehlo_without_status() {
        let r = Reply::ehlo("mx.example", "hello", &["PIPELINING", "SIZE 1000"]);
        assert_eq!(
            r.to_bytes(),
            b"250-mx.example hello\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
        );
    }

    #[test]
    fn control_characters_cannot_inject_lines() {
        let r = Reply::with_lines(550, Some((5, 1, 1)), vec!["bad\r\n250 OK\0x".to_string()]);
        assert_eq!(r.to_bytes(), b"550 5.1.1 bad  250 OK x\r\n");
    }

    #[test]
    fn empty_lines_render_one_line() {
        let r = Reply::with_lines(250, None, Vec::new());
        assert_eq!(r.to_bytes(), b"250 \r\n");
        let r = Reply::with_lines(250, Some((2, 0, 0)), Vec::new());
        assert_eq!(r.to_bytes(), b"250 2.0.0\r\n");
    }

    #[test]
    fn crlf_in_text_splits_lines() {
        let r = Reply::new(250, (2, 0, 0), "a\r\nb");
        assert_eq!(r.lines, vec!["a", "b"]);
    }

    #[test]
    fn classes() {
        assert!(Reply::ok().is_positive());
        assert!(Reply::start_data().is_intermediate());
        assert!(Reply::local_error().is_transient());
        assert!(Reply::message_too_big().is_permanent());
    }

    #[test]
    fn display_for_logs() {
        let r = Reply::new(550, (5, 7, 1), "a\nb");
        assert_eq!(r.to_string(), "550-5.7.1 a\n550 5.7.1 b");
    }

    #[test]
    fn greeting_and_starttls() {
        assert_eq!(
            Reply::greeting("mx.example", "ESMTP").to_bytes(),
            b"220 mx.example ESMTP\r\n"
        );
        assert_eq!(
            Reply::ready_tls().to_bytes(),
            b"220 2.0.0 Ready to start TLS\r\n"
        );
    }
}
