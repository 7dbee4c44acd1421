//! What is running: the one-screen overview (`status`) and the gate's own
//! state (`filter status`).

use anyhow::{Result, bail};

use smtp_edge::daemon;
use smtp_edge::gate::filter::FilterState;
use smtp_edge::gate::xdp::Maps;
use smtp_edge::ops::control::Request;
use smtp_edge::ops::view::{self, Status};

use super::{ask, load_config, print_json, state_dir};
use crate::Cli;

pub(super) fn overview(cli: &Cli) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    match ask(&cfg, &Request::Overview)? {
        Some(v) => {
            if cli.json {
                return print_json(&v);
            }
            let o: daemon::overview::Overview = serde_json::from_value(v)?;
            print!("{}", o.render());
            Ok(())
        }
        None => bail!(
            "the daemon is not running (no answer on {}); `smtp-edge filter status` and `ranges status` read what it left",
            cfg.daemon.control_socket.display()
        ),
    }
}

pub(super) fn status(cli: &Cli) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    let s: Status = match ask(&cfg, &Request::Status)? {
        Some(v) => serde_json::from_value(v)?,
        None => {
            let maps = Maps::open(&cfg.filter.pin_dir, false)?;
            let fs = FilterState::read(&state_dir(&cfg)?)?.unwrap_or_default();
            let blocks = maps.read_v4()?.blocks_used();
            view::status(&maps, &cfg.filter.pin_dir, &fs, blocks)?
        }
    };
    if cli.json {
        return print_json(&s);
    }
    println!(
        "daemon:      {}",
        if s.daemon_running {
            "running"
        } else {
            "not running (read from the pinned maps)"
        }
    );
    println!("pinned at:   {}", s.pin_dir);
    let ifaces: Vec<String> = s
        .interfaces
        .iter()
        .map(|i| match s.attach_modes.get(i) {
            Some(m) => format!("{i} ({m})"),
            None => i.clone(),
        })
        .collect();
    println!(
        "attached to: {}",
        if ifaces.is_empty() {
            "nothing".into()
        } else {
            ifaces.join(", ")
        }
    );
    println!("mode:        {}", s.mode);
    println!("ports:       {:?}", s.ports);
    println!("entries:     {} of {}", s.entries, s.entry_capacity);
    println!(
        "IPv4 blocks: {}/{} second level, {}/{} third level",
        s.v4_blocks[0].0, s.v4_blocks[0].1, s.v4_blocks[1].0, s.v4_blocks[1].1
    );
    Ok(())
}
