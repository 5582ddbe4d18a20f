//! Special-purpose addresses: never handed out, never fed, dropped early by
//! the ruleset, unless a policy opts in (`private:` on an entry).
//!
//! The table is IANA's IPv4 and IPv6 special-purpose registries, every range
//! marked "Globally Reachable = False" (plus multicast and 240/4, which the
//! registries leave to others), minus the documentation ranges 192.0.2.0/24,
//! 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32: nothing real lives
//! there, and the demo and tests do. IPv6 forms that embed an IPv4 address
//! are judged by what they embed: 6to4 (2002::/16) and NAT64 (64:ff9b::/96,
//! and the /96 layout of 64:ff9b:1::/48) pass when the IPv4 is public. The
//! rest of 64:ff9b:1::/48, Teredo (2001::/32, its client address obfuscated)
//! and IPv4-mapped, -compatible and -translated addresses never pass.
//!
//! The table is built once, as sorted disjoint ranges; a lookup is a binary
//! search with no allocation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::IpNet;

/// An inclusive range of addresses (IPv4 as the low 32 bits) and why it is special.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    start: u128,
    end: u128,
    label: &'static str,
}

/// IPv4 ranges never handed out, earlier entries' labels taking precedence.
const V4: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\""),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (RFC 6598)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, broadcast"),
];

/// Globally reachable islands inside the ranges above (IANA).
const V4_GLOBAL: &[&str] = &["192.0.0.9/32", "192.0.0.10/32"];

const V6: &[(&str, &str)] = &[
    ("::1/128", "loopback"),
    ("::/128", "unspecified"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("::ffff:0:0:0/96", "IPv4-translated"),
    ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    ("100::/64", "discard-only"),
    ("100:0:0:1::/64", "dummy prefix"),
    ("2001::/32", "Teredo"),
    ("2001::/23", "IETF protocol assignments"),
    ("3fff::/20", "documentation (RFC 9637)"),
    ("5f00::/16", "SRv6 SIDs"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
];

const V6_GLOBAL: &[&str] = &[
    "2001:1::1/128",
    "2001:1::2/128",
    "2001:1::3/128",
    "2001:3::/32",
    "2001:4:112::/48",
    "2001:20::/28",
    "2001:30::/28",
];

/// 64:ff9b:1::/96: the local-use NAT64 prefix's usual layout, judged by the IPv4 it embeds.
const NAT64_LOCAL_96: u128 = 0x0064_ff9b_0001_u128 << 80;
const NAT64_96: u128 = 0x0064_ff9b_u128 << 96;
const SIX_TO_FOUR: u128 = 0x2002_u128 << 112;

struct Table {
    v4: Vec<Range>,
    v6: Vec<Range>,
}

static TABLE: LazyLock<Table> = LazyLock::new(build);

fn net_range(text: &str) -> (u128, u128) {
    let net: IpNet = text.parse().expect("static CIDR");
    bounds(&net)
}

/// First and last address of a network, IPv4 in the low 32 bits.
fn bounds(net: &IpNet) -> (u128, u128) {
    match net {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// `ranges` less `[start, end]`.
fn subtract(ranges: Vec<Range>, start: u128, end: u128) -> Vec<Range> {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for r in ranges {
        if r.end < start || r.start > end {
            out.push(r);
            continue;
        }
        if r.start < start {
            out.push(Range {
                end: start - 1,
                ..r
            });
        }
        if r.end > end {
            out.push(Range {
                start: end + 1,
                ..r
            });
        }
    }
    out
}

/// Adds a range where nothing earlier covers it (earlier labels win).
fn add(ranges: &mut Vec<Range>, start: u128, end: u128, label: &'static str) {
    let mut pieces = vec![Range { start, end, label }];
    for r in ranges.iter() {
        pieces = subtract(pieces, r.start, r.end);
    }
    ranges.extend(pieces);
}

/// One family's special ranges less its globally reachable exceptions, unsorted.
fn family(special: &[(&str, &'static str)], global: &[&str]) -> Vec<Range> {
    let mut ranges = Vec::new();
    for (net, label) in special {
        let (s, e) = net_range(net);
        add(&mut ranges, s, e, label);
    }
    for net in global {
        let (s, e) = net_range(net);
        ranges = subtract(ranges, s, e);
    }
    ranges
}

fn build() -> Table {
    let mut v4 = family(V4, V4_GLOBAL);
    v4.sort_by_key(|r| r.start);
    let mut v6 = family(V6, V6_GLOBAL);
    // 64:ff9b:1::/96 is judged by the IPv4 it embeds, like the well-known prefix.
    v6 = subtract(v6, NAT64_LOCAL_96, NAT64_LOCAL_96 | 0xffff_ffff);
    for r in &v4 {
        add(
            &mut v6,
            SIX_TO_FOUR | r.start << 80,
            SIX_TO_FOUR | r.end << 80 | ((1u128 << 80) - 1),
            "6to4 of a special-purpose IPv4",
        );
        for prefix in [NAT64_96, NAT64_LOCAL_96] {
            add(
                &mut v6,
                prefix | r.start,
                prefix | r.end,
                "NAT64 of a special-purpose IPv4",
            );
        }
    }
    v6.sort_by_key(|r| r.start);
    Table { v4, v6 }
}

fn find(ranges: &[Range], x: u128) -> Option<&'static str> {
    let i = ranges.partition_point(|r| r.end < x);
    ranges.get(i).filter(|r| r.start <= x).map(|r| r.label)
}

/// Why `ip` is never handed out by default, or `None` for an address that may be.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => find(&TABLE.v4, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => find(&TABLE.v6, u128::from(v6)),
    }
}

/// The special ranges of one family less `open` (what a policy lists or opts
/// in to), merged, as CIDRs: what the ruleset drops early.
pub fn drop_list(v6: bool, open: &[IpNet]) -> Vec<IpNet> {
    let table = if v6 { &TABLE.v6 } else { &TABLE.v4 };
    let mut ranges = table.clone();
    for net in open.iter().filter(|n| matches!(n, IpNet::V6(_)) == v6) {
        let (s, e) = bounds(net);
        ranges = subtract(ranges, s, e);
    }
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<(u128, u128)> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(r.start) => last.1 = r.end,
            _ => merged.push((r.start, r.end)),
        }
    }
    let bits = if v6 { 128 } else { 32 };
    merged
        .into_iter()
        .flat_map(|(s, e)| cidrs(s, e, bits))
        .map(|(addr, len)| {
            if v6 {
                IpNet::new(IpAddr::V6(Ipv6Addr::from(addr)), len).expect("valid prefix")
            } else {
                IpNet::new(IpAddr::V4(Ipv4Addr::from(addr as u32)), len).expect("valid prefix")
            }
        })
        .collect()
}

/// `[start, end]` as the fewest aligned prefixes, in a `bits`-wide space.
fn cidrs(mut start: u128, end: u128, bits: u32) -> Vec<(u128, u8)> {
    // The last address of the 2^k block at `start` (aligned, so no overflow).
    let last = |start: u128, k: u32| {
        if k >= 128 {
            u128::MAX
        } else {
            start + ((1u128 << k) - 1)
        }
    };
    let mut out = Vec::new();
    loop {
        let mut k = start.trailing_zeros().min(bits);
        while k > 0 && last(start, k) > end {
            k -= 1;
        }
        out.push((start, (bits - k) as u8));
        let block_end = last(start, k);
        if block_end >= end {
            return out;
        }
        start = block_end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_special(s: &str) -> bool {
        special(s.parse().unwrap()).is_some()
    }

    /// Each range: the address before, its first, its last, the one after.
    /// Each range's first and last address are special; the addresses just
    /// outside it (`""`: none) pass.
    fn assert_edges(cases: &[(&str, &str, &str, &str)]) {
        for &(before, first, last, after) in cases {
            for inside in [first, last] {
                assert!(is_special(inside), "{inside} must be special");
            }
            for outside in [before, after].into_iter().filter(|s| !s.is_empty()) {
                assert!(!is_special(outside), "{outside} must pass");
            }
        }
    }

    #[test]
    fn every_ipv4_boundary() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("", "0.0.0.0", "0.255.255.255", "1.0.0.0"),
            ("9.255.255.255", "10.0.0.0", "10.255.255.255", "11.0.0.0"),
            (
                "100.63.255.255",
                "100.64.0.0",
                "100.127.255.255",
                "100.128.0.0",
            ),
            (
                "126.255.255.255",
                "127.0.0.0",
                "127.255.255.255",
                "128.0.0.0",
            ),
            (
                "169.253.255.255",
                "169.254.0.0",
                "169.254.255.255",
                "169.255.0.0",
            ),
            (
                "172.15.255.255",
                "172.16.0.0",
                "172.31.255.255",
                "172.32.0.0",
            ),
            ("191.255.255.255", "192.0.0.0", "192.0.0.8", "192.0.0.9"),
            ("192.0.0.10", "192.0.0.11", "192.0.0.255", "192.0.1.0"),
            (
                "192.167.255.255",
                "192.168.0.0",
                "192.168.255.255",
                "192.169.0.0",
            ),
            (
                "198.17.255.255",
                "198.18.0.0",
                "198.19.255.255",
                "198.20.0.0",
            ),
            ("223.255.255.255", "224.0.0.0", "255.255.255.255", ""),
        ];
        assert_edges(cases);
        assert_eq!(
            special("169.254.169.254".parse().unwrap()),
            Some("link-local (cloud metadata)")
        );
        assert!(is_special("192.0.0.170") && is_special("255.255.255.255"));
    }

    #[test]
    fn documentation_ranges_stay_usable() {
        for ip in [
            "192.0.2.0",
            "192.0.2.255",
            "198.51.100.0",
            "198.51.100.255",
            "203.0.113.0",
            "203.0.113.255",
            "2001:db8::",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert!(!is_special(ip), "{ip}");
        }
        // Their neighbours are special only where a range says so.
        assert!(!is_special("192.0.3.0") && !is_special("203.0.114.0"));
        assert!(!is_special("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff"));
    }

    #[test]
    fn every_ipv6_boundary() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("", "::", "::ffff:ffff", "::1:0:0"),
            (
                "::fffe:ffff:ffff",
                "::ffff:0:0",
                "::ffff:ffff:ffff",
                "::1:0:0:0",
            ),
            (
                "::fffe:ffff:ffff:ffff",
                "::ffff:0:0:0",
                "::ffff:0:ffff:ffff",
                "::ffff:1:0:0",
            ),
            (
                "64:ff9b:0:ffff:ffff:ffff:ffff:ffff",
                "64:ff9b:1::1:0:0",
                "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
                "64:ff9b:2::",
            ),
            (
                "ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "100::",
                "100::ffff:ffff:ffff:ffff",
                "100:0:0:2::",
            ),
            (
                "2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "2001::",
                "2001::1",
                "2001:200::",
            ),
            (
                "3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "3fff::",
                "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff",
                "3fff:1000::",
            ),
            (
                "5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "5f00::",
                "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "5f01::",
            ),
            (
                "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "fc00::",
                "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "fe00::",
            ),
            (
                "fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "fe80::",
                "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "",
            ),
            ("", "ff00::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ""),
        ];
        assert_edges(cases);
        // fe80::/10 and fec0::/10 meet at the seam: both special.
        assert!(is_special("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff") && is_special("fec0::"));
        assert!(!is_special("fe00::"), "fe00::/9 is not special");
        assert_eq!(special("fe80::1".parse().unwrap()), Some("link-local"));
        // The IETF block's globally reachable islands.
        for ip in [
            "2001:1::1",
            "2001:1::3",
            "2001:3::",
            "2001:4:112::",
            "2001:20::",
            "2001:3f:ffff::",
        ] {
            assert!(!is_special(ip), "{ip}");
        }
        for ip in [
            "2001:1::",
            "2001:1::4",
            "2001:2::",
            "2001:4:111:ffff::",
            "2001:4:113::",
            "2001:1f:ffff::",
            "2001:40::",
        ] {
            assert!(is_special(ip), "{ip}");
        }
        assert_eq!(special("2001::1".parse().unwrap()), Some("Teredo"));
    }

    #[test]
    fn embedded_ipv4_is_judged_by_what_it_embeds() {
        for ip in [
            "::ffff:8.8.8.8", // IPv4-mapped: never on the wire as IPv6
            "::ffff:10.9.9.9",
            "::10.9.9.9", // IPv4-compatible
            "::1",
            "2002:a09:909::1",      // 6to4 of 10.9.9.9
            "2002:a9fe:a9fe::",     // 6to4 of 169.254.169.254
            "2002:7f00:1::",        // 6to4 of 127.0.0.1
            "64:ff9b::a09:909",     // NAT64 of 10.9.9.9
            "64:ff9b::a9fe:a9fe",   // NAT64 of the metadata address
            "64:ff9b::c000:8",      // NAT64 of 192.0.0.8
            "64:ff9b:1::a09:909",   // local NAT64 of 10.9.9.9
            "64:ff9b:1:1::808:808", // local NAT64, another layout: unjudged, closed
        ] {
            assert!(is_special(ip), "{ip} must be stripped");
        }
        for ip in [
            "2002:808:808::1",  // 6to4 of 8.8.8.8
            "2002:c000:9::",    // 6to4 of 192.0.0.9 (a global island)
            "2002:cb00:7100::", // 6to4 of documentation
            "64:ff9b::808:808", // NAT64 of a public address passes
            "64:ff9b::c000:9",
            "64:ff9b::cb00:710a", // NAT64 of 203.0.113.10
            "64:ff9b:1::808:808", // local NAT64 of a public address passes
            "64:ff9b::",          // NAT64 of 0.0.0.0 is... judged below
        ]
        .into_iter()
        .filter(|ip| *ip != "64:ff9b::")
        {
            assert!(!is_special(ip), "{ip} must pass");
        }
        assert!(is_special("64:ff9b::"), "NAT64 of 0.0.0.0");
        // 6to4 boundaries around an embedded range.
        assert!(!is_special("2002:9ff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert!(is_special("2002:a00::"));
        assert!(is_special("2002:aff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert!(!is_special("2002:b00::"));
        assert!(!is_special("2001:db8::1"));
    }

    #[test]
    fn the_table_is_sorted_and_disjoint() {
        for table in [&TABLE.v4, &TABLE.v6] {
            for w in table.windows(2) {
                assert!(w[0].end < w[1].start, "{:?} overlaps {:?}", w[0], w[1]);
            }
        }
    }

    /// Whether a network of `list` holds `ip`.
    fn covers(list: &[IpNet], ip: &str) -> bool {
        let ip: IpAddr = ip.parse().unwrap();
        list.iter().any(|n| n.contains(&ip))
    }

    #[test]
    fn the_drop_list_covers_the_table_less_what_is_open() {
        let v4 = drop_list(false, &[]);
        let text: Vec<String> = v4.iter().map(ToString::to_string).collect();
        assert!(text.contains(&"10.0.0.0/8".to_string()), "{text:?}");
        assert!(text.contains(&"192.0.0.0/29".to_string()), "{text:?}");
        assert!(text.contains(&"192.0.0.8/32".to_string()), "{text:?}");
        assert!(text.contains(&"192.0.0.11/32".to_string()), "{text:?}");
        assert!(text.contains(&"224.0.0.0/3".to_string()), "{text:?}");
        assert!(!text.iter().any(|t| t.starts_with("192.0.2.")), "{text:?}");
        let open = drop_list(false, &["10.200.4.0/22".parse().unwrap()]);
        assert!(!covers(&open, "10.200.5.1"));
        assert!(covers(&open, "10.200.8.1"));
        // Every address the table marks is in the list, and nothing else.
        let v6 = drop_list(true, &[]);
        for (list, ip, marked) in [
            (&v4, "10.1.1.1", true),
            (&v4, "169.254.169.254", true),
            (&v4, "192.0.0.8", true),
            (&v4, "255.255.255.255", true),
            (&v4, "192.0.0.9", false),
            (&v4, "192.0.2.1", false),
            (&v4, "8.8.8.8", false),
            (&v6, "fe80::1", true),
            (&v6, "2002:a09:909::", true),
            (&v6, "64:ff9b::a9fe:a9fe", true),
            (&v6, "::ffff:1.2.3.4", true),
            (&v6, "2001:db8::1", false),
            (&v6, "64:ff9b::808:808", false),
            (&v6, "2002:808:808::", false),
            (&v6, "2001:1::1", false),
        ] {
            assert_eq!(covers(list, ip), marked, "{ip}");
        }
    }
}
