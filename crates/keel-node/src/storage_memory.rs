//! `MemoryStorage`: the in-memory twin of `FileStorage`, with a crash model — the one
//! in-memory storage of the project: the simulator, the node tests, the core's scenario tests
//! and the conformance suite all use it.
//!
//! Nothing reaches a disk, but it remembers what a disk would have made durable:
//! - log entries are durable once a `sync` covers them; entries written since the last sync
//!   sit in the "page cache", and a crash keeps any prefix of them (`crash`), as the file
//!   store's checksums turn a partly written tail into a shorter log;
//! - a hard state is durable once a `sync` follows it; a crash before that loses it;
//! - a snapshot (installed or our own) is durable at once, as `FileStorage` writes its file
//!   with an atomic rename before it deletes any entry; an image being received, or written
//!   by `snapshot_writer` and not yet compacted, is lost in a crash, as a temporary file is.
//!
//! Overwriting synced entries (a conflicting append, §5.3) drops them at once, so a crash
//! before the next sync keeps neither the old suffix nor the new one: one of the outcomes
//! the `Storage` contract allows. Within one process, reads see every write, synced or not.
//!
//! It follows the same rules as `FileStorage` (the checks in `storage.rs` panic on the same
//! caller mistakes), which the conformance suite confirms.

use crate::storage::{check_append, check_chunk, check_compact, check_received, check_restored, check_snapshot_advances, Checksummed, SnapshotWriter, Storage, StorageError, StoredImage};
use keel_core::{Entry, HardState, LogIndex, ReceivedChunk, RestoredState, Snapshot, SnapshotMeta, Term};
use std::sync::{Arc, Mutex};

/// An image held in memory.
#[derive(Debug)]
pub struct MemoryImage {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

impl StoredImage for MemoryImage {
    fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
        let start = usize::try_from(offset).expect("an in-memory image fits in memory");
        Ok(self.data[start..start + len].to_vec())
    }

    fn reader(&self) -> Result<Box<dyn std::io::Read + Send + '_>, StorageError> {
        Ok(Box::new(self.data.as_slice()))
    }
}

/// A leader's image being received: the snapshot, the bytes so far, their CRC-32C.
#[derive(Clone, Debug)]
struct Incoming {
    snapshot: Snapshot,
    data: Vec<u8>,
    crc32c: u32,
}

#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    /// The hard state a crash keeps.
    hard_state: HardState,
    /// Written but not yet synced.
    unsynced_hard_state: Option<HardState>,
    snapshot: Option<Snapshot>,
    /// The image of `snapshot`.
    image: Option<Arc<MemoryImage>>,
    incoming: Option<Incoming>,
    /// Images `snapshot_writer` wrote (on any thread) that no `compact` took yet.
    written: Arc<Mutex<Vec<Arc<MemoryImage>>>>,
    /// `entries[0].index == snapshot_meta().last_included_index + 1`, consecutive.
    entries: Vec<Entry>,
    /// `entries[..synced_entries]` are durable.
    synced_entries: usize,
}

/// What a sync started now would make durable (see `MemoryStorage::make_durable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DurablePoint {
    entries: usize,
    hard_state: Option<HardState>,
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    /// The storage as a restarted process finds it after a crash now: the synced state, plus
    /// the first `kept_unsynced` entries written since (at most `unsynced_entries()`).
    /// Returns it and the number of entries lost.
    pub fn crash(mut self, kept_unsynced: usize) -> (MemoryStorage, usize) {
        let unsynced = self.unsynced_entries();
        assert!(kept_unsynced <= unsynced, "a crash cannot keep {kept_unsynced} of {unsynced} unsynced entries");
        self.entries.truncate(self.synced_entries + kept_unsynced);
        self.synced_entries = self.entries.len();
        self.unsynced_hard_state = None;
        self.incoming = None;
        self.written = Arc::default();
        (self, unsynced - kept_unsynced)
    }

    pub fn unsynced_entries(&self) -> usize {
        self.entries.len() - self.synced_entries
    }

    /// The first entry a crash could lose.
    pub fn first_unsynced_index(&self) -> Option<LogIndex> {
        self.entries.get(self.synced_entries).map(|entry| entry.index)
    }

    /// Everything written so far, as the point a sync begun now covers. A simulator that
    /// models a sync taking time takes the point when the sync starts and passes it to
    /// `make_durable` when it ends.
    pub fn durable_point(&self) -> DurablePoint {
        DurablePoint { entries: self.entries.len(), hard_state: self.unsynced_hard_state }
    }

    /// A sync that covered `point` completed. Writes since `point` stay unsynced.
    pub fn make_durable(&mut self, point: DurablePoint) {
        self.synced_entries = self.synced_entries.max(point.entries.min(self.entries.len()));
        if let Some(hard_state) = point.hard_state {
            self.hard_state = hard_state;
            if self.unsynced_hard_state == Some(hard_state) {
                self.unsynced_hard_state = None;
            }
        }
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

    /// Drops the first `count` entries (all if fewer), keeping `synced_entries` in step.
    fn drop_front(&mut self, count: usize) {
        let count = count.min(self.entries.len());
        self.entries.drain(..count);
        self.synced_entries = self.synced_entries.saturating_sub(count);
    }

    /// Drops entries `<= meta.last_included_index` (all of them if the log ends before) and
    /// makes `snapshot`, with `image`, the stored one.
    fn replace_prefix(&mut self, snapshot: &Snapshot, image: Arc<MemoryImage>) {
        assert_eq!(image.meta, snapshot.meta, "a snapshot is stored with its own image");
        let drop_count = match self.position(snapshot.meta.last_included_index) {
            Some(position) => position + 1,
            None => self.entries.len(),
        };
        self.drop_front(drop_count);
        self.snapshot = Some(snapshot.clone());
        self.image = Some(image);
    }
}

impl Storage for MemoryStorage {
    fn initial_state(&self) -> Result<RestoredState, StorageError> {
        if let Some(snapshot) = &self.snapshot {
            let image = self.image.as_ref().expect("a stored snapshot has an image");
            if SnapshotMeta::of_image(snapshot.meta.last_included_index, snapshot.meta.last_included_term, &image.data) != snapshot.meta {
                return Err(StorageError::Inconsistent { reason: format!("the image of the snapshot at {} does not match its size and checksum", snapshot.meta.last_included_index) });
            }
        }
        let hard_state = self.unsynced_hard_state.unwrap_or(self.hard_state);
        let restored = RestoredState { hard_state, snapshot: self.snapshot.clone(), entries: self.entries.clone() };
        check_restored(&restored)?;
        Ok(restored)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        check_append(self.first_index(), self.last_index(), entries);
        let Some(first) = entries.first() else { return Ok(()) };
        let keep = (first.index.0 - self.first_index().0) as usize;
        self.entries.truncate(keep);
        self.synced_entries = self.synced_entries.min(keep);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        self.unsynced_hard_state = Some(*hard_state);
        Ok(())
    }

    fn write_snapshot_chunk(&mut self, chunk: &ReceivedChunk) -> Result<(), StorageError> {
        check_chunk(self.incoming.as_ref().map(|incoming| (incoming.snapshot.meta, incoming.data.len() as u64)), chunk);
        if chunk.offset == 0 {
            self.incoming = Some(Incoming { snapshot: chunk.snapshot.clone(), data: Vec::new(), crc32c: 0 });
        }
        let incoming = self.incoming.as_mut().expect("started above or before");
        incoming.data.extend_from_slice(&chunk.data);
        incoming.crc32c = crc32c::crc32c_append(incoming.crc32c, &chunk.data);
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        check_snapshot_advances(self.snapshot_meta(), snapshot.meta);
        let meta = snapshot.meta;
        check_received(self.incoming.as_ref().map(|incoming| (incoming.snapshot.meta, incoming.data.len() as u64, incoming.crc32c)), meta);
        let incoming = self.incoming.take().expect("checked above");
        if self.term(meta.last_included_index) != Some(meta.last_included_term) {
            self.drop_front(self.entries.len());
        }
        self.replace_prefix(snapshot, Arc::new(MemoryImage { meta, data: incoming.data }));
        Ok(())
    }

    fn compact(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        check_snapshot_advances(self.snapshot_meta(), snapshot.meta);
        check_compact(snapshot.meta, self.term(snapshot.meta.last_included_index));
        let image = {
            let mut written = self.written.lock().expect("no writer panics holding the lock");
            let position = written.iter().position(|image| image.meta == snapshot.meta).expect("compact of a snapshot whose image snapshot_writer wrote");
            let image = written.remove(position);
            written.retain(|other| other.meta.last_included_index > snapshot.meta.last_included_index);
            image
        };
        self.replace_prefix(snapshot, image);
        Ok(())
    }

    fn snapshot_image(&self) -> Option<Arc<dyn StoredImage>> {
        self.image.clone().map(|image| image as Arc<dyn StoredImage>)
    }

    fn snapshot_writer(&self) -> SnapshotWriter {
        let written = self.written.clone();
        Box::new(move |job| {
            let mut out = Checksummed::new(Vec::new());
            (job.write)(&mut out).map_err(|error| StorageError::io("write snapshot image", "memory", error))?;
            let meta = out.meta(job.index, job.term);
            written.lock().expect("no writer panics holding the lock").push(Arc::new(MemoryImage { meta, data: out.inner }));
            Ok(Snapshot { meta, membership: job.membership })
        })
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.make_durable(self.durable_point());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::{EntryKind, NodeId};

    fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
        (from..=to).map(|index| Entry { term: Term(term), index: LogIndex(index), kind: EntryKind::Noop }).collect()
    }

    fn hard_state(term: u64) -> HardState {
        HardState { current_term: Term(term), voted_for: Some(NodeId(1)), commit_index: LogIndex(0) }
    }

    fn last_index(storage: &MemoryStorage) -> u64 {
        storage.initial_state().unwrap().entries.last().map_or(0, |entry| entry.index.0)
    }

    #[test]
    fn a_crash_keeps_the_synced_log_and_a_chosen_prefix_of_the_rest() {
        let mut storage = MemoryStorage::new();
        storage.append(&entries(1, 3, 1)).unwrap();
        storage.sync().unwrap();
        storage.append(&entries(4, 7, 1)).unwrap();
        assert_eq!((storage.unsynced_entries(), storage.first_unsynced_index()), (4, Some(LogIndex(4))));
        assert_eq!(last_index(&storage), 7, "reads see unsynced writes");
        let (kept_two, lost) = storage.clone().crash(2);
        assert_eq!((last_index(&kept_two), lost), (5, 2));
        let (kept_none, lost) = storage.crash(0);
        assert_eq!((last_index(&kept_none), lost), (3, 4));
        assert_eq!(kept_none.unsynced_entries(), 0);
    }

    #[test]
    fn an_unsynced_hard_state_is_lost_and_a_synced_one_kept() {
        let mut storage = MemoryStorage::new();
        storage.set_hard_state(&hard_state(1)).unwrap();
        storage.sync().unwrap();
        storage.set_hard_state(&hard_state(2)).unwrap();
        assert_eq!(storage.initial_state().unwrap().hard_state, hard_state(2));
        let (crashed, _) = storage.crash(0);
        assert_eq!(crashed.initial_state().unwrap().hard_state, hard_state(1));
    }

    #[test]
    fn overwriting_synced_entries_loses_the_old_suffix_until_the_next_sync() {
        let mut storage = MemoryStorage::new();
        storage.append(&entries(1, 5, 1)).unwrap();
        storage.sync().unwrap();
        storage.append(&entries(3, 4, 2)).unwrap();
        let (crashed, _) = storage.clone().crash(0);
        assert_eq!(last_index(&crashed), 2, "neither the old entries 3-5 nor the new 3-4");
        storage.sync().unwrap();
        let (crashed, _) = storage.crash(0);
        assert_eq!(crashed.initial_state().unwrap().entries, [entries(1, 2, 1), entries(3, 4, 2)].concat());
    }

    #[test]
    fn a_sync_covers_only_what_was_written_before_it_began() {
        let mut storage = MemoryStorage::new();
        storage.append(&entries(1, 2, 1)).unwrap();
        storage.set_hard_state(&hard_state(1)).unwrap();
        let point = storage.durable_point();
        storage.append(&entries(3, 3, 1)).unwrap();
        storage.make_durable(point);
        assert_eq!(storage.first_unsynced_index(), Some(LogIndex(3)));
        let (crashed, lost) = storage.crash(0);
        assert_eq!((last_index(&crashed), lost), (2, 1));
        assert_eq!(crashed.initial_state().unwrap().hard_state, hard_state(1));
    }

    #[test]
    fn snapshots_are_durable_at_once_and_keep_the_unsynced_tail_unsynced() {
        let mut storage = MemoryStorage::new();
        storage.append(&entries(1, 4, 1)).unwrap();
        storage.sync().unwrap();
        storage.append(&entries(5, 6, 1)).unwrap();
        crate::conformance::compact(&mut storage, 3, 1).unwrap();
        assert_eq!((storage.unsynced_entries(), storage.first_unsynced_index()), (2, Some(LogIndex(5))));
        let (crashed, _) = storage.crash(1);
        let restored = crashed.initial_state().unwrap();
        assert_eq!(restored.snapshot.map(|snapshot| snapshot.meta.last_included_index), Some(LogIndex(3)));
        assert_eq!(restored.entries, entries(4, 5, 1));
    }

    /// The core checks every received byte against the leader's checksum before it asks
    /// for an install: bytes that do not match reaching storage are a caller's mistake.
    #[test]
    fn installing_an_image_that_does_not_match_its_checksum_panics() {
        let mut storage = MemoryStorage::new();
        let mut snapshot = Snapshot { meta: SnapshotMeta::of_image(LogIndex(3), Term(1), b"abc"), membership: Default::default() };
        snapshot.meta.data_crc32c ^= 1;
        storage.write_snapshot_chunk(&ReceivedChunk { snapshot: snapshot.clone(), offset: 0, data: b"abc".to_vec() }).unwrap();
        let installed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| storage.install_snapshot(&snapshot)));
        assert!(installed.is_err());
    }
}
