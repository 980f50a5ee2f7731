//! HTTP transport: peers POST batches of messages to each other's `/raft/messages`.
//!
//! # Wire format
//!
//! `POST /raft/messages` with `Content-Type: application/octet-stream` and the bytes of
//! [`Envelope::encode`]: postcard, carrying the protocol version, the cluster id and the
//! messages. The receiver answers:
//!
//! | status | meaning |
//! |---|---|
//! | 204 | decoded; each message addressed to this node was queued for its driver (or dropped if the inbox was full: Raft retries) |
//! | 400 | undecodable body, or another protocol version |
//! | 403 | another cluster id: two clusters' addresses overlap (logged at warn, never stepped) |
//! | 413 | body over `body_bytes_max`, refused before it is read past the limit |
//! | 503 | the node behind this route has stopped; sent with `Connection: close` so the peer reconnects (to a restarted node, perhaps) |
//!
//! InstallSnapshot needs nothing special here: the core already cuts a snapshot into
//! chunks of `snapshot_chunk_bytes_max` (1 MiB by default), one message each.
//!
//! # Sending
//!
//! [`Transport::send`] never blocks the driver: it puts the message on its peer's bounded
//! queue, or drops it when that queue is full. One task per peer takes whatever is queued
//! (up to the batch limits), sends it as one request, and waits for the answer before the
//! next, so a peer receives a node's messages in the order they were sent. All peers share
//! one `reqwest` client, whose pool keeps one connection per peer alive between requests.
//! A failed request's messages are dropped rather than retried: Raft repeats what matters
//! (heartbeats, AppendEntries after a rejection, votes on the next election), and a stale
//! retry could only arrive after newer messages. A peer that is down is normal, so failures
//! log at debug, with one warning per peer every `WARN_INTERVAL`.
//!
//! When the `HttpTransport` is dropped (the driver stopped), the queues close and each
//! peer's task ends after its request in flight, if any.

use crate::transport::{Envelope, EnvelopeError, Transport};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use keel_core::{Message, MessageBody, NodeId};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// The path peers POST envelopes to.
pub const MESSAGES_PATH: &str = "/raft/messages";

/// At most one warning per peer (sending) or per route (receiving) in this interval; the
/// rest go to debug and are counted in the next warning.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Counted for a message's fixed fields in the batch byte limit, on top of its payload.
const MESSAGE_OVERHEAD_BYTES: usize = 64;

/// An answer body quoted in a log line is cut to this length.
const LOGGED_ANSWER_BYTES_MAX: usize = 200;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpTransportConfig {
    /// Whole request, connecting included.
    pub request_timeout_ms: u64,
    /// Messages queued for one peer before new ones are dropped.
    pub queue_messages_max: usize,
    /// Messages in one request.
    pub batch_messages_max: usize,
    /// Estimated payload bytes in one request. A single larger message (an AppendEntries
    /// of `append_bytes_max`, say) still goes, alone.
    pub batch_bytes_max: usize,
    /// The largest request body this node accepts; keep it above the peers'
    /// `batch_bytes_max` plus encoding overhead.
    pub body_bytes_max: usize,
}

impl Default for HttpTransportConfig {
    fn default() -> HttpTransportConfig {
        HttpTransportConfig {
            request_timeout_ms: 2000,
            queue_messages_max: 16_384,
            batch_messages_max: 4096,
            batch_bytes_max: 8 << 20,
            body_bytes_max: 16 << 20,
        }
    }
}

impl HttpTransportConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.request_timeout_ms == 0 {
            return Err("request_timeout_ms must be at least 1".into());
        }
        if self.queue_messages_max == 0 || self.batch_messages_max == 0 || self.batch_bytes_max == 0 || self.body_bytes_max == 0 {
            return Err("queue_messages_max, batch_messages_max, batch_bytes_max and body_bytes_max must be at least 1".into());
        }
        if self.batch_bytes_max > self.body_bytes_max {
            return Err(format!("batch_bytes_max ({}) must not exceed body_bytes_max ({}): peers would refuse full batches", self.batch_bytes_max, self.body_bytes_max));
        }
        Ok(())
    }
}

/// Sends a node's messages to its peers over HTTP; see the module doc.
pub struct HttpTransport {
    id: NodeId,
    queues: BTreeMap<NodeId, mpsc::Sender<Message>>,
}

impl HttpTransport {
    /// `peers` maps each peer's id to its `host:port`; an entry for `id` itself is ignored.
    /// Spawns one sender task per peer, so it must be called inside a tokio runtime.
    ///
    /// # Panics
    /// On a config that fails [`HttpTransportConfig::validate`] (call that first with
    /// operator input), or if the HTTP client cannot be built.
    pub fn new(id: NodeId, cluster_id: String, peers: BTreeMap<NodeId, String>, config: HttpTransportConfig) -> HttpTransport {
        if let Err(problem) = config.validate() {
            panic!("[NODE {id}] invalid HTTP transport config: {problem}");
        }
        let client = build_client(&config);
        let cluster_id: Arc<str> = cluster_id.into();
        let mut queues = BTreeMap::new();
        for (peer, address) in peers.into_iter().filter(|(peer, _)| *peer != id) {
            let (queue, queue_receiver) = mpsc::channel(config.queue_messages_max);
            let sender = PeerSender {
                id,
                peer,
                url: format!("http://{address}{MESSAGES_PATH}"),
                cluster_id: cluster_id.clone(),
                client: client.clone(),
                batch_messages_max: config.batch_messages_max,
                batch_bytes_max: config.batch_bytes_max,
                failures: WarnLimiter::default(),
                failing: false,
            };
            tokio::spawn(sender.run(queue_receiver));
            queues.insert(peer, queue);
        }
        HttpTransport { id, queues }
    }
}

impl Transport for HttpTransport {
    fn send(&self, message: Message) {
        let Some(queue) = self.queues.get(&message.to) else {
            debug!("[NODE {}] dropped {} to node {}: not a peer", self.id, message.body.name(), message.to);
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(message)) = queue.try_send(message) {
            debug!("[NODE {}] dropped {} to node {}: its send queue is full", self.id, message.body.name(), message.to);
        }
    }
}

/// One client for all peers: persistent connections, no proxy (peer traffic must not leave
/// through an `HTTP_PROXY` meant for something else), Nagle off for small votes and acks.
fn build_client(config: &HttpTransportConfig) -> reqwest::Client {
    let timeout = Duration::from_millis(config.request_timeout_ms);
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .pool_idle_timeout(Some(Duration::from_secs(90)))
        .no_proxy()
        .build()
        .expect("building the HTTP client")
}

/// The task that owns the connection to one peer.
struct PeerSender {
    id: NodeId,
    peer: NodeId,
    url: String,
    cluster_id: Arc<str>,
    client: reqwest::Client,
    batch_messages_max: usize,
    batch_bytes_max: usize,
    failures: WarnLimiter,
    /// The last request failed; the next success is logged.
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
            self.post(batch).await;
        }
        debug!("[NODE {}] sender to node {} stopped", self.id, self.peer);
    }

    /// One request, awaited: the next batch leaves only after this one was answered.
    async fn post(&mut self, batch: Vec<Message>) {
        let count = batch.len();
        let body = Envelope::encode(&self.cluster_id, batch);
        let request = self.client.post(&self.url).header(header::CONTENT_TYPE, "application/octet-stream").body(body);
        let failure = match request.send().await {
            Ok(response) if response.status() == StatusCode::NO_CONTENT => None,
            Ok(response) => Some(describe_answer(response).await),
            Err(error) => Some(error_chain(&error)),
        };
        match failure {
            None => self.on_success(),
            Some(problem) => self.on_failure(count, &problem),
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
        StatusCode::FORBIDDEN => format!("refused with {status}, a different cluster id: {text}"),
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
struct WarnLimiter {
    last_warned: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    /// `Some(events suppressed since the last warning)` if this one may warn.
    fn check(&mut self, now: Instant) -> Option<u64> {
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

/// The receiving side's state, shared by the handler's invocations.
struct Inbound {
    id: NodeId,
    cluster_id: String,
    inbox: mpsc::Sender<Message>,
    rejections: Mutex<WarnLimiter>,
}

/// `POST /raft/messages` for node `id`: checks each envelope (see the module doc) and
/// forwards its messages into `inbox` (the node's `RaftNode::inbox`). Bodies over
/// `body_bytes_max` are refused with 413 without being read past the limit.
pub fn raft_routes(id: NodeId, cluster_id: String, inbox: mpsc::Sender<Message>, body_bytes_max: usize) -> Router {
    let inbound = Arc::new(Inbound { id, cluster_id, inbox, rejections: Mutex::new(WarnLimiter::default()) });
    Router::new().route(MESSAGES_PATH, post(receive_messages)).with_state(inbound).layer(DefaultBodyLimit::max(body_bytes_max))
}

async fn receive_messages(State(inbound): State<Arc<Inbound>>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            debug!("[NODE {}] refused a peer request: {rejection}", inbound.id);
            return rejection.into_response();
        }
    };
    match Envelope::decode(&body, &inbound.cluster_id) {
        Ok(messages) => inbound.forward(messages),
        Err(error) => inbound.reject(error),
    }
}

impl Inbound {
    fn forward(&self, messages: Vec<Message>) -> Response {
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
                Err(mpsc::error::TrySendError::Closed(_)) => return node_stopped(),
            }
        }
        if dropped_full > 0 {
            debug!("[NODE {}] dropped {dropped_full} peer messages: the inbox is full", self.id);
        }
        StatusCode::NO_CONTENT.into_response()
    }

    fn reject(&self, error: EnvelopeError) -> Response {
        let status = match &error {
            EnvelopeError::WrongCluster { theirs } => {
                self.warn_limited(&format!("rejected message from cluster {theirs:?}; this node belongs to {:?}", self.cluster_id));
                StatusCode::FORBIDDEN
            }
            EnvelopeError::WrongProtocol { .. } | EnvelopeError::Undecodable(_) => {
                self.warn_limited(&format!("rejected a peer request: {error}"));
                StatusCode::BAD_REQUEST
            }
        };
        (status, error.to_string()).into_response()
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

/// The driver is gone. `Connection: close` makes the peer open a new connection next time,
/// which reaches whatever now listens on this address (a restarted node).
fn node_stopped() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, [(header::CONNECTION, "close")], "node stopped").into_response()
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
        let body = MessageBody::InstallSnapshot { meta: SnapshotMeta::default(), offset: 0, data: vec![0; bytes], done: false, read_round: 0 };
        Message { from: NodeId(1), to: NodeId(2), term: Term(1), body }
    }

    #[test]
    fn envelope_round_trip_and_checks() {
        let entry = Entry { term: Term(1), index: LogIndex(4), kind: EntryKind::Command(b"set".to_vec().into()) };
        let body = MessageBody::AppendEntries { prev_log_index: LogIndex(3), prev_log_term: Term(1), entries: vec![entry], leader_commit: LogIndex(3), read_round: 7 };
        let messages = vec![heartbeat(2), Message { from: NodeId(1), to: NodeId(2), term: Term(2), body }, chunk(10)];
        let bytes = Envelope::encode("alpha", messages.clone());
        assert_eq!(Envelope::decode(&bytes, "alpha"), Ok(messages));
        assert_eq!(Envelope::decode(&bytes, "beta"), Err(EnvelopeError::WrongCluster { theirs: "alpha".into() }));
        assert!(matches!(Envelope::decode(&bytes[..bytes.len() / 2], "alpha"), Err(EnvelopeError::Undecodable(_))));
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

    #[test]
    fn config_validation() {
        assert_eq!(HttpTransportConfig::default().validate(), Ok(()));
        let too_big = HttpTransportConfig { batch_bytes_max: 32 << 20, ..HttpTransportConfig::default() };
        assert!(too_big.validate().is_err());
        let no_queue = HttpTransportConfig { queue_messages_max: 0, ..HttpTransportConfig::default() };
        assert!(no_queue.validate().is_err());
    }
}
