//! The gate's commands: allowlist entries (`allow`), `check`, `stats` and
//! `filter detach`, and the check that the gate's tables hold a new range list.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Subcommand;

use smtp_edge::config::Config;
use smtp_edge::daemon;
use smtp_edge::gate::filter::FilterState;
use smtp_edge::gate::xdp::{self, Maps};
use smtp_edge::ops::control::Request;
use smtp_edge::ops::view::{self, Check, Stats};
use smtp_edge::state::StateDir;

use super::{ask, load_config, print_json, state_dir, table};
use crate::Cli;

/// `smtp-edge allow …`: the allowlist entries.
#[derive(Subcommand)]
pub(crate) enum AllowCmd {
    /// Add an address, CIDR, address/mask or start-end range.
    Add {
        /// The source.
        source: String,
        /// A note shown in listings.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Remove an entry added with `allow add`.
    Remove {
        /// The source, in any accepted spelling.
        source: String,
    },
    /// List every entry (Exchange Online, configuration, CLI) with its hits.
    List,
}

/// `smtp-edge filter …`: the XDP gate itself.
#[derive(Subcommand)]
pub(crate) enum FilterCmd {
    /// Where the gate is attached, mode, ports, table use.
    Status,
    /// Remove the gate from every interface and delete its pins.
    Detach,
}

pub(super) fn allow(cli: &Cli, cmd: &AllowCmd) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    match cmd {
        AllowCmd::Add { source, comment } => {
            let req = Request::AllowAdd {
                source: source.clone(),
                comment: comment.clone(),
            };
            match ask(&cfg, &req)? {
                Some(v) => println!(
                    "added {} (in force now)",
                    v["added"].as_str().unwrap_or(source)
                ),
                None => {
                    let c = daemon::add_cli_entry(&state_dir(&cfg)?, source, comment)
                        .map_err(|e| anyhow!(e))?;
                    println!(
                        "added {c} to {}; the daemon is not running, it takes effect when it starts",
                        cfg.daemon.state_dir.display()
                    );
                }
            }
            Ok(())
        }
        AllowCmd::Remove { source } => {
            match ask(
                &cfg,
                &Request::AllowRemove {
                    source: source.clone(),
                },
            )? {
                Some(v) => println!(
                    "removed {} (in force now)",
                    v["removed"].as_str().unwrap_or(source)
                ),
                None => {
                    let c = daemon::remove_cli_entry(&cfg, &state_dir(&cfg)?, source)
                        .map_err(|e| anyhow!(e))?;
                    println!(
                        "removed {c}; the daemon is not running, it takes effect when it starts"
                    );
                }
            }
            Ok(())
        }
        AllowCmd::List => {
            let stats = read_stats(&cfg, &Request::AllowList).or_else(|_| -> Result<Stats> {
                // No daemon and no pinned gate: list what the next start would load.
                let entries =
                    daemon::desired_entries(&cfg, &state_dir(&cfg)?).map_err(|e| anyhow!("{e}"))?;
                let compiled =
                    smtp_edge::gate::allowlist::compile(&entries, &Default::default(), u32::MAX)?;
                Ok(Stats {
                    counters: Vec::new(),
                    entries: compiled
                        .entries
                        .into_iter()
                        .map(|entry| view::EntryStats { entry, hits: 0 })
                        .collect(),
                })
            })?;
            if cli.json {
                return print_json(&stats.entries);
            }
            let rows: Vec<Vec<String>> = stats
                .entries
                .iter()
                .map(|e| {
                    vec![
                        e.entry.id.to_string(),
                        e.entry.entry.origin.to_string(),
                        e.entry.entry.source.clone(),
                        e.hits.to_string(),
                        e.entry.entry.comment.clone(),
                    ]
                })
                .collect();
            table(&["ID", "ORIGIN", "SOURCE", "HITS", "COMMENT"], &rows);
            Ok(())
        }
    }
}

/// Stats from the daemon, or from the pinned maps when it is down.
fn read_stats(cfg: &Config, req: &Request) -> Result<Stats> {
    if let Some(v) = ask(cfg, req)? {
        return Ok(serde_json::from_value(v)?);
    }
    let maps = Maps::open(&cfg.filter.pin_dir, false)?;
    let fs = FilterState::read(&state_dir(cfg)?)?.unwrap_or_default();
    Ok(view::stats(&maps, &fs)?)
}

pub(super) fn check(cli: &Cli, address: IpAddr, port: u16) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    let c: Check = match ask(&cfg, &Request::Check { address, port })? {
        Some(v) => serde_json::from_value(v)?,
        None => {
            let maps = Maps::open(&cfg.filter.pin_dir, false)?;
            let fs = FilterState::read(&state_dir(&cfg)?)?.unwrap_or_default();
            view::check(&maps, &fs, address, port)?
        }
    };
    if cli.json {
        return print_json(&c);
    }
    println!(
        "{} → port {}: {} ({})",
        c.address,
        c.port,
        c.verdict.to_uppercase(),
        c.reason
    );
    if let Some(e) = &c.entry {
        println!(
            "  entry #{} {} {}{}",
            e.id,
            e.entry.origin,
            e.entry.source,
            if e.entry.comment.is_empty() {
                String::new()
            } else {
                format!(" — {}", e.entry.comment)
            }
        );
    }
    println!("  mode: {}", c.mode);
    Ok(())
}

fn print_stats(s: &Stats, previous: Option<&Stats>, interval: f64) {
    let rows: Vec<Vec<String>> = s
        .counters
        .iter()
        .map(|(n, v)| {
            let mut row = vec![n.clone(), v.to_string()];
            if let Some(p) = previous.and_then(|p| view::counter(p, n)) {
                row.push(format!("{:.1}/s", v.saturating_sub(*p) as f64 / interval));
            }
            row
        })
        .collect();
    let header: &[&str] = if previous.is_some() {
        &["COUNTER", "PACKETS", "RATE"]
    } else {
        &["COUNTER", "PACKETS"]
    };
    table(header, &rows);
    println!();
    let rows: Vec<Vec<String>> = s
        .entries
        .iter()
        .map(|e| {
            vec![
                e.entry.id.to_string(),
                e.entry.entry.source.clone(),
                e.entry.entry.origin.to_string(),
                e.hits.to_string(),
                e.entry.entry.comment.clone(),
            ]
        })
        .collect();
    table(&["ID", "ENTRY", "ORIGIN", "HITS", "COMMENT"], &rows);
}

pub(super) fn stats(cli: &Cli, watch: Option<u64>) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    let mut previous: Option<Stats> = None;
    loop {
        let s = read_stats(&cfg, &Request::Stats)?;
        if cli.json {
            println!("{}", serde_json::to_string(&s)?);
        } else {
            if watch.is_some() {
                println!("--- {}", humantime_now());
            }
            print_stats(&s, previous.as_ref(), watch.unwrap_or(1).max(1) as f64);
        }
        let Some(secs) = watch else { return Ok(()) };
        previous = Some(s);
        std::thread::sleep(Duration::from_secs(secs.max(1)));
    }
}

fn humantime_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{:02}:{:02}:{:02} UTC",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

pub(super) fn detach(cli: &Cli) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    let ifaces: Vec<String> = match ask(&cfg, &Request::Detach)? {
        Some(v) => serde_json::from_value(v["detached"].clone())?,
        None => xdp::detach_all(&cfg.filter.pin_dir)?,
    };
    if cli.json {
        return print_json(&serde_json::json!({ "detached": ifaces }));
    }
    println!(
        "gate removed from: {}",
        if ifaces.is_empty() {
            "no interface".into()
        } else {
            ifaces.join(", ")
        }
    );
    Ok(())
}

/// Whether the gate's tables hold the allowlist with the list on disk (the
/// daemon's check before it puts a list in force).
pub(super) fn fits_the_gate(cfg: &Config, dir: &StateDir) -> std::result::Result<(), String> {
    if !cfg.filter.enabled {
        return Ok(());
    }
    let entries = daemon::desired_entries(cfg, dir).map_err(|e| e.to_string())?;
    let previous = FilterState::read(dir)
        .map_err(|e| e.to_string())?
        .map(|f| f.ids())
        .unwrap_or_default();
    smtp_edge::gate::allowlist::compile(&entries, &previous, cfg.filter.capacity.entries)
        .map(drop)
        .map_err(|e| e.to_string())
}
