//! Leadership transfer (Raft thesis §3.10): the leader hands over to a voter it names, for
//! maintenance or to move leadership somewhere better placed.
//!
//! 1. The leader stops accepting proposals (they would only be lost in the handover) and
//!    brings the target's log up to date with its usual AppendEntries.
//! 2. Once the target holds the leader's whole log and all of it has committed (so no
//!    client of ours is left waiting), the leader sends it TimeoutNow.
//! 3. The target campaigns at once, skipping PreVote, and its RequestVote says so
//!    (`leadership_transfer`), so voters that still hear from the old leader do not ignore it
//!    (§4.2.3). Its log is as up to date as anyone's: it wins, in the next term.
//! 4. If no new leader has appeared after an election timeout, the transfer is abandoned and
//!    proposals resume (the target may be down, or slow).

use crate::message::MessageBody;
use crate::raft::RaftCore;
use crate::types::{NodeId, Role};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transfer {
    pub target: NodeId,
    pub elapsed_ticks: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferError {
    NotLeader { leader_hint: Option<NodeId> },
    /// The target is this node: it leads already.
    AlreadyLeader,
    /// Only a voter can lead.
    NotVoter(NodeId),
    InProgress { target: NodeId },
    /// No target was named, and no other voter answered lately to pick.
    NoTarget,
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::NotLeader { leader_hint: Some(id) } => write!(f, "not the leader; node {id} is"),
            TransferError::NotLeader { leader_hint: None } => write!(f, "not the leader, and no leader is known"),
            TransferError::AlreadyLeader => write!(f, "this node is the leader already"),
            TransferError::NotVoter(id) => write!(f, "node {id} is not a voter, and only a voter can lead"),
            TransferError::InProgress { target } => write!(f, "a transfer to node {target} is in progress"),
            TransferError::NoTarget => write!(f, "no other voter has answered lately; name a target"),
        }
    }
}

impl std::error::Error for TransferError {}

impl RaftCore {
    /// Step 1: starts handing leadership to `target`.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader { leader_hint: self.leader_id });
        }
        if let Some(transfer) = self.transfer {
            return Err(TransferError::InProgress { target: transfer.target });
        }
        if target == self.id {
            return Err(TransferError::AlreadyLeader);
        }
        if !self.membership().is_voter(target) {
            return Err(TransferError::NotVoter(target));
        }
        self.transfer = Some(Transfer { target, elapsed_ticks: 0 });
        if !self.send_timeout_now_if_caught_up(target) {
            self.send_append(target, crate::replication::Trigger::Replicate);
        }
        Ok(())
    }

    /// The node leadership is being handed to, if a transfer runs.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer.map(|transfer| transfer.target)
    }

    /// Step 2: if `peer` is the transfer's target and holds our whole log, and all of it has
    /// committed, tell it to campaign. True if TimeoutNow was sent. Waiting for the commit
    /// means no proposal of ours is left pending when we step down: every client that
    /// wrote here before the transfer gets its answer, none an unknown outcome.
    pub(crate) fn send_timeout_now_if_caught_up(&mut self, peer: NodeId) -> bool {
        let last_index = self.log.last_index();
        let caught_up = self.log.commit_index() == last_index && self.progress.get(&peer).is_some_and(|progress| progress.match_index == last_index);
        if self.transfer_target() != Some(peer) || !caught_up {
            return false;
        }
        self.send(peer, MessageBody::TimeoutNow);
        true
    }

    /// Step 4, on every leader tick.
    pub(crate) fn tick_transfer(&mut self) {
        let Some(transfer) = &mut self.transfer else { return };
        transfer.elapsed_ticks += 1;
        if transfer.elapsed_ticks >= self.config.election_timeout_ticks_min {
            self.transfer = None;
        }
    }

    /// Step 3, on the target (the message is from the leader of our term).
    pub(crate) fn handle_timeout_now(&mut self) {
        if self.is_voter() && self.role != Role::Leader {
            self.become_candidate(true);
        }
    }
}
