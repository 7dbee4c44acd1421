//! The DKIM side of the tenant check: signatures verified with Stalwart's
//! mail-auth, keys asked through the daemon's hickory resolver (`[dns]`).
//!
//! Only signatures whose `d=` is an allowed tenant's domain are verified: a
//! sender cannot make this host query domains of its choosing, and at most
//! [`MAX_VERIFIED`] keys are fetched per message (one TXT lookup each; the
//! report (`r=`) and third-party (`atps=`) lookups a signature may ask for
//! are turned off). mail-auth parses in strict mode, so a signature with
//! `l=` (which would let text be appended after signing) never verifies.
//! The headers judged here (From, the tenant id, copies of signed fields)
//! are those of the same parse the verifier used; where that parse ends
//! the header section elsewhere than the header filter did (a line without
//! a colon), the message is not judged at all. The header section is
//! bounded by the filter (`max_header_size`), so parsing it is too.

use std::sync::Arc;
use std::time::Duration;

use mail_auth::common::cache::NoCache;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters};

use super::{Checked, Evidence, Proof, Rule, Signature};

/// Signatures verified per message at most (Exchange Online adds one).
pub const MAX_VERIFIED: usize = 4;

/// The header Exchange Online stamps with the sending tenant's id.
pub const TENANT_ID_FIELD: &str = "X-MS-Exchange-CrossTenant-Id";

/// How Exchange Online authenticated the sender (`Anonymous`, `Internal`).
pub const AUTH_AS_FIELD: &str = "X-MS-Exchange-CrossTenant-AuthAs";

/// Verifies DKIM signatures (cheap to clone).
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<MessageAuthenticator>,
    /// The longest the key lookups of one message may take together.
    timeout: Duration,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Asks `resolver`'s name servers; `timeout` bounds all the lookups of
    /// one message (past it the check is a temporary failure).
    pub fn new(resolver: &crate::resolve::Resolver, timeout: Duration) -> Authenticator {
        Authenticator {
            inner: Arc::new(MessageAuthenticator(resolver.hickory().clone())),
            timeout,
        }
    }

    /// What `raw` (a message: header section, empty line, body) shows.
    /// Signatures are verified only where the rule's proof needs them.
    pub async fn evidence(&self, rule: &Rule, raw: &[u8]) -> Evidence {
        let Some(mut msg) = AuthenticatedMessage::parse(raw) else {
            return Evidence {
                malformed: Some("the message has no header section".into()),
                ..Evidence::default()
            };
        };
        let Evidence {
            tenant_ids,
            auth_as,
            from_fields,
            malformed,
            ..
        } = header_evidence(&msg, raw);
        if rule.proof == Proof::Stamp {
            // The stamp is the proof: no signature is verified and no key
            // fetched; their domains are kept for the log.
            let signatures = msg
                .dkim_headers
                .iter()
                .map(|h| Signature {
                    domain: h.header.d.to_ascii_lowercase(),
                    covers_from: covers_from(&h.header.h),
                    unsigned_copies: Vec::new(),
                    checked: Checked::NotOurs,
                })
                .collect();
            return Evidence {
                signatures,
                tenant_ids,
                auth_as,
                from_fields,
                malformed,
            };
        }
        let copies = |name: &str| {
            msg.headers
                .iter()
                .filter(|(n, _)| n.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
                .count()
        };
        let unsigned_copies = |h: &[String]| {
            let mut out: Vec<String> = Vec::new();
            for name in h {
                let name = name.trim().to_ascii_lowercase();
                let signed = h
                    .iter()
                    .filter(|x| x.trim().eq_ignore_ascii_case(&name))
                    .count();
                if copies(&name) > signed && !out.contains(&name) {
                    out.push(name);
                }
            }
            out
        };
        let mut signatures = Vec::new();
        // Keep for verification only signatures of allowed tenants' domains.
        let mut kept = 0;
        msg.dkim_headers.retain(|h| {
            let s = &h.header;
            let ours = rule.tenant_of(&s.d).is_some() && kept < MAX_VERIFIED;
            if ours {
                kept += 1;
            } else {
                signatures.push(Signature {
                    domain: s.d.to_ascii_lowercase(),
                    covers_from: covers_from(&s.h),
                    unsigned_copies: Vec::new(),
                    checked: Checked::NotOurs,
                });
            }
            ours
        });
        for h in &mut msg.dkim_headers {
            // No report (`_report._domainkey`) or third-party lookups.
            h.header.r = false;
            h.header.atps = None;
            h.header.atpsh = None;
        }
        // Malformed signatures (no usable d=) count as bad ones.
        for e in &msg.errors {
            if matches!(e.header, mail_auth::Error::Dkim(_)) {
                signatures.push(Signature {
                    domain: String::new(),
                    covers_from: false,
                    unsigned_copies: Vec::new(),
                    checked: Checked::Fail(e.header.to_string()),
                });
            }
        }
        let mut ev = Evidence {
            signatures,
            tenant_ids,
            auth_as,
            from_fields,
            malformed,
        };
        if msg.dkim_headers.is_empty() || ev.malformed.is_some() {
            return ev;
        }
        let params = Parameters::new(&msg);
        let params: Parameters<
            '_,
            _,
            NoCache<_, _>,
            NoCache<_, _>,
            NoCache<_, _>,
            NoCache<_, _>,
            NoCache<_, _>,
        > = params;
        match tokio::time::timeout(self.timeout, self.inner.verify_dkim(params)).await {
            Ok(outputs) => {
                for o in outputs {
                    let Some(s) = o.signature() else {
                        // The malformed ones, already counted above.
                        continue;
                    };
                    let checked = match o.result() {
                        DkimResult::Pass => Checked::Pass,
                        DkimResult::TempError(e) => Checked::TempError(e.to_string()),
                        other => Checked::Fail(other.to_string()),
                    };
                    ev.signatures.push(Signature {
                        domain: s.d.to_ascii_lowercase(),
                        covers_from: covers_from(&s.h),
                        unsigned_copies: unsigned_copies(&s.h),
                        checked,
                    });
                }
            }
            Err(_) => {
                for h in &msg.dkim_headers {
                    ev.signatures.push(Signature {
                        domain: h.header.d.to_ascii_lowercase(),
                        covers_from: covers_from(&h.header.h),
                        unsigned_copies: Vec::new(),
                        checked: Checked::TempError(format!(
                            "no answer within {} s",
                            self.timeout.as_secs()
                        )),
                    });
                }
            }
        }
        ev
    }
}

/// The facts of the header section the verifier parsed (pure): the tenant
/// stamp (the field name in any case; GUIDs in other fields, such as the
/// first tenant's inside `-OriginalAttributedTenantConnectingIp`, count for
/// nothing), how Exchange Online authenticated the sender, the From fields,
/// and whether the parse ended the header section where the filter did.
fn header_evidence(msg: &AuthenticatedMessage<'_>, raw: &[u8]) -> Evidence {
    let named = |want: &str| {
        msg.headers
            .iter()
            .filter(|(n, _)| n.trim_ascii().eq_ignore_ascii_case(want.as_bytes()))
            .map(|(_, v)| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
            .collect::<Vec<String>>()
    };
    // The verifier's header section must end where the filter's did.
    let header_end = crate::smtp::header::body_offset(raw);
    let malformed = (msg.body_offset as usize != header_end)
        .then(|| "the header section has a line that is not a header field (no colon)".to_string());
    Evidence {
        signatures: Vec::new(),
        tenant_ids: named(TENANT_ID_FIELD),
        auth_as: named(AUTH_AS_FIELD),
        from_fields: named("From").len(),
        malformed,
    }
}

/// Whether a signature's `h=` names From.
fn covers_from(h: &[String]) -> bool {
    h.iter().any(|n| n.trim().eq_ignore_ascii_case("from"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "11111111-2222-3333-4444-555555555555";
    const FIRST: &str = "99999999-8888-7777-6666-555555555555";

    /// A fixture of `tests/fixtures/exchange-online` (header sets of real
    /// Exchange Online messages; its README cites them), filled in.
    fn fixture(template: &str, id: &str) -> String {
        template
            .replace("@TENANT_ID@", id)
            .replace("@ORIGINAL_TENANT_ID@", FIRST)
            .replace("@TENANT_DOMAIN@", "contoso.onmicrosoft.test")
            .replace("@SUBJECT@", "s")
            .replace('\n', "\r\n")
    }

    fn evidence(raw: &str) -> Evidence {
        let msg = AuthenticatedMessage::parse(raw.as_bytes()).expect("parses");
        header_evidence(&msg, raw.as_bytes())
    }

    #[test]
    fn the_stamp_is_read_from_real_inbound_and_validation_header_sets() {
        let inbound = evidence(&fixture(
            include_str!("../../../../tests/fixtures/exchange-online/inbound.eml"),
            OURS,
        ));
        // One id: the GUIDs in -OriginalAttributedTenantConnectingIp and
        // -RMS-PersistedConsumerOrg are not the stamp.
        assert_eq!(inbound.tenant_ids, vec![OURS]);
        assert_eq!(inbound.auth_as, vec!["anonymous"]);
        assert_eq!(inbound.from_fields, 1);
        assert_eq!(inbound.malformed, None);
        let validation = evidence(&fixture(
            include_str!("../../../../tests/fixtures/exchange-online/validation.eml"),
            OURS,
        ));
        assert_eq!(validation.tenant_ids, vec![OURS]);
        assert_eq!(validation.auth_as, vec!["internal"]);
        assert_eq!(validation.from_fields, 1);
    }

    #[test]
    fn the_stamp_field_name_counts_in_any_case_and_every_copy_is_kept() {
        let raw = fixture(
            include_str!("../../../../tests/fixtures/exchange-online/inbound.eml"),
            OURS,
        )
        .replace(
            "X-MS-Exchange-CrossTenant-Id:",
            &format!("x-ms-exchange-crosstenant-id: {FIRST}\r\nX-MS-EXCHANGE-CROSSTENANT-ID:"),
        );
        let ev = evidence(&raw);
        assert_eq!(ev.tenant_ids, vec![FIRST.to_string(), OURS.to_string()]);
        let v = crate::inbound::tenant::judge(
            &Rule {
                mode: super::super::Mode::Enforce,
                proof: Proof::Stamp,
                tenants: vec![super::super::Tenant {
                    id: OURS.into(),
                    domains: vec!["contoso.onmicrosoft.test".into()],
                }],
            },
            &ev,
        );
        assert_eq!(v.outcome, super::super::Outcome::ForeignTenant, "{v:?}");
    }
}
