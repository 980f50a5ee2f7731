//! The replicated log as one node sees it (§5.3), behind the snapshot it was compacted to (§7).
//!
//! Every read of the log goes through this type, and only this type knows the offset between
//! a log index and a position in memory. The seed's snapshot bugs (`log[index - 1]` after
//! compaction) cannot happen outside this file.

use crate::membership::{ConfigLog, Membership};
use crate::types::{Entry, EntryKind, LogIndex, SnapshotMeta, Term};

#[derive(Debug, Clone)]
pub struct RaftLog {
    /// Everything up to and including `snapshot.last_included_index` lives only in the snapshot.
    snapshot: SnapshotMeta,
    /// The configuration entries among `entries`, and the configuration the snapshot ends
    /// with: the last is the node's configuration (thesis §4.1), kept here because only the
    /// log knows when an entry comes or goes.
    configs: ConfigLog,
    /// `entries[0].index == snapshot.last_included_index + 1`, consecutive.
    entries: Vec<Entry>,
    /// Figure 2 `commitIndex`: highest index known to be committed.
    commit_index: LogIndex,
    /// Highest index the driver has confirmed durable (`advance`).
    persisted_index: LogIndex,
    /// First index not yet handed to the driver in a `Ready`.
    unstable_from: LogIndex,
}

/// Where a follower's log disagrees with an AppendEntries (§5.3, with the optimisation the
/// paper sketches at the end of §5.3): the leader can skip a whole term per round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConflictHint {
    /// The follower's term at `prev_log_index`, or `None` if its log is shorter.
    pub conflict_term: Option<Term>,
    /// The first index the follower holds for `conflict_term`, or its last index + 1.
    pub conflict_index: LogIndex,
}

impl RaftLog {
    /// A log recovered from storage: a snapshot position and the configuration it ends with
    /// (or, without a snapshot, the bootstrap configuration), the entries after it, the
    /// commit index from the hard state. All of it is durable by definition.
    pub fn restore(snapshot: SnapshotMeta, membership: Membership, entries: Vec<Entry>, commit_index: LogIndex) -> RaftLog {
        let mut configs = ConfigLog::new(membership);
        configs.compact_to(snapshot.last_included_index, configs.current().clone());
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(entry.index, snapshot.last_included_index.plus(offset as u64 + 1), "log entries must be consecutive after the snapshot");
            if let EntryKind::Config(membership) = &entry.kind {
                configs.push(entry.index, membership.clone());
            }
        }
        let last = snapshot.last_included_index.plus(entries.len() as u64);
        let commit_index = commit_index.max(snapshot.last_included_index);
        assert!(commit_index <= last, "commit index {commit_index} beyond last index {last}");
        RaftLog { snapshot, configs, entries, commit_index, persisted_index: last, unstable_from: last.next() }
    }

    /// The configurations this log holds; the last is in force (thesis §4.1).
    pub fn configs(&self) -> &ConfigLog {
        &self.configs
    }

    fn push_entry(&mut self, entry: Entry) {
        if let EntryKind::Config(membership) = &entry.kind {
            self.configs.push(entry.index, membership.clone());
        }
        self.entries.push(entry);
    }

    pub fn snapshot_meta(&self) -> SnapshotMeta {
        self.snapshot
    }

    pub fn first_index(&self) -> LogIndex {
        self.snapshot.last_included_index.next()
    }

    pub fn last_index(&self) -> LogIndex {
        self.snapshot.last_included_index.plus(self.entries.len() as u64)
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot.last_included_term, |entry| entry.term)
    }

    pub fn commit_index(&self) -> LogIndex {
        self.commit_index
    }

    pub fn persisted_index(&self) -> LogIndex {
        self.persisted_index
    }

    /// The term of the entry at `index`: known for the snapshot's last entry and every entry
    /// after it; `None` for compacted or missing entries. Index 0 has term 0.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot.last_included_index {
            return Some(self.snapshot.last_included_term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index < self.first_index() || index > self.last_index() {
            return None;
        }
        let position = (index.0 - self.first_index().0) as usize;
        let entry = &self.entries[position];
        debug_assert_eq!(entry.index, index);
        Some(entry)
    }

    /// Entries `from..=to`, stopping early at `count_max` entries or once `bytes_max` is
    /// reached (at least one entry is returned if any is in range, so a big entry still moves).
    pub fn slice(&self, from: LogIndex, to: LogIndex, count_max: usize, bytes_max: usize) -> Vec<Entry> {
        assert!(from >= self.first_index(), "slice from {from} reaches into the snapshot");
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut index = from;
        while index <= to.min(self.last_index()) && out.len() < count_max {
            let entry = self.entry(index).expect("index within bounds");
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
            index = index.next();
        }
        out
    }

    /// §5.4.1: a candidate's log is at least as up-to-date as ours if its last term is
    /// greater, or equal with a last index at least as long.
    pub fn is_up_to_date(&self, last_log_term: Term, last_log_index: LogIndex) -> bool {
        (last_log_term, last_log_index) >= (self.last_term(), self.last_index())
    }

    /// Leader append: the only way new entries are created.
    pub fn append_new(&mut self, term: Term, kind: EntryKind) -> LogIndex {
        assert!(term >= self.last_term(), "a leader never appends an entry older than its log");
        let index = self.last_index().next();
        self.push_entry(Entry { term, index, kind });
        index
    }

    /// AppendEntries receiver, Figure 2 steps 2–4: reply false if the log has no entry at
    /// `prev_log_index` with `prev_log_term`; delete a conflicting entry and all that follow;
    /// append entries not already in the log. Returns the index of the last new entry.
    pub fn try_append(&mut self, prev_log_index: LogIndex, prev_log_term: Term, entries: &[Entry]) -> Result<LogIndex, ConflictHint> {
        if self.term(prev_log_index) != Some(prev_log_term) {
            return Err(self.conflict_hint(prev_log_index));
        }
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(entry.index, prev_log_index.plus(offset as u64 + 1), "entries must follow prev_log_index");
            match self.term(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => self.truncate_from(entry.index),
                None => {}
            }
            for entry in &entries[offset..] {
                self.push_entry(entry.clone());
            }
            break;
        }
        Ok(prev_log_index.plus(entries.len() as u64))
    }

    fn conflict_hint(&self, prev_log_index: LogIndex) -> ConflictHint {
        if prev_log_index > self.last_index() {
            return ConflictHint { conflict_term: None, conflict_index: self.last_index().next() };
        }
        let conflict_term = self.term(prev_log_index).expect("callers handle indexes inside the snapshot");
        let mut first = prev_log_index;
        while first > self.first_index() && self.term(first.prev()) == Some(conflict_term) {
            first = first.prev();
        }
        ConflictHint { conflict_term: Some(conflict_term), conflict_index: first }
    }

    /// The last index at which this log holds `term`, if any (leader side of the conflict hint).
    pub fn last_index_of_term(&self, term: Term) -> Option<LogIndex> {
        let in_entries = self.entries.iter().rev().find(|entry| entry.term == term).map(|entry| entry.index);
        // The snapshot's last entry counts too: otherwise a term ending exactly at the
        // snapshot would send the leader back into the snapshot and a needless transfer.
        in_entries.or((self.snapshot.last_included_term == term && self.snapshot.last_included_index > LogIndex::ZERO).then_some(self.snapshot.last_included_index))
    }

    /// Removes `index` and everything after it. Committed entries are never removed (§5.4).
    fn truncate_from(&mut self, index: LogIndex) {
        assert!(index > self.commit_index, "truncating committed entry {index} (commit {})", self.commit_index);
        let keep = (index.0 - self.first_index().0) as usize;
        self.entries.truncate(keep);
        self.configs.truncate_from(index);
        self.unstable_from = self.unstable_from.min(index);
        self.persisted_index = self.persisted_index.min(index.prev());
    }

    pub fn commit_to(&mut self, index: LogIndex) {
        assert!(index <= self.last_index(), "commit {index} beyond last index {}", self.last_index());
        if index > self.commit_index {
            self.commit_index = index;
        }
    }

    /// Our own snapshot covers `meta`: drop the entries it replaces (§7). Its configuration is
    /// the one in force at its last index.
    pub fn compact_to(&mut self, meta: SnapshotMeta) {
        assert!(meta.last_included_index <= self.commit_index, "snapshot beyond commit index");
        assert_eq!(self.term(meta.last_included_index), Some(meta.last_included_term), "snapshot does not match the log");
        let drop = (meta.last_included_index.0 + 1 - self.first_index().0) as usize;
        self.entries.drain(..drop);
        let membership = self.configs.at(meta.last_included_index).clone();
        self.configs.compact_to(meta.last_included_index, membership);
        self.snapshot = meta;
    }

    /// A snapshot from the leader (§7, InstallSnapshot receiver steps 6–7): if we hold the
    /// entry it ends with, keep what follows; otherwise discard the whole log. `membership`
    /// is the configuration in force at its last index.
    pub fn install_snapshot(&mut self, meta: SnapshotMeta, membership: Membership) {
        assert!(meta.last_included_index > self.commit_index, "installing a snapshot we already cover");
        if self.term(meta.last_included_index) == Some(meta.last_included_term) {
            let drop = (meta.last_included_index.0 + 1 - self.first_index().0) as usize;
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
            self.configs.truncate_from(meta.last_included_index.next());
            self.unstable_from = meta.last_included_index.next();
            self.persisted_index = self.persisted_index.min(meta.last_included_index);
        }
        self.configs.compact_to(meta.last_included_index, membership);
        self.snapshot = meta;
        self.commit_index = meta.last_included_index;
        self.unstable_from = self.unstable_from.max(meta.last_included_index.next());
    }

    /// Entries appended since the last `Ready`; marks them as handed out.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let from = self.unstable_from.max(self.first_index());
        let out = if from <= self.last_index() { self.slice(from, self.last_index(), usize::MAX, usize::MAX) } else { Vec::new() };
        self.unstable_from = self.last_index().next();
        out
    }

    pub fn has_unstable(&self) -> bool {
        self.unstable_from.max(self.first_index()) <= self.last_index()
    }

    /// The driver made entries up to `index` (with `term`) and snapshots up to `snapshot_index`
    /// durable. An entry replaced since it was handed out does not count.
    pub fn persisted_to(&mut self, index: LogIndex, term: Term) {
        if self.term(index) == Some(term) && index < self.unstable_from {
            self.persisted_index = self.persisted_index.max(index);
        }
    }

    pub fn snapshot_persisted(&mut self, meta: SnapshotMeta) {
        if self.snapshot == meta {
            self.persisted_index = self.persisted_index.max(meta.last_included_index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { term: Term(term), index: LogIndex(index), kind: EntryKind::Noop }
    }

    fn log_with_terms(terms: &[u64]) -> RaftLog {
        let entries = terms.iter().enumerate().map(|(i, t)| entry(i as u64 + 1, *t)).collect();
        RaftLog::restore(SnapshotMeta::default(), Membership::default(), entries, LogIndex(0))
    }

    #[test]
    fn term_lookup_goes_through_the_snapshot_offset() {
        let mut log = log_with_terms(&[1, 1, 2, 2, 3]);
        log.commit_to(LogIndex(4));
        log.compact_to(SnapshotMeta { last_included_index: LogIndex(3), last_included_term: Term(2), ..Default::default() });
        assert_eq!(log.term(LogIndex(2)), None, "compacted");
        assert_eq!(log.term(LogIndex(3)), Some(Term(2)), "snapshot's last entry");
        assert_eq!(log.term(LogIndex(5)), Some(Term(3)));
        assert_eq!(log.first_index(), LogIndex(4));
        assert_eq!(log.last_index(), LogIndex(5));
    }

    // §5.3: a conflicting entry and all that follow it are deleted.
    #[test]
    fn try_append_truncates_conflicting_suffix() {
        let mut log = log_with_terms(&[1, 1, 2, 2]);
        let last = log.try_append(LogIndex(2), Term(1), &[entry(3, 3)]).unwrap();
        assert_eq!(last, LogIndex(3));
        assert_eq!(log.last_index(), LogIndex(3));
        assert_eq!(log.term(LogIndex(3)), Some(Term(3)));
    }

    // §5.3: appending entries already present is idempotent (the seed's Day 6 bug).
    #[test]
    fn try_append_is_idempotent() {
        let mut log = log_with_terms(&[1, 1, 2]);
        log.try_append(LogIndex(1), Term(1), &[entry(2, 1)]).unwrap();
        assert_eq!(log.last_index(), LogIndex(3), "a stale, shorter append must not truncate");
    }

    #[test]
    fn conflict_hint_names_first_index_of_conflicting_term() {
        let mut log = log_with_terms(&[1, 2, 2, 2, 2]);
        let hint = log.try_append(LogIndex(5), Term(3), &[]).unwrap_err();
        assert_eq!(hint, ConflictHint { conflict_term: Some(Term(2)), conflict_index: LogIndex(2) });
        let hint = log.try_append(LogIndex(9), Term(3), &[]).unwrap_err();
        assert_eq!(hint, ConflictHint { conflict_term: None, conflict_index: LogIndex(6) });
    }

    #[test]
    fn install_snapshot_keeps_matching_suffix() {
        let mut log = log_with_terms(&[1, 1, 2, 2]);
        log.install_snapshot(SnapshotMeta { last_included_index: LogIndex(2), last_included_term: Term(1), ..Default::default() }, Membership::default());
        assert_eq!(log.last_index(), LogIndex(4));
        assert_eq!(log.commit_index(), LogIndex(2));
        let mut log = log_with_terms(&[1, 1, 2, 2]);
        log.install_snapshot(SnapshotMeta { last_included_index: LogIndex(3), last_included_term: Term(5), ..Default::default() }, Membership::default());
        assert_eq!(log.last_index(), LogIndex(3), "mismatching log discarded");
    }

    #[test]
    fn last_index_of_term_sees_the_snapshot_boundary() {
        let mut log = log_with_terms(&[1, 1, 2, 3]);
        log.commit_to(LogIndex(3));
        log.compact_to(SnapshotMeta { last_included_index: LogIndex(3), last_included_term: Term(2), ..Default::default() });
        assert_eq!(log.last_index_of_term(Term(2)), Some(LogIndex(3)));
        assert_eq!(log.last_index_of_term(Term(3)), Some(LogIndex(4)));
        assert_eq!(log.last_index_of_term(Term(1)), None, "compacted away");
    }

    #[test]
    fn up_to_date_compares_term_then_length() {
        let log = log_with_terms(&[1, 2]);
        assert!(log.is_up_to_date(Term(3), LogIndex(1)));
        assert!(log.is_up_to_date(Term(2), LogIndex(2)));
        assert!(!log.is_up_to_date(Term(2), LogIndex(1)));
        assert!(!log.is_up_to_date(Term(1), LogIndex(9)));
    }
}
