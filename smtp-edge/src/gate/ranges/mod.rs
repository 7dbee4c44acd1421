//! The Exchange Online port-25 ranges that keep themselves current.
//!
//! One check: ask the web service for its version; only when it changed (or
//! the admin forces it) fetch the endpoints, select the Exchange sets with
//! TCP 25 by content, check the list ([`plan::sanity`], the shrink limit,
//! the address-space caps of [`plan::space_check`]),
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

use crate::config::ranges::Ranges;
use crate::gate::allowlist::exchange::Selection;
use crate::state::{StateDir, StateError};
pub use list::{Origin, RangesState};
pub use plan::{Changes, Limits, Refusal, Space};
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
/// updater existed, else the bundled one (a fresh install). A state file
/// that cannot be read is an error, never silently replaced: the kernel
/// keeps what it holds until the file is fixed or removed.
pub fn load(dir: &StateDir) -> Result<RangesState, RangesError> {
    match RangesState::read(dir)? {
        Some(s) => Ok(s),
        None => match dir.read_json::<Selection>(list::LEGACY_FILE)? {
            Some(sel) => Ok(RangesState::from_legacy(&sel, crate::state::now())),
            None => Ok(RangesState::bundled()),
        },
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

/// Whether the service is this host's own (recorded answers in tests and
/// labs): only then may a list hold special-purpose ranges.
pub fn local_service(settings: &Ranges) -> bool {
    let rest = settings
        .service_url
        .split_once("://")
        .map_or("", |(_, r)| r);
    let host = rest.split('/').next().unwrap_or("");
    let host = host
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn limits(settings: &Ranges, opts: Options, strict: bool) -> Limits {
    Limits {
        removal_grace: settings.removal_grace,
        max_shrink: settings.max_shrink,
        accept_shrink: opts.accept_shrink,
        strict,
    }
}

/// What the service said, asked without holding anything.
#[derive(Debug)]
pub enum Fetched {
    /// The version in force (or an older one) is the latest.
    Unchanged {
        /// As published.
        latest: String,
    },
    /// A version refused at an earlier check (not fetched again).
    RefusedBefore {
        /// As published.
        latest: String,
        /// Why it was refused.
        reason: String,
    },
    /// A new list.
    List {
        /// As published.
        latest: String,
        /// The port-25 selection.
        selection: Selection,
    },
    /// The published list holds what a list may not (content, not
    /// transport: not fetched again for this version).
    Unusable {
        /// As published.
        latest: String,
        /// Why.
        reason: String,
    },
    /// The service could not be asked or answered badly.
    Failed {
        /// The version, when that much was read.
        latest: Option<String>,
        /// What went wrong.
        error: ServiceError,
    },
}

/// Asks the service what it publishes, given the list in force (network
/// only: no state is read or written).
pub fn fetch(current: &RangesState, settings: &Ranges, request_id: &str, opts: Options) -> Fetched {
    let svc = match WebService::new(settings, request_id) {
        Ok(s) => s,
        Err(error) => {
            return Fetched::Failed {
                latest: None,
                error,
            };
        }
    };
    let latest = match svc.version() {
        Ok(v) => v,
        Err(error) => {
            return Fetched::Failed {
                latest: None,
                error,
            };
        }
    };
    let in_force = current.version.as_deref();
    // Versions are YYYYMMDDNN: an older one is a flapping answer.
    if !opts.force && in_force.is_some_and(|v| v >= latest.as_str()) {
        if in_force != Some(latest.as_str()) {
            tracing::warn!(
                published = %latest,
                in_force = in_force.unwrap_or(""),
                "the web service answers an older version than the one in force: ignored"
            );
        }
        return Fetched::Unchanged { latest };
    }
    if let Some(r) = current
        .refused
        .as_ref()
        .filter(|r| r.version == latest && !opts.accept_shrink && !opts.force)
    {
        return Fetched::RefusedBefore {
            reason: r.reason.clone(),
            latest,
        };
    }
    match svc.endpoints() {
        Ok(selection) => Fetched::List { latest, selection },
        Err(ServiceError::Selection(reason)) => Fetched::Unusable { latest, reason },
        Err(error) => Fetched::Failed {
            latest: Some(latest),
            error,
        },
    }
}

/// Decides what a fetch means for the list in force and records it (unless
/// a dry run): the next state under the state lock, and the report.
pub fn conclude(
    dir: &StateDir,
    settings: &Ranges,
    opts: Options,
    fetched: Fetched,
    now: u64,
) -> Result<Report, RangesError> {
    let _lock = if opts.dry_run {
        None
    } else {
        Some(dir.lock(list::LOCK_FILE)?)
    };
    let current = load(dir)?;
    let strict = !local_service(settings);
    let mut next = current.clone();
    let mut changes = Changes::default();
    let refuse = |next: &mut RangesState, version: &str, reason: String, kind: &str| {
        next.refused = Some(list::Refused {
            version: version.to_string(),
            reason: reason.clone(),
            kind: Some(kind.to_string()),
        });
        Outcome::Refused { reason }
    };
    let (outcome, latest) = match fetched {
        Fetched::Unchanged { latest } => (Outcome::Unchanged, Some(latest)),
        Fetched::RefusedBefore { latest, reason } => (
            Outcome::Refused {
                reason: format!("version {latest} was refused at its first check: {reason}"),
            },
            Some(latest),
        ),
        Fetched::Unusable { latest, reason } => (
            refuse(&mut next, &latest, reason, "malformed"),
            Some(latest),
        ),
        Fetched::List { latest, selection } => {
            let o = match plan::apply(
                &current,
                &selection,
                Some(&latest),
                Origin::Service,
                now,
                limits(settings, opts, strict),
            ) {
                Ok((applied, ch)) => {
                    next = applied;
                    next.instance = Some(settings.instance.to_string());
                    changes = ch;
                    Outcome::Updated
                }
                Err(refusal) => refuse(&mut next, &latest, refusal.to_string(), refusal.kind()),
            };
            (o, Some(latest))
        }
        Fetched::Failed { latest, error } => {
            next.failures = next.failures.saturating_add(1);
            let delay = backoff(next.failures, settings.check_interval, Some(&error));
            next.next_check = now + delay;
            (
                Outcome::Failed {
                    error: format!("{error}; next attempt in {delay} s"),
                },
                latest,
            )
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
        next.save(dir)?;
    }
    Ok(report)
}

/// Asks the web service and applies what it publishes (see the module
/// documentation): [`fetch`], then [`conclude`]. `now` is Unix seconds.
pub fn check(
    dir: &StateDir,
    settings: &Ranges,
    opts: Options,
    now: u64,
) -> Result<Report, RangesError> {
    let current = load(dir)?;
    let request_id = match opts.dry_run {
        // A dry run writes nothing: a machine without an id yet asks with a
        // throwaway one.
        true => dir
            .peek_request_id()?
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        false => dir.client_request_id()?,
    };
    let fetched = fetch(&current, settings, &request_id, opts);
    conclude(dir, settings, opts, fetched, now)
}

/// Puts `before` back and records why the list that replaced it could not
/// be used (the gate refused it): that version is not fetched again.
pub fn roll_back(
    dir: &StateDir,
    before: &RangesState,
    version: Option<&str>,
    reason: &str,
    settings: &Ranges,
    now: u64,
) -> Result<(), RangesError> {
    let _lock = dir.lock(list::LOCK_FILE)?;
    let mut st = before.clone();
    if let Some(v) = version {
        st.refused = Some(list::Refused {
            version: v.to_string(),
            reason: reason.to_string(),
            kind: Some("gate_full".into()),
        });
    }
    st.next_check = now + settings.check_interval;
    st.last_check = Some(list::CheckRecord {
        at: now,
        ok: false,
        outcome: format!(
            "kept version {}: refused: {reason}",
            st.version.as_deref().unwrap_or("none")
        ),
    });
    st.save(dir)?;
    Ok(())
}

/// Drops the pending removals that are due (the daemon's timer, between
/// checks); returns what went.
pub fn expire(dir: &StateDir, now: u64) -> Result<Vec<String>, RangesError> {
    let _lock = dir.lock(list::LOCK_FILE)?;
    let mut state = load(dir)?;
    let gone = state.expire(now);
    if !gone.is_empty() {
        state.save(dir)?;
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
    let _lock = if opts.dry_run {
        None
    } else {
        Some(dir.lock(list::LOCK_FILE)?)
    };
    let current = load(dir)?;
    let (next, changes) = plan::apply(
        &current,
        sel,
        None,
        Origin::Imported,
        now,
        limits(settings, opts, true),
    )?;
    if !opts.dry_run {
        next.save(dir)?;
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::ranges::http::FetchError;

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
