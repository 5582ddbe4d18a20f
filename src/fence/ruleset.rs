//! `allowdns nft-ruleset`: the default-deny ruleset for an agent namespace.
//!
//! Output denies by default (IPv4 and IPv6). First, packets that name a
//! destination the header does not show are dropped, established or not: an
//! IPv6 routing, hop-by-hop or destination-options header, or IPv4 options
//! (loose or strict source routing). Accepted: loopback, established and
//! related traffic, neighbour discovery on the link only, DNS to allowdns
//! only; then special-purpose ranges (src/policy/special.rs) the policy does not
//! list are denied, so no set element can open them; then addresses in the
//! sets (any port, or address-and-port). Everything else is logged with a
//! clear prefix, to the kernel log and to an NFLOG group allowdns reads
//! (src/fence/nflog.rs), then denied: `deny_action` rejects (TCP reset or
//! ICMP administratively prohibited, so the agent fails at once) or drops.
//! Only while a `mode: monitor` policy is in force does allowdns fill the
//! monitor set that passes it instead.
//!
//! Input drops by default too: loopback, established and related traffic
//! (replies, DNS answers from allowdns included), neighbour discovery from the
//! link, and the policy's `inbound:` ports pass; the rest is logged.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::policy::Policy;
use crate::policy::firewall::{DenyAction, Family, FirewallConfig};

/// Log prefix of denied egress, as it shows in the kernel log.
pub const LOG_PREFIX: &str = "allowdns egress denied: ";
/// The NFLOG group denied egress is also sent to; allowdns reads it in each
/// fenced namespace to alert on blocked connections.
pub const NFLOG_GROUP: u16 = 53;
/// The mark `allowdns selftest` puts on its canary connection: denied like
/// any other, but neither sent to allowdns as an alert nor passed by the
/// monitor set. Setting a mark takes CAP_NET_ADMIN, which an agent lacks.
pub const SELFTEST_MARK: u32 = 0x616c_6c77;
/// The set that passes everything, logged, while a `mode: monitor` policy
/// is in force: allowdns adds its elements at startup and takes them out
/// when the policy goes back to enforcing. Empty as loaded.
pub const MONITOR_SET: &str = "monitor_mode";
/// Log prefix of denied inbound traffic.
pub const INPUT_LOG_PREFIX: &str = "allowdns ingress denied: ";
/// The dynamic set of next hops neighbour discovery went to: only ever
/// neighbours, so a destination found in it is on the link.
pub const ND_NEXT_HOPS: &str = "nd_next_hops";
/// Headers that route a packet past the address the rules check (a type 4
/// segment list names any destination), or carry options to every hop.
const EXTHDR: &[&str] = &[
    "exthdr rt exists",
    "exthdr hbh exists",
    "exthdr dst exists",
    "ip hdrlength != 5",
];
/// The chain a rejected packet goes to: a TCP reset (connect fails at once
/// with ECONNREFUSED; an ICMPv6 error takes TCP a second), ICMP
/// administratively prohibited for the rest.
pub const DENIED_CHAIN: &str = "denied";

/// The verdict that ends a denied packet.
fn deny_verdict(action: DenyAction) -> String {
    match action {
        DenyAction::Reject => format!("goto {DENIED_CHAIN}"),
        DenyAction::Drop => "drop".into(),
    }
}

fn denied_chain(out: &mut String, action: DenyAction, family: Family) {
    // icmpx (either ICMP) exists only in inet tables.
    let icmp = match family {
        Family::Inet => "icmpx",
        Family::Ip => "icmp",
        Family::Ip6 => "icmpv6",
    };
    if action == DenyAction::Reject {
        let _ = writeln!(
            out,
            "\tchain {DENIED_CHAIN} {{\n\t\tmeta l4proto tcp reject with tcp reset\n\t\treject with {icmp} admin-prohibited\n\t}}\n"
        );
    }
}

/// The neighbour discovery types each direction passes.
const ND_SENT: &str = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }";
const ND_SENT_UNICAST: &str = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }";
/// Hop limit 255 is what a receiver checks (a router would lower it); 64
/// bytes hold the fixed part, a link-layer address and a nonce, no more.
const ND_LINK: &str = "ip6 hoplimit 255 ip6 length <= 64";
/// Link-local, all-nodes, all-routers and solicited-node multicast.
const ND_DESTINATIONS: &str = "ip6 daddr { fe80::/10, ff02::1, ff02::2, ff02::1:ff00:0/104 }";

pub fn render(policy: &Policy, config: &FirewallConfig, dns: &[IpAddr]) -> String {
    let mut out = String::new();
    let (family, table) = (config.family.as_str(), &config.table);
    let _ = writeln!(
        out,
        "# allowdns: default-deny egress for agent '{}' ({})",
        policy.agent,
        policy.source.display()
    );
    let _ = writeln!(
        out,
        "# Load inside the agent's namespace: ip netns exec NAME nft -f FILE"
    );
    // Declaring then deleting makes the file reloadable whether or not the table exists.
    let _ = writeln!(
        out,
        "table {family} {table}\ndelete table {family} {table}\n"
    );
    let _ = writeln!(out, "table {family} {table} {{");
    let v4 = config.passes_v4();
    let v6 = config.passes_v6();
    // The same permanent elements allowdns installs at run time, so the fence holds before it starts.
    let statics = |want_v4: bool| -> Vec<String> {
        policy
            .addresses
            .iter()
            .filter(|a| a.net.addr().is_ipv4() == want_v4)
            .flat_map(|a| {
                let net = a.net;
                let ports = if a.ports.any || a.ports.listed.is_empty() {
                    vec!["0-255 . 0-65535".to_string()]
                } else {
                    a.ports
                        .listed
                        .iter()
                        .map(|(p, port)| format!("{} . {port}", p.as_str()))
                        .collect()
                };
                ports.into_iter().map(move |p| format!("{net} . {p}"))
            })
            .collect()
    };
    // Per address family the fence passes: its keyword, address type and sets.
    let families = [
        (v4, "ip", "ipv4_addr", &config.set_v4, &config.set_v4_ports),
        (v6, "ip6", "ipv6_addr", &config.set_v6, &config.set_v6_ports),
    ];
    let _ = writeln!(out, "\tset {MONITOR_SET} {{\n\t\ttype ether_type\n\t}}\n");
    for (_, fam, addr, addrs, ports) in families.into_iter().filter(|f| f.0) {
        set(&mut out, addrs, addr, "timeout", &[]);
        set(
            &mut out,
            ports,
            &format!("{addr} . inet_proto . inet_service"),
            "interval,timeout",
            &statics(fam == "ip"),
        );
    }
    let deny = deny_verdict(config.deny_action);
    denied_chain(&mut out, config.deny_action, config.family);
    if v6 {
        let _ = writeln!(
            out,
            "\tset {ND_NEXT_HOPS} {{\n\t\ttype ipv6_addr\n\t\tsize 256\n\t\tflags dynamic,timeout\n\t\ttimeout 30s\n\t}}\n"
        );
    }
    base_chain(&mut out, "output", "oifname", config.family, LOG_PREFIX);
    if v6 {
        let _ = writeln!(out, "\t\t{ND_SENT} {ND_LINK} {ND_DESTINATIONS} accept");
        // A global neighbour (a static gateway, an on-link prefix) is its own
        // next hop; an address beyond the link never is.
        let _ = writeln!(
            out,
            "\t\t{ND_SENT_UNICAST} {ND_LINK} update @{ND_NEXT_HOPS} {{ rt ip6 nexthop }}"
        );
        let _ = writeln!(
            out,
            "\t\t{ND_SENT_UNICAST} {ND_LINK} ip6 daddr @{ND_NEXT_HOPS} accept"
        );
        let _ = writeln!(out, "\t\t{ND_SENT} log prefix \"{LOG_PREFIX}nd \" drop");
    }
    for ip in dns {
        let (fam, ok) = match ip {
            IpAddr::V4(_) => ("ip", v4),
            IpAddr::V6(_) => ("ip6", v6),
        };
        if ok {
            let _ = writeln!(
                out,
                "\t\t{fam} daddr {ip} meta l4proto {{ udp, tcp }} th dport 53 accept comment \"allowdns\""
            );
        }
    }
    // Each early deny is also reported to allowdns (NFLOG), in a rule of its
    // own so the self-test's marked probes raise no alert.
    let nflog = |out: &mut String, what: &str, prefix: &str| {
        let _ = writeln!(
            out,
            "\t\tmeta mark != {SELFTEST_MARK:#x} {what} log prefix \"{LOG_PREFIX}{prefix} \" group {NFLOG_GROUP}"
        );
    };
    nflog(&mut out, "meta l4proto { udp, tcp } th dport 53", "dns");
    let _ = writeln!(
        out,
        "\t\tmeta l4proto {{ udp, tcp }} th dport 53 log prefix \"{LOG_PREFIX}dns \" {deny} comment \"DNS only to allowdns\""
    );
    // Special-purpose ranges go before the sets: a stale or hand-added
    // element cannot open them. What the policy lists or opts in to stays open.
    let opened = policy.opened_ranges();
    for (ok, fam, ..) in families {
        let ranges = crate::policy::special::drop_list(fam == "ip6", &opened);
        if ok && !ranges.is_empty() {
            let list: Vec<String> = ranges.iter().map(ToString::to_string).collect();
            let daddr = format!("{fam} daddr {{ {} }}", list.join(", "));
            nflog(&mut out, &daddr, "special");
            let _ = writeln!(
                out,
                "\t\t{fam} daddr {{ {} }} log prefix \"{LOG_PREFIX}special \" {deny} comment \"special-purpose\"",
                list.join(", ")
            );
        }
    }
    for (_, fam, _, addrs, ports) in families.into_iter().filter(|f| f.0) {
        let _ = writeln!(out, "\t\t{fam} daddr @{addrs} accept");
        let _ = writeln!(
            out,
            "\t\t{fam} daddr . meta l4proto . th dport @{ports} accept"
        );
    }
    let _ = writeln!(out, "\t\tlog prefix \"{LOG_PREFIX}\" level warn");
    let _ = writeln!(
        out,
        "\t\tmeta mark != {SELFTEST_MARK:#x} log prefix \"{LOG_PREFIX}\" group {NFLOG_GROUP}"
    );
    let _ = writeln!(
        out,
        "\t\tmeta mark != {SELFTEST_MARK:#x} meta protocol @{MONITOR_SET} accept comment \"mode: monitor\""
    );
    let _ = writeln!(out, "\t\tcounter {deny}\n\t}}\n");
    // Replies, allowdns's DNS answers among them, are established.
    base_chain(
        &mut out,
        "input",
        "iifname",
        config.family,
        INPUT_LOG_PREFIX,
    );
    if v6 {
        // Hop limit 255 proves the sender is on the link, whatever its address
        // (a router with only a global address answers from it).
        let _ = writeln!(
            out,
            "\t\ticmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} {ND_LINK} accept"
        );
        let _ = writeln!(
            out,
            "\t\ticmpv6 type nd-router-advert ip6 saddr fe80::/10 ip6 hoplimit 255 accept"
        );
    }
    for (protocol, port) in &policy.inbound {
        let _ = writeln!(
            out,
            "\t\t{} dport {port} accept comment \"inbound\"",
            protocol.as_str()
        );
    }
    let _ = writeln!(out, "\t\tlog prefix \"{INPUT_LOG_PREFIX}\" level warn");
    out.push_str("\t\tcounter drop\n\t}\n}\n");
    // An ip or ip6 table never sees the other family: drop that family outright.
    let unserved = match config.family {
        Family::Inet => None,
        Family::Ip => Some(("ipv6", "ip6")),
        Family::Ip6 => Some(("ipv4", "ip")),
    };
    if let Some((nfproto, name)) = unserved {
        let guard = format!("{table}_no_{name}");
        let _ = writeln!(out, "\ntable inet {guard}\ndelete table inet {guard}\n");
        let _ = writeln!(out, "table inet {guard} {{");
        denied_chain(&mut out, config.deny_action, Family::Inet);
        out.push_str("\tchain output {\n");
        out.push_str("\t\ttype filter hook output priority filter; policy accept;\n");
        // allowdns itself may be reached over the family the fence does
        // not serve: from the namespace's own addresses only, there too.
        forged_dns(&mut out);
        out.push_str("\t\toifname \"lo\" accept\n");
        let other = if name == "ip6" {
            Family::Ip6
        } else {
            Family::Ip
        };
        extension_headers(&mut out, other, LOG_PREFIX);
        let served: Vec<String> = dns
            .iter()
            .filter(|ip| ip.is_ipv4() == (name == "ip"))
            .map(ToString::to_string)
            .collect();
        // Reaching allowdns over IPv6 needs neighbour discovery with it or
        // the router towards it: solicitations and advertisements on the
        // link (no router solicitation), to link-local, solicited-node or
        // allowdns's own addresses.
        let neighbours = name == "ip6" && !served.is_empty();
        if neighbours {
            let _ = writeln!(
                out,
                "\t\t{ND_SENT_UNICAST} {ND_LINK} ip6 daddr {{ fe80::/10, ff02::1:ff00:0/104, {} }} accept",
                served.join(", ")
            );
        }
        for ip in &served {
            let _ = writeln!(
                out,
                "\t\t{name} daddr {ip} meta l4proto {{ udp, tcp }} th dport 53 accept comment \"allowdns\""
            );
        }
        let _ = writeln!(
            out,
            "\t\tmeta nfproto {nfproto} log prefix \"{LOG_PREFIX}{name} \" {deny}\n\t}}"
        );
        let neighbours = if neighbours {
            format!("\t\t{ND_SENT_UNICAST} {ND_LINK} accept\n")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "\tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n\t\tiifname \"lo\" accept\n\t\tct state established,related accept\n{neighbours}\t\tmeta nfproto {nfproto} log prefix \"{INPUT_LOG_PREFIX}{name} \" drop\n\t}}\n}}"
        );
    }
    out
}

/// Drops DNS from a source that is not the namespace's own, before any
/// rule accepts DNS to allowdns: such a question (IPV6_FREEBIND needs no
/// privilege) would be decided and alerted as whichever agent owns it.
/// Over loopback too: where allowdns listens on one of the namespace's own
/// addresses, a forged source would reach it through `lo`. Reported to
/// allowdns (NFLOG) like the other early denies.
fn forged_dns(out: &mut String) {
    const FORGED: &str = "meta l4proto { udp, tcp } th dport 53 fib saddr type != local";
    let _ = writeln!(
        out,
        "\t\tmeta mark != {SELFTEST_MARK:#x} {FORGED} log prefix \"{LOG_PREFIX}forged \" group {NFLOG_GROUP}"
    );
    let _ = writeln!(
        out,
        "\t\t{FORGED} log prefix \"{LOG_PREFIX}forged \" drop comment \"forged source\""
    );
}

/// Drops packets whose headers route or carry past what the rules check.
fn extension_headers(out: &mut String, family: Family, prefix: &str) {
    for header in EXTHDR {
        let applies = match family {
            Family::Inet => true,
            Family::Ip => header.starts_with("ip "),
            Family::Ip6 => !header.starts_with("ip "),
        };
        if applies {
            let _ = writeln!(out, "\t\t{header} log prefix \"{prefix}exthdr \" drop");
        }
    }
}

/// Opens the base chain of `hook` (default drop): on output, DNS from a
/// forged source drops; loopback (`lo_match` "lo") passes, extension
/// headers are screened (logged with `log_prefix`), then established flows
/// pass and invalid ones drop.
fn base_chain(out: &mut String, hook: &str, lo_match: &str, family: Family, log_prefix: &str) {
    let _ = writeln!(
        out,
        "\tchain {hook} {{\n\t\ttype filter hook {hook} priority filter; policy drop;"
    );
    if hook == "output" {
        forged_dns(out);
    }
    let _ = writeln!(out, "\t\t{lo_match} \"lo\" accept");
    extension_headers(out, family, log_prefix);
    out.push_str("\t\tct state established,related accept\n");
    out.push_str("\t\tct state invalid drop\n");
}

fn set(out: &mut String, name: &str, ty: &str, flags: &str, elements: &[String]) {
    let _ = write!(out, "\tset {name} {{\n\t\ttype {ty}\n\t\tflags {flags}\n");
    if !elements.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
    }
    out.push_str("\t}\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::Diagnostics;
    use std::path::Path;

    /// The policy `src`, which must compile.
    fn compiled(src: &str) -> Policy {
        let mut d = Diagnostics::default();
        crate::policy::compile_source(Path::new("p.yaml"), src, &mut d).unwrap()
    }

    #[test]
    fn a_single_family_fence_drops_the_other_family() {
        let policy = compiled(
            "agent_name: a\nexpected_outbound:\n  - destination: x.example\nfirewall:\n  family: ip\n",
        );
        let config = policy.firewall.clone().unwrap();
        let text = render(
            &policy,
            &config,
            &["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        );
        assert!(text.contains("table ip allowdns {"), "{text}");
        assert!(text.contains("table inet allowdns_no_ip6 {"), "{text}");
        assert!(
            text.contains("ip6 daddr fd00::1 meta l4proto { udp, tcp } th dport 53 accept"),
            "{text}"
        );
        assert!(text.contains("meta nfproto ipv6 log prefix"), "{text}");
        // In each table, the forged-source drop comes before DNS is
        // accepted, and before loopback is.
        for table in text.split("\ntable ").skip(1) {
            if let Some(accept) = table.find("th dport 53 accept") {
                let forged = table.find("fib saddr type != local");
                let lo = table.find("oifname \"lo\" accept").unwrap();
                assert!(forged.is_some_and(|f| f < accept && f < lo), "{table}");
            }
        }
        assert_eq!(
            text.matches(
                "fib saddr type != local log prefix \"allowdns egress denied: forged \" group 53"
            )
            .count(),
            2,
            "{text}"
        );
        assert_eq!(text.matches("fib saddr type != local").count(), 4, "{text}");
        // IPv6 to allowdns needs its neighbours in the guard table.
        let guard = text.split("table inet allowdns_no_ip6 {").nth(1).unwrap();
        assert!(guard.contains("nd-neighbor-solicit"), "{guard}");
        let inet = render(
            &policy,
            &FirewallConfig::with_defaults(),
            &["10.0.0.1".parse().unwrap()],
        );
        assert!(!inet.contains("_no_"), "{inet}");
    }

    #[test]
    fn special_ranges_drop_early_and_inbound_is_closed_but_for_listed_ports() {
        let policy = compiled(
            "agent_name: a\nexpected_outbound:\n  - destination: api.corp.test\n    private: [10.20.0.0/16]\n  - destination: 172.16.5.0/24\ninbound:\n  - port: 8080\n    protocol: TCP\nfirewall: {}\n",
        );
        let config = policy.firewall.clone().unwrap();
        let text = render(&policy, &config, &["10.200.1.1".parse().unwrap()]);
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle}: {text}"))
        };
        let special = at("comment \"special-purpose\"");
        assert!(at("th dport 53 accept comment \"allowdns\"") < special);
        assert!(special < at("ip daddr @allowed_v4 accept"));
        // Opted-in and listed ranges stay open; the rest of 10/8 and 172.16/12 does not.
        let line = &text[text[..special].rfind('\n').unwrap()..special];
        assert!(
            !line.contains("10.20.0.0/16") && line.contains("10.21.0.0/16"),
            "{line}"
        );
        assert!(
            !line.contains("172.16.0.0/12") && line.contains("172.16.4.0/24"),
            "{line}"
        );
        assert!(
            text.contains(
                "chain input {\n\t\ttype filter hook input priority filter; policy drop;"
            )
        );
        assert!(text.contains("tcp dport 8080 accept"), "{text}");
        assert!(
            text.contains(&format!("{ND_SENT} {ND_LINK} {ND_DESTINATIONS} accept")),
            "{text}"
        );
        // Denied egress goes to the kernel log and to allowdns's NFLOG
        // group, then the monitor set (empty as loaded), then the drop.
        let last = at(
            "log prefix \"allowdns egress denied: \" level warn\n\t\tmeta mark != 0x616c6c77 log prefix \"allowdns egress denied: \" group 53\n\t\tmeta mark != 0x616c6c77 meta protocol @monitor_mode accept comment \"mode: monitor\"\n\t\tcounter goto denied",
        );
        assert!(at("ip daddr @allowed_v4 accept") < last);
        assert!(
            text.contains("set monitor_mode {\n\t\ttype ether_type\n\t}"),
            "{text}"
        );
        assert!(
            !text.contains("nd-router-solicit } accept"),
            "no unbounded ND accept"
        );
    }

    #[test]
    fn routing_headers_go_before_established_and_denials_follow_deny_action() {
        let source = |action: &str| {
            format!(
                "agent_name: a\nexpected_outbound:\n  - destination: x.test\nfirewall:\n{action}"
            )
        };
        let policy = compiled(&source("  table: allowdns\n"));
        let text = render(&policy, policy.firewall.as_ref().unwrap(), &[]);
        for chain in text.split("chain ").filter(|c| c.contains("hook")) {
            let established = chain.find("ct state established").unwrap();
            let rt = chain.find("exthdr rt exists").expect(chain);
            assert!(rt < established, "{chain}");
            assert!(chain.contains("ip hdrlength != 5"), "{chain}");
        }
        assert!(
            text.contains("comment \"mode: monitor\"\n\t\tcounter goto denied\n"),
            "{text}"
        );
        let policy = compiled(&source("  deny_action: drop\n"));
        let text = render(&policy, policy.firewall.as_ref().unwrap(), &[]);
        assert!(
            text.contains("comment \"mode: monitor\"\n\t\tcounter drop\n"),
            "{text}"
        );
        assert!(!text.contains("reject"), "{text}");
        let mut d = Diagnostics::default();
        let bad = crate::policy::compile_source(
            Path::new("p.yaml"),
            &source("  deny_action: refuse\n"),
            &mut d,
        );
        let shown: Vec<String> = d.errors().map(ToString::to_string).collect();
        let shown = shown.join("\n");
        assert!(
            bad.is_none() && shown.contains("p.yaml:5") && shown.contains("firewall.deny_action"),
            "{shown}"
        );
    }
}
