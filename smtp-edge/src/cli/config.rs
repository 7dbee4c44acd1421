//! Configuration files (`config check`, `config example`) and the packaging
//! assets generated from the CLI definitions (`generate-assets`).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::Value;

use smtp_edge::config::{self, Config};
use smtp_edge::gate::xdp;

use super::print_json;
use crate::Cli;

/// `smtp-edge config …`: configuration files.
#[derive(Subcommand)]
pub(crate) enum ConfigCmd {
    /// Validate a file; errors carry file, line and column.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print a complete, commented configuration.
    Example,
}

pub(super) fn config_check(file: &Path, json: bool) -> Result<()> {
    match Config::load(file) {
        Ok(cfg) => {
            let mut warnings: Vec<String> = cfg.warnings.iter().map(|w| w.to_string()).collect();
            for iface in cfg.interfaces() {
                if cfg.filter.enabled && !xdp::interface_exists(&iface) {
                    warnings.push(format!("interface `{iface}` does not exist on this host"));
                }
            }
            if json {
                print_json(&serde_json::json!({"ok": true, "warnings": warnings}))?;
            } else {
                for w in &warnings {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: ok ({} static allowlist entries, ports {:?}, mode {:?})",
                    file.display(),
                    cfg.static_entries.len(),
                    cfg.ports,
                    cfg.filter.mode
                );
            }
            Ok(())
        }
        Err(errors) => {
            if json {
                let list: Vec<Value> = errors
                    .0
                    .iter()
                    .map(|e| serde_json::json!({"file": e.file, "line": e.line, "column": e.column, "message": e.message}))
                    .collect();
                print_json(&serde_json::json!({"ok": false, "errors": list}))?;
            }
            bail!("{} error(s):\n{errors}", errors.0.len())
        }
    }
}

/// Man pages (section 8: one for the command, one per subcommand), bash,
/// zsh and fish completions, and the example configuration.
pub(super) fn generate_assets(dir: &Path) -> Result<()> {
    use clap::CommandFactory;
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let cmd = Cli::command();
    let mut pages = vec![(String::from("smtp-edge"), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("smtp-edge-{}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name)));
        for sub2 in sub.get_subcommands() {
            let name2 = format!("smtp-edge-{}-{}", sub.get_name(), sub2.get_name());
            pages.push((name2.clone(), sub2.clone().name(name2)));
        }
    }
    for (name, page) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .section("8")
            .date(env!("CARGO_PKG_VERSION"))
            .render(&mut out)?;
        std::fs::write(man.join(format!("{name}.8")), out)?;
    }
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        let mut c = Cli::command();
        clap_complete::generate_to(shell, &mut c, "smtp-edge", &completions)?;
    }
    std::fs::write(dir.join("smtp-edge.toml"), config::EXAMPLE)?;
    Ok(())
}
