//! Who is calling: the client address of a request, and the per-source
//! allow-list it is checked against.
//!
//! The client address is the TCP peer, unless the peer is one of
//! `server.trusted_proxies`. Then, and only then, `X-Forwarded-For` is read,
//! right to left (each proxy appends the address it saw to the right), and
//! the first address that is not itself a trusted proxy is the client.
//! Entries left of it were written by the client and could say anything, so
//! they are never looked at: a client that is not a trusted proxy cannot
//! choose its address by sending the header itself.
//!
//! Two edge cases, decided so that a mistake fails closed:
//!
//! - an entry that is not an IP address (or more than [`MAX_FORWARDED_HOPS`]
//!   entries) stops the walk, and the client is the last trusted address
//!   seen, i.e. a proxy of ours. Provider allow-lists never name our own
//!   proxies, so such a request is refused where an allow-list applies and
//!   recorded with the proxy's address elsewhere, never with a made-up one;
//! - a chain made only of trusted proxies resolves to its leftmost entry.
//!
//! Only `X-Forwarded-For` is read: `Forwarded` (RFC 7239) and `X-Real-Ip`
//! are ignored. IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a
//! dual-stack listener reports) are compared as the IPv4 address they carry.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Most `X-Forwarded-For` entries walked; a longer chain stops there.
pub const MAX_FORWARDED_HOPS: usize = 32;

/// Parses a CIDR block (`10.0.0.0/8`, `2001:db8::/32`) or a single address
/// (`192.0.2.7`, taken as `/32` or `/128`). A block with bits set past its
/// prefix (`10.0.0.1/8`) is refused: it is usually a typo for another block.
/// The error says what is wrong and never panics.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    if t != text || t.is_empty() {
        return Err(format!(
            "{text:?} is not a CIDR (like 10.0.0.0/8 or 2001:db8::/32)"
        ));
    }
    if !t.contains('/') {
        return t
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{text:?} is not a CIDR (like 10.0.0.0/8 or 2001:db8::/32)"));
    }
    let net = t
        .parse::<IpNet>()
        .map_err(|_| format!("{text:?} is not a CIDR (like 10.0.0.0/8 or 2001:db8::/32)"))?;
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has bits set past its prefix; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// A set of CIDR blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cidrs(Vec<IpNet>);

impl Cidrs {
    /// Parses every entry; the errors name each bad entry by index.
    pub fn parse(entries: &[String]) -> Result<Cidrs, Vec<(usize, String)>> {
        let mut nets = Vec::with_capacity(entries.len());
        let mut bad = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match parse_cidr(e) {
                Ok(n) => nets.push(n),
                Err(why) => bad.push((i, why)),
            }
        }
        if bad.is_empty() {
            Ok(Cidrs(nets))
        } else {
            Err(bad)
        }
    }

    /// Whether `ip` is in one of the blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// Whether there is no block at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Resolves the client address of a request whose TCP peer is `peer`.
/// See the module documentation for the algorithm.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &Cidrs) -> IpAddr {
    let mut client = peer.to_canonical();
    if !trusted.contains(client) {
        return client;
    }
    // Every X-Forwarded-For field line, in order, is one list (RFC 9110 §5.3).
    let mut entries = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            // Not ASCII: the walk stops here, as at any malformed entry.
            entries.push(None);
            continue;
        };
        entries.extend(text.split(',').map(|e| parse_forwarded(e.trim())));
    }
    for (hops, entry) in entries.into_iter().rev().enumerate() {
        if hops >= MAX_FORWARDED_HOPS {
            break;
        }
        let Some(ip) = entry else { break };
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, optionally with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`), as some proxies write it.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    let bracketed = entry.strip_prefix('[')?.strip_suffix(']')?;
    bracketed
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|ip| IpAddr::V6(ip).to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Cidrs {
        Cidrs::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn parses_blocks_and_single_addresses() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().prefix_len(), 8);
        assert_eq!(parse_cidr("2001:db8::/32").unwrap().prefix_len(), 32);
        assert_eq!(parse_cidr("192.0.2.7").unwrap().prefix_len(), 32);
        assert_eq!(parse_cidr("2001:db8::7").unwrap().prefix_len(), 128);
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().prefix_len(), 0);
        assert_eq!(parse_cidr("::/0").unwrap().prefix_len(), 0);
        for bad in [
            "10.0.0/8",
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0.0/",
            "/8",
            "",
            " 10.0.0.0/8",
            "10.0.0.0/8 ",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "example.com/8",
            "256.0.0.0/8",
        ] {
            let e = parse_cidr(bad).unwrap_err();
            assert!(e.contains("is not a CIDR"), "{bad:?}: {e}");
        }
        assert_eq!(
            parse_cidr("10.0.0.1/8").unwrap_err(),
            "\"10.0.0.1/8\" has bits set past its prefix; did you mean \"10.0.0.0/8\"?"
        );
        let bad =
            Cidrs::parse(&["10.0.0.0/8".into(), "nope".into(), "::1/200".into()]).unwrap_err();
        assert_eq!(
            bad.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [1, 2],
            "every bad entry by index"
        );
    }

    #[test]
    fn matches_ipv4_blocks_at_their_edges() {
        let c = cidrs(&["10.0.0.0/8", "192.0.2.7/32"]);
        assert!(c.contains(ip("10.0.0.0")));
        assert!(c.contains(ip("10.255.255.255")));
        assert!(!c.contains(ip("11.0.0.0")));
        assert!(!c.contains(ip("9.255.255.255")));
        assert!(c.contains(ip("192.0.2.7")));
        assert!(!c.contains(ip("192.0.2.6")));
        assert!(!c.contains(ip("192.0.2.8")));
        // An IPv6 address is never in an IPv4 block, except a mapped one.
        assert!(!c.contains(ip("::a00:1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")));
        let all = cidrs(&["0.0.0.0/0"]);
        assert!(all.contains(ip("255.255.255.255")) && all.contains(ip("0.0.0.0")));
        assert!(!all.contains(ip("::1")));
        assert!(!Cidrs::default().contains(ip("10.0.0.1")));
    }

    #[test]
    fn matches_ipv6_blocks_at_their_edges() {
        let c = cidrs(&["2001:db8::/32", "fe80::1/128"]);
        assert!(c.contains(ip("2001:db8::")));
        assert!(c.contains(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!c.contains(ip("2001:db9::")));
        assert!(!c.contains(ip("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(c.contains(ip("fe80::1")));
        assert!(!c.contains(ip("fe80::2")));
        assert!(
            !c.contains(ip("32.1.13.184")),
            "an IPv4 address is not in a v6 block"
        );
        let all = cidrs(&["::/0"]);
        assert!(all.contains(ip("::")) && all.contains(ip("ffff::1")));
        assert!(!all.contains(ip("10.0.0.1")));
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_xff_says() {
        let spoofed = xff(&["203.0.113.9"]);
        assert_eq!(
            client_addr(ip("198.51.100.1"), &spoofed, &Cidrs::default()),
            ip("198.51.100.1")
        );
        // A peer that is not a trusted proxy cannot choose its address.
        let trusted = cidrs(&["10.0.0.0/8"]);
        assert_eq!(
            client_addr(ip("198.51.100.1"), &spoofed, &trusted),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn walks_xff_right_to_left_past_trusted_proxies() {
        let trusted = cidrs(&["10.0.0.0/8", "2001:db8:1::/48"]);
        let peer = ip("10.0.0.2");
        // Client-written entries left of the real client are never used.
        let h = xff(&["1.1.1.1, 203.0.113.9, 10.1.1.1"]);
        assert_eq!(client_addr(peer, &h, &trusted), ip("203.0.113.9"));
        // Several field lines are one list, in order.
        let h = xff(&["1.1.1.1, 203.0.113.9", "10.1.1.1"]);
        assert_eq!(client_addr(peer, &h, &trusted), ip("203.0.113.9"));
        // IPv6 entries, with and without brackets and ports.
        let h = xff(&["2001:db8:2::5, 2001:db8:1::1"]);
        assert_eq!(client_addr(peer, &h, &trusted), ip("2001:db8:2::5"));
        let h = xff(&["[2001:db8:2::5]:4711"]);
        assert_eq!(client_addr(peer, &h, &trusted), ip("2001:db8:2::5"));
        let h = xff(&["203.0.113.9:4711, [2001:db8:1::1]"]);
        assert_eq!(client_addr(peer, &h, &trusted), ip("203.0.113.9"));
        // A trusted peer without the header is itself the client.
        assert_eq!(client_addr(peer, &HeaderMap::new(), &trusted), peer);
        // Only trusted hops: the leftmost one.
        let h = xff(&["10.9.9.9, 10.1.1.1"]);
        assert_eq!(client_addr(peer, &h, &trusted), ip("10.9.9.9"));
        // A mapped peer is trusted as the IPv4 address it carries.
        let h = xff(&["203.0.113.9"]);
        assert_eq!(
            client_addr(ip("::ffff:10.0.0.2"), &h, &trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_malformed_chain_stops_at_the_last_trusted_address() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        // Garbage right of any real entry: the peer (a proxy of ours).
        for bad in [
            "unknown",
            "",
            "203.0.113.9 1.1.1.1",
            "300.1.1.1",
            "[10.1.1.1]",
        ] {
            assert_eq!(client_addr(peer, &xff(&[bad]), &trusted), peer, "{bad:?}");
        }
        // Garbage behind a trusted hop: that hop.
        let h = xff(&["203.0.113.9, garbage, 10.1.1.1"]);
        assert_eq!(client_addr(peer, &h, &trusted), ip("10.1.1.1"));
        // Garbage left of the client is never reached.
        let h = xff(&["garbage, 203.0.113.9, 10.1.1.1"]);
        assert_eq!(client_addr(peer, &h, &trusted), ip("203.0.113.9"));
        // An absurdly long chain of trusted hops stops after MAX_FORWARDED_HOPS.
        let long = vec!["10.0.0.7"; MAX_FORWARDED_HOPS + 5].join(", ");
        let h = xff(&[&format!("203.0.113.9, {long}")]);
        assert_eq!(client_addr(peer, &h, &trusted), ip("10.0.0.7"));
        // A header value that is not ASCII is untrustworthy as a whole.
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"203.0.113.9\xff").unwrap(),
        );
        assert_eq!(client_addr(peer, &h, &trusted), peer);
    }
}
