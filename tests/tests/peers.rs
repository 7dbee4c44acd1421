//! TLS stacks smtp-edge did not write, as real MTAs on loopback.
//!
//! Sending to smtp-edge: Postfix 3.7 (OpenSSL 3.0) and Exim 4.96 (GnuTLS
//! 3.7; Debian's package run privately, see `smtp_edge_tests::exim`)
//! deliver through a certificate-based inbound connector, each presenting a
//! client chain of the 2026 public profile — a leaf with id-kp-serverAuth
//! only under an issuing CA restricted to id-kp-serverAuth — for TLS 1.2
//! and 1.3, RSA 2048 and ECDSA P-256, the chain file in order (leaf,
//! issuing CA) and out of order (leaf, root, issuing CA: the CAs reversed,
//! the root included). Every combination is delivered, the envelope
//! records the version, and the Received field names the verified
//! certificate with `purpose=serverAuth`.
//!
//! smtp-edge sending to them: Postfix (`smtpd_tls_req_ccert = yes`,
//! `smtpd_tls_CAfile`) and Exim (`tls_verify_hosts = *`,
//! `tls_verify_certificates`) as next hops that require a client
//! certificate, TLS 1.2 and 1.3 (each next hop limited to one), smtp-edge
//! presenting (RSA 2048 throughout) a clientAuth chain (leaf and issuing CA
//! with serverAuth and clientAuth, as public CAs issued them before 2026),
//! a 2026 chain (serverAuth only), or, as the control that the next hop
//! checks at all, a clientAuth chain from a CA it does not trust. Measured
//! with Debian 12's Postfix 3.7.11 on OpenSSL 3.0.19 and Exim 4.96 on
//! GnuTLS 3.7.9, and asserted:
//!
//! | next hop | client chain | TLS 1.2 | TLS 1.3 |
//! |---|---|---|---|
//! | Postfix / OpenSSL | clientAuth | delivered | delivered |
//! | Postfix / OpenSSL | 2026 serverAuth-only | deferred: `421 4.7.1 … Client certificate not trusted` | same |
//! | Postfix / OpenSSL | untrusted CA | deferred: the same 421 | same |
//! | Exim / GnuTLS | clientAuth | delivered (`CV=yes`) | delivered |
//! | Exim / GnuTLS | 2026 serverAuth-only | delivered (`CV=yes`) | delivered |
//! | Exim / GnuTLS | untrusted CA | deferred: handshake alert `BadCertificate` | same |
//!
//! Postfix completes the handshake, logs `certificate verification failed
//! for …: not designated for use as a client certificate` (OpenSSL checks
//! the purpose "SSL client" against the leaf's and the CAs' extended key
//! usage) and answers the EHLO after STARTTLS with 421: smtp-edge defers
//! (a 4xx, the message waits for a retry) and never sends the message in
//! the clear. Exim's GnuTLS verification asks for no key purpose, so the
//! serverAuth-only chain verifies as well as the clientAuth one. A next
//! hop on OpenSSL that requires client certificates thus refuses the 2026
//! public profile until it is told to trust serverAuth certificates from
//! clients (Postfix 3.12's `tls_trust_server_ccerts`, not in Debian 12):
//! use a chain with clientAuth for such next hops.
//!
//! Each test runs its own daemon, its own peers (stopped on drop) and
//! certificates; every wait is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use smtp_edge::queue::spool::Spooled;
use smtp_edge_tests::bench::set_mode;
use smtp_edge_tests::certs::{Ca, KeyAlg, Leaf, Profile2026};
use smtp_edge_tests::edge::{Edge, LOOPBACK_RELAY, Setup, outbound, split_received};
use smtp_edge_tests::exim::Exim;
use smtp_edge_tests::ports::free_port;
use smtp_edge_tests::postfix::{self, ClientRoute, MailServer};
use smtp_edge_tests::smtp::{message, send, wait_for};

/// The name the sending MTAs' certificates carry.
const PARTNER: &str = "mta.fabrikam.test";

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Tls12,
    Tls13,
}

impl Version {
    const BOTH: [Version; 2] = [Version::Tls12, Version::Tls13];

    /// As smtp-edge's envelope records it.
    fn recorded(self) -> &'static str {
        match self {
            Version::Tls12 => "TLSv1.2",
            Version::Tls13 => "TLSv1.3",
        }
    }

    /// Postfix's protocol setting allowing this version only (smtp-edge
    /// speaks nothing older than 1.2).
    fn postfix(self) -> &'static str {
        match self {
            Version::Tls12 => "<=TLSv1.2",
            Version::Tls13 => ">=TLSv1.3",
        }
    }

    /// A GnuTLS priority string allowing this version only.
    fn gnutls(self) -> &'static str {
        match self {
            Version::Tls12 => "NORMAL:-VERS-ALL:+VERS-TLS1.2",
            Version::Tls13 => "NORMAL:-VERS-ALL:+VERS-TLS1.3",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Version::Tls12 => "t12",
            Version::Tls13 => "t13",
        }
    }
}

/// How the chain file is laid out after the leaf.
#[derive(Debug, Clone, Copy)]
enum Order {
    /// The issuing CA.
    InOrder,
    /// The root, then the issuing CA.
    ReversedWithRoot,
}

/// One sending case: its recipient's local part names it.
#[derive(Debug, Clone, Copy)]
struct Case {
    version: Version,
    alg: KeyAlg,
    order: Order,
}

impl Case {
    fn all() -> Vec<Case> {
        let mut v = Vec::new();
        for version in Version::BOTH {
            for alg in [KeyAlg::Rsa2048, KeyAlg::EcdsaP256] {
                for order in [Order::InOrder, Order::ReversedWithRoot] {
                    v.push(Case {
                        version,
                        alg,
                        order,
                    });
                }
            }
        }
        v
    }

    fn name(&self) -> String {
        let alg = match self.alg {
            KeyAlg::Rsa2048 => "rsa",
            KeyAlg::EcdsaP256 => "ecdsa",
        };
        let order = match self.order {
            Order::InOrder => "inorder",
            Order::ReversedWithRoot => "reversed",
        };
        format!("{}_{alg}_{order}", self.version.tag())
    }

    fn rcpt(&self) -> String {
        format!("{}@contoso.com", self.name())
    }
}

/// The 2026 hierarchies (RSA and ECDSA), a partner leaf of each, and the
/// chain files of every layout, in `dir`.
struct Chains {
    rsa: Profile2026,
    ecdsa: Profile2026,
    dir: PathBuf,
    rsa_leaf: Leaf,
    ecdsa_leaf: Leaf,
}

impl Chains {
    fn new(dir: &Path) -> Chains {
        let rsa = Profile2026::with_alg(KeyAlg::Rsa2048);
        let ecdsa = Profile2026::with_alg(KeyAlg::EcdsaP256);
        let rsa_leaf = rsa.leaf_with(&[PARTNER], KeyAlg::Rsa2048);
        let ecdsa_leaf = ecdsa.leaf_with(&[PARTNER], KeyAlg::EcdsaP256);
        Chains {
            rsa,
            ecdsa,
            dir: dir.to_path_buf(),
            rsa_leaf,
            ecdsa_leaf,
        }
    }

    /// Both roots in one file (the connector's `client_cert_trust`).
    fn roots(&self) -> PathBuf {
        let path = self.dir.join("roots-2026.pem");
        std::fs::write(
            &path,
            format!("{}{}", self.rsa.root.pem, self.ecdsa.root.pem),
        )
        .expect("write roots");
        path
    }

    /// The chain file and key of `case` (written once per layout).
    fn files(&self, case: &Case) -> (PathBuf, PathBuf) {
        let (profile, leaf) = match case.alg {
            KeyAlg::Rsa2048 => (&self.rsa, &self.rsa_leaf),
            KeyAlg::EcdsaP256 => (&self.ecdsa, &self.ecdsa_leaf),
        };
        let cas: Vec<&Ca> = match case.order {
            Order::InOrder => vec![&profile.issuing],
            Order::ReversedWithRoot => vec![&profile.root, &profile.issuing],
        };
        let mut pem = leaf.cert_pem.clone();
        for ca in cas {
            pem.push_str(&ca.pem);
        }
        let stem = case.name()[4..].to_string();
        let (chain, key) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        std::fs::write(&chain, pem).expect("write chain");
        std::fs::write(&key, &leaf.key_pem).expect("write key");
        (chain, key)
    }
}

/// smtp-edge in `dir` with one certificate-based connector for PARTNER,
/// trusting `roots`.
fn receiving_edge(dir: tempfile::TempDir, roots: &Path) -> Edge {
    let connectors = format!(
        "[[inbound_connectors]]\nname = \"partners\"\nrequire_tls = true\n\
         client_cert_names = [\"{PARTNER}\"]\nclient_cert_trust = \"{}\"\n",
        roots.display()
    );
    Edge::start_in(
        dir,
        Setup {
            connectors: &connectors,
            ..Setup::default()
        },
    )
}

/// Waits until every case's message is in smtp-edge's spool (at most 30 s)
/// and checks each: the version, the verified certificate and its purpose
/// in the envelope and the Received field.
fn check_spooled(edge: &Edge, cases: &[Case], peer: &str, log: &dyn Fn() -> String) {
    let spooled: Vec<Spooled> =
        wait_for(&format!("{} messages from {peer}", cases.len()), 30, || {
            let ids = edge.incoming();
            if ids.len() >= cases.len() {
                Ok(ids.iter().map(|id| edge.message(id)).collect())
            } else {
                Err(format!(
                    "{} of {}\n{}\n{}",
                    ids.len(),
                    cases.len(),
                    log(),
                    edge.log()
                ))
            }
        });
    assert_eq!(spooled.len(), cases.len());
    for case in cases {
        let what = format!("{peer} {}", case.name());
        let m = spooled
            .iter()
            .find(|m| {
                m.envelope
                    .recipients
                    .iter()
                    .any(|r| r.address == case.rcpt())
            })
            .unwrap_or_else(|| panic!("{what}: not spooled"));
        let tls = m.envelope.tls.clone().expect("TLS in the envelope");
        assert_eq!(tls.version, case.version.recorded(), "{what}");
        let subject = tls
            .client_cert
            .clone()
            .expect("verified client certificate");
        assert!(subject.contains(PARTNER), "{what}: {subject}");
        assert_eq!(
            tls.client_cert_purpose.as_deref(),
            Some("serverAuth"),
            "{what}"
        );
        assert_eq!(m.envelope.connector, "partners", "{what}");
        let (received, _) = split_received(m);
        assert!(
            received.contains(&format!(
                "client-certificate=\"{subject}\" purpose=serverAuth)"
            )),
            "{what}: {received}"
        );
        eprintln!(
            "{what}: spooled, {}, {subject}, purpose=serverAuth",
            tls.version
        );
    }
}

#[test]
fn postfix_delivers_2026_chains_through_the_certificate_connector() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chains = Chains::new(dir.path());
    let roots = chains.roots();
    let cases = Case::all();
    let files: Vec<(PathBuf, PathBuf)> = cases.iter().map(|c| chains.files(c)).collect();
    let pf_dir = dir.path().join("postfix");
    let edge_dir = tempfile::tempdir().expect("tempdir");
    let edge = receiving_edge(edge_dir, &roots);
    let rcpts: Vec<String> = cases.iter().map(Case::rcpt).collect();
    let routes: Vec<ClientRoute> = cases
        .iter()
        .zip(&files)
        .zip(&rcpts)
        .map(|((case, (chain, key)), rcpt)| ClientRoute {
            rcpt,
            next_hop: edge.addr(smtp_edge_tests::edge::V4),
            key,
            chain,
            protocols: case.version.postfix(),
        })
        .collect();
    let pf = postfix::relay_client(&pf_dir, PARTNER, &routes).expect("Postfix");
    for case in &cases {
        send(
            pf.addr.port(),
            "alice@fabrikam.test",
            &[&case.rcpt()],
            &message("alice@fabrikam.test", &case.rcpt(), &case.name()),
        );
    }
    check_spooled(&edge, &cases, "Postfix", &|| pf.log_text());
    let log = pf.log_text();
    assert_eq!(log.matches("status=sent").count(), cases.len(), "{log}");
}

/// Exim's configuration for one sending case: everything to smtp-edge on
/// `port`, TLS required, the chain and key presented.
fn exim_sender_config(exim: &Exim, port: u16, case: &Case, chain: &Path, key: &Path) -> String {
    format!(
        "{base}\nbegin routers\n\
         edge:\n  driver = manualroute\n  domains = *\n  route_list = * 127.0.0.1\n  \
         self = send\n  transport = to_edge\n\n\
         begin transports\n\
         to_edge:\n  driver = smtp\n  port = {port}\n  allow_localhost\n  \
         hosts_require_tls = *\n  tls_certificate = {chain}\n  tls_privatekey = {key}\n  \
         tls_require_ciphers = {priority}\n  helo_data = {PARTNER}\n\n\
         begin retry\n* * F,1h,10m\n",
        base = exim.base_config(PARTNER),
        chain = chain.display(),
        key = key.display(),
        priority = case.version.gnutls(),
    )
}

#[test]
fn exim_delivers_2026_chains_through_the_certificate_connector() {
    let dir = tempfile::tempdir().expect("tempdir");
    set_mode(dir.path(), 0o711).expect("chmod");
    let chains = Chains::new(dir.path());
    let roots = chains.roots();
    let cases = Case::all();
    let edge = receiving_edge(tempfile::tempdir().expect("tempdir"), &roots);
    let exim = Exim::new(&dir.path().join("exim")).expect("Exim");
    for case in &cases {
        let (chain, key) = chains.files(case);
        let chain = exim
            .install(&chain, &format!("{}.pem", case.name()))
            .expect("chain");
        let key = exim
            .install(&key, &format!("{}.key", case.name()))
            .expect("key");
        let conf = exim
            .write_config(
                &format!("{}.conf", case.name()),
                &exim_sender_config(&exim, edge.port, case, &chain, &key),
            )
            .expect("config");
        let t = exim
            .send(
                &conf,
                "alice@fabrikam.test",
                &case.rcpt(),
                &message("alice@fabrikam.test", &case.rcpt(), &case.name()),
            )
            .expect("exim -odf");
        assert!(
            t.ok,
            "{}: {}\n{}\n{}",
            case.name(),
            t.all(),
            exim.main_log(),
            edge.log()
        );
    }
    check_spooled(&edge, &cases, "Exim", &|| exim.main_log());
    let log = exim.main_log();
    assert_eq!(log.matches(" Completed").count(), cases.len(), "{log}");
}

/// What smtp-edge presents to the next hops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    /// Leaf and issuing CA with serverAuth and clientAuth (public CAs
    /// before 2026).
    ClientAuth,
    /// The 2026 profile: serverAuth only, leaf and issuing CA.
    ServerAuthOnly,
    /// A clientAuth chain from a CA the next hop does not trust (the
    /// control: the next hop does check).
    Untrusted,
}

/// A next hop that requires a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Postfix,
    Exim,
}

/// One outbound route: its recipient domain names it.
#[derive(Debug, Clone, Copy)]
struct Route {
    peer: Peer,
    version: Version,
    profile: Profile,
}

/// What became of a route's message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// In the next hop's mailbox, gone from smtp-edge's queue.
    Delivered,
    /// Still queued, with this error.
    Deferred(String),
}

impl Route {
    const PROFILES: [Profile; 3] = [
        Profile::ClientAuth,
        Profile::ServerAuthOnly,
        Profile::Untrusted,
    ];

    fn all() -> Vec<Route> {
        let mut v = Vec::new();
        for peer in [Peer::Postfix, Peer::Exim] {
            for version in Version::BOTH {
                for profile in Route::PROFILES {
                    v.push(Route {
                        peer,
                        version,
                        profile,
                    });
                }
            }
        }
        v
    }

    fn domain(&self) -> String {
        let profile = match self.profile {
            Profile::ClientAuth => "clientauth",
            Profile::ServerAuthOnly => "serverauth",
            Profile::Untrusted => "untrusted",
        };
        format!("{profile}.{}", hop_name(self.peer, self.version))
    }

    fn rcpt(&self) -> String {
        format!("bob@{}", self.domain())
    }

    /// What the next hop does (measured; see the module's table).
    fn expected(&self) -> Option<&'static str> {
        match (self.peer, self.profile) {
            (_, Profile::ClientAuth) | (Peer::Exim, Profile::ServerAuthOnly) => None,
            (Peer::Postfix, _) => Some("421 4.7.1"),
            (Peer::Exim, Profile::Untrusted) => Some("fatal alert: BadCertificate"),
        }
    }
}

/// The next hop's name (its certificate's, and `tls_domain`).
fn hop_name(peer: Peer, version: Version) -> String {
    let peer = match peer {
        Peer::Postfix => "postfix",
        Peer::Exim => "exim",
    };
    format!("mx-{}.{peer}.test", version.tag())
}

/// smtp-edge's client chains (certificate and key files) and the roots the
/// next hops trust for client certificates, in `d`.
struct Identities {
    client_auth: (PathBuf, PathBuf),
    server_auth: (PathBuf, PathBuf),
    untrusted: (PathBuf, PathBuf),
    client_roots: PathBuf,
}

impl Identities {
    fn new(d: &Path) -> Identities {
        let both = [
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // RSA, as public CAs issue them.
        let old_root = Ca::with_ekus("Public TLS Root 2020", None, &[], KeyAlg::Rsa2048);
        let old_issuing = Ca::with_ekus(
            "Public TLS CA 2020",
            Some(&old_root),
            &both,
            KeyAlg::Rsa2048,
        );
        let client_auth =
            Leaf::with_ekus(&["edge.contoso.com"], &old_issuing, &both, KeyAlg::Rsa2048)
                .with_chain(&[&old_issuing])
                .write(d, "clientauth");
        let p2026 = Profile2026::new();
        let server_auth = p2026
            .server_leaf(&["edge.contoso.com"])
            .write(d, "serverauth");
        let stranger = Ca::new("Unknown CA");
        let untrusted = Leaf::with_ekus(&["edge.contoso.com"], &stranger, &both, KeyAlg::EcdsaP256)
            .write(d, "untrusted");
        let client_roots = d.join("client-roots.pem");
        std::fs::write(&client_roots, format!("{}{}", old_root.pem, p2026.root.pem))
            .expect("roots");
        Identities {
            client_auth,
            server_auth,
            untrusted,
            client_roots,
        }
    }

    fn of(&self, profile: Profile) -> &(PathBuf, PathBuf) {
        match profile {
            Profile::ClientAuth => &self.client_auth,
            Profile::ServerAuthOnly => &self.server_auth,
            Profile::Untrusted => &self.untrusted,
        }
    }
}

/// Exim's configuration as a next hop on 127.0.0.1 requiring a client
/// certificate that verifies against `client_ca`, for `version` only.
fn exim_server_config(exim: &Exim, version: Version, cert: &Path, key: &Path, ca: &Path) -> String {
    format!(
        "{base}local_interfaces = 127.0.0.1\n\
         tls_advertise_hosts = *\ntls_certificate = {cert}\ntls_privatekey = {key}\n\
         tls_verify_hosts = *\ntls_verify_certificates = {ca}\n\
         tls_require_ciphers = {priority}\n\
         acl_smtp_rcpt = check_rcpt\n\n\
         begin acl\ncheck_rcpt:\n  accept encrypted = *\n  deny message = TLS required\n\n\
         begin routers\ninbox:\n  driver = accept\n  transport = maildir\n\n\
         begin transports\nmaildir:\n  driver = appendfile\n  directory = {dir}/maildir\n  \
         maildir_format\n  user = Debian-exim\n  group = Debian-exim\n  envelope_to_add\n\n\
         begin retry\n* * F,1h,10m\n",
        base = exim.base_config(&hop_name(Peer::Exim, version)),
        cert = cert.display(),
        key = key.display(),
        ca = ca.display(),
        priority = version.gnutls(),
        dir = exim.dir.display(),
    )
}

/// The next hops, one per peer and version, each requiring a client
/// certificate that chains to `ids.client_roots`.
struct Hops {
    postfix: Vec<(Version, PathBuf, postfix::Postfix)>,
    exim: Vec<(Version, Exim)>,
    addrs: Vec<(Peer, Version, SocketAddr)>,
}

impl Hops {
    fn start(d: &Path, hop_ca: &Ca, ids: &Identities) -> Hops {
        let mut hops = Hops {
            postfix: Vec::new(),
            exim: Vec::new(),
            addrs: Vec::new(),
        };
        for version in Version::BOTH {
            let name = hop_name(Peer::Postfix, version);
            let cert = Leaf::new(&[&name], Some(hop_ca), false).write(d, &name);
            let dir = d.join(&name);
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let domains: Vec<String> = Route::PROFILES
                .iter()
                .map(|&profile| {
                    Route {
                        peer: Peer::Postfix,
                        version,
                        profile,
                    }
                    .domain()
                })
                .collect();
            let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
            let pf = postfix::mail_server(
                &dir,
                addr,
                &MailServer {
                    hostname: &name,
                    domains: &domains,
                    cert: (&cert.0, &cert.1),
                    client_ca: &ids.client_roots,
                    require_client_cert: true,
                    networks: "192.0.2.0/24",
                },
            )
            .expect("Postfix next hop");
            let only = version.postfix();
            pf.configure(&[
                &format!("smtpd_tls_protocols = {only}"),
                &format!("smtpd_tls_mandatory_protocols = {only}"),
            ])
            .expect("postconf");
            hops.postfix.push((version, dir, pf));
            hops.addrs.push((Peer::Postfix, version, addr));
        }
        for version in Version::BOTH {
            let name = hop_name(Peer::Exim, version);
            let cert = Leaf::new(&[&name], Some(hop_ca), false).write(d, &name);
            let mut exim = Exim::new(&d.join(&name)).expect("Exim");
            let (c, k, ca) = (
                exim.install(&cert.0, "server.pem").expect("cert"),
                exim.install(&cert.1, "server.key").expect("key"),
                exim.install(&ids.client_roots, "client-roots.pem")
                    .expect("CA"),
            );
            let conf = exim
                .write_config(
                    "server.conf",
                    &exim_server_config(&exim, version, &c, &k, &ca),
                )
                .expect("config");
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            exim.serve(&conf, addr).expect("Exim next hop");
            hops.exim.push((version, exim));
            hops.addrs.push((Peer::Exim, version, addr));
        }
        hops
    }

    fn addr(&self, route: &Route) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(p, v, _)| *p == route.peer && *v == route.version)
            .map(|(.., a)| *a)
            .expect("next hop")
    }

    /// The messages in the route's next hop's mailbox.
    fn mailbox(&self, route: &Route) -> Vec<String> {
        match route.peer {
            Peer::Postfix => self
                .postfix
                .iter()
                .find(|(v, ..)| *v == route.version)
                .map(|(_, dir, _)| postfix::mailbox(dir))
                .unwrap_or_default(),
            Peer::Exim => self
                .exim
                .iter()
                .find(|(v, _)| *v == route.version)
                .map(|(_, e)| e.maildir())
                .unwrap_or_default(),
        }
    }

    /// The log of the route's next hop.
    fn log(&self, route: &Route) -> String {
        match route.peer {
            Peer::Postfix => self
                .postfix
                .iter()
                .find(|(v, ..)| *v == route.version)
                .map(|(.., pf)| pf.log_text())
                .unwrap_or_default(),
            Peer::Exim => self
                .exim
                .iter()
                .find(|(v, _)| *v == route.version)
                .map(|(_, e)| e.main_log())
                .unwrap_or_default(),
        }
    }
}

#[test]
fn next_hops_that_require_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    set_mode(dir.path(), 0o711).expect("chmod");
    let d = dir.path();
    let hop_ca = Ca::new("Next hop CA");
    let hop_ca_file = hop_ca.write(&d.join("hop-ca.pem"));
    let ids = Identities::new(d);
    let hops = Hops::start(d, &hop_ca, &ids);
    let routes = Route::all();
    let mut out = String::new();
    for route in &routes {
        let (cert, key) = ids.of(route.profile);
        out.push_str(&outbound(
            &route.domain().replace('.', "-"),
            &[&route.domain()],
            &[hops.addr(route).to_string()],
            &format!(
                "tls = \"domain-validation\"\ntls_domain = \"{}\"\ntls_trust = \"{}\"\n\
                 client_certificate = \"{}\"\nclient_key = \"{}\"\n",
                hop_name(route.peer, route.version),
                hop_ca_file.display(),
                cert.display(),
                key.display()
            ),
        ));
    }
    let edge = Edge::start(Setup {
        connectors: LOOPBACK_RELAY,
        outbound: &out,
        queue: "retry_schedule = [600]",
        ..Setup::default()
    });
    for route in &routes {
        send(
            edge.port,
            "alice@contoso.com",
            &[&route.rcpt()],
            &message("alice@contoso.com", &route.rcpt(), &route.domain()),
        );
    }
    // Each message is either in its next hop's mailbox (and gone from the
    // queue) or queued with the error of its first attempt.
    let outcomes: Vec<Outcome> = wait_for("every delivery settled", 40, || {
        let q = edge.queue();
        let mut v = Vec::new();
        for route in &routes {
            let subject = format!("Subject: {}", route.domain());
            let queued = q
                .iter()
                .find(|m| m["recipients"][0][0] == route.rcpt().as_str());
            let delivered = hops.mailbox(route).iter().any(|m| m.contains(&subject));
            match (queued, delivered) {
                (None, true) => v.push(Outcome::Delivered),
                (Some(m), false) if m["recipients"][0][1]["last_error"].is_string() => v.push(
                    Outcome::Deferred(m["recipients"][0][1]["last_error"].to_string()),
                ),
                _ => return Err(format!("{route:?} not settled\n{q:#?}\n{}", edge.log())),
            }
        }
        Ok(v)
    });
    for (route, outcome) in routes.iter().zip(&outcomes) {
        eprintln!("{route:?}: {outcome:?}");
        let log = hops.log(route);
        let what = format!("{route:?}: {outcome:?}\n{log}");
        match route.expected() {
            None => {
                assert_eq!(outcome, &Outcome::Delivered, "{what}");
                let subject = format!("Subject: {}", route.domain());
                let mail = hops.mailbox(route);
                let m = mail
                    .iter()
                    .find(|m| m.contains(&subject))
                    .expect("in the mailbox");
                check_hop_received(route, m, &log);
            }
            Some(reply) => match outcome {
                Outcome::Deferred(err) => assert!(err.contains(reply), "{what}"),
                Outcome::Delivered => panic!("delivered: {what}"),
            },
        }
    }
    // Why each refusal: the next hop's own words.
    for (_, _, pf) in &hops.postfix {
        let log = pf.log_text();
        assert!(
            log.contains("certificate verification failed for unknown[127.0.0.1]: not designated for use as a client certificate"),
            "{log}"
        );
        assert_eq!(
            log.matches(
                "NOQUEUE: abort: TLS from unknown[127.0.0.1]: Client certificate not trusted"
            )
            .count(),
            2,
            "{log}"
        );
    }
    for (_, exim) in &hops.exim {
        let log = exim.main_log();
        assert_eq!(
            log.matches("(certificate verification failed): certificate invalid")
                .count(),
            1,
            "{log}"
        );
    }
}

/// The next hop's trace of a delivered message: its Received field shows
/// the TLS version and the verified client certificate; Exim's log the
/// verified certificate (`CV=yes`) too.
fn check_hop_received(route: &Route, message: &str, log: &str) {
    let what = format!("{route:?}\n{message}\n{log}");
    match route.peer {
        Peer::Postfix => {
            let version = route.version.recorded();
            assert!(
                message.contains(&format!("(using {version} with cipher")),
                "{what}"
            );
            assert!(
                message.contains("(Client CN \"edge.contoso.com\""),
                "{what}"
            );
            assert!(message.contains("(verified OK)"), "{what}");
        }
        Peer::Exim => {
            let version = match route.version {
                Version::Tls12 => "TLS1.2",
                Version::Tls13 => "TLS1.3",
            };
            assert!(message.contains(&format!("({version}) tls ")), "{what}");
            let line = log
                .lines()
                .find(|l| l.contains(" <= ") && l.ends_with(&format!("for {}", route.rcpt())))
                .unwrap_or_else(|| panic!("no reception line: {what}"));
            assert!(line.contains(&format!("X={version}:")), "{what}");
            assert!(line.contains("CV=yes DN=\"CN=edge.contoso.com\""), "{what}");
        }
    }
}
