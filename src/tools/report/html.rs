//! The page: one HTML file with its CSS and SVG inline, no script and no
//! reference to anything outside it. Every string from the log goes
//! through [`esc`]: names, rules and command lines are the agent's to choose.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use super::chart::{Series, bars, bucket_words, legend};
use super::read::Skipped;
use super::tally::{ALLOW, BLOCKED, Capped, DENY, LOGGED, REFUSED, Seen, Tally, WOULD_DENY};
use super::{
    Learned, MAX_DENIED_DOMAINS, MAX_DESTINATIONS, MAX_NAMES, MAX_NAMES_PER_DOMAIN, SHOWN,
};
use crate::diagnostics::Diagnostics;

/// Text from the log, safe in element content and quoted attributes.
pub(super) fn esc(text: &str) -> Cow<'_, str> {
    html_escape::encode_quoted_attribute(text)
}

/// A time as the page shows it: UTC, to the second.
pub(super) fn stamp(ts: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(ts).to_string();
    text.replacen('T', " ", 1).replace('Z', " UTC")
}

const STYLE: &str = "
body{font-family:'DejaVu Sans',sans-serif;margin:24px;color:#222;background:#fff;max-width:1100px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.domain td{background:#fbeaea;font-weight:bold}
code,pre{font-family:'DejaVu Sans Mono',monospace;font-size:12px}
pre{background:#f7f7f7;border:1px solid #ddd;padding:8px;overflow-x:auto}
.chart .plot{fill:#fafafa;stroke:#ccc}.axis{font-size:11px;fill:#555}
.allow{fill:#2e7d32;background:#2e7d32}.deny{fill:#c62828;background:#c62828}
.would_deny{fill:#f9a825;background:#f9a825}.refused{fill:#9e9e9e;background:#9e9e9e}
.blocked{fill:#6a1b9a;background:#6a1b9a}.logged{fill:#ef6c00;background:#ef6c00}
line.marker{stroke-width:2;stroke-dasharray:4 2}
.grant{stroke:#1565c0;border-color:#1565c0}.expiry{stroke:#00838f;border-color:#00838f}
.reload{stroke:#455a64;border-color:#455a64}.loss{stroke:#000;border-color:#000}
.key{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
.key.line{width:0;height:12px;border-left:3px dashed;background:none}
.more{color:#555;font-style:italic}.warn{color:#b71c1c}
";

/// Everything the page is made from.
pub(super) struct Page<'a> {
    pub(super) file: &'a Path,
    pub(super) agent: Option<&'a str>,
    pub(super) since: Option<SystemTime>,
    pub(super) tally: &'a Tally,
    pub(super) skipped: &'a Skipped,
    pub(super) learned: &'a Learned,
}

fn lookups_series() -> [Series; 4] {
    [
        Series {
            index: ALLOW,
            label: "allowed",
            class: "allow",
        },
        Series {
            index: WOULD_DENY,
            label: "would deny (learn, monitor: resolved and logged)",
            class: "would_deny",
        },
        Series {
            index: DENY,
            label: "denied",
            class: "deny",
        },
        Series {
            index: REFUSED,
            label: "refused",
            class: "refused",
        },
    ]
}

fn egress_series() -> [Series; 2] {
    [
        Series {
            index: BLOCKED,
            label: "blocked",
            class: "blocked",
        },
        Series {
            index: LOGGED,
            label: "logged (monitor)",
            class: "logged",
        },
    ]
}

pub(super) fn render(page: &Page) -> String {
    let t = page.tally;
    let mut out = String::with_capacity(64 * 1024);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    // Nothing may load from anywhere: the page is evidence, read offline.
    out.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
    );
    let _ = write!(
        out,
        "<title>allowdns report: {}</title><style>{STYLE}</style></head><body>",
        esc(&page.file.display().to_string())
    );
    summary(&mut out, page);
    timeline(&mut out, t);
    names(&mut out, t);
    denied(&mut out, t);
    connections(&mut out, t);
    exfil(&mut out, t);
    suggestion(&mut out, page);
    out.push_str("</body></html>\n");
    out
}

fn summary(out: &mut String, page: &Page) {
    let t = page.tally;
    let _ = write!(
        out,
        "<h1>allowdns report</h1><section id=\"summary\"><p>Audit log <code>{}</code>",
        esc(&page.file.display().to_string())
    );
    if let Some(agent) = page.agent {
        let _ = write!(out, ", agent <code>{}</code>", esc(agent));
    }
    if let Some(since) = page.since {
        let _ = write!(out, ", since {}", stamp(since));
    }
    out.push_str(".</p>");
    if let Some((first, last)) = t.span {
        let _ = write!(out, "<p>From {} to {}.</p>", stamp(first), stamp(last));
    }
    let _ = write!(
        out,
        "<table id=\"totals\"><tr><th>lookups</th><th>allowed</th><th>denied</th><th>would deny</th><th>refused</th><th>connections blocked</th><th>logged</th></tr>\
         <tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr></table>",
        t.records,
        t.decisions[ALLOW],
        t.decisions[DENY],
        t.decisions[WOULD_DENY],
        t.decisions[REFUSED],
        t.egress_total[0],
        t.egress_total[1]
    );
    if t.agents.map.len() > 1 || t.agents.more > 0 {
        out.push_str("<p>Agents: ");
        let agents = t.agents.sorted_by(|c| c.iter().sum());
        let list: Vec<String> = agents
            .iter()
            .map(|(a, c)| format!("<code>{}</code> ({})", esc(a), c.iter().sum::<u64>()))
            .collect();
        out.push_str(&list.join(", "));
        more(out, t.agents.more, "lookups by further agents");
        out.push_str(" (use <code>--agent</code> for one).</p>");
    }
    let mut notes = Vec::new();
    if t.lost > 0 {
        notes.push(format!(
            "the log reports {} audit records lost: lookups are missing here",
            t.lost
        ));
    }
    if t.egress_lost > 0 {
        notes.push(format!(
            "{} blocked-connection reports were lost by the kernel",
            t.egress_lost
        ));
    }
    if t.before_since > 0 {
        notes.push(format!("{} lines before --since left out", t.before_since));
    }
    if t.other_agents > 0 {
        notes.push(format!("{} lines of other agents left out", t.other_agents));
    }
    if t.unknown_events > 0 {
        notes.push(format!(
            "{} events of a kind this version does not know left out",
            t.unknown_events
        ));
    }
    if page.skipped.count > 0 {
        let shown: Vec<String> = page
            .skipped
            .shown
            .iter()
            .map(|(line, why)| {
                format!(
                    "{}:{line}: {}",
                    esc(&page.file.display().to_string()),
                    esc(why)
                )
            })
            .collect();
        notes.push(format!(
            "<span id=\"skipped\">{} malformed lines skipped (--skip-malformed): {}{}</span>",
            page.skipped.count,
            shown.join("; "),
            if page.skipped.count > shown.len() as u64 {
                "; …"
            } else {
                ""
            }
        ));
    }
    for note in notes {
        let _ = write!(out, "<p class=\"warn\">Note: {note}.</p>");
    }
    out.push_str("</section>");
}

fn more(out: &mut String, n: u64, what: &str) {
    if n > 0 {
        let _ = write!(out, " <span class=\"more\">and {n} more {what}</span>");
    }
}

fn more_row(out: &mut String, columns: usize, n: u64, what: &str) {
    if n > 0 {
        let _ = write!(
            out,
            "<tr class=\"more\"><td colspan=\"{columns}\">and {n} more {what}</td></tr>"
        );
    }
}

fn timeline(out: &mut String, t: &Tally) {
    let rows = !t.timeline.buckets.is_empty();
    if !section(out, "timeline", "Lookups over time", rows, "No records.") {
        return;
    }
    let _ = write!(
        out,
        "<p>One bar per {}; grants, expiries, reloads and losses are the dashed lines (hover for details).</p>",
        bucket_words(t.timeline.width())
    );
    let series = lookups_series();
    out.push_str(&bars("timeline-chart", &t.timeline, &series, &t.markers));
    out.push_str(&legend(&series, true));
    if t.egress_total.iter().sum::<u64>() > 0 {
        let series = egress_series();
        out.push_str("<h3>Connections outside the allowlist</h3>");
        out.push_str(&bars("egress-chart", &t.timeline, &series, &t.markers));
        out.push_str(&legend(&series, false));
    }
    out.push_str("<h3 id=\"events\">Grants, reloads, expiries</h3>");
    if t.markers.is_empty() {
        out.push_str("<p>None in this log.</p>");
    } else {
        out.push_str(
            "<table id=\"events-table\"><tr><th>time</th><th>event</th><th>what</th></tr>",
        );
        let mut markers: Vec<_> = t.markers.iter().collect();
        markers.sort_by_key(|m| m.ts);
        for m in markers {
            let _ = write!(
                out,
                "<tr class=\"event {}\"><td>{}</td><td>{}</td><td>{}</td></tr>",
                m.kind,
                stamp(m.ts),
                m.event,
                esc(&m.text)
            );
        }
        more_row(out, 3, t.more_markers, "events (not listed)");
        out.push_str("</table>");
    }
    out.push_str("</section>");
}

fn names(out: &mut String, t: &Tally) {
    out.push_str("<section id=\"top-names\"><h2>Top names and the rules that matched</h2>");
    out.push_str("<table id=\"names-table\"><tr><th>name</th><th>lookups</th><th>allowed</th><th>denied</th><th>would deny</th><th>refused</th><th>rule</th><th>last seen</th></tr>");
    let names = t.names.sorted_by(|n| n.seen.count);
    for (name, stat) in names.iter().take(SHOWN) {
        let d = stat.decisions;
        let _ = write!(
            out,
            "<tr class=\"name\"><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(name),
            stat.seen.count,
            d[ALLOW],
            d[DENY],
            d[WOULD_DENY],
            d[REFUSED],
            esc(stat.rule.as_deref().unwrap_or("")),
            stamp(stat.seen.last)
        );
    }
    more_row(
        out,
        8,
        names.len().saturating_sub(SHOWN) as u64,
        "names with fewer lookups",
    );
    more_row(
        out,
        8,
        t.names.more,
        &format!("lookups of names past the first {MAX_NAMES} distinct ones (counted, not listed)"),
    );
    out.push_str("</table>");
    out.push_str("<table id=\"rules-table\"><tr><th>rule</th><th>lookups</th><th>names it matched (first few)</th><th>last seen</th></tr>");
    let rules = t.rules.sorted_by(|r| r.seen.count);
    for (rule, stat) in rules.iter().take(SHOWN) {
        let _ = write!(
            out,
            "<tr class=\"rule\"><td><code>{}</code></td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(rule),
            stat.seen.count,
            code_list(&stat.names),
            stamp(stat.seen.last)
        );
    }
    more_row(
        out,
        4,
        rules.len().saturating_sub(SHOWN) as u64,
        "rules with fewer lookups",
    );
    more_row(out, 4, t.rules.more, "lookups under further rules");
    out.push_str("</table></section>");
}

/// Opens section `id` headed `title`; without `rows`, says `none` and
/// closes it again (false).
fn section(out: &mut String, id: &str, title: &str, rows: bool, none: &str) -> bool {
    let _ = write!(out, "<section id=\"{id}\"><h2>{title}</h2>");
    if !rows {
        let _ = write!(out, "<p>{none}</p></section>");
    }
    rows
}

/// Each item escaped in `<code>`, comma-separated.
fn code_list(items: &[String]) -> String {
    let coded: Vec<String> = items
        .iter()
        .map(|n| format!("<code>{}</code>", esc(n)))
        .collect();
    coded.join(", ")
}

fn seen_cells(seen: &Seen) -> String {
    format!(
        "<td>{}</td><td>{}</td>",
        stamp(seen.first),
        stamp(seen.last)
    )
}

fn denied(out: &mut String, t: &Tally) {
    let rows = !t.denied.map.is_empty();
    if !section(
        out,
        "denied",
        "Denied names, by registrable domain",
        rows,
        "No lookup was denied.",
    ) {
        return;
    }
    out.push_str("<table id=\"denied-table\"><tr><th>domain / name</th><th>denied</th><th>would deny</th><th>first seen</th><th>last seen</th><th>who asked (first seen)</th></tr>");
    for (domain, stat) in t.denied.sorted_by(|d| d.seen.count) {
        let _ = write!(
            out,
            "<tr class=\"domain\"><td><code>{}</code> ({} names)</td><td class=\"n\">{}</td><td class=\"n\">{}</td>{}<td><code>{}</code></td></tr>",
            esc(domain),
            stat.names.map.len() as u64 + u64::from(stat.names.more > 0),
            stat.denied,
            stat.would_deny,
            seen_cells(&stat.seen),
            esc(stat.process.as_deref().unwrap_or(""))
        );
        for (name, n) in stat.names.sorted_by(|n| n.seen.count) {
            let _ = write!(
                out,
                "<tr class=\"denied-name\"><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td>{}<td></td></tr>",
                esc(name),
                n.denied,
                n.would_deny,
                seen_cells(&n.seen)
            );
        }
        more_row(
            out,
            6,
            stat.names.more,
            &format!(
                "lookups of further names under this domain (the first {MAX_NAMES_PER_DOMAIN} are listed): a DNS tunnel looks like this"
            ),
        );
    }
    more_row(
        out,
        6,
        t.denied.more,
        &format!("denied lookups under domains past the first {MAX_DENIED_DOMAINS}"),
    );
    out.push_str("</table></section>");
}

fn connections(out: &mut String, t: &Tally) {
    let rows = !t.egress.map.is_empty();
    if !section(
        out,
        "connections",
        "Connections blocked or logged",
        rows,
        "No <code>egress_denied</code> records in this log (the fence feeds them when the ruleset logs to NFLOG).",
    ) {
        return;
    }
    out.push_str("<table id=\"egress-table\"><tr><th>action</th><th>agent</th><th>destination</th><th>times</th><th>first seen</th><th>last seen</th><th>resolved as</th><th>why</th><th>process (first seen)</th></tr>");
    let all = t.egress.sorted_by(|e| e.seen.count);
    for (key, stat) in all.iter().take(MAX_DESTINATIONS) {
        let dest = match key.port {
            Some(port) if key.addr.contains(':') => format!("[{}]:{port}/{}", key.addr, key.proto),
            Some(port) => format!("{}:{port}/{}", key.addr, key.proto),
            None => format!("{} {}", key.addr, key.proto),
        };
        let why = stat
            .reason
            .clone()
            .or_else(|| {
                stat.rule
                    .as_ref()
                    .map(|r| format!("{r} allows other ports"))
            })
            .unwrap_or_else(|| "not handed out".into());
        let _ = write!(
            out,
            "<tr class=\"egress {}\"><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td class=\"n\">{}</td>{}<td><code>{}</code></td><td>{}</td><td><code>{}</code></td></tr>",
            if key.action == "logged" {
                "logged"
            } else {
                "blocked"
            },
            esc(&key.action),
            esc(key.agent.as_deref().unwrap_or("")),
            esc(&dest),
            stat.seen.count,
            seen_cells(&stat.seen),
            esc(stat.resolved.as_deref().unwrap_or("")),
            esc(&why),
            esc(stat.process.as_deref().unwrap_or(""))
        );
    }
    more_row(
        out,
        9,
        t.egress.more,
        &format!("connections to destinations past the first {MAX_DESTINATIONS}"),
    );
    out.push_str("</table></section>");
}

fn exfil(out: &mut String, t: &Tally) {
    out.push_str("<section id=\"exfil\"><h2>Exfiltration marks and stripped addresses</h2>");
    seen_table(
        out,
        &t.exfil,
        SeenTable {
            id: "exfil",
            none: "No lookup was marked by the exfiltration budget.",
            intro: format!(
                "{} lookups marked (<code>soft</code>: past the soft budget; <code>budget</code>, <code>qtype</code>: refused under a wildcard).",
                t.exfil_total
            ),
            heads: ["mark", "name", "lookups"],
            fewer: "marked names with fewer lookups",
            not_itemized: "marked lookups not itemized",
        },
        |(mark, name)| format!("<td>{}</td><td><code>{}</code></td>", esc(mark), esc(name)),
    );
    seen_table(
        out,
        &t.stripped,
        SeenTable {
            id: "stripped",
            none: "No answer was stripped of a special-purpose address.",
            intro: format!(
                "{} special-purpose addresses taken out of answers.",
                t.stripped_total
            ),
            heads: ["name", "address stripped", "times"],
            fewer: "stripped names with fewer answers",
            not_itemized: "stripped addresses not itemized",
        },
        |(name, addr)| {
            format!(
                "<td><code>{}</code></td><td><code>{addr}</code></td>",
                esc(name)
            )
        },
    );
    out.push_str("</section>");
}

/// The words of a [`seen_table`]: its id (also its rows' class), the
/// paragraph without rows and the one before them, the heads of its two key
/// columns and its count, and what its "more" rows count.
struct SeenTable {
    id: &'static str,
    none: &'static str,
    intro: String,
    heads: [&'static str; 3],
    fewer: &'static str,
    not_itemized: &'static str,
}

/// A table of keys (two cells each, from `cells`) by how often they were
/// seen, the first [`SHOWN`] of the most seen; a paragraph when there are none.
fn seen_table<K: Ord + std::hash::Hash + Eq>(
    out: &mut String,
    rows: &Capped<K, Seen>,
    words: SeenTable,
    cells: impl Fn(&K) -> String,
) {
    let SeenTable {
        id,
        none,
        intro,
        heads: [first, second, count],
        fewer,
        not_itemized,
    } = words;
    if rows.map.is_empty() {
        let _ = write!(out, "<p>{none}</p>");
        return;
    }
    let _ = write!(
        out,
        "<p>{intro}</p><table id=\"{id}-table\"><tr><th>{first}</th><th>{second}</th><th>{count}</th><th>first seen</th><th>last seen</th></tr>"
    );
    for (key, seen) in rows.sorted_by(|s| s.count).iter().take(SHOWN) {
        let _ = write!(
            out,
            "<tr class=\"{id}\">{}<td class=\"n\">{}</td>{}</tr>",
            cells(key),
            seen.count,
            seen_cells(seen)
        );
    }
    more_row(out, 5, (rows.map.len().saturating_sub(SHOWN)) as u64, fewer);
    more_row(out, 5, rows.more, not_itemized);
    out.push_str("</table>");
}

fn diagnostics(out: &mut String, diags: &Diagnostics) {
    if diags.items.is_empty() {
        return;
    }
    out.push_str("<ul class=\"diagnostics\">");
    for d in &diags.items {
        let _ = write!(out, "<li>{}</li>", esc(&d.to_string()));
    }
    out.push_str("</ul>");
}

fn suggestion(out: &mut String, page: &Page) {
    out.push_str(
        "<section id=\"suggest\"><h2>The policy <code>allowdns suggest</code> would write</h2>",
    );
    match page.learned {
        Learned::NotLearning => out.push_str(
            "<p>No lookup in this log was resolved in learn or monitor mode (<code>would_deny</code>): \
             there is nothing to learn a policy from.</p>",
        ),
        Learned::SeveralAgents(agents) => {
            let _ = write!(
                out,
                "<p>Several agents learned: {}. Choose one with <code>--agent</code> to see its policy.</p>",
                code_list(agents)
            );
        }
        Learned::TooManyNames => {
            let _ = write!(
                out,
                "<p class=\"warn\">The log holds more than {MAX_NAMES} distinct names, more than a report holds in memory; \
                 run <code>allowdns suggest</code> on it directly.</p>"
            );
        }
        Learned::Suggested { agent, result } => match result {
            Err(diags) => {
                let _ = write!(
                    out,
                    "<p class=\"warn\">No policy can be suggested for agent <code>{}</code>:</p>",
                    esc(agent)
                );
                diagnostics(out, diags);
            }
            Ok(s) => {
                let _ = write!(
                    out,
                    "<p>For agent <code>{}</code>, from the whole log (<code>--since</code> does not apply). \
                     Each entry, beside the lookups that are its evidence; review before use.</p>",
                    esc(agent)
                );
                entries(out, &s.policy, page.tally);
                diagnostics(out, &s.warnings);
                let _ = write!(
                    out,
                    "<details><summary>The whole policy file</summary><pre id=\"suggest-policy\">{}</pre></details>",
                    esc(&s.policy)
                );
            }
        },
    }
    out.push_str("</section>");
}

/// Each `destination:` entry of the suggested policy beside the lookups
/// this report counted for it.
fn entries(out: &mut String, policy: &str, t: &Tally) {
    out.push_str("<table id=\"suggest-entries\"><tr><th>entry</th><th>suggest's note</th><th>evidence in this report</th></tr>");
    for line in policy.lines() {
        let trimmed = line.trim_start();
        let (commented, rest) = match (
            trimmed.strip_prefix("- destination: "),
            trimmed.strip_prefix("# - destination: "),
        ) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => continue,
        };
        let (entry, note) = match rest.split_once("   # ") {
            Some((entry, note)) => (entry.trim(), note.trim()),
            None => (rest.trim(), ""),
        };
        let destination = entry.trim_matches('"');
        let _ = write!(
            out,
            "<tr class=\"suggest-entry{}\"><td><code>{}{}</code></td><td>{}</td><td>{}</td></tr>",
            if commented { " commented" } else { "" },
            if commented { "# " } else { "" },
            esc(entry),
            esc(note),
            evidence(destination, t)
        );
    }
    out.push_str("</table>");
}

/// The names under `destination` this report counted, most looked up first.
fn evidence(destination: &str, t: &Tally) -> String {
    let matches: Vec<(&String, &super::tally::NameStat)> = match destination.strip_prefix("*.") {
        Some(parent) => {
            let suffix = format!(".{parent}");
            let mut all: Vec<_> = t
                .names
                .map
                .iter()
                .filter(|(n, _)| n.ends_with(&suffix))
                .collect();
            all.sort_by(|a, b| b.1.seen.count.cmp(&a.1.seen.count).then(a.0.cmp(b.0)));
            all
        }
        None => t.names.map.get_key_value(destination).into_iter().collect(),
    };
    if matches.is_empty() {
        return "none counted (outside --since, or not a lookup)".into();
    }
    let shown: Vec<String> = matches
        .iter()
        .take(8)
        .map(|(name, stat)| {
            let d = stat.decisions;
            format!(
                "<code>{}</code>: {} lookups ({} allowed, {} would deny, {} denied), last {}",
                esc(name),
                stat.seen.count,
                d[ALLOW],
                d[WOULD_DENY],
                d[DENY],
                stamp(stat.seen.last)
            )
        })
        .collect();
    let mut text = shown.join("<br>");
    if matches.len() > 8 {
        let _ = write!(text, "<br>and {} more names", matches.len() - 8);
    }
    text
}
