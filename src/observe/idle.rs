//! Idle clients must not starve the operator. Were the control socket and
//! the metrics endpoint to hold one of a few slots per connection from
//! accept on, 16 (or 8) clients that connect and say nothing would lock out
//! `allowdns status` and Prometheus for as long as they liked to reconnect.
//!
//! So a connection holds no slot while it waits for its request. Waiting
//! connections are bounded by count, not by slots: when one more arrives
//! than [`Waiting`] allows, the one that has waited longest is dropped. A
//! real client sends its request right after connecting, so it would have to
//! be outlived by that many newer idle connections within microseconds to
//! lose its turn. Only a request that has arrived takes a slot.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::sync::lock;

/// Connections waiting for their request, oldest first.
pub struct Waiting {
    queue: Mutex<VecDeque<(u64, CancellationToken)>>,
    next: AtomicU64,
    max: usize,
}

/// One waiting connection; dropping it (request read, or gone) leaves the queue.
pub struct Ticket {
    id: u64,
    evicted: CancellationToken,
    waiting: Arc<Waiting>,
}

impl Waiting {
    pub fn new(max: usize) -> Arc<Waiting> {
        Arc::new(Waiting {
            queue: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(0),
            max: max.max(1),
        })
    }

    /// Registers a new connection, dropping the longest-waiting one if
    /// there are now too many.
    pub fn enter(self: &Arc<Self>) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        let mut queue = lock(&self.queue);
        queue.push_back((id, evicted.clone()));
        while queue.len() > self.max {
            if let Some((_, oldest)) = queue.pop_front() {
                oldest.cancel();
            }
        }
        Ticket {
            id,
            evicted,
            waiting: self.clone(),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.lock().unwrap().len()
    }
}

impl Ticket {
    /// Resolves when a newer connection pushed this one out.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut queue = lock(&self.waiting.queue);
        if let Some(at) = queue.iter().position(|(id, _)| *id == self.id) {
            queue.remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_waiting_connection_makes_room() {
        let waiting = Waiting::new(2);
        let a = waiting.enter();
        let b = waiting.enter();
        let c = waiting.enter();
        assert!(a.evicted.is_cancelled());
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        drop(b);
        assert_eq!(waiting.len(), 1);
        let d = waiting.enter();
        assert!(!c.evicted.is_cancelled() && !d.evicted.is_cancelled());
        drop((a, c, d));
        assert_eq!(waiting.len(), 0);
    }
}
