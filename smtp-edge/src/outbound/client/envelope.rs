//! The envelope of one delivery and the MAIL/RCPT lines for a server's
//! extensions (checked before anything is sent).

use super::content::ContentFacts;
use super::error::DeliveryError;
use super::reply::Extensions;
use crate::queue::spool::{Envelope, Recipient};

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
pub(super) fn envelope_lines(
    txn: &Transaction<'_>,
    ext: &Extensions,
    facts: &ContentFacts,
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

    let size = facts.size;
    if let Some(limit) = ext.size_limit
        && size > limit
    {
        return Err(DeliveryError::TooBig { size, limit });
    }
    let utf8_addresses =
        !txn.mail_from.is_ascii() || txn.recipients.iter().any(|r| !r.address.is_ascii());
    let needs_utf8 = utf8_addresses || (txn.smtputf8 && facts.header_eight_bit);
    if needs_utf8 && !ext.smtputf8 {
        return Err(DeliveryError::Utf8Unsupported);
    }
    let eight_bit = facts.eight_bit;
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let (mail, r) = envelope_lines(&t, &all, &ContentFacts::of(b"Subject: x\n\nhi\n")).unwrap();
        assert_eq!(
            mail,
            "MAIL FROM:<a@fabrikam.com> SIZE=18 RET=HDRS ENVID=QQ+2B1"
        );
        assert_eq!(
            r,
            ["RCPT TO:<bob@contoso.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@contoso.com"]
        );
        let (mail, r) = envelope_lines(
            &t,
            &Extensions::default(),
            &ContentFacts::of(b"Subject: x\n\nhi\n"),
        )
        .unwrap();
        assert_eq!(mail, "MAIL FROM:<a@fabrikam.com>");
        assert_eq!(r, ["RCPT TO:<bob@contoso.com>"]);
        let (mail, _) =
            envelope_lines(&t, &all, &ContentFacts::of("Subject: x\n\nhé\n".as_bytes())).unwrap();
        assert!(
            mail.contains(" BODY=8BITMIME") && !mail.contains("SMTPUTF8"),
            "{mail}"
        );

        let e = envelope_lines(&t, &all, &ContentFacts::of(&[b'a'; 200])).unwrap_err();
        assert!(matches!(
            e,
            DeliveryError::TooBig {
                size: 202,
                limit: 100
            }
        ));
        assert_eq!(e.status(), (5, 3, 4));
        let e = envelope_lines(
            &t,
            &Extensions::default(),
            &ContentFacts::of("é".as_bytes()),
        )
        .unwrap_err();
        assert!(matches!(e, DeliveryError::EightBitUnsupported));
        assert_eq!(e.status(), (5, 6, 3));
        let u = txn("pelé@fabrikam.com", &rcpts);
        let e = envelope_lines(&u, &Extensions::default(), &ContentFacts::of(b"x")).unwrap_err();
        assert!(matches!(e, DeliveryError::Utf8Unsupported));
        assert!(e.is_permanent());
        let (mail, _) = envelope_lines(&u, &all, &ContentFacts::of(b"x")).unwrap();
        assert!(mail.contains(" SMTPUTF8"), "{mail}");

        let null = txn("", &rcpts);
        assert!(
            envelope_lines(&null, &Extensions::default(), &ContentFacts::of(b"x"))
                .unwrap()
                .0
                .starts_with("MAIL FROM:<>")
        );
        let evil = txn("a@b>\r\nRCPT TO:<x@y", &rcpts);
        assert!(matches!(
            envelope_lines(&evil, &all, &ContentFacts::of(b"x")),
            Err(DeliveryError::BadEnvelope(_))
        ));
    }
}
