//! The receiving side's metrics: sessions by connector and outcome, TLS
//! sessions by version, refusals by reason, messages accepted by connector.
//! Labels are bounded: connector names come from the configuration, reasons
//! from a fixed table ([`refusal_reason`]); no addresses.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::smtp::reply::Reply;

/// How a session ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SessionOutcome {
    /// The client said QUIT.
    quit,
    /// The client went away without QUIT.
    disconnected,
    /// A deadline passed (421 4.4.2).
    timeout,
    /// The server closed it: too many errors, a refused BDAT, 421.
    closed,
    /// Refused before the session began (no connector, limits).
    refused,
    /// The TLS handshake failed.
    tls_failed,
    /// An I/O error (a client that does not read).
    error,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    connector: String,
    outcome: SessionOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabel {
    connector: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    connector: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The receiving side's metrics (cheap to clone: shared counters).
#[derive(Debug, Clone, Default)]
pub struct SmtpMetrics {
    sessions: Family<SessionLabels, Counter>,
    tls: Family<VersionLabel, Counter>,
    refusals: Family<ReasonLabel, Counter>,
    accepted: Family<ConnectorLabel, Counter>,
    accepted_octets: Family<ConnectorLabel, Counter>,
    tenant: Family<TenantLabels, Counter>,
    auth: Family<OutcomeLabel, Counter>,
    open: Gauge,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

impl SmtpMetrics {
    /// Registers them in `registry`.
    pub fn register(registry: &mut Registry) -> SmtpMetrics {
        let m = SmtpMetrics::default();
        let r = registry.sub_registry_with_prefix("smtp");
        r.register(
            "sessions",
            "SMTP sessions ended, by inbound connector and outcome",
            m.sessions.clone(),
        );
        r.register(
            "tls_sessions",
            "TLS handshakes completed, by protocol version",
            m.tls.clone(),
        );
        r.register(
            "refusals",
            "Negative SMTP replies sent, by reason",
            m.refusals.clone(),
        );
        r.register(
            "connections_open",
            "SMTP connections open now",
            m.open.clone(),
        );
        registry.register(
            "messages_accepted",
            "Messages acknowledged with 250 (on disk), by inbound connector",
            m.accepted.clone(),
        );
        registry.register(
            "smtp_auth_attempts",
            "SMTP AUTH attempts on the submission listeners, by outcome (success, failure, \
             locked, error)",
            m.auth.clone(),
        );
        registry.register(
            "tenant_checks",
            "Tenant checks at the end of DATA, by inbound connector and outcome (allowed, \
             foreign_tenant, no_signature, bad_signature, temp_error)",
            m.tenant.clone(),
        );
        registry.register(
            "messages_accepted_bytes",
            "Octets of the messages acknowledged, by inbound connector",
            m.accepted_octets.clone(),
        );
        m
    }

    /// A session ended.
    pub fn session(&self, connector: &str, outcome: SessionOutcome) {
        self.sessions
            .get_or_create(&SessionLabels {
                connector: crate::ops::metrics::label(connector),
                outcome,
            })
            .inc();
    }

    /// An AUTH attempt ended.
    pub fn auth(&self, outcome: super::auth::Attempt) {
        self.auth
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// A tenant check ended with `outcome`.
    pub fn tenant(&self, connector: &str, outcome: crate::inbound::tenant::Outcome) {
        self.tenant
            .get_or_create(&TenantLabels {
                connector: crate::ops::metrics::label(connector),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// A TLS handshake completed (`version`: "TLSv1.3").
    pub fn tls(&self, version: &str) {
        self.tls
            .get_or_create(&VersionLabel {
                version: crate::ops::metrics::label(version),
            })
            .inc();
    }

    /// A reply went out: counted when it refuses something.
    pub fn reply(&self, r: &Reply) {
        if r.code >= 400 {
            self.refused(refusal_reason(r));
        }
    }

    /// A refusal not sent as a session reply (the connection limit).
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A message is on disk and acknowledged.
    pub fn accepted(&self, connector: &str, size: u64) {
        let l = ConnectorLabel {
            connector: crate::ops::metrics::label(connector),
        };
        self.accepted.get_or_create(&l).inc();
        self.accepted_octets.get_or_create(&l).inc_by(size);
    }

    /// A connection opened (+1) or closed (-1).
    pub fn open(&self, delta: i64) {
        self.open.inc_by(delta);
    }
}

/// The reason label of a negative reply, from its code, enhanced status and
/// (where one status covers several policies) its text.
pub fn refusal_reason(r: &Reply) -> &'static str {
    let text = r.lines.last().map(String::as_str).unwrap_or("");
    match (r.code, r.status) {
        (421, Some((4, 7, 0))) => "connection_limit",
        (421, Some((4, 4, 2))) => "timeout",
        (421, _) => "closing",
        (451, _) => "local_error",
        (452, Some((4, 3, 1))) => "storage",
        (452, Some((4, 5, 3))) => "too_many_recipients",
        (530, _) => "tls_required",
        (_, Some((5, 7, 1))) if text.contains("Relaying denied") => "relay_denied",
        (_, Some((5, 7, 1))) if text.contains("Sender domain") => "sender_domain",
        (_, Some((5, 7, 1))) if text.contains("ertificate") => "client_certificate",
        (554, Some((5, 7, 1))) => "no_connector",
        (_, Some((5, 7, _))) => "policy",
        (_, Some((5, 1, _))) => "bad_address",
        (552, _) | (_, Some((5, 3, 4))) => "message_too_large",
        (_, Some((5, 4, 14))) => "mail_loop",
        (554, Some((5, 5, 2))) => "bare_line_ending",
        (_, Some((5, 6, _))) => "content",
        (555, _) | (_, Some((5, 5, 4))) => "syntax",
        (500, Some((5, 5, 2))) | (501, _) => "syntax",
        (500 | 502, _) => "unknown_command",
        (503, _) => "bad_sequence",
        (554, Some((5, 5, 1))) => "no_valid_recipients",
        (c, _) if c < 500 => "other_temporary",
        _ => "other_permanent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let r = |code, status, text: &str| refusal_reason(&Reply::new(code, status, text));
        assert_eq!(r(550, (5, 7, 1), "Relaying denied"), "relay_denied");
        assert_eq!(
            r(530, (5, 7, 0), "Must issue a STARTTLS command first"),
            "tls_required"
        );
        assert_eq!(
            r(
                550,
                (5, 7, 1),
                "Client certificate does not match this connector"
            ),
            "client_certificate"
        );
        assert_eq!(
            r(554, (5, 7, 1), "No inbound connector for this address"),
            "no_connector"
        );
        assert_eq!(
            r(452, (4, 5, 3), "Too many recipients"),
            "too_many_recipients"
        );
        assert_eq!(r(554, (5, 5, 2), "bare CR"), "bare_line_ending");
        assert_eq!(r(555, (5, 5, 4), "x"), "syntax");
        assert_eq!(r(500, (5, 5, 1), "Command unrecognized"), "unknown_command");
        assert_eq!(r(421, (4, 4, 2), "timeout"), "timeout");
        assert_eq!(r(452, (4, 3, 1), "Insufficient system storage"), "storage");
        assert_eq!(r(450, (4, 2, 0), "x"), "other_temporary");
    }
}
