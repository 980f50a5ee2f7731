//! What a node tells the people watching it: the core's decisions (`keel_core::Event`, each
//! with its rule) and the driver's own moments (role changes, snapshots, configurations).
//!
//! The executor hands each to `Io::observe` and counts the ones `/metrics` reports
//! ([`NodeCounters`]). Production broadcasts them to whoever listens (`RaftHandle::events`,
//! behind keel-server's `/v1/events`); the simulator writes them into its trace. Nothing
//! depends on them: a slow listener misses some rather than slow the node.

use keel_core::{Event, LogIndex, NodeId, Role, Term};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum NodeEvent {
    Raft(Event),
    Node(DriverEvent),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DriverEvent {
    /// Role, term or known leader changed (the core's soft state).
    RoleChanged { role: &'static str, term: Term, leader: Option<NodeId> },
    /// We took a snapshot at `index` and compacted the log up to it (§7).
    SnapshotTaken { index: LogIndex, bytes: u64 },
    /// We installed the leader's snapshot at `index` (§7).
    SnapshotInstalled { index: LogIndex },
    /// The configuration in force changed (thesis §4.1): appended at `index`.
    ConfigurationChanged { configuration: String, index: LogIndex },
}

impl NodeEvent {
    /// As a listener gets it (`/v1/events`, the simulator's trace): `kind` and the event's
    /// fields, the `node` that reported it, and for a vote the `rule` that decided it, in words.
    pub fn to_json(&self, node: NodeId) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("events serialize");
        value["node"] = node.0.into();
        if let NodeEvent::Raft(Event::Vote { reason, .. } | Event::VoteIgnored { reason, .. }) = self {
            value["rule"] = reason.rule().into();
        }
        value
    }
}

/// The name of a role as the API and the events spell it.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre_candidate",
    }
}

/// Counts of events since the node started, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// Real elections (§5.2): we became candidate.
    pub elections_started: u64,
    /// Pre-vote rounds (thesis §9.6), which precede most elections.
    pub pre_votes_started: u64,
    pub elections_won: u64,
    pub votes_granted: u64,
    pub votes_refused: u64,
    pub leader_step_downs: u64,
    pub snapshots_taken: u64,
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
}

impl NodeCounters {
    pub fn count(&mut self, event: &NodeEvent) {
        match event {
            NodeEvent::Raft(Event::ElectionStarted { pre_vote: true, .. }) => self.pre_votes_started += 1,
            NodeEvent::Raft(Event::ElectionStarted { pre_vote: false, .. }) => self.elections_started += 1,
            NodeEvent::Raft(Event::BecameLeader { .. }) => self.elections_won += 1,
            NodeEvent::Raft(Event::Vote { granted: true, .. }) => self.votes_granted += 1,
            NodeEvent::Raft(Event::Vote { granted: false, .. } | Event::VoteIgnored { .. }) => self.votes_refused += 1,
            NodeEvent::Raft(Event::SteppedDown { .. }) => self.leader_step_downs += 1,
            NodeEvent::Raft(Event::SnapshotSent { .. }) => self.snapshots_sent += 1,
            NodeEvent::Node(DriverEvent::SnapshotTaken { .. }) => self.snapshots_taken += 1,
            NodeEvent::Node(DriverEvent::SnapshotInstalled { .. }) => self.snapshots_installed += 1,
            NodeEvent::Node(DriverEvent::RoleChanged { .. } | DriverEvent::ConfigurationChanged { .. }) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::VoteReason;

    #[test]
    fn events_serialize_flat_with_their_kind() {
        let vote = NodeEvent::Raft(Event::Vote { candidate: NodeId(2), term: Term(3), pre_vote: false, granted: false, reason: VoteReason::LogBehind });
        assert_eq!(serde_json::to_value(&vote).unwrap(), serde_json::json!({"kind": "vote", "candidate": 2, "term": 3, "pre_vote": false, "granted": false, "reason": "log_behind"}));
        let told = vote.to_json(NodeId(5));
        assert_eq!((told["node"].as_u64(), told["rule"].as_str()), (Some(5), Some(VoteReason::LogBehind.rule())), "a listener gets the node and the rule");
        let role = NodeEvent::Node(DriverEvent::RoleChanged { role: "leader", term: Term(4), leader: Some(NodeId(1)) });
        assert_eq!(serde_json::to_value(&role).unwrap(), serde_json::json!({"kind": "role_changed", "role": "leader", "term": 4, "leader": 1}));
    }

    #[test]
    fn counters_count_what_metrics_report() {
        let mut counters = NodeCounters::default();
        let events = [
            NodeEvent::Raft(Event::ElectionStarted { term: Term(2), pre_vote: true, leadership_transfer: false }),
            NodeEvent::Raft(Event::ElectionStarted { term: Term(2), pre_vote: false, leadership_transfer: false }),
            NodeEvent::Raft(Event::BecameLeader { term: Term(2) }),
            NodeEvent::Raft(Event::VoteIgnored { candidate: NodeId(3), term: Term(3), reason: VoteReason::LeaderActive }),
            NodeEvent::Node(DriverEvent::SnapshotTaken { index: LogIndex(10), bytes: 5 }),
        ];
        for event in &events {
            counters.count(event);
        }
        let expected = NodeCounters { pre_votes_started: 1, elections_started: 1, elections_won: 1, votes_refused: 1, snapshots_taken: 1, ..NodeCounters::default() };
        assert_eq!(counters, expected);
    }
}
