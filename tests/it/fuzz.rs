//! Fuzzing on stable Rust: proptest draws the bytes (and shrinks a failure
//! to a small case), `arbitrary` turns them into structured inputs.
//! - The policy compiler, in process: YAML-ish text built from the policy
//!   schema's keys, odd names, times and ports, then mutated. It compiles, or
//!   reports at least one error naming the file, within the text's lines;
//!   never a panic.
//! - The query path, through the real binary over UDP and TCP, so the target
//!   holds whichever module decodes the wire: raw bytes and structured DNS
//!   messages (odd names, counts, EDNS, compression pointers, flipped bytes).
//!   Every reply is a well-formed response to the packet's ID, and a probe
//!   keeps getting its right answer; the server never crashes or wedges.
//!
//! `PROPTEST_CASES` sets the number of cases per target (default 2000, for
//! CI); `benches/fuzz.sh` runs millions. The server runs with `--upstream
//! none`, so no fuzzed question leaves the host.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use common::*;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RecordType;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    })
}

/// Bytes for `arbitrary`; proptest shrinks them on failure.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..1024)
}

// --- the policy compiler ----------------------------------------------------

const KEYS: &[&str] = &[
    "version",
    "agent_name",
    "clients",
    "mode",
    "expected_outbound",
    "allowed_dynamic_resolution",
    "firewall",
    "destination",
    "port",
    "protocol",
    "purpose",
    "expires",
    "pattern",
    "netns",
    "family",
    "table",
    "set_v4",
    "set_v6",
    "set_v4_ports",
    "set_v6_ports",
    "min_ttl",
    "max_ttl",
    "grace",
    "<<",
];

const LABELS: &[&str] = &[
    "*",
    "**",
    "?",
    "a",
    "allowed",
    "test",
    "com",
    "co",
    "uk",
    "xn--",
    "xn--80ak6aa92e",
    "exämple",
    "раypal",
    "ＡＢＣ",
    "-a",
    "a-",
    "_sip",
    "_tcp",
    "0",
    "255",
    "localhost",
    "in-addr",
    "arpa",
    "learn",
    "",
    " ",
    "a\\.b",
    "\u{0}",
    "\u{200b}",
    "é",
    "ß",
];

const SCALARS: &[&str] = &[
    "TCP",
    "UDP",
    "tcp",
    "learn",
    "enforce",
    "inet",
    "ip6",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "::/0",
    "::1",
    "127.0.0.1/33",
    "192.0.2.1",
    "2001:db8::/129",
    "2026-01-01T00:00:00Z",
    "2099-12-31T23:59:59+01:00",
    "9999-99-99T99:99:99Z",
    "1970-01-01T00:00:00Z",
    "yes",
    "~",
    "null",
    "0x10",
    "1e9",
    "-1",
    "65536",
    "4294967296",
    "!!binary aGVsbG8=",
    "&a x",
    "*a",
    "[",
    "{",
    "'",
    "\"",
    "\u{feff}",
    "\t",
];

#[derive(Arbitrary, Debug)]
enum Scalar {
    Pool(u8),
    Name(Vec<u8>),
    Text(String),
    Int(i64),
    Bool(bool),
    Quoted(String),
    SingleQuoted(String),
}

#[derive(Arbitrary, Debug)]
enum Node {
    Scalar(Scalar),
    List(Vec<Node>),
    Map(Vec<(u8, Option<String>, Node)>),
    Flow(Vec<Scalar>),
}

#[derive(Arbitrary, Debug)]
struct PolicyText {
    agent: Option<Scalar>,
    body: Vec<(u8, Node)>,
    /// (position, text) insertions: stray syntax dropped anywhere.
    mutations: Vec<(u16, Scalar)>,
    bom: bool,
}

fn scalar(s: &Scalar) -> String {
    match s {
        Scalar::Pool(i) => SCALARS[*i as usize % SCALARS.len()].to_string(),
        Scalar::Name(picks) => picks
            .iter()
            .map(|i| LABELS[*i as usize % LABELS.len()])
            .collect::<Vec<_>>()
            .join("."),
        Scalar::Text(t) => t.clone(),
        Scalar::Int(i) => i.to_string(),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Quoted(t) => format!("{t:?}"),
        Scalar::SingleQuoted(t) => format!("'{}'", t.replace('\'', "''")),
    }
}

fn key(k: u8, other: &Option<String>) -> String {
    match other {
        Some(o) if k.is_multiple_of(8) => o.clone(),
        _ => KEYS[k as usize % KEYS.len()].to_string(),
    }
}

fn render(node: &Node, indent: usize, depth: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match node {
        Node::Scalar(s) => {
            out.push_str(&pad);
            out.push_str(&scalar(s));
            out.push('\n');
        }
        Node::Flow(items) => {
            let items: Vec<String> = items.iter().map(scalar).collect();
            out.push_str(&format!("{pad}[{}]\n", items.join(", ")));
        }
        Node::List(items) => {
            for item in items {
                match item {
                    Node::Scalar(s) => out.push_str(&format!("{pad}- {}\n", scalar(s))),
                    _ if depth > 8 => out.push_str(&format!("{pad}- x\n")),
                    _ => {
                        out.push_str(&format!("{pad}-\n"));
                        render(item, indent + 2, depth + 1, out);
                    }
                }
            }
        }
        Node::Map(entries) => {
            for (k, other, value) in entries {
                let k = key(*k, other);
                match value {
                    Node::Scalar(s) => out.push_str(&format!("{pad}{k}: {}\n", scalar(s))),
                    Node::Flow(_) => {
                        out.push_str(&format!("{pad}{k}: "));
                        render(value, 0, depth + 1, out);
                    }
                    _ if depth > 8 => out.push_str(&format!("{pad}{k}: x\n")),
                    _ => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        render(value, indent + 2, depth + 1, out);
                    }
                }
            }
        }
    }
}

impl PolicyText {
    fn text(&self) -> String {
        let mut out = String::new();
        if self.bom {
            out.push('\u{feff}');
        }
        if let Some(agent) = &self.agent {
            out.push_str(&format!("agent_name: {}\n", scalar(agent)));
        }
        for (k, node) in &self.body {
            let k = KEYS[*k as usize % KEYS.len()];
            match node {
                Node::Scalar(s) => out.push_str(&format!("{k}: {}\n", scalar(s))),
                _ => {
                    out.push_str(&format!("{k}:\n"));
                    render(node, 2, 1, &mut out);
                }
            }
        }
        for (at, what) in &self.mutations {
            let mut at = *at as usize % (out.len() + 1);
            while !out.is_char_boundary(at) {
                at -= 1;
            }
            out.insert_str(at, &scalar(what));
        }
        out
    }
}

/// Checks one text; true if it compiled.
fn check_policy(text: &str) -> Result<bool, TestCaseError> {
    let file = Path::new("/fuzz/policy.yaml");
    let mut diags = allowdns::diagnostics::Diagnostics::default();
    let compiled = allowdns::policy::compile_source(file, text, &mut diags);
    let errors: Vec<_> = diags.errors().collect();
    prop_assert_eq!(
        compiled.is_some(),
        errors.is_empty(),
        "compiled and errors disagree: {:?}",
        errors
    );
    // Lines as the YAML parser counts them: a lone CR, NEL, LS and PS break
    // a line too.
    let lines = text
        .replace("\r\n", "\n")
        .replace(['\r', '\u{85}', '\u{2028}', '\u{2029}'], "\n")
        .lines()
        .count()
        + 1;
    for d in &diags.items {
        prop_assert_eq!(&d.file, file);
        prop_assert!(!d.message.trim().is_empty(), "empty message: {:?}", d);
        if let Some(line) = d.line {
            prop_assert!(
                (1..=lines).contains(&line),
                "line {} of {}: {} in {:?}",
                line,
                lines,
                d,
                text
            );
        }
    }
    Ok(compiled.is_some())
}

#[test]
fn fuzz_policy_compiler() {
    let compiled = AtomicUsize::new(0);
    // Inputs long runs found, replayed on every run.
    for text in ["agent_name: \u{85}!\n", "agent_name: a\rb: c\n"] {
        check_policy(text).unwrap();
    }
    runner()
        .run(&bytes(), |raw| {
            let Ok(input) = PolicyText::arbitrary(&mut Unstructured::new(&raw)) else {
                return Ok(());
            };
            let text = input.text();
            if check_policy(&text)? {
                compiled.fetch_add(1, Relaxed);
            }
            // The same text as raw bytes, lossily decoded, with a byte flipped.
            let mut flipped = text.into_bytes();
            if let Some(b) = raw.first().and_then(|i| {
                let len = flipped.len();
                flipped.get_mut(*i as usize % len.max(1))
            }) {
                *b ^= raw.get(1).copied().unwrap_or(0x20);
            }
            check_policy(&String::from_utf8_lossy(&flipped))?;
            check_policy(&String::from_utf8_lossy(&raw))?;
            Ok(())
        })
        .unwrap();
    // The generator must reach the compiler, not only the YAML parser.
    let compiled = compiled.load(Relaxed);
    eprintln!("fuzz_policy_compiler: {compiled} generated policies compiled");
    assert!(compiled > 0, "no generated policy ever compiled");
}

// --- the query path ---------------------------------------------------------

/// Names a label may be drawn from: allowed, denied and ill-formed ones.
const WIRE_LABELS: &[&[u8]] = &[
    b"probe",
    b"fuzz",
    b"test",
    b"allowed",
    b"PROBE",
    b"*",
    b"a.b",
    b"\0",
    b"\xff\xfe",
    b"xn--80ak6aa92e",
    b"com",
    b"version",
    b"bind",
    b"",
];

#[derive(Arbitrary, Debug)]
enum WireLabel {
    Pool(u8),
    Raw(Vec<u8>),
    /// A length byte with the top bits set (pointer, extended label types).
    Odd(u8),
}

#[derive(Arbitrary, Debug)]
struct WireName {
    labels: Vec<WireLabel>,
    /// End in a compression pointer instead of the root.
    pointer: Option<u16>,
}

#[derive(Arbitrary, Debug)]
struct Question {
    name: WireName,
    qtype: u16,
    known_type: Option<u8>,
    qclass: u16,
    class_in: bool,
}

#[derive(Arbitrary, Debug)]
struct Opt {
    payload: u16,
    version: u8,
    flags: u16,
    options: Vec<(u16, Vec<u8>)>,
}

#[derive(Arbitrary, Debug)]
struct Packet {
    id: u16,
    flags: u16,
    /// Header counts as given, instead of the true ones.
    counts: Option<[u16; 4]>,
    questions: Vec<Question>,
    opt: Option<Opt>,
    trailing: Vec<u8>,
    flips: Vec<(u16, u8)>,
    truncate: Option<u16>,
    tcp: bool,
}

const TYPES: &[RecordType] = &[
    RecordType::A,
    RecordType::AAAA,
    RecordType::ANY,
    RecordType::AXFR,
    RecordType::IXFR,
    RecordType::CNAME,
    RecordType::TXT,
    RecordType::OPT,
    RecordType::HTTPS,
    RecordType::SRV,
    RecordType::NULL,
];

impl Packet {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&self.id.to_be_bytes());
        // Mostly queries: a response is dropped unanswered by design.
        let flags = if self.flags & 0x0700 == 0 {
            self.flags
        } else {
            self.flags & !0x8000
        };
        out.extend_from_slice(&flags.to_be_bytes());
        let ar = u16::from(self.opt.is_some());
        let counts = self
            .counts
            .unwrap_or([self.questions.len() as u16, 0, 0, ar]);
        for c in counts {
            out.extend_from_slice(&c.to_be_bytes());
        }
        for q in &self.questions {
            for label in &q.name.labels {
                match label {
                    WireLabel::Pool(i) => {
                        let l = WIRE_LABELS[*i as usize % WIRE_LABELS.len()];
                        out.push(l.len() as u8);
                        out.extend_from_slice(l);
                    }
                    WireLabel::Raw(bytes) => {
                        let bytes = &bytes[..bytes.len().min(63)];
                        out.push(bytes.len() as u8);
                        out.extend_from_slice(bytes);
                    }
                    WireLabel::Odd(b) => out.push(b | 0x40),
                }
            }
            match q.name.pointer {
                Some(p) => out.extend_from_slice(&(0xc000 | (p & 0x3fff)).to_be_bytes()),
                None => out.push(0),
            }
            let qtype = match q.known_type {
                Some(i) => u16::from(TYPES[i as usize % TYPES.len()]),
                None => q.qtype,
            };
            out.extend_from_slice(&qtype.to_be_bytes());
            let qclass = if q.class_in { 1 } else { q.qclass };
            out.extend_from_slice(&qclass.to_be_bytes());
        }
        if let Some(opt) = &self.opt {
            out.push(0);
            out.extend_from_slice(&41u16.to_be_bytes());
            out.extend_from_slice(&opt.payload.to_be_bytes());
            out.push(0);
            out.push(opt.version);
            out.extend_from_slice(&opt.flags.to_be_bytes());
            let rdata: Vec<u8> = opt
                .options
                .iter()
                .flat_map(|(code, data)| {
                    let data = &data[..data.len().min(64)];
                    let mut o = code.to_be_bytes().to_vec();
                    o.extend_from_slice(&(data.len() as u16).to_be_bytes());
                    o.extend_from_slice(data);
                    o
                })
                .collect();
            out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            out.extend_from_slice(&rdata);
        }
        out.extend_from_slice(&self.trailing);
        for (at, x) in &self.flips {
            let len = out.len();
            if let Some(b) = out.get_mut(*at as usize % len.max(1)) {
                *b ^= x;
            }
        }
        if let Some(t) = self.truncate {
            out.truncate(t as usize % (out.len() + 1));
        }
        out
    }
}

struct Target {
    dns: Allowdns,
    _dir: TempDir,
}

fn target() -> Target {
    let dir = TempDir::new("fuzz");
    std::fs::create_dir(dir.0.join("zones")).unwrap();
    dir.write(
        "zones/fuzz.test.zone",
        "$ORIGIN fuzz.test.\n$TTL 300\n\
         @ IN SOA ns.fuzz.test. h.fuzz.test. 1 3600 600 86400 30\n\
         @ IN NS ns.fuzz.test.\nns IN A 192.0.2.1\nprobe IN A 192.0.2.53\n\
         * IN A 192.0.2.54\n",
    );
    let policy = dir.write(
        "policy.yaml",
        "agent_name: fuzz\nclients: [\"127.0.0.1/32\"]\n\
         allowed_dynamic_resolution: [\"*.fuzz.test\", \"fuzz.test\", \"*.allowed.test\"]\n",
    );
    let zones = dir.0.join("zones");
    let dns = Allowdns::offline(&policy, &zones, &["--audit-log", "/dev/null"]);
    Target { dns, _dir: dir }
}

/// The server still answers a good question correctly.
fn probe(server: SocketAddr) -> Result<(), TestCaseError> {
    let reply = query(server, "probe.fuzz.test", RecordType::A);
    prop_assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    prop_assert_eq!(
        answers(&reply),
        vec![("probe.fuzz.test".into(), "A".into(), "192.0.2.53".into())]
    );
    Ok(())
}

fn send_udp(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(packet, server).ok()?;
    if wait.is_zero() {
        return None;
    }
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn send_tcp(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5)).ok()?;
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    s.write_all(&framed).ok()?;
    if wait.is_zero() {
        return None;
    }
    s.set_read_timeout(Some(wait)).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// A reply is a response to the packet's ID that parses as DNS.
fn check_reply(packet: &[u8], reply: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(reply.len() >= 12, "short reply {:?}", reply);
    prop_assert_eq!(&reply[..2], &packet[..2], "reply to another ID");
    let parsed = Message::from_vec(reply);
    // Known (docs/robustness.md): a FORMERR that echoes the question section
    // verbatim keeps compression pointers into the query's header, whose
    // bytes differ in the reply. Tolerated only as exactly that echo.
    let echo = reply[3] & 0x0f == ResponseCode::FormErr.low()
        && packet.len() >= reply.len()
        && reply[12..] == packet[12..reply.len()];
    if parsed.is_err() && echo {
        return Ok(());
    }
    prop_assert!(parsed.is_ok(), "reply does not parse: {:?}", parsed.err());
    let parsed = parsed.unwrap();
    prop_assert_eq!(parsed.metadata.message_type, MessageType::Response);
    Ok(())
}

#[derive(Default)]
struct Tally {
    cases: AtomicUsize,
    answered: AtomicUsize,
    unanswered: AtomicUsize,
    dropped_by_design: AtomicUsize,
}

/// One fuzz case against the running target.
fn query_case(
    t: &Target,
    tally: &Tally,
    raw: &[u8],
    structured: bool,
) -> Result<(), TestCaseError> {
    let n = tally.cases.fetch_add(1, Relaxed);
    let (packet, tcp) = if structured {
        match Packet::arbitrary(&mut Unstructured::new(raw)) {
            Ok(p) => (p.encode(), p.tcp && n.is_multiple_of(4)),
            Err(_) => return Ok(()),
        }
    } else {
        (
            raw.to_vec(),
            raw.first().is_some_and(|b| b.is_multiple_of(16)),
        )
    };
    // Short packets and responses are dropped without a reply, by design.
    let expect = packet.len() >= 12 && packet[2] & 0x80 == 0;
    // Nothing to wait for when no reply is due (a late one is ignored).
    let wait = Duration::from_millis(if expect { 2000 } else { 0 });
    let reply = if tcp {
        send_tcp(t.dns.tcp, &packet, wait)
    } else {
        send_udp(t.dns.udp, &packet, wait)
    };
    match (&reply, expect) {
        (Some(r), _) => {
            if let Err(e) = check_reply(&packet, r) {
                eprintln!("packet {packet:02x?}\nreply {r:02x?}");
                return Err(e);
            }
            tally.answered.fetch_add(1, Relaxed);
        }
        (None, true) => {
            tally.unanswered.fetch_add(1, Relaxed);
            prop_assert!(
                false,
                "no reply over {} to {:?}",
                if tcp { "TCP" } else { "UDP" },
                packet
            );
        }
        (None, false) => {
            tally.dropped_by_design.fetch_add(1, Relaxed);
        }
    }
    if n.is_multiple_of(64) {
        probe(t.dns.udp)?;
    }
    Ok(())
}

/// Inputs long runs found, replayed on every run.
const REGRESSIONS: &[(&[u8], bool)] = &[(
    &[
        0, 0, 0, 0, 44, 215, 161, 0, 0, 0, 171, 128, 157, 0, 0, 0, 86, 55, 0, 43, 0, 6, 0, 19, 0,
        0, 0, 0, 29, 0, 0, 0, 0, 127, 0, 0, 0, 0, 47, 0, 0, 0, 0, 89, 0, 0, 0, 0, 0, 0,
    ],
    true,
)];

#[test]
fn fuzz_query_path() {
    let t = target();
    let tally = Tally::default();
    for (raw, structured) in REGRESSIONS {
        query_case(&t, &tally, raw, *structured).unwrap();
    }
    let strategy = (bytes(), any::<bool>());
    let result = runner().run(&strategy, |(raw, structured)| {
        query_case(&t, &tally, &raw, structured)
    });
    eprintln!(
        "fuzz_query_path: {} cases, {} answered, {} unanswered, {} short or QR=1 (dropped by design)",
        tally.cases.load(Relaxed),
        tally.answered.load(Relaxed),
        tally.unanswered.load(Relaxed),
        tally.dropped_by_design.load(Relaxed),
    );
    result.unwrap();
    probe(t.dns.udp).unwrap();
    // Still answering over TCP too.
    let reply = query_with(
        t.dns.tcp,
        "probe.fuzz.test",
        RecordType::A,
        Ask {
            tcp: true,
            ..Ask::default()
        },
    );
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
}
