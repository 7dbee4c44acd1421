//! The admin CLI behind `main.rs`: one module per command group, the helpers
//! they share (configuration, the daemon's control socket, JSON and table
//! output, the state directory), the daemon's start (`run`) and the dispatch
//! of a parsed command line.

mod config;
mod connector;
mod device;
mod gate;
mod queue;
mod ranges;
mod status;

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use smtp_edge::config::{Config, LogFormat};
use smtp_edge::daemon;
use smtp_edge::ops::control::{self, ControlError, Request, Response};
use smtp_edge::state::StateDir;

pub(crate) use config::ConfigCmd;
pub(crate) use connector::ConnectorCmd;
pub(crate) use device::DeviceCmd;
pub(crate) use gate::{AllowCmd, FilterCmd};
pub(crate) use queue::QueueCmd;
pub(crate) use ranges::RangesCmd;

use crate::{Cli, Cmd};

/// Runs a parsed command line (exit status 1 on `Err`; a few commands exit
/// with their own status).
pub fn dispatch(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Run => run(&cli.config),
        Cmd::ConfigCmd(ConfigCmd::Example) => {
            print!("{}", smtp_edge::config::EXAMPLE);
            Ok(())
        }
        Cmd::ConfigCmd(ConfigCmd::Check { file }) => config::config_check(file, cli.json),
        Cmd::Allow(a) => gate::allow(&cli, a),
        Cmd::Check { address, port } => gate::check(&cli, *address, *port),
        Cmd::Stats { watch } => gate::stats(&cli, *watch),
        Cmd::Status => status::overview(&cli),
        Cmd::Filter(FilterCmd::Status) => status::status(&cli),
        Cmd::Filter(FilterCmd::Detach) => gate::detach(&cli),
        Cmd::Ranges(r) => ranges::ranges(&cli, r),
        Cmd::Queue(q) => queue::queue(&cli, q),
        Cmd::Prepare { user } => {
            let cfg = load_config(&cli.config)?;
            let who = smtp_edge::ops::prepare::Account::lookup(user)?;
            let (done, warnings) = smtp_edge::ops::prepare::prepare(&cfg, who)?;
            for d in done {
                println!("{d}");
            }
            for w in warnings {
                eprintln!("warning: {w}");
            }
            Ok(())
        }
        Cmd::GenerateAssets { dir } => config::generate_assets(dir),
        Cmd::ExoCommands => connector::exo_commands(&cli),
        Cmd::Device(d) => device::device(&cli, d),
        Cmd::Connector(ConnectorCmd::Test { name, rcpt, send }) => {
            connector::connector_test(&cli, name, rcpt.as_deref(), *send)
        }
        Cmd::Reload => {
            // A file with errors is never sent: the daemon keeps what it runs.
            let cfg = Config::load(&cli.config).map_err(|e| {
                anyhow!("{e}\nconfiguration refused; the running configuration stays in force")
            })?;
            let v =
                ask(&cfg, &Request::Reload)?.ok_or_else(|| anyhow!("the daemon is not running"))?;
            println!("{}", v["message"].as_str().unwrap_or("reloaded"));
            Ok(())
        }
    }
}

/// The configuration at `path`; its errors (file, line, column) as the message.
fn load_config(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|e| anyhow!("{e}"))
}

/// `smtp-edge run`: logging to stderr as configured, then the daemon on a
/// two-thread runtime until it stops.
fn run(path: &Path) -> Result<()> {
    let cfg = load_config(path)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a terminal: journald and log files get plain
        // `key=value` text that grep and log shippers can read.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cfg.daemon.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the runtime")?;
    rt.block_on(daemon::run(cfg)).map_err(|e| anyhow!("{e}"))
}

/// Asks the daemon; `Ok(None)` when it is not running.
fn ask(cfg: &Config, req: &Request) -> Result<Option<Value>> {
    match control::call(&cfg.daemon.control_socket, req) {
        Ok(Response::Ok(v)) => Ok(Some(v)),
        Ok(Response::Error(e)) => bail!("{e}"),
        Err(ControlError::NotRunning(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Prints `v` as pretty JSON (the `--json` output).
fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints rows as aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// The daemon's state directory named in the configuration.
fn state_dir(cfg: &Config) -> Result<StateDir> {
    Ok(StateDir::open(&cfg.daemon.state_dir)?)
}
