//! The content's wire form: CRLF line ends only, dot-stuffing, the end.

use memchr::memchr2;

/// How much content is encoded and written at a time.
pub(super) const DATA_CHUNK: usize = 64 * 1024;

/// Turns message content into DATA's wire form: CRLF as the only line end
/// (a bare LF, a bare CR, and the CR of a CR CR LF each become CRLF), a `.`
/// added before every line that starts with `.` (RFC 5321 §4.5.2), and at
/// the end a CRLF if the content lacks one, then `.` CRLF.
///
/// Feed the content in pieces of any size; the result does not depend on
/// where they are cut.
#[derive(Debug, Clone)]
pub struct DataEncoder {
    /// Whether dots are stuffed (not when only measuring).
    stuff: bool,
    /// The output is at the start of a line.
    line_start: bool,
    /// The last input byte was a CR whose line end is not written yet.
    cr_pending: bool,
}

impl Default for DataEncoder {
    fn default() -> Self {
        DataEncoder::new()
    }
}

impl DataEncoder {
    /// An encoder at the start of the content.
    pub fn new() -> Self {
        DataEncoder {
            stuff: true,
            line_start: true,
            cr_pending: false,
        }
    }

    /// An encoder that only normalizes line ends (no dot-stuffing, no
    /// terminator): for measuring.
    pub(super) fn measuring() -> Self {
        DataEncoder {
            stuff: false,
            ..DataEncoder::new()
        }
    }

    /// Appends the wire form of `input` to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while let Some(&first) = input.first() {
            if self.cr_pending {
                self.cr_pending = false;
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
                if first == b'\n' {
                    input = &input[1..];
                    continue;
                }
            }
            let end = memchr2(b'\r', b'\n', input).unwrap_or(input.len());
            if end > 0 {
                if self.stuff && self.line_start && first == b'.' {
                    out.push(b'.');
                }
                out.extend_from_slice(&input[..end]);
                self.line_start = false;
                input = &input[end..];
                continue;
            }
            if first == b'\r' {
                self.cr_pending = true;
            } else {
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
            }
            input = &input[1..];
        }
    }

    /// Ends the content: the pending line end, a CRLF if the content did
    /// not end with one, and (when stuffing) the terminating `.` CRLF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.cr_pending || !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        self.cr_pending = false;
        self.line_start = true;
        if self.stuff {
            out.extend_from_slice(b".\r\n");
        }
    }

    /// The whole wire form of `content`, terminator included.
    pub fn encode(content: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(content.len() + content.len() / 50 + 8);
        let mut e = DataEncoder::new();
        e.feed(content, &mut out);
        e.finish(&mut out);
        out
    }

    /// The size of `content` with CRLF line ends (and a final CRLF), without
    /// dot-stuffing or terminator: the SIZE= value (RFC 1870).
    pub fn message_size(content: &[u8]) -> u64 {
        let mut e = DataEncoder::measuring();
        let mut size = 0u64;
        let mut out = Vec::with_capacity(DATA_CHUNK + DATA_CHUNK / 2);
        for chunk in content.chunks(DATA_CHUNK) {
            out.clear();
            e.feed(chunk, &mut out);
            size += out.len() as u64;
        }
        out.clear();
        e.finish(&mut out);
        size + out.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_in_pieces(content: &[u8], piece: usize) -> Vec<u8> {
        let mut e = DataEncoder::new();
        let mut out = Vec::new();
        for c in content.chunks(piece.max(1)) {
            e.feed(c, &mut out);
        }
        e.finish(&mut out);
        out
    }

    #[test]
    fn dot_stuffing_and_line_ends() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".a\r\n..b\r\n.\r\n", b"..a\r\n...b\r\n..\r\n.\r\n"),
            (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
            (b"a\rb\r", b"a\r\nb\r\n.\r\n"),
            (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
            (b"x.y\r\n", b"x.y\r\n.\r\n"),
            // Smuggling attempts stay content.
            (b"a\r\n.\r\r\nb\r\n", b"a\r\n..\r\n\r\nb\r\n.\r\n"),
            (b"a\r\r\n.\r\nb\r\n", b"a\r\n\r\n..\r\nb\r\n.\r\n"),
            (b"a\n.\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r.\rb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
            (b"a\r\n.\n", b"a\r\n..\r\n.\r\n"),
            (b"\n.", b"\r\n..\r\n.\r\n"),
        ];
        for (input, want) in cases {
            for piece in [1, 2, 3, 7, 1000] {
                let got = encode_in_pieces(input, piece);
                assert_eq!(
                    got.escape_ascii().to_string(),
                    want.escape_ascii().to_string(),
                    "input {} in pieces of {piece}",
                    input.escape_ascii()
                );
            }
            assert_eq!(DataEncoder::encode(input), *want);
        }
    }

    #[test]
    fn encoded_content_has_one_end_and_only_crlf() {
        let mut content = Vec::new();
        for i in 0..4000u32 {
            content.push(b"\r\n.x"[(i.wrapping_mul(2654435761) >> 7) as usize % 4]);
        }
        let out = DataEncoder::encode(&content);
        let body = &out[..out.len() - 3];
        assert!(out.ends_with(b"\r\n.\r\n"));
        for (i, &b) in out.iter().enumerate() {
            match b {
                b'\r' => assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
                b'\n' => assert_eq!(out[i - 1], b'\r', "bare LF at {i}"),
                _ => {}
            }
        }
        assert!(
            !body.windows(5).any(|w| w == b"\r\n.\r\n"),
            "the terminator appears early"
        );
        assert!(!body.starts_with(b".\r\n"));
    }

    #[test]
    fn message_size_counts_crlf_without_stuffing() {
        assert_eq!(DataEncoder::message_size(b""), 0);
        assert_eq!(DataEncoder::message_size(b"a\nb"), 6);
        assert_eq!(DataEncoder::message_size(b".a\r\n"), 4);
        let big = b"line\n".repeat(50_000);
        assert_eq!(DataEncoder::message_size(&big), 6 * 50_000);
    }
}
