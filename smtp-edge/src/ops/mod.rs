//! The operator's tools beside the mail flow.
//!
//! - [`control`]: the local control socket between the CLI and the daemon.
//! - [`certificates`]: the edge's own certificate files: expiry, names,
//!   purposes (metric, log lines, `status`).
//! - [`view`]: the status, check and statistics views the CLI prints.
//! - [`metrics`]: the Prometheus registry and the `/metrics` endpoint.
//! - [`prepare`]: root's step before the daemon starts (directories, owners).
//! - [`exo`]: the Exchange PowerShell matching the configuration.
//! - [`validate`]: `connector test`, an outbound connector's checks step by
//!   step (the queue's configuration, the delivery client's probe).
//!
//! May call every wing's public types to describe them; no wing calls these
//! modules except to register metrics.

pub mod certificates;
pub mod control;
pub mod exo;
pub mod metrics;
pub mod prepare;
pub mod validate;
pub mod view;
