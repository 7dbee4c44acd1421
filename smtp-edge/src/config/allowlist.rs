//! `[allowlist]`: whether the Exchange Online ranges are in, and the static
//! entries of the gate.

use serde::Deserialize;
use toml::Spanned;

use super::error::{At, ConfigError};
use crate::gate::allowlist::{Entry, Origin};

/// One `[[allowlist.entries]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntry {
    /// Address, CIDR, address/dotted-mask or start-end range.
    pub source: Spanned<String>,
    /// Free text shown in listings and stats.
    #[serde(default)]
    pub comment: String,
}

/// `[allowlist]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Allowlist {
    /// Include the Exchange Online port-25 ranges (bundled, or the imported ones).
    pub exchange_online: bool,
    /// Static entries.
    pub entries: Vec<RawEntry>,
}

impl Default for Allowlist {
    fn default() -> Self {
        Self {
            exchange_online: true,
            entries: Vec::new(),
        }
    }
}

/// Parses the static entries; each one that does not parse is an error at
/// its `source`.
pub(super) fn validate(raw: &Allowlist, at: At<'_>, errors: &mut Vec<ConfigError>) -> Vec<Entry> {
    let mut out = Vec::new();
    for e in &raw.entries {
        match Entry::parse(Origin::Config, e.source.get_ref(), &e.comment) {
            Ok(entry) => out.push(entry),
            Err(err) => errors.push(at(e.source.span(), err.to_string())),
        }
    }
    out
}
