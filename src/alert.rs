//! Human alerts for denied lookups, on stderr (the journal under systemd).
//!
//! The first denial from a client prints the full alert. Further denials from
//! that client within the window are only counted, and one summary line closes
//! the window, so a DNS tunnel pushing thousands of unique names produces two
//! lines a minute, not thousands. The audit log still has every lookup.
//! Memory is bounded: at most `MAX_CLIENTS` windows are tracked; denials from
//! further clients fold into one "other clients" counter.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant, SystemTime};

const MAX_CLIENTS: usize = 4096;
const QUEUE: usize = 4096;

/// One denied lookup, as the handler reports it.
#[derive(Debug)]
pub struct Denied {
    pub ts: SystemTime,
    pub agent: Arc<str>,
    pub client: SocketAddr,
    pub qname: String,
    pub qtype: String,
}

enum Message {
    Denied(Box<Denied>),
    Close(SyncSender<()>),
}

/// The handlers' side; cheap to clone, never blocks.
#[derive(Clone)]
pub struct Alerts {
    queue: SyncSender<Message>,
    /// Events that did not fit in the queue; reported in the next summary.
    overflow: Arc<AtomicU64>,
}

impl Alerts {
    /// Starts the alert thread, writing to `out` (stderr in production).
    pub fn start(window: Duration, out: Box<dyn Write + Send>) -> Alerts {
        let (queue, rx) = sync_channel(QUEUE);
        let overflow = Arc::new(AtomicU64::new(0));
        let thread_overflow = overflow.clone();
        std::thread::Builder::new()
            .name("alerts".into())
            .spawn(move || Aggregator::new(window, out, thread_overflow).run(rx))
            .expect("spawn alert thread");
        Alerts { queue, overflow }
    }

    pub fn denied(&self, event: Denied) {
        if self
            .queue
            .try_send(Message::Denied(Box::new(event)))
            .is_err()
        {
            self.overflow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prints open summaries and stops the thread.
    pub fn close(&self) {
        let (ack, done) = sync_channel(1);
        if self.queue.send(Message::Close(ack)).is_ok() {
            let _ = done.recv();
        }
    }
}

struct Window {
    opened: Instant,
    agent: Arc<str>,
    suppressed: u64,
}

struct Aggregator {
    window: Duration,
    out: Box<dyn Write + Send>,
    clients: HashMap<IpAddr, Window>,
    /// Denials from clients beyond `MAX_CLIENTS`, since `other_since`.
    other: u64,
    other_since: Instant,
    overflow: Arc<AtomicU64>,
}

impl Aggregator {
    fn new(window: Duration, out: Box<dyn Write + Send>, overflow: Arc<AtomicU64>) -> Self {
        Self {
            window,
            out,
            clients: HashMap::new(),
            other: 0,
            other_since: Instant::now(),
            overflow,
        }
    }

    fn run(mut self, rx: Receiver<Message>) {
        let tick = Duration::from_millis(500).min(self.window);
        loop {
            match rx.recv_timeout(tick) {
                Ok(Message::Denied(event)) => self.on_denied(&event),
                Ok(Message::Close(ack)) => {
                    self.expire(true);
                    let _ = ack.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.expire(true);
                    return;
                }
            }
            self.expire(false);
        }
    }

    fn on_denied(&mut self, e: &Denied) {
        let ip = e.client.ip();
        if let Some(w) = self.clients.get_mut(&ip) {
            w.suppressed += 1;
            return;
        }
        if self.clients.len() >= MAX_CLIENTS {
            if self.other == 0 {
                self.other_since = Instant::now();
            }
            self.other += 1;
            return;
        }
        self.clients.insert(
            ip,
            Window {
                opened: Instant::now(),
                agent: e.agent.clone(),
                suppressed: 0,
            },
        );
        let text = format!(
            "[!] UNEXPECTED DNS LOOKUP\nTimestamp: {}\nAgent: {}\nClient: {}\nQuery: {} {}\nAction: NXDOMAIN\nRule Matched: NONE - name not in allow-list\n",
            humantime::format_rfc3339_seconds(e.ts),
            e.agent,
            e.client,
            e.qname,
            e.qtype,
        );
        self.emit(&text);
    }

    /// Closes windows that are over (all of them when `all`), printing summaries.
    fn expire(&mut self, all: bool) {
        let now = Instant::now();
        let window = self.window;
        let mut lines = Vec::new();
        self.clients.retain(|ip, w| {
            let done = all || now.duration_since(w.opened) >= window;
            if done && w.suppressed > 0 {
                lines.push(format!(
                    "[!] ... and {} more denied lookups from {ip} (agent {}) in the last {} s\n",
                    thousands(w.suppressed),
                    w.agent,
                    now.duration_since(w.opened).as_secs().max(1),
                ));
            }
            !done
        });
        if self.other > 0 && (all || now.duration_since(self.other_since) >= window) {
            lines.push(format!(
                "[!] ... and {} more denied lookups from other clients in the last {} s\n",
                thousands(self.other),
                now.duration_since(self.other_since).as_secs().max(1),
            ));
            self.other = 0;
        }
        let dropped = self.overflow.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            lines.push(format!(
                "[!] ... and {} more denied lookups not itemized (alert queue full; the audit log has each one)\n",
                thousands(dropped)
            ));
        }
        for line in lines {
            self.emit(&line);
        }
    }

    fn emit(&mut self, text: &str) {
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }
}

/// 4812 -> "4,812".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(4812), "4,812");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn a_flood_prints_one_alert_and_one_summary() {
        let buf = Buf::default();
        let alerts = Alerts::start(Duration::from_secs(60), Box::new(buf.clone()));
        for i in 0..5000 {
            alerts.denied(Denied {
                ts: SystemTime::UNIX_EPOCH,
                agent: "a".into(),
                client: "10.200.1.2:53422".parse().unwrap(),
                qname: format!("x{i}.tunnel.example"),
                qtype: "A".into(),
            });
        }
        alerts.close();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("UNEXPECTED DNS LOOKUP").count(), 1, "{text}");
        assert!(text.contains("Query: x0.tunnel.example A"), "{text}");
        let itemized: u64 = text
            .lines()
            .filter_map(|l| l.strip_prefix("[!] ... and "))
            .map(|l| {
                l.split(' ')
                    .next()
                    .unwrap()
                    .replace(',', "")
                    .parse::<u64>()
                    .unwrap()
            })
            .sum();
        assert_eq!(itemized, 4999, "{text}");
    }
}
