//! A tiny deterministic harness for the scenario tests: N `RaftCore`s, a `MemoryStorage`
//! and a state machine per node, and a network that is just a queue of messages the test
//! delivers when and where it chooses. No threads, no clock: time passes only when a test
//! ticks a node.
//!
//! The driver step (`Cluster::process`) follows the contract in `keel_core::ready` to the
//! letter, and writes through the job runner the production executor uses
//! (`keel_node::run_storage_job`) into the storage the simulator uses (`MemoryStorage`,
//! with its crash model), so the tests exercise the core through the same API a real driver
//! uses. (It is not the executor itself: these tests look at each `Ready` whole, and split
//! one in two to act between its send and its write.)

#![allow(dead_code)] // Each test file uses a different subset of the helpers.

use keel_core::raft::RestoredState;
use keel_core::{
    AppendResult, Config, Entry, EntryKind, HardState, LogIndex, Message, MessageBody, NodeId, RaftCore, ReadState, Ready, Role, Snapshot,
    SoftState, Term,
};
use keel_node::{run_storage_job, MemoryStorage, SnapshotJob, Storage, StorageJob};
use std::io::Read;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

// ----- what a Ready asked for ----------------------------------------------------------------

/// What one `Ready` asked the driver to do, kept so a test can compare it whole: an
/// unexpected message or entry fails the comparison instead of going unnoticed.
pub type ReadyRecord = Ready;

// ----- one node: core, storage, state machine --------------------------------------------------

/// A storage holding `restored`, all of it synced (Figure 2, "persistent state on all
/// servers", plus the latest snapshot, §7).
fn storage_holding(restored: &RestoredState) -> MemoryStorage {
    let mut storage = MemoryStorage::new();
    assert!(restored.snapshot.is_none(), "the scenarios start from logs, not snapshots");
    storage.append(&restored.entries).expect("memory storage");
    storage.set_hard_state(&restored.hard_state).expect("memory storage");
    storage.sync().expect("memory storage");
    storage
}

/// The replicated state machine of these tests: the bytes of every applied command, in log
/// order. Its snapshot is those bytes, so a follower restored from one is comparable.
#[derive(Debug, Default)]
pub struct Bytes {
    pub applied_index: LogIndex,
    pub bytes: Vec<u8>,
}

impl Bytes {
    fn apply(&mut self, entry: &Entry) {
        assert_eq!(entry.index, self.applied_index.next(), "entries are applied once each, in order");
        self.applied_index = entry.index;
        if let EntryKind::Command(data) = &entry.kind {
            self.bytes.extend_from_slice(data);
        }
    }

    /// From the image `disk` stores for `snapshot`.
    fn restore(&mut self, snapshot: &Snapshot, disk: &MemoryStorage) {
        let image = disk.snapshot_image().filter(|image| image.meta() == snapshot.meta).expect("the snapshot's image is stored");
        self.applied_index = snapshot.meta.last_included_index;
        self.bytes.clear();
        image.reader().expect("memory storage").read_to_end(&mut self.bytes).expect("memory storage");
    }
}

pub struct Node {
    pub config: Config,
    pub core: RaftCore,
    pub disk: MemoryStorage,
    pub state_machine: Bytes,
    /// Every ReadState the core handed out, in order.
    pub read_states: Vec<ReadState>,
}

/// What a node finds on its disk at start, in the shorthand of the paper's figures: the term
/// it is in and the term of each log entry (entry `i` holds the command `"i@term"`).
#[derive(Clone, Debug, Default)]
pub struct Restore {
    pub current_term: u64,
    pub log_terms: Vec<u64>,
    pub commit_index: u64,
}

impl Restore {
    pub fn new(current_term: u64, log_terms: &[u64]) -> Restore {
        Restore { current_term, log_terms: log_terms.to_vec(), commit_index: 0 }
    }

    pub fn committed(mut self, commit_index: u64) -> Restore {
        self.commit_index = commit_index;
        self
    }

    fn state(&self) -> RestoredState {
        let entries = self.log_terms.iter().enumerate().map(|(offset, term)| figure_entry(offset as u64 + 1, *term)).collect();
        let hard_state = HardState { current_term: Term(self.current_term), voted_for: None, commit_index: LogIndex(self.commit_index) };
        RestoredState { hard_state, snapshot: None, entries }
    }
}

/// The entry a figure shows as `term` at `index`.
pub fn figure_entry(index: u64, term: u64) -> Entry {
    command(index, term, &format!("{index}@{term}"))
}

// ----- the cluster ---------------------------------------------------------------------------

pub struct Cluster {
    nodes: BTreeMap<NodeId, Node>,
    /// Messages sent and not yet delivered, oldest first.
    network: VecDeque<Message>,
    /// Nodes cut off from everyone: a message to or from one is lost when it would be delivered.
    isolated: BTreeSet<NodeId>,
    /// Every message stepped into a node, in order: tests count round trips with it.
    pub delivered: Vec<Message>,
}

impl Cluster {
    /// `size` fresh nodes with ids 1..=size and the default configuration.
    pub fn new(size: u64) -> Cluster {
        Cluster::with(size, |_| {})
    }

    /// Fresh nodes whose configuration `tweak` adjusts (limits, mostly).
    pub fn with(size: u64, tweak: impl Fn(&mut Config)) -> Cluster {
        Cluster::restored((0..size).map(|_| Restore::default()).collect(), tweak)
    }

    /// One node per `Restore`, ids 1..=n, each started from that state as after a restart.
    pub fn restored(disks: Vec<Restore>, tweak: impl Fn(&mut Config)) -> Cluster {
        let members: Vec<NodeId> = (1..=disks.len() as u64).map(NodeId).collect();
        let mut nodes = BTreeMap::new();
        for (id, restore) in members.iter().zip(&disks) {
            let mut config = Config::new(*id, members.clone());
            config.pre_vote = true;
            config.check_quorum = true;
            config.random_seed = id.0; // Fixed per node: every run elects the same way.
            tweak(&mut config);
            let state = restore.state();
            let disk = storage_holding(&state);
            let core = RaftCore::new(config.clone(), state);
            let node = Node { config, core, disk, state_machine: Bytes::default(), read_states: Vec::new() };
            nodes.insert(*id, node);
        }
        let mut cluster = Cluster { nodes, network: VecDeque::new(), isolated: BTreeSet::new(), delivered: Vec::new() };
        // A restarted node re-applies its committed entries before anything else happens.
        for id in members {
            cluster.process(id.0);
        }
        cluster
    }

    /// A new node `id` that starts empty and knows no configuration: it waits to be added
    /// (thesis §4.2.1) and learns its cluster from the leader's log or snapshot.
    pub fn add_node(&mut self, id: u64, tweak: impl Fn(&mut Config)) {
        let mut config = Config::new(NodeId(id), Vec::new());
        config.random_seed = id;
        tweak(&mut config);
        let core = RaftCore::new(config.clone(), RestoredState::default());
        let node = Node { config, core, disk: MemoryStorage::new(), state_machine: Bytes::default(), read_states: Vec::new() };
        self.nodes.insert(NodeId(id), node);
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().map(|id| id.0).collect()
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[&NodeId(id)]
    }

    pub fn core(&self, id: u64) -> &RaftCore {
        &self.node(id).core
    }

    pub fn core_mut(&mut self, id: u64) -> &mut RaftCore {
        &mut self.nodes.get_mut(&NodeId(id)).expect("known node").core
    }

    /// Every node whose core believes it leads.
    pub fn leaders(&self) -> Vec<u64> {
        self.nodes.values().filter(|node| node.core.role() == Role::Leader).map(|node| node.core.id().0).collect()
    }

    /// The node's whole log as the core sees it (entries still in the log, not compacted).
    pub fn log(&self, id: u64) -> Vec<Entry> {
        let core = self.core(id);
        core.log_entries_from(core.first_log_index())
    }

    // ----- the driver step -------------------------------------------------------------------

    /// Runs one `Ready` of node `id` if it has one, exactly as the contract in `ready.rs` says.
    pub fn process(&mut self, id: u64) -> Option<ReadyRecord> {
        if !self.core(id).has_ready() {
            return None;
        }
        let ready = self.begin_ready(id);
        Some(self.finish_ready(id, ready))
    }

    /// Contract steps 2–3: take the Ready and send `messages` at once (thesis §10.2.1: the
    /// leader's AppendEntries may leave before its own disk write).
    pub fn begin_ready(&mut self, id: u64) -> Ready {
        let ready = self.core_mut(id).ready();
        self.network.extend(ready.messages.iter().cloned());
        // InstallSnapshot chunks take their bytes from the stored image (§7).
        let image = self.nodes[&NodeId(id)].disk.snapshot_image();
        for chunk in &ready.outgoing_chunks {
            let (meta, offset) = chunk.source();
            let image = image.as_ref().filter(|image| image.meta() == meta).expect("a chunk of the stored snapshot");
            self.network.push_back(chunk.clone().fill(image.read_at(offset, chunk.len).expect("memory storage")));
        }
        ready
    }

    /// Contract steps 4–8: persist, send what needed the write, apply, hand the Ready back.
    pub fn finish_ready(&mut self, id: u64, ready: Ready) -> ReadyRecord {
        let record = ready.clone();
        let node = self.nodes.get_mut(&NodeId(id)).expect("known node");
        // 4. Snapshot, entries, hard state; then sync, unless the core lets the leader defer
        // it. 5. Votes and acknowledgements promise durable state: they leave only after it.
        let job = StorageJob::Write {
            received_chunks: ready.received_chunks.clone(),
            snapshot: ready.snapshot.clone(),
            entries: ready.entries.clone(),
            hard_state: ready.hard_state,
            sync: !ready.may_defer_sync,
            persisted_messages: ready.persisted_messages.clone(),
        };
        let network = &mut self.network;
        run_storage_job(&mut node.disk, job, &mut |message| network.push_back(message)).expect("memory storage does not fail");
        if let Some(snapshot) = &ready.snapshot {
            node.state_machine.restore(snapshot, &node.disk);
        }
        // 6–7. Apply in order; remember read answers.
        for entry in &ready.committed_entries {
            node.state_machine.apply(entry);
        }
        node.read_states.extend(ready.read_states.iter().copied());
        // 8.
        node.core.advance(ready);
        record
    }

    // ----- time ------------------------------------------------------------------------------

    /// One tick on node `id`, then its Ready (if any); messages go to the network.
    pub fn tick(&mut self, id: u64) -> Option<ReadyRecord> {
        self.core_mut(id).tick();
        self.process(id)
    }

    pub fn ticks(&mut self, id: u64, count: u32) {
        for _ in 0..count {
            self.tick(id);
        }
    }

    /// One tick on every node (isolated ones too: a partition does not stop their clocks).
    pub fn tick_all(&mut self) {
        for id in self.ids() {
            self.tick(id);
        }
    }

    /// Ticks `id` until a tick produces a Ready: for a follower with nothing to do, that is
    /// its election timer firing. Returns the number of ticks and that Ready.
    pub fn tick_until_ready(&mut self, id: u64) -> (u32, ReadyRecord) {
        for ticks in 1..=1000 {
            if let Some(record) = self.tick(id) {
                return (ticks, record);
            }
        }
        panic!("node {id} produced no Ready in 1000 ticks");
    }

    /// Ticks `id` until it campaigns, then delivers messages (oldest first) until it leads.
    /// Returns the new leader's first Ready; later votes and its AppendEntries stay in flight.
    pub fn elect(&mut self, id: u64) -> ReadyRecord {
        self.tick_until_ready(id);
        for _ in 0..10_000 {
            let message = self.network.pop_front().expect("the election ran out of messages before a leader emerged");
            let to = message.to.0;
            let record = self.deliver_message(message);
            if to == id && self.core(id).role() == Role::Leader {
                return record.expect("a new leader has a Ready: its no-op and AppendEntries");
            }
        }
        panic!("node {id} did not win the election");
    }

    // ----- the network -----------------------------------------------------------------------

    pub fn isolate(&mut self, id: u64) {
        self.isolated.insert(NodeId(id));
    }

    pub fn heal(&mut self) {
        self.isolated.clear();
    }

    fn is_cut(&self, message: &Message) -> bool {
        self.isolated.contains(&message.from) || self.isolated.contains(&message.to)
    }

    /// Copies of the messages in flight from `from` to `to`, oldest first.
    pub fn in_flight(&self, from: u64, to: u64) -> Vec<Message> {
        self.network.iter().filter(|message| message.from.0 == from && message.to.0 == to).cloned().collect()
    }

    /// Removes and returns the messages in flight from `from` to `to` (to hold or lose them).
    pub fn take_in_flight(&mut self, from: u64, to: u64) -> Vec<Message> {
        let (taken, kept): (VecDeque<Message>, VecDeque<Message>) =
            std::mem::take(&mut self.network).into_iter().partition(|message| message.from.0 == from && message.to.0 == to);
        self.network = kept;
        taken.into()
    }

    /// A copy of the message in flight at `position` (modulo how many are in flight).
    pub fn in_flight_at(&self, position: usize) -> Option<Message> {
        (!self.network.is_empty()).then(|| self.network[position % self.network.len()].clone())
    }

    /// Removes and returns the message in flight at `position` (modulo how many there are).
    pub fn take_in_flight_at(&mut self, position: usize) -> Option<Message> {
        if self.network.is_empty() {
            return None;
        }
        let position = position % self.network.len();
        self.network.remove(position)
    }

    /// Steps one message into its addressee (unless a partition loses it), then runs the
    /// addressee's Ready and returns it.
    pub fn deliver_message(&mut self, message: Message) -> Option<ReadyRecord> {
        if self.is_cut(&message) {
            return None;
        }
        let to = message.to.0;
        self.delivered.push(message.clone());
        step_between_members(self.core_mut(to), message);
        self.process(to)
    }

    /// Delivers every message in flight from `from` to `to`, then runs `to`'s Ready once.
    pub fn deliver(&mut self, from: u64, to: u64) -> Option<ReadyRecord> {
        for message in self.take_in_flight(from, to) {
            if self.is_cut(&message) {
                continue;
            }
            self.delivered.push(message.clone());
            step_between_members(self.core_mut(to), message);
        }
        self.process(to)
    }

    /// Delivers everything, oldest first, until no node has work and no message is in flight.
    pub fn stabilize(&mut self) {
        for _ in 0..100_000 {
            for id in self.ids() {
                self.process(id);
            }
            let Some(message) = self.network.pop_front() else { return };
            self.deliver_message(message);
        }
        panic!("the cluster did not settle in 100000 deliveries");
    }

    // ----- clients ---------------------------------------------------------------------------

    /// Proposes on `id` (which must lead) and runs its Ready: the entry is handed to disk and
    /// the AppendEntries go to the network.
    pub fn propose(&mut self, id: u64, command: &str) -> (LogIndex, Term) {
        let placed = self.core_mut(id).propose(command.as_bytes().to_vec()).expect("the node leads");
        self.process(id);
        placed
    }

    /// The driver saved a snapshot of node `id`'s state machine as of everything it applied;
    /// the core may drop the log up to there (§7).
    pub fn compact(&mut self, id: u64) -> Snapshot {
        let node = self.nodes.get_mut(&NodeId(id)).expect("known node");
        let index = node.state_machine.applied_index;
        let term = node.core.entry(index).expect("applied entries are in the log").term;
        let bytes = node.state_machine.bytes.clone();
        let job = SnapshotJob { index, term, membership: node.core.membership_at(index).clone(), write: Box::new(move |out| out.write_all(&bytes)) };
        let snapshot = (node.disk.snapshot_writer())(job).expect("memory storage");
        node.disk.compact(&snapshot).expect("memory storage");
        node.core.compact(snapshot.clone());
        snapshot
    }

    // ----- crashes ---------------------------------------------------------------------------

    /// Node `id` crashes and restarts from its storage: everything volatile is lost (its core
    /// and its state machine), and so is every write the contract let stay unsynced; what it
    /// made durable stays. Messages it already sent are on the network and may still arrive.
    pub fn restart(&mut self, id: u64) {
        let node = self.nodes.get_mut(&NodeId(id)).expect("known node");
        let (disk, _) = std::mem::take(&mut node.disk).crash(0);
        node.disk = disk;
        let restored = node.disk.initial_state().expect("memory storage");
        node.state_machine = Bytes::default();
        if let Some(snapshot) = &restored.snapshot {
            node.state_machine.restore(snapshot, &node.disk);
        }
        node.core = RaftCore::new(node.config.clone(), restored);
        node.read_states.clear();
        self.process(id); // Re-applies the committed entries after the snapshot.
    }

    // ----- checks ----------------------------------------------------------------------------

    /// What node `id`'s storage holds (its writes so far, synced or not).
    pub fn stored(&self, id: u64) -> RestoredState {
        self.node(id).disk.initial_state().expect("memory storage")
    }

    /// The driver contract kept the storage equal to what the core believes is durable.
    #[track_caller]
    pub fn assert_disk_matches_core(&self, id: u64) {
        let stored = self.stored(id);
        let status = self.core(id).status();
        assert_eq!(stored.hard_state.current_term, status.term, "node {id}: term on disk");
        assert_eq!(stored.hard_state.voted_for, status.voted_for, "node {id}: vote on disk");
        assert_eq!(stored.hard_state.commit_index, status.commit_index, "node {id}: commit index on disk");
        assert_eq!(stored.entries, self.log(id), "node {id}: log on disk");
    }
}

/// Steps a message between correct nodes: it is accepted, unless the receiver's
/// configuration does not hold its sender (a node removed, or not added there yet), which a
/// changing cluster refuses as a matter of course.
fn step_between_members(core: &mut RaftCore, message: Message) {
    match core.step(message) {
        Ok(()) | Err(keel_core::StepError::UnknownNode(_)) => {}
        Err(error) => panic!("a message between correct nodes was refused: {error}"),
    }
}

// ----- shorthand for expected values ----------------------------------------------------------

pub fn message(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

pub fn pre_vote(last_log_index: u64, last_log_term: u64) -> MessageBody {
    MessageBody::RequestVote { pre_vote: true, last_log_index: LogIndex(last_log_index), last_log_term: Term(last_log_term), leadership_transfer: false }
}

pub fn request_vote(last_log_index: u64, last_log_term: u64) -> MessageBody {
    MessageBody::RequestVote { pre_vote: false, last_log_index: LogIndex(last_log_index), last_log_term: Term(last_log_term), leadership_transfer: false }
}

/// The RequestVote of a candidate the leader asked to take over (TimeoutNow, thesis §3.10).
pub fn transfer_vote(last_log_index: u64, last_log_term: u64) -> MessageBody {
    MessageBody::RequestVote { pre_vote: false, last_log_index: LogIndex(last_log_index), last_log_term: Term(last_log_term), leadership_transfer: true }
}

pub fn vote_response(pre_vote: bool, vote_granted: bool) -> MessageBody {
    MessageBody::RequestVoteResponse { pre_vote, vote_granted }
}

pub fn append(prev_log_index: u64, prev_log_term: u64, entries: Vec<Entry>, leader_commit: u64, read_round: u64) -> MessageBody {
    MessageBody::AppendEntries {
        prev_log_index: LogIndex(prev_log_index),
        prev_log_term: Term(prev_log_term),
        entries,
        leader_commit: LogIndex(leader_commit),
        read_round,
    }
}

pub fn append_success(match_index: u64, read_round: u64) -> MessageBody {
    MessageBody::AppendEntriesResponse { result: AppendResult::Success { match_index: LogIndex(match_index) }, read_round }
}

pub fn append_conflict(rejected_index: u64, conflict_term: Option<u64>, conflict_index: u64, read_round: u64) -> MessageBody {
    let result = AppendResult::Conflict {
        rejected_index: LogIndex(rejected_index),
        conflict_term: conflict_term.map(Term),
        conflict_index: LogIndex(conflict_index),
    };
    MessageBody::AppendEntriesResponse { result, read_round }
}

pub fn noop(index: u64, term: u64) -> Entry {
    Entry { term: Term(term), index: LogIndex(index), kind: EntryKind::Noop }
}

pub fn command(index: u64, term: u64, data: &str) -> Entry {
    Entry { term: Term(term), index: LogIndex(index), kind: EntryKind::Command(data.as_bytes().to_vec().into()) }
}

pub fn soft(role: Role, term: u64, leader_id: Option<u64>) -> SoftState {
    SoftState { role, term: Term(term), leader_id: leader_id.map(NodeId) }
}

pub fn hard(term: u64, voted_for: Option<u64>, commit_index: u64) -> HardState {
    HardState { current_term: Term(term), voted_for: voted_for.map(NodeId), commit_index: LogIndex(commit_index) }
}
