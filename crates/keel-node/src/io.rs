//! What the Ready executor (`executor.rs`) asks of its surroundings, and the storage work
//! both drivers share.
//!
//! The executor decides *what* happens and in which order; an [`Io`] decides *where* and
//! *when*. Production (`node.rs`) runs jobs on the driver task, a storage thread and
//! short-lived snapshot threads, on real time. The simulator (`keel-sim`) runs the same jobs
//! against `MemoryStorage` on simulated time, and chooses from its seed when a thread's job
//! completes, how long a sync takes, and when a crash cuts it short. Every storage job, in
//! both, goes through [`run_storage_job`], and every snapshot image through [`build_image`].

use crate::error::NodeError;
use crate::storage::{SnapshotWriter, Storage, StorageError, StoredImage};
use keel_core::{Entry, HardState, LogIndex, Message, RaftCore, ReceivedChunk, Snapshot, SnapshotMeta, SoftState, StateMachine};
use std::sync::Arc;

pub use crate::storage::SnapshotJob;

/// What a proposer is answered: the entry's index and the state machine's output, or why
/// it failed (and whether it may still have been applied: `NodeError::outcome`).
pub type ProposeResult<SM> = Result<(LogIndex, <SM as StateMachine>::Output), NodeError>;

/// Work for the storage (contract step 4, and compaction after a snapshot).
pub enum StorageJob {
    /// `sync` false: leave the write in the OS's cache (`Ready::may_defer_sync`).
    /// `persisted_messages` (contract step 5) are sent once the write is durable.
    Write { received_chunks: Vec<ReceivedChunk>, snapshot: Option<Snapshot>, entries: Vec<Entry>, hard_state: Option<HardState>, sync: bool, persisted_messages: Vec<Message> },
    /// Our own snapshot, its image already written: make it the stored one, then drop the
    /// log it covers.
    Compact(BuiltSnapshot),
}

impl StorageJob {
    pub fn is_compaction(&self) -> bool {
        matches!(self, StorageJob::Compact(_))
    }
}

pub enum StorageDone {
    /// `image`: the stored snapshot's image, when the write installed one.
    Written { image: Option<Arc<dyn StoredImage>> },
    Compacted { built: BuiltSnapshot, image: Arc<dyn StoredImage>, compact_ms: u128 },
}

pub type JobResult = Result<StorageDone, StorageError>;

/// Our own snapshot, its image written by the storage's `snapshot_writer`.
pub struct BuiltSnapshot {
    pub snapshot: Snapshot,
    /// For the log line: how long writing the image took.
    pub build_ms: u128,
}

/// How `Io::build_snapshot` went.
pub enum SnapshotBuild {
    /// Built here and now (no threads): hand it straight back.
    Built(Result<BuiltSnapshot, StorageError>),
    /// Building elsewhere; the image arrives through `Executor::snapshot_built`.
    Started,
    /// Could not start (no thread could be spawned): try again at the next threshold.
    Failed(String),
}

/// Moments of a node's life the executor reports, for checkers and observers. The
/// simulator's cluster-wide safety checks run on these; production ignores them (its logs
/// say the same).
pub enum Observation<'a> {
    /// A Ready changed the role, term or leader (`core` as it is when the Ready is taken).
    SoftState { soft_state: SoftState, core: &'a RaftCore },
    /// About to apply this committed entry (contract step 6).
    Applying(&'a Entry),
    /// A decision or moment worth showing (`events.rs`).
    Event(&'a crate::events::NodeEvent),
    /// About to restore the state machine, applied up to `applied_index`, from the leader's
    /// snapshot (contract step 4).
    InstallingSnapshot { meta: SnapshotMeta, applied_index: LogIndex },
}

/// The effects of the executor. Every method must return quickly: the executor calls them
/// on the driver, between inputs.
pub trait Io<SM: StateMachine> {
    /// A waiting proposer, as the executor keeps it until its entry is applied (production:
    /// a channel back to the client's task; the simulator: the request itself).
    type Proposal;
    /// A waiting read: what to read, and where its answer goes.
    type Read;
    /// Contract step 6: a proposer's answer.
    fn answer_proposal(&mut self, proposal: Self::Proposal, result: ProposeResult<SM>);
    /// Contract step 7: runs a read against the state machine, applied up to the index given.
    fn answer_read(&mut self, read: Self::Read, result: Result<(LogIndex, &SM), NodeError>);
    /// Contract steps 3 and 5: a message to a peer, best effort.
    fn send(&mut self, message: Message);
    /// Runs `job` now, on the driver, and returns its result; or, if the storage is busy on
    /// the thread, queues it there and returns `None` (its result then comes back through
    /// `Executor::storage_done`, like every queued job's).
    fn run_inline(&mut self, job: StorageJob) -> Option<JobResult>;
    /// Queues `job` on the storage thread, behind the jobs already there. Only called when
    /// `has_threads()`.
    fn queue(&mut self, job: StorageJob);
    /// Whether there is a storage thread (and snapshot threads). Without, every job runs
    /// inline and every image is built inline (`NodeConfig::storage_on_thread` false).
    fn has_threads(&self) -> bool;
    /// Builds the image of `job` where it will not hold up the driver.
    fn build_snapshot(&mut self, job: SnapshotJob) -> SnapshotBuild;
    fn observe(&mut self, _observation: Observation<'_>) {}
    /// The configuration in force changed (or the node started): where its members
    /// listen, for the transport.
    fn membership_changed(&mut self, _membership: &keel_core::Membership) {}
}

/// Contract step 4 for one job: received chunks, snapshot, entries, hard state, then one sync for all of them
/// (and for any write left unsynced before); step 5, `send`, once the sync returned.
pub fn run_storage_job(storage: &mut (impl Storage + ?Sized), job: StorageJob, send: &mut dyn FnMut(Message)) -> JobResult {
    match job {
        StorageJob::Write { received_chunks, snapshot, entries, hard_state, sync, persisted_messages } => {
            for chunk in &received_chunks {
                storage.write_snapshot_chunk(chunk)?;
            }
            let mut image = None;
            if let Some(snapshot) = &snapshot {
                storage.install_snapshot(snapshot)?;
                image = storage.snapshot_image();
            }
            storage.append(&entries)?;
            if let Some(hard_state) = &hard_state {
                storage.set_hard_state(hard_state)?;
            }
            if sync {
                storage.sync()?;
            }
            for message in persisted_messages {
                send(message);
            }
            Ok(StorageDone::Written { image })
        }
        StorageJob::Compact(built) => {
            let started = std::time::Instant::now();
            storage.compact(&built.snapshot)?;
            storage.sync()?;
            let image = storage.snapshot_image().expect("a compacted storage has a snapshot");
            Ok(StorageDone::Compacted { built, image, compact_ms: started.elapsed().as_millis() })
        }
    }
}

/// Writes the image of `job` through the storage's writer, timing it.
pub fn build_image(job: SnapshotJob, writer: &SnapshotWriter) -> Result<BuiltSnapshot, StorageError> {
    let started = std::time::Instant::now();
    let snapshot = writer(job)?;
    Ok(BuiltSnapshot { snapshot, build_ms: started.elapsed().as_millis() })
}
