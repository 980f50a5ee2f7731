//! Snapshot files, `<data dir>/snapshot-<index:020>-<term:020>.snap` (zero-padded decimal
//! `last_included_index` and `last_included_term`). The one with the highest index is the
//! snapshot; older ones are deleted once a newer one is durable. Images are streamed in and
//! out, never held whole in memory:
//! - our own: the state machine writes into `<name>.tmp` (`write_own`, on a snapshot
//!   thread), behind a header completed once the image's size and checksum are known; the
//!   file is synced, and `compact` renames it (`store_own`);
//! - the leader's: chunks append to `<name>.incoming.tmp` (`IncomingFile`) behind a header
//!   written from the leader's metadata; the last one in, it is checked, synced and renamed.
//! A crash leaves a `*.tmp`, which the next open deletes.
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
use crate::storage::{Checksummed, SnapshotJob, StorageError, StoredImage};
use keel_core::{LogIndex, Membership, ReceivedChunk, Snapshot, SnapshotMeta, Term};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"KEELSNP2";
const MAGIC_V1: &[u8; 8] = b"KEELSNP1";
const HEADER_BYTES: usize = 44;
const HEADER_BYTES_V1: usize = 40;
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".snap";
const INCOMING_SUFFIX: &str = ".incoming";
/// Reads and writes of images go through buffers this large.
const BUFFER_BYTES: usize = 1 << 20;

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

/// The header and the configuration, for an image of `meta`'s size and checksum.
fn encode_header(meta: SnapshotMeta, membership: &Membership) -> Vec<u8> {
    let mut configuration = Vec::new();
    encode_membership(membership, &mut configuration);
    let mut header = Vec::with_capacity(HEADER_BYTES + configuration.len());
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&meta.last_included_index.0.to_le_bytes());
    header.extend_from_slice(&meta.last_included_term.0.to_le_bytes());
    header.extend_from_slice(&meta.data_bytes.to_le_bytes());
    header.extend_from_slice(&meta.data_crc32c.to_le_bytes());
    header.extend_from_slice(&(configuration.len() as u32).to_le_bytes());
    let header_crc = crc32c::crc32c_append(crc32c::crc32c(&header), &configuration);
    header.extend_from_slice(&header_crc.to_le_bytes());
    header.extend_from_slice(&configuration);
    header
}

/// A snapshot file's header, read and checked: the snapshot and where its image starts.
fn decode_header(path: &Path, file: &mut impl Read) -> Result<(Snapshot, u64), StorageError> {
    let corruption = |offset: usize, reason: String| StorageError::corruption(path, offset as u64, reason);
    let mut fixed = [0u8; HEADER_BYTES];
    let mut read = read_up_to(file, &mut fixed[..HEADER_BYTES_V1]).map_err(|error| StorageError::io("read", path, error))?;
    if read >= 8 && &fixed[0..8] == MAGIC_V1 {
        if read < HEADER_BYTES_V1 {
            return Err(corruption(0, format!("snapshot file is {read} bytes, shorter than its header")));
        }
        if crc32c::crc32c(&fixed[..36]) != read_u32(&fixed[36..40]) {
            return Err(corruption(36, "snapshot header checksum mismatch".to_string()));
        }
        return Ok((Snapshot { meta: meta_of(&fixed), membership: Membership::default() }, HEADER_BYTES_V1 as u64));
    }
    read += read_up_to(file, &mut fixed[HEADER_BYTES_V1..]).map_err(|error| StorageError::io("read", path, error))?;
    if read < HEADER_BYTES {
        return Err(corruption(0, format!("snapshot file is {read} bytes, shorter than its header")));
    }
    if &fixed[0..8] != MAGIC {
        return Err(corruption(0, "bad snapshot magic".to_string()));
    }
    let membership_bytes = read_u32(&fixed[36..40]) as usize;
    if membership_bytes > super::record::membership_bytes_max() {
        return Err(corruption(36, format!("a configuration of {membership_bytes} bytes is larger than any")));
    }
    let mut configuration = vec![0u8; membership_bytes];
    if read_up_to(file, &mut configuration).map_err(|error| StorageError::io("read", path, error))? < membership_bytes {
        return Err(corruption(36, format!("a configuration of {membership_bytes} bytes runs past the file")));
    }
    if crc32c::crc32c_append(crc32c::crc32c(&fixed[..40]), &configuration) != read_u32(&fixed[40..44]) {
        return Err(corruption(40, "snapshot header checksum mismatch".to_string()));
    }
    let (membership, used) = decode_membership(&configuration).map_err(|reason| corruption(HEADER_BYTES, reason))?;
    if used != membership_bytes {
        return Err(corruption(HEADER_BYTES, format!("the configuration takes {used} of its {membership_bytes} bytes")));
    }
    Ok((Snapshot { meta: meta_of(&fixed), membership }, (HEADER_BYTES + membership_bytes) as u64))
}

fn meta_of(header: &[u8]) -> SnapshotMeta {
    SnapshotMeta { last_included_index: LogIndex(read_u64(&header[8..16])), last_included_term: Term(read_u64(&header[16..24])), data_bytes: read_u64(&header[24..32]), data_crc32c: read_u32(&header[32..36]) }
}

/// Reads until `buffer` is full or the file ends; how many bytes.
fn read_up_to(file: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            read => filled += read,
        }
    }
    Ok(filled)
}

/// Opens the snapshot file at `path`, checks its header, and streams its image through the
/// checksum: every byte is checked before the snapshot is trusted, and none is kept.
pub fn open(path: &Path) -> Result<(Snapshot, FileImage), StorageError> {
    let file = File::open(path).map_err(|error| StorageError::io("open", path, error))?;
    let mut reader = BufReader::with_capacity(BUFFER_BYTES, file);
    let (snapshot, data_start) = decode_header(path, &mut reader)?;
    let meta = snapshot.meta;
    let mut checked = Checksummed::new(std::io::sink());
    std::io::copy(&mut reader, &mut checked).map_err(|error| StorageError::io("read", path, error))?;
    if checked.bytes != meta.data_bytes {
        return Err(StorageError::corruption(path, 24, format!("header says {} data bytes, file holds {}", meta.data_bytes, checked.bytes)));
    }
    if checked.crc32c != meta.data_crc32c {
        return Err(StorageError::corruption(path, data_start, "snapshot data checksum mismatch".to_string()));
    }
    Ok((snapshot, FileImage { meta, path: path.to_path_buf(), data_start }))
}

/// The image of a snapshot file: read where it lies, by whoever holds it.
#[derive(Debug)]
pub struct FileImage {
    meta: SnapshotMeta,
    path: PathBuf,
    data_start: u64,
}

impl StoredImage for FileImage {
    fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, StorageError> {
        assert!(offset + len as u64 <= self.meta.data_bytes, "a read past the end of the image");
        let file = File::open(&self.path).map_err(|error| StorageError::io("open", &self.path, error))?;
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, self.data_start + offset).map_err(|error| StorageError::io("read", &self.path, error))?;
        Ok(bytes)
    }

    fn reader(&self) -> Result<Box<dyn Read + Send + '_>, StorageError> {
        let mut file = File::open(&self.path).map_err(|error| StorageError::io("open", &self.path, error))?;
        file.seek(SeekFrom::Start(self.data_start)).map_err(|error| StorageError::io("seek", &self.path, error))?;
        Ok(Box::new(BufReader::with_capacity(BUFFER_BYTES, file).take(self.meta.data_bytes)))
    }
}

/// Writes our own snapshot's image into its temp file, synced, and returns the snapshot
/// (its size and checksum measured on the way). Safe on any thread: it touches only that
/// file. On failure the temp file is removed, so `store_own` never takes a partial one.
pub fn write_own(dir: &Path, job: SnapshotJob) -> Result<Snapshot, StorageError> {
    let position = SnapshotMeta { last_included_index: job.index, last_included_term: job.term, ..SnapshotMeta::default() };
    let temp_path = atomic::temp_path(dir, &file_name(position));
    let written = write_own_at(&temp_path, job);
    if written.is_err() {
        let _ = std::fs::remove_file(&temp_path);
    }
    written
}

fn write_own_at(temp_path: &Path, job: SnapshotJob) -> Result<Snapshot, StorageError> {
    let io = |operation| move |error| StorageError::io(operation, temp_path, error);
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(temp_path).map_err(io("create"))?;
    // The header's length depends only on the configuration: write it now with a size and
    // checksum of zero, and again once the image is written.
    let placeholder = encode_header(SnapshotMeta::default(), &job.membership);
    let mut out = BufWriter::with_capacity(BUFFER_BYTES, file);
    out.write_all(&placeholder).map_err(io("write"))?;
    let mut image = Checksummed::new(out);
    (job.write)(&mut image).map_err(io("write"))?;
    let meta = image.meta(job.index, job.term);
    let mut file = image.inner.into_inner().map_err(|error| StorageError::io("write", temp_path, error.into_error()))?;
    let header = encode_header(meta, &job.membership);
    assert_eq!(header.len(), placeholder.len(), "the header's length does not depend on the image");
    file.seek(SeekFrom::Start(0)).map_err(io("seek"))?;
    file.write_all(&header).map_err(io("write"))?;
    file.sync_all().map_err(io("fsync"))?;
    Ok(Snapshot { meta, membership: job.membership })
}

/// Makes our own snapshot, written by `write_own`, the snapshot file: renames its temp
/// file, durably. Returns its image.
pub fn store_own(dir: &Path, snapshot: &Snapshot) -> Result<FileImage, StorageError> {
    let name = file_name(snapshot.meta);
    let data_start = (HEADER_BYTES + super::record::membership_bytes(&snapshot.membership)) as u64;
    let temp_path = atomic::temp_path(dir, &name);
    let length = std::fs::metadata(&temp_path).map_err(|error| StorageError::io("stat", &temp_path, error))?.len();
    if length != data_start + snapshot.meta.data_bytes {
        return Err(StorageError::Inconsistent { reason: format!("{} holds {length} bytes, the snapshot {}", temp_path.display(), data_start + snapshot.meta.data_bytes) });
    }
    let path = atomic::rename_temp(dir, &name)?;
    Ok(FileImage { meta: snapshot.meta, path, data_start })
}

/// A leader's snapshot being received: its temp file, open for append, and how much of the
/// image arrived (with its CRC-32C so far).
pub struct IncomingFile {
    snapshot: Snapshot,
    temp_path: PathBuf,
    file: BufWriter<File>,
    received_bytes: u64,
    crc32c: u32,
}

impl IncomingFile {
    /// Starts receiving `chunk.snapshot` (the chunk at offset 0): a new temp file with the
    /// header the leader's metadata gives.
    pub fn create(dir: &Path, chunk: &ReceivedChunk) -> Result<IncomingFile, StorageError> {
        let snapshot = chunk.snapshot.clone();
        let temp_path = atomic::temp_path(dir, &format!("{}{INCOMING_SUFFIX}", file_name(snapshot.meta)));
        let file = OpenOptions::new().write(true).create(true).truncate(true).open(&temp_path).map_err(|error| StorageError::io("create", &temp_path, error))?;
        let mut file = BufWriter::with_capacity(BUFFER_BYTES, file);
        file.write_all(&encode_header(snapshot.meta, &snapshot.membership)).map_err(|error| StorageError::io("write", &temp_path, error))?;
        Ok(IncomingFile { snapshot, temp_path, file, received_bytes: 0, crc32c: 0 })
    }

    /// The snapshot, and how many bytes of its image arrived.
    pub fn received(&self) -> (SnapshotMeta, u64) {
        (self.snapshot.meta, self.received_bytes)
    }

    pub fn received_with_checksum(&self) -> (SnapshotMeta, u64, u32) {
        (self.snapshot.meta, self.received_bytes, self.crc32c)
    }

    pub fn append(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.file.write_all(data).map_err(|error| StorageError::io("write", &self.temp_path, error))?;
        self.crc32c = crc32c::crc32c_append(self.crc32c, data);
        self.received_bytes += data.len() as u64;
        Ok(())
    }

    /// The whole image arrived (the caller checked): sync it and rename it to the snapshot
    /// file, durably. Returns its image.
    pub fn finish(self, dir: &Path) -> Result<FileImage, StorageError> {
        let IncomingFile { snapshot, temp_path, file, .. } = self;
        let file = file.into_inner().map_err(|error| StorageError::io("write", &temp_path, error.into_error()))?;
        file.sync_all().map_err(|error| StorageError::io("fsync", &temp_path, error))?;
        let path = dir.join(file_name(snapshot.meta));
        std::fs::rename(&temp_path, &path).map_err(|error| StorageError::io("rename", &path, error))?;
        atomic::sync_directory(dir)?;
        let data_start = (HEADER_BYTES + super::record::membership_bytes(&snapshot.membership)) as u64;
        Ok(FileImage { meta: snapshot.meta, path, data_start })
    }

    /// Gives up on this image: its temp file goes.
    pub fn discard(self) -> Result<(), StorageError> {
        let IncomingFile { temp_path, file, .. } = self;
        drop(file);
        atomic::remove_file(&temp_path)
    }
}

/// The newest snapshot in `dir` (verified whole) and its image, after deleting any older
/// snapshot files.
pub fn load_latest(dir: &Path) -> Result<Option<(Snapshot, FileImage)>, StorageError> {
    let mut found: Vec<((LogIndex, Term), String)> = Vec::new();
    for name in atomic::list_files(dir)? {
        if let Some(position) = parse_file_name(&name) {
            found.push((position, name));
        }
    }
    found.sort_by_key(|((index, _), _)| *index);
    let Some((position, name)) = found.pop() else { return Ok(None) };
    let path = dir.join(&name);
    let (snapshot, image) = open(&path)?;
    if snapshot.meta.position() != position {
        return Err(StorageError::corruption(&path, 8, format!("header says {:?}, file name says {position:?}", snapshot.meta.position())));
    }
    remove_older_than(dir, snapshot.meta)?;
    Ok(Some((snapshot, image)))
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

    fn membership() -> Membership {
        Membership { voters: [NodeId(1), NodeId(2), NodeId(4)].into(), learners: [NodeId(5)].into(), ..Membership::default() }
    }

    fn write(dir: &Path, image: &'static [u8]) -> Snapshot {
        let job = SnapshotJob { index: LogIndex(12), term: Term(3), membership: membership(), write: Box::new(move |out| out.write_all(image)) };
        let snapshot = write_own(dir, job).unwrap();
        store_own(dir, &snapshot).unwrap();
        snapshot
    }

    #[test]
    fn a_snapshot_round_trips_with_its_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = write(dir.path(), b"image");
        assert_eq!(snapshot.meta, SnapshotMeta::of_image(LogIndex(12), Term(3), b"image"));
        let path = dir.path().join(file_name(snapshot.meta));
        let (read, image) = open(&path).unwrap();
        assert_eq!(read, snapshot);
        assert_eq!((image.read_at(1, 3).unwrap(), std::io::read_to_string(image.reader().unwrap()).unwrap()), (b"mag".to_vec(), "image".to_string()));
        let bytes = std::fs::read(&path).unwrap();
        for at in [40, 44, 50, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1;
            std::fs::write(&path, &damaged).unwrap();
            assert!(matches!(open(&path), Err(StorageError::Corruption { .. })), "byte {at} flipped");
        }
    }

    /// A leader's image arrives in chunks behind the header its metadata gives: the file
    /// it leaves is the one our own writer would have written.
    #[test]
    fn a_received_image_makes_the_same_file_as_our_own() {
        let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let snapshot = write(ours.path(), b"an image in three chunks");
        let chunk = |offset: usize, data: &[u8]| ReceivedChunk { snapshot: snapshot.clone(), offset: offset as u64, data: data.to_vec() };
        let mut incoming = IncomingFile::create(theirs.path(), &chunk(0, b"an image")).unwrap();
        for (offset, data) in [(0, &b"an image"[..]), (8, b" in three"), (17, b" chunks")] {
            assert_eq!(incoming.received(), (snapshot.meta, offset as u64));
            incoming.append(&chunk(offset, data).data).unwrap();
        }
        assert_eq!(incoming.received_with_checksum(), (snapshot.meta, snapshot.meta.data_bytes, snapshot.meta.data_crc32c));
        incoming.finish(theirs.path()).unwrap();
        let name = file_name(snapshot.meta);
        assert_eq!(std::fs::read(theirs.path().join(&name)).unwrap(), std::fs::read(ours.path().join(&name)).unwrap());
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, &bytes).unwrap();
        let (read, image) = open(&path).unwrap();
        assert_eq!((read.meta.position(), read.membership), ((LogIndex(12), Term(3)), Membership::default()));
        assert_eq!(image.read_at(0, 5).unwrap(), data.to_vec());
    }
}
