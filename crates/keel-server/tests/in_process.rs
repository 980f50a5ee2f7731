//! Servers in this process, on listeners bound to port 0 first (so the peers' real
//! addresses are known before any node starts): the library API `keel serve` is built on,
//! and a graceful shutdown that answers the request in flight.

use keel_core::{NodeId, Role};
use keel_server::{Server, ServerConfig};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

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
    let mut listeners = BTreeMap::new();
    for id in 1..=3 {
        listeners.insert(NodeId(id), TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let peers: BTreeMap<NodeId, String> = listeners.iter().map(|(id, listener)| (*id, listener.local_addr().unwrap().to_string())).collect();
    let mut servers = BTreeMap::new();
    for (id, listener) in listeners {
        let mut config = ServerConfig::new(id, dir.join(format!("node{id}")), peers.clone());
        config.election_timeout_ms = 1000;
        config.request_timeout_ms = request_timeout_ms;
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
