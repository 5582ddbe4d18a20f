//! The upstream: a hickory authoritative server on 127.0.0.x (or in a
//! namespace) that records every question it receives.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::rr::{LowerName, Name, RecordType};
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};

/// Questions the upstream received, as ("name" lowercased without dot, type).
pub type Log = Arc<Mutex<Vec<(String, RecordType)>>>;
/// Names (lowercased without dot) the upstream answers only after a delay.
pub type Delays = Arc<Mutex<std::collections::HashMap<String, Duration>>>;

struct Recording {
    catalog: Catalog,
    log: Log,
    sent: Log,
    delays: Delays,
}

#[async_trait::async_trait]
impl RequestHandler for Recording {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        handle: R,
    ) -> ResponseInfo {
        for q in request.queries.queries() {
            let as_sent = q.original().name().to_ascii();
            let as_sent = as_sent.trim_end_matches('.').to_string();
            // allowdns's start-up probe (the root's NS) comes at a time of its
            // own: it is no client's question, and not the attacker's data.
            if !as_sent.is_empty() {
                self.sent.lock().unwrap().push((as_sent, q.query_type()));
            }
            let name = q.original().name().to_ascii().to_lowercase();
            let name = name.trim_end_matches('.').to_string();
            let delay = self.delays.lock().unwrap().get(&name).copied();
            self.log.lock().unwrap().push((name, q.query_type()));
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
        }
        self.catalog.handle_request::<R, T>(request, handle).await
    }
}

/// A running authoritative upstream; stopped when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    pub log: Log,
    /// The same questions with names as sent (letter case kept): what the
    /// zone's operator reads.
    pub sent: Log,
    pub delays: Delays,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    /// Serves the given zone files on `ip:port` (port 0 picks one).
    pub fn start(ip: &str, port: u16, zone_files: &[PathBuf]) -> Upstream {
        let mut catalog = Catalog::new();
        for file in zone_files {
            let text =
                std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let stem = file.file_stem().unwrap().to_str().unwrap();
            let origin = if stem == "root" {
                Name::root()
            } else {
                Name::from_ascii(format!("{stem}.")).unwrap()
            };
            let (origin, records) = Parser::new(text, Some(file.clone()), Some(origin))
                .parse()
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let zone =
                InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::new(
                    origin.clone(),
                    records,
                    ZoneType::Primary,
                    AxfrPolicy::Deny,
                )
                .unwrap();
            let handlers: Vec<Arc<dyn ZoneHandler>> = vec![Arc::new(zone)];
            catalog.upsert(LowerName::new(&origin), handlers);
        }
        let log: Log = Arc::default();
        let sent: Log = Arc::default();
        let delays: Delays = Arc::default();
        let handler = Recording {
            catalog,
            log: log.clone(),
            sent: sent.clone(),
            delays: delays.clone(),
        };
        let bind: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        // Port 0: the UDP port the kernel picks may be taken for TCP; pick again.
        let tries = if port == 0 { 20 } else { 1 };
        let (udp, tcp, addr) = (1..=tries)
            .find_map(|attempt| {
                let udp = std::net::UdpSocket::bind(bind)
                    .unwrap_or_else(|e| panic!("bind upstream {bind}: {e}"));
                let addr = udp.local_addr().unwrap();
                match std::net::TcpListener::bind(addr) {
                    Ok(tcp) => Some((udp, tcp, addr)),
                    Err(e) if attempt == tries => panic!("bind upstream tcp {addr}: {e}"),
                    Err(_) => None,
                }
            })
            .expect("bounded retries end in a bind or a panic");
        udp.set_nonblocking(true).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut server = hickory_server::Server::new(handler);
                server.register_socket(tokio::net::UdpSocket::from_std(udp).unwrap());
                server.register_listener(
                    tokio::net::TcpListener::from_std(tcp).unwrap(),
                    Duration::from_secs(5),
                    65535,
                );
                let _ = stopped.await;
                let _ = server.shutdown_gracefully().await;
            });
        });
        Upstream {
            addr,
            log,
            sent,
            delays,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Every name the upstream was asked about.
    pub fn names(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Every name asked but the root, whose NS allowdns asks once at start-up
    /// (its upstream probe, a fixed question that carries nothing of a client's).
    pub fn names_but_probe(&self) -> Vec<String> {
        let mut names = self.names();
        names.retain(|n| !n.is_empty());
        names
    }

    pub fn count(&self, name: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == name)
            .count()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
