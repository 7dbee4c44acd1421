//! Brute-force and rate guards of SMTP AUTH, shared by every session.
//!
//! Failed attempts are counted per source network (an IPv4 /32, an IPv6
//! /64) and per account. Each failure is answered after a delay that
//! doubles with the count (from `failure_delay_ms`, at most
//! [`MAX_DELAY`]); at `max_failures` the source or the account is locked
//! for `lockout_seconds` (454 4.7.0), whatever password comes next. A
//! success clears the source's and the account's counts. The tables are
//! bounded ([`MAX_ENTRIES`]): the oldest entries go first.
//!
//! Each device also has a message rate (per hour, sliding).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest delay before a failure is answered.
pub const MAX_DELAY: Duration = Duration::from_secs(8);

/// Entries kept per table.
pub const MAX_ENTRIES: usize = 100_000;

/// The guard's settings (`[submission]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Failures before a lockout.
    pub max_failures: u32,
    /// How long a lockout lasts.
    pub lockout: Duration,
    /// The delay after the first failure.
    pub failure_delay: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Tables {
    sources: HashMap<IpAddr, Entry>,
    accounts: HashMap<String, Entry>,
    sent: HashMap<String, VecDeque<Instant>>,
}

/// The shared guard.
#[derive(Debug)]
pub struct Guard {
    settings: Mutex<Settings>,
    tables: Mutex<Tables>,
}

/// The source network an address counts for.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
    }
}

fn locked(e: Option<&Entry>, now: Instant) -> Option<Duration> {
    e.and_then(|e| e.locked_until)
        .filter(|&t| t > now)
        .map(|t| t - now)
}

fn prune<K: Clone + Eq + std::hash::Hash>(
    map: &mut HashMap<K, Entry>,
    now: Instant,
    keep: Duration,
) {
    if map.len() < MAX_ENTRIES {
        return;
    }
    map.retain(|_, e| now.duration_since(e.last) < keep || e.locked_until.is_some_and(|t| t > now));
    while map.len() >= MAX_ENTRIES {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, e)| e.last)
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        map.remove(&oldest);
    }
}

impl Guard {
    /// A guard with these settings.
    pub fn new(settings: Settings) -> Guard {
        Guard {
            settings: Mutex::new(settings),
            tables: Mutex::new(Tables::default()),
        }
    }

    /// New settings (a reload); the counts stay.
    pub fn configure(&self, settings: Settings) {
        if let Ok(mut s) = self.settings.lock() {
            *s = settings;
        }
    }

    fn settings(&self) -> Settings {
        self.settings.lock().map_or(
            Settings {
                max_failures: 5,
                lockout: Duration::from_secs(900),
                failure_delay: Duration::from_millis(500),
            },
            |s| *s,
        )
    }

    /// Whether `ip` or `account` is locked now: how much longer.
    pub fn locked(&self, ip: IpAddr, account: &str) -> Option<Duration> {
        let now = Instant::now();
        let t = self.tables.lock().ok()?;
        locked(t.sources.get(&source_key(ip)), now)
            .or_else(|| locked(t.accounts.get(&account.to_ascii_lowercase()), now))
    }

    /// A failed attempt: how long to wait before answering, and whether it
    /// locked the source or the account.
    pub fn failed(&self, ip: IpAddr, account: &str) -> (Duration, bool) {
        let s = self.settings();
        let now = Instant::now();
        let Ok(mut t) = self.tables.lock() else {
            return (s.failure_delay, false);
        };
        let keep = s.lockout.max(Duration::from_secs(3600));
        let bump = |e: &mut Entry| {
            // Counts start again once a lockout has passed, or after an
            // hour of quiet.
            if e.locked_until.is_some_and(|l| l <= now) || now.duration_since(e.last) > keep {
                e.failures = 0;
                e.locked_until = None;
            }
            e.failures += 1;
            e.last = now;
            if e.failures >= s.max_failures {
                e.locked_until = Some(now + s.lockout);
            }
            e.failures
        };
        let fresh = Entry {
            failures: 0,
            last: now,
            locked_until: None,
        };
        prune(&mut t.sources, now, keep);
        prune(&mut t.accounts, now, keep);
        let by_source = bump(t.sources.entry(source_key(ip)).or_insert(fresh));
        let by_account = bump(
            t.accounts
                .entry(account.to_ascii_lowercase())
                .or_insert(fresh),
        );
        let n = by_source.max(by_account);
        let delay = s
            .failure_delay
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(16))
            .min(MAX_DELAY);
        (delay, n >= s.max_failures)
    }

    /// A successful AUTH: the source's and the account's counts go.
    pub fn succeeded(&self, ip: IpAddr, account: &str) {
        if let Ok(mut t) = self.tables.lock() {
            t.sources.remove(&source_key(ip));
            t.accounts.remove(&account.to_ascii_lowercase());
        }
    }

    /// Takes one message of `device`'s rate (`per_hour`); `false` when the
    /// last hour already holds that many.
    pub fn take_message(&self, device: &str, per_hour: u32) -> bool {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        let Ok(mut t) = self.tables.lock() else {
            return true;
        };
        if t.sent.len() >= MAX_ENTRIES && !t.sent.contains_key(device) {
            t.sent
                .retain(|_, q| q.back().is_some_and(|&l| now.duration_since(l) < hour));
        }
        let q = t.sent.entry(device.to_ascii_lowercase()).or_default();
        while q.front().is_some_and(|&f| now.duration_since(f) >= hour) {
            q.pop_front();
        }
        if q.len() >= per_hour as usize {
            return false;
        }
        q.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(max: u32, lockout_ms: u64) -> Guard {
        Guard::new(Settings {
            max_failures: max,
            lockout: Duration::from_millis(lockout_ms),
            failure_delay: Duration::from_millis(100),
        })
    }

    #[test]
    fn failures_grow_the_delay_then_lock_and_the_lock_expires() {
        let g = guard(3, 200);
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(g.failed(ip, "a"), (Duration::from_millis(100), false));
        assert_eq!(g.failed(ip, "b"), (Duration::from_millis(200), false));
        // The source is at 3: locked, for any account.
        assert_eq!(g.failed(ip, "c"), (Duration::from_millis(400), true));
        assert!(g.locked(ip, "d").is_some());
        assert!(g.locked("192.0.2.8".parse().expect("ip"), "d").is_none());
        std::thread::sleep(Duration::from_millis(250));
        assert!(g.locked(ip, "d").is_none(), "the lockout expires");
        // A success clears the counts.
        g.failed(ip, "a");
        g.succeeded(ip, "a");
        assert_eq!(g.failed(ip, "a"), (Duration::from_millis(100), false));
    }

    #[test]
    fn accounts_lock_across_sources_and_v6_counts_per_64() {
        let g = guard(2, 10_000);
        g.failed("192.0.2.1".parse().expect("ip"), "Scanner");
        let (_, locked) = g.failed("198.51.100.1".parse().expect("ip"), "scanner");
        assert!(locked);
        assert!(
            g.locked("203.0.113.1".parse().expect("ip"), "SCANNER")
                .is_some()
        );
        let g = guard(2, 10_000);
        g.failed("2001:db8::1".parse().expect("ip"), "x");
        g.failed("2001:db8::ffff".parse().expect("ip"), "y");
        assert!(g.locked("2001:db8::2".parse().expect("ip"), "z").is_some());
        assert!(
            g.locked("2001:db8:1::2".parse().expect("ip"), "z")
                .is_none()
        );
        assert_eq!(
            g.failed("2001:db8:2::1".parse().expect("ip"), "w").0,
            Duration::from_millis(100),
            "another /64 and another account start afresh"
        );
        assert_eq!(
            g.failed("2001:db8::3".parse().expect("ip"), "v").0,
            Duration::from_millis(400),
            "a new account from a source with two failures: the larger count"
        );
    }

    #[test]
    fn the_delay_is_capped_and_rates_slide() {
        let g = guard(100, 1000);
        let ip: IpAddr = "192.0.2.9".parse().expect("ip");
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            last = g.failed(ip, "a").0;
        }
        assert_eq!(last, MAX_DELAY);
        assert!(g.take_message("d", 2));
        assert!(g.take_message("D", 2));
        assert!(!g.take_message("d", 2));
        assert!(g.take_message("e", 2));
    }
}
