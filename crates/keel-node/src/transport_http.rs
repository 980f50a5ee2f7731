//! HTTP transport: each node keeps one long-lived stream to each peer, opened with an HTTP
//! upgrade, and writes its messages to it as length-prefixed binary frames.
//!
//! # Opening a stream
//!
//! The sender asks `GET /raft/stream?protocol=<PROTOCOL_VERSION>&cluster=<cluster id>&from=<its id>`
//! with `Connection: upgrade` and `Upgrade: keel-raft`. The receiver answers:
//!
//! | status | meaning |
//! |---|---|
//! | 101 | accepted: from now on the connection carries frames from the caller to this node |
//! | 400 | a missing or malformed query, or another protocol version |
//! | 403 | another cluster id: two clusters' addresses overlap (logged at warn, nothing stepped); or, with peer TLS on, a connection without a peer certificate from the cluster CA naming node `from` (`tls.rs`) |
//! | 426 | not an upgrade request (a plain `curl`, say) |
//! | 503 | the node behind this route has stopped |
//!
//! Checking version, cluster and identity once, at the handshake, keeps them out of every
//! frame; a message in the stream that claims another sender than `from` closes it.
//!
//! With peer TLS ([`HttpTransport::with_peer_tls`]) the sender dials `https://` with its
//! node certificate and checks the receiver's names the node it meant to reach.
//!
//! # Frames
//!
//! `[u32 LE length][postcard Vec<Message>]`, the length at most `frame_bytes_max`. Each
//! message addressed to this node goes into its inbox (or is dropped if the inbox is full:
//! Raft retries); one addressed to another id is dropped with a warning (the sender's peer
//! map is wrong). An oversized or undecodable frame is logged and the stream closed: after a
//! framing error nothing later on it can be trusted. The stream is one-way; a reply is a
//! message on the replier's own stream. InstallSnapshot needs nothing special: the core
//! already cuts a snapshot into chunks of `snapshot_chunk_bytes_max` (1 MiB by default).
//! A message whose `from` is not the stream's `from` closes the stream too: with peer TLS
//! it would be a node speaking for another.
//!
//! Compared with one request per batch, a stream saves a round trip per batch (the next
//! frame need not wait for an answer), the HTTP headers, and a task hop on each side.
//!
//! # Sending
//!
//! [`Transport::send`] never blocks the driver: it puts the message on its peer's bounded
//! queue, or drops it when that queue is full. One task per peer takes whatever is queued
//! (up to the batch limits) and writes it as one frame, so a peer receives a node's
//! messages in the order they were sent. The task opens the stream when it has something
//! to send and none is open; a failed handshake or write drops that batch and the stream
//! (the next batch reconnects) rather than retrying: Raft repeats what matters (heartbeats,
//! AppendEntries after a rejection, votes on the next election), and a stale retry could
//! only arrive after newer messages. Opening and each write are bounded by `io_timeout_ms`,
//! and so is unacknowledged data in the kernel (see `build_client`): a peer that stops
//! reading, or is cut off by a partition, costs a reconnect, not a stuck sender. A peer that is down
//! is normal, so failures log at debug, with one warning per peer every `WARN_INTERVAL`.
//!
//! When the `HttpTransport` is dropped (the driver stopped), the queues close and each
//! peer's task ends after its write in flight, if any, closing its stream. A receiver whose
//! node stopped closes the streams it holds, so senders reconnect (to a restarted node,
//! perhaps) and meet 503 until one listens there again. A stream whose sender vanished
//! without closing it (a partition, a power cut) is found by TCP keepalive on the accepting
//! socket, which the server sets (keel-server's `server.rs`); nothing else would tell a
//! receiver that only reads.

use crate::tls::{certificate_names_node, ConnectionInfo, ConnectionSecurity, PeerTls};
use crate::transport::{Transport, PROTOCOL_VERSION};
use axum::extract::ConnectInfo;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use keel_core::{Message, MessageBody, NodeId};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// The path a sender opens its stream on.
pub const STREAM_PATH: &str = "/raft/stream";

/// The `Upgrade` token of a peer stream.
pub const UPGRADE_PROTOCOL: &str = "keel-raft";

/// Bytes of a frame's length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// At most one warning per peer (sending) or per route (receiving) in this interval; the
/// rest go to debug and are counted in the next warning.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Counted for a message's fixed fields in the batch byte limit, on top of its payload.
const MESSAGE_OVERHEAD_BYTES: usize = 64;

/// An answer body quoted in a log line is cut to this length.
const LOGGED_ANSWER_BYTES_MAX: usize = 200;

/// The receiver reads a stream through a buffer of this size, so a burst of small frames
/// costs one read call, not two per frame.
const READ_BUFFER_BYTES: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpTransportConfig {
    /// Opening a stream (connecting and the handshake), and writing one frame.
    pub io_timeout_ms: u64,
    /// Messages queued for one peer before new ones are dropped.
    pub queue_messages_max: usize,
    /// Messages in one frame.
    pub batch_messages_max: usize,
    /// Estimated payload bytes in one frame. A single larger message (an AppendEntries of
    /// `append_bytes_max`, say) still goes, alone.
    pub batch_bytes_max: usize,
    /// The largest frame this node accepts; keep it above the peers' `batch_bytes_max` plus
    /// encoding overhead.
    pub frame_bytes_max: usize,
}

impl Default for HttpTransportConfig {
    fn default() -> HttpTransportConfig {
        HttpTransportConfig {
            io_timeout_ms: 2000,
            queue_messages_max: 16_384,
            batch_messages_max: 4096,
            batch_bytes_max: 8 << 20,
            frame_bytes_max: 16 << 20,
        }
    }
}

impl HttpTransportConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.io_timeout_ms == 0 {
            return Err("io_timeout_ms must be at least 1".into());
        }
        if self.queue_messages_max == 0 || self.batch_messages_max == 0 || self.batch_bytes_max == 0 || self.frame_bytes_max == 0 {
            return Err("queue_messages_max, batch_messages_max, batch_bytes_max and frame_bytes_max must be at least 1".into());
        }
        if self.batch_bytes_max > self.frame_bytes_max {
            return Err(format!("batch_bytes_max ({}) must not exceed frame_bytes_max ({}): peers would refuse full batches", self.batch_bytes_max, self.frame_bytes_max));
        }
        if self.frame_bytes_max > u32::MAX as usize {
            return Err(format!("frame_bytes_max ({}) must fit the u32 length prefix", self.frame_bytes_max));
        }
        Ok(())
    }
}

/// Sends a node's messages to its peers over HTTP streams; see the module doc.
pub struct HttpTransport {
    id: NodeId,
    cluster_id: String,
    config: HttpTransportConfig,
    client: reqwest::Client,
    /// The addresses given at construction: used for peers the configuration names none
    /// for (a joining node knows the members only from the member it joined through).
    base_addresses: BTreeMap<NodeId, String>,
    /// Peer TLS: each peer is dialed with its own client, which checks it is that peer.
    tls: Option<Arc<PeerTls>>,
    /// One queue, and one sender task behind it, per peer. Written only when the
    /// configuration changes; read on every send.
    peers: RwLock<BTreeMap<NodeId, PeerQueue>>,
}

struct PeerQueue {
    address: String,
    queue: mpsc::Sender<Message>,
}

impl HttpTransport {
    /// `peers` maps each peer's id to its `host:port`; an entry for `id` itself is ignored.
    /// Spawns one sender task per peer, so it must be called inside a tokio runtime.
    ///
    /// # Panics
    /// On a config that fails [`HttpTransportConfig::validate`] (call that first with
    /// operator input), or if the HTTP client cannot be built.
    pub fn new(id: NodeId, cluster_id: String, peers: BTreeMap<NodeId, String>, config: HttpTransportConfig) -> HttpTransport {
        HttpTransport::build(id, cluster_id, peers, config, None)
    }

    /// As [`HttpTransport::new`], over mutual TLS (`tls.rs`): streams go to `https://`
    /// addresses, and each peer must prove it is the node the configuration says.
    pub fn with_peer_tls(id: NodeId, cluster_id: String, peers: BTreeMap<NodeId, String>, config: HttpTransportConfig, tls: Arc<PeerTls>) -> HttpTransport {
        assert_eq!(tls.id(), id, "a node dials with its own certificate");
        HttpTransport::build(id, cluster_id, peers, config, Some(tls))
    }

    fn build(id: NodeId, cluster_id: String, peers: BTreeMap<NodeId, String>, config: HttpTransportConfig, tls: Option<Arc<PeerTls>>) -> HttpTransport {
        if let Err(problem) = config.validate() {
            panic!("[NODE {id}] invalid HTTP transport config: {problem}");
        }
        let client = build_client(&config, None);
        let transport = HttpTransport { id, cluster_id, config, client, base_addresses: peers, tls, peers: RwLock::new(BTreeMap::new()) };
        transport.set_peer_addresses(&BTreeMap::new());
        transport
    }

    fn spawn_sender(&self, peer: NodeId, address: &str) -> mpsc::Sender<Message> {
        let (queue, queue_receiver) = mpsc::channel(self.config.queue_messages_max);
        let (scheme, client) = match &self.tls {
            Some(tls) => ("https", build_client(&self.config, Some(tls.client_config(peer)))),
            None => ("http", self.client.clone()),
        };
        let sender = PeerSender {
            id: self.id,
            peer,
            url: format!("{scheme}://{address}{STREAM_PATH}"),
            cluster_id: self.cluster_id.clone(),
            client,
            io_timeout: Duration::from_millis(self.config.io_timeout_ms),
            batch_messages_max: self.config.batch_messages_max,
            batch_bytes_max: self.config.batch_bytes_max,
            stream: None,
            frame: Vec::new(),
            failures: WarnLimiter::default(),
            failing: false,
        };
        tokio::spawn(sender.run(queue_receiver));
        queue
    }
}

impl Transport for HttpTransport {
    fn send(&self, message: Message) {
        let peers = self.peers.read().expect("no sender panics holding the peer map");
        let Some(peer) = peers.get(&message.to) else {
            debug!("[NODE {}] dropped {} to node {}: not a peer", self.id, message.body.name(), message.to);
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(message)) = peer.queue.try_send(message) {
            debug!("[NODE {}] dropped {} to node {}: its send queue is full", self.id, message.body.name(), message.to);
        }
    }

    /// `addresses` over the ones given at construction. A peer that is new, or moved, gets a
    /// fresh sender task; one that left has its queue dropped, which ends its task once the
    /// queue is drained.
    fn set_peer_addresses(&self, addresses: &BTreeMap<NodeId, String>) {
        let mut merged = self.base_addresses.clone();
        merged.extend(addresses.iter().map(|(id, address)| (*id, address.clone())));
        let addresses = &merged;
        let mut peers = self.peers.write().expect("no sender panics holding the peer map");
        peers.retain(|peer, queue| addresses.get(peer) == Some(&queue.address));
        for (peer, address) in addresses.iter().filter(|(peer, _)| **peer != self.id) {
            if !peers.contains_key(peer) {
                let queue = self.spawn_sender(*peer, address);
                peers.insert(*peer, PeerQueue { address: address.clone(), queue });
            }
        }
    }
}

/// One client for all peers: no proxy (peer traffic must not leave through an `HTTP_PROXY`
/// meant for something else), Nagle off for small votes and acks. No whole-request
/// timeout: a stream lives as long as it works. A write lands in the socket's buffer at once
/// even when the peer is cut off, so the kernel is told to abort a connection whose data
/// stays unacknowledged for `io_timeout_ms` (TCP_USER_TIMEOUT, which also bounds keepalive
/// probes on an idle stream): the next write then fails, the sender reconnects, and the
/// partition shows in the log within seconds instead of after TCP's ~15 minutes of retries.
/// With `tls`, the client speaks TLS as it says (one peer's, see `PeerTls::client_config`).
fn build_client(config: &HttpTransportConfig, tls: Option<rustls::ClientConfig>) -> reqwest::Client {
    let io_timeout = Duration::from_millis(config.io_timeout_ms);
    let mut builder = reqwest::Client::builder().connect_timeout(io_timeout).tcp_nodelay(true).tcp_keepalive(Some(Duration::from_secs(10))).tcp_user_timeout(io_timeout).http1_only().no_proxy();
    if let Some(tls) = tls {
        builder = builder.use_preconfigured_tls(tls);
    }
    builder.build().expect("building the HTTP client")
}

/// Opens a stream to the peer route at `url` (see the module doc): the connection, upgraded,
/// ready for frames. On failure, what went wrong, for a log line.
pub async fn open_stream(client: &reqwest::Client, url: &str, cluster_id: &str, from: NodeId) -> Result<reqwest::Upgraded, String> {
    let request = client
        .get(url)
        .query(&[("protocol", PROTOCOL_VERSION.to_string().as_str()), ("cluster", cluster_id), ("from", from.to_string().as_str())])
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, UPGRADE_PROTOCOL);
    let response = request.send().await.map_err(|error| error_chain(&error))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(describe_answer(response).await);
    }
    response.upgrade().await.map_err(|error| error_chain(&error))
}

/// Appends one frame holding `messages` to `frame` (cleared first).
pub fn encode_frame(messages: &[Message], frame: &mut Vec<u8>) {
    frame.clear();
    frame.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    let encoded = postcard::to_extend(messages, std::mem::take(frame)).expect("serializing to a Vec cannot fail");
    *frame = encoded;
    let length = u32::try_from(frame.len() - FRAME_HEADER_BYTES).expect("a frame's length fits its u32 prefix");
    frame[..FRAME_HEADER_BYTES].copy_from_slice(&length.to_le_bytes());
}

/// The task that owns the stream to one peer.
struct PeerSender {
    id: NodeId,
    peer: NodeId,
    url: String,
    cluster_id: String,
    client: reqwest::Client,
    io_timeout: Duration,
    batch_messages_max: usize,
    batch_bytes_max: usize,
    /// Open once a handshake succeeded; dropped after any failure.
    stream: Option<reqwest::Upgraded>,
    /// The frame being written, kept to reuse its allocation.
    frame: Vec<u8>,
    failures: WarnLimiter,
    /// The last attempt failed; the next success is logged.
    failing: bool,
}

impl PeerSender {
    async fn run(mut self, mut queue: mpsc::Receiver<Message>) {
        let mut carried = None;
        loop {
            let first = match carried.take() {
                Some(message) => message,
                None => match queue.recv().await {
                    Some(message) => message,
                    None => break,
                },
            };
            let (batch, next) = take_batch(first, &mut queue, self.batch_messages_max, self.batch_bytes_max);
            carried = next;
            encode_frame(&batch, &mut self.frame);
            match self.write_frame().await {
                Ok(()) => self.on_success(),
                Err(problem) => {
                    self.stream = None;
                    self.on_failure(batch.len(), &problem);
                }
            }
        }
        debug!("[NODE {}] sender to node {} stopped", self.id, self.peer);
    }

    /// Writes `self.frame`, opening the stream first if none is open.
    async fn write_frame(&mut self) -> Result<(), String> {
        if self.stream.is_none() {
            let opening = open_stream(&self.client, &self.url, &self.cluster_id, self.id);
            let stream = tokio::time::timeout(self.io_timeout, opening).await.map_err(|_| format!("no stream within {:?}", self.io_timeout))??;
            debug!("[NODE {}] opened a stream to node {} at {}", self.id, self.peer, self.url);
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("opened above");
        let writing = async {
            stream.write_all(&self.frame).await?;
            stream.flush().await
        };
        match tokio::time::timeout(self.io_timeout, writing).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("writing to the stream: {error}")),
            Err(_) => Err(format!("a frame of {} bytes not written within {:?}", self.frame.len(), self.io_timeout)),
        }
    }

    fn on_success(&mut self) {
        if std::mem::take(&mut self.failing) {
            info!("[NODE {}] node {} at {} is reachable again", self.id, self.peer, self.url);
        }
    }

    fn on_failure(&mut self, count: usize, problem: &str) {
        self.failing = true;
        match self.failures.check(Instant::now()) {
            Some(0) => warn!("[NODE {}] cannot send to node {} at {}: {problem} ({count} messages dropped)", self.id, self.peer, self.url),
            Some(suppressed) => warn!("[NODE {}] cannot send to node {} at {}: {problem} ({count} messages dropped; {suppressed} failures since the last warning)", self.id, self.peer, self.url),
            None => debug!("[NODE {}] cannot send to node {} at {}: {problem} ({count} messages dropped)", self.id, self.peer, self.url),
        }
    }
}

/// Starts a batch with `first`, then adds queued messages while both limits allow. The
/// first message that does not fit is handed back, to start the next batch (so order holds).
fn take_batch(first: Message, queue: &mut mpsc::Receiver<Message>, messages_max: usize, bytes_max: usize) -> (Vec<Message>, Option<Message>) {
    let mut bytes = message_bytes_estimate(&first);
    let mut batch = vec![first];
    while batch.len() < messages_max {
        let Ok(message) = queue.try_recv() else { break };
        let message_bytes = message_bytes_estimate(&message);
        if bytes + message_bytes > bytes_max {
            return (batch, Some(message));
        }
        bytes += message_bytes;
        batch.push(message);
    }
    (batch, None)
}

/// What a message counts for against `batch_bytes_max`: its payload plus a fixed overhead.
fn message_bytes_estimate(message: &Message) -> usize {
    let payload = match &message.body {
        MessageBody::AppendEntries { entries, .. } => entries.iter().map(|entry| entry.size_bytes()).sum(),
        MessageBody::InstallSnapshot { data, .. } => data.len(),
        _ => 0,
    };
    MESSAGE_OVERHEAD_BYTES + payload
}

async fn describe_answer(response: reqwest::Response) -> String {
    let status = response.status();
    let mut text = response.text().await.unwrap_or_default();
    if text.len() > LOGGED_ANSWER_BYTES_MAX {
        let mut cut = LOGGED_ANSWER_BYTES_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    match status {
        StatusCode::FORBIDDEN => format!("refused with {status}: {text}"),
        _ => format!("answered {status}: {text}"),
    }
}

/// `reqwest`'s own message hides the cause ("error sending request"); add the sources.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Rate-limits a warning: lets one through per `WARN_INTERVAL` and counts the rest.
#[derive(Debug, Default)]
pub(crate) struct WarnLimiter {
    last_warned: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    /// `Some(events suppressed since the last warning)` if this one may warn.
    pub(crate) fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last_warned {
            Some(last) if now.saturating_duration_since(last) < WARN_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_warned = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The receiving side's state, shared by the route's handler and the stream tasks.
struct Inbound {
    id: NodeId,
    cluster_id: String,
    inbox: mpsc::Sender<Message>,
    frame_bytes_max: usize,
    /// Peer TLS is on: a stream needs a peer certificate naming its `from` (`tls.rs`).
    peer_certificate_required: bool,
    rejections: Mutex<WarnLimiter>,
}

/// The query of a stream's opening request.
#[derive(Deserialize)]
struct Handshake {
    protocol: u16,
    cluster: String,
    from: u64,
}

/// How a stream ended, for the log line.
enum StreamEnd {
    /// The sender closed it between frames, or this node stopped.
    Closed,
    /// The connection failed (a peer that died, say): normal, logged at debug.
    Broken(String),
    /// The sender broke the protocol: logged at warn.
    Invalid(String),
}

/// `GET /raft/stream` for node `id`: checks each opening request (see the module doc) and
/// forwards the messages of each accepted stream into `inbox` (the node's `RaftNode::inbox`).
/// A frame over `frame_bytes_max` closes its stream before it is read. With
/// `peer_certificate_required`, a stream is accepted only on a connection the listener
/// marked [`ConnectionSecurity::Peer`] whose certificate names the stream's `from`.
pub fn raft_routes(id: NodeId, cluster_id: String, inbox: mpsc::Sender<Message>, frame_bytes_max: usize, peer_certificate_required: bool) -> Router {
    let inbound = Arc::new(Inbound { id, cluster_id, inbox, frame_bytes_max, peer_certificate_required, rejections: Mutex::new(WarnLimiter::default()) });
    Router::new().route(STREAM_PATH, get(accept_stream)).with_state(inbound)
}

async fn accept_stream(State(inbound): State<Arc<Inbound>>, handshake: Result<Query<Handshake>, QueryRejection>, mut request: Request) -> Response {
    let connection = request.extensions().get::<ConnectInfo<ConnectionInfo>>().map(|ConnectInfo(info)| info.clone());
    let from = match inbound.refusal(handshake, request.headers(), connection.as_ref()) {
        Ok(from) => from,
        Err(refusal) => return refusal,
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let end = match upgrade.await {
            Ok(upgraded) => inbound.receive(TokioIo::new(upgraded), from).await,
            Err(error) => StreamEnd::Broken(format!("the upgrade failed: {error}")),
        };
        match end {
            StreamEnd::Closed => debug!("[NODE {}] a peer stream closed", inbound.id),
            StreamEnd::Broken(problem) => debug!("[NODE {}] a peer stream broke: {problem}", inbound.id),
            StreamEnd::Invalid(problem) => inbound.warn_limited(&format!("closed a peer stream: {problem}")),
        }
    });
    (StatusCode::SWITCHING_PROTOCOLS, [(header::CONNECTION, "upgrade"), (header::UPGRADE, UPGRADE_PROTOCOL)]).into_response()
}

impl Inbound {
    /// The module doc's table, in order: 426, 400, 403, 503. `Ok` accepts a stream from
    /// the node it names.
    fn refusal(&self, handshake: Result<Query<Handshake>, QueryRejection>, headers: &HeaderMap, connection: Option<&ConnectionInfo>) -> Result<NodeId, Response> {
        let upgrade = headers.get(header::UPGRADE).map(|value| value.as_bytes());
        if !upgrade.is_some_and(|token| token.eq_ignore_ascii_case(UPGRADE_PROTOCOL.as_bytes())) {
            let hint = format!("peers open a stream here with `Connection: upgrade` and `Upgrade: {UPGRADE_PROTOCOL}`");
            return Err((StatusCode::UPGRADE_REQUIRED, [(header::UPGRADE, UPGRADE_PROTOCOL)], hint).into_response());
        }
        let handshake = match handshake {
            Ok(Query(handshake)) => handshake,
            Err(rejection) => return Err(self.refuse(StatusCode::BAD_REQUEST, format!("bad stream handshake: {rejection}"))),
        };
        if handshake.protocol != PROTOCOL_VERSION {
            return Err(self.refuse(StatusCode::BAD_REQUEST, format!("peer speaks protocol {}, this node speaks {PROTOCOL_VERSION}", handshake.protocol)));
        }
        if handshake.cluster != self.cluster_id {
            return Err(self.refuse(StatusCode::FORBIDDEN, format!("refused a stream from cluster {:?}; this node belongs to {:?}", handshake.cluster, self.cluster_id)));
        }
        let from = NodeId(handshake.from);
        if let Err(problem) = self.check_identity(from, connection) {
            let remote = connection.map_or_else(|| "an unknown address".to_string(), |connection| connection.remote.to_string());
            return Err(self.refuse(StatusCode::FORBIDDEN, format!("refused a stream claiming to be from node {from} at {remote}: {problem}")));
        }
        if self.inbox.is_closed() {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "node stopped").into_response());
        }
        Ok(from)
    }

    /// With peer TLS on, the connection must carry a peer certificate naming `from`.
    fn check_identity(&self, from: NodeId, connection: Option<&ConnectionInfo>) -> Result<(), &'static str> {
        if !self.peer_certificate_required {
            return Ok(());
        }
        match connection.map(|connection| &connection.security) {
            Some(ConnectionSecurity::Peer { certificate }) if certificate_names_node(certificate, from) => Ok(()),
            Some(ConnectionSecurity::Peer { .. }) => Err("its certificate names another node"),
            _ => Err("peer streams need mutual TLS with a node certificate from the cluster CA"),
        }
    }

    fn refuse(&self, status: StatusCode, problem: String) -> Response {
        self.warn_limited(&problem);
        (status, problem).into_response()
    }

    /// Reads frames until the stream ends or this node stops.
    async fn receive(&self, stream: impl AsyncRead + Unpin, from: NodeId) -> StreamEnd {
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
        let mut frame = Vec::new();
        loop {
            let read = tokio::select! {
                _ = self.inbox.closed() => return StreamEnd::Closed,
                read = self.read_frame(&mut reader, &mut frame) => read,
            };
            if let Err(end) = read {
                return end;
            }
            let messages: Vec<Message> = match postcard::from_bytes(&frame) {
                Ok(messages) => messages,
                Err(error) => return StreamEnd::Invalid(format!("undecodable frame of {} bytes: {error}", frame.len())),
            };
            if let Some(forged) = messages.iter().find(|message| message.from != from) {
                return StreamEnd::Invalid(format!("a {} claiming to be from node {} on node {from}'s stream", forged.body.name(), forged.from));
            }
            if !self.forward(messages) {
                return StreamEnd::Closed;
            }
        }
    }

    async fn read_frame(&self, reader: &mut (impl AsyncRead + Unpin), frame: &mut Vec<u8>) -> Result<(), StreamEnd> {
        let mut prefix = [0; FRAME_HEADER_BYTES];
        match reader.read_exact(&mut prefix).await {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Err(StreamEnd::Closed),
            Err(error) => return Err(StreamEnd::Broken(error.to_string())),
        }
        let length = u32::from_le_bytes(prefix) as usize;
        if length > self.frame_bytes_max {
            return Err(StreamEnd::Invalid(format!("a frame of {length} bytes is over the limit of {}", self.frame_bytes_max)));
        }
        frame.resize(length, 0);
        match reader.read_exact(frame).await {
            Ok(_) => Ok(()),
            Err(error) => Err(StreamEnd::Broken(format!("reading a frame of {length} bytes: {error}"))),
        }
    }

    /// Queues the messages for this node; false once the node has stopped.
    fn forward(&self, messages: Vec<Message>) -> bool {
        let mut dropped_full = 0usize;
        for message in messages {
            if message.to != self.id {
                // The sender's peer map points this node's address at another id.
                self.warn_limited(&format!("dropped a {} for node {} from node {}: this is node {}; check the peers' addresses", message.body.name(), message.to, message.from, self.id));
                continue;
            }
            match self.inbox.try_send(message) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => dropped_full += 1,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        if dropped_full > 0 {
            debug!("[NODE {}] dropped {dropped_full} peer messages: the inbox is full", self.id);
        }
        true
    }

    fn warn_limited(&self, problem: &str) {
        let verdict = self.rejections.lock().expect("rejections lock").check(Instant::now());
        match verdict {
            Some(0) => warn!("[NODE {}] {problem}", self.id),
            Some(suppressed) => warn!("[NODE {}] {problem} ({suppressed} similar problems since the last warning)", self.id),
            None => debug!("[NODE {}] {problem}", self.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::{Entry, EntryKind, LogIndex, SnapshotMeta, Term};

    fn heartbeat(to: u64) -> Message {
        let body = MessageBody::AppendEntries { prev_log_index: LogIndex(3), prev_log_term: Term(1), entries: Vec::new(), leader_commit: LogIndex(3), read_round: 0 };
        Message { from: NodeId(1), to: NodeId(to), term: Term(1), body }
    }

    fn chunk(bytes: usize) -> Message {
        let body = MessageBody::InstallSnapshot { meta: SnapshotMeta::default(), membership: Default::default(), offset: 0, data: vec![0; bytes], done: false, read_round: 0 };
        Message { from: NodeId(1), to: NodeId(2), term: Term(1), body }
    }

    #[test]
    fn frames_carry_their_length_and_round_trip() {
        let entry = Entry { term: Term(1), index: LogIndex(4), kind: EntryKind::Command(b"set".to_vec().into()) };
        let body = MessageBody::AppendEntries { prev_log_index: LogIndex(3), prev_log_term: Term(1), entries: vec![entry], leader_commit: LogIndex(3), read_round: 7 };
        let messages = vec![heartbeat(2), Message { from: NodeId(1), to: NodeId(2), term: Term(2), body }, chunk(10)];
        let mut frame = vec![0xaa; 3];
        encode_frame(&messages, &mut frame);
        let length = u32::from_le_bytes(frame[..FRAME_HEADER_BYTES].try_into().unwrap()) as usize;
        assert_eq!(length, frame.len() - FRAME_HEADER_BYTES, "the prefix counts the bytes after it; old contents are gone");
        assert_eq!(postcard::from_bytes::<Vec<Message>>(&frame[FRAME_HEADER_BYTES..]), Ok(messages));
        assert!(postcard::from_bytes::<Vec<Message>>(&frame[FRAME_HEADER_BYTES..frame.len() / 2]).is_err(), "a cut frame does not decode");
    }

    #[test]
    fn batches_respect_both_limits_and_keep_order() {
        let (queue, mut receiver) = mpsc::channel(16);
        for to in 2..=6 {
            queue.try_send(heartbeat(to)).unwrap();
        }
        let (batch, carried) = take_batch(heartbeat(1), &mut receiver, 3, usize::MAX);
        assert_eq!(batch.iter().map(|message| message.to.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(carried.is_none(), "the message limit stops before taking one too many");

        queue.try_send(chunk(1000)).unwrap();
        let bytes_max = 3 * MESSAGE_OVERHEAD_BYTES + 500;
        let (batch, carried) = take_batch(heartbeat(1), &mut receiver, 100, bytes_max);
        assert_eq!(batch.iter().map(|message| message.to.0).collect::<Vec<_>>(), vec![1, 4, 5, 6]);
        assert_eq!(carried, Some(chunk(1000)), "the chunk did not fit and starts the next batch");

        let (batch, carried) = take_batch(chunk(1000), &mut receiver, 100, bytes_max);
        assert_eq!((batch.len(), carried), (1, None), "a message over the byte limit still goes, alone");
    }

    #[test]
    fn warnings_are_rate_limited_and_count_the_rest() {
        let mut limiter = WarnLimiter::default();
        let start = Instant::now();
        assert_eq!(limiter.check(start), Some(0));
        assert_eq!(limiter.check(start + Duration::from_secs(1)), None);
        assert_eq!(limiter.check(start + Duration::from_secs(2)), None);
        assert_eq!(limiter.check(start + WARN_INTERVAL), Some(2));
        assert_eq!(limiter.check(start + WARN_INTERVAL), None);
    }

    /// Peers follow the configuration: added ones get a sender, removed ones lose theirs,
    /// and the construction-time addresses stay as a fallback (a joining node's).
    #[tokio::test]
    async fn peers_follow_the_configuration_over_the_addresses_given_at_start() {
        let base: BTreeMap<NodeId, String> = [(NodeId(1), "127.0.0.1:1".to_string()), (NodeId(2), "127.0.0.1:2".to_string())].into();
        let transport = HttpTransport::new(NodeId(1), "test".into(), base, HttpTransportConfig::default());
        let peers = |transport: &HttpTransport| transport.peers.read().unwrap().iter().map(|(id, queue)| (id.0, queue.address.clone())).collect::<Vec<_>>();
        assert_eq!(peers(&transport), vec![(2, "127.0.0.1:2".to_string())], "itself is no peer");
        transport.set_peer_addresses(&[(NodeId(3), "127.0.0.1:3".to_string()), (NodeId(2), "127.0.0.1:22".to_string())].into());
        assert_eq!(peers(&transport), vec![(2, "127.0.0.1:22".to_string()), (3, "127.0.0.1:3".to_string())], "the configuration wins");
        transport.set_peer_addresses(&BTreeMap::new());
        assert_eq!(peers(&transport), vec![(2, "127.0.0.1:2".to_string())], "node 3 left; node 2 falls back");
    }

    #[test]
    fn config_validation() {
        assert_eq!(HttpTransportConfig::default().validate(), Ok(()));
        let too_big = HttpTransportConfig { batch_bytes_max: 32 << 20, ..HttpTransportConfig::default() };
        assert!(too_big.validate().is_err());
        let too_big = HttpTransportConfig { frame_bytes_max: 8 << 30, batch_bytes_max: 1, ..HttpTransportConfig::default() };
        assert!(too_big.validate().is_err());
        let no_queue = HttpTransportConfig { queue_messages_max: 0, ..HttpTransportConfig::default() };
        assert!(no_queue.validate().is_err());
    }
}
