//! A real network partition: three `keel serve` processes, each in a network namespace of its
//! own joined by a bridge, and the leader cut off with iptables (every packet to and from the
//! other nodes dropped, not refused: the harder case, where nothing tells the sender).
//!
//! Checks that the majority elects a new leader and commits, that the cut-off leader notices
//! (its peer streams time out and it logs it, rather than writing into the void), that the
//! others close the streams it had opened to them (keepalive on accepted connections, not
//! held forever), and that after healing it follows the new leader and holds what was
//! written meanwhile.
//!
//! Needs root, `ip` (iproute2) and `iptables`; `.ci/run` runs as root and installs them.
//! Without root the test says so and returns: namespaces cannot be made.

mod common;

use common::fabric::{is_root, Fabric};
use common::{agreed_leader_at, eventually, try_status_at, BINARY};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

const NODES: u64 = 3;
/// Elections, a partition noticed, a heal: each well under this on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);
/// Accepted connections probe after 10 s of silence, 3 probes 5 s apart: ~25 s.
const KEEPALIVE_DEADLINE: Duration = Duration::from_secs(60);

/// The `keel serve` processes, killed on drop (before the fabric goes).
struct Nodes {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_nodes(fabric: &Fabric, dir: &Path) -> Nodes {
    let peers = (1..=NODES).map(|id| format!("{id}={}", fabric.address(id))).collect::<Vec<_>>().join(",");
    let mut nodes = Nodes { children: Vec::new(), logs: Vec::new() };
    for id in 1..=NODES {
        let log = dir.join(format!("node{id}.log"));
        let data_dir = dir.join(format!("node{id}"));
        let child = fabric
            .command(id, BINARY)
            .args(["serve", "--id", &id.to_string(), "--listen", &fabric.address(id)])
            .args(["--data-dir", data_dir.to_str().expect("utf-8 path"), "--peers", &peers])
            .env("KEEL_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("spawning keel serve in its namespace");
        nodes.children.push(child);
        nodes.logs.push(log);
    }
    nodes
}

/// The leader that the nodes `ids` agree on (and that says it leads), with its term.
async fn agreed_leader(http: &reqwest::Client, fabric: &Fabric, ids: &[u64]) -> Option<(u64, u64)> {
    let nodes: Vec<(u64, String)> = ids.iter().map(|id| (*id, fabric.address(*id))).collect();
    agreed_leader_at(http, &nodes).await
}

async fn put(http: &reqwest::Client, fabric: &Fabric, id: u64, key: &str, value: &str) -> reqwest::StatusCode {
    let url = format!("http://{}/v1/kv/{key}", fabric.address(id));
    http.put(url).body(value.to_string()).send().await.map(|response| response.status()).unwrap_or(reqwest::StatusCode::SERVICE_UNAVAILABLE)
}

async fn stale_get(http: &reqwest::Client, fabric: &Fabric, id: u64, key: &str) -> Option<String> {
    let url = format!("http://{}/v1/kv/{key}?consistency=stale", fabric.address(id));
    let response = http.get(url).send().await.ok()?;
    response.status().is_success().then_some(())?;
    response.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_is_replaced_notices_and_rejoins() {
    if !is_root() {
        eprintln!("skipped: network namespaces need root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let fabric = Fabric::new(NODES);
    let nodes = start_nodes(&fabric, dir.path());
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().expect("client");
    let all: Vec<u64> = (1..=NODES).collect();

    let (old_leader, old_term) = eventually("a leader all three agree on", DEADLINE, || agreed_leader(&http, &fabric, &all)).await;
    assert_eq!(put(&http, &fabric, old_leader, "before", "1").await, reqwest::StatusCode::OK);

    for id in all.iter().filter(|id| **id != old_leader) {
        assert!(fabric.established_from(*id, old_leader) > 0, "node {id} holds the leader's stream before the cut");
    }
    fabric.cut_off(old_leader);
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != old_leader).collect();
    let new_leader = eventually("the majority to elect a new leader", DEADLINE, || async {
        let (leader, term) = agreed_leader(&http, &fabric, &rest).await?;
        (leader != old_leader && term > old_term).then_some(leader)
    })
    .await;
    eventually("a write through the new leader", DEADLINE, || async { (put(&http, &fabric, new_leader, "during", "2").await == reqwest::StatusCode::OK).then_some(()) }).await;
    let old_log = &nodes.logs[(old_leader - 1) as usize];
    eventually("the cut-off leader to log that its peers are unreachable", DEADLINE, || async {
        std::fs::read_to_string(old_log).unwrap_or_default().contains("cannot send to node").then_some(())
    })
    .await;

    // The streams the old leader had opened to the others now carry nothing, and nothing
    // tells them it is gone: keepalive probes on accepted connections must close them.
    for id in &rest {
        eventually("the others to close the old leader's silent streams", KEEPALIVE_DEADLINE, || async {
            (fabric.established_from(*id, old_leader) == 0).then_some(())
        })
        .await;
    }

    fabric.heal(old_leader);
    eventually("the old leader to follow the new one and hold the write made without it", DEADLINE, || async {
        let following = try_status_at(&http, &fabric.address(old_leader)).await?["leader_id"].as_u64() == Some(new_leader);
        let caught_up = stale_get(&http, &fabric, old_leader, "during").await.as_deref() == Some("2");
        (following && caught_up).then_some(())
    })
    .await;
    for id in all {
        assert_eq!(stale_get(&http, &fabric, id, "before").await.as_deref(), Some("1"), "node {id} kept the write from before the partition");
    }
    drop(nodes);
}
