//! The query record as the handler fills it in, and its hand-written JSON
//! formatter: it runs on the writer thread once per query, straight into
//! the output chunk, with no allocation per field. [`QueryRecord`] (the
//! schema) is what it writes; a test below checks they agree byte for byte.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::schema::{Answer, Decision, Millis, QueryRecord};
use crate::observe::attribution::Attribution;

/// One audit record, as the handler fills it in: cheap to build on the
/// query path (shared strings, hickory's own types). Formatting is the
/// writer's job; the fields mean what [`QueryRecord`]'s do.
#[derive(Debug)]
pub struct AuditRecord {
    pub ts: SystemTime,
    pub client: SocketAddr,
    pub transport: &'static str,
    pub agent: Option<Arc<str>>,
    /// `None` when the request had no single question.
    pub qname: Option<Name>,
    pub qtype: Option<RecordType>,
    pub decision: Decision,
    pub rule: Option<Arc<str>>,
    pub dynamic: bool,
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// Special-purpose addresses taken out of the answer (serve/strip.rs).
    pub stripped: Vec<IpAddr>,
    pub upstream_ms: Option<f64>,
    /// Exfiltration mark (`soft`, `budget`, `qtype`); written only when set.
    pub exfil: Option<&'static str>,
    /// Who asked: denials only.
    pub owner: Option<Attribution>,
}

impl From<&AuditRecord> for QueryRecord {
    /// The schema's view of a record: what [`format_record`] writes.
    fn from(r: &AuditRecord) -> QueryRecord {
        QueryRecord {
            ts: humantime::format_rfc3339_micros(r.ts).to_string(),
            client: r.client.to_string(),
            transport: r.transport.to_string(),
            agent: r.agent.as_deref().map(str::to_string),
            qname: r.qname.as_ref().map(name_text),
            qtype: r.qtype.map(|t| type_name(t).into_owned()),
            decision: r.decision,
            rule: r.rule.as_deref().map(str::to_string),
            dynamic: r.dynamic,
            rcode: rcode_name(r.rcode).into_owned(),
            answers: r
                .answers
                .iter()
                .map(|a| Answer {
                    name: name_text(&a.name),
                    rtype: type_name(a.record_type()).into_owned(),
                    ttl: a.ttl,
                    data: match &a.data {
                        RData::A(ip) => ip.to_string(),
                        RData::AAAA(ip) => ip.to_string(),
                        other => other.to_string(),
                    },
                })
                .collect(),
            stripped: r.stripped.clone(),
            upstream_ms: r.upstream_ms.map(Millis),
            exfil: r.exfil.map(str::to_string),
            owner: r
                .owner
                .as_ref()
                .map(Attribution::fields)
                .unwrap_or_default(),
        }
    }
}

/// Formats one record as a JSON line, [`QueryRecord`]'s bytes exactly.
/// Hand-written because it runs once per query on the one writer thread:
/// going through `QueryRecord` would allocate a string per field (and per
/// answer) first. benches/audit_format.rs compares the two.
pub fn format_record(r: &AuditRecord, out: &mut Vec<u8>) {
    use std::io::Write as _;
    out.extend_from_slice(br#"{"ts":""#);
    timestamp(out, r.ts);
    out.extend_from_slice(br#"","client":""#);
    socket_addr(out, r.client);
    out.extend_from_slice(br#"","transport":""#);
    out.extend_from_slice(r.transport.as_bytes());
    out.extend_from_slice(br#"","agent":"#);
    match &r.agent {
        Some(agent) => json_str(out, agent),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","qname":"#);
    match &r.qname {
        Some(name) => json_name(out, name),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","qtype":"#);
    match r.qtype {
        Some(t) => {
            out.push(b'"');
            out.extend_from_slice(type_name(t).as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","decision":""#);
    out.extend_from_slice(r.decision.as_str().as_bytes());
    out.extend_from_slice(br#"","rule":"#);
    match &r.rule {
        Some(rule) => json_str(out, rule),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(if r.dynamic {
        br#","dynamic":true,"rcode":""#
    } else {
        br#","dynamic":false,"rcode":""#
    });
    out.extend_from_slice(rcode_name(r.rcode).as_bytes());
    out.extend_from_slice(br#"","answers":["#);
    for (i, a) in r.answers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"name":"#);
        json_name(out, &a.name);
        out.extend_from_slice(br#","type":""#);
        out.extend_from_slice(type_name(a.record_type()).as_bytes());
        out.extend_from_slice(br#"","ttl":"#);
        out.extend_from_slice(itoa::Buffer::new().format(a.ttl).as_bytes());
        out.extend_from_slice(br#","data":"#);
        match &a.data {
            RData::A(ip) => {
                out.push(b'"');
                ipv4(out, ip.0);
                out.push(b'"');
            }
            RData::AAAA(ip) => {
                let _ = write!(out, r#""{ip}""#);
            }
            other => json_str(out, &other.to_string()),
        }
        out.push(b'}');
    }
    out.push(b']');
    // Only present when the fence took something out, so lines stay short.
    if !r.stripped.is_empty() {
        out.extend_from_slice(br#","stripped":["#);
        for (i, ip) in r.stripped.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            let _ = write!(out, r#"{sep}"{ip}""#);
        }
        out.push(b']');
    }
    out.extend_from_slice(br#","upstream_ms":"#);
    match r.upstream_ms {
        Some(ms) => {
            let _ = write!(out, "{ms:.3}");
        }
        None => out.extend_from_slice(b"null"),
    }
    if let Some(mark) = r.exfil {
        let _ = write!(out, r#","exfil":"{mark}""#);
    }
    // Denials only. A process found goes through serde, the object's
    // members spliced in; the flood's common case, unknown, is one field.
    match &r.owner {
        Some(Attribution::Unknown(why)) => {
            out.extend_from_slice(br#","owner_unknown":"#);
            json_str(out, why.as_str());
        }
        Some(owner) => {
            if let Ok(json) = serde_json::to_vec(&owner.fields())
                && json.len() > 2
            {
                out.push(b',');
                out.extend_from_slice(&json[1..json.len() - 1]);
            }
        }
        None => {}
    }
    out.extend_from_slice(b"}\n");
}

/// Writes `s` as a JSON string literal: as is when nothing needs escaping
/// (nearly always), else escaped by serde_json, so the schema agrees.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Writes a name as a JSON string, the way [`display_name`] spells it,
/// without building the intermediate strings.
fn json_name(out: &mut Vec<u8>, name: &Name) {
    out.push(b'"');
    let mut first = true;
    for label in name.iter() {
        if !first {
            out.push(b'.');
        }
        first = false;
        for &b in label {
            match b {
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => out.push(b),
                b'A'..=b'Z' => out.push(b.to_ascii_lowercase()),
                // Master-file escapes (RFC 1035 5.1), with the backslash JSON-escaped.
                _ => {
                    let _ = std::io::Write::write_fmt(out, format_args!("\\\\{b:03}"));
                }
            }
        }
    }
    if first {
        out.push(b'.');
    }
    out.push(b'"');
}

/// A name as logs show it: lower case A-labels, no trailing dot (the root stays ".").
pub fn display_name(name: &Name) -> String {
    let mut s = name.to_lowercase().to_ascii();
    if s.len() > 1 && s.ends_with('.') {
        s.pop();
    }
    s
}

/// A type as dig and the RFCs spell it: its mnemonic, or `TYPE65280` (RFC
/// 3597) for one without, so private-use types stay told apart.
pub fn type_name(rtype: RecordType) -> Cow<'static, str> {
    match rtype {
        RecordType::Unknown(n) => Cow::Owned(format!("TYPE{n}")),
        known => Cow::Borrowed(known.into()),
    }
}

/// The mnemonic used by dig and the RFCs, or `RCODE<n>`.
pub fn rcode_name(rcode: ResponseCode) -> Cow<'static, str> {
    Cow::Borrowed(match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        other => return Cow::Owned(format!("RCODE{}", u16::from(other))),
    })
}

// The formatter's own spelling of the fields a record always has, without
// `fmt`: `fmt` and humantime were half of the writer's time per record
// (benches/audit_format.rs). The schema test below holds the bytes.

/// RFC 3339 with microseconds, as `humantime::format_rfc3339_micros`; the
/// date and time are spelled once per second (per writer thread).
fn timestamp(out: &mut Vec<u8>, ts: SystemTime) {
    use std::cell::Cell;
    thread_local! {
        static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let since = ts
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (last, mut text) = SECOND.get();
    if last != secs {
        let full = humantime::format_rfc3339_seconds(ts).to_string();
        text.copy_from_slice(&full.as_bytes()[..19]);
        SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    let mut frac = *b".000000Z";
    let mut digits = itoa::Buffer::new();
    let micros = digits.format(since.subsec_micros()).as_bytes();
    frac[7 - micros.len()..7].copy_from_slice(micros);
    out.extend_from_slice(&frac);
}

fn ipv4(out: &mut Vec<u8>, ip: std::net::Ipv4Addr) {
    let mut digits = itoa::Buffer::new();
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        out.extend_from_slice(digits.format(octet).as_bytes());
    }
}

fn socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    let SocketAddr::V4(v4) = addr else {
        use std::io::Write as _;
        let _ = write!(out, "{addr}");
        return;
    };
    ipv4(out, *v4.ip());
    out.push(b':');
    out.extend_from_slice(itoa::Buffer::new().format(v4.port()).as_bytes());
}

/// A name as [`json_name`] spells it, unescaped: lower case, master-file
/// escapes for anything else (RFC 1035 5.1), no trailing dot.
fn name_text(name: &Name) -> String {
    let mut out = String::new();
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        for &b in label {
            match b {
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => out.push(b as char),
                b'A'..=b'Z' => out.push(b.to_ascii_lowercase() as char),
                _ => out.push_str(&format!("\\{b:03}")),
            }
        }
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::attribution::{Owner, Parent, Why};
    use hickory_proto::rr::rdata::{A, CNAME, TXT};
    use std::time::Duration;

    #[test]
    fn records_are_valid_json_with_every_field() {
        let name = Name::from_ascii("Www.Example.com.").unwrap();
        let r = AuditRecord {
            ts: SystemTime::UNIX_EPOCH,
            client: "10.0.0.1:5353".parse().unwrap(),
            transport: "udp",
            agent: Some("a\"gent".into()),
            qname: Some(name.clone()),
            qtype: Some(RecordType::TXT),
            decision: Decision::Allow,
            rule: Some("*.example.com".into()),
            dynamic: true,
            rcode: ResponseCode::NoError,
            answers: vec![
                Record::from_rdata(name.clone(), 60, RData::A(A::new(192, 0, 2, 1))),
                Record::from_rdata(name, 60, RData::TXT(TXT::new(vec!["say \"hi\"\\".into()]))),
            ],
            stripped: vec!["10.9.9.9".parse().unwrap(), "fe80::1".parse().unwrap()],
            upstream_ms: Some(1.5),
            exfil: None,
            owner: None,
        };
        let mut out = Vec::new();
        format_record(&r, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(v["agent"], "a\"gent");
        assert_eq!(v["qname"], "www.example.com");
        assert_eq!(v["qtype"], "TXT");
        assert_eq!(v["decision"], "allow");
        assert_eq!(v["dynamic"], true);
        assert_eq!(v["answers"][0]["data"], "192.0.2.1");
        assert_eq!(v["answers"][1]["type"], "TXT");
        assert_eq!(v["upstream_ms"], 1.5);
        assert_eq!(v["stripped"], serde_json::json!(["10.9.9.9", "fe80::1"]));
        assert!(out.ends_with(b"}\n"));
        let odd = Name::from_labels(vec![b"a.b\"c".as_ref(), b"Com".as_ref()]).unwrap();
        let mut out = Vec::new();
        json_name(&mut out, &odd);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, "a\\046b\\034c.com");
        let mut out = Vec::new();
        json_name(&mut out, &Name::root());
        assert_eq!(out, b"\".\"");
    }

    /// The hand-written formatter and the schema type write the same bytes.
    #[test]
    fn the_formatter_agrees_with_the_schema_byte_for_byte() {
        let name = Name::from_ascii("Www.Example.com.").unwrap();
        let odd = Name::from_labels(vec![b"a.b\"c\\*".as_ref(), b"Com".as_ref()]).unwrap();
        let full = || AuditRecord {
            ts: SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_234_567),
            client: "[fe80::1]:53".parse().unwrap(),
            transport: "tcp",
            agent: Some("a\"g\\ent\u{1}é".into()),
            qname: Some(odd.clone()),
            qtype: Some(RecordType::HTTPS),
            decision: Decision::WouldDeny,
            rule: Some("*.example.com".into()),
            dynamic: true,
            rcode: ResponseCode::from(15, 10),
            answers: vec![
                Record::from_rdata(name.clone(), 60, RData::A(A::new(192, 0, 2, 1))),
                Record::from_rdata(
                    odd.clone(),
                    0,
                    RData::TXT(TXT::new(vec!["say \"hi\"\\\n".into()])),
                ),
                Record::from_rdata(Name::root(), 1, RData::CNAME(CNAME(name.clone()))),
            ],
            stripped: vec!["10.9.9.9".parse().unwrap(), "fe80::1".parse().unwrap()],
            upstream_ms: Some(12.3456),
            exfil: Some("budget"),
            owner: Some(Attribution::Found(std::sync::Arc::new(Owner {
                pid: 7,
                host_pid: 412233,
                comm: "getent".into(),
                exe: "/usr/bin/getent".into(),
                cmdline: "getent hosts \"odd\\name\" \\n".into(),
                parents: vec![Parent {
                    pid: 1,
                    host_pid: 412230,
                    cmdline: "python3 /opt/agent/main.py".into(),
                }],
            }))),
        };
        let bare = AuditRecord {
            agent: None,
            qname: None,
            qtype: None,
            rule: None,
            dynamic: false,
            answers: Vec::new(),
            stripped: Vec::new(),
            upstream_ms: None,
            exfil: None,
            owner: None,
            rcode: ResponseCode::FormErr,
            decision: Decision::Refused,
            ..full()
        };
        let root = AuditRecord {
            qname: Some(Name::root()),
            upstream_ms: Some(0.0),
            ..full()
        };
        let unknown = [
            Why::Exited,
            Why::NoPermission,
            Why::OtherHost,
            Why::OverBudget,
            Why::Failed,
            Why::Reset,
            Why::RateLimited,
        ]
        .map(|why| AuditRecord {
            owner: Some(Attribution::Unknown(why)),
            ..full()
        });
        // The spelled-out fields: each second's stamp anew, micros
        // padded, IPv6 clients (scoped too), unnamed codes and types.
        let at = |secs, micros: u32| SystemTime::UNIX_EPOCH + Duration::new(secs, micros * 1000);
        let spelled = [
            (at(1_796_649_001, 42), "10.0.0.1:1", ResponseCode::NXDomain),
            (
                at(1_796_649_001, 999_999),
                "[2001:db8::1]:53",
                ResponseCode::Unknown(3841),
            ),
            (
                at(1_796_649_002, 0),
                "[fe80::1%7]:65535",
                ResponseCode::BADVERS,
            ),
            (
                at(951_782_400, 100_000),
                "255.255.255.255:0",
                ResponseCode::ServFail,
            ),
        ]
        .map(|(ts, client, rcode)| AuditRecord {
            ts,
            client: client.parse().unwrap(),
            rcode,
            qtype: Some(RecordType::Unknown(65280)),
            answers: vec![Record::from_rdata(
                Name::from_ascii("x.test.").unwrap(),
                u32::MAX,
                RData::AAAA("2001:db8::2".parse::<std::net::Ipv6Addr>().unwrap().into()),
            )],
            ..full()
        });
        for r in [&full(), &bare, &root]
            .into_iter()
            .chain(&unknown)
            .chain(&spelled)
        {
            let mut hand = Vec::new();
            format_record(r, &mut hand);
            let mut typed = serde_json::to_vec(&QueryRecord::from(r)).unwrap();
            typed.push(b'\n');
            assert_eq!(
                String::from_utf8_lossy(&hand),
                String::from_utf8_lossy(&typed)
            );
            let back: QueryRecord = serde_json::from_slice(&hand).unwrap();
            assert_eq!(back.agent, r.agent.as_deref().map(str::to_string));
        }
    }
}
