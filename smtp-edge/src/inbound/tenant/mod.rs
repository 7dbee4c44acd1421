//! Tenant authorization: whether a message that came through an Exchange
//! Online connector was sent by one of *our* Microsoft 365 tenants.
//!
//! Every tenant sends from the same Exchange Online ranges with the same
//! `mail.protection.outlook.com` certificate ("spoofing is possible due to
//! shared IP ranges", Microsoft's Exchange Online team), so the gate and the
//! inbound connector prove only that a message comes from Exchange Online.
//! What proves *our* tenant depends on the flow ([`Proof`]):
//!
//! - **Inbound** (internet → EOP of our tenant → this host → on-prem): the
//!   message carries its author's DKIM signature or none, never ours.
//!   Exchange Online strips earlier `X-MS-Exchange-CrossTenant-*` fields when
//!   a message enters a tenant (real messages show
//!   `X-MS-Exchange-Transport-CrossTenantHeadersStripped`) and appends its own
//!   block when it leaves, with `X-MS-Exchange-CrossTenant-Id: <tenant>`,
//!   `-AuthAs: Anonymous` and `-FromEntityHeader: Internet`. Mail that
//!   crossed two tenants carries one id, the last tenant's (the first one's
//!   GUID survives only inside `-OriginalAttributedTenantConnectingIp`, which
//!   is ignored). The proof is that stamp ([`Proof::Stamp`]): at least one
//!   `X-MS-Exchange-CrossTenant-Id` field, every one naming the same allowed
//!   tenant. Another tenant's connector to us gets *its* id stamped: refused.
//! - **Relay** (Exchange Online uses this host as its smart host to the
//!   internet, ExOTA-Milter's case): the same stamp *and* a DKIM signature of
//!   one of that tenant's domains ([`Proof::StampAndDkim`]): Exchange Online
//!   signs every message a tenant sends, with `d=<tenant>.onmicrosoft.com` or
//!   an enabled custom domain. `-AuthAs: Internal` is expected (logged, not
//!   required).
//!
//! A message without any tenant id is deferred ([`Outcome::NoStamp`], 4xx:
//! Exchange Online retries) and counted, since Microsoft has been reported
//! to omit the field at times and the admin must see it rather than lose
//! mail. Exchange's own connector validation message (null sender, From
//! `O365ConnectorValidation@<tenant>.onmicrosoft.com`) is stamped and signed
//! like any message of the tenant, so it passes in both flows.
//!
//! This module is the rule and the judgement (pure); [`verify`] gathers the
//! evidence from a spooled message (the stamp, and the DKIM checks where the
//! proof needs them).

pub mod verify;

use std::fmt;

/// The rule's data (mode, proof, tenants) is the configuration's.
pub use crate::config::tenant::{Mode, Proof, Rule, Tenant, is_guid};

impl Rule {
    /// The allowed tenant with this id (lower case).
    pub fn tenant(&self, id: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.id == id)
    }

    /// The tenant whose domain `d` is (compared without case).
    pub fn tenant_of(&self, d: &str) -> Option<&Tenant> {
        let d = d.trim_end_matches('.');
        self.tenants
            .iter()
            .find(|t| t.domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
    }
}

/// The outcome classes (metrics and logs use these names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Proven: stamped with an allowed tenant's id (and, where the proof
    /// asks for it, signed by one of its domains).
    Allowed,
    /// Stamped with another tenant's id, conflicting ids, or signed by
    /// someone else where a tenant signature is needed.
    ForeignTenant,
    /// No `X-MS-Exchange-CrossTenant-Id` at all: deferred, counted, warned.
    NoStamp,
    /// The header section cannot be judged (the parsers would disagree on
    /// where it ends).
    Malformed,
    /// No DKIM signature at all.
    NoSignature,
    /// A signature of an allowed tenant's domain that does not verify (or
    /// does not cover From, or a message with several From fields).
    BadSignature,
    /// The key could not be fetched (DNS): try again later.
    TempError,
}

impl Outcome {
    /// The sender should try again later (a 4xx in enforce mode).
    pub fn is_temporary(self) -> bool {
        matches!(self, Outcome::TempError | Outcome::NoStamp)
    }
}

impl Outcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Allowed,
        Outcome::ForeignTenant,
        Outcome::NoStamp,
        Outcome::Malformed,
        Outcome::NoSignature,
        Outcome::BadSignature,
        Outcome::TempError,
    ];

    /// Its name in logs, metrics and the added header.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::ForeignTenant => "foreign_tenant",
            Outcome::NoStamp => "no_stamp",
            Outcome::Malformed => "malformed",
            Outcome::NoSignature => "no_signature",
            Outcome::BadSignature => "bad_signature",
            Outcome::TempError => "temp_error",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one DKIM signature fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// It verifies.
    Pass,
    /// The key could not be fetched for now.
    TempError(String),
    /// Anything else (bad signature, body changed, no key, expired,
    /// malformed): the reason.
    Fail(String),
    /// Not verified: its domain is no allowed tenant's (no DNS query is
    /// made for domains a sender chooses).
    NotOurs,
}

/// One DKIM signature of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// `d=`, lower case (empty for a signature too malformed to name one).
    pub domain: String,
    /// `h=` names From.
    pub covers_from: bool,
    /// Fields it signs that the message holds more copies of than `h=`
    /// names (lower case): an unsigned copy added above a signed one is
    /// what readers show.
    pub unsigned_copies: Vec<String>,
    /// The result.
    pub checked: Checked,
}

impl Signature {
    /// A signature that proves its domain: it verifies, signs From and
    /// every copy of each field it signs.
    pub fn proves(&self) -> bool {
        self.checked == Checked::Pass && self.covers_from && self.unsigned_copies.is_empty()
    }
}

/// What the message shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Its DKIM signatures.
    pub signatures: Vec<Signature>,
    /// The values of its `X-MS-Exchange-CrossTenant-Id` fields (trimmed,
    /// lower case).
    pub tenant_ids: Vec<String>,
    /// The values of its `X-MS-Exchange-CrossTenant-AuthAs` fields
    /// (`Anonymous` for internet mail relayed inbound, `Internal` for mail
    /// of the tenant's own users), for the log.
    pub auth_as: Vec<String>,
    /// How many From fields it has.
    pub from_fields: usize,
    /// Why its header section cannot be judged (the verifier and the header
    /// filter would not agree on where it ends).
    pub malformed: Option<String>,
}

/// The judgement on one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Its class.
    pub outcome: Outcome,
    /// The allowed tenant it is proven to come from.
    pub tenant: Option<String>,
    /// Why, in words (for the reply and the log).
    pub reason: String,
    /// The `d=` of every signature (for the log).
    pub dkim_domains: Vec<String>,
    /// The distinct tenant ids seen.
    pub tenant_ids: Vec<String>,
    /// The distinct `-AuthAs` values seen.
    pub auth_as: Vec<String>,
}

impl Verdict {
    /// The message is proven to come from an allowed tenant.
    pub fn allowed(&self) -> bool {
        self.outcome == Outcome::Allowed
    }
}

/// Judges the evidence against the rule (see the module documentation).
pub fn judge(rule: &Rule, ev: &Evidence) -> Verdict {
    let distinct = |list: &[String]| {
        let mut out: Vec<String> = Vec::new();
        for x in list {
            if !out.contains(x) {
                out.push(x.clone());
            }
        }
        out
    };
    let ids = distinct(&ev.tenant_ids);
    let dkim_domains = distinct(
        &ev.signatures
            .iter()
            .filter(|s| !s.domain.is_empty())
            .map(|s| s.domain.clone())
            .collect::<Vec<_>>(),
    );
    let auth_as = distinct(&ev.auth_as);
    let verdict = |outcome, tenant: Option<&Tenant>, reason: String| Verdict {
        outcome,
        tenant: tenant.map(|t| t.id.clone()),
        reason,
        dkim_domains: dkim_domains.clone(),
        tenant_ids: ids.clone(),
        auth_as: auth_as.clone(),
    };
    if let Some(why) = &ev.malformed {
        return verdict(Outcome::Malformed, None, why.clone());
    }
    if ids.len() > 1 {
        return verdict(
            Outcome::ForeignTenant,
            None,
            format!(
                "conflicting X-MS-Exchange-CrossTenant-Id values ({})",
                ids.join(", ")
            ),
        );
    }
    let Some(id) = ids.first() else {
        return verdict(
            Outcome::NoStamp,
            None,
            "no X-MS-Exchange-CrossTenant-Id field (Exchange Online stamps the sending \
             tenant's id on every message it delivers)"
                .into(),
        );
    };
    let Some(tenant) = rule.tenant(id) else {
        let signed = if dkim_domains.is_empty() {
            String::new()
        } else {
            format!(", signed by {}", dkim_domains.join(", "))
        };
        return verdict(
            Outcome::ForeignTenant,
            None,
            format!("X-MS-Exchange-CrossTenant-Id {id} is not an allowed tenant{signed}"),
        );
    };
    if rule.proof == Proof::Stamp {
        let how = auth_as
            .first()
            .map_or_else(String::new, |a| format!(" (AuthAs {a})"));
        return verdict(
            Outcome::Allowed,
            Some(tenant),
            format!("stamped by Exchange Online for tenant {}{how}", tenant.id),
        );
    }
    // The stamp names an allowed tenant; a signature of its own must back it.
    if ev.from_fields != 1 {
        return verdict(
            Outcome::BadSignature,
            None,
            format!(
                "the message has {} From fields (exactly one can be signed for)",
                ev.from_fields
            ),
        );
    }
    let proving: Vec<&Tenant> = ev
        .signatures
        .iter()
        .filter(|s| s.proves())
        .filter_map(|s| rule.tenant_of(&s.domain))
        .collect();
    if proving.iter().any(|t| t.id == tenant.id) {
        return verdict(
            Outcome::Allowed,
            Some(tenant),
            format!("signed by {} of tenant {}", signer(ev, tenant), tenant.id),
        );
    }
    if let Some(t) = proving.first() {
        return verdict(
            Outcome::ForeignTenant,
            None,
            format!(
                "X-MS-Exchange-CrossTenant-Id {id} is not tenant {} whose domain signed it",
                t.id
            ),
        );
    }
    // Not proven: say why, the most telling reason first.
    let ours: Vec<&Signature> = ev
        .signatures
        .iter()
        .filter(|s| s.checked != Checked::NotOurs)
        .collect();
    if let Some((s, e)) = ours.iter().find_map(|s| match &s.checked {
        Checked::TempError(e) => Some((s, e)),
        _ => None,
    }) {
        return verdict(
            Outcome::TempError,
            None,
            format!("the DKIM key of {} could not be fetched: {e}", s.domain),
        );
    }
    if let Some(s) = ours.iter().find(|s| s.checked == Checked::Pass) {
        let why = if s.covers_from {
            format!(
                "the signature of {} does not cover every copy of {} (an unsigned copy was added)",
                s.domain,
                s.unsigned_copies.join(", ")
            )
        } else {
            format!(
                "the signature of {} does not cover the From field",
                s.domain
            )
        };
        return verdict(Outcome::BadSignature, None, why);
    }
    if let Some(s) = ours.first() {
        let why = match &s.checked {
            Checked::Fail(e) => e.as_str(),
            _ => "it does not verify",
        };
        let who = if s.domain.is_empty() {
            "a malformed signature".to_string()
        } else {
            format!("the signature of {}", s.domain)
        };
        return verdict(Outcome::BadSignature, None, format!("{who} fails: {why}"));
    }
    if !ev.signatures.is_empty() {
        return verdict(
            Outcome::ForeignTenant,
            None,
            format!(
                "signed only by {}, not a domain of tenant {}",
                dkim_domains.join(", "),
                tenant.id
            ),
        );
    }
    verdict(
        Outcome::NoSignature,
        None,
        format!(
            "no DKIM signature (mail relayed for tenant {} is signed with its domain)",
            tenant.id
        ),
    )
}

/// The domain of `t` that signed.
fn signer(ev: &Evidence, t: &Tenant) -> String {
    ev.signatures
        .iter()
        .find(|s| {
            s.checked == Checked::Pass
                && t.domains.iter().any(|d| d.eq_ignore_ascii_case(&s.domain))
        })
        .map_or_else(String::new, |s| s.domain.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "11111111-2222-3333-4444-555555555555";
    const OTHER_OURS: &str = "22222222-2222-3333-4444-555555555555";
    const THEIRS: &str = "99999999-8888-7777-6666-555555555555";

    fn rule(proof: Proof) -> Rule {
        Rule {
            mode: Mode::Enforce,
            proof,
            tenants: vec![
                Tenant {
                    id: OURS.into(),
                    domains: vec!["contoso.onmicrosoft.com".into(), "contoso.com".into()],
                },
                Tenant {
                    id: OTHER_OURS.into(),
                    domains: vec!["northwind.onmicrosoft.com".into()],
                },
            ],
        }
    }

    fn sig(d: &str, checked: Checked) -> Signature {
        Signature {
            domain: d.into(),
            covers_from: true,
            unsigned_copies: Vec::new(),
            checked,
        }
    }

    fn ev(signatures: Vec<Signature>, ids: &[&str]) -> Evidence {
        Evidence {
            signatures,
            tenant_ids: ids.iter().map(|s| s.to_string()).collect(),
            auth_as: Vec::new(),
            from_fields: 1,
            malformed: None,
        }
    }

    #[test]
    fn inbound_mail_is_proven_by_the_stamp_whatever_its_author_signed() {
        // Internet mail EOP relays for our tenant: the author's signature
        // (never ours) or none, our id stamped, AuthAs Anonymous.
        let authors = [
            vec![sig("sender.test", Checked::NotOurs)],
            vec![],
            vec![sig("contoso.onmicrosoft.com", Checked::Fail("x".into()))],
        ];
        for signatures in authors {
            for ids in [&[OURS][..], &[OURS, OURS]] {
                let mut e = ev(signatures.clone(), ids);
                e.auth_as = vec!["anonymous".into()];
                let v = judge(&rule(Proof::Stamp), &e);
                assert_eq!(v.outcome, Outcome::Allowed, "{v:?}");
                assert_eq!(v.tenant.as_deref(), Some(OURS));
                assert!(v.reason.contains("anonymous"), "{}", v.reason);
            }
        }
    }

    #[test]
    fn another_tenants_stamp_or_conflicting_stamps_refuse() {
        for proof in [Proof::Stamp, Proof::StampAndDkim] {
            let good = || vec![sig("contoso.onmicrosoft.com", Checked::Pass)];
            let v = judge(&rule(proof), &ev(good(), &[THEIRS]));
            assert_eq!(v.outcome, Outcome::ForeignTenant, "{v:?}");
            assert!(v.reason.contains(THEIRS), "{}", v.reason);
            let v = judge(&rule(proof), &ev(good(), &[OURS, THEIRS]));
            assert_eq!(v.outcome, Outcome::ForeignTenant);
            assert!(v.reason.contains("conflicting"), "{}", v.reason);
            // Two allowed tenants still conflict: one message, one sender.
            let v = judge(&rule(proof), &ev(good(), &[OURS, OTHER_OURS]));
            assert_eq!(v.outcome, Outcome::ForeignTenant);
        }
    }

    #[test]
    fn no_stamp_defers_in_both_flows_even_with_our_signature() {
        for proof in [Proof::Stamp, Proof::StampAndDkim] {
            let v = judge(
                &rule(proof),
                &ev(vec![sig("contoso.onmicrosoft.com", Checked::Pass)], &[]),
            );
            assert_eq!(v.outcome, Outcome::NoStamp, "{v:?}");
            assert!(v.outcome.is_temporary());
            assert!(!v.allowed());
        }
    }

    #[test]
    fn relay_needs_a_signature_of_the_stamped_tenant() {
        let r = rule(Proof::StampAndDkim);
        let v = judge(
            &r,
            &ev(vec![sig("contoso.onmicrosoft.com", Checked::Pass)], &[OURS]),
        );
        assert_eq!(v.outcome, Outcome::Allowed, "{v:?}");
        // Domains compare without case, a custom domain counts.
        let v = judge(&r, &ev(vec![sig("Contoso.COM", Checked::Pass)], &[OURS]));
        assert!(v.allowed(), "{v:?}");
        // Stamped for one allowed tenant, signed by another.
        let v = judge(
            &r,
            &ev(
                vec![sig("northwind.onmicrosoft.com", Checked::Pass)],
                &[OURS],
            ),
        );
        assert_eq!(v.outcome, Outcome::ForeignTenant, "{v:?}");
        // The author's signature is not the tenant's.
        let v = judge(&r, &ev(vec![sig("sender.test", Checked::NotOurs)], &[OURS]));
        assert_eq!(v.outcome, Outcome::ForeignTenant, "{v:?}");
        assert_eq!(v.dkim_domains, vec!["sender.test"]);
        let v = judge(&r, &ev(vec![], &[OURS]));
        assert_eq!(v.outcome, Outcome::NoSignature, "{v:?}");
    }

    #[test]
    fn relay_failures_are_classified() {
        let r = rule(Proof::StampAndDkim);
        let bad = judge(
            &r,
            &ev(
                vec![sig(
                    "contoso.onmicrosoft.com",
                    Checked::Fail("body hash".into()),
                )],
                &[OURS],
            ),
        );
        assert_eq!(bad.outcome, Outcome::BadSignature);
        assert!(bad.reason.contains("body hash"), "{}", bad.reason);
        let temp = judge(
            &r,
            &ev(
                vec![sig(
                    "contoso.onmicrosoft.com",
                    Checked::TempError("timeout".into()),
                )],
                &[OURS],
            ),
        );
        assert_eq!(temp.outcome, Outcome::TempError);
        assert!(temp.outcome.is_temporary());
        // A pass elsewhere wins over a temporary failure.
        let both = judge(
            &r,
            &ev(
                vec![
                    sig("contoso.com", Checked::TempError("timeout".into())),
                    sig("contoso.onmicrosoft.com", Checked::Pass),
                ],
                &[OURS],
            ),
        );
        assert!(both.allowed());
    }

    #[test]
    fn relay_from_must_be_signed_and_single() {
        let r = rule(Proof::StampAndDkim);
        let mut s = sig("contoso.onmicrosoft.com", Checked::Pass);
        s.covers_from = false;
        let v = judge(&r, &ev(vec![s], &[OURS]));
        assert_eq!(v.outcome, Outcome::BadSignature, "{v:?}");
        let mut two = ev(vec![sig("contoso.onmicrosoft.com", Checked::Pass)], &[OURS]);
        two.from_fields = 2;
        assert_eq!(judge(&r, &two).outcome, Outcome::BadSignature);
        // A second, unsigned Subject above the signed one.
        let mut s = sig("contoso.onmicrosoft.com", Checked::Pass);
        s.unsigned_copies = vec!["subject".into()];
        let v = judge(&r, &ev(vec![s], &[OURS]));
        assert_eq!(v.outcome, Outcome::BadSignature, "{v:?}");
        assert!(v.reason.contains("subject"), "{}", v.reason);
    }

    #[test]
    fn a_header_section_that_cannot_be_judged_refuses_in_both_flows() {
        for proof in [Proof::Stamp, Proof::StampAndDkim] {
            let mut bad = ev(vec![sig("contoso.onmicrosoft.com", Checked::Pass)], &[OURS]);
            bad.malformed = Some("a header line without a colon".into());
            assert_eq!(judge(&rule(proof), &bad).outcome, Outcome::Malformed);
        }
    }
}
