//! Command lines: splitting the input into lines and parsing each into a
//! [`Command`] (RFC 5321 §4.1, with the parameters of RFC 1870 SIZE,
//! RFC 6152 8BITMIME, RFC 3030 BINARYMIME/CHUNKING, RFC 6531 SMTPUTF8,
//! RFC 3461 DSN and RFC 4954 AUTH).
//!
//! # Lines
//!
//! [`LineSplitter`] cuts the input at every LF: LF is the only byte that can
//! end a line for any client, so a client that ends `QUIT` with a bare LF gets
//! an answer (an error) at once instead of hanging. [`Command::parse`] then
//! requires the line to end with CRLF and to hold no other CR or LF
//! ([`CommandError::BareLineEnding`]) and no NUL ([`CommandError::Nul`]).
//! A line longer than the limit (default 512 octets including CRLF,
//! RFC 5321 §4.5.3.1.4) is skipped up to its LF without being buffered and
//! reported once, as [`LineEvent::TooLong`], when its end arrives, so the
//! replies stay in step with a pipelining client.
//!
//! # Leniency
//!
//! Verbs and parameter keywords are case-insensitive; spaces after the verb,
//! after `FROM:`/`TO:` (as Postfix allows: `MAIL FROM: <a@b>`), between
//! parameters and at the end of the line are tolerated. Everything else
//! follows RFC 5321's grammar: paths need their angle brackets, local parts
//! are dot-strings or quoted strings, domains are LDH labels (bytes ≥ 0x80,
//! i.e. UTF-8 U-labels, allowed and flagged in [`Path::utf8`]) or address
//! literals. Source routes (`<@a,@b:user@dom>`) are accepted and reported in
//! [`Path::had_source_route`] for the relay policy. Unknown MAIL/RCPT
//! parameters are kept, not refused, so the session can answer 555.

use std::{
    borrow::Cow,
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
};

use memchr::{memchr, memchr2};
use thiserror::Error;

use super::reply::Reply;

/// The default limit of a command line, CRLF included (RFC 5321 §4.5.3.1.4).
pub const DEFAULT_LINE_LIMIT: usize = 512;
/// The longest local part, in octets (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// The longest domain, in octets (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// The longest reverse- or forward-path, `<` and `>` included (RFC 5321 §4.5.3.1.3).
pub const MAX_PATH: usize = 256;
/// The longest ENVID value (RFC 3461 §4.4).
pub const MAX_ENVID: usize = 100;
/// The longest ORCPT value (RFC 3461 §4.2).
pub const MAX_ORCPT: usize = 500;
/// How much longer than the command limit a MAIL or RCPT line may be: the
/// extensions we announce grow them (RFC 5321 §4.5.3.1.4 allows it): ORCPT
/// and NOTIFY (RFC 3461 §5: 500 and more), ENVID and RET, SIZE, BODY,
/// SMTPUTF8, AUTH (RFC 4954 §5: 500).
pub const PARAMETER_ALLOWANCE: usize = 1024;

// ---------------------------------------------------------------------------
// Line splitting

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

/// Whether a line starts with the BDAT verb (in any case).
fn is_bdat(line: &[u8]) -> bool {
    line.get(..4)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"BDAT"))
        && matches!(line.get(4), None | Some(b' ' | b'\t' | b'\r' | b'\n'))
}

// ---------------------------------------------------------------------------
// Commands

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain-or-literal`.
    Ehlo(Helo),
    /// `HELO domain-or-literal`.
    Helo(Helo),
    /// `MAIL FROM:<reverse-path> [params]`.
    Mail {
        /// The reverse-path (may be the null path `<>`).
        from: Path,
        /// The parameters.
        params: MailParams,
    },
    /// `RCPT TO:<forward-path> [params]`.
    Rcpt {
        /// The forward-path (may be `<Postmaster>`, never `<>`).
        to: Path,
        /// The parameters.
        params: RcptParams,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030). After a BDAT the session must read
    /// `size` raw octets; if the command does not parse, it cannot know where
    /// the chunk ends and should close the connection after replying.
    Bdat {
        /// The chunk size in octets.
        size: u64,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]` (the string is ignored).
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy(String),
    /// `EXPN string`.
    Expn(String),
    /// `HELP [string]`.
    Help(Option<String>),
    /// `STARTTLS`.
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954), its arguments as
    /// sent ([`super::sasl::parse_start`]); they may hold a password.
    Auth(String),
    /// Any other verb (as sent, e.g. `AUTH`, `ETRN`, `XCLIENT`); answer
    /// [`Reply::unrecognized`] or [`Reply::not_implemented`].
    Unknown(String),
}

/// The argument of EHLO or HELO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helo {
    /// The argument as sent (trimmed).
    pub raw: String,
    /// The argument as a domain or address literal, if it is one (RFC 5321
    /// §4.1.1.1); `None` for anything else, such as a bare IP address or a
    /// name with underscores, which many devices send: policy decides.
    pub host: Option<Host>,
}

/// A domain or an address literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A domain name, as sent (case kept; may hold UTF-8 U-labels).
    Domain(String),
    /// `[192.0.2.1]`.
    Ipv4(Ipv4Addr),
    /// `[IPv6:2001:db8::1]`.
    Ipv6(Ipv6Addr),
    /// `[tag:content]`, a General-address-literal.
    General {
        /// The standardized tag.
        tag: String,
        /// What follows the colon.
        content: String,
    },
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ipv4(a) => write!(f, "[{a}]"),
            Host::Ipv6(a) => write!(f, "[IPv6:{a}]"),
            Host::General { tag, content } => write!(f, "[{tag}:{content}]"),
        }
    }
}

/// `local-part@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part as sent: a dot-string, or a quoted string with its
    /// quotes and backslashes.
    pub local_part: String,
    /// The domain or address literal.
    pub domain: Host,
}

impl Mailbox {
    /// The local part without quoting (`"a b"` → `a b`, `"a\"b"` → `a"b`).
    pub fn local_part_unquoted(&self) -> Cow<'_, str> {
        let Some(inner) = self
            .local_part
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
        else {
            return Cow::Borrowed(&self.local_part);
        };
        let mut out = String::with_capacity(inner.len());
        let mut escaped = false;
        for ch in inner.chars() {
            if !escaped && ch == '\\' {
                escaped = true;
            } else {
                out.push(ch);
                escaped = false;
            }
        }
        Cow::Owned(out)
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local_part, self.domain)
    }
}

/// What a path names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// The null reverse-path `<>` (MAIL FROM only).
    Null,
    /// `<Postmaster>` without a domain (RCPT TO only, RFC 5321 §4.1.1.3).
    Postmaster,
    /// A mailbox.
    Mailbox(Mailbox),
}

/// A reverse-path or forward-path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// The address.
    pub address: Address,
    /// Whether the path had a source route (`<@a,@b:user@dom>`); RFC 5321
    /// §4.1.1.3 says the route MUST be accepted and MAY be ignored.
    pub had_source_route: bool,
    /// The route's hosts, in order (`["a", "b"]`); empty without a route.
    pub source_route: Vec<String>,
    /// Whether the path holds non-ASCII (UTF-8) octets, which need SMTPUTF8.
    pub utf8: bool,
}

impl Path {
    /// The mailbox, unless the path is `<>` or `<Postmaster>`.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match &self.address {
            Address::Mailbox(m) => Some(m),
            _ => None,
        }
    }

    /// Whether this is the null path `<>`.
    pub fn is_null(&self) -> bool {
        self.address == Address::Null
    }
}

impl fmt::Display for Path {
    /// The path in angle brackets, without its source route.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            Address::Null => f.write_str("<>"),
            Address::Postmaster => f.write_str("<Postmaster>"),
            Address::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// `BODY=` (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `7BIT`.
    SevenBit,
    /// `8BITMIME`.
    EightBitMime,
    /// `BINARYMIME` (BDAT only).
    BinaryMime,
}

/// `RET=` (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// `FULL`: return the whole message in a DSN.
    Full,
    /// `HDRS`: return only the headers.
    Hdrs,
}

/// `NOTIFY=` (RFC 3461 §4.1): all false means `NEVER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    /// `SUCCESS`.
    pub success: bool,
    /// `FAILURE`.
    pub failure: bool,
    /// `DELAY`.
    pub delay: bool,
}

/// `ORCPT=addr-type;xtext` (RFC 3461 §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orcpt {
    /// The address type (`rfc822`, `utf-8`, …).
    pub addr_type: String,
    /// The address, still xtext-encoded as sent (decode with [`xtext_decode`]).
    pub address: String,
}

/// A parameter this parser does not know, as `(keyword, value)`.
pub type UnknownParam = (String, Option<String>);

/// MAIL FROM parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// `SIZE=n` (saturates at `u64::MAX`).
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: Option<Body>,
    /// `SMTPUTF8`.
    pub smtputf8: bool,
    /// `RET=`.
    pub ret: Option<Ret>,
    /// `ENVID=`, still xtext-encoded as sent.
    pub envid: Option<String>,
    /// `AUTH=`, still xtext-encoded as sent (`<>` when unknown).
    pub auth: Option<String>,
    /// Other parameters, for a 555 reply.
    pub unknown: Vec<UnknownParam>,
}

/// RCPT TO parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams {
    /// `NOTIFY=`.
    pub notify: Option<Notify>,
    /// `ORCPT=`.
    pub orcpt: Option<Orcpt>,
    /// Other parameters, for a 555 reply.
    pub unknown: Vec<UnknownParam>,
}

/// Which path an address error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// MAIL FROM's reverse-path.
    Sender,
    /// RCPT TO's forward-path.
    Recipient,
}

impl PathKind {
    /// The enhanced status for a bad address of this kind: X.1.7 for the
    /// sender, X.1.3 for a recipient (RFC 3463).
    fn detail(self) -> u16 {
        match self {
            PathKind::Sender => 7,
            PathKind::Recipient => 3,
        }
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Sender => "sender",
            PathKind::Recipient => "recipient",
        })
    }
}

/// Why a command line was refused; [`reply`](CommandError::reply) gives the
/// answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    /// The line does not end with CRLF, or holds a CR or LF elsewhere.
    /// 500 5.5.2.
    #[error("bare CR or LF in a command line")]
    BareLineEnding,
    /// The line is over the limit. 500 5.5.2 (X.5.6 is registered for AUTH
    /// exchange lines only, RFC 4954).
    #[error("command line too long")]
    LineTooLong,
    /// The line holds a NUL. 500 5.5.2.
    #[error("NUL in a command line")]
    Nul,
    /// The line is not UTF-8. 500 5.5.2.
    #[error("command line is not valid UTF-8")]
    InvalidUtf8,
    /// An empty line. 500 5.5.2.
    #[error("empty command line")]
    Empty,
    /// The arguments of a known verb do not parse; holds the usage.
    /// 501 5.5.4.
    #[error("syntax error, expected `{0}`")]
    Syntax(&'static str),
    /// The path does not parse. 501 5.1.7 (sender) / 501 5.1.3 (recipient).
    #[error("bad {kind} address syntax: {reason}")]
    BadAddress {
        /// Sender or recipient.
        kind: PathKind,
        /// What is wrong.
        reason: &'static str,
    },
    /// The local part is over 64 octets. 553 5.1.7 / 553 5.1.3.
    #[error("{0} local part longer than {MAX_LOCAL_PART} octets")]
    LocalPartTooLong(PathKind),
    /// The domain is over 255 octets. 553 5.1.7 / 553 5.1.3.
    #[error("{0} domain longer than {MAX_DOMAIN} octets")]
    DomainTooLong(PathKind),
    /// The path is over 256 octets. 501 5.1.7 / 501 5.1.3 ("501 Path too
    /// long", RFC 5321 §4.5.3.1.10).
    #[error("{0} path longer than {MAX_PATH} octets")]
    PathTooLong(PathKind),
    /// A known parameter has a bad value, or a parameter is malformed.
    /// 501 5.5.4.
    #[error("invalid {name} parameter: {reason}")]
    BadParameter {
        /// The keyword as sent.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A known parameter is given twice. 501 5.5.4.
    #[error("duplicate {0} parameter")]
    DuplicateParameter(String),
    /// A known parameter with a value that is not one we announce (such as
    /// `BODY=9BIT` or `RET=ALL`). 555 5.5.4 (RFC 5321 §4.1.1.11).
    #[error("{0} parameter value not recognized")]
    UnknownValue(String),
    /// A BDAT command that cannot be used (bad size, too long, bare line
    /// ends): the chunk's octets follow and where they end is unknown, so
    /// none of them may be read as commands. 501 5.5.4, then the session
    /// closes (RFC 3030 §4.2).
    #[error("unusable BDAT command; the chunk boundary is unknown")]
    BadChunk,
}

impl CommandError {
    /// The reply to send for this error.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::BareLineEnding => Reply::new(
                500,
                (5, 5, 2),
                "Bare CR or LF not allowed: command lines must end with CRLF",
            ),
            CommandError::LineTooLong => Reply::new(500, (5, 5, 2), "Line too long"),
            CommandError::Nul => Reply::new(500, (5, 5, 2), "NUL character not allowed"),
            CommandError::InvalidUtf8 => {
                Reply::new(500, (5, 5, 2), "Invalid UTF-8 in command line")
            }
            CommandError::Empty => Reply::new(500, (5, 5, 2), "Syntax error, empty command"),
            CommandError::Syntax(usage) => Reply::new(501, (5, 5, 4), &format!("Syntax: {usage}")),
            CommandError::BadAddress { kind, reason } => Reply::new(
                501,
                (5, 1, kind.detail()),
                &format!("Bad {kind} address syntax: {reason}"),
            ),
            CommandError::LocalPartTooLong(kind) => Reply::new(
                553,
                (5, 1, kind.detail()),
                &format!("Local part too long (over {MAX_LOCAL_PART} octets)"),
            ),
            CommandError::DomainTooLong(kind) => Reply::new(
                553,
                (5, 1, kind.detail()),
                &format!("Domain too long (over {MAX_DOMAIN} octets)"),
            ),
            CommandError::PathTooLong(kind) => Reply::new(
                501,
                (5, 1, kind.detail()),
                &format!("Path too long (over {MAX_PATH} octets)"),
            ),
            CommandError::BadParameter { name, reason } => Reply::new(
                501,
                (5, 5, 4),
                &format!("Invalid {} parameter: {reason}", printable(name)),
            ),
            CommandError::DuplicateParameter(name) => Reply::new(
                501,
                (5, 5, 4),
                &format!("Duplicate {} parameter", printable(name)),
            ),
            CommandError::UnknownValue(name) => Reply::new(
                555,
                (5, 5, 4),
                &format!("{} parameter value not recognized", printable(name)),
            ),
            CommandError::BadChunk => Reply::new(
                501,
                (5, 5, 4),
                "Syntax: BDAT size [LAST]; the chunk boundary is unknown, closing connection",
            ),
        }
    }
}

/// At most 32 characters of client text, for a reply.
fn printable(s: &str) -> String {
    s.chars().take(32).collect()
}

impl Command {
    /// Parses one command line, its terminator included as received (what
    /// [`LineSplitter::next_line`] returns). Never panics.
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        let body = line
            .strip_suffix(b"\r\n")
            .ok_or(CommandError::BareLineEnding)?;
        if memchr2(b'\r', b'\n', body).is_some() {
            return Err(CommandError::BareLineEnding);
        }
        if memchr(0, body).is_some() {
            return Err(CommandError::Nul);
        }
        let text = std::str::from_utf8(body).map_err(|_| CommandError::InvalidUtf8)?;
        let text = text.trim_end_matches([' ', '\t']);
        if text.is_empty() {
            return Err(CommandError::Empty);
        }
        let (verb, args) = match text.find(' ') {
            Some(i) => (&text[..i], text[i..].trim_start_matches(' ')),
            None => (text, ""),
        };
        let mut upper = [0u8; 8];
        let known = if verb.len() <= upper.len() {
            for (d, s) in upper.iter_mut().zip(verb.bytes()) {
                *d = s.to_ascii_uppercase();
            }
            &upper[..verb.len()]
        } else {
            &b""[..]
        };
        match known {
            b"EHLO" => Ok(Command::Ehlo(parse_helo(args, "EHLO domain")?)),
            b"HELO" => Ok(Command::Helo(parse_helo(args, "HELO domain")?)),
            b"MAIL" => parse_mail(args),
            b"RCPT" => parse_rcpt(args),
            b"DATA" => no_args(args, Command::Data, "DATA"),
            b"BDAT" => parse_bdat(args),
            b"RSET" => no_args(args, Command::Rset, "RSET"),
            b"NOOP" => Ok(Command::Noop),
            b"QUIT" => no_args(args, Command::Quit, "QUIT"),
            b"VRFY" => required(args, "VRFY string").map(Command::Vrfy),
            b"EXPN" => required(args, "EXPN string").map(Command::Expn),
            b"HELP" => Ok(Command::Help((!args.is_empty()).then(|| args.to_string()))),
            b"STARTTLS" => no_args(args, Command::StartTls, "STARTTLS"),
            b"AUTH" => Ok(Command::Auth(args.to_string())),
            _ => Ok(Command::Unknown(verb.to_string())),
        }
    }
}

fn no_args(args: &str, cmd: Command, usage: &'static str) -> Result<Command, CommandError> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax(usage))
    }
}

fn required(args: &str, usage: &'static str) -> Result<String, CommandError> {
    if args.is_empty() {
        Err(CommandError::Syntax(usage))
    } else {
        Ok(args.to_string())
    }
}

fn parse_helo(args: &str, usage: &'static str) -> Result<Helo, CommandError> {
    if args.is_empty() {
        return Err(CommandError::Syntax(usage));
    }
    let mut c = Cursor::new(args.as_bytes());
    let host = match parse_host(&mut c) {
        Ok(h) if c.at_end() && args.len() <= MAX_DOMAIN => Some(h),
        _ => None,
    };
    Ok(Helo {
        raw: args.to_string(),
        host,
    })
}

fn parse_bdat(args: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "BDAT size [LAST]";
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .filter(|w| w.len() <= 20 && w.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|w| w.parse::<u64>().ok())
        .ok_or(CommandError::Syntax(USAGE))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax(USAGE)),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax(USAGE));
    }
    Ok(Command::Bdat { size, last })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.as_bytes().get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix.as_bytes()) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

fn parse_mail(args: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "MAIL FROM:<address> [parameters]";
    let rest = strip_prefix_ci(args, "FROM:").ok_or(CommandError::Syntax(USAGE))?;
    let rest = rest.trim_start_matches(' ');
    let (from, end) = parse_path(rest.as_bytes(), PathKind::Sender)?;
    let mut params = MailParams::default();
    for (key, value) in param_tokens(rest.get(end..).unwrap_or(""), USAGE)? {
        mail_param(&mut params, key, value)?;
    }
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(args: &str) -> Result<Command, CommandError> {
    const USAGE: &str = "RCPT TO:<address> [parameters]";
    let rest = strip_prefix_ci(args, "TO:").ok_or(CommandError::Syntax(USAGE))?;
    let rest = rest.trim_start_matches(' ');
    let (to, end) = parse_path(rest.as_bytes(), PathKind::Recipient)?;
    let mut params = RcptParams::default();
    for (key, value) in param_tokens(rest.get(end..).unwrap_or(""), USAGE)? {
        rcpt_param(&mut params, key, value)?;
    }
    Ok(Command::Rcpt { to, params })
}

// ---------------------------------------------------------------------------
// Parameters

/// Splits `SP key[=value] SP key[=value]…` into checked tokens
/// (esmtp-keyword and esmtp-value, RFC 5321 §4.1.2).
fn param_tokens<'a>(
    s: &'a str,
    usage: &'static str,
) -> Result<Vec<(&'a str, Option<&'a str>)>, CommandError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    if !s.starts_with(' ') {
        return Err(CommandError::Syntax(usage));
    }
    let mut out = Vec::new();
    for token in s.split(' ').filter(|t| !t.is_empty()) {
        let (key, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token, None),
        };
        let key_ok = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !key_ok {
            return Err(CommandError::BadParameter {
                name: key.to_string(),
                reason: "malformed keyword",
            });
        }
        if let Some(v) = value {
            let value_ok = !v.is_empty()
                && v.bytes()
                    .all(|b| matches!(b, 33..=60 | 62..=126) || b >= 0x80);
            if !value_ok {
                return Err(CommandError::BadParameter {
                    name: key.to_string(),
                    reason: "malformed value",
                });
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

fn unknown_value(name: &str) -> CommandError {
    CommandError::UnknownValue(name.to_string())
}

fn bad(name: &str, reason: &'static str) -> CommandError {
    CommandError::BadParameter {
        name: name.to_string(),
        reason,
    }
}

fn set_once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), CommandError> {
    if slot.is_some() {
        return Err(CommandError::DuplicateParameter(key.to_string()));
    }
    *slot = Some(value);
    Ok(())
}

fn unknown(list: &mut Vec<UnknownParam>, key: &str, value: Option<&str>) {
    list.push((key.to_string(), value.map(str::to_string)));
}

fn mail_param(p: &mut MailParams, key: &str, value: Option<&str>) -> Result<(), CommandError> {
    let k = key.as_bytes();
    if k.eq_ignore_ascii_case(b"SIZE") {
        let v = value.ok_or_else(|| bad(key, "a number is required"))?;
        if !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 20 {
            return Err(bad(key, "a number is required"));
        }
        let n = v.parse::<u64>().unwrap_or(u64::MAX);
        set_once(&mut p.size, key, n)
    } else if k.eq_ignore_ascii_case(b"BODY") {
        let v = value.ok_or_else(|| bad(key, "7BIT, 8BITMIME or BINARYMIME is required"))?;
        let body = if v.eq_ignore_ascii_case("7BIT") {
            Body::SevenBit
        } else if v.eq_ignore_ascii_case("8BITMIME") {
            Body::EightBitMime
        } else if v.eq_ignore_ascii_case("BINARYMIME") {
            Body::BinaryMime
        } else {
            return Err(unknown_value(key));
        };
        set_once(&mut p.body, key, body)
    } else if k.eq_ignore_ascii_case(b"SMTPUTF8") {
        if value.is_some() {
            return Err(bad(key, "takes no value"));
        }
        if p.smtputf8 {
            return Err(CommandError::DuplicateParameter(key.to_string()));
        }
        p.smtputf8 = true;
        Ok(())
    } else if k.eq_ignore_ascii_case(b"RET") {
        let v = value.ok_or_else(|| bad(key, "FULL or HDRS is required"))?;
        let ret = if v.eq_ignore_ascii_case("FULL") {
            Ret::Full
        } else if v.eq_ignore_ascii_case("HDRS") {
            Ret::Hdrs
        } else {
            return Err(unknown_value(key));
        };
        set_once(&mut p.ret, key, ret)
    } else if k.eq_ignore_ascii_case(b"ENVID") {
        let v = value.ok_or_else(|| bad(key, "a value is required"))?;
        if !is_xtext(v) || v.len() > MAX_ENVID {
            return Err(bad(key, "xtext of at most 100 characters is required"));
        }
        set_once(&mut p.envid, key, v.to_string())
    } else if k.eq_ignore_ascii_case(b"AUTH") {
        let v = value.ok_or_else(|| bad(key, "a value is required"))?;
        if !is_xtext(v) {
            return Err(bad(key, "xtext is required"));
        }
        set_once(&mut p.auth, key, v.to_string())
    } else {
        unknown(&mut p.unknown, key, value);
        Ok(())
    }
}

fn rcpt_param(p: &mut RcptParams, key: &str, value: Option<&str>) -> Result<(), CommandError> {
    let k = key.as_bytes();
    if k.eq_ignore_ascii_case(b"NOTIFY") {
        const NEED: &str = "NEVER or a list of SUCCESS, FAILURE, DELAY is required";
        let v = value.ok_or_else(|| bad(key, NEED))?;
        let notify = if v.eq_ignore_ascii_case("NEVER") {
            Notify::default()
        } else {
            let mut n = Notify::default();
            for word in v.split(',') {
                if word.eq_ignore_ascii_case("SUCCESS") {
                    n.success = true;
                } else if word.eq_ignore_ascii_case("FAILURE") {
                    n.failure = true;
                } else if word.eq_ignore_ascii_case("DELAY") {
                    n.delay = true;
                } else if word.is_empty() || word.eq_ignore_ascii_case("NEVER") {
                    return Err(bad(key, NEED));
                } else {
                    return Err(unknown_value(key));
                }
            }
            n
        };
        set_once(&mut p.notify, key, notify)
    } else if k.eq_ignore_ascii_case(b"ORCPT") {
        const NEED: &str = "addr-type;xtext of at most 500 characters is required";
        let v = value.ok_or_else(|| bad(key, NEED))?;
        let (addr_type, address) = v.split_once(';').ok_or_else(|| bad(key, NEED))?;
        let type_ok = addr_type
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && addr_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        // RFC 6533: the utf-8 address type carries UTF-8 as such.
        let utf8_type = addr_type.eq_ignore_ascii_case("utf-8");
        let addr_ok = !address.is_empty()
            && if utf8_type {
                address
                    .bytes()
                    .all(|b| b >= 0x80 || is_xchar(b) || b == b'+')
            } else {
                is_xtext(address)
            };
        if !type_ok || !addr_ok || v.len() > MAX_ORCPT {
            return Err(bad(key, NEED));
        }
        let orcpt = Orcpt {
            addr_type: addr_type.to_string(),
            address: address.to_string(),
        };
        set_once(&mut p.orcpt, key, orcpt)
    } else {
        unknown(&mut p.unknown, key, value);
        Ok(())
    }
}

/// xchar: `!` to `~` except `+` and `=` (RFC 3461 §4).
fn is_xchar(b: u8) -> bool {
    matches!(b, 33..=126) && b != b'+' && b != b'='
}

fn is_upper_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'A'..=b'F').contains(&b)
}

/// Whether `s` is xtext: xchars and `+XX` with upper-case hex (RFC 3461 §4).
pub fn is_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            match (b.get(i + 1), b.get(i + 2)) {
                (Some(&h), Some(&l)) if is_upper_hex(h) && is_upper_hex(l) => i += 3,
                _ => return false,
            }
        } else if is_xchar(b[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// Decodes xtext (`a+2Bb` → `a+b`); `None` if `s` is not xtext or does not
/// decode to UTF-8.
pub fn xtext_decode(s: &str) -> Option<String> {
    if !is_xtext(s) {
        return None;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------
// Paths

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(b: &'a [u8]) -> Self {
        Cursor { b, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn eat(&mut self, want: u8) -> bool {
        if self.peek() == Some(want) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.b.len()
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        &self.b[start..self.pos]
    }
}

/// The bytes as a string: they come from a validated `&str` and are cut only
/// at ASCII delimiters, so this never replaces anything.
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// atext (RFC 5322 §3.2.3), plus UTF-8 octets (RFC 6531).
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

/// qtextSMTP (RFC 5321 §4.1.2), plus UTF-8 octets.
fn is_qtext(b: u8) -> bool {
    matches!(b, 32..=33 | 35..=91 | 93..=126) || b >= 0x80
}

/// A domain: sub-domains of letters, digits, hyphens (not first or last) and
/// UTF-8 octets, separated by dots.
fn parse_domain<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8], &'static str> {
    let start = c.pos;
    loop {
        let label = c.take_while(|b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80);
        match (label.first(), label.last()) {
            (Some(&first), Some(&last)) if first != b'-' && last != b'-' => {}
            (None, _) => return Err("invalid domain"),
            _ => return Err("domain label starts or ends with a hyphen"),
        }
        if label.len() > 63 && label.is_ascii() {
            return Err("domain label longer than 63 octets");
        }
        if !c.eat(b'.') {
            break;
        }
    }
    Ok(&c.b[start..c.pos])
}

/// An address literal `[…]` (RFC 5321 §4.1.3); the cursor is on `[`.
fn parse_literal(c: &mut Cursor<'_>) -> Result<Host, &'static str> {
    let rest = &c.b[c.pos..];
    let close = memchr(b']', rest).ok_or("unterminated address literal")?;
    let content = &rest[1.min(close)..close];
    if content.is_empty() || !content.iter().all(|&b| matches!(b, 33..=90 | 94..=126)) {
        return Err("invalid address literal");
    }
    let content = std::str::from_utf8(content).map_err(|_| "invalid address literal")?;
    let host = if let Ok(v4) = content.parse::<Ipv4Addr>() {
        Host::Ipv4(v4)
    } else if let Some(v6) = strip_prefix_ci(content, "IPv6:") {
        Host::Ipv6(v6.parse().map_err(|_| "invalid IPv6 address literal")?)
    } else {
        let (tag, value) = content.split_once(':').ok_or("invalid address literal")?;
        let tag_ok = !tag.is_empty()
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !tag.ends_with('-');
        if !tag_ok || value.is_empty() {
            return Err("invalid address literal");
        }
        Host::General {
            tag: tag.to_string(),
            content: value.to_string(),
        }
    };
    c.pos += close + 1;
    Ok(host)
}

fn parse_host(c: &mut Cursor<'_>) -> Result<Host, &'static str> {
    if c.peek() == Some(b'[') {
        parse_literal(c)
    } else {
        parse_domain(c).map(|d| Host::Domain(text(d)))
    }
}

/// A dot-string or quoted-string local part.
fn parse_local_part<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8], &'static str> {
    let start = c.pos;
    if c.eat(b'"') {
        loop {
            match c.peek() {
                None => return Err("unterminated quoted local part"),
                Some(b'"') => {
                    c.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    c.pos += 1;
                    if !c.peek().is_some_and(|b| matches!(b, 32..=126)) {
                        return Err("invalid quoted pair in local part");
                    }
                    c.pos += 1;
                }
                Some(b) if is_qtext(b) => c.pos += 1,
                Some(_) => return Err("invalid character in quoted local part"),
            }
        }
    } else {
        loop {
            if c.take_while(is_atext).is_empty() {
                return Err("invalid local part");
            }
            if !c.eat(b'.') {
                break;
            }
        }
    }
    Ok(&c.b[start..c.pos])
}

/// Parses `<…>` at the start of `s`: returns the path and where it ends.
fn parse_path(s: &[u8], kind: PathKind) -> Result<(Path, usize), CommandError> {
    let bad = |reason| CommandError::BadAddress { kind, reason };
    let mut c = Cursor::new(s);
    if !c.eat(b'<') {
        return Err(bad("address must be enclosed in <>"));
    }
    if c.eat(b'>') {
        if kind == PathKind::Recipient {
            return Err(bad("null recipient address"));
        }
        let path = Path {
            address: Address::Null,
            had_source_route: false,
            source_route: Vec::new(),
            utf8: false,
        };
        return Ok((path, c.pos));
    }
    let mut source_route = Vec::new();
    if c.peek() == Some(b'@') {
        loop {
            if !c.eat(b'@') {
                return Err(bad("invalid source route"));
            }
            source_route.push(parse_host(&mut c).map_err(bad)?.to_string());
            if !c.eat(b',') {
                break;
            }
        }
        if !c.eat(b':') {
            return Err(bad("invalid source route"));
        }
    }
    let had_source_route = !source_route.is_empty();
    let local = parse_local_part(&mut c).map_err(bad)?;
    let address = if kind == PathKind::Recipient
        && !had_source_route
        && c.peek() == Some(b'>')
        && local.eq_ignore_ascii_case(b"postmaster")
    {
        Address::Postmaster
    } else {
        if !c.eat(b'@') {
            return Err(bad("missing @domain"));
        }
        let domain_start = c.pos;
        let domain = parse_host(&mut c).map_err(bad)?;
        if c.peek() != Some(b'>') {
            return Err(bad("invalid character after the domain"));
        }
        if local.len() > MAX_LOCAL_PART {
            return Err(CommandError::LocalPartTooLong(kind));
        }
        if c.pos - domain_start > MAX_DOMAIN {
            return Err(CommandError::DomainTooLong(kind));
        }
        Address::Mailbox(Mailbox {
            local_part: text(local),
            domain,
        })
    };
    if !c.eat(b'>') {
        return Err(bad("missing >"));
    }
    if c.pos > MAX_PATH {
        return Err(CommandError::PathTooLong(kind));
    }
    let utf8 = !s[..c.pos].is_ascii();
    let path = Path {
        address,
        had_source_route,
        source_route,
        utf8,
    };
    Ok((path, c.pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Command, CommandError> {
        Command::parse(s.as_bytes())
    }

    fn mail(s: &str) -> (Path, MailParams) {
        match parse(s) {
            Ok(Command::Mail { from, params }) => (from, params),
            other => panic!("{s:?}: {other:?}"),
        }
    }

    fn rcpt(s: &str) -> (Path, RcptParams) {
        match parse(s) {
            Ok(Command::Rcpt { to, params }) => (to, params),
            other => panic!("{s:?}: {other:?}"),
        }
    }

    fn domain(d: &str) -> Host {
        Host::Domain(d.to_string())
    }

    // --- splitter ---

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

    // --- line checks ---

    #[test]
    fn bare_cr_and_lf_inside_a_line() {
        for line in [
            &b"NOOP\rQUIT\r\n"[..],
            b"NOOP\nQUIT\r\n",
            b"NOOP\r\r\n",
            b"NOOP",
            b"NOOP\r",
        ] {
            assert_eq!(
                Command::parse(line),
                Err(CommandError::BareLineEnding),
                "{line:?}"
            );
        }
        let r = CommandError::BareLineEnding.reply();
        assert_eq!((r.code, r.status), (500, Some((5, 5, 2))));
        assert!(r.lines[0].contains("Bare CR or LF"));
    }

    #[test]
    fn nul_utf8_empty() {
        assert_eq!(Command::parse(b"NO\0OP\r\n"), Err(CommandError::Nul));
        assert_eq!(
            Command::parse(b"NOOP \xff\r\n"),
            Err(CommandError::InvalidUtf8)
        );
        assert_eq!(Command::parse(b"\r\n"), Err(CommandError::Empty));
        assert_eq!(Command::parse(b"  \r\n"), Err(CommandError::Empty));
    }

    // --- verbs ---

    #[test]
    fn simple_verbs_case_insensitive() {
        assert_eq!(parse("data\r\n"), Ok(Command::Data));
        assert_eq!(parse("Rset\r\n"), Ok(Command::Rset));
        assert_eq!(parse("QUIT  \r\n"), Ok(Command::Quit));
        assert_eq!(parse("starttls\r\n"), Ok(Command::StartTls));
        assert_eq!(parse("NOOP anything at all\r\n"), Ok(Command::Noop));
        assert_eq!(parse("HELP\r\n"), Ok(Command::Help(None)));
        assert_eq!(
            parse("HELP mail\r\n"),
            Ok(Command::Help(Some("mail".into())))
        );
        assert_eq!(parse("VRFY joe\r\n"), Ok(Command::Vrfy("joe".into())));
        assert_eq!(parse("EXPN list@x\r\n"), Ok(Command::Expn("list@x".into())));
    }

    #[test]
    fn verbs_that_take_no_arguments() {
        assert_eq!(parse("DATA x\r\n"), Err(CommandError::Syntax("DATA")));
        assert_eq!(parse("QUIT now\r\n"), Err(CommandError::Syntax("QUIT")));
        assert_eq!(parse("VRFY\r\n"), Err(CommandError::Syntax("VRFY string")));
        assert_eq!(parse("EXPN \r\n"), Err(CommandError::Syntax("EXPN string")));
        let r = parse("RSET x\r\n").unwrap_err().reply();
        assert_eq!((r.code, r.status), (501, Some((5, 5, 4))));
    }

    #[test]
    fn unknown_verbs() {
        assert_eq!(
            parse("AUTH PLAIN x\r\n"),
            Ok(Command::Auth("PLAIN x".into()))
        );
        assert_eq!(
            parse("XYZZYXYZZY\r\n"),
            Ok(Command::Unknown("XYZZYXYZZY".into()))
        );
        assert_eq!(
            parse("MAILX FROM:<>\r\n"),
            Ok(Command::Unknown("MAILX".into()))
        );
        assert_eq!(parse("ÉHLO x\r\n"), Ok(Command::Unknown("ÉHLO".into())));
    }

    #[test]
    fn bdat() {
        assert_eq!(
            parse("BDAT 100\r\n"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            parse("bdat 0 last\r\n"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        for bad in [
            "BDAT\r\n",
            "BDAT x\r\n",
            "BDAT -1\r\n",
            "BDAT 1 FIRST\r\n",
            "BDAT 1 LAST x\r\n",
            "BDAT 99999999999999999999999\r\n",
        ] {
            assert_eq!(
                parse(bad),
                Err(CommandError::Syntax("BDAT size [LAST]")),
                "{bad}"
            );
        }
    }

    // --- EHLO / HELO ---

    #[test]
    fn ehlo_forms() {
        let Ok(Command::Ehlo(h)) = parse("EHLO mail.example.com\r\n") else {
            panic!()
        };
        assert_eq!(h.host, Some(domain("mail.example.com")));
        let Ok(Command::Helo(h)) = parse("helo [192.0.2.1]\r\n") else {
            panic!()
        };
        assert_eq!(h.host, Some(Host::Ipv4("192.0.2.1".parse().unwrap())));
        let Ok(Command::Ehlo(h)) = parse("EHLO [IPv6:2001:db8::1]\r\n") else {
            panic!()
        };
        assert_eq!(h.host, Some(Host::Ipv6("2001:db8::1".parse().unwrap())));
        // Not a domain or literal: kept raw for policy.
        let Ok(Command::Ehlo(h)) = parse("EHLO my_printer\r\n") else {
            panic!()
        };
        assert_eq!((h.raw.as_str(), h.host), ("my_printer", None));
        let Ok(Command::Ehlo(h)) = parse("EHLO host extra words\r\n") else {
            panic!()
        };
        assert_eq!((h.raw.as_str(), h.host), ("host extra words", None));
        assert_eq!(parse("EHLO\r\n"), Err(CommandError::Syntax("EHLO domain")));
        assert_eq!(
            parse("HELO   \r\n"),
            Err(CommandError::Syntax("HELO domain"))
        );
    }

    // --- MAIL / RCPT paths ---

    #[test]
    fn mail_simple_and_null() {
        let (p, params) = mail("MAIL FROM:<user@example.com>\r\n");
        assert_eq!(
            p.mailbox(),
            Some(&Mailbox {
                local_part: "user".into(),
                domain: domain("example.com")
            })
        );
        assert!(!p.had_source_route && !p.utf8);
        assert_eq!(params, MailParams::default());
        let (p, _) = mail("mail from:<>\r\n");
        assert!(p.is_null());
        assert_eq!(p.to_string(), "<>");
    }

    #[test]
    fn space_after_colon_is_tolerated() {
        let (p, _) = mail("MAIL FROM: <a@b.example>\r\n");
        assert_eq!(p.to_string(), "<a@b.example>");
        let (p, _) = rcpt("RCPT TO: <c@d.example> NOTIFY=NEVER\r\n");
        assert_eq!(p.to_string(), "<c@d.example>");
    }

    #[test]
    fn missing_from_or_brackets() {
        assert_eq!(
            parse("MAIL <a@b>\r\n"),
            Err(CommandError::Syntax("MAIL FROM:<address> [parameters]"))
        );
        assert_eq!(
            parse("MAIL FROM <a@b>\r\n"),
            Err(CommandError::Syntax("MAIL FROM:<address> [parameters]"))
        );
        assert_eq!(
            parse("RCPT\r\n"),
            Err(CommandError::Syntax("RCPT TO:<address> [parameters]"))
        );
        let e = parse("MAIL FROM:a@b\r\n").unwrap_err();
        assert!(matches!(
            e,
            CommandError::BadAddress {
                kind: PathKind::Sender,
                ..
            }
        ));
        let r = e.reply();
        assert_eq!((r.code, r.status), (501, Some((5, 1, 7))));
        let r = parse("RCPT TO:a@b\r\n").unwrap_err().reply();
        assert_eq!((r.code, r.status), (501, Some((5, 1, 3))));
    }

    #[test]
    fn source_routes_are_reported() {
        let (p, _) = rcpt("RCPT TO:<@relay1.example,@[192.0.2.9]:joe@target.example>\r\n");
        assert!(p.had_source_route);
        assert_eq!(p.source_route, vec!["relay1.example", "[192.0.2.9]"]);
        assert_eq!(p.to_string(), "<joe@target.example>");
        let (p, _) = mail("MAIL FROM:<@a.example:x@y.example>\r\n");
        assert!(p.had_source_route);
        assert_eq!(p.source_route, vec!["a.example"]);
        for bad in [
            "RCPT TO:<@a.example>\r\n",
            "RCPT TO:<@a.example,x@y>\r\n",
            "RCPT TO:<@:x@y>\r\n",
            "RCPT TO:<@a,@:x@y>\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(CommandError::BadAddress { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn quoted_local_parts() {
        let (p, _) = rcpt("RCPT TO:<\"john doe\\\"x\"@example.com>\r\n");
        let m = p.mailbox().unwrap();
        assert_eq!(m.local_part, "\"john doe\\\"x\"");
        assert_eq!(m.local_part_unquoted(), "john doe\"x");
        let (p, _) = rcpt("RCPT TO:<\"a>b@c\"@example.com>\r\n");
        assert_eq!(p.mailbox().unwrap().local_part_unquoted(), "a>b@c");
        let (p, _) = rcpt("RCPT TO:<\"\"@example.com>\r\n");
        assert_eq!(p.mailbox().unwrap().local_part, "\"\"");
        assert!(parse("RCPT TO:<\"abc@example.com>\r\n").is_err());
    }

    #[test]
    fn dot_string_rules() {
        mail("MAIL FROM:<first.last+tag!#$%&'*/=?^_`{|}~-@example.com>\r\n");
        for bad in [
            "MAIL FROM:<.a@b.example>\r\n",
            "MAIL FROM:<a.@b.example>\r\n",
            "MAIL FROM:<a..b@b.example>\r\n",
            "MAIL FROM:<a b@b.example>\r\n",
            "MAIL FROM:<a(b)@b.example>\r\n",
            "MAIL FROM:<@b.example>\r\n",
            "MAIL FROM:<ab.example>\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(CommandError::BadAddress { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn domain_rules() {
        mail("MAIL FROM:<a@x-y.example>\r\n");
        mail("MAIL FROM:<a@123.example>\r\n");
        for bad in [
            "MAIL FROM:<a@-x.example>\r\n",
            "MAIL FROM:<a@x-.example>\r\n",
            "MAIL FROM:<a@x..example>\r\n",
            "MAIL FROM:<a@x.example.>\r\n",
            "MAIL FROM:<a@x_y.example>\r\n",
            "MAIL FROM:<a@>\r\n",
            "MAIL FROM:<a@b c>\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(CommandError::BadAddress { .. })),
                "{bad}"
            );
        }
        let long_label = "a".repeat(64);
        assert!(parse(&format!("MAIL FROM:<a@{long_label}.example>\r\n")).is_err());
    }

    #[test]
    fn address_literals() {
        let (p, _) = rcpt("RCPT TO:<joe@[192.0.2.1]>\r\n");
        assert_eq!(
            p.mailbox().unwrap().domain,
            Host::Ipv4("192.0.2.1".parse().unwrap())
        );
        let (p, _) = rcpt("RCPT TO:<joe@[ipv6:2001:DB8::1]>\r\n");
        assert_eq!(
            p.mailbox().unwrap().domain,
            Host::Ipv6("2001:db8::1".parse().unwrap())
        );
        assert_eq!(p.to_string(), "<joe@[IPv6:2001:db8::1]>");
        let (p, _) = rcpt("RCPT TO:<joe@[x-tag:some;content]>\r\n");
        assert_eq!(
            p.mailbox().unwrap().domain,
            Host::General {
                tag: "x-tag".into(),
                content: "some;content".into()
            }
        );
        for bad in [
            "RCPT TO:<joe@[192.0.2.256]>\r\n",
            "RCPT TO:<joe@[IPv6:zz::1]>\r\n",
            "RCPT TO:<joe@[]>\r\n",
            "RCPT TO:<joe@[192.0.2.1>\r\n",
            "RCPT TO:<joe@[1.2.3]>\r\n",
            "RCPT TO:<joe@[a\\b:c]>\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(CommandError::BadAddress { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn utf8_addresses_are_flagged() {
        let (p, params) = mail("MAIL FROM:<pelé@exämple.com> SMTPUTF8\r\n");
        assert!(p.utf8 && params.smtputf8);
        assert_eq!(p.mailbox().unwrap().domain, domain("exämple.com"));
        let (p, _) = rcpt("RCPT TO:<\"dï\"@例え.jp>\r\n");
        assert!(p.utf8);
        let (p, _) = rcpt("RCPT TO:<ascii@example.com>\r\n");
        assert!(!p.utf8);
    }

    #[test]
    fn postmaster_and_null_recipient() {
        let (p, _) = rcpt("RCPT TO:<postMaster>\r\n");
        assert_eq!(p.address, Address::Postmaster);
        let (p, _) = rcpt("RCPT TO:<Postmaster@example.com>\r\n");
        assert!(p.mailbox().is_some());
        assert!(matches!(
            parse("RCPT TO:<>\r\n"),
            Err(CommandError::BadAddress {
                kind: PathKind::Recipient,
                ..
            })
        ));
        assert!(matches!(
            parse("MAIL FROM:<postmaster>\r\n"),
            Err(CommandError::BadAddress { .. })
        ));
    }

    #[test]
    fn length_limits() {
        let lp64 = "a".repeat(64);
        mail(&format!("MAIL FROM:<{lp64}@example.com>\r\n"));
        let lp65 = "a".repeat(65);
        let e = parse(&format!("MAIL FROM:<{lp65}@example.com>\r\n")).unwrap_err();
        assert_eq!(e, CommandError::LocalPartTooLong(PathKind::Sender));
        assert_eq!(e.reply().code, 553);
        assert_eq!(e.reply().status, Some((5, 1, 7)));
        // 256-octet domain of valid labels.
        let label = "a".repeat(63);
        let d256 = format!("{label}.{label}.{label}.{label}");
        assert_eq!(d256.len(), 255);
        let d256 = format!("{d256}b");
        let e = parse(&format!("RCPT TO:<x@{d256}>\r\n")).unwrap_err();
        assert!(matches!(
            e,
            CommandError::BadAddress { .. } | CommandError::DomainTooLong(_)
        ));
        let d = format!("{label}.{label}.{label}.{}", "b".repeat(62));
        assert_eq!(d.len(), 254);
        let d = format!("{d}.c");
        let e = parse(&format!("RCPT TO:<x@{d}>\r\n")).unwrap_err();
        assert_eq!(e, CommandError::DomainTooLong(PathKind::Recipient));
        assert_eq!(e.reply().status, Some((5, 1, 3)));
        // Path: route + mailbox over 256.
        let route = format!("@{label}.example,@{label}.example,@{label}.example");
        let e = parse(&format!("RCPT TO:<{route}:{lp64}@example.com>\r\n")).unwrap_err();
        assert_eq!(e, CommandError::PathTooLong(PathKind::Recipient));
        let r = e.reply();
        assert_eq!((r.code, r.status), (501, Some((5, 1, 3))));
    }

    // --- parameters ---

    #[test]
    fn mail_parameters() {
        let (_, p) = mail(
            "MAIL FROM:<a@b.example> SIZE=12345 BODY=8bitmime SMTPUTF8 RET=HDRS ENVID=QQ+2B1 AUTH=<>\r\n",
        );
        assert_eq!(p.size, Some(12345));
        assert_eq!(p.body, Some(Body::EightBitMime));
        assert!(p.smtputf8);
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("QQ+2B1"));
        assert_eq!(p.auth.as_deref(), Some("<>"));
        assert!(p.unknown.is_empty());
        let (_, p) = mail("MAIL FROM:<> body=BINARYMIME  size=0 \r\n");
        assert_eq!((p.body, p.size), (Some(Body::BinaryMime), Some(0)));
        let (_, p) = mail("MAIL FROM:<> SIZE=99999999999999999999\r\n");
        assert_eq!(p.size, Some(u64::MAX));
    }

    #[test]
    fn unknown_parameters_are_kept() {
        let (_, p) = mail("MAIL FROM:<a@b.example> X-FOO=bar HOLDFOR NOTIFY=NEVER\r\n");
        assert_eq!(
            p.unknown,
            vec![
                ("X-FOO".to_string(), Some("bar".to_string())),
                ("HOLDFOR".to_string(), None),
                ("NOTIFY".to_string(), Some("NEVER".to_string())),
            ]
        );
        let (_, p) = rcpt("RCPT TO:<a@b.example> SIZE=10\r\n");
        assert_eq!(
            p.unknown,
            vec![("SIZE".to_string(), Some("10".to_string()))]
        );
    }

    #[test]
    fn bad_parameters() {
        for (line, name) in [
            ("MAIL FROM:<> SIZE=x\r\n", "SIZE"),
            ("MAIL FROM:<> SIZE\r\n", "SIZE"),
            ("MAIL FROM:<> SIZE=123456789012345678901\r\n", "SIZE"),
            ("MAIL FROM:<> SMTPUTF8=yes\r\n", "SMTPUTF8"),
            ("MAIL FROM:<> ENVID=a+zz\r\n", "ENVID"),
            ("MAIL FROM:<> AUTH\r\n", "AUTH"),
            ("MAIL FROM:<> X=\r\n", "X"),
            ("MAIL FROM:<> X=a=b\r\n", "X"),
            ("MAIL FROM:<> -X\r\n", "-X"),
            ("RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS\r\n", "NOTIFY"),
            ("RCPT TO:<a@b> ORCPT=rfc822\r\n", "ORCPT"),
            ("RCPT TO:<a@b> ORCPT=;a@b\r\n", "ORCPT"),
            ("RCPT TO:<a@b> ORCPT=rfc822;\r\n", "ORCPT"),
        ] {
            match parse(line) {
                Err(CommandError::BadParameter { name: n, .. }) => assert_eq!(n, name, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        let envid = "A".repeat(101);
        assert!(parse(&format!("MAIL FROM:<> ENVID={envid}\r\n")).is_err());
        let r = parse("MAIL FROM:<> BODY\r\n").unwrap_err().reply();
        assert_eq!((r.code, r.status), (501, Some((5, 5, 4))));
        // A value nobody announced is not a syntax error: 555.
        for (line, name) in [
            ("MAIL FROM:<> BODY=9BIT\r\n", "BODY"),
            ("MAIL FROM:<> RET=ALL\r\n", "RET"),
            ("RCPT TO:<a@b> NOTIFY=SOMETIMES\r\n", "NOTIFY"),
        ] {
            let e = parse(line).unwrap_err();
            assert_eq!(e, CommandError::UnknownValue(name.into()), "{line}");
            let r = e.reply();
            assert_eq!((r.code, r.status), (555, Some((5, 5, 4))));
        }
        assert_eq!(
            parse("MAIL FROM:<a@b>SIZE=1\r\n"),
            Err(CommandError::Syntax("MAIL FROM:<address> [parameters]"))
        );
    }

    #[test]
    fn duplicate_parameters() {
        assert_eq!(
            parse("MAIL FROM:<> SIZE=1 size=2\r\n"),
            Err(CommandError::DuplicateParameter("size".into()))
        );
        assert_eq!(
            parse("MAIL FROM:<> SMTPUTF8 SMTPUTF8\r\n"),
            Err(CommandError::DuplicateParameter("SMTPUTF8".into()))
        );
        assert!(parse("RCPT TO:<a@b> NOTIFY=NEVER NOTIFY=DELAY\r\n").is_err());
    }

    #[test]
    fn rcpt_parameters() {
        let (_, p) = rcpt("RCPT TO:<a@b.example> NOTIFY=success,Delay ORCPT=rfc822;a+40b\r\n");
        assert_eq!(
            p.notify,
            Some(Notify {
                success: true,
                failure: false,
                delay: true
            })
        );
        let o = p.orcpt.unwrap();
        assert_eq!(
            (o.addr_type.as_str(), o.address.as_str()),
            ("rfc822", "a+40b")
        );
        assert_eq!(xtext_decode(&o.address).as_deref(), Some("a@b"));
        let (_, p) = rcpt("RCPT TO:<a@b.example> NOTIFY=NEVER ORCPT=utf-8;pelé@x\r\n");
        assert_eq!(p.notify, Some(Notify::default()));
        assert_eq!(p.orcpt.unwrap().address, "pelé@x");
    }

    #[test]
    fn xtext() {
        assert!(is_xtext("abc+2B+3D"));
        assert!(!is_xtext("a+2b"));
        assert!(!is_xtext("a=b"));
        assert!(!is_xtext("a b"));
        assert!(!is_xtext("a+"));
        assert_eq!(xtext_decode("a+2Bb+3D").as_deref(), Some("a+b="));
        assert_eq!(xtext_decode("+FF"), None);
    }

    #[test]
    fn every_error_has_a_5xx_reply() {
        let errors = [
            CommandError::BareLineEnding,
            CommandError::LineTooLong,
            CommandError::Nul,
            CommandError::InvalidUtf8,
            CommandError::Empty,
            CommandError::Syntax("X"),
            CommandError::BadAddress {
                kind: PathKind::Sender,
                reason: "x",
            },
            CommandError::LocalPartTooLong(PathKind::Recipient),
            CommandError::DomainTooLong(PathKind::Recipient),
            CommandError::PathTooLong(PathKind::Sender),
            CommandError::BadParameter {
                name: "X".into(),
                reason: "y",
            },
            CommandError::DuplicateParameter("X".into()),
        ];
        for e in errors {
            let r = e.reply();
            assert!(r.is_permanent(), "{e}");
            assert_eq!(r.status.map(|s| s.0), Some(5));
        }
        assert_eq!(CommandError::LineTooLong.reply().code, 500);
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = 0x1234_5678_u64;
        let alphabet = b"<>@:.,\"\\[]= +-aZ09\r\n\xc3\xa9\x00MAILFROMRCPTTO";
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (rng % 40) as usize;
            let mut line = match rng % 3 {
                0 => b"MAIL FROM:".to_vec(),
                1 => b"RCPT TO:".to_vec(),
                _ => b"EHLO ".to_vec(),
            };
            let mut r = rng;
            for _ in 0..len {
                r = r
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                line.push(alphabet[(r >> 33) as usize % alphabet.len()]);
            }
            line.extend_from_slice(b"\r\n");
            if let Err(e) = Command::parse(&line) {
                let _ = e.reply().to_bytes();
            }
        }
    }
}
