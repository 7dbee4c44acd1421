//! Device accounts for SMTP AUTH: a JSON file in the state directory
//! (`devices.json`, mode 0600, replaced atomically), passwords kept only as
//! Argon2id hashes (RustCrypto's `argon2`, PHC strings), verified in
//! constant time by that crate.
//!
//! The daemon reads the file at each AUTH (it is small), and again at each
//! MAIL of an authenticated session, so `smtp-edge device
//! add|remove|passwd` takes effect at once without a reload, in open
//! sessions too (a removed device or a new password: 530 5.7.0 at the next
//! MAIL). Changes
//! hold a lock (`devices.json.lock`) from reading to replacing, so two CLI
//! commands at once both take effect.

use std::path::{Path, PathBuf};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

/// The file name in the state directory.
pub const FILE: &str = "devices.json";

/// Characters of a generated password.
const PASSWORD_LEN: usize = 24;

/// Errors of the device store.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a device list.
    #[error("{path}: not a device list: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No such device.
    #[error("no device named `{0}`")]
    Unknown(String),
    /// The name is taken.
    #[error("a device named `{0}` already exists")]
    Exists(String),
    /// A bad name, sender or rate.
    #[error("{0}")]
    Invalid(String),
    /// Hashing failed.
    #[error("password hashing: {0}")]
    Hash(String),
}

/// One device account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The user name it authenticates with.
    pub name: String,
    /// Its password's Argon2id hash (PHC string).
    pub hash: String,
    /// Envelope senders it may use: addresses (`scanner@contoso.com`) or
    /// domains (`contoso.com`); empty: any.
    #[serde(default)]
    pub senders: Vec<String>,
    /// Messages per hour (none: the `[submission]` default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_hour: Option<u32>,
    /// The outbound connector its mail takes (none: routing as usual).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<String>,
}

impl Device {
    /// Whether `mail_from` (an address, `""` for the null sender) is one of
    /// its senders.
    pub fn may_send_as(&self, mail_from: &str) -> bool {
        if self.senders.is_empty() {
            return true;
        }
        let from = mail_from.to_ascii_lowercase();
        let domain = from.rsplit_once('@').map(|(_, d)| d);
        self.senders.iter().any(|s| {
            let s = s.to_ascii_lowercase();
            if s.contains('@') {
                s == from
            } else {
                domain == Some(s.as_str())
            }
        })
    }

    /// Whether `password` is its password (constant time).
    pub fn verify(&self, password: &str) -> bool {
        PasswordHash::new(&self.hash).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    }
}

/// The device list of a state directory.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

/// A new random password (letters and digits).
pub fn generate_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..PASSWORD_LEN)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// `password`'s Argon2id hash (default parameters: 19 MiB, 2 passes).
pub fn hash(password: &str) -> Result<String, DeviceError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| DeviceError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| DeviceError::Hash(e.to_string()))
}

fn check_name(name: &str) -> Result<(), DeviceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(DeviceError::Invalid(format!(
            "`{name}` is not a device name (1-64 letters, digits, - _ . @)"
        )))
    }
}

fn check_sender(s: &str) -> Result<(), DeviceError> {
    let (local, domain) = match s.rsplit_once('@') {
        Some((l, d)) => (Some(l), d),
        None => (None, s),
    };
    let domain_ok = crate::address::DomainPattern::parse(domain)
        .is_ok_and(|p| matches!(p, crate::address::DomainPattern::Exact(_)));
    if domain_ok && local.is_none_or(|l| !l.is_empty() && !l.contains(char::is_whitespace)) {
        Ok(())
    } else {
        Err(DeviceError::Invalid(format!(
            "`{s}` is not a sender address or domain"
        )))
    }
}

impl Store {
    /// The list in `state_dir`.
    pub fn new(state_dir: &Path) -> Store {
        Store {
            path: state_dir.join(FILE),
        }
    }

    /// Its file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every device (none when the file does not exist).
    pub fn load(&self) -> Result<Vec<Device>, DeviceError> {
        let text = match crate::fsutil::read_nofollow(&self.path) {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(DeviceError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_str(&text).map_err(|e| DeviceError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// The device called `name` (compared without case).
    pub fn find(&self, name: &str) -> Result<Option<Device>, DeviceError> {
        Ok(self
            .load()?
            .into_iter()
            .find(|d| d.name.eq_ignore_ascii_case(name)))
    }

    /// Runs `change` on the list under the store's lock and saves what it
    /// leaves.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Vec<Device>) -> Result<T, DeviceError>,
    ) -> Result<T, DeviceError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        crate::fsutil::private_dir(dir).map_err(|source| DeviceError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut lock_path = self.path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let _lock =
            crate::fsutil::lock_exclusive(&lock_path).map_err(|source| DeviceError::Io {
                path: lock_path.clone(),
                source,
            })?;
        let mut devices = self.load()?;
        let out = change(&mut devices)?;
        self.save(&devices)?;
        Ok(out)
    }

    fn save(&self, devices: &[Device]) -> Result<(), DeviceError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        crate::fsutil::private_dir(dir).map_err(|source| DeviceError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let text = serde_json::to_string_pretty(devices).map_err(|e| DeviceError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        // Root (the CLI) gives the file to the directory's owner: a daemon
        // running as its own user must read it.
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        let owner = match unsafe { libc::geteuid() } {
            0 => std::fs::metadata(dir)
                .ok()
                .filter(|m| m.uid() != 0)
                .map(|m| (m.uid(), m.gid())),
            _ => None,
        };
        crate::fsutil::write_atomic_owned(&self.path, text.as_bytes(), owner).map_err(|source| {
            DeviceError::Io {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// Adds a device; returns its generated password (shown once).
    pub fn add(
        &self,
        name: &str,
        senders: &[String],
        rate_per_hour: Option<u32>,
        connector: Option<String>,
    ) -> Result<String, DeviceError> {
        check_name(name)?;
        for s in senders {
            check_sender(s)?;
        }
        if rate_per_hour == Some(0) {
            return Err(DeviceError::Invalid("--rate must be at least 1".into()));
        }
        let hashed = {
            let password = generate_password();
            (hash(&password)?, password)
        };
        self.update(|devices| {
            if devices.iter().any(|d| d.name.eq_ignore_ascii_case(name)) {
                return Err(DeviceError::Exists(name.to_string()));
            }
            devices.push(Device {
                name: name.to_string(),
                hash: hashed.0.clone(),
                senders: senders.to_vec(),
                rate_per_hour,
                connector: connector.clone(),
            });
            Ok(())
        })?;
        Ok(hashed.1)
    }

    /// Removes a device.
    pub fn remove(&self, name: &str) -> Result<(), DeviceError> {
        self.update(|devices| {
            let before = devices.len();
            devices.retain(|d| !d.name.eq_ignore_ascii_case(name));
            if devices.len() == before {
                return Err(DeviceError::Unknown(name.to_string()));
            }
            Ok(())
        })
    }

    /// Gives a device a new generated password; returns it (shown once).
    pub fn passwd(&self, name: &str) -> Result<String, DeviceError> {
        let password = generate_password();
        let hashed = hash(&password)?;
        self.update(|devices| {
            let Some(d) = devices
                .iter_mut()
                .find(|d| d.name.eq_ignore_ascii_case(name))
            else {
                return Err(DeviceError::Unknown(name.to_string()));
            };
            d.hash = hashed;
            Ok(())
        })?;
        Ok(password)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_passwd_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        assert!(store.load().expect("empty").is_empty());
        let pw = store
            .add("scanner-1", &["contoso.com".into()], Some(60), None)
            .expect("add");
        assert_eq!(pw.len(), PASSWORD_LEN);
        let text = std::fs::read_to_string(store.path()).expect("file");
        assert!(!text.contains(&pw), "only the hash is stored");
        assert!(text.contains("$argon2id$"), "{text}");
        let d = store.find("SCANNER-1").expect("load").expect("found");
        assert!(d.verify(&pw));
        assert!(!d.verify("wrong"));
        assert!(d.may_send_as("scan@Contoso.com"));
        assert!(!d.may_send_as("ceo@fabrikam.com"));
        assert!(!d.may_send_as(""));
        assert!(matches!(
            store.add("scanner-1", &[], None, None),
            Err(DeviceError::Exists(_))
        ));
        let pw2 = store.passwd("scanner-1").expect("passwd");
        let d = store.find("scanner-1").expect("load").expect("found");
        assert!(d.verify(&pw2) && !d.verify(&pw));
        store.remove("scanner-1").expect("remove");
        assert!(store.find("scanner-1").expect("load").is_none());
        assert!(matches!(store.remove("x"), Err(DeviceError::Unknown(_))));
    }

    #[test]
    fn concurrent_changes_all_take_effect() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let p = path.clone();
                std::thread::spawn(move || Store::new(&p).add(&format!("d{i}"), &[], None, None))
            })
            .collect();
        for t in threads {
            t.join().expect("thread").expect("add");
        }
        assert_eq!(Store::new(&path).load().expect("load").len(), 8);
    }

    #[test]
    fn names_and_senders_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        for bad in ["", "a b", "x\n", &"a".repeat(65)] {
            assert!(store.add(bad, &[], None, None).is_err(), "{bad:?}");
        }
        for bad in ["not a domain", "@contoso.com", "*.contoso.com"] {
            assert!(
                store.add("d", &[bad.to_string()], None, None).is_err(),
                "{bad}"
            );
        }
        assert!(store.add("d", &[], Some(0), None).is_err());
        let d = Device {
            name: "d".into(),
            hash: String::new(),
            senders: vec!["app@contoso.com".into()],
            rate_per_hour: None,
            connector: None,
        };
        assert!(d.may_send_as("APP@contoso.com") && !d.may_send_as("other@contoso.com"));
        assert!(!d.verify(""), "an unusable hash verifies nothing");
    }
}
