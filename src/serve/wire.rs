//! The DNS wire layer every transport goes through, as NLnet Labs' `domain`
//! does with its mandatory middleware: what is dropped unanswered, decoding,
//! the checks the RFCs require before any policy looks at a name, EDNS,
//! truncation (UDP) and encoding.

use std::net::SocketAddr;

use hickory_server::net::xfer::Protocol;
use hickory_server::proto::ProtoError;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::opt::EdnsOption;
use hickory_server::proto::rr::{DNSClass, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::server::Request;
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder};

use crate::observe::audit::Decision;
use crate::observe::metrics::METRICS;
use crate::serve::exfil::Mark;
use crate::serve::handler::Outcome;

/// Largest UDP payload advertised back (the DNS flag day 2020 value).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// A DNS header; anything shorter cannot even be answered.
const HEADER_LEN: usize = 12;

/// How a message arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }

    fn protocol(self) -> Protocol {
        match self {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        }
    }

    /// The transport of a decoded request.
    pub fn of(request: &Request) -> Transport {
        match request.protocol() {
            Protocol::Tcp => Transport::Tcp,
            _ => Transport::Udp,
        }
    }
}

/// Why a message gets no reply at all (it is counted instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than a header: there is no ID to answer to.
    Short,
    /// QR=1, a response: answering those would make allowdns a reflector.
    Response,
}

impl Dropped {
    /// Counts it (`allowdns_dropped_messages_total`).
    pub fn count(self) {
        match self {
            Dropped::Short => METRICS.dropped_short(),
            Dropped::Response => METRICS.dropped_response(),
        }
    }
}

/// Drops what must never be answered; everything else gets a reply.
pub fn screen(raw: &[u8]) -> Result<(), Dropped> {
    match raw.get(2) {
        _ if raw.len() < HEADER_LEN => Err(Dropped::Short),
        Some(flags) if flags & 0x80 != 0 => Err(Dropped::Response),
        _ => Ok(()),
    }
}

/// Parses a query; an error is answered FORMERR from the header alone.
pub fn decode(raw: &[u8], client: SocketAddr, transport: Transport) -> Result<Request, ProtoError> {
    Request::from_bytes(raw.to_vec(), client, transport.protocol())
}

/// The checks every query passes before its name is looked at (RFC 1035,
/// 6891, 5936/1995): the response code to refuse it with otherwise.
pub fn check(request: &Request) -> Result<(), ResponseCode> {
    if request.metadata.op_code != OpCode::Query {
        return Err(ResponseCode::NotImp);
    }
    let [query] = request.queries.queries() else {
        return Err(ResponseCode::FormErr);
    };
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return Err(ResponseCode::BADVERS);
    }
    // Zone transfers and other classes (version.bind CH) are not lookups an
    // agent needs: REFUSED whatever the name, so no alert and no name leaks.
    let query = query.original();
    if query.query_class() != DNSClass::IN
        || matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR)
    {
        return Err(ResponseCode::Refused);
    }
    Ok(())
}

/// A reply of just a header, for requests that cannot be parsed or answered:
/// the query's ID, opcode and RD bit, with QR, RA and `rcode` set.
pub fn header_only_reply(raw: &[u8], rcode: ResponseCode) -> Option<Vec<u8>> {
    let header = raw.get(..HEADER_LEN)?;
    let mut reply = vec![0u8; HEADER_LEN];
    reply[..2].copy_from_slice(&header[..2]);
    reply[2] = 0x80 | (header[2] & 0x79);
    reply[3] = 0x80 | rcode.low();
    Some(reply)
}

type Records<'a> = std::slice::Iter<'a, Record>;
type Empty<'a> = std::iter::Empty<&'a Record>;
type Response<'q, 'a> = MessageResponse<'q, 'a, Records<'a>, Records<'a>, Empty<'a>, Empty<'a>>;

/// The EDNS option code of an Extended DNS Error (RFC 8914), which hickory
/// has no type for.
pub const EDE_OPTION: u16 = 15;
/// RFC 8914 info codes a denial carries.
pub const EDE_BLOCKED: u16 = 15;
pub const EDE_FILTERED: u16 = 17;
pub const EDE_PROHIBITED: u16 = 18;

/// Why an answer was denied or filtered, as an Extended DNS Error: its
/// info code and EXTRA-TEXT naming allowdns and the agent's policy.
fn extended_error(outcome: &Outcome) -> Option<(u16, String)> {
    let agent = outcome.agent.as_deref().unwrap_or("-");
    match (outcome.decision, outcome.exfil) {
        (Decision::Deny, Some(Mark::Budget)) => Some((
            EDE_PROHIBITED,
            format!("allowdns: exfiltration budget of policy '{agent}' spent for this domain"),
        )),
        (Decision::Deny, Some(Mark::Qtype)) => Some((
            EDE_PROHIBITED,
            format!("allowdns: query type not allowed under this name by policy '{agent}'"),
        )),
        (Decision::Deny, _) => Some((
            EDE_BLOCKED,
            format!("allowdns: name not on the allowlist of policy '{agent}'"),
        )),
        _ if !outcome.stripped.is_empty() => Some((
            EDE_FILTERED,
            format!("allowdns: special-purpose addresses removed by policy '{agent}'"),
        )),
        _ => None,
    }
}

/// EDNS for the reply: present when the query had it, payload capped, with
/// an Extended DNS Error when the answer was denied or filtered.
fn response_edns(request: &Request, outcome: &Outcome) -> Option<Edns> {
    request.edns.as_ref().map(|req| {
        let mut edns = Edns::new();
        edns.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
        edns.set_version(0);
        if let Some((code, text)) = extended_error(outcome) {
            let mut data = code.to_be_bytes().to_vec();
            data.extend_from_slice(text.as_bytes());
            edns.options_mut()
                .insert(EdnsOption::Unknown(EDE_OPTION, data));
        }
        edns
    })
}

fn build<'q, 'a>(
    request: &'q Request,
    edns: Option<&'q Edns>,
    outcome: &'a Outcome,
) -> Response<'q, 'a> {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = outcome.rcode;
    metadata.recursion_available = true;
    metadata.authoritative = outcome.authoritative;
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if let Some(edns) = edns {
        builder.edns(edns);
    }
    builder.build(
        metadata,
        outcome.answers.iter(),
        outcome.authority.iter(),
        std::iter::empty(),
        std::iter::empty(),
    )
}

/// The reply bytes (without TCP's length prefix). Over UDP they are truncated
/// (TC) to the client's payload size, 512 without EDNS; over TCP to 64 KiB.
pub fn encode(request: &Request, outcome: &Outcome) -> Vec<u8> {
    let edns = response_edns(request, outcome);
    let max = match Transport::of(request) {
        Transport::Tcp => u16::MAX,
        Transport::Udp => edns.as_ref().map_or(512, Edns::max_payload),
    };
    // A question section refused unread is not echoed: its compression
    // pointers may aim into the header, which the reply changes.
    if request.queries.queries().len() != 1 {
        return header_reply(request, outcome.rcode);
    }
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(max);
    if build(request, edns.as_ref(), outcome)
        .destructive_emit(&mut encoder)
        .is_ok()
    {
        return bytes;
    }
    tracing::error!(client = %request.src(), "cannot encode response; answering SERVFAIL");
    servfail(request)
}

/// A SERVFAIL header for `request`, when nothing better can be sent.
pub fn servfail(request: &Request) -> Vec<u8> {
    header_reply(request, ResponseCode::ServFail)
}

/// A reply of the header alone, no section echoed.
fn header_reply(request: &Request, rcode: ResponseCode) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    let mut encoder = BinEncoder::new(&mut bytes);
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = rcode;
    metadata.recursion_available = true;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    let _ = header.emit(&mut encoder);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(class: u16, qtype: u16, flags: u8, opcode: u8) -> Vec<u8> {
        let mut raw = vec![0x12, 0x34, flags | (opcode << 3), 0, 0, 1, 0, 0, 0, 0, 0, 0];
        raw.extend_from_slice(b"\x07version\x04bind\x00");
        raw.extend_from_slice(&qtype.to_be_bytes());
        raw.extend_from_slice(&class.to_be_bytes());
        raw
    }

    fn checked(raw: &[u8]) -> Result<(), ResponseCode> {
        let client = "127.0.0.1:1".parse().unwrap();
        check(&decode(raw, client, Transport::Tcp).unwrap())
    }

    #[test]
    fn short_messages_and_responses_are_dropped() {
        assert_eq!(screen(&[0; 11]), Err(Dropped::Short));
        assert_eq!(screen(&[]), Err(Dropped::Short));
        assert_eq!(screen(&query(1, 1, 0x80, 0)), Err(Dropped::Response));
        assert_eq!(screen(&query(1, 1, 0x01, 0)), Ok(()));
    }

    #[test]
    fn the_mandatory_checks_refuse_before_any_name_is_looked_at() {
        assert_eq!(checked(&query(1, 1, 0, 0)), Ok(()));
        for (class, qtype, opcode, refused, what) in [
            (3, 16, 0, ResponseCode::Refused, "CH"),
            (255, 1, 0, ResponseCode::Refused, "ANY class"),
            (1, 252, 0, ResponseCode::Refused, "AXFR"),
            (1, 251, 0, ResponseCode::Refused, "IXFR"),
            (1, 1, 2, ResponseCode::NotImp, "STATUS"),
        ] {
            assert_eq!(
                checked(&query(class, qtype, 0, opcode)),
                Err(refused),
                "{what}"
            );
        }
        let mut none = query(1, 1, 0, 0);
        none[5] = 0;
        none.truncate(12);
        assert_eq!(checked(&none), Err(ResponseCode::FormErr), "no question");
    }

    #[test]
    fn a_header_only_reply_keeps_id_opcode_and_rd() {
        let reply = header_only_reply(&query(1, 1, 0x01, 0), ResponseCode::FormErr).unwrap();
        assert_eq!(reply, [0x12, 0x34, 0x81, 0x81, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(header_only_reply(&[0; 5], ResponseCode::FormErr), None);
    }
}
