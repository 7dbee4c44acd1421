//! Which DSN a message's state calls for, and to whom. Pure: the manager
//! reads the original, queues the DSN, and only then marks the recipients
//! reported (a DSN that cannot be written is tried again, the failure it
//! reports stays on record).
//!
//! Who hears of a failure:
//!
//! | the failed message | is told |
//! | --- | --- |
//! | an ordinary message from a sender | the sender (a bounce), per NOTIFY |
//! | an ordinary message from `<>` (a remote bounce), or a bounce or delay notice made here | `queue.postmaster`, once (a double bounce) |
//! | a double bounce | nobody: dropped with a log line (Postfix does the same) |
//!
//! Without a postmaster, what would go to the postmaster is dropped with a
//! log line. Delay notices go only to the senders of ordinary messages:
//! never about a DSN, so notices cannot chain.

use super::state::MessageState;
use crate::queue::dsn::{self, RecipientStatus};
use crate::queue::spool::{Envelope, Notification, Recipient};

/// What to do about a message's unreported outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to report.
    Nothing,
    /// Report nothing, but count these failures as reported (a double
    /// bounce that failed, no postmaster, NOTIFY=NEVER…); why, for the log.
    Drop {
        /// The failed recipients.
        covers: Vec<usize>,
        /// Whether a due delay notice counts as sent.
        delay: bool,
        /// Why nothing is sent.
        why: &'static str,
    },
    /// Queue this DSN; once it is on disk, count these as reported.
    Send {
        /// The DSN's envelope.
        envelope: Box<Envelope>,
        /// Its content.
        content: Vec<u8>,
        /// The failed recipients it reports.
        covers: Vec<usize>,
        /// It carries the delay notice that was due.
        delay: bool,
    },
}

/// What a plan needs to know besides the message.
#[derive(Debug, Clone, Copy)]
pub struct Reporting<'a> {
    /// This host's name (Reporting-MTA, MAILER-DAEMON@…).
    pub hostname: &'a str,
    /// Where double bounces go ("": nowhere).
    pub postmaster: &'a str,
    /// Seconds after arrival for a delay notice (0: never).
    pub delay_notice_after: u64,
    /// The message's lifetime (Will-Retry-Until of a delay notice).
    pub max_age: u64,
    /// Now.
    pub now: u64,
    /// A token unique to the DSN (boundary, Message-ID).
    pub unique: &'a str,
}

/// The statuses due for a report: unreported failures, and the pending
/// recipients as delays when a delay notice is due for an ordinary message
/// with a sender. Also whether a delay notice is part of them.
pub fn due(st: &MessageState, env: &Envelope, r: &Reporting<'_>) -> (Vec<RecipientStatus>, bool) {
    let mut statuses = st.unreported_failures();
    let delay = env.notification().is_none()
        && !env.mail_from.is_empty()
        && st.delay_notice_due(r.now, r.delay_notice_after);
    if delay {
        statuses.extend(st.delays(st.arrived_at + r.max_age));
    }
    (statuses, delay)
}

/// Whether the DSN would return the original whole (RET=FULL with a
/// failure), so the caller reads more than its header section.
pub fn wants_whole(env: &Envelope, statuses: &[RecipientStatus]) -> bool {
    env.ret
        .as_deref()
        .is_some_and(|r| r.eq_ignore_ascii_case("FULL"))
        && statuses.iter().any(|s| s.action == dsn::Action::Failed)
}

/// The plan for `statuses` (from [`due`]) of the message `env` whose
/// original starts with `original` (its header section, or up to the
/// full-return limit).
pub fn plan(
    env: &Envelope,
    statuses: &[RecipientStatus],
    delay: bool,
    original: &[u8],
    r: &Reporting<'_>,
) -> Plan {
    if statuses.is_empty() {
        return Plan::Nothing;
    }
    let covers: Vec<usize> = statuses
        .iter()
        .filter(|s| s.action == dsn::Action::Failed)
        .map(|s| s.recipient)
        .collect();
    let reporter = dsn::Reporter {
        mta: r.hostname,
        now: r.now,
        unique: r.unique,
        full_limit: dsn::DEFAULT_FULL_LIMIT,
    };
    let (report_env, kind) = match env.notification() {
        None if !env.mail_from.is_empty() => (
            env.clone(),
            if covers.is_empty() {
                Notification::Delay
            } else {
                Notification::Bounce
            },
        ),
        Some(Notification::DoubleBounce) => {
            return Plan::Drop {
                covers,
                delay,
                why: "a double bounce could not be delivered: dropped",
            };
        }
        // A bounce (made here, or relayed from elsewhere) that failed: to
        // the postmaster, once; delays of bounces are not reported.
        _ => {
            if covers.is_empty() {
                return Plan::Drop {
                    covers,
                    delay,
                    why: "no delay notices about bounces",
                };
            }
            if r.postmaster.is_empty() {
                return Plan::Drop {
                    covers,
                    delay,
                    why: "an undeliverable bounce, and no queue.postmaster: dropped",
                };
            }
            let mut e = env.clone();
            e.mail_from = r.postmaster.to_string();
            (e, Notification::DoubleBounce)
        }
    };
    // Only the failures go to the postmaster.
    let wanted: Vec<RecipientStatus> = if kind == Notification::DoubleBounce {
        statuses
            .iter()
            .filter(|s| s.action == dsn::Action::Failed)
            .cloned()
            .collect()
    } else {
        statuses.to_vec()
    };
    match dsn::build(&reporter, &report_env, original, &wanted) {
        None => Plan::Drop {
            covers,
            delay,
            why: "NOTIFY asks for no report",
        },
        Some(d) => Plan::Send {
            envelope: Box::new(Envelope {
                received_at: r.now,
                mail_from: String::new(),
                recipients: vec![Recipient {
                    address: d.rcpt_to,
                    ..Recipient::default()
                }],
                body: d.eight_bit.then(|| "8BITMIME".to_string()),
                smtputf8: d.smtputf8,
                connector: "dsn".into(),
                helo: r.hostname.to_string(),
                notification: Some(kind),
                ..Envelope::default()
            }),
            content: d.content,
            covers,
            delay,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::state::Outcome;

    fn env(from: &str, notification: Option<Notification>) -> Envelope {
        Envelope {
            id: "Q1".into(),
            received_at: 1000,
            mail_from: from.into(),
            recipients: vec![
                Recipient {
                    address: "a@contoso.com".into(),
                    ..Recipient::default()
                },
                Recipient {
                    address: "b@contoso.com".into(),
                    ..Recipient::default()
                },
            ],
            notification,
            ..Envelope::default()
        }
    }

    fn failed(env: &Envelope) -> MessageState {
        let mut st = MessageState::new(env);
        st.record(
            0,
            Outcome::Failed {
                remote: None,
                status: (5, 1, 1),
                reason: "550 no such user".into(),
            },
            2000,
        );
        st
    }

    const R: Reporting<'static> = Reporting {
        hostname: "edge.contoso.com",
        postmaster: "postmaster@contoso.com",
        delay_notice_after: 3600,
        max_age: 172_800,
        now: 2000,
        unique: "U1",
    };

    fn run(env: &Envelope, st: &MessageState, r: &Reporting<'_>) -> Plan {
        let (statuses, delay) = due(st, env, r);
        plan(env, &statuses, delay, b"Subject: x\r\n\r\n", r)
    }

    #[test]
    fn a_bounce_goes_to_the_sender_then_the_postmaster_then_nowhere() {
        let ordinary = env("alice@fabrikam.com", None);
        let Plan::Send {
            envelope, covers, ..
        } = run(&ordinary, &failed(&ordinary), &R)
        else {
            panic!()
        };
        assert_eq!(envelope.recipients[0].address, "alice@fabrikam.com");
        assert_eq!(envelope.mail_from, "");
        assert_eq!(envelope.notification, Some(Notification::Bounce));
        assert_eq!(covers, [0]);
        // That bounce fails: the postmaster hears of it, once.
        let bounce = Envelope {
            id: "Q2".into(),
            ..*envelope
        };
        let Plan::Send { envelope, .. } = run(&bounce, &failed(&bounce), &R) else {
            panic!()
        };
        assert_eq!(envelope.recipients[0].address, "postmaster@contoso.com");
        assert_eq!(envelope.notification, Some(Notification::DoubleBounce));
        // The double bounce fails: the end of the line.
        let double = Envelope {
            id: "Q3".into(),
            ..*envelope
        };
        assert!(matches!(
            run(&double, &failed(&double), &R),
            Plan::Drop { ref covers, .. } if covers == &[0]
        ));
        // A bounce from elsewhere (null sender, not made here) that fails:
        // a double bounce; without a postmaster, dropped.
        let remote = env("", None);
        let Plan::Send { envelope, .. } = run(&remote, &failed(&remote), &R) else {
            panic!()
        };
        assert_eq!(envelope.notification, Some(Notification::DoubleBounce));
        let nobody = Reporting {
            postmaster: "",
            ..R
        };
        assert!(matches!(
            run(&remote, &failed(&remote), &nobody),
            Plan::Drop { .. }
        ));
        // Older spool files: the "dsn" connector marks a bounce.
        let old = Envelope {
            connector: "dsn".into(),
            ..env("", None)
        };
        assert_eq!(old.notification(), Some(Notification::Bounce));
    }

    #[test]
    fn delay_notices_never_chain() {
        let ordinary = env("alice@fabrikam.com", None);
        let st = MessageState::new(&ordinary);
        let later = Reporting {
            now: 1000 + 3600,
            ..R
        };
        let Plan::Send {
            envelope,
            delay,
            covers,
            ..
        } = run(&ordinary, &st, &later)
        else {
            panic!()
        };
        assert!(delay && covers.is_empty());
        assert_eq!(envelope.notification, Some(Notification::Delay));
        // A delay notice that is itself delayed: no notice about it.
        let notice = Envelope {
            id: "Q4".into(),
            received_at: 1000,
            ..*envelope
        };
        assert_eq!(
            run(&notice, &MessageState::new(&notice), &later),
            Plan::Nothing
        );
        assert_eq!(run(&ordinary, &st, &R), Plan::Nothing, "not due yet");
    }
}
