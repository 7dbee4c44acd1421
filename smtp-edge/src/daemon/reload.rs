//! One reload path for SIGHUP and `smtp-edge reload`, in two steps.
//!
//! *Prepare* reads and validates the file and builds everything that can
//! fail: the server (certificate, key, client trust read again), new
//! listening sockets bound, the queue's configuration (client certificates,
//! CA files, resolver), the gate's checks (interfaces, capacity). A failure
//! here changes nothing. *Commit* puts the gate in force first (restoring the
//! previous configuration if the kernel refuses), then publishes to the
//! receiver, the queue and the ranges service.

use std::sync::Arc;

use super::Supervisor;
use super::queue::queue_config;
use crate::config::Config;

fn refused(e: impl std::fmt::Display) -> String {
    format!("configuration refused, the running one stays in force: {e}")
}

/// Settings that only a restart changes: a reload that changes them is
/// refused (`Err`), or applied with a note (`Ok` notes).
fn restart_only(current: &Config, next: &Config) -> Result<Vec<String>, String> {
    if next.smtp.raw.enabled != current.smtp.raw.enabled
        || (next.smtp.raw.enabled && next.smtp.raw.spool_dir != current.smtp.raw.spool_dir)
    {
        return Err(refused(
            "smtp.enabled and smtp.spool_dir change only with a restart",
        ));
    }
    let mut notes = Vec::new();
    if next.daemon.control_socket != current.daemon.control_socket {
        notes.push("daemon.control_socket");
    }
    if next.daemon.log_format != current.daemon.log_format {
        notes.push("daemon.log_format");
    }
    if next.smtp.raw.fsync != current.smtp.raw.fsync {
        notes.push("smtp.fsync");
    }
    Ok(notes
        .into_iter()
        .map(|n| format!("{n} takes effect at the next restart"))
        .collect())
}

impl Supervisor {
    /// Re-reads the configuration file and puts it in force; a file with
    /// errors, or one any service refuses, changes nothing.
    pub async fn reload(self: &Arc<Self>) -> Result<String, String> {
        let _apply = self.apply.lock().await;
        let current = self.config();
        let path = current.path.clone();
        let next = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| format!("reload task failed: {e}"))?
            .map_err(|e| format!("configuration refused, the running one stays in force:\n{e}"))?;
        for w in &next.warnings {
            tracing::warn!("configuration: {w}");
        }
        let notes = restart_only(&current, &next)?;
        let next = Arc::new(next);

        // Prepare: everything that can fail, nothing in force yet.
        let exchange = crate::gate::ranges::load(&self.state)
            .map_err(refused)?
            .nets();
        let prepared = match &self.receiver {
            Some(r) => Some(r.prepare(&next, &exchange).await.map_err(refused)?),
            None => None,
        };
        let queue = match &self.receiver {
            Some(_) if self.queue.running() || !next.outbound.is_empty() => {
                let n = next.clone();
                Some(
                    tokio::task::spawn_blocking(move || queue_config(&n))
                        .await
                        .map_err(|e| refused(format!("queue task failed: {e}")))?
                        .map_err(refused)?,
                )
            }
            _ => None,
        };
        let metrics = self
            .metrics
            .prepare(next.metrics.listen)
            .await
            .map_err(refused)?;
        let gate = self.gate.clone();
        let n = next.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = gate.lock().unwrap_or_else(|p| p.into_inner());
            g.prepare(&n).map_err(refused)?;
            g.commit(n).map_err(|e| format!("reload failed: {e}"))
        })
        .await
        .map_err(|e| format!("reload task failed: {e}"))??;

        // Commit the others: these cannot fail but for the queue's start.
        if let (Some(r), Some(p)) = (&self.receiver, prepared) {
            r.commit(p);
        }
        self.metrics.commit(next.metrics.listen, metrics);
        self.set_config(next.clone());
        // What the services just loaded: the expiry gauge, `status`, a log
        // line per certificate and its warnings.
        let c = (self.certificates.clone(), next.clone());
        let _ = tokio::task::spawn_blocking(move || c.0.refresh(&c.1)).await;
        self.ranges.poke();
        let mut message = format!("configuration {} applied", next.path.display());
        if let (Some(r), Some(q)) = (&self.receiver, queue)
            && let Err(e) = self.queue.apply(q, r.spool(), &r.queue_slot()).await
        {
            tracing::error!(error = %e, "queue did not start");
            message.push_str(&format!("; but the queue did not start: {e}"));
        }
        for n in notes {
            tracing::warn!("{n}");
            message.push_str(&format!("; {n}"));
        }
        Ok(message)
    }
}
