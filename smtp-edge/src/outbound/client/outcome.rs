//! The result of a delivery per recipient.

use super::error::{DeliveryError, Stage};
use super::reply::{Extensions, Reply, Status};

/// What became of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// The server took responsibility (2xx to the final dot).
    Delivered,
    /// Not delivered; retry later.
    Transient,
    /// Not delivered; bounce.
    Permanent,
}

/// The result for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptResult {
    /// Position in [`Transaction::recipients`](super::Transaction::recipients).
    pub index: usize,
    /// Delivered, transient or permanent failure.
    pub disposition: Disposition,
    /// The server's reply that decided it (RCPT's for a refused recipient,
    /// the final dot's or DATA's for an accepted one); `None` when it was
    /// decided here (see [`Outcome::failure`]).
    pub reply: Option<Reply>,
    /// Enhanced status code (the reply's, else derived).
    pub status: Status,
    /// Human-readable explanation (the reply's text, or the local error).
    pub text: String,
}

impl RcptResult {
    pub(super) fn from_reply(index: usize, reply: &Reply) -> Self {
        let disposition = if reply.is_positive() {
            Disposition::Delivered
        } else if reply.is_permanent() {
            Disposition::Permanent
        } else {
            Disposition::Transient
        };
        RcptResult {
            index,
            disposition,
            reply: Some(reply.clone()),
            status: reply.status(),
            text: reply.text(),
        }
    }

    pub(super) fn from_error(index: usize, e: &DeliveryError) -> Self {
        if let Some(reply) = e.reply() {
            return RcptResult::from_reply(index, reply);
        }
        RcptResult {
            index,
            disposition: if e.is_permanent() {
                Disposition::Permanent
            } else {
                Disposition::Transient
            },
            reply: None,
            status: e.status(),
            text: e.to_string(),
        }
    }
}

/// TLS as negotiated with the next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSession {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// Cipher suite name.
    pub cipher: String,
    /// Subject of the server's certificate.
    pub peer_subject: Option<String>,
}

/// The result of a transaction whose recipients were answered.
#[derive(Debug)]
pub struct Outcome {
    /// One result per recipient, in the order of
    /// [`Transaction::recipients`](super::Transaction::recipients).
    pub per_recipient: Vec<RcptResult>,
    /// What went wrong after the recipients were answered (DATA refused, a
    /// timeout, a lost connection), if anything; the accepted recipients'
    /// results carry it.
    pub failure: Option<DeliveryError>,
    /// TLS, when the session used it.
    pub tls: Option<TlsSession>,
    /// The extensions the server announced (after STARTTLS, the second
    /// list).
    pub extensions: Extensions,
}

impl Outcome {
    /// Whether every recipient was delivered.
    pub fn all_delivered(&self) -> bool {
        self.per_recipient
            .iter()
            .all(|r| r.disposition == Disposition::Delivered)
    }
}

/// The results: refused recipients keep their RCPT reply; the accepted ones
/// (and any without a reply) get `last`'s.
pub(super) fn results(
    rcpt: &[Option<Reply>],
    last: Result<&Reply, &DeliveryError>,
) -> Vec<RcptResult> {
    rcpt.iter()
        .enumerate()
        .map(|(i, r)| match r {
            Some(r) if !r.is_positive() => RcptResult::from_reply(i, r),
            _ => match last {
                Ok(reply) => RcptResult::from_reply(i, reply),
                Err(e) => RcptResult::from_error(i, e),
            },
        })
        .collect()
}

/// The outcome once the recipients (and, with `last`, the data) were
/// answered.
pub(super) fn finish(
    rcpt_replies: &[Option<Reply>],
    last: Option<&Reply>,
    tls: Option<TlsSession>,
    ext: Extensions,
) -> Outcome {
    let per_recipient = match last {
        Some(r) => results(rcpt_replies, Ok(r)),
        None => rcpt_replies
            .iter()
            .enumerate()
            .map(|(i, r)| match r {
                Some(r) => RcptResult::from_reply(i, r),
                None => RcptResult::from_error(
                    i,
                    &DeliveryError::Protocol {
                        stage: Stage::Rcpt,
                        message: "no reply".into(),
                    },
                ),
            })
            .collect(),
    };
    Outcome {
        per_recipient,
        failure: None,
        tls,
        extensions: ext,
    }
}
