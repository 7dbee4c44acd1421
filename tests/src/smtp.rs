//! A raw, blocking SMTP client for tests (it does what no well-behaved client
//! does, byte for byte) and polling with a bound.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The longest wait for any one read from a server.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `f` every 100 ms until it gives a value; panics with `what` (and
/// the last observation from `f`) after `secs` seconds.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out after {secs} s waiting for {what}; last: {last}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Header fields of a message with folded lines joined (for searching).
pub fn unfold(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace("\n ", " ")
        .replace("\n\t", " ")
}

/// `content` (CRLF line ends) dot-stuffed and terminated.
pub fn data_of(content: &str) -> Vec<u8> {
    let mut out = String::new();
    for line in content.split_inclusive("\r\n") {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
    }
    out.push_str(".\r\n");
    out.into_bytes()
}

/// A simple message.
pub fn message(from: &str, to: &str, subject: &str) -> String {
    format!("From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHello from the tests.\r\n")
}

/// One server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The code.
    pub code: u16,
    /// The text of each line (after `250-` / `250 `).
    pub lines: Vec<String>,
}

impl Answer {
    /// All lines joined.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// `code` and the enhanced status code `status` (e.g. "5.7.1").
    pub fn is(&self, code: u16, status: &str) -> bool {
        self.code == code
            && self
                .lines
                .last()
                .is_some_and(|l| l == status || l.starts_with(&format!("{status} ")))
    }

    /// The queue id of a 250 to the end of data.
    pub fn queue_id(&self) -> String {
        assert_eq!(self.code, 250, "{self:?}");
        queued(&self.text()).unwrap_or_else(|| panic!("no queue id in {self:?}"))
    }
}

/// The id after "queued as " in `text`.
pub fn queued(text: &str) -> Option<String> {
    let rest = text.split("queued as ").nth(1)?;
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    (!id.is_empty()).then_some(id)
}

/// The codes of some answers.
pub fn codes(answers: &[Answer]) -> Vec<u16> {
    answers.iter().map(|a| a.code).collect()
}

/// A raw SMTP client over TCP.
pub struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to `dst`, from `src` when given.
    pub fn connect(dst: SocketAddr, src: Option<IpAddr>) -> io::Result<Client> {
        let s = match src {
            None => TcpStream::connect_timeout(&dst, Duration::from_secs(5))?,
            Some(src) => {
                let sock = socket2::Socket::new(
                    socket2::Domain::for_address(dst),
                    socket2::Type::STREAM,
                    None,
                )?;
                sock.bind(&SocketAddr::new(src, 0).into())?;
                sock.connect_timeout(&dst.into(), Duration::from_secs(5))?;
                sock.into()
            }
        };
        s.set_read_timeout(Some(READ_TIMEOUT))?;
        s.set_write_timeout(Some(READ_TIMEOUT))?;
        Ok(Client { s, buf: Vec::new() })
    }

    /// The socket (to change timeouts).
    pub fn stream(&self) -> &TcpStream {
        &self.s
    }

    /// The next reply; `None` when the server closed before starting one.
    pub fn try_answer(&mut self) -> io::Result<Option<Answer>> {
        let mut lines = Vec::new();
        loop {
            while let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let raw: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let line = String::from_utf8_lossy(&raw[..pos]).into_owned();
                let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
                let Some(code) = code else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("not a reply line: {line:?}"),
                    ));
                };
                lines.push(line.get(4..).unwrap_or("").to_string());
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok(Some(Answer { code, lines }));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                if lines.is_empty() && self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next reply (panics without one).
    pub fn answer(&mut self) -> Answer {
        match self.try_answer() {
            Ok(Some(a)) => a,
            Ok(None) => panic!("the server closed the connection; a reply was expected"),
            Err(e) => panic!("no reply: {e}"),
        }
    }

    /// The next `n` replies.
    pub fn answers(&mut self, n: usize) -> Vec<Answer> {
        (0..n).map(|_| self.answer()).collect()
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send");
    }

    /// Sends raw bytes; the error if the connection is gone.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s.write_all(bytes)
    }

    /// One command line, its reply.
    pub fn cmd(&mut self, line: &str) -> Answer {
        self.send(format!("{line}\r\n").as_bytes());
        self.answer()
    }

    /// Every reply until the server closes (at most 100).
    pub fn rest(&mut self) -> Vec<Answer> {
        let mut out = Vec::new();
        while out.len() < 100 {
            match self.try_answer() {
                Ok(Some(a)) => out.push(a),
                _ => break,
            }
        }
        out
    }

    /// Whether the server closed the connection (EOF or reset, within the
    /// read timeout, with nothing more said).
    pub fn closed(&mut self) -> bool {
        match self.try_answer() {
            Ok(None) => true,
            Ok(Some(_)) => false,
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
        }
    }

    /// The next reply, which must have `code`.
    pub fn expect(&mut self, code: u16) -> io::Result<Answer> {
        match self.try_answer()? {
            Some(a) if a.code == code => Ok(a),
            Some(a) => Err(io::Error::other(format!("expected {code}, got {a:?}"))),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("expected {code}, the server closed the connection"),
            )),
        }
    }

    /// One command line whose reply must have `code`.
    pub fn try_cmd(&mut self, line: &str, code: u16) -> io::Result<Answer> {
        self.try_send(format!("{line}\r\n").as_bytes())?;
        self.expect(code)
    }

    /// Connects to 127.0.0.1:`port` and reads the 220.
    pub fn greeted(port: u16) -> io::Result<Client> {
        let mut c = Client::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), None)?;
        c.expect(220)?;
        Ok(c)
    }

    /// EHLO, MAIL, RCPT..., DATA with `data` sent as is (it must end with
    /// the terminating `.` line); the queue id of the 250 reply. Errors,
    /// not panics: for clients racing a crash.
    pub fn submit(&mut self, from: &str, rcpts: &[&str], data: &[u8]) -> io::Result<String> {
        self.try_cmd("EHLO client.fabrikam.com", 250)?;
        self.try_cmd(&format!("MAIL FROM:<{from}>"), 250)?;
        for r in rcpts {
            self.try_cmd(&format!("RCPT TO:<{r}>"), 250)?;
        }
        self.try_cmd("DATA", 354)?;
        self.try_send(data)?;
        let a = self.expect(250)?;
        queued(&a.text()).ok_or_else(|| io::Error::other(format!("no queue id in {a:?}")))
    }

    /// MAIL, RCPT for each recipient, DATA, the message as given (ending in
    /// CRLF, not dot-stuffed here), the end of data; the reply to the end of
    /// data.
    pub fn transaction(&mut self, from: &str, rcpts: &[&str], msg: &str) -> Answer {
        let a = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert!(a.is(250, "2.1.0"), "MAIL FROM:<{from}>: {a:?}");
        for r in rcpts {
            let a = self.cmd(&format!("RCPT TO:<{r}>"));
            assert!(a.is(250, "2.1.5"), "RCPT TO:<{r}>: {a:?}");
        }
        let a = self.cmd("DATA");
        assert_eq!(a.code, 354, "{a:?}");
        self.send(msg.as_bytes());
        self.send(b".\r\n");
        self.answer()
    }
}

/// Sends one message through smtp-edge on 127.0.0.1:`port`; its queue id.
pub fn send(port: u16, from: &str, rcpts: &[&str], content: &str) -> String {
    let mut c = Client::greeted(port).expect("connect to smtp-edge");
    let id = c
        .submit(from, rcpts, &data_of(content))
        .expect("message accepted");
    let _ = c.try_cmd("QUIT", 221);
    id
}
