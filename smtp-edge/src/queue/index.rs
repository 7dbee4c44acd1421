//! The queue in memory: every queued message with its delivery state, the
//! order in which they fall due, and who waits for a busy destination.
//! Built once at start from the state files; afterwards a pass costs what is
//! due, not what is queued. Pure: no I/O, no clock.
//!
//! A message is in exactly one of these places: scheduled (in `due`, by its
//! next attempt), parked (due, but a destination it needs is at its limit:
//! it waits in that destination's line and goes first when a session to it
//! ends), busy (an attempt runs), or resting (held, frozen, or waiting for
//! nothing).
//!
//! The index is the one place that counts sessions per destination (a next
//! hop: a smart host list, or an MX host set). Destinations known before an
//! attempt (smart hosts) are claimed when it is dispatched; those an attempt
//! learns on the way (an MX lookup) it claims with [`Index::claim`], and
//! when one is full the attempt stops there and the message waits in that
//! destination's line. No attempt ever waits for a destination while it
//! holds one of the global slots.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use super::state::MessageState;
use crate::queue::spool::Notification;

/// What the index keeps of a message's envelope (the rest is read from the
/// spool file when it is delivered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The sender.
    pub mail_from: Box<str>,
    /// The recipients' addresses, in envelope order.
    pub recipients: Vec<Box<str>>,
    /// A DSN this host made, and which.
    pub notification: Option<Notification>,
    /// When it arrived.
    pub received_at: u64,
    /// The outbound connector it must take (a device's own).
    pub route: Option<Box<str>>,
}

/// One queued message.
#[derive(Debug)]
pub struct Entry {
    /// What it is.
    pub summary: Summary,
    /// Where each recipient stands.
    pub state: MessageState,
    /// An attempt runs.
    pub busy: bool,
    /// Its state could not be saved (why): not tried until it can be.
    pub frozen: Option<String>,
    /// Its key in `due`, when scheduled.
    scheduled: Option<u64>,
    /// The destination it waits for, when parked.
    parked: Option<String>,
}

/// How an attempt ended, for [`Index::finish`].
#[derive(Debug, Default)]
pub struct Finish {
    /// The new state; `None`: the message left the queue.
    pub state: Option<MessageState>,
    /// Why its state could not be saved, if it could not.
    pub frozen: Option<String>,
    /// Destinations claimed on the way.
    pub held: Vec<String>,
    /// A full destination it stopped at: it waits in that line.
    pub park_on: Option<String>,
}

/// An attempt to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// The message.
    pub id: Arc<str>,
    /// The destinations it takes a slot of until it finishes.
    pub destinations: Vec<String>,
}

/// The queue.
#[derive(Debug, Default)]
pub struct Index {
    entries: HashMap<Arc<str>, Entry>,
    due: BTreeSet<(u64, Arc<str>)>,
    waiting: HashMap<String, VecDeque<Arc<str>>>,
    active: HashMap<String, u32>,
    running: usize,
    corrupt: BTreeMap<String, String>,
}

impl Index {
    /// An empty queue.
    pub fn new() -> Self {
        Index::default()
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Attempts running.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Adds a message (and schedules it unless held).
    pub fn insert(&mut self, summary: Summary, state: MessageState) {
        let id: Arc<str> = state.id.as_str().into();
        if self.entries.contains_key(&id) {
            return;
        }
        self.entries.insert(
            id.clone(),
            Entry {
                summary,
                state,
                busy: false,
                frozen: None,
                scheduled: None,
                parked: None,
            },
        );
        self.schedule(&id);
    }

    /// A message.
    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// Every message, by id.
    pub fn entries(&self) -> impl Iterator<Item = (&Arc<str>, &Entry)> {
        self.entries.iter()
    }

    /// Quarantined messages: id and why.
    pub fn corrupt(&self) -> &BTreeMap<String, String> {
        &self.corrupt
    }

    /// Records a quarantined message.
    pub fn add_corrupt(&mut self, id: &str, reason: &str) {
        self.corrupt.insert(id.to_string(), reason.to_string());
    }

    /// Puts a resting message where it belongs: scheduled by its next
    /// attempt unless busy, held, frozen or parked; `false` when it was not
    /// scheduled.
    pub fn schedule(&mut self, id: &str) -> bool {
        self.schedule_with(id, None)
    }

    /// [`schedule`](Self::schedule), at `at` instead of its next attempt
    /// (0: ahead of everything due).
    fn schedule_with(&mut self, id: &str, at: Option<u64>) -> bool {
        let Some(key) = self.entries.get_key_value(id).map(|(k, _)| k.clone()) else {
            return false;
        };
        self.unschedule(&key);
        let Some(e) = self.entries.get_mut(&key) else {
            return false;
        };
        if e.busy || e.state.held || e.frozen.is_some() || e.parked.is_some() {
            return false;
        }
        let at = at.unwrap_or(e.state.next_attempt);
        e.scheduled = Some(at);
        self.due.insert((at, key));
        true
    }

    fn unschedule(&mut self, id: &Arc<str>) {
        if let Some(e) = self.entries.get_mut(id)
            && let Some(at) = e.scheduled.take()
        {
            self.due.remove(&(at, id.clone()));
        }
    }

    /// When the next scheduled message is due.
    pub fn next_due(&self) -> Option<u64> {
        self.due.first().map(|(t, _)| *t)
    }

    /// Changes a resting message (`f` sees its entry) and puts it where it
    /// then belongs; `None` for an unknown id, `Err(())` when it is busy.
    pub fn modify<T>(
        &mut self,
        id: &str,
        f: impl FnOnce(&mut Entry) -> T,
    ) -> Option<Result<T, ()>> {
        let key = self.entries.get_key_value(id)?.0.clone();
        self.unschedule(&key);
        let e = self.entries.get_mut(&key)?;
        if e.busy {
            self.schedule(&key);
            return Some(Err(()));
        }
        // Out of any line (its stale place there is skipped).
        e.parked = None;
        let r = f(e);
        self.schedule(&key);
        Some(Ok(r))
    }

    /// Takes a resting message for work outside an attempt (saving its
    /// state): busy until [`settle`](Self::settle). Its state, or `None`
    /// when it is unknown or busy.
    pub fn take(&mut self, id: &str) -> Option<MessageState> {
        let key = self.entries.get_key_value(id)?.0.clone();
        if self.entries.get(&key)?.busy {
            return None;
        }
        self.unschedule(&key);
        let e = self.entries.get_mut(&key)?;
        e.parked = None;
        e.busy = true;
        Some(e.state.clone())
    }

    /// Removes a resting message; `Err(())` when it is busy.
    pub fn remove(&mut self, id: &str) -> Option<Result<Entry, ()>> {
        let key = self.entries.get_key_value(id)?.0.clone();
        if self.entries.get(&key)?.busy {
            return Some(Err(()));
        }
        self.unschedule(&key);
        // A parked id left in its destination's line is skipped there.
        self.entries.remove(&key).map(Ok)
    }

    /// Takes what is due at `now`, up to `max_running` attempts in all and
    /// `max_per_destination` per destination (`destinations` names those a
    /// message needs). A message whose destination is full waits in that
    /// destination's line, not in everyone's way.
    pub fn take_due(
        &mut self,
        now: u64,
        max_running: usize,
        max_per_destination: u32,
        destinations: impl Fn(&Entry) -> Vec<String>,
    ) -> Vec<Dispatch> {
        let mut out = Vec::new();
        while self.running < max_running {
            let Some((at, id)) = self.due.first().cloned() else {
                break;
            };
            if at > now {
                break;
            }
            self.due.remove(&(at, id.clone()));
            let Some(e) = self.entries.get_mut(&id) else {
                continue;
            };
            e.scheduled = None;
            let dests = destinations(e);
            if let Some(full) = dests
                .iter()
                .find(|d| self.active.get(*d).copied().unwrap_or(0) >= max_per_destination)
            {
                e.parked = Some(full.clone());
                self.waiting.entry(full.clone()).or_default().push_back(id);
                continue;
            }
            e.busy = true;
            for d in &dests {
                *self.active.entry(d.clone()).or_insert(0) += 1;
            }
            self.running += 1;
            out.push(Dispatch {
                id,
                destinations: dests,
            });
        }
        out
    }

    /// An attempt learnt it needs `dest`: a slot for it (counted until the
    /// attempt finishes), or `false` when it is full.
    pub fn claim(&mut self, dest: &str, max_per_destination: u32) -> bool {
        let n = self.active.entry(dest.to_string()).or_insert(0);
        if *n >= max_per_destination {
            if *n == 0 {
                self.active.remove(dest);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// An attempt ended: `state` is the message's new state (`None`: it
    /// left the queue), `frozen` why its state could not be saved, `held`
    /// the destinations it claimed on the way (besides those of the
    /// dispatch), `park_on` a full destination it stopped at (it waits in
    /// that line). Freed slots let waiting messages go.
    pub fn finish(&mut self, d: &Dispatch, end: Finish, max_per_destination: u32) {
        self.running = self.running.saturating_sub(1);
        for dest in d.destinations.iter().chain(&end.held) {
            if let Some(n) = self.active.get_mut(dest) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.active.remove(dest);
                }
            }
        }
        match end.state {
            None => {
                self.entries.remove(&d.id);
            }
            Some(st) => {
                if let Some(e) = self.entries.get_mut(&d.id) {
                    e.busy = false;
                    e.state = st;
                    e.frozen = end.frozen;
                    if let Some(dest) = end.park_on
                        && e.frozen.is_none()
                        && !e.state.held
                    {
                        e.parked = Some(dest.clone());
                        self.waiting
                            .entry(dest)
                            .or_default()
                            .push_back(d.id.clone());
                    }
                }
                self.schedule(&d.id);
            }
        }
        self.release_spare(max_per_destination);
    }

    /// Every destination with free slots lets as many of its waiting
    /// messages go, to the front of the due set: they waited their turn. A
    /// released message that finds another destination full waits in that
    /// one's line; one no longer waiting here (deleted, flushed, held) gives
    /// its turn to the next.
    fn release_spare(&mut self, max_per_destination: u32) {
        let lines: Vec<String> = self.waiting.keys().cloned().collect();
        for dest in lines {
            let busy = self.active.get(&dest).copied().unwrap_or(0);
            let free = max_per_destination.saturating_sub(busy);
            let mut released = 0;
            while released < free {
                let Some(q) = self.waiting.get_mut(&dest) else {
                    break;
                };
                let Some(id) = q.pop_front() else {
                    self.waiting.remove(&dest);
                    break;
                };
                if q.is_empty() {
                    self.waiting.remove(&dest);
                }
                let Some(e) = self.entries.get_mut(&id) else {
                    continue;
                };
                if e.parked.as_deref() != Some(dest.as_str()) {
                    continue;
                }
                e.parked = None;
                if self.schedule_with(&id, Some(0)) {
                    released += 1;
                }
            }
        }
    }

    /// Ends a busy spell that was no attempt (the manager rewriting a
    /// frozen message's state): the new state and why it is still frozen.
    pub fn settle(&mut self, id: &str, state: MessageState, frozen: Option<String>) {
        if let Some(e) = self.entries.get_mut(id) {
            e.busy = false;
            e.state = state;
            e.frozen = frozen;
        }
        self.schedule(id);
    }

    /// Drops a message whatever it is doing (it left the spool).
    pub fn remove_busy(&mut self, id: &str) {
        if let Some(key) = self.entries.get_key_value(id).map(|(k, _)| k.clone()) {
            self.unschedule(&key);
            self.entries.remove(&key);
        }
    }

    /// Frozen messages (to retry saving their state).
    pub fn frozen(&self) -> Vec<Arc<str>> {
        self.entries
            .iter()
            .filter(|(_, e)| e.frozen.is_some() && !e.busy)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Counts by state: scheduled, waiting for a destination, busy, held,
    /// frozen, and corrupt (quarantined).
    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            corrupt: self.corrupt.len(),
            ..Counts::default()
        };
        for e in self.entries.values() {
            if e.busy {
                c.busy += 1;
            } else if e.frozen.is_some() {
                c.frozen += 1;
            } else if e.state.held {
                c.held += 1;
            } else if e.parked.is_some() {
                c.waiting += 1;
            } else {
                c.scheduled += 1;
            }
        }
        c
    }
}

/// How many messages are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Waiting for their next attempt.
    pub scheduled: usize,
    /// Due, waiting for a destination's slot.
    pub waiting: usize,
    /// Being delivered.
    pub busy: usize,
    /// Held by the administrator.
    pub held: usize,
    /// Their state could not be saved.
    pub frozen: usize,
    /// Quarantined (unreadable).
    pub corrupt: usize,
    /// In the spool while no queue runs (no outbound connector): accepted,
    /// waiting for one.
    #[serde(default)]
    pub waiting_for_connector: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::spool::{Envelope, Recipient};

    fn msg(id: &str, next: u64) -> (Summary, MessageState) {
        let env = Envelope {
            id: id.into(),
            recipients: vec![Recipient {
                address: "a@b".into(),
                ..Recipient::default()
            }],
            ..Envelope::default()
        };
        let mut st = MessageState::new(&env);
        st.next_attempt = next;
        (
            Summary {
                mail_from: "s@x".into(),
                recipients: vec!["a@b".into()],
                notification: None,
                received_at: 0,
                route: None,
            },
            st,
        )
    }

    fn done(state: Option<MessageState>) -> Finish {
        Finish {
            state,
            ..Finish::default()
        }
    }

    fn dest(d: &str) -> impl Fn(&Entry) -> Vec<String> + '_ {
        move |_| vec![d.to_string()]
    }

    #[test]
    fn due_in_order_and_only_when_due() {
        let mut ix = Index::new();
        for (id, t) in [("c", 30), ("a", 10), ("b", 20)] {
            let (s, st) = msg(id, t);
            ix.insert(s, st);
        }
        assert_eq!(ix.next_due(), Some(10));
        let got = ix.take_due(20, 10, 10, dest("x"));
        let ids: Vec<&str> = got.iter().map(|d| &*d.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(ix.next_due(), Some(30));
        assert!(ix.get("a").unwrap().busy);
        // Busy messages are not taken again; finishing reschedules.
        let mut st = ix.get("a").unwrap().state.clone();
        st.next_attempt = 100;
        ix.finish(&got[0], done(Some(st)), 10);
        ix.finish(&got[1], done(None), 10);
        assert!(ix.get("b").is_none());
        assert_eq!(ix.next_due(), Some(30));
        assert_eq!(ix.take_due(99, 10, 10, dest("x")).len(), 1);
        assert_eq!(ix.running(), 1);
    }

    #[test]
    fn a_full_destination_parks_its_messages_not_the_others() {
        let mut ix = Index::new();
        for i in 0..5 {
            let (s, st) = msg(&format!("slow{i}"), 0);
            ix.insert(s, st);
        }
        let (s, st) = msg("zfast", 0);
        ix.insert(s, st);
        let pick = |e: &Entry| {
            vec![if e.state.id.starts_with("slow") {
                "slow".to_string()
            } else {
                "fast".to_string()
            }]
        };
        // Two slots for "slow"; the healthy one is not held up behind the
        // other three.
        let got = ix.take_due(0, 10, 2, pick);
        let ids: Vec<&str> = got.iter().map(|d| &*d.id).collect();
        assert_eq!(ids, ["slow0", "slow1", "zfast"]);
        assert_eq!(ix.counts().waiting, 3);
        assert_eq!(ix.running(), 3);
        // One slow session ends: the first waiting one goes next.
        let st = ix.get("slow0").unwrap().state.clone();
        ix.finish(
            &got[0],
            done(Some(MessageState {
                next_attempt: 500,
                ..st
            })),
            2,
        );
        // A new message to the same destination does not jump the line
        // (queue ids sort by arrival: a newer one sorts later).
        let (s, st) = msg("slowz", 0);
        ix.insert(s, st);
        let next = ix.take_due(0, 10, 2, pick);
        assert_eq!(next.len(), 1);
        assert_eq!(&*next[0].id, "slow2");
        assert_eq!(ix.counts().waiting, 3);
    }

    #[test]
    fn a_line_is_never_stranded() {
        let mut ix = Index::new();
        for id in ["a", "b", "c"] {
            let (s, st) = msg(id, 0);
            ix.insert(s, st);
        }
        let got = ix.take_due(0, 10, 1, dest("d"));
        assert_eq!(got.len(), 1);
        // b is held while it waits; when a's slot frees, c goes.
        assert_eq!(ix.modify("b", |e| e.state.held = true), Some(Ok(())));
        let st = ix.get("a").unwrap().state.clone();
        let later = MessageState {
            next_attempt: 900,
            ..st
        };
        ix.finish(&got[0], done(Some(later)), 1);
        let next = ix.take_due(0, 10, 1, dest("d"));
        assert_eq!(next.iter().map(|d| &*d.id).collect::<Vec<_>>(), ["c"]);
        // Flushing a parked message takes it out of its line at once.
        let (s, st) = msg("e", 0);
        ix.insert(s, st);
        assert!(ix.take_due(0, 10, 1, dest("d")).is_empty());
        assert_eq!(ix.counts().waiting, 1);
        assert_eq!(ix.modify("e", |e| e.state.next_attempt = 0), Some(Ok(())));
        assert_eq!(ix.counts().waiting, 0);
    }

    #[test]
    fn destinations_learnt_on_the_way_are_claimed_and_waited_for() {
        let mut ix = Index::new();
        for id in ["m1", "m2"] {
            let (s, st) = msg(id, 0);
            ix.insert(s, st);
        }
        let got = ix.take_due(0, 10, 1, |_| Vec::new());
        assert_eq!(got.len(), 2);
        assert!(ix.claim("mx:a", 1));
        assert!(!ix.claim("mx:a", 1), "full");
        // m2 stops there and waits in mx:a's line; m1 ends, m2 goes.
        let st2 = ix.get("m2").unwrap().state.clone();
        ix.finish(
            &got[1],
            Finish {
                state: Some(st2),
                park_on: Some("mx:a".into()),
                ..Finish::default()
            },
            1,
        );
        assert_eq!(ix.counts().waiting, 1);
        let st1 = ix.get("m1").unwrap().state.clone();
        ix.finish(
            &got[0],
            Finish {
                state: Some(MessageState {
                    next_attempt: 900,
                    ..st1
                }),
                held: vec!["mx:a".into()],
                ..Finish::default()
            },
            1,
        );
        assert_eq!(ix.counts().waiting, 0);
        let next = ix.take_due(0, 10, 1, |_| Vec::new());
        assert_eq!(&*next[0].id, "m2");
        assert_eq!(ix.running(), 1);
    }

    #[test]
    fn the_global_limit_holds_and_held_or_frozen_rest() {
        let mut ix = Index::new();
        for i in 0..4 {
            let (s, st) = msg(&format!("m{i}"), 0);
            ix.insert(s, st);
        }
        assert_eq!(ix.modify("m3", |e| e.state.held = true), Some(Ok(())));
        assert_eq!(
            ix.modify("m2", |e| e.frozen = Some("EROFS".into())),
            Some(Ok(()))
        );
        let got = ix.take_due(0, 1, 10, dest("d"));
        assert_eq!(got.len(), 1);
        assert!(ix.take_due(0, 1, 10, dest("d")).is_empty(), "one at a time");
        assert_eq!(ix.modify(&got[0].id, |_| ()), Some(Err(())), "busy");
        let c = ix.counts();
        assert_eq!((c.busy, c.held, c.frozen, c.scheduled), (1, 1, 1, 1));
        assert_eq!(ix.frozen().len(), 1);
        assert!(matches!(ix.remove("m3"), Some(Ok(_))));
        assert!(ix.remove("nope").is_none());
    }
}
