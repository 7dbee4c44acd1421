//! `smtp-edge ranges status` and the text of `ranges update` / `ranges diff`:
//! built from the state file, so they answer whether or not a daemon runs.

use std::fmt::Write as _;

use serde::Serialize;

use super::list::{CheckRecord, PendingRemoval, RangesState};
use super::plan::{MAX_V4_ADDRESSES, MAX_V4_GROWTH, MAX_V6_64S, MAX_V6_GROWTH_64S, Space};
use super::{Changes, Report};
use crate::config::ranges::Ranges;
use crate::smtp::trace::rfc5322_date;

/// What `ranges status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Instance asked.
    pub instance: String,
    /// Service URL.
    pub service_url: String,
    /// Automatic checks on.
    pub auto_update: bool,
    /// Whether the configuration uses the ranges at all.
    pub in_use: bool,
    /// Seconds between checks.
    pub check_interval: u64,
    /// Where the list in force came from.
    pub origin: String,
    /// The version in force.
    pub version: Option<String>,
    /// When it was fetched.
    pub fetched_at: u64,
    /// Prefixes in force.
    pub prefixes: Vec<String>,
    /// Prefixes waiting for their removal date.
    pub pending_removal: Vec<PendingRemoval>,
    /// The last check.
    pub last_check: Option<CheckRecord>,
    /// The last successful check.
    pub last_success: Option<u64>,
    /// The next scheduled check.
    pub next_check: u64,
    /// Failed checks in a row.
    pub failures: u32,
    /// A version not taken, and why.
    pub refused: Option<super::list::Refused>,
    /// The address space allowed now (in force and pending removal).
    pub allowed_space: Space,
    /// No successful check for longer than `stale_after`.
    pub stale: bool,
    /// The threshold.
    pub stale_after: u64,
    /// This machine's request id.
    pub client_request_id: String,
}

impl Status {
    /// The status of `state` under `settings`.
    pub fn new(
        state: &RangesState,
        settings: &Ranges,
        in_use: bool,
        client_request_id: String,
        now: u64,
    ) -> Status {
        Status {
            instance: settings.instance.to_string(),
            service_url: settings.service_url.clone(),
            auto_update: settings.auto_update,
            in_use,
            check_interval: settings.check_interval,
            origin: state.origin.to_string(),
            version: state.version.clone(),
            fetched_at: state.fetched_at,
            prefixes: state.ranges.iter().map(|l| l.prefix.clone()).collect(),
            pending_removal: state.pending_removal.clone(),
            last_check: state.last_check.clone(),
            last_success: state.last_success,
            next_check: state.next_check,
            failures: state.failures,
            refused: state.refused.clone(),
            allowed_space: Space::of(state.allowed()),
            stale: state.stale(now, settings.stale_after),
            stale_after: settings.stale_after,
            client_request_id,
        }
    }

    /// As text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "instance           {} ({})",
            self.instance, self.service_url
        );
        let schedule = match (self.auto_update, self.in_use) {
            (true, true) => format!("on, version checked every {} s", self.check_interval),
            (true, false) => "on, but nothing uses the Exchange Online ranges".into(),
            (false, _) => "off (ranges.auto_update = false)".into(),
        };
        let _ = writeln!(s, "automatic updates  {schedule}");
        let _ = writeln!(
            s,
            "list in force      {} ({} list, {}; {} prefixes)",
            self.version
                .as_deref()
                .map_or("no version".into(), |v| format!("version {v}")),
            self.origin,
            rfc5322_date(self.fetched_at),
            self.prefixes.len()
        );
        for p in &self.prefixes {
            let _ = writeln!(s, "                     {p}");
        }
        let _ = writeln!(
            s,
            "address space      {} IPv4 addresses, {} IPv6 /64s allowed (caps {MAX_V4_ADDRESSES} and {MAX_V6_64S}; \
             one update may add {MAX_V4_GROWTH} and {MAX_V6_GROWTH_64S})",
            self.allowed_space.v4, self.allowed_space.v6_64s
        );
        match &self.last_check {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "last check         {}: {}{}",
                    rfc5322_date(c.at),
                    if c.ok { "" } else { "FAILED: " },
                    c.outcome
                );
            }
            None => {
                let _ = writeln!(s, "last check         never");
            }
        }
        if let Some(at) = self.last_success {
            let _ = writeln!(s, "last success       {}", rfc5322_date(at));
        }
        if self.auto_update && self.in_use {
            let next = if self.next_check == 0 {
                "as soon as the daemon runs".to_string()
            } else {
                rfc5322_date(self.next_check)
            };
            let _ = writeln!(s, "next check         {next}");
        }
        if let Some(r) = &self.refused {
            let _ = writeln!(
                s,
                "refused            version {}: {} (the list in force stays)",
                r.version, r.reason
            );
        }
        if self.pending_removal.is_empty() {
            let _ = writeln!(s, "pending removals   none");
        } else {
            let _ = writeln!(s, "pending removals   (no longer listed, still allowed)");
            for p in &self.pending_removal {
                let _ = writeln!(
                    s,
                    "                     {:<22} until {}",
                    p.prefix,
                    rfc5322_date(p.remove_at)
                );
            }
        }
        let _ = writeln!(s, "client request id  {}", self.client_request_id);
        if self.stale {
            let _ = writeln!(
                s,
                "WARNING: no successful check for more than {} days: the list may be out of date",
                self.stale_after / 86_400
            );
        }
        s
    }
}

/// The changes as `+`/`-` lines (what `ranges diff` prints).
pub fn render_changes(c: &Changes) -> String {
    let mut s = String::new();
    for p in &c.added {
        let _ = writeln!(s, "+ {p}");
    }
    for p in &c.restored {
        let _ = writeln!(s, "+ {p}  (listed again; its removal is cancelled)");
    }
    for (p, at) in &c.scheduled {
        let _ = writeln!(
            s,
            "- {p}  (no longer listed; allowed until {})",
            rfc5322_date(*at)
        );
    }
    for p in &c.expired {
        let _ = writeln!(s, "- {p}  (grace ended: removed now)");
    }
    s
}

/// A report as text: its summary, then its changes.
pub fn render_report(r: &Report) -> String {
    format!("{}\n{}", r.summary(), render_changes(&r.changes))
}
