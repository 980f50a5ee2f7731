//! `StorageRunner`: production's places for storage jobs — the driver task ("inline") and
//! the storage thread. Which job goes where, and the order rule between them, are the
//! executor's (`executor.rs`); this file only runs what it is given.
//!
//! The driver and the thread share the storage behind a mutex. Between writes it is never
//! contended (one Ready is in flight at a time, and the executor queues an inline job
//! behind a compaction on the thread). Should the thread still hold it, an inline job is
//! queued on the thread instead, behind what is there, so order is kept either way.
use crate::io::{run_storage_job, JobResult, StorageJob};
use crate::storage::Storage;
use crate::transport::Transport;
use keel_core::NodeId;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::error;

/// Where the thread reports finished jobs; the driver passes each to
/// `Executor::storage_done`.
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
}

impl StorageRunner {
    pub fn inline(id: NodeId, storage: impl Storage + Send + 'static) -> StorageRunner {
        StorageRunner { id, place: Place::Inline(Box::new(storage)) }
    }

    /// Starts the storage thread (inside the current tokio runtime). It sends each write's
    /// persisted messages through `transport` the moment the write's sync returns.
    pub fn with_thread<T: Transport>(id: NodeId, storage: impl Storage + Send + 'static, transport: Arc<T>) -> (StorageRunner, DoneReceiver) {
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
                let Ok(mut storage) = shared.lock() else { break };
                let result = run_storage_job(&mut *storage, job, &mut |message| transport.send(message));
                drop(storage);
                let failed = result.is_err();
                // Any error stops the thread, and so the node.
                if done.send(result).is_err() || failed {
                    break;
                }
            }
        };
        let thread = std::thread::Builder::new().name(format!("keel-storage-{id}")).spawn(body).expect("spawning the storage thread");
        (StorageRunner { id, place: Place::Thread { jobs, thread, storage } }, done_receiver)
    }

    pub fn has_thread(&self) -> bool {
        matches!(self.place, Place::Thread { .. })
    }

    /// Runs `job` here; if the thread holds the storage, queues it there (`None`).
    pub fn run_inline(&mut self, job: StorageJob, transport: &dyn Transport) -> Option<JobResult> {
        match &mut self.place {
            Place::Thread { storage, .. } => {
                if let Ok(mut storage) = storage.try_lock() {
                    return Some(run_storage_job(&mut *storage, job, &mut |message| transport.send(message)));
                }
                self.queue(job);
                None
            }
            Place::Inline(storage) => Some(run_storage_job(storage.as_mut(), job, &mut |message| transport.send(message))),
            Place::Stopped => None,
        }
    }

    pub fn queue(&mut self, job: StorageJob) {
        match &self.place {
            Place::Thread { jobs, .. } => {
                if jobs.send(job).is_err() {
                    error!("[NODE {}] storage thread is gone", self.id);
                }
            }
            Place::Inline(_) => unreachable!("no storage thread to queue a job on"),
            Place::Stopped => {}
        }
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
