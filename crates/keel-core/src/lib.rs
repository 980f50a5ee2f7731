//! # keel-core: Raft as a deterministic state machine
//!
//! `RaftCore` implements the Raft consensus algorithm (Ongaro & Ousterhout, "In Search of an
//! Understandable Consensus Algorithm", and Ongaro's thesis) with no clock, no IO and no
//! global randomness. Time arrives as `tick()`, messages as `step()`, client requests as
//! `propose()` and `read_index()`; the work to do comes out as a [`Ready`]. The driver
//! contract is in [`ready`]; `docs/RAFT.md` maps every rule of the paper to its code.

pub mod config;
mod election;
pub mod event;
mod invariants;
pub mod log;
pub mod membership;
pub mod message;
pub mod progress;
pub mod raft;
mod read_index;
pub mod ready;
mod reconfiguration;
mod replication;
mod rng;
mod snapshot_transfer;
pub mod state_machine;
mod transfer;
pub mod types;
mod validate;

pub use config::Config;
pub use event::{Event, StepDownReason, VoteReason};
pub use membership::{Membership, MembershipChange, MembershipError};
pub use message::{AppendResult, Message, MessageBody};
pub use raft::{RaftCore, RestoredState, Status};
#[cfg(feature = "fault-injection")]
pub use raft::Faults;
pub use ready::{OutgoingChunk, ProposeError, ReadError, ReadState, Ready, ReceivedChunk, SoftState, StepError};
pub use state_machine::{SnapshotWrite, StateMachine};
pub use transfer::TransferError;
pub use types::{Entry, EntryKind, HardState, LogIndex, NodeId, Role, Snapshot, SnapshotMeta, Term};
