//! EHLO and HELO (RFC 5321 §4.1.1.1): the argument as sent, and as a domain
//! or address literal when it is one.

use super::path::{Cursor, Host, parse_host};
use super::{CommandError, MAX_DOMAIN};

/// The argument of EHLO or HELO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helo {
    /// The argument as sent (trimmed).
    pub raw: String,
    /// The argument as a domain or address literal, if it is one (RFC 5321
    /// §4.1.1.1); `None` for anything else, such as a bare IP address or a
    /// name with underscores, which many devices send: policy decides.
    pub host: Option<Host>,
}

pub(super) fn parse_helo(args: &str, usage: &'static str) -> Result<Helo, CommandError> {
    if args.is_empty() {
        return Err(CommandError::Syntax(usage));
    }
    let mut c = Cursor::new(args.as_bytes());
    let host = match parse_host(&mut c) {
        Ok(h) if c.at_end() && args.len() <= MAX_DOMAIN => Some(h),
        _ => None,
    };
    Ok(Helo {
        raw: args.to_string(),
        host,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Command;
    use super::super::tests::{domain, parse};
    use super::*;

    #[test]
    fn ehlo_forms() {
        let Ok(Command::Ehlo(h)) = parse("EHLO mail.example.com\r\n") else {
            panic!()
        };
        assert_eq!(h.host, Some(domain("mail.example.com")));
        let Ok(Command::Helo(h)) = parse("helo [192.0.2.1]\r\n") else {
            panic!()
        };
        assert_eq!(h.host, Some(Host::Ipv4("192.0.2.1".parse().unwrap())));
        let Ok(Command::Ehlo(h)) = parse("EHLO [IPv6:2001:db8::1]\r\n") else {
            panic!()
        };
        assert_eq!(h.host, Some(Host::Ipv6("2001:db8::1".parse().unwrap())));
        // Not a domain or literal: kept raw for policy.
        let Ok(Command::Ehlo(h)) = parse("EHLO my_printer\r\n") else {
            panic!()
        };
        assert_eq!((h.raw.as_str(), h.host), ("my_printer", None));
        let Ok(Command::Ehlo(h)) = parse("EHLO host extra words\r\n") else {
            panic!()
        };
        assert_eq!((h.raw.as_str(), h.host), ("host extra words", None));
        assert_eq!(parse("EHLO\r\n"), Err(CommandError::Syntax("EHLO domain")));
        assert_eq!(
            parse("HELO   \r\n"),
            Err(CommandError::Syntax("HELO domain"))
        );
    }
}
