//! DNS clients: hickory-proto's wire format over UDP and TCP, and dig.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{Name, RecordType};

use super::require_or_skip;

/// Options for [`query_with`].
#[derive(Clone, Copy)]
pub struct Ask {
    pub tcp: bool,
    pub edns: Option<u16>,
    /// Source address for UDP (to play another client on loopback).
    pub from: Option<IpAddr>,
}

impl Default for Ask {
    fn default() -> Self {
        Ask {
            tcp: false,
            edns: Some(1232),
            from: None,
        }
    }
}

/// The response code for one UDP question.
pub fn rcode(server: SocketAddr, name: &str, rtype: RecordType) -> ResponseCode {
    query(server, name, rtype).metadata.response_code
}

/// Asserts the response code for one UDP question, written "NAME TYPE".
pub fn assert_rcode(server: SocketAddr, question: &str, want: ResponseCode) {
    let (name, rtype) = question
        .split_once(' ')
        .unwrap_or_else(|| panic!("{question:?} is not \"NAME TYPE\""));
    let rtype: RecordType = rtype.parse().unwrap();
    assert_eq!(rcode(server, name, rtype), want, "{question}");
}

/// One UDP question from another loopback address (another client).
pub fn query_from(server: SocketAddr, name: &str, rtype: RecordType, from: &str) -> Message {
    let from: IpAddr = from.parse().unwrap();
    query_with(
        server,
        name,
        rtype,
        Ask {
            from: Some(from),
            ..Ask::default()
        },
    )
}

pub fn query(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    query_with(server, name, rtype, Ask::default())
}

/// One question over UDP or TCP with hickory-proto's wire format.
pub fn query_with(server: SocketAddr, name: &str, rtype: RecordType, ask: Ask) -> Message {
    let mut msg = Message::query();
    msg.metadata.id = rand_id();
    msg.metadata.recursion_desired = true;
    msg.metadata.op_code = OpCode::Query;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = ask.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(size);
        msg.set_edns(edns);
    }
    let bytes = msg.to_vec().unwrap();
    let reply = if ask.tcp {
        exchange_tcp(server, &bytes)
    } else {
        exchange_udp(server, &bytes, ask.from)
    };
    let reply = Message::from_vec(&reply).expect("reply parses");
    assert_eq!(reply.metadata.id, msg.metadata.id);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    reply
}

pub fn exchange_udp(server: SocketAddr, bytes: &[u8], from: Option<IpAddr>) -> Vec<u8> {
    let any: IpAddr = if server.is_ipv4() {
        "0.0.0.0".parse().unwrap()
    } else {
        "::".parse().unwrap()
    };
    let local = SocketAddr::new(from.unwrap_or(any), 0);
    let sock = UdpSocket::bind(local).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.send_to(bytes, server).unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = recv_from(&sock, &mut buf).expect("UDP reply within 10 s");
    buf.truncate(n);
    buf
}

/// `recv_from` that waits on through signals: the tests share one process,
/// and a socket with a read timeout is not restarted after one (signal(7)).
pub fn recv_from(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    for _ in 0..8 {
        match sock.recv_from(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
    sock.recv_from(buf)
}

pub fn exchange_tcp(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    s.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn rand_id() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u16
}

/// Runs dig against allowdns; returns stdout. Fails in CI if dig is missing.
pub fn dig(server: SocketAddr, args: &[&str]) -> Option<String> {
    let port = server.port().to_string();
    let at = format!("@{}", server.ip());
    match Command::new("dig")
        .arg(&at)
        .args(["-p", &port])
        .args(args)
        .output()
    {
        Ok(out) => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        Err(e) => {
            require_or_skip(&format!("dig is not installed ({e})"));
            None
        }
    }
}

/// Answer records as ("name", "TYPE", "data") for easy asserts.
pub fn answers(m: &Message) -> Vec<(String, String, String)> {
    m.answers
        .iter()
        .map(|r| {
            (
                r.name.to_ascii().trim_end_matches('.').to_lowercase(),
                r.record_type().to_string(),
                r.data.to_string(),
            )
        })
        .collect()
}

/// Presentation form → wire labels (RFC 1035 5.1 escapes), unchecked lengths;
/// an empty label stays (a malformed name is the point of some tests).
pub fn wire_labels(name: &str) -> Vec<Vec<u8>> {
    if name == "." {
        return Vec::new();
    }
    let bytes = name.as_bytes();
    let mut labels = vec![Vec::new()];
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit) => {
                let n: u16 = name[i + 1..i + 4].parse().unwrap();
                labels.last_mut().unwrap().push(n as u8);
                i += 4;
            }
            b'\\' => {
                labels.last_mut().unwrap().push(bytes[i + 1]);
                i += 2;
            }
            b'.' => {
                labels.push(Vec::new());
                i += 1;
            }
            b => {
                labels.last_mut().unwrap().push(b);
                i += 1;
            }
        }
    }
    if labels.last().is_some_and(Vec::is_empty) {
        labels.pop(); // the trailing dot: the root label comes anyway
    }
    labels
}
