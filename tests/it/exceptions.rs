//! Learning mode, `expires:` entries, and run-time grants over the control socket.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

const ZONE: &str = "$ORIGIN x.test.\n$TTL 300\n@ IN SOA ns. h. 1 3600 600 86400 5\na IN A 192.0.2.1\nb IN A 192.0.2.2\nc IN A 192.0.2.3\nd.sub IN A 192.0.2.4\n";

fn setup(tag: &str, policy: &str) -> (TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = TempDir::new(tag);
    let zones = dir.zones(&[("x.test.zone", ZONE)]);
    let policy = dir.write("p.yaml", policy);
    (dir, policy, zones)
}

fn rfc3339_in(secs: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(secs)).to_string()
}

/// Polls until `name` gets `want`, for up to `within`.
fn wait_rcode(dns: &Allowdns, name: &str, want: ResponseCode, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = rcode(dns.udp, name, RecordType::A);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: still {got:?}, wanted {want:?}\n{}",
            dns.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn allowdns(args: &[&str]) -> (bool, String, String) {
    allowdns_via(&[], args)
}

#[test]
fn learn_mode_resolves_unlisted_names_and_audits_would_deny() {
    let (dir, policy, zones) = setup(
        "learn",
        "agent_name: learner\nmode: learn\nexpected_outbound:\n  - destination: a.x.test\n",
    );
    let audit = dir.0.join("audit.jsonl");
    let dns = Allowdns::offline_audit(&policy, &zones, &audit, &[]);
    let listed = query(dns.udp, "a.x.test", RecordType::A);
    let unlisted = query(dns.udp, "b.x.test", RecordType::A);
    assert_eq!(answers(&unlisted)[0].2, "192.0.2.2");
    assert_eq!(listed.metadata.response_code, ResponseCode::NoError);
    let (status, stderr) = dns.terminate();
    assert!(status.success());
    assert!(
        !stderr.contains("UNEXPECTED DNS LOOKUP"),
        "learn mode observes, it does not alert:\n{stderr}"
    );
    let records = read_audit(&audit);
    let decision = |name: &str| {
        records
            .iter()
            .find(|r| r["qname"] == name)
            .map(|r| (r["decision"].clone(), r["rule"].clone()))
            .unwrap()
    };
    assert_eq!(decision("a.x.test").0, "allow");
    assert_eq!(decision("a.x.test").1, "a.x.test");
    assert_eq!(decision("b.x.test").0, "would_deny");
    assert!(decision("b.x.test").1.is_null());
}

#[test]
fn expiring_entries_stop_allowing_and_shadowed_wildcards_take_over() {
    // Far enough ahead that `check` and a start-up on 20k rules fit on a busy machine.
    let soon = rfc3339_in(30);
    let (_dir, policy, zones) = setup(
        "expires",
        &format!(
            "agent_name: temp\nexpected_outbound:\n  - destination: a.x.test\n    expires: \"{soon}\"\n  - destination: d.sub.x.test\n    expires: \"{soon}\"\n{}allowed_dynamic_resolution:\n  - pattern: \"*.sub.x.test\"\n  - \"c.x.test\"\n  - pattern: b.x.test\n    expires: \"2001-01-01T00:00:00Z\"\n",
            // Enough rules that rebuilding the policy in a loop would show as CPU.
            (0..20_000)
                .map(|i| format!("  - destination: h{i}.big.test\n"))
                .collect::<String>()
        ),
    );
    let (ok, _, stderr) = check_policy(&policy);
    assert!(ok, "{stderr}");
    assert_has(&stderr, "allowed_dynamic_resolution[2].expires");
    assert_has(&stderr, "expired at 2001-01-01T00:00:00Z; entry ignored");
    let audit = policy.with_file_name("audit.jsonl");
    let dns = Allowdns::offline_audit(&policy, &zones, &audit, &[]);
    let first = query(dns.udp, "a.x.test", RecordType::A);
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);
    assert!(
        first.answers[0].ttl <= 30,
        "no client may cache past the entry's expiry (ttl {})",
        first.answers[0].ttl
    );
    wait_rcode(
        &dns,
        "a.x.test",
        ResponseCode::NXDomain,
        Duration::from_secs(40),
    );
    // The expired exact entry no longer shadows the permanent wildcard.
    wait_rcode(
        &dns,
        "d.sub.x.test",
        ResponseCode::NoError,
        Duration::from_secs(2),
    );
    // Once the entries ended, the expiry task sleeps instead of waking in a loop.
    let before = cpu_ticks(dns.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(dns.pid()) - before;
    assert!(
        used < 20,
        "idle allowdns used {used} CPU ticks in 1 s after an expiry"
    );
    assert_rcode(dns.udp, "b.x.test A", ResponseCode::NXDomain);
    assert_rcode(dns.udp, "c.x.test A", ResponseCode::NoError);
    let (status, stderr) = dns.terminate();
    assert!(status.success());
    assert_has(&stderr, "policy entry expired");
    let mut expired: Vec<_> = read_audit(&audit)
        .into_iter()
        .filter(|r| r["event"] == "entry_expired")
        .map(|r| r["entry"].as_str().unwrap().to_string())
        .collect();
    expired.sort();
    assert_eq!(expired, ["a.x.test", "d.sub.x.test"]);
}

/// User plus system CPU time of a process, in clock ticks (/proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesized command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn bad_expires_is_an_error_with_file_line_and_field() {
    let (_dir, policy, _) = setup(
        "bad-expires",
        "agent_name: t\nexpected_outbound:\n  - destination: a.x.test\n    expires: next tuesday\n",
    );
    let (ok, _, stderr) = check_policy(&policy);
    assert!(!ok);
    assert_has(&stderr, "p.yaml:4");
    assert_has(&stderr, "expected_outbound[0].expires");
    assert_has(&stderr, "'next tuesday' is not an RFC 3339 time");
}

#[test]
fn grants_allow_for_a_while_are_audited_and_expire() {
    let (dir, policy, zones) = setup(
        "grant",
        "agent_name: granted\nexpected_outbound:\n  - destination: a.x.test\n",
    );
    let audit = dir.0.join("audit.jsonl");
    let socket = dir.0.join("control.sock");
    let sock = socket.to_str().unwrap();
    let dns = Allowdns::offline_audit(&policy, &zones, &audit, &["--control", sock]);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket must be owner-only");
    assert_rcode(dns.udp, "b.x.test A", ResponseCode::NXDomain);

    // Refusals: no reason, unknown agent, an over-broad pattern, too long.
    for (agent, name, time, reason, why) in [
        ("granted", "b.x.test", "5s", " ", "needs a --reason"),
        (
            "nobody",
            "b.x.test",
            "5s",
            "r",
            "no policy for agent 'nobody'",
        ),
        ("granted", "*.com", "5s", "r", "over-broad"),
        ("granted", "b.x.test", "30d", "r", "--for must be between"),
    ] {
        let (ok, _, stderr) = allowdns(&grant_args(sock, agent, name, time, reason));
        assert!(!ok && stderr.contains(why), "{why}: {stderr}");
    }

    let (ok, stdout, stderr) = allowdns(&grant_args(
        sock,
        "granted",
        "B.X.TEST",
        "3s",
        "INC-42 vendor debugging",
    ));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("granted: agent 'granted' may resolve b.x.test until"));
    let allowed = query(dns.udp, "b.x.test", RecordType::A);
    assert_eq!(allowed.metadata.response_code, ResponseCode::NoError);
    assert!(allowed.answers[0].ttl <= 3);

    let (ok, stdout, _) = allowdns(&["status", "--control", sock]);
    assert!(ok);
    assert_has(&stdout, "policy granted");
    assert_has(&stdout, "grant granted -> b.x.test until");
    assert_has(&stdout, "INC-42 vendor debugging");

    wait_rcode(
        &dns,
        "b.x.test",
        ResponseCode::NXDomain,
        Duration::from_secs(10),
    );
    let (_, stdout, _) = allowdns(&["status", "--control", sock]);
    assert_has(&stdout, "no active grants");

    // Revoking ends a grant at once.
    let (ok, _, stderr) = allowdns(&grant_args(sock, "granted", "c.x.test", "1h", "r2"));
    assert!(ok, "{stderr}");
    assert_rcode(dns.udp, "c.x.test A", ResponseCode::NoError);
    let (ok, _, stderr) = allowdns(&revoke_args(sock, "granted", "c.x.test"));
    assert!(ok, "{stderr}");
    assert_rcode(dns.udp, "c.x.test A", ResponseCode::NXDomain);

    let (status, _) = dns.terminate();
    assert!(status.success());
    assert!(!socket.exists(), "the socket is removed on shutdown");
    let events: Vec<_> = read_audit(&audit)
        .into_iter()
        .filter(|r| r.get("event").is_some())
        .collect();
    let kinds: Vec<_> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["grant", "grant_expired", "grant", "grant_revoked"],
        "{events:?}"
    );
    assert_eq!(events[0]["reason"], "INC-42 vendor debugging");
    assert_eq!(events[0]["pattern"], "b.x.test");
    assert!(events[0]["expires"].is_string() && events[0]["uid"].is_number());
    let granted_lookup = read_audit(&audit)
        .into_iter()
        .find(|r| r["qname"] == "b.x.test" && r["decision"] == "allow")
        .unwrap();
    assert_eq!(granted_lookup["rule"], "b.x.test");
}

/// `serve` that must fail to start: its exit status and stderr.
fn serve_fails(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(bin())
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("allowdns started although it should have refused to");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

fn inode(path: &std::path::Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(path).unwrap())
}

#[test]
fn a_regular_file_at_the_control_socket_path_is_kept_and_startup_fails() {
    let (dir, policy, zones) = setup(
        "control-file",
        "agent_name: t\nexpected_outbound:\n  - destination: a.x.test\n",
    );
    let socket = dir.write("control.sock", "not a socket: keep me\n");
    let (status, stderr) = serve_fails(&offline_args(
        &policy,
        &zones,
        &["--control", socket.to_str().unwrap()],
    ));
    assert!(!status.success());
    assert_has(&stderr, &socket.display().to_string());
    assert_has(&stderr, "is not a socket");
    assert_eq!(
        std::fs::read_to_string(&socket).unwrap(),
        "not a socket: keep me\n"
    );
}

#[test]
fn a_second_instance_does_not_steal_the_control_socket() {
    let (dir, policy, zones) = setup(
        "control-twice",
        "agent_name: t\nexpected_outbound:\n  - destination: a.x.test\n",
    );
    let socket = dir.0.join("control.sock");
    let sock = socket.to_str().unwrap();
    let args = offline_args(&policy, &zones, &["--control", sock]);
    let first = Allowdns::serve(&args);
    let before = inode(&socket);
    let (status, stderr) = serve_fails(&args);
    assert!(!status.success());
    assert_has(&stderr, sock);
    assert_has(&stderr, "another allowdns is listening");
    assert_eq!(inode(&socket), before, "the first instance's socket stays");
    let (ok, stdout, stderr) = allowdns(&["status", "--control", sock]);
    assert!(ok && stdout.contains("policy t"), "{stdout}{stderr}");
    let (status, _) = first.terminate();
    assert!(status.success());
    assert!(!socket.exists(), "the owner removes its socket on shutdown");
}

#[test]
fn grants_with_control_characters_or_from_strangers_are_refused() {
    let (dir, policy, zones) = setup(
        "control-text",
        "agent_name: t\nexpected_outbound:\n  - destination: a.x.test\n",
    );
    let audit = dir.0.join("audit.jsonl");
    let socket = dir.0.join("control.sock");
    let sock = socket.to_str().unwrap();
    let dns = Allowdns::offline_audit(&policy, &zones, &audit, &["--control", sock]);
    let grant = |reason: &str| allowdns(&grant_args(sock, "t", "b.x.test", "1h", reason));
    for reason in ["INC-1\n{\"event\":\"forged\"}", "bell\u{7}", "esc\u{1b}[2J"] {
        let (ok, _, stderr) = grant(reason);
        assert!(
            !ok && stderr.contains("--reason") && stderr.contains("control character"),
            "{reason:?}: {stderr}"
        );
    }
    let (ok, _, stderr) = grant(&"x".repeat(513));
    assert!(!ok && stderr.contains("more than 512"), "{stderr}");
    assert_rcode(dns.udp, "b.x.test A", ResponseCode::NXDomain);

    // Someone else reaching the socket (its mode loosened by hand) is still refused.
    if is_root() {
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", bin()])
            .args(["status", "--control", sock])
            .output();
        match out {
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(!out.status.success(), "{stderr}");
                assert_has(&stderr, "permission denied: uid 65534");
            }
            Err(e) => require_or_skip(&format!("setpriv is not available ({e})")),
        }
    } else {
        require_or_skip("not root: cannot connect as another user");
    }
    let (status, stderr) = dns.terminate();
    assert!(status.success());
    assert!(
        !is_root() || stderr.contains("permission denied: uid 65534"),
        "a refused peer is logged:\n{stderr}"
    );
    assert!(
        read_audit(&audit).iter().all(|r| r["event"] != "grant"),
        "no grant was made"
    );
}

#[test]
fn a_grant_over_a_port_bound_rule_keeps_its_ttl_cap_and_then_ends() {
    let (dir, policy, zones) = setup(
        "grant-ports",
        "agent_name: t\nexpected_outbound:\n  - destination: a.x.test\n    port: 443\n    protocol: TCP\n",
    );
    let socket = dir.0.join("control.sock");
    let sock = socket.to_str().unwrap();
    let dns = Allowdns::offline(&policy, &zones, &["--control", sock]);
    let before = query(dns.udp, "a.x.test", RecordType::A);
    assert_eq!(before.answers[0].ttl, 300);
    let (ok, _, stderr) = allowdns(&grant_args(
        sock,
        "t",
        "a.x.test",
        "3s",
        "any port for a moment",
    ));
    assert!(ok, "{stderr}");
    let during = query(dns.udp, "a.x.test", RecordType::A);
    assert_eq!(during.metadata.response_code, ResponseCode::NoError);
    assert!(
        during.answers[0].ttl <= 3,
        "the any-port part lasts only as long as the grant (ttl {})",
        during.answers[0].ttl
    );
    // The grant ends; the permanent port-443 rule is back, uncapped.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, stdout, _) = allowdns(&["status", "--control", sock]);
        if stdout.contains("no active grants") {
            break;
        }
        assert!(Instant::now() < deadline, "{stdout}\n{}", dns.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = query(dns.udp, "a.x.test", RecordType::A);
    assert_eq!(after.metadata.response_code, ResponseCode::NoError);
    assert_eq!(after.answers[0].ttl, 300);
}
