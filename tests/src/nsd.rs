//! NSD, a real authoritative name server, on 127.0.0.1 serving one private
//! zone `test.` given by the caller. Resolvers pointed at it ask nothing
//! else, so no query leaves the machine. Every wait is bounded (5 s).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smtp_edge::config::dns::Dns;
use smtp_edge::resolve::Resolver;

use crate::ports::free_port_udp_tcp;

/// A DNS query for `test. SOA`, id 0x5eed.
const PROBE: &[u8] = &[
    0x5e, 0xed, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4, b't', b'e', b's', b't', 0, 0, 6, 0, 1,
];

/// NSD in the foreground in its own process group, stopped on drop.
pub struct Nsd {
    child: Child,
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nsd {
    /// Starts NSD serving `zone` (a zone file with `$ORIGIN test.`); panics
    /// when it does not answer after three tries.
    pub fn start(zone: &str) -> Nsd {
        let mut last = String::new();
        for _ in 0..3 {
            match Nsd::try_start(zone) {
                Ok(nsd) => return nsd,
                Err(e) => last = e,
            }
        }
        panic!("NSD did not start: {last}");
    }

    fn try_start(zone: &str) -> Result<Nsd, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let port = free_port_udp_tcp();
        std::fs::write(d.join("test.zone"), zone).expect("write zone");
        std::fs::write(d.join("nsd.conf"), nsd_conf(d, port)).expect("write nsd.conf");
        let log = std::fs::File::create(d.join("nsd.log")).expect("create nsd.log");
        let mut child = Command::new("/usr/sbin/nsd")
            .arg("-c")
            .arg(d.join("nsd.conf"))
            .arg("-d")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn /usr/sbin/nsd (apt-get install nsd)");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind probe socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 512];
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(d.join("nsd.log")).unwrap_or_default();
                return Err(format!("nsd exited ({status}): {log}"));
            }
            if Instant::now() > deadline {
                let nsd = Nsd {
                    child,
                    addr,
                    _dir: dir,
                };
                drop(nsd);
                return Err("no answer within 5 s".into());
            }
            let _ = sock.send_to(PROBE, addr);
            if let Ok((n, from)) = sock.recv_from(&mut buf)
                && from == addr
                && n >= 12
                && buf[..2] == PROBE[..2]
            {
                return Ok(Nsd {
                    child,
                    addr,
                    _dir: dir,
                });
            }
        }
    }

    /// A resolver asking only this server, with a 1 s timeout.
    pub fn resolver(&self) -> Resolver {
        Resolver::new(&Dns {
            nameservers: vec![self.addr.to_string()],
            timeout_seconds: 1,
        })
        .expect("resolver")
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        // SAFETY: signals the process group of the child started above.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn nsd_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"server:
    ip-address: 127.0.0.1@{port}
    port: {port}
    do-ip4: yes
    do-ip6: no
    username: ""
    chroot: ""
    zonesdir: "{d}"
    database: ""
    zonelistfile: "{d}/zone.list"
    pidfile: "{d}/nsd.pid"
    xfrdfile: "{d}/xfrd.state"
    xfrdir: "{d}"
    server-count: 1
    verbosity: 1
remote-control:
    control-enable: no
zone:
    name: "test."
    zonefile: "test.zone"
"#
    )
}
