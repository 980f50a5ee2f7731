//! `FileStorage` after crashes and damage: torn final records at every byte offset, flipped
//! bytes, missing segments, interrupted installs and compactions, and the write pattern
//! (segments roll, compaction and truncation never rewrite the rest of the log).
//!
//! Most cases use growing segments, where a record's place is read off the file's size; the
//! preallocated layout (records written over zeros) has its own cases at the end, which take
//! record places from the same log written growing: the records' bytes are identical.

use keel_core::{Entry, EntryKind, HardState, LogIndex, NodeId, Term};
use keel_node::{FileStorage, FileStorageConfig, Storage, StorageError, TornTail};
use std::fs;
use std::path::{Path, PathBuf};

const SEGMENT_BYTES_MAX: u64 = 300;

fn config() -> FileStorageConfig {
    FileStorageConfig { segment_bytes_max: SEGMENT_BYTES_MAX, preallocate: false, ..FileStorageConfig::default() }
}

fn preallocated() -> FileStorageConfig {
    FileStorageConfig { preallocate: true, ..config() }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry { term: Term(term), index: LogIndex(index), kind: EntryKind::Command(format!("command {index}@{term}").into_bytes().into()) }
}

fn hard_state(term: u64) -> HardState {
    HardState { current_term: Term(term), voted_for: Some(NodeId(2)), commit_index: LogIndex(0) }
}

use keel_node::conformance::{compact, install, snapshot};

/// Where one record landed on disk.
#[derive(Clone, Debug)]
struct Placed {
    file: PathBuf,
    start: u64,
    end: u64,
}

/// Writes entries `1..=count` in term 1, one append and sync each, and returns where each
/// record landed (read from file sizes, not from the storage's own index).
fn write_log(dir: &Path, count: u64) -> Vec<Placed> {
    write_log_with(dir, count, config())
}

fn write_log_with(dir: &Path, count: u64, config: FileStorageConfig) -> Vec<Placed> {
    let mut storage = FileStorage::open(dir, config).expect("open");
    storage.set_hard_state(&hard_state(1)).expect("set_hard_state");
    let mut placed: Vec<Placed> = Vec::new();
    for index in 1..=count {
        storage.append(&[entry(index, 1)]).expect("append");
        storage.sync().expect("sync");
        let file = storage.segment_paths().last().expect("a segment").clone();
        let end = fs::metadata(&file).expect("stat").len();
        let start = match placed.last() {
            Some(previous) if previous.file == file => previous.end,
            _ => keel_node::storage_file::SEGMENT_HEADER_BYTES,
        };
        placed.push(Placed { file, start, end });
    }
    placed
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create");
    for item in fs::read_dir(from).expect("list") {
        let item = item.expect("list");
        let target = to.join(item.file_name());
        if item.file_type().expect("stat").is_dir() {
            copy_dir(&item.path(), &target);
        } else {
            fs::copy(item.path(), &target).expect("copy");
        }
    }
}

/// `path` as it sits inside `copy` (a copy of `original`).
fn moved(path: &Path, original: &Path, copy: &Path) -> PathBuf {
    copy.join(path.strip_prefix(original).expect("inside the original"))
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).expect("read");
    bytes[offset as usize] ^= 0x5a;
    fs::write(path, bytes).expect("write");
}

fn cut(path: &Path, length: u64) {
    let file = fs::OpenOptions::new().write(true).open(path).expect("open");
    file.set_len(length).expect("truncate");
}

fn indexes(storage: &FileStorage) -> Vec<u64> {
    storage.initial_state().expect("initial_state").entries.iter().map(|entry| entry.index.0).collect()
}

fn expect_corruption(dir: &Path, file: &Path, offset: u64) {
    expect_corruption_with(dir, file, offset, config())
}

fn expect_corruption_with(dir: &Path, file: &Path, offset: u64, config: FileStorageConfig) {
    match FileStorage::open(dir, config) {
        Err(StorageError::Corruption { file: named, offset: at, reason }) => {
            assert_eq!((named.as_path(), at), (file, offset), "corruption reported at the wrong place ({reason})");
            let message = StorageError::Corruption { file: named, offset: at, reason }.to_string();
            assert!(message.contains(&file.display().to_string()) && message.contains(&offset.to_string()), "{message}");
        }
        Err(other) => panic!("expected corruption at {}:{offset}, got {other}", file.display()),
        Ok(_) => panic!("expected corruption at {}:{offset}, but open succeeded", file.display()),
    }
}

// ----- torn tails -------------------------------------------------------------------------

/// For logs of 1 to 16 records (so the last record is sometimes the first of its segment),
/// cut the last segment at every byte of the last record: the record is gone, everything
/// before it is there, and the log takes a new record at that index.
#[test]
fn torn_last_record_at_every_byte_offset() {
    for count in 1..=16u64 {
        let pristine = tempfile::tempdir().expect("tempdir");
        let placed = write_log(pristine.path(), count);
        let last = placed.last().expect("records").clone();
        assert!(last.end - last.start > 8, "a record is longer than its frame header");
        for cut_at in last.start..last.end {
            for zero_fill in [false, true] {
                let copy = tempfile::tempdir().expect("tempdir");
                copy_dir(pristine.path(), copy.path());
                let file = moved(&last.file, pristine.path(), copy.path());
                cut(&file, cut_at);
                let length = if zero_fill { (cut_at / 512 + 1) * 512 } else { cut_at };
                cut(&file, length);
                let context = format!("{count} records, cut at {cut_at}, file length {length}");
                check_recovered_without_last(copy.path(), &file, last.start, cut_at, length, count, &context);
            }
        }
    }
}

/// The last record was cut at `cut_at` and the file is `length` bytes (zeros after
/// `cut_at`). A cut inside the record leaves a torn tail, cut back to the record's start; a
/// cut at its start leaves only zeros after the log, which is its end, left as it is.
fn check_recovered_without_last(dir: &Path, file: &Path, record_start: u64, cut_at: u64, length: u64, count: u64, context: &str) {
    let mut storage = FileStorage::open(dir, config()).unwrap_or_else(|error| panic!("{context}: {error}"));
    let expected_torn = (cut_at > record_start).then(|| TornTail { file: file.to_path_buf(), offset: record_start, bytes_removed: length - record_start });
    assert_eq!(storage.recovery().torn_tail, expected_torn, "{context}");
    let expected_length = if cut_at > record_start { record_start } else { length };
    assert_eq!(fs::metadata(file).expect("stat").len(), expected_length, "{context}: a torn record is cut back to its start");
    assert_eq!(indexes(&storage), (1..count).collect::<Vec<_>>(), "{context}");
    assert_eq!(storage.initial_state().expect("initial_state").hard_state, hard_state(1), "{context}");
    storage.append(&[entry(count, 1), entry(count + 1, 1)]).expect("append after recovery");
    storage.sync().expect("sync");
    drop(storage);
    let storage = FileStorage::open(dir, config()).expect("reopen");
    assert_eq!(storage.recovery(), &Default::default(), "{context}: the second open is clean");
    let entries = storage.initial_state().expect("initial_state").entries;
    assert_eq!(entries, (1..=count + 1).map(|index| entry(index, 1)).collect::<Vec<_>>(), "{context}");
}

#[test]
fn bad_checksum_on_final_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let placed = write_log(dir.path(), 10);
    let last = placed.last().expect("records");
    flip_byte(&last.file, last.end - 1);
    let storage = FileStorage::open(dir.path(), config()).expect("open");
    assert_eq!(storage.recovery().torn_tail.as_ref().map(|torn| torn.offset), Some(last.start));
    assert_eq!(indexes(&storage), (1..10).collect::<Vec<_>>());
}

/// Zeros after the last whole record (a file that grew before its data reached the disk)
/// are the log's end: nothing to repair, and the next record goes right after the last.
#[test]
fn zero_filled_tail_is_the_end_of_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let placed = write_log(dir.path(), 10);
    let last = placed.last().expect("records");
    cut(&last.file, last.end + 4096);
    let mut storage = FileStorage::open(dir.path(), config()).expect("open");
    assert_eq!(storage.recovery(), &Default::default());
    assert_eq!(indexes(&storage), (1..=10).collect::<Vec<_>>());
    storage.append(&[entry(11, 1)]).expect("append");
    storage.sync().expect("sync");
    drop(storage);
    let storage = FileStorage::open(dir.path(), config()).expect("reopen");
    assert_eq!(indexes(&storage), (1..=11).collect::<Vec<_>>(), "record 11 landed right after record 10");
}

/// A torn write leaves a prefix of the right record; a damaged length or index in the final
/// record does not, so it is corruption rather than a tail to cut.
#[test]
fn damaged_header_fields_of_the_final_record_are_corruption() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let placed = write_log(pristine.path(), 10);
    let last = placed.last().expect("records");
    let length_offset = last.start;
    let index_offset = last.start + 8 + 9;
    for offset in [length_offset, index_offset] {
        let copy = tempfile::tempdir().expect("tempdir");
        copy_dir(pristine.path(), copy.path());
        let file = moved(&last.file, pristine.path(), copy.path());
        flip_byte(&file, offset);
        expect_corruption(copy.path(), &file, last.start);
    }
}

// ----- corruption is never repaired -------------------------------------------------------

#[test]
fn flipped_byte_in_any_earlier_record_is_corruption_at_that_record() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let placed = write_log(pristine.path(), 16);
    let segment_count = placed.iter().map(|record| &record.file).collect::<std::collections::BTreeSet<_>>().len();
    assert!(segment_count >= 3, "the log spans several segments ({segment_count})");
    for record in &placed[..placed.len() - 1] {
        for offset in [record.start, record.start + 5, record.start + 9, record.end - 1] {
            let copy = tempfile::tempdir().expect("tempdir");
            copy_dir(pristine.path(), copy.path());
            let file = moved(&record.file, pristine.path(), copy.path());
            flip_byte(&file, offset);
            expect_corruption(copy.path(), &file, record.start);
        }
    }
}

#[test]
fn short_segment_that_is_not_the_last_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let placed = write_log(dir.path(), 16);
    let first = &placed[0];
    let last_of_first = placed.iter().rfind(|record| record.file == first.file).expect("records");
    cut(&first.file, last_of_first.end - 3);
    expect_corruption(dir.path(), &first.file, last_of_first.start);
}

#[test]
fn missing_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let placed = write_log(dir.path(), 16);
    let mut files: Vec<&PathBuf> = placed.iter().map(|record| &record.file).collect();
    files.dedup();
    assert!(files.len() >= 3);
    fs::remove_file(files[1]).expect("remove");
    expect_corruption(dir.path(), files[2], 0);
}

#[test]
fn damaged_segment_header_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let placed = write_log(dir.path(), 3);
    flip_byte(&placed[0].file, 10);
    expect_corruption(dir.path(), &placed[0].file, 16);
}

#[test]
fn damaged_hard_state_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 3);
    let path = dir.path().join("hard_state");
    flip_byte(&path, 9);
    expect_corruption(dir.path(), &path, 33);
}

#[test]
fn damaged_snapshot_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 10);
    let mut storage = FileStorage::open(dir.path(), config()).expect("open");
    compact(&mut storage, 5, 1).expect("compact");
    drop(storage);
    let path = dir.path().join(format!("snapshot-{:020}-{:020}.snap", 5, 1));
    flip_byte(&path, 60);
    expect_corruption(dir.path(), &path, 40);
}

// ----- crashes inside multi-step operations ----------------------------------------------

/// The snapshot reached the disk but the log it replaces did not go (§7 step 7 cut short).
#[test]
fn install_interrupted_before_discarding_the_log_is_finished_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 10);
    let other = tempfile::tempdir().expect("tempdir");
    let mut donor = FileStorage::open(other.path(), config()).expect("open");
    install(&mut donor, 6, 2).expect("install");
    drop(donor);
    let name = format!("snapshot-{:020}-{:020}.snap", 6, 2);
    fs::copy(other.path().join(&name), dir.path().join(&name)).expect("copy");
    let storage = FileStorage::open(dir.path(), config()).expect("open");
    assert!(storage.recovery().log_discarded);
    assert!(storage.segment_paths().is_empty());
    let restored = storage.initial_state().expect("initial_state");
    assert_eq!(restored.snapshot, Some(snapshot(6, 2)));
    assert!(restored.entries.is_empty());
    assert_eq!(storage.recovery().term_raised_to, Some(Term(2)), "the snapshot's term is newer than the stored term");
    assert_eq!(restored.hard_state, HardState { current_term: Term(2), voted_for: None, commit_index: LogIndex(0) });
}

/// The snapshot reached the disk but the segments it covers were not deleted.
#[test]
fn compaction_interrupted_before_deleting_segments_is_finished_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 16);
    let other = tempfile::tempdir().expect("tempdir");
    write_log(other.path(), 16);
    let mut donor = FileStorage::open(other.path(), config()).expect("open");
    compact(&mut donor, 12, 1).expect("compact");
    drop(donor);
    let name = format!("snapshot-{:020}-{:020}.snap", 12, 1);
    fs::copy(other.path().join(&name), dir.path().join(&name)).expect("copy");
    let storage = FileStorage::open(dir.path(), config()).expect("open");
    assert!(storage.recovery().covered_segments_removed > 0);
    assert!(!storage.recovery().log_discarded);
    assert_eq!(indexes(&storage), (13..=16).collect::<Vec<_>>());
}

/// Entries of a new term were synced but the hard state naming that term was not.
#[test]
fn log_newer_than_hard_state_raises_the_term_without_a_vote() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 3);
    let old_hard_state = fs::read(dir.path().join("hard_state")).expect("read");
    let mut storage = FileStorage::open(dir.path(), config()).expect("open");
    storage.set_hard_state(&hard_state(3)).expect("set_hard_state");
    storage.append(&[entry(4, 3)]).expect("append");
    storage.sync().expect("sync");
    drop(storage);
    fs::write(dir.path().join("hard_state"), old_hard_state).expect("write");
    let storage = FileStorage::open(dir.path(), config()).expect("open");
    assert_eq!(storage.recovery().term_raised_to, Some(Term(3)));
    let expected = HardState { current_term: Term(3), voted_for: None, commit_index: LogIndex(0) };
    assert_eq!(storage.initial_state().expect("initial_state").hard_state, expected);
}

#[test]
fn leftover_temporary_files_are_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 3);
    fs::write(dir.path().join("hard_state.tmp"), b"half").expect("write");
    fs::write(dir.path().join("wal").join(format!("{:020}.seg.tmp", 99)), b"half").expect("write");
    let storage = FileStorage::open(dir.path(), config()).expect("open");
    assert!(!dir.path().join("hard_state.tmp").exists());
    assert!(!dir.path().join("wal").join(format!("{:020}.seg.tmp", 99)).exists());
    assert_eq!(indexes(&storage), vec![1, 2, 3]);
}

// ----- the write pattern ------------------------------------------------------------------

#[test]
fn segments_roll_at_the_size_limit_and_are_named_by_first_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let placed = write_log(dir.path(), 30);
    let storage = FileStorage::open(dir.path(), config()).expect("open");
    let paths = storage.segment_paths();
    assert!(paths.len() >= 5, "{} segments", paths.len());
    for path in &paths {
        assert!(fs::metadata(path).expect("stat").len() <= SEGMENT_BYTES_MAX, "{} too large", path.display());
        let first = placed.iter().position(|record| &record.file == path).expect("holds a record") as u64 + 1;
        assert_eq!(path.file_name().expect("name").to_string_lossy(), format!("{first:020}.seg"));
    }
}

#[test]
fn an_entry_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut storage = FileStorage::open(dir.path(), config()).expect("open");
    let large = Entry { term: Term(1), index: LogIndex(2), kind: EntryKind::Command(vec![1; 1000].into()) };
    storage.append(&[entry(1, 1), large.clone(), entry(3, 1)]).expect("append");
    storage.sync().expect("sync");
    assert_eq!(storage.segment_paths().len(), 3);
    drop(storage);
    let storage = FileStorage::open(dir.path(), config()).expect("open");
    assert_eq!(storage.initial_state().expect("initial_state").entries, vec![entry(1, 1), large, entry(3, 1)]);
}

#[test]
fn an_entry_over_the_record_limit_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small_records = FileStorageConfig { record_bytes_max: 100, ..config() };
    let mut storage = FileStorage::open(dir.path(), small_records).expect("open");
    let large = Entry { term: Term(1), index: LogIndex(1), kind: EntryKind::Command(vec![1; 200].into()) };
    match storage.append(&[large]) {
        Err(StorageError::EntryTooLarge { index, .. }) => assert_eq!(index, LogIndex(1)),
        other => panic!("expected EntryTooLarge, got {other:?}"),
    }
}

/// Compaction deletes whole segments and leaves every other byte alone.
#[test]
fn compaction_deletes_whole_segments_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(dir.path(), 30);
    let mut storage = FileStorage::open(dir.path(), config()).expect("open");
    let before = contents(&storage.segment_paths());
    compact(&mut storage, 17, 1).expect("compact");
    let after = contents(&storage.segment_paths());
    assert!(after.len() < before.len(), "segments were deleted");
    for (path, bytes) in &after {
        assert_eq!(before.iter().find(|(old, _)| old == path).map(|(_, old)| old), Some(bytes), "{} was rewritten", path.display());
    }
    assert_eq!(indexes(&storage), (18..=30).collect::<Vec<_>>());
}

/// A snapshot covering the whole log keeps the last segment: the log goes on in it, instead
/// of in a new file (with `preallocate`, 64 MiB of zeros written for it).
#[test]
fn compaction_of_the_whole_log_keeps_the_last_segment() {
    // A log whose last segment has room for one more record, so the next append stays in it.
    let (dir, count) = (20..40)
        .map(|count| {
            let dir = tempfile::tempdir().expect("tempdir");
            let placed = write_log(dir.path(), count);
            let last = placed.last().expect("records");
            let has_room = last.end + (last.end - last.start) + 8 <= SEGMENT_BYTES_MAX; // + 8: the next command is a digit longer at most
            (dir, count, has_room)
        })
        .find_map(|(dir, count, has_room)| has_room.then_some((dir, count)))
        .expect("some length leaves room");
    let mut storage = FileStorage::open(dir.path(), config()).expect("open");
    let last = storage.segment_paths().last().expect("segments").clone();
    assert!(storage.segment_paths().len() > 1, "earlier segments exist to be deleted");
    compact(&mut storage, count, 1).expect("compact");
    assert_eq!(storage.segment_paths(), vec![last.clone()], "only the last segment is left");
    storage.append(&[entry(count + 1, 1)]).expect("append");
    storage.sync().expect("sync");
    assert_eq!(storage.segment_paths(), vec![last], "the next record went into it");
    drop(storage);
    let storage = FileStorage::open(dir.path(), config()).expect("reopen");
    assert_eq!(storage.recovery(), &Default::default());
    assert_eq!(indexes(&storage), vec![count + 1]);
}

/// A conflict truncates the segment holding the first new index and deletes later ones;
/// earlier segments are untouched.
#[test]
fn truncation_touches_only_the_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let placed = write_log(dir.path(), 30);
    let mut storage = FileStorage::open(dir.path(), config()).expect("open");
    let before = contents(&storage.segment_paths());
    let conflict = &placed[19];
    storage.set_hard_state(&hard_state(2)).expect("set_hard_state");
    storage.append(&[entry(20, 2)]).expect("append");
    storage.sync().expect("sync");
    let after = contents(&storage.segment_paths());
    let (last_path, last_bytes) = after.last().expect("segments");
    assert_eq!(last_path, &conflict.file, "the conflicting segment is now the last");
    assert_eq!(last_bytes.len() as u64, conflict.start + (conflict.end - conflict.start), "cut at the record, one new record of the same size");
    for (path, bytes) in &after[..after.len() - 1] {
        assert_eq!(before.iter().find(|(old, _)| old == path).map(|(_, old)| old), Some(bytes), "{} was rewritten", path.display());
    }
    let mut expected: Vec<Entry> = (1..20).map(|index| entry(index, 1)).collect();
    expected.push(entry(20, 2));
    drop(storage);
    let storage = FileStorage::open(dir.path(), config()).expect("open");
    assert_eq!(storage.initial_state().expect("initial_state").entries, expected);
}

fn contents(paths: &[PathBuf]) -> Vec<(PathBuf, Vec<u8>)> {
    paths.iter().map(|path| (path.clone(), fs::read(path).expect("read"))).collect()
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = FileStorage::open(dir.path(), config()).expect("open");
    match FileStorage::open(dir.path(), config()) {
        Err(StorageError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {:?}", other.err()),
    }
}

// ----- preallocated segments ----------------------------------------------------------------

/// Every segment is created at its full size; records are written over the zeros, a sealed
/// segment keeps its unused zeros, and reopening finds the log's end inside each file.
#[test]
fn preallocated_segments_are_full_size_and_reopen_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let growing = tempfile::tempdir().expect("tempdir");
    let placed = write_log_with(growing.path(), 30, config());
    write_log_with(dir.path(), 30, preallocated());
    let mut storage = FileStorage::open(dir.path(), preallocated()).expect("open");
    assert_eq!(storage.recovery(), &Default::default(), "zero tails are not damage");
    let paths = storage.segment_paths();
    assert!(paths.len() >= 5, "{} segments", paths.len());
    for path in &paths {
        let bytes = fs::read(path).expect("read");
        assert_eq!(bytes.len() as u64, SEGMENT_BYTES_MAX, "{} is preallocated", path.display());
        let twin = fs::read(moved(path, dir.path(), growing.path())).expect("the growing log has the same segment");
        assert_eq!(&bytes[..twin.len()], &twin[..], "the same records at the same offsets");
        assert!(bytes[twin.len()..].iter().all(|byte| *byte == 0), "then zeros");
    }
    assert_eq!(placed.len(), 30);
    storage.append(&[entry(31, 1)]).expect("append");
    storage.sync().expect("sync");
    drop(storage);
    let storage = FileStorage::open(dir.path(), preallocated()).expect("reopen");
    assert_eq!(indexes(&storage), (1..=31).collect::<Vec<_>>());
}

/// A crash mid-write in a preallocated segment leaves a prefix of the last record and then
/// the zeros it was written over. At every cut, the record is recognised as torn (or, cut
/// at its first byte, as the log's end) and the log goes on from the one before.
#[test]
fn torn_last_record_in_a_preallocated_segment_at_every_byte_offset() {
    for count in 1..=16u64 {
        let growing = tempfile::tempdir().expect("tempdir");
        let last = write_log_with(growing.path(), count, config()).pop().expect("records");
        let pristine = tempfile::tempdir().expect("tempdir");
        write_log_with(pristine.path(), count, preallocated());
        for cut_at in last.start..last.end {
            let copy = tempfile::tempdir().expect("tempdir");
            copy_dir(pristine.path(), copy.path());
            let file = moved(&last.file, growing.path(), copy.path());
            let mut bytes = fs::read(&file).expect("read");
            bytes[cut_at as usize..last.end as usize].fill(0);
            fs::write(&file, &bytes).expect("write");
            let context = format!("{count} records, zeroed from {cut_at}");
            let mut storage = FileStorage::open(copy.path(), preallocated()).unwrap_or_else(|error| panic!("{context}: {error}"));
            let torn = storage.recovery().torn_tail.as_ref().map(|torn| torn.offset);
            assert_eq!(torn, (cut_at > last.start).then_some(last.start), "{context}");
            assert_eq!(indexes(&storage), (1..count).collect::<Vec<_>>(), "{context}");
            storage.append(&[entry(count, 1), entry(count + 1, 1)]).expect("append after recovery");
            storage.sync().expect("sync");
            drop(storage);
            let storage = FileStorage::open(copy.path(), preallocated()).expect("reopen");
            assert_eq!(storage.recovery(), &Default::default(), "{context}: the second open is clean");
            let expected: Vec<Entry> = (1..=count + 1).map(|index| entry(index, 1)).collect();
            assert_eq!(storage.initial_state().expect("initial_state").entries, expected, "{context}");
        }
    }
}

/// Zeros are only an end when nothing but zeros follows: a record after a zeroed one is
/// damage, preallocated or not.
#[test]
fn zeros_followed_by_a_record_in_a_preallocated_segment_are_corruption() {
    let growing = tempfile::tempdir().expect("tempdir");
    let placed = write_log_with(growing.path(), 3, config());
    let dir = tempfile::tempdir().expect("tempdir");
    write_log_with(dir.path(), 3, preallocated());
    let (middle, last) = (&placed[1], &placed[2]);
    assert_eq!(middle.file, last.file, "three records share the first segment");
    let file = moved(&middle.file, growing.path(), dir.path());
    let mut bytes = fs::read(&file).expect("read");
    bytes[middle.start as usize..middle.end as usize].fill(0);
    fs::write(&file, &bytes).expect("write");
    expect_corruption_with(dir.path(), &file, middle.start, preallocated());
}
