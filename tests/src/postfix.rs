//! A private Postfix instance as a test's or the lab's peer: its own
//! configuration, queue and data directories, smtpd where it is told; and a
//! ready-made mail server (virtual mailboxes in a Maildir, TLS, optionally
//! requiring a client certificate) whose mail a test reads back.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::bench::{set_mode, user_ids, wait_banner};
use crate::ports::free_port;

/// A private Postfix instance: its own configuration, queue and data
/// directories, smtpd on a loopback port. Stopped on drop (its directory goes
/// with the bench's).
pub struct Postfix {
    pub conf: PathBuf,
    pub queue: PathBuf,
    pub addr: SocketAddr,
    pub log: PathBuf,
    master_pid: Option<u32>,
}

/// Where a private Postfix instance keeps things, for its main.cf.
pub struct PostfixDirs<'a> {
    pub queue: &'a Path,
    pub data: &'a Path,
    pub log: &'a Path,
}

impl Postfix {
    /// Starts an instance in `dir` with the main.cf that `main_cf` writes and
    /// a master.cf of smtpd on a free loopback port followed by `services`.
    pub fn start(
        dir: &Path,
        main_cf: impl FnOnce(&PostfixDirs) -> String,
        services: &str,
    ) -> Result<Postfix> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Postfix::start_at(dir, addr, main_cf, services)
    }

    /// As [`Postfix::start`], smtpd on `addr` (in the caller's network
    /// namespace: call it from [`crate::netns::Netns::within`] to serve
    /// inside one).
    pub fn start_at(
        dir: &Path,
        addr: SocketAddr,
        main_cf: impl FnOnce(&PostfixDirs) -> String,
        services: &str,
    ) -> Result<Postfix> {
        let conf = dir.join("conf");
        let queue = dir.join("queue");
        let data = dir.join("data");
        for d in [dir, &conf, &queue, &data] {
            std::fs::create_dir_all(d)?;
            set_mode(d, 0o755)?;
        }
        let (uid, gid) = user_ids("postfix")?;
        std::os::unix::fs::chown(&data, Some(uid), Some(gid)).context("chown data_directory")?;
        let log = dir.join("maillog");
        let main_cf = main_cf(&PostfixDirs {
            queue: &queue,
            data: &data,
            log: &log,
        });
        let master_cf = format!("{addr} inet n - n - - smtpd\n{services}");
        std::fs::write(conf.join("main.cf"), main_cf)?;
        std::fs::write(conf.join("master.cf"), master_cf)?;
        let mut p = Postfix {
            conf,
            queue,
            addr,
            log,
            master_pid: None,
        };
        p.postfix("check")?;
        p.postfix("start")?;
        p.master_pid = std::fs::read_to_string(p.queue.join("pid/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        wait_banner(p.addr).with_context(|| format!("Postfix's smtpd\n{}", p.log_text()))?;
        Ok(p)
    }

    fn postfix(&self, cmd: &str) -> Result<()> {
        let out = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg(cmd)
            .env("MAIL_CONFIG", &self.conf)
            .stdin(Stdio::null())
            .output()
            .context("run postfix")?;
        ensure!(
            out.status.success(),
            "postfix -c {} {cmd}: {}\n{}{}",
            self.conf.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        Ok(())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = self.postfix("stop");
        let Some(pid) = self.master_pid else { return };
        let alive = || Path::new(&format!("/proc/{pid}")).exists();
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive() {
            let _ = self.postfix("abort");
            std::thread::sleep(Duration::from_millis(500));
        }
        if alive() {
            // SAFETY: kill(2) on the master we started (its children follow).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// What a mail server made by [`mail_server`] does.
pub struct MailServer<'a> {
    /// Its name (`myhostname`, the banner).
    pub hostname: &'a str,
    /// The domains it keeps mail for (every recipient of them goes to one
    /// mailbox).
    pub domains: &'a [&'a str],
    /// Its certificate chain and key (PEM files).
    pub cert: (&'a Path, &'a Path),
    /// CA file for client certificates.
    pub client_ca: &'a Path,
    /// Refuse clients without a certificate that chains to `client_ca`
    /// (as a certificate-based connector of Microsoft 365 does).
    pub require_client_cert: bool,
    /// Clients that may send without TLS (`mynetworks`).
    pub networks: &'a str,
}

/// The services every private Postfix runs (master.cf lines).
macro_rules! common_services {
    () => {
        "cleanup   unix  n - n -     0 cleanup\n\
    qmgr      unix  n - n 300   1 qmgr\n\
    tlsmgr    unix  - - n 1000? 1 tlsmgr\n\
    rewrite   unix  - - n -     - trivial-rewrite\n\
    bounce    unix  - - n -     0 bounce\n\
    defer     unix  - - n -     0 bounce\n\
    trace     unix  - - n -     0 bounce\n\
    verify    unix  - - n -     1 verify\n\
    flush     unix  n - n 1000? 0 flush\n\
    proxymap  unix  - - n -     - proxymap\n\
    showq     unix  n - n -     - showq\n\
    error     unix  - - n -     - error\n\
    retry     unix  - - n -     - error\n\
    discard   unix  - - n -     - discard\n\
    anvil     unix  - - n -     1 anvil\n\
    scache    unix  - - n -     1 scache\n\
    postlog   unix-dgram n - n - 1 postlogd\n"
    };
}

/// The services of a Postfix that receives and delivers locally.
const MAIL_SERVICES: &str = concat!(
    common_services!(),
    "virtual   unix  - n n -     - virtual\n"
);

/// Starts a mail server on `addr` in `dir`: TLS offered (or a verified
/// client certificate required), every recipient of `domains` delivered to
/// the Maildir [`mailbox`] reads.
pub fn mail_server(dir: &Path, addr: SocketAddr, s: &MailServer<'_>) -> Result<Postfix> {
    let (uid, gid) = user_ids("postfix")?;
    let boxes = dir.join("mail");
    std::fs::create_dir_all(&boxes)?;
    std::os::unix::fs::chown(&boxes, Some(uid), Some(gid)).context("chown the mailboxes")?;
    let tls = if s.require_client_cert {
        "smtpd_tls_security_level = encrypt\nsmtpd_tls_ask_ccert = yes\nsmtpd_tls_req_ccert = yes\n"
    } else {
        "smtpd_tls_security_level = may\nsmtpd_tls_ask_ccert = yes\n"
    };
    let main_cf = |d: &PostfixDirs| {
        format!(
            r#"# Private instance (a test's or the lab's peer); not the system's.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = {host}
myorigin = $myhostname
inet_interfaces = {ip}
inet_protocols = {proto}
mynetworks = {networks}
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtpd_relay_restrictions = permit_mynetworks, permit_tls_all_clientcerts, reject_unauth_destination
virtual_mailbox_domains = {domains}
virtual_mailbox_base = {boxes}
virtual_mailbox_maps = static:inbox/
virtual_minimum_uid = 1
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
{tls}smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_CAfile = {ca}
smtpd_tls_received_header = yes
smtpd_tls_loglevel = 1
maillog_file = {log}
maillog_file_prefixes = {dir}
"#,
            queue = d.queue.display(),
            data = d.data.display(),
            host = s.hostname,
            ip = addr.ip(),
            proto = if addr.is_ipv4() { "ipv4" } else { "ipv6" },
            networks = s.networks,
            domains = s.domains.join(", "),
            boxes = boxes.display(),
            cert = s.cert.0.display(),
            key = s.cert.1.display(),
            ca = s.client_ca.display(),
            log = d.log.display(),
            dir = dir.display(),
        )
    };
    Postfix::start_at(dir, addr, main_cf, MAIL_SERVICES)
}

/// The messages in the mailbox of a server made by [`mail_server`] in
/// `dir`, oldest first.
pub fn mailbox(dir: &Path) -> Vec<String> {
    let new = dir.join("mail/inbox/new");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&new)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .collect()
}

/// Waits (at most `secs`) until the mailbox in `dir` holds `n` messages.
pub fn wait_mailbox(dir: &Path, n: usize, secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let m = mailbox(dir);
        if m.len() >= n || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Postfix {
    /// Changes main.cf settings (`name = value` each) with `postconf -e`
    /// and reloads; returns once the master logged the reload (at most
    /// 10 s), so the next connection gets the new settings.
    pub fn configure(&self, settings: &[&str]) -> Result<()> {
        let out = Command::new("postconf")
            .arg("-c")
            .arg(&self.conf)
            .arg("-e")
            .args(settings)
            .stdin(Stdio::null())
            .output()
            .context("run postconf")?;
        ensure!(
            out.status.success(),
            "postconf -e {settings:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reloads = || self.log_text().matches("reload -- version").count();
        let before = reloads();
        self.postfix("reload")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while reloads() == before {
            ensure!(
                Instant::now() < deadline,
                "no reload logged\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

/// One route of a [`relay_client`]: mail for `rcpt` goes to `next_hop`
/// over mandatory TLS limited to `protocols`, presenting the key and chain.
pub struct ClientRoute<'a> {
    /// The recipient address (the transport map's key).
    pub rcpt: &'a str,
    /// The next hop (smtp-edge).
    pub next_hop: SocketAddr,
    /// The private key (PEM).
    pub key: &'a Path,
    /// The leaf followed by whatever else the file holds, sent as it is.
    pub chain: &'a Path,
    /// `smtp_tls_protocols` (and the mandatory ones), e.g. `>=TLSv1.3`.
    pub protocols: &'a str,
}

/// The services of a Postfix that relays what its smtpd receives.
const RELAY_SERVICES: &str = concat!(common_services!(), "smtp      unix  - - n -     - smtp\n");

/// Starts a Postfix in `dir` as a sending MTA: its smtpd (on 127.0.0.1,
/// [`Postfix::addr`]) takes mail from loopback, and each route's recipient
/// goes out through a transport of its own (`smtp_tls_chain_files`, the
/// protocols; mandatory TLS, no connection cache). Its log says what each
/// delivery did (`status=sent`, the TLS line).
pub fn relay_client(dir: &Path, hostname: &str, routes: &[ClientRoute<'_>]) -> Result<Postfix> {
    std::fs::create_dir_all(dir)?;
    let mut services = RELAY_SERVICES.to_string();
    let mut transport = String::new();
    for (i, r) in routes.iter().enumerate() {
        services.push_str(&format!(
            "route{i} unix - - n - - smtp\n  -o smtp_tls_chain_files={},{}\n  \
             -o smtp_tls_protocols={p}\n  -o smtp_tls_mandatory_protocols={p}\n",
            r.key.display(),
            r.chain.display(),
            p = r.protocols,
        ));
        transport.push_str(&format!(
            "{} route{i}:[{}]:{}\n",
            r.rcpt,
            r.next_hop.ip(),
            r.next_hop.port()
        ));
    }
    let transport_file = dir.join("transport");
    std::fs::write(&transport_file, transport)?;
    let main_cf = |d: &PostfixDirs| {
        format!(
            r#"# Private instance (a test's sending MTA); not the system's.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtpd_relay_restrictions = permit_mynetworks, reject
transport_maps = texthash:{transport}
smtp_tls_security_level = encrypt
smtp_tls_loglevel = 1
smtp_connection_cache_on_demand = no
maillog_file = {log}
maillog_file_prefixes = {dir}
"#,
            queue = d.queue.display(),
            data = d.data.display(),
            transport = transport_file.display(),
            log = d.log.display(),
            dir = dir.display(),
        )
    };
    Postfix::start(dir, main_cf, &services)
}
