//! Human alerts for denied lookups, on stderr (the journal under systemd).
//!
//! The first denial from a client prints the full alert. Further denials from
//! that client within the window are only counted, and one summary line closes
//! the window, so a DNS tunnel pushing thousands of unique names produces two
//! lines a minute, not thousands. The audit log still has every lookup.
//!
//! Counting happens inline under a mutex (a hash lookup); only a new window
//! wakes the printing thread, so a flood costs no thread wake-ups. Memory is
//! bounded: at most `MAX_CLIENTS` windows; denials from further clients fold
//! into one "other clients" counter.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::rr::{Name, RecordType};

use crate::audit::display_name;
use crate::worker::Worker;

const MAX_CLIENTS: usize = 4096;
/// Full alerts waiting to be printed; more than this in one tick are counted.
const MAX_PENDING: usize = 1024;

/// One denied lookup, as the handler reports it.
#[derive(Debug)]
pub struct Denied {
    pub ts: SystemTime,
    pub agent: Arc<str>,
    pub client: SocketAddr,
    pub qname: Name,
    pub qtype: RecordType,
}

struct Window {
    opened: Instant,
    agent: Arc<str>,
    suppressed: u64,
}

#[derive(Default)]
struct State {
    clients: HashMap<IpAddr, Window>,
    /// Full alerts not yet printed.
    pending: Vec<Denied>,
    /// Denials that found no window slot or pending slot, since `other_since`.
    other: u64,
    other_since: Option<Instant>,
}

struct Shared {
    state: Mutex<State>,
    window: Duration,
}

/// The handlers' side; cheap to clone, never blocks on I/O.
#[derive(Clone)]
pub struct Alerts {
    shared: Arc<Shared>,
    printer: Arc<Worker>,
}

impl Alerts {
    /// Starts the printing thread, writing to `out` (stderr in production).
    pub fn start(window: Duration, mut out: Box<dyn Write + Send>) -> Alerts {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            window,
        });
        let printer_shared = shared.clone();
        let tick = Duration::from_millis(500).min(window);
        let printer = Worker::start("alerts", tick, move |closing| {
            let text = collect(&printer_shared, closing);
            if !text.is_empty() {
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
        });
        Alerts {
            shared,
            printer: Arc::new(printer),
        }
    }

    pub fn denied(&self, event: Denied) {
        let ip = event.client.ip();
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = state.clients.get_mut(&ip) {
            w.suppressed += 1;
            return;
        }
        if state.clients.len() >= MAX_CLIENTS || state.pending.len() >= MAX_PENDING {
            state.other += 1;
            state.other_since.get_or_insert_with(Instant::now);
            return;
        }
        state.clients.insert(
            ip,
            Window {
                opened: Instant::now(),
                agent: event.agent.clone(),
                suppressed: 0,
            },
        );
        state.pending.push(event);
        drop(state);
        self.printer.poke();
    }

    /// Prints what is pending and every open summary, then stops the thread.
    pub fn close(&self) {
        self.printer.close();
    }
}

/// Takes pending alerts and closes windows that are over (all when `all`).
fn collect(shared: &Shared, all: bool) -> String {
    let now = Instant::now();
    let window = shared.window;
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    let mut text = String::new();
    for e in state.pending.drain(..) {
        text.push_str(&format!(
            "[!] UNEXPECTED DNS LOOKUP\nTimestamp: {}\nAgent: {}\nClient: {}\nQuery: {} {}\nAction: NXDOMAIN\nRule Matched: NONE - name not in allow-list\n",
            humantime::format_rfc3339_seconds(e.ts),
            e.agent,
            e.client,
            display_name(&e.qname),
            e.qtype,
        ));
    }
    state.clients.retain(|ip, w| {
        let done = all || now.duration_since(w.opened) >= window;
        if done && w.suppressed > 0 {
            text.push_str(&format!(
                "[!] ... and {} more denied lookups from {ip} (agent {}) in the last {} s\n",
                thousands(w.suppressed),
                w.agent,
                now.duration_since(w.opened).as_secs().max(1),
            ));
        }
        !done
    });
    if let Some(since) = state.other_since
        && (all || now.duration_since(since) >= window)
    {
        text.push_str(&format!(
            "[!] ... and {} more denied lookups from other clients in the last {} s (too many to itemize; the audit log has each one)\n",
            thousands(state.other),
            now.duration_since(since).as_secs().max(1),
        ));
        state.other = 0;
        state.other_since = None;
    }
    text
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

    fn denied(client: &str, i: usize) -> Denied {
        Denied {
            ts: SystemTime::UNIX_EPOCH,
            agent: "a".into(),
            client: client.parse().unwrap(),
            qname: Name::from_ascii(format!("x{i}.tunnel.example.")).unwrap(),
            qtype: RecordType::A,
        }
    }

    #[test]
    fn a_flood_prints_one_alert_and_one_summary() {
        let buf = Buf::default();
        let alerts = Alerts::start(Duration::from_secs(60), Box::new(buf.clone()));
        for i in 0..5000 {
            alerts.denied(denied("10.200.1.2:53422", i));
        }
        alerts.close();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("UNEXPECTED DNS LOOKUP").count(), 1, "{text}");
        assert!(text.contains("Query: x0.tunnel.example A"), "{text}");
        assert!(
            text.contains(
                "[!] ... and 4,999 more denied lookups from 10.200.1.2 (agent a) in the last 1 s"
            ),
            "{text}"
        );
    }

    #[test]
    fn memory_is_bounded_under_many_clients() {
        let buf = Buf::default();
        let alerts = Alerts::start(Duration::from_secs(60), Box::new(buf.clone()));
        for i in 0..(MAX_CLIENTS * 3) {
            let ip = format!("10.{}.{}.{}:1", i >> 16 & 255, i >> 8 & 255, i & 255);
            alerts.denied(denied(&ip, i));
        }
        {
            let state = alerts.shared.state.lock().unwrap();
            assert!(state.clients.len() <= MAX_CLIENTS);
            assert!(state.pending.len() <= MAX_PENDING);
        }
        alerts.close();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("more denied lookups from other clients"),
            "{text}"
        );
    }
}
