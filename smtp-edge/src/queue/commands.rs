//! The queue commands (`smtp-edge queue list|show|flush|hold|release|bounce|delete`),
//! answered from the manager's memory; those that change a message save its
//! state first (blocking: called from the control socket's blocking task).

use super::index::Entry;
use super::manager::{Listed, Manager, QueueError};
use super::state::MessageState;
use crate::queue::spool;

/// Refuses anything that is not a queue id before it comes near a path.
fn checked(id: &str) -> Result<&str, QueueError> {
    if spool::valid_id(id) {
        Ok(id)
    } else {
        Err(QueueError::InvalidId(id.chars().take(64).collect()))
    }
}

/// One message as `queue list` and `queue show` give it.
fn listed(id: &str, e: &Entry, now: u64) -> Listed {
    Listed {
        id: id.to_string(),
        age: now.saturating_sub(e.summary.received_at),
        sender: e.summary.mail_from.to_string(),
        recipients: e
            .summary
            .recipients
            .iter()
            .map(|r| r.to_string())
            .zip(e.state.recipients.iter().cloned())
            .collect(),
        next_attempt: e.state.next_attempt,
        held: e.state.held,
        attempts: e.state.attempts,
        frozen: e.frozen.clone(),
        corrupt: None,
        busy: e.busy,
    }
}

impl Manager {
    /// `queue list`: every message, from memory.
    pub fn list(&self) -> Vec<Listed> {
        let now = spool::now();
        let ix = self.index();
        let mut out: Vec<Listed> = ix.entries().map(|(id, e)| listed(id, e, now)).collect();
        out.extend(ix.corrupt().iter().map(|(id, why)| Listed {
            id: id.clone(),
            age: 0,
            sender: String::new(),
            recipients: Vec::new(),
            next_attempt: 0,
            held: false,
            attempts: 0,
            frozen: None,
            corrupt: Some(why.clone()),
            busy: false,
        }));
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// `queue show ID`: the listing plus the message's header section.
    pub fn show(&self, id: &str) -> Result<(Listed, String), QueueError> {
        let id = checked(id)?;
        let listed = {
            let ix = self.index();
            let e = ix
                .get(id)
                .ok_or_else(|| QueueError::NotFound(id.to_string()))?;
            listed(id, e, spool::now())
        };
        let headers = self
            .store
            .original(id, false, 0)
            .map_err(|e| QueueError::Io(e.to_string()))?;
        Ok((listed, String::from_utf8_lossy(&headers).into_owned()))
    }

    /// Changes a resting message and saves its state (blocking: called from
    /// the control socket's blocking task). The message is busy meanwhile,
    /// so no attempt starts on it; when the state cannot be saved nothing
    /// changes.
    fn modify(&self, id: &str, f: impl FnOnce(&mut MessageState)) -> Result<(), QueueError> {
        let id = checked(id)?;
        let (before, frozen) = {
            let mut ix = self.index();
            let frozen = ix
                .get(id)
                .ok_or_else(|| QueueError::NotFound(id.to_string()))?
                .frozen
                .clone();
            (
                ix.take(id)
                    .ok_or_else(|| QueueError::Busy(id.to_string()))?,
                frozen,
            )
        };
        let mut after = before.clone();
        f(&mut after);
        match self.store.save(&after) {
            Ok(()) => {
                self.index().settle(id, after, None);
                self.wake.notify_one();
                Ok(())
            }
            Err(e) => {
                self.index().settle(id, before, frozen);
                Err(QueueError::Io(format!(
                    "cannot save the state of {id}: {e}"
                )))
            }
        }
    }

    /// `queue flush [ID]`: retry now (nothing to save: a restart keeps the
    /// schedule).
    pub fn flush(&self, id: Option<&str>) -> Result<usize, QueueError> {
        let mut ix = self.index();
        let ids: Vec<String> = match id {
            Some(id) => vec![checked(id)?.to_string()],
            None => ix.entries().map(|(id, _)| id.to_string()).collect(),
        };
        let mut n = 0;
        for id in ids {
            match ix.modify(&id, |e| e.state.next_attempt = 0) {
                Some(Ok(())) => n += 1,
                Some(Err(())) => {}
                None => return Err(QueueError::NotFound(id)),
            }
        }
        drop(ix);
        self.wake.notify_one();
        Ok(n)
    }

    /// `queue hold ID` / `queue release ID`.
    pub fn hold(&self, id: &str, held: bool) -> Result<(), QueueError> {
        self.modify(id, |st| st.held = held)
    }

    /// `queue bounce ID`: fail every pending recipient now (the sender gets a DSN).
    pub fn bounce(&self, id: &str) -> Result<(), QueueError> {
        self.modify(id, |st| {
            st.bounce_all(spool::now(), "returned to the sender by the administrator");
            st.next_attempt = 0;
        })
    }

    /// `queue delete ID`: remove without telling anyone.
    pub fn delete(&self, id: &str) -> Result<(), QueueError> {
        let id = checked(id)?;
        let entry = match self.index().remove(id) {
            None => return Err(QueueError::NotFound(id.to_string())),
            Some(Err(())) => return Err(QueueError::Busy(id.to_string())),
            Some(Ok(e)) => e,
        };
        if let Err(e) = self.store.remove(id) {
            // Still on disk: keep it queued.
            self.index().insert(entry.summary, entry.state);
            return Err(QueueError::Io(format!("cannot delete {id}: {e}")));
        }
        tracing::warn!(id, "message deleted by the administrator");
        Ok(())
    }
}
