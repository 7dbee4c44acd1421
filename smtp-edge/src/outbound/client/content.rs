//! The message a delivery sends: what the envelope needs to know of it
//! (size, 8-bit, UTF-8 in the header section) and its octets, read in
//! chunks from memory or from the spool file, so a delivery holds one chunk
//! of the message whatever its size.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::data::{DATA_CHUNK, DataEncoder};

/// What MAIL FROM's parameters and the pre-flight checks need to know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContentFacts {
    /// The size with CRLF line ends and a final CRLF, without dot-stuffing
    /// (the SIZE= value, RFC 1870).
    pub size: u64,
    /// Any octet above 127.
    pub eight_bit: bool,
    /// Any octet above 127 in the header section.
    pub header_eight_bit: bool,
}

/// Gathers [`ContentFacts`] over content fed in pieces.
#[derive(Debug)]
struct FactsScanner {
    facts: ContentFacts,
    measure: DataEncoder,
    out: Vec<u8>,
    in_headers: bool,
    /// Octets of the current line so far (to find the empty line).
    line: usize,
}

impl FactsScanner {
    fn new() -> Self {
        FactsScanner {
            facts: ContentFacts::default(),
            measure: DataEncoder::measuring(),
            out: Vec::with_capacity(DATA_CHUNK + DATA_CHUNK / 2),
            in_headers: true,
            line: 0,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        self.out.clear();
        self.measure.feed(chunk, &mut self.out);
        self.facts.size += self.out.len() as u64;
        let ascii = chunk.is_ascii();
        self.facts.eight_bit |= !ascii;
        if !self.in_headers {
            return;
        }
        // The header section ends at the first line that is empty (or a
        // lone CR before its LF), as `header_section` decides.
        for &b in chunk {
            match b {
                b'\n' if self.line == 0 => {
                    self.in_headers = false;
                    return;
                }
                b'\n' => self.line = 0,
                b'\r' if self.line == 0 => {}
                _ => {
                    self.line += 1;
                    self.facts.header_eight_bit |= b >= 0x80;
                }
            }
        }
    }

    fn finish(mut self) -> ContentFacts {
        self.out.clear();
        self.measure.finish(&mut self.out);
        self.facts.size += self.out.len() as u64;
        self.facts
    }
}

impl ContentFacts {
    /// The facts of content in memory.
    pub fn of(content: &[u8]) -> Self {
        let mut s = FactsScanner::new();
        for chunk in content.chunks(DATA_CHUNK) {
            s.feed(chunk);
        }
        s.finish()
    }

    /// The facts of content read from `r` to its end (blocking).
    pub fn read(mut r: impl Read) -> io::Result<Self> {
        let mut s = FactsScanner::new();
        let mut buf = vec![0u8; DATA_CHUNK];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(s.finish());
            }
            s.feed(&buf[..n]);
        }
    }
}

#[derive(Debug, Clone)]
enum Source {
    Memory(Bytes),
    File { path: PathBuf, offset: u64 },
}

/// A message to send.
#[derive(Debug, Clone)]
pub struct Content {
    facts: ContentFacts,
    source: Source,
}

impl Content {
    /// Content held in memory (tests, small generated messages).
    pub fn memory(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Content {
            facts: ContentFacts::of(&bytes),
            source: Source::Memory(bytes),
        }
    }

    /// The content of `path` from `offset` to its end; reads it once to
    /// learn its facts (blocking: call off the async workers).
    pub fn file(path: &Path, offset: u64) -> io::Result<Self> {
        let mut f = std::fs::File::open(path)?;
        f.seek(SeekFrom::Start(offset))?;
        let facts = ContentFacts::read(io::BufReader::with_capacity(DATA_CHUNK, f))?;
        Ok(Content {
            facts,
            source: Source::File {
                path: path.to_path_buf(),
                offset,
            },
        })
    }

    /// What the envelope needs to know.
    pub fn facts(&self) -> ContentFacts {
        self.facts
    }

    /// A reader from the start.
    pub(super) async fn reader(&self) -> io::Result<Reader> {
        Ok(match &self.source {
            Source::Memory(b) => Reader::Memory(b.clone()),
            Source::File { path, offset } => {
                let mut f = tokio::fs::File::open(path).await?;
                f.seek(SeekFrom::Start(*offset)).await?;
                Reader::File(Box::new(f), vec![0u8; DATA_CHUNK])
            }
        })
    }
}

/// Chunks of a [`Content`], in order.
pub(super) enum Reader {
    Memory(Bytes),
    File(Box<tokio::fs::File>, Vec<u8>),
}

impl Reader {
    /// The next chunk (at most [`DATA_CHUNK`] octets); empty at the end.
    pub(super) async fn next(&mut self) -> io::Result<Bytes> {
        match self {
            Reader::Memory(b) => {
                let n = b.len().min(DATA_CHUNK);
                Ok(b.split_to(n))
            }
            Reader::File(f, buf) => {
                let n = f.read(buf).await?;
                Ok(Bytes::copy_from_slice(&buf[..n]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_match_the_encoder_and_the_header_section() {
        for (content, size, eight, header) in [
            (&b"Subject: x\r\n\r\nbody\r\n"[..], 20, false, false),
            (b"Subject: x\r\n\r\nbody", 20, false, false),
            (b"Subject: \xc3\xa9\r\n\r\nb\r\n", 18, true, true),
            (b"Subject: x\r\n\r\n\xc3\xa9\r\n", 18, true, false),
            (b"A: 1\nB: \xff\n\nx\n", 17, true, true),
        ] {
            let f = ContentFacts::of(content);
            assert_eq!(f.size, DataEncoder::message_size(content));
            assert_eq!(f.size, size, "{content:?}");
            assert_eq!(
                (f.eight_bit, f.header_eight_bit),
                (eight, header),
                "{content:?}"
            );
            assert_eq!(ContentFacts::read(content).unwrap(), f);
        }
    }

    #[tokio::test]
    async fn file_content_streams_from_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        let body: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut all = b"HEAD\n".to_vec();
        all.extend_from_slice(&body);
        std::fs::write(&p, &all).unwrap();
        let c = tokio::task::spawn_blocking(move || Content::file(&p, 5))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.facts().size, body.len() as u64 + 2);
        let mut r = c.reader().await.unwrap();
        let mut got = Vec::new();
        loop {
            let chunk = r.next().await.unwrap();
            if chunk.is_empty() {
                break;
            }
            assert!(chunk.len() <= DATA_CHUNK);
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, body);
    }
}
