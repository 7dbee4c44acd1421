//! Outbound connectors: which one carries mail for a recipient domain, and
//! how a message's recipients split into deliveries.
//!
//! Pure decisions, no I/O. Exchange Online's vocabulary is kept
//! (`New-OutboundConnector`): a connector has `RecipientDomains`, a next hop
//! that is either a list of `SmartHosts` or the recipient domain's MX records
//! (`UseMXRecord`), a `TlsSettings` level and a `TlsDomain`.
//!
//! # Recipient domains
//!
//! | written         | [`RecipientDomain`]      | matches                                  |
//! |-----------------|--------------------------|------------------------------------------|
//! | `contoso.com`   | `Exact("contoso.com")`   | contoso.com only                         |
//! | `*.contoso.com` | `Wildcard("contoso.com")`| every subdomain of contoso.com, **not** contoso.com itself |
//! | `accepted`      | `AllAccepted`            | every accepted domain                    |
//! | `*`             | `Any`                    | every domain                             |
//!
//! The wildcard follows Microsoft's definition for outbound connectors
//! ("use a wildcard character to specify all subdomains of a specified
//! domain"): `*.contoso.com` is the subdomains. Write both `contoso.com` and
//! `*.contoso.com` for the domain and its subdomains. This differs on purpose
//! from [`crate::address::DomainPattern::Subtree`], which keeps the meaning of
//! `TlsSenderCertificateName` (domain and subdomains) for inbound connectors.
//!
//! # Which connector
//!
//! See [`select`]: the most specific match wins — exact domain, then the
//! longest matching wildcard, then "all accepted domains", then `*`.

use serde::Serialize;

use crate::address::DomainPattern;
use crate::config::outbound::normalize;

/// The connector types are the configuration's (what a connector is);
/// which one carries a recipient is decided here.
pub use crate::config::outbound::{
    ClientCert, DEFAULT_PORT, NextHop, Outbound, RecipientDomain, RoutingError, SmartHost, TlsLevel,
};

/// How specific a match is; larger is more specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Specificity {
    Any,
    AllAccepted,
    /// Length of the wildcard's domain: longer is more specific.
    Wildcard(usize),
    Exact,
}

impl RecipientDomain {
    /// Whether `domain` matches (`accepted` gives the accepted domains).
    pub fn matches(&self, domain: &str, accepted: &[DomainPattern]) -> bool {
        self.specificity(&normalize(domain), accepted).is_some()
    }

    /// How specifically a normalized `domain` matches, if it does.
    fn specificity(&self, domain: &str, accepted: &[DomainPattern]) -> Option<Specificity> {
        match self {
            RecipientDomain::Exact(d) => (domain == d).then_some(Specificity::Exact),
            RecipientDomain::Wildcard(d) => {
                let sub = domain.len() > d.len() + 1
                    && domain.ends_with(d.as_str())
                    && domain.as_bytes().get(domain.len() - d.len() - 1) == Some(&b'.');
                sub.then_some(Specificity::Wildcard(d.len()))
            }
            RecipientDomain::AllAccepted => DomainPattern::Accepted
                .matches(domain, accepted)
                .then_some(Specificity::AllAccepted),
            RecipientDomain::Any => (!domain.is_empty()).then_some(Specificity::Any),
        }
    }
}

impl Outbound {
    /// How specifically this connector matches a normalized domain: its most
    /// specific recipient domain that matches.
    fn specificity(&self, domain: &str, accepted: &[DomainPattern]) -> Option<Specificity> {
        self.recipient_domains
            .iter()
            .filter_map(|r| r.specificity(domain, accepted))
            .max()
    }
}

/// The connector for recipient `domain`, as its position in `connectors`.
/// See [`select`].
pub fn select_index(
    connectors: &[Outbound],
    domain: &str,
    accepted: &[DomainPattern],
) -> Option<usize> {
    let d = normalize(domain);
    connectors
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.specificity(&d, accepted).map(|s| (s, i)))
        .max_by_key(|(s, i)| (*s, std::cmp::Reverse(*i)))
        .map(|(_, i)| i)
}

/// The connector for recipient `domain` (any case, trailing dot ignored):
/// the most specific match wins —
///
/// 1. a connector listing the domain itself (`contoso.com`);
/// 2. the connector with the longest matching wildcard (`*.sales.contoso.com`
///    before `*.contoso.com`);
/// 3. a connector for all accepted domains (`accepted`), when the domain is
///    accepted;
/// 4. a connector for every domain (`*`).
///
/// On a tie, the first in configuration order. `None`: no connector, the
/// recipient cannot be routed (bounce it).
///
/// Microsoft's precedence list puts "all accepted domains" before wildcards,
/// but its own worked example (connectors for all accepted domains,
/// contoso.com and *.contoso.com) sends sales.contoso.com, an accepted
/// domain, to the *.contoso.com connector. This follows the example: a
/// wildcard names the domain more specifically than "accepted" does.
pub fn select<'a>(
    connectors: &'a [Outbound],
    domain: &str,
    accepted: &[DomainPattern],
) -> Option<&'a Outbound> {
    select_index(connectors, domain, accepted).and_then(|i| connectors.get(i))
}

/// One delivery: a connector and the recipients it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// Position of the connector in the list given to [`split`].
    pub connector: usize,
    /// For an MX connector, the recipient domain (normalized) whose MX
    /// records to look up; `None` for smart hosts.
    pub domain: Option<String>,
    /// Positions of the recipients in the list given to [`split`], in order.
    pub recipients: Vec<usize>,
}

/// A message's recipients grouped into deliveries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Split {
    /// Deliveries, in the order of their first recipient.
    pub routes: Vec<Route>,
    /// Recipients no connector takes (or without a domain): bounce them
    /// at once (5.4.4, unable to route).
    pub unroutable: Vec<usize>,
}

/// Groups a message's recipients (mailboxes, `local@domain`) into
/// deliveries: one per smart-host connector, and one per recipient domain
/// for an MX connector (each domain has its own MX hosts). Recipients that no
/// connector takes go to [`Split::unroutable`].
pub fn split(recipients: &[String], connectors: &[Outbound], accepted: &[DomainPattern]) -> Split {
    let mut out = Split::default();
    for (r, address) in recipients.iter().enumerate() {
        let Some(domain) = crate::address::domain_of(address).map(normalize) else {
            out.unroutable.push(r);
            continue;
        };
        let Some(c) = select_index(connectors, &domain, accepted) else {
            out.unroutable.push(r);
            continue;
        };
        let key = match connectors.get(c).map(|c| &c.next_hop) {
            Some(NextHop::Mx) => Some(domain),
            _ => None,
        };
        match out
            .routes
            .iter_mut()
            .find(|x| x.connector == c && x.domain == key)
        {
            Some(route) => route.recipients.push(r),
            None => out.routes.push(Route {
                connector: c,
                domain: key,
                recipients: vec![r],
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::outbound::connector::tests::connector;

    fn hosts(list: &[&str]) -> NextHop {
        NextHop::smart_hosts(list).unwrap()
    }

    fn accepted(list: &[&str]) -> Vec<DomainPattern> {
        list.iter()
            .map(|d| DomainPattern::parse(d).unwrap())
            .collect()
    }

    fn name_for<'a>(c: &'a [Outbound], domain: &str, acc: &[DomainPattern]) -> Option<&'a str> {
        select(c, domain, acc).map(|o| o.name.as_str())
    }

    /// Microsoft's worked example: connectors for all accepted domains,
    /// contoso.com and *.contoso.com; contoso.com, sales.contoso.com and
    /// fabrikam.com accepted.
    fn microsoft_example() -> (Vec<Outbound>, Vec<DomainPattern>) {
        (
            vec![
                connector("all accepted", &["accepted"], hosts(&["onprem.example"])),
                connector("contoso", &["contoso.com"], hosts(&["a.example"])),
                connector(
                    "contoso subdomains",
                    &["*.contoso.com"],
                    hosts(&["b.example"]),
                ),
            ],
            accepted(&["contoso.com", "sales.contoso.com", "fabrikam.com"]),
        )
    }

    #[test]
    fn microsoft_example_table() {
        let (c, acc) = microsoft_example();
        for (domain, want) in [
            ("contoso.com", Some("contoso")),
            ("sales.contoso.com", Some("contoso subdomains")),
            ("fabrikam.com", Some("all accepted")),
            // Not accepted, no `*` connector: no route.
            ("tailspintoys.com", None),
            // Subdomains of contoso.com need not be accepted.
            ("eu.marketing.contoso.com", Some("contoso subdomains")),
        ] {
            assert_eq!(name_for(&c, domain, &acc), want, "{domain}");
        }
    }

    #[test]
    fn non_accepted_domain_falls_to_any() {
        let (mut c, acc) = microsoft_example();
        c.push(connector("internet", &["*"], NextHop::Mx));
        assert_eq!(name_for(&c, "tailspintoys.com", &acc), Some("internet"));
        assert_eq!(name_for(&c, "fabrikam.com", &acc), Some("all accepted"));
        assert_eq!(name_for(&c, "contoso.com", &acc), Some("contoso"));
        // `*` first in order changes nothing: specificity decides.
        c.rotate_right(1);
        assert_eq!(name_for(&c, "fabrikam.com", &acc), Some("all accepted"));
        assert_eq!(name_for(&c, "tailspintoys.com", &acc), Some("internet"));
    }

    #[test]
    fn wildcard_is_subdomains_only() {
        let c = vec![connector("w", &["*.contoso.com"], NextHop::Mx)];
        assert_eq!(name_for(&c, "contoso.com", &[]), None);
        assert_eq!(name_for(&c, "sales.contoso.com", &[]), Some("w"));
        assert_eq!(name_for(&c, "a.b.contoso.com", &[]), Some("w"));
        assert_eq!(name_for(&c, "notcontoso.com", &[]), None);
        assert_eq!(name_for(&c, "contoso.com.evil.example", &[]), None);
        assert_eq!(name_for(&c, ".contoso.com", &[]), None);
        // Domain and subdomains: list both.
        let both = vec![connector(
            "b",
            &["contoso.com", "*.contoso.com"],
            NextHop::Mx,
        )];
        assert_eq!(name_for(&both, "contoso.com", &[]), Some("b"));
        assert_eq!(name_for(&both, "x.contoso.com", &[]), Some("b"));
    }

    #[test]
    fn longest_wildcard_wins() {
        for order in [[0, 1], [1, 0]] {
            let all = [
                connector("contoso", &["*.contoso.com"], NextHop::Mx),
                connector("sales", &["*.sales.contoso.com"], NextHop::Mx),
            ];
            let c: Vec<Outbound> = order.iter().map(|&i| all[i].clone()).collect();
            assert_eq!(name_for(&c, "eu.sales.contoso.com", &[]), Some("sales"));
            assert_eq!(name_for(&c, "sales.contoso.com", &[]), Some("contoso"));
            assert_eq!(name_for(&c, "hr.contoso.com", &[]), Some("contoso"));
        }
    }

    #[test]
    fn exact_beats_wildcard_accepted_and_any_in_any_order() {
        let c = vec![
            connector("any", &["*"], NextHop::Mx),
            connector("acc", &["accepted"], NextHop::Mx),
            connector("wild", &["*.com"], NextHop::Mx),
            connector("exact", &["fabrikam.com"], NextHop::Mx),
        ];
        let acc = accepted(&["fabrikam.com"]);
        assert_eq!(name_for(&c, "fabrikam.com", &acc), Some("exact"));
        assert_eq!(name_for(&c, "contoso.com", &acc), Some("wild"));
        assert_eq!(name_for(&c, "contoso.net", &acc), Some("any"));
    }

    #[test]
    fn accepted_follows_accepted_subtree_patterns() {
        let c = vec![connector("acc", &["accepted"], NextHop::Mx)];
        let acc = accepted(&["*.fabrikam.com"]);
        assert_eq!(name_for(&c, "fabrikam.com", &acc), Some("acc"));
        assert_eq!(name_for(&c, "hr.fabrikam.com", &acc), Some("acc"));
        assert_eq!(name_for(&c, "contoso.com", &acc), None);
        assert_eq!(name_for(&c, "fabrikam.com", &[]), None);
    }

    #[test]
    fn ties_go_to_the_first_connector() {
        let c = vec![
            connector("first", &["contoso.com"], NextHop::Mx),
            connector("second", &["contoso.com"], NextHop::Mx),
            connector("w1", &["*.fabrikam.com"], NextHop::Mx),
            connector("w2", &["*.fabrikam.com"], NextHop::Mx),
            connector("any1", &["*"], NextHop::Mx),
            connector("any2", &["*"], NextHop::Mx),
        ];
        assert_eq!(name_for(&c, "contoso.com", &[]), Some("first"));
        assert_eq!(name_for(&c, "a.fabrikam.com", &[]), Some("w1"));
        assert_eq!(name_for(&c, "other.example", &[]), Some("any1"));
        assert_eq!(select_index(&c, "other.example", &[]), Some(4));
    }

    #[test]
    fn connector_counts_its_most_specific_domain() {
        let c = vec![
            connector("broad", &["*", "*.contoso.com"], NextHop::Mx),
            connector("narrow", &["*.sales.contoso.com"], NextHop::Mx),
            connector("exact", &["*", "eu.sales.contoso.com"], NextHop::Mx),
        ];
        assert_eq!(name_for(&c, "x.sales.contoso.com", &[]), Some("narrow"));
        assert_eq!(name_for(&c, "eu.sales.contoso.com", &[]), Some("exact"));
        assert_eq!(name_for(&c, "x.contoso.com", &[]), Some("broad"));
        assert_eq!(name_for(&c, "example.org", &[]), Some("broad"));
    }

    #[test]
    fn case_and_trailing_dot_are_ignored() {
        let c = vec![
            connector("exact", &["Contoso.COM."], NextHop::Mx),
            connector("wild", &["*.FABRIKAM.com"], NextHop::Mx),
        ];
        let acc = accepted(&["contoso.com"]);
        assert_eq!(name_for(&c, "CONTOSO.com.", &acc), Some("exact"));
        assert_eq!(name_for(&c, "Sales.Fabrikam.Com.", &acc), Some("wild"));
        assert_eq!(
            c[0].recipient_domains[0],
            RecipientDomain::Exact("contoso.com".into())
        );
    }

    #[test]
    fn no_connectors_or_empty_domain() {
        assert_eq!(select(&[], "contoso.com", &[]), None);
        let c = vec![connector("any", &["*"], NextHop::Mx)];
        assert_eq!(name_for(&c, "", &[]), None);
        assert_eq!(name_for(&c, ".", &[]), None);
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn split_groups_mx_by_domain_and_smart_hosts_by_connector() {
        let c = vec![
            connector("onprem", &["accepted"], hosts(&["exchange.contoso.local"])),
            connector(
                "partner",
                &["*.fabrikam.com", "fabrikam.com"],
                hosts(&["[192.0.2.7]"]),
            ),
            connector("internet", &["*"], NextHop::Mx),
        ];
        let acc = accepted(&["contoso.com", "sales.contoso.com"]);
        let r = strings(&[
            "a@contoso.com",       // 0 onprem
            "b@gmail.com",         // 1 internet / gmail.com
            "c@hr.fabrikam.com",   // 2 partner
            "d@Sales.Contoso.com", // 3 onprem
            "e@GMAIL.com.",        // 4 internet / gmail.com
            "f@example.org",       // 5 internet / example.org
            "g@fabrikam.com",      // 6 partner
            "no-domain",           // 7 unroutable
        ]);
        let s = split(&r, &c, &acc);
        assert_eq!(
            s.routes,
            vec![
                Route {
                    connector: 0,
                    domain: None,
                    recipients: vec![0, 3]
                },
                Route {
                    connector: 2,
                    domain: Some("gmail.com".into()),
                    recipients: vec![1, 4]
                },
                Route {
                    connector: 1,
                    domain: None,
                    recipients: vec![2, 6]
                },
                Route {
                    connector: 2,
                    domain: Some("example.org".into()),
                    recipients: vec![5]
                },
            ]
        );
        assert_eq!(s.unroutable, vec![7]);
    }

    #[test]
    fn split_unroutable_without_default_connector() {
        let (c, acc) = microsoft_example();
        let r = strings(&[
            "x@tailspintoys.com",
            "y@contoso.com",
            "z@fabrikam.com",
            "w@eu.contoso.com",
            "v@tailspintoys.com",
        ]);
        let s = split(&r, &c, &acc);
        assert_eq!(s.unroutable, vec![0, 4]);
        let by_connector: Vec<(usize, Vec<usize>)> = s
            .routes
            .iter()
            .map(|r| (r.connector, r.recipients.clone()))
            .collect();
        assert_eq!(by_connector, vec![(1, vec![1]), (0, vec![2]), (2, vec![3])]);
        assert!(s.routes.iter().all(|r| r.domain.is_none()));
        assert_eq!(split(&[], &c, &acc), Split::default());
        let none = split(&r, &[], &acc);
        assert!(none.routes.is_empty());
        assert_eq!(none.unroutable, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn split_uses_the_last_at_sign() {
        let c = vec![connector("c", &["contoso.com"], NextHop::Mx)];
        let s = split(&strings(&["\"a@b\"@contoso.com"]), &c, &[]);
        assert_eq!(s.routes[0].domain.as_deref(), Some("contoso.com"));
    }
}
