//! The delivery state of one queued message, kept on disk next to the spool
//! file (`queue/ID.json`) so nothing lives only in memory: which recipients
//! are delivered, failed or still to be tried, when to try next, held or not.
//!
//! Pure: the manager applies results and asks what to do; no I/O here except
//! [`load`] and [`save`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::queue::dsn::{Action, RecipientStatus};
use crate::queue::spool::Envelope;

/// Where one recipient stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Rcpt {
    /// Not tried yet, or tried and deferred (last error kept).
    Pending {
        /// The last temporary failure, if any.
        last_error: Option<String>,
        /// Enhanced status of that failure.
        status: Option<(u8, u16, u16)>,
        /// The host that gave it.
        remote: Option<String>,
    },
    /// Accepted by the next hop.
    Delivered {
        /// When.
        at: u64,
        /// The next hop.
        remote: String,
        /// Its reply.
        reply: String,
    },
    /// Refused for good (or expired); a DSN is due unless already sent.
    Failed {
        /// When.
        at: u64,
        /// Enhanced status.
        status: (u8, u16, u16),
        /// The host that refused, if any.
        remote: Option<String>,
        /// Its reply or our reason.
        reason: String,
        /// The sender was told.
        reported: bool,
    },
}

/// The delivery state of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageState {
    /// Queue id.
    pub id: String,
    /// When it was accepted.
    pub arrived_at: u64,
    /// Attempts made.
    pub attempts: u32,
    /// Not before this time (seconds since the epoch).
    pub next_attempt: u64,
    /// Held by the admin: not tried until released.
    pub held: bool,
    /// A delay notice was sent.
    pub delay_notified: bool,
    /// Per recipient, in envelope order.
    pub recipients: Vec<Rcpt>,
}

/// The result of an attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered {
        /// Next hop.
        remote: String,
        /// Reply text.
        reply: String,
    },
    /// 4xx or a connection problem: try again later.
    Deferred {
        /// Next hop, when one answered.
        remote: Option<String>,
        /// Enhanced status.
        status: (u8, u16, u16),
        /// Reply or reason.
        reason: String,
    },
    /// 5xx or unroutable: give up.
    Failed {
        /// Next hop, when one answered.
        remote: Option<String>,
        /// Enhanced status.
        status: (u8, u16, u16),
        /// Reply or reason.
        reason: String,
    },
}

/// What the manager should do next with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Every recipient is final: send any DSN, then remove the message.
    Done,
    /// Try again at this time.
    RetryAt(u64),
}

impl MessageState {
    /// A fresh state for a spooled message.
    pub fn new(env: &Envelope) -> Self {
        MessageState {
            id: env.id.clone(),
            arrived_at: env.received_at,
            attempts: 0,
            next_attempt: 0,
            held: false,
            delay_notified: false,
            recipients: vec![
                Rcpt::Pending {
                    last_error: None,
                    status: None,
                    remote: None
                };
                env.recipients.len()
            ],
        }
    }

    /// Indices of recipients still to be tried.
    pub fn pending(&self) -> Vec<usize> {
        self.recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Rcpt::Pending { .. }))
            .map(|(i, _)| i)
            .collect()
    }

    /// Records the outcome for recipient `i` (ignored if it is already final).
    pub fn record(&mut self, i: usize, outcome: Outcome, now: u64) {
        let Some(slot) = self.recipients.get_mut(i) else {
            return;
        };
        if !matches!(slot, Rcpt::Pending { .. }) {
            return;
        }
        *slot = match outcome {
            Outcome::Delivered { remote, reply } => Rcpt::Delivered {
                at: now,
                remote,
                reply,
            },
            Outcome::Deferred {
                remote,
                status,
                reason,
            } => Rcpt::Pending {
                last_error: Some(reason),
                status: Some(status),
                remote,
            },
            Outcome::Failed {
                remote,
                status,
                reason,
            } => Rcpt::Failed {
                at: now,
                status,
                remote,
                reason,
                reported: false,
            },
        };
    }

    /// After an attempt: counts it and schedules the next one from
    /// `schedule` (seconds; the last entry repeats). Recipients still pending
    /// past `max_age` fail with 4.4.7 (delivery time expired).
    pub fn after_attempt(&mut self, now: u64, schedule: &[u64], max_age: u64) -> Next {
        self.attempts = self.attempts.saturating_add(1);
        if now.saturating_sub(self.arrived_at) >= max_age {
            for r in &mut self.recipients {
                if let Rcpt::Pending {
                    last_error, remote, ..
                } = r
                {
                    *r = Rcpt::Failed {
                        at: now,
                        status: (4, 4, 7),
                        remote: remote.clone(),
                        reason: format!(
                            "delivery time expired; last error: {}",
                            last_error.as_deref().unwrap_or("none")
                        ),
                        reported: false,
                    };
                }
            }
        }
        if self.pending().is_empty() {
            return Next::Done;
        }
        let idx = (self.attempts as usize).saturating_sub(1);
        let delay = schedule
            .get(idx)
            .or(schedule.last())
            .copied()
            .unwrap_or(1800);
        self.next_attempt = now + delay;
        Next::RetryAt(self.next_attempt)
    }

    /// Whether a delay notice is due now.
    pub fn delay_notice_due(&self, now: u64, after: u64) -> bool {
        after > 0
            && !self.delay_notified
            && !self.pending().is_empty()
            && now.saturating_sub(self.arrived_at) >= after
    }

    /// Failures not yet reported, as DSN statuses. They stay unreported
    /// until [`mark_reported`](Self::mark_reported), which the caller does
    /// only once the DSN is durably queued (or none is due).
    pub fn unreported_failures(&self) -> Vec<RecipientStatus> {
        let mut out = Vec::new();
        for (i, r) in self.recipients.iter().enumerate() {
            if let Rcpt::Failed {
                at,
                status,
                remote,
                reason,
                reported,
            } = r
                && !*reported
            {
                out.push(RecipientStatus {
                    recipient: i,
                    action: Action::Failed,
                    status: *status,
                    remote_mta: remote.clone(),
                    diagnostic: Some(reason.clone()),
                    last_attempt: Some(*at),
                    will_retry_until: None,
                });
            }
        }
        out
    }

    /// Marks these recipients' failures as reported.
    pub fn mark_reported(&mut self, recipients: &[usize]) {
        for &i in recipients {
            if let Some(Rcpt::Failed { reported, .. }) = self.recipients.get_mut(i) {
                *reported = true;
            }
        }
    }

    /// Whether a failure still waits for its DSN.
    pub fn has_unreported(&self) -> bool {
        self.recipients.iter().any(|r| {
            matches!(
                r,
                Rcpt::Failed {
                    reported: false,
                    ..
                }
            )
        })
    }

    /// Whether this state belongs to `env` (same id, one entry per
    /// recipient): anything else is a corrupt state.
    pub fn fits(&self, env: &Envelope) -> bool {
        self.id == env.id && self.recipients.len() == env.recipients.len()
    }

    /// Pending recipients as delay statuses (for a delay notice).
    pub fn delays(&self, retry_until: u64) -> Vec<RecipientStatus> {
        self.recipients
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                Rcpt::Pending {
                    last_error,
                    status,
                    remote,
                } => Some(RecipientStatus {
                    recipient: i,
                    action: Action::Delayed,
                    status: status.unwrap_or((4, 0, 0)),
                    remote_mta: remote.clone(),
                    diagnostic: last_error.clone(),
                    last_attempt: None,
                    will_retry_until: Some(retry_until),
                }),
                _ => None,
            })
            .collect()
    }

    /// Makes every pending recipient fail now (`queue bounce`).
    pub fn bounce_all(&mut self, now: u64, reason: &str) {
        for i in self.pending() {
            self.record(
                i,
                Outcome::Failed {
                    remote: None,
                    status: (5, 0, 0),
                    reason: reason.to_string(),
                },
                now,
            );
        }
    }
}

/// Why a state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// It cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// It is not a state we wrote (truncated, garbage).
    #[error("{path}: corrupt queue state: {source}")]
    Corrupt {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
}

/// Reads a state file: `Ok(None)` when there is none (a message not tried
/// yet), an error when it exists and cannot be used.
pub fn load(path: &Path) -> Result<Option<MessageState>, LoadError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LoadError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| LoadError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes a state file atomically and durably (private mode).
pub fn save(path: &Path, state: &MessageState) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::spool::Recipient;

    fn env(n: usize) -> Envelope {
        Envelope {
            id: "Q1".into(),
            received_at: 1000,
            mail_from: "a@fabrikam.com".into(),
            recipients: (0..n)
                .map(|i| Recipient {
                    address: format!("r{i}@contoso.com"),
                    ..Recipient::default()
                })
                .collect(),
            ..Envelope::default()
        }
    }

    const SCHEDULE: [u64; 4] = [60, 300, 900, 1800];

    #[test]
    fn per_recipient_results_and_retry_schedule() {
        let mut s = MessageState::new(&env(3));
        assert_eq!(s.pending(), vec![0, 1, 2]);
        s.record(
            0,
            Outcome::Delivered {
                remote: "mx".into(),
                reply: "250 ok".into(),
            },
            1000,
        );
        s.record(
            1,
            Outcome::Deferred {
                remote: Some("mx".into()),
                status: (4, 2, 2),
                reason: "452 full".into(),
            },
            1000,
        );
        s.record(
            2,
            Outcome::Failed {
                remote: Some("mx".into()),
                status: (5, 1, 1),
                reason: "550 unknown".into(),
            },
            1000,
        );
        assert_eq!(
            s.after_attempt(1000, &SCHEDULE, 172_800),
            Next::RetryAt(1060)
        );
        assert_eq!(s.pending(), vec![1]);
        // Final states do not change.
        s.record(
            0,
            Outcome::Failed {
                remote: None,
                status: (5, 0, 0),
                reason: "x".into(),
            },
            1001,
        );
        assert!(matches!(s.recipients[0], Rcpt::Delivered { .. }));
        let f = s.unreported_failures();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].recipient, 2);
        assert!(s.has_unreported());
        assert_eq!(s.unreported_failures(), f, "unreported until marked");
        s.mark_reported(&[2]);
        assert!(s.unreported_failures().is_empty(), "reported once");
        assert!(!s.has_unreported());
        for (attempt, want) in [(2, 1300), (3, 1900), (4, 2800), (5, 2800)] {
            assert_eq!(
                s.after_attempt(1000, &SCHEDULE, 172_800),
                Next::RetryAt(want),
                "attempt {attempt}"
            );
        }
        s.record(
            1,
            Outcome::Delivered {
                remote: "mx".into(),
                reply: "250".into(),
            },
            2000,
        );
        assert_eq!(s.after_attempt(2000, &SCHEDULE, 172_800), Next::Done);
    }

    #[test]
    fn expiry_fails_what_is_left_with_the_last_error() {
        let mut s = MessageState::new(&env(2));
        s.record(
            0,
            Outcome::Deferred {
                remote: None,
                status: (4, 4, 1),
                reason: "connection refused".into(),
            },
            1000,
        );
        assert!(s.delay_notice_due(1000 + 14_400, 14_400));
        assert_eq!(s.delays(9999).len(), 2);
        assert_eq!(
            s.after_attempt(1000 + 172_800, &SCHEDULE, 172_800),
            Next::Done
        );
        let f = s.unreported_failures();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].status, (4, 4, 7));
        assert!(
            f[0].diagnostic
                .as_deref()
                .unwrap_or("")
                .contains("connection refused")
        );
    }

    #[test]
    fn bounce_all_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = MessageState::new(&env(2));
        s.bounce_all(5, "deleted by the administrator");
        assert!(s.pending().is_empty());
        let p = dir.path().join("Q1.json");
        assert!(load(&p).unwrap().is_none());
        save(&p, &s).unwrap();
        assert_eq!(load(&p).unwrap(), Some(s.clone()));
        assert!(s.fits(&env(2)) && !s.fits(&env(3)));
        std::fs::write(&p, b"{\"id\": \"Q1\", \"arr").unwrap();
        assert!(matches!(load(&p), Err(LoadError::Corrupt { .. })));
    }
}
