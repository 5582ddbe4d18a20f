//! sock_diag (NETLINK_SOCK_DIAG): which socket, by its exact id, in one
//! network namespace. A netlink socket stays in the namespace it was made
//! in, so each namespace gets one, opened once on a thread that entered it.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NlAddr};

use super::Proto;

/// How long one sock_diag answer may take; the kernel answers in µs.
const RECV_TIMEOUT: Duration = Duration::from_millis(50);

/// sock_diag and an address probe in one network namespace.
pub(super) struct Diag {
    socket: Socket,
    seq: u32,
    /// UDP sockets made in the namespace: connecting one to an address tells
    /// whether that address is the namespace's own (the route picks it as source).
    probe_v4: Option<UdpSocket>,
    probe_v6: Option<UdpSocket>,
}

/// A socket sock_diag found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Found {
    pub inode: u64,
    pub uid: u32,
}

impl Diag {
    /// Opens the sockets inside `netns` (`None`: ours).
    pub(super) fn open(netns: Option<&Path>) -> io::Result<Diag> {
        crate::netns::within(netns, Diag::open_here)
    }

    fn open_here() -> io::Result<Diag> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&NlAddr::new(0, 0))?;
        let timeout = nix::sys::time::TimeVal::new(0, RECV_TIMEOUT.as_micros() as i64);
        nix::sys::socket::setsockopt(
            &socket.as_fd(),
            nix::sys::socket::sockopt::ReceiveTimeout,
            &timeout,
        )
        .map_err(io::Error::from)?;
        Ok(Diag {
            socket,
            seq: 0,
            probe_v4: UdpSocket::bind("0.0.0.0:0").ok(),
            probe_v6: UdpSocket::bind("[::]:0").ok(),
        })
    }

    /// The socket whose own address is `local` and peer `remote`: exact
    /// lookup, as the kernel would deliver to it. `Ok(None)`: no such socket.
    pub(super) fn find(
        &mut self,
        proto: Proto,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> io::Result<Option<Found>> {
        let (local, remote) = (canonical(local), canonical(remote));
        if local.is_ipv4() != remote.is_ipv4() {
            return Ok(None);
        }
        let family = if local.is_ipv4() { AF_INET } else { AF_INET6 };
        // The kernel looks a UDP socket up with source and destination
        // swapped (inet_diag's "historical reasons"); TCP's are as named.
        let (src, dst) = match proto {
            Proto::Tcp => (local, remote),
            Proto::Udp => (remote, local),
        };
        let socket_id = SocketId {
            source_port: src.port(),
            destination_port: dst.port(),
            source_address: src.ip(),
            destination_address: dst.ip(),
            interface_id: 0,
            cookie: [0xff; 8], // INET_DIAG_NOCOOKIE
        };
        self.ask(family, proto, socket_id, NLM_F_REQUEST)?;
        let mut rx = vec![0u8; 8192];
        // Bounded: a late answer to an earlier (timed out) question is skipped.
        for _ in 0..8 {
            let n = self.socket.recv(&mut &mut rx[..], 0)?;
            if let Some(payload) = answers(&rx[..n], self.seq)?.into_iter().next() {
                return match payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        Ok(Some(Found {
                            inode: u64::from(r.header.inode),
                            uid: r.header.uid,
                        }))
                    }
                    NetlinkPayload::Error(e) => match e.code {
                        Some(code) if -code.get() == nix::libc::ENOENT => Ok(None),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        None => Ok(None),
                    },
                    _ => Ok(None),
                };
            }
        }
        Err(io::Error::other("sock_diag: no answer to this question"))
    }

    /// The socket bound to `local`, whatever its peer: a dump of the
    /// protocol's sockets, for a server listening on a wildcard address
    /// (the client's peer address is then not known here).
    pub(super) fn find_local(
        &mut self,
        proto: Proto,
        local: SocketAddr,
    ) -> io::Result<Option<Found>> {
        let local = canonical(local);
        let family = if local.is_ipv4() { AF_INET } else { AF_INET6 };
        let socket_id = if local.is_ipv4() {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        };
        self.ask(family, proto, socket_id, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut rx = vec![0u8; 32 * 1024];
        let mut found = None;
        // Bounded: an agent's namespace holds few sockets; a huge one is cut short.
        for _ in 0..256 {
            let n = self.socket.recv(&mut &mut rx[..], 0)?;
            for payload in answers(&rx[..n], self.seq)? {
                match payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        let id = &r.header.socket_id;
                        if found.is_none()
                            && id.source_port == local.port()
                            && bound_to(id.source_address, local.ip())
                        {
                            found = Some(Found {
                                inode: u64::from(r.header.inode),
                                uid: r.header.uid,
                            });
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(found),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            None => Ok(found),
                        };
                    }
                    _ => {}
                }
            }
        }
        Ok(found)
    }

    /// Sends the next question (a fresh sequence number) for `socket_id`.
    fn ask(&mut self, family: u8, proto: Proto, socket_id: SocketId, flags: u16) -> io::Result<()> {
        let request = SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: match proto {
                Proto::Tcp => IPPROTO_TCP,
                Proto::Udp => IPPROTO_UDP,
            },
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id,
        });
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, request.into());
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        Ok(())
    }

    /// Whether `ip` is an address of this namespace (loopback included).
    pub(super) fn is_local(&self, ip: IpAddr) -> bool {
        let ip = canonical(SocketAddr::new(ip, 0)).ip();
        if ip.is_loopback() {
            return true;
        }
        let probe = match ip {
            IpAddr::V4(_) => &self.probe_v4,
            IpAddr::V6(_) => &self.probe_v6,
        };
        // A connected UDP socket takes its source from the route; towards an
        // address of our own, that source is the address itself.
        probe.as_ref().is_some_and(|p| {
            p.connect(SocketAddr::new(ip, 9)).is_ok() && p.local_addr().is_ok_and(|l| l.ip() == ip)
        })
    }
}

/// The messages of one datagram that answer question `seq`, in order.
fn answers(rx: &[u8], seq: u32) -> io::Result<Vec<NetlinkPayload<SockDiagMessage>>> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < rx.len() {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[offset..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let len = msg.header.length as usize;
        if msg.header.sequence_number == seq {
            out.push(msg.payload);
        }
        if len == 0 {
            break;
        }
        offset += len;
    }
    Ok(out)
}

/// Whether a socket bound to `bound` receives for `ip` (a wildcard does).
fn bound_to(bound: IpAddr, ip: IpAddr) -> bool {
    let bound = canonical(SocketAddr::new(bound, 0)).ip();
    bound == ip || bound.is_unspecified()
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}
