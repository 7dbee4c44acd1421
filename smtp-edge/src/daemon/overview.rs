//! `smtp-edge status`: one screen about every service — the gate, the
//! listeners and connectors, the queue, the ranges, the metrics endpoint —
//! and the warnings an administrator should act on.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Supervisor;
use crate::queue::index::Counts;
use crate::smtp::trace::rfc5322_date;

/// The gate's part.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GateOverview {
    /// The configuration enables it.
    pub enabled: bool,
    /// Interfaces with how each is attached.
    pub interfaces: Vec<String>,
    /// "enforce" or "monitor".
    pub mode: String,
    /// Protected ports.
    pub ports: Vec<u16>,
    /// Allowlist entries.
    pub entries: usize,
    /// Packets passed because of an entry.
    pub passed_allowed: u64,
    /// Packets dropped (every drop reason).
    pub dropped: u64,
    /// Packets that would have been dropped (monitor mode).
    pub would_drop: u64,
}

/// One inbound connector.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboundOverview {
    /// Name.
    pub name: String,
    /// Source prefixes (0: everyone else).
    pub sources: usize,
    /// Checks client certificates.
    pub client_certificates: bool,
}

/// The receiving side's part.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmtpOverview {
    /// `[smtp] enabled`.
    pub enabled: bool,
    /// Addresses listened on.
    pub listening: Vec<String>,
    /// Connections open now.
    pub open_connections: u32,
    /// Inbound connectors.
    pub inbound: Vec<InboundOverview>,
    /// Outbound connector names.
    pub outbound: Vec<String>,
}

/// The ranges' part.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RangesOverview {
    /// Version in force.
    pub version: Option<String>,
    /// Bundled, imported, web service.
    pub origin: String,
    /// Seconds since the list was fetched or confirmed.
    pub age_seconds: u64,
    /// Prefixes allowed (in force and waiting for removal).
    pub prefixes: usize,
    /// Of which waiting for their removal date.
    pub pending_removal: usize,
    /// The last check succeeded (none: never checked).
    pub last_check_ok: Option<bool>,
}

/// What `smtp-edge status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Overview {
    /// smtp-edge version.
    pub version: String,
    /// The configuration file.
    pub config: String,
    /// The gate.
    pub gate: GateOverview,
    /// Receiving and sending.
    pub smtp: SmtpOverview,
    /// The queue runs.
    pub queue_running: bool,
    /// Messages by state (while the queue does not run: those waiting in
    /// the spool for an outbound connector).
    pub queue: Counts,
    /// The Exchange Online list.
    pub ranges: RangesOverview,
    /// The metrics endpoint.
    pub metrics: Option<String>,
    /// The configured certificate files as the last (re)load read them.
    #[serde(default)]
    pub certificates: Vec<crate::ops::certificates::CertificateView>,
    /// When the overview was computed (Unix seconds).
    #[serde(default)]
    pub now: u64,
    /// What needs attention.
    pub warnings: Vec<String>,
}

impl Supervisor {
    /// The overview, computed now.
    pub async fn overview(self: &Arc<Self>) -> Overview {
        let cfg = self.config();
        let gate = self.gate.clone();
        let (status, stats) = tokio::task::spawn_blocking(move || {
            let mut g = gate.lock().unwrap_or_else(|p| p.into_inner());
            (
                g.handle(crate::ops::control::Request::Status).ok(),
                g.stats(),
            )
        })
        .await
        .unwrap_or((None, None));
        let mut warnings: Vec<String> = cfg.warnings.iter().map(|w| w.to_string()).collect();
        let mut gate = GateOverview {
            enabled: cfg.filter.enabled,
            mode: format!("{:?}", cfg.filter.mode).to_lowercase(),
            ports: cfg.ports.clone(),
            ..GateOverview::default()
        };
        if let Some(s) =
            status.and_then(|v| serde_json::from_value::<crate::ops::view::Status>(v).ok())
        {
            gate.interfaces = s
                .interfaces
                .iter()
                .map(|i| match s.attach_modes.get(i) {
                    Some(m) => format!("{i} ({m})"),
                    None => i.clone(),
                })
                .collect();
            gate.entries = s.entries;
        } else if cfg.filter.enabled {
            warnings.push(
                "the gate is not attached (detached on request?): `smtp-edge reload` attaches it"
                    .into(),
            );
        }
        if let Some(st) = stats {
            for (name, n) in &st.counters {
                match name.as_str() {
                    "passed_allowed" => gate.passed_allowed = *n,
                    "would_drop" => gate.would_drop = *n,
                    n2 if n2.starts_with("dropped_") => gate.dropped += *n,
                    _ => {}
                }
            }
        }
        if cfg.filter.enabled && cfg.filter.mode == crate::config::Mode::Monitor {
            warnings.push("the gate is in monitor mode: nothing is dropped".into());
        }
        let smtp = SmtpOverview {
            enabled: cfg.smtp.raw.enabled,
            listening: self
                .receiver
                .as_ref()
                .map(|r| r.addresses().iter().map(|a| a.to_string()).collect())
                .unwrap_or_default(),
            open_connections: self.receiver.as_ref().map_or(0, |r| r.open_connections()),
            inbound: self
                .receiver
                .as_ref()
                .map(|r| {
                    r.connectors()
                        .into_iter()
                        .map(|(name, sources, certs)| InboundOverview {
                            name,
                            sources,
                            client_certificates: certs,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            outbound: cfg.outbound.iter().map(|o| o.name.clone()).collect(),
        };
        let queue = self.queue.counts().await;
        if queue.frozen > 0 {
            warnings.push(format!(
                "{} message(s) frozen: their state cannot be saved (disk full or read-only?)",
                queue.frozen
            ));
        }
        if queue.waiting_for_connector > 0 {
            warnings.push(format!(
                "{} message(s) wait in the spool: no outbound connector delivers them",
                queue.waiting_for_connector
            ));
        }
        if queue.corrupt > 0 {
            warnings.push(format!(
                "{} message(s) quarantined as corrupt (spool corrupt/)",
                queue.corrupt
            ));
        }
        let now = crate::queue::spool::now();
        let list = match crate::gate::ranges::load(&self.state) {
            Ok(l) => l,
            Err(e) => {
                warnings.push(format!("the Exchange Online ranges cannot be read: {e}"));
                crate::gate::ranges::RangesState::bundled()
            }
        };
        let ranges = RangesOverview {
            version: list.version.clone(),
            origin: list.origin.to_string(),
            age_seconds: now.saturating_sub(list.checked_at()),
            prefixes: list.allowed().count(),
            pending_removal: list.pending_removal.len(),
            last_check_ok: list.last_check.as_ref().map(|c| c.ok),
        };
        if cfg.uses_exchange_ranges() {
            if list.stale(now, cfg.ranges.stale_after) {
                warnings.push(format!(
                    "the Exchange Online ranges are stale: last confirmed {}",
                    rfc5322_date(list.checked_at())
                ));
            }
            if let Some(c) = list.last_check.as_ref().filter(|c| !c.ok) {
                warnings.push(format!("the last ranges check failed: {}", c.outcome));
            }
        }
        let certificates = self.certificates.views();
        warnings.extend(crate::ops::certificates::warnings(
            &certificates,
            now as i64,
        ));
        Overview {
            version: env!("CARGO_PKG_VERSION").into(),
            config: cfg.path.display().to_string(),
            gate,
            smtp,
            queue_running: self.queue.running(),
            queue,
            ranges,
            metrics: self
                .metrics
                .address()
                .map(|a| format!("http://{a}/metrics")),
            certificates,
            now,
            warnings,
        }
    }
}

impl Overview {
    /// As one screen of text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "smtp-edge {} ({})", self.version, self.config);
        let g = &self.gate;
        if g.enabled {
            let _ = writeln!(
                s,
                "gate       {} on {} · ports {:?} · {} entries · passed {} · dropped {}{}",
                g.mode,
                if g.interfaces.is_empty() {
                    "no interface".to_string()
                } else {
                    g.interfaces.join(", ")
                },
                g.ports,
                g.entries,
                g.passed_allowed,
                g.dropped,
                if g.would_drop > 0 {
                    format!(" · would drop {}", g.would_drop)
                } else {
                    String::new()
                }
            );
        } else {
            let _ = writeln!(s, "gate       off (filter.enabled = false)");
        }
        let m = &self.smtp;
        if m.enabled {
            let _ = writeln!(
                s,
                "smtp       listening on {} · {} connection(s) open",
                m.listening.join(", "),
                m.open_connections
            );
            let inbound: Vec<String> = m
                .inbound
                .iter()
                .map(|c| {
                    let who = match c.sources {
                        0 => "everyone else".to_string(),
                        n => format!("{n} prefixes"),
                    };
                    let cert = if c.client_certificates {
                        ", certificate"
                    } else {
                        ""
                    };
                    format!("{} ({who}{cert})", c.name)
                })
                .collect();
            let _ = writeln!(s, "inbound    {}", inbound.join(" · "));
            let _ = writeln!(
                s,
                "outbound   {}",
                if m.outbound.is_empty() {
                    "none".to_string()
                } else {
                    m.outbound.join(" · ")
                }
            );
        } else {
            let _ = writeln!(s, "smtp       off (smtp.enabled = false)");
        }
        for c in &self.certificates {
            let _ = writeln!(s, "cert       {}", c.line(self.now as i64));
        }
        let q = &self.queue;
        if self.queue_running {
            let _ = writeln!(
                s,
                "queue      {} scheduled · {} waiting · {} delivering · {} held · {} frozen · {} corrupt",
                q.scheduled, q.waiting, q.busy, q.held, q.frozen, q.corrupt
            );
        } else {
            let _ = writeln!(
                s,
                "queue      not running: {} message(s) waiting in the spool for an outbound connector",
                q.waiting_for_connector
            );
        }
        let r = &self.ranges;
        let _ = writeln!(
            s,
            "ranges     {} ({} list) · {} prefixes ({} pending removal) · age {} · last check {}",
            r.version
                .as_deref()
                .map_or("no version".into(), |v| format!("version {v}")),
            r.origin,
            r.prefixes,
            r.pending_removal,
            age(r.age_seconds),
            match r.last_check_ok {
                None => "never",
                Some(true) => "ok",
                Some(false) => "FAILED",
            }
        );
        let _ = writeln!(
            s,
            "metrics    {}",
            self.metrics.as_deref().unwrap_or("off ([metrics] listen)")
        );
        if self.warnings.is_empty() {
            let _ = writeln!(s, "warnings   none");
        } else {
            for w in &self.warnings {
                let _ = writeln!(s, "WARNING    {w}");
            }
        }
        s
    }
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 2 * 86_400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}
