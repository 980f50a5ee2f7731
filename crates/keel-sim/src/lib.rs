//! # keel-sim: deterministic simulation testing for keel
//!
//! Runs the production driver (keel-node's `Executor`, with real `RaftCore`s and `KvStore`s)
//! against a simulated network, disk and threads (`io.rs`) with injected faults, checks the
//! Raft safety properties as it goes and the clients' history for linearizability at the
//! end. Every run is a pure function of its seed.

pub mod invariants;
pub mod io;
pub mod linearizability;
pub mod network;
pub mod runner;
pub mod trace;
pub mod workload;

pub use runner::{Failure, RunStats, SimConfig, SimExecutor, Simulation};

use std::panic::{self, AssertUnwindSafe};

/// Runs one seed; a panic inside the cluster (a failed assertion) is a failure too.
/// Runs one seed recording its trace (`trace.rs`, `SimConfig::trace_until_ms`, which this
/// sets if unset); the trace is kept when the run fails, and when it panics.
pub fn run_seed_traced(mut config: SimConfig) -> (Result<RunStats, Failure>, serde_json::Value) {
    let until_ms = *config.trace_until_ms.get_or_insert(5_000);
    let (seed, nodes) = (config.seed, config.nodes);
    let tracer = std::cell::RefCell::new(None);
    IN_RUN.with(|in_run| in_run.set(true));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let simulation = Simulation::new(config)?;
        *tracer.borrow_mut() = simulation.tracer();
        simulation.run()
    }));
    IN_RUN.with(|in_run| in_run.set(false));
    let result = outcome.unwrap_or_else(|payload| Err(Failure::Panic(panic_message(payload))));
    let verdict = match &result {
        Ok(_) => "passed".to_string(),
        Err(failure) => format!("FAILED: {failure}"),
    };
    let trace = match tracer.into_inner() {
        Some(tracer) => std::rc::Rc::try_unwrap(tracer).map_or_else(|_| serde_json::Value::Null, |tracer| tracer.into_inner().finish(seed, nodes, &verdict)),
        None => runner::empty_trace(seed, nodes, until_ms, &verdict),
    };
    (result, trace)
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|text| text.to_string())).unwrap_or_else(|| "unknown panic".into())
}

pub fn run_seed(config: SimConfig) -> Result<RunStats, Failure> {
    IN_RUN.with(|in_run| in_run.set(true));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| Simulation::new(config)?.run()));
    IN_RUN.with(|in_run| in_run.set(false));
    match outcome {
        Ok(result) => result,
        Err(payload) => Err(Failure::Panic(panic_message(payload))),
    }
}

thread_local! {
    /// This thread is inside `run_seed`, whose panics are reported as failures of a seed.
    static IN_RUN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Silences the panic printout inside `run_seed` (failures are reported with their seed
/// instead); panics elsewhere, a test's own assertions say, still print.
pub fn quiet_panics() {
    let default_hook = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if !IN_RUN.with(|in_run| in_run.get()) {
            default_hook(info);
        }
    }));
}

/// Proof that the simulator notices a broken rule: each test breaks one rule in every node
/// — of the paper, in the core, or of the driver contract, in the executor — and expects a
/// failing seed among the first few thousand.
///
/// The §5.4.2 break needs a rare interleaving (Figure 8: a leader commits an old-term entry
/// before its own no-op reaches that majority, then a leader without the entry overwrites
/// it); it runs on five nodes, Figure 8's cluster, where it is caught about once in a
/// thousand seeds. Any change to the simulator's timing reshuffles which seeds fail, so the
/// searches run up to 5,000 seeds; each test prints the first seed that failed and why.
#[cfg(test)]
mod fault_injection {
    use super::*;

    fn first_failing_seed(nodes: usize, seeds: u64, inject: fn(&mut SimExecutor)) -> Option<(u64, Failure)> {
        quiet_panics();
        (0..seeds).find_map(|seed| {
            let mut config = SimConfig::new(seed, nodes);
            config.inject = Some(inject);
            run_seed(config).err().map(|problem| (seed, problem))
        })
    }

    #[test]
    fn committing_a_previous_term_entry_by_counting_is_caught() {
        let found = first_failing_seed(5, 5000, |executor| executor.core_mut().faults.commit_previous_term_by_counting = true);
        let (seed, problem) = found.expect("breaking §5.4.2 went unnoticed for 5000 seeds");
        println!("§5.4.2 broken: seed {seed} fails with: {problem}");
    }

    #[test]
    fn granting_two_votes_in_one_term_is_caught() {
        let found = first_failing_seed(5, 1000, |executor| executor.core_mut().faults.grant_two_votes_per_term = true);
        let (seed, problem) = found.expect("breaking §5.2 (one vote per term) went unnoticed for 1000 seeds");
        println!("§5.2 broken: seed {seed} fails with: {problem}");
    }

    /// Thesis §4.3: in the joint configuration, a majority of C_new alone commits nothing.
    /// It takes a voter change made while a majority of C_old is cut off (the nemesis does
    /// that for half its changes of voters): about 4 seeds in 1,000 fail on three nodes
    /// (first at seed 24).
    #[test]
    fn committing_with_the_new_majority_alone_in_the_joint_phase_is_caught() {
        let found = first_failing_seed(3, 1000, |executor| executor.core_mut().faults.commit_with_new_voters_only = true);
        let (seed, problem) = found.expect("committing with C_new alone went unnoticed for 1000 seeds");
        println!("joint commit with C_new alone: seed {seed} fails with: {problem}");
    }

    /// Thesis §4.1: a configuration is in force from the moment it is appended.
    #[test]
    fn a_configuration_in_force_only_once_committed_is_caught() {
        let found = first_failing_seed(3, 1000, |executor| executor.core_mut().faults.configuration_on_commit = true);
        let (seed, problem) = found.expect("configurations in force on commit went unnoticed for 1000 seeds");
        println!("configuration on commit: seed {seed} fails with: {problem}");
    }

    /// Contract step 5: a follower's acknowledgement promises its write is durable.
    #[test]
    fn acknowledging_before_the_write_is_synced_is_caught() {
        let found = first_failing_seed(3, 1000, |executor| executor.faults.acknowledge_before_sync = true);
        let (seed, problem) = found.expect("acknowledging before the sync went unnoticed for 1000 seeds");
        println!("acknowledge before sync: seed {seed} fails with: {problem}");
    }

    /// Contract step 4: the leader may count its own entries only once they are synced.
    #[test]
    fn a_leader_counting_its_unsynced_write_is_caught() {
        let found = first_failing_seed(3, 1000, |executor| executor.faults.skip_leader_sync = true);
        let (seed, problem) = found.expect("a leader counting its unsynced write went unnoticed for 1000 seeds");
        println!("leader counts an unsynced write: seed {seed} fails with: {problem}");
    }
}

/// The crash model reaches the deferred-sync path: across a few seeds, crashes do lose
/// entries a leader wrote without syncing, and every run still passes.
#[cfg(test)]
mod deferred_sync {
    use super::*;

    #[test]
    fn crashes_lose_unsynced_leader_writes_and_nothing_committed() {
        let mut lost = 0;
        for seed in 0..20 {
            let stats = run_seed(SimConfig::new(seed, 3)).unwrap_or_else(|problem| panic!("seed {seed}: {problem}"));
            lost += stats.unsynced_entries_lost;
        }
        assert!(lost > 0, "no crash hit an unsynced write: the deferred path is not exercised");
    }
}
