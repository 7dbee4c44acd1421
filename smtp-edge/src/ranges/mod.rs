//! The Exchange Online port-25 ranges that keep themselves current.
//!
//! One check: ask the web service for its version; only when it changed (or
//! the admin forces it) fetch the endpoints, select the Exchange sets with
//! TCP 25 by content, check the list ([`plan::sanity`], the shrink limit),
//! then add new prefixes at once and let removed ones go after a grace
//! period. Any failure keeps the list in force, is recorded with its reason,
//! and the next check comes after a backoff. The state lives in
//! `ranges.json` in the state directory; the daemon (its ranges service)
//! and the CLI (`smtp-edge ranges update` when no daemon runs) share this
//! code, and the daemon applies a changed list by its diff mechanism.
//!
//! - [`list`]: the state and the list in force;
//! - [`plan`]: what an update changes (pure);
//! - [`http`]: the HTTP client (ureq on rustls);
//! - [`service`]: the web service's calls;
//! - [`status`]: what `ranges status`, `update` and `diff` print.

pub mod http;
pub mod list;
pub mod plan;
pub mod service;
pub mod status;

use serde::Serialize;

use crate::allowlist::exchange::Selection;
use crate::config::ranges::Ranges;
use crate::state::{StateDir, StateError};
pub use list::{Origin, RangesState};
pub use plan::{Changes, Limits, Refusal};
use service::{ServiceError, WebService};

/// Errors of the updater itself (not of a check: those are outcomes).
#[derive(Debug, thiserror::Error)]
pub enum RangesError {
    /// The state directory.
    #[error(transparent)]
    State(#[from] StateError),
    /// An imported list that is refused.
    #[error("{0}")]
    Refused(#[from] Refusal),
}

/// How a check is run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct Options {
    /// Decide and report, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Take a list that removes more than `max_shrink`.
    #[serde(default)]
    pub accept_shrink: bool,
    /// Fetch the endpoints even when the version did not change.
    #[serde(default)]
    pub force: bool,
}

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Outcome {
    /// The published version is the one in force.
    Unchanged,
    /// A new version is in force.
    Updated,
    /// The published list was not taken.
    Refused {
        /// Why.
        reason: String,
    },
    /// The service could not be asked or answered badly.
    Failed {
        /// Why.
        error: String,
    },
}

/// What a check did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Report {
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// What changed in the list (or would, on a dry run).
    pub changes: Changes,
    /// The version published, when it could be read.
    pub latest: Option<String>,
    /// The version in force afterwards.
    pub version: Option<String>,
    /// When the next scheduled check is due.
    pub next_check: u64,
    /// No successful check for longer than `stale_after`.
    pub stale: bool,
    /// Nothing was written.
    pub dry_run: bool,
}

impl Report {
    /// One line for the log and the CLI.
    pub fn summary(&self) -> String {
        let c = &self.changes;
        let counts = format!(
            "{} added, {} to be removed after the grace period, {} restored, {} removed",
            c.added.len(),
            c.scheduled.len(),
            c.restored.len(),
            c.expired.len()
        );
        let version = self.version.as_deref().unwrap_or("none");
        match &self.outcome {
            Outcome::Unchanged if c.is_empty() => format!("version {version} is current"),
            Outcome::Unchanged => format!("version {version} is current; {counts}"),
            Outcome::Updated => format!(
                "version {} {}: {counts}",
                self.latest.as_deref().unwrap_or("?"),
                if self.dry_run {
                    "would be taken"
                } else {
                    "in force"
                }
            ),
            Outcome::Refused { reason } => {
                format!("kept version {version}: refused: {reason}")
            }
            Outcome::Failed { error } => format!("kept version {version}: {error}"),
        }
    }

    /// Whether the set of allowed prefixes changed (the kernel and the
    /// inbound connectors must follow).
    pub fn allowed_changes(&self) -> bool {
        !self.dry_run && self.changes.allowed_changes()
    }
}

/// The list in force: the state file, else a list imported before the
/// updater existed, else the bundled one. A state file that cannot be read
/// is reported and replaced by the bundled list, so the gate never starts
/// without the Exchange Online ranges.
pub fn load(dir: &StateDir) -> RangesState {
    match dir.ranges() {
        Ok(Some(s)) => s,
        Ok(None) => match dir.exchange() {
            Ok(Some(sel)) => RangesState::from_legacy(&sel, crate::spool::now()),
            _ => RangesState::bundled(),
        },
        Err(e) => {
            tracing::error!(error = %e, "Exchange Online ranges state unreadable: using the bundled list until the next successful check");
            RangesState::bundled()
        }
    }
}

/// Seconds to wait after `failures` failed checks in a row: 1, 2, 4 …
/// minutes, never longer than the check interval, at least what the server
/// asked for, and a full interval after a 429.
pub fn backoff(failures: u32, interval: u64, error: Option<&ServiceError>) -> u64 {
    let exp = 60u64.saturating_mul(1 << failures.saturating_sub(1).min(20));
    let mut delay = exp.min(interval).max(1);
    if let Some(f) = error.and_then(ServiceError::fetch) {
        if f.throttled() {
            delay = delay.max(interval);
        }
        if let Some(s) = f.retry_after() {
            delay = delay.max(s.min(86_400));
        }
    }
    delay
}

fn limits(settings: &Ranges, opts: Options) -> Limits {
    Limits {
        removal_grace: settings.removal_grace,
        max_shrink: settings.max_shrink,
        accept_shrink: opts.accept_shrink,
    }
}

/// Asks the web service and applies what it publishes (see the module
/// documentation). `now` is Unix seconds.
pub fn check(
    dir: &StateDir,
    settings: &Ranges,
    opts: Options,
    now: u64,
) -> Result<Report, RangesError> {
    let current = load(dir);
    let request_id = dir.client_request_id()?;
    let mut latest = None;
    let result = WebService::new(settings, &request_id).and_then(|svc| {
        let v = svc.version()?;
        latest = Some(v.clone());
        let refused_before = current
            .refused
            .as_ref()
            .filter(|r| r.version == v && !opts.accept_shrink);
        if current.version.as_deref() == Some(v.as_str()) && !opts.force {
            return Ok(None);
        }
        if let Some(r) = refused_before.filter(|_| !opts.force) {
            return Ok(Some(Err(format!(
                "version {v} was refused at its first check: {}",
                r.reason
            ))));
        }
        let sel: Selection = svc.endpoints()?;
        Ok(Some(Ok(sel)))
    });
    let mut next = current.clone();
    let mut changes = Changes::default();
    let outcome = match result {
        Ok(None) => Outcome::Unchanged,
        Ok(Some(Err(reason))) => Outcome::Refused { reason },
        Ok(Some(Ok(sel))) => {
            let v = latest.as_deref();
            match plan::apply(
                &current,
                &sel,
                v,
                Origin::Service,
                now,
                limits(settings, opts),
            ) {
                Ok((applied, ch)) => {
                    next = applied;
                    next.instance = Some(settings.instance.to_string());
                    changes = ch;
                    Outcome::Updated
                }
                Err(refusal) => {
                    next.refused = latest.clone().map(|version| list::Refused {
                        version,
                        reason: refusal.to_string(),
                    });
                    Outcome::Refused {
                        reason: refusal.to_string(),
                    }
                }
            }
        }
        Err(e) => {
            next.failures = next.failures.saturating_add(1);
            let delay = backoff(next.failures, settings.check_interval, Some(&e));
            next.next_check = now + delay;
            Outcome::Failed {
                error: format!("{e}; next attempt in {delay} s"),
            }
        }
    };
    // Removals whose grace ended go whatever the service said.
    changes.expired.extend(next.expire(now));
    match &outcome {
        Outcome::Unchanged | Outcome::Updated => {
            next.failures = 0;
            next.last_success = Some(now);
            next.next_check = now + settings.check_interval;
            if matches!(outcome, Outcome::Updated) {
                next.refused = None;
            }
        }
        Outcome::Refused { .. } => {
            next.failures = 0;
            next.next_check = now + settings.check_interval;
        }
        Outcome::Failed { .. } => {}
    }
    let report = Report {
        changes,
        latest,
        version: next.version.clone(),
        next_check: next.next_check,
        stale: next.stale(now, settings.stale_after),
        dry_run: opts.dry_run,
        outcome,
    };
    next.last_check = Some(list::CheckRecord {
        at: now,
        ok: matches!(report.outcome, Outcome::Unchanged | Outcome::Updated),
        outcome: report.summary(),
    });
    if !opts.dry_run {
        dir.set_ranges(&next)?;
    }
    Ok(report)
}

/// Drops the pending removals that are due (the daemon's timer, between
/// checks); returns what went.
pub fn expire(dir: &StateDir, now: u64) -> Result<Vec<String>, RangesError> {
    let mut state = load(dir);
    let gone = state.expire(now);
    if !gone.is_empty() {
        dir.set_ranges(&state)?;
    }
    Ok(gone)
}

/// Takes a saved endpoints answer as the list in force (`ranges import`),
/// with the same checks, grace and shrink limit as an update.
pub fn import(
    dir: &StateDir,
    sel: &Selection,
    settings: &Ranges,
    opts: Options,
    now: u64,
) -> Result<Changes, RangesError> {
    let current = load(dir);
    let (next, changes) = plan::apply(
        &current,
        sel,
        None,
        Origin::Imported,
        now,
        limits(settings, opts),
    )?;
    if !opts.dry_run {
        dir.set_ranges(&next)?;
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranges::http::FetchError;

    #[test]
    fn backoff_grows_and_respects_the_server() {
        assert_eq!(backoff(1, 3600, None), 60);
        assert_eq!(backoff(2, 3600, None), 120);
        assert_eq!(backoff(3, 3600, None), 240);
        assert_eq!(backoff(30, 3600, None), 3600);
        assert_eq!(backoff(1, 5, None), 5);
        let throttled = ServiceError::Fetch(FetchError::Status {
            url: "u".into(),
            status: 429,
            retry_after: None,
        });
        assert_eq!(backoff(1, 3600, Some(&throttled)), 3600);
        let later = ServiceError::Fetch(FetchError::Status {
            url: "u".into(),
            status: 503,
            retry_after: Some(900),
        });
        assert_eq!(backoff(1, 3600, Some(&later)), 900);
    }
}
