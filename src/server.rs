//! Sockets: binding them (before anything else can fail late) and serving
//! DNS on them until the shutdown token fires.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::Server;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::handler::Handler;

/// Idle TCP connections are closed after this long.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound sockets, one UDP and one TCP per listen address.
pub struct Listeners {
    pub udp: Vec<UdpSocket>,
    pub tcp: Vec<TcpListener>,
}

impl Listeners {
    /// Binds UDP and TCP on every address. Port 0 picks one free port for both.
    pub fn bind(addrs: &[SocketAddr]) -> io::Result<Listeners> {
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for &addr in addrs {
            let (u, t) = bind_pair(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            udp.push(u);
            tcp.push(t);
        }
        Ok(Listeners { udp, tcp })
    }

    /// The bound addresses, as `proto://addr`.
    pub fn describe(&self) -> Vec<String> {
        let udp = self
            .udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .map(|a| format!("udp://{a}"));
        let tcp = self
            .tcp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .map(|a| format!("tcp://{a}"));
        udp.chain(tcp).collect()
    }
}

fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    // With port 0 the kernel picks the UDP port; TCP may find it taken, so retry.
    let attempts = if addr.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = socket(addr, Type::DGRAM, Protocol::UDP)?;
        udp.bind(&addr.into())?;
        let bound = udp.local_addr()?.as_socket().expect("inet socket");
        let tcp = socket(bound, Type::STREAM, Protocol::TCP)?;
        tcp.set_reuse_address(true)?;
        match tcp.bind(&bound.into()) {
            Ok(()) => {
                tcp.listen(1024)?;
                return Ok((
                    UdpSocket::from_std(udp.into())?,
                    TcpListener::from_std(tcp.into())?,
                ));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        // Keep v4 and v6 listeners independent, as listed.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Serves until `shutdown` fires, then stops accepting and returns.
pub async fn run(
    listeners: Listeners,
    handler: Handler,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut server = Server::new(handler);
    for socket in listeners.udp {
        server.register_socket(socket);
    }
    for listener in listeners.tcp {
        server.register_listener(listener, TCP_TIMEOUT, 64 * 1024);
    }
    tokio::select! {
        result = server.block_until_done() => {
            result.map_err(|e| io::Error::other(format!("server stopped: {e}")))
        }
        _ = shutdown.cancelled() => {
            server
                .shutdown_gracefully()
                .await
                .map_err(|e| io::Error::other(format!("shutdown: {e}")))
        }
    }
}
