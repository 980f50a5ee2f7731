//! Figure 3's safety properties, checked across the whole simulated cluster as it runs.
//! (Each node also checks its own invariants after every input: see keel-core's
//! `invariants.rs`, switched on here by the `invariants` feature.)

use keel_core::{Entry, EntryKind, LogIndex, Membership, NodeId, RaftCore, SnapshotMeta, Term};
use std::collections::BTreeMap;

#[derive(Default)]
pub struct ClusterChecker {
    /// Election Safety: at most one leader per term.
    leaders: BTreeMap<Term, NodeId>,
    /// Every entry any node applied, by index: State Machine Safety says all agree.
    applied: BTreeMap<LogIndex, (Term, EntryKind)>,
}

impl ClusterChecker {
    /// Election Safety and Leader Completeness, when `core` has just become leader of `term`.
    pub fn on_leader(&mut self, core: &RaftCore, term: Term) -> Result<(), String> {
        let id = core.id();
        if let Some(other) = self.leaders.insert(term, id) {
            if other != id {
                return Err(format!("Election Safety violated: nodes {other} and {id} both led term {term}"));
            }
        }
        // Leader Completeness: the new leader's log holds every entry known committed.
        let first = core.first_log_index();
        for (index, (entry_term, kind)) in self.applied.range(first..) {
            match core.entry(*index) {
                Some(entry) if entry.term == *entry_term && entry.kind == *kind => {}
                _ => return Err(format!("Leader Completeness violated: leader {id} of term {term} lacks committed entry {index} (term {entry_term})")),
            }
        }
        Ok(())
    }

    /// State Machine Safety: no two nodes apply different entries at one index.
    pub fn on_apply(&mut self, node: usize, entry: &Entry) -> Result<(), String> {
        match self.applied.get(&entry.index) {
            Some((term, kind)) if *term != entry.term || *kind != entry.kind => Err(format!(
                "State Machine Safety violated: node {} applied term {} at index {}, another node applied term {term}",
                node + 1,
                entry.term,
                entry.index
            )),
            Some(_) => Ok(()),
            None => {
                self.applied.insert(entry.index, (entry.term, entry.kind.clone()));
                Ok(())
            }
        }
    }

    /// A snapshot must end with an entry that is committed with the same term, and must not
    /// take a state machine (applied up to `applied_index`) backwards.
    pub fn on_snapshot(&self, meta: SnapshotMeta, applied_index: LogIndex) -> Result<(), String> {
        if let Some((term, _)) = self.applied.get(&meta.last_included_index) {
            if *term != meta.last_included_term {
                return Err(format!("snapshot at {} has term {}, the committed entry there has term {term}", meta.last_included_index, meta.last_included_term));
            }
        }
        if meta.last_included_index <= applied_index {
            return Err(format!("snapshot at {} would move applied index {applied_index} backwards", meta.last_included_index));
        }
        Ok(())
    }

    /// Every configuration entry applied anywhere (so committed), in log order.
    pub fn applied_configurations(&self) -> Vec<(LogIndex, Term, Membership)> {
        let configurations = self.applied.iter().filter_map(|(index, (term, kind))| match kind {
            EntryKind::Config(membership) => Some((*index, *term, membership.clone())),
            _ => None,
        });
        configurations.collect()
    }

    /// The node that led `term`, if any did.
    pub fn leader_of(&self, term: Term) -> Option<NodeId> {
        self.leaders.get(&term).copied()
    }

    /// Log Matching: if two logs hold an entry with the same index and term, the logs are
    /// identical up to it.
    pub fn check_log_matching(&self, cores: &[&RaftCore]) -> Result<(), String> {
        for (position, a) in cores.iter().enumerate() {
            for b in &cores[position + 1..] {
                check_pair(a, b)?;
            }
        }
        Ok(())
    }
}

fn check_pair(a: &RaftCore, b: &RaftCore) -> Result<(), String> {
    let low = a.first_log_index().max(b.first_log_index());
    let high = a.status().last_log_index.min(b.status().last_log_index);
    let mut index = high;
    // Find the highest index where both hold the same term...
    while index >= low && index.0 > 0 {
        if a.entry(index).map(|entry| entry.term) == b.entry(index).map(|entry| entry.term) {
            break;
        }
        index = index.prev();
    }
    // ... then everything from `low` to there must be identical.
    let mut at = low;
    while at <= index && at.0 > 0 {
        if a.entry(at) != b.entry(at) {
            return Err(format!("Log Matching violated between nodes {} and {} at index {at} (they agree at {index})", a.id(), b.id()));
        }
        at = at.next();
    }
    Ok(())
}
