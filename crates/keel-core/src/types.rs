//! The Raft paper's vocabulary as types: terms, log indexes, node ids, entries.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A Raft term (§5.1): a logical clock that only moves forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term(pub u64);

/// A position in the replicated log. Index 0 is "before the first entry".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogIndex(pub u64);

/// A cluster member. Ids are chosen by the operator and never reused for a different node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl Term {
    /// The largest term a message may carry (2^62). Terms grow by one per election, so no
    /// real cluster comes near it; a peer that sends more is broken, and refusing it keeps
    /// `next()` from overflowing however many elections follow.
    pub const MAX: Term = Term(1 << 62);

    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl LogIndex {
    pub const ZERO: LogIndex = LogIndex(0);
    /// The largest index a message may name (2^62), for the reason `Term::MAX` gives.
    pub const MAX: LogIndex = LogIndex(1 << 62);

    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one; `LogIndex(0).prev()` is a programmer error.
    pub fn prev(self) -> LogIndex {
        assert!(self.0 > 0, "no index before 0");
        LogIndex(self.0 - 1)
    }

    pub fn plus(self, count: u64) -> LogIndex {
        LogIndex(self.0 + count)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What an entry carries. The core never looks inside `Command`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// Appended by every new leader so that it can commit entries of earlier terms (§5.4.2, §8).
    Noop,
    /// An opaque command for the state machine.
    Command(Bytes),
    /// A cluster configuration (thesis §4.1), in force on each node from the moment it is
    /// appended there. State machines skip it (`StateMachine::apply` still sees it, to keep
    /// `applied_index` moving).
    Config(crate::membership::Membership),
}

/// One log entry (Figure 2: "each entry contains command for state machine, and term when
/// entry was received by leader").
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub kind: EntryKind,
}

impl Entry {
    /// Bytes this entry counts for against per-message limits.
    pub fn size_bytes(&self) -> usize {
        let payload = match &self.kind {
            EntryKind::Noop => 0,
            EntryKind::Command(data) => data.len(),
            EntryKind::Config(membership) => 8 * membership.members().len() + 8 * membership.voters_outgoing.len(),
        };
        payload + 24
    }
}

/// State that must be on stable storage before the node answers any RPC (Figure 2,
/// "Persistent state on all servers"). `commit_index` is persisted too so that a restarted
/// node can re-apply committed entries without waiting for a leader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HardState {
    pub current_term: Term,
    pub voted_for: Option<NodeId>,
    pub commit_index: LogIndex,
}

/// The position a snapshot covers (§7: "last included index" and "last included term"),
/// and the size and CRC-32C of its image, so a receiver (and a reader from disk) can check
/// every byte before trusting it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub last_included_index: LogIndex,
    pub last_included_term: Term,
    pub data_bytes: u64,
    pub data_crc32c: u32,
}

impl SnapshotMeta {
    /// The log position alone: two metas of one position describe the same state (the state
    /// machine is deterministic), whatever else they say.
    pub fn position(&self) -> (LogIndex, Term) {
        (self.last_included_index, self.last_included_term)
    }
}

impl SnapshotMeta {
    /// The metadata of `image` as the snapshot at `last_included_index` (of
    /// `last_included_term`): its size and CRC-32C.
    pub fn of_image(last_included_index: LogIndex, last_included_term: Term, image: &[u8]) -> SnapshotMeta {
        SnapshotMeta { last_included_index, last_included_term, data_bytes: image.len() as u64, data_crc32c: crc32c::crc32c(image) }
    }
}

/// A snapshot as the core knows it: the log position its image reflects, and the cluster
/// configuration in force there (thesis §4.1: the snapshot replaces the configuration
/// entries it covers, so a node restored from it knows its cluster). The image itself never
/// passes through the core whole: it lives in the driver's storage, which streams it to the
/// state machine and reads the chunks InstallSnapshot sends (`Ready::outgoing_chunks`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub membership: crate::membership::Membership,
}

/// The three roles of §5.1, plus the pre-candidate of PreVote (thesis §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Role::Follower => "Follower",
            Role::PreCandidate => "PreCandidate",
            Role::Candidate => "Candidate",
            Role::Leader => "Leader",
        };
        f.write_str(name)
    }
}
