//! `StorageRunner`: where a node's storage jobs run — on the driver task ("inline") or on
//! the storage thread — and the one rule that keeps them in the order the driver issued
//! them. Which jobs the driver asks to run inline is its choice (see `node.rs`'s module
//! doc); this file makes sure the choice never reorders storage.
//!
//! The driver and the thread share the storage behind a mutex. Between writes it is never
//! contended (one Ready is in flight at a time); a compaction on the thread can hold it for
//! a while. Order:
//! 1. A job asked to run inline runs at once, unless a compaction is queued or running on
//!    the thread (`compacting`): then it queues behind it. Without this, a write issued
//!    after a compaction could take the lock before the thread does and reach storage
//!    first — e.g. a leader's snapshot installed, then our own older one saved over it.
//! 2. Every other job queues on the thread, which runs its jobs in order.
//! 3. Completions are handed back in the order they finished: inline ones at once, the
//!    thread's as the driver receives them (`push_done`).
use crate::storage::{Storage, StorageError};
use crate::transport::Transport;
use keel_core::{Entry, HardState, Message, NodeId, Snapshot};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::error;

pub(crate) enum StorageJob {
    /// `sync` false: leave the write in the OS's cache (`Ready::may_defer_sync`).
    /// `persisted_messages` (contract step 5) are sent once the write is durable.
    Write { snapshot: Option<Snapshot>, entries: Vec<Entry>, hard_state: Option<HardState>, sync: bool, persisted_messages: Vec<Message> },
    /// Our own snapshot, its image already built: save it, then drop the log it covers.
    Compact(SnapshotImage),
}

/// A snapshot image built off the driver and the storage thread (see `maybe_snapshot`).
pub(crate) struct SnapshotImage {
    pub snapshot: Snapshot,
    /// For the log line: how long building and pre-writing the image took.
    pub build_ms: u128,
    pub stage_ms: u128,
}

pub(crate) enum StorageDone {
    Written,
    Compacted { image: SnapshotImage, compact_ms: u128 },
}

pub(crate) type JobResult = Result<StorageDone, StorageError>;

/// Where the thread reports finished jobs; the driver passes each to `push_done`.
pub(crate) type DoneReceiver = mpsc::UnboundedReceiver<JobResult>;

type SharedStorage = Arc<std::sync::Mutex<dyn Storage + Send>>;

enum Place {
    Thread { jobs: std::sync::mpsc::Sender<StorageJob>, thread: std::thread::JoinHandle<()>, storage: SharedStorage },
    /// Every job on the driver (`NodeConfig::storage_on_thread` false: paused-time tests).
    Inline(Box<dyn Storage + Send>),
    /// After the driver stopped.
    Stopped,
}

pub(crate) struct StorageRunner {
    id: NodeId,
    place: Place,
    /// A compaction is queued or running on the thread (rule 1 of the module doc).
    compacting: bool,
    /// Finished jobs not yet handled by the driver, oldest first.
    completed: VecDeque<JobResult>,
}

impl StorageRunner {
    pub fn inline(id: NodeId, storage: impl Storage + Send + 'static) -> StorageRunner {
        StorageRunner { id, place: Place::Inline(Box::new(storage)), compacting: false, completed: VecDeque::new() }
    }

    /// Starts the storage thread (inside the current tokio runtime).
    pub fn with_thread<T: Transport>(id: NodeId, storage: impl Storage + Send + 'static, transport: Arc<T>) -> (StorageRunner, DoneReceiver) {
        StorageRunner::with_gated_thread(id, storage, transport, None)
    }

    /// `gate`: if set, the thread takes one token from it before each job (tests hold jobs
    /// in the queue with it).
    fn with_gated_thread<T: Transport>(id: NodeId, storage: impl Storage + Send + 'static, transport: Arc<T>, gate: Option<std::sync::mpsc::Receiver<()>>) -> (StorageRunner, DoneReceiver) {
        let storage: SharedStorage = Arc::new(std::sync::Mutex::new(storage));
        let (jobs, job_receiver) = std::sync::mpsc::channel::<StorageJob>();
        let (done, done_receiver) = mpsc::unbounded_channel();
        // Transports may spawn tasks (the memory transport's delays), so the thread runs
        // inside the driver's runtime.
        let runtime = tokio::runtime::Handle::current();
        let shared = storage.clone();
        let body = move || {
            let _runtime = runtime.enter();
            for job in job_receiver {
                if gate.as_ref().is_some_and(|gate| gate.recv().is_err()) {
                    break;
                }
                let Ok(mut storage) = shared.lock() else { break };
                let result = run_storage_job(&mut *storage, job, &*transport);
                drop(storage);
                let failed = result.is_err();
                // Any error stops the thread, and so the node.
                if done.send(result).is_err() || failed {
                    break;
                }
            }
        };
        let thread = std::thread::Builder::new().name(format!("keel-storage-{id}")).spawn(body).expect("spawning the storage thread");
        let runner = StorageRunner { id, place: Place::Thread { jobs, thread, storage }, compacting: false, completed: VecDeque::new() };
        (runner, done_receiver)
    }

    pub fn has_thread(&self) -> bool {
        matches!(self.place, Place::Thread { .. })
    }

    /// Runs `job` here if `inline` and rule 1 allows, else queues it on the thread.
    pub fn submit(&mut self, job: StorageJob, inline: bool, transport: &dyn Transport) {
        let inline = inline && !self.compacting;
        self.compacting |= matches!(job, StorageJob::Compact(_));
        match &mut self.place {
            Place::Thread { jobs, storage, .. } => {
                if inline {
                    if let Ok(mut storage) = storage.try_lock() {
                        self.completed.push_back(run_storage_job(&mut *storage, job, transport));
                        return;
                    }
                }
                if jobs.send(job).is_err() {
                    error!("[NODE {}] storage thread is gone", self.id);
                }
            }
            Place::Inline(storage) => self.completed.push_back(run_storage_job(storage.as_mut(), job, transport)),
            Place::Stopped => {}
        }
    }

    /// A completion: one the thread reported, or a Ready that had nothing to write.
    pub fn push_done(&mut self, result: JobResult) {
        self.completed.push_back(result);
    }

    /// The oldest completion the driver has not handled yet.
    pub fn pop_done(&mut self) -> Option<JobResult> {
        let result = self.completed.pop_front()?;
        if matches!(result, Ok(StorageDone::Compacted { .. })) {
            self.compacting = false;
        }
        Some(result)
    }

    /// Waits for the thread to finish its last job and release the storage (so a restart
    /// in the same process finds the data directory unlocked); later jobs are dropped.
    pub async fn stop(&mut self) {
        if let Place::Thread { jobs, thread, storage } = std::mem::replace(&mut self.place, Place::Stopped) {
            drop((jobs, storage));
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Contract step 4: snapshot, entries, hard state, then one sync for all of them and for
/// any write left unsynced before; step 5 once it returned.
fn run_storage_job<S: Storage + ?Sized>(storage: &mut S, job: StorageJob, transport: &dyn Transport) -> JobResult {
    match job {
        StorageJob::Write { snapshot, entries, hard_state, sync, persisted_messages } => {
            if let Some(snapshot) = &snapshot {
                storage.install_snapshot(snapshot)?;
            }
            storage.append(&entries)?;
            if let Some(hard_state) = &hard_state {
                storage.set_hard_state(hard_state)?;
            }
            if sync {
                storage.sync()?;
            }
            for message in persisted_messages {
                transport.send(message);
            }
            Ok(StorageDone::Written)
        }
        StorageJob::Compact(image) => {
            let started = std::time::Instant::now();
            storage.compact(&image.snapshot)?;
            storage.sync()?;
            Ok(StorageDone::Compacted { image, compact_ms: started.elapsed().as_millis() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage_memory::MemoryStorage;
    use keel_core::{EntryKind, LogIndex, RestoredState, SnapshotMeta, Term};
    use std::sync::Mutex;

    type Ops = Arc<Mutex<Vec<String>>>;

    /// A `MemoryStorage` that records what reaches it, in order.
    struct Recording {
        inner: MemoryStorage,
        ops: Ops,
    }

    impl Recording {
        fn record(&self, op: String) {
            self.ops.lock().unwrap().push(op);
        }
    }

    impl Storage for Recording {
        fn initial_state(&self) -> Result<RestoredState, StorageError> {
            self.inner.initial_state()
        }
        fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
            self.record(format!("append {:?}", entries.iter().map(|entry| entry.index.0).collect::<Vec<_>>()));
            self.inner.append(entries)
        }
        fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
            self.inner.set_hard_state(hard_state)
        }
        fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
            self.record(format!("install {}", snapshot.meta.last_included_index.0));
            self.inner.install_snapshot(snapshot)
        }
        fn compact(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
            self.record(format!("compact {}", snapshot.meta.last_included_index.0));
            self.inner.compact(snapshot)
        }
        fn sync(&mut self) -> Result<(), StorageError> {
            self.inner.sync()
        }
    }

    struct NoNetwork;

    impl Transport for NoNetwork {
        fn send(&self, _: Message) {}
    }

    fn entries(indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        indexes.map(|index| Entry { term: Term(1), index: LogIndex(index), kind: EntryKind::Noop }).collect()
    }

    fn append(indexes: std::ops::RangeInclusive<u64>) -> StorageJob {
        StorageJob::Write { snapshot: None, entries: entries(indexes), hard_state: None, sync: false, persisted_messages: Vec::new() }
    }

    fn compact(index: u64) -> StorageJob {
        let snapshot = Snapshot { meta: SnapshotMeta { last_included_index: LogIndex(index), last_included_term: Term(1) }, data: Arc::new(Vec::new()) };
        StorageJob::Compact(SnapshotImage { snapshot, build_ms: 0, stage_ms: 0 })
    }

    fn taken(ops: &Ops) -> Vec<String> {
        std::mem::take(&mut *ops.lock().unwrap())
    }

    /// Rule 1: a write the driver would run inline waits behind a compaction still queued
    /// on the thread (the thread is held before each job by the gate), and runs inline again
    /// once that compaction's completion is handed back.
    #[tokio::test]
    async fn an_inline_write_queues_behind_a_pending_compaction() {
        let ops = Ops::default();
        let mut memory = MemoryStorage::new();
        memory.append(&entries(1..=4)).unwrap();
        let storage = Recording { inner: memory, ops: ops.clone() };
        let (gate, gate_receiver) = std::sync::mpsc::channel();
        let (mut runner, mut done) = StorageRunner::with_gated_thread(NodeId(1), storage, Arc::new(NoNetwork), Some(gate_receiver));

        runner.submit(compact(2), false, &NoNetwork);
        runner.submit(append(5..=5), true, &NoNetwork);
        assert_eq!(taken(&ops), Vec::<String>::new(), "the write must not overtake the queued compaction");
        assert!(runner.pop_done().is_none());

        for _ in 0..2 {
            gate.send(()).unwrap();
            let result = done.recv().await.expect("the thread reports each job");
            runner.push_done(result);
        }
        assert_eq!(taken(&ops), ["compact 2", "append [5]"]);
        assert!(matches!(runner.pop_done(), Some(Ok(StorageDone::Compacted { .. }))));
        assert!(matches!(runner.pop_done(), Some(Ok(StorageDone::Written))));

        // The compaction is handled: inline writes run at once again, with no gate token.
        runner.submit(append(6..=6), true, &NoNetwork);
        assert_eq!(taken(&ops), ["append [6]"]);
        assert!(matches!(runner.pop_done(), Some(Ok(StorageDone::Written))));
        drop(gate);
        runner.stop().await;
    }
}
