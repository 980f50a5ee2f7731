//! `RaftNode`s over the in-memory transport, on paused tokio time: every timeout fires
//! exactly when the simulated clock says, so these tests are deterministic and instant.

use keel_core::{LogIndex, NodeId, Role, Term};
use keel_kv::{Command, KvStore};
use keel_node::{Consistency, FileStorage, FileStorageConfig, MemoryNetwork, MemoryStorage, NodeConfig, NodeError, RaftHandle, RaftNode, Storage};
use std::time::Duration;

const MEMBERS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

fn config(id: NodeId, snapshot_threshold_entries: u64) -> NodeConfig {
    let mut config = NodeConfig::new(id, MEMBERS.to_vec());
    config.random_seed = Some(42);
    config.storage_on_thread = false;
    config.snapshot_threshold_entries = snapshot_threshold_entries;
    config
}

struct Cluster {
    network: MemoryNetwork,
    handles: Vec<Option<RaftHandle<KvStore>>>,
    threshold: u64,
}

impl Cluster {
    fn new(threshold: u64) -> Cluster {
        let mut cluster = Cluster { network: MemoryNetwork::new(), handles: vec![None, None, None], threshold };
        for id in MEMBERS {
            cluster.start(id, MemoryStorage::new());
        }
        cluster
    }

    fn start<S: Storage + Send + 'static>(&mut self, id: NodeId, storage: S) {
        let node = RaftNode::start(config(id, self.threshold), storage, KvStore::new(), self.network.transport(id)).expect("node starts");
        self.network.register(id, node.inbox.clone());
        self.handles[id.0 as usize - 1] = Some(node.handle);
    }

    fn stop(&mut self, id: NodeId) {
        if let Some(handle) = self.handles[id.0 as usize - 1].take() {
            handle.shutdown();
        }
    }

    fn handle(&self, id: NodeId) -> &RaftHandle<KvStore> {
        self.handles[id.0 as usize - 1].as_ref().expect("node is running")
    }

    fn leaders(&self) -> Vec<(NodeId, Term)> {
        self.handles.iter().flatten().map(|handle| handle.status().raft).filter(|status| status.role == Role::Leader).map(|status| (status.id, status.term)).collect()
    }

    /// Lets simulated time pass until exactly one leader (among `among`) exists.
    async fn wait_for_leader(&self, among: &[NodeId]) -> NodeId {
        for _ in 0..1_000 {
            let leaders: Vec<NodeId> = self.leaders().into_iter().map(|(id, _)| id).filter(|id| among.contains(id)).collect();
            if leaders.len() == 1 {
                return leaders[0];
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no single leader after 10 simulated seconds: {:?}", self.leaders());
    }

    async fn wait_for_applied(&self, id: NodeId, index: LogIndex) {
        for _ in 0..3_000 {
            if self.handle(id).status().raft.applied_index >= index {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("node {id} never applied {index}: {:?}", self.handle(id).status());
    }
}

fn set(key: &str, value: &str) -> Vec<u8> {
    Command::Set { key: key.into(), value: value.as_bytes().to_vec() }.encode().unwrap()
}

async fn value_at(handle: &RaftHandle<KvStore>, key: &'static str) -> Option<Vec<u8>> {
    handle.read(Consistency::Stale, move |kv| kv.get(key).map(<[u8]>::to_vec)).await.unwrap().1
}

// §5.2: with no leader, an election timeout fires and one node wins.
#[tokio::test(start_paused = true)]
async fn election_timeout_fires_and_one_leader_wins() {
    let cluster = Cluster::new(0);
    let start = tokio::time::Instant::now();
    let leader = cluster.wait_for_leader(&MEMBERS).await;
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(300), "no election before the minimum timeout ({waited:?})");
    assert_eq!(cluster.leaders().len(), 1, "Election Safety");
    assert!(MEMBERS.contains(&leader));
}

// §5.2: heartbeats keep followers from starting elections.
#[tokio::test(start_paused = true)]
async fn heartbeats_keep_the_leader_in_place() {
    let cluster = Cluster::new(0);
    let leader = cluster.wait_for_leader(&MEMBERS).await;
    let term = cluster.handle(leader).status().raft.term;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(cluster.leaders(), vec![(leader, term)], "same leader, same term after 30 s of heartbeats");
}

// §5.1 + CheckQuorum: an isolated leader steps down; on return it sees the higher term.
#[tokio::test(start_paused = true)]
async fn isolated_leader_steps_down_and_rejoins_as_follower() {
    let cluster = Cluster::new(0);
    let old_leader = cluster.wait_for_leader(&MEMBERS).await;
    let old_term = cluster.handle(old_leader).status().raft.term;
    cluster.network.isolate(old_leader);
    let others: Vec<NodeId> = MEMBERS.into_iter().filter(|id| *id != old_leader).collect();
    let new_leader = cluster.wait_for_leader(&others).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_ne!(cluster.handle(old_leader).status().raft.role, Role::Leader, "CheckQuorum made the isolated leader step down");
    cluster.network.heal();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = cluster.handle(old_leader).status().raft;
    assert_eq!(status.role, Role::Follower);
    assert!(status.term > old_term);
    assert_eq!(status.leader_id, Some(new_leader));
}

// §5.2 failover, the bound README's tour promises (issue 4: a read answers again within 3 s
// of killing the leader): followers notice the silence within an election timeout, one
// wins, commits its no-op (§8) and confirms a ReadIndex. Simulated time, so the bound is
// the protocol's, not the test machine's.
#[tokio::test(start_paused = true)]
async fn a_crashed_leader_is_replaced_and_linearizable_reads_resume_within_3_s() {
    let mut cluster = Cluster::new(0);
    let old_leader = cluster.wait_for_leader(&MEMBERS).await;
    let (index, _) = cluster.handle(old_leader).propose(set("a", "1")).await.unwrap();
    let survivors: Vec<NodeId> = MEMBERS.into_iter().filter(|id| *id != old_leader).collect();
    for id in &survivors {
        cluster.wait_for_applied(*id, index).await;
    }
    cluster.stop(old_leader);
    let crashed_at = tokio::time::Instant::now();
    let read_back = loop {
        let mut answered = None;
        for id in &survivors {
            if let Ok((_, value)) = cluster.handle(*id).read(Consistency::Linearizable, |kv| kv.get("a").map(<[u8]>::to_vec)).await {
                answered = Some(value);
                break;
            }
        }
        if let Some(value) = answered {
            break value;
        }
        assert!(crashed_at.elapsed() < Duration::from_secs(3), "no linearizable read 3 simulated seconds after the leader crashed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let waited = crashed_at.elapsed();
    assert!(waited < Duration::from_secs(3), "reads resumed only after {waited:?}");
    assert!(waited >= Duration::from_millis(300), "no follower may take over before an election timeout ({waited:?})");
    assert_eq!(read_back.as_deref(), Some(&b"1"[..]), "the new leader has the committed write (§5.4 Leader Completeness)");
    eprintln!("reads resumed {waited:?} (simulated) after the leader crashed");
}

// Proposals on a follower fail fast with the leader hint; on the leader they apply.
#[tokio::test(start_paused = true)]
async fn proposals_apply_on_the_leader_and_redirect_on_followers() {
    let cluster = Cluster::new(0);
    let leader = cluster.wait_for_leader(&MEMBERS).await;
    let follower = MEMBERS.into_iter().find(|id| *id != leader).unwrap();
    let refused = cluster.handle(follower).propose(set("k", "v")).await;
    assert_eq!(refused.unwrap_err(), NodeError::NotLeader { leader_hint: Some(leader) });
    let (index, _) = cluster.handle(leader).propose(set("k", "v with spaces")).await.unwrap();
    let (read_index, value) = cluster.handle(leader).read(Consistency::Linearizable, |kv| kv.get("k").map(<[u8]>::to_vec)).await.unwrap();
    assert!(read_index >= index);
    assert_eq!(value.as_deref(), Some(&b"v with spaces"[..]));
}

// A follower that missed everything catches up through heartbeats/AppendEntries.
#[tokio::test(start_paused = true)]
async fn follower_catches_up_from_empty() {
    let cluster = Cluster::new(0);
    let leader = cluster.wait_for_leader(&MEMBERS).await;
    let lagging = MEMBERS.into_iter().find(|id| *id != leader).unwrap();
    cluster.network.isolate(lagging);
    let mut last = LogIndex(0);
    for n in 0..200 {
        last = cluster.handle(leader).propose(set(&format!("key{n}"), "x")).await.unwrap().0;
    }
    cluster.network.heal();
    cluster.wait_for_applied(lagging, last).await;
    assert_eq!(value_at(cluster.handle(lagging), "key199").await.as_deref(), Some(&b"x"[..]));
}

// §7: a follower behind the leader's snapshot is brought up with InstallSnapshot.
#[tokio::test(start_paused = true)]
async fn follower_catches_up_via_snapshot() {
    let cluster = Cluster::new(50);
    let leader = cluster.wait_for_leader(&MEMBERS).await;
    let lagging = MEMBERS.into_iter().find(|id| *id != leader).unwrap();
    cluster.network.isolate(lagging);
    let mut last = LogIndex(0);
    for n in 0..300 {
        last = cluster.handle(leader).propose(set(&format!("key{n}"), &n.to_string())).await.unwrap().0;
    }
    assert!(cluster.handle(leader).status().raft.snapshot_index > LogIndex(200), "the leader compacted its log");
    cluster.network.heal();
    cluster.wait_for_applied(lagging, last).await;
    let status = cluster.handle(lagging).status().raft;
    assert!(status.snapshot_index > LogIndex(0), "caught up through a snapshot: {status:?}");
    assert_eq!(value_at(cluster.handle(lagging), "key7").await.as_deref(), Some(&b"7"[..]));
}

// Restart restores term, vote, log and state machine from the data directory.
#[tokio::test(start_paused = true)]
async fn restart_restores_term_vote_log_and_state() {
    let directories: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let open = |n: usize| FileStorage::open(directories[n].path(), FileStorageConfig::default()).unwrap();
    let mut cluster = Cluster { network: MemoryNetwork::new(), handles: vec![None, None, None], threshold: 30 };
    for (n, id) in MEMBERS.into_iter().enumerate() {
        cluster.start(id, open(n));
    }
    let leader = cluster.wait_for_leader(&MEMBERS).await;
    let mut last = LogIndex(0);
    for n in 0..100 {
        last = cluster.handle(leader).propose(set(&format!("key{n}"), "v")).await.unwrap().0;
    }
    for id in MEMBERS {
        cluster.wait_for_applied(id, last).await;
    }
    let before: Vec<_> = MEMBERS.iter().map(|id| cluster.handle(*id).status().raft).collect();
    for id in MEMBERS {
        cluster.stop(id);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (n, id) in MEMBERS.into_iter().enumerate() {
        cluster.start(id, open(n));
        let status = cluster.handle(id).status().raft;
        assert_eq!(status.term, before[n].term, "term survives restart");
        assert_eq!(status.voted_for, before[n].voted_for, "vote survives restart");
        assert!(status.last_log_index >= last, "log survives restart");
    }
    let leader = cluster.wait_for_leader(&MEMBERS).await;
    cluster.wait_for_applied(leader, last).await;
    assert_eq!(value_at(cluster.handle(leader), "key99").await.as_deref(), Some(&b"v"[..]));
}

// A leader that loses leadership answers its pending proposals at once: the outcome is
// unknown (the next leader may still commit them), and the client is not left waiting.
#[tokio::test(start_paused = true)]
async fn pending_proposals_fail_fast_when_leadership_is_lost() {
    let cluster = Cluster::new(0);
    let leader = cluster.wait_for_leader(&MEMBERS).await;
    cluster.network.isolate(leader);
    let handle = cluster.handle(leader).clone();
    let started = tokio::time::Instant::now();
    let result = handle.propose(set("k", "v")).await;
    assert_eq!(result.unwrap_err(), NodeError::OutcomeUnknown);
    assert_eq!(result_outcome(NodeError::OutcomeUnknown), keel_node::Outcome::Unknown);
    assert!(started.elapsed() < Duration::from_secs(2), "answered once CheckQuorum deposed the leader, not at a client timeout");
}

fn result_outcome(error: NodeError) -> keel_node::Outcome {
    error.outcome()
}

// A node that cannot persist stops rather than acknowledge a write it may lose.
#[tokio::test(start_paused = true)]
async fn a_node_whose_disk_fails_stops_instead_of_answering() {
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut cluster = Cluster { network: MemoryNetwork::new(), handles: vec![None, None, None], threshold: 0 };
    for id in MEMBERS {
        cluster.start(id, TestStorage { fail: fail.clone(), ..TestStorage::default() });
    }
    let leader = cluster.wait_for_leader(&MEMBERS).await;
    cluster.handle(leader).propose(set("before", "ok")).await.expect("the disk still works");
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let result = cluster.handle(leader).propose(set("after", "lost")).await;
    assert_eq!(result.unwrap_err(), NodeError::Stopped, "never acknowledged");
    let status = cluster.handle(leader).status();
    let reason = status.stopped.expect("the node reports that it stopped");
    assert!(reason.contains("storage failed") && reason.contains("simulated disk failure"), "{reason}");
    assert_eq!(cluster.handle(leader).propose(set("later", "x")).await.unwrap_err(), NodeError::Stopped);
}

/// What a node's storage was asked to do, and what acknowledgements it sent, in order and
/// when (tokio time).
#[derive(Clone, Copy, Debug, PartialEq)]
enum DiskOp {
    /// `on_storage_thread`: run by the storage thread rather than the driver task.
    Append { last_index: LogIndex, last_term: Term, on_storage_thread: bool },
    Sync,
    Acknowledge { match_index: LogIndex },
}

type DiskOps = std::sync::Arc<std::sync::Mutex<Vec<(tokio::time::Instant, DiskOp)>>>;

/// Memory storage that records appends and syncs, and whose `sync` starts failing once
/// `fail` is set, like a disk that went bad.
#[derive(Default)]
struct TestStorage {
    inner: MemoryStorage,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ops: DiskOps,
}

impl TestStorage {
    fn record(&self, op: DiskOp) {
        self.ops.lock().unwrap().push((tokio::time::Instant::now(), op));
    }
}

impl Storage for TestStorage {
    fn initial_state(&self) -> Result<keel_core::RestoredState, keel_node::StorageError> {
        self.inner.initial_state()
    }
    fn append(&mut self, entries: &[keel_core::Entry]) -> Result<(), keel_node::StorageError> {
        if let Some(last) = entries.last() {
            let on_storage_thread = std::thread::current().name().is_some_and(|name| name.starts_with("keel-storage"));
            self.record(DiskOp::Append { last_index: last.index, last_term: last.term, on_storage_thread });
        }
        self.inner.append(entries)
    }
    fn set_hard_state(&mut self, hard_state: &keel_core::HardState) -> Result<(), keel_node::StorageError> {
        self.inner.set_hard_state(hard_state)
    }
    fn install_snapshot(&mut self, snapshot: &keel_core::Snapshot) -> Result<(), keel_node::StorageError> {
        self.inner.install_snapshot(snapshot)
    }
    fn compact(&mut self, snapshot: &keel_core::Snapshot) -> Result<(), keel_node::StorageError> {
        self.inner.compact(snapshot)
    }
    fn write_snapshot_chunk(&mut self, chunk: &keel_core::ReceivedChunk) -> Result<(), keel_node::StorageError> {
        self.inner.write_snapshot_chunk(chunk)
    }
    fn snapshot_image(&self) -> Option<std::sync::Arc<dyn keel_node::StoredImage>> {
        self.inner.snapshot_image()
    }
    fn snapshot_writer(&self) -> keel_node::SnapshotWriter {
        self.inner.snapshot_writer()
    }
    fn sync(&mut self) -> Result<(), keel_node::StorageError> {
        self.record(DiskOp::Sync);
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            let source = std::io::Error::other("simulated disk failure");
            return Err(keel_node::StorageError::Io { operation: "fsync", path: "/simulated".into(), source });
        }
        self.inner.sync()
    }
}

/// A cluster whose nodes' storage records what it is asked to do, and those records (one
/// per node, in `MEMBERS` order).
fn recording_cluster() -> (Cluster, Vec<DiskOps>) {
    let mut cluster = Cluster { network: MemoryNetwork::new(), handles: vec![None, None, None], threshold: 0 };
    let mut ops = Vec::new();
    for id in MEMBERS {
        let recorded = DiskOps::default();
        ops.push(recorded.clone());
        cluster.start(id, TestStorage { ops: recorded, ..TestStorage::default() });
    }
    (cluster, ops)
}

// `Ready::may_defer_sync`: while both followers keep up, the leader appends without syncing
// and syncs at most a tick later; followers sync every append before acknowledging it.
#[tokio::test(start_paused = true)]
async fn the_leader_defers_its_sync_by_at_most_a_tick_and_followers_never_do() {
    let (cluster, ops) = recording_cluster();
    let leader = cluster.wait_for_leader(&MEMBERS).await;
    for round in 0..30 {
        cluster.handle(leader).propose(set("k", &round.to_string())).await.expect("committed");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    let tick = Duration::from_millis(config(leader, 0).tick_ms);
    let mut deferred = 0;
    for id in MEMBERS {
        let ops = ops[id.0 as usize - 1].lock().unwrap().clone();
        for (position, (at, op)) in ops.iter().enumerate() {
            if !matches!(op, DiskOp::Append { .. }) {
                continue;
            }
            let next_sync = ops[position + 1..].iter().find(|(_, op)| *op == DiskOp::Sync).map(|(synced_at, _)| *synced_at - *at);
            let next_sync = next_sync.unwrap_or_else(|| panic!("node {id}: an append never synced: {ops:?}"));
            if id == leader {
                assert!(next_sync <= tick, "node {id} (leader) synced {next_sync:?} after an append");
                deferred += usize::from(ops.get(position + 1).is_some_and(|(_, op)| matches!(op, DiskOp::Append { .. })));
            } else {
                assert_eq!(ops.get(position + 1).map(|(_, op)| *op), Some(DiskOp::Sync), "node {id} (follower): sync right after each append");
            }
        }
    }
    assert!(deferred > 0, "the leader never appended twice without a sync in between");
}

/// Records each successful AppendEntriesResponse into its sender's `DiskOps` as it is sent.
struct RecordingTransport {
    inner: keel_node::MemoryTransport,
    ops: DiskOps,
}

impl keel_node::Transport for RecordingTransport {
    fn send(&self, message: keel_core::Message) {
        if let keel_core::MessageBody::AppendEntriesResponse { result: keel_core::AppendResult::Success { match_index }, .. } = message.body {
            self.ops.lock().unwrap().push((tokio::time::Instant::now(), DiskOp::Acknowledge { match_index }));
        }
        self.inner.send(message);
    }
}

/// Figure 2, "respond to RPCs only after updating stable storage": a follower's
/// acknowledgement of index i leaves only after a sync that followed the append of i.
/// Checked for both storage runners: everything inline on the driver (paused time), and
/// the production one, where a storage thread takes the leader's synced writes.
async fn followers_acknowledge_only_synced_entries(storage_on_thread: bool) {
    let network = MemoryNetwork::new();
    let mut handles = Vec::new();
    let mut ops = Vec::new();
    for id in MEMBERS {
        let recorded = DiskOps::default();
        ops.push(recorded.clone());
        let mut config = config(id, 0);
        config.storage_on_thread = storage_on_thread;
        let transport = RecordingTransport { inner: network.transport(id), ops: recorded.clone() };
        let node = RaftNode::start(config, TestStorage { ops: recorded, ..TestStorage::default() }, KvStore::new(), transport).expect("node starts");
        network.register(id, node.inbox.clone());
        handles.push(node.handle);
    }
    let deadline = Duration::from_secs(10);
    let mut status = handles[0].watch_status();
    let found = tokio::time::timeout(deadline, status.wait_for(|status| status.raft.leader_id.is_some())).await;
    let leader = found.expect("a leader within the deadline").expect("node runs").raft.leader_id.unwrap();
    let term = handles[leader.0 as usize - 1].status().raft.term;
    let mut last = LogIndex(0);
    for round in 0..40 {
        let proposal = handles[leader.0 as usize - 1].propose(set("k", &round.to_string()));
        last = tokio::time::timeout(deadline, proposal).await.expect("commits within the deadline").expect("committed").0;
    }
    for handle in &handles {
        let mut status = handle.watch_status();
        tokio::time::timeout(deadline, status.wait_for(|status| status.raft.commit_index >= last)).await.expect("every node learns the commit").expect("node runs");
        handle.shutdown();
    }

    // A follower's last acknowledgement may still be on its way at shutdown; the commit
    // needed at least one follower's.
    let mut acknowledged_max = Vec::new();
    for id in MEMBERS.into_iter().filter(|id| *id != leader) {
        let ops = ops[id.0 as usize - 1].lock().unwrap().clone();
        let mut acknowledged = 0;
        for (position, (_, op)) in ops.iter().enumerate() {
            let DiskOp::Acknowledge { match_index } = *op else { continue };
            let Some(appended) = ops[..position].iter().position(|(_, op)| matches!(op, DiskOp::Append { last_index, .. } if *last_index >= match_index)) else {
                assert_eq!(match_index, LogIndex(0), "node {id} acknowledged {match_index}, never appended: {ops:?}");
                continue;
            };
            let synced = ops[appended..position].iter().any(|(_, op)| *op == DiskOp::Sync);
            assert!(synced, "node {id} acknowledged {match_index} before syncing it: {ops:?}");
            acknowledged = acknowledged.max(match_index.0);
        }
        assert!(acknowledged > 0, "node {id} acknowledged nothing: {ops:?}");
        // A follower's write holds up nothing its driver could do meanwhile: it runs there.
        // (Only this term's entries: once the leader shuts down, a node may win the next.)
        let on_thread = ops.iter().any(|(_, op)| matches!(op, DiskOp::Append { last_term, on_storage_thread: true, .. } if *last_term == term));
        assert!(!on_thread, "node {id} (follower in term {term}) wrote on the storage thread: {ops:?}");
        acknowledged_max.push(acknowledged);
    }
    assert!(acknowledged_max.iter().any(|acknowledged| *acknowledged >= last.0), "acknowledged {acknowledged_max:?} of {last}");
}

#[tokio::test(start_paused = true)]
async fn followers_acknowledge_only_synced_entries_with_every_job_inline() {
    followers_acknowledge_only_synced_entries(false).await;
}

// Real threads, so real time; every wait has a deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_acknowledge_only_synced_entries_with_a_storage_thread() {
    followers_acknowledge_only_synced_entries(true).await;
}

/// Group commit at the proposal (`Driver::run`): while proposals are in flight, the driver
/// yields once after taking a request, so client tasks woken alongside the first one queue
/// theirs in the same turn and one Ready (one append, one AppendEntries) carries them all.
/// Without the yield, tokio runs the driver right after the first client's send (the waker
/// goes to the worker's LIFO slot), and each of the clients gets an append of its own
/// (10 of 10, every run, when the yield is taken out).
/// One worker thread makes that order the same every run; real time (tokio's paused clock
/// needs the current-thread runtime, which has no LIFO slot), so every wait has a deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn proposals_woken_together_share_one_append() {
    const CLIENTS: usize = 10;
    let deadline = Duration::from_secs(10);
    let (cluster, ops) = recording_cluster();
    let mut status = cluster.handle(NodeId(1)).watch_status();
    let found = tokio::time::timeout(deadline, status.wait_for(|status| status.raft.leader_id.is_some())).await;
    let leader = found.expect("a leader within the deadline").expect("node runs").raft.leader_id.unwrap();
    let handle = cluster.handle(leader).clone();
    tokio::time::timeout(deadline, handle.propose(set("warm-up", "1"))).await.expect("commits").expect("committed");

    // A proposal in flight: the leader is cut off (for a few milliseconds, far less than
    // an election timeout), so nothing commits until the network heals.
    cluster.network.isolate(leader);
    let in_flight = tokio::spawn({
        let handle = handle.clone();
        async move { handle.propose(set("in-flight", "1")).await }
    });
    let leader_ops = ops[leader.0 as usize - 1].clone();
    let appended = |ops: &DiskOps| {
        let ops = ops.lock().unwrap();
        let appends = ops.iter().filter_map(|(_, op)| match op {
            DiskOp::Append { last_index, .. } => Some(*last_index),
            _ => None,
        });
        appends.fold((0, LogIndex(0)), |(count, _), last_index| (count + 1, last_index))
    };
    let before = appended(&leader_ops);
    let wait_until = |target: LogIndex| {
        let leader_ops = leader_ops.clone();
        tokio::time::timeout(deadline, async move {
            while appended(&leader_ops).1 < target {
                tokio::task::yield_now().await;
            }
        })
    };
    if wait_until(LogIndex(before.1 .0 + 1)).await.is_err() {
        // Real time on a loaded machine: say what the leader was doing, not just "timed out".
        let raft = handle.status().raft;
        let proposal = if in_flight.is_finished() { format!("{:?}", in_flight.await) } else { "still waiting".to_string() };
        panic!("the in-flight proposal did not reach node {leader}'s log within {deadline:?}: it is {:?} in term {} (leader {:?}, last index {}); the proposal: {proposal}", raft.role, raft.term, raft.leader_id, raft.last_log_index);
    }

    // The clients wait for one signal; a `Notified` receives `notify_waiters` from the
    // moment it is created, so none misses it.
    let start = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let handle = handle.clone();
        let started = start.clone().notified_owned();
        clients.spawn(async move {
            started.await;
            handle.propose(set(&format!("client-{client}"), "1")).await
        });
    }
    let before = appended(&leader_ops);
    // From a task on the worker, as the I/O driver wakes client tasks in the server: the
    // woken clients then wait in the worker's own queue, where the driver's yield lets them
    // run before its next turn.
    tokio::spawn(async move { start.notify_waiters() });
    wait_until(LogIndex(before.1 .0 + CLIENTS as u64)).await.expect("every client's proposal reaches the leader's log");
    let client_appends = appended(&leader_ops).0 - before.0;
    cluster.network.heal();
    let results = tokio::time::timeout(deadline, clients.join_all()).await.expect("every client's proposal commits");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    in_flight.await.unwrap().expect("committed");
    assert!(client_appends <= 2, "{CLIENTS} proposals woken together took {client_appends} appends on the leader");
}

/// A peer message no correct peer would send is refused, counted in the node's status, and
/// changes nothing: the cluster keeps its leader and its log.
#[tokio::test(start_paused = true)]
async fn an_invalid_peer_message_is_counted_and_dropped() {
    use keel_core::{Entry, EntryKind, Message, MessageBody};
    use keel_node::Transport;
    let cluster = Cluster::new(0);
    let leader = cluster.wait_for_leader(&MEMBERS).await;
    let follower = MEMBERS.into_iter().find(|id| *id != leader).unwrap();
    let before = cluster.handle(follower).status().raft;
    // Entries that do not follow prev_log_index, from the leader's own id and term.
    let entries = vec![Entry { term: before.term, index: LogIndex(before.last_log_index.0 + 5), kind: EntryKind::Noop }];
    let body = MessageBody::AppendEntries { prev_log_index: before.last_log_index, prev_log_term: before.last_log_term, entries, leader_commit: before.commit_index, read_round: 0 };
    cluster.network.transport(leader).send(Message { from: leader, to: follower, term: before.term, body });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = cluster.handle(follower).status();
    assert_eq!(after.peer_messages_refused, 1);
    assert_eq!((after.raft.term, after.raft.last_log_index, after.raft.leader_id), (before.term, before.last_log_index, Some(leader)));
    assert_eq!(cluster.leaders(), vec![(leader, before.term)]);
}

/// The checks on peer messages refuse nothing a correct peer sends: a cluster that writes
/// steadily, deferring the leader's sync or not, counts no refusal on any node.
#[tokio::test(start_paused = true)]
async fn a_healthy_cluster_refuses_no_peer_message() {
    for defer_leader_sync in [true, false] {
        let network = MemoryNetwork::new();
        let mut handles = Vec::new();
        for id in MEMBERS {
            let mut node_config = config(id, 50);
            node_config.defer_leader_sync = defer_leader_sync;
            let node = RaftNode::start(node_config, MemoryStorage::new(), KvStore::new(), network.transport(id)).expect("node starts");
            network.register(id, node.inbox.clone());
            handles.push(node.handle);
        }
        let leader = loop {
            if let Some(handle) = handles.iter().find(|handle| handle.status().raft.role == Role::Leader) {
                break handle.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let writes: Vec<_> = (0..200).map(|n| leader.propose(set(&format!("k{}", n % 7), "v"))).collect();
        for write in futures_lite(writes).await {
            write.expect("committed");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        for handle in &handles {
            assert_eq!(handle.status().peer_messages_refused, 0, "node {} (defer_leader_sync {defer_leader_sync})", handle.id());
            handle.shutdown();
        }
    }
}

/// Awaits every future, in order.
async fn futures_lite<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut outputs = Vec::new();
    for future in futures {
        outputs.push(future.await);
    }
    outputs
}

/// The events a follower reports when its leader crashes: an election with the rule behind
/// each vote, and the new leader; and the counters `/metrics` reads follow them.
#[tokio::test(start_paused = true)]
async fn a_leader_change_is_told_as_events_and_counted() {
    use keel_node::{DriverEvent, NodeEvent};
    let mut cluster = Cluster::new(0);
    let old_leader = cluster.wait_for_leader(&MEMBERS).await;
    let survivors: Vec<NodeId> = MEMBERS.into_iter().filter(|id| *id != old_leader).collect();
    let mut events: Vec<_> = survivors.iter().map(|id| cluster.handle(*id).events()).collect();
    let before: Vec<_> = survivors.iter().map(|id| cluster.handle(*id).status().counters).collect();
    cluster.stop(old_leader);
    let new_leader = cluster.wait_for_leader(&survivors).await;
    let mut seen = Vec::new();
    for receiver in &mut events {
        while let Ok(event) = receiver.try_recv() {
            seen.push(event);
        }
    }
    let became_leader = |event: &NodeEvent| matches!(event, NodeEvent::Node(DriverEvent::RoleChanged { role: "leader", .. }));
    assert_eq!(seen.iter().filter(|event| became_leader(event)).count(), 1, "one new leader: {seen:?}");
    assert!(seen.iter().any(|event| matches!(event, NodeEvent::Raft(keel_core::Event::ElectionStarted { pre_vote: false, .. }))), "{seen:?}");
    let vote = seen.iter().find_map(|event| match event {
        NodeEvent::Raft(keel_core::Event::Vote { candidate, granted: true, pre_vote: false, reason, .. }) => Some((*candidate, *reason)),
        _ => None,
    });
    assert_eq!(vote, Some((new_leader, keel_core::VoteReason::Granted)), "the other survivor voted for the new leader: {seen:?}");
    let winner = survivors.iter().position(|id| *id == new_leader).unwrap();
    let after = cluster.handle(new_leader).status().counters;
    assert_eq!(after.elections_won, before[winner].elections_won + 1);
    assert!(after.elections_started > before[winner].elections_started && after.pre_votes_started > before[winner].pre_votes_started);
    let voter = survivors.iter().find(|id| **id != new_leader).unwrap();
    assert!(cluster.handle(*voter).status().counters.votes_granted >= 2, "a pre-vote and a vote");
}
