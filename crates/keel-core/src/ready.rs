//! The bundle of work the core hands to its driver, and the contract for carrying it out.
//!
//! # The driver contract
//!
//! A driver owns one `RaftCore` and loops:
//!
//! 1. Feed inputs: `tick()` once per tick of real (or simulated) time, `step(message)` for
//!    every message from a peer, `propose(command)` and `read_index(id)` for clients.
//! 2. When `has_ready()`, take `ready()`. Only one `Ready` is outstanding at a time; inputs
//!    may keep arriving until it is advanced.
//! 3. Send `ready.messages` at once. They are the leader's AppendEntries and InstallSnapshot,
//!    which may go out while the leader's own disk write is still running (thesis §10.2.1):
//!    the leader counts itself towards a majority only once `advance` says its log is durable.
//!    Fill each of `ready.outgoing_chunks` (InstallSnapshot, §7) with its bytes of the stored
//!    snapshot image it names, and send it too; a chunk whose image is gone (replaced by a
//!    newer snapshot) is dropped, and the core moves on to the newer one.
//!    While the write runs, `take_early_messages()` and `take_early_chunks()` hand out the
//!    leader's replication messages built since (entries proposed meanwhile); send those at
//!    once too.
//! 4. Make durable, in this order: `ready.received_chunks` (written in order to the image
//!    being received; the first chunk, at offset 0, starts a new one), `ready.snapshot`
//!    (the received image becomes the stored snapshot; then restore the state machine from
//!    it), `ready.entries` (first deleting any stored entry at or after the first new index),
//!    `ready.hard_state`. Sync (fsync) before going on. If the write fails, stop the node:
//!    answering after a lost write breaks Raft's safety argument.
//!    Exception: when `ready.may_defer_sync` is set, the write may stay unsynced. The core
//!    then does not count it towards a majority until a later Ready without the flag
//!    completes; that Ready's sync must cover every unsynced write before it, so sync for
//!    it even if it writes nothing itself. A crash may lose the unsynced tail (a suffix).
//! 5. Send `ready.persisted_messages`: votes and acknowledgements promise that the state they
//!    describe is durable (Figure 2: "respond to RPCs" only after updating stable storage).
//! 6. Apply `ready.committed_entries` to the state machine in order; answer the clients whose
//!    proposals they are (match by index *and* term: an index whose term differs from the one
//!    `propose` returned means that proposal was overwritten and never applied).
//! 7. For each `ready.read_states` entry, answer the read once the state machine has applied
//!    up to its index.
//! 8. Call `advance(ready)`, handing the bundle back by value.
//!
//! `ready.events` (the decisions taken since the last Ready, `event.rs`) are for observers
//! and belong to no step: show, count or drop them; nothing in the core waits on them.

use crate::message::Message;
use crate::types::{Entry, HardState, LogIndex, NodeId, Role, Snapshot, Term};

/// Comparable and cloneable so tests can assert a whole bundle at once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ready {
    /// Changed role, term or leader; for logging and for answering clients with a leader hint.
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader, all of whose chunks were in `received_chunks`
    /// of this Ready or earlier ones: install it (step 4).
    pub snapshot: Option<Snapshot>,
    /// Chunks of a snapshot being received, to write in order (step 4).
    pub received_chunks: Vec<ReceivedChunk>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    /// InstallSnapshot chunks to fill from the stored image and send (step 3).
    pub outgoing_chunks: Vec<OutgoingChunk>,
    pub persisted_messages: Vec<Message>,
    /// The write may stay unsynced (step 4): set only for a leader's own new entries while
    /// enough followers keep up to commit without it. Default false: sync.
    pub may_defer_sync: bool,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// Decisions taken since the last Ready, for observers (`event.rs`); nothing depends on
    /// them. A decision alone (a vote ignored, say) still makes a Ready, so it is told when
    /// it is taken.
    pub events: Vec<crate::event::Event>,
}

/// §7, leader: an InstallSnapshot whose `data` the driver fills with bytes `offset ..
/// offset + len` of the stored image of `meta` before sending it.
#[derive(Clone, Debug, PartialEq)]
pub struct OutgoingChunk {
    pub message: Message,
    pub len: usize,
}

impl OutgoingChunk {
    /// The image and the offset the chunk reads from.
    pub fn source(&self) -> (crate::types::SnapshotMeta, u64) {
        match &self.message.body {
            crate::message::MessageBody::InstallSnapshot { meta, offset, .. } => (*meta, *offset),
            other => unreachable!("an outgoing chunk is an InstallSnapshot, not {other:?}"),
        }
    }

    /// The message to send, carrying `bytes` (exactly `len` of them).
    pub fn fill(self, bytes: Vec<u8>) -> Message {
        assert_eq!(bytes.len(), self.len, "a chunk is filled with exactly the bytes it names");
        let mut message = self.message;
        if let crate::message::MessageBody::InstallSnapshot { data, .. } = &mut message.body {
            *data = bytes;
        }
        message
    }
}

/// §7, follower: bytes of the leader's snapshot `snapshot` at `offset` of its image, which
/// the core checked arrived in order.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedChunk {
    pub snapshot: Snapshot,
    pub offset: u64,
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub role: Role,
    pub term: Term,
    pub leader_id: Option<NodeId>,
}

/// The answer to `read_index(request_id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub request_id: u64,
    /// `Ok(index)`: leadership was confirmed after the request arrived; serve the read once
    /// applied ≥ index. `Err`: the read must be retried elsewhere.
    pub result: Result<LogIndex, ReadError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    NotLeader { leader_hint: Option<NodeId> },
    /// Leadership was lost before a majority confirmed it.
    LeadershipLost,
    /// `read_requests_max` reads are already waiting for confirmation.
    TooManyPending,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposeError {
    NotLeader { leader_hint: Option<NodeId> },
    /// `uncommitted_entries_max` entries (or `uncommitted_bytes_max` bytes) are already
    /// waiting for a majority.
    TooManyUncommitted,
    /// Leadership is being handed to another node (thesis §3.10): retry at the new leader.
    TransferInProgress,
}

/// Why `step` refused a message. Nothing changed in the core; the driver logs and counts
/// the refusal and drops the message. Every variant but `UnknownNode` means the sender is
/// broken (or not a keel peer at all): a correct peer never sends such a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepError {
    /// The sender or the addressee is not a member of this cluster.
    UnknownNode(NodeId),
    /// The message breaks a rule every correct peer keeps; `reason` names it.
    Invalid { from: NodeId, message: &'static str, reason: String },
    /// An InstallSnapshot announces an image larger than `Config::snapshot_bytes_max`.
    SnapshotTooLarge { from: NodeId, data_bytes: u64, bytes_max: u64 },
    /// A received snapshot's image does not match the CRC-32C its metadata carries.
    SnapshotChecksum { from: NodeId, index: LogIndex, expected: u32, actual: u32 },
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::NotLeader { leader_hint } => write!(f, "not the leader (leader hint: {leader_hint:?})"),
            ProposeError::TooManyUncommitted => write!(f, "too many uncommitted entries"),
            ProposeError::TransferInProgress => write!(f, "leadership is being transferred"),
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::UnknownNode(id) => write!(f, "message names node {id}, which is not a member"),
            StepError::Invalid { from, message, reason } => write!(f, "invalid {message} from node {from}: {reason}"),
            StepError::SnapshotTooLarge { from, data_bytes, bytes_max } => {
                write!(f, "node {from} offers a snapshot of {data_bytes} bytes, over the limit of {bytes_max} bytes (snapshot_bytes_max)")
            }
            StepError::SnapshotChecksum { from, index, expected, actual } => {
                write!(f, "snapshot at {index} from node {from} has CRC-32C {actual:#010x}, its metadata says {expected:#010x}")
            }
        }
    }
}

impl std::error::Error for StepError {}
impl std::error::Error for ProposeError {}
