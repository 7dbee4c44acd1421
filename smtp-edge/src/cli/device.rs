//! `smtp-edge device …`: device accounts for SMTP AUTH on the submission listeners.

use anyhow::{Result, anyhow, bail};
use clap::Subcommand;

use super::{load_config, print_json, table};
use crate::Cli;

/// `smtp-edge device …`: device accounts.
#[derive(Subcommand)]
pub(crate) enum DeviceCmd {
    /// Add a device; prints its generated password once.
    Add {
        /// The account name the device authenticates with.
        name: String,
        /// An envelope sender it may use (an address or a domain); repeat
        /// for more. Required unless --any-sender.
        #[arg(long = "sender", value_name = "ADDRESS|DOMAIN")]
        senders: Vec<String>,
        /// Let it use any envelope sender (and the null sender).
        #[arg(long, conflicts_with = "senders")]
        any_sender: bool,
        /// Messages per hour (default: [submission] rate_per_hour).
        #[arg(long, value_name = "N")]
        rate: Option<u32>,
        /// The outbound connector its mail takes (default: routing as usual).
        #[arg(long, value_name = "NAME")]
        connector: Option<String>,
    },
    /// List the devices (never their passwords).
    List,
    /// Remove a device.
    Remove {
        /// The account name.
        name: String,
    },
    /// Give a device a new generated password; prints it once.
    Passwd {
        /// The account name.
        name: String,
    },
}

pub(super) fn device(cli: &Cli, cmd: &DeviceCmd) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    let store = smtp_edge::inbound::submission::devices::Store::new(&cfg.daemon.state_dir);
    let shown = |name: &str, password: &str| -> Result<()> {
        if cli.json {
            print_json(&serde_json::json!({"name": name, "password": password}))
        } else {
            println!("device {name}: password {password}");
            println!("(shown once: only its hash is kept)");
            Ok(())
        }
    };
    match cmd {
        DeviceCmd::Add {
            name,
            senders,
            any_sender,
            rate,
            connector,
        } => {
            if senders.is_empty() && !any_sender {
                bail!(
                    "say which senders the device may use (--sender ADDRESS|DOMAIN), or --any-sender: \
                     its mail leaves with the organisation's certificate"
                );
            }
            if let Some(c) = connector
                && !cfg.outbound.iter().any(|o| &o.name == c)
            {
                bail!(
                    "no outbound connector named `{c}` in {}",
                    cli.config.display()
                );
            }
            let pw = store
                .add(name, senders, *rate, connector.clone())
                .map_err(|e| anyhow!("{e}"))?;
            if !cfg.submission.enabled() {
                eprintln!(
                    "warning: [submission] has no listeners in {}: the device cannot authenticate yet",
                    cli.config.display()
                );
            }
            shown(name, &pw)
        }
        DeviceCmd::Passwd { name } => {
            let pw = store.passwd(name).map_err(|e| anyhow!("{e}"))?;
            shown(name, &pw)
        }
        DeviceCmd::Remove { name } => {
            store.remove(name).map_err(|e| anyhow!("{e}"))?;
            if cli.json {
                print_json(&serde_json::json!({"removed": name}))
            } else {
                println!("device {name} removed");
                Ok(())
            }
        }
        DeviceCmd::List => {
            let devices = store.load().map_err(|e| anyhow!("{e}"))?;
            if cli.json {
                let v: Vec<serde_json::Value> = devices
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "name": d.name,
                            "senders": d.senders,
                            "rate_per_hour": d.rate_per_hour.unwrap_or(cfg.submission.rate_per_hour),
                            "connector": d.connector,
                        })
                    })
                    .collect();
                return print_json(&v);
            }
            if devices.is_empty() {
                println!("no devices");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = devices
                .iter()
                .map(|d| {
                    vec![
                        d.name.clone(),
                        if d.senders.is_empty() {
                            "(any)".into()
                        } else {
                            d.senders.join(", ")
                        },
                        format!(
                            "{}/hour",
                            d.rate_per_hour.unwrap_or(cfg.submission.rate_per_hour)
                        ),
                        d.connector.clone().unwrap_or_else(|| "(routing)".into()),
                    ]
                })
                .collect();
            table(&["DEVICE", "SENDERS", "RATE", "CONNECTOR"], &rows);
            Ok(())
        }
    }
}
