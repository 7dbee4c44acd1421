//! MAIL FROM and RCPT TO: the path after `FROM:`/`TO:` ([`super::path`]) and
//! the ESMTP parameters: SIZE (RFC 1870), BODY (RFC 6152, RFC 3030),
//! SMTPUTF8 (RFC 6531), RET, ENVID, NOTIFY and ORCPT (RFC 3461) and AUTH=
//! (RFC 4954 §5). Unknown parameters are kept for a 555 reply.

use super::path::{PathKind, parse_path};
use super::xtext::{is_xchar, is_xtext};
use super::{Command, CommandError, strip_prefix_ci};

/// The longest ENVID value (RFC 3461 §4.4).
pub const MAX_ENVID: usize = 100;
/// The longest ORCPT value (RFC 3461 §4.2).
pub const MAX_ORCPT: usize = 500;

/// `BODY=` (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `7BIT`.
    SevenBit,
    /// `8BITMIME`.
    EightBitMime,
    /// `BINARYMIME` (BDAT only).
    BinaryMime,
}

/// `RET=` (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// `FULL`: return the whole message in a DSN.
    Full,
    /// `HDRS`: return only the headers.
    Hdrs,
}

/// `NOTIFY=` (RFC 3461 §4.1): all false means `NEVER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    /// `SUCCESS`.
    pub success: bool,
    /// `FAILURE`.
    pub failure: bool,
    /// `DELAY`.
    pub delay: bool,
}

/// `ORCPT=addr-type;xtext` (RFC 3461 §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orcpt {
    /// The address type (`rfc822`, `utf-8`, …).
    pub addr_type: String,
    /// The address, still xtext-encoded as sent (decode with [`xtext_decode`](super::xtext_decode)).
    pub address: String,
}

/// A parameter this parser does not know, as `(keyword, value)`.
pub type UnknownParam = (String, Option<String>);

/// MAIL FROM parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// `SIZE=n` (saturates at `u64::MAX`).
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: Option<Body>,
    /// `SMTPUTF8`.
    pub smtputf8: bool,
    /// `RET=`.
    pub ret: Option<Ret>,
    /// `ENVID=`, still xtext-encoded as sent.
    pub envid: Option<String>,
    /// `AUTH=`, still xtext-encoded as sent (`<>` when unknown).
    pub auth: Option<String>,
    /// Other parameters, for a 555 reply.
    pub unknown: Vec<UnknownParam>,
}

/// RCPT TO parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams {
    /// `NOTIFY=`.
    pub notify: Option<Notify>,
    /// `ORCPT=`.
    pub orcpt: Option<Orcpt>,
    /// Other parameters, for a 555 reply.
    pub unknown: Vec<UnknownParam>,
}

pub(super) fn parse_mail(args: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "MAIL FROM:<address> [parameters]";
    let rest = strip_prefix_ci(args, "FROM:").ok_or(CommandError::Syntax(USAGE))?;
    let rest = rest.trim_start_matches(' ');
    let (from, end) = parse_path(rest.as_bytes(), PathKind::Sender)?;
    let mut params = MailParams::default();
    for (key, value) in param_tokens(rest.get(end..).unwrap_or(""), USAGE)? {
        mail_param(&mut params, key, value)?;
    }
    Ok(Command::Mail { from, params })
}

pub(super) fn parse_rcpt(args: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "RCPT TO:<address> [parameters]";
    let rest = strip_prefix_ci(args, "TO:").ok_or(CommandError::Syntax(USAGE))?;
    let rest = rest.trim_start_matches(' ');
    let (to, end) = parse_path(rest.as_bytes(), PathKind::Recipient)?;
    let mut params = RcptParams::default();
    for (key, value) in param_tokens(rest.get(end..).unwrap_or(""), USAGE)? {
        rcpt_param(&mut params, key, value)?;
    }
    Ok(Command::Rcpt { to, params })
}

/// Splits `SP key[=value] SP key[=value]…` into checked tokens
/// (esmtp-keyword and esmtp-value, RFC 5321 §4.1.2).
fn param_tokens<'a>(
    s: &'a str,
    usage: &'static str,
) -> Result<Vec<(&'a str, Option<&'a str>)>, CommandError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    if !s.starts_with(' ') {
        return Err(CommandError::Syntax(usage));
    }
    let mut out = Vec::new();
    for token in s.split(' ').filter(|t| !t.is_empty()) {
        let (key, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token, None),
        };
        let key_ok = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !key_ok {
            return Err(CommandError::BadParameter {
                name: key.to_string(),
                reason: "malformed keyword",
            });
        }
        if let Some(v) = value {
            let value_ok = !v.is_empty()
                && v.bytes()
                    .all(|b| matches!(b, 33..=60 | 62..=126) || b >= 0x80);
            if !value_ok {
                return Err(CommandError::BadParameter {
                    name: key.to_string(),
                    reason: "malformed value",
                });
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

fn unknown_value(name: &str) -> CommandError {
    CommandError::UnknownValue(name.to_string())
}

fn bad(name: &str, reason: &'static str) -> CommandError {
    CommandError::BadParameter {
        name: name.to_string(),
        reason,
    }
}

fn set_once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), CommandError> {
    if slot.is_some() {
        return Err(CommandError::DuplicateParameter(key.to_string()));
    }
    *slot = Some(value);
    Ok(())
}

fn unknown(list: &mut Vec<UnknownParam>, key: &str, value: Option<&str>) {
    list.push((key.to_string(), value.map(str::to_string)));
}

fn mail_param(p: &mut MailParams, key: &str, value: Option<&str>) -> Result<(), CommandError> {
    let k = key.as_bytes();
    if k.eq_ignore_ascii_case(b"SIZE") {
        let v = value.ok_or_else(|| bad(key, "a number is required"))?;
        if !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 20 {
            return Err(bad(key, "a number is required"));
        }
        let n = v.parse::<u64>().unwrap_or(u64::MAX);
        set_once(&mut p.size, key, n)
    } else if k.eq_ignore_ascii_case(b"BODY") {
        let v = value.ok_or_else(|| bad(key, "7BIT, 8BITMIME or BINARYMIME is required"))?;
        let body = if v.eq_ignore_ascii_case("7BIT") {
            Body::SevenBit
        } else if v.eq_ignore_ascii_case("8BITMIME") {
            Body::EightBitMime
        } else if v.eq_ignore_ascii_case("BINARYMIME") {
            Body::BinaryMime
        } else {
            return Err(unknown_value(key));
        };
        set_once(&mut p.body, key, body)
    } else if k.eq_ignore_ascii_case(b"SMTPUTF8") {
        if value.is_some() {
            return Err(bad(key, "takes no value"));
        }
        if p.smtputf8 {
            return Err(CommandError::DuplicateParameter(key.to_string()));
        }
        p.smtputf8 = true;
        Ok(())
    } else if k.eq_ignore_ascii_case(b"RET") {
        let v = value.ok_or_else(|| bad(key, "FULL or HDRS is required"))?;
        let ret = if v.eq_ignore_ascii_case("FULL") {
            Ret::Full
        } else if v.eq_ignore_ascii_case("HDRS") {
            Ret::Hdrs
        } else {
            return Err(unknown_value(key));
        };
        set_once(&mut p.ret, key, ret)
    } else if k.eq_ignore_ascii_case(b"ENVID") {
        let v = value.ok_or_else(|| bad(key, "a value is required"))?;
        if !is_xtext(v) || v.len() > MAX_ENVID {
            return Err(bad(key, "xtext of at most 100 characters is required"));
        }
        set_once(&mut p.envid, key, v.to_string())
    } else if k.eq_ignore_ascii_case(b"AUTH") {
        let v = value.ok_or_else(|| bad(key, "a value is required"))?;
        if !is_xtext(v) {
            return Err(bad(key, "xtext is required"));
        }
        set_once(&mut p.auth, key, v.to_string())
    } else {
        unknown(&mut p.unknown, key, value);
        Ok(())
    }
}

fn rcpt_param(p: &mut RcptParams, key: &str, value: Option<&str>) -> Result<(), CommandError> {
    let k = key.as_bytes();
    if k.eq_ignore_ascii_case(b"NOTIFY") {
        const NEED: &str = "NEVER or a list of SUCCESS, FAILURE, DELAY is required";
        let v = value.ok_or_else(|| bad(key, NEED))?;
        let notify = if v.eq_ignore_ascii_case("NEVER") {
            Notify::default()
        } else {
            let mut n = Notify::default();
            for word in v.split(',') {
                if word.eq_ignore_ascii_case("SUCCESS") {
                    n.success = true;
                } else if word.eq_ignore_ascii_case("FAILURE") {
                    n.failure = true;
                } else if word.eq_ignore_ascii_case("DELAY") {
                    n.delay = true;
                } else if word.is_empty() || word.eq_ignore_ascii_case("NEVER") {
                    return Err(bad(key, NEED));
                } else {
                    return Err(unknown_value(key));
                }
            }
            n
        };
        set_once(&mut p.notify, key, notify)
    } else if k.eq_ignore_ascii_case(b"ORCPT") {
        const NEED: &str = "addr-type;xtext of at most 500 characters is required";
        let v = value.ok_or_else(|| bad(key, NEED))?;
        let (addr_type, address) = v.split_once(';').ok_or_else(|| bad(key, NEED))?;
        let type_ok = addr_type
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && addr_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        // RFC 6533: the utf-8 address type carries UTF-8 as such.
        let utf8_type = addr_type.eq_ignore_ascii_case("utf-8");
        let addr_ok = !address.is_empty()
            && if utf8_type {
                address
                    .bytes()
                    .all(|b| b >= 0x80 || is_xchar(b) || b == b'+')
            } else {
                is_xtext(address)
            };
        if !type_ok || !addr_ok || v.len() > MAX_ORCPT {
            return Err(bad(key, NEED));
        }
        let orcpt = Orcpt {
            addr_type: addr_type.to_string(),
            address: address.to_string(),
        };
        set_once(&mut p.orcpt, key, orcpt)
    } else {
        unknown(&mut p.unknown, key, value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{domain, mail, parse, rcpt};
    use super::super::{Mailbox, xtext_decode};
    use super::*;

    #[test]
    fn mail_simple_and_null() {
        let (p, params) = mail("MAIL FROM:<user@example.com>\r\n");
        assert_eq!(
            p.mailbox(),
            Some(&Mailbox {
                local_part: "user".into(),
                domain: domain("example.com")
            })
        );
        assert!(!p.had_source_route && !p.utf8);
        assert_eq!(params, MailParams::default());
        let (p, _) = mail("mail from:<>\r\n");
        assert!(p.is_null());
        assert_eq!(p.to_string(), "<>");
    }

    #[test]
    fn space_after_colon_is_tolerated() {
        let (p, _) = mail("MAIL FROM: <a@b.example>\r\n");
        assert_eq!(p.to_string(), "<a@b.example>");
        let (p, _) = rcpt("RCPT TO: <c@d.example> NOTIFY=NEVER\r\n");
        assert_eq!(p.to_string(), "<c@d.example>");
    }

    #[test]
    fn missing_from_or_brackets() {
        assert_eq!(
            parse("MAIL <a@b>\r\n"),
            Err(CommandError::Syntax("MAIL FROM:<address> [parameters]"))
        );
        assert_eq!(
            parse("MAIL FROM <a@b>\r\n"),
            Err(CommandError::Syntax("MAIL FROM:<address> [parameters]"))
        );
        assert_eq!(
            parse("RCPT\r\n"),
            Err(CommandError::Syntax("RCPT TO:<address> [parameters]"))
        );
        let e = parse("MAIL FROM:a@b\r\n").unwrap_err();
        assert!(matches!(
            e,
            CommandError::BadAddress {
                kind: PathKind::Sender,
                ..
            }
        ));
        let r = e.reply();
        assert_eq!((r.code, r.status), (501, Some((5, 1, 7))));
        let r = parse("RCPT TO:a@b\r\n").unwrap_err().reply();
        assert_eq!((r.code, r.status), (501, Some((5, 1, 3))));
    }

    #[test]
    fn mail_parameters() {
        let (_, p) = mail(
            "MAIL FROM:<a@b.example> SIZE=12345 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=QQ+2B1 AUTH=<>\r\n",
        );
        assert_eq!(p.size, Some(12345));
        assert_eq!(p.body, Some(Body::EightBitMime));
        assert!(p.smtputf8);
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("QQ+2B1"));
        assert_eq!(p.auth.as_deref(), Some("<>"));
        assert!(p.unknown.is_empty());
        let (_, p) = mail("MAIL FROM:<> body=BINARYMIME  size=0 \r\n");
        assert_eq!((p.body, p.size), (Some(Body::BinaryMime), Some(0)));
        let (_, p) = mail("MAIL FROM:<> SIZE=99999999999999999999\r\n");
        assert_eq!(p.size, Some(u64::MAX));
    }

    #[test]
    fn unknown_parameters_are_kept() {
        let (_, p) = mail("MAIL FROM:<a@b.example> X-FOO=bar HOLDFOR NOTIFY=NEVER\r\n");
        assert_eq!(
            p.unknown,
            vec![
                ("X-FOO".to_string(), Some("bar".to_string())),
                ("HOLDFOR".to_string(), None),
                ("NOTIFY".to_string(), Some("NEVER".to_string())),
            ]
        );
        let (_, p) = rcpt("RCPT TO:<a@b.example> SIZE=10\r\n");
        assert_eq!(
            p.unknown,
            vec![("SIZE".to_string(), Some("10".to_string()))]
        );
    }

    #[test]
    fn bad_parameters() {
        for (line, name) in [
            ("MAIL FROM:<> SIZE=x\r\n", "SIZE"),
            ("MAIL FROM:<> SIZE\r\n", "SIZE"),
            ("MAIL FROM:<> SIZE=123456789012345678901\r\n", "SIZE"),
            ("MAIL FROM:<> SMTPUTF8=yes\r\n", "SMTPUTF8"),
            ("MAIL FROM:<> ENVID=a+zz\r\n", "ENVID"),
            ("MAIL FROM:<> AUTH\r\n", "AUTH"),
            ("MAIL FROM:<> X=\r\n", "X"),
            ("MAIL FROM:<> X=a=b\r\n", "X"),
            ("MAIL FROM:<> -X\r\n", "-X"),
            ("RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS\r\n", "NOTIFY"),
            ("RCPT TO:<a@b> ORCPT=rfc822\r\n", "ORCPT"),
            ("RCPT TO:<a@b> ORCPT=;a@b\r\n", "ORCPT"),
            ("RCPT TO:<a@b> ORCPT=rfc822;\r\n", "ORCPT"),
        ] {
            match parse(line) {
                Err(CommandError::BadParameter { name: n, .. }) => assert_eq!(n, name, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        let envid = "A".repeat(101);
        assert!(parse(&format!("MAIL FROM:<> ENVID={envid}\r\n")).is_err());
        let r = parse("MAIL FROM:<> BODY\r\n").unwrap_err().reply();
        assert_eq!((r.code, r.status), (501, Some((5, 5, 4))));
        // A value nobody announced is not a syntax error: 555.
        for (line, name) in [
            ("MAIL FROM:<> BODY=9BIT\r\n", "BODY"),
            ("MAIL FROM:<> RET=ALL\r\n", "RET"),
            ("RCPT TO:<a@b> NOTIFY=SOMETIMES\r\n", "NOTIFY"),
        ] {
            let e = parse(line).unwrap_err();
            assert_eq!(e, CommandError::UnknownValue(name.into()), "{line}");
            let r = e.reply();
            assert_eq!((r.code, r.status), (555, Some((5, 5, 4))));
        }
        assert_eq!(
            parse("MAIL FROM:<a@b>SIZE=1\r\n"),
            Err(CommandError::Syntax("MAIL FROM:<address> [parameters]"))
        );
    }

    #[test]
    fn duplicate_parameters() {
        assert_eq!(
            parse("MAIL FROM:<> SIZE=1 size=2\r\n"),
            Err(CommandError::DuplicateParameter("size".into()))
        );
        assert_eq!(
            parse("MAIL FROM:<> SMTPUTF8 SMTPUTF8\r\n"),
            Err(CommandError::DuplicateParameter("SMTPUTF8".into()))
        );
        assert!(parse("RCPT TO:<a@b> NOTIFY=NEVER NOTIFY=DELAY\r\n").is_err());
    }

    #[test]
    fn rcpt_parameters() {
        let (_, p) = rcpt("RCPT TO:<a@b.example> NOTIFY=success,Delay ORCPT=rfc822;a+40b\r\n");
        assert_eq!(
            p.notify,
            Some(Notify {
                success: true,
                failure: false,
                delay: true
            })
        );
        let o = p.orcpt.unwrap();
        assert_eq!(
            (o.addr_type.as_str(), o.address.as_str()),
            ("rfc822", "a+40b")
        );
        assert_eq!(xtext_decode(&o.address).as_deref(), Some("a@b"));
        let (_, p) = rcpt("RCPT TO:<a@b.example> NOTIFY=NEVER ORCPT=utf-8;pelé@x\r\n");
        assert_eq!(p.notify, Some(Notify::default()));
        assert_eq!(p.orcpt.unwrap().address, "pelé@x");
    }
}
