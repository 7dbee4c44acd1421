//! Next-hop resolution for the sending side: smart-host addresses and the
//! MX records of a recipient domain (RFC 5321 §5.1, RFC 7505).
//!
//! [`Resolver`] asks the name servers of `[dns]` (or those of
//! /etc/resolv.conf) over UDP and TCP, with hickory-resolver's cache.
//! Every name is queried fully qualified, so no search list applies.
//!
//! # MX resolution ([`Resolver::mx`])
//!
//! 1. An address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) is its own
//!    next hop: no DNS query.
//! 2. MX records, lowest preference first, random order among equal
//!    preferences ([`order_mx`]).
//! 3. A single MX `0 .` is a null MX (RFC 7505): [`ResolveError::NullMx`] at
//!    once. A set whose only exchanges are `.` counts the same; a `.` among
//!    real exchanges (a broken zone, RFC 7505 §3 forbids it) is dropped.
//! 4. No MX records (NOERROR without answers, "NODATA"): the domain's own
//!    AAAA and A records are an implicit MX of preference 0 (RFC 5321 §5.1).
//!    A domain without MX, A and AAAA is [`ResolveError::NoAddress`].
//! 5. NXDOMAIN: [`ResolveError::NoSuchDomain`].
//! 6. Each MX host's AAAA and A records, looked up concurrently. A host
//!    without addresses is skipped (with a warning). When no host has an
//!    address: [`ResolveError::Temporary`] if any host's lookup failed
//!    (SERVFAIL, timeout: it may have addresses), else
//!    [`ResolveError::NoAddress`] — RFC 5321 §5.1 "if MX records are present,
//!    but none of them are usable … this situation MUST be reported as an
//!    error", and Postfix bounces it too.
//!
//! Addresses of one host alternate between the families, IPv6 first
//! (RFC 8305 §4): a host without IPv6 connectivity reaches an IPv4
//! address on the second try at the latest.
//!
//! # Status codes ([`ResolveError::status`])
//!
//! | error          | status  | why                                                        |
//! |----------------|---------|------------------------------------------------------------|
//! | `NullMx`       | 5.1.10  | RFC 7505 §4.1 ("Recipient address has null MX")             |
//! | `NoSuchDomain` | 5.1.2   | RFC 3463 X.1.2 bad destination system address               |
//! | `NoAddress`    | 5.4.4   | RFC 3463 X.4.4 unable to route; its example is a lookup returning only an SOA |
//! | `Temporary`    | 4.4.3   | RFC 3463 X.4.3 directory server failure                     |
//! | `Config`       | 4.3.5   | RFC 3463 X.3.5 system incorrectly configured               |
//!
//! A smart host ([`Resolver::smart_host`]) is our own configuration, not a
//! property of the recipient: every failure to resolve one is
//! [`ResolveError::Temporary`], so mail waits for the admin instead of
//! bouncing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::config::dns::Dns;

/// The SMTP port of MX hosts.
pub const SMTP_PORT: u16 = 25;

/// Why a next hop has no addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The domain publishes a null MX (RFC 7505): it accepts no mail.
    #[error("the domain accepts no mail (null MX, RFC 7505)")]
    NullMx,
    /// The domain does not exist (NXDOMAIN).
    #[error("the domain does not exist (NXDOMAIN)")]
    NoSuchDomain,
    /// The domain exists but names no host with an address.
    #[error("{0}")]
    NoAddress(String),
    /// A lookup failed in a way that may pass (SERVFAIL, REFUSED, timeout,
    /// network error), or a smart host did not resolve.
    #[error("temporary DNS failure: {0}")]
    Temporary(String),
    /// The resolver could not be set up (bad `[dns]` section, unreadable
    /// /etc/resolv.conf).
    #[error("DNS resolver configuration: {0}")]
    Config(String),
}

impl ResolveError {
    /// The enhanced status code (RFC 3463) as (class, subject, detail).
    pub fn status(&self) -> (u8, u16, u16) {
        match self {
            ResolveError::NullMx => (5, 1, 10),
            ResolveError::NoSuchDomain => (5, 1, 2),
            ResolveError::NoAddress(_) => (5, 4, 4),
            ResolveError::Temporary(_) => (4, 4, 3),
            ResolveError::Config(_) => (4, 3, 5),
        }
    }

    /// True when retrying cannot help: the message bounces.
    pub fn is_permanent(&self) -> bool {
        self.status().0 == 5
    }
}

/// One MX host and its addresses (port 25).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// Host name (lower case, no trailing dot); the IP address for an
    /// address literal.
    pub name: String,
    /// MX preference (0 for an implicit MX and an address literal).
    pub preference: u16,
    /// Addresses, IPv6 and IPv4 alternating, IPv6 first.
    pub addrs: Vec<SocketAddr>,
}

/// Sorts MX records by preference, shuffling records of equal preference
/// (RFC 5321 §5.1), and detects a null MX.
///
/// Names are returned lower case without the trailing dot; a repeated name
/// keeps its lowest preference. `Err(NullMx)` when the only exchange is `.`
/// (RFC 7505); a `.` among other exchanges is dropped. An empty input gives
/// an empty output (the caller falls back to the implicit MX).
pub fn order_mx<R: Rng + ?Sized>(
    records: Vec<(u16, String)>,
    rng: &mut R,
) -> Result<Vec<(u16, String)>, ResolveError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let mut hosts: Vec<(u16, String)> = records
        .into_iter()
        .map(|(p, n)| (p, normalize(&n)))
        .filter(|(_, n)| !n.is_empty())
        .collect();
    if hosts.is_empty() {
        return Err(ResolveError::NullMx);
    }
    hosts.sort();
    // Sorted by (preference, name): the first of a name has its lowest preference.
    let mut seen = std::collections::HashSet::new();
    hosts.retain(|(_, n)| seen.insert(n.clone()));
    hosts.shuffle(rng);
    // Stable: the shuffled order survives among equal preferences.
    hosts.sort_by_key(|(p, _)| *p);
    Ok(hosts)
}

/// Lower case, no trailing dot (`.` becomes empty).
fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Parses an SMTP address literal's inside: `192.0.2.1` or `IPv6:2001:db8::1`.
fn address_literal(inside: &str) -> Option<IpAddr> {
    match inside.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => {
            inside[5..].parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        }
        _ => inside.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// Alternates the families, IPv6 first.
fn interleave(v6: Vec<IpAddr>, v4: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// What one query said.
enum Answer<T> {
    /// Records of the asked type.
    Found(Vec<T>),
    /// The name exists, without records of that type.
    NoData,
    /// The name does not exist.
    NxDomain,
    /// No usable answer (SERVFAIL, REFUSED, timeout, network).
    Failed(String),
}

fn classify<T>(result: Result<Lookup, NetError>, pick: impl Fn(&RData) -> Option<T>) -> Answer<T> {
    match result {
        Ok(lookup) => {
            let found: Vec<T> = lookup
                .answers()
                .iter()
                .filter_map(|r| pick(&r.data))
                .collect();
            if found.is_empty() {
                Answer::NoData
            } else {
                Answer::Found(found)
            }
        }
        Err(e) if e.is_nx_domain() => Answer::NxDomain,
        Err(e) if e.is_no_records_found() => Answer::NoData,
        Err(e) => Answer::Failed(e.to_string()),
    }
}

/// Resolves next hops. Cheap to clone: clones share the cache.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver asking `cfg.nameservers` (UDP, then TCP for truncated
    /// answers), or the servers of /etc/resolv.conf when the list is empty;
    /// `cfg.timeout_seconds` per query attempt.
    pub fn new(cfg: &Dns) -> Result<Resolver, ResolveError> {
        let servers = cfg.servers().map_err(ResolveError::Config)?;
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| ResolveError::Config(format!("/etc/resolv.conf: {e}")))?
        } else {
            let name_servers = servers
                .iter()
                .map(|sa| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = sa.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = sa.port();
                    NameServerConfig::new(sa.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        builder.options_mut().timeout = Duration::from_secs(cfg.timeout_seconds.max(1));
        let inner = builder
            .build()
            .map_err(|e| ResolveError::Config(e.to_string()))?;
        Ok(Resolver { inner })
    }

    /// The hickory resolver underneath (for DKIM key lookups: the same
    /// servers, timeout and cache).
    pub fn hickory(&self) -> &TokioResolver {
        &self.inner
    }

    /// The addresses of a smart host, with its port: an IP address is
    /// itself; a name's AAAA and A records, alternating, IPv6 first. Every
    /// failure is [`ResolveError::Temporary`] (see the module documentation).
    pub async fn smart_host(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let name = normalize(host);
        let fqdn = to_name(&name).ok_or_else(|| {
            ResolveError::Temporary(format!("smart host `{name}` is not a valid name"))
        })?;
        match self.addresses(fqdn).await {
            Answer::Found(ips) => Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect()),
            Answer::NoData => Err(ResolveError::Temporary(format!(
                "smart host {name} has no AAAA or A record"
            ))),
            Answer::NxDomain => Err(ResolveError::Temporary(format!(
                "smart host {name} does not exist (NXDOMAIN)"
            ))),
            Answer::Failed(e) => Err(ResolveError::Temporary(format!("smart host {name}: {e}"))),
        }
    }

    /// The MX hosts of a recipient domain with their addresses (port 25), in
    /// the order to try them; see the module documentation.
    pub async fn mx(&self, domain: &str) -> Result<Vec<MxHost>, ResolveError> {
        let domain = normalize(domain);
        if let Some(inside) = domain.strip_prefix('[') {
            let ip = inside
                .strip_suffix(']')
                .and_then(address_literal)
                .ok_or_else(|| {
                    ResolveError::NoAddress(format!("`{domain}` is not a valid address literal"))
                })?;
            return Ok(vec![MxHost {
                name: ip.to_string(),
                preference: 0,
                addrs: vec![SocketAddr::new(ip, SMTP_PORT)],
            }]);
        }
        let Some(fqdn) = to_name(&domain) else {
            return Err(ResolveError::NoSuchDomain);
        };
        let records = match classify(self.inner.mx_lookup(fqdn.clone()).await, |d| match d {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
            _ => None,
        }) {
            Answer::Found(records) => records,
            Answer::NoData => return self.implicit_mx(domain, fqdn).await,
            Answer::NxDomain => return Err(ResolveError::NoSuchDomain),
            Answer::Failed(e) => {
                return Err(ResolveError::Temporary(format!("MX of {domain}: {e}")));
            }
        };
        let ordered = order_mx(records, &mut rand::rng())?;

        let mut lookups = tokio::task::JoinSet::new();
        for (i, (_, name)) in ordered.iter().enumerate() {
            let this = self.clone();
            let name = name.clone();
            lookups.spawn(async move {
                let answer = match to_name(&name) {
                    Some(n) => this.addresses(n).await,
                    None => Answer::NxDomain,
                };
                (i, answer)
            });
        }
        let mut answers: Vec<Option<Answer<IpAddr>>> = ordered.iter().map(|_| None).collect();
        while let Some(joined) = lookups.join_next().await {
            match joined {
                Ok((i, answer)) => answers[i] = Some(answer),
                Err(e) => {
                    return Err(ResolveError::Temporary(format!(
                        "MX host lookup of {domain}: {e}"
                    )));
                }
            }
        }

        let mut hosts = Vec::new();
        let mut failures = Vec::new();
        let mut temporary = false;
        for ((preference, name), answer) in ordered.into_iter().zip(answers) {
            match answer {
                Some(Answer::Found(ips)) => hosts.push(MxHost {
                    addrs: ips
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, SMTP_PORT))
                        .collect(),
                    name,
                    preference,
                }),
                Some(Answer::NoData) => failures.push(format!("{name}: no AAAA or A record")),
                Some(Answer::NxDomain) | None => {
                    failures.push(format!("{name}: does not exist (NXDOMAIN)"));
                }
                Some(Answer::Failed(e)) => {
                    temporary = true;
                    failures.push(format!("{name}: {e}"));
                }
            }
        }
        if !failures.is_empty() {
            tracing::warn!(
                domain = %domain,
                skipped = %failures.join("; "),
                "MX hosts without addresses skipped"
            );
        }
        if !hosts.is_empty() {
            return Ok(hosts);
        }
        let text = format!(
            "no MX host of {domain} has an address ({})",
            failures.join("; ")
        );
        Err(if temporary {
            ResolveError::Temporary(text)
        } else {
            ResolveError::NoAddress(text)
        })
    }

    /// The domain's own addresses as an MX of preference 0 (RFC 5321 §5.1).
    async fn implicit_mx(&self, domain: String, fqdn: Name) -> Result<Vec<MxHost>, ResolveError> {
        match self.addresses(fqdn).await {
            Answer::Found(ips) => Ok(vec![MxHost {
                addrs: ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, SMTP_PORT))
                    .collect(),
                name: domain,
                preference: 0,
            }]),
            Answer::NoData => Err(ResolveError::NoAddress(format!(
                "{domain} has no MX, AAAA or A record"
            ))),
            Answer::NxDomain => Err(ResolveError::NoSuchDomain),
            Answer::Failed(e) => Err(ResolveError::Temporary(format!(
                "AAAA/A of {domain} (no MX): {e}"
            ))),
        }
    }

    /// AAAA and A of a name, asked at the same time. Found when either
    /// family has addresses; else Failed when either lookup failed; else
    /// NxDomain when either says so; else NoData.
    async fn addresses(&self, name: Name) -> Answer<IpAddr> {
        let (v6, v4) = tokio::join!(
            self.inner.ipv6_lookup(name.clone()),
            self.inner.ipv4_lookup(name)
        );
        let v6 = classify(v6, |d| match d {
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        });
        let v4 = classify(v4, |d| match d {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        });
        match (v6, v4) {
            (Answer::Found(a), Answer::Found(b)) => Answer::Found(interleave(a, b)),
            (Answer::Found(a), _) | (_, Answer::Found(a)) => Answer::Found(a),
            (Answer::Failed(e), _) | (_, Answer::Failed(e)) => Answer::Failed(e),
            (Answer::NxDomain, _) | (_, Answer::NxDomain) => Answer::NxDomain,
            (Answer::NoData, Answer::NoData) => Answer::NoData,
        }
    }
}

/// The fully qualified name of a normalized domain; None when it cannot be
/// a DNS name.
fn to_name(domain: &str) -> Option<Name> {
    if domain.is_empty() {
        return None;
    }
    Name::from_utf8(format!("{domain}.")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::outbound::SmartHost;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn recs(list: &[(u16, &str)]) -> Vec<(u16, String)> {
        list.iter().map(|(p, n)| (*p, n.to_string())).collect()
    }

    #[test]
    fn order_by_preference_and_normalize() {
        let mut rng = StdRng::seed_from_u64(1);
        let got = order_mx(
            recs(&[(30, "C.example."), (10, "a.example."), (20, "B.Example")]),
            &mut rng,
        )
        .unwrap();
        assert_eq!(
            got,
            recs(&[(10, "a.example"), (20, "b.example"), (30, "c.example")])
        );
        assert_eq!(order_mx(Vec::new(), &mut rng).unwrap(), Vec::new());
    }

    #[test]
    fn equal_preferences_are_shuffled() {
        let mut rng = StdRng::seed_from_u64(7);
        let input = recs(&[
            (20, "b1.example."),
            (10, "a.example."),
            (20, "b2.example."),
            (20, "b3.example."),
            (30, "c.example."),
        ]);
        let mut firsts = std::collections::HashSet::new();
        let mut orders = std::collections::HashSet::new();
        for _ in 0..200 {
            let got = order_mx(input.clone(), &mut rng).unwrap();
            assert_eq!(got.len(), 5);
            assert_eq!(got[0], (10, "a.example".to_string()));
            assert_eq!(got[4], (30, "c.example".to_string()));
            assert!(got[1..4].iter().all(|(p, _)| *p == 20));
            firsts.insert(got[1].1.clone());
            orders.insert(got[1..4].to_vec());
        }
        assert_eq!(
            firsts.len(),
            3,
            "each equal-preference host comes first sometimes"
        );
        assert_eq!(orders.len(), 6, "all 3! orders occur");
    }

    #[test]
    fn duplicates_keep_the_lowest_preference() {
        let mut rng = StdRng::seed_from_u64(3);
        let got = order_mx(
            recs(&[
                (20, "mx.example."),
                (5, "MX.example"),
                (10, "other.example."),
            ]),
            &mut rng,
        )
        .unwrap();
        assert_eq!(got, recs(&[(5, "mx.example"), (10, "other.example")]));
    }

    #[test]
    fn null_mx() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            order_mx(recs(&[(0, ".")]), &mut rng),
            Err(ResolveError::NullMx)
        );
        // Only `.` exchanges: nothing to deliver to either.
        assert_eq!(
            order_mx(recs(&[(10, "."), (20, ".")]), &mut rng),
            Err(ResolveError::NullMx)
        );
        // A `.` among real exchanges is dropped.
        assert_eq!(
            order_mx(recs(&[(0, "."), (10, "mx.example.")]), &mut rng).unwrap(),
            recs(&[(10, "mx.example")])
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(ResolveError::NullMx.status(), (5, 1, 10));
        assert_eq!(ResolveError::NoSuchDomain.status(), (5, 1, 2));
        assert_eq!(ResolveError::NoAddress(String::new()).status(), (5, 4, 4));
        assert_eq!(ResolveError::Temporary(String::new()).status(), (4, 4, 3));
        assert_eq!(ResolveError::Config(String::new()).status(), (4, 3, 5));
        assert!(ResolveError::NullMx.is_permanent());
        assert!(ResolveError::NoSuchDomain.is_permanent());
        assert!(ResolveError::NoAddress(String::new()).is_permanent());
        assert!(!ResolveError::Temporary(String::new()).is_permanent());
        assert!(!ResolveError::Config(String::new()).is_permanent());
    }

    #[test]
    fn literals_and_interleaving() {
        assert_eq!(
            address_literal("192.0.2.1"),
            Some("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            address_literal("IPv6:2001:db8::1"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            address_literal("ipv6:2001:DB8::1"),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(address_literal("2001:db8::1"), None);
        assert_eq!(address_literal("IPv6:192.0.2.1"), None);
        assert_eq!(address_literal("example.com"), None);

        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            interleave(
                vec![ip("2001:db8::1"), ip("2001:db8::2")],
                vec![ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3")]
            ),
            vec![
                ip("2001:db8::1"),
                ip("192.0.2.1"),
                ip("2001:db8::2"),
                ip("192.0.2.2"),
                ip("192.0.2.3")
            ]
        );
        assert_eq!(
            interleave(vec![], vec![ip("192.0.2.1")]),
            vec![ip("192.0.2.1")]
        );
    }

    #[tokio::test]
    async fn literal_domains_and_ip_smart_hosts_need_no_dns() {
        // A server nobody answers on: any query would fail.
        let r = Resolver::new(&Dns {
            nameservers: vec!["127.0.0.1:9".into()],
            timeout_seconds: 1,
        })
        .unwrap();
        let hosts = r.mx("[192.0.2.1]").await.unwrap();
        assert_eq!(
            hosts,
            vec![MxHost {
                name: "192.0.2.1".into(),
                preference: 0,
                addrs: vec!["192.0.2.1:25".parse().unwrap()],
            }]
        );
        let hosts = r.mx("[IPv6:2001:db8::1]").await.unwrap();
        assert_eq!(hosts[0].addrs, vec!["[2001:db8::1]:25".parse().unwrap()]);
        assert!(matches!(
            r.mx("[not an address]").await,
            Err(ResolveError::NoAddress(_))
        ));
        let sh = SmartHost::parse("[2001:db8::25]:587").unwrap();
        assert_eq!(
            r.smart_host(&sh.host, sh.port).await.unwrap(),
            vec!["[2001:db8::25]:587".parse().unwrap()]
        );
        let sh = SmartHost::parse("192.0.2.25").unwrap();
        assert_eq!(
            r.smart_host(&sh.host, sh.port).await.unwrap(),
            vec!["192.0.2.25:25".parse().unwrap()]
        );
    }

    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: T) {}
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let r = Resolver::new(&Dns::default()).or_else(|_| {
            Resolver::new(&Dns {
                nameservers: vec!["127.0.0.1:9".into()],
                timeout_seconds: 1,
            })
        });
        let r = r.unwrap();
        let sh = SmartHost::parse("192.0.2.1").unwrap();
        send(r.mx("example.test"));
        send(r.smart_host(&sh.host, sh.port));
    }

    #[test]
    fn bad_configuration() {
        let e = Resolver::new(&Dns {
            nameservers: vec!["ns.example".into()],
            timeout_seconds: 5,
        })
        .unwrap_err();
        assert!(matches!(e, ResolveError::Config(_)), "{e:?}");
    }
}
