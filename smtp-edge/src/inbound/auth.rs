//! Checking the credentials of an AUTH exchange against the device
//! accounts, behind the brute-force guard; the exchange's lines are read by
//! [`super::authenticate`], decoded by [`crate::smtp::sasl`].
//!
//! Nothing of the exchange is logged but the account name of a known
//! device (an unknown name may be a password typed in the wrong field).

use std::net::IpAddr;
use std::sync::Arc;

use crate::inbound::submission::devices::{Device, Store};
use crate::inbound::submission::guard::Guard;
use crate::smtp::reply::Reply;
use crate::smtp::sasl::{self, Credentials};

/// What the submission listeners share: the accounts and the guard.
#[derive(Debug, Clone)]
pub struct Accounts {
    /// The device accounts (read at each AUTH).
    pub store: Store,
    /// Failure counts, lockouts and rates (shared by every configuration).
    pub guard: Arc<Guard>,
}

/// How an attempt ended (for the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// 235: authenticated.
    Success,
    /// 535: wrong name or password.
    Failure,
    /// 454: locked out.
    Locked,
    /// 454: the accounts could not be read.
    Error,
}

impl Attempt {
    /// Its label.
    pub fn as_str(self) -> &'static str {
        match self {
            Attempt::Success => "success",
            Attempt::Failure => "failure",
            Attempt::Locked => "locked",
            Attempt::Error => "error",
        }
    }
}

/// 454 4.7.0.
fn temporary(text: &str) -> Reply {
    Reply::new(454, (4, 7, 0), text)
}

/// A hash no password matches: unknown accounts are checked against it,
/// so a reply takes as long whether or not the name exists.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        crate::inbound::submission::devices::hash(
            &crate::inbound::submission::devices::generate_password(),
        )
        .unwrap_or_default()
    })
}

impl Accounts {
    /// Checks `creds` from `peer`: the device and 235, or the reply to send
    /// (after the guard's delay for a failure).
    pub async fn check(
        &self,
        peer: IpAddr,
        creds: Credentials,
    ) -> (Result<(Device, Reply), Reply>, Attempt) {
        if let Err(left) = self.guard.reserve(peer) {
            tracing::warn!(%peer, seconds = left.as_secs(), "AUTH refused: locked out after repeated failures");
            return (
                Err(temporary(
                    "Temporary authentication failure: too many failed attempts, try again later",
                )),
                Attempt::Locked,
            );
        }
        let Some(slot) = self.guard.verify_slot().await else {
            return (
                Err(temporary("Temporary authentication failure")),
                Attempt::Error,
            );
        };
        let store = self.store.clone();
        // Counted by name whether a device has it or not (the delay must
        // not tell); the guard keeps only a keyed hash of it.
        let user = creds.user.clone();
        // Argon2 takes tens of milliseconds and 19 MiB: off the async
        // workers, a few at a time.
        let found = tokio::task::spawn_blocking(move || {
            let device = store.find(&creds.user)?;
            Ok::<_, crate::inbound::submission::devices::DeviceError>(match device {
                Some(d) if d.verify(&creds.password) => Ok(d),
                Some(d) => Err(Some(d.name)),
                None => {
                    let dummy = Device {
                        name: String::new(),
                        hash: dummy_hash().to_string(),
                        senders: Vec::new(),
                        rate_per_hour: None,
                        connector: None,
                    };
                    let _ = dummy.verify(&creds.password);
                    Err(None)
                }
            })
        })
        .await;
        drop(slot);
        match found {
            Ok(Ok(Ok(device))) => {
                self.guard.succeeded(peer, &device.name);
                tracing::info!(%peer, device = %device.name, "AUTH succeeded");
                (
                    Ok((
                        device,
                        Reply::new(235, (2, 7, 0), "Authentication successful"),
                    )),
                    Attempt::Success,
                )
            }
            Ok(Ok(Err(known))) => {
                let (delay, locked) = self.guard.failed(peer, Some(&user));
                tracing::warn!(
                    %peer,
                    device = known.as_deref().unwrap_or("(unknown account)"),
                    locked,
                    "AUTH failed"
                );
                tokio::time::sleep(delay).await;
                (Err(sasl::invalid()), Attempt::Failure)
            }
            Ok(Err(e)) => {
                tracing::error!(%peer, "AUTH: the device accounts cannot be read: {e}");
                (
                    Err(temporary("Temporary authentication failure")),
                    Attempt::Error,
                )
            }
            Err(e) => {
                tracing::error!(%peer, "AUTH: {e}");
                (
                    Err(temporary("Temporary authentication failure")),
                    Attempt::Error,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::submission::guard::Settings;
    use std::time::Duration;

    #[tokio::test]
    async fn failures_on_unknown_names_count_like_on_existing_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path());
        store.add("scanner", &[], None, None).expect("add");
        let accounts = Accounts {
            store,
            guard: Arc::new(Guard::new(Settings {
                max_failures: 100,
                lockout: Duration::from_secs(60),
                failure_delay: Duration::from_millis(1),
            })),
        };
        let creds = |user: &str| Credentials {
            user: user.into(),
            password: "wrong".into(),
        };
        for i in 1..=2u8 {
            for (user, net) in [("scanner", 1), ("Nobody", 2)] {
                let peer = IpAddr::from([198, 51, net, i]);
                let (r, attempt) = accounts.check(peer, creds(user)).await;
                assert!(r.is_err() && attempt == Attempt::Failure);
            }
        }
        // A fresh source's next failure waits as long for either name: the
        // delay does not tell which exists.
        let fresh = |i: u8| IpAddr::from([203, 0, 113, i]);
        assert!(accounts.guard.reserve(fresh(1)).is_ok());
        assert!(accounts.guard.reserve(fresh(2)).is_ok());
        let known = accounts.guard.failed(fresh(1), Some("scanner")).0;
        let unknown = accounts.guard.failed(fresh(2), Some("nobody")).0;
        assert_eq!(known, Duration::from_millis(4), "the third failure");
        assert_eq!(unknown, known);
    }
}
