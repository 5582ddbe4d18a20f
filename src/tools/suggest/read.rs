//! Reading the audit log: line by line into the schema's types
//! ([`QueryRecord`], [`EventLine`]), malformed lines reported with their
//! line number, and the chosen agent's lookups counted by name.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read as _};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::SystemTime;

use serde_json::Value;

use super::render::plural;
use super::{MAX_AGENTS, MAX_LINE, MAX_REPORTED, MAX_SKIPPED_REPORTED, Options};

/// Malformed lines reported one by one while no line so far was a record.
const NOT_A_LOG_REPORTED: usize = 3;
use crate::diagnostics::Diagnostics;
use crate::observe::audit::schema::{Decision, Event, EventLine, QueryRecord};
use crate::policy;

/// How often a name (or a group of names) was looked up, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    pub(super) lookups: u64,
    pub(super) first: SystemTime,
    pub(super) last: SystemTime,
    /// Lookups the policy in force denied.
    pub(super) denied: u64,
    /// Answers other than NOERROR, by rcode. Denials are not counted: their
    /// NXDOMAIN is allowdns's own, not the name's.
    pub(super) failed: BTreeMap<String, u64>,
}

impl Seen {
    pub(super) fn new(ts: SystemTime) -> Seen {
        Seen {
            lookups: 0,
            first: ts,
            last: ts,
            denied: 0,
            failed: BTreeMap::new(),
        }
    }

    pub(super) fn add(&mut self, lookup: &Lookup) {
        self.lookups += 1;
        self.first = self.first.min(lookup.ts);
        self.last = self.last.max(lookup.ts);
        if lookup.denied {
            self.denied += 1;
        } else if let Some(rcode) = lookup.rcode.filter(|r| *r != "NOERROR") {
            *self.failed.entry(rcode.to_string()).or_default() += 1;
        }
    }

    pub(super) fn merge(&mut self, other: &Seen) {
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
pub(super) struct LeftOut {
    pub(super) reason: Unusable,
    /// The first line it appears on.
    pub(super) line: usize,
    pub(super) seen: Seen,
}

/// What one agent looked up.
#[derive(Debug, Default)]
pub(super) struct Observed {
    pub(super) lookups: u64,
    /// Canonical names (policy keys), sorted.
    pub(super) names: BTreeMap<String, Seen>,
    /// Keyed by the name as the log spells it.
    pub(super) left_out: BTreeMap<String, LeftOut>,
    pub(super) clients: BTreeSet<IpAddr>,
    pub(super) span: Option<(SystemTime, SystemTime)>,
    /// Connections to addresses allowdns never handed out: (address,
    /// port, protocol) → how often, at most [`MAX_CONNECTIONS`].
    pub(super) connections: BTreeMap<(IpAddr, Option<u16>, String), u64>,
    /// Such connections that did not fit.
    pub(super) more_connections: u64,
}

/// Distinct unresolved destinations kept per agent.
pub(super) const MAX_CONNECTIONS: usize = 1000;

/// What was read from the log: names for one agent only, counts for all.
#[derive(Debug, Default)]
pub(super) struct Log {
    /// Audit records (not event lines) read.
    pub(super) records: u64,
    /// Records the writer reported lost (`audit_records_lost`).
    pub(super) lost: u64,
    /// Lookups per agent, for the first [`MAX_AGENTS`] agents.
    pub(super) agents: BTreeMap<String, u64>,
    /// Some agent past [`MAX_AGENTS`] was seen.
    pub(super) more_agents: bool,
    /// Without `--agent`, the first agent seen; its names are kept until a
    /// second agent shows up (which is an error anyway).
    pub(super) first_agent: Option<String>,
    /// The wanted (or first) agent's lookups; `None` once a second agent
    /// made the log unusable without `--agent`.
    pub(super) observed: Option<Observed>,
}

/// One record that counts as a lookup.
pub(super) struct Lookup<'a> {
    pub(super) ts: SystemTime,
    pub(super) client: IpAddr,
    pub(super) agent: &'a str,
    pub(super) qname: &'a str,
    pub(super) denied: bool,
    pub(super) rcode: Option<&'a str>,
}

/// Counts problems past a limit instead of reporting each one.
pub(super) struct Capped {
    pub(super) count: usize,
    pub(super) limit: usize,
}

impl Capped {
    pub(super) fn new(limit: usize) -> Capped {
        Capped { count: 0, limit }
    }

    pub(super) fn report(&mut self) -> bool {
        self.count += 1;
        self.count <= self.limit
    }

    pub(super) fn summary(&self) -> Option<String> {
        (self.count > self.limit).then(|| format!("... and {} more", self.count - self.limit))
    }
}

/// Malformed lines: errors, or warnings under `--skip-malformed`.
pub(super) struct Malformed {
    pub(super) skip: bool,
    pub(super) capped: Capped,
}

impl Malformed {
    pub(super) fn report(
        &mut self,
        diags: &mut Diagnostics,
        file: &Path,
        line: usize,
        error: &LineError,
    ) {
        let field = error.field().map(str::to_string);
        match (self.capped.report(), self.skip) {
            (false, _) => {}
            (true, true) => diags.warning(file, Some(line), field, format!("skipped: {error}")),
            (true, false) => diags.error(file, Some(line), field, error.to_string()),
        }
    }

    pub(super) fn finish(&self, diags: &mut Diagnostics, file: &Path) {
        if self.skip && self.capped.count > 0 {
            diags.warning(
                file,
                None,
                None,
                format!(
                    "{} skipped (--skip-malformed); lookups may be missing here",
                    plural(self.capped.count as u64, "malformed line")
                ),
            );
        } else if let Some(more) = self.capped.summary() {
            diags.error(file, None, None, format!("{more} malformed lines"));
        }
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes plus the newline into
/// `buf`; `Ok(false)` at the end. A longer line is left in `buf` cut short,
/// without a newline, and the rest of it is consumed unread.
pub(crate) fn read_line(input: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    if input
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)?
        == 0
    {
        return Ok(false);
    }
    if buf.len() > MAX_LINE && !buf.ends_with(b"\n") {
        loop {
            let chunk = input.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            match chunk.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    input.consume(end + 1);
                    break;
                }
                None => {
                    let n = chunk.len();
                    input.consume(n);
                }
            }
        }
    }
    Ok(true)
}

/// `buf` as [`read_line`] left it, as trimmed text.
pub(crate) fn line_text(buf: &[u8]) -> Result<&str, LineError> {
    if !buf.ends_with(b"\n") && buf.len() > MAX_LINE {
        return Err(LineError::TooLong);
    }
    std::str::from_utf8(buf)
        .map(str::trim)
        .map_err(|_| LineError::NotUtf8)
}

pub(super) fn read_log(
    file: &Path,
    mut input: impl BufRead,
    options: &Options,
    diags: &mut Diagnostics,
) -> Log {
    let mut log = Log {
        observed: Some(Observed::default()),
        ..Log::default()
    };
    let mut bad = Malformed {
        skip: options.skip_malformed,
        capped: Capped::new(if options.skip_malformed {
            MAX_SKIPPED_REPORTED
        } else {
            MAX_REPORTED
        }),
    };
    let mut buf = Vec::new();
    // Whether any malformed line was JSON at least (a record gone wrong).
    let mut json = false;
    for number in 1.. {
        match read_line(&mut input, &mut buf) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                diags.error(file, None, None, format!("cannot read audit log: {e}"));
                break;
            }
        }
        let complete = buf.ends_with(b"\n");
        let outcome = match line_text(&buf) {
            Ok("") => continue,
            text => text.and_then(parse_line).and_then(|parsed| {
                match parsed {
                    Parsed::Record(record) => {
                        let lookup = lookup(&record)?;
                        log.records += 1;
                        if let Some(lookup) = lookup {
                            observe(&mut log, &lookup, number, options.agent);
                        }
                    }
                    Parsed::Event => log.records += 1,
                    Parsed::Lost(n) => log.lost += n,
                    Parsed::Egress(e) => {
                        log.records += 1;
                        connected(&mut log, &e, options.agent);
                    }
                }
                Ok(())
            }),
        };
        match outcome {
            Ok(()) => {}
            Err(e) if e.cut_short(complete) => diags.warning(file, Some(number), None, CUT_SHORT),
            Err(e) => {
                let text = matches!(
                    e,
                    LineError::NotJson(_) | LineError::NotUtf8 | LineError::TooLong
                );
                json |= !text;
                // A file that is no audit log (a script, a binary) would fill
                // the screen: a few of its lines say enough.
                if log.records == 0 && !json && !bad.skip {
                    bad.capped.limit = bad.capped.limit.min(NOT_A_LOG_REPORTED);
                }
                bad.report(diags, file, number, &e)
            }
        }
    }
    bad.finish(diags, file);
    if log.records == 0 && !json && bad.capped.count > 0 && !bad.skip {
        diags.error(
            file,
            None,
            None,
            "no line is an audit record: is this an allowdns audit log \
             (JSON Lines, as `serve --audit-log FILE` writes)?",
        );
    }
    log
}

/// One line, read into the schema's types.
enum Parsed {
    Record(Box<QueryRecord>),
    /// An event other than `audit_records_lost`: nothing to suggest from.
    Event,
    /// `audit_records_lost`, with its count.
    Lost(u64),
    /// `egress_denied`: a connection outside the allowlist.
    Egress(Box<crate::observe::audit::schema::EgressDenied>),
}

/// Why a line is not an audit line `suggest` can read; each carries the
/// offending text. The file and line go with it into the diagnostic.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LineError {
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("not UTF-8 text")]
    NotUtf8,
    // serde_json appends " at line 1 column N"; the line is ours.
    #[error(
        "not a JSON audit record: {} (column {})",
        .0.to_string().split(" at line ").next().unwrap_or_default(),
        .0.column()
    )]
    NotJson(serde_json::Error),
    #[error("not a JSON object")]
    NotObject,
    #[error("missing")]
    Missing { field: String },
    #[error("expected {expected}, found {found}")]
    WrongType {
        field: String,
        expected: String,
        found: &'static str,
    },
    #[error("unknown decision '{0}' (expected allow, deny, would_deny or refused)")]
    UnknownDecision(String),
    #[error("'{value}' is not an RFC 3339 time: {source}")]
    Time {
        value: String,
        source: humantime::TimestampError,
    },
    #[error("'{0}' is not an address")]
    Client(String),
    /// Anything else serde found wrong with a field.
    #[error("{message}")]
    Field { field: String, message: String },
}

/// The warning for a half line at the end of a log still being written.
pub(crate) const CUT_SHORT: &str = "incomplete last line skipped (is the log still being written?)";

impl LineError {
    /// A log still being written may end in half a line: not malformed.
    pub(crate) fn cut_short(&self, complete: bool) -> bool {
        !complete && matches!(self, LineError::NotJson(e) if e.is_eof())
    }

    /// The field at fault, if one is.
    pub(crate) fn field(&self) -> Option<&str> {
        match self {
            LineError::Missing { field }
            | LineError::WrongType { field, .. }
            | LineError::Field { field, .. } => Some(field),
            LineError::UnknownDecision(_) => Some("decision"),
            LineError::Time { .. } => Some("ts"),
            LineError::Client(_) => Some("client"),
            _ => None,
        }
    }
}

fn parse_line(text: &str) -> Result<Parsed, LineError> {
    Ok(
        match parse(text, |e| e == "audit_records_lost" || e == "egress_denied")? {
            Line::Record(record) => Parsed::Record(record),
            Line::Event(line) => match line.event {
                Event::AuditRecordsLost(lost) => Parsed::Lost(lost.count),
                Event::EgressDenied(e) => Parsed::Egress(e),
                _ => Parsed::Event,
            },
            Line::Other => Parsed::Event,
        },
    )
}

/// One audit line in the schema's types (`suggest` and `report` read alike).
pub(crate) enum Line {
    Record(Box<QueryRecord>),
    Event(Box<EventLine>),
    /// An event not asked for, or one this version does not know.
    Other,
}

/// One line: a query record, or an event typed when `wanted(its name)`.
/// Unknown fields and events are ignored so newer logs load; known ones
/// must have their types.
pub(crate) fn parse(text: &str, wanted: impl Fn(&str) -> bool) -> Result<Line, LineError> {
    // Nearly every line is a query record: read it straight into the type
    // (one parse instead of the two below), and take those only
    // for an event or to say what is wrong.
    if !text.contains("\"event\"")
        && let Ok(record) = serde_json::from_str::<QueryRecord>(text)
    {
        return Ok(Line::Record(Box::new(record)));
    }
    let value: Value = serde_json::from_str(text).map_err(LineError::NotJson)?;
    let Value::Object(object) = &value else {
        return Err(LineError::NotObject);
    };
    match object.get("event") {
        None | Some(Value::Null) => typed(&value).map(|r| Line::Record(Box::new(r))),
        Some(Value::String(event)) if wanted(event) => {
            typed(&value).map(|l| Line::Event(Box::new(l)))
        }
        Some(Value::String(_)) => Ok(Line::Other),
        Some(other) => Err(LineError::WrongType {
            field: "event".into(),
            expected: "a string".into(),
            found: kind(other),
        }),
    }
}

/// `value` as a schema type; a mistake is reported by field, in words.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, LineError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut pointer = String::new();
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Map { key } => {
                    pointer.push('/');
                    pointer.push_str(key);
                }
                serde_path_to_error::Segment::Seq { index } => {
                    pointer.push_str(&format!("/{index}"));
                }
                _ => {}
            }
        }
        let field = e.path().to_string();
        let message = e.inner().to_string();
        let at = value.pointer(&pointer);
        if let Some(name) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            let field = match pointer.is_empty() {
                true => name.to_string(),
                false => format!("{field}.{name}"),
            };
            return LineError::Missing { field };
        }
        match at {
            Some(Value::String(s)) if field == "decision" => LineError::UnknownDecision(s.clone()),
            Some(found) if message.starts_with("invalid type:") => LineError::WrongType {
                expected: message
                    .rsplit(", expected ")
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                found: kind(found),
                field,
            },
            _ => LineError::Field { field, message },
        }
    })
}

/// The lookup a record counts as; `None` for one that is not a lookup by
/// an agent (refused, or without a name), or not one to suggest from.
fn lookup(record: &QueryRecord) -> Result<Option<Lookup<'_>>, LineError> {
    let denied = match record.decision {
        Decision::Allow | Decision::WouldDeny => false,
        // Refused under a wildcard by the exfiltration fences: allowlisted
        // already, so nothing to suggest (docs/exfiltration.md).
        Decision::Deny if record.exfil.is_some() => return Ok(None),
        Decision::Deny => true,
        Decision::Refused => return Ok(None),
    };
    let ts = humantime::parse_rfc3339(&record.ts).map_err(|source| LineError::Time {
        value: record.ts.clone(),
        source,
    })?;
    let client = record
        .client
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| record.client.parse::<IpAddr>())
        .map_err(|_| LineError::Client(record.client.clone()))?;
    let (Some(agent), Some(qname)) = (&record.agent, &record.qname) else {
        return Ok(None);
    };
    Ok(Some(Lookup {
        ts,
        client: client.to_canonical(),
        agent,
        qname,
        denied,
        rcode: Some(record.rcode.as_str()).filter(|r| !r.is_empty()),
    }))
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

/// A connection to an address never handed out, by the wanted (or first) agent.
fn connected(log: &mut Log, e: &crate::observe::audit::schema::EgressDenied, wanted: Option<&str>) {
    let (Some(agent), None) = (e.agent.as_deref(), &e.resolved) else {
        return;
    };
    let ours = match wanted {
        Some(wanted) => wanted == agent,
        None => log.first_agent.as_deref().is_none_or(|a| a == agent),
    };
    let (Some(observed), true, Ok(addr)) = (log.observed.as_mut(), ours, e.addr.parse()) else {
        return;
    };
    let key = (addr, e.port, e.proto.clone());
    if let Some(n) = observed.connections.get_mut(&key) {
        *n += 1;
    } else if observed.connections.len() < MAX_CONNECTIONS {
        observed.connections.insert(key, 1);
    } else {
        observed.more_connections += 1;
    }
}

pub(super) fn observe(log: &mut Log, lookup: &Lookup, line: usize, wanted: Option<&str>) {
    let room = log.agents.len() < MAX_AGENTS;
    match log.agents.get_mut(lookup.agent) {
        Some(n) => *n += 1,
        None if room => {
            log.agents.insert(lookup.agent.to_string(), 1);
        }
        None => log.more_agents = true,
    }
    let keep = match wanted {
        Some(wanted) => wanted == lookup.agent,
        None => {
            let first = log
                .first_agent
                .get_or_insert_with(|| lookup.agent.to_string());
            if first.as_str() != lookup.agent {
                // Several agents without --agent fail; their names are not needed.
                log.observed = None;
            }
            true
        }
    };
    let Some(observed) = log.observed.as_mut().filter(|_| keep) else {
        return;
    };
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

/// Why no policy entry can allow a looked-up name (the name itself is the
/// key it is listed under).
#[derive(Debug, thiserror::Error)]
pub(super) enum Unusable {
    #[error("a wildcard character in a looked-up name")]
    Wildcard,
    #[error("an IP address, not a name")]
    Address,
    /// The policy loader's own reason, which quotes the name.
    #[error("cannot be written in a policy: {0}")]
    Unwritable(String),
    #[error("a numeric last label, which reads as an IP address")]
    NumericLabel,
    #[error("a TLD or public suffix, not a host")]
    PublicSuffix,
}

/// The policy key for a logged name, or why no entry can allow it.
pub(super) fn policy_name(qname: &str) -> Result<String, Unusable> {
    // The writer escapes `*` as `\042`; a literal one in an edited log must not become a pattern.
    if qname.contains(['*', '?']) {
        return Err(Unusable::Wildcard);
    }
    // The loader reads an address as an address rule, which opens the firewall without DNS.
    if qname.trim().trim_end_matches('.').parse::<IpAddr>().is_ok() {
        return Err(Unusable::Address);
    }
    // Logs are lower case A-labels already; hand-edited ones may not be.
    let key = policy::name::pattern_key(qname).map_err(|e| Unusable::Unwritable(e.to_string()))?;
    if reads_as_address(&key) {
        return Err(Unusable::NumericLabel);
    }
    if policy::is_public_suffix(&key) {
        return Err(Unusable::PublicSuffix);
    }
    Ok(key)
}

/// Whether a canonical name ends in a numeric label (`1.2.3.4`, `10.1`,
/// `0x7f.1`). No TLD is numeric, and URL parsers and `inet_aton` read such
/// names as IPv4 addresses.
pub(super) fn reads_as_address(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    last.bytes().all(|b| b.is_ascii_digit())
        || last
            .strip_prefix("0x")
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Why the log gives no agent to suggest for.
#[derive(Debug, thiserror::Error)]
pub(super) enum NoAgent {
    #[error("no lookups by agent '{agent}': the log holds no lookups by any agent")]
    Empty { agent: String },
    #[error("no lookups by agent '{agent}'; agents in the log: {seen}")]
    NotSeen { agent: String, seen: String },
    #[error("no lookups to suggest from: the log holds no allowed or denied lookups by any agent")]
    None,
    #[error(
        "the log holds lookups by more than {MAX_AGENTS} agents: {seen}; choose one with --agent"
    )]
    TooMany { seen: String },
    #[error("the log holds lookups by {count} agents: {seen}; choose one with --agent")]
    Several { count: usize, seen: String },
}

pub(super) fn choose_agent(
    log: &mut Log,
    wanted: Option<&str>,
) -> Result<(String, Observed), NoAgent> {
    let mut seen = log
        .agents
        .iter()
        .map(|(agent, n)| format!("'{agent}' ({n} lookups)"))
        .collect::<Vec<_>>()
        .join(", ");
    if log.more_agents {
        seen.push_str(", and more");
    }
    let observed = log.observed.take().unwrap_or_default();
    match wanted {
        Some(agent) if observed.lookups > 0 => Ok((agent.to_string(), observed)),
        Some(agent) if log.agents.is_empty() => Err(NoAgent::Empty {
            agent: agent.to_string(),
        }),
        Some(agent) => Err(NoAgent::NotSeen {
            agent: agent.to_string(),
            seen,
        }),
        None if log.agents.is_empty() => Err(NoAgent::None),
        None if log.agents.len() == 1 && !log.more_agents => {
            let agent = log.first_agent.take().expect("one agent was seen");
            Ok((agent, observed))
        }
        None if log.more_agents => Err(NoAgent::TooMany { seen }),
        None => Err(NoAgent::Several {
            count: log.agents.len(),
            seen,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_whole_and_an_overlong_one_is_cut_and_skipped() {
        let mut text = b"first\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        text.extend(b"\nlast");
        let mut input = std::io::BufReader::with_capacity(1024, &text[..]);
        let mut buf = Vec::new();
        assert!(read_line(&mut input, &mut buf).unwrap());
        assert_eq!(buf, b"first\n");
        // Cut at the limit plus one byte, no newline: the caller calls it too long.
        assert!(read_line(&mut input, &mut buf).unwrap());
        assert_eq!(buf.len(), MAX_LINE + 1);
        assert!(!buf.ends_with(b"\n"));
        // The rest of the long line is consumed; the next line reads whole.
        assert!(read_line(&mut input, &mut buf).unwrap());
        assert_eq!(buf, b"last");
        assert!(!read_line(&mut input, &mut buf).unwrap());
    }

    #[test]
    fn record_event_and_loss_lines_are_told_apart() {
        assert!(matches!(
            parse_line(r#"{"event":"reload","changes":[],"zones":0}"#),
            Ok(Parsed::Event)
        ));
        assert!(matches!(
            parse_line(r#"{"ts":"2026-01-01T00:00:00Z","event":"audit_records_lost","count":7}"#),
            Ok(Parsed::Lost(7))
        ));
        assert!(matches!(parse_line("[1]"), Err(LineError::NotObject)));
        assert!(matches!(parse_line("{"), Err(LineError::NotJson(_))));
        assert!(matches!(
            parse_line(r#"{"event":3}"#),
            Err(LineError::WrongType { field, .. }) if field == "event"
        ));
    }

    #[test]
    fn only_names_a_policy_can_hold_become_keys() {
        assert_eq!(policy_name("API.Example.com.").unwrap(), "api.example.com");
        assert!(matches!(
            policy_name("a*.example.com"),
            Err(Unusable::Wildcard)
        ));
        assert!(matches!(policy_name("192.0.2.1"), Err(Unusable::Address)));
        assert!(matches!(policy_name("10.1"), Err(Unusable::NumericLabel)));
        assert!(matches!(policy_name("co.uk"), Err(Unusable::PublicSuffix)));
        assert!(reads_as_address("a.0x7f") && reads_as_address("1.2.3.4"));
        assert!(!reads_as_address("example.com") && !reads_as_address("a.0xg"));
    }
}
