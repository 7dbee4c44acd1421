//! Composing a DSN: which recipients are reported, the top-level header
//! fields, the `multipart/report` framing with a boundary that cannot clash,
//! and the returned original (whole, or its header section made safe).

use super::explain::explanation;
use super::status::delivery_status;
use super::text::{MAX_LINE, field, one_line};
use super::{Action, Dsn, RecipientStatus, Reporter, notify_allows};
use crate::queue::spool::Envelope;
use crate::smtp::trace::rfc5322_date;

/// Builds the DSN for `statuses` of a message sent with `envelope` and
/// content `message`. `None` when the sender is the null sender or NOTIFY
/// asks for none of the reported outcomes (statuses naming no recipient of
/// the envelope are ignored). See the [module documentation](super).
pub fn build(
    reporter: &Reporter<'_>,
    envelope: &Envelope,
    message: &[u8],
    statuses: &[RecipientStatus],
) -> Option<Dsn> {
    if envelope.mail_from.is_empty() {
        return None;
    }
    let reported: Vec<(&RecipientStatus, &crate::queue::spool::Recipient)> = statuses
        .iter()
        .filter_map(|s| envelope.recipients.get(s.recipient).map(|r| (s, r)))
        .filter(|(s, r)| notify_allows(r.notify.as_deref(), s.action))
        .collect();
    if reported.is_empty() {
        return None;
    }
    let any = |a: Action| reported.iter().any(|(s, _)| s.action == a);
    let failed = any(Action::Failed);
    let mta = host_text(reporter.mta);
    let sender = one_line(&envelope.mail_from);

    // Part 1: for people (with the original's Subject, its encoded words
    // decoded by mail-parser, so the sender knows which message it was).
    let subject = mail_parser::MessageParser::new()
        .parse_headers(header_section(message))
        .and_then(|m| m.subject().map(one_line))
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(200).collect::<String>());
    let text = explanation(&mta, envelope, subject.as_deref(), &reported);
    // Part 2: for programs.
    let status = delivery_status(&mta, envelope, &reported);
    // Part 3: the original, whole or its header.
    let ret_full = envelope
        .ret
        .as_deref()
        .is_some_and(|r| r.trim().eq_ignore_ascii_case("FULL"));
    let whole = ret_full && failed && message.len() <= reporter.full_limit && is_clean(message);
    let (original, original_type, original_description) = if whole {
        let mut m = message.to_vec();
        if !m.ends_with(b"\r\n") {
            m.extend_from_slice(b"\r\n");
        }
        (m, "message/rfc822", "Undelivered message")
    } else {
        let what = if failed {
            "Undelivered message header"
        } else {
            "Message header"
        };
        (
            sanitize_lines(header_section(message)),
            "text/rfc822-headers",
            what,
        )
    };

    let text_8bit = !text.is_ascii();
    let original_8bit = original.iter().any(|&b| b >= 0x80);
    let eight_bit = text_8bit || original_8bit;

    let boundary = boundary(reporter.unique, &[text.as_bytes(), &status, &original]);
    let subject = if failed {
        "Undelivered Mail Returned to Sender"
    } else if any(Action::Delayed) {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    };

    let mut head = String::new();
    head.push_str(&field(
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{mta}>"),
    ));
    head.push_str(&field("To", &format!("<{sender}>")));
    head.push_str(&field("Subject", subject));
    head.push_str(&field("Date", &rfc5322_date(reporter.now)));
    head.push_str(&field(
        "Message-ID",
        &format!("<{}.dsn@{mta}>", token(reporter.unique)),
    ));
    head.push_str(&field("Auto-Submitted", "auto-replied"));
    head.push_str(&field("MIME-Version", "1.0"));
    head.push_str(&field(
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    ));
    if eight_bit {
        head.push_str(&field("Content-Transfer-Encoding", "8bit"));
    }
    head.push_str("\r\n");
    head.push_str("This is a MIME-encapsulated delivery status notification.\r\n");

    let mut out = head.into_bytes();
    let mut part = |headers: &[(&str, &str)], body: &[u8]| {
        out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        for (name, value) in headers {
            out.extend_from_slice(field(name, value).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    };
    let (charset, text_cte) = if text_8bit {
        ("text/plain; charset=utf-8", "8bit")
    } else {
        ("text/plain; charset=us-ascii", "7bit")
    };
    part(
        &[
            ("Content-Type", charset),
            ("Content-Description", "Notification"),
            ("Content-Transfer-Encoding", text_cte),
        ],
        text.as_bytes(),
    );
    part(
        &[
            ("Content-Type", "message/delivery-status"),
            ("Content-Description", "Delivery report"),
        ],
        &status,
    );
    let mut headers = vec![
        ("Content-Type", original_type),
        ("Content-Description", original_description),
    ];
    if original_8bit {
        headers.push(("Content-Transfer-Encoding", "8bit"));
    }
    part(&headers, &original);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    let smtputf8 = !envelope.mail_from.is_ascii() || !mta.is_ascii();
    Some(Dsn {
        mail_from: String::new(),
        rcpt_to: envelope.mail_from.clone(),
        content: out,
        eight_bit,
        smtputf8,
    })
}

/// A host name for the headers: [`one_line`] without spaces, angle brackets
/// and `@`; `localhost` when nothing is left.
fn host_text(s: &str) -> String {
    let h: String = one_line(s)
        .chars()
        .filter(|c| !matches!(c, ' ' | '<' | '>' | '@' | '"' | '(' | ')' | ',' | ';' | ':'))
        .collect();
    if h.is_empty() { "localhost".into() } else { h }
}

/// Letters, digits, `-` and `.` of `unique` (at most 40), or `dsn`.
fn token(unique: &str) -> String {
    let t: String = unique
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .take(40)
        .collect();
    let t = t.trim_matches('.').to_string();
    if t.is_empty() { "dsn".into() } else { t }
}

/// A boundary that no line of the parts starts with (RFC 2046 §5.1.1: the
/// boundary must not appear in the encapsulated content).
fn boundary(unique: &str, parts: &[&[u8]]) -> String {
    let base = format!("=_smtp-edge-dsn-{}", token(unique));
    let mut n = 0u32;
    loop {
        let b = if n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let delimiter = format!("--{b}");
        let clash = parts.iter().any(|p| {
            p.starts_with(delimiter.as_bytes())
                || memchr::memmem::find_iter(p, delimiter.as_bytes())
                    .any(|i| i > 0 && (p[i - 1] == b'\n' || p[i - 1] == b'\r'))
        });
        if !clash {
            return b;
        }
        n += 1;
    }
}

/// The header section of a message: up to and including the CRLF that ends
/// the last header line (without the empty line). A message without an
/// empty line is all header.
fn header_section(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") || message.starts_with(b"\n") {
        return &[];
    }
    if let Some(i) = memchr::memmem::find(message, b"\r\n\r\n") {
        return &message[..i + 2];
    }
    if let Some(i) = memchr::memmem::find(message, b"\n\n") {
        return &message[..i + 1];
    }
    message
}

/// Whether `m` can be returned as it is: CRLF line ends only, no NUL, lines
/// within 998 octets.
fn is_clean(m: &[u8]) -> bool {
    let mut line = 0usize;
    let mut i = 0;
    while i < m.len() {
        match m[i] {
            0 => return false,
            b'\r' => {
                if m.get(i + 1) != Some(&b'\n') {
                    return false;
                }
                line = 0;
                i += 2;
                continue;
            }
            b'\n' => return false,
            _ => {
                line += 1;
                if line > MAX_LINE {
                    return false;
                }
            }
        }
        i += 1;
    }
    true
}

/// `m` made safe to send as text: bare CR and LF become CRLF, NUL is
/// dropped, a line over 998 octets is folded (CRLF and a space inserted, a
/// header continuation), and it ends in CRLF unless empty. Clean input comes
/// back unchanged.
fn sanitize_lines(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len() + 2);
    let mut line = 0usize;
    let mut i = 0;
    while i < m.len() {
        let b = m[i];
        match b {
            0 => {}
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                line = 0;
                if b == b'\r' && m.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            _ => {
                if line == MAX_LINE {
                    out.extend_from_slice(b"\r\n ");
                    line = 1;
                }
                out.push(b);
                line += 1;
            }
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use mail_parser::{MessageParser, MimeHeaders};

    use super::*;
    use crate::queue::dsn::fixtures::*;

    #[test]
    fn failure_dsn_structure() {
        let env = envelope(vec![
            rcpt("bob@fabrikam.com", None, None),
            rcpt("carol@fabrikam.com", None, None),
        ]);
        let d = build(&reporter(), &env, MESSAGE, &[failed(0)]).unwrap();
        assert_eq!(d.mail_from, "");
        assert_eq!(d.rcpt_to, "alice@contoso.com");
        assert!(!d.eight_bit && !d.smtputf8);
        assert_well_formed(&d.content);

        let m = MessageParser::default().parse(&d.content).unwrap();
        let ct = m.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert!(ct.attribute("boundary").is_some());
        let root = m.parts[0].sub_parts().unwrap();
        assert_eq!(root.len(), 3);

        let p1 = &m.parts[root[0] as usize];
        assert_eq!(p1.content_type().unwrap().ctype(), "text");
        assert_eq!(p1.content_type().unwrap().subtype(), Some("plain"));
        let human = p1.text_contents().unwrap();
        assert!(human.contains("<bob@fabrikam.com>"), "{human}");
        assert!(human.contains("550 5.1.1 <bob@fabrikam.com>: user unknown"));
        assert!(human.contains("mx.fabrikam.com"));
        assert!(human.contains("5.1.1 (bad destination mailbox address)"));
        assert!(human.contains("18a2b3c4d5e6f"));
        assert!(!human.contains("carol"));

        let p2 = &m.parts[root[1] as usize];
        assert_eq!(
            p2.content_type().unwrap().subtype(),
            Some("delivery-status")
        );

        let p3 = &m.parts[root[2] as usize];
        assert_eq!(p3.content_type().unwrap().ctype(), "text");
        assert_eq!(p3.content_type().unwrap().subtype(), Some("rfc822-headers"));
        let returned = p3.contents();
        assert!(returned.starts_with(b"From: Alice <alice@contoso.com>\r\n"));
        assert!(returned.ends_with(b"Message-ID: <orig-1@contoso.com>\r\n"));
        assert!(memchr::memmem::find(returned, b"Hello Bob").is_none());

        let blocks = status_blocks(&d);
        assert_eq!(blocks.len(), 2);
        let msg = &blocks[0];
        assert_eq!(get(msg, "Reporting-MTA"), Some("dns; edge.contoso.com"));
        assert_eq!(
            get(msg, "Received-From-MTA"),
            Some("dns; exchange.contoso.local")
        );
        assert_eq!(
            get(msg, "Arrival-Date"),
            Some("Mon, 23 Nov 2026 07:00:00 +0000")
        );
        assert_eq!(get(msg, "Original-Envelope-Id"), None);
        let r = &blocks[1];
        assert_eq!(get(r, "Original-Recipient"), None);
        assert_eq!(get(r, "Final-Recipient"), Some("rfc822;bob@fabrikam.com"));
        assert_eq!(get(r, "Action"), Some("failed"));
        assert_eq!(get(r, "Status"), Some("5.1.1"));
        assert_eq!(get(r, "Remote-MTA"), Some("dns; mx.fabrikam.com"));
        assert_eq!(
            get(r, "Diagnostic-Code"),
            Some("smtp; 550 5.1.1 <bob@fabrikam.com>: user unknown")
        );
        assert_eq!(
            get(r, "Last-Attempt-Date"),
            Some("Mon, 23 Nov 2026 07:58:20 +0000")
        );
        assert_eq!(get(r, "Will-Retry-Until"), None);
        // Field order of RFC 3464 §2.3.
        let names: Vec<&str> = r.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Final-Recipient",
                "Action",
                "Status",
                "Remote-MTA",
                "Diagnostic-Code",
                "Last-Attempt-Date"
            ]
        );
    }

    #[test]
    fn top_level_header_fields() {
        let env = envelope(vec![rcpt("bob@fabrikam.com", None, None)]);
        let d = build(&reporter(), &env, MESSAGE, &[failed(0)]).unwrap();
        let m = MessageParser::default().parse(&d.content).unwrap();
        let from = m.from().unwrap().first().unwrap();
        assert_eq!(from.address(), Some("MAILER-DAEMON@edge.contoso.com"));
        assert_eq!(
            m.to().unwrap().first().unwrap().address(),
            Some("alice@contoso.com")
        );
        assert_eq!(m.subject(), Some("Undelivered Mail Returned to Sender"));
        assert_eq!(m.message_id(), Some("0001abc.dsn@edge.contoso.com"));
        assert_eq!(
            m.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        assert_eq!(m.header_raw("MIME-Version").map(str::trim), Some("1.0"));
        assert_eq!(
            m.header_raw("Date").map(str::trim),
            Some("Mon, 23 Nov 2026 08:00:00 +0000")
        );
        assert!(m.date().is_some());
        assert!(
            text(&d).starts_with("From: Mail Delivery System <MAILER-DAEMON@edge.contoso.com>\r\n")
        );
    }

    #[test]
    fn notify_decides_whether_and_whom() {
        let r = reporter();
        let one = |notify: Option<&str>, st: RecipientStatus| {
            build(
                &r,
                &envelope(vec![rcpt("bob@fabrikam.com", notify, None)]),
                MESSAGE,
                &[st],
            )
        };
        assert!(one(Some("NEVER"), failed(0)).is_none());
        assert!(one(Some("NEVER"), delayed(0)).is_none());
        assert!(one(Some("SUCCESS,DELAY"), failed(0)).is_none());
        assert!(one(Some("FAILURE"), delayed(0)).is_none());
        assert!(one(Some("FAILURE,DELAY"), delivered(0)).is_none());
        assert!(one(None, delivered(0)).is_none());
        assert!(one(None, failed(0)).is_some());
        assert!(one(None, delayed(0)).is_some());
        assert!(one(Some("DELAY"), delayed(0)).is_some());
        let ok = one(Some("SUCCESS"), delivered(0)).unwrap();
        assert!(text(&ok).contains("Subject: Successful Mail Delivery Report\r\n"));
        assert_eq!(get(&status_blocks(&ok)[1], "Action"), Some("delivered"));

        // Mixed: only the recipients that asked are reported.
        let env = envelope(vec![
            rcpt("a@fabrikam.com", Some("NEVER"), None),
            rcpt("b@fabrikam.com", None, None),
            rcpt("c@fabrikam.com", Some("SUCCESS"), None),
            rcpt("d@fabrikam.com", Some("FAILURE"), None),
        ]);
        let d = build(
            &r,
            &env,
            MESSAGE,
            &[failed(0), failed(1), failed(2), failed(3)],
        )
        .unwrap();
        let finals: Vec<String> = status_blocks(&d)[1..]
            .iter()
            .map(|b| get(b, "Final-Recipient").unwrap().to_string())
            .collect();
        assert_eq!(finals, ["rfc822;b@fabrikam.com", "rfc822;d@fabrikam.com"]);
        assert!(!text(&d).contains("a@fabrikam.com"));
        assert!(!text(&d).contains("c@fabrikam.com"));
    }

    #[test]
    fn null_sender_is_never_bounced() {
        let mut env = envelope(vec![rcpt("bob@fabrikam.com", Some("FAILURE"), None)]);
        env.mail_from = String::new();
        assert!(build(&reporter(), &env, MESSAGE, &[failed(0)]).is_none());
        assert!(build(&reporter(), &env, MESSAGE, &[delayed(0)]).is_none());
    }

    #[test]
    fn nothing_to_report() {
        let env = envelope(vec![rcpt("bob@fabrikam.com", None, None)]);
        assert!(build(&reporter(), &env, MESSAGE, &[]).is_none());
        // A status for a recipient the envelope does not have is ignored.
        assert!(build(&reporter(), &env, MESSAGE, &[failed(7)]).is_none());
        let d = build(&reporter(), &env, MESSAGE, &[failed(7), failed(0)]).unwrap();
        assert_eq!(status_blocks(&d).len(), 2);
    }

    #[test]
    fn ret_full_returns_the_whole_message_on_failure() {
        let mut env = envelope(vec![rcpt("bob@fabrikam.com", None, None)]);
        env.ret = Some("FULL".into());
        let d = build(&reporter(), &env, MESSAGE, &[failed(0)]).unwrap();
        let (kind, body) = returned_part(&d);
        assert_eq!(kind, "message/rfc822");
        assert!(
            body.starts_with(MESSAGE),
            "{}",
            String::from_utf8_lossy(&body)
        );
        let m = MessageParser::default().parse(&d.content).unwrap();
        let inner = m.parts.iter().find_map(|p| p.message()).unwrap();
        assert_eq!(inner.subject(), Some("Quarterly report"));
        assert!(
            inner
                .body_text(0)
                .unwrap()
                .contains("the numbers are attached")
        );
        assert_well_formed(&d.content);
    }

    #[test]
    fn headers_only_otherwise() {
        let base = envelope(vec![rcpt("bob@fabrikam.com", None, None)]);
        let headers_only = |env: &Envelope, st: RecipientStatus, r: &Reporter<'_>| {
            let d = build(r, env, MESSAGE, &[st]).unwrap();
            let (kind, body) = returned_part(&d);
            assert_eq!(kind, "text/rfc822-headers");
            assert!(memchr::memmem::find(&body, b"Hello Bob").is_none());
            assert!(memchr::memmem::find(&body, b"Subject: Quarterly report").is_some());
        };
        let r = reporter();
        // RET absent, HDRS.
        headers_only(&base, failed(0), &r);
        let mut hdrs = base.clone();
        hdrs.ret = Some("HDRS".into());
        headers_only(&hdrs, failed(0), &r);
        // RET=FULL but no failure reported: a delay or success report.
        let mut full = base.clone();
        full.ret = Some("full".into());
        headers_only(&full, delayed(0), &r);
        full.recipients[0].notify = Some("SUCCESS".into());
        headers_only(&full, delivered(0), &r);
        // RET=FULL but larger than the limit.
        let small = Reporter {
            full_limit: MESSAGE.len() - 1,
            ..reporter()
        };
        let mut full = base.clone();
        full.ret = Some("FULL".into());
        headers_only(&full, failed(0), &small);
        let exact = Reporter {
            full_limit: MESSAGE.len(),
            ..reporter()
        };
        let d = build(&exact, &full, MESSAGE, &[failed(0)]).unwrap();
        assert_eq!(returned_part(&d).0, "message/rfc822");
    }

    #[test]
    fn ret_full_of_an_unclean_message_returns_sanitized_headers() {
        let mut env = envelope(vec![rcpt("bob@fabrikam.com", None, None)]);
        env.ret = Some("FULL".into());
        env.body = Some("BINARYMIME".into());
        let binary =
            b"Subject: bin\nX-A: b\rContent-Type: application/octet-stream\r\n\r\n\0\x01\n\r\xff";
        let d = build(&reporter(), &env, binary, &[failed(0)]).unwrap();
        assert_well_formed(&d.content);
        let (kind, body) = returned_part(&d);
        assert_eq!(kind, "text/rfc822-headers");
        assert_eq!(
            body,
            b"Subject: bin\r\nX-A: b\r\nContent-Type: application/octet-stream\r\n"
        );
    }

    #[test]
    fn no_bare_cr_or_lf_anywhere() {
        let mut env = envelope(vec![
            rcpt(
                "bob@fabrikam.com",
                Some("FAILURE,DELAY"),
                Some("rfc822;bob+0D+0Ax@fabrikam.com"),
            ),
            rcpt("carol@fabrikam.com", None, None),
        ]);
        env.envid = Some("ID+0D+0ABcc:+20x".into());
        env.helo = "evil\r\nX-Injected: yes".into();
        env.id = "q\nid".into();
        let mut st = failed(0);
        st.diagnostic =
            Some("smtp; 550-5.1.1 first line\r\n550-5.1.1 second\n550 5.1.1 third\r".into());
        st.remote_mta = Some("mx\r.fabrikam.com".into());
        let mut st2 = delayed(1);
        st2.diagnostic = Some("\r\n\r\n--boundary\r\nContent-Type: text/html\r\n\r\n".into());
        for ret in [None, Some("FULL")] {
            env.ret = ret.map(Into::into);
            let d = build(&reporter(), &env, MESSAGE, &[st.clone(), st2.clone()]).unwrap();
            assert_well_formed(&d.content);
            let t = text(&d);
            assert!(!t.contains("\r\nX-Injected"), "{t}");
            assert!(!t.contains("\r\nContent-Type: text/html"), "{t}");
            let blocks = status_blocks(&d);
            assert_eq!(blocks.len(), 3);
            assert_eq!(
                get(&blocks[1], "Diagnostic-Code"),
                Some("smtp; 550-5.1.1 first line 550-5.1.1 second 550 5.1.1 third")
            );
            // Undecodable to printable text: kept as received.
            assert_eq!(
                get(&blocks[0], "Original-Envelope-Id"),
                Some("ID+0D+0ABcc:+20x")
            );
            assert_eq!(
                get(&blocks[1], "Original-Recipient"),
                Some("rfc822;bob+0D+0Ax@fabrikam.com")
            );
        }
    }

    #[test]
    fn eight_bit_original() {
        let msg = "Subject: Grüße\r\nFrom: zoë@contoso.com\r\n\r\nHällo\r\n".as_bytes();
        let mut env = envelope(vec![rcpt("bob@fabrikam.com", None, None)]);
        let d = build(&reporter(), &env, msg, &[failed(0)]).unwrap();
        assert!(d.eight_bit);
        let t = String::from_utf8_lossy(&d.content).to_string();
        let head_end = t.find("\r\n\r\n").unwrap();
        assert!(t[..head_end].contains("Content-Transfer-Encoding: 8bit"));
        let part3 = t.rfind("Content-Type: text/rfc822-headers").unwrap();
        assert!(t[part3..].starts_with(
            "Content-Type: text/rfc822-headers\r\nContent-Description: Undelivered message header\r\nContent-Transfer-Encoding: 8bit\r\n"
        ));
        env.ret = Some("FULL".into());
        let d = build(&reporter(), &env, msg, &[failed(0)]).unwrap();
        let t = String::from_utf8_lossy(&d.content).to_string();
        let part3 = t.rfind("Content-Type: message/rfc822").unwrap();
        assert!(t[part3..].contains("Content-Transfer-Encoding: 8bit\r\n\r\nSubject: Grüße"));
        assert_well_formed(&d.content);

        // A 7-bit original: no 8bit anywhere.
        let d = build(&reporter(), &env, MESSAGE, &[failed(0)]).unwrap();
        assert!(!d.eight_bit);
        assert!(!text(&d).contains("8bit"));
    }

    #[test]
    fn international_addresses() {
        let mut env = envelope(vec![rcpt("jürgen@bücher.example", None, None)]);
        env.mail_from = "zoë@contoso.com".into();
        env.smtputf8 = true;
        let d = build(&reporter(), &env, MESSAGE, &[failed(0)]).unwrap();
        assert!(d.smtputf8 && d.eight_bit);
        assert_eq!(d.rcpt_to, "zoë@contoso.com");
        assert_well_formed(&d.content);
        let b = status_blocks(&d);
        assert_eq!(
            get(&b[1], "Final-Recipient"),
            Some("utf-8;j\\x{FC}rgen@b\\x{FC}cher.example")
        );
        let t = String::from_utf8(d.content.clone()).unwrap();
        assert!(t.contains("To: <zoë@contoso.com>\r\n"));
        assert!(t.contains("Content-Type: text/plain; charset=utf-8\r\n"));
        assert!(t.contains("<jürgen@bücher.example>"));
    }

    #[test]
    fn long_lines_of_the_original_are_not_rewrapped() {
        let long = "y".repeat(MAX_LINE);
        let msg = format!(
            "Subject: long\r\nX-Long: {}\r\n\r\n{long}\r\n",
            "z".repeat(980)
        );
        let mut env = envelope(vec![rcpt("bob@fabrikam.com", None, None)]);
        env.ret = Some("FULL".into());
        let d = build(&reporter(), &env, msg.as_bytes(), &[failed(0)]).unwrap();
        assert_well_formed(&d.content);
        assert!(memchr::memmem::find(&d.content, msg.as_bytes()).is_some());
        let (kind, _) = returned_part(&d);
        assert_eq!(kind, "message/rfc822");
    }

    #[test]
    fn original_without_body_or_final_crlf() {
        let env = envelope(vec![rcpt("bob@fabrikam.com", None, None)]);
        for (msg, want) in [
            (
                &b"Subject: only header\r\nX: y\r\n"[..],
                &b"Subject: only header\r\nX: y\r\n"[..],
            ),
            (b"Subject: no end", b"Subject: no end\r\n"),
            (b"\r\nbody without header\r\n", b""),
            (b"", b""),
        ] {
            let d = build(&reporter(), &env, msg, &[failed(0)]).unwrap();
            assert_well_formed(&d.content);
            let (kind, body) = returned_part(&d);
            assert_eq!(kind, "text/rfc822-headers");
            assert_eq!(body, want, "{:?}", String::from_utf8_lossy(msg));
        }
        let mut full = env.clone();
        full.ret = Some("FULL".into());
        let d = build(
            &reporter(),
            &full,
            b"Subject: x\r\n\r\nno final crlf",
            &[failed(0)],
        )
        .unwrap();
        assert_well_formed(&d.content);
        assert!(memchr::memmem::find(&d.content, b"no final crlf\r\n\r\n--").is_some());
    }

    #[test]
    fn boundary_never_occurs_in_the_parts() {
        let env = {
            let mut e = envelope(vec![rcpt("bob@fabrikam.com", None, None)]);
            e.ret = Some("FULL".into());
            e
        };
        let b0 = boundary(reporter().unique, &[]);
        let msg = format!("Subject: x\r\n\r\n--{b0}\r\n--{b0}-1--\r\n");
        let d = build(&reporter(), &env, msg.as_bytes(), &[failed(0)]).unwrap();
        let m = MessageParser::default().parse(&d.content).unwrap();
        let b = m
            .content_type()
            .unwrap()
            .attribute("boundary")
            .unwrap()
            .to_string();
        assert_eq!(b, format!("{b0}-2"));
        let root = m.parts[0].sub_parts().unwrap();
        assert_eq!(root.len(), 3);
        let (_, body) = returned_part(&d);
        assert!(body.starts_with(msg.as_bytes()));
        assert!(b.len() <= 70);
        // A hostile token becomes a plain one.
        let r = Reporter {
            unique: "a\"b\r\n<c>",
            ..reporter()
        };
        let d = build(&r, &env, MESSAGE, &[failed(0)]).unwrap();
        assert!(text(&d).contains("Message-ID: <abc.dsn@edge.contoso.com>\r\n"));
        assert_eq!(boundary("", &[]), "=_smtp-edge-dsn-dsn");
    }

    #[test]
    fn build_helpers() {
        assert_eq!(host_text(" mx <x>@y "), "mxxy");
        assert_eq!(host_text("\r\n"), "localhost");
        assert_eq!(token("..a/b.c.."), "ab.c");
        assert!(is_clean(b"a\r\nb\r\n"));
        assert!(!is_clean(b"a\nb"));
        assert!(!is_clean(b"a\rb"));
        assert!(!is_clean(b"a\0b"));
        assert!(is_clean("x".repeat(998).as_bytes()));
        assert!(!is_clean("x".repeat(999).as_bytes()));
        assert_eq!(sanitize_lines(b"a\r\r\nb\n"), b"a\r\n\r\nb\r\n");
        let long = sanitize_lines("h".repeat(1000).as_bytes());
        assert_well_formed(&long);
    }
}
