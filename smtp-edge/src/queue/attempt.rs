//! One delivery attempt of one message: each pending recipient goes through
//! its outbound connector to that connector's next hops, with failover, and
//! comes back with an outcome.
//!
//! Rules (RFC 5321 §4.5.4, and what Postfix and Exchange do):
//!
//! - Next hops are tried in order, at most `max_addresses` addresses and
//!   `max_sessions` SMTP sessions per attempt.
//! - A recipient's result is final only from an answer about it: its RCPT
//!   reply, or the reply to the data it was accepted for (and a 5xx to
//!   MAIL, or the message being too large or 8-bit for the server, which
//!   concern every recipient). No connection, a refused greeting or EHLO
//!   (4xx or 5xx), TLS that cannot be had, 421 anywhere, a connection lost
//!   before the end of the data: the next host is tried; when none is left
//!   the recipients wait for the next attempt with what every host said.
//! - Recipients refused with 452 4.5.3 (too many recipients, or a 552 taken
//!   as one) after others were accepted go out again at once in a new
//!   transaction.
//! - A connection lost after the final dot defers: the server may have the
//!   message, and trying another host at once would make a duplicate more
//!   likely than waiting does.

use std::net::SocketAddr;

use super::config::QueueConfig;
use super::metrics::QueueMetrics;
use super::state::Outcome;
use crate::outbound::client::{
    self, ClientSettings, Content, DeliveryError, Disposition, RcptResult, Session, Stage,
    Transaction,
};
use crate::outbound::routing::NextHop;
use crate::queue::spool::{Envelope, Recipient};

/// A new transaction at once for "too many recipients", at most this often.
const MAX_ROUNDS: usize = 100;
/// Host errors kept for the reason of a deferral.
const MAX_ERRORS: usize = 4;

/// The destination a smart-host connector's sessions count against (its
/// host list); `None` for MX connectors (known only after the lookup).
fn smart_key(c: &crate::outbound::routing::Outbound) -> Option<String> {
    match &c.next_hop {
        NextHop::SmartHosts(hosts) => Some(format!(
            "smart:{}",
            hosts
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join(",")
        )),
        NextHop::Mx => None,
    }
}

/// The destinations known before an attempt (smart hosts) of the
/// recipients `addresses`, for the dispatcher.
pub fn destinations(cfg: &QueueConfig, addresses: &[&str]) -> Vec<String> {
    let owned: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    let split = crate::outbound::routing::split(&owned, &cfg.connectors, &cfg.accepted);
    let mut out = Vec::new();
    for r in &split.routes {
        if let Some(k) = cfg.connectors.get(r.connector).and_then(smart_key)
            && !out.contains(&k)
        {
            out.push(k);
        }
    }
    out
}

/// Where a group of recipients goes: through one connector to its next hops
/// (resolved), whose sessions count against `key`.
#[derive(Debug)]
pub struct Route {
    /// The connector (position).
    pub connector: usize,
    /// The recipients (positions in the envelope).
    pub indices: Vec<usize>,
    /// The next hops with their addresses.
    pub hops: Vec<(String, Vec<SocketAddr>)>,
    /// The destination.
    pub key: String,
}

/// Routes the `pending` recipients (position and address) and resolves
/// their next hops: the routes, and the outcomes of recipients that
/// cannot go anywhere (unroutable, null MX, no address).
///
/// With `forced` (a device's own connector, [`crate::queue::spool::Envelope::route`]),
/// every recipient takes that connector whatever its domain; while that
/// connector is not configured, the recipients wait (4.3.5).
pub async fn routes(
    cfg: &QueueConfig,
    pending: &[(usize, String)],
    forced: Option<&str>,
) -> (Vec<Route>, Vec<(usize, Outcome)>) {
    let addresses: Vec<String> = pending.iter().map(|(_, a)| a.clone()).collect();
    let forced_at = forced.and_then(|name| cfg.connectors.iter().position(|c| c.name == name));
    if let (Some(name), None) = (forced, forced_at) {
        // Never another way out than the one the device was given (its
        // certificate connector): wait for the configuration to have it.
        tracing::warn!(
            connector = name,
            "a device's outbound connector is not configured: its mail waits"
        );
        let all: Vec<usize> = pending.iter().map(|(i, _)| *i).collect();
        return (
            Vec::new(),
            deferred_all(
                &all,
                (4, 3, 5),
                format!("the device's outbound connector `{name}` is not configured"),
            ),
        );
    }
    let split = match forced_at.and_then(|i| cfg.connectors.get(i).map(|c| (i, c))) {
        Some((i, c)) => {
            let mut any = c.clone();
            any.recipient_domains = vec![crate::outbound::routing::RecipientDomain::Any];
            let mut s = crate::outbound::routing::split(
                &addresses,
                std::slice::from_ref(&any),
                &cfg.accepted,
            );
            for r in &mut s.routes {
                r.connector = i;
            }
            s
        }
        None => crate::outbound::routing::split(&addresses, &cfg.connectors, &cfg.accepted),
    };
    let mut done = Vec::new();
    if cfg.connectors.is_empty() {
        // A reload that removed every connector is a configuration being
        // reworked, not a verdict on the recipients: they wait.
        let all: Vec<usize> = pending.iter().map(|(i, _)| *i).collect();
        done.extend(deferred_all(
            &all,
            (4, 3, 5),
            "no outbound connectors are configured".into(),
        ));
        return (Vec::new(), done);
    }
    for &u in &split.unroutable {
        done.push((
            pending[u].0,
            Outcome::Failed {
                remote: None,
                status: (5, 4, 4),
                reason: "no outbound connector for this recipient's domain".into(),
            },
        ));
    }
    let mut out = Vec::new();
    for r in &split.routes {
        let indices: Vec<usize> = r.recipients.iter().map(|&i| pending[i].0).collect();
        let Some(connector) = cfg.connectors.get(r.connector) else {
            done.extend(deferred_all(
                &indices,
                (4, 3, 5),
                "outbound connector gone".into(),
            ));
            continue;
        };
        let domain = r
            .domain
            .clone()
            .or_else(|| {
                r.recipients
                    .first()
                    .and_then(|&i| crate::address::domain_of(&pending[i].1).map(str::to_string))
            })
            .unwrap_or_default();
        match next_hops(cfg, connector, &domain).await {
            Ok((hops, key)) => out.push(Route {
                connector: r.connector,
                indices,
                hops,
                key,
            }),
            Err(o) => done.extend(indices.iter().map(|&i| (i, o.clone()))),
        }
    }
    (out, done)
}

/// A connector's next hops for `domain` and the destination key; the
/// outcome for its recipients when there are none.
async fn next_hops(
    cfg: &QueueConfig,
    connector: &crate::outbound::routing::Outbound,
    domain: &str,
) -> Result<(Vec<(String, Vec<SocketAddr>)>, String), Outcome> {
    let (hops, key) = match &connector.next_hop {
        NextHop::SmartHosts(hosts) => {
            let mut v = Vec::new();
            for h in hosts {
                match cfg.resolver.smart_host(&h.host, h.port).await {
                    Ok(addrs) => v.push((h.host.clone(), addrs)),
                    Err(e) => {
                        tracing::info!(host = %h, error = %e, "smart host does not resolve")
                    }
                }
            }
            (v, smart_key(connector).unwrap_or_default())
        }
        NextHop::Mx => match cfg.resolver.mx(domain).await {
            Ok(list) => {
                let mut names: Vec<String> =
                    list.iter().map(|m| m.name.to_ascii_lowercase()).collect();
                names.sort();
                names.dedup();
                let key = format!("mx:{}", names.join(","));
                (list.into_iter().map(|m| (m.name, m.addrs)).collect(), key)
            }
            Err(e) => {
                return Err(if e.is_permanent() {
                    Outcome::Failed {
                        remote: None,
                        status: e.status(),
                        reason: e.to_string(),
                    }
                } else {
                    Outcome::Deferred {
                        remote: None,
                        status: e.status(),
                        reason: e.to_string(),
                    }
                });
            }
        },
    };
    if hops.is_empty() {
        return Err(Outcome::Deferred {
            remote: None,
            status: (4, 4, 3),
            reason: format!("no next hop of connector {} resolves", connector.name),
        });
    }
    Ok((hops, key))
}

fn deferred_all(
    indices: &[usize],
    status: (u8, u16, u16),
    reason: String,
) -> Vec<(usize, Outcome)> {
    indices
        .iter()
        .map(|&i| {
            (
                i,
                Outcome::Deferred {
                    remote: None,
                    status,
                    reason: reason.clone(),
                },
            )
        })
        .collect()
}

/// Whether a transient RCPT refusal means "too many recipients in this
/// transaction" (4.5.3, or the words without a code).
fn too_many(r: &RcptResult) -> bool {
    r.reply.as_ref().is_some_and(|reply| {
        reply.code == 452
            && (r.status == (4, 5, 3)
                || reply
                    .text()
                    .to_ascii_lowercase()
                    .contains("too many recipients"))
    })
}

/// The outcome a recipient gets from its result at `remote`.
fn outcome_of(r: &RcptResult, remote: &str) -> Outcome {
    let reason = r.reply.as_ref().map_or(r.text.clone(), |x| x.diagnostic());
    match r.disposition {
        Disposition::Delivered => Outcome::Delivered {
            remote: remote.to_string(),
            reply: r.text.clone(),
        },
        Disposition::Permanent => Outcome::Failed {
            remote: Some(remote.to_string()),
            status: r.status,
            reason,
        },
        Disposition::Transient => Outcome::Deferred {
            remote: Some(remote.to_string()),
            status: r.status,
            reason,
        },
    }
}

/// One transaction with `host` at `addr`: on a session kept from an earlier
/// delivery to this destination when there is one that still answers
/// (`true`), else on a new one; the session is kept afterwards when it can
/// take another transaction ([`super::sessions`]). A kept session that
/// answered RSET and then lost its connection before anything was handed
/// over is followed at once by a new connection, not by a deferral.
async fn deliver_on(
    cfg: &QueueConfig,
    route: &Route,
    host: &str,
    addr: SocketAddr,
    settings: &ClientSettings,
    txn: &Transaction<'_>,
    content: &Content,
) -> (Result<client::Outcome, DeliveryError>, bool) {
    let cache = &cfg.sessions;
    let limit = cfg.settings.max_per_destination as usize;
    let mut fresh_only = !cache.enabled();
    loop {
        let kept = if fresh_only {
            None
        } else {
            cache.take(&route.key, route.connector, host, addr).await
        };
        let reused = kept.is_some();
        let mut session = match kept {
            Some(s) => s,
            None => {
                cache.make_room(&route.key, limit);
                match Session::open(addr, host, settings).await {
                    Ok(s) => s,
                    Err(e) => {
                        cache.release(&route.key);
                        return (Err(e), false);
                    }
                }
            }
        };
        let result = session.send(txn, content).await;
        if result.is_ok() {
            cache.put(&route.key, route.connector, host, session).await;
        } else {
            session.end(result.as_ref().err()).await;
        }
        cache.release(&route.key);
        if reused && matches!(result, Err(DeliveryError::Connection { .. })) {
            tracing::info!(%host, %addr, "a kept session broke before the message was handed over; a new connection");
            fresh_only = true;
            continue;
        }
        return (result, reused);
    }
}

/// The next hops in order, except that an address with a session kept for
/// this destination goes first (as Postfix looks up its connection cache by
/// destination before its hosts): a session kept to the second smart host
/// while the first is down is used rather than closed to make room for a
/// connection to the first that fails again. Sessions are kept at most 5
/// minutes, so the first host gets its mail back within that after it
/// recovers.
fn kept_first(
    hops: &[(String, Vec<SocketAddr>)],
    kept: &[(String, SocketAddr)],
) -> Vec<(String, Vec<SocketAddr>)> {
    let hit = hops.iter().find_map(|(h, addrs)| {
        addrs
            .iter()
            .find(|a| kept.iter().any(|(kh, ka)| kh == h && ka == *a))
            .map(|a| (h.clone(), *a))
    });
    let Some((host, addr)) = hit else {
        return hops.to_vec();
    };
    let mut out = vec![(host.clone(), vec![addr])];
    for (h, addrs) in hops {
        let rest: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| !(h == &host && *a == addr))
            .collect();
        if !rest.is_empty() {
            out.push((h.clone(), rest));
        }
    }
    out
}

/// Delivers a route's recipients, trying its next hops in order; an
/// outcome for each.
pub async fn deliver_route(
    cfg: &QueueConfig,
    env: &Envelope,
    content: &Content,
    route: &Route,
    metrics: &QueueMetrics,
) -> Vec<(usize, Outcome)> {
    let c = route.connector;
    let Some(connector) = cfg.connectors.get(c) else {
        return deferred_all(&route.indices, (4, 3, 5), "outbound connector gone".into());
    };
    let (hops, indices) = (&route.hops, &route.indices);
    let mut settings = ClientSettings::for_connector(
        connector,
        &cfg.hostname,
        cfg.identities.get(c).cloned().flatten(),
        cfg.roots
            .get(c)
            .cloned()
            .unwrap_or_else(|| std::sync::Arc::new(rustls::RootCertStore::empty())),
        (&cfg.settings.timeouts).into(),
    );
    settings.tls_configs = cfg.tls_configs.get(c).cloned();
    let mut pending: Vec<usize> = indices.to_vec();
    let mut done: Vec<(usize, Outcome)> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut last_status = (4, 4, 1);
    let (mut addresses, mut sessions) = (0u32, 0u32);
    let limits = (cfg.settings.max_addresses, cfg.settings.max_sessions);
    let ordered = kept_first(hops, &cfg.sessions.kept(&route.key, route.connector));
    'hosts: for (host, addrs) in &ordered {
        for &addr in addrs {
            if pending.is_empty() || addresses >= limits.0 || sessions >= limits.1 {
                break 'hosts;
            }
            addresses += 1;
            let remote = format!("{host} [{}]", addr.ip());
            let mut rounds = 0;
            loop {
                let rcpts: Vec<Recipient> =
                    pending.iter().map(|&i| env.recipients[i].clone()).collect();
                let txn = Transaction::new(env, &rcpts);
                let (result, reused) =
                    deliver_on(cfg, route, host, addr, &settings, &txn, content).await;
                if !matches!(
                    result,
                    Err(DeliveryError::Connect { .. }
                        | DeliveryError::Timeout {
                            stage: Stage::Connect
                        })
                ) {
                    metrics.session(&connector.name, reused);
                }
                match result {
                    Err(e) => {
                        if !matches!(
                            e,
                            DeliveryError::Connect { .. }
                                | DeliveryError::Timeout {
                                    stage: Stage::Connect
                                }
                        ) {
                            sessions += 1;
                        }
                        tracing::info!(id = %env.id, connector = %connector.name, %remote, error = %e, "next hop failed");
                        let reason = e.reply().map_or_else(|| e.to_string(), |r| r.diagnostic());
                        if e.next_host_may_help() {
                            if e.status().0 == 4 {
                                last_status = e.status();
                            }
                            errors.push(format!("{remote}: {reason}"));
                            break;
                        }
                        // About the message or its sender: every recipient.
                        let o = if e.is_permanent() {
                            Outcome::Failed {
                                remote: Some(remote.clone()),
                                status: e.status(),
                                reason,
                            }
                        } else {
                            Outcome::Deferred {
                                remote: Some(remote.clone()),
                                status: e.status(),
                                reason,
                            }
                        };
                        done.extend(pending.drain(..).map(|i| (i, o.clone())));
                        break 'hosts;
                    }
                    Ok(outcome) => {
                        sessions += 1;
                        tracing::info!(id = %env.id, connector = %connector.name, %remote, tls = ?outcome.tls.as_ref().map(|t| &t.version), reused, "delivery attempt");
                        let moves_on = outcome
                            .failure
                            .as_ref()
                            .is_some_and(DeliveryError::moves_to_next_host);
                        if let Some(f) = &outcome.failure {
                            errors.push(format!("{remote}: {f}"));
                        }
                        let (mut again, mut next_host) = (Vec::new(), Vec::new());
                        let mut delivered = false;
                        for r in &outcome.per_recipient {
                            let Some(&i) = pending.get(r.index) else {
                                continue;
                            };
                            match r.disposition {
                                Disposition::Transient if too_many(r) => again.push(i),
                                // No answer about it (the session broke),
                                // or a 421: another host may take it now.
                                Disposition::Transient
                                    if r.reply.as_ref().map_or(moves_on, |x| x.code == 421) =>
                                {
                                    next_host.push(i)
                                }
                                d => {
                                    delivered |= d == Disposition::Delivered;
                                    done.push((i, outcome_of(r, &remote)));
                                }
                            }
                        }
                        if !again.is_empty() && delivered && rounds < MAX_ROUNDS {
                            // The server took some and wants the rest in
                            // another transaction: now, not at the next retry.
                            rounds += 1;
                            pending = again;
                            pending.extend(next_host);
                            continue;
                        }
                        if !again.is_empty() {
                            errors.push(format!("{remote}: too many recipients"));
                        }
                        pending = again;
                        pending.extend(next_host);
                        break;
                    }
                }
            }
        }
    }
    if !pending.is_empty() {
        let shown: Vec<&String> = errors.iter().rev().take(MAX_ERRORS).collect();
        let reason = if shown.is_empty() {
            format!("no next hop of connector {} answered", connector.name)
        } else {
            shown
                .into_iter()
                .rev()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        };
        done.extend(deferred_all(&pending, last_status, reason));
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_with_a_kept_session_goes_first_and_only_once() {
        let a1: SocketAddr = "192.0.2.1:25".parse().unwrap();
        let a2: SocketAddr = "192.0.2.2:25".parse().unwrap();
        let b1: SocketAddr = "198.51.100.1:25".parse().unwrap();
        let hops = vec![
            ("a.test".to_string(), vec![a1, a2]),
            ("b.test".to_string(), vec![b1]),
        ];
        assert_eq!(kept_first(&hops, &[]), hops);
        // Kept to that address under another name: not the same next hop.
        assert_eq!(kept_first(&hops, &[("c.test".into(), b1)]), hops);
        assert_eq!(
            kept_first(&hops, &[("b.test".into(), b1)]),
            vec![
                ("b.test".to_string(), vec![b1]),
                ("a.test".to_string(), vec![a1, a2]),
            ]
        );
        assert_eq!(
            kept_first(&hops, &[("a.test".into(), a2)]),
            vec![
                ("a.test".to_string(), vec![a2]),
                ("a.test".to_string(), vec![a1]),
                ("b.test".to_string(), vec![b1]),
            ]
        );
    }
}
