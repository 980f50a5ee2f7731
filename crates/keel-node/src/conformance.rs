//! The storage conformance suite: every behaviour the `Storage` trait promises, checked the
//! same way against every implementation (openraft's `Suite` does this for its stores).
//!
//! An implementation provides a [`Harness`] (make a fresh storage; "restart" one, which for
//! a file storage means drop and reopen) and runs the cases, either all in one test with
//! [`run_all`] or as one `#[test]` each with [`storage_conformance_tests!`]:
//!
//! ```text
//! mod memory {
//!     keel_node::storage_conformance_tests!(keel_node::conformance::MemoryHarness);
//! }
//! ```
//!
//! Every case checks the state both before and after a restart (after `sync`), so a file
//! storage is tested on what it reads back from disk, not only what it holds in memory.
//! Cases panic on failure, naming the case and the step.

use crate::storage::Storage;
use crate::storage_memory::MemoryStorage;
use crate::storage::{SnapshotJob, SnapshotWriter, StorageError};
use keel_core::{Entry, EntryKind, HardState, LogIndex, NodeId, ReceivedChunk, RestoredState, Snapshot, SnapshotMeta, Term};
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Makes and restarts storages for the suite.
pub trait Harness {
    type Storage: Storage;
    /// A new, empty storage.
    fn create(&mut self) -> Self::Storage;
    /// The same storage after a process restart. Everything synced must survive.
    fn reopen(&mut self, storage: Self::Storage) -> Self::Storage;
    /// The same storage after a crash at this moment (a power cut, where the storage can
    /// model one): everything synced survives, writes since the last sync may be lost.
    fn crash(&mut self, storage: Self::Storage) -> Self::Storage {
        self.reopen(storage)
    }
}

/// `MemoryStorage`'s restart is a crash that loses nothing synced; its crash loses the
/// unsynced writes it is told to (`crash_kept_unsynced`, all of them by default).
#[derive(Default)]
pub struct MemoryHarness {
    pub crash_kept_unsynced: usize,
}

impl Harness for MemoryHarness {
    type Storage = MemoryStorage;
    fn create(&mut self) -> MemoryStorage {
        MemoryStorage::new()
    }
    fn reopen(&mut self, storage: MemoryStorage) -> MemoryStorage {
        assert_eq!(storage.unsynced_entries(), 0, "the suite syncs before every restart");
        storage.crash(0).0
    }
    fn crash(&mut self, storage: MemoryStorage) -> MemoryStorage {
        let kept = self.crash_kept_unsynced.min(storage.unsynced_entries());
        storage.crash(kept).0
    }
}

/// Every case of the suite, named once: `cases()` and `storage_conformance_tests!` both
/// expand from this list, so neither can miss one. Calls `$then!($($prefix)* case, ...)`.
#[doc(hidden)]
#[macro_export]
macro_rules! __storage_conformance_with_cases {
    ($then:ident ! ($($prefix:tt)*)) => {
        $crate::$then! { $($prefix)*
            fresh_storage_is_empty, append_and_read_back, append_in_batches, append_empty_is_noop,
            overwrite_conflicting_suffix, overwrite_whole_log, overwrite_with_longer_suffix,
            overwrite_last_entry, hard_state_latest_wins, hard_state_and_entries_together,
            install_snapshot_keeps_matching_suffix, install_snapshot_discards_log_on_term_mismatch,
            install_snapshot_beyond_log_discards_log, install_snapshot_on_empty_storage_then_append,
            compact_drops_prefix, compact_whole_log_then_append, compact_twice_keeps_latest_snapshot,
            image_written_off_thread_then_compacted, image_written_but_not_compacted_is_dropped,
            received_chunks_count_only_once_installed, a_first_chunk_starts_the_image_again, overwrite_after_compaction, large_and_empty_entries, reopen_then_append_continues,
            crash_keeps_synced_writes_and_a_prefix_of_the_rest,
            append_with_gap_panics, append_into_snapshot_panics, compact_with_wrong_term_panics,
            stale_snapshot_panics, chunk_after_a_gap_panics, install_of_a_partial_image_panics, random_operations_match_model }
    };
}

/// Generates one `#[test]` per case, each with a fresh harness from `$make_harness`.
#[macro_export]
macro_rules! storage_conformance_tests {
    ($make_harness:expr) => {
        $crate::__storage_conformance_with_cases!(storage_conformance_tests!(@cases $make_harness;));
    };
    (@cases $make_harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let mut harness = $make_harness;
                $crate::conformance::$case(&mut harness);
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __storage_conformance_case_vec {
    ($harness:ty; $($case:ident),* $(,)?) => {
        vec![$((stringify!($case), $crate::conformance::$case::<$harness> as $crate::conformance::Case<$harness>)),*]
    };
}

/// One case of the suite.
pub type Case<H> = fn(&mut H);

/// Every case, by name, for `run_all` and for callers that want their own loop.
pub fn cases<H: Harness>() -> Vec<(&'static str, Case<H>)> {
    crate::__storage_conformance_with_cases!(__storage_conformance_case_vec!(H;))
}

/// Runs every case with harnesses from `make_harness`, printing each name as it starts;
/// returns the names in the order they ran.
pub fn run_all<H: Harness>(mut make_harness: impl FnMut() -> H) -> Vec<&'static str> {
    let mut ran = Vec::new();
    for (name, case) in cases::<H>() {
        eprintln!("storage conformance: {name}");
        case(&mut make_harness());
        ran.push(name);
    }
    ran
}

// ----- helpers ----------------------------------------------------------------------------

/// An entry whose content names its position, so a misplaced entry shows in a diff. Every
/// seventh is a configuration (thesis §4.1: recovered from the log on restart) and every
/// eleventh a leader's no-op, so each kind is stored and read back.
pub fn entry(index: u64, term: u64) -> Entry {
    let kind = if index % 7 == 0 {
        EntryKind::Config(keel_core::Membership { voters: [NodeId(1), NodeId(2), NodeId(3)].into(), learners: [NodeId(index)].into(), voters_outgoing: [NodeId(1), NodeId(term)].into(), addresses: [(NodeId(index), format!("10.0.0.{index}:7000"))].into() })
    } else if index % 11 == 0 {
        EntryKind::Noop
    } else {
        EntryKind::Command(format!("command {index}@{term}").into_bytes().into())
    };
    Entry { term: Term(term), index: LogIndex(index), kind }
}

/// Entries `from..=to`, all in `term`.
pub fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to).map(|index| entry(index, term)).collect()
}

/// The image of the suite's snapshot at `index`@`term`: bytes that name it, several chunks
/// long (`CHUNK_BYTES`).
pub fn image(index: u64, term: u64) -> Vec<u8> {
    format!("state machine at {index}@{term}; ").repeat(3).into_bytes()
}

/// How the suite cuts an image it receives.
const CHUNK_BYTES: usize = 16;

/// The suite's snapshot at `index`@`term` (the one `install` and `compact` store).
pub fn snapshot(index: u64, term: u64) -> Snapshot {
    // A configuration that differs from snapshot to snapshot, so storing it is checked too.
    let membership = keel_core::Membership { voters: [NodeId(1), NodeId(2), NodeId(index % 7 + 3)].into(), learners: [NodeId(term + 20)].into(), ..Default::default() };
    Snapshot { meta: SnapshotMeta::of_image(LogIndex(index), Term(term), &image(index, term)), membership }
}

/// The chunks a leader would send of the suite's snapshot at `index`@`term`.
fn chunks(index: u64, term: u64) -> Vec<ReceivedChunk> {
    let snapshot = snapshot(index, term);
    let image = image(index, term);
    image.chunks(CHUNK_BYTES).enumerate().map(|(at, data)| ReceivedChunk { snapshot: snapshot.clone(), offset: (at * CHUNK_BYTES) as u64, data: data.to_vec() }).collect()
}

/// Receives the suite's snapshot at `index`@`term` chunk by chunk, as from a leader, and
/// installs it (`Ready.received_chunks`, then `Ready.snapshot`).
pub fn install(storage: &mut impl Storage, index: u64, term: u64) -> Result<Snapshot, StorageError> {
    for chunk in chunks(index, term) {
        storage.write_snapshot_chunk(&chunk)?;
    }
    let snapshot = snapshot(index, term);
    storage.install_snapshot(&snapshot)?;
    Ok(snapshot)
}

/// Writes our own snapshot's image at `index`@`term` through the storage's writer.
fn write_own(writer: &SnapshotWriter, index: u64, term: u64) -> Snapshot {
    let membership = snapshot(index, term).membership;
    let image = image(index, term);
    let job = SnapshotJob { index: LogIndex(index), term: Term(term), membership, write: Box::new(move |out| out.write_all(&image)) };
    let written = writer(job).expect("write our own snapshot's image");
    assert_eq!(written, snapshot(index, term), "the writer measures the image it wrote");
    written
}

/// Writes our own snapshot's image at `index`@`term`, then compacts to it.
pub fn compact(storage: &mut impl Storage, index: u64, term: u64) -> Result<Snapshot, StorageError> {
    let snapshot = write_own(&storage.snapshot_writer(), index, term);
    storage.compact(&snapshot)?;
    Ok(snapshot)
}

fn hard_state(term: u64, voted_for: Option<u64>, commit_index: u64) -> HardState {
    HardState { current_term: Term(term), voted_for: voted_for.map(NodeId), commit_index: LogIndex(commit_index) }
}

/// What `initial_state` should return.
#[derive(Clone, Debug, Default)]
struct Expected {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
}

fn assert_state(actual: &RestoredState, expected: &Expected, step: &str) {
    assert_eq!(actual.hard_state, expected.hard_state, "{step}: hard state");
    assert_eq!(actual.snapshot, expected.snapshot, "{step}: snapshot");
    let indexes = |entries: &[Entry]| entries.iter().map(|entry| entry.index.0).collect::<Vec<_>>();
    assert_eq!(indexes(&actual.entries), indexes(&expected.entries), "{step}: entry indexes");
    assert_eq!(actual.entries, expected.entries, "{step}: entries");
}

/// The stored snapshot's image is the one `expected` names, read whole and in pieces.
fn assert_image(storage: &impl Storage, expected: &Expected, step: &str) {
    let image_read = storage.snapshot_image().map(|stored| {
        let mut whole = Vec::new();
        stored.reader().expect("open the image").read_to_end(&mut whole).expect("read the image");
        let meta = stored.meta();
        let pieces: Vec<u8> = (0..meta.data_bytes).step_by(7).flat_map(|offset| stored.read_at(offset, 7.min(meta.data_bytes - offset) as usize).expect("read_at")).collect();
        assert_eq!(pieces, whole, "{step}: the image read in pieces");
        (meta, whole)
    });
    let image_expected = expected.snapshot.as_ref().map(|snapshot| (snapshot.meta, image(snapshot.meta.last_included_index.0, snapshot.meta.last_included_term.0)));
    assert_eq!(image_read, image_expected, "{step}: snapshot image");
}

/// Syncs, checks the state, restarts, checks again; returns the restarted storage.
fn check<H: Harness>(harness: &mut H, mut storage: H::Storage, expected: &Expected, step: &str) -> H::Storage {
    storage.sync().expect("sync");
    assert_state(&storage.initial_state().expect("initial_state"), expected, &format!("{step} (before restart)"));
    assert_image(&storage, expected, &format!("{step} (before restart)"));
    let storage = harness.reopen(storage);
    assert_state(&storage.initial_state().expect("initial_state"), expected, &format!("{step} (after restart)"));
    assert_image(&storage, expected, &format!("{step} (after restart)"));
    storage
}

fn log_only(log: Vec<Entry>, hard_state: HardState) -> Expected {
    Expected { hard_state, snapshot: None, entries: log }
}

/// A storage holding `1..=last` in term 1 with a matching hard state, synced.
fn filled<H: Harness>(harness: &mut H, last: u64) -> H::Storage {
    let mut storage = harness.create();
    storage.set_hard_state(&hard_state(1, Some(1), 0)).expect("set_hard_state");
    storage.append(&entries(1, last, 1)).expect("append");
    storage.sync().expect("sync");
    storage
}

fn panics(action: impl FnOnce()) -> bool {
    catch_unwind(AssertUnwindSafe(action)).is_err()
}

// ----- append and overwrite ---------------------------------------------------------------

pub fn fresh_storage_is_empty<H: Harness>(harness: &mut H) {
    let storage = harness.create();
    check(harness, storage, &Expected::default(), "fresh");
}

pub fn append_and_read_back<H: Harness>(harness: &mut H) {
    let storage = filled(harness, 20);
    check(harness, storage, &log_only(entries(1, 20, 1), hard_state(1, Some(1), 0)), "append 1..=20");
}

pub fn append_in_batches<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 3);
    storage.append(&entries(4, 9, 1)).expect("append");
    storage.append(&entries(10, 10, 1)).expect("append");
    let mut storage = check(harness, storage, &log_only(entries(1, 10, 1), hard_state(1, Some(1), 0)), "three batches");
    storage.append(&entries(11, 15, 1)).expect("append");
    check(harness, storage, &log_only(entries(1, 15, 1), hard_state(1, Some(1), 0)), "a batch after restart");
}

pub fn append_empty_is_noop<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 5);
    storage.append(&[]).expect("append nothing");
    check(harness, storage, &log_only(entries(1, 5, 1), hard_state(1, Some(1), 0)), "empty append");
}

pub fn overwrite_conflicting_suffix<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 10);
    storage.set_hard_state(&hard_state(2, None, 0)).expect("set_hard_state");
    storage.append(&entries(6, 8, 2)).expect("append");
    let expected = [entries(1, 5, 1), entries(6, 8, 2)].concat();
    check(harness, storage, &log_only(expected, hard_state(2, None, 0)), "overwrite 6..=10 with 6..=8");
}

pub fn overwrite_whole_log<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 10);
    storage.set_hard_state(&hard_state(3, None, 0)).expect("set_hard_state");
    storage.append(&entries(1, 2, 3)).expect("append");
    check(harness, storage, &log_only(entries(1, 2, 3), hard_state(3, None, 0)), "overwrite from index 1");
}

pub fn overwrite_with_longer_suffix<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 5);
    storage.set_hard_state(&hard_state(2, None, 2)).expect("set_hard_state");
    storage.append(&entries(3, 30, 2)).expect("append");
    let expected = [entries(1, 2, 1), entries(3, 30, 2)].concat();
    check(harness, storage, &log_only(expected, hard_state(2, None, 2)), "overwrite 3..=5 with 3..=30");
}

pub fn overwrite_last_entry<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 5);
    storage.set_hard_state(&hard_state(2, None, 0)).expect("set_hard_state");
    storage.append(&entries(5, 5, 2)).expect("append");
    let expected = [entries(1, 4, 1), entries(5, 5, 2)].concat();
    check(harness, storage, &log_only(expected, hard_state(2, None, 0)), "overwrite the last entry");
}

// ----- hard state -------------------------------------------------------------------------

pub fn hard_state_latest_wins<H: Harness>(harness: &mut H) {
    let mut storage = harness.create();
    storage.set_hard_state(&hard_state(1, Some(4), 0)).expect("set_hard_state");
    storage.set_hard_state(&hard_state(2, Some(7), 0)).expect("set_hard_state");
    let mut storage = check(harness, storage, &log_only(vec![], hard_state(2, Some(7), 0)), "vote");
    storage.set_hard_state(&hard_state(3, None, 0)).expect("set_hard_state");
    check(harness, storage, &log_only(vec![], hard_state(3, None, 0)), "no vote");
}

pub fn hard_state_and_entries_together<H: Harness>(harness: &mut H) {
    let mut storage = harness.create();
    storage.append(&entries(1, 4, 2)).expect("append");
    storage.set_hard_state(&hard_state(2, Some(1), 3)).expect("set_hard_state");
    check(harness, storage, &log_only(entries(1, 4, 2), hard_state(2, Some(1), 3)), "one sync");
}

// ----- snapshots --------------------------------------------------------------------------

pub fn install_snapshot_keeps_matching_suffix<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 10);
    install(&mut storage, 6, 1).expect("install");
    storage.set_hard_state(&hard_state(1, Some(1), 6)).expect("set_hard_state");
    let expected = Expected { hard_state: hard_state(1, Some(1), 6), snapshot: Some(snapshot(6, 1)), entries: entries(7, 10, 1) };
    check(harness, storage, &expected, "install at 6@1 keeps 7..=10");
}

pub fn install_snapshot_discards_log_on_term_mismatch<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 10);
    install(&mut storage, 6, 2).expect("install");
    storage.set_hard_state(&hard_state(2, None, 6)).expect("set_hard_state");
    let expected = Expected { hard_state: hard_state(2, None, 6), snapshot: Some(snapshot(6, 2)), entries: vec![] };
    let mut storage = check(harness, storage, &expected, "install at 6@2 over a term-1 log");
    storage.append(&entries(7, 9, 2)).expect("append after install");
    let expected = Expected { entries: entries(7, 9, 2), ..expected };
    check(harness, storage, &expected, "append after the install");
}

pub fn install_snapshot_beyond_log_discards_log<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 5);
    install(&mut storage, 40, 1).expect("install");
    storage.set_hard_state(&hard_state(1, Some(1), 40)).expect("set_hard_state");
    let expected = Expected { hard_state: hard_state(1, Some(1), 40), snapshot: Some(snapshot(40, 1)), entries: vec![] };
    check(harness, storage, &expected, "install past the log's end");
}

pub fn install_snapshot_on_empty_storage_then_append<H: Harness>(harness: &mut H) {
    let mut storage = harness.create();
    install(&mut storage, 100, 4).expect("install");
    storage.append(&entries(101, 120, 4)).expect("append");
    storage.set_hard_state(&hard_state(4, None, 100)).expect("set_hard_state");
    let expected = Expected { hard_state: hard_state(4, None, 100), snapshot: Some(snapshot(100, 4)), entries: entries(101, 120, 4) };
    check(harness, storage, &expected, "install on an empty storage, then append");
}

pub fn compact_drops_prefix<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 30);
    compact(&mut storage, 17, 1).expect("compact");
    let expected = Expected { hard_state: hard_state(1, Some(1), 0), snapshot: Some(snapshot(17, 1)), entries: entries(18, 30, 1) };
    check(harness, storage, &expected, "compact to 17");
}

pub fn compact_whole_log_then_append<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 12);
    compact(&mut storage, 12, 1).expect("compact");
    let expected = Expected { hard_state: hard_state(1, Some(1), 0), snapshot: Some(snapshot(12, 1)), entries: vec![] };
    let mut storage = check(harness, storage, &expected, "compact everything");
    storage.append(&entries(13, 14, 1)).expect("append");
    check(harness, storage, &Expected { entries: entries(13, 14, 1), ..expected }, "append after compacting everything");
}

pub fn compact_twice_keeps_latest_snapshot<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 30);
    compact(&mut storage, 10, 1).expect("compact");
    compact(&mut storage, 25, 1).expect("compact");
    let expected = Expected { hard_state: hard_state(1, Some(1), 0), snapshot: Some(snapshot(25, 1)), entries: entries(26, 30, 1) };
    check(harness, storage, &expected, "two compactions");
}

/// Our own image is written on another thread while appends go on; `compact` then makes
/// it the snapshot.
pub fn image_written_off_thread_then_compacted<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 20);
    let writer = storage.snapshot_writer();
    let written = std::thread::spawn(move || write_own(&writer, 15, 1));
    storage.append(&entries(21, 25, 1)).expect("append");
    storage.sync().expect("sync");
    let snapshot = written.join().expect("writer thread");
    storage.compact(&snapshot).expect("compact");
    let expected = Expected { hard_state: hard_state(1, Some(1), 0), snapshot: Some(snapshot), entries: entries(16, 25, 1) };
    check(harness, storage, &expected, "written, then compacted to 15");
}

/// An image written but never compacted (a newer one from the leader won) is not what
/// the storage reads back.
pub fn image_written_but_not_compacted_is_dropped<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 20);
    write_own(&storage.snapshot_writer(), 10, 1);
    storage.set_hard_state(&hard_state(2, None, 0)).expect("set_hard_state");
    install(&mut storage, 30, 2).expect("install");
    let expected = Expected { hard_state: hard_state(2, None, 0), snapshot: Some(snapshot(30, 2)), entries: vec![] };
    check(harness, storage, &expected, "wrote 10, installed 30");
}

/// Chunks of an image never installed are no part of the stored state: a restart finds
/// the state before them, and the transfer starts again from offset 0.
pub fn received_chunks_count_only_once_installed<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 10);
    for chunk in &chunks(20, 1)[..2] {
        storage.write_snapshot_chunk(chunk).expect("write_snapshot_chunk");
    }
    let storage = check(harness, storage, &log_only(entries(1, 10, 1), hard_state(1, Some(1), 0)), "two chunks received");
    let mut storage = storage;
    install(&mut storage, 20, 1).expect("install after a restart");
    let expected = Expected { hard_state: hard_state(1, Some(1), 0), snapshot: Some(snapshot(20, 1)), entries: vec![] };
    check(harness, storage, &expected, "received again and installed");
}

/// A chunk at offset 0 starts a new image, whatever was being received: a new leader's
/// transfer replaces the last one's.
pub fn a_first_chunk_starts_the_image_again<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 10);
    for chunk in &chunks(20, 1)[..2] {
        storage.write_snapshot_chunk(chunk).expect("write_snapshot_chunk");
    }
    storage.write_snapshot_chunk(&chunks(24, 2)[0]).expect("write_snapshot_chunk");
    storage.set_hard_state(&hard_state(2, None, 0)).expect("set_hard_state");
    install(&mut storage, 24, 2).expect("install");
    let expected = Expected { hard_state: hard_state(2, None, 0), snapshot: Some(snapshot(24, 2)), entries: vec![] };
    check(harness, storage, &expected, "the second transfer installed");
}

pub fn overwrite_after_compaction<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 20);
    compact(&mut storage, 8, 1).expect("compact");
    storage.set_hard_state(&hard_state(2, None, 8)).expect("set_hard_state");
    storage.append(&entries(9, 12, 2)).expect("append");
    let expected = Expected { hard_state: hard_state(2, None, 8), snapshot: Some(snapshot(8, 1)), entries: entries(9, 12, 2) };
    check(harness, storage, &expected, "overwrite right after the snapshot");
}

// ----- entry shapes and restarts ----------------------------------------------------------

pub fn large_and_empty_entries<H: Harness>(harness: &mut H) {
    let mut storage = harness.create();
    let large = |index: u64| Entry { term: Term(1), index: LogIndex(index), kind: EntryKind::Command(vec![index as u8; 5000].into()) };
    let list = vec![
        Entry { term: Term(1), index: LogIndex(1), kind: EntryKind::Noop },
        Entry { term: Term(1), index: LogIndex(2), kind: EntryKind::Command(Default::default()) },
        large(3),
        large(4),
        Entry { term: Term(1), index: LogIndex(5), kind: EntryKind::Noop },
    ];
    storage.set_hard_state(&hard_state(1, None, 0)).expect("set_hard_state");
    storage.append(&list).expect("append");
    check(harness, storage, &log_only(list, hard_state(1, None, 0)), "noop, empty and 5000-byte commands");
}

pub fn reopen_then_append_continues<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 5);
    for round in 0..5 {
        storage = harness.reopen(storage);
        let from = 6 + round * 5;
        storage.append(&entries(from, from + 4, 1)).expect("append");
        storage.sync().expect("sync");
    }
    check(harness, storage, &log_only(entries(1, 30, 1), hard_state(1, Some(1), 0)), "five restarts");
}

/// A crash keeps what was synced, and of the writes since at most a prefix (in the order
/// written): never a later write without an earlier one, never a broken log.
pub fn crash_keeps_synced_writes_and_a_prefix_of_the_rest<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 5);
    storage.set_hard_state(&hard_state(2, Some(2), 3)).expect("set_hard_state");
    storage.sync().expect("sync");
    storage.append(&entries(6, 9, 2)).expect("append");
    let storage = harness.crash(storage);
    let restored = storage.initial_state().expect("initial_state after a crash");
    assert_eq!(restored.hard_state, hard_state(2, Some(2), 3), "the synced hard state survives");
    let written = [entries(1, 5, 1), entries(6, 9, 2)].concat();
    assert!(restored.entries.len() >= 5, "the synced entries 1..=5 survive, found {}", restored.entries.len());
    assert_eq!(restored.entries[..], written[..restored.entries.len()], "a prefix of what was written, in order");
    let mut storage = storage;
    let next = restored.entries.len() as u64 + 1;
    storage.append(&entries(next, next, 2)).expect("append after the crash");
    let expected = [restored.entries.clone(), entries(next, next, 2)].concat();
    check(harness, storage, &log_only(expected, hard_state(2, Some(2), 3)), "append after a crash");
}

// ----- programmer errors panic ------------------------------------------------------------

pub fn append_with_gap_panics<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 5);
    assert!(panics(|| drop(storage.append(&entries(7, 8, 1)))), "append leaving a gap must panic");
}

pub fn append_into_snapshot_panics<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 10);
    compact(&mut storage, 5, 1).expect("compact");
    assert!(panics(|| drop(storage.append(&entries(5, 6, 1)))), "append at the snapshot index must panic");
}

pub fn compact_with_wrong_term_panics<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 10);
    assert!(panics(|| drop(compact(&mut storage, 5, 2))), "compaction with a term the log lacks must panic");
}

pub fn stale_snapshot_panics<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 10);
    compact(&mut storage, 6, 1).expect("compact");
    assert!(panics(|| drop(install(&mut storage, 6, 1))), "a snapshot that does not advance must panic");
}

// ----- model-based ------------------------------------------------------------------------

pub fn chunk_after_a_gap_panics<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 5);
    let chunks = chunks(8, 1);
    storage.write_snapshot_chunk(&chunks[0]).expect("write_snapshot_chunk");
    assert!(panics(|| drop(storage.write_snapshot_chunk(&chunks[2]))), "a chunk that leaves a gap must panic");
}

pub fn install_of_a_partial_image_panics<H: Harness>(harness: &mut H) {
    let mut storage = filled(harness, 5);
    storage.write_snapshot_chunk(&chunks(8, 1)[0]).expect("write_snapshot_chunk");
    assert!(panics(|| drop(storage.install_snapshot(&snapshot(8, 1)))), "installing an image received in part must panic");
}

/// A few hundred random operations (a fixed seed per run), compared with a plain model after
/// each sync and restart. Operations keep to what a Raft core asks for: terms never
/// decrease, nothing at or below the commit index is overwritten, the hard state's term is
/// never behind the log.
pub fn random_operations_match_model<H: Harness>(harness: &mut H) {
    for seed in 1..=3 {
        run_model(harness, seed, 300);
    }
}

fn run_model<H: Harness>(harness: &mut H, seed: u64, operations: u32) {
    let mut random = SplitMix64(seed);
    let mut model = Model::default();
    let mut storage = harness.create();
    for step in 0..operations {
        let context = format!("seed {seed} step {step}");
        match random.below(10) {
            0..=4 => model.append(&mut storage, &mut random),
            5 => model.new_term(&mut storage),
            6 => model.commit(&mut storage, &mut random),
            7 => model.compact(&mut storage, &mut random),
            8 => model.install(&mut storage, &mut random),
            _ => storage = check(harness, storage, &model.expected(), &context),
        }
    }
    check(harness, storage, &model.expected(), &format!("seed {seed} end"));
}

#[derive(Default)]
struct Model {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
}

impl Model {
    fn expected(&self) -> Expected {
        Expected { hard_state: self.hard_state, snapshot: self.snapshot.clone(), entries: self.entries.clone() }
    }

    fn floor(&self) -> SnapshotMeta {
        self.snapshot.as_ref().map(|snapshot| snapshot.meta).unwrap_or_default()
    }

    fn last_index(&self) -> u64 {
        self.floor().last_included_index.0 + self.entries.len() as u64
    }

    fn term_at(&self, index: u64) -> Option<Term> {
        let floor = self.floor();
        if index == floor.last_included_index.0 {
            return Some(floor.last_included_term);
        }
        self.entries.iter().find(|entry| entry.index.0 == index).map(|entry| entry.term)
    }

    fn append<S: Storage>(&mut self, storage: &mut S, random: &mut SplitMix64) {
        let from_min = self.hard_state.commit_index.0.max(self.floor().last_included_index.0) + 1;
        let from = from_min + random.below(self.last_index() + 2 - from_min);
        let count = 1 + random.below(8);
        let term = self.hard_state.current_term.0.max(1);
        let new_entries: Vec<Entry> = (from..from + count).map(|index| entry(index, term)).collect();
        self.hard_state.current_term = Term(term);
        storage.set_hard_state(&self.hard_state).expect("set_hard_state");
        storage.append(&new_entries).expect("append");
        self.entries.retain(|entry| entry.index.0 < from);
        self.entries.extend(new_entries);
    }

    fn new_term<S: Storage>(&mut self, storage: &mut S) {
        self.hard_state.current_term = self.hard_state.current_term.next();
        self.hard_state.voted_for = Some(NodeId(self.hard_state.current_term.0 % 3));
        storage.set_hard_state(&self.hard_state).expect("set_hard_state");
    }

    fn commit<S: Storage>(&mut self, storage: &mut S, random: &mut SplitMix64) {
        let commit = self.hard_state.commit_index.0;
        self.hard_state.commit_index = LogIndex(commit + random.below(self.last_index() - commit + 1));
        storage.set_hard_state(&self.hard_state).expect("set_hard_state");
    }

    /// Compacts to an index in `floor + 1 ..= commit`, if there is one.
    fn compact<S: Storage>(&mut self, storage: &mut S, random: &mut SplitMix64) {
        let floor = self.floor().last_included_index.0;
        let commit = self.hard_state.commit_index.0;
        if commit <= floor {
            return;
        }
        let index = floor + 1 + random.below(commit - floor);
        let snapshot = compact(storage, index, self.term_at(index).expect("committed entries are stored").0).expect("compact");
        self.entries.retain(|entry| entry.index.0 > index);
        self.snapshot = Some(snapshot);
    }

    /// Installs a leader's snapshot past the commit index: half the time with the term the
    /// log holds there (suffix kept), else the current term (log usually discarded). The
    /// current term is never behind any stored term, so it never goes backwards.
    fn install<S: Storage>(&mut self, storage: &mut S, random: &mut SplitMix64) {
        let commit = self.hard_state.commit_index.0.max(self.floor().last_included_index.0);
        let index = commit + 1 + random.below(self.last_index() + 3 - commit);
        let term = match self.term_at(index) {
            Some(term) if random.below(2) == 0 => term,
            _ => self.hard_state.current_term,
        };
        let snapshot = install(storage, index, term.0).expect("install");
        if self.term_at(index) == Some(term) {
            self.entries.retain(|entry| entry.index.0 > index);
        } else {
            self.entries.clear();
        }
        self.snapshot = Some(snapshot);
        self.hard_state.commit_index = LogIndex(index);
        storage.set_hard_state(&self.hard_state).expect("set_hard_state");
    }
}

/// A small deterministic generator, so the suite needs no `rand`.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    /// Uniform-enough in `0..bound`; `bound` must be positive.
    fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "empty range");
        self.next() % bound
    }
}
