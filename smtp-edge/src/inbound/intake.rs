//! One message's way from the data reader to a durable spool file.
//!
//! The reader's output goes through the header filter ([`crate::smtp::header`])
//! into a buffer; every [`FLUSH_AT`] octets the buffer is handed to a
//! blocking thread that writes it to `tmp/ID` (created at the first flush),
//! so a session holds at most one buffer of its message whatever the
//! message's size, and no file I/O runs on the async workers. At the end,
//! [`Intake::commit`] writes the rest, fsyncs, renames into `incoming/` and
//! fsyncs the directory (shared with concurrent commits) before the caller
//! answers 250. A refused message is dropped as soon as it is known to be
//! refused: nothing more of it is buffered or written.

use std::sync::Arc;

use bytes::BytesMut;

use super::checked::{self, Failure, TenantCheck};
use crate::inbound::submission::send_as::{Fields, HeaderFrom, Mismatch, SendAs};
use crate::inbound::tenant::Verdict;
use crate::queue::spool::{AsStorage, Envelope, Spool, SpoolError, SpoolWriter};
use crate::smtp::header::{HeaderFilter, HeaderStats, Limits, Policy};
use crate::smtp::reply::Reply;
use crate::smtp::trace::Trace;

/// Octets buffered before they are written out.
pub const FLUSH_AT: usize = 64 * 1024;

/// What goes at the top of the spool file once its id is known.
struct Head {
    envelope: Envelope,
    trace: Trace,
    /// Where the message itself begins in the file (after envelope and
    /// trace), once written.
    content_start: u64,
}

/// A message being received.
pub struct Intake {
    spool: Arc<Spool>,
    filter: HeaderFilter,
    buf: BytesMut,
    head: Option<Box<Head>>,
    writer: Option<SpoolWriter>,
    failed: Option<SpoolError>,
    /// The connector's tenant check, if it has one.
    tenant: Option<TenantCheck>,
    /// The device's send-as check (submission), and what it has read.
    send_as: Option<Box<(SendAs, Fields)>>,
    /// The send-as check refused the message (`header_from = "enforce"`).
    foreign: Option<Mismatch>,
}

/// A message on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Its envelope, its queue id set.
    pub envelope: Envelope,
    /// What the header filter saw.
    pub headers: HeaderStats,
    /// The tenant check's verdict (on a connector with tenants).
    pub tenant: Option<Verdict>,
    /// The address of the message's From field, if it has one.
    pub from_header: Option<String>,
    /// A From or Sender field that is not the device's, relayed because
    /// `header_from = "log"`.
    pub send_as: Option<Mismatch>,
}

/// Why a message was not committed: the reply, and a reason for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotCommitted {
    /// What to answer.
    pub reply: Reply,
    /// For the log.
    pub reason: String,
    /// The tenant check's verdict, when it refused the message.
    pub tenant: Option<Verdict>,
}

fn start(spool: &Spool, head: &mut Head) -> Result<SpoolWriter, SpoolError> {
    let mut w = spool.create()?;
    w.write_envelope(&mut head.envelope)?;
    let trace = head.trace.render(w.id());
    w.write(trace.as_bytes())?;
    head.content_start = w.len();
    Ok(w)
}

/// The address in a `From:` line (mail-parser reads the field's syntax).
fn from_address(line: &[u8]) -> Option<String> {
    let mut field = line.to_vec();
    field.extend_from_slice(b"\r\n\r\n");
    let m = mail_parser::MessageParser::new().parse_headers(&field)?;
    let first = m.from()?.first()?;
    first.address().map(str::to_string)
}

fn join_error(e: tokio::task::JoinError) -> SpoolError {
    SpoolError::Io {
        path: "(spool writer task)".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl Intake {
    /// A message with this envelope and trace field; `trusted` keeps the
    /// Exchange-internal header fields. With a `tenant` check every field is
    /// kept while it streams in, and the check decides at the end (see
    /// [`super::checked`]).
    pub fn new(
        spool: Arc<Spool>,
        policy: Arc<Policy>,
        trusted: bool,
        limits: Limits,
        envelope: Envelope,
        trace: Trace,
        tenant: Option<TenantCheck>,
    ) -> Self {
        Intake {
            spool,
            filter: HeaderFilter::new(policy, trusted || tenant.is_some(), limits),
            buf: BytesMut::with_capacity(FLUSH_AT + FLUSH_AT / 4),
            head: Some(Box::new(Head {
                envelope,
                trace,
                content_start: 0,
            })),
            writer: None,
            failed: None,
            tenant,
            send_as: None,
            foreign: None,
        }
    }

    /// The same message from an authenticated device: its From and Sender
    /// fields must be the device's (see [`crate::inbound::submission::send_as`]).
    pub fn with_send_as(mut self, check: SendAs) -> Self {
        self.send_as = Some(Box::new((check, Fields::default())));
        self
    }

    /// Whether the message is already refused (nothing more is kept).
    pub fn is_refused(&self) -> bool {
        self.failed.is_some() || self.filter.error().is_some() || self.foreign.is_some()
    }

    /// Shows the send-as check what the header filter kept since `from` in
    /// the buffer; at the end of the header section, judges (an enforced
    /// refusal stops the message at once).
    fn watch_fields(&mut self, from: usize) {
        let Some(b) = self.send_as.as_deref_mut() else {
            return;
        };
        let (check, fields) = (&b.0, &mut b.1);
        if fields.complete() {
            return;
        }
        fields.feed(&self.buf[from..]);
        if fields.complete()
            && check.mode == HeaderFrom::Enforce
            && let Err(m) = fields.check(&check.device)
        {
            self.foreign = Some(m);
        }
    }

    /// The send-as verdict at the end of the data: a From or Sender field
    /// that is not the device's, with the mode and the device's name.
    fn judge_send_as(&mut self) -> Option<(Mismatch, HeaderFrom, String)> {
        let b = self.send_as.as_deref()?;
        let (check, fields) = (&b.0, &b.1);
        let found = match self.foreign.take() {
            Some(m) => Err(m),
            None => fields.check(&check.device),
        };
        found
            .err()
            .map(|m| (m, check.mode, check.device.name.clone()))
    }

    /// Takes message content from the data reader.
    pub async fn push(&mut self, data: &[u8]) {
        if data.is_empty() || self.is_refused() {
            return;
        }
        let before = self.buf.len();
        self.filter.feed(data, &mut self.buf);
        self.watch_fields(before);
        if self.is_refused() {
            self.abandon().await;
        } else if self.buf.len() >= FLUSH_AT {
            self.flush().await;
        }
    }

    /// Writes the buffer out (creating the file first).
    async fn flush(&mut self) {
        let spool = self.spool.clone();
        let (mut head, writer) = (self.head.take(), self.writer.take());
        let mut chunk = std::mem::take(&mut self.buf);
        let written = tokio::task::spawn_blocking(move || {
            let w = match (writer, head.as_deref_mut()) {
                (Some(w), _) => Ok(w),
                (None, Some(h)) => start(&spool, h),
                (None, None) => Err(SpoolError::Format {
                    path: "(intake)".into(),
                    reason: "no envelope".into(),
                }),
            };
            let r = w.and_then(|mut w| {
                w.write(&chunk)?;
                chunk.clear();
                Ok(w)
            });
            (r, head, chunk)
        })
        .await;
        let written = match written {
            Ok((r, head, chunk)) => {
                self.head = head;
                r.map(|w| (w, chunk))
            }
            Err(e) => Err(join_error(e)),
        };
        match written {
            Ok((w, chunk)) => {
                self.writer = Some(w);
                self.buf = chunk;
            }
            Err(e) => {
                self.spool.health().record(&Err::<(), _>(&e));
                self.failed = Some(e);
                self.buf = BytesMut::new();
            }
        }
    }

    /// Drops what was written (the temporary file is removed off the async
    /// workers) and the buffer.
    async fn abandon(&mut self) {
        self.buf = BytesMut::new();
        if let Some(w) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || drop(w)).await;
        }
    }

    /// The message is refused elsewhere (a data error): removes it.
    pub async fn discard(mut self) {
        self.abandon().await;
    }

    /// The end of the data: judges the last header line, writes the rest
    /// and makes the message durable. Only `Ok` may be answered with 250.
    pub async fn commit(mut self) -> Result<Committed, NotCommitted> {
        let before = self.buf.len();
        let finished = self.filter.finish(&mut self.buf);
        if finished.is_ok() {
            self.watch_fields(before);
        }
        let mut send_as = None;
        if let (Ok(_), Some((m, mode, name))) = (&finished, self.judge_send_as()) {
            if mode == HeaderFrom::Log {
                send_as = Some(m);
            } else {
                tracing::warn!(
                    device = %name,
                    field = m.field,
                    header_from = %m.address,
                    "message refused: the From or Sender field is not one of the device's senders"
                );
                self.abandon().await;
                return Err(NotCommitted {
                    reply: m.reply(&name),
                    reason: format!(
                        "{} {} is not one of device {name}'s senders",
                        m.field, m.address
                    ),
                    tenant: None,
                });
            }
        }
        let headers = match finished {
            Ok(h) => h,
            Err(e) => {
                self.abandon().await;
                return Err(NotCommitted {
                    reply: e.reply(),
                    reason: e.to_string(),
                    tenant: None,
                });
            }
        };
        if self.failed.is_none() {
            let spool = self.spool.clone();
            let (mut head, writer) = (self.head.take(), self.writer.take());
            let chunk = std::mem::take(&mut self.buf);
            let tenant = self.tenant.take();
            let handle = tokio::runtime::Handle::current();
            let done = tokio::task::spawn_blocking(move || {
                let Some(h) = head.as_deref_mut() else {
                    return Err(Failure::Spool(SpoolError::Format {
                        path: "(intake)".into(),
                        reason: "no envelope".into(),
                    }));
                };
                let mut w = match writer {
                    Some(w) => w,
                    None => start(&spool, h)?,
                };
                w.write(&chunk)?;
                let verdict = match &tenant {
                    None => {
                        w.commit()?;
                        None
                    }
                    Some(t) => Some(checked::commit(
                        &spool,
                        (&mut h.envelope, &h.trace),
                        w,
                        h.content_start,
                        t,
                        &handle,
                    )?),
                };
                Ok::<_, Failure>((head, verdict))
            })
            .await;
            let done = done
                .map_err(|e| Failure::Spool(join_error(e)))
                .and_then(|r| r);
            if let Err(Failure::Spool(e)) = &done {
                self.spool.health().record(&Err::<(), _>(e));
            }
            match done {
                Ok((Some(h), tenant)) => {
                    return Ok(Committed {
                        envelope: h.envelope,
                        headers,
                        tenant,
                        from_header: self.filter.from_field().and_then(from_address),
                        send_as,
                    });
                }
                Ok((None, _)) => {}
                Err(Failure::Refused(v)) => {
                    self.abandon().await;
                    return Err(NotCommitted {
                        reply: checked::refusal(&v),
                        reason: v.reason.clone(),
                        tenant: Some(*v),
                    });
                }
                Err(Failure::Spool(e)) => self.failed = Some(e),
            }
        }
        self.abandon().await;
        let e = self.failed.take();
        let storage = e.as_ref().is_some_and(SpoolError::is_storage);
        Err(NotCommitted {
            reply: if storage {
                Reply::insufficient_storage()
            } else {
                Reply::local_error()
            },
            reason: e.map_or_else(|| "spool write failed".into(), |e| e.to_string()),
            tenant: None,
        })
    }
}
