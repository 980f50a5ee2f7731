//! A node killed with SIGKILL in the middle of a write-heavy load keeps every write it
//! acknowledged. The test runs itself as a child process (the same test binary, selected by
//! an environment variable): the child is a single-node cluster on a FileStorage that
//! proposes as fast as it can and prints the index of every acknowledged write; the parent
//! kills it without warning, then recovers the data directory and checks each printed write.

use keel_core::{LogIndex, NodeId};
use keel_kv::{Command, KvStore};
use keel_node::{Consistency, FileStorage, FileStorageConfig, MemoryNetwork, NodeConfig, RaftNode};
use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

const CHILD_DIR_VARIABLE: &str = "KEEL_SIGKILL_CHILD_DIR";
const ACKNOWLEDGED_BEFORE_KILL: usize = 3_000;

fn single_node(dir: &std::path::Path) -> RaftNode<KvStore> {
    let mut config = NodeConfig::new(NodeId(1), vec![NodeId(1)]);
    config.snapshot_threshold_entries = 1_000; // Snapshots and compaction happen under load too.
    let storage = FileStorage::open(dir, FileStorageConfig::default()).expect("open storage");
    let network = MemoryNetwork::new();
    let node = RaftNode::start(config, storage, KvStore::new(), network.transport(NodeId(1))).expect("start");
    network.register(NodeId(1), node.inbox.clone());
    node
}

fn write(n: u64) -> Vec<u8> {
    Command::Set { key: format!("key-{n}"), value: n.to_string().into_bytes() }.encode().unwrap()
}

/// The child: writes forever from 32 concurrent clients, printing "ack <n> <index>". Not a
/// test of its own: ignored, and run only by the test below, which names it with
/// `--ignored --exact`. Run any other way it fails, rather than pass having checked nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child half of sigkill_during_writes_loses_no_acknowledged_write, which runs it"]
async fn child_writer() {
    let dir = std::env::var(CHILD_DIR_VARIABLE).unwrap_or_else(|_| panic!("run only by sigkill_during_writes_loses_no_acknowledged_write ({CHILD_DIR_VARIABLE} is not set)"));
    let node = single_node(std::path::Path::new(&dir));
    let mut writers = Vec::new();
    for client in 0..32u64 {
        let handle = node.handle.clone();
        writers.push(tokio::spawn(async move {
            for round in 0.. {
                let n = round * 32 + client;
                if let Ok((index, _)) = handle.propose(write(n)).await {
                    println!("ack {n} {}", index.0);
                }
            }
        }));
    }
    for writer in writers {
        let _ = writer.await;
    }
}

#[test]
fn sigkill_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_VARIABLE, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child");
    let mut acknowledged = Vec::new();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines {
        let line = line.expect("child output");
        let mut words = line.split_whitespace();
        if words.next() != Some("ack") {
            continue;
        }
        let n: u64 = words.next().unwrap().parse().unwrap();
        let index: u64 = words.next().unwrap().parse().unwrap();
        acknowledged.push((n, index));
        if acknowledged.len() == ACKNOWLEDGED_BEFORE_KILL {
            child.kill().expect("SIGKILL the child"); // Rust's kill() is SIGKILL on Unix.
            break;
        }
    }
    child.wait().unwrap();
    assert_eq!(acknowledged.len(), ACKNOWLEDGED_BEFORE_KILL, "the child stopped early");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let node = single_node(dir.path());
        let highest = acknowledged.iter().map(|(_, index)| *index).max().unwrap();
        // A single node elects itself and re-applies its log; wait (bounded) for that.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while node.handle.status().raft.applied_index < LogIndex(highest) {
            assert!(tokio::time::Instant::now() < deadline, "recovered node never re-applied index {highest}");
            let mut status = node.handle.watch_status();
            let _ = tokio::time::timeout(Duration::from_millis(100), status.changed()).await;
        }
        for (n, _) in &acknowledged {
            let key = format!("key-{n}");
            let (_, value) = node.handle.read(Consistency::Stale, move |kv| kv.get(&key).map(<[u8]>::to_vec)).await.unwrap();
            assert_eq!(value, Some(n.to_string().into_bytes()), "acknowledged write {n} lost after SIGKILL");
        }
        node.handle.shutdown();
    });
}
