//! Membership changes, the leader's side (Raft thesis ch. 4). `membership.rs` has the
//! configurations and their majorities; this file, the steps:
//!
//! 1. An operator asks the leader for a change (`propose_membership`). It is refused unless
//!    this node leads, an entry of its own term has committed (until then a configuration
//!    it never saw committed may still be in flight: the known flaw of single-server
//!    changes), no other change is in flight (the last configuration entry is committed and
//!    not joint, §4.3: one at a time), no leadership transfer runs, and a learner to promote
//!    has caught up (§4.2.1).
//! 2. A change of voters appends C_old,new; a change of learners appends the new
//!    configuration alone (learners are in no majority, so no joint step is needed). Either
//!    takes effect at once (§4.1): on the leader as it appends it (a `Progress` for each new
//!    member, none for those gone), on each follower as it appends it.
//! 3. Once C_old,new commits, the leader appends C_new (`on_commit_advanced`).
//! 4. Once C_new commits, a leader that is not among its voters steps down (§4.2.2). Until
//!    then it leads a cluster it is no longer part of: it replicates, but counts itself in
//!    no majority of C_new.

use crate::membership::{Membership, MembershipChange, MembershipError};
use crate::progress::Progress;
use crate::raft::RaftCore;
use crate::types::{EntryKind, LogIndex, Role, Term};

impl RaftCore {
    /// Step 1: proposes `change`; returns where its (first) configuration entry sits.
    pub fn propose_membership(&mut self, change: MembershipChange) -> Result<(LogIndex, Term), MembershipError> {
        if self.role != Role::Leader {
            return Err(MembershipError::NotLeader { leader_hint: self.leader_id });
        }
        if self.transfer.is_some() {
            return Err(MembershipError::TransferInProgress);
        }
        if !self.committed_in_current_term() {
            return Err(MembershipError::NoCommitInTerm);
        }
        if self.membership().is_joint() || self.log.configs().current_index() > self.log.commit_index() {
            return Err(MembershipError::ChangeInProgress);
        }
        if let MembershipChange::Promote(id) | MembershipChange::Replace { promote: id, .. } = change {
            if self.membership().is_learner(id) {
                self.check_caught_up(id)?;
            }
        }
        let target = self.membership().after(change)?;
        let next = self.membership().joint_towards(&target);
        Ok(self.append_configuration(next))
    }

    /// §4.2.1: a learner joins the majority only once its log is within
    /// `learner_catch_up_entries_max` of ours and it answered within the last election
    /// timeout; else every commit would wait for it.
    fn check_caught_up(&self, id: crate::types::NodeId) -> Result<(), MembershipError> {
        let last_index = self.log.last_index();
        let progress = self.progress.get(&id).expect("the leader tracks every learner");
        let behind = last_index.0.saturating_sub(progress.match_index.0) > self.config.learner_catch_up_entries_max;
        if behind || !progress.recent_active {
            return Err(MembershipError::LearnerBehind { id, match_index: progress.match_index, last_index });
        }
        Ok(())
    }

    /// Step 2: appends `membership` as the log's newest configuration, in force at once.
    fn append_configuration(&mut self, membership: Membership) -> (LogIndex, Term) {
        debug_assert!(membership.check().is_ok(), "{membership}");
        let index = self.log.append_new(self.current_term, EntryKind::Config(membership));
        self.sync_progress();
        self.broadcast_needed = true;
        (index, self.current_term)
    }

    /// Leader: one `Progress` per member of the configuration in force or the committed one
    /// (`peers`), but itself. A new
    /// member starts in Probe at our last index; the conflict hint walks it back (to a
    /// snapshot, for a new member with an empty log). It has not answered yet, so it is not
    /// recently active (as members are taken to be when a leader is elected).
    pub(crate) fn sync_progress(&mut self) {
        let peers = self.peers();
        self.progress.retain(|id, _| peers.contains(id));
        let next_index = self.log.last_index().next();
        for peer in peers {
            self.progress.entry(peer).or_insert_with(|| Progress { recent_active: false, ..Progress::new(next_index) });
        }
    }

    /// Steps 3 and 4, after the leader's commit index moved: leave the joint configuration
    /// once it commits; step down once a C_new without us commits.
    pub(crate) fn on_commit_advanced(&mut self) {
        if let Some(target) = self.transfer_target() {
            self.send_timeout_now_if_caught_up(target); // It may have waited for this commit.
        }
        if self.log.configs().current_index() > self.log.commit_index() {
            return; // The configuration in force is not committed yet.
        }
        // The configuration in force is committed: members it left out get no more of the
        // log. Checked without allocating, as this runs on every commit.
        let membership = self.membership();
        if self.progress.keys().any(|id| !membership.is_member(*id)) {
            self.sync_progress();
        }
        let membership = self.membership().clone();
        if membership.is_joint() {
            self.append_configuration(membership.leave_joint());
        } else if !membership.is_voter(self.id) {
            self.record_step_down(crate::event::StepDownReason::Removed);
            self.become_follower(self.current_term, None);
        }
    }

    #[cfg(feature = "fault-injection")]
    pub(crate) fn fault_configuration_on_commit(&self) -> bool {
        self.faults.configuration_on_commit
    }

    #[cfg(not(feature = "fault-injection"))]
    pub(crate) fn fault_configuration_on_commit(&self) -> bool {
        false
    }
}
