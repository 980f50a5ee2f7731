//! The RPCs of Figure 2 and §7 as one enum, so a new message never changes a transport trait.

use crate::membership::Membership;
use crate::types::{Entry, LogIndex, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};

/// A message between two nodes. `term` is the sender's current term, checked first on
/// receipt (Figure 2, "Rules for Servers: All Servers").
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageBody {
    /// §5.2 RequestVote; with `pre_vote` set, the PreVote of thesis §9.6: "would you vote for
    /// me in `term`?", which changes no one's term or vote. `leadership_transfer`: the
    /// candidate campaigns because the leader asked it to (TimeoutNow, thesis §3.10), so
    /// voters that still hear from that leader do not ignore it (§4.2.3).
    RequestVote { pre_vote: bool, last_log_index: LogIndex, last_log_term: Term, leadership_transfer: bool },
    RequestVoteResponse { pre_vote: bool, vote_granted: bool },
    /// §5.3 AppendEntries. An empty `entries` is a heartbeat; it still carries the log check.
    /// `read_round` lets the leader count acknowledgements for ReadIndex (thesis §6.4).
    AppendEntries { prev_log_index: LogIndex, prev_log_term: Term, entries: Vec<Entry>, leader_commit: LogIndex, read_round: u64 },
    AppendEntriesResponse { result: AppendResult, read_round: u64 },
    /// §7 InstallSnapshot, one chunk of at most `snapshot_chunk_bytes_max` bytes at `offset`,
    /// with the configuration in force at the snapshot's last included index.
    InstallSnapshot { meta: SnapshotMeta, membership: Membership, offset: u64, data: Vec<u8>, done: bool, read_round: u64 },
    /// `next_offset` is where the follower wants the next chunk; `done` once installed (or
    /// already covered by its own log).
    InstallSnapshotResponse { meta: SnapshotMeta, next_offset: u64, done: bool, read_round: u64 },
    /// Thesis §3.10: the leader hands over; the receiver campaigns at once, skipping PreVote.
    TimeoutNow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AppendResult {
    /// The follower's log matches the leader's up to and including `match_index`.
    Success { match_index: LogIndex },
    /// No entry at `rejected_index` (the request's `prev_log_index`) with the expected term.
    /// The hint lets the leader skip a whole conflicting term (§5.3, end).
    Conflict { rejected_index: LogIndex, conflict_term: Option<Term>, conflict_index: LogIndex },
}

impl MessageBody {
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::RequestVote { pre_vote: true, .. } => "PreVote",
            MessageBody::RequestVote { .. } => "RequestVote",
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            MessageBody::RequestVoteResponse { .. } => "RequestVoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::AppendEntriesResponse { .. } => "AppendEntriesResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::InstallSnapshotResponse { .. } => "InstallSnapshotResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
        }
    }

    /// Messages a leader sends to a follower: they name the sender as the current leader.
    pub fn is_from_leader(&self) -> bool {
        matches!(self, MessageBody::AppendEntries { .. } | MessageBody::InstallSnapshot { .. } | MessageBody::TimeoutNow)
    }
}
