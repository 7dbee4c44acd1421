//! Outbound connectors: `connector test` and the Exchange PowerShell that
//! matches the configuration (`exo-commands`).

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;

use super::{load_config, print_json};
use crate::Cli;

/// `smtp-edge connector …`: outbound connectors.
#[derive(Subcommand)]
pub(crate) enum ConnectorCmd {
    /// Go through an outbound connector as delivery would and report each
    /// step (resolve, connect, greeting, EHLO, STARTTLS, TLS, the peer's
    /// certificate, our client certificate), like Exchange Online's
    /// "validate connector"; exit status 1 when a step fails. A client
    /// certificate asked for is a note, not a failure (asking is not
    /// requiring): the server's replies decide, and --send proves it.
    Test {
        /// The connector's name.
        name: String,
        /// A recipient: its domain for MX connectors, the test message's
        /// recipient with --send.
        #[arg(long)]
        rcpt: Option<String>,
        /// Deliver a test message to --rcpt and report its final reply.
        #[arg(long)]
        send: bool,
    },
}

pub(super) fn exo_commands(cli: &Cli) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    // Certificate names where the files can be read here (absent: the
    // commands say what to check).
    let names = |p: &std::path::Path| {
        smtp_edge::certs::load_chain(p).ok().and_then(|c| {
            c.first()
                .map(|c| smtp_edge::certs::certificate_names(c, true))
        })
    };
    let certs = smtp_edge::ops::exo::CertNames {
        server: cfg
            .smtp
            .raw
            .tls
            .as_ref()
            .and_then(|t| names(&t.certificate)),
        clients: cfg
            .outbound
            .iter()
            .filter_map(|o| {
                let c = o.client_cert.as_ref()?;
                Some((o.name.clone(), names(&c.certificate)?))
            })
            .collect(),
    };
    print!("{}", smtp_edge::ops::exo::commands(&cfg, &certs));
    Ok(())
}

pub(super) fn connector_test(cli: &Cli, name: &str, rcpt: Option<&str>, send: bool) -> Result<()> {
    let cfg = load_config(&cli.config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    let report = rt
        .block_on(smtp_edge::ops::validate::test_connector(
            &cfg, name, rcpt, send,
        ))
        .map_err(|e| anyhow!("{e}"))?;
    if cli.json {
        print_json(&report)?;
    } else {
        print!("{}", report.render());
    }
    if !report.ok {
        std::process::exit(1);
    }
    Ok(())
}
