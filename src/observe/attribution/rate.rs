//! How many denials an agent may have attributed per second, beyond those
//! alerted in full: a token bucket per agent, so one agent's flood cannot
//! spend another's (agents without a namespace of their own share the
//! host's, and shared one bucket). A flood of
//! denials then costs a clock read and a lock per denial, not a socket
//! lookup; what the bucket refuses is recorded as `unknown (rate limited)`.

use crate::sync::lock;
use std::sync::Mutex;
use std::time::Instant;

/// Agents tracked; past this (agents come from the policies, so only a
/// misuse gets here) every bucket starts again full.
const MAX_AGENTS: usize = 256;

struct Bucket {
    agent: Box<str>,
    tokens: f64,
    at: Instant,
}

/// One token bucket per agent: `per_second` tokens a second,
/// holding at most one second's worth.
pub(super) struct Rate {
    per_second: u32,
    buckets: Mutex<Vec<Bucket>>,
}

impl Rate {
    pub(super) fn new(per_second: u32) -> Rate {
        Rate {
            per_second,
            buckets: Mutex::new(Vec::new()),
        }
    }

    /// Takes a token from `agent`'s bucket; false when it is empty.
    pub(super) fn take(&self, agent: &str, now: Instant) -> bool {
        if self.per_second == 0 {
            return false;
        }
        let full = f64::from(self.per_second);
        let mut buckets = lock(&self.buckets);
        // A linear search: one entry per agent.
        let i = match buckets.iter().position(|b| &*b.agent == agent) {
            Some(i) => i,
            None => {
                if buckets.len() >= MAX_AGENTS {
                    buckets.clear();
                }
                buckets.push(Bucket {
                    agent: agent.into(),
                    tokens: full,
                    at: now,
                });
                buckets.len() - 1
            }
        };
        let b = &mut buckets[i];
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
    fn a_rate_of_zero_attributes_nothing_beyond_the_alerts() {
        let rate = Rate::new(0);
        assert!(!rate.take("a", Instant::now()));
    }
}
