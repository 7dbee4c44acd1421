//! `[daemon]`: where the daemon keeps its state, its control socket, its logs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Daemon {
    /// Where the daemon keeps its state (CLI allowlist entries, imported ranges).
    pub state_dir: PathBuf,
    /// The control socket the CLI talks to.
    pub control_socket: PathBuf,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for Daemon {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/smtp-edge"),
            control_socket: PathBuf::from("/run/smtp-edge/control.sock"),
            log_format: LogFormat::Text,
        }
    }
}
