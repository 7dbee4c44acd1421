//! The SMTP AUTH exchange (RFC 4954) as the server parses it: the AUTH
//! command's arguments, each response line (base64, `=`, `*`), and the
//! PLAIN and LOGIN credentials in them. Never a panic; every refusal a
//! well-formed 5xx; what decodes is what was encoded; credentials never
//! hold a NUL; an authzid other than the authcid never passes.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::{
    arbitrary::{self, Arbitrary},
    fuzz_target,
};
use smtp_edge::smtp::command::Command;
use smtp_edge::smtp::reply::Reply;
use smtp_edge::smtp::sasl;

#[derive(Arbitrary, Debug)]
struct Input {
    /// The AUTH command line's arguments (and a line to parse as a command).
    args: String,
    /// Response lines as a client sends them.
    lines: Vec<String>,
    /// Raw SASL payloads, encoded by the harness.
    payloads: Vec<Vec<u8>>,
}

fn refusal(r: &Reply) {
    assert!((500..600).contains(&r.code), "{r:?}");
    let bytes = r.to_bytes();
    assert!(bytes.ends_with(b"\r\n"));
    assert_eq!(
        bytes.iter().filter(|&&b| b == b'\n').count(),
        r.lines.len().max(1)
    );
}

fn credentials(c: &sasl::Credentials) {
    assert!(!c.user.is_empty());
    assert!(!c.user.contains('\0') && !c.password.contains('\0'));
}

fuzz_target!(|input: Input| {
    if input.args.len() > 4096 || input.lines.len() > 16 || input.payloads.len() > 16 {
        return;
    }
    // The command line.
    let line = format!("AUTH {}\r\n", input.args);
    if let Ok(Command::Auth(args)) = Command::parse(line.as_bytes()) {
        match sasl::parse_start(&args) {
            Ok(start) => {
                if let Some(initial) = &start.initial {
                    match sasl::decode(initial) {
                        Ok(v) => {
                            if let Ok(c) = sasl::plain(&v) {
                                credentials(&c);
                            }
                        }
                        Err(r) => refusal(&r),
                    }
                }
            }
            Err(r) => refusal(&r),
        }
    }
    // Response lines.
    for l in &input.lines {
        match sasl::decode(l) {
            Ok(v) => {
                if let Ok(c) = sasl::plain(&v) {
                    credentials(&c);
                }
            }
            Err(r) => refusal(&r),
        }
    }
    // Encoded payloads decode to themselves; PLAIN's rules hold.
    for p in &input.payloads {
        let encoded = if p.is_empty() {
            "=".to_string()
        } else {
            STANDARD.encode(p)
        };
        assert_eq!(sasl::decode(&encoded).ok().as_deref(), Some(p.as_slice()));
        match sasl::plain(p) {
            Ok(c) => {
                credentials(&c);
                let mut parts = p.split(|&b| b == 0);
                let authzid = parts.next().unwrap_or_default();
                assert!(authzid.is_empty() || authzid == c.user.as_bytes());
            }
            Err(r) => refusal(&r),
        }
        let (user, pass) = p.split_at(p.len() / 2);
        match sasl::login(user, pass) {
            Ok(c) => credentials(&c),
            Err(r) => refusal(&r),
        }
    }
});
