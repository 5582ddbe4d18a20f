//! The answer cache under floods, through the real binary and a recording
//! upstream: one agent's flood, of unique names or of a few repeated ones,
//! never costs another agent its cached entries.

use crate::common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

const A: &str = "127.0.0.21";
const B: &str = "127.0.0.22";
/// For both agents together; each gets half.
const MAX_ENTRIES: usize = 200;

struct Setup {
    up: Upstream,
    dns: Allowdns,
    _dir: TempDir,
}

fn setup() -> Setup {
    let dir = TempDir::new("cache");
    let zone = dir.write(
        "flood.test.zone",
        "$ORIGIN flood.test.\n$TTL 3600\n\
         @ IN SOA ns.flood.test. h.flood.test. 1 3600 600 86400 3600\n\
         @ IN NS ns.flood.test.\nns IN A 127.0.0.20\n* IN A 192.0.2.50\n",
    );
    let up = Upstream::start("127.0.0.20", 0, &[zone]);
    std::fs::create_dir(dir.0.join("policies")).unwrap();
    for (agent, client) in [("agent_a", A), ("agent_b", B)] {
        dir.write(
            &format!("policies/{agent}.yaml"),
            &format!(
                "agent_name: {agent}\nclients: [\"{client}/32\"]\n\
                 allowed_dynamic_resolution: [\"*.flood.test\"]\n"
            ),
        );
    }
    let config = dir.write(
        "allowdns.yaml",
        &format!(
            "policies: [{:?}]\naudit_log: {:?}\ncache:\n  max_entries: {MAX_ENTRIES}\n",
            dir.0.join("policies"),
            dir.0.join("audit.jsonl"),
        ),
    );
    let upstream = up.addr.to_string();
    let dns = Allowdns::serve(&[
        "--config",
        config.to_str().unwrap(),
        "--upstream",
        &upstream,
    ]);
    Setup { up, dns, _dir: dir }
}

fn ask(s: &Setup, from: &str, name: &str) {
    let reply = query_from(s.dns.udp, name, RecordType::A, from);
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::NoError,
        "{name}"
    );
    assert_eq!(answers(&reply).len(), 1, "{name}");
}

fn hot(i: usize) -> String {
    format!("hot{i}.flood.test")
}

/// Agent A's hot names, each asked three times: one upstream query each.
fn warm_a(s: &Setup) {
    for _ in 0..3 {
        for i in 0..20 {
            ask(s, A, &hot(i));
        }
    }
    for i in 0..20 {
        assert_eq!(s.up.count(&hot(i)), 1, "{}", hot(i));
    }
}

/// A asks its hot names again: no new upstream query for any of them.
fn assert_a_still_cached(s: &Setup, after: &str) {
    for i in 0..20 {
        ask(s, A, &hot(i));
    }
    let requeried: Vec<String> = (0..20).map(hot).filter(|n| s.up.count(n) != 1).collect();
    assert!(
        requeried.is_empty(),
        "after {after}, agent A's hot names went upstream again: {requeried:?}"
    );
}

#[test]
fn a_unique_name_flood_by_one_agent_keeps_the_other_agents_entries() {
    let s = setup();
    warm_a(&s);
    // Positive control: the flood (5x B's share) is big enough to evict
    // what B itself asked once in its midst. (The first names to fill an
    // empty share are admitted as hot, so "once" comes after those.)
    let share = MAX_ENTRIES / 2;
    for i in 0..5 * share {
        if i == 2 * share {
            ask(&s, B, "once.flood.test");
        }
        ask(&s, B, &format!("u{i}.flood.test"));
    }
    ask(&s, B, "once.flood.test");
    assert_eq!(
        s.up.count("once.flood.test"),
        2,
        "the flood did not fill B's share; the test proves nothing"
    );
    assert_a_still_cached(&s, "B's flood of unique names");
}

#[test]
fn a_repeated_name_flood_by_one_agent_keeps_the_other_agents_entries() {
    let s = setup();
    warm_a(&s);
    // B's working set is three times its share, asked over and over: every
    // name looks hot, so only the partition keeps A's entries.
    let names: Vec<String> = (0..3 * MAX_ENTRIES / 2)
        .map(|i| format!("r{i}.flood.test"))
        .collect();
    for _ in 0..4 {
        for n in &names {
            ask(&s, B, n);
        }
    }
    // Positive control: B's repeated names churned B's own share.
    let b_upstream: usize = names.iter().map(|n| s.up.count(n)).sum();
    assert!(
        b_upstream > names.len(),
        "B's names all stayed cached ({b_upstream} upstream queries); the test proves nothing"
    );
    assert_a_still_cached(&s, "B's flood of repeated names");
}

/// A query for `name`, with an EDNS OPT record when `edns` is set.
fn wire_query(id: u16, name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
    for label in wire_labels(name) {
        out.push(label.len() as u8);
        out.extend_from_slice(&label);
    }
    out.push(0);
    out.extend_from_slice(&u16::from(qtype).to_be_bytes());
    out.extend_from_slice(&[0, 1]);
    if edns {
        out.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    }
    out
}

/// `query` with the letters of its question's name in alternating case,
/// starting upper (or lower, with `odd`): how a DNS 0x20 client asks.
fn recased(query: &[u8], odd: bool) -> Vec<u8> {
    let mut out = query.to_vec();
    let (mut at, mut letter) = (12, usize::from(odd));
    while out[at] != 0 {
        let end = at + 1 + out[at] as usize;
        for b in &mut out[at + 1..end] {
            if b.is_ascii_alphabetic() {
                *b = if letter % 2 == 0 {
                    b.to_ascii_uppercase()
                } else {
                    b.to_ascii_lowercase()
                };
                letter += 1;
            }
        }
        at = end;
    }
    out
}

/// A reply with its ID and the TTLs of its answer and authority records zeroed.
fn without_id_and_ttls(reply: &[u8]) -> Vec<u8> {
    fn skip_name(m: &[u8], mut at: usize) -> usize {
        loop {
            match m[at] {
                0 => return at + 1,
                l if l & 0xc0 == 0xc0 => return at + 2,
                l => at += 1 + l as usize,
            }
        }
    }
    let mut out = reply.to_vec();
    out[..2].fill(0);
    let count = |at: usize| u16::from_be_bytes([reply[at], reply[at + 1]]) as usize;
    let mut at = 12;
    for _ in 0..count(4) {
        at = skip_name(reply, at) + 4;
    }
    for _ in 0..count(6) + count(8) {
        at = skip_name(reply, at);
        out[at + 4..at + 8].fill(0);
        at += 10 + u16::from_be_bytes([reply[at + 8], reply[at + 9]]) as usize;
    }
    out
}

#[test]
fn a_cache_hit_answers_byte_for_byte_as_the_full_path_over_the_name_corpus() {
    let dir = TempDir::new("cache-hit-bytes");
    let up = Upstream::start("127.0.0.1", 0, &[data("names-zones/test.zone")]);
    let upstream = up.addr.to_string();
    let audit = dir.0.join("audit.jsonl");
    let dns = Allowdns::serve(&[
        "--policy",
        data("names-policy.yaml").to_str().unwrap(),
        "--upstream",
        &upstream,
        "--audit-log",
        audit.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(data("names.tsv")).unwrap();
    let rows: Vec<(String, RecordType)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("name\t") && !l.is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols[0].to_string(), cols[1].parse().unwrap())
        })
        // Names too long for the upstream's UDP answer are the TCP tests' business.
        .filter(|(name, _)| {
            let labels = wire_labels(name);
            labels.iter().all(|l| l.len() < 64)
                && labels.iter().map(|l| l.len() + 1).sum::<usize>() < 200
        })
        .collect();
    let (mut hits, mut wrong) = (0, Vec::new());
    let mut id = 0u16;
    for (name, qtype) in &rows {
        for (edns, tcp) in [(false, false), (true, false), (true, true)] {
            // The first is answered by the upstream, the second from the
            // cache by the full path (which keeps it ready), the rest by
            // the fast path.
            let replies: Vec<Vec<u8>> = (0..4)
                .map(|_| {
                    id = id.wrapping_add(1);
                    let query = wire_query(id, name, *qtype, edns);
                    let reply = if tcp {
                        exchange_tcp(dns.tcp, &query)
                    } else {
                        exchange_udp(dns.udp, &query, None)
                    };
                    assert_eq!(reply[..2], id.to_be_bytes(), "{name} {qtype}: the ID");
                    reply
                })
                .collect();
            if replies[0][3] & 0x0f == 0 && replies[0][6..8] != [0, 0] {
                hits += 1;
            }
            let first = without_id_and_ttls(&replies[0]);
            for (i, reply) in replies.iter().enumerate().skip(1) {
                if without_id_and_ttls(reply) != first {
                    wrong.push(format!(
                        "{name} {qtype} (edns {edns}, tcp {tcp}), reply {i}:\n  {:02x?}\n  {:02x?}",
                        replies[0], reply
                    ));
                }
            }
        }
    }
    // DNS 0x20: the same names spelled in two other cases. The UDP answer
    // kept for the first spelling answers the second (the fast path matches
    // the name in any case); TCP has no answer kept in either, so the full
    // path answers it there. Both must be the same bytes, the client's own
    // spelling echoed in the question.
    let mut mixed = 0;
    for (name, qtype) in &rows {
        let ask = |id: u16, odd: bool, tcp: bool| {
            let query = recased(&wire_query(id, name, *qtype, true), odd);
            let reply = if tcp {
                exchange_tcp(dns.tcp, &query)
            } else {
                exchange_udp(dns.udp, &query, None)
            };
            (query, reply)
        };
        id = id.wrapping_add(3);
        let (first, _) = ask(id, false, false);
        let (second, fast) = ask(id.wrapping_add(1), true, false);
        let (_, full) = ask(id.wrapping_add(2), true, true);
        // No letters, or truncated over UDP: nothing to compare.
        if first[2..] == second[2..] || fast[2] & 0x02 != 0 {
            continue;
        }
        mixed += 1;
        let question = 12..second.len() - 11;
        assert_eq!(
            fast[question.clone()],
            second[question],
            "{name}: the client's spelling"
        );
        if without_id_and_ttls(&fast) != without_id_and_ttls(&full) {
            wrong.push(format!(
                "{name} {qtype} in mixed case, fast path (UDP) against full path (TCP):\n  {fast:02x?}\n  {full:02x?}"
            ));
        }
    }
    // Positive control: most of the corpus is allowed, answered and cached.
    assert!(
        hits >= 90,
        "only {hits} answers with records: the comparison proves little"
    );
    assert!(mixed >= 90, "only {mixed} names compared in mixed case");
    assert!(
        wrong.is_empty(),
        "{} replies differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // One upstream question per name and type: the rest were cache hits.
    assert!(
        up.names().len() <= rows.len(),
        "{} upstream questions",
        up.names().len()
    );
}
