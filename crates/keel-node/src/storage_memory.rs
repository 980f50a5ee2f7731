//! `MemoryStorage`: the in-memory twin of `FileStorage`, for tests and simulation.
//!
//! Nothing reaches a disk: every write is "durable" at once and `sync` does nothing, so a
//! restart is modelled by keeping the value. It follows the same rules as `FileStorage`
//! (the checks in `storage.rs` panic on the same caller mistakes), which the conformance
//! suite confirms.

use crate::storage::{check_append, check_compact, check_restored, check_snapshot_advances, Storage, StorageError};
use keel_core::{Entry, HardState, LogIndex, RestoredState, Snapshot, SnapshotMeta, Term};

#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    /// `entries[0].index == snapshot_meta().last_included_index + 1`, consecutive.
    entries: Vec<Entry>,
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        self.snapshot.as_ref().map(|snapshot| snapshot.meta).unwrap_or_default()
    }

    fn first_index(&self) -> LogIndex {
        self.snapshot_meta().last_included_index.next()
    }

    fn last_index(&self) -> LogIndex {
        self.snapshot_meta().last_included_index.plus(self.entries.len() as u64)
    }

    /// The stored term at `index`: the snapshot's last entry or a log entry.
    fn term(&self, index: LogIndex) -> Option<Term> {
        let meta = self.snapshot_meta();
        if index == meta.last_included_index {
            return Some(meta.last_included_term);
        }
        self.position(index).map(|position| self.entries[position].term)
    }

    /// Where `index` sits in `entries`, if it is there. The one place that knows the offset.
    fn position(&self, index: LogIndex) -> Option<usize> {
        if index < self.first_index() || index > self.last_index() {
            return None;
        }
        Some((index.0 - self.first_index().0) as usize)
    }

    /// Drops entries `<= meta.last_included_index` (all of them if the log ends before) and
    /// makes `snapshot` the stored one.
    fn replace_prefix(&mut self, snapshot: &Snapshot) {
        let drop_count = match self.position(snapshot.meta.last_included_index) {
            Some(position) => position + 1,
            None => self.entries.len(),
        };
        self.entries.drain(..drop_count);
        self.snapshot = Some(snapshot.clone());
    }
}

impl Storage for MemoryStorage {
    fn initial_state(&self) -> Result<RestoredState, StorageError> {
        let restored = RestoredState { hard_state: self.hard_state, snapshot: self.snapshot.clone(), entries: self.entries.clone() };
        check_restored(&restored)?;
        Ok(restored)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        check_append(self.first_index(), self.last_index(), entries);
        let Some(first) = entries.first() else { return Ok(()) };
        let keep = (first.index.0 - self.first_index().0) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        self.hard_state = *hard_state;
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        check_snapshot_advances(self.snapshot_meta(), snapshot.meta);
        let meta = snapshot.meta;
        if self.term(meta.last_included_index) != Some(meta.last_included_term) {
            self.entries.clear();
        }
        self.replace_prefix(snapshot);
        Ok(())
    }

    fn compact(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        check_snapshot_advances(self.snapshot_meta(), snapshot.meta);
        check_compact(snapshot.meta, self.term(snapshot.meta.last_included_index));
        self.replace_prefix(snapshot);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}
