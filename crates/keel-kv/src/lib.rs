//! # keel-kv: the key-value state machine
//!
//! Commands (`Set`, `Delete`, compare-and-set) travel through the Raft log as compact binary
//! records; `KvStore` applies them and takes deterministic snapshots (a sorted map, so equal
//! states serialize to equal bytes on every node).

mod command;
mod store;

pub use command::{Command, CommandError, CommandResult, KEY_BYTES_MAX};
pub use store::KvStore;
