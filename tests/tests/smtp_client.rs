//! The SMTP client (`smtp_edge::outbound::client`) against real peers on
//! loopback: Postfix's smtp-sink (with and without PIPELINING, refusing
//! commands, the smuggling content), a scripted tokio server for exact
//! reply scripts (per-recipient refusals, DATA refused, SIZE, STARTTLS
//! injection, timeouts, the TLS level matrix with valid, wildcard, expired,
//! self-signed and wrong-name certificates), and smtp-edge's own receiving
//! side verifying the client certificate.
//!
//! Everything listens on 127.0.0.1 on ports picked free, and every wait is
//! bounded.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::RootCertStore;
use smtp_edge::outbound::client::{
    ClientSettings, Content, DeliveryError, Disposition, Outcome, Stage, Timeouts, Transaction,
    deliver,
};
use smtp_edge::outbound::routing::TlsLevel;
use smtp_edge::queue::spool::Recipient;
use smtp_edge_tests::Daemon;
use smtp_edge_tests::certs::{Ca, Leaf};
use smtp_edge_tests::ports::free_port;
use smtp_edge_tests::sink::Sink;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

/// Every wait of the client in these tests.
const LIMIT: Duration = Duration::from_secs(10);

fn rcpt(address: &str) -> Recipient {
    Recipient {
        address: address.to_string(),
        orcpt: None,
        notify: None,
    }
}

fn txn<'a>(from: &'a str, recipients: &'a [Recipient]) -> Transaction<'a> {
    Transaction {
        mail_from: from,
        recipients,
        body: None,
        smtputf8: false,
        ret: None,
        envid: None,
    }
}

fn settings(tls: TlsLevel) -> ClientSettings {
    let mut s = ClientSettings::new("edge.contoso.com", tls);
    s.timeouts = Timeouts::all(LIMIT);
    s
}

/// Runs one delivery with a bounded overall time.
async fn send(
    addr: SocketAddr,
    host: &str,
    s: &ClientSettings,
    t: &Transaction<'_>,
    content: &[u8],
) -> Result<Outcome, DeliveryError> {
    let content = Content::memory(content.to_vec());
    tokio::time::timeout(Duration::from_secs(60), deliver(addr, host, s, t, &content))
        .await
        .expect("delivery finished in time")
}

fn dispositions(o: &Outcome) -> Vec<Disposition> {
    o.per_recipient.iter().map(|r| r.disposition).collect()
}

// ---------------------------------------------------------------------------
// Certificates

fn ca(name: &str) -> Ca {
    Ca::new(name)
}

fn leaf(names: &[&str], ca: Option<&Ca>, expired: bool) -> Leaf {
    Leaf::new(names, ca, expired)
}

fn roots(ca: &Ca) -> Arc<RootCertStore> {
    ca.roots()
}

fn acceptor(leaf: &Leaf, tls12_only: bool) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
        .expect("server config");
    TlsAcceptor::from(Arc::new(config))
}

const MESSAGE: &[u8] = b"From: alice@fabrikam.com\r\nTo: bob@contoso.com\r\nSubject: client test\r\n\r\nfirst line\r\n.leading dot\r\n..two dots\r\nlast line\r\n";

#[tokio::test]
async fn delivers_to_smtp_sink_with_and_without_pipelining() {
    for (options, pipelining) in [(&[][..], true), (&["-p"][..], false)] {
        let sink = Sink::start(options);
        let rcpts = [rcpt("bob@contoso.com"), rcpt("carol@contoso.com")];
        let s = settings(TlsLevel::Opportunistic);
        let o = send(
            sink.addr(),
            "sink.test",
            &s,
            &txn("alice@fabrikam.com", &rcpts),
            MESSAGE,
        )
        .await
        .unwrap_or_else(|e| panic!("{options:?}: {e}"));
        assert_eq!(o.extensions.pipelining, pipelining);
        assert!(o.tls.is_none(), "smtp-sink has no STARTTLS");
        assert_eq!(
            dispositions(&o),
            [Disposition::Delivered, Disposition::Delivered],
            "{o:?}"
        );
        assert_eq!(o.per_recipient[0].reply.as_ref().expect("reply").code, 250);
        let m = sink.messages();
        assert_eq!(m.len(), 1, "{options:?}: {m:?}");
        let m = &m[0];
        assert!(m.contains("X-Mail-Args: <alice@fabrikam.com>"), "{m}");
        assert!(m.contains("X-Rcpt-Args: <bob@contoso.com>"), "{m}");
        assert!(m.contains("X-Rcpt-Args: <carol@contoso.com>"), "{m}");
        assert!(m.contains("X-Helo-Args: edge.contoso.com"), "{m}");
        // Dot-stuffing undone by the server: the lines as written.
        for line in ["first line", "\n.leading dot", "\n..two dots", "last line"] {
            assert!(m.contains(line), "{line:?} in {m}");
        }
    }
}

#[tokio::test]
async fn smtp_sink_refusals() {
    let rcpts = [rcpt("bob@contoso.com"), rcpt("carol@contoso.com")];
    let t = txn("alice@fabrikam.com", &rcpts);
    let s = settings(TlsLevel::None);

    // MAIL refused with 4xx: transient, for everyone, nothing sent.
    let sink = Sink::start(&["-r", "MAIL"]);
    let e = send(sink.addr(), "sink", &s, &t, MESSAGE)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DeliveryError::Refused { stage: Stage::Mail, reply } if reply.code == 450),
        "{e}"
    );
    assert!(!e.is_permanent() && !e.next_host_may_help());
    assert!(sink.messages().is_empty());

    // Every RCPT refused with 5xx: permanent per recipient, no data.
    let sink = Sink::start(&["-f", "RCPT"]);
    let o = send(sink.addr(), "sink", &s, &t, MESSAGE)
        .await
        .expect("outcome");
    assert_eq!(
        dispositions(&o),
        [Disposition::Permanent, Disposition::Permanent]
    );
    assert_eq!(o.per_recipient[1].status, (5, 3, 0));
    assert!(o.failure.is_none());
    assert!(sink.messages().is_empty());

    // The final dot refused with 4xx: transient for the accepted ones.
    let sink = Sink::start(&["-r", "."]);
    let o = send(sink.addr(), "sink", &s, &t, MESSAGE)
        .await
        .expect("outcome");
    assert_eq!(
        dispositions(&o),
        [Disposition::Transient, Disposition::Transient]
    );
    let reply = o.per_recipient[0].reply.as_ref().expect("reply");
    assert_eq!(reply.code, 450, "{reply}");

    // EHLO refused with 5xx: HELO, and plain SMTP.
    let sink = Sink::start(&["-f", "EHLO"]);
    let o = send(sink.addr(), "sink", &s, &t, MESSAGE)
        .await
        .expect("outcome");
    assert!(o.all_delivered(), "{o:?}");
    assert!(!o.extensions.esmtp);
    let m = sink.messages();
    assert_eq!(m.len(), 1);
    assert!(m[0].contains("X-Client-Proto: SMTP\n"), "{}", m[0]);
}

/// Content that tries to end the message early and start another.
const SMUGGLING: &[u8] =
    b"Subject: smuggling\r\n\r\nhello\r\n.\r\r\nMAIL FROM:<evil1@fabrikam.com>\r\n\
RCPT TO:<victim@contoso.com>\r\nDATA\r\nsmuggled 1\r\n.\r\n\
after\r\r\n.\r\nMAIL FROM:<evil2@fabrikam.com>\r\nsmuggled 2\r\n.\r\n\
lone\rCR and\n.\nbare LF\r.\rbare CR dot\r\n.\r\nend\r\n";

#[tokio::test]
async fn smuggling_content_reaches_smtp_sink_as_one_message() {
    for options in [&[][..], &["-p"][..]] {
        let sink = Sink::start(options);
        let rcpts = [rcpt("bob@contoso.com")];
        let s = settings(TlsLevel::None);
        let o = send(
            sink.addr(),
            "sink",
            &s,
            &txn("alice@fabrikam.com", &rcpts),
            SMUGGLING,
        )
        .await
        .expect("outcome");
        assert!(o.all_delivered(), "{o:?}");
        let m = sink.messages();
        assert_eq!(m.len(), 1, "{options:?}: exactly one message: {m:?}");
        let m = &m[0];
        assert_eq!(m.matches("X-Mail-Args:").count(), 1, "{m}");
        assert_eq!(m.matches("X-Rcpt-Args:").count(), 1, "{m}");
        for part in [
            "MAIL FROM:<evil1@fabrikam.com>",
            "smuggled 1",
            "MAIL FROM:<evil2@fabrikam.com>",
            "smuggled 2",
            "bare CR dot",
            "\nend\n",
        ] {
            assert!(m.contains(part), "{part:?} is content: {m}");
        }
    }
}

// ---------------------------------------------------------------------------
// A scripted server

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How the scripted server answers.
#[derive(Clone)]
struct Script {
    greeting: &'static str,
    /// Extension lines of EHLO before TLS.
    ehlo: Vec<&'static str>,
    /// Extension lines after TLS (STARTTLS not repeated).
    ehlo_tls: Vec<&'static str>,
    /// Reply to EHLO instead of the list (e.g. a refusal).
    ehlo_reply: Option<&'static str>,
    /// Replies by command prefix (upper case compared), first match wins.
    replies: Vec<(&'static str, &'static str)>,
    /// Bytes sent for STARTTLS; a handshake follows when they start with
    /// "220" and there is a certificate.
    starttls: &'static str,
    tls: Option<TlsAcceptor>,
    /// Reply to the final dot.
    data_end: &'static str,
    /// Never answer anything (timeouts).
    silent: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: "220 scripted ESMTP\r\n",
            ehlo: vec!["PIPELINING", "8BITMIME", "SIZE 10000000", "DSN", "SMTPUTF8"],
            ehlo_tls: vec!["PIPELINING", "8BITMIME", "SIZE 10000000", "DSN", "SMTPUTF8"],
            ehlo_reply: None,
            replies: Vec::new(),
            starttls: "220 2.0.0 go ahead\r\n",
            tls: None,
            data_end: "250 2.0.0 queued\r\n",
            silent: false,
        }
    }
}

/// What the scripted server saw on one connection.
#[derive(Debug, Default, Clone)]
struct Seen {
    commands: Vec<String>,
    /// The raw data of each message (between 354 and the dot line).
    data: Vec<Vec<u8>>,
    /// When MAIL was read, the commands up to DATA were already there.
    pipelined: bool,
    tls: bool,
    /// Bytes received after a STARTTLS reply that was not followed by TLS.
    after_starttls: Vec<u8>,
}

struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    async fn start(script: Script) -> Scripted {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let script = script.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut seen = Seen::default();
                    let _ = tokio::time::timeout(
                        Duration::from_secs(30),
                        serve(Box::new(tcp), &script, &mut seen),
                    )
                    .await;
                    log.lock().expect("log").push(seen);
                });
            }
        });
        Scripted { addr, seen }
    }

    /// What the connections saw, once `n` of them ended.
    async fn seen(&self, n: usize) -> Vec<Seen> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let s = self.seen.lock().expect("log");
                if s.len() >= n {
                    return s.clone();
                }
            }
            assert!(Instant::now() < deadline, "server connections did not end");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The next CRLF line (without it); `None` at the end.
async fn line(io: &mut Box<dyn Io>, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
            let l = buf[..p].to_vec();
            buf.drain(..p + 2);
            return Some(l);
        }
        let mut chunk = [0u8; 8192];
        let n = io.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve(mut io: Box<dyn Io>, script: &Script, seen: &mut Seen) -> Option<()> {
    if script.silent {
        let mut sink = Vec::new();
        let _ = io.read_to_end(&mut sink).await;
        return None;
    }
    io.write_all(script.greeting.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    loop {
        let l = line(&mut io, &mut buf).await?;
        let text = String::from_utf8_lossy(&l).into_owned();
        let upper = text.to_ascii_uppercase();
        seen.commands.push(text.clone());
        let scripted = script
            .replies
            .iter()
            .find(|(prefix, _)| upper.starts_with(&prefix.to_ascii_uppercase()))
            .map(|(_, r)| *r);
        let verb = upper.split(' ').next().unwrap_or("").to_string();
        if verb == "MAIL" {
            let rest = String::from_utf8_lossy(&buf);
            seen.pipelined = rest.contains("DATA\r\n");
        }
        let reply = match (verb.as_str(), scripted) {
            (_, Some(r)) if verb != "DATA" => r.to_string(),
            ("EHLO", None) => match script.ehlo_reply {
                Some(r) => r.to_string(),
                None => {
                    let mut ext = if seen.tls {
                        script.ehlo_tls.clone()
                    } else {
                        script.ehlo.clone()
                    };
                    if !seen.tls && script.tls.is_some() {
                        ext.push("STARTTLS");
                    }
                    let mut r = String::from("250-scripted\r\n");
                    for (i, e) in ext.iter().enumerate() {
                        let sep = if i + 1 == ext.len() { ' ' } else { '-' };
                        r.push_str(&format!("250{sep}{e}\r\n"));
                    }
                    if ext.is_empty() {
                        r = "250 scripted\r\n".into();
                    }
                    r
                }
            },
            ("STARTTLS", None) => {
                io.write_all(script.starttls.as_bytes()).await.ok()?;
                match &script.tls {
                    Some(acceptor) if script.starttls.starts_with("220") => {
                        if script.starttls.matches("\r\n").count() > 1 {
                            // Injected replies: record what the client
                            // sends next (nothing, if it is careful).
                            let mut rest = buf.clone();
                            let mut chunk = [0u8; 1024];
                            if let Ok(Ok(n)) =
                                tokio::time::timeout(Duration::from_secs(2), io.read(&mut chunk))
                                    .await
                            {
                                rest.extend_from_slice(&chunk[..n]);
                            }
                            seen.after_starttls = rest;
                            return None;
                        }
                        let tls = acceptor.accept(io).await.ok()?;
                        io = Box::new(tls);
                        buf.clear();
                        seen.tls = true;
                    }
                    _ => {}
                }
                continue;
            }
            ("DATA", _) => {
                if let Some(r) = scripted {
                    io.write_all(r.as_bytes()).await.ok()?;
                    continue;
                }
                io.write_all(b"354 go ahead\r\n").await.ok()?;
                let mut data = Vec::new();
                loop {
                    let l = line(&mut io, &mut buf).await?;
                    if l == b"." {
                        break;
                    }
                    data.extend_from_slice(&l);
                    data.extend_from_slice(b"\r\n");
                }
                seen.data.push(data);
                script.data_end.to_string()
            }
            ("QUIT", None) => {
                io.write_all(b"221 bye\r\n").await.ok()?;
                return Some(());
            }
            _ => "250 2.0.0 ok\r\n".to_string(),
        };
        io.write_all(reply.as_bytes()).await.ok()?;
    }
}

#[tokio::test]
async fn per_recipient_replies_with_and_without_pipelining() {
    let rcpts = [
        rcpt("unknown@contoso.com"),
        rcpt("busy@contoso.com"),
        rcpt("bob@contoso.com"),
    ];
    let t = txn("alice@fabrikam.com", &rcpts);
    for pipelining in [true, false] {
        let mut script = Script {
            replies: vec![
                ("RCPT TO:<unknown@", "550 5.1.1 no such user\r\n"),
                ("RCPT TO:<busy@", "451 4.2.1 try later\r\n"),
            ],
            ..Script::default()
        };
        if !pipelining {
            script.ehlo.retain(|e| *e != "PIPELINING");
        }
        let server = Scripted::start(script).await;
        let s = settings(TlsLevel::Opportunistic);
        let o = send(server.addr, "scripted", &s, &t, MESSAGE)
            .await
            .expect("outcome");
        assert_eq!(
            dispositions(&o),
            [
                Disposition::Permanent,
                Disposition::Transient,
                Disposition::Delivered
            ]
        );
        assert_eq!(o.per_recipient[0].status, (5, 1, 1));
        assert_eq!(o.per_recipient[0].text, "no such user");
        assert_eq!(o.per_recipient[1].status, (4, 2, 1));
        assert_eq!(o.per_recipient[2].status, (2, 0, 0));
        let seen = &server.seen(1).await[0];
        assert_eq!(seen.pipelined, pipelining, "{seen:?}");
        assert_eq!(seen.data.len(), 1);
        // DSN parameters only when announced; here none were given.
        assert!(
            seen.commands[1].starts_with("MAIL FROM:<alice@fabrikam.com> SIZE="),
            "{seen:?}"
        );
    }
}

#[tokio::test]
async fn dsn_parameters_and_no_data_without_recipients() {
    let rcpts = [Recipient {
        address: "bob@contoso.com".into(),
        orcpt: Some("rfc822;bob@contoso.com".into()),
        notify: Some("SUCCESS,FAILURE".into()),
    }];
    let mut t = txn("alice@fabrikam.com", &rcpts);
    t.ret = Some("HDRS");
    t.envid = Some("QQ+2B1");
    let s = settings(TlsLevel::None);
    let server = Scripted::start(Script::default()).await;
    let o = send(server.addr, "scripted", &s, &t, MESSAGE)
        .await
        .expect("outcome");
    assert!(o.all_delivered());
    let seen = &server.seen(1).await[0];
    assert!(
        seen.commands[1].ends_with(" RET=HDRS ENVID=QQ+2B1"),
        "{seen:?}"
    );
    assert_eq!(
        seen.commands[2],
        "RCPT TO:<bob@contoso.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@contoso.com"
    );

    // Without DSN announced: none of them.
    let script = Script {
        ehlo: vec!["PIPELINING"],
        ..Script::default()
    };
    let server = Scripted::start(script).await;
    send(server.addr, "scripted", &s, &t, MESSAGE)
        .await
        .expect("outcome");
    let seen = &server.seen(1).await[0];
    assert_eq!(seen.commands[1], "MAIL FROM:<alice@fabrikam.com>");
    assert_eq!(seen.commands[2], "RCPT TO:<bob@contoso.com>");

    // Every recipient refused: no data (pipelined: DATA answered 554).
    for pipelining in [true, false] {
        let mut script = Script {
            replies: vec![
                ("RCPT", "550 5.1.1 no\r\n"),
                ("DATA", "554 5.5.1 no valid recipients\r\n"),
            ],
            ..Script::default()
        };
        if !pipelining {
            script.ehlo.retain(|e| *e != "PIPELINING");
        }
        let server = Scripted::start(script).await;
        let o = send(server.addr, "scripted", &s, &t, MESSAGE)
            .await
            .expect("outcome");
        assert_eq!(dispositions(&o), [Disposition::Permanent]);
        assert!(o.failure.is_none(), "{o:?}");
        let seen = &server.seen(1).await[0];
        assert!(seen.data.is_empty());
        assert_eq!(
            seen.commands.iter().any(|c| c == "DATA"),
            pipelining,
            "{seen:?}"
        );
        assert_eq!(seen.commands.last().map(String::as_str), Some("QUIT"));
    }
}

#[tokio::test]
async fn data_refusals_and_final_replies() {
    let rcpts = [rcpt("unknown@contoso.com"), rcpt("bob@contoso.com")];
    let t = txn("alice@fabrikam.com", &rcpts);
    let s = settings(TlsLevel::None);
    for (data, end, want, status) in [
        (
            Some("552 5.3.4 too big for us\r\n"),
            "",
            Disposition::Permanent,
            (5, 3, 4),
        ),
        (
            Some("451 4.3.0 later\r\n"),
            "",
            Disposition::Transient,
            (4, 3, 0),
        ),
        (
            None,
            "554 5.7.1 content rejected\r\n",
            Disposition::Permanent,
            (5, 7, 1),
        ),
        (
            None,
            "452 4.3.1 disk full\r\n",
            Disposition::Transient,
            (4, 3, 1),
        ),
    ] {
        let mut replies = vec![("RCPT TO:<unknown@", "550 5.1.1 no such user\r\n")];
        if let Some(d) = data {
            replies.push(("DATA", d));
        }
        let script = Script {
            replies,
            data_end: if end.is_empty() { "250 ok\r\n" } else { end },
            ..Script::default()
        };
        let server = Scripted::start(script).await;
        let o = send(server.addr, "scripted", &s, &t, MESSAGE)
            .await
            .expect("outcome");
        assert_eq!(dispositions(&o), [Disposition::Permanent, want], "{o:?}");
        assert_eq!(o.per_recipient[0].status, (5, 1, 1));
        assert_eq!(o.per_recipient[1].status, status);
        match data {
            Some(_) => assert!(
                matches!(
                    o.failure,
                    Some(DeliveryError::Refused {
                        stage: Stage::Data,
                        ..
                    })
                ),
                "{o:?}"
            ),
            None => assert!(o.failure.is_none()),
        }
    }
}

#[tokio::test]
async fn refusals_before_recipients_and_local_checks() {
    let rcpts = [rcpt("bob@contoso.com")];
    let t = txn("alice@fabrikam.com", &rcpts);
    let s = settings(TlsLevel::None);

    for (mail, permanent) in [
        ("451 4.7.1 greylisted\r\n", false),
        ("553 5.7.1 no\r\n", true),
    ] {
        let script = Script {
            replies: vec![("MAIL", mail)],
            ..Script::default()
        };
        let server = Scripted::start(script).await;
        let e = send(server.addr, "scripted", &s, &t, MESSAGE)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                DeliveryError::Refused {
                    stage: Stage::Mail,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.is_permanent(), permanent, "{e}");
        let seen = &server.seen(1).await[0];
        assert!(seen.data.is_empty());
    }

    // Greeting 554 and EHLO 421.
    let server = Scripted::start(Script {
        greeting: "554 5.7.1 go away\r\n",
        ..Script::default()
    })
    .await;
    let e = send(server.addr, "scripted", &s, &t, MESSAGE)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            DeliveryError::Refused {
                stage: Stage::Greeting,
                ..
            }
        ) && e.is_permanent(),
        "{e}"
    );
    assert!(e.next_host_may_help());
    let server = Scripted::start(Script {
        ehlo_reply: Some("421 4.3.2 shutting down\r\n"),
        ..Script::default()
    })
    .await;
    let e = send(server.addr, "scripted", &s, &t, MESSAGE)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            DeliveryError::Refused {
                stage: Stage::Ehlo,
                ..
            }
        ) && !e.is_permanent(),
        "{e}"
    );

    // SIZE: refused here, without MAIL.
    let server = Scripted::start(Script {
        ehlo: vec!["PIPELINING", "SIZE 100"],
        ..Script::default()
    })
    .await;
    let e = send(server.addr, "scripted", &s, &t, &[b'a'; 300])
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            DeliveryError::TooBig {
                size: 302,
                limit: 100
            }
        ),
        "{e}"
    );
    assert_eq!(e.status(), (5, 3, 4));
    let seen = &server.seen(1).await[0];
    assert!(
        !seen.commands.iter().any(|c| c.starts_with("MAIL")),
        "{seen:?}"
    );

    // 8-bit content without 8BITMIME, a UTF-8 address without SMTPUTF8.
    let plain = Script {
        ehlo: vec!["PIPELINING"],
        ..Script::default()
    };
    let server = Scripted::start(plain.clone()).await;
    let e = send(
        server.addr,
        "scripted",
        &s,
        &t,
        "Subject: é\r\n\r\nx\r\n".as_bytes(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, DeliveryError::EightBitUnsupported), "{e}");
    assert_eq!(e.status(), (5, 6, 3));
    let utf8 = [rcpt("josé@contoso.com")];
    let server = Scripted::start(plain).await;
    let e = send(server.addr, "scripted", &s, &txn("a@b.c", &utf8), MESSAGE)
        .await
        .unwrap_err();
    assert!(matches!(e, DeliveryError::Utf8Unsupported), "{e}");
    assert_eq!(e.status(), (5, 6, 7));
    // With the extensions: BODY=8BITMIME and SMTPUTF8.
    let server = Scripted::start(Script::default()).await;
    let o = send(
        server.addr,
        "scripted",
        &s,
        &txn("a@b.c", &utf8),
        "Subject: é\r\n\r\nx\r\n".as_bytes(),
    )
    .await
    .expect("outcome");
    assert!(o.all_delivered());
    let seen = &server.seen(1).await[0];
    assert!(
        seen.commands[1].contains(" BODY=8BITMIME") && seen.commands[1].ends_with(" SMTPUTF8"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn exact_wire_form_of_the_content() {
    let rcpts = [rcpt("bob@contoso.com")];
    let t = txn("alice@fabrikam.com", &rcpts);
    let s = settings(TlsLevel::None);
    let server = Scripted::start(Script::default()).await;
    let o = send(server.addr, "scripted", &s, &t, SMUGGLING)
        .await
        .expect("outcome");
    assert!(o.all_delivered());
    let seen = &server.seen(1).await[0];
    assert_eq!(seen.data.len(), 1, "one message");
    let got = &seen.data[0];
    // The server undid nothing: dots are still stuffed in `got`.
    let want: &[u8] =
        b"Subject: smuggling\r\n\r\nhello\r\n..\r\n\r\nMAIL FROM:<evil1@fabrikam.com>\r\n\
RCPT TO:<victim@contoso.com>\r\nDATA\r\nsmuggled 1\r\n..\r\n\
after\r\n\r\n..\r\nMAIL FROM:<evil2@fabrikam.com>\r\nsmuggled 2\r\n..\r\n\
lone\r\nCR and\r\n..\r\nbare LF\r\n..\r\nbare CR dot\r\n..\r\nend\r\n";
    assert_eq!(
        got.escape_ascii().to_string(),
        want.escape_ascii().to_string()
    );
    assert_eq!(seen.commands.last().map(String::as_str), Some("QUIT"));
}

#[tokio::test]
async fn timeouts_and_refused_connections() {
    let rcpts = [rcpt("bob@contoso.com")];
    let t = txn("alice@fabrikam.com", &rcpts);
    let mut s = settings(TlsLevel::None);
    s.timeouts = Timeouts::all(Duration::from_millis(500));
    let server = Scripted::start(Script {
        silent: true,
        ..Script::default()
    })
    .await;
    let started = Instant::now();
    let e = send(server.addr, "scripted", &s, &t, MESSAGE)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            DeliveryError::Timeout {
                stage: Stage::Greeting
            }
        ),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!e.is_permanent() && e.next_host_may_help());

    // No reply to the final dot: the recipients were answered, so an
    // outcome, transient for the accepted one (it may have been taken).
    let two = [rcpt("unknown@contoso.com"), rcpt("bob@contoso.com")];
    let server = Scripted::start(Script {
        replies: vec![("RCPT TO:<unknown@", "550 5.1.1 no such user\r\n")],
        data_end: "",
        ..Script::default()
    })
    .await;
    let o = send(server.addr, "scripted", &s, &txn("a@b.c", &two), MESSAGE)
        .await
        .expect("outcome");
    assert_eq!(
        dispositions(&o),
        [Disposition::Permanent, Disposition::Transient]
    );
    assert!(
        matches!(
            o.failure,
            Some(DeliveryError::Timeout {
                stage: Stage::DataEnd
            })
        ),
        "{o:?}"
    );
    assert_eq!(o.per_recipient[1].status, (4, 4, 2));
    assert!(o.per_recipient[1].reply.is_none());
    assert_eq!(server.seen(1).await[0].data.len(), 1);

    let closed = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let e = send(closed, "nothing", &s, &t, MESSAGE).await.unwrap_err();
    assert!(matches!(e, DeliveryError::Connect { .. }), "{e}");
    assert!(e.next_host_may_help() && !e.is_permanent());
    assert_eq!(e.status(), (4, 4, 1));
}

// ---------------------------------------------------------------------------
// STARTTLS

#[tokio::test]
async fn starttls_response_injection_aborts_before_tls() {
    let server_cert = leaf(&["mx.contoso.com"], None, false);
    let script = Script {
        tls: Some(acceptor(&server_cert, false)),
        starttls: "220 ready\r\n250 injected\r\n",
        ..Script::default()
    };
    let server = Scripted::start(script).await;
    let rcpts = [rcpt("bob@contoso.com")];
    for level in [TlsLevel::Opportunistic, TlsLevel::EncryptionOnly] {
        let e = send(
            server.addr,
            "mx.contoso.com",
            &settings(level),
            &txn("alice@fabrikam.com", &rcpts),
            MESSAGE,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, DeliveryError::Protocol { stage: Stage::StartTls, message } if message.contains("injection")),
            "{e}"
        );
        assert!(!e.is_permanent());
    }
    for seen in server.seen(2).await {
        assert!(
            seen.after_starttls.is_empty(),
            "no handshake and no command on a tainted stream: {:?}",
            seen.after_starttls
        );
    }
}

#[tokio::test]
async fn tls_levels_and_certificates() {
    let org = ca("Contoso Test CA");
    let certs = [
        ("valid", leaf(&["mx.contoso.com"], Some(&org), false)),
        ("wildcard", leaf(&["*.contoso.com"], Some(&org), false)),
        ("expired", leaf(&["mx.contoso.com"], Some(&org), true)),
        ("self-signed", leaf(&["mx.contoso.com"], None, false)),
        ("wrong name", leaf(&["mx.fabrikam.com"], Some(&org), false)),
    ];
    let rcpts = [rcpt("bob@contoso.com")];
    let t = txn("alice@fabrikam.com", &rcpts);
    use TlsLevel as L;
    // (level, tls_name): what each certificate gives; None = delivered.
    let expect = |level: TlsLevel, tls_name: Option<&str>, cert: &str| -> Option<&'static str> {
        match (level, cert) {
            (L::None | L::Opportunistic | L::EncryptionOnly, _) => None,
            (_, "expired") => Some("expired"),
            (_, "self-signed") => Some("unknown issuer"),
            (L::CertificateValidation, _) => None,
            (_, "wrong name") => Some("name does not match"),
            // contoso.com itself: neither mx.contoso.com nor *.contoso.com.
            _ if tls_name == Some("contoso.com") => Some("name does not match"),
            _ => None,
        }
    };
    for (what, cert) in &certs {
        let server = Scripted::start(Script {
            tls: Some(acceptor(cert, false)),
            // Before TLS a SIZE that the message exceeds: only the second
            // list may count.
            ehlo: vec!["SIZE 10"],
            ..Script::default()
        })
        .await;
        let mut connections = 0;
        for (level, tls_name) in [
            (L::None, None),
            (L::Opportunistic, None),
            (L::EncryptionOnly, None),
            (L::CertificateValidation, None),
            (L::DomainValidation, Some("mx.contoso.com")),
            (L::DomainValidation, Some("*.contoso.com")),
            (L::DomainValidation, Some("contoso.com")),
            (L::DomainValidation, None),
        ] {
            let mut s = settings(level);
            s.tls_name = tls_name.map(str::to_string);
            s.roots = roots(&org);
            let r = send(server.addr, "mx.contoso.com", &s, &t, MESSAGE).await;
            connections += 1;
            let ctx = format!("{what} cert, {level}, tls_name {tls_name:?}");
            if level == L::None {
                // The pre-TLS SIZE 10 applies: refused without TLS.
                assert!(
                    matches!(r, Err(DeliveryError::TooBig { limit: 10, .. })),
                    "{ctx}: {r:?}"
                );
                continue;
            }
            match expect(level, tls_name, what) {
                None => {
                    let o = r.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    assert!(o.all_delivered(), "{ctx}: {o:?}");
                    let tls = o.tls.as_ref().expect("TLS");
                    assert_eq!(tls.version, "TLSv1.3", "{ctx}");
                    assert_eq!(o.extensions.size_limit, Some(10_000_000), "{ctx}");
                    assert!(!o.extensions.starttls, "{ctx}");
                }
                Some(why) => {
                    let e = r.expect_err(&ctx);
                    assert!(
                        matches!(&e, DeliveryError::Certificate { reason, .. } if reason.contains(why)),
                        "{ctx}: {e}"
                    );
                    assert!(!e.is_permanent() && e.next_host_may_help(), "{ctx}");
                    assert_eq!(e.status(), (4, 7, 5));
                }
            }
        }
        let seen = server.seen(connections).await;
        let delivered = seen.iter().filter(|s| !s.data.is_empty()).count();
        assert!(seen.iter().filter(|s| !s.data.is_empty()).all(|s| s.tls));
        assert!(delivered >= 2, "{what}");
    }

    // TLS 1.2 only on the server: TLS 1.2 it is.
    let server = Scripted::start(Script {
        tls: Some(acceptor(&certs[0].1, true)),
        ..Script::default()
    })
    .await;
    let mut s = settings(L::DomainValidation);
    s.roots = roots(&org);
    let o = send(server.addr, "mx.contoso.com", &s, &t, MESSAGE)
        .await
        .expect("TLS 1.2");
    assert_eq!(o.tls.expect("TLS").version, "TLSv1.2");

    // No STARTTLS offered: plain when opportunistic, else transient errors.
    let server = Scripted::start(Script::default()).await;
    let o = send(server.addr, "mx", &settings(L::Opportunistic), &t, MESSAGE)
        .await
        .expect("plain");
    assert!(o.all_delivered() && o.tls.is_none());
    for level in [
        L::EncryptionOnly,
        L::CertificateValidation,
        L::DomainValidation,
    ] {
        let e = send(server.addr, "mx", &settings(level), &t, MESSAGE)
            .await
            .unwrap_err();
        assert!(matches!(e, DeliveryError::TlsNotOffered { .. }), "{e}");
        assert!(!e.is_permanent());
    }

    // STARTTLS refused: plain when opportunistic, an error when required.
    let server = Scripted::start(Script {
        tls: Some(acceptor(&certs[0].1, false)),
        starttls: "454 4.7.0 TLS not available\r\n",
        ..Script::default()
    })
    .await;
    let o = send(server.addr, "mx", &settings(L::Opportunistic), &t, MESSAGE)
        .await
        .expect("plain after 454");
    assert!(o.all_delivered() && o.tls.is_none());
    let e = send(server.addr, "mx", &settings(L::EncryptionOnly), &t, MESSAGE)
        .await
        .unwrap_err();
    assert!(matches!(e, DeliveryError::StartTlsRefused { .. }), "{e}");
}

// ---------------------------------------------------------------------------
// Client certificate, verified by smtp-edge's receiving side

#[test]
fn client_certificate_is_presented_to_smtp_edge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let org = ca("Contoso Test CA");
    std::fs::write(d.join("ca.pem"), &org.pem).expect("ca.pem");
    let (server_cert, server_key) =
        leaf(&["edge.contoso.com"], Some(&org), false).write(d, "server");
    let client = leaf(&["relay.contoso.com"], Some(&org), false);
    let port = free_port();
    let config = format!(
        r#"[daemon]
state_dir = "{d}/state"
control_socket = "{d}/control.sock"

[filter]
enabled = false

[smtp]
enabled = true
listen = ["127.0.0.1:{port}"]
hostname = "edge.contoso.com"
accepted_domains = ["contoso.com"]
spool_dir = "{d}/spool"

[smtp.tls]
certificate = "{cert}"
key = "{key}"

[[inbound_connectors]]
name = "partner"
require_tls = true
client_cert_names = ["*.contoso.com"]
client_cert_trust = "{d}/ca.pem"
"#,
        d = d.display(),
        cert = server_cert.display(),
        key = server_key.display(),
    );
    std::fs::write(d.join("smtp-edge.toml"), config).expect("config");
    let daemon = Daemon::start(
        None,
        &d.join("smtp-edge.toml"),
        &d.join("control.sock"),
        &d.join("daemon.log"),
    );
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        assert!(
            Instant::now() < deadline,
            "SMTP not up:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rcpts = [rcpt("bob@contoso.com")];
    let t = txn("app@contoso.com", &rcpts);
    let mut s = settings(TlsLevel::DomainValidation);
    s.tls_name = Some("edge.contoso.com".into());
    s.roots = roots(&org);

    // Without the certificate: MAIL refused, permanent.
    let e = rt
        .block_on(send(addr, "edge.contoso.com", &s, &t, MESSAGE))
        .unwrap_err();
    assert!(
        matches!(&e, DeliveryError::Refused { stage: Stage::Mail, reply } if reply.code == 550),
        "{e}\n{}",
        daemon.log_text()
    );
    assert!(e.is_permanent());

    // With it: delivered, and the server recorded the verified subject.
    s.client_cert = Some(Arc::new(client.identity()));
    let o = rt
        .block_on(send(addr, "edge.contoso.com", &s, &t, MESSAGE))
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log_text()));
    assert!(o.all_delivered(), "{o:?}");
    let tls = o.tls.as_ref().expect("TLS");
    assert!(
        tls.peer_subject
            .as_deref()
            .is_some_and(|p| p.contains("edge.contoso.com")),
        "{tls:?}"
    );
    let incoming = d.join("spool/incoming");
    let ids: Vec<_> = std::fs::read_dir(&incoming)
        .expect("incoming")
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(ids.len(), 1, "{}", daemon.log_text());
    let m = smtp_edge::queue::spool::read_file(&ids[0].path()).expect("spooled");
    let subject = m
        .envelope
        .tls
        .as_ref()
        .and_then(|t| t.client_cert.clone())
        .expect("client certificate recorded");
    assert!(subject.contains("relay.contoso.com"), "{subject}");
    assert!(!subject.contains("not verified"), "{subject}");
    assert_eq!(m.envelope.recipients[0].address, "bob@contoso.com");
    let content = String::from_utf8_lossy(&m.content);
    assert!(content.contains("\r\n.leading dot\r\n"), "{content}");
}
