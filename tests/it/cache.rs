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
