//! A few hundred simulated runs on every `cargo test`, plus every seed that ever found a bug.
//! The full sweep is `cargo run --release -p keel-sim -- --seeds 1000 --nodes 5` (and 3).

use keel_sim::{run_seed, SimConfig};

/// Seeds that once exposed a bug, with what the bug was. They must pass forever.
const REGRESSION_SEEDS: &[(u64, usize, &str)] = &[
    // A follower whose last acknowledgement was lost never learned the final commit index:
    // heartbeats checked the log at the leader's stale match index, so the follower's answer
    // could not move it (and a full in-flight window of lost AppendEntries was never resent).
    (23, 3, "follower stuck one commit behind after healing"),
    (270, 3, "follower stuck one commit behind after healing"),
    (73, 5, "follower stuck one commit behind after healing"),
    (212, 5, "follower stuck one commit behind after healing"),
    // Not a bug in keel but in the check: 19 operations on one key whose outcome was unknown
    // (each may take effect anywhere after its call) made the linearizability search of 113
    // operations run past its 20 s bound; unknown writes nobody observed now go last.
    (4_001_421, 5, "linearizability check hit its time bound"),
];

fn sweep(nodes: usize, seeds: std::ops::Range<u64>) {
    keel_sim::quiet_panics();
    let mut failures = Vec::new();
    let mut ops_checked = 0;
    for seed in seeds.clone() {
        match run_seed(SimConfig::new(seed, nodes)) {
            Ok(stats) => ops_checked += stats.ops_checked,
            Err(problem) => failures.push(format!("seed {seed} ({nodes} nodes): {problem}")),
        }
    }
    assert!(failures.is_empty(), "failing seeds:\n{}", failures.join("\n"));
    assert!(ops_checked > (seeds.end - seeds.start) * 100, "the workload checked only {ops_checked} operations");
}

#[test]
fn three_node_cluster_survives_150_seeds() {
    sweep(3, 10_000..10_150);
}

#[test]
fn five_node_cluster_survives_150_seeds() {
    sweep(5, 20_000..20_150);
}

#[test]
fn regression_seeds_pass() {
    keel_sim::quiet_panics();
    for (seed, nodes, bug) in REGRESSION_SEEDS {
        if let Err(problem) = run_seed(SimConfig::new(*seed, *nodes)) {
            panic!("regression seed {seed} ({nodes} nodes, once: {bug}) fails again: {problem}");
        }
    }
}

/// Every run reports that faults really happened, so a quiet simulator cannot pass.
#[test]
fn runs_really_inject_faults() {
    let mut totals = keel_sim::RunStats::default();
    for seed in 0..10 {
        let stats = run_seed(SimConfig::new(seed, 5)).expect("seed passes");
        totals.crashes += stats.crashes;
        totals.partitions += stats.partitions;
        totals.snapshots_installed += stats.snapshots_installed;
        totals.leaders_elected += stats.leaders_elected;
        totals.ops_unknown += stats.ops_unknown;
    }
    assert!(totals.crashes > 0 && totals.partitions > 0 && totals.snapshots_installed > 0, "{totals:?}");
    assert!(totals.leaders_elected > 10, "leader changes: {totals:?}");
}

/// Same seed, same run: the simulation is deterministic.
#[test]
fn a_seed_replays_identically() {
    let first = run_seed(SimConfig::new(7, 3)).expect("seed passes");
    let second = run_seed(SimConfig::new(7, 3)).expect("seed passes");
    assert_eq!(format!("{first:?}"), format!("{second:?}"));
}
