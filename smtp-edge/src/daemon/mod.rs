//! The daemon (`smtp-edge run`): a small supervisor of services, each owning
//! its state.
//!
//! - [`gate`]: the XDP gate and its maps (the one writer of the kernel maps);
//! - [`receiver`]: listeners, server configuration, the spool;
//! - [`queue`]: the queue manager over the spool;
//! - [`ranges`]: the Exchange Online list kept current;
//! - [`metrics`]: the registry every service registers into, `/metrics`;
//! - [`reload`]: one reload path (prepare, then commit) for SIGHUP and
//!   `smtp-edge reload`;
//! - [`admin`]: the control socket, routing each request to its service.
//!
//! One source of truth: the configuration file plus the state directory. The
//! kernel maps are always derived from them and written by this process only.
//! Reloads and Exchange Online list changes run one at a time.
//!
//! May call every wing (it starts their services and hands each its part of
//! a reload); nothing but the CLI's `run` calls it.

pub mod admin;
pub mod gate;
pub mod metrics;
pub mod overview;
pub mod queue;
pub mod ranges;
pub mod receiver;
pub mod reload;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Config, ConfigErrors};
use crate::gate::xdp::{self, FilterError};
use crate::state::{StateDir, StateError};
pub use gate::{add_cli_entry, desired_entries, remove_cli_entry};
pub use queue::queue_config;

/// Errors starting or running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Configuration problems.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// State directory problems.
    #[error(transparent)]
    State(#[from] StateError),
    /// Kernel side.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// Allowlist does not fit.
    #[error(transparent)]
    Compile(#[from] crate::gate::allowlist::CompileError),
    /// The receiving side could not start.
    #[error(transparent)]
    Smtp(#[from] crate::inbound::server::SetupError),
    /// The queue could not start.
    #[error("queue: {0}")]
    Queue(String),
    /// The Exchange Online list cannot be read.
    #[error(
        "Exchange Online ranges: {0} (fix or remove the file; without it the bundled list is used)"
    )]
    Ranges(String),
    /// The metrics endpoint could not be bound.
    #[error("{0}")]
    Metrics(String),
    /// Control socket.
    #[error("control socket {path}: {message}")]
    Control {
        /// Socket path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The services of a running daemon.
pub struct Supervisor {
    config: Arc<RwLock<Arc<Config>>>,
    state: StateDir,
    gate: Arc<Mutex<gate::GateService>>,
    receiver: Option<receiver::Receiver>,
    queue: queue::QueueService,
    ranges: ranges::RangesService,
    metrics: metrics::MetricsService,
    /// The certificate files in force (expiry gauge, `status`).
    certificates: crate::ops::certificates::Certificates,
    /// Reloads and Exchange Online list changes, one at a time.
    apply: tokio::sync::Mutex<()>,
}

impl Supervisor {
    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_config(&self, c: Arc<Config>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = c;
    }

    /// Brings every service up: the gate in force first, then the receiving
    /// side and the queue.
    pub async fn start(config: Config) -> Result<Arc<Supervisor>, DaemonError> {
        let config = Arc::new(config);
        let state = StateDir::open(&config.daemon.state_dir)?;
        let (c, s) = (config.clone(), state.clone());
        let gate = tokio::task::spawn_blocking(move || gate::GateService::start(c, s))
            .await
            .map_err(|e| DaemonError::Queue(format!("start-up task failed: {e}")))??;
        let exchange_list =
            crate::gate::ranges::load(&state).map_err(|e| DaemonError::Ranges(e.to_string()))?;
        if exchange_list.stale(crate::queue::spool::now(), config.ranges.stale_after)
            && config.uses_exchange_ranges()
        {
            tracing::warn!(
                checked = %crate::smtp::trace::rfc5322_date(exchange_list.checked_at()),
                "Exchange Online ranges are stale: no successful check for longer than ranges.stale_after"
            );
        }
        let gate = Arc::new(Mutex::new(gate));
        let shared = Arc::new(RwLock::new(config.clone()));
        let mut registry = crate::ops::metrics::registry();
        let smtp_metrics = crate::inbound::metrics::SmtpMetrics::register(&mut registry);
        let queue = queue::QueueService::new(&mut registry);
        let certificates = crate::ops::certificates::Certificates::register(&mut registry);
        metrics::register(&mut registry, gate.clone(), state.clone(), shared.clone());
        let receiver = match config.smtp.raw.enabled {
            true => {
                Some(receiver::Receiver::start(&config, &exchange_list.nets(), smtp_metrics).await?)
            }
            false => None,
        };
        if let Some(r) = &receiver {
            queue.watch_spool(r.spool());
        }
        if let Some(r) = &receiver
            && !config.outbound.is_empty()
        {
            let c = config.clone();
            let cfg = tokio::task::spawn_blocking(move || queue_config(&c))
                .await
                .map_err(|e| DaemonError::Queue(e.to_string()))??;
            queue.apply(cfg, r.spool(), &r.queue_slot()).await?;
        }
        let c = (certificates.clone(), config.clone());
        let _ = tokio::task::spawn_blocking(move || c.0.refresh(&c.1)).await;
        let metrics = metrics::MetricsService::new(registry);
        let bound = metrics
            .prepare(config.metrics.listen)
            .await
            .map_err(DaemonError::Metrics)?;
        metrics.commit(config.metrics.listen, bound);
        Ok(Arc::new(Supervisor {
            config: shared,
            state,
            gate,
            receiver,
            queue,
            ranges: ranges::RangesService::default(),
            metrics,
            certificates,
            apply: tokio::sync::Mutex::new(()),
        }))
    }
}

fn drop_events(pin_dir: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let r = xdp::events::run(&pin_dir, |d| {
            tracing::warn!(
                target: "smtp_edge::drop",
                source = %d.source.map_or_else(|| "unreadable".to_string(), |s| s.to_string()),
                port = d.port,
                reason = d.reason,
                ifindex = d.ifindex,
                "packet refused by the gate"
            );
        })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "drop event reader stopped");
        }
    })
}

/// Runs the daemon until SIGTERM or SIGINT. SIGHUP reloads the configuration
/// (the same path as `smtp-edge reload`). On exit the gate stays pinned and
/// enforcing.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let socket = config.daemon.control_socket.clone();
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(DaemonError::Control {
            path: socket,
            message: "another smtp-edge daemon is answering there".into(),
        });
    }
    for w in &config.warnings {
        tracing::warn!("configuration: {w}");
    }
    let pin_dir = config.filter.pin_dir.clone();
    let filter_on = config.filter.enabled;
    let signal_err = |e: std::io::Error| DaemonError::Control {
        path: socket.clone(),
        message: e.to_string(),
    };
    let mut hup = signal(SignalKind::hangup()).map_err(signal_err)?;
    let mut term = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_err)?;
    let sup = Supervisor::start(config).await?;
    // The socket answers only once the gate is in force and SMTP listens, so
    // `smtp-edge` commands (and scripts waiting for the socket) never see a
    // half-started daemon.
    let listener = admin::bind(&socket)?;
    tracing::info!(socket = %socket.display(), "smtp-edge running");
    let mut tasks = vec![
        tokio::spawn(admin::serve(listener, sup.clone())),
        tokio::spawn(ranges::run(sup.clone())),
    ];
    if filter_on {
        tasks.push(drop_events(pin_dir));
    }
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // Not awaited here: SIGTERM is read while a reload waits.
                let s = sup.clone();
                tokio::spawn(async move {
                    match s.reload().await {
                        Ok(m) => tracing::info!("{m}"),
                        Err(m) => tracing::error!("{m}"),
                    }
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    for t in tasks {
        t.abort();
    }
    if let Some(r) = &sup.receiver {
        r.stop();
    }
    let _ = std::fs::remove_file(&socket);
    tracing::info!("smtp-edge stopped; the gate stays pinned and enforcing");
    Ok(())
}
