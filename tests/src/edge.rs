//! smtp-edge with its receiving side (and, given outbound connectors, its
//! queue) on loopback, as a test's peer: its own directory, spool, control
//! socket, port and server certificate; killed on drop.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use smtp_edge::queue::spool::{Spooled, read_file};

use crate::Daemon;
use crate::ports::free_port_dual;
use crate::smtp::{Answer, Client, wait_for};

/// 127.0.0.1.
pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// ::1.
pub const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// What differs between the tests' daemons. Every string is TOML put into
/// the configuration as is.
pub struct Setup<'a> {
    /// Extra `[smtp]` keys.
    pub smtp: &'a str,
    /// The accepted domains (a TOML array's contents).
    pub accepted: &'a str,
    /// The `[[inbound_connectors]]` tables.
    pub connectors: &'a str,
    /// The `[[outbound_connectors]]` tables (none: no queue).
    pub outbound: &'a str,
    /// The `[queue]` keys.
    pub queue: &'a str,
    /// Further sections (`[dns]`).
    pub tail: &'a str,
    /// The daemon's umask (default: the test's).
    pub umask: Option<u32>,
    /// The spool on a tmpfs of this size in the daemon's own mount
    /// namespace (to fill it or make it read-only); files are read through
    /// `/proc/PID/root`. Gone with the daemon: no restarts.
    pub tmpfs_spool: Option<&'a str>,
}

/// One default connector: everyone, accepted domains only, no relay.
pub const INTERNET: &str = "[[inbound_connectors]]\nname = \"internet\"\n";

/// A connector for the test's clients on 127.0.0.1: they may send anywhere.
pub const LOOPBACK_RELAY: &str =
    "[[inbound_connectors]]\nname = \"loopback\"\nsources = [\"127.0.0.1\"]\nrelay = true\n";

/// An outbound connector table: `domains` through `hops` (smart hosts, in
/// order), opportunistic TLS unless `extra` says otherwise.
pub fn outbound(name: &str, domains: &[&str], hops: &[String], extra: &str) -> String {
    let list = |v: Vec<String>| v.join(", ");
    let tls = if extra.contains("tls =") {
        ""
    } else {
        "tls = \"opportunistic\"\n"
    };
    format!(
        "[[outbound_connectors]]\nname = \"{name}\"\nrecipient_domains = [{}]\nsmart_hosts = [{}]\n{tls}{extra}\n",
        list(domains.iter().map(|d| format!("\"{d}\"")).collect()),
        list(hops.iter().map(|h| format!("\"{h}\"")).collect()),
    )
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            smtp: "",
            accepted: "\"contoso.com\"",
            connectors: INTERNET,
            outbound: "",
            queue: "",
            tail: "",
            umask: None,
            tmpfs_spool: None,
        }
    }
}

/// A running daemon.
pub struct Edge {
    dir: tempfile::TempDir,
    /// The SMTP port (on 127.0.0.1 and ::1).
    pub port: u16,
    daemon: Daemon,
    starts: u32,
    tmpfs: bool,
}

impl Edge {
    /// Starts a daemon in a new temporary directory.
    pub fn start(setup: Setup<'_>) -> Edge {
        Edge::start_in(tempfile::tempdir().expect("tempdir"), setup)
    }

    /// Starts a daemon in `dir` (which may hold certificates the setup
    /// names).
    pub fn start_in(dir: tempfile::TempDir, setup: Setup<'_>) -> Edge {
        let d = dir.path().to_path_buf();
        let (cert, key) = crate::certs::self_signed(&d, "server", "edge.contoso.com");
        let port = free_port_dual();
        let config = format!(
            r#"[daemon]
state_dir = "{d}/state"
control_socket = "{d}/control.sock"

[filter]
enabled = false

[smtp]
enabled = true
listen = ["127.0.0.1:{port}", "[::1]:{port}"]
hostname = "edge.contoso.com"
accepted_domains = [{accepted}]
spool_dir = "{d}/spool"
{smtp}

[smtp.tls]
certificate = "{cert}"
key = "{key}"

{connectors}

{outbound}

[queue]
{queue}

{tail}
"#,
            d = d.display(),
            cert = cert.display(),
            key = key.display(),
            smtp = setup.smtp,
            accepted = setup.accepted,
            connectors = setup.connectors,
            outbound = setup.outbound,
            queue = setup.queue,
            tail = setup.tail,
        );
        std::fs::write(d.join("smtp-edge.toml"), config).expect("config");
        let spool = d.join("spool");
        let daemon = Daemon::launch(
            &crate::Launch {
                ns: None,
                umask: setup.umask,
                tmpfs: setup.tmpfs_spool.map(|size| (spool.as_path(), size)),
                ready_within: None,
            },
            &d.join("smtp-edge.toml"),
            &d.join("control.sock"),
            &d.join("daemon-1.log"),
        );
        let edge = Edge {
            dir,
            port,
            daemon,
            starts: 1,
            tmpfs: setup.tmpfs_spool.is_some(),
        };
        edge.wait_smtp();
        edge
    }

    /// Kills the daemon (if it still runs) and starts it again on the same
    /// configuration and spool.
    pub fn restart(&mut self) {
        assert!(!self.tmpfs, "a tmpfs spool does not survive a restart");
        self.daemon.kill9();
        self.starts += 1;
        let d = self.dir.path();
        self.daemon = Daemon::start(
            None,
            &d.join("smtp-edge.toml"),
            &d.join("control.sock"),
            &d.join(format!("daemon-{}.log", self.starts)),
        );
        self.wait_smtp();
    }

    /// The daemon process.
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    /// Waits until the SMTP listener answers (the control socket may come
    /// first).
    pub fn wait_smtp(&self) {
        let addr = self.addr(V4);
        wait_for("the SMTP listener", 10, || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .map_err(|e| format!("{e}\n{}", self.log()))?;
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"QUIT\r\n");
            let _ = s.read_to_end(&mut Vec::new());
            Ok(())
        });
    }

    /// The test's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("smtp-edge.toml")
    }

    /// `smtp-edge reload` against this daemon: Ok(what it said) when the
    /// reload was applied, Err(what it said) when it was refused.
    pub fn reload(&self) -> Result<String, String> {
        let config = self.config_path();
        let out = crate::cli(
            None,
            &["--config", config.to_str().expect("utf-8 path"), "reload"],
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// The SMTP address on `ip`.
    pub fn addr(&self, ip: IpAddr) -> SocketAddr {
        SocketAddr::new(ip, self.port)
    }

    /// `host:port` on `ip`.
    pub fn host_port(&self, ip: IpAddr) -> String {
        self.addr(ip).to_string()
    }

    /// A connection.
    pub fn connect(&self, ip: IpAddr) -> Client {
        Client::connect(self.addr(ip), None).expect("connect")
    }

    /// Connected and greeted with 220.
    pub fn greeted(&self, ip: IpAddr) -> Client {
        let mut c = self.connect(ip);
        let a = c.answer();
        assert_eq!(a.code, 220, "{a:?}");
        c
    }

    /// Greeted and after a successful EHLO.
    pub fn ehlo(&self, ip: IpAddr) -> Client {
        let mut c = self.greeted(ip);
        let a = c.cmd("EHLO client.fabrikam.com");
        assert_eq!(a.code, 250, "{a:?}");
        c
    }

    /// One message on a new connection (after EHLO); the reply to its end.
    pub fn send(&self, from: &str, rcpts: &[&str], msg: &str) -> Answer {
        let mut c = self.ehlo(V4);
        let a = c.transaction(from, rcpts, msg);
        let _ = c.try_send(b"QUIT\r\n");
        a
    }

    /// A spool subdirectory, as the daemon sees it.
    pub fn spool_dir(&self, sub: &str) -> PathBuf {
        let p = self.dir.path().join("spool").join(sub);
        match self.tmpfs {
            true => self.daemon.seen_path(&p),
            false => p,
        }
    }

    /// The file names in a spool subdirectory, sorted.
    pub fn files(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.spool_dir(sub))
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Ids of the complete messages.
    pub fn incoming(&self) -> Vec<String> {
        self.files("incoming")
    }

    /// A complete message.
    pub fn message(&self, id: &str) -> Spooled {
        read_file(&self.spool_dir("incoming").join(id))
            .unwrap_or_else(|e| panic!("message {id}: {e}\n{}", self.log()))
    }

    /// All daemon logs so far.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.path().join(format!("daemon-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// `smtp-edge --config F --json ARGS`: the JSON answer, or the error.
    pub fn cli(&self, args: &[&str]) -> Result<Value, String> {
        let config = self.config_path();
        let mut all = vec!["--config", config.to_str().expect("utf-8 path"), "--json"];
        all.extend_from_slice(args);
        let out = crate::cli(None, &all);
        if !out.status.success() {
            return Err(format!(
                "{args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// A queue command that may meet a delivery in flight (`Busy`): retried
    /// for at most 10 s.
    pub fn queue_cmd(&self, args: &[&str]) -> Value {
        let mut all = vec!["queue"];
        all.extend_from_slice(args);
        wait_for(&format!("queue {args:?}"), 10, || self.cli(&all))
    }

    /// `queue list --json`.
    pub fn queue(&self) -> Vec<Value> {
        self.queue_cmd(&["list"])
            .as_array()
            .cloned()
            .expect("queue list is an array")
    }

    /// The listed message with this id.
    pub fn queued(&self, id: &str) -> Option<Value> {
        self.queue().into_iter().find(|m| m["id"] == id)
    }

    /// Waits until the queue is empty.
    pub fn wait_queue_empty(&self, secs: u64) {
        wait_for("an empty queue", secs, || {
            let q = self.queue();
            if q.is_empty() {
                Ok(())
            } else {
                Err(format!("{q:#?}"))
            }
        });
    }
}

/// The `Received:` field the server added (first in the content) and the
/// message as the client sent it.
pub fn split_received(m: &Spooled) -> (String, Vec<u8>) {
    let c = &m.content;
    assert!(
        c.starts_with(b"Received: "),
        "{}",
        String::from_utf8_lossy(c)
    );
    let mut end = 0;
    loop {
        let nl = c[end..]
            .iter()
            .position(|&b| b == b'\n')
            .expect("header line end");
        end += nl + 1;
        if c.get(end) != Some(&b'\t') {
            break;
        }
    }
    (
        String::from_utf8_lossy(&c[..end]).into_owned(),
        c[end..].to_vec(),
    )
}

/// A spooled message's content as text.
pub fn text(m: &Spooled) -> String {
    String::from_utf8_lossy(&m.content).into_owned()
}
