//! The sending side: which outbound connector and next hop a recipient
//! takes, and the SMTP client that hands a spooled message to it.
//!
//! - [`routing`]: outbound connectors and the choice of one per recipient
//!   domain (most specific wins), TLS levels, smart hosts or MX (pure).
//! - [`client`]: the SMTP client for one connection to one next hop: TLS at
//!   the connector's level, one transaction (pipelined when the server
//!   allows), a result per recipient.
//!
//! Retrying and bouncing ([`crate::queue::dsn`]) are the queue's business.
//! May call: `resolve`, `certs`, `address`, `config`, the pure protocol.
//! Must not call the receiving side or the queue.

pub mod client;
pub mod routing;
