//! Log replication (§5.3) and the commit rule (§5.4.2).
//!
//! One function, `send_append`, builds every AppendEntries a leader sends, whatever caused
//! it: a heartbeat, a new proposal, or a follower's answer asking for more.

use crate::message::{AppendResult, MessageBody};
use crate::progress::{Progress, ReplicationState};
use crate::raft::RaftCore;
use crate::types::{Entry, LogIndex, NodeId};

/// Why an AppendEntries is being considered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// New entries or an answer from the follower: send entries if the window allows.
    Replicate,
    /// The heartbeat timer: always send something, re-probe, retransmit what looks lost.
    Heartbeat,
    /// A ReadIndex round: always send something, so the follower's answer confirms us.
    ReadRound,
}

impl RaftCore {
    /// Sends what the entries appended since the last `ready` to every follower.
    pub(crate) fn flush_broadcasts(&mut self) {
        if self.broadcast_needed {
            self.broadcast_needed = false;
            for peer in self.peers() {
                self.send_append(peer, Trigger::Replicate);
            }
        }
        self.flush_read_round();
    }

    pub(crate) fn broadcast(&mut self, trigger: Trigger) {
        for peer in self.peers() {
            self.send_append(peer, trigger);
        }
    }

    /// The single AppendEntries builder (§5.3). Falls back to InstallSnapshot when the
    /// entries the follower needs were compacted away (§7).
    pub(crate) fn send_append(&mut self, peer: NodeId, trigger: Trigger) {
        let inflight_max = self.config.inflight_messages_max;
        let last_index = self.log.last_index();
        // A peer the configuration no longer holds (removed a moment ago) gets nothing.
        let Some(progress) = self.progress.get_mut(&peer) else { return };
        if trigger == Trigger::Heartbeat {
            match progress.state {
                // Re-probe: the last probe or its answer may have been lost.
                ReplicationState::Probe => progress.probe_sent = false,
                ReplicationState::Snapshot { .. } => return self.snapshot_heartbeat(peer),
                ReplicationState::Replicate => {}
            }
        }
        if let ReplicationState::Snapshot { .. } = progress.state {
            return; // The chunk stream paces itself, and carries the read round too.
        }
        let prev_log_index = progress.next_index.prev();
        if self.log.term(prev_log_index).is_none() {
            return self.start_snapshot(peer);
        }
        let can_send = progress.can_send_entries(inflight_max);
        let entries = if can_send && progress.next_index <= last_index {
            self.log.slice(progress.next_index, last_index, self.config.append_entries_max, self.config.append_bytes_max)
        } else {
            Vec::new()
        };
        if entries.is_empty() && trigger == Trigger::Replicate && !matches!(progress.state, ReplicationState::Probe if can_send) {
            return;
        }
        let progress = self.progress.get_mut(&peer).expect("leader tracks every peer");
        if let Some(last) = entries.last() {
            progress.sent_entries(last.index);
        } else if progress.state == ReplicationState::Probe {
            progress.probe_sent = true;
        }
        // A heartbeat carries the log check at `next_index - 1`: a follower that has it all
        // answers with its match (so a lost acknowledgement is repaired and it learns the
        // commit index); one that lost entries in flight rejects, and we probe back.
        self.send_append_message(peer, prev_log_index, entries);
    }

    fn send_append_message(&mut self, peer: NodeId, prev_log_index: LogIndex, entries: Vec<Entry>) {
        let prev_log_term = self.log.term(prev_log_index).expect("caller checked prev_log_index is not compacted");
        let last_index = entries.last().map_or(prev_log_index, |entry| entry.index);
        self.progress.get_mut(&peer).expect("leader tracks every peer").sent_up_to(last_index);
        let body = MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.log.commit_index(),
            read_round: self.reads.current_round(),
        };
        self.send(peer, body);
    }

    /// AppendEntries receiver (Figure 2, steps 1–5; step 1 was the term check).
    pub(crate) fn handle_append_entries(&mut self, from: NodeId, prev_log_index: LogIndex, prev_log_term: crate::types::Term, entries: &[Entry], leader_commit: LogIndex, read_round: u64) {
        let commit_index = self.log.commit_index();
        let result = if prev_log_index < commit_index {
            // Our committed prefix matches the leader's log (§5.4.3, Log Matching + Leader
            // Completeness); only the part after it needs checking. This also covers a
            // prev_log_index inside our snapshot, whose term we no longer know.
            let skip = (commit_index.0 - prev_log_index.0) as usize;
            if entries.len() <= skip {
                Ok(commit_index)
            } else {
                let term = self.log.term(commit_index).expect("commit index is in the log or is the snapshot's last");
                self.log.try_append(commit_index, term, &entries[skip..])
            }
        } else {
            self.log.try_append(prev_log_index, prev_log_term, entries)
        };
        let result = match result {
            Ok(last_new_index) => {
                // Step 5: commitIndex = min(leaderCommit, index of last new entry).
                self.log.commit_to(leader_commit.min(last_new_index).max(commit_index));
                AppendResult::Success { match_index: last_new_index }
            }
            Err(hint) => AppendResult::Conflict { rejected_index: prev_log_index, conflict_term: hint.conflict_term, conflict_index: hint.conflict_index },
        };
        self.send(from, MessageBody::AppendEntriesResponse { result, read_round });
    }

    pub(crate) fn handle_append_response(&mut self, from: NodeId, result: AppendResult, read_round: u64) {
        self.note_follower_alive(from, read_round);
        match result {
            AppendResult::Success { match_index } => self.on_append_success(from, match_index),
            AppendResult::Conflict { rejected_index, conflict_term, conflict_index } => self.on_append_conflict(from, rejected_index, conflict_term, conflict_index),
        }
    }

    /// Any answer in our term shows the follower still accepts us: CheckQuorum and ReadIndex
    /// count it.
    pub(crate) fn note_follower_alive(&mut self, from: NodeId, read_round: u64) {
        let progress = self.progress.get_mut(&from).expect("leader tracks every peer");
        progress.recent_active = true;
        progress.read_round_acked = progress.read_round_acked.max(read_round);
        self.advance_reads();
    }

    fn on_append_success(&mut self, from: NodeId, match_index: LogIndex) {
        let progress = self.progress.get_mut(&from).expect("leader tracks every peer");
        let moved = progress.record_match(match_index);
        match progress.state {
            ReplicationState::Probe => progress.become_replicate(),
            ReplicationState::Snapshot { .. } => return,
            ReplicationState::Replicate => {}
        }
        if moved {
            self.maybe_commit();
            if self.role != crate::types::Role::Leader {
                return; // A leader the new configuration leaves out stepped down (§4.2.2).
            }
        }
        if !self.send_timeout_now_if_caught_up(from) {
            self.send_append(from, Trigger::Replicate);
        }
    }

    /// §5.3: "If AppendEntries fails because of log inconsistency: decrement nextIndex and
    /// retry", skipping a whole term at a time with the follower's hint.
    fn on_append_conflict(&mut self, from: NodeId, rejected_index: LogIndex, conflict_term: Option<crate::types::Term>, conflict_index: LogIndex) {
        let leader_hint = conflict_term.and_then(|term| self.log.last_index_of_term(term)).map(LogIndex::next);
        let progress = self.progress.get_mut(&from).expect("leader tracks every peer");
        let stale = match progress.state {
            ReplicationState::Replicate => rejected_index <= progress.match_index,
            ReplicationState::Probe => rejected_index != progress.next_index.prev(),
            ReplicationState::Snapshot { .. } => true,
        };
        if stale || rejected_index == LogIndex::ZERO {
            return;
        }
        let next_index = leader_hint.unwrap_or(conflict_index).min(rejected_index).max(progress.match_index.next());
        progress.become_probe();
        progress.next_index = next_index;
        self.send_append(from, Trigger::Replicate);
    }

    /// §5.4.2: commit the highest index stored on a majority, but only if that entry is
    /// from the current term; earlier entries are then committed with it (Log Matching).
    /// In a joint configuration, the majority of C_old and of C_new (thesis §4.3). Our own
    /// log counts only where we vote, and only as far as it is durable.
    pub(crate) fn maybe_commit(&mut self) {
        let match_of = |id: NodeId| {
            if id == self.id {
                return self.log.persisted_index().0;
            }
            self.progress.get(&id).map_or(0, |progress| progress.match_index.0)
        };
        let membership = self.membership();
        let candidate = LogIndex(if self.fault_commit_with_new_voters_only() {
            crate::membership::Membership::with_voters(membership.voters.iter().copied()).quorum_value(match_of)
        } else {
            membership.quorum_value(match_of)
        });
        if candidate <= self.log.commit_index() {
            return;
        }
        let current_term_entry = self.log.term(candidate) == Some(self.current_term);
        if current_term_entry || self.fault_commit_by_counting() {
            let had_committed_in_term = self.committed_in_current_term();
            self.release_uncommitted_bytes(self.log.commit_index(), candidate);
            // Followers learn the new commit index from the next AppendEntries or heartbeat.
            self.log.commit_to(candidate);
            if !had_committed_in_term {
                self.on_first_commit_in_term();
            }
            self.on_commit_advanced();
        }
    }

    /// The commands of our term in `(from, to]` are committed: they no longer count against
    /// `uncommitted_bytes_max` (entries of earlier terms never did).
    fn release_uncommitted_bytes(&mut self, from: LogIndex, to: LogIndex) {
        let mut index = from.next();
        while index <= to {
            if let Some(Entry { term, kind: crate::types::EntryKind::Command(data), .. }) = self.log.entry(index) {
                if *term == self.current_term {
                    self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(data.len());
                }
            }
            index = index.next();
        }
    }

    /// Enough followers are keeping up to form a majority on their own: each in Replicate,
    /// heard from in the current check-quorum round, and holding at least what our own disk
    /// held at the last tick (a follower that stopped answering falls behind within two
    /// ticks: our next sync moves that mark past it).
    pub(crate) fn followers_form_quorum(&self) -> bool {
        let mark = self.persisted_at_tick;
        let keeping_up = |progress: &Progress| progress.recent_active && progress.state == ReplicationState::Replicate && progress.match_index >= mark;
        self.membership().has_majority(|id| id != self.id && self.progress.get(&id).is_some_and(keeping_up))
    }

    pub(crate) fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.commit_index()) == Some(self.current_term)
    }

    #[cfg(feature = "fault-injection")]
    fn fault_commit_by_counting(&self) -> bool {
        self.faults.commit_previous_term_by_counting
    }

    #[cfg(not(feature = "fault-injection"))]
    fn fault_commit_by_counting(&self) -> bool {
        false
    }

    #[cfg(feature = "fault-injection")]
    fn fault_commit_with_new_voters_only(&self) -> bool {
        self.faults.commit_with_new_voters_only
    }

    #[cfg(not(feature = "fault-injection"))]
    fn fault_commit_with_new_voters_only(&self) -> bool {
        false
    }
}
