//! The queue's files: spool messages (`incoming/ID`), their delivery state
//! (`queue/ID.json`) and quarantined ones (`corrupt/`). Every function here
//! blocks: the manager calls them off the async workers.
//!
//! At start [`Store::scan`] reads each message's envelope (never its
//! content) and state. A message whose envelope or state cannot be used
//! (truncated, garbage, a state for another envelope) is moved to
//! `corrupt/` with a `.reason` file, logged, and listed by `queue list`;
//! nothing is ever taken for a fresh message and sent again. Leftovers — a
//! state without its message, a temporary file of an interrupted write —
//! are removed.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::state::{self, MessageState};
use crate::fsutil;
use crate::outbound::client::Content;
use crate::queue::spool::{self, Envelope, Spool, SpoolError};

/// Messages up to this size are delivered from memory.
const SMALL: u64 = 128 * 1024;

/// The queue's directories.
#[derive(Debug, Clone)]
pub struct Store {
    spool: Arc<Spool>,
    states: PathBuf,
    corrupt: PathBuf,
}

/// A message found at start.
#[derive(Debug)]
pub struct Loaded {
    /// Its envelope.
    pub envelope: Envelope,
    /// Its state (fresh when it had none).
    pub state: MessageState,
}

/// What [`Store::scan`] found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Messages to queue.
    pub loaded: Vec<Loaded>,
    /// Quarantined messages: id and why (found now or earlier).
    pub corrupt: Vec<(String, String)>,
    /// Leftovers removed.
    pub removed: usize,
}

impl Store {
    /// The queue beside `spool`'s `incoming/` (directories made 0700).
    pub fn new(spool: Arc<Spool>) -> io::Result<Store> {
        let states = spool.root().join("queue");
        let corrupt = spool.root().join("corrupt");
        fsutil::private_dir(&states)?;
        fsutil::private_dir(&corrupt)?;
        Ok(Store {
            spool,
            states,
            corrupt,
        })
    }

    /// The spool.
    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// Where a message's state is kept.
    pub fn state_path(&self, id: &str) -> PathBuf {
        self.states.join(format!("{id}.json"))
    }

    fn message_path(&self, id: &str) -> PathBuf {
        self.spool.incoming().join(id)
    }

    /// Reads every queued message's envelope and state; quarantines what
    /// cannot be used; removes leftovers.
    pub fn scan(&self) -> io::Result<Scan> {
        let mut scan = Scan::default();
        let ids = self.spool.list().map_err(io::Error::other)?;
        for id in &ids {
            let loaded = spool::read_envelope(&self.message_path(id))
                .map_err(|e| e.to_string())
                .and_then(|(env, _)| {
                    if env.id != *id {
                        return Err(format!("the envelope names another id ({})", env.id));
                    }
                    match state::load(&self.state_path(id)) {
                        Ok(None) => Ok(Loaded {
                            state: MessageState::new(&env),
                            envelope: env,
                        }),
                        Ok(Some(st)) if st.fits(&env) => Ok(Loaded {
                            state: st,
                            envelope: env,
                        }),
                        Ok(Some(st)) => Err(format!(
                            "the state has {} recipients, the envelope {}",
                            st.recipients.len(),
                            env.recipients.len()
                        )),
                        Err(e) => Err(e.to_string()),
                    }
                });
            match loaded {
                Ok(l) => scan.loaded.push(l),
                Err(reason) => {
                    tracing::error!(id, %reason, "unusable queued message quarantined in corrupt/");
                    if let Err(e) = self.quarantine(id, &reason) {
                        tracing::error!(id, error = %e, "cannot quarantine");
                    }
                    scan.corrupt.push((id.clone(), reason));
                }
            }
        }
        let queued: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        for e in fs::read_dir(&self.states)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let orphan = name
                .strip_suffix(".json")
                .is_some_and(|id| !queued.contains(id));
            if (fsutil::is_atomic_leftover(&name) || orphan) && fs::remove_file(e.path()).is_ok() {
                scan.removed += 1;
            }
        }
        for e in fs::read_dir(&self.corrupt)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".reason")
                && !scan.corrupt.iter().any(|(c, _)| c == id)
            {
                let reason = fs::read_to_string(e.path()).unwrap_or_default();
                scan.corrupt
                    .push((id.to_string(), reason.trim().to_string()));
            }
        }
        Ok(scan)
    }

    /// Moves a message (and its state) to `corrupt/`, with the reason. The
    /// reason is written first, then the message moves, then its state: a
    /// crash in between leaves the message quarantined (a state left behind
    /// is removed as an orphan at the next start), never a message in
    /// `incoming/` without its state (which would be sent again).
    pub fn quarantine(&self, id: &str, reason: &str) -> io::Result<()> {
        fsutil::write_atomic(
            &self.corrupt.join(format!("{id}.reason")),
            reason.as_bytes(),
        )?;
        fs::rename(self.message_path(id), self.corrupt.join(id))?;
        fsutil::sync_dir(self.spool.incoming())?;
        let state = self.state_path(id);
        if state.exists() {
            fs::rename(&state, self.corrupt.join(format!("{id}.json")))?;
        }
        fsutil::sync_dir(&self.corrupt)
    }

    /// A message's envelope, read from its spool file.
    pub fn envelope(&self, id: &str) -> Result<Envelope, SpoolError> {
        spool::read_envelope(&self.message_path(id)).map(|(e, _)| e)
    }

    /// A message's envelope and its content for delivery (read once here
    /// for its size and 8-bit facts, then streamed).
    pub fn open(&self, id: &str) -> Result<(Envelope, Content), SpoolError> {
        let path = self.message_path(id);
        let (env, offset) = spool::read_envelope(&path)?;
        let io_err = |source| SpoolError::Io {
            path: path.clone(),
            source,
        };
        let size = fs::metadata(&path).map_err(io_err)?.len();
        // Small messages (most) are read once into memory; large ones stream
        // from the file: a delivery holds at most SMALL octets of a message.
        let content = if size.saturating_sub(offset) <= SMALL {
            let mut f = fs::File::open(&path).map_err(io_err)?;
            io::Seek::seek(&mut f, io::SeekFrom::Start(offset)).map_err(io_err)?;
            let mut bytes = Vec::with_capacity((size - offset) as usize);
            f.read_to_end(&mut bytes).map_err(io_err)?;
            Content::memory(bytes)
        } else {
            Content::file(&path, offset).map_err(io_err)?
        };
        Ok((env, content))
    }

    /// The start of a message's content: the header section, or with
    /// `whole` up to `limit + 1` octets (a DSN returns it whole only when it
    /// fits).
    pub fn original(&self, id: &str, whole: bool, limit: usize) -> Result<Vec<u8>, SpoolError> {
        let path = self.message_path(id);
        let (_, offset) = spool::read_envelope(&path)?;
        let io_err = |source| SpoolError::Io {
            path: path.clone(),
            source,
        };
        let mut f = fs::File::open(&path).map_err(io_err)?;
        io::Seek::seek(&mut f, io::SeekFrom::Start(offset)).map_err(io_err)?;
        if whole {
            let mut out = Vec::new();
            f.take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(io_err)?;
            return Ok(out);
        }
        // The header section, at most 1 MiB of it.
        let mut r = BufReader::new(f.take(1024 * 1024));
        let mut out = Vec::new();
        loop {
            let start = out.len();
            let n = r.read_until(b'\n', &mut out).map_err(io_err)?;
            let line = &out[start..];
            if n == 0 || line == b"\r\n" || line == b"\n" {
                return Ok(out);
            }
        }
    }

    /// Saves a state durably.
    pub fn save(&self, st: &MessageState) -> io::Result<()> {
        let r = state::save(&self.state_path(&st.id), st);
        self.spool.health().record(&r);
        r
    }

    /// Removes a delivered (or deleted) message: its spool file first, so a
    /// crash between the two leaves a state without a message (removed at
    /// the next start), never a message without its state (which would be
    /// sent again to everyone).
    pub fn remove(&self, id: &str) -> io::Result<()> {
        let gone = |r: io::Result<()>| match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        let r = gone(fs::remove_file(self.message_path(id)))
            .and_then(|()| gone(fs::remove_file(self.state_path(id))));
        self.spool.health().record(&r);
        r
    }

    /// Queues a message this host made (a DSN): durable before it returns;
    /// its queue id.
    pub fn enqueue(&self, mut env: Envelope, content: &[u8]) -> Result<String, SpoolError> {
        let r = self.spool.create().and_then(|mut w| {
            w.write_envelope(&mut env)?;
            w.write(content)?;
            let id = w.id().to_string();
            w.commit().map(|()| id)
        });
        self.spool.health().record(&r);
        r
    }

    /// Whether a message's spool file is still there.
    pub fn exists(&self, id: &str) -> bool {
        self.message_path(id).exists()
    }

    /// The quarantine directory.
    pub fn corrupt_dir(&self) -> &Path {
        &self.corrupt
    }
}
