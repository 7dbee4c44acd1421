//! The SMTP AUTH exchange (RFC 4954) with the PLAIN (RFC 4616) and LOGIN
//! mechanisms, as devices speak them: the AUTH command's arguments, the
//! base64 lines of the exchange, and the credentials they carry. Pure: no
//! I/O, nothing logged (the lines carry passwords).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::reply::Reply;

/// The longest line of the exchange, CRLF included (RFC 4954 §4: 12288
/// octets for the AUTH command with its initial response).
pub const MAX_LINE: usize = 12288;

/// A SASL mechanism this server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// `PLAIN`: authzid NUL authcid NUL password, in one response.
    Plain,
    /// `LOGIN`: the user name, then the password, each asked for.
    Login,
}

/// What EHLO lists after `AUTH`.
pub const OFFERED: &str = "PLAIN LOGIN";

/// An `AUTH` command: its mechanism and initial response (still base64;
/// `=` is the empty response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// The initial response, as sent.
    pub initial: Option<String>,
}

/// A user name and password from the exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The account (authcid).
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// 501 5.5.2: a line that is not base64.
fn not_base64() -> Reply {
    Reply::new(501, (5, 5, 2), "Cannot decode the response (base64)")
}

/// 535 5.7.8: what a wrong user name or password is answered (the same for
/// both: which was wrong is not told).
pub fn invalid() -> Reply {
    Reply::new(535, (5, 7, 8), "Authentication credentials invalid")
}

/// Parses the arguments of `AUTH`: `mechanism [initial-response]`.
pub fn parse_start(args: &str) -> Result<Start, Reply> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let mechanism = match words.next() {
        Some(m) if m.eq_ignore_ascii_case("PLAIN") => Mechanism::Plain,
        Some(m) if m.eq_ignore_ascii_case("LOGIN") => Mechanism::Login,
        Some(_) => {
            return Err(Reply::new(
                504,
                (5, 5, 4),
                "Unrecognized authentication type (PLAIN and LOGIN are offered)",
            ));
        }
        None => return Err(Reply::new(501, (5, 5, 4), "Syntax: AUTH mechanism")),
    };
    let initial = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(Reply::new(
            501,
            (5, 5, 4),
            "Syntax: AUTH mechanism [initial-response]",
        ));
    }
    Ok(Start { mechanism, initial })
}

/// Decodes one response line (without its CRLF): `*` cancels (501 5.7.0),
/// `=` is empty, anything else must be base64 (else 501 5.5.2).
pub fn decode(line: &str) -> Result<Vec<u8>, Reply> {
    let line = line.trim_end_matches([' ', '\t']);
    if line == "*" {
        return Err(Reply::new(501, (5, 7, 0), "Authentication cancelled"));
    }
    if line == "=" {
        return Ok(Vec::new());
    }
    if line.is_empty() {
        return Err(not_base64());
    }
    STANDARD.decode(line).map_err(|_| not_base64())
}

fn text(bytes: &[u8]) -> Result<String, Reply> {
    String::from_utf8(bytes.to_vec()).map_err(|_| invalid())
}

/// The credentials of a PLAIN response: `[authzid] NUL authcid NUL
/// password`. An authzid other than the authcid (acting as someone else)
/// is refused.
pub fn plain(response: &[u8]) -> Result<Credentials, Reply> {
    let mut parts = response.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reply::new(
            501,
            (5, 5, 2),
            "PLAIN response must be authzid NUL authcid NUL password",
        ));
    };
    if authcid.is_empty() || (!authzid.is_empty() && authzid != authcid) {
        return Err(invalid());
    }
    Ok(Credentials {
        user: text(authcid)?,
        password: text(password)?,
    })
}

/// The credentials of a LOGIN exchange's two responses.
pub fn login(user: &[u8], password: &[u8]) -> Result<Credentials, Reply> {
    if user.is_empty() || user.contains(&0) || password.contains(&0) {
        return Err(invalid());
    }
    Ok(Credentials {
        user: text(user)?,
        password: text(password)?,
    })
}

/// The 334 challenge for the next response: empty for PLAIN, the
/// conventional prompts for LOGIN.
pub fn challenge(prompt: &str) -> Reply {
    Reply::plain(334, &STANDARD.encode(prompt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn starts() {
        assert_eq!(
            parse_start("plain"),
            Ok(Start {
                mechanism: Mechanism::Plain,
                initial: None
            })
        );
        let s = parse_start("LOGIN  dXNlcg==").expect("ok");
        assert_eq!(s.mechanism, Mechanism::Login);
        assert_eq!(s.initial.as_deref(), Some("dXNlcg=="));
        assert_eq!(parse_start("CRAM-MD5").map_err(|r| r.code), Err(504));
        assert_eq!(parse_start("").map_err(|r| r.code), Err(501));
        assert_eq!(parse_start("PLAIN a b").map_err(|r| r.code), Err(501));
    }

    #[test]
    fn responses() {
        assert_eq!(
            decode("*").map_err(|r| (r.code, r.status)),
            Err((501, Some((5, 7, 0))))
        );
        assert_eq!(decode("="), Ok(Vec::new()));
        assert_eq!(decode("not base64!").map_err(|r| r.code), Err(501));
        assert_eq!(decode(""), Err(not_base64()));
        assert_eq!(decode(&b64(b"x")), Ok(b"x".to_vec()));
    }

    #[test]
    fn plain_credentials() {
        let c = plain(b"\0scanner\0s3cret").expect("ok");
        assert_eq!(
            (c.user.as_str(), c.password.as_str()),
            ("scanner", "s3cret")
        );
        assert!(plain(b"scanner\0scanner\0pw").is_ok());
        assert_eq!(plain(b"admin\0scanner\0pw").map_err(|r| r.code), Err(535));
        assert_eq!(plain(b"\0\0pw").map_err(|r| r.code), Err(535));
        assert_eq!(plain(b"scanner pw").map_err(|r| r.code), Err(501));
        assert_eq!(plain(b"\0a\0b\0c").map_err(|r| r.code), Err(501));
        assert_eq!(plain(b"\0a\0\xff").map_err(|r| r.code), Err(535));
        // The password never shows in a Debug print.
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn login_credentials_and_prompts() {
        assert!(login(b"scanner", b"pw").is_ok());
        assert_eq!(login(b"", b"pw").map_err(|r| r.code), Err(535));
        assert_eq!(challenge("Username:").to_bytes(), b"334 VXNlcm5hbWU6\r\n");
        assert_eq!(challenge("").to_bytes(), b"334 \r\n");
    }
}
