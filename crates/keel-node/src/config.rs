//! A node's settings in real-time units; converted to the core's ticks here.

use keel_core::NodeId;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// The first configuration's voters (see `keel_core::Config::members`): empty for a
    /// node that starts to join a running cluster.
    pub members: Vec<NodeId>,
    /// Where they listen (`keel_core::Config::member_addresses`).
    pub member_addresses: std::collections::BTreeMap<NodeId, String>,
    /// One core tick per `tick_ms` of real time.
    pub tick_ms: u64,
    pub heartbeat_ms: u64,
    /// Minimum election timeout; each election waits a random time in `[min, 2 * min)`.
    pub election_timeout_ms: u64,
    /// Take a snapshot once this many entries were applied since the last one; 0 disables.
    pub snapshot_threshold_entries: u64,
    /// ... or once the entries applied since the last one hold this many bytes, so a log of
    /// large values is compacted before it fills memory; 0 disables.
    pub snapshot_threshold_bytes: u64,
    pub snapshot_chunk_bytes_max: usize,
    /// InstallSnapshot bytes in flight to one follower beyond what it acknowledged.
    pub snapshot_window_bytes_max: usize,
    /// Client requests queued for the driver before new ones are refused.
    pub requests_queued_max: usize,
    /// Peer messages queued for the driver before new ones are dropped.
    pub inbox_messages_max: usize,
    pub append_entries_max: usize,
    pub append_bytes_max: usize,
    pub inflight_messages_max: usize,
    pub uncommitted_entries_max: usize,
    /// See the fields of the same names in `keel_core::Config`.
    pub uncommitted_bytes_max: usize,
    pub committed_entries_per_ready_max: usize,
    pub committed_bytes_per_ready_max: usize,
    pub snapshot_bytes_max: u64,
    /// Seeds the election-timeout PRNG; `None` derives one from the clock and the node id.
    /// Tests set it so a run replays exactly.
    pub random_seed: Option<u64>,
    /// Give the node a storage thread for a leader's synced writes and for compactions
    /// (production; see the module doc of `node.rs`). Tests on paused tokio time set it
    /// false so every job completes inline and the clock cannot jump while a thread is
    /// busy; the completion path is the same.
    pub storage_on_thread: bool,
    /// See `keel_core::Config::defer_leader_sync`.
    pub defer_leader_sync: bool,
}

impl NodeConfig {
    pub fn new(id: NodeId, members: Vec<NodeId>) -> NodeConfig {
        NodeConfig {
            id,
            members,
            member_addresses: std::collections::BTreeMap::new(),
            tick_ms: 10,
            heartbeat_ms: 50,
            election_timeout_ms: 300,
            snapshot_threshold_entries: 10_000,
            snapshot_threshold_bytes: 64 << 20,
            snapshot_chunk_bytes_max: 1 << 20,
            snapshot_window_bytes_max: 4 << 20,
            requests_queued_max: 16_384,
            inbox_messages_max: 16_384,
            append_entries_max: 1024,
            append_bytes_max: 4 << 20,
            inflight_messages_max: 64,
            uncommitted_entries_max: 65_536,
            uncommitted_bytes_max: 64 << 20,
            committed_entries_per_ready_max: 4096,
            committed_bytes_per_ready_max: 16 << 20,
            snapshot_bytes_max: 1 << 30,
            random_seed: None,
            storage_on_thread: true,
            defer_leader_sync: true,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.tick_ms == 0 || self.heartbeat_ms < self.tick_ms || self.election_timeout_ms < 2 * self.heartbeat_ms {
            return Err(format!(
                "timing must satisfy 0 < tick ({} ms) <= heartbeat ({} ms) and election timeout ({} ms) >= 2 x heartbeat",
                self.tick_ms, self.heartbeat_ms, self.election_timeout_ms
            ));
        }
        if self.requests_queued_max == 0 || self.inbox_messages_max == 0 {
            return Err("queue limits must be at least 1".into());
        }
        self.core_config().validate()
    }

    pub fn core_config(&self) -> keel_core::Config {
        let mut config = keel_core::Config::new(self.id, self.members.clone());
        config.member_addresses = self.member_addresses.clone();
        config.heartbeat_interval_ticks = (self.heartbeat_ms / self.tick_ms).max(1) as u32;
        config.election_timeout_ticks_min = (self.election_timeout_ms / self.tick_ms) as u32;
        config.append_entries_max = self.append_entries_max;
        config.append_bytes_max = self.append_bytes_max;
        config.inflight_messages_max = self.inflight_messages_max;
        config.snapshot_chunk_bytes_max = self.snapshot_chunk_bytes_max;
        config.snapshot_window_bytes_max = self.snapshot_window_bytes_max;
        config.uncommitted_entries_max = self.uncommitted_entries_max;
        config.uncommitted_bytes_max = self.uncommitted_bytes_max;
        config.committed_entries_per_ready_max = self.committed_entries_per_ready_max;
        config.committed_bytes_per_ready_max = self.committed_bytes_per_ready_max;
        config.snapshot_bytes_max = self.snapshot_bytes_max;
        config.defer_leader_sync = self.defer_leader_sync;
        // Different per node and per process start, so nodes don't time out in lockstep.
        let clock_seed = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        config.random_seed = self.random_seed.unwrap_or_else(clock_seed) ^ self.id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        config
    }
}
