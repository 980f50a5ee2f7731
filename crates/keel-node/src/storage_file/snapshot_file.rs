//! Snapshot files, `<data dir>/snapshot-<index:020>-<term:020>.snap` (zero-padded decimal
//! `last_included_index` and `last_included_term`), each written whole with
//! `write_atomically`. The one with the highest index is the snapshot; older ones are
//! deleted once a newer one is durable.
//!
//! ```text
//! offset  size        field
//!      0     8        magic "KEELSNP2"
//!      8     8        last_included_index, u64 LE
//!     16     8        last_included_term, u64 LE
//!     24     8        data_bytes, u64 LE
//!     32     4        crc32c of the data, u32 LE
//!     36     4        membership_bytes, u32 LE
//!     40     4        crc32c of bytes 0..40 and the configuration, u32 LE
//!     44     membership_bytes  the configuration at last_included_index (record.rs encoding)
//!      …     data_bytes  the state machine image
//! ```
//!
//! The index and term in the header must match the file name. A file of the first format
//! ("KEELSNP1": a 40-byte header, the data's checksum and the header's at 32 and 36, no
//! configuration) reads as a snapshot with no configuration: written before keel had
//! membership changes, it belongs to a cluster whose members are its bootstrap members.

use super::atomic;
use super::record::{decode_membership, encode_membership};
use crate::storage::StorageError;
use keel_core::{LogIndex, Membership, Snapshot, SnapshotMeta, Term};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"KEELSNP2";
const MAGIC_V1: &[u8; 8] = b"KEELSNP1";
const HEADER_BYTES: usize = 44;
const HEADER_BYTES_V1: usize = 40;
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

/// The header and the configuration. The header's size and checksum are the snapshot's
/// metadata, checked against the image on the way out as they are on the way back in.
fn encode_header(snapshot: &Snapshot) -> Vec<u8> {
    let meta = snapshot.meta;
    let data_crc32c = crc32c::crc32c(&snapshot.data);
    assert_eq!((snapshot.data.len() as u64, data_crc32c), (meta.data_bytes, meta.data_crc32c), "snapshot at {} does not match its metadata", meta.last_included_index);
    let mut membership = Vec::new();
    encode_membership(&snapshot.membership, &mut membership);
    let mut header = Vec::with_capacity(HEADER_BYTES + membership.len());
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&meta.last_included_index.0.to_le_bytes());
    header.extend_from_slice(&meta.last_included_term.0.to_le_bytes());
    header.extend_from_slice(&meta.data_bytes.to_le_bytes());
    header.extend_from_slice(&data_crc32c.to_le_bytes());
    header.extend_from_slice(&(membership.len() as u32).to_le_bytes());
    let header_crc = crc32c::crc32c_append(crc32c::crc32c(&header), &membership);
    header.extend_from_slice(&header_crc.to_le_bytes());
    header.extend_from_slice(&membership);
    header
}

pub fn decode(path: &Path, bytes: &[u8]) -> Result<Snapshot, StorageError> {
    let corruption = |offset: usize, reason: String| StorageError::corruption(path, offset as u64, reason);
    if bytes.get(0..8) == Some(MAGIC_V1) {
        return decode_v1(path, bytes);
    }
    if bytes.len() < HEADER_BYTES {
        return Err(corruption(0, format!("snapshot file is {} bytes, shorter than its header", bytes.len())));
    }
    if &bytes[0..8] != MAGIC {
        return Err(corruption(0, "bad snapshot magic".to_string()));
    }
    let membership_bytes = read_u32(&bytes[36..40]) as usize;
    let Some(membership) = bytes.get(HEADER_BYTES..HEADER_BYTES + membership_bytes) else {
        return Err(corruption(36, format!("a configuration of {membership_bytes} bytes runs past the file")));
    };
    if crc32c::crc32c_append(crc32c::crc32c(&bytes[..40]), membership) != read_u32(&bytes[40..44]) {
        return Err(corruption(40, "snapshot header checksum mismatch".to_string()));
    }
    let (membership, used) = decode_membership(membership).map_err(|reason| corruption(HEADER_BYTES, reason))?;
    if used != membership_bytes {
        return Err(corruption(HEADER_BYTES, format!("the configuration takes {used} of its {membership_bytes} bytes")));
    }
    decode_data(path, bytes, HEADER_BYTES + membership_bytes, membership)
}

/// A snapshot of the first format: no configuration.
fn decode_v1(path: &Path, bytes: &[u8]) -> Result<Snapshot, StorageError> {
    if bytes.len() < HEADER_BYTES_V1 {
        return Err(StorageError::corruption(path, 0, format!("snapshot file is {} bytes, shorter than its header", bytes.len())));
    }
    if crc32c::crc32c(&bytes[..36]) != read_u32(&bytes[36..40]) {
        return Err(StorageError::corruption(path, 36, "snapshot header checksum mismatch".to_string()));
    }
    decode_data(path, bytes, HEADER_BYTES_V1, Membership::default())
}

/// The image after the header (`data_start`), checked against the header's size and CRC.
fn decode_data(path: &Path, bytes: &[u8], data_start: usize, membership: Membership) -> Result<Snapshot, StorageError> {
    let corruption = |offset: usize, reason: String| StorageError::corruption(path, offset as u64, reason);
    let data_bytes = read_u64(&bytes[24..32]);
    if data_bytes != (bytes.len() - data_start) as u64 {
        return Err(corruption(24, format!("header says {data_bytes} data bytes, file holds {}", bytes.len() - data_start)));
    }
    let data = &bytes[data_start..];
    let data_crc32c = read_u32(&bytes[32..36]);
    if crc32c::crc32c(data) != data_crc32c {
        return Err(corruption(data_start, "snapshot data checksum mismatch".to_string()));
    }
    let meta = SnapshotMeta { last_included_index: LogIndex(read_u64(&bytes[8..16])), last_included_term: Term(read_u64(&bytes[16..24])), data_bytes, data_crc32c };
    Ok(Snapshot { meta, membership, data: Arc::new(data.to_vec()) })
}

/// Writes `snapshot` durably and returns its path. If `stage` already wrote its temp file
/// (same name, so same index and term, and the full length), only the rename remains.
pub fn store(dir: &Path, snapshot: &Snapshot) -> Result<PathBuf, StorageError> {
    let name = file_name(snapshot.meta);
    let file_bytes = HEADER_BYTES + super::record::membership_bytes(&snapshot.membership) + snapshot.data.len();
    let staged = std::fs::metadata(atomic::temp_path(dir, &name)).is_ok_and(|metadata| metadata.len() == file_bytes as u64);
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

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::NodeId;

    fn snapshot() -> Snapshot {
        let membership = Membership { voters: [NodeId(1), NodeId(2), NodeId(4)].into(), learners: [NodeId(5)].into(), ..Membership::default() };
        Snapshot::new(LogIndex(12), Term(3), membership, b"image".to_vec())
    }

    #[test]
    fn a_snapshot_round_trips_with_its_configuration() {
        let snapshot = snapshot();
        let bytes = [encode_header(&snapshot), snapshot.data.to_vec()].concat();
        assert_eq!(decode(Path::new("s"), &bytes).unwrap(), snapshot);
        for at in [40, 44, 50] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1;
            assert!(matches!(decode(Path::new("s"), &damaged), Err(StorageError::Corruption { .. })), "byte {at} flipped");
        }
    }

    /// A file of the first format still reads, with no configuration (the core then takes
    /// the bootstrap members, as the cluster that wrote it had).
    #[test]
    fn a_snapshot_of_the_first_format_reads_without_a_configuration() {
        let data = b"image";
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC_V1);
        bytes.extend_from_slice(&12u64.to_le_bytes());
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
        let header_crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&header_crc.to_le_bytes());
        bytes.extend_from_slice(data);
        let read = decode(Path::new("s"), &bytes).unwrap();
        assert_eq!((read.meta.position(), read.membership, read.data.to_vec()), ((LogIndex(12), Term(3)), Membership::default(), data.to_vec()));
    }
}
