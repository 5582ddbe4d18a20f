//! The cache-hit fast path's wire work: reading the one question a hit
//! needs (its name and type, not the whole message), and answers kept
//! ready to send, whose ID and TTLs are patched per hit.
//!
//! A denial (NXDOMAIN with allowdns's SOA) is built here straight from the
//! query's bytes, as the full path would encode it.
//!
//! A kept answer is the bytes the full path encoded for one exact query
//! (every byte after the ID, and the transport): the same bytes in give
//! the same bytes out, apart from the ID and the TTLs, without decoding
//! the message through hickory's types or encoding the answer again.
//! Hand-written for that reason (the profile in docs/performance.md).

use std::time::Instant;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use crate::policy::name::QueryKey;

const HEADER_LEN: usize = 12;

/// The question of a plain query: opcode QUERY, one question spelled out
/// (no compression pointer), no answer or authority records. Anything else
/// takes the full path.
///
/// Read from the labels as they are: the name's key and type, no [`Name`]
/// (decoded by [`Question::name`] only when the fast path answers), so a
/// question the full path must answer is decoded once, there.
pub struct Question {
    /// `None`: a label holds a byte no policy can spell.
    pub key: Option<QueryKey>,
    pub qtype: RecordType,
    class: u16,
    /// Where the question ends in the query.
    end: usize,
}

impl Question {
    pub fn read(raw: &[u8]) -> Option<Question> {
        let header = raw.get(..HEADER_LEN)?;
        if header[2] & 0xf8 != 0 || header[4..6] != [0, 1] || header[6..10] != [0; 4] {
            return None;
        }
        let mut at = HEADER_LEN;
        loop {
            match *raw.get(at)? {
                0 => break,
                len if len < 64 => at += 1 + usize::from(len),
                _ => return None,
            }
        }
        // The wire form's length, root label included, is at most 255.
        if at + 1 - HEADER_LEN > 255 {
            return None;
        }
        let end = at + 5;
        let field = |at: usize| Some(u16::from_be_bytes([*raw.get(at)?, *raw.get(at + 1)?]));
        let (qtype, class) = (field(end - 4)?, field(end - 2)?);
        let key = QueryKey::of_labels(
            labels(&raw[HEADER_LEN..at]),
            (at - HEADER_LEN).saturating_sub(1),
        );
        Some(Question {
            key,
            qtype: RecordType::from(qtype),
            class,
            end,
        })
    }

    /// The question's name, as the client spelled it.
    pub fn name(&self, raw: &[u8]) -> Option<Name> {
        let mut decoder = BinDecoder::new(raw);
        decoder.read_slice(HEADER_LEN).ok()?;
        Name::read(&mut decoder).ok()
    }

    /// The reply size limit, if the rest of the query is an EDNS version 0
    /// OPT record without options, or nothing; `None`: take the full path.
    fn limit(&self, raw: &[u8], tcp: bool) -> Option<(usize, Option<u16>)> {
        let payload = match raw.get(10..12)? {
            [0, 0] if raw.len() == self.end => None,
            [0, 1] => {
                let opt = raw.get(self.end..)?;
                // Root name, type OPT, payload, extended rcode, version 0,
                // flags, no options; the DO bit is not echoed.
                if opt.len() != 11 || opt[..3] != [0, 0, 41] || opt[6] != 0 || opt[9..] != [0, 0] {
                    return None;
                }
                let asked = u16::from_be_bytes([opt[3], opt[4]]);
                Some(asked.clamp(512, crate::serve::wire::MAX_UDP_PAYLOAD))
            }
            _ => return None,
        };
        let limit = match (tcp, payload) {
            (true, _) => usize::from(u16::MAX),
            (false, Some(p)) => usize::from(p),
            (false, None) => 512,
        };
        Some((limit, payload))
    }
}

/// The denial of `raw`: NXDOMAIN with allowdns's SOA (`negative_ttl`), and
/// with EDNS an Extended DNS Error naming `agent`'s policy, byte for byte as
/// `wire::encode` writes it. `None` where that would take more than copying
/// (a name under `invalid.`, which the SOA's names would point into; a
/// reply to truncate; EDNS options): the full path answers.
pub fn denial(
    raw: &[u8],
    q: &Question,
    tcp: bool,
    negative_ttl: u32,
    agent: &str,
) -> Option<Vec<u8>> {
    if q.class != 1 || matches!(q.qtype, RecordType::AXFR | RecordType::IXFR) {
        return None;
    }
    if labels(&raw[HEADER_LEN..q.end - 4])
        .last()
        .is_some_and(|l| l.eq_ignore_ascii_case(b"invalid"))
    {
        return None;
    }
    let (limit, payload) = q.limit(raw, tcp)?;
    let mut out = Vec::with_capacity(q.end + 128);
    out.extend_from_slice(&raw[..2]);
    // QR, the opcode (QUERY) and RD from the query; RA, CD and NXDOMAIN.
    out.push(0x80 | (raw[2] & 0x01));
    out.push(0x80 | (raw[3] & 0x10) | 3);
    out.extend_from_slice(&[0, 1, 0, 0, 0, 1, 0, u8::from(payload.is_some())]);
    out.extend_from_slice(&raw[HEADER_LEN..q.end]);
    // The SOA, owned by the root; its rname points at its mname.
    out.extend_from_slice(&[0, 0, 6, 0, 1]);
    out.extend_from_slice(&negative_ttl.to_be_bytes());
    let mname = out.len() + 2;
    let rdata: &[u8] = b"\x08allowdns\x07invalid\x00\x0ahostmaster";
    out.extend_from_slice(&(rdata.len() as u16 + 2 + 20).to_be_bytes());
    out.extend_from_slice(rdata);
    out.extend_from_slice(&(0xc000 | mname as u16).to_be_bytes());
    for n in [1u32, 3600, 600, 86400, negative_ttl] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    if let Some(payload) = payload {
        let text = format!("allowdns: name not on the allowlist of policy '{agent}'");
        let option = 2 + text.len();
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&payload.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&(4 + option as u16).to_be_bytes());
        out.extend_from_slice(&crate::serve::wire::EDE_OPTION.to_be_bytes());
        out.extend_from_slice(&(option as u16).to_be_bytes());
        out.extend_from_slice(&crate::serve::wire::EDE_BLOCKED.to_be_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    (out.len() <= limit).then_some(out)
}

/// An answer ready to send for one query (any ID, the name in any case).
///
/// The full path echoes the question as the client sent it, and never
/// compresses a record's name against it (hickory-server's encoder keeps
/// the question section whole as its one pointer candidate), so the rest
/// of the reply does not depend on how the question's name is cased: a
/// query spelled in another case (DNS 0x20) gets these bytes with its own
/// question copied in, as the full path would send them.
pub struct Ready {
    /// The query it answers, from the byte after the ID on.
    query: Box<[u8]>,
    /// Where the question's name ends (in the query and the reply alike).
    name_end: usize,
    tcp: bool,
    reply: Box<[u8]>,
    /// Where the TTL of each answer and authority record sits in `reply`.
    ttls: Box<[usize]>,
    built: Instant,
    /// Seconds until its shortest TTL runs out.
    lasts: u32,
    /// The policy set it was decided under.
    pub generation: u64,
    pub rcode: ResponseCode,
    /// Its answer records as sent, for the fence and the audit record.
    answers: Vec<Record>,
}

impl Ready {
    /// Keeps `reply`, the full path's answer to `query`; `None` if it holds
    /// no record with a TTL to count down (nothing then to keep it by).
    pub fn new(
        query: &[u8],
        tcp: bool,
        reply: &[u8],
        answers: Vec<Record>,
        rcode: ResponseCode,
        generation: u64,
    ) -> Option<Ready> {
        let ttls = ttl_offsets(reply)?;
        let lasts = ttls.iter().map(|&at| ttl_at(reply, at)).min()?;
        let end = Question::read(query)?.end;
        // The reply must echo the question as it came, for the copy above.
        if reply.get(HEADER_LEN..end) != query.get(HEADER_LEN..end) {
            return None;
        }
        Some(Ready {
            query: query.get(2..)?.into(),
            name_end: end - 4,
            tcp,
            reply: reply.into(),
            ttls,
            built: Instant::now(),
            lasts,
            generation,
            rcode,
            answers,
        })
    }

    /// Whether this is the answer to `raw` (any ID, the name in any case)
    /// over this transport: every other byte must be the same.
    pub fn answers(&self, raw: &[u8], tcp: bool) -> bool {
        let Some(asked) = raw.get(2..) else {
            return false;
        };
        // Offsets in `query`, which starts after the ID.
        let (name, end) = (HEADER_LEN - 2, self.name_end - 2);
        self.tcp == tcp
            && asked.len() == self.query.len()
            && asked[..name] == self.query[..name]
            // Label lengths are below 64: only letters fold.
            && asked[name..end].eq_ignore_ascii_case(&self.query[name..end])
            && asked[end..] == self.query[end..]
    }

    /// The reply to `raw` at `now`, with its answer records as sent; `None`
    /// once its shortest TTL has run out.
    pub fn reply(&self, raw: &[u8], now: Instant) -> Option<(Vec<u8>, Vec<Record>)> {
        let age = now.saturating_duration_since(self.built).as_secs();
        if age >= u64::from(self.lasts) {
            return None;
        }
        // Counted down as the cache counts its entries down.
        let age = age as u32;
        let mut reply = self.reply.to_vec();
        reply[..2].copy_from_slice(raw.get(..2)?);
        // The client's own spelling of the name.
        reply[HEADER_LEN..self.name_end].copy_from_slice(raw.get(HEADER_LEN..self.name_end)?);
        let mut answers = self.answers.clone();
        if age > 0 {
            for &at in &self.ttls {
                let ttl = ttl_at(&reply, at).saturating_sub(age).max(1);
                reply[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
            }
            for r in &mut answers {
                r.ttl = r.ttl.saturating_sub(age).max(1);
            }
        }
        Some((reply, answers))
    }
}

/// The labels of an uncompressed wire name (its root label left out).
fn labels(mut wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&len, rest) = wire.split_first()?;
        let (label, rest) = rest.split_at_checked(usize::from(len))?;
        wire = rest;
        (len > 0).then_some(label)
    })
}

fn ttl_at(reply: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([reply[at], reply[at + 1], reply[at + 2], reply[at + 3]])
}

/// The offsets of the TTLs of a reply's answer and authority records
/// (the additional section holds only OPT, whose TTL field is flags).
pub fn ttl_offsets(reply: &[u8]) -> Option<Box<[usize]>> {
    let count = |at: usize| {
        Some(usize::from(u16::from_be_bytes([
            *reply.get(at)?,
            *reply.get(at + 1)?,
        ])))
    };
    let (questions, answers, authority) = (count(4)?, count(6)?, count(8)?);
    let mut at = HEADER_LEN;
    for _ in 0..questions {
        at = skip_name(reply, at)? + 4;
    }
    let mut ttls = Vec::with_capacity(answers + authority);
    for _ in 0..answers + authority {
        at = skip_name(reply, at)?;
        let fixed = reply.get(at..at + 10)?;
        ttls.push(at + 4);
        at += 10 + usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        if at > reply.len() {
            return None;
        }
    }
    Some(ttls.into())
}

/// The offset just past the name at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return msg.get(at + 1).map(|_| at + 2),
            l if l & 0xc0 == 0 => at += 1 + usize::from(l),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A reply to host1.allowed.bench A: one answer (a pointer to the
    // question), TTL 300, and an OPT record whose TTL field is not a TTL.
    const QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\
        \x05host1\x07allowed\x05bench\x00\x00\x01\x00\x01";
    const REPLY: &[u8] = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x01\
        \x05host1\x07allowed\x05bench\x00\x00\x01\x00\x01\
        \xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04\x0a\x00\x01\x01\
        \x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00";

    /// The full path's denial of `raw`, as `Handler::begin` and `wire::encode` make it.
    fn full_path_denial(raw: &[u8], tcp: bool, agent: &str, negative_ttl: u32) -> Vec<u8> {
        use crate::serve::handler::{Outcome, deny_soa};
        use crate::serve::wire::{Transport, decode, encode};
        let transport = if tcp { Transport::Tcp } else { Transport::Udp };
        let request = decode(raw, "127.0.0.1:53000".parse().unwrap(), transport).unwrap();
        let outcome = Outcome {
            authority: vec![deny_soa(negative_ttl)],
            decision: crate::observe::audit::Decision::Deny,
            agent: Some(agent.into()),
            ..Outcome::refused(ResponseCode::NXDomain, None)
        };
        encode(&request, &outcome)
    }

    fn query(flags: [u8; 2], labels: &[&[u8]], qtype: u16, opt: Option<&[u8]>) -> Vec<u8> {
        let mut raw = vec![
            0x9a,
            0xbc,
            flags[0],
            flags[1],
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(opt.is_some()),
        ];
        for label in labels {
            raw.push(label.len() as u8);
            raw.extend_from_slice(label);
        }
        raw.push(0);
        raw.extend_from_slice(&qtype.to_be_bytes());
        raw.extend_from_slice(&[0, 1]);
        raw.extend_from_slice(opt.unwrap_or_default());
        raw
    }

    const LONG: [u8; 63] = [b'x'; 63];

    /// Names as labels: plain, mixed case, the root, bytes no policy can
    /// spell, the longest, and `invalid.` near misses.
    fn names() -> Vec<Vec<&'static [u8]>> {
        vec![
            vec![b"c0ffee", b"t1", b"tunnel", b"evil", b"example"],
            vec![b"MiXeD", b"CaSe", b"ExAmPlE"],
            vec![],
            vec![b"with space", b"a\x00b", b"test"],
            vec![b"under_score", b"dash-ed", b"A1"],
            vec![b"dot.inside", b"test"],
            vec![&LONG, &LONG, &LONG, b"example"],
            vec![b"allowdns", b"invalid"],
            vec![b"x", b"INVALID"],
            vec![b"invalidx", b"test"],
        ]
    }

    #[test]
    fn a_prebuilt_denial_is_the_full_paths_byte_for_byte() {
        let names = names();
        let opts: [Option<&[u8]>; 6] = [
            None,
            Some(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]),
            Some(&[0, 0, 41, 0x00, 100, 0, 0, 0x80, 0, 0, 0]),
            Some(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]),
            Some(&[0, 0, 41, 0x10, 0, 0, 1, 0, 0, 0, 0]),
            Some(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 4, 0, 10, 0, 0]),
        ];
        let (mut built, mut tried) = (0, 0);
        for name in &names {
            for opt in opts {
                for flags in [[0x01, 0x00], [0x00, 0x10], [0x01, 0x20]] {
                    for tcp in [false, true] {
                        for agent in ["bench_agent", &"a".repeat(200)] {
                            for qtype in [1u16, 28, 16, 252] {
                                let raw = query(flags, name, qtype, opt);
                                let q = Question::read(&raw).unwrap();
                                tried += 1;
                                let Some(fast) = denial(&raw, &q, tcp, 5, agent) else {
                                    continue;
                                };
                                built += 1;
                                assert_eq!(
                                    fast,
                                    full_path_denial(&raw, tcp, agent, 5),
                                    "{name:?} {opt:?} {flags:?} tcp {tcp} {agent} {qtype}"
                                );
                            }
                        }
                    }
                }
            }
        }
        // Most are built here (not AXFR, not under invalid., no options, version 0).
        assert!(built * 3 > tried, "{built} of {tried} built");
        let plain = query([1, 0], &names[0], 1, None);
        assert!(denial(&plain, &Question::read(&plain).unwrap(), false, 5, "a").is_some());
    }

    #[test]
    fn the_key_read_from_the_wire_is_the_decoded_names() {
        for name in &names() {
            let raw = query([1, 0], name, 1, None);
            let q = Question::read(&raw).unwrap();
            let decoded = q.name(&raw).unwrap();
            assert_eq!(q.key, QueryKey::of(&decoded), "{name:?}");
        }
        // Past 255 bytes on the wire: not a name; the full path answers FORMERR.
        let four: Vec<&[u8]> = vec![&LONG; 4];
        let raw = query([1, 0], &four, 1, None);
        assert!(Question::read(&raw).is_none());
    }

    #[test]
    fn ttls_are_found_in_answers_and_authority_only() {
        assert_eq!(&*ttl_offsets(REPLY).unwrap(), &[43]);
        assert_eq!(ttl_at(REPLY, 43), 300);
        assert!(ttl_offsets(&REPLY[..50]).is_none());
    }

    #[test]
    fn a_kept_answer_takes_the_id_and_counts_down() {
        let ready = Ready::new(QUERY, false, REPLY, Vec::new(), ResponseCode::NoError, 0).unwrap();
        let mut asked = QUERY.to_vec();
        asked[..2].copy_from_slice(&[0xab, 0xcd]);
        assert!(ready.answers(&asked, false));
        assert!(!ready.answers(&asked, true), "kept per transport");
        let (now, _) = ready.reply(&asked, ready.built).unwrap();
        assert_eq!(&now[..2], &[0xab, 0xcd]);
        assert_eq!(&now[2..], &REPLY[2..]);
        let later = ready.built + std::time::Duration::from_secs(100);
        let (then, _) = ready.reply(&asked, later).unwrap();
        assert_eq!(ttl_at(&then, 43), 200);
        assert!(
            ready
                .reply(&asked, ready.built + std::time::Duration::from_secs(300))
                .is_none()
        );
        // DNS 0x20: the same question in another case gets the kept answer
        // with its own question; a type differing only in "case" does not.
        let mut mixed = asked.clone();
        mixed[13..18].copy_from_slice(b"HoSt1");
        assert!(ready.answers(&mixed, false));
        let (echoed, _) = ready.reply(&mixed, ready.built).unwrap();
        assert_eq!(&echoed[12..32], &mixed[12..32]);
        assert_eq!(&echoed[32..], &REPLY[32..]);
        let mut https = asked.clone();
        https[34] = 0x41;
        let kept = Ready::new(&https, false, REPLY, Vec::new(), ResponseCode::NoError, 0);
        assert!(kept.is_none(), "the reply's question is not this query's");
        let mut reply = REPLY.to_vec();
        reply[34] = 0x41;
        let https_ready =
            Ready::new(&https, false, &reply, Vec::new(), ResponseCode::NoError, 0).unwrap();
        let mut other = https.clone();
        other[34] = 0x61;
        assert!(https_ready.answers(&https, false));
        assert!(
            !https_ready.answers(&other, false),
            "type 97 is not type 65"
        );
        let mut longer = asked.clone();
        longer.push(0);
        assert!(!ready.answers(&longer, false));
        let q = Question::read(&asked).unwrap();
        assert_eq!(
            (q.name(&asked).unwrap().to_ascii().as_str(), q.qtype),
            ("host1.allowed.bench.", RecordType::A)
        );
        assert_eq!(q.key.unwrap().as_str(), "host1.allowed.bench");
    }
}
