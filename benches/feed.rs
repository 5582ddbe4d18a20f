//! Benchmark: what nftables feeding costs, against a real set in a network
//! namespace this bench creates (needs root, `ip` and `nft`; skips otherwise).
//!
//! - added latency per allowed answer that needs a set update (p50/p99);
//! - the same answer when the element still has ample time (the skip path);
//! - elements per second when answers carry many addresses.
//!
//! Run: `cargo bench --bench feed` (`WATCH=1`: with the ruleset-reload watcher)

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use allowdns::diagnostics::Diagnostics;
use allowdns::fence::{Firewall, ruleset};
use allowdns::policy;
use allowdns::policy::firewall::FirewallConfig;
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record};

/// Decided against the newest policy set: nothing withdrawn since.
const NEWEST: u64 = u64::MAX;

fn run(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .status()
        .is_ok_and(|s| s.success())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let ns = format!("adns-feedbench-{}", std::process::id());
    if !run(&["ip", "netns", "add", &ns]) {
        eprintln!("SKIPPED: feed bench needs root and iproute2");
        return;
    }
    let result = std::panic::catch_unwind(|| bench(&ns));
    run(&["ip", "netns", "del", &ns]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn bench(ns: &str) {
    let source = format!(
        "agent_name: bench\nallowed_dynamic_resolution: [\"*.bench.test\"]\nfirewall:\n  netns: {ns}\n"
    );
    let mut diags = Diagnostics::default();
    let policy =
        policy::compile_source(Path::new("bench.yaml"), &source, &mut diags).expect("bench policy");
    let text = ruleset::render(
        &policy,
        &FirewallConfig::with_defaults(),
        &["127.0.0.1".parse().unwrap()],
    );
    let file = std::env::temp_dir().join(format!("{ns}.nft"));
    std::fs::write(&file, text).unwrap();
    assert!(
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "-f",
            file.to_str().unwrap()
        ]),
        "load ruleset"
    );
    let _ = std::fs::remove_file(&file);

    let mut set = policy::PolicySet::default();
    set.policies.push(std::sync::Arc::new(policy));
    let firewall = std::sync::Arc::new(
        Firewall::open(&set)
            .expect("open firewall")
            .expect("policy feeds"),
    );
    // WATCH=1: with the ruleset-reload watcher listening, as `serve` runs it
    // (every feed then also makes the kernel send an nftables event).
    if std::env::var("WATCH").is_ok_and(|v| v == "1") {
        let _events = allowdns::fence::watch::spawn(
            firewall.clone(),
            |f| Some(f),
            &|| Box::new(Discard),
            std::time::Duration::ZERO,
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        println!("(with the ruleset-reload watcher)");
    }
    let policy = &set.policies[0];
    let rule = policy.rule_for("x.bench.test").expect("rule");
    let name = Name::from_ascii("x.bench.test.").unwrap();
    let answer = |n: u32| {
        Record::from_rdata(
            name.clone(),
            300,
            RData::A(A(Ipv4Addr::from(0x0a00_0000 + n))),
        )
    };

    // New addresses: every answer needs a netlink round trip.
    let rounds = 5_000u32;
    let mut lat = Vec::with_capacity(rounds as usize);
    for i in 0..rounds {
        let mut answers = vec![answer(i)];
        let t = Instant::now();
        firewall
            .feed_decided_at(policy, rule, NEWEST, &mut answers)
            .expect("feed");
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "feed, new element (1 address)   p50 {:>7.1} µs   p99 {:>7.1} µs",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    // Same addresses again: ample time left, no netlink.
    let mut skip = Vec::with_capacity(rounds as usize);
    for i in 0..rounds {
        let mut answers = vec![answer(i)];
        let t = Instant::now();
        firewall
            .feed_decided_at(policy, rule, NEWEST, &mut answers)
            .expect("feed");
        skip.push(t.elapsed().as_secs_f64() * 1e6);
    }
    skip.sort_by(f64::total_cmp);
    println!(
        "feed, element fresh (skip path) p50 {:>7.2} µs   p99 {:>7.2} µs",
        percentile(&skip, 0.5),
        percentile(&skip, 0.99)
    );

    // Throughput: answers with 64 new addresses each.
    let batches = 500u32;
    let t = Instant::now();
    for b in 0..batches {
        let mut answers: Vec<Record> = (0..64).map(|k| answer(1_000_000 + b * 64 + k)).collect();
        firewall
            .feed_decided_at(policy, rule, NEWEST, &mut answers)
            .expect("feed");
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "elements per second (64 per answer): {:>9.0}",
        f64::from(batches * 64) / secs
    );
    let t = Instant::now();
    for i in 0..rounds {
        let mut answers = vec![answer(2_000_000 + i)];
        firewall
            .feed_decided_at(policy, rule, NEWEST, &mut answers)
            .expect("feed");
    }
    println!(
        "elements per second (1 per answer):  {:>9.0}",
        f64::from(rounds) / t.elapsed().as_secs_f64()
    );
}

/// Blocked connections are not this benchmark's business.
struct Discard;

impl allowdns::fence::nflog::Report for Discard {
    fn attempt(&mut self, _: allowdns::fence::nflog::Attempt) {}
    fn lost(&mut self, _: u64) {}
}
