//! `RaftCore`: the whole consensus algorithm as a deterministic state machine.
//!
//! Inputs are `tick`, `step`, `propose`, `read_index`, `propose_membership`,
//! `transfer_leadership` and `compact`; output is a `Ready` (see `ready.rs` for the driver
//! contract). Role-specific rules live in `election.rs`, `replication.rs`,
//! `snapshot_transfer.rs`, `read_index.rs`, `reconfiguration.rs` (thesis ch. 4) and
//! `transfer.rs` (thesis §3.10); this file holds the state, the term checks every message
//! passes first, and the role transitions.

use crate::event::{Event, StepDownReason, VoteReason};
use crate::config::Config;
use crate::log::RaftLog;
use crate::message::{AppendResult, Message, MessageBody};
use crate::progress::Progress;
use crate::read_index::ReadQueue;
use crate::ready::{ProposeError, ReadError, Ready, SoftState, StepError};
use crate::rng::SplitMix64;
use crate::types::{Entry, EntryKind, HardState, LogIndex, NodeId, Role, Snapshot, SnapshotMeta, Term};
use std::collections::BTreeMap;

/// Switches that break one rule of the paper on purpose, to prove the simulator notices.
#[cfg(feature = "fault-injection")]
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Break §5.4.2: commit any entry a majority stores, whatever its term.
    pub commit_previous_term_by_counting: bool,
    /// Break §5.2: grant a vote to every up-to-date candidate, even after voting in this term.
    pub grant_two_votes_per_term: bool,
    /// Break thesis §4.3: in a joint configuration, commit with a majority of C_new alone.
    pub commit_with_new_voters_only: bool,
    /// Break thesis §4.1: a configuration takes effect once committed, not once appended.
    pub configuration_on_commit: bool,
}

/// What a node recovers from stable storage at start.
#[derive(Clone, Debug, Default)]
pub struct RestoredState {
    pub hard_state: HardState,
    /// The latest snapshot; the driver has already restored its state machine from it.
    pub snapshot: Option<Snapshot>,
    /// Log entries after the snapshot, consecutive.
    pub entries: Vec<Entry>,
}

/// What one Ready handed to the driver.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Handed {
    /// The log's last entry when the Ready was taken: every entry up to it has been handed
    /// out, so once a synced Ready completes they are all durable.
    log_end: (LogIndex, Term),
    synced: bool,
    snapshot: Option<SnapshotMeta>,
    applied_to: LogIndex,
}

/// A node's state in one read: for `status` endpoints and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader_id: Option<NodeId>,
    pub voted_for: Option<NodeId>,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub last_log_index: LogIndex,
    pub last_log_term: Term,
    pub snapshot_index: LogIndex,
}

pub struct RaftCore {
    pub(crate) config: Config,
    pub(crate) id: NodeId,
    // Figure 2, persistent state.
    pub(crate) current_term: Term,
    pub(crate) voted_for: Option<NodeId>,
    pub(crate) log: RaftLog,
    // Volatile state.
    pub(crate) role: Role,
    pub(crate) leader_id: Option<NodeId>,
    pub(crate) rng: SplitMix64,
    pub(crate) election_elapsed_ticks: u32,
    pub(crate) election_timeout_ticks: u32,
    pub(crate) heartbeat_elapsed_ticks: u32,
    /// Candidate and pre-candidate: who answered, and how.
    pub(crate) votes: BTreeMap<NodeId, bool>,
    /// Leader: one entry per follower (Figure 2 `nextIndex[]`, `matchIndex[]`).
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Our latest snapshot, kept to send to followers behind the compacted prefix (§7).
    pub(crate) snapshot: Option<Snapshot>,
    /// Follower: chunks of a snapshot being received.
    pub(crate) incoming_snapshot: Option<crate::snapshot_transfer::IncomingSnapshot>,
    /// Leader: InstallSnapshot chunks for the driver to fill and send.
    pub(crate) outgoing_chunks: Vec<crate::ready::OutgoingChunk>,
    /// Follower: chunks received in order, for the driver to write.
    pub(crate) received_chunks: Vec<crate::ready::ReceivedChunk>,
    /// Leader: bytes of the commands this leader appended that are not committed yet.
    pub(crate) uncommitted_bytes: usize,
    /// Leader: a leadership transfer in progress (thesis §3.10).
    pub(crate) transfer: Option<crate::transfer::Transfer>,
    pub(crate) reads: ReadQueue,
    /// Leader: entries were appended and followers should hear of them at the next `ready`.
    pub(crate) broadcast_needed: bool,
    /// Leader: a tick found entries of ours written but not synced; the next Ready syncs.
    pub(crate) sync_requested: bool,
    /// Leader: our persisted index at the last tick (see `followers_form_quorum`).
    pub(crate) persisted_at_tick: LogIndex,
    // Bookkeeping towards the driver.
    pub(crate) messages: Vec<Message>,
    /// Decisions for observers (`Ready::events`).
    pub(crate) events: Vec<crate::event::Event>,
    pub(crate) snapshot_to_install: Option<Snapshot>,
    /// Highest index handed out in `committed_entries`.
    pub(crate) applied_handed: LogIndex,
    /// Highest index the driver confirmed applied (`advance`).
    pub(crate) applied_index: LogIndex,
    pub(crate) hard_state_handed: HardState,
    pub(crate) soft_state_handed: SoftState,
    /// What the outstanding Ready asked the driver to do, so `advance` need not trust the
    /// (possibly emptied) bundle it gets back.
    pub(crate) outstanding: Option<Handed>,
    pub(crate) monotonic: crate::invariants::Monotonic,
    #[cfg(feature = "fault-injection")]
    pub faults: Faults,
}

impl RaftCore {
    pub fn new(config: Config, restored: RestoredState) -> RaftCore {
        if let Err(problem) = config.validate() {
            panic!("invalid Raft configuration: {problem}");
        }
        let snapshot_meta = restored.snapshot.as_ref().map(|snapshot| snapshot.meta).unwrap_or_default();
        // A snapshot without a configuration (written before keel had membership changes)
        // belongs to a cluster of bootstrap members.
        let snapshot_membership = restored.snapshot.as_ref().map(|snapshot| &snapshot.membership).filter(|membership| !membership.voters.is_empty());
        let base = snapshot_membership.map_or_else(|| config.bootstrap_membership(), Clone::clone);
        let log = RaftLog::restore(snapshot_meta, base, restored.entries, restored.hard_state.commit_index);
        let hard_state = HardState { commit_index: log.commit_index(), ..restored.hard_state };
        let soft_state = SoftState { role: Role::Follower, term: hard_state.current_term, leader_id: None };
        let mut core = RaftCore {
            id: config.id,
            rng: SplitMix64::new(config.random_seed),
            config,
            current_term: hard_state.current_term,
            voted_for: hard_state.voted_for,
            log,
            role: Role::Follower,
            leader_id: None,
            election_elapsed_ticks: 0,
            election_timeout_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            snapshot: restored.snapshot,
            incoming_snapshot: None,
            outgoing_chunks: Vec::new(),
            received_chunks: Vec::new(),
            uncommitted_bytes: 0,
            transfer: None,
            reads: ReadQueue::default(),
            broadcast_needed: false,
            sync_requested: false,
            persisted_at_tick: LogIndex::ZERO,
            messages: Vec::new(),
            events: Vec::new(),
            snapshot_to_install: None,
            applied_handed: snapshot_meta.last_included_index,
            applied_index: snapshot_meta.last_included_index,
            hard_state_handed: hard_state,
            soft_state_handed: soft_state,
            outstanding: None,
            monotonic: Default::default(),
            #[cfg(feature = "fault-injection")]
            faults: Faults::default(),
        };
        core.reset_election_timer();
        core
    }

    // ----- inputs -------------------------------------------------------------------------

    /// One unit of logical time.
    pub fn tick(&mut self) {
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
        // A deferred sync (see `Ready::may_defer_sync`) waits at most one tick.
        if self.role == Role::Leader {
            self.persisted_at_tick = self.log.persisted_index();
            self.sync_requested |= self.log.persisted_index() < self.log.last_index();
        }
        self.check_invariants();
    }

    /// A message from a peer. Term checks first (Figure 2, "All Servers"), then the role's
    /// handler.
    ///
    ///
    /// A message no correct peer would send is refused (`validate.rs`): checks of its shape
    /// run before anything changes; checks against our own state (an answer naming what we
    /// never sent, entries older than our committed log, a snapshot's checksum) run after
    /// the term check, which may have moved us to the message's term.
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        self.check_message(&message)?;
        let result = if self.check_term(&message) {
            self.check_answer(&message).and_then(|()| self.check_follows_committed(&message)).and_then(|()| self.dispatch(message))
        } else {
            Ok(())
        };
        self.check_invariants();
        result
    }

    /// Appends a client command if we lead; returns where it will sit in the log. It is
    /// committed when an entry with that index *and term* is applied.
    pub fn propose(&mut self, command: impl Into<bytes::Bytes>) -> Result<(LogIndex, Term), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader { leader_hint: self.leader_id });
        }
        if self.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        let command = command.into();
        let uncommitted = (self.log.last_index().0 - self.log.commit_index().0) as usize;
        if uncommitted >= self.config.uncommitted_entries_max || !self.uncommitted_bytes_allow(command.len()) {
            return Err(ProposeError::TooManyUncommitted);
        }
        self.uncommitted_bytes += command.len();
        let index = self.log.append_new(self.current_term, EntryKind::Command(command));
        self.broadcast_needed = true;
        self.check_invariants();
        Ok((index, self.current_term))
    }

    /// TIGER_STYLE limit on the leader's uncommitted bytes. One proposal is always let in
    /// while nothing of ours is uncommitted, so a command above the limit still moves.
    fn uncommitted_bytes_allow(&self, bytes: usize) -> bool {
        self.uncommitted_bytes == 0 || self.uncommitted_bytes.saturating_add(bytes) <= self.config.uncommitted_bytes_max
    }

    /// Asks for a linearizable read point (thesis §6.4). The answer comes in a later
    /// `Ready::read_states` under `request_id`.
    pub fn read_index(&mut self, request_id: u64) -> Result<(), ReadError> {
        if self.role != Role::Leader {
            return Err(ReadError::NotLeader { leader_hint: self.leader_id });
        }
        if self.reads.pending_count() >= self.config.read_requests_max {
            return Err(ReadError::TooManyPending);
        }
        self.request_read(request_id);
        Ok(())
    }

    /// The driver saved `snapshot`, an image of the state machine as of an applied index:
    /// the log up to it may go (§7). Its term must be the log's at that index.
    pub fn compact(&mut self, snapshot: Snapshot) {
        let meta = snapshot.meta;
        assert!(meta.last_included_index <= self.applied_index, "snapshot at {} beyond applied {}", meta.last_included_index, self.applied_index);
        if meta.last_included_index <= self.log.snapshot_meta().last_included_index {
            return;
        }
        assert_eq!(&snapshot.membership, self.log.configs().at(meta.last_included_index), "a snapshot carries the configuration in force at its index");
        self.log.compact_to(meta);
        self.snapshot = Some(snapshot);
        self.check_invariants();
    }

    // ----- reads of state -----------------------------------------------------------------

    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role,
            term: self.current_term,
            leader_id: self.leader_id,
            voted_for: self.voted_for,
            commit_index: self.log.commit_index(),
            applied_index: self.applied_index,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            snapshot_index: self.log.snapshot_meta().last_included_index,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn current_term(&self) -> Term {
        self.current_term
    }

    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader_id
    }

    /// The entry at `index`, if still in the log (not compacted).
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }

    pub fn first_log_index(&self) -> LogIndex {
        self.log.first_index()
    }

    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// The configuration in force on this node: the last one in its log (thesis §4.1).
    pub fn membership(&self) -> &crate::membership::Membership {
        if self.fault_configuration_on_commit() {
            return self.log.configs().at(self.log.commit_index());
        }
        self.log.configs().current()
    }

    pub fn commit_index(&self) -> LogIndex {
        self.log.commit_index()
    }

    /// Where the configuration in force was appended (its snapshot's index, or 0 for the
    /// bootstrap configuration).
    pub fn membership_index(&self) -> LogIndex {
        self.log.configs().current_index()
    }

    /// Leader: each follower's and learner's match index, and whether it answered within
    /// the last election timeout (thesis §4.2.1's "caught up" asks both). Empty on others.
    pub fn replication_progress(&self) -> Vec<(NodeId, LogIndex, bool)> {
        self.progress.iter().map(|(id, progress)| (*id, progress.match_index, progress.recent_active)).collect()
    }

    /// The configuration in force at `index`: what a snapshot there must carry.
    pub fn membership_at(&self, index: LogIndex) -> &crate::membership::Membership {
        self.log.configs().at(index)
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState { current_term: self.current_term, voted_for: self.voted_for, commit_index: self.log.commit_index() }
    }

    pub(crate) fn soft_state(&self) -> SoftState {
        SoftState { role: self.role, term: self.current_term, leader_id: self.leader_id }
    }

    // ----- term checks and dispatch ---------------------------------------------------------

    /// Figure 2: "If RPC request or response contains term T > currentTerm: set currentTerm
    /// = T, convert to follower." Returns false if the message is to be dropped.
    fn check_term(&mut self, message: &Message) -> bool {
        let is_vote_request = matches!(message.body, MessageBody::RequestVote { leadership_transfer: false, .. });
        if message.term > self.current_term {
            if is_vote_request && self.in_leader_lease() {
                // Thesis §4.2.3: a follower that hears from a live leader ignores candidates,
                // so a node that was partitioned away cannot disrupt the cluster on return.
                self.events.push(Event::VoteIgnored { candidate: message.from, term: message.term, reason: VoteReason::LeaderActive });
                return false;
            }
            match message.body {
                MessageBody::RequestVote { pre_vote: true, .. } => {}
                MessageBody::RequestVoteResponse { pre_vote: true, vote_granted: true } => {}
                ref body => {
                    let leader = body.is_from_leader().then_some(message.from);
                    self.record_step_down(StepDownReason::HigherTerm);
                    self.become_follower(message.term, leader);
                }
            }
            return true;
        }
        if message.term < self.current_term {
            self.answer_stale_message(message);
            return false;
        }
        true
    }

    /// A message from an older term is ignored, but a stale leader or pre-candidate is told
    /// our term so it steps down (with CheckQuorum and PreVote it would not learn otherwise).
    fn answer_stale_message(&mut self, message: &Message) {
        if let MessageBody::RequestVote { pre_vote, .. } = message.body {
            let (candidate, term, reason) = (message.from, message.term, VoteReason::TermBehind);
            self.events.push(if pre_vote { Event::Vote { candidate, term, pre_vote, granted: false, reason } } else { Event::VoteIgnored { candidate, term, reason } });
        }
        let body = match message.body {
            MessageBody::AppendEntries { .. } | MessageBody::InstallSnapshot { .. } => MessageBody::AppendEntriesResponse {
                result: AppendResult::Conflict { rejected_index: LogIndex::ZERO, conflict_term: None, conflict_index: LogIndex::ZERO },
                read_round: 0,
            },
            MessageBody::RequestVote { pre_vote: true, .. } => MessageBody::RequestVoteResponse { pre_vote: true, vote_granted: false },
            _ => return,
        };
        self.send(message.from, body);
    }

    fn dispatch(&mut self, message: Message) -> Result<(), StepError> {
        let from = message.from;
        match message.body {
            MessageBody::RequestVote { pre_vote, last_log_index, last_log_term, .. } => {
                self.handle_request_vote(from, message.term, pre_vote, last_log_index, last_log_term)
            }
            MessageBody::RequestVoteResponse { pre_vote, vote_granted } => self.handle_vote_response(from, pre_vote, vote_granted),
            MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit, read_round } => {
                if self.accept_leader(from) {
                    self.handle_append_entries(from, prev_log_index, prev_log_term, &entries, leader_commit, read_round);
                }
            }
            MessageBody::AppendEntriesResponse { result, read_round } => {
                if self.role == Role::Leader {
                    self.handle_append_response(from, result, read_round);
                }
            }
            MessageBody::InstallSnapshot { meta, membership, offset, data, done, read_round } => {
                if self.accept_leader(from) {
                    return self.handle_install_snapshot(from, meta, membership, offset, data, done, read_round);
                }
            }
            MessageBody::TimeoutNow => {
                if self.accept_leader(from) {
                    self.handle_timeout_now();
                }
            }
            MessageBody::InstallSnapshotResponse { meta, next_offset, done, read_round } => {
                if self.role == Role::Leader {
                    self.handle_install_snapshot_response(from, meta, next_offset, done, read_round);
                }
            }
        }
        Ok(())
    }

    /// A message from the leader of our current term. §5.2: a candidate that hears from it
    /// returns to follower. Two leaders in one term would break Election Safety; a leader
    /// that sees one drops the message and the simulator's invariant check reports it.
    fn accept_leader(&mut self, from: NodeId) -> bool {
        if self.role == Role::Leader {
            return false;
        }
        if self.role != Role::Follower || self.leader_id != Some(from) {
            self.become_follower(self.current_term, Some(from));
        }
        self.election_elapsed_ticks = 0;
        true
    }

    // ----- role transitions -----------------------------------------------------------------

    pub(crate) fn become_follower(&mut self, term: Term, leader_id: Option<NodeId>) {
        assert!(term >= self.current_term, "term must never decrease");
        if term > self.current_term {
            self.current_term = term;
            self.voted_for = None;
        }
        self.role = Role::Follower;
        self.leader_id = leader_id;
        self.leave_role();
    }

    /// A leader about to become a follower says why (`Event::SteppedDown`).
    pub(crate) fn record_step_down(&mut self, reason: StepDownReason) {
        if self.role == Role::Leader {
            self.events.push(Event::SteppedDown { term: self.current_term, reason });
        }
    }

    pub(crate) fn leave_role(&mut self) {
        self.votes.clear();
        self.progress.clear();
        self.uncommitted_bytes = 0;
        self.transfer = None;
        self.broadcast_needed = false;
        self.reads.fail_all(ReadError::LeadershipLost);
        self.reset_election_timer();
    }

    pub(crate) fn reset_election_timer(&mut self) {
        self.election_elapsed_ticks = 0;
        self.heartbeat_elapsed_ticks = 0;
        let min = self.config.election_timeout_ticks_min;
        self.election_timeout_ticks = self.rng.range(min, 2 * min);
    }

    /// Thesis §4.2.3 / §9.6: we heard from a leader less than a minimum election timeout ago.
    fn in_leader_lease(&self) -> bool {
        self.config.check_quorum && self.leader_id.is_some() && self.election_elapsed_ticks < self.config.election_timeout_ticks_min
    }

    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.messages.push(Message { from: self.id, to, term: self.current_term, body });
    }

    /// Everyone a leader replicates to: the members of its configuration (voters of both
    /// sets and learners) but itself.
    /// Who the leader replicates to: the members of the configuration in force and of the
    /// committed one. Until C_new commits, a voter it removes still gets the log, so that
    /// it sees C_new (and learns it is out) rather than wait forever in C_old,new.
    pub(crate) fn peers(&self) -> Vec<NodeId> {
        let mut members = self.membership().members();
        members.extend(self.membership_at(self.log.commit_index()).members());
        members.into_iter().filter(|id| *id != self.id).collect()
    }

    /// Whether this node may campaign and its vote counts: a voter of C_new or C_old.
    pub(crate) fn is_voter(&self) -> bool {
        self.membership().is_voter(self.id)
    }

    // ----- Ready ----------------------------------------------------------------------------

    pub fn has_ready(&self) -> bool {
        if self.outstanding.is_some() {
            return false;
        }
        self.soft_state() != self.soft_state_handed
            || self.hard_state() != self.hard_state_handed
            || self.snapshot_to_install.is_some()
            || self.log.has_unstable()
            || !self.messages.is_empty()
            || !self.outgoing_chunks.is_empty()
            || !self.received_chunks.is_empty()
            || self.broadcast_needed
            || self.sync_requested
            || self.reads.has_work()
            || self.applied_handed < self.log.commit_index()
            || !self.events.is_empty()
    }

    /// Collects everything the driver must do now. Call only when `has_ready()`.
    pub fn ready(&mut self) -> Ready {
        assert!(self.outstanding.is_none(), "advance the previous Ready first");
        self.flush_broadcasts();
        let mut ready = Ready::default();
        let soft_state = self.soft_state();
        if soft_state != self.soft_state_handed {
            ready.soft_state = Some(soft_state);
            self.soft_state_handed = soft_state;
        }
        let vote_handed = self.vote_handed();
        let hard_state = self.hard_state();
        if hard_state != self.hard_state_handed {
            ready.hard_state = Some(hard_state);
            self.hard_state_handed = hard_state;
        }
        ready.snapshot = self.snapshot_to_install.take();
        if let Some(snapshot) = &ready.snapshot {
            self.applied_handed = self.applied_handed.max(snapshot.meta.last_included_index);
        }
        ready.entries = self.log.take_unstable();
        ready.committed_entries = self.take_committed();
        ready.read_states = self.reads.take_ready();
        ready.events = std::mem::take(&mut self.events);
        (ready.messages, ready.persisted_messages) = self.partition_messages(vote_handed);
        ready.outgoing_chunks = self.take_chunks(vote_handed);
        ready.received_chunks = std::mem::take(&mut self.received_chunks);
        ready.may_defer_sync = self.may_defer_sync(vote_handed, &ready);
        self.sync_requested = false;
        self.outstanding = Some(Handed {
            log_end: (self.log.last_index(), self.log.last_term()),
            synced: !ready.may_defer_sync,
            snapshot: ready.snapshot.as_ref().map(|snapshot| snapshot.meta),
            applied_to: self.applied_handed,
        });
        ready
    }

    /// Driver contract step 3, early: while a Ready is outstanding (its disk write still
    /// running), the leader's AppendEntries and InstallSnapshot built since may leave at
    /// once, so entries proposed during the leader's own write reach followers without
    /// waiting for it (thesis §10.2.1: the leader counts itself towards a majority only once
    /// its write is durable, so nothing here depends on its disk). Everything else stays
    /// queued for the next `ready()`. Empty unless this node leads and its term and vote
    /// were already handed out.
    pub fn take_early_messages(&mut self) -> Vec<Message> {
        if self.role != Role::Leader || !self.vote_handed() {
            return Vec::new();
        }
        self.flush_broadcasts();
        let (early, later) = self.partition_messages(true);
        self.messages = later;
        early
    }

    /// `take_early_messages` for InstallSnapshot chunks (`Ready::outgoing_chunks`).
    pub fn take_early_chunks(&mut self) -> Vec<crate::ready::OutgoingChunk> {
        let vote_handed = self.vote_handed();
        self.take_chunks(vote_handed)
    }

    /// The chunks queued, if they may leave now: like the leader's other replication
    /// messages (`partition_messages`). Chunks of a term we no longer lead in are dropped;
    /// a later leader starts its own transfer.
    fn take_chunks(&mut self, vote_handed: bool) -> Vec<crate::ready::OutgoingChunk> {
        if self.role != Role::Leader || !vote_handed {
            if self.role != Role::Leader {
                self.outgoing_chunks.clear();
            }
            return Vec::new();
        }
        let term = self.current_term;
        let mut chunks = std::mem::take(&mut self.outgoing_chunks);
        chunks.retain(|chunk| chunk.message.term == term);
        chunks
    }

    /// Term and vote are as last handed to the driver (a change must be durable before any
    /// message that depends on it leaves).
    fn vote_handed(&self) -> bool {
        self.current_term == self.hard_state_handed.current_term && self.voted_for == self.hard_state_handed.voted_for
    }

    /// Takes the queued messages, split into those that may leave before the disk write —
    /// the leader's replication messages of its term (thesis §10.2.1), and only if term and
    /// vote were already handed out — and those that must wait for it.
    fn partition_messages(&mut self, vote_handed: bool) -> (Vec<Message>, Vec<Message>) {
        let (role, term) = (self.role, self.current_term);
        std::mem::take(&mut self.messages).into_iter().partition(|message| vote_handed && role == Role::Leader && message.term == term && message.body.is_from_leader())
    }

    /// A leader may leave its own new entries unsynced (thesis §10.2.1 taken one step
    /// further): an entry is committed once a majority has it durably, and while enough
    /// followers keep up, they are that majority without the leader. The leader counts
    /// itself only up to what it has synced, so nothing is committed on its unsynced copy.
    /// Only when the Ready holds nothing else that must be durable first: no term or vote
    /// change, no snapshot, no message promising durable state. A tick asks for the sync
    /// (`sync_requested`), so a leader whose followers fall behind waits at most a tick.
    fn may_defer_sync(&self, vote_handed: bool, ready: &Ready) -> bool {
        self.config.defer_leader_sync
            && self.role == Role::Leader
            && vote_handed
            && !self.sync_requested
            && ready.snapshot.is_none()
            && ready.persisted_messages.is_empty()
            && self.followers_form_quorum()
    }

    fn take_committed(&mut self) -> Vec<Entry> {
        let commit_index = self.log.commit_index();
        if self.applied_handed >= commit_index {
            return Vec::new();
        }
        let (count_max, bytes_max) = (self.config.committed_entries_per_ready_max, self.config.committed_bytes_per_ready_max);
        let entries = self.log.slice(self.applied_handed.next(), commit_index, count_max, bytes_max);
        if let Some(last) = entries.last() {
            self.applied_handed = last.index;
        }
        entries
    }

    /// The driver carried out `ready` (steps 3–7 of the contract). The bundle is handed back
    /// by value so it cannot be carried out twice; its vectors may have been emptied.
    pub fn advance(&mut self, ready: Ready) {
        drop(ready);
        let handed = self.outstanding.take().expect("advance without an outstanding Ready");
        if let Some(meta) = handed.snapshot {
            self.log.snapshot_persisted(meta);
        }
        if handed.synced {
            self.log.persisted_to(handed.log_end.0, handed.log_end.1);
        }
        self.applied_index = self.applied_index.max(handed.applied_to);
        if self.role == Role::Leader {
            // Our own durable log counts towards the majority only now.
            self.maybe_commit();
        }
        self.check_invariants();
    }

    /// The entries from `from` (or the first one not compacted) to the end: for tests that
    /// compare a node's log with what its driver stored.
    pub fn log_entries_from(&self, from: LogIndex) -> Vec<Entry> {
        let from = from.max(self.log.first_index());
        self.log.slice(from, self.log.last_index(), usize::MAX, usize::MAX)
    }
}
