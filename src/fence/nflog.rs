//! Blocked connections, as the kernel reports them: the ruleset's final
//! deny rule also logs to NFLOG group [`NFLOG_GROUP`], and this subscriber
//! of a namespace's netlink service (src/fence/watch.rs) binds that group,
//! asks for the packet headers only, and turns each packet into an
//! [`Attempt`]. A flow is reported once: a retransmitted SYN or the next
//! datagram of the same 5-tuple within [`DEDUPE`] is not a new attempt.
//!
//! The drop rule does not depend on this: while allowdns is not reading,
//! the kernel drops the messages and the fence holds. Messages the socket
//! could not take are counted from the gaps in the group's sequence numbers.
//!
//! The NFLOG messages are netlink-packet-netfilter's (one per blocked packet,
//! off the query path: not measured); the IP and transport headers inside
//! are read here (`parse`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use netlink_packet_core::{
    NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, ParseableParametrized as _,
};
use netlink_packet_netfilter::nflog::{
    ConfigCmd, ConfigFlags, ConfigMode, ConfigNla, PacketNla, Timeout, ULogMessage, ULogMessageType,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::Socket;

use super::ruleset::NFLOG_GROUP;

/// `NFNL_SUBSYS_ULOG`: the nfnetlink subsystem of NFLOG messages.
pub(super) const NFNL_SUBSYS_ULOG: u8 = 4;
/// Enough for an IPv6 header, a few extension headers and the ports.
const COPY_RANGE: u32 = 128;
/// How long a 5-tuple already reported is not reported again: longer than
/// TCP's first SYN retransmissions.
pub const DEDUPE: Duration = Duration::from_secs(10);
/// Flows remembered for deduplication; beyond this, expired ones go first,
/// then all (a flood of distinct flows is reported in full anyway).
const MAX_FLOWS: usize = 16_384;

/// The transport of an attempt, as the alert spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Proto(pub u8);

impl Proto {
    pub const TCP: Proto = Proto(6);
    pub const UDP: Proto = Proto(17);

    pub fn name(self) -> String {
        match self.0 {
            1 => "icmp".into(),
            6 => "tcp".into(),
            17 => "udp".into(),
            33 => "dccp".into(),
            58 => "icmpv6".into(),
            132 => "sctp".into(),
            136 => "udplite".into(),
            n => format!("proto-{n}"),
        }
    }

    /// Whether the protocol has ports (the ruleset's `th dport`).
    pub fn has_ports(self) -> bool {
        matches!(self.0, 6 | 17 | 33 | 132 | 136)
    }
}

/// One attempt to reach somewhere the sets do not pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub ts: SystemTime,
    /// The namespace it was logged in; `None` is allowdns's own.
    pub netns: Option<Arc<PathBuf>>,
    pub proto: Proto,
    /// Source and destination; port 0 for protocols without ports.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// ICMP type, for ICMP and ICMPv6.
    pub icmp_type: Option<u8>,
    /// Which rule denied it.
    pub reason: Reason,
}

/// The rule that denied an attempt, from its log prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The final rule: no set element passes it (monitor mode may let it through).
    Unlisted,
    /// DNS to a server other than allowdns: denied in every mode.
    Dns,
    /// A special-purpose range the policy does not open: denied in every mode.
    Special,
    /// DNS from an address that is not the namespace's own: denied in every mode.
    Forged,
}

impl Reason {
    fn from_prefix(prefix: &[u8]) -> Reason {
        let rest = prefix
            .strip_prefix(super::ruleset::LOG_PREFIX.as_bytes())
            .unwrap_or_default();
        if rest.starts_with(b"dns ") {
            Reason::Dns
        } else if rest.starts_with(b"special ") {
            Reason::Special
        } else if rest.starts_with(b"forged ") {
            Reason::Forged
        } else {
            Reason::Unlisted
        }
    }

    /// For the audit record; `None` for the final rule.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Reason::Unlisted => None,
            Reason::Dns => Some("dns elsewhere"),
            Reason::Special => Some("special-purpose"),
            Reason::Forged => Some("forged source"),
        }
    }
}

impl Attempt {
    /// `addr:port/proto`, or `addr/proto` without ports.
    pub fn destination(&self) -> String {
        let ip = self.dst.ip();
        if self.proto.has_ports() {
            format!("{}/{}", self.dst, self.proto.name())
        } else {
            match self.icmp_type {
                Some(t) => format!("{ip}/{} (type {t})", self.proto.name()),
                None => format!("{ip}/{}", self.proto.name()),
            }
        }
    }
}

/// What the service loop calls for each attempt and each loss.
pub trait Report: Send {
    fn attempt(&mut self, attempt: Attempt);
    /// `count` messages the kernel could not deliver (0: unknown, an overrun).
    fn lost(&mut self, count: u64);
}

/// The NFLOG subscriber of one namespace.
pub(super) struct Nflog {
    netns: Option<Arc<PathBuf>>,
    report: Box<dyn Report>,
    /// 5-tuple → when it was last reported.
    seen: HashMap<(u8, SocketAddr, SocketAddr), Instant>,
    /// The next sequence number expected, to count messages lost.
    next_seq: Option<u32>,
}

impl Nflog {
    pub(super) fn new(netns: Option<PathBuf>, report: Box<dyn Report>) -> Nflog {
        Nflog {
            netns: netns.map(Arc::new),
            report,
            seen: HashMap::new(),
            next_seq: None,
        }
    }

    /// Binds the group on `socket` and asks for headers only, delivered
    /// within 10 ms. Fails when another process holds the group.
    pub(super) fn bind(socket: &Socket) -> std::io::Result<()> {
        for step in config_requests() {
            socket.send(&step, 0)?;
        }
        Ok(())
    }

    pub(super) fn on_packet(&mut self, payload: &[u8], now: Instant) {
        let nlas = match ULogMessage::parse_with_param(
            payload.get(4..).unwrap_or_default(),
            Nflog::kind(),
        ) {
            Ok(ULogMessage::Packet(nlas)) => nlas,
            Ok(_) => return,
            // Logged, so denied, but not told: counted like a message the socket could not take.
            Err(e) => {
                tracing::debug!("undecodable NFLOG message: {e}");
                self.report.lost(1);
                return;
            }
        };
        let (mut prefix, mut seq, mut packet) = (None, None, None);
        for nla in &nlas {
            match nla {
                PacketNla::Prefix(p) => prefix = Some(p.as_bytes()),
                PacketNla::Seq(s) => seq = Some(*s),
                PacketNla::Payload(p) => packet = Some(p.as_slice()),
                _ => {}
            }
        }
        // Only allowdns's own log rules (another rule may use the group too).
        if prefix.is_some_and(|p| !p.starts_with(b"allowdns ")) {
            return;
        }
        if let Some(seq) = seq {
            if let Some(expected) = self.next_seq
                && seq > expected
            {
                self.report.lost(u64::from(seq - expected));
            }
            self.next_seq = Some(seq.wrapping_add(1));
        }
        let Some(packet) = packet.and_then(parse) else {
            return;
        };
        let key = (packet.proto.0, packet.src, packet.dst);
        if self
            .seen
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < DEDUPE)
        {
            return;
        }
        if self.seen.len() >= MAX_FLOWS {
            self.seen.retain(|_, at| now.duration_since(*at) < DEDUPE);
            if self.seen.len() >= MAX_FLOWS {
                self.seen.clear();
            }
        }
        self.seen.insert(key, now);
        self.report.attempt(Attempt {
            ts: SystemTime::now(),
            netns: self.netns.clone(),
            proto: packet.proto,
            src: packet.src,
            dst: packet.dst,
            icmp_type: packet.icmp_type,
            reason: prefix.map_or(Reason::Unlisted, Reason::from_prefix),
        });
    }

    pub(super) fn on_overrun(&mut self) {
        // The sequence gap says how many; the overrun itself is counted too.
        self.report.lost(0);
    }

    pub(super) fn kind() -> u8 {
        ULogMessageType::Packet.into()
    }
}

/// The NFULNL_MSG_CONFIG requests for the group, one attribute each, in
/// order: bind, copy the first [`COPY_RANGE`] bytes, flush within 10 ms,
/// number the messages, and at most 64 packets per message.
fn config_requests() -> Vec<Vec<u8>> {
    [
        ConfigNla::Cmd(ConfigCmd::Bind),
        ConfigNla::Mode(ConfigMode::new_packet(COPY_RANGE)),
        ConfigNla::Timeout(Timeout::new(1)),
        ConfigNla::Flags(ConfigFlags::SEQ),
        ConfigNla::QThresh(64),
    ]
    .into_iter()
    .map(|nla| {
        // No ack asked: a refusal still comes back as an error (watch.rs reports it).
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        let message = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFLOG_GROUP),
            ULogMessage::Config(vec![nla]),
        );
        let mut message = NetlinkMessage::new(header, message.into());
        message.finalize();
        let mut buf = vec![0; message.buffer_len()];
        message.serialize(&mut buf);
        buf
    })
    .collect()
}

#[derive(Debug, PartialEq)]
struct Packet {
    proto: Proto,
    src: SocketAddr,
    dst: SocketAddr,
    icmp_type: Option<u8>,
}

/// The 5-tuple of a packet starting at its network header (an inet table
/// logs both families: the version nibble tells them apart).
fn parse(p: &[u8]) -> Option<Packet> {
    let version = p.first()? >> 4;
    let (proto, src, dst, l4, first_fragment) = match version {
        4 => {
            let ihl = usize::from(p.first()? & 0x0f) * 4;
            let frag = u16::from_be_bytes([*p.get(6)?, *p.get(7)?]) & 0x1fff;
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(p.get(12..16)?).ok()?);
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(p.get(16..20)?).ok()?);
            (
                *p.get(9)?,
                IpAddr::V4(src),
                IpAddr::V4(dst),
                p.get(ihl..).unwrap_or_default(),
                frag == 0,
            )
        }
        6 => {
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(p.get(8..24)?).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(p.get(24..40)?).ok()?);
            let mut next = *p.get(6)?;
            let mut at = 40;
            let mut first = true;
            // Extension headers, bounded: hop-by-hop, routing, destination, fragment.
            for _ in 0..8 {
                match next {
                    0 | 43 | 60 => {
                        let len = (usize::from(*p.get(at + 1).unwrap_or(&0)) + 1) * 8;
                        next = *p.get(at).unwrap_or(&59);
                        at += len;
                    }
                    44 => {
                        let off = u16::from_be_bytes([
                            *p.get(at + 2).unwrap_or(&0),
                            *p.get(at + 3).unwrap_or(&0),
                        ]) >> 3;
                        first = off == 0;
                        next = *p.get(at).unwrap_or(&59);
                        at += 8;
                    }
                    _ => break,
                }
            }
            (
                next,
                IpAddr::V6(src),
                IpAddr::V6(dst),
                p.get(at..).unwrap_or_default(),
                first,
            )
        }
        _ => return None,
    };
    let proto = Proto(proto);
    let (mut sport, mut dport, mut icmp_type) = (0, 0, None);
    if first_fragment && proto.has_ports() && l4.len() >= 4 {
        sport = u16::from_be_bytes([l4[0], l4[1]]);
        dport = u16::from_be_bytes([l4[2], l4[3]]);
    } else if first_fragment && matches!(proto.0, 1 | 58) && !l4.is_empty() {
        icmp_type = Some(l4[0]);
    }
    Some(Packet {
        proto,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        icmp_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Clone)]
    struct Seen(std::sync::Arc<std::sync::Mutex<(Vec<Attempt>, Vec<u64>)>>);
    impl Report for Seen {
        fn attempt(&mut self, attempt: Attempt) {
            self.0.lock().unwrap().0.push(attempt);
        }
        fn lost(&mut self, count: u64) {
            self.0.lock().unwrap().1.push(count);
        }
    }

    /// An NFULNL_MSG_PACKET payload (nfgenmsg, then `nlas`) as the kernel
    /// sends it.
    fn packet_message(nlas: Vec<PacketNla>) -> Vec<u8> {
        use netlink_packet_core::Emitable as _;
        let message = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, NFLOG_GROUP),
            ULogMessage::Packet(nlas),
        );
        let mut out = vec![0; message.buffer_len()];
        message.emit(&mut out);
        out
    }

    /// A packet as the ruleset's final rule logs it: prefix, sequence, packet.
    fn message(seq: u32, packet: &[u8]) -> Vec<u8> {
        packet_message(vec![
            PacketNla::Prefix(c"allowdns egress denied: ".into()),
            PacketNla::Seq(seq),
            PacketNla::Payload(packet.to_vec()),
        ])
    }

    fn syn(sport: u16, dport: u16) -> Vec<u8> {
        let mut v4 = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        v4.extend([10, 0, 0, 2, 192, 0, 2, 9]);
        v4.extend(sport.to_be_bytes());
        v4.extend(dport.to_be_bytes());
        v4
    }

    #[test]
    fn a_flow_is_reported_once_and_sequence_gaps_are_counted_as_lost() {
        let seen = Seen::default();
        let mut nflog = Nflog::new(None, Box::new(seen.clone()));
        let now = Instant::now();
        nflog.on_packet(&message(0, &syn(40000, 443)), now);
        // The retransmitted SYN: the same flow, not reported again.
        nflog.on_packet(&message(1, &syn(40000, 443)), now + Duration::from_secs(1));
        // Three messages the socket could not take, then another flow.
        nflog.on_packet(&message(5, &syn(40001, 443)), now + Duration::from_secs(2));
        // The first flow again after the window: a new attempt.
        nflog.on_packet(
            &message(6, &syn(40000, 443)),
            now + DEDUPE + Duration::from_secs(1),
        );
        let (attempts, lost) = seen.0.lock().unwrap().clone();
        let ports: Vec<u16> = attempts.iter().map(|a| a.src.port()).collect();
        assert_eq!(ports, [40000, 40001, 40000]);
        assert_eq!(lost, [3]);
        assert_eq!(attempts[0].destination(), "192.0.2.9:443/tcp");
    }

    #[test]
    fn headers_give_the_five_tuple() {
        // IPv4 TCP SYN 10.0.0.2:40000 -> 192.0.2.9:443.
        let mut v4 = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        v4.extend([10, 0, 0, 2, 192, 0, 2, 9]);
        v4.extend(40000u16.to_be_bytes());
        v4.extend(443u16.to_be_bytes());
        let p = parse(&v4).unwrap();
        assert_eq!(p.dst, "192.0.2.9:443".parse().unwrap());
        assert_eq!(p.src, "10.0.0.2:40000".parse().unwrap());
        assert_eq!(p.proto, Proto::TCP);
        // IPv6 with a destination-options header before UDP.
        let mut v6 = vec![0x60, 0, 0, 0, 0, 16, 60, 64];
        v6.extend("fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend("2001:db8::5".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend([17, 0, 1, 4, 0, 0, 0, 0]);
        v6.extend(5353u16.to_be_bytes());
        v6.extend(53u16.to_be_bytes());
        let p = parse(&v6).unwrap();
        assert_eq!(p.dst, "[2001:db8::5]:53".parse().unwrap());
        assert_eq!(p.proto, Proto::UDP);
        // Truncated: no ports, still an attempt.
        let p = parse(&v4[..20]).unwrap();
        assert_eq!(p.dst.port(), 0);
        assert!(parse(&[]).is_none());
    }

    /// The requests that bind the group, in order, byte for byte.
    const BIND: &str = "1c00000001040100000000000000000000000035050001000100000020000000010401000000000000000000000000350a00020000000080020000001c0000000104010000000000000000000000003508000400000000011c0000000104010000000000000000000000003506000600000100001c000000010401000000000000000000000000350800050000000040";

    #[test]
    fn the_bind_requests_are_pinned() {
        let hex: String = config_requests()
            .concat()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, BIND);
    }

    #[test]
    fn a_record_with_owner_and_a_truncated_packet_is_one_attempt() {
        let seen = Seen::default();
        let mut nflog = Nflog::new(None, Box::new(seen.clone()));
        // A local socket's packet carries its owner; the copy stops after
        // the addresses (the IPv4 header of a SYN cut at 20 bytes).
        let record = packet_message(vec![
            PacketNla::PacketHdr(
                netlink_packet_netfilter::nflog::PacketHdr::parse(&[8, 0, 3, 0]).unwrap(),
            ),
            PacketNla::Prefix(c"allowdns egress denied: ".into()),
            PacketNla::Uid(1000),
            PacketNla::Gid(1000),
            PacketNla::Seq(7),
            PacketNla::Payload(syn(40000, 443)[..20].to_vec()),
        ]);
        nflog.on_packet(&record, Instant::now());
        let (attempts, lost) = seen.0.lock().unwrap().clone();
        assert_eq!(lost, [] as [u64; 0]);
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].dst, "192.0.2.9:0".parse().unwrap());
        assert_eq!(attempts[0].destination(), "192.0.2.9:0/tcp");
        // Another rule's record in the group: not an attempt of ours.
        let foreign = packet_message(vec![
            PacketNla::Prefix(c"other ".into()),
            PacketNla::Payload(syn(40001, 443)),
        ]);
        nflog.on_packet(&foreign, Instant::now());
        // A record that does not decode (a prefix without its NUL) is counted lost.
        let mut broken = message(8, &syn(40002, 443));
        let at = broken.windows(2).position(|w| w == b": ").unwrap() + 2;
        broken[at] = b'x';
        nflog.on_packet(&broken, Instant::now());
        let (attempts, lost) = seen.0.lock().unwrap().clone();
        assert_eq!(attempts.len(), 1);
        assert_eq!(lost, [1]);
    }
}
