//! Message content: the DATA reader and the BDAT chunk reader.
//!
//! Both are streaming state machines fed arbitrary chunks (any split, down to
//! one byte at a time) that append the message bytes to a caller's buffer and
//! never buffer more than one pending byte of state themselves.
//!
//! # The end of DATA
//!
//! Only a real `<CRLF>.<CRLF>` ends DATA — CR immediately followed by LF, both
//! times — and the start of the message counts as following a CRLF, so a
//! message that begins with `.\r\n` is empty. No other form does: not
//! `\n.\n`, `\r.\r`, `\n.\r\n`, `\r\n.\n`, `\r\n.\r\r\n` and the rest of the
//! SMTP-smuggling family: they are message content (Normalize) or make the
//! transaction fail (Reject), and reading goes on to the real terminator, so
//! the connection stays in step with the client. Whatever follows the
//! terminator in the same input is left unconsumed: it is the next pipelined
//! command (RFC 2920).
//!
//! # Bare line endings
//!
//! A bare LF is an LF not preceded by CR; a bare CR is a CR not followed by LF
//! (so in `\r\r\n` the first CR is bare). With [`BareLineEndings::Reject`]
//! (the default), any of them fails the transaction with
//! [`DataError::BareLineEnding`], reported when the data ends. With
//! [`BareLineEndings::Normalize`] (as Postfix's
//! `smtpd_forbid_bare_newline = normalize`), each bare LF and each bare CR is
//! written as CRLF, and the line after it is treated like any other line
//! (a leading dot is removed, headers are counted) — except that it can never
//! start the end of DATA: only a CRLF that was really sent can.
//! Normalized output therefore never holds a bare CR or LF.
//!
//! # Other checks, reported when the data ends
//!
//! - NUL: [`DataError::Nul`] (554 5.6.0) unless [`NulBytes::Allow`].
//!   BINARYMIME is not offered, so BDAT content is text, with the same rules
//!   as DATA (and without dot-stuffing).
//! - A line over [`DataConfig::max_line`] octets, CRLF included, after
//!   dot-unstuffing (1000 by default, RFC 5321 §4.5.3.1.6):
//!   [`DataError::LineTooLong`], 554 5.6.0 — a content error answered at the
//!   end of the data, where 500 is not a valid reply.
//! - More than [`DataConfig::max_size`] octets of output:
//!   [`DataError::SizeExceeded`], 552 5.3.4.
//!
//! After the first error nothing more is written to the output (the caller
//! discards the message) and only the end is looked for. What the header
//! section holds (trace fields, Exchange-internal fields) is judged by
//! [`super::header`], on this reader's output.

use memchr::{memchr2, memchr3};
use thiserror::Error;

use super::reply::Reply;

/// The default longest text line, CRLF included (RFC 5321 §4.5.3.1.6).
pub const DEFAULT_MAX_LINE: usize = 1000;
/// The default largest message, in octets (Postfix's default).
pub const DEFAULT_MAX_SIZE: u64 = 10_240_000;

/// What to do with a bare CR or LF in message content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLineEndings {
    /// Fail the transaction ([`DataError::BareLineEnding`]).
    #[default]
    Reject,
    /// Write each as CRLF; such line ends never end DATA.
    Normalize,
}

/// What to do with NUL octets in message content (BINARYMIME aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NulBytes {
    /// Fail the transaction ([`DataError::Nul`]).
    #[default]
    Reject,
    /// Pass them on.
    Allow,
}

/// Limits and policies for message content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataConfig {
    /// Bare CR and LF.
    pub bare_line_endings: BareLineEndings,
    /// NUL octets.
    pub nul: NulBytes,
    /// The largest message, counted on the output (`u64::MAX`: no limit).
    pub max_size: u64,
    /// The longest line, CRLF included, counted on the output
    /// (`usize::MAX`: no limit).
    pub max_line: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            bare_line_endings: BareLineEndings::Reject,
            nul: NulBytes::Reject,
            max_size: DEFAULT_MAX_SIZE,
            max_line: DEFAULT_MAX_LINE,
        }
    }
}

/// Why the message is refused; [`reply`](DataError::reply) gives the answer to
/// the end of the data. Only the first error of a message is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DataError {
    /// A bare CR or LF under [`BareLineEndings::Reject`]. 554 5.5.2.
    #[error("bare CR or LF in message content")]
    BareLineEnding,
    /// A NUL under [`NulBytes::Reject`]. 554 5.6.0.
    #[error("NUL in message content")]
    Nul,
    /// A line over the limit. 554 5.6.0.
    #[error("message line longer than {limit} octets")]
    LineTooLong {
        /// The limit, CRLF included.
        limit: usize,
    },
    /// The message is over the size limit. 552 5.3.4.
    #[error("message larger than {limit} octets")]
    SizeExceeded {
        /// The limit.
        limit: u64,
    },
}

impl DataError {
    /// The reply to the end of the data.
    pub fn reply(&self) -> Reply {
        match self {
            DataError::BareLineEnding => Reply::new(
                554,
                (5, 5, 2),
                "Message rejected: bare CR or LF not allowed, lines must end with CRLF",
            ),
            DataError::Nul => Reply::new(
                554,
                (5, 6, 0),
                "Message rejected: NUL characters not allowed",
            ),
            DataError::LineTooLong { limit } => Reply::new(
                554,
                (5, 6, 0),
                &format!("Message rejected: line longer than {limit} octets"),
            ),
            DataError::SizeExceeded { .. } => Reply::message_too_big(),
        }
    }
}

/// What was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataStats {
    /// Octets written to the output (after dot-unstuffing and normalization).
    pub size: u64,
}

/// The outcome of one `feed` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feed {
    /// How many input bytes were used. Less than the input only when `end`
    /// is true (the rest is the next command) or the reader was already done.
    pub consumed: usize,
    /// DATA: the terminator was read, in this call. BDAT: the chunk is
    /// complete, in this call.
    pub end: bool,
}

// ---------------------------------------------------------------------------
// The shared state machine

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After a CRLF that was really sent, or at the start of the message.
    Start,
    /// After a normalized (or rejected) bare CR or LF: a line start that can
    /// never begin the end of DATA.
    SoftStart,
    /// Inside a line.
    Text,
    /// Inside a line, after a CR not yet known to be followed by LF.
    Cr,
    /// `Start` then `.`.
    Dot,
    /// `Start` then `.` then CR.
    DotCr,
    /// DATA ended.
    Done,
}

#[derive(Debug, Clone)]
struct Core {
    cfg: DataConfig,
    dot_stuffed: bool,
    state: State,
    size: u64,
    line_len: usize,
    error: Option<DataError>,
}

impl Core {
    fn new(cfg: DataConfig, dot_stuffed: bool) -> Self {
        Core {
            cfg,
            dot_stuffed,
            state: State::Start,
            size: 0,
            line_len: 0,
            error: None,
        }
    }

    fn stats(&self) -> DataStats {
        DataStats { size: self.size }
    }

    fn fail(&mut self, e: DataError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn check_nul(&self) -> bool {
        self.cfg.nul == NulBytes::Reject
    }

    /// Runs the machine over `input`; returns the bytes used and whether the
    /// end of DATA was read.
    fn run(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => return (i, false),
                State::Start | State::SoftStart => {
                    if self.dot_stuffed && input[i] == b'.' {
                        i += 1;
                        // A soft line start can never end DATA: unstuff now.
                        self.state = if self.state == State::Start {
                            State::Dot
                        } else {
                            State::Text
                        };
                    } else {
                        self.state = State::Text;
                    }
                }
                // The dot is dropped (dot-unstuffing) unless CR LF follows.
                State::Dot => {
                    if input[i] == b'\r' {
                        i += 1;
                        self.state = State::DotCr;
                    } else {
                        self.state = State::Text;
                    }
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        self.state = State::Done;
                        return (i + 1, true);
                    }
                    self.bare_cr(out);
                }
                State::Cr => {
                    if input[i] == b'\n' {
                        i += 1;
                        self.eol(out);
                        self.state = State::Start;
                    } else {
                        self.bare_cr(out);
                    }
                }
                State::Text => {
                    let rest = &input[i..];
                    let found = if self.check_nul() {
                        memchr3(b'\r', b'\n', 0, rest)
                    } else {
                        memchr2(b'\r', b'\n', rest)
                    };
                    let Some(j) = found else {
                        self.text(rest, out);
                        return (input.len(), false);
                    };
                    match rest[j] {
                        b'\r' if rest.get(j + 1) == Some(&b'\n') => {
                            self.line(&rest[..j + 2], out);
                            i += j + 2;
                            self.state = State::Start;
                        }
                        b'\r' => {
                            self.text(&rest[..j], out);
                            i += j + 1;
                            self.state = State::Cr;
                        }
                        b'\n' => {
                            self.text(&rest[..j], out);
                            i += j + 1;
                            self.bare_lf(out);
                        }
                        _ => {
                            // NUL, rejected.
                            self.text(&rest[..j], out);
                            self.fail(DataError::Nul);
                            i += j + 1;
                        }
                    }
                }
            }
        }
        (i, false)
    }

    /// The pending CR was not followed by LF.
    fn bare_cr(&mut self, out: &mut Vec<u8>) {
        match self.cfg.bare_line_endings {
            BareLineEndings::Reject => self.fail(DataError::BareLineEnding),
            BareLineEndings::Normalize => self.eol(out),
        }
        self.state = State::SoftStart;
    }

    /// An LF without CR before it.
    fn bare_lf(&mut self, out: &mut Vec<u8>) {
        match self.cfg.bare_line_endings {
            BareLineEndings::Reject => self.fail(DataError::BareLineEnding),
            BareLineEndings::Normalize => self.eol(out),
        }
        self.state = State::SoftStart;
    }

    /// Checks line content (no CR or LF in it) against the line limit;
    /// false once the message has failed. When the content crosses both
    /// limits, the one it crosses first (in octets) is the error, so the
    /// verdict does not depend on how the input was cut.
    fn account(&mut self, content: &[u8]) -> bool {
        if self.error.is_some() {
            return false;
        }
        let line_room = self
            .cfg
            .max_line
            .saturating_sub(2)
            .saturating_sub(self.line_len);
        self.line_len = self.line_len.saturating_add(content.len());
        if content.len() > line_room {
            let size_room = self.cfg.max_size.saturating_sub(self.size);
            if size_room < line_room as u64 + 1 {
                self.fail(DataError::SizeExceeded {
                    limit: self.cfg.max_size,
                });
            } else {
                self.fail(DataError::LineTooLong {
                    limit: self.cfg.max_line,
                });
            }
            return false;
        }
        true
    }

    fn end_line(&mut self) {
        self.line_len = 0;
    }

    fn write(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let size = self.size.saturating_add(bytes.len() as u64);
        if size > self.cfg.max_size {
            self.fail(DataError::SizeExceeded {
                limit: self.cfg.max_size,
            });
            return;
        }
        self.size = size;
        out.extend_from_slice(bytes);
    }

    /// Line content, without CR or LF.
    fn text(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if !bytes.is_empty() && self.account(bytes) {
            self.write(bytes, out);
        }
    }

    /// A line end (real or normalized).
    fn eol(&mut self, out: &mut Vec<u8>) {
        if self.error.is_none() {
            self.end_line();
            self.write(b"\r\n", out);
        }
    }

    /// The rest of a line and its real CRLF, written at once.
    fn line(&mut self, with_crlf: &[u8], out: &mut Vec<u8>) {
        let content = &with_crlf[..with_crlf.len().saturating_sub(2)];
        if self.account(content) {
            self.end_line();
            self.write(with_crlf, out);
        }
    }
}

// ---------------------------------------------------------------------------
// DATA

/// Reads the content after `DATA` up to `<CRLF>.<CRLF>`, dot-unstuffed.
#[derive(Debug, Clone)]
pub struct DataReader {
    core: Core,
}

impl DataReader {
    /// A reader for one message.
    pub fn new(cfg: DataConfig) -> Self {
        DataReader {
            core: Core::new(cfg, true),
        }
    }

    /// Reads `input`, appending message bytes to `out`. When the result says
    /// `end`, the message is complete and `input[consumed..]` belongs to the
    /// command parser; until then all input is consumed. After the end,
    /// consumes nothing.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        let (consumed, end) = self.core.run(input, out);
        Feed { consumed, end }
    }

    /// Whether the end of DATA was read.
    pub fn is_done(&self) -> bool {
        self.core.state == State::Done
    }

    /// The first error so far.
    pub fn error(&self) -> Option<DataError> {
        self.core.error
    }

    /// Sizes and counts so far.
    pub fn stats(&self) -> DataStats {
        self.core.stats()
    }

    /// The outcome, once [`is_done`](Self::is_done): the stats, or the error
    /// to answer with [`DataError::reply`].
    pub fn result(&self) -> Result<DataStats, DataError> {
        match self.core.error {
            Some(e) => Err(e),
            None => Ok(self.core.stats()),
        }
    }
}

// ---------------------------------------------------------------------------
// BDAT

/// Reads the chunks of one message sent with `BDAT` (RFC 3030): raw octets,
/// no dot-stuffing, with the same checks as DATA. Line state carries over
/// between chunks, so a CR ending one chunk and an LF starting the next make
/// a proper CRLF.
#[derive(Debug, Clone)]
pub struct BdatReader {
    core: Core,
    remaining: u64,
    open: bool,
    last: bool,
    complete: bool,
}

impl BdatReader {
    /// A reader for one message.
    pub fn new(cfg: DataConfig) -> Self {
        BdatReader {
            core: Core::new(cfg, false),
            remaining: 0,
            open: false,
            last: false,
            complete: false,
        }
    }

    /// Begins a chunk after `BDAT size [LAST]`. Then call
    /// [`feed`](Self::feed) until it says `end` (also for a chunk of size 0).
    /// Chunks after the last one are consumed and dropped: start a new
    /// reader for a new message.
    pub fn start_chunk(&mut self, size: u64, last: bool) {
        self.remaining = size;
        self.open = true;
        self.last = last;
    }

    /// Reads up to the rest of the current chunk from `input`, appending
    /// message bytes to `out`. `end` says the chunk is complete;
    /// `input[consumed..]` then belongs to the command parser. Without an
    /// open chunk, consumes nothing.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        if !self.open {
            return Feed {
                consumed: 0,
                end: false,
            };
        }
        let n = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(input.len());
        if !self.complete {
            self.core.run(&input[..n], out);
        }
        self.remaining -= n as u64;
        if self.remaining > 0 {
            return Feed {
                consumed: n,
                end: false,
            };
        }
        self.open = false;
        if self.last && !self.complete {
            if self.core.state == State::Cr {
                self.core.bare_cr(out);
            }
            self.complete = true;
        }
        Feed {
            consumed: n,
            end: true,
        }
    }

    /// Octets still to come in the current chunk.
    pub fn remaining(&self) -> u64 {
        if self.open { self.remaining } else { 0 }
    }

    /// Whether the last chunk has been read whole.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The first error so far.
    pub fn error(&self) -> Option<DataError> {
        self.core.error
    }

    /// Sizes and counts so far.
    pub fn stats(&self) -> DataStats {
        self.core.stats()
    }

    /// The outcome, once [`is_complete`](Self::is_complete).
    pub fn result(&self) -> Result<DataStats, DataError> {
        match self.core.error {
            Some(e) => Err(e),
            None => Ok(self.core.stats()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalize() -> DataConfig {
        DataConfig {
            bare_line_endings: BareLineEndings::Normalize,
            ..DataConfig::default()
        }
    }

    struct Run {
        out: Vec<u8>,
        ends: usize,
        /// Input offset just after the terminator.
        end_at: Option<usize>,
        result: Result<DataStats, DataError>,
    }

    /// Feeds `input` in pieces of the given sizes (cycled), like a socket.
    fn run_split(cfg: DataConfig, input: &[u8], sizes: &[usize]) -> Run {
        let mut r = DataReader::new(cfg);
        let mut out = Vec::new();
        let (mut ends, mut end_at, mut pos, mut k) = (0, None, 0, 0);
        while pos < input.len() {
            let n = sizes[k % sizes.len()].max(1).min(input.len() - pos);
            k += 1;
            let chunk = &input[pos..pos + n];
            let mut off = 0;
            // Like a session: after the end, the rest goes to the commands.
            while off < chunk.len() {
                let f = r.feed(&chunk[off..], &mut out);
                if f.end {
                    ends += 1;
                    end_at = Some(pos + off + f.consumed);
                }
                if f.consumed == 0 {
                    break;
                }
                off += f.consumed;
            }
            pos += n;
        }
        Run {
            out,
            ends,
            end_at,
            result: r.result(),
        }
    }

    fn run(cfg: DataConfig, input: &[u8]) -> Run {
        run_split(cfg, input, &[usize::MAX])
    }

    /// Whole, byte by byte, and in odd pieces: same outcome every time.
    fn run_all_splits(cfg: DataConfig, input: &[u8]) -> Run {
        let whole = run(cfg, input);
        for sizes in [&[1][..], &[2], &[3, 1, 7], &[5, 2], &[13]] {
            let r = run_split(cfg, input, sizes);
            assert_eq!(r.ends, whole.ends, "{sizes:?}");
            assert_eq!(r.end_at, whole.end_at, "{sizes:?}");
            assert_eq!(r.result.is_ok(), whole.result.is_ok(), "{sizes:?}");
            if whole.result.is_ok() {
                assert_eq!(r.out, whole.out, "{sizes:?}");
                assert_eq!(r.result, whole.result, "{sizes:?}");
            }
        }
        whole
    }

    // --- SMTP smuggling: one test per variant, both policies ---

    const HEAD: &[u8] = b"Subject: x\r\n\r\nbody";
    const TAIL: &[u8] = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled";
    const SMUGGLED: &[u8] = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nsmuggled\r\n";

    fn smuggle(variant: &[u8]) {
        let input = [HEAD, variant, TAIL, b"\r\n.\r\n"].concat();
        let has_nul = variant.contains(&0);

        // Reject: exactly one end, at the very end; the transaction failed.
        let r = run_all_splits(DataConfig::default(), &input);
        assert_eq!(r.ends, 1, "{variant:?}");
        assert_eq!(r.end_at, Some(input.len()), "{variant:?}");
        let want = if has_nul {
            DataError::Nul
        } else {
            DataError::BareLineEnding
        };
        assert_eq!(r.result, Err(want), "{variant:?}");

        // Normalize: one end at the very end; the smuggled commands are content.
        let cfg = DataConfig {
            nul: NulBytes::Allow,
            ..normalize()
        };
        let r = run_all_splits(cfg, &input);
        assert_eq!(r.ends, 1, "{variant:?}");
        assert_eq!(r.end_at, Some(input.len()), "{variant:?}");
        assert!(r.result.is_ok(), "{variant:?}: {:?}", r.result);
        assert!(
            r.out.ends_with(SMUGGLED),
            "{variant:?}: {:?}",
            String::from_utf8_lossy(&r.out)
        );
        assert!(r.out.starts_with(b"Subject: x\r\n\r\nbody"));
        assert_no_bare(&r.out);

        // Normalize with NUL rejected (the default): still one end at the end.
        let r = run_all_splits(normalize(), &input);
        assert_eq!((r.ends, r.end_at), (1, Some(input.len())), "{variant:?}");
        if has_nul {
            assert_eq!(r.result, Err(DataError::Nul));
        } else {
            assert!(r.result.is_ok());
            assert!(r.out.ends_with(SMUGGLED));
        }
    }

    fn assert_no_bare(out: &[u8]) {
        for (i, &b) in out.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
            if b == b'\n' {
                assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i}");
            }
        }
    }

    #[test]
    fn smuggle_lf_dot_lf() {
        smuggle(b"\n.\n");
    }

    #[test]
    fn smuggle_lf_dot_crlf() {
        smuggle(b"\n.\r\n");
    }

    #[test]
    fn smuggle_cr_dot_cr() {
        smuggle(b"\r.\r");
    }

    #[test]
    fn smuggle_cr_dot_lf() {
        smuggle(b"\r.\n");
    }

    #[test]
    fn smuggle_lf_dot_cr() {
        smuggle(b"\n.\r");
    }

    #[test]
    fn smuggle_cr_dot_crlf() {
        smuggle(b"\r.\r\n");
    }

    #[test]
    fn smuggle_crlf_dot_lf() {
        smuggle(b"\r\n.\n");
    }

    #[test]
    fn smuggle_crlf_dot_cr() {
        smuggle(b"\r\n.\r");
    }

    #[test]
    fn smuggle_crlf_nul_dot_crlf() {
        smuggle(b"\r\n\x00.\r\n");
    }

    #[test]
    fn smuggle_crlf_dot_cr_crlf() {
        smuggle(b"\r\n.\r\r\n");
    }

    #[test]
    fn smuggle_nul_variant_passes_when_nul_allowed_and_strict() {
        // No bare line ending at all: with NUL allowed, a normal message.
        let input = [HEAD, b"\r\n\x00.\r\n", TAIL, b"\r\n.\r\n"].concat();
        let cfg = DataConfig {
            nul: NulBytes::Allow,
            ..DataConfig::default()
        };
        let r = run_all_splits(cfg, &input);
        assert_eq!((r.ends, r.end_at), (1, Some(input.len())));
        assert!(r.result.is_ok());
        assert!(r.out.ends_with(SMUGGLED));
    }

    // --- normalization, exactly ---

    #[test]
    fn normalize_exact_output() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\nb\r\n.\r\n", b"a\r\nb\r\n"),
            (b"a\rb\r\n.\r\n", b"a\r\nb\r\n"),
            (b"a\r\r\n.\r\n", b"a\r\n\r\n"),
            // A leading dot after a normalized line end is unstuffed too.
            (b"a\n..b\r\n.\r\n", b"a\r\n.b\r\n"),
            (b"a\n.\r\n.\r\n", b"a\r\n\r\n"),
            (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\r\nb\r\n"),
            (b"a\r\n.\r\r\n.\r\n", b"a\r\n\r\n\r\n"),
            (b"\n..\r\n.\r\n", b"\r\n.\r\n"),
        ];
        for (input, want) in cases {
            let r = run_all_splits(normalize(), input);
            assert_eq!((r.ends, r.end_at), (1, Some(input.len())), "{input:?}");
            assert_eq!(r.out, *want, "{input:?}");
            assert!(r.result.is_ok());
        }
    }

    #[test]
    fn normalized_line_start_never_begins_the_end() {
        // ".\r\n" after a bare LF or CR is content, however it is split.
        for input in [
            &b"a\r\n.\n.\r\n"[..],
            b"a\n.\r\n",
            b"a\r.\r\n",
            b"a\r\n.\r.\r\n",
        ] {
            for cfg in [DataConfig::default(), normalize()] {
                let r = run_all_splits(cfg, input);
                assert_eq!(r.ends, 0, "{input:?}");
            }
        }
    }

    // --- basics ---

    #[test]
    fn empty_message_ends_at_once() {
        let r = run_all_splits(DataConfig::default(), b".\r\nQUIT\r\n");
        assert_eq!((r.ends, r.end_at), (1, Some(3)));
        assert!(r.out.is_empty());
        assert_eq!(r.result, Ok(DataStats::default()));
    }

    #[test]
    fn dot_unstuffing() {
        let input = b"..leading\r\n...\r\n..\r\nmid.dot\r\n.x\r\n.\r\n";
        let r = run_all_splits(DataConfig::default(), input);
        assert_eq!(r.out, b".leading\r\n..\r\n.\r\nmid.dot\r\nx\r\n");
        assert_eq!(r.result.unwrap().size, r.out.len() as u64);
    }

    #[test]
    fn leftover_is_the_next_command() {
        let mut r = DataReader::new(DataConfig::default());
        let mut out = Vec::new();
        let input = b"hi\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n";
        let f = r.feed(input, &mut out);
        assert!(f.end);
        assert_eq!(
            &input[f.consumed..],
            b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
        );
        assert_eq!(out, b"hi\r\n");
        assert!(r.is_done());
        // After the end: nothing consumed, no second end.
        assert_eq!(
            r.feed(b"more", &mut out),
            Feed {
                consumed: 0,
                end: false
            }
        );
    }

    #[test]
    fn terminator_split_across_feeds() {
        let mut r = DataReader::new(DataConfig::default());
        let mut out = Vec::new();
        for piece in [&b"x\r"[..], b"\n", b".", b"\r"] {
            assert_eq!(
                r.feed(piece, &mut out),
                Feed {
                    consumed: piece.len(),
                    end: false
                }
            );
        }
        assert_eq!(
            r.feed(b"\nQUIT", &mut out),
            Feed {
                consumed: 1,
                end: true
            }
        );
        assert_eq!(out, b"x\r\n");
    }

    #[test]
    fn reject_keeps_reading_after_error() {
        let input = b"a\nb\r\n.\nc\r\n.\r\nQUIT\r\n";
        let r = run_all_splits(DataConfig::default(), input);
        assert_eq!(r.end_at, Some(input.len() - 6));
        assert_eq!(r.result, Err(DataError::BareLineEnding));
        let reply = DataError::BareLineEnding.reply();
        assert_eq!((reply.code, reply.status), (554, Some((5, 5, 2))));
        assert!(reply.lines[0].contains("bare CR or LF"));
    }

    #[test]
    fn size_limit() {
        let cfg = DataConfig {
            max_size: 10,
            ..DataConfig::default()
        };
        let ok = run_all_splits(cfg, b"12345678\r\n.\r\n");
        assert_eq!(ok.result.map(|s| s.size), Ok(10));
        let big = run_all_splits(cfg, b"123456789\r\nmore\r\n.\r\nNOOP\r\n");
        assert_eq!(big.end_at, Some(20));
        assert_eq!(big.result, Err(DataError::SizeExceeded { limit: 10 }));
        let reply = DataError::SizeExceeded { limit: 10 }.reply();
        assert_eq!((reply.code, reply.status), (552, Some((5, 3, 4))));
    }

    #[test]
    fn size_counts_output_not_input() {
        let cfg = DataConfig {
            max_size: 4,
            ..DataConfig::default()
        };
        // "..a\r\n" is 5 input octets but 4 output octets.
        let r = run_all_splits(cfg, b"..a\r\n.\r\n");
        assert_eq!(r.result.map(|s| s.size), Ok(4));
    }

    #[test]
    fn output_stops_growing_after_size_exceeded() {
        let cfg = DataConfig {
            max_size: 100,
            ..DataConfig::default()
        };
        let mut r = DataReader::new(cfg);
        let mut out = Vec::new();
        let line = [b'x'; 50];
        for _ in 0..1000 {
            r.feed(&line, &mut out);
            r.feed(b"\r\n", &mut out);
        }
        assert!(out.len() <= 100);
        assert!(r.feed(b".\r\n", &mut out).end);
        assert!(matches!(r.result(), Err(DataError::SizeExceeded { .. })));
    }

    #[test]
    fn line_length_limit() {
        let ok = [&[b'a'; 998][..], b"\r\n.\r\n"].concat();
        assert!(run_all_splits(DataConfig::default(), &ok).result.is_ok());
        // The stuffing dot does not count.
        let ok = [&b"."[..], &[b'.'; 998], b"\r\n.\r\n"].concat();
        assert!(run_all_splits(DataConfig::default(), &ok).result.is_ok());
        let long = [&[b'a'; 999][..], b"\r\n.\r\n"].concat();
        let r = run_all_splits(DataConfig::default(), &long);
        assert_eq!(r.result, Err(DataError::LineTooLong { limit: 1000 }));
        assert_eq!(r.end_at, Some(long.len()));
        let reply = DataError::LineTooLong { limit: 1000 }.reply();
        assert_eq!((reply.code, reply.status), (554, Some((5, 6, 0))));
        let unlimited = DataConfig {
            max_line: usize::MAX,
            ..DataConfig::default()
        };
        let huge = [&[b'a'; 5000][..], b"\r\n.\r\n"].concat();
        assert!(run_all_splits(unlimited, &huge).result.is_ok());
    }

    #[test]
    fn nul_rejected_by_default() {
        let r = run_all_splits(DataConfig::default(), b"a\0b\r\n.\r\n");
        assert_eq!(r.result, Err(DataError::Nul));
        let reply = DataError::Nul.reply();
        assert_eq!((reply.code, reply.status), (554, Some((5, 6, 0))));
    }

    // --- BDAT ---

    fn bdat(cfg: DataConfig, chunks: &[(&[u8], bool)]) -> (Vec<u8>, BdatReader) {
        let mut r = BdatReader::new(cfg);
        let mut out = Vec::new();
        for (data, last) in chunks {
            r.start_chunk(data.len() as u64, *last);
            // Byte by byte, as an adversarial socket would.
            let mut pos = 0;
            loop {
                let piece = &data[pos..(pos + 1).min(data.len())];
                let f = r.feed(piece, &mut out);
                pos += f.consumed;
                if f.end {
                    break;
                }
            }
            assert_eq!(pos, data.len());
        }
        (out, r)
    }

    #[test]
    fn bdat_chunks_raw_no_dot_handling() {
        let (out, r) = bdat(
            DataConfig::default(),
            &[(b"a\r\n.\r\n", false), (b"..b\r\n", true)],
        );
        assert_eq!(out, b"a\r\n.\r\n..b\r\n");
        assert!(r.is_complete());
        assert_eq!(r.result().map(|s| s.size), Ok(11));
    }

    #[test]
    fn bdat_crlf_split_across_chunks_is_proper() {
        let (out, r) = bdat(
            DataConfig::default(),
            &[(b"a\r", false), (b"\nb\r\n", true)],
        );
        assert_eq!(out, b"a\r\nb\r\n");
        assert!(r.result().is_ok());
    }

    #[test]
    fn bdat_bare_line_endings() {
        let (_, r) = bdat(DataConfig::default(), &[(b"a\nb\r\n", true)]);
        assert_eq!(r.result(), Err(DataError::BareLineEnding));
        // A CR ending the last chunk is bare.
        let (_, r) = bdat(DataConfig::default(), &[(b"a\r\n", false), (b"b\r", true)]);
        assert_eq!(r.result(), Err(DataError::BareLineEnding));
        let (out, r) = bdat(normalize(), &[(b"a\nb\r", false), (b"c\r", true)]);
        assert_eq!(out, b"a\r\nb\r\nc\r\n");
        assert!(r.result().is_ok());
    }

    #[test]
    fn bdat_content_is_text_nul_and_bare_cr_refused() {
        let (_, r) = bdat(DataConfig::default(), &[(b"a\0b\r\n", true)]);
        assert_eq!(r.result(), Err(DataError::Nul));
        let (_, r) = bdat(DataConfig::default(), &[(b"Subject: x\rX: y\r\n", true)]);
        assert_eq!(r.result(), Err(DataError::BareLineEnding));
        let (out, r) = bdat(normalize(), &[(b"Subject: x\rX: y\r\n", true)]);
        assert_eq!(out, b"Subject: x\r\nX: y\r\n");
        assert!(r.result().is_ok());
    }

    #[test]
    fn bdat_size_limit_keeps_consuming() {
        let cfg = DataConfig {
            max_size: 4,
            ..DataConfig::default()
        };
        let (out, r) = bdat(cfg, &[(b"abc\r\n", false), (b"def\r\n", true)]);
        assert!(out.len() <= 4);
        assert!(r.is_complete());
        assert_eq!(r.result(), Err(DataError::SizeExceeded { limit: 4 }));
    }

    #[test]
    fn bdat_feed_stops_at_chunk_end_and_zero_chunks() {
        let mut r = BdatReader::new(DataConfig::default());
        let mut out = Vec::new();
        assert_eq!(
            r.feed(b"xx", &mut out),
            Feed {
                consumed: 0,
                end: false
            }
        );
        r.start_chunk(3, false);
        assert_eq!(r.remaining(), 3);
        assert_eq!(
            r.feed(b"ab\r\nQUIT\r\n", &mut out),
            Feed {
                consumed: 3,
                end: true
            }
        );
        assert_eq!(r.remaining(), 0);
        assert!(!r.is_complete());
        r.start_chunk(0, true);
        assert_eq!(
            r.feed(b"QUIT\r\n", &mut out),
            Feed {
                consumed: 0,
                end: true
            }
        );
        // The pending CR of "ab\r" is bare: the last chunk added nothing.
        assert!(r.is_complete());
        assert_eq!(r.result(), Err(DataError::BareLineEnding));
        // Chunks after the last are swallowed, not written.
        r.start_chunk(2, false);
        assert_eq!(
            r.feed(b"zz", &mut out),
            Feed {
                consumed: 2,
                end: true
            }
        );
        assert_eq!(out, b"ab");
    }

    #[test]
    fn the_first_limit_crossed_is_the_error_however_the_input_is_cut() {
        let cfg = DataConfig {
            max_size: 20,
            max_line: 16,
            ..DataConfig::default()
        };
        // The line limit (14 octets of content) is crossed at octet 15 of
        // the second line, the size limit (20) at its octet 11: size first.
        let input = b"abcdefgh\r\n0123456789ABCDEFGH\r\n.\r\n";
        for sizes in [&[usize::MAX][..], &[1], &[2], &[3, 1, 7], &[11], &[12]] {
            let r = run_split(cfg, input, sizes);
            assert_eq!(
                r.result,
                Err(DataError::SizeExceeded { limit: 20 }),
                "{sizes:?}"
            );
        }
        let cfg = DataConfig {
            max_size: 40,
            ..cfg
        };
        for sizes in [&[usize::MAX][..], &[1], &[5, 9]] {
            let r = run_split(cfg, input, sizes);
            assert_eq!(
                r.result,
                Err(DataError::LineTooLong { limit: 16 }),
                "{sizes:?}"
            );
        }
        let (_, r) = bdat(cfg, &[(b"0123456789", false), (b"ABCDEFGH\r\n", true)]);
        assert_eq!(r.result(), Err(DataError::LineTooLong { limit: 16 }));
    }

    #[test]
    fn pseudo_random_inputs_split_invariant() {
        let alphabet = b"\r\n.\0aR";
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..3000 {
            let mut input = Vec::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut s = seed;
            for _ in 0..(seed % 48) {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                input.push(alphabet[(s >> 33) as usize % alphabet.len()]);
            }
            input.extend_from_slice(b"\r\n.\r\n");
            for cfg in [DataConfig::default(), normalize()] {
                let r = run_all_splits(cfg, &input);
                assert_eq!(r.ends, 1, "{input:?}");
                if cfg.bare_line_endings == BareLineEndings::Normalize && r.result.is_ok() {
                    assert_no_bare(&r.out);
                }
            }
        }
    }
}
