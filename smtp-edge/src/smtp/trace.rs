//! Our `Received:` trace field (RFC 5321 §4.4). The session gathers the
//! facts ([`Trace`]); the spool renders them once the queue id is known.
//!
//! Nothing the client chose can fold or end the field: the EHLO name is a
//! domain or an address literal (the session refuses anything else), and
//! every value is stripped of CR, LF and the characters that would close a
//! comment early; the message itself may not start with a continuation line
//! ([`super::header`]).

use serde::{Deserialize, Serialize};

/// TLS facts about the session a message came in on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// "TLSv1.3" or "TLSv1.2".
    pub version: String,
    /// Cipher suite name.
    pub cipher: String,
    /// Verified client certificate subject, if one was presented and verified.
    pub client_cert: Option<String>,
    /// What the verified client certificate chain is valid for:
    /// "clientAuth", "serverAuth" (a 2026 public CA's server certificate)
    /// or "any" (no extended key usage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_purpose: Option<String>,
}

/// The facts of one `Received:` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// EHLO/HELO name (a domain or an address literal).
    pub helo: Option<String>,
    /// The client's address as text (`192.0.2.1`, `IPv6:2001:db8::1`).
    pub ip: String,
    /// Our host name.
    pub hostname: String,
    /// EHLO (not HELO) was used.
    pub esmtp: bool,
    /// TLS, when the session used it.
    pub tls: Option<TlsInfo>,
    /// The inbound connector.
    pub connector: String,
    /// The recipient, when there is exactly one.
    pub recipient: Option<String>,
    /// The device account the client authenticated as (SMTP AUTH).
    pub auth: Option<String>,
    /// When (seconds since the epoch).
    pub at: u64,
}

fn clean(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !matches!(c, '(' | ')' | '"' | ';' | '<' | '>'))
        .collect()
}

/// A host name or address literal: up to the first character that cannot be
/// in one (the session already refuses such EHLO names).
fn host(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'))
        .collect()
}

impl Trace {
    /// The field for queue id `id`, CRLF included.
    pub fn render(&self, id: &str) -> String {
        // RFC 3848: ESMTPSA / ESMTPA for authenticated sessions.
        let proto = match (self.esmtp, self.tls.is_some(), self.auth.is_some()) {
            (true, true, true) => "ESMTPSA",
            (true, false, true) => "ESMTPA",
            (true, true, false) => "ESMTPS",
            (true, false, false) => "ESMTP",
            (false, true, _) => "SMTPS",
            (false, false, _) => "SMTP",
        };
        let helo = match self.helo.as_deref().map(host) {
            Some(h) if !h.is_empty() => h,
            _ => "unknown".into(),
        };
        let mut h = format!(
            "Received: from {helo} ([{}])\r\n\tby {} (smtp-edge) with {proto}",
            clean(&self.ip),
            clean(&self.hostname)
        );
        if let Some(t) = &self.tls {
            h.push_str(&format!(
                "\r\n\t(version={} cipher={}",
                clean(&t.version),
                clean(&t.cipher)
            ));
            if let Some(c) = &t.client_cert {
                h.push_str(&format!(" client-certificate=\"{}\"", clean(c)));
            }
            if let Some(p) = &t.client_cert_purpose {
                h.push_str(&format!(" purpose={}", clean(p)));
            }
            h.push(')');
        }
        if let Some(a) = &self.auth {
            h.push_str(&format!("\r\n\t(authenticated as {})", clean(a)));
        }
        h.push_str(&format!(
            "\r\n\t(connector {}) id {}",
            clean(&self.connector),
            clean(id)
        ));
        if let Some(r) = &self.recipient {
            h.push_str(&format!("\r\n\tfor <{}>", clean(r)));
        }
        h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(self.at)));
        h
    }
}

/// An RFC 5322 date in UTC (`Mon, 23 Nov 2026 08:00:00 +0000`).
pub fn rfc5322_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WD[days.rem_euclid(7) as usize],
        day,
        MON[(month - 1) as usize],
        year,
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(
            rfc5322_date(1_795_420_800),
            "Mon, 23 Nov 2026 08:00:00 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn nothing_client_chosen_can_fold_or_close_the_field() {
        let t = Trace {
            helo: Some("evil (forged by trusted.example.test); x\r\n y".into()),
            ip: "192.0.2.1".into(),
            hostname: "edge.contoso.com".into(),
            esmtp: true,
            tls: Some(TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
                client_cert: Some("CN=a\") (x".into()),
                client_cert_purpose: Some("serverAuth".into()),
            }),
            connector: "internet".into(),
            recipient: Some("b@contoso.com>\r\nX: y".into()),
            auth: Some("scanner) (x\r\nY: z".into()),
            at: 0,
        };
        let r = t.render("0123");
        assert!(!r.contains("forged by trusted"), "{r}");
        assert!(!r.contains("\r\n y") && !r.contains("\r\nX: y"), "{r}");
        // Every line but the first is a continuation of the one field.
        assert!(r.lines().skip(1).all(|l| l.starts_with('\t')), "{r}");
        assert_eq!(r.matches("(").count(), r.matches(")").count(), "{r}");
        assert!(r.contains("\" purpose=serverAuth)\r\n"), "{r}");
    }
}
