//! One connection to a next hop: plain or TLS, replies read within their
//! time limits, commands written within theirs.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::error::{DeliveryError, Stage};
use super::reply::{Extensions, Reply, parse_reply};
use super::timeouts::Timeouts;

/// The longest wait for the reply to QUIT (capped by
/// [`Timeouts::command`]).
pub(super) const QUIT_WAIT: Duration = Duration::from_secs(30);

/// The transport of a connection.
pub(super) enum Stream {
    /// Before STARTTLS (or without it).
    Plain(TcpStream),
    /// After the handshake.
    Tls(Box<TlsStream<TcpStream>>),
    /// Closed (or handed to the TLS handshake).
    Closed,
}

/// A connection and what was read from it but not yet parsed.
pub(super) struct Conn {
    /// The transport.
    pub(super) stream: Stream,
    /// Bytes read and not yet parsed.
    pub(super) buf: Vec<u8>,
    /// Time limits.
    pub(super) timeouts: Timeouts,
    /// The server said it is closing the connection (a 421 reply).
    pub(super) closing: bool,
}

impl Conn {
    pub(super) async fn read_some(&mut self, chunk: &mut [u8]) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Plain(s) => s.read(chunk).await,
            Stream::Tls(s) => s.read(chunk).await,
            Stream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    pub(super) async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.stream {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Stream::Closed => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// The next reply, within `limit`.
    pub(super) async fn reply(
        &mut self,
        stage: Stage,
        limit: Duration,
    ) -> Result<Reply, DeliveryError> {
        let read = async {
            let mut chunk = [0u8; 4096];
            loop {
                match parse_reply(&self.buf) {
                    Ok(Some((reply, used))) => {
                        self.buf.drain(..used);
                        self.closing |= reply.code == 421;
                        return Ok(reply);
                    }
                    Ok(None) => {}
                    Err(message) => return Err(DeliveryError::Protocol { stage, message }),
                }
                let n = self
                    .read_some(&mut chunk)
                    .await
                    .map_err(|source| DeliveryError::Connection { stage, source })?;
                if n == 0 {
                    return Err(DeliveryError::Connection {
                        stage,
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed the connection",
                        ),
                    });
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(limit, read)
            .await
            .map_err(|_| DeliveryError::Timeout { stage })?
    }

    /// Writes `bytes` within `limit`.
    pub(super) async fn send(
        &mut self,
        bytes: &[u8],
        stage: Stage,
        limit: Duration,
    ) -> Result<(), DeliveryError> {
        tokio::time::timeout(limit, self.write_raw(bytes))
            .await
            .map_err(|_| DeliveryError::Timeout { stage })?
            .map_err(|source| DeliveryError::Connection { stage, source })
    }

    /// Sends one command line and reads its reply.
    pub(super) async fn command(
        &mut self,
        line: &str,
        stage: Stage,
        limit: Duration,
    ) -> Result<Reply, DeliveryError> {
        self.send(format!("{line}\r\n").as_bytes(), stage, limit)
            .await?;
        self.reply(stage, limit).await
    }

    /// QUIT, waiting briefly for the reply; errors do not matter any more.
    pub(super) async fn quit(&mut self) {
        let limit = self.timeouts.command.min(QUIT_WAIT);
        if self.send(b"QUIT\r\n", Stage::Quit, limit).await.is_ok() {
            let _ = self.reply(Stage::Quit, limit).await;
        }
        self.close().await;
    }

    pub(super) async fn close(&mut self) {
        let limit = self.timeouts.command.min(QUIT_WAIT);
        match &mut self.stream {
            Stream::Plain(s) => {
                let _ = tokio::time::timeout(limit, s.shutdown()).await;
            }
            Stream::Tls(s) => {
                let _ = tokio::time::timeout(limit, s.shutdown()).await;
            }
            Stream::Closed => {}
        }
        self.stream = Stream::Closed;
    }

    /// EHLO, or HELO when EHLO is refused with 5xx.
    pub(super) async fn hello(&mut self, name: &str) -> Result<Extensions, DeliveryError> {
        let limit = self.timeouts.command;
        let reply = self
            .command(&format!("EHLO {name}"), Stage::Ehlo, limit)
            .await?;
        if reply.is_positive() {
            return Ok(Extensions::parse(&reply));
        }
        if !reply.is_permanent() {
            return Err(DeliveryError::Refused {
                stage: Stage::Ehlo,
                reply,
            });
        }
        let reply = self
            .command(&format!("HELO {name}"), Stage::Helo, limit)
            .await?;
        if reply.is_positive() {
            Ok(Extensions::default())
        } else {
            Err(DeliveryError::Refused {
                stage: Stage::Helo,
                reply,
            })
        }
    }
}
