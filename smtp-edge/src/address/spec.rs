//! Parsing of IP address specs (allowlist entries, connector sources) in the
//! forms Exchange's `RemoteIPRanges` accepts:
//! a single address, CIDR, an IPv4 address with a dotted mask, or a start–end range.
//! A range becomes the minimal set of CIDR blocks that covers it exactly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv4Subnets, Ipv6Net, Ipv6Subnets};

/// Why an allowlist entry could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// Empty text.
    #[error("empty address")]
    Empty,
    /// Not an IPv4 or IPv6 address.
    #[error("`{0}` is not an IPv4 or IPv6 address")]
    BadAddress(String),
    /// Prefix length not a number or too long for the family.
    #[error("prefix length `{len}` is invalid for {family} (0..={max}) in `{input}`")]
    BadPrefixLen {
        /// The whole entry.
        input: String,
        /// The prefix length text.
        len: String,
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// 32 or 128.
        max: u8,
    },
    /// A dotted mask whose ones are not contiguous, or a mask on IPv6.
    #[error("`{0}` is not a valid IPv4 netmask (ones must be contiguous)")]
    BadMask(String),
    /// Range whose start is after its end.
    #[error("range start {start} is after its end {end}")]
    StartAfterEnd {
        /// First address.
        start: IpAddr,
        /// Last address.
        end: IpAddr,
    },
    /// Range mixing IPv4 and IPv6.
    #[error("range `{0}` mixes IPv4 and IPv6")]
    MixedFamilies(String),
}

/// Parses one entry into the CIDR blocks it covers (normalised: host bits cleared).
///
/// ```
/// use smtp_edge::address::spec::parse;
/// assert_eq!(parse("192.0.2.0-192.0.2.5").unwrap().len(), 2);
/// assert_eq!(parse("192.0.2.7/255.255.255.0").unwrap()[0].to_string(), "192.0.2.0/24");
/// ```
pub fn parse(input: &str) -> Result<Vec<IpNet>, SpecError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(SpecError::Empty);
    }
    if let Some((start, end)) = split_range(text) {
        return parse_range(text, start, end);
    }
    if let Some((addr, len)) = text.split_once('/') {
        let addr = parse_addr(addr.trim())?;
        let len = len.trim();
        let net = match addr {
            IpAddr::V4(a) if len.contains('.') => {
                let mask: Ipv4Addr = len
                    .parse()
                    .map_err(|_| SpecError::BadMask(len.to_string()))?;
                let bits = u32::from(mask);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return Err(SpecError::BadMask(len.to_string()));
                }
                IpNet::V4(Ipv4Net::new_assert(a, bits.leading_ones() as u8))
            }
            IpAddr::V4(a) => IpNet::V4(
                parse_len(text, len, 32)
                    .map(|l| Ipv4Net::new_assert(a, l))
                    .map_err(|e| e.with_family("IPv4"))?,
            ),
            IpAddr::V6(a) => IpNet::V6(
                parse_len(text, len, 128)
                    .map(|l| Ipv6Net::new_assert(a, l))
                    .map_err(|e| e.with_family("IPv6"))?,
            ),
        };
        return Ok(vec![net.trunc()]);
    }
    Ok(vec![IpNet::from(parse_addr(text)?)])
}

/// Splits `a-b` (spaces allowed around the dash). IPv6 addresses never contain `-`.
fn split_range(text: &str) -> Option<(&str, &str)> {
    let (a, b) = text.split_once('-')?;
    Some((a.trim(), b.trim()))
}

fn parse_addr(text: &str) -> Result<IpAddr, SpecError> {
    text.parse::<IpAddr>()
        .map_err(|_| SpecError::BadAddress(text.to_string()))
}

fn parse_len(input: &str, len: &str, max: u8) -> Result<u8, SpecError> {
    match len.parse::<u8>() {
        Ok(l) if l <= max && !len.starts_with('+') => Ok(l),
        _ => Err(SpecError::BadPrefixLen {
            input: input.to_string(),
            len: len.to_string(),
            family: "",
            max,
        }),
    }
}

impl SpecError {
    fn with_family(self, fam: &'static str) -> Self {
        match self {
            SpecError::BadPrefixLen {
                input, len, max, ..
            } => SpecError::BadPrefixLen {
                input,
                len,
                family: fam,
                max,
            },
            other => other,
        }
    }
}

fn parse_range(text: &str, start: &str, end: &str) -> Result<Vec<IpNet>, SpecError> {
    let (start, end) = (parse_addr(start)?, parse_addr(end)?);
    match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => {
            if s > e {
                return Err(SpecError::StartAfterEnd { start, end });
            }
            Ok(Ipv4Subnets::new(s, e, 0).map(IpNet::V4).collect())
        }
        (IpAddr::V6(s), IpAddr::V6(e)) => {
            if s > e {
                return Err(SpecError::StartAfterEnd { start, end });
            }
            Ok(Ipv6Subnets::new(s, e, 0).map(IpNet::V6).collect())
        }
        _ => Err(SpecError::MixedFamilies(text.to_string())),
    }
}

/// The canonical text of an entry, used as its identity (`allow remove` accepts
/// any spelling that normalises to the same text).
pub fn canonical(input: &str) -> Result<String, SpecError> {
    let nets = parse(input)?;
    let text = input.trim();
    if let Some((s, e)) = split_range(text) {
        // Ranges keep their range form, with normalised addresses.
        let s: IpAddr = parse_addr(s)?;
        let e: IpAddr = parse_addr(e)?;
        if nets.len() == 1 && nets[0].network() == s && nets[0].broadcast() == e {
            return Ok(nets[0].to_string());
        }
        return Ok(format!("{s}-{e}"));
    }
    Ok(nets[0].to_string())
}

/// Host route for an address (used by `check`).
pub fn host_net(addr: IpAddr) -> IpNet {
    match addr {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new_assert(a, 32)),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new_assert(a, 128)),
    }
}

/// First and last address of a v6 network (for display).
pub fn v6_bounds(net: &Ipv6Net) -> (Ipv6Addr, Ipv6Addr) {
    (net.network(), net.broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &str) -> Vec<String> {
        parse(s).unwrap().iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn single_addresses_become_host_routes() {
        assert_eq!(nets("192.0.2.1"), ["192.0.2.1/32"]);
        assert_eq!(nets(" 2001:db8::1 "), ["2001:db8::1/128"]);
    }

    #[test]
    fn cidr_is_truncated_to_network() {
        // Microsoft's own example writes 192.168.3.1/24 for the /24.
        assert_eq!(nets("198.51.100.7/24"), ["198.51.100.0/24"]);
        assert_eq!(nets("2001:db8::1/32"), ["2001:db8::/32"]);
        assert_eq!(nets("0.0.0.0/0"), ["0.0.0.0/0"]);
    }

    #[test]
    fn dotted_masks() {
        assert_eq!(nets("203.0.113.9/255.255.255.128"), ["203.0.113.0/25"]);
        assert_eq!(nets("203.0.113.9/255.255.255.255"), ["203.0.113.9/32"]);
        assert!(matches!(
            parse("203.0.113.0/255.0.255.0"),
            Err(SpecError::BadMask(_))
        ));
    }

    #[test]
    fn bad_prefix_lengths_are_refused() {
        let e = parse("10.0.0.1/33").unwrap_err();
        assert_eq!(
            e.to_string(),
            "prefix length `33` is invalid for IPv4 (0..=32) in `10.0.0.1/33`"
        );
        let e = parse("2001:db8::/129").unwrap_err();
        assert!(e.to_string().contains("IPv6 (0..=128)"), "{e}");
        assert!(parse("10.0.0.1/-1").is_err());
        assert!(parse("10.0.0.1/+8").is_err());
        assert!(parse("10.0.0.1/").is_err());
    }

    #[test]
    fn ranges_become_minimal_cidr_sets() {
        assert_eq!(
            nets("192.0.2.0-192.0.2.5"),
            ["192.0.2.0/30", "192.0.2.4/31"]
        );
        assert_eq!(nets("192.0.2.0 - 192.0.2.255"), ["192.0.2.0/24"]);
        assert_eq!(nets("198.51.100.3-198.51.100.3"), ["198.51.100.3/32"]);
        assert_eq!(
            nets("2001:db8::-2001:db8::2"),
            ["2001:db8::/127", "2001:db8::2/128"]
        );
        // Every address is covered exactly once, nothing more.
        let total: u64 = parse("192.0.2.17-192.0.2.200")
            .unwrap()
            .iter()
            .map(|n| 1u64 << (32 - n.prefix_len()))
            .sum();
        assert_eq!(total, 200 - 17 + 1);
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(matches!(
            parse("192.0.2.9-192.0.2.1"),
            Err(SpecError::StartAfterEnd { .. })
        ));
        assert!(matches!(
            parse("192.0.2.1-2001:db8::1"),
            Err(SpecError::MixedFamilies(_))
        ));
        assert!(matches!(
            parse("mail.example"),
            Err(SpecError::BadAddress(_))
        ));
        assert_eq!(parse("  "), Err(SpecError::Empty));
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical("198.51.100.7/24").unwrap(), "198.51.100.0/24");
        assert_eq!(
            canonical("192.0.2.0 - 192.0.2.255").unwrap(),
            "192.0.2.0/24"
        );
        assert_eq!(
            canonical("192.0.2.0-192.0.2.5").unwrap(),
            "192.0.2.0-192.0.2.5"
        );
        assert_eq!(canonical("192.0.2.4").unwrap(), "192.0.2.4/32");
    }
}
