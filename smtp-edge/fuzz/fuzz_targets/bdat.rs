//! One message sent as BDAT chunks, cut two different fuzzer-chosen ways,
//! each chunk fed in fuzzer-chosen reads (with the next command's bytes
//! after it), under both bare-line-ending policies.
//!
//! Invariants:
//! - every chunk ends exactly at its size; nothing after it is consumed;
//! - the chunking does not change the outcome: the same output, the same
//!   success or error, the same size;
//! - success means no bare CR or LF in the output, and under Reject the
//!   output is the input unchanged; NUL is refused unless allowed;
//! - the output never exceeds the size limit; no panic.

#![no_main]

use libfuzzer_sys::{
    arbitrary::{self, Arbitrary},
    fuzz_target,
};
use smtp_edge::smtp::data::{
    BareLineEndings, BdatReader, DataConfig, DataError, DataStats, NulBytes,
};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bit 0: NUL allowed; bit 1: small size limit; bit 2: small line limit.
    options: u8,
    /// Chunk sizes of the first cut, cycled.
    chunks_a: Vec<u8>,
    /// Chunk sizes of the second cut, cycled.
    chunks_b: Vec<u8>,
    /// Read sizes within a chunk, cycled.
    reads: Vec<u8>,
    data: Vec<u8>,
}

fn cycled(sizes: &[u8], k: usize, default: usize) -> usize {
    sizes
        .get(k % sizes.len().max(1))
        .map_or(default, |&n| usize::from(n))
}

fn run(
    cfg: DataConfig,
    data: &[u8],
    chunks: &[u8],
    reads: &[u8],
) -> (Vec<u8>, Result<DataStats, DataError>) {
    let mut reader = BdatReader::new(cfg);
    let mut out = Vec::new();
    let (mut pos, mut k, mut r) = (0, 0, 0);
    loop {
        // Zero-size chunks are legal (BDAT 0); after 64 chunks, the rest.
        let rest = data.len() - pos;
        let n = match cycled(chunks, k, rest).min(rest) {
            0 if k >= 64 => rest,
            n => n,
        };
        k += 1;
        let last = n == rest;
        reader.start_chunk(n as u64, last);
        let mut wire = data[pos..pos + n].to_vec();
        wire.extend_from_slice(b"RSET\r\n");
        let mut used = 0;
        loop {
            let piece = cycled(reads, r, wire.len()).max(1);
            r += 1;
            let end = (used + piece).min(wire.len());
            let f = reader.feed(&wire[used..end], &mut out);
            used += f.consumed;
            assert!(out.len() as u64 <= cfg.max_size);
            if f.end {
                break;
            }
            assert!(used < n, "the chunk must end at its size");
        }
        assert_eq!(used, n, "exactly the chunk is consumed");
        pos += n;
        if last {
            break;
        }
    }
    assert!(reader.is_complete());
    (out, reader.result())
}

fn has_bare(b: &[u8]) -> bool {
    b.iter().enumerate().any(|(i, &c)| {
        (c == b'\r' && b.get(i + 1) != Some(&b'\n'))
            || (c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
    })
}

fuzz_target!(|input: Input| {
    if input.data.len() > 4096 {
        return;
    }
    for policy in [BareLineEndings::Reject, BareLineEndings::Normalize] {
        let o = input.options;
        let cfg = DataConfig {
            bare_line_endings: policy,
            nul: if o & 1 != 0 {
                NulBytes::Allow
            } else {
                NulBytes::Reject
            },
            max_size: if o & 2 != 0 { 64 } else { u64::MAX },
            max_line: if o & 4 != 0 { 16 } else { 1000 },
        };
        let a = run(cfg, &input.data, &input.chunks_a, &input.reads);
        let b = run(cfg, &input.data, &input.chunks_b, &[]);
        assert_eq!(a.1, b.1, "the chunking changed the verdict");
        if let Ok(stats) = a.1 {
            assert_eq!(a.0, b.0, "the chunking changed the message");
            assert_eq!(stats.size, a.0.len() as u64);
            assert!(!has_bare(&a.0));
            if cfg.nul == NulBytes::Reject {
                assert!(!a.0.contains(&0));
            }
            if policy == BareLineEndings::Reject {
                assert_eq!(a.0, input.data);
            }
        }
    }
});
