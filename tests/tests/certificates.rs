//! Client certificates of the 2026 public profile against a
//! certificate-based inbound connector, from real TLS stacks on loopback
//! (127.0.0.1 only): OpenSSL's `s_client` and GnuTLS's `gnutls-cli`, TLS 1.2
//! and 1.3, each presenting an RSA 2048 leaf with id-kp-serverAuth only
//! under an issuing CA restricted to id-kp-serverAuth (Chrome Root Program:
//! new issuing CAs from 2026-06-15, every new leaf from 2027-03-15; Let's
//! Encrypt's default profile since 2026-02-11) — what Exchange Online's
//! mail.protection.outlook.com presents after its renewal. Such chains are
//! delivered with the purpose recorded; a code-signing-only chain is
//! refused with the reason.
//!
//! Each test runs its own daemon (`[filter] enabled = false`) with its own
//! directory, spool, port and certificates; every client run is bounded
//! (60 s, [`run_session`]).

use std::path::{Path, PathBuf};

use rcgen::ExtendedKeyUsagePurpose;
use smtp_edge_tests::certs::{Ca, KeyAlg, Leaf, Profile2026};
use smtp_edge_tests::edge::{Edge, Setup, V4, split_received};
use smtp_edge_tests::smtp::queued;
use smtp_edge_tests::tools::{Tool, run_session};

/// The name Exchange Online's certificate carries.
const EXO: &str = "mail.protection.outlook.com";

/// A TLS client program.
#[derive(Debug, Clone, Copy)]
enum Stack {
    OpenSsl,
    GnuTls,
}

/// The protocol version a client is limited to.
#[derive(Debug, Clone, Copy)]
enum Version {
    Tls12,
    Tls13,
}

impl Version {
    /// As the envelope records it.
    fn recorded(self) -> &'static str {
        match self {
            Version::Tls12 => "TLSv1.2",
            Version::Tls13 => "TLSv1.3",
        }
    }
}

/// A client identity as files: `chain` is the leaf followed by its CAs,
/// `cas` the CAs alone, if any (s_client takes the leaf and the rest
/// apart).
struct Identity {
    chain: PathBuf,
    key: PathBuf,
    cas: Option<PathBuf>,
}

fn identity(dir: &Path, stem: &str, leaf: &Leaf, cas: &[&Ca]) -> Identity {
    let (chain, key) = leaf.write(dir, stem);
    let cas = (!cas.is_empty()).then(|| {
        let path = dir.join(format!("{stem}-cas.pem"));
        let pem: String = cas.iter().map(|c| c.pem.as_str()).collect();
        std::fs::write(&path, pem).expect("write CAs");
        path
    });
    Identity { chain, key, cas }
}

/// A daemon in `dir` with one certificate-based connector trusting `root`
/// and requiring Exchange Online's name.
fn start_edge(dir: tempfile::TempDir, root: &Ca) -> Edge {
    let ca_file = root.write(&dir.path().join("trusted-ca.pem"));
    let connectors = format!(
        r#"[[inbound_connectors]]
name = "exchange-online"
require_tls = true
client_cert_names = ["{EXO}"]
client_cert_trust = "{}"
"#,
        ca_file.display()
    );
    Edge::start_in(
        dir,
        Setup {
            connectors: &connectors,
            ..Setup::default()
        },
    )
}

/// One scripted SMTP session after STARTTLS, presenting `id`.
fn session(edge: &Edge, stack: Stack, version: Version, id: &Identity, script: &str) -> Tool {
    let port = edge.port.to_string();
    let path = |p: &Path| p.to_str().expect("path").to_string();
    match stack {
        Stack::OpenSsl => {
            let flag = match version {
                Version::Tls12 => "-tls1_2",
                Version::Tls13 => "-tls1_3",
            };
            let connect = edge.host_port(V4);
            let (cert, key) = (path(&id.chain), path(&id.key));
            let mut args = vec![
                "s_client",
                "-starttls",
                "smtp",
                "-connect",
                &connect,
                "-brief",
                flag,
                "-cert",
                &cert,
                "-key",
                &key,
            ];
            let cas = id.cas.as_deref().map(path);
            if let Some(cas) = &cas {
                args.extend(["-cert_chain", cas]);
            }
            run_session("openssl", &args, script.as_bytes())
        }
        Stack::GnuTls => {
            let priority = match version {
                Version::Tls12 => "--priority=NORMAL:-VERS-ALL:+VERS-TLS1.2",
                Version::Tls13 => "--priority=NORMAL:-VERS-ALL:+VERS-TLS1.3",
            };
            let (cert, key) = (
                format!("--x509certfile={}", path(&id.chain)),
                format!("--x509keyfile={}", path(&id.key)),
            );
            run_session(
                "gnutls-cli",
                &[
                    "--starttls-proto=smtp",
                    "--port",
                    &port,
                    "--insecure",
                    priority,
                    &cert,
                    &key,
                    "127.0.0.1",
                ],
                script.as_bytes(),
            )
        }
    }
}

const ALL: [(Stack, Version); 4] = [
    (Stack::OpenSsl, Version::Tls12),
    (Stack::OpenSsl, Version::Tls13),
    (Stack::GnuTls, Version::Tls12),
    (Stack::GnuTls, Version::Tls13),
];

#[test]
fn server_auth_only_rsa_chains_are_delivered_from_openssl_and_gnutls_tls12_and_tls13() {
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = Profile2026::new();
    let exo = profile.server_leaf(&[EXO]);
    let id = identity(dir.path(), "exo", &exo, &[&profile.issuing]);
    let edge = start_edge(dir, &profile.root);

    let mut delivered = 0;
    for (stack, version) in ALL {
        let what = format!("{stack:?} {version:?}");
        let body = format!("Subject: 2026 profile\r\n\r\nsent by {what}\r\n");
        let script = format!(
            "EHLO {EXO}\r\nMAIL FROM:<alice@fabrikam.com>\r\nRCPT TO:<bob@contoso.com>\r\nDATA\r\n{body}.\r\nQUIT\r\n"
        );
        let t = session(&edge, stack, version, &id, &script);
        let id = queued(&t.stdout)
            .unwrap_or_else(|| panic!("{what}: not queued\n{}\n{}", t.all(), edge.log()));
        assert!(t.stdout.contains("221 2.0.0"), "{what}: {}", t.stdout);
        let m = edge.message(&id);
        let tls = m.envelope.tls.clone().expect("TLS in the envelope");
        assert_eq!(tls.version, version.recorded(), "{what}");
        let subject = tls.client_cert.clone().expect("client certificate");
        assert!(subject.contains(EXO), "{what}: {subject}");
        assert_eq!(
            tls.client_cert_purpose.as_deref(),
            Some("serverAuth"),
            "{what}"
        );
        let (received, got) = split_received(&m);
        assert!(
            received.contains(&format!(
                "client-certificate=\"{subject}\" purpose=serverAuth)"
            )),
            "{what}: {received}"
        );
        assert!(received.contains("(connector exchange-online)"), "{what}");
        assert_eq!(got, body.as_bytes(), "{what}");
        delivered += 1;
    }
    assert_eq!(delivered, 4);
    assert_eq!(edge.incoming().len(), 4);
    assert!(
        edge.log().contains(r#"purpose=Some("serverAuth")"#),
        "{}",
        edge.log()
    );
}

#[test]
fn a_code_signing_chain_is_refused_by_the_connector() {
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = Profile2026::new();
    // A code-signing certificate (CA/B Forum Code Signing BR: id-kp-
    // codeSigning only) with the right name, from the trusted root itself,
    // so the leaf's EKU is the only fault.
    let signing = Leaf::with_ekus(
        &[EXO],
        &profile.root,
        &[ExtendedKeyUsagePurpose::CodeSigning],
        KeyAlg::Rsa2048,
    );
    let id = identity(dir.path(), "signing", &signing, &[]);
    let edge = start_edge(dir, &profile.root);

    let script = format!("EHLO {EXO}\r\nMAIL FROM:<alice@fabrikam.com>\r\nQUIT\r\n");
    let mut refused = 0;
    for (stack, version) in ALL {
        let what = format!("{stack:?} {version:?}");
        let t = session(&edge, stack, version, &id, &script);
        assert!(
            t.stdout.contains(
                "550 5.7.1 Client certificate not trusted: certificate not valid for client or \
                 server authentication"
            ),
            "{what}: {}\n{}",
            t.all(),
            edge.log()
        );
        assert!(queued(&t.stdout).is_none(), "{what}");
        refused += 1;
    }
    assert_eq!(refused, 4);
    assert!(edge.incoming().is_empty());
}
