//! `Server`: one keel node behind one HTTP listener.
//!
//! The listener serves three things: the v1 client API (`api_v1.rs`), the seed's client API
//! (`api_seed.rs`) and the peers' streams on `/raft/stream` (`keel_node::raft_routes`).
//! With TLS on (`security.rs`), keel-node's `Listener` tells peers from clients at the
//! handshake; with tokens on, `auth.rs` checks every client request before its handler.
//!
//! # Shutdown
//!
//! [`Server::shutdown`] (SIGTERM or ctrl-c in `keel serve`), or the node stopping by itself
//! (a storage failure), runs the same steps:
//! 1. New key-value requests are refused with 503 `shutting_down` (`outcome: not_applied`).
//!    Peer traffic keeps flowing, so requests already in flight can still commit.
//! 2. Wait for the requests in flight to finish, at most the request timeout plus a second.
//! 3. Close the HTTP server gracefully (stop accepting, finish open requests; at most
//!    `HTTP_CLOSE_WAIT`).
//! 4. Stop the node's driver and wait for it.

use crate::api_error::ApiError;
use crate::auth::Access;
use crate::bootstrap::{self, FirstConfiguration, JoinInfo, Start};
use crate::config::ServerConfig;
use crate::forward::Forwarder;
use crate::security::NodeSecurity;
use crate::{api_members, api_seed, api_v1, api_watch};
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post, put};
use axum::Router;
use keel_core::{LogIndex, NodeId, Role};
use keel_kv::{Command, CommandResult, KvStore, KEY_BYTES_MAX};
use keel_node::listener::Listener;
use keel_node::{Consistency, ConnectionInfo, FileStorage, FileStorageConfig, HttpTransport, HttpTransportConfig, NodeError, RaftHandle, RaftNode};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

/// Room for JSON syntax and escaping around the values in a JSON request body.
pub const JSON_OVERHEAD_BYTES: usize = 64 * 1024;
/// How long a graceful HTTP close may take before open connections are dropped.
const HTTP_CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Extra wait for in-flight requests at shutdown, beyond the request timeout.
const DRAIN_MARGIN: Duration = Duration::from_secs(1);
/// Connections the kernel may hold for us before we accept them. std and tokio ask for
/// 128: 256 clients connecting at once (`wrk -c256`) overflowed that, and every connection
/// the kernel dropped waited a second for its SYN to be sent again. The kernel caps it at
/// `net.core.somaxconn` (4096 on current Linux).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `address` (`host:port`; the first of its addresses that binds) with a backlog of
/// `LISTEN_BACKLOG`.
pub async fn bind(address: &str) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for socket_address in tokio::net::lookup_host(address).await? {
        match bind_one(socket_address) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{address} resolves to no address"))))
}

fn bind_one(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As std and tokio do: a restarted node can bind its port while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Everything the handlers share.
pub(crate) struct AppState {
    pub id: NodeId,
    pub address: String,
    pub cluster_id: String,
    /// Addresses from the settings (founding members, or those a joining node was told),
    /// for members the configuration in force gives none for.
    pub known_addresses: BTreeMap<NodeId, String>,
    pub handle: RaftHandle<KvStore>,
    pub request_timeout: Duration,
    pub value_bytes_max: usize,
    pub forwarder: Forwarder,
    pub metrics: crate::metrics::Metrics,
    /// Set when the node starts shutting down: long-lived answers (`/v1/events`) end.
    pub closing: watch::Sender<bool>,
    draining: AtomicBool,
    inflight: InFlight,
}

/// Why a request handled on this node failed.
pub(crate) enum Failure {
    Node(NodeError),
    Timeout,
}

/// A request's outcome as `/metrics` labels it.
fn outcome_name<T>(result: &Result<T, Failure>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(Failure::Timeout) => "timeout",
        Err(Failure::Node(error)) => match error {
            NodeError::NotLeader { .. } => "not_leader",
            NodeError::Overloaded => "overloaded",
            NodeError::TransferInProgress => "transfer_in_progress",
            NodeError::Dropped => "dropped",
            NodeError::LeadershipLost => "leadership_lost",
            NodeError::Stopped => "stopped",
            NodeError::OutcomeUnknown => "outcome_unknown",
        },
    }
}

/// Where a v1 request that needs the leader is served.
pub(crate) enum Route {
    Local,
    Forward(NodeId),
}

impl AppState {
    /// Where member `id` listens: as the configuration in force says, or the settings.
    pub fn address_of(&self, id: NodeId) -> Option<String> {
        let membership = self.handle.status().membership;
        membership.addresses.get(&id).or_else(|| self.known_addresses.get(&id)).cloned()
    }

    /// Every member of the configuration in force, with its address if known.
    pub fn member_addresses(&self) -> BTreeMap<NodeId, Option<String>> {
        let membership = self.handle.status().membership;
        membership.members().into_iter().map(|id| (id, membership.addresses.get(&id).or_else(|| self.known_addresses.get(&id)).cloned())).collect()
    }

    /// Proposes `command` and waits (at most the request timeout) until it is applied.
    pub async fn propose(&self, command: &Command) -> Result<(LogIndex, CommandResult), Failure> {
        let bytes = command.encode().expect("commands are validated before they are proposed");
        let result = match tokio::time::timeout(self.request_timeout, self.handle.propose(bytes)).await {
            Ok(result) => result.map_err(Failure::Node),
            Err(_) => Err(Failure::Timeout),
        };
        self.metrics.count_proposal(outcome_name(&result));
        result
    }

    pub async fn read<R: Send + 'static>(&self, consistency: Consistency, read: impl FnOnce(&KvStore) -> R + Send + 'static) -> Result<(LogIndex, R), Failure> {
        let result = match tokio::time::timeout(self.request_timeout, self.handle.read(consistency, read)).await {
            Ok(result) => result.map_err(Failure::Node),
            Err(_) => Err(Failure::Timeout),
        };
        let consistency = match consistency {
            Consistency::Linearizable => "linearizable",
            Consistency::Stale => "stale",
        };
        self.metrics.count_read(consistency, outcome_name(&result));
        result
    }

    pub fn failure(&self, failure: Failure, is_write: bool) -> ApiError {
        match failure {
            Failure::Node(error) => ApiError::from_node(error, is_write, |id| self.address_of(id)),
            Failure::Timeout => {
                let leader = self.handle.status().raft.leader_id;
                ApiError::timeout(is_write).with_leader(leader, leader.and_then(|id| self.address_of(id)))
            }
        }
    }

    /// v1: serve here if this node leads (or the request was already forwarded once, so a
    /// stale leader hint cannot bounce it around), else forward to the known leader.
    pub fn route(&self, forwarded: bool) -> Result<Route, ApiError> {
        let status = self.handle.status();
        if let Some(reason) = status.stopped {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", format!("this node has stopped: {reason}")));
        }
        if status.removed {
            return Err(ApiError::new(StatusCode::GONE, "removed", "this node was removed from the cluster and serves no requests that need the leader; ask a member"));
        }
        if forwarded || status.raft.role == Role::Leader {
            return Ok(Route::Local);
        }
        match status.raft.leader_id {
            Some(leader) if leader != self.id => Ok(Route::Forward(leader)),
            _ => Err(ApiError::no_leader()),
        }
    }
}

/// A request's method, URI, headers and body, kept so it can be forwarded as it came.
/// The body was read under the limit `L` names (413 past it): each handler picks its
/// route's limit by the type it extracts, so no per-route layer runs on every request.
pub(crate) struct Incoming<L = NoBodyLimit> {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    limit: PhantomData<L>,
}

impl<L> Incoming<L> {
    /// Set by a follower that forwarded this request to us.
    pub fn forwarded(&self) -> bool {
        self.headers.contains_key(crate::forward::FORWARDED_HEADER)
    }
}

/// The largest body a route accepts (docs/API.md, "Limits").
pub(crate) trait BodyLimit {
    fn bytes_max(state: &AppState) -> usize;
}

/// `PUT /v1/kv/{key}`: the body is the value.
pub(crate) enum ValueLimit {}
/// `POST /v1/kv/{key}/cas`: two values in JSON.
pub(crate) enum CasLimit {}
/// `POST /client/submit`: a command with a key and a value in JSON.
pub(crate) enum SubmitLimit {}
/// Routes whose bodies are ignored.
pub(crate) enum NoBodyLimit {}

impl BodyLimit for ValueLimit {
    fn bytes_max(state: &AppState) -> usize {
        state.value_bytes_max
    }
}

impl BodyLimit for CasLimit {
    fn bytes_max(state: &AppState) -> usize {
        2 * state.value_bytes_max + JSON_OVERHEAD_BYTES
    }
}

impl BodyLimit for SubmitLimit {
    fn bytes_max(state: &AppState) -> usize {
        state.value_bytes_max + KEY_BYTES_MAX + JSON_OVERHEAD_BYTES
    }
}

impl BodyLimit for NoBodyLimit {
    fn bytes_max(_: &AppState) -> usize {
        IGNORED_BODY_BYTES_MAX
    }
}

/// What a route that ignores its body still reads (and drains past) before answering.
const IGNORED_BODY_BYTES_MAX: usize = 64 * 1024;

/// An oversize body is read and discarded up to this many bytes (and `DRAIN_WAIT`) before
/// the 413 goes out. Closing a connection with unread bytes makes the kernel reset it,
/// and a client still sending would then see the reset instead of the 413. Nothing read
/// here is kept, so memory stays bounded by the limit.
const DRAIN_BYTES_MAX: u64 = 16 << 20;
const DRAIN_WAIT: Duration = Duration::from_secs(2);

impl<L: BodyLimit> FromRequest<Arc<AppState>> for Incoming<L> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Incoming<L>, ApiError> {
        let (parts, body) = request.into_parts();
        let body = read_body(&parts.headers, body, L::bytes_max(state)).await?;
        Ok(Incoming { method: parts.method, uri: parts.uri, headers: parts.headers, body, limit: PhantomData })
    }
}

/// Reads at most `limit` bytes; a larger body (declared or actual) is refused with 413
/// before more than `limit` bytes are kept.
async fn read_body(headers: &HeaderMap, mut body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let declared: Option<u64> = headers.get(axum::http::header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()).and_then(|value| value.parse().ok());
    let too_large = |size: String| ApiError::too_large(format!("request body is {size} bytes; this route's limit is {limit} bytes (see --value-bytes-max)"));
    if let Some(declared) = declared.filter(|declared| *declared > limit as u64) {
        // With `Expect: 100-continue` the client waits for us before sending: nothing to drain.
        let expects_continue = headers.get(axum::http::header::EXPECT).is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !expects_continue && declared <= DRAIN_BYTES_MAX {
            drain(body).await;
        }
        return Err(too_large(declared.to_string()));
    }
    let mut buffer = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| ApiError::bad_request(format!("cannot read the request body: {error}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if buffer.len() + data.len() > limit {
            drain(body).await;
            return Err(too_large(format!("over {limit}")));
        }
        buffer.extend_from_slice(&data);
    }
    Ok(buffer.freeze())
}

async fn drain(mut body: axum::body::Body) {
    use http_body_util::BodyExt;
    let discard = async {
        let mut discarded = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            discarded += frame.data_ref().map_or(0, |data| data.len() as u64);
            if discarded > DRAIN_BYTES_MAX {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_WAIT, discard).await;
}

/// A key from the path, percent-decoded and checked: 1 to `KEY_BYTES_MAX` bytes of UTF-8.
pub(crate) struct Key(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Key {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Key, ApiError> {
        let Path(key) = Path::<String>::from_request_parts(parts, state).await.map_err(|rejection| ApiError::bad_request(format!("bad key in the path: {}", rejection.body_text())))?;
        check_key(&key)?;
        Ok(Key(key))
    }
}

pub(crate) fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request("key must not be empty"));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(ApiError::bad_request(format!("key is {} bytes; the limit is {KEY_BYTES_MAX}", key.len())));
    }
    Ok(())
}

/// Counts key-value requests in flight, so shutdown can wait for them.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    async fn wait_idle(&self) {
        loop {
            // Created before the check: a wake-up between the check and the await is kept.
            let idle = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// The shared state, for a key-value request counted in flight (shutdown waits for it) as
/// long as its handler runs. Every key-value handler takes it as its first argument, so a
/// request that arrives while the node drains is refused with 503 `shutting_down` before
/// anything else is extracted (its body is not read). An extractor rather than a
/// middleware layer: a layer costs a boxed service clone and a boxed future per request.
pub(crate) struct Admitted(Arc<AppState>);

impl std::ops::Deref for Admitted {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        &self.0
    }
}

impl FromRequestParts<Arc<AppState>> for Admitted {
    type Rejection = Response;

    async fn from_request_parts(_parts: &mut Parts, state: &Arc<AppState>) -> Result<Admitted, Response> {
        // Counted before the check (both SeqCst): either shutdown sees this request in flight
        // and waits for it, or this request sees the shutdown and is refused.
        state.inflight.count.fetch_add(1, Ordering::SeqCst);
        let admitted = Admitted(state.clone());
        if !state.draining.load(Ordering::SeqCst) {
            return Ok(admitted);
        }
        drop(admitted);
        let refusal = ApiError::unavailable("shutting_down", "this node is shutting down; retry on another node");
        let leader = state.handle.status().raft.leader_id.filter(|leader| *leader != state.id);
        Err(refusal.with_leader(leader, leader.and_then(|id| state.address_of(id))).into_response())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let inflight = &self.0.inflight;
        if inflight.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            inflight.idle.notify_waiters();
        }
    }
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_route", format!("no route for {method} {}; see docs/API.md", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("{method} is not allowed on {}", uri.path()))
}

async fn empty_key() -> ApiError {
    ApiError::bad_request("key must not be empty")
}

/// Probes after 10 s idle, every 5 s, 3 unanswered probes close the connection.
fn accepted_keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new().with_time(Duration::from_secs(10)).with_interval(Duration::from_secs(5)).with_retries(3)
}

fn router(state: Arc<AppState>, raft_routes: Router, access: Option<Arc<Access>>) -> Router {
    let kv = Router::new()
        .route("/v1/kv/{key}", put(api_v1::put_value).get(api_v1::get_value).delete(api_v1::delete_value))
        .route("/v1/kv/{key}/cas", post(api_v1::compare_and_set))
        .route("/v1/kv/", any(empty_key))
        .route("/client/submit", post(api_seed::submit))
        .route("/client/read/{key}", get(api_seed::read))
        .route("/v1/members", get(api_members::list).post(api_members::add))
        .route("/v1/members/{id}", delete(api_members::remove))
        .route("/v1/members/{id}/promote", post(api_members::promote))
        .route("/v1/leader/transfer", post(api_members::transfer));
    let info = Router::new()
        .route("/v1/status", get(api_v1::status))
        .route("/v1/cluster", get(api_v1::cluster))
        .route("/client/leader", get(api_seed::leader))
        .route("/client/status", get(api_seed::status))
        .route("/v1/log", get(api_watch::log))
        .route("/v1/events", get(api_watch::events));
    let mut client = kv.merge(info).with_state(state.clone());
    if let Some(access) = access {
        client = client.layer(axum::middleware::from_fn_with_state(access, crate::auth::check_access));
    }
    // For operators and load balancers: open, as etcd's /metrics and /health are.
    let operations = Router::new()
        .route("/metrics", get(crate::metrics::serve))
        .route("/health", get(crate::metrics::health))
        .route("/ready", get(crate::metrics::ready))
        .route("/ui", get(api_watch::ui_page))
        .route("/ui/keel-ui.js", get(api_watch::ui_script))
        .route("/ui/keel-ui.css", get(api_watch::ui_style))
        .route("/ui/replay", get(api_watch::replay_page))
        .route("/ui/keel-replay.js", get(api_watch::replay_script))
        .with_state(state.clone());
    let timed = client.merge(operations).route_layer(axum::middleware::from_fn_with_state(state, crate::metrics::time_requests));
    let app = timed.merge(raft_routes).fallback(unknown_route).method_not_allowed_fallback(method_not_allowed);
    // Outermost, so a CORS preflight is answered before the token check (which it cannot
    // pass) and before method routing (which knows no OPTIONS).
    app.layer(axum::middleware::from_fn(api_watch::allow_cross_origin_reads))
}

/// A running node and its HTTP server.
pub struct Server {
    id: NodeId,
    handle: RaftHandle<KvStore>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    supervisor: JoinHandle<Result<(), String>>,
    access: Option<Arc<Access>>,
}

impl Server {
    /// Opens the data directory, starts the node and serves on `listener` (already bound,
    /// so tests can bind port 0 first and then tell every node the real addresses).
    pub async fn start(config: ServerConfig, listener: TcpListener) -> Result<Server, String> {
        let local_addr = listener.local_addr().map_err(|error| format!("cannot read the listener's address: {error}"))?;
        let security = NodeSecurity::load(&config)?;
        let first = first_configuration(&config, &security).await?;
        let storage = FileStorage::open(&config.data_dir, FileStorageConfig::default()).map_err(|error| format!("cannot open data dir {}: {error}", config.data_dir.display()))?;
        let fsync_seconds = storage.fsync_seconds();
        let transport_config = HttpTransportConfig::default();
        // The transport falls back on these for members the configuration gives no address
        // (a joining node knows them only from the member it asked).
        let transport = match &security.peer {
            Some(tls) => HttpTransport::with_peer_tls(config.id, config.cluster_id.clone(), first.known_addresses.clone(), transport_config.clone(), tls.clone()),
            None => HttpTransport::new(config.id, config.cluster_id.clone(), first.known_addresses.clone(), transport_config.clone()),
        };
        let mut node_config = config.node_config();
        node_config.members = first.cluster.members.keys().copied().collect();
        node_config.member_addresses = first.cluster.members.clone();
        let node = RaftNode::start(node_config, storage, KvStore::new(), transport).map_err(|error| error.to_string())?;
        let raft_routes = keel_node::raft_routes(config.id, config.cluster_id.clone(), node.inbox.clone(), transport_config.frame_bytes_max, security.peer.is_some());
        let state = Arc::new(AppState {
            id: config.id,
            address: config.advertised_address().to_string(),
            cluster_id: config.cluster_id.clone(),
            known_addresses: first.known_addresses.clone(),
            handle: node.handle.clone(),
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            value_bytes_max: config.value_bytes_max,
            forwarder: Forwarder::new(security.peer.clone()),
            metrics: crate::metrics::Metrics::new(node.handle.clone(), fsync_seconds),
            closing: watch::channel(false).0,
            draining: AtomicBool::new(false),
            inflight: InFlight::default(),
        });
        let (http_stop, http_stopped) = oneshot::channel::<()>();
        let app = router(state.clone(), raft_routes, security.access.clone());
        let http_state = state.clone();
        // Small requests and answers, one at a time per connection: Nagle's algorithm would
        // only hold them back (axum leaves it on by default). Keepalive: a peer's stream only
        // ever carries data towards this node, so if the peer's host vanishes (a partition,
        // a power cut) nothing here would notice, and the stream's task and socket would wait
        // forever; probes close it after ~25 s of silence.
        let tap = |stream: &tokio::net::TcpStream| {
            let _ = stream.set_nodelay(true);
            let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&accepted_keepalive());
        };
        let listener = Listener::new(listener, security.listener_tls()?, tap).map_err(|error| format!("cannot serve on {local_addr}: {error}"))?;
        let http = tokio::spawn(async move {
            let serve = axum::serve(listener, app.into_make_service_with_connect_info::<ConnectionInfo>()).with_graceful_shutdown(async move {
                let _ = http_stopped.await;
            });
            if let Err(error) = serve.await {
                error!("[NODE {}] HTTP server failed: {error}", http_state.id);
            }
        });
        let membership = node.handle.status().membership;
        info!("[NODE {}] serving clients and peers on {local_addr} (cluster {:?}, configuration {membership}; {})", config.id, config.cluster_id, security.describe());
        match first.start {
            Start::Joining => info!("[NODE {}] waiting to be added to the cluster: on any member, `keel member add {} {}`", config.id, config.id, config.advertised_address()),
            Start::Bootstrapped => info!("[NODE {}] founded cluster {:?} with members {}", config.id, config.cluster_id, bootstrap::describe(&first.cluster.members)),
            Start::Adopted => info!("[NODE {}] recorded the first configuration of this data directory: {}", config.id, bootstrap::describe(&first.cluster.members)),
            Start::Recorded => {}
        }
        let (stop, stop_requested) = watch::channel(false);
        let handle = node.handle.clone();
        let supervisor = tokio::spawn(supervise(state, node, http, http_stop, stop_requested));
        Ok(Server { id: config.id, handle, local_addr, stop, supervisor, access: security.access.clone() })
    }

    /// The token check, when tokens are on (`keel serve` reloads it on SIGHUP).
    pub fn access(&self) -> Option<Arc<Access>> {
        self.access.clone()
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn handle(&self) -> &RaftHandle<KvStore> {
        &self.handle
    }

    /// If this node leads, hands leadership to the most caught-up voter (thesis §3.10) and
    /// waits, at most `wait`, until it leads: a planned stop then costs the cluster no
    /// election timeout. Returns the new leader, if one took over.
    pub async fn hand_over_leadership(&self, wait: Duration) -> Option<NodeId> {
        let status = self.handle.status();
        if status.raft.role != Role::Leader || status.membership.voters.len() < 2 {
            return None;
        }
        let target = match self.handle.transfer_leadership(None).await {
            Ok(target) => target,
            Err(error) => {
                warn!("[NODE {}] stopping without handing over leadership: {error}", self.id);
                return None;
            }
        };
        info!("[NODE {}] handing leadership to node {target} before stopping", self.id);
        let mut watch = self.handle.watch_status();
        let taken_over = async { watch.wait_for(|status| status.raft.role != Role::Leader && status.raft.leader_id == Some(target)).await.is_ok() };
        match tokio::time::timeout(wait, taken_over).await {
            Ok(true) => Some(target),
            _ => {
                warn!("[NODE {}] node {target} did not take over within {wait:?}; stopping anyway", self.id);
                None
            }
        }
    }

    /// Graceful stop (see the module doc). `Err` if the node had already failed.
    pub async fn shutdown(self) -> Result<(), String> {
        let _ = self.stop.send(true);
        self.supervisor.await.map_err(|error| format!("server task failed: {error}"))?
    }

    /// Resolves when the server stops on its own: the node failed (`Err` with the reason).
    pub async fn stopped(&mut self) -> Result<(), String> {
        (&mut self.supervisor).await.map_err(|error| format!("server task failed: {error}"))?
    }
}

/// The data directory's first configuration (bootstrap.rs), asking the `--join` member
/// about the cluster when there is none yet.
async fn first_configuration(config: &ServerConfig, security: &NodeSecurity) -> Result<FirstConfiguration, String> {
    let fresh = bootstrap::read_cluster_file(&config.data_dir)?.is_none() && bootstrap::is_empty_data_dir(&config.data_dir)?;
    let join = match &config.join {
        Some(member) if fresh => Some(ask_to_join(member, security).await?),
        _ => None,
    };
    let peers = (!config.peers.is_empty()).then_some(&config.peers);
    let first = bootstrap::first_configuration(&config.data_dir, &config.cluster_id, peers, join)?;
    if !first.cluster.members.is_empty() && !first.cluster.members.contains_key(&config.id) {
        return Err(format!("node {} is not among the founding members {} of data dir {}", config.id, bootstrap::describe(&first.cluster.members), config.data_dir.display()));
    }
    Ok(first)
}

/// `GET /v1/cluster` of the member to join: the cluster id and where its members listen.
/// With peer TLS, asked over mutual TLS: the member's certificate must be valid for the
/// host in `--join`, and ours lets it answer without a token.
async fn ask_to_join(member: &str, security: &NodeSecurity) -> Result<JoinInfo, String> {
    let mut builder = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5));
    let scheme = match &security.peer {
        Some(tls) => {
            builder = builder.use_preconfigured_tls(tls.client_config_by_host());
            "https"
        }
        None => "http",
    };
    let client = builder.build().map_err(|error| format!("cannot build an HTTP client: {error}"))?;
    let url = format!("{scheme}://{member}/v1/cluster");
    let answer = client.get(&url).send().await.map_err(|error| format!("cannot reach --join member {member}: {}", keel_node::transport_http::error_chain(&error)))?;
    if !answer.status().is_success() {
        return Err(format!("--join member {member} answered {} to GET /v1/cluster", answer.status()));
    }
    let cluster: serde_json::Value = answer.json().await.map_err(|error| format!("--join member {member} sent no cluster description: {error}"))?;
    let cluster_id = cluster["cluster_id"].as_str().ok_or_else(|| format!("--join member {member}: no cluster_id in its answer"))?.to_string();
    let mut addresses = BTreeMap::new();
    for member in cluster["members"].as_array().into_iter().flatten() {
        if let (Some(id), Some(address)) = (member["id"].as_u64(), member["address"].as_str()) {
            addresses.insert(NodeId(id), address.to_string());
        }
    }
    Ok(JoinInfo { cluster_id, addresses })
}

async fn supervise(state: Arc<AppState>, node: RaftNode<KvStore>, http: JoinHandle<()>, http_stop: oneshot::Sender<()>, mut stop_requested: watch::Receiver<bool>) -> Result<(), String> {
    let id = state.id;
    let mut status = node.handle.watch_status();
    let failure = tokio::select! {
        _ = stop_requested.changed() => None,
        reason = node_stopped(&mut status) => Some(reason),
    };
    match &failure {
        None => info!("[NODE {id}] shutting down: refusing new requests, finishing those in flight"),
        Some(reason) => error!("[NODE {id}] the node stopped ({reason}); closing the server"),
    }
    state.draining.store(true, Ordering::SeqCst);
    state.closing.send_replace(true);
    if tokio::time::timeout(state.request_timeout + DRAIN_MARGIN, state.inflight.wait_idle()).await.is_err() {
        warn!("[NODE {id}] {} requests still in flight after the request timeout; closing anyway", state.inflight.count.load(Ordering::SeqCst));
    }
    let _ = http_stop.send(());
    let http_abort = http.abort_handle();
    if tokio::time::timeout(HTTP_CLOSE_WAIT, http).await.is_err() {
        warn!("[NODE {id}] HTTP connections still open after {HTTP_CLOSE_WAIT:?}; dropping them");
        http_abort.abort();
    }
    node.handle.shutdown();
    if let Err(error) = node.task.await {
        error!("[NODE {id}] the node's driver task failed: {error}");
    }
    info!("[NODE {id}] stopped");
    failure.map_or(Ok(()), Err)
}

async fn node_stopped(status: &mut watch::Receiver<keel_node::NodeStatus>) -> String {
    loop {
        if let Some(reason) = status.borrow_and_update().stopped.clone() {
            return reason;
        }
        if status.changed().await.is_err() {
            return "the node's driver ended".to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: with the default backlog of 128 the kernel dropped connections beyond it
    /// until they were accepted, and each waited a second or more to try again. Nothing
    /// accepts here, so every connection must fit in the backlog to complete at all.
    #[tokio::test]
    async fn connections_beyond_128_complete_before_any_is_accepted() {
        const CONNECTIONS: usize = 300;
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn").map_or(4096, |text| text.trim().parse().unwrap_or(4096));
        assert!(somaxconn > CONNECTIONS, "this test needs net.core.somaxconn above {CONNECTIONS} (it is {somaxconn})");
        let listener = bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connects: Vec<_> = (0..CONNECTIONS).map(|_| tokio::spawn(tokio::net::TcpStream::connect(address))).collect();
        let all = async {
            let mut streams = Vec::new();
            for connect in connects {
                streams.push(connect.await.unwrap().expect("connect"));
            }
            streams
        };
        // Only a guard against hanging: a dropped SYN is sent again after 1 s, 3 s, 7 s…
        let streams = tokio::time::timeout(Duration::from_secs(10), all).await.expect("connections beyond the backlog wait for SYN retries");
        assert_eq!(streams.len(), CONNECTIONS);
        drop(listener);
    }

    #[tokio::test]
    async fn binding_an_unresolvable_address_is_an_error() {
        assert!(bind("no-such-host.invalid:1").await.is_err());
        assert!(bind("127.0.0.1").await.is_err(), "a port is required");
    }
}
