//! Read-only views of the gate (check, stats, status) computed from the kernel
//! maps and the recorded entry table. The daemon answers the CLI with these,
//! and the CLI computes the same thing itself from the pinned maps when the
//! daemon is down, so both paths give identical answers.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use smtp_edge_common::{mode, reason};

use crate::gate::allowlist::NumberedEntry;
use crate::gate::filter::FilterState;
use crate::gate::xdp::{FilterError, Maps, pinned_interfaces};

/// Answer of `smtp-edge check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Address checked.
    pub address: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Whether the port is protected.
    pub protected: bool,
    /// "enforce" or "monitor".
    pub mode: String,
    /// "pass", "drop" or "would-drop".
    pub verdict: String,
    /// Why.
    pub reason: String,
    /// The entry that matched (longest prefix), if any.
    pub entry: Option<NumberedEntry>,
}

/// One entry's counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryStats {
    /// The entry.
    #[serde(flatten)]
    pub entry: NumberedEntry,
    /// Packets that passed because of it.
    pub hits: u64,
}

/// Answer of `smtp-edge stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Counters by reason (in kernel order).
    pub counters: Vec<(String, u64)>,
    /// Per-entry hits.
    pub entries: Vec<EntryStats>,
}

/// Answer of `smtp-edge filter status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Pin directory.
    pub pin_dir: String,
    /// Interfaces with a pinned (attached) gate.
    pub interfaces: Vec<String>,
    /// How each interface was attached by the running daemon ("native", "skb",
    /// "adopted"); empty when read from the pins.
    pub attach_modes: BTreeMap<String, String>,
    /// "enforce" or "monitor".
    pub mode: String,
    /// Protected ports.
    pub ports: Vec<u16>,
    /// Allowlist entries.
    pub entries: usize,
    /// IPv4 blocks in use / capacity (second level, third level).
    pub v4_blocks: [(usize, u32); 2],
    /// Capacity of the entry counters.
    pub entry_capacity: u32,
    /// Whether a daemon answered.
    pub daemon_running: bool,
}

fn mode_name(m: u32) -> &'static str {
    if m == mode::MONITOR {
        "monitor"
    } else {
        "enforce"
    }
}

/// Verdict of the gate for `addr` → `port`, as the kernel tables have it.
pub fn check(
    maps: &Maps,
    state: &FilterState,
    addr: IpAddr,
    port: u16,
) -> Result<Check, FilterError> {
    let settings = maps.settings()?;
    let m = mode_name(settings.mode).to_string();
    let protected = maps.ports().contains(&port);
    let found = maps.lookup(addr)?;
    let entry = found.and_then(|id| state.entries.iter().find(|e| e.id == id).cloned());
    let (verdict, why) = match (protected, found) {
        (false, _) => ("pass", format!("port {port} is not protected")),
        (true, Some(id)) => (
            "pass",
            match &entry {
                Some(e) => format!("allowed by {} entry {}", e.entry.origin, e.entry.source),
                None => format!("allowed by entry #{id}"),
            },
        ),
        (true, None) if settings.mode == mode::MONITOR => (
            "would-drop",
            "source not in the allowlist (monitor mode)".to_string(),
        ),
        (true, None) => ("drop", "source not in the allowlist".to_string()),
    };
    Ok(Check {
        address: addr,
        port,
        protected,
        mode: m,
        verdict: verdict.into(),
        reason: why,
        entry,
    })
}

/// Counters and per-entry hits.
pub fn stats(maps: &Maps, state: &FilterState) -> Result<Stats, FilterError> {
    let c = maps.counters()?;
    let counters = reason::NAMES
        .iter()
        .zip(c.iter())
        .map(|(n, v)| (n.to_string(), *v))
        .collect();
    let mut entries = Vec::with_capacity(state.entries.len());
    for e in &state.entries {
        entries.push(EntryStats {
            entry: e.clone(),
            hits: maps.hits(e.id)?,
        });
    }
    Ok(Stats { counters, entries })
}

/// Gate status.
pub fn status(
    maps: &Maps,
    pin_dir: &Path,
    state: &FilterState,
    v4_blocks: (usize, usize),
) -> Result<Status, FilterError> {
    let settings = maps.settings()?;
    Ok(Status {
        pin_dir: pin_dir.display().to_string(),
        interfaces: pinned_interfaces(pin_dir),
        attach_modes: BTreeMap::new(),
        mode: mode_name(settings.mode).into(),
        ports: maps.ports(),
        entries: state.entries.len(),
        v4_blocks: [
            (v4_blocks.0, maps.capacity.v4.l2_blocks),
            (v4_blocks.1, maps.capacity.v4.l3_blocks),
        ],
        entry_capacity: maps.capacity.entries,
        daemon_running: false,
    })
}

/// Reason counter index by name (for tests and scripts).
pub fn counter<'a>(stats: &'a Stats, name: &str) -> Option<&'a u64> {
    stats
        .counters
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}
