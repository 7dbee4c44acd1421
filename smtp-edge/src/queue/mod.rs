//! The queue: takes spooled messages to their next hops, retries, expires and
//! bounces. [`state`] is the per-message delivery state kept on disk.

pub mod manager;
pub mod state;
