//! The end of a message on a connector with a tenant rule: the spooled
//! message is judged ([`crate::inbound::tenant`]) before it may be acknowledged.
//!
//! Exchange Online signs some `X-MS-Exchange-*` fields, so on such a
//! connector the header filter keeps every field while the message streams
//! to its temporary spool file; the file is then mapped (never read into
//! memory) and verified. What follows depends on the verdict and the mode:
//!
//! | mode | verdict | the message |
//! | --- | --- | --- |
//! | enforce | allowed, `trusted_headers`, tenant id stamped | committed as written |
//! | enforce | allowed | rewritten without the internal fields, committed |
//! | enforce | no tenant id stamped | refused, 451 4.7.1 (Exchange Online retries), warned |
//! | enforce | temporary failure | refused, 451 4.7.5 |
//! | enforce | anything else | refused, 550 5.7.1 with the reason |
//! | monitor | any | rewritten with an `Authentication-Results` field naming the outcome, internal fields kept only as in enforce |
//!
//! A rewrite is a second spool file (a new id): envelope and trace, the
//! added field, the header section filtered again, the body copied from
//! the map; the first file goes when its writer is dropped. Nothing is
//! acknowledged before the file that stays is durable.
//!
//! The map costs no memory of the process's own (the pages are the page
//! cache's). Its one failure mode is a disk that cannot read back a page
//! the kernel had dropped: that is SIGBUS, and the daemon exits (systemd
//! restarts it). Nothing acknowledged is lost by it: the check and the
//! rewrite run before the reply, so the client sends again.

use std::sync::Arc;

use crate::inbound::tenant::verify::Authenticator;
use crate::inbound::tenant::{Mode, Outcome, Rule, Verdict};
use crate::queue::spool::{Envelope, Spool, SpoolError, SpoolWriter};
use crate::smtp::header::{HeaderFilter, Limits, Policy};
use crate::smtp::reply::Reply;
use crate::smtp::trace::Trace;

/// What a connector's tenant check needs.
#[derive(Debug, Clone)]
pub struct TenantCheck {
    /// Its rule.
    pub rule: Rule,
    /// The DKIM verifier.
    pub auth: Authenticator,
    /// The connector keeps internal fields of proven messages.
    pub trusted_headers: bool,
    /// Our name, the authserv-id of the added field.
    pub hostname: String,
    /// Header patterns and limits, to filter again on a rewrite.
    pub policy: Arc<Policy>,
    /// Header limits.
    pub limits: Limits,
}

/// Why a checked message was not committed.
#[derive(Debug)]
pub enum Failure {
    /// The spool failed.
    Spool(SpoolError),
    /// The tenant check refused it.
    Refused(Box<Verdict>),
}

impl From<SpoolError> for Failure {
    fn from(e: SpoolError) -> Self {
        Failure::Spool(e)
    }
}

/// The reply to a refused message.
pub fn refusal(v: &Verdict) -> Reply {
    if v.outcome == Outcome::NoStamp {
        Reply::new(
            451,
            (4, 7, 1),
            &format!(
                "Cannot tell which Microsoft 365 tenant sent this, try again later: {}",
                printable(&v.reason)
            ),
        )
    } else if v.outcome == Outcome::TempError {
        Reply::new(
            451,
            (4, 7, 5),
            &format!(
                "Tenant check could not be completed, try again later: {}",
                printable(&v.reason)
            ),
        )
    } else {
        Reply::new(
            550,
            (5, 7, 1),
            &format!(
                "Not from an allowed Microsoft 365 tenant: {}",
                printable(&v.reason)
            ),
        )
    }
}

/// `s` with anything but printable ASCII replaced, at most 200 characters
/// (reasons carry domains a sender wrote).
pub fn printable(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| {
            if (' '..='~').contains(&c) && !matches!(c, ';' | '(' | ')' | '\\' | '"') {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The field a monitoring connector adds (RFC 8601 form, an `x-` method).
pub fn result_field(hostname: &str, v: &Verdict) -> String {
    let mut f = format!(
        "Authentication-Results: {}; x-ms365-tenant={}",
        printable(hostname),
        v.outcome
    );
    if let Some(t) = &v.tenant {
        f.push_str(&format!(" policy.tenant={t}"));
    }
    for d in v.dkim_domains.iter().take(4) {
        f.push_str(&format!("\r\n\theader.d={}", printable(d)));
    }
    f.push_str(&format!("\r\n\t({})\r\n", printable(&v.reason)));
    f
}

/// Judges the message written to `w` (its content after `content_start`)
/// and commits what the mode says; blocking (runs the DNS lookups on
/// `handle`).
pub fn commit(
    spool: &Spool,
    head: (&mut Envelope, &Trace),
    w: SpoolWriter,
    content_start: u64,
    check: &TenantCheck,
    handle: &tokio::runtime::Handle,
) -> Result<Verdict, Failure> {
    let map = w.map()?;
    let content = map.get(content_start as usize..).unwrap_or_default();
    let evidence = handle.block_on(check.auth.evidence(&check.rule, content));
    let verdict = crate::inbound::tenant::judge(&check.rule, &evidence);
    if verdict.outcome == Outcome::NoStamp {
        // Microsoft has been reported to leave the field out at times: the
        // admin must see it (enforce defers, so nothing is lost meanwhile).
        tracing::warn!(
            mode = %check.rule.mode,
            "a message through a tenant-checked connector has no X-MS-Exchange-CrossTenant-Id: \
             Exchange Online stamps it on what it delivers; see smtp_edge_tenant_checks_total{{outcome=\"no_stamp\"}}"
        );
    }
    // Internal fields need more than the signature (which a replay carries
    // too): the tenant id Exchange Online stamps when it sends.
    let keep_internal =
        verdict.allowed() && check.trusted_headers && !verdict.tenant_ids.is_empty();
    match check.rule.mode {
        Mode::Enforce | Mode::Off if !verdict.allowed() => Err(Failure::Refused(Box::new(verdict))),
        Mode::Enforce | Mode::Off if keep_internal => {
            drop(map);
            w.commit()?;
            Ok(verdict)
        }
        Mode::Enforce | Mode::Off => {
            rewrite(spool, head, content, check, false, None)?;
            Ok(verdict)
        }
        Mode::Monitor => {
            let field = result_field(&check.hostname, &verdict);
            rewrite(spool, head, content, check, keep_internal, Some(&field))?;
            Ok(verdict)
        }
    }
}

/// Writes `content` again as a new message: the added `field` first, the
/// header section filtered (internal fields removed unless `keep`), the
/// body as it is.
fn rewrite(
    spool: &Spool,
    (envelope, trace): (&mut Envelope, &Trace),
    content: &[u8],
    check: &TenantCheck,
    keep: bool,
    field: Option<&str>,
) -> Result<(), SpoolError> {
    let body_at = crate::smtp::header::body_offset(content);
    let mut filter = HeaderFilter::new(check.policy.clone(), keep, check.limits);
    let mut headers = Vec::with_capacity(body_at);
    filter.feed(&content[..body_at], &mut headers);
    if let Err(e) = filter.finish(&mut headers) {
        // The same bytes passed the same filter once: cannot happen.
        return Err(SpoolError::Format {
            path: "(tenant rewrite)".into(),
            reason: e.to_string(),
        });
    }
    let mut w = spool.create()?;
    w.write_envelope(envelope)?;
    w.write(trace.render(w.id()).as_bytes())?;
    if let Some(f) = field {
        w.write(f.as_bytes())?;
    }
    w.write(&headers)?;
    w.write(&content[body_at..])?;
    w.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_and_fields_carry_no_control_characters() {
        let v = Verdict {
            outcome: Outcome::ForeignTenant,
            tenant: None,
            reason: "signed only by evil\r\nX-Injected: 1; (x)".into(),
            dkim_domains: vec!["evil\r\nX: y".into()],
            tenant_ids: vec![],
            auth_as: vec![],
        };
        let r = refusal(&v);
        assert_eq!(r.code, 550);
        let f = result_field("edge.example", &v);
        assert!(!f.contains("\r\nX"), "{f:?}");
        assert!(f.ends_with("\r\n") && f.starts_with("Authentication-Results: edge.example;"));
        let t = Verdict {
            outcome: Outcome::TempError,
            ..v
        };
        assert_eq!(refusal(&t).code, 451);
        let n = Verdict {
            outcome: Outcome::NoStamp,
            ..t
        };
        let r = refusal(&n);
        assert_eq!((r.code, r.status), (451, Some((4, 7, 1))), "{r:?}");
    }
}
