//! Certificates made per test with rcgen: CAs (roots, intermediates, name
//! constrained ones), leaves for servers and clients, written as PEM files
//! the daemon reads or used directly with rustls.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate authority that can sign.
pub struct Ca {
    /// Its certificate, PEM.
    pub pem: String,
    /// Its certificate, DER.
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// A key algorithm for the certificates made here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlg {
    /// ECDSA P-256 (the default of every helper not given one).
    EcdsaP256,
    /// RSA 2048, what Microsoft's certificates use.
    Rsa2048,
}

impl KeyAlg {
    /// A new key. rcgen on ring cannot generate RSA keys: `openssl genpkey`
    /// makes those (PKCS#8), rcgen signs with them.
    pub fn generate(self) -> KeyPair {
        match self {
            KeyAlg::EcdsaP256 => KeyPair::generate().expect("key"),
            KeyAlg::Rsa2048 => {
                let out = std::process::Command::new("openssl")
                    .args(["genpkey", "-algorithm", "RSA"])
                    .args(["-pkeyopt", "rsa_keygen_bits:2048"])
                    .output()
                    .expect("run openssl genpkey");
                assert!(
                    out.status.success(),
                    "openssl genpkey: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let pem = String::from_utf8(out.stdout).expect("PEM");
                let key = KeyPair::from_pem(&pem).expect("RSA key");
                assert_eq!(key.algorithm(), &rcgen::PKCS_RSA_SHA256);
                key
            }
        }
    }
}

impl Ca {
    fn make(p: CertificateParams, parent: Option<&Ca>) -> Ca {
        Ca::make_with(p, parent, KeyAlg::EcdsaP256)
    }

    fn make_with(p: CertificateParams, parent: Option<&Ca>, alg: KeyAlg) -> Ca {
        let key = alg.generate();
        let cert = match parent {
            None => p.self_signed(&key),
            Some(parent) => p.signed_by(&key, &parent.issuer),
        }
        .expect("CA certificate");
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A self-signed root.
    pub fn new(name: &str) -> Ca {
        Ca::make(ca_params(name), None)
    }

    /// An intermediate CA issued by this one.
    pub fn intermediate(&self, name: &str) -> Ca {
        Ca::make(ca_params(name), Some(self))
    }

    /// A CA whose certificate carries these extended key usages (none: no
    /// extension), self-signed or issued by `parent`, with an `alg` key.
    pub fn with_ekus(
        name: &str,
        parent: Option<&Ca>,
        ekus: &[ExtendedKeyUsagePurpose],
        alg: KeyAlg,
    ) -> Ca {
        let mut p = ca_params(name);
        p.extended_key_usages = ekus.to_vec();
        Ca::make_with(p, parent, alg)
    }

    /// A root that may only issue names below `permitted` DNS subtrees.
    pub fn name_constrained(name: &str, permitted: &[&str]) -> Ca {
        let mut p = ca_params(name);
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted
                .iter()
                .map(|d| GeneralSubtree::DnsName(d.to_string()))
                .collect(),
            excluded_subtrees: Vec::new(),
        });
        Ca::make(p, None)
    }

    /// A root store holding only this CA.
    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut r = RootCertStore::empty();
        r.add(self.der.clone()).expect("add root");
        Arc::new(r)
    }

    /// Writes the CA certificate to `path`; returns it.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).expect("write CA");
        path.to_path_buf()
    }
}

/// A certificate and its key, as PEM and DER.
pub struct Leaf {
    /// The certificate, then any chain certificates added, PEM.
    pub cert_pem: String,
    /// The key, PEM.
    pub key_pem: String,
    /// The certificate (then the chain), DER.
    pub chain: Vec<CertificateDer<'static>>,
    /// The key, DER.
    pub key: PrivateKeyDer<'static>,
}

/// What a leaf is made of.
pub struct LeafSpec<'a> {
    /// Subject CN (`None`: no CN).
    pub cn: Option<&'a str>,
    /// DNS subjectAltNames.
    pub sans: &'a [&'a str],
    /// The issuer (`None`: self-signed).
    pub ca: Option<&'a Ca>,
    /// Valid only in 2020.
    pub expired: bool,
}

impl Leaf {
    /// A leaf as specified, as public CAs issue them from 2026 on: for
    /// server authentication only (the CA/Browser Forum baseline profile
    /// under the Chrome root program's serverAuth-only hierarchies; Let's
    /// Encrypt's default profile since 2026-02-11, DigiCert's default since
    /// 2025-10). MTAs present such a certificate as their client
    /// certificate too; [`Leaf::with_client_auth`] makes the older kind.
    pub fn build(spec: LeafSpec<'_>) -> Leaf {
        Leaf::build_for(spec, &[ExtendedKeyUsagePurpose::ServerAuth])
    }

    /// A certificate for `names` (the first also as CN) issued by `ca`, for
    /// server *and* client authentication, as CAs issued them before 2026:
    /// for next hops that still require the clientAuth EKU of a client
    /// certificate (Postfix 3.7 to 3.11 with `smtpd_tls_req_ccert`, which
    /// refuses a serverAuth-only one: `tests/tests/peers.rs`).
    pub fn with_client_auth(names: &[&str], ca: &Ca) -> Leaf {
        Leaf::build_for(
            LeafSpec {
                cn: names.first().copied(),
                sans: names,
                ca: Some(ca),
                expired: false,
            },
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    fn build_for(spec: LeafSpec<'_>, ekus: &[ExtendedKeyUsagePurpose]) -> Leaf {
        let mut p =
            CertificateParams::new(spec.sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        if let Some(cn) = spec.cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.extended_key_usages = ekus.to_vec();
        if spec.expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        Leaf::sign(p, spec.ca, KeyAlg::EcdsaP256)
    }

    /// A certificate for `names` (the first also as CN) issued by `ca`, with
    /// these extended key usages (none: no extension) and an `alg` key.
    pub fn with_ekus(
        names: &[&str],
        ca: &Ca,
        ekus: &[ExtendedKeyUsagePurpose],
        alg: KeyAlg,
    ) -> Leaf {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        if let Some(cn) = names.first() {
            p.distinguished_name.push(DnType::CommonName, *cn);
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = ekus.to_vec();
        Leaf::sign(p, Some(ca), alg)
    }

    fn sign(p: CertificateParams, ca: Option<&Ca>, alg: KeyAlg) -> Leaf {
        let key = alg.generate();
        let cert = match ca {
            Some(ca) => p.signed_by(&key, &ca.issuer),
            None => p.self_signed(&key),
        }
        .expect("certificate");
        let key_pem = key.serialize_pem();
        Leaf {
            cert_pem: cert.pem(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key DER"),
            key_pem,
        }
    }

    /// A certificate for `names` (the first also as CN), issued by `ca` or
    /// self-signed, serverAuth only ([`Leaf::build`]).
    pub fn new(names: &[&str], ca: Option<&Ca>, expired: bool) -> Leaf {
        Leaf::build(LeafSpec {
            cn: names.first().copied(),
            sans: names,
            ca,
            expired,
        })
    }

    /// A self-signed certificate for `names` (the first also as CN, server
    /// and client authentication) valid from yesterday until `not_after`,
    /// with this serial number: a renewal's certificate, or one about to
    /// expire.
    pub fn valid_until(names: &[&str], not_after: std::time::SystemTime, serial: u64) -> Leaf {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        if let Some(cn) = names.first() {
            p.distinguished_name.push(DnType::CommonName, *cn);
        }
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let day = std::time::Duration::from_secs(86_400);
        p.not_before = (std::time::SystemTime::now() - day).into();
        p.not_after = not_after.into();
        p.serial_number = Some(rcgen::SerialNumber::from(serial));
        Leaf::sign(p, None, KeyAlg::EcdsaP256)
    }

    /// The same leaf presenting `chain` after it.
    pub fn with_chain(mut self, chain: &[&Ca]) -> Leaf {
        for c in chain {
            self.cert_pem.push_str(&c.pem);
            self.chain.push(c.der.clone());
        }
        self
    }

    /// Writes `dir/stem.pem` (certificate and chain) and `dir/stem.key`.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, &self.cert_pem).expect("write certificate");
        std::fs::write(&k, &self.key_pem).expect("write key");
        (c, k)
    }

    /// As the SMTP client's identity.
    pub fn identity(&self) -> smtp_edge::outbound::client::ClientIdentity {
        smtp_edge::outbound::client::ClientIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// A self-signed certificate for `name`, written as `dir/stem.pem` and
/// `dir/stem.key`.
pub fn self_signed(dir: &Path, stem: &str, name: &str) -> (PathBuf, PathBuf) {
    Leaf::new(&[name], None, false).write(dir, stem)
}

/// The public TLS hierarchy of 2026, RSA 2048 throughout (as Microsoft's):
/// a root without EKU (CA/B Forum Baseline Requirements §7.1.2.1) and an
/// issuing CA restricted to id-kp-serverAuth (Chrome Root Program Policy
/// 1.6: dedicated TLS server authentication hierarchies, every new issuing
/// CA from 2026-06-15). Leaves: [`Profile2026::server_leaf`].
pub struct Profile2026 {
    /// The root, for a connector's `client_cert_trust`.
    pub root: Ca,
    /// The serverAuth-only issuing CA, sent after the leaf.
    pub issuing: Ca,
}

impl Profile2026 {
    /// A new hierarchy.
    pub fn new() -> Profile2026 {
        let root = Ca::with_ekus("Public TLS Root 2026", None, &[], KeyAlg::Rsa2048);
        let issuing = Ca::with_ekus(
            "Public TLS RSA Issuing CA 2026",
            Some(&root),
            &[ExtendedKeyUsagePurpose::ServerAuth],
            KeyAlg::Rsa2048,
        );
        Profile2026 { root, issuing }
    }

    /// A leaf for `names` with id-kp-serverAuth only (Chrome's rule for
    /// every new leaf from 2027-03-15; Let's Encrypt's default profile since
    /// 2026-02-11; DigiCert's default since 2025-10-01), its certificate
    /// file followed by the issuing CA: what Exchange Online's
    /// mail.protection.outlook.com presents as client certificate after its
    /// renewal.
    pub fn server_leaf(&self, names: &[&str]) -> Leaf {
        Leaf::with_ekus(
            names,
            &self.issuing,
            &[ExtendedKeyUsagePurpose::ServerAuth],
            KeyAlg::Rsa2048,
        )
        .with_chain(&[&self.issuing])
    }
}

impl Default for Profile2026 {
    fn default() -> Self {
        Profile2026::new()
    }
}

impl Profile2026 {
    /// The same hierarchy with `alg` keys throughout (the root, the
    /// serverAuth-only issuing CA); leaves from [`Profile2026::leaf_with`].
    pub fn with_alg(alg: KeyAlg) -> Profile2026 {
        let root = Ca::with_ekus("Public TLS Root 2026", None, &[], alg);
        let issuing = Ca::with_ekus(
            "Public TLS Issuing CA 2026",
            Some(&root),
            &[ExtendedKeyUsagePurpose::ServerAuth],
            alg,
        );
        Profile2026 { root, issuing }
    }

    /// A serverAuth-only leaf for `names` with an `alg` key, without any
    /// chain (the caller lays out its file: [`Leaf::with_chain`]).
    pub fn leaf_with(&self, names: &[&str], alg: KeyAlg) -> Leaf {
        Leaf::with_ekus(
            names,
            &self.issuing,
            &[ExtendedKeyUsagePurpose::ServerAuth],
            alg,
        )
    }
}
