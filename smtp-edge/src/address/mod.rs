//! Addresses and domain patterns, shared by the configuration, both SMTP
//! sides and the operator's tools; [`spec`] parses the IP address forms
//! (address, CIDR, mask, range) of the allowlist and the connectors.
//!
//! A pattern keeps Exchange's meaning: `*.contoso.com` is contoso.com and
//! every subdomain (a connector's `TlsSenderCertificateName`, an accepted
//! domain, a connector's domains), not the one-label wildcard of RFC 6125.

pub mod spec;

use serde::Serialize;

/// A domain pattern: `contoso.com`, `*.contoso.com` (the domain and every
/// subdomain), `*` (anything), or `accepted` (the accepted domains).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum DomainPattern {
    /// Exactly this domain.
    Exact(String),
    /// This domain and every subdomain.
    Subtree(String),
    /// Any domain.
    Any,
    /// Any accepted domain.
    Accepted,
}

fn normalize(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

impl DomainPattern {
    /// Parses a pattern.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = normalize(text.trim());
        if t == "*" {
            return Ok(DomainPattern::Any);
        }
        if t == "accepted" {
            return Ok(DomainPattern::Accepted);
        }
        let (subtree, name) = match t.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, t.clone()),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80)
            });
        if !valid {
            return Err(format!(
                "`{text}` is not a domain, `*.domain`, `*` or `accepted`"
            ));
        }
        Ok(if subtree {
            DomainPattern::Subtree(name)
        } else {
            DomainPattern::Exact(name)
        })
    }

    /// Whether `domain` matches (accepted domains given for `accepted`).
    pub fn matches(&self, domain: &str, accepted: &[DomainPattern]) -> bool {
        let d = normalize(domain);
        match self {
            DomainPattern::Exact(n) => d == *n,
            DomainPattern::Subtree(n) => {
                d == *n
                    || (d.len() > n.len()
                        && d.ends_with(n.as_str())
                        && d.as_bytes()[d.len() - n.len() - 1] == b'.')
            }
            DomainPattern::Any => true,
            DomainPattern::Accepted => accepted
                .iter()
                .any(|a| !matches!(a, DomainPattern::Accepted) && a.matches(&d, &[])),
        }
    }
}

/// Whether any pattern in `list` matches.
pub fn any_matches(list: &[DomainPattern], domain: &str, accepted: &[DomainPattern]) -> bool {
    list.iter().any(|p| p.matches(domain, accepted))
}

/// Certificate name rule of a connector: the subject CN or a SAN DNS name
/// must match one of `names` (Exchange's TlsSenderCertificateName meaning).
pub fn certificate_matches(names: &[DomainPattern], cert_names: &[String]) -> bool {
    cert_names
        .iter()
        .any(|c| names.iter().any(|n| n.matches(c, &[])))
}

/// The domain of a mailbox (after the last `@`), if any.
pub fn domain_of(mailbox: &str) -> Option<&str> {
    mailbox.rsplit_once('@').map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(list: &[&str]) -> Vec<DomainPattern> {
        list.iter()
            .map(|p| DomainPattern::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn wildcard_means_domain_and_every_subdomain() {
        let p = DomainPattern::parse("*.contoso.com").unwrap();
        for d in [
            "contoso.com",
            "mail.contoso.com",
            "a.b.contoso.com",
            "CONTOSO.COM.",
        ] {
            assert!(p.matches(d, &[]), "{d}");
        }
        for d in ["notcontoso.com", "contoso.com.evil", "com"] {
            assert!(!p.matches(d, &[]), "{d}");
        }
        assert!(certificate_matches(
            &pats(&["mail.protection.outlook.com"]),
            &["mail.protection.outlook.com".into()]
        ));
        assert!(!certificate_matches(
            &pats(&["mail.protection.outlook.com"]),
            &["evil.outlook.com".into()]
        ));
        assert!(DomainPattern::parse("bad domain").is_err());
        assert!(DomainPattern::parse("-x.com").is_err());
    }
}
