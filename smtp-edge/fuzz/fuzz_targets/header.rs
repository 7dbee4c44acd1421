//! The header firewall, on its own and in the receiving pipeline.
//!
//! 1. Arbitrary message bytes, split at fuzzer-chosen points, through
//!    `HeaderFilter` (trusted or not). An independent oracle cuts the input
//!    into lines the widest way (CR, LF and CRLF each end one), groups them
//!    into fields and predicts the verdict and the exact output: the kept
//!    header lines with CRLF, then the body unchanged. The split never
//!    changes anything.
//! 2. The whole way a message takes through the host: SMTP DATA bytes
//!    through the DATA reader (normalize), the filter, and the delivery
//!    encoder; what a CRLF-normalising reader — and mail-parser — sees of
//!    the result has no header field the firewall removes, and exactly the
//!    fields it kept, no new ones.
//! 3. Authentication-Results fields claiming this host (`edge.test`) are
//!    removed from every message: an oracle written apart from the filter
//!    reads the authserv-id (RFC 8601 §2.2: CFWS with nested comments and
//!    quoted-pairs, token or quoted-string, any case, trailing dots), and no
//!    field that leaves claims it. Option bits put such a field in front
//!    and the id where the input has a `#`, so the fuzzer reaches them.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::{
    arbitrary::{self, Arbitrary},
    fuzz_target,
};
use smtp_edge::outbound::client::DataEncoder;
use smtp_edge::smtp::data::{BareLineEndings, DataConfig, DataReader, NulBytes};
use smtp_edge::smtp::header::{HeaderError, HeaderFilter, Limits, Policy};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bit 0: trusted; bit 1: small line limit; bit 2: small Received limit;
    /// bit 3: an `Authentication-Results:` name in front; bit 4: the first
    /// `#` becomes this host's id.
    options: u8,
    splits: Vec<u8>,
    data: Vec<u8>,
}

/// Lines the widest way: (content, terminator length), and where the body
/// starts (after the first empty line), if it does.
fn oracle_lines(b: &[u8]) -> (Vec<&[u8]>, Option<usize>) {
    let mut lines = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let Some(j) = b[pos..].iter().position(|&c| c == b'\r' || c == b'\n') else {
            lines.push(&b[pos..]);
            return (lines, None);
        };
        let line = &b[pos..pos + j];
        let end = if b[pos + j] == b'\r' && b.get(pos + j + 1) == Some(&b'\n') {
            pos + j + 2
        } else {
            pos + j + 1
        };
        if line.is_empty() {
            return (lines, Some(end));
        }
        lines.push(line);
        pos = end;
    }
    (lines, None)
}

/// This host's authserv-id in the policy under test.
const OWN_ID: &str = "edge.test";

/// Whether an `Authentication-Results` value (first line) claims
/// [`OWN_ID`], or cannot be read to its id on this line.
fn oracle_claims(value: &[u8]) -> bool {
    let mut s = value;
    loop {
        s = s.trim_ascii_start();
        if s.first() != Some(&b'(') {
            break;
        }
        let (mut depth, mut j, mut closed) = (0, 0, None);
        while j < s.len() {
            match s[j] {
                b'\\' => j += 1,
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        closed = Some(j);
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        match closed {
            Some(j) => s = &s[j + 1..],
            None => return true,
        }
    }
    let id: Vec<u8> = match s.first() {
        None => return true,
        Some(b'"') => {
            let mut id = Vec::new();
            let mut it = s[1..].iter();
            loop {
                match it.next() {
                    None => return true,
                    Some(b'"') => break,
                    Some(b'\\') => match it.next() {
                        None => return true,
                        Some(&c) => id.push(c),
                    },
                    Some(&c) => id.push(c),
                }
            }
            id
        }
        Some(_) => s
            .iter()
            .copied()
            .take_while(|c| !c.is_ascii_whitespace() && !c.is_ascii_control() && !b"()<>@,;:\\\"/[]?=".contains(c))
            .collect(),
    };
    let mut id = id.trim_ascii();
    while let [rest @ .., b'.'] = id {
        id = rest;
    }
    id.is_empty() || id.eq_ignore_ascii_case(OWN_ID.as_bytes())
}

/// Whether the oracle removes a field whatever the trust: an
/// Authentication-Results field claiming this host.
fn oracle_forged(line: &[u8]) -> bool {
    match line.iter().position(|&c| c == b':') {
        Some(i) => {
            line[..i].trim_ascii().eq_ignore_ascii_case(b"authentication-results")
                && oracle_claims(&line[i + 1..])
        }
        None => false,
    }
}

fn name_of(line: &[u8]) -> &[u8] {
    match line.iter().position(|&c| c == b':') {
        Some(i) => &line[..i],
        None => line,
    }
}

/// The verdict and output the filter must give.
fn oracle(
    policy: &Policy,
    trusted: bool,
    limits: Limits,
    input: &[u8],
) -> Result<Vec<u8>, HeaderError> {
    let (lines, body) = oracle_lines(input);
    let mut out = Vec::new();
    let mut keep = true;
    let mut received = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.len() + 2 > limits.max_line {
            return Err(HeaderError::LineTooLong {
                limit: limits.max_line,
            });
        }
        if matches!(line[0], b' ' | b'\t') {
            if i == 0 {
                return Err(HeaderError::LeadingContinuation);
            }
        } else {
            let name = name_of(line);
            keep = (trusted || !policy.strips(name)) && !oracle_forged(line);
            if line.contains(&b':') && name.trim_ascii().eq_ignore_ascii_case(b"received") {
                received += 1;
                if received > limits.max_received {
                    return Err(HeaderError::TooManyHops {
                        limit: limits.max_received,
                    });
                }
            }
        }
        if keep {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(start) = body {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&input[start..]);
    }
    Ok(out)
}

fn filter(
    policy: &Arc<Policy>,
    trusted: bool,
    limits: Limits,
    input: &[u8],
    splits: &[u8],
) -> Result<Vec<u8>, HeaderError> {
    let mut f = HeaderFilter::new(policy.clone(), trusted, limits);
    let mut out = Vec::new();
    let (mut pos, mut k) = (0, 0);
    while pos < input.len() {
        let n = splits
            .get(k % splits.len().max(1))
            .map_or(input.len(), |&n| usize::from(n).max(1))
            .min(input.len() - pos);
        k += 1;
        f.feed(&input[pos..pos + n], &mut out);
        pos += n;
    }
    f.finish(&mut out).map(|_| out)
}

/// The header fields a strict CRLF reader finds in delivered DATA bytes
/// (dot-stuffed, ended by `.\r\n`): (name, whole field text).
fn delivered_fields(wire: &[u8]) -> Vec<Vec<u8>> {
    let body = wire.strip_suffix(b".\r\n").expect("terminator");
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for line in body.split(|&c| c == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(!line.contains(&b'\r'), "only CRLF leaves the host");
        let line = line.strip_prefix(b".").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            if let Some(f) = fields.last_mut() {
                f.extend_from_slice(line);
            }
        } else {
            fields.push(line.to_vec());
        }
    }
    fields
}

fuzz_target!(|input: Input| {
    if input.data.len() > 8192 {
        return;
    }
    let policy = Arc::new(
        Policy::new(&["X-Extra".into(), "X-Corp-*".into()])
            .expect("policy")
            .with_authserv_id(OWN_ID),
    );
    let mut data = input.data;
    if input.options & 8 != 0 {
        data.splice(0..0, b"Authentication-Results:".iter().copied());
    }
    if input.options & 16 != 0
        && let Some(i) = data.iter().position(|&c| c == b'#')
    {
        data.splice(i..=i, OWN_ID.bytes());
    }
    let trusted = input.options & 1 != 0;
    let limits = Limits {
        max_line: if input.options & 2 != 0 { 24 } else { 1000 },
        max_received: if input.options & 4 != 0 { 2 } else { 50 },
        // Inputs are at most 8 KiB: the section bound never applies here.
        max_header: usize::MAX,
    };

    // 1. The filter against the oracle, whole and split.
    let want = oracle(&policy, trusted, limits, &data);
    let whole = filter(&policy, trusted, limits, &data, &[]);
    let split = filter(&policy, trusted, limits, &data, &input.splits);
    assert_eq!(whole, want, "the filter disagrees with the oracle");
    assert_eq!(split, want, "the split changed the outcome");

    // 2. SMTP DATA → reader (normalize) → filter → delivery encoder.
    let mut smtp = data.clone();
    smtp.extend_from_slice(b"\r\n.\r\n");
    let mut reader = DataReader::new(DataConfig {
        bare_line_endings: BareLineEndings::Normalize,
        nul: NulBytes::Allow,
        max_size: u64::MAX,
        max_line: usize::MAX,
    });
    let mut read = Vec::new();
    let f = reader.feed(&smtp, &mut read);
    if !f.end || reader.result().is_err() {
        return;
    }
    let Ok(spooled) = filter(&policy, trusted, limits, &read, &input.splits) else {
        return;
    };
    let wire = DataEncoder::encode(&spooled);
    let fields = delivered_fields(&wire);
    // Exactly the fields the filter kept: those of the oracle's view of what
    // it was given, and nothing new.
    let (lines, _) = oracle_lines(&read);
    let mut kept: Vec<Vec<u8>> = Vec::new();
    let mut keep = true;
    for line in lines {
        if matches!(line[0], b' ' | b'\t') {
            if keep && let Some(f) = kept.last_mut() {
                f.extend_from_slice(line);
            }
        } else {
            keep = (trusted || !policy.strips(name_of(line))) && !oracle_forged(line);
            if keep {
                kept.push(line.to_vec());
            }
        }
    }
    assert_eq!(fields, kept, "the fields that left are not those kept");
    for f in &fields {
        assert!(!oracle_forged(f), "a forged Authentication-Results field left the host");
    }
    if !trusted {
        for f in &fields {
            assert!(!policy.strips(name_of(f)), "a removed field left the host");
        }
        // And a real MIME parser agrees.
        let unstuffed: Vec<u8> = {
            let body = wire.strip_suffix(b".\r\n").expect("terminator");
            let mut out = Vec::new();
            for line in body.split_inclusive(|&c| c == b'\n') {
                out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            }
            out
        };
        if let Some(m) = mail_parser::MessageParser::default().parse(&unstuffed) {
            for h in m.headers() {
                assert!(
                    !policy.strips(h.name().as_bytes()),
                    "mail-parser sees a removed field: {}",
                    h.name()
                );
            }
        }
    }
});
