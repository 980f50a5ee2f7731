//! The seed's Day 1 demo, on the real code: three Raft nodes in one process, wired by the
//! in-memory transport, elect a leader, then replicate, commit and apply a command — and
//! elect a new leader when the first one is cut off. Narrated step by step.
//!
//! Run it from the workspace root: `cargo run --example demo`

use keel_core::{NodeId, Role};
use keel_kv::{Command, CommandResult, KvStore};
use keel_node::{Consistency, MemoryNetwork, MemoryStorage, NodeConfig, RaftHandle, RaftNode};
use std::time::{Duration, Instant};

type Handles = Vec<RaftHandle<KvStore>>;

fn step(number: u32, text: &str) {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1mStep {number}. {text}\x1b[0m");
    } else {
        println!("\nStep {number}. {text}");
    }
}

fn say(text: &str) {
    println!("   {text}");
}

fn show_nodes(handles: &Handles) {
    for handle in handles {
        let status = handle.status();
        if status.stopped.is_some() {
            say(&format!("node {}: stopped", handle.id()));
            continue;
        }
        let raft = status.raft;
        let leader = raft.leader_id.map(|id| format!("node {id}")).unwrap_or_else(|| "unknown".into());
        say(&format!(
            "node {}: {:<9} term {}  leader {:<7}  log up to {}  committed {}  applied {}",
            raft.id, raft.role.to_string(), raft.term, leader, raft.last_log_index, raft.commit_index, raft.applied_index
        ));
    }
}

/// Polls until every running node agrees on one leader that is not `excluded`.
async fn wait_for_leader(handles: &Handles, excluded: Option<NodeId>) -> NodeId {
    let started = Instant::now();
    loop {
        let running: Vec<_> = handles.iter().filter(|handle| handle.status().stopped.is_none() && Some(handle.id()) != excluded).collect();
        let leaders: Vec<NodeId> = running.iter().filter(|handle| handle.status().raft.role == Role::Leader).map(|handle| handle.id()).collect();
        if let [leader] = leaders[..] {
            if running.iter().all(|handle| handle.status().raft.leader_id == Some(leader)) {
                return leader;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_until_applied(handles: &Handles, index: keel_core::LogIndex, excluded: Option<NodeId>) {
    let started = Instant::now();
    while handles.iter().filter(|handle| Some(handle.id()) != excluded).any(|handle| handle.status().raft.applied_index < index) {
        assert!(started.elapsed() < Duration::from_secs(10), "not applied within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn show_values(handles: &Handles, key: &str, excluded: Option<NodeId>) {
    for handle in handles.iter().filter(|handle| Some(handle.id()) != excluded) {
        let owned_key = key.to_string();
        let (_, value) = handle.read(Consistency::Stale, move |kv| kv.get(&owned_key).map(|value| String::from_utf8_lossy(value).into_owned())).await.expect("a stale read");
        say(&format!("node {}'s state machine: {key} = {}", handle.id(), value.as_deref().unwrap_or("(absent)")));
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_target(false).without_time().with_env_filter("info").init();
    println!("keel demo: a 3-node Raft cluster in one process (in-memory network and storage)");

    step(1, "Three nodes start. Every node begins as a Follower in term 0 and knows no leader (§5.2).");
    let network = MemoryNetwork::new();
    let members = vec![NodeId(1), NodeId(2), NodeId(3)];
    let mut handles: Handles = Vec::new();
    for id in &members {
        let node = RaftNode::start(NodeConfig::new(*id, members.clone()), MemoryStorage::new(), KvStore::new(), network.transport(*id)).expect("starting a node");
        network.register(*id, node.inbox.clone());
        handles.push(node.handle);
    }
    show_nodes(&handles);
    say("Each waits a random election timeout (300-600 ms). The first to time out becomes a");
    say("Candidate: it votes for itself and asks the others for their votes.");

    step(2, "Election. A candidate with votes from a majority (2 of 3) becomes the Leader.");
    let leader = wait_for_leader(&handles, None).await;
    show_nodes(&handles);
    say(&format!("node {leader} leads. Its first act is a no-op entry (§8), so it can commit earlier entries."));

    step(3, "Only the leader takes commands. A follower refuses and names the leader.");
    let follower = members.iter().copied().find(|id| *id != leader).unwrap();
    let command = Command::Set { key: "greeting".into(), value: b"hello, raft".to_vec() };
    let refused = handles[follower.0 as usize - 1].propose(command.encode().unwrap()).await;
    say(&format!("node {follower} answered: {}", refused.unwrap_err()));

    step(4, "The leader appends `SET greeting \"hello, raft\"`, replicates it with AppendEntries,");
    say("commits it once a majority stored it (§5.3), and every node applies it to its state machine.");
    let (index, result) = handles[leader.0 as usize - 1].propose(command.encode().unwrap()).await.expect("the leader commits");
    assert_eq!(result, CommandResult::Set);
    say(&format!("committed and applied at log index {index}"));
    wait_until_applied(&handles, index, None).await;
    show_nodes(&handles);
    show_values(&handles, "greeting", None).await;

    step(5, "A linearizable read (ReadIndex, §6.4 of the thesis): the leader confirms it still leads, then reads.");
    let (read_index, value) = handles[leader.0 as usize - 1]
        .read(Consistency::Linearizable, |kv| kv.get("greeting").map(|value| String::from_utf8_lossy(value).into_owned()))
        .await
        .expect("a linearizable read");
    say(&format!("greeting = {:?} (as of index {read_index})", value.unwrap_or_default()));

    step(6, &format!("The leader, node {leader}, is cut off from the others. They stop hearing heartbeats,"));
    say("time out, and elect a new leader in a higher term. The committed entry survives.");
    network.isolate(leader);
    handles[leader.0 as usize - 1].shutdown();
    let new_leader = wait_for_leader(&handles, Some(leader)).await;
    let command = Command::Set { key: "greeting".into(), value: b"hello again".to_vec() };
    let (index, _) = handles[new_leader.0 as usize - 1].propose(command.encode().unwrap()).await.expect("the new leader commits");
    wait_until_applied(&handles, index, Some(leader)).await;
    show_nodes(&handles);
    show_values(&handles, "greeting", Some(leader)).await;

    step(7, "Done. The same nodes run behind HTTP in `keel serve`: try scripts/run_cluster.sh start.");
    for handle in &handles {
        handle.shutdown();
    }
}
