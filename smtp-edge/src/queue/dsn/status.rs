//! The `message/delivery-status` part of a DSN (RFC 3464 §2): per-message
//! and per-recipient fields for programs, ASCII only, with ENVID and ORCPT
//! xtext decoded and non-ASCII addresses as RFC 6533 `utf-8-addr-xtext`.

use std::fmt::Write as _;

use super::text::{ascii, field, one_line};
use super::{Action, RecipientStatus};
use crate::queue::spool::Envelope;
use crate::smtp::command::xtext_decode;
use crate::smtp::trace::rfc5322_date;

/// The message/delivery-status body: per-message fields, then one block per
/// recipient, each after an empty line (RFC 3464 §2.1). ASCII only.
pub(super) fn delivery_status(
    mta: &str,
    envelope: &Envelope,
    reported: &[(&RecipientStatus, &crate::queue::spool::Recipient)],
) -> Vec<u8> {
    let mut b = String::new();
    if let Some(envid) = &envelope.envid {
        // RFC 3461 §6.3 (a) / RFC 3464 §2.2.1: the ENVID, xtext decoded.
        b.push_str(&field("Original-Envelope-Id", &decoded_xtext(envid)));
    }
    b.push_str(&field("Reporting-MTA", &format!("dns; {}", ascii(mta))));
    let helo = ascii(&envelope.helo);
    if !helo.is_empty() {
        b.push_str(&field("Received-From-MTA", &format!("dns; {helo}")));
    }
    b.push_str(&field("Arrival-Date", &rfc5322_date(envelope.received_at)));
    for (s, r) in reported {
        b.push_str("\r\n");
        if let Some(orcpt) = &r.orcpt {
            b.push_str(&field("Original-Recipient", &original_recipient(orcpt)));
        }
        b.push_str(&field("Final-Recipient", &address_field(&r.address)));
        b.push_str(&field("Action", s.action.as_str()));
        let (c, sub, det) = s.status;
        b.push_str(&field("Status", &format!("{c}.{sub}.{det}")));
        if let Some(m) = &s.remote_mta {
            b.push_str(&field("Remote-MTA", &format!("dns; {}", ascii(m))));
        }
        if let Some(d) = &s.diagnostic {
            let d = ascii(d);
            let d = match diagnostic_type(&d) {
                Some((kind, rest)) => format!("{kind}; {rest}"),
                None => format!("smtp; {d}"),
            };
            b.push_str(&field("Diagnostic-Code", &d));
        }
        if let Some(t) = s.last_attempt {
            b.push_str(&field("Last-Attempt-Date", &rfc5322_date(t)));
        }
        if s.action == Action::Delayed
            && let Some(t) = s.will_retry_until
        {
            b.push_str(&field("Will-Retry-Until", &rfc5322_date(t)));
        }
    }
    b.into_bytes()
}

/// `(type, rest)` when `d` starts with a diagnostic type (`smtp;`, `x-…;`).
pub(super) fn diagnostic_type(d: &str) -> Option<(&str, &str)> {
    let (kind, rest) = d.split_once(';')?;
    let kind = kind.trim();
    (!kind.is_empty()
        && kind.len() <= 32
        && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    .then(|| (kind, rest.trim_start()))
}

/// The Final-Recipient value: `rfc822;addr`, or for a non-ASCII address
/// `utf-8;` with the RFC 6533 `utf-8-addr-xtext` form (the field is ASCII).
fn address_field(address: &str) -> String {
    let a = one_line(address);
    if a.is_ascii() {
        format!("rfc822;{a}")
    } else {
        format!("utf-8;{}", utf8_addr_xtext(&a))
    }
}

/// The Original-Recipient value from the ORCPT parameter as received
/// (`addr-type;xtext`), RFC 3461 §6.3 (d): the address xtext decoded (xtext
/// is only its SMTP transport form; RFC 3461 §4.2 requires the decoded
/// address to be printable US-ASCII so that it fits the DSN). A value that
/// does not decode to printable ASCII is kept as received; a `utf-8`
/// address (RFC 6533) is given as `utf-8-addr-xtext`.
fn original_recipient(orcpt: &str) -> String {
    let orcpt = one_line(orcpt);
    let Some((kind, value)) = orcpt.split_once(';') else {
        return format!("unknown;{}", ascii(&orcpt));
    };
    let kind = ascii(kind.trim());
    if kind.eq_ignore_ascii_case("utf-8") {
        return format!("{kind};{}", utf8_addr_xtext(value));
    }
    format!("{kind};{}", decoded_xtext(value))
}

/// xtext decoded when that gives printable ASCII; otherwise the value as
/// given, made ASCII.
fn decoded_xtext(value: &str) -> String {
    match xtext_decode(value) {
        Some(d) if d.bytes().all(|b| (0x20..0x7f).contains(&b)) => d,
        _ => ascii(value),
    }
}

/// RFC 6533 `utf-8-addr-xtext`: ASCII kept, other characters as `\x{HEX}`
/// (control characters, space, `+`, `=` and `\` not already part of an
/// escape too).
fn utf8_addr_xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '\\' && is_unicode_escape(rest) {
            let end = rest.find('}').map_or(rest.len(), |i| i + 1);
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        if c.is_ascii_graphic() && !matches!(c, '+' | '=' | '\\') {
            out.push(c);
        } else {
            let _ = write!(out, "\\x{{{:X}}}", u32::from(c));
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Whether `s` starts with `\x{HEX}` (1 to 6 upper-case hex digits).
fn is_unicode_escape(s: &str) -> bool {
    let Some(body) = s.strip_prefix("\\x{") else {
        return false;
    };
    match body.find('}') {
        Some(n) => {
            (1..=6).contains(&n)
                && body[..n]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::dsn::build;
    use crate::queue::dsn::fixtures::*;

    #[test]
    fn envid_and_orcpt_round_trip() {
        let mut env = envelope(vec![
            rcpt(
                "bob@fabrikam.com",
                None,
                Some("rfc822;Bob+2BSales@Fabrikam.com"),
            ),
            rcpt("carol@fabrikam.com", None, None),
            rcpt("dave@fabrikam.com", None, Some("utf-8;dävé@fabrikam.com")),
        ]);
        env.envid = Some("QQ+2B314159".into());
        let d = build(
            &reporter(),
            &env,
            MESSAGE,
            &[failed(0), failed(1), failed(2)],
        )
        .unwrap();
        let blocks = status_blocks(&d);
        assert_eq!(get(&blocks[0], "Original-Envelope-Id"), Some("QQ+314159"));
        // Original-Envelope-Id comes first (RFC 3464 §2.2).
        assert_eq!(blocks[0][0].0, "Original-Envelope-Id");
        assert_eq!(
            get(&blocks[1], "Original-Recipient"),
            Some("rfc822;Bob+Sales@Fabrikam.com")
        );
        assert_eq!(blocks[1][0].0, "Original-Recipient");
        assert_eq!(get(&blocks[2], "Original-Recipient"), None);
        assert_eq!(
            get(&blocks[3], "Original-Recipient"),
            Some("utf-8;d\\x{E4}v\\x{E9}@fabrikam.com")
        );
        let status_part = &d.content[memchr::memmem::find(&d.content, b"Reporting-MTA").unwrap()..];
        let end = memchr::memmem::find(status_part, b"\r\n--=_").unwrap();
        assert!(status_part[..end].is_ascii());
    }

    #[test]
    fn diagnostic_type_is_added_when_missing() {
        let env = envelope(vec![rcpt("bob@fabrikam.com", None, None)]);
        let mut st = failed(0);
        st.diagnostic = Some("550 5.1.1 user unknown".into());
        let d = build(&reporter(), &env, MESSAGE, &[st.clone()]).unwrap();
        assert_eq!(
            get(&status_blocks(&d)[1], "Diagnostic-Code"),
            Some("smtp; 550 5.1.1 user unknown")
        );
        st.diagnostic = Some("X-Local;mailbox deleted".into());
        let d = build(&reporter(), &env, MESSAGE, &[st]).unwrap();
        assert_eq!(
            get(&status_blocks(&d)[1], "Diagnostic-Code"),
            Some("X-Local; mailbox deleted")
        );
    }

    #[test]
    fn status_helpers() {
        assert_eq!(
            utf8_addr_xtext("a+b=c\\d é"),
            "a\\x{2B}b\\x{3D}c\\x{5C}d\\x{20}\\x{E9}"
        );
        assert_eq!(utf8_addr_xtext("d\\x{E4}v"), "d\\x{E4}v");
        assert_eq!(utf8_addr_xtext("😀"), "\\x{1F600}");
        assert_eq!(original_recipient("rfc822"), "unknown;rfc822");
        assert_eq!(original_recipient("x400;a+3Db"), "x400;a=b");
    }
}
