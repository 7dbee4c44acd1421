//! The daemon's state directory: typed JSON files, exclusive locks and the
//! web service's request id, kept for the modules that own them.
//!
//! This module knows no other module's types: an owner names its file and
//! calls [`StateDir::read_json`] / [`StateDir::write_json`] (the Exchange
//! Online list in `gate::ranges`, the filter record in `gate::filter`). The
//! one record kept here is the allowlist entries added with the CLI
//! ([`CliEntry`], `allowlist.json`).
//!
//! Every file is JSON, replaced atomically (write, fsync, rename, fsync dir), so
//! a crash leaves either the old or the new version. The directory is 0700 and
//! its files 0600. Root (the CLI) reads and locks files here without
//! following symbolic links, and gives what it writes to the directory's
//! owner on the new file's descriptor, never by name.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Errors reading or writing state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on a state file.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A state file that is not what we wrote.
    #[error("{path}: corrupt state file: {source}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
}

/// An entry added with `smtp-edge allow add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CliEntry {
    /// Canonical source text.
    pub source: String,
    /// Comment.
    #[serde(default)]
    pub comment: String,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

const CLI_ENTRIES: &str = "allowlist.json";
const REQUEST_ID: &str = "client-request-id";

/// An exclusive lock on a file of the state directory, released on drop (the
/// daemon and a CLI run while the daemon is down never interleave).
pub struct StateLock(#[allow(dead_code)] fs::File);

impl StateDir {
    /// Uses `dir`, creating it when missing.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        crate::fsutil::private_dir(dir).map_err(|source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The JSON file `name`, or `None` when there is none; a file that does
    /// not parse as `T` is [`StateError::Corrupt`].
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        let path = self.dir.join(name);
        match crate::fsutil::read_nofollow(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Replaces the JSON file `name` with `value` (pretty-printed, atomically,
    /// owned by the directory's owner).
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| StateError::Corrupt {
            path: self.dir.join(name),
            source,
        })?;
        let path = self.dir.join(name);
        write_atomic_owned(&path, &bytes, self.owner()?)
    }

    /// Whom a file root writes here is given to: the directory's owner (a
    /// daemon running as its own user must read it); `None` when not root
    /// or the directory is root's.
    fn owner(&self) -> Result<Option<(u32, u32)>, StateError> {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let dir = fs::metadata(&self.dir).map_err(|source| StateError::Io {
            path: self.dir.clone(),
            source,
        })?;
        Ok((dir.uid() != 0).then_some((dir.uid(), dir.gid())))
    }

    /// Entries added with the CLI.
    pub fn cli_entries(&self) -> Result<Vec<CliEntry>, StateError> {
        Ok(self.read_json(CLI_ENTRIES)?.unwrap_or_default())
    }

    /// Replaces the CLI entries.
    pub fn set_cli_entries(&self, entries: &[CliEntry]) -> Result<(), StateError> {
        self.write_json(CLI_ENTRIES, &entries)
    }

    /// Takes an exclusive lock on the file `name` (created when missing;
    /// waits for another holder). A symbolic link there is refused, never
    /// followed.
    pub fn lock(&self, name: &str) -> Result<StateLock, StateError> {
        let path = self.dir.join(name);
        let io = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let f = crate::fsutil::lock_exclusive(&path).map_err(io)?;
        if let Some((uid, gid)) = self.owner()? {
            crate::fsutil::chown_file(&f, uid, gid).map_err(io)?;
        }
        Ok(StateLock(f))
    }

    fn read_text(&self, name: &str) -> Result<Option<String>, StateError> {
        let path = self.dir.join(name);
        match crate::fsutil::read_nofollow(&path) {
            Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// The request id if one was made (nothing is created).
    pub fn peek_request_id(&self) -> Result<Option<String>, StateError> {
        Ok(self
            .read_text(REQUEST_ID)?
            .map(|t| t.trim().to_string())
            .filter(|t| uuid::Uuid::parse_str(t).is_ok()))
    }

    /// This machine's `ClientRequestId` for the web service: a GUID made
    /// once and kept (Microsoft asks for one per machine).
    pub fn client_request_id(&self) -> Result<String, StateError> {
        let path = self.dir.join(REQUEST_ID);
        match self.read_text(REQUEST_ID)? {
            Some(text) if uuid::Uuid::parse_str(text.trim()).is_ok() => {
                return Ok(text.trim().to_string());
            }
            Some(_) => tracing::warn!(path = %path.display(), "not a GUID; making a new one"),
            None => {}
        }
        let id = uuid::Uuid::new_v4().to_string();
        write_atomic_owned(&path, format!("{id}\n").as_bytes(), self.owner()?)?;
        Ok(id)
    }
}

/// Replaces `path` with `bytes` durably (private mode; see
/// [`crate::fsutil::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    write_atomic_owned(path, bytes, None)
}

fn write_atomic_owned(
    path: &Path,
    bytes: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), StateError> {
    crate::fsutil::write_atomic_owned(path, bytes, owner).map_err(|source| StateError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Seconds since the epoch (0 for a clock before 1970).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_missing_files() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateDir::open(&tmp.path().join("state")).unwrap();
        assert!(s.cli_entries().unwrap().is_empty());
        assert!(s.read_json::<CliEntry>("missing.json").unwrap().is_none());
        let e = vec![CliEntry {
            source: "192.0.2.1/32".into(),
            comment: "printer".into(),
        }];
        s.set_cli_entries(&e).unwrap();
        assert_eq!(s.cli_entries().unwrap(), e);
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(s.path())
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![CLI_ENTRIES]);
    }

    #[test]
    fn the_request_id_is_made_once_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateDir::open(tmp.path()).unwrap();
        let a = s.client_request_id().unwrap();
        assert!(uuid::Uuid::parse_str(&a).is_ok(), "{a}");
        assert_eq!(s.client_request_id().unwrap(), a);
        let again = StateDir::open(tmp.path()).unwrap();
        assert_eq!(again.client_request_id().unwrap(), a);
    }

    #[test]
    fn corrupt_files_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let s = StateDir::open(tmp.path()).unwrap();
        fs::write(tmp.path().join(CLI_ENTRIES), b"{broken").unwrap();
        let e = s.cli_entries().unwrap_err();
        assert!(e.to_string().contains("corrupt state file"), "{e}");
    }
}
