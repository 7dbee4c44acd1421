//! Inbound connectors: which one applies to a connection, and what it may do.
//!
//! Pure decisions, no I/O: the session asks, the policy answers with a reply.
//! Exchange's vocabulary is kept: a connector has source ranges
//! (`RemoteIPRanges` / `SenderIPAddresses`), may require TLS and a client
//! certificate whose name matches (`TlsSenderCertificateName`, where
//! `*.contoso.com` means contoso.com and every subdomain), may restrict sender
//! domains, limits recipients to the accepted domains unless it grants relay.

use std::net::IpAddr;

use crate::address::{DomainPattern, any_matches, certificate_matches, domain_of};
use crate::smtp::reply::Reply;

/// The connector's settings are the configuration's; its decisions are here.
pub use crate::config::inbound::Inbound;

/// How specific a connector is for an address: the longest matching prefix,
/// or -1 for a connector without sources (the default).
fn specificity(c: &Inbound, ip: IpAddr) -> Option<i16> {
    if c.sources.is_empty() {
        return Some(-1);
    }
    c.sources
        .iter()
        .filter(|n| n.contains(&ip))
        .map(|n| i16::from(n.prefix_len()))
        .max()
}

/// The connector for a connection from `ip`: the one whose source ranges
/// match most specifically; a connector without sources applies to everyone
/// else. `None`: refuse the connection (554 5.7.1).
pub fn select(connectors: &[Inbound], ip: IpAddr) -> Option<&Inbound> {
    select_index(connectors.iter(), ip).and_then(|i| connectors.get(i))
}

/// Like [`select`], over any sequence of connectors; returns the position.
pub fn select_index<'a>(
    connectors: impl Iterator<Item = &'a Inbound>,
    ip: IpAddr,
) -> Option<usize> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    connectors
        .enumerate()
        .filter_map(|(i, c)| specificity(c, ip).map(|s| (s, i)))
        .max_by_key(|(s, i)| (*s, std::cmp::Reverse(*i)))
        .map(|(_, i)| i)
}

/// Why a connection or transaction step is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What to send.
    pub reply: Reply,
    /// For the log.
    pub reason: &'static str,
}

fn refuse(code: u16, status: (u8, u16, u16), text: &str, reason: &'static str) -> Refusal {
    Refusal {
        reply: Reply::new(code, status, text),
        reason,
    }
}

/// TLS state of the session, as far as policy cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsState {
    /// The session is encrypted.
    pub active: bool,
    /// Names (subject CN and SAN DNS names) of a client certificate whose
    /// chain verified against the connector's trust; empty when none.
    pub verified_names: Vec<String>,
    /// A certificate was presented but did not verify (why).
    pub verify_error: Option<String>,
}

impl Inbound {
    /// Checks before MAIL FROM: TLS and the client certificate.
    pub fn check_session(&self, tls: &TlsState) -> Result<(), Refusal> {
        if (self.require_tls || !self.client_cert_names.is_empty()) && !tls.active {
            return Err(refuse(
                530,
                (5, 7, 0),
                "Must issue a STARTTLS command first",
                "tls required",
            ));
        }
        if !self.client_cert_names.is_empty() {
            if let Some(e) = &tls.verify_error {
                return Err(Refusal {
                    reply: Reply::new(
                        550,
                        (5, 7, 1),
                        &format!("Client certificate not trusted: {e}"),
                    ),
                    reason: "certificate not trusted",
                });
            }
            if tls.verified_names.is_empty() {
                return Err(refuse(
                    550,
                    (5, 7, 1),
                    "A client certificate is required",
                    "no certificate",
                ));
            }
            if !certificate_matches(&self.client_cert_names, &tls.verified_names) {
                return Err(refuse(
                    550,
                    (5, 7, 1),
                    "Client certificate does not match this connector",
                    "certificate name mismatch",
                ));
            }
        }
        Ok(())
    }

    /// Checks the sender domain (null sender always passes: bounces).
    pub fn check_sender(&self, mail_from: &str, accepted: &[DomainPattern]) -> Result<(), Refusal> {
        if mail_from.is_empty() || self.sender_domains.is_empty() {
            return Ok(());
        }
        match domain_of(mail_from) {
            Some(d) if any_matches(&self.sender_domains, d, accepted) => Ok(()),
            _ => Err(refuse(
                550,
                (5, 7, 1),
                "Sender domain not allowed through this connector",
                "sender domain",
            )),
        }
    }

    /// Checks one recipient: accepted domains always (unless restricted),
    /// anything else only with relay. Routing tricks (percent hack, bang paths,
    /// `@` in the local part, source routes, IP literals) are relay attempts.
    pub fn check_recipient(
        &self,
        rcpt: &str,
        had_source_route: bool,
        accepted: &[DomainPattern],
    ) -> Result<(), Refusal> {
        let denied = || refuse(550, (5, 7, 1), "Relaying denied", "relay denied");
        let Some((local, domain)) = rcpt.rsplit_once('@') else {
            return Err(refuse(
                550,
                (5, 1, 3),
                "Recipient must be a full address",
                "no domain",
            ));
        };
        if self.relay {
            return Ok(());
        }
        let local = local.trim_matches('"');
        if had_source_route || local.contains(['%', '!', '@']) || domain.starts_with('[') {
            return Err(denied());
        }
        if any_matches(&self.recipient_domains, domain, accepted) {
            Ok(())
        } else {
            Err(denied())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(list: &[&str]) -> Vec<DomainPattern> {
        list.iter()
            .map(|p| DomainPattern::parse(p).unwrap())
            .collect()
    }

    fn conn(name: &str, sources: &[&str]) -> Inbound {
        Inbound {
            name: name.into(),
            sources: sources.iter().map(|s| s.parse().unwrap()).collect(),
            require_tls: false,
            client_cert_names: vec![],
            sender_domains: vec![],
            recipient_domains: pats(&["accepted"]),
            relay: false,
            trusted_headers: false,
            tenants: None,
        }
    }

    #[test]
    fn most_specific_source_wins_and_default_catches_the_rest() {
        let cs = vec![
            conn("eo", &["40.92.0.0/15"]),
            conn("onprem", &["40.92.1.0/24"]),
            conn("default", &[]),
        ];
        assert_eq!(
            select(&cs, "40.92.1.5".parse().unwrap()).unwrap().name,
            "onprem"
        );
        assert_eq!(
            select(&cs, "40.93.1.5".parse().unwrap()).unwrap().name,
            "eo"
        );
        assert_eq!(
            select(&cs, "::ffff:40.93.1.5".parse().unwrap())
                .unwrap()
                .name,
            "eo"
        );
        assert_eq!(
            select(&cs, "192.0.2.1".parse().unwrap()).unwrap().name,
            "default"
        );
        assert!(select(&cs[..2], "192.0.2.1".parse().unwrap()).is_none());
    }

    #[test]
    fn tls_and_certificate_rules() {
        let mut c = conn("eo", &[]);
        c.client_cert_names = pats(&["mail.protection.outlook.com"]);
        let none = TlsState::default();
        assert_eq!(c.check_session(&none).unwrap_err().reply.code, 530);
        let tls = TlsState {
            active: true,
            ..TlsState::default()
        };
        assert_eq!(c.check_session(&tls).unwrap_err().reason, "no certificate");
        let wrong = TlsState {
            active: true,
            verified_names: vec!["mail.fabrikam.com".into()],
            verify_error: None,
        };
        assert_eq!(
            c.check_session(&wrong).unwrap_err().reason,
            "certificate name mismatch"
        );
        let untrusted = TlsState {
            active: true,
            verified_names: vec![],
            verify_error: Some("unknown issuer".into()),
        };
        assert_eq!(
            c.check_session(&untrusted).unwrap_err().reason,
            "certificate not trusted"
        );
        let good = TlsState {
            active: true,
            verified_names: vec!["mail.protection.outlook.com".into()],
            verify_error: None,
        };
        assert!(c.check_session(&good).is_ok());
    }

    #[test]
    fn open_relay_probes_are_refused_without_relay() {
        let c = conn("inbound", &[]);
        let accepted = pats(&["contoso.com"]);
        assert!(
            c.check_recipient("user@contoso.com", false, &accepted)
                .is_ok()
        );
        assert!(
            c.check_recipient("user@CONTOSO.com", false, &accepted)
                .is_ok()
        );
        for (rcpt, route) in [
            ("victim@fabrikam.com", false),
            ("victim%fabrikam.com@contoso.com", false),
            ("fabrikam.com!victim@contoso.com", false),
            ("\"victim@fabrikam.com\"@contoso.com", false),
            ("victim@fabrikam.com@contoso.com", false),
            ("user@contoso.com", true),
            ("victim@[192.0.2.1]", false),
            ("victim@[IPv6:2001:db8::1]", false),
            ("victim@sub.contoso.com", false),
        ] {
            let e = c.check_recipient(rcpt, route, &accepted).unwrap_err();
            assert_eq!((e.reply.code, e.reason), (550, "relay denied"), "{rcpt}");
        }
        let mut relay = conn("onprem", &[]);
        relay.relay = true;
        assert!(
            relay
                .check_recipient("victim@fabrikam.com", false, &accepted)
                .is_ok()
        );
    }

    #[test]
    fn sender_domains() {
        let mut c = conn("onprem", &[]);
        c.sender_domains = pats(&["accepted"]);
        let accepted = pats(&["contoso.com", "*.fabrikam.com"]);
        assert!(c.check_sender("a@contoso.com", &accepted).is_ok());
        assert!(c.check_sender("a@sales.fabrikam.com", &accepted).is_ok());
        assert!(c.check_sender("", &accepted).is_ok());
        assert_eq!(
            c.check_sender("a@evil.example", &accepted)
                .unwrap_err()
                .reason,
            "sender domain"
        );
    }
}
