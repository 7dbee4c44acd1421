//! The Exchange Online ranges updater against recorded web-service answers
//! served on loopback (tests/src/webservice.rs): version first, the list only
//! when it changed, additions at once, removals after the grace, every
//! failure keeping the list in force with a backoff, the sanity and shrink
//! checks, the address-space caps against a hostile answer, dry runs, the proxy, HTTPS with an organisation's CA, and the
//! daemon keeping the gate's entries and the inbound connectors current.
//! The real service is never contacted.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use smtp_edge_tests::certs::{Ca, Leaf};
use smtp_edge_tests::edge::{Edge, Setup, V4};
use smtp_edge_tests::ports::free_port;
use smtp_edge_tests::scrape::{sample, scrape};
use smtp_edge_tests::smtp::{Client, wait_for};
use smtp_edge_tests::webservice::{Answer, WebService};
use smtp_edge_tests::{smtp_edge_bin, without_proxy};

const BUNDLED: [&str; 6] = [
    "40.92.0.0/15",
    "40.107.0.0/16",
    "52.100.0.0/14",
    "104.47.0.0/17",
    "2a01:111:f400::/48",
    "2a01:111:f403::/48",
];

fn now() -> u64 {
    smtp_edge::queue::spool::now()
}

/// A configuration and state directory for the CLI, no daemon.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new(ranges: &str) -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(
            d.join("smtp-edge.toml"),
            format!(
                "[daemon]\nstate_dir = \"{s}\"\ncontrol_socket = \"{c}\"\n\n[filter]\nenabled = false\n\n[ranges]\n{ranges}\n",
                s = d.join("state").display(),
                c = d.join("control.sock").display(),
            ),
        )
        .expect("config");
        Host { dir }
    }

    /// A host asking `ws`; without a `removal_grace` in `extra`, removals
    /// go at once (a test's list in force starts clean).
    fn for_service(ws: &WebService, extra: &str) -> Host {
        let grace = if extra.contains("removal_grace") {
            ""
        } else {
            "removal_grace = 0\n"
        };
        Host::new(&format!("service_url = \"{}\"\n{grace}{extra}", ws.url()))
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("smtp-edge.toml")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(smtp_edge_bin());
        without_proxy(&mut c)
            .arg("--config")
            .arg(self.config())
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run smtp-edge")
    }

    /// `ranges update ARGS`: exit code and all output.
    fn update(&self, args: &[&str]) -> (i32, String) {
        let mut all = vec!["ranges", "update"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        (out.status.code().unwrap_or(-1), text(&out))
    }

    fn status(&self) -> Value {
        let out = self.run(&["ranges", "status", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    fn prefixes(&self) -> Vec<String> {
        strings(&self.status()["prefixes"])
    }

    fn pending(&self) -> Vec<String> {
        self.status()["pending_removal"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["prefix"].as_str().unwrap_or("").to_string())
            .collect()
    }

    fn state_file(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state/ranges.json")).unwrap_or_default()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn owned(v: &[&str]) -> Vec<String> {
    sorted(v.iter().map(|s| s.to_string()).collect())
}

#[test]
fn version_first_then_the_list_only_when_it_changed() {
    let ws = WebService::start();
    ws.publish("2026110100", &BUNDLED);
    let host = Host::for_service(&ws, "");
    let (code, out) = host.update(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        ws.paths(),
        vec!["/version/Worldwide", "/endpoints/Worldwide"]
    );
    let reqs = ws.requests();
    let status = host.status();
    let id = status["client_request_id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(uuid_like(&id), "{id}");
    assert!(
        reqs[0].path.ends_with(&format!("?ClientRequestId={id}")),
        "{:?}",
        reqs[0]
    );
    assert!(
        reqs[1]
            .path
            .ends_with(&format!("?ClientRequestId={id}&ServiceAreas=Exchange")),
        "{:?}",
        reqs[1]
    );
    assert_eq!(status["version"], "2026110100");
    assert_eq!(status["origin"], "web service");
    assert_eq!(sorted(strings(&status["prefixes"])), owned(&BUNDLED));
    assert_eq!(status["last_check"]["ok"], true);
    // Unchanged: only the version is asked, with the same request id.
    ws.clear();
    let (code, out) = host.update(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2026110100 is current"), "{out}");
    assert_eq!(ws.paths(), vec!["/version/Worldwide"]);
    assert!(ws.requests()[0].path.contains(&id));
    // --force asks for the list even so.
    ws.clear();
    host.update(&["--force"]);
    assert_eq!(
        ws.paths(),
        vec!["/version/Worldwide", "/endpoints/Worldwide"]
    );
    // The selection is by content: the other Exchange sets (443, 587) and
    // other service areas are not taken.
    let prefixes = host.prefixes();
    assert!(
        !prefixes
            .iter()
            .any(|p| p == "52.238.78.88/32" || p == "40.96.0.0/13")
    );
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[test]
fn additions_at_once_removals_after_the_grace() {
    let ws = WebService::start();
    let base = [
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "198.18.0.0/15",
    ];
    ws.publish("2026110100", &base);
    // The bundled list goes at once: allowed here (max_shrink = 100).
    let host = Host::for_service(&ws, "max_shrink = 100\nremoval_grace = 600\n");
    assert_eq!(host.update(&[]).0, 0);
    assert_eq!(sorted(host.prefixes()), owned(&base));
    assert_eq!(
        sorted(host.pending()),
        owned(&BUNDLED),
        "the bundled list waits its grace"
    );
    // An addition is in force at once.
    let added = [&base[..], &["2001:db8::/48"]].concat();
    ws.publish("2026110200", &added);
    let (code, out) = host.update(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("+ 2001:db8::/48"), "{out}");
    assert!(host.prefixes().contains(&"2001:db8::/48".to_string()));
    let list = text(&host.run(&["ranges", "list"]));
    assert!(
        list.contains("2001:db8::/48") && list.contains("version 2026110200"),
        "{list}"
    );
    // A removal waits for the grace (600 s here), still allowed.
    let before = now();
    ws.publish(
        "2026110300",
        &[
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "2001:db8::/48",
        ],
    );
    let (code, out) = host.update(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("- 198.18.0.0/15  (no longer listed; allowed until"),
        "{out}"
    );
    let status = host.status();
    let p = status["pending_removal"]
        .as_array()
        .expect("pending")
        .iter()
        .find(|p| p["prefix"] == "198.18.0.0/15")
        .expect("198.18.0.0/15 pending")
        .clone();
    let at = p["remove_at"].as_u64().expect("date");
    assert!((before + 600..=now() + 600).contains(&at), "{p}");
    let list = text(&host.run(&["ranges", "list"]));
    assert!(
        list.contains("198.18.0.0/15") && list.contains("no longer listed"),
        "{list}"
    );
    let shown = text(&host.run(&["ranges", "status"]));
    assert!(
        shown.contains("pending removals") && shown.contains("198.18.0.0/15"),
        "{shown}"
    );
    // Listed again before its date: restored, nothing pending for it.
    ws.publish("2026110400", &added);
    let (_, out) = host.update(&[]);
    assert!(out.contains("+ 198.18.0.0/15  (listed again"), "{out}");
    assert!(!host.pending().contains(&"198.18.0.0/15".to_string()));
}

/// The list in force before each failure: version 2026110100, `base`.
fn in_force(ws: &WebService, host: &Host, base: &[&str]) {
    ws.publish("2026110100", base);
    assert_eq!(host.update(&["--force", "--accept-shrink"]).0, 0);
    assert_eq!(sorted(host.prefixes()), owned(base));
}

/// How a check of the list in force ends.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Ends {
    /// Failed: tried again after a backoff.
    Failed,
    /// The published list is unusable: refused, not fetched again.
    Refused,
}

#[test]
fn every_failure_keeps_the_list_says_why_and_backs_off() {
    let ws = WebService::start();
    let base = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"];
    let host = Host::for_service(&ws, "timeout = 1\n");
    in_force(&ws, &host, &base);
    let endpoints_ok = Answer::json(smtp_edge_tests::webservice::endpoints(&["192.0.2.0/24"]));
    use Ends::*;
    let cases: Vec<(&str, Answer, Option<Answer>, Ends, &str)> = vec![
        ("version 400", Answer::status(400), None, Failed, "HTTP 400"),
        ("version 500", Answer::status(500), None, Failed, "HTTP 500"),
        (
            "version 429",
            Answer::status(429).header("Retry-After", "7200"),
            None,
            Failed,
            "HTTP 429 (Retry-After 7200 s)",
        ),
        (
            "version timeout",
            Answer::version("2026110200").after(Duration::from_secs(4)),
            None,
            Failed,
            "no answer within 1 s",
        ),
        (
            "version garbage",
            Answer::json("<html>maintenance</html>"),
            None,
            Failed,
            "not a version answer",
        ),
        (
            "version not a version",
            Answer::json(r#"{"instance":"Worldwide","latest":"soon"}"#),
            None,
            Failed,
            "`soon` is not a version",
        ),
        (
            "version redirected",
            Answer::status(302).header("Location", "http://127.0.0.1:9/"),
            None,
            Failed,
            "HTTP 302",
        ),
        (
            "endpoints 429",
            Answer::version("2026110200"),
            Some(Answer::status(429)),
            Failed,
            "HTTP 429",
        ),
        (
            "endpoints 500",
            Answer::version("2026110200"),
            Some(Answer::status(500)),
            Failed,
            "HTTP 500",
        ),
        (
            "endpoints garbage",
            Answer::version("2026110200"),
            Some(Answer::json("<html>proxy error</html>")),
            Failed,
            "is not a Microsoft 365 endpoints JSON list",
        ),
        (
            "endpoints timeout",
            Answer::version("2026110200"),
            Some(endpoints_ok.clone().after(Duration::from_secs(4))),
            Failed,
            "no answer within 1 s",
        ),
        (
            "endpoints without the port-25 set",
            Answer::version("2026110300"),
            Some(Answer::json(
                r#"[{"id":1,"serviceArea":"Exchange","ips":["13.107.6.152/31"],"tcpPorts":"443"}]"#,
            )),
            Refused,
            "no endpoint set has serviceArea Exchange and TCP port 25",
        ),
        (
            "endpoints with a bad address",
            Answer::version("2026110400"),
            Some(Answer::json(
                r#"[{"id":10,"serviceArea":"Exchange","ips":["40.92.0.0/33"],"tcpPorts":"25"}]"#,
            )),
            Refused,
            "40.92.0.0/33",
        ),
    ];
    let mut failures: u32 = 0;
    for (what, version, endpoints, ends, expected) in cases {
        ws.set_version(version);
        if let Some(e) = endpoints {
            ws.set_endpoints(e);
        }
        let started = now();
        let (code, out) = host.update(&[]);
        assert_eq!(code, 2, "{what}: {out}");
        assert!(out.contains(expected), "{what}: {out}");
        assert!(out.contains("kept version 2026110100"), "{what}: {out}");
        let s = host.status();
        assert_eq!(s["version"], "2026110100", "{what}");
        assert_eq!(sorted(strings(&s["prefixes"])), owned(&base), "{what}");
        assert_eq!(s["last_check"]["ok"], false, "{what}");
        assert!(
            s["last_check"]["outcome"]
                .as_str()
                .unwrap_or("")
                .contains(expected),
            "{what}: {s}"
        );
        let next = s["next_check"].as_u64().expect("next check");
        match ends {
            Failed => {
                failures += 1;
                assert_eq!(s["failures"], failures, "{what}");
                // 1, 2, 4 … minutes, capped at the interval; more when asked.
                let grown = (60u64 << (failures - 1).min(10)).min(3600);
                let wanted = match what {
                    "version 429" => 7200,
                    "endpoints 429" => 3600,
                    _ => grown,
                };
                assert!(
                    next >= started + wanted,
                    "{what}: next {next}, started {started}, +{wanted}"
                );
                if wanted == grown {
                    assert!(next <= now() + grown, "{what}: next {next} beyond +{grown}");
                }
            }
            Refused => {
                // Content, not transport: this version is not fetched again.
                failures = 0;
                assert_eq!(s["failures"], 0, "{what}");
                assert!(next >= started + 3600, "{what}");
                ws.clear();
                assert_eq!(host.update(&[]).0, 2, "{what}");
                assert_eq!(ws.paths(), vec!["/version/Worldwide"], "{what}");
            }
        }
    }
    // A good answer clears it.
    ws.publish("2026110500", &base);
    assert_eq!(host.update(&[]).0, 0);
    let s = host.status();
    assert_eq!(s["failures"], 0);
    assert_eq!(s["version"], "2026110500");
    assert_eq!(s["last_check"]["ok"], true);
}

#[test]
fn sanity_checks_and_the_shrink_limit() {
    let ws = WebService::start();
    let base = [
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "198.18.0.0/15",
    ];
    let host = Host::for_service(&ws, "");
    in_force(&ws, &host, &base);
    for (version, list, expected) in [
        (
            "2026110201",
            vec!["192.0.2.0/24", "0.0.0.0/1"],
            "broader than /8",
        ),
        ("2026110202", vec!["2001:db8::/32"], "no IPv4 prefix"),
        (
            "2026110203",
            vec!["192.0.2.0/24", "2001::/16"],
            "broader than /8 (IPv4) or /24 (IPv6)",
        ),
    ] {
        let mut full = base.to_vec();
        full.extend(list.iter().copied());
        let only_v6 = expected == "no IPv4 prefix";
        ws.publish(version, if only_v6 { &list } else { &full });
        let (code, out) = host.update(&["--accept-shrink"]);
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(expected), "{out}");
        assert_eq!(sorted(host.prefixes()), owned(&base));
    }
    // Two of four at once: refused, remembered, not fetched again.
    ws.publish("2026110300", &["192.0.2.0/24", "198.51.100.0/24"]);
    let (code, out) = host.update(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("would remove 2 of 4 prefixes (50%") && out.contains("--accept-shrink"),
        "{out}"
    );
    let s = host.status();
    assert_eq!(s["refused"]["version"], "2026110300", "{s}");
    assert_eq!(sorted(strings(&s["prefixes"])), owned(&base));
    ws.clear();
    let (code, out) = host.update(&[]);
    assert_eq!(code, 2);
    assert!(out.contains("was refused at its first check"), "{out}");
    assert_eq!(
        ws.paths(),
        vec!["/version/Worldwide"],
        "the refused list is not fetched again"
    );
    // The admin takes it (removals at once here: no grace configured).
    let (code, out) = host.update(&["--accept-shrink"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("- 203.0.113.0/24") && out.contains("- 198.18.0.0/15"),
        "{out}"
    );
    assert_eq!(
        sorted(host.prefixes()),
        owned(&["192.0.2.0/24", "198.51.100.0/24"])
    );
    assert!(host.status()["refused"].is_null());
}

#[test]
fn dry_runs_and_diff_change_nothing() {
    let ws = WebService::start();
    let base = [
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "10.25.0.0/16",
    ];
    let host = Host::for_service(&ws, "");
    in_force(&ws, &host, &base);
    let before = host.state_file();
    ws.publish(
        "2026110200",
        &[
            "192.0.2.0/24",
            "198.51.100.0/24",
            "10.25.0.0/16",
            "198.18.0.0/15",
        ],
    );
    let out = host.run(&["ranges", "diff"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("+ 198.18.0.0/15"), "{shown}");
    assert!(
        shown.contains("- 203.0.113.0/24  (no longer listed"),
        "{shown}"
    );
    let (code, out) = host.update(&["--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("would be taken"), "{out}");
    assert_eq!(host.state_file(), before, "a dry run writes nothing");
    // No difference.
    ws.publish("2026110300", &base);
    let shown = text(&host.run(&["ranges", "diff"]));
    assert!(shown.contains("no difference"), "{shown}");
    // A list that would be refused is not "no difference".
    ws.publish("2026110400", &["192.0.2.0/24", "0.0.0.0/1"]);
    let out = host.run(&["ranges", "diff"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("would be refused") && text(&out).contains("broader than /8"),
        "{}",
        text(&out)
    );
}

#[test]
fn an_older_version_is_not_taken() {
    let ws = WebService::start();
    let base = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"];
    let host = Host::for_service(&ws, "");
    in_force(&ws, &host, &base);
    ws.publish("2026103100", &["192.0.2.0/24"]);
    ws.clear();
    let (code, out) = host.update(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(ws.paths(), vec!["/version/Worldwide"], "{out}");
    assert_eq!(host.status()["version"], "2026110100");
}

#[test]
fn an_unreadable_state_file_is_reported_never_replaced() {
    let ws = WebService::start();
    let host = Host::for_service(&ws, "");
    in_force(&ws, &host, &["192.0.2.0/24", "198.51.100.0/24"]);
    let file = host.dir.path().join("state/ranges.json");
    std::fs::write(&file, b"{\"origin\":\"serv").expect("tear the file");
    ws.publish(
        "2026110200",
        &["192.0.2.0/24", "198.51.100.0/24", "198.18.0.0/15"],
    );
    let (code, out) = host.update(&[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("ranges.json") && out.contains("corrupt state file"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&file).expect("file"),
        b"{\"origin\":\"serv",
        "left as it was"
    );
    let out = host.run(&["ranges", "list"]);
    assert!(
        !out.status.success() && text(&out).contains("corrupt state file"),
        "{}",
        text(&out)
    );
}

#[test]
fn only_http_proxies_and_only_https_beyond_loopback() {
    let host = Host::new(
        "service_url = \"http://endpoints.office.com\"\nproxy = \"socks5://127.0.0.1:1080\"\n",
    );
    let err = text(&host.run(&["config", "check", host.config().to_str().expect("path")]));
    assert!(err.contains("must use https://"), "{err}");
    assert!(err.contains("SOCKS is not supported"), "{err}");
    let ws = WebService::start();
    ws.publish("2026110100", &BUNDLED);
    let host = Host::for_service(&ws, "");
    let out = host
        .command(&["ranges", "update"])
        .env("ALL_PROXY", "socks5://127.0.0.1:1080")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not an HTTP proxy"), "{}", text(&out));
    assert!(ws.requests().is_empty(), "never around the proxy");
}

#[test]
fn the_proxy_from_the_configuration_and_from_the_environment() {
    let proxy = WebService::start();
    proxy.publish("2026110100", &BUNDLED);
    // The service URL itself is unreachable (port 9 on loopback: nothing
    // listens); only the proxy can answer.
    let unreachable = "http://127.0.0.1:9";
    let host = Host::new(&format!(
        "service_url = \"{unreachable}\"\nproxy = \"{}\"\n",
        proxy.url()
    ));
    let (code, out) = host.update(&[]);
    assert_eq!(code, 0, "{out}");
    let reqs = proxy.requests();
    assert_eq!(reqs.len(), 2);
    assert!(
        reqs.iter().all(|r| r.via_proxy && r.host == "127.0.0.1:9"),
        "{reqs:?}"
    );
    assert!(reqs[0].path.starts_with("/version/Worldwide?"), "{reqs:?}");
    // HTTPS_PROXY from the environment.
    let host = Host::new(&format!("service_url = \"{unreachable}\"\n"));
    proxy.clear();
    let out = host
        .command(&["ranges", "update"])
        .env("HTTPS_PROXY", proxy.url())
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert!(proxy.requests().iter().all(|r| r.via_proxy));
    assert_eq!(proxy.requests().len(), 2);
    // NO_PROXY is honoured: straight to the (unreachable) service.
    proxy.clear();
    let out = host
        .command(&["ranges", "update", "--force"])
        .env("HTTPS_PROXY", proxy.url())
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(proxy.requests().is_empty());
    assert!(text(&out).contains("127.0.0.1:9"), "{}", text(&out));
}

#[test]
fn https_with_an_organisations_ca_and_not_without_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("Contoso Proxy Root");
    let ca_file = ca.write(&tmp.path().join("ca.pem"));
    let ws = WebService::start_tls(&Leaf::new(&["127.0.0.1"], Some(&ca), false));
    ws.publish("2026110100", &BUNDLED);
    assert!(ws.url().starts_with("https://"));
    let host = Host::for_service(&ws, &format!("tls_trust = \"{}\"\n", ca_file.display()));
    let (code, out) = host.update(&[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(host.status()["version"], "2026110100");
    // With the system's roots the certificate is not trusted.
    let host = Host::for_service(&ws, "");
    let (code, out) = host.update(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.to_lowercase().contains("certificate") || out.contains("UnknownIssuer"),
        "{out}"
    );
    assert!(host.status()["version"].is_null());
}

#[test]
fn bad_settings_are_located() {
    let host = Host::new("service_url = \"ftp://x\"\nmax_shrink = 150\ninstance = \"Mars\"\n");
    let out = host.run(&["config", "check", host.config().to_str().expect("path")]);
    assert!(!out.status.success());
    let err = text(&out);
    assert!(err.contains("smtp-edge.toml:11:"), "{err}");
    assert!(err.contains("Worldwide"), "{err}");
    let host = Host::new("service_url = \"ftp://x\"\nmax_shrink = 150\n");
    let err = text(&host.run(&["config", "check", host.config().to_str().expect("path")]));
    assert!(
        err.contains(":9:15: ranges.service_url `ftp://x` must start with https://"),
        "{err}"
    );
    assert!(
        err.contains(":10:14: ranges.max_shrink = 150 is out of range (0..=100)"),
        "{err}"
    );
}

/// What a connection from `src` gets at MAIL: the Exchange Online connector
/// requires TLS (530), the default one takes it (250).
fn mail_reply(edge: &Edge, src: &str) -> u16 {
    let dst: SocketAddr = edge.addr(V4);
    let src: IpAddr = src.parse().expect("src");
    let mut c = Client::connect(dst, Some(src)).expect("connect");
    c.answer();
    c.cmd("EHLO mail.protection.outlook.com");
    let code = c.cmd("MAIL FROM:<a@fabrikam.com>").code;
    c.cmd("QUIT");
    code
}

#[test]
fn the_daemon_keeps_the_ranges_current_and_the_connectors_follow() {
    let ws = WebService::start();
    ws.publish("2026110100", &BUNDLED);
    let tail = format!(
        "[ranges]\nservice_url = \"{}\"\ncheck_interval = 1\nremoval_grace = 4\n",
        ws.url()
    );
    let edge = Edge::start(Setup {
        connectors: "[[inbound_connectors]]\nname = \"from-exchange-online\"\nsources = [\"exchange-online\"]\nrequire_tls = true\n\n[[inbound_connectors]]\nname = \"internet\"\n",
        tail: &tail,
        ..Setup::default()
    });
    // The first check runs at start.
    wait_for("the first check", 10, || {
        let s = edge.cli(&["ranges", "status"])?;
        (s["version"] == "2026110100")
            .then_some(())
            .ok_or(format!("{s}"))
    });
    let loopback_exo = "127.0.66.5";
    assert_eq!(
        mail_reply(&edge, loopback_exo),
        250,
        "not an Exchange Online source yet"
    );
    // Microsoft publishes a new source: the connector takes it at once.
    let mut with = BUNDLED.to_vec();
    with.push("127.0.66.0/24");
    ws.publish("2026110200", &with);
    wait_for(
        "the new source in the inbound connector",
        10,
        || match mail_reply(&edge, loopback_exo) {
            530 => Ok(()),
            c => Err(format!("MAIL got {c}")),
        },
    );
    // Only the version is asked while it does not change.
    let endpoints_calls = || {
        ws.paths()
            .iter()
            .filter(|p| p.starts_with("/endpoints/"))
            .count()
    };
    assert_eq!(endpoints_calls(), 2);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(endpoints_calls(), 2);
    assert!(
        ws.paths()
            .iter()
            .filter(|p| p.starts_with("/version/"))
            .count()
            >= 4
    );
    // Unlisted: still allowed during the grace (2 s), then gone.
    ws.publish("2026110300", &BUNDLED);
    wait_for("version 2026110300", 10, || {
        let s = edge.cli(&["ranges", "status"])?;
        (s["version"] == "2026110300")
            .then_some(())
            .ok_or(format!("{s}"))
    });
    let s = edge.cli(&["ranges", "status"]).expect("status");
    let remove_at = s["pending_removal"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["prefix"] == "127.0.66.0/24"))
        .and_then(|p| p["remove_at"].as_u64())
        .unwrap_or_else(|| panic!("127.0.66.0/24 must wait for its removal date: {s}"));
    assert!(
        remove_at >= now() + 2,
        "a grace of 4 s: {remove_at} vs {}",
        now()
    );
    assert_eq!(mail_reply(&edge, loopback_exo), 530, "during the grace");
    wait_for("the grace to end", 10, || {
        match mail_reply(&edge, loopback_exo) {
            250 => Ok(()),
            c => Err(format!("MAIL got {c}")),
        }
    });
    // `ranges update` while the daemon runs goes through it.
    let out = edge
        .cli(&["ranges", "update"])
        .expect("update through the daemon");
    assert_eq!(out["result"], "unchanged", "{out}");
    // The service failing does not disturb mail.
    ws.set_version(Answer::status(500));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(mail_reply(&edge, "127.0.0.1"), 250);
    let log = edge.log();
    assert!(log.contains("HTTP 500"), "{log}");
}

/// The real list and about 220 public /8s: each within the /8 limit, their
/// sum most of the IPv4 internet.
fn hostile() -> Vec<String> {
    let mut v: Vec<String> = BUNDLED.iter().map(|s| s.to_string()).collect();
    v.extend(
        (1..=223u8)
            .filter(|i| ![10, 100, 127].contains(i))
            .take(220)
            .map(|i| format!("{i}.0.0.0/8")),
    );
    v
}

#[test]
fn a_hostile_answer_is_refused_and_the_last_good_list_stays() {
    let ws = WebService::start();
    let host = Host::for_service(&ws, "");
    in_force(&ws, &host, &BUNDLED);
    let hostile = hostile();
    let hostile: Vec<&str> = hostile.iter().map(String::as_str).collect();
    ws.publish("2026110200", &hostile);
    let (code, out) = host.update(&["--accept-shrink"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("IPv4 addresses in all, more than the cap of 4194304"),
        "{out}"
    );
    assert_eq!(
        sorted(host.prefixes()),
        owned(&BUNDLED),
        "the last good list"
    );
    let s = host.status();
    assert_eq!(s["version"], "2026110100", "{s}");
    assert_eq!(s["refused"]["version"], "2026110200", "{s}");
    assert_eq!(s["refused"]["kind"], "address_space", "{s}");
    assert_eq!(s["allowed_space"]["v4"], 491_520, "{s}");
    let shown = text(&host.run(&["ranges", "status"]));
    assert!(
        shown.contains("refused            version 2026110200: the new list would allow")
            && shown.contains("(the list in force stays)")
            && shown.contains("address space      491520 IPv4 addresses"),
        "{shown}"
    );
    // Remembered: not fetched again.
    ws.clear();
    assert_eq!(host.update(&[]).0, 2);
    assert_eq!(ws.paths(), vec!["/version/Worldwide"]);
    // Growth just over the cap in one update: refused too.
    let mut grown = BUNDLED.to_vec();
    grown.extend(["20.0.0.0/11", "21.0.0.0/24"]);
    ws.publish("2026110300", &grown);
    let (code, out) = host.update(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("would add 2097408 IPv4 addresses at once"),
        "{out}"
    );
    assert_eq!(host.status()["refused"]["kind"], "growth");
    assert_eq!(sorted(host.prefixes()), owned(&BUNDLED));
    // A good list is taken and clears the refusal.
    grown.pop();
    ws.publish("2026110400", &grown);
    let (code, out) = host.update(&[]);
    assert_eq!(code, 0, "{out}");
    let s = host.status();
    assert!(s["refused"].is_null(), "{s}");
    assert_eq!(s["allowed_space"]["v4"], 491_520 + (1 << 21), "{s}");
}

#[test]
fn the_daemon_refuses_a_hostile_answer_and_the_metrics_say_so() {
    let ws = WebService::start();
    ws.publish("2026110100", &BUNDLED);
    let port = free_port();
    let tail = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[ranges]\nservice_url = \"{}\"\ncheck_interval = 1\n",
        ws.url()
    );
    let edge = Edge::start(Setup {
        connectors: "[[inbound_connectors]]\nname = \"from-exchange-online\"\nsources = [\"exchange-online\"]\n\n[[inbound_connectors]]\nname = \"internet\"\n",
        tail: &tail,
        ..Setup::default()
    });
    wait_for("the first check", 10, || {
        let s = edge.cli(&["ranges", "status"])?;
        (s["version"] == "2026110100")
            .then_some(())
            .ok_or(format!("{s}"))
    });
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let body = scrape(addr);
    assert_eq!(
        sample(&body, "smtp_edge_ranges_refused", "reason=\"none\""),
        Some(0.0),
        "{body}"
    );
    let hostile = hostile();
    let hostile: Vec<&str> = hostile.iter().map(String::as_str).collect();
    ws.publish("2026110200", &hostile);
    wait_for("the refusal", 10, || {
        let s = edge.cli(&["ranges", "status"])?;
        (s["refused"]["version"] == "2026110200")
            .then_some(())
            .ok_or(format!("{s}"))
    });
    let s = edge.cli(&["ranges", "status"]).expect("status");
    assert_eq!(s["version"], "2026110100", "{s}");
    assert_eq!(sorted(strings(&s["prefixes"])), owned(&BUNDLED), "{s}");
    assert!(
        s["refused"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("more than the cap"),
        "{s}"
    );
    let body = scrape(addr);
    assert_eq!(
        sample(
            &body,
            "smtp_edge_ranges_refused",
            "reason=\"address_space\""
        ),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "smtp_edge_ranges_allowed_space", "family=\"ipv4\""),
        Some(491_520.0),
        "{body}"
    );
}
