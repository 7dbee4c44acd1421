//! Shared pieces of the Postfix comparison benchmarks
//! (`smtp-edge-bench-smtp-in`, `smtp-edge-bench-relay`): Ctrl-C handling, the
//! test certificates, the tokio/rustls SMTP load client's building blocks, a
//! private Postfix instance, and small process and statistics helpers.
//!
//! Traffic is loopback only.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The longest wait for one reply.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Failed connections after which a run gives up.
pub const MAX_FAILURES: u64 = 50;

// ---- Ctrl-C ----------------------------------------------------------------

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM end the current run and then clean up (the private
/// Postfix is daemonized outside our process group).
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// True once Ctrl-C or SIGTERM arrived.
pub fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// An error once Ctrl-C or SIGTERM arrived.
pub fn interrupted() -> Result<()> {
    if stopped() {
        bail!("interrupted");
    }
    Ok(())
}

// ---- helpers ---------------------------------------------------------------

pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Writes dirty pages out, so a run does not pay for the previous one's;
/// then waits `pause_ms`.
pub fn settle(pause_ms: u64) {
    // SAFETY: no preconditions.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(pause_ms));
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Raises RLIMIT_NOFILE (soft, and hard when needed) to at least `want`
/// descriptors; the daemons started later inherit it.
pub fn raise_nofile(want: u64) -> Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0,
            "getrlimit"
        );
        if r.rlim_cur >= want {
            return Ok(r.rlim_cur);
        }
        r.rlim_max = r.rlim_max.max(want);
        r.rlim_cur = want;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
            bail!(
                "cannot raise RLIMIT_NOFILE to {want}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(want)
}

pub fn postfix_version() -> String {
    Command::new("postconf")
        .args(["-d", "-h", "mail_version"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "?".into())
}

pub fn user_ids(name: &str) -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == name)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .ok_or_else(|| anyhow!("no user {name} (Debian package postfix)"))
}

/// Waits (at most 20 s) until `addr` greets with 220.
pub fn wait_banner(addr: SocketAddr) -> Result<()> {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        interrupted()?;
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut b = [0u8; 512];
            if let Ok(n) = s.read(&mut b)
                && b[..n].starts_with(b"220")
            {
                return Ok(());
            }
        }
        ensure!(Instant::now() < deadline, "no 220 banner on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A message of `size` octets (headers included), CRLF line ends, ending with
/// the terminating dot line; no line starts with a dot. `message_id` is the
/// Message-ID without its angle brackets.
pub fn message(size: usize, from: &str, to: &str, subject: &str, message_id: &str) -> Vec<u8> {
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\
         Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{message_id}>\r\n\r\n"
    )
    .into_bytes();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd";
    while m.len() + line.len() + 2 <= size {
        m.extend_from_slice(line);
        m.extend_from_slice(b"\r\n");
    }
    while m.len() + 2 < size {
        m.push(b'x');
    }
    m.extend_from_slice(b"\r\n.\r\n");
    m
}

// ---- certificates ----------------------------------------------------------

pub struct Certs {
    /// Leaf then CA, PEM.
    pub chain: PathBuf,
    pub key: PathBuf,
    pub leaf_der: CertificateDer<'static>,
    /// The leaf's key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    pub ca: CertificateDer<'static>,
}

/// A CA and a server certificate (ECDSA P-256) for `names` (the first is also
/// its common name), written as `server.pem` (chain) and `server.key` in `dir`.
pub fn certificates(dir: &Path, names: &[&str]) -> Result<Certs> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "smtp-edge bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let mut leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or_default(),
    );
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &ca)?;
    let chain = dir.join("server.pem");
    let key_path = dir.join("server.key");
    std::fs::write(&chain, format!("{}{}", cert.pem(), ca.pem()))?;
    std::fs::write(&key_path, key.serialize_pem())?;
    set_mode(&key_path, 0o600)?;
    Ok(Certs {
        chain,
        key: key_path,
        leaf_der: cert.der().clone(),
        key_der: key.serialize_der(),
        ca: ca.der().clone(),
    })
}

/// The client's TLS: trusts the bench CA, no session resumption (every
/// connection does a full handshake, on every server).
pub fn client_config(ca: &CertificateDer<'static>) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(c)))
}

// ---- the load client -------------------------------------------------------

/// An SMTP client connection: replies are read line by line.
pub struct Client<S> {
    pub s: S,
    pub buf: Vec<u8>,
}

impl Client<TcpStream> {
    /// Connects to `addr` (TCP_NODELAY when `nodelay`), reads the banner and
    /// sends `EHLO ehlo`.
    pub async fn connect(addr: SocketAddr, ehlo: &str, nodelay: bool) -> Result<Self> {
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect timeout"))??;
        if nodelay {
            tcp.set_nodelay(true)?;
        }
        let mut c = Client::new(tcp);
        c.expect(220).await?;
        c.send(format!("EHLO {ehlo}\r\n").as_bytes()).await?;
        c.expect(250).await?;
        Ok(c)
    }

    /// STARTTLS, the handshake (checking `server_name`), then `EHLO ehlo`
    /// again.
    pub async fn starttls(
        mut self,
        tls: &TlsConnector,
        server_name: &str,
        ehlo: &str,
    ) -> Result<Client<tokio_rustls::client::TlsStream<TcpStream>>> {
        self.send(b"STARTTLS\r\n").await?;
        self.expect(220).await?;
        ensure!(self.buf.is_empty(), "data after the STARTTLS reply");
        let name = ServerName::try_from(server_name.to_string())?;
        let s = tokio::time::timeout(IO_TIMEOUT, tls.connect(name, self.s))
            .await
            .map_err(|_| anyhow!("TLS handshake timeout"))?
            .context("TLS handshake")?;
        let mut c = Client::new(s);
        c.send(format!("EHLO {ehlo}\r\n").as_bytes()).await?;
        c.expect(250).await?;
        Ok(c)
    }
}

impl Client<tokio_rustls::client::TlsStream<TcpStream>> {
    /// "PROTOCOL CIPHER_SUITE" of the session.
    pub fn cipher(&self) -> Result<String> {
        let (_, conn) = self.s.get_ref();
        Ok(format!(
            "{:?} {:?}",
            conn.protocol_version()
                .ok_or_else(|| anyhow!("no TLS version"))?,
            conn.negotiated_cipher_suite()
                .ok_or_else(|| anyhow!("no cipher"))?
                .suite()
        ))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(s: S) -> Self {
        Client {
            s,
            buf: Vec::with_capacity(1024),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        tokio::time::timeout(IO_TIMEOUT, async {
            self.s.write_all(bytes).await?;
            self.s.flush().await
        })
        .await
        .map_err(|_| anyhow!("write timeout"))?
        .context("write")
    }

    async fn line(&mut self) -> Result<String> {
        loop {
            if let Some(p) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=p).collect();
                return Ok(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            ensure!(self.buf.len() < 64 * 1024, "reply line too long");
            let mut tmp = [0u8; 4096];
            let n = tokio::time::timeout(IO_TIMEOUT, self.s.read(&mut tmp))
                .await
                .map_err(|_| anyhow!("read timeout"))?
                .context("read")?;
            ensure!(n > 0, "connection closed by the server");
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Reads one (possibly multi-line) reply and checks its code.
    pub async fn expect(&mut self, code: u16) -> Result<()> {
        let mut text = String::new();
        loop {
            let line = self.line().await?;
            let got: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| anyhow!("not a reply: {line:?}"))?;
            let last = line.as_bytes().get(3) != Some(&b'-');
            text.push_str(&line);
            text.push('\n');
            if last {
                ensure!(got == code, "expected {code}, got: {}", text.trim_end());
                return Ok(());
            }
        }
    }
}

/// What a load run's sessions count together.
#[derive(Default)]
pub struct Tally {
    pub accepted: AtomicU64,
    pub failures: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    pub cipher: Mutex<Option<String>>,
}

/// The result of a load run.
#[derive(Default)]
pub struct Outcome {
    pub accepted: u64,
    pub failures: u64,
    pub secs: f64,
    pub first_error: Option<String>,
    pub cipher: Option<String>,
}

impl Tally {
    /// Counts a failed connection (keeping the first error); true once
    /// MAX_FAILURES is reached and the run should give up.
    pub fn fail(&self, e: &anyhow::Error) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| format!("{e:#}"));
        n >= MAX_FAILURES
    }

    /// Notes the first TLS session's cipher.
    pub fn note_cipher(
        &self,
        c: &Client<tokio_rustls::client::TlsStream<TcpStream>>,
    ) -> Result<()> {
        if self
            .cipher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            let desc = c.cipher()?;
            *self.cipher.lock().unwrap_or_else(|p| p.into_inner()) = Some(desc);
        }
        Ok(())
    }

    /// The outcome of a run that took `secs`.
    pub fn outcome(&self, secs: f64) -> Outcome {
        let first_error = self
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let cipher = self.cipher.lock().unwrap_or_else(|p| p.into_inner()).take();
        Outcome {
            accepted: self.accepted.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            secs,
            first_error,
            cipher,
        }
    }
}

/// Runs `sessions` client tasks made by `session` and waits for them all
/// (each reply is bounded by IO_TIMEOUT and new messages stop at `max`; the
/// limit of `max` + 2 IO_TIMEOUT is the last resort); the seconds since
/// `start`.
pub async fn run_sessions<F, Fut>(
    start: Instant,
    sessions: usize,
    max: Duration,
    mut session: F,
) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..sessions {
        set.spawn(session());
    }
    let all = async {
        while let Some(r) = set.join_next().await {
            r.context("client task")?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(max + IO_TIMEOUT * 2, all)
        .await
        .map_err(|_| anyhow!("load run did not finish in time"))??;
    let secs = start.elapsed().as_secs_f64();
    interrupted()?;
    Ok(secs)
}

pub use crate::postfix::{Postfix, PostfixDirs};
