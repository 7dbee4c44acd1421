//! Messages as Exchange Online really delivers them to a host behind an
//! outbound connector: the header sets in `tests/fixtures/exchange-online`,
//! copied from published messages (their README says which), filled in for
//! a test tenant.

/// Internet mail Exchange Online Protection relays inbound for the tenant
/// `tenant_id` (`-AuthAs: Anonymous`, `-FromEntityHeader` Hosted and
/// Internet): From `sam@sender.test`, no DKIM signature (the author's is
/// added by the test). `original_tenant` is the GUID Exchange Online keeps
/// in `-OriginalAttributedTenantConnectingIp` (the first tenant's when the
/// message crossed two).
pub fn inbound(tenant_id: &str, original_tenant: &str, domain: &str, subject: &str) -> String {
    fill(
        include_str!("../fixtures/exchange-online/inbound.eml"),
        &[
            ("@TENANT_ID@", tenant_id),
            ("@ORIGINAL_TENANT_ID@", original_tenant),
            ("@TENANT_DOMAIN@", domain),
            ("@SUBJECT@", subject),
        ],
    )
}

/// Exchange Online's connector validation message of the tenant
/// `tenant_id` whose initial domain is `domain` (`-AuthAs: Internal`),
/// without its DKIM signature (added by the test). Its envelope sender is
/// the null path.
pub fn validation(tenant_id: &str, domain: &str, subject: &str) -> String {
    fill(
        include_str!("../fixtures/exchange-online/validation.eml"),
        &[
            ("@TENANT_ID@", tenant_id),
            ("@TENANT_DOMAIN@", domain),
            ("@SUBJECT@", subject),
        ],
    )
}

/// A message one of the tenant `tenant_id`'s cloud users sends to a
/// recipient behind the connector (`-AuthAs: Internal`): the header set of
/// [`validation`], the shape of every message a tenant sends out (ARC by
/// microsoft.com, `-AuthAs: Internal`, `-FromEntityHeader: Internet`,
/// `X-OriginatorOrg`, `DIR:OUT`), with the user's From, Subject and body,
/// without its DKIM signature (added by the test, by one of the tenant's
/// domains).
pub fn internal(tenant_id: &str, domain: &str, from: &str, subject: &str) -> String {
    validation(tenant_id, domain, subject)
        .replacen(
            &format!("From: O365ConnectorValidation@{domain}\r\n"),
            &format!("From: {from}\r\n"),
            1,
        )
        .replacen(
            "Subject: Test email for connector validation\r\n",
            &format!("Subject: {subject}\r\n"),
            1,
        )
        .replacen(
            "This test email message was sent from Office 365 to check that email can be \
             delivered to you using your new or modified connector. No need to reply.",
            "Sent by a cloud user of the tenant, through Exchange Online.",
            1,
        )
}

/// `template` with each placeholder replaced and CRLF line endings.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in values {
        s = s.replace(k, v);
    }
    s.replace("\r\n", "\n").replace('\n', "\r\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_placeholder_is_filled() {
        let m = super::inbound("t", "o", "d.test", "s");
        let v = super::validation("t", "d.test", "s");
        for x in [&m, &v] {
            for p in [
                "@TENANT_ID@",
                "@ORIGINAL_TENANT_ID@",
                "@TENANT_DOMAIN@",
                "@SUBJECT@",
            ] {
                assert!(!x.contains(p), "{p} in {x}");
            }
            assert!(!x.replace("\r\n", "").contains('\n'), "bare LF in {x}");
            assert!(x.contains("X-MS-Exchange-CrossTenant-Id: t\r\n"), "{x}");
        }
        assert!(
            v.contains("From: O365ConnectorValidation@d.test\r\n"),
            "{v}"
        );
        let i = super::internal("t", "d.test", "Alice <alice@c.test>", "hello");
        assert!(i.contains("\r\nFrom: Alice <alice@c.test>\r\n"), "{i}");
        assert!(i.contains("\r\nSubject: hello\r\n"), "{i}");
        assert!(i.contains("X-MS-Exchange-CrossTenant-AuthAs: Internal\r\n"));
        assert!(i.contains("X-MS-Exchange-CrossTenant-Id: t\r\n"));
        assert!(!i.contains("O365ConnectorValidation"), "{i}");
        assert!(!i.contains("connector validation"), "{i}");
        assert!(i.ends_with("through Exchange Online.\r\n"), "{i}");
    }
}
