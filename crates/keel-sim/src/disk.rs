//! A simulated disk: what survives a crash. A `Ready` becomes durable only when its write
//! completes; a crash before that loses it, as a power cut loses an unsynced write.

use keel_core::{Entry, HardState, LogIndex, RestoredState, Snapshot};

#[derive(Default, Clone)]
pub struct Disk {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot, consecutive.
    pub entries: Vec<Entry>,
}

impl Disk {
    fn snapshot_index(&self) -> LogIndex {
        self.snapshot.as_ref().map(|snapshot| snapshot.meta.last_included_index).unwrap_or_default()
    }

    fn position(&self, index: LogIndex) -> usize {
        (index.0 - self.snapshot_index().0 - 1) as usize
    }

    /// `Ready.entries` semantics: drop any entry at or after the first new index, then append.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let position = self.position(first.index);
        assert!(position <= self.entries.len(), "a gap in the log at {}", first.index);
        self.entries.truncate(position);
        self.entries.extend_from_slice(entries);
    }

    /// §7: keep the entries after the snapshot if the log holds its last entry, else drop all.
    pub fn install_snapshot(&mut self, snapshot: &Snapshot) {
        let meta = snapshot.meta;
        let keeps_suffix = meta.last_included_index > self.snapshot_index()
            && self.entries.get(self.position(meta.last_included_index)).is_some_and(|entry| entry.term == meta.last_included_term);
        if keeps_suffix {
            let drop = self.position(meta.last_included_index) + 1;
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        self.snapshot = Some(snapshot.clone());
    }

    /// The node's own snapshot: entries it covers go.
    pub fn compact(&mut self, snapshot: Snapshot) {
        let drop = self.position(snapshot.meta.last_included_index) + 1;
        self.entries.drain(..drop.min(self.entries.len()));
        self.snapshot = Some(snapshot);
    }

    pub fn restored(&self) -> RestoredState {
        RestoredState { hard_state: self.hard_state, snapshot: self.snapshot.clone(), entries: self.entries.clone() }
    }
}
