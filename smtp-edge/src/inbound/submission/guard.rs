//! Brute-force and rate guards of SMTP AUTH, shared by every session.
//!
//! Attempts are counted per source network (an IPv4 /32, an IPv6 /64). An
//! attempt is counted as a failure *before* its password is checked (and
//! the count given back when it succeeds), so connections racing in
//! parallel cannot get more checks than `max_failures` between them; at
//! `max_failures` the source is locked for `lockout_seconds` (454 4.7.0),
//! whatever password comes next, without any check. Each failure is
//! answered after a delay that doubles with the count (from
//! `failure_delay_ms`, at most [`MAX_DELAY`]). Failures are also counted
//! per existing account, and the delay follows the larger count, so
//! guesses spread over many sources slow down too; but accounts are not
//! locked as such: generated passwords are far beyond guessing, and a lock
//! by account name would let anyone who can connect lock a device out (a
//! delay only ever slows failures). At most
//! [`VERIFY_SLOTS`] password checks (Argon2, 19 MiB each) run at once, host
//! wide. The table is bounded ([`MAX_ENTRIES`]): idle, then oldest unlocked
//! entries go first.
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

/// Password checks running at once.
pub const VERIFY_SLOTS: usize = 2;

/// The guard's settings are the configuration's (`[submission]`).
pub use crate::config::submission::GuardSettings as Settings;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct Tables {
    sources: HashMap<IpAddr, Entry>,
    /// Failures per existing device (names at most 64 octets).
    accounts: HashMap<String, Entry>,
    sent: HashMap<String, VecDeque<Instant>>,
}

/// The shared guard.
#[derive(Debug)]
pub struct Guard {
    settings: Mutex<Settings>,
    tables: Mutex<Tables>,
    verify: tokio::sync::Semaphore,
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

fn prune<K: Clone + Eq + std::hash::Hash>(
    map: &mut HashMap<K, Entry>,
    now: Instant,
    keep: Duration,
) {
    if map.len() < MAX_ENTRIES {
        return;
    }
    let locked = |e: &Entry| e.locked_until.is_some_and(|t| t > now);
    map.retain(|_, e| now.duration_since(e.last) < keep || locked(e));
    while map.len() >= MAX_ENTRIES {
        // The oldest unlocked entry, else the oldest.
        let victim = map
            .iter()
            .filter(|(_, e)| !locked(e))
            .min_by_key(|(_, e)| e.last)
            .or_else(|| map.iter().min_by_key(|(_, e)| e.last))
            .map(|(k, _)| k.clone());
        let Some(k) = victim else { break };
        map.remove(&k);
    }
}

impl Guard {
    /// A guard with these settings.
    pub fn new(settings: Settings) -> Guard {
        Guard {
            settings: Mutex::new(settings),
            tables: Mutex::new(Tables::default()),
            verify: tokio::sync::Semaphore::new(VERIFY_SLOTS),
        }
    }

    /// New settings (a reload in force); the counts stay.
    pub fn configure(&self, settings: Settings) {
        if let Ok(mut s) = self.settings.lock() {
            *s = settings;
        }
    }

    fn settings(&self) -> Settings {
        self.settings.lock().map_or(Settings::default(), |s| *s)
    }

    /// Waits for one of the host's password-check slots.
    pub async fn verify_slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.verify.acquire().await.ok()
    }

    /// An attempt from `ip` begins: `Err(time left)` when the source is
    /// locked (check nothing); else it is counted as a failure until
    /// [`Guard::succeeded`] gives it back.
    pub fn reserve(&self, ip: IpAddr) -> Result<(), Duration> {
        let s = self.settings();
        let now = Instant::now();
        let Ok(mut t) = self.tables.lock() else {
            return Ok(());
        };
        let keep = s.lockout.max(Duration::from_secs(3600));
        prune(&mut t.sources, now, keep);
        let e = t.sources.entry(source_key(ip)).or_insert(Entry {
            failures: 0,
            last: now,
            locked_until: None,
        });
        if let Some(until) = e.locked_until {
            if until > now {
                return Err(until - now);
            }
            // The lockout has passed: counts start again.
            e.failures = 0;
            e.locked_until = None;
        } else if now.duration_since(e.last) > keep {
            e.failures = 0;
        }
        e.failures += 1;
        e.last = now;
        if e.failures >= s.max_failures {
            e.locked_until = Some(now + s.lockout);
        }
        Ok(())
    }

    /// A failed check from `ip` for `account` (an existing device's name):
    /// how long to wait before answering, and whether the source is locked
    /// now.
    pub fn failed(&self, ip: IpAddr, account: Option<&str>) -> (Duration, bool) {
        let s = self.settings();
        let now = Instant::now();
        let Ok(mut t) = self.tables.lock() else {
            return (s.failure_delay, false);
        };
        let keep = s.lockout.max(Duration::from_secs(3600));
        let (by_source, locked) = t
            .sources
            .get(&source_key(ip))
            .map(|e| (e.failures, e.locked_until.is_some_and(|l| l > now)))
            .unwrap_or((1, false));
        let mut by_account = 0;
        if let Some(name) = account.filter(|n| n.len() <= 64) {
            prune(&mut t.accounts, now, keep);
            let e = t
                .accounts
                .entry(name.to_ascii_lowercase())
                .or_insert(Entry {
                    failures: 0,
                    last: now,
                    locked_until: None,
                });
            if now.duration_since(e.last) > keep {
                e.failures = 0;
            }
            e.failures += 1;
            e.last = now;
            by_account = e.failures;
        }
        let n = by_source.max(by_account);
        let delay = s
            .failure_delay
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(MAX_DELAY);
        (delay, locked)
    }

    /// A successful AUTH as `account`: the source's count goes (its
    /// reservation too), and the account's.
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
    fn attempts_count_before_the_check_and_a_success_gives_them_back() {
        let g = guard(3, 200);
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        assert!(g.reserve(ip).is_ok());
        assert_eq!(g.failed(ip, None), (Duration::from_millis(100), false));
        assert!(g.reserve(ip).is_ok());
        assert_eq!(g.failed(ip, None), (Duration::from_millis(200), false));
        // The third reservation locks; racing ones are refused unchecked.
        assert!(g.reserve(ip).is_ok());
        assert!(g.failed(ip, None).1);
        assert!(g.reserve(ip).is_err());
        assert!(g.reserve("192.0.2.8".parse().expect("ip")).is_ok());
        std::thread::sleep(Duration::from_millis(250));
        assert!(g.reserve(ip).is_ok(), "the lockout expires");
        g.succeeded(ip, "x");
        assert!(g.reserve(ip).is_ok());
        assert_eq!(
            g.failed(ip, None).0,
            Duration::from_millis(100),
            "counts start again"
        );
    }

    #[test]
    fn v6_counts_per_64() {
        let g = guard(2, 10_000);
        assert!(g.reserve("2001:db8::1".parse().expect("ip")).is_ok());
        assert!(g.reserve("2001:db8::ffff".parse().expect("ip")).is_ok());
        assert!(g.reserve("2001:db8::2".parse().expect("ip")).is_err());
        assert!(g.reserve("2001:db8:1::2".parse().expect("ip")).is_ok());
    }

    #[test]
    fn an_account_guessed_from_many_sources_slows_down_but_is_not_locked() {
        let g = guard(3, 10_000);
        let mut last = Duration::ZERO;
        for i in 1..=4u8 {
            let ip = IpAddr::from([192, 0, 2, i]);
            assert!(g.reserve(ip).is_ok());
            last = g.failed(ip, Some("Scanner")).0;
        }
        assert_eq!(last, Duration::from_millis(800), "the account's count: 4");
        // A fresh source with the right password is not held up.
        let ip = IpAddr::from([192, 0, 2, 9]);
        assert!(g.reserve(ip).is_ok());
        g.succeeded(ip, "scanner");
        assert!(g.reserve(IpAddr::from([192, 0, 2, 10])).is_ok());
        assert_eq!(
            g.failed(IpAddr::from([192, 0, 2, 10]), Some("scanner")).0,
            Duration::from_millis(100)
        );
    }

    #[test]
    fn the_delay_is_capped_and_rates_slide() {
        let g = guard(100, 1000);
        let ip: IpAddr = "192.0.2.9".parse().expect("ip");
        for _ in 0..20 {
            let _ = g.reserve(ip);
        }
        assert_eq!(g.failed(ip, None).0, MAX_DELAY);
        assert!(g.take_message("d", 2));
        assert!(g.take_message("D", 2));
        assert!(!g.take_message("d", 2));
        assert!(g.take_message("e", 2));
    }
}
