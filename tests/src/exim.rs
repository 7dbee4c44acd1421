//! A private Exim (Debian's exim4-daemon-light, built on GnuTLS) as a test's
//! peer, without installing it: Debian's exim4 package conflicts with
//! postfix's, which the other tests need. The packages are fetched once with
//! `apt-get download` (Debian's package registry, the only network use) into
//! a cache beside the test binaries (`target/exim4-deb/`), unpacked with
//! `dpkg-deb -x`, and the `exim4` binary runs from there with a
//! configuration file of the test's (`-C`), its own spool and log
//! directories: no system configuration, no setuid.
//!
//! Debian builds Exim with its user looked up by name (`Debian-exim`) before
//! any configuration is read. The system has no such user, and adding one
//! would change the host: each Exim runs in a mount namespace of its own
//! where a copy of `/etc/passwd` and `/etc/group` with that user (an unused
//! id) is bound over the real ones.
//!
//! Every run is bounded (`timeout`); a daemon runs in its own process group,
//! which is stopped on drop.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};

use crate::bench::{set_mode, wait_banner};
use crate::tools::Tool;

/// The packages the binary comes from (exim4-base holds no binary the tests
/// run, but is what the daemon package depends on).
const PACKAGES: [&str; 2] = ["exim4-daemon-light", "exim4-base"];

/// Where the cache lives: `target/exim4-deb/` of the running test binary
/// (`target/debug/deps/TEST`), else the system's temporary directory.
fn cache_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir)
        .join("exim4-deb")
}

/// An unpacked Exim: its binary and the libraries it needs that the system
/// does not have.
#[derive(Debug, Clone)]
pub struct EximBin {
    /// `root/usr/sbin/exim4`.
    pub exim: PathBuf,
    /// `root/usr/lib/x86_64-linux-gnu` (and the like): for LD_LIBRARY_PATH.
    pub libs: String,
}

/// The unpacked Exim, fetched on first use (once per process; between
/// processes a lock file serialises the fetch).
pub fn exim_bin() -> Result<EximBin> {
    static BIN: OnceLock<Result<EximBin, String>> = OnceLock::new();
    BIN.get_or_init(|| prepare(&cache_dir()).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn prepare(cache: &Path) -> Result<EximBin> {
    std::fs::create_dir_all(cache).with_context(|| format!("create {}", cache.display()))?;
    let lock = std::fs::File::create(cache.join("lock"))?;
    // SAFETY: flock(2) on a descriptor we own; released when `lock` closes.
    ensure!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } == 0,
        "lock {}",
        cache.display()
    );
    let root = cache.join("root");
    let bin = EximBin {
        exim: root.join("usr/sbin/exim4"),
        libs: [
            "usr/lib/x86_64-linux-gnu",
            "usr/lib",
            "lib/x86_64-linux-gnu",
        ]
        .iter()
        .map(|l| root.join(l).display().to_string())
        .collect::<Vec<_>>()
        .join(":"),
    };
    if cache.join("ready").exists() {
        return Ok(bin);
    }
    let mut wanted: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    let libs = match missing_libraries() {
        Ok(libs) => libs,
        // No package lists yet (a fresh machine): fetch them once.
        Err(_) => {
            apt_update()?;
            missing_libraries()?
        }
    };
    wanted.extend(libs);
    // A fresh download directory: no older version is unpacked over the
    // new one.
    let debs = cache.join("debs");
    let _ = std::fs::remove_dir_all(&debs);
    std::fs::create_dir_all(&debs)?;
    download(&debs, &wanted)?;
    let _ = std::fs::remove_dir_all(&root);
    for deb in std::fs::read_dir(&debs)?.flatten() {
        let path = deb.path();
        if path.extension().is_some_and(|e| e == "deb") {
            let out = Command::new("dpkg-deb")
                .arg("-x")
                .arg(&path)
                .arg(&root)
                .output()
                .context("run dpkg-deb (Debian package dpkg)")?;
            ensure!(
                out.status.success(),
                "dpkg-deb -x {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The binary is setuid root in the package; these tests run it as root
    // and want no setuid copy lying around.
    set_mode(&bin.exim, 0o755)?;
    let ldd = Command::new("ldd")
        .arg(&bin.exim)
        .env("LD_LIBRARY_PATH", &bin.libs)
        .output()
        .context("run ldd")?;
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    ensure!(
        !ldd.contains("not found"),
        "{} still misses libraries:\n{ldd}",
        bin.exim.display()
    );
    std::fs::write(cache.join("ready"), "")?;
    Ok(bin)
}

/// The library packages exim4-daemon-light depends on that are not
/// installed (libidn12 on a host with Postfix).
fn missing_libraries() -> Result<Vec<String>> {
    let out = Command::new("apt-cache")
        .args(["depends", "--no-recommends", "--no-suggests", PACKAGES[0]])
        .output()
        .context("run apt-cache")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let libs: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends: "))
        .filter(|p| p.starts_with("lib"))
        .map(str::to_string)
        .collect();
    ensure!(
        !libs.is_empty(),
        "apt-cache depends {} named no libraries (run apt-get update): {text}",
        PACKAGES[0]
    );
    Ok(libs.into_iter().filter(|p| !installed(p)).collect())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// `apt-get download PACKAGES` in `dir` (at most 120 s); once more after
/// `apt-get update` when the package lists are missing or stale.
fn download(dir: &Path, packages: &[String]) -> Result<()> {
    let fetch = || {
        Command::new("timeout")
            .args(["-k", "5", "120", "apt-get", "download", "-q"])
            .args(packages)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("run apt-get download")
    };
    let out = fetch()?;
    if out.status.success() {
        return Ok(());
    }
    apt_update()?;
    let again = fetch()?;
    ensure!(
        again.status.success(),
        "apt-get download {}: {}\n(first try: {})",
        packages.join(" "),
        String::from_utf8_lossy(&again.stderr),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `apt-get update` (at most 300 s).
fn apt_update() -> Result<()> {
    let out = Command::new("timeout")
        .args(["-k", "5", "300", "apt-get", "update", "-q"])
        .stdin(Stdio::null())
        .output()
        .context("run apt-get update")?;
    ensure!(
        out.status.success(),
        "apt-get update: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// One Exim's directory: configuration, spool, logs, `maildir/` (owned by
/// its user, for a delivering configuration), and the
/// passwd and group copies naming its user. Everything Exim reads after it
/// drops privileges (certificates, keys) must be put here with
/// [`Exim::install`]; `dir`'s parent must be traversable by others.
pub struct Exim {
    bin: EximBin,
    /// The directory.
    pub dir: PathBuf,
    /// The user id `Debian-exim` has here.
    pub uid: u32,
    /// The daemon's SMTP address (for [`Exim::serve`]).
    pub addr: Option<SocketAddr>,
    daemon: Option<Child>,
}

/// An id unused by /etc/passwd and /etc/group, for `Debian-exim`.
fn free_id() -> Result<u32> {
    let used = |file: &str| -> Result<Vec<u32>> {
        Ok(std::fs::read_to_string(file)?
            .lines()
            .filter_map(|l| l.split(':').nth(2)?.parse().ok())
            .collect())
    };
    let (users, groups) = (used("/etc/passwd")?, used("/etc/group")?);
    (64900..65000)
        .find(|id| !users.contains(id) && !groups.contains(id))
        .ok_or_else(|| anyhow!("no free id in 64900..65000"))
}

impl Exim {
    /// Prepares `dir` (created) for an Exim of the test's.
    pub fn new(dir: &Path) -> Result<Exim> {
        let bin = exim_bin()?;
        let uid = free_id()?;
        for d in [
            dir.to_path_buf(),
            dir.join("spool"),
            dir.join("log"),
            dir.join("maildir"),
        ] {
            std::fs::create_dir_all(&d)?;
        }
        set_mode(dir, 0o755)?;
        for d in ["spool", "log", "maildir"] {
            std::os::unix::fs::chown(dir.join(d), Some(uid), Some(uid))?;
            set_mode(&dir.join(d), 0o750)?;
        }
        let mut passwd = std::fs::read_to_string("/etc/passwd")?;
        passwd.push_str(&format!(
            "Debian-exim:x:{uid}:{uid}:Exim of a test:/nonexistent:/usr/sbin/nologin\n"
        ));
        let mut group = std::fs::read_to_string("/etc/group")?;
        group.push_str(&format!("Debian-exim:x:{uid}:\n"));
        std::fs::write(dir.join("passwd"), passwd)?;
        std::fs::write(dir.join("group"), group)?;
        Ok(Exim {
            bin,
            dir: dir.to_path_buf(),
            uid,
            addr: None,
            daemon: None,
        })
    }

    /// Copies `src` into the directory as `name`, readable by Exim's user
    /// only; returns the new path.
    pub fn install(&self, src: &Path, name: &str) -> Result<PathBuf> {
        let dst = self.dir.join(name);
        std::fs::copy(src, &dst).with_context(|| format!("copy {}", src.display()))?;
        std::os::unix::fs::chown(&dst, Some(self.uid), Some(self.uid))?;
        set_mode(&dst, 0o600)?;
        Ok(dst)
    }

    /// The lines every configuration starts with: the binary to re-exec
    /// (and the library path it needs, the only environment kept), the
    /// directories, the TLS details in the log.
    pub fn base_config(&self, hostname: &str) -> String {
        let d = self.dir.display();
        format!(
            "primary_hostname = {hostname}\n\
             exim_path = {exim}\n\
             spool_directory = {d}/spool\n\
             log_file_path = {d}/log/%slog\n\
             pid_file_path = {d}/exim.pid\n\
             keep_environment = LD_LIBRARY_PATH\n\
             log_selector = +tls_peerdn +tls_certificate_verified +tls_cipher \
             +received_recipients +smtp_protocol_error +smtp_syntax_error\n",
            exim = self.bin.exim.display(),
        )
    }

    /// Writes the configuration file `name`; returns its path.
    pub fn write_config(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, text)?;
        set_mode(&path, 0o644)?;
        Ok(path)
    }

    /// `exim4 -C CONF ARGS` in its mount namespace, limited to `secs`.
    fn command(&self, conf: &Path, args: &[&str], secs: u32) -> Command {
        let mut c = Command::new("timeout");
        c.args(["-k", "5", &secs.to_string()])
            .args(["unshare", "--mount", "--propagation", "private", "--"])
            .args(["sh", "-c"])
            .arg(
                "mount --bind \"$1\" /etc/passwd && mount --bind \"$2\" /etc/group \
                 && shift 2 && exec \"$@\"",
            )
            .arg("sh")
            .arg(self.dir.join("passwd"))
            .arg(self.dir.join("group"))
            .arg(&self.bin.exim)
            .arg("-C")
            .arg(conf)
            .args(args)
            .env("LD_LIBRARY_PATH", &self.bin.libs)
            .stdin(Stdio::null());
        c
    }

    /// Submits `message` from `from` to `rcpt` and delivers it in the
    /// foreground (`-odf`, at most 60 s): what Exim said and its exit
    /// status; what the delivery did is in [`Exim::main_log`].
    pub fn send(&self, conf: &Path, from: &str, rcpt: &str, message: &str) -> Result<Tool> {
        use std::io::Write;
        let mut child = self
            .command(conf, &["-odf", "-f", from, "--", rcpt], 60)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run exim4")?;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(message.as_bytes())?;
        drop(stdin);
        let out = child.wait_with_output()?;
        Ok(Tool {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Starts the daemon (`-bdf`, at most 300 s) on `addr` with the
    /// configuration `conf` (which must listen there) and waits for its
    /// banner.
    pub fn serve(&mut self, conf: &Path, addr: SocketAddr) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("daemon.out"))?;
        let port = addr.port().to_string();
        let child = self
            .command(conf, &["-bdf", "-oX", &port], 300)
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("run exim4 -bdf")?;
        self.daemon = Some(child);
        self.addr = Some(addr);
        wait_banner(addr).with_context(|| {
            format!(
                "Exim's daemon\n{}\n{}",
                std::fs::read_to_string(self.dir.join("daemon.out")).unwrap_or_default(),
                self.main_log()
            )
        })
    }

    /// The main log so far (plus the panic log, if any).
    pub fn main_log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join("log").join(f));
        let mut text = read("mainlog").unwrap_or_default();
        if let Ok(panic) = read("paniclog") {
            text.push_str("\n--- paniclog ---\n");
            text.push_str(&panic);
        }
        text
    }

    /// The messages in `maildir/new` (delivered by a configuration that
    /// names it), oldest first.
    pub fn maildir(&self) -> Vec<String> {
        let new = self.dir.join("maildir/new");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&new)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .collect()
    }

    /// Waits (at most `secs`) until `maildir/new` holds `n` messages.
    pub fn wait_maildir(&self, n: usize, secs: u64) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let m = self.maildir();
            if m.len() >= n || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Exim {
    fn drop(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        let group = child.id() as i32;
        // SAFETY: kill(2) on the process group we started (timeout, the
        // daemon and the processes it forked).
        unsafe { libc::kill(-group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; whatever is left of the group.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = child.wait();
    }
}
