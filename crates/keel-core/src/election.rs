//! Leader election (§5.2, §5.4.1) with PreVote (thesis §9.6) and CheckQuorum (thesis §6.2).

use crate::message::MessageBody;
use crate::raft::RaftCore;
use crate::types::{EntryKind, LogIndex, NodeId, Role, Term};
use crate::progress::Progress;

impl RaftCore {
    /// Follower or candidate: "If election timeout elapses without receiving AppendEntries
    /// RPC from current leader or granting vote to candidate: convert to candidate" (Figure 2).
    pub(crate) fn tick_election(&mut self) {
        self.election_elapsed_ticks += 1;
        if self.election_elapsed_ticks >= self.election_timeout_ticks {
            self.campaign();
        }
    }

    /// Starts an election: with PreVote, first ask whether we could win (thesis §9.6).
    pub(crate) fn campaign(&mut self) {
        if self.config.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate();
        }
    }

    fn become_pre_candidate(&mut self) {
        // Our term and vote stay as they are; only the question is asked for term + 1.
        self.role = Role::PreCandidate;
        self.leader_id = None;
        self.leave_role();
        self.request_votes(true);
    }

    /// §5.2: "increment currentTerm, vote for self, reset election timer, send RequestVote".
    fn become_candidate(&mut self) {
        self.current_term = self.current_term.next();
        self.voted_for = Some(self.id);
        self.role = Role::Candidate;
        self.leader_id = None;
        self.leave_role();
        self.request_votes(false);
    }

    fn request_votes(&mut self, pre_vote: bool) {
        self.votes.insert(self.id, true);
        if self.won_election() {
            return self.on_election_won(pre_vote);
        }
        let term = if pre_vote { self.current_term.next() } else { self.current_term };
        let body = MessageBody::RequestVote { pre_vote, last_log_index: self.log.last_index(), last_log_term: self.log.last_term() };
        for peer in self.peers() {
            self.messages.push(crate::message::Message { from: self.id, to: peer, term, body: body.clone() });
        }
    }

    /// RequestVote receiver (Figure 2): grant if we have not voted for another candidate in
    /// this term and the candidate's log is at least as up-to-date as ours (§5.4.1).
    /// A pre-vote is granted on the log check alone, for a term above ours, and changes nothing.
    pub(crate) fn handle_request_vote(&mut self, from: NodeId, term: Term, pre_vote: bool, last_log_index: LogIndex, last_log_term: Term) {
        let log_ok = self.log.is_up_to_date(last_log_term, last_log_index);
        let granted = if pre_vote {
            term > self.current_term && log_ok
        } else {
            let free_to_vote = self.voted_for.is_none() || self.voted_for == Some(from) || self.fault_grant_two_votes();
            term == self.current_term && free_to_vote && log_ok
        };
        if granted && !pre_vote {
            self.voted_for = Some(from);
            self.election_elapsed_ticks = 0;
        }
        // A granted pre-vote answers in the candidate's future term, so it is counted there.
        let reply_term = if granted && pre_vote { term } else { self.current_term };
        let body = MessageBody::RequestVoteResponse { pre_vote, vote_granted: granted };
        self.messages.push(crate::message::Message { from: self.id, to: from, term: reply_term, body });
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

    fn won_election(&self) -> bool {
        self.votes.values().filter(|granted| **granted).count() >= self.config.quorum()
    }

    fn lost_election(&self) -> bool {
        self.votes.values().filter(|granted| !**granted).count() >= self.config.quorum()
    }

    fn on_election_won(&mut self, pre_vote: bool) {
        if pre_vote {
            self.become_candidate();
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
    }

    /// Leader: heartbeats (§5.2) and CheckQuorum (thesis §6.2).
    pub(crate) fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        if self.config.check_quorum && self.election_elapsed_ticks >= self.config.election_timeout_ticks_min {
            self.election_elapsed_ticks = 0;
            if !self.quorum_recently_active() {
                return self.become_follower(self.current_term, None);
            }
        }
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed_ticks = 0;
            self.broadcast(crate::replication::Trigger::Heartbeat);
        }
    }

    /// Did a majority (counting us) answer within the last election timeout? Resets the marks.
    fn quorum_recently_active(&mut self) -> bool {
        let mut active = 1;
        for progress in self.progress.values_mut() {
            if progress.recent_active {
                active += 1;
            }
            progress.recent_active = false;
        }
        active >= self.config.quorum()
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
