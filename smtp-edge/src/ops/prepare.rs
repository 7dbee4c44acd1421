//! `smtp-edge prepare --user NAME`: what root does before a daemon that runs
//! as an unprivileged user with only CAP_BPF, CAP_NET_ADMIN and
//! CAP_NET_BIND_SERVICE can start (the systemd unit runs it as
//! `ExecStartPre=+`): bpffs mounted, the pin directory reachable by the user
//! and its pins owned by it (a gate pinned by a root daemon before an
//! upgrade is adopted), the state, spool and control-socket directories
//! owned by it (0700, contents too), and a look at whether it can read the
//! configuration and the TLS files.
//!
//! The trees are the daemon's user's, who may change them while root walks
//! them: the walk goes by directory descriptor and never follows a link
//! (`openat` with `O_NOFOLLOW`, owners changed on the opened inode); what
//! it leaves alone is reported as a warning.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::fsutil;

/// Errors preparing the host.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Not root.
    #[error("prepare changes owners and mounts: run it as root")]
    NotRoot,
    /// No such account.
    #[error("no user `{0}` (create it: adduser --system --group {0})")]
    NoUser(String),
    /// A file operation.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The pin directory.
    #[error(transparent)]
    Filter(#[from] crate::gate::xdp::FilterError),
    /// A directory that is not the daemon's alone.
    #[error(
        "{0}: not a directory of smtp-edge's own (its name should contain `smtp-edge`, or it must not exist yet); not taken over"
    )]
    Shared(PathBuf),
}

/// The account the daemon runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl Account {
    /// A user name from the password database, or `UID[:GID]`.
    pub fn lookup(user: &str) -> Result<Account, PrepareError> {
        if let Some((u, g)) = user.split_once(':')
            && let (Ok(uid), Ok(gid)) = (u.parse(), g.parse())
        {
            return Ok(Account { uid, gid });
        }
        if let Ok(uid) = user.parse() {
            return Ok(Account { uid, gid: uid });
        }
        let name = CString::new(user).map_err(|_| PrepareError::NoUser(user.into()))?;
        // SAFETY: getpwnam returns a pointer into static storage (or null);
        // the fields are read before any other call.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            return Err(PrepareError::NoUser(user.into()));
        }
        // SAFETY: non-null, valid until the next getpw* call.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(Account { uid, gid })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PrepareError + '_ {
    move |source| PrepareError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How deep a walk goes (the daemon's trees are two or three levels).
const MAX_DEPTH: usize = 32;

/// A walk that gives a tree to the daemon's user by directory descriptor:
/// each entry opened without following links (`O_PATH|O_NOFOLLOW`), checked
/// and changed on that inode, so a directory swapped for a symbolic link
/// while it runs leads nowhere outside. Entries that are symbolic links, on
/// another file system, owned by someone unexpected, or (not directories)
/// with more than one name are left alone and reported.
struct Walk {
    who: Account,
    /// The file system of the top directory.
    dev: u64,
    /// Owners an entry may have: root, the daemon's user, the top's owner.
    owners: [u32; 3],
    changed: u64,
    skipped: Vec<String>,
}

impl Walk {
    fn refuse(&self, st: &fsutil::Stat) -> Option<String> {
        if st.is_symlink() {
            Some("a symbolic link".into())
        } else if st.dev != self.dev {
            Some("on another file system".into())
        } else if !self.owners.contains(&st.uid) {
            Some(format!("owned by uid {}", st.uid))
        } else if !st.is_dir() && st.nlink > 1 {
            Some(format!("{} hard links", st.nlink))
        } else {
            None
        }
    }

    fn skip(&mut self, path: &Path, why: &str) {
        self.skipped.push(format!(
            "{}: skipped ({why}): not given to the daemon's user",
            path.display()
        ));
    }

    fn give(
        &mut self,
        fd: BorrowedFd<'_>,
        st: &fsutil::Stat,
        path: &Path,
    ) -> Result<(), PrepareError> {
        if (st.uid, st.gid) != (self.who.uid, self.who.gid) {
            fsutil::chown_fd(fd, self.who.uid, self.who.gid).map_err(io(path))?;
            self.changed += 1;
        }
        Ok(())
    }

    fn walk(&mut self, dir: BorrowedFd<'_>, path: &Path, depth: usize) -> Result<(), PrepareError> {
        let names = match fsutil::names(dir) {
            Ok(n) => n,
            Err(e) => {
                self.skip(path, &e.to_string());
                return Ok(());
            }
        };
        for name in names {
            let p = path.join(&name);
            let (fd, st) = match fsutil::entry_at(dir, &name) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.skip(&p, &e.to_string());
                    continue;
                }
            };
            if let Some(why) = self.refuse(&st) {
                self.skip(&p, &why);
                continue;
            }
            self.give(fd.as_fd(), &st, &p)?;
            if st.is_dir() {
                if depth >= MAX_DEPTH {
                    self.skip(&p, "too deep");
                    continue;
                }
                let sub = fsutil::dir_of(fd.as_fd()).map_err(io(&p))?;
                self.walk(sub.as_fd(), &p, depth + 1)?;
            }
        }
        Ok(())
    }
}

/// A private directory (0700) owned by `who`, with what is in it. Only a
/// directory that is smtp-edge's alone: one that does not exist yet, or
/// whose name says so (never `/var/spool` because a setting says so).
/// What is skipped in it goes to `warnings`.
fn own_dir(
    path: &Path,
    who: Account,
    done: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<(), PrepareError> {
    let named = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains("smtp-edge"));
    if std::fs::symlink_metadata(path).is_ok() && !named {
        return Err(PrepareError::Shared(path.to_path_buf()));
    }
    std::fs::create_dir_all(path).map_err(io(path))?;
    let top = fsutil::open_tree(path).map_err(io(path))?;
    let st = fsutil::stat_fd(top.as_fd()).map_err(io(path))?;
    fsutil::chmod_fd(top.as_fd(), 0o700).map_err(io(path))?;
    let mut walk = Walk {
        who,
        dev: st.dev,
        owners: [0, who.uid, st.uid],
        changed: 0,
        skipped: Vec::new(),
    };
    walk.give(top.as_fd(), &st, path)?;
    walk.walk(top.as_fd(), path, 0)?;
    done.push(format!(
        "{}: owned by {}:{} (0700{})",
        path.display(),
        who.uid,
        who.gid,
        match walk.changed {
            0 => String::new(),
            n => format!(", {n} entries given to it"),
        }
    ));
    warnings.append(&mut walk.skipped);
    Ok(())
}

/// Whether `who` may read `path` by its mode bits (primary group only).
fn readable(path: &Path, who: Account) -> bool {
    let Ok(m) = std::fs::metadata(path) else {
        return false;
    };
    let mode = m.mode();
    (m.uid() == who.uid && mode & 0o400 != 0)
        || (m.gid() == who.gid && mode & 0o040 != 0)
        || mode & 0o004 != 0
}

/// The bpffs mount root above `dir` (the highest ancestor still on bpffs).
fn bpffs_root(dir: &Path) -> PathBuf {
    let mut root = dir.to_path_buf();
    for a in dir.ancestors().skip(1) {
        if on_bpffs(a) {
            root = a.to_path_buf();
        } else {
            break;
        }
    }
    root
}

fn on_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == 0xcafe_4a11
}

/// Prepares the host for a daemon running as `who`; what was done, and
/// warnings (files it cannot read).
pub fn prepare(cfg: &Config, who: Account) -> Result<(Vec<String>, Vec<String>), PrepareError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(PrepareError::NotRoot);
    }
    let mut done = Vec::new();
    let mut warnings = Vec::new();
    if cfg.filter.enabled {
        let pin = &cfg.filter.pin_dir;
        crate::gate::xdp::ensure_bpffs(pin)?;
        // The user must reach its directory: search permission on the
        // bpffs directories above it (systemd mounts /sys/fs/bpf 0700).
        let root = bpffs_root(pin);
        for a in pin.ancestors().skip(1) {
            let m = std::fs::metadata(a).map_err(io(a))?;
            if m.mode() & 0o001 == 0 && m.uid() != who.uid {
                let mode = (m.mode() & 0o7777) | 0o001;
                std::fs::set_permissions(a, std::fs::Permissions::from_mode(mode))
                    .map_err(io(a))?;
                done.push(format!(
                    "{}: others may search it (mode {mode:o})",
                    a.display()
                ));
            }
            if a == root {
                break;
            }
        }
        own_dir(pin, who, &mut done, &mut warnings)?;
    }
    own_dir(&cfg.daemon.state_dir, who, &mut done, &mut warnings)?;
    if cfg.smtp.raw.enabled {
        own_dir(&cfg.smtp.raw.spool_dir, who, &mut done, &mut warnings)?;
    }
    if let Some(dir) = cfg.daemon.control_socket.parent() {
        own_dir(dir, who, &mut done, &mut warnings)?;
    }
    let mut files = vec![cfg.path.clone()];
    if let Some(t) = &cfg.smtp.raw.tls {
        files.push(t.certificate.clone());
        files.push(t.key.clone());
    }
    for c in &cfg.outbound {
        if let Some(cc) = &c.client_cert {
            files.push(cc.certificate.clone());
            files.push(cc.key.clone());
        }
        if let Some(t) = &c.tls_trust {
            files.push(t.clone());
        }
    }
    for f in files {
        if !readable(&f, who) {
            warnings.push(format!(
                "{}: the daemon's user cannot read it (e.g. chgrp its group and chmod 640)",
                f.display()
            ));
        }
    }
    Ok((done, warnings))
}
