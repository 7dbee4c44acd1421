//! `[queue]`: retries, limits and time limits of the sending side.

use serde::Deserialize;

use super::error::{At, ConfigError};

/// `[queue]`: retries and limits of the sending side.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// Seconds between attempts, in order; the last repeats. Close to RFC 5321
    /// §4.5.4.1: first retries within minutes, then at least 30 minutes apart.
    pub retry_schedule: Vec<u64>,
    /// Seconds after which an undelivered message bounces (default 2 days).
    pub max_age: u64,
    /// Seconds after which the sender gets a delay notice (0: never).
    pub delay_notice_after: u64,
    /// Deliveries at once, in total.
    pub max_concurrency: u32,
    /// Deliveries at once to one next hop.
    pub max_per_destination: u32,
    /// Where bounces of bounces go; empty: dropped with a log line.
    pub postmaster: String,
    /// Addresses tried per delivery attempt, across all next hops (Postfix's
    /// smtp_mx_address_limit).
    pub max_addresses: u32,
    /// SMTP sessions per delivery attempt (Postfix's smtp_mx_session_limit).
    pub max_sessions: u32,
    /// Seconds a session stays open after a delivery, for the next message
    /// to the same next hop (Postfix's smtp_connection_cache_time_limit);
    /// 0: every delivery has a connection of its own.
    pub session_cache_time: u64,
    /// The SMTP client's time limits.
    pub timeouts: ClientTimeouts,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            retry_schedule: vec![60, 300, 900, 1800],
            max_age: 2 * 24 * 3600,
            delay_notice_after: 4 * 3600,
            max_concurrency: 100,
            max_per_destination: 20,
            postmaster: String::new(),
            max_addresses: 5,
            max_sessions: 2,
            session_cache_time: 2,
            timeouts: ClientTimeouts::default(),
        }
    }
}

/// `[queue.timeouts]`, in seconds: RFC 5321 §4.5.3.2's client timeouts
/// (connect is not in the RFC: Postfix's 30 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTimeouts {
    /// TCP connect.
    pub connect: u64,
    /// The greeting.
    pub greeting: u64,
    /// EHLO, STARTTLS and the handshake, RSET, QUIT.
    pub command: u64,
    /// The reply to MAIL.
    pub mail: u64,
    /// The reply to each RCPT.
    pub rcpt: u64,
    /// The reply to DATA.
    pub data_init: u64,
    /// Each write of content.
    pub data_block: u64,
    /// The reply to the final dot.
    pub data_end: u64,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            connect: 30,
            greeting: 300,
            command: 300,
            mail: 300,
            rcpt: 300,
            data_init: 120,
            data_block: 180,
            data_end: 600,
        }
    }
}

impl ClientTimeouts {
    pub(super) fn all(&self) -> [(&'static str, u64); 8] {
        [
            ("connect", self.connect),
            ("greeting", self.greeting),
            ("command", self.command),
            ("mail", self.mail),
            ("rcpt", self.rcpt),
            ("data_init", self.data_init),
            ("data_block", self.data_block),
            ("data_end", self.data_end),
        ]
    }
}

/// Validates the section; `at(span, message)` builds located errors.
pub(super) fn validate(queue: &Queue, at: At<'_>, errors: &mut Vec<ConfigError>) {
    if queue.retry_schedule.is_empty() || queue.retry_schedule.contains(&0) {
        errors.push(at(
            0..0,
            "queue.retry_schedule needs at least one delay, each above 0 seconds".into(),
        ));
    }
    if queue.max_age == 0
        || queue.max_concurrency == 0
        || queue.max_per_destination == 0
        || queue.max_addresses == 0
        || queue.max_sessions == 0
    {
        errors.push(at(
            0..0,
            "queue.max_age, max_concurrency, max_per_destination, max_addresses and max_sessions must be above 0".into(),
        ));
    }
    if queue.session_cache_time > 300 {
        errors.push(at(
            0..0,
            format!(
                "queue.session_cache_time = {} must be within 0..=300 seconds (a server closes an idle session after 5 minutes, RFC 5321 4.5.3.2.7)",
                queue.session_cache_time
            ),
        ));
    }
    for (name, secs) in queue.timeouts.all() {
        if secs == 0 || secs > 86_400 {
            errors.push(at(
                0..0,
                format!("queue.timeouts.{name} = {secs} must be within 1..=86400 seconds"),
            ));
        }
    }
}
