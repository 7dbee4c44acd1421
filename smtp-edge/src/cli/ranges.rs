//! `smtp-edge ranges …`: the Exchange Online ranges (update, diff, status,
//! import, list), through the daemon or on its state directory when it is down.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;

use smtp_edge::gate::allowlist::exchange;
use smtp_edge::ops::control::Request;

use super::gate::fits_the_gate;
use super::{ask, load_config, print_json, state_dir};
use crate::Cli;

/// `smtp-edge ranges …`: the Exchange Online ranges.
#[derive(Subcommand)]
pub(crate) enum RangesCmd {
    /// Ask Microsoft's endpoints web service now: version first, the list
    /// only when it changed; additions at once, removals after
    /// ranges.removal_grace.
    Update {
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Take a list that removes more than ranges.max_shrink.
        #[arg(long)]
        accept_shrink: bool,
        /// Fetch the list even when the version did not change.
        #[arg(long)]
        force: bool,
    },
    /// What an update would add and remove (the published list against the
    /// one in force, whatever the version).
    Diff,
    /// Instance, version in force, last check, pending removals, request id.
    Status,
    /// Take a saved endpoints web-service answer (JSON) as the list in force,
    /// with the same checks, grace and shrink limit as an update.
    Import {
        /// The saved answer of {service_url}/endpoints/Worldwide?ClientRequestId=GUID
        file: PathBuf,
        /// Only show the selection and what would change.
        #[arg(long)]
        dry_run: bool,
        /// Take a list that removes more than ranges.max_shrink.
        #[arg(long)]
        accept_shrink: bool,
    },
    /// The Exchange Online entries of the gate.
    List,
}

pub(super) fn ranges(cli: &Cli, cmd: &RangesCmd) -> Result<()> {
    use smtp_edge::gate::ranges::{self, Options, status};
    let cfg = load_config(&cli.config)?;
    let now = smtp_edge::queue::spool::now();
    let update = |options: Options| -> Result<ranges::Report> {
        if let Some(v) = ask(&cfg, &Request::RangesUpdate { options })? {
            return Ok(serde_json::from_value(v)?);
        }
        let dir = state_dir(&cfg)?;
        let before = ranges::load(&dir)?;
        let mut r = ranges::check(&dir, &cfg.ranges, options, now)?;
        if !options.dry_run && r.changes.allowed_changes() {
            // What the daemon would do at its start: the gate must hold it.
            if let Err(e) = fits_the_gate(&cfg, &dir) {
                ranges::roll_back(&dir, &before, r.latest.as_deref(), &e, &cfg.ranges, now)?;
                r.outcome = ranges::Outcome::Refused { reason: e };
                r.changes = ranges::Changes::default();
            } else {
                eprintln!("the daemon is not running: the new list takes effect when it starts");
            }
        }
        Ok(r)
    };
    match cmd {
        RangesCmd::Update {
            dry_run,
            accept_shrink,
            force,
        } => {
            let r = update(Options {
                dry_run: *dry_run,
                accept_shrink: *accept_shrink,
                force: *force,
            })?;
            if cli.json {
                print_json(&r)?;
            } else {
                print!("{}", status::render_report(&r));
            }
            match r.outcome {
                ranges::Outcome::Refused { .. } | ranges::Outcome::Failed { .. } => {
                    std::process::exit(2)
                }
                _ => Ok(()),
            }
        }
        RangesCmd::Diff => {
            let r = update(Options {
                dry_run: true,
                accept_shrink: true,
                force: true,
            })?;
            if cli.json {
                return print_json(&r);
            }
            match &r.outcome {
                ranges::Outcome::Failed { error } => bail!("{error}"),
                ranges::Outcome::Refused { reason } => {
                    bail!("the published list would be refused: {reason}")
                }
                _ => {}
            }
            let text = status::render_changes(&r.changes);
            if text.is_empty() {
                println!(
                    "no difference: the published list (version {}) is the one in force",
                    r.latest.as_deref().unwrap_or("?")
                );
            } else {
                print!("{text}");
            }
            Ok(())
        }
        RangesCmd::Status => {
            let dir = state_dir(&cfg)?;
            let s = status::Status::new(
                &ranges::load(&dir)?,
                &cfg.ranges,
                cfg.uses_exchange_ranges(),
                dir.peek_request_id()?
                    .unwrap_or_else(|| "(none yet: made at the first check)".into()),
                now,
            );
            if cli.json {
                print_json(&s)
            } else {
                print!("{}", s.render());
                Ok(())
            }
        }
        RangesCmd::Import {
            file,
            dry_run,
            accept_shrink,
        } => {
            let sel = exchange::import(file)?;
            let options = Options {
                dry_run: *dry_run,
                accept_shrink: *accept_shrink,
                force: false,
            };
            let req = Request::RangesImport {
                selection: sel.clone(),
                options,
            };
            let (changes, running) = match ask(&cfg, &req)? {
                Some(v) => (serde_json::from_value(v)?, true),
                None => {
                    let dir = state_dir(&cfg)?;
                    let before = ranges::load(&dir)?;
                    let changes = ranges::import(&dir, &sel, &cfg.ranges, options, now)?;
                    if !options.dry_run
                        && let Err(e) = fits_the_gate(&cfg, &dir)
                    {
                        ranges::roll_back(&dir, &before, None, &e, &cfg.ranges, now)?;
                        bail!("import refused: {e}");
                    }
                    (changes, false)
                }
            };
            if cli.json {
                return print_json(&serde_json::json!({"selection": sel, "changes": changes}));
            }
            println!("endpoint sets: {:?} ({})", sel.sets, sel.urls.join(", "));
            print!("{}", status::render_changes(&changes));
            match (dry_run, running) {
                (true, _) => {}
                (false, true) => eprintln!("imported {} ranges; in force now", sel.ranges.len()),
                (false, false) => eprintln!(
                    "imported {} ranges; they take effect when the daemon starts",
                    sel.ranges.len()
                ),
            }
            Ok(())
        }
        RangesCmd::List => {
            let entries = smtp_edge::gate::allowlist::exchange_entries(
                &cfg,
                &ranges::load(&state_dir(&cfg)?)?,
            );
            if cli.json {
                return print_json(&entries);
            }
            if !cfg.allowlist.exchange_online {
                println!(
                    "allowlist.exchange_online is false: no Exchange Online ranges are allowed"
                );
            }
            for e in entries {
                println!("{:<22} {}", e.source, e.comment);
            }
            Ok(())
        }
    }
}
