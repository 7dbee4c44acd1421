//! The filter record: what the daemon last put into the kernel, kept as
//! `filter.json` in the state directory (read by the CLI when the daemon is
//! down, and by the daemon when it adopts pinned maps after a restart, so the
//! entries keep their counter ids).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::gate::allowlist::NumberedEntry;
use crate::state::{StateDir, StateError};

/// File name of the filter record in the state directory.
pub const FILTER: &str = "filter.json";

/// What the daemon last put into the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterState {
    /// Entries with their counter ids.
    pub entries: Vec<NumberedEntry>,
    /// Interfaces the gate is attached to.
    pub interfaces: Vec<String>,
    /// Protected ports.
    pub ports: Vec<u16>,
    /// "enforce" or "monitor".
    pub mode: String,
}

impl FilterState {
    /// The record kept in `dir`, if any.
    pub fn read(dir: &StateDir) -> Result<Option<Self>, StateError> {
        dir.read_json(FILTER)
    }

    /// Replaces the record kept in `dir`.
    pub fn save(&self, dir: &StateDir) -> Result<(), StateError> {
        dir.write_json(FILTER, self)
    }

    /// Key → id map for the next compile.
    pub fn ids(&self) -> BTreeMap<String, u32> {
        self.entries.iter().map(|e| (e.entry.key(), e.id)).collect()
    }
}
