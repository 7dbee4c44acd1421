//! The next-hop resolver (`smtp_edge::resolve`) against a real authoritative
//! name server: NSD on 127.0.0.1, serving the private zone `test.` with
//! documentation addresses only. The resolver asks nothing but that server,
//! so no query leaves the machine.
//!
//! Every wait is bounded: NSD must answer within 5 s, the resolver's timeout
//! is 1 s.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use smtp_edge::config::dns::Dns;
use smtp_edge::outbound::routing::SmartHost;
use smtp_edge::resolve::{MxHost, ResolveError, Resolver};
use smtp_edge_tests::nsd::Nsd;
use smtp_edge_tests::ports::free_port_udp_tcp;

const ZONE: &str = r#"$ORIGIN test.
$TTL 300
@               SOA   ns.test. hostmaster.test. 1 3600 600 86400 300
@               NS    ns.test.
ns              A     127.0.0.1

; Preferences 10, 20, 20 and 30.
multi           MX    10 mx1.multi.test.
multi           MX    20 mx2.multi.test.
multi           MX    20 mx3.multi.test.
multi           MX    30 mx4.multi.test.
mx1.multi       A     192.0.2.1
mx2.multi       A     192.0.2.2
mx2.multi       A     192.0.2.22
mx2.multi       AAAA  2001:db8::2
mx3.multi       AAAA  2001:db8::3
mx4.multi       A     198.51.100.4

; No MX: the domain's own addresses are the implicit MX.
fallback        A     192.0.2.10
fallback        AAAA  2001:db8::10

; RFC 7505 null MX.
nullmx          MX    0 .

; MX hosts without addresses: one does not exist, one has only a TXT record.
noaddr          MX    10 gone.noaddr.test.
noaddr          MX    20 txtonly.noaddr.test.
txtonly.noaddr  TXT   "no address here"

; The preferred MX host has no address, the next one has.
partial         MX    10 gone.partial.test.
partial         MX    20 mx.partial.test.
mx.partial      A     203.0.113.20

; The only MX host is outside every zone NSD serves: REFUSED, a temporary failure.
elsewhere       MX    10 mx.elsewhere.example.

; The domain exists, with neither MX nor address records.
nodata          TXT   "nothing for mail"

; A smart host.
relay           A     203.0.113.25
relay           AAAA  2001:db8::25
"#;

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

#[tokio::test]
async fn mx_order_and_shuffle() {
    let nsd = Nsd::start(ZONE);
    let r = nsd.resolver();
    let mut orders = HashSet::new();
    for i in 0..64 {
        // Any case, with or without the trailing dot.
        let domain = if i % 2 == 0 {
            "multi.test"
        } else {
            "MULTI.Test."
        };
        let hosts = r.mx(domain).await.expect("MX of multi.test");
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        let prefs: Vec<u16> = hosts.iter().map(|h| h.preference).collect();
        assert_eq!(prefs, [10, 20, 20, 30], "{hosts:?}");
        assert_eq!(names[0], "mx1.multi.test");
        assert_eq!(names[3], "mx4.multi.test");
        orders.insert((names[1].to_string(), names[2].to_string()));

        for h in &hosts {
            match h.name.as_str() {
                "mx1.multi.test" => assert_eq!(h.addrs, [sa("192.0.2.1:25")]),
                "mx2.multi.test" => {
                    // IPv6 first, then the families alternate.
                    assert_eq!(h.addrs.len(), 3);
                    assert_eq!(h.addrs[0], sa("[2001:db8::2]:25"));
                    assert!(h.addrs[1].is_ipv4() && h.addrs[2].is_ipv4());
                    let v4: HashSet<SocketAddr> = h.addrs[1..].iter().copied().collect();
                    assert_eq!(v4, HashSet::from([sa("192.0.2.2:25"), sa("192.0.2.22:25")]));
                }
                "mx3.multi.test" => assert_eq!(h.addrs, [sa("[2001:db8::3]:25")]),
                "mx4.multi.test" => assert_eq!(h.addrs, [sa("198.51.100.4:25")]),
                other => panic!("unexpected MX host {other}"),
            }
        }
    }
    assert_eq!(
        orders,
        HashSet::from([
            ("mx2.multi.test".to_string(), "mx3.multi.test".to_string()),
            ("mx3.multi.test".to_string(), "mx2.multi.test".to_string()),
        ]),
        "both orders of the equal preferences occur"
    );
}

#[tokio::test]
async fn implicit_mx_null_mx_and_errors() {
    let nsd = Nsd::start(ZONE);
    let r = nsd.resolver();

    // No MX: the domain's A and AAAA as preference 0 (RFC 5321 §5.1).
    assert_eq!(
        r.mx("fallback.test").await.expect("implicit MX"),
        vec![MxHost {
            name: "fallback.test".into(),
            preference: 0,
            addrs: vec![sa("[2001:db8::10]:25"), sa("192.0.2.10:25")],
        }]
    );

    // Null MX (RFC 7505): 5.1.10 without looking further.
    let e = r.mx("nullmx.test").await.unwrap_err();
    assert_eq!(e, ResolveError::NullMx);
    assert_eq!(e.status(), (5, 1, 10));
    assert!(e.is_permanent());

    // NXDOMAIN.
    let e = r.mx("missing.test").await.unwrap_err();
    assert_eq!(e, ResolveError::NoSuchDomain);
    assert_eq!(e.status(), (5, 1, 2));

    // The domain exists, but has neither MX nor address records.
    let e = r.mx("nodata.test").await.unwrap_err();
    assert!(matches!(e, ResolveError::NoAddress(_)), "{e:?}");
    assert_eq!(e.status(), (5, 4, 4));

    // No MX host has an address (one NXDOMAIN, one NODATA): permanent.
    let e = r.mx("noaddr.test").await.unwrap_err();
    let ResolveError::NoAddress(text) = &e else {
        panic!("expected NoAddress, got {e:?}");
    };
    assert!(text.contains("gone.noaddr.test"), "{text}");
    assert!(text.contains("txtonly.noaddr.test"), "{text}");
    assert!(e.is_permanent());

    // A host without address is skipped.
    assert_eq!(
        r.mx("partial.test").await.expect("MX of partial.test"),
        vec![MxHost {
            name: "mx.partial.test".into(),
            preference: 20,
            addrs: vec![sa("203.0.113.20:25")],
        }]
    );

    // The only MX host's lookup fails (REFUSED): temporary, not a bounce.
    let e = r.mx("elsewhere.test").await.unwrap_err();
    assert!(matches!(e, ResolveError::Temporary(_)), "{e:?}");
    assert_eq!(e.status(), (4, 4, 3));
    assert!(!e.is_permanent());

    // A zone the server does not serve (REFUSED).
    let e = r.mx("mail.example").await.unwrap_err();
    assert!(matches!(e, ResolveError::Temporary(_)), "{e:?}");

    // `.invalid` (RFC 6761) never exists; hickory answers without asking.
    assert_eq!(r.mx("mail.invalid").await, Err(ResolveError::NoSuchDomain));

    // Address literals are not looked up.
    assert_eq!(
        r.mx("[203.0.113.7]").await.expect("literal"),
        vec![MxHost {
            name: "203.0.113.7".into(),
            preference: 0,
            addrs: vec![sa("203.0.113.7:25")],
        }]
    );
}

#[tokio::test]
async fn smart_hosts() {
    let nsd = Nsd::start(ZONE);
    let r = nsd.resolver();
    let host = SmartHost::parse("relay.test:587").expect("smart host");
    assert_eq!(
        r.smart_host(&host.host, host.port)
            .await
            .expect("relay.test"),
        vec![sa("[2001:db8::25]:587"), sa("203.0.113.25:587")]
    );
    let host = SmartHost::parse("203.0.113.9:2525").expect("smart host");
    assert_eq!(
        r.smart_host(&host.host, host.port).await.expect("literal"),
        vec![sa("203.0.113.9:2525")]
    );
    // Our own configuration at fault: the mail waits, it does not bounce.
    for name in ["nosuch.test", "nodata.test"] {
        let host = SmartHost::parse(name).expect("smart host");
        let e = r.smart_host(&host.host, host.port).await.unwrap_err();
        assert!(matches!(e, ResolveError::Temporary(_)), "{name}: {e:?}");
    }
}

#[tokio::test]
async fn unreachable_and_silent_servers_are_temporary() {
    // Nothing listens: ICMP port unreachable, or a timeout.
    let closed = free_port_udp_tcp();
    // Bound, never read: every query times out.
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let silent_addr = silent.local_addr().expect("local address");
    for server in [format!("127.0.0.1:{closed}"), silent_addr.to_string()] {
        let r = Resolver::new(&Dns {
            nameservers: vec![server.clone()],
            timeout_seconds: 1,
        })
        .expect("resolver");
        let started = Instant::now();
        let e = tokio::time::timeout(Duration::from_secs(20), r.mx("multi.test"))
            .await
            .expect("bounded by the resolver's timeout")
            .unwrap_err();
        assert!(matches!(e, ResolveError::Temporary(_)), "{server}: {e:?}");
        assert!(!e.is_permanent());
        assert!(started.elapsed() < Duration::from_secs(15));
    }
    drop(silent);
}
