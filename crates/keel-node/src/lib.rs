//! # keel-node: a `RaftCore` that runs
//!
//! - [`Executor`] (`executor.rs`): the one driver of the core's `Ready` contract, generic over
//!   its effects ([`Io`], `io.rs`); production and the simulator both run it.
//! - [`RaftNode`] (`node.rs`): the tokio shell around it: real time, channels, threads.
//! - [`Storage`] (`storage.rs`) with [`MemoryStorage`] and [`FileStorage`] (a segmented,
//!   checksummed write-ahead log), and the [`conformance`] suite both pass.
//! - [`Transport`] (`transport.rs`) with [`MemoryNetwork`] (channels, for tests) and the HTTP
//!   transport (`transport_http.rs`).

pub mod certificates;
pub mod config;
pub mod conformance;
pub mod error;
pub mod events;
pub mod executor;
pub mod io;
pub mod listener;
pub mod node;
pub mod storage;
pub mod storage_file;
pub mod storage_memory;
mod storage_runner;
pub mod tls;
pub mod transport;
pub mod transport_http;
pub mod transport_memory;

pub use config::NodeConfig;
pub use error::{NodeError, Outcome, StartError};
pub use events::{DriverEvent, NodeCounters, NodeEvent};
#[cfg(feature = "fault-injection")]
pub use executor::DriverFaults;
pub use executor::{Consistency, Executor};
pub use io::{build_image, run_storage_job, BuiltSnapshot, Io, JobResult, Observation, ProposeResult, SnapshotBuild, SnapshotJob, StorageDone, StorageJob};
pub use node::{ChangeError, LogEntrySummary, Members, NodeStatus, RaftHandle, RaftNode, ReadFn, EVENTS_BUFFERED, LOG_TAIL_MAX};
pub use storage::{SnapshotWriter, Storage, StorageError, StoredImage};
pub use storage_file::{FileStorage, FileStorageConfig, Recovery, TornTail};
pub use storage_memory::{DurablePoint, MemoryStorage};
pub use transport::{Transport, PROTOCOL_VERSION};
pub use tls::{ConnectionInfo, ConnectionSecurity, PeerTls};
pub use transport_http::{raft_routes, HttpTransport, HttpTransportConfig};
pub use transport_memory::{MemoryNetwork, MemoryTransport};
