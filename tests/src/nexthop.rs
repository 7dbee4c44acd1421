//! A scripted SMTP next hop on 127.0.0.1 for the sending side's tests: what
//! it answers at each step is set by a [`Script`] (changeable while it
//! runs), and it records every session and transaction. One thread per
//! connection; stopped on drop.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the next hop does about STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    /// Not offered.
    No,
    /// Offered and answered 220; then, once the client's hello arrives, the
    /// connection is closed: the handshake fails.
    BreakHandshake,
}

/// How RCPT is answered.
#[derive(Debug, Clone)]
pub enum RcptRule {
    /// The same reply to every RCPT.
    All(String),
    /// The first `accept` RCPTs of each transaction get 250, the rest `then`.
    Limit {
        /// Accepted per transaction.
        accept: usize,
        /// The reply to the others.
        then: String,
    },
    /// By address (matched case-insensitively within the angle brackets),
    /// else `default`.
    ByAddress {
        /// (address, reply).
        replies: Vec<(String, String)>,
        /// Everyone else.
        default: String,
    },
}

/// What the next hop answers.
#[derive(Debug, Clone)]
pub struct Script {
    /// The greeting (whole reply line(s) without the final CRLF).
    pub greeting: String,
    /// Wait this long before the greeting.
    pub greeting_delay: Duration,
    /// The reply to EHLO (None: a 250 with PIPELINING, 8BITMIME,
    /// ENHANCEDSTATUSCODES, and STARTTLS when offered).
    pub ehlo: Option<String>,
    /// STARTTLS.
    pub starttls: StartTls,
    /// The reply to MAIL.
    pub mail: String,
    /// RCPT.
    pub rcpt: RcptRule,
    /// The reply to the final dot.
    pub data_end: String,
    /// Wait this long before the reply to the final dot.
    pub data_end_delay: Duration,
    /// Read message data at most this fast (octets per second; 0: at once).
    pub read_rate: usize,
    /// A second reply line sent right after the reply to the final dot
    /// (a server out of step, or an LMTP-like one answering per recipient).
    pub data_end_extra: Option<String>,
    /// The reply to RSET.
    pub rset: String,
    /// Close a session that sent nothing for this long, after a 421 (as a
    /// server's idle timeout does); `None`: 30 s, then just closed.
    pub idle_close: Option<Duration>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: "220 nexthop.test ESMTP".into(),
            greeting_delay: Duration::ZERO,
            ehlo: None,
            starttls: StartTls::No,
            mail: "250 2.1.0 ok".into(),
            rcpt: RcptRule::All("250 2.1.5 ok".into()),
            data_end: "250 2.0.0 ok".into(),
            data_end_delay: Duration::ZERO,
            read_rate: 0,
            idle_close: None,
            data_end_extra: None,
            rset: "250 2.0.0 ok".into(),
        }
    }
}

/// One transaction that reached the end of its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The MAIL FROM address.
    pub mail_from: String,
    /// The recipients that got 250.
    pub rcpts: Vec<String>,
    /// The message as sent (dot-stuffed, without the final dot line).
    pub data: Vec<u8>,
    /// When its final dot was answered.
    pub at: Instant,
}

#[derive(Default)]
struct Seen {
    /// Every MAIL FROM address, in order (also of transactions refused).
    mails: Vec<String>,
    /// Every RCPT address with the code it got.
    rcpts: Vec<(String, u16)>,
    transactions: Vec<Transaction>,
}

struct Shared {
    script: Mutex<Script>,
    seen: Mutex<Seen>,
    sessions: AtomicUsize,
    active: AtomicUsize,
    max_active: AtomicUsize,
    stop: AtomicBool,
}

/// A running next hop.
pub struct NextHop {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn address_of(line: &str) -> String {
    line.split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(a, _)| a.to_string())
        .unwrap_or_default()
}

fn code(reply: &str) -> u16 {
    reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0)
}

impl NextHop {
    /// Starts one with `script`.
    pub fn start(script: Script) -> NextHop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind next hop");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            seen: Mutex::new(Seen::default()),
            sessions: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s2 = shared.clone();
        let thread = std::thread::spawn(move || {
            while !s2.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let shared = s2.clone();
                        std::thread::spawn(move || {
                            shared.sessions.fetch_add(1, Ordering::Relaxed);
                            let now = shared.active.fetch_add(1, Ordering::Relaxed) + 1;
                            shared.max_active.fetch_max(now, Ordering::Relaxed);
                            let _ = session(s, &shared);
                            shared.active.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        NextHop {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// Its address as a smart host.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what it answers: the greeting, EHLO and STARTTLS from the
    /// next session on, the rest from the next transaction (MAIL) on.
    pub fn set(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.shared.script.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Sessions so far.
    pub fn sessions(&self) -> usize {
        self.shared.sessions.load(Ordering::Relaxed)
    }

    /// Sessions open now.
    pub fn open_now(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// The most sessions open at once.
    pub fn max_concurrent(&self) -> usize {
        self.shared.max_active.load(Ordering::Relaxed)
    }

    /// Every MAIL FROM address seen.
    pub fn mails(&self) -> Vec<String> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mails
            .clone()
    }

    /// Every RCPT address seen, with the code it got.
    pub fn rcpts(&self) -> Vec<(String, u16)> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rcpts
            .clone()
    }

    /// The transactions that reached the end of their data.
    pub fn transactions(&self) -> Vec<Transaction> {
        self.shared
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .transactions
            .clone()
    }

    /// Waits (at most `secs`) until `f` holds for the transactions so far;
    /// then they are returned.
    pub fn wait_for(
        &self,
        what: &str,
        secs: u64,
        f: impl Fn(&[Transaction]) -> bool,
    ) -> Vec<Transaction> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let t = self.transactions();
            if f(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {secs} s waiting for {what} at {}; so far {} transaction(s), mails {:?}, rcpts {:?}",
                self.addr,
                t.len(),
                self.mails(),
                self.rcpts()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NextHop {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn session(s: TcpStream, shared: &Shared) -> io::Result<()> {
    let current = || {
        shared
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    };
    let mut script = current();
    s.set_nonblocking(false)?;
    // Replies go out one write each: without this, Nagle and the client's
    // delayed ACK hold the second of two pipelined replies for 40 ms.
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(script.idle_close.unwrap_or(Duration::from_secs(30))))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let say = |w: &mut TcpStream, reply: &str| w.write_all(format!("{reply}\r\n").as_bytes());
    std::thread::sleep(script.greeting_delay);
    if shared.stop.load(Ordering::Relaxed) {
        return Ok(());
    }
    say(&mut w, &script.greeting)?;
    let (mut from, mut rcpts) = (None::<String>, Vec::<String>::new());
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if script.idle_close.is_some()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                let _ = say(&mut w, "421 4.4.2 nexthop.test idle too long, closing");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => match &script.ehlo {
                Some(reply) => reply.clone(),
                None => {
                    let mut lines = vec!["250-nexthop.test", "250-PIPELINING", "250-8BITMIME"];
                    if script.starttls != StartTls::No {
                        lines.push("250-STARTTLS");
                    }
                    lines.push("250 ENHANCEDSTATUSCODES");
                    lines.join("\r\n")
                }
            },
            "HELO" => "250 nexthop.test".into(),
            "STAR" if script.starttls == StartTls::BreakHandshake => {
                say(&mut w, "220 2.0.0 go ahead")?;
                // Wait for the client's hello, then hang up mid-handshake.
                let mut hello = [0u8; 512];
                let _ = r.get_mut().read(&mut hello);
                return Ok(());
            }
            "MAIL" => {
                // What `set` changed since counts from this transaction on.
                let fresh = current();
                script = Script {
                    greeting: script.greeting,
                    ehlo: script.ehlo,
                    starttls: script.starttls,
                    idle_close: script.idle_close,
                    ..fresh
                };
                let a = address_of(&line);
                shared
                    .seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .mails
                    .push(a.clone());
                if (200..300).contains(&code(&script.mail)) {
                    from = Some(a);
                    rcpts.clear();
                }
                script.mail.clone()
            }
            "RCPT" => {
                let a = address_of(&line);
                let reply = match &script.rcpt {
                    RcptRule::All(r) => r.clone(),
                    RcptRule::Limit { accept, then } => {
                        if rcpts.len() < *accept {
                            "250 2.1.5 ok".into()
                        } else {
                            then.clone()
                        }
                    }
                    RcptRule::ByAddress { replies, default } => replies
                        .iter()
                        .find(|(addr, _)| addr.eq_ignore_ascii_case(&a))
                        .map_or(default.clone(), |(_, r)| r.clone()),
                };
                shared
                    .seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .rcpts
                    .push((a.clone(), code(&reply)));
                if (200..300).contains(&code(&reply)) && from.is_some() {
                    rcpts.push(a);
                }
                reply
            }
            "DATA" => {
                if from.is_none() || rcpts.is_empty() {
                    "554 5.5.1 no valid recipients".into()
                } else {
                    say(&mut w, "354 go ahead")?;
                    let mut data = Vec::new();
                    let started = Instant::now();
                    loop {
                        let mut l = Vec::new();
                        if r.read_until(b'\n', &mut l)? == 0 {
                            return Ok(());
                        }
                        if l == b".\r\n" {
                            break;
                        }
                        data.extend_from_slice(&l);
                        if script.read_rate > 0 {
                            let should = Duration::from_secs_f64(
                                data.len() as f64 / script.read_rate as f64,
                            );
                            let el = started.elapsed();
                            if should > el {
                                std::thread::sleep(should - el);
                            }
                        }
                    }
                    std::thread::sleep(script.data_end_delay);
                    if (200..300).contains(&code(&script.data_end)) {
                        shared
                            .seen
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .transactions
                            .push(Transaction {
                                mail_from: from.take().unwrap_or_default(),
                                rcpts: std::mem::take(&mut rcpts),
                                data,
                                at: Instant::now(),
                            });
                    }
                    from = None;
                    match &script.data_end_extra {
                        Some(extra) => format!("{}\r\n{extra}", script.data_end),
                        None => script.data_end.clone(),
                    }
                }
            }
            "RSET" => {
                from = None;
                rcpts.clear();
                script.rset.clone()
            }
            "NOOP" => "250 2.0.0 ok".into(),
            "QUIT" => {
                say(&mut w, "221 2.0.0 bye")?;
                return Ok(());
            }
            _ => "502 5.5.1 not implemented".into(),
        };
        say(&mut w, &reply)?;
    }
}
