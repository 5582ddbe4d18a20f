//! Policy keys of the fence around special-purpose addresses: `private:` on a
//! name entry (the ranges its answers may carry, docs/special-addresses.md)
//! and `inbound:` (ports the ruleset's input chain opens).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;

use super::compile::{Spot, parse_net};
use super::matcher::{PatternKind, classify};
use super::{Policy, Protocol, Rule, file};
use crate::diagnostics::{Diagnostics, locate};

/// A special-purpose range one name entry may hand out.
#[derive(Clone, Debug)]
pub struct Private {
    /// The entry's canonical pattern, as in [`Rule::pattern`].
    pub pattern: Arc<str>,
    pub net: IpNet,
    /// The entry's own expiry.
    pub expires: Option<SystemTime>,
}

impl Policy {
    /// Whether `rule`'s answers may carry `ip`, a special-purpose address.
    pub fn opens(&self, rule: &Rule, ip: IpAddr) -> bool {
        let now = SystemTime::now();
        self.private.iter().any(|p| {
            p.pattern == rule.pattern && p.expires.is_none_or(|at| now < at) && p.net.contains(&ip)
        })
    }

    /// Every range the policy opens past the ruleset's early drop: opted-in
    /// ranges and the IP/CIDR destinations it lists.
    pub fn opened_ranges(&self) -> Vec<IpNet> {
        let private = self.private.iter().map(|p| p.net);
        private
            .chain(self.addresses.iter().map(|a| a.net))
            .collect()
    }
}

/// `private:` on an IP/CIDR destination is a mistake: the address opens itself.
pub(super) fn not_for_addresses(
    file: &Path,
    line: &Spot,
    field: Option<String>,
    private: &[String],
    diags: &mut Diagnostics,
) {
    if !private.is_empty() {
        diags.error(
            file,
            line.line(),
            field,
            "applies to names only: an IP/CIDR destination is reachable as listed",
        );
    }
}

/// Validates a name entry's `private:` ranges into `out`.
pub(super) fn opt_in(
    (file, source, field): (&Path, &str, Option<String>),
    line: &Spot,
    key: &str,
    private: &[String],
    expires: Option<SystemTime>,
    out: &mut Vec<Private>,
    diags: &mut Diagnostics,
) {
    if private.is_empty() {
        return;
    }
    if !matches!(classify(key), PatternKind::Exact(_)) {
        diags.warning(
            file,
            line.line(),
            field.clone(),
            format!(
                "the wildcard '{key}' opts in to private ranges: whoever controls DNS for any name \
                 under it can point the agent at them; prefer exact names"
            ),
        );
    }
    for (j, raw) in private.iter().enumerate() {
        let at = || locate(source, raw.trim(), 0).or_else(|| line.line());
        let field = field.as_ref().map(|f| format!("{f}[{j}]"));
        let net = match parse_net(raw) {
            Ok(net) => net,
            Err(e) => {
                diags.error(file, at(), field, e.to_string());
                continue;
            }
        };
        let (first, last) = match net {
            IpNet::V4(n) => (IpAddr::V4(n.network()), IpAddr::V4(n.broadcast())),
            IpNet::V6(n) => (IpAddr::V6(n.network()), IpAddr::V6(n.broadcast())),
        };
        let special = crate::policy::special::special;
        if special(first).is_none() && special(last).is_none() {
            diags.warning(
                file,
                at(),
                field.clone(),
                format!("{net} is not a special-purpose range: its addresses pass anyway"),
            );
        }
        for (ip, what) in [
            ("169.254.169.254", "cloud metadata"),
            ("127.0.0.1", "loopback"),
        ] {
            if net.contains(&ip.parse::<IpAddr>().expect("static")) {
                diags.warning(
                    file,
                    at(),
                    field.clone(),
                    format!("{net} includes {ip} ({what})"),
                );
            }
        }
        out.push(Private {
            pattern: key.into(),
            net,
            expires,
        });
    }
}

/// Validates `inbound:` into (protocol, port) pairs.
pub(super) fn inbound(
    file: &Path,
    source: &str,
    raw: &[file::InboundV1],
    diags: &mut Diagnostics,
) -> Vec<(Protocol, u16)> {
    let mut out = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let line = locate(source, &format!("port: {}", entry.port), 0)
            .or_else(|| locate(source, "inbound", 0));
        let field = |f: &str| Some(format!("inbound[{i}].{f}"));
        if entry.port == 0 {
            diags.error(file, line, field("port"), "port 0 is not a port");
            continue;
        }
        let protocol = entry.protocol;
        if !out.contains(&(protocol, entry.port)) {
            out.push((protocol, entry.port));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::diagnostics::Diagnostics;
    use std::path::Path;

    fn compile(text: &str) -> (Option<crate::policy::Policy>, String) {
        let mut d = Diagnostics::default();
        let p = crate::policy::compile_source(Path::new("p.yaml"), text, &mut d);
        let msgs = d.items.iter().map(|i| format!("{i}\n")).collect();
        (p, msgs)
    }

    #[test]
    fn opt_in_is_per_entry_and_checked() {
        let (p, msgs) = compile(
            "agent_name: a\nexpected_outbound:\n  - destination: api.corp.test\n    private: [10.20.0.0/16]\n  - destination: other.corp.test\n",
        );
        let p = p.expect(&msgs);
        assert!(msgs.is_empty(), "{msgs}");
        let rule = p.rule_for("api.corp.test").unwrap();
        assert!(p.opens(rule, "10.20.1.1".parse().unwrap()));
        assert!(!p.opens(rule, "10.21.1.1".parse().unwrap()));
        let other = p.rule_for("other.corp.test").unwrap();
        assert!(!p.opens(other, "10.20.1.1".parse().unwrap()));
    }

    #[test]
    fn bad_values_name_file_line_and_field() {
        for (text, said) in [
            (
                "agent_name: a\nexpected_outbound:\n  - destination: api.corp.test\n    private: [10.20.0.1/16]\n",
                &["p.yaml:4", "expected_outbound[0].private[0]"][..],
            ),
            (
                "agent_name: a\nexpected_outbound:\n  - destination: 10.0.0.1\n    private: [10.0.0.0/8]\n",
                &["names only"],
            ),
            (
                "agent_name: a\nexpected_outbound:\n  - destination: x.test\ninbound:\n  - port: 8080\n    protocol: sctp\n",
                &["p.yaml:6", "inbound[0].protocol"],
            ),
            (
                "agent_name: a\nexpected_outbound:\n  - destination: x.test\ninbound:\n  - port: 0\n    protocol: tcp\n",
                &["p.yaml:5"],
            ),
        ] {
            let (p, msgs) = compile(text);
            assert!(p.is_none(), "{msgs}");
            assert!(said.iter().all(|s| msgs.contains(s)), "{msgs}");
        }
    }

    #[test]
    fn wildcards_and_odd_ranges_warn() {
        let (p, msgs) = compile(
            "agent_name: a\nallowed_dynamic_resolution:\n  - pattern: \"*.corp.test\"\n    private: [10.0.0.0/8, 8.8.8.0/24, 169.254.0.0/16]\n",
        );
        assert!(p.is_some(), "{msgs}");
        assert!(msgs.contains("wildcard '*.corp.test' opts in"), "{msgs}");
        assert!(
            msgs.contains("8.8.8.0/24 is not a special-purpose range"),
            "{msgs}"
        );
        assert!(msgs.contains("cloud metadata"), "{msgs}");
    }
}
