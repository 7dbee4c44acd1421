//! Line splitting: cutting the input into command lines at every LF, with a
//! length limit, without ever holding more than one line ([`LineSplitter`]),
//! and parsing each into a [`Command`] ([`LineSplitter::next_command`]),
//! with the longer limit of MAIL, RCPT and AUTH lines and the special error
//! of an unusable BDAT line.

use memchr::memchr;

use super::bdat::is_bdat;
use super::{Command, CommandError};

/// The default limit of a command line, CRLF included (RFC 5321 §4.5.3.1.4).
pub const DEFAULT_LINE_LIMIT: usize = 512;
/// How much longer than the command limit a MAIL or RCPT line may be: the
/// extensions we announce grow them (RFC 5321 §4.5.3.1.4 allows it): ORCPT
/// and NOTIFY (RFC 3461 §5: 500 and more), ENVID and RET, SIZE, BODY,
/// SMTPUTF8, AUTH (RFC 4954 §5: 500).
pub const PARAMETER_ALLOWANCE: usize = 1024;

/// What [`LineSplitter::next_line`] found at the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEvent<'a> {
    /// A whole line, its LF included, no longer than the limit. Give it to
    /// [`Command::parse`].
    Line(&'a [u8]),
    /// A line over the limit has ended: answer it with
    /// [`CommandError::LineTooLong`].
    TooLong,
    /// No whole line yet: read more input.
    NeedMore,
}

/// Cuts the input into command lines, with a length limit, without ever
/// holding more than the limit of one line.
///
/// The caller keeps the input buffer: each call returns an event and how many
/// bytes to drop from the front of the buffer. A line over the limit is
/// dropped as it arrives (the splitter remembers that it is skipping), and
/// reported once when its LF comes.
#[derive(Debug, Clone)]
pub struct LineSplitter {
    limit: usize,
    /// The limit for verbs other than MAIL and RCPT ([`Self::next_command`]).
    command_limit: usize,
    skipping: bool,
    /// The line being skipped (or last reported too long) is a BDAT command.
    long_bdat: bool,
}

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter::new(DEFAULT_LINE_LIMIT)
    }
}

impl LineSplitter {
    /// A splitter for lines of at most `limit` octets, LF included.
    pub fn new(limit: usize) -> Self {
        LineSplitter {
            limit: limit.max(1),
            command_limit: limit.max(1),
            skipping: false,
            long_bdat: false,
        }
    }

    /// A splitter for an SMTP server: command lines of at most `limit`
    /// octets, MAIL, RCPT and AUTH lines [`PARAMETER_ALLOWANCE`] more (the
    /// DSN, SIZE, BODY and AUTH parameters, an initial response).
    pub fn for_commands(limit: usize) -> Self {
        LineSplitter {
            limit: limit.max(1).saturating_add(PARAMETER_ALLOWANCE),
            ..LineSplitter::new(limit)
        }
    }

    /// The line limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the splitter is in the middle of a too-long line.
    pub fn is_skipping(&self) -> bool {
        self.skipping
    }

    /// Forgets a too-long line being skipped (after STARTTLS, say, when the
    /// plaintext buffer is thrown away).
    pub fn reset(&mut self) {
        self.skipping = false;
        self.long_bdat = false;
    }

    /// Looks for the next line at the start of `buf`. Returns the event and
    /// the number of bytes the caller must drop from the front of `buf`
    /// (also for [`LineEvent::NeedMore`], when a too-long line is skipped).
    pub fn next_line<'a>(&mut self, buf: &'a [u8]) -> (LineEvent<'a>, usize) {
        if self.skipping {
            return match memchr(b'\n', buf) {
                Some(i) => {
                    self.skipping = false;
                    (LineEvent::TooLong, i + 1)
                }
                None => (LineEvent::NeedMore, buf.len()),
            };
        }
        let window = &buf[..buf.len().min(self.limit)];
        if let Some(i) = memchr(b'\n', window) {
            return (LineEvent::Line(&buf[..=i]), i + 1);
        }
        if buf.len() < self.limit {
            return (LineEvent::NeedMore, 0);
        }
        // No LF within the limit: whatever comes, the line is too long.
        self.long_bdat = is_bdat(buf);
        match memchr(b'\n', &buf[self.limit..]) {
            Some(j) => (LineEvent::TooLong, self.limit + j + 1),
            None => {
                self.skipping = true;
                (LineEvent::NeedMore, buf.len())
            }
        }
    }

    /// [`next_line`](Self::next_line) and [`Command::parse`] together:
    /// `None` when more input is needed; always the number of bytes to drop.
    ///
    /// Lines of verbs other than MAIL and RCPT over the command limit are
    /// [`CommandError::LineTooLong`]. A BDAT line that cannot be used, for
    /// any reason (too long, bare line ends, a bad size…), is
    /// [`CommandError::BadChunk`]: the chunk's octets follow it and their
    /// number is unknown, so the session must end.
    pub fn next_command(&mut self, buf: &[u8]) -> (Option<Result<Command, CommandError>>, usize) {
        match self.next_line(buf) {
            (LineEvent::Line(line), n) => {
                let parsed = match Command::parse(line) {
                    // AUTH carries an initial response (RFC 4954 §4).
                    Ok(c)
                        if line.len() > self.command_limit
                            && !matches!(
                                c,
                                Command::Mail { .. } | Command::Rcpt { .. } | Command::Auth(_)
                            ) =>
                    {
                        Err(CommandError::LineTooLong)
                    }
                    other => other,
                };
                match parsed {
                    // `BDAT\t6` is no BDAT command to the parser, but a
                    // chunk may follow it all the same.
                    Ok(Command::Bdat { .. }) => (Some(parsed), n),
                    _ if is_bdat(line) => (Some(Err(CommandError::BadChunk)), n),
                    other => (Some(other), n),
                }
            }
            (LineEvent::TooLong, n) if self.long_bdat => {
                self.long_bdat = false;
                (Some(Err(CommandError::BadChunk)), n)
            }
            (LineEvent::TooLong, n) => (Some(Err(CommandError::LineTooLong)), n),
            (LineEvent::NeedMore, n) => (None, n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_yields_lines_and_needs_more() {
        let mut s = LineSplitter::default();
        let buf = b"NOOP\r\nQUIT\r\nMA";
        assert_eq!(s.next_line(buf), (LineEvent::Line(b"NOOP\r\n"), 6));
        assert_eq!(s.next_line(&buf[6..]), (LineEvent::Line(b"QUIT\r\n"), 6));
        assert_eq!(s.next_line(&buf[12..]), (LineEvent::NeedMore, 0));
    }

    #[test]
    fn splitter_ends_lines_at_bare_lf_for_an_error() {
        let mut s = LineSplitter::default();
        let (ev, n) = s.next_line(b"QUIT\nNOOP\r\n");
        assert_eq!((ev, n), (LineEvent::Line(b"QUIT\n"), 5));
        assert_eq!(Command::parse(b"QUIT\n"), Err(CommandError::BareLineEnding));
    }

    #[test]
    fn splitter_limit_is_inclusive_of_crlf() {
        let mut s = LineSplitter::new(8);
        assert_eq!(s.next_line(b"NOOP xx\r\n").0, LineEvent::TooLong);
        let mut s = LineSplitter::new(8);
        assert_eq!(s.next_line(b"NOOP x\r\n").0, LineEvent::Line(b"NOOP x\r\n"));
    }

    #[test]
    fn splitter_skips_long_line_across_reads_without_buffering() {
        let mut s = LineSplitter::new(10);
        // The first read: no LF, over the limit: all of it is dropped.
        assert_eq!(s.next_line(b"AAAAAAAAAAAAAAA"), (LineEvent::NeedMore, 15));
        assert!(s.is_skipping());
        assert_eq!(s.next_line(b"BBBBB"), (LineEvent::NeedMore, 5));
        // The end of the long line: reported once, then the next line.
        assert_eq!(s.next_line(b"BB\r\nQUIT\r\n"), (LineEvent::TooLong, 4));
        assert_eq!(s.next_line(b"QUIT\r\n"), (LineEvent::Line(b"QUIT\r\n"), 6));
    }

    #[test]
    fn splitter_too_long_with_lf_in_same_buffer() {
        let mut s = LineSplitter::new(4);
        assert_eq!(s.next_line(b"ABCDEFG\r\nX"), (LineEvent::TooLong, 9));
        assert!(!s.is_skipping());
    }

    #[test]
    fn exactly_limit_without_lf_is_too_long() {
        let mut s = LineSplitter::new(4);
        assert_eq!(s.next_line(b"ABCD"), (LineEvent::NeedMore, 4));
        assert!(s.is_skipping());
        let mut s = LineSplitter::new(4);
        assert_eq!(s.next_line(b"ABC"), (LineEvent::NeedMore, 0));
    }

    #[test]
    fn next_command_composes() {
        let mut s = LineSplitter::default();
        let (cmd, n) = s.next_command(b"rset\r\n");
        assert_eq!((cmd, n), (Some(Ok(Command::Rset)), 6));
        let mut s = LineSplitter::new(5);
        let (cmd, _) = s.next_command(b"NOOP x\r\n");
        assert_eq!(cmd, Some(Err(CommandError::LineTooLong)));
    }

    #[test]
    fn mail_and_rcpt_lines_may_grow_with_their_parameters() {
        let orcpt = format!("rfc822;{}@contoso.com", "a".repeat(480));
        let rcpt = format!("RCPT TO:<b@contoso.com> NOTIFY=SUCCESS,FAILURE ORCPT={orcpt}\r\n");
        assert!(rcpt.len() > 512);
        let mut s = LineSplitter::for_commands(512);
        let (cmd, n) = s.next_command(rcpt.as_bytes());
        assert!(matches!(cmd, Some(Ok(Command::Rcpt { .. }))), "{cmd:?}");
        assert_eq!(n, rcpt.len());
        // Other verbs keep the command limit.
        let noop = format!("NOOP {}\r\n", "x".repeat(600));
        let (cmd, _) = s.next_command(noop.as_bytes());
        assert_eq!(cmd, Some(Err(CommandError::LineTooLong)));
        // And MAIL/RCPT have a hard limit too.
        let huge = format!("RCPT TO:<b@contoso.com> X={}\r\n", "x".repeat(2000));
        let (cmd, _) = s.next_command(huge.as_bytes());
        assert_eq!(cmd, Some(Err(CommandError::LineTooLong)));
    }

    #[test]
    fn an_unusable_bdat_line_is_its_own_error() {
        let mut s = LineSplitter::for_commands(512);
        for line in [
            &b"BDAT 99999999999999999999 LAST\r\n"[..],
            b"BDAT\t6 LAST\r\n",
            b"BDAT 5 LAST\n",
            b"bdat x\r\n",
            b"BDAT\r\n",
            b"BDAT 5 LAST\0\r\n",
        ] {
            let (cmd, n) = s.next_command(line);
            assert_eq!(cmd, Some(Err(CommandError::BadChunk)), "{line:?}");
            assert_eq!(n, line.len());
        }
        let long = format!("BDAT 5 LAST{}\r\n", " ".repeat(600));
        let (cmd, _) = s.next_command(long.as_bytes());
        assert_eq!(cmd, Some(Err(CommandError::BadChunk)));
        // Skipped across reads: still known to be BDAT.
        let mut s = LineSplitter::for_commands(512);
        let head = format!("BDAT 1{}", "0".repeat(2000));
        assert_eq!(s.next_command(head.as_bytes()).0, None);
        let (cmd, _) = s.next_command(b"00 LAST\r\n");
        assert_eq!(cmd, Some(Err(CommandError::BadChunk)));
        // A good BDAT and other verbs are unaffected.
        let (cmd, _) = s.next_command(b"BDAT 5 LAST\r\n");
        assert_eq!(
            cmd,
            Some(Ok(Command::Bdat {
                size: 5,
                last: true
            }))
        );
        let (cmd, _) = s.next_command(b"BDATX\r\n");
        assert_eq!(cmd, Some(Ok(Command::Unknown("BDATX".into()))));
    }
}
