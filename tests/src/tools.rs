//! Real peers run as programs: swaks, Python, openssl, gnutls-cli, with a
//! time limit.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

/// What a program said.
pub struct Tool {
    /// It exited with 0.
    pub ok: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Tool {
    /// Both outputs.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs `program` (at most 60 s) with `input` on its standard input.
pub fn run_tool(program: &str, args: &[&str], input: &[u8]) -> Tool {
    run(program, args, input, false)
}

/// Runs `program` (at most 60 s) with `input` on its standard input, which
/// stays open until the program exits: for clients that end the session as
/// soon as their input ends (gnutls-cli), before the server has answered.
/// A scripted SMTP session ends with QUIT, so the server closes first.
pub fn run_session(program: &str, args: &[&str], input: &[u8]) -> Tool {
    run(program, args, input, true)
}

fn run(program: &str, args: &[&str], input: &[u8], hold_stdin: bool) -> Tool {
    let mut child = Command::new("timeout")
        .args(["-k", "5", "60", program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let (done, exited) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
        let _ = stdin.flush();
        if hold_stdin {
            // Closed (dropped) once the program exited, or after the time limit.
            let _ = exited.recv_timeout(std::time::Duration::from_secs(70));
        }
    });
    let out = child.wait_with_output().expect("wait");
    let _ = done.send(());
    let _ = writer.join();
    Tool {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// swaks to 127.0.0.1:`port` (swaks' IPv6 needs IO::Socket::INET6).
pub fn swaks(port: u16, args: &[&str]) -> Tool {
    let port = port.to_string();
    let mut all = vec![
        "--server",
        "127.0.0.1",
        "--port",
        &port,
        "--timeout",
        "15",
        "--helo",
        "client.contoso.com",
    ];
    all.extend_from_slice(args);
    let t = run_tool("swaks", &all, b"");
    assert!(
        !t.all().contains("requires Net::SSLeay"),
        "swaks cannot do TLS here: install libnet-ssleay-perl\n{}",
        t.all()
    );
    t
}

/// In a swaks transcript, the server's reply to the first command that
/// starts with `verb` (e.g. "MAIL FROM").
pub fn swaks_reply(transcript: &str, verb: &str) -> Option<String> {
    let mut lines = transcript.lines();
    lines.by_ref().find(|l| {
        l.contains("> ")
            && l.trim_start_matches([' ', '-', '~', '*', '>'])
                .starts_with(verb)
    })?;
    lines.find(|l| l.starts_with('<')).map(|l| {
        l.trim_start_matches(|c: char| !c.is_ascii_digit())
            .to_string()
    })
}

/// Runs a Python script; its last output line as JSON.
pub fn python(script: &str, args: &[&str]) -> Value {
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    let t = run_tool("python3", &all, b"");
    assert!(t.ok, "python3 failed:\n{}", t.all());
    let last = t.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("python output {last:?}: {e}"))
}

/// One SMTP transaction for [`smtp_send`].
pub struct Send<'a> {
    /// Where to.
    pub addr: std::net::SocketAddr,
    /// The address to send from (`None`: the system's choice).
    pub source: Option<std::net::IpAddr>,
    /// STARTTLS, presenting this certificate and key (`Some((None))`:
    /// STARTTLS without a certificate).
    pub starttls: Option<Option<(&'a std::path::Path, &'a std::path::Path)>>,
    /// The EHLO name.
    pub ehlo: &'a str,
    /// The envelope sender.
    pub from: &'a str,
    /// The recipients.
    pub rcpts: &'a [&'a str],
    /// The message (CRLF line ends).
    pub message: &'a [u8],
    /// Seconds for the connection and each reply.
    pub timeout: u64,
    /// Log in first (smtplib's `login()`, SMTP AUTH).
    pub login: Option<(&'a str, &'a str)>,
    /// TLS from the first byte (port 465) instead of STARTTLS.
    pub implicit_tls: bool,
}

/// Sends one message with Python's smtplib (in the caller's network
/// namespace): `{"connect": …, "mail": [code, text], "rcpt": [[code,
/// text]…], "data": [code, text]}` for the steps it reached, or `{"error":
/// "…"}` (a timeout: no answer at all).
pub fn smtp_send(s: &Send<'_>) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = dir.path().join("message");
    std::fs::write(&m, s.message).expect("message");
    let (tls, cert, key) = match s.starttls {
        None => ("none", String::new(), String::new()),
        Some(None) => ("starttls", String::new(), String::new()),
        Some(Some((c, k))) => (
            "starttls",
            c.to_str().expect("path").to_string(),
            k.to_str().expect("path").to_string(),
        ),
    };
    let source = s.source.map(|ip| ip.to_string()).unwrap_or_default();
    let rcpts = s.rcpts.join(",");
    let (user, password) = s.login.unwrap_or(("", ""));
    let tls = if s.implicit_tls { "implicit" } else { tls };
    python(
        PY_SEND,
        &[
            &s.addr.ip().to_string(),
            &s.addr.port().to_string(),
            &source,
            tls,
            &cert,
            &key,
            s.ehlo,
            s.from,
            &rcpts,
            m.to_str().expect("path"),
            &s.timeout.to_string(),
            user,
            password,
        ],
    )
}

/// Sends one message over STARTTLS with a client certificate (Python's
/// smtplib): `{"mail": [code, text], "rcpt": …, "data": …}` for the steps
/// it reached.
pub fn starttls_send(
    addr: std::net::SocketAddr,
    cert_key: (&std::path::Path, &std::path::Path),
    from: &str,
    rcpt: &str,
    message: &[u8],
) -> Value {
    let mut v = smtp_send(&Send {
        addr,
        source: None,
        starttls: Some(Some(cert_key)),
        ehlo: "mail.protection.outlook.com",
        from,
        rcpts: &[rcpt],
        message,
        timeout: 20,
        login: None,
        implicit_tls: false,
    });
    // One recipient: its reply as a pair.
    if let Some(r) = v["rcpt"].get(0).cloned() {
        v["rcpt"] = r;
    }
    v
}

const PY_SEND: &str = r#"
import json, smtplib, socket, ssl, sys
host, port, source, tls, cert, key, ehlo, frm, rcpts, path, timeout, user, password = sys.argv[1:14]
out = {}
try:
    src = (source, 0) if source else None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    if tls == "implicit":
        s = smtplib.SMTP_SSL(host, int(port), local_hostname=ehlo, timeout=float(timeout), source_address=src, context=ctx)
    else:
        s = smtplib.SMTP(host, int(port), local_hostname=ehlo, timeout=float(timeout), source_address=src)
    out["connect"] = True
    if tls == "starttls":
        code, text = s.starttls(context=ctx)
        out["starttls"] = [code, text.decode()]
    s.ehlo(ehlo)
    out["ehlo"] = s.ehlo_resp.decode() if s.ehlo_resp else ""
    if user:
        try:
            code, text = s.login(user, password)
            out["auth"] = [code, text.decode()]
        except smtplib.SMTPAuthenticationError as e:
            out["auth"] = [e.smtp_code, e.smtp_error.decode()]
        except smtplib.SMTPNotSupportedError as e:
            out["auth"] = [0, str(e)]
        if out["auth"][0] != 235:
            print(json.dumps(out))
            sys.exit(0)
    code, text = s.mail(frm)
    out["mail"] = [code, text.decode()]
    if code == 250:
        ok = 0
        out["rcpt"] = []
        for r in rcpts.split(","):
            code, text = s.rcpt(r)
            out["rcpt"].append([code, text.decode()])
            ok += code in (250, 251)
        if ok:
            code, text = s.data(open(path, "rb").read())
            out["data"] = [code, text.decode()]
    try:
        s.quit()
    except Exception:
        pass
except (smtplib.SMTPException, OSError) as e:
    out["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"#;
