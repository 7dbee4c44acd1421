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
//!
//! # Layout
//!
//! This file holds the [`Command`] enum, the dispatch on the verb
//! ([`Command::parse`], with the verbs whose arguments need no parsing:
//! DATA, RSET, NOOP, QUIT, VRFY, EXPN, HELP, STARTTLS, and AUTH, whose
//! arguments go raw to [`super::sasl`]) and the errors with their replies.
//! Each family of arguments has its own file, re-exported here: `line`
//! ([`LineSplitter`]), `hello` (EHLO/HELO), `mail` (MAIL/RCPT and their
//! ESMTP parameters), `path` (the address grammar they share with EHLO),
//! `xtext` (the RFC 3461 encoding, also used by DSNs) and `bdat` (BDAT).

mod bdat;
mod hello;
mod line;
mod mail;
mod path;
mod xtext;

use memchr::{memchr, memchr2};
use thiserror::Error;

use super::reply::Reply;

pub use hello::Helo;
pub use line::{DEFAULT_LINE_LIMIT, LineEvent, LineSplitter, PARAMETER_ALLOWANCE};
pub use mail::{
    Body, MAX_ENVID, MAX_ORCPT, MailParams, Notify, Orcpt, RcptParams, Ret, UnknownParam,
};
pub use path::{Address, Host, MAX_DOMAIN, MAX_LOCAL_PART, MAX_PATH, Mailbox, Path, PathKind};
pub use xtext::{is_xtext, xtext_decode};

use bdat::parse_bdat;
use hello::parse_helo;
use mail::{parse_mail, parse_rcpt};

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

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.as_bytes().get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix.as_bytes()) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn parse(s: &str) -> Result<Command, CommandError> {
        Command::parse(s.as_bytes())
    }

    pub(super) fn mail(s: &str) -> (Path, MailParams) {
        match parse(s) {
            Ok(Command::Mail { from, params }) => (from, params),
            other => panic!("{s:?}: {other:?}"),
        }
    }

    pub(super) fn rcpt(s: &str) -> (Path, RcptParams) {
        match parse(s) {
            Ok(Command::Rcpt { to, params }) => (to, params),
            other => panic!("{s:?}: {other:?}"),
        }
    }

    pub(super) fn domain(d: &str) -> Host {
        Host::Domain(d.to_string())
    }

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
