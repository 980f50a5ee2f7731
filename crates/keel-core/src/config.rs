//! Tunables of the core, all in ticks, counts and bytes, validated once at start.

use crate::types::NodeId;

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// The voters of the cluster's first configuration, `id` among them: used only while
    /// neither the log nor a snapshot holds a configuration (a new cluster). Empty for a node
    /// that starts empty to join a running cluster: it votes for no one and campaigns for
    /// nothing until the leader's log or snapshot tells it its configuration.
    pub members: Vec<NodeId>,
    /// Where the first configuration's members listen, carried in it (`Membership::addresses`)
    /// for the transport; may be empty, or name some of them.
    pub member_addresses: std::collections::BTreeMap<NodeId, String>,
    /// A follower waits a random time in `[min, 2 * min)` ticks before campaigning (§5.2).
    pub election_timeout_ticks_min: u32,
    /// A leader sends AppendEntries to every follower at least this often (§5.2).
    pub heartbeat_interval_ticks: u32,
    /// Thesis §9.6: ask for votes without bumping the term first.
    pub pre_vote: bool,
    /// A leader that has not heard from a majority within an election timeout steps down,
    /// and followers that heard from a leader within the timeout ignore vote requests.
    pub check_quorum: bool,
    /// Let the leader leave its own writes unsynced while its followers are a majority
    /// without it (`Ready::may_defer_sync`). Worth it when a sync costs a disk flush; with
    /// memory storage it only makes each commit wait for the slower follower.
    pub defer_leader_sync: bool,
    pub append_entries_max: usize,
    pub append_bytes_max: usize,
    /// Un-acknowledged AppendEntries per follower in the Replicate state.
    pub inflight_messages_max: usize,
    pub snapshot_chunk_bytes_max: usize,
    /// InstallSnapshot bytes sent to one follower beyond what it acknowledged: chunks are
    /// pipelined within this window, so a transfer is not one round trip per chunk.
    pub snapshot_window_bytes_max: usize,
    /// Proposals refused once this many entries are appended but not yet committed.
    pub uncommitted_entries_max: usize,
    /// Proposals refused once the commands of this leader's uncommitted entries hold this
    /// many bytes (one proposal is always let in when nothing is uncommitted, however large).
    pub uncommitted_bytes_max: usize,
    /// At most this many committed entries, and about this many bytes of them (at least
    /// one entry), in one `Ready`: applying a large backlog never holds the driver for long.
    pub committed_entries_per_ready_max: usize,
    pub committed_bytes_per_ready_max: usize,
    /// An InstallSnapshot whose image is larger than this is refused (`StepError`): a bound
    /// on the disk a leader can make a follower fill.
    pub snapshot_bytes_max: u64,
    /// ReadIndex requests waiting for confirmation before new ones are refused.
    pub read_requests_max: usize,
    /// A learner is promoted to voter only once its log is within this many entries of the
    /// leader's and it answered within the last election timeout (thesis §4.2.1): otherwise
    /// every commit would wait for it to catch up.
    pub learner_catch_up_entries_max: u64,
    /// Seeds the core's private PRNG (randomized election timeouts).
    pub random_seed: u64,
}

impl Config {
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Config {
        Config {
            id,
            members,
            member_addresses: std::collections::BTreeMap::new(),
            election_timeout_ticks_min: 10,
            heartbeat_interval_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            defer_leader_sync: true,
            append_entries_max: 512,
            append_bytes_max: 1 << 20,
            inflight_messages_max: 64,
            snapshot_chunk_bytes_max: 1 << 20,
            snapshot_window_bytes_max: 4 << 20,
            uncommitted_entries_max: 8192,
            uncommitted_bytes_max: 64 << 20,
            committed_entries_per_ready_max: 4096,
            committed_bytes_per_ready_max: 16 << 20,
            snapshot_bytes_max: 1 << 30,
            read_requests_max: 65_536,
            learner_catch_up_entries_max: 1_000,
            random_seed: id.0,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.members.is_empty() && !self.members.contains(&self.id) {
            return Err(format!("node {} is not among the members {:?}", self.id, self.members));
        }
        if self.members.len() > crate::membership::MEMBERS_MAX {
            return Err(format!("{} members, more than {}", self.members.len(), crate::membership::MEMBERS_MAX));
        }
        let mut sorted = self.members.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.members.len() {
            return Err("members contain a duplicate id".into());
        }
        if let Err(problem) = self.bootstrap_membership().check() {
            return Err(format!("the first configuration: {problem}"));
        }
        if self.heartbeat_interval_ticks == 0 || self.heartbeat_interval_ticks >= self.election_timeout_ticks_min {
            return Err("heartbeat interval must be at least 1 tick and below the election timeout".into());
        }
        let limits = [
            ("append_entries_max", self.append_entries_max),
            ("append_bytes_max", self.append_bytes_max),
            ("inflight_messages_max", self.inflight_messages_max),
            ("snapshot_chunk_bytes_max", self.snapshot_chunk_bytes_max),
            ("snapshot_window_bytes_max", self.snapshot_window_bytes_max),
            ("uncommitted_entries_max", self.uncommitted_entries_max),
            ("uncommitted_bytes_max", self.uncommitted_bytes_max),
            ("committed_entries_per_ready_max", self.committed_entries_per_ready_max),
            ("committed_bytes_per_ready_max", self.committed_bytes_per_ready_max),
            ("read_requests_max", self.read_requests_max),
        ];
        if let Some((name, _)) = limits.iter().find(|(_, limit)| *limit == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        if self.snapshot_bytes_max == 0 {
            return Err("snapshot_bytes_max must be at least 1".into());
        }
        Ok(())
    }

    /// The configuration a new cluster starts with (see `members`).
    pub fn bootstrap_membership(&self) -> crate::membership::Membership {
        let mut membership = crate::membership::Membership::with_voters(self.members.iter().copied());
        membership.addresses = self.member_addresses.clone();
        membership
    }
}
