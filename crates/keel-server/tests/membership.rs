//! Membership changes and leadership transfer on real `keel serve` processes, while clients
//! write: grow 3→5 and shrink back to 3 (the leader removed on the way), replace a dead
//! node, and move the leader (by API, and by SIGTERM). In each: every acknowledged write
//! survives, the members end identical, and no write fails with anything but a refusal
//! that applied nothing (`not_applied`) or, for a write caught by a crash, an unknown outcome.
//! (Linearizability across a membership change is checked by `linearizable_under_faults`,
//! whose nemesis removes, wipes and re-adds a node.)

mod common;

use common::{eventually, Cluster, WAIT};
use keel_server::client::{Client, ClientError};
use reqwest::Method;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WRITERS: usize = 6;
const STABLE: &[&str] = &["--election-timeout-ms", "600"];

/// Six writers, each setting its own key to 1, 2, 3...: the last acknowledged value of each
/// key is what must survive.
struct Writers {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Writes whose outcome was unknown (allowed only across crashes).
    unknown: Arc<Mutex<u64>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(endpoints: Vec<String>) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
        let unknown = Arc::new(Mutex::new(0));
        let tasks = (0..WRITERS)
            .map(|writer| {
                let (stop, acknowledged, unknown, endpoints) = (stop.clone(), acknowledged.clone(), unknown.clone(), endpoints.clone());
                tokio::spawn(async move {
                    let key = format!("writer-{writer}");
                    let mut client = Client::new(&endpoints, Duration::from_secs(10));
                    let mut value = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        value += 1;
                        match client.put(&key, value.to_string().as_bytes()).await {
                            Ok(_) => {
                                acknowledged.lock().unwrap().insert(key.clone(), value);
                            }
                            Err(ClientError::OutcomeUnknown(_)) => *unknown.lock().unwrap() += 1,
                            Err(error) => panic!("{key}={value}: {error} (only not_applied refusals, retried by the client, are expected)"),
                        }
                    }
                })
            })
            .collect();
        Writers { stop, acknowledged, unknown, tasks }
    }

    async fn wait_for_writes(&self, count: usize) {
        let acknowledged = self.acknowledged.clone();
        let total = move || acknowledged.lock().unwrap().values().sum::<u64>() as usize;
        let target = total() + count;
        eventually(&format!("{count} more acknowledged writes"), WAIT, || {
            let total = total();
            async move { (total >= target).then_some(()) }
        })
        .await;
    }

    async fn stop(self) -> (BTreeMap<String, u64>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("a writer panicked");
        }
        let acknowledged = self.acknowledged.lock().unwrap().clone();
        let unknown = *self.unknown.lock().unwrap();
        (acknowledged, unknown)
    }
}

/// Every member holds each key's last acknowledged value or a later one (a write whose
/// answer was lost), and all members hold the same.
async fn check_writes_survived(cluster: &Cluster, members: &[u64], acknowledged: &BTreeMap<String, u64>) {
    cluster.wait_for_applied(0).await;
    for (key, value) in acknowledged {
        let mut held = Vec::new();
        for id in members {
            let stored = cluster.stale_get(*id, key).await.map(|bytes| String::from_utf8(bytes).unwrap().parse::<u64>().unwrap());
            held.push(stored);
        }
        assert!(held.windows(2).all(|pair| pair[0] == pair[1]), "members {members:?} disagree on {key}: {held:?}");
        assert!(held[0].is_some_and(|stored| stored >= *value), "{key}: acknowledged {value}, members hold {held:?}");
    }
}

async fn voters(cluster: &Cluster) -> Vec<u64> {
    let members = cluster.change_membership(Method::GET, "/v1/members", None).await;
    let mut voters: Vec<u64> = members["members"].as_array().unwrap().iter().filter(|member| member["role"] == "voter").map(|member| member["id"].as_u64().unwrap()).collect();
    voters.sort();
    voters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_and_shrink_back_to_three_under_writes() {
    let mut cluster = Cluster::start(3, STABLE).await;
    let leader = cluster.wait_for_leader().await;
    // The founders only: once two are removed, the third forwards to the leader.
    let endpoints: Vec<String> = cluster.ids().iter().map(|id| cluster.addr(*id)).collect();
    let writers = Writers::start(endpoints);
    writers.wait_for_writes(50).await;
    cluster.add_node(4).await;
    cluster.add_node(5).await;
    assert_eq!(voters(&cluster).await, vec![1, 2, 3, 4, 5]);
    writers.wait_for_writes(50).await;
    // Shrink: the leader first (it steps down once C_new commits, thesis §4.2.2), then another.
    let second = if leader == 1 { 2 } else { 1 };
    for removed in [leader, second] {
        cluster.remove_member(removed).await;
        writers.wait_for_writes(30).await;
    }
    let remaining: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != leader && *id != second).collect();
    assert_eq!(voters(&cluster).await, remaining);
    eventually("the removed nodes know they were removed", WAIT, || async {
        let mut all = true;
        for id in [leader, second] {
            all &= cluster.status(id).await["removed"] == true;
        }
        all.then_some(())
    })
    .await;
    // Writes in flight at a removed leader when it steps down may have an unknown outcome
    // (they may still commit under the next leader); acknowledged ones must all survive.
    let (acknowledged, _) = writers.stop().await;
    for id in [leader, second] {
        cluster.terminate_node(id);
    }
    check_writes_survived(&cluster, &remaining, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_replaced_and_the_leader_moves_without_losing_writes() {
    let mut cluster = Cluster::start(3, STABLE).await;
    let leader = cluster.wait_for_leader().await;
    let dead = *cluster.ids().iter().find(|id| **id != leader).unwrap();
    let endpoints: Vec<String> = cluster.ids().iter().map(|id| cluster.addr(*id)).collect();
    let writers = Writers::start(endpoints);
    writers.wait_for_writes(50).await;
    cluster.kill_node(dead); // For good.
    cluster.add_node(4).await;
    cluster.remove_member(dead).await;
    let members: Vec<u64> = cluster.running();
    assert_eq!(voters(&cluster).await, members);
    writers.wait_for_writes(30).await;
    let unknown_before = *writers.unknown.lock().unwrap(); // Writes caught by the SIGKILL.

    // Transfer by API: the new node takes over.
    let answer = cluster.change_membership(Method::POST, "/v1/leader/transfer", Some(serde_json::json!({ "to": 4 }))).await;
    assert_eq!(answer["leader_id"], 4, "{answer}");
    writers.wait_for_writes(30).await;

    // SIGTERM on the leader hands over first (a rolling restart costs no election timeout).
    assert_eq!(cluster.terminate_node(4), Some(0));
    assert!(cluster.log(4).contains("handing leadership to node"), "node 4 stopped without handing over:\n{}", cluster.log(4));
    writers.wait_for_writes(30).await;
    cluster.start_node(4);
    writers.wait_for_writes(30).await;
    let (acknowledged, unknown) = writers.stop().await;
    assert_eq!(unknown, unknown_before, "a write failed with an unknown outcome during a transfer");
    check_writes_survived(&cluster, &members, &acknowledged).await;
}
