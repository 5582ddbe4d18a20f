//! The forwarder: questions to the configured servers over a few long-lived
//! UDP sockets, each with one receive loop, and over TCP when an answer comes
//! back truncated. Hand-written rather than hickory's `NameServerPool`, which
//! spends a task, a fresh socket and its epoll registration per exchange: a
//! third or more of a forwarded miss's CPU (docs/performance.md).
//!
//! The floor on forgery resistance, per exchange:
//! - a fresh random 16-bit ID, never one already in flight on its socket;
//! - a source port drawn at random from the ephemeral range
//!   (`net.ipv4.ip_local_port_range`: 28,232 ports, ~14.8 bits, by default),
//!   not reused by the kernel's own choice;
//! - a socket takes at most [`USES`] exchanges, and none once it is
//!   [`LIFETIME`] old, so a port an attacker learns is good for few answers
//!   (an idle socket's port stays open, but nothing is in flight on it).
//!
//! Above the floor, each letter of the name goes up in random case (DNS
//! 0x20), which the answer must echo: one more bit per letter. An off-path
//! attacker must so guess about 30 bits, plus the letters, for one answer.
//! An answer is taken only from the server's address and port, with an ID
//! in flight there, for the question asked (name case-insensitively, type,
//! class); anything else is dropped and counted
//! (`allowdns_upstream_dropped_total`). An answer whose name is not in the
//! case asked is not taken either: that server is asked once more in lower
//! case (counted in `allowdns_upstream_case_changed_total`), so a server
//! that does not keep case still answers, with the ID and port floor. The
//! case a client spelled never goes up.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use rand::RngExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Notify, oneshot};

use crate::observe::metrics::METRICS;
use crate::sync::lock;

/// Exchanges one socket carries before it is replaced.
pub const USES: u32 = 32;
/// How long one socket is used before it is replaced, however idle.
pub const LIFETIME: Duration = Duration::from_secs(10);
/// Sockets taking new exchanges at once, per address family.
const SLOTS: usize = 4;
/// The EDNS payload asked for (the DNS flag day's size).
const PAYLOAD: u16 = 1232;
/// The largest datagram: a server ignoring [`PAYLOAD`] is not cut short.
const RECEIVE_BUFFER: usize = 65_535;
/// Random ports tried before leaving the choice to the kernel.
const BIND_TRIES: usize = 16;
/// Used when `/proc` does not say.
const EPHEMERAL: RangeInclusive<u16> = 32768..=60999;

/// Forwards to `servers` in order, starting at the last one that answered.
pub struct Forwarder {
    servers: Vec<SocketAddr>,
    /// Per attempt, per server.
    timeout: Duration,
    ports: RangeInclusive<u16>,
    /// IPv4 sockets, then IPv6 ones.
    slots: [[Mutex<Option<Arc<Socket>>>; SLOTS]; 2],
    next: AtomicUsize,
    preferred: AtomicUsize,
}

impl Forwarder {
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Self {
        Forwarder {
            servers: servers.to_vec(),
            timeout,
            ports: ephemeral_range(),
            slots: Default::default(),
            next: AtomicUsize::new(0),
            preferred: AtomicUsize::new(0),
        }
    }

    /// The first usable answer (NOERROR or NXDOMAIN) from the servers, each
    /// tried in turn, and a lone server twice (one lost datagram is not a
    /// SERVFAIL); the error says what each attempt met.
    pub async fn ask(&self, question: &Query) -> Result<Message, String> {
        let wire = encode(question)?;
        let count = self.servers.len();
        let first = self.preferred.load(Relaxed);
        let mut failures = Vec::new();
        for k in 0..count.max(2) {
            let at = (first + k) % count;
            let server = self.servers[at];
            match self.exchange(server, question, &wire).await {
                Ok(m)
                    if matches!(
                        m.metadata.response_code,
                        ResponseCode::NoError | ResponseCode::NXDomain
                    ) =>
                {
                    self.preferred.store(at, Relaxed);
                    return Ok(m);
                }
                Ok(m) => failures.push(format!("{server} answered {}", m.metadata.response_code)),
                Err(e) => failures.push(format!("{server}: {e}")),
            }
        }
        Err(failures.join("; "))
    }

    /// One server's answer, whatever its rcode (the start-up probe's).
    pub async fn ask_one(&self, server: SocketAddr, question: &Query) -> Result<Message, String> {
        let wire = encode(question)?;
        self.exchange(server, question, &wire).await
    }

    /// UDP with the name's case mixed, then in lower case if the server
    /// changed it; then TCP to the same server if the answer was truncated.
    /// The case the client asked in never goes up: an agent could spell
    /// bits in it for a server that does not echo case.
    async fn exchange(
        &self,
        server: SocketAddr,
        question: &Query,
        wire: &[u8],
    ) -> Result<Message, String> {
        // The client, the cache and the audit see names in the question's
        // own spelling: each answer's question section is respelled so.
        let spelled = question_section(wire);
        let mut lower = wire.to_vec();
        recase(&mut lower, |b| b.to_ascii_lowercase());
        let mut sent = lower.clone();
        recase(&mut sent, |b| if rand::random() { b ^ 0x20 } else { b });
        let mut answer = match self.udp(server, question, &mut sent, spelled).await? {
            (answer, true) => answer,
            (_, false) => {
                METRICS.upstream_case_changed.fetch_add(1, Relaxed);
                self.udp(server, question, &mut lower, spelled).await?.0
            }
        };
        if answer.metadata.truncation {
            answer = self.tcp(server, question, &mut lower, spelled).await?;
        }
        Ok(answer)
    }

    /// The answer, and whether its name is in the case `wire` asked it in.
    async fn udp(
        &self,
        server: SocketAddr,
        question: &Query,
        wire: &mut [u8],
        spelled: &[u8],
    ) -> Result<(Message, bool), String> {
        let mut pending = self
            .checkout(server, question, question_section(wire), spelled)
            .map_err(|e| format!("no UDP socket: {e}"))?;
        wire[..2].copy_from_slice(&pending.id.to_be_bytes());
        pending
            .socket
            .udp
            .send_to(wire, server)
            .await
            .map_err(|e| format!("send: {e}"))?;
        match tokio::time::timeout(self.timeout, &mut pending.answer).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err("receive loop ended".into()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// A fresh random ID on a fresh connection: the kernel picks the port,
    /// and an off-path attacker cannot inject into the stream blind.
    async fn tcp(
        &self,
        server: SocketAddr,
        question: &Query,
        wire: &mut [u8],
        spelled: &[u8],
    ) -> Result<Message, String> {
        let id: u16 = rand::random();
        wire[..2].copy_from_slice(&id.to_be_bytes());
        let exchange = async {
            let mut stream = TcpStream::connect(server).await?;
            let len = u16::try_from(wire.len()).map_err(io::Error::other)?;
            let mut out = Vec::with_capacity(2 + wire.len());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(wire);
            stream.write_all(&out).await?;
            let len = stream.read_u16().await?;
            let mut answer = vec![0; usize::from(len)];
            stream.read_exact(&mut answer).await?;
            io::Result::Ok(answer)
        };
        let mut bytes = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => return Err(format!("TCP after truncation: {e}")),
            Err(_) => return Err(format!("no TCP answer within {:?}", self.timeout)),
        };
        respell(&mut bytes, question_section(wire), spelled);
        let answer = Message::from_vec(&bytes).map_err(|e| format!("TCP answer: {e}"))?;
        if answer.metadata.id != id || !answers(&answer, question) {
            METRICS.upstream_dropped.fetch_add(1, Relaxed);
            return Err("TCP answer was not for the question asked".into());
        }
        Ok(answer)
    }

    /// A socket of the right family with `question` registered under a
    /// fresh ID, replacing the slot's socket when it has served its turn.
    /// `asked` is the question section as sent, `spelled` as the question
    /// spells it.
    fn checkout(
        &self,
        server: SocketAddr,
        question: &Query,
        asked: &[u8],
        spelled: &[u8],
    ) -> io::Result<Pending> {
        let family = usize::from(server.is_ipv6());
        let at = self.next.fetch_add(1, Relaxed) % SLOTS;
        let mut slot = lock(&self.slots[family][at]);
        let admit = |s: &Arc<Socket>| s.admit(server, question, [asked, spelled]);
        if let Some(pending) = slot.as_ref().and_then(admit) {
            return Ok(pending);
        }
        let socket = Socket::open(server, &self.ports)?;
        let pending =
            admit(&socket).ok_or_else(|| io::Error::other("a fresh socket refused an exchange"))?;
        *slot = Some(socket);
        Ok(pending)
    }
}

/// One long-lived UDP socket and the exchanges in flight on it.
struct Socket {
    udp: UdpSocket,
    born: Instant,
    flights: Mutex<Flights>,
    /// Told when the socket is retired and its last exchange is over: its
    /// receive loop ends and the port is closed.
    done: Notify,
}

#[derive(Default)]
struct Flights {
    waiting: HashMap<u16, Waiter>,
    issued: u32,
    retired: bool,
}

struct Waiter {
    server: SocketAddr,
    question: Query,
    /// The question section as sent: its name's case is checked byte for byte.
    asked: Box<[u8]>,
    /// The same as the question spells it, written over the answer's.
    spelled: Box<[u8]>,
    serial: u32,
    /// The answer, and whether it kept the case asked.
    answer: oneshot::Sender<(Message, bool)>,
}

/// An exchange in flight; leaves its socket's table when dropped (answered,
/// timed out or abandoned).
struct Pending {
    socket: Arc<Socket>,
    id: u16,
    serial: u32,
    answer: oneshot::Receiver<(Message, bool)>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut flights = lock(&self.socket.flights);
        if flights.waiting.get(&self.id).map(|w| w.serial) == Some(self.serial) {
            flights.waiting.remove(&self.id);
        }
        if flights.retired && flights.waiting.is_empty() {
            self.socket.done.notify_one();
        }
    }
}

impl Socket {
    /// Bound to a random port of `ports` (the kernel's choice if
    /// [`BIND_TRIES`] random ones are taken), with its receive loop running.
    fn open(server: SocketAddr, ports: &RangeInclusive<u16>) -> io::Result<Arc<Socket>> {
        let any = |port| match server {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        };
        let mut rng = rand::rng();
        let mut bound = None;
        for _ in 0..BIND_TRIES {
            match std::net::UdpSocket::bind(any(rng.random_range(ports.clone()))) {
                Ok(s) => {
                    bound = Some(s);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
        }
        let std = match bound {
            Some(s) => s,
            None => std::net::UdpSocket::bind(any(0))?,
        };
        std.set_nonblocking(true)?;
        let socket = Arc::new(Socket {
            udp: UdpSocket::from_std(std)?,
            born: Instant::now(),
            flights: Mutex::default(),
            done: Notify::new(),
        });
        tokio::spawn(receive(socket.clone()));
        Ok(socket)
    }

    /// Registers an exchange under a random ID not in flight here, unless
    /// the socket has served its turn (then it is retired: `None`).
    fn admit(
        self: &Arc<Self>,
        server: SocketAddr,
        question: &Query,
        [asked, spelled]: [&[u8]; 2],
    ) -> Option<Pending> {
        let mut flights = lock(&self.flights);
        if flights.retired || self.born.elapsed() >= LIFETIME {
            flights.retired = true;
            if flights.waiting.is_empty() {
                self.done.notify_one();
            }
            return None;
        }
        let mut rng = rand::rng();
        let id = loop {
            let id: u16 = rng.random();
            if !flights.waiting.contains_key(&id) {
                break id;
            }
        };
        flights.issued += 1;
        flights.retired = flights.issued >= USES;
        let serial = flights.issued;
        let (tx, rx) = oneshot::channel();
        flights.waiting.insert(
            id,
            Waiter {
                server,
                question: question.clone(),
                asked: asked.into(),
                spelled: spelled.into(),
                serial,
                answer: tx,
            },
        );
        Some(Pending {
            socket: self.clone(),
            id,
            serial,
            answer: rx,
        })
    }

    /// Hands a datagram to the exchange it answers, or drops it.
    fn deliver(&self, bytes: &mut [u8], from: SocketAddr) {
        let dropped = || {
            METRICS.upstream_dropped.fetch_add(1, Relaxed);
        };
        let Some(id) = bytes.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            return dropped();
        };
        // Decode only what could be an answer: the cheap checks first.
        let (serial, kept) = {
            let flights = lock(&self.flights);
            match flights.waiting.get(&id) {
                Some(w) if w.server == from => (w.serial, respell(bytes, &w.asked, &w.spelled)),
                _ => return dropped(),
            }
        };
        let Ok(message) = Message::from_vec(bytes) else {
            return dropped();
        };
        let mut flights = lock(&self.flights);
        match flights.waiting.get(&id) {
            Some(w)
                if w.serial == serial && (answers(&message, &w.question) || refusal(&message)) => {}
            Some(_) => return dropped(),
            // Given up on meanwhile.
            None => return,
        }
        let kept = kept || refusal(&message);
        let waiter = flights.waiting.remove(&id);
        drop(flights);
        if let Some(waiter) = waiter {
            let _ = waiter.answer.send((message, kept));
        }
    }
}

/// Reads answers until the socket is retired and idle.
async fn receive(socket: Arc<Socket>) {
    let mut buf = vec![0u8; RECEIVE_BUFFER];
    loop {
        tokio::select! {
            got = socket.udp.recv_from(&mut buf) => match got {
                Ok((n, from)) => socket.deliver(&mut buf[..n], from),
                // Nothing queued is lost by trying again; do not spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            () = socket.done.notified() => return,
        }
    }
}

/// Whether `message` is a response to exactly `question`.
fn answers(message: &Message, question: &Query) -> bool {
    let m = &message.metadata;
    m.message_type == MessageType::Response
        && m.op_code == OpCode::Query
        && message.queries.len() == 1
        && message.queries[0].name == question.name
        && message.queries[0].query_type == question.query_type
        && message.queries[0].query_class == question.query_class
}

/// An error response without a question section, as some servers send
/// FORMERR, SERVFAIL or REFUSED: that server failed, so the next is asked
/// at once, not after the timeout. Never an answer ([`Forwarder::ask`]
/// takes only NOERROR and NXDOMAIN).
fn refusal(message: &Message) -> bool {
    let m = &message.metadata;
    m.message_type == MessageType::Response
        && message.queries.is_empty()
        && !matches!(
            m.response_code,
            ResponseCode::NoError | ResponseCode::NXDomain
        )
}

/// A DNS message's header; the question section follows.
const HEADER: usize = 12;

/// Whether the answer `bytes` asks `asked`, its letters' case kept. If it
/// asks `asked` in any case, its question is overwritten with `spelled`
/// (the same question as the client spelled it), so every name compressed
/// against it reads in that spelling too. A question section is never
/// compressed: it holds the message's first name.
fn respell(bytes: &mut [u8], asked: &[u8], spelled: &[u8]) -> bool {
    let Some(section) = bytes.get_mut(HEADER..HEADER + asked.len()) else {
        return false;
    };
    let kept = section == asked;
    // Only the name's letters may differ: type and class bytes can be
    // letters too (HTTPS is 65, `A`).
    let name = asked.len().saturating_sub(4);
    if spelled.len() == asked.len()
        && section[..name].eq_ignore_ascii_case(&asked[..name])
        && section[name..] == asked[name..]
    {
        section.copy_from_slice(spelled);
    }
    kept
}

/// The question section of `wire`, a message with one question.
fn question_section(wire: &[u8]) -> &[u8] {
    let mut at = HEADER;
    while let Some(&len) = wire.get(at)
        && len != 0
    {
        at += 1 + usize::from(len);
    }
    &wire[HEADER.min(wire.len())..(at + 5).min(wire.len())]
}

/// Gives each letter of the question's name the case `letter` chooses;
/// `wire` is a message with one question.
fn recase(wire: &mut [u8], mut letter: impl FnMut(u8) -> u8) {
    let mut at = HEADER;
    while let Some(&len) = wire.get(at)
        && len != 0
    {
        let end = (at + 1 + usize::from(len)).min(wire.len());
        for b in &mut wire[at + 1..end] {
            if b.is_ascii_alphabetic() {
                *b = letter(*b);
            }
        }
        at = end;
    }
}

/// The question on the wire, recursion desired, with EDNS; its ID (the
/// first two bytes) is written per attempt.
fn encode(question: &Query) -> Result<Vec<u8>, String> {
    let mut message = Message::new(0, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(question.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(PAYLOAD);
    message.set_edns(edns);
    message.to_vec().map_err(|e| {
        format!(
            "cannot encode {} {}: {e}",
            question.name, question.query_type
        )
    })
}

/// The kernel's ephemeral port range (read once, at start).
fn ephemeral_range() -> RangeInclusive<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range");
    let parsed = text.ok().and_then(|t| {
        let mut w = t.split_whitespace().map(|p| p.parse::<u16>().ok());
        Some((w.next()??, w.next()??))
    });
    match parsed {
        Some((low, high)) if low >= 1024 && low < high => low..=high,
        _ => EPHEMERAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{Name, RecordType};

    fn question() -> Query {
        Query::query(Name::from_ascii("a.test.").unwrap(), RecordType::A)
    }

    #[tokio::test]
    async fn a_socket_takes_uses_exchanges_with_distinct_ids_then_retires() {
        let server: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let socket = Socket::open(server, &ephemeral_range()).unwrap();
        let pending: Vec<Pending> = (0..USES)
            .map(|_| {
                socket
                    .admit(server, &question(), [&[], &[]])
                    .expect("a turn left")
            })
            .collect();
        let ids: std::collections::HashSet<u16> = pending.iter().map(|p| p.id).collect();
        assert_eq!(
            ids.len(),
            USES as usize,
            "an ID given twice while in flight"
        );
        assert!(
            socket.admit(server, &question(), [&[], &[]]).is_none(),
            "past USES"
        );
    }

    #[test]
    fn only_the_names_letters_change_case_and_the_question_ends_at_its_class() {
        // HTTPS is type 65, an `A` on the wire: it must not be recased.
        let q = Query::query(Name::from_ascii("Ab-1.Test.").unwrap(), RecordType::HTTPS);
        let mut wire = encode(&q).unwrap();
        let before = wire.clone();
        assert_eq!(
            question_section(&wire),
            b"\x04Ab-1\x04Test\x00\x00\x41\x00\x01"
        );
        recase(&mut wire, |b| b.to_ascii_lowercase());
        assert_eq!(
            question_section(&wire),
            b"\x04ab-1\x04test\x00\x00\x41\x00\x01"
        );
        let end = HEADER + question_section(&wire).len();
        assert_eq!(wire[end..], before[end..], "EDNS untouched");
    }

    #[tokio::test]
    async fn a_socket_past_its_lifetime_takes_nothing() {
        let server: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        let socket = Arc::new(Socket {
            udp: UdpSocket::from_std(std).unwrap(),
            born: Instant::now() - LIFETIME,
            flights: Mutex::default(),
            done: Notify::new(),
        });
        assert!(socket.admit(server, &question(), [&[], &[]]).is_none());
    }

    #[tokio::test]
    async fn the_port_is_drawn_from_the_range_given() {
        let server: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let ports = ephemeral_range();
        for _ in 0..8 {
            let port = Socket::open(server, &ports)
                .unwrap()
                .udp
                .local_addr()
                .unwrap()
                .port();
            assert!(ports.contains(&port), "{port} outside {ports:?}");
        }
    }
}
