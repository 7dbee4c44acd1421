//! Test fixtures shared by the DSN modules' tests: an original message and
//! envelope, recipient results, and readers for the parts of a built DSN.

use mail_parser::{MessageParser, MimeHeaders, PartType};

use super::text::MAX_LINE;
use super::{Action, DEFAULT_FULL_LIMIT, Dsn, RecipientStatus, Reporter};
use crate::queue::spool::{Envelope, Recipient};

pub(super) const MESSAGE: &[u8] = b"From: Alice <alice@contoso.com>\r\n\
To: bob@fabrikam.com\r\n\
Subject: Quarterly report\r\n\
Message-ID: <orig-1@contoso.com>\r\n\
\r\n\
Hello Bob,\r\n\
the numbers are attached.\r\n";

pub(super) fn reporter() -> Reporter<'static> {
    Reporter {
        mta: "edge.contoso.com",
        now: 1_795_420_800,
        unique: "0001abc",
        full_limit: DEFAULT_FULL_LIMIT,
    }
}

pub(super) fn rcpt(address: &str, notify: Option<&str>, orcpt: Option<&str>) -> Recipient {
    Recipient {
        address: address.into(),
        notify: notify.map(Into::into),
        orcpt: orcpt.map(Into::into),
    }
}

pub(super) fn envelope(recipients: Vec<Recipient>) -> Envelope {
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

pub(super) fn failed(recipient: usize) -> RecipientStatus {
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

pub(super) fn delayed(recipient: usize) -> RecipientStatus {
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

pub(super) fn delivered(recipient: usize) -> RecipientStatus {
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

pub(super) fn text(d: &Dsn) -> &str {
    std::str::from_utf8(&d.content).unwrap()
}

/// The per-message block and per-recipient blocks of the
/// delivery-status part, unfolded, as (name, value) lists.
pub(super) fn status_blocks(d: &Dsn) -> Vec<Vec<(String, String)>> {
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

pub(super) fn get<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// No bare CR, no bare LF, no line over 998 octets.
pub(super) fn assert_well_formed(content: &[u8]) {
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

pub(super) fn returned_part(d: &Dsn) -> (String, Vec<u8>) {
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
