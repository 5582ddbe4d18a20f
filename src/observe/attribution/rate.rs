//! How many denials a client namespace may have attributed per second,
//! beyond those alerted in full: a token bucket per namespace. A flood of
//! denials then costs a clock read and a lock per denial, not a socket
//! lookup; what the bucket refuses is recorded as `unknown (rate limited)`.

use crate::sync::lock;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Namespaces tracked; past this (namespaces come from the policies, so
/// only a misuse gets here) every bucket starts again full.
const MAX_NAMESPACES: usize = 256;

struct Bucket {
    netns: Option<PathBuf>,
    tokens: f64,
    at: Instant,
}

/// One token bucket per client namespace: `per_second` tokens a second,
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

    /// Takes a token from `netns`'s bucket; false when it is empty.
    pub(super) fn take(&self, netns: Option<&Path>, now: Instant) -> bool {
        if self.per_second == 0 {
            return false;
        }
        let full = f64::from(self.per_second);
        let mut buckets = lock(&self.buckets);
        // A linear search: one entry per namespace the policies name.
        let i = match buckets.iter().position(|b| b.netns.as_deref() == netns) {
            Some(i) => i,
            None => {
                if buckets.len() >= MAX_NAMESPACES {
                    buckets.clear();
                }
                buckets.push(Bucket {
                    netns: netns.map(Path::to_path_buf),
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
        let a = Some(Path::new("/run/netns/a"));
        let taken = (0..10).filter(|_| rate.take(a, t0)).count();
        assert_eq!(taken, 3);
        // Another namespace has its own bucket.
        assert!(rate.take(Some(Path::new("/run/netns/b")), t0));
        assert!(rate.take(None, t0));
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
        assert!(!rate.take(None, Instant::now()));
    }
}
