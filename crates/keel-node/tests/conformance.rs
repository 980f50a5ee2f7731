//! The storage conformance suite against both implementations. `FileStorage` runs three
//! times: with the default 64 MiB segments (everything in one segment; not preallocated, to
//! keep the suite from writing 64 MiB of zeros per case) and with 300-byte segments, both
//! preallocated and growing, so that appends roll, truncations cross segment boundaries,
//! compactions delete whole segments, and every reopen meets zero tails.

use keel_node::conformance::{Harness, MemoryHarness};
use keel_node::{FileStorage, FileStorageConfig};

mod memory {
    keel_node::storage_conformance_tests!(super::MemoryHarness::default());
}

/// A crash that keeps two of the unsynced writes: the crash case sees a longer prefix.
mod memory_keeping_some_unsynced_writes {
    keel_node::storage_conformance_tests!(super::MemoryHarness { crash_kept_unsynced: 2 });
}

pub struct FileHarness {
    dir: tempfile::TempDir,
    config: FileStorageConfig,
}

impl FileHarness {
    pub fn new(segment_bytes_max: u64, preallocate: bool) -> FileHarness {
        let config = FileStorageConfig { segment_bytes_max, preallocate, ..FileStorageConfig::default() };
        FileHarness { dir: tempfile::tempdir().expect("temporary directory"), config }
    }
}

impl Harness for FileHarness {
    type Storage = FileStorage;

    fn create(&mut self) -> FileStorage {
        self.dir = tempfile::tempdir().expect("temporary directory");
        FileStorage::open(self.dir.path(), self.config).expect("open a fresh directory")
    }

    fn reopen(&mut self, storage: FileStorage) -> FileStorage {
        drop(storage);
        let storage = FileStorage::open(self.dir.path(), self.config).expect("reopen");
        assert_eq!(storage.recovery(), &Default::default(), "a clean shutdown needs no repair");
        storage
    }
}

mod file_default_segments {
    keel_node::storage_conformance_tests!(super::FileHarness::new(keel_node::FileStorageConfig::default().segment_bytes_max, false));
}

mod file_small_preallocated_segments {
    keel_node::storage_conformance_tests!(super::FileHarness::new(300, true));
}

mod file_small_growing_segments {
    keel_node::storage_conformance_tests!(super::FileHarness::new(300, false));
}

/// `run_all` runs each case exactly once, and the case list holds every case the suite's
/// source defines (a `pub fn name<H: Harness>(harness: &mut H)`), so a case written and not
/// listed is caught here.
#[test]
fn run_all_covers_every_case_once() {
    let ran = keel_node::conformance::run_all(MemoryHarness::default);
    let mut unique = ran.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ran.len(), "a case ran twice: {ran:?}");
    let source = include_str!("../src/conformance.rs");
    let mut defined: Vec<&str> = source
        .lines()
        .filter_map(|line| line.strip_prefix("pub fn ")?.split_once("<H: Harness>(harness: &mut H)").map(|(name, _)| name))
        .collect();
    defined.sort();
    assert!(defined.len() >= 25, "the source scan found only {} cases: {defined:?}", defined.len());
    assert_eq!(unique, defined, "cases run by run_all against cases defined in conformance.rs");
}

/// An image our writer wrote that lost to a newer snapshot, and one received in part,
/// leave no temp file behind.
#[test]
fn images_that_lost_leave_no_temp_file() {
    use keel_core::{Entry, EntryKind, LogIndex, ReceivedChunk, Term};
    use keel_node::conformance::{install, snapshot};
    use keel_node::{SnapshotJob, Storage};
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut storage = FileStorage::open(dir.path(), FileStorageConfig::default()).expect("open");
    let entries: Vec<Entry> = (1..=20).map(|index| Entry { term: Term(1), index: LogIndex(index), kind: EntryKind::Noop }).collect();
    storage.append(&entries).expect("append");
    storage.sync().expect("sync");
    let job = SnapshotJob { index: LogIndex(10), term: Term(1), membership: Default::default(), write: Box::new(|out| out.write_all(&[7; 64])) };
    (storage.snapshot_writer())(job).expect("write our image");
    let temp_files = || std::fs::read_dir(dir.path()).unwrap().filter(|item| item.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp")).count();
    assert_eq!(temp_files(), 1, "the writer wrote the image's temp file");
    storage.write_snapshot_chunk(&ReceivedChunk { snapshot: snapshot(25, 2), offset: 0, data: b"part".to_vec() }).expect("a first chunk");
    assert_eq!(temp_files(), 2, "a received chunk goes to a temp file of its own");
    install(&mut storage, 30, 2).expect("install");
    assert_eq!(temp_files(), 0);
}
