//! Servers in this process, on listeners bound to port 0 first (so the peers' real
//! addresses are known before any node starts): the library API `keel serve` is built on,
//! and a graceful shutdown that answers the request in flight.

use keel_core::{NodeId, Role};
use keel_server::{Server, ServerConfig};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn start_cluster(dir: &std::path::Path, request_timeout_ms: u64) -> BTreeMap<NodeId, Server> {
    let listeners = bind_listeners().await;
    let peers = addresses_of(&listeners);
    start_nodes(dir, request_timeout_ms, listeners, &peers, |_| {}).await
}

async fn bind_listeners() -> BTreeMap<NodeId, TcpListener> {
    let mut listeners = BTreeMap::new();
    for id in 1..=3 {
        listeners.insert(NodeId(id), TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    listeners
}

fn addresses_of(listeners: &BTreeMap<NodeId, TcpListener>) -> BTreeMap<NodeId, String> {
    listeners.iter().map(|(id, listener)| (*id, listener.local_addr().unwrap().to_string())).collect()
}

/// Starts a node on each listener, each config changed by `configure` last.
async fn start_nodes(dir: &std::path::Path, request_timeout_ms: u64, listeners: BTreeMap<NodeId, TcpListener>, peers: &BTreeMap<NodeId, String>, configure: impl Fn(&mut ServerConfig)) -> BTreeMap<NodeId, Server> {
    let mut servers = BTreeMap::new();
    for (id, listener) in listeners {
        let mut config = ServerConfig::new(id, dir.join(format!("node{id}")), peers.clone());
        config.election_timeout_ms = 1000;
        config.request_timeout_ms = request_timeout_ms;
        configure(&mut config);
        servers.insert(id, Server::start(config, listener).await.unwrap());
    }
    servers
}

fn leader_of(servers: &BTreeMap<NodeId, Server>) -> Option<NodeId> {
    let leaders: Vec<NodeId> = servers.values().filter(|server| server.handle().status().raft.role == Role::Leader).map(|server| server.id()).collect();
    let known: Vec<Option<NodeId>> = servers.values().map(|server| server.handle().status().raft.leader_id).collect();
    (leaders.len() == 1 && known.iter().all(|leader| *leader == Some(leaders[0]))).then(|| leaders[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_cluster_serves_both_apis_and_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = start_cluster(dir.path(), 1500).await;
    let leader = eventually("a leader", || leader_of(&servers)).await;
    let follower = *servers.keys().find(|id| **id != leader).unwrap();
    let http = reqwest::Client::new();
    let addresses: BTreeMap<NodeId, String> = servers.iter().map(|(id, server)| (*id, server.local_addr().to_string())).collect();
    let url = |id: NodeId, path: &str| format!("http://{}{path}", addresses[&id]);

    let put = http.put(url(follower, "/v1/kv/greeting")).body("hello").send().await.unwrap();
    assert_eq!(put.status(), 200, "the follower forwards to the leader");
    let submit = http.post(url(leader, "/client/submit")).body(r#"{"command": "SET seed value"}"#).send().await.unwrap();
    let submitted: serde_json::Value = submit.json().await.unwrap();
    assert_eq!(submitted["result"], "OK");
    let read: serde_json::Value = http.get(url(leader, "/client/read/greeting")).send().await.unwrap().json().await.unwrap();
    assert_eq!(read["value"], "hello");

    // Leave the leader alone, then start a write it cannot commit and shut it down while
    // the write waits: the write still gets an answer (503, outcome unknown).
    for id in servers.keys().copied().filter(|id| *id != leader).collect::<Vec<_>>() {
        servers.remove(&id).unwrap().shutdown().await.unwrap();
    }
    let last_log_before = servers[&leader].handle().status().raft.last_log_index;
    let write = tokio::spawn(http.put(url(leader, "/v1/kv/stuck")).body("never").send());
    let leader_server = servers.remove(&leader).unwrap();
    eventually("the write reaches the log", || (leader_server.handle().status().raft.last_log_index > last_log_before).then_some(())).await;
    let stopping = tokio::spawn(leader_server.shutdown());
    // While the write waits, new key-value requests are refused (step 1 of the shutdown);
    // the node-information routes still answer.
    let mut refused = None;
    for _ in 0..1_000 {
        // Stale: answered at once before the shutdown (a linearizable read would wait).
        let answer = http.get(url(leader, "/v1/kv/greeting?consistency=stale")).send().await.expect("the node still listens while it drains");
        if answer.status() == 503 {
            refused = Some(answer.json::<serde_json::Value>().await.unwrap());
            break;
        }
        tokio::task::yield_now().await;
    }
    let refused = refused.expect("a request during the shutdown is refused");
    assert_eq!((refused["error"].as_str(), refused["outcome"].as_str()), (Some("shutting_down"), Some("not_applied")), "{refused}");
    assert_eq!(http.get(url(leader, "/v1/status")).send().await.unwrap().status(), 200);
    stopping.await.unwrap().unwrap();
    let answer = write.await.unwrap().expect("the in-flight request was answered, not cut off");
    assert_eq!(answer.status(), 503);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["outcome"], "unknown", "{body}");
}

/// A follower passes back the 421 of a node it took for the leader, and does not name that
/// node in `X-Keel-Leader-Addr`: it leads no more. Node 3 reaches nodes 1 and 2 through
/// fronts that pass peer streams through and answer every forwarded request 421, as a
/// leader would that lost its leadership after node 3 last heard from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_passed_back_names_no_leader_in_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let listeners = bind_listeners().await;
    let peers = addresses_of(&listeners);
    let not_leader = r#"{"error":"not_leader","message":"this node is not the leader; node 2 is","leader_hint":2}"#;
    let mut seen_by_3 = peers.clone();
    for id in [NodeId(1), NodeId(2)] {
        seen_by_3.insert(id, misdirecting_front(peers[&id].clone(), not_leader).await);
    }
    let servers = start_nodes(dir.path(), 1500, listeners, &peers, |config| {
        if config.id == NodeId(3) {
            config.peers = seen_by_3.clone();
            // Node 1 or 2 leads: their timers run out long before node 3's could.
            config.election_timeout_ms = 60_000;
        }
    })
    .await;
    eventually("a leader every node knows", || leader_of(&servers)).await;

    let answer = reqwest::Client::new().put(format!("http://{}/v1/kv/k", peers[&NodeId(3)])).body("v").send().await.unwrap();
    assert_eq!(answer.status(), 421);
    assert_eq!(answer.headers().get("x-keel-leader-addr"), None, "the node that answered 421 is not the leader");
    assert_eq!(answer.text().await.unwrap(), not_leader, "the body, with its hint, is passed back as it came");
}

/// Listens for connections meant for the node at `target`. A request forwarded by a
/// follower (it carries `X-Keel-Forwarded-By`) is answered 421 with `body`; anything else,
/// the peer streams included, is passed through to `target` both ways.
async fn misdirecting_front(target: String, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                    match inbound.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(count) => head.extend_from_slice(&buffer[..count]),
                    }
                }
                if String::from_utf8_lossy(&head).to_ascii_lowercase().contains("x-keel-forwarded-by:") {
                    let answer = format!("HTTP/1.1 421 Misdirected Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                    let _ = inbound.write_all(answer.as_bytes()).await;
                    // Read until the forwarder closes, so that closing here never resets the
                    // connection before the answer is read.
                    while matches!(inbound.read(&mut buffer).await, Ok(count) if count > 0) {}
                    return;
                }
                let mut outbound = TcpStream::connect(&target).await.unwrap();
                outbound.write_all(&head).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    address
}
