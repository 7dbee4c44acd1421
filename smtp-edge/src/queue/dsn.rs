//! Delivery status notifications (RFC 3464): bounces, delay notices and,
//! when asked for, success reports, as complete RFC 5322 messages.
//!
//! Pure: the caller gives the original envelope and message, the results per
//! recipient, the time and a unique token, and gets the DSN's envelope and
//! bytes back. Nothing here reads a clock, a file or the network.
//!
//! # When a DSN is made ([`build`] returns `None` otherwise)
//!
//! - Never for a message from the null sender: a bounce is not bounced (the
//!   caller sends double bounces to its postmaster).
//! - Only for recipients whose NOTIFY asks for that outcome
//!   ([`notify_allows`]): `FAILURE` for failed, `DELAY` for delayed,
//!   `SUCCESS` for delivered, relayed and expanded; `NEVER` for nothing.
//!   Without NOTIFY, failures and delays are reported, successes are not
//!   (RFC 3461 §4.1 lets the MTA read an absent NOTIFY as `FAILURE` or as
//!   `FAILURE,DELAY`; delay notices are sent, as most MTAs do).
//!
//! # What is returned of the original (RET, RFC 3461 §4.3)
//!
//! - The whole message (`message/rfc822`) only when RET=FULL, the DSN reports
//!   at least one failure, the message is no larger than
//!   [`Reporter::full_limit`], and it is clean text (CRLF line ends only, no
//!   NUL, lines within 1000 octets).
//! - Otherwise only its header section (`text/rfc822-headers`): for RET=HDRS,
//!   for delay and success reports (RFC 3461: a DSN without a failure SHOULD
//!   return only the headers), and when RET was not given. RFC 3461 leaves
//!   the absent case to the MTA; headers only is the safe choice: a bounce
//!   never carries a large or confidential body back unasked, and a
//!   misdirected bounce (backscatter) carries little.
//!
//! # Form
//!
//! `multipart/report; report-type=delivery-status` (RFC 6522) with three
//! parts: a `text/plain` explanation for people, the `message/delivery-status`
//! fields for programs (Original-Envelope-Id, Reporting-MTA,
//! Received-From-MTA, Arrival-Date; per recipient Original-Recipient,
//! Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code,
//! Last-Attempt-Date, Will-Retry-Until), and the original (whole or header).
//! Every line ends in CRLF, no line exceeds 998 octets, and no value given by
//! a remote server or client can start a header field or a MIME part:
//! control characters in them become spaces and long values are folded.
//! The delivery-status part is ASCII only; the original is returned
//! unchanged (never re-wrapped) and declared `8bit` when it has 8-bit bytes
//! ([`Dsn::eight_bit`]).

use std::fmt::Write as _;

use crate::queue::spool::Envelope;
use crate::smtp::command::xtext_decode;
use crate::smtp::trace::rfc5322_date;

/// The default for [`Reporter::full_limit`]: originals up to 10 MiB are
/// returned whole under RET=FULL.
pub const DEFAULT_FULL_LIMIT: usize = 10 * 1024 * 1024;

/// The longest line, without its CRLF (RFC 5322 §2.1.1).
const MAX_LINE: usize = 998;

/// Where header fields are folded when they can be (RFC 5322 §2.1.1).
const FOLD_AT: usize = 78;

/// What happened to a recipient (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Could not be delivered, will not be retried.
    Failed,
    /// Not delivered yet, still being retried.
    Delayed,
    /// Delivered to the recipient's mailbox.
    Delivered,
    /// Handed to a system that does not send DSNs (no further reports).
    Relayed,
    /// Delivered and passed on to several addresses (a list or alias).
    Expanded,
}

impl Action {
    /// The field value (`failed`, `delayed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Expanded => "expanded",
        }
    }
}

/// The result for one recipient of the original message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    /// Position in the envelope's recipients.
    pub recipient: usize,
    /// What happened.
    pub action: Action,
    /// Enhanced status code (RFC 3463), e.g. `(5, 1, 1)`.
    pub status: (u8, u16, u16),
    /// The server that answered (host name), if any.
    pub remote_mta: Option<String>,
    /// The diagnostic with its type, usually the remote reply:
    /// `smtp; 550 5.1.1 user unknown` (`smtp; ` is added when no type is
    /// given; a multi-line reply may be given with its line breaks).
    pub diagnostic: Option<String>,
    /// When delivery was last tried (seconds since the epoch).
    pub last_attempt: Option<u64>,
    /// Until when it will be retried, for [`Action::Delayed`].
    pub will_retry_until: Option<u64>,
}

/// Who reports, and the inputs a pure function cannot make up itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reporter<'a> {
    /// This MTA's host name: `Reporting-MTA: dns; NAME`,
    /// `From: MAILER-DAEMON@NAME`, the Message-ID's right side.
    pub mta: &'a str,
    /// Now (seconds since the epoch), for the Date field.
    pub now: u64,
    /// A token unique to this DSN (a new queue id): the Message-ID's left
    /// side and the MIME boundary.
    pub unique: &'a str,
    /// The largest original returned whole under RET=FULL; larger ones are
    /// returned as headers only (RFC 3461 §4.3 allows it). See
    /// [`DEFAULT_FULL_LIMIT`].
    pub full_limit: usize,
}

/// A DSN ready to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// Envelope sender: always `""`, the null sender (RFC 3461 §6.1).
    pub mail_from: String,
    /// Envelope recipient: the original message's sender.
    pub rcpt_to: String,
    /// The message: CRLF line ends, lines of at most 998 octets.
    pub content: Vec<u8>,
    /// The content has 8-bit bytes (send with BODY=8BITMIME).
    pub eight_bit: bool,
    /// The header or envelope has UTF-8 (an internationalized sender): send
    /// with SMTPUTF8.
    pub smtputf8: bool,
}

/// Whether a recipient's NOTIFY value (as in the spool: `NEVER` or a comma
/// list of `SUCCESS`, `FAILURE`, `DELAY`, any case) asks for a report of
/// `action`. Absent (or without any known keyword): failures and delays.
pub fn notify_allows(notify: Option<&str>, action: Action) -> bool {
    let (mut success, mut failure, mut delay, mut never, mut known) =
        (false, false, false, false, false);
    for word in notify.unwrap_or("").split(',').map(str::trim) {
        let flag = match word.to_ascii_uppercase().as_str() {
            "SUCCESS" => &mut success,
            "FAILURE" => &mut failure,
            "DELAY" => &mut delay,
            "NEVER" => &mut never,
            _ => continue,
        };
        *flag = true;
        known = true;
    }
    if !known {
        (failure, delay) = (true, true);
    }
    if never {
        return false;
    }
    match action {
        Action::Failed => failure,
        Action::Delayed => delay,
        Action::Delivered | Action::Relayed | Action::Expanded => success,
    }
}

/// Builds the DSN for `statuses` of a message sent with `envelope` and
/// content `message`. `None` when the sender is the null sender or NOTIFY
/// asks for none of the reported outcomes (statuses naming no recipient of
/// the envelope are ignored). See the module documentation.
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

/// The human-readable part: what happened, per recipient, with the remote
/// server's reply. Lines end in CRLF and are wrapped.
fn explanation(
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

/// The message/delivery-status body: per-message fields, then one block per
/// recipient, each after an empty line (RFC 3464 §2.1). ASCII only.
fn delivery_status(
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
fn diagnostic_type(d: &str) -> Option<(&str, &str)> {
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

/// One line of text: every control character (CR, LF, TAB, …) becomes a
/// space, runs of spaces one space, ends trimmed. Keeps UTF-8.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        out.push(c);
    }
    out.truncate(out.trim_end().len());
    out
}

/// [`one_line`], and every non-ASCII character as `?`.
fn ascii(s: &str) -> String {
    one_line(s)
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect()
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

/// One header field, `Name: value` folded at spaces to about 78 columns and
/// always within 998, ending in CRLF. `value` is expected on one line
/// (callers pass [`one_line`]/[`ascii`] text).
fn field(name: &str, value: &str) -> String {
    let value = one_line(value);
    let mut out = String::with_capacity(name.len() + value.len() + 4);
    out.push_str(name);
    out.push(':');
    let mut len = out.len();
    let mut has_word = false;
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        for piece in chunks(word, MAX_LINE - 2) {
            let over = len + 1 + piece.len();
            if (has_word && over > FOLD_AT) || over > MAX_LINE {
                out.push_str("\r\n");
                len = 0;
            }
            out.push(' ');
            out.push_str(piece);
            len += 1 + piece.len();
            has_word = true;
        }
    }
    out.push_str("\r\n");
    out
}

/// `s` in pieces of at most `max` bytes, split at character boundaries.
fn chunks(s: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out.push(rest);
    out
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
    use mail_parser::{MessageParser, MimeHeaders, PartType};

    use super::*;
    use crate::queue::spool::Recipient;

    const MESSAGE: &[u8] = b"From: Alice <alice@contoso.com>\r\n\
To: bob@fabrikam.com\r\n\
Subject: Quarterly report\r\n\
Message-ID: <orig-1@contoso.com>\r\n\
\r\n\
Hello Bob,\r\n\
the numbers are attached.\r\n";

    fn reporter() -> Reporter<'static> {
        Reporter {
            mta: "edge.contoso.com",
            now: 1_795_420_800,
            unique: "0001abc",
            full_limit: DEFAULT_FULL_LIMIT,
        }
    }

    fn rcpt(address: &str, notify: Option<&str>, orcpt: Option<&str>) -> Recipient {
        Recipient {
            address: address.into(),
            notify: notify.map(Into::into),
            orcpt: orcpt.map(Into::into),
        }
    }

    fn envelope(recipients: Vec<Recipient>) -> Envelope {
        Envelope {
            id: "18a2b3c4d5e6f".into(),
            received_at: 1_795_417_200,
            mail_from: "alice@contoso.com".into(),
            recipients,
            helo: "exchange.contoso.local".into(),
            connector: "onprem".into(),
            ..Envelope::default()
        }
    }

    fn failed(recipient: usize) -> RecipientStatus {
        RecipientStatus {
            recipient,
            action: Action::Failed,
            status: (5, 1, 1),
            remote_mta: Some("mx.fabrikam.com".into()),
            diagnostic: Some("smtp; 550 5.1.1 <bob@fabrikam.com>: user unknown".into()),
            last_attempt: Some(1_795_420_700),
            will_retry_until: None,
        }
    }

    fn delayed(recipient: usize) -> RecipientStatus {
        RecipientStatus {
            recipient,
            action: Action::Delayed,
            status: (4, 4, 1),
            remote_mta: None,
            diagnostic: Some("smtp; 421 4.4.1 connection timed out".into()),
            last_attempt: Some(1_795_420_700),
            will_retry_until: Some(1_795_849_200),
        }
    }

    fn delivered(recipient: usize) -> RecipientStatus {
        RecipientStatus {
            recipient,
            action: Action::Delivered,
            status: (2, 0, 0),
            remote_mta: Some("mx.fabrikam.com".into()),
            diagnostic: Some("smtp; 250 2.0.0 OK queued".into()),
            last_attempt: Some(1_795_420_700),
            will_retry_until: None,
        }
    }

    fn text(d: &Dsn) -> &str {
        std::str::from_utf8(&d.content).unwrap()
    }

    /// The per-message block and per-recipient blocks of the
    /// delivery-status part, unfolded, as (name, value) lists.
    fn status_blocks(d: &Dsn) -> Vec<Vec<(String, String)>> {
        let parsed = MessageParser::default().parse(&d.content).unwrap();
        let part = &parsed.parts[2];
        assert_eq!(part.content_type().unwrap().ctype(), "message");
        assert_eq!(
            part.content_type().unwrap().subtype(),
            Some("delivery-status")
        );
        let body = std::str::from_utf8(part.contents()).unwrap();
        let unfolded = body.replace("\r\n ", " ");
        unfolded
            .split("\r\n\r\n")
            .filter(|b| !b.trim().is_empty())
            .map(|b| {
                b.split("\r\n")
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (n, v) = l.split_once(':').unwrap();
                        (n.to_string(), v.trim().to_string())
                    })
                    .collect()
            })
            .collect()
    }

    fn get<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
        block
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// No bare CR, no bare LF, no line over 998 octets.
    fn assert_well_formed(content: &[u8]) {
        let mut line = 0;
        for (i, &b) in content.iter().enumerate() {
            match b {
                b'\r' => assert_eq!(content.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
                b'\n' => {
                    assert!(i > 0 && content[i - 1] == b'\r', "bare LF at {i}");
                    line = 0;
                }
                _ => {
                    line += 1;
                    assert!(line <= MAX_LINE, "line over 998 octets at {i}");
                }
            }
        }
        assert!(content.ends_with(b"\r\n"));
    }

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
    fn notify_table() {
        use Action::*;
        // (NOTIFY, failed, delayed, delivered/relayed/expanded)
        for (notify, f, d, s) in [
            (None, true, true, false),
            (Some(""), true, true, false),
            (Some("NEVER"), false, false, false),
            (Some("never"), false, false, false),
            (Some("FAILURE"), true, false, false),
            (Some("DELAY"), false, true, false),
            (Some("SUCCESS"), false, false, true),
            (Some("SUCCESS,FAILURE"), true, false, true),
            (Some("FAILURE,DELAY"), true, true, false),
            (Some("SUCCESS,FAILURE,DELAY"), true, true, true),
            (Some("success, delay"), false, true, true),
            (Some("BOGUS"), true, true, false),
        ] {
            assert_eq!(notify_allows(notify, Failed), f, "{notify:?}");
            assert_eq!(notify_allows(notify, Delayed), d, "{notify:?}");
            for a in [Delivered, Relayed, Expanded] {
                assert_eq!(notify_allows(notify, a), s, "{notify:?} {a:?}");
            }
        }
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

    fn returned_part(d: &Dsn) -> (String, Vec<u8>) {
        let m = MessageParser::default().parse(&d.content).unwrap();
        let root = m.parts[0].sub_parts().unwrap();
        let p = &m.parts[root[2] as usize];
        let ct = p.content_type().unwrap();
        let kind = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""));
        let body = match &p.body {
            PartType::Message(inner) => inner.raw_message().to_vec(),
            _ => p.contents().to_vec(),
        };
        (kind, body)
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
    fn long_values_are_folded_and_lines_stay_short() {
        let env = envelope(vec![rcpt("bob@fabrikam.com", None, None)]);
        let mut st = failed(0);
        let words: Vec<String> = (0..200).map(|i| format!("word{i}")).collect();
        let long_reply = format!("smtp; 550 5.7.1 {}", words.join(" "));
        st.diagnostic = Some(format!("{long_reply} {}", "x".repeat(3000)));
        let d = build(&reporter(), &env, MESSAGE, &[st]).unwrap();
        assert_well_formed(&d.content);
        let t = text(&d);
        let status = &t[t.find("Reporting-MTA").unwrap()..];
        let diag_line = status
            .lines()
            .position(|l| l.starts_with("Diagnostic-Code:"))
            .unwrap();
        let folded: Vec<&str> = status.lines().skip(diag_line).take(5).collect();
        assert!(folded[0].len() <= FOLD_AT, "{}", folded[0]);
        assert!(folded[1].starts_with(' ') && folded[1].len() <= FOLD_AT);
        let b = status_blocks(&d);
        let diag = get(&b[1], "Diagnostic-Code").unwrap();
        assert!(diag.starts_with(&long_reply), "{diag}");
        // The human part wraps too.
        let human_end = t.find("Content-Type: message/delivery-status").unwrap();
        let human = &t[..human_end];
        assert!(
            human
                .lines()
                .all(|l| l.len() <= 76 || !l.trim().contains(' '))
        );
        assert!(human.contains("word199"));
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
    fn helpers() {
        assert_eq!(one_line("  a\r\n\tb  c \n"), "a b c");
        assert_eq!(ascii("zoë\r\n"), "zo?");
        assert_eq!(host_text(" mx <x>@y "), "mxxy");
        assert_eq!(host_text("\r\n"), "localhost");
        assert_eq!(token("..a/b.c.."), "ab.c");
        assert_eq!(
            utf8_addr_xtext("a+b=c\\d é"),
            "a\\x{2B}b\\x{3D}c\\x{5C}d\\x{20}\\x{E9}"
        );
        assert_eq!(utf8_addr_xtext("d\\x{E4}v"), "d\\x{E4}v");
        assert_eq!(utf8_addr_xtext("😀"), "\\x{1F600}");
        assert_eq!(original_recipient("rfc822"), "unknown;rfc822");
        assert_eq!(original_recipient("x400;a+3Db"), "x400;a=b");
        assert_eq!(field("Subject", "short"), "Subject: short\r\n");
        let f = field("X", &"ab ".repeat(100));
        assert!(f.split("\r\n").all(|l| l.len() <= FOLD_AT));
        let f = field("X", &"a".repeat(2500));
        assert!(f.split("\r\n").all(|l| l.len() <= MAX_LINE));
        assert_eq!(
            f.replace("\r\n ", "").replace(' ', ""),
            format!("X:{}\r\n", "a".repeat(2500))
        );
        assert_eq!(wrap("", 10, "", ""), vec![String::new()]);
        assert_eq!(
            wrap("aa bb cc dd", 5, "", "  "),
            vec!["aa bb", "  cc", "  dd"]
        );
        assert_eq!(wrap("aa bb", 5, "  ", "    "), vec!["  aa", "    bb"]);
        assert!(is_clean(b"a\r\nb\r\n"));
        assert!(!is_clean(b"a\nb"));
        assert!(!is_clean(b"a\rb"));
        assert!(!is_clean(b"a\0b"));
        assert!(is_clean("x".repeat(998).as_bytes()));
        assert!(!is_clean("x".repeat(999).as_bytes()));
        assert_eq!(sanitize_lines(b"a\r\r\nb\n"), b"a\r\n\r\nb\r\n");
        let long = sanitize_lines("h".repeat(1000).as_bytes());
        assert_well_formed(&long);
        assert_eq!(
            status_meaning((5, 1, 1)),
            Some("bad destination mailbox address")
        );
        assert_eq!(status_meaning((2, 0, 0)), Some("success"));
        assert_eq!(status_meaning((5, 9, 9)), None);
        assert_eq!(Action::Expanded.as_str(), "expanded");
    }
}
