//! Paths (RFC 5321 §4.1.2): the reverse- and forward-paths of MAIL and RCPT
//! with their mailboxes, local parts (dot-strings, quoted strings), domains,
//! address literals (RFC 5321 §4.1.3) and source routes, UTF-8 included
//! (RFC 6531), within the length limits of RFC 5321 §4.5.3.1.

use std::{
    borrow::Cow,
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use memchr::memchr;

use super::{CommandError, strip_prefix_ci};

/// The longest local part, in octets (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// The longest domain, in octets (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// The longest reverse- or forward-path, `<` and `>` included (RFC 5321 §4.5.3.1.3).
pub const MAX_PATH: usize = 256;

/// A domain or an address literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A domain name, as sent (case kept; may hold UTF-8 U-labels).
    Domain(String),
    /// `[192.0.2.1]`.
    Ipv4(Ipv4Addr),
    /// `[IPv6:2001:db8::1]`.
    Ipv6(Ipv6Addr),
    /// `[tag:content]`, a General-address-literal.
    General {
        /// The standardized tag.
        tag: String,
        /// What follows the colon.
        content: String,
    },
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ipv4(a) => write!(f, "[{a}]"),
            Host::Ipv6(a) => write!(f, "[IPv6:{a}]"),
            Host::General { tag, content } => write!(f, "[{tag}:{content}]"),
        }
    }
}

/// `local-part@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part as sent: a dot-string, or a quoted string with its
    /// quotes and backslashes.
    pub local_part: String,
    /// The domain or address literal.
    pub domain: Host,
}

impl Mailbox {
    /// The local part without quoting (`"a b"` → `a b`, `"a\"b"` → `a"b`).
    pub fn local_part_unquoted(&self) -> Cow<'_, str> {
        let Some(inner) = self
            .local_part
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
        else {
            return Cow::Borrowed(&self.local_part);
        };
        let mut out = String::with_capacity(inner.len());
        let mut escaped = false;
        for ch in inner.chars() {
            if !escaped && ch == '\\' {
                escaped = true;
            } else {
                out.push(ch);
                escaped = false;
            }
        }
        Cow::Owned(out)
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local_part, self.domain)
    }
}

/// What a path names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// The null reverse-path `<>` (MAIL FROM only).
    Null,
    /// `<Postmaster>` without a domain (RCPT TO only, RFC 5321 §4.1.1.3).
    Postmaster,
    /// A mailbox.
    Mailbox(Mailbox),
}

/// A reverse-path or forward-path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// The address.
    pub address: Address,
    /// Whether the path had a source route (`<@a,@b:user@dom>`); RFC 5321
    /// §4.1.1.3 says the route MUST be accepted and MAY be ignored.
    pub had_source_route: bool,
    /// The route's hosts, in order (`["a", "b"]`); empty without a route.
    pub source_route: Vec<String>,
    /// Whether the path holds non-ASCII (UTF-8) octets, which need SMTPUTF8.
    pub utf8: bool,
}

impl Path {
    /// The mailbox, unless the path is `<>` or `<Postmaster>`.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match &self.address {
            Address::Mailbox(m) => Some(m),
            _ => None,
        }
    }

    /// Whether this is the null path `<>`.
    pub fn is_null(&self) -> bool {
        self.address == Address::Null
    }
}

impl fmt::Display for Path {
    /// The path in angle brackets, without its source route.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            Address::Null => f.write_str("<>"),
            Address::Postmaster => f.write_str("<Postmaster>"),
            Address::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// Which path an address error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// MAIL FROM's reverse-path.
    Sender,
    /// RCPT TO's forward-path.
    Recipient,
}

impl PathKind {
    /// The enhanced status for a bad address of this kind: X.1.7 for the
    /// sender, X.1.3 for a recipient (RFC 3463).
    pub(super) fn detail(self) -> u16 {
        match self {
            PathKind::Sender => 7,
            PathKind::Recipient => 3,
        }
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Sender => "sender",
            PathKind::Recipient => "recipient",
        })
    }
}

pub(super) struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(b: &'a [u8]) -> Self {
        Cursor { b, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn eat(&mut self, want: u8) -> bool {
        if self.peek() == Some(want) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.b.len()
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        &self.b[start..self.pos]
    }
}

/// The bytes as a string: they come from a validated `&str` and are cut only
/// at ASCII delimiters, so this never replaces anything.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// atext (RFC 5322 §3.2.3), plus UTF-8 octets (RFC 6531).
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

/// qtextSMTP (RFC 5321 §4.1.2), plus UTF-8 octets.
fn is_qtext(b: u8) -> bool {
    matches!(b, 32..=33 | 35..=91 | 93..=126) || b >= 0x80
}

/// A domain: sub-domains of letters, digits, hyphens (not first or last) and
/// UTF-8 octets, separated by dots.
fn parse_domain<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8], &'static str> {
    let start = c.pos;
    loop {
        let label = c.take_while(|b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80);
        match (label.first(), label.last()) {
            (Some(&first), Some(&last)) if first != b'-' && last != b'-' => {}
            (None, _) => return Err("invalid domain"),
            _ => return Err("domain label starts or ends with a hyphen"),
        }
        if label.len() > 63 && label.is_ascii() {
            return Err("domain label longer than 63 octets");
        }
        if !c.eat(b'.') {
            break;
        }
    }
    Ok(&c.b[start..c.pos])
}

/// An address literal `[…]` (RFC 5321 §4.1.3); the cursor is on `[`.
fn parse_literal(c: &mut Cursor<'_>) -> Result<Host, &'static str> {
    let rest = &c.b[c.pos..];
    let close = memchr(b']', rest).ok_or("unterminated address literal")?;
    let content = &rest[1.min(close)..close];
    if content.is_empty() || !content.iter().all(|&b| matches!(b, 33..=90 | 94..=126)) {
        return Err("invalid address literal");
    }
    let content = std::str::from_utf8(content).map_err(|_| "invalid address literal")?;
    let host = if let Ok(v4) = content.parse::<Ipv4Addr>() {
        Host::Ipv4(v4)
    } else if let Some(v6) = strip_prefix_ci(content, "IPv6:") {
        Host::Ipv6(v6.parse().map_err(|_| "invalid IPv6 address literal")?)
    } else {
        let (tag, value) = content.split_once(':').ok_or("invalid address literal")?;
        let tag_ok = !tag.is_empty()
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !tag.ends_with('-');
        if !tag_ok || value.is_empty() {
            return Err("invalid address literal");
        }
        Host::General {
            tag: tag.to_string(),
            content: value.to_string(),
        }
    };
    c.pos += close + 1;
    Ok(host)
}

pub(super) fn parse_host(c: &mut Cursor<'_>) -> Result<Host, &'static str> {
    if c.peek() == Some(b'[') {
        parse_literal(c)
    } else {
        parse_domain(c).map(|d| Host::Domain(text(d)))
    }
}

/// A dot-string or quoted-string local part.
fn parse_local_part<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8], &'static str> {
    let start = c.pos;
    if c.eat(b'"') {
        loop {
            match c.peek() {
                None => return Err("unterminated quoted local part"),
                Some(b'"') => {
                    c.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    c.pos += 1;
                    if !c.peek().is_some_and(|b| matches!(b, 32..=126)) {
                        return Err("invalid quoted pair in local part");
                    }
                    c.pos += 1;
                }
                Some(b) if is_qtext(b) => c.pos += 1,
                Some(_) => return Err("invalid character in quoted local part"),
            }
        }
    } else {
        loop {
            if c.take_while(is_atext).is_empty() {
                return Err("invalid local part");
            }
            if !c.eat(b'.') {
                break;
            }
        }
    }
    Ok(&c.b[start..c.pos])
}

/// Parses `<…>` at the start of `s`: returns the path and where it ends.
pub(super) fn parse_path(s: &[u8], kind: PathKind) -> Result<(Path, usize), CommandError> {
    let bad = |reason| CommandError::BadAddress { kind, reason };
    let mut c = Cursor::new(s);
    if !c.eat(b'<') {
        return Err(bad("address must be enclosed in <>"));
    }
    if c.eat(b'>') {
        if kind == PathKind::Recipient {
            return Err(bad("null recipient address"));
        }
        let path = Path {
            address: Address::Null,
            had_source_route: false,
            source_route: Vec::new(),
            utf8: false,
        };
        return Ok((path, c.pos));
    }
    let mut source_route = Vec::new();
    if c.peek() == Some(b'@') {
        loop {
            if !c.eat(b'@') {
                return Err(bad("invalid source route"));
            }
            source_route.push(parse_host(&mut c).map_err(bad)?.to_string());
            if !c.eat(b',') {
                break;
            }
        }
        if !c.eat(b':') {
            return Err(bad("invalid source route"));
        }
    }
    let had_source_route = !source_route.is_empty();
    let local = parse_local_part(&mut c).map_err(bad)?;
    let address = if kind == PathKind::Recipient
        && !had_source_route
        && c.peek() == Some(b'>')
        && local.eq_ignore_ascii_case(b"postmaster")
    {
        Address::Postmaster
    } else {
        if !c.eat(b'@') {
            return Err(bad("missing @domain"));
        }
        let domain_start = c.pos;
        let domain = parse_host(&mut c).map_err(bad)?;
        if c.peek() != Some(b'>') {
            return Err(bad("invalid character after the domain"));
        }
        if local.len() > MAX_LOCAL_PART {
            return Err(CommandError::LocalPartTooLong(kind));
        }
        if c.pos - domain_start > MAX_DOMAIN {
            return Err(CommandError::DomainTooLong(kind));
        }
        Address::Mailbox(Mailbox {
            local_part: text(local),
            domain,
        })
    };
    if !c.eat(b'>') {
        return Err(bad("missing >"));
    }
    if c.pos > MAX_PATH {
        return Err(CommandError::PathTooLong(kind));
    }
    let utf8 = !s[..c.pos].is_ascii();
    let path = Path {
        address,
        had_source_route,
        source_route,
        utf8,
    };
    Ok((path, c.pos))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{domain, mail, parse, rcpt};
    use super::*;

    #[test]
    fn source_routes_are_reported() {
        let (p, _) = rcpt("RCPT TO:<@relay1.example,@[192.0.2.9]:joe@target.example>\r\n");
        assert!(p.had_source_route);
        assert_eq!(p.source_route, vec!["relay1.example", "[192.0.2.9]"]);
        assert_eq!(p.to_string(), "<joe@target.example>");
        let (p, _) = mail("MAIL FROM:<@a.example:x@y.example>\r\n");
        assert!(p.had_source_route);
        assert_eq!(p.source_route, vec!["a.example"]);
        for bad in [
            "RCPT TO:<@a.example>\r\n",
            "RCPT TO:<@a.example,x@y>\r\n",
            "RCPT TO:<@:x@y>\r\n",
            "RCPT TO:<@a,@:x@y>\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(CommandError::BadAddress { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn quoted_local_parts() {
        let (p, _) = rcpt("RCPT TO:<\"john doe\\\"x\"@example.com>\r\n");
        let m = p.mailbox().unwrap();
        assert_eq!(m.local_part, "\"john doe\\\"x\"");
        assert_eq!(m.local_part_unquoted(), "john doe\"x");
        let (p, _) = rcpt("RCPT TO:<\"a>b@c\"@example.com>\r\n");
        assert_eq!(p.mailbox().unwrap().local_part_unquoted(), "a>b@c");
        let (p, _) = rcpt("RCPT TO:<\"\"@example.com>\r\n");
        assert_eq!(p.mailbox().unwrap().local_part, "\"\"");
        assert!(parse("RCPT TO:<\"abc@example.com>\r\n").is_err());
    }

    #[test]
    fn dot_string_rules() {
        mail("MAIL FROM:<first.last+tag!#$%&'*/=?^_`{|}~-@example.com>\r\n");
        for bad in [
            "MAIL FROM:<.a@b.example>\r\n",
            "MAIL FROM:<a.@b.example>\r\n",
            "MAIL FROM:<a..b@b.example>\r\n",
            "MAIL FROM:<a b@b.example>\r\n",
            "MAIL FROM:<a(b)@b.example>\r\n",
            "MAIL FROM:<@b.example>\r\n",
            "MAIL FROM:<ab.example>\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(CommandError::BadAddress { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn domain_rules() {
        mail("MAIL FROM:<a@x-y.example>\r\n");
        mail("MAIL FROM:<a@123.example>\r\n");
        for bad in [
            "MAIL FROM:<a@-x.example>\r\n",
            "MAIL FROM:<a@x-.example>\r\n",
            "MAIL FROM:<a@x..example>\r\n",
            "MAIL FROM:<a@x.example.>\r\n",
            "MAIL FROM:<a@x_y.example>\r\n",
            "MAIL FROM:<a@>\r\n",
            "MAIL FROM:<a@b c>\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(CommandError::BadAddress { .. })),
                "{bad}"
            );
        }
        let long_label = "a".repeat(64);
        assert!(parse(&format!("MAIL FROM:<a@{long_label}.example>\r\n")).is_err());
    }

    #[test]
    fn address_literals() {
        let (p, _) = rcpt("RCPT TO:<joe@[192.0.2.1]>\r\n");
        assert_eq!(
            p.mailbox().unwrap().domain,
            Host::Ipv4("192.0.2.1".parse().unwrap())
        );
        let (p, _) = rcpt("RCPT TO:<joe@[ipv6:2001:DB8::1]>\r\n");
        assert_eq!(
            p.mailbox().unwrap().domain,
            Host::Ipv6("2001:db8::1".parse().unwrap())
        );
        assert_eq!(p.to_string(), "<joe@[IPv6:2001:db8::1]>");
        let (p, _) = rcpt("RCPT TO:<joe@[x-tag:some;content]>\r\n");
        assert_eq!(
            p.mailbox().unwrap().domain,
            Host::General {
                tag: "x-tag".into(),
                content: "some;content".into()
            }
        );
        for bad in [
            "RCPT TO:<joe@[192.0.2.256]>\r\n",
            "RCPT TO:<joe@[IPv6:zz::1]>\r\n",
            "RCPT TO:<joe@[]>\r\n",
            "RCPT TO:<joe@[192.0.2.1>\r\n",
            "RCPT TO:<joe@[1.2.3]>\r\n",
            "RCPT TO:<joe@[a\\b:c]>\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(CommandError::BadAddress { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn utf8_addresses_are_flagged() {
        let (p, params) = mail("MAIL FROM:<pelé@exämple.com> SMTPUTF8\r\n");
        assert!(p.utf8 && params.smtputf8);
        assert_eq!(p.mailbox().unwrap().domain, domain("exämple.com"));
        let (p, _) = rcpt("RCPT TO:<\"dï\"@例え.jp>\r\n");
        assert!(p.utf8);
        let (p, _) = rcpt("RCPT TO:<ascii@example.com>\r\n");
        assert!(!p.utf8);
    }

    #[test]
    fn postmaster_and_null_recipient() {
        let (p, _) = rcpt("RCPT TO:<postMaster>\r\n");
        assert_eq!(p.address, Address::Postmaster);
        let (p, _) = rcpt("RCPT TO:<Postmaster@example.com>\r\n");
        assert!(p.mailbox().is_some());
        assert!(matches!(
            parse("RCPT TO:<>\r\n"),
            Err(CommandError::BadAddress {
                kind: PathKind::Recipient,
                ..
            })
        ));
        assert!(matches!(
            parse("MAIL FROM:<postmaster>\r\n"),
            Err(CommandError::BadAddress { .. })
        ));
    }

    #[test]
    fn length_limits() {
        let lp64 = "a".repeat(64);
        mail(&format!("MAIL FROM:<{lp64}@example.com>\r\n"));
        let lp65 = "a".repeat(65);
        let e = parse(&format!("MAIL FROM:<{lp65}@example.com>\r\n")).unwrap_err();
        assert_eq!(e, CommandError::LocalPartTooLong(PathKind::Sender));
        assert_eq!(e.reply().code, 553);
        assert_eq!(e.reply().status, Some((5, 1, 7)));
        // 256-octet domain of valid labels.
        let label = "a".repeat(63);
        let d256 = format!("{label}.{label}.{label}.{label}");
        assert_eq!(d256.len(), 255);
        let d256 = format!("{d256}b");
        let e = parse(&format!("RCPT TO:<x@{d256}>\r\n")).unwrap_err();
        assert!(matches!(
            e,
            CommandError::BadAddress { .. } | CommandError::DomainTooLong(_)
        ));
        let d = format!("{label}.{label}.{label}.{}", "b".repeat(62));
        assert_eq!(d.len(), 254);
        let d = format!("{d}.c");
        let e = parse(&format!("RCPT TO:<x@{d}>\r\n")).unwrap_err();
        assert_eq!(e, CommandError::DomainTooLong(PathKind::Recipient));
        assert_eq!(e.reply().status, Some((5, 1, 3)));
        // Path: route + mailbox over 256.
        let route = format!("@{label}.example,@{label}.example,@{label}.example");
        let e = parse(&format!("RCPT TO:<{route}:{lp64}@example.com>\r\n")).unwrap_err();
        assert_eq!(e, CommandError::PathTooLong(PathKind::Recipient));
        let r = e.reply();
        assert_eq!((r.code, r.status), (501, Some((5, 1, 3))));
    }
}
