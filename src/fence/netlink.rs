//! A minimal nfnetlink client for nftables sets: just enough to add elements
//! with timeouts in one batched, acknowledged transaction, to check that a set
//! exists with the expected type, and to list a set's elements.
//!
//! Talking netlink directly instead of spawning `nft` (about 15 ms a call)
//! keeps feeding cheap enough to sit on the query path. The messages are
//! netlink-packet-netfilter's (feed bench: RATIO_PLACEHOLDER).

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

pub use crate::policy::firewall::Family;
use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable as _, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    Nla, NlasIterator,
};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetAttribute, SetElementAttribute,
    SetElementList, SetElementMessage, SetFlags, SetMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    NetfilterSubsystem,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

const NFTA_DATA_VALUE: u16 = 1;
/// `struct nlmsghdr`.
const NETLINK_HEADER_LEN: usize = 16;

/// Set flags (`enum nft_set_flags`).
pub const NFT_SET_INTERVAL: u32 = SetFlags::Interval.bits();
pub const NFT_SET_TIMEOUT: u32 = SetFlags::Timeout.bits();

fn proto_family(family: Family) -> NetfilterProtoFamily {
    match family {
        Family::Inet => NetfilterProtoFamily::Inet,
        Family::Ip => NetfilterProtoFamily::IPv4,
        Family::Ip6 => NetfilterProtoFamily::IPv6,
    }
}

/// The `nfgenmsg` family byte of a family, as events carry it.
pub(super) fn nfproto(family: Family) -> u8 {
    proto_family(family).into()
}

/// One set element: a key, an optional range end (interval sets), a
/// timeout (none means permanent), and a label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub timeout: Option<Duration>,
    /// Kept with the element in the kernel as nft's `comment` (at most
    /// [`LABEL_MAX`] bytes), so a later allowdns can tell why it is there.
    pub label: Option<String>,
}

/// The longest comment `nft` reads back.
pub const LABEL_MAX: usize = 127;

// Hand-written: nft's comment is libnftnl's user-data TLV inside NFTA_SET_ELEM_USERDATA, which netlink-packet-netfilter 0.4 carries only as raw bytes.
/// nft's user data for an element comment: a (type 0, length) TLV holding
/// the NUL-terminated text. A label too long is not written at all: cut,
/// it could read back as another name (the take-over withdraws unlabelled
/// elements).
fn comment_udata(label: &str) -> Option<Vec<u8>> {
    let text = label.as_bytes();
    if text.len() > LABEL_MAX {
        return None;
    }
    let mut out = vec![0, (text.len() + 1) as u8];
    out.extend_from_slice(text);
    out.push(0);
    Some(out)
}

fn comment_of(udata: &[u8]) -> Option<String> {
    let mut at = udata;
    while let [kind, len, rest @ ..] = at {
        let value = rest.get(..usize::from(*len))?;
        if *kind == 0 {
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            return String::from_utf8(text.to_vec()).ok();
        }
        at = &rest[usize::from(*len)..];
    }
    None
}

/// What the kernel says about an element when listing a set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    /// Time left before the element expires; `None` for permanent elements.
    pub expires_in: Option<Duration>,
    /// Its comment, as [`Element::label`] wrote it.
    pub label: Option<String>,
}

/// What the kernel says about a set.
#[derive(Clone, Copy, Debug)]
pub struct SetInfo {
    pub key_len: u32,
    pub flags: u32,
    /// Unique per set instance: a recreated set (a ruleset reload) has a new one.
    pub handle: u64,
}

/// Set element changes for one set, as part of a batch.
pub struct SetOp<'a> {
    pub family: Family,
    pub table: &'a str,
    pub set: &'a str,
    pub add: &'a [Element],
    /// Elements to remove (only keys and key ends matter).
    pub delete: &'a [Element],
}

/// A netlink socket in one network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

/// One data message of a batch, to name what the kernel refused.
struct Sent<'a> {
    seq: u32,
    table: &'a str,
    set: &'a str,
    adding: bool,
    elements: &'a [Element],
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Never wait forever for the kernel: a missing ack fails closed.
        let timeout = nix::sys::time::TimeVal::new(2, 0);
        nix::sys::socket::setsockopt(
            &socket.as_fd(),
            nix::sys::socket::sockopt::ReceiveTimeout,
            &timeout,
        )
        .map_err(io::Error::from)?;
        let _ = socket.set_rx_buf_sz(1 << 20);
        // The kernel then says which element of a message it refused.
        let _ = socket.set_ext_ack(true);
        Ok(Netlink { socket, seq: 1 })
    }

    fn next_seq(&mut self) -> u32 {
        next_seq(&mut self.seq)
    }

    /// Applies element changes to several sets in one atomic transaction.
    pub fn apply(&mut self, ops: &[SetOp<'_>]) -> io::Result<()> {
        let (buf, sent, markers) = encode_batch(ops, &mut self.seq);
        if sent.is_empty() {
            return Ok(());
        }
        self.drain();
        self.socket.send(&buf, 0)?;
        self.wait_acks(&sent, markers)
    }

    /// Discards replies left over from an earlier exchange (after a timeout),
    /// so they cannot be mistaken for this one's.
    fn drain(&mut self) {
        let mut buf = Vec::with_capacity(1 << 16);
        loop {
            buf.clear();
            if self.socket.recv(&mut buf, nix::libc::MSG_DONTWAIT).is_err() {
                return;
            }
        }
    }

    /// Waits for an ack of every data message in the batch; an error on any
    /// message of the batch (markers included) fails it, naming the set.
    /// Replies with other sequence numbers are stale and ignored.
    fn wait_acks(&mut self, sent: &[Sent<'_>], markers: [u32; 2]) -> io::Result<()> {
        let mut pending: Vec<u32> = sent.iter().map(|s| s.seq).collect();
        let mut buf = Vec::with_capacity(1 << 16);
        while !pending.is_empty() {
            buf.clear();
            self.socket.recv(&mut buf, 0)?;
            for raw in messages(&buf) {
                let seq = raw.sequence_number();
                let data = sent.iter().find(|s| s.seq == seq);
                if data.is_none() && !markers.contains(&seq) {
                    continue;
                }
                let error = match decode(raw)?.payload {
                    NetlinkPayload::Error(e) => e,
                    _ => continue,
                };
                pending.retain(|&s| s != seq);
                if error.code.is_some() {
                    let source = io::Error::from_raw_os_error(-error.raw_code());
                    return Err(match data {
                        Some(s) => refused(s, bad_attribute(&error.header), source),
                        None => source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The set's key length and flags, or the kernel's error (ENOENT, EPERM…).
    pub fn get_set(&mut self, family: Family, table: &str, set: &str) -> io::Result<SetInfo> {
        let seq = self.next_seq();
        self.socket.send(&get_set(family, table, set, seq), 0)?;
        let mut info = None;
        self.read_replies(seq, |reply| {
            let NfTablesMessage::NewSet(SetMessage { attributes }) = reply else {
                return;
            };
            let mut found = SetInfo {
                key_len: 0,
                flags: 0,
                handle: 0,
            };
            for attribute in attributes {
                match attribute {
                    SetAttribute::KeyLen(n) => found.key_len = n,
                    SetAttribute::Flags(f) => found.flags = f.bits(),
                    SetAttribute::Handle(h) => found.handle = h,
                    _ => {}
                }
            }
            info = Some(found);
        })?;
        info.ok_or_else(|| io::Error::other("kernel sent no set description"))
    }

    /// Every element of a set, with time left.
    pub fn list_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
    ) -> io::Result<Vec<Listed>> {
        let seq = self.next_seq();
        self.socket
            .send(&list_elements(family, table, set, seq), 0)?;
        let mut out = Vec::new();
        self.read_replies(seq, |reply| {
            if let NfTablesMessage::NewSetElement(SetElementMessage { attributes }) = reply {
                listed(attributes, &mut out);
            }
        })?;
        Ok(out)
    }

    /// Reads the replies to request `seq`, handing each nf_tables message
    /// to `on_data`, until the ack, an error or the end of a dump.
    fn read_replies(
        &mut self,
        seq: u32,
        mut on_data: impl FnMut(NfTablesMessage),
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(1 << 16);
        loop {
            buf.clear();
            self.socket.recv(&mut buf, 0)?;
            for raw in messages(&buf) {
                if raw.sequence_number() != seq {
                    continue;
                }
                // The set changed during the dump: the listing may miss elements.
                if raw.flags() & NLM_F_DUMP_INTR != 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "the kernel interrupted the dump (the set changed meanwhile)",
                    ));
                }
                match decode(raw)?.payload {
                    // A dump's end carries its status; an interrupted or failed dump is an error.
                    NetlinkPayload::Done(done) => {
                        return match done.code {
                            0 => Ok(()),
                            e => Err(io::Error::from_raw_os_error(-e)),
                        };
                    }
                    NetlinkPayload::Error(e) => {
                        return match e.raw_code() {
                            0 => Ok(()),
                            e => Err(io::Error::from_raw_os_error(-e)),
                        };
                    }
                    NetlinkPayload::InnerMessage(NetfilterMessage {
                        inner: NetfilterMessageInner::NfTables(reply),
                        ..
                    }) => on_data(reply),
                    _ => {}
                }
            }
        }
    }
}

/// The request for one set's description (GETSET, acked).
fn get_set(family: Family, table: &str, set: &str, seq: u32) -> Vec<u8> {
    let request = NfTablesMessage::GetSet(SetMessage {
        attributes: vec![
            SetAttribute::Table(table.to_string()),
            SetAttribute::Name(set.to_string()),
        ],
    });
    request_bytes(family, request, NLM_F_REQUEST | NLM_F_ACK, seq)
}

/// The request for a dump of one set's elements (GETSETELEM).
fn list_elements(family: Family, table: &str, set: &str, seq: u32) -> Vec<u8> {
    let request = NfTablesMessage::GetSetElement(SetElementMessage {
        attributes: vec![
            SetElementList::Table(table.to_string()),
            SetElementList::Set(set.to_string()),
        ],
    });
    request_bytes(family, request, NLM_F_REQUEST | NLM_F_DUMP, seq)
}

fn request_bytes(family: Family, request: NfTablesMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    let header = NetfilterHeader::new(proto_family(family), 0, 0);
    emit(&mut buf, NetfilterMessage::new(header, request), flags, seq);
    buf
}

fn next_seq(seq: &mut u32) -> u32 {
    *seq = seq.wrapping_add(1).max(1);
    *seq
}

/// One transaction: batch begin, the data messages, batch end; what was
/// sent (to name a refusal), and the markers' sequence numbers.
fn encode_batch<'a>(ops: &[SetOp<'a>], seq: &mut u32) -> (Vec<u8>, Vec<Sent<'a>>, [u32; 2]) {
    let mut buf = Vec::with_capacity(512);
    let marker = |kind| {
        NetfilterMessage::new(
            // nfgenmsg's resource id names the subsystem the batch is for.
            NetfilterHeader::new(
                NetfilterProtoFamily::Unspec,
                0,
                u8::from(NetfilterSubsystem::NfTables).into(),
            ),
            kind,
        )
    };
    let begin = next_seq(seq);
    emit(
        &mut buf,
        marker(ControlMessage::BatchBegin),
        NLM_F_REQUEST,
        begin,
    );
    let mut sent = Vec::new();
    for op in ops {
        for (adding, elements) in [(false, op.delete), (true, op.add)] {
            // Large lists are split: 64 elements with the longest labels make about 12 KB.
            for chunk in elements.chunks(64) {
                let this = next_seq(seq);
                let body = SetElementMessage {
                    attributes: vec![
                        SetElementList::Table(op.table.to_string()),
                        SetElementList::Set(op.set.to_string()),
                        SetElementList::Elements(
                            chunk.iter().map(|e| element(e, adding)).collect(),
                        ),
                    ],
                };
                let (inner, flags) = if adding {
                    (
                        NfTablesMessage::NewSetElement(body),
                        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
                    )
                } else {
                    (
                        NfTablesMessage::DeleteSetElement(body),
                        NLM_F_REQUEST | NLM_F_ACK,
                    )
                };
                let header = NetfilterHeader::new(proto_family(op.family), 0, 0);
                emit(&mut buf, NetfilterMessage::new(header, inner), flags, this);
                sent.push(Sent {
                    seq: this,
                    table: op.table,
                    set: op.set,
                    adding,
                    elements: chunk,
                });
            }
        }
    }
    let end = next_seq(seq);
    emit(
        &mut buf,
        marker(ControlMessage::BatchEnd),
        NLM_F_REQUEST,
        end,
    );
    (buf, sent, [begin, end])
}

/// An element as NEWSETELEM (`adding`) or DELSETELEM carries it.
fn element(e: &Element, adding: bool) -> ListAttribute<SetElementAttribute> {
    let mut attributes = vec![SetElementAttribute::Key(DataAttribute::Value(
        e.key.clone(),
    ))];
    if let Some(end) = &e.key_end {
        attributes.push(SetElementAttribute::KeyEnd(vec![DefaultNla::new(
            NFTA_DATA_VALUE,
            end.clone(),
        )]));
    }
    if adding {
        if let Some(t) = e.timeout {
            let ms = t.as_millis().max(1) as u64;
            attributes.push(SetElementAttribute::Timeout(ms));
            // Re-adding with an unchanged timeout keeps the old expiry;
            // an explicit expiration resets it (the refresh).
            attributes.push(SetElementAttribute::Expiration(ms));
        }
        if let Some(udata) = e.label.as_deref().and_then(comment_udata) {
            attributes.push(SetElementAttribute::UserData(udata));
        }
    }
    ListAttribute::Element(attributes)
}

/// The elements of one NEWSETELEM dump message.
fn listed(attributes: Vec<SetElementList>, out: &mut Vec<Listed>) {
    for list in attributes {
        let SetElementList::Elements(elements) = list else {
            continue;
        };
        for item in elements {
            let ListAttribute::Element(attributes) = item else {
                continue;
            };
            let mut listed = Listed {
                key: Vec::new(),
                key_end: None,
                expires_in: None,
                label: None,
            };
            for attribute in attributes {
                match attribute {
                    SetElementAttribute::Key(DataAttribute::Value(key)) => listed.key = key,
                    SetElementAttribute::KeyEnd(nlas) => {
                        listed.key_end = nlas
                            .iter()
                            .find(|n| n.kind() & NLA_TYPE_MASK == NFTA_DATA_VALUE)
                            .map(|n| {
                                let mut value = vec![0; n.value_len()];
                                n.emit_value(&mut value);
                                value
                            });
                    }
                    SetElementAttribute::Expiration(ms) => {
                        listed.expires_in = Some(Duration::from_millis(ms));
                    }
                    SetElementAttribute::UserData(udata) => listed.label = comment_of(&udata),
                    _ => {}
                }
            }
            out.push(listed);
        }
    }
}

/// Appends one netlink message to a batch.
fn emit(buf: &mut Vec<u8>, message: NetfilterMessage, flags: u16, seq: u32) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut message = NetlinkMessage::new(header, message.into());
    message.finalize();
    let at = buf.len();
    buf.resize(at + message.buffer_len(), 0);
    message.serialize(&mut buf[at..]);
}

/// The messages of a receive buffer, undecoded: a stale reply or an event
/// nobody reads is never decoded.
pub(super) fn messages(buf: &[u8]) -> impl Iterator<Item = NetlinkBuffer<&[u8]>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let rest = buf.get(at..)?;
        let len = NetlinkBuffer::new_checked(rest).ok()?.length() as usize;
        at += (len + 3) & !3;
        NetlinkBuffer::new_checked(&rest[..len]).ok()
    })
}

fn decode(raw: NetlinkBuffer<&[u8]>) -> io::Result<NetlinkMessage<NetfilterMessage>> {
    NetlinkMessage::deserialize(raw.into_inner()).map_err(undecodable)
}

fn undecodable(e: DecodeError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("undecodable netlink reply: {e}"),
    )
}

// Hand-written: netlink-packet-core 0.9 keeps an error's echoed request and extended-ack attributes as raw bytes.
/// The offset of the attribute the kernel refused (`NLMSGERR_ATTR_OFFS`),
/// from the start of the request: `echoed` is the request, then the attributes.
fn bad_attribute(echoed: &[u8]) -> Option<u32> {
    const NLMSGERR_ATTR_OFFS: u16 = 2;
    let len = u32::from_ne_bytes(echoed.get(..4)?.try_into().ok()?) as usize;
    NlasIterator::new(echoed.get((len + 3) & !3..)?)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_OFFS)
        .and_then(|nla| Some(u32::from_ne_bytes(nla.value().get(..4)?.try_into().ok()?)))
}

/// The kernel's error for one message of a batch, naming the set and the
/// element: the one refused (`offset`, where the kernel tells), or the
/// message's only one.
fn refused(sent: &Sent<'_>, offset: Option<u32>, source: io::Error) -> io::Error {
    let verb = if sent.adding { "adding" } else { "deleting" };
    // Where each element starts in the request: after the netlink and
    // nfgenmsg headers, the table, the set and the list's own header.
    let mut at = NETLINK_HEADER_LEN
        + 4
        + SetElementList::Table(sent.table.to_string()).buffer_len()
        + SetElementList::Set(sent.set.to_string()).buffer_len()
        + 4;
    let mut refused = None;
    for e in sent.elements {
        if offset == Some(at as u32) {
            refused = Some(e);
        }
        at += element(e, sent.adding).buffer_len();
    }
    let what = match (refused, sent.elements) {
        (Some(e), [_]) | (None, [e]) => format!("element {}", key_text(&e.key)),
        (Some(e), many) => format!("element {} (of {})", key_text(&e.key), many.len()),
        (None, many) => format!("{} elements", many.len()),
    };
    io::Error::new(
        source.kind(),
        format!("set '{}', {verb} {what}: {source}", sent.set),
    )
}

/// An element key as nft prints it where it can tell: an address, or
/// `address . protocol . port` (each field padded to 4 bytes).
fn key_text(key: &[u8]) -> String {
    let (addr, rest): (std::net::IpAddr, &[u8]) = match key.len() {
        4 | 12 => (
            <[u8; 4]>::try_from(&key[..4]).unwrap_or_default().into(),
            &key[4..],
        ),
        16 | 24 => (
            <[u8; 16]>::try_from(&key[..16]).unwrap_or_default().into(),
            &key[16..],
        ),
        _ => return key.iter().map(|b| format!("{b:02x}")).collect(),
    };
    match rest {
        [proto, _, _, _, p0, p1, _, _] => {
            let proto = match proto {
                6 => "tcp".to_string(),
                17 => "udp".to_string(),
                n => n.to_string(),
            };
            format!("{addr} . {proto} . {}", u16::from_be_bytes([*p0, *p1]))
        }
        _ => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn labels_read_back_as_written_and_a_long_one_is_never_cut() {
        assert_eq!(
            comment_of(&comment_udata("a x.test").unwrap()).as_deref(),
            Some("a x.test")
        );
        let fits = format!("a {}", "x".repeat(LABEL_MAX - 2));
        assert_eq!(comment_of(&comment_udata(&fits).unwrap()), Some(fits));
        // Cut, "a <pad>.github.com.t.evil.example" would read back as a
        // name under another rule.
        let long = format!("a {}.github.com.t.evil.example", "p".repeat(LABEL_MAX - 13));
        assert_eq!(comment_udata(&long), None);
        assert_eq!(comment_of(&[1, 2, 9, 9]), None);
        assert_eq!(comment_of(&[0, 9, 1]), None);
    }

    /// A batch, byte for byte: a delete, an add with timeout and label, a
    /// range element whose label (200 bytes) is too long to write.
    const BATCH: &str = "140000001000010001000000000000000000000a480000000e0a05000200000000000000010000000d000100616c6c6f77646e73000000000f000200616c6c6f7765645f7634000014000380100001800c000180080001000a000003980000000c0a05040300000000000000010000000d000100616c6c6f77646e73000000000f000200616c6c6f7765645f76340000640003803c0001800c000180080001000a0000010c00040000000000000493e00c00050000000000000493e013000600000d6167656e7420782e74657374000024000180100001800c0001000a000002000001bb10000a800c0001000a000002000001bb140000001100010004000000000000000000000a";
    /// GETSET (ip6) then the GETSETELEM dump request (ip), byte for byte.
    const GET: &str = "340000000a0a050007000000000000000a0000000d000100616c6c6f77646e73000000000f000200616c6c6f7765645f76360000340000000d0a01030800000000000000020000000d000100616c6c6f77646e73000000000f000200616c6c6f7765645f76340000";

    #[test]
    fn the_wire_bytes_are_pinned() {
        let add = [
            Element {
                key: vec![10, 0, 0, 1],
                key_end: None,
                timeout: Some(Duration::from_secs(300)),
                label: Some("agent x.test".into()),
            },
            Element {
                key: vec![10, 0, 0, 2, 0, 0, 1, 187],
                key_end: Some(vec![10, 0, 0, 2, 0, 0, 1, 187]),
                timeout: None,
                label: Some("p".repeat(200)),
            },
        ];
        // A delete carries only keys, whatever else the element says.
        let delete = [Element {
            key: vec![10, 0, 0, 3],
            key_end: None,
            timeout: Some(Duration::from_secs(5)),
            label: Some("x".into()),
        }];
        let ops = [SetOp {
            family: Family::Inet,
            table: "allowdns",
            set: "allowed_v4",
            add: &add,
            delete: &delete,
        }];
        let mut seq = 0;
        let (buf, sent, markers) = encode_batch(&ops, &mut seq);
        assert_eq!(hex(&buf), BATCH);
        assert_eq!(markers, [1, 4]);
        assert_eq!(
            sent.iter().map(|s| (s.seq, s.adding)).collect::<Vec<_>>(),
            [(2, false), (3, true)]
        );
        let mut buf = get_set(Family::Ip6, "allowdns", "allowed_v6", 7);
        buf.extend(list_elements(Family::Ip, "allowdns", "allowed_v4", 8));
        assert_eq!(hex(&buf), GET);
    }

    #[test]
    fn a_refusal_names_the_set_and_a_single_element() {
        let one = [Element {
            key: vec![192, 0, 2, 7, 6, 0, 0, 0, 1, 187, 0, 0],
            key_end: None,
            timeout: None,
            label: None,
        }];
        let sent = Sent {
            seq: 2,
            table: "allowdns",
            set: "allowed_v4_ports",
            adding: false,
            elements: &one,
        };
        let e = refused(&sent, None, io::Error::from_raw_os_error(2));
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(
            e.to_string()
                .starts_with("set 'allowed_v4_ports', deleting element 192.0.2.7 . tcp . 443: "),
            "{e}"
        );
        assert_eq!(
            key_text(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            "2001:db8::1"
        );
    }
}
