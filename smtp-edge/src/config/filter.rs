//! `[filter]`: the XDP gate's interfaces, protected ports, mode and map sizes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::error::{At, ConfigError};
use smtp_edge_common::capacity;

/// Gate mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Drop packets to protected ports from sources outside the allowlist.
    #[default]
    Enforce,
    /// Count and log what would be dropped; pass everything.
    Monitor,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttach {
    /// Native (driver) mode, falling back to generic (skb) mode when the driver lacks XDP.
    #[default]
    Auto,
    /// Native mode only.
    Native,
    /// Generic mode only.
    Skb,
}

/// `[filter.capacity]`: sizes of the kernel maps, fixed when they are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capacity {
    /// Allowlist entries (each has a hit counter).
    pub entries: u32,
    /// IPv4 second-level blocks (one per /16 holding prefixes longer than /16).
    pub v4_l2_blocks: u32,
    /// IPv4 third-level blocks (one per /24 holding prefixes longer than /24).
    pub v4_l3_blocks: u32,
    /// IPv6 prefixes.
    pub v6_prefixes: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            entries: capacity::DEFAULT_ENTRIES,
            v4_l2_blocks: capacity::DEFAULT_V4_L2_BLOCKS,
            v4_l3_blocks: capacity::DEFAULT_V4_L3_BLOCKS,
            v6_prefixes: capacity::DEFAULT_V6_PREFIXES,
        }
    }
}

/// `[filter]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filter {
    /// Whether the daemon loads and manages the XDP gate.
    pub enabled: bool,
    /// Internet-facing interfaces to attach to.
    pub interfaces: Vec<Spanned<String>>,
    /// Protected TCP destination ports.
    pub ports: Spanned<Vec<Spanned<u32>>>,
    /// enforce or monitor.
    pub mode: Mode,
    /// auto, native or skb.
    pub xdp_mode: XdpAttach,
    /// bpffs directory for the pinned program links and maps.
    pub pin_dir: PathBuf,
    /// Drop events logged per second and per CPU (0 = none).
    pub drop_events_per_second: u32,
    /// Map sizes.
    pub capacity: Capacity,
}

impl Default for Filter {
    fn default() -> Self {
        Self {
            enabled: true,
            interfaces: Vec::new(),
            ports: Spanned::new(0..0, vec![Spanned::new(0..0, 25)]),
            mode: Mode::Enforce,
            xdp_mode: XdpAttach::Auto,
            pin_dir: PathBuf::from("/sys/fs/bpf/smtp-edge"),
            drop_events_per_second: 20,
            capacity: Capacity::default(),
        }
    }
}

/// Validates the section of `file`; returns the protected ports (each once,
/// in the order written).
pub(super) fn validate(
    f: &Filter,
    file: &str,
    at: At<'_>,
    errors: &mut Vec<ConfigError>,
) -> Vec<u16> {
    if f.enabled && f.interfaces.is_empty() {
        errors.push(ConfigError::whole_file(
            file,
            "filter.interfaces: at least one interface is needed when the filter is enabled".into(),
        ));
    }
    for i in &f.interfaces {
        let name = i.get_ref();
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            errors.push(at(
                i.span(),
                format!("`{name}` is not a valid interface name"),
            ));
        }
    }
    let mut ports = Vec::new();
    if f.ports.get_ref().is_empty() {
        errors.push(at(
            f.ports.span(),
            "filter.ports: at least one port is needed".into(),
        ));
    }
    for p in f.ports.get_ref() {
        match u16::try_from(*p.get_ref()) {
            Ok(port) if port != 0 => {
                if !ports.contains(&port) {
                    ports.push(port);
                }
            }
            _ => errors.push(at(
                p.span(),
                format!("port {} is out of range (1..=65535)", p.get_ref()),
            )),
        }
    }
    let c = &f.capacity;
    for (name, value, max) in [
        ("entries", c.entries, 1 << 22),
        ("v4_l2_blocks", c.v4_l2_blocks, 1 << 18),
        ("v4_l3_blocks", c.v4_l3_blocks, 1 << 22),
        ("v6_prefixes", c.v6_prefixes, 1 << 22),
    ] {
        if value == 0 || value > max {
            errors.push(ConfigError::whole_file(
                file,
                format!("filter.capacity.{name} = {value} is out of range (1..={max})"),
            ));
        }
    }
    ports
}
