//! Shared support for smtp-edge's root-only tests, the lab and the benchmarks:
//! network namespaces that clean up after themselves, crafted frames for
//! BPF_PROG_TEST_RUN, a guard around a running daemon ([`Daemon`]) and one
//! with its SMTP side on loopback ([`edge::Edge`]), certificates
//! ([`certs`]), a raw SMTP client ([`smtp`]), smtp-sink as a next hop
//! ([`sink`]), real peers run as programs ([`tools`]), NSD ([`nsd`]), DKIM
//! keys and signatures ([`dkim`]), Exchange Online's real header sets
//! ([`exo`]).
//!
//! Network rule: everything here uses loopback or addresses inside namespaces
//! created (and deleted) by the caller, from the documentation ranges only.

pub mod bench;
pub mod certs;
pub mod dkim;
pub mod edge;
pub mod exim;
pub mod exo;
pub mod frames;
pub mod netns;
pub mod nexthop;
pub mod nsd;
pub mod ports;
pub mod postfix;
pub mod scrape;
pub mod sink;
pub mod smtp;
pub mod tools;
pub mod webservice;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Path of the `smtp-edge` binary under test: `SMTP_EDGE_BIN`, else the one
/// next to this test executable's target directory.
pub fn smtp_edge_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SMTP_EDGE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    for dir in exe.ancestors().skip(1) {
        let candidate = dir.join("smtp-edge");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("smtp-edge binary not found; run through `cargo xtask test` or set SMTP_EDGE_BIN");
}

/// A name unique to this process and call, short enough for interfaces (≤ 15).
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id() % 100_000;
    let tag: String = tag.chars().take(3).collect();
    format!("{tag}{pid}x{n}")
}

/// A bpffs pin directory removed on drop (with any links and maps in it).
pub struct PinDir(pub PathBuf);

impl PinDir {
    /// A fresh directory name under /sys/fs/bpf (created by the daemon).
    pub fn new(tag: &str) -> Self {
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/smtp-edge-test-{}",
            unique(tag)
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(&self.0) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs a command, returning its output (panics if it cannot be spawned).
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A command running `program` in network namespace `ns` (when given).
///
/// This uses `nsenter --net` rather than `ip netns exec`: the latter also
/// gives the process a private mount namespace with a fresh /sys, where
/// /sys/fs/bpf is not the host's bpffs, so pins made there would vanish with
/// the process. The daemon must pin where the host (and its restart) sees it.
pub fn in_netns(ns: Option<&str>, program: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{ns}"))
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// The proxy variables smtp-edge's HTTP client reads: removed from every
/// program the tests start, so a machine's proxy never carries a test's
/// request (tests that test the proxy set them again).
pub const PROXY_ENV: [&str; 8] = [
    "ALL_PROXY",
    "all_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Removes [`PROXY_ENV`] from `cmd`'s environment.
pub fn without_proxy(cmd: &mut Command) -> &mut Command {
    for v in PROXY_ENV {
        cmd.env_remove(v);
    }
    cmd
}

/// `smtp-edge ARGS` (inside network namespace `ns` when given).
pub fn cli(ns: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = in_netns(ns, &smtp_edge_bin());
    without_proxy(&mut cmd).args(args);
    run(&mut cmd)
}

/// How to start a daemon.
#[derive(Debug, Default, Clone, Copy)]
pub struct Launch<'a> {
    /// In this network namespace.
    pub ns: Option<&'a str>,
    /// With this umask.
    pub umask: Option<u32>,
    /// In a mount namespace of its own where this directory is a tmpfs of
    /// this size (e.g. "4m").
    pub tmpfs: Option<(&'a Path, &'a str)>,
    /// How long to wait for the control socket (default 20 s).
    pub ready_within: Option<Duration>,
}

/// A running `smtp-edge run` process, killed on drop.
pub struct Daemon {
    child: Option<Child>,
    /// Where its stderr goes.
    pub log: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    /// Starts the daemon (inside `ns` when given) and waits until its control
    /// socket answers, at most 20 s.
    pub fn start(ns: Option<&str>, config: &Path, socket: &Path, log: &Path) -> Daemon {
        Daemon::launch(
            &Launch {
                ns,
                ..Launch::default()
            },
            config,
            socket,
            log,
        )
    }

    /// [`Daemon::start`] with the process's umask set to `umask` first.
    pub fn start_with_umask(
        ns: Option<&str>,
        config: &Path,
        socket: &Path,
        log: &Path,
        umask: Option<u32>,
    ) -> Daemon {
        Daemon::launch(
            &Launch {
                ns,
                umask,
                ..Launch::default()
            },
            config,
            socket,
            log,
        )
    }

    /// Starts the daemon as `how` says and waits until its control socket
    /// answers, at most 20 s.
    pub fn launch(how: &Launch<'_>, config: &Path, socket: &Path, log: &Path) -> Daemon {
        let bin = smtp_edge_bin();
        let logf = std::fs::File::create(log).expect("daemon log");
        let mut cmd = match how.tmpfs {
            None => {
                let mut c = in_netns(how.ns, &bin);
                c.arg("--config").arg(config).arg("run");
                c
            }
            Some((dir, size)) => {
                // Its own mount namespace, where `dir` is a small tmpfs the
                // test can fill or make read-only; the host's mounts are not
                // touched. The shell execs the daemon: same pid.
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                    .arg(
                        "mkdir -p \"$1\" && mount -t tmpfs -o \"size=$2,mode=0700\" tmpfs \"$1\" \
                         && exec \"$3\" --config \"$4\" run",
                    )
                    .arg("sh")
                    .arg(dir)
                    .arg(size)
                    .arg(&bin)
                    .arg(config);
                c
            }
        };
        without_proxy(&mut cmd)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        if let Some(mask) = how.umask {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask(2) is async-signal-safe and touches only the
            // child between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        Daemon::spawn(cmd, socket, log, how.ready_within)
    }

    /// Starts `cmd` (a command line ending in `smtp-edge … run`, its stderr
    /// set to the log by the caller or here) and waits until the control
    /// socket answers (at most `within`, default 20 s).
    pub fn spawn(mut cmd: Command, socket: &Path, log: &Path, within: Option<Duration>) -> Daemon {
        if !log.exists() {
            let logf = std::fs::File::create(log).expect("daemon log");
            cmd.stderr(logf);
        }
        let child = cmd.spawn().expect("spawn smtp-edge run");
        let mut d = Daemon {
            child: Some(child),
            log: log.to_path_buf(),
            socket: socket.to_path_buf(),
        };
        d.wait_ready(within.unwrap_or(Duration::from_secs(20)));
        d
    }

    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("smtp-edge run exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `path` as the daemon sees it (through its mount namespace).
    pub fn seen_path(&self, path: &Path) -> PathBuf {
        let pid = self.pid().expect("daemon running");
        let rel = path.strip_prefix("/").unwrap_or(path);
        Path::new(&format!("/proc/{pid}/root")).join(rel)
    }

    /// Runs a command in the daemon's mount namespace (e.g. `mount -o
    /// remount,ro DIR`); must succeed.
    pub fn in_mounts(&self, args: &[&str]) -> Output {
        let pid = self.pid().expect("daemon running");
        run_ok(
            Command::new("nsenter")
                .arg("-t")
                .arg(pid.to_string())
                .arg("-m")
                .arg("--")
                .args(args),
        )
    }

    /// The octets in the files it has open under `dir` (also unnamed ones:
    /// messages being received).
    pub fn open_bytes_under(&self, dir: &Path) -> u64 {
        let pid = self.pid().expect("daemon running");
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return 0;
        };
        fds.flatten()
            .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(dir)))
            .filter_map(|fd| std::fs::metadata(fd.path()).ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }

    /// Its resident memory now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().expect("daemon running");
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our child's pid.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL (a crash) and wait.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// True when running as root (the integration tests need it).
pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}
