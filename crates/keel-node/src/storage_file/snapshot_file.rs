//! Snapshot files, `<data dir>/snapshot-<index:020>-<term:020>.snap` (zero-padded decimal
//! `last_included_index` and `last_included_term`), each written whole with
//! `write_atomically`. The one with the highest index is the snapshot; older ones are
//! deleted once a newer one is durable.
//!
//! ```text
//! offset  size        field
//!      0     8        magic "KEELSNP1"
//!      8     8        last_included_index, u64 LE
//!     16     8        last_included_term, u64 LE
//!     24     8        data_bytes, u64 LE
//!     32     4        crc32c of the data, u32 LE
//!     36     4        crc32c of bytes 0..36, u32 LE
//!     40     data_bytes  the state machine image
//! ```
//!
//! The index and term in the header must match the file name.

use super::atomic;
use crate::storage::StorageError;
use keel_core::{LogIndex, Snapshot, SnapshotMeta, Term};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"KEELSNP1";
const HEADER_BYTES: usize = 40;
const HEADER_CHECKSUMMED_BYTES: usize = 36;
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".snap";

pub fn file_name(meta: SnapshotMeta) -> String {
    format!("{PREFIX}{:020}-{:020}{SUFFIX}", meta.last_included_index.0, meta.last_included_term.0)
}

/// The snapshot position (last included index and term) a file name stands for, if it is a
/// snapshot file name.
pub fn parse_file_name(name: &str) -> Option<(LogIndex, Term)> {
    let middle = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (index, term) = middle.split_once('-')?;
    if index.len() != 20 || term.len() != 20 {
        return None;
    }
    Some((LogIndex(index.parse().ok()?), Term(term.parse().ok()?)))
}

/// The header's size and checksum are the snapshot's metadata, checked against the image on
/// the way out as they are on the way back in (`decode`).
fn encode_header(snapshot: &Snapshot) -> [u8; HEADER_BYTES] {
    let meta = snapshot.meta;
    let data_crc32c = crc32c::crc32c(&snapshot.data);
    assert_eq!((snapshot.data.len() as u64, data_crc32c), (meta.data_bytes, meta.data_crc32c), "snapshot at {} does not match its metadata", meta.last_included_index);
    let mut header = [0u8; HEADER_BYTES];
    header[0..8].copy_from_slice(MAGIC);
    header[8..16].copy_from_slice(&meta.last_included_index.0.to_le_bytes());
    header[16..24].copy_from_slice(&meta.last_included_term.0.to_le_bytes());
    header[24..32].copy_from_slice(&meta.data_bytes.to_le_bytes());
    header[32..36].copy_from_slice(&data_crc32c.to_le_bytes());
    let header_crc = crc32c::crc32c(&header[..HEADER_CHECKSUMMED_BYTES]);
    header[36..40].copy_from_slice(&header_crc.to_le_bytes());
    header
}

pub fn decode(path: &Path, bytes: &[u8]) -> Result<Snapshot, StorageError> {
    let corruption = |offset: usize, reason: String| StorageError::corruption(path, offset as u64, reason);
    if bytes.len() < HEADER_BYTES {
        return Err(corruption(0, format!("snapshot file is {} bytes, shorter than its header", bytes.len())));
    }
    if &bytes[0..8] != MAGIC {
        return Err(corruption(0, "bad snapshot magic".to_string()));
    }
    if crc32c::crc32c(&bytes[..HEADER_CHECKSUMMED_BYTES]) != read_u32(&bytes[36..40]) {
        return Err(corruption(36, "snapshot header checksum mismatch".to_string()));
    }
    let data_bytes = read_u64(&bytes[24..32]);
    if data_bytes != (bytes.len() - HEADER_BYTES) as u64 {
        return Err(corruption(24, format!("header says {data_bytes} data bytes, file holds {}", bytes.len() - HEADER_BYTES)));
    }
    let data = &bytes[HEADER_BYTES..];
    let data_crc32c = read_u32(&bytes[32..36]);
    if crc32c::crc32c(data) != data_crc32c {
        return Err(corruption(HEADER_BYTES, "snapshot data checksum mismatch".to_string()));
    }
    let meta = SnapshotMeta { last_included_index: LogIndex(read_u64(&bytes[8..16])), last_included_term: Term(read_u64(&bytes[16..24])), data_bytes, data_crc32c };
    Ok(Snapshot { meta, data: Arc::new(data.to_vec()) })
}

/// Writes `snapshot` durably and returns its path. If `stage` already wrote its temp file
/// (same name, so same index and term, and the full length), only the rename remains.
pub fn store(dir: &Path, snapshot: &Snapshot) -> Result<PathBuf, StorageError> {
    let name = file_name(snapshot.meta);
    let staged = std::fs::metadata(atomic::temp_path(dir, &name)).is_ok_and(|metadata| metadata.len() == (HEADER_BYTES + snapshot.data.len()) as u64);
    if !staged {
        stage(dir, snapshot)?;
    }
    let path = atomic::rename_temp(dir, &name)?;
    debug_assert_eq!(decode(&path, &atomic::read_file(&path)?).ok().as_ref(), Some(snapshot));
    Ok(path)
}

/// The slow half of `store`, safe on any thread: writes and syncs the temp file. A crash
/// after it leaves a `*.tmp` that the next open deletes. On failure the temp file is
/// removed: one whose fsync failed may be full length and still not durable, and `store`
/// must not mistake it for a staged image.
pub fn stage(dir: &Path, snapshot: &Snapshot) -> Result<(), StorageError> {
    let header = encode_header(snapshot);
    let name = file_name(snapshot.meta);
    if let Err(error) = atomic::write_temp(dir, &name, &[&header, &snapshot.data]) {
        let _ = std::fs::remove_file(atomic::temp_path(dir, &name));
        return Err(error);
    }
    Ok(())
}

/// The newest snapshot in `dir` (verified whole), after deleting any older snapshot files.
pub fn load_latest(dir: &Path) -> Result<Option<Snapshot>, StorageError> {
    let mut found: Vec<((LogIndex, Term), String)> = Vec::new();
    for name in atomic::list_files(dir)? {
        if let Some(position) = parse_file_name(&name) {
            found.push((position, name));
        }
    }
    found.sort_by_key(|((index, _), _)| *index);
    let Some((position, name)) = found.pop() else { return Ok(None) };
    let path = dir.join(&name);
    let snapshot = decode(&path, &atomic::read_file(&path)?)?;
    if snapshot.meta.position() != position {
        return Err(StorageError::corruption(&path, 8, format!("header says {:?}, file name says {position:?}", snapshot.meta.position())));
    }
    remove_older_than(dir, snapshot.meta)?;
    Ok(Some(snapshot))
}

/// Deletes every snapshot file in `dir` other than the one for `keep`, and the staged temp
/// files of older snapshots (ours, dropped because the leader's arrived first).
pub fn remove_older_than(dir: &Path, keep: SnapshotMeta) -> Result<(), StorageError> {
    for name in atomic::list_files(dir)? {
        if let Some((index, _)) = name.strip_suffix(atomic::TEMP_SUFFIX).and_then(parse_file_name) {
            if index < keep.last_included_index {
                atomic::remove_file(&dir.join(&name))?;
            }
            continue;
        }
        let Some(position) = parse_file_name(&name) else { continue };
        if position != keep.position() {
            assert!(position.0 <= keep.last_included_index, "removing a newer snapshot than the one kept");
            atomic::remove_file(&dir.join(&name))?;
        }
    }
    Ok(())
}

fn read_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}
