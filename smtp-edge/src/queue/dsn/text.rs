//! Line-safe text for the DSN: values from remote servers and clients made
//! one line (no control characters), made ASCII, and header fields folded
//! within RFC 5322's line limits.

/// The longest line, without its CRLF (RFC 5322 §2.1.1).
pub(super) const MAX_LINE: usize = 998;

/// Where header fields are folded when they can be (RFC 5322 §2.1.1).
const FOLD_AT: usize = 78;

/// One line of text: every control character (CR, LF, TAB, …) becomes a
/// space, runs of spaces one space, ends trimmed. Keeps UTF-8.
pub(super) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        out.push(c);
    }
    out.truncate(out.trim_end().len());
    out
}

/// [`one_line`], and every non-ASCII character as `?`.
pub(super) fn ascii(s: &str) -> String {
    one_line(s)
        .chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect()
}

/// One header field, `Name: value` folded at spaces to about 78 columns and
/// always within 998, ending in CRLF. `value` is expected on one line
/// (callers pass [`one_line`]/[`ascii`] text).
pub(super) fn field(name: &str, value: &str) -> String {
    let value = one_line(value);
    let mut out = String::with_capacity(name.len() + value.len() + 4);
    out.push_str(name);
    out.push(':');
    let mut len = out.len();
    let mut has_word = false;
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        for piece in chunks(word, MAX_LINE - 2) {
            let over = len + 1 + piece.len();
            if (has_word && over > FOLD_AT) || over > MAX_LINE {
                out.push_str("\r\n");
                len = 0;
            }
            out.push(' ');
            out.push_str(piece);
            len += 1 + piece.len();
            has_word = true;
        }
    }
    out.push_str("\r\n");
    out
}

/// `s` in pieces of at most `max` bytes, split at character boundaries.
pub(super) fn chunks(s: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out.push(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::dsn::build;
    use crate::queue::dsn::fixtures::*;

    #[test]
    fn long_values_are_folded_and_lines_stay_short() {
        let env = envelope(vec![rcpt("bob@fabrikam.com", None, None)]);
        let mut st = failed(0);
        let words: Vec<String> = (0..200).map(|i| format!("word{i}")).collect();
        let long_reply = format!("smtp; 550 5.7.1 {}", words.join(" "));
        st.diagnostic = Some(format!("{long_reply} {}", "x".repeat(3000)));
        let d = build(&reporter(), &env, MESSAGE, &[st]).unwrap();
        assert_well_formed(&d.content);
        let t = text(&d);
        let status = &t[t.find("Reporting-MTA").unwrap()..];
        let diag_line = status
            .lines()
            .position(|l| l.starts_with("Diagnostic-Code:"))
            .unwrap();
        let folded: Vec<&str> = status.lines().skip(diag_line).take(5).collect();
        assert!(folded[0].len() <= FOLD_AT, "{}", folded[0]);
        assert!(folded[1].starts_with(' ') && folded[1].len() <= FOLD_AT);
        let b = status_blocks(&d);
        let diag = get(&b[1], "Diagnostic-Code").unwrap();
        assert!(diag.starts_with(&long_reply), "{diag}");
        // The human part wraps too.
        let human_end = t.find("Content-Type: message/delivery-status").unwrap();
        let human = &t[..human_end];
        assert!(
            human
                .lines()
                .all(|l| l.len() <= 76 || !l.trim().contains(' '))
        );
        assert!(human.contains("word199"));
    }

    #[test]
    fn helpers() {
        assert_eq!(one_line("  a\r\n\tb  c \n"), "a b c");
        assert_eq!(ascii("zoë\r\n"), "zo?");
        assert_eq!(field("Subject", "short"), "Subject: short\r\n");
        let f = field("X", &"ab ".repeat(100));
        assert!(f.split("\r\n").all(|l| l.len() <= FOLD_AT));
        let f = field("X", &"a".repeat(2500));
        assert!(f.split("\r\n").all(|l| l.len() <= MAX_LINE));
        assert_eq!(
            f.replace("\r\n ", "").replace(' ', ""),
            format!("X:{}\r\n", "a".repeat(2500))
        );
    }
}
