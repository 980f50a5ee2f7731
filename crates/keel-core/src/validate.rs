//! Every peer message is checked here before the core acts on it.
//!
//! Raft assumes peers that follow the protocol (it does not survive lying peers), but a
//! node must survive a broken or misdirected one: no input from the network may reach an
//! assertion. The assertions in `log.rs` and `progress.rs` guard against *our* mistakes;
//! the checks below keep a peer's out of them. A message that fails a check is refused with
//! a `StepError` and changes nothing; the driver logs and counts it.
//!
//! Two kinds of check:
//! - **shape** (`check_shape`): what any message from a correct peer looks like, whatever
//!   our state: entries that run on from `prev_log_index + 1` with terms that never
//!   decrease and never exceed the sender's term, snapshot chunks that fit inside the image
//!   they announce, no term at which `next()` overflows.
//! - **against what we sent** (`check_answer`): a follower's answer to a leader can only
//!   name indexes and ReadIndex rounds the leader sent it in this term.
//! - **against what we committed** (`check_follows_committed`): a leader's entries and
//!   snapshots past our commit index are never older than our last committed entry.
//!
//! The shape check runs before anything changes. The other two, and the check of a
//! snapshot's checksum, run after the term check, which may already have moved this node
//! to the message's (higher) term.

use crate::message::{AppendResult, Message, MessageBody};
use crate::raft::RaftCore;
use crate::ready::StepError;
use crate::types::{Entry, LogIndex, Role, SnapshotMeta, Term};

impl RaftCore {
    /// Addressing and shape; run before the term check, so a bad message changes nothing.
    pub(crate) fn check_message(&self, message: &Message) -> Result<(), StepError> {
        if message.to != self.id {
            return Err(StepError::UnknownNode(message.to));
        }
        if message.from == self.id || !self.may_hear_from(message) {
            return Err(StepError::UnknownNode(message.from));
        }
        self.check_shape(message).map_err(|reason| invalid(message, reason))?;
        if let MessageBody::InstallSnapshot { meta, .. } = &message.body {
            if meta.data_bytes > self.config.snapshot_bytes_max {
                return Err(StepError::SnapshotTooLarge { from: message.from, data_bytes: meta.data_bytes, bytes_max: self.config.snapshot_bytes_max });
            }
        }
        Ok(())
    }

    /// Who may send to us: a member of our configuration or of the committed one (a voter
    /// being removed takes part until C_new commits); or any node, when the message is
    /// a leader's (AppendEntries, InstallSnapshot, TimeoutNow): a node whose log lags behind
    /// a membership change does not know the leader a later configuration made, and only that
    /// leader's log can tell it (its term is checked like any other). A node that knows no
    /// configuration yet (one waiting to be added) hears from anyone. A stranger's vote
    /// requests and answers are refused: a removed node cannot disrupt (thesis §4.2.3).
    fn may_hear_from(&self, message: &Message) -> bool {
        let membership = self.membership();
        let committed = self.membership_at(self.log.commit_index());
        membership.voters.is_empty() || membership.is_member(message.from) || committed.is_member(message.from) || message.body.is_from_leader()
    }

    fn check_shape(&self, message: &Message) -> Result<(), String> {
        let term = message.term;
        if term > Term::MAX {
            return Err(format!("term {term} beyond the largest any cluster reaches ({})", Term::MAX));
        }
        match &message.body {
            MessageBody::RequestVote { last_log_index, last_log_term, .. } => check_position(*last_log_index, *last_log_term, term, "last log"),
            MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, .. } => check_entries(*prev_log_index, *prev_log_term, entries, term),
            MessageBody::InstallSnapshot { meta, membership, offset, data, done, .. } => {
                check_configuration(membership, meta.last_included_index)?;
                check_chunk(meta, *offset, data.len(), *done, term)
            }
            MessageBody::InstallSnapshotResponse { meta, next_offset, .. } => {
                check_snapshot_meta(meta, term)?;
                ensure(*next_offset <= meta.data_bytes, || format!("next offset {next_offset} beyond the image's {} bytes", meta.data_bytes))
            }
            MessageBody::AppendEntriesResponse { result: AppendResult::Conflict { rejected_index, conflict_term, conflict_index }, .. } => {
                ensure(conflict_index <= rejected_index, || format!("conflict index {conflict_index} beyond the rejected index {rejected_index}"))?;
                ensure(conflict_term.is_none_or(|conflict_term| conflict_term <= term), || format!("conflict term {conflict_term:?} beyond the message's term {term}"))
            }
            MessageBody::TimeoutNow => ensure(term > Term(0), || "TimeoutNow in term 0, before any election".into()),
            MessageBody::AppendEntriesResponse { result: AppendResult::Success { .. }, .. } | MessageBody::RequestVoteResponse { .. } => Ok(()),
        }
    }

    /// A follower's answer to us as leader of the message's term (the term check has run):
    /// it can only acknowledge what we sent it.
    pub(crate) fn check_answer(&self, message: &Message) -> Result<(), StepError> {
        if self.role != Role::Leader || message.term != self.current_term {
            return Ok(());
        }
        let (index, read_round) = match &message.body {
            MessageBody::AppendEntriesResponse { result: AppendResult::Success { match_index }, read_round } => (*match_index, *read_round),
            MessageBody::AppendEntriesResponse { result: AppendResult::Conflict { rejected_index, .. }, read_round } => (*rejected_index, *read_round),
            MessageBody::InstallSnapshotResponse { meta, read_round, .. } => (meta.last_included_index, *read_round),
            _ => return Ok(()),
        };
        let Some(progress) = self.progress.get(&message.from) else {
            return Err(StepError::UnknownNode(message.from)); // Not, or no longer, replicated to.
        };
        let sent_index_max = progress.sent_index_max;
        if index > sent_index_max {
            return Err(invalid(message, format!("answers for index {index}, but the highest index sent to it is {sent_index_max}")));
        }
        if read_round > self.reads.current_round() {
            return Err(invalid(message, format!("acknowledges ReadIndex round {read_round}, but the latest round is {}", self.reads.current_round())));
        }
        Ok(())
    }
}

impl RaftCore {
    /// A leader's message that reaches past our committed prefix: every leader holds that
    /// prefix (§5.4.3, Leader Completeness) and log terms never decrease, so what follows our
    /// last committed entry cannot be older than it. Refused before it reaches the log or
    /// the storage, where an older snapshot or entry would break the log's shape.
    pub(crate) fn check_follows_committed(&self, message: &Message) -> Result<(), StepError> {
        let commit_index = self.log.commit_index();
        let (index, term) = match &message.body {
            MessageBody::AppendEntries { entries, .. } => match entries.get(entries.partition_point(|entry| entry.index <= commit_index)) {
                Some(entry) => (entry.index, entry.term),
                None => return Ok(()),
            },
            MessageBody::InstallSnapshot { meta, .. } if meta.last_included_index > commit_index => (meta.last_included_index, meta.last_included_term),
            _ => return Ok(()),
        };
        let commit_term = self.log.term(commit_index).expect("the commit index is in the log or is the snapshot's last");
        if term < commit_term {
            return Err(invalid(message, format!("index {index} of term {term} would follow committed index {commit_index} of term {commit_term}")));
        }
        Ok(())
    }
}

fn invalid(message: &Message, reason: String) -> StepError {
    StepError::Invalid { from: message.from, message: message.body.name(), reason }
}

fn ensure(condition: bool, reason: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(reason()) }
}

/// A log position `(index, term)` a peer claims: index 0 is the only one of term 0, and no
/// entry is newer than the term of the message that mentions it.
fn check_position(index: LogIndex, entry_term: Term, term: Term, what: &str) -> Result<(), String> {
    ensure(index <= LogIndex::MAX, || format!("{what} index {index} beyond the largest any log reaches ({})", LogIndex::MAX))?;
    ensure((index == LogIndex::ZERO) == (entry_term == Term(0)), || format!("{what} index {index} with term {entry_term}"))?;
    ensure(entry_term <= term, || format!("{what} term {entry_term} beyond the message's term {term}"))
}

/// §5.3: the entries follow `prev_log_index` one by one, from a leader of term ≥ 1, and
/// their terms never decrease, start at or after `prev_log_term`, and end at or before the
/// leader's term.
fn check_entries(prev_log_index: LogIndex, prev_log_term: Term, entries: &[Entry], term: Term) -> Result<(), String> {
    ensure(term > Term(0), || "AppendEntries in term 0, before any election".into())?;
    check_position(prev_log_index, prev_log_term, term, "previous log")?;
    let fits = prev_log_index.0.checked_add(entries.len() as u64).is_some_and(|last| last <= LogIndex::MAX.0);
    ensure(fits, || format!("{} entries after index {prev_log_index} pass the largest index any log reaches", entries.len()))?;
    let mut previous = (prev_log_index, prev_log_term);
    for entry in entries {
        ensure(entry.index == previous.0.next(), || format!("entry {} does not follow index {}", entry.index, previous.0))?;
        ensure(entry.term >= previous.1 && entry.term > Term(0), || format!("entry {} has term {} after term {}", entry.index, entry.term, previous.1))?;
        if let crate::types::EntryKind::Config(membership) = &entry.kind {
            check_configuration(membership, entry.index)?;
        }
        previous = (entry.index, entry.term);
    }
    ensure(previous.1 <= term, || format!("entry {} of term {} beyond the message's term {term}", previous.0, previous.1))
}

/// A configuration a leader sends (an entry, or a snapshot's): well formed, with voters.
fn check_configuration(membership: &crate::membership::Membership, index: LogIndex) -> Result<(), String> {
    membership.check().map_err(|problem| format!("configuration at {index}: {problem}"))?;
    ensure(!membership.voters.is_empty(), || format!("configuration at {index} has no voter"))
}

fn check_snapshot_meta(meta: &SnapshotMeta, term: Term) -> Result<(), String> {
    ensure(meta.last_included_index > LogIndex::ZERO, || "snapshot of index 0".into())?;
    check_position(meta.last_included_index, meta.last_included_term, term, "snapshot's last included")
}

/// §7: a chunk lies inside the image its metadata announces, and the last one ends it.
fn check_chunk(meta: &SnapshotMeta, offset: u64, chunk_bytes: usize, done: bool, term: Term) -> Result<(), String> {
    check_snapshot_meta(meta, term)?;
    let end = offset.checked_add(chunk_bytes as u64).filter(|end| *end <= meta.data_bytes);
    let Some(end) = end else { return Err(format!("chunk of {chunk_bytes} bytes at offset {offset} overruns the image's {} bytes", meta.data_bytes)) };
    ensure(done == (end == meta.data_bytes), || format!("chunk ending at {end} of {} bytes says done = {done}", meta.data_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;
    use crate::config::Config;
    use crate::raft::RestoredState;
    use crate::types::EntryKind;

    fn follower() -> RaftCore {
        RaftCore::new(Config::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)]), RestoredState::default())
    }

    fn from_2(term: u64, body: MessageBody) -> Message {
        Message { from: NodeId(2), to: NodeId(1), term: Term(term), body }
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry { term: Term(term), index: LogIndex(index), kind: EntryKind::Noop }
    }

    fn append(prev: (u64, u64), entries: Vec<Entry>) -> MessageBody {
        MessageBody::AppendEntries { prev_log_index: LogIndex(prev.0), prev_log_term: Term(prev.1), entries, leader_commit: LogIndex(0), read_round: 0 }
    }

    fn refused(core: &mut RaftCore, message: Message) -> String {
        match core.step(message) {
            Err(StepError::Invalid { reason, .. }) => reason,
            other => panic!("expected an Invalid refusal, got {other:?}"),
        }
    }

    #[test]
    fn entries_must_run_on_from_prev_log_index() {
        let mut core = follower();
        let reason = refused(&mut core, from_2(2, append((0, 0), vec![entry(1, 1), entry(3, 1)])));
        assert_eq!(reason, "entry 3 does not follow index 1");
        let reason = refused(&mut core, from_2(2, append((0, 0), vec![entry(2, 1)])));
        assert_eq!(reason, "entry 2 does not follow index 0");
        assert_eq!(core.status().last_log_index, LogIndex(0), "nothing appended");
        assert_eq!(core.current_term(), Term(0), "nothing changed, not even the term");
    }

    #[test]
    fn entry_terms_never_decrease_nor_pass_the_message_term() {
        let mut core = follower();
        assert_eq!(refused(&mut core, from_2(3, append((0, 0), vec![entry(1, 2), entry(2, 1)]))), "entry 2 has term 1 after term 2");
        assert_eq!(refused(&mut core, from_2(3, append((0, 0), vec![entry(1, 4)]))), "entry 1 of term 4 beyond the message's term 3");
        assert_eq!(refused(&mut core, from_2(3, append((1, 3), vec![entry(2, 2)]))), "entry 2 has term 2 after term 3");
        assert_eq!(refused(&mut core, from_2(3, append((0, 1), vec![]))), "previous log index 0 with term 1");
    }

    #[test]
    fn indexes_that_would_overflow_are_refused() {
        let mut core = follower();
        let max = LogIndex::MAX.0;
        let reason = refused(&mut core, from_2(2, append((max, 1), vec![entry(max + 1, 1)])));
        assert!(reason.contains("pass the largest index"), "{reason}");
        let reason = refused(&mut core, from_2(2, append((u64::MAX, 1), vec![])));
        assert!(reason.contains("beyond the largest any log reaches"), "{reason}");
        let reason = refused(&mut core, from_2(Term::MAX.0 + 1, append((0, 0), vec![])));
        assert!(reason.contains("beyond the largest any cluster reaches"), "{reason}");
        assert!(core.step(from_2(Term::MAX.0, append((0, 0), vec![]))).is_ok(), "the largest term itself is accepted");
    }

    #[test]
    fn snapshot_chunks_must_fit_their_image() {
        let mut core = follower();
        let meta = SnapshotMeta { last_included_index: LogIndex(5), last_included_term: Term(1), data_bytes: 10, data_crc32c: 0 };
        let membership = || crate::membership::Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
        let chunk = |offset: u64, data: Vec<u8>, done: bool| MessageBody::InstallSnapshot { meta, membership: membership(), offset, data, done, read_round: 0 };
        assert!(refused(&mut core, from_2(1, chunk(8, vec![0; 4], true))).contains("overruns"));
        assert!(refused(&mut core, from_2(1, chunk(u64::MAX, vec![0; 4], true))).contains("overruns"));
        assert!(refused(&mut core, from_2(1, chunk(0, vec![0; 10], false))).contains("says done = false"));
        assert!(refused(&mut core, from_2(1, chunk(0, vec![0; 4], true))).contains("says done = true"));
        let future = SnapshotMeta { last_included_term: Term(7), ..meta };
        let body = MessageBody::InstallSnapshot { meta: future, membership: membership(), offset: 0, data: vec![0; 10], done: true, read_round: 0 };
        assert!(refused(&mut core, from_2(1, body)).contains("beyond the message's term"));
    }

    #[test]
    fn a_snapshot_over_the_size_limit_is_refused() {
        let mut core = follower();
        let meta = SnapshotMeta { last_included_index: LogIndex(5), last_included_term: Term(1), data_bytes: (1 << 30) + 1, data_crc32c: 0 };
        let membership = crate::membership::Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
        let body = MessageBody::InstallSnapshot { meta, membership, offset: 0, data: vec![0; 4], done: false, read_round: 0 };
        assert_eq!(core.step(from_2(1, body)), Err(StepError::SnapshotTooLarge { from: NodeId(2), data_bytes: (1 << 30) + 1, bytes_max: 1 << 30 }));
    }

    /// Regression (found by `peer_fuzz.rs`): a made-up snapshot past the commit index with a
    /// term older than the committed log's passed the core and tripped the storage's
    /// "snapshot term goes backwards" assertion. Entries as old are refused the same way.
    #[test]
    fn nothing_older_than_the_committed_log_may_follow_it() {
        let entries = vec![entry(1, 1), entry(2, 2)];
        let hard_state = crate::types::HardState { current_term: Term(2), voted_for: None, commit_index: LogIndex(2) };
        let mut core = RaftCore::new(Config::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)]), RestoredState { hard_state, snapshot: None, entries });
        let meta = crate::types::SnapshotMeta::of_image(LogIndex(5), Term(1), &[1, 2, 3]);
        let membership = crate::membership::Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
        let body = MessageBody::InstallSnapshot { meta, membership, offset: 0, data: vec![1, 2, 3], done: true, read_round: 0 };
        assert_eq!(refused(&mut core, from_2(2, body)), "index 5 of term 1 would follow committed index 2 of term 2");
        let body = append((0, 0), vec![entry(1, 1), entry(2, 1), entry(3, 1)]);
        assert_eq!(refused(&mut core, from_2(2, body)), "index 3 of term 1 would follow committed index 2 of term 2");
        assert_eq!((core.status().last_log_index, core.status().snapshot_index), (LogIndex(2), LogIndex(0)), "nothing installed or appended");
        assert!(core.step(from_2(2, append((0, 0), vec![entry(1, 1), entry(2, 2), entry(3, 2)]))).is_ok(), "the genuine entries are taken");
    }

    /// A stranger's vote requests are refused (a removed node cannot disrupt, thesis
    /// §4.2.3); its AppendEntries are not (it may lead a configuration we have not caught up
    /// with); a message for another node is.
    #[test]
    fn strangers_and_misaddressed_messages_are_refused() {
        let mut core = follower();
        let stranger = |body| Message { from: NodeId(9), to: NodeId(1), term: Term(1), body };
        let vote = MessageBody::RequestVote { pre_vote: false, last_log_index: LogIndex(0), last_log_term: Term(0), leadership_transfer: false };
        assert_eq!(core.step(stranger(vote)), Err(StepError::UnknownNode(NodeId(9))));
        assert_eq!(core.step(stranger(append((0, 0), vec![]))), Ok(()));
        assert_eq!(core.leader_id(), Some(NodeId(9)));
        let elsewhere = Message { from: NodeId(2), to: NodeId(3), term: Term(1), body: append((0, 0), vec![]) };
        assert_eq!(core.step(elsewhere), Err(StepError::UnknownNode(NodeId(3))));
    }
}
