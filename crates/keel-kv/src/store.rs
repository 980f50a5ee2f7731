//! `KvStore`: a sorted map applied from the Raft log.

use crate::command::{Command, CommandResult};
use keel_core::{Entry, EntryKind, LogIndex, StateMachine};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvStore {
    applied_index: LogIndex,
    data: BTreeMap<String, Vec<u8>>,
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    /// Reads bypass the log; callers decide how fresh they must be (ReadIndex or stale).
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.data.get(key).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        self.data.iter()
    }

    fn execute(&mut self, command: Command) -> CommandResult {
        match command {
            Command::Set { key, value } => {
                self.data.insert(key, value);
                CommandResult::Set
            }
            Command::Delete { key } => CommandResult::Deleted { existed: self.data.remove(&key).is_some() },
            Command::Cas { key, expected, value } => {
                let current = self.data.get(&key).cloned();
                if current != expected {
                    return CommandResult::Cas { succeeded: false, current };
                }
                match value {
                    Some(value) => self.data.insert(key, value),
                    None => self.data.remove(&key),
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
            EntryKind::Noop => CommandResult::Noop,
            EntryKind::Command(bytes) => match Command::decode(bytes) {
                Ok(command) => self.execute(command),
                Err(error) => CommandResult::Invalid(error),
            },
        }
    }

    fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serializing to a Vec cannot fail")
    }

    /// Copies the map now (the only pause writes see); serializes it on the caller's thread.
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
}
