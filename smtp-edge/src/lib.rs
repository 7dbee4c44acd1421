//! smtp-edge: an XDP port-25 gate and an SMTP relay for the firewall host in
//! front of an on-premises mail server in a Microsoft 365 setup.
//!
//! The wings, in the order mail flows through them:
//!
//! 1. [`gate`]: the kernel's port-25 filter seen from user space: allowlist
//!    entries, the XDP program and its maps, the Exchange Online ranges.
//! 2. [`inbound`]: listeners and sessions, STARTTLS, connector policy, the
//!    tenant proof and device submission, up to the durable spool file.
//! 3. [`queue`]: the spool, what is due and when, retries, bounces (DSNs).
//! 4. [`outbound`]: the outbound connector and next hop for each recipient,
//!    and the SMTP client that delivers.
//!
//! Beside them: [`smtp`], the pure protocol both sides speak (no I/O);
//! [`ops`], the operator's tools (control socket, status views, metrics,
//! prepare, Exchange commands); the `smtp-edge` commands themselves live
//! with the binary (`src/cli/`, one file per command group);
//! [`daemon`], the supervisor that starts each wing's service and hands
//! each its part of a reload.
//!
//! The floor every wing may stand on: [`config`] (the one TOML file, parsed
//! and validated into plain settings), [`address`] (addresses and domain
//! patterns), [`certs`] (certificate files and what they say), [`resolve`]
//! (the DNS resolver), [`state`] (what the daemon remembers), [`fsutil`]
//! (durable writes).

pub mod gate;
pub mod inbound;
pub mod outbound;
pub mod queue;

pub mod smtp;

pub mod daemon;
pub mod ops;

pub mod address;
pub mod certs;
pub mod config;
pub mod fsutil;
pub mod resolve;
pub mod state;
