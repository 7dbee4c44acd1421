//! Checking the credentials of an AUTH exchange against the device
//! accounts, behind the brute-force guard; the exchange's lines are read by
//! [`super::connection`], decoded by [`super::sasl`].
//!
//! Nothing of the exchange is logged but the account name of a known
//! device (an unknown name may be a password typed in the wrong field).

use std::net::IpAddr;
use std::sync::Arc;

use super::reply::Reply;
use super::sasl::{self, Credentials};
use crate::submission::devices::{Device, Store};
use crate::submission::guard::Guard;

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

impl Accounts {
    /// Checks `creds` from `peer`: the device and 235, or the reply to send
    /// (after the guard's delay for a failure).
    pub async fn check(
        &self,
        peer: IpAddr,
        creds: Credentials,
    ) -> (Result<(Device, Reply), Reply>, Attempt) {
        if let Some(left) = self.guard.locked(peer, &creds.user) {
            tracing::warn!(%peer, seconds = left.as_secs(), "AUTH refused: locked out after repeated failures");
            return (
                Err(temporary(
                    "Temporary authentication failure: too many failed attempts, try again later",
                )),
                Attempt::Locked,
            );
        }
        let store = self.store.clone();
        let user = creds.user.clone();
        // Argon2 takes tens of milliseconds and 19 MiB: off the async workers.
        let found = tokio::task::spawn_blocking(move || {
            let device = store.find(&creds.user)?;
            Ok::<_, crate::submission::devices::DeviceError>(
                device
                    .filter(|d| d.verify(&creds.password))
                    .map(Ok)
                    .unwrap_or(Err(())),
            )
        })
        .await;
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
            Ok(Ok(Err(()))) => {
                let (delay, locked) = self.guard.failed(peer, &user);
                let known = self.store.find(&user).ok().flatten().map(|d| d.name);
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
