//! End to end on the real kernel: two network namespaces joined by a veth, the
//! daemon attaching the gate natively to the edge side, real TCP connections
//! across it, and the CLI driving the daemon. Documentation addresses only.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use smtp_edge_tests::netns::{Banner, Netns, add_addr, veth};
use smtp_edge_tests::{Daemon, PinDir, cli};

const EDGE4: &str = "198.51.100.1";
const OK4: &str = "198.51.100.10";
const BAD4: &str = "198.51.100.66";
const EDGE6: &str = "2001:db8:100::1";
const OK6: &str = "2001:db8:100::10";
const BAD6: &str = "2001:db8:100::66";

/// The two namespaces, listeners, config and pins of one test.
struct Lab {
    client: Netns,
    edge: Netns,
    _banner: Banner,
    dir: tempfile::TempDir,
    pin: PinDir,
    config: PathBuf,
}

impl Lab {
    fn new(extra_config: &str) -> Lab {
        Lab::with_ranges(extra_config, "auto_update = false\nremoval_grace = 3\n")
    }

    /// `extra_config` goes into `[filter]`, `ranges` into `[ranges]`.
    fn with_ranges(extra_config: &str, ranges: &str) -> Lab {
        let client = Netns::new("cl");
        let edge = Netns::new("ed");
        veth(&client, "c0", &edge, "e0");
        add_addr(&edge, "e0", "198.51.100.1/24");
        add_addr(&edge, "e0", "2001:db8:100::1/64");
        for a in [
            "198.51.100.10/24",
            "198.51.100.66/24",
            "2001:db8:100::10/64",
            "2001:db8:100::66/64",
        ] {
            add_addr(&client, "c0", a);
        }
        let mut listeners = Vec::new();
        for ip in [EDGE4, EDGE6] {
            for port in [25u16, 2525] {
                listeners.push(edge.listen(SocketAddr::new(ip.parse().expect("ip"), port)));
            }
        }
        let banner = Banner::serve(listeners);
        let dir = tempfile::tempdir().expect("tempdir");
        let pin = PinDir::new("e2e");
        let config = dir.path().join("smtp-edge.toml");
        let text = format!(
            r#"[daemon]
state_dir = "{state}"
control_socket = "{sock}"

[filter]
interfaces = ["e0"]
ports = [25]
xdp_mode = "native"
pin_dir = "{pin}"
drop_events_per_second = 5
{extra_config}
[allowlist]
exchange_online = true

# Inside the edge's namespace.
[metrics]
listen = "127.0.0.1:9325"

# The bundled list, or recorded answers served in the namespace; never
# the real web service.
[ranges]
{ranges}

[[allowlist.entries]]
source = "{OK4}"
comment = "on-prem server"

[[allowlist.entries]]
source = "{OK6}/128"
comment = "on-prem server (v6)"
"#,
            state = dir.path().join("state").display(),
            sock = dir.path().join("control.sock").display(),
            pin = pin.0.display(),
            ranges = ranges,
        );
        std::fs::write(&config, text).expect("config");
        Lab {
            client,
            edge,
            _banner: banner,
            dir,
            pin,
            config,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn start(&self) -> Daemon {
        Daemon::start(
            Some(&self.edge.name),
            &self.config,
            &self.socket(),
            &self.dir.path().join("daemon.log"),
        )
    }

    /// True when a TCP connection from `src` to `dst:port` gets the banner.
    fn connects(&self, src: &str, dst: &str, port: u16) -> bool {
        let src: IpAddr = src.parse().expect("src");
        let dst = SocketAddr::new(dst.parse().expect("dst"), port);
        match self
            .client
            .connect_from(src, dst, Duration::from_millis(800))
        {
            Ok(line) => {
                assert!(line.starts_with("220"), "unexpected banner {line:?}");
                true
            }
            Err(_) => false,
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut all = vec!["--config", self.config.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        cli(None, &all)
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "smtp-edge {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.cli_ok(&a)).expect("json output")
    }

    fn counter(&self, name: &str) -> u64 {
        let stats = self.json(&["stats"]);
        stats["counters"]
            .as_array()
            .expect("counters")
            .iter()
            .find(|c| c[0] == name)
            .and_then(|c| c[1].as_u64())
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    fn assert_gate(&self, allowed: &[&str], refused: &[&str], when: &str) {
        for src in allowed {
            let dst = if src.contains(':') { EDGE6 } else { EDGE4 };
            assert!(
                self.connects(src, dst, 25),
                "{when}: {src} → :25 should connect"
            );
        }
        for src in refused {
            let dst = if src.contains(':') { EDGE6 } else { EDGE4 };
            assert!(
                !self.connects(src, dst, 25),
                "{when}: {src} → :25 should be dropped"
            );
            assert!(
                self.connects(src, dst, 2525),
                "{when}: {src} → :2525 must be unaffected"
            );
        }
    }
}

fn pinned(pin: &Path) -> bool {
    pin.join("link-e0").exists()
}

#[test]
fn gate_end_to_end_with_cli_kill_restart_and_detach() {
    let lab = Lab::new("");
    let mut daemon = lab.start();
    let status = lab.json(&["filter", "status"]);
    assert_eq!(status["interfaces"], serde_json::json!(["e0"]));
    assert_eq!(status["attach_modes"]["e0"], "native", "{status}");
    assert!(status["daemon_running"].as_bool().unwrap_or(false));

    lab.assert_gate(&[OK4, OK6], &[BAD4, BAD6], "initial");
    assert!(lab.counter("dropped_not_allowed_v4") >= 1);
    assert!(lab.counter("dropped_not_allowed_v6") >= 1);
    assert!(lab.counter("passed_allowed") >= 2);
    // The same counters on the metrics endpoint (scraped inside the
    // namespace), and each entry's hits.
    let body = lab
        .edge
        .within(|| smtp_edge_tests::scrape::scrape(SocketAddr::from(([127, 0, 0, 1], 9325))));
    let dropped = smtp_edge_tests::scrape::sample(
        &body,
        "smtp_edge_gate_packets_total",
        "reason=\"dropped_not_allowed_v4\"",
    )
    .unwrap_or_else(|| panic!("no gate counters in\n{body}"));
    assert_eq!(
        dropped as u64,
        lab.counter("dropped_not_allowed_v4"),
        "{body}"
    );
    let hits = smtp_edge_tests::scrape::sum(
        &body,
        "smtp_edge_gate_entry_hits_total",
        "source=\"198.51.100.10/32\"",
    );
    assert!(hits >= 1.0, "{body}");
    assert!(body.contains("comment=\"on-prem server\""), "{body}");

    // Per-entry hits and the check command.
    let list = lab.json(&["allow", "list"]);
    let ok_entry = list
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["source"] == "198.51.100.10/32")
        .expect("entry listed")
        .clone();
    assert!(ok_entry["hits"].as_u64().unwrap_or(0) >= 1, "{ok_entry}");
    assert_eq!(ok_entry["comment"], "on-prem server");
    let check = lab.json(&["check", BAD4, "--port", "25"]);
    assert_eq!(check["verdict"], "drop");
    let check = lab.json(&["check", OK4]);
    assert_eq!(check["verdict"], "pass");
    assert_eq!(check["entry"]["source"], "198.51.100.10/32");
    let check = lab.json(&["check", "40.107.1.1"]);
    assert_eq!(check["entry"]["origin"], "exchange-online");
    let check = lab.json(&["check", BAD4, "--port", "587"]);
    assert_eq!(check["verdict"], "pass");
    assert_eq!(check["protected"], false);

    // allow add / remove take effect on live traffic.
    lab.cli_ok(&["allow", "add", BAD4, "--comment", "partner"]);
    lab.cli_ok(&["allow", "add", "2001:db8:100::60-2001:db8:100::6f"]);
    lab.assert_gate(&[OK4, BAD4, BAD6], &[], "after allow add");
    let dup = lab.cli(&["allow", "add", BAD4]);
    assert!(!dup.status.success());
    lab.cli_ok(&["allow", "remove", "198.51.100.66/32"]);
    lab.cli_ok(&["allow", "remove", "2001:db8:100::60-2001:db8:100::6f"]);
    lab.assert_gate(&[OK4, OK6], &[BAD4, BAD6], "after allow remove");
    let from_config = lab.cli(&["allow", "remove", OK4]);
    assert!(!from_config.status.success());
    assert!(String::from_utf8_lossy(&from_config.stderr).contains("remove it there"));

    // The drop log got sampled events.
    let log = daemon.log_text();
    assert!(log.contains("packet refused by the gate"), "{log}");

    // A crash leaves the filter enforcing.
    daemon.kill9();
    assert!(pinned(&lab.pin.0));
    lab.assert_gate(&[OK4, OK6], &[BAD4, BAD6], "daemon killed");
    // Read-only commands read the pinned maps; edits go to the state file.
    let status = lab.json(&["filter", "status"]);
    assert_eq!(status["daemon_running"], false);
    assert_eq!(lab.json(&["check", BAD4])["verdict"], "drop");
    assert!(lab.counter("dropped_not_allowed_v4") >= 3);
    let out = lab.cli_ok(&["allow", "add", BAD4, "--comment", "while down"]);
    assert!(out.contains("takes effect when it starts"), "{out}");
    lab.assert_gate(&[OK4], &[BAD4], "edit while down is not in force yet");

    // Restart adopts the pinned link and maps (no window), and applies the edit.
    let mut daemon = lab.start();
    let status = lab.json(&["filter", "status"]);
    assert_eq!(status["attach_modes"]["e0"], "adopted", "{status}");
    lab.assert_gate(&[OK4, BAD4, OK6], &[BAD6], "after restart");

    // Detach removes the gate.
    lab.cli_ok(&["filter", "detach"]);
    assert!(!pinned(&lab.pin.0));
    lab.assert_gate(&[OK4, BAD4, OK6, BAD6], &[], "detached");
    daemon.stop();
}

#[test]
fn bad_reload_keeps_the_running_configuration() {
    let lab = Lab::new("");
    let daemon = lab.start();
    lab.assert_gate(&[OK4], &[BAD4], "before");
    let good = std::fs::read_to_string(&lab.config).expect("config");
    std::fs::write(
        &lab.config,
        good.replace(&format!("\"{OK4}\""), "\"10.0.0.1/33\""),
    )
    .expect("write");
    let out = lab.cli(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stays in force") && err.contains("/33"),
        "{err}"
    );
    lab.assert_gate(&[OK4], &[BAD4], "after refused reload");
    // The daemon refuses it too when told by SIGHUP.
    daemon.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !daemon.log_text().contains("configuration refused") {
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal logged:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    lab.assert_gate(&[OK4], &[BAD4], "after refused SIGHUP reload");
    // A good change applies: monitor mode passes everything and counts it.
    std::fs::write(
        &lab.config,
        good.replace("ports = [25]", "ports = [25]\nmode = \"monitor\""),
    )
    .expect("write");
    lab.cli_ok(&["reload"]);
    assert!(lab.connects(BAD4, EDGE4, 25), "monitor mode passes");
    assert!(lab.counter("would_drop") >= 1);
}

#[test]
fn bad_input_gets_clear_errors() {
    let lab = Lab::new("");
    // Unknown interface.
    let text = std::fs::read_to_string(&lab.config).expect("config");
    let bad_if = lab.dir.path().join("bad-if.toml");
    std::fs::write(&bad_if, text.replace("[\"e0\"]", "[\"nosuch0\"]")).expect("write");
    let out = cli(
        Some(&lab.edge.name),
        &["--config", bad_if.to_str().expect("path"), "run"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown interface `nosuch0`"));
    // Pin directory not on bpffs.
    let bad_pin = lab.dir.path().join("bad-pin.toml");
    std::fs::write(
        &bad_pin,
        text.replace(
            &lab.pin.0.display().to_string(),
            &lab.dir.path().join("pins").display().to_string(),
        ),
    )
    .expect("write");
    let out = cli(
        Some(&lab.edge.name),
        &["--config", bad_pin.to_str().expect("path"), "run"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not on a bpf filesystem"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bad prefixes and ranges, with locations.
    let bad = lab.dir.path().join("bad.toml");
    std::fs::write(&bad, "[filter]\ninterfaces = [\"e0\"]\n[[allowlist.entries]]\nsource = \"2001:db8::/129\"\n[[allowlist.entries]]\nsource = \"192.0.2.9-192.0.2.1\"\n").expect("write");
    let out = cli(None, &["config", "check", bad.to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:4:10: prefix length `129`"), "{err}");
    assert!(
        err.contains("bad.toml:6:10: range start 192.0.2.9 is after its end 192.0.2.1"),
        "{err}"
    );
    let out = lab.cli(&["allow", "add", "10.0.0.1/33"]);
    assert!(!out.status.success());
    // Endpoints files.
    let junk = lab.dir.path().join("endpoints.json");
    std::fs::write(&junk, "{ not json").expect("write");
    let out = lab.cli(&["ranges", "import", junk.to_str().expect("path")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a Microsoft 365 endpoints JSON list")
    );
    let out = lab.cli(&["ranges", "import", "/nonexistent/endpoints.json"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/endpoints.json")
    );
    // No permission for BPF: an unprivileged user.
    std::fs::create_dir_all(&lab.pin.0).expect("pin dir");
    let st = lab.dir.path().join("state");
    std::fs::create_dir_all(&st).expect("state");
    for p in [&lab.pin.0, &st, &lab.dir.path().to_path_buf()] {
        std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(p)
            .status()
            .expect("chown");
    }
    let out = smtp_edge_tests::in_netns(Some(&lab.edge.name), Path::new("setpriv"))
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(smtp_edge_tests::smtp_edge_bin())
        .args(["--config", lab.config.to_str().expect("path"), "run"])
        .output()
        .expect("setpriv");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no permission for BPF"), "{err}");
}

#[test]
fn ranges_import_applies_additions_at_once_and_removals_after_the_grace() {
    let lab = Lab::new("");
    let file = lab.dir.path().join("endpoints.json");
    std::fs::write(
        &file,
        r#"[{"id":10,"serviceArea":"Exchange","urls":["*.mail.protection.outlook.com"],"ips":["40.92.0.0/15","2a01:111:f400::/48","198.18.0.0/15"],"tcpPorts":"25","category":"Allow","required":true},
           {"id":1,"serviceArea":"Exchange","ips":["13.107.6.152/31"],"tcpPorts":"80,443","category":"Optimize","required":true}]"#,
    )
    .expect("write");
    let _daemon = lab.start();
    assert_eq!(lab.json(&["check", "104.47.1.1"])["verdict"], "pass");
    assert_eq!(lab.json(&["check", "198.18.0.1"])["verdict"], "drop");
    // Four of the six bundled prefixes would go at once: over max_shrink.
    let out = lab.cli(&["ranges", "import", file.to_str().expect("path")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("would remove 4 of 6") && err.contains("--accept-shrink"),
        "{err}"
    );
    assert_eq!(lab.json(&["check", "198.18.0.1"])["verdict"], "drop");
    // Taken: the addition at once, the removals after the grace (3 s).
    let shown = lab.cli_ok(&[
        "ranges",
        "import",
        "--accept-shrink",
        file.to_str().expect("path"),
    ]);
    assert!(
        shown.contains("+ 198.18.0.0/15") && shown.contains("- 104.47.0.0/17"),
        "{shown}"
    );
    assert_eq!(lab.json(&["check", "198.18.0.1"])["verdict"], "pass");
    assert_eq!(lab.json(&["check", "13.107.6.152"])["verdict"], "drop");
    assert_eq!(lab.json(&["check", "104.47.1.1"])["verdict"], "pass");
    let listed = lab.cli_ok(&["ranges", "list"]);
    assert!(
        listed.contains("104.47.0.0/17") && listed.contains("no longer listed"),
        "{listed}"
    );
    let status = lab.json(&["ranges", "status"]);
    assert_eq!(status["origin"], "imported");
    assert_eq!(
        status["pending_removal"].as_array().map(Vec::len),
        Some(4),
        "{status}"
    );
    // The daemon lets them go on their date.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while lab.json(&["check", "104.47.1.1"])["verdict"] == "pass" {
        assert!(
            std::time::Instant::now() < deadline,
            "the grace never ended"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(lab.json(&["check", "40.92.1.1"])["verdict"], "pass");
    let listed = lab.cli_ok(&["ranges", "list"]);
    assert!(!listed.contains("104.47.0.0/17"), "{listed}");
}

#[test]
fn a_list_the_gate_cannot_hold_is_refused_once_and_the_old_one_stays() {
    // The recorded answers are served inside the edge's namespace.
    let lab_dir_ranges = |url: &str| {
        format!(
            "service_url = \"{url}\"\ncheck_interval = 1\nmax_shrink = 100\nremoval_grace = 3\n"
        )
    };
    // Lab first (its namespace), then the service in it, then the config.
    let lab = Lab::with_ranges("[filter.capacity]\nentries = 12\n", "auto_update = false\n");
    let ws = lab
        .edge
        .within(smtp_edge_tests::webservice::WebService::start);
    let text = std::fs::read_to_string(&lab.config).expect("config");
    std::fs::write(
        &lab.config,
        text.replace("auto_update = false\n", &lab_dir_ranges(&ws.url())),
    )
    .expect("config");
    // Twelve prefixes + two static entries: more than the 12 counters.
    let big: Vec<String> = (0..12).map(|i| format!("198.18.{i}.0/24")).collect();
    let big: Vec<&str> = big.iter().map(String::as_str).collect();
    ws.publish("2026110100", &big);
    let _daemon = lab.start();
    std::thread::sleep(Duration::from_secs(4));
    let endpoints = ws
        .paths()
        .iter()
        .filter(|p| p.starts_with("/endpoints/"))
        .count();
    assert_eq!(
        endpoints,
        1,
        "fetched once, not again and again: {:?}",
        ws.paths()
    );
    let status = lab.json(&["ranges", "status"]);
    assert_eq!(status["refused"]["version"], "2026110100", "{status}");
    assert!(
        status["refused"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("gate"),
        "{status}"
    );
    assert_eq!(
        status["origin"], "bundled",
        "the list in force stays: {status}"
    );
    assert_eq!(lab.json(&["check", "104.47.1.1"])["verdict"], "pass");
    assert_eq!(lab.json(&["check", "198.18.1.1"])["verdict"], "drop");
    // A list that fits is taken; what it no longer lists waits its grace.
    ws.publish("2026110200", &["198.18.1.0/24", "40.92.0.0/15"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lab.json(&["check", "198.18.1.1"])["verdict"] != "pass" {
        assert!(
            std::time::Instant::now() < deadline,
            "the fitting list was not taken"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        lab.json(&["check", "104.47.1.1"])["verdict"],
        "pass",
        "in its grace"
    );
}
