//! The human-readable part of a DSN (`text/plain`): what happened, per
//! recipient, with the remote server's reply and the status code's meaning,
//! wrapped to 76 columns.

use super::status::diagnostic_type;
use super::text::{chunks, one_line};
use super::{Action, RecipientStatus};
use crate::queue::spool::Envelope;
use crate::smtp::trace::rfc5322_date;

/// The human-readable part: what happened, per recipient, with the remote
/// server's reply. Lines end in CRLF and are wrapped.
pub(super) fn explanation(
    mta: &str,
    envelope: &Envelope,
    subject: Option<&str>,
    reported: &[(&RecipientStatus, &crate::queue::spool::Recipient)],
) -> String {
    let mut t = String::new();
    let t = &mut t;
    push(
        t,
        &format!("This is the mail delivery system at {mta}."),
        "",
        "",
    );
    push(t, "", "", "");
    let (failed, delayed) = (
        reported.iter().any(|(s, _)| s.action == Action::Failed),
        reported.iter().any(|(s, _)| s.action == Action::Delayed),
    );
    let summary = match (failed, delayed) {
        (true, _) => "Your message could not be delivered to all of its recipients.",
        (false, true) => "Your message has not been delivered to all of its recipients yet.",
        (false, false) => "Here is the delivery report you asked for.",
    };
    push(t, summary, "", "");
    push(t, "", "", "");
    push(
        t,
        &format!("Queue id: {}", one_line(&envelope.id)),
        "  ",
        "    ",
    );
    push(
        t,
        &format!("Received: {}", rfc5322_date(envelope.received_at)),
        "  ",
        "    ",
    );
    push(
        t,
        &format!("Sender: <{}>", one_line(&envelope.mail_from)),
        "  ",
        "    ",
    );
    if let Some(subject) = subject {
        push(t, &format!("Subject: {subject}"), "  ", "    ");
    }
    push(t, "", "", "");
    let sections: [(Action, &str); 5] = [
        (
            Action::Failed,
            "Delivery to these recipients failed permanently; the message will not be retried \
             for them. Please check the addresses, or forward the reply below to the \
             recipient's mail administrator:",
        ),
        (
            Action::Delayed,
            "Delivery to these recipients has been delayed. The mail system keeps trying; you \
             do not need to send the message again, and you will be told if it finally fails:",
        ),
        (
            Action::Delivered,
            "Your message was delivered to these recipients:",
        ),
        (
            Action::Relayed,
            "Your message was passed on to these recipients' mail system, which does not report \
             deliveries; no further report will follow:",
        ),
        (
            Action::Expanded,
            "Your message was delivered to these recipients and passed on to the addresses they \
             expand to:",
        ),
    ];
    for (action, heading) in sections {
        let these: Vec<_> = reported
            .iter()
            .filter(|(s, _)| s.action == action)
            .collect();
        if these.is_empty() {
            continue;
        }
        push(t, heading, "", "");
        push(t, "", "", "");
        for (s, r) in these {
            push(t, &format!("<{}>", one_line(&r.address)), "  ", "  ");
            let (c, sub, det) = s.status;
            let meaning = status_meaning(s.status)
                .map(|m| format!(" ({m})"))
                .unwrap_or_default();
            indented(t, &format!("Status: {c}.{sub}.{det}{meaning}"));
            if let Some(m) = &s.remote_mta {
                indented(t, &format!("Remote server: {}", one_line(m)));
            }
            if let Some(d) = &s.diagnostic {
                let reply = one_line(d);
                let reply = match diagnostic_type(&reply) {
                    Some((_, rest)) => rest.to_string(),
                    None => reply,
                };
                indented(t, &format!("Reply: {reply}"));
            }
            if let Some(at) = s.last_attempt {
                indented(t, &format!("Last attempt: {}", rfc5322_date(at)));
            }
            if action == Action::Delayed
                && let Some(until) = s.will_retry_until
            {
                indented(t, &format!("Retrying until: {}", rfc5322_date(until)));
            }
            push(t, "", "", "");
        }
    }
    push(
        t,
        "The delivery report and the message's header (or the whole message, if you asked \
         for it) are attached.",
        "",
        "",
    );
    std::mem::take(t)
}

/// Appends `s` wrapped to 76 columns, each line ending in CRLF.
fn push(t: &mut String, s: &str, first: &str, rest: &str) {
    for l in wrap(s, 76, first, rest) {
        t.push_str(&l);
        t.push_str("\r\n");
    }
}

/// Appends `s` indented by four spaces, continuations by eight.
fn indented(t: &mut String, s: &str) {
    push(t, s, "    ", "        ");
}

/// `s` (made one line) wrapped at spaces to `width` columns, the first line
/// starting with `first`, the others with `rest`; words longer than 900
/// octets are cut. Always at least one line; every line within 998 octets
/// (for short prefixes).
fn wrap(s: &str, width: usize, first: &str, rest: &str) -> Vec<String> {
    let s = one_line(s);
    let mut lines = vec![first.to_string()];
    let mut has_word = false;
    for word in s.split(' ').filter(|w| !w.is_empty()) {
        for piece in chunks(word, 900) {
            let len = lines.last().map_or(0, |l| l.chars().count());
            if has_word && len + 1 + piece.chars().count() > width {
                lines.push(rest.to_string());
                has_word = false;
            }
            if let Some(l) = lines.last_mut() {
                if has_word {
                    l.push(' ');
                }
                l.push_str(piece);
            }
            has_word = true;
        }
    }
    lines
}

/// A short meaning of common enhanced status codes (RFC 3463), for people.
fn status_meaning((class, subject, detail): (u8, u16, u16)) -> Option<&'static str> {
    if class == 2 {
        return Some("success");
    }
    Some(match (subject, detail) {
        (1, 1) => "bad destination mailbox address",
        (1, 2) => "bad destination system address",
        (1, 3) => "bad destination mailbox address syntax",
        (1, 6) => "destination mailbox has moved",
        (1, 10) => "recipient address has null MX",
        (2, 1) => "mailbox disabled, not accepting messages",
        (2, 2) => "mailbox full",
        (2, 3) => "message length exceeds administrative limit",
        (3, 4) => "message too big for system",
        (4, 1) => "no answer from host",
        (4, 2) => "bad connection",
        (4, 3) => "directory server failure",
        (4, 4) => "unable to route",
        (4, 6) => "routing loop detected",
        (4, 7) => "delivery time expired",
        (5, 0) => "protocol error",
        (7, 1) => "delivery not authorized, message refused",
        (7, 10) => "encryption needed",
        (7, 23) => "SPF validation failed",
        (7, 26) => "multiple authentication checks failed",
        (7, 0) => "security or policy status",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::dsn::build;
    use crate::queue::dsn::fixtures::*;

    #[test]
    fn the_explanation_names_the_original_subject_decoded() {
        let env = envelope(vec![rcpt("bob@fabrikam.com", None, None)]);
        let d = build(&reporter(), &env, MESSAGE, &[failed(0)]).unwrap();
        assert!(
            text(&d).contains("  Subject: Quarterly report\r\n"),
            "{}",
            text(&d)
        );
        // Encoded words are decoded; what they hide cannot break a line.
        let m = b"Subject: =?utf-8?B?R3LDvMOfZQ0KQmNjOiBldmls?=\r\n\r\nx\r\n";
        let d = build(&reporter(), &env, m, &[failed(0)]).unwrap();
        let t = text(&d);
        assert!(t.contains("  Subject: Grüße Bcc: evil\r\n"), "{t}");
        assert!(d.eight_bit, "a UTF-8 explanation is sent as 8bit");
        assert_well_formed(&d.content);
        // No Subject, no line.
        let d = build(&reporter(), &env, b"From: a@b\r\n\r\nx\r\n", &[failed(0)]).unwrap();
        assert!(!text(&d).contains("  Subject:"));
    }

    #[test]
    fn delay_notice() {
        let env = envelope(vec![rcpt("bob@fabrikam.com", None, None)]);
        let d = build(&reporter(), &env, MESSAGE, &[delayed(0)]).unwrap();
        let t = text(&d);
        assert!(t.contains("Subject: Delayed Mail (still being retried)\r\n"));
        let b = status_blocks(&d);
        assert_eq!(get(&b[1], "Action"), Some("delayed"));
        assert_eq!(get(&b[1], "Status"), Some("4.4.1"));
        assert_eq!(get(&b[1], "Remote-MTA"), None);
        assert_eq!(
            get(&b[1], "Will-Retry-Until"),
            Some("Sat, 28 Nov 2026 07:00:00 +0000")
        );
        assert!(t.contains("Retrying until: Sat, 28 Nov 2026 07:00:00 +0000"));
        assert!(t.contains("do not need to send the message again"));
        // Will-Retry-Until only for delays.
        let mut f = failed(0);
        f.will_retry_until = Some(1);
        let d = build(&reporter(), &env, MESSAGE, &[f]).unwrap();
        assert_eq!(get(&status_blocks(&d)[1], "Will-Retry-Until"), None);
        // Failure and delay together: a bounce.
        let env = envelope(vec![
            rcpt("bob@fabrikam.com", None, None),
            rcpt("carol@fabrikam.com", None, None),
        ]);
        let d = build(&reporter(), &env, MESSAGE, &[delayed(0), failed(1)]).unwrap();
        assert!(text(&d).contains("Subject: Undelivered Mail Returned to Sender\r\n"));
        assert_eq!(status_blocks(&d).len(), 3);
    }

    #[test]
    fn explain_helpers() {
        assert_eq!(wrap("", 10, "", ""), vec![String::new()]);
        assert_eq!(
            wrap("aa bb cc dd", 5, "", "  "),
            vec!["aa bb", "  cc", "  dd"]
        );
        assert_eq!(wrap("aa bb", 5, "  ", "    "), vec!["  aa", "    bb"]);
        assert_eq!(
            status_meaning((5, 1, 1)),
            Some("bad destination mailbox address")
        );
        assert_eq!(status_meaning((2, 0, 0)), Some("success"));
        assert_eq!(status_meaning((5, 9, 9)), None);
    }
}
