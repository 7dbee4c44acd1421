//! Time limits of a client session, one per wait (RFC 5321 §4.5.3.2): used
//! by the settings that carry them and by the connection that applies them.

use std::time::Duration;

/// Time limits. The defaults are RFC 5321 §4.5.3.2's client timeouts; the
/// connect limit is not in the RFC (one minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// The greeting ("initial 220 message", 5 minutes).
    pub greeting: Duration,
    /// EHLO/HELO, STARTTLS and the TLS handshake, RSET, QUIT (5 minutes).
    pub command: Duration,
    /// The reply to MAIL (5 minutes).
    pub mail: Duration,
    /// The reply to each RCPT (5 minutes).
    pub rcpt: Duration,
    /// The reply to DATA ("DATA initiation", 2 minutes).
    pub data_init: Duration,
    /// Each write of content ("data block", 3 minutes).
    pub data_block: Duration,
    /// The reply to the final dot ("DATA termination", 10 minutes).
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        const MIN: u64 = 60;
        Timeouts {
            connect: Duration::from_secs(MIN),
            greeting: Duration::from_secs(5 * MIN),
            command: Duration::from_secs(5 * MIN),
            mail: Duration::from_secs(5 * MIN),
            rcpt: Duration::from_secs(5 * MIN),
            data_init: Duration::from_secs(2 * MIN),
            data_block: Duration::from_secs(3 * MIN),
            data_end: Duration::from_secs(10 * MIN),
        }
    }
}

impl Timeouts {
    /// The same limit for everything (tests).
    pub fn all(limit: Duration) -> Self {
        Timeouts {
            connect: limit,
            greeting: limit,
            command: limit,
            mail: limit,
            rcpt: limit,
            data_init: limit,
            data_block: limit,
            data_end: limit,
        }
    }
}

impl From<&crate::config::outbound::ClientTimeouts> for Timeouts {
    /// The configured limits (`[queue.timeouts]`, in seconds).
    fn from(t: &crate::config::outbound::ClientTimeouts) -> Self {
        Timeouts {
            connect: Duration::from_secs(t.connect),
            greeting: Duration::from_secs(t.greeting),
            command: Duration::from_secs(t.command),
            mail: Duration::from_secs(t.mail),
            rcpt: Duration::from_secs(t.rcpt),
            data_init: Duration::from_secs(t.data_init),
            data_block: Duration::from_secs(t.data_block),
            data_end: Duration::from_secs(t.data_end),
        }
    }
}
