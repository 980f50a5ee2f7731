//! WAL segment files, `<data dir>/wal/<first_index:020>.seg`: a header, then log records
//! (see `record.rs`) back to back, holding consecutive indexes from `first_index`.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "KEELSEG1"
//!      8     8  first_index, u64 LE (must match the file name)
//!     16     4  crc32c of bytes 0..16, u32 LE
//!     20   ...  records
//! ```
//!
//! A segment is created whole, so a short or bad header is corruption: either its header is
//! written to `<name>.tmp`, fsynced, renamed and the directory fsynced, or (preallocated) a
//! zero-filled spare file prepared beforehand gets the header written over its first bytes,
//! fsynced, and is renamed the same way. Only the last segment is ever written to; it is
//! fsynced before the next one is created, so only the last can end in a torn record.
//!
//! Records end at the end of the file, or at a record boundary after which every byte is
//! zero: the unused space of a preallocated segment (no record starts with a zero length),
//! or a write whose bytes never reached the disk. That is the log's end, not damage.
//!
//! Reading the last segment, a record at offset `o` that fails to decode because it runs
//! past the end of the file or its checksum does not match is a torn tail (cut away at `o`,
//! with a warning) when, ignoring the zero bytes at the end of the file (preallocated space,
//! or a file that grew before its data reached the disk), the bytes from `o` on can be the
//! start of that very record: no non-zero byte lies past the end its length announces, and
//! each of its fields that is wholly present agrees — length within
//! `18..=record_bytes_max - 8`, record type 1, index = the index expected next, and the
//! payload length the entry describes (18, or 22 + data_bytes for a command) = the length
//! field. Any other bad record — one followed by written bytes, one whose fields disagree,
//! one whose checksum matches but whose payload is invalid — and any bad record in a segment
//! other than the last is `Corruption` at its offset: never dropped.

use super::atomic;
use super::record::{self, Frame};
use crate::storage::StorageError;
use keel_core::{Entry, LogIndex};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const HEADER_BYTES: u64 = 20;
const MAGIC: &[u8; 8] = b"KEELSEG1";
const SUFFIX: &str = ".seg";
/// The spare's name before `atomic`'s temp suffix.
const SPARE_NAME: &str = "spare.seg";

/// A segment as the in-memory index knows it.
#[derive(Debug)]
pub struct Segment {
    pub path: PathBuf,
    pub first_index: LogIndex,
    /// Byte offset of each record: `record_offsets[i]` holds index `first_index + i`.
    pub record_offsets: Vec<u64>,
    pub size_bytes: u64,
}

impl Segment {
    /// The index after the last record: `first_index` for an empty segment.
    pub fn next_index(&self) -> LogIndex {
        self.first_index.plus(self.record_offsets.len() as u64)
    }

    pub fn contains(&self, index: LogIndex) -> bool {
        index >= self.first_index && index < self.next_index()
    }

    pub fn offset_of(&self, index: LogIndex) -> u64 {
        assert!(self.contains(index), "index {index} not in segment {}", self.path.display());
        self.record_offsets[(index.0 - self.first_index.0) as usize]
    }
}

pub fn file_name(first_index: LogIndex) -> String {
    format!("{:020}{SUFFIX}", first_index.0)
}

pub fn parse_file_name(name: &str) -> Option<LogIndex> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some(LogIndex(digits.parse().ok()?))
}

fn encode_header(first_index: LogIndex) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES as usize);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&first_index.0.to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
    assert_eq!(bytes.len() as u64, HEADER_BYTES);
    bytes
}

fn check_header(path: &Path, bytes: &[u8], first_index: LogIndex) -> Result<(), StorageError> {
    let header_bytes = HEADER_BYTES as usize;
    if bytes.len() < header_bytes {
        return Err(StorageError::corruption(path, 0, format!("segment is {} bytes, shorter than its header", bytes.len())));
    }
    if &bytes[0..8] != MAGIC {
        return Err(StorageError::corruption(path, 0, "bad segment magic"));
    }
    let stored = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[0..16]) != stored {
        return Err(StorageError::corruption(path, 16, "segment header checksum mismatch"));
    }
    let named = LogIndex(u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")));
    if named != first_index {
        return Err(StorageError::corruption(path, 8, format!("header says first index {named}, file name says {first_index}")));
    }
    Ok(())
}

/// Creates an empty segment durably (see the module doc) and returns it.
pub fn create(wal_dir: &Path, first_index: LogIndex) -> Result<Segment, StorageError> {
    let name = file_name(first_index);
    assert!(!wal_dir.join(&name).exists(), "segment {name} already exists");
    let path = atomic::write_atomically(wal_dir, &name, &encode_header(first_index))?;
    Ok(Segment { path, first_index, record_offsets: Vec::new(), size_bytes: HEADER_BYTES })
}

/// Writes `<wal>/spare.seg.tmp`: `bytes` zeros, durably (size included). A spare becomes a
/// preallocated segment in `create_from_spare`; a leftover one is deleted on open, like
/// every `*.tmp`. The zeros go down in chunks of `SPARE_CHUNK_BYTES`, each synced before
/// the next is written: one flush of 64 MiB would hold every fsync on the same disk (this
/// node's log writes, and other nodes' on a shared machine) for a quarter of a second.
pub fn prepare_spare(wal_dir: &Path, bytes: u64) -> Result<PathBuf, StorageError> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    const SPARE_CHUNK_BYTES: u64 = 1024 * 1024;
    let path = atomic::temp_path(wal_dir, SPARE_NAME);
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(&path).map_err(|error| StorageError::io("create", &path, error))?;
    let bytes = bytes.max(HEADER_BYTES);
    let mut written = 0u64;
    while written < bytes {
        let chunk_end = (written + SPARE_CHUNK_BYTES).min(bytes);
        while written < chunk_end {
            let length = (chunk_end - written).min(ZEROS.len() as u64);
            file.write_all_at(&ZEROS[..length as usize], written).map_err(|error| StorageError::io("write", &path, error))?;
            written += length;
        }
        file.sync_data().map_err(|error| StorageError::io("fsync", &path, error))?;
    }
    file.sync_all().map_err(|error| StorageError::io("fsync", &path, error))?;
    Ok(path)
}

/// Turns the spare into the empty segment starting at `first_index`: its header written
/// over the first zeros and synced, then the rename, then the directory synced. A crash
/// before the rename leaves only a spare, deleted on open.
pub fn create_from_spare(wal_dir: &Path, spare: &Path, first_index: LogIndex) -> Result<Segment, StorageError> {
    let name = file_name(first_index);
    assert!(!wal_dir.join(&name).exists(), "segment {name} already exists");
    let file = OpenOptions::new().write(true).open(spare).map_err(|error| StorageError::io("open", spare, error))?;
    file.write_all_at(&encode_header(first_index), 0).map_err(|error| StorageError::io("write", spare, error))?;
    file.sync_data().map_err(|error| StorageError::io("fsync", spare, error))?;
    let path = wal_dir.join(&name);
    std::fs::rename(spare, &path).map_err(|error| StorageError::io("rename", &path, error))?;
    atomic::sync_directory(wal_dir)?;
    Ok(Segment { path, first_index, record_offsets: Vec::new(), size_bytes: HEADER_BYTES })
}

/// How `scan` treats a bad record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// The last segment at open: a torn final record is reported, not an error.
    MayBeTorn,
    /// Every other read: any bad record is corruption.
    Strict,
}

/// What a scan found: the segment's valid records and, if any, where a torn tail starts.
#[derive(Debug)]
pub struct Scanned {
    pub segment: Segment,
    pub torn_at: Option<u64>,
}

/// Reads and verifies every record of the segment file at `path`, handing each entry to
/// `visit`. Indexes must be consecutive from `first_index`.
pub fn scan(path: &Path, first_index: LogIndex, payload_bytes_max: usize, tail: Tail, visit: &mut dyn FnMut(Entry)) -> Result<Scanned, StorageError> {
    let bytes = atomic::read_file(path)?;
    check_header(path, &bytes, first_index)?;
    let mut segment = Segment { path: path.to_path_buf(), first_index, record_offsets: Vec::new(), size_bytes: HEADER_BYTES };
    let mut offset = HEADER_BYTES as usize;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.iter().all(|byte| *byte == 0) {
            break; // the module doc: the log's end
        }
        let (entry, frame_bytes) = match record::decode(rest, payload_bytes_max) {
            Frame::Entry { entry, frame_bytes } => (entry, frame_bytes),
            frame if tail == Tail::MayBeTorn && is_torn(&frame, rest, segment.next_index(), payload_bytes_max) => {
                return Ok(Scanned { segment, torn_at: Some(offset as u64) })
            }
            frame => return Err(StorageError::corruption(path, offset as u64, describe(&frame))),
        };
        if entry.index != segment.next_index() {
            let reason = format!("record holds index {}, expected {}", entry.index, segment.next_index());
            return Err(StorageError::corruption(path, offset as u64, reason));
        }
        segment.record_offsets.push(offset as u64);
        visit(entry);
        offset += frame_bytes;
        segment.size_bytes = offset as u64;
    }
    Ok(Scanned { segment, torn_at: None })
}

/// The module doc's torn-tail rule.
fn is_torn(frame: &Frame, rest: &[u8], expected_index: LogIndex, payload_bytes_max: usize) -> bool {
    match frame {
        Frame::Short | Frame::BadChecksum { .. } | Frame::BadLength { .. } => {}
        Frame::BadPayload { .. } => return false,
        Frame::Entry { .. } => unreachable!("a whole entry is not torn"),
    }
    let written_bytes = rest.iter().rposition(|byte| *byte != 0).map_or(0, |last| last + 1);
    record::is_consistent_prefix(&rest[..written_bytes], expected_index, payload_bytes_max)
}

fn describe(frame: &Frame) -> String {
    match frame {
        Frame::Short => "record runs past the end of a segment that is not the last".to_string(),
        Frame::BadLength { length } => format!("record length {length} out of bounds"),
        Frame::BadChecksum { .. } => "record checksum mismatch".to_string(),
        Frame::BadPayload { reason } => format!("record checksum matches but payload is invalid: {reason}"),
        Frame::Entry { .. } => unreachable!("a whole entry is not an error"),
    }
}
