//! The suggested policy as YAML text, with its comments, and the warnings
//! about what it leaves out or comments out.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use super::group::{Entry, covered_by};
use super::read::{Capped, Log, Observed, Seen};
use super::{Kept, MAX_GROUP, MAX_LEFT_OUT_SHOWN, MAX_REPORTED, MAX_SHOWN, MIN_CHILDREN, Options};
use crate::diagnostics::Diagnostics;

pub(super) fn render(
    file: &Path,
    log: &Log,
    agent: &str,
    observed: &Observed,
    active: &[Entry],
    denied: &[Entry],
    options: &Options,
) -> String {
    let mut out = String::new();
    let (first, last) = observed.span.expect("an agent has lookups");
    let command = match options.kennel {
        None => Some("allowdns suggest"),
        Some(Kept::Yes) => Some("allowdns run --learn"),
        Some(Kept::No) => None,
    };
    match command {
        Some(command) => {
            let _ = writeln!(
                out,
                "# Suggested by `{command}` from {} ({} records).",
                quote(&file.display().to_string()),
                log.records
            );
        }
        None => {
            let _ = writeln!(
                out,
                "# Suggested by `allowdns run --learn` from its audit log ({} records),\n\
                 # which was not kept: run with --audit-log FILE to keep the evidence.",
                log.records
            );
        }
    }
    let _ = writeln!(
        out,
        "# Agent {}: {}, {} to {}.",
        quote(agent),
        plural(observed.lookups, "lookup"),
        stamp(first),
        stamp(last)
    );
    if log.lost > 0 {
        let _ = writeln!(
            out,
            "# The log reports {} lost: lookups may be missing here.",
            plural(log.lost, "record")
        );
    }
    out.push_str(
        "#
# REVIEW BEFORE USE. This allows every name the agent looked up while it was
# observed, including lookups that failed (the rcode and count) or were
# sometimes denied (\"denied N\"). Delete what the agent should not reach.
# The audit log has no ports: add port and protocol where the firewall
# should restrict them.
",
    );
    if options.include_denied {
        out.push_str("# Names only ever denied are included (--include-denied).\n");
    } else {
        out.push_str("# Names only ever denied are listed commented out, after the entries.\n");
    }
    let _ = writeln!(
        out,
        "#
# A parent with {MIN_CHILDREN} or more distinct child labels became \"*.parent\", except
# TLDs, public suffixes and parents above a registrable domain. \"*.parent\"
# does not match the parent itself, which has its own entry when it was
# looked up. Groups of more than {MAX_GROUP} names, or mostly of long random-looking
# labels, look like a DNS tunnel and are commented out."
    );
    out.push_str("version: 1\n");
    let _ = writeln!(out, "agent_name: {}", quote(agent));
    out.push_str("mode: enforce\n");
    if options.kennel.is_some() {
        out.push_str(
            "# No clients: under `allowdns run` the kennel is the only client. Add\n\
             # `clients:` to serve this agent with `allowdns serve`.\n",
        );
    } else {
        out.push_str(
            "# The client addresses seen; widen them if the agent's address can change.\n",
        );
        out.push_str("clients:\n");
        for ip in &observed.clients {
            let _ = writeln!(out, "  - {}", quote(&ipnet::IpNet::from(*ip).to_string()));
        }
    }
    out.push_str("expected_outbound:\n");
    let line = |entry: &Entry, commented: bool| {
        let hash = if commented { "# " } else { "" };
        format!("  {hash}- destination: {}", quote(&entry.destination))
    };
    let width = active
        .iter()
        .map(|e| line(e, e.tunnel.is_some()))
        .chain(denied.iter().map(|e| line(e, true)))
        .map(|l| l.len())
        .max()
        .unwrap_or(0)
        .min(60);
    for entry in active {
        let note = match &entry.tunnel {
            Some(_) => tunnel_note(entry),
            None => String::new(),
        };
        let line = line(entry, entry.tunnel.is_some());
        render_entry(&mut out, entry, &line, width, &note, false);
    }
    if !denied.is_empty() {
        out.push_str(
            "  # Only denied, never allowed: review before enabling (or use --include-denied).\n",
        );
        let wildcards: HashSet<&str> = active
            .iter()
            .filter(|e| e.tunnel.is_none())
            .filter_map(|e| e.destination.strip_prefix("*."))
            .collect();
        for entry in denied {
            let mut note = if entry.tunnel.is_some() {
                tunnel_note(entry)
            } else {
                String::new()
            };
            let _ = write!(
                note,
                "denied {}, never allowed: review before enabling; ",
                plural(entry.seen.denied, "time")
            );
            if let Some(parent) = covered_by(&entry.destination, &wildcards) {
                let _ = write!(note, "already allowed by \"*.{parent}\"; ");
            }
            render_entry(&mut out, entry, &line(entry, true), width, &note, true);
        }
    }
    if !observed.left_out.is_empty() {
        out.push_str("  # Left out: no policy entry can allow these.\n");
        for (name, left) in observed.left_out.iter().take(MAX_LEFT_OUT_SHOWN) {
            let _ = writeln!(
                out,
                "  # {}: {}; {}",
                quote(name),
                plain(&left.reason.to_string()),
                describe(&left.seen, true)
            );
        }
        let more = observed.left_out.len().saturating_sub(MAX_LEFT_OUT_SHOWN);
        if more > 0 {
            let _ = writeln!(out, "  # ... and {more} more");
        }
    }
    if !observed.connections.is_empty() {
        out.push_str(
            "  # Connections to addresses no lookup handed out (hard-coded, or from\n  # another resolver): review before enabling.\n",
        );
        for ((addr, port, proto), times) in &observed.connections {
            let at = match (port, addr) {
                (Some(p), std::net::IpAddr::V6(_)) => format!("[{addr}]:{p}"),
                (Some(p), _) => format!("{addr}:{p}"),
                (None, _) => format!("{addr} ({proto})"),
            };
            let _ = writeln!(
                out,
                "  # this agent connected to {at} without a lookup ({})",
                plural(*times, "time")
            );
            let _ = writeln!(out, "  # - destination: {}", quote(&addr.to_string()));
            if let (Some(p), "tcp" | "udp") = (port, proto.as_str()) {
                let _ = writeln!(out, "  #   port: {p}");
                let _ = writeln!(out, "  #   protocol: {}", proto.to_uppercase());
            }
        }
        if observed.more_connections > 0 {
            let _ = writeln!(
                out,
                "  # ... and {} more connections",
                observed.more_connections
            );
        }
    }
    out
}

pub(super) fn tunnel_note(entry: &Entry) -> String {
    format!(
        "looks like a DNS tunnel ({}): review; ",
        plural(entry.names.len() as u64, "distinct name")
    )
}

/// One entry: its children (for a wildcard), then `line` with a comment of
/// `note` and what was seen.
pub(super) fn render_entry(
    out: &mut String,
    entry: &Entry,
    line: &str,
    width: usize,
    note: &str,
    only_denied: bool,
) {
    if let Some(parent) = entry.destination.strip_prefix("*.") {
        let suffix = format!(".{parent}");
        let shown: Vec<String> = entry
            .names
            .iter()
            .take(MAX_SHOWN)
            .map(|n| plain(n.strip_suffix(&suffix).unwrap_or(n)))
            .collect();
        let more = entry.names.len().saturating_sub(MAX_SHOWN);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        let _ = writeln!(out, "  # {}{more}", shown.join(", "));
    }
    let count = if entry.destination.starts_with('*') {
        format!("{}, ", plural(entry.names.len() as u64, "name"))
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "{line:width$}   # {note}{count}{}",
        describe(&entry.seen, !only_denied)
    );
}

/// "12 lookups, first …, last …; denied 2; NXDOMAIN 3".
pub(super) fn describe(seen: &Seen, show_denied: bool) -> String {
    let mut text = if seen.lookups == 1 {
        format!("1 lookup, {}", stamp(seen.first))
    } else {
        format!(
            "{}, first {}, last {}",
            plural(seen.lookups, "lookup"),
            stamp(seen.first),
            stamp(seen.last)
        )
    };
    if seen.denied > 0 && show_denied {
        let _ = write!(text, "; denied {}", seen.denied);
    }
    for (rcode, n) in &seen.failed {
        let _ = write!(text, "; {} {n}", plain(rcode));
    }
    text
}

pub(super) fn stamp(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(t)
}

/// "1 name was", "2 names were".
pub(super) fn were(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub(super) fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Text from the log made safe for a comment or message: [`quote`] without
/// the quotes.
pub(super) fn plain(s: &str) -> String {
    let quoted = quote(s);
    quoted[1..quoted.len() - 1].to_string()
}

/// A YAML double-quoted scalar. Everything outside printable ASCII is
/// escaped, so no input can end the string, the line or a comment early.
pub(super) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

pub(super) fn warn_left_out(file: &Path, observed: &Observed, diags: &mut Diagnostics) {
    let mut capped = Capped::new(MAX_REPORTED);
    for (name, left) in &observed.left_out {
        if capped.report() {
            diags.warning(
                file,
                Some(left.line),
                Some("qname".into()),
                format!(
                    "left out {}: {}",
                    quote(name),
                    plain(&left.reason.to_string())
                ),
            );
        }
    }
    if let Some(more) = capped.summary() {
        diags.warning(file, None, None, format!("{more} names left out"));
    }
}

/// Warns about what the policy lists commented out.
pub(super) fn warn_commented(
    file: &Path,
    active: &[Entry],
    denied: &[Entry],
    diags: &mut Diagnostics,
) {
    let mut capped = Capped::new(MAX_REPORTED);
    for (entry, only_denied) in active
        .iter()
        .map(|e| (e, false))
        .chain(denied.iter().map(|e| (e, true)))
    {
        let Some(why) = &entry.tunnel else { continue };
        if capped.report() {
            diags.warning(
                file,
                None,
                Some("qname".into()),
                format!(
                    "{} looks like a DNS tunnel ({why}{}): commented out, review it",
                    quote(&entry.destination),
                    if only_denied { ", all denied" } else { "" }
                ),
            );
        }
    }
    if let Some(more) = capped.summary() {
        diags.warning(file, None, None, format!("{more} DNS tunnel lookalikes"));
    }
    let only_denied: usize = denied.iter().map(|e| e.names.len()).sum();
    if only_denied > 0 {
        diags.warning(
            file,
            None,
            None,
            format!(
                "{} only denied, never allowed: commented out; review them, or pass --include-denied",
                were(only_denied, "name was", "names were")
            ),
        );
    }
}
