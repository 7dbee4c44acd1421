//! smtp-edge: an XDP port-25 gate and (later) SMTP relay for the firewall host in
//! front of an on-premises mail server in a Microsoft 365 setup.
//!
//! Modules follow the architecture in the README: [`config`] parses and
//! validates the one TOML file, [`allowlist`] turns entries into the kernel's
//! lookup tables, [`filter`] loads, attaches and syncs the XDP gate, [`state`]
//! keeps what the daemon must remember, [`control`] is the CLI↔daemon socket,
//! and [`daemon`] ties them together.

pub mod allowlist;
pub mod config;
pub mod control;
pub mod daemon;
pub mod delivery;
pub mod dsn;
pub mod exo;
pub mod filter;
pub mod fsutil;
pub mod metrics;
pub mod policy;
pub mod prepare;
pub mod queue;
pub mod ranges;
pub mod resolve;
pub mod routing;
pub mod smtp;
pub mod spool;
pub mod state;
pub mod submission;
pub mod tenant;
pub mod tls;
pub mod view;
