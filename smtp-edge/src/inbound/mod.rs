//! The receiving side: listeners, sessions, connector policy and everything
//! that decides whether a message is accepted, up to the durable spool file.
//!
//! - [`server`]: listeners, per-source limits, STARTTLS and implicit TLS;
//!   [`settings`] what each connection's session needs
//!   ([`settings::ServerConfig`]).
//! - [`connection`]: one connection's command loop on [`wire`] (buffers,
//!   deadlines); [`session`] its state machine (no I/O); [`transaction`]
//!   DATA/BDAT up to the final reply; [`authenticate`] the SMTP AUTH
//!   exchange, [`auth`] the credentials' check.
//! - [`intake`]: one message's way from the data reader through the header
//!   filter to the spool; [`checked`] the checks run on the spooled message.
//! - [`policy`]: which inbound connector applies and whether it may relay.
//! - [`tls`]: the server's TLS configuration and connector trust.
//! - [`tenant`]: the proof that a message comes from our Microsoft 365 tenant.
//! - [`submission`]: device accounts and the brute-force guard.
//! - [`metrics`]: sessions, messages, refusals.
//!
//! May call: the pure protocol (`smtp`), `queue::spool` (the only way a
//! message leaves this wing), `config`, `certs`, `address`, `resolve`.
//! Must not be called by the queue or the sending side.

pub mod auth;
pub mod authenticate;
pub mod checked;
pub mod connection;
pub mod intake;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod session;
pub mod settings;
pub mod submission;
pub mod tenant;
pub mod tls;
pub mod transaction;
pub mod wire;
