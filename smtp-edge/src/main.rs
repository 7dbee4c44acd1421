//! The `smtp-edge` binary: the daemon (`run`) and the admin CLI.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use serde_json::Value;

use smtp_edge::config::{self, Config, LogFormat};
use smtp_edge::daemon;
use smtp_edge::gate::allowlist::exchange;
use smtp_edge::gate::xdp::{self, Maps};
use smtp_edge::ops::control::{self, ControlError, Request, Response};
use smtp_edge::ops::view::{self, Check, Stats, Status};
use smtp_edge::state::StateDir;

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

#[derive(Subcommand)]
enum DeviceCmd {
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

#[derive(Subcommand)]
enum ConnectorCmd {
    /// Go through an outbound connector as delivery would and report each
    /// step (resolve, connect, greeting, EHLO, STARTTLS, TLS, the peer's
    /// certificate, our client certificate), like Exchange Online's
    /// "validate connector"; exit status 1 when a step fails.
    Test {
        /// The connector's name.
        name: String,
        /// A recipient: its domain for MX connectors, the test message's
        /// recipient with --send.
        #[arg(long)]
        rcpt: Option<String>,
        /// Deliver a test message to --rcpt and report its final reply.
        #[arg(long)]
        send: bool,
    },
}

#[derive(Subcommand)]
enum QueueCmd {
    /// Every queued message: id, age, sender, recipients with status, next attempt.
    List,
    /// One message: its state and headers.
    Show {
        /// Queue id.
        id: String,
    },
    /// Retry now (every message without an id).
    Flush {
        /// Queue id.
        id: Option<String>,
    },
    /// Stop trying a message until it is released.
    Hold {
        /// Queue id.
        id: String,
    },
    /// Let a held message be tried again.
    Release {
        /// Queue id.
        id: String,
    },
    /// Remove a message without telling the sender.
    Delete {
        /// Queue id.
        id: String,
    },
    /// Give up on a message now; the sender gets a DSN.
    Bounce {
        /// Queue id.
        id: String,
    },
}

#[derive(Subcommand)]
enum AllowCmd {
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

#[derive(Subcommand)]
enum FilterCmd {
    /// Where the gate is attached, mode, ports, table use.
    Status,
    /// Remove the gate from every interface and delete its pins.
    Detach,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a file; errors carry file, line and column.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print a complete, commented configuration.
    Example,
}

#[derive(Subcommand)]
enum RangesCmd {
    /// Ask Microsoft's endpoints web service now: version first, the list
    /// only when it changed; additions at once, removals after
    /// ranges.removal_grace.
    Update {
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Take a list that removes more than ranges.max_shrink.
        #[arg(long)]
        accept_shrink: bool,
        /// Fetch the list even when the version did not change.
        #[arg(long)]
        force: bool,
    },
    /// What an update would add and remove (the published list against the
    /// one in force, whatever the version).
    Diff,
    /// Instance, version in force, last check, pending removals, request id.
    Status,
    /// Take a saved endpoints web-service answer (JSON) as the list in force,
    /// with the same checks, grace and shrink limit as an update.
    Import {
        /// The saved answer of {service_url}/endpoints/Worldwide?ClientRequestId=GUID
        file: PathBuf,
        /// Only show the selection and what would change.
        #[arg(long)]
        dry_run: bool,
        /// Take a list that removes more than ranges.max_shrink.
        #[arg(long)]
        accept_shrink: bool,
    },
    /// The Exchange Online entries of the gate.
    List,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = real_main(cli) {
        eprintln!("smtp-edge: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Run => run(&cli.config),
        Cmd::ConfigCmd(ConfigCmd::Example) => {
            print!("{}", config::EXAMPLE);
            Ok(())
        }
        Cmd::ConfigCmd(ConfigCmd::Check { file }) => config_check(file, cli.json),
        Cmd::Allow(a) => allow(&cli, a),
        Cmd::Check { address, port } => check(&cli, *address, *port),
        Cmd::Stats { watch } => stats(&cli, *watch),
        Cmd::Status => overview(&cli),
        Cmd::Filter(FilterCmd::Status) => status(&cli),
        Cmd::Filter(FilterCmd::Detach) => detach(&cli),
        Cmd::Ranges(r) => ranges(&cli, r),
        Cmd::Queue(q) => queue(&cli, q),
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
        Cmd::GenerateAssets { dir } => generate_assets(dir),
        Cmd::ExoCommands => exo_commands(&cli),
        Cmd::Device(d) => device(&cli, d),
        Cmd::Connector(ConnectorCmd::Test { name, rcpt, send }) => {
            connector_test(&cli, name, rcpt.as_deref(), *send)
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

fn load_config(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|e| anyhow!("{e}"))
}

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

fn config_check(file: &Path, json: bool) -> Result<()> {
    match Config::load(file) {
        Ok(cfg) => {
            let mut warnings: Vec<String> = cfg.warnings.iter().map(|w| w.to_string()).collect();
            for iface in cfg.interfaces() {
                if cfg.filter.enabled && !xdp::interface_exists(&iface) {
                    warnings.push(format!("interface `{iface}` does not exist on this host"));
                }
            }
            if json {
                print_json(&serde_json::json!({"ok": true, "warnings": warnings}))?;
            } else {
                for w in &warnings {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: ok ({} static allowlist entries, ports {:?}, mode {:?})",
                    file.display(),
                    cfg.static_entries.len(),
                    cfg.ports,
                    cfg.filter.mode
                );
            }
            Ok(())
        }
        Err(errors) => {
            if json {
                let list: Vec<Value> = errors
                    .0
                    .iter()
                    .map(|e| serde_json::json!({"file": e.file, "line": e.line, "column": e.column, "message": e.message}))
                    .collect();
                print_json(&serde_json::json!({"ok": false, "errors": list}))?;
            }
            bail!("{} error(s):\n{errors}", errors.0.len())
        }
    }
}

fn state_dir(cfg: &Config) -> Result<StateDir> {
    Ok(StateDir::open(&cfg.daemon.state_dir)?)
}

fn allow(cli: &Cli, cmd: &AllowCmd) -> Result<()> {
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
    let fs = state_dir(cfg)?.filter()?.unwrap_or_default();
    Ok(view::stats(&maps, &fs)?)
}

fn check(cli: &Cli, address: IpAddr, port: u16) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    let c: Check = match ask(&cfg, &Request::Check { address, port })? {
        Some(v) => serde_json::from_value(v)?,
        None => {
            let maps = Maps::open(&cfg.filter.pin_dir, false)?;
            let fs = state_dir(&cfg)?.filter()?.unwrap_or_default();
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

fn stats(cli: &Cli, watch: Option<u64>) -> Result<()> {
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

/// Man pages (section 8: one for the command, one per subcommand), bash,
/// zsh and fish completions, and the example configuration.
fn generate_assets(dir: &Path) -> Result<()> {
    use clap::CommandFactory;
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let cmd = Cli::command();
    let mut pages = vec![(String::from("smtp-edge"), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("smtp-edge-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
        for sub2 in sub.get_subcommands() {
            let name2 = format!("smtp-edge-{}-{}", sub.get_name(), sub2.get_name());
            pages.push((name2.clone(), sub2.clone().name(name2)));
        }
    }
    for (name, page) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .section("8")
            .date(env!("CARGO_PKG_VERSION"))
            .render(&mut out)?;
        std::fs::write(man.join(format!("{name}.8")), out)?;
    }
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let mut c = Cli::command();
        clap_complete::generate_to(shell, &mut c, "smtp-edge", &completions)?;
    }
    std::fs::write(dir.join("smtp-edge.toml"), config::EXAMPLE)?;
    Ok(())
}

fn device(cli: &Cli, cmd: &DeviceCmd) -> Result<()> {
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

fn exo_commands(cli: &Cli) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    // Certificate names where the files can be read here (absent: the
    // commands say what to check).
    let names = |p: &std::path::Path| {
        smtp_edge::certs::load_chain(p).ok().and_then(|c| {
            c.first()
                .map(|c| smtp_edge::certs::certificate_names(c, true))
        })
    };
    let certs = smtp_edge::ops::exo::CertNames {
        server: cfg
            .smtp
            .raw
            .tls
            .as_ref()
            .and_then(|t| names(&t.certificate)),
        clients: cfg
            .outbound
            .iter()
            .filter_map(|o| {
                let c = o.client_cert.as_ref()?;
                Some((o.name.clone(), names(&c.certificate)?))
            })
            .collect(),
    };
    print!("{}", smtp_edge::ops::exo::commands(&cfg, &certs));
    Ok(())
}

fn connector_test(cli: &Cli, name: &str, rcpt: Option<&str>, send: bool) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    let report = rt
        .block_on(smtp_edge::outbound::validate::test_connector(
            &cfg, name, rcpt, send,
        ))
        .map_err(|e| anyhow!("{e}"))?;
    if cli.json {
        print_json(&report)?;
    } else {
        print!("{}", report.render());
    }
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}

fn overview(cli: &Cli) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    match ask(&cfg, &Request::Overview)? {
        Some(v) => {
            if cli.json {
                return print_json(&v);
            }
            let o: daemon::overview::Overview = serde_json::from_value(v)?;
            print!("{}", o.render());
            Ok(())
        }
        None => bail!(
            "the daemon is not running (no answer on {}); `smtp-edge filter status` and `ranges status` read what it left",
            cfg.daemon.control_socket.display()
        ),
    }
}

fn status(cli: &Cli) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    let s: Status = match ask(&cfg, &Request::Status)? {
        Some(v) => serde_json::from_value(v)?,
        None => {
            let maps = Maps::open(&cfg.filter.pin_dir, false)?;
            let fs = state_dir(&cfg)?.filter()?.unwrap_or_default();
            let blocks = maps.read_v4()?.blocks_used();
            view::status(&maps, &cfg.filter.pin_dir, &fs, blocks)?
        }
    };
    if cli.json {
        return print_json(&s);
    }
    println!(
        "daemon:      {}",
        if s.daemon_running {
            "running"
        } else {
            "not running (read from the pinned maps)"
        }
    );
    println!("pinned at:   {}", s.pin_dir);
    let ifaces: Vec<String> = s
        .interfaces
        .iter()
        .map(|i| match s.attach_modes.get(i) {
            Some(m) => format!("{i} ({m})"),
            None => i.clone(),
        })
        .collect();
    println!(
        "attached to: {}",
        if ifaces.is_empty() {
            "nothing".into()
        } else {
            ifaces.join(", ")
        }
    );
    println!("mode:        {}", s.mode);
    println!("ports:       {:?}", s.ports);
    println!("entries:     {} of {}", s.entries, s.entry_capacity);
    println!(
        "IPv4 blocks: {}/{} second level, {}/{} third level",
        s.v4_blocks[0].0, s.v4_blocks[0].1, s.v4_blocks[1].0, s.v4_blocks[1].1
    );
    Ok(())
}

fn detach(cli: &Cli) -> Result<()> {
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

fn ranges(cli: &Cli, cmd: &RangesCmd) -> Result<()> {
    use smtp_edge::gate::ranges::{self, Options, status};
    let cfg = load_config(&cli.config)?;
    let now = smtp_edge::queue::spool::now();
    let update = |options: Options| -> Result<ranges::Report> {
        if let Some(v) = ask(&cfg, &Request::RangesUpdate { options })? {
            return Ok(serde_json::from_value(v)?);
        }
        let dir = state_dir(&cfg)?;
        let before = ranges::load(&dir)?;
        let mut r = ranges::check(&dir, &cfg.ranges, options, now)?;
        if !options.dry_run && r.changes.allowed_changes() {
            // What the daemon would do at its start: the gate must hold it.
            if let Err(e) = fits_the_gate(&cfg, &dir) {
                ranges::roll_back(&dir, &before, r.latest.as_deref(), &e, &cfg.ranges, now)?;
                r.outcome = ranges::Outcome::Refused { reason: e };
                r.changes = ranges::Changes::default();
            } else {
                eprintln!("the daemon is not running: the new list takes effect when it starts");
            }
        }
        Ok(r)
    };
    match cmd {
        RangesCmd::Update {
            dry_run,
            accept_shrink,
            force,
        } => {
            let r = update(Options {
                dry_run: *dry_run,
                accept_shrink: *accept_shrink,
                force: *force,
            })?;
            if cli.json {
                print_json(&r)?;
            } else {
                print!("{}", status::render_report(&r));
            }
            match r.outcome {
                ranges::Outcome::Refused { .. } | ranges::Outcome::Failed { .. } => {
                    std::process::exit(2)
                }
                _ => Ok(()),
            }
        }
        RangesCmd::Diff => {
            let r = update(Options {
                dry_run: true,
                accept_shrink: true,
                force: true,
            })?;
            if cli.json {
                return print_json(&r);
            }
            match &r.outcome {
                ranges::Outcome::Failed { error } => bail!("{error}"),
                ranges::Outcome::Refused { reason } => {
                    bail!("the published list would be refused: {reason}")
                }
                _ => {}
            }
            let text = status::render_changes(&r.changes);
            if text.is_empty() {
                println!(
                    "no difference: the published list (version {}) is the one in force",
                    r.latest.as_deref().unwrap_or("?")
                );
            } else {
                print!("{text}");
            }
            Ok(())
        }
        RangesCmd::Status => {
            let dir = state_dir(&cfg)?;
            let s = status::Status::new(
                &ranges::load(&dir)?,
                &cfg.ranges,
                cfg.uses_exchange_ranges(),
                dir.peek_request_id()?
                    .unwrap_or_else(|| "(none yet: made at the first check)".into()),
                now,
            );
            if cli.json {
                print_json(&s)
            } else {
                print!("{}", s.render());
                Ok(())
            }
        }
        RangesCmd::Import {
            file,
            dry_run,
            accept_shrink,
        } => {
            let sel = exchange::import(file)?;
            let options = Options {
                dry_run: *dry_run,
                accept_shrink: *accept_shrink,
                force: false,
            };
            let req = Request::RangesImport {
                selection: sel.clone(),
                options,
            };
            let (changes, running) = match ask(&cfg, &req)? {
                Some(v) => (serde_json::from_value(v)?, true),
                None => {
                    let dir = state_dir(&cfg)?;
                    let before = ranges::load(&dir)?;
                    let changes = ranges::import(&dir, &sel, &cfg.ranges, options, now)?;
                    if !options.dry_run
                        && let Err(e) = fits_the_gate(&cfg, &dir)
                    {
                        ranges::roll_back(&dir, &before, None, &e, &cfg.ranges, now)?;
                        bail!("import refused: {e}");
                    }
                    (changes, false)
                }
            };
            if cli.json {
                return print_json(&serde_json::json!({"selection": sel, "changes": changes}));
            }
            println!("endpoint sets: {:?} ({})", sel.sets, sel.urls.join(", "));
            print!("{}", status::render_changes(&changes));
            match (dry_run, running) {
                (true, _) => {}
                (false, true) => eprintln!("imported {} ranges; in force now", sel.ranges.len()),
                (false, false) => eprintln!(
                    "imported {} ranges; they take effect when the daemon starts",
                    sel.ranges.len()
                ),
            }
            Ok(())
        }
        RangesCmd::List => {
            let entries = smtp_edge::gate::allowlist::exchange_entries(
                &cfg,
                &ranges::load(&state_dir(&cfg)?)?,
            );
            if cli.json {
                return print_json(&entries);
            }
            if !cfg.allowlist.exchange_online {
                println!(
                    "allowlist.exchange_online is false: no Exchange Online ranges are allowed"
                );
            }
            for e in entries {
                println!("{:<22} {}", e.source, e.comment);
            }
            Ok(())
        }
    }
}

/// Whether the gate's tables hold the allowlist with the list on disk (the
/// daemon's check before it puts a list in force).
fn fits_the_gate(cfg: &Config, dir: &StateDir) -> std::result::Result<(), String> {
    if !cfg.filter.enabled {
        return Ok(());
    }
    let entries = daemon::desired_entries(cfg, dir).map_err(|e| e.to_string())?;
    let previous = dir
        .filter()
        .map_err(|e| e.to_string())?
        .map(|f| f.ids())
        .unwrap_or_default();
    smtp_edge::gate::allowlist::compile(&entries, &previous, cfg.filter.capacity.entries)
        .map(drop)
        .map_err(|e| e.to_string())
}

fn rcpt_state(v: &Value) -> String {
    match v["state"].as_str().unwrap_or("?") {
        "pending" => match v["last_error"].as_str() {
            Some(e) => format!("deferred: {e}"),
            None => "pending".into(),
        },
        "delivered" => format!("delivered to {}", v["remote"].as_str().unwrap_or("?")),
        "failed" => format!("failed: {}", v["reason"].as_str().unwrap_or("?")),
        other => other.to_string(),
    }
}

fn queue(cli: &Cli, cmd: &QueueCmd) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    let req = match cmd {
        QueueCmd::List => Request::QueueList,
        QueueCmd::Show { id } => Request::QueueShow { id: id.clone() },
        QueueCmd::Flush { id } => Request::QueueFlush { id: id.clone() },
        QueueCmd::Hold { id } => Request::QueueHold { id: id.clone() },
        QueueCmd::Release { id } => Request::QueueRelease { id: id.clone() },
        QueueCmd::Delete { id } => Request::QueueDelete { id: id.clone() },
        QueueCmd::Bounce { id } => Request::QueueBounce { id: id.clone() },
    };
    let v = ask(&cfg, &req)?
        .ok_or_else(|| anyhow!("the daemon is not running; the queue is its own"))?;
    if cli.json {
        return print_json(&v);
    }
    let now = smtp_edge::queue::spool::now();
    let show_msg = |m: &Value| {
        if let Some(why) = m["corrupt"].as_str() {
            println!(
                "{}  CORRUPT (in spool corrupt/, not delivered): {why}",
                m["id"].as_str().unwrap_or("?")
            );
            return;
        }
        let next = m["next_attempt"].as_u64().unwrap_or(0);
        let mut flags = String::new();
        if m["held"].as_bool().unwrap_or(false) {
            flags.push_str("  HELD");
        }
        if m["busy"].as_bool().unwrap_or(false) {
            flags.push_str("  delivering");
        }
        if let Some(why) = m["frozen"].as_str() {
            flags.push_str(&format!("  FROZEN ({why})"));
        }
        println!(
            "{}  age {}s  from <{}>  attempts {}{}{}",
            m["id"].as_str().unwrap_or("?"),
            m["age"].as_u64().unwrap_or(0),
            m["sender"].as_str().unwrap_or(""),
            m["attempts"].as_u64().unwrap_or(0),
            flags,
            if next > now {
                format!("  next attempt in {}s", next - now)
            } else {
                String::new()
            },
        );
        for r in m["recipients"].as_array().into_iter().flatten() {
            println!(
                "    {:<40} {}",
                r[0].as_str().unwrap_or("?"),
                rcpt_state(&r[1])
            );
        }
    };
    match cmd {
        QueueCmd::List => {
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("the queue is empty");
            }
            for m in &list {
                show_msg(m);
            }
        }
        QueueCmd::Show { .. } => {
            show_msg(&v["message"]);
            println!();
            print!("{}", v["headers"].as_str().unwrap_or(""));
        }
        QueueCmd::Flush { .. } => println!("{} message(s) will be tried now", v["flushed"]),
        _ => println!("done"),
    }
    Ok(())
}
