//! The hard state file, `<data dir>/hard_state`: 37 bytes, replaced whole with
//! `write_atomically`.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "KEELHST1"
//!      8     8  current_term, u64 LE
//!     16     1  voted_for present: 0 or 1
//!     17     8  voted_for, u64 LE (0 when absent)
//!     25     8  commit_index, u64 LE
//!     33     4  crc32c of bytes 0..33, u32 LE
//! ```
//!
//! A missing file means a node that never synced a hard state: `HardState::default()`.

use super::atomic;
use crate::storage::StorageError;
use keel_core::{HardState, LogIndex, NodeId, Term};
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "hard_state";
const MAGIC: &[u8; 8] = b"KEELHST1";
const FILE_BYTES: usize = 37;
const CHECKSUMMED_BYTES: usize = 33;

pub fn encode(hard_state: &HardState) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(FILE_BYTES);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&hard_state.current_term.0.to_le_bytes());
    bytes.push(u8::from(hard_state.voted_for.is_some()));
    bytes.extend_from_slice(&hard_state.voted_for.map_or(0, |node| node.0).to_le_bytes());
    bytes.extend_from_slice(&hard_state.commit_index.0.to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
    assert_eq!(bytes.len(), FILE_BYTES);
    debug_assert_eq!(decode(Path::new(FILE_NAME), &bytes).ok(), Some(*hard_state));
    bytes
}

pub fn decode(path: &Path, bytes: &[u8]) -> Result<HardState, StorageError> {
    if bytes.len() != FILE_BYTES {
        return Err(StorageError::corruption(path, 0, format!("hard state file is {} bytes, expected {FILE_BYTES}", bytes.len())));
    }
    if &bytes[0..8] != MAGIC {
        return Err(StorageError::corruption(path, 0, "bad hard state magic"));
    }
    let stored = u32::from_le_bytes(bytes[CHECKSUMMED_BYTES..].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..CHECKSUMMED_BYTES]) != stored {
        return Err(StorageError::corruption(path, CHECKSUMMED_BYTES as u64, "hard state checksum mismatch"));
    }
    let voted_for = match bytes[16] {
        0 => None,
        1 => Some(NodeId(read_u64(&bytes[17..25]))),
        other => return Err(StorageError::corruption(path, 16, format!("bad voted_for flag {other}"))),
    };
    Ok(HardState { current_term: Term(read_u64(&bytes[8..16])), voted_for, commit_index: LogIndex(read_u64(&bytes[25..33])) })
}

/// The stored hard state, or the default when the file does not exist yet.
pub fn load(dir: &Path) -> Result<HardState, StorageError> {
    let path = dir.join(FILE_NAME);
    if !path.exists() {
        return Ok(HardState::default());
    }
    decode(&path, &atomic::read_file(&path)?)
}

pub fn store(dir: &Path, hard_state: &HardState) -> Result<PathBuf, StorageError> {
    atomic::write_atomically(dir, FILE_NAME, &encode(hard_state))
}

fn read_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}
