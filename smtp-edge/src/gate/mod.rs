//! The gate: the user half of the kernel's port-25 filter.
//!
//! - [`allowlist`]: allowlist entries and the kernel's lookup tables built from them (pure).
//! - [`filter`]: the record of what the daemon last put into the kernel.
//! - [`xdp`]: loads, attaches and pins the XDP program, syncs its maps as a
//!   diff, reads its counters and drop events.
//! - [`ranges`]: the Exchange Online port-25 ranges, kept current from
//!   Microsoft's endpoints web service.
//!
//! May call: `config`, `state`, `fsutil`, `certs` (the endpoints client's
//! roots). Must not call the SMTP wings: the gate knows addresses, not mail.

pub mod allowlist;
pub mod filter;
pub mod ranges;
pub mod xdp;
