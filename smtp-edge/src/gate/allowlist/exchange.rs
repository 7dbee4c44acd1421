//! Exchange Online's port-25 source ranges: the bundled copy, and the import of
//! a saved Microsoft 365 endpoints web-service answer (`/endpoints/{instance}`).

use std::path::Path;

use serde::Deserialize;

/// The bundled list (defined with the configuration, whose connectors'
/// sources are checked against it).
pub use crate::config::ranges::BUNDLED;

/// Errors reading an endpoints file.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Not JSON of the endpoints web service's shape.
    #[error("{path} is not a Microsoft 365 endpoints JSON list: {source}")]
    Json {
        /// File.
        path: String,
        /// Cause (with line and column).
        source: serde_json::Error,
    },
    /// An address in the file does not parse.
    #[error("{path}: endpoint set {id}: bad address `{ip}`: {source}")]
    BadAddress {
        /// File.
        path: String,
        /// Endpoint set id.
        id: i64,
        /// Text.
        ip: String,
        /// Cause.
        source: Box<super::spec::SpecError>,
    },
    /// No endpoint set matched.
    #[error("{0}: no endpoint set has serviceArea Exchange and TCP port 25")]
    NothingSelected(String),
    /// Far more prefixes than Exchange Online has ever published.
    #[error("{0}: more than {MAX_PREFIXES} prefixes in the Exchange sets with TCP port 25")]
    TooMany(String),
}

/// The most prefixes a selection may hold (Exchange Online publishes six for
/// TCP 25); more is not the service's answer.
pub const MAX_PREFIXES: usize = 4096;

/// One endpoint set as the web service publishes it (fields we need).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndpointSet {
    id: i64,
    service_area: String,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    tcp_ports: Option<String>,
    #[serde(default)]
    urls: Vec<String>,
}

/// The selection from an endpoints file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    /// Endpoint set ids that matched.
    pub sets: Vec<i64>,
    /// Their ranges, deduplicated, in file order.
    pub ranges: Vec<String>,
    /// Their URLs (informational).
    pub urls: Vec<String>,
}

/// Whether a `tcpPorts` value ("25,587", "1000-2000", "25") includes `port`.
pub fn ports_include(spec: &str, port: u16) -> bool {
    spec.split(',')
        .map(str::trim)
        .any(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                (Ok(a), Ok(b)) => (a..=b).contains(&port),
                _ => false,
            },
            None => part.parse::<u16>() == Ok(port),
        })
}

/// Reads a saved endpoints answer and selects the sets whose serviceArea is
/// Exchange and whose TCP ports include 25 (not by id: ids change).
pub fn import(path: &Path) -> Result<Selection, ImportError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: shown.clone(),
        source,
    })?;
    select(&text, &shown)
}

/// [`import`] on text already read; `origin` names it in errors.
pub fn select(text: &str, origin: &str) -> Result<Selection, ImportError> {
    let sets: Vec<EndpointSet> =
        serde_json::from_str(text).map_err(|source| ImportError::Json {
            path: origin.to_string(),
            source,
        })?;
    let mut sel = Selection {
        sets: Vec::new(),
        ranges: Vec::new(),
        urls: Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    for set in sets {
        let port25 = set
            .tcp_ports
            .as_deref()
            .is_some_and(|p| ports_include(p, 25));
        if !set.service_area.eq_ignore_ascii_case("Exchange") || !port25 {
            continue;
        }
        for ip in &set.ips {
            let canonical =
                super::spec::canonical(ip).map_err(|source| ImportError::BadAddress {
                    path: origin.to_string(),
                    id: set.id,
                    ip: ip.clone(),
                    source: Box::new(source),
                })?;
            if seen.insert(canonical.clone()) {
                if sel.ranges.len() == MAX_PREFIXES {
                    return Err(ImportError::TooMany(origin.to_string()));
                }
                sel.ranges.push(canonical);
            }
        }
        sel.sets.push(set.id);
        sel.urls.extend(set.urls.iter().cloned());
    }
    if sel.ranges.is_empty() {
        return Err(ImportError::NothingSelected(origin.to_string()));
    }
    Ok(sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like the web service's answer, trimmed.
    const SAMPLE: &str = r#"[
      {"id":1,"serviceArea":"Exchange","serviceAreaDisplayName":"Exchange Online",
       "urls":["outlook.cloud.microsoft","outlook.office.com"],
       "ips":["13.107.6.152/31","2603:1006::/40"],"tcpPorts":"80,443","expressRoute":true,
       "category":"Optimize","required":true},
      {"id":10,"serviceArea":"Exchange","serviceAreaDisplayName":"Exchange Online",
       "urls":["*.mail.protection.outlook.com"],
       "ips":["40.92.0.0/15","40.107.0.0/16","52.100.0.0/14","104.47.0.0/17",
              "2a01:111:f400::/48","2a01:111:f403::/48"],
       "tcpPorts":"25","expressRoute":false,"category":"Allow","required":true},
      {"id":9,"serviceArea":"Exchange","urls":["smtp.office365.com"],
       "ips":["40.96.0.0/13"],"tcpPorts":"587","category":"Allow","required":false},
      {"id":46,"serviceArea":"SharePoint","ips":["40.92.0.0/15"],"tcpPorts":"25",
       "category":"Default","required":true},
      {"id":77,"serviceArea":"Common","urls":["*.example"],"tcpPorts":"443",
       "category":"Default","required":false}
    ]"#;

    #[test]
    fn selects_exchange_sets_with_port_25_by_content_not_id() {
        let sel = select(SAMPLE, "sample").unwrap();
        assert_eq!(sel.sets, vec![10]);
        assert_eq!(sel.ranges, BUNDLED.to_vec());
        assert_eq!(sel.urls, vec!["*.mail.protection.outlook.com"]);
    }

    #[test]
    fn port_lists_and_ranges() {
        assert!(ports_include("25", 25));
        assert!(ports_include("25,587", 25));
        assert!(ports_include("587, 25", 25));
        assert!(ports_include("20-30", 25));
        assert!(!ports_include("250", 25));
        assert!(!ports_include("80,443", 25));
        assert!(!ports_include("x-y", 25));
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let e = select("{not json", "f.json").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("f.json is not a Microsoft 365 endpoints JSON list")
        );
        let e = select("[]", "f.json").unwrap_err();
        assert!(matches!(e, ImportError::NothingSelected(_)));
        let e = select(
            r#"[{"id":10,"serviceArea":"Exchange","ips":["40.92.0.0/33"],"tcpPorts":"25"}]"#,
            "f.json",
        )
        .unwrap_err();
        assert!(e.to_string().contains("40.92.0.0/33"), "{e}");
        let e = import(Path::new("/nonexistent/endpoints.json")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/endpoints.json")
        );
    }
}
