//! `keel-sim`: run many seeded simulations of a keel cluster.
//!
//!     cargo run --release -p keel-sim -- --seeds 1000 --nodes 5
//!     cargo run --release -p keel-sim -- --seed 42 --nodes 3     # replay one run
//!     cargo run --release -p keel-sim -- --seed 42 --nodes 3 --trace trace.json   # for /ui/replay

use clap::Parser;
use keel_sim::{run_seed, Failure, RunStats, SimConfig};
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Deterministic simulation of a keel cluster with injected faults")]
struct Args {
    /// How many seeds to run, starting at --first-seed.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Replay exactly one seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Cluster size.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(3..=5))]
    nodes: u8,
    /// Break one rule in every node, to see the simulator catch it: of the core,
    /// `commit-previous-term` (§5.4.2), `double-vote` (§5.2), `joint-commit-new-only`
    /// (thesis §4.3) or `configuration-on-commit` (thesis §4.1); of the driver,
    /// `ack-before-sync` (contract step 5) or `skip-leader-sync` (step 4).
    #[cfg(feature = "fault-injection")]
    #[arg(long)]
    inject_fault: Option<String>,
    /// Shortest and longest pause between two fault injections, in simulated ms.
    #[arg(long, num_args = 2, default_values_t = [200, 1500])]
    nemesis_interval_ms: Vec<u64>,
    /// Leave membership changes and leadership transfers out of the faults.
    #[arg(long)]
    no_membership: bool,
    /// Write the run, step by step, to this JSON file for the replay page (`/ui/replay` of
    /// any node, docs/WATCH.md). Needs --seed.
    #[arg(long, value_name = "FILE.json", requires = "seed")]
    trace: Option<std::path::PathBuf>,
    /// The trace covers the run up to this simulated time.
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    trace_until_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seeds: Vec<u64> = match args.seed {
        Some(seed) => vec![seed],
        None => (args.first_seed..args.first_seed + args.seeds).collect(),
    };
    keel_sim::quiet_panics();
    let mut totals = RunStats::default();
    let mut failures = Failures::default();
    let mut passed = 0u64;
    for seed in seeds {
        #[allow(unused_mut)]
        let mut config = SimConfig::new(seed, usize::from(args.nodes));
        config.nemesis_interval_ms = (args.nemesis_interval_ms[0], args.nemesis_interval_ms[1].max(args.nemesis_interval_ms[0]));
        config.membership_nemesis = !args.no_membership;
        #[cfg(feature = "fault-injection")]
        {
            config.inject = match args.inject_fault.as_deref() {
                None => None,
                Some("commit-previous-term") => Some(|executor| executor.core_mut().faults.commit_previous_term_by_counting = true),
                Some("double-vote") => Some(|executor| executor.core_mut().faults.grant_two_votes_per_term = true),
                Some("ack-before-sync") => Some(|executor| executor.faults.acknowledge_before_sync = true),
                Some("skip-leader-sync") => Some(|executor| executor.faults.skip_leader_sync = true),
                Some("joint-commit-new-only") => Some(|executor| executor.core_mut().faults.commit_with_new_voters_only = true),
                Some("configuration-on-commit") => Some(|executor| executor.core_mut().faults.configuration_on_commit = true),
                Some(other) => panic!("unknown fault {other:?}"),
            };
        }
        let result = match &args.trace {
            Some(path) => {
                config.trace_until_ms = Some(args.trace_until_ms);
                let (result, trace) = keel_sim::run_seed_traced(config);
                let text = serde_json::to_string(&trace).expect("a trace serializes");
                if let Err(error) = std::fs::write(path, text) {
                    eprintln!("cannot write the trace to {}: {error}", path.display());
                    return ExitCode::from(2);
                }
                println!("trace of seed {seed} ({} steps) written to {}", trace["steps"].as_array().map_or(0, Vec::len), path.display());
                result
            }
            None => run_seed(config),
        };
        match result {
            Ok(stats) => {
                passed += 1;
                add(&mut totals, &stats);
            }
            Err(problem) => {
                failures.count(&problem);
                println!("seed {seed} FAILED: {problem}");
                println!("  reproduce: cargo run --release -p keel-sim {} --seed {seed} --nodes {}{}", features(&args), args.nodes, options(&args));
            }
        }
    }
    println!(
        "totals: leaders elected {}, crashes {}, partitions {}, snapshots built {} and installed {}, storage-thread jobs {}, messages delivered {}, client ops checked {} ({} ok, {} unknown outcome) in {} checker steps, deferred leader writes {} ({} entries lost in crashes)",
        totals.leaders_elected,
        totals.crashes,
        totals.partitions,
        totals.snapshots_built,
        totals.snapshots_installed,
        totals.thread_jobs,
        totals.messages_delivered,
        totals.ops_checked,
        totals.ops_ok,
        totals.ops_unknown,
        totals.check_steps,
        totals.deferred_writes,
        totals.unsynced_entries_lost
    );
    println!(
        "membership: changes proposed {}, configurations committed {}, learners promoted {}, leaders removed {}, nodes added {} and retired {}, leadership transfers completed {} of {} asked",
        totals.config_changes_proposed,
        totals.config_changes_committed,
        totals.learners_promoted,
        totals.leaders_removed,
        totals.nodes_added,
        totals.nodes_retired,
        totals.transfers_completed,
        totals.transfers_asked
    );
    println!(
        "{passed} passed, {} failed ({} safety or liveness, {} not linearizable, {} inconclusive, {} panicked)",
        failures.total(),
        failures.violation,
        failures.not_linearizable,
        failures.inconclusive,
        failures.panic
    );
    if failures.total() == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Failed seeds by kind: an inconclusive check fails the run too, but says something else.
#[derive(Default)]
struct Failures {
    violation: u64,
    not_linearizable: u64,
    inconclusive: u64,
    panic: u64,
}

impl Failures {
    fn count(&mut self, failure: &Failure) {
        match failure {
            Failure::Violation(_) => self.violation += 1,
            Failure::NotLinearizable(_) => self.not_linearizable += 1,
            Failure::Inconclusive(_) => self.inconclusive += 1,
            Failure::Panic(_) => self.panic += 1,
        }
    }

    fn total(&self) -> u64 {
        self.violation + self.not_linearizable + self.inconclusive + self.panic
    }
}

fn add(totals: &mut RunStats, stats: &RunStats) {
    totals.leaders_elected += stats.leaders_elected;
    totals.crashes += stats.crashes;
    totals.partitions += stats.partitions;
    totals.snapshots_installed += stats.snapshots_installed;
    totals.snapshots_built += stats.snapshots_built;
    totals.thread_jobs += stats.thread_jobs;
    totals.check_steps += stats.check_steps;
    totals.config_changes_proposed += stats.config_changes_proposed;
    totals.config_changes_committed += stats.config_changes_committed;
    totals.learners_promoted += stats.learners_promoted;
    totals.leaders_removed += stats.leaders_removed;
    totals.nodes_added += stats.nodes_added;
    totals.nodes_retired += stats.nodes_retired;
    totals.transfers_asked += stats.transfers_asked;
    totals.transfers_completed += stats.transfers_completed;
    totals.messages_delivered += stats.messages_delivered;
    totals.ops_checked += stats.ops_checked;
    totals.ops_ok += stats.ops_ok;
    totals.ops_unknown += stats.ops_unknown;
    totals.deferred_writes += stats.deferred_writes;
    totals.unsynced_entries_lost += stats.unsynced_entries_lost;
}

/// The `--features` part of a reproduce command line: the fault switches exist only there.
fn features(args: &Args) -> &'static str {
    #[cfg(feature = "fault-injection")]
    if args.inject_fault.is_some() {
        return "--features fault-injection --";
    }
    let _ = args;
    "--"
}

/// The options besides seed and size that shape a run, as given.
fn options(args: &Args) -> String {
    let mut options = String::new();
    #[cfg(feature = "fault-injection")]
    if let Some(fault) = &args.inject_fault {
        options += &format!(" --inject-fault {fault}");
    }
    let (low, high) = SimConfig::new(0, usize::from(args.nodes)).nemesis_interval_ms;
    if args.no_membership {
        options += " --no-membership";
    }
    if args.nemesis_interval_ms != [low, high] {
        options += &format!(" --nemesis-interval-ms {} {}", args.nemesis_interval_ms[0], args.nemesis_interval_ms[1]);
    }
    options
}
