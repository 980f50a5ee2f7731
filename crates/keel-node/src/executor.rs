//! `Executor`: the one driver of a `RaftCore`, carrying out each `Ready` by the contract in
//! `keel_core::ready`. Production's `RaftNode` (`node.rs`) wraps it in a tokio task; the
//! simulator (`keel-sim`) drives it on simulated time. Everything a node does between two
//! inputs happens here, synchronously; only *where* a storage job or a snapshot build runs,
//! and when it completes, is the caller's (`io.rs`).
//!
//! The steps, for each input (a tick, a peer message, a client request, a finished job):
//! 1. Feed it to the core.
//! 2. `drive`: if no Ready is in flight and the core has one, start it (`start_ready`): send
//!    `ready.messages` (they may leave before our own write, thesis §10.2.1) and hand the
//!    write to storage — on the driver ("inline") or on the storage thread, see below.
//! 3. Handle finished storage jobs in the order they finished: for a write, restore a
//!    received snapshot, send what needed the write (unless the job sent it the moment its
//!    sync returned), apply committed entries and answer their proposers, queue confirmed
//!    reads, `advance`, serve reads, maybe start a snapshot (`on_persisted`).
//! 4. Back to 2 until nothing is left; then, while a write is still in flight, send the
//!    leader's replication messages built meanwhile (`take_early_messages`).
//!
//! Where a write runs: a leader's synced write goes to the storage thread, so the leader
//! keeps stepping acknowledgements and proposals while it syncs, and the thread sends the
//! Ready's persisted messages itself the moment the sync returns. Every other write runs
//! inline: a leader's unsynced append is quick (no fsync, `Ready::may_defer_sync`), and a
//! follower's acknowledgement waits for its write anyway, so two thread hand-offs would only
//! add latency. Compactions always go to the thread (they can outlast an election timeout),
//! and a write asked to run inline while a compaction is queued waits behind it: otherwise
//! it could reach storage first (a leader's snapshot installed, then our older one saved
//! over it).

use crate::config::NodeConfig;
use crate::error::{NodeError, StartError};
use crate::events::{role_name, DriverEvent, NodeCounters, NodeEvent};
use crate::io::{BuiltSnapshot, Io, JobResult, Observation, SnapshotBuild, SnapshotJob, StorageDone, StorageJob};
use crate::storage::{StorageError, StoredImage};
use keel_core::{Entry, HardState, LogIndex, Membership, MembershipChange, MembershipError, Message, NodeId, OutgoingChunk, RaftCore, ReadError, Ready, RestoredState, Role, SnapshotMeta, StateMachine, StepError, Term, TransferError};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use tracing::{debug, error, info, warn};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// ReadIndex (thesis §6.4): reflects every write acknowledged before the read began.
    Linearizable,
    /// This node's applied state, however old.
    Stale,
}

/// Rules of the driver broken on purpose, to prove the simulator notices (as `Faults` does
/// for the core's rules).
#[cfg(feature = "fault-injection")]
#[derive(Clone, Debug, Default)]
pub struct DriverFaults {
    /// Break contract step 5: send votes and acknowledgements before the write is synced.
    pub acknowledge_before_sync: bool,
    /// Break contract step 4 for the leader: skip the sync of its own entries while the
    /// core, told the Ready is synced, counts them towards a majority.
    pub skip_leader_sync: bool,
}

pub struct Executor<SM: StateMachine, I: Io<SM>> {
    id: NodeId,
    core: RaftCore,
    state_machine: SM,
    io: I,
    snapshot_threshold_entries: u64,
    snapshot_threshold_bytes: u64,
    /// The Ready whose write is running, or done and its completion not yet handled.
    inflight: Option<Ready>,
    /// Finished storage jobs not yet handled, oldest first.
    completed: VecDeque<JobResult>,
    /// A compaction is queued or running on the thread: inline jobs queue behind it.
    compacting: bool,
    proposals: BTreeMap<LogIndex, (Term, I::Proposal)>,
    reads: BTreeMap<u64, I::Read>,
    reads_waiting_apply: Vec<(LogIndex, I::Read)>,
    next_read_id: u64,
    /// The latest snapshot handed to storage: ours, or one installed from the leader.
    snapshot_index: LogIndex,
    /// The stored snapshot's image, which InstallSnapshot chunks are read from.
    image: Option<Arc<dyn StoredImage>>,
    snapshot_in_progress: bool,
    /// Bytes of the entries applied since `snapshot_index` (`snapshot_threshold_bytes`).
    applied_bytes_since_snapshot: u64,
    /// The last hard state handed to storage (see `must_save`).
    hard_state_saved: HardState,
    /// A write was left unsynced; the next Ready that must sync does so even if it writes
    /// nothing itself.
    unsynced: bool,
    /// Peer messages the core refused (`StepError`).
    refused_messages: u64,
    /// The configuration last handed to `Io::membership_changed` (thesis §4.1: in force
    /// from the moment it is appended, so checked after every turn).
    membership: Arc<Membership>,
    /// This node has been a member since it started; leaving the configuration then means
    /// it was removed (a node that starts empty to join is not, until it is added).
    was_member: bool,
    /// Events since start, by kind (`events.rs`).
    counters: NodeCounters,
    #[cfg(feature = "fault-injection")]
    pub faults: DriverFaults,
}

impl<SM: StateMachine, I: Io<SM>> Executor<SM, I> {
    /// A node recovered from `restored` (its storage's `initial_state`) and `image` (its
    /// `snapshot_image`); `state_machine` must be empty and is restored from the image.
    pub fn new(config: &NodeConfig, restored: RestoredState, image: Option<Arc<dyn StoredImage>>, mut state_machine: SM, io: I) -> Result<Executor<SM, I>, StartError> {
        config.validate().map_err(StartError::Config)?;
        if let Some(snapshot) = &restored.snapshot {
            let image = image.as_ref().filter(|image| image.meta() == snapshot.meta).ok_or_else(|| StartError::Snapshot(format!("no image for the snapshot at {}", snapshot.meta.last_included_index)))?;
            restore_from(&mut state_machine, image.as_ref()).map_err(StartError::Snapshot)?;
        }
        let snapshot_index = restored.snapshot.as_ref().map(|snapshot| snapshot.meta.last_included_index).unwrap_or_default();
        info!("[NODE {}] starting: term {}, {} log entries after snapshot {}", config.id, restored.hard_state.current_term, restored.entries.len(), snapshot_index);
        let hard_state_saved = restored.hard_state;
        let core = RaftCore::new(config.core_config(), restored);
        let membership = Arc::new(core.membership().clone());
        let was_member = membership.is_member(config.id);
        let mut io = io;
        io.membership_changed(&membership);
        Ok(Executor {
            id: config.id,
            core,
            state_machine,
            io,
            snapshot_threshold_entries: config.snapshot_threshold_entries,
            snapshot_threshold_bytes: config.snapshot_threshold_bytes,
            inflight: None,
            completed: VecDeque::new(),
            compacting: false,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            reads_waiting_apply: Vec::new(),
            next_read_id: 0,
            snapshot_index,
            image,
            snapshot_in_progress: false,
            applied_bytes_since_snapshot: 0,
            hard_state_saved,
            unsynced: false,
            refused_messages: 0,
            membership,
            was_member,
            counters: NodeCounters::default(),
            #[cfg(feature = "fault-injection")]
            faults: DriverFaults::default(),
        })
    }

    // ----- inputs ---------------------------------------------------------------------------

    pub fn tick(&mut self) {
        self.core.tick();
    }

    /// A peer message. A refusal (`StepError`) changes nothing; it is logged and counted.
    #[inline]
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        let result = self.core.step(message);
        if let Err(error) = &result {
            self.on_refused(error);
        }
        result
    }

    pub fn propose(&mut self, command: Vec<u8>, proposal: I::Proposal) {
        match self.core.propose(command) {
            Ok((index, term)) => {
                self.proposals.insert(index, (term, proposal));
            }
            Err(keel_core::ProposeError::NotLeader { leader_hint }) => self.io.answer_proposal(proposal, Err(NodeError::NotLeader { leader_hint })),
            Err(keel_core::ProposeError::TooManyUncommitted) => self.io.answer_proposal(proposal, Err(NodeError::Overloaded)),
            Err(keel_core::ProposeError::TransferInProgress) => self.io.answer_proposal(proposal, Err(NodeError::TransferInProgress)),
        }
    }

    pub fn read(&mut self, consistency: Consistency, read: I::Read) {
        if consistency == Consistency::Stale {
            return self.io.answer_read(read, Ok((self.state_machine.applied_index(), &self.state_machine)));
        }
        self.next_read_id += 1;
        match self.core.read_index(self.next_read_id) {
            Ok(()) => {
                self.reads.insert(self.next_read_id, read);
            }
            Err(error) => self.io.answer_read(read, Err(read_error(error))),
        }
    }

    /// Proposes a membership change (thesis ch. 4); returns where its configuration entry
    /// sits. It takes effect on each node as that entry is appended; a change of voters
    /// then goes through the joint configuration, which the leader leaves by itself once
    /// it commits.
    pub fn propose_membership(&mut self, change: MembershipChange) -> Result<(LogIndex, Term), MembershipError> {
        let described = format!("{change:?}");
        let placed = self.core.propose_membership(change)?;
        info!("[NODE {}] proposed {described} at index {}: configuration now {}", self.id, placed.0, self.core.membership());
        Ok(placed)
    }

    /// Starts handing leadership to `target` (thesis §3.10); proposals are refused until it
    /// ends, by a new leader or after an election timeout.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        self.core.transfer_leadership(target)?;
        info!("[NODE {}] transferring leadership to node {target}", self.id);
        Ok(())
    }

    /// A job queued on the storage thread finished (in queue order).
    pub fn storage_done(&mut self, result: JobResult) {
        self.completed.push_back(result);
    }

    /// A snapshot image started by `Io::build_snapshot` is written: compact, unless a newer
    /// snapshot from the leader was handed to storage meanwhile (storing an older one would
    /// move the log's start backwards), or the image could not be written.
    pub fn snapshot_built(&mut self, built: Result<BuiltSnapshot, StorageError>) {
        let built = match built {
            Ok(built) => built,
            Err(error) => {
                error!("[NODE {}] cannot write a snapshot ({error}); will retry at the next threshold", self.id);
                self.snapshot_in_progress = false;
                return;
            }
        };
        let index = built.snapshot.meta.last_included_index;
        if self.snapshot_index > index {
            info!("[NODE {}] dropped our snapshot at {index}: the leader's at {} is newer", self.id, self.snapshot_index);
            self.snapshot_in_progress = false;
            return;
        }
        // Compaction can take longer than an election timeout on a large log: never inline.
        self.submit(StorageJob::Compact(built), false);
    }

    /// Answers every waiting client with `NodeError::Stopped`: the node is going away.
    pub fn stop(&mut self) {
        for (_, (_, proposal)) in std::mem::take(&mut self.proposals) {
            self.io.answer_proposal(proposal, Err(NodeError::Stopped));
        }
        let reads = std::mem::take(&mut self.reads).into_values().chain(std::mem::take(&mut self.reads_waiting_apply).into_iter().map(|(_, read)| read));
        for read in reads {
            self.io.answer_read(read, Err(NodeError::Stopped));
        }
    }

    // ----- reads of state -------------------------------------------------------------------

    pub fn core(&self) -> &RaftCore {
        &self.core
    }

    /// For tests that switch on the core's injected faults.
    #[cfg(feature = "fault-injection")]
    pub fn core_mut(&mut self) -> &mut RaftCore {
        &mut self.core
    }

    pub fn state_machine(&self) -> &SM {
        &self.state_machine
    }

    pub fn io(&self) -> &I {
        &self.io
    }

    pub fn io_mut(&mut self) -> &mut I {
        &mut self.io
    }

    pub fn into_io(self) -> I {
        self.io
    }

    pub fn refused_messages(&self) -> u64 {
        self.refused_messages
    }

    /// Proposals accepted and not yet answered.
    pub fn pending_proposals(&self) -> usize {
        self.proposals.len()
    }

    // ----- the loop -------------------------------------------------------------------------

    /// Steps 2–4 of the module doc, until nothing is left to do. An error means the node
    /// must stop: storage failed, or a snapshot from the leader could not be restored.
    pub fn drive(&mut self) -> Result<(), String> {
        loop {
            if self.inflight.is_none() && self.core.has_ready() {
                self.start_ready();
            }
            let Some(done) = self.next_completion() else { break };
            match done {
                Ok(StorageDone::Written { image }) => self.on_persisted(image)?,
                Ok(StorageDone::Compacted { built, image, compact_ms }) => self.on_compacted(built, image, compact_ms),
                Err(error) => return Err(format!("storage failed: {error}")),
            }
        }
        if self.inflight.is_some() {
            // Entries proposed during our own write go to followers now, not after it.
            for message in self.core.take_early_messages() {
                self.io.send(message);
            }
            for chunk in self.core.take_early_chunks() {
                self.send_chunk(chunk);
            }
        }
        if self.core.membership() != &*self.membership {
            self.on_membership_changed();
        }
        Ok(())
    }

    /// The configuration in force changed (appended, overwritten, or from a snapshot).
    fn on_membership_changed(&mut self) {
        self.membership = Arc::new(self.core.membership().clone());
        info!("[NODE {}] configuration now {} (appended at index {})", self.id, self.membership, self.core.membership_index());
        self.emit(NodeEvent::Node(DriverEvent::ConfigurationChanged { configuration: self.membership.to_string(), index: self.core.membership_index() }));
        self.io.membership_changed(&self.membership);
        let is_member = self.membership.is_member(self.id);
        if self.was_member && !is_member {
            warn!("[NODE {}] removed from the cluster: this node serves no more writes and takes no part in elections; stop it", self.id);
        }
        self.was_member |= is_member;
    }

    /// The configuration in force, as last announced.
    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    /// This node was a member and no longer is, or the committed configuration is joint
    /// and leaves it out of C_new: the leader replicates to it no more once it appends
    /// C_new, so it may never see that entry (thesis §4.2.2).
    pub fn is_removed(&self) -> bool {
        if !self.was_member {
            return false;
        }
        let committed = self.core.membership_at(self.core.commit_index());
        let leaving = committed.is_joint() && !committed.voters.contains(&self.id) && !committed.is_learner(self.id);
        !self.membership.is_member(self.id) || leaving
    }

    /// The oldest finished job; once a compaction's is handed over, inline jobs may run
    /// inline again.
    fn next_completion(&mut self) -> Option<JobResult> {
        let done = self.completed.pop_front()?;
        if matches!(done, Ok(StorageDone::Compacted { .. })) {
            self.compacting = false;
        }
        Some(done)
    }

    /// Runs `job` inline if asked and no compaction is ahead of it, else on the thread.
    fn submit(&mut self, job: StorageJob, inline: bool) {
        let inline = !self.io.has_threads() || (inline && !self.compacting);
        self.compacting |= job.is_compaction();
        if !inline {
            return self.io.queue(job);
        }
        if let Some(result) = self.io.run_inline(job) {
            self.completed.push_back(result);
        }
    }

    /// Contract steps 2–4: take the Ready, send what may leave now, start the write.
    fn start_ready(&mut self) {
        let mut ready = self.core.ready();
        for event in std::mem::take(&mut ready.events) {
            self.emit(NodeEvent::Raft(event));
        }
        if let Some(soft_state) = ready.soft_state {
            self.io.observe(Observation::SoftState { soft_state, core: &self.core });
            self.emit(NodeEvent::Node(DriverEvent::RoleChanged { role: role_name(soft_state.role), term: soft_state.term, leader: soft_state.leader_id }));
            self.log_soft_state(soft_state.role, soft_state.term, soft_state.leader_id);
            if soft_state.role != Role::Leader {
                self.fail_proposals_on_step_down();
            }
        }
        for message in std::mem::take(&mut ready.messages) {
            self.io.send(message);
        }
        for chunk in std::mem::take(&mut ready.outgoing_chunks) {
            self.send_chunk(chunk);
        }
        if self.fault_acknowledge_before_sync() {
            for message in std::mem::take(&mut ready.persisted_messages) {
                self.io.send(message);
            }
        }
        if let Some(snapshot) = &ready.snapshot {
            self.snapshot_index = snapshot.meta.last_included_index;
        }
        let hard_state = ready.hard_state.filter(|hard_state| self.must_save(hard_state));
        let writes = ready.snapshot.is_some() || !ready.received_chunks.is_empty() || !ready.entries.is_empty() || hard_state.is_some();
        let sync = !ready.may_defer_sync && !self.fault_skip_leader_sync(&ready);
        let needs_disk = writes || (sync && self.unsynced);
        self.unsynced = if sync { false } else { self.unsynced || writes };
        if needs_disk {
            // The job sends the acknowledgements the moment its sync returns; after a
            // snapshot they wait for the state machine's restore (`on_persisted`).
            let persisted_messages = if ready.snapshot.is_none() { std::mem::take(&mut ready.persisted_messages) } else { Vec::new() };
            let received_chunks = std::mem::take(&mut ready.received_chunks);
            let job = StorageJob::Write { received_chunks, snapshot: ready.snapshot.clone(), entries: std::mem::take(&mut ready.entries), hard_state, sync, persisted_messages };
            let inline = !sync || self.core.role() != Role::Leader;
            self.submit(job, inline);
        } else {
            self.completed.push_back(Ok(StorageDone::Written { image: None }));
        }
        self.inflight = Some(ready);
    }

    /// Term and vote must be durable before any message that depends on them (Figure 2).
    /// The commit index need not be: a restarted node learns it again from the leader, and
    /// saving it only shortens the wait to re-apply. Rewriting the hard-state file costs
    /// several fsyncs and stalls the log writes queued behind it, so a commit-only change is
    /// saved once per `COMMIT_SAVE_INTERVAL` entries instead of on every write: about once a
    /// second at 15,000 writes/s, while re-applying that many entries after a restart takes
    /// milliseconds. (Every 1,024 entries cost ~15 rewrites a second under load.)
    fn must_save(&mut self, hard_state: &HardState) -> bool {
        const COMMIT_SAVE_INTERVAL: u64 = 16_384;
        let saved = self.hard_state_saved;
        let vote_changed = hard_state.current_term != saved.current_term || hard_state.voted_for != saved.voted_for;
        let commit_far_ahead = hard_state.commit_index.0 >= saved.commit_index.0 + COMMIT_SAVE_INTERVAL;
        if vote_changed || commit_far_ahead {
            self.hard_state_saved = *hard_state;
            return true;
        }
        false
    }

    /// Contract steps 4 (restore) to 8, once the write is durable.
    fn on_persisted(&mut self, image: Option<Arc<dyn StoredImage>>) -> Result<(), String> {
        let mut ready = self.inflight.take().expect("a write was in flight");
        if let Some(snapshot) = &ready.snapshot {
            let image = image.filter(|image| image.meta() == snapshot.meta).expect("storage stored the snapshot it installed");
            self.restore_snapshot(snapshot.meta, image)?;
        }
        // Still here only after a snapshot or when nothing was written (see `start_ready`).
        for message in std::mem::take(&mut ready.persisted_messages) {
            self.io.send(message);
        }
        for entry in std::mem::take(&mut ready.committed_entries) {
            self.apply(&entry);
        }
        for read_state in std::mem::take(&mut ready.read_states) {
            let Some(read) = self.reads.remove(&read_state.request_id) else { continue };
            match read_state.result {
                Ok(index) => self.reads_waiting_apply.push((index, read)),
                Err(error) => self.io.answer_read(read, Err(read_error(error))),
            }
        }
        self.core.advance(ready);
        self.serve_reads();
        self.maybe_snapshot();
        Ok(())
    }

    fn on_compacted(&mut self, built: BuiltSnapshot, image: Arc<dyn StoredImage>, compact_ms: u128) {
        let BuiltSnapshot { snapshot, build_ms } = built;
        let meta = snapshot.meta;
        self.core.compact(snapshot);
        if self.core.snapshot().is_some_and(|snapshot| snapshot.meta == image.meta()) {
            self.image = Some(image);
        }
        self.snapshot_in_progress = false;
        self.emit(NodeEvent::Node(DriverEvent::SnapshotTaken { index: meta.last_included_index, bytes: meta.data_bytes }));
        info!(
            "[NODE {}] snapshot taken at index {} (term {}); log compacted (image {} bytes: written in {build_ms} ms, compacted in {compact_ms} ms)",
            self.id, meta.last_included_index, meta.last_included_term, meta.data_bytes,
        );
    }

    /// A deposed leader's pending proposals may still be committed by the next leader, or
    /// overwritten: answer now, with "outcome unknown", rather than leave clients waiting.
    fn fail_proposals_on_step_down(&mut self) {
        if !self.proposals.is_empty() {
            info!("[NODE {}] no longer leader: {} pending proposals end with an unknown outcome", self.id, self.proposals.len());
        }
        for (_, (_, proposal)) in std::mem::take(&mut self.proposals) {
            self.io.answer_proposal(proposal, Err(NodeError::OutcomeUnknown));
        }
    }

    /// The core checked the image against its checksum when the last chunk arrived; an
    /// image the state machine still cannot read means the leader's state machine wrote
    /// bytes ours cannot parse. The core has already moved past the log it replaces, so the
    /// node stops (with the reason) rather than serve a state it does not have.
    fn restore_snapshot(&mut self, meta: SnapshotMeta, image: Arc<dyn StoredImage>) -> Result<(), String> {
        self.io.observe(Observation::InstallingSnapshot { meta, applied_index: self.state_machine.applied_index() });
        restore_from(&mut self.state_machine, image.as_ref()).map_err(|problem| format!("cannot restore the snapshot at {} from the leader: {problem}", meta.last_included_index))?;
        self.image = Some(image);
        info!("[NODE {}] installed snapshot from the leader at index {} (term {})", self.id, meta.last_included_index, meta.last_included_term);
        self.emit(NodeEvent::Node(DriverEvent::SnapshotInstalled { index: meta.last_included_index }));
        self.snapshot_index = meta.last_included_index;
        self.applied_bytes_since_snapshot = 0;
        // Proposals inside the snapshot: we cannot tell whether ours was the entry applied.
        let covered: Vec<LogIndex> = self.proposals.range(..=meta.last_included_index).map(|(index, _)| *index).collect();
        for index in covered {
            let (_, proposal) = self.proposals.remove(&index).expect("listed above");
            self.io.answer_proposal(proposal, Err(NodeError::OutcomeUnknown));
        }
        Ok(())
    }

    /// Contract step 3 for an InstallSnapshot chunk: its bytes come from the stored image.
    /// An image already replaced by a newer snapshot is gone; the core moves on to the
    /// newer one at the next heartbeat, so the chunk is dropped.
    fn send_chunk(&mut self, chunk: OutgoingChunk) {
        let (meta, offset) = chunk.source();
        let Some(image) = self.image.as_ref().filter(|image| image.meta() == meta) else {
            debug!("[NODE {}] dropped a chunk of the snapshot at {}: that image is gone", self.id, meta.last_included_index);
            return;
        };
        match image.read_at(offset, chunk.len) {
            Ok(bytes) => self.io.send(chunk.fill(bytes)),
            Err(error) => warn!("[NODE {}] cannot read a chunk of the snapshot at {}: {error}", self.id, meta.last_included_index),
        }
    }

    /// Contract step 6: apply, and answer the proposer if this entry is its (same term).
    fn apply(&mut self, entry: &Entry) {
        self.io.observe(Observation::Applying(entry));
        let output = self.state_machine.apply(entry);
        self.applied_bytes_since_snapshot += entry.size_bytes() as u64;
        if let Some((term, proposal)) = self.proposals.remove(&entry.index) {
            let result = if term == entry.term { Ok((entry.index, output)) } else { Err(NodeError::Dropped) };
            self.io.answer_proposal(proposal, result);
        }
    }

    /// Contract step 7: a confirmed read runs once the state machine caught up to it.
    fn serve_reads(&mut self) {
        let applied = self.state_machine.applied_index();
        let waiting = std::mem::take(&mut self.reads_waiting_apply);
        for (index, read) in waiting {
            if index <= applied {
                self.io.answer_read(read, Ok((applied, &self.state_machine)));
            } else {
                self.reads_waiting_apply.push((index, read));
            }
        }
    }

    /// §7: snapshot once enough entries, or enough bytes of them, were applied since the
    /// last one. The state machine's copy is taken here; the image is built where `Io`
    /// says (a thread of its own in production: a large map takes longer to serialize than
    /// an election timeout), then saved by the storage thread, and the core drops its log.
    fn maybe_snapshot(&mut self) {
        let applied = self.state_machine.applied_index();
        let entries_due = self.snapshot_threshold_entries > 0 && applied.0 >= self.snapshot_index.0 + self.snapshot_threshold_entries;
        let bytes_due = self.snapshot_threshold_bytes > 0 && self.applied_bytes_since_snapshot >= self.snapshot_threshold_bytes;
        if self.snapshot_in_progress || !(entries_due || bytes_due) {
            return;
        }
        let Some(term) = self.core.entry(applied).map(|entry| entry.term) else { return };
        let membership = self.core.membership_at(applied).clone();
        let job = SnapshotJob { index: applied, term, membership, write: self.state_machine.snapshot_job() };
        self.snapshot_in_progress = true;
        self.snapshot_index = applied;
        self.applied_bytes_since_snapshot = 0;
        match self.io.build_snapshot(job) {
            SnapshotBuild::Built(built) => self.snapshot_built(built),
            SnapshotBuild::Started => {}
            SnapshotBuild::Failed(problem) => {
                error!("[NODE {}] cannot build a snapshot ({problem}); will retry at the next threshold", self.id);
                self.snapshot_in_progress = false;
            }
        }
    }

    /// A peer that sends what no correct peer would is broken or misconfigured: say so, but
    /// not at every heartbeat (the 1st, 10th, 100th, ... refusal is a warning).
    #[cold]
    fn on_refused(&mut self, error: &StepError) {
        self.refused_messages += 1;
        let count = self.refused_messages;
        if matches!(error, StepError::UnknownNode(_)) || !is_power_of_ten(count) {
            debug!("[NODE {}] refused a peer message: {error}", self.id);
        } else {
            warn!("[NODE {}] refused a peer message ({count} so far): {error}", self.id);
        }
    }

    /// Counts `event` and shows it to the observer.
    fn emit(&mut self, event: NodeEvent) {
        self.counters.count(&event);
        self.io.observe(Observation::Event(&event));
    }

    /// Events since start, by kind.
    pub fn counters(&self) -> NodeCounters {
        self.counters
    }

    fn log_soft_state(&self, role: Role, term: Term, leader_id: Option<NodeId>) {
        match role {
            Role::Leader => info!("[NODE {}] became LEADER for term {term}", self.id),
            Role::Candidate => info!("[NODE {}] became CANDIDATE for term {term}", self.id),
            Role::PreCandidate => debug!("[NODE {}] pre-vote campaign for term {}", self.id, term.next()),
            Role::Follower => match leader_id {
                Some(leader) => info!("[NODE {}] FOLLOWER in term {term}, leader is node {leader}", self.id),
                None => info!("[NODE {}] FOLLOWER in term {term}, no leader known", self.id),
            },
        }
    }

    #[cfg(feature = "fault-injection")]
    fn fault_acknowledge_before_sync(&self) -> bool {
        self.faults.acknowledge_before_sync
    }

    #[cfg(not(feature = "fault-injection"))]
    fn fault_acknowledge_before_sync(&self) -> bool {
        false
    }

    #[cfg(feature = "fault-injection")]
    fn fault_skip_leader_sync(&self, ready: &Ready) -> bool {
        self.faults.skip_leader_sync && self.core.role() == Role::Leader && !ready.entries.is_empty()
    }

    #[cfg(not(feature = "fault-injection"))]
    fn fault_skip_leader_sync(&self, _ready: &Ready) -> bool {
        false
    }
}

fn is_power_of_ten(mut count: u64) -> bool {
    while count % 10 == 0 && count > 1 {
        count /= 10;
    }
    count == 1
}

pub(crate) fn read_error(error: ReadError) -> NodeError {
    match error {
        ReadError::NotLeader { leader_hint } => NodeError::NotLeader { leader_hint },
        ReadError::LeadershipLost => NodeError::LeadershipLost,
        ReadError::TooManyPending => NodeError::Overloaded,
    }
}

/// Restores `state_machine` from `image`, streamed.
fn restore_from<SM: StateMachine>(state_machine: &mut SM, image: &dyn StoredImage) -> Result<(), String> {
    let mut reader = image.reader().map_err(|error| error.to_string())?;
    state_machine.restore(&mut reader)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{build_image, run_storage_job};
    use crate::storage::Storage;
    use crate::storage_memory::MemoryStorage;
    use keel_core::{Snapshot, Term};
    use keel_kv::{Command, KvStore};

    /// Records where each job went; queued jobs are kept, not run (a thread that is busy).
    /// Proposals are named; their answers are kept.
    struct TestIo {
        storage: MemoryStorage,
        threads: bool,
        ran_inline: Vec<String>,
        queued: Vec<String>,
        snapshots_built: usize,
        answers: Vec<(&'static str, bool)>,
    }

    fn describe(job: &StorageJob) -> String {
        match job {
            StorageJob::Write { entries, .. } => format!("write {:?}", entries.iter().map(|entry| entry.index.0).collect::<Vec<_>>()),
            StorageJob::Compact(built) => format!("compact {}", built.snapshot.meta.last_included_index),
        }
    }

    impl Io<KvStore> for TestIo {
        type Proposal = &'static str;
        type Read = ();
        fn answer_proposal(&mut self, proposal: &'static str, result: crate::io::ProposeResult<KvStore>) {
            self.answers.push((proposal, result.is_ok()));
        }
        fn answer_read(&mut self, _read: (), _result: Result<(LogIndex, &KvStore), NodeError>) {}
        fn send(&mut self, _message: Message) {}
        fn run_inline(&mut self, job: StorageJob) -> Option<JobResult> {
            self.ran_inline.push(describe(&job));
            Some(run_storage_job(&mut self.storage, job, &mut |_| {}))
        }
        fn queue(&mut self, job: StorageJob) {
            self.queued.push(describe(&job));
        }
        fn has_threads(&self) -> bool {
            self.threads
        }
        fn build_snapshot(&mut self, job: SnapshotJob) -> SnapshotBuild {
            self.snapshots_built += 1;
            SnapshotBuild::Built(build_image(job, &self.storage.snapshot_writer()))
        }
    }

    fn test_io(threads: bool) -> TestIo {
        TestIo { storage: MemoryStorage::new(), threads, ran_inline: Vec::new(), queued: Vec::new(), snapshots_built: 0, answers: Vec::new() }
    }

    fn single_node(threads: bool, configure: impl FnOnce(&mut NodeConfig)) -> Executor<KvStore, TestIo> {
        let mut config = NodeConfig::new(NodeId(1), vec![NodeId(1)]);
        config.random_seed = Some(7);
        configure(&mut config);
        Executor::new(&config, RestoredState::default(), None, KvStore::new(), test_io(threads)).expect("valid configuration")
    }

    fn write(index: u64) -> StorageJob {
        let entries = vec![Entry { term: Term(1), index: LogIndex(index), kind: keel_core::EntryKind::Noop }];
        StorageJob::Write { received_chunks: Vec::new(), snapshot: None, entries, hard_state: None, sync: false, persisted_messages: Vec::new() }
    }

    fn built(index: u64) -> BuiltSnapshot {
        BuiltSnapshot { snapshot: Snapshot { meta: SnapshotMeta::of_image(LogIndex(index), Term(1), b""), membership: Default::default() }, build_ms: 0 }
    }

    fn compaction(index: u64) -> StorageJob {
        StorageJob::Compact(built(index))
    }

    /// The order rule of the module doc: a write the executor would run inline waits behind
    /// a compaction still queued on the thread (else it could reach storage first), and
    /// runs inline again once that compaction's completion is handed over.
    #[test]
    fn an_inline_write_queues_behind_a_pending_compaction() {
        let mut executor = single_node(true, |_| {});
        executor.submit(compaction(2), false);
        executor.submit(write(5), true);
        assert_eq!(executor.io.queued, ["compact 2", "write [5]"], "the write must not overtake the queued compaction");
        assert!(executor.io.ran_inline.is_empty());

        let mut storage = MemoryStorage::new();
        storage.append(&[Entry { term: Term(1), index: LogIndex(1), kind: keel_core::EntryKind::Noop }, Entry { term: Term(1), index: LogIndex(2), kind: keel_core::EntryKind::Noop }]).unwrap();
        let snapshot = crate::conformance::compact(&mut storage, 2, 1).unwrap();
        let compacted = StorageDone::Compacted { built: BuiltSnapshot { snapshot, build_ms: 0 }, image: storage.snapshot_image().unwrap(), compact_ms: 0 };
        executor.storage_done(Ok(compacted));
        executor.storage_done(Ok(StorageDone::Written { image: None }));
        assert!(matches!(executor.next_completion(), Some(Ok(StorageDone::Compacted { .. }))));
        assert!(matches!(executor.next_completion(), Some(Ok(StorageDone::Written { .. }))));
        executor.submit(write(1), true);
        assert_eq!(executor.io.ran_inline, ["write [1]"], "with the compaction done, inline again");
    }

    /// Leads alone: ticks until elected, then carries out everything.
    fn lead(executor: &mut Executor<KvStore, TestIo>) {
        for _ in 0..100 {
            executor.tick();
            executor.drive().expect("memory storage");
        }
        assert_eq!(executor.core().role(), Role::Leader);
    }

    fn propose_value(executor: &mut Executor<KvStore, TestIo>, key: &'static str, value_bytes: usize) {
        let command = Command::Set { key: key.into(), value: vec![b'v'; value_bytes] }.encode().unwrap();
        executor.propose(command, key);
        executor.drive().expect("memory storage");
        assert_eq!(executor.io.answers.last(), Some(&(key, true)), "{key} applied");
    }

    /// §7 with large values: the snapshot comes once the applied entries hold
    /// `snapshot_threshold_bytes`, long before `snapshot_threshold_entries` of them.
    #[test]
    fn a_snapshot_is_taken_once_enough_bytes_were_applied() {
        let mut executor = single_node(false, |config| {
            config.snapshot_threshold_entries = 1_000;
            config.snapshot_threshold_bytes = 3_000;
        });
        lead(&mut executor);
        for key in ["a", "b"] {
            propose_value(&mut executor, key, 1_000);
        }
        assert_eq!(executor.io.snapshots_built, 0, "about 2 KB applied");
        propose_value(&mut executor, "c", 1_000);
        assert_eq!(executor.io.snapshots_built, 1, "about 3 KB applied");
        assert_eq!(executor.core().status().snapshot_index, LogIndex(4), "the no-op and a, b, c are in the snapshot");
        propose_value(&mut executor, "d", 1_000);
        assert_eq!(executor.io.snapshots_built, 1, "the count starts again after a snapshot");
    }

    /// A snapshot whose checksum holds but whose image the state machine cannot read (a
    /// leader whose state machine writes another format) stops the node with the reason,
    /// rather than panic or serve a state it does not have.
    #[test]
    fn an_image_the_state_machine_cannot_read_stops_the_node() {
        let config = NodeConfig::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)]);
        let mut executor: Executor<KvStore, TestIo> = Executor::new(&config, RestoredState::default(), None, KvStore::new(), test_io(false)).unwrap();
        let data = b"not a key-value image".to_vec();
        let meta = SnapshotMeta::of_image(LogIndex(5), Term(1), &data);
        let body = keel_core::MessageBody::InstallSnapshot { meta, membership: keel_core::Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]), offset: 0, data, done: true, read_round: 0 };
        executor.step(Message { from: NodeId(2), to: NodeId(1), term: Term(1), body }).expect("a well-formed chunk");
        let stopped = executor.drive().expect_err("the node must stop");
        assert!(stopped.starts_with("cannot restore the snapshot at 5 from the leader"), "{stopped}");
    }

    #[test]
    fn no_snapshot_by_bytes_when_the_byte_threshold_is_off() {
        let mut executor = single_node(false, |config| {
            config.snapshot_threshold_entries = 1_000;
            config.snapshot_threshold_bytes = 0;
        });
        lead(&mut executor);
        for key in ["a", "b", "c", "d"] {
            propose_value(&mut executor, key, 10_000);
        }
        assert_eq!(executor.io.snapshots_built, 0);
    }
}
