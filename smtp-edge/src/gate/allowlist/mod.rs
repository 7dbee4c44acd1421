//! The allowlist: entries from the configuration, the Exchange Online ranges and
//! the CLI, each with its own comment and hit counter, compiled into the
//! per-family prefix lists the kernel tables are built from.

pub mod exchange;
pub mod v4table;

/// The entry forms (moved to the floor: the configuration parses them too).
pub use crate::address::spec;

use std::collections::BTreeMap;
use std::fmt;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::gate::ranges::RangesState;

/// Where an entry comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// The bundled or imported Exchange Online port-25 ranges.
    ExchangeOnline,
    /// `[[allowlist.entries]]` in the configuration file.
    Config,
    /// Added with `smtp-edge allow add` (kept in the state directory).
    Cli,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::ExchangeOnline => "exchange-online",
            Origin::Config => "config",
            Origin::Cli => "cli",
        })
    }
}

/// One allowlist entry as the admin wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Where it comes from.
    pub origin: Origin,
    /// Canonical text (CIDR or start-end range).
    pub source: String,
    /// Free text.
    #[serde(default)]
    pub comment: String,
    /// The CIDR blocks it covers.
    pub nets: Vec<IpNet>,
}

impl Entry {
    /// Builds an entry from text in any accepted form.
    pub fn parse(origin: Origin, source: &str, comment: &str) -> Result<Self, spec::SpecError> {
        Ok(Self {
            origin,
            source: spec::canonical(source)?,
            comment: comment.to_string(),
            nets: spec::parse(source)?,
        })
    }

    /// Identity of the entry across reloads and restarts (keeps its counter).
    pub fn key(&self) -> String {
        format!("{}:{}", self.origin, self.source)
    }
}

/// The configuration's static entries (`[[allowlist.entries]]`).
pub fn static_entries(config: &Config) -> Vec<Entry> {
    config
        .static_entries
        .iter()
        .map(|e| Entry {
            origin: Origin::Config,
            source: e.source.clone(),
            comment: e.comment.clone(),
            nets: e.nets.clone(),
        })
        .collect()
}

/// The Exchange Online entries of the gate: the list in force (bundled,
/// imported or fetched, with the prefixes waiting for their removal
/// date); none when `allowlist.exchange_online` is false.
pub fn exchange_entries(config: &Config, ranges: &RangesState) -> Vec<Entry> {
    if !config.allowlist.exchange_online {
        return Vec::new();
    }
    let comment = match (ranges.origin, &ranges.version) {
        (crate::gate::ranges::Origin::Service, Some(v)) => {
            format!("Exchange Online (version {v})")
        }
        (origin, _) => format!("Exchange Online ({origin} list)"),
    };
    let mut out: Vec<Entry> = ranges
        .ranges
        .iter()
        .filter_map(|l| Entry::parse(Origin::ExchangeOnline, &l.prefix, &comment).ok())
        .collect();
    out.extend(ranges.pending_removal.iter().filter_map(|p| {
        let note = format!(
            "Exchange Online (no longer listed; allowed until {})",
            crate::smtp::trace::rfc5322_date(p.remove_at)
        );
        Entry::parse(Origin::ExchangeOnline, &p.prefix, &note).ok()
    }));
    out
}

/// An entry with the id that indexes its hit counter in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberedEntry {
    /// Counter index (and the value stored in the lookup tables).
    pub id: u32,
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
}

/// The allowlist ready for the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// All entries with their ids, in list order.
    pub entries: Vec<NumberedEntry>,
    /// IPv4 prefixes and the entry each belongs to.
    pub v4: Vec<(Ipv4Net, u32)>,
    /// IPv6 prefixes and the entry each belongs to.
    pub v6: Vec<(Ipv6Net, u32)>,
    /// Ids given to entries that had none before (their counters start at zero).
    pub new_ids: Vec<u32>,
}

/// Errors compiling the allowlist.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    /// More entries than counters.
    #[error("the allowlist has {entries} entries but filter.capacity.entries is {capacity}")]
    TooManyEntries {
        /// Entries.
        entries: usize,
        /// Capacity.
        capacity: u32,
    },
}

/// Gives each entry a stable id: the id it had before if it existed, else the
/// lowest free one. Entries with the same key share nothing: the first wins.
pub fn compile(
    entries: &[Entry],
    previous: &BTreeMap<String, u32>,
    capacity: u32,
) -> Result<Compiled, CompileError> {
    let mut out = Compiled::default();
    let mut keys: BTreeMap<String, u32> = BTreeMap::new();
    let mut unique: Vec<&Entry> = Vec::new();
    for e in entries {
        if let std::collections::btree_map::Entry::Vacant(v) = keys.entry(e.key()) {
            v.insert(u32::MAX);
            unique.push(e);
        }
    }
    if unique.len() > capacity as usize {
        return Err(CompileError::TooManyEntries {
            entries: unique.len(),
            capacity,
        });
    }
    let mut used = vec![false; capacity as usize];
    for e in &unique {
        if let Some(&id) = previous.get(&e.key())
            && id < capacity
            && !used[id as usize]
        {
            used[id as usize] = true;
            keys.insert(e.key(), id);
        }
    }
    let mut free = (0..capacity).filter(|&i| !used[i as usize]);
    for e in unique {
        let mut id = keys[&e.key()];
        if id == u32::MAX {
            // Capacity was checked above, so a free id exists.
            id = free.next().unwrap_or(0);
            keys.insert(e.key(), id);
            out.new_ids.push(id);
        }
        for net in &e.nets {
            match net {
                IpNet::V4(n) => out.v4.push((*n, id)),
                IpNet::V6(n) => out.v6.push((*n, id)),
            }
        }
        out.entries.push(NumberedEntry {
            id,
            entry: e.clone(),
        });
    }
    Ok(out)
}

impl Compiled {
    /// The id map to remember for the next compile.
    pub fn ids(&self) -> BTreeMap<String, u32> {
        self.entries.iter().map(|n| (n.entry.key(), n.id)).collect()
    }

    /// The entry with counter `id`.
    pub fn entry(&self, id: u32) -> Option<&NumberedEntry> {
        self.entries.iter().find(|e| e.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(origin: Origin, s: &str) -> Entry {
        Entry::parse(origin, s, "").unwrap()
    }

    #[test]
    fn entries_of_the_example_configuration() {
        let c = Config::parse(crate::config::EXAMPLE, std::path::Path::new("edge.toml")).unwrap();
        assert_eq!(exchange_entries(&c, &RangesState::bundled()).len(), 6);
        let s = static_entries(&c);
        assert_eq!(s.len(), 3);
        let mut want = e(Origin::Config, "198.51.100.64/255.255.255.192");
        want.comment = "scanners and line-of-business apps".into();
        assert_eq!(s[1], want);
    }

    #[test]
    fn ids_are_stable_and_reused() {
        let a = vec![
            e(Origin::Config, "192.0.2.0/24"),
            e(Origin::Cli, "198.51.100.0-198.51.100.5"),
            e(Origin::Config, "2001:db8::/32"),
        ];
        let c1 = compile(&a, &BTreeMap::new(), 16).unwrap();
        assert_eq!(
            c1.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(c1.new_ids, [0, 1, 2]);
        assert_eq!(c1.v4.len(), 3); // the range is two CIDRs
        assert!(c1.v4.iter().filter(|(_, id)| *id == 1).count() == 2);
        assert_eq!(c1.v6.len(), 1);

        // Remove the first, add another: ids of survivors stay, the new one takes 0.
        let b = vec![
            e(Origin::Cli, "198.51.100.0-198.51.100.5"),
            e(Origin::Config, "2001:db8::/32"),
            e(Origin::Cli, "203.0.113.9"),
        ];
        let c2 = compile(&b, &c1.ids(), 16).unwrap();
        assert_eq!(
            c2.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
            [1, 2, 0]
        );
        assert_eq!(c2.new_ids, [0]);
    }

    #[test]
    fn same_text_from_different_origins_are_separate_entries() {
        let a = vec![
            e(Origin::ExchangeOnline, "40.92.0.0/15"),
            e(Origin::Config, "40.92.0.0/15"),
            e(Origin::Config, "40.92.0.0/15"),
        ];
        let c = compile(&a, &BTreeMap::new(), 16).unwrap();
        assert_eq!(c.entries.len(), 2);
    }

    #[test]
    fn capacity_is_checked() {
        let a = vec![
            e(Origin::Config, "192.0.2.1"),
            e(Origin::Config, "192.0.2.2"),
        ];
        assert_eq!(
            compile(&a, &BTreeMap::new(), 1),
            Err(CompileError::TooManyEntries {
                entries: 2,
                capacity: 1
            })
        );
    }
}
