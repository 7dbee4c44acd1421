//! Arbitrary bytes, split at fuzzer-chosen points, through the DATA reader
//! under both bare-line-ending policies (BDAT chunking has its own target,
//! `bdat`).
//!
//! Invariants:
//! - at most one end event; nothing is consumed after it;
//! - the end is exactly where an independent oracle puts it: after the first
//!   `\r\n.\r\n`, or after `.\r\n` at the very start;
//! - the split does not change the outcome (end, verdict — the same error
//!   when it fails —, output, stats);
//! - Normalize: the output never holds a bare CR or LF;
//! - Reject: success means the data held no bare CR or LF (nor NUL when
//!   NUL is rejected), and the output is the naive line-by-line unstuffing;
//! - the output never exceeds the size limit;
//! - no panic.

#![no_main]

use libfuzzer_sys::{
    arbitrary::{self, Arbitrary},
    fuzz_target,
};
use smtp_edge::smtp::data::{
    BareLineEndings, DataConfig, DataError, DataReader, DataStats, NulBytes,
};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bit 0: NUL allowed; bit 1: small size limit; bit 2: small line limit.
    options: u8,
    /// Chunk sizes, cycled.
    splits: Vec<u8>,
    data: Vec<u8>,
}

struct Outcome {
    ends: usize,
    end_at: Option<usize>,
    out: Vec<u8>,
    result: Result<DataStats, DataError>,
}

fn run_data(cfg: DataConfig, data: &[u8], splits: &[u8]) -> Outcome {
    let mut reader = DataReader::new(cfg);
    let mut out = Vec::new();
    let (mut ends, mut end_at) = (0, None);
    let (mut pos, mut k) = (0, 0);
    while pos < data.len() {
        let n = splits
            .get(k % splits.len().max(1))
            .map_or(data.len(), |&n| usize::from(n).max(1))
            .min(data.len() - pos);
        k += 1;
        let feed = reader.feed(&data[pos..pos + n], &mut out);
        assert!(feed.consumed <= n);
        if feed.end {
            ends += 1;
            end_at = Some(pos + feed.consumed);
        } else if end_at.is_none() {
            assert_eq!(feed.consumed, n, "all input is used before the end");
        } else {
            assert_eq!(feed.consumed, 0, "nothing is used after the end");
        }
        assert!(out.len() as u64 <= cfg.max_size);
        pos += n;
    }
    assert!(ends <= 1);
    assert_eq!(reader.is_done(), end_at.is_some());
    Outcome {
        ends,
        end_at,
        out,
        result: reader.result(),
    }
}

fn has_bare(b: &[u8]) -> bool {
    b.iter().enumerate().any(|(i, &c)| {
        (c == b'\r' && b.get(i + 1) != Some(&b'\n'))
            || (c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
    })
}

fn oracle_end(data: &[u8]) -> Option<usize> {
    if data.starts_with(b".\r\n") {
        return Some(3);
    }
    data.windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|i| i + 5)
}

/// Naive unstuffing of well-formed content (everything before the final
/// ".\r\n"): split into CRLF lines, drop one leading dot from each.
fn oracle_unstuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = content;
    while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
        let line = &rest[..i];
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        out.extend_from_slice(b"\r\n");
        rest = &rest[i + 2..];
    }
    assert!(rest.is_empty());
    out
}

fn config(options: u8, policy: BareLineEndings) -> DataConfig {
    DataConfig {
        bare_line_endings: policy,
        nul: if options & 1 != 0 {
            NulBytes::Allow
        } else {
            NulBytes::Reject
        },
        max_size: if options & 2 != 0 { 64 } else { u64::MAX },
        max_line: if options & 4 != 0 { 16 } else { 1000 },
    }
}

fuzz_target!(|input: Input| {
    let data = &input.data;
    let expected_end = oracle_end(data);
    for policy in [BareLineEndings::Reject, BareLineEndings::Normalize] {
        let cfg = config(input.options, policy);
        let whole = run_data(cfg, data, &[]);
        let split = run_data(cfg, data, &input.splits);
        for r in [&whole, &split] {
            assert_eq!(r.end_at, expected_end);
            assert_eq!(r.ends, usize::from(expected_end.is_some()));
        }
        assert_eq!(whole.result, split.result, "the split changed the verdict");
        let (Some(end), Ok(stats)) = (whole.end_at, whole.result) else {
            continue;
        };
        assert_eq!(whole.out, split.out);
        assert_eq!(Ok(stats), split.result);
        assert_eq!(stats.size, whole.out.len() as u64);
        match policy {
            BareLineEndings::Normalize => assert!(!has_bare(&whole.out)),
            BareLineEndings::Reject => {
                let consumed = &data[..end];
                assert!(!has_bare(consumed), "success with a bare CR or LF");
                if cfg.nul == NulBytes::Reject {
                    assert!(!consumed.contains(&0));
                }
                assert_eq!(whole.out, oracle_unstuff(&consumed[..end - 3]));
            }
        }
    }
});
