//! The edge's own certificates over time: every certificate file the
//! configuration names — the server certificate (`[smtp.tls]`), the
//! outbound connectors' client certificates, the CA files connectors and
//! the ranges updater trust — read at start and at each reload, with what
//! they say (names, expiry, serial, extended key usages).
//!
//! Owns what an administrator must hear about them: the expiry gauge
//! `smtp_edge_certificate_expiry_timestamp_seconds{role,name,path}` (one
//! series per configured file), one log line per certificate at start and
//! reload, the lines and warnings of `smtp-edge status` — expiry within
//! [`WARN_DAYS`] days or past, a server certificate that does not name
//! `[smtp] hostname` (Exchange Online's outbound connector checks its
//! `TlsDomain` against it), a renewed certificate that dropped a name its
//! predecessor had (a connector set to that name stops matching).
//!
//! What is shown is what the last (re)load read: a certificate renewed on
//! disk without a reload keeps counting down, so the warning and an alert on
//! the gauge catch a renewal hook that did not run.

use std::path::Path;
use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::certs::{Inspected, inspect, load_chain, name_covers};
use crate::config::Config;
use crate::config::smtp::Trust;
use crate::smtp::trace::rfc5322_date;

/// Days before expiry from which a certificate is warned about.
pub const WARN_DAYS: i64 = 30;

/// What a configured certificate file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The server certificate (`[smtp.tls] certificate`).
    Server,
    /// An outbound connector's `client_certificate`.
    Client,
    /// A CA file: `client_cert_trust`, `tls_trust`, `ranges.tls_trust`.
    Trust,
}

impl Role {
    /// The metric label and the word `status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
            Role::Trust => "trust",
        }
    }
}

/// One configured certificate file as the last (re)load read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateView {
    /// What it is for.
    pub role: Role,
    /// The connector it belongs to, `smtp` (server) or `ranges`.
    pub name: String,
    /// The file.
    pub path: String,
    /// The leaf; in a CA file, the certificate that expires first.
    pub certificate: Option<Inspected>,
    /// Certificates in the file.
    pub count: usize,
    /// Why the file could not be read.
    pub error: Option<String>,
    /// The host name it must cover (server: `[smtp] hostname`).
    pub must_name: Option<String>,
    /// Names the certificate read before from this file had and this one
    /// has not (kept until a later certificate brings them back).
    #[serde(default)]
    pub lost_names: Vec<String>,
}

/// A configured file before it is read.
struct Configured {
    role: Role,
    name: String,
    path: String,
    must_name: Option<String>,
}

/// Every certificate file `cfg` puts in use.
fn configured(cfg: &Config) -> Vec<Configured> {
    let mut out = Vec::new();
    let mut add = |role, name: &str, path: &Path, must_name: Option<String>| {
        out.push(Configured {
            role,
            name: name.to_string(),
            path: path.display().to_string(),
            must_name,
        })
    };
    if cfg.smtp.raw.enabled {
        if let Some(tls) = &cfg.smtp.raw.tls {
            add(
                Role::Server,
                "smtp",
                &tls.certificate,
                Some(cfg.smtp.hostname.clone()),
            );
        }
        for o in &cfg.outbound {
            if let Some(cc) = &o.client_cert {
                add(Role::Client, &o.name, &cc.certificate, None);
            }
        }
        for c in &cfg.smtp.connectors {
            if let Trust::File(p) = &c.trust {
                add(Role::Trust, &c.policy.name, p, None);
            }
        }
        for o in &cfg.outbound {
            if let Some(p) = &o.tls_trust {
                add(Role::Trust, &o.name, p, None);
            }
        }
    }
    if let Some(p) = &cfg.ranges.tls_trust {
        add(Role::Trust, "ranges", p, None);
    }
    out
}

/// Reads one file: its leaf (a CA file: the certificate expiring first) and
/// how many certificates it holds.
fn read(path: &Path, role: Role) -> Result<(Inspected, usize), String> {
    let chain = load_chain(path).map_err(|e| e.message)?;
    let mut all = chain.iter().map(inspect);
    let first = all.next().ok_or("no certificate in the file")??;
    let chosen = match role {
        Role::Trust => {
            let mut soonest = first;
            for c in all {
                let c = c?;
                if c.not_after < soonest.not_after {
                    soonest = c;
                }
            }
            soonest
        }
        Role::Server | Role::Client => first,
    };
    Ok((chosen, chain.len()))
}

/// Reads every certificate file `cfg` puts in use.
pub fn inspect_configured(cfg: &Config) -> Vec<CertificateView> {
    configured(cfg)
        .into_iter()
        .map(|c| {
            let (certificate, count, error) = match read(Path::new(&c.path), c.role) {
                Ok((i, n)) => (Some(i), n, None),
                Err(e) => (None, 0, Some(e)),
            };
            CertificateView {
                role: c.role,
                name: c.name,
                path: c.path,
                certificate,
                count,
                error,
                must_name: c.must_name,
                lost_names: Vec::new(),
            }
        })
        .collect()
}

/// Carries over, for each file read again, the names its previous
/// certificate had and the new one has not.
fn carry_lost_names(previous: &[CertificateView], next: &mut [CertificateView]) {
    for n in next.iter_mut().filter(|n| n.role != Role::Trust) {
        let Some(p) = previous
            .iter()
            .find(|p| p.role == n.role && p.name == n.name && p.path == n.path)
        else {
            continue;
        };
        let (Some(old), Some(new)) = (&p.certificate, &n.certificate) else {
            continue;
        };
        let mut lost: Vec<String> = if old.serial == new.serial {
            p.lost_names.clone()
        } else {
            let mut l = p.lost_names.clone();
            l.extend(old.names.iter().cloned());
            l
        };
        lost.retain(|l| !new.names.iter().any(|m| m.eq_ignore_ascii_case(l)));
        lost.sort();
        lost.dedup();
        n.lost_names = lost;
    }
}

impl CertificateView {
    /// `role name` as `status` and the warnings say it.
    fn what(&self) -> String {
        match self.role {
            Role::Server => "server certificate".into(),
            Role::Client => format!("`{}` client certificate", self.name),
            Role::Trust => format!("`{}` CA file", self.name),
        }
    }

    /// Whether the server certificate lacks the host name it must cover.
    pub fn name_mismatch(&self) -> bool {
        match (&self.must_name, &self.certificate) {
            (Some(h), Some(c)) => !c.names.iter().any(|n| name_covers(n, h)),
            _ => false,
        }
    }

    /// Whole days until expiry (negative: expired) at `now`.
    pub fn days_left(&self, now: i64) -> Option<i64> {
        self.certificate
            .as_ref()
            .map(|c| (c.not_after - now).div_euclid(86_400))
    }

    /// What needs attention about this file at `now`.
    pub fn warnings(&self, now: i64) -> Vec<String> {
        let mut w = Vec::new();
        let what = self.what();
        let Some(c) = &self.certificate else {
            if let Some(e) = &self.error {
                w.push(format!("{what} {} cannot be read: {e}", self.path));
            }
            return w;
        };
        let until = date(c.not_after);
        if c.not_after <= now {
            w.push(format!(
                "{what} {} EXPIRED on {until}: renew it, then `smtp-edge reload`",
                self.path
            ));
        } else if c.not_after - now < WARN_DAYS * 86_400 {
            w.push(format!(
                "{what} {} expires on {until} (in {} days): renew it, then `smtp-edge reload`",
                self.path,
                (c.not_after - now) / 86_400
            ));
        }
        if self.name_mismatch()
            && let Some(h) = &self.must_name
        {
            w.push(format!(
                "{what} {} does not name {h} ([smtp] hostname; it names {}): Exchange Online's \
                 outbound connector checks TlsDomain {h} against it and will not deliver here",
                self.path,
                names(c)
            ));
        }
        // The host name, when lost, is the warning above.
        let lost: Vec<&str> = self
            .lost_names
            .iter()
            .filter(|n| !self.must_name.as_deref().is_some_and(|h| name_covers(n, h)))
            .map(String::as_str)
            .collect();
        if !lost.is_empty() {
            let setting = match self.role {
                Role::Server => "TlsDomain of Exchange Online's outbound connector",
                Role::Client | Role::Trust => {
                    "TlsSenderCertificateName of Exchange Online's inbound connector"
                }
            };
            w.push(format!(
                "{what} {} no longer names {} (the one before did): a connector set to match \
                 it ({setting}, see `smtp-edge exo-commands`) stops matching",
                self.path,
                lost.join(", ")
            ));
        }
        w
    }

    /// One line of `status`.
    pub fn line(&self, now: i64) -> String {
        let Some(c) = &self.certificate else {
            return format!(
                "{} {} · {} · unreadable: {}",
                self.role.as_str(),
                self.name,
                self.path,
                self.error.as_deref().unwrap_or("?")
            );
        };
        let left = match self.days_left(now) {
            Some(d) if d < 0 => "EXPIRED".to_string(),
            Some(d) => format!("{d} days left"),
            None => String::new(),
        };
        let what = match self.role {
            Role::Trust => format!(
                "{} CA certificate(s), first to expire {}",
                self.count, c.subject
            ),
            Role::Server | Role::Client => format!("{} · {}", c.subject, names(c)),
        };
        format!(
            "{} {} · {what} · until {} ({left}) · {} · serial {} · {}",
            self.role.as_str(),
            self.name,
            day(c.not_after),
            c.purposes.join(" "),
            c.serial,
            self.path
        )
    }
}

fn names(c: &Inspected) -> String {
    if c.names.is_empty() {
        "no names".into()
    } else {
        c.names.join(", ")
    }
}

fn date(secs: i64) -> String {
    rfc5322_date(u64::try_from(secs).unwrap_or(0))
}

/// `01 Sep 2026`.
fn day(secs: i64) -> String {
    let d = date(secs);
    d.get(5..16).map_or(d.clone(), str::to_string)
}

/// Every warning about `views` at `now`.
pub fn warnings(views: &[CertificateView], now: i64) -> Vec<String> {
    views.iter().flat_map(|v| v.warnings(now)).collect()
}

/// The certificates in force, read at start and reload, for the metrics
/// collector and `status`.
#[derive(Debug, Clone, Default)]
pub struct Certificates {
    views: Arc<RwLock<Vec<CertificateView>>>,
}

impl Certificates {
    /// New and empty, its expiry gauge registered in `registry`.
    pub fn register(registry: &mut Registry) -> Certificates {
        let c = Certificates::default();
        registry.register_collector(Box::new(ExpiryCollector(c.views.clone())));
        c
    }

    /// What the last (re)load read.
    pub fn views(&self) -> Vec<CertificateView> {
        self.views.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the files of `cfg` again (blocking file reads), logs each
    /// certificate and every warning, and puts the result in force.
    pub fn refresh(&self, cfg: &Config) -> Vec<CertificateView> {
        let mut next = inspect_configured(cfg);
        carry_lost_names(&self.views(), &mut next);
        let now = crate::queue::spool::now() as i64;
        for v in &next {
            if let Some(c) = &v.certificate {
                tracing::info!(
                    role = v.role.as_str(),
                    name = %v.name,
                    path = %v.path,
                    subject = %c.subject,
                    names = %names(c),
                    serial = %c.serial,
                    expires = %date(c.not_after),
                    purposes = %c.purposes.join(" "),
                    "certificate in force"
                );
            }
            for w in v.warnings(now) {
                tracing::warn!("{w}");
            }
        }
        *self.views.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
        next
    }
}

struct ExpiryCollector(Arc<RwLock<Vec<CertificateView>>>);

impl std::fmt::Debug for ExpiryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExpiryCollector")
    }
}

impl Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let views = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "certificate_expiry_timestamp_seconds",
            "End of validity (Unix seconds) of each configured certificate file as the last \
             (re)load read it; in a CA file the certificate expiring first",
            None,
            gauge.metric_type(),
        )?;
        for v in &views {
            let Some(c) = &v.certificate else { continue };
            let name = crate::ops::metrics::label(&v.name);
            let path = crate::ops::metrics::label(&v.path);
            let labels = [
                ("role", v.role.as_str()),
                ("name", name.as_str()),
                ("path", path.as_str()),
            ];
            ConstGauge::new(c.not_after).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// 2026-03-15 00:00 UTC.
    const NOW: i64 = 1_773_532_800;

    fn write(dir: &Path, stem: &str, names: &[&str], until: (i32, u8, u8), serial: u8) -> PathBuf {
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        p.not_before = rcgen::date_time_ymd(2026, 1, 1);
        p.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[serial]));
        let key = rcgen::KeyPair::generate().unwrap();
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, p.self_signed(&key).unwrap().pem()).unwrap();
        path
    }

    fn config(dir: &Path, extra: &str) -> Config {
        let d = dir.display();
        let text = format!(
            r#"
[filter]
enabled = false
[smtp]
enabled = true
listen = ["127.0.0.1:25"]
hostname = "edge.contoso.com"
accepted_domains = ["contoso.com"]
[smtp.tls]
certificate = "{d}/server.pem"
key = "{d}/server.key"
[[inbound_connectors]]
name = "internet"
[[outbound_connectors]]
name = "to-microsoft-365"
recipient_domains = ["*"]
smart_hosts = ["contoso-com.mail.protection.outlook.com"]
tls = "certificate-validation"
client_certificate = "{d}/client.pem"
client_key = "{d}/client.key"
tls_trust = "{d}/ca.pem"
{extra}
"#
        );
        Config::parse(&text, Path::new("edge.toml")).unwrap()
    }

    #[test]
    fn every_configured_file_is_read_with_its_role() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "server", &["edge.contoso.com"], (2026, 9, 1), 1);
        write(d, "client", &["edge.contoso.com"], (2026, 9, 2), 2);
        let a = std::fs::read_to_string(write(d, "ca1", &["CA one"], (2030, 1, 1), 3)).unwrap();
        let b = std::fs::read_to_string(write(d, "ca2", &["CA two"], (2028, 1, 1), 4)).unwrap();
        std::fs::write(d.join("ca.pem"), a + &b).unwrap();
        let v = inspect_configured(&config(d, ""));
        let roles: Vec<_> = v.iter().map(|v| (v.role, v.name.as_str())).collect();
        assert_eq!(
            roles,
            [
                (Role::Server, "smtp"),
                (Role::Client, "to-microsoft-365"),
                (Role::Trust, "to-microsoft-365")
            ]
        );
        assert_eq!(v[0].must_name.as_deref(), Some("edge.contoso.com"));
        assert_eq!(v[2].count, 2);
        let ca = v[2].certificate.as_ref().unwrap();
        assert_eq!(ca.subject, "CN=CA two", "the CA expiring first");
        assert!(warnings(&v, NOW).is_empty(), "{:?}", warnings(&v, NOW));
        assert!(
            v[0].line(NOW).contains("until 01 Sep 2026 ("),
            "{}",
            v[0].line(NOW)
        );
        assert!(v[0].line(NOW).contains("serverAuth"), "{}", v[0].line(NOW));
    }

    #[test]
    fn warns_before_expiry_when_expired_and_without_the_host_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "server", &["mail.contoso.com"], (2026, 4, 1), 1);
        write(d, "client", &["edge.contoso.com"], (2026, 3, 1), 2);
        write(d, "ca", &["CA"], (2030, 1, 1), 3);
        let v = inspect_configured(&config(d, ""));
        let w = warnings(&v, NOW).join("\n");
        assert!(
            w.contains("server certificate") && w.contains("(in 17 days)"),
            "{w}"
        );
        assert!(
            w.contains("does not name edge.contoso.com") && w.contains("TlsDomain"),
            "{w}"
        );
        assert!(
            w.contains("`to-microsoft-365` client certificate") && w.contains("EXPIRED"),
            "{w}"
        );
        assert_eq!(v[1].days_left(NOW), Some(-14));
        assert!(v[1].line(NOW).contains("(EXPIRED)"), "{}", v[1].line(NOW));
        // A wildcard covers the host name.
        write(d, "server", &["*.contoso.com"], (2026, 9, 1), 4);
        assert!(!inspect_configured(&config(d, ""))[0].name_mismatch());
    }

    #[test]
    fn an_unreadable_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "not PEM").unwrap();
        let v = inspect_configured(&config(dir.path(), ""));
        assert_eq!(v.len(), 3);
        assert!(
            v.iter()
                .all(|v| v.error.is_some() && v.certificate.is_none())
        );
        assert!(v[0].line(NOW).contains("unreadable"));
        assert!(warnings(&v, NOW)[0].contains("cannot be read"));
    }

    #[test]
    fn a_renewal_that_drops_a_name_is_remembered_until_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "server",
            &["edge.contoso.com", "mx.contoso.com"],
            (2026, 9, 1),
            1,
        );
        write(d, "client", &["edge.contoso.com"], (2026, 9, 1), 2);
        write(d, "ca", &["CA"], (2030, 1, 1), 3);
        let cfg = config(d, "");
        let certs = Certificates::default();
        certs.refresh(&cfg);
        write(d, "server", &["edge.contoso.com"], (2026, 12, 1), 4);
        let v = certs.refresh(&cfg);
        assert_eq!(v[0].lost_names, ["mx.contoso.com"]);
        assert!(warnings(&v, NOW)[0].contains("no longer names mx.contoso.com"));
        // Reloaded unchanged: still missing.
        assert_eq!(certs.refresh(&cfg)[0].lost_names, ["mx.contoso.com"]);
        write(
            d,
            "server",
            &["edge.contoso.com", "mx.contoso.com"],
            (2027, 1, 1),
            5,
        );
        assert!(certs.refresh(&cfg)[0].lost_names.is_empty());
    }

    #[test]
    fn the_gauge_has_one_series_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "server", &["edge.contoso.com"], (2026, 9, 1), 1);
        write(d, "ca", &["CA"], (2030, 1, 1), 3);
        let mut registry = crate::ops::metrics::registry();
        let certs = Certificates::register(&mut registry);
        certs.refresh(&config(d, ""));
        let text = crate::ops::metrics::encode(&registry);
        let ds = d.display();
        assert!(
            text.contains(&format!(
                "smtp_edge_certificate_expiry_timestamp_seconds{{role=\"server\",name=\"smtp\",path=\"{ds}/server.pem\"}} 1788220800"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{{role=\"trust\",name=\"to-microsoft-365\",path=\"{ds}/ca.pem\"}} 1893456000"
            )),
            "{text}"
        );
        assert!(
            !text.contains("role=\"client\""),
            "unreadable: no series\n{text}"
        );
    }
}
