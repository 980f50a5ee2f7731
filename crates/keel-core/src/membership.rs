//! Cluster membership (Raft thesis ch. 4): who votes, who only listens, and what a majority
//! is while the cluster moves from one set of voters to another.
//!
//! - **Voters** count towards every majority: elections (§5.2) and commitment (§5.3).
//! - **Learners** (thesis §4.2.1, "catching up new servers") receive the log and snapshots
//!   but never vote and never count towards a majority, so a new server can catch up without
//!   making the cluster wait for it.
//! - **Joint consensus** (§4.3): a change of voters goes through C_old,new, in which
//!   `voters` is C_new and `voters_outgoing` is C_old, and every decision needs a majority of
//!   *each*. No single set can then decide alone, so two leaders of one term can never be
//!   elected by the two configurations, and nothing committed by one is missed by the other.
//!
//! A configuration lives in the log as an entry (`EntryKind::Config`) and takes effect on
//! each node as soon as it is appended, committed or not (§4.1); the log remembers every
//! configuration entry it holds, so one removed by a conflicting append (§5.3) gives way to
//! the one before it (`ConfigLog`).
//!
//! A configuration also carries how to reach each member (`addresses`): opaque to the core,
//! replicated with the rest, so every node — and every future leader — can reach a member
//! added after it started.

use crate::types::{LogIndex, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Largest number of members (voters and learners) a configuration may hold: a limit on
/// everything, and far beyond what a Raft cluster wants (every voter adds a round trip to
/// every commit's critical path).
pub const MEMBERS_MAX: usize = 15;
/// Longest member address, in bytes (`host:port`, or a URL).
pub const ADDRESS_BYTES_MAX: usize = 255;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// The voters; in a joint configuration, C_new.
    pub voters: BTreeSet<NodeId>,
    /// Empty, or, in a joint configuration, C_old.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Members that receive the log but do not vote. Never also a voter (of either set).
    pub learners: BTreeSet<NodeId>,
    /// Where members listen, for those whose address is known: the transport's business,
    /// never the core's. Only members have one; no two share one.
    #[serde(default)]
    pub addresses: BTreeMap<NodeId, String>,
}

/// A change an operator asks for. Each one changing the voters goes through joint consensus.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MembershipChange {
    /// A new member that receives the log but does not vote yet, and where it listens
    /// (empty: not known to the configuration, as in the core's own tests).
    AddLearner { id: NodeId, address: String },
    /// A learner becomes a voter (once it has caught up).
    Promote(NodeId),
    /// A voter or learner leaves.
    Remove(NodeId),
    /// `promote` (a caught-up learner) becomes a voter and `remove` (a voter) leaves, in one
    /// joint change: the cluster's size never changes on the way.
    Replace { remove: NodeId, promote: NodeId },
}

/// Why the core refused a change (`RaftCore::propose_membership`). Nothing was appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipError {
    NotLeader { leader_hint: Option<NodeId> },
    /// A configuration entry is appended but not committed, or the cluster is in a joint
    /// configuration: one change at a time (§4.3).
    ChangeInProgress,
    /// This leader has not yet committed an entry of its own term: until it has, a
    /// configuration it did not see committed may still be in flight (the known flaw of
    /// single-server changes, fixed by the rule that a leader first commits its no-op).
    NoCommitInTerm,
    /// A leadership transfer is running; changes wait for it.
    TransferInProgress,
    AlreadyMember(NodeId),
    NotMember(NodeId),
    NotLearner(NodeId),
    NotVoter(NodeId),
    /// The learner's log is too far behind the leader's, or it has not answered within an
    /// election timeout: promoting it now would make commitment wait for it.
    LearnerBehind { id: NodeId, match_index: LogIndex, last_index: LogIndex },
    /// The change would leave no voter.
    LastVoter(NodeId),
    /// The change would pass `MEMBERS_MAX`.
    TooManyMembers,
    /// Another member already listens at this address.
    AddressInUse { address: String, member: NodeId },
    /// Longer than `ADDRESS_BYTES_MAX`, or holding a control character or a space.
    BadAddress(String),
}

impl fmt::Display for MembershipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembershipError::NotLeader { leader_hint: Some(id) } => write!(f, "not the leader; node {id} is"),
            MembershipError::NotLeader { leader_hint: None } => write!(f, "not the leader, and no leader is known"),
            MembershipError::ChangeInProgress => write!(f, "another membership change is in progress"),
            MembershipError::NoCommitInTerm => write!(f, "the leader has not committed an entry of its term yet; retry shortly"),
            MembershipError::TransferInProgress => write!(f, "a leadership transfer is in progress"),
            MembershipError::AlreadyMember(id) => write!(f, "node {id} is already a member"),
            MembershipError::NotMember(id) => write!(f, "node {id} is not a member"),
            MembershipError::NotLearner(id) => write!(f, "node {id} is not a learner"),
            MembershipError::NotVoter(id) => write!(f, "node {id} is not a voter"),
            MembershipError::LearnerBehind { id, match_index, last_index } => {
                write!(f, "learner {id} has not caught up: it holds the log to {match_index}, the leader's ends at {last_index}")
            }
            MembershipError::LastVoter(id) => write!(f, "removing node {id} would leave no voter"),
            MembershipError::TooManyMembers => write!(f, "a cluster has at most {MEMBERS_MAX} members"),
            MembershipError::AddressInUse { address, member } => write!(f, "node {member} already listens at {address}"),
            MembershipError::BadAddress(address) => write!(f, "{address:?} is not an address (at most {ADDRESS_BYTES_MAX} bytes, no spaces)"),
        }
    }
}

impl std::error::Error for MembershipError {}

impl MembershipChange {
    /// A learner whose address the configuration does not carry.
    pub fn add_learner(id: NodeId) -> MembershipChange {
        MembershipChange::AddLearner { id, address: String::new() }
    }

    /// The node the change is about (for a replacement, the one promoted).
    pub fn subject(&self) -> NodeId {
        match self {
            MembershipChange::AddLearner { id, .. } | MembershipChange::Promote(id) | MembershipChange::Remove(id) => *id,
            MembershipChange::Replace { promote, .. } => *promote,
        }
    }
}

impl Membership {
    /// A configuration of voters only (a cluster's first).
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership { voters: voters.into_iter().collect(), ..Membership::default() }
    }

    /// In joint consensus: C_old,new.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Votes in C_new or C_old.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    pub fn is_member(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Everyone the leader replicates to (voters of both sets and learners), itself included.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.voters.iter().chain(&self.voters_outgoing).chain(&self.learners).copied().collect()
    }

    /// Every voter of either set.
    pub fn all_voters(&self) -> BTreeSet<NodeId> {
        self.voters.union(&self.voters_outgoing).copied().collect()
    }

    /// The highest value a majority has reached: with `value_of` each voter's match index
    /// (or acknowledged ReadIndex round), the index a majority holds. In a joint
    /// configuration, the lower of the two majorities' values (§4.3: both must agree).
    pub fn quorum_value(&self, value_of: impl Fn(NodeId) -> u64) -> u64 {
        let incoming = majority_value(&self.voters, &value_of);
        if self.is_joint() {
            incoming.min(majority_value(&self.voters_outgoing, &value_of))
        } else {
            incoming
        }
    }

    /// Whether the nodes `yes` says yes to make a majority (of both sets, when joint).
    pub fn has_majority(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        self.quorum_value(|id| u64::from(yes(id))) == 1
    }

    /// The configuration an operator's change leads to, and whether it needs the joint step
    /// (the voters change). Checks only what the configuration alone can say; the leader
    /// checks the rest (a change in flight, a learner that has not caught up).
    pub fn after(&self, change: MembershipChange) -> Result<Membership, MembershipError> {
        debug_assert!(!self.is_joint(), "changes start from a simple configuration");
        let mut next = self.clone();
        match &change {
            MembershipChange::AddLearner { id, address } => {
                if self.is_member(*id) {
                    return Err(MembershipError::AlreadyMember(*id));
                }
                if !address.is_empty() {
                    check_address(address).map_err(|_| MembershipError::BadAddress(address.clone()))?;
                    if let Some((member, _)) = self.addresses.iter().find(|(_, taken)| *taken == address) {
                        return Err(MembershipError::AddressInUse { address: address.clone(), member: *member });
                    }
                    next.addresses.insert(*id, address.clone());
                }
                next.learners.insert(*id);
            }
            MembershipChange::Promote(id) => {
                if !self.is_learner(*id) {
                    return Err(if self.is_voter(*id) { MembershipError::AlreadyMember(*id) } else { MembershipError::NotLearner(*id) });
                }
                next.learners.remove(id);
                next.voters.insert(*id);
            }
            MembershipChange::Remove(id) => {
                if !self.is_member(*id) {
                    return Err(MembershipError::NotMember(*id));
                }
                next.learners.remove(id);
                next.voters.remove(id);
                next.addresses.remove(id);
            }
            MembershipChange::Replace { remove, promote } => {
                if !self.voters.contains(remove) {
                    return Err(MembershipError::NotVoter(*remove));
                }
                next = next.after(MembershipChange::Promote(*promote))?;
                next.voters.remove(remove);
                next.addresses.remove(remove);
            }
        }
        if next.voters.is_empty() {
            let id = match change {
                MembershipChange::Remove(id) | MembershipChange::Replace { remove: id, .. } => id,
                other => other.subject(),
            };
            return Err(MembershipError::LastVoter(id));
        }
        if next.members().len() > MEMBERS_MAX {
            return Err(MembershipError::TooManyMembers);
        }
        Ok(next)
    }

    /// C_old,new for a move to `target` (thesis §4.3): the target's voters, with ours as the
    /// outgoing set. When the voters do not change (a learner added or removed), there is no
    /// joint step: `target` itself.
    pub fn joint_towards(&self, target: &Membership) -> Membership {
        if target.voters == self.voters {
            return target.clone();
        }
        let mut joint = Membership { voters: target.voters.clone(), voters_outgoing: self.voters.clone(), learners: target.learners.clone(), addresses: BTreeMap::new() };
        // C_old's voters stay reachable until the joint phase ends.
        joint.addresses = self.addresses.iter().chain(&target.addresses).filter(|(id, _)| joint.is_member(**id)).map(|(id, address)| (*id, address.clone())).collect();
        joint
    }

    /// C_new, the configuration after the joint one.
    pub fn leave_joint(&self) -> Membership {
        let mut simple = Membership { voters: self.voters.clone(), voters_outgoing: BTreeSet::new(), learners: self.learners.clone(), addresses: BTreeMap::new() };
        simple.addresses = self.addresses.iter().filter(|(id, _)| simple.is_member(**id)).map(|(id, address)| (*id, address.clone())).collect();
        simple
    }

    /// The shape every configuration keeps: no node both a voter and a learner, some voter.
    pub fn check(&self) -> Result<(), String> {
        if let Some(id) = self.learners.iter().find(|id| self.is_voter(**id)) {
            return Err(format!("node {id} is both a voter and a learner"));
        }
        if self.voters.is_empty() && !self.learners.is_empty() {
            return Err("a configuration with learners but no voter".into());
        }
        if self.members().len() > MEMBERS_MAX {
            return Err(format!("{} members, more than {MEMBERS_MAX}", self.members().len()));
        }
        let mut seen = BTreeSet::new();
        for (id, address) in &self.addresses {
            if !self.is_member(*id) {
                return Err(format!("an address for node {id}, which is not a member"));
            }
            check_address(address).map_err(|problem| format!("node {id}'s address: {problem}"))?;
            if !seen.insert(address) {
                return Err(format!("two members at {address}"));
            }
        }
        Ok(())
    }
}

/// An address is a non-empty printable string without spaces, of at most `ADDRESS_BYTES_MAX`.
fn check_address(address: &str) -> Result<(), String> {
    if address.is_empty() || address.len() > ADDRESS_BYTES_MAX {
        return Err(format!("{} bytes; an address has 1 to {ADDRESS_BYTES_MAX}", address.len()));
    }
    if address.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{address:?} holds a space or a control character"));
    }
    Ok(())
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |set: &BTreeSet<NodeId>| set.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(",");
        write!(f, "voters {{{}}}", list(&self.voters))?;
        if self.is_joint() {
            write!(f, " and {{{}}} (joint)", list(&self.voters_outgoing))?;
        }
        if !self.learners.is_empty() {
            write!(f, ", learners {{{}}}", list(&self.learners))?;
        }
        Ok(())
    }
}

/// The value at least a majority of `voters` has reached (sort descending, take the
/// majority-th). No voters, no majority: 0 (a node that knows no configuration yet, such as
/// one waiting to be added, decides nothing).
fn majority_value(voters: &BTreeSet<NodeId>, value_of: &impl Fn(NodeId) -> u64) -> u64 {
    if voters.is_empty() {
        return 0;
    }
    let mut values: Vec<u64> = voters.iter().map(|id| value_of(*id)).collect();
    values.sort_unstable_by(|a, b| b.cmp(a));
    values[voters.len() / 2]
}

/// The configurations a log holds: the one its snapshot ends with, and one per
/// configuration entry after it, in log order. The last is the node's configuration (§4.1).
#[derive(Clone, Debug, Default)]
pub struct ConfigLog {
    /// As of the snapshot's last included index (or the bootstrap configuration).
    base: Membership,
    /// The snapshot's last included index (0 for the bootstrap configuration): where the
    /// base is known to be in force, if not exactly where it was appended.
    base_index: LogIndex,
    /// Configuration entries in the log, by index.
    entries: Vec<(LogIndex, Membership)>,
}

impl ConfigLog {
    pub fn new(base: Membership) -> ConfigLog {
        ConfigLog { base, base_index: LogIndex::ZERO, entries: Vec::new() }
    }

    /// The configuration in force: the last one in the log.
    pub fn current(&self) -> &Membership {
        self.entries.last().map_or(&self.base, |(_, membership)| membership)
    }

    /// The index of the last configuration entry; with the base in force, the index of the
    /// snapshot it came with (0 for the bootstrap configuration).
    pub fn current_index(&self) -> LogIndex {
        self.entries.last().map_or(self.base_index, |(index, _)| *index)
    }

    /// The configuration as of `index` (the last at or before it): what a snapshot there
    /// must carry.
    pub fn at(&self, index: LogIndex) -> &Membership {
        self.entries.iter().rev().find(|(at, _)| *at <= index).map_or(&self.base, |(_, membership)| membership)
    }

    pub fn push(&mut self, index: LogIndex, membership: Membership) {
        assert!(index > self.current_index(), "configuration entries are pushed in log order");
        self.entries.push((index, membership));
    }

    /// Entries from `index` on left the log (a conflicting suffix, §5.3): the configuration
    /// before them is in force again.
    pub fn truncate_from(&mut self, index: LogIndex) {
        self.entries.retain(|(at, _)| *at < index);
    }

    /// The log now starts after `index` (a snapshot there, with `membership`): configuration
    /// entries it covers fold into the base.
    pub fn compact_to(&mut self, index: LogIndex, membership: Membership) {
        self.entries.retain(|(at, _)| *at > index);
        self.base = membership;
        self.base_index = self.base_index.max(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[u64]) -> BTreeSet<NodeId> {
        list.iter().map(|id| NodeId(*id)).collect()
    }

    fn voters(list: &[u64]) -> Membership {
        Membership::with_voters(list.iter().map(|id| NodeId(*id)))
    }

    #[test]
    fn a_majority_is_more_than_half_of_the_voters() {
        let membership = voters(&[1, 2, 3]);
        let matched = |id: NodeId| [0, 9, 7, 3][id.0 as usize];
        assert_eq!(membership.quorum_value(matched), 7, "nodes 1 and 2 hold 7");
        assert!(membership.has_majority(|id| id != NodeId(3)));
        assert!(!membership.has_majority(|id| id == NodeId(3)));
    }

    /// §4.3: in C_old,new a decision needs a majority of each set.
    #[test]
    fn a_joint_majority_needs_both_sets() {
        let joint = voters(&[1, 2, 3]).joint_towards(&voters(&[3, 4, 5]));
        assert_eq!((joint.voters.clone(), joint.voters_outgoing.clone()), (ids(&[3, 4, 5]), ids(&[1, 2, 3])));
        assert!(!joint.has_majority(|id| [1, 2].contains(&id.0)), "C_old alone");
        assert!(!joint.has_majority(|id| [4, 5].contains(&id.0)), "C_new alone");
        assert!(joint.has_majority(|id| [2, 3, 4].contains(&id.0)), "2 of C_old and 2 of C_new");
        let matched = |id: NodeId| [0, 10, 10, 6, 8, 8][id.0 as usize];
        assert_eq!(joint.quorum_value(matched), 8, "C_old holds 10, C_new 8: the lower");
    }

    #[test]
    fn changes_lead_where_they_should_and_refuse_what_makes_no_sense() {
        let start = voters(&[1, 2, 3]);
        let with_learner = start.after(MembershipChange::add_learner(NodeId(4))).unwrap();
        assert_eq!(with_learner.learners, ids(&[4]));
        assert_eq!(start.joint_towards(&with_learner), with_learner, "no joint step for a learner");
        let promoted = with_learner.after(MembershipChange::Promote(NodeId(4))).unwrap();
        assert_eq!((promoted.voters.clone(), promoted.learners.clone()), (ids(&[1, 2, 3, 4]), ids(&[])));
        let replaced = with_learner.after(MembershipChange::Replace { remove: NodeId(1), promote: NodeId(4) }).unwrap();
        assert_eq!(replaced.voters, ids(&[2, 3, 4]));
        assert_eq!(start.after(MembershipChange::add_learner(NodeId(2))), Err(MembershipError::AlreadyMember(NodeId(2))));
        assert_eq!(start.after(MembershipChange::Promote(NodeId(9))), Err(MembershipError::NotLearner(NodeId(9))));
        assert_eq!(start.after(MembershipChange::Remove(NodeId(9))), Err(MembershipError::NotMember(NodeId(9))));
        assert_eq!(voters(&[1]).after(MembershipChange::Remove(NodeId(1))), Err(MembershipError::LastVoter(NodeId(1))));
    }

    #[test]
    fn the_config_log_falls_back_when_an_entry_is_truncated() {
        let mut log = ConfigLog::new(voters(&[1, 2, 3]));
        log.push(LogIndex(5), voters(&[1, 2, 3]).after(MembershipChange::add_learner(NodeId(4))).unwrap());
        log.push(LogIndex(9), voters(&[1, 2, 3, 4]));
        assert_eq!(log.current(), &voters(&[1, 2, 3, 4]));
        assert_eq!(log.at(LogIndex(7)).learners, ids(&[4]));
        log.truncate_from(LogIndex(9));
        assert_eq!(log.current().learners, ids(&[4]), "the entry at 5 is in force again");
        log.compact_to(LogIndex(6), log.at(LogIndex(6)).clone());
        assert_eq!(log.current_index(), LogIndex(6), "in force at the snapshot, at the latest");
        assert_eq!(log.current().learners, ids(&[4]));
    }
}
