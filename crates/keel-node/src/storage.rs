//! `Storage`: where a node keeps the state Raft requires on stable storage (Figure 2,
//! "Persistent state on all servers"), its log, and its latest snapshot (§7).
//!
//! The driver carries out step 4 of the driver contract (`keel_core::ready`) through this
//! trait, in this order: `write_snapshot_chunk` (for each of `ready.received_chunks`),
//! `install_snapshot` (if `ready.snapshot`), `append` (if `ready.entries`), `set_hard_state`
//! (if `ready.hard_state`), then `sync`.
//!
//! Snapshot images are streamed, never held whole: the state machine writes its image
//! through `snapshot_writer` (on a snapshot thread), a received one arrives chunk by chunk,
//! and both are read back through a [`StoredImage`] — in chunks to send to a follower, or
//! as a stream to restore a state machine from. Only after `sync`
//! returns may it send `ready.persisted_messages`. Every error is fatal to the node: a node
//! that goes on after a lost write may answer wrongly, so the driver stops instead.
//!
//! Two implementations sit beside this file: `MemoryStorage` (tests, simulation) and
//! `FileStorage` (a segmented write-ahead log). `conformance` checks both against the same
//! list of behaviours.
//!
//! Caller mistakes (an append that leaves a gap, a compaction past the log's end) are
//! programmer errors and panic, with the same messages in every implementation: the checks
//! live in this file.

use keel_core::{Entry, HardState, LogIndex, Membership, ReceivedChunk, RestoredState, Snapshot, SnapshotMeta, SnapshotWrite, Term};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Stable storage for one Raft node.
///
/// After any error the storage is in an unknown state: the node stops, and a restart
/// reopens it (which recovers). Implementations may panic if used after a failed call.
///
/// Write methods may buffer; nothing they do need be durable until `sync` returns. What
/// they must guarantee whatever happens (crash included) is that the durable state is
/// always one the node could have been in after some earlier `sync`, or after a prefix of
/// the writes since then applied in order: never a mix that breaks the log's shape
/// (consecutive indexes after the snapshot, commit index within the log).
pub trait Storage {
    /// Everything stored: the hard state, the latest snapshot (its image checked against
    /// its size and CRC-32C, and readable through `snapshot_image`), and the log entries
    /// after that snapshot, consecutive from `last_included_index + 1`.
    ///
    /// Called once at start, before the core is built. After a restart it returns at least
    /// everything made durable by the last successful `sync` (writes after it may or may not
    /// be there). Within one process it reflects every write so far, synced or not.
    fn initial_state(&self) -> Result<RestoredState, StorageError>;

    /// Stores `entries` (`Ready.entries`): first deletes every stored entry with index
    /// `>= entries[0].index` (a conflicting suffix, §5.3), then appends `entries`.
    ///
    /// `entries` must be consecutive, start after the snapshot, and leave no gap after the
    /// stored log (`check_append` panics otherwise). An empty slice does nothing.
    ///
    /// Durable only after `sync`. A crash before it may keep any prefix of the new entries
    /// (and, if a suffix was deleted, either the old suffix or none of it): every such state
    /// is a log this node may safely restart from, because the entries it replaces
    /// conflict with the leader's log and so were never committed (§5.3, §5.4).
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;

    /// Stores the term, vote and commit index (`Ready.hard_state`). Durable only after
    /// `sync`; `sync` makes it durable after the entries written before it, so a durable
    /// commit index never points past the durable log.
    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StorageError>;

    /// Writes a chunk of a snapshot being received from the leader (`Ready.received_chunks`,
    /// in order). A chunk at offset 0 starts a new image, dropping any other being received;
    /// every other chunk continues the image being received where it ends (`check_chunk`
    /// panics otherwise). Nothing written here is stored state until `install_snapshot`: a
    /// crash may drop it.
    fn write_snapshot_chunk(&mut self, chunk: &ReceivedChunk) -> Result<(), StorageError>;

    /// Makes the image received whole through `write_snapshot_chunk` the stored snapshot
    /// (`Ready.snapshot`; §7 InstallSnapshot receiver steps 6–7). If the log holds an entry
    /// at `meta.last_included_index` with `meta.last_included_term`, the entries after it
    /// stay; otherwise the whole log goes. Receiving an image other than `snapshot`'s, or
    /// only part of it, is a caller mistake (`check_received` panics).
    ///
    /// The snapshot is made durable before any entry is deleted: a crash in between leaves
    /// the new snapshot with the old log, and reading it back applies the same rule again.
    /// `meta.last_included_index` must be beyond the current snapshot.
    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError>;

    /// Makes the node's own snapshot (after `RaftCore::compact`), whose image
    /// `snapshot_writer` wrote, the stored snapshot; then drops the entries it covers
    /// (`<= meta.last_included_index`). The log must hold the entry the snapshot ends with,
    /// with the same term; entries after it stay.
    ///
    /// The snapshot is made durable before any entry is deleted, so a crash never leaves
    /// a hole between the snapshot and the log.
    fn compact(&mut self, snapshot: &Snapshot) -> Result<(), StorageError>;

    /// Makes every write so far durable (fsync): entries first, then the hard state. The
    /// driver sends no message that promises durable state until this returns `Ok`.
    fn sync(&mut self) -> Result<(), StorageError>;

    /// The stored snapshot's image (`None` without a snapshot), for other threads to read
    /// while the storage goes on writing.
    fn snapshot_image(&self) -> Option<Arc<dyn StoredImage>>;

    /// A function that writes the image of one of our own snapshots, durably, where a later
    /// `compact` of the snapshot it returns finds it. It runs on a snapshot thread, so that
    /// log writes are not held up for a large image (a held-up write holds up every
    /// acknowledgement, and followers silent for an election timeout lose the cluster its
    /// leader); it must not touch anything the other methods use.
    fn snapshot_writer(&self) -> SnapshotWriter;
}

/// See [`Storage::snapshot_writer`].
pub type SnapshotWriter = Box<dyn Fn(SnapshotJob) -> Result<Snapshot, StorageError> + Send + Sync>;

/// An image of our own state to write (`StateMachine::snapshot_job`): the state as of
/// `index` (of `term`), streamed by `write`, with the configuration in force there.
pub struct SnapshotJob {
    pub index: LogIndex,
    pub term: Term,
    pub membership: Membership,
    pub write: SnapshotWrite,
}

/// A stored snapshot's image. It never changes once stored; it is deleted when a newer
/// snapshot is stored, and reads after that fail (a handle opened before may finish).
pub trait StoredImage: Send + Sync {
    fn meta(&self) -> SnapshotMeta;

    /// Bytes `offset .. offset + len` of the image (which must lie inside it).
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, StorageError>;

    /// The whole image as a stream, to restore a state machine from.
    fn reader(&self) -> Result<Box<dyn std::io::Read + Send + '_>, StorageError>;
}

/// A writer that counts and checksums what passes through it: how an image streamed to
/// storage gets its `SnapshotMeta`.
pub(crate) struct Checksummed<W> {
    pub inner: W,
    pub bytes: u64,
    pub crc32c: u32,
}

impl<W: std::io::Write> Checksummed<W> {
    pub fn new(inner: W) -> Checksummed<W> {
        Checksummed { inner, bytes: 0, crc32c: 0 }
    }

    pub fn meta(&self, index: LogIndex, term: Term) -> SnapshotMeta {
        SnapshotMeta { last_included_index: index, last_included_term: term, data_bytes: self.bytes, data_crc32c: self.crc32c }
    }
}

impl<W: std::io::Write> std::io::Write for Checksummed<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.crc32c = crc32c::crc32c_append(self.crc32c, &bytes[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Why storage failed. Every variant stops the node.
#[derive(Debug)]
pub enum StorageError {
    /// The operating system refused `operation` on `path`.
    Io { operation: &'static str, path: PathBuf, source: std::io::Error },
    /// Bytes on disk are not what was written: a checksum, a header, or the log's shape is
    /// wrong at `offset` in `file`. Nothing is repaired: an operator must look.
    Corruption { file: PathBuf, offset: u64, reason: String },
    /// The files agree with themselves but not with each other (for example, a commit index
    /// beyond the stored log).
    Inconsistent { reason: String },
    /// An entry is larger than one log record may be.
    EntryTooLarge { index: LogIndex, bytes: usize, bytes_max: usize },
    /// Another process (or another open storage) holds the data directory.
    Locked { path: PathBuf },
    /// The storage's configuration is unusable.
    InvalidConfig { reason: String },
}

impl StorageError {
    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> StorageError {
        StorageError::Io { operation, path: path.into(), source }
    }

    pub(crate) fn corruption(file: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> StorageError {
        StorageError::Corruption { file: file.into(), offset, reason: reason.into() }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { operation, path, source } => write!(f, "storage io error: {operation} {}: {source}", path.display()),
            StorageError::Corruption { file, offset, reason } => {
                write!(f, "storage corruption in {} at byte offset {offset}: {reason}", file.display())
            }
            StorageError::Inconsistent { reason } => write!(f, "storage inconsistent: {reason}"),
            StorageError::EntryTooLarge { index, bytes, bytes_max } => {
                write!(f, "entry {index} is {bytes} bytes, more than the record limit of {bytes_max} bytes")
            }
            StorageError::Locked { path } => write!(f, "data directory {} is locked by another process", path.display()),
            StorageError::InvalidConfig { reason } => write!(f, "invalid storage configuration: {reason}"),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Panics unless `entries` may be appended to a log holding `first_index..=last_index`
/// (an empty log has `last_index == first_index - 1`): consecutive, starting after the
/// snapshot, leaving no gap.
pub fn check_append(first_index: LogIndex, last_index: LogIndex, entries: &[Entry]) {
    let Some(first) = entries.first() else { return };
    assert!(first.index >= first_index, "append at {} reaches into the snapshot (first index {first_index})", first.index);
    assert!(first.index <= last_index.next(), "append at {} leaves a gap after last index {last_index}", first.index);
    for pair in entries.windows(2) {
        assert_eq!(pair[1].index, pair[0].index.next(), "appended entries must be consecutive");
        assert!(pair[1].term >= pair[0].term, "appended entry terms must not decrease");
    }
}

/// Panics unless a snapshot at `meta` may replace one at `current`.
pub fn check_snapshot_advances(current: SnapshotMeta, meta: SnapshotMeta) {
    assert!(
        meta.last_included_index > current.last_included_index,
        "snapshot at {} does not advance past the stored snapshot at {}",
        meta.last_included_index,
        current.last_included_index
    );
    assert!(meta.last_included_term >= current.last_included_term, "snapshot term goes backwards");
}

/// Panics unless the node's own snapshot at `meta` matches the log entry it ends with
/// (`term_at_index` is the stored term at `meta.last_included_index`, if any).
pub fn check_compact(meta: SnapshotMeta, term_at_index: Option<keel_core::Term>) {
    assert_eq!(
        term_at_index,
        Some(meta.last_included_term),
        "compaction to {} term {} does not match the stored log",
        meta.last_included_index,
        meta.last_included_term
    );
}

/// Panics unless `chunk` may be written next: at offset 0, or at `received`, the end of
/// the image being received for the same snapshot.
pub fn check_chunk(received: Option<(SnapshotMeta, u64)>, chunk: &ReceivedChunk) {
    if chunk.offset == 0 {
        return;
    }
    let meta = chunk.snapshot.meta;
    assert_eq!(received, Some((meta, chunk.offset)), "a chunk at {} of the snapshot at {} does not continue the image being received", chunk.offset, meta.last_included_index);
    assert!(chunk.offset + chunk.data.len() as u64 <= meta.data_bytes, "a chunk runs past the end of its image");
}

/// Panics unless the image received so far (`received`: its metadata, bytes and CRC-32C
/// so far) is `meta`'s, whole: the core checked every byte before asking to install it.
pub fn check_received(received: Option<(SnapshotMeta, u64, u32)>, meta: SnapshotMeta) {
    assert_eq!(received, Some((meta, meta.data_bytes, meta.data_crc32c)), "installing the snapshot at {} before its image was received whole", meta.last_included_index);
}

/// Checks the shape of what `initial_state` returns: entries consecutive after the
/// snapshot, commit index within the log. A failure here means the files disagree.
pub(crate) fn check_restored(restored: &RestoredState) -> Result<(), StorageError> {
    let snapshot_index = restored.snapshot.as_ref().map_or(LogIndex::ZERO, |snapshot| snapshot.meta.last_included_index);
    for (offset, entry) in restored.entries.iter().enumerate() {
        let expected = snapshot_index.plus(offset as u64 + 1);
        if entry.index != expected {
            return Err(StorageError::Inconsistent { reason: format!("entry {} found where {expected} belongs", entry.index) });
        }
    }
    let last_index = snapshot_index.plus(restored.entries.len() as u64);
    let commit_index = restored.hard_state.commit_index;
    if commit_index > last_index {
        return Err(StorageError::Inconsistent { reason: format!("commit index {commit_index} beyond last stored index {last_index}") });
    }
    Ok(())
}
