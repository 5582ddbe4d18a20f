//! A minimal nfnetlink client for nftables sets: just enough to add elements
//! with timeouts in one batched, acknowledged transaction, to check that a set
//! exists with the expected type, and to list a set's elements.
//!
//! Talking netlink directly instead of spawning `nft` (about 15 ms a call)
//! keeps feeding cheap enough to sit on the query path.

// Hand-written encoding: netlink-packet-netfilter 0.4 (on the netlink-packet-core already used for sock_diag) now has nf_tables set-element messages with timeouts; a switch is due, no measurement keeps this.
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

pub use crate::policy::firewall::Family;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_HANDLE: u16 = 16;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10; // after PAD (8) and OBJREF (9)
const NFTA_DATA_VALUE: u16 = 1;

/// Set flags (`enum nft_set_flags`).
pub const NFT_SET_INTERVAL: u32 = 0x4;
pub const NFT_SET_TIMEOUT: u32 = 0x10;

pub(super) fn nfproto(family: Family) -> u8 {
    match family {
        Family::Inet => 1,
        Family::Ip => 2,
        Family::Ip6 => 10,
    }
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
        Ok(Netlink { socket, seq: 1 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Applies element changes to several sets in one atomic transaction.
    pub fn apply(&mut self, ops: &[SetOp<'_>]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(512);
        let begin = self.next_seq();
        batch_marker(&mut buf, NFNL_MSG_BATCH_BEGIN, begin);
        let mut acked = Vec::new();
        for op in ops {
            for (kind, elements) in [
                (NFT_MSG_DELSETELEM, op.delete),
                (NFT_MSG_NEWSETELEM, op.add),
            ] {
                // Large lists are split so each message stays well under a page.
                for chunk in elements.chunks(64) {
                    let seq = self.next_seq();
                    let flags = NLM_F_REQUEST
                        | NLM_F_ACK
                        | if kind == NFT_MSG_NEWSETELEM {
                            NLM_F_CREATE
                        } else {
                            0
                        };
                    let msg = Message::start(&mut buf, kind, flags, seq, op.family);
                    put_str(&mut buf, NFTA_SET_ELEM_LIST_TABLE, op.table);
                    put_str(&mut buf, NFTA_SET_ELEM_LIST_SET, op.set);
                    let list = nest_start(&mut buf, NFTA_SET_ELEM_LIST_ELEMENTS);
                    for e in chunk {
                        let item = nest_start(&mut buf, NFTA_LIST_ELEM);
                        put_data(&mut buf, NFTA_SET_ELEM_KEY, &e.key);
                        if let Some(end) = &e.key_end {
                            put_data(&mut buf, NFTA_SET_ELEM_KEY_END, end);
                        }
                        if kind == NFT_MSG_NEWSETELEM
                            && let Some(t) = e.timeout
                        {
                            let ms = (t.as_millis().max(1) as u64).to_be_bytes();
                            put(&mut buf, NFTA_SET_ELEM_TIMEOUT, &ms);
                            // Re-adding with an unchanged timeout keeps the old expiry;
                            // an explicit expiration resets it (the refresh).
                            put(&mut buf, NFTA_SET_ELEM_EXPIRATION, &ms);
                        }
                        if kind == NFT_MSG_NEWSETELEM
                            && let Some(udata) = e.label.as_deref().and_then(comment_udata)
                        {
                            put(&mut buf, NFTA_SET_ELEM_USERDATA, &udata);
                        }
                        nest_end(&mut buf, item);
                    }
                    nest_end(&mut buf, list);
                    msg.finish(&mut buf);
                    acked.push(seq);
                }
            }
        }
        if acked.is_empty() {
            return Ok(());
        }
        let end = self.next_seq();
        batch_marker(&mut buf, NFNL_MSG_BATCH_END, end);
        self.drain();
        self.socket.send(&buf, 0)?;
        self.wait_acks(&acked, [begin, end])
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
    /// message of the batch (markers included) fails it. Replies with other
    /// sequence numbers are stale and ignored.
    fn wait_acks(&mut self, data: &[u32], markers: [u32; 2]) -> io::Result<()> {
        let mut pending = data.to_vec();
        let mut buf = Vec::with_capacity(1 << 16);
        while !pending.is_empty() {
            buf.clear();
            self.socket.recv(&mut buf, 0)?;
            for (header, payload) in messages(&buf) {
                let ours = data.contains(&header.seq) || markers.contains(&header.seq);
                if header.kind != NLMSG_ERROR || !ours {
                    continue;
                }
                pending.retain(|&s| s != header.seq);
                let errno = errno(payload);
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
            }
        }
        Ok(())
    }

    /// The set's key length and flags, or the kernel's error (ENOENT, EPERM…).
    pub fn get_set(&mut self, family: Family, table: &str, set: &str) -> io::Result<SetInfo> {
        let mut buf = Vec::with_capacity(256);
        let seq = self.next_seq();
        let msg = Message::start(
            &mut buf,
            NFT_MSG_GETSET,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            family,
        );
        put_str(&mut buf, NFTA_SET_TABLE, table);
        put_str(&mut buf, NFTA_SET_NAME, set);
        msg.finish(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut info = None;
        self.read_replies(seq, |payload| {
            let attrs = attrs(payload);
            let u32_of = |t| {
                attrs
                    .iter()
                    .find(|(k, _)| *k == t)
                    .and_then(|(_, v)| v.get(..4))
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            };
            let handle = attrs
                .iter()
                .find(|(k, _)| *k == NFTA_SET_HANDLE)
                .and_then(|(_, v)| v.get(..8))
                .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or_default()));
            info = Some(SetInfo {
                key_len: u32_of(NFTA_SET_KEY_LEN).unwrap_or(0),
                flags: u32_of(NFTA_SET_FLAGS).unwrap_or(0),
                handle,
            });
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
        let mut buf = Vec::with_capacity(256);
        let seq = self.next_seq();
        let msg = Message::start(
            &mut buf,
            NFT_MSG_GETSETELEM,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
        );
        put_str(&mut buf, NFTA_SET_ELEM_LIST_TABLE, table);
        put_str(&mut buf, NFTA_SET_ELEM_LIST_SET, set);
        msg.finish(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        self.read_replies(seq, |payload| parse_elements(payload, &mut out))?;
        Ok(out)
    }

    /// Reads the replies to request `seq`, handing each data payload (past
    /// its nfgenmsg header) to `on_data`, until the ack, an error or the end
    /// of a dump.
    fn read_replies(&mut self, seq: u32, mut on_data: impl FnMut(&[u8])) -> io::Result<()> {
        let mut buf = Vec::with_capacity(1 << 16);
        loop {
            buf.clear();
            self.socket.recv(&mut buf, 0)?;
            for (header, payload) in messages(&buf) {
                if header.seq != seq {
                    continue;
                }
                match header.kind {
                    // A dump's end carries its status; an interrupted or failed dump is an error.
                    NLMSG_DONE => {
                        return match payload.get(..4).map(|_| errno(payload)) {
                            None | Some(0) => Ok(()),
                            Some(e) => Err(io::Error::from_raw_os_error(-e)),
                        };
                    }
                    NLMSG_ERROR => {
                        return match errno(payload) {
                            0 => Ok(()),
                            e => Err(io::Error::from_raw_os_error(-e)),
                        };
                    }
                    _ => on_data(payload.get(4..).unwrap_or_default()),
                }
            }
        }
    }
}

/// The (negative) errno of an NLMSG_ERROR payload; 0 is an ack. A payload
/// too short to carry one counts as EPROTO (71), never as success.
fn errno(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map_or(-71, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn parse_elements(payload: &[u8], out: &mut Vec<Listed>) {
    for (kind, list) in attrs(payload) {
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for (_, elem) in attrs(list) {
            let mut listed = Listed {
                key: Vec::new(),
                key_end: None,
                expires_in: None,
                label: None,
            };
            for (k, v) in attrs(elem) {
                let value = || {
                    attrs(v)
                        .into_iter()
                        .find(|(t, _)| *t == NFTA_DATA_VALUE)
                        .map(|(_, d)| d.to_vec())
                };
                match k {
                    NFTA_SET_ELEM_KEY => listed.key = value().unwrap_or_default(),
                    NFTA_SET_ELEM_KEY_END => listed.key_end = value(),
                    NFTA_SET_ELEM_EXPIRATION if v.len() >= 8 => {
                        let ms = u64::from_be_bytes(v[..8].try_into().unwrap_or_default());
                        listed.expires_in = Some(Duration::from_millis(ms));
                    }
                    NFTA_SET_ELEM_USERDATA => listed.label = comment_of(v),
                    _ => {}
                }
            }
            out.push(listed);
        }
    }
}

pub(super) struct Header {
    pub(super) kind: u16,
    seq: u32,
}

/// Splits a receive buffer into (header, payload) pairs.
pub(super) fn messages(buf: &[u8]) -> Vec<(Header, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        // NLMSG_ERROR and NLMSG_DONE are all that is matched on; data messages
        // carry the subsystem in the high byte and never collide with them.
        let header = Header {
            kind: u16::from_ne_bytes([buf[at + 4], buf[at + 5]]),
            seq: u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap_or_default()),
        };
        out.push((header, &buf[at + NLMSG_HDRLEN..at + len]));
        at += align(len);
    }
    out
}

/// Netlink attributes (type without flag bits, payload).
pub(super) fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & !(NLA_F_NESTED | 0x4000);
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((kind, &buf[4..len]));
        buf = &buf[align(len).min(buf.len())..];
    }
    out
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

struct Message {
    start: usize,
}

impl Message {
    fn start(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: Family) -> Message {
        let start = buf.len();
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | kind).to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        // struct nfgenmsg
        buf.extend_from_slice(&[nfproto(family), 0]);
        buf.extend_from_slice(&0u16.to_be_bytes());
        Message { start }
    }

    fn finish(self, buf: &mut [u8]) {
        let len = (buf.len() - self.start) as u32;
        buf[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

fn batch_marker(buf: &mut Vec<u8>, kind: u16, seq: u32) {
    buf.extend_from_slice(&20u32.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
}

fn put(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len() + (align(len) - len), 0);
}

fn put_str(buf: &mut Vec<u8>, kind: u16, s: &str) {
    let mut bytes = s.as_bytes().to_vec();
    bytes.push(0);
    put(buf, kind, &bytes);
}

fn put_data(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let nest = nest_start(buf, kind);
    put(buf, NFTA_DATA_VALUE, value);
    nest_end(buf, nest);
}

fn nest_start(buf: &mut Vec<u8>, kind: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    at
}

fn nest_end(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn attributes_round_trip() {
        let mut buf = Vec::new();
        put_str(&mut buf, 1, "allowdns");
        let n = nest_start(&mut buf, 3);
        put_data(&mut buf, NFTA_SET_ELEM_KEY, &[10, 0, 0, 1]);
        nest_end(&mut buf, n);
        let parsed = attrs(&buf);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0], (1, b"allowdns\0".as_ref()));
        let inner = attrs(parsed[1].1);
        assert_eq!(inner[0].0, NFTA_SET_ELEM_KEY);
        assert_eq!(
            attrs(inner[0].1)[0],
            (NFTA_DATA_VALUE, [10, 0, 0, 1].as_ref())
        );
    }
}
