//! Outbound delivery: handing spooled messages to the next hop.
//!
//! [`client`] is the SMTP client for one connection to one next hop: it
//! negotiates TLS at the connector's level ([`crate::routing::TlsLevel`]),
//! sends one transaction (pipelined when the server allows) and reports a
//! result per recipient. Choosing the next hop ([`crate::routing`]), retrying
//! and bouncing ([`crate::dsn`]) are the queue's business.

pub mod client;
pub mod validate;
