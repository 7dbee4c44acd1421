//! The control socket: bound 0600, one JSON request per line, each routed to
//! the service that owns its data. Queue commands never wait for the gate;
//! gate commands run on a blocking thread (they write kernel maps).

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{DaemonError, Supervisor};
use crate::ops::control::{self, Request, Response};

/// Binds the control socket so that it is never reachable with a wider mode
/// than 0600, not even for a moment: bound inside a private (0700)
/// directory next to its final path, given its mode there, then renamed
/// into place.
pub fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |message: String| DaemonError::Control {
        path: path.to_path_buf(),
        message,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let private = dir.join(format!(".smtp-edge-bind.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    crate::fsutil::private_dir(&private).map_err(|e| err(e.to_string()))?;
    let staged = private.join("control.sock");
    let bound = UnixListener::bind(&staged)
        .map_err(|e| e.to_string())
        .and_then(|l| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(path);
            std::fs::rename(&staged, path).map_err(|e| e.to_string())?;
            Ok(l)
        });
    let _ = std::fs::remove_dir_all(&private);
    bound.map_err(err)
}

/// Accepts CLI connections until the task is aborted.
pub async fn serve(listener: UnixListener, sup: Arc<Supervisor>) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(stream, sup.clone()));
        }
    }
}

async fn connection(stream: UnixStream, sup: Arc<Supervisor>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match control::parse_request(&line) {
            Ok(req) => match route(&sup, req).await {
                Ok(v) => Response::Ok(v),
                Err(e) => Response::Error(e),
            },
            Err(r) => r,
        };
        let mut out =
            serde_json::to_vec(&response).unwrap_or_else(|_| b"{\"error\":\"encoding\"}".to_vec());
        out.push(b'\n');
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

async fn route(sup: &Arc<Supervisor>, req: Request) -> Result<serde_json::Value, String> {
    match req {
        Request::Reload => sup.reload().await.map(|m| json!({ "message": m })),
        Request::Overview => serde_json::to_value(sup.overview().await).map_err(|e| e.to_string()),
        Request::QueueList
        | Request::QueueShow { .. }
        | Request::QueueFlush { .. }
        | Request::QueueHold { .. }
        | Request::QueueRelease { .. }
        | Request::QueueDelete { .. }
        | Request::QueueBounce { .. } => sup.queue.handle(req).await,
        Request::RangesUpdate { options } => {
            let r = sup.ranges_check(options).await?;
            serde_json::to_value(&r).map_err(|e| e.to_string())
        }
        Request::RangesImport { selection, options } => {
            let c = sup.ranges_import(selection, options).await?;
            serde_json::to_value(&c).map_err(|e| e.to_string())
        }
        Request::AllowAdd { .. }
        | Request::AllowRemove { .. }
        | Request::AllowList
        | Request::Stats
        | Request::Check { .. }
        | Request::Status
        | Request::Detach => {
            let gate = sup.gate.clone();
            tokio::task::spawn_blocking(move || {
                gate.lock().unwrap_or_else(|p| p.into_inner()).handle(req)
            })
            .await
            .unwrap_or_else(|e| Err(format!("internal error: {e}")))
        }
    }
}
