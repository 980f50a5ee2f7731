//! `KvStore`: a sorted map applied from the Raft log.
//!
//! # Memory
//!
//! The map is persistent (`imbl::OrdMap`, a B-tree whose nodes are shared between copies):
//! a snapshot takes an O(1) copy and serializes it on a snapshot thread while the driver
//! keeps applying; only the nodes written meanwhile are duplicated. Keys up to 24 bytes and
//! values up to 16 bytes are stored inline in the tree node, with no heap allocation of
//! their own. A million 16-byte keys with 16-byte values take ~95 MiB (a `BTreeMap<String,
//! Vec<u8>>` takes ~150 MiB, and twice that while a snapshot copy exists).

use crate::command::{Command, CommandResult};
use compact_str::CompactString;
use keel_core::{Entry, EntryKind, LogIndex, StateMachine};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// A key: UTF-8, inline up to 24 bytes.
pub type Key = CompactString;
/// A value: inline up to 16 bytes.
pub type Value = SmallVec<[u8; 16]>;

/// The snapshot image is this struct in postcard: the applied index, then the map as a
/// length and (key, value) pairs in key order, so equal states give equal bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStore {
    applied_index: LogIndex,
    data: imbl::OrdMap<Key, Value>,
}

/// Small values are copied inline; a large one keeps its heap buffer.
fn value_from(bytes: Vec<u8>) -> Value {
    if bytes.len() <= 16 {
        SmallVec::from_slice(&bytes)
    } else {
        SmallVec::from_vec(bytes)
    }
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    /// Reads bypass the log; callers decide how fresh they must be (ReadIndex or stale).
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.data.get(key).map(|value| value.as_slice())
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.data.iter().map(|(key, value)| (key.as_str(), value.as_slice()))
    }

    fn execute(&mut self, command: Command) -> CommandResult {
        match command {
            Command::Set { key, value } => {
                self.data.insert(Key::from(key), value_from(value));
                CommandResult::Set
            }
            Command::Delete { key } => CommandResult::Deleted { existed: self.data.remove(key.as_str()).is_some() },
            Command::Cas { key, expected, value } => {
                let current = self.get(&key).map(<[u8]>::to_vec);
                if current != expected {
                    return CommandResult::Cas { succeeded: false, current };
                }
                match value {
                    Some(value) => self.data.insert(Key::from(key), value_from(value)),
                    None => self.data.remove(key.as_str()),
                };
                CommandResult::Cas { succeeded: true, current: None }
            }
        }
    }
}

impl StateMachine for KvStore {
    type Output = CommandResult;

    fn apply(&mut self, entry: &Entry) -> CommandResult {
        assert_eq!(entry.index, self.applied_index.next(), "entries must be applied once, in order");
        self.applied_index = entry.index;
        match &entry.kind {
            // A configuration is the cluster's business, not the store's.
            EntryKind::Noop | EntryKind::Config(_) => CommandResult::Noop,
            EntryKind::Command(bytes) => match Command::decode(bytes) {
                Ok(command) => self.execute(command),
                Err(error) => CommandResult::Invalid(error),
            },
        }
    }

    fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    /// Sized first, so the image is allocated once at its exact length (a growing Vec would
    /// briefly hold up to twice the image).
    fn snapshot(&self) -> Vec<u8> {
        let bytes = postcard::experimental::serialized_size(self).expect("sizing an in-memory map cannot fail");
        let image = postcard::to_io(self, Vec::with_capacity(bytes)).expect("serializing to a Vec cannot fail");
        debug_assert_eq!(image.len(), bytes);
        image
    }

    /// Takes an O(1) copy of the map now (nodes are shared until written); serializes it on
    /// the caller's thread.
    fn snapshot_job(&self) -> Box<dyn FnOnce() -> Vec<u8> + Send> {
        let copy = self.clone();
        Box::new(move || copy.snapshot())
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        *self = postcard::from_bytes(data).map_err(|error| format!("corrupt snapshot image: {error}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::Term;

    fn entry(index: u64, command: &Command) -> Entry {
        Entry { term: Term(1), index: LogIndex(index), kind: EntryKind::Command(command.encode().unwrap().into()) }
    }

    #[test]
    fn set_delete_and_cas() {
        let mut store = KvStore::new();
        store.apply(&Entry { term: Term(1), index: LogIndex(1), kind: EntryKind::Noop });
        store.apply(&entry(2, &Command::Set { key: "a".into(), value: b"1".to_vec() }));
        assert_eq!(store.get("a"), Some(&b"1"[..]));
        let failed = store.apply(&entry(3, &Command::Cas { key: "a".into(), expected: Some(b"0".to_vec()), value: Some(b"2".to_vec()) }));
        assert_eq!(failed, CommandResult::Cas { succeeded: false, current: Some(b"1".to_vec()) });
        let won = store.apply(&entry(4, &Command::Cas { key: "a".into(), expected: Some(b"1".to_vec()), value: None }));
        assert_eq!(won, CommandResult::Cas { succeeded: true, current: None });
        assert_eq!(store.get("a"), None);
        let deleted = store.apply(&entry(5, &Command::Delete { key: "a".into() }));
        assert_eq!(deleted, CommandResult::Deleted { existed: false });
        assert_eq!(store.applied_index(), LogIndex(5));
    }

    #[test]
    fn snapshot_restore_round_trip_is_deterministic() {
        let mut store = KvStore::new();
        for (index, key) in ["b", "a", "c"].iter().enumerate() {
            store.apply(&entry(index as u64 + 1, &Command::Set { key: key.to_string(), value: key.as_bytes().to_vec() }));
        }
        let image = store.snapshot();
        let mut restored = KvStore::new();
        restored.restore(&image).unwrap();
        assert_eq!(restored, store);
        assert_eq!(restored.snapshot(), image, "equal states give equal bytes");
        assert!(restored.restore(b"garbage").is_err());
        assert_eq!(restored, store, "a failed restore leaves the state untouched");
        let job = store.snapshot_job();
        store.apply(&entry(4, &Command::Set { key: "later".into(), value: b"x".to_vec() }));
        assert_eq!(job(), image, "a snapshot job captures the state when it was made");
    }

    /// The image format predates the compact map: a data directory written with
    /// `BTreeMap<String, Vec<u8>>` must restore, and a new image must read back the same.
    #[test]
    fn image_format_matches_a_plain_sorted_map() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct PlainImage {
            applied_index: LogIndex,
            data: std::collections::BTreeMap<String, Vec<u8>>,
        }
        let long_key = "k".repeat(40);
        let long_value = vec![7u8; 100];
        let mut store = KvStore::new();
        let mut plain = PlainImage { applied_index: LogIndex(0), data: Default::default() };
        for (index, (key, value)) in [("short", b"v".to_vec()), (long_key.as_str(), long_value.clone()), ("empty-value", Vec::new())].into_iter().enumerate() {
            store.apply(&entry(index as u64 + 1, &Command::Set { key: key.to_string(), value: value.clone() }));
            plain.data.insert(key.to_string(), value);
        }
        plain.applied_index = LogIndex(3);
        let image = store.snapshot();
        assert_eq!(image, postcard::to_allocvec(&plain).unwrap());
        assert_eq!(postcard::from_bytes::<PlainImage>(&image).unwrap(), plain);
        assert_eq!(store.get(&long_key), Some(&long_value[..]));
        assert_eq!(store.iter().map(|(key, _)| key.to_string()).collect::<Vec<_>>(), plain.data.keys().cloned().collect::<Vec<_>>());
    }
}
