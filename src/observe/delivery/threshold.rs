//! When to notify: more than `count` denied lookups from one agent within a
//! sliding window of `window`. A tracker counts one [`Kind`] of event; the
//! security events (stripped answers, exfiltration marks) use their own
//! trackers with a count of 0, so "denial" below reads "event" for them.
//!
//! Per agent, the last `count + 1` denials are kept; when the oldest of them
//! is still inside the window, the threshold is crossed and one notification
//! is raised, carrying exactly those denials. The agent then goes quiet for
//! one window: denials are only collected. When the quiet window ends, a
//! follow-up is raised if that window on its own had more than `count`
//! denials (the flood goes on), and the agent goes quiet again; otherwise it
//! goes back to watching. So a steady flood gives one notification per
//! window, never one per lookup.
//!
//! Everything takes the current [`Instant`] as an argument, so the logic is
//! tested with made-up time. Memory per agent is bounded by `count + 1`
//! lookups plus one [`Batch`]; agents come from the loaded policies, so a
//! querier cannot make more of them.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::rr::{Name, RecordType};

/// Most distinct (name, type) pairs a notification lists; the rest are counted.
pub const MAX_NAMES: usize = 20;
/// Most distinct client addresses a notification lists.
pub const MAX_CLIENTS: usize = 16;
/// Largest `count` accepted in the config: the tracker keeps `count + 1`
/// lookups per agent.
pub const MAX_COUNT: u32 = 10_000;

/// What a tracker counts; each kind is its own notification `event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Lookups of names no policy allows.
    Denied,
    /// Answers stripped of special-purpose addresses (docs/special-addresses.md).
    Stripped,
    /// Exfiltration budget marks and refusals (docs/exfiltration.md).
    Exfil,
    /// Connections outside the allowlist, blocked or (monitor mode) logged.
    Egress,
}

impl Kind {
    /// The `event` field of the JSON body.
    pub fn event(self) -> &'static str {
        match self {
            Kind::Denied => "allowdns.denied_lookups",
            Kind::Stripped => "allowdns.stripped_addresses",
            Kind::Exfil => "allowdns.exfiltration",
            Kind::Egress => "allowdns.unexpected_connections",
        }
    }

    /// The RFC 5424 MSGID: the event without its `allowdns.` prefix.
    pub fn msg_id(self) -> &'static str {
        let event = self.event();
        event.strip_prefix("allowdns.").unwrap_or(event)
    }
}

/// What happened to a lookup besides its name: listed in the notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// The exfiltration mark, as the audit log spells it (soft, budget, qtype).
    Mark(&'static str),
    /// A special-purpose address stripped from the answer.
    Address(IpAddr),
    /// A connection's destination: address, port (0: none), IP protocol.
    Destination(IpAddr, u16, u8),
}

impl std::fmt::Display for What {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            What::Mark(m) => f.write_str(m),
            What::Address(ip) => ip.fmt(f),
            What::Destination(ip, port, proto) => {
                let proto = match proto {
                    1 => "icmp".to_string(),
                    6 => "tcp".into(),
                    17 => "udp".into(),
                    58 => "icmpv6".into(),
                    n => format!("proto-{n}"),
                };
                match (port, ip) {
                    (0, _) => write!(f, "{ip}/{proto}"),
                    (_, IpAddr::V6(_)) => write!(f, "[{ip}]:{port}/{proto}"),
                    _ => write!(f, "{ip}:{port}/{proto}"),
                }
            }
        }
    }
}

/// The rule, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    /// Notify when MORE than this many denials fall in one window.
    pub count: u32,
    /// The sliding window, and the quiet time after a notification.
    pub window: Duration,
}

/// One denied lookup, as the tracker keeps it.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// Wall-clock time, for the notification's first/last timestamps.
    pub ts: SystemTime,
    /// The querier (port dropped: it changes with every lookup).
    pub client: IpAddr,
    pub qname: Name,
    pub qtype: RecordType,
    /// What happened besides the name; empty for a denial.
    pub what: Vec<What>,
}

/// What a notification reports about a run of denials.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Denials in the batch.
    pub count: u64,
    /// Timestamps of the first and last denial.
    pub first: Option<SystemTime>,
    pub last: Option<SystemTime>,
    /// Distinct clients, at most [`MAX_CLIENTS`], in order of first appearance.
    pub clients: Vec<IpAddr>,
    /// Distinct (name, type) with how often each was asked, at most [`MAX_NAMES`].
    pub names: Vec<(Name, RecordType, u64)>,
    /// Denials whose (name, type) did not fit in `names`.
    pub unlisted: u64,
    /// Distinct [`What`]s with how often each happened, at most [`MAX_NAMES`].
    pub what: Vec<(What, u64)>,
}

impl Batch {
    pub(crate) fn new() -> Batch {
        Batch {
            count: 0,
            first: None,
            last: None,
            clients: Vec::new(),
            names: Vec::new(),
            unlisted: 0,
            what: Vec::new(),
        }
    }

    /// Counts one denial; clones the name only when it joins the sample.
    pub(crate) fn add(&mut self, lookup: &Lookup) {
        self.count += 1;
        self.first.get_or_insert(lookup.ts);
        self.last = Some(lookup.ts);
        if self.clients.len() < MAX_CLIENTS && !self.clients.contains(&lookup.client) {
            self.clients.push(lookup.client);
        }
        // Name equality is case-insensitive, like DNS itself.
        let full = self.names.len() >= MAX_NAMES;
        match self
            .names
            .iter_mut()
            .find(|(n, t, _)| *t == lookup.qtype && *n == lookup.qname)
        {
            Some((_, _, times)) => *times += 1,
            None if full => self.unlisted += 1,
            None => self.names.push((lookup.qname.clone(), lookup.qtype, 1)),
        }
        for what in &lookup.what {
            let full = self.what.len() >= MAX_NAMES;
            match self.what.iter_mut().find(|(w, _)| w == what) {
                Some((_, times)) => *times += 1,
                None if full => {}
                None => self.what.push((*what, 1)),
            }
        }
    }
}

/// A notification that is due.
#[derive(Debug, Clone)]
pub struct Raised {
    /// What the tracker counted: names the notification's `event`.
    pub kind: Kind,
    /// The rule that raised it, reported in the notification.
    pub threshold: Threshold,
    pub agent: Arc<str>,
    pub batch: Batch,
    /// False for a crossing; true for a follow-up after a quiet window.
    pub repeat: bool,
}

enum Phase {
    /// Watching the recent denials for a crossing.
    Watching,
    /// Notified; collecting this window's denials until `until`.
    Quiet { until: Instant, batch: Batch },
}

struct Agent {
    /// The last `count + 1` denials with their monotonic time, oldest first.
    recent: VecDeque<(Instant, Lookup)>,
    phase: Phase,
}

/// Per-agent threshold state; lives under the alert mutex.
pub struct Thresholds {
    kind: Kind,
    threshold: Threshold,
    agents: HashMap<Arc<str>, Agent>,
    /// Raised but not yet taken by [`Thresholds::take_due`].
    due: Vec<Raised>,
}

impl Thresholds {
    pub fn new(threshold: Threshold) -> Thresholds {
        Thresholds::of(Kind::Denied, threshold)
    }

    /// A tracker for another kind of event.
    pub fn of(kind: Kind, threshold: Threshold) -> Thresholds {
        Thresholds {
            kind,
            threshold,
            agents: HashMap::new(),
            due: Vec::new(),
        }
    }

    pub fn threshold(&self) -> Threshold {
        self.threshold
    }

    /// Counts one denial at `now`. True when a notification became due (the
    /// caller wakes the delivering thread); the common case is false.
    pub fn record(&mut self, now: Instant, agent: &Arc<str>, lookup: Lookup) -> bool {
        let Threshold { count, window } = self.threshold;
        let keep = count as usize + 1;
        // Looked up by &str first: `entry` would touch the Arc's shared
        // refcount on every denial.
        if !self.agents.contains_key(&**agent) {
            self.agents.insert(
                agent.clone(),
                Agent {
                    // Grows to `keep` only if the agent keeps being denied.
                    recent: VecDeque::with_capacity(keep.min(64)),
                    phase: Phase::Watching,
                },
            );
        }
        let Some(state) = self.agents.get_mut(&**agent) else {
            return false;
        };
        let mut raised =
            end_quiet_if_over(state, agent, self.kind, self.threshold, now, &mut self.due);
        if let Phase::Quiet { batch, .. } = &mut state.phase {
            batch.add(&lookup);
        }
        if state.recent.len() == keep {
            state.recent.pop_front();
        }
        state.recent.push_back((now, lookup));
        if matches!(state.phase, Phase::Watching)
            && state.recent.len() == keep
            && state
                .recent
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) < window)
        {
            let mut batch = Batch::new();
            for (_, lookup) in &state.recent {
                batch.add(lookup);
            }
            self.due.push(Raised {
                kind: self.kind,
                threshold: self.threshold,
                agent: agent.clone(),
                batch,
                repeat: false,
            });
            state.phase = Phase::Quiet {
                until: now + window,
                batch: Batch::new(),
            };
            raised = true;
        }
        raised
    }

    /// Ends the quiet windows that are over and returns every notification due.
    pub fn take_due(&mut self, now: Instant) -> Vec<Raised> {
        for (agent, state) in &mut self.agents {
            end_quiet_if_over(state, agent, self.kind, self.threshold, now, &mut self.due);
        }
        std::mem::take(&mut self.due)
    }
}

/// At the end of a quiet window: a follow-up and another quiet window if the
/// window was over the threshold, else back to watching. True if raised.
fn end_quiet_if_over(
    state: &mut Agent,
    agent: &Arc<str>,
    kind: Kind,
    threshold: Threshold,
    now: Instant,
    due: &mut Vec<Raised>,
) -> bool {
    let Phase::Quiet { until, batch } = &mut state.phase else {
        return false;
    };
    if now < *until {
        return false;
    }
    if batch.count > u64::from(threshold.count) {
        due.push(Raised {
            kind,
            threshold,
            agent: agent.clone(),
            batch: std::mem::replace(batch, Batch::new()),
            repeat: true,
        });
        *until = now + threshold.window;
        true
    } else {
        state.phase = Phase::Watching;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    struct Clock {
        start: Instant,
        tracker: Thresholds,
        agent: Arc<str>,
    }

    impl Clock {
        fn new(count: u32, window_secs: u64) -> Clock {
            Clock {
                start: Instant::now(),
                tracker: Thresholds::new(Threshold {
                    count,
                    window: Duration::from_secs(window_secs),
                }),
                agent: "travel_agent_v1".into(),
            }
        }

        /// A denial of `name` at `secs` after the start; true if raised.
        fn deny(&mut self, secs: u64, name: &str) -> bool {
            let lookup = Lookup {
                ts: SystemTime::UNIX_EPOCH + SECOND * secs as u32,
                client: "10.200.1.2".parse().unwrap(),
                qname: Name::from_ascii(name).unwrap(),
                qtype: RecordType::A,
                what: Vec::new(),
            };
            let now = self.start + SECOND * secs as u32;
            let agent = self.agent.clone();
            self.tracker.record(now, &agent, lookup)
        }

        fn due(&mut self, secs: u64) -> Vec<Raised> {
            self.tracker.take_due(self.start + SECOND * secs as u32)
        }
    }

    #[test]
    fn more_than_count_within_the_window_raises_once() {
        let mut c = Clock::new(2, 300);
        assert!(!c.deny(0, "a.example"));
        assert!(!c.deny(10, "b.example"));
        assert!(c.due(20).is_empty(), "two is not more than two");
        assert!(c.deny(30, "c.example"));
        let due = c.due(31);
        assert_eq!(due.len(), 1);
        let b = &due[0].batch;
        assert!(!due[0].repeat);
        assert_eq!(b.count, 3);
        assert_eq!(b.first, Some(SystemTime::UNIX_EPOCH));
        assert_eq!(b.last, Some(SystemTime::UNIX_EPOCH + SECOND * 30));
        let names: Vec<String> = b.names.iter().map(|(n, _, _)| n.to_ascii()).collect();
        assert_eq!(names, ["a.example", "b.example", "c.example"]);
        assert_eq!(b.clients, vec!["10.200.1.2".parse::<IpAddr>().unwrap()]);
        // Quiet for the rest of the window, however many more come.
        for s in 40..60 {
            assert!(!c.deny(s, "d.example"));
        }
        assert!(c.due(100).is_empty());
    }

    #[test]
    fn the_window_slides() {
        let mut c = Clock::new(2, 300);
        c.deny(0, "a.example");
        c.deny(200, "b.example");
        // The first fell out of the window: 2 in (5, 305], not more than 2.
        assert!(!c.deny(305, "c.example"));
        // 3 in (10, 310].
        assert!(c.deny(310, "d.example"));
        let due = c.due(310);
        assert_eq!(due[0].batch.count, 3);
        assert_eq!(
            due[0].batch.first,
            Some(SystemTime::UNIX_EPOCH + SECOND * 200)
        );
    }

    #[test]
    fn a_flood_that_goes_on_gets_one_follow_up_per_window() {
        let mut c = Clock::new(2, 60);
        for s in 0..3 {
            c.deny(s, "x.tunnel.example");
        }
        assert_eq!(c.due(3).len(), 1);
        // Quiet until 62; 40 more denials of two names meanwhile.
        for s in 10..30 {
            c.deny(s, "x.tunnel.example");
            c.deny(s, "y.tunnel.example");
        }
        assert!(c.due(61).is_empty(), "still quiet");
        let due = c.due(62);
        assert_eq!(due.len(), 1);
        assert!(due[0].repeat);
        assert_eq!(due[0].batch.count, 40);
        assert_eq!(due[0].batch.names.len(), 2);
        assert_eq!(due[0].batch.names[0].2, 20);
        // The next window has only 2: back to watching, no follow-up.
        c.deny(70, "z.example");
        c.deny(80, "z.example");
        assert!(c.due(122).is_empty());
        // Watching again: a third within the window of the last two raises.
        assert!(c.deny(125, "z.example"));
        assert!(!c.due(125)[0].repeat);
    }

    #[test]
    fn a_denial_after_the_quiet_window_ends_it_without_a_tick() {
        let mut c = Clock::new(0, 10);
        assert!(c.deny(0, "a.example"), "more than 0 raises at once");
        assert!(!c.deny(5, "b.example"));
        // No tick ran at 10; the denial at 11 ends the quiet window itself.
        assert!(c.deny(11, "c.example"));
        let due = c.due(11);
        assert_eq!(due.len(), 2);
        assert_eq!(due[1].batch.count, 1, "only b fell in the quiet window");
        assert!(due[1].repeat);
    }

    #[test]
    fn samples_are_bounded_and_the_rest_counted() {
        let mut c = Clock::new(100, 60);
        for i in 0..101 {
            c.deny(0, &format!("n{i}.tunnel.example"));
        }
        let due = c.due(1);
        let b = &due[0].batch;
        assert_eq!(b.count, 101);
        assert_eq!(b.names.len(), MAX_NAMES);
        assert_eq!(b.unlisted, 101 - MAX_NAMES as u64);
    }

    #[test]
    fn agents_are_counted_separately() {
        let mut c = Clock::new(1, 60);
        c.deny(0, "a.example");
        c.agent = "other_agent".into();
        assert!(!c.deny(1, "a.example"));
        c.agent = "travel_agent_v1".into();
        assert!(c.deny(2, "a.example"));
        assert_eq!(&*c.due(2)[0].agent, "travel_agent_v1");
    }
}
