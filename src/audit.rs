//! The audit log: one JSON line per query, whatever the decision.
//!
//! Handlers hand records to a bounded queue and never wait; a dedicated
//! thread formats and writes them. If the queue is full the record is counted
//! as lost, and the count is written to the log itself (and stderr) as soon as
//! the writer catches up, so loss is never silent. Shutdown drains the queue
//! and flushes.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Record;
use serde::Serialize;

/// Records queued before the writer falls behind and records are counted lost.
const QUEUE: usize = 65_536;

/// What policy said about a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    /// Not served: no policy governs the client, or the request is not a
    /// question allowdns answers (bad format, opcode, class or type).
    Refused,
}

/// One audit record, as the handler fills it in. Formatting is the writer's job.
#[derive(Debug)]
pub struct AuditRecord {
    pub ts: SystemTime,
    pub client: SocketAddr,
    pub transport: &'static str,
    pub agent: Option<Arc<str>>,
    pub qname: String,
    pub qtype: String,
    pub decision: Decision,
    pub rule: Option<Arc<str>>,
    pub dynamic: bool,
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub upstream_ms: Option<f64>,
}

enum Message {
    Record(Box<AuditRecord>),
    /// Drain, flush, acknowledge, stop.
    Close(SyncSender<()>),
}

/// The handlers' side of the log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    queue: SyncSender<Message>,
    lost: Arc<AtomicU64>,
}

/// Where audit lines go.
pub enum Sink {
    Stdout,
    File(std::fs::File),
}

impl Sink {
    /// `None` is stdout; a file is opened for appending (created if missing).
    pub fn open(path: Option<&Path>) -> io::Result<Sink> {
        match path {
            None => Ok(Sink::Stdout),
            Some(p) if p == Path::new("-") => Ok(Sink::Stdout),
            Some(p) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map(Sink::File)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
        }
    }
}

impl AuditLog {
    pub fn start(sink: Sink) -> AuditLog {
        let (queue, rx) = sync_channel(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let writer_lost = lost.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let out: Box<dyn Write + Send> = match sink {
                    Sink::Stdout => Box::new(io::stdout()),
                    Sink::File(f) => Box::new(f),
                };
                write_loop(rx, BufWriter::with_capacity(1 << 16, out), &writer_lost)
            })
            .expect("spawn audit writer thread");
        AuditLog { queue, lost }
    }

    /// Queues a record; never blocks.
    pub fn record(&self, record: AuditRecord) {
        match self.queue.try_send(Message::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records lost so far and not yet reported.
    pub fn pending_lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Writes out everything queued and flushes. Blocks until done.
    pub fn close(&self) {
        let (ack, done) = sync_channel(1);
        if self.queue.send(Message::Close(ack)).is_ok() {
            let _ = done.recv();
        }
    }
}

fn write_loop(rx: Receiver<Message>, mut out: BufWriter<Box<dyn Write + Send>>, lost: &AtomicU64) {
    let mut line = Vec::with_capacity(512);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut closing = None;
        // Take everything already queued, then flush once.
        while let Some(message) = next.take() {
            match message {
                Message::Record(record) => {
                    line.clear();
                    format_record(&record, &mut line);
                    if let Err(e) = out.write_all(&line) {
                        lost.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "audit log write failed");
                    }
                }
                Message::Close(ack) => closing = Some(ack),
            }
            if closing.is_none() {
                next = rx.try_recv().ok();
            }
        }
        report_lost(&mut out, lost);
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "audit log flush failed");
        }
        if let Some(ack) = closing {
            let _ = ack.send(());
            return;
        }
    }
}

fn report_lost(out: &mut impl Write, lost: &AtomicU64) {
    let n = lost.swap(0, Ordering::Relaxed);
    if n == 0 {
        return;
    }
    tracing::warn!(lost = n, "audit records lost: the writer could not keep up");
    let event = serde_json::json!({
        "ts": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "event": "audit_records_lost",
        "count": n,
    });
    let _ = writeln!(out, "{event}");
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    client: String,
    transport: &'a str,
    agent: Option<&'a str>,
    qname: &'a str,
    qtype: &'a str,
    decision: Decision,
    rule: Option<&'a str>,
    dynamic: bool,
    rcode: String,
    answers: Vec<Answer>,
    upstream_ms: Option<f64>,
}

#[derive(Serialize)]
struct Answer {
    name: String,
    #[serde(rename = "type")]
    rtype: String,
    ttl: u32,
    data: String,
}

fn format_record(r: &AuditRecord, out: &mut Vec<u8>) {
    let line = Line {
        ts: humantime::format_rfc3339_micros(r.ts).to_string(),
        client: r.client.to_string(),
        transport: r.transport,
        agent: r.agent.as_deref(),
        qname: &r.qname,
        qtype: &r.qtype,
        decision: r.decision,
        rule: r.rule.as_deref(),
        dynamic: r.dynamic,
        rcode: rcode_name(r.rcode),
        answers: r
            .answers
            .iter()
            .map(|a| Answer {
                name: display_name(&a.name),
                rtype: a.record_type().to_string(),
                ttl: a.ttl,
                data: a.data.to_string(),
            })
            .collect(),
        upstream_ms: r.upstream_ms,
    };
    // Serializing plain strings and numbers cannot fail.
    let _ = serde_json::to_writer(&mut *out, &line);
    out.push(b'\n');
}

/// A name as people write it: A-labels, no trailing dot.
pub fn display_name(name: &hickory_proto::rr::Name) -> String {
    let mut s = name.to_ascii();
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
