//! In-process replication benchmark: 3 `RaftNode`s over the in-memory transport with
//! in-memory storage and a state machine that does nothing, loaded by 1, 64 and 256
//! concurrent clients. It measures the consensus path alone: the driver, the core,
//! batching and pipelining — no network, no disk.
//!
//!     cargo run --release -p keel-node --example bench_core [-- SECONDS_PER_ROW]

use keel_core::{Entry, LogIndex, NodeId, Role, StateMachine};
use keel_node::{MemoryNetwork, MemoryStorage, NodeConfig, RaftHandle, RaftNode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts entries and nothing else.
#[derive(Default)]
struct NoopMachine {
    applied: LogIndex,
}

impl StateMachine for NoopMachine {
    type Output = ();

    fn apply(&mut self, entry: &Entry) {
        self.applied = entry.index;
    }

    fn applied_index(&self) -> LogIndex {
        self.applied
    }

    fn write_snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.applied.0.to_le_bytes())
    }

    fn snapshot_job(&self) -> keel_core::SnapshotWrite {
        let applied = self.applied;
        Box::new(move |out| out.write_all(&applied.0.to_le_bytes()))
    }

    fn restore(&mut self, image: &mut dyn std::io::Read) -> Result<(), String> {
        let mut bytes = [0u8; 8];
        image.read_exact(&mut bytes).map_err(|_| "snapshot must be 8 bytes".to_string())?;
        self.applied = LogIndex(u64::from_le_bytes(bytes));
        Ok(())
    }
}

fn start_cluster() -> Vec<RaftHandle<NoopMachine>> {
    let members = vec![NodeId(1), NodeId(2), NodeId(3)];
    let network = MemoryNetwork::new();
    members
        .iter()
        .map(|id| {
            let mut config = NodeConfig::new(*id, members.clone());
            config.snapshot_threshold_entries = 100_000;
            // Memory "writes" take nanoseconds: a storage thread would only add a hop.
            config.storage_on_thread = false;
            // A memory sync is free: deferring it would only make commits wait for the
            // slower follower instead of counting the leader's copy at once.
            config.defer_leader_sync = false;
            let node = RaftNode::start(config, MemoryStorage::new(), NoopMachine::default(), network.transport(*id)).expect("start");
            network.register(*id, node.inbox.clone());
            node.handle
        })
        .collect()
}

async fn leader(handles: &[RaftHandle<NoopMachine>]) -> RaftHandle<NoopMachine> {
    loop {
        if let Some(handle) = handles.iter().find(|handle| handle.status().raft.role == Role::Leader) {
            return handle.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_row(leader: &RaftHandle<NoopMachine>, clients: usize, duration: Duration) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (leader, done, errors) = (leader.clone(), done.clone(), errors.clone());
            tokio::spawn(async move {
                let command = vec![0u8; 16];
                while Instant::now() < deadline {
                    match leader.propose(command.clone()).await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task");
    }
    let writes = done.load(Ordering::Relaxed) as f64;
    (writes / started.elapsed().as_secs_f64(), errors.load(Ordering::Relaxed))
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|arg| arg.parse().ok()).unwrap_or(5);
    let handles = start_cluster();
    let leader = leader(&handles).await;
    run_row(&leader, 16, Duration::from_secs(1)).await; // warm-up
    println!("| clients | writes/s | ns per write | errors |");
    println!("|---|---|---|---|");
    for clients in [1, 64, 256] {
        let (rate, errors) = run_row(&leader, clients, Duration::from_secs(seconds)).await;
        println!("| {clients} | {rate:.0} | {:.0} | {errors} |", 1e9 / rate);
    }
    for handle in &handles {
        handle.shutdown();
    }
}
