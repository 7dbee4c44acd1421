//! BDAT (RFC 3030): the arguments `size [LAST]`, and recognizing a BDAT line
//! even when it cannot be parsed, since a chunk of unknown length follows it.
//! (DATA takes no arguments: the dispatch in [`super::Command::parse`] checks
//! it.)

use super::{Command, CommandError};

/// Whether a line starts with the BDAT verb (in any case).
pub(super) fn is_bdat(line: &[u8]) -> bool {
    line.get(..4)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"BDAT"))
        && matches!(line.get(4), None | Some(b' ' | b'\t' | b'\r' | b'\n'))
}

pub(super) fn parse_bdat(args: &str) -> Result<Command, CommandError> {
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

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::*;

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
}
