//! `RaftNode`: the async driver that turns a `RaftCore` into a running node.
//!
//! One tokio task owns the core and the state machine. It maps real time to ticks, feeds
//! in peer messages and client requests, and carries out each `Ready` by the contract in
//! `keel_core::ready`. Each write goes to disk with one fsync for everything that arrived
//! while the last one ran (group commit). Where it runs depends on what the task could do
//! meanwhile:
//! - a leader's synced write runs on a dedicated storage thread: the task keeps stepping
//!   acknowledgements and proposals, and its AppendEntries leave before its own write
//!   completes (thesis §10.2.1). The thread sends the Ready's persisted messages itself the
//!   moment the sync returns.
//! - every other write runs on the task itself: a leader's unsynced append (quick: no
//!   fsync, see `Ready::may_defer_sync`), and a follower's or candidate's write, whose
//!   acknowledgement or vote must wait for it anyway. That saves two thread hand-offs per
//!   write on the commit's critical path.
//! - compactions always run on the thread (they can outlast an election timeout), and
//!   writes issued meanwhile queue behind them (`storage_runner.rs`).
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::storage::{SnapshotStager, Storage, StorageError};
use crate::storage_runner::{DoneReceiver, SnapshotImage, StorageDone, StorageJob, StorageRunner};
use crate::transport::Transport;
use keel_core::{Entry, HardState, LogIndex, Message, NodeId, RaftCore, ReadError, Ready, Role, Snapshot, SnapshotMeta, StateMachine, Status, Term};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

/// Messages and requests handled per wake-up before the driver writes and sends (a bound on
/// batch size, so one flood cannot starve ticks).
const INPUTS_PER_TURN_MAX: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// ReadIndex (thesis §6.4): reflects every write acknowledged before the read began.
    Linearizable,
    /// This node's applied state, however old.
    Stale,
}

type ReadFn<SM> = Box<dyn FnOnce(Result<(LogIndex, &SM), NodeError>) + Send>;
type ProposeReply<SM> = oneshot::Sender<Result<(LogIndex, <SM as StateMachine>::Output), NodeError>>;

enum Request<SM: StateMachine> {
    Propose { command: Vec<u8>, reply: ProposeReply<SM> },
    Read { consistency: Consistency, run: ReadFn<SM> },
}

/// A node's state for status endpoints, updated by the driver after every turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub raft: Status,
    /// Set once the node stopped, with the reason.
    pub stopped: Option<String>,
}

/// The client side of a running node; cheap to clone.
pub struct RaftHandle<SM: StateMachine> {
    id: NodeId,
    requests: mpsc::Sender<Request<SM>>,
    status: watch::Receiver<NodeStatus>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl<SM: StateMachine> Clone for RaftHandle<SM> {
    fn clone(&self) -> Self {
        RaftHandle { id: self.id, requests: self.requests.clone(), status: self.status.clone(), shutdown: self.shutdown.clone() }
    }
}

impl<SM: StateMachine> RaftHandle<SM> {
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Proposes `command`; resolves with its log index and the state machine's answer once
    /// applied. Callers bound the wait with a timeout; a timed-out write's outcome is unknown.
    pub async fn propose(&self, command: Vec<u8>) -> Result<(LogIndex, SM::Output), NodeError> {
        let (reply, response) = oneshot::channel();
        self.submit(Request::Propose { command, reply })?;
        response.await.unwrap_or(Err(NodeError::Stopped))
    }

    /// Runs `read` against the state machine at the given consistency; returns the applied
    /// index it saw and its result.
    pub async fn read<R: Send + 'static>(&self, consistency: Consistency, read: impl FnOnce(&SM) -> R + Send + 'static) -> Result<(LogIndex, R), NodeError> {
        let (reply, response) = oneshot::channel();
        let run: ReadFn<SM> = Box::new(move |state| {
            let _ = reply.send(state.map(|(index, machine)| (index, read(machine))));
        });
        self.submit(Request::Read { consistency, run })?;
        response.await.unwrap_or(Err(NodeError::Stopped))
    }

    fn submit(&self, request: Request<SM>) -> Result<(), NodeError> {
        self.requests.try_send(request).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => NodeError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => NodeError::Stopped,
        })
    }

    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change (for waiting on a leader in tests and CLIs).
    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// Asks the driver to stop after its current turn.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

/// Everything `RaftNode::start` hands back.
pub struct RaftNode<SM: StateMachine> {
    pub handle: RaftHandle<SM>,
    /// Where transports deliver this node's inbound peer messages.
    pub inbox: mpsc::Sender<Message>,
    /// Resolves when the driver has stopped.
    pub task: tokio::task::JoinHandle<()>,
}

impl<SM: StateMachine> RaftNode<SM> {
    /// Recovers from `storage`, restores `state_machine` (which must be empty) from the
    /// latest snapshot, and starts the driver task and the storage thread.
    pub fn start<S, T>(config: NodeConfig, storage: S, mut state_machine: SM, transport: T) -> Result<RaftNode<SM>, StartError>
    where
        S: Storage + Send + 'static,
        T: Transport,
    {
        config.validate().map_err(StartError::Config)?;
        let restored = storage.initial_state().map_err(StartError::Storage)?;
        if let Some(snapshot) = &restored.snapshot {
            state_machine.restore(&snapshot.data).map_err(StartError::Snapshot)?;
        }
        let snapshot_index = restored.snapshot.as_ref().map(|snapshot| snapshot.meta.last_included_index).unwrap_or_default();
        info!("[NODE {}] starting: term {}, {} log entries after snapshot {}", config.id, restored.hard_state.current_term, restored.entries.len(), snapshot_index);
        let hard_state_saved = restored.hard_state;
        let core = RaftCore::new(config.core_config(), restored);
        let (inbox, inbox_receiver) = mpsc::channel(config.inbox_messages_max);
        let (requests, request_receiver) = mpsc::channel(config.requests_queued_max);
        let (status_sender, status) = watch::channel(NodeStatus { raft: core.status(), stopped: None });
        let (shutdown, shutdown_receiver) = watch::channel(false);
        let snapshot_stager: Arc<SnapshotStager> = Arc::new(storage.snapshot_stager());
        let transport = Arc::new(transport);
        let (storage, done_receiver) = if config.storage_on_thread {
            StorageRunner::with_thread(config.id, storage, transport.clone())
        } else {
            (StorageRunner::inline(config.id, storage), mpsc::unbounded_channel().1)
        };
        let (snapshot_images, images_receiver) = mpsc::unbounded_channel();
        let driver = Driver {
            id: config.id,
            core,
            state_machine,
            transport,
            storage,
            inflight: None,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            reads_waiting_apply: Vec::new(),
            next_read_id: 0,
            snapshot_index,
            snapshot_in_progress: false,
            snapshot_images,
            snapshot_stager,
            hard_state_saved,
            unsynced: false,
            status: status_sender,
            config: config.clone(),
        };
        let task = tokio::spawn(driver.run(inbox_receiver, request_receiver, done_receiver, images_receiver, shutdown_receiver));
        let handle = RaftHandle { id: config.id, requests, status, shutdown: Arc::new(shutdown) };
        Ok(RaftNode { handle, inbox, task })
    }
}

#[derive(Debug)]
pub enum StartError {
    Config(String),
    Storage(StorageError),
    Snapshot(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(problem) => write!(f, "invalid configuration: {problem}"),
            StartError::Storage(error) => write!(f, "cannot recover from storage: {error}"),
            StartError::Snapshot(problem) => write!(f, "cannot restore the state machine from the snapshot: {problem}"),
        }
    }
}

impl std::error::Error for StartError {}

struct Driver<SM: StateMachine, T: Transport> {
    id: NodeId,
    core: RaftCore,
    state_machine: SM,
    /// Shared with the storage thread, which sends acknowledgements (contract step 5).
    transport: Arc<T>,
    storage: StorageRunner,
    /// The Ready whose write is on the storage thread, or done inline and its completion
    /// not yet handled.
    inflight: Option<Ready>,
    proposals: BTreeMap<LogIndex, (Term, ProposeReply<SM>)>,
    reads: BTreeMap<u64, ReadFn<SM>>,
    reads_waiting_apply: Vec<(LogIndex, ReadFn<SM>)>,
    next_read_id: u64,
    /// The latest snapshot handed to storage: ours, or one installed from the leader.
    snapshot_index: LogIndex,
    snapshot_in_progress: bool,
    /// Where a snapshot thread hands back its image.
    snapshot_images: mpsc::UnboundedSender<SnapshotImage>,
    snapshot_stager: Arc<SnapshotStager>,
    /// The last hard state handed to storage (see `must_save`).
    hard_state_saved: HardState,
    /// A write was left unsynced; the next Ready that must sync does so even if it writes
    /// nothing itself.
    unsynced: bool,
    status: watch::Sender<NodeStatus>,
    config: NodeConfig,
}

impl<SM: StateMachine, T: Transport> Driver<SM, T> {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Message>,
        mut requests: mpsc::Receiver<Request<SM>>,
        mut storage_done: DoneReceiver,
        mut snapshot_images: mpsc::UnboundedReceiver<SnapshotImage>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.tick_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop_reason = loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break "shut down".to_string(),
                done = storage_done.recv(), if self.storage.has_thread() => match done {
                    Some(done) => self.storage.push_done(done),
                    None => break "storage thread ended".to_string(),
                },
                _ = ticker.tick() => self.core.tick(),
                Some(image) = snapshot_images.recv() => self.on_snapshot_image(image),
                Some(message) = inbox.recv() => {
                    self.step(message);
                    for _ in 0..INPUTS_PER_TURN_MAX {
                        let Ok(message) = inbox.try_recv() else { break };
                        self.step(message);
                    }
                }
                Some(request) = requests.recv() => {
                    let concurrent = !self.proposals.is_empty();
                    self.take_requests(request, &mut requests);
                    // Group commit at the proposal: with other proposals in flight, client
                    // tasks woken alongside this one (and requests the I/O driver is about
                    // to deliver) get one turn to queue theirs, so a single Ready carries
                    // them all. A lone client does not wait for that turn. (Test:
                    // `proposals_woken_together_share_one_append`.)
                    if concurrent {
                        tokio::task::yield_now().await;
                        if let Ok(request) = requests.try_recv() {
                            self.take_requests(request, &mut requests);
                        }
                    }
                }
            }
            if let Err(error) = self.drive() {
                break format!("storage failed: {error}");
            }
            self.publish_status(None);
        };
        self.stop(stop_reason);
        // Wait for the storage thread to finish its last write and release the data
        // directory, so a restart in the same process finds it unlocked.
        self.storage.stop().await;
    }

    fn stop(&mut self, reason: String) {
        if reason == "shut down" {
            info!("[NODE {}] stopped: {reason}", self.id);
        } else {
            error!("[NODE {}] stopping: {reason}", self.id);
        }
        for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
            let _ = reply.send(Err(NodeError::Stopped));
        }
        let reads = std::mem::take(&mut self.reads).into_values().chain(std::mem::take(&mut self.reads_waiting_apply).into_iter().map(|(_, run)| run));
        for run in reads {
            run(Err(NodeError::Stopped));
        }
        self.publish_status(Some(reason));
    }

    fn step(&mut self, message: Message) {
        if let Err(error) = self.core.step(message) {
            // Debug, not warn: a misconfigured peer would otherwise flood the log every heartbeat.
            debug!("[NODE {}] dropped a peer message: {error}", self.id);
        }
    }

    /// `first` and whatever else is queued, up to `INPUTS_PER_TURN_MAX`.
    fn take_requests(&mut self, first: Request<SM>, requests: &mut mpsc::Receiver<Request<SM>>) {
        self.on_request(first);
        for _ in 0..INPUTS_PER_TURN_MAX {
            let Ok(request) = requests.try_recv() else { break };
            self.on_request(request);
        }
    }

    fn on_request(&mut self, request: Request<SM>) {
        match request {
            Request::Propose { command, reply } => match self.core.propose(command) {
                Ok((index, term)) => {
                    self.proposals.insert(index, (term, reply));
                }
                Err(keel_core::ProposeError::NotLeader { leader_hint }) => {
                    let _ = reply.send(Err(NodeError::NotLeader { leader_hint }));
                }
                Err(keel_core::ProposeError::TooManyUncommitted) => {
                    let _ = reply.send(Err(NodeError::Overloaded));
                }
            },
            Request::Read { consistency: Consistency::Stale, run } => run(Ok((self.state_machine.applied_index(), &self.state_machine))),
            Request::Read { consistency: Consistency::Linearizable, run } => {
                self.next_read_id += 1;
                match self.core.read_index(self.next_read_id) {
                    Ok(()) => {
                        self.reads.insert(self.next_read_id, run);
                    }
                    Err(error) => run(Err(read_error(error))),
                }
            }
        }
    }

    /// Contract steps 2–3 (take a Ready, send what may leave now, start the write), then
    /// the completions of finished writes, until there is nothing left to do.
    fn drive(&mut self) -> Result<(), StorageError> {
        loop {
            if self.inflight.is_none() && self.core.has_ready() {
                self.start_ready();
            }
            let Some(done) = self.storage.pop_done() else { break };
            self.on_storage_done(done?);
        }
        if self.inflight.is_some() {
            // Entries proposed during our own write go to followers now, not after it.
            for message in self.core.take_early_messages() {
                self.transport.send(message);
            }
        }
        Ok(())
    }

    fn start_ready(&mut self) {
        let mut ready = self.core.ready();
        if let Some(soft_state) = ready.soft_state {
            self.log_soft_state(soft_state.role, soft_state.term, soft_state.leader_id);
            if soft_state.role != Role::Leader {
                self.fail_proposals_on_step_down();
            }
        }
        for message in std::mem::take(&mut ready.messages) {
            self.transport.send(message);
        }
        if let Some(snapshot) = &ready.snapshot {
            self.snapshot_index = snapshot.meta.last_included_index;
        }
        let hard_state = ready.hard_state.filter(|hard_state| self.must_save(hard_state));
        let writes = ready.snapshot.is_some() || !ready.entries.is_empty() || hard_state.is_some();
        let sync = !ready.may_defer_sync;
        let needs_disk = writes || (sync && self.unsynced);
        self.unsynced = if sync { false } else { self.unsynced || writes };
        if needs_disk {
            // The write's runner sends the acknowledgements the moment its sync returns;
            // after a snapshot they wait for the state machine's restore (`on_persisted`).
            let persisted_messages = if ready.snapshot.is_none() { std::mem::take(&mut ready.persisted_messages) } else { Vec::new() };
            let job = StorageJob::Write { snapshot: ready.snapshot.clone(), entries: std::mem::take(&mut ready.entries), hard_state, sync, persisted_messages };
            // A leader keeps replicating and committing while its own write syncs (thesis
            // §10.2.1), so that write goes to the thread. Any other write is quick (a
            // leader's unsynced append) or holds up nothing the driver could do meanwhile (a
            // follower's acknowledgement waits for it; messages arriving meanwhile go into
            // the next write): run it here and save two thread hand-offs.
            let inline = !sync || self.core.role() != Role::Leader;
            self.storage.submit(job, inline, &*self.transport);
        } else {
            self.storage.push_done(Ok(StorageDone::Written));
        }
        self.inflight = Some(ready);
    }

    /// Term and vote must be durable before any message that depends on them (Figure 2).
    /// The commit index need not be: a restarted node learns it again from the leader, and
    /// saving it only shortens the wait to re-apply. Rewriting the hard-state file costs
    /// several fsyncs and stalls the log writes queued behind it, so a commit-only change is
    /// saved once per `COMMIT_SAVE_INTERVAL` entries instead of on every write: about once a
    /// second at 15,000 writes/s, while re-applying that many entries after a restart takes
    /// milliseconds. (Every 1,024 entries cost ~15 rewrites a second under load.)
    fn must_save(&mut self, hard_state: &HardState) -> bool {
        const COMMIT_SAVE_INTERVAL: u64 = 16_384;
        let saved = self.hard_state_saved;
        let vote_changed = hard_state.current_term != saved.current_term || hard_state.voted_for != saved.voted_for;
        let commit_far_ahead = hard_state.commit_index.0 >= saved.commit_index.0 + COMMIT_SAVE_INTERVAL;
        if vote_changed || commit_far_ahead {
            self.hard_state_saved = *hard_state;
            return true;
        }
        false
    }

    fn on_storage_done(&mut self, done: StorageDone) {
        match done {
            StorageDone::Written => self.on_persisted(),
            StorageDone::Compacted { image, compact_ms } => {
                let SnapshotImage { snapshot, build_ms, stage_ms } = image;
                let meta = snapshot.meta;
                let image_bytes = snapshot.data.len();
                self.core.compact(meta.last_included_index, snapshot.data);
                self.snapshot_in_progress = false;
                info!(
                    "[NODE {}] snapshot taken at index {} (term {}); log compacted (image {image_bytes} bytes: built in {build_ms} ms, written in {stage_ms} ms, compacted in {compact_ms} ms)",
                    self.id,
                    meta.last_included_index,
                    meta.last_included_term,
                );
            }
        }
    }

    /// Contract steps 4 (restore) to 8, once the write is durable.
    fn on_persisted(&mut self) {
        let mut ready = self.inflight.take().expect("a write was in flight");
        if let Some(snapshot) = &ready.snapshot {
            self.restore_snapshot(snapshot.meta, &snapshot.data);
        }
        // Still here only after a snapshot or when nothing was written (see `start_ready`).
        for message in std::mem::take(&mut ready.persisted_messages) {
            self.transport.send(message);
        }
        for entry in std::mem::take(&mut ready.committed_entries) {
            self.apply(&entry);
        }
        for read_state in std::mem::take(&mut ready.read_states) {
            let Some(run) = self.reads.remove(&read_state.request_id) else { continue };
            match read_state.result {
                Ok(index) => self.reads_waiting_apply.push((index, run)),
                Err(error) => run(Err(read_error(error))),
            }
        }
        self.core.advance(ready);
        self.serve_reads();
        self.maybe_snapshot();
    }

    /// A deposed leader's pending proposals may still be committed by the next leader, or
    /// overwritten: answer now, with "outcome unknown", rather than leave clients waiting.
    fn fail_proposals_on_step_down(&mut self) {
        if !self.proposals.is_empty() {
            info!("[NODE {}] no longer leader: {} pending proposals end with an unknown outcome", self.id, self.proposals.len());
        }
        for (_, (_, reply)) in std::mem::take(&mut self.proposals) {
            let _ = reply.send(Err(NodeError::OutcomeUnknown));
        }
    }

    fn restore_snapshot(&mut self, meta: SnapshotMeta, data: &[u8]) {
        if let Err(problem) = self.state_machine.restore(data) {
            // The bytes were checked by the transport and storage; a bad image here is a bug.
            panic!("[NODE {}] cannot restore snapshot at {}: {problem}", self.id, meta.last_included_index);
        }
        info!("[NODE {}] installed snapshot from the leader at index {} (term {})", self.id, meta.last_included_index, meta.last_included_term);
        self.snapshot_index = meta.last_included_index;
        // Proposals inside the snapshot: we cannot tell whether ours was the entry applied.
        let covered: Vec<LogIndex> = self.proposals.range(..=meta.last_included_index).map(|(index, _)| *index).collect();
        for index in covered {
            let (_, reply) = self.proposals.remove(&index).expect("listed above");
            let _ = reply.send(Err(NodeError::OutcomeUnknown));
        }
    }

    /// Contract step 6: apply, and answer the proposer if this entry is its (same term).
    fn apply(&mut self, entry: &Entry) {
        let output = self.state_machine.apply(entry);
        if let Some((term, reply)) = self.proposals.remove(&entry.index) {
            let result = if term == entry.term { Ok((entry.index, output)) } else { Err(NodeError::Dropped) };
            let _ = reply.send(result);
        }
    }

    /// Contract step 7: a confirmed read runs once the state machine caught up to it.
    fn serve_reads(&mut self) {
        let applied = self.state_machine.applied_index();
        let waiting = std::mem::take(&mut self.reads_waiting_apply);
        for (index, run) in waiting {
            if index <= applied {
                run(Ok((applied, &self.state_machine)));
            } else {
                self.reads_waiting_apply.push((index, run));
            }
        }
    }

    /// §7: snapshot once enough was applied since the last one. The state machine's copy is
    /// taken here; the image is built on a thread of its own, so neither this task nor the
    /// storage thread stalls for it (a large map takes longer to serialize than an election
    /// timeout); then the storage thread saves it and the core drops its log prefix.
    fn maybe_snapshot(&mut self) {
        let threshold = self.config.snapshot_threshold_entries;
        let applied = self.state_machine.applied_index();
        if threshold == 0 || self.snapshot_in_progress || applied.0 < self.snapshot_index.0 + threshold {
            return;
        }
        let Some(term) = self.core.entry(applied).map(|entry| entry.term) else { return };
        let meta = SnapshotMeta { last_included_index: applied, last_included_term: term };
        let make = self.state_machine.snapshot_job();
        self.snapshot_in_progress = true;
        self.snapshot_index = applied;
        if !self.storage.has_thread() {
            // Inline storage (deterministic tests): build it here, in order.
            let image = build_image(self.id, meta, make, &self.snapshot_stager);
            self.on_snapshot_image(image);
            return;
        }
        let images = self.snapshot_images.clone();
        let stager = self.snapshot_stager.clone();
        let id = self.id;
        let build = move || {
            let _ = images.send(build_image(id, meta, make, &stager));
        };
        if let Err(error) = std::thread::Builder::new().name(format!("keel-snapshot-{}", self.id)).spawn(build) {
            error!("[NODE {}] cannot start a snapshot thread ({error}); will retry at the next threshold", self.id);
            self.snapshot_in_progress = false;
        }
    }

    /// The image is ready: save it, unless a newer snapshot from the leader was handed to
    /// storage meanwhile (saving an older one would move the log's start backwards).
    fn on_snapshot_image(&mut self, image: SnapshotImage) {
        let meta = image.snapshot.meta;
        if self.snapshot_index > meta.last_included_index {
            info!("[NODE {}] dropped our snapshot at {}: the leader's at {} is newer", self.id, meta.last_included_index, self.snapshot_index);
            self.snapshot_in_progress = false;
            return;
        }
        // Compaction can take longer than an election timeout on a large log: never inline.
        self.storage.submit(StorageJob::Compact(image), false, &*self.transport);
    }

    fn log_soft_state(&self, role: Role, term: Term, leader_id: Option<NodeId>) {
        match role {
            Role::Leader => info!("[NODE {}] became LEADER for term {term}", self.id),
            Role::Candidate => info!("[NODE {}] became CANDIDATE for term {term}", self.id),
            Role::PreCandidate => debug!("[NODE {}] pre-vote campaign for term {}", self.id, term.next()),
            Role::Follower => match leader_id {
                Some(leader) => info!("[NODE {}] FOLLOWER in term {term}, leader is node {leader}", self.id),
                None => info!("[NODE {}] FOLLOWER in term {term}, no leader known", self.id),
            },
        }
    }

    fn publish_status(&self, stopped: Option<String>) {
        let status = NodeStatus { raft: self.core.status(), stopped };
        self.status.send_if_modified(|current| {
            if *current == status {
                return false;
            }
            *current = status;
            true
        });
    }
}

/// Builds the image and pre-writes it through the storage's stager, timing both.
fn build_image(id: NodeId, meta: SnapshotMeta, make: Box<dyn FnOnce() -> Vec<u8> + Send>, stager: &SnapshotStager) -> SnapshotImage {
    let started = std::time::Instant::now();
    let snapshot = Snapshot { meta, data: Arc::new(make()) };
    let build_ms = started.elapsed().as_millis();
    if let Err(error) = stager(&snapshot) {
        // `compact` writes it again on the storage thread, and stops the node if that fails too.
        warn!("[NODE {id}] could not pre-write the snapshot at {}: {error}", meta.last_included_index);
    }
    let stage_ms = started.elapsed().as_millis() - build_ms;
    SnapshotImage { snapshot, build_ms, stage_ms }
}

fn read_error(error: ReadError) -> NodeError {
    match error {
        ReadError::NotLeader { leader_hint } => NodeError::NotLeader { leader_hint },
        ReadError::LeadershipLost => NodeError::LeadershipLost,
        ReadError::TooManyPending => NodeError::Overloaded,
    }
}
