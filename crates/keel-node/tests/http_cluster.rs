//! The HTTP transport over real loopback sockets: `RaftNode` + `FileStorage` + `KvStore`
//! clusters talking through `HttpTransport` and `raft_routes` behind the production
//! `Listener`, in plain HTTP and with peer mutual TLS, and raw handshakes and frames checking
//! what the route accepts and refuses.
//!
//! No sleeps as synchronisation: every wait polls a condition, bounded by `WAIT_MAX` (with
//! a message saying what it waited for) inside a whole-test `TEST_MAX` hang guard.

use axum::Router;
use keel_node::certificates::DevCa;
use keel_node::listener::{Listener, ListenerTls};
use keel_node::tls::{ConnectionInfo, PeerTls, PEER_ALPN};
use keel_core::{LogIndex, Message, MessageBody, NodeId, Role, Term};
use keel_kv::{Command, CommandResult, KvStore};
use keel_node::transport_http::{encode_frame, open_stream, STREAM_PATH, UPGRADE_PROTOCOL};
use keel_node::{raft_routes, Consistency, FileStorage, FileStorageConfig, HttpTransport, HttpTransportConfig, NodeConfig, NodeStatus, RaftHandle, RaftNode, StorageError, Transport, PROTOCOL_VERSION};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

const CLUSTER_ID: &str = "http-cluster-test";
const FRAME_BYTES_MAX: usize = 16 << 20;
/// One condition may take this long (elections, catch-up on a loaded 2-core machine).
const WAIT_MAX: Duration = Duration::from_secs(30);
/// The whole test, as a hang guard.
const TEST_MAX: Duration = Duration::from_secs(180);
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Runs `test` under the hang guard, logging as `RUST_LOG` says (e.g. `keel_node=debug`).
async fn guarded(test: impl Future<Output = ()>) {
    let filter = tracing_subscriber::EnvFilter::from_default_env();
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    tokio::time::timeout(TEST_MAX, test).await.expect("the test hung");
}

/// Polls `condition` until it holds; panics naming `what` after `WAIT_MAX`.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let polling = async {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        while !condition() {
            poll.tick().await;
        }
    };
    if tokio::time::timeout(WAIT_MAX, polling).await.is_err() {
        panic!("timed out after {WAIT_MAX:?} waiting for {what}");
    }
}

/// An axum server that can be stopped like a dying process: listener and connections closed.
struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    fn spawn(listener: TcpListener, router: Router, tls: ListenerTls) -> Server {
        let (stop, stopped) = oneshot::channel::<()>();
        let listener = Listener::new(listener, tls, |_| {}).expect("listener");
        let serving = axum::serve(listener, router.into_make_service_with_connect_info::<ConnectionInfo>()).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(async move { serving.await.expect("serving") });
        Server { stop, task }
    }

    /// Closes the listener and every connection (graceful: idle keep-alive connections
    /// close at once); aborts if that takes long.
    async fn kill(self) {
        let _ = self.stop.send(());
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), self.task).await.is_err() {
            abort.abort();
        }
    }
}

struct Running {
    handle: RaftHandle<KvStore>,
    driver: JoinHandle<()>,
    server: Server,
}

/// Three nodes, each with a data directory and a fixed address that survive restarts.
struct Cluster {
    addresses: BTreeMap<NodeId, SocketAddr>,
    dirs: BTreeMap<NodeId, TempDir>,
    nodes: BTreeMap<NodeId, Running>,
    snapshot_threshold_entries: u64,
    /// Peer TLS: each node's certificate, from one CA.
    tls: Option<BTreeMap<NodeId, Arc<PeerTls>>>,
}

impl Cluster {
    async fn start(size: u64, snapshot_threshold_entries: u64) -> Cluster {
        Cluster::start_with(size, snapshot_threshold_entries, None).await
    }

    async fn start_secure(size: u64, snapshot_threshold_entries: u64, certificates: &Certificates) -> Cluster {
        let tls = (1..=size).map(|id| (NodeId(id), Arc::new(certificates.peer_tls(NodeId(id))))).collect();
        Cluster::start_with(size, snapshot_threshold_entries, Some(tls)).await
    }

    async fn start_with(size: u64, snapshot_threshold_entries: u64, tls: Option<BTreeMap<NodeId, Arc<PeerTls>>>) -> Cluster {
        let mut listeners = BTreeMap::new();
        for id in 1..=size {
            listeners.insert(NodeId(id), TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        }
        let addresses = listeners.iter().map(|(id, listener)| (*id, listener.local_addr().expect("address"))).collect();
        let dirs = listeners.keys().map(|id| (*id, tempfile::tempdir().expect("tempdir"))).collect();
        let mut cluster = Cluster { addresses, dirs, nodes: BTreeMap::new(), snapshot_threshold_entries, tls };
        for (id, listener) in listeners {
            cluster.launch(id, listener).await;
        }
        cluster
    }

    fn node_config(&self, id: NodeId) -> NodeConfig {
        let mut config = NodeConfig::new(id, self.addresses.keys().copied().collect());
        config.tick_ms = 10;
        config.heartbeat_ms = 30;
        config.election_timeout_ms = 150;
        config.snapshot_threshold_entries = self.snapshot_threshold_entries;
        config.random_seed = Some(0x5eed_0000 + id.0);
        config
    }

    async fn launch(&mut self, id: NodeId, listener: TcpListener) {
        let storage = open_storage(self.dirs[&id].path()).await;
        let peers = self.addresses.iter().map(|(peer, address)| (*peer, address.to_string())).collect();
        let tls = self.tls.as_ref().map(|tls| tls[&id].clone());
        let transport = match &tls {
            Some(tls) => HttpTransport::with_peer_tls(id, CLUSTER_ID.to_string(), peers, HttpTransportConfig::default(), tls.clone()),
            None => HttpTransport::new(id, CLUSTER_ID.to_string(), peers, HttpTransportConfig::default()),
        };
        let node = RaftNode::start(self.node_config(id), storage, KvStore::new(), transport).expect("start node");
        let routes = raft_routes(id, CLUSTER_ID.to_string(), node.inbox.clone(), FRAME_BYTES_MAX, tls.is_some());
        let listener_tls = ListenerTls { peer: tls.map(|tls| tls.server_config().expect("server config")), client: None };
        let server = Server::spawn(listener, routes, listener_tls);
        self.nodes.insert(id, Running { handle: node.handle, driver: node.task, server });
    }

    /// Stops the driver and the server, as if the process died; the directory stays.
    async fn kill(&mut self, id: NodeId) {
        let running = self.nodes.remove(&id).expect("node is running");
        running.handle.shutdown();
        running.driver.await.expect("driver task");
        running.server.kill().await;
    }

    /// Starts `id` again from its directory, on its old address.
    async fn restart(&mut self, id: NodeId) {
        let address = self.addresses[&id];
        let mut listener = None;
        wait_for(&format!("node {id}'s address {address} to be free again"), || {
            listener = std::net::TcpListener::bind(address).ok();
            listener.is_some()
        })
        .await;
        let listener = listener.expect("bound");
        listener.set_nonblocking(true).expect("nonblocking");
        self.launch(id, TcpListener::from_std(listener).expect("tokio listener")).await;
    }

    async fn stop_all(mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id).await;
        }
    }

    fn handle(&self, id: NodeId) -> &RaftHandle<KvStore> {
        &self.nodes[&id].handle
    }

    fn status(&self, id: NodeId) -> NodeStatus {
        self.handle(id).status()
    }

    /// Waits until the running nodes agree on one leader in one term, and returns it.
    async fn wait_for_leader(&self) -> NodeId {
        let mut leader = None;
        wait_for("the running nodes to agree on one leader", || {
            leader = agreed_leader(self.nodes.values().map(|running| running.handle.status()).collect());
            leader.is_some()
        })
        .await;
        let leader = leader.expect("agreed");
        let leaders = self.nodes.values().filter(|running| running.handle.status().raft.role == Role::Leader).count();
        assert_eq!(leaders, 1, "exactly one leader");
        leader
    }

    async fn wait_for_applied(&self, index: LogIndex) {
        for (id, running) in &self.nodes {
            wait_for(&format!("node {id} to apply index {index}"), || running.handle.status().raft.applied_index >= index).await;
        }
    }

    /// Every running node's key-value pairs (stale reads of its own state machine).
    async fn contents(&self) -> BTreeMap<NodeId, BTreeMap<String, Vec<u8>>> {
        let mut contents = BTreeMap::new();
        for (id, running) in &self.nodes {
            contents.insert(*id, read_all(&running.handle).await);
        }
        contents
    }
}

/// Opens the directory, waiting for a stopped node's storage thread to release its lock
/// (`RaftNode::task` resolves before that thread has dropped the storage).
async fn open_storage(dir: &Path) -> FileStorage {
    let mut storage = None;
    let mut last_error = String::new();
    let opened = tokio::time::timeout(WAIT_MAX, async {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        loop {
            match FileStorage::open(dir, FileStorageConfig::default()) {
                Ok(opened) => return storage = Some(opened),
                Err(error @ StorageError::Locked { .. }) => last_error = error.to_string(),
                Err(error) => panic!("cannot open {}: {error}", dir.display()),
            }
            poll.tick().await;
        }
    })
    .await;
    assert!(opened.is_ok(), "cannot open {}: {last_error}", dir.display());
    storage.expect("opened")
}

fn agreed_leader(statuses: Vec<NodeStatus>) -> Option<NodeId> {
    let first = statuses.first()?.raft;
    let leader = first.leader_id?;
    let agreed = statuses.iter().all(|status| status.raft.term == first.term && status.raft.leader_id == Some(leader));
    let leads = statuses.iter().any(|status| status.raft.id == leader && status.raft.role == Role::Leader);
    (agreed && leads).then_some(leader)
}

async fn read_all(handle: &RaftHandle<KvStore>) -> BTreeMap<String, Vec<u8>> {
    let read = handle.read(Consistency::Stale, |kv| kv.iter().map(|(key, value)| (key.to_string(), value.to_vec())).collect());
    read.await.expect("stale read").1
}

fn set(key: &str, value: &str) -> Vec<u8> {
    Command::Set { key: key.to_string(), value: value.as_bytes().to_vec() }.encode().expect("valid command")
}

/// Proposes `count` sets `{prefix}-{i}` concurrently through `leader`; all must succeed.
/// Returns the highest log index among them and the pairs written.
async fn write_keys(leader: &RaftHandle<KvStore>, prefix: &str, count: usize) -> (LogIndex, BTreeMap<String, Vec<u8>>) {
    let mut proposals = JoinSet::new();
    let mut written = BTreeMap::new();
    for i in 0..count {
        let (key, value) = (format!("{prefix}-{i:04}"), format!("value {i} of {prefix}"));
        let command = set(&key, &value);
        written.insert(key, value.into_bytes());
        let leader = leader.clone();
        proposals.spawn(async move { leader.propose(command).await });
    }
    let mut last_index = LogIndex(0);
    while let Some(joined) = proposals.join_next().await {
        let (index, result) = joined.expect("proposal task").expect("proposal succeeds");
        assert_eq!(result, CommandResult::Set);
        last_index = last_index.max(index);
    }
    (last_index, written)
}

fn assert_all_equal(contents: &BTreeMap<NodeId, BTreeMap<String, Vec<u8>>>, expected: &BTreeMap<String, Vec<u8>>) {
    for (id, content) in contents {
        assert_eq!(content.len(), expected.len(), "node {id} holds {} keys, expected {}", content.len(), expected.len());
        assert!(content == expected, "node {id}'s contents differ from what was written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_one_leader_and_replicate_a_thousand_writes() {
    guarded(async {
        let cluster = Cluster::start(3, 10_000).await;
        let leader = cluster.wait_for_leader().await;
        let (last_index, written) = write_keys(cluster.handle(leader), "key", 1000).await;
        assert_eq!(written.len(), 1000);
        cluster.wait_for_applied(last_index).await;
        assert_all_equal(&cluster.contents().await, &written);
        for id in cluster.nodes.keys() {
            assert_eq!(cluster.status(*id).stopped, None, "node {id} is still running");
        }
        cluster.stop_all().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_by_snapshot() {
    guarded(async {
        let mut cluster = Cluster::start(3, 100).await;
        let leader = cluster.wait_for_leader().await;
        let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");

        let (last_index, mut written) = write_keys(cluster.handle(leader), "before", 50).await;
        cluster.wait_for_applied(last_index).await;
        let follower_before = cluster.status(follower).raft;
        assert_eq!(follower_before.snapshot_index, LogIndex(0), "too few entries for a snapshot yet");
        cluster.kill(follower).await;

        let (last_index, more) = write_keys(cluster.handle(leader), "while-down", 250).await;
        written.extend(more);
        cluster.wait_for_applied(last_index).await;
        // Once the leader's log starts after the follower's, only a snapshot can catch it up.
        let leader_handle = cluster.handle(leader).clone();
        wait_for("the leader to compact past the follower's log", || leader_handle.status().raft.snapshot_index > follower_before.last_log_index).await;
        let leader_snapshot = leader_handle.status().raft.snapshot_index;

        cluster.restart(follower).await;
        let recovered = cluster.status(follower).raft;
        assert_eq!(recovered.last_log_index, follower_before.last_log_index, "the follower recovered its log from disk");
        assert_eq!(recovered.snapshot_index, LogIndex(0));
        let follower_handle = cluster.handle(follower).clone();
        wait_for("the follower to install the leader's snapshot", || follower_handle.status().raft.snapshot_index >= leader_snapshot).await;
        cluster.wait_for_applied(last_index).await;
        assert_all_equal(&cluster.contents().await, &written);

        // And it keeps up through ordinary AppendEntries afterwards.
        let (last_index, more) = write_keys(cluster.handle(leader), "after", 20).await;
        written.extend(more);
        cluster.wait_for_applied(last_index).await;
        assert_all_equal(&cluster.contents().await, &written);
        cluster.stop_all().await;
    })
    .await;
}

fn vote_request(from: u64, to: u64) -> Message {
    let body = MessageBody::RequestVote { pre_vote: false, last_log_index: LogIndex(9), last_log_term: Term(3), leadership_transfer: false };
    Message { from: NodeId(from), to: NodeId(to), term: Term(1000), body }
}

/// A route for node 1 whose inbox the test holds, so "not stepped" is checked exactly.
/// Returns the route's URL.
async fn bare_route(frame_bytes_max: usize) -> (String, mpsc::Receiver<Message>, Server) {
    let (inbox, inbox_receiver) = mpsc::channel(16);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}{STREAM_PATH}", listener.local_addr().expect("address"));
    let server = Server::spawn(listener, raft_routes(NodeId(1), CLUSTER_ID.to_string(), inbox, frame_bytes_max, false), ListenerTls::default());
    (url, inbox_receiver, server)
}

/// The status of an opening request with this query, upgrading or not.
async fn handshake(client: &reqwest::Client, url: &str, query: &str, upgrade: bool) -> reqwest::StatusCode {
    let mut request = client.get(format!("{url}?{query}"));
    if upgrade {
        request = request.header("connection", "upgrade").header("upgrade", UPGRADE_PROTOCOL);
    }
    request.send().await.expect("request").status()
}

/// Waits until the route closes `stream` (a read sees its end).
async fn wait_closed(stream: &mut reqwest::Upgraded, what: &str) {
    let mut byte = [0; 1];
    match tokio::time::timeout(WAIT_MAX, stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(_)) => panic!("{what}: the route wrote to a one-way stream"),
        Err(_) => panic!("{what}: the route kept the stream open"),
    }
}

async fn write_frame(stream: &mut reqwest::Upgraded, messages: &[Message]) {
    let mut frame = Vec::new();
    encode_frame(messages, &mut frame);
    stream.write_all(&frame).await.expect("write a frame");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_refuses_other_clusters_other_protocols_and_bad_frames() {
    guarded(async {
        let (url, mut inbox, server) = bare_route(1024).await;
        let client = reqwest::Client::builder().no_proxy().build().expect("client");
        let empty = |inbox: &mut mpsc::Receiver<Message>| matches!(inbox.try_recv(), Err(mpsc::error::TryRecvError::Empty));
        let ours = format!("protocol={PROTOCOL_VERSION}&cluster={CLUSTER_ID}&from=2");

        // Opening requests.
        assert_eq!(handshake(&client, &url, &ours, false).await, reqwest::StatusCode::UPGRADE_REQUIRED, "a plain GET");
        let other_cluster = format!("protocol={PROTOCOL_VERSION}&cluster=some-other-cluster&from=2");
        assert_eq!(handshake(&client, &url, &other_cluster, true).await, reqwest::StatusCode::FORBIDDEN);
        let future_protocol = format!("protocol={}&cluster={CLUSTER_ID}&from=2", PROTOCOL_VERSION + 1);
        assert_eq!(handshake(&client, &url, &future_protocol, true).await, reqwest::StatusCode::BAD_REQUEST);
        let anonymous = format!("protocol={PROTOCOL_VERSION}&cluster={CLUSTER_ID}");
        assert_eq!(handshake(&client, &url, &anonymous, true).await, reqwest::StatusCode::BAD_REQUEST, "a stream names its sender");
        assert_eq!(handshake(&client, &url, "protocol=two", true).await, reqwest::StatusCode::BAD_REQUEST);

        // An accepted stream delivers the messages for this node, in order.
        let mut stream = open_stream(&client, &url, CLUSTER_ID, NodeId(2)).await.expect("open a stream");
        let later = Message { term: Term(1001), ..vote_request(2, 1) };
        write_frame(&mut stream, &[vote_request(2, 1), vote_request(2, 3)]).await;
        write_frame(&mut stream, std::slice::from_ref(&later)).await;
        assert_eq!(tokio::time::timeout(WAIT_MAX, inbox.recv()).await.expect("delivery"), Some(vote_request(2, 1)));
        let second = tokio::time::timeout(WAIT_MAX, inbox.recv()).await.expect("delivery");
        assert_eq!(second, Some(later), "the message for node 3 was dropped, the rest kept in order");

        // A message claiming another sender than the stream's closes it, unstepped.
        write_frame(&mut stream, &[vote_request(3, 1)]).await;
        wait_closed(&mut stream, "a forged sender").await;
        let mut stream = open_stream(&client, &url, CLUSTER_ID, NodeId(2)).await.expect("open a stream");

        // A frame that does not decode closes its stream; nothing of it is stepped.
        stream.write_all(&[4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).await.expect("write");
        wait_closed(&mut stream, "an undecodable frame").await;
        // A length over the limit closes the stream before the body is read.
        let mut stream = open_stream(&client, &url, CLUSTER_ID, NodeId(2)).await.expect("open a stream");
        stream.write_all(&1025u32.to_le_bytes()).await.expect("write");
        wait_closed(&mut stream, "an oversized frame").await;
        assert!(empty(&mut inbox), "nothing refused reached the inbox");

        // The node behind the route stops: its open streams close, new ones are refused.
        let mut stream = open_stream(&client, &url, CLUSTER_ID, NodeId(2)).await.expect("open a stream");
        drop(inbox);
        wait_closed(&mut stream, "the node stopped").await;
        assert_eq!(handshake(&client, &url, &ours, true).await, reqwest::StatusCode::SERVICE_UNAVAILABLE);
        server.kill().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transport_delivers_many_messages_in_order_across_batches() {
    guarded(async {
        let (url, mut inbox, server) = bare_route(FRAME_BYTES_MAX).await;
        let address = url.trim_start_matches("http://").trim_end_matches(STREAM_PATH).to_string();
        let peers = BTreeMap::from([(NodeId(1), address), (NodeId(2), "127.0.0.1:1".to_string())]);
        let config = HttpTransportConfig { batch_messages_max: 7, ..HttpTransportConfig::default() };
        let transport = HttpTransport::new(NodeId(2), CLUSTER_ID.to_string(), peers, config);
        let total = 500u64;
        let mut received = Vec::new();
        let mut sent = 0;
        // The bare route's inbox holds 16, so send in rounds the inbox can take.
        while sent < total {
            let round = (total - sent).min(16);
            for term in sent..sent + round {
                transport.send(Message { term: Term(term), ..vote_request(2, 1) });
            }
            transport.send(vote_request(2, 2)); // to itself: dropped
            transport.send(vote_request(2, 9)); // unknown: dropped
            sent += round;
            for _ in 0..round {
                let message = tokio::time::timeout(WAIT_MAX, inbox.recv()).await.expect("delivery").expect("inbox open");
                received.push(message.term.0);
            }
        }
        assert_eq!(received, (0..total).collect::<Vec<_>>(), "one peer's messages arrive in the order sent");
        assert!(inbox.try_recv().is_err(), "nothing addressed to itself or to an unknown node went out");

        drop(transport);
        server.kill().await;
    })
    .await;
}

/// A CA and node certificates on disk, as `keel certs init` lays them out.
struct Certificates {
    dir: TempDir,
    ca: DevCa,
}

impl Certificates {
    fn new() -> Certificates {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = DevCa::new().expect("CA");
        std::fs::write(dir.path().join("ca.pem"), ca.certificate_pem()).expect("write");
        Certificates { dir, ca }
    }

    /// Node `id`'s certificate and key files (issued on first use), for 127.0.0.1 too.
    fn node_files(&self, id: NodeId) -> (std::path::PathBuf, std::path::PathBuf) {
        let (certificate, key) = (self.dir.path().join(format!("node-{id}.pem")), self.dir.path().join(format!("node-{id}-key.pem")));
        if !certificate.exists() {
            let issued = self.ca.issue_node(id, &["127.0.0.1".to_string()]).expect("issue");
            std::fs::write(&certificate, issued.certificate_pem).expect("write");
            std::fs::write(&key, issued.key_pem).expect("write");
        }
        (certificate, key)
    }

    fn peer_tls(&self, id: NodeId) -> PeerTls {
        let (certificate, key) = self.node_files(id);
        PeerTls::load(id, &certificate, &key, &self.dir.path().join("ca.pem")).expect("peer TLS")
    }

    fn roots(&self) -> Arc<rustls::RootCertStore> {
        keel_node::tls::load_roots(&self.dir.path().join("ca.pem")).expect("roots")
    }
}

/// A client for the route of a secure node: trusts `roots`, presents `identity` (if any),
/// offers the peer ALPN.
fn tls_client(roots: Arc<rustls::RootCertStore>, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let builder = rustls::ClientConfig::builder_with_provider(keel_node::tls::crypto_provider()).with_safe_default_protocol_versions().expect("versions").with_root_certificates(roots);
    let mut config = match identity {
        Some((certificate, key)) => {
            let identity = keel_node::tls::Identity::load(certificate, key).expect("identity");
            builder.with_client_auth_cert(identity.chain, identity.key).expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![PEER_ALPN.to_vec()];
    reqwest::Client::builder().no_proxy().use_preconfigured_tls(config).build().expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_with_peer_tls_replicate_and_catch_a_restarted_follower_up() {
    guarded(async {
        let certificates = Certificates::new();
        let mut cluster = Cluster::start_secure(3, 100, &certificates).await;
        let leader = cluster.wait_for_leader().await;
        let (last_index, mut written) = write_keys(cluster.handle(leader), "before", 100).await;
        cluster.wait_for_applied(last_index).await;
        let follower = *cluster.nodes.keys().find(|id| **id != leader).expect("a follower");
        cluster.kill(follower).await;
        let (last_index, more) = write_keys(cluster.handle(leader), "while-down", 300).await;
        written.extend(more);
        cluster.restart(follower).await;
        cluster.wait_for_applied(last_index).await;
        assert_all_equal(&cluster.contents().await, &written);
        cluster.stop_all().await;
    })
    .await;
}

/// A node with peer TLS on takes a stream only from a peer certificate of its CA that names
/// the stream's sender; every other caller is refused before a frame is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_route_refuses_every_caller_but_the_node_its_certificate_names() {
    guarded(async {
        let certificates = Certificates::new();
        let (inbox, mut inbox_receiver) = mpsc::channel(16);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let tls = ListenerTls { peer: Some(certificates.peer_tls(NodeId(1)).server_config().expect("config")), client: None };
        let server = Server::spawn(listener, raft_routes(NodeId(1), CLUSTER_ID.to_string(), inbox, FRAME_BYTES_MAX, true), tls);
        let url = format!("https://{address}{STREAM_PATH}");
        let (node2_certificate, node2_key) = certificates.node_files(NodeId(2));
        let (node3_certificate, node3_key) = certificates.node_files(NodeId(3));

        // No client certificate, or one from another CA: the TLS handshake fails.
        let anonymous = tls_client(certificates.roots(), None);
        assert!(open_stream(&anonymous, &url, CLUSTER_ID, NodeId(2)).await.is_err(), "no certificate");
        let stranger = Certificates::new();
        let (foreign_certificate, foreign_key) = stranger.node_files(NodeId(2));
        let foreign = tls_client(certificates.roots(), Some((&foreign_certificate, &foreign_key)));
        assert!(open_stream(&foreign, &url, CLUSTER_ID, NodeId(2)).await.is_err(), "node 2's name from another CA");
        // Node 3's certificate claiming to be node 2: 403.
        let node3 = tls_client(certificates.roots(), Some((&node3_certificate, &node3_key)));
        let error = open_stream(&node3, &url, CLUSTER_ID, NodeId(2)).await.err().expect("refused");
        assert!(error.contains("403") && error.contains("names another node"), "{error}");
        // Plain HTTP reaches the route but is no peer: 403.
        let plain = reqwest::Client::builder().no_proxy().build().expect("client");
        let error = open_stream(&plain, &format!("http://{address}{STREAM_PATH}"), CLUSTER_ID, NodeId(2)).await.err().expect("refused");
        assert!(error.contains("403") && error.contains("mutual TLS"), "{error}");
        assert!(matches!(inbox_receiver.try_recv(), Err(mpsc::error::TryRecvError::Empty)), "nothing refused reached the inbox");

        // Node 2 itself is accepted, and may speak only for itself.
        let node2 = tls_client(certificates.roots(), Some((&node2_certificate, &node2_key)));
        let mut stream = open_stream(&node2, &url, CLUSTER_ID, NodeId(2)).await.expect("node 2 is accepted");
        write_frame(&mut stream, &[vote_request(2, 1)]).await;
        assert_eq!(tokio::time::timeout(WAIT_MAX, inbox_receiver.recv()).await.expect("delivery"), Some(vote_request(2, 1)));
        write_frame(&mut stream, &[vote_request(3, 1)]).await;
        wait_closed(&mut stream, "node 2 speaking for node 3").await;
        assert!(matches!(inbox_receiver.try_recv(), Err(mpsc::error::TryRecvError::Empty)), "the forged vote was not stepped");
        server.kill().await;
    })
    .await;
}
