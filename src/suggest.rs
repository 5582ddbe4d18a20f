//! `allowdns suggest`: turns an audit log into a policy for a human to review.
//!
//! Every name an agent looked up (allowed, denied, or resolved in learn mode
//! as `would_deny`) becomes an `expected_outbound` entry. Siblings are grouped
//! into `*.parent` once the parent has [`MIN_CHILDREN`] distinct child labels,
//! never over a TLD or public suffix. Counts and first/last seen go into
//! comments. The output depends only on the log, so the same log always gives
//! the same file, and it is checked by the policy loader before it is written.

use std::collections::{BTreeMap, BTreeSet, HashMap, btree_map};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::app::Failure;
use crate::cli::SuggestArgs;
use crate::diagnostics::Diagnostics;
use crate::policy;

/// A parent with at least this many distinct child labels among the names
/// looked up becomes `*.parent`. Up to three siblings are easy to review one
/// by one; four or more usually means a numbered or sharded family.
pub const MIN_CHILDREN: usize = 4;

/// Problems reported one by one before the rest are only counted, so a
/// binary file does not print a million errors.
const MAX_REPORTED: usize = 20;

/// Child names listed above a wildcard entry.
const MAX_SHOWN: usize = 8;

/// Second-level labels that registries sell names under (`com.ar`, `co.kr`).
/// The public suffix list is short, so `suggest` also refuses to wildcard
/// these under any two-letter country TLD.
const REGISTRY_LABELS: &[&str] = &[
    "ac", "co", "com", "edu", "gob", "gov", "govt", "ltd", "mil", "ne", "net", "nic", "nom", "or",
    "org", "plc", "sch",
];

/// The suggested policy, and what was left out of it.
#[derive(Debug)]
pub struct Suggestion {
    /// The policy file's text.
    pub policy: String,
    pub warnings: Diagnostics,
}

/// `allowdns suggest`: reads the log, writes the policy, returns the warnings.
pub fn run(args: &SuggestArgs) -> Result<Diagnostics, Failure> {
    let file = args.audit_log.as_path();
    let input = std::fs::File::open(file).map_err(|e| {
        let mut diags = Diagnostics::default();
        diags.error(file, None, None, format!("cannot read audit log: {e}"));
        Failure::Invalid(diags)
    })?;
    let suggestion =
        suggest(file, BufReader::new(input), args.agent.as_deref()).map_err(Failure::Invalid)?;
    match &args.output {
        Some(out) if out != Path::new("-") => std::fs::write(out, &suggestion.policy)
            .map_err(|e| Failure::Runtime(format!("cannot write {}: {e}", out.display())))?,
        _ => std::io::stdout()
            .write_all(suggestion.policy.as_bytes())
            .map_err(|e| Failure::Runtime(format!("cannot write to stdout: {e}")))?,
    }
    Ok(suggestion.warnings)
}

/// Builds the policy for `agent` (or the log's only agent) from an audit log.
/// Every malformed line is reported, with `file`:line.
pub fn suggest(
    file: &Path,
    input: impl BufRead,
    agent: Option<&str>,
) -> Result<Suggestion, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut log = read_log(file, input, &mut diags);
    if diags.has_errors() {
        return Err(diags);
    }
    let (agent, observed) = match choose_agent(&mut log, agent) {
        Ok(chosen) => chosen,
        Err(message) => {
            diags.error(file, None, None, message);
            return Err(diags);
        }
    };
    warn_left_out(file, &observed, &mut diags);
    let entries = group(&observed.names);
    if entries.is_empty() {
        diags.error(
            file,
            None,
            None,
            format!(
                "none of the {} lookups by agent '{agent}' can be allowed by a policy",
                observed.lookups
            ),
        );
        return Err(diags);
    }
    let text = render(file, &log, &agent, &observed, &entries);
    // The output must load without a single diagnostic; anything else is a bug here.
    let mut loaded = Diagnostics::default();
    policy::compile_source(Path::new("<suggested policy>"), &text, &mut loaded);
    for d in loaded.items {
        diags.error(file, None, None, format!("internal error: {d}"));
    }
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(Suggestion {
        policy: text,
        warnings: diags,
    })
}

/// How often a name (or a group of names) was looked up, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    lookups: u64,
    first: SystemTime,
    last: SystemTime,
    /// Lookups the policy in force denied.
    denied: u64,
    /// Answers other than NOERROR, by rcode. Denials are not counted: their
    /// NXDOMAIN is allowdns's own, not the name's.
    failed: BTreeMap<String, u64>,
}

impl Seen {
    fn new(ts: SystemTime) -> Seen {
        Seen {
            lookups: 0,
            first: ts,
            last: ts,
            denied: 0,
            failed: BTreeMap::new(),
        }
    }

    fn add(&mut self, lookup: &Lookup) {
        self.lookups += 1;
        self.first = self.first.min(lookup.ts);
        self.last = self.last.max(lookup.ts);
        if lookup.denied {
            self.denied += 1;
        } else if let Some(rcode) = lookup.rcode.filter(|r| *r != "NOERROR") {
            *self.failed.entry(rcode.to_string()).or_default() += 1;
        }
    }

    fn merge(&mut self, other: &Seen) {
        self.lookups += other.lookups;
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
        self.denied += other.denied;
        for (rcode, n) in &other.failed {
            *self.failed.entry(rcode.clone()).or_default() += n;
        }
    }
}

/// A name looked up but not suggested, and why.
#[derive(Debug)]
struct LeftOut {
    reason: String,
    /// The first line it appears on.
    line: usize,
    seen: Seen,
}

/// What one agent looked up.
#[derive(Debug, Default)]
struct Observed {
    lookups: u64,
    /// Canonical names (policy keys), sorted.
    names: BTreeMap<String, Seen>,
    /// Keyed by the name as the log spells it.
    left_out: BTreeMap<String, LeftOut>,
    clients: BTreeSet<IpAddr>,
    span: Option<(SystemTime, SystemTime)>,
}

/// Everything read from the log, per agent.
#[derive(Debug, Default)]
struct Log {
    /// Audit records (not event lines) read.
    records: u64,
    /// Records the writer reported lost (`audit_records_lost`).
    lost: u64,
    agents: BTreeMap<String, Observed>,
}

/// One record that counts as a lookup.
struct Lookup<'a> {
    ts: SystemTime,
    client: IpAddr,
    agent: &'a str,
    qname: &'a str,
    denied: bool,
    rcode: Option<&'a str>,
}

/// Counts problems past [`MAX_REPORTED`] instead of reporting each one.
#[derive(Default)]
struct Capped(usize);

impl Capped {
    fn report(&mut self) -> bool {
        self.0 += 1;
        self.0 <= MAX_REPORTED
    }

    fn summary(&self) -> Option<String> {
        (self.0 > MAX_REPORTED).then(|| format!("... and {} more", self.0 - MAX_REPORTED))
    }
}

fn read_log(file: &Path, mut input: impl BufRead, diags: &mut Diagnostics) -> Log {
    let mut log = Log::default();
    let mut bad = Capped::default();
    let mut buf = Vec::new();
    for number in 1.. {
        buf.clear();
        match input.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                diags.error(file, None, None, format!("cannot read audit log: {e}"));
                break;
            }
        }
        let complete = buf.ends_with(b"\n");
        let Ok(text) = std::str::from_utf8(&buf) else {
            if bad.report() {
                diags.error(file, Some(number), None, "not UTF-8 text");
            }
            continue;
        };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let outcome = serde_json::from_str::<Value>(text)
            .map_err(LineError::Json)
            .and_then(|value| {
                match parse_record(&value)? {
                    Parsed::Lookup(lookup) => {
                        log.records += 1;
                        observe(&mut log, &lookup, number);
                    }
                    Parsed::Skipped => log.records += 1,
                    Parsed::Lost(n) => log.lost += n,
                }
                Ok(())
            });
        match outcome {
            Ok(()) => {}
            // A log still being written may end in half a line.
            Err(LineError::Json(e)) if !complete && e.is_eof() => diags.warning(
                file,
                Some(number),
                None,
                "incomplete last line skipped (is the log still being written?)",
            ),
            Err(e) => {
                if bad.report() {
                    let (field, message) = e.split();
                    diags.error(file, Some(number), field, message);
                }
            }
        }
    }
    if let Some(more) = bad.summary() {
        diags.error(file, None, None, format!("{more} malformed lines"));
    }
    log
}

enum Parsed<'a> {
    Lookup(Lookup<'a>),
    /// A record that is not a lookup by an agent: refused, or without a name.
    Skipped,
    /// `audit_records_lost`, with its count.
    Lost(u64),
}

enum LineError {
    Json(serde_json::Error),
    Field(&'static str, String),
    Other(String),
}

impl LineError {
    fn split(self) -> (Option<String>, String) {
        match self {
            LineError::Json(e) => {
                // serde_json appends " at line 1 column N"; the line is ours.
                let text = e.to_string();
                let text = text.split(" at line ").next().unwrap_or(&text).to_string();
                (
                    None,
                    format!("not a JSON audit record: {text} (column {})", e.column()),
                )
            }
            LineError::Field(field, message) => (Some(field.to_string()), message),
            LineError::Other(message) => (None, message),
        }
    }
}

fn parse_record(value: &Value) -> Result<Parsed<'_>, LineError> {
    let Value::Object(object) = value else {
        return Err(LineError::Other("not a JSON object".into()));
    };
    // Unknown fields are ignored so newer logs load; known ones must have their types.
    if let Some(event) = string(object, "event")? {
        return match event {
            "audit_records_lost" => match object.get("count") {
                Some(Value::Number(n)) if n.is_u64() => Ok(Parsed::Lost(n.as_u64().unwrap_or(0))),
                _ => Err(LineError::Field(
                    "count",
                    "expected a non-negative integer".into(),
                )),
            },
            _ => Ok(Parsed::Skipped),
        };
    }
    let denied = match string(object, "decision")? {
        Some("allow" | "would_deny") => false,
        Some("deny") => true,
        Some("refused") => return Ok(Parsed::Skipped),
        Some(other) => {
            return Err(LineError::Field(
                "decision",
                format!("unknown decision '{other}' (expected allow, deny, would_deny or refused)"),
            ));
        }
        None => return Err(LineError::Field("decision", "missing".into())),
    };
    let ts = string(object, "ts")?.ok_or(LineError::Field("ts", "missing".into()))?;
    let ts = humantime::parse_rfc3339(ts)
        .map_err(|e| LineError::Field("ts", format!("'{ts}' is not an RFC 3339 time: {e}")))?;
    let client = string(object, "client")?.ok_or(LineError::Field("client", "missing".into()))?;
    let client = client
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| client.parse::<IpAddr>())
        .map_err(|_| LineError::Field("client", format!("'{client}' is not an address")))?;
    let rcode = string(object, "rcode")?;
    let (Some(agent), Some(qname)) = (string(object, "agent")?, string(object, "qname")?) else {
        return Ok(Parsed::Skipped);
    };
    Ok(Parsed::Lookup(Lookup {
        ts,
        client: client.to_canonical(),
        agent,
        qname,
        denied,
        rcode,
    }))
}

/// A string field; `None` when absent or null.
fn string<'a>(
    object: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, LineError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(LineError::Field(
            field,
            format!("expected a string, found {}", kind(other)),
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn observe(log: &mut Log, lookup: &Lookup, line: usize) {
    let observed = log.agents.entry(lookup.agent.to_string()).or_default();
    observed.lookups += 1;
    observed.clients.insert(lookup.client);
    observed.span = Some(match observed.span {
        None => (lookup.ts, lookup.ts),
        Some((first, last)) => (first.min(lookup.ts), last.max(lookup.ts)),
    });
    match policy_name(lookup.qname) {
        Ok(key) => observed
            .names
            .entry(key)
            .or_insert_with(|| Seen::new(lookup.ts))
            .add(lookup),
        Err(reason) => observed
            .left_out
            .entry(lookup.qname.to_string())
            .or_insert_with(|| LeftOut {
                reason,
                line,
                seen: Seen::new(lookup.ts),
            })
            .seen
            .add(lookup),
    }
}

/// The policy key for a logged name, or why no entry can allow it.
fn policy_name(qname: &str) -> Result<String, String> {
    // The writer escapes `*` as `\042`; a literal one in an edited log must not become a pattern.
    if qname.contains(['*', '?']) {
        return Err("a wildcard character in a looked-up name".into());
    }
    // Logs are lower case A-labels already; hand-edited ones may not be.
    let key = policy::name::pattern_key(qname)
        .map_err(|e| format!("cannot be written in a policy: {e}"))?;
    if policy::is_public_suffix(&key) {
        return Err("a TLD or public suffix, not a host".into());
    }
    Ok(key)
}

fn choose_agent(log: &mut Log, wanted: Option<&str>) -> Result<(String, Observed), String> {
    let seen = log
        .agents
        .iter()
        .map(|(agent, o)| format!("'{agent}' ({} lookups)", o.lookups))
        .collect::<Vec<_>>()
        .join(", ");
    match wanted {
        Some(agent) => match log.agents.remove_entry(agent) {
            Some(chosen) => Ok(chosen),
            None if log.agents.is_empty() => Err(format!(
                "no lookups by agent '{agent}': the log holds no lookups by any agent"
            )),
            None => Err(format!(
                "no lookups by agent '{agent}'; agents in the log: {}",
                seen
            )),
        },
        None => match log.agents.len() {
            0 => Err("no lookups to suggest from: the log holds no allowed or denied lookups by any agent".into()),
            1 => Ok(log.agents.pop_first().expect("one agent")),
            n => Err(format!(
                "the log holds lookups by {n} agents: {}; choose one with --agent",
                seen
            )),
        },
    }
}

fn warn_left_out(file: &Path, observed: &Observed, diags: &mut Diagnostics) {
    let mut capped = Capped::default();
    for (name, left) in &observed.left_out {
        if capped.report() {
            diags.warning(
                file,
                Some(left.line),
                Some("qname".into()),
                format!("left out {}: {}", quote(name), plain(&left.reason)),
            );
        }
    }
    if let Some(more) = capped.summary() {
        diags.warning(file, None, None, format!("{more} names left out"));
    }
}

/// One `expected_outbound` entry of the suggestion.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    /// A name, or `*.parent`.
    destination: String,
    /// The names it stands for, sorted.
    names: Vec<String>,
    seen: Seen,
}

/// Groups names into entries, sorted by domain (TLD first).
///
/// A parent with at least [`MIN_CHILDREN`] distinct child labels becomes
/// `*.parent`, which covers every name at any depth below it; the widest such
/// parent wins. The parent must not be a TLD, public suffix or registry
/// label. `*.parent` does not match `parent`, so a parent that was itself
/// looked up keeps its own entry.
fn group(names: &BTreeMap<String, Seen>) -> Vec<Entry> {
    let mut children: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for name in names.keys() {
        let mut rest = name.as_str();
        while let Some(dot) = rest.find('.') {
            children
                .entry(&rest[dot + 1..])
                .or_default()
                .insert(&rest[..dot]);
            rest = &rest[dot + 1..];
        }
    }
    let groups = |parent: &str| {
        children
            .get(parent)
            .is_some_and(|c| c.len() >= MIN_CHILDREN)
            && may_wildcard(parent)
    };
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for (name, seen) in names {
        let mut widest = None;
        let mut rest = name.as_str();
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if groups(rest) {
                widest = Some(rest);
            }
        }
        let destination = match widest {
            Some(parent) => format!("*.{parent}"),
            None => name.clone(),
        };
        match entries.entry(destination) {
            btree_map::Entry::Vacant(slot) => {
                let destination = slot.key().clone();
                slot.insert(Entry {
                    destination,
                    names: vec![name.clone()],
                    seen: seen.clone(),
                });
            }
            btree_map::Entry::Occupied(mut slot) => {
                let entry = slot.get_mut();
                entry.names.push(name.clone());
                entry.seen.merge(seen);
            }
        }
    }
    let mut entries: Vec<Entry> = entries.into_values().collect();
    entries.sort_by(|a, b| domain_order(&a.destination).cmp(&domain_order(&b.destination)));
    entries
}

/// Whether `*.parent` is narrow enough to suggest.
fn may_wildcard(parent: &str) -> bool {
    if policy::is_public_suffix(parent) {
        return false;
    }
    match parent.split_once('.') {
        Some((label, tld)) => !(tld.len() == 2 && REGISTRY_LABELS.contains(&label)),
        None => false,
    }
}

/// Labels from the TLD down, so related names sort together and `*.x`
/// right after `x`.
fn domain_order(name: &str) -> Vec<&str> {
    name.rsplit('.').collect()
}

fn render(file: &Path, log: &Log, agent: &str, observed: &Observed, entries: &[Entry]) -> String {
    let mut out = String::new();
    let (first, last) = observed.span.expect("an agent has lookups");
    let _ = writeln!(
        out,
        "# Suggested by `allowdns suggest` from {} ({} records).",
        quote(&file.display().to_string()),
        log.records
    );
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
# observed, including lookups that were denied (\"denied N\") or failed (the
# rcode and count). Delete what the agent should not reach. The audit log has
# no ports: add port and protocol where the firewall should restrict them.
#
",
    );
    let _ = writeln!(
        out,
        "# A parent with {MIN_CHILDREN} or more distinct child labels became \"*.parent\", except
# TLDs and public suffixes. \"*.parent\" does not match the parent itself, which
# has its own entry when it was looked up."
    );
    out.push_str("version: 1\n");
    let _ = writeln!(out, "agent_name: {}", quote(agent));
    out.push_str("mode: enforce\n");
    out.push_str("# The client addresses seen; widen them if the agent's address can change.\n");
    out.push_str("clients:\n");
    for ip in &observed.clients {
        let _ = writeln!(out, "  - {}", quote(&ipnet::IpNet::from(*ip).to_string()));
    }
    out.push_str("expected_outbound:\n");
    let lines: Vec<String> = entries
        .iter()
        .map(|e| format!("  - destination: {}", quote(&e.destination)))
        .collect();
    let width = lines.iter().map(String::len).max().unwrap_or(0).min(60);
    for (entry, line) in entries.iter().zip(&lines) {
        if let Some(parent) = entry.destination.strip_prefix("*.") {
            let suffix = format!(".{parent}");
            let shown: Vec<&str> = entry
                .names
                .iter()
                .take(MAX_SHOWN)
                .map(|n| n.strip_suffix(&suffix).unwrap_or(n))
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
        let _ = writeln!(out, "{line:width$}   # {count}{}", describe(&entry.seen));
    }
    if !observed.left_out.is_empty() {
        out.push_str("  # Left out: no policy entry can allow these.\n");
        for (name, left) in &observed.left_out {
            let _ = writeln!(
                out,
                "  # {}: {}; {}",
                quote(name),
                plain(&left.reason),
                describe(&left.seen)
            );
        }
    }
    out
}

/// "12 lookups, first …, last …; denied 2; NXDOMAIN 3".
fn describe(seen: &Seen) -> String {
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
    if seen.denied > 0 {
        let _ = write!(text, "; denied {}", seen.denied);
    }
    for (rcode, n) in &seen.failed {
        let _ = write!(text, "; {} {n}", plain(rcode));
    }
    text
}

fn stamp(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(t)
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Text from the log made safe for a comment or message: [`quote`] without
/// the quotes.
fn plain(s: &str) -> String {
    let quoted = quote(s);
    quoted[1..quoted.len() - 1].to_string()
}

/// A YAML double-quoted scalar. Everything outside printable ASCII is
/// escaped, so no input can end the string, the line or a comment early.
fn quote(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One audit line as the writer formats it, `sec` seconds into the log.
    fn line(sec: u64, agent: &str, qname: &str, decision: &str, rcode: &str) -> String {
        let ts = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000 + sec);
        let mut v = serde_json::json!({
            "ts": humantime::format_rfc3339_micros(ts).to_string(),
            "client": "10.200.1.2:5353",
            "transport": "udp",
            "agent": agent,
            "qname": qname,
            "qtype": "A",
            "decision": decision,
            "rule": null,
            "dynamic": false,
            "rcode": rcode,
            "answers": [],
            "upstream_ms": null,
        });
        v["future_field"] = serde_json::json!({"unknown": true});
        format!("{v}\n")
    }

    fn lookups(names: &[&str]) -> String {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| line(i as u64, "agent", n, "would_deny", "NOERROR"))
            .collect()
    }

    fn run_on(log: &str, agent: Option<&str>) -> Result<Suggestion, Diagnostics> {
        suggest(Path::new("a.jsonl"), log.as_bytes(), agent)
    }

    fn messages(d: &Diagnostics) -> Vec<String> {
        d.items.iter().map(|d| d.to_string()).collect()
    }

    /// The suggestion's destinations, in order.
    fn destinations(log: &str) -> Vec<String> {
        let text = run_on(log, None).expect("suggests").policy;
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("- destination: \""))
            .map(|l| l[..l.find('"').unwrap()].to_string())
            .collect()
    }

    fn compiled(text: &str) -> policy::Policy {
        let mut d = Diagnostics::default();
        let p = policy::compile_source(Path::new("s.yaml"), text, &mut d).expect("compiles");
        assert!(d.items.is_empty(), "{:?}", messages(&d));
        p
    }

    #[test]
    fn siblings_group_into_a_wildcard_from_the_threshold_on() {
        let log = lookups(&[
            "cdn-1.images.example.net",
            "cdn-2.images.example.net",
            "cdn-3.images.example.net",
            "cdn-4.images.example.net",
            "cdn-4.images.example.net",
            "a.three.example.org",
            "b.three.example.org",
            "c.three.example.org",
        ]);
        assert_eq!(
            destinations(&log),
            [
                "*.images.example.net",
                "a.three.example.org",
                "b.three.example.org",
                "c.three.example.org",
            ]
        );
        let text = run_on(&log, None).unwrap().policy;
        assert!(text.contains("  # cdn-1, cdn-2, cdn-3, cdn-4\n"), "{text}");
        assert!(
            text.contains("\"*.images.example.net\"   # 4 names, 5 lookups, first 2026-"),
            "{text}"
        );
    }

    #[test]
    fn never_a_wildcard_over_a_tld_or_public_suffix() {
        let mut names = Vec::new();
        for parent in ["com", "co.uk", "github.io", "com.ar", "herokuapp.com"] {
            for child in ["a", "b", "c", "d", "e"] {
                names.push(format!("{child}.{parent}"));
            }
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let got = destinations(&lookups(&names));
        assert_eq!(got.len(), 25, "{got:?}");
        assert!(got.iter().all(|d| !d.contains('*')), "{got:?}");
        // One level down is somebody's own domain, which may be grouped.
        let got = destinations(&lookups(&[
            "a.me.github.io",
            "b.me.github.io",
            "c.me.github.io",
            "d.me.github.io",
        ]));
        assert_eq!(got, ["*.me.github.io"]);
    }

    #[test]
    fn a_parent_looked_up_itself_keeps_its_own_entry() {
        let log = lookups(&[
            "w.x.example",
            "x.example",
            "a.x.example",
            "b.x.example",
            "c.x.example",
        ]);
        assert_eq!(destinations(&log), ["x.example", "*.x.example"]);
        let p = compiled(&run_on(&log, None).unwrap().policy);
        assert!(p.rule_for("x.example").is_some());
        assert!(p.rule_for("new.x.example").is_some());
        assert!(p.rule_for("example").is_none());
    }

    #[test]
    fn the_widest_parent_wins_and_covers_deeper_names() {
        let log = lookups(&[
            "www.example.com",
            "mail.example.com",
            "cdn.example.com",
            "a.api.example.com",
            "b.api.example.com",
            "c.api.example.com",
            "d.api.example.com",
        ]);
        assert_eq!(destinations(&log), ["*.example.com"]);
        let text = run_on(&log, None).unwrap().policy;
        assert!(text.contains("# 7 names, 7 lookups"), "{text}");
    }

    #[test]
    fn names_are_normalized_to_lower_case_a_labels() {
        let log = lookups(&[
            "Bücher.Example",
            "xn--bcher-kva.example",
            "WWW.Example.NET.",
        ]);
        assert_eq!(
            destinations(&log),
            ["xn--bcher-kva.example", "www.example.net"]
        );
        let text = run_on(&log, None).unwrap().policy;
        assert!(
            text.contains("\"xn--bcher-kva.example\"   # 2 lookups"),
            "{text}"
        );
    }

    #[test]
    fn names_and_agents_are_quoted_safely() {
        for odd in ["plain", "a\"b: #c\nd", "*.x", "&anchor", "é 🦀 \\", "- [x]"] {
            let yaml = format!("v: {}\n", quote(odd));
            let back: HashMap<String, String> = serde_yaml::from_str(&yaml).unwrap();
            assert_eq!(back["v"], odd, "{yaml}");
            assert!(!quote(odd).contains('\n'));
        }
        let agent = "travel \"v1\"\n# injected";
        let log: String = (0..4)
            .map(|i| line(i, agent, &format!("n{i}.x.example"), "allow", "NOERROR"))
            .collect();
        let text = run_on(&log, None).unwrap().policy;
        assert!(text.contains("  - destination: \"*.x.example\""), "{text}");
        assert!(!text.contains("\n# injected"), "{text}");
        assert_eq!(&*compiled(&text).agent, agent.trim());
    }

    #[test]
    fn output_is_sorted_and_deterministic() {
        let names = [
            "b.example.org",
            "a.example.com",
            "z.example.com",
            "a.example.org",
            "x.test",
        ];
        let forward = lookups(&names);
        let backward: String = forward.lines().rev().map(|l| format!("{l}\n")).collect();
        let a = run_on(&forward, None).unwrap().policy;
        assert_eq!(a, run_on(&backward, None).unwrap().policy);
        assert_eq!(
            destinations(&forward),
            [
                "a.example.com",
                "z.example.com",
                "a.example.org",
                "b.example.org",
                "x.test"
            ]
        );
    }

    #[test]
    fn malformed_lines_are_all_reported_with_their_line() {
        let log = format!(
            "{}not json\n{}[1]\n{}{}",
            line(0, "a", "ok.example", "allow", "NOERROR"),
            line(1, "a", "ok.example", "maybe", "NOERROR"),
            line(2, "a", "ok.example", "allow", "NOERROR").replace("\"10.200.1.2:5353\"", "7"),
            line(3, "a", "ok.example", "allow", "NOERROR").replace("2026-", "yesterday-"),
        );
        let errors = messages(&run_on(&log, None).unwrap_err());
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(
            errors[0].starts_with("error: a.jsonl:2: not a JSON audit record"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("error: a.jsonl:3: decision: unknown decision 'maybe'"),
            "{errors:?}"
        );
        assert_eq!(errors[2], "error: a.jsonl:4: not a JSON object");
        assert_eq!(
            errors[3],
            "error: a.jsonl:5: client: expected a string, found a number"
        );
        assert!(
            errors[4].starts_with("error: a.jsonl:6: ts: 'yesterday-"),
            "{errors:?}"
        );
    }

    #[test]
    fn an_incomplete_last_line_is_only_a_warning() {
        let mut log = lookups(&["a.example"]);
        log.push_str(&line(1, "agent", "b.example", "allow", "NOERROR")[..40]);
        let s = run_on(&log, None).unwrap();
        assert_eq!(
            messages(&s.warnings),
            ["warning: a.jsonl:2: incomplete last line skipped (is the log still being written?)"]
        );
    }

    #[test]
    fn several_agents_need_a_choice() {
        let log = format!(
            "{}{}{}",
            line(0, "alpha", "a.example", "allow", "NOERROR"),
            line(1, "beta", "b.example", "allow", "NOERROR"),
            line(2, "beta", "c.example", "deny", "NXDOMAIN"),
        );
        let e = messages(&run_on(&log, None).unwrap_err());
        assert_eq!(
            e,
            [
                "error: a.jsonl: the log holds lookups by 2 agents: 'alpha' (1 lookups), 'beta' (2 lookups); choose one with --agent"
            ]
        );
        let text = run_on(&log, Some("beta")).unwrap().policy;
        assert!(
            text.contains("agent_name: \"beta\"") && !text.contains("a.example"),
            "{text}"
        );
        let e = messages(&run_on(&log, Some("gamma")).unwrap_err());
        assert!(
            e[0].contains("no lookups by agent 'gamma'; agents in the log: 'alpha'"),
            "{e:?}"
        );
        let e = messages(&run_on("", None).unwrap_err());
        assert!(e[0].contains("no lookups to suggest from"), "{e:?}");
    }

    #[test]
    fn refused_and_event_lines_are_skipped_and_loss_is_noted() {
        let refused = line(1, "a", "x", "refused", "FORMERR")
            .replace("\"agent\":\"a\"", "\"agent\":null")
            .replace("\"qname\":\"x\"", "\"qname\":null");
        let log = format!(
            "{}{refused}{}\n",
            line(0, "a", "ok.example", "allow", "NOERROR"),
            r#"{"ts":"2026-11-22T01:02:03.000000Z","event":"audit_records_lost","count":7}"#,
        );
        let text = run_on(&log, None).unwrap().policy;
        assert!(text.contains("(2 records)"), "{text}");
        assert!(text.contains("Agent \"a\": 1 lookup,"), "{text}");
        assert!(text.contains("# The log reports 7 records lost"), "{text}");
    }

    #[test]
    fn unusable_names_are_left_out_with_a_warning() {
        let log = lookups(&[
            "ok.example",
            "localhost",
            "co.uk",
            "*.evil.example",
            "a\\046b.example",
            ".",
        ]);
        let s = run_on(&log, None).unwrap();
        assert_eq!(destinations(&log), ["ok.example"]);
        let w = messages(&s.warnings);
        assert_eq!(w.len(), 5, "{w:?}");
        assert!(
            w.iter().any(|w| w
                .starts_with("warning: a.jsonl:4: qname: left out \"*.evil.example\": a wildcard")),
            "{w:?}"
        );
        assert!(
            s.policy
                .contains("  # \"localhost\": a TLD or public suffix, not a host; 1 lookup"),
            "{}",
            s.policy
        );
        let e = messages(&run_on(&lookups(&["localhost"]), None).unwrap_err());
        assert!(
            e.iter()
                .any(|e| e.contains("none of the 1 lookups by agent 'agent' can be allowed")),
            "{e:?}"
        );
    }

    #[test]
    fn denials_are_counted_apart_from_failed_lookups() {
        let log = format!(
            "{}{}{}",
            line(0, "a", "gone.example", "deny", "NXDOMAIN"),
            line(1, "a", "gone.example", "allow", "NXDOMAIN"),
            line(2, "a", "gone.example", "allow", "SERVFAIL"),
        );
        let text = run_on(&log, None).unwrap().policy;
        assert!(text.contains("# 3 lookups, first 2026-11-18T11:06:40Z, last 2026-11-18T11:06:42Z; denied 1; NXDOMAIN 1; SERVFAIL 1"), "{text}");
    }
}
