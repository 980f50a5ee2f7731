//! `SimIo`: the simulator's `Io` for the production executor. The executor is the one that
//! ships (`keel_node::Executor`); only the effects are simulated, on simulated time:
//!
//! - **The driver's inline writes take time.** A sync started on the driver holds the node
//!   for a latency drawn from the seed (`busy_ms`): the simulator delivers nothing to the
//!   node until it ends, as the blocked tokio task would take nothing from its channels.
//!   The writes reach `MemoryStorage` at once but become durable only when the sync ends
//!   (`syncs`), and messages sent after a sync leave only then (`sent`, with their offset):
//!   a crash in between loses both, as a power cut mid-fsync would.
//! - **The storage thread** runs queued jobs one at a time, in order; the simulator picks
//!   when each completes. A job runs whole at its completion (a crash before loses it).
//! - **Snapshot threads** build images; the simulator picks when each is ready.
//!
//! The executor's observations (roles, applied entries, installed snapshots) go to the
//! shared cluster checker, which records the first safety violation.

use crate::invariants::ClusterChecker;
use keel_core::{LogIndex, Message, NodeId};
use keel_kv::{CommandResult, KvStore};
use keel_node::{DurablePoint, Io, JobResult, MemoryStorage, NodeError, Observation, ProposeResult, SnapshotBuild, SnapshotJob, Storage, StorageError, StorageJob};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

/// A client's request as it reaches a node; the executor keeps it until it is answered.
#[derive(Clone, Debug, Hash)]
pub struct Request {
    pub client: usize,
    pub op_seq: u64,
    pub key: String,
    /// `None`: a linearizable read of `key`.
    pub command: Option<keel_kv::Command>,
}

#[derive(Clone, Debug, Hash)]
pub enum Reply {
    Applied(CommandResult),
    Read(Option<Vec<u8>>),
    NotLeader(Option<NodeId>),
    /// Refused or overwritten: it will never take effect.
    NotApplied,
    /// It may or may not take effect (the node lost leadership, or a snapshot covered it).
    Unknown,
}

impl Reply {
    fn for_error(error: &NodeError) -> Reply {
        match error {
            NodeError::NotLeader { leader_hint } => Reply::NotLeader(*leader_hint),
            NodeError::Overloaded | NodeError::TransferInProgress | NodeError::Dropped | NodeError::LeadershipLost => Reply::NotApplied,
            NodeError::Stopped | NodeError::OutcomeUnknown => Reply::Unknown,
        }
    }
}

/// What every node's `SimIo` reports into: the cross-node checker and counters.
#[derive(Default)]
pub struct Shared {
    pub checker: ClusterChecker,
    /// The first safety violation any node's observations showed.
    pub violation: Option<String>,
    pub leaders_elected: u64,
    pub snapshots_installed: u64,
    /// Leadership transfers asked for: the target, and the term it was asked in. One is
    /// completed when its target leads a later term.
    pub transfer_targets: Vec<(NodeId, keel_core::Term)>,
    pub transfers_completed: u64,
    /// When tracing (`trace.rs`): the events the nodes reported in the current step.
    pub trace_events: Option<Vec<(usize, keel_node::NodeEvent)>>,
}

pub struct SimIo {
    node: usize,
    pub storage: MemoryStorage,
    rng: ChaCha8Rng,
    disk_latency_ms_max: u64,
    shared: Rc<RefCell<Shared>>,
    /// Simulated ms the driver has spent in inline syncs during the current input.
    busy_ms: Cell<u64>,
    /// Messages sent during the current input, each with the `busy_ms` it left at.
    pub sent: Vec<(u64, Message)>,
    /// Client answers given during the current input, each with the `busy_ms` it was given at.
    pub replies: Vec<(u64, Request, Reply)>,
    /// Syncs started during the current input: when each ends, and what it covers.
    pub syncs: Vec<(u64, DurablePoint)>,
    /// The storage thread's queue, oldest first; `thread_jobs_new` were queued during the
    /// current input and have no completion scheduled yet.
    pub thread_jobs: VecDeque<StorageJob>,
    pub thread_jobs_new: usize,
    /// Images to build, oldest first; `snapshot_builds_new` as above.
    pub snapshot_builds: VecDeque<SnapshotJob>,
    pub snapshot_builds_new: usize,
    /// Leader writes left unsynced (`Ready::may_defer_sync`).
    pub deferred_writes: u64,
}

impl SimIo {
    pub fn new(node: usize, storage: MemoryStorage, rng: ChaCha8Rng, disk_latency_ms_max: u64, shared: Rc<RefCell<Shared>>) -> SimIo {
        SimIo {
            node,
            storage,
            rng,
            disk_latency_ms_max,
            shared,
            busy_ms: Cell::new(0),
            sent: Vec::new(),
            replies: Vec::new(),
            syncs: Vec::new(),
            thread_jobs: VecDeque::new(),
            thread_jobs_new: 0,
            snapshot_builds: VecDeque::new(),
            snapshot_builds_new: 0,
            deferred_writes: 0,
        }
    }

    pub fn busy_ms(&self) -> u64 {
        self.busy_ms.get()
    }

    /// The current input is over: its time is accounted for.
    pub fn reset_busy(&mut self) {
        self.busy_ms.set(0);
    }

    pub fn disk_latency_ms(&mut self) -> u64 {
        self.rng.gen_range(1..=self.disk_latency_ms_max)
    }

    /// The storage thread's next job, run whole now; its persisted messages leave now.
    pub fn run_thread_job(&mut self) -> Option<(JobResult, Vec<Message>)> {
        let job = self.thread_jobs.pop_front()?;
        let mut sent = Vec::new();
        let result = keel_node::run_storage_job(&mut self.storage, job, &mut |message| sent.push(message));
        Some((result, sent))
    }
}

impl Io<KvStore> for SimIo {
    type Proposal = Request;
    type Read = Request;

    fn answer_proposal(&mut self, request: Request, result: ProposeResult<KvStore>) {
        let reply = match result {
            Ok((_, output)) => Reply::Applied(output),
            Err(error) => Reply::for_error(&error),
        };
        self.replies.push((self.busy_ms(), request, reply));
    }

    fn answer_read(&mut self, request: Request, result: Result<(LogIndex, &KvStore), NodeError>) {
        let reply = match result {
            Ok((_, store)) => Reply::Read(store.get(&request.key).map(<[u8]>::to_vec)),
            Err(error) => Reply::for_error(&error),
        };
        self.replies.push((self.busy_ms(), request, reply));
    }

    fn send(&mut self, message: Message) {
        self.sent.push((self.busy_ms(), message));
    }

    fn run_inline(&mut self, job: StorageJob) -> Option<JobResult> {
        if let StorageJob::Write { entries, sync: false, .. } = &job {
            self.deferred_writes += u64::from(!entries.is_empty());
        }
        let latency_ms = self.disk_latency_ms();
        let mut disk = TimedSync { storage: &mut self.storage, busy_ms: &self.busy_ms, latency_ms, syncs: &mut self.syncs };
        let (busy_ms, sent) = (&self.busy_ms, &mut self.sent);
        Some(keel_node::run_storage_job(&mut disk, job, &mut |message| sent.push((busy_ms.get(), message))))
    }

    fn queue(&mut self, job: StorageJob) {
        self.thread_jobs.push_back(job);
        self.thread_jobs_new += 1;
    }

    fn has_threads(&self) -> bool {
        true
    }

    fn build_snapshot(&mut self, job: SnapshotJob) -> SnapshotBuild {
        self.snapshot_builds.push_back(job);
        self.snapshot_builds_new += 1;
        SnapshotBuild::Started
    }

    fn observe(&mut self, observation: Observation<'_>) {
        let mut shared = self.shared.borrow_mut();
        let shared = &mut *shared;
        let result = match observation {
            Observation::SoftState { soft_state, core } if soft_state.role == keel_core::Role::Leader => {
                shared.leaders_elected += 1;
                let completed = shared.transfer_targets.iter().position(|(target, term)| *target == core.id() && soft_state.term > *term);
                if let Some(position) = completed {
                    shared.transfer_targets.swap_remove(position);
                    shared.transfers_completed += 1;
                }
                shared.checker.on_leader(core, soft_state.term)
            }
            Observation::SoftState { .. } => Ok(()),
            Observation::Event(event) => {
                if let Some(events) = &mut shared.trace_events {
                    events.push((self.node, event.clone()));
                }
                Ok(())
            }
            Observation::Applying(entry) => shared.checker.on_apply(self.node, entry),
            Observation::InstallingSnapshot { meta, applied_index } => {
                shared.snapshots_installed += 1;
                shared.checker.on_snapshot(meta, applied_index)
            }
        };
        if let Err(violation) = result {
            shared.violation.get_or_insert(violation);
        }
    }
}

/// `MemoryStorage` whose `sync` takes simulated time: it only notes what the sync covers and
/// when it ends; the simulator makes that durable then (`MemoryStorage::make_durable`).
struct TimedSync<'a> {
    storage: &'a mut MemoryStorage,
    busy_ms: &'a Cell<u64>,
    latency_ms: u64,
    syncs: &'a mut Vec<(u64, DurablePoint)>,
}

impl Storage for TimedSync<'_> {
    fn initial_state(&self) -> Result<keel_core::RestoredState, StorageError> {
        self.storage.initial_state()
    }
    fn append(&mut self, entries: &[keel_core::Entry]) -> Result<(), StorageError> {
        self.storage.append(entries)
    }
    fn set_hard_state(&mut self, hard_state: &keel_core::HardState) -> Result<(), StorageError> {
        self.storage.set_hard_state(hard_state)
    }
    fn install_snapshot(&mut self, snapshot: &keel_core::Snapshot) -> Result<(), StorageError> {
        self.storage.install_snapshot(snapshot)
    }
    fn compact(&mut self, snapshot: &keel_core::Snapshot) -> Result<(), StorageError> {
        self.storage.compact(snapshot)
    }
    fn write_snapshot_chunk(&mut self, chunk: &keel_core::ReceivedChunk) -> Result<(), StorageError> {
        self.storage.write_snapshot_chunk(chunk)
    }
    fn snapshot_image(&self) -> Option<std::sync::Arc<dyn keel_node::StoredImage>> {
        self.storage.snapshot_image()
    }
    fn snapshot_writer(&self) -> keel_node::SnapshotWriter {
        self.storage.snapshot_writer()
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        let ends_at = self.busy_ms.get() + self.latency_ms;
        self.busy_ms.set(ends_at);
        self.syncs.push((ends_at, self.storage.durable_point()));
        Ok(())
    }
}
