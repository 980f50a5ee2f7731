//! `--trace`: the replay page's input. Recording changes nothing in the run, and the trace
//! holds what a learner needs to follow the first election vote by vote.

use keel_sim::{run_seed, run_seed_traced, SimConfig};

fn config(seed: u64) -> SimConfig {
    let mut config = SimConfig::new(seed, 3);
    config.chaos_ms = 3_000;
    config.quiet_ms = 2_000;
    config
}

#[test]
fn tracing_does_not_change_the_run() {
    for seed in [1, 42] {
        let plain = run_seed(config(seed)).expect("the seed passes");
        let (traced, _) = run_seed_traced(config(seed));
        assert_eq!(traced.expect("the seed passes").trace_hash, plain.trace_hash, "seed {seed}: the same events in the same order");
    }
}

#[test]
fn a_trace_shows_the_first_election_vote_by_vote() {
    let mut traced = config(42);
    traced.trace_until_ms = Some(1_000);
    let (result, trace) = run_seed_traced(traced);
    result.expect("the seed passes");
    assert_eq!(trace["format"], "keel-sim-trace/1");
    assert_eq!((trace["seed"].as_u64(), trace["nodes"].as_u64(), trace["outcome"].as_str()), (Some(42), Some(3), Some("passed")));
    let steps = trace["steps"].as_array().unwrap();
    assert!(steps.iter().all(|step| step["at_ms"].as_u64().unwrap() <= 1_000));
    assert!(steps.windows(2).all(|pair| pair[0]["at_ms"].as_u64() <= pair[1]["at_ms"].as_u64()), "in time order");
    let events: Vec<&serde_json::Value> = steps.iter().flat_map(|step| step["events"].as_array().unwrap()).collect();
    let won = events.iter().find(|event| event["kind"] == "became_leader").expect("a leader is elected in the first second");
    let (leader, term) = (won["node"].as_u64().unwrap(), won["term"].as_u64().unwrap());
    let granted: Vec<_> = events.iter().filter(|event| event["kind"] == "vote" && event["granted"] == true && event["pre_vote"] == false && event["candidate"] == leader && event["term"] == term).collect();
    assert!(!granted.is_empty(), "the winner's votes are in the trace");
    assert!(granted.iter().all(|vote| vote["rule"].as_str().unwrap().starts_with("§5.2/§5.4.1")), "each names its rule");
    // Replaying the views up to the win shows the winner leading that term.
    let mut views = std::collections::BTreeMap::new();
    for step in steps {
        for (node, view) in step["views"].as_object().unwrap() {
            views.insert(node.clone(), view.clone());
        }
        if step["events"].as_array().unwrap().iter().any(|event| event["kind"] == "became_leader") {
            break;
        }
    }
    let view = &views[&leader.to_string()];
    assert_eq!((view["role"].as_str(), view["term"].as_u64()), (Some("leader"), Some(term)), "{view}");
    assert!(steps.iter().any(|step| step["kind"] == "deliver" && step["text"].as_str().unwrap().contains("RequestVote")), "messages are described");
}
