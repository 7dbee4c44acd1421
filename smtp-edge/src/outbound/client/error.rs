//! What can go wrong in a delivery, where, and what it means for retrying.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use super::reply::{Reply, Status};
use crate::outbound::routing::TlsLevel;

/// Where in the session something happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// TCP connect.
    Connect,
    /// Waiting for the greeting.
    Greeting,
    /// EHLO.
    Ehlo,
    /// HELO (after EHLO was refused).
    Helo,
    /// STARTTLS and its reply.
    StartTls,
    /// The TLS handshake.
    TlsHandshake,
    /// Checks before MAIL (size, 8-bit, UTF-8, envelope syntax).
    Envelope,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA and its 354.
    Data,
    /// Sending the content.
    Content,
    /// Waiting for the reply to the final dot.
    DataEnd,
    /// RSET (before a transaction on a session kept open).
    Rset,
    /// QUIT.
    Quit,
}

impl Stage {
    /// Lower-case name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::Helo => "HELO",
            Stage::StartTls => "STARTTLS",
            Stage::TlsHandshake => "TLS handshake",
            Stage::Envelope => "envelope",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::Content => "message content",
            Stage::DataEnd => "end of data",
            Stage::Rset => "RSET",
            Stage::Quit => "QUIT",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a delivery (or, in [`Outcome::failure`](super::Outcome::failure), the rest of it) failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No TCP connection: try the next host. Transient (4.4.1).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// The system's error.
        source: io::Error,
    },
    /// No reply (or no progress writing) in time. Transient (4.4.2).
    #[error("timeout at {stage}")]
    Timeout {
        /// What was being waited for.
        stage: Stage,
    },
    /// The connection broke (reset, closed by the server). Transient
    /// (4.4.2).
    #[error("connection lost at {stage}: {source}")]
    Connection {
        /// What was going on.
        stage: Stage,
        /// The system's error.
        source: io::Error,
    },
    /// The server refused the greeting, EHLO/HELO, MAIL or DATA: 4xx
    /// transient, 5xx permanent, for every recipient concerned.
    #[error("{stage} refused: {reply}")]
    Refused {
        /// Which step.
        stage: Stage,
        /// The server's reply.
        reply: Reply,
    },
    /// TLS required, STARTTLS not announced. Transient (4.7.10).
    #[error("TLS is required ({level}) but the server does not offer STARTTLS")]
    TlsNotOffered {
        /// The connector's level.
        level: TlsLevel,
    },
    /// TLS required, STARTTLS refused. Transient (4.7.10).
    #[error("TLS is required ({level}) but STARTTLS was refused: {reply}")]
    StartTlsRefused {
        /// The connector's level.
        level: TlsLevel,
        /// The server's reply.
        reply: Reply,
    },
    /// The handshake failed (for a reason other than the certificate).
    /// Transient (4.7.5).
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(String),
    /// The server's certificate does not satisfy the level. Transient
    /// (4.7.5).
    #[error("server certificate not accepted ({level}): {reason}")]
    Certificate {
        /// The connector's level.
        level: TlsLevel,
        /// Why.
        reason: String,
    },
    /// The server broke the protocol (malformed or oversized reply, an
    /// unexpected code, bytes injected after the 220 to STARTTLS).
    /// Transient (4.5.0).
    #[error("protocol error at {stage}: {message}")]
    Protocol {
        /// Where.
        stage: Stage,
        /// What.
        message: String,
    },
    /// Larger than the server's SIZE limit. Permanent (5.3.4).
    #[error("message size {size} exceeds the server's limit of {limit} octets")]
    TooBig {
        /// The message size (CRLF line ends).
        size: u64,
        /// The server's SIZE.
        limit: u64,
    },
    /// 8-bit content and no 8BITMIME. Permanent (5.6.3).
    #[error("the message has 8-bit content and the server does not support 8BITMIME")]
    EightBitUnsupported,
    /// Non-ASCII addresses or headers and no SMTPUTF8. Permanent (5.6.7).
    #[error("the message needs SMTPUTF8 and the server does not support it")]
    Utf8Unsupported,
    /// An envelope value that cannot be sent (control characters, spaces in
    /// a parameter). Permanent (5.5.4); the receiving side never stores one.
    #[error("invalid envelope: {0}")]
    BadEnvelope(String),
    /// Settings that do not work (a TLS name that is not a name, a client
    /// certificate rustls refuses). Transient (4.3.5): fix and retry.
    #[error("client settings: {0}")]
    Settings(String),
    /// Something went wrong here (the spool file could not be read).
    /// Transient (4.3.0).
    #[error("local error: {0}")]
    Local(String),
}

impl DeliveryError {
    /// Whether the failure is permanent (bounce) rather than transient
    /// (retry later).
    pub fn is_permanent(&self) -> bool {
        self.status().0 == 5
    }

    /// The enhanced status code for DSNs and logs.
    pub fn status(&self) -> Status {
        match self {
            DeliveryError::Connect { .. } => (4, 4, 1),
            DeliveryError::Timeout { .. } | DeliveryError::Connection { .. } => (4, 4, 2),
            DeliveryError::Refused { reply, .. } => {
                if reply.is_permanent() {
                    reply.status()
                } else {
                    match reply.enhanced {
                        Some(s) if s.0 == 4 => s,
                        _ => (4, 0, 0),
                    }
                }
            }
            DeliveryError::TlsNotOffered { .. } | DeliveryError::StartTlsRefused { .. } => {
                (4, 7, 10)
            }
            DeliveryError::TlsHandshake(_) | DeliveryError::Certificate { .. } => (4, 7, 5),
            DeliveryError::Protocol { .. } => (4, 5, 0),
            DeliveryError::TooBig { .. } => (5, 3, 4),
            DeliveryError::EightBitUnsupported => (5, 6, 3),
            DeliveryError::Utf8Unsupported => (5, 6, 7),
            DeliveryError::BadEnvelope(_) => (5, 5, 4),
            DeliveryError::Settings(_) => (4, 3, 5),
            DeliveryError::Local(_) => (4, 3, 0),
        }
    }

    /// The server's reply, when a reply caused the failure.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            DeliveryError::Refused { reply, .. } | DeliveryError::StartTlsRefused { reply, .. } => {
                Some(reply)
            }
            _ => None,
        }
    }

    /// Whether another host for the same destination (the next MX or smart
    /// host) may do better right away: no connection, a refused greeting or
    /// EHLO/HELO (4xx or 5xx: that host's problem), TLS that could not be
    /// had, a 421 (the server is closing), a timeout or lost connection
    /// before MAIL. Not for failures about the message or its sender.
    pub fn next_host_may_help(&self) -> bool {
        match self {
            DeliveryError::Connect { .. }
            | DeliveryError::TlsNotOffered { .. }
            | DeliveryError::StartTlsRefused { .. }
            | DeliveryError::TlsHandshake(_)
            | DeliveryError::Certificate { .. } => true,
            DeliveryError::Refused { stage, reply } => {
                reply.code == 421 || matches!(stage, Stage::Greeting | Stage::Ehlo | Stage::Helo)
            }
            DeliveryError::Timeout { stage }
            | DeliveryError::Connection { stage, .. }
            | DeliveryError::Protocol { stage, .. } => matches!(
                stage,
                Stage::Connect
                    | Stage::Greeting
                    | Stage::Ehlo
                    | Stage::Helo
                    | Stage::StartTls
                    | Stage::TlsHandshake
            ),
            _ => false,
        }
    }
}

impl DeliveryError {
    /// For a failure after the recipients were answered
    /// ([`super::Outcome::failure`]): whether the recipients accepted (and
    /// not yet delivered) may go to the next host at once — a lost
    /// connection, a timeout or a protocol error before the end of the data,
    /// or DATA refused with 421. Not after the final dot (the server may
    /// have the message), nor for a refusal of the data itself.
    pub fn moves_to_next_host(&self) -> bool {
        match self {
            DeliveryError::Timeout { stage }
            | DeliveryError::Connection { stage, .. }
            | DeliveryError::Protocol { stage, .. } => {
                matches!(stage, Stage::Rcpt | Stage::Data | Stage::Content)
            }
            DeliveryError::Refused { reply, .. } => reply.code == 421,
            _ => false,
        }
    }
}

/// Whether MAIL was accepted; a 1xx/3xx reply is a protocol error.
pub(super) fn check_mail(reply: Reply) -> Result<(), DeliveryError> {
    if reply.is_positive() {
        Ok(())
    } else if reply.is_transient() || reply.is_permanent() {
        Err(DeliveryError::Refused {
            stage: Stage::Mail,
            reply,
        })
    } else {
        Err(DeliveryError::Protocol {
            stage: Stage::Mail,
            message: format!("unexpected reply {reply}"),
        })
    }
}

/// A RCPT reply must be 2xx, 4xx or 5xx. A 552 ("too many recipients")
/// is taken as the 452 it should have been (RFC 5321 §4.5.3.1.10).
pub(super) fn check_rcpt(reply: Reply) -> Result<Reply, DeliveryError> {
    if reply.code == 552 {
        // The enhanced code keeps its detail in the transient class.
        let enhanced = reply.enhanced.map_or((4, 5, 3), |(_, s, d)| (4, s, d));
        let mut lines = reply.lines;
        if reply.enhanced.is_some()
            && let Some(first) = lines.first_mut()
        {
            let rest = first.split_once(' ').map_or("", |(_, r)| r);
            *first = format!("{}.{}.{} {rest}", enhanced.0, enhanced.1, enhanced.2);
        }
        return Ok(Reply {
            code: 452,
            enhanced: Some(enhanced),
            lines,
        });
    }
    if reply.is_positive() || reply.is_transient() || reply.is_permanent() {
        Ok(reply)
    } else {
        Err(DeliveryError::Protocol {
            stage: Stage::Rcpt,
            message: format!("unexpected reply {reply}"),
        })
    }
}

/// DATA's reply must be 354 to go on.
pub(super) fn check_data(reply: Reply) -> Result<(), DeliveryError> {
    match reply.code {
        354 => Ok(()),
        400..600 => Err(DeliveryError::Refused {
            stage: Stage::Data,
            reply,
        }),
        _ => Err(DeliveryError::Protocol {
            stage: Stage::Data,
            message: format!("unexpected reply {reply}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_classes() {
        let r = |t: &[u8]| {
            super::super::reply::parse_reply(t)
                .expect("reply")
                .expect("whole")
                .0
        };
        let refused = |reply| DeliveryError::Refused {
            stage: Stage::Mail,
            reply,
        };
        assert!(!refused(r(b"451 4.3.0 later\r\n")).is_permanent());
        assert!(refused(r(b"550 5.7.1 no\r\n")).is_permanent());
        assert_eq!(refused(r(b"550 no\r\n")).status(), (5, 0, 0));
        assert_eq!(refused(r(b"421 gone\r\n")).status(), (4, 0, 0));
        let tls = DeliveryError::TlsNotOffered {
            level: TlsLevel::EncryptionOnly,
        };
        assert!(!tls.is_permanent() && tls.next_host_may_help());
        assert!(
            !DeliveryError::TooBig { size: 2, limit: 1 }.next_host_may_help()
                && DeliveryError::TooBig { size: 2, limit: 1 }.is_permanent()
        );
    }
}
