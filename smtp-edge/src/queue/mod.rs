//! The queue: takes spooled messages to their next hops, retries, expires and
//! bounces.
//!
//! - [`manager`] — the service: the in-memory queue, dispatch, the queue's
//!   handle.
//! - [`upkeep`] — the manager's files: loading at start, saving states,
//!   freezing and thawing, quarantine.
//! - [`commands`] — the queue commands (list, show, flush, hold, bounce,
//!   delete).
//! - [`config`] — the configuration the queue runs under (swapped on
//!   reload).
//! - [`index`] — what is queued and when it is due (pure).
//! - [`attempt`] — one delivery attempt: routes, next hops, failover.
//! - [`metrics`] — deliveries, attempt times, the queue's size.
//! - [`sessions`] — SMTP sessions kept open between deliveries to a next hop.
//! - [`report`] — which DSN a state calls for, and to whom (pure).
//! - [`state`] — the per-message delivery state kept on disk (pure).
//! - [`store`] — the queue's files (blocking I/O).
//! - [`spool`] — message files: written durably by the receiving side, read by
//!   delivery.
//! - [`dsn`] — delivery status notifications (RFC 3464).
//!
//! May call: `outbound` (routing and the delivery client), `config`,
//! `fsutil`, the pure protocol. The receiving side calls only [`spool`] and
//! the queue's handle.

pub mod attempt;
pub mod commands;
pub mod config;
pub mod dsn;
pub mod index;
pub mod manager;
pub mod metrics;
pub mod report;
pub mod sessions;
pub mod spool;
pub mod state;
pub mod store;
pub mod upkeep;

pub use manager::{QueueError, QueueHandle, QueueSlot};
