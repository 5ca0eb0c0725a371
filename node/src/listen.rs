//! The node's three listeners, accept side: TCP accept, connection limits,
//! the TLS handshake (with a deadline) and the caller's certificate
//! identity, handed to tonic or axum as ready connections.
//!
//! Limits, so that a stranger who can reach a port cannot exhaust the node:
//! at most [`Limits::connections_max`] open connections per listener, at
//! most [`Limits::handshakes_per_ip_max`] handshakes in flight per source
//! address, and every handshake done within [`HANDSHAKE_TIMEOUT_MS`]. A connection
//! over a limit is closed at once and counted.
//!
//! May touch sockets only. Logs a refused handshake once per source
//! address and reason (bounded), counts every one.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use billdb_api::identity::Identity;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::tls::Tls;

/// A TLS handshake not done within this time is dropped.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Source addresses (and reasons) remembered for log-once.
const LOGGED_REFUSALS_MAX: usize = 1_024;
/// Ready connections waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// Which listener, for TLS configuration, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Raft,
    Grpc,
    Http,
}

impl Port {
    pub fn as_str(self) -> &'static str {
        match self {
            Port::Raft => "raft",
            Port::Grpc => "grpc",
            Port::Http => "http",
        }
    }
}

/// Per-listener bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections_max: usize,
    /// Handshakes in flight from one source address.
    pub handshakes_per_ip_max: usize,
}

impl Limits {
    pub fn for_port(port: Port) -> Limits {
        match port {
            // Peers hold one HTTP/2 connection each and reconnect one at a
            // time; more is an attack or a bug.
            Port::Raft => Limits {
                connections_max: 256,
                handshakes_per_ip_max: 16,
            },
            // Counters, bank front-ends (many connections from one address,
            // e.g. behind NAT or a pool opening at once) and tools.
            Port::Grpc | Port::Http => Limits {
                connections_max: 4_096,
                handshakes_per_ip_max: 512,
            },
        }
    }
}

/// Who is on the other end of a connection, as the handshake showed.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// The identity the caller's certificate names (`None`: no client
    /// certificate, or a plaintext listener).
    pub identity: Option<Identity>,
    /// Whether this connection is TLS.
    pub tls: bool,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection: plaintext or TLS, holding its slot in the
/// listener's connection bound until dropped.
pub struct Conn {
    io: Io,
    info: PeerInfo,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

/// Log a refusal once per (source address, reason); count every one.
#[derive(Default)]
struct Refusals {
    logged: Mutex<HashSet<(IpAddr, &'static str)>>,
}

impl Refusals {
    fn note(&self, port: Port, remote: SocketAddr, reason: &'static str, detail: &str) {
        metrics::counter!(
            "billdb_listener_refused_total",
            "listener" => port.as_str(),
            "reason" => reason
        )
        .increment(1);
        let first = {
            let mut seen = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() >= LOGGED_REFUSALS_MAX {
                seen.clear();
            }
            seen.insert((remote.ip(), reason))
        };
        if first {
            tracing::warn!(
                listener = port.as_str(),
                peer = %remote,
                reason,
                detail,
                "refused a connection (logged once per address and reason)"
            );
        }
    }
}

/// Handshakes in flight per source address.
#[derive(Default)]
struct PerIp {
    in_flight: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn try_enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PerIpGuard> {
        let mut m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerIpGuard {
            table: self.clone(),
            ip,
        })
    }
}

struct PerIpGuard {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut m = self
            .table
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Accept on `listener` forever (until the receiver is dropped), handing
/// out ready connections: TLS with `tls`'s current material for `port`, or
/// plaintext when `tls` is `None`.
pub fn spawn_accept(
    listener: TcpListener,
    port: Port,
    tls: Option<Arc<Tls>>,
    limits: Limits,
) -> mpsc::Receiver<Conn> {
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let refusals = Arc::new(Refusals::default());
    let per_ip = Arc::new(PerIp::default());
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait, retry.
                    tracing::warn!(listener = port.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refusals.note(port, remote, "connections_max", "too many open connections");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let Some(tls) = tls.clone() else {
                let conn = Conn {
                    io: Io::Plain(tcp),
                    info: PeerInfo {
                        remote,
                        identity: None,
                        tls: false,
                    },
                    _slot: slot,
                };
                if tx.send(conn).await.is_err() {
                    return;
                }
                continue;
            };
            let Some(ip_guard) = per_ip.try_enter(remote.ip(), limits.handshakes_per_ip_max) else {
                refusals.note(port, remote, "handshakes_per_ip_max", "too many handshakes");
                continue;
            };
            let tx = tx.clone();
            let refusals = refusals.clone();
            tokio::spawn(async move {
                let material = tls.current();
                let config = match port {
                    Port::Raft => material.raft_server.clone(),
                    Port::Grpc => material.grpc_server.clone(),
                    Port::Http => material.http_server.clone(),
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let handshake = tokio::time::timeout(
                    Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
                    acceptor.accept(tcp),
                )
                .await;
                drop(ip_guard);
                let stream = match handshake {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        refusals.note(port, remote, "handshake", &e.to_string());
                        return;
                    }
                    Err(_) => {
                        refusals.note(port, remote, "handshake_timeout", "no handshake in time");
                        return;
                    }
                };
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|leaf| crate::tls::identity_of(leaf));
                let conn = Conn {
                    io: Io::Tls(Box::new(stream)),
                    info: PeerInfo {
                        remote,
                        identity,
                        tls: true,
                    },
                    _slot: slot,
                };
                let _ = tx.send(conn).await;
            });
        }
    });
    rx
}

/// Ready connections as an axum listener; the address handed to the
/// router is the connection's [`PeerInfo`].
pub struct AxumListener {
    pub rx: mpsc::Receiver<Conn>,
    pub local: SocketAddr,
}

impl axum::serve::Listener for AxumListener {
    type Io = Conn;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Conn, PeerInfo) {
        match self.rx.recv().await {
            Some(c) => {
                let info = c.info.clone();
                (c, info)
            }
            // The accept loop ended: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<PeerInfo> {
        Ok(PeerInfo {
            remote: self.local,
            identity: None,
            tls: false,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AxumListener>>
    for PeerInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, AxumListener>) -> Self {
        stream.remote_addr().clone()
    }
}
