//! What attribution may cost. How many denials an agent may have
//! attributed per second, beyond those alerted in full: a token bucket per
//! agent, so one agent's flood cannot spend another's. A flood of denials
//! then costs a clock read and a lock per denial, not a socket lookup; what
//! the bucket refuses is recorded as `unknown (rate limited)`. And how much
//! /proc search time all lookups together may take a second ([`Budget`]).

use crate::sync::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Agents tracked; past this (agents come from the policies, so only a
/// misuse gets here) every bucket starts again full.
const MAX_AGENTS: usize = 256;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One token bucket per agent: `per_second` tokens a second,
/// holding at most one second's worth.
pub(super) struct Rate {
    per_second: u32,
    buckets: Mutex<HashMap<Box<str>, Bucket, foldhash::fast::RandomState>>,
}

impl Rate {
    pub(super) fn new(per_second: u32) -> Rate {
        Rate {
            per_second,
            buckets: Mutex::default(),
        }
    }

    /// Takes a token from `agent`'s bucket; false when it is empty.
    pub(super) fn take(&self, agent: &str, now: Instant) -> bool {
        if self.per_second == 0 {
            return false;
        }
        let full = f64::from(self.per_second);
        let mut buckets = lock(&self.buckets);
        if !buckets.contains_key(agent) {
            if buckets.len() >= MAX_AGENTS {
                buckets.clear();
            }
            let fresh = Bucket {
                tokens: full,
                at: now,
            };
            buckets.insert(agent.into(), fresh);
        }
        let Some(b) = buckets.get_mut(agent) else {
            return false;
        };
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * full).min(full);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The /proc search time allowed per second, over all threads. A search is
/// granted its time before it starts, so searches on several threads at
/// once cannot each take the whole second; what one took past its grant is
/// owed by the seconds that follow.
pub(super) struct Budget {
    per_lookup: Duration,
    per_second: Duration,
    /// (start of the current second, time spent or granted in it).
    spent: Mutex<(Instant, Duration)>,
}

impl Budget {
    pub(super) fn new(per_lookup: Duration, per_second: Duration, now: Instant) -> Budget {
        Budget {
            per_lookup,
            per_second,
            spent: Mutex::new((now, Duration::ZERO)),
        }
    }

    /// The time a search starting `now` may take; zero: none left.
    pub(super) fn grant(&self, now: Instant) -> Duration {
        let mut spent = lock(&self.spent);
        let elapsed = now.saturating_duration_since(spent.0);
        if elapsed >= Duration::from_secs(1) {
            let paid = self
                .per_second
                .saturating_mul(u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX));
            *spent = (now, spent.1.saturating_sub(paid));
        }
        let grant = self.per_lookup.min(self.per_second.saturating_sub(spent.1));
        spent.1 += grant;
        grant
    }

    /// A search granted `grant` took `took`: the rest given back, or the
    /// overrun owed.
    pub(super) fn settle(&self, grant: Duration, took: Duration) {
        let mut spent = lock(&self.spent);
        spent.1 = (spent.1 + took).saturating_sub(grant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_second_holds_its_rate_and_namespaces_do_not_share() {
        let rate = Rate::new(3);
        let t0 = Instant::now();
        let a = "a";
        let taken = (0..10).filter(|_| rate.take(a, t0)).count();
        assert_eq!(taken, 3);
        // Another agent has its own bucket.
        assert!(rate.take("b", t0));
        // A third of a second later: one more token, not a full bucket.
        let later = t0 + Duration::from_millis(340);
        assert!(rate.take(a, later));
        assert!(!rate.take(a, later));
        // Idle for long: full again, never more.
        let idle = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| rate.take(a, idle)).count(), 3);
    }

    #[test]
    fn searches_share_the_second_and_an_overrun_is_owed() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let budget = Budget::new(ms(60), ms(100), t0);
        // Two searches at once: the second gets what the first left.
        assert_eq!(budget.grant(t0), ms(60));
        assert_eq!(budget.grant(t0), ms(40));
        assert_eq!(budget.grant(t0), ms(0));
        // The first took 10 ms of its 60: the rest comes back.
        budget.settle(ms(60), ms(10));
        assert_eq!(budget.grant(t0), ms(50));
        // One that overran by far (a second's search on a 40 ms grant)
        // leaves the seconds after with nothing until it is paid off.
        budget.settle(ms(40), ms(1040));
        budget.settle(ms(50), ms(50));
        let later = |s| t0 + Duration::from_secs(s);
        assert_eq!(budget.grant(later(1)), ms(0));
        assert_eq!(budget.grant(later(11)), ms(60));
    }

    #[test]
    fn a_rate_of_zero_attributes_nothing_beyond_the_alerts() {
        let rate = Rate::new(0);
        assert!(!rate.take("a", Instant::now()));
    }
}
