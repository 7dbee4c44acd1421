//! The SMTP protocol, pure: bytes in, commands, message bytes and replies
//! out. No sockets, no async runtime, no file system, so every part can be
//! unit-tested and fuzzed on its own. The receiving side ([`crate::inbound`])
//! and the sending side ([`crate::outbound`]) drive it.
//!
//! - [`command`] splits the input into command lines ([`command::LineSplitter`])
//!   and parses each into a [`command::Command`] (RFC 5321 §4.1, with the
//!   ESMTP parameters of SIZE, 8BITMIME/BINARYMIME, SMTPUTF8, DSN and AUTH).
//! - [`data`] reads message content: [`data::DataReader`] for `DATA`
//!   (dot-stuffed, ended only by a real `<CRLF>.<CRLF>`) and
//!   [`data::BdatReader`] for `BDAT` chunks (RFC 3030), both with the same
//!   policy for bare CR and LF, NUL, line length and size.
//! - [`header`] judges the header section as it streams (the header
//!   firewall, trace and loop checks), with [`authres`] reading the
//!   authserv-id of `Authentication-Results` fields; [`trace`] renders our
//!   `Received:` field.
//! - [`reply`] builds the server's replies ([`reply::Reply`]), with enhanced
//!   status codes (RFC 2034, RFC 3463).
//! - [`sasl`] decodes the SASL exchanges of SMTP AUTH (PLAIN, LOGIN).
//!
//! Every error type here has a `reply()` giving the reply the session sends.
//! May call nothing but itself.

pub mod authres;
pub mod command;
pub mod data;
pub mod header;
pub mod reply;
pub mod sasl;
pub mod trace;
