//! The membership nemesis (Raft thesis ch. 4 and §3.10), mixed with the other faults: add a
//! learner (a new node, started empty, that catches up by snapshot), promote it, remove a
//! voter (the leader too), replace a voter, grow towards five voters and shrink towards
//! three, transfer leadership. Nodes the cluster no longer holds are stopped for good.
//!
//! Checked as the run goes, beside the existing invariants (one leader per term across every
//! configuration, no committed entry lost, linearizable histories): every node's
//! configuration is the last configuration entry in its log (or its snapshot's, or its
//! bootstrap configuration).

use super::{node_id, node_index, SimNode, Simulation};
use keel_core::{EntryKind, Membership, MembershipChange, NodeId, RaftCore, Role};
use rand::Rng;

/// A node started to join that is not a member after this long is stopped (its addition
/// was refused, or lost with a leader).
pub(super) const JOIN_TIMEOUT_MS: u64 = 4_000;
/// A run never creates more nodes than the initial ones plus this many.
const NODES_ADDED_MAX: usize = 8;
const VOTERS_MIN: usize = 3;
const VOTERS_MAX: usize = 5;

impl Simulation {
    /// The live leader of the highest term, if any: the one whose configuration the
    /// cluster is in.
    fn current_leader(&self) -> Option<usize> {
        let cores = self.nodes.iter().enumerate().filter_map(|(index, node)| node.executor.as_ref().map(|executor| (index, executor.core())));
        let highest_term = cores.clone().map(|(_, core)| core.current_term()).max()?;
        cores.filter(|(_, core)| core.role() == Role::Leader && core.current_term() == highest_term).map(|(index, _)| index).next()
    }

    /// The cluster's configuration as the current leader has it (or, with no leader, as the
    /// live node with the most recent log has it).
    pub(super) fn cluster_membership(&self) -> Membership {
        let latest = |core: &&RaftCore| (core.current_term(), core.status().last_log_index);
        let core = match self.current_leader() {
            Some(index) => self.nodes[index].executor.as_ref().map(|executor| executor.core()),
            None => self.nodes.iter().filter_map(|node| node.executor.as_ref().map(|executor| executor.core())).max_by_key(latest),
        };
        core.map(|core| core.membership().clone()).unwrap_or_else(|| Membership::with_voters((0..self.config.nodes).map(node_id)))
    }

    /// A random node the cluster holds (clients pick their next target with it).
    pub(super) fn random_member_index(&mut self) -> usize {
        let members: Vec<usize> = self.cluster_membership().members().into_iter().map(node_index).filter(|index| !self.nodes[*index].retired).collect();
        if members.is_empty() {
            return self.rng.gen_range(0..self.config.nodes);
        }
        members[self.rng.gen_range(0..members.len())]
    }

    /// One membership action, against the current leader.
    pub(super) fn on_membership_nemesis(&mut self) -> Result<(), String> {
        let Some(leader) = self.current_leader() else { return Ok(()) };
        let core = self.nodes[leader].executor.as_ref().expect("a live leader").core();
        let membership = core.membership().clone();
        let in_flight = membership.is_joint() || core.status().commit_index < self.last_configuration_index(core);
        let voters: Vec<NodeId> = membership.voters.iter().copied().collect();
        let roll = self.rng.gen_range(0..100);
        if roll < 20 || in_flight {
            return self.transfer(leader, &voters);
        }
        let change = if let Some(learner) = membership.learners.iter().next().copied() {
            if voters.len() < VOTERS_MAX && roll < 75 {
                MembershipChange::Promote(learner)
            } else if roll < 90 {
                MembershipChange::Replace { remove: self.pick_voter(leader, &voters), promote: learner }
            } else {
                MembershipChange::Remove(learner)
            }
        } else if voters.len() > VOTERS_MIN && (roll < 60 || voters.len() >= VOTERS_MAX) {
            MembershipChange::Remove(self.pick_voter(leader, &voters))
        } else if voters.len() < VOTERS_MAX {
            let Some(new_node) = self.add_node()? else { return Ok(()) };
            MembershipChange::add_learner(node_id(new_node))
        } else {
            return self.transfer(leader, &voters);
        };
        if let MembershipChange::Remove(removed) | MembershipChange::Replace { remove: removed, .. } = change {
            if membership.voters.contains(&removed) && self.rng.gen_bool(0.5) {
                self.cut_off_a_majority_of_the_old_voters(leader, &voters, removed);
            }
        }
        self.stats.config_changes_proposed += 1;
        self.input(leader, |executor| {
            let _ = executor.propose_membership(change); // A refusal (a learner behind, say) is fine.
            Ok(())
        })
    }

    /// A change of voters made while the voter it removes, and enough others to be a
    /// majority of C_old, are cut off from the leader (replacing a machine during a
    /// partition). The leader's side may then hold a majority of C_new and not of C_old:
    /// exactly where the joint phase must not commit (thesis §4.3).
    fn cut_off_a_majority_of_the_old_voters(&mut self, leader: usize, voters: &[NodeId], removed: NodeId) {
        if removed == node_id(leader) {
            return;
        }
        let mut others: Vec<NodeId> = voters.iter().copied().filter(|id| *id != removed && *id != node_id(leader)).collect();
        let mut cut = vec![removed];
        while cut.len() < voters.len() / 2 + 1 && !others.is_empty() {
            cut.push(others.swap_remove(self.rng.gen_range(0..others.len())));
        }
        let cut: Vec<usize> = cut.into_iter().map(node_index).collect();
        let rest: Vec<usize> = (0..self.nodes.len()).filter(|index| !cut.contains(index)).collect();
        self.network.partition(&cut, &rest);
        self.stats.partitions += 1;
    }

    /// A voter to remove or replace: the leader a third of the time (thesis §4.2.2).
    fn pick_voter(&mut self, leader: usize, voters: &[NodeId]) -> NodeId {
        if self.rng.gen_range(0..3) == 0 {
            return node_id(leader);
        }
        voters[self.rng.gen_range(0..voters.len())]
    }

    fn transfer(&mut self, leader: usize, voters: &[NodeId]) -> Result<(), String> {
        let others: Vec<NodeId> = voters.iter().copied().filter(|id| *id != node_id(leader)).collect();
        if others.is_empty() {
            return Ok(());
        }
        let target = others[self.rng.gen_range(0..others.len())];
        let term = self.nodes[leader].executor.as_ref().expect("a live leader").core().current_term();
        self.stats.transfers_asked += 1;
        self.shared.borrow_mut().transfer_targets.push((target, term));
        self.input(leader, |executor| {
            let _ = executor.transfer_leadership(target);
            Ok(())
        })
    }

    /// Starts a new, empty node that knows no configuration; returns its index.
    fn add_node(&mut self) -> Result<Option<usize>, String> {
        if self.nodes.len() >= self.config.nodes + NODES_ADDED_MAX {
            return Ok(None);
        }
        let index = self.nodes.len();
        self.nodes.push(SimNode::new(Some(self.now_ms)));
        self.stats.nodes_added += 1;
        self.start_node(index)?;
        Ok(Some(index))
    }

    /// The index of the last configuration entry in `core`'s log (0 if none).
    fn last_configuration_index(&self, core: &RaftCore) -> keel_core::LogIndex {
        let entries = core.log_entries_from(core.first_log_index());
        entries.iter().rev().find(|entry| matches!(entry.kind, EntryKind::Config(_))).map_or(keel_core::LogIndex::ZERO, |entry| entry.index)
    }

    /// Stops for good the nodes the cluster no longer holds: removed members, once the
    /// leader of the highest term has committed a configuration without them, and joiners
    /// never added within `JOIN_TIMEOUT_MS`.
    pub(super) fn retire_nodes_outside_the_cluster(&mut self) {
        let Some(leader) = self.current_leader() else { return };
        let core = self.nodes[leader].executor.as_ref().expect("a live leader").core();
        let current = core.membership().clone();
        let committed = core.membership_at(core.status().commit_index).clone();
        for index in 0..self.nodes.len() {
            let id = node_id(index);
            let node = &mut self.nodes[index];
            if node.retired {
                continue;
            }
            if let Some(since) = node.joining_since_ms {
                if current.is_member(id) {
                    node.joining_since_ms = None;
                } else if self.now_ms > since + JOIN_TIMEOUT_MS {
                    self.retire(index);
                }
                continue;
            }
            if !current.is_member(id) && !committed.is_member(id) {
                self.retire(index);
            }
        }
    }

    fn retire(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.retired = true;
        node.executor = None;
        node.disk = None;
        node.epoch += 1;
        node.busy_until_ms = 0;
        node.pending_syncs = 0;
        self.stats.nodes_retired += 1;
        if self.crash_when_unsynced == Some(index) {
            self.crash_when_unsynced = None;
        }
    }

    /// Thesis §4.1, checked on every live node: its configuration is the last one its log
    /// holds (or its snapshot's, or, with neither, the one it started with).
    pub(super) fn check_configurations(&self) -> Result<(), String> {
        for (index, node) in self.nodes.iter().enumerate() {
            let Some(executor) = &node.executor else { continue };
            let core = executor.core();
            let in_log = core.log_entries_from(core.first_log_index()).into_iter().rev().find_map(|entry| match entry.kind {
                EntryKind::Config(membership) => Some(membership),
                _ => None,
            });
            let in_snapshot = || core.snapshot().map(|snapshot| snapshot.membership.clone()).filter(|membership| !membership.voters.is_empty());
            let expected = in_log.or_else(in_snapshot).unwrap_or_else(|| self.bootstrap_membership(index));
            if core.membership() != &expected {
                return Err(format!("node {}'s configuration is {}, but the last one in its log is {expected}", index + 1, core.membership()));
            }
        }
        Ok(())
    }

    fn bootstrap_membership(&self, index: usize) -> Membership {
        if index < self.config.nodes {
            Membership::with_voters((0..self.config.nodes).map(node_id))
        } else {
            Membership::default()
        }
    }

    /// From the committed configuration entries, in log order: how many, learners that
    /// became voters, and leaders a C_new left out (§4.2.2).
    pub(super) fn count_membership_changes(&mut self) {
        let shared = self.shared.borrow();
        let configurations = shared.checker.applied_configurations();
        self.stats.config_changes_committed = configurations.len() as u64;
        let mut previous = self.bootstrap_membership(0);
        for (_, term, membership) in &configurations {
            self.stats.learners_promoted += previous.learners.iter().filter(|id| membership.voters.contains(id)).count() as u64;
            let leader = shared.checker.leader_of(*term);
            if !membership.is_joint() && leader.is_some_and(|leader| !membership.is_voter(leader)) {
                self.stats.leaders_removed += 1;
            }
            previous = membership.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimConfig;

    /// Regression (found by seed 916 on five nodes, which hung): a node the cluster removed
    /// was stopped with a sync pending, and the simulator held every input to it back at the
    /// same instant, forever. A retired node is never busy.
    #[test]
    fn a_retired_node_with_a_sync_pending_holds_back_nothing() {
        let mut simulation = Simulation::new(SimConfig::new(0, 3)).expect("a simulation");
        simulation.start_node(2).expect("node 3 starts");
        simulation.nodes[2].pending_syncs = 1;
        assert!(simulation.is_busy(2), "a node waiting for its sync is busy");
        simulation.retire(2);
        assert!(!simulation.is_busy(2), "a retired node held its inputs back");
        simulation.nodes[2].pending_syncs = 1;
        assert!(!simulation.is_busy(2), "a node without a driver is never busy");
    }
}
