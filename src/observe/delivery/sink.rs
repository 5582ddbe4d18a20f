//! Where notifications go: one bounded queue and one sending thread per
//! sink (webhook, syslog), retries with backoff, and the counters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use super::notification::{Notification, hostname};
use super::settings::{NotifySettings, RetryPolicy};
use super::syslog::{self, Syslog};
use super::threshold::Raised;
use super::webhook::Webhook;

use crate::sync::lock;

/// Notifications a sink holds while it cannot deliver; more are dropped and counted.
pub const QUEUE_CAPACITY: usize = 256;
/// A syslog send's budget: a full /dev/log queue blocks the sender.
const SYSLOG_TIMEOUT: Duration = Duration::from_secs(1);

/// Why one send failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// What went wrong, for the log line.
    pub message: String,
    /// Retrying cannot help (an HTTP 4xx): give up on this notification now.
    pub permanent: bool,
}

impl SendError {
    pub fn retry(message: String) -> SendError {
        SendError {
            message,
            permanent: false,
        }
    }

    pub fn permanent(message: String) -> SendError {
        SendError {
            message,
            permanent: true,
        }
    }
}

/// Counters per sink, for the log and a metrics endpoint.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Notifications delivered.
    pub sent: AtomicU64,
    /// Sends that failed (each retry counts).
    pub failed_attempts: AtomicU64,
    /// Notifications abandoned after `max_attempts` failed attempts at each,
    /// a permanent error, or the shutdown deadline.
    pub given_up: AtomicU64,
    /// Notifications never queued because the queue was full.
    pub dropped: AtomicU64,
}

impl DeliveryStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn summary(&self) -> String {
        format!(
            "{} sent, {} failed attempts, {} given up, {} dropped",
            self.sent.load(Ordering::Relaxed),
            self.failed_attempts.load(Ordering::Relaxed),
            self.given_up.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

/// How a sink sends one body.
enum Transport {
    Webhook(Webhook),
    Syslog(Syslog),
}

impl Transport {
    /// Sends one notification, `lost` the count reported in it.
    fn send(&mut self, n: &Notification, lost: u64, deadline: Instant) -> Result<(), SendError> {
        match self {
            Transport::Webhook(w) => {
                let body = w.render(n, lost);
                w.post(&body, deadline)
            }
            Transport::Syslog(s) => s.send(n.kind.msg_id(), &n.body(lost), deadline),
        }
    }
}

/// A sink's queue, shared by the submitting and sending threads.
#[derive(Default)]
struct Queue {
    items: VecDeque<Arc<Notification>>,
    /// Dropped on a full queue since the sender last looked.
    overflowed: u64,
    /// Set by close: deliver what is queued until then, then stop.
    closing: Option<Instant>,
}

struct SinkShared {
    /// "webhook" or "syslog": the sink's kind, for metrics labels.
    kind: &'static str,
    /// Where it sends, for log lines.
    target: String,
    queue: Mutex<Queue>,
    /// Signals a new item or closing to the sending thread.
    wake: Condvar,
    stats: Arc<DeliveryStats>,
}

impl SinkShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        lock(&self.queue)
    }
}

struct Sink {
    shared: Arc<SinkShared>,
    /// Disconnected when the sending thread exits; lets close wait with a deadline.
    done: Mutex<Option<mpsc::Receiver<()>>>,
}

/// The running sinks.
pub struct Delivery {
    host: Option<String>,
    /// `HOST-PID-STARTMS`: ids stay unique across restarts, even as PID 1 in
    /// a container.
    id_prefix: String,
    /// Notifications submitted so far; the last part of the id.
    submitted: AtomicU64,
    sinks: Vec<Sink>,
}

impl Delivery {
    /// Starts one thread per configured sink.
    pub fn start(settings: &NotifySettings) -> Delivery {
        let host = hostname();
        let mut sinks = Vec::new();
        if let Some(w) = &settings.webhook {
            let transport = Transport::Webhook(Webhook::new(
                w.url.clone(),
                w.timeout,
                w.shape.clone(),
                &w.trust,
            ));
            sinks.push(Sink::start(
                "webhook",
                w.url.to_string(),
                transport,
                settings.retry,
            ));
        }
        if let Some(s) = &settings.syslog {
            let target = format!(
                "{} ({:?}, facility {})",
                s.target,
                s.format,
                syslog::facility_name(s.facility)
            );
            let transport = Transport::Syslog(Syslog::new(s.clone(), host.clone(), SYSLOG_TIMEOUT));
            sinks.push(Sink::start("syslog", target, transport, settings.retry));
        }
        let described: Vec<String> = sinks
            .iter()
            .map(|s| format!("{} {}", s.shared.kind, s.shared.target))
            .collect();
        tracing::info!(
            "alert notifications: more than {} denied lookups from one agent in {} s go to {}",
            settings.threshold.count,
            settings.threshold.window.as_secs(),
            described.join(" and ")
        );
        let started_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Delivery {
            id_prefix: format!(
                "{}-{}-{started_ms}",
                host.as_deref().unwrap_or("allowdns"),
                std::process::id()
            ),
            host,
            submitted: AtomicU64::new(0),
            sinks,
        }
    }

    /// Queues a raised notification on every sink; never blocks on I/O.
    pub fn submit(&self, raised: Raised) {
        let seq = self.submitted.fetch_add(1, Ordering::Relaxed) + 1;
        let notification = Arc::new(Notification::new(
            format!("{}-{seq}", self.id_prefix),
            raised,
            self.host.clone(),
        ));
        for sink in &self.sinks {
            sink.push(notification.clone());
        }
    }

    /// Counters per sink kind.
    pub fn stats(&self) -> Vec<(&'static str, Arc<DeliveryStats>)> {
        self.sinks
            .iter()
            .map(|s| (s.shared.kind, s.shared.stats.clone()))
            .collect()
    }

    /// Delivers what is queued for at most `grace`, then returns; a sink
    /// still busy after that is abandoned (its thread dies with the process).
    pub fn close(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for sink in &self.sinks {
            sink.shared.lock().closing = Some(deadline);
            sink.shared.wake.notify_all();
        }
        for sink in &self.sinks {
            let done = lock(&sink.done).take();
            if let Some(done) = done {
                // A small margin past the deadline for the thread's last log line.
                let wait =
                    deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(200);
                if let Err(mpsc::RecvTimeoutError::Timeout) = done.recv_timeout(wait) {
                    tracing::error!(
                        "alert delivery: {} {}: still busy at shutdown; abandoned with {} notification(s) undelivered",
                        sink.shared.kind,
                        sink.shared.target,
                        sink.shared.lock().items.len()
                    );
                }
            }
            tracing::info!(
                "alert delivery: {} {}: {}",
                sink.shared.kind,
                sink.shared.target,
                sink.shared.stats.summary()
            );
        }
    }
}

impl Sink {
    fn start(kind: &'static str, target: String, transport: Transport, retry: RetryPolicy) -> Sink {
        let shared = Arc::new(SinkShared {
            kind,
            target,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stats: Arc::default(),
        });
        let (done_tx, done) = mpsc::channel::<()>();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("alert-{kind}"))
            .spawn(move || {
                let _done = done_tx;
                run(&thread_shared, transport, retry);
            })
            .unwrap_or_else(|e| panic!("cannot start thread alert-{kind}: {e}"));
        Sink {
            shared,
            done: Mutex::new(Some(done)),
        }
    }

    fn push(&self, notification: Arc<Notification>) {
        let mut queue = self.shared.lock();
        if queue.items.len() >= QUEUE_CAPACITY {
            queue.overflowed += 1;
            DeliveryStats::add(&self.shared.stats.dropped, 1);
            if queue.overflowed == 1 {
                tracing::warn!(
                    "alert delivery: {} {}: queue full ({QUEUE_CAPACITY} notifications waiting); \
                     dropping new ones until it drains (counted; the audit log has every lookup)",
                    self.shared.kind,
                    self.shared.target
                );
            }
            return;
        }
        queue.items.push_back(notification);
        drop(queue);
        self.shared.wake.notify_one();
    }
}

/// The sending thread: the queue's head is sent until it goes or is given up.
fn run(shared: &SinkShared, mut transport: Transport, retry: RetryPolicy) {
    let (kind, target, stats) = (shared.kind, &shared.target, &shared.stats);
    // Failures in a row, whichever notifications they were for: sets the backoff.
    let mut failures = 0u32;
    // Failed attempts at the head, and when the first of them happened.
    let mut attempts = 0u32;
    let mut head_failing_since = Instant::now();
    // Lost (dropped or given up) since the last delivery: reported in the next one.
    let mut lost = 0u64;
    loop {
        let (head, closing) = {
            let mut queue = shared.lock();
            while queue.items.is_empty() && queue.closing.is_none() {
                queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            lost += std::mem::take(&mut queue.overflowed);
            match queue.items.front() {
                Some(head) => (head.clone(), queue.closing),
                None => return,
            }
        };
        let now = Instant::now();
        if closing.is_some_and(|deadline| now >= deadline) {
            let left = shared.lock().items.len() as u64;
            DeliveryStats::add(&stats.given_up, left);
            tracing::error!(
                "alert delivery: {kind} {target}: {left} notification(s) not delivered by the shutdown deadline"
            );
            return;
        }
        // Far future unless closing: the transport's own timeout bounds an attempt.
        let deadline = closing.unwrap_or(now + Duration::from_secs(3600));
        let e = match transport.send(&head, lost, deadline) {
            Ok(()) => {
                shared.lock().items.pop_front();
                DeliveryStats::add(&stats.sent, 1);
                if failures > 0 {
                    tracing::info!(
                        "alert delivery: {kind} {target}: delivered again after {failures} failed attempt(s)"
                    );
                }
                if lost > 0 {
                    tracing::warn!(
                        "alert delivery: {kind} {target}: {lost} notification(s) were lost before this one (reported as \"dropped\")"
                    );
                }
                failures = 0;
                attempts = 0;
                lost = 0;
                continue;
            }
            Err(e) => e,
        };
        DeliveryStats::add(&stats.failed_attempts, 1);
        if attempts == 0 {
            head_failing_since = now;
        }
        attempts += 1;
        failures = failures.saturating_add(1);
        let delay = retry.backoff(failures);
        if e.permanent || attempts >= retry.max_attempts {
            // Only the head goes: the ones behind it get their own attempts,
            // at the backoff reached so far.
            let waiting = {
                let mut queue = shared.lock();
                queue.items.pop_front();
                queue.items.len()
            };
            DeliveryStats::add(&stats.given_up, 1);
            lost += 1;
            tracing::error!(
                "alert delivery: {kind} {target}: giving up on notification {} after {attempts} failed attempt(s) over {} s: {}; \
                 {waiting} more waiting, next attempt in {} s",
                head.id,
                head_failing_since.elapsed().as_secs(),
                e.message,
                delay.as_secs_f32()
            );
            attempts = 0;
        } else {
            tracing::warn!(
                "alert delivery: {kind} {target}: attempt {attempts} failed: {}; retrying in {} s",
                e.message,
                delay.as_secs_f32()
            );
        }
        pause(shared, delay, closing.is_some());
    }
}

/// Sleeps `delay`, but no later than the close deadline, and wakes at once
/// when close starts so the flush is not spent waiting.
fn pause(shared: &SinkShared, delay: Duration, was_closing: bool) {
    let until = Instant::now() + delay;
    let mut queue = shared.lock();
    loop {
        let now = Instant::now();
        let wake_at = queue.closing.map_or(until, |d| d.min(until));
        if now >= wake_at || (queue.closing.is_some() && !was_closing) {
            return;
        }
        queue = shared
            .wake
            .wait_timeout(queue, wake_at - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::super::notification::tests::{THRESHOLD, raised};
    use super::super::settings::WebhookSettings;
    use super::super::webhook::tests::accept_request;
    use super::super::webhook::{HttpUrl, Shape, Trust};
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn settings(url: String, max_attempts: u32) -> NotifySettings {
        NotifySettings {
            threshold: THRESHOLD,
            webhook: Some(WebhookSettings {
                url: HttpUrl::parse(&url).unwrap(),
                timeout: Duration::from_millis(500),
                shape: Shape::Json,
                trust: Trust::System,
            }),
            syslog: None,
            retry: RetryPolicy {
                max_attempts,
                max_backoff: Duration::from_secs(1),
            },
        }
    }

    /// A port nothing listens on.
    fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `close(grace)` returns in less than `bound`.
    fn assert_closes_within(delivery: &Delivery, grace: Duration, bound: Duration) {
        let started = Instant::now();
        delivery.close(grace);
        let took = started.elapsed();
        assert!(took < bound, "close({grace:?}) took {took:?}");
    }

    /// Accepts one POST, answers 200, and returns its body.
    fn receive_one(listener: &TcpListener) -> serde_json::Value {
        let (mut s, got) = accept_request(listener, b"}");
        s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .unwrap();
        let text = String::from_utf8(got).unwrap();
        let (_, body) = text.split_once("\r\n\r\n").unwrap();
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn a_dead_sink_gives_up_one_notification_at_a_time_and_reports_the_loss() {
        let port = closed_port();
        let delivery = Delivery::start(&settings(format!("http://127.0.0.1:{port}/"), 3));
        let stats = delivery.stats()[0].1.clone();
        for agent in ["a", "b", "c"] {
            delivery.submit(raised(agent));
        }
        // Three attempts (1 s apart) at "a"; "b" and "c" stay queued.
        wait_for("giving up on a", || {
            stats.given_up.load(Ordering::Relaxed) == 1
        });
        assert_eq!(stats.failed_attempts.load(Ordering::Relaxed), 3);
        // The receiver comes back within the backoff: "b" gets through and
        // says one was lost; "c" follows.
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let b = receive_one(&listener);
        assert_eq!(
            (&b["agent"], &b["dropped"]),
            (&"b".into(), &1.into()),
            "{b}"
        );
        let c = receive_one(&listener);
        assert_eq!(
            (&c["agent"], &c["dropped"]),
            (&"c".into(), &0.into()),
            "{c}"
        );
        // Ids: one per notification, in order of submission.
        let prefix = format!("-{}-", std::process::id());
        let (b_id, c_id) = (b["id"].as_str().unwrap(), c["id"].as_str().unwrap());
        assert!(b_id.contains(&prefix) && b_id.ends_with("-2"), "{b_id}");
        assert_eq!(c_id, format!("{}3", b_id.strip_suffix('2').unwrap()));
        wait_for("sent", || stats.sent.load(Ordering::Relaxed) == 2);
        assert_eq!(stats.given_up.load(Ordering::Relaxed), 1);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        delivery.close(Duration::from_secs(2));
    }

    #[test]
    fn after_giving_up_the_next_notification_waits_out_the_backoff() {
        let port = closed_port();
        let delivery = Delivery::start(&settings(format!("http://127.0.0.1:{port}/"), 1));
        let stats = delivery.stats()[0].1.clone();
        delivery.submit(raised("a"));
        delivery.submit(raised("b"));
        wait_for("giving up on a", || {
            stats.given_up.load(Ordering::Relaxed) == 1
        });
        let first = Instant::now();
        wait_for("giving up on b", || {
            stats.given_up.load(Ordering::Relaxed) == 2
        });
        // Not hammered: "b" was tried a backoff (1 s) after "a" failed.
        assert!(
            first.elapsed() >= Duration::from_millis(700),
            "{:?}",
            first.elapsed()
        );
        assert_eq!(stats.failed_attempts.load(Ordering::Relaxed), 2);
        assert_closes_within(&delivery, Duration::from_secs(2), Duration::from_secs(1));
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        // Accepted by the backlog, never answered: the head hangs until its timeout.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let delivery = Delivery::start(&settings(format!("http://127.0.0.1:{port}/"), 100));
        let stats = delivery.stats()[0].1.clone();
        for _ in 0..(QUEUE_CAPACITY + 10) {
            delivery.submit(raised("a"));
        }
        // The head stays queued until it is delivered.
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 10);
        assert_closes_within(
            &delivery,
            Duration::from_millis(300),
            Duration::from_secs(5),
        );
        wait_for("the rest given up", || {
            stats.given_up.load(Ordering::Relaxed) == QUEUE_CAPACITY as u64
        });
        assert_eq!(stats.sent.load(Ordering::Relaxed), 0);
        drop(listener);
    }
}
