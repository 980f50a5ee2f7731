//! What can go wrong with a client request, and whether it may have taken effect; and why
//! a node cannot start.

use crate::storage::StorageError;
use keel_core::NodeId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeError {
    /// This node does not lead; `leader_hint` is who it believes does. Not applied.
    NotLeader { leader_hint: Option<NodeId> },
    /// Too many requests are queued. Not applied.
    Overloaded,
    /// The leader is handing over to another node (thesis §3.10). Not applied; retry at
    /// the new leader in a moment.
    TransferInProgress,
    /// The entry was overwritten by another leader's: it will never be applied.
    Dropped,
    /// Leadership was lost before a read could be confirmed. Nothing was changed.
    LeadershipLost,
    /// The node stopped (shutdown or a storage failure) while the request was in flight:
    /// it may or may not have been applied.
    Stopped,
    /// The request was proposed, but its fate is unknown: leadership was lost before it
    /// committed, or a snapshot replaced the entries around it. It may or may not be applied.
    OutcomeUnknown,
}

/// Whether a failed request may be retried without risk of applying it twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    NotApplied,
    Unknown,
}

impl NodeError {
    pub fn outcome(&self) -> Outcome {
        match self {
            NodeError::NotLeader { .. } | NodeError::Overloaded | NodeError::TransferInProgress | NodeError::Dropped | NodeError::LeadershipLost => Outcome::NotApplied,
            NodeError::Stopped | NodeError::OutcomeUnknown => Outcome::Unknown,
        }
    }
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::NotLeader { leader_hint: Some(id) } => write!(f, "not the leader; node {id} is"),
            NodeError::NotLeader { leader_hint: None } => write!(f, "not the leader, and no leader is known"),
            NodeError::Overloaded => write!(f, "too many requests queued; retry later"),
            NodeError::TransferInProgress => write!(f, "leadership is being transferred; retry at the new leader"),
            NodeError::Dropped => write!(f, "the entry was overwritten by a new leader and not applied"),
            NodeError::LeadershipLost => write!(f, "leadership was lost before the read was confirmed"),
            NodeError::Stopped => write!(f, "the node stopped; the request may or may not have been applied"),
            NodeError::OutcomeUnknown => write!(f, "the outcome of the request is unknown"),
        }
    }
}

impl std::error::Error for NodeError {}

/// Why a node could not start.
#[derive(Debug)]
pub enum StartError {
    Config(String),
    Storage(StorageError),
    Snapshot(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(problem) => write!(f, "invalid configuration: {problem}"),
            StartError::Storage(error) => write!(f, "cannot recover from storage: {error}"),
            StartError::Snapshot(problem) => write!(f, "cannot restore the state machine from the snapshot: {problem}"),
        }
    }
}

impl std::error::Error for StartError {}
