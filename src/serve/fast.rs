//! The cache-hit fast path's wire work: reading the one question a hit
//! needs (its name and type, not the whole message), and answers kept
//! ready to send, whose ID and TTLs are patched per hit.
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

const HEADER_LEN: usize = 12;

/// The question of a plain query: opcode QUERY, one question, no answer
/// or authority records. Anything else takes the full path.
pub struct Question {
    pub name: Name,
    pub qtype: RecordType,
}

impl Question {
    pub fn read(raw: &[u8]) -> Option<Question> {
        let header = raw.get(..HEADER_LEN)?;
        if header[2] & 0xf8 != 0 || header[4..6] != [0, 1] || header[6..10] != [0; 4] {
            return None;
        }
        let mut decoder = BinDecoder::new(raw);
        decoder.read_slice(HEADER_LEN).ok()?;
        let name = Name::read(&mut decoder).ok()?;
        let qtype = RecordType::read(&mut decoder).ok()?;
        Some(Question { name, qtype })
    }
}

/// An answer ready to send for one exact query.
pub struct Ready {
    /// The query it answers, from the byte after the ID on.
    query: Box<[u8]>,
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
        Some(Ready {
            query: query.get(2..)?.into(),
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

    /// Whether this is the answer to `raw` (any ID) over this transport.
    pub fn answers(&self, raw: &[u8], tcp: bool) -> bool {
        self.tcp == tcp && raw.get(2..) == Some(&self.query[..])
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
        let q = Question::read(&asked).unwrap();
        assert_eq!(
            (q.name.to_ascii().as_str(), q.qtype),
            ("host1.allowed.bench.", RecordType::A)
        );
    }
}
