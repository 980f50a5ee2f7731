//! Leader election (§5.2, §5.4.1) with PreVote (thesis §9.6) and CheckQuorum (thesis §6.2),
//! under a changing membership (thesis ch. 4): only voters campaign and count, and in a
//! joint configuration a candidate needs a majority of C_old and of C_new (§4.3).

use crate::event::{Event, StepDownReason, VoteReason};
use crate::message::MessageBody;
use crate::raft::RaftCore;
use crate::types::{EntryKind, LogIndex, NodeId, Role, Term};
use crate::progress::Progress;

impl RaftCore {
    /// Follower or candidate: "If election timeout elapses without receiving AppendEntries
    /// RPC from current leader or granting vote to candidate: convert to candidate" (Figure 2).
    ///
    /// A learner, a node removed from the configuration, and a node waiting to be added (no
    /// configuration yet) never campaign: their votes would not count, and they would only
    /// raise terms (thesis §4.2.3).
    pub(crate) fn tick_election(&mut self) {
        self.election_elapsed_ticks = self.election_elapsed_ticks.saturating_add(1);
        if self.election_elapsed_ticks >= self.election_timeout_ticks && self.is_voter() {
            self.campaign();
        }
    }

    /// Starts an election: with PreVote, first ask whether we could win (thesis §9.6).
    pub(crate) fn campaign(&mut self) {
        if self.config.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate(false);
        }
    }

    fn become_pre_candidate(&mut self) {
        // Our term and vote stay as they are; only the question is asked for term + 1.
        self.role = Role::PreCandidate;
        self.leader_id = None;
        self.leave_role();
        self.events.push(Event::ElectionStarted { term: self.current_term.next(), pre_vote: true, leadership_transfer: false });
        self.request_votes(true, false);
    }

    /// §5.2: "increment currentTerm, vote for self, reset election timer, send RequestVote".
    /// `leadership_transfer`: the leader asked for it (TimeoutNow, thesis §3.10).
    pub(crate) fn become_candidate(&mut self, leadership_transfer: bool) {
        self.current_term = self.current_term.next();
        self.voted_for = Some(self.id);
        self.role = Role::Candidate;
        self.leader_id = None;
        self.leave_role();
        self.events.push(Event::ElectionStarted { term: self.current_term, pre_vote: false, leadership_transfer });
        self.request_votes(false, leadership_transfer);
    }

    /// Asks every voter of either set (thesis §4.3) but ourselves.
    fn request_votes(&mut self, pre_vote: bool, leadership_transfer: bool) {
        self.votes.insert(self.id, true);
        if self.won_election() {
            return self.on_election_won(pre_vote);
        }
        let term = if pre_vote { self.current_term.next() } else { self.current_term };
        let body = MessageBody::RequestVote { pre_vote, last_log_index: self.log.last_index(), last_log_term: self.log.last_term(), leadership_transfer };
        let voters: Vec<NodeId> = self.membership().all_voters().into_iter().filter(|id| *id != self.id).collect();
        for peer in voters {
            self.messages.push(crate::message::Message { from: self.id, to: peer, term, body: body.clone() });
        }
    }

    /// RequestVote receiver (Figure 2): grant if we have not voted for another candidate in
    /// this term and the candidate's log is at least as up-to-date as ours (§5.4.1).
    /// A pre-vote is granted on the log check alone, for a term above ours, and changes nothing.
    pub(crate) fn handle_request_vote(&mut self, from: NodeId, term: Term, pre_vote: bool, last_log_index: LogIndex, last_log_term: Term) {
        let reason = self.vote_decision(from, term, pre_vote, last_log_index, last_log_term);
        let granted = reason == VoteReason::Granted;
        self.events.push(Event::Vote { candidate: from, term, pre_vote, granted, reason });
        if granted && !pre_vote {
            self.voted_for = Some(from);
            self.election_elapsed_ticks = 0;
        }
        // A granted pre-vote answers in the candidate's future term, so it is counted there.
        let reply_term = if granted && pre_vote { term } else { self.current_term };
        let body = MessageBody::RequestVoteResponse { pre_vote, vote_granted: granted };
        self.messages.push(crate::message::Message { from: self.id, to: from, term: reply_term, body });
    }

    /// The RequestVote rules, in the order the paper gives them; the first that refuses is
    /// the reason. (A request of a lower term was answered before it got here, §5.1.)
    fn vote_decision(&self, from: NodeId, term: Term, pre_vote: bool, last_log_index: LogIndex, last_log_term: Term) -> VoteReason {
        if pre_vote && term <= self.current_term {
            return VoteReason::PreVoteTermNotAhead;
        }
        if !pre_vote {
            debug_assert_eq!(term, self.current_term, "check_term raised our term to the request's");
            let free_to_vote = self.voted_for.is_none() || self.voted_for == Some(from) || self.fault_grant_two_votes();
            if !free_to_vote {
                return VoteReason::AlreadyVoted { voted_for: self.voted_for.expect("not free means voted") };
            }
        }
        if !self.log.is_up_to_date(last_log_term, last_log_index) {
            return VoteReason::LogBehind;
        }
        VoteReason::Granted
    }

    pub(crate) fn handle_vote_response(&mut self, from: NodeId, pre_vote: bool, vote_granted: bool) {
        let expected_role = if pre_vote { Role::PreCandidate } else { Role::Candidate };
        if self.role != expected_role {
            return;
        }
        self.votes.insert(from, vote_granted);
        if self.won_election() {
            self.on_election_won(pre_vote);
        } else if self.lost_election() {
            self.become_follower(self.current_term, None);
        }
    }

    /// A majority said yes: of C_new and, when joint, of C_old too.
    fn won_election(&self) -> bool {
        self.membership().has_majority(|id| self.votes.get(&id) == Some(&true))
    }

    /// Even if every voter yet to answer said yes, there would be no majority.
    fn lost_election(&self) -> bool {
        !self.membership().has_majority(|id| self.votes.get(&id) != Some(&false))
    }

    fn on_election_won(&mut self, pre_vote: bool) {
        if pre_vote {
            self.become_candidate(false);
        } else {
            self.become_leader();
        }
    }

    /// §5.3: initialise nextIndex to last log index + 1; §8 / §5.4.2: append a no-op so
    /// entries of earlier terms can be committed through it.
    fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate, "only a candidate becomes leader");
        self.role = Role::Leader;
        self.leader_id = Some(self.id);
        self.leave_role();
        let next_index = self.log.last_index().next();
        for peer in self.peers() {
            self.progress.insert(peer, Progress::new(next_index));
        }
        self.log.append_new(self.current_term, EntryKind::Noop);
        self.broadcast_needed = true;
        self.events.push(Event::BecameLeader { term: self.current_term });
    }

    /// Leader: heartbeats (§5.2) and CheckQuorum (thesis §6.2).
    pub(crate) fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        if self.config.check_quorum && self.election_elapsed_ticks >= self.config.election_timeout_ticks_min {
            self.election_elapsed_ticks = 0;
            if !self.quorum_recently_active() {
                self.record_step_down(StepDownReason::NoQuorum);
                return self.become_follower(self.current_term, None);
            }
        }
        self.tick_transfer();
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed_ticks = 0;
            self.broadcast(crate::replication::Trigger::Heartbeat);
        }
    }

    /// Did a majority (counting us, if we vote) answer within the last election timeout?
    /// Resets the marks.
    fn quorum_recently_active(&mut self) -> bool {
        let active = self.membership().has_majority(|id| id == self.id || self.progress.get(&id).is_some_and(|progress| progress.recent_active));
        for progress in self.progress.values_mut() {
            progress.recent_active = false;
        }
        active
    }

    #[cfg(feature = "fault-injection")]
    fn fault_grant_two_votes(&self) -> bool {
        self.faults.grant_two_votes_per_term
    }

    #[cfg(not(feature = "fault-injection"))]
    fn fault_grant_two_votes(&self) -> bool {
        false
    }
}
