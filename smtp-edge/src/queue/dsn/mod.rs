//! Delivery status notifications (RFC 3464): bounces, delay notices and,
//! when asked for, success reports, as complete RFC 5322 messages.
//!
//! Pure: the caller gives the original envelope and message, the results per
//! recipient, the time and a unique token, and gets the DSN's envelope and
//! bytes back. Nothing here reads a clock, a file or the network.
//!
//! # When a DSN is made ([`build()`] returns `None` otherwise)
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
//!
//! # Layout
//!
//! - this file: the types and [`notify_allows`];
//! - `build`: [`build()`] itself, composing the message (framing, header
//!   fields, boundary) and choosing and cleaning the returned original;
//! - `explain`: the `text/plain` explanation for people;
//! - `status`: the `message/delivery-status` fields for programs (xtext and
//!   `utf-8-addr-xtext` encodings, diagnostic types);
//! - `text`: the line-safety primitives all parts share (one-line text,
//!   ASCII, header folding).

mod build;
mod explain;
#[cfg(test)]
mod fixtures;
mod status;
mod text;

pub use build::build;

/// The default for [`Reporter::full_limit`]: originals up to 10 MiB are
/// returned whole under RET=FULL.
pub const DEFAULT_FULL_LIMIT: usize = 10 * 1024 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn action_names() {
        assert_eq!(Action::Expanded.as_str(), "expanded");
    }
}
