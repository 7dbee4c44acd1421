//! File-system helpers shared by the spool, the queue and the state
//! directory: private modes whatever the umask, exclusive creation, renames
//! that never replace, durable replacement, and a directory fsync shared by
//! everyone who needs one at the same time (group commit).
//!
//! Mail and queue state are private: directories 0700, files 0600. Modes are
//! set explicitly on directories (an existing installation with 0755 is
//! tightened at start) and given at creation to files, so no file is ever
//! readable by others, not even for a moment.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

/// Mode of every directory holding mail or state.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file holding mail or state.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with mode 0700 and sets 0700 on `dir`
/// itself if it already existed.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Creates `path` for writing (and reading back), mode 0600; fails if it
/// exists.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

/// An unnamed file in `dir` (`O_TMPFILE`, mode 0600): nothing to clean up
/// after a crash, given a name only by [`link_anonymous`]. `Ok(None)` when
/// the file system does not support it.
pub fn create_anonymous(dir: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(FILE_MODE)
        .open(dir)
    {
        Ok(f) => Ok(Some(f)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Gives an unnamed file (from [`create_anonymous`]) the name `to`, unless
/// `to` exists (then `AlreadyExists`): a link never replaces.
pub fn link_anonymous(file: &File, to: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let from = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "fd path"))?;
    let to = cstring(to)?;
    // SAFETY: two valid NUL-terminated paths; linkat has no other
    // preconditions. AT_SYMLINK_FOLLOW resolves the /proc fd link to the
    // open file (no CAP_DAC_READ_SEARCH needed, unlike AT_EMPTY_PATH).
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn cstring(p: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

/// Renames `from` to `to` unless `to` exists (then `AlreadyExists`):
/// `renameat2(RENAME_NOREPLACE)`, or on a file system without it, a hard
/// link and an unlink (link never replaces either).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (f, t) = (cstring(from)?, cstring(to)?);
    // SAFETY: two valid NUL-terminated paths; renameat2 has no other
    // preconditions.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        _ => Err(e),
    }
}

/// fsync of a directory (makes renames and removals in it durable).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether an I/O error means the file system cannot take more data now
/// (full, over quota, read-only): the receiving side answers 452 4.3.1.
pub fn is_storage_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EROFS)
    )
}

/// Replaces `path` with `bytes` durably: a private temporary file next to it
/// (`NAME.tmp.PID.N`), write, fsync, rename, fsync the directory. A failure
/// leaves the old file and no temporary one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp);
    let written = create_new(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    let renamed = written.and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = renamed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Takes an exclusive lock (flock(2)) on `path`, created 0600 if missing;
/// held until the file is dropped. Waits for another holder.
pub fn lock_exclusive(path: &Path) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(FILE_MODE)
        .open(path)?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

/// Whether a file name is one of [`write_atomic`]'s temporary files (left
/// behind only by a crash).
pub fn is_atomic_leftover(name: &str) -> bool {
    name.contains(".tmp.")
}

/// A directory fsync shared by concurrent callers: one who needs the
/// directory durable waits for an fsync that *started* after its own change,
/// and whoever finds none running starts one for everybody waiting. Under
/// load, one fsync covers many renames; alone, a caller pays one fsync as
/// before.
#[derive(Debug)]
pub struct GroupSync {
    dir: PathBuf,
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct SyncState {
    /// fsyncs started so far.
    started: u64,
    /// The last fsync that finished, and whether it failed.
    finished: u64,
    failed: Option<(u64, io::ErrorKind, String)>,
    running: bool,
}

impl GroupSync {
    /// Shared fsyncs of `dir`.
    pub fn new(dir: &Path) -> Self {
        GroupSync {
            dir: dir.to_path_buf(),
            state: Mutex::new(SyncState::default()),
            done: Condvar::new(),
        }
    }

    /// Returns once an fsync of the directory that started after this call
    /// has finished (blocking: call it off the async workers).
    pub fn sync(&self) -> io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // One running now may have started before our change.
        let need = s.started + 1;
        loop {
            if s.finished >= need {
                return match &s.failed {
                    Some((epoch, kind, text)) if *epoch >= need => {
                        Err(io::Error::new(*kind, text.clone()))
                    }
                    _ => Ok(()),
                };
            }
            if !s.running {
                s.running = true;
                s.started += 1;
                let epoch = s.started;
                drop(s);
                let r = sync_dir(&self.dir);
                s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                s.running = false;
                s.finished = epoch;
                if let Err(e) = &r {
                    s.failed = Some((epoch, e.kind(), e.to_string()));
                }
                self.done.notify_all();
                continue;
            }
            s = self.done.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn modes_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: umask has no preconditions; tests in this process that
        // create files are not affected by a wider umask than usual.
        let old = unsafe { libc::umask(0) };
        let d = dir.path().join("a/b");
        private_dir(&d).unwrap();
        let f = d.join("f");
        create_new(&f).unwrap();
        write_atomic(&d.join("g"), b"x").unwrap();
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&f), 0o600);
        assert_eq!(mode(&d.join("g")), 0o600);
        // An existing wide directory is tightened.
        let wide = dir.path().join("wide");
        fs::create_dir(&wide).unwrap();
        fs::set_permissions(&wide, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&wide).unwrap();
        assert_eq!(mode(&wide), 0o700);
    }

    #[test]
    fn exclusive_creation_and_renames_never_replace() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        create_new(&a).unwrap().write_all(b"first").unwrap();
        assert_eq!(
            create_new(&a).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        fs::write(&b, b"acknowledged").unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&b).unwrap(), b"acknowledged");
        fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert_eq!(fs::read(&b).unwrap(), b"first");
        assert!(!a.exists());
    }

    #[test]
    fn anonymous_files_get_a_name_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let Some(mut f) = create_anonymous(dir.path()).unwrap() else {
            return; // not supported here: the spool falls back to tmp/
        };
        f.write_all(b"message").unwrap();
        assert!(
            fs::read_dir(dir.path()).unwrap().next().is_none(),
            "no name yet"
        );
        let name = dir.path().join("id");
        fs::write(&name, b"acknowledged").unwrap();
        assert_eq!(
            link_anonymous(&f, &name).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(fs::read(&name).unwrap(), b"acknowledged");
        fs::remove_file(&name).unwrap();
        link_anonymous(&f, &name).unwrap();
        assert_eq!(fs::read(&name).unwrap(), b"message");
        assert_eq!(
            fs::metadata(&name).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn group_sync_serves_concurrent_callers() {
        let dir = tempfile::tempdir().unwrap();
        let g = Arc::new(GroupSync::new(dir.path()));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || g.sync())
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let s = g.state.lock().unwrap();
        assert!(s.started >= 1 && s.started <= 16);
        assert_eq!(s.finished, s.started);
        drop(s);
        let gone = GroupSync::new(&dir.path().join("missing"));
        assert!(gone.sync().is_err());
    }
}
