//! Decisions the core took, and why, for people watching it (`Ready::events`).
//!
//! Nothing depends on them: the driver may drop them. keel shows them in the live view and
//! the simulator's trace (docs/WATCH.md), counts them in `/metrics`, and each names the rule
//! of the paper that decided it, so a learner can follow an election vote by vote.

use crate::types::{LogIndex, NodeId, Term};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// Our election timer fired (or the leader asked us to take over, thesis §3.10): we ask
    /// for votes in `term` (with `pre_vote`, only whether we could win it, §9.6).
    ElectionStarted { term: Term, pre_vote: bool, leadership_transfer: bool },
    /// We answered `candidate`'s RequestVote for `term`.
    Vote { candidate: NodeId, term: Term, pre_vote: bool, granted: bool, reason: VoteReason },
    /// We ignored `candidate`'s RequestVote for `term`, without an answer.
    VoteIgnored { candidate: NodeId, term: Term, reason: VoteReason },
    /// A majority voted for us (§5.2): we lead `term` and append a no-op (§8).
    BecameLeader { term: Term },
    /// We stopped leading `term`: a higher term, or CheckQuorum found no majority (§6.2).
    SteppedDown { term: Term, reason: StepDownReason },
    /// The last chunk of our snapshot at `index` reached `to` (§7).
    SnapshotSent { to: NodeId, index: LogIndex },
}

/// Why a vote went the way it did, and the rule that says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VoteReason {
    /// §5.2, §5.4.1: not voted for another in this term, and the candidate's log is at least
    /// as up to date as ours.
    Granted,
    /// §5.1: the request's term is behind ours.
    TermBehind,
    /// §5.2: we already voted for `voted_for` in this term.
    AlreadyVoted { voted_for: NodeId },
    /// §5.4.1: the candidate's last log term is lower than ours, or equal with a shorter log.
    LogBehind,
    /// §9.6: a pre-vote is granted only for a term above ours.
    PreVoteTermNotAhead,
    /// Thesis §4.2.3: we heard from a live leader within the minimum election timeout.
    LeaderActive,
}

impl VoteReason {
    /// The rule, in words, as the live view and the replay show it.
    pub fn rule(self) -> &'static str {
        match self {
            VoteReason::Granted => "§5.2/§5.4.1 granted: no other vote this term, candidate's log up to date",
            VoteReason::TermBehind => "§5.1 candidate's term is behind ours",
            VoteReason::AlreadyVoted { .. } => "§5.2 already voted for another candidate this term",
            VoteReason::LogBehind => "§5.4.1 candidate's log is behind",
            VoteReason::PreVoteTermNotAhead => "§9.6 pre-vote for a term not above ours",
            VoteReason::LeaderActive => "§4.2.3 heard from a live leader recently",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepDownReason {
    /// Figure 2: a message carried a higher term.
    HigherTerm,
    /// Thesis §6.2 (CheckQuorum): no majority answered within an election timeout.
    NoQuorum,
    /// Thesis §4.2.2: the configuration that removed us committed.
    Removed,
}
