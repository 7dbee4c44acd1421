//! MAIL and RCPT: the checks of their parameters against what EHLO
//! announced, the sender's and recipients' checks by the connector (and,
//! on submission listeners, by the device), and the envelope the
//! transaction hands to the spool.

use super::{Action, Session, Transaction};
use crate::address::DomainPattern;
use crate::inbound::policy::Inbound;
use crate::queue::spool::{Envelope, Recipient};
use crate::smtp::command::{Address, Body, Host, MailParams, Path, RcptParams, Ret};
use crate::smtp::reply::Reply;

fn mailbox_text(path: &Path) -> String {
    match &path.address {
        Address::Null => String::new(),
        Address::Postmaster => "postmaster".into(),
        Address::Mailbox(m) => m.to_string(),
    }
}

fn domain_text(path: &Path) -> Option<String> {
    path.mailbox().map(|m| match &m.domain {
        Host::Domain(d) => d.clone(),
        other => other.to_string(),
    })
}

impl Session {
    /// A MAIL parameter (or value) that EHLO did not announce: 555 5.5.4.
    /// After HELO nothing is announced; BINARYMIME and AUTH never are.
    fn check_mail_params(&self, p: &MailParams) -> Result<(), Reply> {
        if let Some((name, _)) = p.unknown.first() {
            return Err(Reply::parameter_not_recognized(name));
        }
        let not_offered = |what: &str| {
            Err(Reply::new(
                555,
                (5, 5, 4),
                &format!("{what} not offered by this server"),
            ))
        };
        let announced = [
            (p.size.is_some(), "SIZE parameter"),
            (p.body.is_some(), "BODY parameter"),
            (p.smtputf8, "SMTPUTF8 parameter"),
            (p.ret.is_some(), "RET parameter"),
            (p.envid.is_some(), "ENVID parameter"),
        ];
        if !self.esmtp
            && let Some((_, what)) = announced.iter().find(|(used, _)| *used)
        {
            return not_offered(&format!("{what} (send EHLO, not HELO):"));
        }
        if p.body == Some(Body::BinaryMime) {
            return not_offered("BODY=BINARYMIME is");
        }
        if p.auth.is_some() && !(self.esmtp && self.auth_offered()) {
            return not_offered("AUTH parameter (no AUTH):");
        }
        Ok(())
    }

    /// A RCPT parameter that EHLO did not announce: 555 5.5.4.
    fn check_rcpt_params(&self, p: &RcptParams) -> Result<(), Reply> {
        if let Some((name, _)) = p.unknown.first() {
            return Err(Reply::parameter_not_recognized(name));
        }
        if !self.esmtp && (p.notify.is_some() || p.orcpt.is_some()) {
            return Err(Reply::new(
                555,
                (5, 5, 4),
                "NOTIFY and ORCPT parameters need EHLO, not HELO",
            ));
        }
        // UTF-8 as such in ORCPT (RFC 6533) only with SMTPUTF8.
        let utf8 = self.txn.as_ref().is_some_and(|t| t.smtputf8);
        if p.orcpt.as_ref().is_some_and(|o| !o.address.is_ascii()) && !utf8 {
            return Err(Reply::utf8_without_smtputf8());
        }
        Ok(())
    }

    /// The authenticated device as the accounts have it now: taken anew
    /// when only its senders, rate or connector changed; forgotten (530
    /// 5.7.0, AUTH again) when it was removed or has a new password.
    fn recheck_device(&mut self) -> Result<(), Reply> {
        let (Some(sub), Some(device)) = (&self.submission, &self.auth) else {
            return Ok(());
        };
        match sub.devices.find(&device.name) {
            Ok(Some(now)) if now.hash == device.hash => {
                self.auth = Some(now);
                Ok(())
            }
            Ok(found) => {
                let what = if found.is_some() {
                    "has a new password"
                } else {
                    "was removed"
                };
                tracing::info!(device = %device.name, peer = %self.peer, "MAIL refused: device removed or changed since AUTH ({what})");
                let reply = Reply::new(
                    530,
                    (5, 7, 0),
                    &format!(
                        "Authentication required: device {} {what} since AUTH",
                        device.name
                    ),
                );
                self.auth = None;
                Err(reply)
            }
            Err(e) => {
                tracing::error!(device = %device.name, peer = %self.peer, "MAIL: the device accounts cannot be read: {e}");
                Err(Reply::local_error())
            }
        }
    }

    /// MAIL: the transaction starts when the sender passes every check.
    pub(super) fn mail(&mut self, connector: &Inbound, from: Path, params: MailParams) -> Action {
        if self.helo.is_none() {
            return self.error(Reply::bad_sequence("Send EHLO or HELO first"));
        }
        if self.txn.is_some() {
            return self.error(Reply::bad_sequence("Nested MAIL command"));
        }
        if let Err(r) = connector.check_session(&self.tls) {
            tracing::info!(connector = %connector.name, peer = %self.peer, reason = r.reason, "MAIL refused");
            return Action::Reply(r.reply);
        }
        if self.cfg.spool.is_full() {
            return Action::Reply(Reply::insufficient_storage());
        }
        if let Err(r) = self.check_mail_params(&params) {
            return self.error(r);
        }
        if params.size.is_some_and(|s| s > self.cfg.max_message_size) {
            return Action::Reply(Reply::message_too_big());
        }
        if from.utf8 && !params.smtputf8 {
            return self.error(Reply::utf8_without_smtputf8());
        }
        let mail_from = mailbox_text(&from);
        if let Err(r) = self.recheck_device() {
            return Action::Reply(r);
        }
        if let Some(sub) = &self.submission {
            let Some(device) = &self.auth else {
                return Action::Reply(Reply::new(530, (5, 7, 0), "Authentication required"));
            };
            if !device.may_send_as(&mail_from) {
                tracing::info!(device = %device.name, peer = %self.peer, from = %mail_from, "sender refused: not one of the device's senders");
                return Action::Reply(Reply::new(
                    550,
                    (5, 7, 1),
                    &format!("Device {} may not send as <{mail_from}>", device.name),
                ));
            }
            let rate = device.rate_per_hour.unwrap_or(sub.rate_per_hour);
            if !sub.guard.take_message(&device.name, rate) {
                tracing::warn!(device = %device.name, peer = %self.peer, rate, "message rate exceeded");
                return Action::Reply(Reply::new(
                    450,
                    (4, 7, 1),
                    &format!("Rate limit exceeded: {rate} messages per hour, try again later"),
                ));
            }
        }
        if let Err(r) = connector.check_sender(&mail_from, &self.cfg.accepted) {
            tracing::info!(connector = %connector.name, peer = %self.peer, from = %mail_from, reason = r.reason, "sender refused");
            return Action::Reply(r.reply);
        }
        self.txn = Some(Transaction {
            mail_from,
            body: params.body,
            smtputf8: params.smtputf8,
            ret: params.ret,
            envid: params.envid,
            ..Transaction::default()
        });
        Action::Reply(Reply::sender_ok())
    }

    /// RCPT: a recipient joins the transaction when the connector takes it.
    pub(super) fn rcpt(&mut self, connector: &Inbound, to: Path, params: RcptParams) -> Action {
        let max = self.cfg.max_recipients;
        let accepted = self.cfg.accepted.clone();
        let peer = self.peer;
        match &self.txn {
            None => return self.error(Reply::bad_sequence("Send MAIL first")),
            // The envelope went to the spool with the first chunk.
            Some(t) if t.bdat => {
                return self.error(Reply::bad_sequence("RCPT after BDAT"));
            }
            Some(_) => {}
        }
        if let Err(r) = self.check_rcpt_params(&params) {
            return self.error(r);
        }
        let Some(txn) = self.txn.as_mut() else {
            return self.error(Reply::bad_sequence("Send MAIL first"));
        };
        if to.utf8 && !txn.smtputf8 {
            return self.error(Reply::utf8_without_smtputf8());
        }
        if txn.recipients.len() >= max {
            return Action::Reply(Reply::too_many_recipients());
        }
        let rcpt = match &to.address {
            Address::Postmaster => accepted
                .iter()
                .find_map(|p| match p {
                    DomainPattern::Exact(d) | DomainPattern::Subtree(d) => {
                        Some(format!("postmaster@{d}"))
                    }
                    _ => None,
                })
                .unwrap_or_else(|| format!("postmaster@{}", self.cfg.hostname)),
            _ => mailbox_text(&to),
        };
        if !matches!(to.address, Address::Postmaster)
            && let Err(r) = connector.check_recipient(&rcpt, to.had_source_route, &accepted)
        {
            tracing::info!(connector = %connector.name, %peer, rcpt = %rcpt, domain = ?domain_text(&to), reason = r.reason, "recipient refused");
            return Action::Reply(r.reply);
        }
        txn.recipients.push(Recipient {
            address: rcpt,
            orcpt: params
                .orcpt
                .map(|o| format!("{};{}", o.addr_type, o.address)),
            notify: params.notify.map(|n| {
                let mut v = Vec::new();
                if n.success {
                    v.push("SUCCESS");
                }
                if n.failure {
                    v.push("FAILURE");
                }
                if n.delay {
                    v.push("DELAY");
                }
                if v.is_empty() {
                    "NEVER".to_string()
                } else {
                    v.join(",")
                }
            }),
        });
        Action::Reply(Reply::recipient_ok())
    }

    /// The envelope of the current transaction for the spool; the id is
    /// the spool's to give.
    pub fn envelope(&self, received_at: u64) -> Option<Envelope> {
        let t = self.txn.as_ref()?;
        Some(Envelope {
            id: String::new(),
            received_at,
            mail_from: t.mail_from.clone(),
            recipients: t.recipients.clone(),
            body: t.body.map(|b| match b {
                Body::SevenBit => "7BIT".into(),
                Body::EightBitMime => "8BITMIME".into(),
                Body::BinaryMime => "BINARYMIME".into(),
            }),
            smtputf8: t.smtputf8,
            ret: t.ret.map(|r| match r {
                Ret::Full => "FULL".into(),
                Ret::Hdrs => "HDRS".into(),
            }),
            envid: t.envid.clone(),
            client_ip: Some(self.peer),
            helo: self.helo.clone().unwrap_or_default(),
            connector: self.connector_name().to_string(),
            tls: self.tls_info.clone(),
            auth: self.auth.as_ref().map(|d| d.name.clone()),
            route: self.auth.as_ref().and_then(|d| d.connector.clone()),
            notification: None,
        })
    }
}
