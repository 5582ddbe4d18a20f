//! The audit log's writer: the buffer, the writer thread, and what happens
//! when the disk is full.
//!
//! Each thread that answers queries appends records to a buffer of its own
//! (a lock only the writer ever contends, once per pass) and never waits on
//! I/O; a dedicated thread swaps every buffer out every few milliseconds,
//! puts the batch in time order, formats and writes it. One buffer shared by
//! all serving threads was their one common lock on the query path. Waking a
//! thread per record would cost more than answering the query, so the
//! writer polls instead. If a buffer is full the record is counted as lost,
//! and the count is written to the log itself (and stderr) on the next pass,
//! so loss is never silent. Closing drains and flushes.

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use super::format::{AuditRecord, format_record};
use super::schema::{Event, EventLine, RecordsLost};
use crate::observe::worker::{Ticks, Worker};
use crate::sync::lock;

/// Records one thread's buffer holds before the writer has fallen behind
/// and that thread's records are counted lost.
const CAPACITY: usize = 65_536;
/// How often the writer wakes to drain the buffer.
const TICK: Ticks = Ticks {
    busy: Duration::from_millis(1),
    idle: Duration::from_millis(5),
};
/// Records a buffer keeps room for between passes: a few passes' worth at
/// 100k queries a second. A burst grows a buffer past it; the room is given
/// back after the pass that drains it, so one burst does not stay resident
/// (a record is about 600 bytes with its answers).
const KEEP: usize = 2048;

/// One thread's buffered records.
type Buffer = Mutex<Vec<AuditRecord>>;

struct Shared {
    /// Every recording thread's buffer; a thread adds its own on its first
    /// record, and the writer drops it once the thread is gone and it is empty.
    buffers: Mutex<Vec<Arc<Buffer>>>,
    /// Rare non-query events (grants), as JSON lines with a sequence
    /// number; never dropped.
    events: Mutex<Vec<(u64, String)>>,
    /// Sequence number of the last event queued.
    queued: AtomicU64,
    /// (written, failed): sequence numbers up to which events are written
    /// and flushed, and up to which some event of a failed pass was lost;
    /// waited on by [`AuditLog::event_durable`].
    durable: (Mutex<(u64, u64)>, Condvar),
    /// Records one buffer may hold before new ones are counted as lost.
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
        match sink {
            Sink::Stdout => Self::start_with(Out::Stream(Box::new(io::stdout())), None, CAPACITY),
            Sink::File(f, path) => Self::start_with(Out::File(f), Some(path), CAPACITY),
        }
    }

    fn start_with(out: Out, path: Option<PathBuf>, capacity: usize) -> AuditLog {
        let shared = Arc::new(Shared {
            buffers: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            capacity,
            lost: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
            queued: AtomicU64::new(0),
            durable: (Mutex::new((0, 0)), Condvar::new()),
        });
        let writer_shared = shared.clone();
        let mut w = Writer::new(out);
        let writer = Worker::start("audit-writer", TICK, move |closing| {
            w.closing = closing;
            if writer_shared.reopen.swap(false, Ordering::Relaxed)
                && let Some(path) = &path
            {
                // Whatever is buffered goes to the old file first; on failure keep it.
                w.pass(&writer_shared);
                match append(path) {
                    Ok(file) => {
                        w.out = Out::File(file);
                        w.dangling = false;
                        tracing::info!(file = %path.display(), "audit log reopened");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "[!] cannot reopen the audit log; still writing to the old file")
                    }
                }
            }
            w.pass(&writer_shared)
        });
        AuditLog {
            shared,
            writer: Arc::new(writer),
        }
    }

    /// Queues a record in this thread's buffer; never blocks on I/O.
    pub fn record(&self, record: AuditRecord) {
        let buffer = self.own_buffer();
        let mut buffer = lock(&buffer);
        if buffer.len() < self.shared.capacity && !self.writer.is_closing() {
            buffer.push(record);
        } else {
            self.shared.lost.fetch_add(1, Ordering::Relaxed);
            crate::observe::metrics::METRICS
                .audit_lost
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This thread's buffer for this log, made and registered on first use.
    fn own_buffer(&self) -> Arc<Buffer> {
        thread_local! {
            /// (log, this thread's buffer for it); a test process has several logs.
            static OWN: RefCell<Vec<(Weak<Shared>, Arc<Buffer>)>> = const { RefCell::new(Vec::new()) };
        }
        OWN.with_borrow_mut(|own| {
            if let Some((_, buffer)) = own
                .iter()
                .find(|(log, _)| std::ptr::eq(log.as_ptr(), Arc::as_ptr(&self.shared)))
            {
                return buffer.clone();
            }
            own.retain(|(log, _)| log.strong_count() > 0);
            let buffer = Arc::new(Mutex::new(Vec::with_capacity(KEEP / 2)));
            lock(&self.shared.buffers).push(buffer.clone());
            own.push((Arc::downgrade(&self.shared), buffer.clone()));
            buffer
        })
    }

    /// Asks the writer to reopen the file by its path (logrotate, SIGHUP).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
        self.writer.poke();
    }

    /// Queues a non-query event line.
    pub fn event(&self, line: &EventLine) {
        self.queue_event(line.to_json());
    }

    fn queue_event(&self, line: String) -> u64 {
        let seq = {
            let mut events = lock(&self.shared.events);
            let seq = self.shared.queued.fetch_add(1, Ordering::Relaxed) + 1;
            events.push((seq, line));
            seq
        };
        self.writer.poke();
        seq
    }

    /// Writes an event and waits until it is flushed to the log: for what
    /// must not take effect unaudited (a grant). Fails after `within`.
    pub fn event_durable(&self, line: &EventLine, within: Duration) -> Result<(), Unconfirmed> {
        if self.writer.is_closing() {
            return Err(Unconfirmed::Closed);
        }
        let seq = self.queue_event(line.to_json());
        let (written, flushed) = &self.shared.durable;
        let written = lock(written);
        let (state, _) = flushed
            .wait_timeout_while(written, within, |(w, f)| *w < seq && *f < seq)
            .unwrap_or_else(|p| p.into_inner());
        let (written, failed) = *state;
        if failed >= seq {
            // Its pass failed: the line may be lost even if a later pass succeeded.
            return Err(Unconfirmed::WriteFailed);
        }
        if written < seq {
            return Err(Unconfirmed::Timeout { within });
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

/// Why an event that must be durable is not confirmed written.
#[derive(Debug, thiserror::Error)]
pub enum Unconfirmed {
    #[error("the audit log is closed")]
    Closed,
    #[error("writing the audit log failed")]
    WriteFailed,
    #[error("the audit log did not confirm the write within {} ms", within.as_millis())]
    Timeout { within: Duration },
}

/// Where audit lines go.
enum Out {
    /// A file opened for appending: a short write (a full disk) is cut back
    /// to the last whole line with ftruncate, so no line is ever spliced.
    File(std::fs::File),
    /// Stdout (or a test sink): a short write cannot be taken back, so the
    /// next write starts a fresh line.
    Stream(Box<dyn Write + Send>),
}

impl Out {
    fn sink(&mut self) -> &mut dyn Write {
        match self {
            Out::File(f) => f,
            Out::Stream(s) => s,
        }
    }
}

/// What one line of a chunk is, to count what a failed write lost.
#[derive(Clone, Copy)]
enum Line {
    /// The newline that ends a line a failed stream write left open.
    Fresh,
    Record,
    Event,
    /// An `audit_records_lost` line carrying this many.
    Lost(u64),
}

/// Lines go out in chunks of about this size, each written whole or cut back.
const CHUNK: usize = 1 << 20;
/// While writes fail (or the buffer overflows), at most one diagnostic per interval.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How long writes must keep working before the trouble is declared over:
/// a nearly full disk takes a short line now and then, and each of those
/// would otherwise end one trouble and start the next (two lines a pass).
const STEADY: Duration = Duration::from_secs(1);

/// Writes failing since `since`; reported at most every [`REPORT_EVERY`].
struct Trouble {
    since: Instant,
    /// Writes have worked since then, not yet for [`STEADY`].
    ok_since: Option<Instant>,
    cause: String,
    reported: Instant,
    lost_since_report: u64,
    lost: u64,
}

/// The writer thread's state.
struct Writer {
    out: Out,
    chunk: Vec<u8>,
    /// End offset in `chunk` of each line, and what it was.
    lines: Vec<(usize, Line)>,
    /// A stream write stopped inside a line.
    dangling: bool,
    /// Lines this writer could not write, not yet reported in the log.
    failed: u64,
    trouble: Option<Trouble>,
    /// This pass is the last: an ending trouble is reported now.
    closing: bool,
    /// Buffer overflows not yet on stderr, and when they last were.
    overflow: (u64, Option<Instant>),
    batch: Vec<AuditRecord>,
    /// A spare buffer to swap into a thread's place.
    spare: Vec<AuditRecord>,
}

impl Writer {
    fn new(out: Out) -> Writer {
        Writer {
            out,
            chunk: Vec::with_capacity(1 << 16),
            lines: Vec::with_capacity(4096),
            dangling: false,
            failed: 0,
            trouble: None,
            closing: false,
            overflow: (0, None),
            batch: Vec::with_capacity(4096),
            spare: Vec::new(),
        }
    }

    /// One pass: takes what is buffered, writes it whole or counts it lost.
    /// Whether it wrote any query record.
    fn pass(&mut self, shared: &Shared) -> bool {
        self.collect(shared);
        let events = std::mem::take(&mut *lock(&shared.events));
        let last_event = events.last().map(|(seq, _)| *seq);
        // Loss goes first: once writing works again, the first line says
        // how much is missing.
        let overflowed = shared.lost.swap(0, Ordering::Relaxed);
        self.note_overflow(overflowed);
        let lost = overflowed + std::mem::take(&mut self.failed);
        if lost > 0 {
            let mut line = EventLine::now(Event::AuditRecordsLost(RecordsLost {
                count: lost,
                cause: self.trouble.as_ref().map(|t| t.cause.clone()),
            }))
            .to_json();
            line.push('\n');
            self.push(line.as_bytes(), Line::Lost(lost));
        }
        let mut ok = true;
        for (_, event) in events {
            if ok {
                let mut line = event.into_bytes();
                line.push(b'\n');
                self.push(&line, Line::Event);
            } else {
                self.count_failed(1);
            }
        }
        let mut batch = std::mem::take(&mut self.batch);
        let worked = !batch.is_empty();
        for record in batch.drain(..) {
            if !ok {
                // The disk refused this pass already: count the rest, skip the work.
                self.count_failed(1);
                continue;
            }
            // Formatted straight into the chunk: no copy per record.
            self.begin_line();
            format_record(&record, &mut self.chunk);
            self.lines.push((self.chunk.len(), Line::Record));
            if self.chunk.len() >= CHUNK {
                ok = self.write_chunk();
            }
        }
        batch.shrink_to(KEEP);
        self.batch = batch;
        ok = ok && self.write_chunk();
        if ok && let Err(e) = self.out.sink().flush() {
            ok = false;
            self.note_failure(&e, 0);
        }
        if let Some(last) = last_event {
            // Events are confirmed only when the whole pass, and the flush, succeeded.
            let (state, flushed) = &shared.durable;
            let mut state = lock(state);
            if ok {
                state.0 = last;
            } else {
                state.1 = last;
            }
            flushed.notify_all();
        }
        self.after_pass(ok);
        worked
    }

    /// Moves every thread's records into `batch`, in time order (each
    /// thread's are already), and forgets the buffers of threads that ended.
    fn collect(&mut self, shared: &Shared) {
        let mut buffers = lock(&shared.buffers);
        let mut from = 0;
        buffers.retain(|buffer| {
            {
                let mut records = lock(buffer);
                if !records.is_empty() {
                    std::mem::swap(&mut self.spare, &mut records);
                    from += 1;
                }
            }
            if !self.spare.is_empty() {
                self.batch.append(&mut self.spare);
            }
            // The next thread gets this one's room back, within KEEP.
            self.spare.shrink_to(KEEP);
            // Held only here: the thread has ended and left nothing.
            Arc::strong_count(buffer) > 1
        });
        drop(buffers);
        if from > 1 {
            self.batch.sort_by_key(|r| r.ts);
        }
    }

    /// A stream left inside a line gets a newline before the next one.
    fn begin_line(&mut self) {
        if self.chunk.is_empty() && self.dangling {
            self.chunk.push(b'\n');
            self.lines.push((1, Line::Fresh));
        }
    }

    fn push(&mut self, line: &[u8], kind: Line) {
        self.begin_line();
        self.chunk.extend_from_slice(line);
        self.lines.push((self.chunk.len(), kind));
    }

    fn count_failed(&mut self, n: u64) {
        self.failed += n;
        crate::observe::metrics::METRICS
            .audit_lost
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Writes the chunk whole; on a short write, cuts the file back to the
    /// last whole line and counts every line not written as lost.
    fn write_chunk(&mut self) -> bool {
        if self.chunk.is_empty() {
            return true;
        }
        let result = write_all_counted(self.out.sink(), &self.chunk);
        let ok = match result {
            Ok(()) => {
                self.dangling = false;
                true
            }
            Err((written, e)) => {
                let whole = self
                    .lines
                    .iter()
                    .take_while(|(end, _)| *end <= written)
                    .last()
                    .map_or(0, |(end, _)| *end);
                let partial = (written - whole) as u64;
                if partial > 0 {
                    self.dangling = match &self.out {
                        Out::File(f) => f
                            .metadata()
                            .and_then(|m| f.set_len(m.len().saturating_sub(partial)))
                            .is_err(),
                        Out::Stream(_) => true,
                    };
                }
                let mut lost = 0;
                let unwritten: Vec<Line> = self
                    .lines
                    .iter()
                    .filter(|(end, _)| *end > whole)
                    .map(|(_, kind)| *kind)
                    .collect();
                for kind in unwritten {
                    match kind {
                        Line::Fresh => {}
                        Line::Record | Line::Event => {
                            self.count_failed(1);
                            lost += 1;
                        }
                        // Already counted: carried to the next loss line.
                        Line::Lost(n) => self.failed += n,
                    }
                }
                self.note_failure(&e, lost);
                false
            }
        };
        self.chunk.clear();
        self.lines.clear();
        ok
    }

    fn note_failure(&mut self, e: &io::Error, lost: u64) {
        let now = Instant::now();
        match &mut self.trouble {
            Some(t) => {
                t.cause = e.to_string();
                t.lost += lost;
                t.lost_since_report += lost;
            }
            None => {
                tracing::error!(
                    "[!] audit log write failed: {e}; records are counted as lost until \
                     writing works again (reported at most every {} s)",
                    REPORT_EVERY.as_secs()
                );
                self.trouble = Some(Trouble {
                    since: now,
                    ok_since: None,
                    cause: e.to_string(),
                    reported: now,
                    lost_since_report: lost,
                    lost,
                });
            }
        }
    }

    fn after_pass(&mut self, ok: bool) {
        if ok {
            let steady = self.trouble.as_mut().is_some_and(|t| {
                let since = *t.ok_since.get_or_insert_with(Instant::now);
                self.closing || since.elapsed() >= STEADY
            });
            if steady && let Some(t) = self.trouble.take() {
                tracing::warn!(
                    "audit log writable again after {:.1} s of '{}': {} record(s) lost, \
                     logged as audit_records_lost",
                    t.ok_since
                        .unwrap_or_else(Instant::now)
                        .duration_since(t.since)
                        .as_secs_f64(),
                    t.cause,
                    t.lost
                );
            }
        } else if let Some(t) = &mut self.trouble {
            t.ok_since = None;
            if t.reported.elapsed() >= REPORT_EVERY {
                tracing::error!(
                    "[!] audit log writes still failing: {}; {} record(s) lost in the last {} s",
                    t.cause,
                    t.lost_since_report,
                    t.reported.elapsed().as_secs()
                );
                t.reported = Instant::now();
                t.lost_since_report = 0;
            }
        }
    }

    /// Records dropped because the buffer was full: stderr at most once per interval.
    fn note_overflow(&mut self, n: u64) {
        self.overflow.0 += n;
        let due = self
            .overflow
            .1
            .is_none_or(|last| last.elapsed() >= REPORT_EVERY);
        if self.overflow.0 > 0 && due {
            tracing::warn!(
                lost = self.overflow.0,
                "audit records lost: the buffer was full (the writer could not keep up)"
            );
            self.overflow = (0, Some(Instant::now()));
        }
    }
}

/// `write_all`, but says how many bytes went out before an error.
fn write_all_counted(out: &mut dyn Write, data: &[u8]) -> Result<(), (usize, io::Error)> {
    let mut written = 0;
    while written < data.len() {
        match out.write(&data[written..]) {
            Ok(0) => return Err((written, io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((written, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::audit::Decision;
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::{Name, RecordType};
    use std::net::SocketAddr;
    use std::sync::mpsc;
    use std::time::SystemTime;

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
        let log = AuditLog::start_with(Out::Stream(Box::new(out.clone())), None, 10);
        let line = EventLine::now(Event::examples().swap_remove(3));
        log.event_durable(&line, Duration::from_secs(2)).unwrap();
        let written = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(written, format!("{}\n", line.to_json()));
        assert!(written.contains(r#""event":"grant""#), "{written}");
        log.close();

        let full = AuditLog::start_with(Out::Stream(Box::new(Full)), None, 10);
        let refused = full.event_durable(&line, Duration::from_millis(200));
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
            exfil: None,
            owner: None,
        }
    }

    #[test]
    fn overload_is_counted_and_reported_never_silent() {
        let (go, open) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let log = AuditLog::start_with(
            Out::Stream(Box::new(Gate {
                open,
                opened: false,
                out: out.clone(),
            })),
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
    /// Takes `budget` bytes, then fails like a full disk until given more.
    #[derive(Clone)]
    struct Budget(Arc<Mutex<(usize, Vec<u8>)>>);
    impl Write for Budget {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let mut state = self.0.lock().unwrap();
            let n = b.len().min(state.0);
            if n == 0 {
                return Err(io::Error::from_raw_os_error(28));
            }
            state.0 -= n;
            state.1.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_short_write_is_counted_and_the_next_line_starts_fresh() {
        let sink = Budget(Arc::new(Mutex::new((250, Vec::new()))));
        let log = AuditLog::start_with(Out::Stream(Box::new(sink.clone())), None, 100);
        for i in 0..10 {
            log.record(record(i));
        }
        std::thread::sleep(Duration::from_millis(100));
        sink.0.lock().unwrap().0 = usize::MAX;
        log.record(record(10));
        log.close();
        let text = String::from_utf8(sink.0.lock().unwrap().1.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // A stream cannot take bytes back: the cut line stands alone.
        let parsed: Vec<serde_json::Value> = lines
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(parsed.len(), lines.len() - 1, "{text}");
        let written = parsed.iter().filter(|v| v["decision"] == "deny").count() as u64;
        let lost = parsed
            .iter()
            .find(|v| v["event"] == "audit_records_lost")
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(written + lost["count"].as_u64().unwrap(), 11, "{text}");
        assert!(
            lost["cause"].as_str().unwrap().contains("os error 28"),
            "{text}"
        );
    }
}
