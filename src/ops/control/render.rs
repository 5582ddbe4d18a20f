//! `allowdns status` as text for humans.

use super::Status;

/// `allowdns status` for humans.
pub fn render(status: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for p in &status.policies {
        let _ = writeln!(
            out,
            "policy {} ({}): mode {}, {} name rule(s), {} address rule(s), clients [{}]{}",
            p.agent,
            p.file,
            p.mode,
            p.rules,
            p.addresses,
            p.clients.join(", "),
            p.firewall
                .as_ref()
                .map(|f| format!(", feeds {f}"))
                .unwrap_or_default(),
        );
        for (entry, at) in &p.expiring {
            let _ = writeln!(out, "  entry {entry} expires {at}");
        }
    }
    if status.grants.is_empty() {
        out.push_str("no active grants\n");
    }
    for g in status.grants.iter().map(|g| &g.terms) {
        let _ = writeln!(
            out,
            "grant {} -> {} until {} (granted {}{}): {}",
            g.agent,
            g.pattern,
            g.expires,
            g.granted_at,
            g.uid.map(|u| format!(" by uid {u}")).unwrap_or_default(),
            g.reason,
        );
    }
    out
}
