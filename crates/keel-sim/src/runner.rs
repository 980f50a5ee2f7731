//! One simulated run: N nodes, each the production driver (`keel_node::Executor`) over a
//! simulated `Io` (`io.rs`), a simulated network, crashes, restarts, partitions and a client
//! workload; everything driven by one seeded PRNG and one event queue in simulated
//! milliseconds. The same seed always replays the same run, event for event: `RunStats`
//! carries a hash of every event handled (`trace_hash`).
//!
//! Every input a node gets goes through `input`: feed it to the executor, `drive`, then
//! turn what the executor asked of its `SimIo` into events (`flush`): messages that leave
//! after a sync, the sync's end, the storage thread's and snapshot threads' completions,
//! client replies. While a node's driver is blocked in an inline sync (`busy_until_ms`), its
//! inputs wait, as they would in the channels of a blocked tokio task.

mod membership;

use crate::io::{Reply, Request, Shared, SimIo};
use crate::linearizability::{CheckFailure, HistoryLog, Outcome};
use crate::network::Network;
use crate::trace::{self, StepKind, Tracer};
use crate::workload::{self, Client, OpKind};
use keel_core::{LogIndex, Message, NodeId, RaftCore, Role, StateMachine};
use keel_kv::{CommandResult, KvStore};
use keel_node::{Consistency, DurablePoint, Executor, MemoryStorage, NodeConfig, Storage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::rc::Rc;

pub const TICK_MS: u64 = 10;
const CLIENT_TIMEOUT_MS: u64 = 1_000;

/// The production executor, as the simulator runs it.
pub type SimExecutor = Executor<KvStore, SimIo>;

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
    /// Search steps the linearizability check of one key may take (a budget, not a clock,
    /// so a seed's verdict depends on the seed alone). Running out is "inconclusive".
    pub linearizability_steps_max: u64,
    /// The nemesis acts at random intervals in this range (milliseconds).
    pub nemesis_interval_ms: (u64, u64),
    /// Membership changes and leadership transfers among the faults (`membership.rs`).
    pub membership_nemesis: bool,
    /// Applied to every executor after it is built; tests use it to switch on injected
    /// faults of the core (`core_mut().faults`) or of the driver (`faults`), which exist when
    /// keel-node's `fault-injection` feature is on.
    pub inject: Option<fn(&mut SimExecutor)>,
    /// Record every step up to this simulated time for the replay page (`trace.rs`).
    pub trace_until_ms: Option<u64>,
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
            linearizability_steps_max: crate::linearizability::STEPS_MAX_DEFAULT,
            nemesis_interval_ms: (200, 1_500),
            membership_nemesis: true,
            inject: None,
            trace_until_ms: None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub leaders_elected: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub snapshots_installed: u64,
    /// Snapshots a node built of its own state (on a simulated snapshot thread).
    pub snapshots_built: u64,
    /// Jobs the simulated storage thread ran (leader writes, compactions).
    pub thread_jobs: u64,
    pub messages_delivered: u64,
    pub ops_checked: u64,
    pub ops_ok: u64,
    pub ops_unknown: u64,
    /// Leader writes left unsynced (`Ready::may_defer_sync`), and entries lost in crashes
    /// because they were not synced yet.
    pub deferred_writes: u64,
    pub unsynced_entries_lost: u64,
    /// The linearizability checker's search steps, summed over keys.
    pub check_steps: u64,
    /// Membership changes (thesis ch. 4) and leadership transfers (§3.10).
    pub config_changes_proposed: u64,
    pub config_changes_committed: u64,
    pub learners_promoted: u64,
    pub leaders_removed: u64,
    pub transfers_asked: u64,
    pub transfers_completed: u64,
    pub nodes_added: u64,
    pub nodes_retired: u64,
    /// A hash of every event the run handled, in order: two runs of one seed must agree.
    pub trace_hash: u64,
}

/// Why a seed failed. "Inconclusive" is a failure too, reported apart: the check ran out of
/// steps, so nothing is known either way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A safety or liveness check, or a node that stopped.
    Violation(String),
    NotLinearizable(String),
    Inconclusive(String),
    Panic(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Violation(problem) => f.write_str(problem),
            Failure::NotLinearizable(problem) => write!(f, "not linearizable: {problem}"),
            Failure::Inconclusive(problem) => write!(f, "inconclusive: {problem}"),
            Failure::Panic(problem) => write!(f, "panic: {problem}"),
        }
    }
}

impl From<String> for Failure {
    fn from(problem: String) -> Failure {
        Failure::Violation(problem)
    }
}

#[derive(Debug, Hash)]
enum Event {
    Tick { node: usize, epoch: u64 },
    Deliver(Message),
    /// A message leaves `node`'s driver once the sync it was sent after has ended.
    Send { node: usize, epoch: u64, message: Message },
    /// A sync of `node`'s driver ends: what it covered is durable.
    SyncDone { node: usize, epoch: u64, point: DurablePoint },
    /// The storage thread finishes the oldest job in its queue.
    ThreadJobDone { node: usize, epoch: u64 },
    /// A snapshot thread finishes the oldest image being built.
    SnapshotBuilt { node: usize, epoch: u64 },
    ClientArrive { node: usize, request: Request },
    ClientReply { client: usize, op_seq: u64, reply: Reply },
    ClientTimeout { client: usize, op_seq: u64 },
    ClientStart { client: usize },
    Nemesis,
    Restart { node: usize },
    CheckLogs,
    EndChaos,
}

impl Event {
    /// The node this event is an input to, if it waits while that node's driver is busy.
    fn input_to(&self) -> Option<usize> {
        match self {
            Event::Tick { node, .. } | Event::ThreadJobDone { node, .. } | Event::SnapshotBuilt { node, .. } | Event::ClientArrive { node, .. } => Some(*node),
            Event::Deliver(message) => Some(node_index(message.to)),
            _ => None,
        }
    }
}

struct SimNode {
    executor: Option<SimExecutor>,
    /// A crashed node's storage, until it restarts.
    disk: Option<MemoryStorage>,
    /// Bumped on crash and restart, so events from a previous life are ignored.
    epoch: u64,
    /// The driver is blocked in an inline sync until then (or while a sync is pending).
    busy_until_ms: u64,
    pending_syncs: usize,
    /// When the storage thread finishes the jobs queued so far.
    thread_free_at_ms: u64,
    /// Removed from the cluster (or never added): stopped for good.
    retired: bool,
    /// A node started empty to join: when it started (it is retired if it is still not a
    /// member after `membership::JOIN_TIMEOUT_MS`).
    joining_since_ms: Option<u64>,
}

impl SimNode {
    fn new(joining_since_ms: Option<u64>) -> SimNode {
        SimNode { executor: None, disk: None, epoch: 0, busy_until_ms: 0, pending_syncs: 0, thread_free_at_ms: 0, retired: false, joining_since_ms }
    }
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
    shared: Rc<RefCell<Shared>>,
    stats: RunStats,
    trace: DefaultHasher,
    chaos: bool,
    /// A leader the nemesis will crash once it has committed an entry it holds unsynced.
    crash_when_unsynced: Option<usize>,
    ok_after_heal: u64,
    /// Drawn per run: how many entries one AppendEntries may carry, the slowest disk write,
    /// and whether snapshots also trigger on bytes.
    append_entries_max: usize,
    disk_latency_ms_max: u64,
    snapshot_threshold_bytes: u64,
    /// `SimConfig::trace_until_ms`: shared with `run_seed_traced`, which keeps it if the run
    /// panics.
    tracer: Option<Rc<RefCell<Tracer>>>,
}

/// The trace of a run that failed before its first step.
pub fn empty_trace(seed: u64, nodes: usize, until_ms: u64, outcome: &str) -> serde_json::Value {
    Tracer::new(until_ms).finish(seed, nodes, outcome)
}

/// How a step of the trace names the event it handles.
fn describe(event: &Event) -> StepKind {
    let (kind, node, text) = match event {
        Event::Tick { node, .. } => ("tick", Some(*node), format!("node {} ticks", node + 1)),
        Event::Deliver(message) => ("deliver", Some(node_index(message.to)), trace::describe_message(message)),
        Event::Send { node, .. } => ("internal", Some(*node), format!("node {}: a message leaves after its sync", node + 1)),
        Event::SyncDone { node, .. } => ("internal", Some(*node), format!("node {}: disk sync done", node + 1)),
        Event::ThreadJobDone { node, .. } => ("internal", Some(*node), format!("node {}: storage thread job done", node + 1)),
        Event::SnapshotBuilt { node, .. } => ("internal", Some(*node), format!("node {}: snapshot image written", node + 1)),
        Event::ClientArrive { node, request } => ("client", Some(*node), format!("client request at node {}: {request:?}", node + 1)),
        Event::ClientReply { client, reply, .. } => ("client", None, format!("client {client} answered: {reply:?}")),
        Event::ClientTimeout { client, .. } => ("client", None, format!("client {client} gave up waiting")),
        Event::ClientStart { .. } | Event::CheckLogs => ("internal", None, String::new()),
        Event::Nemesis => ("nemesis", None, "nemesis".to_string()),
        Event::Restart { node } => ("restart", Some(*node), format!("node {} restarts", node + 1)),
        Event::EndChaos => ("nemesis", None, "end of chaos: network healed, every node up".to_string()),
    };
    StepKind { kind, node, text }
}

fn node_id(index: usize) -> NodeId {
    NodeId(index as u64 + 1)
}

fn node_index(id: NodeId) -> usize {
    id.0 as usize - 1
}

impl Simulation {
    pub fn new(config: SimConfig) -> Result<Simulation, Failure> {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let network = Network::new(&mut rng);
        let append_entries_max = [1, 2, 8, 64][rng.gen_range(0..4)];
        let disk_latency_ms_max = [2, 10, 30][rng.gen_range(0..3)];
        let snapshot_threshold_bytes = [0, 1_000][rng.gen_range(0..2)];
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
            shared: Rc::default(),
            stats: RunStats::default(),
            trace: DefaultHasher::new(),
            chaos: true,
            crash_when_unsynced: None,
            ok_after_heal: 0,
            append_entries_max,
            disk_latency_ms_max,
            snapshot_threshold_bytes,
            tracer: config.trace_until_ms.map(|until_ms| Rc::new(RefCell::new(Tracer::new(until_ms)))),
            config,
        };
        if simulation.tracer.is_some() {
            simulation.shared.borrow_mut().trace_events = Some(Vec::new());
        }
        for index in 0..simulation.config.nodes {
            simulation.nodes.push(SimNode::new(None));
            simulation.start_node(index)?;
        }
        for client in 0..simulation.config.clients {
            simulation.schedule(1, Event::ClientStart { client });
        }
        simulation.schedule(500, Event::Nemesis);
        simulation.schedule(500, Event::CheckLogs);
        simulation.schedule(simulation.config.chaos_ms, Event::EndChaos);
        Ok(simulation)
    }

    fn schedule(&mut self, delay_ms: u64, event: Event) {
        self.schedule_at(self.now_ms + delay_ms, event);
    }

    fn schedule_at(&mut self, at_ms: u64, event: Event) {
        self.sequence += 1;
        self.queue.insert((at_ms, self.sequence), event);
    }

    /// Runs to the end and checks everything; the first violation is the error.
    pub fn run(mut self) -> Result<RunStats, Failure> {
        /// Far more events than any simulated millisecond holds; more means the run makes
        /// no progress in time (a livelock), which is a failure to report, not a hang.
        const EVENTS_PER_MS_MAX: u64 = 1_000_000;
        let end_ms = self.config.chaos_ms + self.config.quiet_ms;
        let mut events_this_ms = (0, 0);
        while let Some(((at, _), event)) = self.queue.pop_first() {
            if at > end_ms {
                break;
            }
            events_this_ms = if at == events_this_ms.0 { (at, events_this_ms.1 + 1) } else { (at, 1) };
            if events_this_ms.1 > EVENTS_PER_MS_MAX {
                return Err(Failure::Violation(format!("livelock: over {EVENTS_PER_MS_MAX} events at {at} ms, the last {event:?}")));
            }
            self.now_ms = at;
            if let Some(node) = event.input_to().filter(|node| self.is_busy(*node)) {
                let until = self.nodes[node].busy_until_ms.max(at);
                self.schedule_at(until, event);
                continue;
            }
            at.hash(&mut self.trace);
            event.hash(&mut self.trace);
            let step = self.tracer.as_ref().filter(|tracer| tracer.borrow().is_recording(at)).map(|_| describe(&event));
            let result = self.handle(event);
            if let Some(mut step) = step {
                if let Err(problem) = &result {
                    step.text = format!("{} — FAILED: {problem}", step.text);
                }
                self.record_step(step);
            }
            result?;
        }
        self.finish()
    }

    /// The tracer, to take the trace from after the run (`run_seed_traced`).
    pub fn tracer(&self) -> Option<Rc<RefCell<Tracer>>> {
        self.tracer.clone()
    }

    fn record_step(&mut self, step: StepKind) {
        let Some(tracer) = &self.tracer else { return };
        let events = self.shared.borrow_mut().trace_events.as_mut().map(std::mem::take).unwrap_or_default();
        let views = self.nodes.iter().map(|node| trace::view(node.executor.as_ref().map(Executor::core))).collect();
        tracer.borrow_mut().record(self.now_ms, step, events, views, self.network.blocked());
    }

    /// A node's driver is blocked in an inline sync. (A node that is down has no driver:
    /// its inputs are dropped when handled, never held back.)
    fn is_busy(&self, node: usize) -> bool {
        let node = &self.nodes[node];
        node.executor.is_some() && (self.now_ms < node.busy_until_ms || node.pending_syncs > 0)
    }

    /// Runs one event. Only node, invariant and restart events can fail the run.
    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Tick { node, epoch } => return self.on_tick(node, epoch),
            Event::Deliver(message) => return self.on_deliver(message),
            Event::Send { node, epoch, message } => {
                if self.nodes[node].epoch == epoch {
                    self.transmit(message);
                }
            }
            Event::SyncDone { node, epoch, point } => self.on_sync_done(node, epoch, point),
            Event::ThreadJobDone { node, epoch } => return self.on_thread_job_done(node, epoch),
            Event::SnapshotBuilt { node, epoch } => return self.on_snapshot_built(node, epoch),
            Event::ClientArrive { node, request } => return self.on_client_arrive(node, request),
            Event::CheckLogs => return self.on_check_logs(),
            Event::ClientReply { client, op_seq, reply } => self.on_client_reply(client, op_seq, reply),
            Event::ClientTimeout { client, op_seq } => self.on_client_timeout(client, op_seq),
            Event::ClientStart { client } => self.on_client_start(client),
            Event::Nemesis => return self.on_nemesis(),
            Event::Restart { node } => return self.start_node(node),
            Event::EndChaos => return self.on_end_chaos(),
        }
        Ok(())
    }

    // ----- nodes ----------------------------------------------------------------------------

    /// The production configuration, in the simulator's units: a 10 ms tick, heartbeats every
    /// 2 ticks, elections after 10–20, small limits so that pipelining and snapshot chunks
    /// are exercised.
    fn node_config(&self, index: usize) -> NodeConfig {
        // The cluster's first voters; a node started later to join knows no one yet.
        let members = if index < self.config.nodes { (0..self.config.nodes).map(node_id).collect() } else { Vec::new() };
        let mut config = NodeConfig::new(node_id(index), members);
        config.tick_ms = TICK_MS;
        config.heartbeat_ms = 2 * TICK_MS;
        config.election_timeout_ms = 10 * TICK_MS;
        config.append_entries_max = self.append_entries_max;
        config.inflight_messages_max = 4;
        config.snapshot_chunk_bytes_max = 32;
        config.snapshot_window_bytes_max = 64;
        config.uncommitted_entries_max = 256;
        config.snapshot_threshold_entries = self.config.snapshot_threshold_entries;
        config.snapshot_threshold_bytes = self.snapshot_threshold_bytes;
        config.random_seed = Some(self.config.seed.wrapping_mul(1_000_003).wrapping_add(index as u64 * 7919 + self.nodes[index].epoch));
        config.storage_on_thread = true;
        config
    }

    /// Boots (or reboots) a node from what its storage holds.
    fn start_node(&mut self, index: usize) -> Result<(), String> {
        if self.nodes[index].executor.is_some() || self.nodes[index].retired {
            return Ok(());
        }
        let config = self.node_config(index);
        let disk_rng = ChaCha8Rng::seed_from_u64(self.rng.gen());
        let node = &mut self.nodes[index];
        node.epoch += 1;
        let storage = node.disk.take().unwrap_or_default();
        let restored = storage.initial_state().map_err(|error| format!("node {} cannot restart from its storage: {error}", index + 1))?;
        let image = storage.snapshot_image();
        let io = SimIo::new(index, storage, disk_rng, self.disk_latency_ms_max, self.shared.clone());
        let mut executor = Executor::new(&config, restored, image, KvStore::new(), io).map_err(|error| format!("node {} cannot start: {error}", index + 1))?;
        if let Some(inject) = self.config.inject {
            inject(&mut executor);
        }
        node.executor = Some(executor);
        let epoch = node.epoch;
        let phase = self.rng.gen_range(1..=TICK_MS);
        self.schedule(phase, Event::Tick { node: index, epoch });
        Ok(())
    }

    /// A power cut: the executor and everything volatile is gone; the storage keeps what
    /// was synced and a random prefix of the rest.
    fn crash_node(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let Some(executor) = node.executor.take() else { return };
        node.epoch += 1;
        node.busy_until_ms = 0;
        node.pending_syncs = 0;
        node.thread_free_at_ms = 0;
        let storage = executor.into_io().storage;
        let kept = self.rng.gen_range(0..=storage.unsynced_entries());
        let (storage, lost) = storage.crash(kept);
        self.stats.unsynced_entries_lost += lost as u64;
        self.nodes[index].disk = Some(storage);
        self.stats.crashes += 1;
    }

    /// Feeds one input to node `index` (if it is up) and carries out what follows.
    fn input(&mut self, index: usize, feed: impl FnOnce(&mut SimExecutor) -> Result<(), String>) -> Result<(), String> {
        if self.crash_when_unsynced == Some(index) && self.commits_unsynced(index) && self.may_crash_one_more() {
            self.crash_when_unsynced = None;
            self.crash_node(index);
            self.schedule_restart(index);
            return Ok(());
        }
        let Some(executor) = self.nodes[index].executor.as_mut() else { return Ok(()) };
        feed(executor)?;
        executor.drive().map_err(|problem| format!("node {} stopped: {problem}", index + 1))?;
        self.flush(index)
    }

    /// Turns what the executor asked of its `SimIo` during one input into events.
    fn flush(&mut self, index: usize) -> Result<(), String> {
        let now = self.now_ms;
        let node = &mut self.nodes[index];
        let epoch = node.epoch;
        let io = node.executor.as_mut().expect("a live node").io_mut();
        let busy_ms = io.busy_ms();
        io.reset_busy();
        let sent = std::mem::take(&mut io.sent);
        let syncs = std::mem::take(&mut io.syncs);
        let replies = std::mem::take(&mut io.replies);
        self.stats.deferred_writes += std::mem::take(&mut io.deferred_writes);
        let thread_done_at: Vec<u64> = (0..std::mem::take(&mut io.thread_jobs_new))
            .map(|_| {
                node.thread_free_at_ms = node.thread_free_at_ms.max(now + busy_ms) + io.disk_latency_ms();
                node.thread_free_at_ms
            })
            .collect();
        let builds_done_at: Vec<u64> = (0..std::mem::take(&mut io.snapshot_builds_new)).map(|_| now + busy_ms + 3 * io.disk_latency_ms()).collect();
        node.busy_until_ms = now + busy_ms;
        node.pending_syncs += syncs.len();
        for (offset_ms, message) in sent {
            if offset_ms == 0 {
                self.transmit(message);
            } else {
                self.schedule(offset_ms, Event::Send { node: index, epoch, message });
            }
        }
        for (offset_ms, point) in syncs {
            self.schedule(offset_ms, Event::SyncDone { node: index, epoch, point });
        }
        for at in thread_done_at {
            self.schedule_at(at, Event::ThreadJobDone { node: index, epoch });
        }
        for at in builds_done_at {
            self.schedule_at(at, Event::SnapshotBuilt { node: index, epoch });
        }
        for (offset_ms, request, reply) in replies {
            let delay = offset_ms + self.rng.gen_range(1..=3);
            self.schedule(delay, Event::ClientReply { client: request.client, op_seq: request.op_seq, reply });
        }
        match self.shared.borrow_mut().violation.take() {
            Some(violation) => Err(violation),
            None => Ok(()),
        }
    }

    fn on_tick(&mut self, index: usize, epoch: u64) -> Result<(), String> {
        if self.nodes[index].epoch != epoch || self.nodes[index].executor.is_none() {
            return Ok(());
        }
        self.schedule(TICK_MS, Event::Tick { node: index, epoch });
        self.input(index, |executor| {
            executor.tick();
            Ok(())
        })
    }

    fn on_deliver(&mut self, message: Message) -> Result<(), String> {
        let index = node_index(message.to);
        if self.nodes[index].executor.is_none() {
            return Ok(());
        }
        self.stats.messages_delivered += 1;
        // In a changing cluster a message may come from, or go to, a node the receiver's
        // configuration does not hold (removed, or not yet added there): refused, and
        // harmless. Anything else a correct peer sent must pass.
        self.input(index, |executor| match executor.step(message) {
            Ok(()) | Err(keel_core::StepError::UnknownNode(_)) => Ok(()),
            Err(error) => Err(format!("step refused a cluster message: {error}")),
        })
    }

    fn on_sync_done(&mut self, index: usize, epoch: u64, point: DurablePoint) {
        let node = &mut self.nodes[index];
        if node.epoch != epoch {
            return;
        }
        node.pending_syncs -= 1;
        node.executor.as_mut().expect("a live node of this epoch").io_mut().storage.make_durable(point);
    }

    fn on_thread_job_done(&mut self, index: usize, epoch: u64) -> Result<(), String> {
        if self.nodes[index].epoch != epoch {
            return Ok(());
        }
        self.stats.thread_jobs += 1;
        self.input(index, |executor| {
            let (result, sent) = executor.io_mut().run_thread_job().expect("one completion is scheduled per queued job");
            executor.io_mut().sent.extend(sent.into_iter().map(|message| (0, message)));
            executor.storage_done(result);
            Ok(())
        })
    }

    fn on_snapshot_built(&mut self, index: usize, epoch: u64) -> Result<(), String> {
        if self.nodes[index].epoch != epoch {
            return Ok(());
        }
        self.stats.snapshots_built += 1;
        let Some(executor) = self.nodes[index].executor.as_mut() else { return Ok(()) };
        let job = executor.io_mut().snapshot_builds.pop_front().expect("one completion is scheduled per build");
        // The snapshot thread writes the image where the storage's `compact` will find it.
        let built = keel_node::build_image(job, &executor.io_mut().storage.snapshot_writer());
        self.input(index, |executor| {
            executor.snapshot_built(built);
            Ok(())
        })
    }

    /// Puts a message on the network: zero, one or two copies arrive.
    fn transmit(&mut self, message: Message) {
        let (from, to) = (node_index(message.from), node_index(message.to));
        for delay in self.network.deliveries(&mut self.rng, from, to) {
            self.schedule(delay, Event::Deliver(message.clone()));
        }
    }

    // ----- clients --------------------------------------------------------------------------

    fn on_client_arrive(&mut self, index: usize, request: Request) -> Result<(), String> {
        if self.nodes[index].executor.is_none() {
            return Ok(()); // Lost with the node.
        }
        self.input(index, |executor| {
            match request.command.as_ref().map(keel_kv::Command::encode) {
                Some(command) => executor.propose(command.expect("valid command"), request),
                None => executor.read(Consistency::Linearizable, request),
            }
            Ok(())
        })
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
            Reply::NotLeader(Some(leader)) => {
                client.target = node_index(leader);
                None
            }
            Reply::NotLeader(None) | Reply::NotApplied => {
                self.clients[client_index].target = self.random_member_index();
                None
            }
            Reply::Unknown => {
                self.clients[client_index].target = self.random_member_index();
                self.abandon(client_index, &op);
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
        self.clients[client_index].target = self.random_member_index();
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

    fn on_nemesis(&mut self) -> Result<(), String> {
        if !self.chaos {
            return Ok(());
        }
        let n = self.nodes.len();
        let roll = self.rng.gen_range(0..100);
        if roll >= 90 && self.config.membership_nemesis {
            self.on_membership_nemesis()?;
        } else if roll < 25 {
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
        } else if roll < 60 {
            self.network.heal();
        } else if roll < 85 {
            self.crash_random_node();
        } else {
            for node in 0..n {
                self.start_node(node)?;
            }
        }
        let (low, high) = self.config.nemesis_interval_ms;
        let next = self.rng.gen_range(low..=high);
        self.schedule(next, Event::Nemesis);
        Ok(())
    }

    /// The node's commit index covers an entry its disk holds unsynced: the moment a crash
    /// tests that commits never rest on a leader's unsynced copy.
    fn commits_unsynced(&self, index: usize) -> bool {
        let Some(executor) = &self.nodes[index].executor else { return false };
        let Some(first_unsynced) = executor.io().storage.first_unsynced_index() else { return false };
        executor.core().status().commit_index >= first_unsynced
    }

    /// One more crash still leaves a majority of every voter set of the cluster's
    /// configuration up (both sets, when joint): liveness, not safety, so that the cluster
    /// makes progress between faults.
    fn may_crash_one_more(&self) -> bool {
        let membership = self.cluster_membership();
        let up = |set: &std::collections::BTreeSet<NodeId>| set.iter().filter(|id| self.nodes.get(node_index(**id)).is_some_and(|node| node.executor.is_some())).count();
        let may = [&membership.voters, &membership.voters_outgoing].into_iter().filter(|set| !set.is_empty()).all(|set| up(set) > set.len() / 2 + 1);
        may
    }

    fn crash_random_node(&mut self) {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].executor.is_some()).collect();
        if live.is_empty() || !self.may_crash_one_more() {
            return;
        }
        // Half the time the victim is a leader: leader crashes make the interesting histories
        // (Figure 8 of the paper is a sequence of them).
        let leaders: Vec<usize> = live.iter().copied().filter(|i| self.nodes[*i].executor.as_ref().is_some_and(|executor| executor.core().role() == Role::Leader)).collect();
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

    fn on_end_chaos(&mut self) -> Result<(), String> {
        self.chaos = false;
        self.crash_when_unsynced = None;
        self.network.heal();
        self.network.loss_percent = 0;
        self.network.duplicate_percent = 0;
        for node in 0..self.nodes.len() {
            self.start_node(node)?;
        }
        Ok(())
    }

    fn cores(&self) -> Vec<&RaftCore> {
        self.nodes.iter().filter_map(|node| node.executor.as_ref()).map(Executor::core).collect()
    }

    fn on_check_logs(&mut self) -> Result<(), String> {
        self.shared.borrow().checker.check_log_matching(&self.cores())?;
        self.check_configurations()?;
        self.retire_nodes_outside_the_cluster();
        self.schedule(500, Event::CheckLogs);
        Ok(())
    }

    /// Liveness after healing: with the network whole and every member up for the quiet
    /// period, every member of the cluster must have applied everything the most advanced
    /// one applied.
    fn check_convergence(&self) -> Result<(), String> {
        let members = self.cluster_membership().members();
        let applied: Vec<(NodeId, LogIndex)> = members
            .iter()
            .map(|id| (*id, self.nodes[node_index(*id)].executor.as_ref().map(|executor| executor.state_machine().applied_index()).unwrap_or_default()))
            .collect();
        let highest = applied.iter().map(|(_, index)| *index).max().unwrap_or_default();
        if applied.iter().any(|(_, index)| *index != highest) {
            return Err(format!("members did not converge {} ms after healing: applied indexes {applied:?}", self.config.quiet_ms));
        }
        Ok(())
    }

    fn finish(mut self) -> Result<RunStats, Failure> {
        for client_index in 0..self.clients.len() {
            if let Some(op) = self.clients[client_index].current.take() {
                self.abandon(client_index, &op);
            }
        }
        self.shared.borrow().checker.check_log_matching(&self.cores())?;
        self.check_convergence()?;
        if self.ok_after_heal == 0 {
            return Err(Failure::Violation(format!("no client operation succeeded in the {} ms after the cluster healed", self.config.quiet_ms)));
        }
        let checked = self.history.check(self.config.linearizability_steps_max).map_err(|failure| match failure {
            CheckFailure::NotLinearizable(problem) => Failure::NotLinearizable(problem),
            CheckFailure::Inconclusive(problem) => Failure::Inconclusive(problem),
        })?;
        self.stats.check_steps = checked.steps;
        self.stats.ops_checked = self.history.operation_count() as u64;
        self.count_membership_changes();
        let shared = self.shared.borrow();
        self.stats.leaders_elected = shared.leaders_elected;
        self.stats.snapshots_installed = shared.snapshots_installed;
        self.stats.transfers_completed = shared.transfers_completed;
        self.stats.trace_hash = self.trace.finish();
        Ok(self.stats.clone())
    }
}

