//! The allowdns process: the real binary, read up to its "listening on"
//! line, killed on drop; and what it writes (the audit log).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `--policy POLICY --zones ZONES --upstream none`, then `extra`: offline,
/// answers only from local zones.
pub fn offline_args<'a>(policy: &'a Path, zones: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--policy",
        policy.to_str().unwrap(),
        "--zones",
        zones.to_str().unwrap(),
        "--upstream",
        "none",
    ];
    args.extend_from_slice(extra);
    args
}

/// `allowdns ARGS` behind `prefix` (`ip netns exec NS`, `setpriv ...`; may
/// be empty), run to its end: whether it succeeded, its stdout, its stderr.
pub fn allowdns_via(prefix: &[&str], args: &[&str]) -> (bool, String, String) {
    let mut argv: Vec<&str> = prefix.to_vec();
    argv.push(bin());
    argv.extend_from_slice(args);
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `allowdns check --upstream none --policy POLICY`, run to its end.
pub fn check_policy(policy: &Path) -> (bool, String, String) {
    let policy = policy.to_str().unwrap();
    allowdns_via(&[], &["check", "--upstream", "none", "--policy", policy])
}

/// `allowdns grant` on the control socket `sock`, for `time` (`1h`).
pub fn grant_args<'a>(
    sock: &'a str,
    agent: &'a str,
    name: &'a str,
    time: &'a str,
    reason: &'a str,
) -> Vec<&'a str> {
    let mut args = control_args("grant", sock, agent, name);
    args.extend(["--for", time, "--reason", reason]);
    args
}

/// `allowdns revoke` on the control socket `sock`.
pub fn revoke_args<'a>(sock: &'a str, agent: &'a str, name: &'a str) -> Vec<&'a str> {
    control_args("revoke", sock, agent, name)
}

fn control_args<'a>(verb: &'a str, sock: &'a str, agent: &'a str, name: &'a str) -> Vec<&'a str> {
    vec![verb, "--control", sock, "--agent", agent, "--name", name]
}

/// The value of one series in a Prometheus scrape, by its exact name and labels.
pub fn series_value<T: std::str::FromStr>(text: &str, series: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}

/// `allowdns nft-ruleset --policy POLICY --dns DNS`: the ruleset it prints.
pub fn nft_ruleset(policy: &Path, dns: &str) -> String {
    nft_ruleset_for(policy, &[dns])
}

/// `allowdns nft-ruleset` for `policy`, allowdns reachable at each of `dns`.
pub fn nft_ruleset_for(policy: &Path, dns: &[&str]) -> String {
    let mut cmd = Command::new(bin());
    cmd.args(["nft-ruleset", "--policy"]).arg(policy);
    for ip in dns {
        cmd.args(["--dns", ip]);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nft-ruleset: {stderr}");
    String::from_utf8(out.stdout).unwrap()
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
        Self::offline(policy, zones, &[])
    }

    /// Offline on local `zones`; `extra` follows.
    pub fn offline(policy: &Path, zones: &Path, extra: &[&str]) -> Allowdns {
        Self::serve(&offline_args(policy, zones, extra))
    }

    /// Forwarding to `upstream` (an address, or "none"); `extra` follows.
    pub fn forward(upstream: &str, policy: &Path, extra: &[&str]) -> Allowdns {
        let mut args = vec!["--policy", policy.to_str().unwrap(), "--upstream", upstream];
        args.extend_from_slice(extra);
        Self::serve(&args)
    }

    /// Offline on local `zones`, auditing to `audit`; `extra` follows.
    pub fn offline_audit(policy: &Path, zones: &Path, audit: &Path, extra: &[&str]) -> Allowdns {
        let mut args = vec!["--audit-log", audit.to_str().unwrap()];
        args.extend_from_slice(extra);
        Self::offline(policy, zones, &args)
    }

    /// Forwarding to `upstream` (an address), auditing to `audit`; `extra` follows.
    pub fn upstream_audit(upstream: &str, policy: &Path, audit: &Path, extra: &[&str]) -> Allowdns {
        let mut args = vec!["--audit-log", audit.to_str().unwrap()];
        args.extend_from_slice(extra);
        Self::forward(upstream, policy, &args)
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

    /// The address of the `/metrics` endpoint it announced (`--metrics`).
    pub fn metrics_addr(&self) -> String {
        let stderr = self.stderr();
        stderr
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://")?.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("no metrics address in:\n{stderr}"))
            .to_string()
    }

    /// An HTTP GET of `path` from its metrics endpoint: the whole reply.
    pub fn scrape(&self, path: &str) -> String {
        let addr = self.metrics_addr();
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
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

/// The audit log's whole lines, each checked against the schema
/// (`observe::audit::schema`): it must read as a query record or an event
/// and write back to the same JSON, so no test passes on a field the schema
/// does not know.
pub fn read_audit(path: &Path) -> Vec<serde_json::Value> {
    use allowdns::observe::audit::schema::{EventLine, QueryRecord};
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // A line the writer has not finished yet is not a record yet.
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
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

/// The audit log's lines once there are at least `n`, or what there is
/// after 10 s (records are written off the query path).
pub fn audit_at_least(path: &Path, n: usize) -> Vec<serde_json::Value> {
    audit_where(path, n, |_| true)
}

/// The audit records for `qname`, polled until there are `count` (10 s at most).
pub fn audit_for(path: &Path, qname: &str, count: usize) -> Vec<serde_json::Value> {
    audit_where(path, count, |r| r["qname"] == qname)
}

/// The audit records that `keep`, polled until there are `count` (10 s at most).
pub fn audit_where(
    path: &Path,
    count: usize,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<_> = read_audit(path).into_iter().filter(&keep).collect();
        if found.len() >= count || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
