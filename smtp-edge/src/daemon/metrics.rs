//! The metrics service: the registry every service registered into, the
//! gate's and the ranges' scrape-time collectors, and the `/metrics`
//! endpoint on `[metrics] listen` (bound at start and rebound by a reload
//! that moves it).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::gate::GateService;
use crate::config::Config;
use crate::state::StateDir;

/// Registers what the supervisor itself knows: the gate's counters and the
/// ranges list, read at each scrape, and the build.
pub fn register(
    registry: &mut Registry,
    gate: Arc<Mutex<GateService>>,
    state: StateDir,
    config: Arc<RwLock<Arc<Config>>>,
) {
    registry.register(
        "build",
        "The smtp-edge build",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry.register_collector(Box::new(GateCollector(gate)));
    registry.register_collector(Box::new(RangesCollector { state, config }));
}

struct GateCollector(Arc<Mutex<GateService>>);

impl std::fmt::Debug for GateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GateCollector")
    }
}

impl Collector for GateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Encoding runs on a blocking thread (see crate::ops::metrics::serve).
        let gate = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(stats) = gate.stats() else {
            return Ok(());
        };
        drop(gate);
        let counter = ConstCounter::new(0u64);
        let mut packets = encoder.encode_descriptor(
            "gate_packets",
            "Packets the XDP gate looked at, by verdict and reason",
            None,
            counter.metric_type(),
        )?;
        for (reason, n) in &stats.counters {
            let labels = [("reason", reason.as_str())];
            ConstCounter::new(*n).encode(packets.encode_family(&labels)?)?;
        }
        let mut hits = encoder.encode_descriptor(
            "gate_entry_hits",
            "Packets passed by each allowlist entry (bounded by the allowlist)",
            None,
            counter.metric_type(),
        )?;
        for e in &stats.entries {
            let id = e.entry.id.to_string();
            let origin = e.entry.entry.origin.to_string();
            let comment = crate::ops::metrics::label(&e.entry.entry.comment);
            let labels = [
                ("entry", id.as_str()),
                ("source", e.entry.entry.source.as_str()),
                ("origin", origin.as_str()),
                ("comment", comment.as_str()),
            ];
            ConstCounter::new(e.hits).encode(hits.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

struct RangesCollector {
    state: StateDir,
    config: Arc<RwLock<Arc<Config>>>,
}

impl std::fmt::Debug for RangesCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RangesCollector")
    }
}

impl Collector for RangesCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stale_after = self
            .config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .ranges
            .stale_after;
        let Ok(list) = crate::gate::ranges::load(&self.state) else {
            return Ok(());
        };
        let now = crate::queue::spool::now();
        let gauge = ConstGauge::new(0i64);
        let mut one = |name: &str, help: &str, v: i64| -> Result<(), std::fmt::Error> {
            let e = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            ConstGauge::new(v).encode(e)
        };
        one(
            "ranges_age_seconds",
            "Seconds since the Exchange Online list was last fetched or confirmed",
            now.saturating_sub(list.checked_at()) as i64,
        )?;
        one(
            "ranges_stale",
            "1 when no check succeeded for longer than ranges.stale_after",
            i64::from(list.stale(now, stale_after)),
        )?;
        one(
            "ranges_check_failures",
            "Failed checks of the endpoints web service in a row",
            i64::from(list.failures),
        )?;
        let mut prefixes = encoder.encode_descriptor(
            "ranges_prefixes",
            "Exchange Online prefixes allowed, in force or waiting for their removal date",
            None,
            gauge.metric_type(),
        )?;
        for (state, n) in [
            ("in_force", list.ranges.len()),
            ("pending_removal", list.pending_removal.len()),
        ] {
            let labels = [("state", state)];
            ConstGauge::new(n as i64).encode(prefixes.encode_family(&labels)?)?;
        }
        let space = crate::gate::ranges::Space::of(list.allowed());
        let mut allowed = encoder.encode_descriptor(
            "ranges_allowed_space",
            "Address space the Exchange Online list allows: IPv4 addresses, IPv6 /64 networks",
            None,
            gauge.metric_type(),
        )?;
        for (family, n) in [
            ("ipv4", i64::try_from(space.v4).unwrap_or(i64::MAX)),
            ("ipv6_64s", i64::try_from(space.v6_64s).unwrap_or(i64::MAX)),
        ] {
            let labels = [("family", family)];
            ConstGauge::new(n).encode(allowed.encode_family(&labels)?)?;
        }
        let mut refused = encoder.encode_descriptor(
            "ranges_refused",
            "1 when the latest published list was refused (reason: address_space, growth, shrink, …); the list in force stays",
            None,
            gauge.metric_type(),
        )?;
        let (reason, v) = match &list.refused {
            Some(r) => (r.kind.clone().unwrap_or_else(|| "other".into()), 1i64),
            None => ("none".to_string(), 0),
        };
        let labels = [("reason", reason.as_str())];
        ConstGauge::new(v).encode(refused.encode_family(&labels)?)?;
        let version = list.version.clone().unwrap_or_default();
        let origin = list.origin.to_string();
        let mut info = encoder.encode_descriptor(
            "ranges_version",
            "The Exchange Online list in force (value 1)",
            None,
            gauge.metric_type(),
        )?;
        let labels = [("version", version.as_str()), ("origin", origin.as_str())];
        ConstGauge::new(1i64).encode(info.encode_family(&labels)?)?;
        Ok(())
    }
}

/// The `/metrics` endpoint.
pub struct MetricsService {
    registry: Arc<Registry>,
    server: Mutex<Option<(SocketAddr, JoinHandle<()>)>>,
}

impl MetricsService {
    /// The service over a complete registry (nothing served yet).
    pub fn new(registry: Registry) -> MetricsService {
        MetricsService {
            registry: Arc::new(registry),
            server: Mutex::new(None),
        }
    }

    /// The registry as text (for `smtp-edge status` and tests).
    pub fn encode(&self) -> String {
        crate::ops::metrics::encode(&self.registry)
    }

    fn serving(&self) -> Option<SocketAddr> {
        self.server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(a, _)| *a)
    }

    /// Binds `next` when it is not what is served now.
    pub async fn prepare(
        &self,
        next: Option<SocketAddr>,
    ) -> Result<Option<(SocketAddr, TcpListener)>, String> {
        match next {
            Some(a) if self.serving() != Some(a) => TcpListener::bind(a)
                .await
                .map(|l| Some((a, l)))
                .map_err(|e| format!("metrics.listen {a}: {e}")),
            _ => Ok(None),
        }
    }

    /// Serves what [`MetricsService::prepare`] bound, or stops when `next`
    /// is none.
    pub fn commit(&self, next: Option<SocketAddr>, bound: Option<(SocketAddr, TcpListener)>) {
        let mut server = self.server.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((addr, l)) = bound {
            if let Some((old, task)) = server.take() {
                task.abort();
                tracing::info!(%old, "metrics endpoint moved");
            }
            let task = tokio::spawn(crate::ops::metrics::serve(l, self.registry.clone()));
            tracing::info!(%addr, "metrics at http://{addr}/metrics");
            *server = Some((addr, task));
        } else if next.is_none()
            && let Some((old, task)) = server.take()
        {
            task.abort();
            tracing::info!(%old, "metrics endpoint stopped");
        }
    }

    /// Where it is served.
    pub fn address(&self) -> Option<SocketAddr> {
        self.serving()
    }
}
