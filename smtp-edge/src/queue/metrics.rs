//! The queue's metrics: recipients' delivery outcomes by outbound connector,
//! the time of one route's delivery attempt, and (at scrape time) the
//! messages queued by state, read from a [`QueueCounts`] source (the
//! manager's slot, or the spool's count while no manager runs:
//! `state="waiting_for_connector"`) so these metrics need nothing of the
//! manager.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::index::Counts;
use super::state::Outcome;

/// A recipient's result from one attempt.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DeliveryOutcome {
    /// The next hop took it.
    delivered,
    /// It will be tried again.
    deferred,
    /// It failed for good (a bounce follows).
    failed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    connector: String,
    outcome: DeliveryOutcome,
}

/// How a delivery got its SMTP session.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum SessionKind {
    /// A new connection.
    new,
    /// One kept from an earlier delivery ([`super::sessions`]).
    reused,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    connector: String,
    session: SessionKind,
}

/// The queue's metrics (cheap to clone: shared).
#[derive(Debug, Clone)]
pub struct QueueMetrics {
    deliveries: Family<DeliveryLabels, Counter>,
    seconds: Histogram,
    sessions: Family<SessionLabels, Counter>,
}

impl Default for QueueMetrics {
    fn default() -> Self {
        QueueMetrics {
            deliveries: Family::default(),
            // 5 ms … ~20 min.
            seconds: Histogram::new(exponential_buckets(0.005, 2.0, 18)),
            sessions: Family::default(),
        }
    }
}

/// Where the collector reads the queue's size at each scrape (the
/// manager's counts; while no queue runs, the messages waiting in the spool
/// for an outbound connector). Called off the async workers.
pub trait QueueCounts: Send + Sync + 'static {
    /// Messages by state, now.
    fn counts(&self) -> Counts;
}

impl QueueMetrics {
    /// Registers them, and the queue's size read from `size` at each
    /// scrape.
    pub fn register(registry: &mut Registry, size: impl QueueCounts) -> QueueMetrics {
        let m = QueueMetrics::default();
        registry.register(
            "deliveries",
            "Recipients' results of delivery attempts, by outbound connector and outcome",
            m.deliveries.clone(),
        );
        registry.register_with_unit(
            "delivery",
            "Time of one delivery attempt through one outbound connector (all its next hops)",
            prometheus_client::registry::Unit::Seconds,
            m.seconds.clone(),
        );
        registry.register(
            "delivery_sessions",
            "SMTP sessions transactions were sent on, by outbound connector: new connections, or kept from an earlier delivery",
            m.sessions.clone(),
        );
        registry.register_collector(Box::new(QueueSize(Box::new(size))));
        m
    }

    /// One route's attempt took `seconds` and ended with `outcomes`.
    pub fn attempt(&self, connector: &str, seconds: f64, outcomes: &[(usize, Outcome)]) {
        self.seconds.observe(seconds);
        for (_, o) in outcomes {
            self.outcome(connector, o);
        }
    }

    /// A transaction was sent through `connector` on a new or a kept
    /// session.
    pub fn session(&self, connector: &str, reused: bool) {
        self.sessions
            .get_or_create(&SessionLabels {
                connector: crate::ops::metrics::label(connector),
                session: if reused {
                    SessionKind::reused
                } else {
                    SessionKind::new
                },
            })
            .inc();
    }

    /// A recipient's result (also those settled without a next hop).
    pub fn outcome(&self, connector: &str, o: &Outcome) {
        let outcome = match o {
            Outcome::Delivered { .. } => DeliveryOutcome::delivered,
            Outcome::Deferred { .. } => DeliveryOutcome::deferred,
            Outcome::Failed { .. } => DeliveryOutcome::failed,
        };
        self.deliveries
            .get_or_create(&DeliveryLabels {
                connector: crate::ops::metrics::label(connector),
                outcome,
            })
            .inc();
    }
}

struct QueueSize(Box<dyn QueueCounts>);

impl std::fmt::Debug for QueueSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueSize")
    }
}

impl Collector for QueueSize {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.0.counts();
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "queue_messages",
            "Messages in the queue, by state (waiting_for_connector: in the spool while no outbound connector runs the queue)",
            None,
            gauge.metric_type(),
        )?;
        for (state, n) in [
            ("scheduled", counts.scheduled),
            ("waiting", counts.waiting),
            ("delivering", counts.busy),
            ("held", counts.held),
            ("frozen", counts.frozen),
            ("corrupt", counts.corrupt),
            ("waiting_for_connector", counts.waiting_for_connector),
        ] {
            let labels = [("state", state)];
            let e = family.encode_family(&labels)?;
            ConstGauge::new(n as i64).encode(e)?;
        }
        Ok(())
    }
}
