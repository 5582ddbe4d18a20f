//! Micro-benchmark: writing one audit query record, the writer thread's
//! per-query work. The hand-written `format_record` (straight into the
//! chunk) against the schema type (`QueryRecord::from` + serde_json) that
//! would replace it, on a typical allowed A lookup with two answers.
//!
//! Run: `cargo bench --bench audit_format`

use std::hint::black_box;
use std::time::{Instant, SystemTime};

use allowdns::observe::audit::schema::QueryRecord;
use allowdns::observe::audit::{AuditRecord, Decision, format_record};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

fn time(iterations: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..10_000 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}

fn main() {
    let name = Name::from_ascii("www.example.com.").unwrap();
    let cdn = Name::from_ascii("www.example.com.cdn.example.net.").unwrap();
    let make = |answers: Vec<Record>, upstream_ms| AuditRecord {
        ts: SystemTime::now(),
        client: "10.200.1.2:53531".parse().unwrap(),
        transport: "udp",
        agent: Some("travel_agent_v1".into()),
        qname: Some(name.clone()),
        qtype: Some(RecordType::A),
        decision: Decision::Allow,
        rule: Some("*.example.com".into()),
        dynamic: false,
        rcode: ResponseCode::NoError,
        answers,
        stripped: Vec::new(),
        upstream_ms,
        exfil: None,
        owner: None,
    };
    let address = Record::from_rdata(cdn.clone(), 60, RData::A(A::new(192, 0, 2, 1)));
    let cname = Record::from_rdata(name.clone(), 300, RData::CNAME(CNAME(cdn)));
    let record = make(vec![cname, address.clone()], Some(12.5));
    let mut out = Vec::with_capacity(1 << 16);
    let n = 500_000;
    let hand = time(n, || {
        out.clear();
        format_record(black_box(&record), &mut out);
        black_box(&out);
    });
    let serde = time(n, || {
        out.clear();
        let typed = QueryRecord::from(black_box(&record));
        let _ = serde_json::to_writer(&mut out, &typed);
        out.push(b'\n');
        black_box(&out);
    });
    // A cache hit's record: one address, nothing upstream.
    let hit = make(vec![address], None);
    let hit = time(n, || {
        out.clear();
        format_record(black_box(&hit), &mut out);
        black_box(&out);
    });
    println!("format_record (hand-written)   {hand:>7.1} ns");
    println!("  the same, a cache hit's      {hit:>7.1} ns");
    println!(
        "QueryRecord + serde_json       {serde:>7.1} ns  (ratio {:.2})",
        serde / hand
    );
}
