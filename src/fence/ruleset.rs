//! `allowdns nft-ruleset`: the default-deny ruleset for an agent namespace.
//!
//! Output drops by default (IPv4 and IPv6). Accepted: loopback, established
//! and related traffic, neighbour discovery on the link only, DNS to allowdns
//! only; then special-purpose ranges (src/policy/special.rs) the policy does not
//! list are dropped, so no set element can open them; then addresses in the
//! sets (any port, or address-and-port). Everything else is logged with a
//! clear prefix, to the kernel log and to an NFLOG group allowdns reads
//! (src/fence/nflog.rs), then dropped; only while a `mode: monitor` policy
//! is in force does allowdns fill the monitor set that passes it instead.
//!
//! Input drops by default too: loopback, established and related traffic
//! (replies, DNS answers from allowdns included), neighbour discovery from the
//! link, and the policy's `inbound:` ports pass; the rest is logged.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::policy::Policy;
use crate::policy::firewall::{Family, FirewallConfig};

/// Log prefix of denied egress, as it shows in the kernel log.
pub const LOG_PREFIX: &str = "allowdns egress denied: ";
/// The NFLOG group denied egress is also sent to; allowdns reads it in each
/// fenced namespace to alert on blocked connections.
pub const NFLOG_GROUP: u16 = 53;
/// The set that passes everything, logged, while a `mode: monitor` policy
/// is in force: allowdns adds its elements at startup and takes them out
/// when the policy goes back to enforcing. Empty as loaded.
pub const MONITOR_SET: &str = "monitor_mode";
/// Log prefix of denied inbound traffic.
pub const INPUT_LOG_PREFIX: &str = "allowdns ingress denied: ";
/// Neighbour discovery the agent sends: on the link only (a hop limit of 255
/// is what receivers check), never to a global address as a covert channel.
const ND_OUT: &str = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } ip6 daddr { fe80::/10, ff02::/16 } ip6 hoplimit 255 accept";
/// Neighbour discovery received: from a link-local source (or the
/// unspecified one, during duplicate address detection), hop limit 255.
const ND_IN: &str = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } ip6 saddr { ::, fe80::/10 } ip6 hoplimit 255 accept";

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
    let _ = writeln!(out, "\tset {MONITOR_SET} {{\n\t\ttype ether_type\n\t}}\n");
    if v4 {
        set(&mut out, &config.set_v4, "ipv4_addr", "timeout", &[]);
        set(
            &mut out,
            &config.set_v4_ports,
            "ipv4_addr . inet_proto . inet_service",
            "interval,timeout",
            &statics(true),
        );
    }
    if v6 {
        set(&mut out, &config.set_v6, "ipv6_addr", "timeout", &[]);
        set(
            &mut out,
            &config.set_v6_ports,
            "ipv6_addr . inet_proto . inet_service",
            "interval,timeout",
            &statics(false),
        );
    }
    out.push_str("\tchain output {\n\t\ttype filter hook output priority filter; policy drop;\n");
    out.push_str("\t\toifname \"lo\" accept\n");
    out.push_str("\t\tct state established,related accept\n");
    out.push_str("\t\tct state invalid drop\n");
    if v6 {
        let _ = writeln!(out, "\t\t{ND_OUT}");
        let _ = writeln!(
            out,
            "\t\ticmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }} log prefix \"{LOG_PREFIX}nd \" drop"
        );
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
    let _ = writeln!(
        out,
        "\t\tmeta l4proto {{ udp, tcp }} th dport 53 log prefix \"{LOG_PREFIX}dns \" drop comment \"DNS only to allowdns\""
    );
    // Special-purpose ranges go before the sets: a stale or hand-added
    // element cannot open them. What the policy lists or opts in to stays open.
    let opened = policy.opened_ranges();
    for (fam, is_v6, ok) in [("ip", false, v4), ("ip6", true, v6)] {
        let ranges = crate::policy::special::drop_list(is_v6, &opened);
        if ok && !ranges.is_empty() {
            let list: Vec<String> = ranges.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "\t\t{fam} daddr {{ {} }} log prefix \"{LOG_PREFIX}special \" drop comment \"special-purpose\"",
                list.join(", ")
            );
        }
    }
    if v4 {
        let _ = writeln!(out, "\t\tip daddr @{} accept", config.set_v4);
        let _ = writeln!(
            out,
            "\t\tip daddr . meta l4proto . th dport @{} accept",
            config.set_v4_ports
        );
    }
    if v6 {
        let _ = writeln!(out, "\t\tip6 daddr @{} accept", config.set_v6);
        let _ = writeln!(
            out,
            "\t\tip6 daddr . meta l4proto . th dport @{} accept",
            config.set_v6_ports
        );
    }
    let _ = writeln!(
        out,
        "\t\tlog prefix \"{LOG_PREFIX}\" level warn log prefix \"{LOG_PREFIX}\" group {NFLOG_GROUP}"
    );
    let _ = writeln!(
        out,
        "\t\tmeta protocol @{MONITOR_SET} accept comment \"mode: monitor\""
    );
    out.push_str("\t\tcounter drop\n\t}\n\n");
    out.push_str("\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n");
    out.push_str("\t\tiifname \"lo\" accept\n");
    // Replies, allowdns's DNS answers among them, are established.
    out.push_str("\t\tct state established,related accept\n");
    out.push_str("\t\tct state invalid drop\n");
    if v6 {
        let _ = writeln!(out, "\t\t{ND_IN}");
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
        let _ = writeln!(out, "table inet {guard} {{\n\tchain output {{");
        out.push_str("\t\ttype filter hook output priority filter; policy accept;\n\t\toifname \"lo\" accept\n");
        // allowdns itself may be reached over the family the fence does not serve.
        for ip in dns.iter().filter(|ip| ip.is_ipv4() == (name == "ip")) {
            let _ = writeln!(
                out,
                "\t\t{name} daddr {ip} meta l4proto {{ udp, tcp }} th dport 53 accept comment \"allowdns\""
            );
        }
        let _ = writeln!(
            out,
            "\t\tmeta nfproto {nfproto} log prefix \"{LOG_PREFIX}{name} \" drop\n\t}}"
        );
        let _ = writeln!(
            out,
            "\tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n\t\tiifname \"lo\" accept\n\t\tct state established,related accept\n\t\tmeta nfproto {nfproto} log prefix \"{INPUT_LOG_PREFIX}{name} \" drop\n\t}}\n}}"
        );
    }
    out
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

    #[test]
    fn a_single_family_fence_drops_the_other_family() {
        let mut d = Diagnostics::default();
        let policy = crate::policy::compile_source(
            Path::new("p.yaml"),
            "agent_name: a\nexpected_outbound:\n  - destination: x.example\nfirewall:\n  family: ip\n",
            &mut d,
        )
        .unwrap();
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
        let inet = render(
            &policy,
            &FirewallConfig::with_defaults(),
            &["10.0.0.1".parse().unwrap()],
        );
        assert!(!inet.contains("_no_"), "{inet}");
    }

    #[test]
    fn special_ranges_drop_early_and_inbound_is_closed_but_for_listed_ports() {
        let mut d = Diagnostics::default();
        let policy = crate::policy::compile_source(
            Path::new("p.yaml"),
            "agent_name: a\nexpected_outbound:\n  - destination: api.corp.test\n    private: [10.20.0.0/16]\n  - destination: 172.16.5.0/24\ninbound:\n  - port: 8080\n    protocol: TCP\nfirewall: {}\n",
            &mut d,
        )
        .unwrap();
        let config = policy.firewall.clone().unwrap();
        let text = render(&policy, &config, &["10.200.1.1".parse().unwrap()]);
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle}: {text}"))
        };
        let special = at("drop comment \"special-purpose\"");
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
        // Denied egress goes to the kernel log and to allowdns's NFLOG
        // group, then the monitor set (empty as loaded), then the drop.
        let last = at(
            "log prefix \"allowdns egress denied: \" level warn log prefix \"allowdns egress denied: \" group 53\n\t\tmeta protocol @monitor_mode accept comment \"mode: monitor\"\n\t\tcounter drop",
        );
        assert!(at("ip daddr @allowed_v4 accept") < last);
        assert!(
            text.contains("set monitor_mode {\n\t\ttype ether_type\n\t}"),
            "{text}"
        );
        assert!(text.contains("ip6 daddr { fe80::/10, ff02::/16 } ip6 hoplimit 255 accept"));
        assert!(
            !text.contains("nd-router-solicit } accept"),
            "no unbounded ND accept"
        );
    }
}
