//! Send-as: whether an authenticated device's message claims to be from
//! one of the device's senders. Every `From` and `Sender` field of the
//! header section as it leaves the host (after the header filter: CRLF
//! line ends, folded lines kept) is collected while the message streams
//! in, then read with mail-parser (encoded words, groups, comments); each
//! address in them must be one of the device's senders
//! ([`Device::may_send_as`]), and a field without a readable address fails.
//!
//! With `header_from = "enforce"` (the default) a message that fails is
//! refused at the end of its data with 550 5.7.60, Exchange's
//! "SendAsDenied" (RFC 3463's class 5, subject 7: security or policy), and
//! never reaches the spool; with `"log"` it is relayed and the mismatch
//! logged.

use crate::inbound::submission::devices::Device;
use crate::smtp::reply::Reply;

pub use crate::config::submission::HeaderFrom;

/// The most octets of From and Sender fields kept (the header filter
/// bounds the whole header section anyway).
const MAX_FIELDS: usize = 256 * 1024;

/// The From and Sender fields of a header section, collected as it streams
/// out of the header filter.
#[derive(Debug, Default)]
pub struct Fields {
    /// The fields so far, names made canonical (`From:`, `Sender:`).
    text: Vec<u8>,
    /// How many fields were collected.
    count: usize,
    /// The current line, until its LF.
    line: Vec<u8>,
    /// The field of the current line's continuation lines is collected.
    collecting: bool,
    /// The header section has ended.
    done: bool,
    /// More than [`MAX_FIELDS`] octets: nothing can be judged.
    overflow: bool,
}

/// Why a message fails the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The field (`From` or `Sender`).
    pub field: &'static str,
    /// The address that is not the device's (or what could not be read).
    pub address: String,
}

impl Fields {
    /// Takes header-filter output (CRLF line ends).
    pub fn feed(&mut self, mut out: &[u8]) {
        while !self.done && !out.is_empty() {
            match memchr::memchr(b'\n', out) {
                None => {
                    self.push(out);
                    return;
                }
                Some(i) => {
                    self.push(&out[..i]);
                    out = &out[i + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.end_line(&line);
                }
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.line.len() + bytes.len() <= MAX_FIELDS {
            self.line.extend_from_slice(bytes);
        } else {
            self.overflow = true;
        }
    }

    fn end_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.done = true;
            return;
        }
        if matches!(line[0], b' ' | b'\t') {
            if self.collecting {
                self.keep(b"", line);
            }
            return;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            self.collecting = false;
            return;
        };
        let name = line[..colon].trim_ascii();
        let canonical: Option<&[u8]> = if name.eq_ignore_ascii_case(b"from") {
            Some(b"From:")
        } else if name.eq_ignore_ascii_case(b"sender") {
            Some(b"Sender:")
        } else {
            None
        };
        self.collecting = canonical.is_some();
        if let Some(c) = canonical {
            self.count += 1;
            self.keep(c, &line[colon + 1..]);
        }
    }

    fn keep(&mut self, head: &[u8], rest: &[u8]) {
        if self.text.len() + head.len() + rest.len() + 2 > MAX_FIELDS {
            self.overflow = true;
            return;
        }
        self.text.extend_from_slice(head);
        self.text.extend_from_slice(rest);
        self.text.extend_from_slice(b"\r\n");
    }

    /// Every address of the fields, with its field's name; `None` for a
    /// field without a readable address.
    fn addresses(&self) -> Vec<(&'static str, Option<String>)> {
        let mut out = Vec::new();
        if self.count == 0 {
            return out;
        }
        let mut text = self.text.clone();
        text.extend_from_slice(b"\r\n");
        let parsed = mail_parser::MessageParser::new().parse_headers(&text);
        let mut seen = 0;
        for h in parsed.as_ref().map(|m| m.headers()).unwrap_or_default() {
            let field = match h.name {
                mail_parser::HeaderName::From => "From",
                mail_parser::HeaderName::Sender => "Sender",
                _ => continue,
            };
            seen += 1;
            let addrs: Vec<Option<String>> = match &h.value {
                mail_parser::HeaderValue::Address(a) => a
                    .iter()
                    .map(|x| x.address.as_deref().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            if addrs.is_empty() {
                out.push((field, None));
            }
            out.extend(addrs.into_iter().map(|a| (field, a)));
        }
        if seen != self.count {
            // A field mail-parser did not take for one: unreadable.
            out.push(("From", None));
        }
        out
    }

    /// Whether the header section has ended (nothing more is collected).
    pub fn complete(&self) -> bool {
        self.done
    }

    /// The first address of the first From field, if any (for the log).
    pub fn from_address(&self) -> Option<String> {
        self.addresses()
            .into_iter()
            .find(|(f, _)| *f == "From")
            .and_then(|(_, a)| a)
    }

    /// The first address (or unreadable field) that is not one of
    /// `device`'s senders. A message without From or Sender passes: its
    /// envelope sender is the device's.
    pub fn check(&self, device: &Device) -> Result<(), Mismatch> {
        if device.senders.is_empty() {
            return Ok(());
        }
        if self.overflow {
            return Err(Mismatch {
                field: "From",
                address: "(too long to read)".into(),
            });
        }
        for (field, address) in self.addresses() {
            match address {
                Some(a) if device.may_send_as(&a) => {}
                Some(a) => return Err(Mismatch { field, address: a }),
                None => {
                    return Err(Mismatch {
                        field,
                        address: "(no readable address)".into(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl Mismatch {
    /// 550 5.7.60 naming the device.
    pub fn reply(&self, device: &str) -> Reply {
        Reply::new(
            550,
            (5, 7, 60),
            &format!(
                "{} {} is not one of device {device}'s senders",
                self.field, self.address
            ),
        )
    }
}

/// The check an [`crate::inbound::intake::Intake`] runs for a device.
#[derive(Debug, Clone)]
pub struct SendAs {
    /// The device the client authenticated as.
    pub device: Device,
    /// Refuse, or only log.
    pub mode: HeaderFrom,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(senders: &[&str]) -> Device {
        Device {
            name: "printer".into(),
            hash: String::new(),
            senders: senders.iter().map(|s| s.to_string()).collect(),
            rate_per_hour: None,
            connector: None,
        }
    }

    fn judge(header: &str, piece: usize) -> Result<(), Mismatch> {
        let mut f = Fields::default();
        let text = format!("{header}\r\nbody: From: <ceo@contoso.com>\r\n");
        for chunk in text.as_bytes().chunks(piece) {
            f.feed(chunk);
        }
        f.check(&device(&["printer@contoso.com"]))
    }

    #[test]
    fn every_from_and_sender_field_must_be_the_devices() {
        let ok = [
            "From: Printer <printer@contoso.com>\r\nTo: a@b.example\r\n",
            "From: =?utf-8?q?Printer?= <PRINTER@Contoso.com>\r\n",
            "From: \"ceo@contoso.com\" <printer@contoso.com>\r\n",
            "Subject: no From at all\r\n",
            "From: printer@contoso.com (CEO)\r\nSender: printer@contoso.com\r\n",
        ];
        for h in ok {
            for piece in [1, 3, usize::MAX] {
                assert_eq!(judge(h, piece), Ok(()), "{h:?}");
            }
        }
        let bad = [
            ("From: CEO <ceo@contoso.com>\r\n", "ceo@contoso.com"),
            ("From: CEO\r\n <ceo@contoso.com>\r\n", "ceo@contoso.com"),
            (
                "From:\r\n\t=?utf-8?q?The_CEO?=\r\n <ceo@contoso.com>\r\n",
                "ceo@contoso.com",
            ),
            (
                "From: <printer@contoso.com>\r\nTo: x@y.example\r\nFROM : <ceo@contoso.com>\r\n",
                "ceo@contoso.com",
            ),
            (
                "From: Board: printer@contoso.com, ceo@contoso.com;\r\n",
                "ceo@contoso.com",
            ),
            (
                "From: printer@contoso.com, ceo@contoso.com\r\n",
                "ceo@contoso.com",
            ),
            (
                "From: <printer@contoso.com>\r\nSender: CEO <ceo@contoso.com>\r\n",
                "ceo@contoso.com",
            ),
        ];
        for (h, addr) in bad {
            for piece in [1, 3, usize::MAX] {
                let e = judge(h, piece).expect_err(h);
                assert_eq!(e.address, addr, "{h:?}");
            }
        }
        for h in [
            "From: =?utf-8?q?ceo=40contoso=2Ecom?=\r\n",
            "From: undisclosed\r\n",
            "From:\r\n",
        ] {
            assert!(judge(h, usize::MAX).is_err(), "{h:?}");
        }
        let e = judge("Sender: <ceo@contoso.com>\r\n", 5).expect_err("sender");
        assert_eq!(e.field, "Sender");
        let r = e.reply("printer");
        assert_eq!((r.code, r.status), (550, Some((5, 7, 60))));
    }

    #[test]
    fn a_device_with_any_sender_and_domains() {
        let mut f = Fields::default();
        f.feed(b"From: CEO <ceo@contoso.com>\r\n\r\n");
        assert_eq!(f.check(&device(&[])), Ok(()));
        assert_eq!(f.check(&device(&["contoso.com"])), Ok(()));
        assert!(f.check(&device(&["fabrikam.com"])).is_err());
        assert_eq!(f.from_address().as_deref(), Some("ceo@contoso.com"));
    }
}
