//! Real peers run as programs: swaks, Python, openssl, with a time limit.

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
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait");
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
    let dir = tempfile::tempdir().expect("tempdir");
    let m = dir.path().join("message");
    std::fs::write(&m, message).expect("message");
    python(
        PY_STARTTLS_SEND,
        &[
            &addr.ip().to_string(),
            &addr.port().to_string(),
            cert_key.0.to_str().expect("path"),
            cert_key.1.to_str().expect("path"),
            from,
            rcpt,
            m.to_str().expect("path"),
        ],
    )
}

const PY_STARTTLS_SEND: &str = r#"
import json, smtplib, ssl, sys
host, port, cert, key, frm, rcpt, path = sys.argv[1:8]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.load_cert_chain(cert, key)
s = smtplib.SMTP(host, int(port), local_hostname="mail.protection.outlook.com", timeout=20)
s.starttls(context=ctx)
s.ehlo("mail.protection.outlook.com")
out = {}
code, text = s.mail(frm)
out["mail"] = [code, text.decode()]
if code == 250:
    code, text = s.rcpt(rcpt)
    out["rcpt"] = [code, text.decode()]
    if code == 250:
        code, text = s.data(open(path, "rb").read())
        out["data"] = [code, text.decode()]
s.quit()
print(json.dumps(out))
"#;
