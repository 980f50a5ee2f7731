//! # keel-node: a `RaftCore` that runs
//!
//! - [`RaftNode`] (`node.rs`): the tokio driver carrying out the core's `Ready` contract.
//! - [`Storage`] (`storage.rs`) with [`MemoryStorage`] and [`FileStorage`] (a segmented,
//!   checksummed write-ahead log), and the [`conformance`] suite both pass.
//! - [`Transport`] (`transport.rs`) with [`MemoryNetwork`] (channels, for tests) and the HTTP
//!   transport (`transport_http.rs`).

pub mod config;
pub mod conformance;
pub mod error;
pub mod node;
pub mod storage;
pub mod storage_file;
pub mod storage_memory;
mod storage_runner;
pub mod transport;
pub mod transport_http;
pub mod transport_memory;

pub use config::NodeConfig;
pub use error::{NodeError, Outcome};
pub use node::{Consistency, NodeStatus, RaftHandle, RaftNode, StartError};
pub use storage::{SnapshotStager, Storage, StorageError};
pub use storage_file::{FileStorage, FileStorageConfig, Recovery, TornTail};
pub use storage_memory::MemoryStorage;
pub use transport::{Transport, PROTOCOL_VERSION};
pub use transport_http::{raft_routes, HttpTransport, HttpTransportConfig};
pub use transport_memory::{MemoryNetwork, MemoryTransport};
