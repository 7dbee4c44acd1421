//! File-system helpers shared by the spool, the queue and the state
//! directory: private modes whatever the umask, exclusive creation, renames
//! that never replace, durable replacement, a directory fsync shared by
//! everyone who needs one at the same time (group commit), and what root
//! needs in directories the daemon's user owns: opens that never follow a
//! symbolic link, and walks by directory descriptor (`openat` with
//! `O_NOFOLLOW`, owner changes on the opened inode, never by path).
//!
//! Mail and queue state are private: directories 0700, files 0600. Modes are
//! set explicitly on directories (an existing installation with 0755 is
//! tightened at start) and given at creation to files, so no file is ever
//! readable by others, not even for a moment.

use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
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
    write_atomic_owned(path, bytes, None)
}

/// [`write_atomic`], the new file given to `owner` (uid, gid) before it
/// takes its name: root writing into the daemon's directory changes the
/// owner of the file it created, never of whatever the name holds later.
pub fn write_atomic_owned(path: &Path, bytes: &[u8], owner: Option<(u32, u32)>) -> io::Result<()> {
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
        if let Some((uid, gid)) = owner {
            chown_file(&f, uid, gid)?;
        }
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
/// held until the file is dropped. Waits for another holder. A symbolic
/// link at `path` is never followed (root's CLI takes locks in a directory
/// the daemon's user owns), and the file must be a regular file with one
/// name.
pub fn lock_exclusive(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(not_followed)?;
    single(&f)?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

/// The whole of the regular file `path`, never through a symbolic link at
/// its last component (`NotFound` when there is none).
pub fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(not_followed)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file: not read",
        ));
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Gives the open file `f` to `uid:gid` when it is a regular file with a
/// single name (a second name could be a hard link to a file elsewhere).
pub fn chown_file(f: &File, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    single(f)?;
    let m = f.metadata()?;
    if (m.uid(), m.gid()) == (uid, gid) {
        return Ok(());
    }
    std::os::unix::fs::fchown(f, Some(uid), Some(gid))
}

/// A regular file with one name, or an error saying what it is.
fn single(f: &File) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file: refused",
        ));
    }
    if m.nlink() > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a file with {} hard links: refused", m.nlink()),
        ));
    }
    Ok(())
}

/// ELOOP from `O_NOFOLLOW` said plainly.
fn not_followed(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        io::Error::new(
            e.kind(),
            "a symbolic link: refused (links in the state directory are never followed)",
        )
    } else {
        e
    }
}

/// What [`stat_fd`] tells about an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Names (hard links).
    pub nlink: u64,
    /// The file system it is on.
    pub dev: u64,
}

impl Stat {
    fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }

    /// A symbolic link (only seen on a descriptor of [`entry_at`]).
    pub fn is_symlink(&self) -> bool {
        self.kind() == libc::S_IFLNK
    }
}

/// fstat(2) of a descriptor.
pub fn stat_fd(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    // SAFETY: fstat writes into a zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Stat {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode,
        nlink: st.st_nlink as u64,
        dev: st.st_dev,
    })
}

fn openat(dir: Option<BorrowedFd<'_>>, name: &std::ffi::CStr, flags: i32) -> io::Result<OwnedFd> {
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: a valid directory descriptor (or AT_FDCWD) and a
    // NUL-terminated name; the result is a new descriptor we own.
    let fd = unsafe { libc::openat(dirfd, name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(not_followed(io::Error::last_os_error()));
    }
    // SAFETY: openat returned a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The directory `path`, opened for a walk: refused when its last component
/// is a symbolic link.
pub fn open_tree(path: &Path) -> io::Result<OwnedFd> {
    openat(
        None,
        &cstring(path)?,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
    )
}

/// The entry `name` of the directory `dir` itself (`O_PATH|O_NOFOLLOW`: a
/// symbolic link is the link, never its target) and what it is. Whatever
/// the name holds afterwards, the descriptor stays on this inode.
pub fn entry_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<(OwnedFd, Stat)> {
    let name = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))?;
    let fd = openat(Some(dir), &name, libc::O_PATH | libc::O_NOFOLLOW)?;
    let st = stat_fd(fd.as_fd())?;
    Ok((fd, st))
}

/// An entry of [`entry_at`] that is a directory, opened to be read (the
/// same inode, whatever its name holds now).
pub fn dir_of(entry: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    openat(Some(entry), c".", libc::O_RDONLY | libc::O_DIRECTORY)
}

/// The names in the open directory `dir` (without `.` and `..`).
pub fn names(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    // fdopendir takes its descriptor: give it one of its own at offset 0.
    let own = openat(Some(dir), c".", libc::O_RDONLY | libc::O_DIRECTORY)?;
    let raw = own.into_raw_fd();
    // SAFETY: a valid directory descriptor, owned by the stream from here.
    let stream = unsafe { libc::fdopendir(raw) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the descriptor is still ours.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut out = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; readdir signals errors through it.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a valid stream; the entry is read before the next call.
        let ent = unsafe { libc::readdir(stream) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            break match e.raw_os_error() {
                Some(0) | None => Ok(()),
                Some(_) => Err(e),
            };
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(name).to_owned());
        }
    };
    // SAFETY: the stream is valid and closed once (with its descriptor).
    unsafe { libc::closedir(stream) };
    result.map(|()| out)
}

/// Gives the file open as `fd` (from [`entry_at`] or [`open_tree`]) to
/// `uid:gid`: `fchownat(fd, "", AT_EMPTY_PATH|AT_SYMLINK_NOFOLLOW)`, the
/// inode itself, never a path.
pub fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: a valid descriptor and an empty NUL-terminated path.
    let r = unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets the permission bits of the directory open as `fd`.
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: a valid descriptor.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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
    fn links_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        let link = dir.path().join("link.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = lock_exclusive(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(!target.exists(), "the link's target was created");
        fs::write(&target, b"elsewhere").unwrap();
        let e = read_nofollow(&link).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(
            read_nofollow(&dir.path().join("none")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        // A second name of a file is no lock to take.
        fs::hard_link(&target, dir.path().join("second")).unwrap();
        assert!(lock_exclusive(&dir.path().join("second")).is_err());
        assert_eq!(read_nofollow(&target).unwrap(), b"elsewhere");
        let _held = lock_exclusive(&dir.path().join("real.lock")).unwrap();
    }

    #[test]
    fn walks_go_by_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("root")).unwrap();
        let top = open_tree(dir.path()).unwrap();
        let mut listed = names(top.as_fd()).unwrap();
        listed.sort();
        assert_eq!(listed, vec![OsString::from("root"), OsString::from("sub")]);
        let (_, st) = entry_at(top.as_fd(), OsStr::new("root")).unwrap();
        assert!(st.is_symlink() && !st.is_dir());
        let (sub, st) = entry_at(top.as_fd(), OsStr::new("sub")).unwrap();
        assert!(st.is_dir());
        // Renamed away and replaced by a link: the descriptor stays on it.
        fs::rename(dir.path().join("sub"), dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("sub")).unwrap();
        let inner = dir_of(sub.as_fd()).unwrap();
        assert_eq!(names(inner.as_fd()).unwrap(), vec![OsString::from("f")]);
        assert!(open_tree(&dir.path().join("sub")).is_err());
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
