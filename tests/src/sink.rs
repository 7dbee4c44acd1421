//! Postfix's smtp-sink as a next hop: each message dumped to its own file
//! (with the envelope as X-Mail-Args and X-Rcpt-Args header lines); killed on
//! drop.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ports::free_port;
use crate::smtp::wait_for;

/// A running smtp-sink.
pub struct Sink {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Sink {
    /// On a free port of 127.0.0.1, with smtp-sink's `options`.
    pub fn start(options: &[&str]) -> Sink {
        Sink::start_at(
            SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())),
            options,
        )
    }

    /// On `addr`.
    pub fn start_at(addr: SocketAddr, options: &[&str]) -> Sink {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("/usr/sbin/smtp-sink");
        if crate::is_root() {
            cmd.args(["-u", "root"]);
        }
        cmd.arg("-d")
            .arg(format!("{}/msg.", dir.path().display()))
            .args(options)
            .arg(addr.to_string())
            .arg("10")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn smtp-sink");
        let sink = Sink { child, dir, addr };
        wait_for(&format!("smtp-sink on {addr}"), 10, || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .map_err(|e| e.to_string())?;
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"QUIT\r\n");
            let _ = s.read_to_end(&mut Vec::new());
            Ok(())
        });
        sink
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its address as a smart host.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    fn paths(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("dump dir")
            .filter_map(|e| Some(e.ok()?.path()))
            .collect();
        v.sort();
        v
    }

    /// The dumps so far.
    pub fn dumps(&self) -> Vec<String> {
        self.paths()
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect()
    }

    /// Waits (at most `secs`) for `n` dumps, then for their number to stay
    /// the same for half a second (a late duplicate would show); the dumps.
    pub fn wait(&self, n: usize, secs: u64) -> Vec<String> {
        wait_for(&format!("{n} message(s) at {}", self.addr), secs, || {
            let d = self.dumps();
            if d.len() >= n {
                Ok(())
            } else {
                Err(format!("{} so far: {d:#?}", d.len()))
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        self.dumps()
    }

    /// The dumps, once their number has been stable for a moment (at most
    /// 3 s).
    pub fn messages(&self) -> Vec<String> {
        let mut last = self.paths();
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.paths();
            let stable = now == last;
            last = now;
            if stable || std::time::Instant::now() > deadline {
                break;
            }
        }
        last.iter()
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).expect("dump file")).into_owned())
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The envelope header lines smtp-sink puts at the top of a dump: the
/// sender and the recipients, in angle brackets.
pub fn envelope(dump: &str) -> (String, Vec<String>) {
    let mut from = String::new();
    let mut rcpts = Vec::new();
    for line in dump.lines() {
        if let Some(v) = line.strip_prefix("X-Mail-Args: ") {
            from = v.split_whitespace().next().unwrap_or("").to_string();
        } else if let Some(v) = line.strip_prefix("X-Rcpt-Args: ") {
            rcpts.push(v.split_whitespace().next().unwrap_or("").to_string());
        } else if line.is_empty() {
            break;
        }
    }
    (from, rcpts)
}
