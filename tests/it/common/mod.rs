//! Test harness: real parts only.
//! - [`Upstream`]: a hickory authoritative server on 127.0.0.x that records
//!   every question it receives;
//! - [`Allowdns`]: the real binary on port 0, read up to its "listening on"
//!   line, killed on drop;
//! - [`query`]/[`dig`]: real DNS clients (hickory-proto over UDP/TCP, and dig).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{LowerName, Name, RecordType};
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};

/// Questions the upstream received, as ("name" lowercased without dot, type).
pub type Log = Arc<Mutex<Vec<(String, RecordType)>>>;
/// Names (lowercased without dot) the upstream answers only after a delay.
pub type Delays = Arc<Mutex<std::collections::HashMap<String, Duration>>>;

struct Recording {
    catalog: Catalog,
    log: Log,
    sent: Log,
    delays: Delays,
}

#[async_trait::async_trait]
impl RequestHandler for Recording {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        handle: R,
    ) -> ResponseInfo {
        for q in request.queries.queries() {
            let as_sent = q.original().name().to_ascii();
            let as_sent = as_sent.trim_end_matches('.').to_string();
            // allowdns's start-up probe (the root's NS) comes at a time of its
            // own: it is no client's question, and not the attacker's data.
            if !as_sent.is_empty() {
                self.sent.lock().unwrap().push((as_sent, q.query_type()));
            }
            let name = q.original().name().to_ascii().to_lowercase();
            let name = name.trim_end_matches('.').to_string();
            let delay = self.delays.lock().unwrap().get(&name).copied();
            self.log.lock().unwrap().push((name, q.query_type()));
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
        }
        self.catalog.handle_request::<R, T>(request, handle).await
    }
}

/// A running authoritative upstream; stopped when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    pub log: Log,
    /// The same questions with names as sent (letter case kept): what the
    /// zone's operator reads.
    pub sent: Log,
    pub delays: Delays,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// Serves the given zone files on `ip:port` (port 0 picks one).
    pub fn start(ip: &str, port: u16, zone_files: &[PathBuf]) -> Upstream {
        let mut catalog = Catalog::new();
        for file in zone_files {
            let text =
                std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let stem = file.file_stem().unwrap().to_str().unwrap();
            let origin = if stem == "root" {
                Name::root()
            } else {
                Name::from_ascii(format!("{stem}.")).unwrap()
            };
            let (origin, records) = Parser::new(text, Some(file.clone()), Some(origin))
                .parse()
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let zone =
                InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::new(
                    origin.clone(),
                    records,
                    ZoneType::Primary,
                    AxfrPolicy::Deny,
                )
                .unwrap();
            let handlers: Vec<Arc<dyn ZoneHandler>> = vec![Arc::new(zone)];
            catalog.upsert(LowerName::new(&origin), handlers);
        }
        let log: Log = Arc::default();
        let sent: Log = Arc::default();
        let delays: Delays = Arc::default();
        let handler = Recording {
            catalog,
            log: log.clone(),
            sent: sent.clone(),
            delays: delays.clone(),
        };
        let bind: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        // Port 0: the UDP port the kernel picks may be taken for TCP; pick again.
        let tries = if port == 0 { 20 } else { 1 };
        let (udp, tcp, addr) = (1..=tries)
            .find_map(|attempt| {
                let udp = std::net::UdpSocket::bind(bind)
                    .unwrap_or_else(|e| panic!("bind upstream {bind}: {e}"));
                let addr = udp.local_addr().unwrap();
                match std::net::TcpListener::bind(addr) {
                    Ok(tcp) => Some((udp, tcp, addr)),
                    Err(e) if attempt == tries => panic!("bind upstream tcp {addr}: {e}"),
                    Err(_) => None,
                }
            })
            .expect("bounded retries end in a bind or a panic");
        udp.set_nonblocking(true).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut server = hickory_server::Server::new(handler);
                server.register_socket(tokio::net::UdpSocket::from_std(udp).unwrap());
                server.register_listener(
                    tokio::net::TcpListener::from_std(tcp).unwrap(),
                    Duration::from_secs(5),
                    65535,
                );
                let _ = stopped.await;
                let _ = server.shutdown_gracefully().await;
            });
        });
        Upstream {
            addr,
            log,
            sent,
            delays,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Every name the upstream was asked about.
    pub fn names(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Every name asked but the root, whose NS allowdns asks once at start-up
    /// (its upstream probe, a fixed question that carries nothing of a client's).
    pub fn names_but_probe(&self) -> Vec<String> {
        let mut names = self.names();
        names.retain(|n| !n.is_empty());
        names
    }

    pub fn count(&self, name: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .count()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("allowdns-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The real allowdns binary, serving until dropped.
pub struct Allowdns {
    child: Child,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_allowdns")
}

impl Allowdns {
    /// `serve` with these arguments plus `--listen 127.0.0.1:0` unless one is given.
    pub fn serve(args: &[&str]) -> Allowdns {
        Self::serve_via(&[], args)
    }

    /// Offline: answers only from the local `zones` directory under `policy`.
    pub fn serve_offline(policy: &Path, zones: &Path) -> Allowdns {
        Self::serve(&[
            "--policy",
            policy.to_str().unwrap(),
            "--zones",
            zones.to_str().unwrap(),
            "--upstream",
            "none",
        ])
    }

    /// Like [`Allowdns::serve`], with extra environment variables.
    pub fn serve_env(env: &[(&str, &str)], args: &[&str]) -> Allowdns {
        Self::start(&[], env, args)
    }

    /// Like [`Allowdns::serve`], run through a prefix such as `ip netns exec NS`.
    pub fn serve_via(prefix: &[&str], args: &[&str]) -> Allowdns {
        Self::start(prefix, &[], args)
    }

    fn start(prefix: &[&str], env: &[(&str, &str)], args: &[&str]) -> Allowdns {
        let mut cmd = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.arg("serve");
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.envs(env.iter().copied());
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn allowdns");
        let stderr = child.stderr.take().unwrap();
        let text = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = text.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            let mut tx = Some(tx);
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains("listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!("allowdns did not start:\n{}", text.lock().unwrap());
            }
        };
        let pick = |scheme: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(scheme))
                .unwrap_or_else(|| panic!("no {scheme} in {line}"))
                .parse()
                .unwrap()
        };
        let udp = pick("udp://");
        let tcp = pick("tcp://");
        Allowdns {
            child,
            udp,
            tcp,
            stderr: text,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGHUP (reload).
    pub fn hup(&self) {
        let sent = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits up to 10 s until stderr holds `text` at least `count` times.
    pub fn wait_for(&self, text: &str, count: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.stderr().matches(text).count() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "no {text:?} in:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for a clean exit; returns everything on stderr.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "allowdns did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(100));
        (status, self.stderr())
    }
}

impl Drop for Allowdns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Options for [`query_with`].
#[derive(Clone, Copy)]
pub struct Ask {
    pub tcp: bool,
    pub edns: Option<u16>,
    /// Source address for UDP (to play another client on loopback).
    pub from: Option<IpAddr>,
}

impl Default for Ask {
    fn default() -> Self {
        Ask {
            tcp: false,
            edns: Some(1232),
            from: None,
        }
    }
}

/// The response code for one UDP question.
pub fn rcode(server: SocketAddr, name: &str, rtype: RecordType) -> ResponseCode {
    query(server, name, rtype).metadata.response_code
}

/// One UDP question from another loopback address (another client).
pub fn query_from(server: SocketAddr, name: &str, rtype: RecordType, from: &str) -> Message {
    let from: IpAddr = from.parse().unwrap();
    query_with(
        server,
        name,
        rtype,
        Ask {
            from: Some(from),
            ..Ask::default()
        },
    )
}

pub fn query(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    query_with(server, name, rtype, Ask::default())
}

/// One question over UDP or TCP with hickory-proto's wire format.
pub fn query_with(server: SocketAddr, name: &str, rtype: RecordType, ask: Ask) -> Message {
    let mut msg = Message::query();
    msg.metadata.id = rand_id();
    msg.metadata.recursion_desired = true;
    msg.metadata.op_code = OpCode::Query;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = ask.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(size);
        msg.set_edns(edns);
    }
    let bytes = msg.to_vec().unwrap();
    let reply = if ask.tcp {
        exchange_tcp(server, &bytes)
    } else {
        exchange_udp(server, &bytes, ask.from)
    };
    let reply = Message::from_vec(&reply).expect("reply parses");
    assert_eq!(reply.metadata.id, msg.metadata.id);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    reply
}

pub fn exchange_udp(server: SocketAddr, bytes: &[u8], from: Option<IpAddr>) -> Vec<u8> {
    let any: IpAddr = if server.is_ipv4() {
        "0.0.0.0".parse().unwrap()
    } else {
        "::".parse().unwrap()
    };
    let local = SocketAddr::new(from.unwrap_or(any), 0);
    let sock = UdpSocket::bind(local).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.send_to(bytes, server).unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = sock.recv_from(&mut buf).expect("UDP reply within 10 s");
    buf.truncate(n);
    buf
}

pub fn exchange_tcp(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn rand_id() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u16
}

/// Runs dig against allowdns; returns stdout. Fails in CI if dig is missing.
pub fn dig(server: SocketAddr, args: &[&str]) -> Option<String> {
    let port = server.port().to_string();
    let at = format!("@{}", server.ip());
    match Command::new("dig")
        .arg(&at)
        .args(["-p", &port])
        .args(args)
        .output()
    {
        Ok(out) => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        Err(e) => {
            require_or_skip(&format!("dig is not installed ({e})"));
            None
        }
    }
}

/// In CI a missing prerequisite is a failure; elsewhere the test skips loudly.
pub fn require_or_skip(reason: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and a prerequisite is missing: {reason}");
    }
    eprintln!("SKIPPED (not in CI): {reason}");
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Answer records as ("name", "TYPE", "data") for easy asserts.
pub fn answers(m: &Message) -> Vec<(String, String, String)> {
    m.answers
        .iter()
        .map(|r| {
            (
                r.name.to_ascii().trim_end_matches('.').to_lowercase(),
                r.record_type().to_string(),
                r.data.to_string(),
            )
        })
        .collect()
}

/// The audit log's lines, each checked against the schema
/// (`observe::audit::schema`): it must read as a query record or an event
/// and write back to the same JSON, so no test passes on a field the schema
/// does not know.
pub fn read_audit(path: &Path) -> Vec<serde_json::Value> {
    use allowdns::observe::audit::schema::{EventLine, QueryRecord};
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"));
            let typed = if v.get("event").is_some() {
                serde_json::from_str::<EventLine>(l).map(|t| serde_json::to_value(t).unwrap())
            } else {
                serde_json::from_str::<QueryRecord>(l).map(|t| serde_json::to_value(t).unwrap())
            };
            let typed = typed.unwrap_or_else(|e| panic!("audit line off the schema ({e}): {l}"));
            assert_eq!(
                typed, v,
                "audit line does not round-trip through the schema: {l}"
            );
            v
        })
        .collect()
}

/// Runs a command; panics with its stderr unless it succeeds.
pub fn sh(args: &[&str]) {
    let (ok, out) = sh_out(args);
    assert!(ok, "{args:?}: {out}");
}

/// Runs a command: whether it succeeded, and its stdout then stderr.
pub fn sh_out(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Runs `f` on a thread inside the network namespace at `ns`; sockets it
/// creates stay there.
pub fn in_ns<T: Send + 'static>(ns: PathBuf, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A README block marked `<!-- readme-test: KIND -->` on the line before it.
pub struct ReadmeBlock {
    pub kind: String,
    pub lines: Vec<String>,
}

/// Every marked block of the README, in order.
pub fn readme_blocks() -> Vec<ReadmeBlock> {
    let text = std::fs::read_to_string(repo("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(kind) = line
            .trim()
            .strip_prefix("<!-- readme-test:")
            .and_then(|rest| rest.strip_suffix("-->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        assert!(
            fence.starts_with("```"),
            "a code block follows the marker: {line}"
        );
        let body: Vec<String> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .map(str::to_string)
            .collect();
        blocks.push(ReadmeBlock {
            kind: kind.trim().to_string(),
            lines: body,
        });
    }
    blocks
}

/// The `$ ` commands of a console block, each with the output lines shown after it.
pub fn console_commands(block: &ReadmeBlock) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in &block.lines {
        match line.strip_prefix("$ ") {
            Some(cmd) => out.push((cmd.to_string(), Vec::new())),
            None if line.trim().is_empty() => {}
            None => out
                .last_mut()
                .expect("output follows a command")
                .1
                .push(line.clone()),
        }
    }
    out
}

/// What varies between runs (digits: times, ports, ids; the width of
/// whitespace) made equal.
pub fn normalize(line: &str) -> String {
    let mut out = String::new();
    let mut last = None;
    for c in line.trim().chars() {
        let c = if c.is_ascii_digit() {
            '0'
        } else if c.is_whitespace() {
            ' '
        } else {
            c
        };
        if (c == '0' || c == ' ') && last == Some(c) {
            continue;
        }
        out.push(c);
        last = Some(c);
    }
    out
}

/// The shown lines that `actual` does not have (compared normalized).
pub fn missing_lines(shown: &[String], actual: &str) -> Vec<String> {
    let have: std::collections::HashSet<String> = actual.lines().map(normalize).collect();
    shown
        .iter()
        .filter(|l| !l.trim().is_empty() && !have.contains(&normalize(l)))
        .cloned()
        .collect()
}
