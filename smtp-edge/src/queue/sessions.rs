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
//! - Before a kept session is used, RSET must be answered 250; if not, it
//!   is closed and a new connection is made (nothing was sent for the
//!   message).
//! - Before a new connection to a destination, that destination's waiting
//!   sessions are closed: a delivery holds a destination slot, so the
//!   connections open to a destination (busy and waiting) never exceed
//!   `max_per_destination` (on-premises Exchange counts connections per
//!   source).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::delivery::client::Session;

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

/// The sessions waiting, by destination.
pub struct Sessions {
    wait: Duration,
    max: usize,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    sweeping: AtomicBool,
}

impl Sessions {
    /// A cache keeping sessions `wait` (none when zero), at most `max` in
    /// all.
    pub fn new(wait: Duration, max: usize) -> Sessions {
        Sessions {
            wait,
            max,
            idle: Mutex::new(HashMap::new()),
            sweeping: AtomicBool::new(false),
        }
    }

    /// Whether sessions are kept at all.
    pub fn enabled(&self) -> bool {
        !self.wait.is_zero() && self.max > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A waiting session of `destination` through `connector` to `host` at
    /// `addr` that answered RSET, if there is one.
    pub async fn take(
        &self,
        destination: &str,
        connector: usize,
        host: &str,
        addr: SocketAddr,
    ) -> Option<Session> {
        loop {
            let found = {
                let mut idle = self.lock();
                let list = idle.get_mut(destination)?;
                // The most recently used first: the one least likely to
                // have been closed by the server.
                let at = list.iter().rposition(|i| {
                    i.connector == connector && i.host == host && i.session.addr() == addr
                })?;
                let found = list.remove(at);
                if list.is_empty() {
                    idle.remove(destination);
                }
                found
            };
            if found.since.elapsed() > self.wait {
                quit_later(found.session);
                continue;
            }
            let mut session = found.session;
            if session.reset().await {
                return Some(session);
            }
            // Closed by reset(); another may still be alive.
        }
    }

    /// Closes the sessions waiting for `destination`: a new connection to
    /// it is about to be made.
    pub fn make_room(&self, destination: &str) {
        let gone = self.lock().remove(destination).unwrap_or_default();
        for i in gone {
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
            let mut idle = self.lock();
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
            i.session.end(None).await;
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
            let mut idle = self.lock();
            idle.retain(|_, list| {
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
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|p| p.into_inner()));
        for i in idle.into_values().flatten() {
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
