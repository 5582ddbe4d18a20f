//! Alert delivery, end to end: the real binary, a real HTTP receiver on
//! 127.0.0.1 (written here on std's TcpListener), and a real Unix datagram
//! socket standing in for /dev/log.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::Value;

/// One request the receiver took.
#[derive(Clone, Debug)]
struct Post {
    request_line: String,
    headers: String,
    body: Value,
}

/// A minimal HTTP receiver: answers 200 to each POST and records it, or,
/// while `hang` is set, reads the request and never answers, or, for the
/// next `close_next` requests, reads the request and closes the connection.
struct Receiver {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
    /// Requests read but left unanswered.
    hung: Arc<AtomicUsize>,
    hang: Arc<AtomicBool>,
    /// Requests read, then closed on without an answer.
    closed: Arc<Mutex<Vec<Post>>>,
    close_next: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(addr: &str) -> Receiver {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let posts: Arc<Mutex<Vec<Post>>> = Arc::default();
        let hung = Arc::new(AtomicUsize::new(0));
        let hang = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let closed: Arc<Mutex<Vec<Post>>> = Arc::default();
        let close_next = Arc::new(AtomicUsize::new(0));
        let (p, h, hg, st) = (posts.clone(), hung.clone(), hang.clone(), stop.clone());
        let (c, cn) = (closed.clone(), close_next.clone());
        let thread = std::thread::spawn(move || {
            // Unanswered connections are kept open here.
            let mut held: Vec<TcpStream> = Vec::new();
            while !st.load(Ordering::Acquire) {
                let stream = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(e) => panic!("accept: {e}"),
                };
                let Some((post, mut stream)) = read_post(stream) else {
                    continue;
                };
                if cn
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok()
                {
                    c.lock().unwrap().push(post);
                    drop(stream);
                    continue;
                }
                if hg.load(Ordering::Acquire) {
                    h.fetch_add(1, Ordering::AcqRel);
                    held.push(stream);
                    continue;
                }
                p.lock().unwrap().push(post);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
            // Listener and held connections close here: the receiver is down.
        });
        Receiver {
            addr,
            posts,
            hung,
            hang,
            closed,
            close_next,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/allowdns/hook", self.addr)
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// Waits up to 20 s for at least `n` posts.
    fn wait_posts(&self, n: usize) -> Vec<Post> {
        wait_until(&format!("{n} POST(s) at {}", self.addr), || {
            self.posts().len() >= n
        });
        self.posts()
    }

    /// Stops accepting and closes the port.
    fn take_down(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.take_down();
    }
}

/// Reads one request: headers, then Content-Length bytes of JSON.
fn read_post(mut stream: TcpStream) -> Option<(Post, TcpStream)> {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8(got[..head_end].to_vec()).unwrap();
    let (request_line, headers) = head.split_once("\r\n").unwrap();
    let length: usize = headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("Content-Length");
    let mut body = got[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    Some((
        Post {
            request_line: request_line.to_string(),
            headers: headers.to_string(),
            body,
        },
        stream,
    ))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A config with the test policy, an audit log, and `notify` as given.
fn config(dir: &TempDir, notify: &str) -> String {
    let text = format!(
        "policies: [{:?}]\naudit_log: {:?}\nalerts:\n  notify:\n{notify}",
        data("policy.yaml").to_str().unwrap(),
        dir.0.join("audit.jsonl").to_str().unwrap(),
    );
    dir.write("allowdns.yaml", &text)
        .to_str()
        .unwrap()
        .to_string()
}

fn serve(config: &str) -> Allowdns {
    Allowdns::serve(&["--config", config, "--upstream", "none"])
}

/// A denied lookup, answered NXDOMAIN and not slowed by delivery.
fn deny(dns: &Allowdns, name: &str, rtype: RecordType) {
    let started = Instant::now();
    assert_eq!(
        rcode(dns.udp, name, rtype),
        ResponseCode::NXDomain,
        "{name}"
    );
    let took = started.elapsed();
    // Generous: an NXDOMAIN takes well under a millisecond; delivery never
    // runs on this path, whatever the receiver does.
    assert!(
        took < Duration::from_secs(3),
        "{name} took {took:?}:\n{}",
        dns.stderr()
    );
}

fn audit(dir: &TempDir) -> Vec<Value> {
    read_audit(&dir.0.join("audit.jsonl"))
}

#[test]
fn a_third_denial_in_the_window_posts_exactly_one_notification() {
    let rx = Receiver::start("127.0.0.1:0");
    let dir = TempDir::new("delivery-threshold");
    let cfg = config(
        &dir,
        &format!(
            "    threshold: {{ count: 2, window_secs: 300 }}\n    webhook: {{ url: \"{}\", timeout_ms: 2000 }}\n",
            rx.url()
        ),
    );
    let dns = serve(&cfg);
    let pid = dns.pid();
    deny(&dns, "sketchy-mirror.example.com", RecordType::A);
    deny(&dns, "sketchy-mirror.example.com", RecordType::A);
    // The alerts thread runs every 500 ms; two is not more than two.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(rx.posts().is_empty(), "{:?}", rx.posts());
    deny(&dns, "c2.exfil.example", RecordType::TXT);
    let posts = rx.wait_posts(1);
    // Within the window, more denials raise nothing more.
    deny(&dns, "later.example", RecordType::A);
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    let posts_after = rx.posts();
    assert_eq!(posts_after.len(), 1, "{posts_after:?}\n{stderr}");

    let post = &posts[0];
    assert_eq!(post.request_line, "POST /allowdns/hook HTTP/1.1");
    assert!(
        post.headers
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{}",
        post.headers
    );
    let b = &post.body;
    assert_eq!(b["event"], "allowdns.denied_lookups");
    assert_eq!(b["agent"], "test_agent");
    assert_eq!(b["count"], 3, "a crossing at 2 would have counted 2: {b}");
    assert_eq!(b["threshold"], 2);
    assert_eq!(b["window_secs"], 300);
    assert_eq!(b["repeat"], false);
    assert_eq!(b["dropped"], 0);
    // HOST-PID-STARTMS-SEQ: the first notification of this process.
    let id = b["id"].as_str().unwrap();
    assert!(
        id.contains(&format!("-{pid}-")) && id.ends_with("-1"),
        "{id}"
    );
    assert_eq!(b["clients"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(
        b["names"],
        serde_json::json!([
            {"qname": "sketchy-mirror.example.com", "qtype": "A", "count": 2},
            {"qname": "c2.exfil.example", "qtype": "TXT", "count": 1},
        ])
    );
    for ts in ["first_ts", "last_ts"] {
        let t = b[ts].as_str().unwrap();
        assert!(t.ends_with('Z') && t.contains('T'), "{ts}: {t}");
    }
    let text = b["text"].as_str().unwrap();
    assert_has(
        text,
        "agent test_agent made 3 denied DNS lookups within 300 s",
    );
    assert_has(
        text,
        "sketchy-mirror.example.com A x2, c2.exfil.example TXT",
    );
    // The stderr alerts are unchanged, and the delivery reports its counts.
    assert_has(&stderr, "UNEXPECTED DNS LOOKUP");
    assert_has(&stderr, "1 sent, 0 failed attempts, 0 given up, 0 dropped");
    assert_eq!(audit(&dir).len(), 4);
}

#[test]
fn a_receiver_going_down_slows_no_query_loses_no_record_and_gets_the_retry() {
    let mut rx = Receiver::start("127.0.0.1:0");
    let addr = rx.addr;
    let dir = TempDir::new("delivery-down");
    // Every denial crosses (more than 0); then one follow-up per 2 s window.
    let cfg = config(
        &dir,
        &format!(
            "    threshold: {{ count: 0, window_secs: 2 }}\n    webhook: {{ url: \"{}\", timeout_ms: 500 }}\n    retry: {{ max_attempts: 100, max_backoff_secs: 1 }}\n",
            rx.url()
        ),
    );
    let dns = serve(&cfg);
    deny(&dns, "first.example", RecordType::A);
    assert_eq!(rx.wait_posts(1)[0].body["count"], 1);

    rx.take_down();
    for i in 0..40 {
        deny(&dns, &format!("d{i}.exfil.example"), RecordType::TXT);
    }
    wait_until("a failed delivery attempt on stderr", || {
        dns.stderr().contains("attempt 1 failed")
    });

    // Back on the same port: the held notification is retried there.
    let rx = Receiver::start(&addr.to_string());
    wait_until("the 40 denials to be notified", || {
        rx.posts()
            .iter()
            .map(|p| p.body["count"].as_u64().unwrap())
            .sum::<u64>()
            == 40
    });
    let posts = rx.posts();
    assert!(posts.iter().all(|p| p.body["repeat"] == true), "{posts:?}");
    assert!(posts.iter().all(|p| p.body["dropped"] == 0), "{posts:?}");
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("delivered again after"), "{stderr}");

    // The audit log has every lookup, delivery trouble or not.
    let records = audit(&dir);
    assert_eq!(records.len(), 41);
    assert!(
        records
            .iter()
            .all(|r| r["decision"] == "deny" && r["rcode"] == "NXDOMAIN")
    );
    assert_eq!(records[40]["qname"], "d39.exfil.example");
}

#[test]
fn a_receiver_that_never_answers_times_out_and_dns_goes_on() {
    let rx = Receiver::start("127.0.0.1:0");
    rx.hang.store(true, Ordering::Release);
    let dir = TempDir::new("delivery-slow");
    let cfg = config(
        &dir,
        &format!(
            "    threshold: {{ count: 0, window_secs: 300 }}\n    webhook: {{ url: \"{}\", timeout_ms: 300 }}\n    retry: {{ max_attempts: 100, max_backoff_secs: 1 }}\n",
            rx.url()
        ),
    );
    let dns = serve(&cfg);
    deny(&dns, "slow.example", RecordType::A);
    wait_until("the POST to reach the receiver", || {
        rx.hung.load(Ordering::Acquire) >= 1
    });
    // While the POST hangs, queries are answered as ever.
    for i in 0..30 {
        deny(&dns, &format!("q{i}.example"), RecordType::AAAA);
    }
    wait_until("a timeout and a retry", || {
        dns.stderr().contains("timed out (timeout 300 ms)") && rx.hung.load(Ordering::Acquire) >= 2
    });
    // The receiver recovers: the retried notification arrives.
    rx.hang.store(false, Ordering::Release);
    let posts = rx.wait_posts(1);
    assert_eq!(posts[0].body["count"], 1);
    assert_eq!(posts[0].body["names"][0]["qname"], "slow.example");
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    assert_eq!(audit(&dir).len(), 31);
}

/// The latency bound that matters: no query may wait for delivery, even
/// with an attempt budget far above any query's.
#[test]
fn a_hung_webhook_with_a_long_timeout_delays_no_query() {
    let rx = Receiver::start("127.0.0.1:0");
    rx.hang.store(true, Ordering::Release);
    let dir = TempDir::new("delivery-latency");
    // Every denial crosses; a follow-up per 1 s window keeps the queue busy.
    let cfg = config(
        &dir,
        &format!(
            "    threshold: {{ count: 0, window_secs: 1 }}\n    webhook: {{ url: \"{}\", timeout_ms: 10000 }}\n",
            rx.url()
        ),
    );
    let dns = serve(&cfg);
    deny(&dns, "trigger.example", RecordType::A);
    wait_until("the POST to hang at the receiver", || {
        rx.hung.load(Ordering::Acquire) >= 1
    });
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let name = format!("q{i}.exfil.example");
        let started = Instant::now();
        assert_eq!(
            rcode(dns.udp, &name, RecordType::TXT),
            ResponseCode::NXDomain
        );
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(200),
            "{name} took {took:?} while a POST hung:\n{}",
            dns.stderr()
        );
        slowest = slowest.max(took);
    }
    // All 50 ran inside the first attempt's 10 s.
    assert!(
        !dns.stderr().contains("attempt 1 failed"),
        "slowest {slowest:?}\n{}",
        dns.stderr()
    );
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    assert_has(&stderr, "still busy at shutdown");
    let records = audit(&dir);
    assert_eq!(records.len(), 51, "{stderr}");
    assert_eq!(records[0]["qname"], "trigger.example");
    for (i, r) in records[1..].iter().enumerate() {
        assert_eq!(r["qname"], format!("q{i}.exfil.example"));
        assert_eq!(r["decision"], "deny");
    }
}

#[test]
fn a_receiver_dying_mid_request_gets_the_same_notification_again() {
    let rx = Receiver::start("127.0.0.1:0");
    // Reads the request, then closes without a status: the server may or
    // may not have acted on it, so the retry must be recognizable.
    rx.close_next.store(2, Ordering::Release);
    let dir = TempDir::new("delivery-mid-request");
    let cfg = config(
        &dir,
        &format!(
            "    threshold: {{ count: 0, window_secs: 300 }}\n    webhook: {{ url: \"{}\", timeout_ms: 2000 }}\n    retry: {{ max_attempts: 5, max_backoff_secs: 1 }}\n",
            rx.url()
        ),
    );
    let dns = serve(&cfg);
    deny(&dns, "half-sent.example", RecordType::A);
    let started = Instant::now();
    let posts = rx.wait_posts(1);
    // Two failures, backoff 1 s each.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let closed = rx.closed.lock().unwrap().clone();
    assert_eq!(closed.len(), 2, "{closed:?}");
    // Byte for byte the same notification, id included.
    for c in &closed {
        assert_eq!(c.body, posts[0].body);
    }
    assert!(posts[0].body["id"].as_str().unwrap().ends_with("-1"));
    assert_eq!(posts[0].body["names"][0]["qname"], "half-sent.example");
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    assert_has(&stderr, "closed the connection without a response");
    assert_has(&stderr, "delivered again after 2 failed attempt(s)");
    assert_has(&stderr, "1 sent, 2 failed attempts, 0 given up, 0 dropped");
    assert_eq!(rx.posts().len(), 1);
    assert_eq!(audit(&dir).len(), 1);
}

#[test]
fn syslog_gets_an_rfc3164_line_with_the_json_while_the_webhook_hangs() {
    let dir = TempDir::new("delivery-syslog");
    let socket = dir.0.join("log.sock");
    let log = UnixDatagram::bind(&socket).unwrap();
    log.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A webhook that connects (the kernel's backlog) but never answers: its
    // attempt takes the full 10 s timeout, and must not hold back syslog.
    let stuck = TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = config(
        &dir,
        &format!(
            "    threshold: {{ count: 0, window_secs: 300 }}\n    syslog: {{ socket: {:?}, facility: local3 }}\n    webhook: {{ url: \"http://{}/\", timeout_ms: 10000 }}\n",
            socket.to_str().unwrap(),
            stuck.local_addr().unwrap(),
        ),
    );
    let dns = serve(&cfg);
    deny(&dns, "syslog-me.example", RecordType::AAAA);
    let mut buf = vec![0u8; 65536];
    let n = log.recv(&mut buf).expect("a syslog datagram within 20 s");
    assert!(
        !dns.stderr().contains("attempt 1 failed"),
        "syslog waited for the webhook:\n{}",
        dns.stderr()
    );
    let line = String::from_utf8(buf[..n].to_vec()).unwrap();
    let pid = dns.pid();
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    // Shutdown does not wait out the stuck webhook.
    assert_has(
        &stderr,
        "still busy at shutdown; abandoned with 1 notification(s) undelivered",
    );
    drop(stuck);

    // <PRI>Mmm dd hh:mm:ss allowdns[PID]: {json}; local3.warning = 19*8+4.
    let rest = line
        .strip_prefix("<156>")
        .unwrap_or_else(|| panic!("{line}"));
    let (stamp, rest) = rest.split_at(15);
    let months = "JanFebMarAprMayJunJulAugSepOctNovDec";
    assert!(months.contains(&stamp[..3]), "{line}");
    assert_eq!(&stamp[3..4], " ", "{line}");
    assert!(
        stamp[4..6].trim_start().parse::<u8>().is_ok(),
        "day: {line}"
    );
    let time: Vec<&str> = stamp[7..].split(':').collect();
    assert!(
        time.len() == 3 && time.iter().all(|t| t.len() == 2),
        "{line}"
    );
    let json = rest
        .strip_prefix(&format!(" allowdns[{pid}]: "))
        .unwrap_or_else(|| panic!("{line}"));
    let body: Value = serde_json::from_str(json).unwrap();
    assert_eq!(body["event"], "allowdns.denied_lookups");
    assert_eq!(body["agent"], "test_agent");
    assert_eq!(body["count"], 1);
    assert_eq!(body["names"][0]["qname"], "syslog-me.example");
    assert_eq!(body["names"][0]["qtype"], "AAAA");
    assert!(!json.contains('\n'), "one line: {json}");
}

fn check(config: &Path) -> (i32, String) {
    let out = Command::new(bin())
        .args(["check", "--upstream", "none", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_rejects_bad_alert_settings_with_file_line_and_field() {
    let dir = TempDir::new("delivery-check");
    let policy = format!("policies: [{:?}]\n", data("policy.yaml").to_str().unwrap());

    let bad = dir.write(
        "bad.yaml",
        &format!(
            "{policy}alerts:\n  notify:\n    threshold: {{ count: 20000, window_secs: 300 }}\n    webhook: {{ url: \"https://hooks.slack.com/services/T0/B0/X\" }}\n    syslog: {{ address: \"127.0.0.1:514\", facility: security }}\n"
        ),
    );
    let (code, stderr) = check(&bad);
    assert_eq!(code, 1, "{stderr}");
    assert!(!stderr.contains("webhook"), "https is accepted: {stderr}");
    let file = bad.display();
    for expected in [
        format!("{file}:4: alerts.notify.threshold.count: 20000 is more than 10000"),
        format!("{file}:6: alerts.notify.syslog.facility: unknown facility 'security'"),
    ] {
        assert!(stderr.contains(&expected), "missing {expected}\n{stderr}");
    }

    let typo = dir.write(
        "typo.yaml",
        &format!(
            "{policy}alerts:\n  notify:\n    webhook: {{ url: \"http://127.0.0.1:9/\", timeout: 5 }}\n"
        ),
    );
    let (code, stderr) = check(&typo);
    assert_eq!(code, 1, "{stderr}");
    assert_has(&stderr, &format!("{}:4", typo.display()));
    assert_has(&stderr, "unknown field `timeout`");

    let shapes = dir.write(
        "shapes.yaml",
        &format!(
            "{policy}alerts:\n  notify:\n    webhook: {{ url: \"https://api.telegram.org/botX/sendMessage\", format: telegram }}\n"
        ),
    );
    let (code, stderr) = check(&shapes);
    assert_eq!(code, 1, "{stderr}");
    assert_has(
        &stderr,
        &format!(
            "{}:4: alerts.notify.webhook.chat_id: is required with format: telegram",
            shapes.display()
        ),
    );
    let teams = dir.write(
        "teams.yaml",
        &format!(
            "{policy}alerts:\n  notify:\n    webhook:\n      url: \"https://h.example/\"\n      format: teams\n      ca_file: no-such-ca.pem\n"
        ),
    );
    let (code, stderr) = check(&teams);
    assert_eq!(code, 1, "{stderr}");
    for expected in [
        format!(
            "{}:6: alerts.notify.webhook.format: unknown format 'teams' (expected json, slack or telegram)",
            teams.display()
        ),
        format!(
            "{}:7: alerts.notify.webhook.ca_file: {}",
            teams.display(),
            dir.0.join("no-such-ca.pem").display()
        ),
    ] {
        assert!(stderr.contains(&expected), "missing {expected}\n{stderr}");
    }
    let not_pem = dir.write("not-pem.pem", "hello\n");
    let bad_ca = dir.write(
        "bad-ca.yaml",
        &format!(
            "{policy}alerts:\n  notify:\n    webhook: {{ url: \"https://h.example/\", ca_file: {:?} }}\n",
            not_pem.to_str().unwrap()
        ),
    );
    let (code, stderr) = check(&bad_ca);
    assert_eq!(code, 1, "{stderr}");
    assert_has(&stderr, "no PEM certificate");

    let nowhere = dir.write(
        "nowhere.yaml",
        &format!("{policy}alerts:\n  notify:\n    threshold: {{ count: 1 }}\n"),
    );
    let (code, stderr) = check(&nowhere);
    assert_eq!(code, 1, "{stderr}");
    assert_has(
        &stderr,
        &format!("{}:3: alerts.notify: names no sink", nowhere.display()),
    );

    let both = dir.write(
        "both.yaml",
        &format!(
            "{policy}alerts:\n  notify:\n    syslog: {{ socket: /dev/log, address: \"10.0.0.9\" }}\n    webhook: {{ url: \"http://127.0.0.1:0/\" }}\n"
        ),
    );
    let (code, stderr) = check(&both);
    assert_eq!(code, 1, "{stderr}");
    assert_has(
        &stderr,
        "alerts.notify.syslog: give `socket` or `address`, not both",
    );
    assert_has(
        &stderr,
        "alerts.notify.webhook.url: 'http://127.0.0.1:0/': port '0'",
    );

    // A good one loads; a webhook off this machine is worth a warning.
    let good = dir.write(
        "good.yaml",
        &format!(
            "{policy}alerts:\n  notify:\n    webhook: {{ url: \"http://wazuh.lan:8080/allowdns\" }}\n"
        ),
    );
    let (code, stderr) = check(&good);
    assert_eq!(code, 0, "{stderr}");
    assert_has(&stderr, "warning:");
    assert_has(&stderr, "unencrypted");
}

// --- Security events: stripped special-purpose addresses, exfiltration marks.

/// The value of one series, waiting up to 5 s for it to reach `at_least`
/// (counting happens after the reply is sent).
fn series(dns: &Allowdns, series: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = dns.scrape("/metrics");
        let n = text
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
            .parse()
            .unwrap();
        if n >= at_least || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A config whose notifications go to `rx`: denials only past 1000, so
/// every post here is a security event.
fn security_config(dir: &TempDir, policy: &str, rx: &Receiver, window_secs: u64) -> String {
    let policy = dir.write("p.yaml", policy);
    let text = format!(
        "policies: [{:?}]\naudit_log: {:?}\nalerts:\n  notify:\n    threshold: {{ count: 1000, window_secs: {window_secs} }}\n    webhook: {{ url: \"{}\", timeout_ms: 2000 }}\n",
        policy.to_str().unwrap(),
        dir.0.join("audit.jsonl").to_str().unwrap(),
        rx.url(),
    );
    dir.write("allowdns.yaml", &text)
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_stripped_special_purpose_address_is_notified_and_counted() {
    let rx = Receiver::start("127.0.0.1:0");
    let dir = TempDir::new("security-stripped");
    let zones = dir.0.join("zones");
    std::fs::create_dir(&zones).unwrap();
    std::fs::write(
        zones.join("corp.test.zone"),
        "$ORIGIN corp.test.\n$TTL 300\n@ IN SOA ns.corp.test. h.corp.test. 1 3600 600 86400 5\n\
         meta IN A 169.254.169.254\napi IN A 10.20.1.5\nother IN A 10.20.1.6\n",
    )
    .unwrap();
    let cfg = security_config(
        &dir,
        "agent_name: corp\nexpected_outbound:\n  - destination: \"*.corp.test\"\n  - destination: api.corp.test\n    private: [10.20.0.0/16]\n",
        &rx,
        300,
    );
    let dns = Allowdns::serve(&[
        "--config",
        &cfg,
        "--zones",
        zones.to_str().unwrap(),
        "--upstream",
        "none",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let counter = "allowdns_stripped_addresses_total{agent=\"corp\"}";
    // Positive control: the opted-in entry hands out its 10.x address,
    // raises nothing and counts nothing.
    let m = query(dns.udp, "api.corp.test", RecordType::A);
    assert_eq!(answers(&m)[0].2, "10.20.1.5");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(rx.posts().is_empty(), "{:?}", rx.posts());
    assert_eq!(series(&dns, counter, 0), 0);

    // The wildcard did not opt in: NODATA, one notification, counted.
    let m = query(dns.udp, "meta.corp.test", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty(), "{:?}", answers(&m));
    let posts = rx.wait_posts(1);
    // More within the window are counted, not posted one by one.
    for _ in 0..20 {
        assert!(
            query(dns.udp, "other.corp.test", RecordType::A)
                .answers
                .is_empty()
        );
    }
    assert_eq!(series(&dns, counter, 21), 21);
    std::thread::sleep(Duration::from_millis(1500));
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    assert_eq!(rx.posts().len(), 1, "{:?}\n{stderr}", rx.posts());

    let b = &posts[0].body;
    assert_eq!(b["event"], "allowdns.stripped_addresses", "{b}");
    assert_eq!(b["agent"], "corp");
    assert_eq!(b["count"], 1);
    assert_eq!(b["threshold"], 0);
    assert_eq!(b["window_secs"], 300);
    assert_eq!(b["clients"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(
        b["names"],
        serde_json::json!([{"qname": "meta.corp.test", "qtype": "A", "count": 1}])
    );
    assert_eq!(
        b["what"],
        serde_json::json!([{"what": "169.254.169.254 (link-local (cloud metadata))", "count": 1}])
    );
    let text = b["text"].as_str().unwrap();
    assert_has(
        text,
        "agent corp got 1 answer(s) stripped of special-purpose addresses",
    );
    // The stderr alert is still there.
    assert_has(&stderr, "SPECIAL-PURPOSE ADDRESS STRIPPED");
}

#[test]
fn exfiltration_marks_are_notified_per_window_and_counted() {
    let dir = TempDir::new("security-exfil");
    let zone = dir.write(
        "cdn.test.zone",
        "$ORIGIN cdn.test.\n$TTL 0\n@ IN SOA ns.cdn.test. h.cdn.test. 1 3600 600 86400 0\n\
         @ IN NS ns.cdn.test.\nns IN A 192.0.2.53\n* IN A 192.0.2.80\n* IN TXT \"tunnel-reply\"\n",
    );
    let up = Upstream::start("127.0.0.36", 0, &[zone]);
    let rx = Receiver::start("127.0.0.1:0");
    let cfg = security_config(
        &dir,
        "agent_name: a\nexpected_outbound:\n  - destination: \"*.cdn.test\"\nexfil:\n  soft_bytes: 1024\n  hard_bytes: 2048\n  cooldown_secs: 600\n",
        &rx,
        2,
    );
    let upstream = up.addr.to_string();
    let dns = Allowdns::serve(&[
        "--config",
        &cfg,
        "--upstream",
        &upstream,
        "--metrics",
        "127.0.0.1:0",
    ]);
    let counter = |mark: &str| format!("allowdns_exfil_total{{agent=\"a\",mark=\"{mark}\"}}");
    // Positive control: an ordinary name under the wildcard raises nothing.
    assert_rcode(dns.udp, "www.cdn.test A", ResponseCode::NoError);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(rx.posts().is_empty(), "{:?}", rx.posts());
    for mark in ["soft", "budget", "qtype", "tunnel"] {
        assert_eq!(series(&dns, &counter(mark), 0), 0, "{mark}");
    }

    // A tunnel: 60-character labels until the hard limit refuses them.
    let mut refused = 0;
    for i in 0..300 {
        let label = format!("{i:x}{}", "q0r9s8t7u6v5w4x3y2z1".repeat(3))[..60].to_string();
        match rcode(dns.udp, &format!("{label}.t.cdn.test"), RecordType::A) {
            ResponseCode::NoError => {}
            ResponseCode::Refused => refused += 1,
            other => panic!("{label}: {other}"),
        }
    }
    assert!(refused > 100, "{refused} refused");
    // A query type the wildcard does not answer.
    assert_rcode(dns.udp, "x.cdn.test TXT", ResponseCode::Refused);
    // The crossing, then one follow-up when the 2 s window closes.
    let posts = rx.wait_posts(2);
    let audit = audit(&dir);
    let marked = |mark: &str| audit.iter().filter(|l| l["exfil"] == mark).count() as u64;
    assert_eq!(marked("budget"), refused);
    for mark in ["soft", "budget", "qtype", "tunnel"] {
        assert_eq!(
            series(&dns, &counter(mark), marked(mark)),
            marked(mark),
            "{mark}"
        );
    }
    assert!(marked("soft") > 0 && marked("qtype") == 1);
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    let all = rx.posts();
    // Hundreds of marked questions, a handful of notifications.
    assert!(all.len() <= 4, "{} posts for {refused} refusals", all.len());
    let first = &posts[0].body;
    assert_eq!(first["event"], "allowdns.exfiltration", "{first}");
    assert_eq!(first["agent"], "a");
    assert_eq!(first["repeat"], false);
    assert_eq!(first["count"], 1);
    assert_eq!(first["clients"], serde_json::json!(["127.0.0.1"]));
    // 60-character data labels are shaped like a tunnel's: flagged before
    // the soft limit is reached.
    assert_eq!(
        first["what"],
        serde_json::json!([{"what": "tunnel", "count": 1}])
    );
    // The follow-ups carry the refusals with their names and counts.
    let counted = |mark: &str| -> u64 {
        all.iter()
            .flat_map(|p| p.body["what"].as_array().cloned().unwrap_or_default())
            .filter(|w| w["what"] == mark)
            .map(|w| w["count"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(counted("budget"), refused, "{all:?}");
    assert_eq!(counted("qtype"), 1, "{all:?}");
    assert!(
        all.iter()
            .all(|p| p.body["event"] == "allowdns.exfiltration")
    );
    let follow = &all[1].body;
    assert_eq!(follow["repeat"], true);
    assert!(
        follow["text"]
            .as_str()
            .unwrap()
            .contains("marked by the exfiltration budget"),
        "{follow}"
    );
    // The stderr lines are unchanged.
    assert_has(&stderr, "EXFILTRATION BUDGET EXCEEDED");
}

// --- https: a local TLS receiver whose CA and certificate the test makes.

/// A CA and a certificate for 127.0.0.1 and localhost that it signed.
struct TestPki {
    ca_pem: String,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: Vec<u8>,
}

fn test_pki(name: &str) -> TestPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    TestPki {
        ca_pem: ca.pem(),
        cert: cert.der().clone(),
        key: key.serialize_der(),
    }
}

/// An https receiver: answers 200 to each POST and records it, or, while
/// `hang` is set, reads the request and never answers. Counts handshakes
/// that failed (a client that refused the certificate).
struct TlsReceiver {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<Value>>>,
    hang: Arc<AtomicBool>,
    hung: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TlsReceiver {
    fn start(pki: &TestPki) -> TlsReceiver {
        // The provider from rustls's features: ring, as the client's.
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![pki.cert.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(pki.key.clone().into()),
            )
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let posts: Arc<Mutex<Vec<Value>>> = Arc::default();
        let hang = Arc::new(AtomicBool::new(false));
        let hung = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, hg, h, r, st) = (
            posts.clone(),
            hang.clone(),
            hung.clone(),
            refused.clone(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !st.load(Ordering::Acquire) {
                let tcp = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(e) => panic!("accept: {e}"),
                };
                tcp.set_nonblocking(false).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                // The request head, then Content-Length bytes of body.
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let body = loop {
                    match tls.read(&mut buf) {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())
                        .unwrap_or(0);
                    if got.len() >= end + 4 + length {
                        break Some(got[end + 4..end + 4 + length].to_vec());
                    }
                };
                let Some(body) = body else {
                    if !tls.conn.is_handshaking() {
                        continue;
                    }
                    r.fetch_add(1, Ordering::AcqRel);
                    continue;
                };
                if hg.load(Ordering::Acquire) {
                    h.fetch_add(1, Ordering::AcqRel);
                    held.push(tls);
                    continue;
                }
                p.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        TlsReceiver {
            addr,
            posts,
            hang,
            hung,
            refused,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("https://{}/hook", self.addr)
    }

    fn posts(&self) -> Vec<Value> {
        self.posts.lock().unwrap().clone()
    }
}

impl Drop for TlsReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A config that notifies `url` on every denial; `extra` is added to the webhook.
fn https_config(dir: &TempDir, url: &str, extra: &str) -> String {
    config(
        dir,
        &format!(
            "    threshold: {{ count: 0, window_secs: 300 }}\n    webhook: {{ url: \"{url}\"{extra} }}\n    retry: {{ max_attempts: 100, max_backoff_secs: 1 }}\n"
        ),
    )
}

#[test]
fn https_webhook_trusts_its_ca_file_refuses_any_other_and_survives_a_hang() {
    let pki = test_pki("allowdns test CA");
    let rx = TlsReceiver::start(&pki);
    let dir = TempDir::new("delivery-https");
    let ca = dir.write("ca.pem", &pki.ca_pem);

    // Positive control first: the receiver's own CA as ca_file delivers, over TLS.
    let cfg = https_config(
        &dir,
        &rx.url(),
        &format!(", ca_file: {:?}", ca.to_str().unwrap()),
    );
    let (code, stderr) = check(Path::new(&cfg));
    assert_eq!(code, 0, "check refuses an https webhook: {stderr}");
    assert_lacks(&stderr, "unencrypted");
    let dns = serve(&cfg);
    deny(&dns, "over-tls.example", RecordType::A);
    wait_until("a POST over TLS", || !rx.posts().is_empty());
    assert_eq!(rx.posts()[0]["names"][0]["qname"], "over-tls.example");
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    assert_eq!(rx.refused.load(Ordering::Acquire), 0);

    // Another CA, and the system store (which has never seen the test CA):
    // the certificate is refused, the log says why, nothing is posted.
    let other = test_pki("some other CA");
    let other_ca = dir.write("other.pem", &other.ca_pem);
    for extra in [
        format!(", ca_file: {:?}", other_ca.to_str().unwrap()),
        String::new(),
    ] {
        let wrong = TempDir::new("delivery-https-wrong");
        let dns = serve(&https_config(&wrong, &rx.url(), &extra));
        let before = rx.refused.load(Ordering::Acquire);
        deny(&dns, "wrong-ca.example", RecordType::A);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(dns.stderr().contains("TLS refused") && dns.stderr().contains("UnknownIssuer")) {
            assert!(
                Instant::now() < deadline,
                "{extra}: no refusal in the log:\n{}",
                dns.stderr()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        assert!(rx.refused.load(Ordering::Acquire) > before);
        let (status, stderr) = dns.terminate();
        assert!(status.success(), "{stderr}");
        assert_eq!(rx.posts().len(), 1, "{extra}: posted anyway:\n{stderr}");
        assert_eq!(audit(&wrong).len(), 1);
    }

    // A receiver that takes the request and never answers: queries go on,
    // the attempt times out, and the retry arrives once it answers again.
    rx.hang.store(true, Ordering::Release);
    let hang_dir = TempDir::new("delivery-https-hang");
    let dns = serve(&https_config(
        &hang_dir,
        &rx.url(),
        &format!(", ca_file: {:?}, timeout_ms: 300", ca.to_str().unwrap()),
    ));
    deny(&dns, "hung-tls.example", RecordType::A);
    wait_until("the POST to hang", || rx.hung.load(Ordering::Acquire) >= 1);
    for i in 0..20 {
        deny(&dns, &format!("h{i}.example"), RecordType::AAAA);
    }
    wait_until("a timeout and a retry", || {
        dns.stderr().contains("timed out (timeout 300 ms)") && rx.hung.load(Ordering::Acquire) >= 2
    });
    rx.hang.store(false, Ordering::Release);
    wait_until("the retried POST", || rx.posts().len() >= 2);
    assert_eq!(rx.posts()[1]["names"][0]["qname"], "hung-tls.example");
    let (status, stderr) = dns.terminate();
    assert!(status.success(), "{stderr}");
    assert_eq!(audit(&hang_dir).len(), 21);
}

#[test]
fn slack_and_telegram_get_their_own_shapes() {
    for (extra, check_body) in [
        (
            ", format: slack",
            (|b: &Value| {
                let text = b["text"].as_str().unwrap();
                assert!(text.contains("shape.example"), "{b}");
                assert_eq!(b.as_object().unwrap().len(), 1, "only text: {b}");
            }) as fn(&Value),
        ),
        (", format: telegram, chat_id: \"-100123\"", |b: &Value| {
            assert_eq!(b["chat_id"], "-100123");
            assert!(b["text"].as_str().unwrap().contains("shape.example"), "{b}");
            assert!(b.get("names").is_none(), "{b}");
        }),
    ] {
        let rx = Receiver::start("127.0.0.1:0");
        let dir = TempDir::new("delivery-shape");
        // A proxy in the environment (a closed port) is not used.
        let cfg = https_config(&dir, &rx.url(), extra);
        let proxy = "http://127.0.0.1:9";
        let dns = Allowdns::serve_env(
            &[
                ("http_proxy", proxy),
                ("HTTP_PROXY", proxy),
                ("ALL_PROXY", proxy),
            ],
            &["--config", &cfg, "--upstream", "none"],
        );
        deny(&dns, "shape.example", RecordType::A);
        let posts = rx.wait_posts(1);
        check_body(&posts[0].body);
        let (status, stderr) = dns.terminate();
        assert!(status.success(), "{stderr}");
    }
}
