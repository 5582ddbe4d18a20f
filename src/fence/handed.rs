//! Which name each address was handed out for: a bounded reverse map fed
//! where the fence is fed, so a blocked or logged connection can say
//! "(resolved: NAME)" and which port the name's rule allows.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::policy::Ports;
use crate::sync::lock;

/// Addresses remembered; past this, expired entries go, then the oldest half.
pub const MAX_ADDRESSES: usize = 65_536;
/// Agents remembered per address: the newest win.
const PER_ADDRESS: usize = 4;
/// How long an address is remembered after its answer's TTL: clients cache
/// and reuse an address a while after the element times out.
const LINGER: Duration = Duration::from_secs(600);

/// One handing out of an address.
#[derive(Clone, Debug, PartialEq)]
pub struct Handed {
    /// The name asked for (the first owner name in the answer).
    pub name: String,
    pub agent: Arc<str>,
    /// The pattern that allowed it; learn and monitor mode's catch-all too.
    pub rule: Arc<str>,
    pub ports: Ports,
    /// Whether the address went into the sets (not so in monitor mode).
    pub fed: bool,
}

struct Entry {
    handed: Handed,
    until: Instant,
}

/// The reverse map; one per firewall, shared by all targets.
#[derive(Default)]
pub struct HandedOut {
    map: Mutex<HashMap<IpAddr, Vec<Entry>>>,
}

impl HandedOut {
    /// Records that `ip` was handed out for `handed` with `ttl` seconds to live.
    pub fn record(&self, ip: IpAddr, handed: &Handed, ttl: u32, now: Instant) {
        let until = now + Duration::from_secs(u64::from(ttl)) + LINGER;
        let mut map = lock(&self.map);
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, v| {
                v.retain(|e| e.until > now);
                !v.is_empty()
            });
            if map.len() >= MAX_ADDRESSES {
                // Still full of live entries: drop those ending soonest.
                let mut ends: Vec<Instant> = map
                    .values()
                    .map(|v| v.iter().map(|e| e.until).max().unwrap_or(now))
                    .collect();
                ends.sort_unstable();
                let cut = ends[ends.len() / 2];
                map.retain(|_, v| v.iter().any(|e| e.until > cut));
            }
        }
        let entries = map.entry(ip).or_default();
        match entries
            .iter_mut()
            .find(|e| e.handed.agent == handed.agent && e.handed.name == handed.name)
        {
            Some(e) => {
                e.until = e.until.max(until);
                e.handed.rule = handed.rule.clone();
                e.handed.ports = handed.ports.clone();
                e.handed.fed = handed.fed;
            }
            None => {
                if entries.len() >= PER_ADDRESS {
                    entries.remove(0);
                }
                entries.push(Entry {
                    handed: handed.clone(),
                    until,
                });
            }
        }
    }

    /// What `ip` was handed out for, to `agent` first, else to any agent;
    /// the newest handing out wins.
    pub fn lookup(&self, ip: IpAddr, agent: Option<&str>, now: Instant) -> Option<Handed> {
        let map = lock(&self.map);
        let live: Vec<&Entry> = map.get(&ip)?.iter().filter(|e| e.until > now).collect();
        live.iter()
            .rev()
            .find(|e| agent.is_some_and(|a| *e.handed.agent == *a))
            .or_else(|| live.last())
            .map(|e| e.handed.clone())
    }

    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handed(name: &str, agent: &str) -> Handed {
        Handed {
            name: name.into(),
            agent: agent.into(),
            rule: name.into(),
            ports: Ports::default(),
            fed: true,
        }
    }

    #[test]
    fn the_agent_s_own_handing_out_wins_and_memory_is_bounded() {
        let map = HandedOut::default();
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        map.record(ip, &handed("a.example", "a"), 60, now);
        map.record(ip, &handed("b.example", "b"), 60, now);
        assert_eq!(map.lookup(ip, Some("a"), now).unwrap().name, "a.example");
        assert_eq!(map.lookup(ip, Some("c"), now).unwrap().name, "b.example");
        let later = now + Duration::from_secs(60) + LINGER + Duration::from_secs(1);
        assert!(map.lookup(ip, Some("a"), later).is_none());
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            map.record(IpAddr::from(i.to_be_bytes()), &handed("x", "a"), 60, now);
        }
        assert!(map.len() <= MAX_ADDRESSES);
    }
}
