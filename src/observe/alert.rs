//! Human alerts for denied lookups and unexpected outbound connections, on
//! stderr (the journal under systemd).
//!
//! Each new denied name from a client prints the full alert, up to
//! [`ALERTS_PER_WINDOW`] per window, so a person trying a second name sees it
//! at once. Further denials from that client within the window (repeats, or
//! names past that limit) are only counted, and one summary line closes the
//! window, so a DNS tunnel pushing thousands of unique names produces a few
//! lines a minute, not thousands. The audit log still has every lookup.
//!
//! Counting happens inline under a mutex (a hash lookup); only a new window
//! wakes the printing thread, so a flood costs no thread wake-ups. Memory is
//! bounded: at most `MAX_CLIENTS` windows; denials from further clients fold
//! into one "other clients" counter.
//!
//! With `alerts.notify` configured, the same lock also feeds the per-agent
//! threshold tracker ([`crate::observe::delivery::threshold`]); the printing thread
//! hands what it raises to [`Delivery`], whose sinks send off this thread.
//!
//! Stripped answers and exfiltration marks are security events of their own:
//! each has its own tracker that notifies on the first event (threshold 0)
//! and then once per window while they go on. Exfiltration marks print
//! nothing here: the budget logs them itself (rate-limited) when it decides.

use foldhash::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::rr::{Name, RecordType};

use crate::observe::attribution::Attribution;
use crate::observe::audit::{display_name, type_name};
use crate::observe::delivery::threshold::{Kind, Lookup, Raised, Threshold, Thresholds, What};
use crate::observe::delivery::{Delivery, DeliveryStats, NotifySettings};
use crate::observe::worker::{Ticks, Worker};
use crate::sync::lock;

const MAX_CLIENTS: usize = 4096;
/// Full alerts per client and window, one per distinct denied name.
pub const ALERTS_PER_WINDOW: usize = 5;
/// Full alerts waiting to be printed; more than this in one tick are counted.
const MAX_PENDING: usize = 1024;
/// How long close waits for notifications still queued: shutdown must not hang.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// What allowdns did about a lookup or connection outside the allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Enforced: NXDOMAIN for a lookup, a drop for a connection.
    Blocked,
    /// `mode: monitor`: let through, alerted.
    Logged,
}

impl Action {
    /// As the audit log spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Blocked => "blocked",
            Action::Logged => "logged",
        }
    }
}

/// What a monitor-mode alert says it did.
const LOGGED: &str = "LOGGED (Block policy not enabled)";

/// One denied lookup, as the handler reports it.
#[derive(Debug)]
pub struct Denied {
    pub ts: SystemTime,
    pub agent: Arc<str>,
    pub client: SocketAddr,
    pub qname: Name,
    pub qtype: RecordType,
    pub action: Action,
    /// The process that asked, when attribution is on.
    pub owner: Option<Attribution>,
}

/// One connection attempt the allowlist does not cover.
#[derive(Debug)]
pub struct Egress {
    pub ts: SystemTime,
    pub agent: Arc<str>,
    pub client: SocketAddr,
    /// The client whose alert window it counts in: its own address, or
    /// for a forged source one shared by all forgeries (an address chosen
    /// per packet must not open windows of its own).
    pub window: IpAddr,
    /// `addr:port/proto`, or `addr/proto`.
    pub destination: String,
    /// For the notification: address, port (0: none), IP protocol.
    pub dst: (IpAddr, u16, u8),
    /// `resolved: NAME, …` or `never handed out`: the parenthesis after the destination.
    pub resolved: String,
    /// The name, for the notification.
    pub resolved_name: Option<Name>,
    /// An entry covering the address on other ports, and what it allows.
    pub rule: Option<String>,
    pub action: Action,
    /// The process that connected, when attribution is on.
    pub owner: Option<Attribution>,
}

/// Special-purpose addresses stripped from an allowed answer.
#[derive(Debug)]
pub struct Stripped {
    pub ts: SystemTime,
    pub agent: Arc<str>,
    pub client: SocketAddr,
    pub qname: Name,
    pub qtype: RecordType,
    pub rule: Option<Arc<str>>,
    pub addresses: Vec<IpAddr>,
}

/// A question the exfiltration budget marked or refused (docs/exfiltration.md).
/// The name is borrowed: copied only when notifications are configured.
#[derive(Debug)]
pub struct Exfil<'a> {
    pub ts: SystemTime,
    pub agent: &'a Arc<str>,
    pub client: SocketAddr,
    pub qname: &'a Name,
    pub qtype: RecordType,
    /// The audit mark: `soft`, `budget` or `qtype`.
    pub mark: &'static str,
}

/// Events aggregated per client like denials, in windows of their own: the
/// first in a window is alerted in full, the rest counted.
struct Windows<T> {
    clients: HashMap<IpAddr, Window>,
    pending: Vec<T>,
    other: u64,
    other_since: Option<Instant>,
}

impl<T> Default for Windows<T> {
    fn default() -> Self {
        Windows {
            clients: HashMap::default(),
            pending: Vec::new(),
            other: 0,
            other_since: None,
        }
    }
}

impl<T> Windows<T> {
    /// Opens a window for `ip` and queues `event` in full (true), or counts
    /// it in the client's open window, or with the others when full (false).
    fn admit(&mut self, ip: IpAddr, agent: &Arc<str>, now: Instant, event: T) -> bool {
        if let Some(w) = self.clients.get_mut(&ip) {
            w.suppressed += 1;
            false
        } else if self.clients.len() >= MAX_CLIENTS || self.pending.len() >= MAX_PENDING {
            self.other += 1;
            self.other_since.get_or_insert(now);
            false
        } else {
            let window = Window {
                opened: now,
                agent: agent.clone(),
                suppressed: 0,
                alerted: Vec::new(),
            };
            self.clients.insert(ip, window);
            self.pending.push(event);
            true
        }
    }

    /// Counts a denial of `qname` in `ip`'s window: at most
    /// [`ALERTS_PER_WINDOW`] names in full, the rest suppressed.
    fn reserve(&mut self, ip: IpAddr, agent: &Arc<str>, qname: &Name) -> Slot {
        let room = self.pending.len() < MAX_PENDING;
        let full = if let Some(w) = self.clients.get_mut(&ip) {
            let new_name = w.alerted.len() < ALERTS_PER_WINDOW && !w.alerted.contains(qname);
            if new_name && room {
                w.alerted.push(qname.clone());
            } else {
                w.suppressed += 1;
            }
            new_name && room
        } else if self.clients.len() >= MAX_CLIENTS || !room {
            self.other += 1;
            self.other_since.get_or_insert_with(Instant::now);
            false
        } else {
            let window = Window {
                opened: Instant::now(),
                agent: agent.clone(),
                suppressed: 0,
                alerted: vec![qname.clone()],
            };
            self.clients.insert(ip, window);
            true
        };
        Slot { full }
    }

    /// Writes the alerts waiting in full (`alert` formats one), then closes
    /// the windows that have run their course (all of them with `all`).
    fn flush(
        &mut self,
        tick: &Tick,
        summary: &Summary,
        alert: impl Fn(&T) -> String,
        text: &mut String,
    ) {
        tick.stats
            .stderr_alerts
            .fetch_add(self.pending.len() as u64, Ordering::Relaxed);
        for e in self.pending.drain(..) {
            text.push_str(&alert(&e));
        }
        let Tick {
            now, window, all, ..
        } = *tick;
        self.clients.retain(|ip, w| {
            let done = all || now.duration_since(w.opened) >= window;
            if done && w.suppressed > 0 {
                text.push_str(&format!(
                    "[!] ... and {} more {} {ip} (agent {}){} in the last {} s\n",
                    thousands(w.suppressed),
                    summary.what,
                    w.agent,
                    summary.why,
                    now.duration_since(w.opened).as_secs().max(1),
                ));
            }
            !done
        });
        if let Some(since) = self.other_since
            && (all || now.duration_since(since) >= window)
        {
            text.push_str(&format!(
                "[!] ... and {} more {} other clients{} in the last {} s ({}the audit log has each one)\n",
                thousands(self.other),
                summary.what,
                summary.why,
                now.duration_since(since).as_secs().max(1),
                summary.others,
            ));
            self.other = 0;
            self.other_since = None;
        }
    }
}

/// How a closing window's summary reads: "[!] ... and N more {what} CLIENT
/// (agent A){why} in the last S s", and for the clients past
/// [`MAX_CLIENTS`] "... {what} other clients{why} ... ({others}the audit
/// log has each one)".
struct Summary {
    what: &'static str,
    why: &'static str,
    others: &'static str,
}

const DENIALS: Summary = Summary {
    what: "denied lookups from",
    why: "",
    others: "too many to itemize; ",
};
const STRIPS: Summary = Summary {
    what: "answers to",
    why: " stripped of special-purpose addresses",
    others: "",
};
const FLOWS: Summary = Summary {
    what: "connection attempts from",
    why: " outside the allowlist",
    others: "",
};

/// One pass of the printing thread.
struct Tick<'a> {
    stats: &'a AlertStats,
    now: Instant,
    window: Duration,
    /// Close every window (shutdown).
    all: bool,
}

struct Window {
    opened: Instant,
    agent: Arc<str>,
    suppressed: u64,
    /// Denied names alerted in full in this window (at most [`ALERTS_PER_WINDOW`]).
    alerted: Vec<Name>,
}

#[derive(Default)]
struct State {
    /// Denied lookups; a window alerts up to [`ALERTS_PER_WINDOW`] names in full.
    denials: Windows<Denied>,
    /// Per-agent notification thresholds, when `alerts.notify` is set.
    thresholds: Option<Thresholds>,
    /// Stripped answers.
    strips: Windows<Stripped>,
    /// Connection attempts.
    flows: Windows<Egress>,
    /// Notification trackers for stripped answers and exfiltration marks,
    /// when `alerts.notify` is set.
    stripped_notify: Option<Thresholds>,
    exfil_notify: Option<Thresholds>,
    /// Connections outside the allowlist: the denial threshold, own tracker.
    egress_notify: Option<Thresholds>,
}

struct Shared {
    state: Mutex<State>,
    window: Duration,
}

/// Alerts raised, for the log and a metrics endpoint.
#[derive(Debug, Default)]
pub struct AlertStats {
    /// Full "UNEXPECTED DNS LOOKUP" blocks printed on stderr.
    pub stderr_alerts: AtomicU64,
    /// Threshold notifications raised (crossings and follow-ups), whatever
    /// their delivery; per-sink outcomes are in [`DeliveryStats`].
    pub notifications: AtomicU64,
}

/// A denial's place in its client's window, from [`Alerts::reserve_denied`].
#[derive(Clone, Copy, Debug)]
#[must_use]
pub struct Slot {
    full: bool,
}

impl Slot {
    /// Whether the denial is one alerted in full.
    pub fn full(self) -> bool {
        self.full
    }
}

/// The handlers' side; cheap to clone, never blocks on I/O.
#[derive(Clone)]
pub struct Alerts {
    shared: Arc<Shared>,
    printer: Arc<Worker>,
    /// The notification sinks, when `alerts.notify` is set.
    delivery: Option<Arc<Delivery>>,
    /// Shared with the printing thread, which does the counting.
    stats: Arc<AlertStats>,
}

impl Alerts {
    /// Starts the printing thread, writing to `out` (stderr in production).
    pub fn start(window: Duration, out: Box<dyn Write + Send>) -> Alerts {
        Self::start_with(window, None, out)
    }

    /// Like [`Alerts::start`], plus threshold notifications to the
    /// configured sinks, each on its own thread.
    pub fn start_with(
        window: Duration,
        notify: Option<NotifySettings>,
        mut out: Box<dyn Write + Send>,
    ) -> Alerts {
        // A security event notifies on its first occurrence, then at most
        // once per window: the configured window, a count of 0.
        let security = |kind| {
            notify.as_ref().map(|n| {
                let threshold = Threshold {
                    count: 0,
                    window: n.threshold.window,
                };
                Thresholds::of(kind, threshold)
            })
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                thresholds: notify.as_ref().map(|n| Thresholds::new(n.threshold)),
                stripped_notify: security(Kind::Stripped),
                exfil_notify: security(Kind::Exfil),
                egress_notify: notify
                    .as_ref()
                    .map(|n| Thresholds::of(Kind::Egress, n.threshold)),
                ..State::default()
            }),
            window,
        });
        let delivery = notify.as_ref().map(|n| Arc::new(Delivery::start(n)));
        let stats = Arc::new(AlertStats::default());
        let (printer_shared, printer_delivery, printer_stats) =
            (shared.clone(), delivery.clone(), stats.clone());
        let tick = Duration::from_millis(500).min(window);
        let printer = Worker::start("alerts", Ticks::every(tick), move |closing| {
            let (text, raised) = collect(&printer_shared, &printer_stats, closing);
            if !text.is_empty() {
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
            if let Some(delivery) = &printer_delivery {
                for r in raised {
                    delivery.submit(r);
                }
            }
            false
        });
        Alerts {
            shared,
            printer: Arc::new(printer),
            delivery,
            stats,
        }
    }

    /// Counts a denial of `qname` from `client` in its window when it is
    /// decided: [`Slot::full`] if it is one to alert in full (its process is
    /// looked up first). Its alert follows with [`Self::denied_in`]; for a
    /// held denial, after the lookup, so a burst of them cannot all pass
    /// for the window's first.
    pub fn reserve_denied(&self, client: IpAddr, agent: &Arc<str>, qname: &Name) -> Slot {
        lock(&self.shared.state)
            .denials
            .reserve(client, agent, qname)
    }

    /// Whether a connection attempt from `client` would be alerted in full now.
    pub fn would_alert_egress(&self, client: IpAddr) -> bool {
        let state = lock(&self.shared.state);
        let f = &state.flows;
        !f.clients.contains_key(&client)
            && f.clients.len() < MAX_CLIENTS
            && f.pending.len() < MAX_PENDING
    }

    /// A denial, counted and raised at once.
    pub fn denied(&self, event: Denied) {
        self.denied_in(None, event);
    }

    /// Raises a denial, counted by [`Self::reserve_denied`] if `slot` is set.
    pub fn denied_in(&self, slot: Option<Slot>, event: Denied) {
        let ip = event.client.ip();
        let mut guard = lock(&self.shared.state);
        let state = &mut *guard;
        let d = &mut state.denials;
        let slot = slot.unwrap_or_else(|| d.reserve(ip, &event.agent, &event.qname));
        let print = slot.full && d.pending.len() < MAX_PENDING;
        if slot.full && !print {
            d.other += 1;
            d.other_since.get_or_insert_with(Instant::now);
        }
        let mut wake = print;
        // The name is moved into the tracker, and copied only when the
        // printer needs it too (the first denial of a client's window).
        match (&mut state.thresholds, print) {
            (Some(thresholds), false) => {
                let Denied {
                    ts,
                    agent,
                    qname,
                    qtype,
                    ..
                } = event;
                let lookup = Lookup {
                    ts,
                    client: ip,
                    qname,
                    qtype,
                    what: Vec::new(),
                };
                wake |= thresholds.record(Instant::now(), &agent, lookup);
            }
            (Some(thresholds), true) => {
                let lookup = Lookup {
                    ts: event.ts,
                    client: ip,
                    qname: event.qname.clone(),
                    qtype: event.qtype,
                    what: Vec::new(),
                };
                wake |= thresholds.record(Instant::now(), &event.agent, lookup);
                d.pending.push(event);
            }
            (None, true) => d.pending.push(event),
            (None, false) => {}
        }
        drop(guard);
        if wake {
            self.printer.poke();
        }
    }

    /// One alert per answer the fence stripped special-purpose addresses
    /// from; floods from a client fold into one summary per window.
    pub fn stripped(&self, event: Stripped) {
        let (ip, agent) = (event.client.ip(), event.agent.clone());
        let lookup = |e: &Stripped| Lookup {
            ts: e.ts,
            client: ip,
            qname: e.qname.clone(),
            qtype: e.qtype,
            what: e.addresses.iter().map(|&a| What::Address(a)).collect(),
        };
        self.windowed(
            ip,
            &agent,
            event,
            |s| (&mut s.stripped_notify, &mut s.strips),
            lookup,
        );
    }

    /// A question the exfiltration budget marked or refused: counted
    /// towards a notification (the budget has logged it already).
    pub fn exfil(&self, event: Exfil<'_>) {
        // Without sinks there is nothing to do: not even the lock.
        if self.delivery.is_none() {
            return;
        }
        let now = Instant::now();
        let mut guard = lock(&self.shared.state);
        let Some(thresholds) = guard.exfil_notify.as_mut() else {
            return;
        };
        let lookup = Lookup {
            ts: event.ts,
            client: event.client.ip(),
            qname: event.qname.clone(),
            qtype: event.qtype,
            what: vec![What::Mark(event.mark)],
        };
        let wake = thresholds.record(now, event.agent, lookup);
        drop(guard);
        if wake {
            self.printer.poke();
        }
    }

    /// One alert per connection attempt outside the allowlist; further
    /// attempts from the client within the window fold into one summary
    /// (a port scan is two lines). Counted towards notifications like denials.
    pub fn egress(&self, event: Egress) {
        let (ip, agent) = (event.window, event.agent.clone());
        let lookup = |e: &Egress| {
            let (addr, port, proto) = e.dst;
            Lookup {
                ts: e.ts,
                client: e.client.ip(),
                qname: e.resolved_name.clone().unwrap_or_else(Name::root),
                qtype: if addr.is_ipv4() {
                    RecordType::A
                } else {
                    RecordType::AAAA
                },
                what: vec![What::Destination(addr, port, proto)],
            }
        };
        self.windowed(
            ip,
            &agent,
            event,
            |s| (&mut s.egress_notify, &mut s.flows),
            lookup,
        );
    }

    /// Counts `event` towards its notification tracker (as the lookup
    /// `lookup` makes of it) and admits it to its windows; `parts` picks
    /// the two from the state. Wakes the printer for a new window or a
    /// notification.
    fn windowed<T>(
        &self,
        ip: IpAddr,
        agent: &Arc<str>,
        event: T,
        parts: fn(&mut State) -> (&mut Option<Thresholds>, &mut Windows<T>),
        lookup: impl FnOnce(&T) -> Lookup,
    ) {
        let now = Instant::now();
        let mut guard = lock(&self.shared.state);
        let (tracker, windows) = parts(&mut guard);
        let notified = tracker
            .as_mut()
            .is_some_and(|t| t.record(now, agent, lookup(&event)));
        let print = windows.admit(ip, agent, now, event);
        drop(guard);
        if print || notified {
            self.printer.poke();
        }
    }

    /// Alerts raised so far.
    pub fn stats(&self) -> &Arc<AlertStats> {
        &self.stats
    }

    /// Delivery counters per sink kind (`webhook`, `syslog`); empty without
    /// `alerts.notify`.
    pub fn delivery_stats(&self) -> Vec<(&'static str, Arc<DeliveryStats>)> {
        self.delivery
            .as_ref()
            .map(|d| d.stats())
            .unwrap_or_default()
    }

    /// Prints what is pending and every open summary, then stops the thread;
    /// then gives queued notifications up to 2 s to go out.
    pub fn close(&self) {
        self.printer.close();
        if let Some(delivery) = &self.delivery {
            delivery.close(FLUSH_GRACE);
        }
    }
}

/// Takes pending alerts and closes windows that are over (all when `all`);
/// also takes the notifications that are due.
fn collect(shared: &Shared, stats: &AlertStats, all: bool) -> (String, Vec<Raised>) {
    let tick = Tick {
        stats,
        now: Instant::now(),
        window: shared.window,
        all,
    };
    let mut state = lock(&shared.state);
    let mut raised = Vec::new();
    let state = &mut *state;
    for t in [
        &mut state.thresholds,
        &mut state.stripped_notify,
        &mut state.exfil_notify,
        &mut state.egress_notify,
    ]
    .into_iter()
    .flatten()
    {
        raised.extend(t.take_due(tick.now));
    }
    stats
        .notifications
        .fetch_add(raised.len() as u64, Ordering::Relaxed);
    let mut text = String::new();
    state
        .denials
        .flush(&tick, &DENIALS, denial_alert, &mut text);
    state.strips.flush(&tick, &STRIPS, strip_alert, &mut text);
    state.flows.flush(&tick, &FLOWS, flow_alert, &mut text);
    (text, raised)
}

/// The process behind an event, as its alert's lines, or nothing.
fn owner_lines(owner: Option<&Attribution>) -> String {
    owner.map(ToString::to_string).unwrap_or_default()
}

fn denial_alert(e: &Denied) -> String {
    format!(
        "[!] UNEXPECTED DNS LOOKUP\nTimestamp: {}\nAgent: {}\nClient: {}\n{}Query: {} {}\nAction: {}\nRule Matched: NONE - name not in allow-list\n",
        humantime::format_rfc3339_seconds(e.ts),
        e.agent,
        e.client,
        owner_lines(e.owner.as_ref()),
        display_name(&e.qname),
        type_name(e.qtype),
        match e.action {
            Action::Blocked => "NXDOMAIN",
            Action::Logged => LOGGED,
        },
    )
}

fn strip_alert(e: &Stripped) -> String {
    let addresses: Vec<String> = e
        .addresses
        .iter()
        .map(|ip| match crate::policy::special::special(*ip) {
            Some(why) => format!("{ip} ({why})"),
            None => ip.to_string(),
        })
        .collect();
    format!(
        "[!] SPECIAL-PURPOSE ADDRESS STRIPPED\nTimestamp: {}\nAgent: {}\nClient: {}\nQuery: {} {}\nRule Matched: {}\nStripped: {}\nAction: removed from the answer, not fed to the firewall\n",
        humantime::format_rfc3339_seconds(e.ts),
        e.agent,
        e.client,
        display_name(&e.qname),
        type_name(e.qtype),
        e.rule.as_deref().unwrap_or("(learn mode)"),
        addresses.join(", "),
    )
}

fn flow_alert(e: &Egress) -> String {
    format!(
        "[!] UNEXPECTED OUTBOUND CONNECTION\nTimestamp: {}\nAgent: {}\nClient: {}\n{}Destination: {} ({})\nAction: {}\nRule Matched: {}\n",
        humantime::format_rfc3339_seconds(e.ts),
        e.agent,
        e.client.ip(),
        owner_lines(e.owner.as_ref()),
        e.destination,
        e.resolved,
        match e.action {
            Action::Blocked => "BLOCKED",
            Action::Logged => LOGGED,
        },
        e.rule
            .as_deref()
            .unwrap_or("NONE - Connection not in allow-list."),
    )
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

    /// What alerts print while `feed` raises events, up to their close.
    fn printed(feed: impl FnOnce(&Alerts)) -> String {
        let buf = Buf::default();
        let alerts = Alerts::start(Duration::from_secs(60), Box::new(buf.clone()));
        feed(&alerts);
        alerts.close();
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
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
            action: Action::Blocked,
            owner: None,
        }
    }

    #[test]
    fn a_flood_prints_a_few_alerts_and_one_summary() {
        let text = printed(|alerts| {
            for i in 0..5000 {
                alerts.denied(denied("10.200.1.2:53422", i));
            }
        });
        assert_eq!(
            text.matches("UNEXPECTED DNS LOOKUP").count(),
            ALERTS_PER_WINDOW,
            "{text}"
        );
        assert!(text.contains("Query: x0.tunnel.example A"), "{text}");
        assert!(text.contains("Query: x4.tunnel.example A"), "{text}");
        assert!(!text.contains("Query: x5.tunnel.example A"), "{text}");
        assert_eq!(text.matches("more denied lookups").count(), 1, "{text}");
        assert!(
            text.contains(
                "[!] ... and 4,995 more denied lookups from 10.200.1.2 (agent a) in the last 1 s"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_window_is_counted_when_denials_are_decided_not_raised() {
        let alerts = Alerts::start(Duration::from_secs(60), Box::new(Buf::default()));
        let events: Vec<_> = (0..20).map(|i| denied("10.200.1.2:1", i)).collect();
        // Held denials: all decided before the first is raised.
        let slots: Vec<_> = events
            .iter()
            .map(|e| alerts.reserve_denied(e.client.ip(), &e.agent, &e.qname))
            .collect();
        let full = slots.iter().filter(|s| s.full()).count();
        assert_eq!(full, ALERTS_PER_WINDOW);
        assert!(slots[..ALERTS_PER_WINDOW].iter().all(|s| s.full()));
        for (slot, event) in slots.into_iter().zip(events) {
            alerts.denied_in(Some(slot), event);
        }
        let denials = &alerts.shared.state.lock().unwrap().denials;
        let w = &denials.clients[&"10.200.1.2".parse().unwrap()];
        assert_eq!((w.alerted.len(), w.suppressed), (ALERTS_PER_WINDOW, 15));
    }

    #[test]
    fn a_second_denied_name_is_alerted_at_once_and_a_repeat_is_counted() {
        let buf = Buf::default();
        let alerts = Alerts::start(Duration::from_secs(60), Box::new(buf.clone()));
        let text = || String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let wait_for = |needle: &str| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !text().contains(needle) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            text()
        };
        // Positive control: the first denial is printed before the window closes.
        alerts.denied(denied("10.200.1.2:1", 0));
        assert!(wait_for("Query: x0.tunnel.example A").contains("x0.tunnel"));
        alerts.denied(denied("10.200.1.2:2", 0));
        alerts.denied(denied("10.200.1.2:3", 1));
        let shown = wait_for("Query: x1.tunnel.example A");
        assert!(shown.contains("Query: x1.tunnel.example A"), "{shown}");
        assert_eq!(shown.matches("x0.tunnel").count(), 1, "{shown}");
        assert!(!shown.contains("more denied"), "{shown}");
        alerts.close();
        assert!(
            text().contains("[!] ... and 1 more denied lookups from 10.200.1.2"),
            "{}",
            text()
        );
    }

    /// A UDP syslog collector on loopback, and alerts that notify it once
    /// more than `count` events fall in a 300 s window.
    fn with_syslog(count: u32) -> (std::net::UdpSocket, Alerts) {
        use crate::observe::delivery::syslog::{Format, SyslogSettings, Target};
        use crate::observe::delivery::threshold::Threshold;
        use crate::observe::delivery::{NotifySettings, RetryPolicy};
        let collector = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        collector
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let notify = NotifySettings {
            threshold: Threshold {
                count,
                window: Duration::from_secs(300),
            },
            webhook: None,
            syslog: Some(SyslogSettings {
                target: Target::Udp(collector.local_addr().unwrap()),
                facility: 4,
                format: Format::Rfc5424,
            }),
            retry: RetryPolicy::default(),
        };
        let alerts = Alerts::start_with(
            Duration::from_secs(60),
            Some(notify),
            Box::new(Buf::default()),
        );
        (collector, alerts)
    }

    /// The next datagram the collector receives.
    fn received(collector: &std::net::UdpSocket) -> String {
        let mut datagram = [0u8; 8192];
        let n = collector.recv(&mut datagram).unwrap();
        String::from_utf8_lossy(&datagram[..n]).into_owned()
    }

    fn stripped(qname: &str) -> Stripped {
        Stripped {
            ts: SystemTime::UNIX_EPOCH,
            agent: "a".into(),
            client: "10.200.1.2:5300".parse().unwrap(),
            qname: Name::from_ascii(qname).unwrap(),
            qtype: RecordType::A,
            rule: Some("*.cdn.test".into()),
            addresses: vec!["169.254.169.254".parse().unwrap()],
        }
    }

    /// A TCP connection attempt from 10.200.2.2 to `addr:port`.
    fn egress(addr: &str, port: u16, resolved: &str, action: Action) -> Egress {
        Egress {
            ts: SystemTime::UNIX_EPOCH,
            agent: "a".into(),
            client: "10.200.2.2:40000".parse().unwrap(),
            window: "10.200.2.2".parse().unwrap(),
            destination: format!("{addr}:{port}/tcp"),
            dst: (addr.parse().unwrap(), port, 6),
            resolved: resolved.into(),
            resolved_name: None,
            rule: None,
            action,
            owner: None,
        }
    }

    #[test]
    fn a_crossing_goes_to_the_sinks_and_is_counted() {
        let (collector, alerts) = with_syslog(2);
        for i in 0..3 {
            alerts.denied(denied("10.200.1.2:53422", i));
        }
        let text = received(&collector);
        assert!(text.contains("\"count\":3"), "{text}");
        assert!(text.contains("\"qname\":\"x2.tunnel.example\""), "{text}");
        alerts.close();
        assert_eq!(alerts.stats().notifications.load(Ordering::Relaxed), 1);
        // Three distinct names, each alerted in full.
        assert_eq!(alerts.stats().stderr_alerts.load(Ordering::Relaxed), 3);
        let sinks = alerts.delivery_stats();
        assert_eq!(sinks.len(), 1);
        assert_eq!(sinks[0].0, "syslog");
        assert_eq!(sinks[0].1.sent.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_flood_of_stripped_answers_prints_one_alert_and_one_summary() {
        let text = printed(|alerts| {
            for i in 0..500 {
                alerts.stripped(stripped(&format!("m{i}.cdn.test.")));
            }
        });
        assert_eq!(
            text.matches("SPECIAL-PURPOSE ADDRESS STRIPPED").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("Stripped: 169.254.169.254 (link-local (cloud metadata))"),
            "{text}"
        );
        assert!(
            text.contains("... and 499 more answers to 10.200.1.2"),
            "{text}"
        );
    }

    #[test]
    fn a_port_scan_prints_one_connection_alert_and_one_summary() {
        let resolved =
            "resolved: sketchy-mirror.example.com, handed to agent a outside the allowlist";
        let text = printed(|alerts| {
            for port in 1..=1000u16 {
                alerts.egress(egress("104.28.14.6", port, resolved, Action::Logged));
            }
        });
        assert_eq!(
            text.matches("UNEXPECTED OUTBOUND CONNECTION").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("Destination: 104.28.14.6:1/tcp (resolved: sketchy-mirror.example.com, handed to agent a outside the allowlist)\nAction: LOGGED (Block policy not enabled)\nRule Matched: NONE - Connection not in allow-list.\n"),
            "{text}"
        );
        assert!(
            text.contains("[!] ... and 999 more connection attempts from 10.200.2.2 (agent a) outside the allowlist"),
            "{text}"
        );
    }

    #[test]
    fn connection_attempts_past_the_threshold_go_to_the_sinks() {
        let (collector, alerts) = with_syslog(2);
        for port in [22, 23, 25] {
            alerts.egress(egress(
                "203.0.113.9",
                port,
                "never handed out",
                Action::Blocked,
            ));
        }
        let text = received(&collector);
        alerts.close();
        assert!(
            text.contains(
                " unexpected_connections - {\"event\":\"allowdns.unexpected_connections\""
            ),
            "{text}"
        );
        assert!(text.contains("\"count\":3"), "{text}");
        assert!(text.contains("\"names\":[]"), "{text}");
        assert!(
            text.contains("agent a made 3 connection attempt(s) outside the allowlist within 300 s (threshold: more than 2) from 10.200.2.2: 203.0.113.9:22/tcp, 203.0.113.9:23/tcp, 203.0.113.9:25/tcp."),
            "{text}"
        );
    }

    #[test]
    fn memory_is_bounded_under_many_clients() {
        let text = printed(|alerts| {
            for i in 0..(MAX_CLIENTS * 3) {
                let ip = format!("10.{}.{}.{}:1", i >> 16 & 255, i >> 8 & 255, i & 255);
                alerts.denied(denied(&ip, i));
            }
            let denials = &alerts.shared.state.lock().unwrap().denials;
            assert!(denials.clients.len() <= MAX_CLIENTS);
            assert!(denials.pending.len() <= MAX_PENDING);
        });
        assert!(
            text.contains("more denied lookups from other clients"),
            "{text}"
        );
    }

    #[test]
    fn security_events_go_to_the_sinks_once_per_window() {
        let (collector, alerts) = with_syslog(100);
        let agent: Arc<str> = "a".into();
        let name = Name::from_ascii("x.cdn.test.").unwrap();
        for _ in 0..50 {
            alerts.exfil(Exfil {
                ts: SystemTime::UNIX_EPOCH,
                agent: &agent,
                client: "10.200.1.2:5300".parse().unwrap(),
                qname: &name,
                qtype: RecordType::TXT,
                mark: "qtype",
            });
            alerts.stripped(stripped("meta.cdn.test."));
        }
        let mut got = vec![received(&collector), received(&collector)];
        alerts.close();
        // Raised in one tick; their order on the wire is not promised.
        got.sort_by_key(|d| !d.contains("allowdns.exfiltration"));
        assert!(
            got[0].contains(" exfiltration - {\"event\":\"allowdns.exfiltration\""),
            "{got:?}"
        );
        assert!(got[0].contains("\"what\":[{\"what\":\"qtype\",\"count\":1}]"));
        assert!(
            got[1].contains(" stripped_addresses - {\"event\":\"allowdns.stripped_addresses\""),
            "{got:?}"
        );
        // 100 events, the denial threshold untouched: two notifications.
        assert_eq!(alerts.stats().notifications.load(Ordering::Relaxed), 2);
        assert_eq!(alerts.delivery_stats()[0].1.sent.load(Ordering::Relaxed), 2);
    }
}
