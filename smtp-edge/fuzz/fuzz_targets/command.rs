//! Arbitrary bytes, in fuzzer-chosen reads, through the line splitter and the
//! command parser: never a panic, never unbounded buffering, every reply
//! well-formed, and parsed paths survive a round trip through their text.

#![no_main]

use libfuzzer_sys::{
    arbitrary::{self, Arbitrary},
    fuzz_target,
};
use smtp_edge::smtp::command::{Command, LineEvent, LineSplitter};
use smtp_edge::smtp::reply::Reply;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Small limits exercise the too-long path; 0 means the default 512.
    limit: u8,
    /// Read sizes, cycled.
    reads: Vec<u8>,
    data: Vec<u8>,
}

fn check_reply(r: &Reply) {
    let bytes = r.to_bytes();
    assert!(bytes.ends_with(b"\r\n"));
    // Only CRLF line ends, one per line.
    let crlfs = bytes.windows(2).filter(|w| w == b"\r\n").count();
    let crs = bytes.iter().filter(|&&b| b == b'\r').count();
    let lfs = bytes.iter().filter(|&&b| b == b'\n').count();
    assert_eq!((crlfs, crs, lfs), (r.lines.len().max(1), crlfs, crlfs));
}

fn check_command(cmd: &Command) {
    match cmd {
        Command::Mail { from, .. } => {
            let again = Command::parse(format!("MAIL FROM:{from}\r\n").as_bytes());
            match again {
                Ok(Command::Mail { from: f2, .. }) => assert_eq!(f2.address, from.address),
                other => panic!("{from}: {other:?}"),
            }
        }
        Command::Rcpt { to, .. } => {
            let again = Command::parse(format!("RCPT TO:{to}\r\n").as_bytes());
            match again {
                Ok(Command::Rcpt { to: t2, .. }) => assert_eq!(t2.address, to.address),
                other => panic!("{to}: {other:?}"),
            }
        }
        _ => {}
    }
}

fuzz_target!(|input: Input| {
    let limit = if input.limit == 0 {
        512
    } else {
        usize::from(input.limit)
    };
    let mut splitter = LineSplitter::new(limit);
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    while pos < input.data.len() {
        let want = input
            .reads
            .get(k % input.reads.len().max(1))
            .map_or(input.data.len(), |&n| usize::from(n).max(1));
        k += 1;
        let n = want.min(input.data.len() - pos);
        buf.extend_from_slice(&input.data[pos..pos + n]);
        pos += n;
        loop {
            let (event, used) = splitter.next_line(&buf);
            assert!(used <= buf.len());
            match event {
                LineEvent::Line(line) => {
                    assert!(line.len() <= limit && line.ends_with(b"\n"));
                    assert_eq!(line.len(), used);
                    match Command::parse(line) {
                        Ok(cmd) => check_command(&cmd),
                        Err(e) => check_reply(&e.reply()),
                    }
                }
                LineEvent::TooLong => {}
                LineEvent::NeedMore => {
                    buf.drain(..used);
                    break;
                }
            }
            buf.drain(..used);
        }
        // Never more than one line's worth is kept.
        assert!(buf.len() < limit);
    }
    // The whole input as one line, too.
    if let Err(e) = Command::parse(&input.data) {
        check_reply(&e.reply());
    }
});
