//! Brute-force and rate guards of SMTP AUTH, shared by every session.
//!
//! Attempts are counted per source network (an IPv4 /32, an IPv6 /64). An
//! attempt is counted as a failure *before* its password is checked, so
//! connections racing in parallel cannot get more checks than
//! `max_failures` between them; a success gives back only its own attempt
//! (the failures before it stay: logging in with one's own device between
//! guesses at another account does not reset the count). At
//! `max_failures` the source is locked for `lockout_seconds` (454 4.7.0),
//! whatever password comes next, without any check. Each failure is
//! answered after a delay that doubles with the count (from
//! `failure_delay_ms`, at most [`MAX_DELAY`]). Failures are also counted
//! per account name, existing or not (keyed by a keyed hash of the name,
//! which may be a password typed in the wrong field, so the table never
//! holds it), and the delay follows the larger count, so guesses spread
//! over many sources slow down too, and the delay does not tell which
//! names exist; but accounts are not locked as such: generated passwords
//! are far beyond guessing, and a lock by account name would let anyone
//! who can connect lock a device out (a delay only ever slows failures).
//! At most [`VERIFY_SLOTS`] password checks (Argon2, 19 MiB each) run at
//! once, host wide. The tables are bounded ([`MAX_ENTRIES`]): idle, then
//! oldest unlocked entries go first.
//!
//! Time is passed in (`*_at`, an [`Instant`]) so the tests run without
//! sleeping; the public methods use the current time.
//!
//! Each device also has a message rate (per hour, sliding).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
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
    /// Failures per account name (existing or not), by keyed hash.
    accounts: HashMap<u64, Entry>,
    sent: HashMap<String, VecDeque<Instant>>,
}

/// The shared guard.
#[derive(Debug)]
pub struct Guard {
    settings: Mutex<Settings>,
    tables: Mutex<Tables>,
    verify: tokio::sync::Semaphore,
    /// The key of the account names' hashes (random per process).
    names: RandomState,
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
            names: RandomState::new(),
        }
    }

    /// The accounts table's key for `name` (compared without case).
    fn account_key(&self, name: &str) -> u64 {
        self.names.hash_one(name.to_ascii_lowercase())
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
        self.reserve_at(ip, Instant::now())
    }

    /// [`Guard::reserve`] at `now`.
    fn reserve_at(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let s = self.settings();
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

    /// A failed check from `ip` for `account` (the name tried, whether a
    /// device has it or not; none when no name could be read): how long to
    /// wait before answering, and whether the source is locked now.
    pub fn failed(&self, ip: IpAddr, account: Option<&str>) -> (Duration, bool) {
        self.failed_at(ip, account, Instant::now())
    }

    /// [`Guard::failed`] at `now`.
    fn failed_at(&self, ip: IpAddr, account: Option<&str>, now: Instant) -> (Duration, bool) {
        let s = self.settings();
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
        if let Some(name) = account {
            let key = self.account_key(name);
            prune(&mut t.accounts, now, keep);
            let e = t.accounts.entry(key).or_insert(Entry {
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

    /// A successful AUTH as `account` from `ip`: its own reservation is
    /// given back (a lock it set with it too), nothing more of the
    /// source's count; the account's count goes (the device proved it
    /// knows its password).
    pub fn succeeded(&self, ip: IpAddr, account: &str) {
        let s = self.settings();
        let key = self.account_key(account);
        if let Ok(mut t) = self.tables.lock() {
            if let Some(e) = t.sources.get_mut(&source_key(ip)) {
                e.failures = e.failures.saturating_sub(1);
                if e.failures < s.max_failures {
                    e.locked_until = None;
                }
            }
            t.accounts.remove(&key);
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

    /// One failed attempt at `now`: reserved, then failed.
    fn fail(g: &Guard, ip: IpAddr, account: Option<&str>, now: Instant) -> (Duration, bool) {
        assert!(g.reserve_at(ip, now).is_ok(), "locked already");
        g.failed_at(ip, account, now)
    }

    #[test]
    fn attempts_count_before_the_check_and_the_lockout_expires() {
        let g = guard(3, 200);
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(fail(&g, ip, None, t0), (Duration::from_millis(100), false));
        assert_eq!(fail(&g, ip, None, t0), (Duration::from_millis(200), false));
        // The third reservation locks; racing ones are refused unchecked.
        assert!(fail(&g, ip, None, t0).1);
        assert_eq!(g.reserve_at(ip, t0), Err(Duration::from_millis(200)));
        assert!(g.reserve_at("192.0.2.8".parse().expect("ip"), t0).is_ok());
        let later = t0 + Duration::from_millis(250);
        assert!(g.reserve_at(ip, later).is_ok(), "the lockout expires");
        assert_eq!(
            g.failed_at(ip, None, later).0,
            Duration::from_millis(100),
            "counts start again"
        );
    }

    #[test]
    fn a_success_takes_back_only_its_own_attempt() {
        let g = guard(5, 60_000);
        let t = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        for _ in 0..4 {
            fail(&g, ip, Some("victim"), t);
        }
        // The fifth attempt is one's own device: its reservation reaches
        // the limit, its success gives back that one only.
        assert!(g.reserve_at(ip, t).is_ok());
        g.succeeded(ip, "mine");
        // The four failures stay: the next guess is the fifth, and locks.
        assert!(
            fail(&g, ip, Some("victim"), t).1,
            "locked at the fifth failure"
        );
        assert!(g.reserve_at(ip, t).is_err());
        // Not even one's own login is checked now.
        assert!(g.reserve_at(ip, t + Duration::from_secs(59)).is_err());
    }

    #[test]
    fn interleaved_good_logins_never_reset_the_count() {
        let g = guard(5, 60_000);
        let t = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let mut locked_after = None;
        'rounds: for round in 0..3 {
            for guess in 0..4 {
                if g.reserve_at(ip, t).is_err() {
                    locked_after = Some((round, guess));
                    break 'rounds;
                }
                g.failed_at(ip, Some("victim"), t);
            }
            if g.reserve_at(ip, t).is_ok() {
                g.succeeded(ip, "mine");
            }
        }
        assert_eq!(locked_after, Some((1, 1)), "the sixth guess is refused");
    }

    #[test]
    fn v6_counts_per_64() {
        let g = guard(2, 10_000);
        let t = Instant::now();
        assert!(g.reserve_at("2001:db8::1".parse().expect("ip"), t).is_ok());
        assert!(
            g.reserve_at("2001:db8::ffff".parse().expect("ip"), t)
                .is_ok()
        );
        assert!(g.reserve_at("2001:db8::2".parse().expect("ip"), t).is_err());
        assert!(
            g.reserve_at("2001:db8:1::2".parse().expect("ip"), t)
                .is_ok()
        );
    }

    #[test]
    fn an_account_guessed_from_many_sources_slows_down_but_is_not_locked() {
        let g = guard(3, 10_000);
        let t = Instant::now();
        let mut last = Duration::ZERO;
        for i in 1..=4u8 {
            last = fail(&g, IpAddr::from([192, 0, 2, i]), Some("Scanner"), t).0;
        }
        assert_eq!(last, Duration::from_millis(800), "the account's count: 4");
        // A fresh source with the right password is not held up.
        let ip = IpAddr::from([192, 0, 2, 9]);
        assert!(g.reserve_at(ip, t).is_ok());
        g.succeeded(ip, "scanner");
        assert_eq!(
            fail(&g, IpAddr::from([192, 0, 2, 10]), Some("scanner"), t).0,
            Duration::from_millis(100)
        );
    }

    #[test]
    fn unknown_names_slow_down_like_existing_ones() {
        // The caller cannot tell the guard whether a name exists: the same
        // failures give the same delays, name by name.
        let g = guard(100, 10_000);
        let t = Instant::now();
        for name in ["scanner", "nobody-here"] {
            let delays: Vec<Duration> = (1..=4u8)
                .map(|i| fail(&g, IpAddr::from([198, 51, 100, i]), Some(name), t).0)
                .collect();
            assert_eq!(
                delays,
                [100, 200, 400, 800].map(Duration::from_millis),
                "{name}"
            );
            // New sources for the next name.
            for i in 1..=4u8 {
                if let Ok(mut tables) = g.tables.lock() {
                    tables.sources.remove(&IpAddr::from([198, 51, 100, i]));
                }
            }
        }
        // Names are kept by keyed hash only (an unknown name may be a
        // password).
        let tables = g.tables.lock().expect("tables");
        assert_eq!(tables.accounts.len(), 2);
    }

    #[test]
    fn the_account_table_is_bounded() {
        let g = guard(1000, 10_000);
        let t = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        for i in 0..MAX_ENTRIES + 10 {
            g.failed_at(ip, Some(&format!("name-{i}")), t);
        }
        let tables = g.tables.lock().expect("tables");
        assert!(tables.accounts.len() <= MAX_ENTRIES);
    }

    #[test]
    fn the_delay_is_capped_and_rates_slide() {
        let g = guard(100, 1000);
        let t = Instant::now();
        let ip: IpAddr = "192.0.2.9".parse().expect("ip");
        for _ in 0..20 {
            let _ = g.reserve_at(ip, t);
        }
        assert_eq!(g.failed_at(ip, None, t).0, MAX_DELAY);
        assert!(g.take_message("d", 2));
        assert!(g.take_message("D", 2));
        assert!(!g.take_message("d", 2));
        assert!(g.take_message("e", 2));
    }
}
