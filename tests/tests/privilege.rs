//! Least privilege: the daemon as a user of its own with exactly CAP_BPF,
//! CAP_NET_ADMIN, CAP_NET_BIND_SERVICE and CAP_PERFMON (no CAP_SYS_ADMIN),
//! after `smtp-edge prepare` as the unit's ExecStartPre does,
//! on a bpffs mounted 0700 as systemd mounts it (a private one, in the
//! daemon's own mount namespace): it attaches the gate natively in a
//! namespace lab, pins, listens on port 25 and delivers; the gate drops a
//! source outside the allowlist; root's CLI still talks to it. Without
//! CAP_PERFMON the kernel refuses the program (its Spectre v1 mitigation
//! forbids pointer arithmetic with a register offset on packet pointers,
//! which parsing IPv4 options and IPv6 extension headers needs): the test
//! shows that too.
//!
//! Root-run code in the user's directories: `prepare` gives a tree away by
//! directory descriptor and leaves planted links, second names and
//! strangers' files alone (also while a swapper exchanges a directory and a
//! link under it), and root's CLI refuses a lock file that is a link.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use smtp_edge_tests::netns::{Netns, add_addr, veth};
use smtp_edge_tests::nexthop::{NextHop, Script};
use smtp_edge_tests::smtp::{Client, message, wait_for};
use smtp_edge_tests::{Daemon, smtp_edge_bin, without_proxy};

const UID: u32 = 64_942;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The capability sets of a process (`/proc/PID/status`: CapEff etc.).
fn caps(pid: u32, which: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{which}:\t")))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {which} in {status}"))
}

fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:\t"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("effective uid")
}

/// A lab, its configuration, and the command that starts the daemon with
/// capability set `set` (setpriv's syntax).
struct Lab {
    client: Netns,
    edge: Netns,
    hop: NextHop,
    dir: tempfile::TempDir,
    pin: String,
}

impl Lab {
    fn config(&self) -> std::path::PathBuf {
        self.dir.path().join("smtp-edge.toml")
    }

    fn command(&self, set: &str) -> Command {
        let script = format!(
            r#"set -e
mount -t bpf -o mode=0700 bpf /sys/fs/bpf
"$1" --config "$2" prepare --user {UID}:{UID} >&2
exec nsenter --net=/var/run/netns/{ns} -- setpriv --reuid {UID} --regid {UID} --clear-groups \
    --inh-caps {set} --ambient-caps {set} --bounding-set {set} --no-new-privs \
    "$1" --config "$2" run"#,
            ns = self.edge.name,
        );
        let mut cmd = Command::new("unshare");
        without_proxy(&mut cmd)
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(&script)
            .arg("sh")
            .arg(smtp_edge_bin())
            .arg(self.config())
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        cmd
    }
}

#[test]
fn without_cap_perfmon_the_kernel_refuses_the_gate() {
    let lab = lab();
    let log = lab.dir.path().join("daemon.log");
    let mut cmd = lab.command("-all,+bpf,+net_admin,+net_bind_service");
    let out = cmd
        .stderr(std::fs::File::create(&log).expect("log"))
        .status()
        .expect("run");
    assert!(!out.success());
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("pointer arithmetic with it prohibited for !root")
            && text.contains("CAP_PERFMON"),
        "{text}"
    );
}

fn lab() -> Lab {
    let client = Netns::new("pcl");
    let edge = Netns::new("ped");
    veth(&client, "c0", &edge, "e0");
    add_addr(&edge, "e0", "198.51.100.1/24");
    add_addr(&client, "c0", "198.51.100.10/24");
    add_addr(&client, "c0", "198.51.100.66/24");
    // The next hop, inside the edge's namespace.
    let hop = edge.within(|| NextHop::start(Script::default()));
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let d = d.as_path();
    // The user must reach its configuration (root's temp dir is 0700).
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = d.join("smtp-edge.toml");
    let pin = format!("/sys/fs/bpf/smtp-edge-priv-{}", std::process::id());
    std::fs::write(
        &config,
        format!(
            r#"[daemon]
state_dir = "{d}/smtp-edge-state"
control_socket = "{d}/smtp-edge-run/control.sock"

[filter]
interfaces = ["e0"]
xdp_mode = "native"
pin_dir = "{pin}"

[allowlist]
exchange_online = false

[[allowlist.entries]]
source = "198.51.100.10"
comment = "device"

[smtp]
enabled = true
listen = ["0.0.0.0:25"]
hostname = "edge.contoso.test"
accepted_domains = ["contoso.com"]
spool_dir = "{d}/smtp-edge-spool"

[[inbound_connectors]]
name = "devices"
sources = ["198.51.100.10"]
relay = true

[[outbound_connectors]]
name = "onward"
recipient_domains = ["*"]
smart_hosts = ["{hop}"]
tls = "none"

[ranges]
auto_update = false
"#,
            d = d.display(),
            hop = hop.host(),
        ),
    )
    .expect("config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    Lab {
        client,
        edge,
        hop,
        dir,
        pin,
    }
}

#[test]
fn the_daemon_runs_as_its_own_user_with_four_capabilities() {
    let lab = lab();
    let Lab {
        client,
        edge,
        hop,
        pin,
        ..
    } = &lab;
    let d = lab.dir.path();
    let config = lab.config();
    let socket = d.join("smtp-edge-run/control.sock");
    let log = d.join("daemon.log");
    let bin = smtp_edge_bin();
    let cmd = lab.command("-all,+bpf,+net_admin,+net_bind_service,+perfmon");
    let mut daemon = Daemon::spawn(cmd, &socket, &log, None);
    let pid = daemon.pid().expect("pid");
    // The shell exec'd nsenter, which exec'd setpriv, which exec'd the daemon.
    wait_for("the daemon's own identity", 10, || {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| e.to_string())?;
        (exe == bin)
            .then_some(())
            .ok_or(format!("{}", exe.display()))
    });
    assert_eq!(uid_of(pid), UID);
    let want = (1u64 << CAP_BPF)
        | (1u64 << CAP_PERFMON)
        | (1u64 << CAP_NET_ADMIN)
        | (1u64 << CAP_NET_BIND_SERVICE);
    assert_eq!(caps(pid, "CapEff"), want, "effective capabilities");
    assert_eq!(caps(pid, "CapBnd"), want, "bounding set");
    // The gate is attached natively and pinned, by the user.
    let link = edge.ip(&["link", "show", "e0"]);
    let shown = String::from_utf8_lossy(&link.stdout);
    assert!(shown.contains("xdp"), "{shown}\n{}", daemon.log_text());
    let pins = std::path::PathBuf::from(format!("/proc/{pid}/root{pin}"));
    let _ = edge;
    let entries: Vec<_> = std::fs::read_dir(&pins)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", pins.display(), daemon.log_text()))
        .filter_map(|e| e.ok())
        .collect();
    assert!(!entries.is_empty(), "nothing pinned");
    for e in &entries {
        assert_eq!(e.metadata().expect("pin").uid(), UID, "{:?}", e.path());
    }
    // Port 25, and a delivery onward.
    let dst = SocketAddr::new("198.51.100.1".parse().expect("ip"), 25);
    let reply = client.within(move || {
        let mut c = Client::connect(dst, Some("198.51.100.10".parse::<IpAddr>().expect("ip")))
            .expect("connect to port 25");
        c.answer();
        assert_eq!(c.cmd("EHLO scanner.contoso.com").code, 250);
        let a = c.transaction(
            "scanner@contoso.com",
            &["someone@example.net"],
            &message(
                "scanner@contoso.com",
                "someone@example.net",
                "from a device",
            ),
        );
        let _ = c.cmd("QUIT");
        a
    });
    assert_eq!(reply.code, 250, "{reply:?}\n{}", daemon.log_text());
    hop.wait_for("the relayed message", 20, |t| !t.is_empty());
    // A source outside the allowlist never gets a connection.
    let refused = client.within(move || {
        Client::connect(dst, Some("198.51.100.66".parse::<IpAddr>().expect("ip"))).is_err()
    });
    assert!(
        refused,
        "the gate let a source outside the allowlist through"
    );
    // Root's CLI talks to the user's daemon.
    let out = smtp_edge_tests::cli(
        None,
        &[
            "--config",
            config.to_str().expect("path"),
            "--json",
            "status",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(st["gate"]["interfaces"][0], "e0 (native)", "{st}");
    daemon.stop();
    // The state and spool are the user's, private.
    for sub in ["smtp-edge-state", "smtp-edge-spool"] {
        let m = std::fs::metadata(d.join(sub)).expect("dir");
        assert_eq!((m.uid(), m.mode() & 0o777), (UID, 0o700), "{sub}");
    }
}

/// The daemon's user in the state-tree tests (no process runs as it).
const OWNER: u32 = 64_943;

/// A state tree for `prepare` and root's CLI, with a root-owned directory
/// beside it (`outside`) that the daemon's user must never get.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(
            d.join("smtp-edge.toml"),
            format!(
                "[daemon]\nstate_dir = \"{d}/smtp-edge-state\"\ncontrol_socket = \"{d}/smtp-edge-run/control.sock\"\n\n\
                 [filter]\nenabled = false\n\n[ranges]\nauto_update = false\n",
                d = d.display()
            ),
        )
        .expect("config");
        std::fs::create_dir_all(d.join("outside")).expect("outside");
        std::fs::create_dir_all(d.join("smtp-edge-state")).expect("state");
        Tree { dir }
    }

    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("smtp-edge-state")
    }

    fn outside(&self) -> std::path::PathBuf {
        self.dir.path().join("outside")
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let config = self.dir.path().join("smtp-edge.toml");
        let mut all = vec!["--config", config.to_str().expect("path")];
        all.extend_from_slice(args);
        smtp_edge_tests::cli(None, &all)
    }

    fn prepare(&self) -> std::process::Output {
        let user = format!("{OWNER}:{OWNER}");
        self.cli(&["prepare", "--user", &user])
    }

    /// Owners of every file in `outside` that is no longer root's.
    fn taken(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.outside()).expect("outside") {
            let e = e.expect("entry");
            let m = std::fs::symlink_metadata(e.path()).expect("meta");
            if m.uid() != 0 || m.gid() != 0 {
                out.push(format!("{} ({}:{})", e.path().display(), m.uid(), m.gid()));
            }
        }
        let m = std::fs::metadata(self.outside()).expect("outside");
        if m.uid() != 0 {
            out.push(format!("{} itself", self.outside().display()));
        }
        out
    }
}

#[test]
fn prepare_leaves_planted_links_alone_and_says_so() {
    let t = Tree::new();
    let secret = t.outside().join("secret");
    std::fs::write(&secret, "root's").expect("secret");
    let state = t.state();
    std::fs::write(state.join("ranges.json"), "{}").expect("file");
    std::os::unix::fs::symlink(&secret, state.join("link")).expect("symlink");
    std::os::unix::fs::symlink(t.outside(), state.join("dirlink")).expect("symlink");
    // A second name of a root file (possible where fs.protected_hardlinks
    // is off): an owner change through it would reach the file outside.
    std::fs::hard_link(&secret, state.join("hard")).expect("hard link");
    let out = t.prepare();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(t.taken().is_empty(), "given away: {:?}", t.taken());
    let m = std::fs::metadata(state.join("ranges.json")).expect("meta");
    assert_eq!(
        (m.uid(), m.gid()),
        (OWNER, OWNER),
        "its own files are given"
    );
    for name in ["link", "dirlink", "hard"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(name) && l.contains("skipped")),
            "{name} not reported: {stderr}"
        );
    }
}

#[test]
fn the_root_cli_refuses_planted_lock_links() {
    let t = Tree::new();
    let state = t.state();
    let target = t.outside().join("created-by-root");
    std::os::unix::fs::symlink(&target, state.join("devices.json.lock")).expect("symlink");
    let out = t.cli(&[
        "device",
        "add",
        "printer",
        "--sender",
        "printer@contoso.com",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "followed the link: {stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert!(!target.exists(), "root created the link's target");
    // The ranges lock, taken by `ranges import` when no daemon runs.
    std::os::unix::fs::symlink(&target, state.join("ranges.lock")).expect("symlink");
    let list = t.dir.path().join("endpoints.json");
    std::fs::write(
        &list,
        r#"[{"id":10,"serviceArea":"Exchange","urls":["*.mail.protection.outlook.com"],"ips":["40.92.0.0/15","40.107.0.0/16","52.100.0.0/14","104.47.0.0/17","2a01:111:f400::/48","2a01:111:f403::/48"],"tcpPorts":"25","category":"Allow","required":true}]"#,
    )
    .expect("list");
    let out = t.cli(&["ranges", "import", list.to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "followed the link: {stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert!(!target.exists(), "root created the link's target");
}

#[test]
fn a_racing_swapper_never_gets_an_outside_file() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let t = Tree::new();
    let state = t.state();
    // The same names inside and outside: a path resolved through the
    // swapped-in link lands on the file outside.
    let inside = state.join("a");
    std::fs::create_dir(&inside).expect("dir");
    for i in 0..64 {
        std::fs::write(inside.join(format!("f{i}")), "mine").expect("inside");
        std::fs::write(t.outside().join(format!("f{i}")), "root's").expect("outside");
    }
    std::os::unix::fs::symlink(t.outside(), state.join("b")).expect("symlink");
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let (a, b) = (
            std::ffi::CString::new(inside.to_str().expect("path")).expect("c"),
            std::ffi::CString::new(state.join("b").to_str().expect("path")).expect("c"),
        );
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed)
                && n < 2_000_000
                && started.elapsed() < std::time::Duration::from_secs(20)
            {
                // SAFETY: two valid paths; renameat2 has no other preconditions.
                unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                n += 1;
            }
            n
        })
    };
    let started = std::time::Instant::now();
    let mut runs = 0;
    while runs < 200 && started.elapsed() < std::time::Duration::from_secs(8) {
        let out = t.prepare();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        runs += 1;
        if !t.taken().is_empty() {
            break;
        }
        // Back to root's, as a fresh start would find them.
        for e in std::fs::read_dir(&inside).into_iter().flatten().flatten() {
            let _ = std::os::unix::fs::lchown(e.path(), Some(0), Some(0));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().expect("swapper");
    assert!(swaps > 0, "the swapper never ran");
    assert!(
        t.taken().is_empty(),
        "after {runs} runs and {swaps} swaps the daemon's user got {:?}",
        t.taken()
    );
}
