//! Holes in the fence, each reproduced first with the fence off (positive
//! control), then closed:
//! - special-purpose addresses under an allowed wildcard (cloud metadata,
//!   RFC 1918, IPv6 link-local) are stripped, never fed, answered NODATA,
//!   audited, alerted, and unreachable even through a hand-added element;
//! - inbound connections to a listener the agent runs;
//! - a neighbour solicitation sent with a raw socket to a global address.
//!
//! Namespaces (the agent lab, [`netns::Agent`]; created here, removed on
//! drop): R runs allowdns and its
//! upstream; A is the agent (veth to R for DNS, veth to I for the rest, IPv4
//! and IPv6 with a link-local gateway); I is "the internet", which also holds
//! 169.254.169.254 and 10.9.9.9, as a cloud host's metadata and internal
//! network would be. Needs root, `ip`, `nft`, `sysctl` and `python3`: fails under
//! CI=true without them, skips loudly elsewhere.

use crate::common;

use std::io::Read;
use std::net::{SocketAddr, SocketAddrV6, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{AGENT_V4, Agent as Lab, DNS};
use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

/// The lab, when root and the tools are there (else skipped or failed, see
/// the module's head).
fn lab() -> Option<Lab> {
    if !netns::agent_prerequisites(&["python3"]) {
        return None;
    }
    Some(Lab::new("fence", |ns| {
        ns.ip("a", "addr add 2001:db8:2::2/64 dev a-i nodad")
            .ip("i", "addr add fe80::1/64 dev i-a nodad")
            .ip("i", "addr add 2001:db8:2::1/64 dev i-a nodad")
            .ip("a", "-6 route add default via fe80::1 dev a-i")
            // The internet, the metadata service and an internal host, all in I.
            .ip("i", "addr add 203.0.113.0/24 dev lo")
            .ip("i", "addr add 169.254.169.254/32 dev lo")
            .ip("i", "addr add 10.9.9.9/32 dev lo")
            .ip("i", "addr add 2001:db8:3::10/128 dev lo")
            .ip("i", "addr add 2001:db8:3::99/128 dev lo")
    }))
}

/// The index of A's link to I, for link-local addresses.
fn agent_ifindex(lab: &Lab) -> u32 {
    let (ok, out) = sh_out(&["ip", "-n", &lab.a, "-o", "link", "show", "a-i"]);
    assert!(ok, "{out}");
    out.split(':').next().unwrap().trim().parse().unwrap()
}

fn connect_from(ns: PathBuf, addr: SocketAddr) -> bool {
    in_ns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(800))
            .is_ok_and(|mut s| netns::echo(&mut s))
    })
}

const ZONE: &str = "$ORIGIN cdn.test.\n$TTL 300\n@ IN SOA ns.cdn.test. h.cdn.test. 1 3600 600 86400 5\n@ IN NS ns.cdn.test.\nns IN A 127.0.0.1\n\
    meta IN A 169.254.169.254\nint IN A 10.9.9.9\nll6 IN AAAA fe80::1\npub IN A 203.0.113.10\n\
    mixed IN A 10.9.9.9\nmixed IN A 203.0.113.11\nv6 IN AAAA 2001:db8:3::10\n";

/// The escape as reported: names under an allowed wildcard point at cloud
/// metadata, the internal network and IPv6 link-local.
#[test]
fn special_purpose_addresses_are_never_handed_out_or_reached() {
    let Some(lab) = lab() else { return };
    netns::echo_server(lab.netns(&lab.i), "[::]:80");
    let upstream = lab.upstream_in_r("cdn.test.zone", ZONE);
    let up = upstream.addr.to_string();
    let server: SocketAddr = format!("{DNS}:53").parse().unwrap();
    let scope = agent_ifindex(&lab);
    let ll6 = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 80, 0, scope));
    let a = || lab.netns(&lab.a);
    let lookup = |name: &'static str, t: RecordType| in_ns(a(), move || query(server, name, t));

    // Positive control: the same wildcard, opted in to every range it is
    // pointed at (the fence off): handed out, fed, reached.
    let open = lab.fence(
        "open.yaml",
        "agent_name: cdn\nallowed_dynamic_resolution:\n  - pattern: \"*.cdn.test\"\n    private: [169.254.0.0/16, 10.0.0.0/8, fe80::/10]\nfirewall:\n  netns: NETNS\n",
    );
    let audit_open = lab.dir.0.join("open.jsonl");
    let dns = lab.serve_in_r(&open, &up, &["--audit-log", audit_open.to_str().unwrap()]);
    for (name, t, ip) in [
        ("meta.cdn.test", RecordType::A, "169.254.169.254"),
        ("int.cdn.test", RecordType::A, "10.9.9.9"),
        ("ll6.cdn.test", RecordType::AAAA, "fe80::1"),
    ] {
        let m = lookup(name, t);
        let got: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(got, vec![ip.to_string()], "control: {name} handed out");
    }
    assert!(lab.set("allowed_v4").contains("169.254.169.254"));
    assert!(lab.set("allowed_v4").contains("10.9.9.9"));
    assert!(lab.set("allowed_v6").contains("fe80::1"));
    assert!(
        connect_from(a(), "169.254.169.254:80".parse().unwrap()),
        "control: metadata reached"
    );
    assert!(
        connect_from(a(), "10.9.9.9:80".parse().unwrap()),
        "control: internal host reached"
    );
    assert!(connect_from(a(), ll6), "control: IPv6 link-local reached");
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");

    // The default: the same wildcard, no opt-in.
    let closed = lab.fence(
        "closed.yaml",
        "agent_name: cdn\nallowed_dynamic_resolution:\n  - \"*.cdn.test\"\nfirewall:\n  netns: NETNS\n",
    );
    let audit = lab.dir.0.join("closed.jsonl");
    let dns = lab.serve_in_r(&closed, &up, &["--audit-log", audit.to_str().unwrap()]);
    for (name, t) in [
        ("meta.cdn.test", RecordType::A),
        ("int.cdn.test", RecordType::A),
        ("ll6.cdn.test", RecordType::AAAA),
    ] {
        let m = lookup(name, t);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{name}: NODATA, not SERVFAIL"
        );
        assert!(m.answers.is_empty(), "{name}: {:?}", m.answers);
        assert!(
            m.authorities
                .iter()
                .any(|r| matches!(r.data, RData::SOA(_))),
            "{name}: NODATA carries an SOA"
        );
    }
    // One bad address among good ones: only it goes.
    let m = lookup("mixed.cdn.test", RecordType::A);
    let got: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(got, vec!["203.0.113.11".to_string()]);
    assert_eq!(lookup("pub.cdn.test", RecordType::A).answers.len(), 1);
    // Not fed...
    let v4 = lab.set("allowed_v4");
    assert_lacks(&v4, "169.254.169.254");
    assert_lacks(&v4, "10.9.9.9");
    assert_has(&v4, "203.0.113.11");
    assert!(!lab.set("allowed_v6").contains("fe80::1"));
    // ...unreachable, even through elements added by hand (or left stale).
    lab.nft("add element inet allowdns allowed_v4 '{ 169.254.169.254 timeout 1h, 10.9.9.9 timeout 1h }'");
    lab.nft("add element inet allowdns allowed_v6 '{ fe80::1 timeout 1h }'");
    assert!(
        !connect_from(a(), "169.254.169.254:80".parse().unwrap()),
        "metadata reached"
    );
    assert!(
        !connect_from(a(), "10.9.9.9:80".parse().unwrap()),
        "internal host reached"
    );
    assert!(!connect_from(a(), ll6), "IPv6 link-local reached");
    // Public addresses still work, IPv6 too (neighbour discovery on the link).
    assert!(connect_from(a(), "203.0.113.11:80".parse().unwrap()));
    let _ = sh_out(&["ip", "-n", &lab.a, "neigh", "flush", "dev", "a-i"]);
    assert_eq!(lookup("v6.cdn.test", RecordType::AAAA).answers.len(), 1);
    assert!(
        connect_from(a(), "[2001:db8:3::10]:80".parse().unwrap()),
        "IPv6 through the fence"
    );

    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    assert_has(&stderr, "SPECIAL-PURPOSE ADDRESS STRIPPED");
    assert_has(
        &stderr,
        "Stripped: 169.254.169.254 (link-local (cloud metadata))",
    );
    assert!(
        stderr.contains("more answers to 10.200.1.2"),
        "aggregated: {stderr}"
    );
    let records = read_audit(&audit);
    let stripped = |qname: &str| {
        records
            .iter()
            .find(|r| r["qname"] == qname)
            .map(|r| (r["rcode"].clone(), r["stripped"].clone()))
            .unwrap()
    };
    assert_eq!(
        stripped("meta.cdn.test").1,
        serde_json::json!(["169.254.169.254"])
    );
    assert_eq!(stripped("meta.cdn.test").0, "NOERROR");
    assert_eq!(stripped("int.cdn.test").1, serde_json::json!(["10.9.9.9"]));
    assert_eq!(stripped("ll6.cdn.test").1, serde_json::json!(["fe80::1"]));
    assert_eq!(
        stripped("mixed.cdn.test").1,
        serde_json::json!(["10.9.9.9"])
    );
    assert!(stripped("pub.cdn.test").1.is_null());
}

/// An agent's listener, reached from the internet: open without the fence,
/// closed with it, open again on a port the policy lists.
#[test]
fn inbound_connections_reach_only_listed_ports() {
    let Some(lab) = lab() else { return };
    netns::echo_server(lab.netns(&lab.a), "0.0.0.0:9090");
    netns::echo_server(lab.netns(&lab.a), "0.0.0.0:8080");
    let i = || lab.netns(&lab.i);
    let port = |p: u16| SocketAddr::new(AGENT_V4.parse().unwrap(), p);
    assert!(
        connect_from(i(), port(9090)),
        "control: the agent's listener is reachable"
    );
    lab.fence(
        "in.yaml",
        "agent_name: dev\nexpected_outbound:\n  - destination: x.test\ninbound:\n  - port: 8080\n    protocol: TCP\nfirewall:\n  netns: NETNS\n",
    );
    assert!(
        !connect_from(i(), port(9090)),
        "an unlisted port is reachable from outside"
    );
    assert!(connect_from(i(), port(8080)), "the listed port is closed");
    let counters = lab.nft("list chain inet allowdns input");
    assert_has(&counters, "ingress denied");
    lab.unfence();
    assert!(
        connect_from(i(), port(9090)),
        "control again: the fence was what closed it"
    );
}

/// The receiver in I exits 0 once it sees an ICMPv6 message carrying `marker`.
const RECEIVE: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.settimeout(0.2)
print("ready", flush=True)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        data = s.recv(2048)
    except socket.timeout:
        continue
    if sys.argv[1].encode() in data:
        print("received", flush=True)
        sys.exit(0)
sys.exit(1)
"#;

/// A neighbour solicitation with data in an option, to a global address,
/// hop limit 255: what a process with CAP_NET_RAW alone can send.
const SEND: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
target = socket.inet_pton(socket.AF_INET6, sys.argv[1])
data = sys.argv[2].encode()
data += b"\0" * (-(len(data) + 2) % 8)
ns = bytes([135, 0, 0, 0, 0, 0, 0, 0]) + target + bytes([14, (len(data) + 2) // 8]) + data
for _ in range(3):
    s.sendto(ns, (sys.argv[1], 0))
"#;

fn nd_leaves(lab: &Lab, marker: &str) -> bool {
    nd_leaves_to(lab, "2001:db8:3::99", marker)
}

fn nd_leaves_to(lab: &Lab, to: &str, marker: &str) -> bool {
    nd_between(&lab.a, &lab.i, to, marker)
}

/// Whether a solicitation to `to`, sent from namespace `from`, reaches a raw socket in `at`.
fn nd_between(from: &str, at: &str, to: &str, marker: &str) -> bool {
    let mut rx = Command::new("ip")
        .args(["netns", "exec", at, "python3", "-c", RECEIVE, marker, "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    rx.stdout.as_mut().unwrap().read_exact(&mut ready).unwrap();
    let (ok, out) = sh_out(&[
        "ip", "netns", "exec", from, "python3", "-c", SEND, to, marker,
    ]);
    // With the fence, sendto fails with EPERM: nothing left either way.
    let _ = (ok, out);
    let started = Instant::now();
    let status = rx.wait().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    status.success()
}

#[test]
fn neighbour_discovery_carries_nothing_off_the_link() {
    let Some(lab) = lab() else { return };
    assert!(
        nd_leaves(&lab, "EXFIL-control"),
        "control: the raw solicitation arrives"
    );
    lab.fence(
        "nd.yaml",
        "agent_name: nd\nexpected_outbound:\n  - destination: x.test\nfirewall:\n  netns: NETNS\n",
    );
    assert!(
        !nd_leaves(&lab, "EXFIL-fenced"),
        "a solicitation to a global address left"
    );
    let chain = lab.nft("list chain inet allowdns output");
    assert_has(&chain, "ip6 hoplimit 255");
    // To a neighbour on the link: a short solicitation passes, one with data
    // stuffed into its options does not (unfenced, it does).
    let stuffed = format!("EXFIL-{}", "x".repeat(80));
    lab.unfence();
    assert!(
        nd_leaves_to(&lab, "2001:db8:2::1", &stuffed),
        "control: stuffed ND arrives"
    );
    lab.fence(
        "nd.yaml",
        "agent_name: nd\nexpected_outbound:\n  - destination: x.test\nfirewall:\n  netns: NETNS\n",
    );
    assert!(
        nd_leaves_to(&lab, "2001:db8:2::1", "ND-short"),
        "ND to a neighbour passes"
    );
    assert!(
        !nd_leaves_to(&lab, "2001:db8:2::1", &stuffed),
        "ND options carried data to a neighbour"
    );
    // And the other way: a neighbour's stuffed solicitation does not reach the agent.
    assert!(
        nd_between(&lab.i, &lab.a, "2001:db8:2::2", "ND-short-in"),
        "ND from a neighbour passes"
    );
    assert!(
        !nd_between(&lab.i, &lab.a, "2001:db8:2::2", &stuffed),
        "ND options carried data in from a neighbour"
    );
}

/// Every variant of the printed ruleset loads into nft as shipped (1.0.6 on Debian 12).
#[test]
fn every_ruleset_variant_loads() {
    let Some(lab) = lab() else { return };
    for family in ["inet", "ip", "ip6"] {
        lab.fence(
            &format!("{family}.yaml"),
            &format!("agent_name: v\nexpected_outbound:\n  - destination: api.corp.test\n    private: [10.20.0.0/16, fd00:1::/64]\n  - destination: 192.168.7.0/24\n    port: 443\n    protocol: TCP\ninbound:\n  - port: 8080\n    protocol: TCP\n  - port: 5353\n    protocol: UDP\nfirewall:\n  netns: NETNS\n  family: {family}\n"),
        );
        lab.unfence();
    }
}

/// A UDP datagram to `first` (handed out) whose segment routing header
/// (type 4) names `last` (never handed out), sent by an unprivileged user:
/// the socket `s`, which [`routed_arrives`] sends from.
const SRH: &str = r#"
seg = lambda a: socket.inet_pton(socket.AF_INET6, a)
# next header (the kernel's), length in 8 octets, type 4, segments left 1,
# last entry 1, flags, tag; segment 0 (the kernel writes the sendto address), segment 1.
srh = bytes([0, 4, 4, 1, 1, 0, 0, 0]) + seg(last) + seg(first)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh)
"#;

/// Whether a datagram routed through 2001:db8:3::10 reaches 2001:db8:3::99 (both in I).
fn srh_arrives(lab: &Lab, marker: &str) -> bool {
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        // The system's interpreter: a user's shim under /root is not the unprivileged user's.
        "/usr/bin/python3",
    ];
    let route = ("2001:db8:3::10", "2001:db8:3::99");
    routed_arrives(lab, &nobody, SRH, route, 7020, marker)
}

/// What [`routed_arrives`] runs around a script that sets up socket `s`.
const ROUTED_ARGS: &str = "import socket, sys\nfirst, last, port, data = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()\n";
const ROUTED_SEND: &str = "for _ in range(3):\n    try:\n        s.sendto(data, (last, port))\n    except OSError as e:\n        print(e, file=sys.stderr)\n";

/// Whether the datagram `script` sends from A (run by `python`) through
/// `first` reaches `last` on `port`, in I.
fn routed_arrives(
    lab: &Lab,
    python: &[&str],
    script: &str,
    (first, last): (&str, &str),
    port: u16,
    marker: &str,
) -> bool {
    let at = SocketAddr::new(last.parse().unwrap(), port);
    let socket = in_ns(lab.netns(&lab.i), move || {
        let s = std::net::UdpSocket::bind(at).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        s
    });
    let port = port.to_string();
    let script = format!("{ROUTED_ARGS}{script}{ROUTED_SEND}");
    let mut argv = python.to_vec();
    argv.extend(["-c", &script, first, last, &port, marker]);
    let (ok, out) = lab.exec(&lab.a, &argv);
    assert!(ok, "{out}");
    let mut buf = [0u8; 64];
    matches!(socket.recv(&mut buf), Ok(n) if &buf[..n] == marker.as_bytes())
}

/// Deletes the rules of A's output chain whose listing holds `needle`.
fn delete_rules(lab: &Lab, needle: &str) {
    let listing = lab.nft("-a list chain inet allowdns output");
    for line in listing.lines().filter(|l| l.contains(needle)) {
        let handle = line.rsplit("# handle ").next().unwrap().trim();
        lab.nft(&format!("delete rule inet allowdns output handle {handle}"));
    }
}

/// A segment routing header reaches an address never handed out through an
/// allowed first segment, unless the fence drops routing headers.
#[test]
fn a_routing_header_reaches_no_address_past_the_allowed_one() {
    let Some(lab) = lab() else { return };
    for conf in ["all", "i-a"] {
        let key = format!("net.ipv6.conf.{conf}.seg6_enabled=1");
        sh(&["ip", "netns", "exec", &lab.i, "sysctl", "-qw", &key]);
    }
    assert!(
        srh_arrives(&lab, "SRH-unfenced"),
        "control: unfenced, the segment list delivers to 2001:db8:3::99"
    );
    lab.fence(
        "srh.yaml",
        "agent_name: srh\nexpected_outbound:\n  - destination: 2001:db8:3::10\nfirewall:\n  netns: NETNS\n",
    );
    // The fence without its extension-header rules: the first segment is allowed, so it leaves.
    delete_rules(&lab, "exthdr");
    assert!(
        srh_arrives(&lab, "SRH-no-rule"),
        "control: a fence checking only the first segment lets it through"
    );
    lab.unfence();
    lab.fence(
        "srh.yaml",
        "agent_name: srh\nexpected_outbound:\n  - destination: 2001:db8:3::10\nfirewall:\n  netns: NETNS\n",
    );
    assert!(
        !srh_arrives(&lab, "SRH-fenced"),
        "a routing header carried a datagram past the allowed address"
    );
    let denied = lab.nft("list chain inet allowdns output");
    assert_has(&denied, "exthdr rt exists");
}

/// The IPv4 form of the same trick: loose source routing (`IP_OPTIONS`;
/// Linux asks CAP_NET_RAW for it) through `first` to the sendto address: the
/// socket `s`, which [`routed_arrives`] sends from.
const LSRR: &str = r#"
lsrr = bytes([0x83, 7, 4]) + socket.inet_aton(first) + bytes([1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, lsrr)
"#;

/// Whether a loose-source-routed datagram through 203.0.113.10 reaches 203.0.113.99.
fn lsrr_arrives(lab: &Lab, marker: &str) -> bool {
    let route = ("203.0.113.10", "203.0.113.99");
    routed_arrives(lab, &["python3"], LSRR, route, 7022, marker)
}

#[test]
fn ipv4_source_routing_reaches_no_address_past_the_allowed_one() {
    let Some(lab) = lab() else { return };
    for conf in ["all", "default", "i-a", "lo"] {
        let key = format!("net.ipv4.conf.{conf}.accept_source_route=1");
        sh(&["ip", "netns", "exec", &lab.i, "sysctl", "-qw", &key]);
    }
    assert!(
        lsrr_arrives(&lab, "LSRR-unfenced"),
        "control: unfenced, loose source routing delivers to 203.0.113.99"
    );
    let policy = "agent_name: lsrr\nexpected_outbound:\n  - destination: 203.0.113.10\nfirewall:\n  netns: NETNS\n";
    lab.fence("lsrr.yaml", policy);
    delete_rules(&lab, "hdrlength");
    assert!(
        lsrr_arrives(&lab, "LSRR-no-rule"),
        "control: a fence checking only the destination lets it through"
    );
    lab.unfence();
    lab.fence("lsrr.yaml", policy);
    assert!(
        !lsrr_arrives(&lab, "LSRR-fenced"),
        "IPv4 options carried a datagram past the allowed address"
    );
}

/// The policy of the gateway tests: one IPv6 address, nothing else.
const ONE_V6: &str = "agent_name: gw\nexpected_outbound:\n  - destination: 2001:db8:3::10\nfirewall:\n  netns: NETNS\n";

/// Forgets every neighbour in `namespaces`, so the next connection resolves afresh.
fn forget_neighbours(namespaces: &[&str]) {
    for ns in namespaces {
        sh(&["ip", "-n", ns, "-6", "neigh", "flush", "all"]);
    }
}

/// In netns `a`: the allowed address connects, the unlisted one does not;
/// unfenced (`fence` false) both connect, the positive control.
fn gateway_case(a: PathBuf, others: &[&str], agent: &str, fenced: bool, what: &str) {
    forget_neighbours(&[agent]);
    forget_neighbours(others);
    let allowed: SocketAddr = "[2001:db8:3::10]:7030".parse().unwrap();
    let unlisted: SocketAddr = "[2001:db8:3::99]:7030".parse().unwrap();
    assert!(
        connect_from(a.clone(), allowed),
        "{what}: the allowed IPv6 address connects (fenced: {fenced})"
    );
    assert_eq!(
        connect_from(a, unlisted),
        !fenced,
        "{what}: the unlisted IPv6 address connects only unfenced (fenced: {fenced})"
    );
}

/// On the agent lab: unfenced, both addresses connect (the positive
/// control); fenced by [`ONE_V6`], only the allowed one.
fn gateway_cases(lab: &Lab, what: &str) {
    netns::echo_server(lab.netns(&lab.i), "[::]:7030");
    let others = [lab.i.as_str()];
    gateway_case(lab.netns(&lab.a), &others, &lab.a, false, what);
    lab.fence("gw.yaml", ONE_V6);
    gateway_case(lab.netns(&lab.a), &others, &lab.a, true, what);
}

/// IPv6 through a gateway with only a global address (Docker's IPv6
/// bridges, static set-ups): its advertisements come from that address.
#[test]
fn ipv6_works_through_a_global_gateway() {
    let Some(lab) = lab() else { return };
    lab.ip(&lab.i, "addr del fe80::1/64 dev i-a");
    lab.ip(&lab.a, "-6 route replace default via 2001:db8:2::1 dev a-i");
    gateway_cases(&lab, "global gateway");
    // The gateway resolves the agent: the agent's advertisement goes unicast to its global address.
    forget_neighbours(&[&lab.i]);
    in_ns(lab.netns(&lab.i), || {
        let s = std::net::UdpSocket::bind("[2001:db8:2::1]:0").unwrap();
        let _ = s.send_to(b"x", "[2001:db8:2::2]:9");
    });
    std::thread::sleep(Duration::from_millis(500));
    let (_, seen) = sh_out(&["ip", "-n", &lab.i, "-6", "neigh", "show", "2001:db8:2::2"]);
    assert!(
        seen.contains("lladdr"),
        "the gateway did not resolve the agent: {seen}"
    );
    let hops = lab.set("nd_next_hops");
    assert_has(&hops, "2001:db8:2::1");
}

/// IPv6 through a link-local gateway, as SLAAC and most routers give it.
#[test]
fn ipv6_works_through_a_link_local_gateway() {
    let Some(lab) = lab() else { return };
    gateway_cases(&lab, "link-local gateway");
}

/// A neighbour on an on-link global prefix, reached with no router at all.
#[test]
fn an_on_link_global_neighbour_is_reached_directly() {
    let Some(lab) = lab() else { return };
    for net in ["2001:db8:3::10/128", "2001:db8:3::99/128"] {
        lab.ip(&lab.i, &format!("addr del {net} dev lo"));
        let on_link = net.replace("/128", "/64");
        lab.ip(&lab.i, &format!("addr add {on_link} dev i-a nodad"));
    }
    lab.ip(&lab.a, "-6 route del default");
    lab.ip(&lab.a, "-6 route add 2001:db8:3::/64 dev a-i");
    gateway_cases(&lab, "on-link neighbour");
}

/// The agent behind pasta (the host's side is namespace W): pasta answers
/// neighbour discovery for the gateway it copies from W.
struct PastaLab {
    w: String,
    a: String,
    pasta: std::process::Child,
    _ns: netns::Lab,
}

impl PastaLab {
    fn create() -> PastaLab {
        let ns = netns::Lab::new("fence", &["w", "p", "pa"])
            .veth(
                ("w", "w0", "198.51.100.1/28"),
                ("p", "w1", "198.51.100.14/28"),
            )
            .ip("w", "addr add 2001:db8:1::1/64 dev w0 nodad")
            .ip("p", "addr add 2001:db8:1::fe/64 dev w1 nodad")
            .ip("w", "route add default via 198.51.100.14")
            .ip("w", "-6 route add default via 2001:db8:1::fe")
            .ip("w", "addr add 2001:db8:3::10/128 dev lo")
            .ip("w", "addr add 2001:db8:3::99/128 dev lo");
        PastaLab {
            w: ns.name("w").to_string(),
            a: ns.name("pa").to_string(),
            pasta: Command::new("true").spawn().unwrap(),
            _ns: ns,
        }
    }

    /// Attaches pasta to A from W, as `pasta --config-net --netns` does it by hand.
    fn attach(&mut self) {
        let pid = std::env::temp_dir().join(format!("fence-pasta-{}.pid", self.a));
        let _ = std::fs::remove_file(&pid);
        self.pasta = Command::new("ip")
            .args(["netns", "exec", &self.w, "pasta", "--config-net", "--netns"])
            .arg(format!("/run/netns/{}", self.a))
            .args(["--runas", "0", "-f", "-q", "--pid"])
            .arg(&pid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, routes) = sh_out(&["ip", "-n", &self.a, "-6", "route", "show", "default"]);
            if routes.contains("via") {
                break;
            }
            assert!(Instant::now() < deadline, "pasta gave A no IPv6 route");
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(&pid);
    }
}

impl Drop for PastaLab {
    fn drop(&mut self) {
        let _ = self.pasta.kill();
        let _ = self.pasta.wait();
    }
}

#[test]
fn ipv6_works_through_pasta() {
    if !netns::agent_prerequisites(&["python3", "pasta"]) {
        return;
    }
    // pasta forwards in user space: connections are timed out at 800 ms.
    let _alone = alone();
    let mut lab = PastaLab::create();
    lab.attach();
    let a = PathBuf::from(format!("/run/netns/{}", lab.a));
    netns::echo_server(PathBuf::from(format!("/run/netns/{}", lab.w)), "[::]:7030");
    gateway_case(a.clone(), &[], &lab.a, false, "pasta");
    let dir = TempDir::new("fence-pasta");
    let policy = dir.write("gw.yaml", &ONE_V6.replace("NETNS", &lab.a));
    let ruleset = nft_ruleset(&policy, DNS);
    let file = dir.write("gw.nft", &ruleset);
    netns::nft_file(&lab.a, &file);
    gateway_case(a, &[], &lab.a, true, "pasta");
}

/// `curl` from A: its exit code and how long it took.
fn curl_from(lab: &Lab, url: &str) -> (i32, Duration) {
    let started = Instant::now();
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.a,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "3",
            url,
        ])
        .status()
        .unwrap();
    (status.code().unwrap_or(-1), started.elapsed())
}

/// A denied destination is rejected (curl exit 7 at once), so an agent
/// falls back; `deny_action: drop` keeps the silence (exit 28, timed out). A
/// closed port on an allowed address is refused at once as well.
#[test]
fn denied_destinations_fail_fast_unless_the_policy_drops() {
    let Some(lab) = lab() else { return };
    netns::echo_server(lab.netns(&lab.i), "[::]:7040");
    let urls = ["http://203.0.113.20:7040/", "http://[2001:db8:3::99]:7040/"];
    for url in urls {
        let addr: SocketAddr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        assert!(
            connect_from(lab.netns(&lab.a), addr),
            "control: {url} connects unfenced"
        );
    }
    let policy = |action: &str| {
        format!(
            "agent_name: fast\nexpected_outbound:\n  - destination: 203.0.113.10\nfirewall:\n  netns: NETNS\n{action}"
        )
    };
    lab.fence("reject.yaml", &policy(""));
    for url in urls {
        let (code, took) = curl_from(&lab, url);
        assert_eq!(code, 7, "{url}: rejected, curl fails to connect");
        assert!(
            took < Duration::from_secs(1),
            "{url}: rejected at once, took {took:?}"
        );
    }
    let (code, took) = curl_from(&lab, "http://203.0.113.10:7041/");
    assert_eq!(code, 7, "a closed port on an allowed address is refused");
    assert!(
        took < Duration::from_secs(1),
        "refused at once, took {took:?}"
    );
    lab.unfence();
    lab.fence("drop.yaml", &policy("  deny_action: drop\n"));
    for url in urls {
        let (code, took) = curl_from(&lab, url);
        assert_eq!(code, 28, "{url}: dropped, curl times out");
        assert!(took >= Duration::from_secs(3), "{url}: {took:?}");
    }
}

/// `allowdns selftest --netns`: what it printed and whether it passed.
fn selftest(lab: &Lab, extra: &[&str]) -> (bool, String) {
    let mut args = vec![bin(), "selftest", "--netns", &lab.a];
    args.extend_from_slice(extra);
    sh_out(&args)
}

/// The self-test fails on a namespace without the fence, and on a fence a
/// hand-added element opens to the canary; it passes on the fence as printed.
#[test]
fn selftest_tells_a_holding_fence_from_a_broken_one() {
    let Some(lab) = lab() else { return };
    // The canary's address, reachable from A once nothing stops it.
    lab.ip(&lab.i, "addr add 192.0.2.1/32 dev lo");
    netns::echo_server(lab.netns(&lab.i), "0.0.0.0:9");
    let (ok, out) = selftest(&lab, &["--dns", DNS]);
    assert!(!ok, "unfenced, the self-test fails:\n{out}");
    assert_has(&out, "FAIL ruleset");
    assert_has(&out, "FAIL canary");
    let policy = lab.fence(
        "self.yaml",
        "agent_name: self\nexpected_outbound:\n  - destination: x.test\nfirewall:\n  netns: NETNS\n",
    );
    let audit = lab.dir.0.join("self.jsonl");
    let dns = lab.serve_in_r(&policy, "none", &["--audit-log", audit.to_str().unwrap()]);
    let (ok, out) = selftest(&lab, &["--dns", DNS]);
    assert!(ok, "{out}\n{}", dns.stderr());
    for check in [
        "ok   ruleset",
        "ok   canary",
        "ok   dns elsewhere",
        "ok   dns to allowdns",
    ] {
        assert!(out.contains(check), "{check}: {out}");
    }
    assert_has(&out, "the fence holds");
    // A hand-added element opens the canary: the fence no longer holds.
    lab.nft("add element inet allowdns allowed_v4 { 192.0.2.1 }");
    let (ok, out) = selftest(&lab, &["--dns", DNS]);
    assert!(!ok, "{out}");
    assert_has(&out, "FAIL canary");
    assert_has(&out, "got through");
}
