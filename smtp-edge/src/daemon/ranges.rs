//! The ranges service: checks the web service on its schedule (only while
//! the Exchange Online ranges are in use), lets removed prefixes go on
//! their date, and puts every changed list in force in the gate (by
//! difference: no allowed packet dropped) and in the inbound connectors. A
//! list the gate cannot take is rolled back on disk, so the state file never
//! claims what the kernel does not hold.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::Supervisor;
use crate::allowlist::exchange::Selection;
use crate::ranges::{self, Options, Outcome, Report};
use crate::spool::now;

/// The longest sleep between looks at the schedule (a clock step or a
/// changed configuration is noticed within it).
const MAX_SLEEP: Duration = Duration::from_secs(300);

/// What the service keeps: a wake-up for reloads.
#[derive(Default)]
pub struct RangesService {
    wake: Notify,
}

impl RangesService {
    /// A reload changed the settings: look at the schedule again.
    pub fn poke(&self) {
        self.wake.notify_one();
    }
}

impl Supervisor {
    /// One check now (scheduled, or `smtp-edge ranges update`), applied.
    pub async fn ranges_check(self: &Arc<Self>, opts: Options) -> Result<Report, String> {
        let _apply = self.apply.lock().await;
        let cfg = self.config();
        let state = self.state.clone();
        let before = ranges::load(&state);
        let settings = cfg.ranges.clone();
        let mut report =
            tokio::task::spawn_blocking(move || ranges::check(&state, &settings, opts, now()))
                .await
                .map_err(|e| format!("ranges check task failed: {e}"))?
                .map_err(|e| e.to_string())?;
        if report.allowed_changes()
            && let Err(e) = self.exchange_changed(&before).await
        {
            report.outcome = Outcome::Failed { error: e };
        }
        log(&report, &cfg.ranges);
        // New removal dates or a new schedule: the timer looks again.
        self.ranges.poke();
        Ok(report)
    }

    /// `smtp-edge ranges import` while the daemon runs.
    pub async fn ranges_import(
        self: &Arc<Self>,
        sel: Selection,
        opts: Options,
    ) -> Result<ranges::Changes, String> {
        let _apply = self.apply.lock().await;
        let cfg = self.config();
        let state = self.state.clone();
        let before = ranges::load(&state);
        let settings = cfg.ranges.clone();
        let changes = tokio::task::spawn_blocking(move || {
            ranges::import(&state, &sel, &settings, opts, now())
        })
        .await
        .map_err(|e| format!("ranges import task failed: {e}"))?
        .map_err(|e| e.to_string())?;
        if !opts.dry_run && changes.allowed_changes() {
            self.exchange_changed(&before).await?;
        }
        tracing::info!(
            added = changes.added.len(),
            scheduled = changes.scheduled.len(),
            "Exchange Online ranges imported"
        );
        self.ranges.poke();
        Ok(changes)
    }

    async fn expire_due(self: &Arc<Self>) -> Result<(), String> {
        let _apply = self.apply.lock().await;
        let state = self.state.clone();
        let before = ranges::load(&state);
        let gone = tokio::task::spawn_blocking(move || ranges::expire(&state, now()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if !gone.is_empty() {
            tracing::info!(
                ?gone,
                "Exchange Online prefixes no longer listed: their grace ended"
            );
            self.exchange_changed(&before).await?;
        }
        Ok(())
    }

    /// The list on disk changed: the gate, then the inbound connectors. If
    /// the gate refuses it, `before` goes back on disk and into the gate.
    async fn exchange_changed(
        self: &Arc<Self>,
        before: &ranges::RangesState,
    ) -> Result<(), String> {
        let gate = self.gate.clone();
        let state = self.state.clone();
        let before = before.clone();
        let nets = tokio::task::spawn_blocking(move || {
            let mut g = gate.lock().unwrap_or_else(|p| p.into_inner());
            match g.resync() {
                Ok(()) => Ok(ranges::load(&state).nets()),
                Err(e) => {
                    let _ = state.set_ranges(&before);
                    let _ = g.resync();
                    Err(format!(
                        "the gate could not take the new Exchange Online list ({e}); the previous one stays in force"
                    ))
                }
            }
        })
        .await
        .map_err(|e| e.to_string())??;
        if let Some(r) = &self.receiver {
            r.set_exchange(&nets);
        }
        Ok(())
    }
}

fn log(report: &Report, settings: &crate::config::ranges::Ranges) {
    let summary = report.summary();
    match &report.outcome {
        Outcome::Unchanged => tracing::debug!("Exchange Online ranges: {summary}"),
        Outcome::Updated => tracing::info!("Exchange Online ranges: {summary}"),
        Outcome::Refused { .. } => tracing::warn!("Exchange Online ranges: {summary}"),
        Outcome::Failed { .. } => tracing::error!("Exchange Online ranges: {summary}"),
    }
    if report.stale {
        tracing::warn!(
            stale_after = settings.stale_after,
            "Exchange Online ranges are stale: no successful check for longer than ranges.stale_after"
        );
    }
}

/// The schedule: a check when one is due (automatic updates on and the
/// ranges in use), removals on their date.
pub async fn run(sup: Arc<Supervisor>) {
    loop {
        let cfg = sup.config();
        let state = ranges::load(&sup.state);
        let checking = cfg.ranges.auto_update && cfg.uses_exchange_ranges();
        let t = now();
        if checking && state.next_check <= t {
            if let Err(e) = sup.ranges_check(Options::default()).await {
                tracing::error!("Exchange Online ranges: {e}");
                tokio::time::sleep(Duration::from_secs(cfg.ranges.check_interval.min(60))).await;
            }
            continue;
        }
        if state.next_removal().is_some_and(|at| at <= t) {
            if let Err(e) = sup.expire_due().await {
                tracing::error!("Exchange Online ranges: {e}");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            continue;
        }
        let due = [checking.then_some(state.next_check), state.next_removal()]
            .into_iter()
            .flatten()
            .min();
        let sleep = due.map_or(MAX_SLEEP, |d| {
            Duration::from_secs(d.saturating_sub(t)).min(MAX_SLEEP)
        });
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = sup.ranges.wake.notified() => {}
        }
    }
}
