//! Replays the public tricky-name corpus (tests/data/names.tsv) through the
//! real binary as raw wire bytes, so NUL, control bytes, dots inside labels
//! and over-long names reach it exactly as an attacker would send them.
//! Every row's decision is checked; all mismatches are reported at once.

use crate::common;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

struct Row {
    line: usize,
    name: String,
    qtype: RecordType,
    expect: String,
    note: String,
}

fn corpus() -> Vec<Row> {
    let text = std::fs::read_to_string(data("names.tsv")).unwrap();
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.starts_with("name\t") || line.is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 4, "names.tsv:{}: four columns", i + 1);
        rows.push(Row {
            line: i + 1,
            name: cols[0].into(),
            qtype: cols[1]
                .parse()
                .unwrap_or_else(|_| panic!("names.tsv:{}: type", i + 1)),
            expect: cols[2].into(),
            note: cols[3].into(),
        });
    }
    rows
}

fn packet(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in wire_labels(name) {
        out.push(label.len() as u8);
        out.extend_from_slice(&label);
    }
    out.push(0);
    out.extend_from_slice(&u16::from(qtype).to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out
}

/// What the server decided, read from its reply.
fn decision(reply: &[u8]) -> String {
    let rcode = reply[3] & 0x0f;
    if rcode == ResponseCode::FormErr.low() {
        return "formerr".into();
    }
    let Ok(msg) = Message::from_vec(reply) else {
        return format!("unparseable reply (rcode {rcode})");
    };
    match msg.metadata.response_code {
        // Answered from the zone; long names may come truncated (TC), and a
        // type the zone lacks is NODATA: allowed either way.
        ResponseCode::NoError => "allow".into(),
        ResponseCode::NXDomain
            if msg.authorities.iter().any(|r| {
                matches!(&r.data, RData::SOA(soa) if soa.mname.to_ascii() == "allowdns.invalid.")
            }) =>
        {
            "deny".into()
        }
        other => format!("{other:?} with {} answers", msg.answers.len()),
    }
}

#[test]
fn the_tricky_name_corpus_gets_its_expected_decisions() {
    let rows = corpus();
    assert!(rows.len() >= 200, "the corpus has {} rows", rows.len());
    let dns = Allowdns::offline_audit(
        &data("names-policy.yaml"),
        &data("names-zones"),
        std::path::Path::new("/dev/null"),
        &[],
    );
    // Positive control: the corpus has rows of each kind, and the fence is
    // not denying everything (allowed names resolve) nor allowing everything.
    for kind in ["allow", "deny", "formerr"] {
        assert!(rows.iter().any(|r| r.expect == kind), "no {kind} rows");
    }
    let mut wrong = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let id = i as u16;
        let reply = exchange_udp(dns.udp, &packet(id, &row.name, row.qtype), None);
        assert_eq!(
            &reply[..2],
            &id.to_be_bytes(),
            "names.tsv:{}: reply ID",
            row.line
        );
        let got = decision(&reply);
        if got != row.expect {
            wrong.push(format!(
                "names.tsv:{}: {} {}: expected {}, got {} ({})",
                row.line, row.name, row.qtype, row.expect, got, row.note
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} rows decided wrongly:\n{}",
        wrong.len(),
        rows.len(),
        wrong.join("\n")
    );
}
