//! `[allowlist]`: whether the Exchange Online ranges are in, and the static
//! entries of the gate.

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::error::{At, ConfigError};
use crate::address::spec::{self, SpecError};

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

/// One static entry, parsed (the gate makes it an allowlist entry of the
/// configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticEntry {
    /// Canonical text (CIDR or start-end range), the entry's identity.
    pub source: String,
    /// Free text.
    pub comment: String,
    /// The CIDR blocks it covers.
    pub nets: Vec<IpNet>,
}

impl StaticEntry {
    /// Parses `source` in any accepted form.
    pub fn parse(source: &str, comment: &str) -> Result<Self, SpecError> {
        Ok(StaticEntry {
            source: spec::canonical(source)?,
            comment: comment.to_string(),
            nets: spec::parse(source)?,
        })
    }
}

/// Parses the static entries; each one that does not parse is an error at
/// its `source`.
pub(super) fn validate(
    raw: &Allowlist,
    at: At<'_>,
    errors: &mut Vec<ConfigError>,
) -> Vec<StaticEntry> {
    let mut out = Vec::new();
    for e in &raw.entries {
        match StaticEntry::parse(e.source.get_ref(), &e.comment) {
            Ok(entry) => out.push(entry),
            Err(err) => errors.push(at(e.source.span(), err.to_string())),
        }
    }
    out
}
