//! ReadIndex (thesis §6.4): linearizable reads without writing to the log.
//!
//! 1. A leader that has not yet committed an entry of its own term does not know the
//!    latest commit index; reads wait until its no-op commits.
//! 2. The read's index is the commit index when it arrives.
//! 3. The leader starts a new heartbeat round; once a majority (counting itself) has
//!    answered a message of that round, nobody else was leader when the read arrived.
//! 4. The driver serves the read once its state machine has applied up to the read index.
//!
//! Every read that arrives before a round starts joins that round, so one heartbeat round
//! confirms a whole batch. One round is in flight at a time: reads that arrive meanwhile
//! join the next, which starts when this one is confirmed. Under load that makes the
//! batches as large as a round trip allows instead of one round (two messages, two
//! answers) per driver turn.

use crate::raft::RaftCore;
use crate::ready::{ReadError, ReadState};
use crate::types::LogIndex;

#[derive(Debug, Default)]
pub struct ReadQueue {
    /// Number of the latest heartbeat round; every leader message carries it.
    round: u64,
    /// Reads waiting for the leader's first commit in its term.
    waiting_for_commit: Vec<u64>,
    /// Reads waiting for a round to start (step 3).
    unassigned: Vec<(u64, LogIndex)>,
    /// Reads waiting for round `.2` to be acknowledged by a majority.
    in_round: Vec<(u64, LogIndex, u64)>,
    ready: Vec<ReadState>,
}

impl ReadQueue {
    pub fn current_round(&self) -> u64 {
        self.round
    }

    /// Reads accepted and not yet answered.
    pub fn pending_count(&self) -> usize {
        self.waiting_for_commit.len() + self.unassigned.len() + self.in_round.len()
    }

    pub fn has_work(&self) -> bool {
        self.may_start_round() || !self.ready.is_empty()
    }

    fn may_start_round(&self) -> bool {
        !self.unassigned.is_empty() && self.in_round.is_empty()
    }

    pub fn take_ready(&mut self) -> Vec<ReadState> {
        std::mem::take(&mut self.ready)
    }

    pub fn fail_all(&mut self, error: ReadError) {
        let ids = self.waiting_for_commit.drain(..).chain(self.unassigned.drain(..).map(|(id, _)| id)).chain(self.in_round.drain(..).map(|(id, _, _)| id));
        let failed: Vec<ReadState> = ids.map(|request_id| ReadState { request_id, result: Err(error) }).collect();
        self.ready.extend(failed);
    }
}

impl RaftCore {
    pub(crate) fn request_read(&mut self, request_id: u64) {
        if !self.committed_in_current_term() {
            self.reads.waiting_for_commit.push(request_id);
        } else {
            let read_index = self.log.commit_index();
            self.reads.unassigned.push((request_id, read_index));
        }
    }

    /// Step 1 complete: the no-op of our term committed.
    pub(crate) fn on_first_commit_in_term(&mut self) {
        let read_index = self.log.commit_index();
        let waiting = std::mem::take(&mut self.reads.waiting_for_commit);
        self.reads.unassigned.extend(waiting.into_iter().map(|id| (id, read_index)));
    }

    /// Step 3: start one round for every read that arrived since the last one.
    pub(crate) fn flush_read_round(&mut self) {
        if !self.reads.may_start_round() {
            return;
        }
        self.reads.round += 1;
        let round = self.reads.round;
        let batch = std::mem::take(&mut self.reads.unassigned);
        self.reads.in_round.extend(batch.into_iter().map(|(id, index)| (id, index, round)));
        if self.membership().has_majority(|id| id == self.id) {
            return self.advance_reads(); // We are a majority alone.
        }
        self.broadcast(crate::replication::Trigger::ReadRound);
    }

    /// Releases every read whose round a majority has acknowledged.
    pub(crate) fn advance_reads(&mut self) {
        if self.reads.in_round.is_empty() {
            return;
        }
        // The leader acknowledges its own rounds; in a joint configuration, both majorities
        // must have acknowledged (thesis §4.3).
        let acked = |id: crate::types::NodeId| if id == self.id { self.reads.round } else { self.progress.get(&id).map_or(0, |progress| progress.read_round_acked) };
        let confirmed_round = self.membership().quorum_value(acked);
        let (confirmed, waiting): (Vec<_>, Vec<_>) = self.reads.in_round.drain(..).partition(|(_, _, round)| *round <= confirmed_round);
        self.reads.in_round = waiting;
        let states = confirmed.into_iter().map(|(request_id, index, _)| ReadState { request_id, result: Ok(index) });
        self.reads.ready.extend(states);
    }
}
