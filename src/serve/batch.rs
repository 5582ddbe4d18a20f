//! UDP datagrams in batches: one `recvmmsg(2)` takes the queries already
//! queued (at least one, up to [`BATCH`]), one `sendmmsg(2)` sends their
//! replies. Under load a serving thread makes two system calls per batch
//! instead of two per query; idle, it behaves as `recv_from` did.
//!
//! Hand-written over libc: std has no `recvmmsg`, and nix's ties every
//! buffer's borrow to its headers' for as long as the results live, so a
//! loop that reuses them fights the borrow checker. The profile of the
//! unique-denied flood had two thirds of a query's time in the kernel, a
//! fixed part of it per system call (docs/performance.md).
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use nix::libc;

/// Datagrams taken or sent in one system call.
pub const BATCH: usize = 32;
/// The largest query read whole; a longer one is cut, as `recv_from` cut it.
const SIZE: usize = 4096;

/// Receive buffers and headers, and the send side's headers, reused batch
/// after batch by one thread: nothing is allocated per batch.
pub struct Batch {
    data: Box<[u8]>,
    addrs: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    heads: Box<[libc::mmsghdr]>,
    out_addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    out_iovs: Vec<libc::iovec>,
    out_heads: Vec<libc::mmsghdr>,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch::new()
    }
}

impl Batch {
    pub fn new() -> Batch {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zero_addr: libc::sockaddr_storage = unsafe { zeroed() };
        let zero_head: libc::mmsghdr = unsafe { zeroed() };
        let mut batch = Batch {
            data: vec![0; BATCH * SIZE].into_boxed_slice(),
            addrs: vec![zero_addr; BATCH].into_boxed_slice(),
            iovs: (0..BATCH)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: SIZE,
                })
                .collect(),
            heads: vec![zero_head; BATCH].into_boxed_slice(),
            out_addrs: Vec::with_capacity(BATCH),
            out_iovs: Vec::with_capacity(BATCH),
            out_heads: Vec::with_capacity(BATCH),
        };
        // The boxes' memory stays put when the batch moves: point once.
        for i in 0..BATCH {
            batch.iovs[i].iov_base = batch.data[i * SIZE..].as_mut_ptr().cast();
            let head = &mut batch.heads[i].msg_hdr;
            head.msg_name = (&raw mut batch.addrs[i]).cast();
            head.msg_iov = &raw mut batch.iovs[i];
            head.msg_iovlen = 1;
        }
        batch
    }

    /// Waits for at least one datagram (as long as the socket's read timeout)
    /// and takes the others already queued; how many.
    pub fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        for head in &mut self.heads {
            // The kernel wrote the last sender's length and the flags here.
            head.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            head.msg_hdr.msg_flags = 0;
            head.msg_len = 0;
        }
        // SAFETY: every header points at this batch's own buffers and
        // addresses, which outlive the call; the count matches the arrays.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.heads.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Datagram `i` of the last batch and its sender (`None`: not an IP
    /// address the kernel gave).
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let len = (self.heads[i].msg_len as usize).min(SIZE);
        let bytes = &self.data[i * SIZE..i * SIZE + len];
        (bytes, from_storage(&self.addrs[i]))
    }

    /// Sends each reply to its address, in as few system calls as the kernel
    /// allows; a datagram the kernel refuses is skipped, as `send_to`'s error
    /// was (logged at debug).
    pub fn send(&mut self, socket: &UdpSocket, replies: &[(Vec<u8>, SocketAddr)]) {
        for chunk in replies.chunks(BATCH) {
            // Filled whole before any pointer into them is taken: within
            // their capacity, so they do not move.
            self.out_addrs.clear();
            self.out_addrs
                .extend(chunk.iter().map(|(_, to)| to_storage(to)));
            self.out_iovs.clear();
            self.out_iovs
                .extend(chunk.iter().map(|(reply, _)| libc::iovec {
                    iov_base: reply.as_ptr() as *mut libc::c_void,
                    iov_len: reply.len(),
                }));
            self.out_heads.clear();
            for i in 0..chunk.len() {
                // SAFETY: all-zero is a valid mmsghdr.
                let mut head: libc::mmsghdr = unsafe { zeroed() };
                head.msg_hdr.msg_name = (&raw mut self.out_addrs[i].0).cast();
                head.msg_hdr.msg_namelen = self.out_addrs[i].1;
                head.msg_hdr.msg_iov = &raw mut self.out_iovs[i];
                head.msg_hdr.msg_iovlen = 1;
                self.out_heads.push(head);
            }
            let mut at = 0;
            while at < self.out_heads.len() {
                // SAFETY: the headers point at `out_addrs`, `out_iovs` and
                // the replies, all alive and unmoved until this loop ends;
                // the kernel only reads the iovecs' bytes.
                let n = unsafe {
                    libc::sendmmsg(
                        socket.as_raw_fd(),
                        self.out_heads[at..].as_mut_ptr(),
                        (self.out_heads.len() - at) as libc::c_uint,
                        0,
                    )
                };
                match usize::try_from(n) {
                    Ok(sent) if sent > 0 => at += sent,
                    _ => {
                        let e = io::Error::last_os_error();
                        if e.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        tracing::debug!(error = %e, to = %chunk[at].1, "UDP send failed");
                        at += 1;
                    }
                }
            }
        }
    }
}

fn from_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(storage as *const _ as *const _) };
            let ip = u32::from_be(a.sin_addr.s_addr);
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip.into(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(storage as *const _ as *const _) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.sin6_addr.s6_addr.into(),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_storage(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any
            // sockaddr.
            let out: &mut libc::sockaddr_in = unsafe { &mut *(&raw mut storage).cast() };
            out.sin_family = libc::AF_INET as libc::sa_family_t;
            out.sin_port = a.port().to_be();
            out.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let out: &mut libc::sockaddr_in6 = unsafe { &mut *(&raw mut storage).cast() };
            out.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            out.sin6_port = a.port().to_be();
            out.sin6_flowinfo = a.flowinfo().to_be();
            out.sin6_addr.s6_addr = a.ip().octets();
            out.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_sockaddr_storage() {
        for addr in ["192.0.2.7:53", "[2001:db8::1]:5353", "[fe80::1%3]:53"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(from_storage(&to_storage(&addr).0), Some(addr));
        }
    }

    #[test]
    fn a_batch_takes_what_is_queued_and_replies_reach_each_sender() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let clients: Vec<UdpSocket> = (0..5)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for (i, c) in clients.iter().enumerate() {
            c.send_to(&[i as u8; 3], server.local_addr().unwrap())
                .unwrap();
        }
        let mut batch = Batch::new();
        let mut got = Vec::new();
        while got.len() < clients.len() {
            let n = batch.receive(&server).unwrap();
            for i in 0..n {
                let (bytes, from) = batch.get(i);
                got.push((bytes.to_vec(), from.unwrap()));
            }
        }
        let replies: Vec<(Vec<u8>, SocketAddr)> = got
            .iter()
            .map(|(bytes, from)| (bytes.iter().map(|b| b + 100).collect(), *from))
            .collect();
        batch.send(&server, &replies);
        for (i, c) in clients.iter().enumerate() {
            c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 16];
            let n = c.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i as u8 + 100; 3]);
        }
    }
}
