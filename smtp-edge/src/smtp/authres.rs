//! The authserv-id of an `Authentication-Results` field (RFC 8601 §2.2),
//! read from the field's first line the way a conforming reader reads it.
//!
//! ```text
//! authres-payload = [CFWS] authserv-id [ CFWS authres-version ] ...
//! authserv-id     = value                 ; RFC 2045: token / quoted-string
//! ```
//!
//! CFWS is RFC 5322's: white space and comments, which nest and may hold
//! quoted-pairs. The value is compared without case and without a trailing
//! dot (a host name, RFC 8601 §2.5). Pure: bytes in, a verdict out.

/// What the first line of an `Authentication-Results` value says about its
/// authserv-id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthservId {
    /// The id, unquoted (quoted-pairs resolved), white space around it and
    /// trailing dots removed, in lower case. Empty when the value starts
    /// with a special such as `;` (no id at all).
    Id(Vec<u8>),
    /// The line ends before the id does (inside a comment or a quoted
    /// string, or with nothing but CFWS): the id is on a folded line.
    Unresolved,
}

/// RFC 2045 tspecials: they end a token.
fn is_tspecial(b: u8) -> bool {
    matches!(
        b,
        b'(' | b')'
            | b'<'
            | b'>'
            | b'@'
            | b','
            | b';'
            | b':'
            | b'\\'
            | b'"'
            | b'/'
            | b'['
            | b']'
            | b'?'
            | b'='
    )
}

/// Skips CFWS from `i`: the index of the first byte after it, or `None`
/// when the line ends inside a comment.
fn skip_cfws(v: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while i < v.len() {
        let b = v[i];
        if depth > 0 {
            match b {
                b'\\' => i += 1,
                b'(' => depth += 1,
                b')' => depth -= 1,
                _ => {}
            }
        } else if b == b'(' {
            depth = 1;
        } else if !b.is_ascii_whitespace() {
            return Some(i);
        }
        i += 1;
    }
    (depth == 0).then_some(v.len())
}

/// The authserv-id of a field whose first line's value (after the colon)
/// is `value`.
pub fn authserv_id(value: &[u8]) -> AuthservId {
    let Some(start) = skip_cfws(value, 0) else {
        return AuthservId::Unresolved;
    };
    let rest = &value[start..];
    let mut id = Vec::new();
    match rest.first() {
        None => return AuthservId::Unresolved,
        Some(b'"') => {
            let mut i = 1;
            loop {
                match rest.get(i) {
                    None => return AuthservId::Unresolved,
                    Some(b'"') => break,
                    Some(b'\\') => match rest.get(i + 1) {
                        None => return AuthservId::Unresolved,
                        Some(&c) => {
                            id.push(c);
                            i += 2;
                        }
                    },
                    Some(&c) => {
                        id.push(c);
                        i += 1;
                    }
                }
            }
        }
        Some(_) => id.extend(
            rest.iter()
                .take_while(|&&b| {
                    !is_tspecial(b) && !b.is_ascii_whitespace() && !b.is_ascii_control()
                })
                .copied(),
        ),
    }
    let mut id = id.trim_ascii().to_vec();
    while id.last() == Some(&b'.') {
        id.pop();
    }
    id.make_ascii_lowercase();
    AuthservId::Id(id)
}

/// Whether the field value claims `own` (lower case, no trailing dot) as
/// its authserv-id. An unresolved or empty id counts as a claim: it cannot
/// be told apart here, and dropping a result field costs nothing.
pub fn claims(value: &[u8], own: &str) -> bool {
    match authserv_id(value) {
        AuthservId::Unresolved => true,
        AuthservId::Id(id) => id.is_empty() || id == own.as_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: &str) -> AuthservId {
        authserv_id(v.as_bytes())
    }

    fn is(v: &str) -> AuthservId {
        AuthservId::Id(v.as_bytes().to_vec())
    }

    #[test]
    fn plain_tokens_in_any_case_and_spacing() {
        for v in [
            " edge.test; spf=pass",
            "edge.test;spf=pass",
            "\tEDGE.Test ; x",
            "  edge.test 1; none",
            "edge.test",
            "edge.test(c); x",
            "edge.test/x; y",
        ] {
            assert_eq!(id(v), is("edge.test"), "{v:?}");
        }
    }

    #[test]
    fn comments_before_the_id_nest_and_quote() {
        for v in [
            "(note) edge.test; x",
            "(note)edge.test;x",
            " (a (nested) comment) (two) edge.test; x",
            r" (with \) quoted pair) edge.test; x",
            r" (with \( quoted pair) edge.test; x",
            r" (a ( b \) c ) d) edge.test; x",
        ] {
            assert_eq!(id(v), is("edge.test"), "{v:?}");
        }
    }

    #[test]
    fn quoted_strings_and_trailing_dots() {
        for v in [
            r#" "edge.test"; x"#,
            r#""EDGE.TEST";x"#,
            r#" "edge\.test"; x"#,
            r#" " edge.test "; x"#,
            " edge.test.; x",
            r#" "edge.test."; x"#,
            " (c) \"Edge.Test.\" 1; none",
            " edge.test..; x",
        ] {
            assert_eq!(id(v), is("edge.test"), "{v:?}");
        }
    }

    #[test]
    fn lines_ending_before_the_id_are_unresolved() {
        for v in [
            "",
            "  ",
            " (open comment",
            " (a (b) ",
            r#" "open"#,
            r#" "a\"#,
            " (x) ",
        ] {
            assert_eq!(id(v), AuthservId::Unresolved, "{v:?}");
            assert!(claims(v.as_bytes(), "edge.test"));
        }
    }

    #[test]
    fn other_hosts_are_not_claims() {
        for v in [
            " mx.microsoft.com; dkim=pass",
            " (edge.test) mx.example; x",
            r#" "mx.example" ; x"#,
            " spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=edge.test",
            " edge.test.example; x",
            " xedge.test; x",
        ] {
            assert!(!claims(v.as_bytes(), "edge.test"), "{v:?}");
        }
        // No id at all counts as a claim.
        assert!(claims(b" ; spf=pass", "edge.test"));
    }
}
