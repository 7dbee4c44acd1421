//! xtext (RFC 3461 §4), the encoding of the DSN parameters ENVID and ORCPT
//! and of MAIL's AUTH=: checking and decoding.

/// xchar: `!` to `~` except `+` and `=` (RFC 3461 §4).
pub(super) fn is_xchar(b: u8) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
