//! Tenant authorization: whether a message that came through an Exchange
//! Online connector was sent by one of *our* Microsoft 365 tenants.
//!
//! Every tenant sends from the same Exchange Online ranges with the same
//! `mail.protection.outlook.com` certificate, so the gate and the inbound
//! connector prove only that a message comes from Exchange Online. What one
//! tenant has and another has not is its DKIM keys: Exchange Online signs
//! outbound mail with `d=<tenant>.onmicrosoft.com` (or a custom domain with
//! DKIM enabled in the tenant), and the keys are published under that
//! domain. The undocumented `X-MS-Exchange-CrossTenant-Id` header, stamped by
//! Exchange Online but not signed, is a second factor only: when present it
//! must name the same tenant, and conflicting values refuse the message.
//!
//! This module is the rule and the judgement (pure); [`verify`] runs the
//! DKIM checks over a spooled message.

pub mod verify;

use std::fmt;

/// The rule's data (mode, tenants) is the configuration's.
pub use crate::config::tenant::{Mode, Rule, Tenant, is_guid};

impl Rule {
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
    /// Proven: a signature of an allowed tenant's domain verifies, covers
    /// From, and no tenant id header contradicts it.
    Allowed,
    /// Signed by, or stamped with, someone else.
    ForeignTenant,
    /// No DKIM signature at all.
    NoSignature,
    /// A signature of an allowed tenant's domain that does not verify (or
    /// does not cover From, or a message with several From fields).
    BadSignature,
    /// The key could not be fetched (DNS): try again later.
    TempError,
}

impl Outcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [Outcome; 5] = [
        Outcome::Allowed,
        Outcome::ForeignTenant,
        Outcome::NoSignature,
        Outcome::BadSignature,
        Outcome::TempError,
    ];

    /// Its name in logs, metrics and the added header.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::ForeignTenant => "foreign_tenant",
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
}

impl Verdict {
    /// The message is proven to come from an allowed tenant.
    pub fn allowed(&self) -> bool {
        self.outcome == Outcome::Allowed
    }
}

/// Judges the evidence against the rule (see the module documentation).
pub fn judge(rule: &Rule, ev: &Evidence) -> Verdict {
    let mut ids: Vec<String> = Vec::new();
    for id in &ev.tenant_ids {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    let mut dkim_domains: Vec<String> = Vec::new();
    for s in &ev.signatures {
        if !s.domain.is_empty() && !dkim_domains.contains(&s.domain) {
            dkim_domains.push(s.domain.clone());
        }
    }
    let verdict = |outcome, tenant: Option<&Tenant>, reason: String| Verdict {
        outcome,
        tenant: tenant.map(|t| t.id.clone()),
        reason,
        dkim_domains: dkim_domains.clone(),
        tenant_ids: ids.clone(),
    };
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
    if let Some(why) = &ev.malformed {
        return verdict(Outcome::BadSignature, None, why.clone());
    }
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
    // Signatures that prove a tenant: verified, covering From, ours.
    let proving: Vec<&Tenant> = ev
        .signatures
        .iter()
        .filter(|s| s.proves())
        .filter_map(|s| rule.tenant_of(&s.domain))
        .collect();
    if let Some(id) = ids.first() {
        if let Some(t) = proving.iter().find(|t| &t.id == id) {
            return verdict(
                Outcome::Allowed,
                Some(t),
                format!("signed by {} of tenant {}", signer(ev, t), t.id),
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
        if !rule.tenants.iter().any(|t| &t.id == id) {
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
        }
    } else if let Some(t) = proving.first() {
        return verdict(
            Outcome::Allowed,
            Some(t),
            format!("signed by {} of tenant {}", signer(ev, t), t.id),
        );
    }
    // Not proven: say why, the most telling reason first.
    let ours: Vec<&Signature> = ev
        .signatures
        .iter()
        .filter(|s| s.checked != Checked::NotOurs)
        .collect();
    if let Some(s) = ours
        .iter()
        .find(|s| matches!(s.checked, Checked::TempError(_)))
    {
        let Checked::TempError(e) = &s.checked else {
            unreachable!("matched above")
        };
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
                "signed only by {}, not an allowed tenant's domain",
                dkim_domains.join(", ")
            ),
        );
    }
    verdict(
        Outcome::NoSignature,
        None,
        "no DKIM signature (Exchange Online signs with the tenant's domain)".into(),
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
    const THEIRS: &str = "99999999-8888-7777-6666-555555555555";

    fn rule() -> Rule {
        Rule {
            mode: Mode::Enforce,
            tenants: vec![Tenant {
                id: OURS.into(),
                domains: vec!["contoso.onmicrosoft.com".into(), "contoso.com".into()],
            }],
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
            from_fields: 1,
            malformed: None,
        }
    }

    #[test]
    fn our_signature_is_allowed_with_or_without_our_id() {
        for ids in [&[][..], &[OURS], &[OURS, OURS]] {
            let v = judge(
                &rule(),
                &ev(vec![sig("contoso.onmicrosoft.com", Checked::Pass)], ids),
            );
            assert_eq!(v.outcome, Outcome::Allowed, "{v:?}");
            assert_eq!(v.tenant.as_deref(), Some(OURS));
        }
        // Domains compare without case, a custom domain counts.
        let v = judge(&rule(), &ev(vec![sig("Contoso.COM", Checked::Pass)], &[]));
        assert!(v.allowed(), "{v:?}");
    }

    #[test]
    fn a_foreign_id_or_conflicting_ids_refuse_even_with_our_signature() {
        let good = || vec![sig("contoso.onmicrosoft.com", Checked::Pass)];
        let v = judge(&rule(), &ev(good(), &[THEIRS]));
        assert_eq!(v.outcome, Outcome::ForeignTenant, "{v:?}");
        let v = judge(&rule(), &ev(good(), &[OURS, THEIRS]));
        assert_eq!(v.outcome, Outcome::ForeignTenant);
        assert!(v.reason.contains("conflicting"), "{}", v.reason);
    }

    #[test]
    fn our_id_with_a_foreign_signature_is_refused() {
        let v = judge(
            &rule(),
            &ev(
                vec![sig("fabrikam.onmicrosoft.com", Checked::NotOurs)],
                &[OURS],
            ),
        );
        assert_eq!(v.outcome, Outcome::ForeignTenant, "{v:?}");
        assert_eq!(v.dkim_domains, vec!["fabrikam.onmicrosoft.com"]);
    }

    #[test]
    fn failures_are_classified() {
        let none = judge(&rule(), &ev(vec![], &[]));
        assert_eq!(none.outcome, Outcome::NoSignature);
        let bad = judge(
            &rule(),
            &ev(
                vec![sig(
                    "contoso.onmicrosoft.com",
                    Checked::Fail("body hash".into()),
                )],
                &[],
            ),
        );
        assert_eq!(bad.outcome, Outcome::BadSignature);
        assert!(bad.reason.contains("body hash"), "{}", bad.reason);
        let temp = judge(
            &rule(),
            &ev(
                vec![sig(
                    "contoso.onmicrosoft.com",
                    Checked::TempError("timeout".into()),
                )],
                &[],
            ),
        );
        assert_eq!(temp.outcome, Outcome::TempError);
        // A pass elsewhere wins over a temporary failure.
        let both = judge(
            &rule(),
            &ev(
                vec![
                    sig("contoso.com", Checked::TempError("timeout".into())),
                    sig("contoso.onmicrosoft.com", Checked::Pass),
                ],
                &[],
            ),
        );
        assert!(both.allowed());
        let foreign = judge(
            &rule(),
            &ev(vec![sig("fabrikam.example", Checked::NotOurs)], &[]),
        );
        assert_eq!(foreign.outcome, Outcome::ForeignTenant);
    }

    #[test]
    fn from_must_be_signed_and_single() {
        let mut s = sig("contoso.onmicrosoft.com", Checked::Pass);
        s.covers_from = false;
        let v = judge(&rule(), &ev(vec![s], &[]));
        assert_eq!(v.outcome, Outcome::BadSignature, "{v:?}");
        let mut two = ev(vec![sig("contoso.onmicrosoft.com", Checked::Pass)], &[]);
        two.from_fields = 2;
        assert_eq!(judge(&rule(), &two).outcome, Outcome::BadSignature);
        // A second, unsigned Subject above the signed one.
        let mut s = sig("contoso.onmicrosoft.com", Checked::Pass);
        s.unsigned_copies = vec!["subject".into()];
        let v = judge(&rule(), &ev(vec![s], &[]));
        assert_eq!(v.outcome, Outcome::BadSignature, "{v:?}");
        assert!(v.reason.contains("subject"), "{}", v.reason);
        let mut bad = ev(vec![sig("contoso.onmicrosoft.com", Checked::Pass)], &[]);
        bad.malformed = Some("a header line without a colon".into());
        assert_eq!(judge(&rule(), &bad).outcome, Outcome::BadSignature);
    }
}
