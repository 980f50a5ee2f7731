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
use keel_core::{Entry, EntryKind, LogIndex, SnapshotWrite, StateMachine};
use std::io::{Read, Write};
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

    /// Streams the map into `out`: nothing is built in memory but postcard's encoding of
    /// one pair at a time.
    fn write_snapshot(&self, out: &mut dyn Write) -> std::io::Result<()> {
        postcard::to_io(self, out).map(drop).map_err(|error| std::io::Error::other(format!("serializing the snapshot image: {error}")))
    }

    /// Takes an O(1) copy of the map now (nodes are shared until written); serializes it on
    /// the caller's thread.
    fn snapshot_job(&self) -> SnapshotWrite {
        let copy = self.clone();
        Box::new(move |out| copy.write_snapshot(out))
    }

    /// Reads the image pair by pair (postcard's encoding of this struct, decoded by hand so
    /// that it streams) into a new map, then swaps it in: a bad image leaves the state as it
    /// was.
    fn restore(&mut self, image: &mut dyn Read) -> Result<(), String> {
        let applied_index = LogIndex(read_varint(image)?);
        let count = read_varint(image)?;
        let mut data = imbl::OrdMap::new();
        let mut last: Option<Key> = None;
        for _ in 0..count {
            let key = String::from_utf8(read_bytes(image)?).map_err(|_| "corrupt snapshot image: a key is not UTF-8".to_string())?;
            let key = Key::from(key);
            if last.as_ref().is_some_and(|last| *last >= key) {
                return Err("corrupt snapshot image: keys out of order".into());
            }
            let value = value_from(read_bytes(image)?);
            last = Some(key.clone());
            data.insert(key, value);
        }
        let mut rest = [0u8; 1];
        if image.read(&mut rest).map_err(corrupt)? != 0 {
            return Err("corrupt snapshot image: bytes after the last pair".into());
        }
        *self = KvStore { applied_index, data };
        Ok(())
    }
}

fn corrupt(error: std::io::Error) -> String {
    format!("corrupt snapshot image: {error}")
}

/// A postcard varint: 7 bits a byte, least significant first, at most 10 bytes.
fn read_varint(image: &mut dyn Read) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let mut byte = [0u8; 1];
        image.read_exact(&mut byte).map_err(corrupt)?;
        value |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("corrupt snapshot image: a varint runs over 64 bits".into())
}

/// A length-prefixed byte string. Read through `take`, so a corrupt length allocates only
/// as much as the image holds.
fn read_bytes(image: &mut dyn Read) -> Result<Vec<u8>, String> {
    let len = read_varint(image)?;
    let mut bytes = Vec::new();
    image.take(len).read_to_end(&mut bytes).map_err(corrupt)?;
    if bytes.len() as u64 != len {
        return Err("corrupt snapshot image: cut short".into());
    }
    Ok(bytes)
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

    fn image_of(store: &KvStore) -> Vec<u8> {
        let mut image = Vec::new();
        store.write_snapshot(&mut image).unwrap();
        image
    }

    fn restore(store: &mut KvStore, mut image: &[u8]) -> Result<(), String> {
        store.restore(&mut image)
    }

    #[test]
    fn snapshot_restore_round_trip_is_deterministic() {
        let mut store = KvStore::new();
        for (index, key) in ["b", "a", "c"].iter().enumerate() {
            store.apply(&entry(index as u64 + 1, &Command::Set { key: key.to_string(), value: key.as_bytes().to_vec() }));
        }
        let image = image_of(&store);
        let mut restored = KvStore::new();
        restore(&mut restored, &image).unwrap();
        assert_eq!(restored, store);
        assert_eq!(image_of(&restored), image, "equal states give equal bytes");
        for bad in [&b"garbage"[..], &image[..image.len() - 1], &[image.as_slice(), b"x"].concat()] {
            assert!(restore(&mut restored, bad).is_err());
            assert_eq!(restored, store, "a failed restore leaves the state untouched");
        }
        let job = store.snapshot_job();
        store.apply(&entry(4, &Command::Set { key: "later".into(), value: b"x".to_vec() }));
        let mut written = Vec::new();
        job(&mut written).unwrap();
        assert_eq!(written, image, "a snapshot job captures the state when it was made");
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
        let image = image_of(&store);
        assert_eq!(image, postcard::to_allocvec(&plain).unwrap());
        assert_eq!(postcard::from_bytes::<PlainImage>(&image).unwrap(), plain);
        let mut restored = KvStore::new();
        restore(&mut restored, &postcard::to_allocvec(&plain).unwrap()).unwrap();
        assert_eq!(restored, store, "the hand-written reader reads postcard's encoding");
        assert_eq!(store.get(&long_key), Some(&long_value[..]));
        assert_eq!(store.iter().map(|(key, _)| key.to_string()).collect::<Vec<_>>(), plain.data.keys().cloned().collect::<Vec<_>>());
    }
}
