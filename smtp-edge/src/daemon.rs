//! The daemon (`smtp-edge run`): owns the XDP gate and its maps, keeps them in
//! step with the configuration and the CLI's allowlist edits, logs sampled
//! drops, and answers the CLI on the control socket.
//!
//! One source of truth: the configuration file plus the state directory. The
//! kernel maps are always derived from them and written by this process only.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::allowlist::{self, Compiled, Entry, Origin, spec};
use crate::config::{Config, ConfigErrors};
use crate::control::{self, Request, Response};
use crate::filter::{self, Attachment, FilterError, Gate, LoadCapacity, Maps, Sync};
use crate::state::{CliEntry, FilterState, StateDir, StateError};
use crate::view;

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
    Compile(#[from] allowlist::CompileError),
    /// The receiving side could not start.
    #[error(transparent)]
    Smtp(#[from] crate::smtp::server::SetupError),
    /// The queue could not start.
    #[error("queue: {0}")]
    Queue(String),
    /// Control socket.
    #[error("control socket {path}: {message}")]
    Control {
        /// Socket path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The desired allowlist: Exchange Online, then the configuration's entries,
/// then the CLI's. Identical text from two origins are two entries (two
/// counters); the kernel holds the network once (first wins).
pub fn desired_entries(config: &Config, state: &StateDir) -> Result<Vec<Entry>, DaemonError> {
    let imported = state.exchange()?;
    let mut entries = config.exchange_entries(imported.as_ref());
    entries.extend(config.static_entries.iter().cloned());
    for e in state.cli_entries()? {
        match Entry::parse(Origin::Cli, &e.source, &e.comment) {
            Ok(entry) => entries.push(entry),
            Err(err) => {
                tracing::warn!(source = %e.source, error = %err, "ignoring bad CLI entry in state")
            }
        }
    }
    Ok(entries)
}

/// Adds an entry to the CLI entries (used by the daemon and, when it is down,
/// by the CLI itself). Returns the canonical text.
pub fn add_cli_entry(state: &StateDir, source: &str, comment: &str) -> Result<String, String> {
    let canonical = spec::canonical(source).map_err(|e| e.to_string())?;
    let mut list = state.cli_entries().map_err(|e| e.to_string())?;
    if list.iter().any(|e| e.source == canonical) {
        return Err(format!("{canonical} is already in the allowlist"));
    }
    list.push(CliEntry {
        source: canonical.clone(),
        comment: comment.to_string(),
    });
    state.set_cli_entries(&list).map_err(|e| e.to_string())?;
    Ok(canonical)
}

/// Removes a CLI entry; entries from the configuration must be edited there.
pub fn remove_cli_entry(config: &Config, state: &StateDir, source: &str) -> Result<String, String> {
    let canonical = spec::canonical(source).map_err(|e| e.to_string())?;
    let mut list = state.cli_entries().map_err(|e| e.to_string())?;
    let before = list.len();
    list.retain(|e| e.source != canonical);
    if list.len() == before {
        if config.static_entries.iter().any(|e| e.source == canonical) {
            return Err(format!(
                "{canonical} comes from {}; remove it there and run `smtp-edge reload`",
                config.path.display()
            ));
        }
        return Err(format!(
            "{canonical} is not an entry added with `allow add`"
        ));
    }
    state.set_cli_entries(&list).map_err(|e| e.to_string())?;
    Ok(canonical)
}

/// The running daemon's state.
pub struct Daemon {
    config: Config,
    state: StateDir,
    gate: Option<Gate>,
    sync: Option<Sync>,
    compiled: Compiled,
    attachments: Vec<Attachment>,
    smtp: Option<crate::smtp::server::Shared>,
    queue: Option<Arc<crate::queue::manager::Manager>>,
}

impl Daemon {
    /// Loads the gate, fills its maps, then attaches (or adopts the pinned
    /// links), so the program never runs against an empty allowlist.
    pub fn start(config: Config) -> Result<Daemon, DaemonError> {
        let state = StateDir::open(&config.daemon.state_dir)?;
        let mut d = Daemon {
            config,
            state,
            gate: None,
            sync: None,
            compiled: Compiled::default(),
            attachments: Vec::new(),
            smtp: None,
            queue: None,
        };
        if d.config.filter.enabled {
            d.bring_up_filter()?;
        }
        Ok(d)
    }

    fn bring_up_filter(&mut self) -> Result<(), DaemonError> {
        let f = &self.config.filter;
        let cap = LoadCapacity {
            entries: f.capacity.entries,
            v4_l2_blocks: f.capacity.v4_l2_blocks,
            v4_l3_blocks: f.capacity.v4_l3_blocks,
            v6_prefixes: f.capacity.v6_prefixes,
        };
        // Check interfaces before touching anything.
        for iface in self.config.interfaces() {
            if !filter::interface_exists(&iface) {
                return Err(FilterError::UnknownInterface(iface).into());
            }
        }
        let gate = Gate::load(&f.pin_dir, cap)?;
        let maps = Maps::open(&f.pin_dir, true)?;
        if maps.capacity.entries != cap.entries
            || maps.capacity.v4.l2_blocks != cap.v4_l2_blocks
            || maps.capacity.v4.l3_blocks != cap.v4_l3_blocks
        {
            tracing::warn!(
                pinned = ?maps.capacity,
                "pinned maps keep their sizes; `smtp-edge filter detach` and restart to apply filter.capacity"
            );
        }
        self.sync = Some(Sync::adopt(maps)?);
        self.gate = Some(gate);
        self.apply_settings()?;
        self.resync()?;
        self.reconcile_interfaces()?;
        Ok(())
    }

    fn apply_settings(&mut self) -> Result<(), DaemonError> {
        if let Some(sync) = &mut self.sync {
            let f = &self.config.filter;
            sync.maps().set_ports(&self.config.ports);
            sync.maps_mut()
                .set_settings(f.mode, f.drop_events_per_second)?;
        }
        Ok(())
    }

    fn reconcile_interfaces(&mut self) -> Result<(), DaemonError> {
        let Some(gate) = &mut self.gate else {
            return Ok(());
        };
        let wanted = self.config.interfaces();
        let mut attached = Vec::new();
        for iface in &wanted {
            let a = gate.attach(iface, self.config.filter.xdp_mode)?;
            tracing::info!(iface = %a.iface, how = %a.how, "gate attached");
            attached.push(a);
        }
        for iface in filter::pinned_interfaces(&self.config.filter.pin_dir) {
            if !wanted.contains(&iface) {
                filter::detach_interface(&self.config.filter.pin_dir, &iface)?;
                tracing::info!(%iface, "gate detached (no longer configured)");
            }
        }
        self.attachments = attached;
        self.record()?;
        Ok(())
    }

    /// Recompiles the allowlist and pushes the difference into the kernel.
    fn resync(&mut self) -> Result<(), DaemonError> {
        let entries = desired_entries(&self.config, &self.state)?;
        let previous = match self.compiled.entries.is_empty() {
            true => self.state.filter()?.map(|f| f.ids()).unwrap_or_default(),
            false => self.compiled.ids(),
        };
        let compiled =
            allowlist::compile(&entries, &previous, self.config.filter.capacity.entries)?;
        if let Some(sync) = &mut self.sync {
            let report = sync.apply(&compiled)?;
            tracing::info!(
                entries = compiled.entries.len(),
                v4_prefixes = compiled.v4.len(),
                v6_prefixes = compiled.v6.len(),
                v4_slot_writes = report.v4_slot_writes,
                v6_added = report.v6_added,
                v6_removed = report.v6_removed,
                seconds = report.seconds,
                "allowlist synced"
            );
        }
        self.compiled = compiled;
        self.record()?;
        Ok(())
    }

    fn record(&self) -> Result<(), DaemonError> {
        if self.sync.is_none() {
            return Ok(());
        }
        self.state.set_filter(&self.filter_state())?;
        Ok(())
    }

    fn filter_state(&self) -> FilterState {
        FilterState {
            entries: self.compiled.entries.clone(),
            interfaces: self.config.interfaces(),
            ports: self.config.ports.clone(),
            mode: format!("{:?}", self.config.filter.mode).to_lowercase(),
        }
    }

    /// Re-reads the configuration; a file with errors changes nothing.
    pub fn reload(&mut self) -> Result<String, String> {
        let next = Config::load(&self.config.path)
            .map_err(|e| format!("configuration refused, the running one stays in force:\n{e}"))?;
        for w in &next.warnings {
            tracing::warn!("configuration: {w}");
        }
        for iface in next.interfaces() {
            if next.filter.enabled && !filter::interface_exists(&iface) {
                return Err(format!(
                    "configuration refused, the running one stays in force: unknown interface `{iface}`"
                ));
            }
        }
        if next.filter.pin_dir != self.config.filter.pin_dir
            || next.daemon.state_dir != self.config.daemon.state_dir
            || next.filter.enabled != self.config.filter.enabled
        {
            return Err(
                "filter.enabled, filter.pin_dir and daemon.state_dir change only with a restart; configuration not applied"
                    .into(),
            );
        }
        // The receiving side: listening addresses need a restart; everything
        // else (connectors, certificates, limits) is rebuilt here, and a
        // certificate that cannot be read refuses the whole reload.
        let next_smtp = match &self.smtp {
            Some(_)
                if !next.smtp.raw.enabled
                    || next.smtp.listen != self.config.smtp.listen
                    || next.smtp.raw.spool_dir != self.config.smtp.raw.spool_dir =>
            {
                return Err("smtp.enabled, smtp.listen and smtp.spool_dir change only with a restart; configuration not applied".into());
            }
            Some(shared) => {
                let (spool, queue) = {
                    let running = shared.read().unwrap_or_else(|p| p.into_inner());
                    (running.spool.clone(), running.queue.clone())
                };
                let mut server = crate::smtp::server::ServerConfig::from_config(&next.smtp, spool)
                    .map_err(|e| {
                        format!("configuration refused, the running one stays in force: {e}")
                    })?;
                // The queue keeps being told of new messages.
                server.queue = queue;
                Some(server)
            }
            None if next.smtp.raw.enabled => {
                return Err(
                    "smtp.enabled changes only with a restart; configuration not applied".into(),
                );
            }
            None => None,
        };
        // Validate the allowlist against capacity before switching.
        let state = StateDir::open(&next.daemon.state_dir).map_err(|e| e.to_string())?;
        let entries = desired_entries(&next, &state).map_err(|e| e.to_string())?;
        allowlist::compile(&entries, &self.compiled.ids(), next.filter.capacity.entries)
            .map_err(|e| format!("configuration refused: {e}"))?;
        let previous = std::mem::replace(&mut self.config, next);
        let result = self
            .apply_settings()
            .and_then(|()| self.resync())
            .and_then(|()| self.reconcile_interfaces());
        match result {
            Ok(()) => {
                if let (Some(shared), Some(server)) = (&self.smtp, next_smtp) {
                    *shared.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(server);
                }
                Ok(format!(
                    "configuration {} applied",
                    self.config.path.display()
                ))
            }
            Err(e) => {
                self.config = previous;
                let _ = self.apply_settings().and_then(|()| self.resync());
                Err(format!(
                    "reload failed, previous configuration restored: {e}"
                ))
            }
        }
    }

    fn queue_command(&self, req: Request) -> Result<serde_json::Value, String> {
        let q = self.queue.as_ref().ok_or(
            "the queue is not running: it needs [smtp] enabled and at least one [[outbound_connectors]]",
        )?;
        let done = |r: Result<(), crate::queue::manager::QueueError>| {
            r.map(|()| json!({ "ok": true })).map_err(|e| e.to_string())
        };
        match req {
            Request::QueueList => serde_json::to_value(q.list()).map_err(|e| e.to_string()),
            Request::QueueShow { id } => q
                .show(&id)
                .map(|(l, headers)| json!({ "message": l, "headers": headers }))
                .map_err(|e| e.to_string()),
            Request::QueueFlush { id } => q
                .flush(id.as_deref())
                .map(|n| json!({ "flushed": n }))
                .map_err(|e| e.to_string()),
            Request::QueueHold { id } => done(q.hold(&id, true)),
            Request::QueueRelease { id } => done(q.hold(&id, false)),
            Request::QueueDelete { id } => done(q.delete(&id)),
            Request::QueueBounce { id } => done(q.bounce(&id)),
            _ => Err("not a queue command".into()),
        }
    }

    /// Answers one control request.
    pub fn handle(&mut self, req: Request) -> Response {
        let req_clone = req.clone();
        let result: Result<serde_json::Value, String> = match req {
            Request::AllowAdd { source, comment } => {
                add_cli_entry(&self.state, &source, &comment).and_then(|canonical| {
                    match self.resync() {
                        Ok(()) => Ok(json!({ "added": canonical })),
                        Err(e) => {
                            // Undo the state change: the kernel did not take it.
                            let _ = remove_cli_entry(&self.config, &self.state, &canonical);
                            let _ = self.resync();
                            Err(e.to_string())
                        }
                    }
                })
            }
            Request::AllowRemove { source } => remove_cli_entry(&self.config, &self.state, &source)
                .and_then(|canonical| {
                    self.resync()
                        .map(|()| json!({ "removed": canonical }))
                        .map_err(|e| e.to_string())
                }),
            Request::AllowList | Request::Stats => match &self.sync {
                Some(sync) => view::stats(sync.maps(), &self.filter_state())
                    .map_err(|e| e.to_string())
                    .and_then(|s| serde_json::to_value(s).map_err(|e| e.to_string())),
                None => Err("the filter is not enabled in this daemon's configuration".into()),
            },
            Request::Check { address, port } => self.check(address, port),
            Request::Status => match &self.sync {
                Some(sync) => view::status(
                    sync.maps(),
                    &self.config.filter.pin_dir,
                    &self.filter_state(),
                    sync.v4_blocks(),
                )
                .map(|mut s| {
                    s.daemon_running = true;
                    s.attach_modes = self
                        .attachments
                        .iter()
                        .map(|a| (a.iface.clone(), a.how.clone()))
                        .collect();
                    s
                })
                .map_err(|e| e.to_string())
                .and_then(|s| serde_json::to_value(s).map_err(|e| e.to_string())),
                None => Err("the filter is not enabled in this daemon's configuration".into()),
            },
            Request::Reload => self.reload().map(|m| json!({ "message": m })),
            Request::Detach => self.detach(),
            Request::QueueList
            | Request::QueueShow { .. }
            | Request::QueueFlush { .. }
            | Request::QueueHold { .. }
            | Request::QueueRelease { .. }
            | Request::QueueDelete { .. }
            | Request::QueueBounce { .. } => self.queue_command(req_clone),
        };
        match result {
            Ok(v) => Response::Ok(v),
            Err(e) => Response::Error(e),
        }
    }

    fn check(&self, address: IpAddr, port: u16) -> Result<serde_json::Value, String> {
        let sync = self
            .sync
            .as_ref()
            .ok_or("the filter is not enabled in this daemon's configuration")?;
        let c = view::check(sync.maps(), &self.filter_state(), address, port)
            .map_err(|e| e.to_string())?;
        serde_json::to_value(c).map_err(|e| e.to_string())
    }

    fn detach(&mut self) -> Result<serde_json::Value, String> {
        let pin_dir = self.config.filter.pin_dir.clone();
        self.sync = None;
        self.gate = None;
        self.attachments.clear();
        let ifaces = filter::detach_all(&pin_dir).map_err(|e| e.to_string())?;
        tracing::warn!(
            ?ifaces,
            "gate detached on request; `smtp-edge reload` or a restart attaches it again"
        );
        Ok(json!({ "detached": ifaces }))
    }

    /// Re-attaches after a detach (reload with the filter enabled).
    fn ensure_filter(&mut self) -> Result<(), DaemonError> {
        if self.config.filter.enabled && self.sync.is_none() {
            self.compiled = Compiled::default();
            self.bring_up_filter()?;
        }
        Ok(())
    }
}

async fn serve_connection(stream: tokio::net::UnixStream, daemon: Arc<Mutex<Daemon>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match control::parse_request(&line) {
            Ok(req) => {
                let daemon = daemon.clone();
                tokio::task::spawn_blocking(move || {
                    let mut d = daemon.lock().unwrap_or_else(|p| p.into_inner());
                    if matches!(req, Request::Reload)
                        && let Err(e) = d.ensure_filter()
                    {
                        return Response::Error(e.to_string());
                    }
                    d.handle(req)
                })
                .await
                .unwrap_or_else(|e| Response::Error(format!("internal error: {e}")))
            }
            Err(r) => r,
        };
        let mut out =
            serde_json::to_vec(&response).unwrap_or_else(|_| b"{\"error\":\"encoding\"}".to_vec());
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Binds the control socket so that it is never reachable with a wider mode
/// than 0600, not even for a moment: bound inside a private (0700)
/// directory next to its final path, given its mode there, then renamed
/// into place.
fn bind_control(path: &Path) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |message: String| DaemonError::Control {
        path: path.to_path_buf(),
        message,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let private = dir.join(format!(".smtp-edge-bind.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    crate::fsutil::private_dir(&private).map_err(|e| err(e.to_string()))?;
    let staged = private.join("control.sock");
    let bound = UnixListener::bind(&staged)
        .map_err(|e| e.to_string())
        .and_then(|l| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(path);
            std::fs::rename(&staged, path).map_err(|e| e.to_string())?;
            Ok(l)
        });
    let _ = std::fs::remove_dir_all(&private);
    bound.map_err(err)
}

/// The queue's configuration from the file: client certificates loaded
/// (once), the resolver made.
pub fn queue_config(config: &Config) -> Result<crate::queue::manager::QueueConfig, DaemonError> {
    let mut identities = Vec::new();
    for c in &config.outbound {
        identities.push(match &c.client_cert {
            Some(cc) => Some(Arc::new(
                crate::delivery::client::ClientIdentity::load(cc)
                    .map_err(crate::smtp::server::SetupError::Tls)?,
            )),
            None => None,
        });
    }
    let resolver = crate::resolve::Resolver::new(&config.dns)
        .map_err(|e| DaemonError::Queue(e.to_string()))?;
    let system = crate::delivery::client::system_roots();
    let mut roots = Vec::new();
    for c in &config.outbound {
        roots.push(match &c.tls_trust {
            None => system.clone(),
            Some(path) => {
                let mut store = rustls::RootCertStore::empty();
                for cert in
                    crate::tls::load_chain(path).map_err(crate::smtp::server::SetupError::Tls)?
                {
                    store
                        .add(cert)
                        .map_err(|e| DaemonError::Queue(format!("{}: {e}", path.display())))?;
                }
                Arc::new(store)
            }
        });
    }
    Ok(crate::queue::manager::QueueConfig {
        connectors: config.outbound.clone(),
        identities,
        accepted: config.smtp.accepted.clone(),
        settings: config.queue.clone(),
        hostname: config.smtp.hostname.clone(),
        tls_configs: config.outbound.iter().map(|_| Arc::default()).collect(),
        roots,
        resolver,
    })
}

/// Starts the queue manager over the spool.
async fn start_queue(
    config: &Config,
    spool: Arc<crate::spool::Spool>,
) -> Result<
    (
        Arc<crate::queue::manager::Manager>,
        crate::queue::QueueHandle,
    ),
    DaemonError,
> {
    let cfg = queue_config(config)?;
    let started = crate::queue::manager::Manager::start(spool, cfg)
        .await
        .map_err(|e| DaemonError::Queue(e.to_string()))?;
    tracing::info!(connectors = config.outbound.len(), "queue running");
    Ok(started)
}

/// Starts the receiving side when `[smtp]` is enabled.
async fn start_smtp(
    daemon: &Arc<Mutex<Daemon>>,
) -> Result<Option<tokio::task::JoinHandle<()>>, DaemonError> {
    let cfg = {
        let d = daemon.lock().unwrap_or_else(|p| p.into_inner());
        d.config.smtp.clone()
    };
    if !cfg.raw.enabled {
        return Ok(None);
    }
    let spool = crate::smtp::server::ServerConfig::open_spool(&cfg)?;
    let mut server = crate::smtp::server::ServerConfig::from_config(&cfg, spool.clone())?;
    let full = daemon
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .config
        .clone();
    if !full.outbound.is_empty() {
        let (manager, handle) = start_queue(&full, spool).await?;
        server.queue = Some(handle);
        daemon.lock().unwrap_or_else(|p| p.into_inner()).queue = Some(manager);
    }
    let listeners = crate::smtp::server::bind(&cfg.listen).await?;
    tracing::info!(listen = ?cfg.listen, hostname = %cfg.hostname, "SMTP listening");
    let shared: crate::smtp::server::Shared = Arc::new(std::sync::RwLock::new(Arc::new(server)));
    daemon.lock().unwrap_or_else(|p| p.into_inner()).smtp = Some(shared.clone());
    Ok(Some(tokio::spawn(crate::smtp::server::serve(
        listeners, shared,
    ))))
}

/// Runs the daemon until SIGTERM or SIGINT. SIGHUP reloads the configuration.
/// On exit the gate stays pinned and enforcing.
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
    let daemon = tokio::task::spawn_blocking(move || Daemon::start(config))
        .await
        .map_err(|e| DaemonError::Control {
            path: socket.clone(),
            message: format!("start-up task failed: {e}"),
        });
    // The socket answers only once the gate is in force and SMTP listens, so
    // `smtp-edge` commands (and scripts waiting for the socket) never see a
    // half-started daemon.
    let daemon = match daemon {
        Ok(Ok(d)) => Arc::new(Mutex::new(d)),
        Ok(Err(e)) | Err(e) => return Err(e),
    };
    let smtp = start_smtp(&daemon).await?;
    let listener = bind_control(&socket)?;
    tracing::info!(socket = %socket.display(), "smtp-edge running");
    let events = filter_on.then(|| {
        tokio::spawn(async move {
            let r = filter::events::run(&pin_dir, |d| {
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
    });
    let mut hup = signal(SignalKind::hangup()).map_err(|e| DaemonError::Control {
        path: socket.clone(),
        message: e.to_string(),
    })?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| DaemonError::Control {
        path: socket.clone(),
        message: e.to_string(),
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| DaemonError::Control {
        path: socket.clone(),
        message: e.to_string(),
    })?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_connection(stream, daemon.clone()));
                }
            }
            _ = hup.recv() => {
                let d = daemon.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let mut d = d.lock().unwrap_or_else(|p| p.into_inner());
                    d.reload()
                }).await;
                match r {
                    Ok(Ok(m)) => tracing::info!("{m}"),
                    Ok(Err(m)) => tracing::error!("{m}"),
                    Err(e) => tracing::error!(error = %e, "reload task failed"),
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    if let Some(e) = events {
        e.abort();
    }
    if let Some(s) = smtp {
        s.abort();
    }
    let _ = std::fs::remove_file(&socket);
    tracing::info!("smtp-edge stopped; the gate stays pinned and enforcing");
    Ok(())
}
