//! The gate service: the XDP program, its maps and attachments. The one
//! writer of the kernel maps: every change (configuration, CLI entries, the
//! Exchange Online list) is recompiled from the configuration plus the state
//! directory and pushed into the kernel as a difference.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::json;

use super::DaemonError;
use crate::config::Config;
use crate::gate::allowlist::{self, Compiled, Entry, Origin, spec};
use crate::gate::filter::FilterState;
use crate::gate::xdp::{self, Attachment, FilterError, Gate, LoadCapacity, Maps, Sync};
use crate::ops::control::Request;
use crate::ops::view;
use crate::state::{CliEntry, StateDir};

/// The desired allowlist: Exchange Online (the list in force), then the
/// configuration's entries, then the CLI's. Identical text from two origins
/// are two entries (two counters); the kernel holds the network once (first
/// wins).
pub fn desired_entries(config: &Config, state: &StateDir) -> Result<Vec<Entry>, DaemonError> {
    let ranges =
        crate::gate::ranges::load(state).map_err(|e| DaemonError::Ranges(e.to_string()))?;
    let mut entries = allowlist::exchange_entries(config, &ranges);
    entries.extend(allowlist::static_entries(config));
    for e in state.cli_entries()? {
        match Entry::parse(Origin::Cli, &e.source, &e.comment) {
            Ok(entry) => entries.push(entry),
            Err(err) => {
                tracing::warn!(source = %e.source, error = %err, "ignoring bad CLI entry in state")
            }
        }
    }
    Ok(entries)
}

/// Adds an entry to the CLI entries (used by the daemon and, when it is down,
/// by the CLI itself). Returns the canonical text.
pub fn add_cli_entry(state: &StateDir, source: &str, comment: &str) -> Result<String, String> {
    let canonical = spec::canonical(source).map_err(|e| e.to_string())?;
    let mut list = state.cli_entries().map_err(|e| e.to_string())?;
    if list.iter().any(|e| e.source == canonical) {
        return Err(format!("{canonical} is already in the allowlist"));
    }
    list.push(CliEntry {
        source: canonical.clone(),
        comment: comment.to_string(),
    });
    state.set_cli_entries(&list).map_err(|e| e.to_string())?;
    Ok(canonical)
}

/// Removes a CLI entry; entries from the configuration must be edited there.
pub fn remove_cli_entry(config: &Config, state: &StateDir, source: &str) -> Result<String, String> {
    let canonical = spec::canonical(source).map_err(|e| e.to_string())?;
    let mut list = state.cli_entries().map_err(|e| e.to_string())?;
    let before = list.len();
    list.retain(|e| e.source != canonical);
    if list.len() == before {
        if config.static_entries.iter().any(|e| e.source == canonical) {
            return Err(format!(
                "{canonical} comes from {}; remove it there and run `smtp-edge reload`",
                config.path.display()
            ));
        }
        return Err(format!(
            "{canonical} is not an entry added with `allow add`"
        ));
    }
    state.set_cli_entries(&list).map_err(|e| e.to_string())?;
    Ok(canonical)
}

/// The gate and what it was last given.
pub struct GateService {
    config: Arc<Config>,
    state: StateDir,
    gate: Option<Gate>,
    sync: Option<Sync>,
    compiled: Compiled,
    attachments: Vec<Attachment>,
}

const NOT_ENABLED: &str = "the filter is not enabled in this daemon's configuration";

impl GateService {
    /// Loads the gate, fills its maps, then attaches (or adopts the pinned
    /// links), so the program never runs against an empty allowlist.
    pub fn start(config: Arc<Config>, state: StateDir) -> Result<GateService, DaemonError> {
        let mut g = GateService {
            config,
            state,
            gate: None,
            sync: None,
            compiled: Compiled::default(),
            attachments: Vec::new(),
        };
        if g.config.filter.enabled {
            g.bring_up()?;
        }
        Ok(g)
    }

    fn bring_up(&mut self) -> Result<(), DaemonError> {
        let f = &self.config.filter;
        let cap = LoadCapacity {
            entries: f.capacity.entries,
            v4_l2_blocks: f.capacity.v4_l2_blocks,
            v4_l3_blocks: f.capacity.v4_l3_blocks,
            v6_prefixes: f.capacity.v6_prefixes,
        };
        // Check interfaces before touching anything.
        for iface in self.config.interfaces() {
            if !xdp::interface_exists(&iface) {
                return Err(FilterError::UnknownInterface(iface).into());
            }
        }
        let gate = Gate::load(&f.pin_dir, cap)?;
        let maps = Maps::open(&f.pin_dir, true)?;
        if maps.capacity.entries != cap.entries
            || maps.capacity.v4.l2_blocks != cap.v4_l2_blocks
            || maps.capacity.v4.l3_blocks != cap.v4_l3_blocks
        {
            tracing::warn!(
                pinned = ?maps.capacity,
                "pinned maps keep their sizes; `smtp-edge filter detach` and restart to apply filter.capacity"
            );
        }
        self.sync = Some(Sync::adopt(maps)?);
        self.gate = Some(gate);
        self.apply_settings()?;
        self.resync()?;
        self.reconcile_interfaces()?;
        Ok(())
    }

    fn apply_settings(&mut self) -> Result<(), DaemonError> {
        if let Some(sync) = &mut self.sync {
            let f = &self.config.filter;
            sync.maps().set_ports(&self.config.ports);
            sync.maps_mut()
                .set_settings(f.mode, f.drop_events_per_second)?;
        }
        Ok(())
    }

    fn reconcile_interfaces(&mut self) -> Result<(), DaemonError> {
        let Some(gate) = &mut self.gate else {
            return Ok(());
        };
        let wanted = self.config.interfaces();
        let mut attached = Vec::new();
        for iface in &wanted {
            let a = gate.attach(iface, self.config.filter.xdp_mode)?;
            tracing::info!(iface = %a.iface, how = %a.how, "gate attached");
            attached.push(a);
        }
        for iface in xdp::pinned_interfaces(&self.config.filter.pin_dir) {
            if !wanted.contains(&iface) {
                xdp::detach_interface(&self.config.filter.pin_dir, &iface)?;
                tracing::info!(%iface, "gate detached (no longer configured)");
            }
        }
        self.attachments = attached;
        self.record()?;
        Ok(())
    }

    /// Recompiles the allowlist and pushes the difference into the kernel
    /// (after a CLI edit, a reload or a new Exchange Online list).
    pub fn resync(&mut self) -> Result<(), DaemonError> {
        if !self.config.filter.enabled {
            // No kernel tables to fit: nothing to compile.
            self.compiled = Compiled::default();
            return Ok(());
        }
        let entries = desired_entries(&self.config, &self.state)?;
        let previous = match self.compiled.entries.is_empty() {
            true => FilterState::read(&self.state)?
                .map(|f| f.ids())
                .unwrap_or_default(),
            false => self.compiled.ids(),
        };
        let compiled =
            allowlist::compile(&entries, &previous, self.config.filter.capacity.entries)?;
        if let Some(sync) = &mut self.sync {
            let report = sync.apply(&compiled)?;
            tracing::info!(
                entries = compiled.entries.len(),
                v4_prefixes = compiled.v4.len(),
                v6_prefixes = compiled.v6.len(),
                v4_slot_writes = report.v4_slot_writes,
                v6_added = report.v6_added,
                v6_removed = report.v6_removed,
                seconds = report.seconds,
                "allowlist synced"
            );
        }
        self.compiled = compiled;
        self.record()?;
        Ok(())
    }

    fn record(&self) -> Result<(), DaemonError> {
        if self.sync.is_none() {
            return Ok(());
        }
        self.filter_state().save(&self.state)?;
        Ok(())
    }

    fn filter_state(&self) -> FilterState {
        FilterState {
            entries: self.compiled.entries.clone(),
            interfaces: self.config.interfaces(),
            ports: self.config.ports.clone(),
            mode: format!("{:?}", self.config.filter.mode).to_lowercase(),
        }
    }

    /// Checks a new configuration against the gate without changing
    /// anything: settings that need a restart, interfaces, capacity.
    pub fn prepare(&self, next: &Config) -> Result<(), String> {
        if next.filter.pin_dir != self.config.filter.pin_dir
            || next.daemon.state_dir != self.config.daemon.state_dir
            || next.filter.enabled != self.config.filter.enabled
        {
            return Err(
                "filter.enabled, filter.pin_dir and daemon.state_dir change only with a restart"
                    .into(),
            );
        }
        if next.filter.enabled {
            for iface in next.interfaces() {
                if !xdp::interface_exists(&iface) {
                    return Err(format!("unknown interface `{iface}`"));
                }
            }
        }
        let entries = desired_entries(next, &self.state).map_err(|e| e.to_string())?;
        if next.filter.enabled {
            allowlist::compile(&entries, &self.compiled.ids(), next.filter.capacity.entries)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Puts a prepared configuration in force; on failure the previous one is
    /// restored and the error returned. Re-attaches a gate detached on
    /// request.
    pub fn commit(&mut self, next: Arc<Config>) -> Result<(), String> {
        let previous = std::mem::replace(&mut self.config, next);
        let result = if self.config.filter.enabled && self.sync.is_none() {
            self.compiled = Compiled::default();
            self.bring_up()
        } else {
            self.apply_settings()
                .and_then(|()| self.resync())
                .and_then(|()| self.reconcile_interfaces())
        };
        result.map_err(|e| {
            self.config = previous;
            let _ = self.apply_settings().and_then(|()| self.resync());
            format!("the gate refused it ({e}); previous configuration restored")
        })
    }

    /// Answers a request about the gate or the allowlist.
    pub fn handle(&mut self, req: Request) -> Result<serde_json::Value, String> {
        match req {
            Request::AllowAdd { source, comment } => {
                let canonical = add_cli_entry(&self.state, &source, &comment)?;
                match self.resync() {
                    Ok(()) => Ok(json!({ "added": canonical })),
                    Err(e) => {
                        // Undo the state change: the kernel did not take it.
                        let _ = remove_cli_entry(&self.config, &self.state, &canonical);
                        let _ = self.resync();
                        Err(e.to_string())
                    }
                }
            }
            Request::AllowRemove { source } => {
                let canonical = remove_cli_entry(&self.config, &self.state, &source)?;
                self.resync()
                    .map(|()| json!({ "removed": canonical }))
                    .map_err(|e| e.to_string())
            }
            Request::AllowList | Request::Stats => {
                let sync = self.sync.as_ref().ok_or(NOT_ENABLED)?;
                let s =
                    view::stats(sync.maps(), &self.filter_state()).map_err(|e| e.to_string())?;
                serde_json::to_value(s).map_err(|e| e.to_string())
            }
            Request::Check { address, port } => self.check(address, port),
            Request::Status => {
                let sync = self.sync.as_ref().ok_or(NOT_ENABLED)?;
                let mut s = view::status(
                    sync.maps(),
                    &self.config.filter.pin_dir,
                    &self.filter_state(),
                    sync.v4_blocks(),
                )
                .map_err(|e| e.to_string())?;
                s.daemon_running = true;
                s.attach_modes = self
                    .attachments
                    .iter()
                    .map(|a| (a.iface.clone(), a.how.clone()))
                    .collect();
                serde_json::to_value(s).map_err(|e| e.to_string())
            }
            Request::Detach => self.detach(),
            _ => Err("not a gate request".into()),
        }
    }

    /// The gate's counters (none when the filter is off or detached).
    pub fn stats(&self) -> Option<view::Stats> {
        let sync = self.sync.as_ref()?;
        view::stats(sync.maps(), &self.filter_state()).ok()
    }

    fn check(&self, address: IpAddr, port: u16) -> Result<serde_json::Value, String> {
        let sync = self.sync.as_ref().ok_or(NOT_ENABLED)?;
        let c = view::check(sync.maps(), &self.filter_state(), address, port)
            .map_err(|e| e.to_string())?;
        serde_json::to_value(c).map_err(|e| e.to_string())
    }

    fn detach(&mut self) -> Result<serde_json::Value, String> {
        let pin_dir = self.config.filter.pin_dir.clone();
        self.sync = None;
        self.gate = None;
        self.attachments.clear();
        let ifaces = xdp::detach_all(&pin_dir).map_err(|e| e.to_string())?;
        tracing::warn!(
            ?ifaces,
            "gate detached on request; `smtp-edge reload` or a restart attaches it again"
        );
        Ok(json!({ "detached": ifaces }))
    }
}
