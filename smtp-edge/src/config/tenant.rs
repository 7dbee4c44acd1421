//! A connector's Microsoft 365 tenants as configured: who may send, what the
//! check does (`enforce`, `monitor`, `off`) and what proves a tenant
//! (`stamp`, `stamp-and-dkim`). The check itself is the
//! receiving side's (`inbound::tenant`, which re-exports these types).

use std::fmt;

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// What a connector does with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse what is not from an allowed tenant (550 5.7.1).
    Enforce,
    /// Accept everything, log, add a header naming the outcome.
    Monitor,
    /// No check.
    Off,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
            Mode::Off => "off",
        })
    }
}

/// One allowed tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    /// Its id (a GUID, lower case).
    pub id: String,
    /// The domains its DKIM signatures may name (`d=`), lower case: its
    /// `*.onmicrosoft.com` domain and the accepted domains it signs for.
    pub domains: Vec<String>,
}

/// What proves that a message comes from an allowed tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Proof {
    /// Exchange Online's `X-MS-Exchange-CrossTenant-Id` stamp names an
    /// allowed tenant (mail EOP relays inbound: signed by its author or not
    /// at all). The default of a connector without `relay`.
    Stamp,
    /// The stamp and a DKIM signature of one of that tenant's domains (mail
    /// our tenant sends out through this host). The default with `relay` or recipient domains beyond the accepted ones.
    StampAndDkim,
}

impl fmt::Display for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proof::Stamp => "stamp",
            Proof::StampAndDkim => "stamp-and-dkim",
        })
    }
}

/// The check one inbound connector makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Enforce or monitor (a rule is never built for `off`).
    pub mode: Mode,
    /// What proves a tenant on this connector.
    pub proof: Proof,
    /// Who may send.
    pub tenants: Vec<Tenant>,
}

/// Whether `s` is a GUID as Microsoft writes tenant ids
/// (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hexadecimal).
pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// One `tenants = [{ id = "…", domains = ["…"] }]` entry as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// The tenant id (a GUID).
    pub id: Spanned<String>,
    /// Its `*.onmicrosoft.com` domain and the accepted domains it signs for.
    pub domains: Vec<Spanned<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids() {
        assert!(is_guid("11111111-2222-3333-4444-555555555555"));
        assert!(is_guid("ABCDEF00-2222-3333-4444-555555555555"));
        assert!(!is_guid("11111111-2222-3333-4444-55555555555"));
        assert!(!is_guid("11111111x2222-3333-4444-555555555555"));
        assert!(!is_guid("g1111111-2222-3333-4444-555555555555"));
    }
}
