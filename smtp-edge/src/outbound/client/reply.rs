//! The server's replies: parsing (bounded in lines and bytes) and what an
//! EHLO reply announces.

use std::fmt;

/// The largest reply taken from a server (all lines, with line ends).
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// The most lines in one reply.
pub const MAX_REPLY_LINES: usize = 512;

/// An enhanced status code (RFC 3463), e.g. `(5, 1, 1)`.
pub type Status = (u8, u16, u16);

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
}
