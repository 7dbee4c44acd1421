//! `smtp-edge prepare --user NAME`: what root does before a daemon that runs
//! as an unprivileged user with only CAP_BPF, CAP_NET_ADMIN and
//! CAP_NET_BIND_SERVICE can start (the systemd unit runs it as
//! `ExecStartPre=+`): bpffs mounted, the pin directory reachable by the user
//! and its pins owned by it (a gate pinned by a root daemon before an
//! upgrade is adopted), the state, spool and control-socket directories
//! owned by it (0700, contents too), and a look at whether it can read the
//! configuration and the TLS files.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::Config;

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

/// Owns `path` and everything below it to `who` (symbolic links themselves,
/// never their targets).
fn chown_tree(path: &Path, who: Account) -> Result<u64, PrepareError> {
    let mut n = 0;
    let meta = std::fs::symlink_metadata(path).map_err(io(path))?;
    if meta.uid() != who.uid || meta.gid() != who.gid {
        std::os::unix::fs::lchown(path, Some(who.uid), Some(who.gid)).map_err(io(path))?;
        n += 1;
    }
    if meta.is_dir() {
        for e in std::fs::read_dir(path).map_err(io(path))? {
            let e = e.map_err(io(path))?;
            n += chown_tree(&e.path(), who)?;
        }
    }
    Ok(n)
}

/// A private directory (0700) owned by `who`, with what is in it. Only a
/// directory that is smtp-edge's alone: one that does not exist yet, or
/// whose name says so (never `/var/spool` because a setting says so).
fn own_dir(path: &Path, who: Account, done: &mut Vec<String>) -> Result<(), PrepareError> {
    let named = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains("smtp-edge"));
    if path.exists() && !named {
        return Err(PrepareError::Shared(path.to_path_buf()));
    }
    std::fs::create_dir_all(path).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io(path))?;
    let changed = chown_tree(path, who)?;
    done.push(format!(
        "{}: owned by {}:{} (0700{})",
        path.display(),
        who.uid,
        who.gid,
        match changed {
            0 => String::new(),
            n => format!(", {n} entries given to it"),
        }
    ));
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
        own_dir(pin, who, &mut done)?;
    }
    own_dir(&cfg.daemon.state_dir, who, &mut done)?;
    if cfg.smtp.raw.enabled {
        own_dir(&cfg.smtp.raw.spool_dir, who, &mut done)?;
    }
    if let Some(dir) = cfg.daemon.control_socket.parent() {
        own_dir(dir, who, &mut done)?;
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
