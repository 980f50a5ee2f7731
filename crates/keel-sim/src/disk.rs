//! A simulated disk: what survives a crash. A `Ready` reaches the disk only when its write
//! completes; a crash before that loses it. A write left unsynced (`Ready::may_defer_sync`)
//! sits in the "page cache" until the next sync: a crash keeps any prefix of it (the file
//! store's checksums turn a partly written tail into a shorter log), so some, all or none
//! of it is lost.

use keel_core::{Entry, HardState, LogIndex, RestoredState, Snapshot};

#[derive(Default, Clone)]
pub struct Disk {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot, consecutive.
    pub entries: Vec<Entry>,
    /// How many of `entries` are synced; the rest may be lost in a crash.
    pub synced_entries: usize,
    /// Written without a sync (a commit-only change); durable at the next sync.
    pub unsynced_hard_state: Option<HardState>,
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
        self.synced_entries = self.synced_entries.min(position);
        self.entries.extend_from_slice(entries);
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        self.unsynced_hard_state = Some(hard_state);
    }

    pub fn sync(&mut self) {
        self.synced_entries = self.entries.len();
        if let Some(hard_state) = self.unsynced_hard_state.take() {
            self.hard_state = hard_state;
        }
    }

    /// A power cut: of the unsynced entries, `kept` of them (in order) made it to the disk.
    /// Returns how many were lost.
    pub fn crash(&mut self, kept: usize) -> usize {
        let unsynced = self.unsynced_entries();
        assert!(kept <= unsynced, "keeps more than was written");
        self.entries.truncate(self.synced_entries + kept);
        self.unsynced_hard_state = None;
        unsynced - kept
    }

    pub fn unsynced_entries(&self) -> usize {
        self.entries.len() - self.synced_entries
    }

    pub fn first_unsynced_index(&self) -> Option<LogIndex> {
        self.entries.get(self.synced_entries).map(|entry| entry.index)
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
        self.sync();
    }

    /// The node's own snapshot: entries it covers go.
    pub fn compact(&mut self, snapshot: Snapshot) {
        let drop = self.position(snapshot.meta.last_included_index) + 1;
        self.entries.drain(..drop.min(self.entries.len()));
        self.snapshot = Some(snapshot);
        self.sync(); // As the node's storage thread syncs after compacting.
    }

    pub fn restored(&self) -> RestoredState {
        RestoredState { hard_state: self.hard_state, snapshot: self.snapshot.clone(), entries: self.entries.clone() }
    }
}
