//! What an update does to the list in force, decided without I/O: sanity
//! checks on the new list, then additions at once, removals after a grace
//! period, a limit on how much one update may take away, and caps on the
//! address space a list may allow and one update may add ([`space_check`]).

use std::collections::{BTreeSet, HashMap};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::list::{Listed, Origin, PendingRemoval, RangesState};
use crate::gate::allowlist::exchange::Selection;

/// The broadest IPv4 prefix a list may hold.
pub const MIN_V4_PREFIX: u8 = 8;
/// The broadest IPv6 prefix a list may hold.
pub const MIN_V6_PREFIX: u8 = 24;

/// The most IPv4 addresses a list may allow in all (pending removals
/// included): 2^22 = 4,194,304. Microsoft's port-25 list is 491,520
/// (40.92.0.0/15, 40.107.0.0/16, 52.100.0.0/14, 104.47.0.0/17): a margin of
/// more than eight times, yet a thousandth of the IPv4 internet — about 220
/// public /8s, or a single /8, are refused.
pub const MAX_V4_ADDRESSES: u64 = 1 << 22;
/// The most IPv4 addresses one update may add to what is allowed: 2^21 =
/// 2,097,152 (four times Microsoft's whole list), so the total cap cannot
/// be reached in one step from the real list.
pub const MAX_V4_GROWTH: u64 = 1 << 21;
/// The most IPv6 /64 networks a list may allow in all: 2^24 (256 /48s, a
/// /40). Microsoft's list is two /48s (2^17 /64s): a margin of 128 times.
pub const MAX_V6_64S: u128 = 1 << 24;
/// The most IPv6 /64 networks one update may add: 2^23 (128 /48s).
pub const MAX_V6_GROWTH_64S: u128 = 1 << 23;

/// Why a new list is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No prefix at all.
    #[error("the new list is empty")]
    Empty,
    /// Exchange Online always publishes IPv4 sources.
    #[error("the new list has no IPv4 prefix")]
    NoIpv4,
    /// A prefix too broad to be a mail service's sources.
    #[error(
        "the new list holds {0}, broader than /{MIN_V4_PREFIX} (IPv4) or /{MIN_V6_PREFIX} (IPv6)"
    )]
    TooBroad(String),
    /// A prefix that does not parse.
    #[error("the new list holds `{0}`, not a CIDR prefix")]
    Malformed(String),
    /// A private, loopback, link-local, multicast or reserved prefix: no
    /// mail service sends from there (refused unless the service is on
    /// loopback, as recorded answers in tests and labs are).
    #[error(
        "the new list holds {0}, a special-purpose range (private, loopback, link-local, multicast or reserved)"
    )]
    SpecialPurpose(String),
    /// The gate cannot hold it.
    #[error("the gate cannot take the new list: {0}")]
    GateFull(String),
    /// More address space in all than a mail service's sources
    /// ([`MAX_V4_ADDRESSES`], [`MAX_V6_64S`]).
    #[error(
        "the new list would allow {total} {unit} in all, more than the cap of {max} \
         (a hostile or broken answer would open port 25 to much of the internet)"
    )]
    AddressSpace {
        /// "IPv4 addresses" or "IPv6 /64 networks".
        unit: &'static str,
        /// What it would allow.
        total: u128,
        /// The cap.
        max: u128,
    },
    /// Too much new address space at once ([`MAX_V4_GROWTH`],
    /// [`MAX_V6_GROWTH_64S`]).
    #[error(
        "the new list would add {growth} {unit} at once, more than the cap of {max} per update"
    )]
    Growth {
        /// "IPv4 addresses" or "IPv6 /64 networks".
        unit: &'static str,
        /// What it would add.
        growth: u128,
        /// The cap.
        max: u128,
    },
    /// Too much would go at once (counting the removals still waiting for
    /// their date, so the limit cannot be stepped around).
    #[error(
        "the update would remove {removing} of {of} prefixes ({percent}%, counting those already waiting for removal), \
         more than ranges.max_shrink = {max}%; check the list and run `smtp-edge ranges update --accept-shrink` to take it"
    )]
    Shrink {
        /// Prefixes the update would remove.
        removing: usize,
        /// Prefixes in force.
        of: usize,
        /// The share.
        percent: u64,
        /// The limit.
        max: u64,
    },
}

impl Refusal {
    /// A short name for the metrics (`ranges_refused{reason=…}`).
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Empty | Refusal::NoIpv4 | Refusal::Malformed(_) => "malformed",
            Refusal::TooBroad(_) => "too_broad",
            Refusal::SpecialPurpose(_) => "special_purpose",
            Refusal::GateFull(_) => "gate_full",
            Refusal::Shrink { .. } => "shrink",
            Refusal::AddressSpace { .. } => "address_space",
            Refusal::Growth { .. } => "growth",
        }
    }
}

/// The address space a set of prefixes covers, overlaps counted once:
/// IPv4 addresses, and IPv6 /64 networks (a longer prefix counts as a
/// part of one, rounded up in the sum).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Space {
    /// IPv4 addresses.
    pub v4: u64,
    /// IPv6 /64 networks.
    pub v6_64s: u128,
}

impl Space {
    /// The space of `prefixes` (those that do not parse count nothing).
    pub fn of<'a>(prefixes: impl IntoIterator<Item = &'a str>) -> Space {
        let nets: Vec<IpNet> = prefixes
            .into_iter()
            .filter_map(|p| p.parse::<IpNet>().ok())
            .collect();
        let mut v4 = 0u64;
        let mut v6 = 0u128;
        for n in IpNet::aggregate(&nets) {
            match n {
                IpNet::V4(n) => v4 = v4.saturating_add(1u64 << (32 - u32::from(n.prefix_len()))),
                IpNet::V6(n) => match 128 - u32::from(n.prefix_len()) {
                    128 => v6 = u128::MAX,
                    bits => v6 = v6.saturating_add(1u128 << bits),
                },
            }
        }
        Space {
            v4,
            v6_64s: v6.div_ceil(1u128 << 64),
        }
    }
}

/// Refuses a next state that would allow more than the caps, or add more
/// than the growth caps to what `current` allows.
pub fn space_check(current: &RangesState, next: &RangesState) -> Result<(), Refusal> {
    let before = Space::of(current.allowed());
    let after = Space::of(next.allowed());
    let union = Space::of(current.allowed().chain(next.allowed()));
    const V4: &str = "IPv4 addresses";
    const V6: &str = "IPv6 /64 networks";
    if u128::from(after.v4) > u128::from(MAX_V4_ADDRESSES) {
        return Err(Refusal::AddressSpace {
            unit: V4,
            total: after.v4.into(),
            max: MAX_V4_ADDRESSES.into(),
        });
    }
    if after.v6_64s > MAX_V6_64S {
        return Err(Refusal::AddressSpace {
            unit: V6,
            total: after.v6_64s,
            max: MAX_V6_64S,
        });
    }
    let grow4 = union.v4.saturating_sub(before.v4);
    if grow4 > MAX_V4_GROWTH {
        return Err(Refusal::Growth {
            unit: V4,
            growth: grow4.into(),
            max: MAX_V4_GROWTH.into(),
        });
    }
    let grow6 = union.v6_64s.saturating_sub(before.v6_64s);
    if grow6 > MAX_V6_GROWTH_64S {
        return Err(Refusal::Growth {
            unit: V6,
            growth: grow6,
            max: MAX_V6_GROWTH_64S,
        });
    }
    Ok(())
}

/// The limits an update is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Seconds a prefix no longer listed stays allowed.
    pub removal_grace: u64,
    /// Percent of the prefixes in force one update may remove.
    pub max_shrink: u64,
    /// The admin has seen the shrink and takes it.
    pub accept_shrink: bool,
    /// The list comes from the real service: special-purpose ranges refused.
    pub strict: bool,
}

/// What an update changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// Prefixes allowed from now on.
    pub added: Vec<String>,
    /// Prefixes no longer listed, with the date they stop being allowed.
    pub scheduled: Vec<(String, u64)>,
    /// Prefixes that were waiting for removal and are listed again.
    pub restored: Vec<String>,
    /// Prefixes no longer allowed from now on (their grace ended).
    pub expired: Vec<String>,
}

impl Changes {
    /// Whether the set of allowed prefixes changes (what the kernel and the
    /// inbound connectors must be told).
    pub fn allowed_changes(&self) -> bool {
        !self.added.is_empty() || !self.expired.is_empty()
    }

    /// Whether anything changes at all.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.scheduled.is_empty()
            && self.restored.is_empty()
            && self.expired.is_empty()
    }
}

/// Special-purpose IPv4 ranges (RFC 6890) a mail service never sends from.
const SPECIAL_V4: [&str; 9] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// Special-purpose IPv6 ranges (RFC 6890): unspecified, loopback and
/// IPv4-mapped (`::/8` holds them), unique local, link-local, multicast.
const SPECIAL_V6: [&str; 4] = ["::/8", "fc00::/7", "fe80::/10", "ff00::/8"];

fn special(net: &IpNet) -> bool {
    let overlaps = |list: &[&str]| {
        list.iter()
            .filter_map(|s| s.parse::<IpNet>().ok())
            .any(|s| s.contains(net) || net.contains(&s))
    };
    match net {
        IpNet::V4(_) => overlaps(&SPECIAL_V4),
        IpNet::V6(_) => overlaps(&SPECIAL_V6),
    }
}

/// Checks a new list before anything reaches the kernel. `strict`: the list
/// comes from the real service, so special-purpose ranges are refused too.
pub fn sanity(sel: &Selection, strict: bool) -> Result<(), Refusal> {
    if sel.ranges.is_empty() {
        return Err(Refusal::Empty);
    }
    let mut v4 = false;
    for r in &sel.ranges {
        let net: IpNet = r.parse().map_err(|_| Refusal::Malformed(r.clone()))?;
        let too_broad = match net {
            IpNet::V4(n) => {
                v4 = true;
                n.prefix_len() < MIN_V4_PREFIX
            }
            IpNet::V6(n) => n.prefix_len() < MIN_V6_PREFIX,
        };
        if too_broad {
            return Err(Refusal::TooBroad(r.clone()));
        }
        if strict && special(&net) {
            return Err(Refusal::SpecialPurpose(r.clone()));
        }
    }
    if !v4 {
        return Err(Refusal::NoIpv4);
    }
    Ok(())
}

/// Applies a checked new list to the state in force: returns the next
/// state and what changed. Pending removals whose grace ended at `now` go
/// too. The state's bookkeeping of checks is left to the caller.
pub fn apply(
    current: &RangesState,
    sel: &Selection,
    version: Option<&str>,
    origin: Origin,
    now: u64,
    limits: Limits,
) -> Result<(RangesState, Changes), Refusal> {
    sanity(sel, limits.strict)?;
    let new: BTreeSet<&str> = sel.ranges.iter().map(String::as_str).collect();
    // Removed by this update, plus those still waiting for their date that
    // it does not list again: what will be gone once the graces end.
    let removing = current
        .ranges
        .iter()
        .map(|l| l.prefix.as_str())
        .chain(current.pending_removal.iter().map(|p| p.prefix.as_str()))
        .filter(|p| !new.contains(p))
        .count();
    let of = current.ranges.len() + current.pending_removal.len();
    if of > 0 && !limits.accept_shrink && (removing as u64) * 100 > limits.max_shrink * of as u64 {
        return Err(Refusal::Shrink {
            removing,
            of,
            percent: (removing as u64 * 100).div_ceil(of as u64),
            max: limits.max_shrink,
        });
    }
    let mut changes = Changes::default();
    let mut next = current.clone();
    next.origin = origin;
    next.version = version.map(str::to_string);
    next.fetched_at = now;
    next.sets = sel.sets.clone();
    next.urls = sel.urls.clone();
    // In force: the new list in its own order, each keeping its first date.
    let since: HashMap<&str, u64> = current
        .ranges
        .iter()
        .map(|l| (l.prefix.as_str(), l.since))
        .collect();
    next.ranges = sel
        .ranges
        .iter()
        .map(|p| Listed {
            prefix: p.clone(),
            since: since.get(p.as_str()).copied().unwrap_or(now),
        })
        .collect();
    // Pending: those still unlisted keep their date; listed again, restored.
    let mut pending = Vec::new();
    for p in &current.pending_removal {
        if new.contains(p.prefix.as_str()) {
            changes.restored.push(p.prefix.clone());
        } else {
            pending.push(p.clone());
        }
    }
    for l in &current.ranges {
        if !new.contains(l.prefix.as_str()) {
            let remove_at = now.saturating_add(limits.removal_grace);
            changes.scheduled.push((l.prefix.clone(), remove_at));
            pending.push(PendingRemoval {
                prefix: l.prefix.clone(),
                unlisted_at: now,
                remove_at,
            });
        }
    }
    next.pending_removal = pending;
    let was_allowed: BTreeSet<&str> = current.allowed().collect();
    changes.added = sel
        .ranges
        .iter()
        .filter(|p| !was_allowed.contains(p.as_str()))
        .cloned()
        .collect();
    changes.expired = next.expire(now);
    space_check(current, &next)?;
    Ok((next, changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(ranges: &[&str]) -> Selection {
        Selection {
            sets: vec![10],
            ranges: ranges.iter().map(|s| s.to_string()).collect(),
            urls: vec![],
        }
    }

    fn state(ranges: &[&str]) -> RangesState {
        let mut s = RangesState::bundled();
        s.ranges = ranges
            .iter()
            .map(|p| Listed {
                prefix: p.to_string(),
                since: 5,
            })
            .collect();
        s
    }

    const LIMITS: Limits = Limits {
        removal_grace: 1000,
        max_shrink: 25,
        accept_shrink: false,
        strict: true,
    };

    fn sanity_strict(s: &Selection) -> Result<(), Refusal> {
        sanity(s, true)
    }

    #[test]
    fn special_purpose_ranges_only_from_a_loopback_service() {
        for p in [
            "10.1.0.0/16",
            "127.0.66.0/24",
            "192.168.1.0/24",
            "0.0.0.0/8",
            "224.0.0.0/24",
            "::ffff:10.0.0.0/104",
            "fd00::/48",
            "fe80::/64",
        ] {
            let s = sel(&["192.0.2.0/24", p]);
            assert_eq!(
                sanity(&s, true),
                Err(Refusal::SpecialPurpose(p.to_string())),
                "{p}"
            );
            assert!(sanity(&s, false).is_ok(), "{p}");
        }
        assert!(sanity(&sel(&["40.92.0.0/15", "2a01:111:f400::/48"]), true).is_ok());
    }

    #[test]
    fn sanity_checks() {
        assert_eq!(sanity_strict(&sel(&[])), Err(Refusal::Empty));
        assert_eq!(
            sanity_strict(&sel(&["2001:db8::/32"])),
            Err(Refusal::NoIpv4)
        );
        assert_eq!(
            sanity_strict(&sel(&["192.0.2.0/24", "0.0.0.0/0"])),
            Err(Refusal::TooBroad("0.0.0.0/0".into()))
        );
        assert_eq!(
            sanity_strict(&sel(&["12.0.0.0/7"])),
            Err(Refusal::TooBroad("12.0.0.0/7".into()))
        );
        assert_eq!(
            sanity_strict(&sel(&["11.0.0.0/8", "2001:d00::/23"])),
            Err(Refusal::TooBroad("2001:d00::/23".into()))
        );
        assert!(sanity_strict(&sel(&["11.0.0.0/8", "2001:db8::/24"])).is_ok());
        assert_eq!(
            sanity_strict(&sel(&["192.0.2.1-192.0.2.9"])),
            Err(Refusal::Malformed("192.0.2.1-192.0.2.9".into()))
        );
    }

    #[test]
    fn additions_at_once_removals_after_grace() {
        let cur = state(&[
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "11.1.0.0/16",
        ]);
        let new = sel(&[
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "11.2.0.0/16",
        ]);
        let (next, ch) =
            apply(&cur, &new, Some("2026120100"), Origin::Service, 100, LIMITS).unwrap();
        assert_eq!(ch.added, vec!["11.2.0.0/16"]);
        assert_eq!(ch.scheduled, vec![("11.1.0.0/16".to_string(), 1100)]);
        assert!(ch.expired.is_empty() && ch.restored.is_empty());
        // Still allowed during the grace.
        let allowed: Vec<&str> = next.allowed().collect();
        assert!(allowed.contains(&"11.1.0.0/16") && allowed.contains(&"11.2.0.0/16"));
        assert_eq!(next.version.as_deref(), Some("2026120100"));
        assert_eq!(next.ranges[0].since, 5, "first date kept");
        assert_eq!(next.ranges[3].since, 100);
        // The same list again before the date: nothing new, the date stays.
        let (again, ch) = apply(
            &next,
            &new,
            Some("2026120101"),
            Origin::Service,
            500,
            LIMITS,
        )
        .unwrap();
        assert!(ch.is_empty(), "{ch:?}");
        assert_eq!(again.pending_removal[0].remove_at, 1100);
        // After the date it goes.
        let (gone, ch) = apply(
            &again,
            &new,
            Some("2026120102"),
            Origin::Service,
            1100,
            LIMITS,
        )
        .unwrap();
        assert_eq!(ch.expired, vec!["11.1.0.0/16"]);
        assert!(ch.allowed_changes());
        assert!(!gone.allowed().any(|p| p == "11.1.0.0/16"));
    }

    #[test]
    fn a_prefix_listed_again_is_restored() {
        let cur = state(&[
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "11.1.0.0/16",
        ]);
        let without = sel(&["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]);
        let (mid, _) = apply(&cur, &without, None, Origin::Service, 100, LIMITS).unwrap();
        let (back, ch) = apply(
            &mid,
            &sel(&[
                "192.0.2.0/24",
                "198.51.100.0/24",
                "203.0.113.0/24",
                "11.1.0.0/16",
            ]),
            None,
            Origin::Service,
            200,
            LIMITS,
        )
        .unwrap();
        assert_eq!(ch.restored, vec!["11.1.0.0/16"]);
        assert!(ch.added.is_empty(), "it never stopped being allowed");
        assert!(back.pending_removal.is_empty());
    }

    #[test]
    fn shrink_limit() {
        let cur = state(&[
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "11.1.0.0/16",
        ]);
        // One of four: 25 %, allowed.
        assert!(
            apply(
                &cur,
                &sel(&["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]),
                None,
                Origin::Service,
                1,
                LIMITS
            )
            .is_ok()
        );
        // Stepping: one more after the first, while it still waits: two
        // of four would be gone.
        let (mid, _) = apply(
            &cur,
            &sel(&["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]),
            None,
            Origin::Service,
            1,
            LIMITS,
        )
        .unwrap();
        assert!(matches!(
            apply(
                &mid,
                &sel(&["192.0.2.0/24", "198.51.100.0/24"]),
                None,
                Origin::Service,
                2,
                LIMITS
            ),
            Err(Refusal::Shrink {
                removing: 2,
                of: 4,
                ..
            })
        ));
        // Two of four: 50 %, refused unless accepted.
        let small = sel(&["192.0.2.0/24", "198.51.100.0/24"]);
        let e = apply(&cur, &small, None, Origin::Service, 1, LIMITS).unwrap_err();
        assert_eq!(
            e,
            Refusal::Shrink {
                removing: 2,
                of: 4,
                percent: 50,
                max: 25
            }
        );
        assert!(e.to_string().contains("--accept-shrink"), "{e}");
        let accept = Limits {
            accept_shrink: true,
            ..LIMITS
        };
        let (_, ch) = apply(&cur, &small, None, Origin::Service, 1, accept).unwrap();
        assert_eq!(ch.scheduled.len(), 2);
    }

    fn bundled_strs() -> Vec<String> {
        crate::config::ranges::BUNDLED
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn the_real_list_is_well_within_the_caps() {
        let real = Space::of(crate::config::ranges::BUNDLED);
        assert_eq!(real.v4, 491_520);
        assert_eq!(real.v6_64s, 2 << 16);
        // From nothing (an empty state) to the real list: within the growth.
        let mut empty = RangesState::bundled();
        empty.ranges.clear();
        let sel = Selection {
            sets: vec![10],
            ranges: bundled_strs(),
            urls: vec![],
        };
        assert!(apply(&empty, &sel, None, Origin::Service, 1, LIMITS).is_ok());
        // And from the bundled list to itself.
        let cur = RangesState::bundled();
        assert!(apply(&cur, &sel, None, Origin::Service, 1, LIMITS).is_ok());
    }

    #[test]
    fn two_hundred_and_twenty_slash_eights_are_refused() {
        let mut ranges = bundled_strs();
        ranges.extend(
            (1..=223u8)
                .filter(|i| ![10, 100, 127].contains(i))
                .take(220)
                .map(|i| format!("{i}.0.0.0/8")),
        );
        // Each /8 passes the per-prefix check; their sum does not.
        let hostile = Selection {
            sets: vec![10],
            ranges,
            urls: vec![],
        };
        assert!(sanity(&hostile, false).is_ok());
        let cur = RangesState::bundled();
        let accept = Limits {
            accept_shrink: true,
            strict: false,
            ..LIMITS
        };
        let e = apply(&cur, &hostile, None, Origin::Service, 1, accept).unwrap_err();
        assert!(
            matches!(e, Refusal::AddressSpace { max, .. } if max == 1 << 22),
            "{e}"
        );
        assert_eq!(e.kind(), "address_space");
        assert!(e.to_string().contains("IPv4 addresses in all"), "{e}");
        // A single /8 is already too much.
        let mut one = bundled_strs();
        one.push("11.0.0.0/8".into());
        let one = Selection {
            sets: vec![10],
            ranges: one,
            urls: vec![],
        };
        assert!(matches!(
            apply(&cur, &one, None, Origin::Service, 1, LIMITS),
            Err(Refusal::AddressSpace { .. })
        ));
        // IPv6: a /32 is 2^32 /64s.
        let mut v6 = bundled_strs();
        v6.push("2001:db8::/32".into());
        let v6 = Selection {
            sets: vec![10],
            ranges: v6,
            urls: vec![],
        };
        let e = apply(&cur, &v6, None, Origin::Service, 1, LIMITS).unwrap_err();
        assert!(e.to_string().contains("IPv6 /64 networks"), "{e}");
    }

    #[test]
    fn growth_just_over_the_cap_is_refused() {
        let cur = RangesState::bundled();
        let with = |extra: &[&str]| {
            let mut r = bundled_strs();
            r.extend(extra.iter().map(|s| s.to_string()));
            Selection {
                sets: vec![10],
                ranges: r,
                urls: vec![],
            }
        };
        // 2^21 more: exactly the cap, taken.
        assert!(
            apply(
                &cur,
                &with(&["20.0.0.0/11"]),
                None,
                Origin::Service,
                1,
                LIMITS
            )
            .is_ok()
        );
        // 2^21 + 256: refused, though the total (2,589,952) is under its cap.
        let e = apply(
            &cur,
            &with(&["20.0.0.0/11", "21.0.0.0/24"]),
            None,
            Origin::Service,
            1,
            LIMITS,
        )
        .unwrap_err();
        assert_eq!(
            e,
            Refusal::Growth {
                unit: "IPv4 addresses",
                growth: (1 << 21) + 256,
                max: 1 << 21
            }
        );
        // Overlaps count once: a prefix inside one in force adds nothing.
        assert!(
            apply(
                &cur,
                &with(&["20.0.0.0/11", "40.92.1.0/24", "52.100.0.0/15"]),
                None,
                Origin::Service,
                1,
                LIMITS
            )
            .is_ok()
        );
        // Stepping up is bounded by the total: a second step of 2^21 from
        // 2,588,672 would reach 4,685,824.
        let (mid, _) = apply(
            &cur,
            &with(&["20.0.0.0/11"]),
            None,
            Origin::Service,
            1,
            LIMITS,
        )
        .unwrap();
        let e = apply(
            &mid,
            &with(&["20.0.0.0/11", "22.0.0.0/11"]),
            None,
            Origin::Service,
            2,
            LIMITS,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                Refusal::AddressSpace {
                    total: 4_685_824,
                    ..
                }
            ),
            "{e}"
        );
    }
}
