//! The SMTP protocol layer, pure: bytes in, commands, message bytes and
//! replies out. No I/O, no sockets, no async runtime, so every part can be
//! unit-tested and fuzzed on its own.
//!
//! - [`command`] splits the input into command lines ([`command::LineSplitter`])
//!   and parses each into a [`command::Command`] (RFC 5321 §4.1, with the
//!   ESMTP parameters of SIZE, 8BITMIME/BINARYMIME, SMTPUTF8, DSN and AUTH).
//! - [`data`] reads message content: [`data::DataReader`] for `DATA`
//!   (dot-stuffed, ended only by a real `<CRLF>.<CRLF>`) and
//!   [`data::BdatReader`] for `BDAT` chunks (RFC 3030), both with the same
//!   policy for bare CR and LF, NUL, line length and size.
//! - [`header`] judges the header section as it streams to the spool (the
//!   header firewall, trace and loop checks); [`trace`] renders our
//!   `Received:` field.
//! - [`reply`] builds the server's replies ([`reply::Reply`]), with enhanced
//!   status codes (RFC 2034, RFC 3463).
//!
//! Around them, with I/O: [`session`] (the state machine, no I/O itself),
//! [`server`] (listeners, limits, TLS), [`connection`] (the I/O loop and
//! its deadlines) and [`intake`] (one
//! message's way from the data reader to a durable spool file).
//!
//! Every error type here has a `reply()` giving the reply the session sends.

pub mod auth;
pub mod checked;
pub mod command;
pub mod connection;
pub mod data;
pub mod header;
pub mod intake;
pub mod metrics;
pub mod reply;
pub mod sasl;
pub mod server;
pub mod session;
pub mod trace;
