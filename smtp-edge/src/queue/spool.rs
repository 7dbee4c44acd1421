//! The spool: where the receiving side puts every accepted message before it
//! says 250, and where the queue picks messages up.
//!
//! Layout under the spool directory:
//!
//! - `tmp/` — messages being written. Anything here after a crash is garbage
//!   (the client never got 250) and is removed at start.
//! - `incoming/` — complete messages, one file each, named by queue id.
//!
//! Accepting a message is: write an unnamed file in `incoming/`
//! (`O_TMPFILE`; on a file system without it, `tmp/ID` created
//! exclusively), fsync it, give it its name `incoming/ID` (a link, or a
//! rename, never over an existing file), fsync `incoming/` (one fsync shared
//! by the messages committed at the same time). Only then does the client
//! get 250. Naming is atomic, so `incoming/` never holds a half-written
//! message; an unnamed file left by a crash is gone with it. Directories are 0700 and
//! files 0600 whatever the umask.
//!
//! File format (version 1), documented for the queue and the CLI:
//!
//! ```text
//! SMTP-EDGE-SPOOL 1\n
//! <envelope as one line of JSON>\n
//! <message bytes exactly as accepted (CRLF line ends, dot-unstuffed)>
//! ```

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, GroupSync};

/// First line of every spool file.
pub const MAGIC: &str = "SMTP-EDGE-SPOOL 1";

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// I/O on a spool path.
    #[error("spool {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A file in `incoming/` that is not a spool file.
    #[error("spool {path}: not a smtp-edge spool file ({reason})")]
    Format {
        /// Path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Every id drawn was taken (never overwritten).
    #[error("spool {path}: queue id already in use")]
    IdTaken {
        /// The name that exists.
        path: PathBuf,
    },
}

impl AsStorage for SpoolError {
    /// Whether the file system is full or read-only (452 4.3.1 rather than
    /// 451 4.3.0).
    fn is_storage(&self) -> bool {
        matches!(self, SpoolError::Io { source, .. } if fsutil::is_storage_error(source))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub use crate::smtp::trace::TlsInfo;

/// One recipient and its DSN parameters (RFC 3461).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// Forward path (without angle brackets).
    pub address: String,
    /// ORCPT, as given.
    pub orcpt: Option<String>,
    /// NOTIFY, as given.
    pub notify: Option<String>,
}

/// Everything about a message except its content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Queue id (also the file name).
    pub id: String,
    /// Seconds since the epoch when it was accepted.
    pub received_at: u64,
    /// Reverse path ("" for the null sender).
    pub mail_from: String,
    /// Recipients.
    pub recipients: Vec<Recipient>,
    /// BODY parameter.
    pub body: Option<String>,
    /// SMTPUTF8 was requested.
    pub smtputf8: bool,
    /// RET parameter.
    pub ret: Option<String>,
    /// ENVID parameter.
    pub envid: Option<String>,
    /// Client address.
    pub client_ip: Option<IpAddr>,
    /// EHLO/HELO name.
    pub helo: String,
    /// Inbound connector that accepted it.
    pub connector: String,
    /// TLS details, when the session used TLS.
    pub tls: Option<TlsInfo>,
    /// The device account that submitted it (SMTP AUTH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// The outbound connector it must take (a device's own), instead of
    /// routing by recipient domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// This host made the message to report on another (a DSN): what
    /// becomes of it when it fails depends on that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<Notification>,
}

/// What a message this host made reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Notification {
    /// A bounce (failed recipients) to the original sender.
    Bounce,
    /// A delay notice to the original sender.
    Delay,
    /// A bounce that could not be delivered, to the postmaster: the end of
    /// the line (if it fails too, it is dropped).
    DoubleBounce,
}

impl Envelope {
    /// What this message reports, if it is a DSN this host made (older
    /// spool files name the "dsn" connector instead).
    pub fn notification(&self) -> Option<Notification> {
        self.notification
            .or_else(|| (self.connector == "dsn").then_some(Notification::Bounce))
    }
}

/// Whether the spool can take mail now: cleared by a write that failed
/// because the file system is full or read-only, set again by one that
/// succeeds. While it is cleared the receiving side answers MAIL with
/// `452 4.3.1` and the queue retries what it could not write.
#[derive(Debug, Default)]
pub struct Health {
    full: std::sync::atomic::AtomicBool,
}

impl Health {
    /// Whether the last write failed for lack of space (or a read-only file
    /// system).
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Records the outcome of a write: a failure for lack of space (or a
    /// read-only file system) marks the spool full. Only [`Spool::probe`]
    /// marks it writable again (a small write that happens to succeed on a
    /// full disk says little).
    pub fn record<T, E: AsStorage>(&self, r: &Result<T, E>) {
        if let Err(e) = r
            && e.is_storage()
            && !self.full.swap(true, Ordering::Relaxed)
        {
            tracing::error!(
                "the spool's file system is full or read-only: refusing mail with 452 4.3.1 until it can be written"
            );
        }
    }

    fn writable(&self) {
        if self.full.swap(false, Ordering::Relaxed) {
            tracing::warn!("the spool takes mail again");
        }
    }
}

/// Errors that may mean "no space" (for [`Health::record`]).
pub trait AsStorage {
    /// Full, over quota or read-only.
    fn is_storage(&self) -> bool;
}

impl<T: AsStorage + ?Sized> AsStorage for &T {
    fn is_storage(&self) -> bool {
        (**self).is_storage()
    }
}

impl AsStorage for std::io::Error {
    fn is_storage(&self) -> bool {
        fsutil::is_storage_error(self)
    }
}

/// A spooled message as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    /// Envelope.
    pub envelope: Envelope,
    /// Content.
    pub content: Vec<u8>,
}

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    /// `O_TMPFILE` works here (else messages are written in `tmp/`).
    anonymous: std::sync::atomic::AtomicBool,
    root: PathBuf,
    tmp: PathBuf,
    incoming: PathBuf,
    fsync: bool,
    incoming_sync: Arc<GroupSync>,
    health: Arc<Health>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A new queue id: time in microseconds, process id and a counter, in hex
/// (22 characters); unique on this host and sortable by arrival. Uniqueness
/// does not rest on it: the spool creates names exclusively.
pub fn new_id() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!(
        "{micros:013x}{:05x}{:04x}",
        std::process::id() & 0xfffff,
        seq & 0xffff
    )
}

/// Whether `id` has the form of a queue id (lower-case hex, at most 32
/// characters): anything else is refused before it comes near a path.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    crate::state::now()
}

/// How often [`Spool::create`] draws a new id when the one it drew is taken.
const ID_ATTEMPTS: usize = 8;

impl Spool {
    /// Opens (creating, mode 0700) the spool and cleans up after a crash:
    /// files left in `tmp/` were never acknowledged and are removed. Returns
    /// the spool and how many leftovers were removed.
    pub fn open(dir: &Path, fsync: bool) -> Result<(Spool, usize), SpoolError> {
        let tmp = dir.join("tmp");
        let incoming = dir.join("incoming");
        for d in [dir, &tmp, &incoming] {
            fsutil::private_dir(d).map_err(io(d))?;
        }
        let mut removed = 0;
        for e in fs::read_dir(&tmp).map_err(io(&tmp))? {
            let e = e.map_err(io(&tmp))?;
            fs::remove_file(e.path()).map_err(io(&e.path()))?;
            removed += 1;
        }
        if removed > 0 {
            fsutil::sync_dir(&tmp).map_err(io(&tmp))?;
        }
        Ok((
            Spool {
                anonymous: std::sync::atomic::AtomicBool::new(true),
                incoming_sync: Arc::new(GroupSync::new(&incoming)),
                root: dir.to_path_buf(),
                tmp,
                incoming,
                fsync,
                health: Arc::new(Health::default()),
            },
            removed,
        ))
    }

    /// Where complete messages are.
    pub fn incoming(&self) -> &Path {
        &self.incoming
    }

    /// The spool directory itself (the queue keeps its state beside
    /// `incoming/`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the spool can take mail (shared by everyone who writes it).
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Writes, fsyncs and removes a small file in `tmp/`: whether the file
    /// system takes data again (recorded in [`Spool::health`]).
    pub fn probe(&self) -> std::io::Result<()> {
        let path = self.tmp.join(format!("probe.{}", std::process::id()));
        let r = fsutil::create_new(&path).and_then(|mut f| {
            f.write_all(&[0u8; 4096])?;
            f.sync_all()
        });
        let _ = fs::remove_file(&path);
        match &r {
            Ok(()) => self.health.writable(),
            Err(_) => self.health.record(&r),
        }
        r
    }

    /// Starts writing a message under a fresh id that no complete message
    /// has (a taken id — a clock step, a reused process id — makes it draw
    /// another). The file is unnamed (`O_TMPFILE` in `incoming/`: nothing to
    /// clean up after a crash, one directory change per message) where the
    /// file system allows, else `tmp/ID` created exclusively; mode 0600.
    pub fn create(&self) -> Result<SpoolWriter, SpoolError> {
        let mut last = None;
        for _ in 0..ID_ATTEMPTS {
            let id = new_id();
            let final_path = self.incoming.join(&id);
            if final_path.exists() {
                last = Some(final_path);
                continue;
            }
            if self.anonymous.load(Ordering::Relaxed) {
                match fsutil::create_anonymous(&self.incoming) {
                    Ok(Some(file)) => {
                        return Ok(self.writer(file, id, None, final_path));
                    }
                    Ok(None) => self.anonymous.store(false, Ordering::Relaxed),
                    Err(source) => {
                        return Err(SpoolError::Io {
                            path: self.incoming.clone(),
                            source,
                        });
                    }
                }
            }
            let path = self.tmp.join(&id);
            match fsutil::create_new(&path) {
                Ok(file) => return Ok(self.writer(file, id, Some(path), final_path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(path),
                Err(e) => return Err(SpoolError::Io { path, source: e }),
            }
        }
        Err(SpoolError::IdTaken {
            path: last.unwrap_or_else(|| self.tmp.clone()),
        })
    }

    fn writer(
        &self,
        file: File,
        id: String,
        tmp: Option<PathBuf>,
        final_path: PathBuf,
    ) -> SpoolWriter {
        SpoolWriter {
            file,
            id,
            tmp,
            final_path,
            fsync: self.fsync,
            sync: self.incoming_sync.clone(),
            done: false,
            written: 0,
        }
    }

    /// Ids of complete messages, oldest first.
    pub fn list(&self) -> Result<Vec<String>, SpoolError> {
        let mut ids: Vec<String> = fs::read_dir(&self.incoming)
            .map_err(io(&self.incoming))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|id| valid_id(id))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// How many complete messages there are: one pass over `incoming/`,
    /// nothing opened or sorted (blocking: off the async workers).
    pub fn count(&self) -> Result<usize, SpoolError> {
        let dir = fs::read_dir(&self.incoming).map_err(io(&self.incoming))?;
        Ok(dir
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_str().is_some_and(valid_id))
            })
            .count())
    }

    /// Reads one complete message.
    pub fn read(&self, id: &str) -> Result<Spooled, SpoolError> {
        read_file(&self.incoming.join(id))
    }
}

/// The longest envelope line read: `smtp.max_recipients` (at most 10,000)
/// recipients with 500-octet ORCPTs fit.
const MAX_ENVELOPE: u64 = 16 * 1024 * 1024;

/// Reads the envelope of a spool file and where its content starts, without
/// reading the content.
pub fn read_envelope(path: &Path) -> Result<(Envelope, u64), SpoolError> {
    let bad = |reason: &str| SpoolError::Format {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let f = File::open(path).map_err(io(path))?;
    let mut r = BufReader::new(f).take(MAX_ENVELOPE);
    let mut magic = String::new();
    r.read_line(&mut magic).map_err(io(path))?;
    if magic.trim_end_matches('\n') != MAGIC {
        return Err(bad("bad first line"));
    }
    let mut env = String::new();
    r.read_line(&mut env).map_err(io(path))?;
    if !env.ends_with('\n') {
        return Err(bad("the envelope line is cut short"));
    }
    let envelope: Envelope =
        serde_json::from_str(env.trim_end_matches('\n')).map_err(|e| bad(&e.to_string()))?;
    Ok((envelope, (magic.len() + env.len()) as u64))
}

/// Reads a spool file.
pub fn read_file(path: &Path) -> Result<Spooled, SpoolError> {
    let bad = |reason: &str| SpoolError::Format {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let mut r = BufReader::new(File::open(path).map_err(io(path))?);
    let mut magic = String::new();
    r.read_line(&mut magic).map_err(io(path))?;
    if magic.trim_end_matches('\n') != MAGIC {
        return Err(bad("bad first line"));
    }
    let mut env = String::new();
    r.read_line(&mut env).map_err(io(path))?;
    let envelope: Envelope =
        serde_json::from_str(env.trim_end_matches('\n')).map_err(|e| bad(&e.to_string()))?;
    let mut content = Vec::new();
    r.read_to_end(&mut content).map_err(io(path))?;
    Ok(Spooled { envelope, content })
}

/// A message being written; [`SpoolWriter::commit`] makes it durable and
/// visible. Dropped without commit, the temporary file is removed. Writes go
/// straight to the file: callers hand over large buffers.
pub struct SpoolWriter {
    file: File,
    id: String,
    /// Its name in `tmp/` (none for an unnamed file).
    tmp: Option<PathBuf>,
    final_path: PathBuf,
    fsync: bool,
    sync: Arc<GroupSync>,
    done: bool,
    /// Octets written so far.
    written: u64,
}

impl SpoolWriter {
    /// The message's queue id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The path errors name: its file in `tmp/`, or the name it will have.
    fn shown(&self) -> &Path {
        self.tmp.as_deref().unwrap_or(&self.final_path)
    }

    /// Writes the header and the envelope (its id set to this message's);
    /// call once, before the content.
    pub fn write_envelope(&mut self, env: &mut Envelope) -> Result<(), SpoolError> {
        env.id = self.id.clone();
        let line = serde_json::to_string(env).map_err(|e| SpoolError::Format {
            path: self.shown().to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut head = Vec::with_capacity(MAGIC.len() + line.len() + 2);
        head.extend_from_slice(MAGIC.as_bytes());
        head.push(b'\n');
        head.extend_from_slice(line.as_bytes());
        head.push(b'\n');
        self.write(&head)
    }

    /// Appends content bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        let path = self.shown().to_path_buf();
        self.file.write_all(bytes).map_err(io(&path))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Octets written so far (envelope included).
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing is written yet.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// What is written so far, mapped read-only: a check can read a message
    /// of any size without holding it in memory (the pages are the page
    /// cache's, dropped under pressure).
    pub fn map(&self) -> Result<memmap2::Mmap, SpoolError> {
        if self.written == 0 {
            return Err(SpoolError::Format {
                path: self.shown().to_path_buf(),
                reason: "nothing written to map".into(),
            });
        }
        // SAFETY: the file is this writer's own, unnamed or in `tmp/` under
        // a fresh id, mode 0600; nothing else writes or truncates it while
        // the map lives (the caller holds the writer and writes no more).
        unsafe { memmap2::Mmap::map(&self.file) }.map_err(io(self.shown()))
    }

    /// fsync, give it its name in `incoming/` (never over an existing
    /// message), fsync the directory (shared with concurrent commits). On
    /// failure nothing is left in `incoming/`.
    pub fn commit(mut self) -> Result<(), SpoolError> {
        let path = self.shown().to_path_buf();
        if self.fsync {
            self.file.sync_all().map_err(io(&path))?;
        }
        let named = match &self.tmp {
            None => fsutil::link_anonymous(&self.file, &self.final_path),
            Some(tmp) => fsutil::rename_noreplace(tmp, &self.final_path),
        };
        named.map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                SpoolError::IdTaken {
                    path: self.final_path.clone(),
                }
            } else {
                SpoolError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        self.done = true;
        if self.fsync
            && let Err(source) = self.sync.sync()
        {
            // Not durable, so not acknowledged: take it back, or the client's
            // retry would make a duplicate.
            let _ = fs::remove_file(&self.final_path);
            return Err(SpoolError::Io {
                path: self.final_path.clone(),
                source,
            });
        }
        Ok(())
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        // An unnamed file goes with its descriptor.
        if !self.done
            && let Some(tmp) = &self.tmp
        {
            let _ = fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(id: &str) -> Envelope {
        Envelope {
            id: id.into(),
            received_at: 1,
            mail_from: "a@example.com".into(),
            recipients: vec![Recipient {
                address: "b@example.org".into(),
                ..Recipient::default()
            }],
            connector: "test".into(),
            ..Envelope::default()
        }
    }

    #[test]
    fn commit_makes_a_message_visible_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, removed) = Spool::open(dir.path(), true).unwrap();
        assert_eq!(removed, 0);
        let mut w = spool.create().unwrap();
        let id = w.id().to_string();
        let mut e = env("");
        w.write_envelope(&mut e).unwrap();
        w.write(b"Subject: hi\r\n\r\nbody\r\n").unwrap();
        assert!(
            spool.list().unwrap().is_empty(),
            "not visible before commit"
        );
        assert_eq!(spool.count().unwrap(), 0);
        w.commit().unwrap();
        assert_eq!(spool.list().unwrap(), vec![id.clone()]);
        assert_eq!(spool.count().unwrap(), 1);
        let m = spool.read(&id).unwrap();
        assert_eq!(m.envelope, env(&id));
        assert_eq!(m.content, b"Subject: hi\r\n\r\nbody\r\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("incoming").join(&id)), 0o600);
        for d in ["", "tmp", "incoming"] {
            assert_eq!(mode(&dir.path().join(d)), 0o700, "{d}");
        }
    }

    #[test]
    fn abandoned_and_crashed_writes_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), false).unwrap();
        let mut w = spool.create().unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        assert!(
            fs::read_dir(dir.path().join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
        // A crash mid-write leaves a file in tmp/: removed at the next open.
        fs::write(dir.path().join("tmp/crashed"), b"half").unwrap();
        let (spool, removed) = Spool::open(dir.path(), false).unwrap();
        assert_eq!(removed, 1);
        assert!(spool.list().unwrap().is_empty());
    }

    #[test]
    fn an_acknowledged_message_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), true).unwrap();
        let mut w = spool.create().unwrap();
        let id = w.id().to_string();
        w.write_envelope(&mut env("")).unwrap();
        w.write(b"first").unwrap();
        // Another message claims the same name before this one commits (as
        // a clock step back with a reused process id would make it).
        fs::write(dir.path().join("incoming").join(&id), b"acknowledged").unwrap();
        let e = w.commit().unwrap_err();
        assert!(matches!(e, SpoolError::IdTaken { .. }), "{e}");
        assert_eq!(
            fs::read(dir.path().join("incoming").join(&id)).unwrap(),
            b"acknowledged"
        );
        // A writer never starts under a name that is taken in tmp/ or
        // incoming/: with every id of this microsecond taken, it draws more.
        for _ in 0..3 {
            let w = spool.create().unwrap();
            assert_ne!(w.id(), id);
        }
    }

    #[test]
    fn ids_are_unique_and_ordered() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        assert!(valid_id(&a));
        for bad in ["", "../x", "ABC", "0123/4", "a b", &"a".repeat(33)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn foreign_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), false).unwrap();
        fs::write(dir.path().join("incoming/abc"), b"hello\n").unwrap();
        assert!(matches!(spool.read("abc"), Err(SpoolError::Format { .. })));
    }
}
