//! One simulated run: N real `RaftCore`s, a simulated network and disk, crashes, restarts,
//! partitions, a client workload; everything driven by one seeded PRNG and one event queue
//! in simulated milliseconds. The same seed always replays the same run.

use crate::disk::Disk;
use crate::invariants::ClusterChecker;
use crate::linearizability::{HistoryLog, Outcome};
use crate::network::Network;
use crate::workload::{self, Client, OpKind};
use keel_core::{Config, LogIndex, Message, NodeId, RaftCore, ReadError, Ready, Role, SoftState, Term};
use keel_kv::{CommandResult, KvStore};
use keel_core::StateMachine;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::time::Duration;

pub const TICK_MS: u64 = 10;
const CLIENT_TIMEOUT_MS: u64 = 1_000;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub clients: usize,
    pub keys: usize,
    /// Faults are injected for this long, then the cluster heals and runs `quiet_ms` more.
    pub chaos_ms: u64,
    pub quiet_ms: u64,
    pub snapshot_threshold_entries: u64,
    pub linearizability_time_bound: Duration,
    /// The nemesis acts at random intervals in this range (milliseconds).
    pub nemesis_interval_ms: (u64, u64),
    /// Applied to every core after it is built; tests use it to switch on injected faults.
    pub configure_core: Option<fn(&mut RaftCore)>,
}

impl SimConfig {
    pub fn new(seed: u64, nodes: usize) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            clients: 4,
            keys: 3,
            chaos_ms: 20_000,
            quiet_ms: 5_000,
            snapshot_threshold_entries: 40,
            linearizability_time_bound: Duration::from_secs(20),
            nemesis_interval_ms: (200, 1_500),
            configure_core: None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub leaders_elected: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub snapshots_installed: u64,
    pub messages_delivered: u64,
    pub ops_checked: u64,
    pub ops_ok: u64,
    pub ops_unknown: u64,
    /// Leader writes left unsynced (`Ready::may_defer_sync`), and entries of such writes
    /// lost in a crash.
    pub deferred_writes: u64,
    pub unsynced_entries_lost: u64,
}

#[derive(Debug)]
enum Event {
    Tick { node: usize, epoch: u64 },
    Deliver(Message),
    DiskDone { node: usize, epoch: u64 },
    ClientArrive { node: usize, request: Request },
    ClientReply { client: usize, op_seq: u64, reply: Reply },
    ClientTimeout { client: usize, op_seq: u64 },
    ClientStart { client: usize },
    Nemesis,
    Restart { node: usize },
    CheckLogs,
    EndChaos,
}

#[derive(Clone, Debug)]
struct Request {
    client: usize,
    op_seq: u64,
    key: String,
    command: Option<keel_kv::Command>,
}

#[derive(Clone, Debug)]
enum Reply {
    Applied(CommandResult),
    Read(Option<Vec<u8>>),
    NotLeader(Option<NodeId>),
    /// Refused or overwritten: it will never take effect.
    NotApplied,
}

struct SimNode {
    core: Option<RaftCore>,
    store: KvStore,
    disk: Disk,
    inflight: Option<Ready>,
    /// Bumped on crash and restart, so events from a previous life are ignored.
    epoch: u64,
    proposals: BTreeMap<LogIndex, (Term, Request)>,
    reads: BTreeMap<u64, Request>,
    reads_waiting_apply: Vec<(LogIndex, Request)>,
    next_read_id: u64,
}

pub struct Simulation {
    config: SimConfig,
    rng: ChaCha8Rng,
    now_ms: u64,
    sequence: u64,
    queue: BTreeMap<(u64, u64), Event>,
    nodes: Vec<SimNode>,
    network: Network,
    clients: Vec<Client>,
    next_value: u32,
    history: HistoryLog,
    checker: ClusterChecker,
    stats: RunStats,
    chaos: bool,
    /// A leader the nemesis will crash once it has committed an entry it holds unsynced.
    crash_when_unsynced: Option<usize>,
    ok_after_heal: u64,
    /// Drawn per run: how many entries one AppendEntries may carry, and the slowest disk write.
    append_entries_max: usize,
    disk_latency_ms_max: u64,
}

fn node_id(index: usize) -> NodeId {
    NodeId(index as u64 + 1)
}

fn node_index(id: NodeId) -> usize {
    id.0 as usize - 1
}

impl Simulation {
    pub fn new(config: SimConfig) -> Simulation {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let network = Network::new(&mut rng);
        let append_entries_max = [1, 2, 8, 64][rng.gen_range(0..4)];
        let disk_latency_ms_max = [2, 10, 30][rng.gen_range(0..3)];
        let mut simulation = Simulation {
            nodes: Vec::new(),
            clients: (0..config.clients).map(|_| Client::new(rng.gen_range(0..config.nodes), config.keys)).collect(),
            network,
            rng,
            now_ms: 0,
            sequence: 0,
            queue: BTreeMap::new(),
            next_value: 0,
            history: HistoryLog::default(),
            checker: ClusterChecker::default(),
            stats: RunStats::default(),
            chaos: true,
            crash_when_unsynced: None,
            ok_after_heal: 0,
            append_entries_max,
            disk_latency_ms_max,
            config,
        };
        for index in 0..simulation.config.nodes {
            simulation.nodes.push(SimNode {
                core: None,
                store: KvStore::new(),
                disk: Disk::default(),
                inflight: None,
                epoch: 0,
                proposals: BTreeMap::new(),
                reads: BTreeMap::new(),
                reads_waiting_apply: Vec::new(),
                next_read_id: 0,
            });
            simulation.start_node(index);
        }
        for client in 0..simulation.config.clients {
            simulation.schedule(1, Event::ClientStart { client });
        }
        simulation.schedule(500, Event::Nemesis);
        simulation.schedule(500, Event::CheckLogs);
        simulation.schedule(simulation.config.chaos_ms, Event::EndChaos);
        simulation
    }

    fn schedule(&mut self, delay_ms: u64, event: Event) {
        self.sequence += 1;
        self.queue.insert((self.now_ms + delay_ms, self.sequence), event);
    }

    /// Runs to the end and checks everything. `Err` describes the first violation.
    pub fn run(mut self) -> Result<RunStats, String> {
        let end_ms = self.config.chaos_ms + self.config.quiet_ms;
        while let Some(((at, _), event)) = self.queue.pop_first() {
            if at > end_ms {
                break;
            }
            self.now_ms = at;
            self.handle(event)?;
        }
        self.finish()
    }

    /// Runs one event. Only node and invariant events can fail the run.
    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Tick { node, epoch } => return self.on_tick(node, epoch),
            Event::Deliver(message) => return self.on_deliver(message),
            Event::DiskDone { node, epoch } => return self.on_disk_done(node, epoch),
            Event::ClientArrive { node, request } => return self.on_client_arrive(node, request),
            Event::CheckLogs => return self.on_check_logs(),
            Event::ClientReply { client, op_seq, reply } => self.on_client_reply(client, op_seq, reply),
            Event::ClientTimeout { client, op_seq } => self.on_client_timeout(client, op_seq),
            Event::ClientStart { client } => self.on_client_start(client),
            Event::Nemesis => self.on_nemesis(),
            Event::Restart { node } => self.start_node(node),
            Event::EndChaos => self.on_end_chaos(),
        }
        Ok(())
    }

    // ----- nodes ----------------------------------------------------------------------------

    fn core_config(&self, index: usize) -> Config {
        let members = (0..self.config.nodes).map(node_id).collect();
        let mut config = Config::new(node_id(index), members);
        config.election_timeout_ticks_min = 10;
        config.heartbeat_interval_ticks = 2;
        config.append_entries_max = self.append_entries_max;
        config.inflight_messages_max = 4;
        config.snapshot_chunk_bytes_max = 64;
        config.uncommitted_entries_max = 256;
        config.random_seed = self.config.seed.wrapping_mul(1_000_003).wrapping_add(index as u64 * 7919 + self.nodes[index].epoch);
        config
    }

    /// Boots (or reboots) a node from what its disk holds.
    fn start_node(&mut self, index: usize) {
        if self.nodes[index].core.is_some() {
            return;
        }
        let config = self.core_config(index);
        let node = &mut self.nodes[index];
        node.epoch += 1;
        node.store = KvStore::new();
        if let Some(snapshot) = &node.disk.snapshot {
            node.store.restore(&snapshot.data).expect("the simulator's snapshots are valid");
        }
        let mut core = RaftCore::new(config, node.disk.restored());
        if let Some(configure) = self.config.configure_core {
            configure(&mut core);
        }
        node.core = Some(core);
        let epoch = node.epoch;
        let phase = self.rng.gen_range(1..=TICK_MS);
        self.schedule(phase, Event::Tick { node: index, epoch });
    }

    fn crash_node(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if node.core.take().is_none() {
            return;
        }
        node.epoch += 1;
        node.inflight = None; // The write in progress never reached the platter.
        let kept = self.rng.gen_range(0..=node.disk.unsynced_entries());
        self.stats.unsynced_entries_lost += node.disk.crash(kept) as u64;
        node.proposals.clear();
        node.reads.clear();
        node.reads_waiting_apply.clear();
        self.stats.crashes += 1;
    }

    fn on_tick(&mut self, index: usize, epoch: u64) -> Result<(), String> {
        let node = &mut self.nodes[index];
        if node.epoch != epoch {
            return Ok(());
        }
        let Some(core) = node.core.as_mut() else { return Ok(()) };
        core.tick();
        self.schedule(TICK_MS, Event::Tick { node: index, epoch });
        self.drive(index)
    }

    fn on_deliver(&mut self, message: Message) -> Result<(), String> {
        let index = node_index(message.to);
        let Some(core) = self.nodes[index].core.as_mut() else { return Ok(()) };
        self.stats.messages_delivered += 1;
        core.step(message).map_err(|error| format!("step refused a cluster message: {error}"))?;
        self.drive(index)
    }

    fn send(&mut self, message: Message) {
        let (from, to) = (node_index(message.from), node_index(message.to));
        for delay in self.network.deliveries(&mut self.rng, from, to) {
            self.schedule(delay, Event::Deliver(message.clone()));
        }
    }

    /// Driver contract steps 2–3: take a Ready, send the early messages, start the disk write;
    /// while a write runs, send the leader's replication messages built since.
    fn drive(&mut self, index: usize) -> Result<(), String> {
        if self.crash_when_unsynced == Some(index) && self.commits_unsynced(index) && self.may_crash_one_more() {
            self.crash_when_unsynced = None;
            self.crash_node(index);
            self.schedule_restart(index);
            return Ok(());
        }
        let node = &mut self.nodes[index];
        let Some(core) = node.core.as_mut() else { return Ok(()) };
        if node.inflight.is_some() {
            for message in core.take_early_messages() {
                self.send(message);
            }
            return Ok(());
        }
        if !core.has_ready() {
            return Ok(());
        }
        let mut ready = core.ready();
        if let Some(soft_state) = ready.soft_state {
            self.on_soft_state(index, soft_state)?;
        }
        for message in std::mem::take(&mut ready.messages) {
            self.send(message);
        }
        let node = &mut self.nodes[index];
        node.inflight = Some(ready);
        let epoch = node.epoch;
        let latency_ms = self.rng.gen_range(1..=self.disk_latency_ms_max);
        self.schedule(latency_ms, Event::DiskDone { node: index, epoch });
        Ok(())
    }

    fn on_soft_state(&mut self, index: usize, soft_state: SoftState) -> Result<(), String> {
        if soft_state.role != Role::Leader {
            return Ok(());
        }
        self.stats.leaders_elected += 1;
        let core = self.nodes[index].core.as_ref().expect("a live node");
        self.checker.on_leader(core, soft_state.term)
    }

    /// Driver contract steps 4–8, once the write is durable.
    fn on_disk_done(&mut self, index: usize, epoch: u64) -> Result<(), String> {
        if self.nodes[index].epoch != epoch {
            return Ok(());
        }
        let Some(mut ready) = self.nodes[index].inflight.take() else { return Ok(()) };
        self.persist(index, &ready)?;
        for message in std::mem::take(&mut ready.persisted_messages) {
            self.send(message);
        }
        for entry in std::mem::take(&mut ready.committed_entries) {
            self.apply(index, &entry)?;
        }
        for read_state in std::mem::take(&mut ready.read_states) {
            self.on_read_state(index, read_state.request_id, read_state.result);
        }
        self.nodes[index].core.as_mut().expect("a live node").advance(ready);
        self.maybe_snapshot(index);
        self.serve_reads(index);
        self.drive(index)
    }

    fn persist(&mut self, index: usize, ready: &Ready) -> Result<(), String> {
        let node = &mut self.nodes[index];
        if let Some(snapshot) = &ready.snapshot {
            self.checker.on_snapshot(snapshot, &node.store)?;
            node.disk.install_snapshot(snapshot);
            node.store.restore(&snapshot.data).map_err(|error| format!("node {} restore: {error}", index + 1))?;
            node.proposals.retain(|at, _| *at > snapshot.meta.last_included_index);
            self.stats.snapshots_installed += 1;
        }
        node.disk.append(&ready.entries);
        if let Some(hard_state) = ready.hard_state {
            node.disk.set_hard_state(hard_state);
        }
        if !ready.may_defer_sync {
            node.disk.sync();
        } else if !ready.entries.is_empty() {
            self.stats.deferred_writes += 1;
        }
        Ok(())
    }

    fn apply(&mut self, index: usize, entry: &keel_core::Entry) -> Result<(), String> {
        self.checker.on_apply(index, entry)?;
        let node = &mut self.nodes[index];
        let result = node.store.apply(entry);
        if let Some((term, request)) = node.proposals.remove(&entry.index) {
            let reply = if term == entry.term { Reply::Applied(result) } else { Reply::NotApplied };
            self.reply(request, reply);
        }
        Ok(())
    }

    fn maybe_snapshot(&mut self, index: usize) {
        let threshold = self.config.snapshot_threshold_entries;
        let node = &mut self.nodes[index];
        let core = node.core.as_mut().expect("a live node");
        let applied = node.store.applied_index();
        if threshold == 0 || applied.0 < core.status().snapshot_index.0 + threshold {
            return;
        }
        let data = node.store.snapshot();
        let term = core.entry(applied).expect("applied entry in the log").term;
        let meta = keel_core::SnapshotMeta { last_included_index: applied, last_included_term: term };
        node.disk.compact(keel_core::Snapshot { meta, data: std::sync::Arc::new(data.clone()) });
        core.compact(applied, data);
    }

    // ----- clients --------------------------------------------------------------------------

    fn on_client_arrive(&mut self, index: usize, request: Request) -> Result<(), String> {
        let node = &mut self.nodes[index];
        let Some(core) = node.core.as_mut() else { return Ok(()) }; // Lost with the node.
        match &request.command {
            Some(command) => match core.propose(command.encode().expect("valid command")) {
                Ok((at, term)) => {
                    node.proposals.insert(at, (term, request));
                }
                Err(keel_core::ProposeError::NotLeader { leader_hint }) => self.reply(request, Reply::NotLeader(leader_hint)),
                Err(keel_core::ProposeError::TooManyUncommitted) => self.reply(request, Reply::NotApplied),
            },
            None => {
                node.next_read_id += 1;
                let read_id = node.next_read_id;
                match core.read_index(read_id) {
                    Ok(()) => {
                        node.reads.insert(read_id, request);
                    }
                    Err(ReadError::NotLeader { leader_hint }) => self.reply(request, Reply::NotLeader(leader_hint)),
                    Err(ReadError::LeadershipLost | ReadError::TooManyPending) => self.reply(request, Reply::NotApplied),
                }
            }
        }
        self.drive(index)
    }

    fn on_read_state(&mut self, index: usize, request_id: u64, result: Result<LogIndex, ReadError>) {
        let Some(request) = self.nodes[index].reads.remove(&request_id) else { return };
        match result {
            Ok(read_index) => self.nodes[index].reads_waiting_apply.push((read_index, request)),
            Err(_) => self.reply(request, Reply::NotApplied),
        }
    }

    /// Contract step 7: a confirmed read is served once applied ≥ its read index.
    fn serve_reads(&mut self, index: usize) {
        let applied = self.nodes[index].store.applied_index();
        let waiting = std::mem::take(&mut self.nodes[index].reads_waiting_apply);
        let (ready, still_waiting): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|(at, _)| *at <= applied);
        self.nodes[index].reads_waiting_apply = still_waiting;
        for (_, request) in ready {
            let value = self.nodes[index].store.get(&request.key).map(<[u8]>::to_vec);
            self.reply(request, Reply::Read(value));
        }
    }

    fn reply(&mut self, request: Request, reply: Reply) {
        let delay = self.rng.gen_range(1..=3);
        self.schedule(delay, Event::ClientReply { client: request.client, op_seq: request.op_seq, reply });
    }

    fn on_client_start(&mut self, client_index: usize) {
        if self.now_ms + CLIENT_TIMEOUT_MS + 500 > self.config.chaos_ms + self.config.quiet_ms {
            return; // Let every operation finish before the end.
        }
        let op = workload::next_op(&mut self.rng, &self.clients[client_index], self.config.keys, &mut self.next_value, self.now_ms);
        let client = &mut self.clients[client_index];
        client.op_seq += 1;
        let request = Request { client: client_index, op_seq: client.op_seq, key: op.key.clone(), command: workload::command_for(&op) };
        client.current = Some(op);
        let (target, op_seq) = (client.target, client.op_seq);
        let delay = self.rng.gen_range(1..=3);
        self.schedule(delay, Event::ClientArrive { node: target, request });
        self.schedule(CLIENT_TIMEOUT_MS, Event::ClientTimeout { client: client_index, op_seq });
    }

    fn on_client_reply(&mut self, client_index: usize, op_seq: u64, reply: Reply) {
        let client = &mut self.clients[client_index];
        if client.op_seq != op_seq {
            return;
        }
        let Some(op) = client.current.take() else { return };
        let key = op.key.trim_start_matches("key-").parse::<usize>().expect("simulator key");
        let now = Some(self.now_ms);
        let record = match reply {
            Reply::Read(value) => {
                let value = value.map(|bytes| workload::decode_value(&bytes));
                client.last_seen[key] = value;
                Some(workload::record(client_index, &op, now, Outcome::Ok, value))
            }
            Reply::Applied(CommandResult::Cas { succeeded, current }) => {
                let outcome = if succeeded { Outcome::Ok } else { Outcome::Failed };
                client.last_seen[key] = match (&op.kind, succeeded) {
                    (OpKind::Cas { new, .. }, true) => Some(*new),
                    _ => current.map(|bytes| workload::decode_value(&bytes)),
                };
                Some(workload::record(client_index, &op, now, outcome, None))
            }
            Reply::Applied(_) => {
                if let OpKind::Write(value) = op.kind {
                    client.last_seen[key] = value;
                }
                Some(workload::record(client_index, &op, now, Outcome::Ok, None))
            }
            Reply::NotLeader(hint) => {
                client.target = hint.map(node_index).unwrap_or_else(|| self.rng.gen_range(0..self.config.nodes));
                None
            }
            Reply::NotApplied => {
                client.target = self.rng.gen_range(0..self.config.nodes);
                None
            }
        };
        if let Some(record) = record {
            self.stats.ops_ok += 1;
            if !self.chaos {
                self.ok_after_heal += 1;
            }
            self.history.record(&op.key, record);
        }
        let think_ms = self.rng.gen_range(0..=10);
        self.schedule(think_ms, Event::ClientStart { client: client_index });
    }

    /// No answer in time: a write may or may not have happened; a read is simply dropped.
    fn on_client_timeout(&mut self, client_index: usize, op_seq: u64) {
        let client = &mut self.clients[client_index];
        if client.op_seq != op_seq {
            return;
        }
        let Some(op) = client.current.take() else { return };
        self.abandon(client_index, &op);
        self.clients[client_index].target = self.rng.gen_range(0..self.config.nodes);
        self.schedule(1, Event::ClientStart { client: client_index });
    }

    fn abandon(&mut self, client_index: usize, op: &workload::PendingOp) {
        if matches!(op.kind, OpKind::Read) {
            return;
        }
        self.stats.ops_unknown += 1;
        let record = workload::record(client_index, op, None, Outcome::Unknown, None);
        self.history.record(&op.key, record);
    }

    // ----- faults ---------------------------------------------------------------------------

    fn on_nemesis(&mut self) {
        if !self.chaos {
            return;
        }
        let n = self.config.nodes;
        let roll = self.rng.gen_range(0..100);
        if roll < 25 {
            let mut order: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                order.swap(i, self.rng.gen_range(0..=i));
            }
            let minority = self.rng.gen_range(1..=n / 2);
            self.network.partition(&order[..minority], &order[minority..]);
            self.stats.partitions += 1;
        } else if roll < 40 {
            // Non-transitive: a and b cannot talk, but both talk to everyone else.
            let a = self.rng.gen_range(0..n);
            let b = (a + self.rng.gen_range(1..n)) % n;
            self.network.partition(&[a], &[b]);
            self.stats.partitions += 1;
        } else if roll < 45 {
            let a = self.rng.gen_range(0..n);
            let b = (a + self.rng.gen_range(1..n)) % n;
            self.network.block(a, b);
            self.stats.partitions += 1;
        } else if roll < 65 {
            self.network.heal();
        } else if roll < 88 {
            self.crash_random_node();
        } else {
            for node in 0..n {
                self.start_node(node);
            }
        }
        let (low, high) = self.config.nemesis_interval_ms;
        let next = self.rng.gen_range(low..=high);
        self.schedule(next, Event::Nemesis);
    }

    /// The node's commit index covers an entry its disk holds unsynced: the moment a crash
    /// tests that commits never rest on a leader's unsynced copy.
    fn commits_unsynced(&self, index: usize) -> bool {
        let node = &self.nodes[index];
        let (Some(core), Some(first_unsynced)) = (&node.core, node.disk.first_unsynced_index()) else { return false };
        core.status().commit_index >= first_unsynced
    }

    /// Fewer than half the nodes are down.
    fn may_crash_one_more(&self) -> bool {
        let crashed = self.nodes.iter().filter(|node| node.core.is_none()).count();
        crashed < self.config.nodes.div_ceil(2)
    }

    fn crash_random_node(&mut self) {
        let live: Vec<usize> = (0..self.config.nodes).filter(|i| self.nodes[*i].core.is_some()).collect();
        if !self.may_crash_one_more() {
            return;
        }
        // Half the time the victim is a leader: leader crashes make the interesting histories
        // (Figure 8 of the paper is a sequence of them).
        let leaders: Vec<usize> = live.iter().copied().filter(|i| self.nodes[*i].core.as_ref().is_some_and(|core| core.role() == Role::Leader)).collect();
        let victim = if !leaders.is_empty() && self.rng.gen_bool(0.5) { leaders[self.rng.gen_range(0..leaders.len())] } else { live[self.rng.gen_range(0..live.len())] };
        // A leader holds unsynced writes only for moments (`Ready::may_defer_sync`): half
        // the time, wait until it has committed one, so crashes that lose such entries are
        // common, not rare.
        if leaders.contains(&victim) && self.rng.gen_bool(0.5) {
            self.crash_when_unsynced = Some(victim);
            return;
        }
        self.crash_node(victim);
        self.schedule_restart(victim);
    }

    fn schedule_restart(&mut self, node: usize) {
        let downtime = self.rng.gen_range(100..=3_000);
        self.schedule(downtime, Event::Restart { node });
    }

    fn on_end_chaos(&mut self) {
        self.chaos = false;
        self.crash_when_unsynced = None;
        self.network.heal();
        self.network.loss_percent = 0;
        self.network.duplicate_percent = 0;
        for node in 0..self.config.nodes {
            self.start_node(node);
        }
    }

    fn on_check_logs(&mut self) -> Result<(), String> {
        let cores: Vec<&RaftCore> = self.nodes.iter().filter_map(|node| node.core.as_ref()).collect();
        self.checker.check_log_matching(&cores)?;
        self.schedule(500, Event::CheckLogs);
        Ok(())
    }

    /// Liveness after healing: with the network whole and every node up for the quiet
    /// period, every node must have applied everything the most advanced one applied.
    fn check_convergence(&self) -> Result<(), String> {
        let applied: Vec<LogIndex> = self.nodes.iter().map(|node| node.store.applied_index()).collect();
        let highest = applied.iter().max().copied().unwrap_or_default();
        if applied.iter().any(|index| *index != highest) {
            return Err(format!("nodes did not converge {} ms after healing: applied indexes {applied:?}", self.config.quiet_ms));
        }
        Ok(())
    }

    fn finish(mut self) -> Result<RunStats, String> {
        for client_index in 0..self.clients.len() {
            if let Some(op) = self.clients[client_index].current.take() {
                self.abandon(client_index, &op);
            }
        }
        let cores: Vec<&RaftCore> = self.nodes.iter().filter_map(|node| node.core.as_ref()).collect();
        self.checker.check_log_matching(&cores)?;
        self.check_convergence()?;
        if self.ok_after_heal == 0 {
            return Err(format!("no client operation succeeded in the {} ms after the cluster healed", self.config.quiet_ms));
        }
        self.history.check(self.config.linearizability_time_bound)?;
        self.stats.ops_checked = self.history.operation_count() as u64;
        Ok(self.stats)
    }
}
