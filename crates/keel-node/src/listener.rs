//! The listener behind a node's one port: plain TCP, TLS for clients, mutual TLS for peers.
//!
//! Each accepted connection is classified before any request is read on it:
//! 1. With no TLS configured it is plain, at once.
//! 2. Otherwise its first byte tells: `0x16` starts a TLS handshake; anything else is plain
//!    HTTP. Plain HTTP is served only while client TLS is off; with client TLS on, it gets
//!    one `400 tls_required` answer and is closed, so nothing (not even `/raft/stream`)
//!    is reachable in clear.
//! 3. A TLS ClientHello that offers [`PEER_ALPN`] gets the peer configuration (a client
//!    certificate from the cluster CA required, `tls.rs`); any other gets the client
//!    configuration. A handshake that fails (no certificate, another CA, no configuration
//!    for that kind) closes the connection and is logged.
//!
//! Handshakes run on their own tasks (at most `HANDSHAKES_MAX` at once, each bounded by
//! `HANDSHAKE_TIMEOUT`), so a slow or silent client never holds up the next `accept`. What
//! was learned goes with the connection as its [`ConnectionInfo`], which handlers read from
//! `axum::extract::ConnectInfo` (serve with `into_make_service_with_connect_info`).

use crate::tls::{ConnectionInfo, ConnectionSecurity, PEER_ALPN};
use crate::transport_http::WarnLimiter;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use rustls::ServerConfig;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;
use tracing::{debug, warn};

/// Connections being classified (TLS handshakes in flight) at once; more wait for a slot.
pub const HANDSHAKES_MAX: usize = 256;
/// The first byte, and the whole TLS handshake, must arrive within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Classified connections waiting for the HTTP server to take them.
const ACCEPTED_QUEUE_MAX: usize = 64;
/// A TLS record of type handshake starts with this byte.
const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// The body of the answer to plain HTTP on a port that serves TLS only (docs/API.md).
const TLS_REQUIRED_BODY: &str = "{\"error\":\"tls_required\",\"message\":\"this node serves clients over HTTPS only\",\"outcome\":\"not_applied\"}\n";

/// The TLS configurations a listener offers; `None` for a kind that is off.
#[derive(Clone, Debug, Default)]
pub struct ListenerTls {
    /// For connections offering `PEER_ALPN` (`PeerTls::server_config`).
    pub peer: Option<Arc<ServerConfig>>,
    /// For every other TLS connection (clients). With it on, plain HTTP is refused.
    pub client: Option<Arc<ServerConfig>>,
}

impl ListenerTls {
    fn is_off(&self) -> bool {
        self.peer.is_none() && self.client.is_none()
    }
}

/// A connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Accepts and classifies connections (see the module doc); give it to `axum::serve`.
pub struct Listener {
    accepted: mpsc::Receiver<(Stream, ConnectionInfo)>,
    local_addr: SocketAddr,
    acceptor: JoinHandle<()>,
}

impl Listener {
    /// Serves `listener` with `tls`; `tap` runs on every accepted socket (socket options).
    pub fn new(listener: TcpListener, tls: ListenerTls, tap: impl Fn(&TcpStream) + Send + 'static) -> io::Result<Listener> {
        let local_addr = listener.local_addr()?;
        let (queue, accepted) = mpsc::channel(ACCEPTED_QUEUE_MAX);
        let acceptor = tokio::spawn(accept_loop(listener, Arc::new(tls), tap, queue));
        Ok(Listener { accepted, local_addr, acceptor })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for Listener {
    type Io = Stream;
    type Addr = ConnectionInfo;

    async fn accept(&mut self) -> (Stream, ConnectionInfo) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accept loop never ends by itself; if it panicked, accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<ConnectionInfo> {
        Ok(ConnectionInfo { remote: self.local_addr, security: ConnectionSecurity::Plain })
    }
}

impl Connected<IncomingStream<'_, Listener>> for ConnectionInfo {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> ConnectionInfo {
        stream.remote_addr().clone()
    }
}

async fn accept_loop(listener: TcpListener, tls: Arc<ListenerTls>, tap: impl Fn(&TcpStream), queue: mpsc::Sender<(Stream, ConnectionInfo)>) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    let refusals = Arc::new(Mutex::new(WarnLimiter::default()));
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // As axum's own loop: out of file descriptors, say; wait rather than spin.
                warn!("accepting a connection failed: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tap(&stream);
        if tls.is_off() {
            let info = ConnectionInfo { remote, security: ConnectionSecurity::Plain };
            if queue.send((Stream::Plain(stream), info)).await.is_err() {
                return;
            }
            continue;
        }
        let Ok(slot) = handshakes.clone().acquire_owned().await else { return };
        let (tls, queue, refusals) = (tls.clone(), queue.clone(), refusals.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, classify(stream, remote, &tls)).await {
                Ok(Ok(connection)) => {
                    let _ = queue.send(connection).await;
                }
                Ok(Err(problem)) => log_refusal(&refusals, remote, &problem),
                Err(_) => debug!("closed a connection from {remote}: no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
            }
            drop(slot);
        });
    }
}

/// Steps 2 and 3 of the module doc.
async fn classify(stream: TcpStream, remote: SocketAddr, tls: &ListenerTls) -> Result<(Stream, ConnectionInfo), String> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await.map_err(|error| error.to_string())? == 0 {
        return Err("closed before sending anything".into());
    }
    if first[0] != TLS_HANDSHAKE_BYTE {
        if tls.client.is_some() {
            refuse_plain(stream).await;
            return Err("plain HTTP on a port that serves HTTPS only".into());
        }
        return Ok((Stream::Plain(stream), ConnectionInfo { remote, security: ConnectionSecurity::Plain }));
    }
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await.map_err(|error| format!("a broken TLS ClientHello: {error}"))?;
    let is_peer = start.client_hello().alpn().is_some_and(|mut protocols| protocols.any(|protocol| protocol == PEER_ALPN));
    let config = match (is_peer, &tls.peer, &tls.client) {
        (true, Some(peer), _) => peer.clone(),
        (false, _, Some(client)) => client.clone(),
        (true, None, _) => return Err("a peer TLS handshake, but peer TLS is off on this node".into()),
        (false, _, None) => return Err("a client TLS handshake, but client TLS is off on this node (it serves clients over plain HTTP)".into()),
    };
    let stream = start.into_stream(config).await.map_err(|error| format!("TLS handshake failed{}: {error}", if is_peer { " (as a peer)" } else { "" }))?;
    let certificate = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()).map(|certificate| certificate.clone().into_owned());
    let security = match (is_peer, certificate) {
        (true, Some(certificate)) => ConnectionSecurity::Peer { certificate },
        (true, None) => unreachable!("the peer configuration requires a client certificate"),
        (false, certificate) => ConnectionSecurity::Client { certificate },
    };
    Ok((Stream::Tls(Box::new(stream)), ConnectionInfo { remote, security }))
}

async fn refuse_plain(mut stream: TcpStream) {
    let answer = format!("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{TLS_REQUIRED_BODY}", TLS_REQUIRED_BODY.len());
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn log_refusal(refusals: &Mutex<WarnLimiter>, remote: SocketAddr, problem: &str) {
    let verdict = refusals.lock().expect("refusals lock").check(Instant::now());
    match verdict {
        Some(0) => warn!("refused a connection from {remote}: {problem}"),
        Some(suppressed) => warn!("refused a connection from {remote}: {problem} ({suppressed} more refused since the last warning)"),
        None => debug!("refused a connection from {remote}: {problem}"),
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(context, buffer),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, buffer),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, context: &mut Context<'_>, buffers: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write_vectored(context, buffers),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(context, buffers),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(context),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(context),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
        }
    }
}
