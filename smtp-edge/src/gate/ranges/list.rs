//! The Exchange Online list in force and what the updater remembers about it
//! (kept as `ranges.json` in the state directory, replaced atomically), and
//! the names of the updater's files there.

use serde::{Deserialize, Serialize};

use crate::gate::allowlist::exchange;
use crate::state::{StateDir, StateError};

/// The updater's state file ([`RangesState`]) in the state directory.
pub const STATE_FILE: &str = "ranges.json";
/// A list `ranges import` kept before the updater existed (only read).
pub const LEGACY_FILE: &str = "exchange-online.json";
/// The lock held while the state is read, checked and replaced.
pub const LOCK_FILE: &str = "ranges.lock";

/// When the bundled list was taken from the web service (2026-11-01 UTC):
/// the age a fresh install starts from for the staleness warning.
pub const BUNDLED_AS_OF: u64 = 1_793_491_200;

/// Where the list in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Compiled into the binary.
    #[default]
    Bundled,
    /// `smtp-edge ranges import FILE`.
    Imported,
    /// Fetched from the web service.
    Service,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Bundled => "bundled",
            Origin::Imported => "imported",
            Origin::Service => "web service",
        })
    }
}

/// A prefix in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// Canonical CIDR.
    pub prefix: String,
    /// When it was first in force (Unix seconds).
    pub since: u64,
}

/// A prefix Microsoft stopped listing: still allowed until `remove_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRemoval {
    /// Canonical CIDR.
    pub prefix: String,
    /// When an update first lacked it.
    pub unlisted_at: u64,
    /// When it stops being allowed.
    pub remove_at: u64,
}

/// The last check and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRecord {
    /// When.
    pub at: u64,
    /// Whether it succeeded (an unchanged version is a success).
    pub ok: bool,
    /// What happened, for the admin.
    pub outcome: String,
}

/// Everything the updater keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangesState {
    /// Where the list in force came from.
    pub origin: Origin,
    /// The web service instance it was fetched from.
    #[serde(default)]
    pub instance: Option<String>,
    /// The web service version in force (`YYYYMMDDNN`); none for the
    /// bundled or an imported list.
    #[serde(default)]
    pub version: Option<String>,
    /// When the list in force was fetched or imported.
    pub fetched_at: u64,
    /// The endpoint sets it was selected from.
    #[serde(default)]
    pub sets: Vec<i64>,
    /// Their URLs (informational).
    #[serde(default)]
    pub urls: Vec<String>,
    /// Prefixes in force.
    pub ranges: Vec<Listed>,
    /// Prefixes no longer listed, allowed until their date.
    #[serde(default)]
    pub pending_removal: Vec<PendingRemoval>,
    /// The last check.
    #[serde(default)]
    pub last_check: Option<CheckRecord>,
    /// The last successful check.
    #[serde(default)]
    pub last_success: Option<u64>,
    /// Failed checks in a row (for the backoff).
    #[serde(default)]
    pub failures: u32,
    /// When the next scheduled check is due (0: at once).
    #[serde(default)]
    pub next_check: u64,
    /// A version whose list was refused (shrink, sanity): not fetched again
    /// until Microsoft publishes another or the admin accepts it.
    #[serde(default)]
    pub refused: Option<Refused>,
}

/// A published version the updater did not take, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// The version.
    pub version: String,
    /// Why.
    pub reason: String,
    /// Which check refused it (`address_space`, `growth`, `shrink`, …; see
    /// [`super::Refusal::kind`]), for the metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl RangesState {
    /// The state kept in `dir`, if any.
    pub fn read(dir: &StateDir) -> Result<Option<Self>, StateError> {
        dir.read_json(STATE_FILE)
    }

    /// Replaces the state kept in `dir`.
    pub fn save(&self, dir: &StateDir) -> Result<(), StateError> {
        dir.write_json(STATE_FILE, self)
    }

    /// The bundled list, as a fresh install has it.
    pub fn bundled() -> Self {
        RangesState {
            origin: Origin::Bundled,
            instance: None,
            version: None,
            fetched_at: BUNDLED_AS_OF,
            sets: vec![10],
            urls: vec!["*.mail.protection.outlook.com".into()],
            ranges: exchange::BUNDLED
                .iter()
                .map(|p| Listed {
                    prefix: (*p).to_string(),
                    since: BUNDLED_AS_OF,
                })
                .collect(),
            pending_removal: Vec::new(),
            last_check: None,
            last_success: None,
            failures: 0,
            next_check: 0,
            refused: None,
        }
    }

    /// A list imported by the admin before this updater existed
    /// (`exchange-online.json`).
    pub fn from_legacy(sel: &exchange::Selection, at: u64) -> Self {
        RangesState {
            origin: Origin::Imported,
            sets: sel.sets.clone(),
            urls: sel.urls.clone(),
            ranges: sel
                .ranges
                .iter()
                .map(|p| Listed {
                    prefix: p.clone(),
                    since: at,
                })
                .collect(),
            fetched_at: at,
            ..Self::bundled()
        }
    }

    /// Every prefix allowed now: those in force, then those waiting for
    /// their removal date.
    pub fn allowed(&self) -> impl Iterator<Item = &str> {
        self.ranges
            .iter()
            .map(|l| l.prefix.as_str())
            .chain(self.pending_removal.iter().map(|p| p.prefix.as_str()))
    }

    /// The allowed prefixes as networks (for the inbound connectors with the
    /// `exchange-online` source).
    pub fn nets(&self) -> Vec<ipnet::IpNet> {
        self.allowed().filter_map(|p| p.parse().ok()).collect()
    }

    /// The reference for the age of the list: the last successful check,
    /// else when the list was fetched (or bundled).
    pub fn checked_at(&self) -> u64 {
        self.last_success
            .unwrap_or(self.fetched_at)
            .max(self.fetched_at)
    }

    /// Whether no check succeeded for longer than `stale_after` seconds.
    pub fn stale(&self, now: u64, stale_after: u64) -> bool {
        let at = self.checked_at();
        // A check "in the future" means the clock moved back: worth a look.
        at > now.saturating_add(3600) || now.saturating_sub(at) > stale_after
    }

    /// The earliest pending removal date.
    pub fn next_removal(&self) -> Option<u64> {
        self.pending_removal.iter().map(|p| p.remove_at).min()
    }

    /// Drops the pending removals due at `now`; returns their prefixes.
    pub fn expire(&mut self, now: u64) -> Vec<String> {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_removal)
            .into_iter()
            .partition(|p| p.remove_at <= now);
        self.pending_removal = keep;
        due.into_iter().map(|p| p.prefix).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_is_the_published_list() {
        let s = RangesState::bundled();
        let allowed: Vec<&str> = s.allowed().collect();
        assert_eq!(allowed, exchange::BUNDLED.to_vec());
        assert!(!s.stale(BUNDLED_AS_OF + 86_400, 45 * 86_400));
        assert!(s.stale(BUNDLED_AS_OF + 46 * 86_400, 45 * 86_400));
    }

    #[test]
    fn expiry_keeps_what_is_not_due() {
        let mut s = RangesState::bundled();
        s.pending_removal = vec![
            PendingRemoval {
                prefix: "192.0.2.0/24".into(),
                unlisted_at: 0,
                remove_at: 100,
            },
            PendingRemoval {
                prefix: "198.51.100.0/24".into(),
                unlisted_at: 0,
                remove_at: 200,
            },
        ];
        assert_eq!(s.next_removal(), Some(100));
        assert!(s.expire(99).is_empty());
        assert_eq!(s.expire(100), vec!["192.0.2.0/24"]);
        assert_eq!(s.allowed().count(), 7);
        assert_eq!(s.next_removal(), Some(200));
    }

    #[test]
    fn state_round_trips_through_json() {
        let s = RangesState::bundled();
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<RangesState>(&text).unwrap(), s);
    }
}
