//! `RaftNode`: a running node — the tokio shell around the `Executor` (`executor.rs`).
//!
//! One task owns the executor. It maps real time to ticks (one per `tick_ms`), feeds in
//! peer messages, client requests and the completions of the storage and snapshot threads,
//! and after each wake-up lets the executor carry out what the core asks. Everything else —
//! the Ready contract, where writes run, applying, answering clients, snapshots — is the
//! executor's, the same code the simulator runs. What only production has is here: real
//! time, channels, and the threads behind `NodeIo`.
use crate::config::NodeConfig;
use crate::error::{NodeError, StartError};
use crate::events::{NodeCounters, NodeEvent};
use crate::executor::{Consistency, Executor};
use crate::io::{build_image, BuiltSnapshot, Io, JobResult, ProposeResult, SnapshotBuild, SnapshotJob, StorageJob};
use crate::storage::{SnapshotWriter, Storage, StorageError};
use crate::storage_runner::{DoneReceiver, StorageRunner};
use crate::transport::Transport;
use keel_core::{LogIndex, Membership, MembershipChange, MembershipError, Message, NodeId, StateMachine, Status, Term, TransferError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{error, info};

/// Messages and requests handled per wake-up before the driver writes and sends (a bound on
/// batch size, so one flood cannot starve ticks).
const INPUTS_PER_TURN_MAX: usize = 4096;

/// Runs a read against the state machine as of the applied index it is given.
pub type ReadFn<SM> = Box<dyn FnOnce(Result<(LogIndex, &SM), NodeError>) + Send>;

enum Request<SM: StateMachine> {
    Propose { command: Vec<u8>, reply: oneshot::Sender<ProposeResult<SM>> },
    Read { consistency: Consistency, run: ReadFn<SM> },
    ChangeMembership { change: MembershipChange, reply: oneshot::Sender<Result<(LogIndex, Term), MembershipError>> },
    TransferLeadership { target: Option<NodeId>, reply: oneshot::Sender<Result<NodeId, TransferError>> },
    Members { reply: oneshot::Sender<Members> },
    TermAt { index: LogIndex, reply: oneshot::Sender<Option<Term>> },
    LogTail { count: usize, reply: oneshot::Sender<Vec<LogEntrySummary>> },
}

/// At most this many entries in one `RaftHandle::log_tail`.
pub const LOG_TAIL_MAX: usize = 64;

/// One log entry as the live view shows it: where, in which term, and what kind.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LogEntrySummary {
    pub index: LogIndex,
    pub term: Term,
    /// `command`, `noop` or `config`.
    pub kind: &'static str,
}

/// The configuration in force and, on the leader, how far each member's log has come.
#[derive(Clone, Debug)]
pub struct Members {
    pub membership: Arc<Membership>,
    /// Leader only: each other member's match index and whether it answered within the last
    /// election timeout.
    pub progress: BTreeMap<NodeId, (LogIndex, bool)>,
    pub last_log_index: LogIndex,
    pub role: keel_core::Role,
}

/// Why a membership change or a leadership transfer did not happen, or may not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeError {
    /// The core refused the change; nothing was appended.
    Refused(MembershipError),
    /// The transfer was refused; nothing changed.
    TransferRefused(TransferError),
    /// Proposed, then overwritten by another leader's log: it never took effect.
    Dropped,
    /// Proposed, but not seen to complete in time: it may yet, or may not.
    OutcomeUnknown,
    Node(NodeError),
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::Refused(error) => write!(f, "{error}"),
            ChangeError::TransferRefused(error) => write!(f, "{error}"),
            ChangeError::Dropped => write!(f, "the change was overwritten by a new leader and did not take effect"),
            ChangeError::OutcomeUnknown => write!(f, "the change was proposed but not seen to complete; check the members"),
            ChangeError::Node(error) => write!(f, "{error}"),
        }
    }
}

/// A node's state for status endpoints, updated by the driver after every turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub raft: Status,
    /// Peer messages refused as invalid since start (`keel_core::StepError`).
    pub peer_messages_refused: u64,
    /// Set once the node stopped, with the reason.
    pub stopped: Option<String>,
    /// The configuration in force (thesis §4.1), and where it was appended.
    pub membership: Arc<Membership>,
    pub membership_index: LogIndex,
    /// This node was removed from the cluster (`Executor::is_removed`).
    pub removed: bool,
    /// Elections, votes, snapshots... since start (`events.rs`).
    pub counters: NodeCounters,
}

/// The client side of a running node; cheap to clone.
pub struct RaftHandle<SM: StateMachine> {
    id: NodeId,
    requests: mpsc::Sender<Request<SM>>,
    status: watch::Receiver<NodeStatus>,
    shutdown: Arc<watch::Sender<bool>>,
    events: broadcast::Sender<NodeEvent>,
}

/// Events a listener may fall behind by before it loses the oldest.
pub const EVENTS_BUFFERED: usize = 1024;

impl<SM: StateMachine> Clone for RaftHandle<SM> {
    fn clone(&self) -> Self {
        RaftHandle { id: self.id, requests: self.requests.clone(), status: self.status.clone(), shutdown: self.shutdown.clone(), events: self.events.clone() }
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

    /// Proposes a membership change and waits until it is complete: committed, and for a
    /// change of voters, the joint configuration left and C_new committed (thesis §4.3).
    /// Callers bound the wait with a timeout (then the outcome is unknown). Returns where
    /// the configuration that completed it was appended.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<LogIndex, ChangeError> {
        let (reply, response) = oneshot::channel();
        self.submit(Request::ChangeMembership { change, reply }).map_err(ChangeError::Node)?;
        let (index, term) = response.await.map_err(|_| ChangeError::Node(NodeError::Stopped))?.map_err(ChangeError::Refused)?;
        let mut status = self.status.clone();
        let done = |status: &NodeStatus| {
            status.stopped.is_some()
                || (status.raft.commit_index >= index && !status.membership.is_joint() && status.membership_index >= index && status.membership_index <= status.raft.commit_index)
        };
        let status = status.wait_for(done).await.map_err(|_| ChangeError::Node(NodeError::Stopped))?.clone();
        if status.stopped.is_some() {
            return Err(ChangeError::Node(NodeError::Stopped));
        }
        // Committed at `index` — but was it our entry, or another leader's?
        let (reply, response) = oneshot::channel();
        self.submit(Request::TermAt { index, reply }).map_err(ChangeError::Node)?;
        match response.await.map_err(|_| ChangeError::Node(NodeError::Stopped))? {
            Some(at) if at == term => Ok(status.membership_index),
            Some(_) => Err(ChangeError::Dropped),
            None => Err(ChangeError::OutcomeUnknown), // Compacted away already: cannot tell.
        }
    }

    /// Starts handing leadership to `target` (or, with none, the most caught-up voter);
    /// returns the target. The transfer ends when the target leads (watch the status) or
    /// is abandoned after an election timeout.
    pub async fn transfer_leadership(&self, target: Option<NodeId>) -> Result<NodeId, ChangeError> {
        let (reply, response) = oneshot::channel();
        self.submit(Request::TransferLeadership { target, reply }).map_err(ChangeError::Node)?;
        response.await.map_err(|_| ChangeError::Node(NodeError::Stopped))?.map_err(ChangeError::TransferRefused)
    }

    /// The configuration and, on the leader, each member's progress.
    pub async fn members(&self) -> Result<Members, NodeError> {
        let (reply, response) = oneshot::channel();
        self.submit(Request::Members { reply })?;
        response.await.map_err(|_| NodeError::Stopped)
    }

    /// The last `count` (at most `LOG_TAIL_MAX`) entries of the log, oldest first; fewer
    /// when the log, since the snapshot, is shorter.
    pub async fn log_tail(&self, count: usize) -> Result<Vec<LogEntrySummary>, NodeError> {
        let (reply, response) = oneshot::channel();
        self.submit(Request::LogTail { count: count.min(LOG_TAIL_MAX), reply })?;
        response.await.map_err(|_| NodeError::Stopped)
    }

    /// Every event from now on (`events.rs`); a receiver that falls more than
    /// `EVENTS_BUFFERED` behind loses the oldest (and is told how many).
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
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
    pub fn start<S, T>(config: NodeConfig, storage: S, state_machine: SM, transport: T) -> Result<RaftNode<SM>, StartError>
    where
        S: Storage + Send + 'static,
        T: Transport,
    {
        config.validate().map_err(StartError::Config)?;
        let restored = storage.initial_state().map_err(StartError::Storage)?;
        let image = storage.snapshot_image();
        let writer: Arc<SnapshotWriter> = Arc::new(storage.snapshot_writer());
        let transport = Arc::new(transport);
        let (storage, storage_done) = if config.storage_on_thread {
            StorageRunner::with_thread(config.id, storage, transport.clone())
        } else {
            (StorageRunner::inline(config.id, storage), mpsc::unbounded_channel().1)
        };
        let (snapshot_images, images) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(EVENTS_BUFFERED);
        let io = NodeIo { id: config.id, transport, storage, snapshot_images, writer, events: events.clone() };
        let executor = Executor::new(&config, restored, image, state_machine, io)?;
        let (inbox, inbox_receiver) = mpsc::channel(config.inbox_messages_max);
        let (requests, request_receiver) = mpsc::channel(config.requests_queued_max);
        let initial = status_of(&executor, None);
        let (status_sender, status) = watch::channel(initial);
        let (shutdown, shutdown_receiver) = watch::channel(false);
        let shell = Shell { executor, status: status_sender, tick_ms: config.tick_ms };
        let inputs = Inputs { inbox: inbox_receiver, requests: request_receiver, storage_done, images, shutdown: shutdown_receiver };
        let task = tokio::spawn(shell.run(inputs));
        let handle = RaftHandle { id: config.id, requests, status, shutdown: Arc::new(shutdown), events };
        Ok(RaftNode { handle, inbox, task })
    }
}

/// Production's effects: the transport, the storage runner, and a thread per snapshot image.
struct NodeIo<T: Transport> {
    id: NodeId,
    /// Shared with the storage thread, which sends acknowledgements (contract step 5).
    transport: Arc<T>,
    storage: StorageRunner,
    /// Where a snapshot thread says it wrote its image.
    snapshot_images: mpsc::UnboundedSender<Result<BuiltSnapshot, StorageError>>,
    writer: Arc<SnapshotWriter>,
    /// `RaftHandle::events` listens here.
    events: broadcast::Sender<NodeEvent>,
}

impl<SM: StateMachine, T: Transport> Io<SM> for NodeIo<T> {
    type Proposal = oneshot::Sender<ProposeResult<SM>>;
    type Read = ReadFn<SM>;

    fn answer_proposal(&mut self, proposal: Self::Proposal, result: ProposeResult<SM>) {
        let _ = proposal.send(result); // The client may have given up waiting.
    }

    fn answer_read(&mut self, read: ReadFn<SM>, result: Result<(LogIndex, &SM), NodeError>) {
        read(result);
    }

    fn send(&mut self, message: Message) {
        self.transport.send(message);
    }

    fn membership_changed(&mut self, membership: &Membership) {
        self.transport.set_peer_addresses(&membership.addresses);
    }

    fn observe(&mut self, observation: crate::io::Observation<'_>) {
        if let crate::io::Observation::Event(event) = observation {
            let _ = self.events.send(event.clone()); // No listener: nobody to tell.
        }
    }

    fn run_inline(&mut self, job: StorageJob) -> Option<JobResult> {
        self.storage.run_inline(job, &*self.transport)
    }

    fn queue(&mut self, job: StorageJob) {
        self.storage.queue(job);
    }

    fn has_threads(&self) -> bool {
        self.storage.has_thread()
    }

    fn build_snapshot(&mut self, job: SnapshotJob) -> SnapshotBuild {
        if !self.storage.has_thread() {
            // Inline storage (deterministic tests): build it here, in order.
            return SnapshotBuild::Built(build_image(job, &self.writer));
        }
        let (images, writer) = (self.snapshot_images.clone(), self.writer.clone());
        let build = move || {
            let _ = images.send(build_image(job, &writer));
        };
        match std::thread::Builder::new().name(format!("keel-snapshot-{}", self.id)).spawn(build) {
            Ok(_) => SnapshotBuild::Started,
            Err(error) => SnapshotBuild::Failed(format!("cannot start a snapshot thread: {error}")),
        }
    }
}

impl LogEntrySummary {
    /// The last `count` entries of `core`'s log, oldest first (fewer when the log, since the
    /// snapshot, is shorter): the live view's rows and the simulator's trace both draw these.
    pub fn tail(core: &keel_core::RaftCore, count: usize) -> Vec<LogEntrySummary> {
        log_tail(core, count)
    }
}

fn log_tail(core: &keel_core::RaftCore, count: usize) -> Vec<LogEntrySummary> {
    if count == 0 {
        return Vec::new();
    }
    let status = core.status();
    let first = status.last_log_index.0.saturating_sub(count as u64 - 1).max(status.snapshot_index.0 + 1).max(1);
    (first..=status.last_log_index.0)
        .filter_map(|index| core.entry(LogIndex(index)))
        .map(|entry| {
            let kind = match entry.kind {
                keel_core::EntryKind::Command(_) => "command",
                keel_core::EntryKind::Noop => "noop",
                keel_core::EntryKind::Config(_) => "config",
            };
            LogEntrySummary { index: entry.index, term: entry.term, kind }
        })
        .collect()
}

fn status_of<SM: StateMachine, I: Io<SM>>(executor: &Executor<SM, I>, stopped: Option<String>) -> NodeStatus {
    let core = executor.core();
    NodeStatus {
        counters: executor.counters(),
        raft: core.status(),
        peer_messages_refused: executor.refused_messages(),
        stopped,
        membership: executor.membership().clone(),
        membership_index: core.membership_index(),
        removed: executor.is_removed(),
    }
}

/// What wakes the driver task.
struct Inputs<SM: StateMachine> {
    inbox: mpsc::Receiver<Message>,
    requests: mpsc::Receiver<Request<SM>>,
    storage_done: DoneReceiver,
    images: mpsc::UnboundedReceiver<Result<BuiltSnapshot, StorageError>>,
    shutdown: watch::Receiver<bool>,
}

struct Shell<SM: StateMachine, T: Transport> {
    executor: Executor<SM, NodeIo<T>>,
    status: watch::Sender<NodeStatus>,
    tick_ms: u64,
}

impl<SM: StateMachine, T: Transport> Shell<SM, T> {
    async fn run(mut self, mut inputs: Inputs<SM>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.tick_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop_reason = loop {
            tokio::select! {
                biased;
                _ = inputs.shutdown.changed() => break "shut down".to_string(),
                done = inputs.storage_done.recv(), if self.executor.io().storage.has_thread() => match done {
                    Some(done) => self.executor.storage_done(done),
                    None => break "storage thread ended".to_string(),
                },
                _ = ticker.tick() => self.executor.tick(),
                Some(image) = inputs.images.recv() => self.executor.snapshot_built(image),
                Some(message) = inputs.inbox.recv() => {
                    let _ = self.executor.step(message);
                    for _ in 0..INPUTS_PER_TURN_MAX {
                        let Ok(message) = inputs.inbox.try_recv() else { break };
                        let _ = self.executor.step(message);
                    }
                }
                Some(request) = inputs.requests.recv() => {
                    let concurrent = self.executor.pending_proposals() > 0;
                    self.take_requests(request, &mut inputs.requests);
                    // Group commit at the proposal: with other proposals in flight, client
                    // tasks woken alongside this one (and requests the I/O driver is about
                    // to deliver) get one turn to queue theirs, so a single Ready carries
                    // them all. A lone client does not wait for that turn. (Test:
                    // `proposals_woken_together_share_one_append`.)
                    if concurrent {
                        tokio::task::yield_now().await;
                        if let Ok(request) = inputs.requests.try_recv() {
                            self.take_requests(request, &mut inputs.requests);
                        }
                    }
                }
            }
            if let Err(reason) = self.executor.drive() {
                break reason;
            }
            self.publish_status(None);
        };
        self.stop(stop_reason);
        // Wait for the storage thread to finish its last write and release the data
        // directory, so a restart in the same process finds it unlocked.
        self.executor.io_mut().storage.stop().await;
    }

    fn stop(&mut self, reason: String) {
        if reason == "shut down" {
            info!("[NODE {}] stopped: {reason}", self.executor.core().id());
        } else {
            error!("[NODE {}] stopping: {reason}", self.executor.core().id());
        }
        self.executor.stop();
        self.publish_status(Some(reason));
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
            Request::Propose { command, reply } => self.executor.propose(command, reply),
            Request::Read { consistency, run } => self.executor.read(consistency, run),
            Request::ChangeMembership { change, reply } => {
                let _ = reply.send(self.executor.propose_membership(change));
            }
            Request::TransferLeadership { target, reply } => {
                let core = self.executor.core();
                let result = if core.role() != keel_core::Role::Leader {
                    Err(TransferError::NotLeader { leader_hint: core.leader_id() })
                } else {
                    target.or_else(|| self.best_transfer_target()).ok_or(TransferError::NoTarget).and_then(|target| self.executor.transfer_leadership(target).map(|()| target))
                };
                let _ = reply.send(result);
            }
            Request::Members { reply } => {
                let core = self.executor.core();
                let progress = core.replication_progress().into_iter().map(|(id, match_index, active)| (id, (match_index, active))).collect();
                let members = Members { membership: self.executor.membership().clone(), progress, last_log_index: core.status().last_log_index, role: core.role() };
                let _ = reply.send(members);
            }
            Request::TermAt { index, reply } => {
                let _ = reply.send(self.executor.core().entry(index).map(|entry| entry.term));
            }
            Request::LogTail { count, reply } => {
                let _ = reply.send(log_tail(self.executor.core(), count));
            }
        }
    }

    /// The voter (not us) with the longest log that answered lately: the quickest to bring
    /// up to date for a transfer.
    fn best_transfer_target(&self) -> Option<NodeId> {
        let core = self.executor.core();
        let voters = core.membership().voters.clone();
        core.replication_progress().into_iter().filter(|(id, _, active)| *active && voters.contains(id)).max_by_key(|(_, match_index, _)| *match_index).map(|(id, _, _)| id)
    }

    fn publish_status(&self, stopped: Option<String>) {
        let status = status_of(&self.executor, stopped);
        self.status.send_if_modified(|current| {
            if *current == status {
                return false;
            }
            *current = status;
            true
        });
    }
}
