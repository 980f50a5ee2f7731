//! What a leader knows about each follower (Figure 2 `nextIndex[]`, `matchIndex[]`) and how
//! it paces replication to it.

use crate::types::{LogIndex, SnapshotMeta};
use std::collections::VecDeque;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// We don't know where the follower's log matches: one AppendEntries at a time, walking
    /// `next_index` back with the conflict hint.
    Probe,
    /// The follower matches; AppendEntries are pipelined up to the in-flight limit.
    Replicate,
    /// The follower is behind our compacted prefix: a snapshot is streaming, chunk by chunk.
    /// The follower last asked for `acked_offset`; chunks up to `sent_offset` are on their
    /// way (at most `snapshot_window_bytes_max` beyond it).
    Snapshot { meta: SnapshotMeta, acked_offset: u64, sent_offset: u64 },
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub next_index: LogIndex,
    pub match_index: LogIndex,
    pub state: ReplicationState,
    /// In Probe: a probe is outstanding, wait for its answer or the next heartbeat.
    pub probe_sent: bool,
    /// In Replicate: last index of each un-acknowledged AppendEntries, oldest first.
    pub inflight: VecDeque<LogIndex>,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// In Snapshot: a chunk was answered since the last heartbeat; if not, the window is resent.
    pub snapshot_chunk_answered: bool,
    /// Highest ReadIndex round this follower acknowledged in the current term.
    pub read_round_acked: u64,
    /// Highest log index any message we sent it names (last entry, or the snapshot's last
    /// included index): an answer naming a higher one is refused (`validate.rs`).
    pub sent_index_max: LogIndex,
}

impl Progress {
    /// §5.3: "When a leader first comes to power, it initializes all nextIndex values to the
    /// index just after the last one in its log."
    pub fn new(next_index: LogIndex) -> Progress {
        Progress {
            next_index,
            match_index: LogIndex::ZERO,
            state: ReplicationState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: true,
            snapshot_chunk_answered: true,
            read_round_acked: 0,
            sent_index_max: LogIndex::ZERO,
        }
    }

    pub fn become_probe(&mut self) {
        self.state = ReplicationState::Probe;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.next_index = self.match_index.next();
        self.inflight.clear();
    }

    /// Records an acknowledged prefix. Returns true if `match_index` moved.
    pub fn record_match(&mut self, match_index: LogIndex) -> bool {
        while self.inflight.front().is_some_and(|last| *last <= match_index) {
            self.inflight.pop_front();
        }
        if match_index <= self.match_index {
            return false;
        }
        self.match_index = match_index;
        self.next_index = self.next_index.max(match_index.next());
        true
    }

    /// May another AppendEntries carrying entries go out now?
    pub fn can_send_entries(&self, inflight_messages_max: usize) -> bool {
        match self.state {
            ReplicationState::Probe => !self.probe_sent,
            ReplicationState::Replicate => self.inflight.len() < inflight_messages_max,
            ReplicationState::Snapshot { .. } => false,
        }
    }

    /// Any message naming `index` went out.
    pub fn sent_up_to(&mut self, index: LogIndex) {
        self.sent_index_max = self.sent_index_max.max(index);
    }

    /// Bookkeeping after sending entries up to `last_index`.
    pub fn sent_entries(&mut self, last_index: LogIndex) {
        match self.state {
            ReplicationState::Probe => self.probe_sent = true,
            ReplicationState::Replicate => {
                self.next_index = last_index.next();
                self.inflight.push_back(last_index);
            }
            ReplicationState::Snapshot { .. } => unreachable!("entries are not sent while a snapshot streams"),
        }
    }
}
