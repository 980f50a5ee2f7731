//! Regression test: a snapshot that takes long to build must not hold up the log.
//!
//! The bug: the image was built (and written) on the storage thread, in line with log writes.
//! With ~1M keys that took longer than an election timeout on every node at once; no write
//! completed, no acknowledgement left, and the leader lost its quorum (CheckQuorum) — three
//! to five leader changes per million-key load. Here the state machine's snapshot job blocks
//! until the test opens a gate: writes must keep committing while all three snapshots wait.
//!
//! Real threads (the storage thread is the point), so real time; every wait has a deadline.

use keel_core::{Entry, LogIndex, NodeId, Role, StateMachine};
use keel_kv::{Command, CommandResult, KvStore};
use keel_node::{MemoryNetwork, MemoryStorage, NodeConfig, RaftHandle, RaftNode};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

const MEMBERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
const THRESHOLD: u64 = 10;
const DEADLINE: Duration = Duration::from_secs(10);

/// Snapshot jobs wait here until `open`; `waiting` counts them.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

impl Gate {
    fn pass(&self) {
        let mut state = self.state.lock().unwrap();
        state.1 += 1;
        self.changed.notify_all();
        while !state.0 {
            state = self.changed.wait(state).unwrap();
        }
    }

    fn open(&self) {
        self.state.lock().unwrap().0 = true;
        self.changed.notify_all();
    }

    fn waiting(&self) -> usize {
        self.state.lock().unwrap().1
    }
}

/// `KvStore` whose snapshot jobs block on the gate.
struct GatedKv {
    inner: KvStore,
    gate: Arc<Gate>,
}

impl StateMachine for GatedKv {
    type Output = CommandResult;
    fn apply(&mut self, entry: &Entry) -> CommandResult {
        self.inner.apply(entry)
    }
    fn applied_index(&self) -> LogIndex {
        self.inner.applied_index()
    }
    fn write_snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.inner.write_snapshot(out)
    }
    fn snapshot_job(&self) -> keel_core::SnapshotWrite {
        let (job, gate) = (self.inner.snapshot_job(), self.gate.clone());
        Box::new(move |out| {
            gate.pass();
            job(out)
        })
    }
    fn restore(&mut self, image: &mut dyn std::io::Read) -> Result<(), String> {
        self.inner.restore(image)
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future).await.unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
}

async fn put(leader: &RaftHandle<GatedKv>, key: usize) {
    let command = Command::Set { key: format!("key-{key}"), value: b"v".to_vec() }.encode().unwrap();
    within(&format!("write {key}"), leader.propose(command)).await.expect("the write commits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_while_every_snapshot_is_still_being_built() {
    let gate = Arc::new(Gate::default());
    let network = MemoryNetwork::new();
    let mut handles = Vec::new();
    for id in MEMBERS {
        let mut config = NodeConfig::new(id, MEMBERS.to_vec());
        config.random_seed = Some(id.0);
        config.storage_on_thread = true;
        config.snapshot_threshold_entries = THRESHOLD;
        let machine = GatedKv { inner: KvStore::new(), gate: gate.clone() };
        let node = RaftNode::start(config, MemoryStorage::new(), machine, network.transport(id)).expect("node starts");
        network.register(id, node.inbox.clone());
        handles.push(node.handle);
    }
    let mut status = handles[0].watch_status();
    within("a leader", status.wait_for(|status| status.raft.leader_id.is_some())).await.expect("node runs");
    let leader_id = status.borrow().raft.leader_id.unwrap();
    let leader = handles[leader_id.0 as usize - 1].clone();
    // A follower may publish the new leader's id (from its first AppendEntries) before the
    // leader's own driver has published its role.
    within("the leader's own status", leader.watch_status().wait_for(|status| status.raft.role == Role::Leader)).await.expect("node runs");

    for key in 0..2 * THRESHOLD as usize {
        put(&leader, key).await;
    }
    for handle in &handles {
        let mut status = handle.watch_status();
        within("every node past the threshold", status.wait_for(|status| status.raft.applied_index.0 > THRESHOLD)).await.expect("node runs");
    }
    within("three snapshot jobs at the gate", async {
        while gate.waiting() < MEMBERS.len() {
            tokio::task::yield_now().await;
        }
    })
    .await;

    // Every node's snapshot is stuck in its build: the log must not be.
    let term = leader.status().raft.term;
    for key in 0..5 * THRESHOLD as usize {
        put(&leader, 100 + key).await;
    }
    assert_eq!(leader.status().raft.term, term, "no election while the snapshots were stuck");
    assert!(handles.iter().all(|handle| handle.status().raft.snapshot_index == LogIndex(0)), "no snapshot could finish");

    gate.open();
    for handle in &handles {
        let mut status = handle.watch_status();
        within("snapshots finish once the gate opens", status.wait_for(|status| status.raft.snapshot_index.0 > THRESHOLD)).await.expect("node runs");
    }
    for handle in &handles {
        handle.shutdown();
    }
}
