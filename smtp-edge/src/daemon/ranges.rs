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
use crate::gate::allowlist::exchange::Selection;
use crate::gate::ranges::{self, Options, Outcome, Report};
use crate::queue::spool::now;

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
    /// One check now (scheduled, or `smtp-edge ranges update`), applied. The
    /// web service is asked without holding anything; only deciding,
    /// writing and applying run under the apply lock (a slow service never
    /// holds up a reload).
    pub async fn ranges_check(self: &Arc<Self>, opts: Options) -> Result<Report, String> {
        let cfg = self.config();
        let state = self.state.clone();
        let settings = cfg.ranges.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            let current = ranges::load(&state)?;
            let id = match opts.dry_run {
                true => state
                    .peek_request_id()?
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                false => state.client_request_id()?,
            };
            Ok::<_, ranges::RangesError>(ranges::fetch(&current, &settings, &id, opts))
        })
        .await
        .map_err(|e| format!("ranges check task failed: {e}"))?
        .map_err(|e| e.to_string())?;
        let _apply = self.apply.lock().await;
        let state = self.state.clone();
        let settings = cfg.ranges.clone();
        let (before, mut report) = tokio::task::spawn_blocking(move || {
            let before = ranges::load(&state)?;
            let report = ranges::conclude(&state, &settings, opts, fetched, now())?;
            Ok::<_, ranges::RangesError>((before, report))
        })
        .await
        .map_err(|e| format!("ranges check task failed: {e}"))?
        .map_err(|e| e.to_string())?;
        if report.allowed_changes()
            && let Err(e) = self.exchange_changed(&before).await
        {
            // The gate refused it: the previous list is back on disk and in
            // the kernel, and this version is not fetched again.
            let (state, settings) = (self.state.clone(), cfg.ranges.clone());
            let version = report.latest.clone();
            let reason = e.clone();
            let _ = tokio::task::spawn_blocking(move || {
                ranges::roll_back(
                    &state,
                    &before,
                    version.as_deref(),
                    &reason,
                    &settings,
                    now(),
                )
            })
            .await;
            report.outcome = Outcome::Refused { reason: e };
            report.changes = ranges::Changes::default();
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
        let settings = cfg.ranges.clone();
        let (before, changes) = tokio::task::spawn_blocking(move || {
            let before = ranges::load(&state)?;
            let changes = ranges::import(&state, &sel, &settings, opts, now())?;
            Ok::<_, ranges::RangesError>((before, changes))
        })
        .await
        .map_err(|e| format!("ranges import task failed: {e}"))?
        .map_err(|e| e.to_string())?;
        if !opts.dry_run
            && changes.allowed_changes()
            && let Err(e) = self.exchange_changed(&before).await
        {
            let (state, settings) = (self.state.clone(), cfg.ranges.clone());
            let reason = e.clone();
            let _ = tokio::task::spawn_blocking(move || {
                ranges::roll_back(&state, &before, None, &reason, &settings, now())
            })
            .await;
            return Err(e);
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
        let (before, gone) = tokio::task::spawn_blocking(move || {
            let before = ranges::load(&state)?;
            let gone = ranges::expire(&state, now())?;
            Ok::<_, ranges::RangesError>((before, gone))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        if !gone.is_empty() {
            tracing::info!(
                ?gone,
                "Exchange Online prefixes no longer listed: their grace ended"
            );
            if let Err(e) = self.exchange_changed(&before).await {
                // Removing can only shrink the kernel's tables; put the
                // list back and say so (the next look retries).
                let state = self.state.clone();
                let _ = tokio::task::spawn_blocking(move || before.save(&state)).await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// The list on disk changed: the gate, then the inbound connectors. If
    /// the gate refuses it, the gate is given `before` again (the caller
    /// puts `before` back on disk).
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
                Ok(()) => ranges::load(&state).map(|l| l.nets()).map_err(|e| e.to_string()),
                Err(e) => {
                    if let Err(w) = before.save(&state) {
                        tracing::error!(error = %w, "could not put the previous Exchange Online list back on disk");
                    }
                    if let Err(r) = g.resync() {
                        tracing::error!(error = %r, "the gate could not take the previous list back either");
                    }
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
        let state = match ranges::load(&sup.state) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("Exchange Online ranges: {e}");
                tokio::time::sleep(MAX_SLEEP).await;
                continue;
            }
        };
        let checking = cfg.ranges.auto_update && cfg.uses_exchange_ranges();
        let t = now();
        // A next check far in the future means the clock moved back: due.
        let horizon = t.saturating_add(cfg.ranges.check_interval.max(86_400));
        let next_check = if state.next_check > horizon {
            t
        } else {
            state.next_check
        };
        if checking && next_check <= t {
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
        let due = [checking.then_some(next_check), state.next_removal()]
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
