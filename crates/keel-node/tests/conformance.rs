//! The storage conformance suite against both implementations. `FileStorage` runs twice:
//! with the default 64 MiB segments (everything in one segment) and with 300-byte segments,
//! so that appends roll, truncations cross segment boundaries and compactions delete whole
//! segments.

use keel_node::conformance::{Harness, MemoryHarness};
use keel_node::{FileStorage, FileStorageConfig};

mod memory {
    keel_node::storage_conformance_tests!(super::MemoryHarness);
}

pub struct FileHarness {
    dir: tempfile::TempDir,
    config: FileStorageConfig,
}

impl FileHarness {
    pub fn new(segment_bytes_max: u64) -> FileHarness {
        let config = FileStorageConfig { segment_bytes_max, ..FileStorageConfig::default() };
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
    keel_node::storage_conformance_tests!(super::FileHarness::new(keel_node::FileStorageConfig::default().segment_bytes_max));
}

mod file_small_segments {
    keel_node::storage_conformance_tests!(super::FileHarness::new(300));
}

#[test]
fn run_all_covers_every_case_once() {
    keel_node::conformance::run_all(|| MemoryHarness);
}
