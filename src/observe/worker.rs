//! A background thread for work kept off the query path (audit writing,
//! alert printing). It runs a pass every tick or when poked, and one last
//! pass, with `closing` set, when closed. Polling on a tick instead of being
//! woken per item keeps thread wake-ups off the hot path.
//!
//! The tick is short while passes find work and long while they do not:
//! a short pass delays a query that arrives meanwhile on the same CPU less
//! (the audit writer's 5 ms passes were the p99 of a pinned flood), and an
//! idle process still wakes rarely.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use crate::sync::lock;

/// How long a [`Worker`] waits between passes.
#[derive(Clone, Copy, Debug)]
pub struct Ticks {
    /// After a pass that found work.
    pub busy: Duration,
    /// After one that found none.
    pub idle: Duration,
}

impl Ticks {
    pub fn every(tick: Duration) -> Ticks {
        Ticks {
            busy: tick,
            idle: tick,
        }
    }
}

pub struct Worker {
    /// Set by [`Worker::close`]; the next pass is the last.
    closing: Arc<AtomicBool>,
    /// To wake the thread early without locking.
    thread: Thread,
    /// Taken and joined by the first close.
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    /// Starts thread `name`, calling `pass(closing)` every `tick` and when
    /// poked, or every `busy` after a pass that says it found work.
    pub fn start(
        name: &str,
        Ticks { busy, idle }: Ticks,
        mut pass: impl FnMut(bool) -> bool + Send + 'static,
    ) -> Worker {
        let closing = Arc::new(AtomicBool::new(false));
        let flag = closing.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                loop {
                    let last = flag.load(Ordering::Acquire);
                    let worked = pass(last);
                    if last {
                        return;
                    }
                    std::thread::park_timeout(if worked { busy } else { idle });
                }
            })
            .unwrap_or_else(|e| panic!("cannot start thread {name}: {e}"));
        Worker {
            closing,
            thread: handle.thread().clone(),
            handle: Mutex::new(Some(handle)),
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Runs a pass soon instead of at the next tick.
    pub fn poke(&self) {
        self.thread.unpark();
    }

    /// Runs the last pass and waits for it.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        let handle = lock(&self.handle).take();
        if let Some(handle) = handle {
            self.thread.unpark();
            let _ = handle.join();
        }
    }
}
