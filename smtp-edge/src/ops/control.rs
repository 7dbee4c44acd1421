//! The control socket between the `smtp-edge` CLI and the running daemon: one
//! JSON request per line, one JSON response per line, over a Unix socket that
//! only root (the socket's owner) can open.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A request from the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Add an allowlist entry.
    AllowAdd {
        /// Address, CIDR, address/mask or range.
        source: String,
        /// Comment.
        comment: String,
    },
    /// Remove an entry added with the CLI.
    AllowRemove {
        /// Any spelling of the entry.
        source: String,
    },
    /// List all entries with hits.
    AllowList,
    /// Verdict for an address and port.
    Check {
        /// Source address.
        address: IpAddr,
        /// Destination port.
        port: u16,
    },
    /// Counters.
    Stats,
    /// Gate status.
    Status,
    /// Every service on one screen (`smtp-edge status`).
    Overview,
    /// Re-read the configuration file.
    Reload,
    /// Remove the gate from every interface.
    Detach,
    /// The queue.
    QueueList,
    /// One queued message.
    QueueShow {
        /// Queue id.
        id: String,
    },
    /// Retry now (all messages without an id).
    QueueFlush {
        /// Queue id.
        id: Option<String>,
    },
    /// Stop trying a message until released.
    QueueHold {
        /// Queue id.
        id: String,
    },
    /// Undo a hold.
    QueueRelease {
        /// Queue id.
        id: String,
    },
    /// Remove a message without a DSN.
    QueueDelete {
        /// Queue id.
        id: String,
    },
    /// Fail a message now; the sender gets a DSN.
    QueueBounce {
        /// Queue id.
        id: String,
    },
    /// Check the web service for new Exchange Online ranges now.
    RangesUpdate {
        /// Dry run, accept a shrink, force a fetch.
        #[serde(default)]
        options: crate::gate::ranges::Options,
    },
    /// Take a saved endpoints answer as the Exchange Online list.
    RangesImport {
        /// The selection from the file.
        selection: crate::gate::allowlist::exchange::Selection,
        /// Dry run, accept a shrink.
        #[serde(default)]
        options: crate::gate::ranges::Options,
    },
}

/// The daemon's answer: a JSON value on success, a message on failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    /// Success, with a command-specific payload.
    Ok(serde_json::Value),
    /// Failure, with a message for the admin.
    Error(String),
}

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nobody listens on the socket.
    #[error("the daemon is not running (no answer on {0})")]
    NotRunning(String),
    /// Transport failure.
    #[error("control socket {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Garbled answer.
    #[error("control socket {path}: bad answer: {source}")]
    Protocol {
        /// Socket path.
        path: String,
        /// Cause.
        source: serde_json::Error,
    },
}

/// Sends one request and waits for the answer (blocking; used by the CLI).
pub fn call(socket: &Path, req: &Request) -> Result<Response, ControlError> {
    let shown = socket.display().to_string();
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning(shown));
        }
        Err(source) => {
            return Err(ControlError::Io {
                path: shown,
                source,
            });
        }
    };
    let io = |source| ControlError::Io {
        path: shown.clone(),
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|source| ControlError::Protocol {
        path: shown.clone(),
        source,
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|source| ControlError::Protocol {
        path: shown.clone(),
        source,
    })
}

/// Parses one request line; a malformed line gets an error response.
pub fn parse_request(line: &str) -> Result<Request, Response> {
    serde_json::from_str(line).map_err(|e| Response::Error(format!("bad request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let r = Request::Check {
            address: "192.0.2.1".parse().unwrap(),
            port: 25,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"cmd":"check","address":"192.0.2.1","port":25}"#);
        assert_eq!(parse_request(&text).unwrap(), r);
        assert!(matches!(
            parse_request("{\"cmd\":\"nope\"}"),
            Err(Response::Error(_))
        ));
    }

    #[test]
    fn no_daemon_is_reported_as_not_running() {
        let e = call(Path::new("/nonexistent/control.sock"), &Request::Stats).unwrap_err();
        assert!(matches!(e, ControlError::NotRunning(_)));
    }
}
