//! `smtp-edge queue …`: the mail queue, which only the running daemon answers for.

use anyhow::{Result, anyhow};
use clap::Subcommand;
use serde_json::Value;

use smtp_edge::ops::control::Request;

use super::{ask, load_config, print_json};
use crate::Cli;

/// `smtp-edge queue …`: the mail queue (the sending side).
#[derive(Subcommand)]
pub(crate) enum QueueCmd {
    /// Every queued message: id, age, sender, recipients with status, next attempt.
    List,
    /// One message: its state and headers.
    Show {
        /// Queue id.
        id: String,
    },
    /// Retry now (every message without an id).
    Flush {
        /// Queue id.
        id: Option<String>,
    },
    /// Stop trying a message until it is released.
    Hold {
        /// Queue id.
        id: String,
    },
    /// Let a held message be tried again.
    Release {
        /// Queue id.
        id: String,
    },
    /// Remove a message without telling the sender.
    Delete {
        /// Queue id.
        id: String,
    },
    /// Give up on a message now; the sender gets a DSN.
    Bounce {
        /// Queue id.
        id: String,
    },
}

fn rcpt_state(v: &Value) -> String {
    match v["state"].as_str().unwrap_or("?") {
        "pending" => match v["last_error"].as_str() {
            Some(e) => format!("deferred: {e}"),
            None => "pending".into(),
        },
        "delivered" => format!("delivered to {}", v["remote"].as_str().unwrap_or("?")),
        "failed" => format!("failed: {}", v["reason"].as_str().unwrap_or("?")),
        other => other.to_string(),
    }
}

pub(super) fn queue(cli: &Cli, cmd: &QueueCmd) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    let req = match cmd {
        QueueCmd::List => Request::QueueList,
        QueueCmd::Show { id } => Request::QueueShow { id: id.clone() },
        QueueCmd::Flush { id } => Request::QueueFlush { id: id.clone() },
        QueueCmd::Hold { id } => Request::QueueHold { id: id.clone() },
        QueueCmd::Release { id } => Request::QueueRelease { id: id.clone() },
        QueueCmd::Delete { id } => Request::QueueDelete { id: id.clone() },
        QueueCmd::Bounce { id } => Request::QueueBounce { id: id.clone() },
    };
    let v = ask(&cfg, &req)?
        .ok_or_else(|| anyhow!("the daemon is not running; the queue is its own"))?;
    if cli.json {
        return print_json(&v);
    }
    let now = smtp_edge::queue::spool::now();
    let show_msg = |m: &Value| {
        if let Some(why) = m["corrupt"].as_str() {
            println!(
                "{}  CORRUPT (in spool corrupt/, not delivered): {why}",
                m["id"].as_str().unwrap_or("?")
            );
            return;
        }
        let next = m["next_attempt"].as_u64().unwrap_or(0);
        let mut flags = String::new();
        if m["held"].as_bool().unwrap_or(false) {
            flags.push_str("  HELD");
        }
        if m["busy"].as_bool().unwrap_or(false) {
            flags.push_str("  delivering");
        }
        if let Some(why) = m["frozen"].as_str() {
            flags.push_str(&format!("  FROZEN ({why})"));
        }
        println!(
            "{}  age {}s  from <{}>  attempts {}{}{}",
            m["id"].as_str().unwrap_or("?"),
            m["age"].as_u64().unwrap_or(0),
            m["sender"].as_str().unwrap_or(""),
            m["attempts"].as_u64().unwrap_or(0),
            flags,
            if next > now {
                format!("  next attempt in {}s", next - now)
            } else {
                String::new()
            },
        );
        for r in m["recipients"].as_array().into_iter().flatten() {
            println!(
                "    {:<40} {}",
                r[0].as_str().unwrap_or("?"),
                rcpt_state(&r[1])
            );
        }
    };
    match cmd {
        QueueCmd::List => {
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("the queue is empty");
            }
            for m in &list {
                show_msg(m);
            }
        }
        QueueCmd::Show { .. } => {
            show_msg(&v["message"]);
            println!();
            print!("{}", v["headers"].as_str().unwrap_or(""));
        }
        QueueCmd::Flush { .. } => println!("{} message(s) will be tried now", v["flushed"]),
        _ => println!("done"),
    }
    Ok(())
}
