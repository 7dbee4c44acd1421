//! Microsoft's "IP address and URL web service": the two calls the updater
//! makes. `/version/{instance}` is not throttled and may be asked hourly;
//! `/endpoints/{instance}` can answer 429 when asked too often, so it is
//! asked only when the version changed.

use serde::Deserialize;

use super::http::{Client, FetchError};
use crate::config::ranges::Ranges;
use crate::gate::allowlist::exchange::{self, Selection};

/// Errors of one call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// HTTP.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// An answer that is not what the service publishes.
    #[error("{url}: {message}")]
    Answer {
        /// URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// An endpoints list without usable Exchange port-25 sets.
    #[error("{0}")]
    Selection(String),
}

impl ServiceError {
    /// The HTTP error, when there is one.
    pub fn fetch(&self) -> Option<&FetchError> {
        match self {
            ServiceError::Fetch(f) => Some(f),
            ServiceError::Answer { .. } | ServiceError::Selection(_) => None,
        }
    }
}

#[derive(Deserialize)]
struct VersionAnswer {
    instance: String,
    latest: String,
}

/// Whether `v` has the service's version form, `YYYYMMDDNN`.
pub fn is_version(v: &str) -> bool {
    v.len() == 10 && v.bytes().all(|b| b.is_ascii_digit())
}

/// The web service for one instance, with this machine's request id.
pub struct WebService {
    client: Client,
    instance: &'static str,
    request_id: String,
    base: String,
}

impl WebService {
    /// Sets up the client (proxy, trust).
    pub fn new(settings: &Ranges, request_id: &str) -> Result<Self, ServiceError> {
        Ok(WebService {
            client: Client::new(settings)?,
            instance: settings.instance.as_str(),
            request_id: request_id.to_string(),
            base: settings.service_url.clone(),
        })
    }

    /// The latest published version.
    pub fn version(&self) -> Result<String, ServiceError> {
        let path = format!(
            "/version/{}?ClientRequestId={}",
            self.instance, self.request_id
        );
        let url = format!("{}{path}", self.base);
        let body = self.client.get(&path)?;
        let answer: VersionAnswer =
            serde_json::from_str(&body).map_err(|e| ServiceError::Answer {
                url: url.clone(),
                message: format!("not a version answer: {e}"),
            })?;
        if !answer.instance.eq_ignore_ascii_case(self.instance) {
            return Err(ServiceError::Answer {
                url,
                message: format!(
                    "answers for instance `{}`, not `{}`",
                    answer.instance, self.instance
                ),
            });
        }
        if !is_version(&answer.latest) {
            return Err(ServiceError::Answer {
                url,
                message: format!("`{}` is not a version (YYYYMMDDNN)", answer.latest),
            });
        }
        Ok(answer.latest)
    }

    /// The Exchange endpoint sets that carry TCP 25, selected by content.
    pub fn endpoints(&self) -> Result<Selection, ServiceError> {
        let path = format!(
            "/endpoints/{}?ClientRequestId={}&ServiceAreas=Exchange",
            self.instance, self.request_id
        );
        let url = format!("{}{path}", self.base);
        let body = self.client.get(&path)?;
        exchange::select(&body, &url).map_err(|e| match e {
            // Not JSON of the list's shape: an error page, a proxy's answer,
            // a cut-off body — worth asking again.
            exchange::ImportError::Json { .. } => ServiceError::Answer {
                url: url.clone(),
                message: e.to_string(),
            },
            // The list itself holds what cannot be used.
            other => ServiceError::Selection(other.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(is_version("2026112800"));
        assert!(!is_version("202611280"));
        assert!(!is_version("2026-11-28"));
        assert!(!is_version(""));
    }
}
