//! SMTP sessions kept open for a moment after a delivery, for the next
//! message to the same next hop (Postfix's connection cache,
//! `smtp_connection_cache_time_limit`).
//!
//! A busy relay sends many messages to one next hop. Without reuse each
//! costs a TCP connection, the greeting, EHLO and, with TLS, STARTTLS, a
//! handshake and EHLO again; on a kept session it costs RSET and the
//! transaction.
//!
//! Rules:
//!
//! - A session is kept only when its last transaction ended in step with
//!   the server (the reply to the final dot, or every recipient refused),
//!   the server did not answer 421, and it is younger than [`MAX_AGE`].
//! - It is kept under its destination (the key the per-destination limit
//!   counts), connector and next hop (name and address), in the cache of
//!   one configuration: a reload starts a new cache, and the old one's
//!   sessions get QUIT when the last attempt using it ends.
//! - It waits at most `session_cache_time` (`[queue]`, default 2 s, 0 turns
//!   reuse off), then gets QUIT. At most `max_concurrency` wait in all.
//! - Before a kept session is used it must have sent nothing while it
//!   waited, and RSET must be answered 250 (within 20 s); if not, it and the
//!   destination's other waiting sessions are closed and a new connection
//!   is made (nothing was sent for the message).
//! - The cache counts the sessions busy per destination. Before a new
//!   connection, waiting sessions of that destination are closed (at once,
//!   not after a QUIT) until busy + waiting + the new one fit
//!   `max_per_destination`: a delivery holds a destination slot, so the
//!   connections open to a destination never exceed it (on-premises
//!   Exchange counts connections per source), while a session kept to the
//!   second smart host survives the first one being down.
//! - A configuration replaced by a reload retires its cache: its waiting
//!   sessions are closed and attempts still running under it keep none.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::outbound::client::Session;

/// A session is not used for a new transaction after this long (Postfix's
/// `smtp_connection_reuse_time_limit`).
pub const MAX_AGE: Duration = Duration::from_secs(300);

/// One waiting session.
struct Idle {
    connector: usize,
    host: String,
    since: Instant,
    session: Session,
}

/// What the cache holds, by destination.
#[derive(Default)]
struct Held {
    idle: HashMap<String, Vec<Idle>>,
    /// Sessions in use (taken or being opened), by destination.
    busy: HashMap<String, usize>,
}

/// The sessions waiting, by destination.
pub struct Sessions {
    wait: Duration,
    max: usize,
    held: Mutex<Held>,
    sweeping: AtomicBool,
    retired: AtomicBool,
}

impl Sessions {
    /// A cache keeping sessions `wait` (none when zero), at most `max` in
    /// all.
    pub fn new(wait: Duration, max: usize) -> Sessions {
        Sessions {
            wait,
            max,
            held: Mutex::new(Held::default()),
            sweeping: AtomicBool::new(false),
            retired: AtomicBool::new(false),
        }
    }

    /// Whether sessions are kept at all.
    pub fn enabled(&self) -> bool {
        !self.wait.is_zero() && self.max > 0 && !self.retired.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A waiting session of `destination` through `connector` to `host` at
    /// `addr` that is still in step and answered RSET, if there is one; it
    /// counts as busy until [`Sessions::release`].
    pub async fn take(
        &self,
        destination: &str,
        connector: usize,
        host: &str,
        addr: SocketAddr,
    ) -> Option<Session> {
        let found = {
            let mut held = self.lock();
            let list = held.idle.get_mut(destination)?;
            // The most recently used: the one least likely to have been
            // closed by the server.
            let at = list.iter().rposition(|i| {
                i.connector == connector && i.host == host && i.session.addr() == addr
            })?;
            let found = list.remove(at);
            if list.is_empty() {
                held.idle.remove(destination);
            }
            *held.busy.entry(destination.to_string()).or_default() += 1;
            found
        };
        let mut session = found.session;
        if found.since.elapsed() <= self.wait && session.age() < MAX_AGE && session.reset().await {
            return Some(session);
        }
        // Too old, or dead (reset() closed it): the others kept for this
        // destination are likely no better (a server restarted, a path
        // broken); a new connection is made instead.
        self.release(destination);
        drop(session);
        self.close_all(destination);
        None
    }

    /// The next hops (name, address) with a session waiting for
    /// `destination` through `connector`.
    pub fn kept(&self, destination: &str, connector: usize) -> Vec<(String, SocketAddr)> {
        self.lock()
            .idle
            .get(destination)
            .map(|list| {
                list.iter()
                    .filter(|i| i.connector == connector)
                    .map(|i| (i.host.clone(), i.session.addr()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Room for a new connection to `destination`, which then counts as
    /// busy until [`Sessions::release`]: waiting sessions of it are closed
    /// (at once) until busy + waiting + the new one fit `limit`.
    pub fn make_room(&self, destination: &str, limit: usize) {
        let gone: Vec<Idle> = {
            let mut held = self.lock();
            let busy = held.busy.get(destination).copied().unwrap_or(0);
            let mut gone = Vec::new();
            if let Some(list) = held.idle.get_mut(destination) {
                let excess = (busy + list.len() + 1).saturating_sub(limit.max(1));
                // The oldest first.
                gone.extend(list.drain(..excess.min(list.len())));
                if list.is_empty() {
                    held.idle.remove(destination);
                }
            }
            *held.busy.entry(destination.to_string()).or_default() += 1;
            gone
        };
        // Dropped: closed now, so the server counts them gone before the
        // new connection arrives.
        drop(gone);
    }

    /// A session of `destination` taken or opened is no longer busy (kept
    /// by [`Sessions::put`], ended, or never opened).
    pub fn release(&self, destination: &str) {
        let mut held = self.lock();
        if let Some(n) = held.busy.get_mut(destination) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.busy.remove(destination);
            }
        }
    }

    /// Closes every session waiting for `destination`, at once.
    fn close_all(&self, destination: &str) {
        let gone = self.lock().idle.remove(destination);
        drop(gone);
    }

    /// The configuration this cache belongs to was replaced: its waiting
    /// sessions get QUIT, and none is kept from now on.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        let idle = std::mem::take(&mut self.lock().idle);
        for i in idle.into_values().flatten() {
            quit_later(i.session);
        }
    }

    /// Keeps `session` after a delivery, or ends it (QUIT) when it cannot
    /// take another transaction, is too old, or reuse is off.
    pub async fn put(
        self: &Arc<Self>,
        destination: &str,
        connector: usize,
        host: &str,
        session: Session,
    ) {
        if !self.enabled() || !session.reusable() || session.age() >= MAX_AGE {
            session.end(None).await;
            return;
        }
        let evicted = {
            let mut held = self.lock();
            let idle = &mut held.idle;
            let mut evicted = None;
            if idle.values().map(Vec::len).sum::<usize>() >= self.max {
                // The one waiting longest makes room.
                let oldest = idle
                    .iter()
                    .filter_map(|(k, v)| v.first().map(|i| (k.clone(), i.since)))
                    .min_by_key(|(_, since)| *since)
                    .map(|(k, _)| k);
                if let Some(k) = oldest
                    && let Some(list) = idle.get_mut(&k)
                {
                    evicted = Some(list.remove(0));
                    if list.is_empty() {
                        idle.remove(&k);
                    }
                }
            }
            idle.entry(destination.to_string()).or_default().push(Idle {
                connector,
                host: host.to_string(),
                since: Instant::now(),
                session,
            });
            evicted
        };
        if let Some(i) = evicted {
            quit_later(i.session);
        }
        self.sweep_in_background();
    }

    /// Starts the task that ends sessions that waited too long (once).
    fn sweep_in_background(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let me: Weak<Sessions> = Arc::downgrade(self);
        let every = (self.wait / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(cache) = me.upgrade() else {
                    return;
                };
                cache.expire();
            }
        });
    }

    /// Ends the sessions that waited longer than the cache time.
    fn expire(&self) {
        let mut old = Vec::new();
        {
            let mut held = self.lock();
            held.idle.retain(|_, list| {
                let (keep, gone): (Vec<Idle>, Vec<Idle>) = std::mem::take(list)
                    .into_iter()
                    .partition(|i| i.since.elapsed() <= self.wait);
                old.extend(gone);
                *list = keep;
                !list.is_empty()
            });
        }
        for i in old {
            quit_later(i.session);
        }
    }
}

impl Drop for Sessions {
    /// A cache of a configuration no longer in force: its sessions get
    /// QUIT (when a runtime is there to send it; else they are just
    /// closed).
    fn drop(&mut self) {
        let held = std::mem::take(self.held.get_mut().unwrap_or_else(|p| p.into_inner()));
        for i in held.idle.into_values().flatten() {
            quit_later(i.session);
        }
    }
}

/// QUIT on a session in a task of its own (nobody waits for the reply).
fn quit_later(session: Session) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(session.end(None));
    }
}
