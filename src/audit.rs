//! The audit log: one JSON line per query, whatever the decision.
//!
//! Handlers append records to a shared buffer and never wait on I/O; a
//! dedicated thread swaps the buffer out every few milliseconds, formats and
//! writes it. Waking a thread per record would cost more than answering the
//! query, so the writer polls instead. If the buffer is full the record is
//! counted as lost, and the count is written to the log itself (and stderr)
//! on the next pass, so loss is never silent. Closing drains and flushes.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde::Serialize;

use crate::worker::Worker;

/// Records buffered before the writer falls behind and records are counted lost.
const CAPACITY: usize = 262_144;
/// How often the writer wakes to drain the buffer.
const TICK: Duration = Duration::from_millis(5);

/// What policy said about a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    /// Learn mode: outside the allowlist, resolved anyway.
    WouldDeny,
    /// Not served: no policy governs the client, or the request is not a
    /// question allowdns answers (bad format, opcode, class or type).
    Refused,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::WouldDeny => "would_deny",
            Decision::Refused => "refused",
        }
    }
}

/// One audit record, as the handler fills it in. Formatting is the writer's job.
#[derive(Debug)]
pub struct AuditRecord {
    pub ts: SystemTime,
    pub client: SocketAddr,
    pub transport: &'static str,
    pub agent: Option<Arc<str>>,
    /// `None` when the request had no single question.
    pub qname: Option<Name>,
    pub qtype: Option<RecordType>,
    pub decision: Decision,
    pub rule: Option<Arc<str>>,
    pub dynamic: bool,
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// Special-purpose addresses taken out of the answer (src/special.rs).
    pub stripped: Vec<IpAddr>,
    pub upstream_ms: Option<f64>,
}

struct Shared {
    buffer: Mutex<Vec<AuditRecord>>,
    /// Rare non-query events (grants), as JSON lines with a sequence
    /// number; never dropped.
    events: Mutex<Vec<(u64, String)>>,
    /// Sequence number of the last event queued.
    queued: AtomicU64,
    /// (written, failed): sequence numbers up to which events are written
    /// and flushed, and up to which some event of a failed pass was lost;
    /// waited on by [`AuditLog::event_durable`].
    durable: (Mutex<(u64, u64)>, Condvar),
    /// Records the buffer may hold before new ones are counted as lost.
    capacity: usize,
    lost: AtomicU64,
    /// Set by SIGHUP: reopen the file by its path (after logrotate moved it).
    reopen: AtomicBool,
}

/// The handlers' side of the log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
    writer: Arc<Worker>,
}

/// Where audit lines go.
pub enum Sink {
    Stdout,
    /// The open file, and its path for reopening.
    File(std::fs::File, PathBuf),
}

impl Sink {
    /// `None` or `-` is stdout; a file is opened for appending (created if missing).
    pub fn open(path: Option<&Path>) -> io::Result<Sink> {
        match path {
            None => Ok(Sink::Stdout),
            Some(p) if p == Path::new("-") => Ok(Sink::Stdout),
            Some(p) => append(p).map(|f| Sink::File(f, p.to_path_buf())),
        }
    }
}

fn append(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl AuditLog {
    pub fn start(sink: Sink) -> AuditLog {
        let (out, path): (Box<dyn Write + Send>, _) = match sink {
            Sink::Stdout => (Box::new(io::stdout()), None),
            Sink::File(f, path) => (Box::new(f), Some(path)),
        };
        Self::start_with(out, path, CAPACITY)
    }

    fn start_with(out: Box<dyn Write + Send>, path: Option<PathBuf>, capacity: usize) -> AuditLog {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Vec::with_capacity(4096)),
            events: Mutex::new(Vec::new()),
            capacity,
            lost: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
            queued: AtomicU64::new(0),
            durable: (Mutex::new((0, 0)), Condvar::new()),
        });
        let writer_shared = shared.clone();
        let mut out = BufWriter::with_capacity(1 << 16, out);
        let (mut batch, mut line) = (Vec::with_capacity(4096), Vec::with_capacity(512));
        let writer = Worker::start("audit-writer", TICK, move |_| {
            if writer_shared.reopen.swap(false, Ordering::Relaxed)
                && let Some(path) = &path
            {
                // Whatever is buffered goes to the old file first; on failure keep it.
                write_pass(&writer_shared, &mut out, &mut batch, &mut line);
                match append(path) {
                    Ok(file) => {
                        out = BufWriter::with_capacity(1 << 16, Box::new(file));
                        tracing::info!(file = %path.display(), "audit log reopened");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "[!] cannot reopen the audit log; still writing to the old file")
                    }
                }
            }
            write_pass(&writer_shared, &mut out, &mut batch, &mut line);
        });
        AuditLog {
            shared,
            writer: Arc::new(writer),
        }
    }

    /// Queues a record; never blocks on I/O.
    pub fn record(&self, record: AuditRecord) {
        let mut buffer = self.shared.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if buffer.len() < self.shared.capacity && !self.writer.is_closing() {
            buffer.push(record);
        } else {
            self.shared.lost.fetch_add(1, Ordering::Relaxed);
            crate::metrics::METRICS
                .audit_lost
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Asks the writer to reopen the file by its path (logrotate, SIGHUP).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
        self.writer.poke();
    }

    /// Queues a non-query event line (JSON, no newline).
    pub fn event(&self, line: String) {
        self.queue_event(line);
    }

    fn queue_event(&self, line: String) -> u64 {
        let seq = {
            let mut events = self.shared.events.lock().unwrap_or_else(|p| p.into_inner());
            let seq = self.shared.queued.fetch_add(1, Ordering::Relaxed) + 1;
            events.push((seq, line));
            seq
        };
        self.writer.poke();
        seq
    }

    /// Writes an event and waits until it is flushed to the log: for what
    /// must not take effect unaudited (a grant). Fails after `within`.
    pub fn event_durable(&self, line: String, within: Duration) -> Result<(), String> {
        if self.writer.is_closing() {
            return Err("the audit log is closed".into());
        }
        let seq = self.queue_event(line);
        let (written, flushed) = &self.shared.durable;
        let written = written.lock().unwrap_or_else(|p| p.into_inner());
        let (state, _) = flushed
            .wait_timeout_while(written, within, |(w, f)| *w < seq && *f < seq)
            .unwrap_or_else(|p| p.into_inner());
        let (written, failed) = *state;
        if failed >= seq {
            // Its pass failed: the line may be lost even if a later pass succeeded.
            return Err("writing the audit log failed".into());
        }
        if written < seq {
            return Err(format!(
                "the audit log did not confirm the write within {} ms",
                within.as_millis()
            ));
        }
        Ok(())
    }

    /// Writes out everything queued, flushes and stops the writer. Blocks until done.
    pub fn close(&self) {
        self.writer.close();
        // Records that arrived after the writer's last pass: say so, never silently.
        let late = self.shared.lost.swap(0, Ordering::Relaxed);
        if late > 0 {
            tracing::error!(
                lost = late,
                "audit records arrived after the audit log was closed and were not written"
            );
        }
    }
}

/// One pass of the writer: takes what is buffered, writes it, reports loss, flushes.
fn write_pass(
    shared: &Shared,
    out: &mut BufWriter<Box<dyn Write + Send>>,
    batch: &mut Vec<AuditRecord>,
    line: &mut Vec<u8>,
) {
    std::mem::swap(
        batch,
        &mut *shared.buffer.lock().unwrap_or_else(|p| p.into_inner()),
    );
    let events = std::mem::take(&mut *shared.events.lock().unwrap_or_else(|p| p.into_inner()));
    // Events are confirmed only when all of them, and the flush, succeeded.
    let last = events.last().map(|(seq, _)| *seq);
    let mut confirm = last;
    for (_, event) in events {
        if let Err(e) = writeln!(out, "{event}") {
            confirm = None;
            shared.lost.fetch_add(1, Ordering::Relaxed);
            crate::metrics::METRICS
                .audit_lost
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, event, "audit log write failed");
        }
    }
    for record in batch.drain(..) {
        line.clear();
        format_record(&record, line);
        if let Err(e) = out.write_all(line) {
            shared.lost.fetch_add(1, Ordering::Relaxed);
            crate::metrics::METRICS
                .audit_lost
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "audit log write failed");
        }
    }
    report_lost(out, &shared.lost);
    if let Err(e) = out.flush() {
        confirm = None;
        tracing::error!(error = %e, "audit log flush failed");
    }
    if let Some(last) = last {
        let (state, flushed) = &shared.durable;
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        match confirm {
            Some(seq) => state.0 = seq,
            None => state.1 = last,
        }
        flushed.notify_all();
    }
}

fn report_lost(out: &mut impl Write, lost: &AtomicU64) {
    let n = lost.swap(0, Ordering::Relaxed);
    if n == 0 {
        return;
    }
    tracing::warn!(lost = n, "audit records lost: the writer could not keep up");
    let ts = humantime::format_rfc3339_micros(SystemTime::now());
    let _ = writeln!(
        out,
        r#"{{"ts":"{ts}","event":"audit_records_lost","count":{n}}}"#
    );
}

/// Formats one record as a JSON line. Hand-written: this runs once per query.
pub fn format_record(r: &AuditRecord, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let _ = write!(
        out,
        r#"{{"ts":"{}","client":"{}","transport":"{}","agent":"#,
        humantime::format_rfc3339_micros(r.ts),
        r.client,
        r.transport
    );
    match &r.agent {
        Some(agent) => json_str(out, agent),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","qname":"#);
    match &r.qname {
        Some(name) => json_name(out, name),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","qtype":"#);
    match r.qtype {
        Some(t) => {
            let _ = write!(out, r#""{t}""#);
        }
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(out, r#","decision":"{}","rule":"#, r.decision.as_str());
    match &r.rule {
        Some(rule) => json_str(out, rule),
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(
        out,
        r#","dynamic":{},"rcode":"{}","answers":["#,
        r.dynamic,
        rcode_name(r.rcode)
    );
    for (i, a) in r.answers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"name":"#);
        json_name(out, &a.name);
        let _ = write!(
            out,
            r#","type":"{}","ttl":{},"data":"#,
            a.record_type(),
            a.ttl
        );
        match &a.data {
            RData::A(ip) => {
                let _ = write!(out, r#""{ip}""#);
            }
            RData::AAAA(ip) => {
                let _ = write!(out, r#""{ip}""#);
            }
            other => json_str(out, &other.to_string()),
        }
        out.push(b'}');
    }
    out.push(b']');
    // Only present when the fence took something out, so lines stay short.
    if !r.stripped.is_empty() {
        out.extend_from_slice(br#","stripped":["#);
        for (i, ip) in r.stripped.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            let _ = write!(out, r#"{sep}"{ip}""#);
        }
        out.push(b']');
    }
    out.extend_from_slice(br#","upstream_ms":"#);
    match r.upstream_ms {
        Some(ms) => {
            let _ = write!(out, "{ms:.3}");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}\n");
}

/// Writes `s` as a JSON string literal.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.extend_from_slice(s.as_bytes());
    } else {
        for c in s.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = std::io::Write::write_fmt(out, format_args!("\\u{:04x}", c as u32));
                }
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }
    out.push(b'"');
}

/// Writes a name as a JSON string, the way [`display_name`] spells it,
/// without building the intermediate strings.
fn json_name(out: &mut Vec<u8>, name: &Name) {
    out.push(b'"');
    let mut first = true;
    for label in name.iter() {
        if !first {
            out.push(b'.');
        }
        first = false;
        for &b in label {
            match b {
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => out.push(b),
                b'A'..=b'Z' => out.push(b.to_ascii_lowercase()),
                // Master-file escapes (RFC 1035 5.1), with the backslash JSON-escaped.
                _ => {
                    let _ = std::io::Write::write_fmt(out, format_args!("\\\\{b:03}"));
                }
            }
        }
    }
    if first {
        out.push(b'.');
    }
    out.push(b'"');
}

/// A name as logs show it: lower case A-labels, no trailing dot (the root stays ".").
pub fn display_name(name: &Name) -> String {
    let mut s = name.to_lowercase().to_ascii();
    if s.len() > 1 && s.ends_with('.') {
        s.pop();
    }
    s
}

/// The mnemonic used by dig and the RFCs.
pub fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::BADVERS => "BADVERS".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink that fails every write, like a full disk.
    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("no space left on device"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::other("no space left on device"))
        }
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn durable_events_are_confirmed_only_once_written() {
        let out = Shared::default();
        let log = AuditLog::start_with(Box::new(out.clone()), None, 10);
        log.event_durable("{\"event\":\"grant\"}".into(), Duration::from_secs(2))
            .unwrap();
        assert_eq!(&*out.0.lock().unwrap(), b"{\"event\":\"grant\"}\n");
        log.close();

        let full = AuditLog::start_with(Box::new(Full), None, 10);
        let refused = full.event_durable("{}".into(), Duration::from_millis(200));
        assert!(
            refused.is_err(),
            "a grant must not go unaudited: {refused:?}"
        );
        full.close();
    }

    /// A sink that blocks until told to go on, to stall the writer.
    struct Gate {
        open: mpsc::Receiver<()>,
        opened: bool,
        out: Arc<Mutex<Vec<u8>>>,
    }
    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if !self.opened {
                let _ = self.open.recv();
                self.opened = true;
            }
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn record(i: u16) -> AuditRecord {
        AuditRecord {
            ts: SystemTime::UNIX_EPOCH,
            client: SocketAddr::from(([10, 0, 0, 1], i)),
            transport: "udp",
            agent: None,
            qname: Some(Name::from_ascii(format!("n{i}.example.")).unwrap()),
            qtype: Some(RecordType::A),
            decision: Decision::Deny,
            rule: None,
            dynamic: false,
            rcode: ResponseCode::NXDomain,
            answers: Vec::new(),
            stripped: Vec::new(),
            upstream_ms: None,
        }
    }

    #[test]
    fn overload_is_counted_and_reported_never_silent() {
        let (go, open) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let log = AuditLog::start_with(
            Box::new(Gate {
                open,
                opened: false,
                out: out.clone(),
            }),
            None,
            10,
        );
        // The first record stalls the writer inside write(); then the buffer fills.
        log.record(record(0));
        std::thread::sleep(Duration::from_millis(50));
        for i in 1..=25 {
            log.record(record(i));
        }
        go.send(()).unwrap();
        log.close();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let written = lines.iter().filter(|v| v["decision"] == "deny").count();
        let lost: u64 = lines
            .iter()
            .filter(|v| v["event"] == "audit_records_lost")
            .map(|v| v["count"].as_u64().unwrap())
            .sum();
        assert_eq!(written as u64 + lost, 26, "{text}");
        assert!(lost >= 15, "{text}");
    }
    use hickory_proto::rr::rdata::{A, TXT};

    #[test]
    fn records_are_valid_json_with_every_field() {
        let name = Name::from_ascii("Www.Example.com.").unwrap();
        let r = AuditRecord {
            ts: SystemTime::UNIX_EPOCH,
            client: "10.0.0.1:5353".parse().unwrap(),
            transport: "udp",
            agent: Some("a\"gent".into()),
            qname: Some(name.clone()),
            qtype: Some(RecordType::TXT),
            decision: Decision::Allow,
            rule: Some("*.example.com".into()),
            dynamic: true,
            rcode: ResponseCode::NoError,
            answers: vec![
                Record::from_rdata(name.clone(), 60, RData::A(A::new(192, 0, 2, 1))),
                Record::from_rdata(name, 60, RData::TXT(TXT::new(vec!["say \"hi\"\\".into()]))),
            ],
            stripped: vec!["10.9.9.9".parse().unwrap(), "fe80::1".parse().unwrap()],
            upstream_ms: Some(1.5),
        };
        let mut out = Vec::new();
        format_record(&r, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(v["agent"], "a\"gent");
        assert_eq!(v["qname"], "www.example.com");
        assert_eq!(v["qtype"], "TXT");
        assert_eq!(v["decision"], "allow");
        assert_eq!(v["dynamic"], true);
        assert_eq!(v["answers"][0]["data"], "192.0.2.1");
        assert_eq!(v["answers"][1]["type"], "TXT");
        assert_eq!(v["upstream_ms"], 1.5);
        assert_eq!(v["stripped"], serde_json::json!(["10.9.9.9", "fe80::1"]));
        assert!(out.ends_with(b"}\n"));
        let odd = Name::from_labels(vec![b"a.b\"c".as_ref(), b"Com".as_ref()]).unwrap();
        let mut out = Vec::new();
        json_name(&mut out, &odd);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, "a\\046b\\034c.com");
        let mut out = Vec::new();
        json_name(&mut out, &Name::root());
        assert_eq!(out, b"\".\"");
    }
}
