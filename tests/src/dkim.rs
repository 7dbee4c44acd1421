//! DKIM keys made per test (RSA 2048 by openssl) and messages signed with
//! them as Exchange Online signs (mail-auth's signer, relaxed/relaxed, From
//! first in `h=`), with the TXT records to publish the keys in the test's
//! NSD zone ([`crate::nsd`]).

use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use crate::tools::run_tool;

/// The fields Exchange Online signs (as seen on its mail).
pub const EXO_SIGNED: &[&str] = &[
    "From",
    "Date",
    "Subject",
    "Message-ID",
    "Content-Type",
    "MIME-Version",
    "X-MS-Exchange-SenderADCheck",
];

/// One signing key of one domain.
pub struct DkimKey {
    /// `d=`.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    pem: String,
    /// The public key, base64 of its SubjectPublicKeyInfo (`p=`).
    pub public: String,
}

impl DkimKey {
    /// A new key for `domain` under the selector Exchange Online uses for
    /// its initial domain (`selector1-<domain with dashes>`).
    pub fn new(domain: &str) -> DkimKey {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("key.pem");
        let k = key.to_str().expect("path");
        let t = run_tool(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                k,
            ],
            b"",
        );
        assert!(t.ok, "openssl genpkey: {}", t.all());
        let t = run_tool("openssl", &["pkey", "-in", k, "-pubout"], b"");
        assert!(t.ok, "openssl pkey: {}", t.all());
        let public: String = t
            .stdout
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        DkimKey {
            domain: domain.to_string(),
            selector: format!("selector1-{}", domain.replace('.', "-")),
            pem: std::fs::read_to_string(&key).expect("key.pem"),
            public,
        }
    }

    /// Its TXT record for a zone file (the key split into strings of at
    /// most 200 characters).
    pub fn zone_record(&self) -> String {
        let value = format!("v=DKIM1; k=rsa; p={}", self.public);
        let parts: Vec<String> = value
            .as_bytes()
            .chunks(200)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        format!(
            "{}._domainkey.{}. 300 IN TXT ( {} )\n",
            self.selector,
            self.domain,
            parts.join(" ")
        )
    }

    /// `message` (CRLF line ends) with a DKIM-Signature field over `fields`
    /// put on top.
    pub fn sign_fields(&self, message: &str, fields: &[&str]) -> String {
        let der = PrivateKeyDer::from_pem_slice(self.pem.as_bytes()).expect("PEM key");
        let key = RsaKey::<Sha256>::from_key_der(der).expect("RSA key");
        let sig = DkimSigner::from_key(key)
            .domain(self.domain.clone())
            .selector(self.selector.clone())
            .headers(fields.iter().copied())
            .sign(message.as_bytes())
            .expect("sign");
        format!("{}{message}", sig.to_header())
    }

    /// `message` signed over the fields Exchange Online signs.
    pub fn sign(&self, message: &str) -> String {
        self.sign_fields(message, EXO_SIGNED)
    }
}

/// A zone for [`crate::nsd::Nsd`] (`$ORIGIN test.`) publishing `keys`.
pub fn zone(keys: &[&DkimKey]) -> String {
    let mut z = String::from(
        "$ORIGIN test.\n$TTL 300\n@ SOA ns.test. hostmaster.test. 1 3600 600 86400 300\n@ NS ns.test.\nns A 127.0.0.1\n",
    );
    for k in keys {
        z.push_str(&k.zone_record());
    }
    z
}
