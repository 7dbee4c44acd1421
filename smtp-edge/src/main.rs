//! The `smtp-edge` binary: the daemon (`run`) and the admin CLI. This file
//! holds the command line's top level; the commands are in [`cli`].

mod cli;

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use cli::{AllowCmd, ConfigCmd, ConnectorCmd, DeviceCmd, FilterCmd, QueueCmd, RangesCmd};

const DEFAULT_CONFIG: &str = "/etc/smtp-edge/smtp-edge.toml";

#[derive(Parser)]
#[command(
    name = "smtp-edge",
    version,
    about = "XDP port-25 gate and SMTP relay for Microsoft 365 hybrid mail flow"
)]
struct Cli {
    /// Configuration file (tells the CLI where the control socket, state and pins are).
    #[arg(long, short, global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: load and attach the gate, keep it in step, answer the CLI.
    Run,
    /// Allowlist entries.
    #[command(subcommand)]
    Allow(AllowCmd),
    /// What the gate does with packets from ADDR to PORT, and which entry matched.
    Check {
        /// Source address.
        address: IpAddr,
        /// Destination port.
        #[arg(long, short, default_value_t = 25)]
        port: u16,
    },
    /// Every service on one screen: gate, listeners, connectors, queue,
    /// ranges, metrics, warnings.
    Status,
    /// Counters by reason and per allowlist entry.
    Stats {
        /// Print again every SECONDS until interrupted.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
    },
    /// The XDP gate itself.
    #[command(subcommand)]
    Filter(FilterCmd),
    /// Configuration files.
    #[command(subcommand, name = "config")]
    ConfigCmd(ConfigCmd),
    /// Exchange Online ranges.
    #[command(subcommand)]
    Ranges(RangesCmd),
    /// Ask the daemon to re-read its configuration (a bad file is refused).
    Reload,
    /// The mail queue (the sending side).
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Outbound connectors.
    #[command(subcommand)]
    Connector(ConnectorCmd),
    /// Device accounts for SMTP AUTH on the submission listeners.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Print the Exchange Online and on-premises Exchange PowerShell that
    /// matches this configuration (New-OutboundConnector and
    /// New-InboundConnector in Exchange Online, New-ReceiveConnector and
    /// New-SendConnector on-premises), each parameter commented with the
    /// setting it comes from.
    ExoCommands,
    /// As root, before a daemon that runs as USER (the unit's
    /// ExecStartPre=+): bpffs mounted, the pin directory reachable and its
    /// pins owned by USER, the state, spool and socket directories owned by
    /// USER, and the configuration and TLS files checked for readability.
    Prepare {
        /// The daemon's user (a name, or UID[:GID]).
        #[arg(long)]
        user: String,
    },
    /// Writes man pages, shell completions and the example configuration
    /// into DIR (used by `cargo xtask deb`).
    #[command(hide = true)]
    GenerateAssets {
        /// Output directory.
        dir: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = cli::dispatch(cli) {
        eprintln!("smtp-edge: {e:#}");
        std::process::exit(1);
    }
}
