//! `[dns]`: the name servers the sending side asks for MX and address records.
//!
//! ```toml
//! [dns]
//! # Empty (the default): the servers of /etc/resolv.conf.
//! nameservers = ["127.0.0.1:5353", "[::1]:53", "192.0.2.53"]
//! timeout_seconds = 5
//! ```

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

/// The DNS port, used when a name server is written without one.
pub const DEFAULT_PORT: u16 = 53;

/// The longest accepted `timeout_seconds`.
pub const MAX_TIMEOUT_SECONDS: u64 = 60;

/// `[dns]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Recursive name servers, asked over UDP and TCP: `192.0.2.53`,
    /// `127.0.0.1:5353`, `2001:db8::53`, `[::1]:53` (port 53 unless given).
    /// Empty: the servers of the system's /etc/resolv.conf.
    pub nameservers: Vec<String>,
    /// Seconds to wait for one answer (one server, one attempt).
    pub timeout_seconds: u64,
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout_seconds: 5,
        }
    }
}

impl Dns {
    /// The name servers as socket addresses (the first problem as an error).
    pub fn servers(&self) -> Result<Vec<SocketAddr>, String> {
        self.nameservers.iter().map(|s| parse_server(s)).collect()
    }

    /// Every problem of the section, worded for a configuration error
    /// (`dns.nameservers: ...`); empty when the section is valid.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .nameservers
            .iter()
            .filter_map(|s| parse_server(s).err())
            .map(|e| format!("dns.nameservers: {e}"))
            .collect();
        if !(1..=MAX_TIMEOUT_SECONDS).contains(&self.timeout_seconds) {
            out.push(format!(
                "dns.timeout_seconds = {} is out of range (1..={MAX_TIMEOUT_SECONDS})",
                self.timeout_seconds
            ));
        }
        out
    }
}

/// Parses `192.0.2.53`, `192.0.2.53:5353`, `2001:db8::53`, `[2001:db8::53]`
/// or `[2001:db8::53]:5353`.
pub fn parse_server(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "`{text}` is not a name server address (write 192.0.2.53, 192.0.2.53:5353, \
             2001:db8::53 or [2001:db8::53]:5353)"
        )
    };
    let addr = if let Ok(ip) = t.parse::<IpAddr>() {
        SocketAddr::new(ip, DEFAULT_PORT)
    } else if let Ok(sa) = t.parse::<SocketAddr>() {
        sa
    } else if let Some(ip) = t
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|i| i.parse::<std::net::Ipv6Addr>().ok())
    {
        SocketAddr::new(IpAddr::V6(ip), DEFAULT_PORT)
    } else {
        return Err(bad());
    };
    if addr.port() == 0 {
        return Err(format!(
            "`{text}`: the port must be a number from 1 to 65535"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_parsing() {
        let d: Dns = toml::from_str("").unwrap();
        assert_eq!(d, Dns::default());
        assert_eq!(d.timeout_seconds, 5);
        assert!(d.nameservers.is_empty());
        assert!(d.problems().is_empty());

        let d: Dns = toml::from_str(
            r#"nameservers = ["127.0.0.1:5353", "[::1]:53", "192.0.2.53", "2001:db8::53", "[2001:db8::1]"]
               timeout_seconds = 2"#,
        )
        .unwrap();
        assert_eq!(
            d.servers().unwrap(),
            vec![
                "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap(),
                "192.0.2.53:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
                "[2001:db8::1]:53".parse().unwrap(),
            ]
        );
        assert!(d.problems().is_empty());
        assert!(toml::from_str::<Dns>("servers = []").is_err());
    }

    #[test]
    fn problems() {
        let d = Dns {
            nameservers: vec![
                "ns.example".into(),
                "192.0.2.1:0".into(),
                "2001:db8::1:53x".into(),
            ],
            timeout_seconds: 0,
        };
        let p = d.problems();
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].contains("ns.example"));
        assert!(p[1].contains("port"));
        assert!(p[3].contains("timeout_seconds"));
        assert!(d.servers().is_err());
    }
}
