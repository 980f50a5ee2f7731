//! `FileStorage`: a `Storage` in one data directory, with the log in a segmented
//! write-ahead log.
//!
//! # On-disk layout
//!
//! ```text
//! <dir>/LOCK                                    empty; held with an exclusive file lock while open
//! <dir>/hard_state                              37 bytes, see storage_file/hard_state_file.rs
//! <dir>/snapshot-<index:020>-<term:020>.snap    the latest snapshot, see storage_file/snapshot_file.rs
//! <dir>/wal/<first_index:020>.seg               log segments, see storage_file/segment.rs
//! <dir>/*.tmp, <dir>/wal/*.tmp                  unfinished atomic writes; deleted on open
//! ```
//!
//! All integers are little-endian; all checksums are CRC-32C (Castagnoli). Records are
//! framed `[u32 length][u32 crc32c][payload]` (storage_file/record.rs).
//!
//! # What each operation does to the files
//!
//! - `append`: writes records after the last record of the last segment (over the zeros of
//!   a preallocated segment, or at the end of the file). When a segment would pass
//!   `segment_bytes_max` it is fsynced (sealed) and a new one is created — zero-filled to
//!   `segment_bytes_max` when `preallocate` is on — named by the index of its first record.
//!   A conflicting suffix is first cut away: segments that start at or after the first new
//!   index are deleted (newest first), the segment holding that index is truncated at the
//!   record's offset (it grows from there on), and the file and directory are fsynced before
//!   any new record is written.
//! - `set_hard_state`: kept in memory until `sync`.
//! - `sync`: fsyncs the last segment, then (if it changed) replaces `hard_state`.
//! - `write_snapshot_chunk`: appends to `<snapshot file>.incoming.tmp` (a first chunk starts
//!   it afresh); `snapshot_writer` streams our own image into `<snapshot file>.tmp` on a
//!   snapshot thread (see `storage_file/snapshot_file.rs`).
//! - `compact` and `install_snapshot`: make that temp file the snapshot file, durably (sync,
//!   rename, fsync the directory), then delete the
//!   segments whose records are all covered by it, except the last, which the log goes on in
//!   (oldest first, on a background thread: they are dead already, and a crash leaves them
//!   for step 3 below; a last segment left whole dead is deleted the same way once the next
//!   segment is created) — or, for an install whose last entry the log does not hold, every
//!   segment (newest first) — fsync the directory, and delete older snapshot files. Records
//!   at or below the snapshot index inside a kept segment are skipped when read.
//! - With `preallocate`, a spare file of `segment_bytes_max` zeros (`wal/spare.seg.tmp`) is
//!   written ahead, on a thread of its own once the last segment is half full (at open, for
//!   an empty log), and becomes the next segment when the log rolls.
//!
//! # Open (recovery)
//!
//! 1. Delete `*.tmp` files; read `hard_state` (missing: the default) and the newest
//!    snapshot (verified whole; older snapshot files are deleted).
//! 2. Scan every segment in index order, verifying each record's checksum and that indexes
//!    run consecutively within and across segments. A segment's records end at its end of
//!    file or where only zero bytes remain (a preallocated segment's unused space). A torn
//!    final record of the last segment (exact rule in storage_file/segment.rs) is truncated
//!    away with a warning; every other bad byte is `Corruption`.
//! 3. Finish what a crash interrupted: if the log holds the snapshot's last index with a
//!    different term, delete the log (an install cut short); delete segments wholly covered
//!    by the snapshot, except the last (a compaction cut short). A log that starts after
//!    `snapshot + 1` is `Corruption`.
//! 4. If the log's (or snapshot's) last term is newer than the stored `current_term`, the
//!    crash fell between the entries' fsync and the hard state's: no vote was ever sent in
//!    that term (votes go out only after their hard state is durable), so the term is raised
//!    with no vote, and a warning logged. Without this the core would start with a log from
//!    its future.

mod atomic;
mod hard_state_file;
mod record;
mod segment;
mod snapshot_file;

use crate::storage::{check_append, check_chunk, check_compact, check_received, check_restored, check_snapshot_advances, SnapshotWriter, Storage, StorageError, StoredImage};
use keel_core::{Entry, HardState, LogIndex, ReceivedChunk, RestoredState, Snapshot, SnapshotMeta, Term};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use snapshot_file::{FileImage, IncomingFile};
use std::sync::Arc;
use segment::{Segment, Tail};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use record::FRAME_HEADER_BYTES as RECORD_HEADER_BYTES;
pub use segment::HEADER_BYTES as SEGMENT_HEADER_BYTES;

const WAL_DIR_NAME: &str = "wal";
const LOCK_FILE_NAME: &str = "LOCK";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStorageConfig {
    /// A segment is sealed and a new one started before a record would take it past this
    /// size. A single larger record still gets a segment of its own.
    pub segment_bytes_max: u64,
    /// The largest record (frame header included): bounds one entry and what a reader
    /// will believe a length field.
    pub record_bytes_max: u32,
    /// Create each segment at its full `segment_bytes_max`, zero-filled, and write records
    /// over the zeros. An fdatasync after writing inside the file's allocated size flushes
    /// only data; one after growing the file must also write the new size (the inode: a
    /// journal commit on a journaling file system). Measured on the benchmark machine (3
    /// writers, one fdatasync per 200-byte write): p50 357 µs instead of 507 µs; under load,
    /// fewer of the disk's throttling stalls (docs/BENCHMARKS.md). The cost: a new
    /// segment's 64 MiB are written once (about 0.2 s, ahead of time), and every segment
    /// file is full-size on disk.
    pub preallocate: bool,
}

impl Default for FileStorageConfig {
    fn default() -> FileStorageConfig {
        FileStorageConfig { segment_bytes_max: 64 * 1024 * 1024, record_bytes_max: 64 * 1024 * 1024, preallocate: true }
    }
}

impl FileStorageConfig {
    pub fn validate(&self) -> Result<(), String> {
        let record_bytes_min = (record::FRAME_HEADER_BYTES + record::PAYLOAD_BYTES_MIN) as u32;
        if self.record_bytes_max < record_bytes_min {
            return Err(format!("record_bytes_max {} is below the smallest record ({record_bytes_min} bytes)", self.record_bytes_max));
        }
        if self.segment_bytes_max < segment::HEADER_BYTES + u64::from(record_bytes_min) {
            return Err(format!("segment_bytes_max {} cannot hold one record", self.segment_bytes_max));
        }
        Ok(())
    }

    fn payload_bytes_max(&self) -> usize {
        self.record_bytes_max as usize - record::FRAME_HEADER_BYTES
    }
}

/// What `open` found and repaired; every item was also logged with `tracing::warn!`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub torn_tail: Option<TornTail>,
    /// The log did not hold the snapshot's last entry: an install cut short by a crash.
    pub log_discarded: bool,
    /// Segments wholly covered by the snapshot: a compaction (or an install past the log's
    /// end) cut short by a crash.
    pub covered_segments_removed: usize,
    /// See step 4 of the module doc.
    pub term_raised_to: Option<Term>,
}

/// A record cut from the end of the last segment at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    pub offset: u64,
    pub bytes_removed: u64,
}

pub struct FileStorage {
    config: FileStorageConfig,
    dir: PathBuf,
    wal_dir: PathBuf,
    /// Held for the lifetime of the storage; the OS lock dies with the process.
    _lock: File,
    hard_state: HardState,
    hard_state_durable: HardState,
    snapshot: Option<Snapshot>,
    /// The image of `snapshot`.
    image: Option<Arc<FileImage>>,
    /// A leader's snapshot being received.
    incoming: Option<IncomingFile>,
    /// Consecutive; the first starts at or below `floor + 1`, the last ends at or after
    /// `floor`. Records `<= floor` inside them are dead.
    segments: Vec<Segment>,
    /// Open for append on `segments.last()`; `None` exactly when there are no segments.
    active: Option<File>,
    /// `active` has writes not yet fsynced.
    active_dirty: bool,
    /// A write failed: the files and the index may disagree, so every later call panics.
    failed: bool,
    recovery: Recovery,
    /// Deletes the segments a compaction covered, off the storage thread: see
    /// `remove_covered_segments_later`. Joined before the next one starts and on drop.
    reaper: Option<std::thread::JoinHandle<Result<(), StorageError>>>,
    /// With `preallocate`: the zero-filled file the next segment is made from, ready…
    spare_ready: Option<PathBuf>,
    /// …or being written on a thread of its own (see `prepare_spare_later`).
    spare_preparing: Option<std::thread::JoinHandle<Result<PathBuf, StorageError>>>,
    /// How long each fdatasync of the log took (`/metrics`: `keel_wal_fsync_seconds`).
    fsync_seconds: Histogram,
}

/// Buckets of `FileStorage::fsync_seconds`: 50 µs to ~1.6 s, doubling.
pub const FSYNC_BUCKETS_SECONDS: (f64, f64, u16) = (0.000_05, 2.0, 16);

impl Drop for FileStorage {
    fn drop(&mut self) {
        if let Some(Err(error)) = self.reaper.take().map(|reaper| reaper.join().expect("the segment reaper panicked")) {
            tracing::error!("deleting covered log segments failed: {error}");
        }
        // Released with the lock: no thread may still be writing in the directory.
        if let Some(Err(error)) = self.spare_preparing.take().map(|preparing| preparing.join().expect("the spare writer panicked")) {
            tracing::error!("preparing a spare log segment failed: {error}");
        }
    }
}

impl FileStorage {
    /// Opens (creating if needed) the storage in `dir` and recovers it; see the module doc.
    pub fn open(dir: impl AsRef<Path>, config: FileStorageConfig) -> Result<FileStorage, StorageError> {
        config.validate().map_err(|reason| StorageError::InvalidConfig { reason })?;
        let dir = dir.as_ref().to_path_buf();
        let wal_dir = dir.join(WAL_DIR_NAME);
        create_directories(&dir, &wal_dir)?;
        let lock = lock_directory(&dir)?;
        atomic::remove_temp_files(&dir)?;
        atomic::remove_temp_files(&wal_dir)?;
        let hard_state = hard_state_file::load(&dir)?;
        let (snapshot, image) = snapshot_file::load_latest(&dir)?.map_or((None, None), |(snapshot, image)| (Some(snapshot), Some(Arc::new(image))));
        let mut storage = FileStorage {
            config,
            dir,
            wal_dir,
            _lock: lock,
            hard_state,
            hard_state_durable: hard_state,
            snapshot,
            image,
            incoming: None,
            segments: Vec::new(),
            active: None,
            active_dirty: false,
            failed: false,
            recovery: Recovery::default(),
            reaper: None,
            spare_ready: None,
            spare_preparing: None,
            fsync_seconds: Histogram::new(exponential_buckets(FSYNC_BUCKETS_SECONDS.0, FSYNC_BUCKETS_SECONDS.1, FSYNC_BUCKETS_SECONDS.2)),
        };
        storage.load_segments()?;
        storage.reconcile_with_snapshot()?;
        storage.open_active()?;
        storage.raise_term_to_log()?;
        storage.check_invariants();
        storage.prepare_first_spare()?;
        Ok(storage)
    }

    /// The latency of the log's fsyncs, shared: register it in a metrics registry before
    /// the storage moves to its thread.
    pub fn fsync_seconds(&self) -> Histogram {
        self.fsync_seconds.clone()
    }

    /// What `open` repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment files, oldest first (for tests and tools).
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.iter().map(|segment| segment.path.clone()).collect()
    }

    fn floor(&self) -> SnapshotMeta {
        self.snapshot.as_ref().map(|snapshot| snapshot.meta).unwrap_or_default()
    }

    fn first_index(&self) -> LogIndex {
        self.floor().last_included_index.next()
    }

    fn last_index(&self) -> LogIndex {
        let floor = self.floor().last_included_index;
        self.segments.last().map_or(floor, |segment| segment.next_index().prev().max(floor))
    }

    // ----- open ---------------------------------------------------------------------------

    /// Step 2 of the module doc.
    fn load_segments(&mut self) -> Result<(), StorageError> {
        let mut names: Vec<(LogIndex, String)> = Vec::new();
        for name in atomic::list_files(&self.wal_dir)? {
            match segment::parse_file_name(&name) {
                Some(first_index) => names.push((first_index, name)),
                None => tracing::warn!(file = %self.wal_dir.join(&name).display(), "ignoring a file that is not a segment"),
            }
        }
        names.sort_by_key(|(first_index, _)| *first_index);
        for (position, (first_index, name)) in names.iter().enumerate() {
            let path = self.wal_dir.join(name);
            let tail = if position + 1 == names.len() { Tail::MayBeTorn } else { Tail::Strict };
            let scanned = segment::scan(&path, *first_index, self.config.payload_bytes_max(), tail, &mut |_| {})?;
            if let Some(previous) = self.segments.last() {
                if previous.next_index() != *first_index {
                    let reason = format!("segment starts at {first_index}, previous one ends before {}", previous.next_index());
                    return Err(StorageError::corruption(&path, 0, reason));
                }
            }
            if let Some(offset) = scanned.torn_at {
                self.cut_torn_tail(&path, offset)?;
            }
            self.segments.push(scanned.segment);
        }
        Ok(())
    }

    fn cut_torn_tail(&mut self, path: &Path, offset: u64) -> Result<(), StorageError> {
        let file = OpenOptions::new().write(true).open(path).map_err(|error| StorageError::io("open", path, error))?;
        let length = file.metadata().map_err(|error| StorageError::io("stat", path, error))?.len();
        assert!(offset < length, "a torn tail has bytes");
        tracing::warn!(file = %path.display(), offset, bytes = length - offset, "truncating torn record at the end of the log");
        file.set_len(offset).map_err(|error| StorageError::io("truncate", path, error))?;
        file.sync_all().map_err(|error| StorageError::io("fsync", path, error))?;
        self.recovery.torn_tail = Some(TornTail { file: path.to_path_buf(), offset, bytes_removed: length - offset });
        Ok(())
    }

    /// Step 3 of the module doc.
    fn reconcile_with_snapshot(&mut self) -> Result<(), StorageError> {
        let floor = self.floor();
        let holds_floor = self.segments.iter().any(|segment| segment.contains(floor.last_included_index));
        if holds_floor && self.log_term_at(floor.last_included_index)? != Some(floor.last_included_term) {
            tracing::warn!(snapshot_index = %floor.last_included_index, "log disagrees with the snapshot's last entry: finishing an interrupted install by discarding the log");
            self.remove_all_segments()?;
            self.recovery.log_discarded = true;
        }
        let removed = self.remove_covered_segments()?;
        if removed > 0 {
            tracing::warn!(segments = removed, "removed segments covered by the snapshot: finishing an interrupted compaction");
            self.recovery.covered_segments_removed = removed;
        }
        if let Some(first) = self.segments.first() {
            if first.first_index > self.first_index() {
                let reason = format!("log starts at {} but the snapshot ends at {}", first.first_index, floor.last_included_index);
                return Err(StorageError::corruption(&first.path, 0, reason));
            }
        }
        Ok(())
    }

    /// Step 4 of the module doc.
    fn raise_term_to_log(&mut self) -> Result<(), StorageError> {
        let last_term = self.term_at(self.last_index())?.expect("the last index has a term");
        if last_term > self.hard_state.current_term {
            tracing::warn!(stored_term = %self.hard_state.current_term, log_term = %last_term, "log is newer than the stored term: raising the term, with no vote");
            self.hard_state = HardState { current_term: last_term, voted_for: None, ..self.hard_state };
            self.recovery.term_raised_to = Some(last_term);
        }
        Ok(())
    }

    // ----- reads --------------------------------------------------------------------------

    /// The term at `index`: the snapshot's last entry, or a record read back from disk.
    fn term_at(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        let floor = self.floor();
        if index == floor.last_included_index {
            return Ok(Some(floor.last_included_term));
        }
        self.log_term_at(index)
    }

    /// The term of the stored record at `index`, ignoring the snapshot.
    fn log_term_at(&self, index: LogIndex) -> Result<Option<Term>, StorageError> {
        match self.segments.iter().find(|segment| segment.contains(index)) {
            Some(segment) => Ok(Some(self.read_record(segment, index)?.term)),
            None => Ok(None),
        }
    }

    fn read_record(&self, segment: &Segment, index: LogIndex) -> Result<Entry, StorageError> {
        let path = &segment.path;
        let offset = segment.offset_of(index);
        let end = segment.record_offsets.get((index.0 - segment.first_index.0) as usize + 1).copied().unwrap_or(segment.size_bytes);
        let mut file = File::open(path).map_err(|error| StorageError::io("open", path, error))?;
        file.seek(SeekFrom::Start(offset)).map_err(|error| StorageError::io("seek", path, error))?;
        let mut bytes = vec![0; (end - offset) as usize];
        file.read_exact(&mut bytes).map_err(|error| StorageError::io("read", path, error))?;
        match record::decode(&bytes, self.config.payload_bytes_max()) {
            record::Frame::Entry { entry, .. } if entry.index == index => Ok(entry),
            frame => Err(StorageError::corruption(path, offset, format!("reading back index {index}: {frame:?}"))),
        }
    }

    // ----- writes -------------------------------------------------------------------------

    /// Runs a write, and refuses every call after one fails (see the `Storage` doc).
    fn guarded<T>(&mut self, operation: impl FnOnce(&mut FileStorage) -> Result<T, StorageError>) -> Result<T, StorageError> {
        assert!(!self.failed, "FileStorage used after a failed write: stop the node and reopen");
        let result = operation(self);
        self.failed = result.is_err();
        result
    }

    fn append_entries(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        check_append(self.first_index(), self.last_index(), entries);
        let Some(first) = entries.first() else { return Ok(()) };
        self.check_record_sizes(entries)?;
        if first.index <= self.last_index() {
            self.truncate_from(first.index)?;
        }
        self.write_entries(entries)?;
        self.check_invariants();
        Ok(())
    }

    fn check_record_sizes(&self, entries: &[Entry]) -> Result<(), StorageError> {
        let bytes_max = self.config.record_bytes_max as usize;
        match entries.iter().find(|entry| record::frame_bytes(entry) > bytes_max) {
            Some(entry) => Err(StorageError::EntryTooLarge { index: entry.index, bytes: record::frame_bytes(entry), bytes_max }),
            None => Ok(()),
        }
    }

    /// Deletes every stored entry `>= index` and makes that durable (module doc, `append`).
    fn truncate_from(&mut self, index: LogIndex) -> Result<(), StorageError> {
        assert!(index >= self.first_index() && index <= self.last_index(), "truncation at {index} outside the log");
        self.active = None;
        self.active_dirty = false;
        while self.segments.last().is_some_and(|segment| segment.first_index >= index) {
            let segment = self.segments.pop().expect("checked above");
            atomic::remove_file(&segment.path)?;
        }
        if let Some(last) = self.segments.last_mut() {
            if last.contains(index) {
                let offset = last.offset_of(index);
                let path = &last.path;
                let file = OpenOptions::new().write(true).open(path).map_err(|error| StorageError::io("open", path, error))?;
                file.set_len(offset).map_err(|error| StorageError::io("truncate", path, error))?;
                file.sync_all().map_err(|error| StorageError::io("fsync", path, error))?;
                last.record_offsets.truncate((index.0 - last.first_index.0) as usize);
                last.size_bytes = offset;
            }
        }
        atomic::sync_directory(&self.wal_dir)?;
        self.open_active()
    }

    fn write_entries(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.write_records(entries)?;
        self.maybe_prepare_spare()
    }

    fn write_records(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let mut batch = Batch::default();
        for entry in entries {
            let frame_bytes = record::frame_bytes(entry) as u64;
            if self.must_roll(&batch, frame_bytes) {
                self.write_batch(&mut batch)?;
                self.roll(entry.index)?;
            }
            let last = self.segments.last().expect("rolled above if there was none");
            assert_eq!(last.next_index().plus(batch.record_offsets.len() as u64), entry.index, "a record lands where its index says");
            batch.record_offsets.push(batch.bytes.len() as u64);
            record::encode(entry, &mut batch.bytes);
        }
        self.write_batch(&mut batch)
    }

    /// A new segment is needed before the next `frame_bytes` (after `batch`).
    fn must_roll(&self, batch: &Batch, frame_bytes: u64) -> bool {
        let Some(last) = self.segments.last() else { return true };
        let has_records = !last.record_offsets.is_empty() || !batch.record_offsets.is_empty();
        has_records && last.size_bytes + batch.bytes.len() as u64 + frame_bytes > self.config.segment_bytes_max
    }

    fn write_batch(&mut self, batch: &mut Batch) -> Result<(), StorageError> {
        if batch.bytes.is_empty() {
            return Ok(());
        }
        let last = self.segments.last_mut().expect("a segment exists once rolled");
        let file = self.active.as_ref().expect("the last segment is open");
        file.write_all_at(&batch.bytes, last.size_bytes).map_err(|error| StorageError::io("write", &last.path, error))?;
        last.record_offsets.extend(batch.record_offsets.iter().map(|offset| last.size_bytes + offset));
        last.size_bytes += batch.bytes.len() as u64;
        self.active_dirty = true;
        batch.bytes.clear();
        batch.record_offsets.clear();
        Ok(())
    }

    /// Seals the last segment (fsync) and starts a new one at `first_index`.
    fn roll(&mut self, first_index: LogIndex) -> Result<(), StorageError> {
        if let Some(last) = self.segments.last() {
            assert_eq!(last.next_index(), first_index, "a new segment continues the log");
        }
        self.sync_active()?;
        let segment = if self.config.preallocate {
            let spare = self.take_spare()?;
            segment::create_from_spare(&self.wal_dir, &spare, first_index)?
        } else {
            segment::create(&self.wal_dir, first_index)?
        };
        self.segments.push(segment);
        self.open_active()?;
        // The segment just sealed may hold only records a snapshot covers: kept while it
        // was the last (see `take_covered_segments`), dead now.
        self.remove_covered_segments_later()
    }

    /// With `preallocate`, at open: an empty log will roll at its first append, so its spare
    /// is written now, before the node runs (zero-filling 64 MiB takes ~0.2 s: a stall that
    /// long on the first write could cost the leader its term). A log with a segment gets
    /// its spare from `maybe_prepare_spare`.
    fn prepare_first_spare(&mut self) -> Result<(), StorageError> {
        if self.config.preallocate && self.segments.is_empty() {
            self.spare_ready = Some(segment::prepare_spare(&self.wal_dir, self.config.segment_bytes_max)?);
        }
        self.maybe_prepare_spare()
    }

    /// Once the last segment is half full, starts writing the next spare on a thread of its
    /// own, so the roll only renames it. Not sooner: 64 MiB of zeros compete with the log's
    /// own fsyncs while they are written, and a small log never needs a second file.
    fn maybe_prepare_spare(&mut self) -> Result<(), StorageError> {
        let half_full = self.segments.last().is_some_and(|last| last.size_bytes >= self.config.segment_bytes_max / 2);
        if !self.config.preallocate || !half_full || self.spare_ready.is_some() || self.spare_preparing.is_some() {
            return Ok(());
        }
        let (wal_dir, bytes) = (self.wal_dir.clone(), self.config.segment_bytes_max);
        let prepare = move || segment::prepare_spare(&wal_dir, bytes);
        let thread = std::thread::Builder::new().name("keel-wal-spare".to_string()).spawn(prepare).map_err(|error| StorageError::io("spawn a thread to write", &self.wal_dir, error))?;
        self.spare_preparing = Some(thread);
        Ok(())
    }

    /// The spare for the next segment; waits for it if it is still being written.
    fn take_spare(&mut self) -> Result<PathBuf, StorageError> {
        if let Some(spare) = self.spare_ready.take() {
            return Ok(spare);
        }
        match self.spare_preparing.take() {
            Some(preparing) => preparing.join().expect("the spare writer panicked"),
            None => segment::prepare_spare(&self.wal_dir, self.config.segment_bytes_max),
        }
    }

    /// Opens the last segment for writing at its records' end: the file's end, or inside
    /// its zero tail (a preallocated segment; see segment.rs).
    fn open_active(&mut self) -> Result<(), StorageError> {
        self.active = None;
        let Some(last) = self.segments.last() else { return Ok(()) };
        let file = OpenOptions::new().write(true).open(&last.path).map_err(|error| StorageError::io("open", &last.path, error))?;
        let length = file.metadata().map_err(|error| StorageError::io("stat", &last.path, error))?.len();
        assert!(length >= last.size_bytes, "segment {} is shorter than its records", last.path.display());
        self.active = Some(file);
        Ok(())
    }

    fn sync_active(&mut self) -> Result<(), StorageError> {
        if !self.active_dirty {
            return Ok(());
        }
        let (Some(file), Some(last)) = (&self.active, self.segments.last()) else { unreachable!("dirty implies an open segment") };
        let started = std::time::Instant::now();
        file.sync_data().map_err(|error| StorageError::io("fsync", &last.path, error))?;
        self.fsync_seconds.observe(started.elapsed().as_secs_f64());
        self.active_dirty = false;
        Ok(())
    }

    /// With `snapshot` durable in its file (`image`), deletes the segments it covers (or,
    /// when `keep_suffix` is false, the whole log), then older snapshot files.
    fn replace_prefix(&mut self, snapshot: &Snapshot, image: FileImage, keep_suffix: bool) -> Result<(), StorageError> {
        assert_eq!(image.meta(), snapshot.meta, "a snapshot is stored with its own image");
        self.snapshot = Some(snapshot.clone());
        self.image = Some(Arc::new(image));
        if !keep_suffix {
            self.remove_all_segments()?;
        }
        self.remove_covered_segments_later()?;
        snapshot_file::remove_older_than(&self.dir, snapshot.meta)?;
        self.check_invariants();
        Ok(())
    }

    /// Deletes the segments that start at or below `floor` and hold nothing after it, oldest
    /// first, except the last; how many.
    fn remove_covered_segments(&mut self) -> Result<usize, StorageError> {
        let paths = self.take_covered_segments();
        if !paths.is_empty() {
            remove_segment_files(&self.wal_dir, &paths)?;
        }
        Ok(paths.len())
    }

    /// Drops the covered segments from the index, oldest first; their paths, to delete.
    /// The last segment always stays, even when the snapshot covers all of it: the log goes
    /// on in it (its dead records are skipped when read), instead of in a new segment whose
    /// creation costs a fsync of the directory, and with `preallocate` 64 MiB of zeros.
    fn take_covered_segments(&mut self) -> Vec<PathBuf> {
        let floor = self.floor().last_included_index;
        let is_covered = |segment: &Segment| segment.first_index <= floor && segment.next_index() <= floor.next();
        let covered = self.segments.iter().take_while(|segment| is_covered(segment)).count();
        let covered = covered.min(self.segments.len().saturating_sub(1));
        self.segments.drain(..covered).map(|segment| segment.path).collect()
    }

    /// Like `remove_covered_segments`, but the files are unlinked on a thread of its own.
    /// Deleting a 64 MiB segment can take hundreds of milliseconds (freeing extents, and
    /// discarding them on a `discard` mount), long enough to hold up the log writes behind
    /// it past an election timeout. The segments are already out of the index, and a crash
    /// before they are gone only leaves dead files that `open` deletes (step 3 of the
    /// module doc). A failure surfaces at the next compaction or roll, which then fails too.
    fn remove_covered_segments_later(&mut self) -> Result<(), StorageError> {
        if let Some(reaper) = self.reaper.take() {
            reaper.join().expect("the segment reaper panicked")?;
        }
        let paths = self.take_covered_segments();
        if paths.is_empty() {
            return Ok(());
        }
        let wal_dir = self.wal_dir.clone();
        let reap = move || remove_segment_files(&wal_dir, &paths);
        let reaper = std::thread::Builder::new().name("keel-segment-reaper".to_string()).spawn(reap).map_err(|error| StorageError::io("spawn a thread to delete", &self.wal_dir, error))?;
        self.reaper = Some(reaper);
        Ok(())
    }

    /// Deletes every segment, newest first, so a crash midway leaves a prefix of the log.
    fn remove_all_segments(&mut self) -> Result<(), StorageError> {
        self.active = None;
        self.active_dirty = false;
        while let Some(segment) = self.segments.pop() {
            atomic::remove_file(&segment.path)?;
        }
        atomic::sync_directory(&self.wal_dir)
    }

    fn check_invariants(&self) {
        let floor = self.floor().last_included_index;
        for pair in self.segments.windows(2) {
            assert_eq!(pair[1].first_index, pair[0].next_index(), "segments are consecutive");
        }
        if let (Some(first), Some(last)) = (self.segments.first(), self.segments.last()) {
            assert!(first.first_index <= floor.next(), "log starts after the snapshot");
            assert!(last.next_index() >= floor.next(), "log ends inside the snapshot");
        }
        assert_eq!(self.active.is_some(), !self.segments.is_empty(), "the last segment is open");
        assert!(!self.active_dirty || self.active.is_some(), "dirty writes have a file");
    }
}

/// Records encoded for one write to the last segment; offsets relative to `bytes`.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    record_offsets: Vec<u64>,
}

impl Storage for FileStorage {
    fn initial_state(&self) -> Result<RestoredState, StorageError> {
        let floor = self.floor().last_included_index;
        let mut entries = Vec::new();
        for segment in &self.segments {
            let mut keep = |entry: Entry| {
                if entry.index > floor {
                    entries.push(entry);
                }
            };
            let scanned = segment::scan(&segment.path, segment.first_index, self.config.payload_bytes_max(), Tail::Strict, &mut keep)?;
            if scanned.segment.record_offsets != segment.record_offsets {
                return Err(StorageError::Inconsistent { reason: format!("segment {} changed on disk while open", segment.path.display()) });
            }
        }
        let restored = RestoredState { hard_state: self.hard_state, snapshot: self.snapshot.clone(), entries };
        check_restored(&restored)?;
        Ok(restored)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.guarded(|storage| storage.append_entries(entries))
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError> {
        self.guarded(|storage| {
            storage.hard_state = *hard_state;
            Ok(())
        })
    }

    fn write_snapshot_chunk(&mut self, chunk: &ReceivedChunk) -> Result<(), StorageError> {
        self.guarded(|storage| {
            check_chunk(storage.incoming.as_ref().map(IncomingFile::received), chunk);
            if chunk.offset == 0 {
                if let Some(previous) = storage.incoming.take() {
                    previous.discard()?;
                }
                storage.incoming = Some(IncomingFile::create(&storage.dir, chunk)?);
            }
            storage.incoming.as_mut().expect("started above or before").append(&chunk.data)
        })
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.guarded(|storage| {
            let meta = snapshot.meta;
            check_snapshot_advances(storage.floor(), meta);
            check_received(storage.incoming.as_ref().map(IncomingFile::received_with_checksum), meta);
            let image = storage.incoming.take().expect("checked above").finish(&storage.dir)?;
            let keep_suffix = storage.term_at(meta.last_included_index)? == Some(meta.last_included_term);
            storage.replace_prefix(snapshot, image, keep_suffix)
        })
    }

    fn compact(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.guarded(|storage| {
            let meta = snapshot.meta;
            check_snapshot_advances(storage.floor(), meta);
            check_compact(meta, storage.term_at(meta.last_included_index)?);
            let image = snapshot_file::store_own(&storage.dir, snapshot)?;
            storage.replace_prefix(snapshot, image, true)
        })
    }

    fn snapshot_image(&self) -> Option<Arc<dyn StoredImage>> {
        self.image.clone().map(|image| image as Arc<dyn StoredImage>)
    }

    /// Streams the image into the snapshot's temp file and syncs it; `compact` then only
    /// renames it.
    fn snapshot_writer(&self) -> SnapshotWriter {
        let dir = self.dir.clone();
        Box::new(move |job| snapshot_file::write_own(&dir, job))
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.guarded(|storage| {
            storage.sync_active()?;
            if storage.hard_state != storage.hard_state_durable {
                hard_state_file::store(&storage.dir, &storage.hard_state)?;
                storage.hard_state_durable = storage.hard_state;
            }
            Ok(())
        })
    }
}

/// Deletes `paths` (segments already out of the index) in order, then syncs the directory.
fn remove_segment_files(wal_dir: &Path, paths: &[PathBuf]) -> Result<(), StorageError> {
    for path in paths {
        atomic::remove_file(path)?;
    }
    atomic::sync_directory(wal_dir)
}

fn create_directories(dir: &Path, wal_dir: &Path) -> Result<(), StorageError> {
    if wal_dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(wal_dir).map_err(|error| StorageError::io("create directory", wal_dir, error))?;
    atomic::sync_directory(dir)?;
    if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        atomic::sync_directory(parent)?;
    }
    Ok(())
}

fn lock_directory(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|error| StorageError::io("open", &path, error))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked { path: dir.to_path_buf() }),
        Err(std::fs::TryLockError::Error(error)) => Err(StorageError::io("lock", &path, error)),
    }
}
