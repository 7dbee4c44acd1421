//! Network namespaces for tests, the lab and benchmarks: uniquely named,
//! deleted on drop (also when a test panics), joined by veth pairs.
//!
//! Sockets are opened from a short-lived thread that entered the namespace with
//! setns(2): a socket stays in the namespace it was created in, so the test
//! process itself talks real TCP across the veth without helper programs.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{run, run_ok, unique};

/// A network namespace, deleted (with its interfaces and processes) on drop.
pub struct Netns {
    /// Its name under /var/run/netns.
    pub name: String,
}

impl Netns {
    /// Creates `<tag><pid>x<n>` with loopback up.
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip netns exec NAME PROGRAM ...` as a Command to finish.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `ip ARGS` inside the namespace; must succeed.
    pub fn ip(&self, args: &[&str]) -> Output {
        run_ok(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// A shell command inside the namespace; must succeed.
    pub fn sh(&self, script: &str) -> Output {
        run_ok(self.cmd("sh").args(["-c", script]))
    }

    /// Runs `f` on a thread that joined this namespace.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a valid namespace fd; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }

    /// Binds a TCP listener inside the namespace.
    pub fn listen(&self, addr: SocketAddr) -> TcpListener {
        self.within(move || TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")))
    }

    /// Connects from `src` (bound, port 0) to `dst` inside the namespace and
    /// reads the first line the server sends. Err on timeout or refusal.
    pub fn connect_from(
        &self,
        src: IpAddr,
        dst: SocketAddr,
        timeout: Duration,
    ) -> std::io::Result<String> {
        self.within(move || {
            let domain = if dst.is_ipv4() {
                socket2::Domain::IPV4
            } else {
                socket2::Domain::IPV6
            };
            let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
            s.bind(&SocketAddr::new(src, 0).into())?;
            s.connect_timeout(&dst.into(), timeout)?;
            let mut stream: TcpStream = s.into();
            stream.set_read_timeout(Some(timeout))?;
            let mut buf = [0u8; 128];
            let n = stream.read(&mut buf)?;
            let _ = stream.write_all(b"QUIT\r\n");
            Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill what still runs inside, then delete (interfaces go with it).
        let pids = run(Command::new("ip").args(["netns", "pids", &self.name]));
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill(2) on a pid inside our own namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// Creates a veth pair with one end in each namespace, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    run_ok(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]));
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// Adds an address (CIDR) to an interface; IPv6 without duplicate detection so
/// it is usable at once.
pub fn add_addr(ns: &Netns, iface: &str, cidr: &str) {
    if cidr.contains(':') {
        ns.ip(&["-6", "addr", "add", cidr, "dev", iface, "nodad"]);
    } else {
        ns.ip(&["addr", "add", cidr, "dev", iface]);
    }
}

/// A listener that accepts connections and greets each with an SMTP banner,
/// counting them, until dropped.
pub struct Banner {
    /// Connections accepted.
    pub accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Banner {
    /// Serves on every listener given.
    pub fn serve(listeners: Vec<TcpListener>) -> Banner {
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for l in listeners {
            l.set_nonblocking(true).expect("nonblocking listener");
            let (accepted, stop) = (accepted.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            let _ = s.write_all(b"220 test.example ESMTP\r\n");
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
        }
        Banner {
            accepted,
            stop,
            threads,
        }
    }
}

impl Drop for Banner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
