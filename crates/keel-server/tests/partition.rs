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
//! Without root it fails, saying so: a test that cannot make its namespaces has checked
//! nothing and must not pass.

mod common;

use common::fabric::is_root;
use common::{agreed_leader_at, eventually, try_status_at, Cluster};
use std::time::Duration;

const NODES: u64 = 3;
/// Elections, a partition noticed, a heal: each well under this on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(30);
/// Accepted connections probe after 10 s of silence, 3 probes 5 s apart: ~25 s.
const KEEPALIVE_DEADLINE: Duration = Duration::from_secs(60);

/// The leader that the nodes `ids` agree on (and that says it leads), with its term.
async fn agreed_leader(http: &reqwest::Client, cluster: &Cluster, ids: &[u64]) -> Option<(u64, u64)> {
    let nodes: Vec<(u64, String)> = ids.iter().map(|id| (*id, cluster.url(*id))).collect();
    agreed_leader_at(http, &nodes).await
}

/// The answer's status; 503 when there is none (the cut-off node, or a timeout).
async fn put(http: &reqwest::Client, cluster: &Cluster, id: u64, key: &str, value: &str) -> reqwest::StatusCode {
    let url = format!("http://{}/v1/kv/{key}", cluster.addr(id));
    http.put(url).body(value.to_string()).send().await.map(|response| response.status()).unwrap_or(reqwest::StatusCode::SERVICE_UNAVAILABLE)
}

async fn stale_get(http: &reqwest::Client, cluster: &Cluster, id: u64, key: &str) -> Option<String> {
    let url = format!("http://{}/v1/kv/{key}?consistency=stale", cluster.addr(id));
    let response = http.get(url).send().await.ok()?;
    response.status().is_success().then_some(())?;
    response.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_is_replaced_notices_and_rejoins() {
    assert!(is_root(), "this test needs root for network namespaces and iptables (CI runs as root); run the tests as root");
    let cluster = Cluster::spawn_on_fabric(NODES, &[]);
    let fabric = cluster.fabric.as_ref().expect("on the fabric");
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().expect("client");
    let all: Vec<u64> = (1..=NODES).collect();

    let (old_leader, old_term) = eventually("a leader all three agree on", DEADLINE, || agreed_leader(&http, &cluster, &all)).await;
    assert_eq!(put(&http, &cluster, old_leader, "before", "1").await, reqwest::StatusCode::OK);

    for id in all.iter().filter(|id| **id != old_leader) {
        assert!(fabric.established_from(*id, old_leader) > 0, "node {id} holds the leader's stream before the cut");
    }
    fabric.cut_off(old_leader);
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != old_leader).collect();
    let new_leader = eventually("the majority to elect a new leader", DEADLINE, || async {
        let (leader, term) = agreed_leader(&http, &cluster, &rest).await?;
        (leader != old_leader && term > old_term).then_some(leader)
    })
    .await;
    eventually("a write through the new leader", DEADLINE, || async { (put(&http, &cluster, new_leader, "during", "2").await == reqwest::StatusCode::OK).then_some(()) }).await;
    eventually("the cut-off leader to log that its peers are unreachable", DEADLINE, || async {
        cluster.log(old_leader).contains("cannot send to node").then_some(())
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
        let following = try_status_at(&http, &cluster.url(old_leader)).await?["leader_id"].as_u64() == Some(new_leader);
        let caught_up = stale_get(&http, &cluster, old_leader, "during").await.as_deref() == Some("2");
        (following && caught_up).then_some(())
    })
    .await;
    for id in all {
        assert_eq!(stale_get(&http, &cluster, id, "before").await.as_deref(), Some("1"), "node {id} kept the write from before the partition");
    }
}
